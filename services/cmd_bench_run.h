/*
 * services/cmd_bench_run.h — what the scheduler's benchmarks (`cairn bench profile`,
 * `colocate`, `yield`) share: their small numeric helpers, and a harness that runs the
 * generation workers in this process and drives them with online and offline requests
 * (services/workers.h), measuring TTFT, the time between tokens and tokens/s. Internal to the
 * cairn CLI (hence the cairn__ names).
 *
 * Thread-safety: a cairn__bench_run is filled by the workers' callbacks under its mutex; the
 * rest is used by the benchmark's one thread.
 */
#ifndef CAIRN_SERVICES_CMD_BENCH_RUN_H
#define CAIRN_SERVICES_CMD_BENCH_RUN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "generation/sched.h"
#include "services/workers.h"

/* The model the scheduler benchmarks have always used (their recorded figures are on it). */
#define CAIRN__BENCH_MODEL "data/models/gemma-3-270m-q4_k_m.gguf"

/* The slo policy's online budget as a share of the TBT SLO, where no --online-budget says
 * otherwise: online prompt chunks may fill an iteration up to it, so the p99 TBT is set by
 * those iterations, and the margin left has to cover the predictor's error (14-16% at p90 on
 * the development VM) and the time between iterations. At 0.75 the p99 TBT sat at 190-203 ms
 * against a 200 ms SLO; at 0.6, 148-153 ms. */
#define CAIRN__BENCH_ONLINE_SHARE 0.6

/* ---- Small helpers ------------------------------------------------------------------------ */

/* xorshift64, not common/rand.h's splitmix64: the benchmarks' draws stay those of the runs
 * docs/BENCHMARKS.md records. */
static inline uint64_t cairn__bench_rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* A uniform double in [0, 1). */
static inline double cairn__bench_rng_unit(uint64_t *s)
{
    return (double)(cairn__bench_rng_next(s) >> 11) / 9007199254740992.0;
}

/* A uniform int in [lo, hi]. */
static inline int cairn__bench_rng_range(uint64_t *s, int lo, int hi)
{
    return lo + (int)(cairn__bench_rng_unit(s) * (hi - lo + 1));
}

/* qsort's comparison of doubles. */
int cairn__bench_cmp_double(const void *a, const void *b);

/* The p-quantile (nearest rank) of v[0..n), which it sorts; NAN when n is 0. */
double cairn__bench_pct(double *v, size_t n, double p);

/* Parses "a,b,c" (positive numbers) into out[0..cap). Returns how many, or -1 for a bad one. */
int cairn__bench_parse_list(const char *s, double *out, int cap);

/* Parses a flag's value: a whole number (strict) or a finite number. Return 0 or -1. */
int cairn__bench_int(const char *v, int *out);
int cairn__bench_num(const char *v, double *out);

/* Prints "cairn bench CMD: WHY" and the usage to stderr. Returns 2 (the usage exit status). */
int cairn__bench_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- The workers, in this process ---------------------------------------------------------- */

/* How a benchmark opens its workers, and what its requests are held to. */
typedef struct cairn__bench_env {
    const char *model;
    int threads;          /* compute threads (0: CPUs online) */
    int max_seqs;         /* sequences per engine; a quarter of them reserved for online work */
    int device;           /* -1 the CPU, N a GPU (cairn_engine_params.device) */
    const double *coef;   /* predictor coefficients to start from, or NULL */
    double online_budget_s; /* the slo policy's online budget (at least the budget) */
    double ttft_slo_s, tbt_slo_s; /* what counts as meeting the SLO */
    int max_batch_tokens; /* tokens in one forward pass (0: the engine's default) */
    double offline_occupancy; /* the slo policy's occupancy guard (0: the default) */
} cairn__bench_env;

/* Opens workers for a run: one engine, the policy and budget given, a KV cache with room for
 * every sequence's whole n_ctx (this measures scheduling, not KV pressure), queues long enough
 * never to refuse. Returns 0, or 1 after printing the error. */
int cairn__bench_open_workers(cairn_workers **w, const cairn__bench_env *env,
                              cairn_sched_policy pol, double budget_s, bool layer_yield,
                              int n_ctx);

/* Prompt texts: online ones of 16-128 tokens, offline ones of 300-500, made once with the
 * model's tokenizer from `seed`. */
typedef struct cairn__bench_prompts {
    char **on, **off;
    int n_on, n_off;
} cairn__bench_prompts;

void cairn__bench_prompts_make(cairn_workers *w, uint64_t seed, cairn__bench_prompts *pr);
void cairn__bench_prompts_free(cairn__bench_prompts *pr);

/* A text of about `tokens` tokens of the model's tokenizer, built from a fixed word list
 * (malloc'd; NULL when out of memory). */
char *cairn__bench_text_of_tokens(cairn_workers *w, int tokens, uint64_t *rng);

/* One measured run: requests in flight, and what they measured (under mu). */
typedef struct cairn__bench_run {
    cairn_workers *w;
    double ttft_slo_s, tbt_slo_s; /* what counts as meeting the SLO */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t t_start, t_end; /* the measured window */
    atomic_bool stop;
    int online_in_flight, offline_in_flight;
    double *ttft, *gaps;
    size_t n_ttft, cap_ttft, n_gaps, cap_gaps;
    int online_done, online_ok, online_rejected;
    int offline_done, offline_cut; /* offline requests finished, and ended with an error */
    long long online_tokens, offline_tokens; /* within the window */
    double last_offline_ttft_s; /* the latest offline request's time to its first token */
    FILE *requests;      /* a CSV row per finished online request (cairn__bench_spec), or NULL */
    const char *label;   /* the rows' first column */
} cairn__bench_run;

/* Initialises r for workers w (the window: t_start .. t_end, cairn_now_ns clock). */
void cairn__bench_run_init(cairn__bench_run *r, cairn_workers *w, double ttft_slo_s,
                           double tbt_slo_s, int64_t t_start, int64_t t_end);
/* Frees r's results and its lock; the workers' callbacks must be over. */
void cairn__bench_run_destroy(cairn__bench_run *r);

/* Submits a request (sampled at temperature 0.8, its seed from rng). Returns 0 or the
 * workers' refusal. */
int cairn__bench_submit(cairn__bench_run *r, const char *prompt, bool online, int max_tokens,
                        uint64_t *rng);

typedef struct {
    double online_rps; /* 0: no online arrivals; < 0: closed loop with -x in flight */
    double duration_s;
    int backlog;
    FILE *requests;    /* NULL, or where each finished online request's CSV row goes:
                        * label, submitted (s from the measured window's start; < 0: in the
                        * warm-up), TTFT (s; -1: none), its largest gap between tokens (s),
                        * tokens, online requests in flight at its submission (itself
                        * included), error (0/1); CAIRN__BENCH_REQUESTS_HEADER names them */
    const char *label; /* the rows' first column (e.g. "slo 0.75") */
} cairn__bench_spec;

#define CAIRN__BENCH_REQUESTS_HEADER \
    "label,submitted_s,ttft_s,max_gap_s,tokens,in_flight,error\n"

typedef struct {
    double ttft_p50, ttft_p99, tbt_p50, tbt_p99, attainment, offline_tps, online_tps, rps_done;
    int done, rejected, offline_done, offline_cut;
} cairn__bench_result;

/* A 5 s warm-up, then spec->duration_s measured: a standing offline backlog, and online
 * requests as a Poisson process (or a closed loop). Stops the workers at the end (the caller
 * closes them). */
void cairn__bench_run_once(cairn_workers *w, const cairn__bench_env *env,
                           const cairn__bench_prompts *pr, const cairn__bench_spec *spec,
                           uint64_t seed, cairn__bench_result *out);

/* Online capacity: requests/s completed with max_seqs online requests always in flight
 * (*tps, when not NULL: online tokens/s). */
double cairn__bench_capacity(cairn_workers *w, const cairn__bench_env *env,
                             const cairn__bench_prompts *pr, double duration, uint64_t seed,
                             double *tps);

void cairn__bench_sleep_until(int64_t t);

/* ---- The benchmarks (argv[0] "bench", argv[1] the benchmark; 0, 1 failure, 2 usage) ------- */

int cairn__bench_profile(int argc, char **argv);
int cairn__bench_colocate(int argc, char **argv);
int cairn__bench_yield(int argc, char **argv);

#endif
