/*
 * generation/sample.h — choosing the next token from a row of logits, and stop strings.
 *
 * Sampling: greedy (temperature 0, or top_k 1) takes the arg-max (lowest id on ties). Otherwise
 * the logits are divided by the temperature, cut to the top_k most likely tokens (top_k > 0),
 * then to the smallest set of most likely tokens whose probability reaches top_p (nucleus
 * sampling, Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"), and one
 * token is drawn from the renormalised softmax of what is left. This is the order of
 * Hugging Face's generate() (temperature, top-k, top-p). Ties in probability are broken by
 * the lower id, so a seed fixes the whole sequence.
 *
 * Before all that, on the raw logits (a private copy; the row given is never written): each
 * logit_bias entry is added to its token's logit (OpenAI's logit_bias, -100..100); then tokens
 * already in the sequence's history (cairn_sampler_accept, and every token the sampler picked)
 * are penalised: repetition_penalty p divides a positive logit by p and multiplies a negative
 * one by p (CTRL, Keskar et al. 2019; llama.cpp's and transformers' rule), and OpenAI's
 * presence and frequency penalties subtract presence + count * frequency. After top-k, min_p
 * drops the tokens whose probability is below min_p times the likeliest one's (llama.cpp's
 * min-p), then top-p applies. Greedy picks the arg-max of the biased, penalised logits.
 *
 * Each sampler owns its PRNG (xoshiro256**, seeded through splitmix64) and a scratch of
 * n_vocab entries made at creation (and, with biases or penalties, a row of n_vocab logits and
 * counts); sampling allocates nothing. A sampler serves one sequence at a time and is not
 * thread-safe; use one per sequence.
 */
#ifndef CAIRN_GENERATION_SAMPLE_H
#define CAIRN_GENERATION_SAMPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/* A logit bias: bias added to token's logit. */
typedef struct cairn_logit_bias {
    int32_t token;
    float bias; /* -100..100 */
} cairn_logit_bias;

#define CAIRN_SAMPLE_MAX_BIAS 1024 /* logit_bias entries at most */

typedef struct cairn_sample_params {
    float temperature; /* >= 0 and finite; 0 = greedy */
    int32_t top_k;     /* >= 0; 0 = no limit */
    float top_p;       /* in (0, 1]; 1 = no limit */
    uint64_t seed;     /* PRNG seed */
    float min_p;       /* in [0, 1]; 0 = off */
    float repetition_penalty; /* in (0, 10]; 0 or 1 = off */
    float presence_penalty;   /* in [-2, 2]; 0 = off */
    float frequency_penalty;  /* in [-2, 2]; 0 = off */
    const cairn_logit_bias *bias; /* n_bias entries (copied by the sampler); may be NULL */
    int32_t n_bias;               /* 0..CAIRN_SAMPLE_MAX_BIAS */
} cairn_sample_params;

/* Whether p biases or penalises logits (a sampler is needed even for greedy decoding). */
bool cairn_sample_params_adjusts(const cairn_sample_params *p);

/* temperature 0.8, top_k 40, top_p 0.95, seed 0: llama.cpp's defaults. */
cairn_sample_params cairn_sample_default_params(void);

/* Greedy parameters (temperature 0). */
cairn_sample_params cairn_sample_greedy_params(void);

/* 0, or CAIRN_EINVAL naming the field and the allowed range ("top_p: 1.5 is outside (0, 1]").
 * Bias tokens are checked against a vocabulary by cairn_sampler_new. */
int cairn_sample_params_validate(const cairn_sample_params *p, cairn_error *err);

typedef struct cairn_sampler cairn_sampler;

/*
 * A sampler for rows of n_vocab logits. Returns 0 and sets *out, CAIRN_EINVAL (bad params or
 * n_vocab <= 0) or CAIRN_ENOMEM. The caller owns *out (cairn_sampler_free).
 */
int cairn_sampler_new(cairn_sampler **out, int32_t n_vocab, const cairn_sample_params *p,
                      cairn_error *err);
void cairn_sampler_free(cairn_sampler *s); /* NULL is a no-op */

/* Adds token to the history the penalties see (a resumed sequence replays what it had
 * generated). Tokens the sampler picks are added by cairn_sampler_sample itself. A no-op
 * without penalties or for a token outside the vocabulary. */
void cairn_sampler_accept(cairn_sampler *s, int32_t token);

/* Restarts the PRNG from seed (the same seed gives the same draws again). */
void cairn_sampler_reseed(cairn_sampler *s, uint64_t seed);

/* Where a sampler's PRNG stands. A sequence that is stopped and resumed in a new sampler (with
 * the same params) carries it over, and its draws go on as if it had never stopped. */
typedef struct cairn_sampler_rng {
    uint64_t s[4];
} cairn_sampler_rng;

void cairn_sampler_rng_get(const cairn_sampler *s, cairn_sampler_rng *out);
void cairn_sampler_rng_set(cairn_sampler *s, const cairn_sampler_rng *r);

/*
 * Picks a token from logits[0..n_vocab) (n_vocab as given at creation). NaN logits count as
 * -inf. Returns the token id (>= 0), or CAIRN_EINVAL when no logit is finite or +inf.
 * Not thread-safe (advances the sampler's PRNG).
 */
int32_t cairn_sampler_sample(cairn_sampler *s, const float *logits, cairn_error *err);

/* The arg-max of logits[0..n) (lowest id on ties; NaN ignored), or -1 when n <= 0 or all NaN. */
int32_t cairn_sample_argmax(const float *logits, int32_t n);

/* A logit and its token: the first entries of a row, as a GPU sends them back instead of the
 * whole row (backend.h's logits_pick). */
typedef struct cairn_cand {
    float logit;
    int32_t id; /* -1: no entry (the row had fewer finite logits) */
} cairn_cand;

/* The k (>= 1) first entries of a row's logits, in this order: the largest logit first, ties
 * by the lower id, NaN and -inf never. */
typedef struct cairn_top {
    const cairn_cand *c;
    int k;
} cairn_top;

/* Whether a sampler with p draws the same from a row's top k entries as from the whole row:
 * p neither biases nor penalises, and is greedy (k 1) or cuts to top_k (1 < top_k <= max and
 * top_k below the vocabulary). Sets *k (0 when not). */
bool cairn_sample_params_top(const cairn_sample_params *p, int32_t n_vocab, int max, int *k);

/* cairn_sampler_sample from a row's first entries instead of the row (cairn_sample_params_top
 * said k). The same draw, except where two logits either side of the k-th place differ by
 * less than the temperature's scaling can tell apart (the whole row's order would then break
 * the tie by id). */
int32_t cairn_sampler_sample_top(cairn_sampler *s, const cairn_top *top, cairn_error *err);

/* ---- Log probabilities -----------------------------------------------------------------------
 * What OpenAI's logprobs / top_logprobs report. The values are the log-softmax of the model's
 * raw logits: before logit_bias, penalties, temperature, top-k, top-p and min-p (vLLM's default
 * "raw_logprobs"), so they describe the model, do not change with the sampling settings, and
 * the greedy token is the top-1 entry. */

#define CAIRN_SAMPLE_MAX_LOGPROBS 20 /* alternatives per token at most (OpenAI's top_logprobs) */

typedef struct cairn_logprob {
    int32_t token;
    float logprob; /* <= 0; -inf for a token of probability 0 (a -inf or NaN logit) */
} cairn_logprob;

typedef struct cairn_token_logprobs {
    cairn_logprob chosen;                        /* the token that was picked */
    int n_top;                                   /* entries in top */
    cairn_logprob top[CAIRN_SAMPLE_MAX_LOGPROBS]; /* the likeliest tokens, most likely first
                                                    (lowest id first on ties) */
} cairn_token_logprobs;

/*
 * Fills *out with the log-probability of token and of the k likeliest tokens (0..
 * CAIRN_SAMPLE_MAX_LOGPROBS; fewer when fewer logits are finite) under the softmax of
 * logits[0..n). NaN logits count as -inf. Returns 0, or CAIRN_EINVAL (k or token out of range,
 * or no finite logit). Allocates nothing; thread-safe (reads logits only). One pass for the
 * maximum, one for the normaliser (in double), one for the top k.
 */
int cairn_sample_logprobs(const float *logits, int32_t n, int32_t token, int k,
                          cairn_token_logprobs *out);

/* ---- Stop strings ---------------------------------------------------------------------------
 * Generated text arrives in pieces. The matcher holds back the bytes that might be the start
 * of a stop string until it knows; when a stop string completes (possibly across several
 * pieces) it reports it, and the text before it is all that should be shown. */
typedef struct cairn_stop cairn_stop;

typedef struct cairn_stop_result {
    const char *emit; /* bytes safe to stream now (owned by the matcher, valid until the next
                         call); emit_len may be 0 */
    size_t emit_len;
    size_t withheld; /* bytes held back as a possible stop-string prefix */
    int stop_index;  /* index of the stop string that completed, or -1 */
} cairn_stop_result;

/*
 * A matcher for n stop strings (copied; each non-empty; n may be 0). Returns 0, CAIRN_EINVAL
 * (an empty or NULL string) or CAIRN_ENOMEM. The caller owns *out (cairn_stop_free).
 */
int cairn_stop_new(cairn_stop **out, const char *const *stops, size_t n, cairn_error *err);
void cairn_stop_free(cairn_stop *m); /* NULL is a no-op */

/*
 * Feeds one piece. On a completed stop string, r->stop_index >= 0 and r->emit is the text
 * before it that was not yet emitted; everything after is dropped and further feeds return
 * CAIRN_ESTATE until cairn_stop_reset. Returns 0, CAIRN_ESTATE, or CAIRN_ENOMEM.
 */
int cairn_stop_feed(cairn_stop *m, const char *piece, size_t len, cairn_stop_result *r);

/* Generation ended without a stop string: hands back the withheld bytes. */
void cairn_stop_flush(cairn_stop *m, cairn_stop_result *r);

/* Forgets all state, for a new sequence. */
void cairn_stop_reset(cairn_stop *m);

#endif
