/*
 * services/redis.h — a thin, reconnecting client over hiredis (synchronous).
 *
 * A cairn_redis holds at most one connection to the server named by a URL
 * (redis://[[user]:password@]host[:port][/db]). Commands are sent as binary-safe
 * argument vectors. When the connection is lost (I/O error, server restart) or the
 * server answers LOADING while it reads its AOF back, cairn_redis_cmd reconnects with
 * exponential backoff and sends the command again, until reconnect_timeout_ms has
 * passed; callers therefore send only commands that are safe to repeat (the job queue
 * makes every write idempotent by job id). Each successful reconnect bumps a
 * generation number, so that callers can redo per-connection work.
 *
 * A handle is not thread-safe: one owner thread at a time (one handle per worker).
 */
#ifndef CAIRN_SERVICES_REDIS_H
#define CAIRN_SERVICES_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

typedef struct {
    char host[256];
    int port;           /* default 6379 */
    int db;             /* default 0 */
    char user[128];     /* empty: none (AUTH password only) */
    char password[256]; /* empty: no AUTH */
} cairn_redis_addr;

/*
 * Parses redis://[[user]:password@]host[:port][/db] into *out (userinfo and host must
 * not be percent-encoded). Returns 0, or CAIRN_EINVAL naming the bad part. Thread-safe.
 */
int cairn_redis_parse_url(const char *url, cairn_redis_addr *out, cairn_error *err);

typedef struct {
    int connect_timeout_ms;   /* one connection attempt; default 2000 */
    int io_timeout_ms;        /* one reply, besides a command's own blocking time; default 5000 */
    int reconnect_timeout_ms; /* give up reconnecting after this long; default 30000 */
    int backoff_initial_ms;   /* first wait between attempts; default 50, doubled each time */
    int backoff_max_ms;       /* cap on the wait; default 2000 */
} cairn_redis_params;

cairn_redis_params cairn_redis_default_params(void);

typedef struct cairn_redis cairn_redis;

/*
 * Parses url and connects once (retrying with backoff up to reconnect_timeout_ms).
 * Returns 0 and a handle the caller frees with cairn_redis_close; CAIRN_EINVAL for a
 * bad URL; CAIRN_ENET when the server cannot be reached; CAIRN_EAUTH when AUTH fails.
 */
int cairn_redis_open(cairn_redis **out, const char *url, const cairn_redis_params *p,
                     cairn_error *err);

/* Closes the connection and frees the handle. NULL is a no-op. */
void cairn_redis_close(cairn_redis *r);

/*
 * Sends argv[0..argc) (argvlen[i] bytes each; argvlen NULL: NUL-terminated strings) and
 * waits for the reply, allowing block_ms extra for a blocking command (XREADGROUP BLOCK).
 * Returns 0 and the reply in *out (the caller frees it with freeReplyObject; it may be
 * an error reply, which the caller inspects), or CAIRN_ENET when the server stayed
 * unreachable for reconnect_timeout_ms, or CAIRN_ENOMEM.
 */
int cairn_redis_cmd(cairn_redis *r, redisReply **out, int block_ms, int argc, const char **argv,
                    const size_t *argvlen, cairn_error *err);

/* The connection generation: 1 after open, +1 on every reconnect. */
uint64_t cairn_redis_generation(const cairn_redis *r);

/* Drops the connection now (the next command reconnects); for tests and fault handling. */
void cairn_redis_disconnect(cairn_redis *r);

/* Whether reply is an error reply whose text starts with prefix (e.g. "NOGROUP"). */
int cairn_redis_is_error(const redisReply *reply, const char *prefix);

#endif
