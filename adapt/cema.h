/*
 * adapt/cema.h — the cloud half of CEMA (Chen et al., ICLR 2024): adapt a foundation model to the
 * samples edge devices upload, distil it into the edge model's batchnorm affine parameters, and
 * publish the result as signed update bundles (adapt/bundle.h). The edge half (which samples to
 * upload) is adapt/cema_select.h.
 *
 * One step (cairn_cema_cloud_step):
 *   1. Batch: up to new_per_step of the oldest pending (uploaded, not yet used) samples, topped
 *      up to batch_size with samples drawn without replacement from the replay buffer (FIFO,
 *      replay_capacity samples; the new samples enter it after the step). Replay keeps the edge
 *      model from forgetting earlier distributions (CEMA §3.3).
 *   2. Foundation: forward with test-time batch statistics; entropy minimisation of its BN
 *      affine parameters on its reliable samples (EATA's weighting, Niu et al. 2022): samples with
 *      H_f < E0 = e0_fraction * ln K get weight exp(E0 - H_f), others 0; foundation_steps times
 *      (a forward and an update each). The outputs p_f of the last forward, before its update,
 *      are the teacher for this step (with one step: the pre-step outputs, as CEMA's code).
 *   3. Edge, edge_steps times: forward in batchnorm train mode (batch statistics; the running
 *      statistics follow the uploads, momentum from the model file), loss
 *        L = w_kl * T^2 * mean_i(s_i * KL(p_f,i^T || p_e,i^T))  entropy-weighted distillation
 *          + w_ent * mean_i(H(p_e,i))                           entropy of the edge model
 *          + w_ce * mean_i(s_i * CE(p_e,i, argmax p_f,i))        pseudo-label cross-entropy
 *      with p^T = softmax(z / T) (Hinton et al. 2015: the T^2 keeps the gradient's scale as T
 *      changes) and s_i = exp(-H_f,i) normalised to mean 1 over the batch, so that samples the
 *      teacher is sure of count more (CEMA §3.2). Defaults w_kl 1, w_ent 0.2, w_ce 0.5, T 1,
 *      one step each (the stats of a step are its first edge pass). Only batchnorm gamma
 *      and beta of either model move (SGD groups from cairn_nn_pred_norm_affine); conv and linear
 *      weights never change. The edge model's running statistics do change (they are state, not
 *      parameters), and bundles ship them (cairn_bundle_build_params.with_running_stats).
 *
 * Threads: cairn_cema_cloud_add_samples may be called from any thread (HTTP handlers); step,
 * bundle and the accessors serialise on an internal lock, so cairnd can run steps on a worker
 * thread of its own. Adaptation uses OpenBLAS (cloud only).
 */
#ifndef CAIRN_ADAPT_CEMA_H
#define CAIRN_ADAPT_CEMA_H

#include <stddef.h>
#include <stdint.h>

#include "adapt/bundle.h"
#include "adapt/nn/nn.h"
#include "common/error.h"

typedef struct cairn_cema_params {
    const char *model_name;  /* name in bundles (default "edge"); copied at open */
    int replay_capacity;     /* samples kept for replay (default 1024) */
    int pending_capacity;    /* new samples waiting for a step; when full the oldest are dropped
                                and counted (default 4096) */
    int batch_size;          /* samples per step (default 64, >= 2) */
    int new_per_step;        /* at most this many new samples per step (default 32) */
    float lr_foundation;     /* SGD on the foundation's BN affine (default 0.001) */
    float lr_edge;           /* SGD on the edge's BN affine (default 0.01) */
    float momentum;          /* both (default 0.9) */
    float e0_fraction;       /* foundation reliability threshold E0 = e0_fraction * ln K (0.4) */
    float w_kl, w_ent, w_ce; /* edge loss weights (1, 0.2, 0.5) */
    float temperature;       /* distillation temperature T of the KL term (default 1; > 0) */
    int foundation_steps;    /* entropy-minimisation steps of the foundation per step (1..64,
                                default 1) */
    int edge_steps;          /* distillation steps of the edge model per step (1..64, default 1) */
    int adapt_foundation;    /* 0 keeps the foundation fixed (default 1) */
    uint64_t seed;           /* replay sampling (default 1) */
} cairn_cema_params;

cairn_cema_params cairn_cema_default_params(void);

typedef struct cairn_cema_cloud cairn_cema_cloud;

/*
 * Loads the edge and foundation models (GGUF, adapt/nn/nn_gguf.h), which must take the same
 * input shape and give the same number of classes, and computes the edge file's SHA-256 (the
 * base model of every bundle). The caller owns *out (cairn_cema_cloud_close). Returns 0,
 * CAIRN_EINVAL (bad params, mismatched models), a load error, or CAIRN_ENOMEM.
 */
int cairn_cema_cloud_open(cairn_cema_cloud **out, const char *edge_model_path,
                          const char *foundation_model_path, const cairn_cema_params *p,
                          cairn_error *err);
void cairn_cema_cloud_close(cairn_cema_cloud *c); /* NULL is a no-op */

/*
 * Queues n uploaded samples (images: n * C*H*W floats in the models' input shape, copied) for
 * the next steps. When the queue is full the oldest pending samples are dropped (counted).
 * Returns 0, CAIRN_EINVAL (n < 0), CAIRN_EFORMAT (a non-finite value). Thread-safe.
 */
int cairn_cema_cloud_add_samples(cairn_cema_cloud *c, const float *images, int n, cairn_error *err);

/* Queues a decoded upload's images; CAIRN_EINVAL when its image shape is not the models'. */
int cairn_cema_cloud_add_batch(cairn_cema_cloud *c, const cairn_edge_batch *b, cairn_error *err);

typedef struct cairn_cema_step_stats {
    int n_new, n_replay;      /* samples in the step's batch */
    float foundation_entropy; /* mean H of the foundation on the batch, before its update */
    float edge_entropy;       /* mean H of the edge model on the batch, before its update */
    float loss_kl, loss_ent, loss_ce;
    float agreement; /* fraction where edge and foundation agree on the class */
} cairn_cema_step_stats;

/*
 * One adaptation step (above). Returns the number of samples used (> 0), 0 when fewer than 2
 * samples are available (nothing done), or a negative code. stats may be NULL.
 */
int cairn_cema_cloud_step(cairn_cema_cloud *c, cairn_cema_step_stats *stats, cairn_error *err);

/*
 * A step on the replay buffer alone: batch_size samples (or all it holds) drawn from it, pending
 * uploads left for the next cairn_cema_cloud_step, the rest as that step. It lets a cloud whose
 * devices upload a small share spend as many steps on an update as one that receives every
 * sample (services/edge_api.h, min_steps_per_bundle). Returns the number of samples used, 0 when
 * the buffer holds fewer than 2, or a negative code. stats may be NULL.
 */
int cairn_cema_cloud_replay_step(cairn_cema_cloud *c, cairn_cema_step_stats *stats,
                                 cairn_error *err);

/*
 * Signs the edge model's current batchnorm tensors as the next version (1, 2, ...): *out is
 * malloc'ed (caller frees), *version (may be NULL) the version it carries. Returns 0 or as
 * cairn_bundle_build.
 */
int cairn_cema_cloud_bundle(cairn_cema_cloud *c, const cairn_bundle_key *priv, uint8_t **out,
                            size_t *len, uint64_t *version, cairn_error *err);

/* Counters. Thread-safe, and never waits for a step in progress: replay, steps and version are
 * as of the last finished step or bundle. */
typedef struct cairn_cema_counters {
    uint64_t received; /* samples passed to add_samples */
    uint64_t dropped;  /* pending samples dropped because the queue was full */
    uint64_t pending;  /* waiting for a step */
    uint64_t replay;   /* in the replay buffer */
    uint64_t steps;
    uint64_t version; /* last bundle version (0: none yet) */
} cairn_cema_counters;
void cairn_cema_cloud_counters(cairn_cema_cloud *c, cairn_cema_counters *out);

/* The base model's SHA-256 (of the edge GGUF file). */
void cairn_cema_cloud_base_sha256(const cairn_cema_cloud *c, uint8_t out[CAIRN_EDGE_SHA256_LEN]);

/*
 * The models, for evaluation. They stay owned by c and prepared for training with max_batch =
 * batch_size; their batchnorm mode is whatever the last step left (set it before a forward).
 * Not thread-safe against step/bundle: call them from the thread that steps.
 */
cairn_nn_model *cairn_cema_cloud_edge_model(cairn_cema_cloud *c);
cairn_nn_model *cairn_cema_cloud_foundation_model(cairn_cema_cloud *c);

#endif
