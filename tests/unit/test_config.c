/* tests/unit/test_config.c — schema, sources and precedence, every error message path, help. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"

static const cairn_config_key schema[] = {
    {"port", CAIRN_CFG_INT, "8080", "1", "65535", "HTTP listening port.", NULL, 0},
    {"host", CAIRN_CFG_STRING, "127.0.0.1", NULL, NULL, "Address to bind.", NULL, 0},
    {"threads", CAIRN_CFG_INT, "4", "1", NULL, "Worker threads.", NULL, 0},
    {"ratio", CAIRN_CFG_FLOAT, "0.5", "0", "1", "A fraction.", NULL, 0},
    {"verbose", CAIRN_CFG_BOOL, "false", NULL, NULL, "Chatty output.", NULL, 0},
    {"cache_size", CAIRN_CFG_SIZE, "64M", NULL, "1G", "Cache size.", NULL, 0},
    {"timeout", CAIRN_CFG_DURATION, "30s", "1ms", "1h", "Request timeout.", NULL, 0},
    {"log_level", CAIRN_CFG_STRING, "info", NULL, NULL, "Log level.", "debug|info|warn|error", 0},
    {"api_keys", CAIRN_CFG_STRING, NULL, NULL, NULL, "API keys.", NULL,
     CAIRN_CFG_REQUIRED | CAIRN_CFG_SECRET},
    {"http.max_body", CAIRN_CFG_SIZE, "1M", NULL, NULL, "Largest request body.", NULL, 0},
};
#define N_KEYS (sizeof schema / sizeof schema[0])

static int setup(void **state)
{
    cairn_config *c = NULL;
    cairn_error err;
    if (cairn_config_new(&c, schema, N_KEYS, &err)) return -1;
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    cairn_config_free(*state);
    return 0;
}

static int load_text(cairn_config *c, const char *text, cairn_error *err)
{
    return cairn_config_load_text(c, text, strlen(text), "test.conf", err);
}

static void test_defaults(void **state)
{
    cairn_config *c = *state;
    assert_int_equal(cairn_config_int(c, "port"), 8080);
    assert_string_equal(cairn_config_string(c, "host"), "127.0.0.1");
    assert_true(cairn_config_float(c, "ratio") == 0.5);
    assert_false(cairn_config_bool(c, "verbose"));
    assert_int_equal(cairn_config_size(c, "cache_size"), 64ull * 1024 * 1024);
    assert_int_equal(cairn_config_duration_ns(c, "timeout"), 30LL * 1000000000);
    assert_null(cairn_config_string(c, "api_keys"));
    assert_false(cairn_config_is_set(c, "api_keys"));
    assert_string_equal(cairn_config_source(c, "port"), "default");
    assert_int_equal(cairn_config_origin_of(c, "port"), CAIRN_CFG_FROM_DEFAULT);
}

static void test_precedence_independent_of_load_order(void **state)
{
    cairn_config *c = *state;
    cairn_error err;
    char *const argv[] = {"--port", "9200", NULL};
    char *const env[] = {"CAIRN_PORT=9100", "CAIRN_THREADS=6", "PATH=/bin", NULL};
    /* Flags first (as a program finding --config would), then the file, then the environment. */
    assert_int_equal(cairn_config_load_args(c, 2, argv, NULL, NULL, &err), 0);
    assert_int_equal(load_text(c, "port = 9000\nthreads = 5\nratio = 0.25\n", &err), 0);
    assert_int_equal(cairn_config_load_env(c, env, &err), 0);
    assert_int_equal(cairn_config_int(c, "port"), 9200);
    assert_string_equal(cairn_config_source(c, "port"), "--port");
    assert_int_equal(cairn_config_int(c, "threads"), 6);
    assert_string_equal(cairn_config_source(c, "threads"), "CAIRN_THREADS");
    assert_true(cairn_config_float(c, "ratio") == 0.25);
    assert_string_equal(cairn_config_source(c, "ratio"), "test.conf:3");
    assert_int_equal(cairn_config_origin_of(c, "ratio"), CAIRN_CFG_FROM_FILE);
    assert_int_equal(cairn_config_int(c, "port"), 9200);
}

static void test_file_syntax(void **state)
{
    cairn_config *c = *state;
    cairn_error err;
    const char *text = "# a comment\r\n"
                       "\n"
                       "   host   =   0.0.0.0   # trailing comment\r\n"
                       "api_keys = \"k1,k2 # not a comment \\\"q\\\" \\\\\"  # comment\n"
                       "log-level = debug\n"
                       "http.max_body = 2M\n"
                       "timeout = 250ms\n"
                       "port = 1\n"
                       "port = 2\n";
    assert_int_equal(load_text(c, text, &err), 0);
    assert_string_equal(cairn_config_string(c, "host"), "0.0.0.0");
    assert_string_equal(cairn_config_string(c, "api_keys"), "k1,k2 # not a comment \"q\" \\");
    assert_string_equal(cairn_config_string(c, "log_level"), "debug");
    assert_int_equal(cairn_config_size(c, "http.max_body"), 2u << 20);
    assert_int_equal(cairn_config_duration_ns(c, "timeout"), 250000000);
    assert_int_equal(cairn_config_int(c, "port"), 2); /* the later line wins */
    assert_string_equal(cairn_config_source(c, "port"), "test.conf:9");
    assert_int_equal(cairn_config_check(c, &err), 0);
}

static void test_load_file(void **state)
{
    cairn_config *c = *state;
    cairn_error err;
    char path[] = "/tmp/cairn_test_conf_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "threads = 12\nbogus = 1\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(cairn_config_load_file(c, path, &err), CAIRN_ENOTFOUND);
    char expect[256];
    snprintf(expect, sizeof expect, "unknown key 'bogus' (from %s:2)", path);
    assert_string_equal(err.msg, expect);
    assert_int_equal(cairn_config_int(c, "threads"), 12); /* lines before the error applied */
    unlink(path);
    assert_int_equal(cairn_config_load_file(c, path, &err), CAIRN_EIO);
    assert_non_null(strstr(err.msg, path));
}

static void test_env_mapping(void **state)
{
    cairn_config *c = *state;
    cairn_error err;
    char *const env[] = {"CAIRN_HTTP_MAX_BODY=4K", "CAIRN_UNKNOWN_THING=1", "CAIRN_VERBOSE=yes",
                         "CAIRN_PORTX=1", NULL};
    assert_int_equal(cairn_config_load_env(c, env, &err), 0);
    assert_int_equal(cairn_config_size(c, "http.max_body"), 4096);
    assert_true(cairn_config_bool(c, "verbose"));
    assert_int_equal(cairn_config_int(c, "port"), 8080);
    assert_string_equal(cairn_config_source(c, "http.max_body"), "CAIRN_HTTP_MAX_BODY");
}

static void test_flags(void **state)
{
    cairn_config *c = *state;
    cairn_error err;
    char *const argv[] = {"serve",    "--verbose", "--log-level=warn", "--cache_size",
                          "1G",       "dir/",      "--timeout=1.5s",   "--",
                          "--port=1", NULL};
    const char *pos[9];
    int npos = -1;
    assert_int_equal(cairn_config_load_args(c, 9, argv, pos, &npos, &err), 0);
    assert_int_equal(npos, 3);
    assert_string_equal(pos[0], "serve");
    assert_string_equal(pos[1], "dir/");
    assert_string_equal(pos[2], "--port=1");
    assert_true(cairn_config_bool(c, "verbose"));
    assert_string_equal(cairn_config_string(c, "log_level"), "warn");
    assert_string_equal(cairn_config_source(c, "log_level"), "--log-level");
    assert_int_equal(cairn_config_size(c, "cache_size"), 1ull << 30);
    assert_int_equal(cairn_config_duration_ns(c, "timeout"), 1500000000);
    assert_int_equal(cairn_config_int(c, "port"), 8080);
    assert_false(cairn_config_help_requested(c));

    char *const argv2[] = {"--no-verbose", "--help", NULL};
    assert_int_equal(cairn_config_load_args(c, 2, argv2, NULL, NULL, &err), 0);
    assert_false(cairn_config_bool(c, "verbose"));
    assert_true(cairn_config_help_requested(c));

    char *const argv3[] = {"stray", NULL};
    assert_int_equal(cairn_config_load_args(c, 1, argv3, NULL, NULL, &err), CAIRN_EINVAL);
    assert_string_equal(err.msg, "unexpected argument 'stray'");
}

/* Each case: one source, one bad value, the exact message. */
static void test_error_messages(void **state)
{
    cairn_config *c = *state;
    cairn_error err;
    struct {
        const char *file;  /* config text, or NULL */
        const char *env;   /* one NAME=value, or NULL */
        const char *flag1; /* up to two argv entries, or NULL */
        const char *flag2;
        int code;
        const char *msg;
    } cases[] = {
        {NULL, "CAIRN_PORT=70000", NULL, NULL, CAIRN_ERANGE,
         "port: 70000 is above the maximum 65535 (from CAIRN_PORT)"},
        {"port = 8080\nthreads = 0\n", NULL, NULL, NULL, CAIRN_ERANGE,
         "threads: 0 is below the minimum 1 (from test.conf:2)"},
        {NULL, NULL, "--port", "abc", CAIRN_EINVAL, "port: 'abc' is not an integer (from --port)"},
        {NULL, NULL, "--port=99999999999999999999", NULL, CAIRN_ERANGE,
         "port: 99999999999999999999 is out of range for int (from --port)"},
        {"prot = 1\n", NULL, NULL, NULL, CAIRN_ENOTFOUND,
         "unknown key 'prot' (from test.conf:1); did you mean 'port'?"},
        {NULL, NULL, "--treads=3", NULL, CAIRN_ENOTFOUND,
         "unknown key 'treads' (from --treads); did you mean 'threads'?"},
        {NULL, NULL, "--zzzzzzzz", NULL, CAIRN_ENOTFOUND,
         "unknown key 'zzzzzzzz' (from --zzzzzzzz)"},
        {"# ok\n\njust words\n", NULL, NULL, NULL, CAIRN_EFORMAT,
         "test.conf:3: expected 'key = value'"},
        {" = 5\n", NULL, NULL, NULL, CAIRN_EFORMAT, "test.conf:1: missing key before '='"},
        {"host = \"abc\n", NULL, NULL, NULL, CAIRN_EFORMAT,
         "test.conf:1: host: unterminated quoted value"},
        {"host = \"a\\qb\"\n", NULL, NULL, NULL, CAIRN_EFORMAT,
         "test.conf:1: host: bad escape in quoted value"},
        {"host = \"a\" b\n", NULL, NULL, NULL, CAIRN_EFORMAT,
         "test.conf:1: host: text after the closing quote"},
        {NULL, NULL, "--log-level", "verbose", CAIRN_EINVAL,
         "log_level: 'verbose' is not one of debug, info, warn, error (from --log-level)"},
        {NULL, NULL, "--port", NULL, CAIRN_EINVAL, "port: missing value (from --port)"},
        {NULL, "CAIRN_VERBOSE=maybe", NULL, NULL, CAIRN_EINVAL,
         "verbose: 'maybe' is not a boolean (true/false, yes/no, on/off, 1/0) (from "
         "CAIRN_VERBOSE)"},
        {"cache_size = 2G\n", NULL, NULL, NULL, CAIRN_ERANGE,
         "cache_size: 2G is above the maximum 1G (from test.conf:1)"},
        {"cache_size = 1.5G\n", NULL, NULL, NULL, CAIRN_EINVAL,
         "cache_size: '1.5G' is not a size (bytes, or with a suffix K, M, G or T) (from "
         "test.conf:1)"},
        {NULL, NULL, "--timeout=500us", NULL, CAIRN_ERANGE,
         "timeout: 500us is below the minimum 1ms (from --timeout)"},
        {NULL, NULL, "--timeout=5x", NULL, CAIRN_EINVAL,
         "timeout: '5x' is not a duration (a number with ns, us, ms, s, m or h) (from --timeout)"},
        {NULL, NULL, "--ratio=nan", NULL, CAIRN_EINVAL,
         "ratio: 'nan' is not a number (from --ratio)"},
        {NULL, NULL, "-x", NULL, CAIRN_EINVAL, "unknown option '-x' (options are --key=value)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc;
        err.msg[0] = '\0';
        if (cases[i].file) {
            rc = load_text(c, cases[i].file, &err);
        } else if (cases[i].env) {
            char *const env[] = {(char *)cases[i].env, NULL};
            rc = cairn_config_load_env(c, env, &err);
        } else {
            char *const argv[] = {(char *)cases[i].flag1, (char *)cases[i].flag2, NULL};
            rc = cairn_config_load_args(c, cases[i].flag2 ? 2 : 1, argv, NULL, NULL, &err);
        }
        if (rc != cases[i].code || strcmp(err.msg, cases[i].msg) != 0)
            fail_msg("case %zu: got %d '%s', want %d '%s'", i, rc, err.msg, cases[i].code,
                     cases[i].msg);
    }
    /* None of the refused values replaced the defaults. */
    assert_int_equal(cairn_config_int(c, "port"), 8080);
    assert_int_equal(cairn_config_size(c, "cache_size"), 64u << 20);

    assert_int_equal(cairn_config_check(c, &err), CAIRN_EINVAL);
    assert_string_equal(
        err.msg,
        "api_keys: required but not set (use --api-keys, CAIRN_API_KEYS or the config file)");
    assert_int_equal(cairn_config_set(c, "api_keys", "k", CAIRN_CFG_FROM_FLAG, "test", &err), 0);
    assert_int_equal(cairn_config_check(c, &err), 0);
}

static void test_lower_source_errors_still_reported(void **state)
{
    cairn_config *c = *state;
    cairn_error err;
    char *const argv[] = {"--port=81", NULL};
    assert_int_equal(cairn_config_load_args(c, 1, argv, NULL, NULL, &err), 0);
    assert_int_equal(load_text(c, "port = 0\n", &err), CAIRN_ERANGE);
    assert_string_equal(err.msg, "port: 0 is below the minimum 1 (from test.conf:1)");
    assert_int_equal(cairn_config_int(c, "port"), 81);
}

static void test_schema_errors(void **state)
{
    (void)state;
    cairn_config *c = (cairn_config *)1;
    cairn_error err;
    const cairn_config_key bad_name[] = {{"Port", CAIRN_CFG_INT, NULL, NULL, NULL, "", NULL, 0}};
    assert_int_equal(cairn_config_new(&c, bad_name, 1, &err), CAIRN_EINVAL);
    assert_null(c);
    assert_string_equal(err.msg, "config schema: bad key name 'Port'");
    const cairn_config_key dup[] = {{"a", CAIRN_CFG_INT, NULL, NULL, NULL, "", NULL, 0},
                                    {"a", CAIRN_CFG_BOOL, NULL, NULL, NULL, "", NULL, 0}};
    assert_int_equal(cairn_config_new(&c, dup, 2, &err), CAIRN_EINVAL);
    assert_string_equal(err.msg, "config schema: key 'a' declared twice");
    const cairn_config_key bad_def[] = {{"a", CAIRN_CFG_INT, "0", "1", "9", "", NULL, 0}};
    assert_int_equal(cairn_config_new(&c, bad_def, 1, &err), CAIRN_ERANGE);
    assert_string_equal(err.msg, "config schema: a: 0 is below the minimum 1 (from default)");
    const cairn_config_key bad_max[] = {{"a", CAIRN_CFG_SIZE, NULL, NULL, "lots", "", NULL, 0}};
    assert_int_equal(cairn_config_new(&c, bad_max, 1, &err), CAIRN_EINVAL);
    assert_string_equal(err.msg, "config schema: a: bad maximum 'lots'");
}

static void test_size_and_duration_parsers(void **state)
{
    (void)state;
    uint64_t sz;
    int64_t ns;
    assert_int_equal(cairn_parse_size("0", &sz), 0);
    assert_int_equal(sz, 0);
    assert_int_equal(cairn_parse_size("512", &sz), 0);
    assert_int_equal(sz, 512);
    assert_int_equal(cairn_parse_size("3k", &sz), 0);
    assert_int_equal(sz, 3 * 1024);
    assert_int_equal(cairn_parse_size("5MiB", &sz), 0);
    assert_int_equal(sz, 5ull * 1024 * 1024);
    assert_int_equal(cairn_parse_size("2TB", &sz), 0);
    assert_int_equal(sz, 2ull << 40);
    assert_int_equal(cairn_parse_size("16777216T", &sz), CAIRN_ERANGE); /* 2^24 * 2^40 = 2^64 */
    assert_int_equal(cairn_parse_size("-1", &sz), CAIRN_EINVAL);
    assert_int_equal(cairn_parse_size("1 M", &sz), CAIRN_EINVAL);
    assert_int_equal(cairn_parse_size("", &sz), CAIRN_EINVAL);
    assert_int_equal(cairn_parse_duration("250ms", &ns), 0);
    assert_int_equal(ns, 250000000);
    assert_int_equal(cairn_parse_duration("10", &ns), 0);
    assert_int_equal(ns, 10000000000LL);
    assert_int_equal(cairn_parse_duration("2m", &ns), 0);
    assert_int_equal(ns, 120000000000LL);
    assert_int_equal(cairn_parse_duration("1h", &ns), 0);
    assert_int_equal(ns, 3600000000000LL);
    assert_int_equal(cairn_parse_duration("7us", &ns), 0);
    assert_int_equal(ns, 7000);
    assert_int_equal(cairn_parse_duration("3ns", &ns), 0);
    assert_int_equal(ns, 3);
    assert_int_equal(cairn_parse_duration("-1s", &ns), CAIRN_EINVAL);
    assert_int_equal(cairn_parse_duration("1d", &ns), CAIRN_EINVAL);
    assert_int_equal(cairn_parse_duration("1e300h", &ns), CAIRN_ERANGE);
}

static void test_help_and_describe(void **state)
{
    cairn_config *c = *state;
    cairn_error err;
    assert_int_equal(
        cairn_config_set(c, "api_keys", "topsecret", CAIRN_CFG_FROM_ENV, "CAIRN_API_KEYS", &err),
        0);
    char *help = cairn_config_help(c);
    assert_non_null(help);
    assert_non_null(strstr(help, "  --port=<int>  (env CAIRN_PORT)\n"
                                 "      HTTP listening port. Default: 8080. Range: 1 to 65535.\n"));
    assert_non_null(strstr(help, "  --verbose[=<bool>]  (env CAIRN_VERBOSE)\n"));
    assert_non_null(strstr(help,
                           "  --log-level=<string>  (env CAIRN_LOG_LEVEL)\n"
                           "      Log level. One of: debug, info, warn, error. Default: info.\n"));
    assert_non_null(strstr(help, "  --http.max-body=<size>  (env CAIRN_HTTP_MAX_BODY)\n"));
    assert_non_null(strstr(help, "API keys. Required.\n"));
    assert_non_null(strstr(help, "Minimum: 1."));
    assert_null(strstr(help, "topsecret"));
    free(help);

    char *desc = cairn_config_describe(c);
    assert_non_null(desc);
    assert_non_null(strstr(desc, "port = 8080  # default\n"));
    assert_non_null(strstr(desc, "api_keys = <secret>  # CAIRN_API_KEYS\n"));
    assert_non_null(strstr(desc, "timeout = 30s  # default\n"));
    assert_null(strstr(desc, "topsecret"));
    free(desc);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_defaults),
        T(test_precedence_independent_of_load_order),
        T(test_file_syntax),
        T(test_load_file),
        T(test_env_mapping),
        T(test_flags),
        T(test_error_messages),
        T(test_lower_source_errors_still_reported),
        cmocka_unit_test(test_schema_errors),
        cmocka_unit_test(test_size_and_duration_parsers),
        T(test_help_and_describe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
