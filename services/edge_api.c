/*
 * services/edge_api.c — cairnd's edge endpoints and the thread that runs CEMA's cloud half.
 *
 * Locking: a->lock guards the device table, the published bundle, the thread's flags and the
 * plain counters. The CEMA cloud object has its own locks (add_batch from HTTP threads, step and
 * bundle from the adaptation thread). No HTTP handler ever steps or signs.
 */
#define _GNU_SOURCE /* SCHED_IDLE */
#define CAIRN_LOG_TAG "edge_api"
#include "services/edge_api.h"

#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "adapt/bundle.h"
#include "adapt/nn/nn.h"
#include "common/clock.h"
#include "common/log.h"
#include "proto/edge.h"
#include "services/api.h"

#include <jansson.h>

#define MODELS_PREFIX "/v1/edge/models/"
#define BUNDLE_SUFFIX "/bundle"

/* Why an upload or enrollment was refused: the label values of cairn_edge_rejected_total. */
enum {
    R_AUTH,
    R_CONTENT_TYPE,
    R_TOO_LARGE,
    R_MALFORMED,
    R_NAN,
    R_OVERSIZED,
    R_SHAPE,
    R_MODEL,
    R_RATE,
    R_ENROLL,
    R_COUNT
};
static const char *const reason_names[R_COUNT] = {
    "auth",  "content_type", "too_large", "malformed",  "nan", "oversized_batch",
    "shape", "model",        "rate",      "enrollment",
};

typedef struct device {
    char id[CAIRN_EDGE_STR_MAX];
    char name[CAIRN_EDGE_STR_MAX];
    uint8_t key_hash[CAIRN_EDGE_SHA256_LEN];
    double tokens; /* rate bucket, in samples */
    int64_t refilled_ns;
    /* what GET /v1/edge/fleet reports */
    int64_t enrolled_wall_ns, last_upload_wall_ns;
    uint64_t uploads, samples, bytes_up;
    uint64_t model_version; /* the bundle version its last upload said it runs */
} device;

/* Recent history for GET /v1/edge/fleet, in rings of HISTORY entries (oldest overwritten). */
#define HISTORY 256
typedef struct step_rec {
    int64_t wall_ns;
    uint64_t step;
    int n_new, n_replay;
    float agreement, edge_entropy, foundation_entropy;
} step_rec;
typedef struct upload_rec {
    int64_t wall_ns;
    int device; /* index into devs */
    int n;
    float mean_entropy; /* of the samples, as the device computed them */
} upload_rec;
typedef struct bundle_rec {
    int64_t wall_ns;
    uint64_t version;
    size_t bytes;
} bundle_rec;

struct cairn_edge_api {
    cairn_edge_api_params p;
    char *edge_path, *foundation_path, *token;
    char model_name[CAIRN_EDGE_STR_MAX];
    int in_c, in_h, in_w, classes;
    cairn_cema_cloud *cloud;
    cairn_bundle_key *key;
    uint8_t *model_bytes; /* the base GGUF, served as is */
    size_t model_len;

    pthread_mutex_t lock;
    pthread_cond_t wake; /* uploads arrived, or stop */
    pthread_cond_t idle; /* the thread went idle */
    pthread_t thread;
    int thread_started;
    int stop, busy;
    int unpublished;  /* steps since the last bundle */
    uint64_t stalled; /* pending count a step could not use (a lone first sample); 0: none */
    device *devs;
    int n_devs;
    step_rec steps[HISTORY];
    upload_rec uploads[HISTORY];
    bundle_rec bundles[HISTORY];
    uint64_t n_step_recs, n_upload_recs, n_bundle_recs; /* written so far; index mod HISTORY */
    cairn_api_auth *auth; /* the /v1 keys, for GET /v1/edge/fleet */
    uint8_t *bundle; /* latest signed bundle, replaced (never mutated) on publish */
    size_t bundle_len;
    uint64_t bundle_version;
    cairn_edge_api_stats st;

    cairn_gauge *m_devices, *m_pending;
    cairn_counter *m_accepted, *m_bytes_up, *m_bytes_down, *m_bundles, *m_steps;
    cairn_counter *m_rejected[R_COUNT];
};

cairn_edge_api_params cairn_edge_api_default_params(void)
{
    return (cairn_edge_api_params){
        .max_devices = 1024,
        .max_upload_bytes = 4u << 20,
        .max_upload_samples = 256,
        .rate_samples_per_s = 200,
        .rate_burst = 2048,
        .bundle_every = 8,
        .cema = cairn_cema_default_params(),
    };
}

/* ---- Helpers -------------------------------------------------------------------------------- */

static int ct_equal(const uint8_t *a, const uint8_t *b, size_t n)
{
    uint8_t d = 0;
    for (size_t i = 0; i < n; i++)
        d |= a[i] ^ b[i];
    return d == 0;
}

static int random_hex(char *out, size_t n_bytes)
{
    uint8_t buf[32];
    if (n_bytes > sizeof buf) return CAIRN_EINVAL;
    size_t got = 0;
    while (got < n_bytes) {
        ssize_t r = getrandom(buf + got, n_bytes - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return CAIRN_EIO;
        }
        got += (size_t)r;
    }
    for (size_t i = 0; i < n_bytes; i++)
        sprintf(out + 2 * i, "%02x", buf[i]);
    return 0;
}

static void reject(cairn_edge_api *a, int reason)
{
    cairn_counter_inc(a->m_rejected[reason]);
    pthread_mutex_lock(&a->lock);
    a->st.rejected++;
    pthread_mutex_unlock(&a->lock);
}

static void set_bytes(cairn_http_resp *resp, int status, const char *ctype, const uint8_t *buf,
                      size_t len)
{
    char *b = malloc(len ? len : 1);
    if (!b) {
        cairn_http_json_error(resp, 500, "out of memory");
        return;
    }
    if (len) memcpy(b, buf, len);
    resp->status = status;
    resp->content_type = ctype;
    resp->body = b;
    resp->body_len = len;
}

/* The device a bearer key belongs to, or -1. Caller holds a->lock. */
static int find_device(cairn_edge_api *a, const cairn_http_req *req)
{
    const char *h = cairn_http_header(req, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return -1;
    const char *key = h + 7;
    while (*key == ' ')
        key++;
    size_t n = strlen(key);
    if (n == 0 || n >= CAIRN_EDGE_STR_MAX) return -1;
    uint8_t hash[CAIRN_EDGE_SHA256_LEN];
    cairn_bundle_sha256(key, n, hash);
    int found = -1;
    for (int i = 0; i < a->n_devs; i++) /* no early exit: timing says nothing about the table */
        if (ct_equal(hash, a->devs[i].key_hash, sizeof hash)) found = i;
    return found;
}

/* ---- POST /v1/edge/devices --------------------------------------------------------------- */

static void on_register(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_edge_api *a = ctx;
    cairn_error err = {0};
    cairn_edge_register_req rq;
    if (cairn_edge_register_req_decode((const uint8_t *)req->body, req->body_len, &rq, &err)) {
        reject(a, R_MALFORMED);
        cairn_http_json_error(resp, 400, "bad RegisterRequest: %s", err.msg);
        return;
    }
    size_t tl = a->token ? strlen(a->token) : 0;
    if (tl == 0 || strlen(rq.enrollment_token) != tl ||
        !ct_equal((const uint8_t *)rq.enrollment_token, (const uint8_t *)a->token, tl)) {
        reject(a, R_ENROLL);
        cairn_http_json_error(resp, 401, "invalid enrollment token");
        return;
    }
    if (rq.model_name[0] && strcmp(rq.model_name, a->model_name) != 0) {
        reject(a, R_MODEL);
        cairn_http_json_error(resp, 404, "no edge model '%s'", rq.model_name);
        return;
    }
    cairn_edge_register_resp out = {0};
    memcpy(out.device_id, "dev-", 4);
    memcpy(out.device_key, "cek_", 4);
    if (random_hex(out.device_id + 4, 12) || random_hex(out.device_key + 4, 24)) {
        cairn_http_json_error(resp, 500, "no randomness for a device key");
        return;
    }
    pthread_mutex_lock(&a->lock);
    if (a->n_devs >= a->p.max_devices) {
        pthread_mutex_unlock(&a->lock);
        cairn_http_json_error(resp, 403, "device limit (%d) reached", a->p.max_devices);
        return;
    }
    device *d = &a->devs[a->n_devs];
    memset(d, 0, sizeof *d);
    snprintf(d->id, sizeof d->id, "%s", out.device_id);
    snprintf(d->name, sizeof d->name, "%s", rq.device_name);
    d->enrolled_wall_ns = cairn_wall_ns();
    cairn_bundle_sha256(out.device_key, strlen(out.device_key), d->key_hash);
    d->tokens = a->p.rate_burst;
    d->refilled_ns = cairn_now_ns();
    a->n_devs++;
    a->st.devices = (uint64_t)a->n_devs;
    pthread_mutex_unlock(&a->lock);
    cairn_gauge_inc(a->m_devices);

    uint8_t *buf = NULL;
    size_t len = 0;
    if (cairn_edge_register_resp_encode(&out, &buf, &len, &err)) {
        cairn_http_json_error(resp, 500, "encoding the answer: %s", err.msg);
        return;
    }
    CAIRN_LOG_INFO("device enrolled", "device=%s name=%s", out.device_id, rq.device_name);
    set_bytes(resp, 200, "application/x-protobuf", buf, len);
    free(buf);
}

/* ---- POST /v1/edge/samples --------------------------------------------------------------- */

static void on_samples(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_edge_api *a = ctx;
    char dev_id[CAIRN_EDGE_STR_MAX];
    pthread_mutex_lock(&a->lock);
    int di = find_device(a, req);
    if (di >= 0) memcpy(dev_id, a->devs[di].id, sizeof dev_id);
    pthread_mutex_unlock(&a->lock);
    if (di < 0) {
        reject(a, R_AUTH);
        cairn_http_json_error(resp, 401, "missing or unknown device key (Authorization: Bearer)");
        return;
    }
    cairn_http_set_key_id(req, dev_id); /* the access log names the device, never its key */
    const char *ct = cairn_http_header(req, "Content-Type");
    if (!ct || strncasecmp(ct, "application/x-protobuf", 22) != 0) {
        reject(a, R_CONTENT_TYPE);
        cairn_http_json_error(resp, 400, "Content-Type must be application/x-protobuf");
        return;
    }
    if (req->body_len > a->p.max_upload_bytes) {
        reject(a, R_TOO_LARGE);
        cairn_http_json_error(resp, 413, "sample batch of %zu bytes; the limit is %zu",
                              req->body_len, a->p.max_upload_bytes);
        return;
    }
    cairn_edge_limits lim = cairn_edge_default_limits();
    lim.max_message_bytes = a->p.max_upload_bytes;
    lim.max_samples = a->p.max_upload_samples;
    cairn_edge_batch b;
    cairn_error err = {0};
    int rc = cairn_edge_batch_decode((const uint8_t *)req->body, req->body_len, &lim, &b, &err);
    if (rc) {
        int reason = rc == CAIRN_ELIMIT                  ? R_OVERSIZED
                     : strstr(err.msg, "finite") != NULL ? R_NAN
                                                         : R_MALFORMED;
        reject(a, reason);
        cairn_http_json_error(resp, 400, "bad SampleBatch (%s): %s", reason_names[reason], err.msg);
        return;
    }
    if (strcmp(b.model_name, a->model_name) != 0) {
        reject(a, R_MODEL);
        cairn_http_json_error(resp, 400, "model '%s' is not served here (expected '%s')",
                              b.model_name, a->model_name);
        goto out;
    }
    if (b.device_id[0] && strcmp(b.device_id, dev_id) != 0) {
        reject(a, R_AUTH);
        cairn_http_json_error(resp, 401, "batch from '%s' sent with the key of '%s'", b.device_id,
                              dev_id);
        goto out;
    }
    if (b.c != a->in_c || b.h != a->in_h || b.w != a->in_w || b.k != a->classes) {
        reject(a, R_SHAPE);
        cairn_http_json_error(resp, 400,
                              "samples of shape %dx%dx%d with %d classes; the model "
                              "takes %dx%dx%d with %d classes",
                              b.c, b.h, b.w, b.k, a->in_c, a->in_h, a->in_w, a->classes);
        goto out;
    }
    /* Token bucket per device: refill, then take n or refuse the whole batch. */
    pthread_mutex_lock(&a->lock);
    device *d = NULL;
    for (int i = 0; i < a->n_devs; i++)
        if (!strcmp(a->devs[i].id, dev_id)) d = &a->devs[i];
    int64_t now = cairn_now_ns();
    double retry = 0;
    if (d) {
        d->tokens += (double)(now - d->refilled_ns) / 1e9 * a->p.rate_samples_per_s;
        if (d->tokens > a->p.rate_burst) d->tokens = a->p.rate_burst;
        d->refilled_ns = now;
        if (d->tokens >= b.n)
            d->tokens -= b.n;
        else
            retry = (b.n - d->tokens) / a->p.rate_samples_per_s;
    }
    pthread_mutex_unlock(&a->lock);
    if (retry > 0) {
        reject(a, R_RATE);
        cairn_http_json_error(resp, 429, "device %s is over its rate of %.0f samples/s", dev_id,
                              a->p.rate_samples_per_s);
        resp->retry_after_s = (int)ceil(retry) < 1 ? 1 : (int)ceil(retry);
        goto out;
    }
    rc = cairn_cema_cloud_add_batch(a->cloud, &b, &err);
    if (rc) {
        int reason = rc == CAIRN_EFORMAT ? R_NAN : R_SHAPE;
        reject(a, reason);
        cairn_http_json_error(resp, 400, "samples refused (%s): %s", reason_names[reason], err.msg);
        goto out;
    }
    cairn_counter_add(a->m_accepted, b.n);
    cairn_counter_add(a->m_bytes_up, (double)req->body_len);
    cairn_cema_counters cc;
    cairn_cema_cloud_counters(a->cloud, &cc);
    cairn_gauge_set(a->m_pending, (double)cc.pending);
    double ent = 0;
    for (int i = 0; i < b.n; i++) ent += b.entropies ? b.entropies[i] : 0;
    pthread_mutex_lock(&a->lock);
    a->st.samples_accepted += (uint64_t)b.n;
    a->st.bytes_up += req->body_len;
    for (int i = 0; i < a->n_devs; i++) {
        device *dv = &a->devs[i];
        if (strcmp(dv->id, dev_id) != 0) continue;
        dv->uploads++;
        dv->samples += (uint64_t)b.n;
        dv->bytes_up += req->body_len;
        dv->model_version = b.model_version;
        dv->last_upload_wall_ns = cairn_wall_ns();
        a->uploads[a->n_upload_recs++ % HISTORY] = (upload_rec){
            .wall_ns = dv->last_upload_wall_ns,
            .device = i,
            .n = b.n,
            .mean_entropy = b.n ? (float)(ent / b.n) : 0,
        };
    }
    pthread_cond_signal(&a->wake);
    pthread_mutex_unlock(&a->lock);
    char body[96];
    int n = snprintf(body, sizeof body, "{\"accepted\":%d,\"pending\":%llu}", b.n,
                     (unsigned long long)cc.pending);
    set_bytes(resp, 200, "application/json", (const uint8_t *)body, (size_t)n);
out:
    cairn_edge_batch_free(&b);
}

/* ---- GET /v1/edge/models/{name}[/bundle] ------------------------------------------------- */

static void on_models(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_edge_api *a = ctx;
    char dev_id[CAIRN_EDGE_STR_MAX];
    pthread_mutex_lock(&a->lock);
    int di = find_device(a, req);
    if (di >= 0) memcpy(dev_id, a->devs[di].id, sizeof dev_id);
    pthread_mutex_unlock(&a->lock);
    if (di < 0) {
        reject(a, R_AUTH);
        cairn_http_json_error(resp, 401, "missing or unknown device key (Authorization: Bearer)");
        return;
    }
    cairn_http_set_key_id(req, dev_id);
    const char *rest = req->path + strlen(MODELS_PREFIX);
    size_t n = strlen(rest), sl = strlen(BUNDLE_SUFFIX);
    int want_bundle = n > sl && strcmp(rest + n - sl, BUNDLE_SUFFIX) == 0;
    size_t name_len = want_bundle ? n - sl : n;
    if (name_len != strlen(a->model_name) || strncmp(rest, a->model_name, name_len) != 0) {
        cairn_http_json_error(resp, 404, "no such edge model or resource: %s", req->path);
        return;
    }
    if (!want_bundle) {
        set_bytes(resp, 200, "application/octet-stream", a->model_bytes, a->model_len);
        if (resp->status == 200) {
            cairn_counter_add(a->m_bytes_down, (double)a->model_len);
            pthread_mutex_lock(&a->lock);
            a->st.bytes_down += a->model_len;
            pthread_mutex_unlock(&a->lock);
        }
        return;
    }
    unsigned long long after = 0;
    const char *q = MHD_lookup_connection_value((struct MHD_Connection *)req->conn,
                                                MHD_GET_ARGUMENT_KIND, "after");
    if (q) {
        char *end;
        errno = 0;
        after = strtoull(q, &end, 10);
        if (!*q || *end || errno || q[0] == '-') {
            cairn_http_json_error(resp, 400, "after must be an unsigned integer, got '%.32s'", q);
            return;
        }
    }
    pthread_mutex_lock(&a->lock);
    if (!a->bundle || a->bundle_version <= after) {
        pthread_mutex_unlock(&a->lock);
        /* An empty malloc'ed body: http.c would free() a NULL body's "" placeholder. */
        set_bytes(resp, 204, "application/x-protobuf", NULL, 0);
        return;
    }
    set_bytes(resp, 200, "application/x-protobuf", a->bundle, a->bundle_len);
    if (resp->status == 200) a->st.bytes_down += a->bundle_len;
    size_t sent = resp->status == 200 ? a->bundle_len : 0;
    pthread_mutex_unlock(&a->lock);
    cairn_counter_add(a->m_bytes_down, (double)sent);
}

/* ---- GET /v1/edge/fleet -------------------------------------------------------------------- */

static double wall_s(int64_t ns) { return ns ? (double)ns / 1e9 : 0; }

/* The ring's entries oldest first: calls fn(i) for each stored index. */
#define RING_EACH(count, i, body)                                                                  \
    for (uint64_t k_ = (count) > HISTORY ? (count) - HISTORY : 0; k_ < (count); k_++) {           \
        size_t i = (size_t)(k_ % HISTORY);                                                         \
        body                                                                                       \
    }

/*
 * What operators see of the fleet. The cloud never sees labels, so it cannot measure the edge
 * model's accuracy; what it can report per step is how often the edge model agrees with the
 * (adapted) foundation model on the step's batch, and both models' mean entropy — the signals
 * CEMA itself optimises — beside the entropies devices reported with their uploads.
 */
static void on_fleet(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_edge_api *a = ctx;
    cairn_error err = {0};
    if (cairn_api_auth_request(a->auth, req, &err) != 0) {
        cairn_http_json_error(resp, 401, "%s", err.msg);
        return;
    }
    cairn_cema_counters cc;
    cairn_cema_cloud_counters(a->cloud, &cc);
    json_t *devs = json_array(), *bundles = json_array(), *steps = json_array(),
           *ups = json_array();
    pthread_mutex_lock(&a->lock);
    for (int i = 0; i < a->n_devs; i++) {
        const device *d = &a->devs[i];
        json_array_append_new(
            devs, json_pack("{s:s,s:s,s:f,s:I,s:I,s:I,s:I,s:f}", "id", d->id, "name", d->name,
                            "enrolled_at", wall_s(d->enrolled_wall_ns), "uploads",
                            (json_int_t)d->uploads, "samples", (json_int_t)d->samples,
                            "bytes_up", (json_int_t)d->bytes_up, "model_version",
                            (json_int_t)d->model_version, "last_upload_at",
                            wall_s(d->last_upload_wall_ns)));
    }
    RING_EACH(a->n_bundle_recs, i, {
        json_array_append_new(bundles, json_pack("{s:I,s:f,s:I}", "version",
                                                 (json_int_t)a->bundles[i].version, "published_at",
                                                 wall_s(a->bundles[i].wall_ns), "bytes",
                                                 (json_int_t)a->bundles[i].bytes));
    })
    RING_EACH(a->n_step_recs, i, {
        const step_rec *s = &a->steps[i];
        json_array_append_new(steps, json_pack("{s:I,s:f,s:i,s:i,s:f,s:f,s:f}", "step",
                                               (json_int_t)s->step, "t", wall_s(s->wall_ns), "new",
                                               s->n_new, "replay", s->n_replay, "agreement",
                                               (double)s->agreement, "edge_entropy",
                                               (double)s->edge_entropy, "foundation_entropy",
                                               (double)s->foundation_entropy));
    })
    RING_EACH(a->n_upload_recs, i, {
        const upload_rec *u = &a->uploads[i];
        json_array_append_new(ups, json_pack("{s:f,s:s,s:i,s:f}", "t", wall_s(u->wall_ns),
                                             "device", a->devs[u->device].id, "samples", u->n,
                                             "mean_entropy", (double)u->mean_entropy));
    })
    cairn_edge_api_stats st = a->st;
    uint64_t version = a->bundle_version;
    pthread_mutex_unlock(&a->lock);
    json_t *o = json_pack(
        "{s:s,s:I,s:o,s:o,s:o,s:o,s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}}", "model",
        a->model_name, "latest_version", (json_int_t)version, "devices", devs, "bundles", bundles,
        "steps", steps, "uploads", ups, "totals", "devices", (json_int_t)st.devices,
        "samples_accepted", (json_int_t)st.samples_accepted, "rejected", (json_int_t)st.rejected,
        "bytes_up", (json_int_t)st.bytes_up, "bytes_down", (json_int_t)st.bytes_down, "steps",
        (json_int_t)st.steps, "bundles", (json_int_t)st.bundles, "pending",
        (json_int_t)cc.pending, "dropped", (json_int_t)cc.dropped);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) {
        cairn_http_json_error(resp, 500, "out of memory");
        return;
    }
    resp->status = 200;
    resp->content_type = "application/json";
    resp->body = s;
    resp->body_len = strlen(s);
}

/* ---- The adaptation thread ---------------------------------------------------------------- */

static uint64_t pending_of(cairn_edge_api *a)
{
    cairn_cema_counters cc;
    cairn_cema_cloud_counters(a->cloud, &cc);
    return cc.pending;
}

/* Nothing to do: no pending samples (or only ones a step cannot use yet) and nothing
 * unpublished. Caller holds a->lock. */
static int idle_now(cairn_edge_api *a, uint64_t pending)
{
    return (pending == 0 || pending == a->stalled) && a->unpublished == 0;
}

static void publish(cairn_edge_api *a)
{
    cairn_error err = {0};
    uint8_t *buf = NULL;
    size_t len = 0;
    uint64_t ver = 0;
    if (cairn_cema_cloud_bundle(a->cloud, a->key, &buf, &len, &ver, &err)) {
        CAIRN_LOG_WARN("bundle failed", "error=%s", err.msg);
        return;
    }
    pthread_mutex_lock(&a->lock);
    free(a->bundle);
    a->bundle = buf;
    a->bundle_len = len;
    a->bundle_version = ver;
    a->st.bundles++;
    a->bundles[a->n_bundle_recs++ % HISTORY] =
        (bundle_rec){.wall_ns = cairn_wall_ns(), .version = ver, .bytes = len};
    pthread_mutex_unlock(&a->lock);
    cairn_counter_inc(a->m_bundles);
}

static void *adapt_main(void *arg)
{
    cairn_edge_api *a = arg;
#ifdef SCHED_IDLE
    /* Cloud adaptation must not disturb generation latency: this thread only gets the CPU time
     * that every other thread leaves idle (SCHED_IDLE ranks below nice 19). */
    if (!a->p.adapt_normal_priority) {
        struct sched_param sp = {0};
        int e = pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
        if (e) CAIRN_LOG_WARN("adaptation thread keeps normal priority", "error=%s", strerror(e));
    }
#endif
    pthread_mutex_lock(&a->lock);
    while (!a->stop) {
        uint64_t pending = pending_of(a);
        if (idle_now(a, pending)) {
            a->busy = 0;
            pthread_cond_broadcast(&a->idle);
            pthread_cond_wait(&a->wake, &a->lock);
            continue;
        }
        a->busy = 1;
        pthread_mutex_unlock(&a->lock);
        cairn_error err = {0};
        cairn_cema_step_stats ss = {0};
        /* The queue drained short of min_steps_per_bundle steps since the last bundle: top
         * up on the replay buffer (the uploads of this update are in it by now). */
        const int topup =
            !pending && a->unpublished > 0 && a->unpublished < a->p.min_steps_per_bundle;
        int rc = pending ? cairn_cema_cloud_step(a->cloud, &ss, &err)
                 : topup ? cairn_cema_cloud_replay_step(a->cloud, &ss, &err)
                         : 0;
        if (rc < 0) {
            CAIRN_LOG_WARN("adaptation step failed", "error=%s", err.msg);
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL); /* don't spin on a persistent failure */
        } else if (rc > 0) {
            cairn_counter_inc(a->m_steps);
        }
        pthread_mutex_lock(&a->lock);
        if (rc > 0) {
            a->st.steps++;
            a->unpublished++;
            a->steps[a->n_step_recs++ % HISTORY] = (step_rec){
                .wall_ns = cairn_wall_ns(),
                .step = a->st.steps,
                .n_new = ss.n_new,
                .n_replay = ss.n_replay,
                .agreement = ss.agreement,
                .edge_entropy = ss.edge_entropy,
                .foundation_entropy = ss.foundation_entropy,
            };
        }
        pending = pending_of(a);
        /* A step needs 2 samples (or failed): wait for more uploads instead of spinning. */
        a->stalled = rc <= 0 ? pending : 0;
        cairn_gauge_set(a->m_pending, (double)pending);
        /* Short of the minimum, and the replay buffer could still give a step: not yet. */
        const int short_of = rc > 0 && a->unpublished < a->p.min_steps_per_bundle;
        int due = a->unpublished > 0 &&
                  (a->unpublished >= a->p.bundle_every || (pending == 0 && !short_of));
        if (due) {
            a->unpublished = 0;
            pthread_mutex_unlock(&a->lock);
            publish(a);
            pthread_mutex_lock(&a->lock);
        }
    }
    a->busy = 0;
    pthread_cond_broadcast(&a->idle);
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

/* ---- Open, routes, close ------------------------------------------------------------------- */

static int read_all(const char *path, uint8_t **out, size_t *len, cairn_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            if (cap > (256u << 20)) {
                free(buf);
                fclose(f);
                return cairn_errorf(err, CAIRN_ELIMIT, "%s: larger than 256 MiB", path);
            }
            uint8_t *b = realloc(buf, cap);
            if (!b) {
                free(buf);
                fclose(f);
                return cairn_errorf(err, CAIRN_ENOMEM, "out of memory reading %s", path);
            }
            buf = b;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return cairn_errorf(err, CAIRN_EIO, "%s: read error", path);
    }
    *out = buf;
    *len = n;
    return 0;
}

static int metrics_open(cairn_edge_api *a, cairn_metrics *m, cairn_error *err)
{
    if (!m) return 0;
    cairn_metric_family *rej = NULL;
    static const char *const rl[] = {"reason"};
    int rc = cairn_gauge_new(m, &a->m_devices, "cairn_edge_devices", "Enrolled edge devices", err);
    if (!rc)
        rc = cairn_gauge_new(m, &a->m_pending, "cairn_cema_pending",
                             "Uploaded samples waiting for an adaptation step", err);
    if (!rc)
        rc = cairn_counter_new(m, &a->m_accepted, "cairn_edge_samples_accepted_total",
                               "Samples accepted from edge devices", err);
    if (!rc)
        rc = cairn_counter_new(m, &a->m_bytes_up, "cairn_edge_bytes_up_total",
                               "Bytes of accepted sample uploads", err);
    if (!rc)
        rc = cairn_counter_new(m, &a->m_bytes_down, "cairn_edge_bytes_down_total",
                               "Bytes of models and bundles sent to devices", err);
    if (!rc)
        rc = cairn_counter_new(m, &a->m_bundles, "cairn_edge_bundles_published_total",
                               "Signed update bundles published", err);
    if (!rc)
        rc = cairn_counter_new(m, &a->m_steps, "cairn_cema_steps_total", "Cloud adaptation steps",
                               err);
    if (!rc)
        rc = cairn_counter_family_new(m, &rej, "cairn_edge_rejected_total",
                                      "Edge requests refused, by reason", rl, 1, R_COUNT, err);
    if (rc) return rc;
    for (int i = 0; i < R_COUNT; i++)
        a->m_rejected[i] = cairn_counter_child(rej, CAIRN_LABELS(reason_names[i]));
    return 0;
}

int cairn_edge_api_open(cairn_edge_api **out, const cairn_edge_api_params *p, cairn_metrics *m,
                        cairn_error *err)
{
    *out = NULL;
    if (!p || !p->edge_model_path || !p->foundation_model_path)
        return cairn_errorf(err, CAIRN_EINVAL, "edge api: edge and foundation model paths needed");
    if (p->max_devices < 1 || p->max_upload_bytes < 64 || p->max_upload_samples < 1 ||
        !(p->rate_samples_per_s > 0) || !(p->rate_burst >= 1) || p->bundle_every < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "edge api: limits out of range");
    if (p->min_steps_per_bundle < 0 || p->min_steps_per_bundle > p->bundle_every)
        return cairn_errorf(err, CAIRN_EINVAL, "edge api: min_steps_per_bundle %d is outside "
                            "0..%d (bundle_every)", p->min_steps_per_bundle, p->bundle_every);
    cairn_edge_api *a = calloc(1, sizeof *a);
    if (!a) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->wake, NULL);
    pthread_cond_init(&a->idle, NULL);
    a->p = *p;
    const char *mn = p->cema.model_name ? p->cema.model_name : "edge";
    int rc = 0;
    if (strlen(mn) >= sizeof a->model_name) {
        rc = cairn_errorf(err, CAIRN_EINVAL, "edge api: model name too long");
        goto fail;
    }
    snprintf(a->model_name, sizeof a->model_name, "%s", mn);
    a->p.cema.model_name = a->model_name;
    a->edge_path = strdup(p->edge_model_path);
    a->foundation_path = strdup(p->foundation_model_path);
    a->token = p->enrollment_token ? strdup(p->enrollment_token) : NULL;
    a->devs = calloc((size_t)p->max_devices, sizeof *a->devs);
    if (!a->edge_path || !a->foundation_path || (p->enrollment_token && !a->token) || !a->devs) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        goto fail;
    }
    a->p.edge_model_path = a->edge_path;
    a->p.foundation_model_path = a->foundation_path;
    a->p.enrollment_token = a->token;
    a->p.signing_key_path = NULL;

    rc = cairn_api_auth_new(&a->auth, p->api_keys, p->api_key_hashes, err);
    a->p.api_keys = a->p.api_key_hashes = NULL; /* only their digests are kept, in auth */
    if (!rc)
        rc = cairn_cema_cloud_open(&a->cloud, a->edge_path, a->foundation_path, &a->p.cema, err);
    if (!rc) rc = read_all(a->edge_path, &a->model_bytes, &a->model_len, err);
    if (!rc)
        rc = p->signing_key_path ? cairn_bundle_key_load(&a->key, p->signing_key_path, err)
                                 : cairn_bundle_key_generate(&a->key, err);
    if (!rc && !cairn_bundle_key_has_private(a->key))
        rc = cairn_errorf(err, CAIRN_EINVAL, "edge api: %s holds no private key",
                          p->signing_key_path);
    if (rc) goto fail;
    if (!p->signing_key_path)
        CAIRN_LOG_WARN("ephemeral signing key", "detail=%s",
                       "edge.signing_key not set: bundles are signed with a per-process key");
    cairn_nn_model *em = cairn_cema_cloud_edge_model(a->cloud);
    cairn_nn_input_shape(em, &a->in_c, &a->in_h, &a->in_w);
    a->classes = (int)cairn_nn_output_size(em);
    if ((rc = metrics_open(a, m, err))) goto fail;
    if (pthread_create(&a->thread, NULL, adapt_main, a) != 0) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "edge api: cannot start the adaptation thread");
        goto fail;
    }
    a->thread_started = 1;
    *out = a;
    return 0;
fail:
    cairn_edge_api_close(a);
    return rc;
}

int cairn_edge_api_routes(cairn_edge_api *a, cairn_http *h)
{
    int rc = cairn_http_route(h, "POST", "/v1/edge/devices", on_register, a);
    if (!rc) rc = cairn_http_route(h, "POST", "/v1/edge/samples", on_samples, a);
    if (!rc) rc = cairn_http_route(h, "GET", MODELS_PREFIX "*", on_models, a);
    if (!rc) rc = cairn_http_route(h, "GET", "/v1/edge/fleet", on_fleet, a);
    return rc;
}

void cairn_edge_api_close(cairn_edge_api *a)
{
    if (!a) return;
    if (a->thread_started) {
        pthread_mutex_lock(&a->lock);
        a->stop = 1;
        pthread_cond_broadcast(&a->wake);
        pthread_mutex_unlock(&a->lock);
        pthread_join(a->thread, NULL);
    }
    cairn_cema_cloud_close(a->cloud);
    cairn_api_auth_free(a->auth);
    cairn_bundle_key_free(a->key);
    free(a->model_bytes);
    free(a->bundle);
    free(a->devs);
    free(a->edge_path);
    free(a->foundation_path);
    free(a->token);
    pthread_cond_destroy(&a->wake);
    pthread_cond_destroy(&a->idle);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

int cairn_edge_api_public_key(cairn_edge_api *a, char **pem, cairn_error *err)
{
    return cairn_bundle_key_to_pem(a->key, 0, pem, err);
}

int cairn_edge_api_wait_idle(cairn_edge_api *a, int timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
    int rc = 0;
    pthread_mutex_lock(&a->lock);
    while (a->busy || !idle_now(a, pending_of(a))) {
        pthread_cond_signal(&a->wake);
        if (pthread_cond_timedwait(&a->idle, &a->lock, &dl) == ETIMEDOUT) {
            rc = CAIRN_ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&a->lock);
    return rc;
}

void cairn_edge_api_get_stats(cairn_edge_api *a, cairn_edge_api_stats *out)
{
    pthread_mutex_lock(&a->lock);
    *out = a->st;
    pthread_mutex_unlock(&a->lock);
}
