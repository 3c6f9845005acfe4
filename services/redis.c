/*
 * services/redis.c — a reconnecting synchronous Redis client over hiredis.
 */
#define CAIRN_LOG_TAG "redis"
#include "services/redis.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/clock.h"
#include "common/log.h"

struct cairn_redis {
    cairn_redis_addr addr;
    cairn_redis_params p;
    redisContext *c; /* NULL while disconnected */
    uint64_t generation;
};

cairn_redis_params cairn_redis_default_params(void)
{
    return (cairn_redis_params){
        .connect_timeout_ms = 2000,
        .io_timeout_ms = 5000,
        .reconnect_timeout_ms = 30000,
        .backoff_initial_ms = 50,
        .backoff_max_ms = 2000,
    };
}

/* ---- URL -------------------------------------------------------------------------------- */

static int parse_int_part(const char *s, size_t n, long lo, long hi, long *out)
{
    if (n == 0 || n > 10) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cairn_redis_parse_url(const char *url, cairn_redis_addr *out, cairn_error *err)
{
    static const char scheme[] = "redis://";
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url || strncmp(url, scheme, sizeof scheme - 1) != 0)
        return cairn_errorf(err, CAIRN_EINVAL, "redis URL '%s': expected redis://host[:port][/db]",
                            url ? url : "");
    const char *s = url + sizeof scheme - 1;
    const char *end = s + strlen(s);
    const char *slash = memchr(s, '/', (size_t)(end - s));
    const char *hostpart_end = slash ? slash : end;
    const char *at = NULL;
    for (const char *p = s; p < hostpart_end; p++)
        if (*p == '@') at = p; /* the last '@' ends the userinfo */
    if (at) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        size_t ulen = colon ? (size_t)(colon - s) : 0;
        const char *pw = colon ? colon + 1 : s;
        size_t plen = (size_t)(at - pw);
        if (ulen >= sizeof out->user || plen >= sizeof out->password)
            return cairn_errorf(err, CAIRN_EINVAL, "redis URL: user or password too long");
        memcpy(out->user, s, ulen);
        memcpy(out->password, pw, plen);
        s = at + 1;
    }
    const char *colon = memchr(s, ':', (size_t)(hostpart_end - s));
    const char *host_end = colon ? colon : hostpart_end;
    size_t hlen = (size_t)(host_end - s);
    if (hlen == 0 || hlen >= sizeof out->host)
        return cairn_errorf(err, CAIRN_EINVAL, "redis URL '%s': missing or too long host", url);
    memcpy(out->host, s, hlen);
    long v;
    if (colon) {
        if (parse_int_part(colon + 1, (size_t)(hostpart_end - colon - 1), 1, 65535, &v))
            return cairn_errorf(err, CAIRN_EINVAL, "redis URL '%s': port must be 1..65535", url);
        out->port = (int)v;
    }
    if (slash && slash + 1 < end) {
        if (parse_int_part(slash + 1, (size_t)(end - slash - 1), 0, 1000000, &v))
            return cairn_errorf(err, CAIRN_EINVAL, "redis URL '%s': db must be an integer", url);
        out->db = (int)v;
    }
    return 0;
}

/* ---- Connection ------------------------------------------------------------------------- */

static struct timeval ms_to_tv(int64_t ms)
{
    if (ms < 1) ms = 1;
    return (struct timeval){.tv_sec = (time_t)(ms / 1000),
                            .tv_usec = (suseconds_t)(ms % 1000) * 1000};
}

static void drop(cairn_redis *r)
{
    if (r->c) redisFree(r->c);
    r->c = NULL;
}

/* Sends a setup command on a fresh connection; 0, CAIRN_EAUTH/EINVAL (fatal) or CAIRN_ENET. */
static int setup_cmd(cairn_redis *r, int argc, const char **argv, int fatal_code, cairn_error *err)
{
    redisReply *rep = redisCommandArgv(r->c, argc, argv, NULL);
    if (!rep) return cairn_errorf(err, CAIRN_ENET, "redis %s: %s", argv[0], r->c->errstr);
    int rc = 0;
    if (rep->type == REDIS_REPLY_ERROR) {
        if (strncmp(rep->str, "LOADING", 7) == 0)
            rc = cairn_errorf(err, CAIRN_ENET, "redis %s: %s", argv[0], rep->str);
        else
            rc = cairn_errorf(err, fatal_code, "redis %s: %s", argv[0], rep->str);
    }
    freeReplyObject(rep);
    return rc;
}

/* One connection attempt: 0, CAIRN_ENET (retry) or a fatal code (bad credentials / db). */
static int connect_once(cairn_redis *r, cairn_error *err)
{
    drop(r);
    r->c = redisConnectWithTimeout(r->addr.host, r->addr.port, ms_to_tv(r->p.connect_timeout_ms));
    if (!r->c) return cairn_errorf(err, CAIRN_ENOMEM, "redis: out of memory");
    if (r->c->err) {
        int rc = cairn_errorf(err, CAIRN_ENET, "redis %s:%d: %s", r->addr.host, r->addr.port,
                              r->c->errstr);
        drop(r);
        return rc;
    }
    redisSetTimeout(r->c, ms_to_tv(r->p.io_timeout_ms));
    int rc = 0;
    if (r->addr.password[0]) {
        const char *a[3] = {"AUTH", r->addr.user, r->addr.password};
        rc = r->addr.user[0]
                 ? setup_cmd(r, 3, a, CAIRN_EAUTH, err)
                 : setup_cmd(r, 2, (const char *[]){"AUTH", r->addr.password}, CAIRN_EAUTH, err);
    }
    if (!rc && r->addr.db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", r->addr.db);
        rc = setup_cmd(r, 2, (const char *[]){"SELECT", db}, CAIRN_EINVAL, err);
    }
    /* PING detects a server that accepts connections but still loads its data set. */
    if (!rc) rc = setup_cmd(r, 1, (const char *[]){"PING"}, CAIRN_ENET, err);
    if (rc) drop(r);
    return rc;
}

/* Connects with backoff until connected, a fatal error, or the reconnect deadline. */
static int ensure_connected(cairn_redis *r, cairn_error *err)
{
    if (r->c) return 0;
    int64_t deadline = cairn_now_ms() + r->p.reconnect_timeout_ms;
    int64_t wait = r->p.backoff_initial_ms > 0 ? r->p.backoff_initial_ms : 1;
    for (int attempt = 0;; attempt++) {
        int rc = connect_once(r, err);
        if (rc == 0) {
            r->generation++;
            if (r->generation > 1)
                CAIRN_LOG_INFO("reconnected", "host=%s port=%d attempts=%d", r->addr.host,
                               r->addr.port, attempt + 1);
            return 0;
        }
        if (rc != CAIRN_ENET) return rc;
        int64_t now = cairn_now_ms();
        if (now >= deadline) return rc;
        if (attempt == 0)
            CAIRN_LOG_WARN("redis unreachable, retrying", "error=%s", err ? err->msg : "");
        int64_t w = wait < deadline - now ? wait : deadline - now;
        cairn_sleep_ms(w);
        wait = wait * 2 > r->p.backoff_max_ms ? r->p.backoff_max_ms : wait * 2;
    }
}

int cairn_redis_open(cairn_redis **out, const char *url, const cairn_redis_params *p,
                     cairn_error *err)
{
    *out = NULL;
    cairn_redis *r = calloc(1, sizeof *r);
    if (!r) return cairn_errorf(err, CAIRN_ENOMEM, "redis: out of memory");
    r->p = p ? *p : cairn_redis_default_params();
    int rc = cairn_redis_parse_url(url, &r->addr, err);
    if (!rc) rc = ensure_connected(r, err);
    if (rc) {
        cairn_redis_close(r);
        return rc;
    }
    *out = r;
    return 0;
}

void cairn_redis_close(cairn_redis *r)
{
    if (!r) return;
    drop(r);
    free(r);
}

void cairn_redis_disconnect(cairn_redis *r)
{
    drop(r);
}

uint64_t cairn_redis_generation(const cairn_redis *r)
{
    return r->generation;
}

int cairn_redis_is_error(const redisReply *reply, const char *prefix)
{
    return reply && reply->type == REDIS_REPLY_ERROR && reply->str &&
           strncmp(reply->str, prefix, strlen(prefix)) == 0;
}

int cairn_redis_cmd(cairn_redis *r, redisReply **out, int block_ms, int argc, const char **argv,
                    const size_t *argvlen, cairn_error *err)
{
    *out = NULL;
    int64_t deadline = cairn_now_ms() + r->p.reconnect_timeout_ms;
    int64_t wait = r->p.backoff_initial_ms > 0 ? r->p.backoff_initial_ms : 1;
    for (;;) {
        int rc = ensure_connected(r, err);
        if (rc) return rc;
        redisSetTimeout(r->c,
                        ms_to_tv((int64_t)r->p.io_timeout_ms + (block_ms > 0 ? block_ms : 0)));
        redisReply *rep = redisCommandArgv(r->c, argc, argv, argvlen);
        if (rep && !cairn_redis_is_error(rep, "LOADING")) {
            *out = rep;
            return 0;
        }
        if (rep) {
            cairn_errorf(err, CAIRN_ENET, "redis %s: %s", argv[0], rep->str);
            freeReplyObject(rep);
        } else {
            if (r->c->err == REDIS_ERR_OOM)
                return cairn_errorf(err, CAIRN_ENOMEM, "redis: out of memory");
            cairn_errorf(err, CAIRN_ENET, "redis %s: %s", argv[0], r->c->errstr);
        }
        CAIRN_LOG_WARN("redis command failed, reconnecting", "command=%s error=%s", argv[0],
                       err ? err->msg : "");
        drop(r);
        int64_t now = cairn_now_ms();
        if (now >= deadline) return CAIRN_ENET;
        cairn_sleep_ms(wait < deadline - now ? wait : deadline - now);
        wait = wait * 2 > r->p.backoff_max_ms ? r->p.backoff_max_ms : wait * 2;
    }
}
