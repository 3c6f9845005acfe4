/*
 * tests/unit/test_cema.c — CEMA: edge selection on constructed probabilities; the cloud's replay
 * queue; an adaptation run on a shifted synthetic task that must lower the edge model's entropy
 * and raise its accuracy, moving only batchnorm affine parameters; a bundle from the cloud
 * that carries the gain to a freshly loaded device model; distillation at a temperature
 * (value and gradient against the definition) and several steps per batch.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "adapt/bundle.h"
#include "adapt/cema.h"
#include "adapt/cema_select.h"
#include "adapt/nn/nn_gguf.h"
#include "adapt/nn/nn_train.h"

/* ---- Selection ------------------------------------------------------------------------------ */

static float entropy_of(const float *p, int k)
{
    double h = 0;
    for (int j = 0; j < k; j++)
        if (p[j] > 0) h -= p[j] * log(p[j]);
    return (float)h;
}

/* Row i of probs: mass `peak` on class c, the rest spread evenly. */
static void peaked(float *row, int k, int c, float peak)
{
    for (int j = 0; j < k; j++)
        row[j] = (1.0f - peak) / (float)(k - 1);
    row[c] = peak;
}

static void test_select_keeps_confident_novel_samples(void **state)
{
    (void)state;
    enum { K = 4, N = 5 };
    float probs[N * K], ent[N];
    peaked(probs + 0 * K, K, 0, 0.97f); /* confident, first: kept, starts p_bar */
    peaked(probs + 1 * K, K, 1, 0.30f); /* near uniform: high entropy, dropped */
    peaked(probs + 2 * K, K, 0, 0.96f); /* confident but like p_bar: redundant, dropped */
    peaked(probs + 3 * K, K, 2, 0.95f); /* confident, another class: kept */
    peaked(probs + 4 * K, K, 3, 0.40f); /* uncertain: dropped */
    for (int i = 0; i < N; i++)
        ent[i] = entropy_of(probs + i * K, K);

    cairn_cema_selector *s = NULL;
    cairn_error err;
    cairn_cema_select_params p = cairn_cema_select_default_params();
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), 0);
    uint8_t keep[N];
    assert_int_equal(cairn_cema_select(s, probs, ent, N, keep), 2);
    const uint8_t want[N] = {1, 0, 0, 1, 0};
    assert_memory_equal(keep, want, N);
    /* E_max is lambda times the batch's mean entropy (first batch). */
    double mean = 0;
    for (int i = 0; i < N; i++)
        mean += ent[i] / N;
    assert_float_equal(cairn_cema_selector_e_max(s), p.lambda * mean, 1e-5);
    assert_int_equal(cairn_cema_selector_seen(s), N);
    assert_int_equal(cairn_cema_selector_kept(s), 2);
    cairn_cema_selector_free(s);
}

static void test_select_e_max_follows_running_entropy(void **state)
{
    (void)state;
    enum { K = 10, N = 8 };
    cairn_cema_selector *s = NULL;
    cairn_error err;
    cairn_cema_select_params p = cairn_cema_select_default_params();
    p.d_margin = 1.0f; /* isolate the entropy rule */
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), 0);
    float probs[N * K], ent[N];
    uint8_t keep[N];
    /* A calm stream: every sample equally confident; none below the mean, so none kept. */
    for (int i = 0; i < N; i++) {
        peaked(probs + i * K, K, i % K, 0.9f);
        ent[i] = entropy_of(probs + i * K, K);
    }
    assert_int_equal(cairn_cema_select(s, probs, ent, N, keep), 0);
    float calm = cairn_cema_selector_e_max(s);
    /* A shift makes everything uncertain: E_max rises with the running mean ... */
    for (int b = 0; b < 40; b++) {
        for (int i = 0; i < N; i++) {
            peaked(probs + i * K, K, i % K, i < N / 2 ? 0.5f : 0.3f);
            ent[i] = entropy_of(probs + i * K, K);
        }
        cairn_cema_select(s, probs, ent, N, keep);
    }
    assert_true(cairn_cema_selector_e_max(s) > calm);
    /* ... so that the relatively confident half (peak 0.5, still far less sure than the calm
     * stream) is now kept and the rest dropped. */
    for (int i = 0; i < N; i++)
        assert_int_equal(keep[i], i < N / 2);
    /* E_min drops samples that are too sure to teach anything. */
    cairn_cema_selector_free(s);
    p.e_min = 0.5f;
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), 0);
    peaked(probs, K, 0, 0.999f);
    peaked(probs + K, K, 1, 0.8f);
    peaked(probs + 2 * K, K, 2, 0.2f);
    for (int i = 0; i < 3; i++)
        ent[i] = entropy_of(probs + i * K, K);
    assert_int_equal(cairn_cema_select(s, probs, ent, 3, keep), 1);
    assert_int_equal(keep[0], 0);
    assert_int_equal(keep[1], 1);
    /* NaN inputs are never kept. */
    ent[1] = NAN;
    assert_int_equal(cairn_cema_select(s, probs, ent, 3, keep), 0);
    /* lambda_min keeps the samples the model is least sure of, relative to the running mean
     * entropy as E_max is: a stream of sure and unsure samples, with no upper bound that
     * matters, uploads the unsure ones only, and keeps doing so when the whole stream shifts
     * to higher entropy (a static E_min would then keep everything). */
    cairn_cema_selector_free(s);
    p = cairn_cema_select_default_params();
    p.lambda = 100;
    p.lambda_min = 1.0f;
    p.d_margin = 1;
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), 0);
    for (int shift = 0; shift < 2; shift++) {
        for (int b = 0; b < 30; b++) {
            for (int i = 0; i < N; i++) {
                float sure = shift ? 0.6f : 0.95f, unsure = shift ? 0.25f : 0.5f;
                peaked(probs + i * K, K, i % K, i % 4 == 0 ? unsure : sure);
                ent[i] = entropy_of(probs + i * K, K);
            }
            cairn_cema_select(s, probs, ent, N, keep);
        }
        for (int i = 0; i < N; i++)
            assert_int_equal(keep[i], i % 4 == 0);
    }
    p.lambda_min = 100; /* not below lambda */
    cairn_cema_selector *s2 = NULL;
    assert_int_equal(cairn_cema_selector_new(&s2, K, &p, &err), CAIRN_EINVAL);
    p.lambda_min = 0;
    cairn_cema_selector_free(s);
    /* Bad parameters are refused. */
    p.d_margin = 0;
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), CAIRN_EINVAL);
}

/* The upload budget: every batch keeps floor or ceil of q * its valid samples (the long-run
 * fraction q), and they are its highest-entropy samples, also on a stream where every sample is
 * about as unsure as the running mean (where lambda_min alone keeps almost nothing). */
static void test_select_upload_budget(void **state)
{
    (void)state;
    enum { K = 10, N = 32, BATCHES = 25 };
    cairn_cema_selector *s = NULL;
    cairn_error err;
    cairn_cema_select_params p = cairn_cema_select_default_params();
    p.lambda = 100;
    p.d_margin = 1;
    p.upload_fraction = 0.3f;
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), 0);
    float probs[N * K], ent[N];
    uint8_t keep[N];
    uint32_t x = 12345;
    int total = 0, seen = 0;
    for (int b = 0; b < BATCHES; b++) {
        /* Peaks drawn at random; from batch 10 on, all within 0.02 of each other, as on a
         * low-contrast stream. Row 5 of every 5th batch is NaN: never kept, not counted. */
        for (int i = 0; i < N; i++) {
            x = x * 1664525u + 1013904223u;
            float u = (float)(x >> 8) / (float)(1u << 24);
            float peak = b < 10 ? 0.15f + 0.8f * u : 0.40f + 0.02f * u;
            peaked(probs + i * K, K, (i * 7 + b) % K, peak);
            ent[i] = entropy_of(probs + i * K, K);
        }
        int valid = N;
        if (b % 5 == 0) {
            ent[5] = NAN;
            valid--;
        }
        int kept = cairn_cema_select(s, probs, ent, N, keep);
        seen += valid;
        total += kept;
        /* 0.3 * 31 or 32: 9 or 10 a batch. */
        assert_true(kept == (int)floor(0.3 * valid) || kept == (int)ceil(0.3 * valid));
        int n_keep = 0;
        float lowest_kept = INFINITY, highest_left = -INFINITY;
        for (int i = 0; i < N; i++) {
            if (isnan(ent[i])) {
                assert_int_equal(keep[i], 0);
                continue;
            }
            n_keep += keep[i];
            if (keep[i] && ent[i] < lowest_kept) lowest_kept = ent[i];
            if (!keep[i] && ent[i] > highest_left) highest_left = ent[i];
        }
        assert_int_equal(n_keep, kept);
        assert_true(lowest_kept >= highest_left); /* the most uncertain ones */
        /* The budget carries its fractions: never more than q of what was seen, and less by
         * under one sample. */
        assert_true(total <= 0.3 * seen + 1e-6 && total > 0.3 * seen - 1);
        /* A device that takes a bundle after every batch resets its selector: the carried
         * fraction survives, or every batch of 32 would send 9 (28%). */
        cairn_cema_selector_reset(s);
    }
    assert_int_equal(cairn_cema_selector_seen(s), seen);
    assert_int_equal(cairn_cema_selector_kept(s), total);

    /* The low-contrast stream with lambda_min 1.0 alone: about half the samples sit above the
     * mean; with the budget on top, still 9 or 10, the most uncertain. And with the redundancy
     * filter, a redundant top sample gives its place to the next most uncertain novel one. */
    cairn_cema_selector_free(s);
    p.lambda_min = 1.0f;
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), 0);
    for (int i = 0; i < N; i++) {
        peaked(probs + i * K, K, i % K, 0.40f + 0.0005f * (float)i); /* row 0 most uncertain */
        ent[i] = entropy_of(probs + i * K, K);
    }
    int kept = cairn_cema_select(s, probs, ent, N, keep);
    assert_int_equal(kept, 9); /* floor(9.6); 0.6 carried */
    for (int i = 0; i < N; i++)
        assert_int_equal(keep[i], i < 9);
    cairn_cema_selector_free(s);
    p.lambda_min = 0;
    p.d_margin = 0.5f;
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), 0);
    for (int i = 0; i < N; i++) { /* rows 0 and 1 most uncertain, both sure of class 0 */
        peaked(probs + i * K, K, i < 2 ? 0 : i % K, i < 2 ? 0.89f + 0.01f * (float)i : 0.95f);
        ent[i] = entropy_of(probs + i * K, K);
    }
    assert_int_equal(cairn_cema_select(s, probs, ent, N, keep), 9);
    assert_int_equal(keep[0], 1);
    assert_int_equal(keep[1], 0); /* redundant with row 0 */
    cairn_cema_selector_free(s);

    /* A random share: of a budget of 9 or 10, round(0.3 * budget) = 3 drawn from the rest of the
     * batch; the 6 or 7 most uncertain are always in, and the draws reach the sure half. */
    p.d_margin = 1;
    p.upload_random = 0.3f;
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), 0);
    int low_half = 0;
    for (int b = 0; b < 20; b++) {
        for (int i = 0; i < N; i++) { /* entropy falls with i */
            peaked(probs + i * K, K, i % K, 0.2f + 0.02f * (float)i);
            ent[i] = entropy_of(probs + i * K, K);
        }
        int kept = cairn_cema_select(s, probs, ent, N, keep);
        assert_true(kept == 9 || kept == 10);
        for (int i = 0; i < kept - 3; i++)
            assert_int_equal(keep[i], 1);
        for (int i = N / 2; i < N; i++)
            low_half += keep[i];
    }
    assert_true(low_half > 0);
    cairn_cema_selector_free(s);
    p.upload_random = 1; /* all at random: not a budget of uncertain samples */
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "upload_random"));
    p.upload_random = 0.3f;
    p.upload_fraction = 0; /* a share of no budget */
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), CAIRN_EINVAL);
    p.upload_random = 0;

    /* Out of range: refused, naming the parameter. */
    const float bad[] = {-0.1f, 1.5f, NAN};
    for (int i = 0; i < 3; i++) {
        p.upload_fraction = bad[i];
        assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), CAIRN_EINVAL);
        assert_null(s);
        assert_non_null(strstr(err.msg, "upload_fraction"));
    }
}

/* Power acquisition (upload_power beta): the budget is still filled, floor or ceil of q n, but
 * drawn with probability ~ H^beta: the uncertain half is kept more often than the sure half, the
 * sure half is reached, a sample with H = 0 never is while others are left, the draw repeats for
 * the same inputs, and a large beta is the top-k. */
static void test_select_upload_power(void **state)
{
    (void)state;
    enum { K = 10, N = 32, BATCHES = 200 };
    cairn_cema_selector *s = NULL, *s2 = NULL;
    cairn_error err;
    cairn_cema_select_params p = cairn_cema_select_default_params();
    p.lambda = 100;
    p.d_margin = 1;
    p.upload_fraction = 0.3f;
    p.upload_power = 2;
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), 0);
    assert_int_equal(cairn_cema_selector_new(&s2, K, &p, &err), 0);
    float probs[N * K], ent[N];
    uint8_t keep[N], keep2[N];
    for (int i = 0; i < N; i++) { /* entropy falls with i; row N-1 is certain (H = 0) */
        peaked(probs + i * K, K, i % K, i == N - 1 ? 1.0f : 0.12f + 0.025f * (float)i);
        ent[i] = entropy_of(probs + i * K, K);
    }
    assert_true(ent[N - 1] == 0.0f);
    int hi = 0, lo = 0, beyond_top = 0;
    for (int b = 0; b < BATCHES; b++) {
        int kept = cairn_cema_select(s, probs, ent, N, keep);
        assert_true(kept == 9 || kept == 10);
        assert_int_equal(cairn_cema_select(s2, probs, ent, N, keep2), kept);
        assert_memory_equal(keep, keep2, N); /* reproducible */
        assert_int_equal(keep[N - 1], 0);
        for (int i = 0; i < N / 2; i++)
            hi += keep[i];
        for (int i = N / 2; i < N; i++)
            lo += keep[i];
        for (int i = kept; i < N; i++)
            beyond_top += keep[i];
    }
    assert_true(lo > 0 && beyond_top > 0); /* not the top-k */
    assert_true(2 * hi > 3 * lo);          /* but weighted towards the uncertain (H^2: 2.4x) */
    cairn_cema_selector_free(s);
    cairn_cema_selector_free(s2);

    /* H^64: the top-k where entropies are apart (a ratio 1.25 is a weight 1.6e6; entropies
     * within a few percent of each other stay a draw even at beta 64) */
    p.upload_power = 64;
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), 0);
    for (int i = 0; i < N; i++)
        ent[i] = 2.0f * powf(0.8f, (float)i);
    assert_int_equal(cairn_cema_select(s, probs, ent, N, keep), 9);
    for (int i = 0; i < N; i++)
        assert_int_equal(keep[i], i < 9);
    cairn_cema_selector_free(s);

    const float bad[] = {-1.0f, 65.0f, NAN};
    for (int i = 0; i < 3; i++) {
        p.upload_power = bad[i];
        assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), CAIRN_EINVAL);
        assert_non_null(strstr(err.msg, "upload_power"));
    }
    p.upload_power = 1;
    p.upload_fraction = 0; /* a draw of no budget */
    assert_int_equal(cairn_cema_selector_new(&s, K, &p, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "upload_power"));
}

/* ---- A shifted synthetic task ----------------------------------------------------------- */

enum { S = 8, NCLS = 3, DIM = S * S };

static uint64_t rng_state;
static float urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) & 0xffffff) / 16777216.0f;
}

/* Class 0: horizontal stripes, 1: vertical stripes, 2: a centred blob; plus noise. The shifted
 * domain is low-contrast and bright (x' = 0.35 x + 0.5), like a fog/contrast corruption. */
static void make_images(float *x, int *y, int n, int shifted)
{
    for (int i = 0; i < n; i++) {
        int c = (int)(urand() * NCLS) % NCLS;
        int phase = urand() < 0.5f;
        y[i] = c;
        for (int r = 0; r < S; r++)
            for (int q = 0; q < S; q++) {
                float v;
                if (c == 0)
                    v = ((r + phase) % 2) ? 0.9f : 0.1f;
                else if (c == 1)
                    v = ((q + phase) % 2) ? 0.9f : 0.1f;
                else
                    v = (abs(2 * r - 7) < 5 && abs(2 * q - 7) < 5) ? 0.9f : 0.1f;
                v += (urand() - 0.5f) * 0.3f;
                if (shifted) v = 0.35f * v + 0.5f;
                x[(size_t)i * DIM + r * S + q] = v < 0 ? 0 : v > 1 ? 1 : v;
            }
    }
}

static cairn_nn_model *build(int c1, int c2)
{
    cairn_error err;
    cairn_nn_model *m = NULL;
    assert_int_equal(cairn_nn_model_new(&m, 1, S, S, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv1", c1, 3, 1, 1, 0, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn1", 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_relu(m, &err), 0);
    assert_int_equal(cairn_nn_add_maxpool2d(m, 2, 2, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv2", c2, 3, 1, 1, 0, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn2", 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_relu(m, &err), 0);
    assert_int_equal(cairn_nn_add_global_avgpool(m, &err), 0);
    assert_int_equal(cairn_nn_add_flatten(m, &err), 0);
    assert_int_equal(cairn_nn_add_linear(m, "fc", NCLS, 1, &err), 0);
    return m;
}

/* Trains m on clean images with labels, then leaves it in eval mode. */
static void train(cairn_nn_model *m, uint64_t seed)
{
    cairn_error err;
    enum { B = 32 };
    cairn_nn_model_params mp = cairn_nn_model_default_params();
    mp.max_batch = B;
    mp.training = 1;
    mp.sgemm = cairn_nn_sgemm_blas;
    cairn_nn_model_init_params(m, seed);
    assert_int_equal(cairn_nn_model_prepare(m, &mp, &err), 0);
    cairn_nn_sgd *o = NULL;
    assert_int_equal(cairn_nn_sgd_new(&o, m, &err), 0);
    cairn_nn_sgd_params sp = cairn_nn_sgd_default_params();
    sp.lr = 0.05f;
    sp.momentum = 0.9f;
    assert_true(cairn_nn_sgd_add_group(o, cairn_nn_pred_all, NULL, &sp, &err) >= 0);
    float x[B * DIM], g[B * NCLS], loss;
    int y[B];
    const float *out;
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_TRAIN);
    for (int step = 0; step < 150; step++) {
        make_images(x, y, B, 0);
        assert_int_equal(cairn_nn_forward(m, x, B, &out, &err), 0);
        assert_int_equal(cairn_nn_cross_entropy(out, y, NULL, B, NCLS, &loss, g, &err), 0);
        cairn_nn_zero_grad(m);
        assert_int_equal(cairn_nn_backward(m, g, NULL, &err), 0);
        cairn_nn_sgd_step(o);
    }
    cairn_nn_sgd_free(o);
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_EVAL);
}

/* Accuracy and mean entropy of m (eval mode) on n images, in chunks of 16. */
static void evaluate(cairn_nn_model *m, const float *x, const int *y, int n, double *acc,
                     double *ent)
{
    cairn_error err;
    cairn_nn_bn_mode was = cairn_nn_get_bn_mode(m);
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_EVAL);
    int correct = 0;
    double hsum = 0;
    for (int i = 0; i < n; i += 16) {
        int b = n - i < 16 ? n - i : 16;
        const float *out;
        float h[16];
        assert_int_equal(cairn_nn_forward(m, x + (size_t)i * DIM, b, &out, &err), 0);
        cairn_nn_entropy(out, b, NCLS, h);
        for (int j = 0; j < b; j++) {
            const float *z = out + (size_t)j * NCLS;
            int best = 0;
            for (int c = 1; c < NCLS; c++)
                if (z[c] > z[best]) best = c;
            correct += best == y[i + j];
            hsum += h[j];
        }
    }
    cairn_nn_set_bn_mode(m, was);
    *acc = (double)correct / n;
    *ent = hsum / n;
}

typedef struct {
    char edge_path[64], found_path[64];
} paths;

static int setup_models(void **state)
{
    paths *p = calloc(1, sizeof *p);
    snprintf(p->edge_path, sizeof p->edge_path, "/tmp/cairn-cema-edge-%d.gguf", (int)getpid());
    snprintf(p->found_path, sizeof p->found_path, "/tmp/cairn-cema-found-%d.gguf", (int)getpid());
    cairn_error err;
    rng_state = 42;
    cairn_nn_model *e = build(4, 8), *f = build(12, 24);
    train(e, 1);
    train(f, 2);
    assert_int_equal(cairn_nn_save(e, p->edge_path, &err), 0);
    assert_int_equal(cairn_nn_save(f, p->found_path, &err), 0);
    cairn_nn_model_free(e);
    cairn_nn_model_free(f);
    *state = p;
    return 0;
}

static int teardown_models(void **state)
{
    paths *p = *state;
    unlink(p->edge_path);
    unlink(p->found_path);
    free(p);
    return 0;
}

static int is_affine(const cairn_nn_param *p)
{
    return p->kind == CAIRN_NN_NORM_WEIGHT || p->kind == CAIRN_NN_NORM_BIAS;
}

static void test_adaptation_on_shifted_task(void **state)
{
    paths *p = *state;
    cairn_error err;
    cairn_cema_params cp = cairn_cema_default_params();
    cp.batch_size = 32;
    cp.new_per_step = 16;
    cp.lr_edge = 0.02f;
    cairn_cema_cloud *c = NULL;
    int rc = cairn_cema_cloud_open(&c, p->edge_path, p->found_path, &cp, &err);
    if (rc) fail_msg("open: %s", err.msg);

    enum { NT = 256 };
    static float tx[NT * DIM], sx[NT * DIM];
    static int ty[NT], sy[NT];
    rng_state = 7;
    make_images(tx, ty, NT, 0);
    make_images(sx, sy, NT, 1);
    cairn_nn_model *edge = cairn_cema_cloud_edge_model(c);
    double clean_acc, clean_h, acc0, h0;
    evaluate(edge, tx, ty, NT, &clean_acc, &clean_h);
    evaluate(edge, sx, sy, NT, &acc0, &h0);
    print_message("edge: clean acc %.3f; shifted acc %.3f entropy %.3f\n", clean_acc, acc0, h0);
    assert_true(clean_acc > 0.9);        /* the task is learnable ... */
    assert_true(acc0 < clean_acc - 0.2); /* ... and the shift hurts */

    /* Snapshot every tensor of both models. */
    cairn_nn_model *found = cairn_cema_cloud_foundation_model(c);
    cairn_nn_model *ms[2] = {edge, found};
    float *before[2][32];
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < cairn_nn_param_count(ms[k]); i++) {
            cairn_nn_param *q = cairn_nn_param_at(ms[k], i);
            before[k][i] = malloc(q->value.numel * sizeof(float));
            memcpy(before[k][i], q->value.data, q->value.numel * sizeof(float));
        }

    /* Stream shifted uploads (fresh images, not the evaluation set) through the cloud. */
    static float ux[16 * DIM];
    int uy[16];
    cairn_cema_step_stats st = {0};
    for (int step = 0; step < 60; step++) {
        make_images(ux, uy, 16, 1);
        assert_int_equal(cairn_cema_cloud_add_samples(c, ux, 16, &err), 0);
        rc = cairn_cema_cloud_step(c, &st, &err);
        if (rc < 0) fail_msg("step: %s", err.msg);
        assert_int_equal(rc, st.n_new + st.n_replay);
        assert_int_equal(st.n_new, 16);
        if (step > 0) assert_int_equal(st.n_replay, 16); /* mixed with replayed samples */
    }
    double acc1, h1;
    evaluate(edge, sx, sy, NT, &acc1, &h1);
    print_message("edge after CEMA: shifted acc %.3f entropy %.3f (agreement %.2f)\n", acc1, h1,
                  st.agreement);
    assert_true(acc1 > acc0 + 0.15);
    assert_true(h1 < h0);

    /* Only batchnorm affine parameters moved (and the running statistics, which are state). */
    int affine_changed = 0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < cairn_nn_param_count(ms[k]); i++) {
            cairn_nn_param *q = cairn_nn_param_at(ms[k], i);
            int same = !memcmp(before[k][i], q->value.data, q->value.numel * sizeof(float));
            if (q->kind == CAIRN_NN_WEIGHT || q->kind == CAIRN_NN_BIAS)
                assert_true(same);
            else if (is_affine(q) && !same && k == 0)
                affine_changed++;
            free(before[k][i]);
        }
    assert_int_equal(affine_changed, 4); /* bn1/bn2 weight and bias of the edge model */

    /* The bundle carries the gain to a device that loads the base file. */
    cairn_bundle_key *key = NULL;
    assert_int_equal(cairn_bundle_key_generate(&key, &err), 0);
    uint8_t *bundle = NULL;
    size_t len = 0;
    uint64_t version = 0;
    assert_int_equal(cairn_cema_cloud_bundle(c, key, &bundle, &len, &version, &err), 0);
    assert_int_equal(version, 1);
    cairn_nn_model *device = NULL;
    assert_int_equal(cairn_nn_load(&device, p->edge_path, &err), 0);
    cairn_nn_model_params mp = cairn_nn_model_default_params();
    mp.max_batch = 16;
    assert_int_equal(cairn_nn_model_prepare(device, &mp, &err), 0);
    cairn_bundle_expect x = {.model_name = "edge", .current_version = 0};
    assert_int_equal(cairn_bundle_sha256_file(p->edge_path, x.base_sha256, &err), 0);
    double dacc0, dh0, dacc1, dh1;
    evaluate(device, sx, sy, NT, &dacc0, &dh0);
    rc = cairn_bundle_apply(device, bundle, len, key, &x, &version, NULL, &err);
    if (rc) fail_msg("apply: %s", err.msg);
    evaluate(device, sx, sy, NT, &dacc1, &dh1);
    assert_float_equal(dacc0, acc0, 1e-9);
    assert_float_equal(dacc1, acc1, 1e-9);
    free(bundle);
    cairn_bundle_key_free(key);
    cairn_nn_model_free(device);

    cairn_cema_counters cnt;
    cairn_cema_cloud_counters(c, &cnt);
    assert_int_equal(cnt.received, 60 * 16);
    assert_int_equal(cnt.steps, 60);
    assert_int_equal(cnt.version, 1);
    assert_int_equal(cnt.pending, 0);
    cairn_cema_cloud_close(c);
}

/*
 * A residual teacher (adapt/nn resblocks, as foundation-res): CEMA adapts its batchnorms — those
 * inside the blocks included — by entropy minimisation and leaves every conv and linear weight
 * as it was; the edge model is distilled from it as from a plain one.
 */
static void test_residual_teacher(void **state)
{
    paths *p = *state;
    cairn_error err;
    char rpath[64];
    snprintf(rpath, sizeof rpath, "/tmp/cairn-cema-res-%d.gguf", (int)getpid());
    cairn_nn_model *r = NULL;
    assert_int_equal(cairn_nn_model_new(&r, 1, S, S, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(r, "stem", 8, 3, 1, 1, 0, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(r, "stem_bn", 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_relu(r, &err), 0);
    assert_int_equal(cairn_nn_add_resblock(r, "s1.b0", 8, 1, 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_resblock(r, "s2.b0", 16, 2, 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_global_avgpool(r, &err), 0);
    assert_int_equal(cairn_nn_add_flatten(r, &err), 0);
    assert_int_equal(cairn_nn_add_linear(r, "fc", NCLS, 1, &err), 0);
    rng_state = 43;
    train(r, 3);
    assert_int_equal(cairn_nn_save(r, rpath, &err), 0);
    cairn_nn_model_free(r);

    cairn_cema_params cp = cairn_cema_default_params();
    cp.batch_size = 32;
    cp.new_per_step = 16;
    cp.lr_foundation = 0.01f;
    cairn_cema_cloud *c = NULL;
    int rc = cairn_cema_cloud_open(&c, p->edge_path, rpath, &cp, &err);
    unlink(rpath);
    if (rc) fail_msg("open: %s", err.msg);
    cairn_nn_model *found = cairn_cema_cloud_foundation_model(c);
    int np = cairn_nn_param_count(found);
    float **before = calloc((size_t)np, sizeof(float *));
    for (int i = 0; i < np; i++) {
        cairn_nn_param *q = cairn_nn_param_at(found, i);
        before[i] = malloc(q->value.numel * sizeof(float));
        memcpy(before[i], q->value.data, q->value.numel * sizeof(float));
    }
    static float ux[16 * DIM];
    int uy[16];
    cairn_cema_step_stats st = {0};
    for (int step = 0; step < 10; step++) {
        make_images(ux, uy, 16, 1);
        assert_int_equal(cairn_cema_cloud_add_samples(c, ux, 16, &err), 0);
        rc = cairn_cema_cloud_step(c, &st, &err);
        if (rc < 0) fail_msg("step: %s", err.msg);
    }
    int block_affine_moved = 0, affine = 0;
    for (int i = 0; i < np; i++) {
        cairn_nn_param *q = cairn_nn_param_at(found, i);
        int same = !memcmp(before[i], q->value.data, q->value.numel * sizeof(float));
        if (q->kind == CAIRN_NN_WEIGHT || q->kind == CAIRN_NN_BIAS) assert_true(same);
        if (is_affine(q)) {
            affine++;
            block_affine_moved += !same && strchr(q->name, '.') != strrchr(q->name, '.');
        }
        free(before[i]);
    }
    free(before);
    /* stem_bn, s1.b0 bn1/bn2, s2.b0 bn1/bn2/pbn: 6 batchnorms, 12 affine tensors, 10 in blocks */
    assert_int_equal(affine, 12);
    assert_int_equal(block_affine_moved, 10);
    cairn_cema_cloud_close(c);
}

static void test_pending_queue_drops_oldest(void **state)
{
    paths *p = *state;
    cairn_error err;
    cairn_cema_params cp = cairn_cema_default_params();
    cp.batch_size = 8;
    cp.new_per_step = 4;
    cp.pending_capacity = 10;
    cp.replay_capacity = 6;
    cairn_cema_cloud *c = NULL;
    assert_int_equal(cairn_cema_cloud_open(&c, p->edge_path, p->found_path, &cp, &err), 0);
    cairn_cema_step_stats st;
    assert_int_equal(cairn_cema_cloud_step(c, &st, &err), 0); /* nothing yet */
    assert_int_equal(cairn_cema_cloud_replay_step(c, &st, &err), 0); /* nor to replay */
    float x[13 * DIM];
    int y[13];
    make_images(x, y, 13, 1);
    assert_int_equal(cairn_cema_cloud_add_samples(c, x, 13, &err), 0);
    cairn_cema_counters cnt;
    cairn_cema_cloud_counters(c, &cnt);
    assert_int_equal(cnt.pending, 10);
    assert_int_equal(cnt.dropped, 3);
    assert_int_equal(cairn_cema_cloud_step(c, &st, &err), 4); /* 4 new, empty replay */
    assert_int_equal(st.n_replay, 0);
    /* A replay-only step: the 4 in the buffer, none of the 6 pending; no new sample enters. */
    assert_int_equal(cairn_cema_cloud_replay_step(c, &st, &err), 4);
    assert_int_equal(st.n_new, 0);
    assert_int_equal(st.n_replay, 4);
    cairn_cema_cloud_counters(c, &cnt);
    assert_int_equal(cnt.pending, 6);
    assert_int_equal(cnt.replay, 4);
    assert_int_equal(cnt.steps, 2);
    assert_int_equal(cairn_cema_cloud_step(c, &st, &err), 8); /* 4 new + 4 replayed */
    assert_int_equal(st.n_new, 4);
    assert_int_equal(st.n_replay, 4);
    assert_int_equal(cairn_cema_cloud_step(c, &st, &err), 8); /* 2 new + 6 replayed (full) */
    assert_int_equal(st.n_new, 2);
    assert_int_equal(st.n_replay, 6);
    cairn_cema_cloud_counters(c, &cnt);
    assert_int_equal(cnt.replay, 6);
    assert_int_equal(cnt.pending, 0);
    /* A NaN upload is refused and queues nothing. */
    x[5] = NAN;
    assert_int_equal(cairn_cema_cloud_add_samples(c, x, 2, &err), CAIRN_EFORMAT);
    cairn_cema_cloud_counters(c, &cnt);
    assert_int_equal(cnt.pending, 0);
    cairn_cema_cloud_close(c);
}

/* ---- Distillation at a temperature, several steps per batch --------------------------------- */

/* A fresh copy of a model file, prepared for batches of 16, normalising with batch statistics
 * (what the cloud's models do on a step's batch, without touching running statistics). */
static cairn_nn_model *load_batch_mode(const char *path)
{
    cairn_error err;
    cairn_nn_model *m = NULL;
    assert_int_equal(cairn_nn_load(&m, path, &err), 0);
    cairn_nn_model_params mp = cairn_nn_model_default_params();
    mp.max_batch = 16;
    assert_int_equal(cairn_nn_model_prepare(m, &mp, &err), 0);
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_BATCH);
    return m;
}

/* T^2 * mean_i s_i KL(softmax(lf_i / T) || softmax(le_i / T)), s_i = exp(-H(lf_i)) normalised to
 * mean 1: the distillation term of cema.h, computed here from its definition in doubles. */
static double distill_loss(const float *lf, const float *le, int n, double T)
{
    double s[16], ssum = 0, loss = 0;
    for (int i = 0; i < n; i++) {
        double mx = -INFINITY, z = 0, h = 0;
        for (int j = 0; j < NCLS; j++)
            mx = fmax(mx, lf[i * NCLS + j]);
        for (int j = 0; j < NCLS; j++)
            z += exp(lf[i * NCLS + j] - mx);
        for (int j = 0; j < NCLS; j++) {
            double pj = exp(lf[i * NCLS + j] - mx) / z;
            h -= pj * log(pj);
        }
        s[i] = exp(-h);
        ssum += s[i];
    }
    for (int i = 0; i < n; i++) {
        double p[NCLS], q[NCLS], zp = 0, zq = 0, mp = -INFINITY, mq = -INFINITY, kl = 0;
        for (int j = 0; j < NCLS; j++) {
            mp = fmax(mp, lf[i * NCLS + j] / T);
            mq = fmax(mq, le[i * NCLS + j] / T);
        }
        for (int j = 0; j < NCLS; j++) {
            p[j] = exp(lf[i * NCLS + j] / T - mp);
            q[j] = exp(le[i * NCLS + j] / T - mq);
            zp += p[j];
            zq += q[j];
        }
        for (int j = 0; j < NCLS; j++)
            kl += p[j] / zp * log((p[j] / zp) / (q[j] / zq));
        loss += s[i] * n / ssum * kl;
    }
    return T * T * loss / n;
}

static void forward16(cairn_nn_model *m, const float *x, float *logits)
{
    cairn_error err;
    const float *out;
    assert_int_equal(cairn_nn_forward(m, x, 16, &out, &err), 0);
    memcpy(logits, out, 16 * NCLS * sizeof(float));
}

/*
 * With w_kl alone, one step at temperature T reports the distillation loss of cema.h's formula
 * and moves each edge batchnorm parameter by -lr times that loss's derivative, checked against
 * central differences on a fresh copy of the edge model.
 */
static void test_distillation_temperature(void **state)
{
    paths *p = *state;
    cairn_error err;
    const float T = 3.0f, lr = 0.01f;
    cairn_cema_params cp = cairn_cema_default_params();
    cp.batch_size = 16;
    cp.new_per_step = 16;
    cp.temperature = T;
    cp.w_ent = 0;
    cp.w_ce = 0;
    cp.momentum = 0; /* one plain SGD step: the move is -lr * gradient */
    cp.lr_edge = lr;
    cairn_cema_cloud *c = NULL;
    assert_int_equal(cairn_cema_cloud_open(&c, p->edge_path, p->found_path, &cp, &err), 0);

    static float x[16 * DIM];
    int y[16];
    rng_state = 11;
    make_images(x, y, 16, 1);
    cairn_nn_model *fe = load_batch_mode(p->edge_path), *ff = load_batch_mode(p->found_path);
    float lf[16 * NCLS], le[16 * NCLS];
    forward16(ff, x, lf); /* the teacher's pre-step outputs */
    forward16(fe, x, le);
    assert_int_equal(cairn_cema_cloud_add_samples(c, x, 16, &err), 0);
    cairn_cema_step_stats st;
    assert_int_equal(cairn_cema_cloud_step(c, &st, &err), 16);
    const double want = distill_loss(lf, le, 16, T);
    print_message("T = %g: loss_kl %.6f, from the definition %.6f\n", (double)T, st.loss_kl, want);
    assert_true(want > 1e-4);
    assert_float_equal(st.loss_kl, want, 1e-3 * want + 1e-6);
    /* The same batch at T = 1 gives another value: the temperature is applied. */
    assert_true(fabs(distill_loss(lf, le, 16, 1.0) - want) > 0.05 * want);

    cairn_nn_model *ce = cairn_cema_cloud_edge_model(c);
    int checked = 0;
    for (int i = 0; i < cairn_nn_param_count(fe); i++) {
        cairn_nn_param *q = cairn_nn_param_at(fe, i);
        if (!is_affine(q)) continue;
        float *v = q->value.data, *after = cairn_nn_param_at(ce, i)->value.data;
        for (size_t j = 0; j < q->value.numel; j += 3) {
            const float v0 = v[j], h = 1e-2f;
            float lp[16 * NCLS], lm[16 * NCLS];
            v[j] = v0 + h;
            forward16(fe, x, lp);
            v[j] = v0 - h;
            forward16(fe, x, lm);
            v[j] = v0;
            const double fd = (distill_loss(lf, lp, 16, T) - distill_loss(lf, lm, 16, T)) / (2 * h);
            const double moved = (v0 - after[j]) / lr;
            /* central differences of h = 0.01 across ReLU kinks: 3% and 5e-4 absolute */
            assert_float_equal(moved, fd, 0.03 * fabs(fd) + 5e-4);
            checked++;
        }
    }
    assert_true(checked >= 8);
    cairn_nn_model_free(fe);
    cairn_nn_model_free(ff);
    cairn_cema_cloud_close(c);
}

/* Mean entropy of m's batch-statistics outputs on x (16 images). */
static double batch_entropy(cairn_nn_model *m, const float *x)
{
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_BATCH);
    float z[16 * NCLS], h[16];
    forward16(m, x, z);
    cairn_nn_entropy(z, 16, NCLS, h);
    double s = 0;
    for (int i = 0; i < 16; i++)
        s += h[i];
    return s / 16;
}

/*
 * foundation_steps and edge_steps repeat the two halves of a step on its batch: the teacher's
 * entropy on the batch falls further, the edge model comes closer to the teacher, and the step's
 * statistics are the edge model's first pass. Out-of-range values are refused.
 */
static void test_steps_per_batch(void **state)
{
    paths *p = *state;
    cairn_error err;
    static float x[16 * DIM];
    int y[16];
    rng_state = 12;
    make_images(x, y, 16, 1);
    cairn_nn_model *ff = load_batch_mode(p->found_path);
    float lf[16 * NCLS];
    forward16(ff, x, lf);
    cairn_nn_model_free(ff);

    /* runs: 0 one step each; 1 four edge steps; 2 four foundation steps */
    static const int fsteps[3] = {1, 1, 4}, esteps[3] = {1, 4, 1};
    double h_found[3], dist[3];
    cairn_cema_step_stats st[3];
    for (int k = 0; k < 3; k++) {
        cairn_cema_params cp = cairn_cema_default_params();
        cp.batch_size = 16;
        cp.new_per_step = 16;
        cp.lr_foundation = 0.01f;
        cp.e0_fraction = 1.0f;  /* every sample is reliable: the teacher always moves */
        cp.w_ent = cp.w_ce = 0; /* the edge model's loss is the distance measured below */
        cp.lr_edge = 0.05f;
        cp.foundation_steps = fsteps[k];
        cp.edge_steps = esteps[k];
        cairn_cema_cloud *c = NULL;
        assert_int_equal(cairn_cema_cloud_open(&c, p->edge_path, p->found_path, &cp, &err), 0);
        assert_int_equal(cairn_cema_cloud_add_samples(c, x, 16, &err), 0);
        assert_int_equal(cairn_cema_cloud_step(c, &st[k], &err), 16);
        h_found[k] = batch_entropy(cairn_cema_cloud_foundation_model(c), x);
        float le[16 * NCLS];
        cairn_nn_model *e = cairn_cema_cloud_edge_model(c);
        cairn_nn_set_bn_mode(e, CAIRN_NN_BN_BATCH);
        forward16(e, x, le);
        dist[k] = distill_loss(lf, le, 16, 1.0); /* to the teacher's pre-step outputs */
        cairn_cema_cloud_close(c);
    }
    print_message("steps (found, edge) 1,1 / 1,4 / 4,1: teacher entropy %.4f / %.4f / %.4f, "
                  "edge-teacher KL %.4f / %.4f / %.4f\n",
                  h_found[0], h_found[1], h_found[2], dist[0], dist[1], dist[2]);
    /* Four edge steps on the batch bring the edge model closer to the (same) teacher ... */
    assert_true(dist[1] < dist[0]);
    assert_float_equal(h_found[1], h_found[0], 1e-6);
    /* ... and report the first pass, as one step does. */
    assert_float_equal(st[1].edge_entropy, st[0].edge_entropy, 1e-6);
    assert_float_equal(st[1].loss_kl, st[0].loss_kl, 1e-6);
    assert_float_equal(st[1].foundation_entropy, st[0].foundation_entropy, 1e-6);
    /* Four foundation steps lower the teacher's entropy further, and the teacher of the step is
     * its output after three updates: surer than before any. */
    assert_true(h_found[2] < h_found[0]);
    assert_true(st[2].foundation_entropy < st[0].foundation_entropy);

    cairn_cema_params bad[5];
    for (int k = 0; k < 5; k++)
        bad[k] = cairn_cema_default_params();
    bad[0].temperature = 0;
    bad[1].temperature = NAN;
    bad[2].foundation_steps = 0;
    bad[3].edge_steps = 65;
    bad[4].edge_steps = 0;
    for (int k = 0; k < 5; k++) {
        cairn_cema_cloud *c = (cairn_cema_cloud *)&bad[k]; /* must come back NULL */
        assert_int_equal(cairn_cema_cloud_open(&c, p->edge_path, p->found_path, &bad[k], &err),
                         CAIRN_EINVAL);
        assert_null(c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_select_keeps_confident_novel_samples),
        cmocka_unit_test(test_select_e_max_follows_running_entropy),
        cmocka_unit_test(test_select_upload_budget),
        cmocka_unit_test(test_select_upload_power),
        cmocka_unit_test(test_adaptation_on_shifted_task),
        cmocka_unit_test(test_residual_teacher),
        cmocka_unit_test(test_pending_queue_drops_oldest),
        cmocka_unit_test(test_distillation_temperature),
        cmocka_unit_test(test_steps_per_batch),
    };
    return cmocka_run_group_tests(tests, setup_models, teardown_models);
}
