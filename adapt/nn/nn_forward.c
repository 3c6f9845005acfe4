/*
 * adapt/nn/nn_forward.c — forward kernels (NCHW float32), the model's forward pass, and the
 * softmax family. Forward half: needs no BLAS and allocates nothing.
 */
#include "adapt/nn/nn_internal.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* ---- Convolution --------------------------------------------------------------------------- */

/*
 * im2col for one sample: col has IC*K*K rows (row (ic*K + kh)*K + kw) and OH*OW columns, so that
 * the convolution is one product weight[OC, IC*K*K] x col. Padding reads as 0.
 */
void cairn_nn__im2col(const cairn_nn__layer *l, const float *x, float *col)
{
    const int K = l->kernel, S = l->stride, P = l->padding;
    const int H = l->in_h, W = l->in_w, OH = l->out_h, OW = l->out_w;
    for (int ic = 0; ic < l->in_c; ic++)
        for (int kh = 0; kh < K; kh++)
            for (int kw = 0; kw < K; kw++) {
                float *row = col + ((size_t)(ic * K + kh) * K + kw) * OH * OW;
                const float *xc = x + (size_t)ic * H * W;
                for (int oh = 0; oh < OH; oh++) {
                    int ih = oh * S - P + kh;
                    float *r = row + (size_t)oh * OW;
                    if (ih < 0 || ih >= H) {
                        memset(r, 0, (size_t)OW * sizeof(float));
                        continue;
                    }
                    for (int ow = 0; ow < OW; ow++) {
                        int iw = ow * S - P + kw;
                        r[ow] = (iw >= 0 && iw < W) ? xc[(size_t)ih * W + iw] : 0.0f;
                    }
                }
            }
}

static void conv_forward(cairn_nn_model *m, const cairn_nn__layer *l, const float *x, float *y,
                         int n)
{
    const float *w = m->params[l->p_weight].value.data;
    const float *b = l->p_bias >= 0 ? m->params[l->p_bias].value.data : NULL;
    const int kc = l->in_c * l->kernel * l->kernel, pix = l->out_h * l->out_w;
    const size_t in_sz = (size_t)l->in_c * l->in_h * l->in_w, out_sz = (size_t)l->out_c * pix;
    const int direct = l->kernel == 1 && l->stride == 1 && l->padding == 0;
    for (int s = 0; s < n; s++) {
        const float *xs = x + s * in_sz;
        float *ys = y + s * out_sz;
        const float *col = xs; /* a 1x1 stride-1 convolution needs no im2col */
        if (!direct) {
            cairn_nn__im2col(l, xs, m->col);
            col = m->col;
        }
        m->sgemm(0, 0, l->out_c, pix, kc, 1.0f, w, kc, col, pix, 0.0f, ys, pix);
        if (b)
            for (int oc = 0; oc < l->out_c; oc++) {
                float *yc = ys + (size_t)oc * pix;
                for (int p = 0; p < pix; p++)
                    yc[p] += b[oc];
            }
    }
}

/* ---- Batchnorm ----------------------------------------------------------------------------- */

static void bn_forward(cairn_nn_model *m, const cairn_nn__layer *l, const float *x, float *y, int n,
                       cairn_nn_bn_mode mode)
{
    const int C = l->in_c;
    const size_t hw = (size_t)l->in_h * l->in_w, M = (size_t)n * hw;
    const float *gamma = m->params[l->p_weight].value.data;
    const float *beta = m->params[l->p_bias].value.data;
    float *rmean = m->params[l->p_mean].value.data, *rvar = m->params[l->p_var].value.data;
    for (int c = 0; c < C; c++) {
        float mean, var;
        if (mode == CAIRN_NN_BN_EVAL) {
            mean = rmean[c];
            var = rvar[c];
        } else {
            /* Two passes in double: the statistics feed running averages for many steps. */
            double s = 0.0, ss = 0.0;
            for (int i = 0; i < n; i++) {
                const float *xc = x + ((size_t)i * C + c) * hw;
                for (size_t j = 0; j < hw; j++)
                    s += xc[j];
            }
            double mu = s / (double)M;
            for (int i = 0; i < n; i++) {
                const float *xc = x + ((size_t)i * C + c) * hw;
                for (size_t j = 0; j < hw; j++)
                    ss += (xc[j] - mu) * (xc[j] - mu);
            }
            double v = ss / (double)M; /* biased: what normalisation uses */
            mean = (float)mu;
            var = (float)v;
            if (mode == CAIRN_NN_BN_TRAIN) {
                /* PyTorch's rule: the running variance takes the unbiased estimate. */
                double unbiased = ss / (double)(M - 1);
                rmean[c] = (1.0f - l->momentum) * rmean[c] + l->momentum * (float)mu;
                rvar[c] = (1.0f - l->momentum) * rvar[c] + l->momentum * (float)unbiased;
            }
        }
        float invstd = 1.0f / sqrtf(var + l->eps);
        l->bn_mean[c] = mean;
        l->bn_invstd[c] = invstd;
        float scale = gamma[c] * invstd, shift = beta[c] - mean * scale;
        for (int i = 0; i < n; i++) {
            const float *xc = x + ((size_t)i * C + c) * hw;
            float *yc = y + ((size_t)i * C + c) * hw;
            for (size_t j = 0; j < hw; j++)
                yc[j] = xc[j] * scale + shift;
        }
    }
}

/* ---- Linear, ReLU, pooling ----------------------------------------------------------------- */

static void linear_forward(cairn_nn_model *m, const cairn_nn__layer *l, const float *x, float *y,
                           int n)
{
    const int in = l->in_c * l->in_h * l->in_w, out = l->out_c;
    const float *w = m->params[l->p_weight].value.data;
    /* y[n, out] = x[n, in] * W^T */
    m->sgemm(0, 1, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
    if (l->p_bias >= 0) {
        const float *b = m->params[l->p_bias].value.data;
        for (int s = 0; s < n; s++)
            for (int o = 0; o < out; o++)
                y[(size_t)s * out + o] += b[o];
    }
}

static void maxpool_forward(const cairn_nn__layer *l, const float *x, float *y, int n)
{
    const int K = l->kernel, S = l->stride, H = l->in_h, W = l->in_w;
    const int OH = l->out_h, OW = l->out_w;
    const size_t in_sz = (size_t)l->in_c * H * W, out_sz = (size_t)l->out_c * OH * OW;
    for (int s = 0; s < n; s++)
        for (int c = 0; c < l->in_c; c++) {
            const float *xc = x + s * in_sz + (size_t)c * H * W;
            float *yc = y + s * out_sz + (size_t)c * OH * OW;
            int *ac = l->argmax + s * out_sz + (size_t)c * OH * OW;
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    float best = -FLT_MAX;
                    int bi = (oh * S) * W + ow * S;
                    for (int kh = 0; kh < K; kh++)
                        for (int kw = 0; kw < K; kw++) {
                            int idx = (oh * S + kh) * W + ow * S + kw;
                            if (xc[idx] > best) best = xc[idx], bi = idx;
                        }
                    yc[oh * OW + ow] = xc[bi];
                    ac[oh * OW + ow] = c * H * W + bi; /* index within the sample */
                }
        }
}

static void avgpool_forward(const cairn_nn__layer *l, const float *x, float *y, int n)
{
    const int K = l->kernel, S = l->stride, H = l->in_h, W = l->in_w;
    const int OH = l->out_h, OW = l->out_w;
    const float inv = 1.0f / (float)(K * K);
    for (size_t sc = 0; sc < (size_t)n * l->in_c; sc++) {
        const float *xc = x + sc * H * W;
        float *yc = y + sc * OH * OW;
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                float acc = 0.0f;
                for (int kh = 0; kh < K; kh++)
                    for (int kw = 0; kw < K; kw++)
                        acc += xc[(oh * S + kh) * W + ow * S + kw];
                yc[oh * OW + ow] = acc * inv;
            }
    }
}

static void gap_forward(const cairn_nn__layer *l, const float *x, float *y, int n)
{
    const size_t hw = (size_t)l->in_h * l->in_w;
    for (size_t sc = 0; sc < (size_t)n * l->in_c; sc++) {
        const float *xc = x + sc * hw;
        float acc = 0.0f;
        for (size_t j = 0; j < hw; j++)
            acc += xc[j];
        y[sc] = acc / (float)hw;
    }
}

/* ---- Residual block ------------------------------------------------------------------------ */

/*
 * y = relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x)); keeps conv1's, relu's, conv2's and the
 * projection conv's outputs for backward (the batchnorms' own inputs, as their backward needs).
 */
static void res_forward(cairn_nn_model *m, const cairn_nn__layer *l, const float *x, float *y,
                        int n, cairn_nn_bn_mode mode)
{
    const cairn_nn__layer *sub = l->sub;
    const size_t cnt = (size_t)n * l->out_c * l->out_h * l->out_w;
    conv_forward(m, &sub[RES_CONV1], x, l->r_t1, n);
    bn_forward(m, &sub[RES_BN1], l->r_t1, l->r_u, n, mode);
    for (size_t j = 0; j < cnt; j++)
        l->r_u[j] = l->r_u[j] > 0.0f ? l->r_u[j] : 0.0f;
    conv_forward(m, &sub[RES_CONV2], l->r_u, l->r_t4, n);
    bn_forward(m, &sub[RES_BN2], l->r_t4, y, n, mode);
    const float *skip = x;
    if (l->n_sub == 6) {
        conv_forward(m, &sub[RES_PCONV], x, l->r_p1, n);
        bn_forward(m, &sub[RES_PBN], l->r_p1, m->res_s[0], n, mode);
        skip = m->res_s[0];
    }
    for (size_t j = 0; j < cnt; j++) {
        float v = y[j] + skip[j];
        y[j] = v > 0.0f ? v : 0.0f;
    }
}

/* ---- The model ----------------------------------------------------------------------------- */

int cairn_nn_forward(cairn_nn_model *m, const float *x, int n, const float **out, cairn_error *err)
{
    if (!m->prepared) return cairn_errorf(err, CAIRN_ESTATE, "nn: forward before prepare");
    if (n < 1 || n > m->max_batch)
        return cairn_errorf(err, CAIRN_ERANGE, "nn: batch %d outside 1..%d", n, m->max_batch);
    const cairn_nn_bn_mode mode = m->bn_mode;
    if (mode != CAIRN_NN_BN_EVAL)
        for (int i = 0; i < m->n_layers; i++) {
            const cairn_nn__layer *l = &m->layers[i];
            if ((l->type == CAIRN_NN_BATCHNORM2D && (size_t)n * l->in_h * l->in_w < 2) ||
                (l->type == CAIRN_NN_RESBLOCK && (size_t)n * l->out_h * l->out_w < 2))
                return cairn_errorf(err, CAIRN_ERANGE,
                                    "nn: batchnorm layer %d needs more than 1 value per channel "
                                    "in a batch-statistics mode (batch %d)",
                                    i, n);
        }
    memcpy(m->act[0], x, (size_t)n * cairn_nn__act_size(m, 0) * sizeof(float));
    for (int i = 0; i < m->n_layers; i++) {
        const cairn_nn__layer *l = &m->layers[i];
        const float *in = m->act[i];
        float *y = m->act[i + 1];
        switch (l->type) {
        case CAIRN_NN_CONV2D:
            conv_forward(m, l, in, y, n);
            break;
        case CAIRN_NN_BATCHNORM2D:
            bn_forward(m, l, in, y, n, mode);
            break;
        case CAIRN_NN_LINEAR:
            linear_forward(m, l, in, y, n);
            break;
        case CAIRN_NN_RELU: {
            size_t cnt = (size_t)n * cairn_nn__act_size(m, i);
            for (size_t j = 0; j < cnt; j++)
                y[j] = in[j] > 0.0f ? in[j] : 0.0f;
            break;
        }
        case CAIRN_NN_MAXPOOL2D:
            maxpool_forward(l, in, y, n);
            break;
        case CAIRN_NN_AVGPOOL2D:
            avgpool_forward(l, in, y, n);
            break;
        case CAIRN_NN_GLOBAL_AVGPOOL:
            gap_forward(l, in, y, n);
            break;
        case CAIRN_NN_FLATTEN:
            break; /* act[i + 1] aliases act[i] */
        case CAIRN_NN_RESBLOCK:
            res_forward(m, l, in, y, n, mode);
            break;
        }
    }
    m->last_n = n;
    m->last_bn = mode;
    *out = m->act[m->n_layers];
    return 0;
}

/* ---- Softmax family ------------------------------------------------------------------------ */

void cairn_nn_softmax(const float *x, int n, int k, float *y)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * k;
        float *yi = y + (size_t)i * k;
        float mx = xi[0];
        for (int j = 1; j < k; j++)
            mx = xi[j] > mx ? xi[j] : mx;
        float s = 0.0f;
        for (int j = 0; j < k; j++)
            s += (yi[j] = expf(xi[j] - mx));
        float inv = 1.0f / s;
        for (int j = 0; j < k; j++)
            yi[j] *= inv;
    }
}

void cairn_nn_log_softmax(const float *x, int n, int k, float *y)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * k;
        float *yi = y + (size_t)i * k;
        float mx = xi[0];
        for (int j = 1; j < k; j++)
            mx = xi[j] > mx ? xi[j] : mx;
        float s = 0.0f;
        for (int j = 0; j < k; j++)
            s += expf(xi[j] - mx);
        float lse = mx + logf(s);
        for (int j = 0; j < k; j++)
            yi[j] = xi[j] - lse;
    }
}

void cairn_nn_entropy(const float *logits, int n, int k, float *h)
{
    for (int i = 0; i < n; i++) {
        const float *zi = logits + (size_t)i * k;
        float mx = zi[0];
        for (int j = 1; j < k; j++)
            mx = zi[j] > mx ? zi[j] : mx;
        float s = 0.0f;
        for (int j = 0; j < k; j++)
            s += expf(zi[j] - mx);
        float lse = mx + logf(s);
        /* H = -sum p log p with log p = z - lse; terms with p underflowing to 0 contribute 0. */
        float acc = 0.0f;
        for (int j = 0; j < k; j++) {
            float lp = zi[j] - lse;
            acc -= expf(lp) * lp;
        }
        h[i] = acc;
    }
}
