/* tests/unit/test_clock.c — monotonic time, ISO-8601 formatting, sleep. */
#define _GNU_SOURCE /* strptime */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <time.h>

#include "common/clock.h"

static void test_monotonic_advances_with_sleep(void **state)
{
    (void)state;
    int64_t a = cairn_now_ns();
    int64_t ms0 = cairn_now_ms();
    cairn_sleep_ms(20);
    int64_t b = cairn_now_ns();
    assert_true(b - a >= 20 * CAIRN_NS_PER_MS);
    assert_true(b - a < 5000 * CAIRN_NS_PER_MS);
    assert_true(cairn_now_ms() - ms0 >= 20);
    /* The coarser units are the same clock. */
    int64_t ns = cairn_now_ns(), us = cairn_now_us();
    assert_true(us >= ns / 1000 && us - ns / 1000 < 1000000);
    double s = cairn_now_sec();
    assert_true(s >= (double)ns / 1e9 && s - (double)ns / 1e9 < 1.0);
}

static void test_sleep_zero_and_negative_return(void **state)
{
    (void)state;
    int64_t a = cairn_now_ns();
    cairn_sleep_ns(0);
    cairn_sleep_ms(-5);
    assert_true(cairn_now_ns() - a < 100 * CAIRN_NS_PER_MS);
}

static void test_iso8601_known_instants(void **state)
{
    (void)state;
    char buf[32];
    assert_int_equal(cairn_format_iso8601(0, buf, sizeof buf), 24);
    assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
    /* 2026-11-23T19:50:00Z is 1795463400 s after the epoch (Python's datetime agrees). */
    cairn_format_iso8601(1795463400LL * CAIRN_NS_PER_SEC + 123456789, buf, sizeof buf);
    assert_string_equal(buf, "2026-11-23T19:50:00.123Z");
    /* One nanosecond before the epoch floors to the previous millisecond. */
    cairn_format_iso8601(-1, buf, sizeof buf);
    assert_string_equal(buf, "1969-12-31T23:59:59.999Z");
}

static void test_iso8601_small_buffer(void **state)
{
    (void)state;
    char buf[24];
    memset(buf, 'x', sizeof buf);
    assert_int_equal(cairn_format_iso8601(0, buf, sizeof buf), 0);
    assert_int_equal(buf[0], '\0');
}

static void test_wall_clock_matches_time(void **state)
{
    (void)state;
    char buf[32];
    time_t before = time(NULL);
    assert_int_equal(cairn_wall_iso8601(buf, sizeof buf), 24);
    time_t after = time(NULL);
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    char *end = strptime(buf, "%Y-%m-%dT%H:%M:%S", &tm);
    assert_non_null(end);
    assert_string_equal(end + 4, "Z");
    time_t t = timegm(&tm);
    assert_true(t >= before && t <= after);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_monotonic_advances_with_sleep),
        cmocka_unit_test(test_sleep_zero_and_negative_return),
        cmocka_unit_test(test_iso8601_known_instants),
        cmocka_unit_test(test_iso8601_small_buffer),
        cmocka_unit_test(test_wall_clock_matches_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
