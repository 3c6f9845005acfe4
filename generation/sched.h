/*
 * generation/sched.h — the iteration scheduler: which sequences run in the next forward pass.
 *
 * Two request classes share one engine: online (a user waits: TTFT and the time between tokens,
 * TBT, are what count) and offline (summarization jobs: only throughput counts). After HyGen
 * (Sun et al. 2025, "HyGen: Efficient LLM Inference by Hybrid Online and Offline Request
 * Scheduling"), the `slo` policy builds each iteration as:
 *   1. every online sequence that is decoding gets its token;
 *   2. online prefill advances in chunks, each as large as the online budget allows (at least
 *      min_chunk tokens, so a prompt always advances): online_budget_s, larger than the offline
 *      budget, bounds the iteration that running online sequences wait for (their TBT) while
 *      letting prompts through fast (their TTFT);
 *   3. offline work is added while the PREDICTED iteration latency stays within the budget:
 *      decode tokens first (cheap, and they finish jobs), then prefill chunks;
 *   4. starvation guard: an offline sequence that has not advanced for starve_ns is served as if
 *      it were online (one decode token, or a min_chunk prefill chunk) whatever the budget.
 * An iteration is never empty while sequences exist: with no online work and a budget too small
 * for anything, the oldest offline sequence still gets a token or a min_chunk chunk.
 * Two policies for comparison: `online-only` (offline work runs only when no online sequence
 * exists) and `fcfs-hybrid` (one first-come-first-served order for both classes, decode
 * tokens first, then prefill chunks up to max_batch_tokens: the plain continuous batching of
 * vLLM-style servers).
 *
 * The latency predictor is a linear model of an iteration's time over its batch composition
 * (DESIGN "Scheduler"): features 1, S_p (prefill tokens), S_d (decode tokens), S_p^2, N_p and
 * N_d (prefilling and decoding sequences), C (summed context length of the batch's sequences).
 * It is fitted by weighted least squares (weights 1/t^2, so that it minimises relative error:
 * a 10 ms decode iteration matters as much as a 1 s prefill) over a window of measured
 * iterations, and refitted as new ones arrive. Its MAPE is measured on each iteration BEFORE
 * the iteration is added to the fit, so it is an out-of-sample figure.
 *
 * Thread-safety: a predictor and the planning function are used by one worker thread;
 * cairn_predictor_mape may be read from others (it is a snapshot behind the predictor's lock).
 */
#ifndef CAIRN_GENERATION_SCHED_H
#define CAIRN_GENERATION_SCHED_H

#include <stdint.h>

#include "common/error.h"
#include "generation/engine.h"

/* ---- Batch shapes and the latency predictor ---------------------------------------------- */

typedef struct {
    int s_p;     /* prefill tokens */
    int s_d;     /* decode tokens */
    int n_p;     /* sequences prefilling */
    int n_d;     /* sequences decoding */
    int64_t ctx; /* summed context length (tokens already in the KV cache) of those sequences */
} cairn_batch_shape;

#define CAIRN_PREDICTOR_FEATURES 7

typedef struct cairn_predictor cairn_predictor;

/* A predictor fitting over the last `window` iterations (>= 16). Returns 0, CAIRN_EINVAL or
 * CAIRN_ENOMEM. Until it has been fitted (or loaded), predictions are 0. */
int cairn_predictor_new(cairn_predictor **out, int window, cairn_error *err);
void cairn_predictor_free(cairn_predictor *p); /* NULL is a no-op */

/* Predicted seconds for an iteration of this shape (0 when not fitted). Never negative. */
double cairn_predictor_predict(const cairn_predictor *p, const cairn_batch_shape *s);

/*
 * Records a measured iteration. When the predictor is fitted, the absolute percentage error of
 * its prediction for s is added to the running MAPE first. Every `refit_every` observations
 * (cairn_predictor_set_refit, default 32) the model is refitted over the window. Shapes with
 * no tokens and non-positive or non-finite times are ignored.
 */
void cairn_predictor_observe(cairn_predictor *p, const cairn_batch_shape *s, double seconds);

/* Refits now over the window. Returns 0, or CAIRN_ESTATE when the window holds fewer than
 * 2 x features iterations or the system is singular even with a small ridge term. */
int cairn_predictor_fit(cairn_predictor *p, cairn_error *err);

void cairn_predictor_set_refit(cairn_predictor *p, int every); /* 0: never refit on its own */

/* Mean absolute percentage error (a fraction: 0.05 = 5%) of the out-of-sample predictions of
 * the last `window` observations, and how many there were (*n may be NULL). 0 when none. */
double cairn_predictor_mape(const cairn_predictor *p, int *n);

/* The fitted coefficients (seconds per unit of each feature, in the order above), and whether
 * the predictor is fitted. */
int cairn_predictor_coefficients(const cairn_predictor *p, double out[CAIRN_PREDICTOR_FEATURES]);

/* Sets the coefficients (e.g. from a stored profile); the predictor counts as fitted. */
void cairn_predictor_set_coefficients(cairn_predictor *p,
                                      const double c[CAIRN_PREDICTOR_FEATURES]);

/* ---- Planning an iteration ----------------------------------------------------------------- */

typedef enum {
    CAIRN_SCHED_SLO = 0,
    CAIRN_SCHED_ONLINE_ONLY,
    CAIRN_SCHED_FCFS_HYBRID,
} cairn_sched_policy;

/* "slo", "online-only", "fcfs-hybrid". Returns 0 or CAIRN_EINVAL naming the choices. */
int cairn_sched_policy_parse(const char *s, cairn_sched_policy *out, cairn_error *err);
const char *cairn_sched_policy_name(cairn_sched_policy p);

typedef struct {
    cairn_sched_policy policy;
    int max_batch_tokens; /* tokens in one forward pass (the engine's limit) */
    double budget_s;      /* slo: predicted iteration latency offline work may fill up to (s) */
    double online_budget_s; /* slo: the same for online prefill chunks (s); >= budget_s */
    int min_chunk;        /* smallest prefill chunk (tokens) worth scheduling */
    int64_t starve_ns;    /* slo: offline sequences idle this long are served regardless */
} cairn_sched_params;

/* slo, 512 tokens, budget 0.1 s, online budget 0.2 s, min_chunk 16, starve 2 s. */
cairn_sched_params cairn_sched_default_params(void);

/* What the planner knows of a running sequence. */
typedef struct {
    int id;            /* engine sequence id */
    int online;        /* 1 online, 0 offline */
    int prefilling;    /* prompt not fully processed */
    int remaining;     /* prompt tokens still to prefill (when prefilling) */
    int ctx;           /* tokens in the KV cache now */
    int64_t t_arrival; /* when it was submitted (ns, cairn_now_ns clock): FCFS order */
    int64_t t_served;  /* when it last advanced (ns); 0: never */
} cairn_sched_seq;

/*
 * Chooses the next iteration's items from seqs[0..n) at time now. items must hold n entries;
 * *shape (may be NULL) receives the batch's shape (for the predictor). With an unfitted
 * predictor the slo policy limits prefill to max_batch_tokens only. Returns how many items were
 * written (0: nothing to run). seqs is reordered (by arrival), its entries otherwise unchanged.
 */
int cairn_sched_plan(const cairn_sched_params *sp, const cairn_predictor *pred,
                     cairn_sched_seq *seqs, int n, int64_t now, cairn_step_item *items,
                     cairn_batch_shape *shape);

#endif
