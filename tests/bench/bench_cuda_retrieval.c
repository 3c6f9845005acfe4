/*
 * tests/bench/bench_cuda_retrieval.c — lookahead retrieval with a GPU fast tier, three systems
 * side by side on one synthetic index made on the GPU (issue 19).
 *
 * Usage: bench_cuda_retrieval [--device N] [--gib G] [--queries Q] [--batches B]
 *                             [--pairs rewrite|hyde] [--sweep]
 *
 * The index: 768-d, IVF4096, G GiB of fp32 vectors (default 10; 3.5 M vectors), in page-locked
 * host memory (the slow tier: "host RAM", copied from by DMA). Centroids have a three-level
 * structure like topics in a real embedding space: 8 super-topics, 64 topics, 4096 centres,
 * centre = normalize(0.55 S + 0.55 T + 0.63 g) (g ~ N(0, I/d)), so a centre shares cosine ~0.6
 * with the other centres of its topic and ~0.3 with those of its super-topic. List sizes are
 * log-normal (sigma 0.5) around the mean, as IVF lists are unbalanced. A vector of list c is
 * normalize(centre_c + g) (cosine ~0.71 to its centre); it is filed under its own centre (no
 * k-means: the assignment is the generating centre, which is also nearly always the nearest).
 *
 * Query pairs: q1 (the rewrite, which is searched) is made as a vector is, around a random
 * centre; q0 (the question as first seen, which is prefetched for) is normalize(rho q1 +
 * sqrt(1 - rho^2) u) with u a random unit vector orthogonal to q1, so cos(q0, q1) = rho
 * exactly. rho is drawn from the distribution measured on real pairs with all-MiniLM-L6-v2
 * (RHO_Q below): 600 Debian packages spread over the default corpus, q0 = "Which Debian
 * package provides <synopsis>?", q1 = the synopsis (the repository's lookahead pair, see
 * bench_retrieval.c): mean 0.866, 10-90% 0.81-0.91. --pairs hyde takes q1 = the package's long
 * description instead (a HyDE-like document): mean 0.620, 10-90% 0.44-0.78.
 *
 * Systems (the GPU fast tier holds a quarter of the index; prefetch budget per query = nprobe
 * clusters of mean size, the clusters q0 ranks first):
 *   cpu_faiss  FAISS IndexIVFFlat over the same lists (borrowed, no copy) on all host cores:
 *              batch 1 splits each query's lists over the threads, batch 32 the queries;
 *   telerag    TeleRAG's way as cairn's tier reproduces it (CAIRN_TIER_TELERAG): whole fast
 *              tier scanned for every query, one waited-for copy per cluster, every eviction
 *              re-copies what stays; misses on the CPU (FAISS search_preassigned) beside;
 *   cairn      probed-only scans with per-query top-k on the GPU, async copies with per-cluster
 *              events, device-to-device compaction; misses as above.
 * Figures (JSON lines): search latency p50/p99 per (system, nprobe 128/256, batch 1/32) after
 * the prefetch finished; hit ratio; answers against cpu_faiss (ids equal, or a swap of scores
 * within 1e-5); prefetch throughput from an empty fast tier beside a pinned copy timed in the
 * same run; scan bandwidth (all probes resident) beside a plain read kernel; fp16 storage's
 * recall@10 against fp32. --sweep adds latency against cache fraction and hit ratio against
 * budget (nprobe 128, batch 1).
 */
#include "common/clock.h"
#include "common/error.h"
#include "common/gpu.h"
#include "common/rand.h"
#include "retrieval/ivf.h"
#include "retrieval/tier.h"
#include "retrieval/tier_store.h"
#include "tests/bench/cuda/peak.h"
#include "tests/bench/cuda/synth_ivf.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIM 768
#define NLIST 4096
#define K 10
#define MAXB 32

/* Quantiles 0, 5, ..., 100% of cos(q0, q1) over 600 real pairs embedded with
 * all-MiniLM-L6-v2 (see the top): question -> synopsis (a rewrite; the default), and question
 * -> the package's long description (a HyDE-like hypothetical document; --pairs hyde). */
static const double RHO_REWRITE[21] = {0.6922, 0.7846, 0.8086, 0.8213, 0.8340, 0.8427, 0.8494,
                                       0.8561, 0.8628, 0.8681, 0.8731, 0.8769, 0.8834, 0.8875,
                                       0.8926, 0.8972, 0.9029, 0.9068, 0.9144, 0.9219, 0.9532};
static const double RHO_HYDE[21] = {0.1875, 0.3791, 0.4374, 0.4716, 0.5114, 0.5425, 0.5610,
                                    0.5781, 0.5934, 0.6099, 0.6293, 0.6450, 0.6616, 0.6827,
                                    0.7024, 0.7256, 0.7399, 0.7552, 0.7789, 0.8167, 0.9165};
static const double *RHO_Q = RHO_REWRITE;

static char card[256];
static int device;

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_cuda_retrieval: %s: %s\n", what, msg);
    exit(1);
}

static double gauss(uint64_t *s)
{
    double u1 = ((double)(cairn_rand_next(s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = ((double)(cairn_rand_next(s) >> 11) + 0.5) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void normalize(float *v, int d)
{
    double n = 0;
    for (int i = 0; i < d; i++)
        n += (double)v[i] * v[i];
    n = sqrt(n);
    for (int i = 0; i < d; i++)
        v[i] = (float)(v[i] / n);
}

static void random_unit(float *v, uint64_t *s)
{
    for (int j = 0; j < DIM; j++)
        v[j] = (float)gauss(s);
    normalize(v, DIM);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, size_t n, double p)
{
    qsort(v, n, sizeof *v, cmp_double);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

/* ---- The index and the queries --------------------------------------------------------------- */

typedef struct {
    size_t n_total, total_bytes;
    float *cent;      /* NLIST * DIM */
    size_t *n;
    int64_t **ids;
    float **vecs;
    uint8_t *pinned;  /* one page-locked block holding every list */
    double gen_s;
} index_t;

static void make_index(index_t *x, double gib, uint64_t seed)
{
    uint64_t s = seed;
    float *sup = malloc(8 * DIM * sizeof(float)), *top = malloc(64 * DIM * sizeof(float));
    for (int i = 0; i < 8; i++)
        random_unit(sup + i * DIM, &s);
    for (int i = 0; i < 64; i++)
        random_unit(top + i * DIM, &s);
    x->cent = malloc((size_t)NLIST * DIM * sizeof(float));
    for (size_t c = 0; c < NLIST; c++) {
        float *v = x->cent + c * DIM;
        for (int j = 0; j < DIM; j++)
            v[j] = 0.55f * sup[(c / 512) * DIM + j] + 0.55f * top[(c / 64) * DIM + j] +
                   0.63f * (float)(gauss(&s) / sqrt((double)DIM));
        normalize(v, DIM);
    }
    free(sup);
    free(top);
    size_t per = 8 + 4 * DIM, want = (size_t)(gib * 1073741824.0 / (4.0 * DIM));
    double *w = malloc(NLIST * sizeof(double)), sum = 0;
    for (size_t c = 0; c < NLIST; c++)
        sum += (w[c] = exp(0.5 * gauss(&s)));
    x->n = malloc(NLIST * sizeof(size_t));
    x->n_total = 0;
    for (size_t c = 0; c < NLIST; c++)
        x->n_total += (x->n[c] = (size_t)((double)want * w[c] / sum) + 1);
    free(w);
    x->total_bytes = x->n_total * per;
    char why[256];
    double t0 = cairn_now_sec();
    x->pinned = cairn_tier_pinned_alloc(device, x->total_bytes, why, sizeof why);
    if (!x->pinned)
        die("page-locked slow tier", why);
    x->ids = malloc(NLIST * sizeof(int64_t *));
    x->vecs = malloc(NLIST * sizeof(float *));
    size_t at = 0;
    int64_t id = 0;
    for (size_t c = 0; c < NLIST; c++) {
        x->ids[c] = (int64_t *)(x->pinned + at);
        for (size_t r = 0; r < x->n[c]; r++)
            x->ids[c][r] = id++;
        at += 8 * x->n[c];
        x->vecs[c] = (float *)(x->pinned + at);
        at += 4 * DIM * x->n[c];
    }
    if (cairn_bench_synth_lists(device, DIM, NLIST, x->cent, x->n, 1.0f, seed, x->vecs, why,
                                sizeof why))
        die("synthetic lists", why);
    x->gen_s = cairn_now_sec() - t0;
}

/* n pairs: q1 near a random centre (as a vector is), q0 at cosine rho from it. */
static void make_pairs(size_t n, float *q0, float *q1, double *rho_out, const index_t *x,
                       uint64_t *s)
{
    float u[DIM];
    for (size_t i = 0; i < n; i++) {
        float *a = q1 + i * DIM, *b = q0 + i * DIM;
        const float *c = x->cent + (cairn_rand_next(s) % NLIST) * DIM;
        for (int j = 0; j < DIM; j++)
            a[j] = c[j] + (float)(gauss(s) / sqrt((double)DIM));
        normalize(a, DIM);
        double p = (double)(cairn_rand_next(s) >> 11) / 9007199254740992.0 * 20.0;
        int lo = (int)p;
        double rho = lo >= 20 ? RHO_Q[20] : RHO_Q[lo] + (p - lo) * (RHO_Q[lo + 1] - RHO_Q[lo]);
        random_unit(u, s);
        double d = 0;
        for (int j = 0; j < DIM; j++)
            d += (double)u[j] * a[j];
        for (int j = 0; j < DIM; j++)
            u[j] -= (float)(d * a[j]);
        normalize(u, DIM);
        for (int j = 0; j < DIM; j++)
            b[j] = (float)(rho * a[j] + sqrt(1.0 - rho * rho) * u[j]);
        normalize(b, DIM);
        if (rho_out)
            rho_out[i] = rho;
    }
}

/* ---- The systems ----------------------------------------------------------------------------- */

static cairn_tier *open_gpu(const index_t *x, int mode, double fraction, bool fp16)
{
    cairn_tier_mem m = {DIM,
                        NLIST,
                        x->cent,
                        (const int64_t *const *)x->ids,
                        (const float *const *)x->vecs,
                        x->n,
                        true};
    cairn_tier_params p = cairn_tier_default_params();
    p.device = device;
    p.fast_bytes = (size_t)((double)x->total_bytes * fraction);
    p.mode = mode;
    p.miss_faiss = true;
    p.fp16 = fp16;
    p.max_batch = MAXB;
    cairn_tier *t = NULL;
    cairn_error err;
    if (cairn_tier_open_mem(&t, &m, &p, &err))
        die("GPU tier", err.msg);
    return t;
}

/* Answers against the reference: queries whose ids differ beyond near-ties, and near-tie swaps. */
static void compare(const int64_t *ia, const float *sa, const int64_t *ib, const float *sb,
                    size_t nq, size_t *differ, size_t *swaps)
{
    for (size_t i = 0; i < nq; i++) {
        bool bad = false;
        for (int r = 0; r < K; r++) {
            size_t at = i * K + (size_t)r;
            if (ia[at] == ib[at])
                continue;
            if (fabsf(sa[at] - sb[at]) <= 1e-5f)
                (*swaps)++;
            else
                bad = true;
        }
        *differ += bad;
    }
}

typedef struct {
    const char *system;
    size_t nprobe, batch, calls;
    double *lat;
    double hit_ratio, pre_bytes, pre_s;
    size_t differ, swaps;
} run_t;

static void print_run(run_t *r)
{
    double p50 = pct(r->lat, r->calls, 0.5), p99 = pct(r->lat, r->calls, 0.99), sum = 0;
    for (size_t i = 0; i < r->calls; i++)
        sum += r->lat[i];
    printf("{\"bench\":\"retrieval_gpu\",\"what\":\"search\",\"card\":\"%s\",\"system\":\"%s\","
           "\"nprobe\":%zu,\"batch\":%zu,\"calls\":%zu,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
           "\"mean_ms\":%.3f,\"hit_ratio\":%.3f,\"prefetch_gib_per_call\":%.3f,"
           "\"prefetch_ms_mean\":%.2f,\"answers_differ\":%zu,\"near_tie_swaps\":%zu}\n",
           card, r->system, r->nprobe, r->batch, r->calls, p50, p99, sum / (double)r->calls,
           r->hit_ratio, r->pre_bytes / (double)r->calls / 1073741824.0,
           1e3 * r->pre_s / (double)r->calls, r->differ, r->swaps);
    fflush(stdout);
}

/* One (nprobe, batch) point for the three systems on the same pairs. */
static void search_point(const index_t *x, cairn_ivf *cpu, cairn_tier *const *gpu,
                         const char *const *names, int ngpu, size_t nprobe, size_t batch,
                         size_t calls, uint64_t seed)
{
    uint64_t s = seed;
    size_t nq = calls * batch, nw = 3 * batch; /* measured pairs, then warm-up pairs */
    float *q0 = malloc((nq + nw) * DIM * sizeof(float));
    float *q1 = malloc((nq + nw) * DIM * sizeof(float));
    make_pairs(nq + nw, q0, q1, NULL, x, &s);
    float *sc = malloc(nq * K * sizeof(float)), *sg = malloc(nq * K * sizeof(float));
    int64_t *ic = malloc(nq * K * sizeof(int64_t)), *ig = malloc(nq * K * sizeof(int64_t));
    double *lat = malloc(calls * sizeof(double));
    cairn_error err;
    /* cpu_faiss */
    cairn_ivf_set_split_lists(cpu, batch == 1, NULL);
    for (size_t c = 0; c < calls; c++) {
        int64_t t0 = cairn_now_ns();
        if (cairn_ivf_search(cpu, q1 + c * batch * DIM, batch, K, nprobe, sc + c * batch * K,
                             ic + c * batch * K, &err))
            die("FAISS search", err.msg);
        lat[c] = (double)(cairn_now_ns() - t0) / 1e6;
    }
    run_t r = {"cpu_faiss", nprobe, batch, calls, lat, 0, 0, 0, 0, 0};
    print_run(&r);
    size_t budget = (size_t)((double)x->total_bytes / NLIST * (double)nprobe);
    for (int g = 0; g < ngpu; g++) {
        cairn_tier *t = gpu[g];
        cairn_tier_clear_fast(t);
        /* Warm-up: other pairs fill the cache first, as a running server's would be. */
        for (size_t c = 0; c < 3; c++) {
            cairn_tier_prefetch_batch(t, q0 + (nq + c * batch) * DIM, batch, budget * batch,
                                      nprobe, NULL);
            cairn_tier_wait(t);
        }
        run_t rg = {names[g], nprobe, batch, calls, lat, 0, 0, 0, 0, 0};
        uint64_t probed = 0, hits = 0;
        for (size_t c = 0; c < calls; c++) {
            cairn_tier_stats a, b;
            cairn_tier_get_stats(t, &a);
            int64_t p0 = cairn_now_ns();
            if (cairn_tier_prefetch_batch(t, q0 + c * batch * DIM, batch, budget * batch, nprobe,
                                          &err))
                die("prefetch", err.msg);
            cairn_tier_wait(t);
            int64_t t0 = cairn_now_ns();
            if (cairn_tier_search_batch(t, q1 + c * batch * DIM, batch, K, nprobe,
                                        sg + c * batch * K, ig + c * batch * K, &err))
                die("GPU search", err.msg);
            int64_t t1 = cairn_now_ns();
            lat[c] = (double)(t1 - t0) / 1e6;
            cairn_tier_get_stats(t, &b);
            rg.pre_s += (double)(t0 - p0) / 1e9;
            rg.pre_bytes += (double)(b.bytes_prefetched - a.bytes_prefetched);
            probed += b.probed - a.probed;
            hits += b.hits - a.hits;
            if (b.prefetch_errors != a.prefetch_errors)
                die("prefetch", "the store reported an error (see the log)");
        }
        rg.hit_ratio = probed ? (double)hits / (double)probed : 0;
        compare(ig, sg, ic, sc, nq, &rg.differ, &rg.swaps);
        print_run(&rg);
    }
    free(q0);
    free(q1);
    free(sc);
    free(sg);
    free(ic);
    free(ig);
    free(lat);
}

/* Prefetch from an empty fast tier until it is full: GB/s from the call to the last byte. */
static void prefetch_rate(const index_t *x, cairn_tier *t, const char *name, double pinned_gbs)
{
    uint64_t s = 999;
    float q0[DIM], q1[DIM];
    double bytes = 0, secs = 0;
    for (int rep = 0; rep < 3; rep++) {
        make_pairs(1, q0, q1, NULL, x, &s);
        cairn_tier_clear_fast(t);
        cairn_tier_reset_stats(t);
        int64_t t0 = cairn_now_ns();
        cairn_tier_prefetch(t, q0, SIZE_MAX, 0, NULL);
        cairn_tier_wait(t);
        secs += (double)(cairn_now_ns() - t0) / 1e9;
        cairn_tier_stats st;
        cairn_tier_get_stats(t, &st);
        bytes += (double)st.bytes_prefetched;
    }
    double gbs = bytes / secs / 1e9;
    printf("{\"bench\":\"retrieval_gpu\",\"what\":\"prefetch\",\"card\":\"%s\",\"system\":\"%s\","
           "\"gib\":%.2f,\"gbs\":%.2f,\"pinned_copy_gbs\":%.2f,\"fraction_of_pinned\":%.3f}\n",
           card, name, bytes / 3 / 1073741824.0, gbs, pinned_gbs, gbs / pinned_gbs);
    fflush(stdout);
}

/* Scan bandwidth with every probe resident: 32 queries around one point, prefetched first. */
static void scan_rate(const index_t *x, cairn_tier *t, const char *name, double read_gbs)
{
    uint64_t s = 4242;
    float q0[MAXB * DIM], q1[MAXB * DIM], sc[MAXB * K];
    int64_t id[MAXB * K];
    make_pairs(1, q0, q1, NULL, x, &s);
    for (int i = 1; i < MAXB; i++) {
        for (int j = 0; j < DIM; j++)
            q1[i * DIM + j] = q1[j] + 0.1f * (float)(gauss(&s) / sqrt((double)DIM));
        normalize(q1 + i * DIM, DIM);
    }
    cairn_tier_clear_fast(t);
    cairn_tier_prefetch_batch(t, q1, MAXB, SIZE_MAX, 128, NULL);
    cairn_tier_wait(t);
    cairn_error err;
    cairn_tier_search_batch(t, q1, MAXB, K, 128, sc, id, &err); /* warm-up */
    cairn_tier_reset_stats(t);
    for (int rep = 0; rep < 5; rep++)
        if (cairn_tier_search_batch(t, q1, MAXB, K, 128, sc, id, &err))
            die("scan", err.msg);
    cairn_tier_stats st;
    cairn_tier_get_stats(t, &st);
    double gbs = (double)st.hit_scan_bytes / (double)st.hit_scan_ns;
    printf("{\"bench\":\"retrieval_gpu\",\"what\":\"scan_bandwidth\",\"card\":\"%s\","
           "\"system\":\"%s\",\"nprobe\":128,\"batch\":%d,\"hit_ratio\":%.3f,\"gib_scanned\":%.2f,"
           "\"gbs\":%.1f,\"read_kernel_gbs\":%.1f,\"fraction_of_read\":%.3f}\n",
           card, name, MAXB, st.probed ? (double)st.hits / (double)st.probed : 0.0,
           (double)st.hit_scan_bytes / 1073741824.0, gbs, read_gbs, gbs / read_gbs);
    fflush(stdout);
}

/* fp16 storage: recall@10 against the fp32 tier on the same pairs, all probes resident. */
static void fp16_recall(const index_t *x, cairn_tier *f32, cairn_tier *f16, size_t n)
{
    uint64_t s = 31337;
    float *q0 = malloc(n * DIM * sizeof(float)), *q1 = malloc(n * DIM * sizeof(float));
    make_pairs(n, q0, q1, NULL, x, &s);
    size_t same = 0;
    double *lat = malloc(n * sizeof(double));
    cairn_error err;
    for (size_t i = 0; i < n; i++) {
        float sa[K], sb[K];
        int64_t ia[K], ib[K];
        cairn_tier_prefetch(f32, q1 + i * DIM, SIZE_MAX, 128, NULL);
        cairn_tier_prefetch(f16, q1 + i * DIM, SIZE_MAX, 128, NULL);
        cairn_tier_wait(f32);
        cairn_tier_wait(f16);
        if (cairn_tier_search(f32, q1 + i * DIM, K, 128, sa, ia, &err))
            die("fp32 search", err.msg);
        int64_t t0 = cairn_now_ns();
        if (cairn_tier_search(f16, q1 + i * DIM, K, 128, sb, ib, &err))
            die("fp16 search", err.msg);
        lat[i] = (double)(cairn_now_ns() - t0) / 1e6;
        for (int a = 0; a < K; a++)
            for (int b = 0; b < K; b++)
                same += ia[a] == ib[b];
    }
    cairn_tier_stats st;
    cairn_tier_get_stats(f16, &st);
    printf("{\"bench\":\"retrieval_gpu\",\"what\":\"fp16\",\"card\":\"%s\",\"nprobe\":128,"
           "\"batch\":1,\"queries\":%zu,\"recall_at_10_vs_fp32\":%.4f,\"hit_ratio\":%.3f,"
           "\"p50_ms\":%.3f}\n",
           card, n, (double)same / (double)(n * K),
           st.probed ? (double)st.hits / (double)st.probed : 0.0, pct(lat, n, 0.5));
    fflush(stdout);
    free(q0);
    free(q1);
    free(lat);
}

/* Latency against cache fraction, and hit ratio against prefetch budget (nprobe 128). */
static void sweep(const index_t *x, size_t calls)
{
    double fr[] = {0.05, 0.1, 0.25, 0.5}, bud[] = {0.25, 0.5, 1, 2};
    for (size_t f = 0; f < 4; f++)
        for (size_t b = 0; b < 4; b++) {
            if (fr[f] != 0.25 && bud[b] != 1)
                continue; /* a cross through the default point */
            cairn_tier *t = open_gpu(x, CAIRN_TIER_CAIRN, fr[f], false);
            uint64_t s = 777;
            float q0[DIM], q1[DIM], sc[K];
            int64_t id[K];
            double *lat = malloc(calls * sizeof(double));
            size_t budget = (size_t)((double)x->total_bytes / NLIST * 128 * bud[b]);
            uint64_t hits = 0, probed = 0;
            for (size_t c = 0; c < calls + 3; c++) {
                make_pairs(1, q0, q1, NULL, x, &s);
                cairn_tier_prefetch(t, q0, budget, 0, NULL);
                cairn_tier_wait(t);
                cairn_tier_stats a, st;
                cairn_tier_get_stats(t, &a);
                int64_t t0 = cairn_now_ns();
                cairn_tier_search(t, q1, K, 128, sc, id, NULL);
                if (c >= 3)
                    lat[c - 3] = (double)(cairn_now_ns() - t0) / 1e6;
                cairn_tier_get_stats(t, &st);
                if (c >= 3) {
                    hits += st.hits - a.hits;
                    probed += st.probed - a.probed;
                }
            }
            printf("{\"bench\":\"retrieval_gpu\",\"what\":\"sweep\",\"card\":\"%s\","
                   "\"cache_fraction\":%.2f,\"budget_x_nprobe_clusters\":%.2f,\"nprobe\":128,"
                   "\"calls\":%zu,\"hit_ratio\":%.3f,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
                   card, fr[f], bud[b], calls, probed ? (double)hits / (double)probed : 0.0,
                   pct(lat, calls, 0.5), pct(lat, calls, 0.99));
            fflush(stdout);
            free(lat);
            cairn_tier_close(t);
        }
}

int main(int argc, char **argv)
{
    double gib = 10.0;
    size_t queries = 100, batches = 6;
    bool do_sweep = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc)
            device = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gib") && i + 1 < argc)
            gib = atof(argv[++i]);
        else if (!strcmp(argv[i], "--queries") && i + 1 < argc)
            queries = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc)
            batches = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--sweep"))
            do_sweep = true;
        else if (!strcmp(argv[i], "--pairs") && i + 1 < argc && !strcmp(argv[i + 1], "hyde") &&
                 ++i)
            RHO_Q = RHO_HYDE;
        else if (!strcmp(argv[i], "--pairs") && i + 1 < argc && !strcmp(argv[i + 1], "rewrite") &&
                 ++i)
            RHO_Q = RHO_REWRITE;
        else {
            fprintf(stderr, "usage: bench_cuda_retrieval [--device N] [--gib G] [--queries Q] "
                            "[--batches B] [--pairs rewrite|hyde] [--sweep]\n");
            return 2;
        }
    }
    char why[256];
    if (cairn_gpu_count(why, sizeof why) <= device) {
        printf("{\"bench\":\"retrieval_gpu\",\"skipped\":\"no CUDA device %d (%s)\"}\n", device,
               why);
        return 0;
    }
    cairn_gpu_describe(device, card, sizeof card);
    double t_start = cairn_now_sec(), read_gbs = 0, pinned_gbs = 0;
    if (cairn_peak_read_gbs(device, (size_t)4 << 30, &read_gbs, why, sizeof why))
        die("read kernel", why);
    if (cairn_bench_pinned_h2d_gbs(device, (size_t)1 << 30, &pinned_gbs, why, sizeof why))
        die("pinned copy", why);
    printf("{\"bench\":\"retrieval_gpu\",\"what\":\"peak\",\"card\":\"%s\",\"read_gbs\":%.1f,"
           "\"pinned_h2d_gbs\":%.2f}\n",
           card, read_gbs, pinned_gbs);
    fflush(stdout);

    index_t x;
    make_index(&x, gib, 20261206);
    double rho[600], rsum = 0;
    uint64_t s = 5;
    float *a = malloc(600 * DIM * sizeof(float)), *b = malloc(600 * DIM * sizeof(float));
    make_pairs(600, a, b, rho, &x, &s);
    for (int i = 0; i < 600; i++)
        rsum += rho[i];
    free(a);
    free(b);
    printf("{\"bench\":\"retrieval_gpu\",\"what\":\"index\",\"card\":\"%s\",\"dim\":%d,"
           "\"nlist\":%d,\"vectors\":%zu,\"gib\":%.2f,\"fast_tier_gib\":%.2f,\"make_s\":%.1f,"
           "\"pairs\":\"%s\",\"pairs_rho_mean\":%.3f,\"pairs_rho_p10\":%.3f,"
           "\"pairs_rho_p90\":%.3f}\n",
           card, DIM, NLIST, x.n_total, (double)x.total_bytes / 1073741824.0,
           (double)x.total_bytes / 4 / 1073741824.0, x.gen_s,
           RHO_Q == RHO_HYDE ? "hyde" : "rewrite", rsum / 600, pct(rho, 600, 0.1),
           pct(rho, 600, 0.9));
    fflush(stdout);

    cairn_ivf *cpu = NULL;
    cairn_error err;
    if (cairn_ivf_borrow(&cpu, DIM, NLIST, x.cent, (const int64_t *const *)x.ids,
                         (const float *const *)x.vecs, x.n, &err))
        die("FAISS index", err.msg);
    cairn_tier *gpu[2] = {open_gpu(&x, CAIRN_TIER_TELERAG, 0.25, false),
                          open_gpu(&x, CAIRN_TIER_CAIRN, 0.25, false)};
    const char *names[2] = {"telerag", "cairn"};
    prefetch_rate(&x, gpu[0], "telerag", pinned_gbs);
    prefetch_rate(&x, gpu[1], "cairn", pinned_gbs);
    scan_rate(&x, gpu[0], "telerag", read_gbs);
    scan_rate(&x, gpu[1], "cairn", read_gbs);
    size_t probes[2] = {128, 256};
    for (int p = 0; p < 2; p++) {
        search_point(&x, cpu, gpu, names, 2, probes[p], 1, queries, 100 + (uint64_t)p);
        search_point(&x, cpu, gpu, names, 2, probes[p], MAXB, batches, 200 + (uint64_t)p);
    }
    cairn_tier_close(gpu[0]);
    cairn_tier *f16 = open_gpu(&x, CAIRN_TIER_CAIRN, 0.25, true);
    fp16_recall(&x, gpu[1], f16, 50);
    cairn_tier_close(f16);
    cairn_tier_close(gpu[1]);
    if (do_sweep)
        sweep(&x, 30);
    printf("{\"bench\":\"retrieval_gpu\",\"what\":\"done\",\"card\":\"%s\",\"seconds\":%.1f}\n",
           card, cairn_now_sec() - t_start);
    cairn_ivf_close(cpu);
    cairn_tier_pinned_free(x.pinned);
    free(x.cent);
    free(x.n);
    free(x.ids);
    free(x.vecs);
    return 0;
}
