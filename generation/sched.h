/*
 * generation/sched.h — the iteration scheduler: which sequences run in the next forward pass.
 *
 * Two request classes share one engine: online (a user waits: TTFT and the time between tokens,
 * TBT, are what count) and offline (summarization jobs: only throughput counts). After HyGen
 * (Sun et al. 2025, "HyGen: Efficient LLM Inference by Hybrid Online and Offline Request
 * Scheduling"), the `slo` policy builds each iteration as:
 *   1. every online sequence that is decoding gets its token;
 *   2. online prefill advances in chunks, first come, first served, each as large as the
 *      online budget allows: online_budget_s, larger than the offline budget, bounds the
 *      iteration that running online sequences wait for (their TBT) while letting prompts
 *      through fast (their TTFT). The oldest prompt gets at least min_chunk tokens whatever
 *      the budget, so prompts always advance; a later one runs only with a chunk of min_chunk
 *      or more (or its rest) within the budget, and does not overtake an earlier one;
 *   3. offline work is added while the PREDICTED iteration latency stays within the budget:
 *      decode tokens first (cheap, and they finish jobs), then prefill chunks, each class in
 *      order of arrival (a later prompt does not overtake an earlier one);
 *   4. starvation guard (before the offline work of 3, after online prefill): when the oldest
 *      offline sequence has not advanced for starve_ns it is served whatever the budget (one
 *      decode token, or a min_chunk prefill chunk). Only the oldest: with offline work first
 *      come, first served, its progress bounds every other offline sequence's wait, and an
 *      iteration is stretched by one sequence's minimum service at most;
 *   5. occupancy guard on 3: while the online sequences (running and waiting for a slot) hold
 *      offline_occupancy x max_seqs of the engine's slots or more, offline work gets no budget
 *      (only the guard of 4 serves it). By Little's law the online sequences in flight are
 *      the arrival rate times their lifetime, and their lifetime is mostly their tokens times
 *      the iteration time; offline work that lengthens every iteration to the budget so
 *      lengthens it that near capacity the online sequences outgrow the slots and new prompts
 *      queue for admission. On an H100 at 75% of capacity (max_seqs 64) the TBT median went
 *      from 26 ms (online only) to 35 ms with a 40 ms budget, the online sequences in flight
 *      from about 41 to 57, and 5% of requests missed the TTFT SLO (docs/BENCHMARKS.md).
 * An iteration is never empty while sequences exist: with no online work and a budget too small
 * for anything, the oldest offline sequence still gets a token or a min_chunk chunk.
 * Two policies for comparison: `online-only` (offline work runs only when no online sequence
 * exists) and `fcfs-hybrid` (one first-come-first-served order for both classes, decode
 * tokens first, then prefill chunks up to max_batch_tokens: the plain continuous batching of
 * vLLM-style servers).
 *
 * The latency predictor is a linear model of an iteration's time over its batch composition
 * (DESIGN "Scheduler"), with features that follow where a CPU forward pass spends its time:
 *   1            fixed cost of a pass (weights streamed, per-layer synchronisation);
 *   T            tokens in the pass (S_p prefill + S_d decode): every matrix product;
 *   R            logits rows (decode tokens, and prefill chunks that finish their prompt): the
 *                output projection (262k x 640 for Gemma 3) and sampling; a chunk that does
 *                not finish its prompt computes no logits;
 *   N_p          prefill chunks;
 *   K_p          attention keys of the prefill tokens: a chunk of n after ctx cached tokens
 *                attends n * ctx + n (n + 1) / 2 keys;
 *   K_d          attention keys of the decode tokens (ctx each); few decode tokens share the
 *                threads unevenly, so a key costs them more than a prefill key;
 *   ceil(R / t)  output-projection tiles and ceil(T / t) token tiles: a backend whose matrix
 *                kernels work on tiles of t tokens (cairn_backend_traits.token_tile: 8 for the
 *                CPU's q8 kernels) costs a step more when a pass starts a new tile;
 *   ceil(R / 2)  output-projection pairs (cairn_backend_traits.logits_pair): where the CPU's
 *                output projection is repacked (AVX-512 VNNI) its kernel takes tokens in
 *                pairs, so an odd count costs nearly a pair, and one or two rows are bound by
 *                streaming the matrix, not by arithmetic (cairn_cpu_mat_repack);
 *   G            1 when the pass's T tokens exceed cairn_backend_traits.gemm_from (then its
 *                token tiles count 0): on the CUDA backend a pass of more than 16 tokens
 *                dequantizes every quantized matrix for cuBLAS instead of reading it once per
 *                8-token GEMV pass, a fixed cost (Llama-3-8B Q4_K_M on an H100: about 7 ms a
 *                pass under 8 tokens, 14 ms at 8-15, 31 ms at 17-23). Without it a line through
 *                decode and long prefills missed by 44% on 1-64-token prefills there; with it,
 *                refitted on the same samples, about 20% there and 6% overall
 *                (docs/BENCHMARKS.md).
 *   T G          tokens of a pass past gemm_from: cuBLAS's cost per token is a small fraction
 *                of a GEMV pass's, so one slope for T cannot serve both sides of the switch;
 *   M            1 for a pass past gemm_from that also holds decode tokens: their attention
 *                runs in the tiled kernel beside the prefill runs' cuBLAS products, launches
 *                a pass of prefill alone does not make (H100, Llama-3-8B Q4_K_M: 4-9 ms).
 *                With these two the refit of the first GPU run's samples comes to 3.2%
 *                overall on steady iterations (docs/BENCHMARKS.md).
 * The step features come from the engine's backend (cairn_predictor_set_traits); a backend
 * without such steps leaves them 0, and the fit's ridge term keeps them out of the model.
 * The keys ignore sliding windows (they count every cached token). The model is fitted by
 * weighted least squares (weights 1/t^2, so that it minimises relative error: a 10 ms decode
 * iteration matters as much as a 1 s prefill) over a window of measured iterations, and
 * refitted as new ones arrive; predictions are the model times a speed factor, a moving
 * average of measured / predicted over the latest iterations, which follows the machine's
 * drift between refits (and under a loaded profile). Its MAPE is measured on each iteration
 * BEFORE the iteration is added to the fit, so it is an out-of-sample figure. A stored profile
 * (cairn bench profile --out) holds fitted coefficients and the budget the SLO profiler chose.
 *
 * Thread-safety: a predictor and the planning function are used by one worker thread;
 * cairn_predictor_mape may be read from others (it is a snapshot behind the predictor's lock).
 */
#ifndef CAIRN_GENERATION_SCHED_H
#define CAIRN_GENERATION_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "generation/engine.h"

/* ---- Batch shapes and the latency predictor ---------------------------------------------- */

/* What the predictor knows of a batch; build it with cairn_batch_shape_add (from {0}). */
typedef struct {
    int s_p;        /* prefill tokens */
    int s_d;        /* decode tokens (one per decoding sequence) */
    int n_p;        /* prefill chunks (sequences prefilling) */
    int n_d;        /* sequences decoding */
    int n_out;      /* logits rows: decode tokens and chunks that finish their prompt */
    int64_t keys_p; /* attention keys of the prefill tokens */
    int64_t keys_d; /* attention keys of the decode tokens */
} cairn_batch_shape;

/*
 * Adds an item to a shape: the decode token of a sequence with ctx tokens in its KV cache
 * (prefill false; n and last are ignored), or a prefill chunk of n tokens after ctx cached
 * ones (prefill true; last: the chunk finishes the prompt, so its last token's logits are
 * computed). Cheap enough to try candidates while planning.
 */
void cairn_batch_shape_add(cairn_batch_shape *s, bool prefill, int ctx, int n, bool last);

#define CAIRN_PREDICTOR_FEATURES 12

/* The features' names, in coefficient order ("1", "tokens", ...): as a stored profile and the
 * profiler's output list them. */
extern const char *const cairn_predictor_feature_names[CAIRN_PREDICTOR_FEATURES];

typedef struct cairn_predictor cairn_predictor;

/* A predictor fitting over the last `window` iterations (>= 16). Returns 0, CAIRN_EINVAL or
 * CAIRN_ENOMEM. Until it has been fitted (or loaded), predictions are 0. */
int cairn_predictor_new(cairn_predictor **out, int window, cairn_error *err);

/* The backend whose iterations it predicts (cairn_backend_i.traits): the steps of its cost.
 * Until set, a predictor assumes none. Call before observing. */
void cairn_predictor_set_traits(cairn_predictor *p, const cairn_backend_traits *t);
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

/*
 * The predicted time of one sequence alone generating `tokens` tokens after a `prompt`-token
 * prompt: the prompt in chunks of at most max_chunk tokens, then each decode step at its
 * context. 0 until fitted. Thread-safe (under the predictor's lock), so another thread may ask
 * while the worker observes and refits: the lookahead prefetch's budget is the tier's copy rate
 * times this estimate of the pre-retrieval generation (retrieval/tier.h).
 */
double cairn_predictor_generation(const cairn_predictor *p, int prompt, int tokens,
                                  int max_chunk);

/* Mean absolute percentage error (a fraction: 0.05 = 5%) of the out-of-sample predictions of
 * the last `window` observations, and how many there were (*n may be NULL). 0 when none. */
double cairn_predictor_mape(const cairn_predictor *p, int *n);

/* The fitted coefficients (seconds per unit of each feature, in the order above), and whether
 * the predictor is fitted. */
int cairn_predictor_coefficients(const cairn_predictor *p, double out[CAIRN_PREDICTOR_FEATURES]);

/* Sets the coefficients (e.g. from a stored profile); the predictor counts as fitted, and its
 * later refits are drawn towards these coefficients (a ridge term) so that a window of a few
 * shapes adjusts them instead of replacing them. */
void cairn_predictor_set_coefficients(cairn_predictor *p,
                                      const double c[CAIRN_PREDICTOR_FEATURES]);

/* ---- Stored profiles ------------------------------------------------------------------------ */

/*
 * A profile (`cairn bench profile --out`, cairnd's sched.profile or its stored profiles) is a
 * small text file:
 *   cairn-sched-profile 3
 *   backend cpu                            (the engine's backend: cpu or cuda)
 *   device AMD EPYC 7B13                   (the CPU's model name, or the GPU's name)
 *   features 1 tokens logits_rows ...      (cairn_predictor_feature_names, in order)
 *   coefficients 0.00171 0.00129 ...       (CAIRN_PREDICTOR_FEATURES numbers, seconds per unit)
 *   budget 0.1                             (optional: the budget the SLO search chose, seconds)
 *   slo 2 0.2                              (optional, after budget: the p99 TTFT and TBT, in
 *                                           seconds, the search held that budget to)
 * The coefficients are per backend and device: the step features count the backend's tiles
 * (cairn_backend_traits), and their costs are the device's. Version 2 had no backend or
 * device line; every version-2 profile was measured on a CPU, so it reads as backend cpu,
 * device unknown. Version 1 was one line of 7 bare numbers (the first predictor's features);
 * a profile whose features differ from this build's is refused, with a request to re-run the
 * profiler.
 */
#define CAIRN_SCHED_PROFILE_VERSION 3

typedef struct {
    char backend[16];  /* "cpu", "cuda" */
    char device[128];  /* the CPU's model name or the GPU's name; "" unknown (version 2) */
    double coef[CAIRN_PREDICTOR_FEATURES];
    double budget_s;   /* 0: none stored */
    double ttft_slo_s, tbt_slo_s; /* the SLO budget_s was searched for; 0: not recorded */
} cairn_sched_profile;

/* Parses a profile's text; name (a path) goes into error messages. Returns 0, or CAIRN_EFORMAT
 * (old format, wrong version or features, a missing line, a wrong count, a non-finite
 * number, a budget outside 1 ms..10 s, an SLO that is not two positive numbers of seconds,
 * unexpected text) naming the line and what was wrong.
 * These functions keep no state: any thread may call them. */
int cairn_sched_profile_parse(const char *text, const char *name, cairn_sched_profile *out,
                              cairn_error *err);

/* Reads and parses the file at path (at most 64 KiB). Returns 0, CAIRN_EIO, CAIRN_ELIMIT, or
 * a parse error as above. */
int cairn_sched_profile_load(const char *path, cairn_sched_profile *out, cairn_error *err);

/* Writes p to path in the format above (budget only when > 0, slo only with a budget).
 * Returns 0, CAIRN_EINVAL (a backend or device with a line break), or CAIRN_EIO. */
int cairn_sched_profile_save(const char *path, const cairn_sched_profile *p, cairn_error *err);

/* Whether p was measured on this engine's backend and device: 0, or CAIRN_EINVAL with the
 * reason (a CPU profile for a GPU engine, another GPU, another CPU model). A profile of an
 * unknown device (version 2) is taken for a CPU one of this CPU. */
int cairn_sched_profile_check(const cairn_sched_profile *p, const char *backend,
                              const char *device, cairn_error *err);

/* The budgets of the slo policy for an SLO (p99 TTFT and TBT, seconds). The online budget is
 * CAIRN_SCHED_ONLINE_SHARE x the TBT SLO. The offline budget is the profile's searched one
 * scaled by the ratio of the TBT SLOs (the search held iterations of that budget to the
 * profile's TBT; iteration times scale with the budget) when the profile records one and its
 * SLO, else CAIRN_SCHED_BUDGET_SHARE x the TBT SLO; never above the online budget. prof may be
 * NULL (no stored profile). Returns 0, or CAIRN_EINVAL when the SLO is not two positive
 * numbers with TBT below TTFT. */
#define CAIRN_SCHED_ONLINE_SHARE 0.6
#define CAIRN_SCHED_BUDGET_SHARE 0.5
int cairn_sched_budgets_for_slo(const cairn_sched_profile *prof, double ttft_s, double tbt_s,
                                double *budget_s, double *online_budget_s, cairn_error *err);

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
    int64_t starve_ns;    /* slo: the oldest offline sequence idle this long is served anyway */
    int max_seqs;         /* the engine's sequence slots (0: unknown, no occupancy guard) */
    double offline_occupancy; /* slo: offline work pauses while online sequences hold this
                               * share of max_seqs or more (0 < x <= 1; 1: all of them) */
} cairn_sched_params;

/* slo, 512 tokens, budget 0.1 s, online budget 0.2 s, min_chunk 16, starve 2 s, max_seqs 0,
 * offline occupancy 0.75. */
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
 * Chooses the next iteration's items from seqs[0..n) at time now; online_waiting online
 * requests wait for a slot (they count towards the occupancy guard). items must hold n entries;
 * *shape (may be NULL) receives the batch's shape (for the predictor). With an unfitted
 * predictor the slo policy limits prefill to max_batch_tokens only. Returns how many items were
 * written (0: nothing to run). seqs is reordered (by arrival), its entries otherwise unchanged.
 */
int cairn_sched_plan(const cairn_sched_params *sp, const cairn_predictor *pred,
                     cairn_sched_seq *seqs, int n, int online_waiting, int64_t now,
                     cairn_step_item *items, cairn_batch_shape *shape);

#endif
