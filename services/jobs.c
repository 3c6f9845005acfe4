/*
 * services/jobs.c — the offline job queue on Redis Streams.
 *
 * Invariants:
 * - A job's final state (status done or failed in its hash) is written only by the Lua
 *   scripts below, each of which checks that no final state exists first and acknowledges
 *   the stream entry in the same atomic step. Hence exactly one result per job id, however
 *   many times (or by however many workers) its entry is delivered.
 * - Every command sent is safe to repeat after a lost reply: the scripts are idempotent by
 *   job id, XACK/XCLAIM are idempotent, and a duplicated XADD from a retried submit carries
 *   the same id, so its second entry is acknowledged without running once the first is done.
 * - An entry leaves the pending list only through those scripts (after its result or its
 *   dead letter is stored), never before; a worker that dies keeps it pending for XAUTOCLAIM.
 */
#define CAIRN_LOG_TAG "jobs"
#include "services/jobs.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/json.h"
#include "common/log.h"
#include "services/redis.h"

/* ---- Lua scripts ------------------------------------------------------------------------ */

/* KEYS: hash, stream. ARGV: type, submitted_at, maxlen ("0": none), id, payload. */
static const char LUA_SUBMIT[] =
    "redis.call('HSET', KEYS[1], 'status', 'queued', 'type', ARGV[1], 'submitted_at', ARGV[2])\n"
    "if ARGV[3] ~= '0' then\n"
    "  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[4],\n"
    "                    'type', ARGV[1], 'payload', ARGV[5], 'submitted_at', ARGV[2])\n"
    "end\n"
    "return redis.call('XADD', KEYS[2], '*', 'id', ARGV[4], 'type', ARGV[1],\n"
    "                  'payload', ARGV[5], 'submitted_at', ARGV[2])\n";

/*
 * KEYS: hash, stream. ARGV: group, entry, worker, now, deliveries, type, submitted_at.
 * Returns 0 (final state exists: entry acknowledged) or 1 (marked running).
 */
static const char LUA_START[] =
    "local s = redis.call('HGET', KEYS[1], 'status')\n"
    "if s == 'done' or s == 'failed' then\n"
    "  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])\n"
    "  return 0\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[3], 'started_at', ARGV[4],\n"
    "           'attempts', ARGV[5], 'type', ARGV[6])\n"
    "if redis.call('HEXISTS', KEYS[1], 'submitted_at') == 0 then\n"
    "  redis.call('HSET', KEYS[1], 'submitted_at', ARGV[7])\n"
    "end\n"
    "return 1\n";

/*
 * KEYS: hash, stream. ARGV: group, entry, worker, now, result, ttl.
 * Returns 1 (stored) or 0 (a final state existed); the entry is acknowledged either way.
 */
static const char LUA_COMPLETE[] =
    "local s = redis.call('HGET', KEYS[1], 'status')\n"
    "local won = 0\n"
    "if s ~= 'done' and s ~= 'failed' then\n"
    "  redis.call('HSET', KEYS[1], 'status', 'done', 'result', ARGV[5], 'worker', ARGV[3],\n"
    "             'finished_at', ARGV[4])\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[6])\n"
    "  won = 1\n"
    "end\n"
    "redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])\n"
    "return won\n";

/* KEYS: hash. ARGV: reason, now. A failed attempt that will be retried. */
static const char LUA_RETRY[] =
    "local s = redis.call('HGET', KEYS[1], 'status')\n"
    "if s == 'done' or s == 'failed' then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'status', 'queued', 'last_error', ARGV[1], 'failed_at', ARGV[2])\n"
    "return 1\n";

/*
 * KEYS: stream, dead stream[, hash]. ARGV: group, entry, reason, reason code, now, worker,
 * deliveries, dead maxlen, ttl, then field/value pairs copied from the entry.
 * Returns 1 (dead-lettered) or 0 (the job had a final state: only acknowledged).
 */
static const char LUA_DEAD[] =
    "local reason = ARGV[3]\n"
    "if #KEYS >= 3 then\n"
    "  local s = redis.call('HGET', KEYS[3], 'status')\n"
    "  if s == 'done' or s == 'failed' then\n"
    "    redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n"
    "    return 0\n"
    "  end\n"
    "  local le = redis.call('HGET', KEYS[3], 'last_error')\n"
    "  if le and ARGV[4] == 'max_deliveries' and not string.find(reason, 'last error', 1, true)\n"
    "  then reason = reason .. '; last error: ' .. le end\n"
    "end\n"
    "local f = {'source_entry', ARGV[2], 'reason', reason, 'reason_code', ARGV[4],\n"
    "           'dead_at', ARGV[5], 'worker', ARGV[6], 'deliveries', ARGV[7]}\n"
    "for i = 10, #ARGV do f[#f + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', unpack(f))\n"
    "if #KEYS >= 3 then\n"
    "  redis.call('HSET', KEYS[3], 'status', 'failed', 'error', reason, 'finished_at', ARGV[5],\n"
    "             'worker', ARGV[6], 'attempts', ARGV[7])\n"
    "  redis.call('EXPIRE', KEYS[3], ARGV[9])\n"
    "end\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n"
    "return 1\n";

/* ---- Metrics ---------------------------------------------------------------------------- */

struct cairn_jobs_metrics {
    cairn_counter *submitted, *completed, *redelivered, *duplicates;
    cairn_metric_family *dead;
    cairn_gauge *depth;
};

int cairn_jobs_metrics_new(cairn_metrics *r, cairn_jobs_metrics **out, cairn_error *err)
{
    *out = NULL;
    if (!r) r = cairn_metrics_default();
    cairn_jobs_metrics *m = calloc(1, sizeof *m);
    if (!m) return cairn_errorf(err, CAIRN_ENOMEM, "jobs metrics: out of memory");
    int rc = cairn_counter_new(r, &m->submitted, "cairn_jobs_submitted_total",
                               "Offline jobs submitted through this process.", err);
    if (!rc)
        rc = cairn_counter_new(r, &m->completed, "cairn_jobs_completed_total",
                               "Offline jobs whose result this process stored.", err);
    if (!rc)
        rc = cairn_counter_family_new(r, &m->dead, "cairn_jobs_dead_total",
                                      "Stream entries moved to the dead-letter stream, by reason.",
                                      (const char *const[]){"reason"}, 1, 32, err);
    if (!rc)
        rc = cairn_counter_new(r, &m->redelivered, "cairn_jobs_redelivered_total",
                               "Entries delivered again (own pending re-read or XAUTOCLAIM).", err);
    if (!rc)
        rc = cairn_counter_new(r, &m->duplicates, "cairn_jobs_duplicates_total",
                               "Entries acknowledged without running: the job had a result.", err);
    if (!rc)
        rc = cairn_gauge_new(r, &m->depth, "cairn_jobs_queue_depth",
                             "Jobs waiting or running in the consumer group.", err);
    if (rc) {
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void cairn_jobs_metrics_free(cairn_jobs_metrics *m)
{
    free(m);
}

/* ---- Handle ----------------------------------------------------------------------------- */

#define ENTRY_ID_MAX 48

struct cairn_jobs {
    cairn_jobs_params p;
    char *stream, *group, *dead, *prefix, *consumer;
    char **types;
    size_t n_types;
    cairn_redis *r;
    uint64_t seen_generation; /* connection generation whose own-pending scan is armed */
    bool pending_scan;        /* re-reading this consumer's pending entries */
    char pending_cursor[ENTRY_ID_MAX];
    char autoclaim_cursor[ENTRY_ID_MAX];
    int64_t next_autoclaim_ms;
    char (*inflight)[ENTRY_ID_MAX]; /* entries handed out and not yet completed or failed */
    size_t n_inflight, cap_inflight;
};

cairn_jobs_params cairn_jobs_default_params(void)
{
    return (cairn_jobs_params){
        .redis_url = "redis://127.0.0.1:6379/0",
        .stream = "cairn:jobs",
        .group = "cairn-workers",
        .dead_stream = "cairn:jobs:dead",
        .key_prefix = "cairn:job:",
        .consumer = NULL,
        .types = NULL,
        .max_payload = 1u << 20,
        .maxlen = 1000000,
        .max_queued = 100000,
        .dead_maxlen = 100000,
        .claim_idle_ms = 300000,
        .max_deliveries = 3,
        .result_ttl_s = 7 * 24 * 3600,
        .reconnect_timeout_ms = 30000,
        .io_timeout_ms = 5000,
        .metrics = NULL,
    };
}

void cairn_job_clear(cairn_job *job)
{
    if (!job) return;
    free(job->type);
    free(job->payload);
    memset(job, 0, sizeof *job);
}

const char *cairn_job_state_name(cairn_job_state s)
{
    switch (s) {
    case CAIRN_JOB_QUEUED:
        return "queued";
    case CAIRN_JOB_RUNNING:
        return "running";
    case CAIRN_JOB_DONE:
        return "done";
    case CAIRN_JOB_FAILED:
        return "failed";
    }
    return "unknown";
}

const char *cairn_jobs_consumer(const cairn_jobs *q)
{
    return q->consumer;
}

static int64_t wall_ms(void)
{
    return (int64_t)(cairn_wall_ns() / CAIRN_NS_PER_MS);
}

static bool id_valid(const char *s, size_t n)
{
    if (n == 0 || n > CAIRN_JOB_ID_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok) return false;
    }
    return true;
}

static char *hash_key(const cairn_jobs *q, const char *id, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s", q->prefix, id);
    return buf;
}

static int random_hex(char *out, size_t n_bytes, cairn_error *err)
{
    unsigned char b[32];
    if (n_bytes > sizeof b) n_bytes = sizeof b;
    size_t got = 0;
    while (got < n_bytes) {
        ssize_t k = getrandom(b + got, n_bytes - got, 0);
        if (k < 0) return cairn_errorf(err, CAIRN_EIO, "getrandom failed");
        got += (size_t)k;
    }
    for (size_t i = 0; i < n_bytes; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
    return 0;
}

static void dead_count(cairn_jobs *q, const char *code)
{
    if (q->p.metrics)
        cairn_counter_inc(cairn_counter_child(q->p.metrics->dead, CAIRN_LABELS(code)));
}

static void inflight_remove(cairn_jobs *q, const char *entry)
{
    for (size_t i = 0; i < q->n_inflight; i++) {
        if (strcmp(q->inflight[i], entry) == 0) {
            memmove(q->inflight[i], q->inflight[q->n_inflight - 1], ENTRY_ID_MAX);
            q->n_inflight--;
            return;
        }
    }
}

static bool inflight_has(const cairn_jobs *q, const char *entry)
{
    for (size_t i = 0; i < q->n_inflight; i++)
        if (strcmp(q->inflight[i], entry) == 0) return true;
    return false;
}

static int inflight_add(cairn_jobs *q, const char *entry, cairn_error *err)
{
    if (q->n_inflight == q->cap_inflight) {
        size_t cap = q->cap_inflight ? q->cap_inflight * 2 : 16;
        void *p = realloc(q->inflight, cap * ENTRY_ID_MAX);
        if (!p) return cairn_errorf(err, CAIRN_ENOMEM, "jobs: out of memory");
        q->inflight = p;
        q->cap_inflight = cap;
    }
    snprintf(q->inflight[q->n_inflight++], ENTRY_ID_MAX, "%s", entry);
    return 0;
}

/* Sends a command; an error reply becomes CAIRN_ENET with its text. */
static int cmd(cairn_jobs *q, redisReply **out, int block_ms, int argc, const char **argv,
               const size_t *lens, cairn_error *err)
{
    int rc = cairn_redis_cmd(q->r, out, block_ms, argc, argv, lens, err);
    if (rc) return rc;
    if ((*out)->type == REDIS_REPLY_ERROR) {
        rc = cairn_errorf(err, CAIRN_ENET, "redis %s: %s", argv[0], (*out)->str);
        freeReplyObject(*out);
        *out = NULL;
    }
    return rc;
}

/* Runs a script with nkeys keys, then args; *out gets the integer it returns. */
static int eval(cairn_jobs *q, const char *script, int nkeys, int argc, const char **argv,
                const size_t *lens, long long *out, cairn_error *err)
{
    const char *a[64];
    size_t l[64];
    if (argc + 3 > 64) return cairn_errorf(err, CAIRN_EINVAL, "jobs: too many script arguments");
    char nk[8];
    snprintf(nk, sizeof nk, "%d", nkeys);
    a[0] = "EVAL", l[0] = 4;
    a[1] = script, l[1] = strlen(script);
    a[2] = nk, l[2] = strlen(nk);
    for (int i = 0; i < argc; i++) {
        a[3 + i] = argv[i];
        l[3 + i] = lens ? lens[i] : strlen(argv[i]);
    }
    redisReply *rep;
    int rc = cmd(q, &rep, 0, argc + 3, a, l, err);
    if (rc) return rc;
    if (out) *out = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
    freeReplyObject(rep);
    return 0;
}

static int ensure_group(cairn_jobs *q, cairn_error *err)
{
    redisReply *rep;
    const char *a[] = {"XGROUP", "CREATE", q->stream, q->group, "0", "MKSTREAM"};
    int rc = cairn_redis_cmd(q->r, &rep, 0, 6, a, NULL, err);
    if (rc) return rc;
    if (rep->type == REDIS_REPLY_ERROR && !cairn_redis_is_error(rep, "BUSYGROUP"))
        rc = cairn_errorf(err, CAIRN_ENET, "redis XGROUP CREATE %s %s: %s", q->stream, q->group,
                          rep->str);
    freeReplyObject(rep);
    return rc;
}

static char *dup_or(const char *s, const char *def)
{
    return strdup(s ? s : def);
}

int cairn_jobs_open(cairn_jobs **out, const cairn_jobs_params *params, cairn_error *err)
{
    *out = NULL;
    cairn_jobs_params d = cairn_jobs_default_params();
    const cairn_jobs_params *p = params ? params : &d;
    if (p->max_deliveries < 1 || p->claim_idle_ms < 1 || p->result_ttl_s < 1 ||
        p->max_payload < 1 || p->maxlen < 0 || p->dead_maxlen < 1 || p->max_queued < 1)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "jobs: max_deliveries, claim_idle_ms, result_ttl_s, max_payload, "
                            "dead_maxlen and max_queued must be positive, maxlen >= 0");
    if (p->max_payload > (512u << 20))
        return cairn_errorf(err, CAIRN_EINVAL, "jobs: max_payload above Redis' 512 MiB limit");
    cairn_jobs *q = calloc(1, sizeof *q);
    if (!q) return cairn_errorf(err, CAIRN_ENOMEM, "jobs: out of memory");
    q->p = *p;
    q->stream = dup_or(p->stream, d.stream);
    q->group = dup_or(p->group, d.group);
    q->dead = dup_or(p->dead_stream, d.dead_stream);
    q->prefix = dup_or(p->key_prefix, d.key_prefix);
    static const char *const default_types[] = {"summarize", NULL};
    const char *const *types = p->types ? p->types : default_types;
    while (types[q->n_types])
        q->n_types++;
    q->types = calloc(q->n_types + 1, sizeof *q->types);
    int rc = 0;
    if (!q->stream || !q->group || !q->dead || !q->prefix || !q->types) rc = CAIRN_ENOMEM;
    for (size_t i = 0; !rc && i < q->n_types; i++)
        if (!(q->types[i] = strdup(types[i]))) rc = CAIRN_ENOMEM;
    if (!rc && p->consumer) {
        if (!(q->consumer = strdup(p->consumer))) rc = CAIRN_ENOMEM;
    } else if (!rc) {
        char host[128] = "host", rnd[9];
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = 0;
        rc = random_hex(rnd, 4, err);
        size_t cap = strlen(host) + 40;
        if (!rc && !(q->consumer = malloc(cap))) rc = CAIRN_ENOMEM;
        if (!rc) snprintf(q->consumer, cap, "%s-%ld-%s", host, (long)getpid(), rnd);
    }
    if (rc == CAIRN_ENOMEM) cairn_errorf(err, rc, "jobs: out of memory");
    if (!rc) {
        cairn_redis_params rp = cairn_redis_default_params();
        rp.reconnect_timeout_ms = p->reconnect_timeout_ms;
        rp.io_timeout_ms = p->io_timeout_ms;
        rc = cairn_redis_open(&q->r, p->redis_url ? p->redis_url : d.redis_url, &rp, err);
    }
    if (!rc) rc = ensure_group(q, err);
    if (rc) {
        cairn_jobs_close(q);
        return rc;
    }
    q->seen_generation = 0; /* arms the own-pending scan on the first claim */
    strcpy(q->autoclaim_cursor, "0-0");
    *out = q;
    return 0;
}

void cairn_jobs_close(cairn_jobs *q)
{
    if (!q) return;
    cairn_redis_close(q->r);
    for (size_t i = 0; q->types && i < q->n_types; i++)
        free(q->types[i]);
    free(q->types);
    free(q->stream);
    free(q->group);
    free(q->dead);
    free(q->prefix);
    free(q->consumer);
    free(q->inflight);
    free(q);
}

/* ---- Depth and submit ------------------------------------------------------------------- */

static const redisReply *map_get(const redisReply *m, const char *key)
{
    if (!m || m->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < m->elements; i += 2) {
        const redisReply *k = m->element[i];
        if ((k->type == REDIS_REPLY_STRING || k->type == REDIS_REPLY_STATUS) &&
            strcmp(k->str, key) == 0)
            return m->element[i + 1];
    }
    return NULL;
}

int cairn_jobs_depth(cairn_jobs *q, int64_t *out, cairn_error *err)
{
    redisReply *rep;
    const char *a[] = {"XINFO", "GROUPS", q->stream};
    cairn_error e = {0};
    int rc = cmd(q, &rep, 0, 3, a, NULL, &e);
    if (rc == CAIRN_ENET && strstr(e.msg, "no such key")) {
        *out = 0;
        return 0;
    }
    if (rc) return cairn_errorf(err, rc, "%s", e.msg);
    int64_t depth = -1;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const redisReply *name = map_get(rep->element[i], "name");
        if (!name || name->type != REDIS_REPLY_STRING || strcmp(name->str, q->group) != 0) continue;
        const redisReply *pend = map_get(rep->element[i], "pending");
        const redisReply *lag = map_get(rep->element[i], "lag");
        int64_t pending = pend && pend->type == REDIS_REPLY_INTEGER ? pend->integer : 0;
        if (lag && lag->type == REDIS_REPLY_INTEGER) depth = pending + lag->integer;
        break;
    }
    freeReplyObject(rep);
    if (depth < 0) {
        /* No lag known (deleted entries, old server): the stream length bounds it from above. */
        const char *x[] = {"XLEN", q->stream};
        rc = cmd(q, &rep, 0, 2, x, NULL, err);
        if (rc) return rc;
        depth = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
        freeReplyObject(rep);
    }
    if (q->p.metrics) cairn_gauge_set(q->p.metrics->depth, (double)depth);
    *out = depth;
    return 0;
}

static bool type_known(const cairn_jobs *q, const char *t, size_t n)
{
    for (size_t i = 0; i < q->n_types; i++)
        if (strlen(q->types[i]) == n && memcmp(q->types[i], t, n) == 0) return true;
    return false;
}

int cairn_jobs_submit(cairn_jobs *q, const char *type, const char *payload, size_t len,
                      char *id_out, cairn_error *err)
{
    if (id_out) id_out[0] = 0;
    if (!type || !type_known(q, type, strlen(type)))
        return cairn_errorf(err, CAIRN_EINVAL, "unknown job type '%.64s'", type ? type : "");
    if (!payload && len) return cairn_errorf(err, CAIRN_EINVAL, "payload: NULL");
    if (len > q->p.max_payload)
        return cairn_errorf(err, CAIRN_ELIMIT, "payload of %zu bytes exceeds the limit of %zu", len,
                            q->p.max_payload);
    if (len && (!cairn_json_utf8_valid(payload, len) || memchr(payload, 0, len)))
        return cairn_errorf(err, CAIRN_EFORMAT, "payload is not valid UTF-8 text");
    int64_t depth;
    int rc = cairn_jobs_depth(q, &depth, err);
    if (rc) return rc;
    if (depth >= q->p.max_queued)
        return cairn_errorf(err, CAIRN_EBUSY,
                            "job queue full: %" PRId64 " jobs waiting (limit %" PRId64 ")", depth,
                            q->p.max_queued);
    char id[CAIRN_JOB_ID_MAX + 1], key[256], now[24], maxlen[24];
    rc = random_hex(id, 16, err);
    if (rc) return rc;
    hash_key(q, id, key, sizeof key);
    snprintf(now, sizeof now, "%" PRId64, wall_ms());
    snprintf(maxlen, sizeof maxlen, "%" PRId64, q->p.maxlen);
    const char *a[] = {key, q->stream, type, now, maxlen, id, payload ? payload : ""};
    size_t l[] = {strlen(key),    strlen(q->stream), strlen(type), strlen(now),
                  strlen(maxlen), strlen(id),        len};
    rc = eval(q, LUA_SUBMIT, 2, 7, a, l, NULL, err);
    if (rc) return rc;
    if (q->p.metrics) cairn_counter_inc(q->p.metrics->submitted);
    if (id_out) memcpy(id_out, id, strlen(id) + 1);
    return 0;
}

/* ---- Admission of delivered entries ----------------------------------------------------- */

/* Field values of one entry; NULL when absent. */
typedef struct {
    const redisReply *id, *type, *payload, *submitted_at;
} entry_fields;

/*
 * Moves an entry to the dead-letter stream (and marks its job failed when the id is
 * valid), acknowledging it. fields may be NULL (an entry deleted from the stream).
 */
static int dead_letter(cairn_jobs *q, const char *entry, const entry_fields *f, bool id_ok,
                       const char *code, const char *reason, int64_t deliveries, cairn_error *err)
{
    char key[256], now[24], deliv[24], maxlen[24], ttl[24];
    snprintf(now, sizeof now, "%" PRId64, wall_ms());
    snprintf(deliv, sizeof deliv, "%" PRId64, deliveries);
    snprintf(maxlen, sizeof maxlen, "%" PRId64, q->p.dead_maxlen);
    snprintf(ttl, sizeof ttl, "%" PRId64, q->p.result_ttl_s);
    const char *a[24];
    size_t l[24];
    int n = 0, nkeys = 2;
#define ARG(s, len) (a[n] = (s), l[n] = (len), n++)
    ARG(q->stream, strlen(q->stream));
    ARG(q->dead, strlen(q->dead));
    if (id_ok) {
        hash_key(q, f->id->str, key, sizeof key);
        ARG(key, strlen(key));
        nkeys = 3;
    }
    ARG(q->group, strlen(q->group));
    ARG(entry, strlen(entry));
    ARG(reason, strlen(reason));
    ARG(code, strlen(code));
    ARG(now, strlen(now));
    ARG(q->consumer, strlen(q->consumer));
    ARG(deliv, strlen(deliv));
    ARG(maxlen, strlen(maxlen));
    ARG(ttl, strlen(ttl));
    if (f) {
        /* Keep what a person needs to inspect the entry, bounded in size. */
        const size_t cap = 4096;
        if (f->id) ARG("id", 2), ARG(f->id->str, f->id->len < 256 ? f->id->len : 256);
        if (f->type) ARG("type", 4), ARG(f->type->str, f->type->len < 256 ? f->type->len : 256);
        if (f->submitted_at)
            ARG("submitted_at", 12),
                ARG(f->submitted_at->str, f->submitted_at->len < 64 ? f->submitted_at->len : 64);
        if (f->payload) {
            size_t keep = f->payload->len;
            bool cut = keep > q->p.max_payload && keep > cap;
            if (cut) keep = cap;
            ARG("payload", 7), ARG(f->payload->str, keep);
            if (cut) ARG("payload_truncated", 17), ARG("1", 1);
        }
    }
#undef ARG
    long long res = 0;
    int rc = eval(q, LUA_DEAD, nkeys, n, a, l, &res, err);
    if (rc) return rc;
    if (res == 1) {
        dead_count(q, code);
        CAIRN_LOG_WARN("job dead-lettered", "entry=%s code=%s reason=%s", entry, code, reason);
    } else if (q->p.metrics) {
        cairn_counter_inc(q->p.metrics->duplicates);
    }
    return 0;
}

/* Checks the fields of an entry; 0, or the dead-letter code and reason. */
static const char *validate(const cairn_jobs *q, const redisReply *fields, entry_fields *f,
                            bool *id_ok, char *reason, size_t cap)
{
    memset(f, 0, sizeof *f);
    *id_ok = false;
    if (fields->type != REDIS_REPLY_ARRAY || fields->elements % 2) {
        snprintf(reason, cap, "entry fields are not field/value pairs");
        return "bad_field";
    }
    const char *dup = NULL;
    for (size_t i = 0; i < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        const redisReply **slot = NULL;
        if (k->len == 2 && !memcmp(k->str, "id", 2))
            slot = &f->id;
        else if (k->len == 4 && !memcmp(k->str, "type", 4))
            slot = &f->type;
        else if (k->len == 7 && !memcmp(k->str, "payload", 7))
            slot = &f->payload;
        else if (k->len == 12 && !memcmp(k->str, "submitted_at", 12))
            slot = &f->submitted_at;
        if (!slot) continue; /* unknown fields are ignored: producers may add metadata */
        if (*slot && !dup) dup = k->str;
        *slot = v;
    }
    if (!f->id) {
        snprintf(reason, cap, "missing field 'id'");
        return "missing_field";
    }
    if (!id_valid(f->id->str, f->id->len)) {
        snprintf(reason, cap, "field 'id': expected 1..%d characters of [A-Za-z0-9._:-]",
                 CAIRN_JOB_ID_MAX);
        return "bad_id";
    }
    *id_ok = true;
    if (dup) {
        snprintf(reason, cap, "field '%s' appears twice", dup);
        return "bad_field";
    }
    if (!f->type || !f->payload) {
        snprintf(reason, cap, "missing field '%s'", !f->type ? "type" : "payload");
        return "missing_field";
    }
    if (!cairn_json_utf8_valid(f->type->str, f->type->len) ||
        memchr(f->type->str, 0, f->type->len)) {
        snprintf(reason, cap, "field 'type' is not valid UTF-8");
        return "not_utf8";
    }
    if (!type_known(q, f->type->str, f->type->len)) {
        snprintf(reason, cap, "unknown job type '%.64s'", f->type->str);
        return "unknown_type";
    }
    if (f->payload->len > q->p.max_payload) {
        snprintf(reason, cap, "payload of %zu bytes exceeds the limit of %zu", f->payload->len,
                 q->p.max_payload);
        return "oversized";
    }
    if (!cairn_json_utf8_valid(f->payload->str, f->payload->len) ||
        memchr(f->payload->str, 0, f->payload->len)) {
        snprintf(reason, cap, "field 'payload' is not valid UTF-8 text");
        return "not_utf8";
    }
    if (f->submitted_at) {
        const char *s = f->submitted_at->str;
        size_t n = f->submitted_at->len;
        bool ok = n >= 1 && n <= 16;
        for (size_t i = 0; ok && i < n; i++)
            ok = s[i] >= '0' && s[i] <= '9';
        if (!ok) {
            snprintf(reason, cap, "field 'submitted_at': expected milliseconds since the epoch");
            return "bad_field";
        }
    }
    return NULL;
}

/* The delivery count of one of this consumer's pending entries; 0 when it is not pending. */
static int delivery_count(cairn_jobs *q, const char *entry, int64_t *out, cairn_error *err)
{
    const char *a[] = {"XPENDING", q->stream, q->group, entry, entry, "1", q->consumer};
    redisReply *rep;
    int rc = cmd(q, &rep, 0, 7, a, NULL, err);
    if (rc) return rc;
    *out = 0;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 1) {
        const redisReply *e = rep->element[0];
        if (e->type == REDIS_REPLY_ARRAY && e->elements >= 4 &&
            e->element[3]->type == REDIS_REPLY_INTEGER)
            *out = e->element[3]->integer;
    }
    freeReplyObject(rep);
    return 0;
}

/*
 * Decides what happens to one delivered entry ([id, fields] with fields possibly nil):
 * returns 1 with *job filled when it is to run, 0 when it was dead-lettered, acknowledged
 * as a duplicate or skipped, or a negative code. deliveries 0: look it up (XPENDING).
 */
static int admit(cairn_jobs *q, const redisReply *e, int64_t deliveries, cairn_job *job,
                 cairn_error *err)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
        e->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    const char *entry = e->element[0]->str;
    if (e->element[0]->len >= ENTRY_ID_MAX) return 0;
    if (inflight_has(q, entry)) return 0; /* running here already */
    int rc;
    if (deliveries == 0) {
        rc = delivery_count(q, entry, &deliveries, err);
        if (rc) return rc;
        if (deliveries == 0) return 0; /* no longer ours */
        if (q->p.metrics) cairn_counter_inc(q->p.metrics->redelivered);
    }
    const redisReply *fields = e->element[1];
    if (fields->type == REDIS_REPLY_NIL) {
        rc = dead_letter(q, entry, NULL, false, "deleted",
                         "entry was deleted from the stream (trimmed?) before it ran", deliveries,
                         err);
        return rc ? rc : 0;
    }
    entry_fields f;
    bool id_ok;
    char reason[256];
    const char *code = validate(q, fields, &f, &id_ok, reason, sizeof reason);
    if (!code && deliveries > q->p.max_deliveries) {
        snprintf(reason, sizeof reason, "delivered %" PRId64 " times (max_deliveries %d)",
                 deliveries, q->p.max_deliveries);
        code = "max_deliveries";
    }
    if (code) {
        rc = dead_letter(q, entry, &f, id_ok, code, reason, deliveries, err);
        return rc ? rc : 0;
    }

    memset(job, 0, sizeof *job);
    memcpy(job->id, f.id->str, f.id->len);
    snprintf(job->entry_id, sizeof job->entry_id, "%s", entry);
    job->deliveries = deliveries;
    job->submitted_at_ms = f.submitted_at ? strtoll(f.submitted_at->str, NULL, 10)
                                          : strtoll(entry, NULL, 10); /* the entry's own ms */
    job->type = strndup(f.type->str, f.type->len);
    job->payload = malloc(f.payload->len + 1);
    if (!job->type || !job->payload) {
        cairn_job_clear(job);
        return cairn_errorf(err, CAIRN_ENOMEM, "jobs: out of memory");
    }
    memcpy(job->payload, f.payload->str, f.payload->len);
    job->payload[f.payload->len] = 0;
    job->payload_len = f.payload->len;

    char key[256], now[24], deliv[24], sub[24];
    hash_key(q, job->id, key, sizeof key);
    snprintf(now, sizeof now, "%" PRId64, wall_ms());
    snprintf(deliv, sizeof deliv, "%" PRId64, deliveries);
    snprintf(sub, sizeof sub, "%" PRId64, job->submitted_at_ms);
    const char *a[] = {key, q->stream, q->group, entry, q->consumer, now, deliv, job->type, sub};
    long long started = 0;
    rc = eval(q, LUA_START, 2, 9, a, NULL, &started, err);
    if (!rc && started) rc = inflight_add(q, entry, err);
    if (rc || !started) {
        if (!rc && q->p.metrics) cairn_counter_inc(q->p.metrics->duplicates);
        cairn_job_clear(job);
        return rc;
    }
    return 1;
}

/* Admits each entry of an XREADGROUP/XAUTOCLAIM entry list into out[*n..max). */
static int admit_list(cairn_jobs *q, const redisReply *list, int64_t deliveries, cairn_job *out,
                      size_t max, size_t *n, char *last, cairn_error *err)
{
    if (!list || list->type != REDIS_REPLY_ARRAY) return 0;
    for (size_t i = 0; i < list->elements && *n < max; i++) {
        const redisReply *e = list->element[i];
        if (last && e->type == REDIS_REPLY_ARRAY && e->elements >= 1 &&
            e->element[0]->type == REDIS_REPLY_STRING && e->element[0]->len < ENTRY_ID_MAX)
            memcpy(last, e->element[0]->str, e->element[0]->len + 1);
        int rc = admit(q, e, deliveries, &out[*n], err);
        if (rc < 0) return rc;
        if (rc == 1) (*n)++;
    }
    return 0;
}

/* The entry list of the (single) stream in an XREADGROUP reply, or NULL. */
static const redisReply *xread_entries(const redisReply *rep)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1) return NULL;
    const redisReply *s = rep->element[0];
    if (s->type != REDIS_REPLY_ARRAY || s->elements < 2) return NULL;
    return s->element[1];
}

/* XREADGROUP with NOGROUP recovery (a Redis that lost its data: recreate the group). */
static int xreadgroup(cairn_jobs *q, const char *from, size_t count, int block_ms, redisReply **rep,
                      cairn_error *err)
{
    char cnt[24], blk[24];
    snprintf(cnt, sizeof cnt, "%zu", count);
    snprintf(blk, sizeof blk, "%d", block_ms);
    const char *a[11] = {"XREADGROUP", "GROUP", q->group, q->consumer, "COUNT", cnt};
    int n = 6;
    if (block_ms > 0) a[n++] = "BLOCK", a[n++] = blk;
    a[n++] = "STREAMS", a[n++] = q->stream, a[n++] = from;
    for (int attempt = 0;; attempt++) {
        int rc = cairn_redis_cmd(q->r, rep, block_ms, n, a, NULL, err);
        if (rc) return rc;
        if (cairn_redis_is_error(*rep, "NOGROUP") && attempt == 0) {
            freeReplyObject(*rep);
            CAIRN_LOG_WARN("consumer group missing, recreating it", "stream=%s group=%s", q->stream,
                           q->group);
            rc = ensure_group(q, err);
            if (rc) return rc;
            continue;
        }
        if ((*rep)->type == REDIS_REPLY_ERROR) {
            rc = cairn_errorf(err, CAIRN_ENET, "redis XREADGROUP: %s", (*rep)->str);
            freeReplyObject(*rep);
            return rc;
        }
        return 0;
    }
}

int cairn_jobs_claim(cairn_jobs *q, size_t max, int timeout_ms, cairn_job *out, cairn_error *err)
{
    size_t n = 0;
    int rc = 0;
    if (max == 0) return 0;
    if (max > 1000) max = 1000;
    redisReply *rep = NULL;

    /* 1. Own pending entries: once after open and after every reconnect (replies may be lost). */
    uint64_t gen = cairn_redis_generation(q->r);
    if (gen != q->seen_generation) {
        q->seen_generation = gen;
        q->pending_scan = true;
        strcpy(q->pending_cursor, "0");
    }
    while (q->pending_scan && n < max) {
        rc = xreadgroup(q, q->pending_cursor, max - n, 0, &rep, err);
        if (rc) goto fail;
        const redisReply *list = xread_entries(rep);
        char before[ENTRY_ID_MAX];
        memcpy(before, q->pending_cursor, sizeof before);
        if (!list || list->elements == 0)
            q->pending_scan = false;
        else
            rc = admit_list(q, list, 0, out, max, &n, q->pending_cursor, err);
        /* A reply that did not move the cursor would loop forever: end the scan. */
        if (q->pending_scan && !strcmp(before, q->pending_cursor)) q->pending_scan = false;
        freeReplyObject(rep);
        if (rc) goto fail;
    }

    /* 2. Entries idle too long in any consumer (dead workers, failed attempts). */
    int64_t now = cairn_now_ms();
    if (n < max && now >= q->next_autoclaim_ms) {
        char idle[24], cnt[24];
        snprintf(idle, sizeof idle, "%" PRId64, q->p.claim_idle_ms);
        snprintf(cnt, sizeof cnt, "%zu", max - n);
        const char *a[] = {"XAUTOCLAIM", q->stream,           q->group, q->consumer,
                           idle,         q->autoclaim_cursor, "COUNT",  cnt};
        rc = cmd(q, &rep, 0, 8, a, NULL, err);
        if (rc) goto fail;
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
            rep->element[0]->type == REDIS_REPLY_STRING && rep->element[0]->len < ENTRY_ID_MAX) {
            memcpy(q->autoclaim_cursor, rep->element[0]->str, rep->element[0]->len + 1);
            rc = admit_list(q, rep->element[1], 0, out, max, &n, NULL, err);
            /* Redis 7 lists entries deleted from the stream separately (already unpending). */
            if (!rc && rep->elements >= 3 && rep->element[2]->type == REDIS_REPLY_ARRAY)
                for (size_t i = 0; i < rep->element[2]->elements; i++)
                    dead_count(q, "deleted");
        }
        bool more = strcmp(q->autoclaim_cursor, "0-0") != 0;
        int64_t every = q->p.claim_idle_ms / 4 > 10 ? q->p.claim_idle_ms / 4 : 10;
        q->next_autoclaim_ms = more ? now : now + every;
        freeReplyObject(rep);
        if (rc) goto fail;
    }

    /* 3. New entries; block only when nothing else came. */
    if (n < max) {
        rc = xreadgroup(q, ">", max - n, n ? 0 : timeout_ms, &rep, err);
        if (rc) goto fail;
        rc = admit_list(q, xread_entries(rep), 1, out, max, &n, NULL, err);
        freeReplyObject(rep);
        if (rc) goto fail;
    }
    return (int)n;

fail:
    /* Jobs already admitted stay pending and in flight here: hand them out anyway. */
    if (n) return (int)n;
    return rc;
}

/* ---- Outcomes --------------------------------------------------------------------------- */

int cairn_jobs_complete(cairn_jobs *q, const cairn_job *job, const char *result, size_t len,
                        cairn_error *err)
{
    char key[256], now[24], ttl[24];
    hash_key(q, job->id, key, sizeof key);
    snprintf(now, sizeof now, "%" PRId64, wall_ms());
    snprintf(ttl, sizeof ttl, "%" PRId64, q->p.result_ttl_s);
    const char *a[] = {
        key, q->stream, q->group, job->entry_id, q->consumer, now, result ? result : "", ttl};
    size_t l[] = {strlen(key),         strlen(q->stream), strlen(q->group), strlen(job->entry_id),
                  strlen(q->consumer), strlen(now),       result ? len : 0, strlen(ttl)};
    long long won = 0;
    inflight_remove(q, job->entry_id);
    int rc = eval(q, LUA_COMPLETE, 2, 8, a, l, &won, err);
    if (rc) return rc;
    if (q->p.metrics) cairn_counter_inc(won ? q->p.metrics->completed : q->p.metrics->duplicates);
    return won ? 1 : 0;
}

int cairn_jobs_fail(cairn_jobs *q, const cairn_job *job, const char *reason, cairn_error *err)
{
    inflight_remove(q, job->entry_id);
    if (!reason) reason = "executor failed";
    if (job->deliveries >= q->p.max_deliveries) {
        char why[512];
        snprintf(why, sizeof why, "failed on delivery %" PRId64 " of %d; last error: %.400s",
                 job->deliveries, q->p.max_deliveries, reason);
        redisReply id = {
            .type = REDIS_REPLY_STRING, .str = (char *)job->id, .len = strlen(job->id)};
        redisReply type = {.type = REDIS_REPLY_STRING, .str = job->type, .len = strlen(job->type)};
        redisReply payload = {
            .type = REDIS_REPLY_STRING, .str = job->payload, .len = job->payload_len};
        entry_fields f = {.id = &id, .type = &type, .payload = &payload};
        return dead_letter(q, job->entry_id, &f, true, "max_deliveries", why, job->deliveries, err);
    }
    char key[256], now[24];
    hash_key(q, job->id, key, sizeof key);
    snprintf(now, sizeof now, "%" PRId64, wall_ms());
    const char *a[] = {key, reason, now};
    return eval(q, LUA_RETRY, 1, 3, a, NULL, NULL, err);
}

int cairn_jobs_release(cairn_jobs *q, const cairn_job *job, cairn_error *err)
{
    inflight_remove(q, job->entry_id);
    /* IDLE makes the entry look idle for claim_idle_ms already, so the next XAUTOCLAIM of any
     * consumer takes it; RETRYCOUNT gives back the delivery this attempt cost (the claim that
     * takes it counts one again). JUSTID: no entry body, and the count is not bumped here. */
    char idle[24], retry[24];
    snprintf(idle, sizeof idle, "%" PRId64, q->p.claim_idle_ms);
    snprintf(retry, sizeof retry, "%" PRId64, job->deliveries > 1 ? job->deliveries - 1 : 0);
    const char *a[] = {"XCLAIM", q->stream, q->group,   q->consumer, "0",   job->entry_id,
                       "IDLE",   idle,      "RETRYCOUNT", retry,     "JUSTID"};
    redisReply *rep;
    int rc = cmd(q, &rep, 0, 11, a, NULL, err);
    if (rc) return rc;
    freeReplyObject(rep);
    return 0;
}

int cairn_jobs_heartbeat(cairn_jobs *q, cairn_error *err)
{
    for (size_t i = 0; i < q->n_inflight; i += 32) {
        const char *a[40] = {"XCLAIM", q->stream, q->group, q->consumer, "0"};
        int n = 5;
        for (size_t k = i; k < q->n_inflight && k < i + 32; k++)
            a[n++] = q->inflight[k];
        a[n++] = "JUSTID";
        redisReply *rep;
        int rc = cmd(q, &rep, 0, n, a, NULL, err);
        if (rc) return rc;
        freeReplyObject(rep);
    }
    return 0;
}

int cairn_jobs_process(cairn_jobs *q, size_t max, int timeout_ms, cairn_job_run_fn run, void *ctx,
                       cairn_error *err)
{
    if (max == 0) return 0;
    if (max > 64) max = 64;
    cairn_job jobs[64];
    int n = cairn_jobs_claim(q, max, timeout_ms, jobs, err);
    if (n <= 0) return n;
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char *result = NULL;
        size_t len = 0;
        cairn_error jerr = {0};
        int jrc = rc ? 0 : run(ctx, &jobs[i], &result, &len, &jerr);
        if (rc) {
            /* An earlier outcome could not be stored (Redis gone): leave the rest pending. */
            inflight_remove(q, jobs[i].entry_id);
        } else if (jrc == 0) {
            rc = cairn_jobs_complete(q, &jobs[i], result, len, err);
            if (rc > 0) rc = 0;
        } else {
            CAIRN_LOG_WARN("job failed", "id=%s delivery=%" PRId64 " error=%s", jobs[i].id,
                           jobs[i].deliveries, jerr.msg[0] ? jerr.msg : cairn_strerror(jrc));
            rc = cairn_jobs_fail(q, &jobs[i], jerr.msg[0] ? jerr.msg : cairn_strerror(jrc), err);
        }
        free(result);
        cairn_job_clear(&jobs[i]);
    }
    return rc ? rc : n;
}

/* ---- Status ----------------------------------------------------------------------------- */

static void put_time(json_t *o, const char *name, const redisReply *v)
{
    if (!v || v->type != REDIS_REPLY_STRING) return;
    long long ms = strtoll(v->str, NULL, 10);
    if (ms <= 0) return;
    char buf[32];
    cairn_format_iso8601(ms * CAIRN_NS_PER_MS, buf, sizeof buf);
    json_object_set_new(o, name, json_string(buf));
}

static void put_str(json_t *o, const char *name, const redisReply *v)
{
    if (!v || v->type != REDIS_REPLY_STRING) return;
    if (cairn_json_utf8_valid(v->str, v->len))
        json_object_set_new(o, name, json_stringn(v->str, v->len));
}

int cairn_jobs_status_json(cairn_jobs *q, const char *id, char **json_out, cairn_job_state *state,
                           cairn_error *err)
{
    *json_out = NULL;
    if (!id || !id_valid(id, strlen(id)))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "job id: expected 1..%d characters of [A-Za-z0-9._:-]",
                            CAIRN_JOB_ID_MAX);
    char key[256];
    hash_key(q, id, key, sizeof key);
    const char *a[] = {"HGETALL", key};
    redisReply *rep;
    int rc = cmd(q, &rep, 0, 2, a, NULL, err);
    if (rc) return rc;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements == 0) {
        freeReplyObject(rep);
        return cairn_errorf(err, CAIRN_ENOTFOUND, "no job '%s' (never submitted, or expired)", id);
    }
    const redisReply *st = map_get(rep, "status");
    cairn_job_state s = CAIRN_JOB_QUEUED;
    if (st && st->type == REDIS_REPLY_STRING) {
        if (!strcmp(st->str, "running"))
            s = CAIRN_JOB_RUNNING;
        else if (!strcmp(st->str, "done"))
            s = CAIRN_JOB_DONE;
        else if (!strcmp(st->str, "failed"))
            s = CAIRN_JOB_FAILED;
    }
    json_t *o = json_object();
    if (!o) {
        freeReplyObject(rep);
        return cairn_errorf(err, CAIRN_ENOMEM, "jobs: out of memory");
    }
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "status", json_string(cairn_job_state_name(s)));
    put_str(o, "type", map_get(rep, "type"));
    put_time(o, "submitted_at", map_get(rep, "submitted_at"));
    put_time(o, "started_at", map_get(rep, "started_at"));
    put_time(o, "finished_at", map_get(rep, "finished_at"));
    put_str(o, "worker", map_get(rep, "worker"));
    const redisReply *att = map_get(rep, "attempts");
    if (att && att->type == REDIS_REPLY_STRING)
        json_object_set_new(o, "attempts", json_integer(strtoll(att->str, NULL, 10)));
    put_str(o, "error", s == CAIRN_JOB_FAILED ? map_get(rep, "error") : map_get(rep, "last_error"));
    if (s == CAIRN_JOB_DONE) put_str(o, "result", map_get(rep, "result"));
    freeReplyObject(rep);
    *json_out = cairn_json_dump(o, false);
    json_decref(o);
    if (!*json_out) return cairn_errorf(err, CAIRN_ENOMEM, "jobs: out of memory");
    if (state) *state = s;
    return 0;
}
