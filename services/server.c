/*
 * services/server.c — the cairnd service: configuration, wiring, lifecycle.
 *
 * Start-up order matters for signals: SIGINT and SIGTERM are blocked in the main thread
 * before any thread exists, so every thread inherits the mask and the main thread alone
 * receives them, synchronously, in sigwait(). Shutdown then runs in ordinary code, not in
 * a signal handler.
 */
#define CAIRN_LOG_TAG "cairnd"
#include "services/server.h"

#include "common/clock.h"
#include "common/config.h"
#include "common/error.h"
#include "common/gpu.h"
#include "common/log.h"
#include "common/metrics.h"
#include "services/http.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CAIRN_VERSION_STRING "0.1.0"

/* ---- Configuration schema -------------------------------------------------------------- */

static const cairn_config_key schema[] = {
    {"config", CAIRN_CFG_STRING, NULL, NULL, NULL, "configuration file (key = value lines)", NULL, 0},
    {"host", CAIRN_CFG_STRING, "0.0.0.0", NULL, NULL, "address to listen on (numeric IPv4 or IPv6)",
     NULL, 0},
    {"port", CAIRN_CFG_INT, "8080", "0", "65535", "TCP port to listen on (0 picks a free one)",
     NULL, 0},
    {"data_dir", CAIRN_CFG_STRING, "./data", NULL, NULL, "data directory: models, indexes, caches",
     NULL, 0},
    {"log_level", CAIRN_CFG_STRING, "info", NULL, NULL, "lowest level logged",
     "debug|info|warn|error", 0},
    {"http.threads", CAIRN_CFG_INT, "4", "1", "256", "HTTP threads (parse, validate, enqueue)",
     NULL, 0},
    {"http.max_body", CAIRN_CFG_SIZE, "1M", "1K", "1G", "largest request body accepted (413 above)",
     NULL, 0},
    {"http.max_connections", CAIRN_CFG_INT, "1024", "1", "1000000",
     "open connections at most; more are refused", NULL, 0},
    {"http.timeout", CAIRN_CFG_DURATION, "60s", "1s", "1h", "idle connection timeout", NULL, 0},
    {"tls.cert", CAIRN_CFG_STRING, NULL, NULL, NULL, "PEM certificate file; with tls.key: HTTPS",
     NULL, 0},
    {"tls.key", CAIRN_CFG_STRING, NULL, NULL, NULL, "PEM private key file", NULL, CAIRN_CFG_SECRET},
};

/* ---- Service state ---------------------------------------------------------------------- */

typedef struct service {
    cairn_config *cfg;
    cairn_metrics *metrics;
    cairn_http *http;
    atomic_int ready; /* 0 while loading: /health answers 503 */
    int64_t started_ns;
} service;

static void on_health(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    service *s = ctx;
    int ready = atomic_load(&s->ready);
    json_t *o = json_pack("{s:s,s:s,s:f,s:b}", "status", ready ? "ok" : "loading", "version",
                          CAIRN_VERSION_STRING, "uptime_s",
                          (double)(cairn_now_ns() - s->started_ns) / 1e9, "cuda",
                          cairn_gpu_built());
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!body) {
        cairn_http_json_error(resp, 500, "out of memory");
        return;
    }
    resp->status = ready ? 200 : 503;
    if (!ready) resp->retry_after_s = 1;
    resp->body = body;
    resp->body_len = strlen(body);
}

static void on_metrics(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    service *s = ctx;
    size_t len = 0;
    char *text = NULL;
    if (cairn_metrics_render(s->metrics, &text, &len) != 0) {
        cairn_http_json_error(resp, 500, "out of memory rendering metrics");
        return;
    }
    resp->status = 200;
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
    resp->body = text;
    resp->body_len = len;
}

/* ---- Start-up helpers -------------------------------------------------------------------- */

/* Reads a whole (small) file into a NUL-terminated malloc'ed string. */
static int read_file(const char *path, char **out, cairn_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (1u << 20)) {
                free(buf);
                fclose(f);
                return cairn_errorf(err, CAIRN_ELIMIT, "%s: larger than 1 MiB", path);
            }
            char *b = realloc(buf, cap);
            if (!b) {
                free(buf);
                fclose(f);
                return cairn_errorf(err, CAIRN_ENOMEM, "out of memory reading %s", path);
            }
            buf = b;
        }
        size_t n = fread(buf + len, 1, 4096, f);
        len += n;
        if (n < 4096) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return cairn_errorf(err, CAIRN_EIO, "%s: read error", path);
    }
    buf[len] = '\0';
    *out = buf;
    return CAIRN_OK;
}

static int load_config(cairn_config **out, const char *prog, int argc, char **argv, int *exit_now)
{
    cairn_error err = {0};
    cairn_config *cfg = NULL;
    *exit_now = -1;
    int rc = cairn_config_new(&cfg, schema, sizeof schema / sizeof schema[0], &err);
    if (!rc) rc = cairn_config_load_args(cfg, argc - 1, argv + 1, NULL, NULL, &err);
    if (!rc && cairn_config_help_requested(cfg)) {
        char *help = cairn_config_help(cfg);
        printf("usage: %s [--config FILE] [--KEY=VALUE ...]\n\n%s", prog, help ? help : "");
        free(help);
        cairn_config_free(cfg);
        *exit_now = 0;
        return 0;
    }
    if (!rc) rc = cairn_config_load_env(cfg, NULL, &err);
    if (!rc && cairn_config_string(cfg, "config"))
        rc = cairn_config_load_file(cfg, cairn_config_string(cfg, "config"), &err);
    if (!rc) rc = cairn_config_check(cfg, &err);
    if (rc) {
        fprintf(stderr, "%s: configuration error: %s\n", prog, err.msg);
        cairn_config_free(cfg);
        *exit_now = 2;
        return rc;
    }
    *out = cfg;
    return 0;
}

static int start(service *s, cairn_error *err)
{
    cairn_config *c = s->cfg;
    const char *data_dir = cairn_config_string(c, "data_dir");
    if (mkdir(data_dir, 0755) != 0 && errno != EEXIST)
        return cairn_errorf(err, CAIRN_EIO, "data_dir %s: %s", data_dir, strerror(errno));

    int rc = cairn_metrics_new(&s->metrics, err);
    if (rc) return rc;
    /* Constant series that say what is running, Prometheus-style: join on them in queries. */
    static const char *const info_labels[] = {"version", "cuda"};
    cairn_metric_family *info = NULL;
    cairn_gauge *start_time = NULL;
    rc = cairn_gauge_family_new(s->metrics, &info, "cairn_build_info",
                                "Constant 1, labelled with the build's version and CUDA support",
                                info_labels, 2, 1, err);
    if (!rc)
        rc = cairn_gauge_new(s->metrics, &start_time, "cairn_process_start_time_seconds",
                             "Start time of the process since the Unix epoch, in seconds", err);
    if (rc) return rc;
    cairn_gauge_set(cairn_gauge_child(info, CAIRN_LABELS(CAIRN_VERSION_STRING,
                                                         cairn_gpu_built() ? "yes" : "no")),
                    1);
    cairn_gauge_set(start_time, (double)cairn_wall_ns() / 1e9);

    cairn_http_params hp = cairn_http_default_params();
    hp.host = cairn_config_string(c, "host");
    hp.port = (int)cairn_config_int(c, "port");
    hp.threads = (int)cairn_config_int(c, "http.threads");
    hp.max_body = (size_t)cairn_config_size(c, "http.max_body");
    hp.max_connections = (int)cairn_config_int(c, "http.max_connections");
    hp.timeout_s = (int)(cairn_config_duration_ns(c, "http.timeout") / CAIRN_NS_PER_SEC);

    char *cert = NULL, *key = NULL;
    const char *cert_path = cairn_config_string(c, "tls.cert");
    const char *key_path = cairn_config_string(c, "tls.key");
    if ((cert_path == NULL) != (key_path == NULL))
        return cairn_errorf(err, CAIRN_EINVAL, "tls.cert and tls.key must be set together");
    if (cert_path) {
        rc = read_file(cert_path, &cert, err);
        if (!rc) rc = read_file(key_path, &key, err);
        if (rc) {
            free(cert);
            return cairn_error_prefix(err, "tls");
        }
        hp.tls_cert_pem = cert;
        hp.tls_key_pem = key;
    }

    rc = cairn_http_new(&s->http, &hp, s->metrics, err);
    if (!rc) rc = cairn_http_route(s->http, "GET", "/health", on_health, s);
    if (!rc) rc = cairn_http_route(s->http, "GET", "/metrics", on_metrics, s);
    if (!rc) rc = cairn_http_start(s->http, err);
    free(cert);
    free(key);
    if (rc) return rc;

    CAIRN_LOG_INFO("listening", "host=%s port=%d threads=%d tls=%s", hp.host,
                   cairn_http_port(s->http), hp.threads, cert_path ? "on" : "off");
    atomic_store(&s->ready, 1);
    return CAIRN_OK;
}

int cairn_serve_main(const char *prog, int argc, char **argv)
{
    service s = {.started_ns = cairn_now_ns()};
    int exit_now;
    load_config(&s.cfg, prog, argc, argv, &exit_now);
    if (exit_now >= 0) return exit_now;

    cairn_log_level lvl;
    if (cairn_log_level_parse(cairn_config_string(s.cfg, "log_level"), &lvl, NULL) == 0)
        cairn_log_set_level(lvl);

    /* Block the shutdown signals before any thread starts (see the file comment); a peer
     * closing its socket must not kill the process. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    cairn_error err = {0};
    int status = 0;
    if (start(&s, &err) != 0) {
        CAIRN_LOG_ERROR("start failed", "error=%s", err.msg);
        fprintf(stderr, "%s: cannot start: %s\n", prog, err.msg);
        status = 1;
    } else {
        int sig = 0;
        sigwait(&stop, &sig);
        CAIRN_LOG_INFO("shutting down", "signal=%s", sig == SIGINT ? "SIGINT" : "SIGTERM");
    }
    atomic_store(&s.ready, 0);
    cairn_http_free(s.http);
    cairn_metrics_free(s.metrics);
    cairn_config_free(s.cfg);
    if (!status) CAIRN_LOG_INFO("stopped", "uptime_s=%.1f",
                                (double)(cairn_now_ns() - s.started_ns) / 1e9);
    return status;
}
