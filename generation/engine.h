/*
 * generation/engine.h — the generation engine: sequences, batched steps, sampling.
 *
 * An engine runs one model (borrowed; several engines may share it) with its own thread pool,
 * paged KV cache and forward-pass workspace, all sized at open. Callers add sequences (a
 * prompt of token ids and generation parameters) and drive the engine with cairn_engine_step():
 * each step runs ONE forward pass over the batch the caller chose: prefill chunks of some
 * sequences and decode tokens of others. The scheduler (a later module) decides that batch;
 * until then cairn_engine_run() is a simple continuous-batching loop: every decoding sequence
 * gets its token, then prefill chunks fill the rest of max_batch_tokens.
 *
 * Generated tokens go to a per-sequence callback as soon as they are sampled. Stop strings are
 * the caller's business (they need the tokenizer: generation/sample.h's cairn_stop); the
 * callback returns non-zero to end a sequence. Stop tokens (end of generation ids), max_tokens
 * and the context length end it inside the engine.
 *
 * Thread-safety: an engine is used by one thread at a time (the worker that owns it).
 */
#ifndef CAIRN_GENERATION_ENGINE_H
#define CAIRN_GENERATION_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "generation/model.h"
#include "generation/sample.h"

typedef struct cairn_engine cairn_engine;

typedef struct {
    int n_threads;        /* compute threads, the caller included; 0 = CPUs online */
    int n_ctx;            /* positions per sequence; 0 = min(model's context_length, 4096) */
    int max_seqs;         /* sequences alive at once (added and not yet released) */
    int max_batch_tokens; /* tokens in one forward pass */
    int block_tokens;     /* KV block size in tokens */
    int kv_blocks;        /* KV blocks of full-attention layers; 0 = max_seqs full contexts,
                             at most 90% of the memory the weights leave on a GPU, half the
                             available memory on the CPU. Sliding-window layers get what
                             max_seqs windows need. */
    int device;           /* -1 the CPU; N >= 0 CUDA device N (generation/backend.h) */
} cairn_engine_params;

/* n_threads 0, n_ctx 0, max_seqs 8, max_batch_tokens 512, block_tokens 16, kv_blocks 0,
 * device -1. */
cairn_engine_params cairn_engine_default_params(void);

/*
 * Opens an engine over m (which must outlive it). Returns 0 and *out (cairn_engine_close), or
 * CAIRN_EINVAL (a parameter out of range, named in err), CAIRN_ENOMEM, CAIRN_EIO (threads),
 * CAIRN_EUNSUPPORTED (no such device, or a weight type it has no kernel for: err names the
 * tensor), CAIRN_EDEVICE (a GPU call failed).
 */
int cairn_engine_open(cairn_engine **out, const cairn_model *m, const cairn_engine_params *p,
                      cairn_error *err);
void cairn_engine_close(cairn_engine *e); /* NULL is a no-op */

/* Why a sequence ended. */
typedef enum {
    CAIRN_FINISH_NONE = 0,  /* still running */
    CAIRN_FINISH_LENGTH,    /* max_tokens generated */
    CAIRN_FINISH_STOP,      /* a stop token was sampled (it is the last generated token) */
    CAIRN_FINISH_CALLBACK,  /* the token callback asked to stop (e.g. a stop string) */
    CAIRN_FINISH_CONTEXT,   /* the sequence filled the context */
    CAIRN_FINISH_CANCELLED, /* cairn_engine_cancel */
} cairn_finish;

/*
 * Called once per generated token, in order; `last` is true when the sequence ends with it
 * (reason in cairn_engine_seq_info). Return 0 to go on, non-zero to end the sequence after
 * this token (CAIRN_FINISH_CALLBACK). Runs on the thread calling step/run.
 */
typedef int (*cairn_token_cb)(void *user, int seq_id, int32_t token, bool last);

typedef struct {
    int max_tokens;              /* tokens to generate, >= 1 */
    cairn_sample_params sample;  /* cairn_sample_greedy_params() by default */
    const int32_t *stop_tokens;  /* ids that end generation (copied); may be NULL */
    int n_stop_tokens;
    cairn_token_cb on_token;     /* may be NULL */
    void *user;
    int n_history; /* the prompt's last n_history tokens are this sequence's earlier output
                      (a resumed sequence): the sampler's penalties count them; 0..n_prompt */
    bool logprobs;    /* compute each sampled token's log-probability (cairn_sample_logprobs),
                         readable in on_token through cairn_engine_seq_logprobs; off: no cost */
    int top_logprobs; /* with logprobs: the likeliest alternatives too, 0..
                         CAIRN_SAMPLE_MAX_LOGPROBS */
} cairn_gen_params;

/* max_tokens 128, greedy, no stop tokens, no callback. */
cairn_gen_params cairn_gen_default_params(void);

/*
 * Adds a sequence with prompt[0..n_prompt) (copied). Returns 0 and its id in *id, or
 * CAIRN_EINVAL (empty prompt, a token id outside the vocabulary, bad generation parameters),
 * CAIRN_ELIMIT (the prompt does not fit the context: n_prompt >= n_ctx), CAIRN_EBUSY (max_seqs
 * sequences exist; release finished ones). No compute happens here.
 */
int cairn_engine_add(cairn_engine *e, const int32_t *prompt, int n_prompt,
                     const cairn_gen_params *gp, int *id, cairn_error *err);

/*
 * Adds a sequence with leader's prompt that shares the leader's KV blocks instead of prefilling
 * the prompt again (n choices for one prompt): it is never stepped while it follows; when the
 * leader's prompt completes, it forks the leader's block table (cairn_kv_seq_fork: no copy,
 * reference counts) and draws its first token from the same logits row with its own sampler
 * (gp->sample: its own seed), then decodes as any sequence. Should the leader end before its
 * prompt completes, the follower becomes an ordinary sequence that prefills the prompt itself.
 * The leader must exist, be prefilling and follow no one. Returns 0 and *id, or the errors of
 * cairn_engine_add, CAIRN_ESTATE (the leader is not prefilling or is itself a follower).
 */
int cairn_engine_add_follower(cairn_engine *e, int leader, const cairn_gen_params *gp, int *id,
                              cairn_error *err);

/* Ends a sequence now (CAIRN_FINISH_CANCELLED) and frees its KV blocks; its record stays until
 * release. Returns 0, or CAIRN_ENOTFOUND for an unknown id. Finished sequences are left as is. */
int cairn_engine_cancel(cairn_engine *e, int id);

/* Forgets a sequence (cancelling it if it still runs), freeing its id. Unknown ids: no-op. */
void cairn_engine_release(cairn_engine *e, int id);

/* One entry of a step: sequence id and how many prompt tokens to prefill (ignored, i.e. 1, for a
 * sequence that is decoding). */
typedef struct {
    int id;
    int n_tokens;
} cairn_step_item;

/*
 * Runs one forward pass over the items: for a prefilling sequence min(n_tokens, rest of the
 * prompt) prompt tokens, for a decoding one its last sampled token. A sequence whose prompt
 * completes, and every decoding one, gets its next token sampled (callback). Returns 0, or
 * CAIRN_EINVAL (unknown/finished id, an id twice, n_tokens < 1, more than max_batch_tokens),
 * CAIRN_EBUSY (KV cache exhausted: nothing was changed; free or cancel sequences and retry).
 */
int cairn_engine_step(cairn_engine *e, const cairn_step_item *items, int n_items,
                      cairn_error *err);

#define CAIRN_ENGINE_SUSPENDED 1

/*
 * Layer-level preemption (after QLLM): step() whose forward pass asks should_yield(ctx) before
 * each layer but the first and, when told to, stops at that layer boundary keeping what it
 * computed. Returns 0 (completed, as step), CAIRN_ENGINE_SUSPENDED (stopped: the batch's
 * sequences are held, and a step naming them fails with CAIRN_ESTATE until the pass is resumed),
 * or an error as step. Other sequences may run steps meanwhile (those never yield). Cancelling
 * or releasing a held sequence abandons the pass: its sequences go back to where they were
 * before it, as if it had not run.
 */
int cairn_engine_step_yield(cairn_engine *e, const cairn_step_item *items, int n_items,
                            int (*should_yield)(void *ctx), void *ctx, cairn_error *err);

/* Continues the suspended pass from its layer (at least one layer runs), yielding again as
 * above. Returns 0 (completed: tokens sampled), CAIRN_ENGINE_SUSPENDED, CAIRN_ESTATE (nothing is
 * suspended) or an error (the pass is abandoned). */
int cairn_engine_resume(cairn_engine *e, int (*should_yield)(void *ctx), void *ctx,
                        cairn_error *err);

/* Whether a pass is suspended. */
bool cairn_engine_suspended(const cairn_engine *e);

/*
 * Continuous batching until no sequence runs: each iteration every decoding sequence gets its
 * token and prefill chunks fill up to max_batch_tokens (oldest sequence first). Returns 0 or
 * the first step error.
 */
int cairn_engine_run(cairn_engine *e, cairn_error *err);

typedef struct {
    bool prefilling;       /* prompt not fully processed yet */
    cairn_finish finish;   /* CAIRN_FINISH_NONE while running */
    int n_prompt;
    int n_prefilled;       /* prompt tokens processed */
    int n_generated;
    const int32_t *generated; /* n_generated ids, owned by the engine, valid until release */
    bool held;                /* in a suspended pass (cairn_engine_step_yield) */
    int following;            /* the leader it waits for (cairn_engine_add_follower), or -1:
                                 a follower is not to be stepped */
} cairn_seq_info;

/* Fills *out for id. Returns 0 or CAIRN_ENOTFOUND. */
int cairn_engine_seq_info(const cairn_engine *e, int id, cairn_seq_info *out);

/* Where id's sampler PRNG stands, and setting it (cairn_sampler_rng): a sequence re-added after
 * a preemption with the same sample params carries it over, so its draws go on from where they
 * stood instead of replaying its seed's first ones. (Its tokens can still differ from an
 * unpreempted run's: the recomputed positions' logits come from a prefill, not decode steps.)
 * Return 0, CAIRN_ENOTFOUND, or CAIRN_ESTATE for a greedy sequence (it draws nothing). */
int cairn_engine_seq_rng(const cairn_engine *e, int id, cairn_sampler_rng *out);
int cairn_engine_seq_set_rng(cairn_engine *e, int id, const cairn_sampler_rng *r);

/* The log-probabilities of id's latest sampled token (gen params' logprobs), valid until its
 * next token or release: NULL for an unknown id, one that did not ask, or before its first
 * token. Read it in on_token. */
const cairn_token_logprobs *cairn_engine_seq_logprobs(const cairn_engine *e, int id);

/* Sequences added and not finished. */
int cairn_engine_active(const cairn_engine *e);

/* The engine's KV cache (for metrics and tests; owned by the engine). */
const cairn_kv *cairn_engine_kv(const cairn_engine *e);

/* The engine's backend (its traits and description; owned by the engine). */
cairn_backend *cairn_engine_backend(const cairn_engine *e);

#endif
