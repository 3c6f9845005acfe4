/*
 * tests/unit/test_tier_store.c — the fast tier's store seam and what the tier builds on it:
 * the host store's copies, moves and scans against a brute-force reference; batched search and
 * prefetch against one query at a time; lists lent from memory (and a file read into RAM)
 * against the mapped file; FAISS for the misses; TeleRAG's mode; an IVF index over borrowed
 * lists; and what a GPU tier says where there is no GPU.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/gpu.h"
#include "retrieval/ivf.h"
#include "retrieval/tier.h"
#include "retrieval/tier_score.h"
#include "retrieval/tier_store.h"

#include "synth_vectors.h"

/* DIM is not a multiple of 4: the scoring's tail dims are exercised too. */
enum { DIM = 30, N = 6000, K = 10, NPROBE = 8, NQ = 24 };

static char tmpdir[64];
static char tier_path[128];
static float *data;
static cairn_ivf *ivf;

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/cairn-test-tstore-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(tier_path, sizeof(tier_path), "%s/index.tier", tmpdir);
    data = clustered(N + NQ, DIM, 30, 0.25f, 77);
    cairn_ivf_params p = cairn_ivf_default_params();
    p.dim = DIM;
    p.nlist = 60;
    cairn_error err;
    if (cairn_ivf_new(&ivf, &p, &err) || cairn_ivf_train(ivf, data, N, &err))
        return -1;
    int64_t *ids = malloc(N * sizeof(int64_t));
    for (size_t i = 0; i < N; i++)
        ids[i] = 5 * (int64_t)i + 1;
    int rc = cairn_ivf_add(ivf, data, ids, N, &err);
    free(ids);
    if (rc || cairn_tier_build(ivf, tier_path, 7, &err))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(tier_path);
    cairn_ivf_close(ivf);
    free(data);
    return rmdir(tmpdir);
}

static cairn_tier *open_tier(const cairn_tier_params *p)
{
    cairn_tier *t = NULL;
    cairn_error err;
    int rc = cairn_tier_open(&t, tier_path, p, 7, &err);
    if (rc)
        fail_msg("open: %s", err.msg);
    return t;
}

static const float *query(size_t i) { return data + (N + i % NQ) * DIM; }

static void perturb(const float *q0, float *q1, float sigma, uint64_t *s)
{
    for (int j = 0; j < DIM; j++)
        q1[j] = q0[j] + sigma * rng_gauss(s);
    normalize(q1, DIM);
}

/* ---- The host store itself ------------------------------------------------------------------- */

/* Brute force over lists: the k best (score, then smaller id) of the non-skipped items. */
static size_t reference(const float *q, const int64_t *const *ids, const float *const *vecs,
                        const size_t *n, const uint32_t *lists, const bool *skip, size_t nl,
                        size_t k, cairn__titem *out)
{
    size_t m = 0, cap = 0;
    for (size_t l = 0; l < nl; l++)
        cap += n[lists[l]];
    cairn__titem *all = malloc((cap + 1) * sizeof(*all));
    for (size_t l = 0; l < nl; l++)
        for (size_t r = 0; r < n[lists[l]] && !skip[l]; r++)
            all[m++] = (cairn__titem){cairn__tier_dot(q, vecs[lists[l]] + r * DIM, DIM),
                                      ids[lists[l]][r]};
    qsort(all, m, sizeof(*all), cairn__tier_item_cmp);
    size_t f = m < k ? m : k;
    memcpy(out, all, f * sizeof(*out));
    free(all);
    return f;
}

static void test_host_store_ops(void **state)
{
    (void)state;
    enum { L = 6 };
    uint64_t s = 31;
    size_t n[L] = {0, 1, 33, 200, 1100, 57};
    int64_t *ids[L];
    float *vecs[L];
    for (int l = 0; l < L; l++) {
        ids[l] = malloc((n[l] + 1) * sizeof(int64_t));
        vecs[l] = malloc((n[l] + 1) * DIM * sizeof(float));
        for (size_t r = 0; r < n[l]; r++) {
            ids[l][r] = (int64_t)(rng_next(&s) % 100000);
            for (int j = 0; j < DIM; j++)
                vecs[l][r * DIM + j] = rng_gauss(&s);
        }
    }
    /* Two vectors with the same score and different ids: the smaller id must come first. */
    memcpy(vecs[3] + 7 * DIM, vecs[3] + 9 * DIM, DIM * sizeof(float));
    ids[3][7] = 900001;
    ids[3][9] = 900000;
    cairn_tier_store_params sp = {.dim = DIM, .nlist = L, .capacity = 1 << 20, .device = -1};
    cairn_tier_store *st = NULL;
    cairn_error err;
    assert_int_equal(cairn_tier_store_host_open(&st, &sp, &err), 0);
    assert_string_equal(st->i->name, "host");
    assert_int_equal(st->i->version, CAIRN_TIER_STORE_VERSION);
    size_t off[L], at = 0;
    for (int l = 0; l < L; l++) {
        size_t b = st->i->bytes(st, n[l]);
        assert_int_equal(b % CAIRN_TIER_STORE_ALIGN, 0);
        assert_true(b >= n[l] * (8 + 4 * DIM));
        off[l] = at;
        cairn_tier_block blk = {ids[l], vecs[l], n[l], false};
        assert_int_equal(st->i->copy_in(st, (uint32_t)l, at, &blk, &err), 0);
        at += b;
    }
    /* Moves over their own bytes, both ways: list 5 (the last) up by 128 bytes, then list 4
     * up by 64 into the room that left, and back down. */
    size_t b4 = st->i->bytes(st, n[4]), b5 = st->i->bytes(st, n[5]);
    assert_true(b5 > 128 && b4 > 64);
    assert_int_equal(st->i->move(st, 5, off[5] + 128, off[5], b5, &err), 0);
    off[5] += 128;
    assert_int_equal(st->i->move(st, 4, off[4] + 64, off[4], b4, &err), 0);
    assert_int_equal(st->i->move(st, 4, off[4], off[4] + 64, b4, &err), 0);
    assert_int_equal(st->i->sync(st, &err), 0);
    /* A scan of three queries over the lists, some items skipped, unsorted lists per query. */
    float q[3 * DIM];
    for (int j = 0; j < 3 * DIM; j++)
        q[j] = rng_gauss(&s);
    uint32_t lists[3][4] = {{3, 4, 1, 0}, {5, 2, 4, 3}, {1, 0, 0, 0}};
    bool skip[3][4] = {{false, false, false, false}, {false, true, false, false}, {true}};
    size_t nl[3] = {4, 4, 1};
    cairn_tier_work w[12];
    size_t nw = 0;
    for (uint32_t i = 0; i < 3; i++)
        for (size_t l = 0; l < nl[i]; l++)
            w[nw++] = (cairn_tier_work){i, lists[i][l], off[lists[i][l]], n[lists[i][l]],
                                        skip[i][l]};
    for (size_t k = 1; k <= 1024; k = k < 16 ? k + 5 : k * 8) {
        float *sc = malloc(3 * k * sizeof(float));
        int64_t *id = malloc(3 * k * sizeof(int64_t));
        cairn__titem *ref = malloc(k * sizeof(*ref));
        size_t filled[3];
        assert_int_equal(st->i->scan(st, q, 3, w, nw, k, sc, id, filled, &err), 0);
        for (size_t i = 0; i < 3; i++) {
            size_t f = reference(q + i * DIM, (const int64_t *const *)ids,
                                 (const float *const *)vecs, n, lists[i], skip[i], nl[i], k, ref);
            assert_int_equal(filled[i], f);
            for (size_t r = 0; r < k; r++) {
                if (r < f) {
                    assert_int_equal(id[i * k + r], ref[r].id);
                    assert_memory_equal(&sc[i * k + r], &ref[r].s, sizeof(float));
                } else {
                    assert_int_equal(id[i * k + r], -1);
                    assert_true(isinf(sc[i * k + r]) && sc[i * k + r] < 0);
                }
            }
        }
        free(sc);
        free(id);
        free(ref);
    }
    /* scan_host: the odd lists read from host memory instead of the arena (each block once,
     * named by several queries), the same answers as the arena's, bit for bit. */
    {
        enum { KK = 10 };
        cairn_tier_work wa[12], wr[12];
        cairn_tier_block blocks[L];
        cairn_tier_pair pairs[12];
        int bof[L];
        size_t na = 0, nr = 0, nb = 0, np = 0;
        for (int l = 0; l < L; l++)
            bof[l] = -1;
        for (uint32_t i = 0; i < 3; i++)
            for (size_t l = 0; l < nl[i]; l++) {
                uint32_t c = lists[i][l];
                if (skip[i][l] || (i == 2 && l > 0))
                    continue;
                wr[nr++] = (cairn_tier_work){i, c, off[c], n[c], false};
                if (c % 2 == 0) {
                    wa[na++] = wr[nr - 1];
                    continue;
                }
                if (bof[c] < 0) {
                    bof[c] = (int)nb;
                    blocks[nb++] = (cairn_tier_block){ids[c], vecs[c], n[c], false};
                }
                pairs[np++] = (cairn_tier_pair){i, (uint32_t)bof[c]};
            }
        assert_true(nb >= 2 && np > nb - 1);
        float sa[3 * KK], sr[3 * KK];
        int64_t ia[3 * KK], ir[3 * KK];
        size_t fa[3], fr[3];
        assert_non_null(st->i->scan_host);
        assert_int_equal(st->i->scan(st, q, 3, wr, nr, KK, sr, ir, fr, &err), 0);
        assert_int_equal(st->i->scan_host(st, q, 3, wa, na, blocks, nb, pairs, np, KK, sa, ia,
                                          fa, &err), 0);
        assert_memory_equal(fa, fr, sizeof(fa));
        assert_memory_equal(ia, ir, sizeof(ia));
        assert_memory_equal(sa, sr, sizeof(sa));
        /* Pairs out of order, or naming a block that is not there. */
        cairn_tier_pair badp[2] = {{1, 0}, {0, 0}};
        assert_int_equal(st->i->scan_host(st, q, 3, wa, na, blocks, nb, badp, 2, KK, sa, ia, fa,
                                          &err), CAIRN_EINVAL);
        badp[0] = (cairn_tier_pair){0, (uint32_t)nb};
        assert_int_equal(st->i->scan_host(st, q, 3, wa, na, blocks, nb, badp, 1, KK, sa, ia, fa,
                                          &err), CAIRN_EINVAL);
    }
    /* Out of range, unsorted work, bad k. */
    cairn_tier_block blk = {ids[4], vecs[4], n[4], false};
    assert_int_equal(st->i->copy_in(st, 4, (1 << 20) - 64, &blk, &err), CAIRN_ERANGE);
    assert_int_equal(st->i->move(st, 4, (1 << 20) - 64, 0, b4, &err), CAIRN_ERANGE);
    float sc[3];
    int64_t id[3];
    size_t filled[3];
    cairn_tier_work bad[2] = {w[4], w[0]};
    assert_int_equal(st->i->scan(st, q, 3, bad, 2, 1, sc, id, filled, &err), CAIRN_EINVAL);
    assert_int_equal(st->i->scan(st, q, 3, w, nw, 0, sc, id, filled, &err), CAIRN_EINVAL);
    cairn_tier_store_close(st);
    for (int l = 0; l < L; l++) {
        free(ids[l]);
        free(vecs[l]);
    }
}

/* ---- The tier over it ------------------------------------------------------------------------ */

/* Batched prefetch and search give what one query at a time gives, bit for bit. */
static void test_batch_equals_single(void **state)
{
    (void)state;
    cairn_tier_params p = cairn_tier_default_params();
    p.fast_bytes = 64;
    cairn_tier *ref = open_tier(&p);
    size_t total = cairn_tier_total_bytes(ref);
    p.fast_bytes = total / 4;
    p.max_batch = 5; /* NQ = 24 queries: split into chunks of 5 */
    cairn_tier *t = open_tier(&p);
    cairn_error err;
    float q1[NQ * DIM];
    uint64_t s = 3;
    for (size_t i = 0; i < NQ; i++)
        perturb(query(i), q1 + i * DIM, 0.05f, &s);
    assert_int_equal(cairn_tier_prefetch_batch(t, query(0), 5, total, 0, &err), 0);
    assert_int_equal(cairn_tier_prefetch_batch(t, query(0), 6, total, 0, &err), CAIRN_EINVAL);
    cairn_tier_wait(t);
    cairn_tier_stats st;
    cairn_tier_get_stats(t, &st);
    assert_true(st.clusters_prefetched > 0 && st.fast_used <= st.fast_capacity);
    float sb[NQ * K], s1[K];
    int64_t ib[NQ * K], i1[K];
    cairn_tier_reset_stats(t);
    assert_int_equal(cairn_tier_search_batch(t, q1, NQ, K, NPROBE, sb, ib, &err), 0);
    cairn_tier_get_stats(t, &st);
    assert_int_equal(st.searches, NQ);
    assert_int_equal(st.probed, NQ * NPROBE);
    assert_true(st.hits > 0 && st.hits < st.probed); /* both halves of the hybrid ran */
    assert_true(st.hit_scan_bytes > 0);
    for (size_t i = 0; i < NQ; i++) {
        assert_int_equal(cairn_tier_search(ref, q1 + i * DIM, K, NPROBE, s1, i1, &err), 0);
        assert_memory_equal(ib + i * K, i1, sizeof(i1));
        assert_memory_equal(sb + i * K, s1, sizeof(s1));
    }
    cairn_tier_close(t);
    cairn_tier_close(ref);
}

/* Lists lent from memory, and a file read into RAM, answer as the mapped file does. */
static void test_mem_and_ram_equal_file(void **state)
{
    (void)state;
    size_t nl = cairn_ivf_nlist(ivf);
    const int64_t **ids = calloc(nl, sizeof(*ids));
    const float **vecs = calloc(nl, sizeof(*vecs));
    size_t *n = calloc(nl, sizeof(*n));
    const float *cent;
    cairn_error err;
    assert_int_equal(cairn_ivf_centroids(ivf, &cent, &err), 0);
    for (size_t c = 0; c < nl; c++)
        assert_int_equal(cairn_ivf_list(ivf, c, &vecs[c], &ids[c], &n[c], &err), 0);
    cairn_tier_mem m = {DIM, nl, cent, ids, vecs, n, false};
    cairn_tier_params p = cairn_tier_default_params();
    p.fast_bytes = 1 << 16;
    cairn_tier *a = open_tier(&p), *b = NULL, *c = NULL;
    assert_int_equal(cairn_tier_open_mem(&b, &m, &p, &err), 0);
    p.slow_in_ram = true;
    c = open_tier(&p);
    assert_int_equal(cairn_tier_count(b), N);
    assert_int_equal(cairn_tier_total_bytes(b), cairn_tier_total_bytes(a));
    for (size_t i = 0; i < NQ; i++) {
        float sa[K], sb[K], sc[K];
        int64_t ia[K], ib[K], ic[K];
        if (i == NQ / 2) { /* half the queries with a warm fast tier */
            cairn_tier_prefetch(a, query(i), 1 << 16, 0, NULL);
            cairn_tier_prefetch(b, query(i), 1 << 16, 0, NULL);
            cairn_tier_prefetch(c, query(i), 1 << 16, 0, NULL);
            cairn_tier_wait(a);
            cairn_tier_wait(b);
            cairn_tier_wait(c);
        }
        assert_int_equal(cairn_tier_search(a, query(i), K, NPROBE, sa, ia, &err), 0);
        assert_int_equal(cairn_tier_search(b, query(i), K, NPROBE, sb, ib, &err), 0);
        assert_int_equal(cairn_tier_search(c, query(i), K, NPROBE, sc, ic, &err), 0);
        assert_memory_equal(ia, ib, sizeof(ia));
        assert_memory_equal(sa, sb, sizeof(sa));
        assert_memory_equal(ia, ic, sizeof(ia));
        assert_memory_equal(sa, sc, sizeof(sa));
    }
    /* Bad lent lists. */
    cairn_tier *x = NULL;
    cairn_tier_mem bad = m;
    bad.ids = NULL;
    assert_int_equal(cairn_tier_open_mem(&x, &bad, &p, &err), CAIRN_EINVAL);
    assert_null(x);
    cairn_tier_close(a);
    cairn_tier_close(b);
    cairn_tier_close(c);
    free(ids);
    free(vecs);
    free(n);
}

/* ids equal, or a near-tie swapped at the same rank (scores within tol). */
static void assert_same_up_to_ties(const int64_t *ia, const float *sa, const int64_t *ib,
                                   const float *sb, float tol, size_t *swaps)
{
    for (int r = 0; r < K; r++) {
        assert_true(fabsf(sa[r] - sb[r]) <= tol);
        if (ia[r] != ib[r]) {
            /* A swap with a neighbour of nearly the same score (at the last rank, possibly
             * with the first one left out). */
            (*swaps)++;
            bool near = r == K - 1 || (r > 0 && sa[r - 1] - sa[r] <= tol) ||
                        (r + 1 < K && sa[r] - sa[r + 1] <= tol);
            assert_true(near);
        }
    }
}

/* Misses through FAISS search_preassigned: the tier's own answers up to float rounding, and
 * FAISS's own IVF search at the same nprobe up to near-ties of the probed set. */
static void test_faiss_misses(void **state)
{
    (void)state;
    cairn_tier_params p = cairn_tier_default_params();
    p.fast_bytes = 64;
    cairn_tier *own = open_tier(&p);
    p.miss_faiss = true;
    p.fast_bytes = cairn_tier_total_bytes(own) / 3;
    cairn_tier *fa = open_tier(&p);
    cairn_error err;
    size_t swaps = 0, same_faiss = 0;
    float q1[DIM];
    uint64_t s = 9;
    for (size_t i = 0; i < NQ; i++) {
        perturb(query(i), q1, 0.05f, &s);
        if (i % 3 == 0) {
            cairn_tier_prefetch(fa, query(i), SIZE_MAX, 0, NULL);
            cairn_tier_wait(fa);
        }
        float so[K], sf[K], sv[K];
        int64_t io[K], iff[K], iv[K];
        assert_int_equal(cairn_tier_search(own, q1, K, NPROBE, so, io, &err), 0);
        assert_int_equal(cairn_tier_search(fa, q1, K, NPROBE, sf, iff, &err), 0);
        assert_int_equal(cairn_ivf_search(ivf, q1, 1, K, NPROBE, sv, iv, &err), 0);
        assert_same_up_to_ties(io, so, iff, sf, 1e-5f, &swaps);
        for (int a = 0; a < K; a++)
            for (int b = 0; b < K; b++)
                same_faiss += iff[a] == iv[b];
    }
    print_message("FAISS misses: %zu near-tie swaps; %zu of %d ids as FAISS IVF\n", swaps,
                  same_faiss, NQ * K);
    assert_true(same_faiss >= (size_t)(NQ * K) * 98 / 100);
    /* A batch through FAISS matches the same queries one by one. */
    float qb[4 * DIM], sb[4 * K], s1[K];
    int64_t ib[4 * K], i1[K];
    memcpy(qb, query(1), sizeof(qb));
    assert_int_equal(cairn_tier_search_batch(fa, qb, 4, K, NPROBE, sb, ib, &err), 0);
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(cairn_tier_search(fa, qb + i * DIM, K, NPROBE, s1, i1, &err), 0);
        assert_memory_equal(ib + i * K, i1, sizeof(i1));
    }
    cairn_tier_close(own);
    cairn_tier_close(fa);
}

/* TeleRAG's mode: every search scans the whole fast tier and an eviction re-copies what stays;
 * the answers are cairn's, bit for bit. */
static void test_telerag_mode(void **state)
{
    (void)state;
    cairn_tier_params p = cairn_tier_default_params();
    p.fast_bytes = 64;
    cairn_tier *ref = open_tier(&p);
    size_t total = cairn_tier_total_bytes(ref);
    p.fast_bytes = total / 5;
    p.mode = CAIRN_TIER_TELERAG;
    cairn_tier *t = open_tier(&p);
    p.mode = CAIRN_TIER_CAIRN;
    cairn_tier *c = open_tier(&p);
    cairn_error err;
    float q1[DIM];
    uint64_t s = 17;
    for (size_t round = 0; round < 2; round++)
        for (size_t i = 0; i < NQ; i++) {
            perturb(query(i), q1, 0.1f, &s);
            assert_int_equal(cairn_tier_prefetch(t, query(i), total / 10, 0, &err), 0);
            assert_int_equal(cairn_tier_prefetch(c, query(i), total / 10, 0, &err), 0);
            cairn_tier_wait(t);
            cairn_tier_wait(c);
            float sa[K], sb[K], sc[K];
            int64_t ia[K], ib[K], ic[K];
            assert_int_equal(cairn_tier_search(t, q1, K, NPROBE, sa, ia, &err), 0);
            assert_int_equal(cairn_tier_search(ref, q1, K, NPROBE, sb, ib, &err), 0);
            assert_int_equal(cairn_tier_search(c, q1, K, NPROBE, sc, ic, &err), 0);
            assert_memory_equal(ia, ib, sizeof(ia));
            assert_memory_equal(sa, sb, sizeof(sa));
            assert_memory_equal(ic, ib, sizeof(ia));
            assert_memory_equal(sc, sb, sizeof(sa));
        }
    cairn_tier_stats st, stc;
    cairn_tier_get_stats(t, &st);
    cairn_tier_get_stats(c, &stc);
    print_message("telerag: evictions %llu rebuilds %llu recopied %llu B, scanned %llu B; "
                  "cairn: moved %llu B, scanned %llu B\n",
                  (unsigned long long)st.evictions, (unsigned long long)st.compactions,
                  (unsigned long long)st.recopied_bytes, (unsigned long long)st.hit_scan_bytes,
                  (unsigned long long)stc.moved_bytes, (unsigned long long)stc.hit_scan_bytes);
    assert_true(st.evictions > 0 && st.compactions > 0 && st.recopied_bytes > 0);
    assert_int_equal(st.moved_bytes, 0);
    assert_true(st.hits > 0);
    /* The whole buffer is read for every query: more than the probed hits alone. */
    assert_true(st.hit_scan_bytes > stc.hit_scan_bytes);
    assert_true(st.fast_used <= st.fast_capacity);
    cairn_tier_close(t);
    cairn_tier_close(c);
    cairn_tier_close(ref);
}

/* An index over borrowed lists searches as the index it borrows from, and refuses writes. */
static void test_ivf_borrow(void **state)
{
    (void)state;
    size_t nl = cairn_ivf_nlist(ivf);
    const int64_t **ids = calloc(nl, sizeof(*ids));
    const float **vecs = calloc(nl, sizeof(*vecs));
    size_t *n = calloc(nl, sizeof(*n));
    const float *cent;
    cairn_error err;
    assert_int_equal(cairn_ivf_centroids(ivf, &cent, &err), 0);
    for (size_t c = 0; c < nl; c++)
        assert_int_equal(cairn_ivf_list(ivf, c, &vecs[c], &ids[c], &n[c], &err), 0);
    cairn_ivf *b = NULL;
    assert_int_equal(cairn_ivf_borrow(&b, DIM, nl, cent, ids, vecs, n, &err), 0);
    assert_int_equal(cairn_ivf_count(b), N);
    float sa[NQ * K], sb[NQ * K];
    int64_t ia[NQ * K], ib[NQ * K];
    assert_int_equal(cairn_ivf_search(ivf, query(0), NQ, K, NPROBE, sa, ia, &err), 0);
    assert_int_equal(cairn_ivf_search(b, query(0), NQ, K, NPROBE, sb, ib, &err), 0);
    assert_memory_equal(ia, ib, sizeof(ia));
    assert_memory_equal(sa, sb, sizeof(sa));
    assert_int_equal(cairn_ivf_set_split_lists(b, true, &err), 0);
    assert_int_equal(cairn_ivf_search(b, query(0), 1, K, NPROBE, sb, ib, &err), 0);
    assert_memory_equal(ia, ib, K * sizeof(int64_t));
    /* search_preassigned over the lists FAISS would probe gives FAISS's answer. */
    int64_t assign[NPROBE];
    for (int r = 0; r < NPROBE; r++)
        assign[r] = -1;
    assert_int_equal(cairn_ivf_search_preassigned(b, query(0), 1, K, assign, NPROBE, sb, ib,
                                                  &err), 0);
    assert_int_equal(ib[0], -1); /* every list skipped */
    assign[0] = (int64_t)nl;
    assert_int_equal(cairn_ivf_search_preassigned(b, query(0), 1, K, assign, NPROBE, sb, ib,
                                                  &err), CAIRN_EINVAL);
    int64_t one = 1;
    assert_int_equal(cairn_ivf_add(b, data, &one, 1, &err), CAIRN_ESTATE);
    assert_int_equal(cairn_ivf_remove(b, &one, 1, NULL, &err), CAIRN_ESTATE);
    char path[160];
    snprintf(path, sizeof path, "%s/b.ivf", tmpdir);
    assert_int_equal(cairn_ivf_save(b, path, 1, &err), CAIRN_ESTATE);
    cairn_ivf_close(b);
    free(ids);
    free(vecs);
    free(n);
}

/* A GPU fast tier where there is none: a clear error, nothing opened. */
static void test_gpu_absent(void **state)
{
    (void)state;
    char why[256];
    if (cairn_gpu_count(why, sizeof why) > 0) {
        print_message("a GPU is here: tests/unit/test_cuda_tier.c covers it\n");
        skip();
    }
    cairn_tier_params p = cairn_tier_default_params();
    p.device = 0;
    cairn_tier *t = NULL;
    cairn_error err = {0};
    int rc = cairn_tier_open(&t, tier_path, &p, 7, &err);
    print_message("device 0: %s\n", err.msg);
    assert_int_equal(rc, CAIRN_EUNSUPPORTED);
    assert_null(t);
    assert_true(strlen(err.msg) > 0);
    assert_null(cairn_tier_pinned_alloc(0, 4096, why, sizeof why));
    assert_true(strlen(why) > 0);
    cairn_tier_pinned_free(NULL);
    p.device = -2;
    assert_int_equal(cairn_tier_open(&t, tier_path, &p, 7, &err), CAIRN_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_store_ops),   cmocka_unit_test(test_batch_equals_single),
        cmocka_unit_test(test_mem_and_ram_equal_file), cmocka_unit_test(test_faiss_misses),
        cmocka_unit_test(test_telerag_mode),     cmocka_unit_test(test_ivf_borrow),
        cmocka_unit_test(test_gpu_absent),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
