/*
 * tests/unit/test_nn.c — adapt/nn: tensors, sgemm, layers (forward values and finite-difference
 * gradient checks), batchnorm modes, the softmax family and losses, SGD, parameter groups, and a
 * tiny CNN learning a toy problem. Reference values are computed here, in double, independently
 * of the library.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapt/nn/nn.h"
#include "adapt/nn/nn_gguf.h"
#include "adapt/nn/nn_train.h"

/* ---- Helpers ------------------------------------------------------------------------------- */

typedef struct {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r)
{
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return r->s;
}

/* Uniform in [lo, hi). */
static float rng_uniform(rng *r, float lo, float hi)
{
    double u = (double)(rng_next(r) >> 11) / 9007199254740992.0;
    return (float)(lo + (hi - lo) * u);
}

static void fill_uniform(rng *r, float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = rng_uniform(r, lo, hi);
}

static float *falloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}

static cairn_nn_model_params train_params(int max_batch)
{
    cairn_nn_model_params p = cairn_nn_model_default_params();
    p.max_batch = max_batch;
    p.training = 1;
    p.sgemm = cairn_nn_sgemm_blas;
    return p;
}

/* L = sum_j out_j * r_j for the model's output on x (double accumulation). */
static double probe_loss(cairn_nn_model *m, const float *x, int n, const float *r)
{
    const float *y;
    cairn_error err;
    int rc = cairn_nn_forward(m, x, n, &y, &err);
    if (rc) fail_msg("forward: %s", err.msg);
    size_t cnt = (size_t)n * cairn_nn_output_size(m);
    double l = 0.0;
    for (size_t j = 0; j < cnt; j++)
        l += (double)y[j] * r[j];
    return l;
}

static int close_enough(double analytic, double numeric, double atol, double rtol)
{
    double scale = fmax(1.0, fmax(fabs(analytic), fabs(numeric)));
    return fabs(analytic - numeric) <= atol + rtol * scale;
}

/*
 * Finite-difference check of every input and trainable-parameter gradient of m (prepared for
 * training) on input x (n samples). The probe loss is L = sum(out * r) for a random r, so
 * dL/dout = r feeds backward. Central differences with step eps.
 */
static int gradcheck_kinks(cairn_nn_model *m, float *x, int n, uint64_t seed, double eps,
                           double atol, double rtol, int skip_kinks);

static void gradcheck(cairn_nn_model *m, float *x, int n, uint64_t seed, double eps, double atol,
                      double rtol)
{
    assert_int_equal(gradcheck_kinks(m, x, n, seed, eps, atol, rtol, 0), 0);
}

/*
 * One element's check. With skip_kinks, an element whose one-sided differences disagree (a ReLU
 * or max crossed its kink within the step, so no finite difference is meaningful there) is
 * skipped and counted in *skipped instead of failing.
 */
static int check_elem(cairn_nn_model *m, const float *x, int n, const float *probe, float *v,
                      double analytic, double eps, double atol, double rtol, int skip_kinks,
                      int *skipped)
{
    float saved = *v;
    *v = saved + (float)eps;
    double lp = probe_loss(m, x, n, probe);
    *v = saved - (float)eps;
    double lm = probe_loss(m, x, n, probe);
    double l0 = 0.0;
    if (skip_kinks) {
        *v = saved;
        l0 = probe_loss(m, x, n, probe);
    }
    *v = saved;
    double num = (lp - lm) / (2 * eps);
    if (close_enough(analytic, num, atol, rtol)) return 1;
    if (skip_kinks) {
        double right = (lp - l0) / eps, left = (l0 - lm) / eps;
        if (!close_enough(right, left, atol, rtol)) {
            (*skipped)++;
            return 1;
        }
    }
    print_error("analytic %g numeric %g: ", analytic, num);
    return 0;
}

static int gradcheck_kinks(cairn_nn_model *m, float *x, int n, uint64_t seed, double eps,
                           double atol, double rtol, int skip_kinks)
{
    rng r = {seed};
    size_t out_n = (size_t)n * cairn_nn_output_size(m);
    int c, h, w;
    cairn_nn_input_shape(m, &c, &h, &w);
    size_t in_n = (size_t)n * c * h * w;
    float *probe = falloc(out_n), *dx = falloc(in_n);
    fill_uniform(&r, probe, out_n, -1.0f, 1.0f);

    const float *y;
    cairn_error err;
    assert_int_equal(cairn_nn_forward(m, x, n, &y, &err), 0);
    cairn_nn_zero_grad(m);
    assert_int_equal(cairn_nn_backward(m, probe, dx, &err), 0);

    int bad = 0, skipped = 0, total = 0;
    for (size_t i = 0; i < in_n; i++, total++)
        if (!check_elem(m, x, n, probe, &x[i], dx[i], eps, atol, rtol, skip_kinks, &skipped))
            if (bad++ < 5) print_error("input[%zu]\n", i);
    for (int pi = 0; pi < cairn_nn_param_count(m); pi++) {
        cairn_nn_param *p = cairn_nn_param_at(m, pi);
        if (!p->trainable) continue;
        assert_non_null(p->grad);
        for (size_t i = 0; i < p->value.numel; i++, total++)
            if (!check_elem(m, x, n, probe, &p->value.data[i], p->grad[i], eps, atol, rtol,
                            skip_kinks, &skipped))
                if (bad++ < 5) print_error("%s[%zu]\n", p->name, i);
    }
    free(probe);
    free(dx);
    assert_int_equal(bad, 0);
    /* kinks are rare; many skips would mean the check checked little */
    assert_true(skipped * 20 <= total);
    return skipped;
}

/* Random parameter values (not the init): biases and batchnorm affine away from trivial values. */
static void randomize_params(cairn_nn_model *m, uint64_t seed)
{
    rng r = {seed};
    for (int pi = 0; pi < cairn_nn_param_count(m); pi++) {
        cairn_nn_param *p = cairn_nn_param_at(m, pi);
        switch (p->kind) {
        case CAIRN_NN_NORM_WEIGHT:
        case CAIRN_NN_RUNNING_VAR:
            fill_uniform(&r, p->value.data, p->value.numel, 0.5f, 1.5f);
            break;
        default:
            fill_uniform(&r, p->value.data, p->value.numel, -0.5f, 0.5f);
        }
    }
}

/* ---- Tensors ------------------------------------------------------------------------------- */

static void test_tensor(void **state)
{
    (void)state;
    cairn_tensor t;
    cairn_error err;
    assert_int_equal(cairn_tensor_alloc(&t, 4, (const int[]){2, 3, 4, 5}, &err), 0);
    assert_int_equal(t.numel, 120);
    assert_int_equal(t.owned, 1);
    for (size_t i = 0; i < t.numel; i++)
        assert_true(t.data[i] == 0.0f);
    assert_int_equal(cairn_tensor_reshape(&t, 2, (const int[]){6, 20}, &err), 0);
    assert_int_equal(t.shape[0], 6);
    assert_int_equal(t.shape[1], 20);
    assert_int_equal(t.shape[2], 1);
    assert_int_equal(cairn_tensor_reshape(&t, 2, (const int[]){7, 20}, &err), CAIRN_EINVAL);
    assert_int_equal(t.shape[0], 6);
    cairn_tensor_free(&t);
    assert_null(t.data);

    float buf[6] = {1, 2, 3, 4, 5, 6};
    assert_int_equal(cairn_tensor_view(&t, buf, 2, (const int[]){2, 3}, &err), 0);
    assert_ptr_equal(t.data, buf);
    assert_int_equal(t.owned, 0);
    cairn_tensor_free(&t); /* must not free buf (ASan would catch it) */
    assert_true(buf[5] == 6.0f);

    assert_int_equal(cairn_tensor_alloc(&t, 5, (const int[]){1, 1, 1, 1, 1}, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_tensor_alloc(&t, 2, (const int[]){3, 0}, &err), CAIRN_EINVAL);
    assert_int_equal(
        cairn_tensor_alloc(&t, 4, (const int[]){1 << 30, 1 << 30, 1 << 30, 1 << 30}, &err),
        CAIRN_EOVERFLOW);
}

/* ---- sgemm --------------------------------------------------------------------------------- */

static void test_sgemm(void **state)
{
    (void)state;
    rng r = {42};
    const int M = 7, N = 9, K = 5;
    float a[64], b[64], c0[64], cp[64], cb[64];
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            fill_uniform(&r, a, 64, -1, 1);
            fill_uniform(&r, b, 64, -1, 1);
            fill_uniform(&r, c0, 64, -1, 1);
            int lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
            const float alpha = 0.7f, beta = -0.3f;
            memcpy(cp, c0, sizeof(cp));
            memcpy(cb, c0, sizeof(cb));
            cairn_nn_sgemm_portable(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, cp, ldc);
            cairn_nn_sgemm_blas(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, cb, ldc);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int p = 0; p < K; p++) {
                        double av = ta ? a[p * lda + i] : a[i * lda + p];
                        double bv = tb ? b[j * ldb + p] : b[p * ldb + j];
                        s += av * bv;
                    }
                    double ref = alpha * s + beta * c0[i * ldc + j];
                    assert_true(fabs(cp[i * ldc + j] - ref) < 1e-5);
                    assert_true(fabs(cb[i * ldc + j] - ref) < 1e-5);
                }
        }
    /* beta == 0 overwrites: NaNs already in C must not survive. */
    float cn[4] = {NAN, NAN, NAN, NAN}, one[4] = {1, 1, 1, 1};
    cairn_nn_sgemm_portable(0, 0, 2, 2, 2, 1.0f, one, 2, one, 2, 0.0f, cn, 2);
    for (int i = 0; i < 4; i++)
        assert_true(cn[i] == 2.0f);
}

/* ---- Building and shapes ------------------------------------------------------------------- */

static void test_build_errors(void **state)
{
    (void)state;
    cairn_nn_model *m;
    cairn_error err;
    assert_int_equal(cairn_nn_model_new(&m, 0, 4, 4, &err), CAIRN_EINVAL);
    assert_null(m);
    assert_int_equal(cairn_nn_model_new(&m, 1, 28, 28, &err), 0);
    /* conv output size: floor((H + 2p - k) / s) + 1 */
    assert_int_equal(cairn_nn_add_conv2d(m, "c1", 8, 3, 2, 1, 1, &err), 0);
    int c, h, w;
    cairn_nn_output_shape(m, &c, &h, &w);
    assert_int_equal(c, 8);
    assert_int_equal(h, (28 + 2 - 3) / 2 + 1);
    assert_int_equal(w, 14);
    assert_int_equal(cairn_nn_add_conv2d(m, "c1", 8, 3, 1, 1, 1, &err), CAIRN_EINVAL); /* dup */
    assert_non_null(strstr(err.msg, "duplicate"));
    assert_int_equal(cairn_nn_add_conv2d(m, "c2", 8, 17, 1, 1, 1, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_nn_add_conv2d(m, NULL, 8, 3, 1, 1, 1, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn", 0.0f, 0.1f, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_nn_add_maxpool2d(m, 15, 1, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_nn_layer_count(m), 1); /* failed adds left nothing behind */
    assert_int_equal(cairn_nn_param_count(m), 2);
    assert_int_equal(cairn_nn_add_maxpool2d(m, 2, 2, &err), 0);
    assert_int_equal(cairn_nn_add_flatten(m, &err), 0);
    assert_int_equal(cairn_nn_add_linear(m, "fc", 10, 1, &err), 0);
    cairn_nn_output_shape(m, &c, &h, &w);
    assert_int_equal(c, 10);
    assert_int_equal(cairn_nn_param_find(m, "fc.weight")->value.shape[1], 8 * 7 * 7);
    assert_null(cairn_nn_param_find(m, "fc.nothing"));
    assert_int_equal(cairn_nn_trainable_count(m), 8 * 9 + 8 + 10 * 392 + 10);

    const float *y;
    float x[28 * 28 * 2] = {0};
    assert_int_equal(cairn_nn_forward(m, x, 1, &y, &err), CAIRN_ESTATE);
    cairn_nn_model_params p = cairn_nn_model_default_params();
    p.max_batch = 2;
    assert_int_equal(cairn_nn_model_prepare(m, &p, &err), 0);
    assert_int_equal(cairn_nn_add_relu(m, &err), CAIRN_ESTATE);
    assert_int_equal(cairn_nn_forward(m, x, 3, &y, &err), CAIRN_ERANGE);
    assert_int_equal(cairn_nn_forward(m, x, 0, &y, &err), CAIRN_ERANGE);
    assert_int_equal(cairn_nn_forward(m, x, 2, &y, &err), 0);
    /* not prepared for training */
    assert_int_equal(cairn_nn_backward(m, y, NULL, &err), CAIRN_ESTATE);
    cairn_nn_sgd *o;
    assert_int_equal(cairn_nn_sgd_new(&o, m, &err), CAIRN_ESTATE);
    cairn_nn_model_free(m);
    cairn_nn_model_free(NULL);
}

/* ---- Forward values -------------------------------------------------------------------------- */

/* Conv against a direct double-precision loop, and the portable and BLAS paths agree. */
static void test_conv_forward_values(void **state)
{
    (void)state;
    enum { N = 2, C = 3, H = 7, W = 6, OC = 4, K = 3, S = 2, P = 1 };
    cairn_nn_model *m;
    cairn_error err;
    assert_int_equal(cairn_nn_model_new(&m, C, H, W, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv", OC, K, S, P, 1, &err), 0);
    randomize_params(m, 7);
    cairn_nn_model_params p = cairn_nn_model_default_params();
    p.max_batch = N;
    assert_int_equal(cairn_nn_model_prepare(m, &p, &err), 0);
    rng r = {3};
    float x[N * C * H * W];
    fill_uniform(&r, x, N * C * H * W, -1, 1);
    const float *y;
    assert_int_equal(cairn_nn_forward(m, x, N, &y, &err), 0);
    int oc_, OH, OW;
    cairn_nn_output_shape(m, &oc_, &OH, &OW);
    assert_int_equal(OH, (H + 2 * P - K) / S + 1);
    assert_int_equal(OW, (W + 2 * P - K) / S + 1);
    const float *wt = cairn_nn_param_find(m, "conv.weight")->value.data;
    const float *b = cairn_nn_param_find(m, "conv.bias")->value.data;
    float yp[N * OC * 4 * 3];
    memcpy(yp, y, sizeof(yp));
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    double s = b[o];
                    for (int c = 0; c < C; c++)
                        for (int kh = 0; kh < K; kh++)
                            for (int kw = 0; kw < K; kw++) {
                                int ih = oh * S - P + kh, iw = ow * S - P + kw;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                s += (double)wt[((o * C + c) * K + kh) * K + kw] *
                                     x[((n * C + c) * H + ih) * W + iw];
                            }
                    assert_true(fabs(yp[((n * OC + o) * OH + oh) * OW + ow] - s) < 1e-5);
                }
    /* same model with the BLAS sgemm */
    p.sgemm = cairn_nn_sgemm_blas;
    assert_int_equal(cairn_nn_model_prepare(m, &p, &err), 0);
    assert_int_equal(cairn_nn_forward(m, x, N, &y, &err), 0);
    for (size_t i = 0; i < sizeof(yp) / sizeof(float); i++)
        assert_true(fabs(y[i] - yp[i]) < 1e-5);
    cairn_nn_model_free(m);
}

static void test_pool_linear_forward_values(void **state)
{
    (void)state;
    cairn_nn_model *m;
    cairn_error err;
    /* 1 x 4 x 4 -> maxpool 2/2 -> 1 x 2 x 2 -> flatten -> linear 4 -> 2 */
    assert_int_equal(cairn_nn_model_new(&m, 1, 4, 4, &err), 0);
    assert_int_equal(cairn_nn_add_maxpool2d(m, 2, 2, &err), 0);
    assert_int_equal(cairn_nn_add_flatten(m, &err), 0);
    assert_int_equal(cairn_nn_add_linear(m, "fc", 2, 1, &err), 0);
    assert_int_equal(cairn_nn_model_prepare(m, NULL, &err), 0);
    float *wt = cairn_nn_param_find(m, "fc.weight")->value.data;
    float *b = cairn_nn_param_find(m, "fc.bias")->value.data;
    const float wv[8] = {1, 2, 3, 4, -1, 0, 0.5f, 0}, bv[2] = {0.25f, -1};
    memcpy(wt, wv, sizeof(wv));
    memcpy(b, bv, sizeof(bv));
    const float x[16] = {1, 5, 2, 0, 3, -1, 7, 8, -2, -3, 4, 4, -5, -4, 6, 1};
    const float *y;
    assert_int_equal(cairn_nn_forward(m, x, 1, &y, &err), 0);
    /* window maxima: {5, 8, -2, 6} */
    assert_true(fabs(y[0] - (5 * 1 + 8 * 2 + -2 * 3 + 6 * 4 + 0.25)) < 1e-5);
    assert_true(fabs(y[1] - (-5 + 0.5 * -2 - 1)) < 1e-5);
    cairn_nn_model_free(m);

    /* avgpool 3/1 and global average pool */
    assert_int_equal(cairn_nn_model_new(&m, 2, 4, 4, &err), 0);
    assert_int_equal(cairn_nn_add_avgpool2d(m, 3, 1, &err), 0);
    assert_int_equal(cairn_nn_add_global_avgpool(m, &err), 0);
    assert_int_equal(cairn_nn_model_prepare(m, NULL, &err), 0);
    float x2[32];
    rng r = {11};
    fill_uniform(&r, x2, 32, -1, 1);
    assert_int_equal(cairn_nn_forward(m, x2, 1, &y, &err), 0);
    for (int c = 0; c < 2; c++) {
        double tot = 0;
        for (int oh = 0; oh < 2; oh++)
            for (int ow = 0; ow < 2; ow++) {
                double s = 0;
                for (int kh = 0; kh < 3; kh++)
                    for (int kw = 0; kw < 3; kw++)
                        s += x2[c * 16 + (oh + kh) * 4 + ow + kw];
                tot += s / 9;
            }
        assert_true(fabs(y[c] - tot / 4) < 1e-5);
    }
    cairn_nn_model_free(m);
}

/* ---- Gradient checks per layer ------------------------------------------------------------- */

static cairn_nn_model *new_model(int c, int h, int w)
{
    cairn_nn_model *m;
    cairn_error err;
    assert_int_equal(cairn_nn_model_new(&m, c, h, w, &err), 0);
    return m;
}

static void prepare_train(cairn_nn_model *m, int max_batch)
{
    cairn_error err;
    cairn_nn_model_params p = train_params(max_batch);
    assert_int_equal(cairn_nn_model_prepare(m, &p, &err), 0);
}

static void check_conv(int c, int h, int w, int oc, int k, int s, int pad, int bias, uint64_t seed)
{
    cairn_error err;
    cairn_nn_model *m = new_model(c, h, w);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv", oc, k, s, pad, bias, &err), 0);
    randomize_params(m, seed);
    prepare_train(m, 2);
    float *x = falloc((size_t)2 * c * h * w);
    rng r = {seed + 1};
    fill_uniform(&r, x, (size_t)2 * c * h * w, -1, 1);
    gradcheck(m, x, 2, seed + 2, 1e-2, 2e-3, 1e-2);
    free(x);
    cairn_nn_model_free(m);
}

static void test_grad_conv(void **state)
{
    (void)state;
    check_conv(2, 5, 5, 3, 3, 2, 1, 1, 100); /* strided, padded */
    check_conv(3, 4, 5, 2, 3, 1, 0, 0, 200); /* no padding, no bias */
    check_conv(3, 4, 4, 2, 1, 1, 0, 1, 300); /* 1x1: the direct (no im2col) path */
    check_conv(1, 6, 6, 2, 2, 2, 2, 1, 400); /* padding larger than stride */
}

static void check_bn(cairn_nn_bn_mode mode, uint64_t seed)
{
    cairn_error err;
    cairn_nn_model *m = new_model(3, 3, 4);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn", 1e-5f, 0.1f, &err), 0);
    randomize_params(m, seed);
    prepare_train(m, 3);
    cairn_nn_set_bn_mode(m, mode);
    float x[3 * 3 * 3 * 4];
    rng r = {seed + 1};
    fill_uniform(&r, x, sizeof(x) / sizeof(float), -1, 2);
    gradcheck(m, x, 3, seed + 2, 1e-2, 2e-3, 1e-2);
    cairn_nn_model_free(m);
}

static void test_grad_batchnorm(void **state)
{
    (void)state;
    check_bn(CAIRN_NN_BN_TRAIN, 500);
    check_bn(CAIRN_NN_BN_BATCH, 600);
    check_bn(CAIRN_NN_BN_EVAL, 700);
}

static void test_grad_linear(void **state)
{
    (void)state;
    cairn_error err;
    cairn_nn_model *m = new_model(2, 3, 1);
    assert_int_equal(cairn_nn_add_linear(m, "fc", 4, 1, &err), 0);
    randomize_params(m, 800);
    prepare_train(m, 3);
    float x[3 * 6];
    rng r = {801};
    fill_uniform(&r, x, 18, -1, 1);
    gradcheck(m, x, 3, 802, 1e-2, 2e-3, 1e-2);
    cairn_nn_model_free(m);
}

static void test_grad_relu(void **state)
{
    (void)state;
    cairn_error err;
    cairn_nn_model *m = new_model(2, 3, 3);
    assert_int_equal(cairn_nn_add_relu(m, &err), 0);
    prepare_train(m, 2);
    float x[36];
    rng r = {900};
    /* away from the kink at 0, where the derivative is undefined */
    for (int i = 0; i < 36; i++)
        x[i] = (rng_next(&r) & 1 ? 1.0f : -1.0f) * rng_uniform(&r, 0.1f, 1.0f);
    gradcheck(m, x, 2, 901, 1e-2, 2e-3, 1e-2);
    cairn_nn_model_free(m);
}

/* Distinct values 0.05 apart, shuffled, so that no max changes under a 1e-2 step. */
static void fill_distinct(rng *r, float *x, int n)
{
    for (int i = 0; i < n; i++)
        x[i] = 0.05f * (float)(i - n / 2);
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_next(r) % (uint64_t)(i + 1));
        float t = x[i];
        x[i] = x[j];
        x[j] = t;
    }
}

static void test_grad_pools(void **state)
{
    (void)state;
    cairn_error err;
    rng r = {1000};
    float x[2 * 2 * 5 * 5];

    cairn_nn_model *m = new_model(2, 5, 5);
    assert_int_equal(cairn_nn_add_maxpool2d(m, 2, 2, &err), 0);
    prepare_train(m, 2);
    fill_distinct(&r, x, 100);
    gradcheck(m, x, 2, 1001, 1e-2, 2e-3, 1e-2);
    cairn_nn_model_free(m);

    m = new_model(2, 5, 5); /* overlapping windows */
    assert_int_equal(cairn_nn_add_maxpool2d(m, 3, 2, &err), 0);
    prepare_train(m, 2);
    fill_distinct(&r, x, 100);
    gradcheck(m, x, 2, 1002, 1e-2, 2e-3, 1e-2);
    cairn_nn_model_free(m);

    m = new_model(2, 5, 5);
    assert_int_equal(cairn_nn_add_avgpool2d(m, 3, 1, &err), 0);
    prepare_train(m, 2);
    fill_uniform(&r, x, 100, -1, 1);
    gradcheck(m, x, 2, 1003, 1e-2, 2e-3, 1e-2);
    cairn_nn_model_free(m);

    m = new_model(2, 5, 5);
    assert_int_equal(cairn_nn_add_global_avgpool(m, &err), 0);
    assert_int_equal(cairn_nn_add_flatten(m, &err), 0);
    prepare_train(m, 2);
    fill_uniform(&r, x, 100, -1, 1);
    gradcheck(m, x, 2, 1004, 1e-2, 2e-3, 1e-2);
    cairn_nn_model_free(m);
}

/* A whole small CNN in each batchnorm mode: gradients compose through every layer kind. */
static cairn_nn_model *small_cnn(int c, int h, int w, int classes)
{
    cairn_error err;
    cairn_nn_model *m;
    assert_int_equal(cairn_nn_model_new(&m, c, h, w, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv1", 4, 3, 1, 1, 0, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn1", 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_relu(m, &err), 0);
    assert_int_equal(cairn_nn_add_maxpool2d(m, 2, 2, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv2", 6, 3, 1, 1, 0, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn2", 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_relu(m, &err), 0);
    assert_int_equal(cairn_nn_add_global_avgpool(m, &err), 0);
    assert_int_equal(cairn_nn_add_flatten(m, &err), 0);
    assert_int_equal(cairn_nn_add_linear(m, "fc", classes, 1, &err), 0);
    return m;
}

static void test_grad_small_cnn(void **state)
{
    (void)state;
    const cairn_nn_bn_mode modes[3] = {CAIRN_NN_BN_TRAIN, CAIRN_NN_BN_BATCH, CAIRN_NN_BN_EVAL};
    for (int mi = 0; mi < 3; mi++) {
        cairn_nn_model *m = small_cnn(1, 6, 6, 3);
        randomize_params(m, 1100 + mi);
        prepare_train(m, 3);
        cairn_nn_set_bn_mode(m, modes[mi]);
        float x[3 * 36];
        rng r = {1200 + mi};
        fill_uniform(&r, x, 108, -1, 1);
        int skipped = gradcheck_kinks(m, x, 3, 1300 + mi, 1e-3, 2e-3, 2e-2, 1);
        print_message("small cnn, bn mode %d: %d elements skipped at kinks\n", mi, skipped);
        cairn_nn_model_free(m);
    }
}

/* ---- Residual block ------------------------------------------------------------------------ */

/* One residual block alone, identity skip (stride 1, same channels) or projection (stride 2,
 * more channels), in every batchnorm mode, checked by finite differences (kinks of the two
 * ReLUs skipped, as for the small CNN). */
static void test_grad_resblock(void **state)
{
    (void)state;
    const cairn_nn_bn_mode modes[3] = {CAIRN_NN_BN_TRAIN, CAIRN_NN_BN_BATCH, CAIRN_NN_BN_EVAL};
    const struct {
        int c, hw, oc, stride, params;
    } cfg[2] = {{2, 5, 2, 1, 2 + 8}, {2, 5, 3, 2, 3 + 12}};
    for (int ci = 0; ci < 2; ci++)
        for (int mi = 0; mi < 3; mi++) {
            cairn_error err;
            cairn_nn_model *m = new_model(cfg[ci].c, cfg[ci].hw, cfg[ci].hw);
            assert_int_equal(
                cairn_nn_add_resblock(m, "res", cfg[ci].oc, cfg[ci].stride, 1e-5f, 0.1f, &err), 0);
            /* convs + 4 tensors per batchnorm: 2 + 8 without projection, 3 + 12 with */
            assert_int_equal(cairn_nn_param_count(m), cfg[ci].params);
            int oc, oh, ow;
            cairn_nn_output_shape(m, &oc, &oh, &ow);
            assert_int_equal(oc, cfg[ci].oc);
            assert_int_equal(oh, (cfg[ci].hw - 1) / cfg[ci].stride + 1);
            randomize_params(m, 2100 + 10 * ci + mi);
            prepare_train(m, 3);
            cairn_nn_set_bn_mode(m, modes[mi]);
            size_t in_n = (size_t)3 * cfg[ci].c * cfg[ci].hw * cfg[ci].hw;
            float *x = falloc(in_n);
            rng r = {2200 + 10 * ci + mi};
            fill_uniform(&r, x, in_n, -1, 1);
            int skipped = gradcheck_kinks(m, x, 3, 2300 + 10 * ci + mi, 1e-3, 2e-3, 2e-2, 1);
            print_message("resblock cfg %d, bn mode %d: %d elements skipped at kinks\n", ci, mi,
                          skipped);
            free(x);
            cairn_nn_model_free(m);
        }
}

/*
 * Forward values: with both convs of the main path zero, bn2 outputs its shift beta2 - mean2 *
 * gamma2 / sqrt(var2 + eps) (eval mode), so the block is relu(x + that shift) per channel with
 * the identity skip; with a projection the skip is pbn(proj(x)), computed here by hand.
 */
static void test_resblock_forward_values(void **state)
{
    (void)state;
    cairn_error err;
    for (int proj = 0; proj < 2; proj++) {
        const int C = 2, H = 4, OC = proj ? 3 : 2, S = proj ? 2 : 1, OH = proj ? 2 : 4;
        cairn_nn_model *m = new_model(C, H, H);
        assert_int_equal(cairn_nn_add_resblock(m, "blk", OC, S, 1e-5f, 0.1f, &err), 0);
        randomize_params(m, 3000 + proj);
        memset(cairn_nn_param_find(m, "blk.conv1.weight")->value.data, 0,
               sizeof(float) * (size_t)OC * C * 9);
        memset(cairn_nn_param_find(m, "blk.conv2.weight")->value.data, 0,
               sizeof(float) * (size_t)OC * OC * 9);
        cairn_nn_model_params p = cairn_nn_model_default_params();
        p.max_batch = 2;
        assert_int_equal(cairn_nn_model_prepare(m, &p, &err), 0);
        float x[2 * 2 * 4 * 4];
        rng r = {3100 + proj};
        fill_uniform(&r, x, 64, -1, 1);
        const float *y;
        assert_int_equal(cairn_nn_forward(m, x, 2, &y, &err), 0);
        const float *g2 = cairn_nn_param_find(m, "blk.bn2.weight")->value.data;
        const float *b2 = cairn_nn_param_find(m, "blk.bn2.bias")->value.data;
        const float *m2 = cairn_nn_param_find(m, "blk.bn2.running_mean")->value.data;
        const float *v2 = cairn_nn_param_find(m, "blk.bn2.running_var")->value.data;
        for (int s = 0; s < 2; s++)
            for (int oc = 0; oc < OC; oc++)
                for (int i = 0; i < OH; i++)
                    for (int j = 0; j < OH; j++) {
                        double main = b2[oc] - m2[oc] * g2[oc] / sqrt(v2[oc] + 1e-5);
                        double skip;
                        if (!proj) {
                            skip = x[((s * C + oc) * H + i) * H + j];
                        } else {
                            const float *pw = cairn_nn_param_find(m, "blk.proj.weight")->value.data;
                            const char *nm[4] = {"blk.pbn.weight", "blk.pbn.bias",
                                                 "blk.pbn.running_mean", "blk.pbn.running_var"};
                            float bn[4];
                            for (int t = 0; t < 4; t++)
                                bn[t] = cairn_nn_param_find(m, nm[t])->value.data[oc];
                            double acc = 0;
                            for (int ic = 0; ic < C; ic++)
                                acc += pw[oc * C + ic] * x[((s * C + ic) * H + i * S) * H + j * S];
                            skip = (acc - bn[2]) * bn[0] / sqrt(bn[3] + 1e-5) + bn[1];
                        }
                        double want = fmax(0.0, main + skip);
                        assert_true(fabs(y[((s * OC + oc) * OH + i) * OH + j] - want) < 1e-5);
                    }
        cairn_nn_model_free(m);
    }
}

/* Save and load keep a residual model's architecture and values (same outputs), and its
 * batchnorms are the norm-affine parameters norm-only adaptation trains. */
static void test_resblock_gguf_and_norms(void **state)
{
    (void)state;
    cairn_error err;
    cairn_nn_model *m = new_model(1, 6, 6);
    assert_int_equal(cairn_nn_add_conv2d(m, "stem", 4, 3, 1, 1, 0, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn", 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_relu(m, &err), 0);
    assert_int_equal(cairn_nn_add_resblock(m, "s1.b0", 4, 1, 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_resblock(m, "s2.b0", 6, 2, 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_global_avgpool(m, &err), 0);
    assert_int_equal(cairn_nn_add_flatten(m, &err), 0);
    assert_int_equal(cairn_nn_add_linear(m, "fc", 3, 1, &err), 0);
    randomize_params(m, 4000);
    /* norm-affine: bn, s1.b0.bn1/bn2, s2.b0.bn1/bn2/pbn = 6 batchnorms, 12 tensors */
    int affine = 0;
    for (int i = 0; i < cairn_nn_param_count(m); i++)
        affine += cairn_nn_pred_norm_affine(cairn_nn_param_at(m, i), NULL);
    assert_int_equal(affine, 12);

    char path[] = "/tmp/test_nn_res_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(cairn_nn_save(m, path, &err), 0);
    cairn_nn_model *m2;
    assert_int_equal(cairn_nn_load(&m2, path, &err), 0);
    unlink(path);
    assert_int_equal(cairn_nn_layer_count(m2), cairn_nn_layer_count(m));
    assert_int_equal(cairn_nn_param_count(m2), cairn_nn_param_count(m));
    assert_int_equal(cairn_nn_layer_type_of(m2, 3), CAIRN_NN_RESBLOCK);
    cairn_nn_model_params p = cairn_nn_model_default_params();
    p.max_batch = 2;
    assert_int_equal(cairn_nn_model_prepare(m, &p, &err), 0);
    assert_int_equal(cairn_nn_model_prepare(m2, &p, &err), 0);
    float x[2 * 36];
    rng r = {4100};
    fill_uniform(&r, x, 72, 0, 1);
    const float *y1, *y2;
    assert_int_equal(cairn_nn_forward(m, x, 2, &y1, &err), 0);
    float keep[6];
    memcpy(keep, y1, sizeof(keep));
    assert_int_equal(cairn_nn_forward(m2, x, 2, &y2, &err), 0);
    assert_memory_equal(keep, y2, sizeof(keep));
    cairn_nn_model_free(m);
    cairn_nn_model_free(m2);
}

/*
 * A hostile file: a resblock whose metadata asks for stride 2 (so a projection) while the file
 * holds only an identity block's tensors is refused with the missing tensor named.
 */
static void test_resblock_gguf_missing_projection(void **state)
{
    (void)state;
    cairn_error err;
    cairn_nn_model *m = new_model(4, 6, 6);
    assert_int_equal(cairn_nn_add_resblock(m, "blk", 4, 1, 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_param_count(m), 10); /* identity: no proj / pbn */
    cairn_gguf_writer *w;
    assert_int_equal(cairn_gguf_writer_new(&w, &err), 0);
    const int32_t shape[3] = {4, 6, 6};
    assert_int_equal(cairn_gguf_writer_add_str(w, "general.architecture", "cairn.cnn", &err), 0);
    assert_int_equal(
        cairn_gguf_writer_add_arr(w, "cairn.cnn.input_shape", CAIRN_GGUF_KV_I32, shape, 3, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "cairn.cnn.layer_count", 1, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "cairn.cnn.layer.0.type", "resblock", &err), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "cairn.cnn.layer.0.name", "blk", &err), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "cairn.cnn.layer.0.out_channels", 4, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "cairn.cnn.layer.0.stride", 2, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_f32(w, "cairn.cnn.layer.0.eps", 1e-5f, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_f32(w, "cairn.cnn.layer.0.momentum", 0.1f, &err), 0);
    for (int i = 0; i < cairn_nn_param_count(m); i++) {
        cairn_nn_param *p = cairn_nn_param_at(m, i);
        uint64_t dims[4];
        for (int d = 0; d < p->value.ndim; d++)
            dims[d] = (uint64_t)p->value.shape[p->value.ndim - 1 - d];
        assert_int_equal(cairn_gguf_writer_add_tensor(w, p->name, CAIRN_GGUF_F32,
                                                      (uint32_t)p->value.ndim, dims, p->value.data,
                                                      p->value.numel * sizeof(float), &err),
                         0);
    }
    void *buf;
    size_t len;
    assert_int_equal(cairn_gguf_writer_write_memory(w, &buf, &len, &err), 0);
    cairn_gguf *g;
    assert_int_equal(cairn_gguf_open_memory(&g, buf, len, &err), 0);
    cairn_nn_model *back = (cairn_nn_model *)1;
    assert_int_equal(cairn_nn_load_gguf(&back, g, &err), CAIRN_EFORMAT);
    assert_null(back);
    assert_non_null(strstr(err.msg, "blk.proj.weight"));
    cairn_gguf_close(g);
    free(buf);
    cairn_gguf_writer_free(w);
    cairn_nn_model_free(m);
}

/* ---- Batchnorm modes ----------------------------------------------------------------------- */

static void test_batchnorm_modes(void **state)
{
    (void)state;
    enum { N = 4, C = 2, HW = 6 };
    const float eps = 1e-5f, mom = 0.25f;
    cairn_error err;
    cairn_nn_model *m;
    assert_int_equal(cairn_nn_model_new(&m, C, 2, 3, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn", eps, mom, &err), 0);
    cairn_nn_model_params p = cairn_nn_model_default_params();
    p.max_batch = N;
    assert_int_equal(cairn_nn_model_prepare(m, &p, &err), 0);
    cairn_nn_param *g = cairn_nn_param_find(m, "bn.weight"), *b = cairn_nn_param_find(m, "bn.bias");
    cairn_nn_param *rm = cairn_nn_param_find(m, "bn.running_mean");
    cairn_nn_param *rv = cairn_nn_param_find(m, "bn.running_var");
    assert_non_null(rv);
    assert_false(rm->trainable);
    g->value.data[0] = 2.0f, g->value.data[1] = 0.5f;
    b->value.data[0] = 0.3f, b->value.data[1] = -1.0f;
    rm->value.data[0] = 0.1f, rm->value.data[1] = -0.2f;
    rv->value.data[0] = 1.5f, rv->value.data[1] = 0.8f;

    float x[N * C * HW];
    rng r = {77};
    fill_uniform(&r, x, N * C * HW, -2, 3);
    double mean[C], var[C];
    for (int c = 0; c < C; c++) {
        double s = 0, ss = 0;
        for (int n = 0; n < N; n++)
            for (int j = 0; j < HW; j++)
                s += x[(n * C + c) * HW + j];
        mean[c] = s / (N * HW);
        for (int n = 0; n < N; n++)
            for (int j = 0; j < HW; j++) {
                double d = x[(n * C + c) * HW + j] - mean[c];
                ss += d * d;
            }
        var[c] = ss / (N * HW);
    }
    const float rm0[C] = {0.1f, -0.2f}, rv0[C] = {1.5f, 0.8f};
    const float *y;

    /* Eval: running statistics normalise; nothing changes them. */
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_EVAL);
    assert_int_equal(cairn_nn_forward(m, x, N, &y, &err), 0);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int j = 0; j < HW; j++) {
                int i = (n * C + c) * HW + j;
                double ref =
                    (x[i] - rm0[c]) / sqrt(rv0[c] + eps) * g->value.data[c] + b->value.data[c];
                assert_true(fabs(y[i] - ref) < 1e-5);
            }
    assert_true(rm->value.data[0] == rm0[0] && rv->value.data[1] == rv0[1]);

    /* Test-time batch statistics: batch normalises; running statistics untouched (bitwise). */
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_BATCH);
    assert_int_equal(cairn_nn_forward(m, x, N, &y, &err), 0);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int j = 0; j < HW; j++) {
                int i = (n * C + c) * HW + j;
                double ref =
                    (x[i] - mean[c]) / sqrt(var[c] + eps) * g->value.data[c] + b->value.data[c];
                assert_true(fabs(y[i] - ref) < 1e-4);
            }
    for (int c = 0; c < C; c++) {
        assert_true(rm->value.data[c] == rm0[c]);
        assert_true(rv->value.data[c] == rv0[c]);
    }

    /* Train: same output; running = (1-m) running + m batch, variance unbiased. */
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_TRAIN);
    assert_int_equal(cairn_nn_forward(m, x, N, &y, &err), 0);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int j = 0; j < HW; j++) {
                int i = (n * C + c) * HW + j;
                double ref =
                    (x[i] - mean[c]) / sqrt(var[c] + eps) * g->value.data[c] + b->value.data[c];
                assert_true(fabs(y[i] - ref) < 1e-4);
            }
    const int M = N * HW;
    for (int c = 0; c < C; c++) {
        double em = (1 - mom) * rm0[c] + mom * mean[c];
        double ev = (1 - mom) * rv0[c] + mom * var[c] * M / (M - 1);
        assert_true(fabs(rm->value.data[c] - em) < 1e-5);
        assert_true(fabs(rv->value.data[c] - ev) < 1e-5);
    }
    /* A second train step compounds the average. */
    float rm1 = rm->value.data[0];
    assert_int_equal(cairn_nn_forward(m, x, N, &y, &err), 0);
    assert_true(fabs(rm->value.data[0] - ((1 - mom) * rm1 + mom * mean[0])) < 1e-5);

    /* Eval after training uses the updated statistics. */
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_EVAL);
    assert_int_equal(cairn_nn_forward(m, x, 1, &y, &err), 0);
    double ref = (x[0] - rm->value.data[0]) / sqrt(rv->value.data[0] + eps) * g->value.data[0] +
                 b->value.data[0];
    assert_true(fabs(y[0] - ref) < 1e-5);
    cairn_nn_model_free(m);

    /* One value per channel cannot give batch statistics. */
    assert_int_equal(cairn_nn_model_new(&m, 3, 1, 1, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn", eps, mom, &err), 0);
    assert_int_equal(cairn_nn_model_prepare(m, NULL, &err), 0);
    float one[3] = {1, 2, 3};
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_TRAIN);
    assert_int_equal(cairn_nn_forward(m, one, 1, &y, &err), CAIRN_ERANGE);
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_EVAL);
    assert_int_equal(cairn_nn_forward(m, one, 1, &y, &err), 0);
    cairn_nn_model_free(m);
}

/* ---- Softmax family and losses ------------------------------------------------------------- */

static void ref_log_softmax(const float *z, int k, double *out)
{
    double mx = z[0];
    for (int j = 1; j < k; j++)
        mx = fmax(mx, z[j]);
    double s = 0;
    for (int j = 0; j < k; j++)
        s += exp(z[j] - mx);
    for (int j = 0; j < k; j++)
        out[j] = z[j] - mx - log(s);
}

static void test_softmax_values(void **state)
{
    (void)state;
    enum { N = 3, K = 5 };
    float z[N * K], y[N * K], ly[N * K], h[N];
    rng r = {5};
    fill_uniform(&r, z, N * K, -3, 3);
    z[K] = 80.0f; /* large logits must not overflow */
    cairn_nn_softmax(z, N, K, y);
    cairn_nn_log_softmax(z, N, K, ly);
    cairn_nn_entropy(z, N, K, h);
    for (int i = 0; i < N; i++) {
        double lp[K], H = 0, sum = 0;
        ref_log_softmax(z + i * K, K, lp);
        for (int j = 0; j < K; j++) {
            assert_true(fabs(y[i * K + j] - exp(lp[j])) < 1e-6);
            assert_true(fabs(ly[i * K + j] - lp[j]) < 1e-5);
            H -= exp(lp[j]) * lp[j];
            sum += y[i * K + j];
        }
        assert_true(fabs(sum - 1.0) < 1e-5);
        assert_true(fabs(h[i] - H) < 1e-5);
    }
    /* uniform logits: entropy log K */
    float u[K] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f}, hu;
    cairn_nn_entropy(u, 1, K, &hu);
    assert_true(fabs(hu - log(K)) < 1e-6);
    /* in place */
    memcpy(y, z, sizeof(z));
    cairn_nn_softmax(y, N, K, y);
    assert_true(fabs(y[0] - exp(z[0]) / (exp(z[0]) + exp(z[1]) + exp(z[2]) + exp(z[3]) +
                                         exp(z[4]))) < 1e-6);
}

/* Finite differences of a scalar function of logits. */
typedef double (*scalar_fn)(const float *z, void *ctx);

static void fd_check(scalar_fn f, void *ctx, float *z, int cnt, const float *grad)
{
    const double eps = 1e-2;
    for (int i = 0; i < cnt; i++) {
        float s = z[i];
        z[i] = s + (float)eps;
        double lp = f(z, ctx);
        z[i] = s - (float)eps;
        double lm = f(z, ctx);
        z[i] = s;
        double num = (lp - lm) / (2 * eps);
        if (!close_enough(grad[i], num, 1e-3, 1e-2))
            fail_msg("grad[%d]: analytic %g numeric %g", i, grad[i], num);
    }
}

enum { LN = 4, LK = 6 };
typedef struct {
    const int *labels;
    const float *w;
    const float *other; /* the other side's logits for KL */
    int side;           /* KL: 0 differentiate p, 1 differentiate q */
    const float *probe;
} loss_ctx;

static double f_ce(const float *z, void *vc)
{
    loss_ctx *c = vc;
    float l;
    assert_int_equal(cairn_nn_cross_entropy(z, c->labels, c->w, LN, LK, &l, NULL, NULL), 0);
    return l;
}
static double f_kl(const float *z, void *vc)
{
    loss_ctx *c = vc;
    return c->side ? cairn_nn_kl_div(c->other, z, c->w, LN, LK, NULL, NULL)
                   : cairn_nn_kl_div(z, c->other, c->w, LN, LK, NULL, NULL);
}
static double f_ent(const float *z, void *vc)
{
    loss_ctx *c = vc;
    return cairn_nn_entropy_loss(z, c->w, LN, LK, NULL);
}
static double f_softmax_probe(const float *z, void *vc)
{
    loss_ctx *c = vc;
    float y[LN * LK];
    cairn_nn_softmax(z, LN, LK, y);
    double s = 0;
    for (int i = 0; i < LN * LK; i++)
        s += (double)y[i] * c->probe[i];
    return s;
}
static double f_log_softmax_probe(const float *z, void *vc)
{
    loss_ctx *c = vc;
    float y[LN * LK];
    cairn_nn_log_softmax(z, LN, LK, y);
    double s = 0;
    for (int i = 0; i < LN * LK; i++)
        s += (double)y[i] * c->probe[i];
    return s;
}

static void test_losses(void **state)
{
    (void)state;
    float zp[LN * LK], zq[LN * LK], g[LN * LK], g2[LN * LK], probe[LN * LK];
    const int labels[LN] = {0, 5, 2, 2};
    const float w[LN] = {1.0f, 0.5f, 2.0f, 0.0f};
    rng r = {99};
    fill_uniform(&r, zp, LN * LK, -2, 2);
    fill_uniform(&r, zq, LN * LK, -2, 2);
    fill_uniform(&r, probe, LN * LK, -1, 1);

    /* values against double references */
    double ce = 0, ce_w = 0, kl = 0, kl_w = 0, ent = 0, ent_w = 0;
    for (int i = 0; i < LN; i++) {
        double lp[LK], lq[LK], kli = 0, hi = 0;
        ref_log_softmax(zp + i * LK, LK, lp);
        ref_log_softmax(zq + i * LK, LK, lq);
        for (int j = 0; j < LK; j++) {
            kli += exp(lp[j]) * (lp[j] - lq[j]);
            hi -= exp(lq[j]) * lq[j];
        }
        ce += -lq[labels[i]];
        ce_w += w[i] * -lq[labels[i]];
        kl += kli;
        kl_w += w[i] * kli;
        ent += hi;
        ent_w += w[i] * hi;
    }
    float l;
    cairn_error err;
    assert_int_equal(cairn_nn_cross_entropy(zq, labels, NULL, LN, LK, &l, NULL, &err), 0);
    assert_true(fabs(l - ce / LN) < 1e-5);
    assert_int_equal(cairn_nn_cross_entropy(zq, labels, w, LN, LK, &l, g, &err), 0);
    assert_true(fabs(l - ce_w / LN) < 1e-5);
    assert_true(fabs(cairn_nn_kl_div(zp, zq, NULL, LN, LK, NULL, NULL) - kl / LN) < 1e-5);
    assert_true(fabs(cairn_nn_kl_div(zp, zq, w, LN, LK, NULL, NULL) - kl_w / LN) < 1e-5);
    assert_true(fabs(cairn_nn_kl_div(zp, zp, NULL, LN, LK, NULL, NULL)) < 1e-6);
    assert_true(fabs(cairn_nn_entropy_loss(zq, NULL, LN, LK, NULL) - ent / LN) < 1e-5);
    assert_true(fabs(cairn_nn_entropy_loss(zq, w, LN, LK, NULL) - ent_w / LN) < 1e-5);

    /* bad label: an error, nothing written */
    const int bad[LN] = {0, 6, 1, 1};
    l = -7.0f;
    assert_int_equal(cairn_nn_cross_entropy(zq, bad, NULL, LN, LK, &l, NULL, &err), CAIRN_ERANGE);
    assert_true(l == -7.0f);
    assert_non_null(strstr(err.msg, "label 6"));

    /* gradients by finite differences (weighted; a zero weight must give a zero gradient row) */
    loss_ctx c = {.labels = labels, .w = w, .probe = probe};
    fd_check(f_ce, &c, zq, LN * LK, g);
    for (int j = 0; j < LK; j++)
        assert_true(g[3 * LK + j] == 0.0f);
    c.other = zp;
    c.side = 1;
    (void)cairn_nn_kl_div(zp, zq, w, LN, LK, g2, g);
    fd_check(f_kl, &c, zq, LN * LK, g);
    c.other = zq;
    c.side = 0;
    fd_check(f_kl, &c, zp, LN * LK, g2);
    (void)cairn_nn_entropy_loss(zq, w, LN, LK, g);
    fd_check(f_ent, &c, zq, LN * LK, g);

    float y[LN * LK];
    cairn_nn_softmax(zq, LN, LK, y);
    cairn_nn_softmax_backward(y, probe, LN, LK, g);
    fd_check(f_softmax_probe, &c, zq, LN * LK, g);
    cairn_nn_log_softmax(zq, LN, LK, y);
    cairn_nn_log_softmax_backward(y, probe, LN, LK, g);
    fd_check(f_log_softmax_probe, &c, zq, LN * LK, g);
}

/* ---- SGD and parameter groups -------------------------------------------------------------- */

/* JSD over 3 views of LN samples: value against a double reference, the gradient against
 * finite differences; identical views give 0 and a zero gradient. */
static double f_jsd(const float *z, void *vc)
{
    (void)vc;
    return cairn_nn_jsd_loss(z, 3, LN, LK, NULL);
}

static void test_jsd_loss(void **state)
{
    (void)state;
    float z[3 * LN * LK], g[3 * LN * LK];
    rng r = {77};
    fill_uniform(&r, z, 3 * LN * LK, -3, 3);
    double ref = 0;
    for (int i = 0; i < LN; i++) {
        double lp[3][LK], mix[LK] = {0};
        for (int v = 0; v < 3; v++) {
            ref_log_softmax(z + (v * LN + i) * LK, LK, lp[v]);
            for (int j = 0; j < LK; j++)
                mix[j] += exp(lp[v][j]) / 3;
        }
        for (int v = 0; v < 3; v++)
            for (int j = 0; j < LK; j++)
                ref += exp(lp[v][j]) * (lp[v][j] - log(mix[j])) / 3;
    }
    ref /= LN;
    float l = cairn_nn_jsd_loss(z, 3, LN, LK, g);
    assert_true(ref > 0.01);
    assert_true(fabs(l - ref) < 1e-5);
    fd_check(f_jsd, NULL, z, 3 * LN * LK, g);
    /* three copies of the same logits: no disagreement, no gradient */
    for (int v = 1; v < 3; v++)
        memcpy(z + v * LN * LK, z, sizeof(float) * LN * LK);
    assert_true(fabs(cairn_nn_jsd_loss(z, 3, LN, LK, g)) < 1e-6);
    for (int j = 0; j < 3 * LN * LK; j++)
        assert_true(fabs(g[j]) < 1e-6);
}

static void test_sgd_rule(void **state)
{
    (void)state;
    cairn_error err;
    cairn_nn_model *m;
    assert_int_equal(cairn_nn_model_new(&m, 1, 1, 1, &err), 0);
    assert_int_equal(cairn_nn_add_linear(m, "fc", 1, 0, &err), 0);
    prepare_train(m, 1);
    cairn_nn_param *p = cairn_nn_param_find(m, "fc.weight");
    p->value.data[0] = 0.5f;
    cairn_nn_sgd *o;
    assert_int_equal(cairn_nn_sgd_new(&o, m, &err), 0);
    cairn_nn_sgd_params hp = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f};
    assert_int_equal(cairn_nn_sgd_add_group(o, cairn_nn_pred_all, NULL, &hp, &err), 0);

    /* By hand: d = g + wd w; v = mu v + d; w -= lr v.
     * step 1: d = 0.2 + 0.01*0.5 = 0.205, v = 0.205, w = 0.5 - 0.0205 = 0.4795
     * step 2: d = 0.2 + 0.01*0.4795 = 0.204795, v = 0.9*0.205 + 0.204795 = 0.389295,
     *         w = 0.4795 - 0.0389295 = 0.4405705 */
    p->grad[0] = 0.2f;
    cairn_nn_sgd_step(o);
    assert_true(fabs(p->value.data[0] - 0.4795) < 1e-6);
    cairn_nn_sgd_step(o);
    assert_true(fabs(p->value.data[0] - 0.4405705) < 1e-6);
    /* reset forgets the velocity: the next step is plain d */
    cairn_nn_sgd_reset(o);
    p->grad[0] = 0.0f;
    float w0 = p->value.data[0];
    cairn_nn_sgd_step(o);
    assert_true(fabs(p->value.data[0] - (w0 - 0.1 * 0.01 * w0)) < 1e-7);

    /* backward fills the gradient the optimizer consumes: y = w x, dL/dy = 1 -> grad = x */
    const float x = 3.0f, one = 1.0f;
    const float *y;
    assert_int_equal(cairn_nn_forward(m, &x, 1, &y, &err), 0);
    cairn_nn_zero_grad(m);
    assert_int_equal(cairn_nn_backward(m, &one, NULL, &err), 0);
    assert_true(fabs(p->grad[0] - 3.0f) < 1e-6);
    /* gradients accumulate across backward calls */
    assert_int_equal(cairn_nn_backward(m, &one, NULL, &err), 0);
    assert_true(fabs(p->grad[0] - 6.0f) < 1e-6);

    hp.momentum = 1.5f;
    assert_int_equal(cairn_nn_sgd_add_group(o, cairn_nn_pred_all, NULL, &hp, &err), CAIRN_EINVAL);
    cairn_nn_sgd_free(o);
    cairn_nn_model_free(m);
}

/* Snapshot of all named tensors. */
static float *snapshot(cairn_nn_model *m)
{
    size_t tot = 0;
    for (int i = 0; i < cairn_nn_param_count(m); i++)
        tot += cairn_nn_param_at(m, i)->value.numel;
    float *s = falloc(tot), *q = s;
    for (int i = 0; i < cairn_nn_param_count(m); i++) {
        cairn_nn_param *p = cairn_nn_param_at(m, i);
        memcpy(q, p->value.data, p->value.numel * sizeof(float));
        q += p->value.numel;
    }
    return s;
}

static int pred_conv_weight(const cairn_nn_param *p, void *ctx)
{
    (void)ctx;
    return p->kind == CAIRN_NN_WEIGHT && p->layer_type == CAIRN_NN_CONV2D;
}

static void test_param_groups(void **state)
{
    (void)state;
    cairn_error err;
    cairn_nn_model *m = small_cnn(1, 6, 6, 3);
    cairn_nn_model_init_params(m, 1);
    prepare_train(m, 4);
    cairn_nn_sgd *o;
    assert_int_equal(cairn_nn_sgd_new(&o, m, &err), 0);
    cairn_nn_sgd_params a = {.lr = 0.1f}, b = {.lr = 0.01f};
    int g0 = cairn_nn_sgd_add_group(o, cairn_nn_pred_norm_affine, NULL, &a, &err);
    assert_int_equal(g0, 0);
    assert_int_equal(cairn_nn_sgd_group_size(o, g0), 4); /* bn1/bn2 weight and bias */
    int g1 = cairn_nn_sgd_add_group(o, pred_conv_weight, NULL, &b, &err);
    assert_int_equal(g1, 1);
    assert_int_equal(cairn_nn_sgd_group_size(o, g1), 2);
    /* a later group does not take what an earlier one holds */
    int g2 = cairn_nn_sgd_add_group(o, cairn_nn_pred_norm_affine, NULL, &b, &err);
    assert_int_equal(cairn_nn_sgd_group_size(o, g2), 0);

    for (int i = 0; i < cairn_nn_param_count(m); i++) {
        cairn_nn_param *p = cairn_nn_param_at(m, i);
        if (!p->trainable) {
            assert_null(p->grad);
            continue;
        }
        for (size_t j = 0; j < p->value.numel; j++)
            p->grad[j] = 1.0f;
    }
    float *before = snapshot(m);
    cairn_nn_sgd_step(o);
    const float *q = before;
    for (int i = 0; i < cairn_nn_param_count(m); i++) {
        cairn_nn_param *p = cairn_nn_param_at(m, i);
        float step = 0.0f;
        if (cairn_nn_pred_norm_affine(p, NULL))
            step = 0.1f;
        else if (pred_conv_weight(p, NULL))
            step = 0.01f;
        for (size_t j = 0; j < p->value.numel; j++)
            if (fabs(p->value.data[j] - (q[j] - step)) > 1e-6)
                fail_msg("%s[%zu]: %g, expected %g", p->name, j, p->value.data[j], q[j] - step);
        q += p->value.numel;
    }
    free(before);

    /* set_lr changes one group only */
    cairn_nn_sgd_set_lr(o, g0, 0.0f);
    float bn_before = cairn_nn_param_find(m, "bn1.weight")->value.data[0];
    float conv_before = cairn_nn_param_find(m, "conv1.weight")->value.data[0];
    cairn_nn_sgd_step(o);
    assert_true(cairn_nn_param_find(m, "bn1.weight")->value.data[0] == bn_before);
    assert_true(
        fabs(cairn_nn_param_find(m, "conv1.weight")->value.data[0] - (conv_before - 0.01f)) < 1e-6);
    cairn_nn_sgd_free(o);

    /* requires_grad off: backward leaves those gradients at 0 and still fills the others */
    assert_int_equal(cairn_nn_set_requires_grad(m, cairn_nn_pred_all, NULL, 0), 8);
    assert_int_equal(cairn_nn_set_requires_grad(m, cairn_nn_pred_norm_affine, NULL, 1), 4);
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_BATCH);
    float x[4 * 36], dout[4 * 3];
    rng r = {5};
    fill_uniform(&r, x, 4 * 36, -1, 1);
    fill_uniform(&r, dout, 12, -1, 1);
    const float *y;
    assert_int_equal(cairn_nn_forward(m, x, 4, &y, &err), 0);
    cairn_nn_zero_grad(m);
    assert_int_equal(cairn_nn_backward(m, dout, NULL, &err), 0);
    double gconv = 0, gbn = 0;
    cairn_nn_param *cw = cairn_nn_param_find(m, "conv1.weight");
    cairn_nn_param *fw = cairn_nn_param_find(m, "fc.weight");
    cairn_nn_param *bw = cairn_nn_param_find(m, "bn1.weight");
    for (size_t j = 0; j < cw->value.numel; j++)
        gconv += fabs(cw->grad[j]);
    for (size_t j = 0; j < fw->value.numel; j++)
        gconv += fabs(fw->grad[j]);
    for (size_t j = 0; j < bw->value.numel; j++)
        gbn += fabs(bw->grad[j]);
    assert_true(gconv == 0.0);
    assert_true(gbn > 0.0);
    cairn_nn_model_free(m);
}

/* ---- A tiny model learns ------------------------------------------------------------------- */

/* 1x6x6 images: class 0 has a bright left half, class 1 a bright right half; noise on top. */
static void toy_batch(rng *r, float *x, int *labels, int n)
{
    for (int i = 0; i < n; i++) {
        labels[i] = (int)(rng_next(r) & 1);
        for (int h = 0; h < 6; h++)
            for (int w = 0; w < 6; w++) {
                float base = ((w < 3) == (labels[i] == 0)) ? 1.0f : 0.0f;
                x[i * 36 + h * 6 + w] = base + rng_uniform(r, -0.4f, 0.4f);
            }
    }
}

static void test_learns_toy_problem(void **state)
{
    (void)state;
    enum { B = 16 };
    cairn_error err;
    cairn_nn_model *m;
    assert_int_equal(cairn_nn_model_new(&m, 1, 6, 6, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv1", 4, 3, 1, 1, 0, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn1", 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_relu(m, &err), 0);
    assert_int_equal(cairn_nn_add_maxpool2d(m, 2, 2, &err), 0);
    assert_int_equal(cairn_nn_add_flatten(m, &err), 0);
    assert_int_equal(cairn_nn_add_linear(m, "fc", 2, 1, &err), 0);
    cairn_nn_model_init_params(m, 2024);
    prepare_train(m, B);
    cairn_nn_sgd *o;
    assert_int_equal(cairn_nn_sgd_new(&o, m, &err), 0);
    cairn_nn_sgd_params hp = {.lr = 0.05f, .momentum = 0.9f, .weight_decay = 1e-4f};
    assert_int_equal(cairn_nn_sgd_add_group(o, cairn_nn_pred_all, NULL, &hp, &err), 0);

    rng r = {31337};
    float x[B * 36], dlogits[B * 2];
    int labels[B];
    const float *y;
    float first = 0.0f, loss = 0.0f, avg = 0.0f;
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_TRAIN);
    for (int step = 0; step < 150; step++) {
        toy_batch(&r, x, labels, B);
        assert_int_equal(cairn_nn_forward(m, x, B, &y, &err), 0);
        assert_int_equal(cairn_nn_cross_entropy(y, labels, NULL, B, 2, &loss, dlogits, &err), 0);
        if (step == 0) first = loss;
        if (step >= 140) avg += loss / 10;
        cairn_nn_zero_grad(m);
        assert_int_equal(cairn_nn_backward(m, dlogits, NULL, &err), 0);
        cairn_nn_sgd_step(o);
    }
    assert_true(first > 0.3f);
    assert_true(avg < 0.05f);

    /* held-out accuracy with the running statistics */
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_EVAL);
    int correct = 0;
    for (int t = 0; t < 8; t++) {
        toy_batch(&r, x, labels, B);
        assert_int_equal(cairn_nn_forward(m, x, B, &y, &err), 0);
        for (int i = 0; i < B; i++)
            correct += (y[2 * i + 1] > y[2 * i]) == (labels[i] == 1);
    }
    assert_true(correct >= 8 * B * 97 / 100);
    cairn_nn_sgd_free(o);
    cairn_nn_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor),
        cmocka_unit_test(test_sgemm),
        cmocka_unit_test(test_build_errors),
        cmocka_unit_test(test_conv_forward_values),
        cmocka_unit_test(test_pool_linear_forward_values),
        cmocka_unit_test(test_grad_conv),
        cmocka_unit_test(test_grad_batchnorm),
        cmocka_unit_test(test_grad_linear),
        cmocka_unit_test(test_grad_relu),
        cmocka_unit_test(test_grad_pools),
        cmocka_unit_test(test_grad_small_cnn),
        cmocka_unit_test(test_grad_resblock),
        cmocka_unit_test(test_resblock_forward_values),
        cmocka_unit_test(test_resblock_gguf_and_norms),
        cmocka_unit_test(test_resblock_gguf_missing_projection),
        cmocka_unit_test(test_batchnorm_modes),
        cmocka_unit_test(test_softmax_values),
        cmocka_unit_test(test_losses),
        cmocka_unit_test(test_jsd_loss),
        cmocka_unit_test(test_sgd_rule),
        cmocka_unit_test(test_param_groups),
        cmocka_unit_test(test_learns_toy_problem),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
