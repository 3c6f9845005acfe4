/*
 * adapt/nn/nn_backward.c — backward kernels and the model's backward pass (training half).
 * Gradients w.r.t. activations flow through two preallocated ping-pong buffers; parameter
 * gradients accumulate into param->grad. Nothing is allocated here.
 */
#include "adapt/nn/nn_internal.h"
#include "adapt/nn/nn_train.h"

#include <string.h>

/* The gradient buffer of a parameter when backward should fill it, else NULL. */
static float *grad_of(cairn_nn_model *m, int idx)
{
    if (idx < 0) return NULL;
    cairn_nn_param *p = &m->params[idx];
    return p->requires_grad ? p->grad : NULL;
}

/* Adds col (IC*K*K rows x OH*OW) back onto the sample's input gradient dx (zeroed by caller). */
static void col2im(const cairn_nn__layer *l, const float *col, float *dx)
{
    const int K = l->kernel, S = l->stride, P = l->padding;
    const int H = l->in_h, W = l->in_w, OH = l->out_h, OW = l->out_w;
    for (int ic = 0; ic < l->in_c; ic++)
        for (int kh = 0; kh < K; kh++)
            for (int kw = 0; kw < K; kw++) {
                const float *row = col + ((size_t)(ic * K + kh) * K + kw) * OH * OW;
                float *dc = dx + (size_t)ic * H * W;
                for (int oh = 0; oh < OH; oh++) {
                    int ih = oh * S - P + kh;
                    if (ih < 0 || ih >= H) continue;
                    for (int ow = 0; ow < OW; ow++) {
                        int iw = ow * S - P + kw;
                        if (iw >= 0 && iw < W) dc[(size_t)ih * W + iw] += row[oh * OW + ow];
                    }
                }
            }
}

static void conv_backward(cairn_nn_model *m, const cairn_nn__layer *l, const float *x,
                          const float *dy, float *dx, int n)
{
    const float *w = m->params[l->p_weight].value.data;
    float *dw = grad_of(m, l->p_weight), *db = grad_of(m, l->p_bias);
    const int kc = l->in_c * l->kernel * l->kernel, pix = l->out_h * l->out_w;
    const size_t in_sz = (size_t)l->in_c * l->in_h * l->in_w, out_sz = (size_t)l->out_c * pix;
    const int direct = l->kernel == 1 && l->stride == 1 && l->padding == 0;
    for (int s = 0; s < n; s++) {
        const float *xs = x + s * in_sz, *dys = dy + s * out_sz;
        if (dw) {
            const float *col = xs;
            if (!direct) {
                cairn_nn__im2col(l, xs, m->col);
                col = m->col;
            }
            /* dW[OC, kc] += dY[OC, pix] * col[kc, pix]^T */
            m->sgemm(0, 1, l->out_c, kc, pix, 1.0f, dys, pix, col, pix, 1.0f, dw, kc);
        }
        if (db)
            for (int oc = 0; oc < l->out_c; oc++) {
                const float *d = dys + (size_t)oc * pix;
                float acc = 0.0f;
                for (int p = 0; p < pix; p++)
                    acc += d[p];
                db[oc] += acc;
            }
        if (dx) {
            float *dxs = dx + s * in_sz;
            if (direct) {
                m->sgemm(1, 0, kc, pix, l->out_c, 1.0f, w, kc, dys, pix, 0.0f, dxs, pix);
            } else {
                /* dcol[kc, pix] = W[OC, kc]^T * dY[OC, pix] */
                m->sgemm(1, 0, kc, pix, l->out_c, 1.0f, w, kc, dys, pix, 0.0f, m->dcol, pix);
                memset(dxs, 0, in_sz * sizeof(float));
                col2im(l, m->dcol, dxs);
            }
        }
    }
}

/*
 * Batchnorm backward. With batch statistics (train and test-time modes) the mean and variance
 * depend on x: dx = gamma * invstd / M * (M dy - sum(dy) - xhat * sum(dy xhat)), sums over the
 * M = N*H*W values of a channel. In eval mode the statistics are constants: dx = gamma*invstd*dy.
 */
static void bn_backward(cairn_nn_model *m, const cairn_nn__layer *l, const float *x,
                        const float *dy, float *dx, int n, cairn_nn_bn_mode mode)
{
    const int C = l->in_c;
    const size_t hw = (size_t)l->in_h * l->in_w, M = (size_t)n * hw;
    const float *gamma = m->params[l->p_weight].value.data;
    float *dgamma = grad_of(m, l->p_weight), *dbeta = grad_of(m, l->p_bias);
    for (int c = 0; c < C; c++) {
        const float mean = l->bn_mean[c], invstd = l->bn_invstd[c];
        double sdy = 0.0, sdyx = 0.0;
        for (int i = 0; i < n; i++) {
            const size_t off = ((size_t)i * C + c) * hw;
            for (size_t j = 0; j < hw; j++) {
                float xh = (x[off + j] - mean) * invstd;
                sdy += dy[off + j];
                sdyx += dy[off + j] * xh;
            }
        }
        if (dgamma) dgamma[c] += (float)sdyx;
        if (dbeta) dbeta[c] += (float)sdy;
        if (!dx) continue;
        const float g = gamma[c] * invstd;
        if (mode == CAIRN_NN_BN_EVAL) {
            for (int i = 0; i < n; i++) {
                const size_t off = ((size_t)i * C + c) * hw;
                for (size_t j = 0; j < hw; j++)
                    dx[off + j] = g * dy[off + j];
            }
        } else {
            const float mdy = (float)(sdy / (double)M), mdyx = (float)(sdyx / (double)M);
            for (int i = 0; i < n; i++) {
                const size_t off = ((size_t)i * C + c) * hw;
                for (size_t j = 0; j < hw; j++) {
                    float xh = (x[off + j] - mean) * invstd;
                    dx[off + j] = g * (dy[off + j] - mdy - xh * mdyx);
                }
            }
        }
    }
}

static void linear_backward(cairn_nn_model *m, const cairn_nn__layer *l, const float *x,
                            const float *dy, float *dx, int n)
{
    const int in = l->in_c * l->in_h * l->in_w, out = l->out_c;
    const float *w = m->params[l->p_weight].value.data;
    float *dw = grad_of(m, l->p_weight), *db = grad_of(m, l->p_bias);
    if (dw) m->sgemm(1, 0, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
    if (db)
        for (int s = 0; s < n; s++)
            for (int o = 0; o < out; o++)
                db[o] += dy[(size_t)s * out + o];
    if (dx) m->sgemm(0, 0, n, in, out, 1.0f, dy, out, w, in, 0.0f, dx, in);
}

static void maxpool_backward(const cairn_nn__layer *l, const float *dy, float *dx, int n)
{
    const size_t in_sz = (size_t)l->in_c * l->in_h * l->in_w;
    const size_t out_sz = (size_t)l->out_c * l->out_h * l->out_w;
    memset(dx, 0, (size_t)n * in_sz * sizeof(float));
    for (int s = 0; s < n; s++) {
        const int *a = l->argmax + s * out_sz;
        for (size_t j = 0; j < out_sz; j++)
            dx[s * in_sz + (size_t)a[j]] += dy[s * out_sz + j];
    }
}

static void avgpool_backward(const cairn_nn__layer *l, const float *dy, float *dx, int n)
{
    const int K = l->kernel, S = l->stride, H = l->in_h, W = l->in_w;
    const int OH = l->out_h, OW = l->out_w;
    const float inv = 1.0f / (float)(K * K);
    memset(dx, 0, (size_t)n * l->in_c * H * W * sizeof(float));
    for (size_t sc = 0; sc < (size_t)n * l->in_c; sc++) {
        float *dc = dx + sc * H * W;
        const float *dyc = dy + sc * OH * OW;
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                float g = dyc[oh * OW + ow] * inv;
                for (int kh = 0; kh < K; kh++)
                    for (int kw = 0; kw < K; kw++)
                        dc[(oh * S + kh) * W + ow * S + kw] += g;
            }
    }
}

static void gap_backward(const cairn_nn__layer *l, const float *dy, float *dx, int n)
{
    const size_t hw = (size_t)l->in_h * l->in_w;
    for (size_t sc = 0; sc < (size_t)n * l->in_c; sc++) {
        float g = dy[sc] / (float)hw;
        for (size_t j = 0; j < hw; j++)
            dx[sc * hw + j] = g;
    }
}

/* ---- Residual block ------------------------------------------------------------------------ */

/*
 * Backward of res_forward. g = dy where the output was positive; the main path takes g back
 * through bn2, conv2, relu, bn1 and conv1 into dx; the skip adds g (identity) or its gradient
 * through pbn and the projection conv. dx may be NULL (parameter gradients only).
 */
static void res_backward(cairn_nn_model *m, const cairn_nn__layer *l, const float *x,
                         const float *y, const float *dy, float *dx, int n, cairn_nn_bn_mode mode)
{
    const cairn_nn__layer *sub = l->sub;
    const size_t cnt = (size_t)n * l->out_c * l->out_h * l->out_w;
    const size_t in_cnt = (size_t)n * l->in_c * l->in_h * l->in_w;
    float *g = m->res_s[0], *a = m->res_s[1], *b = m->res_s[2];
    for (size_t j = 0; j < cnt; j++)
        g[j] = y[j] > 0.0f ? dy[j] : 0.0f;
    bn_backward(m, &sub[RES_BN2], l->r_t4, g, a, n, mode);
    conv_backward(m, &sub[RES_CONV2], l->r_u, a, b, n);
    for (size_t j = 0; j < cnt; j++)
        if (!(l->r_u[j] > 0.0f)) b[j] = 0.0f;
    bn_backward(m, &sub[RES_BN1], l->r_t1, b, a, n, mode);
    conv_backward(m, &sub[RES_CONV1], x, a, dx, n);
    if (l->n_sub == 6) {
        bn_backward(m, &sub[RES_PBN], l->r_p1, g, a, n, mode);
        conv_backward(m, &sub[RES_PCONV], x, a, dx ? b : NULL, n);
        if (dx)
            for (size_t j = 0; j < in_cnt; j++)
                dx[j] += b[j];
    } else if (dx) {
        for (size_t j = 0; j < cnt; j++)
            dx[j] += g[j];
    }
}

/* ---- The model ----------------------------------------------------------------------------- */

void cairn_nn_zero_grad(cairn_nn_model *m)
{
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].grad)
            memset(m->params[i].grad, 0, m->params[i].value.numel * sizeof(float));
}

int cairn_nn_backward(cairn_nn_model *m, const float *dout, float *dx, cairn_error *err)
{
    if (!m->prepared || !m->training)
        return cairn_errorf(err, CAIRN_ESTATE, "nn: backward needs a model prepared for training");
    if (m->last_n == 0) return cairn_errorf(err, CAIRN_ESTATE, "nn: backward without a forward");
    const int n = m->last_n;

    /* Below the first layer with a parameter needing a gradient, only dx would need the input
     * gradients; stop there when the caller does not want dx. */
    int stop = m->n_layers;
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].requires_grad && m->params[i].grad && m->params[i].layer < stop)
            stop = m->params[i].layer;
    if (dx) stop = 0;

    const float *gy = dout;
    for (int i = m->n_layers - 1; i >= stop; i--) {
        const cairn_nn__layer *l = &m->layers[i];
        const float *x = m->act[i];
        const int want_dx = i > stop || dx != NULL;
        float *gx = NULL;
        if (want_dx) {
            if (i == 0)
                gx = dx;
            else
                gx = gy == m->grad_a ? m->grad_b : m->grad_a;
        }
        switch (l->type) {
        case CAIRN_NN_CONV2D:
            conv_backward(m, l, x, gy, gx, n);
            break;
        case CAIRN_NN_BATCHNORM2D:
            bn_backward(m, l, x, gy, gx, n, m->last_bn);
            break;
        case CAIRN_NN_LINEAR:
            linear_backward(m, l, x, gy, gx, n);
            break;
        case CAIRN_NN_RELU:
            if (gx) {
                const float *y = m->act[i + 1];
                size_t cnt = (size_t)n * cairn_nn__act_size(m, i);
                for (size_t j = 0; j < cnt; j++)
                    gx[j] = y[j] > 0.0f ? gy[j] : 0.0f;
            }
            break;
        case CAIRN_NN_MAXPOOL2D:
            if (gx) maxpool_backward(l, gy, gx, n);
            break;
        case CAIRN_NN_AVGPOOL2D:
            if (gx) avgpool_backward(l, gy, gx, n);
            break;
        case CAIRN_NN_GLOBAL_AVGPOOL:
            if (gx) gap_backward(l, gy, gx, n);
            break;
        case CAIRN_NN_RESBLOCK:
            res_backward(m, l, x, m->act[i + 1], gy, gx, n, m->last_bn);
            break;
        case CAIRN_NN_FLATTEN:
            if (gx && i == 0)
                memmove(gx, gy, (size_t)n * cairn_nn__act_size(m, 0) * sizeof(float));
            else
                gx = (float *)gy; /* same layout; never written through below this layer */
            break;
        }
        if (!gx) break;
        gy = gx;
    }
    return 0;
}

int cairn_nn_set_requires_grad(cairn_nn_model *m, cairn_nn_param_pred pred, void *ctx, int on)
{
    int changed = 0;
    for (int i = 0; i < m->n_params; i++) {
        cairn_nn_param *p = &m->params[i];
        if (!p->trainable || !pred(p, ctx)) continue;
        if (p->requires_grad != (on != 0)) changed++;
        p->requires_grad = on != 0;
    }
    return changed;
}
