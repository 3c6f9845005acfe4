/*
 * tests/fuzz/fuzz_config.c — libFuzzer target for config files (common/config.h), which
 * operators write by hand (cairnd.conf) and which reach every server setting.
 *
 * Input: the file's text. The schema holds a key of every type, bounds and choices, so that
 * each value syntax is reached. Checks: no crash or sanitizer report; a failure is
 * CAIRN_EFORMAT (the file's syntax), CAIRN_EINVAL, CAIRN_ERANGE or CAIRN_ENOTFOUND (a value or
 * key) with a message; after a success every key reads back within its bounds and choices.
 *
 * Seed corpus: tests/fuzz/corpus/config/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const cairn_config_key schema[] = {
    {"port", CAIRN_CFG_INT, "8080", "1", "65535", "port", NULL, 0},
    {"http.threads", CAIRN_CFG_INT, "4", "1", "256", "threads", NULL, 0},
    {"slo.ttft", CAIRN_CFG_DURATION, "2s", "1ms", "10m", "TTFT", NULL, 0},
    {"temperature", CAIRN_CFG_FLOAT, "0.7", "0", "2", "temperature", NULL, 0},
    {"kv.bytes", CAIRN_CFG_SIZE, "64M", "1K", "1T", "KV cache", NULL, 0},
    {"metrics", CAIRN_CFG_BOOL, "true", NULL, NULL, "metrics", NULL, 0},
    {"docs.log", CAIRN_CFG_STRING, "local", NULL, NULL, "log", "local|redis", 0},
    {"api.key", CAIRN_CFG_STRING, NULL, NULL, NULL, "key", NULL, CAIRN_CFG_SECRET},
};
#define N_KEYS (sizeof schema / sizeof schema[0])

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cairn_config *c = NULL;
    cairn_error err = {0};
    if (cairn_config_new(&c, schema, N_KEYS, &err) != 0) abort(); /* the schema is sound */
    int rc = cairn_config_load_text(c, (const char *)data, size, "fuzz.conf", &err);
    if (rc) {
        if ((rc != CAIRN_EFORMAT && rc != CAIRN_EINVAL && rc != CAIRN_ERANGE &&
             rc != CAIRN_ENOTFOUND) ||
            !err.msg[0])
            abort();
    } else {
        int64_t port = cairn_config_int(c, "port"), th = cairn_config_int(c, "http.threads");
        int64_t ttft = cairn_config_duration_ns(c, "slo.ttft");
        double temp = cairn_config_float(c, "temperature");
        uint64_t kv = cairn_config_size(c, "kv.bytes");
        const char *log = cairn_config_string(c, "docs.log");
        if (port < 1 || port > 65535 || th < 1 || th > 256) abort();
        if (ttft < 1000000 || ttft > 600 * (int64_t)1000000000) abort();
        if (!(temp >= 0 && temp <= 2)) abort();
        if (kv < 1024 || kv > (1ull << 40)) abort();
        if (!log || (strcmp(log, "local") && strcmp(log, "redis"))) abort();
    }
    cairn_config_free(c);
    return 0;
}
