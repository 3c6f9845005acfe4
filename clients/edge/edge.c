/*
 * clients/edge/edge.c — libcairn_edge: inference, selection, the upload queue and thread, and
 * bundle updates with rollback (clients/edge/cairn_edge.h).
 *
 * Locks: mlock guards the model, the version and the rollback snapshot (inference and bundle
 * swaps exclude each other, which is what makes a swap atomic for inference); qlock guards the
 * upload queue, the flags and the stats counters, with qcond signalled on every queue change.
 * Lock order: mlock before qlock.
 */
#include "clients/edge/cairn_edge.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapt/bundle.h"
#include "adapt/nn/nn.h"
#include "adapt/nn/nn_gguf.h"
#include "proto/edge.h"

struct cairn_edge {
    cairn_edge_params p;
    char model_name[CAIRN_EDGE_STR_MAX];
    char device_id[CAIRN_EDGE_STR_MAX];
    cairn_edge_transport t;
    cairn_bundle_key *pub;
    int c, h, w, k;
    size_t dim;

    pthread_mutex_t mlock;
    cairn_nn_model *model;
    uint8_t base_sha[CAIRN_EDGE_SHA256_LEN];
    uint64_t version;
    uint64_t refused_through; /* versions <= this were rolled back: never again */
    cairn_bundle_snapshot *snap;
    float *probe; /* the last inferred images, for the post-swap check */
    int probe_n;
    cairn_cema_selector *sel; /* guarded by mlock too */

    pthread_mutex_t qlock;
    pthread_cond_t qcond;
    float *q_img, *q_prob, *q_ent; /* ring of queue_capacity samples */
    size_t q_head, q_count;
    int inflight, stopping;
    uint64_t seq;
    uint64_t rng;
    cairn_edge_stats st;
    pthread_t thread;
    int thread_started;
};

/* The model name goes into request paths unescaped: allow only RFC 3986's unreserved
 * characters, so that no name can add a path segment or a query. */
static int url_safe(const char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("._-~", *s)))
            return 0;
    return 1;
}

cairn_edge_params cairn_edge_default_params(void)
{
    cairn_edge_params p;
    memset(&p, 0, sizeof p);
    p.max_batch = 32;
    p.queue_capacity = 256;
    p.upload_batch = 32;
    p.max_attempts = 5;
    p.backoff_base_ms = 200;
    p.backoff_max_ms = 30000;
    p.upload_u8 = 1;
    p.select = cairn_cema_select_default_params();
    return p;
}

static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static struct timespec deadline_in_ms(long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* ---- Upload thread ----------------------------------------------------------------------- */

/* Sends one batch with retries. Called without locks held; returns 1 when the cloud took it. */
static int send_with_retries(cairn_edge *e, const uint8_t *body, size_t len, int *give_up)
{
    char path[] = "/v1/edge/samples";
    for (int attempt = 0; attempt < e->p.max_attempts; attempt++) {
        if (attempt > 0) {
            /* Jittered exponential backoff, interruptible by close. */
            double d = (double)e->p.backoff_base_ms *
                       (double)(1ull << (attempt - 1 < 30 ? attempt - 1 : 30));
            if (d > e->p.backoff_max_ms) d = e->p.backoff_max_ms;
            pthread_mutex_lock(&e->qlock);
            double jitter = 0.5 + 0.5 * (double)(next_rand(&e->rng) >> 11) / 9007199254740992.0;
            struct timespec ts = deadline_in_ms((long)(d * jitter));
            e->st.upload_retries++;
            while (!e->stopping && pthread_cond_timedwait(&e->qcond, &e->qlock, &ts) != ETIMEDOUT) {
            }
            int stop = e->stopping;
            pthread_mutex_unlock(&e->qlock);
            if (stop) return 0;
        }
        long status = 0;
        cairn_error err;
        int rc = e->t.post(e->t.ctx, path, body, len, &status, &err);
        pthread_mutex_lock(&e->qlock);
        e->st.upload_requests++;
        if (!rc) e->st.bytes_up += len;
        pthread_mutex_unlock(&e->qlock);
        if (rc) continue; /* no answer: retry */
        if (status >= 200 && status < 300) return 1;
        if (status == 429 || status >= 500) continue;
        *give_up = 1; /* the cloud refused this batch: sending it again will not help */
        return 0;
    }
    return 0;
}

static void *upload_main(void *arg)
{
    cairn_edge *e = arg;
    const size_t cap = (size_t)e->p.queue_capacity, D = e->dim, K = (size_t)e->k;
    const size_t B = (size_t)e->p.upload_batch;
    float *img = malloc(B * D * sizeof(float)), *prob = malloc(B * K * sizeof(float));
    float *ent = malloc(B * sizeof(float));
    for (;;) {
        pthread_mutex_lock(&e->qlock);
        while (!e->stopping && e->q_count == 0)
            pthread_cond_wait(&e->qcond, &e->qlock);
        if (e->stopping) {
            pthread_mutex_unlock(&e->qlock);
            break;
        }
        size_t n = e->q_count < B ? e->q_count : B;
        if (!img || !prob || !ent) { /* cannot build batches: drop rather than spin */
            e->st.dropped_failed += e->q_count;
            e->q_count = 0;
            pthread_cond_broadcast(&e->qcond);
            pthread_mutex_unlock(&e->qlock);
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            size_t s = (e->q_head + i) % cap;
            memcpy(img + i * D, e->q_img + s * D, D * sizeof(float));
            memcpy(prob + i * K, e->q_prob + s * K, K * sizeof(float));
            ent[i] = e->q_ent[s];
        }
        e->q_head = (e->q_head + n) % cap;
        e->q_count -= n;
        e->inflight = 1;
        uint64_t seq = ++e->seq;
        pthread_mutex_unlock(&e->qlock);

        pthread_mutex_lock(&e->mlock);
        uint64_t version = e->version;
        pthread_mutex_unlock(&e->mlock);
        cairn_edge_batch b;
        memset(&b, 0, sizeof b);
        memcpy(b.device_id, e->device_id, sizeof b.device_id);
        memcpy(b.model_name, e->model_name, sizeof b.model_name);
        b.model_version = version;
        b.seq = seq;
        b.n = (int)n;
        b.c = e->c;
        b.h = e->h;
        b.w = e->w;
        b.k = e->k;
        b.images = img;
        b.probs = prob;
        b.entropies = ent;
        b.images_were_u8 = e->p.upload_u8;
        uint8_t *body = NULL;
        size_t len = 0;
        cairn_error err;
        int ok = 0, give_up = 0;
        if (cairn_edge_batch_encode(&b, NULL, &body, &len, &err) == 0)
            ok = send_with_retries(e, body, len, &give_up);
        free(body);

        pthread_mutex_lock(&e->qlock);
        if (ok)
            e->st.uploaded += n;
        else
            e->st.dropped_failed += n;
        e->inflight = 0;
        pthread_cond_broadcast(&e->qcond);
        pthread_mutex_unlock(&e->qlock);
    }
    free(img);
    free(prob);
    free(ent);
    return NULL;
}

/* ---- Open / close -------------------------------------------------------------------------- */

void cairn_edge_close(cairn_edge *e)
{
    if (!e) return;
    if (e->thread_started) {
        pthread_mutex_lock(&e->qlock);
        e->stopping = 1;
        pthread_cond_broadcast(&e->qcond);
        pthread_mutex_unlock(&e->qlock);
        pthread_join(e->thread, NULL);
    }
    if (e->t.destroy) e->t.destroy(e->t.ctx);
    cairn_nn_model_free(e->model);
    cairn_bundle_key_free(e->pub);
    cairn_bundle_snapshot_free(e->snap);
    cairn_cema_selector_free(e->sel);
    pthread_mutex_destroy(&e->mlock);
    pthread_mutex_destroy(&e->qlock);
    pthread_cond_destroy(&e->qcond);
    free(e->probe);
    free(e->q_img);
    free(e->q_prob);
    free(e->q_ent);
    free(e);
}

int cairn_edge_open(cairn_edge **out, const char *model_path, const cairn_edge_params *p,
                    cairn_edge_transport *t, cairn_error *err)
{
    *out = NULL;
    cairn_edge *e = calloc(1, sizeof *e);
    if (!e) {
        if (t && t->destroy) t->destroy(t->ctx);
        return cairn_errorf(err, CAIRN_ENOMEM, "edge");
    }
    if (t) e->t = *t;
    pthread_mutex_init(&e->mlock, NULL);
    pthread_mutex_init(&e->qlock, NULL);
    pthread_cond_init(&e->qcond, NULL);
    int rc = 0;
    if (!t || !t->post || !t->get || !p->model_name || !p->device_id || !p->public_key_pem ||
        p->max_batch < 1 || p->queue_capacity < 1 || p->upload_batch < 1 || p->max_attempts < 1 ||
        p->backoff_base_ms < 0 || p->backoff_max_ms < 0 ||
        strlen(p->model_name) >= CAIRN_EDGE_STR_MAX || !*p->model_name ||
        !url_safe(p->model_name) ||
        strlen(p->device_id) >= CAIRN_EDGE_STR_MAX || !*p->device_id) {
        rc = cairn_errorf(err, CAIRN_EINVAL,
                          "edge: missing or out-of-range parameters (transport, model name "
                          "[A-Za-z0-9._~-], device id, key, sizes)");
        goto fail;
    }
    e->p = *p;
    snprintf(e->model_name, sizeof e->model_name, "%s", p->model_name);
    snprintf(e->device_id, sizeof e->device_id, "%s", p->device_id);
    e->p.model_name = e->model_name;
    e->p.device_id = e->device_id;
    e->p.public_key_pem = NULL;
    e->rng = p->seed ? p->seed : (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)e;

    size_t klen = p->public_key_len ? p->public_key_len : strlen(p->public_key_pem);
    if ((rc = cairn_bundle_key_from_pem(&e->pub, p->public_key_pem, klen, err)) ||
        (rc = cairn_bundle_sha256_file(model_path, e->base_sha, err)) ||
        (rc = cairn_nn_load(&e->model, model_path, err)))
        goto fail;
    cairn_nn_model_params mp = cairn_nn_model_default_params();
    mp.max_batch = p->max_batch;
    if ((rc = cairn_nn_model_prepare(e->model, &mp, err))) goto fail;
    cairn_nn_set_bn_mode(e->model, p->batch_stats ? CAIRN_NN_BN_BATCH : CAIRN_NN_BN_EVAL);
    cairn_nn_input_shape(e->model, &e->c, &e->h, &e->w);
    e->dim = (size_t)e->c * e->h * e->w;
    e->k = (int)cairn_nn_output_size(e->model);
    if (e->k < 2) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "edge: the model has %d outputs", e->k);
        goto fail;
    }
    if ((rc = cairn_cema_selector_new(&e->sel, e->k, &p->select, err))) goto fail;
    const size_t cap = (size_t)p->queue_capacity;
    e->q_img = malloc(cap * e->dim * sizeof(float));
    e->q_prob = malloc(cap * (size_t)e->k * sizeof(float));
    e->q_ent = malloc(cap * sizeof(float));
    e->probe = malloc((size_t)p->max_batch * e->dim * sizeof(float));
    if (!e->q_img || !e->q_prob || !e->q_ent || !e->probe) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "edge: queue of %zu samples", cap);
        goto fail;
    }
    if (pthread_create(&e->thread, NULL, upload_main, e) != 0) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "edge: cannot start the upload thread");
        goto fail;
    }
    e->thread_started = 1;
    *out = e;
    return 0;
fail:
    cairn_edge_close(e);
    return rc;
}

void cairn_edge_input_shape(const cairn_edge *e, int *c, int *h, int *w)
{
    *c = e->c;
    *h = e->h;
    *w = e->w;
}

int cairn_edge_classes(const cairn_edge *e)
{
    return e->k;
}

/* ---- Inference and selection --------------------------------------------------------------- */

int cairn_edge_infer(cairn_edge *e, const float *images, int n, float *probs, float *entropies,
                     cairn_error *err)
{
    if (n < 1) return cairn_errorf(err, CAIRN_EINVAL, "edge: %d images", n);
    for (size_t i = 0; i < (size_t)n * e->dim; i++)
        if (!isfinite(images[i]))
            return cairn_errorf(err, CAIRN_EFORMAT, "edge: image %zu has a non-finite value",
                                i / e->dim);
    const int K = e->k;
    int rc = 0;
    pthread_mutex_lock(&e->mlock);
    for (int i = 0; i < n && !rc; i += e->p.max_batch) {
        int b = n - i < e->p.max_batch ? n - i : e->p.max_batch;
        const float *x = images + (size_t)i * e->dim, *logits;
        if ((rc = cairn_nn_forward(e->model, x, b, &logits, err))) break;
        cairn_nn_entropy(logits, b, K, entropies + i);
        cairn_nn_softmax(logits, b, K, probs + (size_t)i * K);
        memcpy(e->probe, x, (size_t)b * e->dim * sizeof(float));
        e->probe_n = b;
    }
    pthread_mutex_unlock(&e->mlock);
    if (!rc) {
        pthread_mutex_lock(&e->qlock);
        e->st.inferred += (uint64_t)n;
        pthread_mutex_unlock(&e->qlock);
    }
    return rc;
}

int cairn_edge_select(cairn_edge *e, const float *probs, const float *entropies, int n,
                      uint8_t *keep)
{
    if (n < 1) return 0;
    pthread_mutex_lock(&e->mlock);
    int kept = cairn_cema_select(e->sel, probs, entropies, n, keep);
    pthread_mutex_unlock(&e->mlock);
    return kept;
}

int cairn_edge_submit(cairn_edge *e, const float *images, const float *probs,
                      const float *entropies, const uint8_t *keep, int n, cairn_error *err)
{
    if (n < 0) return cairn_errorf(err, CAIRN_EINVAL, "edge: %d samples", n);
    const size_t cap = (size_t)e->p.queue_capacity, D = e->dim, K = (size_t)e->k;
    int queued = 0;
    pthread_mutex_lock(&e->qlock);
    for (int i = 0; i < n; i++) {
        if (keep && !keep[i]) continue;
        if (e->q_count == cap) { /* full: the oldest makes room */
            e->q_head = (e->q_head + 1) % cap;
            e->q_count--;
            e->st.dropped_full++;
        }
        size_t s = (e->q_head + e->q_count) % cap;
        memcpy(e->q_img + s * D, images + (size_t)i * D, D * sizeof(float));
        memcpy(e->q_prob + s * K, probs + (size_t)i * K, K * sizeof(float));
        e->q_ent[s] = entropies[i];
        e->q_count++;
        queued++;
    }
    e->st.selected += (uint64_t)queued;
    if (queued) pthread_cond_broadcast(&e->qcond);
    pthread_mutex_unlock(&e->qlock);
    return queued;
}

int cairn_edge_process(cairn_edge *e, const float *images, int n, float *probs, float *entropies,
                       uint8_t *keep, cairn_error *err)
{
    int rc = cairn_edge_infer(e, images, n, probs, entropies, err);
    if (rc) return rc;
    uint8_t stack_keep[256];
    uint8_t *k = keep ? keep : (n <= 256 ? stack_keep : malloc((size_t)n));
    if (!k) return cairn_errorf(err, CAIRN_ENOMEM, "edge: selection of %d samples", n);
    cairn_edge_select(e, probs, entropies, n, k);
    rc = cairn_edge_submit(e, images, probs, entropies, k, n, err);
    if (k != keep && k != stack_keep) free(k);
    return rc;
}

int cairn_edge_flush(cairn_edge *e, int timeout_ms)
{
    struct timespec ts = deadline_in_ms(timeout_ms);
    int rc = 0;
    pthread_mutex_lock(&e->qlock);
    while ((e->q_count > 0 || e->inflight) && !e->stopping)
        if (pthread_cond_timedwait(&e->qcond, &e->qlock, &ts) == ETIMEDOUT) {
            rc = (e->q_count > 0 || e->inflight) ? CAIRN_ETIMEDOUT : 0;
            break;
        }
    pthread_mutex_unlock(&e->qlock);
    return rc;
}

/* ---- Bundles ------------------------------------------------------------------------------ */

static void count(cairn_edge *e, uint64_t *field)
{
    pthread_mutex_lock(&e->qlock);
    (*field)++;
    pthread_mutex_unlock(&e->qlock);
}

/* A forward pass on the probe images must give finite outputs. Caller holds mlock. */
static int probe_ok(cairn_edge *e)
{
    int n = e->probe_n > 0 ? e->probe_n : 1;
    if (e->probe_n == 0) memset(e->probe, 0, e->dim * sizeof(float));
    const float *out;
    cairn_error err;
    if (cairn_nn_forward(e->model, e->probe, n, &out, &err)) return 0;
    for (size_t i = 0; i < (size_t)n * (size_t)e->k; i++)
        if (!isfinite(out[i])) return 0;
    return 1;
}

int cairn_edge_apply_bundle(cairn_edge *e, const uint8_t *buf, size_t len, cairn_error *err)
{
    pthread_mutex_lock(&e->mlock);
    cairn_bundle_expect x;
    memset(&x, 0, sizeof x);
    x.model_name = e->model_name;
    memcpy(x.base_sha256, e->base_sha, sizeof x.base_sha256);
    x.current_version = e->version > e->refused_through ? e->version : e->refused_through;
    cairn_bundle_snapshot *snap = NULL;
    uint64_t v = 0;
    int rc = cairn_bundle_apply(e->model, buf, len, e->pub, &x, &v, &snap, err);
    if (!rc && !probe_ok(e)) {
        /* The new parameters break the model: back to the previous ones at once. */
        cairn_bundle_restore(e->model, snap, NULL);
        cairn_bundle_snapshot_free(snap);
        snap = NULL;
        e->refused_through = v;
        rc = cairn_errorf(err, CAIRN_EFORMAT,
                          "bundle %llu: the model gives non-finite outputs "
                          "with it; rolled back",
                          (unsigned long long)v);
        count(e, &e->st.rollbacks);
    }
    if (!rc) {
        cairn_bundle_snapshot_free(e->snap);
        e->snap = snap;
        /* The snapshot (it records the version before) stays for cairn_edge_rollback. */
        e->version = v;
        cairn_cema_selector_reset(e->sel); /* the entropy scale changes with the model */
    }
    pthread_mutex_unlock(&e->mlock);
    pthread_mutex_lock(&e->qlock);
    if (rc)
        e->st.bundles_rejected++;
    else
        e->st.bundles_applied++;
    e->st.bytes_down += len;
    pthread_mutex_unlock(&e->qlock);
    return rc;
}

int cairn_edge_update(cairn_edge *e, cairn_error *err)
{
    pthread_mutex_lock(&e->mlock);
    uint64_t after = e->version > e->refused_through ? e->version : e->refused_through;
    pthread_mutex_unlock(&e->mlock);
    char path[256];
    snprintf(path, sizeof path, "/v1/edge/models/%s/bundle?after=%llu", e->model_name,
             (unsigned long long)after);
    uint8_t *body = NULL;
    size_t len = 0;
    long status = 0;
    int rc = e->t.get(e->t.ctx, path, &body, &len, &status, err);
    if (rc) return rc;
    if (status == 204 || status == 304 || status == 404) {
        free(body);
        return 0;
    }
    if (status != 200 || !body) {
        free(body);
        return cairn_errorf(err, CAIRN_ENET, "GET %s: HTTP %ld", path, status);
    }
    rc = cairn_edge_apply_bundle(e, body, len, err);
    free(body);
    return rc ? rc : 1;
}

int cairn_edge_rollback(cairn_edge *e, cairn_error *err)
{
    pthread_mutex_lock(&e->mlock);
    int rc = 0;
    if (!e->snap) {
        rc = cairn_errorf(err, CAIRN_ESTATE, "edge: no update to roll back");
    } else if (!(rc = cairn_bundle_restore(e->model, e->snap, err))) {
        if (e->version > e->refused_through) e->refused_through = e->version;
        e->version = cairn_bundle_snapshot_version(e->snap);
        cairn_bundle_snapshot_free(e->snap);
        e->snap = NULL;
        cairn_cema_selector_reset(e->sel);
    }
    pthread_mutex_unlock(&e->mlock);
    if (!rc) count(e, &e->st.rollbacks);
    return rc;
}

uint64_t cairn_edge_version(cairn_edge *e)
{
    pthread_mutex_lock(&e->mlock);
    uint64_t v = e->version;
    pthread_mutex_unlock(&e->mlock);
    return v;
}

void cairn_edge_get_stats(cairn_edge *e, cairn_edge_stats *out)
{
    uint64_t v = cairn_edge_version(e);
    pthread_mutex_lock(&e->qlock);
    *out = e->st;
    out->queued = (int)e->q_count;
    pthread_mutex_unlock(&e->qlock);
    out->version = v;
}
