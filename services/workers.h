/*
 * services/workers.h — generation workers: one engine per device, each on its own thread
 * running a continuous-batching loop.
 *
 * HTTP threads (or the RAG pipeline) submit requests: the prompt is tokenized at submission
 * (cheap, and an over-long prompt is refused at once), the request waits in a bounded queue,
 * and the least-loaded worker admits it into its engine as soon as there is room. Requests are
 * online (a user waits) or offline (summarization jobs); online ones are admitted first, and
 * offline ones only into slots beyond online_reserve. Each iteration is planned by
 * generation/sched (policy slo, online-only or fcfs-hybrid): under slo, online decode tokens
 * always run and offline work fills what the per-iteration latency budget leaves, judged by a
 * latency predictor that each worker refits from its measured iterations. When the KV cache
 * runs out, the newest offline sequence gives way first, and an online request finding every
 * slot taken displaces the offline one with the least work done: a preempted request goes back
 * to its queue in its turn, what it generated appended to its prompt, and is recomputed when
 * admitted again with its sampler's PRNG where it stood, so that its submitter sees only a pause.
 * An iteration carrying only offline work stops at the next layer boundary when an online
 * request arrives (layer_yield), keeps what it computed, and advances a layer after each online
 * iteration until no online sequence is left (under online-only it waits until then: that
 * policy runs no offline work beside online).
 * Text reaches the submitter through callbacks on the worker thread, already cut at UTF-8
 * boundaries and stop strings. A callback asking to stop (the client went away), a
 * deadline or shutdown cancels the sequence and frees its KV blocks.
 *
 * Metrics: cairn_sequences_running, cairn_generation_queue_depth, cairn_ttft_seconds,
 * cairn_inter_token_seconds, cairn_e2e_seconds, cairn_generated_tokens_total, and the
 * scheduler's cairn_sched_iteration_seconds, cairn_sched_predictor_mape,
 * cairn_sched_budget_seconds, cairn_sched_preemptions_total, cairn_sched_layer_yields_total,
 * cairn_offline_tokens_total.
 */
#ifndef CAIRN_SERVICES_WORKERS_H
#define CAIRN_SERVICES_WORKERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/metrics.h"
#include "generation/chat.h"
#include "generation/engine.h"
#include "generation/sched.h"
#include "generation/tokenizer.h"

typedef struct cairn_workers cairn_workers;

typedef struct cairn_workers_params {
    const char *model_path;     /* GGUF of the LLM */
    const char *chat_template;  /* chat family name (cairn_chat_family_from_name), or NULL:
                                   recognised from the model file (an unknown one fails open) */
    int n_workers;              /* engines (devices); >= 1 */
    cairn_engine_params engine; /* per engine */
    int max_queue;              /* requests waiting for admission; more: CAIRN_EBUSY */
    int max_offline_queue;      /* offline requests waiting; more: CAIRN_EBUSY */
    int online_reserve;         /* engine slots offline requests may not take */
    int64_t timeout_ns;         /* a request running longer is cancelled; 0 = none */
    int64_t offline_timeout_ns; /* the same for offline requests; 0 = none */
    cairn_sched_params sched;   /* policy, budget, starvation guard (max_batch_tokens: engine's) */
    const double *predictor;    /* CAIRN_PREDICTOR_FEATURES fitted coefficients (a stored
                                   profile) to start from, or NULL to learn from scratch */
    int predictor_window;       /* iterations the predictor refits over */
    bool layer_yield;           /* offline-only passes stop at a layer boundary for online work */
} cairn_workers_params;

/* One CPU worker, engine defaults (max_seqs 8), max_queue 64, max_offline_queue 64,
 * online_reserve 2, timeout 5 minutes, no offline timeout, sched defaults, window 256,
 * layer_yield on. */
cairn_workers_params cairn_workers_default_params(void);

/*
 * Loads the model and tokenizer and starts the workers. metrics may be NULL. Returns 0 and
 * *out (cairn_workers_close), or the model/engine's error code with the detail in err.
 */
int cairn_workers_open(cairn_workers **out, const cairn_workers_params *p, cairn_metrics *metrics,
                       cairn_error *err);

/* Cancels what is queued or running (their on_done sees CAIRN_FINISH_CANCELLED with error
 * "shutting down") and stops the threads; later submissions fail with CAIRN_ESTATE. The
 * tokenizer stays usable until close. Idempotent; call from one thread. */
void cairn_workers_stop(cairn_workers *w);

/* The first step of a graceful stop: offline requests end now, queued or running, as in
 * cairn_workers_stop ("shutting down"; running ones at their worker's next iteration), and
 * later offline submissions fail with CAIRN_ESTATE; online ones go on. Thread-safe. */
void cairn_workers_stop_offline(cairn_workers *w);

/* Stops (if not yet) and frees everything. NULL is a no-op. */
void cairn_workers_close(cairn_workers *w);

/* The tokenizer and chat family of the served model (owned by w; thread-safe to use). */
const cairn_tok *cairn_workers_tokenizer(const cairn_workers *w);
cairn_chat_family cairn_workers_chat_family(const cairn_workers *w);
/* The model's chat format (family and default system turn); owned by w, immutable. */
const cairn_chat_template *cairn_workers_chat_template(const cairn_workers *w);

/* What a finished request reports. */
typedef struct cairn_gen_result {
    cairn_finish finish;
    const char *error; /* static text when the request failed, else NULL */
    int n_prompt;
    int n_generated;
    double queue_s; /* submission to admission */
    double ttft_s;  /* submission to first token; 0 when none */
    double total_s; /* submission to end */
} cairn_gen_result;

#define CAIRN_WORKERS_MAX_N 8 /* choices of one request at most (cairn_gen_request.n) */

/* One token of a choice with its log-probability and the likeliest alternatives (generation/
 * sample.h: the softmax of the raw logits). Texts are the tokens' bytes (special tokens as
 * written, a byte-fallback token as its byte: not always whole UTF-8), owned by the tokenizer. */
typedef struct cairn_gen_logprob_entry {
    const char *text;
    size_t len;
    int32_t token;
    float logprob;
} cairn_gen_logprob_entry;

typedef struct cairn_gen_logprob {
    cairn_gen_logprob_entry chosen;
    int n_top;
    cairn_gen_logprob_entry top[CAIRN_SAMPLE_MAX_LOGPROBS];
} cairn_gen_logprob;

typedef struct cairn_gen_request {
    const char *prompt; /* text to tokenize */
    size_t prompt_len;
    int tok_flags;      /* CAIRN_TOK_ADD_SPECIAL | CAIRN_TOK_PARSE_SPECIAL (chat templates) */
    int max_tokens;
    /* max_tokens was asked for explicitly: a prompt that leaves the context less room is
     * refused (CAIRN_ERANGE) rather than cut short with finish reason "length" */
    bool max_tokens_strict;
    bool offline; /* a batch job: scheduled around online work */
    cairn_sample_params sample;
    const char *const *stop; /* stop strings (copied); may be NULL */
    int n_stop;
    /* Text as it becomes final (may be len 0: called once per token, so that the caller can
     * notice a client that left). Return non-zero to end the request. Worker thread. */
    int (*on_text)(void *user, const char *text, size_t len);
    /* Called exactly once when the request ends (after its last on_text), on a worker thread
     * (or the closing thread). user may be freed inside it. */
    void (*on_done)(void *user, const cairn_gen_result *res);
    void *user;
    /* n choices of one prompt (0 or 1: one; at most CAIRN_WORKERS_MAX_N). Choice i samples with
     * seed sample.seed + i and reports through the callbacks with user choice_user[i] (the
     * array is copied); each gets its own on_done. Choices admitted together share the
     * prompt's KV blocks (cairn_engine_add_follower): the prompt is prefilled once. */
    int n;
    void *const *choice_user;
    /* logprobs: on_logprob gets each generated token (not the end-of-generation one) with
     * its log-probability and top_logprobs alternatives (0..CAIRN_SAMPLE_MAX_LOGPROBS), just
     * before the on_text call that carries its text. Worker thread. */
    bool logprobs;
    int top_logprobs;
    void (*on_logprob)(void *user, const cairn_gen_logprob *lp);
} cairn_gen_request;

/*
 * Queues a request (its n choices). Returns 0 (on_done will be called, once per choice), or
 * without calling anything:
 * CAIRN_EBUSY (the queue is full: answer 429), CAIRN_ELIMIT (the prompt does not fit the
 * context), CAIRN_EINVAL (an empty prompt, bad sampling parameters), CAIRN_ESTATE (closing),
 * CAIRN_ENOMEM. Thread-safe.
 */
int cairn_workers_submit(cairn_workers *w, const cairn_gen_request *r, cairn_error *err);

/* Requests queued plus running. Thread-safe. */
int cairn_workers_load(cairn_workers *w);

/* Offline requests queued plus running. Thread-safe. */
int cairn_workers_offline_load(cairn_workers *w);

/* The first worker's predictor's estimate of one request alone generating `tokens` tokens after
 * a `prompt`-token prompt (seconds; 0 while it is not fitted). Thread-safe. */
double cairn_workers_predict_generation(cairn_workers *w, int prompt, int tokens);

/* The first worker's predictor MAPE over its recent iterations (fraction) and how many
 * iterations that covers (*n may be NULL). Thread-safe. */
double cairn_workers_predictor_mape(cairn_workers *w, int *n);

/* The context length of the engines (positions per sequence). */
int cairn_workers_n_ctx(const cairn_workers *w);

#endif
