/*
 * services/edge_api.h — cairnd's edge endpoints (DESIGN "Edge protocol"): device enrollment,
 * sample uploads, model and update-bundle downloads, and the cloud half of CEMA behind them.
 *
 *   POST /v1/edge/devices                       RegisterRequest (protobuf) with the enrollment
 *                                               token → RegisterResponse: device id + key. Only
 *                                               the key's SHA-256 is stored.
 *   POST /v1/edge/samples                       SampleBatch (protobuf), "Authorization: Bearer
 *                                               <device key>", "Content-Type:
 *                                               application/x-protobuf". 200 {"accepted": n};
 *                                               400 with the reason (malformed, shape, NaN, too
 *                                               many samples), 401, 413 (bytes), 429 + Retry-After
 *                                               (per-device sample rate, token bucket).
 *   GET  /v1/edge/models/{name}                 the base model's GGUF bytes (device auth).
 *   GET  /v1/edge/models/{name}/bundle?after=N  the latest signed bundle when its version > N,
 *                                               else 204 (device auth).
 *   GET  /v1/edge/fleet                         for operators (the /v1 API keys, not a device's):
 *                                               JSON with the devices and what each uploaded,
 *                                               the bundles published, and recent adaptation
 *                                               steps and uploads over time.
 *
 * HTTP threads only decode, validate and queue samples (cairn_cema_cloud_add_batch copies them);
 * adaptation steps and bundle signing run on the API's own thread, which steps while uploads are
 * pending and publishes a bundle after every bundle_every steps and whenever the queue drains.
 * With min_steps_per_bundle S, a bundle published because the queue drained carries at least S
 * steps: the thread tops up with steps on the replay buffer alone (cairn_cema_cloud_replay_step),
 * so that an update costs the cloud the same whether devices upload a budget or everything.
 *
 * Metrics (into the registry given at open): cairn_edge_devices, cairn_edge_samples_accepted_total,
 * cairn_edge_rejected_total{reason}, cairn_edge_bytes_up_total, cairn_edge_bytes_down_total,
 * cairn_edge_bundles_published_total, cairn_cema_steps_total, cairn_cema_pending.
 */
#ifndef CAIRN_SERVICES_EDGE_API_H
#define CAIRN_SERVICES_EDGE_API_H

#include <stddef.h>
#include <stdint.h>

#include "adapt/cema.h"
#include "common/error.h"
#include "common/metrics.h"
#include "services/http.h"

typedef struct cairn_edge_api_params {
    const char *edge_model_path;       /* the base model devices run (required) */
    const char *foundation_model_path; /* the cloud teacher (required) */
    const char *signing_key_path;      /* Ed25519 private key PEM; NULL: a fresh key per process
                                          (devices must then pin cairn_edge_api_public_key) */
    const char *enrollment_token;      /* required to enroll; NULL or "": enrollment refused */
    int max_devices;                   /* enrolled devices at most (default 1024) */
    size_t max_upload_bytes;           /* one SampleBatch body (default 4 MiB; 413 above) */
    int max_upload_samples;            /* samples per SampleBatch (default 256; 400 above) */
    double rate_samples_per_s;         /* per device, sustained (default 200) */
    double rate_burst;                 /* per device, bucket size in samples (default 2048) */
    int bundle_every;                  /* publish after this many steps at most (default 8) */
    int min_steps_per_bundle;          /* at least this many steps in a bundle, topped up with
                                          replay-only steps (0..bundle_every; default 0: off) */
    int adapt_normal_priority;         /* 1: the adaptation thread keeps the process's priority;
                                          0 (default): SCHED_IDLE, so that it never delays
                                          serving. `cairn adapt eval` sets 1: it serves nothing
                                          else, and on a busy machine SCHED_IDLE starves it */
    const char *api_keys;              /* GET /v1/edge/fleet: as cairn_api_auth_new (NULL and */
    const char *api_key_hashes;        /* no hashes: open, like the rest of /v1) */
    cairn_cema_params cema;            /* cloud adaptation (cairn_cema_default_params()) */
} cairn_edge_api_params;

cairn_edge_api_params cairn_edge_api_default_params(void);

typedef struct cairn_edge_api cairn_edge_api;

/*
 * Loads the models and the key, registers the metrics in m (may be NULL: no metrics) and starts
 * the adaptation thread. The caller owns *out (cairn_edge_api_close). Returns 0, CAIRN_EINVAL
 * (params), a model or key load error, or CAIRN_ENOMEM.
 */
int cairn_edge_api_open(cairn_edge_api **out, const cairn_edge_api_params *p, cairn_metrics *m,
                        cairn_error *err);

/* Registers the five routes on h (before cairn_http_start). Returns 0 or CAIRN_ELIMIT. The API
 * must outlive h's serving (free h before closing the API). */
int cairn_edge_api_routes(cairn_edge_api *a, cairn_http *h);

/* Stops the adaptation thread (a step in progress finishes) and frees everything. NULL is a
 * no-op. Call after the HTTP server that routes to it has been freed. */
void cairn_edge_api_close(cairn_edge_api *a);

/* The public half of the signing key as PEM, malloc'ed NUL-terminated (caller frees): what
 * devices pin. Returns 0 or CAIRN_ENOMEM. Thread-safe. */
int cairn_edge_api_public_key(cairn_edge_api *a, char **pem, cairn_error *err);

/*
 * Waits until every accepted sample has gone through an adaptation step and the latest bundle
 * includes all steps taken, at most timeout_ms. Returns 0 or CAIRN_ETIMEDOUT. For tests and
 * `cairn adapt eval`; thread-safe.
 */
int cairn_edge_api_wait_idle(cairn_edge_api *a, int timeout_ms);

/* Counters for tests and benchmarks. Thread-safe. */
typedef struct cairn_edge_api_stats {
    uint64_t devices;
    uint64_t samples_accepted;
    uint64_t rejected; /* uploads refused, any reason */
    uint64_t bytes_up, bytes_down;
    uint64_t steps;
    uint64_t bundles; /* published; the latest version equals this count */
} cairn_edge_api_stats;
void cairn_edge_api_get_stats(cairn_edge_api *a, cairn_edge_api_stats *out);

#endif
