/* tests/unit/test_tier.c — slow/fast tiers: lookahead prefetch, hybrid search, bad tier files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "retrieval/ivf.h"
#include "retrieval/tier.h"

#include "synth_vectors.h"

/* q1: a rewrite of q0 — the same direction plus noise, renormalised. */
static void perturb(const float *q0, float *q1, int d, float sigma, uint64_t *s)
{
    for (int j = 0; j < d; j++)
        q1[j] = q0[j] + sigma * rng_gauss(s);
    normalize(q1, d);
}

enum { DIM = 32, N = 8000, K = 10, NPROBE = 8, NQ = 40 };

static char tmpdir[64];
static char tier_path[128];
static float *data;
static cairn_ivf *ivf;

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/cairn-test-tier-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(tier_path, sizeof(tier_path), "%s/index.tier", tmpdir);
    data = clustered(N + NQ, DIM, 40, 0.2f, 21);
    cairn_ivf_params p = cairn_ivf_default_params();
    p.dim = DIM;
    cairn_error err;
    if (cairn_ivf_new(&ivf, &p, &err) || cairn_ivf_train(ivf, data, N, &err))
        return -1;
    int64_t *ids = malloc(N * sizeof(int64_t));
    for (size_t i = 0; i < N; i++)
        ids[i] = 7 * (int64_t)i + 3;
    int rc = cairn_ivf_add(ivf, data, ids, N, &err);
    free(ids);
    if (rc || cairn_tier_build(ivf, tier_path, 42, &err))
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

static cairn_tier *open_tier(size_t fast_bytes)
{
    cairn_tier_params p = cairn_tier_default_params();
    p.fast_bytes = fast_bytes;
    cairn_tier *t = NULL;
    cairn_error err;
    int rc = cairn_tier_open(&t, tier_path, &p, 42, &err);
    if (rc)
        print_message("open: %s\n", err.msg);
    assert_int_equal(rc, 0);
    return t;
}

/* ---- Tests ----------------------------------------------------------------------------------------- */

/* The tier's search over nprobe lists agrees with FAISS's IVF search over the same lists. */
static void test_matches_faiss_ivf(void **state)
{
    (void)state;
    cairn_tier *t = open_tier(1 << 20);
    assert_int_equal(cairn_tier_nlist(t), cairn_ivf_nlist(ivf));
    assert_int_equal(cairn_tier_count(t), N);
    size_t same = 0;
    cairn_error err;
    for (size_t i = 0; i < NQ; i++) {
        const float *q = data + (N + i) * DIM;
        float s1[K], s2[K];
        int64_t i1[K], i2[K];
        assert_int_equal(cairn_tier_search(t, q, K, NPROBE, s1, i1, &err), 0);
        assert_int_equal(cairn_ivf_search(ivf, q, 1, K, NPROBE, s2, i2, &err), 0);
        for (int a = 0; a < K; a++) {
            assert_true(i1[a] >= 3 && (i1[a] - 3) % 7 == 0);
            if (a)
                assert_true(s1[a] <= s1[a - 1]);
            for (int b = 0; b < K; b++)
                if (i1[a] == i2[b]) {
                    assert_true(fabsf(s1[a] - s2[b]) < 1e-4f);
                    same++;
                }
        }
    }
    /* Float rounding may swap near-ties at the k-th place, nothing more. */
    assert_true(same >= (size_t)(NQ * K) * 98 / 100);
    cairn_tier_close(t);
}

/* TeleRAG's promise: prefetch changes speed, never answers. Fast tier < index, q0 != q1. */
static void test_prefetch_never_changes_results(void **state)
{
    (void)state;
    cairn_tier *probe = open_tier(1 << 20);
    size_t total = cairn_tier_total_bytes(probe);
    cairn_tier_close(probe);
    size_t fast = total / 4;
    cairn_tier *t = open_tier(fast);
    uint64_t seed = 99;
    float q1[DIM];
    cairn_error err;
    uint64_t hits_with = 0, probed_with = 0;
    for (size_t i = 0; i < NQ; i++) {
        const float *q0 = data + (N + i) * DIM;
        perturb(q0, q1, DIM, 0.05f, &seed);
        assert_true(memcmp(q0, q1, sizeof(q1)) != 0);
        float sa[K], sb[K];
        int64_t ia[K], ib[K];
        /* Without prefetch: an empty fast tier, everything scanned from the slow tier. */
        cairn_tier_clear_fast(t);
        cairn_tier_reset_stats(t);
        assert_int_equal(cairn_tier_search(t, q1, K, NPROBE, sa, ia, &err), 0);
        cairn_tier_stats st;
        cairn_tier_get_stats(t, &st);
        assert_int_equal(st.hits, 0);
        /* With prefetch for q0 (budget: a quarter of the fast tier), then search for q1. */
        cairn_tier_reset_stats(t);
        assert_int_equal(cairn_tier_prefetch(t, q0, fast / 4, 0, &err), 0);
        cairn_tier_wait(t);
        assert_int_equal(cairn_tier_search(t, q1, K, NPROBE, sb, ib, &err), 0);
        cairn_tier_get_stats(t, &st);
        assert_true(st.bytes_prefetched <= fast / 4);
        assert_true(st.fast_used <= st.fast_capacity);
        hits_with += st.hits;
        probed_with += st.probed;
        assert_memory_equal(ia, ib, sizeof(ia));
        assert_memory_equal(sa, sb, sizeof(sa));
    }
    /* The prefetch did hit: q1's clusters are mostly q0's. */
    print_message("hit ratio with prefetch: %.3f\n", (double)hits_with / (double)probed_with);
    assert_true(hits_with * 2 > probed_with);
    cairn_tier_close(t);
}

/* A fast tier under churn: many prefetches without clearing force evictions (and compaction);
 * searches keep matching a tier that never caches anything, while prefetches still run. */
static void test_churn_evicts_and_stays_correct(void **state)
{
    (void)state;
    cairn_tier *ref = open_tier(64);
    size_t total = cairn_tier_total_bytes(ref);
    cairn_tier *t = open_tier(total / 5);
    uint64_t seed = 5;
    float q1[DIM];
    cairn_error err;
    for (size_t round = 0; round < 3; round++)
        for (size_t i = 0; i < NQ; i++) {
            const float *q0 = data + (N + i) * DIM;
            perturb(q0, q1, DIM, 0.1f, &seed);
            assert_int_equal(cairn_tier_prefetch(t, q0, total, 0, &err), 0);
            if (i % 2)
                cairn_tier_wait(t); /* else: search while the prefetch is still copying */
            float sa[K], sb[K];
            int64_t ia[K], ib[K];
            assert_int_equal(cairn_tier_search(t, q1, K, NPROBE, sa, ia, &err), 0);
            assert_int_equal(cairn_tier_search(ref, q1, K, NPROBE, sb, ib, &err), 0);
            assert_memory_equal(ia, ib, sizeof(ia));
            assert_memory_equal(sa, sb, sizeof(sa));
        }
    cairn_tier_wait(t);
    cairn_tier_stats st;
    cairn_tier_get_stats(t, &st);
    print_message("evictions %llu compactions %llu resident %zu used %zu / %zu\n",
                  (unsigned long long)st.evictions, (unsigned long long)st.compactions,
                  st.resident_clusters, st.fast_used, st.fast_capacity);
    assert_true(st.evictions > 0);
    assert_true(st.compactions > 0); /* in-place compaction ran, and answers stayed the same */
    assert_true(st.fast_used <= st.fast_capacity);
    assert_true(st.hits > 0);
    cairn_tier_get_stats(ref, &st);
    assert_int_equal(st.hits, 0); /* 64 bytes hold no cluster */
    cairn_tier_close(t);
    cairn_tier_close(ref);
}

/* Eviction goes by hotness: clusters that searches keep probing survive other prefetches. */
static void test_hot_clusters_survive_eviction(void **state)
{
    (void)state;
    cairn_tier *probe = open_tier(1 << 20);
    size_t total = cairn_tier_total_bytes(probe);
    cairn_tier_close(probe);
    size_t fast = total / 3;
    cairn_tier *t = open_tier(fast);
    cairn_error err;
    const float *qa = data + (size_t)N * DIM, *qb = qa + 10 * DIM, *qc = qa + 20 * DIM;
    float s[K];
    int64_t id[K];
    cairn_tier_stats st;
    assert_int_equal(cairn_tier_prefetch(t, qa, fast / 3, 0, &err), 0);
    cairn_tier_wait(t);
    for (int i = 0; i < 20; i++)
        assert_int_equal(cairn_tier_search(t, qa, K, NPROBE, s, id, &err), 0);
    cairn_tier_reset_stats(t);
    assert_int_equal(cairn_tier_search(t, qa, K, NPROBE, s, id, &err), 0);
    cairn_tier_get_stats(t, &st);
    uint64_t hits_before = st.hits;
    assert_true(hits_before > 0);
    /* Two prefetches for other queries that together overflow the fast tier. */
    assert_int_equal(cairn_tier_prefetch(t, qb, fast / 2, 0, &err), 0);
    cairn_tier_wait(t);
    assert_int_equal(cairn_tier_prefetch(t, qc, fast / 2, 0, &err), 0);
    cairn_tier_wait(t);
    cairn_tier_reset_stats(t);
    assert_int_equal(cairn_tier_search(t, qa, K, NPROBE, s, id, &err), 0);
    cairn_tier_get_stats(t, &st);
    assert_int_equal(st.hits, hits_before);
    cairn_tier_close(t);
}

static void test_cancel_and_budget(void **state)
{
    (void)state;
    cairn_tier *probe = open_tier(1 << 20);
    size_t total = cairn_tier_total_bytes(probe);
    cairn_tier_close(probe);
    /* Room for every cluster, each rounded up to the arena's 64-byte alignment. */
    cairn_tier *t = open_tier(total + 64 * cairn_ivf_nlist(ivf));
    cairn_error err;
    const float *q0 = data + (size_t)N * DIM;
    /* Budget 0 brings nothing. */
    assert_int_equal(cairn_tier_prefetch(t, q0, 0, 0, &err), 0);
    cairn_tier_wait(t);
    cairn_tier_stats st;
    cairn_tier_get_stats(t, &st);
    assert_int_equal(st.bytes_prefetched, 0);
    /* max_clusters bounds the clusters considered. */
    assert_int_equal(cairn_tier_prefetch(t, q0, total, 3, &err), 0);
    cairn_tier_wait(t);
    cairn_tier_get_stats(t, &st);
    assert_true(st.clusters_prefetched <= 3 && st.clusters_prefetched >= 1);
    /* Cancel right after starting: whatever was copied stays within the fast tier, and a
     * second cancel or wait returns at once. */
    cairn_tier_clear_fast(t);
    assert_int_equal(cairn_tier_prefetch(t, q0, total, 0, &err), 0);
    cairn_tier_cancel(t);
    cairn_tier_cancel(t);
    cairn_tier_wait(t);
    cairn_tier_get_stats(t, &st);
    assert_true(st.fast_used <= st.fast_capacity);
    /* A full prefetch brings the whole index when it fits; then every probe hits. */
    cairn_tier_clear_fast(t);
    cairn_tier_reset_stats(t);
    assert_int_equal(cairn_tier_prefetch(t, q0, total, 0, &err), 0);
    cairn_tier_wait(t);
    float s[K];
    int64_t id[K];
    assert_int_equal(cairn_tier_search(t, q0, K, NPROBE, s, id, &err), 0);
    cairn_tier_get_stats(t, &st);
    assert_int_equal(st.hits, NPROBE);
    assert_int_equal(st.bytes_prefetched, total);
    /* Bad arguments. */
    assert_int_equal(cairn_tier_search(t, q0, 0, NPROBE, s, id, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_tier_search(t, q0, CAIRN_TIER_MAX_K + 1, NPROBE, s, id, &err),
                     CAIRN_EINVAL);
    assert_int_equal(cairn_tier_search(t, q0, K, 0, s, id, &err), CAIRN_EINVAL);
    cairn_tier_close(t);
}

static cairn_tier *open_split(size_t fast_bytes, int split, size_t stage, bool worker)
{
    cairn_tier_params p = cairn_tier_default_params();
    p.fast_bytes = fast_bytes;
    p.miss_split = split;
    p.stage_bytes = stage;
    p.miss_worker = worker;
    cairn_tier *t = NULL;
    cairn_error err;
    int rc = cairn_tier_open(&t, tier_path, &p, 42, &err);
    if (rc)
        print_message("open: %s\n", err.msg);
    assert_int_equal(rc, 0);
    return t;
}

/* Misses scanned by the store (copied on demand into its staging) beside the worker's: the
 * same answers, bit for bit, whoever scans what: every miss to the store, a balanced split,
 * a staging too small for some clusters (those stay the CPU's), no worker thread. */
static void test_miss_split_never_changes_results(void **state)
{
    (void)state;
    cairn_tier *ref = open_split(64, CAIRN_TIER_MISS_CPU, 0, true);
    size_t total = cairn_tier_total_bytes(ref), nl = cairn_ivf_nlist(ivf);
    struct {
        int split;
        size_t stage;
        bool worker;
    } cfg[] = {
        {CAIRN_TIER_MISS_STORE, 64u << 20, true},
        {CAIRN_TIER_MISS_SPLIT, 64u << 20, true},
        {CAIRN_TIER_MISS_STORE, 2 * total / nl, true}, /* about the mean cluster per round */
        {CAIRN_TIER_MISS_SPLIT, 64u << 20, false},
    };
    cairn_error err;
    for (size_t ci = 0; ci < sizeof cfg / sizeof cfg[0]; ci++) {
        cairn_tier *t = open_split(total / 4, cfg[ci].split, cfg[ci].stage, cfg[ci].worker);
        uint64_t seed = 17 + ci;
        float q1[NQ * DIM];
        for (size_t i = 0; i < NQ; i++) {
            const float *q0 = data + (N + i) * DIM;
            perturb(q0, q1, DIM, 0.1f, &seed);
            assert_int_equal(cairn_tier_prefetch(t, q0, total / 16, 0, &err), 0);
            if (i % 2)
                cairn_tier_wait(t);
            float sa[K], sb[K];
            int64_t ia[K], ib[K];
            assert_int_equal(cairn_tier_search(t, q1, K, NPROBE, sa, ia, &err), 0);
            assert_int_equal(cairn_tier_search(ref, q1, K, NPROBE, sb, ib, &err), 0);
            assert_memory_equal(ia, ib, sizeof(ia));
            assert_memory_equal(sa, sb, sizeof(sa));
        }
        /* A batch whose queries share clusters: one copy serves all that probe it. */
        for (size_t i = 0; i < 16; i++)
            perturb(data + (N + i % 4) * DIM, q1 + i * DIM, DIM, 0.05f, &seed);
        cairn_tier_clear_fast(t);
        cairn_tier_reset_stats(t);
        float sa[16 * K], sb[16 * K];
        int64_t ia[16 * K], ib[16 * K];
        assert_int_equal(cairn_tier_search_batch(t, q1, 16, K, 2 * NPROBE, sa, ia, &err), 0);
        assert_int_equal(cairn_tier_search_batch(ref, q1, 16, K, 2 * NPROBE, sb, ib, &err), 0);
        assert_memory_equal(ia, ib, sizeof(ia));
        assert_memory_equal(sa, sb, sizeof(sa));
        cairn_tier_stats st;
        cairn_tier_get_stats(t, &st);
        print_message("split %d stage %zu: store %llu clusters for %llu pairs (%llu B), cpu "
                      "%llu B\n", cfg[ci].split, cfg[ci].stage,
                      (unsigned long long)st.store_miss_clusters,
                      (unsigned long long)st.store_miss_pairs,
                      (unsigned long long)st.store_miss_bytes,
                      (unsigned long long)st.cpu_miss_bytes);
        assert_int_equal(st.hits, 0);
        assert_true(st.store_miss_clusters > 0);
        assert_true(st.store_miss_pairs > st.store_miss_clusters); /* shared by queries */
        if (ci == 0)
            assert_int_equal(st.cpu_miss_bytes, 0); /* every miss fitted the staging */
        if (ci == 2)
            assert_true(st.cpu_miss_bytes > 0); /* the clusters too big for a round */
        cairn_tier_close(t);
    }
    cairn_tier_close(ref);
}

/* A batch prefetch brings first what most of its queries will probe: with the budget of one
 * query's clusters, a batch where that query comes three times in five brings exactly them.
 * Also the budget's bookkeeping and helpers. */
static void test_batch_prefetch_by_demand(void **state)
{
    (void)state;
    cairn_tier *probe = open_tier(1 << 20);
    size_t total = cairn_tier_total_bytes(probe);
    cairn_tier_close(probe);
    cairn_tier *t = open_tier(total / 2);
    const float *qa = data + (size_t)N * DIM, *qb = qa + 10 * DIM, *qc = qa + 20 * DIM;
    cairn_error err;
    cairn_tier_stats st;
    float s[K];
    int64_t id[K];
    assert_int_equal(cairn_tier_prefetch(t, qa, total, NPROBE, &err), 0);
    cairn_tier_wait(t);
    cairn_tier_get_stats(t, &st);
    size_t ba = (size_t)st.bytes_prefetched;
    assert_int_equal(st.budget_bytes, total);
    cairn_tier_reset_stats(t);
    assert_int_equal(cairn_tier_search(t, qa, K, NPROBE, s, id, &err), 0);
    cairn_tier_get_stats(t, &st);
    uint64_t hits_alone = st.hits;
    assert_true(hits_alone > 0);

    float qs[5 * DIM];
    const float *order[5] = {qb, qa, qc, qa, qa};
    for (int i = 0; i < 5; i++)
        memcpy(qs + i * DIM, order[i], DIM * sizeof(float));
    cairn_tier_clear_fast(t);
    assert_int_equal(cairn_tier_prefetch_batch(t, qs, 5, ba, NPROBE, &err), 0);
    cairn_tier_wait(t);
    cairn_tier_reset_stats(t);
    assert_int_equal(cairn_tier_search(t, qa, K, NPROBE, s, id, &err), 0);
    cairn_tier_get_stats(t, &st);
    assert_int_equal(st.hits, hits_alone);
    cairn_tier_close(t);

    /* A RAM fast tier has no measured copy rate: any budget. */
    t = open_tier(1 << 20);
    assert_true(cairn_tier_copy_rate(t) == 0);
    assert_int_equal(cairn_tier_budget_for(t, 0.5), SIZE_MAX);
    assert_int_equal(cairn_tier_budget_for(t, 0), 0);
    cairn_tier_close(t);
}

static void test_bad_tier_files(void **state)
{
    (void)state;
    FILE *f = fopen(tier_path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    size_t len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *bytes = malloc(len);
    assert_int_equal(fread(bytes, 1, len, f), len);
    fclose(f);
    char bad[160];
    snprintf(bad, sizeof(bad), "%s/bad.tier", tmpdir);
    cairn_tier_params p = cairn_tier_default_params();
    p.fast_bytes = 4096;
    cairn_tier *t = NULL;
    cairn_error err;
    struct {
        size_t off;     /* byte to flip, or SIZE_MAX: truncate to len / 2 */
        int code;
        const char *what;
    } cases[] = {
        {0, CAIRN_EFORMAT, "magic"},
        {17, CAIRN_EFORMAT, "checksum"},    /* nlist, header checksum catches it */
        {130, CAIRN_EFORMAT, "checksum"},   /* a centroid byte */
        {SIZE_MAX, CAIRN_EFORMAT, "bytes"}, /* truncated */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        f = fopen(bad, "wb");
        if (cases[i].off == SIZE_MAX) {
            fwrite(bytes, 1, len / 2, f);
        } else {
            bytes[cases[i].off] ^= 0x21;
            fwrite(bytes, 1, len, f);
            bytes[cases[i].off] ^= 0x21;
        }
        fclose(f);
        assert_int_equal(cairn_tier_open(&t, bad, &p, 0, &err), cases[i].code);
        assert_non_null(strstr(err.msg, cases[i].what));
        assert_null(t);
    }
    /* A good file for another docstore; a missing file. */
    assert_int_equal(cairn_tier_open(&t, tier_path, &p, 43, &err), CAIRN_ESTATE);
    assert_int_equal(cairn_tier_open(&t, "/nonexistent/x.tier", &p, 0, &err), CAIRN_ENOTFOUND);
    unlink(bad);
    free(bytes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_faiss_ivf),
        cmocka_unit_test(test_prefetch_never_changes_results),
        cmocka_unit_test(test_churn_evicts_and_stays_correct),
        cmocka_unit_test(test_hot_clusters_survive_eviction),
        cmocka_unit_test(test_cancel_and_budget),
        cmocka_unit_test(test_miss_split_never_changes_results),
        cmocka_unit_test(test_batch_prefetch_by_demand),
        cmocka_unit_test(test_bad_tier_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
