/*
 * tests/bench/bench_cuda_rag.c — end-to-end RAG on one GPU: a HyDE-style pre-retrieval
 * generation on the GPU engine, the search, the answer; three retrieval systems side by side
 * (issue 19).
 *
 * Usage: bench_cuda_rag [--device N] [--gib G] [--requests R] [--rounds B8] [--nprobe P]
 *                       [--dir DIR]
 *
 * A request (batch B: B requests arrive together and every step carries all of them):
 *   1. q0, the question's embedding: the synthetic pairs' q0 (tests/bench/cuda/rag_index.c,
 *      HyDE-like pairs: cos(q0, q1) drawn from the distribution measured between a question
 *      and its package's long description). The embedder is not run on the GPU here (a
 *      separate item): its time is left out of every system alike;
 *   2. lookahead (GPU systems): prefetch for q0 with the scheduler's budget, the tier's copy
 *      rate (measured at open) x the latency predictor's estimate of step 3;
 *   3. HyDE: a 32-token prompt, 64 generated tokens (greedy), on the GPU engine;
 *   4. q1, the hypothetical document's embedding: the pair's q1 (as 1.); the prefetch is
 *      cancelled (what it did not copy by now is a miss);
 *   5. the search for q1: k 10 at nprobe P (default 128);
 *   6. the answer: a 288-token prompt (the question and ten passages), 128 generated tokens.
 * Latency is steps 2-6, wall time, per request (per batch at batch 8).
 *
 * Systems: cpu_faiss (FAISS IndexIVFFlat on the host's cores, TeleRAG's baseline: CPU
 * retrieval + GPU generation), telerag (CAIRN_TIER_TELERAG: whole-buffer scans, one waited
 * copy per cluster, re-copy on eviction; misses on the CPU) and cairn; the GPU fast tier holds
 * a quarter of the index. Requests alternate between the systems so that drift hits all.
 *
 * The model: Llama-3-8B-shaped, Q4_K_M, random weights (generation/synth.c, as `cairn
 * gguf-synth --shape llama3-8b --type q4_k_m` writes it): the speed and bytes of the real
 * model; its tokens mean nothing, which changes no timing. The predictor
 * (generation/sched.h) is fitted on the engine's own measured iterations in a warm-up (prefill
 * chunks and decode batches of 1-8 at several contexts) and predicts the 64 decode steps and
 * the prompt from their shapes; the bench prints predicted against measured.
 */
#include "common/clock.h"
#include "common/error.h"
#include "common/gpu.h"
#include "common/rand.h"
#include "generation/backend.h"
#include "generation/engine.h"
#include "generation/sched.h"
#include "generation/synth.h"
#include "retrieval/ivf.h"
#include "retrieval/tier.h"
#include "tests/bench/cuda/rag_index.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DIM RAG_DIM
#define NLIST RAG_NLIST
#define K 10
#define MAXB 8
#define Q_TOKENS 32
#define HYDE_TOKENS 64
#define PASSAGE_TOKENS 256
#define ANSWER_TOKENS 128
#define NSYS 3

static char card[256];

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_cuda_rag: %s: %s\n", what, msg);
    exit(1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, size_t n, double p)
{
    double *c = malloc(n * sizeof(double));
    memcpy(c, v, n * sizeof(double));
    qsort(c, n, sizeof *c, cmp_double);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    double r = c[i < n ? i : n - 1];
    free(c);
    return r;
}

/* ---- Generation ------------------------------------------------------------------------------ */

typedef struct {
    cairn_engine *e;
    cairn_predictor *pred;
    int ids[MAXB];
} gen_t;

static void fill_prompt(int32_t *p, int n, int salt)
{
    for (int i = 0; i < n; i++)
        p[i] = (int32_t)(((uint64_t)salt * 7919u + (uint64_t)i * 104729u) % 128000u);
}

/* Adds b sequences of an n-token prompt generating max_tokens each. */
static void add_seqs(gen_t *g, int b, int n, int max_tokens, int salt)
{
    int32_t prompt[Q_TOKENS + PASSAGE_TOKENS];
    cairn_error err;
    for (int s = 0; s < b; s++) {
        fill_prompt(prompt, n, salt * 31 + s);
        cairn_gen_params gp = cairn_gen_default_params();
        gp.max_tokens = max_tokens;
        if (cairn_engine_add(g->e, prompt, n, &gp, &g->ids[s], &err))
            die("engine add", err.msg);
    }
}

/* One step over the b sequences (prefill chunks of n tokens after ctx, or decode tokens at
 * ctx), timed; the predictor learns from it when observe is set. */
static double step(gen_t *g, int b, bool prefill, int n, int ctx, bool observe)
{
    cairn_step_item items[MAXB];
    cairn_batch_shape sh = {0};
    for (int i = 0; i < b; i++) {
        items[i] = (cairn_step_item){.id = g->ids[i], .n_tokens = prefill ? n : 1};
        cairn_batch_shape_add(&sh, prefill, ctx, prefill ? n : 1, true);
    }
    cairn_error err;
    int64_t t0 = cairn_now_ns();
    if (cairn_engine_step(g->e, items, b, &err))
        die("engine step", err.msg);
    double s = (double)(cairn_now_ns() - t0) / 1e9;
    if (observe)
        cairn_predictor_observe(g->pred, &sh, s);
    return s;
}

static void release(gen_t *g, int b)
{
    for (int i = 0; i < b; i++)
        cairn_engine_release(g->e, g->ids[i]);
}

/* Prefill of b prompts of n tokens, in steps of at most 512 tokens (whole prompts per step). */
static void prefill(gen_t *g, int b, int n, bool observe)
{
    int per = 512 / n > 0 ? 512 / n : 1;
    int saved[MAXB];
    memcpy(saved, g->ids, sizeof saved);
    for (int s = 0; s < b; s += per) {
        int k = b - s < per ? b - s : per;
        memcpy(g->ids, saved + s, (size_t)k * sizeof(int));
        step(g, k, true, n, 0, observe);
    }
    memcpy(g->ids, saved, sizeof saved);
}

/* The predictor's estimate of the HyDE step for b requests: their prompts, then the decode
 * steps. */
static double predict_hyde(const gen_t *g, int b)
{
    double t = 0;
    int per = 512 / Q_TOKENS;
    for (int s = 0; s < b; s += per) {
        int k = b - s < per ? b - s : per;
        cairn_batch_shape sh = {0};
        for (int i = 0; i < k; i++)
            cairn_batch_shape_add(&sh, true, 0, Q_TOKENS, true);
        t += cairn_predictor_predict(g->pred, &sh);
    }
    for (int j = 0; j < HYDE_TOKENS - 1; j++) {
        cairn_batch_shape sh = {0};
        for (int i = 0; i < b; i++)
            cairn_batch_shape_add(&sh, false, Q_TOKENS + j, 1, false);
        t += cairn_predictor_predict(g->pred, &sh);
    }
    return t;
}

/* Warm-up that fits the predictor: prompts of 32 and 288 tokens, decode batches of 1, 2, 4
 * and 8 at contexts up to ~300. */
static void fit_predictor(gen_t *g)
{
    static const int bs[4] = {1, 2, 4, 8};
    for (int round = 0; round < 2; round++)
        for (int bi = 0; bi < 4; bi++) {
            int b = bs[bi], n = round ? Q_TOKENS + PASSAGE_TOKENS : Q_TOKENS;
            add_seqs(g, b, n, 40, 900 + bi + 10 * round);
            prefill(g, b, n, true);
            for (int j = 0; j < 24; j++)
                step(g, b, false, 1, n + j, true);
            release(g, b);
        }
    cairn_error err;
    if (cairn_predictor_fit(g->pred, &err))
        die("predictor fit", err.msg);
}

/* ---- The pipeline ---------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    cairn_tier *tier; /* NULL: cpu_faiss */
    double *lat, *hyde, *search, *answer, *pred, *budget;
    size_t n;
    cairn_tier_stats acc;
    size_t differ;
} sys_t;

static void stats_add(cairn_tier_stats *acc, const cairn_tier_stats *a, const cairn_tier_stats *b)
{
    acc->probed += b->probed - a->probed;
    acc->hits += b->hits - a->hits;
    acc->bytes_prefetched += b->bytes_prefetched - a->bytes_prefetched;
    acc->saved_ns += b->saved_ns - a->saved_ns;
    acc->store_miss_bytes += b->store_miss_bytes - a->store_miss_bytes;
    acc->cpu_miss_bytes += b->cpu_miss_bytes - a->cpu_miss_bytes;
}

/* One request batch of b through system s; ids/scores out (b * K). */
static void run_request(gen_t *g, sys_t *s, cairn_ivf *cpu, const float *q0, const float *q1,
                        int b, size_t nprobe, int salt, int64_t *ids, float *scores)
{
    cairn_error err;
    cairn_tier_stats a, z;
    if (s->tier)
        cairn_tier_get_stats(s->tier, &a);
    double predicted = predict_hyde(g, b);
    size_t budget = 0;
    int64_t t0 = cairn_now_ns();
    if (s->tier) {
        budget = cairn_tier_budget_for(s->tier, predicted);
        if (cairn_tier_prefetch_batch(s->tier, q0, (size_t)b, budget, b > 1 ? nprobe : 0, &err))
            die("prefetch", err.msg);
    }
    add_seqs(g, b, Q_TOKENS, HYDE_TOKENS, salt);
    prefill(g, b, Q_TOKENS, false);
    for (int j = 0; j < HYDE_TOKENS - 1; j++)
        step(g, b, false, 1, Q_TOKENS + j, false);
    release(g, b);
    int64_t t1 = cairn_now_ns();
    if (s->tier) {
        cairn_tier_cancel(s->tier);
        if (cairn_tier_search_batch(s->tier, q1, (size_t)b, K, nprobe, scores, ids, &err))
            die("tier search", err.msg);
    } else {
        cairn_ivf_set_split_lists(cpu, b == 1, NULL);
        if (cairn_ivf_search(cpu, q1, (size_t)b, K, nprobe, scores, ids, &err))
            die("FAISS search", err.msg);
    }
    int64_t t2 = cairn_now_ns();
    add_seqs(g, b, Q_TOKENS + PASSAGE_TOKENS, ANSWER_TOKENS, salt + 7);
    prefill(g, b, Q_TOKENS + PASSAGE_TOKENS, false);
    for (int j = 0; j < ANSWER_TOKENS - 1; j++)
        step(g, b, false, 1, Q_TOKENS + PASSAGE_TOKENS + j, false);
    release(g, b);
    int64_t t3 = cairn_now_ns();
    size_t i = s->n++;
    s->lat[i] = (double)(t3 - t0) / 1e6;
    s->hyde[i] = (double)(t1 - t0) / 1e6;
    s->search[i] = (double)(t2 - t1) / 1e6;
    s->answer[i] = (double)(t3 - t2) / 1e6;
    s->pred[i] = predicted * 1e3;
    s->budget[i] = (double)budget;
    if (s->tier) {
        cairn_tier_get_stats(s->tier, &z);
        stats_add(&s->acc, &a, &z);
    }
}

static void print_sys(const sys_t *s, int b, double base_p50)
{
    double n = (double)s->n, p50 = pct(s->lat, s->n, 0.5), bsum = 0;
    for (size_t i = 0; i < s->n; i++)
        bsum += s->budget[i];
    printf("{\"bench\":\"rag_gpu\",\"what\":\"e2e\",\"card\":\"%s\",\"model\":\"llama3-8b\","
           "\"type\":\"q4_k_m\",\"system\":\"%s\",\"batch\":%d,\"requests\":%zu,"
           "\"p50_ms\":%.1f,\"max_ms\":%.1f,\"hyde_ms_p50\":%.1f,\"predicted_hyde_ms_p50\":%.1f,"
           "\"search_ms_p50\":%.3f,\"search_ms_max\":%.3f,\"answer_ms_p50\":%.1f,"
           "\"speedup_vs_cpu_faiss\":%.3f,\"budget_gib_mean\":%.2f,\"prefetched_gib_mean\":%.2f,"
           "\"hit_ratio\":%.3f,\"saved_ms_mean\":%.3f,\"store_miss_mb_mean\":%.1f,"
           "\"cpu_miss_mb_mean\":%.1f,\"answers_differ_from_cpu\":%zu}\n",
           card, s->name, b, s->n, p50, pct(s->lat, s->n, 1.0), pct(s->hyde, s->n, 0.5),
           pct(s->pred, s->n, 0.5), pct(s->search, s->n, 0.5), pct(s->search, s->n, 1.0),
           pct(s->answer, s->n, 0.5), base_p50 / p50, bsum / n / 1073741824.0,
           (double)s->acc.bytes_prefetched / n / 1073741824.0,
           s->acc.probed ? (double)s->acc.hits / (double)s->acc.probed : 0.0,
           (double)s->acc.saved_ns / n / 1e6, (double)s->acc.store_miss_bytes / n / 1e6,
           (double)s->acc.cpu_miss_bytes / n / 1e6, s->differ);
    fflush(stdout);
}

/* Queries whose ids differ from the reference beyond swaps of scores within 1e-5. */
static size_t differing(const int64_t *ia, const float *sa, const int64_t *ib, const float *sb,
                        int nq)
{
    size_t d = 0;
    for (int i = 0; i < nq; i++) {
        bool bad = false;
        for (int r = 0; r < K; r++)
            if (ia[i * K + r] != ib[i * K + r] && fabsf(sa[i * K + r] - sb[i * K + r]) > 1e-5f)
                bad = true;
        d += bad;
    }
    return d;
}

static cairn_tier *open_tier(const rag_index *x, int device, int mode)
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
    p.fast_bytes = x->total_bytes / 4;
    p.mode = mode;
    p.miss_faiss = true;
    p.max_batch = MAXB;
    p.stage_bytes = (size_t)256 << 20;
    cairn_tier *t = NULL;
    cairn_error err;
    if (cairn_tier_open_mem(&t, &m, &p, &err))
        die("GPU tier", err.msg);
    return t;
}

int main(int argc, char **argv)
{
    int device = 0, requests = 6, rounds = 2;
    double gib = 10.0;
    size_t nprobe = 128;
    const char *dir = "/dev/shm";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc)
            device = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gib") && i + 1 < argc)
            gib = atof(argv[++i]);
        else if (!strcmp(argv[i], "--requests") && i + 1 < argc)
            requests = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--nprobe") && i + 1 < argc)
            nprobe = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else {
            fprintf(stderr, "usage: bench_cuda_rag [--device N] [--gib G] [--requests R] "
                            "[--rounds B8] [--nprobe P] [--dir DIR]\n");
            return 2;
        }
    }
    if (requests < 1 || rounds < 0 || nprobe < 1)
        die("arguments", "requests >= 1, rounds >= 0, nprobe >= 1");
    char why[256];
    if (cairn_gpu_count(why, sizeof why) <= device) {
        printf("{\"bench\":\"rag_gpu\",\"skipped\":\"no CUDA device %d (%s)\"}\n", device, why);
        return 0;
    }
    cairn_gpu_describe(device, card, sizeof card);
    double t_start = cairn_now_sec();

    /* The model and the engine. */
    char path[1024];
    snprintf(path, sizeof path, "%s/cairn_bench_rag_llama3-8b_q4_k_m.gguf", dir);
    cairn_error err = {0};
    if (cairn_synth_write(path, "llama3-8b", "q4_k_m", 0, 1, &err))
        die("synth", err.msg);
    cairn_model *m = NULL;
    gen_t g = {0};
    cairn_engine_params ep = cairn_engine_default_params();
    ep.device = device;
    ep.max_seqs = 2 * MAXB;
    ep.n_ctx = 512;
    ep.max_batch_tokens = 512;
    ep.kv_blocks = 2 * MAXB * 512 / ep.block_tokens;
    if (cairn_model_open(&m, path, &err) || cairn_engine_open(&g.e, m, &ep, &err))
        die("model", err.msg);
    unlink(path); /* the engine holds the weights now */
    if (cairn_predictor_new(&g.pred, 256, &err))
        die("predictor", err.msg);
    cairn_backend *be = cairn_engine_backend(g.e);
    cairn_backend_traits tr;
    be->i->traits(be, &tr);
    cairn_predictor_set_traits(g.pred, &tr);
    fit_predictor(&g);
    int nmape = 0;
    double mape = cairn_predictor_mape(g.pred, &nmape);

    /* The index and the pairs. */
    rag_index x;
    if (rag_index_make(&x, device, gib, 20261206, why, sizeof why))
        die("index", why);
    cairn_ivf *cpu = NULL;
    if (cairn_ivf_borrow(&cpu, DIM, NLIST, x.cent, (const int64_t *const *)x.ids,
                         (const float *const *)x.vecs, x.n, &err))
        die("FAISS index", err.msg);
    sys_t sys[NSYS] = {{.name = "cpu_faiss"},
                       {.name = "telerag", .tier = open_tier(&x, device, CAIRN_TIER_TELERAG)},
                       {.name = "cairn", .tier = open_tier(&x, device, CAIRN_TIER_CAIRN)}};
    printf("{\"bench\":\"rag_gpu\",\"what\":\"setup\",\"card\":\"%s\",\"index_gib\":%.2f,"
           "\"fast_tier_gib\":%.2f,\"nprobe\":%zu,\"k\":%d,\"pairs\":\"hyde\","
           "\"predictor_mape_warmup\":%.3f,\"predictor_samples\":%d,"
           "\"tier_copy_rate_gbs\":%.2f,\"setup_s\":%.1f}\n",
           card, (double)x.total_bytes / 1073741824.0, (double)x.total_bytes / 4 / 1073741824.0,
           nprobe, K, mape, nmape, cairn_tier_copy_rate(sys[2].tier) / 1e9,
           cairn_now_sec() - t_start);
    fflush(stdout);

    uint64_t s = 77;
    int batches[2] = {1, MAXB}, counts[2] = {requests, rounds};
    for (int bi = 0; bi < 2; bi++) {
        int b = batches[bi], nreq = counts[bi];
        if (nreq == 0)
            continue;
        size_t cap = (size_t)nreq + 1;
        for (int k = 0; k < NSYS; k++) {
            sys[k].n = 0;
            sys[k].differ = 0;
            memset(&sys[k].acc, 0, sizeof sys[k].acc);
            sys[k].lat = malloc(cap * sizeof(double));
            sys[k].hyde = malloc(cap * sizeof(double));
            sys[k].search = malloc(cap * sizeof(double));
            sys[k].answer = malloc(cap * sizeof(double));
            sys[k].pred = malloc(cap * sizeof(double));
            sys[k].budget = malloc(cap * sizeof(double));
            if (sys[k].tier)
                cairn_tier_clear_fast(sys[k].tier);
        }
        float q0[MAXB * DIM], q1[MAXB * DIM], sc[NSYS][MAXB * K];
        int64_t id[NSYS][MAXB * K];
        /* One warm-up request per system (not counted), then the measured ones. */
        for (int r = -1; r < nreq; r++) {
            rag_make_pairs(&x, RAG_PAIRS_HYDE, (size_t)b, q0, q1, NULL, &s);
            for (int k = 0; k < NSYS; k++) {
                run_request(&g, &sys[k], cpu, q0, q1, b, nprobe, 1000 * bi + r + 2, id[k],
                            sc[k]);
                if (r < 0) { /* forget the warm-up */
                    sys[k].n = 0;
                    memset(&sys[k].acc, 0, sizeof sys[k].acc);
                }
            }
            for (int k = 1; k < NSYS && r >= 0; k++)
                sys[k].differ += differing(id[k], sc[k], id[0], sc[0], b);
        }
        double base = pct(sys[0].lat, sys[0].n, 0.5);
        for (int k = 0; k < NSYS; k++) {
            print_sys(&sys[k], b, base);
            free(sys[k].lat);
            free(sys[k].hyde);
            free(sys[k].search);
            free(sys[k].answer);
            free(sys[k].pred);
            free(sys[k].budget);
        }
    }
    printf("{\"bench\":\"rag_gpu\",\"what\":\"done\",\"card\":\"%s\",\"seconds\":%.1f}\n", card,
           cairn_now_sec() - t_start);
    for (int k = 0; k < NSYS; k++)
        cairn_tier_close(sys[k].tier);
    cairn_ivf_close(cpu);
    rag_index_free(&x);
    cairn_predictor_free(g.pred);
    cairn_engine_close(g.e);
    cairn_model_close(m);
    return 0;
}
