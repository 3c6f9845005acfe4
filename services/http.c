/*
 * services/http.c — cairnd's HTTP layer on libmicrohttpd.
 *
 * Request lifecycle (libmicrohttpd calls the access handler several times per request):
 *   1st call   allocate the per-request state; reject an announced Content-Length over the
 *              limit with 413 straight away;
 *   next calls append body bytes (past the limit: remember, drop the bytes, answer 413 later);
 *   last call  (upload_data_size == 0) route and run the handler, queue its response.
 * The completion callback frees the state, records the request's metrics and writes its
 * access-log line.
 *
 * Every response leaves through add_headers() (buffers in queue(), streams in
 * async_progress()), which is where X-Request-Id and the CORS headers are added, so that no
 * answer — a 404, a 413 sent before the body, a stream — goes out without them.
 */
#define _GNU_SOURCE /* POLLRDHUP */
#include "services/http.h"

#include "common/clock.h"
#include "common/log.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#define MAX_ROUTES 64
#define MAX_ORIGINS 32
#define ORIGIN_MAX 256 /* bytes of one Origin value, NUL included */
#define RID_MAX 64     /* characters of a request id */
#define KEY_ID_MAX 48  /* bytes of a key id, NUL included */

typedef struct route {
    char method[8];
    char path[96];
    size_t prefix_len; /* > 0 when path ended in '*' */
    size_t max_body;   /* 0: the server's */
    cairn_http_handler fn;
    void *ctx;
} route;

struct cairn_http {
    cairn_http_params p;
    struct MHD_Daemon *mhd;
    route routes[MAX_ROUTES];
    int n_routes;
    int port;
    char *origins[MAX_ORIGINS]; /* allowed CORS origins (malloc'ed), n_origins of them */
    int n_origins;
    bool any_origin;            /* cors_origins "*" */
    uint32_t rid_prefix;        /* random per server: request ids differ across restarts */
    atomic_uint_fast64_t rid_next;
    cairn_metric_family *requests; /* counter{route,code} */
    cairn_metric_family *duration; /* histogram{route} */
    cairn_gauge *inflight;
    atomic_long active;       /* requests begun and not yet completed */
    atomic_int drain_retry_s; /* > 0: draining; new requests get 503 with this Retry-After */
};

/* Per-request state, owned by libmicrohttpd's con_cls slot until completion. */
typedef struct request {
    char *body;
    size_t len, cap;
    int too_large;
    int status;
    const route *rt;
    const char *route_name; /* route pattern for metrics and the log; "other" when none */
    int64_t t0_ns;
    size_t bytes_out;        /* body bytes of a buffered answer */
    cairn_http_async *async; /* set when the handler deferred its answer */
    char method[16];
    char rid[RID_MAX + 1];
    char key_id[KEY_ID_MAX];
    char origin[ORIGIN_MAX]; /* set when the request came from an allowed origin */
} request;

/* A deferred answer (see http.h). References: the producer's (until respond/end), the request's
 * (until on_completed) and, for streams, the response's (until libmicrohttpd frees it). */
enum { ASYNC_PENDING, ASYNC_RESPONDED, ASYNC_STREAMING };
struct cairn_http_async {
    pthread_mutex_t mu; /* guards everything below */
    int refs;
    struct MHD_Connection *conn;
    int state;
    bool suspended; /* the connection is suspended, waiting for us */
    bool gone;      /* the request completed (client gone, or answer sent) */
    bool hung_up;   /* the client closed its end while the connection was suspended */
    bool ended;     /* the stream's last byte is written */
    bool queued;    /* a response was queued on the connection */
    cairn_http_resp resp;     /* ASYNC_RESPONDED */
    const char *content_type; /* ASYNC_STREAMING */
    char *buf;                /* stream bytes not yet handed to libmicrohttpd: [off, len) */
    size_t off, len, cap;
    size_t sent; /* stream bytes handed to libmicrohttpd, for the access log */
};

/* ---- Responses --------------------------------------------------------------------- */

static const char *error_type(int status)
{
    switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 405: return "invalid_request_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

void cairn_http_set_text(cairn_http_resp *resp, int status, const char *content_type,
                         const char *text)
{
    free(resp->body);
    resp->status = status;
    resp->content_type = content_type;
    resp->body_len = strlen(text);
    resp->body = malloc(resp->body_len + 1);
    if (resp->body) memcpy(resp->body, text, resp->body_len + 1);
    else resp->body_len = 0;
}

void cairn_http_json_error(cairn_http_resp *resp, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* jansson escapes the message, so user text (field names, values) cannot break the JSON;
     * invalid UTF-8 in it would make json_string fail, so fall back to a fixed message. */
    json_t *m = json_string(msg);
    if (!m) m = json_string("the request could not be processed (message was not valid UTF-8)");
    json_t *o = json_pack("{s:{s:i,s:o,s:s}}", "error", "code", status, "message", m, "type",
                          error_type(status));
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    free(resp->body);
    resp->status = status;
    resp->content_type = "application/json";
    resp->body = s;
    resp->body_len = s ? strlen(s) : 0;
}

const char *cairn_http_header(const cairn_http_req *req, const char *name)
{
    return MHD_lookup_connection_value((struct MHD_Connection *)req->conn, MHD_HEADER_KIND, name);
}

const char *cairn_http_query(const cairn_http_req *req, const char *name)
{
    return MHD_lookup_connection_value((struct MHD_Connection *)req->conn, MHD_GET_ARGUMENT_KIND,
                                       name);
}

typedef struct query_iter {
    int (*fn)(void *ctx, const char *name, const char *value);
    void *ctx;
    int rc;
} query_iter;

static enum MHD_Result query_one(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    query_iter *it = cls;
    it->rc = it->fn(it->ctx, key, value);
    return it->rc ? MHD_NO : MHD_YES;
}

int cairn_http_query_each(const cairn_http_req *req,
                          int (*fn)(void *ctx, const char *name, const char *value), void *ctx)
{
    query_iter it = {fn, ctx, 0};
    MHD_get_connection_values((struct MHD_Connection *)req->conn, MHD_GET_ARGUMENT_KIND,
                              query_one, &it);
    return it.rc;
}

void cairn_http_set_key_id(const cairn_http_req *req, const char *key_id)
{
    request *rq = req->priv;
    if (rq && key_id) snprintf(rq->key_id, sizeof rq->key_id, "%s", key_id);
}

/* The headers every answer carries: its request id, CORS for an allowed origin, and the
 * handler's own (extra: name, value pairs, NULL-terminated; may be NULL). */
static void add_headers(struct MHD_Response *r, const request *rq, const char *const *extra)
{
    MHD_add_response_header(r, "X-Request-Id", rq->rid);
    if (rq->origin[0]) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", rq->origin);
        MHD_add_response_header(r, "Access-Control-Expose-Headers", "X-Request-Id, Retry-After");
        MHD_add_response_header(r, "Vary", "Origin");
    }
    for (size_t i = 0; extra && extra[i] && extra[i + 1]; i += 2)
        MHD_add_response_header(r, extra[i], extra[i + 1]);
}

static enum MHD_Result queue(struct MHD_Connection *c, request *rq, cairn_http_resp *resp)
{
    if (!resp->body && resp->status != 204 && resp->status != 304)
        cairn_http_json_error(resp, 500, "out of memory");
    /* An empty answer (204, 304) has no buffer to hand over: nothing may be freed then. */
    struct MHD_Response *r =
        resp->body ? MHD_create_response_from_buffer(resp->body_len, resp->body,
                                                     MHD_RESPMEM_MUST_FREE)
                   : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(resp->body);
        return MHD_NO;
    }
    rq->bytes_out = resp->body ? resp->body_len : 0;
    resp->body = NULL; /* libmicrohttpd owns it now */
    add_headers(r, rq, resp->headers);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            resp->content_type ? resp->content_type : "application/json");
    if (resp->retry_after_s > 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", resp->retry_after_s);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    rq->status = resp->status;
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)resp->status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result queue_error(struct MHD_Connection *c, request *rq, int status,
                                   const char *fmt, const char *arg)
{
    cairn_http_resp resp = {0};
    cairn_http_json_error(&resp, status, fmt, arg);
    return queue(c, rq, &resp);
}

/* ---- Deferred answers ------------------------------------------------------------------ */

static void async_unref(cairn_http_async *a)
{
    pthread_mutex_lock(&a->mu);
    int left = --a->refs;
    pthread_mutex_unlock(&a->mu);
    if (left) return;
    pthread_mutex_destroy(&a->mu);
    free(a->resp.body);
    free(a->buf);
    free(a);
}

/* libmicrohttpd pulls stream bytes here. With nothing to send yet, the connection is suspended
 * (returning 0 after suspending is the documented way) until a write resumes it. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    cairn_http_async *a = cls;
    ssize_t n;
    pthread_mutex_lock(&a->mu);
    if (a->off < a->len) {
        size_t k = a->len - a->off < max ? a->len - a->off : max;
        memcpy(buf, a->buf + a->off, k);
        a->off += k;
        a->sent += k;
        if (a->off == a->len) a->off = a->len = 0;
        n = (ssize_t)k;
    } else if (a->ended) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else if (a->gone) {
        n = MHD_CONTENT_READER_END_WITH_ERROR;
    } else {
        MHD_suspend_connection(a->conn);
        a->suspended = true;
        n = 0;
    }
    pthread_mutex_unlock(&a->mu);
    return n;
}

static void stream_free(void *cls) { async_unref(cls); }

/* Called on the connection's thread after the handler deferred, and again after each resume:
 * queue the answer if there is one, else suspend until there is. */
static enum MHD_Result async_progress(struct MHD_Connection *c, request *rq)
{
    cairn_http_async *a = rq->async;
    pthread_mutex_lock(&a->mu);
    if (a->queued) { /* resumed for stream bytes: libmicrohttpd reads them itself */
        pthread_mutex_unlock(&a->mu);
        return MHD_YES;
    }
    if (a->state == ASYNC_RESPONDED) {
        cairn_http_resp resp = a->resp;
        a->resp.body = NULL;
        a->queued = true;
        pthread_mutex_unlock(&a->mu);
        return queue(c, rq, &resp);
    }
    if (a->state == ASYNC_STREAMING) {
        a->queued = true;
        a->refs++; /* the response's reference, released by stream_free */
        const char *ct = a->content_type;
        pthread_mutex_unlock(&a->mu);
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, a, stream_free);
        if (!r) {
            async_unref(a);
            return MHD_NO;
        }
        add_headers(r, rq, NULL);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ct);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        rq->status = 200;
        enum MHD_Result ok = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ok;
    }
    MHD_suspend_connection(c);
    a->suspended = true;
    pthread_mutex_unlock(&a->mu);
    return MHD_YES;
}

cairn_http_async *cairn_http_defer(const cairn_http_req *req, cairn_http_resp *resp)
{
    request *rq = req->priv;
    if (!rq || rq->async) return NULL;
    cairn_http_async *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    pthread_mutex_init(&a->mu, NULL);
    a->refs = 2; /* producer + request */
    a->conn = req->conn;
    a->state = ASYNC_PENDING;
    rq->async = a;
    return a;
}

/* Resumes the connection if it waits for us. Called with a->mu held; a suspended connection
 * cannot complete, so the connection is alive here. */
static void wake(cairn_http_async *a)
{
    if (a->suspended && !a->gone) {
        a->suspended = false;
        MHD_resume_connection(a->conn);
    }
}

void cairn_http_async_respond(cairn_http_async *a, cairn_http_resp *resp)
{
    pthread_mutex_lock(&a->mu);
    if (a->state == ASYNC_PENDING) {
        a->resp = *resp;
        a->state = ASYNC_RESPONDED;
    } else {
        free(resp->body);
    }
    resp->body = NULL;
    wake(a);
    pthread_mutex_unlock(&a->mu);
    async_unref(a);
}

void cairn_http_async_stream_begin(cairn_http_async *a, const char *content_type)
{
    pthread_mutex_lock(&a->mu);
    if (a->state == ASYNC_PENDING) {
        a->state = ASYNC_STREAMING;
        a->content_type = content_type;
        wake(a);
    }
    pthread_mutex_unlock(&a->mu);
}

int cairn_http_async_write(cairn_http_async *a, const char *data, size_t len)
{
    int rc = 0;
    pthread_mutex_lock(&a->mu);
    if (a->gone || a->hung_up) {
        rc = CAIRN_ECANCELED;
    } else if (a->len + len > a->cap) {
        size_t cap = a->cap ? a->cap : 4096;
        while (cap < a->len + len) cap *= 2;
        char *b = realloc(a->buf, cap);
        if (!b) rc = CAIRN_ENOMEM;
        else a->buf = b, a->cap = cap;
    }
    if (!rc) {
        memcpy(a->buf + a->len, data, len);
        a->len += len;
        wake(a);
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

void cairn_http_async_end(cairn_http_async *a)
{
    pthread_mutex_lock(&a->mu);
    a->ended = true;
    wake(a);
    pthread_mutex_unlock(&a->mu);
    async_unref(a);
}

/*
 * Whether the client of a suspended connection has closed its end. libmicrohttpd does not watch
 * suspended connections, so a client that gives up on a deferred answer would go unnoticed
 * until the whole answer was computed; a zero-timeout poll for POLLRDHUP sees its FIN at once.
 * (A client that half-closes after sending its request reads as gone too; HTTP clients keep
 * their end open while they wait.) Called with a->mu held and a->suspended set: a suspended
 * connection cannot complete, so its socket is open.
 */
static bool peer_hung_up(cairn_http_async *a)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(a->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    struct pollfd pfd = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

bool cairn_http_async_gone(cairn_http_async *a)
{
    pthread_mutex_lock(&a->mu);
    if (!a->gone && !a->hung_up && a->suspended && peer_hung_up(a)) a->hung_up = true;
    bool g = a->gone || a->hung_up;
    pthread_mutex_unlock(&a->mu);
    return g;
}

/* ---- Routing ------------------------------------------------------------------------ */

int cairn_http_route(cairn_http *h, const char *method, const char *path, cairn_http_handler fn,
                     void *ctx)
{
    return cairn_http_route_limit(h, method, path, fn, ctx, 0);
}

int cairn_http_route_limit(cairn_http *h, const char *method, const char *path,
                           cairn_http_handler fn, void *ctx, size_t max_body)
{
    if (h->n_routes == MAX_ROUTES) return CAIRN_ELIMIT;
    size_t n = strlen(path);
    if (n >= sizeof h->routes[0].path || strlen(method) >= sizeof h->routes[0].method)
        return CAIRN_EINVAL;
    route *r = &h->routes[h->n_routes++];
    snprintf(r->method, sizeof r->method, "%s", method);
    snprintf(r->path, sizeof r->path, "%s", path);
    r->prefix_len = (n && path[n - 1] == '*') ? n - 1 : 0;
    r->max_body = max_body;
    r->fn = fn;
    r->ctx = ctx;
    return CAIRN_OK;
}

static int path_matches(const route *r, const char *path)
{
    if (r->prefix_len) return strncmp(r->path, path, r->prefix_len) == 0;
    return strcmp(r->path, path) == 0;
}

/* Finds the route for (method, path). *name gets the pattern of the first route matching the
 * path with any method ("other" when none), which separates 405 from 404 and names the route
 * in metrics and logs without ever using the raw path. */
static const route *find_route(const cairn_http *h, const char *method, const char *path,
                               const char **name)
{
    *name = NULL;
    for (int i = 0; i < h->n_routes; i++) {
        if (!path_matches(&h->routes[i], path)) continue;
        if (!*name) *name = h->routes[i].path;
        if (strcmp(h->routes[i].method, method) == 0) {
            *name = h->routes[i].path;
            return &h->routes[i];
        }
    }
    if (!*name) *name = "other";
    return NULL;
}

/* ---- Request ids and CORS ------------------------------------------------------------- */

/* A client's X-Request-Id is echoed in a header and written to the log, so only a short id of
 * plain characters is taken: nothing that could split a header or a log line. */
static bool request_id_valid(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char ch = (unsigned char)s[n];
        if (n == RID_MAX) return false;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.' || ch == ':'))
            return false;
    }
    return n > 0;
}

static void set_request_id(cairn_http *h, struct MHD_Connection *c, request *rq)
{
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (v && request_id_valid(v)) {
        snprintf(rq->rid, sizeof rq->rid, "%s", v);
        return;
    }
    uint64_t n = atomic_fetch_add(&h->rid_next, 1);
    snprintf(rq->rid, sizeof rq->rid, "%08x%08llx", (unsigned)h->rid_prefix,
             (unsigned long long)(n & 0xffffffffu));
}

/* Keeps the request's Origin when it is allowed, so that the answer carries CORS headers. The
 * value is echoed in a header: anything but printable ASCII without spaces is never allowed. */
static void match_origin(const cairn_http *h, struct MHD_Connection *c, request *rq)
{
    const char *o = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    if (!o || (!h->any_origin && h->n_origins == 0)) return;
    size_t n = strlen(o);
    if (n == 0 || n >= sizeof rq->origin) return;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)o[i] <= 0x20 || (unsigned char)o[i] >= 0x7f) return;
    bool ok = h->any_origin && (!strncmp(o, "http://", 7) || !strncmp(o, "https://", 8));
    for (int i = 0; !ok && i < h->n_origins; i++) ok = strcasecmp(h->origins[i], o) == 0;
    if (ok) memcpy(rq->origin, o, n + 1);
}

/*
 * OPTIONS: a CORS preflight (Origin and Access-Control-Request-Method) from an allowed origin
 * gets 204 with what the path allows; from another origin 403 without CORS headers, so the
 * browser refuses the call. A plain OPTIONS gets 204 with Allow.
 */
static enum MHD_Result answer_options(cairn_http *h, struct MHD_Connection *c, request *rq,
                                      const char *url)
{
    char methods[96] = "";
    size_t used = 0;
    for (int i = 0; i < h->n_routes; i++) {
        if (!path_matches(&h->routes[i], url) || strstr(methods, h->routes[i].method)) continue;
        int k = snprintf(methods + used, sizeof methods - used, "%s, ", h->routes[i].method);
        if (k > 0 && (size_t)k < sizeof methods - used) used += (size_t)k;
    }
    if (!used) return queue_error(c, rq, 404, "no such endpoint: %s", url);
    snprintf(methods + used, sizeof methods - used, "OPTIONS");
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    const char *want =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Access-Control-Request-Method");
    if (origin && want && !rq->origin[0]) {
        char o[128];
        snprintf(o, sizeof o, "%s", origin);
        return queue_error(c, rq, 403, "origin %s may not call this server (http.cors_origins)",
                           o);
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    add_headers(r, rq, NULL);
    MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, methods);
    if (origin && want) {
        MHD_add_response_header(r, "Access-Control-Allow-Methods", methods);
        MHD_add_response_header(r, "Access-Control-Allow-Headers",
                                "Authorization, Content-Type, X-Request-Id");
        MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    }
    rq->status = 204;
    enum MHD_Result ok = MHD_queue_response(c, 204, r);
    MHD_destroy_response(r);
    return ok;
}

/* ---- libmicrohttpd callbacks -------------------------------------------------------- */

static size_t body_limit(const cairn_http *h, const request *rq)
{
    return rq->rt && rq->rt->max_body ? rq->rt->max_body : h->p.max_body;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    cairn_http *h = cls;
    request *rq = *con_cls;

    if (!rq) {
        rq = calloc(1, sizeof *rq);
        if (!rq) return MHD_NO;
        rq->t0_ns = cairn_now_ns();
        *con_cls = rq;
        cairn_gauge_inc(h->inflight);
        atomic_fetch_add(&h->active, 1);
        snprintf(rq->method, sizeof rq->method, "%s", method);
        set_request_id(h, c, rq);
        match_origin(h, c, rq);
        rq->rt = find_route(h, method, url, &rq->route_name);
        if (!strcmp(method, "OPTIONS") && !rq->rt) return answer_options(h, c, rq, url);
        int drain_s = atomic_load(&h->drain_retry_s);
        if (drain_s > 0 && rq->rt && !(!strcmp(method, "GET") && (!strcmp(url, "/health") ||
                                                                   !strcmp(url, "/metrics")))) {
            cairn_http_resp resp = {0};
            cairn_http_json_error(&resp, 503, "this server is shutting down; retry on another "
                                              "replica");
            resp.retry_after_s = drain_s;
            static const char *const close_hdr[] = {"Connection", "close", NULL};
            resp.headers = close_hdr;
            return queue(c, rq, &resp);
        }
        if (!rq->rt)
            return strcmp(rq->route_name, "other")
                       ? queue_error(c, rq, 405, "method %s is not allowed on this path", method)
                       : queue_error(c, rq, 404, "no such endpoint: %s", url);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > body_limit(h, rq)) {
            char detail[64];
            snprintf(detail, sizeof detail, "%zu", body_limit(h, rq));
            return queue_error(c, rq, 413, "request body exceeds the limit of %s bytes", detail);
        }
        return MHD_YES;
    }

    if (rq->async) return async_progress(c, rq); /* resumed: the answer may be ready */

    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (rq->too_large) return MHD_YES;
        if (n > body_limit(h, rq) - rq->len) {
            rq->too_large = 1; /* chunked upload past the limit: drain, answer 413 at the end */
            free(rq->body);
            rq->body = NULL;
            rq->len = rq->cap = 0;
            return MHD_YES;
        }
        if (rq->len + n + 1 > rq->cap) {
            size_t cap = rq->cap ? rq->cap : 4096;
            while (cap < rq->len + n + 1) cap *= 2;
            char *b = realloc(rq->body, cap);
            if (!b) return MHD_NO;
            rq->body = b;
            rq->cap = cap;
        }
        memcpy(rq->body + rq->len, upload_data, n);
        rq->len += n;
        rq->body[rq->len] = '\0';
        return MHD_YES;
    }

    if (rq->too_large) {
        char detail[64];
        snprintf(detail, sizeof detail, "%zu", body_limit(h, rq));
        return queue_error(c, rq, 413, "request body exceeds the limit of %s bytes", detail);
    }
    cairn_http_req req = {
        .method = method,
        .path = url,
        .request_id = rq->rid,
        .body = rq->body ? rq->body : "",
        .body_len = rq->len,
        .conn = c,
        .priv = rq,
    };
    cairn_http_resp resp = {.status = 200, .content_type = "application/json"};
    rq->rt->fn(rq->rt->ctx, &req, &resp);
    if (rq->async) {
        free(resp.body);
        return async_progress(c, rq);
    }
    return queue(c, rq, &resp);
}

static const char *end_name(enum MHD_RequestTerminationCode toe)
{
    switch (toe) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK: return "ok";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT: return "client_abort";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return "timeout";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return "shutdown";
    default: return "error";
    }
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    cairn_http *h = cls;
    request *rq = *con_cls;
    if (!rq) return;
    double secs = (double)(cairn_now_ns() - rq->t0_ns) / 1e9;
    if (h->requests) {
        const char *rname = rq->route_name ? rq->route_name : "other";
        char code[8];
        snprintf(code, sizeof code, "%d", rq->status ? rq->status : 0);
        cairn_counter_inc(cairn_counter_child(h->requests, CAIRN_LABELS(rname, code)));
        cairn_histogram_observe(cairn_histogram_child(h->duration, CAIRN_LABELS(rname)), secs);
    }
    cairn_gauge_dec(h->inflight);
    atomic_fetch_sub(&h->active, 1);
    size_t bytes = rq->bytes_out;
    if (rq->async) {
        pthread_mutex_lock(&rq->async->mu);
        rq->async->gone = true;
        bytes += rq->async->sent;
        pthread_mutex_unlock(&rq->async->mu);
        async_unref(rq->async);
    }
    if (h->p.access_log && cairn_log_enabled(CAIRN_LOG_LEVEL_INFO))
        cairn_log_write(CAIRN_LOG_LEVEL_INFO, "access", "request",
                        " method=%s route=%s status=%d bytes=%zu bytes_in=%zu duration_ms=%.3f"
                        " id=%s key=%s end=%s",
                        rq->method, rq->route_name ? rq->route_name : "other", rq->status, bytes,
                        rq->len, secs * 1e3, rq->rid, rq->key_id[0] ? rq->key_id : "-",
                        end_name(toe));
    free(rq->body);
    free(rq);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    CAIRN_LOG_WARN("libmicrohttpd", "detail=%s", msg);
}

/* ---- Lifecycle ---------------------------------------------------------------------- */

cairn_http_params cairn_http_default_params(void)
{
    return (cairn_http_params){
        .host = "0.0.0.0",
        .port = 8080,
        .threads = 4,
        .max_body = 1u << 20,
        .max_connections = 1024,
        .timeout_s = 60,
        .access_log = true,
    };
}

/*
 * Parses cors_origins: "*", or comma-separated origins "scheme://host[:port]" (RFC 6454's
 * serialisation, as browsers send it: no path, no trailing slash), spaces around commas allowed.
 */
static int parse_origins(cairn_http *h, const char *list, cairn_error *err)
{
    if (!list) return CAIRN_OK;
    const char *s = list;
    while (*s) {
        while (*s == ' ' || *s == ',') s++;
        if (!*s) break;
        size_t n = strcspn(s, ", ");
        if (n == 1 && *s == '*') {
            h->any_origin = true;
        } else {
            size_t skip = (n > 7 && !strncmp(s, "http://", 7))    ? 7
                          : (n > 8 && !strncmp(s, "https://", 8)) ? 8
                                                                  : 0;
            if (!skip || memchr(s + skip, '/', n - skip) || n >= ORIGIN_MAX)
                return cairn_errorf(err, CAIRN_EINVAL,
                                    "http.cors_origins: '%.*s' is not an origin like "
                                    "https://example.com or http://localhost:3000 (or *)",
                                    (int)(n < 100 ? n : 100), s);
            if (h->n_origins == MAX_ORIGINS)
                return cairn_errorf(err, CAIRN_ELIMIT, "http.cors_origins: more than %d origins",
                                    MAX_ORIGINS);
            h->origins[h->n_origins] = strndup(s, n);
            if (!h->origins[h->n_origins]) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
            h->n_origins++;
        }
        s += n;
    }
    return CAIRN_OK;
}

int cairn_http_new(cairn_http **out, const cairn_http_params *p, cairn_metrics *metrics,
                   cairn_error *err)
{
    *out = NULL;
    if (p->port < 0 || p->port > 65535)
        return cairn_errorf(err, CAIRN_ERANGE, "port %d is outside 0..65535", p->port);
    if (p->threads < 1)
        return cairn_errorf(err, CAIRN_ERANGE, "http threads must be >= 1 (got %d)", p->threads);
    if ((p->tls_cert_pem == NULL) != (p->tls_key_pem == NULL))
        return cairn_errorf(err, CAIRN_EINVAL, "HTTPS needs both a certificate and a key");
    cairn_http *h = calloc(1, sizeof *h);
    if (!h) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    h->p = *p;
    h->p.cors_origins = NULL; /* parsed into h->origins below; the string is not kept */
    int orc = parse_origins(h, p->cors_origins, err);
    if (orc) {
        cairn_http_free(h);
        return orc;
    }
    if (getrandom(&h->rid_prefix, sizeof h->rid_prefix, GRND_NONBLOCK) != sizeof h->rid_prefix)
        h->rid_prefix = (uint32_t)cairn_now_ns() ^ (uint32_t)(uintptr_t)h;
    atomic_init(&h->rid_next, 1);
    if (metrics) {
        static const double buckets[] = {0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30};
        static const char *const req_labels[] = {"route", "code"};
        static const char *const dur_labels[] = {"route"};
        /* Labels are route patterns, never raw paths, so the series stay few. */
        int rc = cairn_counter_family_new(metrics, &h->requests, "cairn_http_requests_total",
                                          "HTTP requests answered, by route and status code",
                                          req_labels, 2, 0, err);
        if (!rc)
            rc = cairn_histogram_family_new(metrics, &h->duration,
                                            "cairn_http_request_duration_seconds",
                                            "Time from request start to completion, by route",
                                            dur_labels, 1, 0, buckets,
                                            sizeof buckets / sizeof buckets[0], err);
        if (!rc)
            rc = cairn_gauge_new(metrics, &h->inflight, "cairn_http_requests_in_flight",
                                 "HTTP requests being processed", err);
        if (rc) {
            cairn_http_free(h);
            return rc;
        }
    }
    *out = h;
    return CAIRN_OK;
}

int cairn_http_start(cairn_http *h, cairn_error *err)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, h->p.host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)h->p.port);
    } else if (inet_pton(AF_INET6, h->p.host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)h->p.port);
        flags |= MHD_USE_IPv6;
    } else {
        return cairn_errorf(err, CAIRN_EINVAL,
                            "host '%s' is not a numeric IPv4 or IPv6 address", h->p.host);
    }
    if (h->p.tls_cert_pem) flags |= MHD_USE_TLS;

    struct MHD_OptionItem tls[] = {
        {MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)h->p.tls_cert_pem},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)h->p.tls_key_pem},
        {MHD_OPTION_END, 0, NULL},
    };
    struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    h->mhd = MHD_start_daemon(
        flags, (uint16_t)h->p.port, NULL, NULL, on_request, h,                       /* */
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h, /* first, so that it sees every message */
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,                               /* */
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)h->p.threads,                        /* */
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)h->p.max_connections,                /* */
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)h->p.timeout_s,                    /* */
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,                               /* */
        MHD_OPTION_ARRAY, h->p.tls_cert_pem ? tls : none,                           /* */
        MHD_OPTION_END);
    if (!h->mhd)
        return cairn_errorf(err, CAIRN_EIO,
                            "cannot listen on %s:%d (address in use, permission, or TLS setup; "
                            "see the log line above)",
                            h->p.host, h->p.port);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : h->p.port;
    return CAIRN_OK;
}

int cairn_http_port(const cairn_http *h) { return h ? h->port : 0; }

void cairn_http_drain(cairn_http *h, int retry_after_s)
{
    if (h) atomic_store(&h->drain_retry_s, retry_after_s > 0 ? retry_after_s : 1);
}

long cairn_http_active(cairn_http *h) { return h ? atomic_load(&h->active) : 0; }

void cairn_http_free(cairn_http *h)
{
    if (!h) return;
    if (h->mhd) MHD_stop_daemon(h->mhd);
    for (int i = 0; i < h->n_origins; i++) free(h->origins[i]);
    free(h);
}
