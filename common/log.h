/*
 * common/log.h — the process logger: one line per event, message plus key=value fields.
 *
 *   CAIRN_LOG_INFO("listening", "port=%d threads=%d", port, n);
 *   → 2026-11-23T19:50:00.123Z info  http listening port=8080 threads=4
 *
 * The fields argument is a printf format of space-separated key=value pairs; each
 * pair is formatted on its own, so a value that comes out containing spaces, quotes,
 * '=' or control characters is written quoted ("a b", "say \"hi\""). A file that
 * defines CAIRN_LOG_TAG (a string literal, e.g. "http") before including this header
 * gets the tag after the level on every line it logs.
 *
 * Lines are built in a fixed stack buffer (no heap allocation; longer lines are cut
 * and end in "...") and written with a single write(2), so lines from concurrent
 * threads never interleave. Every function here is thread-safe. The level and the
 * output descriptor are the logger's only state (process-wide).
 */
#ifndef CAIRN_COMMON_LOG_H
#define CAIRN_COMMON_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/error.h"

typedef enum {
    CAIRN_LOG_LEVEL_DEBUG = 0,
    CAIRN_LOG_LEVEL_INFO = 1,
    CAIRN_LOG_LEVEL_WARN = 2,
    CAIRN_LOG_LEVEL_ERROR = 3,
    CAIRN_LOG_LEVEL_OFF = 4, /* nothing is written */
} cairn_log_level;

/* The longest line written, newline included; longer lines are truncated. */
#define CAIRN_LOG_LINE_MAX 4096

/* Lines below level are dropped. The default is info. */
void cairn_log_set_level(cairn_log_level level);
cairn_log_level cairn_log_get_level(void);

/*
 * Parses "debug", "info", "warn" (or "warning"), "error" or "off", any case, into *out.
 * Returns 0, or CAIRN_EINVAL with a message naming the bad value.
 */
int cairn_log_level_parse(const char *s, cairn_log_level *out, cairn_error *err);

/* "debug", "info", "warn", "error", "off"; static. */
const char *cairn_log_level_name(cairn_log_level level);

/*
 * Sends lines to fd (default 2, stderr). The logger does not own fd and never closes it.
 * cairn_log_set_file flushes f and uses its descriptor; f must outlive its use.
 */
void cairn_log_set_fd(int fd);
void cairn_log_set_file(FILE *f);

/* Whether a line at level would be written; lets callers skip expensive arguments. */
extern int cairn__log_level;
static inline bool cairn_log_enabled(cairn_log_level level)
{
    return (int)level >= __atomic_load_n(&cairn__log_level, __ATOMIC_RELAXED);
}

/*
 * Writes one line: timestamp, level, tag (may be NULL), msg (written as is, control
 * characters escaped) and the fields formatted from the printf-style fields format.
 * Conversions supported in fields: those of printf except %n and wide strings.
 */
void cairn_log_write(cairn_log_level level, const char *tag, const char *msg, const char *fields,
                     ...) __attribute__((format(printf, 4, 5)));
void cairn_log_writev(cairn_log_level level, const char *tag, const char *msg, const char *fields,
                      va_list ap) __attribute__((format(printf, 4, 0)));

#ifndef CAIRN_LOG_TAG
#define CAIRN_LOG_TAG NULL
#endif

/* CAIRN_LOG_<LEVEL>(msg [, "k=%d k2=%s", v, v2]). The fields format must be a literal. */
#define CAIRN__LOG(lvl, msg, ...)                                                                  \
    do {                                                                                           \
        if (cairn_log_enabled(lvl)) cairn_log_write(lvl, CAIRN_LOG_TAG, msg, " " __VA_ARGS__);     \
    } while (0)
#define CAIRN_LOG_DEBUG(msg, ...) CAIRN__LOG(CAIRN_LOG_LEVEL_DEBUG, msg, __VA_ARGS__)
#define CAIRN_LOG_INFO(msg, ...)  CAIRN__LOG(CAIRN_LOG_LEVEL_INFO, msg, __VA_ARGS__)
#define CAIRN_LOG_WARN(msg, ...)  CAIRN__LOG(CAIRN_LOG_LEVEL_WARN, msg, __VA_ARGS__)
#define CAIRN_LOG_ERROR(msg, ...) CAIRN__LOG(CAIRN_LOG_LEVEL_ERROR, msg, __VA_ARGS__)

#endif
