/*
 * adapt/train.h — supervised training and evaluation of adapt/models CNNs on an image set.
 *
 * SGD with momentum and weight decay, a cosine learning-rate schedule with a short linear
 * warm-up, cross-entropy on labels. Data parallel over a FIXED number of shards per batch
 * (params.shards): each shard is a model replica that runs forward/backward on batch/shards
 * samples; gradients are averaged in shard order, the step is taken once, and the replicas'
 * batchnorm running statistics are averaged (like DDP without SyncBN). Threads only execute
 * shards, so the result does not depend on params.threads: the same seed and shard count give
 * bit-identical weights (on one machine/BLAS build). OpenBLAS itself is set to one thread.
 *
 * Augmentation (for the foundation model; never the evaluation corruptions of adapt/corrupt.h):
 * random shifts of up to shift_px pixels (zero fill), horizontal flips, random erasing (a
 * rectangle of 2–20% of the image, aspect 0.3–3.3, set to 0; Zhong et al. 2020).
 *
 * AugMix with the Jensen–Shannon consistency loss (params.augmix; Hendrycks et al., ICLR 2020):
 * each sample enters the batch three times — the (shifted/flipped) clean image and two AugMix
 * views of it (adapt/augmix.h) — in one forward pass (so batchnorm sees all three, as in the
 * paper's code); the loss is CE(clean) + jsd_lambda * JS(p_clean, p_aug1, p_aug2). Accuracy
 * and the reported loss are the clean rows' CE plus the weighted JS term.
 *
 * Checkpoints: with params.checkpoint set, the master weights are saved there after every epoch
 * (cairn.train.epochs_done records how many); params.resume and params.start_epoch continue
 * such a run: the weights come from the file, the shuffles and the learning-rate schedule pick
 * up at start_epoch, the momentum buffers start from 0 (not saved).
 *
 * Thread-safety: one training run per model at a time; distinct runs are independent.
 */
#ifndef CAIRN_ADAPT_TRAIN_H
#define CAIRN_ADAPT_TRAIN_H

#include <stdint.h>

#include "adapt/data.h"
#include "adapt/models.h"
#include "adapt/nn/nn.h"
#include "common/error.h"

typedef struct cairn_train_progress {
    int epoch, epochs;   /* 1-based epoch */
    int step, steps;     /* step within the epoch (1-based) and steps per epoch */
    double loss;         /* mean training loss over the epoch so far */
    double accuracy;     /* training accuracy over the epoch so far */
    double images_per_s; /* throughput since the run began */
    double eta_s;        /* estimated seconds left for the whole run */
    double lr;           /* current learning rate */
    int epoch_done;      /* 1 on the call that closes an epoch */
} cairn_train_progress;

typedef void (*cairn_train_progress_fn)(const cairn_train_progress *p, void *ctx);

typedef struct cairn_train_params {
    int epochs;         /* default 5 */
    int batch_size;     /* default 128; must be a multiple of shards */
    int shards;         /* replicas per batch (fixed: results do not depend on threads); 2 */
    int threads;        /* threads executing shards; default 1 (0: one per CPU) */
    float lr;           /* peak learning rate, default 0.05 */
    float momentum;     /* default 0.9 */
    float weight_decay; /* default 5e-4 */
    int warmup_steps;   /* linear warm-up, default 200 */
    uint64_t seed;      /* initialisation, shuffling, augmentation; default 1 */
    int augment;        /* 1: shifts, flips, random erasing (default 0) */
    int shift_px;       /* maximum shift, default 2 */
    float erase_prob;   /* probability of random erasing, default 0.5 */
    int limit;          /* use only the first `limit` training images (0: all); tests */
    int width;          /* foundation-res width (0: CAIRN_MODEL_RES_WIDTH); 0 for the others */
    int augmix;         /* 1: AugMix views + JSD consistency loss (default 0) */
    float jsd_lambda;   /* weight of the JS term, default 12 (the paper's) */
    int augmix_severity; /* 1..10, default 3 (the paper's) */
    const char *checkpoint; /* saved after every epoch when not NULL */
    const char *resume;     /* weights to start from (a checkpoint) instead of the init */
    int start_epoch;        /* epochs already done by the resumed run (0..epochs-1) */
    cairn_train_progress_fn progress; /* called every progress_every steps and at epoch end */
    void *progress_ctx;
    int progress_every; /* default 50 */
} cairn_train_params;

cairn_train_params cairn_train_default_params(void);

typedef struct cairn_train_result {
    double train_loss;     /* last epoch's mean loss */
    double train_accuracy; /* last epoch's training accuracy (augmented images, train mode) */
    double seconds;        /* wall time */
} cairn_train_result;

/*
 * Builds architecture a, initialises it from p->seed and trains it on d. On success the caller
 * owns *out (an unprepared-for-training model in BN eval mode, prepared for inference with
 * max_batch 256). Returns 0, CAIRN_EINVAL (bad params or dataset shape), CAIRN_ENOMEM, or a
 * layer's error; *out is NULL on failure.
 */
int cairn_train_model(cairn_model_arch a, const cairn_dataset *d, const cairn_train_params *p,
                      cairn_nn_model **out, cairn_train_result *res, cairn_error *err);

/*
 * Classification accuracy of m on d in BN eval mode (m's mode is restored afterwards). m is
 * (re)prepared for inference with max_batch 256, so any training buffers are released.
 * *acc receives correct / d->n. Returns 0 or a negative code.
 */
int cairn_eval_accuracy(cairn_nn_model *m, const cairn_dataset *d, double *acc, cairn_error *err);

/*
 * Saves m as GGUF at path with training metadata added to cairn_nn_save_to_writer's:
 *   cairn.model.arch ("edge"/"foundation"/"foundation-res"), cairn.train.dataset ("fashion-mnist"),
 *   cairn.train.seed (u64), cairn.train.epochs (u32), cairn.train.batch_size (u32),
 *   cairn.train.lr (f32), cairn.train.augment (bool), cairn.train.augmix (bool),
 *   cairn.train.jsd_lambda (f32), cairn.train.accuracy (f32, training),
 *   cairn.train.test_accuracy (f32; < 0: not measured).
 * Returns 0 or a negative code.
 */
int cairn_train_save(const cairn_nn_model *m, cairn_model_arch a, const cairn_train_params *p,
                     const cairn_train_result *res, double test_accuracy, const char *path,
                     cairn_error *err);

#endif
