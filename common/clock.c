/* common/clock.c — monotonic time, wall-clock time and sleeping. */
#include "common/clock.h"

#include <errno.h>
#include <stdio.h>
#include <time.h>

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * CAIRN_NS_PER_SEC + ts.tv_nsec;
}

int64_t cairn_now_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}
int64_t cairn_now_us(void)
{
    return cairn_now_ns() / CAIRN_NS_PER_US;
}
int64_t cairn_now_ms(void)
{
    return cairn_now_ns() / CAIRN_NS_PER_MS;
}
double cairn_now_sec(void)
{
    return (double)cairn_now_ns() / 1e9;
}
int64_t cairn_wall_ns(void)
{
    return clock_ns(CLOCK_REALTIME);
}

size_t cairn_format_iso8601(int64_t wall_ns, char *buf, size_t cap)
{
    if (cap < 25) {
        if (cap > 0) buf[0] = '\0';
        return 0;
    }
    /* Floor division so that times before the epoch still format correctly. */
    int64_t sec = wall_ns / CAIRN_NS_PER_SEC, rem = wall_ns % CAIRN_NS_PER_SEC;
    if (rem < 0) {
        rem += CAIRN_NS_PER_SEC;
        sec -= 1;
    }
    time_t t = (time_t)sec;
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        buf[0] = '\0';
        return 0;
    }
    int n =
        snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(rem / CAIRN_NS_PER_MS));
    if (n < 0 || (size_t)n >= cap) { /* years beyond 9999 */
        buf[0] = '\0';
        return 0;
    }
    return (size_t)n;
}

size_t cairn_wall_iso8601(char *buf, size_t cap)
{
    return cairn_format_iso8601(cairn_wall_ns(), buf, cap);
}

void cairn_sleep_ns(int64_t ns)
{
    if (ns <= 0) return;
    struct timespec req = {.tv_sec = ns / CAIRN_NS_PER_SEC, .tv_nsec = ns % CAIRN_NS_PER_SEC};
    while (nanosleep(&req, &req) != 0 && errno == EINTR) {
    }
}

void cairn_sleep_ms(int64_t ms)
{
    cairn_sleep_ns(ms * CAIRN_NS_PER_MS);
}
