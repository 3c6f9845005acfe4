/*
 * clients/edge/cairn_edge.h — libcairn_edge, the device side of cairn's cloud–edge adaptation.
 *
 * What a device does with it:
 *
 *   cairn_edge_transport t;                       // how to reach cairnd (libcurl, or your own)
 *   cairn_edge_transport_curl_new(&t, "https://cloud:8080", device_key, 10000, &err);
 *   cairn_edge_params p = cairn_edge_default_params();
 *   p.model_name = "edge"; p.device_id = device_id;
 *   p.public_key_pem = pinned_cloud_key_pem;      // bundles must be signed by this key
 *   cairn_edge *e;
 *   cairn_edge_open(&e, "edge.gguf", &p, &t, &err);
 *   for (each batch of camera frames) {
 *       cairn_edge_process(e, images, n, probs, entropies, NULL, &err); // infer, select, queue
 *       ... use probs ...
 *   }
 *   if (cairn_edge_update(e, &err) == 1) { ... new parameters in use ... }  // now and then
 *   cairn_edge_close(e);
 *
 * Inference: the model is a GGUF file written by adapt/nn (cairn.cnn architecture); images are
 * NCHW float32 in [0, 1]. Batchnorms normalise with their running statistics, or, with
 * params.batch_stats, with the statistics of each inference batch (test-time normalisation, as
 * in Tent and CEMA's edge models: it follows a shifted input distribution at once, but needs
 * batches of a few dozen images from one environment; bundles then adapt only the affine
 * parameters on top of it).
 *
 * Selection: CEMA's filter (adapt/cema_select.h): a sample is uploaded only when its entropy is
 * below a dynamic threshold (lambda x the running mean entropy), optionally above E_min and above
 * lambda_min x the running mean entropy (0.2: uncertainty sampling, for a strong teacher), and its
 * prediction is not redundant with the average of those already uploaded; with an upload budget
 * (select.upload_fraction q, since edge SDK 0.3.0), at most q of each cairn_edge_infer batch,
 * its most uncertain samples that pass those rules (or, with select.upload_power beta > 0,
 * since edge SDK 0.4.0, a draw with probability proportional to entropy^beta).
 *
 * Upload: asynchronous. Selected samples go to a bounded queue; a background thread sends them
 * as protobuf SampleBatch messages (proto/edge.proto) with POST /v1/edge/samples through the
 * transport, retrying network errors, 429 and 5xx with jittered exponential backoff (delay =
 * min(backoff_max, backoff_base * 2^attempt) * U[0.5, 1)). Other 4xx answers drop the batch.
 * When the queue is full, the OLDEST queued sample is dropped to make room (counted in
 * cairn_edge_stats.dropped_full): fresh samples describe the current environment best.
 * Inference never waits for the network.
 *
 * Updates: GET /v1/edge/models/{name}/bundle?after=N returns an Ed25519-signed bundle of new
 * batchnorm parameters (adapt/bundle.h) or 204/404 when there is nothing newer. A bundle is
 * applied only when its signature verifies with the pinned key, its base-model SHA-256 equals
 * that of the GGUF file the device opened, its version is newer than the one running, and every
 * tensor matches the model by name and shape; the swap is atomic (inference sees the old or the
 * new parameters, never a mix). After the swap a probe forward pass must give finite outputs,
 * otherwise the previous parameters are restored at once. cairn_edge_rollback restores them on
 * demand (one level) and refuses that version from then on.
 *
 * Dependencies: common/, proto/ (GGUF, edge messages), the forward half of adapt/nn, OpenSSL
 * (libcrypto), protobuf-c, and libcurl only for the curl transport (optional: a device without
 * it supplies its own transport, below). No BLAS, FAISS, CUDA, libmicrohttpd or hiredis.
 *
 * Installed (cmake --install, make install-edge; docs/EDGE.md): libcairn_edge.a and .so, this
 * header as <cairn_edge.h> and cairn-edge.pc. The installed copy is generated from this file with
 * the two includes below replaced by what they declare (common/error.h whole, and the
 * cairn_cema_select_params part of adapt/cema_select.h), so that it includes nothing from cairn's
 * tree; every function it declares, and only those, is exported by libcairn_edge.so.
 *
 * Memory: what persists is allocated by cairn_edge_open (and the upload thread as it starts),
 * sized by the params (max_batch above all, then queue_capacity and upload_batch) and the model;
 * inference allocates nothing (cairn_edge_process only a keep array for more than 256 images
 * when keep is NULL), an upload its encoded request and the transport's buffers, an update the
 * bundle it receives (at most 16 MiB with the curl transport) and the rollback snapshot.
 * docs/BENCHMARKS.md ("Edge SDK footprint") measures the peak and what bounds it.
 *
 * Errors: functions return 0 (or a count) on success, a negative CAIRN_E* code (common/error.h)
 * on failure, with the detail in err when it is not NULL.
 * Threads: every function may be called from any thread, except that cairn_edge_close must not
 * race with any other call on the same handle.
 */
#ifndef CAIRN_CLIENTS_EDGE_H
#define CAIRN_CLIENTS_EDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The installed header inlines these two (clients/edge/gen_header.cmake). */
#include "common/error.h"
#include "adapt/cema_select.h"

/* The SDK's version (the installed library's SONAME carries the major). */
#define CAIRN_EDGE_VERSION_MAJOR 0
#define CAIRN_EDGE_VERSION_MINOR 4
#define CAIRN_EDGE_VERSION_PATCH 0

/* ---- Transport -------------------------------------------------------------------------- */

/*
 * The transport interface: how the SDK reaches the cloud. The SDK never opens a socket itself;
 * it calls these functions, so a device may use libcurl (cairn_edge_transport_curl_new), its own
 * HTTP stack, a TLS library of its choice, or a test double. docs/EDGE.md walks through a minimal
 * implementation over plain POSIX sockets (clients/edge/examples/transport_socket.c).
 *
 * The SDK makes exactly two kinds of request, both HTTP/1.x to the cairnd the device belongs to:
 *
 *   post(ctx, "/v1/edge/samples", body, len, &status, err)
 *        A SampleBatch (protobuf) upload. The request must carry "Content-Type:
 *        application/x-protobuf" and "Authorization: Bearer <device key>" (the transport owns
 *        the key). The answer's body is not needed: the transport reads and discards it.
 *   get(ctx, "/v1/edge/models/<name>/bundle?after=<N>", &body, &len, &status, err)
 *        An update bundle. Same Authorization header. When the status is 200 the transport
 *        hands back the whole body, malloc'ed (*body, *len; the SDK frees it with free()).
 *
 * path always starts with "/" and is ready to send (no escaping needed); the transport prepends
 * its scheme, host and port. Both return 0 when the server answered, whatever the status (written
 * to *status: the SDK decides what 204, 401, 429 or 5xx mean), and a negative code when no
 * complete answer came: CAIRN_ENET (connect, send, receive, a malformed response),
 * CAIRN_ETIMEDOUT (the transport's own deadline passed), CAIRN_ELIMIT (a body larger than the
 * transport accepts), CAIRN_ENOMEM; with the detail in err (cairn_errorf fills it). The SDK
 * retries uploads that failed without an answer, with backoff.
 *
 * Threads: post is called from the SDK's upload thread, get from whichever thread calls
 * cairn_edge_update: both may run at once, so keep per-request state on the stack or guard what
 * the two share. Neither may block forever: bound every connect, send and receive. destroy is
 * called once, by cairn_edge_close (or by cairn_edge_open when it fails), after every call has
 * returned. Security: bundles are signed, so a transport needs no TLS for their integrity, but
 * the device key and the uploaded samples travel in whatever the transport provides: use TLS
 * outside a trusted network.
 */
typedef struct cairn_edge_transport {
    void *ctx; /* handed to each call */
    int (*post)(void *ctx, const char *path, const uint8_t *body, size_t len, long *status,
                cairn_error *err);
    int (*get)(void *ctx, const char *path, uint8_t **body, size_t *len, long *status,
               cairn_error *err);
    void (*destroy)(void *ctx); /* may be NULL */
} cairn_edge_transport;

/*
 * The libcurl transport: requests go to base_url + path (e.g. "http://10.0.0.2:8080"), carry
 * "Authorization: Bearer <device_key>" and Content-Type application/x-protobuf, and time out
 * after timeout_ms. Response bodies over 16 MiB are refused. Calls curl_global_init, so create it
 * before starting other threads that use curl. Returns 0, CAIRN_EINVAL or CAIRN_ENOMEM; in a
 * libcairn_edge built without libcurl, CAIRN_EUNSUPPORTED.
 */
int cairn_edge_transport_curl_new(cairn_edge_transport *out, const char *base_url,
                                  const char *device_key, long timeout_ms, cairn_error *err);

/* ---- The device handle ------------------------------------------------------------------ */

typedef struct cairn_edge_params {
    const char *model_name;     /* as the cloud names it (required; letters, digits and . _ - ~
                                   only: it goes into a URL path) */
    const char *device_id;      /* from registration (required) */
    const char *public_key_pem; /* the cloud's Ed25519 public key, PEM (required) */
    size_t public_key_len;      /* 0: strlen(public_key_pem) */
    int max_batch;              /* largest inference batch (default 32; larger ones are split) */
    int queue_capacity;         /* samples waiting for upload (default 256) */
    int upload_batch;           /* samples per upload request (default 32) */
    int max_attempts;           /* tries per upload before it is given up (default 5) */
    int backoff_base_ms;        /* default 200 */
    int backoff_max_ms;         /* default 30000 */
    int upload_u8;              /* send pixels as bytes, 4x smaller (default 1) */
    int batch_stats;            /* batchnorm with each batch's statistics (default 0: running) */
    cairn_cema_select_params select; /* default cairn_cema_select_default_params() */
    uint64_t seed;                   /* backoff jitter (default: from the clock) */
} cairn_edge_params;

cairn_edge_params cairn_edge_default_params(void);

typedef struct cairn_edge cairn_edge;

/*
 * Loads the model at model_path (and hashes the file: the base model of future bundles), loads
 * the public key, starts the upload thread. Takes over the transport: its destroy is called by
 * cairn_edge_close, or here on failure. The caller owns *out. Returns 0, CAIRN_EINVAL (params),
 * CAIRN_EFORMAT (model or key), CAIRN_EIO or CAIRN_ENOMEM.
 */
int cairn_edge_open(cairn_edge **out, const char *model_path, const cairn_edge_params *p,
                    cairn_edge_transport *t, cairn_error *err);

/* Stops the upload thread (an upload in progress finishes; queued samples are dropped: call
 * cairn_edge_flush first to send them) and frees everything. NULL is a no-op. */
void cairn_edge_close(cairn_edge *e);

/* Input shape (C, H, W) and number of classes of the model. */
void cairn_edge_input_shape(const cairn_edge *e, int *c, int *h, int *w);
int cairn_edge_classes(const cairn_edge *e);

/*
 * Runs the model on n images (n * C*H*W floats) and writes softmax probabilities (n * K) and
 * entropies in nats (n). Returns 0, CAIRN_EINVAL (n < 1), CAIRN_EFORMAT (a non-finite input).
 */
int cairn_edge_infer(cairn_edge *e, const float *images, int n, float *probs, float *entropies,
                     cairn_error *err);

/* CEMA selection over n inferred samples: keep[i] = 1 for samples worth uploading. Returns how
 * many were kept. */
int cairn_edge_select(cairn_edge *e, const float *probs, const float *entropies, int n,
                      uint8_t *keep);

/*
 * Queues n samples (their images, probabilities and entropies) for upload; never blocks on the
 * network. When keep is not NULL only samples with keep[i] are queued. Returns how many were
 * queued, or CAIRN_EINVAL.
 */
int cairn_edge_submit(cairn_edge *e, const float *images, const float *probs,
                      const float *entropies, const uint8_t *keep, int n, cairn_error *err);

/*
 * infer + select + submit. probs / entropies receive the outputs (caller-sized as for infer);
 * keep (may be NULL) receives the selection. Returns the number queued, or a negative code.
 */
int cairn_edge_process(cairn_edge *e, const float *images, int n, float *probs, float *entropies,
                       uint8_t *keep, cairn_error *err);

/* Waits until the upload queue is empty and no upload is in flight, at most timeout_ms.
 * Returns 0 or CAIRN_ETIMEDOUT. */
int cairn_edge_flush(cairn_edge *e, int timeout_ms);

/*
 * Asks the cloud for a bundle newer than the running version and applies it (rules above).
 * Returns 1 when one was applied, 0 when there was none, or a negative code: CAIRN_ENET (no
 * answer or an unexpected status), CAIRN_EAUTH / CAIRN_ERANGE / CAIRN_EFORMAT (bundle rejected;
 * the model keeps its parameters).
 */
int cairn_edge_update(cairn_edge *e, cairn_error *err);

/* Applies bundle bytes obtained some other way (same checks). Returns 0 or as above. */
int cairn_edge_apply_bundle(cairn_edge *e, const uint8_t *buf, size_t len, cairn_error *err);

/* Restores the parameters from before the last applied bundle; that bundle's version is refused
 * from then on. Returns 0 or CAIRN_ESTATE (nothing to roll back). */
int cairn_edge_rollback(cairn_edge *e, cairn_error *err);

/* The bundle version in use (0: the base model). */
uint64_t cairn_edge_version(cairn_edge *e);

typedef struct cairn_edge_stats {
    uint64_t inferred;        /* samples through cairn_edge_infer */
    uint64_t selected;        /* samples queued for upload */
    uint64_t uploaded;        /* samples the cloud accepted */
    uint64_t dropped_full;    /* oldest samples dropped because the queue was full */
    uint64_t dropped_failed;  /* samples given up after retries or a 4xx answer */
    uint64_t upload_requests; /* POSTs made, retries included */
    uint64_t upload_retries;
    uint64_t bytes_up, bytes_down;
    uint64_t bundles_applied, bundles_rejected, rollbacks;
    uint64_t version;
    int queued; /* samples waiting now */
} cairn_edge_stats;

void cairn_edge_get_stats(cairn_edge *e, cairn_edge_stats *out);

#ifdef __cplusplus
}
#endif

#endif
