/*
 * services/offline.c — job runners and the /v1/jobs endpoints (offline.h).
 *
 * Shared state: `stop` (atomic) is read by every runner; the submit handle `q_http` serves the
 * HTTP threads one at a time under `http_mu` (a queue handle is single-threaded, jobs.h).
 * Everything else a runner touches is its own.
 */
#define CAIRN_LOG_TAG "offline"
#include "services/offline.h"

#include "common/clock.h"
#include "common/json.h"
#include "common/log.h"
#include "services/api.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct runner {
    struct cairn_offline *o;
    int index;
    pthread_t thread;
    bool started;
    cairn_jobs *q;
    int64_t last_beat;
} runner;

struct cairn_offline {
    cairn_offline_params p;
    char *redis_url; /* owned copies of the strings in p.jobs */
    cairn_workers *w;
    cairn_jobs_metrics *jm;
    cairn_api_auth *auth;
    atomic_bool stop;
    runner *r;
    int n_r;
    pthread_mutex_t http_mu; /* guards q_http */
    cairn_jobs *q_http;
    cairn_gauge *g_running;
    cairn_histogram *h_job;
    cairn_counter *c_done, *c_failed;
};

cairn_offline_params cairn_offline_default_params(void)
{
    return (cairn_offline_params){
        .jobs = cairn_jobs_default_params(),
        .runners = 2,
        .max_offline = 4,
        .summarize = cairn_summarize_default_params(),
    };
}

/* ---- Runners ------------------------------------------------------------------------------ */

/* While a summary waits: heartbeat the job; stop when the service stops. */
static int keepalive(void *ctx)
{
    runner *r = ctx;
    if (atomic_load(&r->o->stop)) return 1;
    /* Often enough that the job never looks idle for claim_idle_ms to the other workers. */
    int64_t every = r->o->p.jobs.claim_idle_ms * CAIRN_NS_PER_MS / 3;
    if (every > 30 * CAIRN_NS_PER_SEC) every = 30 * CAIRN_NS_PER_SEC;
    int64_t now = cairn_now_ns();
    if (now - r->last_beat > every) {
        cairn_error err = {0};
        if (cairn_jobs_heartbeat(r->q, &err) != 0)
            CAIRN_LOG_WARN("heartbeat failed", "runner=%d error=%s", r->index, err.msg);
        r->last_beat = now;
    }
    return 0;
}

static void run_job(runner *r, cairn_job *job)
{
    cairn_offline *o = r->o;
    cairn_summarize_params sp = o->p.summarize;
    sp.keepalive = keepalive;
    sp.keepalive_ctx = r;
    if (sp.keepalive_ms > 1000) sp.keepalive_ms = 1000; /* notice a shutdown within a second */
    r->last_beat = cairn_now_ns();
    cairn_gauge_inc(o->g_running);
    int64_t t0 = cairn_now_ns();
    char *out = NULL;
    size_t len = 0;
    cairn_summarize_stats st = {0};
    cairn_error err = {0};
    int rc = cairn_summarize(o->w, job->payload, job->payload_len, &sp, &out, &len, &st, &err);
    cairn_gauge_dec(o->g_running);
    if (rc == CAIRN_ECANCELED || rc == CAIRN_ESTATE) {
        /* Shutting down: no result, no failure; the entry is handed back so that another
         * worker claims it at once (else it waits claim_idle_ms, or for a successor). */
        cairn_error qerr = {0};
        int rel = cairn_jobs_release(r->q, job, &qerr);
        CAIRN_LOG_INFO("job handed back", "id=%s reason=%s released=%s", job->id, "shutdown",
                       rel ? qerr.msg : "yes");
        free(out);
        return;
    }
    cairn_error qerr = {0};
    if (rc == 0) {
        cairn_histogram_observe(o->h_job, (double)(cairn_now_ns() - t0) / 1e9);
        int stored = cairn_jobs_complete(r->q, job, out, len, &qerr);
        if (stored < 0)
            CAIRN_LOG_WARN("result not stored", "id=%s error=%s", job->id, qerr.msg);
        else
            cairn_counter_inc(o->c_done);
        CAIRN_LOG_INFO("job done", "id=%s doc_tokens=%d pieces=%d rounds=%d seconds=%.1f",
                       job->id, st.doc_tokens, st.pieces, st.rounds,
                       (double)(cairn_now_ns() - t0) / 1e9);
    } else {
        cairn_counter_inc(o->c_failed);
        if (cairn_jobs_fail(r->q, job, err.msg, &qerr) != 0)
            CAIRN_LOG_WARN("failure not recorded", "id=%s error=%s", job->id, qerr.msg);
        CAIRN_LOG_WARN("job failed", "id=%s error=%s", job->id, err.msg);
    }
    free(out);
}

static int open_queue(cairn_offline *o, cairn_jobs **q, cairn_error *err)
{
    cairn_jobs_params jp = o->p.jobs;
    jp.metrics = o->jm;
    jp.reconnect_timeout_ms = 2000;
    return cairn_jobs_open(q, &jp, err);
}

static void *runner_main(void *arg)
{
    runner *r = arg;
    cairn_offline *o = r->o;
    int64_t last_complaint = 0;
    while (!atomic_load(&o->stop)) {
        cairn_error err = {0};
        if (!r->q && open_queue(o, &r->q, &err) != 0) {
            int64_t now = cairn_now_ns();
            if (now - last_complaint > 60 * CAIRN_NS_PER_SEC) {
                CAIRN_LOG_WARN("no job queue", "runner=%d error=%s", r->index, err.msg);
                last_complaint = now;
            }
            cairn_sleep_ms(1000);
            continue;
        }
        /* Only with offline capacity to spare (the scheduler fits offline work around online
         * requests; this keeps the backlog in Redis rather than in our queue). */
        if (cairn_workers_offline_load(o->w) >= o->p.max_offline) {
            cairn_sleep_ms(100);
            continue;
        }
        cairn_job job;
        memset(&job, 0, sizeof job);
        int n = cairn_jobs_claim(r->q, 1, 1000, &job, &err);
        if (n < 0) {
            CAIRN_LOG_WARN("claim failed", "runner=%d error=%s", r->index, err.msg);
            cairn_jobs_close(r->q);
            r->q = NULL;
            cairn_sleep_ms(1000);
            continue;
        }
        if (n == 1) run_job(r, &job);
        cairn_job_clear(&job);
    }
    return NULL;
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

static bool authorized(cairn_offline *o, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_error err = {0};
    if (cairn_api_auth_request(o->auth, req, &err) == 0)
        return true;
    cairn_http_json_error(resp, 401, "%s", err.msg);
    return false;
}

/* Maps a queue error to an HTTP answer. */
static void queue_error(cairn_http_resp *resp, int rc, const cairn_error *err)
{
    switch (rc) {
    case CAIRN_EINVAL:
    case CAIRN_EFORMAT: cairn_http_json_error(resp, 400, "%s", err->msg); break;
    case CAIRN_ELIMIT: cairn_http_json_error(resp, 413, "%s", err->msg); break;
    case CAIRN_ENOTFOUND: cairn_http_json_error(resp, 404, "%s", err->msg); break;
    case CAIRN_EBUSY:
        cairn_http_json_error(resp, 429, "%s", err->msg);
        resp->retry_after_s = 5;
        break;
    default:
        cairn_http_json_error(resp, 503, "the job queue is unavailable: %s", err->msg);
        resp->retry_after_s = 2;
        break;
    }
}

/* Runs fn with the HTTP queue handle, (re)connecting when needed. */
static cairn_jobs *http_queue(cairn_offline *o, cairn_error *err)
{
    if (!o->q_http && open_queue(o, &o->q_http, err) != 0) return NULL;
    return o->q_http;
}

static void on_submit(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_offline *o = ctx;
    if (!authorized(o, req, resp)) return;
    cairn_error err = {0};
    json_t *body = NULL;
    int rc = cairn_json_parse(&body, req->body, req->body_len, req->body_len + 1, &err);
    if (rc) {
        cairn_http_json_error(resp, 400, "invalid JSON: %s", err.msg);
        return;
    }
    static const char *const keys[] = {"type", "payload", NULL};
    const char *type = NULL, *payload = NULL;
    size_t plen = 0;
    if (!json_is_object(body))
        rc = cairn_errorf(&err, CAIRN_EFORMAT, "the body must be a JSON object, not %s",
                          cairn_json_type_name(body));
    if (!rc) rc = cairn_json_check_keys(body, NULL, keys, &err);
    if (!rc) rc = cairn_json_get_string(body, "type", &type, NULL, 1, 64, true, &err);
    if (!rc)
        rc = cairn_json_get_string(body, "payload", &payload, &plen, 0,
                                   o->p.jobs.max_payload + 1, true, &err);
    if (rc) {
        json_decref(body);
        cairn_http_json_error(resp, 400, "%s", err.msg);
        return;
    }
    char id[CAIRN_JOB_ID_MAX + 1];
    pthread_mutex_lock(&o->http_mu);
    cairn_jobs *q = http_queue(o, &err);
    rc = q ? cairn_jobs_submit(q, type, payload, plen, id, &err) : CAIRN_ENET;
    if (rc == CAIRN_ENET && q) { /* a dead connection: reconnect next time */
        cairn_jobs_close(o->q_http);
        o->q_http = NULL;
    }
    pthread_mutex_unlock(&o->http_mu);
    if (rc) {
        json_decref(body);
        queue_error(resp, rc, &err);
        return;
    }
    json_t *r = json_pack("{s:s,s:s,s:s}", "id", id, "status", "queued", "type", type);
    char *text = r ? json_dumps(r, JSON_COMPACT) : NULL;
    json_decref(r);
    json_decref(body); /* type pointed into it */
    if (!text) {
        cairn_http_json_error(resp, 500, "out of memory");
        return;
    }
    resp->status = 202;
    resp->body = text;
    resp->body_len = strlen(text);
}

static void on_status(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_offline *o = ctx;
    if (!authorized(o, req, resp)) return;
    const char *id = req->path + strlen("/v1/jobs/");
    cairn_error err = {0};
    char *json = NULL;
    pthread_mutex_lock(&o->http_mu);
    cairn_jobs *q = http_queue(o, &err);
    int rc = q ? cairn_jobs_status_json(q, id, &json, NULL, &err) : CAIRN_ENET;
    if (rc == CAIRN_ENET && q) {
        cairn_jobs_close(o->q_http);
        o->q_http = NULL;
    }
    pthread_mutex_unlock(&o->http_mu);
    if (rc) {
        queue_error(resp, rc, &err);
        return;
    }
    resp->status = 200;
    resp->body = json;
    resp->body_len = strlen(json);
}

int cairn_offline_routes(cairn_offline *o, cairn_http *h)
{
    int rc = cairn_http_route(h, "POST", "/v1/jobs", on_submit, o);
    if (!rc) rc = cairn_http_route(h, "GET", "/v1/jobs/*", on_status, o);
    return rc;
}

/* ---- Lifecycle ------------------------------------------------------------------------------ */

int cairn_offline_open(cairn_offline **out, const cairn_offline_params *p, cairn_workers *w,
                       cairn_metrics *m, cairn_error *err)
{
    *out = NULL;
    if (p->runners < 0 || p->runners > 64 || p->max_offline < 1)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "offline: runners %d must be in 0..64 and max_offline %d >= 1",
                            p->runners, p->max_offline);
    cairn_offline *o = calloc(1, sizeof *o);
    if (!o) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    o->p = *p;
    o->w = w;
    pthread_mutex_init(&o->http_mu, NULL);
    int rc = 0;
    if (p->jobs.redis_url) {
        o->redis_url = strdup(p->jobs.redis_url);
        o->p.jobs.redis_url = o->redis_url;
        if (!o->redis_url) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    }
    static const double secs[] = {1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800};
    if (!rc) rc = cairn_jobs_metrics_new(m, &o->jm, err);
    if (!rc) rc = cairn_gauge_new(m, &o->g_running, "cairn_offline_jobs_running",
                                  "Offline jobs this process is running", err);
    if (!rc) rc = cairn_histogram_new(m, &o->h_job, "cairn_offline_job_seconds",
                                      "Time to run one offline job, claim to result", secs,
                                      sizeof secs / sizeof secs[0], err);
    if (!rc) rc = cairn_counter_new(m, &o->c_done, "cairn_offline_jobs_done_total",
                                    "Offline jobs this process completed", err);
    if (!rc) rc = cairn_counter_new(m, &o->c_failed, "cairn_offline_jobs_failed_total",
                                    "Offline job attempts that failed in this process", err);
    if (!rc) rc = cairn_api_auth_new(&o->auth, p->api_keys, p->api_key_hashes, err);
    if (!rc && p->runners > 0) {
        o->r = calloc((size_t)p->runners, sizeof *o->r);
        if (!o->r) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    }
    for (int i = 0; !rc && i < p->runners; i++) {
        runner *r = &o->r[i];
        r->o = o;
        r->index = i;
        if (pthread_create(&r->thread, NULL, runner_main, r) != 0)
            rc = cairn_errorf(err, CAIRN_EIO, "offline: cannot start runner %d", i);
        else
            r->started = true, o->n_r++;
    }
    if (rc) {
        cairn_offline_close(o);
        return rc;
    }
    *out = o;
    return 0;
}

void cairn_offline_stop(cairn_offline *o)
{
    if (!o) return;
    atomic_store(&o->stop, true);
    for (int i = 0; i < o->n_r; i++) {
        runner *r = &o->r[i];
        if (r->started) pthread_join(r->thread, NULL);
        r->started = false;
        cairn_jobs_close(r->q);
        r->q = NULL;
    }
}

void cairn_offline_close(cairn_offline *o)
{
    if (!o) return;
    cairn_offline_stop(o);
    cairn_jobs_close(o->q_http);
    free(o->r);
    cairn_api_auth_free(o->auth);
    cairn_jobs_metrics_free(o->jm);
    pthread_mutex_destroy(&o->http_mu);
    free(o->redis_url);
    free(o);
}
