/*
 * services/cmd_bench_profile.c — `cairn bench profile`: the latency predictor's accuracy on
 * the real model, and the SLO profiler's budget.
 *
 * It times engine iterations of random batch shapes (decode tokens of 0..10 sequences at
 * various context lengths, one or two prefill chunks of 1..384 tokens, some after an earlier
 * chunk of their prompt, some not finishing it, and mixes), each shape --repeat times. It fits
 * the latency predictor (generation/sched.h) on the first 70% of the shapes (each shape's
 * median timing) and reports its MAPE on every timed iteration of the other 30%, per
 * batch-shape bucket: as fitted (`mape`), and as cairnd runs it after loading the profile
 * (`mape_online`: refitted over a window of the latest iterations, with its speed factor; each
 * shape's timings predicted before the first of them joins), beside the machine's noise floor
 * (`noise_floor`, per bucket and overall: each held-out timing predicted by the median of its
 * shape's other timings; needs --repeat 3+) and the machine's own repeatability with the
 * engine out of it (sched_profile_machine: a fixed arithmetic loop and a fixed memory stream,
 * each timed 3 times after every shape). With an SLO it then searches the budget (the slo
 * policy at a fraction of the online capacity, budgets smallest first). The profile can be
 * stored (--out) and given to cairnd (sched.profile); --samples writes the timings for offline
 * analysis.
 *
 * The steps, in order: parse_args, open_engine, time_shapes (per draw: top_up_pool, the probes
 * and fixed loops, time_draw), write_samples, fit_predictor, report_accuracy (report_floor,
 * report_online, the machine's lines), find_budget, save_profile.
 */
#include "services/cmd_bench_run.h"

#include "common/clock.h"
#include "generation/engine.h"
#include "generation/model.h"
#include "services/slo.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

enum { PROF_MAX_DEC = 10, PROF_MAX_PRE = 2 };

/* One timed iteration: its shape, and what --samples writes besides (per-sequence detail). */
typedef struct {
    cairn_batch_shape shape;
    double seconds;
    int group, rep; /* the shape drawn, and which of its --repeat timings this is */
    int n_pre, pre_prefix[PROF_MAX_PRE], pre_chunk[PROF_MAX_PRE], pre_final[PROF_MAX_PRE];
    int n_dec, dec_ctx[PROF_MAX_DEC];
    double stall_s; /* CPU pressure during the iteration (cpu_stall_s), -1 if unknown */
    /* What the process did meanwhile (getrusage), to tell a slow iteration's cause: CPU
     * seconds, page faults (minor, major), context switches (voluntary, involuntary); and
     * when it started (seconds since the epoch, to line up with a GPU's clock log). */
    double at_s, cpu_s;
    long minflt, majflt, nvcsw, nivcsw;
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
    fprintf(f, "group,rep,seconds,stall_s,at_s,cpu_s,minflt,majflt,nvcsw,nivcsw,s_p,s_d,n_p,"
               "n_d,n_out,keys_p,keys_d,pre_prefix,pre_chunk,pre_final,dec_ctx\n");
    for (int i = 0; i < n; i++) {
        const sample *s = &smp[i];
        fprintf(f, "%d,%d,%.9f,%.6f,%.6f,%.6f,%ld,%ld,%ld,%ld,%d,%d,%d,%d,%d,%lld,%lld,",
                s->group, s->rep, s->seconds, s->stall_s, s->at_s, s->cpu_s, s->minflt,
                s->majflt, s->nvcsw, s->nivcsw, s->shape.s_p, s->shape.s_d, s->shape.n_p, s->shape.n_d,
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

/* Adds a sequence with a random prompt of n tokens; its id, or -1 when there is no slot. */
static int add_seq(cairn_engine *e, const cairn_gen_params *gp, int n, int32_t vocab,
                   uint64_t *rng)
{
    int32_t prompt[1024];
    for (int k = 0; k < n && k < 1024; k++)
        prompt[k] = 100 + (int32_t)(cairn__bench_rng_next(rng) % (uint64_t)(vocab - 200));
    int id;
    return cairn_engine_add(e, prompt, n < 1024 ? n : 1024, gp, &id, NULL) ? -1 : id;
}

/* The batch of one draw: how many decoding sequences, and its prefill chunks (each after an
 * earlier, untimed chunk of `prefix` tokens, with `extra` prompt tokens left after it). */
typedef struct {
    int want_dec, n_pre;
    int chunk[PROF_MAX_PRE], prefix[PROF_MAX_PRE], extra[PROF_MAX_PRE];
} draw;

/* Every SHORT_PREFILL_EVERY-th draw is a prefill of 1-64 tokens alone (an online prompt that
 * finds the engine idle). The random draws make one only when they draw no decoding sequence
 * and a short chunk (about 4% of them), and the fixed seed of the runs so far put none in the
 * held-out 30%, so that bucket went unmeasured (docs/BENCHMARKS.md, session 16). */
#define SHORT_PREFILL_EVERY 10

static draw draw_shape(uint64_t *rng, int max_batch_tokens, bool short_prefill)
{
    if (short_prefill) {
        draw d = {.n_pre = 1, .chunk = {cairn__bench_rng_range(rng, 1, 64)}};
        d.prefix[0] = cairn__bench_rng_unit(rng) < 0.3 ? cairn__bench_rng_range(rng, 16, 256) : 0;
        return d;
    }
    draw d = {.want_dec = cairn__bench_rng_range(rng, 0, PROF_MAX_DEC)};
    if (d.want_dec == 0 || cairn__bench_rng_unit(rng) < 0.6)
        d.n_pre = cairn__bench_rng_unit(rng) < 0.2 ? 2 : 1;
    int room = max_batch_tokens - d.want_dec;
    for (int k = 0; k < d.n_pre; k++) {
        int c = cairn__bench_rng_unit(rng) < 0.5 ? cairn__bench_rng_range(rng, 1, 64)
                                                 : cairn__bench_rng_range(rng, 65, 384);
        d.chunk[k] = c < room ? c : room;
        room -= d.chunk[k];
        d.prefix[k] = cairn__bench_rng_unit(rng) < 0.3 ? cairn__bench_rng_range(rng, 16, 256) : 0;
        d.extra[k] = cairn__bench_rng_unit(rng) < 0.3 ? cairn__bench_rng_range(rng, 1, 64) : 0;
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
    qsort(sorted, (size_t)n, sizeof *sorted, cairn__bench_cmp_double);
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
    qsort(o, (size_t)m, sizeof *o, cairn__bench_cmp_double);
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
    volatile double sink; /* keeps fixed_work's result, so the loop is not elided */
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

static double time_fixed_work(fixed_loop *fl)
{
    int64_t t0 = cairn_now_ns();
    fl->sink += fixed_work(fl);
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
        qsort(t, (size_t)n, sizeof *t, cairn__bench_cmp_double);
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


/* ---- The run's state ----------------------------------------------------------------------- */

/* The SLO profiler's search (--ttft-slo/--tbt-slo): the slo policy at `load` of the online
 * capacity, each budget for `duration` seconds. */
typedef struct {
    double ttft_ms, tbt_ms, load, duration;
    double budgets[16];
    int n_budgets, backlog, max_seqs;
} budget_search;

typedef struct profile_opts {
    const char *model, *out, *samples;
    int iters, threads, repeat, warmup, device;
    bool warmup_given; /* else the backend's cold steps */
    bool search; /* an SLO was given: search the budget */
    budget_search bs;
} profile_opts;

/* The engine's sequences: the decoding pool, two prefilling ones and the probes'. */
enum { MAX_SEQS = PROF_MAX_DEC + PROF_MAX_PRE + PROBE_SEQS, CTX = 768 };

typedef struct profile_ctx {
    const profile_opts *o;
    cairn_model *m;
    cairn_engine *e;
    int max_batch_tokens;
    int32_t vocab;
    cairn_gen_params gp;
    uint64_t rng;                       /* the draws */
    int dec[PROF_MAX_DEC], n_dec;       /* the pool of decoding sequences */
    sample *smp;                        /* o->iters timed iterations */
    int n, n_groups;                    /* timed so far; shapes drawn */
    probe probes[N_PROBES];
    uint64_t probe_rng;                 /* the probes' own: the draws stay those of before */
    uint64_t *mem;                      /* the memory loop's buffer */
    fixed_loop loops[2];                /* arithmetic, memory */
    cairn_backend_traits traits;        /* the engine backend's, for the predictors */
    int warmup;                         /* untimed steps of each shape: --warmup, or traits' */
    cairn_predictor *p;                 /* fitted on the first g_fit shapes */
    int g_fit, n_fit;
    double coef[CAIRN_PREDICTOR_FEATURES];
    cairn_error err;
} profile_ctx;

/* ---- Steps ---------------------------------------------------------------------------------- */

static int parse_args(int argc, char **argv, profile_opts *o)
{
    const char *budgets = "50,100,150,200,300,400";
    *o = (profile_opts){.model = CAIRN__BENCH_MODEL, .iters = 600, .repeat = 3, .device = -1,
                        .bs = {.load = 0.5, .duration = 30, .backlog = 8, .max_seqs = 12}};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!v) return cairn__bench_usage_error("profile", "%s needs a value", a);
        i++;
        if (!strcmp(a, "-m")) o->model = v;
        else if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--samples")) o->samples = v;
        else if (!strcmp(a, "--iterations")) bad = cairn__bench_int(v, &o->iters);
        else if (!strcmp(a, "--repeat")) bad = cairn__bench_int(v, &o->repeat);
        else if (!strcmp(a, "--warmup")) {
            o->warmup_given = true;
            bad = cairn__bench_int(v, &o->warmup);
        }
        else if (!strcmp(a, "--threads")) bad = cairn__bench_int(v, &o->threads);
        else if (!strcmp(a, "--ttft-slo")) bad = cairn__bench_num(v, &o->bs.ttft_ms);
        else if (!strcmp(a, "--tbt-slo")) bad = cairn__bench_num(v, &o->bs.tbt_ms);
        else if (!strcmp(a, "--load")) bad = cairn__bench_num(v, &o->bs.load);
        else if (!strcmp(a, "--budgets")) budgets = v;
        else if (!strcmp(a, "--duration")) bad = cairn__bench_num(v, &o->bs.duration);
        else if (!strcmp(a, "--backlog")) bad = cairn__bench_int(v, &o->bs.backlog);
        else if (!strcmp(a, "--max-seqs")) bad = cairn__bench_int(v, &o->bs.max_seqs);
        else if (!strcmp(a, "--device")) bad = cairn__bench_int(v, &o->device);
        else return cairn__bench_usage_error("profile", "unknown option '%s'", a);
        if (bad) return cairn__bench_usage_error("profile", "%s '%s' is not a number", a, v);
    }
    o->bs.n_budgets = cairn__bench_parse_list(budgets, o->bs.budgets, 16);
    o->search = o->bs.ttft_ms > 0 || o->bs.tbt_ms > 0;
    if (o->repeat < 1 || o->repeat > 9)
        return cairn__bench_usage_error("profile", "--repeat %d is outside 1..9", o->repeat);
    /* Not given: the backend's cold steps (open_engine), which leave the timed steps of a
     * shape at the steady cost a server's steps of a shape it has seen have. */
    if (o->warmup_given && (o->warmup < 0 || o->warmup > 9))
        return cairn__bench_usage_error("profile", "--warmup %d is outside 0..9", o->warmup);
    if (o->iters < 50 * o->repeat || o->iters > 100000)
        return cairn__bench_usage_error("profile", "--iterations %d is outside %d..100000",
                                        o->iters, 50 * o->repeat);
    if (o->threads < 0)
        return cairn__bench_usage_error("profile", "--threads %d is negative", o->threads);
    if (o->device < -1)
        return cairn__bench_usage_error("profile", "--device %d: -1 (the CPU) or a GPU index",
                                        o->device);
    if (o->bs.n_budgets <= 0)
        return cairn__bench_usage_error("profile", "--budgets '%s' is not a list of positive "
                                        "numbers", budgets);
    if (o->search && !(o->bs.ttft_ms > 0 && o->bs.tbt_ms > 0))
        return cairn__bench_usage_error("profile", "the budget search needs both --ttft-slo "
                                        "and --tbt-slo, positive");
    if (!(o->bs.load > 0) || !(o->bs.duration >= 5) || o->bs.backlog < 0)
        return cairn__bench_usage_error("profile", "--load must be positive, --duration at "
                                        "least 5 s, --backlog at least 0");
    if (o->bs.max_seqs < 2 || o->bs.max_seqs > 64)
        return cairn__bench_usage_error("profile", "--max-seqs %d is outside 2..64",
                                        o->bs.max_seqs);
    return 0;
}

/* Opens the model and an engine with room for the pool, the prefilling sequences and the
 * probes, and the buffers of the timings. Returns 0 or 1 (c->err says why). */
static int open_engine(profile_ctx *c)
{
    const profile_opts *o = c->o;
    cairn_engine_params ep = cairn_engine_default_params();
    ep.n_threads = o->threads;
    ep.device = o->device;
    ep.max_seqs = MAX_SEQS;
    ep.n_ctx = CTX;
    ep.kv_blocks = MAX_SEQS * CTX / ep.block_tokens;
    c->max_batch_tokens = ep.max_batch_tokens;
    if (cairn_model_open(&c->m, o->model, &c->err) ||
        cairn_engine_open(&c->e, c->m, &ep, &c->err))
        return 1;
    c->vocab = cairn_model_hparams_of(c->m)->n_vocab;
    cairn_backend *be = cairn_engine_backend(c->e);
    be->i->traits(be, &c->traits);
    c->warmup = c->o->warmup_given ? c->o->warmup : c->traits.cold_steps;
    c->gp = cairn_gen_default_params();
    c->gp.max_tokens = CTX;
    c->rng = 0x9e3779b97f4a7c15ull;
    c->probe_rng = 0x2545f4914f6cdd1dull;
    for (int k = 0; k < N_PROBES; k++)
        for (int i = 0; i < PROBE_MAX_DEC; i++)
            c->probes[k].ids[i] = -1;
    c->smp = calloc((size_t)o->iters, sizeof *c->smp);
    /* The fixed loops are calibrated after the first draw, once the engine has run. */
    const int machine_cap = (o->iters + 1) * MACHINE_REPEAT;
    /* Written, not calloc'd: untouched pages all map the kernel's one zero page, which a read
     * stream would find in the cache. */
    c->mem = malloc(MACHINE_MEM_BYTES);
    for (size_t i = 0; c->mem && i < MACHINE_MEM_BYTES / sizeof *c->mem; i++)
        c->mem[i] = i * 0x9e3779b97f4a7c15ull;
    c->loops[0] = (fixed_loop){.name = "arithmetic", .cap = machine_cap};
    c->loops[1] = (fixed_loop){.name = "memory", .mem = c->mem, .cap = machine_cap};
    for (int k = 0; k < 2; k++)
        c->loops[k].t = malloc(sizeof(double) * (size_t)machine_cap);
    if (!c->smp || !c->mem || !c->loops[0].t || !c->loops[1].t) {
        snprintf(c->err.msg, sizeof c->err.msg, "out of memory");
        return 1;
    }
    return 0;
}

/* Retires long sequences from the decoding pool and tops it up to the draw's count (their
 * prompts prefilled untimed). Returns 0 or 1. */
static int top_up_pool(profile_ctx *c, const draw *d)
{
    for (int i = 0; i < c->n_dec;) {
        cairn_seq_info info;
        cairn_engine_seq_info(c->e, c->dec[i], &info);
        if (info.finish != CAIRN_FINISH_NONE || info.n_prefilled + info.n_generated > 640) {
            cairn_engine_release(c->e, c->dec[i]);
            c->dec[i] = c->dec[--c->n_dec];
        } else {
            i++;
        }
    }
    while (c->n_dec < d->want_dec) {
        int id = add_seq(c->e, &c->gp, cairn__bench_rng_range(&c->rng, 8, 400), c->vocab,
                         &c->rng);
        if (id < 0) break;
        cairn_step_item one = {id, 512};
        for (cairn_seq_info info;;) {
            cairn_engine_seq_info(c->e, id, &info);
            if (!info.prefilling) break;
            if (cairn_engine_step(c->e, &one, 1, &c->err)) return 1;
        }
        c->dec[c->n_dec++] = id;
    }
    return 0;
}

static double tv_s(struct timeval t) { return (double)t.tv_sec + t.tv_usec / 1e6; }

/* Times draw d once (the rep-th time, of shape group g; rep < 0: a warm-up step, run but not
 * kept): the pool's decoding sequences (a token further on each time) and fresh prefilling
 * ones. Returns 0 or 1. */
static int time_draw(profile_ctx *c, const draw *d, int g, int rep)
{
    sample *s = &c->smp[c->n];
    *s = (sample){.group = g, .rep = rep};
    cairn_step_item items[MAX_SEQS];
    int n_items = 0, pre_id[PROF_MAX_PRE], rc = 0;
    for (int i = 0; i < c->n_dec && i < d->want_dec; i++) {
        cairn_seq_info info;
        cairn_engine_seq_info(c->e, c->dec[i], &info);
        if (info.finish != CAIRN_FINISH_NONE) continue;
        int ctx = info.n_prefilled + info.n_generated;
        items[n_items++] = (cairn_step_item){c->dec[i], 1};
        cairn_batch_shape_add(&s->shape, false, ctx, 1, true);
        s->dec_ctx[s->n_dec++] = ctx;
    }
    for (int k = 0; k < d->n_pre; k++) {
        pre_id[k] = add_seq(c->e, &c->gp, d->prefix[k] + d->chunk[k] + d->extra[k], c->vocab,
                            &c->rng);
        if (pre_id[k] >= 0 && d->prefix[k]) { /* an earlier chunk of the prompt, untimed */
            cairn_step_item first = {pre_id[k], d->prefix[k]};
            rc = cairn_engine_step(c->e, &first, 1, &c->err) ? 1 : 0;
        }
        if (pre_id[k] < 0) continue;
        items[n_items++] = (cairn_step_item){pre_id[k], d->chunk[k]};
        cairn_batch_shape_add(&s->shape, true, d->prefix[k], d->chunk[k], d->extra[k] == 0);
        s->pre_prefix[s->n_pre] = d->prefix[k];
        s->pre_chunk[s->n_pre] = d->chunk[k];
        s->pre_final[s->n_pre++] = d->extra[k] == 0;
    }
    if (!rc && n_items > 0) {
        double st0 = cpu_stall_s();
        struct rusage u0, u1;
        const int64_t at = cairn_wall_ns();
        getrusage(RUSAGE_SELF, &u0);
        int64_t t0 = cairn_now_ns();
        rc = cairn_engine_step(c->e, items, n_items, &c->err) ? 1 : 0;
        s->seconds = (double)(cairn_now_ns() - t0) / 1e9;
        getrusage(RUSAGE_SELF, &u1);
        s->at_s = (double)at / 1e9;
        s->cpu_s = tv_s(u1.ru_utime) + tv_s(u1.ru_stime) - tv_s(u0.ru_utime) - tv_s(u0.ru_stime);
        s->minflt = u1.ru_minflt - u0.ru_minflt, s->majflt = u1.ru_majflt - u0.ru_majflt;
        s->nvcsw = u1.ru_nvcsw - u0.ru_nvcsw, s->nivcsw = u1.ru_nivcsw - u0.ru_nivcsw;
        double st1 = cpu_stall_s();
        s->stall_s = st0 >= 0 && st1 >= 0 ? st1 - st0 : -1;
        if (!rc && rep >= 0 && c->n++ % 50 == 0) fprintf(stderr, ".");
    } else if (!rc && c->n_dec == 0) {
        rc = 1; /* cannot make progress */
        snprintf(c->err.msg, sizeof c->err.msg, "no sequence could be added");
    }
    /* The last timing's finished prompts join the decoding pool while it has room. */
    for (int k = 0; k < d->n_pre; k++) {
        if (pre_id[k] < 0) continue;
        if (rep == c->o->repeat - 1 && !d->extra[k] && c->n_dec < PROF_MAX_DEC)
            c->dec[c->n_dec++] = pre_id[k];
        else
            cairn_engine_release(c->e, pre_id[k]);
    }
    return rc;
}

/* Draws shapes and times each --repeat times until o->iters timings; every PROBE_EVERY draws
 * the probes, after every draw the fixed loops. Returns 0 or 1. */
static int time_shapes(profile_ctx *c)
{
    int rc = 0;
    fprintf(stderr, "profiling %d iterations", c->o->iters);
    while (!rc && c->n < c->o->iters) {
        int g = c->n_groups++;
        draw d = draw_shape(&c->rng, c->max_batch_tokens,
                            g % SHORT_PREFILL_EVERY == SHORT_PREFILL_EVERY - 1);
        rc = top_up_pool(c, &d);
        for (int k = 0; !rc && g % PROBE_EVERY == 0 && k < N_PROBES; k++)
            rc = probe_time(c->e, &c->gp, c->vocab, &c->probe_rng, &c->probes[k], k, &c->err);
        for (int k = 0; !rc && k < 2; k++)
            fixed_loop_time(&c->loops[k]);
        for (int rep = -c->warmup; !rc && rep < c->o->repeat && c->n < c->o->iters; rep++)
            rc = time_draw(c, &d, g, rep);
    }
    fprintf(stderr, "\n");
    return rc;
}

/* Fits on the draws of the first 70% (each draw's median timing: repeating a shape filters
 * out the iterations that another process slowed down). Returns 0 or 1. */
static int fit_predictor(profile_ctx *c)
{
    const sample *smp = c->smp;
    const int n = c->n;
    c->g_fit = c->n_groups * 7 / 10;
    if (cairn_predictor_new(&c->p, c->g_fit > 16 ? c->g_fit : 16, &c->err) != 0) return 1;
    cairn_predictor_set_refit(c->p, 0);
    cairn_predictor_set_traits(c->p, &c->traits);
    for (int i = 0; i < n && smp[i].group < c->g_fit;) {
        int j = i;
        double t[9];
        while (j < n && smp[j].group == smp[i].group)
            t[j - i] = smp[j].seconds, j++;
        qsort(t, (size_t)(j - i), sizeof *t, cairn__bench_cmp_double);
        double med = t[(j - i - 1) / 2];
        for (int k = i; k < j; k++)
            if (smp[k].seconds == med) {
                cairn_predictor_observe(c->p, &smp[k].shape, med);
                break;
            }
        c->n_fit++;
        i = j;
    }
    if (cairn_predictor_fit(c->p, &c->err) != 0) return 1;
    cairn_predictor_coefficients(c->p, c->coef);
    return 0;
}

/* Per-bucket sums of absolute percentage errors, and their counts. */
typedef struct {
    double sum[N_BUCKETS];
    int cnt[N_BUCKETS];
} bucket_errors;

/* The noise floor: each held-out timing predicted by the median of its shape's other timings
 * (no model at all). A model cannot beat the machine's own repeatability. */
static void report_floor(const profile_ctx *c, bucket_errors *fl)
{
    const sample *smp = c->smp;
    for (int i = 0, n = c->n; i < n;) {
        int j = i;
        while (j < n && smp[j].group == smp[i].group)
            j++;
        if (smp[i].group < c->g_fit || j - i < 3) { /* fitted, or too few timings */
            i = j;
            continue;
        }
        double t[9];
        for (int o = i; o < j; o++)
            t[o - i] = smp[o].seconds;
        for (int k = i; k < j; k++) {
            double med = median_of_others(t, j - i, k - i);
            int b = bucket_of(&smp[k].shape);
            fl->sum[b] += fabs(med - smp[k].seconds) / smp[k].seconds, fl->cnt[b]++;
        }
        i = j;
    }
}

/* The predictor as cairnd runs it after loading this profile: these coefficients, a window of
 * its latest iterations (cairn_workers_params) refitted every 32 towards them, a speed factor
 * following the machine's drift, and the held-out iterations joining in time order. Each
 * shape's timings are all predicted before the first of them joins, so that neither the
 * refits nor the speed factor have seen the shape. */
static void report_online(const profile_ctx *c, bucket_errors *on)
{
    const sample *smp = c->smp;
    cairn_predictor *q = NULL;
    if (cairn_predictor_new(&q, cairn_workers_default_params().predictor_window, NULL) != 0)
        return;
    cairn_predictor_set_traits(q, &c->traits);
    cairn_predictor_set_coefficients(q, c->coef);
    for (int i = 0, j, n = c->n; i < n; i = j) {
        for (j = i; j < n && smp[j].group == smp[i].group; j++) {
            if (smp[j].group < c->g_fit) continue;
            double pr = cairn_predictor_predict(q, &smp[j].shape);
            int k = bucket_of(&smp[j].shape);
            on->sum[k] += fabs(pr - smp[j].seconds) / smp[j].seconds, on->cnt[k]++;
        }
        for (int o = i; o < j && smp[o].group >= c->g_fit; o++)
            cairn_predictor_observe(q, &smp[o].shape, smp[o].seconds);
    }
    cairn_predictor_free(q);
}

/* Prints the predictor's accuracy per bucket and overall, beside the noise floor, the probes'
 * spread, the fixed loops and the CPU pressure, and the coefficients. */
static void report_accuracy(const profile_ctx *c)
{
    const sample *smp = c->smp;
    const int n = c->n;
    bucket_errors fit = {0}, fl = {0}, on = {0};
    double all = 0;
    int n_all = 0;
    double *ape = malloc(sizeof(double) * (size_t)n);
    for (int i = 0; i < n; i++) {
        if (smp[i].group < c->g_fit) continue;
        double pr = cairn_predictor_predict(c->p, &smp[i].shape);
        double e = fabs(pr - smp[i].seconds) / smp[i].seconds;
        int k = bucket_of(&smp[i].shape);
        fit.sum[k] += e, fit.cnt[k]++;
        all += e;
        if (ape) ape[n_all] = e;
        n_all++;
    }
    report_floor(c, &fl);
    double spread_sum = 0;
    int spread_n = 0;
    for (int k = 0; k < N_PROBES; k++) {
        double med, sp = spread(c->probes[k].t, c->probes[k].n_t, &med);
        printf("{\"bench\":\"sched_profile_probe\",\"decode\":%d,\"timings\":%d,"
               "\"median_ms\":%.2f,\"spread\":%.4f}\n",
               PROBE_DEC[k], c->probes[k].n_t, med * 1e3, sp);
        spread_sum += sp * c->probes[k].n_t, spread_n += c->probes[k].n_t;
    }
    for (int k = 0; k < 2; k++)
        fixed_loop_report(&c->loops[k]);
    report_online(c, &on);
    int o_all = 0, floor_n = 0;
    double o_sum = 0, floor_sum = 0;
    for (int k = 0; k < N_BUCKETS; k++) {
        printf("{\"bench\":\"sched_profile\",\"bucket\":\"%s\",\"held_out\":%d,"
               "\"mape\":%.4f,\"mape_online\":%.4f,\"noise_floor\":%.4f}\n",
               BUCKETS[k], fit.cnt[k], fit.cnt[k] ? fit.sum[k] / fit.cnt[k] : 0.0,
               on.cnt[k] ? on.sum[k] / on.cnt[k] : 0.0, fl.cnt[k] ? fl.sum[k] / fl.cnt[k] : 0.0);
        o_all += on.cnt[k], o_sum += on.sum[k];
        floor_n += fl.cnt[k], floor_sum += fl.sum[k];
    }
    /* How much of the timed time other tasks waited for a CPU: on a busy machine the timings,
     * hence the MAPE, carry the other processes' noise. */
    double stall = 0, timed = 0;
    for (int i = 0; i < n; i++)
        stall += smp[i].stall_s > 0 ? smp[i].stall_s : 0, timed += smp[i].seconds;
    const double stall_frac = smp[0].stall_s >= 0 && timed > 0 ? stall / timed : -1;
    char stall_s[32] = "null"; /* no PSI on this machine */
    if (stall_frac >= 0) snprintf(stall_s, sizeof stall_s, "%.4f", stall_frac);
    printf("{\"bench\":\"sched_profile\",\"bucket\":\"all\",\"held_out\":%d,\"mape\":%.4f,"
           "\"mape_online\":%.4f,\"noise_floor\":%.4f,\"noise_floor_spread\":%.4f,"
           "\"ape_p90\":%.4f,\"fit_draws\":%d,\"repeat\":%d,\"warmup\":%d,"
           "\"cpu_stall\":%s,\"coefficients\":[",
           n_all, n_all ? all / n_all : 0.0, o_all ? o_sum / o_all : 0.0,
           floor_n ? floor_sum / floor_n : 0.0, spread_n ? spread_sum / spread_n : 0.0,
           ape ? cairn__bench_pct(ape, (size_t)n_all, 0.9) : 0.0, c->n_fit, c->o->repeat,
           c->warmup, stall_s);
    if (stall_frac > 0.01)
        fprintf(stderr, "cairn bench profile: other tasks waited for a CPU during %.0f%% of "
                        "the timed iterations (Linux PSI): the machine was not idle and the "
                        "figures carry that noise\n", 100 * stall_frac);
    for (int j = 0; j < CAIRN_PREDICTOR_FEATURES; j++)
        printf("%s%.6g", j ? "," : "", c->coef[j]);
    printf("],\"features\":[");
    for (int j = 0; j < CAIRN_PREDICTOR_FEATURES; j++)
        printf("%s\"%s\"", j ? "," : "", cairn_predictor_feature_names[j]);
    printf("]}\n");
    free(ape);
}

/* The SLO profiler's search (see the usage text). Returns the budget in seconds, or -1. */
static double find_budget(const profile_opts *o, const double *coef)
{
    const budget_search *bs = &o->bs;
    cairn__bench_env env = {.model = o->model, .threads = o->threads, .max_seqs = bs->max_seqs,
                            .device = o->device, .coef = coef,
                            .online_budget_s = CAIRN__BENCH_ONLINE_SHARE * bs->tbt_ms / 1e3,
                            .ttft_slo_s = bs->ttft_ms / 1e3, .tbt_slo_s = bs->tbt_ms / 1e3};
    cairn_workers *w = NULL;
    if (cairn__bench_open_workers(&w, &env, CAIRN_SCHED_ONLINE_ONLY, 0.1, true, 1024)) return -1;
    cairn__bench_prompts pr;
    cairn__bench_prompts_make(w, 1, &pr);
    double capacity = cairn__bench_capacity(w, &env, &pr, bs->duration / 2, 1, NULL);
    cairn_workers_close(w);
    /* From the smallest budget up, stopping at the first that misses: on a noisy machine a
     * larger budget can pass by luck after a smaller one failed, and is not to be trusted. */
    double budgets[16];
    memcpy(budgets, bs->budgets, sizeof budgets);
    qsort(budgets, (size_t)bs->n_budgets, sizeof *budgets, cairn__bench_cmp_double);
    double best = -1;
    for (int i = 0; i < bs->n_budgets; i++) {
        double b = budgets[i] / 1e3;
        if (cairn__bench_open_workers(&w, &env, CAIRN_SCHED_SLO, b, true, 1024)) break;
        cairn__bench_spec rs = {.online_rps = bs->load * capacity, .duration_s = bs->duration,
                                .backlog = bs->backlog};
        cairn__bench_result rr;
        cairn__bench_run_once(w, &env, &pr, &rs, 7, &rr);
        cairn_workers_close(w);
        bool met = rr.ttft_p99 <= env.ttft_slo_s && rr.tbt_p99 <= env.tbt_slo_s;
        printf("{\"bench\":\"sched_profile_trial\",\"budget_s\":%.3f,\"online_rps\":%.4f,"
               "\"ttft_p99\":%.3f,\"tbt_p99_ms\":%.1f,\"offline_tps\":%.2f,\"slo_met\":%s}\n",
               b, rs.online_rps, rr.ttft_p99, rr.tbt_p99 * 1e3, rr.offline_tps,
               met ? "true" : "false");
        fflush(stdout);
        if (!met) break;
        best = b;
    }
    cairn__bench_prompts_free(&pr);
    return best;
}

/* --out: the coefficients, the backend and device they were measured on, and the budget the
 * search chose with its SLO. A directory gets the file cairnd looks for there when it is its
 * data dir's profiles/ (cairn_slo_profile_path). Returns 0 or 1. */
static int save_profile(profile_ctx *c, double budget)
{
    const profile_opts *o = c->o;
    cairn_sched_profile prof = {.budget_s = budget > 0 ? budget : 0};
    if (budget > 0) prof.ttft_slo_s = o->bs.ttft_ms / 1e3, prof.tbt_slo_s = o->bs.tbt_ms / 1e3;
    memcpy(prof.coef, c->coef, sizeof prof.coef);
    char device[256], path[4096];
    if (cairn_backend_identify(o->device, prof.backend, sizeof prof.backend, device,
                               sizeof device) != 0) {
        fprintf(stderr, "cairn bench profile: device %d: %s\n", o->device, device);
        return 1;
    }
    snprintf(prof.device, sizeof prof.device, "%.*s", (int)sizeof prof.device - 1, device);
    const char *out = o->out;
    struct stat st;
    if (stat(out, &st) == 0 && S_ISDIR(st.st_mode)) {
        /* DIR/profiles/NAME is what cairnd finds; here DIR is the profiles folder itself. */
        char name[256], full[4096];
        const char *base = strrchr(o->model, '/') ? strrchr(o->model, '/') + 1 : o->model;
        size_t n = strlen(base);
        if (n > 5 && !strcmp(base + n - 5, ".gguf")) n -= 5;
        snprintf(name, sizeof name, "%.*s", (int)n, base);
        if (cairn_slo_profile_path(".", name, prof.backend, device, full, sizeof full) != 0) {
            fprintf(stderr, "cairn bench profile: a path too long\n");
            return 1;
        }
        snprintf(path, sizeof path, "%s/%s", out, strrchr(full, '/') + 1);
        out = path;
    }
    if (cairn_sched_profile_save(out, &prof, &c->err) != 0) {
        fprintf(stderr, "cairn bench profile: %s\n", c->err.msg);
        return 1;
    }
    printf("{\"bench\":\"sched_profile_saved\",\"path\":\"%s\",\"backend\":\"%s\","
           "\"device\":\"%s\"}\n", out, prof.backend, prof.device);
    return 0;
}

/* The budget search (with an SLO) and --out. Returns 0 or 1. */
static int search_and_save(profile_ctx *c)
{
    const profile_opts *o = c->o;
    int rc = 0;
    double budget = o->search ? find_budget(o, c->coef) : 0;
    if (o->search && budget <= 0) {
        fprintf(stderr, "cairn bench profile: no budget met the SLO (TTFT %.0f ms, TBT %.0f "
                        "ms) at load %.2f\n",
                o->bs.ttft_ms, o->bs.tbt_ms, o->bs.load);
        rc = 1;
    }
    if (o->search && budget > 0)
        printf("{\"bench\":\"sched_profile_budget\",\"budget_s\":%.3f,\"ttft_slo_ms\":%.0f,"
               "\"tbt_slo_ms\":%.0f,\"load\":%.2f}\n",
               budget, o->bs.ttft_ms, o->bs.tbt_ms, o->bs.load);
    if (o->out && !rc) rc = save_profile(c, budget);
    return rc;
}

static void profile_close(profile_ctx *c)
{
    cairn_predictor_free(c->p);
    free(c->smp);
    free(c->loops[0].t);
    free(c->loops[1].t);
    free(c->mem);
    cairn_engine_close(c->e);
    cairn_model_close(c->m);
}

int cairn__bench_profile(int argc, char **argv)
{
    profile_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc;
    profile_ctx c = {.o = &o};
    rc = open_engine(&c);
    if (!rc) rc = time_shapes(&c);
    if (rc) fprintf(stderr, "cairn bench profile: %s\n", c.err.msg);
    if (!rc && o.samples && write_samples(o.samples, c.smp, c.n) != 0) {
        fprintf(stderr, "cairn bench profile: %s: %s\n", o.samples, strerror(errno));
        rc = 1;
    }
    if (!rc && fit_predictor(&c) != 0) {
        fprintf(stderr, "cairn bench profile: %s\n", c.err.msg);
        rc = 1;
    }
    if (!rc) {
        report_accuracy(&c);
        /* The budget search loads the model in its own workers. */
        cairn_engine_close(c.e);
        cairn_model_close(c.m);
        c.e = NULL, c.m = NULL;
        rc = search_and_save(&c);
    }
    profile_close(&c);
    return rc;
}
