/*
 * tests/unit/test_edge_api.c — cairnd's edge endpoints over real HTTP on loopback: enrollment,
 * authenticated uploads, every kind of bad upload refused with its reason and counted, the
 * service still working after them, rate limiting, signed bundles the SDK's verifier accepts, and
 * the SDK itself (libcurl transport) uploading to the server and applying what it publishes.
 * Uses the committed models in adapt/models.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "adapt/bundle.h"
#include "clients/edge/cairn_edge.h"
#include "common/metrics.h"
#include "proto/edge.h"
#include "services/edge_api.h"
#include "services/http.h"

#include "metric_value.h"

typedef struct fixture {
    char edge[1024], found[1024];
    cairn_metrics *m;
    cairn_http *h;
    cairn_edge_api *a;
    char base[64];
    char dev_id[CAIRN_EDGE_STR_MAX], dev_key[CAIRN_EDGE_STR_MAX];
} fixture;

static void model_path(char *buf, size_t cap, const char *name)
{
    const char *td = getenv("CAIRN_TEST_DATA");
    if (td)
        snprintf(buf, cap, "%s/../../adapt/models/%s.gguf", td, name);
    else
        snprintf(buf, cap, "adapt/models/%s.gguf", name);
}

/* ---- A small HTTP client -------------------------------------------------------------------- */

typedef struct reply {
    long status;
    uint8_t *body;
    size_t len;
    int retry_after;
} reply;

static size_t on_body(char *d, size_t sz, size_t nm, void *ctx)
{
    reply *r = ctx;
    size_t n = sz * nm;
    uint8_t *p = realloc(r->body, r->len + n + 1);
    if (!p) return 0;
    memcpy(p + r->len, d, n);
    r->body = p;
    r->len += n;
    p[r->len] = 0;
    return n;
}

static size_t on_header(char *d, size_t sz, size_t nm, void *ctx)
{
    reply *r = ctx;
    if (sz * nm > 12 && strncasecmp(d, "Retry-After:", 12) == 0) r->retry_after = atoi(d + 12);
    return sz * nm;
}

static reply req(const fixture *f, const char *method, const char *path, const char *key,
                 const char *ctype, const void *body, size_t len)
{
    reply r = {0};
    char url[512], auth[128], ct[128];
    snprintf(url, sizeof url, "%s%s", f->base, path);
    struct curl_slist *hd = NULL;
    if (key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        hd = curl_slist_append(hd, auth);
    }
    if (ctype) {
        snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
        hd = curl_slist_append(hd, ct);
    }
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hd);
    if (!strcmp(method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hd);
    return r;
}

static double metric(const fixture *f, const char *series)
{
    return metric_value(f->m, series);
}

/* ---- Sample batches ------------------------------------------------------------------------- */

/* n samples of side x side with k classes; pixels 0.5, uniform probabilities. Caller frees. */
static uint8_t *batch(const fixture *f, int n, int side, int k, int as_u8, size_t *len)
{
    float *img = malloc((size_t)n * side * side * sizeof(float));
    float *pr = malloc((size_t)n * k * sizeof(float));
    float *en = malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n * side * side; i++)
        img[i] = 0.5f;
    for (int i = 0; i < n * k; i++)
        pr[i] = 1.0f / k;
    for (int i = 0; i < n; i++)
        en[i] = logf((float)k);
    cairn_edge_batch b = {.n = n,
                          .c = 1,
                          .h = side,
                          .w = side,
                          .k = k,
                          .images = img,
                          .probs = pr,
                          .entropies = en,
                          .images_were_u8 = as_u8};
    snprintf(b.device_id, sizeof b.device_id, "%s", f->dev_id);
    snprintf(b.model_name, sizeof b.model_name, "edge");
    cairn_edge_limits lim = cairn_edge_default_limits();
    lim.max_samples = 1024;
    uint8_t *out = NULL;
    cairn_error err = {0};
    assert_int_equal(cairn_edge_batch_encode(&b, &lim, &out, len, &err), 0);
    free(img);
    free(pr);
    free(en);
    return out;
}

#define PB "application/x-protobuf"

static reply upload(const fixture *f, const uint8_t *buf, size_t len)
{
    return req(f, "POST", "/v1/edge/samples", f->dev_key, PB, buf, len);
}

static void reply_free(reply *r)
{
    free(r->body);
    r->body = NULL;
}

/* ---- Setup ------------------------------------------------------------------------------------
 */

static int setup_with(void **state, int min_steps_per_bundle)
{
    fixture *f = calloc(1, sizeof *f);
    model_path(f->edge, sizeof f->edge, "edge");
    model_path(f->found, sizeof f->found, "foundation");
    cairn_error err = {0};
    assert_int_equal(cairn_metrics_new(&f->m, &err), 0);
    cairn_edge_api_params p = cairn_edge_api_default_params();
    p.edge_model_path = f->edge;
    p.foundation_model_path = f->found;
    p.enrollment_token = "let-me-in";
    p.api_keys = "ops-key"; /* GET /v1/edge/fleet is for operators */
    p.max_upload_samples = 64;
    p.max_upload_bytes = 256 * 1024;
    p.rate_samples_per_s = 1; /* a bucket of 200 samples that refills slowly */
    p.rate_burst = 200;
    p.min_steps_per_bundle = min_steps_per_bundle;
    int rc = cairn_edge_api_open(&f->a, &p, f->m, &err);
    if (rc) fprintf(stderr, "open: %s\n", err.msg);
    assert_int_equal(rc, 0);
    cairn_http_params hp = cairn_http_default_params();
    hp.host = "127.0.0.1";
    hp.port = 0;
    hp.threads = 2;
    hp.max_body = 1u << 20;
    assert_int_equal(cairn_http_new(&f->h, &hp, f->m, &err), 0);
    assert_int_equal(cairn_edge_api_routes(f->a, f->h), 0);
    assert_int_equal(cairn_http_start(f->h, &err), 0);
    snprintf(f->base, sizeof f->base, "http://127.0.0.1:%d", cairn_http_port(f->h));

    /* Enroll: a wrong token is refused, the right one gives an id and a key. */
    cairn_edge_register_req rq = {0};
    snprintf(rq.enrollment_token, sizeof rq.enrollment_token, "let-me-out");
    snprintf(rq.model_name, sizeof rq.model_name, "edge");
    uint8_t *body;
    size_t len;
    assert_int_equal(cairn_edge_register_req_encode(&rq, &body, &len, &err), 0);
    reply r = req(f, "POST", "/v1/edge/devices", NULL, PB, body, len);
    assert_int_equal(r.status, 401);
    reply_free(&r);
    free(body);
    snprintf(rq.enrollment_token, sizeof rq.enrollment_token, "let-me-in");
    assert_int_equal(cairn_edge_register_req_encode(&rq, &body, &len, &err), 0);
    r = req(f, "POST", "/v1/edge/devices", NULL, PB, body, len);
    free(body);
    assert_int_equal(r.status, 200);
    cairn_edge_register_resp rr;
    assert_int_equal(cairn_edge_register_resp_decode(r.body, r.len, &rr, &err), 0);
    reply_free(&r);
    assert_true(strlen(rr.device_id) > 4 && strlen(rr.device_key) > 16);
    memcpy(f->dev_id, rr.device_id, sizeof f->dev_id);
    memcpy(f->dev_key, rr.device_key, sizeof f->dev_key);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, 0);
}

static int setup_min_steps(void **state)
{
    return setup_with(state, 4);
}

static int teardown(void **state)
{
    fixture *f = *state;
    cairn_http_free(f->h);
    cairn_edge_api_close(f->a);
    cairn_metrics_free(f->m);
    free(f);
    return 0;
}

/* ---- Tests ------------------------------------------------------------------------------------
 */

static void test_bad_uploads_rejected_and_counted(void **state)
{
    fixture *f = *state;
    size_t len;
    uint8_t *good = batch(f, 8, 28, 10, 1, &len);

    reply r = req(f, "POST", "/v1/edge/samples", NULL, PB, good, len); /* no key */
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = req(f, "POST", "/v1/edge/samples", "cek_not-a-key", PB, good, len);
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = req(f, "POST", "/v1/edge/samples", f->dev_key, "application/json", good, len);
    assert_int_equal(r.status, 400);
    reply_free(&r);

    /* Garbage bytes: not a SampleBatch. */
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x99, 0x01, 0x00};
    r = upload(f, junk, sizeof junk);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr((char *)r.body, "malformed"));
    reply_free(&r);

    /* A NaN pixel: encode float pixels (0.5 = 00 00 00 3f) and overwrite one with a NaN. */
    size_t flen;
    uint8_t *fl = batch(f, 8, 28, 10, 0, &flen);
    int patched = 0;
    for (size_t i = 0; i + 4 <= flen && !patched; i++)
        if (fl[i] == 0 && fl[i + 1] == 0 && fl[i + 2] == 0 && fl[i + 3] == 0x3f) {
            fl[i + 2] = 0xc0, fl[i + 3] = 0x7f;
            patched = 1;
        }
    assert_true(patched);
    r = upload(f, fl, flen);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr((char *)r.body, "nan"));
    reply_free(&r);
    free(fl);

    /* Wrong tensor shape: 14x14 images for a 28x28 model; wrong class count. */
    uint8_t *sh = batch(f, 8, 14, 10, 1, &flen);
    r = upload(f, sh, flen);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr((char *)r.body, "shape"));
    reply_free(&r);
    free(sh);
    sh = batch(f, 8, 28, 7, 1, &flen);
    r = upload(f, sh, flen);
    assert_int_equal(r.status, 400);
    reply_free(&r);
    free(sh);

    /* Too many samples in one batch (limit 64), and too many bytes (limit 256 KiB). */
    uint8_t *big = batch(f, 65, 28, 10, 1, &flen);
    r = upload(f, big, flen);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr((char *)r.body, "oversized"));
    reply_free(&r);
    free(big);
    uint8_t *huge = calloc(300 * 1024, 1);
    r = upload(f, huge, 300 * 1024);
    assert_int_equal(r.status, 413);
    reply_free(&r);
    free(huge);

    /* The service is unaffected: a good batch right after is accepted. */
    r = upload(f, good, len);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr((char *)r.body, "\"accepted\":8"));
    reply_free(&r);
    free(good);

    assert_true(metric(f, "cairn_edge_rejected_total{reason=\"auth\"}") == 2);
    assert_true(metric(f, "cairn_edge_rejected_total{reason=\"content_type\"}") == 1);
    assert_true(metric(f, "cairn_edge_rejected_total{reason=\"malformed\"}") == 1);
    assert_true(metric(f, "cairn_edge_rejected_total{reason=\"nan\"}") == 1);
    assert_true(metric(f, "cairn_edge_rejected_total{reason=\"shape\"}") == 2);
    assert_true(metric(f, "cairn_edge_rejected_total{reason=\"oversized_batch\"}") == 1);
    assert_true(metric(f, "cairn_edge_rejected_total{reason=\"too_large\"}") == 1);
    assert_true(metric(f, "cairn_edge_rejected_total{reason=\"enrollment\"}") == 1);
    assert_true(metric(f, "cairn_edge_samples_accepted_total") == 8);
    cairn_edge_api_stats st;
    cairn_edge_api_get_stats(f->a, &st);
    assert_int_equal(st.samples_accepted, 8);
    assert_int_equal(st.rejected, 10);
}

static void test_rate_limit(void **state)
{
    fixture *f = *state;
    size_t len;
    uint8_t *b = batch(f, 64, 28, 10, 1, &len);
    /* The bucket holds 200 samples and refills at 1/s: three batches of 64 pass, the fourth
     * does not, and says when to come back. */
    for (int i = 0; i < 3; i++) {
        reply r = upload(f, b, len);
        assert_int_equal(r.status, 200);
        reply_free(&r);
    }
    reply r = upload(f, b, len);
    assert_int_equal(r.status, 429);
    assert_true(r.retry_after >= 1);
    reply_free(&r);
    free(b);
    assert_true(metric(f, "cairn_edge_rejected_total{reason=\"rate\"}") == 1);
}

static void test_models_and_bundles(void **state)
{
    fixture *f = *state;
    cairn_error err = {0};
    /* Before any upload there is no bundle. */
    reply r = req(f, "GET", "/v1/edge/models/edge/bundle?after=0", f->dev_key, NULL, NULL, 0);
    assert_int_equal(r.status, 204);
    reply_free(&r);

    /* The base model's bytes, exactly the file. */
    r = req(f, "GET", "/v1/edge/models/edge", f->dev_key, NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    uint8_t want[CAIRN_EDGE_SHA256_LEN], got[CAIRN_EDGE_SHA256_LEN];
    assert_int_equal(cairn_bundle_sha256_file(f->edge, want, &err), 0);
    cairn_bundle_sha256(r.body, r.len, got);
    assert_memory_equal(want, got, sizeof want);
    reply_free(&r);
    r = req(f, "GET", "/v1/edge/models/edge", NULL, NULL, NULL, 0);
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = req(f, "GET", "/v1/edge/models/other", f->dev_key, NULL, NULL, 0);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    r = req(f, "GET", "/v1/edge/models/edge/bundle?after=x1", f->dev_key, NULL, NULL, 0);
    assert_int_equal(r.status, 400);
    reply_free(&r);

    /* A lone sample cannot make a step (it needs two): the cloud waits, idle, for more. */
    size_t len;
    uint8_t *one = batch(f, 1, 28, 10, 1, &len);
    r = upload(f, one, len);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    free(one);
    assert_int_equal(cairn_edge_api_wait_idle(f->a, 20000), 0);
    cairn_edge_api_stats st;
    cairn_edge_api_get_stats(f->a, &st);
    assert_int_equal(st.steps, 0);
    assert_int_equal(st.bundles, 0);

    /* More uploads make the cloud step and publish; the bundle verifies with the public key. */
    uint8_t *b = batch(f, 40, 28, 10, 1, &len);
    r = upload(f, b, len);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    free(b);
    assert_int_equal(cairn_edge_api_wait_idle(f->a, 120000), 0);
    cairn_edge_api_get_stats(f->a, &st);
    assert_true(st.steps >= 1);
    assert_true(st.bundles >= 1);
    assert_true(metric(f, "cairn_cema_steps_total") == (double)st.steps);
    assert_true(metric(f, "cairn_edge_bundles_published_total") == (double)st.bundles);

    r = req(f, "GET", "/v1/edge/models/edge/bundle?after=0", f->dev_key, NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    char *pem = NULL;
    assert_int_equal(cairn_edge_api_public_key(f->a, &pem, &err), 0);
    cairn_bundle_key *pub = NULL;
    assert_int_equal(cairn_bundle_key_from_pem(&pub, pem, strlen(pem), &err), 0);
    cairn_edge_payload pl;
    assert_int_equal(cairn_bundle_verify(r.body, r.len, pub, NULL, &pl, &err), 0);
    assert_int_equal(pl.version, st.bundles);
    assert_string_equal(pl.model_name, "edge");
    assert_memory_equal(pl.base_sha256, want, sizeof want);
    assert_true(pl.n_tensors > 0);
    char path[96];
    snprintf(path, sizeof path, "/v1/edge/models/edge/bundle?after=%llu",
             (unsigned long long)pl.version);
    cairn_edge_payload_free(&pl);
    cairn_bundle_key_free(pub);
    free(pem);
    reply_free(&r);
    r = req(f, "GET", path, f->dev_key, NULL, NULL, 0);
    assert_int_equal(r.status, 204);
    reply_free(&r);
    assert_true(metric(f, "cairn_edge_bytes_down_total") > 0);

    /* The fleet view: operators' keys only; the device, its uploads, the bundles and steps. */
    r = req(f, "GET", "/v1/edge/fleet", NULL, NULL, NULL, 0);
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = req(f, "GET", "/v1/edge/fleet", f->dev_key, NULL, NULL, 0);
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = req(f, "GET", "/v1/edge/fleet", "ops-key", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    json_t *fl = json_loadb((const char *)r.body, r.len, 0, NULL);
    assert_non_null(fl);
    json_t *d0 = json_array_get(json_object_get(fl, "devices"), 0);
    assert_string_equal(json_string_value(json_object_get(d0, "id")), f->dev_id);
    assert_int_equal(json_integer_value(json_object_get(d0, "samples")), 41);
    assert_int_equal(json_integer_value(json_object_get(d0, "uploads")), 2);
    json_t *bs = json_object_get(fl, "bundles");
    assert_int_equal(json_array_size(bs), st.bundles);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(bs, 0), "version")), 1);
    json_t *steps = json_object_get(fl, "steps");
    assert_int_equal(json_array_size(steps), st.steps);
    double ag = json_real_value(json_object_get(json_array_get(steps, 0), "agreement"));
    assert_true(ag >= 0 && ag <= 1);
    assert_int_equal(json_array_size(json_object_get(fl, "uploads")), 2);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(fl, "totals"),
                                                        "samples_accepted")),
                     41);
    json_decref(fl);
    reply_free(&r);
}

/* The device SDK end to end over its libcurl transport: infer and select on a batch of images,
 * upload asynchronously, let the cloud step, then fetch, verify and apply the signed bundle.
 * Normalising with batch statistics on the device (batch_stats) is what cairn adapt eval uses. */
/* min_steps_per_bundle 4: 40 uploaded samples make two steps (32 new, then 8 new + 32
 * replayed; the default gives 2 steps a bundle), and the cloud tops the update up to 4 with
 * steps on its replay buffer before publishing it; a second upload, 4 more. An update published
 * because bundle_every steps were reached needs none; a minimum above bundle_every is refused. */
static void test_min_steps_per_bundle(void **state)
{
    fixture *f = *state;
    size_t len;
    uint8_t *b = batch(f, 40, 28, 10, 1, &len);
    cairn_edge_api_stats st;
    for (int round = 1; round <= 2; round++) {
        reply r = upload(f, b, len);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        assert_int_equal(cairn_edge_api_wait_idle(f->a, 120000), 0);
        cairn_edge_api_get_stats(f->a, &st);
        assert_int_equal(st.steps, 4 * round);
        assert_int_equal(st.bundles, round);
    }
    free(b);
    assert_true(metric(f, "cairn_cema_steps_total") == 8.0);

    cairn_edge_api_params p = cairn_edge_api_default_params();
    p.edge_model_path = f->edge;
    p.foundation_model_path = f->found;
    p.min_steps_per_bundle = p.bundle_every + 1;
    cairn_edge_api *a = NULL;
    cairn_error err = {0};
    assert_int_equal(cairn_edge_api_open(&a, &p, NULL, &err), CAIRN_EINVAL);
    assert_null(a);
    assert_non_null(strstr(err.msg, "min_steps_per_bundle 9 is outside 0..8"));
}

static void test_sdk_over_curl(void **state)
{
    fixture *f = *state;
    cairn_error err = {0};
    char *pem = NULL;
    assert_int_equal(cairn_edge_api_public_key(f->a, &pem, &err), 0);

    /* A wrong device key: uploads are refused (401, dropped and counted), nothing applies. */
    for (int pass = 0; pass < 2; pass++) {
        const int good = pass == 1;
        cairn_edge_transport t;
        assert_int_equal(cairn_edge_transport_curl_new(&t, f->base,
                                                       good ? f->dev_key : "not-a-key", 20000,
                                                       &err),
                         0);
        cairn_edge_params p = cairn_edge_default_params();
        p.model_name = "edge";
        p.device_id = f->dev_id;
        p.public_key_pem = pem;
        p.batch_stats = 1;
        p.seed = 7;
        p.select.lambda = 10.0f; /* keep nearly everything: this test is about the transport */
        p.select.d_margin = 1.0f;
        cairn_edge *e = NULL;
        int rc = cairn_edge_open(&e, f->edge, &p, &t, &err);
        if (rc) fprintf(stderr, "open: %s\n", err.msg);
        assert_int_equal(rc, 0);

        /* 48 images: smooth blobs of random position and brightness, some noise. */
        enum { N = 48, S = 28, K = 10 };
        float *img = malloc((size_t)N * S * S * sizeof(float));
        float probs[N * K], ent[N];
        uint8_t keep[N];
        uint64_t rng = 12345;
        for (int i = 0; i < N; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            float cx = 6 + (float)(rng >> 59), cy = 6 + (float)((rng >> 54) & 15);
            float br = 0.3f + 0.7f * (float)((rng >> 40) & 255) / 255.0f;
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++) {
                    float d2 = (x - cx) * (x - cx) + (y - cy) * (y - cy);
                    img[(size_t)i * S * S + y * S + x] = br * expf(-d2 / 40.0f);
                }
        }
        int queued = cairn_edge_process(e, img, N, probs, ent, keep, &err);
        assert_true(queued >= 2);
        for (int i = 0; i < N; i++) {
            float sum = 0;
            for (int k = 0; k < K; k++)
                sum += probs[i * K + k];
            assert_true(fabsf(sum - 1.0f) < 1e-4f && ent[i] >= 0 && ent[i] <= logf(K) + 1e-4f);
        }
        assert_int_equal(cairn_edge_flush(e, 60000), 0);
        cairn_edge_stats st;
        cairn_edge_get_stats(e, &st);
        assert_int_equal(st.selected, (uint64_t)queued);
        if (!good) {
            assert_int_equal(st.uploaded, 0);
            assert_int_equal(st.dropped_failed, (uint64_t)queued);
            assert_int_equal(cairn_edge_update(e, &err), CAIRN_ENET); /* 401 on the bundle too */
            assert_int_equal(cairn_edge_version(e), 0);
        } else {
            assert_int_equal(st.uploaded, (uint64_t)queued);
            assert_true(st.bytes_up > (uint64_t)queued * S * S); /* pixels went up as bytes */
            assert_int_equal(cairn_edge_api_wait_idle(f->a, 120000), 0);
            cairn_edge_api_stats as;
            cairn_edge_api_get_stats(f->a, &as);
            assert_true(as.steps >= 1 && as.bundles >= 1);
            rc = cairn_edge_update(e, &err);
            if (rc < 0) fprintf(stderr, "update: %s\n", err.msg);
            assert_int_equal(rc, 1);
            assert_int_equal(cairn_edge_version(e), as.bundles);
            assert_int_equal(cairn_edge_update(e, &err), 0); /* nothing newer */
            cairn_edge_get_stats(e, &st);
            assert_int_equal(st.bundles_applied, 1);
            assert_true(st.bytes_down > 0);
        }
        free(img);
        cairn_edge_close(e);
    }
    free(pem);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bad_uploads_rejected_and_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_models_and_bundles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sdk_over_curl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_min_steps_per_bundle, setup_min_steps, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
