/*
 * adapt/nn/nn_internal.h — the model's layout, shared by the forward and training halves of
 * adapt/nn. Not a public header: other folders use nn.h / nn_train.h.
 */
#ifndef CAIRN_ADAPT_NN_NN_INTERNAL_H
#define CAIRN_ADAPT_NN_NN_INTERNAL_H

#include "adapt/nn/nn.h"

typedef struct cairn_nn__layer {
    cairn_nn_layer_type type;
    int in_c, in_h, in_w;    /* per-sample input shape */
    int out_c, out_h, out_w; /* per-sample output shape */
    int kernel, stride, padding;
    int has_bias;
    float eps, momentum;  /* batchnorm */
    int p_weight, p_bias; /* indices into the model's params, -1 when absent */
    int p_mean, p_var;    /* batchnorm running statistics */
    /* Forward state kept for backward (allocated by prepare). */
    float *bn_mean, *bn_invstd; /* per channel: the statistics the last forward normalised with */
    int *argmax;                /* maxpool: flat input index per output element */
} cairn_nn__layer;

struct cairn_nn_model {
    int in_c, in_h, in_w;
    cairn_nn__layer *layers;
    int n_layers, cap_layers;
    cairn_nn_param *params;
    int n_params, cap_params;

    int prepared, training, max_batch;
    cairn_nn_sgemm_fn sgemm;
    cairn_nn_bn_mode bn_mode;

    /* act[i] is layer i's input, act[n_layers] the output; flatten aliases act[i+1] = act[i]. */
    float **act;
    float *act_store; /* one block holding every non-aliased activation */
    float *col;       /* im2col workspace: max over convs of IC*K*K * OH*OW */
    float *dcol;      /* backward: gradient of col */
    float *grad_a;    /* backward ping-pong buffers, max activation size * max_batch */
    float *grad_b;
    float *bn_store;   /* per-layer bn_mean/bn_invstd blocks */
    int *argmax_store; /* per-layer argmax blocks */

    int last_n;               /* batch of the last forward; 0: none since prepare */
    cairn_nn_bn_mode last_bn; /* batchnorm mode that forward used */
};

/* im2col of one sample for a conv layer (nn_forward.c; backward reuses it). */
void cairn_nn__im2col(const cairn_nn__layer *l, const float *x, float *col);

/* Per-sample element count of layer i's input (i == n_layers: the model output). */
size_t cairn_nn__act_size(const cairn_nn_model *m, int i);

#endif
