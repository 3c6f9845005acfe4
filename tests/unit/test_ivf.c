/* tests/unit/test_ivf.c — FAISS IVF through the C API: recall, add/remove, save/load checks. */
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

#include "retrieval/ivf.h"

#include "synth_vectors.h"

/* Exact top-k by inner product (double accumulation), ids = base + index. */
static void exact_topk(const float *x, size_t n, int d, const float *q, size_t k, int64_t base,
                       int64_t *out)
{
    double *best = malloc(k * sizeof(double));
    for (size_t j = 0; j < k; j++) {
        best[j] = -INFINITY;
        out[j] = -1;
    }
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < d; j++)
            s += (double)q[j] * x[i * d + j];
        if (s <= best[k - 1])
            continue;
        size_t p = k - 1;
        while (p > 0 && best[p - 1] < s) {
            best[p] = best[p - 1];
            out[p] = out[p - 1];
            p--;
        }
        best[p] = s;
        out[p] = base + (int64_t)i;
    }
    free(best);
}

static double recall_at(const int64_t *got, const int64_t *want, size_t nq, size_t k)
{
    size_t hit = 0;
    for (size_t q = 0; q < nq; q++)
        for (size_t i = 0; i < k; i++)
            for (size_t j = 0; j < k; j++)
                if (got[q * k + i] == want[q * k + j] && want[q * k + j] >= 0) {
                    hit++;
                    break;
                }
    return (double)hit / (double)(nq * k);
}

enum { DIM = 48, N = 12000, NQ = 100, K = 10 };
#define ID_BASE 1000

static cairn_ivf *build(const float *x, size_t n)
{
    cairn_ivf_params p = cairn_ivf_default_params();
    p.dim = DIM;
    cairn_ivf *ivf = NULL;
    cairn_error err;
    assert_int_equal(cairn_ivf_new(&ivf, &p, &err), 0);
    assert_int_equal(cairn_ivf_train(ivf, x, n, &err), 0);
    int64_t *ids = malloc(n * sizeof(int64_t));
    for (size_t i = 0; i < n; i++)
        ids[i] = ID_BASE + (int64_t)i;
    assert_int_equal(cairn_ivf_add(ivf, x, ids, n, &err), 0);
    free(ids);
    return ivf;
}

/* ---- Tests ----------------------------------------------------------------------------------------- */

static void test_nlist_sizing(void **state)
{
    (void)state;
    size_t sizes[] = {1, 38, 39, 1000, 50000, 1000000, 1000000000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t n = sizes[i], nl = cairn_ivf_nlist_for(n);
        assert_true(nl >= 1 && nl <= 65536);
        if (n >= 39)
            assert_true(nl <= n / 39);
        if (n >= 1000 && n <= 1000000) /* the 4 sqrt(N) rule, within rounding */
            assert_true(fabs((double)nl - 4.0 * sqrt((double)n)) <= 1.0 || nl == n / 39);
    }
}

static void test_recall_against_exact(void **state)
{
    (void)state;
    /* The last NQ points, drawn like the rest but never added, are the queries. */
    float *x = clustered(N + NQ, DIM, 60, 0.2f, 11);
    const float *q = x + (size_t)N * DIM;
    cairn_ivf *ivf = build(x, N);
    assert_int_equal(cairn_ivf_count(ivf), N);
    assert_int_equal(cairn_ivf_nlist(ivf), cairn_ivf_nlist_for(N));

    int64_t *want = malloc(NQ * K * sizeof(int64_t)), *got = malloc(NQ * K * sizeof(int64_t));
    float *scores = malloc(NQ * K * sizeof(float));
    for (size_t i = 0; i < NQ; i++)
        exact_topk(x, N, DIM, q + i * DIM, K, ID_BASE, want + i * K);
    cairn_error err;
    assert_int_equal(cairn_ivf_search(ivf, q, NQ, K, 0, scores, got, &err), 0);
    double r_default = recall_at(got, want, NQ, K);
    print_message("recall@10 at default nprobe %zu of nlist %zu: %.4f\n", cairn_ivf_nprobe(ivf),
                  cairn_ivf_nlist(ivf), r_default);
    assert_true(r_default >= 0.95);
    /* Scores are sorted and are the inner products of the returned vectors. */
    for (size_t i = 0; i < NQ; i++)
        for (size_t j = 0; j < K; j++) {
            int64_t id = got[i * K + j];
            assert_true(id >= ID_BASE && id < ID_BASE + N);
            double s = 0;
            for (int d = 0; d < DIM; d++)
                s += (double)q[i * DIM + d] * x[(size_t)(id - ID_BASE) * DIM + d];
            assert_true(fabs(s - scores[i * K + j]) < 1e-4);
            if (j)
                assert_true(scores[i * K + j] <= scores[i * K + j - 1]);
        }
    /* Probing every list is exhaustive. */
    assert_int_equal(cairn_ivf_search(ivf, q, NQ, K, cairn_ivf_nlist(ivf), scores, got, &err), 0);
    assert_true(recall_at(got, want, NQ, K) >= 0.999);
    /* nprobe 1 is worse than the default on this data (the knob does something). */
    assert_int_equal(cairn_ivf_search(ivf, q, NQ, K, 1, scores, got, &err), 0);
    assert_true(recall_at(got, want, NQ, K) < r_default);

    free(want);
    free(got);
    free(scores);
    cairn_ivf_close(ivf);
    free(x);
}

static void test_remove_ids(void **state)
{
    (void)state;
    size_t n = 4000;
    float *x = clustered(n, DIM, 20, 0.3f, 5);
    cairn_ivf *ivf = build(x, n);
    /* Query with stored vectors: each finds itself first; remove those, they are gone. */
    int64_t rm[5] = {ID_BASE + 3, ID_BASE + 10, ID_BASE + 77, ID_BASE + 2500, 99999999};
    float scores[K];
    int64_t ids[K];
    cairn_error err;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(cairn_ivf_search(ivf, x + (size_t)(rm[i] - ID_BASE) * DIM, 1, K,
                                          cairn_ivf_nlist(ivf), scores, ids, &err), 0);
        assert_int_equal(ids[0], rm[i]);
    }
    size_t removed = 0;
    assert_int_equal(cairn_ivf_remove(ivf, rm, 5, &removed, &err), 0);
    assert_int_equal(removed, 4);
    assert_int_equal(cairn_ivf_count(ivf), n - 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(cairn_ivf_search(ivf, x + (size_t)(rm[i] - ID_BASE) * DIM, 1, K,
                                          cairn_ivf_nlist(ivf), scores, ids, &err), 0);
        for (int j = 0; j < K; j++)
            assert_true(ids[j] != rm[i]);
    }
    cairn_ivf_close(ivf);
    free(x);
}

static void test_state_errors(void **state)
{
    (void)state;
    cairn_ivf_params p = cairn_ivf_default_params();
    p.dim = DIM;
    p.nlist = 64;
    cairn_ivf *ivf = NULL;
    cairn_error err;
    assert_int_equal(cairn_ivf_new(&ivf, &p, &err), 0);
    float q[DIM] = {1};
    float s[K];
    int64_t id[K];
    assert_int_equal(cairn_ivf_search(ivf, q, 1, K, 0, s, id, &err), CAIRN_ESTATE);
    int64_t one = 1;
    assert_int_equal(cairn_ivf_add(ivf, q, &one, 1, &err), CAIRN_ESTATE);
    float *x = clustered(10, DIM, 2, 0.1f, 3);
    assert_int_equal(cairn_ivf_train(ivf, x, 10, &err), CAIRN_EINVAL); /* 10 < nlist 64 */
    assert_non_null(strstr(err.msg, "10 training vectors"));
    free(x);
    cairn_ivf_close(ivf);
    p.dim = 0;
    assert_int_equal(cairn_ivf_new(&ivf, &p, &err), CAIRN_EINVAL);
    cairn_ivf_close(NULL);
}

static char tmpdir[64];

static void path_in(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(*n);
    assert_int_equal(fread(p, 1, *n, f), *n);
    fclose(f);
    return p;
}

static void test_save_load(void **state)
{
    (void)state;
    size_t n = 3000;
    float *x = clustered(n, DIM, 15, 0.3f, 9);
    cairn_ivf *ivf = build(x, n);
    char path[128], bad[128];
    path_in(path, sizeof(path), "index.ivf");
    path_in(bad, sizeof(bad), "bad.ivf");
    cairn_error err;
    uint64_t uid = 0x1234abcd5678ef01ull;
    assert_int_equal(cairn_ivf_save(ivf, path, uid, &err), 0);

    cairn_ivf *back = NULL;
    assert_int_equal(cairn_ivf_load(&back, path, uid, &err), 0);
    assert_int_equal(cairn_ivf_count(back), n);
    assert_int_equal(cairn_ivf_nlist(back), cairn_ivf_nlist(ivf));
    assert_int_equal(cairn_ivf_dim(back), DIM);
    assert_true(cairn_ivf_docstore_uid(back) == uid);
    float s1[5 * K], s2[5 * K];
    int64_t i1[5 * K], i2[5 * K];
    assert_int_equal(cairn_ivf_search(ivf, x, 5, K, 4, s1, i1, &err), 0);
    assert_int_equal(cairn_ivf_search(back, x, 5, K, 4, s2, i2, &err), 0);
    assert_memory_equal(i1, i2, sizeof(i1));
    assert_memory_equal(s1, s2, sizeof(s1));
    cairn_ivf_close(back);

    /* A docstore with another uid: a clear error. 0 skips the check. */
    assert_int_equal(cairn_ivf_load(&back, path, uid + 2, &err), CAIRN_ESTATE);
    assert_non_null(strstr(err.msg, "docstore"));
    assert_null(back);
    assert_int_equal(cairn_ivf_load(&back, path, 0, &err), 0);
    cairn_ivf_close(back);

    /* Missing, truncated, corrupted payload, corrupted header, not an index. */
    path_in(bad, sizeof(bad), "missing.ivf");
    assert_int_equal(cairn_ivf_load(&back, bad, 0, &err), CAIRN_ENOTFOUND);
    path_in(bad, sizeof(bad), "bad.ivf");
    size_t len;
    uint8_t *bytes = read_all(path, &len);
    write_bytes(bad, bytes, len - 100);
    assert_int_equal(cairn_ivf_load(&back, bad, 0, &err), CAIRN_EFORMAT);
    write_bytes(bad, bytes, 10);
    assert_int_equal(cairn_ivf_load(&back, bad, 0, &err), CAIRN_EFORMAT);
    bytes[len / 2] ^= 0x40;
    write_bytes(bad, bytes, len);
    assert_int_equal(cairn_ivf_load(&back, bad, 0, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "checksum"));
    bytes[len / 2] ^= 0x40;
    bytes[20] ^= 1; /* nlist */
    write_bytes(bad, bytes, len);
    assert_int_equal(cairn_ivf_load(&back, bad, 0, &err), CAIRN_EFORMAT);
    memset(bytes, 'x', 200);
    write_bytes(bad, bytes, 200);
    assert_int_equal(cairn_ivf_load(&back, bad, 0, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "magic"));
    assert_null(back);
    free(bytes);
    unlink(bad);
    unlink(path);
    cairn_ivf_close(ivf);
    free(x);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/cairn-test-ivf-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}
static int teardown(void **state)
{
    (void)state;
    return rmdir(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nlist_sizing),      cmocka_unit_test(test_recall_against_exact),
        cmocka_unit_test(test_remove_ids),        cmocka_unit_test(test_state_errors),
        cmocka_unit_test(test_save_load),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
