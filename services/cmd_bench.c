/*
 * services/cmd_bench.c — the scheduler's benchmarks.
 *
 * `cairn bench profile` times engine iterations of random batch shapes on the real model (decode
 * tokens of 0..10 sequences at various context lengths, one or two prefill chunks of 1..384
 * tokens, some after an earlier chunk of their prompt, some not finishing it, and mixes), each
 * shape --repeat times. It fits the latency predictor (generation/sched.h) on the first 70% of
 * the shapes (each shape's median timing) and reports its MAPE on every timed iteration of the
 * other 30%, per batch-shape bucket: as fitted (`mape`), and as cairnd runs it after loading the
 * profile (`mape_online`: refitted over a window of the latest iterations, with its speed
 * factor; each shape's timings predicted before the first of them joins), beside the machine's
 * noise floor (`noise_floor`, per bucket and overall: each held-out timing predicted by the
 * median of its shape's other timings; needs --repeat 3+) and the machine's own repeatability
 * with the engine out of it (sched_profile_machine: a fixed arithmetic loop and a fixed memory
 * stream, each timed 3 times after every shape). The profile can be stored (--out) and given
 * to cairnd (sched.profile); --samples writes the timings for offline analysis.
 *
 * `cairn bench colocate` runs the generation workers in this process under each policy against
 * a standing backlog of offline requests (summarization-shaped: long prompts, 64-token outputs)
 * while online requests arrive as a Poisson process at a sweep of rates. Per (policy, rate) it
 * reports online TTFT and time-between-tokens (TBT) p50/p99, SLO attainment (a request meets
 * the SLO when its TTFT and every gap between its tokens are within the targets), and offline,
 * online and total tokens/s. Rates are given directly or as fractions of the measured online
 * capacity (the completion rate with max_seqs online requests always in flight).
 */
#define CAIRN_LOG_TAG "bench"
#include "services/cmd_bench.h"
#include "services/cmd_bench_quality.h"

#include "common/clock.h"
#include "common/log.h"
#include "generation/engine.h"
#include "generation/model.h"
#include "generation/sched.h"
#include "services/workers.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const cairn_cmd_bench_usage =
    "usage: cairn bench profile  [-m MODEL] [--iterations N] [--repeat R] [--threads T]\n"
    "                            [--out FILE] [--samples CSV]\n"
    "                            [--ttft-slo MS --tbt-slo MS [--load F] [--budgets MS,...]\n"
    "                             [--duration S] [--backlog N] [--max-seqs N]]\n"
    "       cairn bench colocate [-m MODEL] [--policies P,...] [--loads F,...|--rates R,...]\n"
    "                            [--duration S] [--ttft-slo MS] [--tbt-slo MS] [--budget MS]\n"
    "                            [--backlog N] [--max-seqs N] [--threads T] [--seed S]\n"
    "                            [--online-budget MS] [--profile FILE] [--markdown FILE]\n"
    "       cairn bench yield    [-m MODEL] [--trials N] [--doc-tokens N] [--threads T]\n"
    "       cairn bench retrieval-quality [...]  (cairn bench retrieval-quality --help)\n"
    "       cairn bench rag-answers [...]  (cairn bench rag-answers --help)\n\n"
    "profile   times N (default 600) iterations of random batch shapes, each shape R times\n"
    "          in a row (default 3), fits the latency predictor on the first 70% of the shapes\n"
    "          (each one's median time) and prints its MAPE on every timed iteration of the\n"
    "          rest per bucket, as fitted and as cairnd refits it (mape_online), beside the\n"
    "          machine's noise floor in that bucket (JSON lines; cpu_stall: the share of the\n"
    "          timed time other tasks waited for a CPU, i.e. how far from idle it was).\n"
    "          noise_floor compares back-to-back repeats; noise_floor_spread times fixed\n"
    "          decode batches of 1, 4 and 8 tokens every 10 shapes through the run\n"
    "          (sched_profile_probe lines), the noise a shape meets over minutes;\n"
    "          sched_profile_machine times a fixed 15 ms arithmetic loop and a fixed\n"
    "          15 ms memory stream 3 times each after every shape: the machine's\n"
    "          repeatability with the engine out of it.\n"
    "          --samples writes\n"
    "          every timed iteration (shape, seconds) as CSV; --out stores the profile\n"
    "          (cairn-sched-profile 2: features, coefficients). With an SLO it then runs the\n"
    "          slo policy at --load (default 0.5) of the online capacity with each budget\n"
    "          (default 50,100,150,200,300,400 ms, tried smallest first) for S seconds\n"
    "          (default 30) and picks the largest before the first whose p99 TTFT or TBT\n"
    "          misses the SLO; --out then also holds that budget\n"
    "          (cairnd: sched.profile).\n"
    "colocate  per policy (default slo,online-only,fcfs-hybrid) and online rate, Poisson\n"
    "          arrivals for S seconds (default 60) beside a backlog of N (default 8) offline\n"
    "          requests; prints JSON lines, then a markdown table. Loads are fractions of the\n"
    "          measured online capacity (default 0.25,0.5,0.75). Online prompts are 16-128\n"
    "          tokens (uniform), outputs 32 tokens; offline prompts 300-500 tokens, outputs 64.\n"
    "          SLO defaults: TTFT 3000 ms, TBT 300 ms; slo budget: --budget, else the\n"
    "          --profile's stored one, else 150 ms; online prompt chunks' budget 0.6 x the\n"
    "          TBT SLO (--online-budget). --profile: predictor coefficients (and budget)\n"
    "          from `bench profile --out` (else learnt as it runs).\n"
    "yield     layer-level preemption: an offline document (default 1500 tokens) is being\n"
    "          prefilled in 512-token passes (policy online-only, nothing else running) when\n"
    "          an online request (32 tokens) arrives at a random moment; its TTFT with and\n"
    "          without layer_yield, N trials each (default 10), same arrival times.\n";

static const char *DEFAULT_MODEL = "data/models/gemma-3-270m-q4_k_m.gguf";

/* The slo policy's online budget in every run of a command (--online-budget; default
 * ONLINE_SHARE x the TBT SLO): online prompt chunks may fill an iteration up to it, so the p99
 * TBT is set by those iterations, and the margin left has to cover the predictor's error
 * (14-16% at p90 on the development VM) and the time between iterations. At 0.75 the p99 TBT
 * sat at 190-203 ms against a 200 ms SLO; at 0.6, 148-153 ms. */
#define ONLINE_SHARE 0.6
static double g_online_budget_s = 0.2;

/* ---- Small helpers ------------------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) / 9007199254740992.0; }

static int rng_range(uint64_t *s, int lo, int hi) /* [lo, hi] */
{
    return lo + (int)(rng_unit(s) * (hi - lo + 1));
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, size_t n, double p)
{
    if (n == 0) return NAN;
    qsort(v, n, sizeof *v, cmp_double);
    size_t i = (size_t)ceil(p * (double)n) - 1;
    return v[i < n ? i : n - 1];
}

static int parse_list(const char *s, double *out, int cap)
{
    int n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *sp = NULL, *t = strtok_r(buf, ",", &sp); t && n < cap; t = strtok_r(NULL, ",", &sp)) {
        char *end;
        errno = 0;
        double v = strtod(t, &end);
        if (errno || *end || !(v > 0)) return -1;
        out[n++] = v;
    }
    return n;
}

/* ---- profile ------------------------------------------------------------------------------- */

enum { PROF_MAX_DEC = 10, PROF_MAX_PRE = 2 };

/* One timed iteration: its shape, and what --samples writes besides (per-sequence detail). */
typedef struct {
    cairn_batch_shape shape;
    double seconds;
    int group, rep; /* the shape drawn, and which of its --repeat timings this is */
    int n_pre, pre_prefix[PROF_MAX_PRE], pre_chunk[PROF_MAX_PRE], pre_final[PROF_MAX_PRE];
    int n_dec, dec_ctx[PROF_MAX_DEC];
    double stall_s; /* CPU pressure during the iteration (cpu_stall_s), -1 if unknown */
} sample;

/* Seconds so far that some runnable task of this machine waited for a CPU (Linux PSI,
 * /proc/pressure/cpu "some"), or -1 where that is not available. Its growth during an
 * iteration says another process competed for the cores, i.e. that timing is noisy. */
static double cpu_stall_s(void)
{
    FILE *f = fopen("/proc/pressure/cpu", "r");
    if (!f) return -1;
    unsigned long long us = 0;
    int got = fscanf(f, "some avg10=%*f avg60=%*f avg300=%*f total=%llu", &us);
    fclose(f);
    return got == 1 ? (double)us / 1e6 : -1;
}

static const char *const BUCKETS[] = {"decode 1-4",          "decode 5-10",
                                      "prefill 1-64",        "prefill 65-384",
                                      "mixed, prefill 1-64", "mixed, prefill 65-384"};
#define N_BUCKETS 6

/* The index in BUCKETS of a shape's bucket. */
static int bucket_of(const cairn_batch_shape *s)
{
    if (s->s_p == 0) return s->n_d <= 4 ? 0 : 1;
    return (s->s_d == 0 ? 2 : 4) + (s->s_p > 64);
}

/* One CSV cell holding a ';'-separated list, then `end`. */
static void write_list(FILE *f, const int *v, int n, char end)
{
    for (int k = 0; k < n; k++)
        fprintf(f, "%s%d", k ? ";" : "", v[k]);
    fputc(end, f);
}

/* Writes the samples as CSV (--samples): one line per timed iteration; the per-sequence columns
 * hold ';'-separated lists. Returns 0, or -1 with errno set. */
static int write_samples(const char *path, const sample *smp, int n)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "group,rep,seconds,stall_s,s_p,s_d,n_p,n_d,n_out,keys_p,keys_d,pre_prefix,"
               "pre_chunk,pre_final,dec_ctx\n");
    for (int i = 0; i < n; i++) {
        const sample *s = &smp[i];
        fprintf(f, "%d,%d,%.9f,%.6f,%d,%d,%d,%d,%d,%lld,%lld,", s->group, s->rep, s->seconds,
                s->stall_s, s->shape.s_p, s->shape.s_d, s->shape.n_p, s->shape.n_d,
                s->shape.n_out, (long long)s->shape.keys_p, (long long)s->shape.keys_d);
        write_list(f, s->pre_prefix, s->n_pre, ',');
        write_list(f, s->pre_chunk, s->n_pre, ',');
        write_list(f, s->pre_final, s->n_pre, ',');
        write_list(f, s->dec_ctx, s->n_dec, '\n');
    }
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) return -1;
    return 0;
}

typedef struct {
    double ttft_ms, tbt_ms, load, duration;
    double budgets[16];
    int n_budgets, backlog, max_seqs, threads;
} budget_search;

static double find_budget(const char *model, const double *coef, const budget_search *bs);

/* Adds a sequence with a random prompt of n tokens; its id, or -1 when there is no slot. */
static int add_seq(cairn_engine *e, const cairn_gen_params *gp, int n, int32_t vocab,
                   uint64_t *rng)
{
    int32_t prompt[1024];
    for (int k = 0; k < n && k < 1024; k++)
        prompt[k] = 100 + (int32_t)(rng_next(rng) % (uint64_t)(vocab - 200));
    int id;
    return cairn_engine_add(e, prompt, n < 1024 ? n : 1024, gp, &id, NULL) ? -1 : id;
}

/* The batch of one draw: how many decoding sequences, and its prefill chunks (each after an
 * earlier, untimed chunk of `prefix` tokens, with `extra` prompt tokens left after it). */
typedef struct {
    int want_dec, n_pre;
    int chunk[PROF_MAX_PRE], prefix[PROF_MAX_PRE], extra[PROF_MAX_PRE];
} draw;

static draw draw_shape(uint64_t *rng, int max_batch_tokens)
{
    draw d = {.want_dec = rng_range(rng, 0, PROF_MAX_DEC)};
    if (d.want_dec == 0 || rng_unit(rng) < 0.6) d.n_pre = rng_unit(rng) < 0.2 ? 2 : 1;
    int room = max_batch_tokens - d.want_dec;
    for (int k = 0; k < d.n_pre; k++) {
        int c = rng_unit(rng) < 0.5 ? rng_range(rng, 1, 64) : rng_range(rng, 65, 384);
        d.chunk[k] = c < room ? c : room;
        room -= d.chunk[k];
        d.prefix[k] = rng_unit(rng) < 0.3 ? rng_range(rng, 16, 256) : 0;
        d.extra[k] = rng_unit(rng) < 0.3 ? rng_range(rng, 1, 64) : 0;
    }
    if (d.n_pre == 2 && d.chunk[1] < 1) d.n_pre = 1;
    return d;
}

/* Probes: fixed decode batches of PROBE_DEC[k] sequences (~200 tokens of context each) timed
 * once every PROBE_EVERY draws through the run. How a probe's timings spread around their
 * median is the noise one shape meets over minutes, which the noise floor of back-to-back
 * repeats does not see: about the best a predictor of shapes alone can do on this machine. */
enum { PROBE_EVERY = 10, PROBE_CTX = 200, PROBE_MAX_T = 256, PROBE_MAX_DEC = 8 };
static const int PROBE_DEC[] = {1, 4, PROBE_MAX_DEC};
#define N_PROBES ((int)(sizeof PROBE_DEC / sizeof PROBE_DEC[0]))
#define PROBE_SEQS (1 + 4 + PROBE_MAX_DEC) /* the engine slots the probes hold: PROBE_DEC's sum */

typedef struct {
    int ids[PROBE_MAX_DEC];
    double t[PROBE_MAX_T];
    int n_t;
} probe;

/* Times one step of probe k, first replacing any of its sequences that ended. Returns 0 or 1. */
static int probe_time(cairn_engine *e, const cairn_gen_params *gp, int32_t vocab, uint64_t *rng,
                      probe *pr, int k, cairn_error *err)
{
    cairn_step_item items[PROBE_MAX_DEC];
    for (int i = 0; i < PROBE_DEC[k]; i++) {
        cairn_seq_info info;
        if (pr->ids[i] >= 0 && (cairn_engine_seq_info(e, pr->ids[i], &info) != 0 ||
                                info.finish != CAIRN_FINISH_NONE)) {
            cairn_engine_release(e, pr->ids[i]);
            pr->ids[i] = -1;
        }
        if (pr->ids[i] < 0) { /* a fresh sequence, prefilled untimed */
            if ((pr->ids[i] = add_seq(e, gp, PROBE_CTX, vocab, rng)) < 0) {
                snprintf(err->msg, sizeof err->msg, "no room for a probe sequence");
                return 1;
            }
            cairn_step_item all = {pr->ids[i], PROBE_CTX};
            if (cairn_engine_step(e, &all, 1, err) != 0) return 1;
        }
        items[i] = (cairn_step_item){pr->ids[i], 1};
    }
    int64_t t0 = cairn_now_ns();
    if (cairn_engine_step(e, items, PROBE_DEC[k], err) != 0) return 1;
    if (pr->n_t < PROBE_MAX_T) pr->t[pr->n_t++] = (double)(cairn_now_ns() - t0) / 1e9;
    return 0;
}

/* Mean |t - median| / t over timings t[0..n) (0 with fewer than 3); *median_s their median
 * (the probes' and the fixed loops' spread). */
static double spread(const double *t, int n, double *median_s)
{
    double *sorted = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1)), sum = 0;
    *median_s = 0;
    if (!sorted || n < 1) {
        free(sorted);
        return 0;
    }
    memcpy(sorted, t, sizeof(double) * (size_t)n);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_double);
    *median_s = sorted[(n - 1) / 2];
    free(sorted);
    if (n < 3) return 0;
    for (int i = 0; i < n; i++)
        sum += fabs(t[i] - *median_s) / t[i];
    return sum / n;
}

/* The median of t[0..n) leaving t[k] out (n <= 9): the noise floor's prediction of t[k] by its
 * back-to-back repeats. */
static double median_of_others(const double *t, int n, int k)
{
    double o[8];
    int m = 0;
    for (int j = 0; j < n && m < 8; j++)
        if (j != k) o[m++] = t[j];
    qsort(o, (size_t)m, sizeof *o, cmp_double);
    return m % 2 ? o[m / 2] : (o[m / 2 - 1] + o[m / 2]) / 2;
}

/* The machine's own repeatability, with our code out of it: two fixed loops of about MACHINE_MS
 * on one thread, with no allocation and no system call, timed MACHINE_REPEAT times in a row
 * after every draw. `arithmetic` stays in L1; `memory` sums a MACHINE_MEM_BYTES buffer, twice
 * the L3 of this VM, as a decode pass streams its weights. Each timing against the median of
 * the other two (`floor`, the noise floor's protocol) and against the median of all (`spread`,
 * the probes' one) bounds what any predictor of an iteration's time can reach here: the
 * loops' work never changes, yet their time does. */
enum { MACHINE_MS = 15, MACHINE_REPEAT = 3, MACHINE_MEM_BYTES = 64 << 20 };

typedef struct {
    const char *name;
    const uint64_t *mem; /* the memory loop's buffer; NULL: the arithmetic loop */
    long reps;           /* 0 until calibrated */
    double *t;
    int n_t, cap;
} fixed_loop;

static double fixed_work(const fixed_loop *fl)
{
    if (fl->mem) {
        uint64_t s = 0;
        for (long r = 0; r < fl->reps; r++)
            for (size_t i = 0; i < MACHINE_MEM_BYTES / sizeof *fl->mem; i++)
                s += fl->mem[i];
        return (double)s;
    }
    float a[64];
    for (int i = 0; i < 64; i++)
        a[i] = (float)i * 1e-3f;
    for (long r = 0; r < fl->reps; r++)
        for (int i = 0; i < 64; i++)
            a[i] = a[i] * 0.999f + 0.001f;
    double s = 0;
    for (int i = 0; i < 64; i++)
        s += a[i];
    return s;
}

static volatile double g_fixed_sink; /* keeps fixed_work's result, so the loop is not elided */

static double time_fixed_work(const fixed_loop *fl)
{
    int64_t t0 = cairn_now_ns();
    g_fixed_sink += fixed_work(fl);
    return (double)(cairn_now_ns() - t0) / 1e9;
}

/* Sets fl->reps so that the loop takes about MACHINE_MS here at its fastest: scaled from the
 * quickest of 5 short trials, then once more from the quickest of 3 full-length ones (short
 * trials alone came out 1.6x off: 0.2 ms is too short to time this machine by). */
static void fixed_loop_calibrate(fixed_loop *fl)
{
    fl->reps = fl->mem ? 1 : 20000;
    for (int round = 0; round < 2; round++) {
        double t[5];
        int n = round ? 3 : 5;
        for (int i = 0; i < n; i++)
            t[i] = time_fixed_work(fl);
        qsort(t, (size_t)n, sizeof *t, cmp_double);
        if (t[0] > 0) fl->reps = (long)((double)fl->reps * (MACHINE_MS * 1e-3) / t[0] + 0.5);
        if (fl->reps < 1) fl->reps = 1;
    }
}

/* Times the loop MACHINE_REPEAT times in a row (calibrating it first if need be). */
static void fixed_loop_time(fixed_loop *fl)
{
    if (!fl->reps) fixed_loop_calibrate(fl);
    for (int k = 0; k < MACHINE_REPEAT && fl->n_t < fl->cap; k++)
        fl->t[fl->n_t++] = time_fixed_work(fl);
}

/* Prints a loop's line: its floor and spread over runs of MACHINE_REPEAT timings. */
static void fixed_loop_report(const fixed_loop *fl)
{
    const double *t = fl->t;
    const int n = fl->n_t;
    double sf = 0, median;
    int nf = 0;
    for (int i = 0; i + MACHINE_REPEAT <= n; i += MACHINE_REPEAT)
        for (int k = 0; k < MACHINE_REPEAT; k++, nf++)
            sf += fabs(median_of_others(t + i, MACHINE_REPEAT, k) - t[i + k]) / t[i + k];
    const double sp = spread(t, n, &median);
    printf("{\"bench\":\"sched_profile_machine\",\"work\":\"%s\",\"timings\":%d,"
           "\"median_ms\":%.2f,\"floor\":%.4f,\"spread\":%.4f}\n",
           fl->name, n, median * 1e3, nf ? sf / nf : 0.0, sp);
}

static int bench_profile(int argc, char **argv)
{
    const char *model_path = DEFAULT_MODEL, *out_path = NULL, *budgets = "50,100,150,200,300,400";
    const char *samples_path = NULL;
    int iters = 600, threads = 0, repeat = 3;
    budget_search bs = {.load = 0.5, .duration = 30, .backlog = 8, .max_seqs = 12};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        i++;
        if (!strcmp(a, "-m")) model_path = v;
        else if (!strcmp(a, "--out")) out_path = v;
        else if (!strcmp(a, "--samples")) samples_path = v;
        else if (!strcmp(a, "--iterations")) iters = atoi(v);
        else if (!strcmp(a, "--repeat")) repeat = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--ttft-slo")) bs.ttft_ms = atof(v);
        else if (!strcmp(a, "--tbt-slo")) bs.tbt_ms = atof(v);
        else if (!strcmp(a, "--load")) bs.load = atof(v);
        else if (!strcmp(a, "--budgets")) budgets = v;
        else if (!strcmp(a, "--duration")) bs.duration = atof(v);
        else if (!strcmp(a, "--backlog")) bs.backlog = atoi(v);
        else if (!strcmp(a, "--max-seqs")) bs.max_seqs = atoi(v);
        else goto usage;
    }
    bs.threads = threads;
    bs.n_budgets = parse_list(budgets, bs.budgets, 16);
    const bool search = bs.ttft_ms > 0 || bs.tbt_ms > 0;
    if (repeat < 1 || repeat > 9 || iters < 50 * repeat || iters > 100000 || threads < 0 ||
        bs.n_budgets <= 0 || (search && !(bs.ttft_ms > 0 && bs.tbt_ms > 0)) || !(bs.load > 0) ||
        !(bs.duration >= 5) || bs.backlog < 0 || bs.max_seqs < 2 || bs.max_seqs > 64)
        goto usage;

    cairn_error err = {0};
    cairn_model *m = NULL;
    cairn_engine *e = NULL;
    enum { MAX_SEQS = PROF_MAX_DEC + PROF_MAX_PRE + PROBE_SEQS, CTX = 768 };
    cairn_engine_params ep = cairn_engine_default_params();
    ep.n_threads = threads;
    ep.max_seqs = MAX_SEQS;
    ep.n_ctx = CTX;
    ep.kv_blocks = MAX_SEQS * CTX / ep.block_tokens;
    if (cairn_model_open(&m, model_path, &err) || cairn_engine_open(&e, m, &ep, &err)) {
        fprintf(stderr, "cairn bench profile: %s\n", err.msg);
        cairn_model_close(m);
        return 1;
    }
    int32_t vocab = cairn_model_hparams_of(m)->n_vocab;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int dec[PROF_MAX_DEC], n_dec = 0; /* the pool of decoding sequences */
    sample *smp = calloc((size_t)iters, sizeof *smp);
    cairn_step_item items[MAX_SEQS];
    int rc = smp ? 0 : 1, n = 0, n_groups = 0;
    cairn_gen_params gp = cairn_gen_default_params();
    gp.max_tokens = CTX;
    probe probes[N_PROBES];
    uint64_t probe_rng = 0x2545f4914f6cdd1dull; /* its own: the draws stay those of before */
    for (int k = 0; k < N_PROBES; k++) {
        probes[k].n_t = 0;
        for (int i = 0; i < PROBE_MAX_DEC; i++)
            probes[k].ids[i] = -1;
    }

    /* The fixed loops are calibrated after the first draw, once the engine has run. */
    const int machine_cap = (iters + 1) * MACHINE_REPEAT;
    /* Written, not calloc'd: untouched pages all map the kernel's one zero page, which a read
     * stream would find in the cache. */
    uint64_t *mem = malloc(MACHINE_MEM_BYTES);
    for (size_t i = 0; mem && i < MACHINE_MEM_BYTES / sizeof *mem; i++)
        mem[i] = i * 0x9e3779b97f4a7c15ull;
    fixed_loop loops[2] = {
        {.name = "arithmetic", .cap = machine_cap},
        {.name = "memory", .mem = mem, .cap = machine_cap},
    };
    for (int k = 0; k < 2; k++)
        loops[k].t = malloc(sizeof(double) * (size_t)machine_cap);
    if (!mem || !loops[0].t || !loops[1].t)
        rc = 1, snprintf(err.msg, sizeof err.msg, "out of memory");
    fprintf(stderr, "profiling %d iterations", iters);
    while (!rc && n < iters) {
        draw d = draw_shape(&rng, ep.max_batch_tokens);
        /* Retire long sequences; top the decoding pool up to the wanted count (untimed). */
        for (int i = 0; i < n_dec;) {
            cairn_seq_info info;
            cairn_engine_seq_info(e, dec[i], &info);
            if (info.finish != CAIRN_FINISH_NONE || info.n_prefilled + info.n_generated > 640) {
                cairn_engine_release(e, dec[i]);
                dec[i] = dec[--n_dec];
            } else {
                i++;
            }
        }
        while (!rc && n_dec < d.want_dec) {
            int id = add_seq(e, &gp, rng_range(&rng, 8, 400), vocab, &rng);
            if (id < 0) break;
            cairn_step_item one = {id, 512};
            for (cairn_seq_info info; !rc;) {
                cairn_engine_seq_info(e, id, &info);
                if (!info.prefilling) break;
                rc = cairn_engine_step(e, &one, 1, &err) ? 1 : 0;
            }
            dec[n_dec++] = id;
        }
        int g = n_groups++;
        for (int k = 0; !rc && g % PROBE_EVERY == 0 && k < N_PROBES; k++)
            rc = probe_time(e, &gp, vocab, &probe_rng, &probes[k], k, &err);
        for (int k = 0; !rc && k < 2; k++)
            fixed_loop_time(&loops[k]);
        /* The same draw, timed `repeat` times: the same decoding sequences (a token further on
         * each time) and fresh prefilling ones. */
        for (int rep = 0; !rc && rep < repeat && n < iters; rep++) {
            sample *s = &smp[n];
            *s = (sample){.group = g, .rep = rep};
            int n_items = 0, pre_id[PROF_MAX_PRE];
            for (int i = 0; i < n_dec && i < d.want_dec; i++) {
                cairn_seq_info info;
                cairn_engine_seq_info(e, dec[i], &info);
                if (info.finish != CAIRN_FINISH_NONE) continue;
                int ctx = info.n_prefilled + info.n_generated;
                items[n_items++] = (cairn_step_item){dec[i], 1};
                cairn_batch_shape_add(&s->shape, false, ctx, 1, true);
                s->dec_ctx[s->n_dec++] = ctx;
            }
            for (int k = 0; k < d.n_pre; k++) {
                pre_id[k] = add_seq(e, &gp, d.prefix[k] + d.chunk[k] + d.extra[k], vocab, &rng);
                if (pre_id[k] >= 0 && d.prefix[k]) { /* an earlier chunk of the prompt, untimed */
                    cairn_step_item first = {pre_id[k], d.prefix[k]};
                    rc = cairn_engine_step(e, &first, 1, &err) ? 1 : 0;
                }
                if (pre_id[k] < 0) continue;
                items[n_items++] = (cairn_step_item){pre_id[k], d.chunk[k]};
                cairn_batch_shape_add(&s->shape, true, d.prefix[k], d.chunk[k], d.extra[k] == 0);
                s->pre_prefix[s->n_pre] = d.prefix[k];
                s->pre_chunk[s->n_pre] = d.chunk[k];
                s->pre_final[s->n_pre++] = d.extra[k] == 0;
            }
            if (!rc && n_items > 0) {
                double st0 = cpu_stall_s();
                int64_t t0 = cairn_now_ns();
                rc = cairn_engine_step(e, items, n_items, &err) ? 1 : 0;
                s->seconds = (double)(cairn_now_ns() - t0) / 1e9;
                double st1 = cpu_stall_s();
                s->stall_s = st0 >= 0 && st1 >= 0 ? st1 - st0 : -1;
                if (!rc && n++ % 50 == 0) fprintf(stderr, ".");
            } else if (!rc && n_dec == 0) {
                rc = 1; /* cannot make progress */
                snprintf(err.msg, sizeof err.msg, "no sequence could be added");
            }
            /* The last timing's finished prompts join the decoding pool while it has room. */
            for (int k = 0; k < d.n_pre; k++) {
                if (pre_id[k] < 0) continue;
                if (rep == repeat - 1 && !d.extra[k] && n_dec < PROF_MAX_DEC)
                    dec[n_dec++] = pre_id[k];
                else
                    cairn_engine_release(e, pre_id[k]);
            }
        }
    }
    fprintf(stderr, "\n");
    if (rc) fprintf(stderr, "cairn bench profile: %s\n", err.msg);
    if (!rc && samples_path && write_samples(samples_path, smp, n) != 0) {
        fprintf(stderr, "cairn bench profile: %s: %s\n", samples_path, strerror(errno));
        rc = 1;
    }

    /* Fit on the draws of the first 70% (each draw's median timing: repeating a shape filters
     * out the iterations that another process slowed down), evaluate on every timed iteration
     * of the rest. */
    cairn_predictor *p = NULL;
    int g_fit = n_groups * 7 / 10, n_fit = 0;
    cairn_backend_traits traits;
    cairn_engine_backend(e)->i->traits(cairn_engine_backend(e), &traits);
    if (!rc && cairn_predictor_new(&p, g_fit > 16 ? g_fit : 16, &err) != 0) rc = 1;
    if (!rc) cairn_predictor_set_refit(p, 0);
    if (!rc) cairn_predictor_set_traits(p, &traits);
    for (int i = 0; !rc && i < n && smp[i].group < g_fit;) {
        int j = i;
        double t[9];
        while (j < n && smp[j].group == smp[i].group)
            t[j - i] = smp[j].seconds, j++;
        qsort(t, (size_t)(j - i), sizeof *t, cmp_double);
        double med = t[(j - i - 1) / 2];
        for (int k = i; k < j; k++)
            if (smp[k].seconds == med) {
                cairn_predictor_observe(p, &smp[k].shape, med);
                break;
            }
        n_fit++;
        i = j;
    }
    if (!rc && cairn_predictor_fit(p, &err) != 0) rc = 1;
    if (!rc) {
        double sum[N_BUCKETS] = {0}, all = 0;
        int cnt[N_BUCKETS] = {0}, n_all = 0;
        double *ape = malloc(sizeof(double) * (size_t)n);
        for (int i = 0; i < n; i++) {
            if (smp[i].group < g_fit) continue;
            double pr = cairn_predictor_predict(p, &smp[i].shape);
            double e_ = fabs(pr - smp[i].seconds) / smp[i].seconds;
            int k = bucket_of(&smp[i].shape);
            sum[k] += e_, cnt[k]++;
            all += e_;
            if (ape) ape[n_all] = e_;
            n_all++;
        }
        /* The noise floor: each held-out timing predicted by the median of its shape's other
         * timings (no model at all). A model cannot beat the machine's own repeatability. */
        double floor_sum = 0, fsum[N_BUCKETS] = {0};
        int floor_n = 0, fcnt[N_BUCKETS] = {0};
        for (int i = 0; i < n;) {
            int j = i;
            while (j < n && smp[j].group == smp[i].group)
                j++;
            if (smp[i].group < g_fit || j - i < 3) { /* fitted, or too few timings */
                i = j;
                continue;
            }
            double t[9];
            for (int o = i; o < j; o++)
                t[o - i] = smp[o].seconds;
            for (int k = i; k < j; k++) {
                double med = median_of_others(t, j - i, k - i);
                double e_ = fabs(med - smp[k].seconds) / smp[k].seconds;
                int b = bucket_of(&smp[k].shape);
                floor_sum += e_, floor_n++;
                fsum[b] += e_, fcnt[b]++;
            }
            i = j;
        }
        double spread_sum = 0;
        int spread_n = 0;
        for (int k = 0; k < N_PROBES; k++) {
            double med, sp = spread(probes[k].t, probes[k].n_t, &med);
            printf("{\"bench\":\"sched_profile_probe\",\"decode\":%d,\"timings\":%d,"
                   "\"median_ms\":%.2f,\"spread\":%.4f}\n",
                   PROBE_DEC[k], probes[k].n_t, med * 1e3, sp);
            spread_sum += sp * probes[k].n_t, spread_n += probes[k].n_t;
        }
        for (int k = 0; k < 2; k++)
            fixed_loop_report(&loops[k]);
        double c[CAIRN_PREDICTOR_FEATURES];
        cairn_predictor_coefficients(p, c);
        /* The predictor as cairnd runs it after loading this profile: these coefficients, a
         * window of its latest iterations (cairn_workers_params) refitted every 32 towards
         * them, a speed factor following the machine's drift, and the held-out iterations
         * joining in time order. Each shape's timings are all predicted before the first of
         * them joins, so that neither the refits nor the speed factor have seen the shape. */
        double osum[N_BUCKETS] = {0};
        int ocnt[N_BUCKETS] = {0};
        cairn_predictor *q = NULL;
        if (cairn_predictor_new(&q, cairn_workers_default_params().predictor_window, NULL) == 0) {
            cairn_predictor_set_traits(q, &traits);
            cairn_predictor_set_coefficients(q, c);
            for (int i = 0, j; i < n; i = j) {
                for (j = i; j < n && smp[j].group == smp[i].group; j++) {
                    if (smp[j].group < g_fit) continue;
                    double pr = cairn_predictor_predict(q, &smp[j].shape);
                    int k = bucket_of(&smp[j].shape);
                    osum[k] += fabs(pr - smp[j].seconds) / smp[j].seconds, ocnt[k]++;
                }
                for (int o = i; o < j && smp[o].group >= g_fit; o++)
                    cairn_predictor_observe(q, &smp[o].shape, smp[o].seconds);
            }
        }
        int o_all = 0;
        double o_sum = 0;
        for (int k = 0; k < N_BUCKETS; k++) {
            printf("{\"bench\":\"sched_profile\",\"bucket\":\"%s\",\"held_out\":%d,"
                   "\"mape\":%.4f,\"mape_online\":%.4f,\"noise_floor\":%.4f}\n",
                   BUCKETS[k], cnt[k], cnt[k] ? sum[k] / cnt[k] : 0.0,
                   ocnt[k] ? osum[k] / ocnt[k] : 0.0, fcnt[k] ? fsum[k] / fcnt[k] : 0.0);
            o_all += ocnt[k], o_sum += osum[k];
        }
        cairn_predictor_free(q);
        /* How much of the timed time other tasks waited for a CPU: on a busy machine the
         * timings, hence the MAPE, carry the other processes' noise. */
        double stall = 0, timed = 0;
        for (int i = 0; i < n; i++)
            stall += smp[i].stall_s > 0 ? smp[i].stall_s : 0, timed += smp[i].seconds;
        const double stall_frac = smp[0].stall_s >= 0 && timed > 0 ? stall / timed : -1;
        char stall_s[32] = "null"; /* no PSI on this machine */
        if (stall_frac >= 0) snprintf(stall_s, sizeof stall_s, "%.4f", stall_frac);
        printf("{\"bench\":\"sched_profile\",\"bucket\":\"all\",\"held_out\":%d,\"mape\":%.4f,"
               "\"mape_online\":%.4f,\"noise_floor\":%.4f,\"noise_floor_spread\":%.4f,"
               "\"ape_p90\":%.4f,\"fit_draws\":%d,\"repeat\":%d,\"cpu_stall\":%s,"
               "\"coefficients\":[",
               n_all, n_all ? all / n_all : 0.0, o_all ? o_sum / o_all : 0.0,
               floor_n ? floor_sum / floor_n : 0.0, spread_n ? spread_sum / spread_n : 0.0,
               ape ? pct(ape, (size_t)n_all, 0.9) : 0.0, n_fit, repeat, stall_s);
        if (stall_frac > 0.01)
            fprintf(stderr, "cairn bench profile: other tasks waited for a CPU during %.0f%% of "
                            "the timed iterations (Linux PSI): the machine was not idle and the "
                            "figures carry that noise\n", 100 * stall_frac);
        for (int j = 0; j < CAIRN_PREDICTOR_FEATURES; j++)
            printf("%s%.6g", j ? "," : "", c[j]);
        printf("],\"features\":[");
        for (int j = 0; j < CAIRN_PREDICTOR_FEATURES; j++)
            printf("%s\"%s\"", j ? "," : "", cairn_predictor_feature_names[j]);
        printf("]}\n");
        free(ape);
        cairn_engine_close(e); /* the budget search loads the model in its own workers */
        cairn_model_close(m);
        e = NULL, m = NULL;
        double budget = search ? find_budget(model_path, c, &bs) : 0;
        if (search && budget <= 0) {
            fprintf(stderr, "cairn bench profile: no budget met the SLO (TTFT %.0f ms, TBT %.0f "
                            "ms) at load %.2f\n",
                    bs.ttft_ms, bs.tbt_ms, bs.load);
            rc = 1;
        }
        if (search && budget > 0)
            printf("{\"bench\":\"sched_profile_budget\",\"budget_s\":%.3f,\"ttft_slo_ms\":%.0f,"
                   "\"tbt_slo_ms\":%.0f,\"load\":%.2f}\n",
                   budget, bs.ttft_ms, bs.tbt_ms, bs.load);
        if (out_path && !rc) {
            cairn_sched_profile prof = {.budget_s = budget > 0 ? budget : 0};
            memcpy(prof.coef, c, sizeof prof.coef);
            if (cairn_sched_profile_save(out_path, &prof, &err) != 0) {
                fprintf(stderr, "cairn bench profile: %s\n", err.msg);
                rc = 1;
            }
        }
    }
    cairn_predictor_free(p);
    free(smp);
    free(loops[0].t);
    free(loops[1].t);
    free(mem);
    cairn_engine_close(e);
    cairn_model_close(m);
    return rc;
usage:
    fputs(cairn_cmd_bench_usage, stderr);
    return 2;
}

/* ---- colocate ------------------------------------------------------------------------------- */

typedef struct run run;

typedef struct {
    run *r;
    bool online;
    int64_t t_submit, t_first, t_last;
    double max_gap;
    int tokens;
} req;

struct run {
    cairn_workers *w;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t t_start, t_end; /* the measured window */
    atomic_bool stop;
    int online_in_flight, offline_in_flight;
    /* results (under mu) */
    double *ttft, *gaps;
    size_t n_ttft, cap_ttft, n_gaps, cap_gaps;
    int online_done, online_ok, online_rejected;
    int offline_done, offline_cut; /* offline requests finished, and ended with an error */
    long long online_tokens, offline_tokens; /* within the window */
};

static void push(double **v, size_t *n, size_t *cap, double x)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 1024;
        double *t = realloc(*v, c * sizeof *t);
        if (!t) return;
        *v = t;
        *cap = c;
    }
    (*v)[(*n)++] = x;
}

static int on_text(void *user, const char *s, size_t n)
{
    (void)s, (void)n;
    req *q = user;
    run *r = q->r;
    int64_t now = cairn_now_ns();
    pthread_mutex_lock(&r->mu);
    bool in_window = now >= r->t_start && now <= r->t_end;
    if (!q->t_first) {
        q->t_first = now;
    } else {
        double g = (double)(now - q->t_last) / 1e9;
        if (q->online) push(&r->gaps, &r->n_gaps, &r->cap_gaps, g);
        if (g > q->max_gap) q->max_gap = g;
    }
    q->t_last = now;
    q->tokens++;
    if (in_window) {
        if (q->online) r->online_tokens++;
        else r->offline_tokens++;
    }
    pthread_mutex_unlock(&r->mu);
    return 0;
}

typedef struct {
    double ttft_slo, tbt_slo;
} slo_t;
static slo_t g_slo;

static void on_done(void *user, const cairn_gen_result *res)
{
    req *q = user;
    run *r = q->r;
    pthread_mutex_lock(&r->mu);
    if (q->online) {
        r->online_in_flight--;
        if (!res->error && q->t_first) {
            double ttft = (double)(q->t_first - q->t_submit) / 1e9;
            push(&r->ttft, &r->n_ttft, &r->cap_ttft, ttft);
            r->online_done++;
            r->online_ok += ttft <= g_slo.ttft_slo && q->max_gap <= g_slo.tbt_slo;
        } else {
            r->online_rejected++;
        }
    } else {
        r->offline_in_flight--;
        if (res->error) r->offline_cut++; /* read before the shutdown cancels the rest */
        else r->offline_done++;
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    free(q);
}

/* Prompt texts of given token lengths, built from a fixed paragraph. */
static char *text_of_tokens(cairn_workers *w, int tokens, uint64_t *rng)
{
    static const char *const words[] = {
        "the",    "river",  "runs",    "through", "a",       "valley",  "of",      "old",
        "stone",  "where",  "farmers", "grow",    "barley",  "and",     "keep",    "sheep",
        "near",   "mills",  "that",    "still",   "grind",   "flour",   "for",     "three",
        "towns",  "report", "notes",   "water",   "levels",  "rise",    "in",      "spring"};
    size_t cap = (size_t)tokens * 12 + 64, n = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    s[0] = '\0';
    for (;;) {
        int have = cairn_tok_encode(cairn_workers_tokenizer(w), s, n, NULL, 0, 0, NULL);
        have = have < 0 ? -have : have;
        if (have >= tokens || n + 16 > cap) break;
        n += (size_t)snprintf(s + n, cap - n, "%s%s", n ? " " : "",
                              words[rng_next(rng) % (sizeof words / sizeof words[0])]);
    }
    return s;
}

typedef struct {
    char **on, **off;
    int n_on, n_off;
} prompts;

static int submit(run *r, const char *prompt, bool online, int max_tokens, uint64_t *rng)
{
    req *q = calloc(1, sizeof *q);
    if (!q) return CAIRN_ENOMEM;
    q->r = r;
    q->online = online;
    q->t_submit = cairn_now_ns();
    cairn_gen_request rq = {
        .prompt = prompt,
        .prompt_len = strlen(prompt),
        .tok_flags = CAIRN_TOK_ADD_SPECIAL,
        .max_tokens = max_tokens,
        .offline = !online,
        .sample = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = rng_next(rng)},
        .on_text = on_text,
        .on_done = on_done,
        .user = q,
    };
    pthread_mutex_lock(&r->mu);
    if (online) r->online_in_flight++;
    else r->offline_in_flight++;
    pthread_mutex_unlock(&r->mu);
    int rc = cairn_workers_submit(r->w, &rq, NULL);
    if (rc) {
        pthread_mutex_lock(&r->mu);
        if (online) r->online_in_flight--, r->online_rejected++;
        else r->offline_in_flight--;
        pthread_mutex_unlock(&r->mu);
        free(q);
    }
    return rc;
}

typedef struct {
    double online_rps;   /* 0: no online arrivals; < 0: closed loop with -x in flight */
    double duration_s;
    int backlog;
} run_spec;

typedef struct {
    double ttft_p50, ttft_p99, tbt_p50, tbt_p99, attainment, offline_tps, online_tps, rps_done;
    int done, rejected, offline_done, offline_cut;
} run_result;

static void sleep_until(int64_t t)
{
    cairn_sleep_ns(t - cairn_now_ns());
}

static int run_once(cairn_workers *w, const prompts *pr, const run_spec *spec, uint64_t seed,
                    run_result *out)
{
    run r = {.w = w};
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    uint64_t rng = seed;
    int64_t warm = 5 * CAIRN_NS_PER_SEC;
    int64_t t0 = cairn_now_ns();
    r.t_start = t0 + warm;
    r.t_end = r.t_start + (int64_t)(spec->duration_s * 1e9);
    int64_t next = t0;
    while (cairn_now_ns() < r.t_end) {
        /* Keep the offline backlog full. */
        pthread_mutex_lock(&r.mu);
        int need_off = spec->backlog - r.offline_in_flight;
        int online_now = r.online_in_flight;
        pthread_mutex_unlock(&r.mu);
        for (int i = 0; i < need_off; i++)
            submit(&r, pr->off[rng_next(&rng) % (uint64_t)pr->n_off], false, 64, &rng);
        int64_t now = cairn_now_ns();
        if (spec->online_rps < 0) {
            for (int i = online_now; i < (int)-spec->online_rps; i++)
                submit(&r, pr->on[rng_next(&rng) % (uint64_t)pr->n_on], true, 32, &rng);
            sleep_until(now + 2 * CAIRN_NS_PER_MS);
        } else if (spec->online_rps > 0) {
            if (now >= next) {
                submit(&r, pr->on[rng_next(&rng) % (uint64_t)pr->n_on], true, 32, &rng);
                next += (int64_t)(-log(1.0 - rng_unit(&rng)) / spec->online_rps * 1e9);
            }
            int64_t wake = next < now + 10 * CAIRN_NS_PER_MS ? next : now + 10 * CAIRN_NS_PER_MS;
            sleep_until(wake);
        } else {
            sleep_until(now + 10 * CAIRN_NS_PER_MS);
        }
    }
    /* Drain: online requests finish; offline ones are cut short by closing the workers later,
     * so wait only for online ones (at most 120 s). */
    pthread_mutex_lock(&r.mu);
    int64_t deadline = cairn_now_ns() + 120 * CAIRN_NS_PER_SEC;
    while (r.online_in_flight > 0 && cairn_now_ns() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&r.cv, &r.mu, &ts);
    }
    double win = spec->duration_s;
    /* Requests that arrived before the window are counted too (all online requests). */
    out->ttft_p50 = pct(r.ttft, r.n_ttft, 0.5);
    out->ttft_p99 = pct(r.ttft, r.n_ttft, 0.99);
    out->tbt_p50 = pct(r.gaps, r.n_gaps, 0.5);
    out->tbt_p99 = pct(r.gaps, r.n_gaps, 0.99);
    int total = r.online_done + r.online_rejected;
    out->attainment = total ? (double)r.online_ok / total : NAN;
    out->offline_tps = (double)r.offline_tokens / win;
    out->online_tps = (double)r.online_tokens / win;
    out->done = r.online_done;
    out->rejected = r.online_rejected;
    out->offline_done = r.offline_done;
    out->offline_cut = r.offline_cut;
    out->rps_done = (double)r.online_done / (win + warm / 1e9);
    pthread_mutex_unlock(&r.mu);
    /* The caller closes the workers, which ends the backlog; the callbacks still use r. */
    cairn_workers_stop(w);
    free(r.ttft);
    free(r.gaps);
    pthread_cond_destroy(&r.cv);
    pthread_mutex_destroy(&r.mu);
    return 0;
}

static int open_workers_ex(cairn_workers **w, const char *model, cairn_sched_policy pol,
                           double budget_s, int max_seqs, int threads, const double *coef,
                           bool layer_yield, int n_ctx)
{
    cairn_workers_params wp = cairn_workers_default_params();
    wp.predictor = coef;
    wp.layer_yield = layer_yield;
    wp.model_path = model;
    wp.engine.n_threads = threads;
    wp.engine.max_seqs = max_seqs;
    wp.engine.n_ctx = n_ctx;
    /* Room for every sequence's full context: this measures scheduling, not KV pressure. */
    wp.engine.kv_blocks = max_seqs * ((n_ctx + wp.engine.block_tokens - 1) /
                                      wp.engine.block_tokens);
    wp.max_queue = 1024;
    wp.max_offline_queue = 1024;
    wp.online_reserve = max_seqs / 4 > 0 ? max_seqs / 4 : 1;
    wp.sched.policy = pol;
    wp.sched.budget_s = budget_s;
    wp.sched.online_budget_s = g_online_budget_s > budget_s ? g_online_budget_s : budget_s;
    wp.timeout_ns = 0;
    cairn_error err = {0};
    if (cairn_workers_open(w, &wp, NULL, &err) != 0) {
        fprintf(stderr, "cairn bench: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static int open_workers(cairn_workers **w, const char *model, cairn_sched_policy pol,
                        double budget_s, int max_seqs, int threads, const double *coef)
{
    return open_workers_ex(w, model, pol, budget_s, max_seqs, threads, coef, true, 1024);
}

/* ---- yield ------------------------------------------------------------------------------------ */

static int bench_yield(int argc, char **argv)
{
    const char *model = DEFAULT_MODEL;
    int trials = 10, doc_tokens = 1500, threads = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        i++;
        if (!strcmp(a, "-m")) model = v;
        else if (!strcmp(a, "--trials")) trials = atoi(v);
        else if (!strcmp(a, "--doc-tokens")) doc_tokens = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else goto usage;
    }
    if (trials < 1 || trials > 1000 || doc_tokens < 600 || doc_tokens > 1900 || threads < 0)
        goto usage;
    g_slo = (slo_t){1e9, 1e9};
    double ttft[2][1000];
    double offline_s[2] = {0};
    for (int mode = 0; mode < 2; mode++) {
        cairn_workers *w = NULL;
        if (open_workers_ex(&w, model, CAIRN_SCHED_ONLINE_ONLY, 0.1, 4, threads, NULL, mode == 1,
                            2048))
            return 1;
        uint64_t rng = 42; /* the same documents and arrival times in both modes */
        char *doc = text_of_tokens(w, doc_tokens, &rng), *q = text_of_tokens(w, 32, &rng);
        run r = {.w = w, .t_start = 0, .t_end = INT64_MAX};
        pthread_mutex_init(&r.mu, NULL);
        pthread_cond_init(&r.cv, NULL);
        for (int t = 0; t < trials; t++) {
            int64_t t0 = cairn_now_ns();
            /* Arrive 0.3..2.3 s into the document's prefill (a 512-token pass takes seconds). */
            int64_t at = t0 + (int64_t)((0.3 + 2.0 * rng_unit(&rng)) * 1e9);
            if (submit(&r, doc, false, 4, &rng) != 0) {
                fprintf(stderr, "cairn bench yield: the document was refused\n");
                return 1;
            }
            sleep_until(at);
            if (submit(&r, q, true, 4, &rng) != 0) {
                fprintf(stderr, "cairn bench yield: the online request was refused\n");
                return 1;
            }
            pthread_mutex_lock(&r.mu);
            while (r.online_in_flight + r.offline_in_flight > 0)
                pthread_cond_wait(&r.cv, &r.mu);
            pthread_mutex_unlock(&r.mu);
            offline_s[mode] += (double)(cairn_now_ns() - t0) / 1e9;
        }
        for (size_t i = 0; i < r.n_ttft && i < 1000; i++)
            ttft[mode][i] = r.ttft[i];
        size_t n = r.n_ttft;
        printf("{\"bench\":\"layer_yield\",\"layer_yield\":%s,\"trials\":%d,"
               "\"doc_tokens\":%d,\"ttft_p50\":%.3f,\"ttft_p90\":%.3f,\"ttft_max\":%.3f,"
               "\"trial_seconds_mean\":%.2f}\n",
               mode ? "true" : "false", trials, doc_tokens, pct(ttft[mode], n, 0.5),
               pct(ttft[mode], n, 0.9), pct(ttft[mode], n, 1.0), offline_s[mode] / trials);
        fflush(stdout);
        cairn_workers_close(w);
        free(r.ttft);
        free(r.gaps);
        free(doc);
        free(q);
        pthread_cond_destroy(&r.cv);
        pthread_mutex_destroy(&r.mu);
    }
    return 0;
usage:
    fputs(cairn_cmd_bench_usage, stderr);
    return 2;
}

static void make_prompts(cairn_workers *w, uint64_t seed, prompts *pr)
{
    pr->n_on = 48;
    pr->n_off = 16;
    pr->on = calloc((size_t)pr->n_on, sizeof *pr->on);
    pr->off = calloc((size_t)pr->n_off, sizeof *pr->off);
    uint64_t rng = seed * 0x9e3779b97f4a7c15ull;
    for (int i = 0; pr->on && i < pr->n_on; i++)
        pr->on[i] = text_of_tokens(w, rng_range(&rng, 16, 128), &rng);
    for (int i = 0; pr->off && i < pr->n_off; i++)
        pr->off[i] = text_of_tokens(w, rng_range(&rng, 300, 500), &rng);
}

static void free_prompts(prompts *pr)
{
    for (int i = 0; pr->on && i < pr->n_on; i++)
        free(pr->on[i]);
    for (int i = 0; pr->off && i < pr->n_off; i++)
        free(pr->off[i]);
    free(pr->on);
    free(pr->off);
}

/* Online capacity: requests/s completed with max_seqs online requests always in flight. */
static double measure_capacity(cairn_workers *w, const prompts *pr, int max_seqs,
                               double duration, uint64_t seed, double *tps)
{
    run_spec cap = {.online_rps = -(double)max_seqs, .duration_s = duration, .backlog = 0};
    run_result cr;
    run_once(w, pr, &cap, seed, &cr);
    if (tps) *tps = cr.online_tps;
    return cr.rps_done;
}

/* The SLO profiler's search (see the usage text). Returns the budget in seconds, or -1. */
static double find_budget(const char *model, const double *coef, const budget_search *bs)
{
    g_slo = (slo_t){bs->ttft_ms / 1e3, bs->tbt_ms / 1e3};
    g_online_budget_s = ONLINE_SHARE * bs->tbt_ms / 1e3;
    cairn_workers *w = NULL;
    if (open_workers(&w, model, CAIRN_SCHED_ONLINE_ONLY, 0.1, bs->max_seqs, bs->threads, coef))
        return -1;
    prompts pr;
    make_prompts(w, 1, &pr);
    double capacity = measure_capacity(w, &pr, bs->max_seqs, bs->duration / 2, 1, NULL);
    cairn_workers_close(w);
    /* From the smallest budget up, stopping at the first that misses: on a noisy machine a
     * larger budget can pass by luck after a smaller one failed, and is not to be trusted. */
    double budgets[16];
    memcpy(budgets, bs->budgets, sizeof budgets);
    qsort(budgets, (size_t)bs->n_budgets, sizeof *budgets, cmp_double);
    double best = -1;
    for (int i = 0; i < bs->n_budgets; i++) {
        double b = budgets[i] / 1e3;
        if (open_workers(&w, model, CAIRN_SCHED_SLO, b, bs->max_seqs, bs->threads, coef)) break;
        run_spec rs = {.online_rps = bs->load * capacity, .duration_s = bs->duration,
                       .backlog = bs->backlog};
        run_result rr;
        run_once(w, &pr, &rs, 7, &rr);
        cairn_workers_close(w);
        bool met = rr.ttft_p99 <= g_slo.ttft_slo && rr.tbt_p99 <= g_slo.tbt_slo;
        printf("{\"bench\":\"sched_profile_trial\",\"budget_s\":%.3f,\"online_rps\":%.4f,"
               "\"ttft_p99\":%.3f,\"tbt_p99_ms\":%.1f,\"offline_tps\":%.2f,\"slo_met\":%s}\n",
               b, rs.online_rps, rr.ttft_p99, rr.tbt_p99 * 1e3, rr.offline_tps,
               met ? "true" : "false");
        fflush(stdout);
        if (!met) break;
        best = b;
    }
    free_prompts(&pr);
    return best;
}

static int bench_colocate(int argc, char **argv)
{
    const char *model = DEFAULT_MODEL, *policies = "slo,online-only,fcfs-hybrid", *md = NULL;
    const char *loads_s = "0.25,0.5,0.75", *rates_s = NULL;
    double duration = 60, ttft_ms = 3000, tbt_ms = 300, budget_ms = 0, online_ms = 0;
    const char *profile = NULL;
    int backlog = 8, max_seqs = 12, threads = 0;
    uint64_t seed = 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        i++;
        if (!strcmp(a, "-m")) model = v;
        else if (!strcmp(a, "--policies")) policies = v;
        else if (!strcmp(a, "--loads")) loads_s = v;
        else if (!strcmp(a, "--rates")) rates_s = v;
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--ttft-slo")) ttft_ms = atof(v);
        else if (!strcmp(a, "--tbt-slo")) tbt_ms = atof(v);
        else if (!strcmp(a, "--budget")) budget_ms = atof(v);
        else if (!strcmp(a, "--backlog")) backlog = atoi(v);
        else if (!strcmp(a, "--max-seqs")) max_seqs = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--markdown")) md = v;
        else if (!strcmp(a, "--profile")) profile = v;
        else if (!strcmp(a, "--online-budget")) online_ms = atof(v);
        else goto usage;
    }
    cairn_sched_profile prof;
    const double *coef = NULL;
    if (profile) {
        cairn_error perr = {0};
        if (cairn_sched_profile_load(profile, &prof, &perr) != 0) {
            fprintf(stderr, "cairn bench colocate: --profile %s\n", perr.msg);
            return 2;
        }
        coef = prof.coef;
        if (budget_ms == 0 && prof.budget_s > 0) budget_ms = prof.budget_s * 1e3;
    }
    if (budget_ms == 0) budget_ms = 150; /* no --budget, no stored one */
    if (!(duration >= 5) || !(ttft_ms > 0) || !(tbt_ms > 0) || !(budget_ms > 0) || backlog < 0 ||
        max_seqs < 2 || max_seqs > 64 || threads < 0 || !seed)
        goto usage;
    g_slo = (slo_t){ttft_ms / 1e3, tbt_ms / 1e3};
    g_online_budget_s = online_ms > 0 ? online_ms / 1e3 : ONLINE_SHARE * tbt_ms / 1e3;
    cairn_sched_policy pols[3];
    int n_pol = 0;
    {
        char buf[128];
        snprintf(buf, sizeof buf, "%s", policies);
        for (char *sp = NULL, *t = strtok_r(buf, ",", &sp); t && n_pol < 3;
             t = strtok_r(NULL, ",", &sp)) {
            cairn_error err = {0};
            if (cairn_sched_policy_parse(t, &pols[n_pol++], &err)) {
                fprintf(stderr, "cairn bench colocate: %s\n", err.msg);
                return 2;
            }
        }
    }
    double vals[16];
    int n_vals = parse_list(rates_s ? rates_s : loads_s, vals, 16);
    if (n_vals <= 0 || n_pol == 0) goto usage;

    /* Prompts, made once with the model's tokenizer. */
    cairn_workers *w = NULL;
    if (open_workers(&w, model, CAIRN_SCHED_ONLINE_ONLY, budget_ms / 1e3, max_seqs, threads,
                     coef))
        return 1;
    prompts pr;
    make_prompts(w, seed, &pr);

    /* Capacity: online only, max_seqs requests always in flight, no backlog. */
    double capacity = 0;
    if (!rates_s) {
        double tps = 0;
        capacity = measure_capacity(w, &pr, max_seqs, duration / 2, seed, &tps);
        printf("{\"bench\":\"colocate_capacity\",\"online_rps\":%.4f,\"online_tps\":%.2f,"
               "\"max_seqs\":%d}\n",
               capacity, tps, max_seqs);
        fflush(stdout);
    }
    cairn_workers_close(w);

    FILE *mf = md ? fopen(md, "w") : NULL;
    if (md && !mf) fprintf(stderr, "cairn bench colocate: cannot write %s\n", md);
    FILE *outs[2] = {stdout, mf};
    for (int k = 0; k < 2; k++)
        if (outs[k] && k == 1)
            fprintf(outs[k],
                    "| policy | online req/s | load | TTFT p50 / p99 (s) | TBT p50 / p99 (ms) | "
                    "SLO attained | offline tok/s | online tok/s | total tok/s |\n"
                    "|---|---|---|---|---|---|---|---|---|\n");
    int rc = 0;
    for (int v = 0; v < n_vals && !rc; v++) {
        double rps = rates_s ? vals[v] : vals[v] * capacity;
        for (int p = 0; p < n_pol && !rc; p++) {
            if (open_workers(&w, model, pols[p], budget_ms / 1e3, max_seqs, threads, coef)) {
                rc = 1;
                break;
            }
            run_spec rs = {.online_rps = rps, .duration_s = duration, .backlog = backlog};
            run_result rr;
            run_once(w, &pr, &rs, seed + (uint64_t)v, &rr);
            int nm = 0;
            double mape = cairn_workers_predictor_mape(w, &nm);
            cairn_workers_close(w);
            bool met = rr.ttft_p99 <= g_slo.ttft_slo && rr.tbt_p99 <= g_slo.tbt_slo;
            /* JSON has no NaN: a figure with no samples (or no capacity run) is null. */
            char f[6][32];
            const double fv[6] = {capacity > 0 ? rps / capacity : NAN, rr.ttft_p50, rr.ttft_p99,
                                  rr.tbt_p50 * 1e3, rr.tbt_p99 * 1e3, rr.attainment};
            for (int k = 0; k < 6; k++)
                snprintf(f[k], sizeof f[k], isfinite(fv[k]) ? "%.3f" : "null", fv[k]);
            printf("{\"bench\":\"colocate\",\"policy\":\"%s\",\"online_rps\":%.4f,\"load\":%s,"
                   "\"ttft_p50\":%s,\"ttft_p99\":%s,\"tbt_p50_ms\":%s,\"tbt_p99_ms\":%s,"
                   "\"slo_attainment\":%s,\"slo_met\":%s,\"offline_tps\":%.2f,"
                   "\"online_tps\":%.2f,\"total_tps\":%.2f,\"online_done\":%d,"
                   "\"online_rejected\":%d,\"offline_done\":%d,\"offline_cut\":%d,"
                   "\"predictor_mape\":%.4f,\"predictor_n\":%d}\n",
                   cairn_sched_policy_name(pols[p]), rps, f[0], f[1], f[2], f[3], f[4], f[5],
                   met ? "true" : "false", rr.offline_tps, rr.online_tps,
                   rr.offline_tps + rr.online_tps, rr.done, rr.rejected, rr.offline_done,
                   rr.offline_cut, mape, nm);
            fflush(stdout);
            if (mf) {
                fprintf(mf,
                        "| %s | %.3f | %.2f | %.2f / %.2f | %.0f / %.0f | %.0f%%%s | %.1f | "
                        "%.1f | %.1f |\n",
                        cairn_sched_policy_name(pols[p]), rps,
                        capacity > 0 ? rps / capacity : NAN, rr.ttft_p50, rr.ttft_p99,
                        rr.tbt_p50 * 1e3, rr.tbt_p99 * 1e3, rr.attainment * 100,
                        met ? "" : " (p99 over SLO)", rr.offline_tps, rr.online_tps,
                        rr.offline_tps + rr.online_tps);
                fflush(mf);
            }
        }
    }
    if (mf) fclose(mf);
    free_prompts(&pr);
    return rc;
usage:
    fputs(cairn_cmd_bench_usage, stderr);
    return 2;
}

int cairn_cmd_bench(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "profile")) return bench_profile(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "colocate")) return bench_colocate(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "yield")) return bench_yield(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "retrieval-quality")) {
        if (argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
            fputs(cairn_cmd_bench_quality_usage, stdout);
            return 0;
        }
        return cairn_cmd_bench_quality(argc, argv);
    }
    if (argc >= 2 && !strcmp(argv[1], "rag-answers")) {
        if (argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
            fputs(cairn_cmd_bench_answers_usage, stdout);
            return 0;
        }
        return cairn_cmd_bench_answers(argc, argv);
    }
    fputs(cairn_cmd_bench_usage, stderr);
    return 2;
}
