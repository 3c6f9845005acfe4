/*
 * services/offline.h — cairnd's offline side: runner threads that take jobs from the Redis
 * stream (services/jobs.h) when the generation workers have offline capacity to spare and run
 * them (the "summarize" type: services/summarize.h), and the HTTP endpoints
 *   POST /v1/jobs        {"type": "summarize", "payload": "<document text>"} -> 202 {"id", ...}
 *   GET  /v1/jobs/{id}   the job's status and, once done, its result (docs/JOBS.md)
 *
 * Each runner has its own queue handle (its own consumer in the group). It claims one job at a
 * time and only while the workers run fewer than max_offline offline requests, heartbeats the
 * job while it runs (so no other worker claims it), stores the result before the entry is
 * acknowledged (jobs.h), and records failures (dead-lettered after max_deliveries). On
 * shutdown a job in progress is abandoned without a result and handed back
 * (cairn_jobs_release): it stays pending, marked idle, so that another worker's next
 * XAUTOCLAIM pass takes it. Redis being down is not fatal: runners retry, and the endpoints
 * answer 503.
 *
 * Metrics (besides the queue's, jobs.h): cairn_offline_jobs_running, cairn_offline_job_seconds.
 */
#ifndef CAIRN_SERVICES_OFFLINE_H
#define CAIRN_SERVICES_OFFLINE_H

#include "common/error.h"
#include "common/metrics.h"
#include "services/http.h"
#include "services/jobs.h"
#include "services/summarize.h"
#include "services/workers.h"

typedef struct {
    cairn_jobs_params jobs;      /* redis_url, stream names, limits (metrics: set by open) */
    int runners;                 /* runner threads (default 2); 0: submit and status only */
    int max_offline;             /* claim only below this many offline requests (default 4) */
    cairn_summarize_params summarize;
    const char *api_keys;        /* as cairn_api_auth_new: the /v1 keys */
    const char *api_key_hashes;
} cairn_offline_params;

cairn_offline_params cairn_offline_default_params(void);

typedef struct cairn_offline cairn_offline;

/*
 * Starts the runners over w (which must outlive the handle). Does not need Redis yet: runners
 * connect (and reconnect) on their own. Returns 0 and *out (cairn_offline_close), or
 * CAIRN_EINVAL / CAIRN_ENOMEM / CAIRN_EIO (threads).
 */
int cairn_offline_open(cairn_offline **out, const cairn_offline_params *p, cairn_workers *w,
                       cairn_metrics *m, cairn_error *err);

/* Adds POST /v1/jobs and GET /v1/jobs/{id} to h (before cairn_http_start). 0 or an error. */
int cairn_offline_routes(cairn_offline *o, cairn_http *h);

/* Stops the runners (jobs in progress are abandoned, see above) and joins them. Call it after
 * cairn_workers_stop, which ends the generation requests they wait for at once. Idempotent. */
void cairn_offline_stop(cairn_offline *o);

/* Stops and frees. NULL is a no-op. */
void cairn_offline_close(cairn_offline *o);

#endif
