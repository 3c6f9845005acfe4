/*
 * common/clock.h — monotonic time, wall-clock time and sleeping.
 *
 * Durations and deadlines use the monotonic clock (cairn_now_*), which never
 * jumps when the system time is set; only timestamps meant for people or logs
 * use the wall clock (cairn_wall_*). All functions are thread-safe.
 */
#ifndef CAIRN_COMMON_CLOCK_H
#define CAIRN_COMMON_CLOCK_H

#include <stddef.h>
#include <stdint.h>

#define CAIRN_NS_PER_US  1000LL
#define CAIRN_NS_PER_MS  1000000LL
#define CAIRN_NS_PER_SEC 1000000000LL

/* Monotonic time since an unspecified start point (CLOCK_MONOTONIC). */
int64_t cairn_now_ns(void);
int64_t cairn_now_us(void);
int64_t cairn_now_ms(void);
double cairn_now_sec(void);

/* Wall-clock time: nanoseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t cairn_wall_ns(void);

/*
 * Writes wall_ns (ns since the epoch) as ISO-8601 UTC with milliseconds,
 * "2026-11-23T19:50:00.123Z" (24 characters), NUL-terminated, into buf.
 * Returns the length written, or 0 if cap < 25 (buf is then left empty when cap > 0).
 */
size_t cairn_format_iso8601(int64_t wall_ns, char *buf, size_t cap);

/* cairn_format_iso8601 of the current wall-clock time. */
size_t cairn_wall_iso8601(char *buf, size_t cap);

/* Sleeps at least ns / ms (restarting after signals). Values <= 0 return at once. */
void cairn_sleep_ns(int64_t ns);
void cairn_sleep_ms(int64_t ms);

#endif
