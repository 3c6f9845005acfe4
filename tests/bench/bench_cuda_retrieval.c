/*
 * tests/bench/bench_cuda_retrieval.c — lookahead retrieval with a GPU fast tier, three systems
 * side by side on one synthetic index made on the GPU (issue 19).
 *
 * Usage: bench_cuda_retrieval [--device N] [--gib G] [--queries Q] [--batches B]
 *                             [--pairs rewrite|hyde] [--sweep|--no-sweep] [--gen-ms MS]
 *                             [--sched-queries Q]
 *
 * The index (768-d, IVF4096, G GiB of fp32 vectors in page-locked host memory, made on the GPU)
 * and the question -> rewrite pairs (cos(q0, q1) drawn from the distribution measured on real
 * pairs; --pairs hyde: on HyDE-like pairs) are tests/bench/cuda/rag_index.c's.
 *
 * Systems (the GPU fast tier holds a quarter of the index; prefetch budget per query = nprobe
 * clusters of mean size, the clusters q0 ranks first):
 *   cpu_faiss  FAISS IndexIVFFlat over the same lists (borrowed, no copy) on all host cores:
 *              batch 1 splits each query's lists over the threads, batch 32 the queries;
 *   telerag    TeleRAG's way as cairn's tier reproduces it (CAIRN_TIER_TELERAG): whole fast
 *              tier scanned for every query, one waited-for copy per cluster, every eviction
 *              re-copies what stays; misses on the CPU (FAISS search_preassigned) beside;
 *   cairn      probed-only scans with per-query top-k on the GPU, async copies with per-cluster
 *              events (two landing buffers: the DMA never waits for the interleaving kernel),
 *              device-to-device compaction; misses split between on-demand copies scanned on
 *              the GPU (one copy per cluster for a whole batch) and FAISS on the CPU, balanced
 *              by their measured rates; a batch's prefetch ordered by how many queries want a
 *              cluster.
 * Figures (JSON lines): search latency p50/p99 per (system, nprobe 128/256, batch 1/32) after
 * the prefetch finished; hit ratio; answers against cpu_faiss (ids equal, or a swap of scores
 * within 1e-5); prefetch throughput from an empty fast tier beside a pinned copy timed in the
 * same run; scan bandwidth (all probes resident) beside a plain read kernel; fp16 storage's
 * recall@10 against fp32. The sweep (on unless --no-sweep) adds latency against cache fraction
 * and hit ratio against budget (nprobe 128, batch 1); scripts/plot-retrieval-gpu draws them.
 *
 * Two budgets: nprobe clusters per query, waited for (the table above); and the scheduler's,
 * the tier's copy rate (measured at open) x the predicted pre-retrieval generation, --gen-ms
 * (default 390: 64 decode steps of Llama-3-8B Q4_K_M at batch 1 on an H100, 6.1 ms each as
 * bench_cuda_generate measured; bench_cuda_rag predicts it from the engine itself), with the
 * prefetch cancelled when that time is up and the search started (--sched-queries calls at
 * batch 1, 3 at batch 32). Every search line breaks its time down (ranking, the store's scan
 * with the misses it copied, the CPU's miss scan) and says how many MB of misses each side
 * read.
 */
#include "common/clock.h"
#include "common/error.h"
#include "common/gpu.h"
#include "common/rand.h"
#include "retrieval/ivf.h"
#include "retrieval/tier.h"
#include "retrieval/tier_store.h"
#include "tests/bench/cuda/peak.h"
#include "tests/bench/cuda/rag_index.h"
#include "tests/bench/cuda/synth_ivf.h"

#include <math.h>
#include <stdbool.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIM RAG_DIM
#define NLIST RAG_NLIST
#define K 10
#define MAXB 32

static rag_pairs_kind pairs_kind = RAG_PAIRS_REWRITE;

static char card[256];
static int device;

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_cuda_retrieval: %s: %s\n", what, msg);
    exit(1);
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

typedef rag_index index_t;

static void make_pairs(size_t n, float *q0, float *q1, double *rho_out, const index_t *x,
                       uint64_t *s)
{
    rag_make_pairs(x, pairs_kind, n, q0, q1, rho_out, s);
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
    p.stage_bytes = (size_t)256 << 20; /* cairn's on-demand copies of misses (not TeleRAG's) */
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
    const char *budget;   /* "nprobe_clusters" or "scheduler" */
    size_t nprobe, batch, calls;
    double *lat;
    double hit_ratio, pre_bytes, pre_s;
    size_t differ, swaps;
    cairn_tier_stats d;   /* counters over the timed searches (GPU systems) */
    double budget_bytes;  /* per call */
} run_t;

/* Counters of b minus a. */
static cairn_tier_stats stats_delta(const cairn_tier_stats *a, const cairn_tier_stats *b)
{
    cairn_tier_stats d = *b;
    d.searches -= a->searches;
    d.probed -= a->probed;
    d.hits -= a->hits;
    d.search_ns -= a->search_ns;
    d.rank_ns -= a->rank_ns;
    d.hit_scan_ns -= a->hit_scan_ns;
    d.miss_scan_ns -= a->miss_scan_ns;
    d.overlap_ns -= a->overlap_ns;
    d.cpu_miss_bytes -= a->cpu_miss_bytes;
    d.store_miss_bytes -= a->store_miss_bytes;
    d.store_miss_clusters -= a->store_miss_clusters;
    d.store_miss_pairs -= a->store_miss_pairs;
    d.saved_ns -= a->saved_ns;
    d.bytes_prefetched -= a->bytes_prefetched;
    return d;
}

static void add_stats(cairn_tier_stats *acc, const cairn_tier_stats *d)
{
    acc->searches += d->searches;
    acc->probed += d->probed;
    acc->hits += d->hits;
    acc->search_ns += d->search_ns;
    acc->rank_ns += d->rank_ns;
    acc->hit_scan_ns += d->hit_scan_ns;
    acc->miss_scan_ns += d->miss_scan_ns;
    acc->overlap_ns += d->overlap_ns;
    acc->cpu_miss_bytes += d->cpu_miss_bytes;
    acc->store_miss_bytes += d->store_miss_bytes;
    acc->store_miss_clusters += d->store_miss_clusters;
    acc->store_miss_pairs += d->store_miss_pairs;
    acc->saved_ns += d->saved_ns;
    acc->bytes_prefetched += d->bytes_prefetched;
}

static void print_run(run_t *r)
{
    double p50 = pct(r->lat, r->calls, 0.5), p99 = pct(r->lat, r->calls, 0.99), sum = 0;
    for (size_t i = 0; i < r->calls; i++)
        sum += r->lat[i];
    double n = (double)r->calls;
    /* Where a call's time goes (GPU systems): ranking, the store's scan (GPU hits and the
     * misses it copied), the CPU's miss scan beside it; MB each side scanned of the misses. */
    printf("{\"bench\":\"retrieval_gpu\",\"what\":\"search\",\"card\":\"%s\",\"system\":\"%s\","
           "\"budget\":\"%s\",\"nprobe\":%zu,\"batch\":%zu,\"calls\":%zu,\"p50_ms\":%.3f,"
           "\"p99_ms\":%.3f,\"mean_ms\":%.3f,\"hit_ratio\":%.3f,\"budget_gib_per_call\":%.3f,"
           "\"prefetch_gib_per_call\":%.3f,\"prefetch_ms_mean\":%.2f,\"rank_ms\":%.3f,"
           "\"store_scan_ms\":%.3f,\"cpu_miss_ms\":%.3f,\"overlap_ms\":%.3f,"
           "\"store_miss_mb\":%.1f,\"store_miss_clusters\":%.1f,\"store_miss_pairs\":%.1f,"
           "\"cpu_miss_mb\":%.1f,\"saved_ms\":%.3f,\"answers_differ\":%zu,"
           "\"near_tie_swaps\":%zu}\n",
           card, r->system, r->budget ? r->budget : "-", r->nprobe, r->batch, r->calls, p50,
           p99, sum / n, r->hit_ratio, r->budget_bytes / 1073741824.0,
           r->pre_bytes / n / 1073741824.0, 1e3 * r->pre_s / n, r->d.rank_ns / n / 1e6,
           r->d.hit_scan_ns / n / 1e6, r->d.miss_scan_ns / n / 1e6, r->d.overlap_ns / n / 1e6,
           r->d.store_miss_bytes / n / 1e6, r->d.store_miss_clusters / n,
           r->d.store_miss_pairs / n, r->d.cpu_miss_bytes / n / 1e6, r->d.saved_ns / n / 1e6,
           r->differ, r->swaps);
    fflush(stdout);
}

/*
 * One (nprobe, batch) point for the three systems on the same pairs. Budget per call:
 *   gen_ms <= 0: nprobe clusters of mean size per query, the clusters q0 ranks first
 *                (max_clusters nprobe); the prefetch is waited for before the search;
 *   gen_ms > 0:  the scheduler's way: the bytes the tier's copy rate (measured at open) moves
 *                in gen_ms, the predicted duration of the pre-retrieval generation; the
 *                prefetch runs for gen_ms (as it would beside the generation), is then
 *                cancelled, and the search starts.
 */
static void search_point(const index_t *x, cairn_ivf *cpu, cairn_tier *const *gpu,
                         const char *const *names, int ngpu, size_t nprobe, size_t batch,
                         size_t calls, uint64_t seed, double gen_ms)
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
    const char *bname = gen_ms > 0 ? "scheduler" : "nprobe_clusters";
    /* cpu_faiss */
    cairn_ivf_set_split_lists(cpu, batch == 1, NULL);
    for (size_t c = 0; c < calls; c++) {
        int64_t t0 = cairn_now_ns();
        if (cairn_ivf_search(cpu, q1 + c * batch * DIM, batch, K, nprobe, sc + c * batch * K,
                             ic + c * batch * K, &err))
            die("FAISS search", err.msg);
        lat[c] = (double)(cairn_now_ns() - t0) / 1e6;
    }
    run_t r = {.system = "cpu_faiss", .budget = bname, .nprobe = nprobe, .batch = batch,
               .calls = calls, .lat = lat};
    print_run(&r);
    for (int g = 0; g < ngpu; g++) {
        cairn_tier *t = gpu[g];
        size_t budget = (size_t)((double)x->total_bytes / NLIST * (double)nprobe) * batch;
        size_t maxc = nprobe;
        if (gen_ms > 0) {
            budget = cairn_tier_budget_for(t, gen_ms / 1e3);
            maxc = batch > 1 ? nprobe : 0;
        }
        cairn_tier_clear_fast(t);
        /* Warm-up: other pairs fill the cache first, as a running server's would be. */
        for (size_t c = 0; c < 3; c++) {
            cairn_tier_prefetch_batch(t, q0 + (nq + c * batch) * DIM, batch, budget, maxc, NULL);
            cairn_tier_wait(t);
        }
        run_t rg = {.system = names[g], .budget = bname, .nprobe = nprobe, .batch = batch,
                    .calls = calls, .lat = lat, .budget_bytes = (double)budget};
        for (size_t c = 0; c < calls; c++) {
            cairn_tier_stats a, b;
            cairn_tier_get_stats(t, &a);
            int64_t p0 = cairn_now_ns();
            if (cairn_tier_prefetch_batch(t, q0 + c * batch * DIM, batch, budget, maxc, &err))
                die("prefetch", err.msg);
            if (gen_ms > 0) {
                struct timespec ts = {(time_t)(gen_ms / 1e3),
                                      (long)(fmod(gen_ms, 1e3) * 1e6)};
                nanosleep(&ts, NULL);
                cairn_tier_cancel(t);
            } else {
                cairn_tier_wait(t);
            }
            int64_t t0 = cairn_now_ns();
            if (cairn_tier_search_batch(t, q1 + c * batch * DIM, batch, K, nprobe,
                                        sg + c * batch * K, ig + c * batch * K, &err))
                die("GPU search", err.msg);
            int64_t t1 = cairn_now_ns();
            lat[c] = (double)(t1 - t0) / 1e6;
            cairn_tier_get_stats(t, &b);
            rg.pre_s += (double)(t0 - p0) / 1e9;
            rg.pre_bytes += (double)(b.bytes_prefetched - a.bytes_prefetched);
            cairn_tier_stats d = stats_delta(&a, &b);
            d.bytes_prefetched = 0;
            add_stats(&rg.d, &d);
            if (b.prefetch_errors != a.prefetch_errors)
                die("prefetch", "the store reported an error (see the log)");
        }
        if (gen_ms > 0)
            cairn_tier_wait(t);
        rg.hit_ratio = rg.d.probed ? (double)rg.d.hits / (double)rg.d.probed : 0;
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
           "\"gib\":%.2f,\"gbs\":%.2f,\"pinned_copy_gbs\":%.2f,\"fraction_of_pinned\":%.3f,"
           "\"store_copy_rate_at_open_gbs\":%.2f}\n",
           card, name, bytes / 3 / 1073741824.0, gbs, pinned_gbs, gbs / pinned_gbs,
           cairn_tier_copy_rate(t) / 1e9);
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
            q1[i * DIM + j] = q1[j] + 0.1f * (float)(rag_gauss(&s) / sqrt((double)DIM));
        rag_normalize(q1 + i * DIM, DIM);
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
    bool do_sweep = true;
    double gen_ms = 390;
    size_t sched_queries = 12;
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
        else if (!strcmp(argv[i], "--no-sweep"))
            do_sweep = false;
        else if (!strcmp(argv[i], "--gen-ms") && i + 1 < argc)
            gen_ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--sched-queries") && i + 1 < argc)
            sched_queries = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--pairs") && i + 1 < argc && !strcmp(argv[i + 1], "hyde") &&
                 ++i)
            pairs_kind = RAG_PAIRS_HYDE;
        else if (!strcmp(argv[i], "--pairs") && i + 1 < argc && !strcmp(argv[i + 1], "rewrite") &&
                 ++i)
            pairs_kind = RAG_PAIRS_REWRITE;
        else {
            fprintf(stderr, "usage: bench_cuda_retrieval [--device N] [--gib G] [--queries Q] "
                            "[--batches B] [--pairs rewrite|hyde] [--sweep|--no-sweep] "
                            "[--gen-ms MS] [--sched-queries Q]\n");
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
    if (rag_index_make(&x, device, gib, 20261206, why, sizeof why))
        die("index", why);
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
           pairs_kind == RAG_PAIRS_HYDE ? "hyde" : "rewrite", rsum / 600, pct(rho, 600, 0.1),
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
        search_point(&x, cpu, gpu, names, 2, probes[p], 1, queries, 100 + (uint64_t)p, 0);
        search_point(&x, cpu, gpu, names, 2, probes[p], MAXB, batches, 200 + (uint64_t)p, 0);
    }
    /* The scheduler's budget: the copy rate x the predicted pre-retrieval generation. */
    if (gen_ms > 0)
        for (int p = 0; p < 2; p++) {
            search_point(&x, cpu, gpu, names, 2, probes[p], 1, sched_queries, 300 + (uint64_t)p,
                         gen_ms);
            search_point(&x, cpu, gpu, names, 2, probes[p], MAXB, 3, 400 + (uint64_t)p,
                         gen_ms);
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
    rag_index_free(&x);
    return 0;
}
