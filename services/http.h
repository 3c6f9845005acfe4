/*
 * services/http.h — cairnd's HTTP layer on libmicrohttpd.
 *
 * One daemon with an epoll loop and an internal thread pool. HTTP threads parse,
 * validate and answer or enqueue; they never run model compute. A route table maps
 * (method, path) to a handler; the layer collects the body (bounded: 413 past the
 * limit), answers unknown paths with 404 and wrong methods with 405, renders errors
 * in the API's JSON shape and counts every request in the metrics registry.
 *
 * For browsers and operators, every answer (errors and streams too) carries an X-Request-Id:
 * the request's own when it sent a valid one (1..64 characters of A-Z a-z 0-9 . _ : -), else
 * one made here. Cross-origin calls are allowed from the configured origins only (CORS): a
 * preflight OPTIONS from one of them gets 204 with the Access-Control-* headers, from any other
 * origin 403 without them, and answers to an allowed origin carry Access-Control-Allow-Origin.
 * When the request completes, one access-log line records it (method, route pattern, status,
 * bytes, duration, request id, key id — never the key itself).
 */
#ifndef CAIRN_SERVICES_HTTP_H
#define CAIRN_SERVICES_HTTP_H

#include "common/error.h"
#include "common/metrics.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct cairn_http cairn_http;

/* What a handler sees of a request. Valid only during the handler call. */
typedef struct cairn_http_req {
    const char *method;     /* "GET", "POST", ... */
    const char *path;       /* URL path without the query string */
    const char *request_id; /* the X-Request-Id this request is answered with */
    const char *body;   /* NUL-terminated body (may contain NULs; use body_len), "" when none */
    size_t body_len;
    void *conn; /* the libmicrohttpd connection, for header and argument lookups */
    void *priv; /* the HTTP layer's request state (cairn_http_defer) */
} cairn_http_req;

/* What a handler fills in. body is malloc'ed and handed over to the HTTP layer. */
typedef struct cairn_http_resp {
    int status;
    const char *content_type; /* static string; default application/json */
    char *body;               /* owned by the response once set; may be NULL */
    size_t body_len;
    int retry_after_s; /* > 0: adds Retry-After (429, 503) */
    /* More headers: NULL, or name, value, name, value, ..., NULL; the strings must outlive the
     * request (static strings: they are read when the answer is queued, maybe later). */
    const char *const *headers;
} cairn_http_resp;

typedef void (*cairn_http_handler)(void *ctx, const cairn_http_req *req, cairn_http_resp *resp);

typedef struct cairn_http_params {
    const char *host;    /* address to bind, e.g. "0.0.0.0", "127.0.0.1", "::1" */
    int port;            /* 0 picks a free port; see cairn_http_port() */
    int threads;         /* HTTP threads in the pool */
    size_t max_body;     /* bytes; larger bodies get 413 */
    int max_connections; /* beyond this, new connections are refused */
    int timeout_s;       /* idle connection timeout */
    const char *tls_cert_pem; /* both set: HTTPS; PEM text, not paths */
    const char *tls_key_pem;
    /* Origins browsers may call from (CORS): comma-separated "scheme://host[:port]" entries,
     * or "*" for any. NULL or "": none (cross-origin calls get no CORS headers). */
    const char *cors_origins;
    bool access_log; /* one info line per completed request (default true) */
} cairn_http_params;

cairn_http_params cairn_http_default_params(void);

/*
 * Creates the server (not yet listening). metrics may be NULL (no request metrics).
 * Returns 0 or a negative CAIRN_E* code with the detail in err. Caller owns *out.
 */
int cairn_http_new(cairn_http **out, const cairn_http_params *p, cairn_metrics *metrics,
                   cairn_error *err);

/* Adds a route; call before cairn_http_start. path matches exactly, or by prefix when it ends
 * in '*'; routes are tried in the order they were added. Returns 0, or CAIRN_ELIMIT when the
 * table is full. */
int cairn_http_route(cairn_http *h, const char *method, const char *path,
                     cairn_http_handler fn, void *ctx);

/* As cairn_http_route, with the route's own body limit (413 above) instead of the server's
 * max_body: uploads take more than JSON requests should. max_body 0 keeps the server's. */
int cairn_http_route_limit(cairn_http *h, const char *method, const char *path,
                           cairn_http_handler fn, void *ctx, size_t max_body);

/* Binds and starts serving. Returns 0 or CAIRN_EIO (address in use, bad host, TLS error). */
int cairn_http_start(cairn_http *h, cairn_error *err);

/* The port actually bound (useful after port 0); 0 before start. */
int cairn_http_port(const cairn_http *h);

/* Graceful stop, step one: from now on every new request except GET /health and GET /metrics
 * is answered 503 with Retry-After: retry_after_s and "Connection: close" (a load balancer
 * retries it on another replica); requests already begun go on. Thread-safe. */
void cairn_http_drain(cairn_http *h, int retry_after_s);

/* Requests begun and not yet completed (streams included). Thread-safe. */
long cairn_http_active(cairn_http *h);

/* Stops accepting, finishes in-flight requests, frees everything. NULL is a no-op. */
void cairn_http_free(cairn_http *h);

/*
 * Response helpers for handlers. cairn_http_json_error fills the API's error shape
 * {"error": {"code": N, "message": "...", "type": "..."}}; type is derived from status.
 */
void cairn_http_set_text(cairn_http_resp *resp, int status, const char *content_type,
                         const char *text);
void cairn_http_json_error(cairn_http_resp *resp, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The value of request header name (case-insensitive), or NULL. During the handler call only. */
const char *cairn_http_header(const cairn_http_req *req, const char *name);

/* The value of query argument name (URL-decoded), or NULL. During the handler call only. */
const char *cairn_http_query(const cairn_http_req *req, const char *name);

/* Calls fn for each query argument in order (value NULL for a bare "?name") until fn returns
 * non-zero, which is returned; 0 when every argument was seen. During the handler call only. */
int cairn_http_query_each(const cairn_http_req *req,
                          int (*fn)(void *ctx, const char *name, const char *value), void *ctx);

/* Records who the request authenticated as, for the access log: a key's identifier (never the
 * key), a device id. Copied (at most 47 bytes). During the handler call only. */
void cairn_http_set_key_id(const cairn_http_req *req, const char *key_id);

/* ---- Deferred answers and streams ------------------------------------------------------
 * A handler that cannot answer at once (generation) calls cairn_http_defer() and returns; the
 * connection is suspended (no HTTP thread waits) until another thread answers through the
 * handle: either once with cairn_http_async_respond(), or with a stream
 * (cairn_http_async_stream_begin(), any number of cairn_http_async_write(), then
 * cairn_http_async_end()). Each such call that finishes the answer (respond, end) also gives
 * the producer's reference up: the handle must not be used after it. When the client goes
 * away, writes fail with CAIRN_ECANCELED and cairn_http_async_gone() turns true; the producer
 * should stop work and end. Every deferred request must be finished before cairn_http_free.
 * All async functions are thread-safe. */
typedef struct cairn_http_async cairn_http_async;

/* Takes the request over; resp is then ignored. Returns the handle, or NULL when out of memory
 * (the handler should then answer normally, e.g. 503). Call at most once per request. */
cairn_http_async *cairn_http_defer(const cairn_http_req *req, cairn_http_resp *resp);

/* Answers with resp (its body is taken over) and releases the handle. */
void cairn_http_async_respond(cairn_http_async *a, cairn_http_resp *resp);

/* Starts a 200 streamed (chunked) response with content_type (a static string); idempotent. */
void cairn_http_async_stream_begin(cairn_http_async *a, const char *content_type);

/* Appends bytes to the stream. Returns 0, CAIRN_ECANCELED (the client went away) or
 * CAIRN_ENOMEM. */
int cairn_http_async_write(cairn_http_async *a, const char *data, size_t len);

/* Ends the stream (after what was written is sent) and releases the handle. */
void cairn_http_async_end(cairn_http_async *a);

/* Whether the client has gone: the connection closed or failed, or, while the connection waits
 * for the answer, the client closed its end (checked with a non-blocking poll on each call, so
 * a producer that calls this per token stops soon after a client gives up). */
bool cairn_http_async_gone(cairn_http_async *a);

#endif
