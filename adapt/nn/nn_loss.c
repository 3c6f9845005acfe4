/*
 * adapt/nn/nn_loss.c — losses from logits and the softmax backward passes (training half).
 * Every loss works row by row from the log-sum-exp, so it needs no scratch memory.
 */
#include "adapt/nn/nn_train.h"

#include <assert.h>
#include <math.h>

/* log(sum_j exp(z_j)), stable. */
static float row_lse(const float *z, int k)
{
    float mx = z[0];
    for (int j = 1; j < k; j++)
        mx = z[j] > mx ? z[j] : mx;
    float s = 0.0f;
    for (int j = 0; j < k; j++)
        s += expf(z[j] - mx);
    return mx + logf(s);
}

void cairn_nn_softmax_backward(const float *y, const float *dy, int n, int k, float *dx)
{
    for (int i = 0; i < n; i++) {
        const float *yi = y + (size_t)i * k, *dyi = dy + (size_t)i * k;
        float *dxi = dx + (size_t)i * k;
        float dot = 0.0f;
        for (int j = 0; j < k; j++)
            dot += dyi[j] * yi[j];
        for (int j = 0; j < k; j++)
            dxi[j] = yi[j] * (dyi[j] - dot);
    }
}

void cairn_nn_log_softmax_backward(const float *y, const float *dy, int n, int k, float *dx)
{
    for (int i = 0; i < n; i++) {
        const float *yi = y + (size_t)i * k, *dyi = dy + (size_t)i * k;
        float *dxi = dx + (size_t)i * k;
        float s = 0.0f;
        for (int j = 0; j < k; j++)
            s += dyi[j];
        for (int j = 0; j < k; j++)
            dxi[j] = dyi[j] - expf(yi[j]) * s;
    }
}

int cairn_nn_cross_entropy(const float *logits, const int *labels, const float *w, int n, int k,
                           float *loss, float *dlogits, cairn_error *err)
{
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= k)
            return cairn_errorf(err, CAIRN_ERANGE, "nn: label %d of sample %d outside 0..%d",
                                labels[i], i, k - 1);
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * k;
        const float wi = w ? w[i] : 1.0f;
        const float lse = row_lse(z, k);
        total += (double)wi * (lse - z[labels[i]]);
        if (dlogits) {
            float *d = dlogits + (size_t)i * k;
            const float scale = wi / (float)n;
            for (int j = 0; j < k; j++)
                d[j] = expf(z[j] - lse) * scale;
            d[labels[i]] -= scale;
        }
    }
    *loss = (float)(total / n);
    return 0;
}

float cairn_nn_kl_div(const float *logits_p, const float *logits_q, const float *w, int n, int k,
                      float *dlogits_p, float *dlogits_q)
{
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float *zp = logits_p + (size_t)i * k, *zq = logits_q + (size_t)i * k;
        const float wi = w ? w[i] : 1.0f, scale = wi / (float)n;
        const float lp = row_lse(zp, k), lq = row_lse(zq, k);
        float kl = 0.0f;
        for (int j = 0; j < k; j++) {
            float lpj = zp[j] - lp, lqj = zq[j] - lq;
            kl += expf(lpj) * (lpj - lqj);
        }
        total += (double)wi * kl;
        /* d/dq-logits: q - p.  d/dp-logits: p_j ((log p_j - log q_j) - KL). */
        for (int j = 0; j < k; j++) {
            float lpj = zp[j] - lp, lqj = zq[j] - lq, pj = expf(lpj);
            if (dlogits_q) dlogits_q[(size_t)i * k + j] = (expf(lqj) - pj) * scale;
            if (dlogits_p) dlogits_p[(size_t)i * k + j] = pj * ((lpj - lqj) - kl) * scale;
        }
    }
    return (float)(total / n);
}

float cairn_nn_entropy_loss(const float *logits, const float *w, int n, int k, float *dlogits)
{
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * k;
        const float wi = w ? w[i] : 1.0f, scale = wi / (float)n;
        const float lse = row_lse(z, k);
        float h = 0.0f;
        for (int j = 0; j < k; j++)
            h -= expf(z[j] - lse) * (z[j] - lse);
        total += (double)wi * h;
        if (dlogits)
            for (int j = 0; j < k; j++) {
                float lpj = z[j] - lse;
                dlogits[(size_t)i * k + j] = -expf(lpj) * (lpj + h) * scale;
            }
    }
    return (float)(total / n);
}

/*
 * Jensen–Shannon consistency over V views (AugMix, Hendrycks et al., ICLR 2020, eq. 2 and its
 * reference code): with p_v = softmax(z_v) and M = (1/V) sum_v p_v,
 *   JS = (1/V) sum_v KL(p_v || M) = (1/V) sum_v sum_j p_vj (log p_vj - log M_j),
 * averaged over the n samples. dJS/dp_vj = (log p_vj - log M_j) / V (the terms through M cancel,
 * since sum_v p_vj / M_j = V), then through each row's softmax. M is clamped below at 1e-7 before
 * the log, as the reference code does, which only matters for probabilities that underflow.
 */
float cairn_nn_jsd_loss(const float *logits, int views, int n, int k, float *dlogits)
{
    assert(views >= 2 && views <= CAIRN_NN_JSD_MAX_VIEWS && k >= 1 && k <= CAIRN_NN_JSD_MAX_K);
    double total = 0.0;
    float lp[CAIRN_NN_JSD_MAX_VIEWS][CAIRN_NN_JSD_MAX_K], lm[CAIRN_NN_JSD_MAX_K];
    const float inv_v = 1.0f / (float)views, inv_n = 1.0f / (float)n;
    for (int i = 0; i < n; i++) {
        for (int v = 0; v < views; v++) {
            const float *z = logits + ((size_t)v * n + i) * k;
            float lse = row_lse(z, k);
            for (int j = 0; j < k; j++)
                lp[v][j] = z[j] - lse;
        }
        for (int j = 0; j < k; j++) {
            float mj = 0.0f;
            for (int v = 0; v < views; v++)
                mj += expf(lp[v][j]);
            mj *= inv_v;
            lm[j] = logf(mj > 1e-7f ? mj : 1e-7f);
        }
        for (int v = 0; v < views; v++) {
            float g[CAIRN_NN_JSD_MAX_K], dot = 0.0f;
            for (int j = 0; j < k; j++) {
                float p = expf(lp[v][j]);
                total += (double)(p * (lp[v][j] - lm[j])) * inv_v;
                g[j] = (lp[v][j] - lm[j]) * inv_v * inv_n;
                dot += g[j] * p;
            }
            if (!dlogits) continue;
            float *d = dlogits + ((size_t)v * n + i) * k;
            for (int j = 0; j < k; j++)
                d[j] = expf(lp[v][j]) * (g[j] - dot);
        }
    }
    return (float)(total / n);
}
