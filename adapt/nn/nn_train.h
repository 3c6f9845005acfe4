/*
 * adapt/nn/nn_train.h — the training half of adapt/nn: backward passes, losses, SGD with
 * parameter groups, and the OpenBLAS sgemm. Cloud-side only (links OpenBLAS); edge devices use
 * adapt/nn/nn.h alone.
 *
 * Losses take logits and write their gradient with respect to those logits, which is what
 * cairn_nn_backward consumes. Reductions are means over the batch: with per-sample weights w,
 * loss = (1/n) sum_i w_i * l_i (w == NULL means all 1).
 *
 * Thread-safety: as for nn.h — a model and an optimizer are used from one thread at a time.
 */
#ifndef CAIRN_ADAPT_NN_NN_TRAIN_H
#define CAIRN_ADAPT_NN_NN_TRAIN_H

#include "adapt/nn/nn.h"

/* OpenBLAS cblas_sgemm behind the cairn_nn_sgemm_fn signature. Thread-safe. */
void cairn_nn_sgemm_blas(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                         int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* ---- Backward ------------------------------------------------------------------------------ */

/* Sets every trainable parameter's gradient to 0. No-op when not prepared for training. */
void cairn_nn_zero_grad(cairn_nn_model *m);

/*
 * Backpropagates dout (the loss gradient w.r.t. the last forward's output, n * output_size floats)
 * through the layers of the last cairn_nn_forward, in the batchnorm mode that forward used.
 * Parameter gradients are ADDED to param->grad (call cairn_nn_zero_grad between steps). When dx is
 * not NULL it receives the gradient w.r.t. the model input (n * C*H*W floats). Parameters with
 * requires_grad off (cairn_nn_set_requires_grad) get no gradient, which saves their weight-gradient
 * products. Allocates nothing. Returns 0 or CAIRN_ESTATE (not prepared for training, or no forward
 * since prepare).
 */
int cairn_nn_backward(cairn_nn_model *m, const float *dout, float *dx, cairn_error *err);

/* Selects parameters; ctx is the caller's. */
typedef int (*cairn_nn_param_pred)(const cairn_nn_param *p, void *ctx);

/* Predicates: every trainable parameter; batchnorm gamma and beta only ("norm affine"). */
int cairn_nn_pred_all(const cairn_nn_param *p, void *ctx);
int cairn_nn_pred_norm_affine(const cairn_nn_param *p, void *ctx);

/*
 * Turns gradient computation on (on != 0) or off for the trainable parameters pred selects.
 * Returns how many parameters it changed. Gradients are on for all after prepare.
 */
int cairn_nn_set_requires_grad(cairn_nn_model *m, cairn_nn_param_pred pred, void *ctx, int on);

/* ---- Softmax backward ------------------------------------------------------------------------ */

/* Given y = softmax(x) and dy, dx_ij = y_ij (dy_ij - sum_l dy_il y_il). dx may equal dy. */
void cairn_nn_softmax_backward(const float *y, const float *dy, int n, int k, float *dx);
/* Given y = log_softmax(x) and dy, dx_ij = dy_ij - exp(y_ij) sum_l dy_il. dx may equal dy. */
void cairn_nn_log_softmax_backward(const float *y, const float *dy, int n, int k, float *dx);

/* ---- Losses (from logits; n rows of k classes) --------------------------------------------- */

/*
 * Cross-entropy with integer labels: *loss = (1/n) sum_i w_i * (-log softmax(logits_i)[label_i]).
 * dlogits (may be NULL) receives the gradient. Returns 0, or CAIRN_ERANGE for a label outside
 * 0..k-1 (nothing is written then).
 */
int cairn_nn_cross_entropy(const float *logits, const int *labels, const float *w, int n, int k,
                           float *loss, float *dlogits, cairn_error *err);

/*
 * KL(p || q) per row with p = softmax(logits_p) (target, e.g. the foundation model) and
 * q = softmax(logits_q) (the model being trained): returns
 * (1/n) sum_i w_i sum_j p_ij log(p_ij / q_ij).
 * dlogits_q and dlogits_p (each may be NULL) receive the gradients w.r.t. each side's logits.
 */
float cairn_nn_kl_div(const float *logits_p, const float *logits_q, const float *w, int n, int k,
                      float *dlogits_p, float *dlogits_q);

/*
 * Entropy minimisation loss: returns (1/n) sum_i w_i H(softmax(logits_i)), H in nats; dlogits
 * (may be NULL) receives dH/dz_j = -p_j (log p_j + H) scaled by w_i / n.
 */
float cairn_nn_entropy_loss(const float *logits, const float *w, int n, int k, float *dlogits);

/*
 * Jensen–Shannon consistency of `views` predictions of the same n samples (AugMix, Hendrycks et
 * al., ICLR 2020): logits holds views * n rows, view-major (row v * n + i is view v of sample i).
 * Returns (1/n) sum_i (1/V) sum_v KL(p_vi || M_i), M_i the mean of the views' softmaxes (clamped
 * at 1e-7 before the log, as the paper's code). dlogits (may be NULL; same layout) receives the
 * gradient. views in 2..CAIRN_NN_JSD_MAX_VIEWS, k in 1..CAIRN_NN_JSD_MAX_K (asserted).
 */
#define CAIRN_NN_JSD_MAX_VIEWS 4
#define CAIRN_NN_JSD_MAX_K     64
float cairn_nn_jsd_loss(const float *logits, int views, int n, int k, float *dlogits);

/* ---- SGD with parameter groups ------------------------------------------------------------- */

typedef struct cairn_nn_sgd cairn_nn_sgd;

typedef struct cairn_nn_sgd_params {
    float lr;           /* default 0.01 */
    float momentum;     /* default 0 */
    float weight_decay; /* L2, added to the gradient: g = grad + wd * w (default 0) */
} cairn_nn_sgd_params;

cairn_nn_sgd_params cairn_nn_sgd_default_params(void);

/*
 * Creates an optimizer over m with no groups (so it updates nothing until a group is added). The
 * caller owns *out (cairn_nn_sgd_free); m must outlive it and be prepared for training.
 * Returns 0, CAIRN_ESTATE (m not prepared for training) or CAIRN_ENOMEM.
 */
int cairn_nn_sgd_new(cairn_nn_sgd **out, cairn_nn_model *m, cairn_error *err);
void cairn_nn_sgd_free(cairn_nn_sgd *o);

/*
 * Adds a group of the trainable parameters pred selects, with its own hyper-parameters. A
 * parameter already in an earlier group stays there; parameters in no group are frozen (never
 * updated). Returns the group index (>= 0), or CAIRN_EINVAL (bad hyper-parameters),
 * CAIRN_ENOMEM. A group may be empty.
 */
int cairn_nn_sgd_add_group(cairn_nn_sgd *o, cairn_nn_param_pred pred, void *ctx,
                           const cairn_nn_sgd_params *p, cairn_error *err);

/* Number of parameter tensors in group g (0 for a bad index). */
int cairn_nn_sgd_group_size(const cairn_nn_sgd *o, int g);
/* Changes group g's learning rate (schedules). Ignored for a bad index. */
void cairn_nn_sgd_set_lr(cairn_nn_sgd *o, int g, float lr);

/*
 * One step over every group (PyTorch's SGD without dampening or Nesterov):
 *   g = grad + wd * w;  v = momentum * v + g;  w -= lr * v
 * (v starts at 0, so with momentum 0, v = g). Parameters without a gradient buffer are skipped.
 */
void cairn_nn_sgd_step(cairn_nn_sgd *o);

/* Forgets the momentum buffers (e.g. after a model reset). */
void cairn_nn_sgd_reset(cairn_nn_sgd *o);

#endif
