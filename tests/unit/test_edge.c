/*
 * tests/unit/test_edge.c — libcairn_edge through an in-process transport (the SDK's seam):
 * asynchronous upload with retries, the bounded queue dropping its oldest sample, 4xx answers,
 * bundle updates, tampered bundles rejected with the model's outputs unchanged bit for bit,
 * automatic rollback of a bundle that breaks the model, rollback on demand, inference with
 * running or batch statistics, and every kind of bad server answer to an update (no answer, error
 * statuses, empty, garbage and truncated bodies) refused with the model untouched.
 */
#include <math.h>
#include <pthread.h>
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
#include "adapt/nn/nn_gguf.h"
#include "clients/edge/cairn_edge.h"
#include "proto/edge.h"

enum { S = 8, K = 3, DIM = S * S };

/* ---- A scripted in-process cloud --------------------------------------------------------- */

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int fail_next; /* answer this many POSTs with fail_status */
    long fail_status;
    int gate_closed; /* POSTs wait while set */
    int posts;
    int samples;          /* samples in accepted batches */
    float entropies[512]; /* of accepted samples, in arrival order */
    char device_id[64];
    uint8_t *bundle; /* what GET answers (200), or NULL (204) */
    size_t bundle_len;
    int get_rc;       /* when set, GET fails with it (no answer) */
    long get_status;  /* when set, GET answers with it and no body */
    char last_get[256];
} fake_cloud;

static int fake_post(void *ctx, const char *path, const uint8_t *body, size_t len, long *status,
                     cairn_error *err)
{
    fake_cloud *f = ctx;
    pthread_mutex_lock(&f->lock);
    while (f->gate_closed)
        pthread_cond_wait(&f->cond, &f->lock);
    f->posts++;
    if (strcmp(path, "/v1/edge/samples") != 0) {
        *status = 404;
    } else if (f->fail_next > 0) {
        f->fail_next--;
        *status = f->fail_status;
    } else {
        cairn_edge_batch b;
        if (cairn_edge_batch_decode(body, len, NULL, &b, err) != 0) {
            *status = 400;
        } else {
            snprintf(f->device_id, sizeof f->device_id, "%s", b.device_id);
            for (int i = 0; i < b.n && f->samples < 512; i++)
                f->entropies[f->samples++] = b.entropies[i];
            cairn_edge_batch_free(&b);
            *status = 200;
        }
    }
    pthread_mutex_unlock(&f->lock);
    return 0;
}

static int fake_get(void *ctx, const char *path, uint8_t **body, size_t *len, long *status,
                    cairn_error *err)
{
    fake_cloud *f = ctx;
    pthread_mutex_lock(&f->lock);
    snprintf(f->last_get, sizeof f->last_get, "%s", path);
    *body = NULL;
    *len = 0;
    if (f->get_rc) {
        int rc = f->get_rc;
        pthread_mutex_unlock(&f->lock);
        return cairn_errorf(err, rc, "fake cloud: no answer");
    }
    if (f->get_status) {
        *status = f->get_status;
    } else if (f->bundle) {
        *body = malloc(f->bundle_len);
        memcpy(*body, f->bundle, f->bundle_len);
        *len = f->bundle_len;
        *status = 200;
    } else {
        *status = 204;
    }
    pthread_mutex_unlock(&f->lock);
    return 0;
}

static void set_bundle(fake_cloud *f, const uint8_t *b, size_t len)
{
    pthread_mutex_lock(&f->lock);
    free(f->bundle);
    f->bundle = NULL;
    if (b) {
        f->bundle = malloc(len ? len : 1); /* a 0-byte body is still a body */
        memcpy(f->bundle, b, len);
    }
    f->bundle_len = len;
    pthread_mutex_unlock(&f->lock);
}

/* ---- Fixture ---------------------------------------------------------------------------- */

typedef struct {
    char model_path[64];
    cairn_bundle_key *key;
    char *pub_pem;
    fake_cloud cloud;
    cairn_edge *e;
    float images[16 * DIM];
} fixture;

static cairn_nn_model *build_model(void)
{
    cairn_error err;
    cairn_nn_model *m = NULL;
    assert_int_equal(cairn_nn_model_new(&m, 1, S, S, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv1", 4, 3, 1, 1, 0, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn1", 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_relu(m, &err), 0);
    assert_int_equal(cairn_nn_add_global_avgpool(m, &err), 0);
    assert_int_equal(cairn_nn_add_flatten(m, &err), 0);
    assert_int_equal(cairn_nn_add_linear(m, "fc", K, 1, &err), 0);
    cairn_nn_model_init_params(m, 5);
    return m;
}

static cairn_edge_params edge_params(fixture *f)
{
    cairn_edge_params p = cairn_edge_default_params();
    p.model_name = "edge";
    p.device_id = "dev-1";
    p.public_key_pem = f->pub_pem;
    p.backoff_base_ms = 1;
    p.backoff_max_ms = 5;
    p.seed = 9;
    p.select.d_margin = 1.0f; /* tests below choose what to upload themselves */
    return p;
}

static void open_edge(fixture *f, const cairn_edge_params *p)
{
    cairn_edge_transport t = {.ctx = &f->cloud, .post = fake_post, .get = fake_get};
    cairn_error err;
    int rc = cairn_edge_open(&f->e, f->model_path, p, &t, &err);
    if (rc) fail_msg("open: %s", err.msg);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    cairn_error err;
    snprintf(f->model_path, sizeof f->model_path, "/tmp/cairn-edge-test-%d.gguf", (int)getpid());
    cairn_nn_model *m = build_model();
    assert_int_equal(cairn_nn_save(m, f->model_path, &err), 0);
    cairn_nn_model_free(m);
    assert_int_equal(cairn_bundle_key_generate(&f->key, &err), 0);
    assert_int_equal(cairn_bundle_key_to_pem(f->key, 0, &f->pub_pem, &err), 0);
    pthread_mutex_init(&f->cloud.lock, NULL);
    pthread_cond_init(&f->cloud.cond, NULL);
    for (int i = 0; i < 16 * DIM; i++)
        f->images[i] = (float)((i * 37) % 101) / 100.0f;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    cairn_edge_close(f->e);
    unlink(f->model_path);
    cairn_bundle_key_free(f->key);
    free(f->pub_pem);
    free(f->cloud.bundle);
    pthread_mutex_destroy(&f->cloud.lock);
    pthread_cond_destroy(&f->cloud.cond);
    free(f);
    return 0;
}

/* Valid probabilities with distinct entropies, to recognise samples on the cloud side. */
static void labelled_samples(float *probs, float *ent, int n, int first)
{
    for (int i = 0; i < n; i++) {
        float a = 0.4f + 0.005f * (float)(first + i);
        probs[i * K] = a;
        probs[i * K + 1] = probs[i * K + 2] = (1 - a) / 2;
        ent[i] = 0;
        for (int j = 0; j < K; j++)
            ent[i] -= probs[i * K + j] * logf(probs[i * K + j]);
    }
}

/* ---- Upload ------------------------------------------------------------------------------ */

static void test_upload_retries_then_delivers(void **state)
{
    fixture *f = *state;
    f->cloud.fail_next = 2;
    f->cloud.fail_status = 503;
    cairn_edge_params p = edge_params(f);
    p.select.d_margin = 0.5f;
    open_edge(f, &p);
    float probs[16 * K], ent[16];
    uint8_t keep[16];
    cairn_error err;
    int queued = cairn_edge_process(f->e, f->images, 16, probs, ent, keep, &err);
    assert_true(queued >= 1);
    /* Outputs are probabilities with matching entropies. */
    for (int i = 0; i < 16; i++) {
        float s = 0, h = 0;
        for (int j = 0; j < K; j++) {
            s += probs[i * K + j];
            h -= probs[i * K + j] * logf(probs[i * K + j]);
        }
        assert_float_equal(s, 1.0, 1e-5);
        assert_float_equal(h, ent[i], 1e-4);
    }
    assert_int_equal(cairn_edge_flush(f->e, 5000), 0);
    cairn_edge_stats st;
    cairn_edge_get_stats(f->e, &st);
    assert_int_equal(st.inferred, 16);
    assert_int_equal(st.selected, (uint64_t)queued);
    assert_int_equal(st.uploaded, (uint64_t)queued);
    assert_int_equal(st.upload_retries, 2);
    assert_int_equal(st.upload_requests, 3);
    assert_int_equal(st.dropped_failed, 0);
    assert_true(st.bytes_up > 0);
    assert_int_equal(f->cloud.samples, queued);
    assert_string_equal(f->cloud.device_id, "dev-1");
    /* The cloud got exactly the kept samples, in order. */
    int j = 0;
    for (int i = 0; i < 16; i++)
        if (keep[i]) assert_float_equal(f->cloud.entropies[j++], ent[i], 1e-6);
}

static void test_full_queue_drops_oldest(void **state)
{
    fixture *f = *state;
    cairn_edge_params p = edge_params(f);
    p.queue_capacity = 4;
    p.upload_batch = 1;
    open_edge(f, &p);
    float probs[7 * K], ent[7];
    labelled_samples(probs, ent, 7, 0);
    cairn_error err;
    pthread_mutex_lock(&f->cloud.lock);
    f->cloud.gate_closed = 1;
    pthread_mutex_unlock(&f->cloud.lock);
    /* Sample 0 is taken by the upload thread (and held at the gate) ... */
    assert_int_equal(cairn_edge_submit(f->e, f->images, probs, ent, NULL, 1, &err), 1);
    cairn_edge_stats st;
    for (int i = 0; i < 2000; i++) {
        cairn_edge_get_stats(f->e, &st);
        if (st.queued == 0) break;
        usleep(1000);
    }
    assert_int_equal(st.queued, 0);
    /* ... samples 1..6 meet a queue of 4: 1 and 2, the oldest, are dropped. */
    assert_int_equal(cairn_edge_submit(f->e, f->images + DIM, probs + K, ent + 1, NULL, 6, &err),
                     6);
    cairn_edge_get_stats(f->e, &st);
    assert_int_equal(st.queued, 4);
    assert_int_equal(st.dropped_full, 2);
    pthread_mutex_lock(&f->cloud.lock);
    f->cloud.gate_closed = 0;
    pthread_cond_broadcast(&f->cloud.cond);
    pthread_mutex_unlock(&f->cloud.lock);
    assert_int_equal(cairn_edge_flush(f->e, 5000), 0);
    assert_int_equal(f->cloud.samples, 5);
    const int want[5] = {0, 3, 4, 5, 6};
    for (int i = 0; i < 5; i++)
        assert_float_equal(f->cloud.entropies[i], ent[want[i]], 1e-6);
}

static void test_client_error_is_not_retried(void **state)
{
    fixture *f = *state;
    f->cloud.fail_next = 1;
    f->cloud.fail_status = 413;
    cairn_edge_params p = edge_params(f);
    open_edge(f, &p);
    float probs[2 * K], ent[2];
    labelled_samples(probs, ent, 2, 0);
    cairn_error err;
    assert_int_equal(cairn_edge_submit(f->e, f->images, probs, ent, NULL, 2, &err), 2);
    assert_int_equal(cairn_edge_flush(f->e, 5000), 0);
    cairn_edge_stats st;
    cairn_edge_get_stats(f->e, &st);
    assert_int_equal(st.upload_requests, 1);
    assert_int_equal(st.dropped_failed, 2);
    assert_int_equal(st.uploaded, 0);
}

/* ---- Bundles ------------------------------------------------------------------------------ */

/* A bundle from the base model with every batchnorm tensor scaled (so outputs change). */
static uint8_t *cloud_bundle(fixture *f, uint64_t version, float scale, const cairn_bundle_key *k,
                             const char *base_path, size_t *len)
{
    cairn_error err;
    cairn_nn_model *m = NULL;
    assert_int_equal(cairn_nn_load(&m, f->model_path, &err), 0);
    for (int i = 0; i < cairn_nn_param_count(m); i++) {
        cairn_nn_param *q = cairn_nn_param_at(m, i);
        if (q->kind == CAIRN_NN_NORM_WEIGHT || q->kind == CAIRN_NN_NORM_BIAS)
            for (size_t j = 0; j < q->value.numel; j++)
                q->value.data[j] = q->value.data[j] * scale + 0.1f * (float)j;
        if (q->kind == CAIRN_NN_RUNNING_MEAN && scale > 1e30f) /* xhat ~ 3e38, times gamma */
            for (size_t j = 0; j < q->value.numel; j++)
                q->value.data[j] = -3e38f;
    }
    cairn_bundle_build_params bp = cairn_bundle_default_build_params();
    bp.model_name = "edge";
    bp.version = version;
    assert_int_equal(cairn_bundle_sha256_file(base_path, bp.base_sha256, &err), 0);
    uint8_t *out = NULL;
    assert_int_equal(cairn_bundle_build(m, &bp, k, &out, len, &err), 0);
    cairn_nn_model_free(m);
    return out;
}

static void infer(fixture *f, float *probs)
{
    float ent[4];
    cairn_error err;
    assert_int_equal(cairn_edge_infer(f->e, f->images, 4, probs, ent, &err), 0);
}

/* apply must fail with code and leave the outputs bit for bit as they were. */
static void expect_rejected(fixture *f, const uint8_t *b, size_t len, int code)
{
    float before[4 * K], after[4 * K];
    infer(f, before);
    uint64_t v = cairn_edge_version(f->e);
    cairn_error err;
    assert_int_equal(cairn_edge_apply_bundle(f->e, b, len, &err), code);
    infer(f, after);
    assert_memory_equal(before, after, sizeof before);
    assert_int_equal(cairn_edge_version(f->e), v);
}

static void test_update_applies_and_tampered_bundles_are_rejected(void **state)
{
    fixture *f = *state;
    cairn_edge_params p = edge_params(f);
    open_edge(f, &p);
    cairn_error err;
    float base[4 * K], now[4 * K];
    infer(f, base);

    assert_int_equal(cairn_edge_update(f->e, &err), 0); /* nothing published yet */
    assert_string_equal(f->cloud.last_get, "/v1/edge/models/edge/bundle?after=0");

    size_t len;
    uint8_t *b1 = cloud_bundle(f, 1, 1.5f, f->key, f->model_path, &len);
    set_bundle(&f->cloud, b1, len);
    assert_int_equal(cairn_edge_update(f->e, &err), 1);
    assert_int_equal(cairn_edge_version(f->e), 1);
    infer(f, now);
    assert_memory_not_equal(base, now, sizeof base);
    assert_int_equal(cairn_edge_update(f->e, &err), CAIRN_ERANGE); /* same one again */
    assert_string_equal(f->cloud.last_get, "/v1/edge/models/edge/bundle?after=1");

    /* A flipped byte. */
    size_t l2;
    uint8_t *b2 = cloud_bundle(f, 2, 0.5f, f->key, f->model_path, &l2);
    b2[l2 / 2] ^= 0x04;
    expect_rejected(f, b2, l2, CAIRN_EAUTH);
    b2[l2 / 2] ^= 0x04;
    /* A wrong key. */
    cairn_bundle_key *other = NULL;
    assert_int_equal(cairn_bundle_key_generate(&other, &err), 0);
    size_t l3;
    uint8_t *b3 = cloud_bundle(f, 2, 0.5f, other, f->model_path, &l3);
    expect_rejected(f, b3, l3, CAIRN_EAUTH);
    /* An older version. */
    size_t l4;
    uint8_t *b4 = cloud_bundle(f, 1, 0.5f, f->key, f->model_path, &l4);
    expect_rejected(f, b4, l4, CAIRN_ERANGE);
    /* Another base model. */
    char other_path[80];
    snprintf(other_path, sizeof other_path, "%s.other", f->model_path);
    FILE *fp = fopen(other_path, "wb");
    fputs("another model", fp);
    fclose(fp);
    size_t l5;
    uint8_t *b5 = cloud_bundle(f, 2, 0.5f, f->key, other_path, &l5);
    unlink(other_path);
    expect_rejected(f, b5, l5, CAIRN_EAUTH);

    cairn_edge_stats st;
    cairn_edge_get_stats(f->e, &st);
    assert_int_equal(st.bundles_applied, 1);
    assert_int_equal(st.bundles_rejected, 5);

    /* The untampered v2 applies; rollback restores v1's outputs and refuses v2 from then on. */
    float v1[4 * K];
    infer(f, v1);
    assert_int_equal(cairn_edge_apply_bundle(f->e, b2, l2, &err), 0);
    assert_int_equal(cairn_edge_version(f->e), 2);
    assert_int_equal(cairn_edge_rollback(f->e, &err), 0);
    assert_int_equal(cairn_edge_version(f->e), 1);
    infer(f, now);
    assert_memory_equal(v1, now, sizeof v1);
    expect_rejected(f, b2, l2, CAIRN_ERANGE);
    assert_int_equal(cairn_edge_rollback(f->e, &err), CAIRN_ESTATE); /* one level only */

    cairn_bundle_key_free(other);
    free(b1);
    free(b2);
    free(b3);
    free(b4);
    free(b5);
}

static void test_bundle_that_breaks_the_model_is_rolled_back(void **state)
{
    fixture *f = *state;
    cairn_edge_params p = edge_params(f);
    open_edge(f, &p);
    float base[4 * K], now[4 * K];
    infer(f, base);
    /* Finite but absurd values: the outputs overflow to infinity. */
    size_t len;
    uint8_t *b = cloud_bundle(f, 1, 3e38f, f->key, f->model_path, &len);
    cairn_error err;
    assert_int_equal(cairn_edge_apply_bundle(f->e, b, len, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "rolled back"));
    infer(f, now);
    assert_memory_equal(base, now, sizeof base);
    assert_int_equal(cairn_edge_version(f->e), 0);
    cairn_edge_stats st;
    cairn_edge_get_stats(f->e, &st);
    assert_int_equal(st.rollbacks, 1);
    free(b);
}

/* The model's probabilities under the given batchnorm mode, computed by adapt/nn directly. */
static void reference_probs(fixture *f, cairn_nn_bn_mode mode, int n, float *probs)
{
    cairn_error err;
    cairn_nn_model *m = NULL;
    assert_int_equal(cairn_nn_load(&m, f->model_path, &err), 0);
    cairn_nn_model_params mp = cairn_nn_model_default_params();
    mp.max_batch = 16;
    assert_int_equal(cairn_nn_model_prepare(m, &mp, &err), 0);
    cairn_nn_set_bn_mode(m, mode);
    const float *logits;
    assert_int_equal(cairn_nn_forward(m, f->images, n, &logits, &err), 0);
    cairn_nn_softmax(logits, n, K, probs);
    cairn_nn_model_free(m);
}

/* Running statistics by default; with batch_stats each inference batch is normalised with its
 * own statistics, so a sample's output depends on the batch it came in. */
static void test_batch_statistics(void **state)
{
    fixture *f = *state;
    cairn_error err;
    float want_run[16 * K], want_batch[16 * K], got[16 * K], ent[16];
    reference_probs(f, CAIRN_NN_BN_EVAL, 16, want_run);
    reference_probs(f, CAIRN_NN_BN_BATCH, 16, want_batch);
    float diff = 0;
    for (int i = 0; i < 16 * K; i++)
        diff = fmaxf(diff, fabsf(want_run[i] - want_batch[i]));
    assert_true(diff > 1e-3f); /* the two modes are told apart by this model and data */

    cairn_edge_params p = edge_params(f);
    open_edge(f, &p);
    assert_int_equal(cairn_edge_infer(f->e, f->images, 16, got, ent, &err), 0);
    for (int i = 0; i < 16 * K; i++)
        assert_float_equal(got[i], want_run[i], 1e-6);
    cairn_edge_close(f->e);

    p.batch_stats = 1;
    p.max_batch = 16;
    open_edge(f, &p);
    assert_int_equal(cairn_edge_infer(f->e, f->images, 16, got, ent, &err), 0);
    for (int i = 0; i < 16 * K; i++)
        assert_float_equal(got[i], want_batch[i], 1e-6);
}

/* An update against a cloud that answers badly: each attempt fails with a clear code, the model
 * keeps its parameters bit for bit, and a good bundle still applies afterwards. */
static void test_update_survives_bad_answers(void **state)
{
    fixture *f = *state;
    cairn_edge_params p = edge_params(f);
    open_edge(f, &p);
    cairn_error err;
    float base[4 * K], now[4 * K];
    infer(f, base);

    f->cloud.get_rc = CAIRN_ENET;
    assert_int_equal(cairn_edge_update(f->e, &err), CAIRN_ENET);
    assert_non_null(strstr(err.msg, "no answer"));
    f->cloud.get_rc = 0;
    static const long statuses[] = {500, 503, 401, 403, 302, 200 /* 200 without a body */};
    for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++) {
        f->cloud.get_status = statuses[i];
        assert_int_equal(cairn_edge_update(f->e, &err), CAIRN_ENET);
        char want[16];
        snprintf(want, sizeof want, "HTTP %ld", statuses[i]);
        assert_non_null(strstr(err.msg, want));
    }
    f->cloud.get_status = 0;

    /* 200 with bodies that are not bundles: empty, garbage, and a real bundle cut at every
     * length. None may crash or touch the model. */
    size_t len;
    uint8_t *good = cloud_bundle(f, 1, 1.5f, f->key, f->model_path, &len);
    uint8_t garbage[4096];
    for (size_t i = 0; i < sizeof garbage; i++)
        garbage[i] = (uint8_t)(i * 2654435761u >> 13);
    set_bundle(&f->cloud, garbage, 0);
    assert_true(cairn_edge_update(f->e, &err) < 0);
    set_bundle(&f->cloud, garbage, sizeof garbage);
    assert_int_equal(cairn_edge_update(f->e, &err), CAIRN_EFORMAT);
    for (size_t cut = 0; cut < len; cut++) {
        set_bundle(&f->cloud, good, cut);
        int rc = cairn_edge_update(f->e, &err);
        if (rc >= 0) fail_msg("a bundle cut at %zu of %zu bytes was accepted", cut, len);
    }
    infer(f, now);
    assert_memory_equal(base, now, sizeof base);
    assert_int_equal(cairn_edge_version(f->e), 0);

    set_bundle(&f->cloud, good, len);
    assert_int_equal(cairn_edge_update(f->e, &err), 1);
    assert_int_equal(cairn_edge_version(f->e), 1);
    free(good);
}

static void test_open_rejects_bad_input(void **state)
{
    fixture *f = *state;
    cairn_edge_params p = edge_params(f);
    cairn_error err;
    cairn_edge_transport t = {.ctx = &f->cloud, .post = fake_post, .get = fake_get};
    p.public_key_pem = "not a key";
    assert_int_equal(cairn_edge_open(&f->e, f->model_path, &p, &t, &err), CAIRN_EFORMAT);
    assert_null(f->e);
    p = edge_params(f);
    assert_int_equal(cairn_edge_open(&f->e, "/nonexistent/model.gguf", &p, &t, &err), CAIRN_EIO);
    /* The model name goes into request paths: nothing that could add a segment or a query. */
    static const char *names[] = {"", "a/b", "..%2f", "edge?after=9", "a b", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        p.model_name = names[i];
        assert_int_equal(cairn_edge_open(&f->e, f->model_path, &p, &t, &err), CAIRN_EINVAL);
        assert_null(f->e);
    }
    p = edge_params(f);
    open_edge(f, &p);
    float probs[K], ent[1], img[DIM] = {0};
    img[3] = NAN;
    assert_int_equal(cairn_edge_infer(f->e, img, 1, probs, ent, &err), CAIRN_EFORMAT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_upload_retries_then_delivers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_queue_drops_oldest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_error_is_not_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_applies_and_tampered_bundles_are_rejected,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_bundle_that_breaks_the_model_is_rolled_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_batch_statistics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_survives_bad_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_rejects_bad_input, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
