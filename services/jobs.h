/*
 * services/jobs.h — the offline job queue on Redis Streams (DESIGN "Offline jobs on Redis
 * Streams"; the schema producers write is in docs/JOBS.md).
 *
 * Producers XADD {id, type, payload[, submitted_at]} to the stream (default "cairn:jobs").
 * Workers read it through the consumer group (default "cairn-workers"), one consumer per
 * handle, named host-pid-random unless given. The module knows nothing of HTTP or of what
 * a job does: the caller pulls jobs when it has offline capacity (cairn_jobs_claim), runs
 * them, and reports the outcome (cairn_jobs_complete / cairn_jobs_fail), or hands an
 * executor callback to cairn_jobs_process.
 *
 * Delivery is at least once; results are exactly once. The result hash "cairn:job:{id}"
 * is written by a Lua script that refuses to overwrite a final state (done or failed) and
 * acknowledges the entry in the same atomic step, so a crash between result and XACK, a
 * redelivery, or two workers racing on one job all end with one stored result. An entry
 * whose job already has a final state is acknowledged without running it again.
 *
 * Entries that cannot be run (missing fields, unknown type, oversized or non-UTF-8 payload,
 * more than max_deliveries deliveries) go to the dead-letter stream "cairn:jobs:dead" with
 * a reason, and are acknowledged. A handle is used by one thread at a time; distinct
 * handles (one per worker thread or process) may run in parallel.
 */
#ifndef CAIRN_SERVICES_JOBS_H
#define CAIRN_SERVICES_JOBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/metrics.h"

/* The longest job id: [A-Za-z0-9._:-]{1,64}. Submitted ids are 32 hex digits. */
#define CAIRN_JOB_ID_MAX 64

/* A job handed to a worker. The strings belong to the job; cairn_job_clear frees them. */
typedef struct cairn_job {
    char id[CAIRN_JOB_ID_MAX + 1];
    char *type;    /* NUL-terminated, one of the handle's types */
    char *payload; /* payload_len bytes of valid UTF-8, NUL-terminated */
    size_t payload_len;
    int64_t submitted_at_ms; /* wall-clock ms since the epoch; 0 when the producer left it out */
    char entry_id[48];       /* the stream entry id, "ms-seq" */
    int64_t deliveries;      /* how many times this entry was delivered, this one included */
} cairn_job;

/* Frees what the job owns and zeroes it. NULL is a no-op. */
void cairn_job_clear(cairn_job *job);

/*
 * An executor: runs job and, on success, returns 0 with a malloc'd result of *len bytes
 * in *result (the queue frees it); on failure returns a negative CAIRN_E* code with the
 * reason in err. Called on the thread that calls cairn_jobs_process.
 */
typedef int (*cairn_job_run_fn)(void *ctx, const cairn_job *job, char **result, size_t *len,
                                cairn_error *err);

/* Counters and the depth gauge of the queue, registered once per metrics registry. */
typedef struct cairn_jobs_metrics cairn_jobs_metrics;

/*
 * Registers cairn_jobs_submitted_total, cairn_jobs_completed_total,
 * cairn_jobs_dead_total{reason}, cairn_jobs_redelivered_total, cairn_jobs_duplicates_total
 * and the cairn_jobs_queue_depth gauge in r (NULL: the default registry). Returns 0 and
 * a handle to share between all queue handles of the process (free it after them with
 * cairn_jobs_metrics_free), or CAIRN_EINVAL when r already holds these names.
 */
int cairn_jobs_metrics_new(cairn_metrics *r, cairn_jobs_metrics **out, cairn_error *err);
void cairn_jobs_metrics_free(cairn_jobs_metrics *m);

typedef struct {
    const char *redis_url;       /* redis://host:port/db; default redis://127.0.0.1:6379/0 */
    const char *stream;          /* default "cairn:jobs" */
    const char *group;           /* default "cairn-workers" */
    const char *dead_stream;     /* default "cairn:jobs:dead" */
    const char *key_prefix;      /* result hashes are key_prefix + id; default "cairn:job:" */
    const char *consumer;        /* NULL: "host-pid-<random>", unique per handle */
    const char *const *types;    /* NULL-terminated accepted job types; NULL: {"summarize"} */
    size_t max_payload;          /* bytes; default 1 MiB */
    int64_t maxlen;              /* XADD MAXLEN ~ on submit; default 1000000 (0: no trimming) */
    int64_t max_queued;          /* submit answers CAIRN_EBUSY above this depth; default 100000 */
    int64_t dead_maxlen;         /* MAXLEN ~ of the dead-letter stream; default 100000 */
    int64_t claim_idle_ms;       /* XAUTOCLAIM entries idle this long; default 300000 (5 min) */
    int max_deliveries;          /* dead-letter on delivery max_deliveries+1; default 3 */
    int64_t result_ttl_s;        /* TTL of done/failed result hashes; default 604800 (7 days) */
    int reconnect_timeout_ms;    /* how long one call keeps reconnecting; default 30000 */
    int io_timeout_ms;           /* default 5000 */
    cairn_jobs_metrics *metrics; /* NULL: not counted */
} cairn_jobs_params;

cairn_jobs_params cairn_jobs_default_params(void);

typedef struct cairn_jobs cairn_jobs;

/*
 * Connects, creates the stream and group when missing (XGROUP CREATE ... 0 MKSTREAM, so
 * entries added before the group existed are read too) and arms the re-read of this
 * consumer's own pending entries. Returns 0 and a handle (cairn_jobs_close frees it),
 * CAIRN_EINVAL for bad params, CAIRN_ENET when Redis cannot be reached.
 */
int cairn_jobs_open(cairn_jobs **out, const cairn_jobs_params *p, cairn_error *err);

/*
 * Closes the connection. Jobs claimed and not yet completed stay pending in the group;
 * another consumer XAUTOCLAIMs them after claim_idle_ms. NULL is a no-op.
 */
void cairn_jobs_close(cairn_jobs *q);

/* This handle's consumer name (owned by the handle). */
const char *cairn_jobs_consumer(const cairn_jobs *q);

/*
 * Validates type (one of the handle's types) and payload (<= max_payload bytes, UTF-8),
 * writes the status hash (queued) and XADDs the job with MAXLEN ~ maxlen. id_out
 * (CAIRN_JOB_ID_MAX+1 bytes) gets the new id, 32 hex digits. Returns 0, CAIRN_EINVAL /
 * CAIRN_ELIMIT / CAIRN_EFORMAT for a bad job (message says which), CAIRN_EBUSY when the
 * queue holds more than max_queued jobs, CAIRN_ENET.
 */
int cairn_jobs_submit(cairn_jobs *q, const char *type, const char *payload, size_t len,
                      char *id_out, cairn_error *err);

/*
 * Pulls up to max jobs for this consumer; call it only with offline capacity to spare.
 * In order: this consumer's own pending entries (once after open and after every
 * reconnect), entries idle longer than claim_idle_ms (XAUTOCLAIM, from any consumer), then
 * new entries (XREADGROUP >, blocking up to timeout_ms; 0 does not block). Entries that
 * cannot run are dead-lettered and entries whose job already has a result are acknowledged;
 * neither is returned. Fills out[0..n) and returns n >= 0 (the caller clears each job),
 * or a negative code (CAIRN_ENET after reconnect_timeout_ms without Redis).
 */
int cairn_jobs_claim(cairn_jobs *q, size_t max, int timeout_ms, cairn_job *out, cairn_error *err);

/*
 * Stores the result (status done, result, worker, finished_at, TTL result_ttl_s) unless
 * the job already has a final state, and acknowledges the entry, atomically. Returns 1
 * when this call stored the result, 0 when another delivery had already (the entry is
 * acknowledged either way), or a negative code (the entry stays pending and is retried).
 */
int cairn_jobs_complete(cairn_jobs *q, const cairn_job *job, const char *result, size_t len,
                        cairn_error *err);

/*
 * Records a failed attempt. Below max_deliveries the entry stays pending (status queued,
 * last_error reason) and is retried after claim_idle_ms; at max_deliveries it moves to the
 * dead-letter stream (status failed). Returns 0 or a negative code.
 */
int cairn_jobs_fail(cairn_jobs *q, const cairn_job *job, const char *reason, cairn_error *err);

/*
 * Hands a claimed job back unfinished (graceful stop): the entry stays pending but is marked
 * idle for claim_idle_ms, so another worker's next XAUTOCLAIM takes it at once instead of
 * after claim_idle_ms; its delivery count is set back by the attempt this was. Returns 0 or
 * CAIRN_ENET.
 */
int cairn_jobs_release(cairn_jobs *q, const cairn_job *job, cairn_error *err);

/*
 * Resets the idle time of the entries this handle holds (XCLAIM ... JUSTID), so that a job
 * running longer than claim_idle_ms is not claimed by another worker. Returns 0 or < 0.
 */
int cairn_jobs_heartbeat(cairn_jobs *q, cairn_error *err);

/*
 * Claims up to max jobs (blocking up to timeout_ms for new ones), runs each through run,
 * and completes or fails it. Returns how many jobs ran (>= 0) or a negative code.
 */
int cairn_jobs_process(cairn_jobs *q, size_t max, int timeout_ms, cairn_job_run_fn run, void *ctx,
                       cairn_error *err);

/* Jobs waiting or running in the group (pending + not yet delivered); updates the gauge. */
int cairn_jobs_depth(cairn_jobs *q, int64_t *out, cairn_error *err);

typedef enum {
    CAIRN_JOB_QUEUED,
    CAIRN_JOB_RUNNING,
    CAIRN_JOB_DONE,
    CAIRN_JOB_FAILED, /* dead-lettered */
} cairn_job_state;

/* "queued", "running", "done", "failed"; static. */
const char *cairn_job_state_name(cairn_job_state s);

/*
 * The status of job id as a new JSON object string (caller frees):
 * {"id","status","type","submitted_at","started_at","finished_at","worker","attempts",
 *  "error","result"} with ISO-8601 timestamps; absent fields are left out. *state (may be
 * NULL) gets the state. Returns 0, CAIRN_ENOTFOUND (no such job, or its result expired),
 * CAIRN_EINVAL for a malformed id, CAIRN_ENET.
 */
int cairn_jobs_status_json(cairn_jobs *q, const char *id, char **json_out, cairn_job_state *state,
                           cairn_error *err);

#endif
