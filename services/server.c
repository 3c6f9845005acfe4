/*
 * services/server.c — the cairnd service: configuration, wiring, lifecycle.
 *
 * Start-up order matters for signals: SIGINT and SIGTERM are blocked in the main thread
 * before it starts any thread, so every thread of ours inherits the mask and the main thread
 * alone receives them, synchronously, in sigwait(). Shutdown then runs in ordinary code, not
 * in a signal handler. A library may have started threads before main (OpenBLAS starts its
 * pool in a constructor) with nothing blocked; until the main thread waits in sigwait() the
 * kernel gives them a process-wide SIGTERM, whose default action would end the process with
 * no shutdown at all. A handler therefore catches it there and passes it on to the main
 * thread, where it stays pending until sigwait() takes it.
 */
#define CAIRN_LOG_TAG "cairnd"
#include "services/server.h"

#include "common/clock.h"
#include "common/config.h"
#include "common/error.h"
#include "common/gpu.h"
#include "common/log.h"
#include "common/metrics.h"
#include "services/doclog.h"
#include "services/edge_api.h"
#include "services/api.h"
#include "services/http.h"
#include "services/offline.h"
#include "services/rag.h"
#include "services/slo.h"
#include "services/web.h"
#include "services/workers.h"
#include "retrieval/embed.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
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
    {"http.max_upload", CAIRN_CFG_SIZE, "16M", "1K", "1G",
     "largest file POST /v1/documents/upload accepts (413 above)", NULL, 0},
    {"http.cors_origins", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "origins browsers may call from (CORS), comma-separated, e.g. "
     "https://ui.example,http://localhost:3000; * for any; unset: none", NULL, 0},
    {"http.access_log", CAIRN_CFG_BOOL, "true", NULL, NULL,
     "one log line per request: method, route, status, bytes, duration, request id, key id",
     NULL, 0},
    {"tls.cert", CAIRN_CFG_STRING, NULL, NULL, NULL, "PEM certificate file; with tls.key: HTTPS",
     NULL, 0},
    {"tls.key", CAIRN_CFG_STRING, NULL, NULL, NULL, "PEM private key file", NULL, CAIRN_CFG_SECRET},
    /* /v1 API (services/api.c, services/workers.c) */
    {"model.path", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "LLM GGUF (unset: data_dir/models/smollm2-135m-instruct-q4_1.gguf when present, the "
     "instruct model scripts/setup installs; Gemma 3 270M, a base model: "
     "data_dir/models/gemma-3-270m-q4_k_m.gguf)",
     NULL, 0},
    {"model.name", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "model id /v1/models lists (unset: the model file's name without .gguf)", NULL, 0},
    {"model.chat_template", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "chat format: gemma, llama3, chatml, llama2, mistral or phi3 (unset: recognised from the "
     "model file's tokenizer.chat_template; a template cairn does not know is refused)",
     NULL, 0},
    {"embed.model", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "text embedder GGUF (unset: data_dir/models/all-minilm-l6-v2.gguf when present)", NULL, 0},
    {"embed.name", CAIRN_CFG_STRING, "all-minilm-l6-v2", NULL, NULL,
     "embedding model id /v1/embeddings reports", NULL, 0},
    {"embed.device", CAIRN_CFG_STRING, "cpu", NULL, NULL,
     "where the text embedder runs: cpu, a CUDA GPU's index, or auto (GPU 0 when this build and "
     "machine have one, else the CPU; a GPU that will not open then falls back to the CPU, "
     "with a warning). cpu by default until the GPU embedder has run on a GPU (it has passed "
     "the CUDA emulation only)", NULL, 0},
    {"rag.dir", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "passage index directory (unset: data_dir/index); needs the embedder", NULL, 0},
    {"rag.prefetch_bytes", CAIRN_CFG_SIZE, "16M", "0", "64G",
     "byte budget of one lookahead prefetch", NULL, 0},
    {"rag.corpus", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "ingested into an empty index at start: a directory, a .jsonl file, or a "
     "debian-Translation-en (unset: data_dir/corpus/debian-Translation-en when present)", NULL,
     0},
    {"rag.corpus_max", CAIRN_CFG_INT, "0", "0", "100000000",
     "passages ingested from rag.corpus at most (0: all of it; cairnd serves at once and embeds "
     "them in the background, /health answering 503 with the progress until it is done)", NULL,
     0},
    {"rag.fast_bytes", CAIRN_CFG_SIZE, "64M", "1M", "1T", "fast-tier capacity", NULL, 0},
    {"rag.answer_prefix", CAIRN_CFG_BOOL, "true", NULL, NULL,
     "an answer from a software package's passage opens with \"Use\" (false: no answer does; "
     "a request turns it off with answer_prefix: false)", NULL, 0},
    {"workers.count", CAIRN_CFG_INT, "1", "1", "64", "generation workers (one engine each)",
     NULL, 0},
    {"workers.threads", CAIRN_CFG_INT, "0", "0", "1024",
     "compute threads per engine (0: CPUs online)", NULL, 0},
    {"workers.max_seqs", CAIRN_CFG_INT, "8", "1", "256", "sequences one engine runs at once",
     NULL, 0},
    {"workers.ctx", CAIRN_CFG_INT, "2048", "64", "131072", "positions per sequence", NULL, 0},
    {"workers.device", CAIRN_CFG_STRING, "auto", NULL, NULL,
     "where the engines run: cpu, a CUDA GPU's index, or auto (GPU 0 when this build and "
     "machine have one, else the CPU)", NULL, 0},
    {"sched.policy", CAIRN_CFG_STRING, "slo", NULL, NULL,
     "iteration scheduling: slo (latency budget), online-only, fcfs-hybrid",
     "slo|online-only|fcfs-hybrid", 0},
    {"slo.ttft", CAIRN_CFG_DURATION, "2s", "1ms", "1h",
     "p99 time to first token online requests are held to (the scheduler's budgets follow "
     "from slo.ttft, slo.tbt and the engine's profile)", NULL, 0},
    {"slo.tbt", CAIRN_CFG_DURATION, "200ms", "1ms", "10s",
     "p99 time between an online request's tokens (below slo.ttft)", NULL, 0},
    {"sched.budget", CAIRN_CFG_DURATION, NULL, "1ms", "10s",
     "slo: predicted iteration latency that offline work may fill up to (unset: from the SLO "
     "and the profile; set: wins over them, with a warning)", NULL, 0},
    {"sched.online_budget", CAIRN_CFG_DURATION, NULL, "1ms", "10s",
     "slo: predicted iteration latency online prompt chunks may fill up to (unset: 0.6 x "
     "slo.tbt; set: wins, with a warning; never below the budget)", NULL, 0},
    {"sched.starve", CAIRN_CFG_DURATION, "2s", "0s", "1h",
     "slo: the oldest offline sequence idle this long is served whatever the budget", NULL, 0},
    {"sched.offline_occupancy", CAIRN_CFG_FLOAT, "0.75", "0.01", "1",
     "slo: offline work pauses while online requests (running or queued) hold this share of "
     "workers.max_seqs or more, so that it never lengthens their lives until they queue for "
     "slots", NULL, 0},
    {"sched.online_reserve", CAIRN_CFG_INT, "2", "0", "255",
     "engine slots offline requests may not take (below workers.max_seqs)", NULL, 0},
    {"sched.profile", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "latency predictor profile from `cairn bench profile --out FILE` (unset: "
     "data_dir/profiles/<model>-<backend>-<device>.txt when present); one measured on another "
     "backend or device is refused, with the reason logged", NULL, 0},
    {"sched.startup_profile", CAIRN_CFG_INT, "48", "0", "100000",
     "without a usable profile: iterations of a short profiling run at start (0: none; the "
     "predictor then learns from the first iterations)", NULL, 0},
    {"redis.url", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "Redis for offline jobs, redis://host:port/db (unset: no /v1/jobs, no job runners)", NULL,
     CAIRN_CFG_SECRET},
    {"jobs.runners", CAIRN_CFG_INT, "2", "0", "64",
     "threads taking offline jobs from Redis (0: accept jobs, run none here)", NULL, 0},
    {"jobs.max_offline", CAIRN_CFG_INT, "4", "1", "1024",
     "jobs are claimed only while fewer offline generation requests run", NULL, 0},
    {"jobs.summary_tokens", CAIRN_CFG_INT, "128", "8", "4096",
     "max_tokens of each summary (map pieces and the final one)", NULL, 0},
    {"jobs.max_deliveries", CAIRN_CFG_INT, "3", "1", "100",
     "deliveries of a job before it is dead-lettered", NULL, 0},
    {"jobs.claim_idle", CAIRN_CFG_DURATION, "5m", "1s", "24h",
     "a job pending this long without a heartbeat is claimed by another worker", NULL, 0},
    {"jobs.result_ttl", CAIRN_CFG_DURATION, "168h", "1s", "87600h",
     "how long finished jobs' results are kept", NULL, 0},
    /* replicas (services/doclog.c, docs/DEPLOY.md) */
    {"docs.log", CAIRN_CFG_STRING, "off", NULL, NULL,
     "document adds and deletes: off (this index only) or redis (the cairn:docs stream on "
     "redis.url, shared by every replica, each applying it to its own rag.dir)", "off|redis", 0},
    {"docs.wait", CAIRN_CFG_DURATION, "10s", "100ms", "10m",
     "docs.log = redis: how long an add or delete waits to be applied here (504 after)", NULL,
     0},
    {"shutdown.grace", CAIRN_CFG_DURATION, "30s", "0s", "1h",
     "on SIGTERM: how long requests in flight may take to finish while new ones get 503 and "
     "/health says draining", NULL, 0},
    {"limits.max_concurrent", CAIRN_CFG_INT, "8", "1", "100000",
     "generation requests running at once", NULL, 0},
    {"limits.max_queue", CAIRN_CFG_INT, "64", "0", "100000",
     "generation requests waiting beyond those (429 with Retry-After above)", NULL, 0},
    {"limits.max_tokens", CAIRN_CFG_INT, "4096", "1", "131072",
     "largest max_tokens accepted; a request without one generates up to this or the end of "
     "the context, whichever comes first", NULL, 0},
    {"sampling.temperature", CAIRN_CFG_FLOAT, "1", "0", "2",
     "temperature of requests that set none (0: greedy; OpenAI's default is 1)", NULL, 0},
    {"sampling.top_p", CAIRN_CFG_FLOAT, "1", "0.000001", "1",
     "top_p of requests that set none (1: off)", NULL, 0},
    {"sampling.top_k", CAIRN_CFG_INT, "0", "0", "1000000",
     "top_k of requests that set none (0: off)", NULL, 0},
    {"sampling.min_p", CAIRN_CFG_FLOAT, "0", "0", "1",
     "min_p of requests that set none (0: off; llama.cpp's server uses 0.05)", NULL, 0},
    {"limits.timeout", CAIRN_CFG_DURATION, "300s", "1s", "24h",
     "a generation request running longer is cancelled", NULL, 0},
    {"auth.api_keys", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "comma-separated API keys (kept only as SHA-256); unset with no hashes: /v1 is open", NULL,
     CAIRN_CFG_SECRET},
    {"auth.api_key_hashes", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "comma-separated hex SHA-256 digests of API keys", NULL, 0},
    {"edge.enrollment_token", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "token devices enroll with; set: the /v1/edge endpoints are served", NULL, CAIRN_CFG_SECRET},
    {"edge.signing_key", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "Ed25519 private key PEM file signing update bundles (unset: a per-process key)", NULL, 0},
    {"edge.models", CAIRN_CFG_STRING, "adapt/models", NULL, NULL,
     "directory with edge.gguf (served to devices) and foundation.gguf (cloud teacher)", NULL, 0},
    {"edge.teacher", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "the cloud teacher's GGUF (e.g. a foundation-res model of any width; unset: "
     "edge.models/foundation.gguf)", NULL, 0},
    {"edge.rate", CAIRN_CFG_INT, "200", "1", "1000000",
     "samples per second one device may upload (429 above)", NULL, 0},
    {"edge.min_steps", CAIRN_CFG_INT, "0", "0", "8",
     "adaptation steps an update carries at least, topped up on the replay buffer when the "
     "uploads run out (0: off; docs/ADAPT.md)", NULL, 0},
    /* the web UI (services/web.c) */
    {"web.enabled", CAIRN_CFG_BOOL, "true", NULL, NULL, "serve the web UI at /", NULL, 0},
    {"web.dir", CAIRN_CFG_STRING, NULL, NULL, NULL,
     "the web UI's files (unset: the installed share/cairn/web, else the source tree's web/)",
     NULL, 0},
    {"web.chartjs", CAIRN_CFG_STRING, "/usr/share/javascript/chart.js/chart.min.js", NULL, NULL,
     "Chart.js (Debian's libjs-chart.js) served as /ui/chart.js for the metrics charts", NULL,
     0},
};

/* ---- Service state ---------------------------------------------------------------------- */

typedef struct service {
    cairn_config *cfg;
    cairn_metrics *metrics;
    cairn_http *http;
    cairn_workers *workers; /* NULL when no LLM is configured */
    cairn_api *api;
    cairn_embed *embed; /* NULL when no embedder is configured */
    cairn_rag *rag;     /* NULL without an embedder */
    cairn_edge_api *edge; /* NULL unless edge.enrollment_token is set */
    cairn_offline *offline; /* NULL unless redis.url is set and a model is loaded */
    cairn_web *web;         /* NULL when web.enabled is false or no UI files were found */
    cairn_doclog *doclog;   /* NULL unless docs.log = redis */
    atomic_int ready; /* 0 while loading: /health answers 503 */
    atomic_int draining; /* 1 after SIGTERM: /health answers 503 draining */
    int64_t started_ns;
    char model_name[256]; /* model.name when unset: from the model file's name */
} service;

/*
 * 200 once everything is loaded and the index is complete; 503 "loading" before, with the
 * background index build's progress (passages indexed of the store's, the rate, an ETA), so a
 * load balancer keeps traffic away while a person can watch it; 503 "draining" after SIGTERM.
 * Requests are served meanwhile: retrieval answers over what is indexed and says so.
 */
static void on_health(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    service *s = ctx;
    int draining = atomic_load(&s->draining);
    cairn_rag_status st = {.complete = true};
    if (s->rag) cairn_rag_get_status(s->rag, &st);
    int ready = atomic_load(&s->ready) && !draining && st.complete;
    json_t *o = json_pack("{s:s,s:s,s:f,s:b}", "status",
                          draining ? "draining" : ready ? "ok" : "loading", "version",
                          CAIRN_VERSION_STRING, "uptime_s",
                          (double)(cairn_now_ns() - s->started_ns) / 1e9, "cuda",
                          cairn_gpu_built());
    if (o && !st.complete) {
        json_t *p = json_pack("{s:I,s:I,s:f,s:f,s:b}", "passages", (json_int_t)st.indexed,
                              "total", (json_int_t)st.total, "fraction",
                              st.total ? (double)st.indexed / (double)st.total : 0.0,
                              "passages_per_s", st.rate, "failed", st.failed);
        if (p)
            json_object_set_new(p, "eta_s", st.eta_s >= 0 ? json_real(st.eta_s) : json_null());
        json_object_set_new(o, "progress", p);
    }
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

/* slo.tbt below slo.ttft (each is positive by the schema): the time between tokens is what
 * one iteration takes, the first token needs at least one. */
static int check_slo(const cairn_config *c, cairn_error *err)
{
    int64_t ttft = cairn_config_duration_ns(c, "slo.ttft");
    int64_t tbt = cairn_config_duration_ns(c, "slo.tbt");
    if (tbt < ttft) return 0;
    return cairn_errorf(err, CAIRN_EINVAL, "slo.tbt %.0f ms (from %s) must be below slo.ttft "
                        "%.0f ms (from %s)", (double)tbt / 1e6, cairn_config_source(c, "slo.tbt"),
                        (double)ttft / 1e6, cairn_config_source(c, "slo.ttft"));
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
    if (!rc) rc = check_slo(cfg, &err);
    if (rc) {
        fprintf(stderr, "%s: configuration error: %s\n", prog, err.msg);
        cairn_config_free(cfg);
        *exit_now = 2;
        return rc;
    }
    *out = cfg;
    return 0;
}

/* Loads the LLM (when one is configured or found) and adds the /v1 routes. */
/* workers.device, embed.device (key): "cpu" (-1), a GPU's index, or "auto" (GPU 0 when there
 * is one). */
static int parse_device(const char *key, const char *v, int *device, cairn_error *err)
{
    if (!strcmp(v, "cpu")) {
        *device = -1;
        return 0;
    }
    if (!strcmp(v, "auto")) {
        char why[160];
        *device = cairn_gpu_count(why, sizeof why) > 0 ? 0 : -1;
        if (*device < 0)
            CAIRN_LOG_INFO("on the CPU", "key=%s why=%s", key, why);
        return 0;
    }
    char *end = NULL;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < 0 || n > 1023)
        return cairn_errorf(err, CAIRN_EINVAL, "%s '%s': expected cpu, auto or a "
                            "GPU index 0..1023", key, v);
    *device = (int)n;
    return 0;
}

static int start_api(service *s, cairn_error *err)
{
    cairn_config *c = s->cfg;
    char def[4096];
    const char *model = cairn_config_string(c, "model.path");
    if (!model) {
        snprintf(def, sizeof def, "%s/models/smollm2-135m-instruct-q4_1.gguf",
                 cairn_config_string(c, "data_dir"));
        struct stat st;
        if (stat(def, &st) == 0) model = def;
    }
    if (model) { /* model.name's default, the file's name: smollm2-135m-instruct-q4_1 (taken
                  * now: def is reused for the embedder's path below) */
        const char *base = strrchr(model, '/') ? strrchr(model, '/') + 1 : model;
        size_t n = strlen(base);
        if (n > 5 && strcmp(base + n - 5, ".gguf") == 0) n -= 5;
        snprintf(s->model_name, sizeof s->model_name, "%.*s", (int)n, base);
    }
    int device = -1, edevice = -1, rc;
    /* Checked whether or not a model is there: a bad value is a configuration error. */
    if ((rc = parse_device("workers.device", cairn_config_string(c, "workers.device"), &device,
                           err)) ||
        (rc = parse_device("embed.device", cairn_config_string(c, "embed.device"), &edevice,
                           err)))
        return rc;
    if (model) {
        cairn_workers_params wp = cairn_workers_default_params();
        wp.model_path = model;
        wp.chat_template = cairn_config_string(c, "model.chat_template");
        wp.n_workers = (int)cairn_config_int(c, "workers.count");
        wp.engine.n_threads = (int)cairn_config_int(c, "workers.threads");
        wp.engine.max_seqs = (int)cairn_config_int(c, "workers.max_seqs");
        wp.engine.n_ctx = (int)cairn_config_int(c, "workers.ctx");
        wp.engine.device = device;
        wp.max_queue = (int)cairn_config_int(c, "limits.max_queue");
        wp.timeout_ns = cairn_config_duration_ns(c, "limits.timeout");
        rc = cairn_sched_policy_parse(cairn_config_string(c, "sched.policy"), &wp.sched.policy,
                                      err);
        if (rc) return rc;
        wp.sched.starve_ns = cairn_config_duration_ns(c, "sched.starve");
        wp.sched.offline_occupancy = cairn_config_float(c, "sched.offline_occupancy");
        wp.online_reserve = (int)cairn_config_int(c, "sched.online_reserve");
        if (wp.online_reserve >= wp.engine.max_seqs)
            return cairn_errorf(err, CAIRN_EINVAL,
                                "sched.online_reserve %d must be below workers.max_seqs %d",
                                wp.online_reserve, wp.engine.max_seqs);
        /* The predictor and the budgets from the SLO and the engine's profile (services/slo.h). */
        cairn_slo_params sp = {
            .model_path = model, .model_name = s->model_name,
            .data_dir = cairn_config_string(c, "data_dir"),
            .profile_path = cairn_config_string(c, "sched.profile"),
            .ttft_s = (double)cairn_config_duration_ns(c, "slo.ttft") / 1e9,
            .tbt_s = (double)cairn_config_duration_ns(c, "slo.tbt") / 1e9,
            .budget_s = (double)cairn_config_duration_ns(c, "sched.budget") / 1e9,
            .online_budget_s = (double)cairn_config_duration_ns(c, "sched.online_budget") / 1e9,
            .startup_iterations = (int)cairn_config_int(c, "sched.startup_profile")};
        cairn_slo_plan plan;
        if ((rc = cairn_slo_configure(&sp, &wp.engine, &plan, err))) return rc;
        wp.sched.budget_s = plan.budget_s;
        wp.sched.online_budget_s = plan.online_budget_s;
        if (plan.have_coef) wp.predictor = plan.coef;
        rc = cairn_workers_open(&s->workers, &wp, s->metrics, err);
        if (rc) return cairn_error_prefix(err, "model %s", model);
        CAIRN_LOG_INFO("model loaded", "path=%s workers=%d device=%d", model, wp.n_workers,
                       wp.engine.device);
    } else {
        CAIRN_LOG_WARN("no model", "detail=%s", "generation endpoints answer 503; set model.path");
    }
    const char *emodel = cairn_config_string(c, "embed.model");
    if (!emodel) {
        snprintf(def, sizeof def, "%s/models/all-minilm-l6-v2.gguf",
                 cairn_config_string(c, "data_dir"));
        struct stat st;
        if (stat(def, &st) == 0) emodel = def;
    }
    if (emodel) {
        cairn_embed_params ep = cairn_embed_default_params();
        ep.device = edevice;
        rc = cairn_embed_open(&s->embed, emodel, &ep, err);
        if (rc && edevice >= 0 && !strcmp(cairn_config_string(c, "embed.device"), "auto")) {
            /* auto asked for the GPU only because one is there: the CPU still serves */
            CAIRN_LOG_WARN("embedder on the CPU", "device=%d why=%s", edevice,
                           err ? err->msg : "?");
            ep.device = -1;
            rc = cairn_embed_open(&s->embed, emodel, &ep, err);
        }
        if (rc) return cairn_error_prefix(err, "embedder %s", emodel);
        CAIRN_LOG_INFO("embedder loaded", "path=%s dim=%d device=%d", emodel,
                       cairn_embed_dim(s->embed), cairn_embed_device(s->embed));
    }
    if (s->embed) {
        char idx[4096];
        const char *dir = cairn_config_string(c, "rag.dir");
        if (!dir) {
            snprintf(idx, sizeof idx, "%s/index", cairn_config_string(c, "data_dir"));
            dir = idx;
        }
        cairn_rag_params rp = cairn_rag_default_params();
        rp.dir = dir;
        rp.embed = s->embed;
        rp.prefetch_bytes = (size_t)cairn_config_size(c, "rag.prefetch_bytes");
        rp.fast_bytes = (size_t)cairn_config_size(c, "rag.fast_bytes");
        rp.corpus = cairn_config_string(c, "rag.corpus");
        char corpus[4096];
        snprintf(corpus, sizeof corpus, "%s/corpus/debian-Translation-en",
                 cairn_config_string(c, "data_dir"));
        struct stat cst;
        if (!rp.corpus && stat(corpus, &cst) == 0) rp.corpus = corpus;
        rp.corpus_max = (size_t)cairn_config_int(c, "rag.corpus_max");
        rp.background = true;
        rc = cairn_rag_open(&s->rag, &rp, s->metrics, err);
        if (rc) return cairn_error_prefix(err, "index %s", dir);
        CAIRN_LOG_INFO("index open", "dir=%s passages=%zu", dir, cairn_rag_count(s->rag));
        if (!strcmp(cairn_config_string(c, "docs.log"), "redis")) {
            cairn_doclog_params dp = cairn_doclog_default_params();
            dp.redis_url = cairn_config_string(c, "redis.url");
            if (!dp.redis_url)
                return cairn_errorf(err, CAIRN_EINVAL, "docs.log = redis needs redis.url");
            dp.dir = dir;
            dp.corpus_name = rp.corpus;
            dp.wait_ms = (int)(cairn_config_duration_ns(c, "docs.wait") / CAIRN_NS_PER_MS);
            rc = cairn_doclog_open(&s->doclog, &dp, s->rag, s->metrics, err);
            if (rc) return cairn_error_prefix(err, "docs.log");
        }
    } else if (!strcmp(cairn_config_string(c, "docs.log"), "redis")) {
        return cairn_errorf(err, CAIRN_EINVAL, "docs.log = redis needs the embedder (embed.model)"
                                               " and an index");
    }
    cairn_api_params ap = cairn_api_default_params();
    ap.embed = s->embed;
    ap.rag = s->rag;
    ap.embed_model_name = cairn_config_string(c, "embed.name");
    ap.limits.max_tokens_cap = (int)cairn_config_int(c, "limits.max_tokens");
    ap.limits.temperature = cairn_config_float(c, "sampling.temperature");
    ap.limits.top_p = cairn_config_float(c, "sampling.top_p");
    ap.limits.top_k = (int)cairn_config_int(c, "sampling.top_k");
    ap.limits.min_p = cairn_config_float(c, "sampling.min_p");
    ap.max_concurrent = (int)cairn_config_int(c, "limits.max_concurrent");
    ap.max_queue = (int)cairn_config_int(c, "limits.max_queue");
    ap.api_keys = cairn_config_string(c, "auth.api_keys");
    ap.api_key_hashes = cairn_config_string(c, "auth.api_key_hashes");
    if (cairn_config_string(c, "model.name")) {
        ap.model_name = cairn_config_string(c, "model.name");
    } else if (s->model_name[0]) {
        ap.model_name = s->model_name;
    }
    ap.max_upload = (size_t)cairn_config_size(c, "http.max_upload");
    ap.rag_answer_prefix = cairn_config_bool(c, "rag.answer_prefix");
    ap.workers = s->workers;
    rc = cairn_api_new(&s->api, &ap, s->http, s->metrics, err);
    if (rc || !cairn_config_string(c, "redis.url")) return rc;
    if (!s->workers && s->doclog) {
        CAIRN_LOG_WARN("no offline jobs", "detail=%s",
                       "redis.url serves the document log only: no model is loaded to run jobs");
        return 0;
    }
    if (!s->workers)
        return cairn_errorf(err, CAIRN_EINVAL, "redis.url is set but no model is loaded to run "
                                               "jobs; set model.path");
    cairn_offline_params op = cairn_offline_default_params();
    op.jobs.redis_url = cairn_config_string(c, "redis.url");
    op.jobs.max_deliveries = (int)cairn_config_int(c, "jobs.max_deliveries");
    op.jobs.claim_idle_ms = cairn_config_duration_ns(c, "jobs.claim_idle") / CAIRN_NS_PER_MS;
    op.jobs.result_ttl_s = cairn_config_duration_ns(c, "jobs.result_ttl") / CAIRN_NS_PER_SEC;
    op.runners = (int)cairn_config_int(c, "jobs.runners");
    op.max_offline = (int)cairn_config_int(c, "jobs.max_offline");
    op.summarize.summary_tokens = (int)cairn_config_int(c, "jobs.summary_tokens");
    op.api_keys = ap.api_keys;
    op.api_key_hashes = ap.api_key_hashes;
    rc = cairn_offline_open(&s->offline, &op, s->workers, s->metrics, err);
    if (!rc) rc = cairn_offline_routes(s->offline, s->http);
    if (!rc) CAIRN_LOG_INFO("offline jobs", "runners=%d", op.runners);
    return rc;
}

/* The UI's files: web.dir when set (an error when unusable), else the first of the installed
 * and the source tree's directories that holds them; none found is a warning, not an error. */
static int start_web(service *s, cairn_error *err)
{
    cairn_config *c = s->cfg;
    if (!cairn_config_bool(c, "web.enabled")) return 0;
    const char *dir = cairn_config_string(c, "web.dir");
    static const char *const candidates[] = {CAIRN_WEB_DIR_INSTALL, CAIRN_WEB_DIR_SOURCE};
    cairn_web_params wp = {.chartjs = cairn_config_string(c, "web.chartjs")};
    int rc = CAIRN_ENOTFOUND;
    for (size_t i = 0; i < (dir ? 1 : 2) && rc == CAIRN_ENOTFOUND; i++) {
        wp.dir = dir ? dir : candidates[i];
        rc = cairn_web_open(&s->web, &wp, err);
    }
    if (rc == CAIRN_ENOTFOUND && !dir) {
        CAIRN_LOG_WARN("no web UI", "detail=%s", "no UI files installed; set web.dir");
        return 0;
    }
    if (rc) return cairn_error_prefix(err, "web.dir");
    CAIRN_LOG_INFO("web UI", "dir=%s files=%d", wp.dir, cairn_web_count(s->web));
    return cairn_web_routes(s->web, s->http);
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
    hp.cors_origins = cairn_config_string(c, "http.cors_origins");
    hp.access_log = cairn_config_bool(c, "http.access_log");

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
    if (!rc) rc = start_api(s, err);
    if (!rc && cairn_config_string(c, "edge.enrollment_token")) {
        char em[4096], fm[4096];
        snprintf(em, sizeof em, "%s/edge.gguf", cairn_config_string(c, "edge.models"));
        if (cairn_config_string(c, "edge.teacher"))
            snprintf(fm, sizeof fm, "%s", cairn_config_string(c, "edge.teacher"));
        else
            snprintf(fm, sizeof fm, "%s/foundation.gguf", cairn_config_string(c, "edge.models"));
        cairn_edge_api_params ep = cairn_edge_api_default_params();
        ep.edge_model_path = em, ep.foundation_model_path = fm;
        ep.enrollment_token = cairn_config_string(c, "edge.enrollment_token");
        ep.signing_key_path = cairn_config_string(c, "edge.signing_key");
        ep.rate_samples_per_s = (double)cairn_config_int(c, "edge.rate");
        ep.min_steps_per_bundle = (int)cairn_config_int(c, "edge.min_steps");
        ep.api_keys = cairn_config_string(c, "auth.api_keys");
        ep.api_key_hashes = cairn_config_string(c, "auth.api_key_hashes");
        rc = cairn_edge_api_open(&s->edge, &ep, s->metrics, err);
        if (rc) cairn_error_prefix(err, "edge API (model %s, teacher %s)", em, fm);
        if (!rc) rc = cairn_edge_api_routes(s->edge, s->http);
    }
    if (!rc) rc = start_web(s, err);
    /* Everything is loaded: the first /health answered once the port is open says so (a
     * failed start sets it back). */
    if (!rc) atomic_store(&s->ready, 1);
    if (!rc) rc = cairn_http_start(s->http, err);
    free(cert);
    free(key);
    if (rc) return rc;

    CAIRN_LOG_INFO("listening", "host=%s port=%d threads=%d tls=%s", hp.host,
                   cairn_http_port(s->http), hp.threads, cert_path ? "on" : "off");
    return CAIRN_OK;
}

/*
 * Graceful stop: /health answers 503 draining and new requests 503 with Retry-After (a load
 * balancer moves them to another replica), the job runners hand their jobs back at once, and
 * requests in flight (streams too) get up to shutdown.grace to finish. A second signal ends
 * the wait.
 */
static void drain(service *s, const sigset_t *stop, int sig)
{
    int64_t grace = cairn_config_duration_ns(s->cfg, "shutdown.grace");
    CAIRN_LOG_INFO("draining", "signal=%s grace_s=%.1f in_flight=%ld",
                   sig == SIGINT ? "SIGINT" : "SIGTERM", (double)grace / 1e9,
                   cairn_http_active(s->http));
    atomic_store(&s->draining, 1);
    cairn_http_drain(s->http, 1);
    /* Offline requests end at once (their summaries stop, the jobs go back to the group),
     * then the runners are joined; online requests go on for the grace period. */
    cairn_workers_stop_offline(s->workers);
    cairn_offline_stop(s->offline);
    int64_t t0 = cairn_now_ns();
    struct timespec tick = {.tv_sec = 0, .tv_nsec = 50 * 1000 * 1000};
    long left;
    while ((left = cairn_http_active(s->http)) > 0 && cairn_now_ns() - t0 < grace) {
        if (sigtimedwait(stop, NULL, &tick) > 0) {
            CAIRN_LOG_WARN("second signal: not waiting", "in_flight=%ld", left);
            break;
        }
    }
    CAIRN_LOG_INFO("shutting down", "in_flight=%ld waited_s=%.2f", cairn_http_active(s->http),
                   (double)(cairn_now_ns() - t0) / 1e9);
}

static pthread_t main_thread;

/* Runs only on a thread that does not block the signal (one a library started before main):
 * the signal goes on to the main thread, which blocks it until sigwait() takes it. */
static void forward_stop(int sig) { pthread_kill(main_thread, sig); }

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
    main_thread = pthread_self();
    struct sigaction fwd = {.sa_handler = forward_stop};
    sigfillset(&fwd.sa_mask);
    sigaction(SIGINT, &fwd, NULL);
    sigaction(SIGTERM, &fwd, NULL);
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
        drain(&s, &stop, sig);
    }
    atomic_store(&s.ready, 0);
    cairn_workers_stop(s.workers); /* answers every deferred request before the server stops */
    cairn_offline_stop(s.offline); /* after the workers: the runners' requests have ended */
    cairn_api_stop(s.api);
    cairn_http_free(s.http);
    cairn_api_free(s.api);
    cairn_doclog_close(s.doclog); /* after the HTTP server: no request waits on it */
    cairn_offline_close(s.offline); /* before the workers it uses */
    cairn_workers_close(s.workers);
    cairn_rag_close(s.rag);
    cairn_embed_close(s.embed);
    cairn_edge_api_close(s.edge); /* after the HTTP server: no handler may still use it */
    cairn_web_close(s.web);
    cairn_metrics_free(s.metrics);
    cairn_config_free(s.cfg);
    if (!status) CAIRN_LOG_INFO("stopped", "uptime_s=%.1f",
                                (double)(cairn_now_ns() - s.started_ns) / 1e9);
    return status;
}
