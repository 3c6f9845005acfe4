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
    /* Residual block: its convs and batchnorms (RES_* order; n_sub 4, or 6 with a projection),
     * run by the block, and the inner activations backward needs (max_batch samples each). */
    struct cairn_nn__layer *sub;
    int n_sub;
    float *r_t1; /* conv1 output (bn1's input) */
    float *r_u;  /* relu(bn1(...)) (conv2's input) */
    float *r_t4; /* conv2 output (bn2's input) */
    float *r_p1; /* projection conv output (pbn's input), NULL without a projection */
} cairn_nn__layer;

/* Indices into a residual block's sub-layers. */
#define CAIRN_NN__MAX_RES_STRIDE 8
enum { RES_CONV1, RES_BN1, RES_CONV2, RES_BN2, RES_PCONV, RES_PBN };

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
    float *res_store;  /* residual blocks' kept activations */
    float *res_s[3];   /* residual scratch, max activation * max_batch each ([1], [2]: training) */

    int last_n;               /* batch of the last forward; 0: none since prepare */
    cairn_nn_bn_mode last_bn; /* batchnorm mode that forward used */
};

/* im2col of one sample for a conv layer (nn_forward.c; backward reuses it). */
void cairn_nn__im2col(const cairn_nn__layer *l, const float *x, float *col);

/* Per-sample element count of layer i's input (i == n_layers: the model output). */
size_t cairn_nn__act_size(const cairn_nn_model *m, int i);

#endif
