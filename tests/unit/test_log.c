/* tests/unit/test_log.c — log line format, quoting, levels, truncation, concurrency. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CAIRN_LOG_TAG "http"
#include "common/clock.h"
#include "common/log.h"

typedef struct {
    int rd, wr;
} pipe_fds;

static int setup(void **state)
{
    pipe_fds *p = malloc(sizeof *p);
    int fds[2];
    if (!p || pipe(fds) != 0) return -1;
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    p->rd = fds[0];
    p->wr = fds[1];
    cairn_log_set_fd(p->wr);
    cairn_log_set_level(CAIRN_LOG_LEVEL_DEBUG);
    *state = p;
    return 0;
}

static int teardown(void **state)
{
    pipe_fds *p = *state;
    cairn_log_set_fd(2);
    cairn_log_set_level(CAIRN_LOG_LEVEL_INFO);
    close(p->rd);
    close(p->wr);
    free(p);
    return 0;
}

/* Everything written so far (the logger writes synchronously). */
static size_t drain(pipe_fds *p, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t r = read(p->rd, buf + n, cap - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return n;
}

/* Checks the 24-character timestamp and returns what follows it. */
static const char *after_timestamp(const char *line)
{
    regex_t re;
    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z ",
                             REG_EXTENDED),
                     0);
    int m = regexec(&re, line, 0, NULL, 0);
    regfree(&re);
    assert_int_equal(m, 0);
    return line + 24;
}

static void test_line_format(void **state)
{
    char before[32], after[32], buf[8192];
    cairn_wall_iso8601(before, sizeof before);
    int port = 8080, n = 4;
    CAIRN_LOG_INFO("listening", "port=%d threads=%d", port, n);
    cairn_wall_iso8601(after, sizeof after);
    drain(*state, buf, sizeof buf);
    assert_string_equal(after_timestamp(buf), " info  http listening port=8080 threads=4\n");
    /* ISO-8601 timestamps sort as text: the line's lies between the two taken around it. */
    assert_true(strncmp(before, buf, 24) <= 0 && strncmp(buf, after, 24) <= 0);
}

static void test_levels_and_no_fields(void **state)
{
    char buf[8192];
    CAIRN_LOG_DEBUG("d");
    CAIRN_LOG_WARN("w");
    CAIRN_LOG_ERROR("e", "code=%d", -3);
    cairn_log_write(CAIRN_LOG_LEVEL_INFO, NULL, "untagged", NULL);
    drain(*state, buf, sizeof buf);
    char *l1 = buf, *l2 = strchr(l1, '\n') + 1, *l3 = strchr(l2, '\n') + 1,
         *l4 = strchr(l3, '\n') + 1;
    assert_memory_equal(after_timestamp(l1), " debug http d\n", 14);
    assert_memory_equal(after_timestamp(l2), " warn  http w\n", 14);
    assert_memory_equal(after_timestamp(l3), " error http e code=-3\n", 22);
    assert_string_equal(after_timestamp(l4), " info  untagged\n");
}

static void test_level_filter(void **state)
{
    char buf[8192];
    cairn_log_set_level(CAIRN_LOG_LEVEL_WARN);
    assert_false(cairn_log_enabled(CAIRN_LOG_LEVEL_INFO));
    assert_true(cairn_log_enabled(CAIRN_LOG_LEVEL_ERROR));
    CAIRN_LOG_INFO("dropped", "x=%d", 1);
    CAIRN_LOG_DEBUG("dropped too");
    assert_int_equal(drain(*state, buf, sizeof buf), 0);
    CAIRN_LOG_WARN("kept");
    assert_true(drain(*state, buf, sizeof buf) > 0);
    assert_string_equal(after_timestamp(buf), " warn  http kept\n");
    cairn_log_set_level(CAIRN_LOG_LEVEL_OFF);
    CAIRN_LOG_ERROR("silenced");
    assert_int_equal(drain(*state, buf, sizeof buf), 0);
    cairn_log_set_level(CAIRN_LOG_LEVEL_DEBUG);
}

static void test_quoting(void **state)
{
    char buf[8192];
    CAIRN_LOG_INFO("q", "plain=%s spaced=%s quoted=%s empty=%s eq=%s nl=%s bs=%s", "abc", "a b",
                   "say \"hi\"", "", "k=v", "a\nb", "c:\\tmp");
    drain(*state, buf, sizeof buf);
    assert_string_equal(
        after_timestamp(buf),
        " info  http q plain=abc spaced=\"a b\" quoted=\"say \\\"hi\\\"\" empty=\"\" "
        "eq=\"k=v\" nl=\"a\\nb\" bs=\"c:\\\\tmp\"\n");
    /* Control characters in the message are escaped so one event stays one line. */
    CAIRN_LOG_INFO("two\nlines\x01");
    drain(*state, buf, sizeof buf);
    assert_string_equal(after_timestamp(buf), " info  http two\\nlines\\x01\n");
}

static void test_conversions_match_printf(void **state)
{
    char buf[8192], expect[512];
    size_t z = 123456789;
    long long ll = -9000000000LL;
    void *ptr = &z;
    CAIRN_LOG_INFO("c",
                   "z=%zu ll=%lld f=%.2f w=%5d|x left=%-4s| hex=%#x pct=%d%% star=%*d p=%p ch=%c",
                   z, ll, 3.14159, 42, "ab", 255u, 50, 6, 7, ptr, 'Q');
    drain(*state, buf, sizeof buf);
    /* Each field on its own through printf; values with spaces come out quoted. */
    char w[16], left[16], star[16];
    snprintf(w, sizeof w, "%5d|x", 42);
    snprintf(left, sizeof left, "%-4s|", "ab");
    snprintf(star, sizeof star, "%*d", 6, 7);
    snprintf(expect, sizeof expect,
             " info  http c z=%zu ll=%lld f=%.2f w=\"%s\" left=\"%s\" hex=%#x pct=%d%% star=\"%s\" "
             "p=%p ch=%c\n",
             z, ll, 3.14159, w, left, 255u, 50, star, ptr, 'Q');
    assert_string_equal(after_timestamp(buf), expect);
}

static void test_long_line_truncated(void **state)
{
    static char big[6000], buf[16384];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CAIRN_LOG_INFO("big", "a=%s b=%s c=%s d=%s e=%s f=%s", big, big, big, big, big, big);
    size_t n = drain(*state, buf, sizeof buf);
    assert_true(n <= CAIRN_LOG_LINE_MAX);
    assert_true(n > 2000);
    assert_string_equal(buf + n - 4, "...\n");
    assert_null(memchr(buf, '\n', n - 1));
}

static void test_errno_preserved(void **state)
{
    char buf[512];
    errno = ERANGE;
    CAIRN_LOG_INFO("errno", "e=%d", 1);
    assert_int_equal(errno, ERANGE);
    drain(*state, buf, sizeof buf);
}

static void test_level_parse(void **state)
{
    (void)state;
    cairn_log_level l;
    cairn_error err;
    assert_int_equal(cairn_log_level_parse("DEBUG", &l, &err), 0);
    assert_int_equal(l, CAIRN_LOG_LEVEL_DEBUG);
    assert_int_equal(cairn_log_level_parse("warning", &l, &err), 0);
    assert_int_equal(l, CAIRN_LOG_LEVEL_WARN);
    assert_int_equal(cairn_log_level_parse("Error", &l, &err), 0);
    assert_int_equal(l, CAIRN_LOG_LEVEL_ERROR);
    assert_int_equal(cairn_log_level_parse("off", &l, &err), 0);
    assert_int_equal(l, CAIRN_LOG_LEVEL_OFF);
    l = CAIRN_LOG_LEVEL_INFO;
    assert_int_equal(cairn_log_level_parse("verbose", &l, &err), CAIRN_EINVAL);
    assert_int_equal(l, CAIRN_LOG_LEVEL_INFO);
    assert_non_null(strstr(err.msg, "'verbose'"));
    assert_string_equal(cairn_log_level_name(CAIRN_LOG_LEVEL_WARN), "warn");
}

/* ---- Concurrency: whole lines, none lost ----------------------------------------------- */

#define LOG_THREADS 4
#define LOG_LINES   500

static void *log_thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    for (int i = 0; i < LOG_LINES; i++)
        CAIRN_LOG_INFO("concurrent", "thread=%d i=%d pad=%s", t, i,
                       "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    return NULL;
}

static void test_concurrent_lines_do_not_interleave(void **state)
{
    (void)state;
    char path[] = "/tmp/cairn_test_log_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fcntl(fd, F_SETFL, O_APPEND);
    cairn_log_set_fd(fd);
    pthread_t th[LOG_THREADS];
    for (int t = 0; t < LOG_THREADS; t++)
        pthread_create(&th[t], NULL, log_thread, (void *)(intptr_t)t);
    for (int t = 0; t < LOG_THREADS; t++)
        pthread_join(th[t], NULL);
    pipe_fds *p = *state;
    cairn_log_set_fd(p->wr);

    off_t size = lseek(fd, 0, SEEK_END);
    char *text = malloc((size_t)size + 1);
    assert_int_equal(pread(fd, text, (size_t)size, 0), size);
    text[size] = '\0';
    close(fd);
    static unsigned char seen[LOG_THREADS][LOG_LINES];
    int lines = 0;
    for (char *line = text, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = '\0';
        int t = -1, i = -1, consumed = 0;
        const char *rest = after_timestamp(line);
        assert_int_equal(
            sscanf(rest, " info  http concurrent thread=%d i=%d pad=%*[x]%n", &t, &i, &consumed),
            2);
        assert_int_equal(rest[consumed], '\0');
        assert_true(t >= 0 && t < LOG_THREADS && i >= 0 && i < LOG_LINES);
        seen[t][i]++;
        lines++;
    }
    assert_int_equal(lines, LOG_THREADS * LOG_LINES);
    for (int t = 0; t < LOG_THREADS; t++)
        for (int i = 0; i < LOG_LINES; i++)
            assert_int_equal(seen[t][i], 1);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_line_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_levels_and_no_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_level_filter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quoting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conversions_match_printf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_line_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errno_preserved, setup, teardown),
        cmocka_unit_test(test_level_parse),
        cmocka_unit_test_setup_teardown(test_concurrent_lines_do_not_interleave, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
