/*
 * tests/unit/test_jobs.c — the offline job queue against a real redis-server.
 *
 * Each test starts its own redis-server (AOF on, no RDB) on a free loopback port in a
 * temporary directory and kills it at teardown. Without redis-server they fail (scripts/setup
 * installs it): a missing dependency is a broken set-up, not a reason to skip.
 */
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/metrics.h"
#include "services/cmd_job.h"
#include "services/jobs.h"
#include "services/redis.h"

#include "metric_value.h"

/* ---- Fixture: a real redis-server ------------------------------------------------------- */

typedef struct {
    pid_t pid;
    int port;
    char dir[128];
    char url[64];
    redisContext *c; /* the test's own connection for raw commands and checks */
    cairn_metrics *reg;
    cairn_jobs_metrics *m;
} fixture;

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) ||
        getsockname(s, (struct sockaddr *)&a, &n))
        return -1;
    close(s);
    return ntohs(a.sin_port);
}

static void redis_spawn(fixture *f)
{
    char port[16], log[200];
    snprintf(port, sizeof port, "%d", f->port);
    snprintf(log, sizeof log, "%s/redis.log", f->dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Dies with the test, and holds none of its output pipes (ctest waits on them). */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) dup2(devnull, 1), dup2(devnull, 2);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--dir",
               f->dir, "--appendonly", "yes", "--save", "", "--logfile", log, "--daemonize", "no",
               (char *)NULL);
        _exit(127);
    }
    f->pid = pid;
}

static redisContext *connect_raw(const fixture *f)
{
    redisContext *c = redisConnectWithTimeout("127.0.0.1", f->port, (struct timeval){2, 0});
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* Waits until the server answers PING (not LOADING); fails the test after 15 s. */
static void redis_wait_ready(fixture *f)
{
    int64_t deadline = cairn_now_ms() + 15000;
    while (cairn_now_ms() < deadline) {
        redisContext *c = connect_raw(f);
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            bool ok = r && r->type == REDIS_REPLY_STATUS && !strcmp(r->str, "PONG");
            if (r) freeReplyObject(r);
            if (ok) {
                if (f->c) redisFree(f->c);
                f->c = c;
                return;
            }
            redisFree(c);
        }
        int st;
        if (waitpid(f->pid, &st, WNOHANG) == f->pid) fail_msg("redis-server exited early");
        cairn_sleep_ms(20);
    }
    fail_msg("redis-server did not answer PING within 15 s");
}

static void redis_stop(fixture *f, int sig)
{
    if (f->pid <= 0) return;
    kill(f->pid, sig);
    int st;
    waitpid(f->pid, &st, 0);
    f->pid = 0;
    if (f->c) redisFree(f->c);
    f->c = NULL;
}

static bool have_redis(void)
{
    return system("command -v redis-server >/dev/null 2>&1") == 0;
}

static int setup(void **state)
{
    if (!have_redis()) {
        *state = NULL;
        return 0;
    }
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/cairn-jobs-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    f->port = free_port();
    snprintf(f->url, sizeof f->url, "redis://127.0.0.1:%d/0", f->port);
    redis_spawn(f);
    redis_wait_ready(f);
    if (cairn_metrics_new(&f->reg, NULL) || cairn_jobs_metrics_new(f->reg, &f->m, NULL)) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (!f) return 0;
    redis_stop(f, SIGKILL);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0) return -1;
    cairn_jobs_metrics_free(f->m);
    cairn_metrics_free(f->reg);
    free(f);
    return 0;
}

#define NEED_REDIS(f)                                                                              \
    do {                                                                                           \
        if (!(f)) {                                                                                \
            fail_msg("redis-server is not installed (scripts/setup installs it)");                 \
        }                                                                                          \
    } while (0)

static const char *const TEST_TYPES[] = {"summarize", "echo", NULL};

static cairn_jobs_params params(const fixture *f)
{
    cairn_jobs_params p = cairn_jobs_default_params();
    p.redis_url = f->url;
    p.types = TEST_TYPES;
    p.metrics = f->m;
    p.reconnect_timeout_ms = 20000;
    return p;
}

static cairn_jobs *open_q(const fixture *f, const cairn_jobs_params *p)
{
    cairn_jobs *q = NULL;
    cairn_error err = {0};
    int rc = cairn_jobs_open(&q, p, &err);
    if (rc) fail_msg("cairn_jobs_open: %s", err.msg);
    return q;
}

/* A raw command on the test's connection; the caller frees the reply. */
static redisReply *raw(fixture *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(f->c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    return r;
}

static long long raw_int(fixture *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(f->c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* HGET of the job's hash into buf ("" when absent). */
static const char *hget(fixture *f, const char *id, const char *field, char *buf, size_t cap)
{
    redisReply *r = raw(f, "HGET cairn:job:%s %s", id, field);
    snprintf(buf, cap, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
    return buf;
}

/* How many entries of the group are pending (delivered and not acknowledged). */
static long long pending_count(fixture *f)
{
    redisReply *r = raw(f, "XPENDING cairn:jobs cairn-workers");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    long long n = r->element[0]->integer;
    freeReplyObject(r);
    return n;
}

static double metric(fixture *f, const char *series)
{
    return metric_value(f->reg, series);
}

/* ---- Executors -------------------------------------------------------------------------- */

typedef struct {
    atomic_int calls;
    bool fail;
    int sleep_ms;
} exec_ctx;

/* Succeeds with "done:" + payload, or fails with "boom" when ctx->fail. */
static int run_echo(void *vctx, const cairn_job *job, char **result, size_t *len, cairn_error *err)
{
    exec_ctx *ctx = vctx;
    atomic_fetch_add(&ctx->calls, 1);
    if (ctx->sleep_ms) cairn_sleep_ms(ctx->sleep_ms);
    if (ctx->fail) return cairn_errorf(err, CAIRN_EIO, "boom: executor failed on %s", job->id);
    *len = job->payload_len + 5;
    *result = malloc(*len + 1);
    snprintf(*result, *len + 1, "done:%s", job->payload);
    return 0;
}

/* ---- Tests ------------------------------------------------------------------------------ */

static void test_url_parse(void **state)
{
    (void)state;
    cairn_redis_addr a;
    assert_int_equal(cairn_redis_parse_url("redis://example.org:6380/3", &a, NULL), 0);
    assert_string_equal(a.host, "example.org");
    assert_int_equal(a.port, 6380);
    assert_int_equal(a.db, 3);
    assert_int_equal(cairn_redis_parse_url("redis://u:p@w@h", &a, NULL), 0);
    assert_string_equal(a.user, "u");
    assert_string_equal(a.password, "p@w");
    assert_string_equal(a.host, "h");
    assert_int_equal(a.port, 6379);
    assert_int_equal(a.db, 0);
    cairn_error err = {0};
    assert_int_equal(cairn_redis_parse_url("redis://h:99999", &a, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "port"));
    assert_int_equal(cairn_redis_parse_url("http://h", &a, NULL), CAIRN_EINVAL);
    assert_int_equal(cairn_redis_parse_url("redis://h/x", &a, NULL), CAIRN_EINVAL);
    assert_int_equal(cairn_redis_parse_url("redis://:6379", &a, NULL), CAIRN_EINVAL);
}

static void test_submit_claim_complete(void **state)
{
    fixture *f = *state;
    NEED_REDIS(f);
    cairn_jobs_params p = params(f);
    p.max_payload = 1000;
    p.result_ttl_s = 3600;
    cairn_jobs *q = open_q(f, &p);
    cairn_error err = {0};
    char id[CAIRN_JOB_ID_MAX + 1];

    /* Bad jobs are refused with a message, nothing is queued. */
    assert_int_equal(cairn_jobs_submit(q, "translate", "x", 1, id, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "translate"));
    char big[1001];
    memset(big, 'a', sizeof big);
    assert_int_equal(cairn_jobs_submit(q, "echo", big, sizeof big, id, &err), CAIRN_ELIMIT);
    assert_int_equal(cairn_jobs_submit(q, "echo", "\xff\xfe", 2, id, &err), CAIRN_EFORMAT);
    assert_int_equal(raw_int(f, "XLEN cairn:jobs"), 0);

    int64_t t0 = cairn_wall_ns() / CAIRN_NS_PER_MS;
    assert_int_equal(cairn_jobs_submit(q, "echo", "hello", 5, id, &err), 0);
    assert_int_equal(strlen(id), 32);
    assert_int_equal(raw_int(f, "XLEN cairn:jobs"), 1);
    int64_t depth = -1;
    assert_int_equal(cairn_jobs_depth(q, &depth, NULL), 0);
    assert_int_equal(depth, 1);
    char *json = NULL;
    cairn_job_state st;
    assert_int_equal(cairn_jobs_status_json(q, id, &json, &st, &err), 0);
    assert_int_equal(st, CAIRN_JOB_QUEUED);
    assert_non_null(strstr(json, "\"status\":\"queued\""));
    assert_non_null(strstr(json, "\"submitted_at\":\""));
    free(json);

    cairn_job jobs[4];
    int n = cairn_jobs_claim(q, 4, 1000, jobs, &err);
    assert_int_equal(n, 1);
    assert_string_equal(jobs[0].id, id);
    assert_string_equal(jobs[0].type, "echo");
    assert_int_equal(jobs[0].payload_len, 5);
    assert_string_equal(jobs[0].payload, "hello");
    assert_int_equal(jobs[0].deliveries, 1);
    assert_true(jobs[0].submitted_at_ms >= t0 - 1000 && jobs[0].submitted_at_ms <= t0 + 60000);
    assert_int_equal(pending_count(f), 1);
    assert_int_equal(cairn_jobs_status_json(q, id, &json, &st, &err), 0);
    assert_int_equal(st, CAIRN_JOB_RUNNING);
    free(json);
    char buf[256];
    assert_string_equal(hget(f, id, "worker", buf, sizeof buf), cairn_jobs_consumer(q));

    assert_int_equal(cairn_jobs_complete(q, &jobs[0], "RESULT", 6, &err), 1);
    assert_int_equal(pending_count(f), 0);
    assert_string_equal(hget(f, id, "status", buf, sizeof buf), "done");
    assert_string_equal(hget(f, id, "result", buf, sizeof buf), "RESULT");
    long long ttl = raw_int(f, "TTL cairn:job:%s", id);
    assert_true(ttl > 3500 && ttl <= 3600);
    assert_int_equal(cairn_jobs_status_json(q, id, &json, &st, &err), 0);
    assert_int_equal(st, CAIRN_JOB_DONE);
    assert_non_null(strstr(json, "\"result\":\"RESULT\""));
    assert_non_null(strstr(json, "\"finished_at\":\""));
    free(json);
    /* A second completion of the same delivery stores nothing. */
    assert_int_equal(cairn_jobs_complete(q, &jobs[0], "OTHER", 5, &err), 0);
    assert_string_equal(hget(f, id, "result", buf, sizeof buf), "RESULT");
    cairn_job_clear(&jobs[0]);

    assert_int_equal(cairn_jobs_status_json(q, "0123456789abcdef", &json, NULL, &err),
                     CAIRN_ENOTFOUND);
    assert_int_equal(cairn_jobs_status_json(q, "bad id", &json, NULL, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_jobs_claim(q, 4, 0, jobs, &err), 0);
    assert_true(metric(f, "cairn_jobs_submitted_total") == 1);
    assert_true(metric(f, "cairn_jobs_completed_total") == 1);
    cairn_jobs_close(q);
}

static void test_own_pending_reread(void **state)
{
    fixture *f = *state;
    NEED_REDIS(f);
    cairn_jobs_params p = params(f);
    p.consumer = "worker-a";
    cairn_jobs *q = open_q(f, &p);
    char id[CAIRN_JOB_ID_MAX + 1];
    assert_int_equal(cairn_jobs_submit(q, "echo", "one", 3, id, NULL), 0);
    cairn_job job;
    assert_int_equal(cairn_jobs_claim(q, 1, 1000, &job, NULL), 1);
    cairn_job_clear(&job);
    cairn_jobs_close(q); /* dies holding the job */

    /* Restarted under the same name, it re-reads its own pending entry first (long idle). */
    q = open_q(f, &p);
    assert_int_equal(cairn_jobs_claim(q, 1, 0, &job, NULL), 1);
    assert_string_equal(job.id, id);
    assert_int_equal(job.deliveries, 2);
    assert_int_equal(cairn_jobs_complete(q, &job, "r", 1, NULL), 1);
    cairn_job_clear(&job);
    assert_int_equal(pending_count(f), 0);
    assert_true(metric(f, "cairn_jobs_redelivered_total") == 1);
    cairn_jobs_close(q);
}

static void test_dead_consumer_autoclaim(void **state)
{
    fixture *f = *state;
    NEED_REDIS(f);
    cairn_jobs_params p = params(f);
    p.claim_idle_ms = 300;
    cairn_jobs *q1 = open_q(f, &p), *q2 = open_q(f, &p);
    assert_string_not_equal(cairn_jobs_consumer(q1), cairn_jobs_consumer(q2));
    char id[CAIRN_JOB_ID_MAX + 1];
    assert_int_equal(cairn_jobs_submit(q1, "echo", "abc", 3, id, NULL), 0);
    cairn_job job;
    assert_int_equal(cairn_jobs_claim(q1, 1, 1000, &job, NULL), 1);
    cairn_job_clear(&job);
    cairn_jobs_close(q1); /* the worker dies mid-job: no result, no XACK */

    /* Not idle long enough yet: nothing to take. */
    assert_int_equal(cairn_jobs_claim(q2, 1, 0, &job, NULL), 0);
    cairn_sleep_ms(400);
    exec_ctx ctx = {0};
    int n = 0;
    int64_t deadline = cairn_now_ms() + 5000;
    while (n == 0 && cairn_now_ms() < deadline)
        n = cairn_jobs_process(q2, 1, 100, run_echo, &ctx, NULL);
    assert_int_equal(n, 1);
    assert_int_equal(atomic_load(&ctx.calls), 1);
    char buf[256];
    assert_string_equal(hget(f, id, "status", buf, sizeof buf), "done");
    assert_string_equal(hget(f, id, "result", buf, sizeof buf), "done:abc");
    assert_string_equal(hget(f, id, "worker", buf, sizeof buf), cairn_jobs_consumer(q2));
    assert_string_equal(hget(f, id, "attempts", buf, sizeof buf), "2");
    assert_int_equal(pending_count(f), 0);
    cairn_jobs_close(q2);
}

static void test_complete_race_one_result(void **state)
{
    fixture *f = *state;
    NEED_REDIS(f);
    cairn_jobs_params p = params(f);
    p.claim_idle_ms = 100;
    cairn_jobs *q1 = open_q(f, &p), *q2 = open_q(f, &p);
    char id[CAIRN_JOB_ID_MAX + 1];
    assert_int_equal(cairn_jobs_submit(q1, "echo", "x", 1, id, NULL), 0);
    cairn_job j1, j2;
    assert_int_equal(cairn_jobs_claim(q1, 1, 1000, &j1, NULL), 1);
    cairn_sleep_ms(150); /* q1 is slow: q2 takes the job over */
    assert_int_equal(cairn_jobs_claim(q2, 1, 0, &j2, NULL), 1);
    assert_string_equal(j2.id, id);
    /* Both finish: exactly one result is stored, the first one. */
    assert_int_equal(cairn_jobs_complete(q2, &j2, "from-q2", 7, NULL), 1);
    assert_int_equal(cairn_jobs_complete(q1, &j1, "from-q1", 7, NULL), 0);
    char buf[256];
    assert_string_equal(hget(f, id, "result", buf, sizeof buf), "from-q2");
    assert_string_equal(hget(f, id, "worker", buf, sizeof buf), cairn_jobs_consumer(q2));
    assert_int_equal(pending_count(f), 0);
    cairn_job_clear(&j1);
    cairn_job_clear(&j2);
    cairn_jobs_close(q1);
    cairn_jobs_close(q2);
}

static void test_result_exists_not_recomputed(void **state)
{
    fixture *f = *state;
    NEED_REDIS(f);
    cairn_jobs_params p = params(f);
    cairn_jobs *q = open_q(f, &p);
    char id[CAIRN_JOB_ID_MAX + 1];
    assert_int_equal(cairn_jobs_submit(q, "echo", "again", 5, id, NULL), 0);
    /* A worker stored the result and crashed before XACK: simulate the stored result. */
    freeReplyObject(raw(f, "HSET cairn:job:%s status done result PRE", id));
    exec_ctx ctx = {0};
    assert_int_equal(cairn_jobs_process(q, 4, 200, run_echo, &ctx, NULL), 0);
    assert_int_equal(atomic_load(&ctx.calls), 0);
    assert_int_equal(pending_count(f), 0);
    char buf[64];
    assert_string_equal(hget(f, id, "result", buf, sizeof buf), "PRE");
    assert_true(metric(f, "cairn_jobs_duplicates_total") == 1);
    cairn_jobs_close(q);
}

static void test_poison_job_dead_letter(void **state)
{
    fixture *f = *state;
    NEED_REDIS(f);
    cairn_jobs_params p = params(f);
    p.claim_idle_ms = 100;
    p.max_deliveries = 3;
    cairn_jobs *q = open_q(f, &p);
    char id[CAIRN_JOB_ID_MAX + 1];
    assert_int_equal(cairn_jobs_submit(q, "echo", "poison", 6, id, NULL), 0);
    exec_ctx ctx = {.fail = true};
    int64_t deadline = cairn_now_ms() + 10000;
    while (raw_int(f, "XLEN cairn:jobs:dead") == 0 && cairn_now_ms() < deadline)
        assert_true(cairn_jobs_process(q, 1, 50, run_echo, &ctx, NULL) >= 0);
    assert_int_equal(raw_int(f, "XLEN cairn:jobs:dead"), 1);
    assert_int_equal(atomic_load(&ctx.calls), 3);
    assert_int_equal(pending_count(f), 0);
    redisReply *r = raw(f, "XRANGE cairn:jobs:dead - +");
    assert_int_equal(r->elements, 1);
    const redisReply *fl = r->element[0]->element[1];
    char reason[512] = "", code[64] = "", jid[80] = "";
    for (size_t i = 0; i + 1 < fl->elements; i += 2) {
        if (!strcmp(fl->element[i]->str, "reason"))
            snprintf(reason, sizeof reason, "%s", fl->element[i + 1]->str);
        if (!strcmp(fl->element[i]->str, "reason_code"))
            snprintf(code, sizeof code, "%s", fl->element[i + 1]->str);
        if (!strcmp(fl->element[i]->str, "id"))
            snprintf(jid, sizeof jid, "%s", fl->element[i + 1]->str);
    }
    freeReplyObject(r);
    assert_string_equal(code, "max_deliveries");
    assert_string_equal(jid, id);
    assert_non_null(strstr(reason, "boom"));
    assert_non_null(strstr(reason, "delivery 3 of 3"));
    char *json = NULL;
    cairn_job_state st;
    assert_int_equal(cairn_jobs_status_json(q, id, &json, &st, NULL), 0);
    assert_int_equal(st, CAIRN_JOB_FAILED);
    assert_non_null(strstr(json, "boom"));
    free(json);
    assert_true(metric(f, "cairn_jobs_dead_total{reason=\"max_deliveries\"}") == 1);
    /* Nothing left to run. */
    assert_int_equal(cairn_jobs_process(q, 1, 200, run_echo, &ctx, NULL), 0);
    assert_int_equal(atomic_load(&ctx.calls), 3);
    cairn_jobs_close(q);
}

static void test_crash_loop_dead_letter(void **state)
{
    fixture *f = *state;
    NEED_REDIS(f);
    cairn_jobs_params p = params(f);
    p.claim_idle_ms = 50;
    p.max_deliveries = 2;
    char id[CAIRN_JOB_ID_MAX + 1];
    cairn_jobs *q = open_q(f, &p);
    assert_int_equal(cairn_jobs_submit(q, "echo", "crash", 5, id, NULL), 0);
    cairn_jobs_close(q);
    /* Two workers in turn take the job and die with it. */
    for (int k = 0; k < 2; k++) {
        q = open_q(f, &p);
        cairn_job job;
        int n = 0;
        int64_t deadline = cairn_now_ms() + 5000;
        while (n == 0 && cairn_now_ms() < deadline)
            n = cairn_jobs_claim(q, 1, 100, &job, NULL);
        assert_int_equal(n, 1);
        assert_int_equal(job.deliveries, k + 1);
        cairn_job_clear(&job);
        cairn_jobs_close(q);
    }
    /* The third delivery is past max_deliveries: dead-lettered, never handed out. */
    q = open_q(f, &p);
    exec_ctx ctx = {0};
    int64_t deadline = cairn_now_ms() + 5000;
    while (raw_int(f, "XLEN cairn:jobs:dead") == 0 && cairn_now_ms() < deadline)
        assert_int_equal(cairn_jobs_process(q, 1, 50, run_echo, &ctx, NULL), 0);
    assert_int_equal(atomic_load(&ctx.calls), 0);
    assert_int_equal(raw_int(f, "XLEN cairn:jobs:dead"), 1);
    char buf[256];
    assert_string_equal(hget(f, id, "status", buf, sizeof buf), "failed");
    assert_non_null(strstr(hget(f, id, "error", buf, sizeof buf), "delivered 3 times"));
    assert_int_equal(pending_count(f), 0);
    cairn_jobs_close(q);
}

static void test_malformed_entries_dead_letter(void **state)
{
    fixture *f = *state;
    NEED_REDIS(f);
    cairn_jobs_params p = params(f);
    p.max_payload = 1024;
    cairn_jobs *q = open_q(f, &p);
    char big[2001];
    memset(big, 'b', 2000);
    big[2000] = 0;
    struct {
        const char *expect;
        redisReply *r;
    } cases[] = {
        {"missing_field", raw(f, "XADD cairn:jobs * type echo payload p")},
        {"bad_id", raw(f, "XADD cairn:jobs * id %s type echo payload p", "has space")},
        {"unknown_type", raw(f, "XADD cairn:jobs * id j3 type translate payload p")},
        {"oversized", raw(f, "XADD cairn:jobs * id j4 type echo payload %s", big)},
        {"not_utf8",
         raw(f, "XADD cairn:jobs * id j5 type echo payload %b", "ok\xff\xfe", (size_t)4)},
        {"bad_field", raw(f, "XADD cairn:jobs * id j6 id j6b type echo payload p")},
        {"bad_field", raw(f, "XADD cairn:jobs * id j7 type echo payload p submitted_at yesterday")},
        {"missing_field", raw(f, "XADD cairn:jobs * id j8 type echo")},
        {NULL, raw(f, "XADD cairn:jobs * id good type echo payload fine extra ignored")},
    };
    size_t n_cases = sizeof cases / sizeof cases[0];
    exec_ctx ctx = {0};
    int ran = 0;
    for (int i = 0; i < 5; i++) {
        int n = cairn_jobs_process(q, 16, 100, run_echo, &ctx, NULL);
        assert_true(n >= 0);
        ran += n;
    }
    assert_int_equal(ran, 1);
    assert_int_equal(atomic_load(&ctx.calls), 1);
    char buf[256];
    assert_string_equal(hget(f, "good", "result", buf, sizeof buf), "done:fine");
    assert_int_equal(pending_count(f), 0);
    assert_int_equal(raw_int(f, "XLEN cairn:jobs:dead"), (long long)n_cases - 1);

    /* Each dead letter names its source entry and the expected reason. */
    redisReply *d = raw(f, "XRANGE cairn:jobs:dead - +");
    for (size_t c = 0; c + 1 < n_cases; c++) {
        const char *src = cases[c].r->str;
        bool found = false;
        for (size_t i = 0; i < d->elements && !found; i++) {
            const redisReply *fl = d->element[i]->element[1];
            const char *s = NULL, *code = NULL, *reason = NULL;
            for (size_t k = 0; k + 1 < fl->elements; k += 2) {
                if (!strcmp(fl->element[k]->str, "source_entry")) s = fl->element[k + 1]->str;
                if (!strcmp(fl->element[k]->str, "reason_code")) code = fl->element[k + 1]->str;
                if (!strcmp(fl->element[k]->str, "reason")) reason = fl->element[k + 1]->str;
            }
            if (s && !strcmp(s, src)) {
                found = true;
                assert_non_null(code);
                if (strcmp(code, cases[c].expect))
                    fail_msg("case %zu: code %s, expected %s (%s)", c, code, cases[c].expect,
                             reason);
                assert_true(reason && strlen(reason) > 5);
            }
        }
        if (!found) fail_msg("case %zu (%s): no dead letter", c, cases[c].expect);
    }
    freeReplyObject(d);
    for (size_t c = 0; c < n_cases; c++)
        freeReplyObject(cases[c].r);
    /* A job with a valid id shows as failed with the reason. */
    char *json = NULL;
    cairn_job_state st;
    assert_int_equal(cairn_jobs_status_json(q, "j3", &json, &st, NULL), 0);
    assert_int_equal(st, CAIRN_JOB_FAILED);
    assert_non_null(strstr(json, "unknown job type 'translate'"));
    free(json);
    assert_true(metric(f, "cairn_jobs_dead_total{reason=\"missing_field\"}") == 2);
    assert_true(metric(f, "cairn_jobs_dead_total{reason=\"bad_field\"}") == 2);
    assert_true(metric(f, "cairn_jobs_dead_total{reason=\"oversized\"}") == 1);
    assert_true(metric(f, "cairn_jobs_dead_total{reason=\"not_utf8\"}") == 1);
    cairn_jobs_close(q);
}

/* ---- Concurrency and restarts ----------------------------------------------------------- */

enum { N_PAR = 200 };

typedef struct {
    fixture *f;
    cairn_jobs_params p;
    char ids[N_PAR][CAIRN_JOB_ID_MAX + 1];
    atomic_int wins[N_PAR];
    atomic_int calls[N_PAR];
    atomic_int total_wins;
    atomic_int stop;
    char winner[N_PAR][128];
    int per_worker[2];
} par_state;

typedef struct {
    par_state *s;
    int index;
} par_arg;

static int job_index(const par_state *s, const char *id)
{
    for (int i = 0; i < N_PAR; i++)
        if (!strcmp(s->ids[i], id)) return i;
    return -1;
}

static void *par_worker(void *varg)
{
    par_arg *a = varg;
    par_state *s = a->s;
    cairn_jobs *q = NULL;
    if (cairn_jobs_open(&q, &s->p, NULL)) return NULL;
    int64_t deadline = cairn_now_ms() + 60000;
    while (!atomic_load(&s->stop) && atomic_load(&s->total_wins) < N_PAR &&
           cairn_now_ms() < deadline) {
        cairn_job jobs[4];
        int n = cairn_jobs_claim(q, 4, 50, jobs, NULL);
        for (int i = 0; i < n; i++) {
            int k = job_index(s, jobs[i].id);
            if (k >= 0) atomic_fetch_add(&s->calls[k], 1);
            char res[64];
            int len = snprintf(res, sizeof res, "r:%s", jobs[i].payload);
            if (cairn_jobs_complete(q, &jobs[i], res, (size_t)len, NULL) == 1 && k >= 0) {
                atomic_fetch_add(&s->wins[k], 1);
                atomic_fetch_add(&s->total_wins, 1);
                snprintf(s->winner[k], sizeof s->winner[k], "%s", cairn_jobs_consumer(q));
                s->per_worker[a->index]++;
            }
            cairn_job_clear(&jobs[i]);
        }
    }
    cairn_jobs_close(q);
    return NULL;
}

static void test_two_consumers_exactly_one_result(void **state)
{
    fixture *f = *state;
    NEED_REDIS(f);
    par_state *s = calloc(1, sizeof *s);
    s->f = f;
    s->p = params(f);
    s->p.claim_idle_ms = 100; /* short: consumers also steal each other's entries */
    s->p.metrics = NULL;
    cairn_jobs *q = open_q(f, &s->p);
    for (int i = 0; i < N_PAR; i++) {
        char payload[16];
        snprintf(payload, sizeof payload, "%d", i);
        assert_int_equal(cairn_jobs_submit(q, "echo", payload, strlen(payload), s->ids[i], NULL),
                         0);
    }
    pthread_t t[2];
    par_arg args[2] = {{s, 0}, {s, 1}};
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, par_worker, &args[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&s->total_wins), N_PAR);
    assert_true(s->per_worker[0] > 0 && s->per_worker[1] > 0);
    for (int i = 0; i < N_PAR; i++) {
        assert_int_equal(atomic_load(&s->wins[i]), 1);
        assert_true(atomic_load(&s->calls[i]) >= 1);
        char buf[256], want[32];
        snprintf(want, sizeof want, "r:%d", i);
        assert_string_equal(hget(f, s->ids[i], "result", buf, sizeof buf), want);
        assert_string_equal(hget(f, s->ids[i], "worker", buf, sizeof buf), s->winner[i]);
    }
    assert_int_equal(pending_count(f), 0);
    assert_int_equal(raw_int(f, "XLEN cairn:jobs:dead"), 0);
    cairn_jobs_close(q);
    free(s);
}

typedef struct {
    fixture *f;
    cairn_jobs_params p;
    exec_ctx ctx;
    atomic_int stop;
    atomic_int errors;
} restart_state;

static void *restart_worker(void *varg)
{
    restart_state *s = varg;
    cairn_jobs *q = NULL;
    if (cairn_jobs_open(&q, &s->p, NULL)) return NULL;
    while (!atomic_load(&s->stop))
        if (cairn_jobs_process(q, 2, 50, run_echo, &s->ctx, NULL) < 0)
            atomic_fetch_add(&s->errors, 1);
    cairn_jobs_close(q);
    return NULL;
}

static void test_redis_restart_no_job_lost(void **state)
{
    fixture *f = *state;
    NEED_REDIS(f);
    enum { N1 = 80, N2 = 30 };
    restart_state *s = calloc(1, sizeof *s);
    s->f = f;
    s->p = params(f);
    s->p.metrics = NULL;
    s->p.claim_idle_ms = 1000;
    s->ctx.sleep_ms = 5;
    char(*ids)[CAIRN_JOB_ID_MAX + 1] = calloc(N1 + N2, sizeof *ids);
    cairn_jobs *q = open_q(f, &s->p);
    for (int i = 0; i < N1; i++) {
        char payload[16];
        snprintf(payload, sizeof payload, "a%d", i);
        assert_int_equal(cairn_jobs_submit(q, "echo", payload, strlen(payload), ids[i], NULL), 0);
    }
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, restart_worker, s), 0);
    int64_t deadline = cairn_now_ms() + 20000;
    while (atomic_load(&s->ctx.calls) < 20 && cairn_now_ms() < deadline)
        cairn_sleep_ms(2);
    assert_true(atomic_load(&s->ctx.calls) >= 20);

    /* Restart Redis mid-run: a clean shutdown writes the AOF, the restart reads it back. */
    redis_stop(f, SIGTERM);
    cairn_sleep_ms(300);
    redis_spawn(f);
    redis_wait_ready(f);
    int before = atomic_load(&s->ctx.calls);
    assert_true(before < N1); /* the restart did come mid-run */

    /* Submitting after the restart reconnects too. */
    for (int i = N1; i < N1 + N2; i++) {
        char payload[16];
        snprintf(payload, sizeof payload, "a%d", i);
        assert_int_equal(cairn_jobs_submit(q, "echo", payload, strlen(payload), ids[i], NULL), 0);
    }
    deadline = cairn_now_ms() + 30000;
    int done = 0;
    while (cairn_now_ms() < deadline) {
        done = 0;
        char buf[64];
        for (int i = 0; i < N1 + N2; i++)
            done += !strcmp(hget(f, ids[i], "status", buf, sizeof buf), "done");
        if (done == N1 + N2) break;
        cairn_sleep_ms(50);
    }
    atomic_store(&s->stop, 1);
    pthread_join(t, NULL);
    assert_int_equal(done, N1 + N2);
    for (int i = 0; i < N1 + N2; i++) {
        char buf[64], want[32];
        snprintf(want, sizeof want, "done:a%d", i);
        assert_string_equal(hget(f, ids[i], "result", buf, sizeof buf), want);
    }
    assert_int_equal(pending_count(f), 0);
    assert_int_equal(raw_int(f, "XLEN cairn:jobs:dead"), 0);
    cairn_jobs_close(q);
    free(ids);
    free(s);
}

/* ---- CLI -------------------------------------------------------------------------------- */

/* Runs cairn_cmd_job with stdout captured into out; returns its exit status. */
static int run_cli(char *out, size_t cap, int argc, char **argv)
{
    fflush(stdout);
    char path[] = "/tmp/cairn-jobs-out-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    int saved = dup(1);
    dup2(fd, 1);
    int rc = cairn_cmd_job(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    lseek(fd, 0, SEEK_SET);
    ssize_t n = read(fd, out, cap - 1);
    out[n > 0 ? n : 0] = 0;
    close(fd);
    unlink(path);
    return rc;
}

static void test_cli_submit_status(void **state)
{
    fixture *f = *state;
    NEED_REDIS(f);
    char doc[200], spec[200], out[4096];
    snprintf(doc, sizeof doc, "%s/doc.txt", f->dir);
    snprintf(spec, sizeof spec, "%s/spec.json", f->dir);
    FILE *fp = fopen(doc, "w");
    fputs("A long document about cairns.\n", fp);
    fclose(fp);
    fp = fopen(spec, "w");
    fputs("{\"type\": \"echo\", \"payload\": \"from spec\"}\n", fp);
    fclose(fp);

    char *a1[] = {"job", "submit", "--redis", f->url, doc};
    assert_int_equal(run_cli(out, sizeof out, 5, a1), 0);
    char id[64];
    assert_int_equal(sscanf(out, "%63s", id), 1);
    assert_int_equal(strlen(id), 32);
    char buf[256];
    assert_string_equal(hget(f, id, "type", buf, sizeof buf), "summarize");

    char *a2[] = {"job", "status", "--redis", f->url, id};
    assert_int_equal(run_cli(out, sizeof out, 5, a2), 0);
    assert_non_null(strstr(out, "\"status\":\"queued\""));
    assert_non_null(strstr(out, id));

    char *a3[] = {"job", "submit", "--redis", f->url, spec};
    assert_int_equal(run_cli(out, sizeof out, 5, a3), 0);
    assert_int_equal(sscanf(out, "%63s", id), 1);
    assert_string_equal(hget(f, id, "type", buf, sizeof buf), "echo");

    /* The queued job is a real job: a worker runs it. */
    cairn_jobs_params p = params(f);
    cairn_jobs *q = open_q(f, &p);
    exec_ctx ctx = {0};
    int ran = 0;
    for (int i = 0; i < 5 && ran < 2; i++)
        ran += cairn_jobs_process(q, 4, 100, run_echo, &ctx, NULL);
    assert_int_equal(ran, 2);
    cairn_jobs_close(q);
    char *a4[] = {"job", "status", "--redis", f->url, id};
    assert_int_equal(run_cli(out, sizeof out, 5, a4), 0);
    assert_non_null(strstr(out, "\"result\":\"done:from spec\""));

    setenv("CAIRN_REDIS_URL", f->url, 1);
    char *a5[] = {"job", "status", "0000"};
    assert_int_equal(run_cli(out, sizeof out, 3, a5), 1);
    unsetenv("CAIRN_REDIS_URL");
    char *a6[] = {"job", "submit"};
    assert_int_equal(run_cli(out, sizeof out, 2, a6), 2);
    char *a7[] = {"job", "submit", "--redis", f->url, "/nonexistent/file"};
    assert_int_equal(run_cli(out, sizeof out, 5, a7), 1);
}

int main(void)
{
    cairn_log_set_level(CAIRN_LOG_LEVEL_ERROR);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parse),
        cmocka_unit_test_setup_teardown(test_submit_claim_complete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_own_pending_reread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_consumer_autoclaim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_complete_race_one_result, setup, teardown),
        cmocka_unit_test_setup_teardown(test_result_exists_not_recomputed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_poison_job_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_loop_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_entries_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_consumers_exactly_one_result, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_restart_no_job_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_submit_status, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
