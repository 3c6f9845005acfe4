/*
 * adapt/cema_select.h — the edge half of CEMA: which samples are worth uploading.
 *
 * After CEMA (Chen et al., "Towards Robust and Efficient Cloud-Edge Elastic Model Adaptation via
 * Selective Entropy Distillation", ICLR 2024), whose filter extends EATA's (Niu et al., ICML
 * 2022). A sample is kept when all hold:
 *   - reliable:      H(p) < E_max, with E_max dynamic: E_max = lambda * EMA(H), the running mean
 *                    entropy of everything the device has seen (updated once per batch, with the
 *                    batch included before the batch is judged, EMA decay entropy_decay). High
 *                    entropy samples carry mostly noise for distillation (CEMA §3.2);
 *   - informative:   H(p) > E_min (optional, default 0: off), and H(p) > lambda_min * EMA(H)
 *                    (optional, default 0: off; the dynamic counterpart of E_min, which follows
 *                    the shift as E_max does). Near-certain samples teach little; with a teacher
 *                    far stronger than the edge model, the samples the edge model is least sure
 *                    of teach most (uncertainty sampling), and lambda_min > 0 with a large
 *                    lambda uploads those;
 *   - non-redundant: |cos(p_bar, p)| < d_margin, p_bar an EMA (decay pred_decay) of the
 *                    predictions of the samples kept so far (EATA §3.2). The first reliable
 *                    sample is kept and starts p_bar.
 * Defaults: lambda 1.0 (keep below the running mean), entropy_decay 0.9, e_min 0, d_margin 0.5,
 * pred_decay 0.9. EATA uses d_margin 0.4 for 10 classes; 0.5 keeps a little more.
 *
 * Upload budget (upload_fraction q > 0, default 0: off): each call (a device's batch) keeps at
 * most floor(c + q * n) of its n valid samples, c the fraction carried from earlier batches (so
 * a batch gets floor(q n) or ceil(q n) and the long-run fraction is at most q), and fills that
 * budget with its highest-entropy samples: the samples are judged in decreasing entropy (ties
 * in order), each against the rules above, until the budget is spent. A threshold on the running
 * mean uploads little from a stream on which the model is uniformly unsure (every sample near the
 * mean); a per-batch quantile still sends that stream's most uncertain share to the teacher.
 * Combined with the rules above, they bound it further (lambda_min: only samples above the
 * running-mean bound; d_margin: a redundant sample is skipped and the next-most-uncertain one
 * takes its place). upload_random r (default 0) gives the share r of the budget to samples drawn
 * uniformly from the rest of the batch instead (a fixed seed per selector): uploads that only
 * hold the most uncertain samples are a skewed sample of the batch, and the cloud normalises the
 * edge model with their statistics. upload_power beta (default 0: off) draws the budget's
 * uncertain share at random with probability proportional to H^beta instead of taking the top
 * of the batch ("power acquisition", Kirsch et al., "Stochastic Batch Acquisition: A Simple
 * Baseline for Deep Active Learning", TMLR 2023: top-k of a score picks near-duplicates and
 * misses whole regions where the model is sure and wrong; sampling by H^beta keeps the preference
 * for uncertain samples and spreads the batch). It is drawn as the Gumbel top-k: each valid
 * sample gets the key beta ln H + G, G standard Gumbel, and the samples are judged in decreasing
 * key (a sample with H = 0 comes last); beta -> infinity is the top-k, beta -> 0 a uniform
 * draw.
 *
 * BLAS-free and allocation-free after new: links into libcairn_edge and into the cloud.
 * Thread-safety: a selector is stateful; one thread at a time (or guard it).
 */
#ifndef CAIRN_ADAPT_CEMA_SELECT_H
#define CAIRN_ADAPT_CEMA_SELECT_H

#include <stdint.h>

#include "common/error.h"

typedef struct cairn_cema_select_params {
    float lambda;          /* E_max = lambda * EMA(entropy); > 0 */
    float entropy_decay;   /* in [0, 1) */
    float e_min;           /* nats; 0 disables the lower bound */
    float d_margin;        /* in (0, 1]; 1 disables the redundancy filter (cosine <= 1 always) */
    float pred_decay;      /* in [0, 1) */
    float lambda_min;      /* E_min' = lambda_min * EMA(entropy); 0 disables it; < lambda */
    float upload_fraction; /* q, the per-batch budget (see above); in [0, 1]; 0 disables it */
    float upload_random;   /* share of the budget drawn at random; in [0, 1); needs q > 0 */
    float upload_power;    /* beta: the uncertain share drawn ~ H^beta; 0: the top-k; in
                              [0, 64]; needs q > 0 */
} cairn_cema_select_params;

cairn_cema_select_params cairn_cema_select_default_params(void);

typedef struct cairn_cema_selector cairn_cema_selector;

/* A selector for k-class predictions. The caller owns *out (cairn_cema_selector_free). Returns 0,
 * CAIRN_EINVAL (k < 2, params out of range) or CAIRN_ENOMEM. */
int cairn_cema_selector_new(cairn_cema_selector **out, int k, const cairn_cema_select_params *p,
                            cairn_error *err);
void cairn_cema_selector_free(cairn_cema_selector *s); /* NULL is a no-op */

/*
 * Judges n samples (probs: n * k probabilities; entropies: n values in nats) in order (with an
 * upload budget: in decreasing entropy), writes keep[i] = 1 or 0, and returns how many were
 * kept. Non-finite entropies or probabilities are never kept, do not move the running
 * statistics and do not count towards the budget. O(n) without a budget, O(n^2) with one.
 */
int cairn_cema_select(cairn_cema_selector *s, const float *probs, const float *entropies, int n,
                      uint8_t *keep);

/* The current thresholds and counters (for metrics and tests). */
float cairn_cema_selector_e_max(const cairn_cema_selector *s);
uint64_t cairn_cema_selector_seen(const cairn_cema_selector *s);
uint64_t cairn_cema_selector_kept(const cairn_cema_selector *s);

/* Forgets the running statistics (e.g. after a model update); the budget's carried fraction
 * stays. */
void cairn_cema_selector_reset(cairn_cema_selector *s);

#endif
