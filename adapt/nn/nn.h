/*
 * adapt/nn/nn.h — small CNNs for cloud–edge adaptation: the forward half.
 *
 * A cairn_nn_model is a sequential stack of layers over NCHW float32 batches. Build it with
 * cairn_nn_model_new and cairn_nn_add_*, then cairn_nn_model_prepare sizes every activation and
 * workspace buffer for a maximum batch, so that cairn_nn_forward never allocates. Parameters
 * carry PyTorch-style names ("conv1.weight", "bn1.running_mean") so that checkpoints stay readable.
 *
 * This header and its files (tensor.c, nn_model.c, nn_forward.c, gemm.c) are the forward half: what
 * an edge device links. They need only libc, libm and common/, not OpenBLAS: matrix products go
 * through a cairn_nn_sgemm_fn chosen per model, by default a portable C implementation.
 * Training (backward, losses, SGD, the OpenBLAS sgemm) lives in adapt/nn/nn_train.h.
 *
 * Thread-safety: a model is not thread-safe; use one model per thread (or guard it). Distinct
 * models share nothing.
 */
#ifndef CAIRN_ADAPT_NN_NN_H
#define CAIRN_ADAPT_NN_NN_H

#include <stddef.h>
#include <stdint.h>

#include "adapt/nn/tensor.h"
#include "common/error.h"

/* ---- Matrix product ------------------------------------------------------------------------ */

/*
 * Row-major C = alpha * op(A) * op(B) + beta * C, with op(X) = X or X^T (trans != 0), op(A) M x K,
 * op(B) K x N; lda/ldb/ldc are row strides as in cblas with CblasRowMajor. beta == 0 overwrites C
 * (NaNs in C do not propagate).
 */
typedef void (*cairn_nn_sgemm_fn)(int trans_a, int trans_b, int m, int n, int k, float alpha,
                                  const float *a, int lda, const float *b, int ldb, float beta,
                                  float *c, int ldc);

/* Portable C sgemm (no BLAS). Thread-safe. */
void cairn_nn_sgemm_portable(int trans_a, int trans_b, int m, int n, int k, float alpha,
                             const float *a, int lda, const float *b, int ldb, float beta, float *c,
                             int ldc);

/* ---- Layers and parameters ----------------------------------------------------------------- */

typedef enum {
    CAIRN_NN_CONV2D,
    CAIRN_NN_BATCHNORM2D,
    CAIRN_NN_LINEAR,
    CAIRN_NN_RELU,
    CAIRN_NN_MAXPOOL2D,
    CAIRN_NN_AVGPOOL2D,
    CAIRN_NN_GLOBAL_AVGPOOL,
    CAIRN_NN_FLATTEN,
    CAIRN_NN_RESBLOCK,
} cairn_nn_layer_type;

/* What a named tensor of the model is. Running statistics are state, not trainable parameters. */
typedef enum {
    CAIRN_NN_WEIGHT,       /* conv / linear weight */
    CAIRN_NN_BIAS,         /* conv / linear bias */
    CAIRN_NN_NORM_WEIGHT,  /* batchnorm gamma */
    CAIRN_NN_NORM_BIAS,    /* batchnorm beta */
    CAIRN_NN_RUNNING_MEAN, /* batchnorm running mean (not trainable) */
    CAIRN_NN_RUNNING_VAR,  /* batchnorm running variance (not trainable) */
} cairn_nn_param_kind;

#define CAIRN_NN_NAME_MAX 64

/*
 * A named tensor of the model: a trainable parameter or a running statistic. The model owns
 * value.data and grad; callers may read and write the values in place (e.g. to apply an update
 * bundle) but not change shapes. grad is NULL unless the model was prepared for training or the
 * tensor is not trainable.
 */
typedef struct cairn_nn_param {
    char name[CAIRN_NN_NAME_MAX];
    cairn_tensor value;
    float *grad;
    cairn_nn_param_kind kind;
    cairn_nn_layer_type layer_type;
    int layer;         /* index of the owning layer */
    int trainable;     /* 0 for running statistics */
    int requires_grad; /* backward computes grad (see cairn_nn_set_requires_grad in nn_train.h) */
} cairn_nn_param;

/* Batchnorm behaviour, set per model (cairn_nn_set_bn_mode). */
typedef enum {
    CAIRN_NN_BN_TRAIN, /* normalise with batch statistics and update the running statistics */
    CAIRN_NN_BN_EVAL,  /* normalise with the running statistics */
    CAIRN_NN_BN_BATCH, /* test-time batch statistics: normalise with the current batch's
                          statistics, leave the running statistics untouched (TTA baselines) */
} cairn_nn_bn_mode;

typedef struct cairn_nn_model cairn_nn_model;

/*
 * Creates an empty model whose input is one C x H x W image per sample. The caller owns *out and
 * releases it with cairn_nn_model_free. Returns 0, CAIRN_EINVAL or CAIRN_ENOMEM.
 */
int cairn_nn_model_new(cairn_nn_model **out, int c, int h, int w, cairn_error *err);

/* Releases the model, its parameters and buffers. NULL is a no-op. */
void cairn_nn_model_free(cairn_nn_model *m);

/*
 * Layer builders: each appends one layer after the last, checks that its shape fits the current
 * output shape, and allocates its parameters (named "<name>.weight" etc.; name may be NULL for
 * layers without parameters). They return 0, CAIRN_EINVAL for a bad configuration or shape,
 * CAIRN_ESTATE after cairn_nn_model_prepare, or CAIRN_ENOMEM.
 * Conv and linear weights follow PyTorch layouts: [OC, IC, KH, KW] and [OUT, IN].
 */
int cairn_nn_add_conv2d(cairn_nn_model *m, const char *name, int out_c, int kernel, int stride,
                        int padding, int bias, cairn_error *err);
/* eps: added to the variance (1e-5 usual); momentum: running = (1 - momentum) * running +
 * momentum * batch (PyTorch convention, 0.1 usual; the running variance takes the unbiased batch
 * variance). */
int cairn_nn_add_batchnorm2d(cairn_nn_model *m, const char *name, float eps, float momentum,
                             cairn_error *err);
/* Treats each sample's C*H*W values as features; the output shape is [out, 1, 1]. */
int cairn_nn_add_linear(cairn_nn_model *m, const char *name, int out, int bias, cairn_error *err);
int cairn_nn_add_relu(cairn_nn_model *m, cairn_error *err);
/* Pools without padding; the output size is floor((H - kernel) / stride) + 1. */
int cairn_nn_add_maxpool2d(cairn_nn_model *m, int kernel, int stride, cairn_error *err);
int cairn_nn_add_avgpool2d(cairn_nn_model *m, int kernel, int stride, cairn_error *err);
/* Averages each channel over H x W: output [C, 1, 1]. */
int cairn_nn_add_global_avgpool(cairn_nn_model *m, cairn_error *err);
/* Output [C*H*W, 1, 1]; costs nothing (it aliases its input). */
int cairn_nn_add_flatten(cairn_nn_model *m, cairn_error *err);
/*
 * A residual block (He et al., CVPR 2016, the "basic block"):
 *   y = relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x))
 * conv1 3x3 with `stride`, conv2 3x3 stride 1, both padding 1 and without bias; skip is the
 * identity when the shape is kept (stride 1, out_c == C), else a 1x1 convolution with `stride`
 * and its own batchnorm ("projection"). Tensors: "<name>.conv1.weight", "<name>.bn1.weight|bias|
 * running_mean|running_var", the same for conv2/bn2, and "<name>.proj.weight", "<name>.pbn.*"
 * with a projection. Its batchnorms are ordinary norm parameters (CAIRN_NN_NORM_WEIGHT ...,
 * layer_type CAIRN_NN_BATCHNORM2D), so norm-only adaptation and bundles see them; eps and
 * momentum as for cairn_nn_add_batchnorm2d.
 */
int cairn_nn_add_resblock(cairn_nn_model *m, const char *name, int out_c, int stride, float eps,
                          float momentum, cairn_error *err);

typedef struct cairn_nn_model_params {
    int max_batch;           /* largest batch cairn_nn_forward will see (default 64) */
    int training;            /* 1: also allocate gradients and backward workspaces (default 0) */
    cairn_nn_sgemm_fn sgemm; /* default cairn_nn_sgemm_portable; cloud code passes
                                cairn_nn_sgemm_blas from nn_train.h */
} cairn_nn_model_params;

cairn_nn_model_params cairn_nn_model_default_params(void);

/*
 * Freezes the layer list and allocates every activation, gradient and workspace buffer for
 * p->max_batch samples. May be called again to resize or to switch training on or off (buffers
 * and gradients are reallocated, zeroed; parameter values are kept; a backward then needs a new
 * forward). Returns 0, CAIRN_EINVAL (no layers, bad params) or CAIRN_ENOMEM.
 */
int cairn_nn_model_prepare(cairn_nn_model *m, const cairn_nn_model_params *p, cairn_error *err);

/*
 * Initialises weights reproducibly from seed: conv/linear weights uniform in +-sqrt(6 / fan_in)
 * (He), biases 0, batchnorm gamma 1, beta 0, running mean 0, running variance 1.
 */
void cairn_nn_model_init_params(cairn_nn_model *m, uint64_t seed);

/* Sets how every batchnorm layer normalises from now on. Default CAIRN_NN_BN_EVAL. */
void cairn_nn_set_bn_mode(cairn_nn_model *m, cairn_nn_bn_mode mode);
cairn_nn_bn_mode cairn_nn_get_bn_mode(const cairn_nn_model *m);

/* Number of layers, and the type of layer i (0-based). */
int cairn_nn_layer_count(const cairn_nn_model *m);
cairn_nn_layer_type cairn_nn_layer_type_of(const cairn_nn_model *m, int i);

/* Per-sample input and output shapes (C, H, W) and their element counts. */
void cairn_nn_input_shape(const cairn_nn_model *m, int *c, int *h, int *w);
void cairn_nn_output_shape(const cairn_nn_model *m, int *c, int *h, int *w);
size_t cairn_nn_output_size(const cairn_nn_model *m);

/*
 * Named tensors (trainable parameters and running statistics) in layer order. The model owns
 * them; a pointer stays valid until the next cairn_nn_add_* or cairn_nn_model_free.
 * cairn_nn_param_at returns NULL for a bad index, cairn_nn_param_find when the name is absent.
 */
int cairn_nn_param_count(const cairn_nn_model *m);
cairn_nn_param *cairn_nn_param_at(cairn_nn_model *m, int i);
cairn_nn_param *cairn_nn_param_find(cairn_nn_model *m, const char *name);

/* Sum of the element counts of the trainable parameters. */
size_t cairn_nn_trainable_count(const cairn_nn_model *m);

/*
 * Runs the model on n samples (x: n * C*H*W floats, copied in). On success *out points at the
 * model-owned output (n * cairn_nn_output_size floats), valid until the next forward or free.
 * Allocates nothing. Returns 0, CAIRN_ESTATE before prepare, or CAIRN_ERANGE when n is outside
 * 1..max_batch, or when a batchnorm in a batch-statistics mode would see a single value per
 * channel (n * H * W == 1: no variance to estimate).
 */
int cairn_nn_forward(cairn_nn_model *m, const float *x, int n, const float **out, cairn_error *err);

/* ---- Softmax family (row-wise over n rows of k classes) ------------------------------------- */

/* y = softmax(x) per row; y may equal x. Numerically stable (subtracts the row max). */
void cairn_nn_softmax(const float *x, int n, int k, float *y);
/* y = log_softmax(x) per row; y may equal x. */
void cairn_nn_log_softmax(const float *x, int n, int k, float *y);
/* h[i] = -sum_j p_ij log p_ij with p = softmax(logits row i), in nats. */
void cairn_nn_entropy(const float *logits, int n, int k, float *h);

#endif
