/*
 * services/cmd_adapt_eval.c — `cairn adapt eval`: the cloud–edge adaptation benchmark.
 *
 * For every (corruption, severity) stream of corrupted Fashion-MNIST images, four methods see the
 * same images in the same order, in batches:
 *   none      the edge model as trained (batchnorm running statistics);
 *   bn        test-time batchnorm statistics of each batch, nothing learnt;
 *   cema      N simulated devices (libcairn_edge, libcurl transport) run the edge model, select
 *             samples with CEMA's filter and upload them to cairnd's edge API (in this process,
 *             on loopback, port 0); the cloud adapts and publishes signed bundles; every
 *             update_every rounds the devices flush, the cloud finishes its queue, and the
 *             devices fetch and apply the newest bundle; devices normalise with each batch's
 *             statistics (--edge-bn batch, the default) or the running ones (--edge-bn running);
 *   all       as cema, but every sample is uploaded (the same distillation on everything).
 * Accuracy is online: each image is scored with the parameters the device had when it saw it.
 * Each stream starts from the base model and a fresh cloud. One JSON line per (stream, method)
 * goes to stdout; a markdown table follows (or goes to --markdown FILE).
 */
#include "services/cmd_adapt.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapt/bundle.h"
#include "adapt/cema_select.h"
#include "adapt/corrupt.h"
#include "adapt/data.h"
#include "adapt/nn/nn.h"
#include "adapt/nn/nn_gguf.h"
#include "proto/gguf.h"
#include "clients/edge/cairn_edge.h"
#include "common/clock.h"
#include "common/metrics.h"
#include "proto/edge.h"
#include "services/edge_api.h"
#include "services/http.h"

int cairn_cmd_adapt_eval(int argc, char **argv);

static const char *EVAL_USAGE =
    "usage: cairn adapt eval [--edge FILE] [--teacher FILE] [--data DIR] [--images N]\n"
    "                        [--devices N] [--batch B] [--update-every U]\n"
    "                        [--split test|train|holdout]\n"
    "                        [--corruptions a,b,...] [--severities 3,5] [--methods "
    "none,bn,cema,all]\n"
    "                        [--lambda L] [--lambda-min L] [--d-margin D] [--e-min E]\n"
    "                        [--upload-fraction Q] [--upload-random R] [--upload-power B]\n"
    "                        [--lr-edge LR]\n"
    "                        [--lr-foundation LR] [--new-per-step K] [--cloud-batch B]\n"
    "                        [--replay N] [--e0 F] [--foundation-steps S] [--edge-steps S]\n"
    "                        [--temperature T] [--momentum M] [--adapt-foundation 0|1]\n"
    "                        [--min-steps S]\n"
    "                        [--w-kl W] [--w-ent W] [--w-ce W] [--edge-bn batch|running]\n"
    "                        [--markdown FILE] [--stream DIR] [--seed S]\n"
    "\n"
    "Streams N (default 1000) corrupted images per (corruption, severity) through the methods\n"
    "none, bn (test-time batchnorm statistics), cema (selective upload to an in-process cairnd\n"
    "on loopback) and all (upload everything); devices (default 4) infer batches of B (32) and\n"
    "fetch bundles every U (2) rounds; with --edge-bn batch (the default) the devices of cema\n"
    "and all normalise with each batch's statistics, as bn does. --split train draws the\n"
    "images from the train set (to choose hyperparameters without the test labels); --split\n"
    "holdout from training images 48,000..59,999, which the committed teacher never saw.\n"
    "JSON lines on stdout, then a table.\n"
    "--teacher FILE (or --foundation FILE) is the cloud's teacher: any adapt/nn GGUF with\n"
    "batchnorms that takes the edge model's input and gives its classes (adapt/models/\n"
    "foundation.gguf by default; a foundation-res checkpoint of any width). It is checked\n"
    "before any stream runs.\n"
    "--upload-fraction Q (0 < Q <= 1) gives each device an upload budget: of every batch, at\n"
    "most the fraction Q, its most uncertain samples that pass the other rules (0: no budget);\n"
    "--upload-random R gives the share R of that budget to samples drawn at random instead;\n"
    "--upload-power B (B > 0) draws the rest with probability proportional to entropy^B\n"
    "(power acquisition) instead of taking the most uncertain.\n"
    "--stream DIR evaluates on an operator's own stream instead of the corruptions: DIR holds\n"
    "images-idx3-ubyte and labels-idx1-ubyte (IDX files as Fashion-MNIST's, optionally .gz:\n"
    "28 x 28 images, labels 0..9), whose first N images are streamed in their order.\n"
    "--min-steps S (0..8, default 0) makes every update the cloud publishes at a sync carry at\n"
    "least S steps, topped up with steps on its replay buffer alone, so that a cloud fed a\n"
    "budget spends on an update what one fed every sample does.\n"
    "--seed S (default 1) seeds the cloud's replay draws; the images and their corruptions do\n"
    "not depend on it, so two seeds measure the method's run-to-run spread on the same streams.\n";

#define N_METHODS 4
static const char *const method_names[N_METHODS] = {"none", "bn", "cema", "all"};

typedef struct eval_opts {
    const char *edge, *foundation, *data, *markdown; /* foundation: the teacher (--teacher) */
    const char *stream; /* an operator's stream directory, in place of the corruptions */
    int images, devices, batch, update_every, edge_batch_stats;
    int min_steps; /* the cloud's steps per bundle at least (cairn_edge_api_params) */
    cairn_adapt_split split;
    int methods[N_METHODS];
    int corr[CAIRN_CORRUPT_COUNT], n_corr;
    int sev[5], n_sev;
    cairn_cema_select_params sel;
    cairn_cema_params cema;
    /* The teacher as check_teacher found it: its architecture name (from the file's metadata,
     * letters, digits and -._ only), epochs trained (-1: not said), trainable parameters, and
     * the file's SHA-256 in hex. */
    char teacher_arch[40], teacher_sha[2 * CAIRN_EDGE_SHA256_LEN + 1];
    int teacher_epochs;
    long teacher_params;
} eval_opts;

typedef struct result {
    double acc, uploaded, seconds;
    unsigned long long up, down, steps, bundles;
    int done;
} result;

/* ---- One stream, offline methods ------------------------------------------------------------ */

static int run_local(cairn_nn_model *m, cairn_nn_bn_mode mode, const cairn_dataset *d, int batch,
                     result *r, cairn_error *err)
{
    const int K = CAIRN_FMNIST_CLASSES, D = d->c * d->h * d->w;
    int64_t t0 = cairn_now_ns();
    cairn_nn_set_bn_mode(m, mode);
    int correct = 0;
    for (int i = 0; i < d->n; i += batch) {
        int n = d->n - i < batch ? d->n - i : batch;
        const float *out;
        int rc = cairn_nn_forward(m, d->images + (size_t)i * D, n, &out, err);
        if (rc) return rc;
        for (int j = 0; j < n; j++) {
            int best = 0;
            for (int k = 1; k < K; k++)
                if (out[j * K + k] > out[j * K + best]) best = k;
            correct += best == d->labels[i + j];
        }
    }
    r->acc = (double)correct / d->n;
    r->seconds = (double)(cairn_now_ns() - t0) / 1e9;
    r->done = 1;
    return 0;
}

/* ---- One stream through cairnd ------------------------------------------------------------- */

typedef struct membuf {
    uint8_t *p;
    size_t n;
} membuf;

static size_t on_body(char *data, size_t size, size_t nmemb, void *ctx)
{
    membuf *b = ctx;
    size_t n = size * nmemb;
    if (b->n + n > (1u << 20)) return 0;
    uint8_t *q = realloc(b->p, b->n + n);
    if (!q) return 0;
    memcpy(q + b->n, data, n);
    b->p = q;
    b->n += n;
    return n;
}

/* Enrolls one device with POST /v1/edge/devices. */
static int enroll(const char *base, const char *token, int i, cairn_edge_register_resp *out,
                  cairn_error *err)
{
    cairn_edge_register_req rq = {0};
    snprintf(rq.enrollment_token, sizeof rq.enrollment_token, "%s", token);
    snprintf(rq.device_name, sizeof rq.device_name, "sim-%d", i);
    snprintf(rq.model_name, sizeof rq.model_name, "edge");
    uint8_t *body = NULL;
    size_t len = 0;
    int rc = cairn_edge_register_req_encode(&rq, &body, &len, err);
    if (rc) return rc;
    char url[256];
    snprintf(url, sizeof url, "%s/v1/edge/devices", base);
    CURL *c = curl_easy_init();
    membuf b = {0};
    long status = 0;
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/x-protobuf");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    CURLcode cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hdr);
    free(body);
    if (cc != CURLE_OK || status != 200)
        rc = cairn_errorf(err, CAIRN_ENET, "enrollment: %s, HTTP %ld", curl_easy_strerror(cc),
                          status);
    else
        rc = cairn_edge_register_resp_decode(b.p, b.n, out, err);
    free(b.p);
    return rc;
}

static int run_cloud(const eval_opts *o, int upload_all, const cairn_dataset *d, result *r,
                     cairn_error *err)
{
    const int K = CAIRN_FMNIST_CLASSES, D = d->c * d->h * d->w, N = o->devices, B = o->batch;
    int64_t t0 = cairn_now_ns();
    cairn_metrics *metrics = NULL;
    cairn_http *http = NULL;
    cairn_edge_api *api = NULL;
    cairn_edge **dev = calloc((size_t)N, sizeof *dev);
    float *probs = malloc((size_t)B * K * sizeof(float)), *ent = malloc((size_t)B * sizeof(float));
    uint8_t *keep = malloc((size_t)B);
    char *pem = NULL;
    int rc = (!dev || !probs || !ent || !keep) ? cairn_errorf(err, CAIRN_ENOMEM, "out of memory")
                                               : cairn_metrics_new(&metrics, err);
    cairn_edge_api_params ap = cairn_edge_api_default_params();
    ap.edge_model_path = o->edge;
    ap.foundation_model_path = o->foundation;
    ap.enrollment_token = "eval-enrollment-token";
    ap.rate_samples_per_s = 1e6;
    ap.rate_burst = 1e6;
    ap.adapt_normal_priority = 1; /* the process's nice value decides; nothing else is served */
    ap.cema = o->cema;
    ap.min_steps_per_bundle = o->min_steps;
    if (!rc) rc = cairn_edge_api_open(&api, &ap, metrics, err);
    cairn_http_params hp = cairn_http_default_params();
    hp.host = "127.0.0.1";
    hp.port = 0;
    hp.threads = 2;
    hp.max_body = 8u << 20;
    if (!rc) rc = cairn_http_new(&http, &hp, metrics, err);
    if (!rc) rc = cairn_edge_api_routes(api, http);
    if (!rc) rc = cairn_http_start(http, err);
    if (!rc) rc = cairn_edge_api_public_key(api, &pem, err);
    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%d", http ? cairn_http_port(http) : 0);
    for (int i = 0; !rc && i < N; i++) {
        cairn_edge_register_resp reg;
        rc = enroll(base, ap.enrollment_token, i, &reg, err);
        cairn_edge_transport t;
        if (!rc) rc = cairn_edge_transport_curl_new(&t, base, reg.device_key, 30000, err);
        if (rc) break;
        cairn_edge_params ep = cairn_edge_default_params();
        ep.model_name = "edge";
        ep.device_id = reg.device_id;
        ep.public_key_pem = pem;
        ep.max_batch = B;
        ep.queue_capacity = 4096;
        ep.upload_batch = 32;
        ep.select = o->sel;
        ep.batch_stats = o->edge_batch_stats;
        ep.seed = (uint64_t)i + 1;
        rc = cairn_edge_open(&dev[i], o->edge, &ep, &t, err);
    }
    int correct = 0, seen = 0;
    for (int i = 0, round = 0; !rc && i < d->n; round++) {
        for (int di = 0; !rc && di < N && i < d->n; di++, i += B) {
            int n = d->n - i < B ? d->n - i : B;
            const float *x = d->images + (size_t)i * D;
            if (upload_all) {
                rc = cairn_edge_infer(dev[di], x, n, probs, ent, err);
                if (!rc) rc = cairn_edge_submit(dev[di], x, probs, ent, NULL, n, err);
            } else {
                rc = cairn_edge_process(dev[di], x, n, probs, ent, keep, err);
            }
            if (rc < 0) break;
            rc = 0;
            for (int j = 0; j < n; j++) {
                int best = 0;
                for (int k = 1; k < K; k++)
                    if (probs[j * K + k] > probs[j * K + best]) best = k;
                correct += best == d->labels[i + j];
            }
            seen += n;
        }
        if (rc || (round + 1) % o->update_every != 0) continue;
        /* Sync point: everything selected so far reaches the cloud, the cloud adapts on it, and
         * every device takes the newest bundle. */
        for (int di = 0; di < N; di++)
            cairn_edge_flush(dev[di], 60000);
        if (cairn_edge_api_wait_idle(api, 120000)) {
            rc = cairn_errorf(err, CAIRN_ETIMEDOUT, "the cloud did not finish its queue");
            break;
        }
        for (int di = 0; !rc && di < N; di++) {
            int u = cairn_edge_update(dev[di], err);
            if (u < 0) rc = u;
        }
    }
    if (!rc) {
        unsigned long long sel = 0, up = 0, down = 0;
        for (int di = 0; di < N; di++) {
            cairn_edge_flush(dev[di], 60000);
            cairn_edge_stats s;
            cairn_edge_get_stats(dev[di], &s);
            sel += s.selected;
            up += s.bytes_up;
            down += s.bytes_down;
        }
        cairn_edge_api_stats as;
        cairn_edge_api_get_stats(api, &as);
        r->acc = (double)correct / seen;
        r->uploaded = (double)sel / seen;
        r->up = up;
        r->down = down;
        r->steps = as.steps;
        r->bundles = as.bundles;
        r->seconds = (double)(cairn_now_ns() - t0) / 1e9;
        r->done = 1;
    }
    for (int di = 0; dev && di < N; di++)
        cairn_edge_close(dev[di]);
    cairn_http_free(http);
    cairn_edge_api_close(api);
    cairn_metrics_free(metrics);
    free(pem);
    free(dev);
    free(probs);
    free(ent);
    free(keep);
    return rc;
}

/* ---- The teacher ----------------------------------------------------------------------------- */

/*
 * Checks, before any stream runs, that the teacher file loads, has batchnorms for CEMA to adapt,
 * takes the edge model's input and gives its classes, and that a cloud opens with it and the
 * cloud parameters (so that a bad file or value fails at once, not after the local methods have
 * run); fills o's teacher description. Returns 0 or a negative code with the reason in err.
 */
static int check_teacher(eval_opts *o, cairn_nn_model *edge, cairn_error *err)
{
    cairn_nn_model *t = NULL;
    int rc = cairn_nn_load(&t, o->foundation, err);
    if (rc) return cairn_error_prefix(err, "teacher %s", o->foundation);
    int ec, eh, ew, tc, th, tw, norms = 0;
    long params = 0;
    cairn_nn_input_shape(edge, &ec, &eh, &ew);
    cairn_nn_input_shape(t, &tc, &th, &tw);
    for (int i = 0; i < cairn_nn_param_count(t); i++) {
        const cairn_nn_param *q = cairn_nn_param_at(t, i);
        params += q->trainable ? (long)q->value.numel : 0;
        norms += q->kind == CAIRN_NN_NORM_WEIGHT;
    }
    size_t tk = cairn_nn_output_size(t), ek = cairn_nn_output_size(edge);
    cairn_nn_model_free(t);
    if (tc != ec || th != eh || tw != ew || tk != ek)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "teacher %s takes %dx%dx%d and gives %zu classes; the edge model "
                            "%s takes %dx%dx%d and gives %zu",
                            o->foundation, tc, th, tw, tk, o->edge, ec, eh, ew, ek);
    if (norms == 0)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "teacher %s has no batchnorm: CEMA adapts a teacher's batchnorms",
                            o->foundation);
    cairn_cema_cloud *c = NULL;
    if ((rc = cairn_cema_cloud_open(&c, o->edge, o->foundation, &o->cema, err)))
        return cairn_error_prefix(err, "cloud with teacher %s", o->foundation);
    cairn_cema_cloud_close(c);

    uint8_t sha[CAIRN_EDGE_SHA256_LEN];
    if ((rc = cairn_bundle_sha256_file(o->foundation, sha, err))) return rc;
    for (int i = 0; i < CAIRN_EDGE_SHA256_LEN; i++)
        snprintf(o->teacher_sha + 2 * i, 3, "%02x", sha[i]);
    o->teacher_params = params;
    o->teacher_epochs = -1;
    snprintf(o->teacher_arch, sizeof o->teacher_arch, "unnamed");
    cairn_gguf *g = NULL;
    if (cairn_gguf_open(&g, o->foundation, err) == 0) {
        const char *a;
        size_t n;
        uint32_t ep;
        if (!cairn_gguf_get_str(g, "cairn.model.arch", &a, &n, err) && n > 0 &&
            n < sizeof o->teacher_arch) {
            for (size_t i = 0; i < n; i++) {
                char ch = a[i];
                int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                         (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_';
                o->teacher_arch[i] = ok ? ch : '?';
            }
            o->teacher_arch[n] = 0;
        }
        if (!cairn_gguf_get_u32(g, "cairn.train.epochs_done", &ep, err) ||
            !cairn_gguf_get_u32(g, "cairn.train.epochs", &ep, err))
            o->teacher_epochs = (int)ep;
        cairn_gguf_close(g);
    }
    err->msg[0] = 0;
    return 0;
}

/* ---- Options ------------------------------------------------------------------------------ */

static int parse_int_opt(const char *opt, const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "cairn adapt eval: %s wants an integer in %d..%d, got '%s'\n", opt, lo, hi,
                s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_float_opt(const char *opt, const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s || !(v >= 0)) {
        fprintf(stderr, "cairn adapt eval: %s wants a non-negative number, got '%s'\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* An unsigned 64-bit decimal; strtoull would take "-1" as 2^64 - 1, so a sign is refused. */
static int parse_seed_opt(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s || s[0] < '0' || s[0] > '9') {
        fprintf(stderr, "cairn adapt eval: --seed wants an unsigned integer, got '%s'\n", s);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static int parse_opts(int argc, char **argv, eval_opts *o)
{
    memset(o, 0, sizeof *o);
    o->edge = "adapt/models/edge.gguf";
    o->foundation = "adapt/models/foundation.gguf";
    o->images = 1000;
    o->devices = 4;
    o->batch = 32;
    o->update_every = 2;
    o->edge_batch_stats = 1;
    o->sel = cairn_cema_select_default_params();
    o->cema = cairn_cema_default_params();
    const char *corr = NULL, *sev = "3,5", *methods = "none,bn,cema,all";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "cairn adapt eval: '%s' needs a value or is unknown\n%s", a,
                    EVAL_USAGE);
            return -1;
        }
        i++;
        int bad = 0;
        if (!strcmp(a, "--edge"))
            o->edge = v;
        else if (!strcmp(a, "--foundation") || !strcmp(a, "--teacher"))
            o->foundation = v;
        else if (!strcmp(a, "--data"))
            o->data = v;
        else if (!strcmp(a, "--stream"))
            o->stream = v;
        else if (!strcmp(a, "--markdown"))
            o->markdown = v;
        else if (!strcmp(a, "--corruptions"))
            corr = v;
        else if (!strcmp(a, "--severities"))
            sev = v;
        else if (!strcmp(a, "--methods"))
            methods = v;
        else if (!strcmp(a, "--split"))
            bad = cairn__adapt_split_parse(v, &o->split);
        else if (!strcmp(a, "--edge-bn")) {
            if (strcmp(v, "batch") && strcmp(v, "running")) bad = -1;
            o->edge_batch_stats = !strcmp(v, "batch");
        } else if (!strcmp(a, "--images"))
            bad = parse_int_opt(a, v, 2, 10000, &o->images);
        else if (!strcmp(a, "--devices"))
            bad = parse_int_opt(a, v, 1, 64, &o->devices);
        else if (!strcmp(a, "--batch"))
            bad = parse_int_opt(a, v, 2, 256, &o->batch);
        else if (!strcmp(a, "--update-every"))
            bad = parse_int_opt(a, v, 1, 10000, &o->update_every);
        else if (!strcmp(a, "--new-per-step"))
            bad = parse_int_opt(a, v, 1, 4096, &o->cema.new_per_step);
        else if (!strcmp(a, "--lambda"))
            bad = parse_float_opt(a, v, &o->sel.lambda);
        else if (!strcmp(a, "--d-margin"))
            bad = parse_float_opt(a, v, &o->sel.d_margin);
        else if (!strcmp(a, "--e-min"))
            bad = parse_float_opt(a, v, &o->sel.e_min);
        else if (!strcmp(a, "--lambda-min"))
            bad = parse_float_opt(a, v, &o->sel.lambda_min);
        else if (!strcmp(a, "--upload-fraction"))
            bad = parse_float_opt(a, v, &o->sel.upload_fraction);
        else if (!strcmp(a, "--upload-random"))
            bad = parse_float_opt(a, v, &o->sel.upload_random);
        else if (!strcmp(a, "--upload-power"))
            bad = parse_float_opt(a, v, &o->sel.upload_power);
        else if (!strcmp(a, "--lr-edge"))
            bad = parse_float_opt(a, v, &o->cema.lr_edge);
        else if (!strcmp(a, "--lr-foundation"))
            bad = parse_float_opt(a, v, &o->cema.lr_foundation);
        else if (!strcmp(a, "--w-kl"))
            bad = parse_float_opt(a, v, &o->cema.w_kl);
        else if (!strcmp(a, "--w-ent"))
            bad = parse_float_opt(a, v, &o->cema.w_ent);
        else if (!strcmp(a, "--w-ce"))
            bad = parse_float_opt(a, v, &o->cema.w_ce);
        else if (!strcmp(a, "--cloud-batch"))
            bad = parse_int_opt(a, v, 2, 1024, &o->cema.batch_size);
        else if (!strcmp(a, "--replay"))
            bad = parse_int_opt(a, v, 0, 1 << 20, &o->cema.replay_capacity);
        else if (!strcmp(a, "--e0"))
            bad = parse_float_opt(a, v, &o->cema.e0_fraction);
        else if (!strcmp(a, "--temperature"))
            bad = parse_float_opt(a, v, &o->cema.temperature);
        else if (!strcmp(a, "--momentum"))
            bad = parse_float_opt(a, v, &o->cema.momentum);
        else if (!strcmp(a, "--foundation-steps"))
            bad = parse_int_opt(a, v, 1, 64, &o->cema.foundation_steps);
        else if (!strcmp(a, "--edge-steps"))
            bad = parse_int_opt(a, v, 1, 64, &o->cema.edge_steps);
        else if (!strcmp(a, "--adapt-foundation"))
            bad = parse_int_opt(a, v, 0, 1, &o->cema.adapt_foundation);
        else if (!strcmp(a, "--min-steps"))
            bad = parse_int_opt(a, v, 0, 8, &o->min_steps);
        else if (!strcmp(a, "--seed"))
            bad = parse_seed_opt(v, &o->cema.seed);
        else {
            fprintf(stderr, "cairn adapt eval: unexpected argument '%s'\n%s", a, EVAL_USAGE);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "cairn adapt eval: bad value for %s: '%s'\n", a, v);
            return -1;
        }
    }
    for (int m = 0; m < N_METHODS; m++) {
        const char *p = strstr(methods, method_names[m]);
        size_t l = strlen(method_names[m]);
        o->methods[m] = p && (p == methods || p[-1] == ',') && (p[l] == ',' || !p[l]);
    }
    if (corr) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", corr);
        for (char *s = NULL, *t = strtok_r(buf, ",", &s); t; t = strtok_r(NULL, ",", &s)) {
            cairn_corruption c;
            cairn_error err = {0};
            if (cairn_corruption_parse(t, &c, &err) || o->n_corr == CAIRN_CORRUPT_COUNT) {
                fprintf(stderr, "cairn adapt eval: %s\n", err.msg);
                return -1;
            }
            o->corr[o->n_corr++] = (int)c;
        }
    } else {
        for (int c = 0; c < CAIRN_CORRUPT_COUNT; c++)
            o->corr[o->n_corr++] = c;
    }
    char buf[64];
    snprintf(buf, sizeof buf, "%s", sev);
    for (char *s = NULL, *t = strtok_r(buf, ",", &s); t; t = strtok_r(NULL, ",", &s)) {
        int v;
        if (o->n_sev == 5 || parse_int_opt("--severities", t, 1, 5, &v)) return -1;
        o->sev[o->n_sev++] = v;
    }
    if (o->stream) { /* one stream, as it comes: no corruption, no severity */
        o->n_corr = 1;
        o->n_sev = 1;
        o->sev[0] = 0;
    }
    return o->n_sev ? 0 : -1;
}

uint64_t cairn__adapt_stream_seed(int corruption, int severity, cairn_adapt_split split)
{
    return 1000u * (uint64_t)corruption + (uint64_t)severity + 500000u * (uint64_t)split;
}

int cairn__adapt_split_parse(const char *s, cairn_adapt_split *out)
{
    for (int i = CAIRN_ADAPT_SPLIT_TEST; i <= CAIRN_ADAPT_SPLIT_HOLDOUT; i++)
        if (!strcmp(s, cairn__adapt_split_name((cairn_adapt_split)i))) {
            *out = (cairn_adapt_split)i;
            return 0;
        }
    return -1;
}

const char *cairn__adapt_split_name(cairn_adapt_split s)
{
    return s == CAIRN_ADAPT_SPLIT_TEST    ? "test"
           : s == CAIRN_ADAPT_SPLIT_TRAIN ? "train"
                                          : "holdout";
}

int cairn__adapt_split_load(cairn_dataset *full, cairn_dataset *sub, const char *dir,
                            cairn_adapt_split s, int n, cairn_error *err)
{
    int rc = cairn_fmnist_load(
        full, dir, s == CAIRN_ADAPT_SPLIT_TEST ? CAIRN_FMNIST_TEST : CAIRN_FMNIST_TRAIN, err);
    if (rc || s != CAIRN_ADAPT_SPLIT_HOLDOUT)
        return rc ? rc : cairn_dataset_subset(sub, full, n, err);
    if (full->n <= CAIRN_ADAPT_HOLDOUT_FROM) {
        cairn_dataset_free(full);
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "the train set has %d images, the holdout starts at %d", full->n,
                            CAIRN_ADAPT_HOLDOUT_FROM);
    }
    /* Move the tail to the front and shrink: full becomes the holdout itself. */
    const size_t D = (size_t)full->c * full->h * full->w, from = CAIRN_ADAPT_HOLDOUT_FROM;
    const int m = full->n - CAIRN_ADAPT_HOLDOUT_FROM;
    memmove(full->images, full->images + from * D, (size_t)m * D * sizeof(float));
    memmove(full->labels, full->labels + from, (size_t)m * sizeof(int));
    full->n = m;
    return cairn_dataset_subset(sub, full, n, err);
}

/* ---- Report -------------------------------------------------------------------------------- */

static void print_json(const eval_opts *o, const char *corr, int sev, int m, const result *r)
{
    printf("{\"bench\":\"adapt_eval\",\"split\":\"%s\",\"corruption\":\"%s\",\"severity\":%d,"
           "\"method\":\"%s\",\"images\":%d,\"accuracy\":%.4f",
           cairn__adapt_split_name(o->split), corr, sev, method_names[m], o->images, r->acc);
    if (m >= 2)
        printf(",\"uploaded_fraction\":%.4f,\"bytes_up\":%llu,\"bytes_down\":%llu,\"steps\":%llu,"
               "\"bundles\":%llu,\"devices\":%d,\"teacher\":\"%s\",\"teacher_sha256\":\"%s\","
               "\"lambda\":%g,\"lambda_min\":%g,\"d_margin\":%g,\"upload_fraction\":%g,"
               "\"upload_random\":%g,\"upload_power\":%g,"
               "\"new_per_step\":%d,\"min_steps\":%d,\"seed\":%llu",
               r->uploaded, r->up, r->down, r->steps, r->bundles, o->devices, o->teacher_arch,
               o->teacher_sha, (double)o->sel.lambda, (double)o->sel.lambda_min,
               (double)o->sel.d_margin, (double)o->sel.upload_fraction,
               (double)o->sel.upload_random, (double)o->sel.upload_power, o->cema.new_per_step,
               o->min_steps, (unsigned long long)o->cema.seed);
    printf(",\"seconds\":%.2f}\n", r->seconds);
    fflush(stdout);
}

static void print_table(FILE *f, const eval_opts *o, result (*res)[5][N_METHODS])
{
    fprintf(f, "| corruption | sev | none | bn | cema | all | cema − none | cema uploaded | "
               "cema up / down (KiB) | all up / down (KiB) |\n");
    fprintf(f, "|---|---|---|---|---|---|---|---|---|---|\n");
    for (int si = 0; si < o->n_sev; si++) {
        double sum[N_METHODS] = {0}, upl = 0, bu[2] = {0}, bd[2] = {0};
        for (int ci = 0; ci <= o->n_corr; ci++) {
            const int avg = ci == o->n_corr;
            const result *r = avg ? NULL : res[ci][si];
            double v[N_METHODS], u, up[2], dn[2];
            for (int m = 0; m < N_METHODS; m++)
                v[m] = avg ? sum[m] / o->n_corr : r[m].acc;
            u = avg ? upl / o->n_corr : r[2].uploaded;
            for (int k = 0; k < 2; k++) {
                up[k] = avg ? bu[k] / o->n_corr : (double)r[2 + k].up / 1024;
                dn[k] = avg ? bd[k] / o->n_corr : (double)r[2 + k].down / 1024;
            }
            if (!avg) {
                for (int m = 0; m < N_METHODS; m++)
                    sum[m] += v[m];
                upl += u;
                for (int k = 0; k < 2; k++)
                    bu[k] += up[k], bd[k] += dn[k];
            }
            const char *name = o->stream ? "stream"
                                         : cairn_corruption_name((cairn_corruption)o->corr[ci]);
            fprintf(f, "| %s%s%s |", avg ? "**" : "", avg ? "average" : name, avg ? "**" : "");
            fprintf(f, o->stream ? " – |" : " %d |", o->sev[si]);
            for (int m = 0; m < N_METHODS; m++)
                fprintf(f, o->methods[m] ? " %.3f |" : " – |", v[m]);
            if (o->methods[0] && o->methods[2])
                fprintf(f, " %+.1f |", 100 * (v[2] - v[0]));
            else
                fprintf(f, " – |");
            fprintf(f, o->methods[2] ? " %.1f%% |" : " – |", 100 * u);
            for (int k = 0; k < 2; k++)
                fprintf(f, o->methods[2 + k] ? " %.0f / %.0f |" : " – |", up[k], dn[k]);
            fprintf(f, "\n");
        }
    }
}

int cairn_cmd_adapt_eval(int argc, char **argv)
{
    eval_opts o;
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(EVAL_USAGE, stdout);
        return 0;
    }
    if (parse_opts(argc, argv, &o)) return 2;
    cairn_error err = {0};
    cairn_dataset full = {0}, sub = {0};
    cairn_nn_model *m = NULL;
    int rc;
    if (o.stream) {
        rc = cairn_stream_load(&full, o.stream, &err);
        if (!rc) rc = cairn_dataset_head(&sub, &full, o.images, &err);
    } else {
        rc = cairn__adapt_split_load(&full, &sub, o.data, o.split, o.images, &err);
    }
    if (!rc) rc = cairn_nn_load(&m, o.edge, &err);
    cairn_nn_model_params mp = cairn_nn_model_default_params();
    mp.max_batch = o.batch;
    if (!rc) rc = cairn_nn_model_prepare(m, &mp, &err);
    if (!rc && (o.methods[2] || o.methods[3])) rc = check_teacher(&o, m, &err);
    if (!rc && (o.methods[2] || o.methods[3])) { /* the devices' selection, before any stream */
        cairn_cema_selector *sel = NULL;
        rc = cairn_cema_selector_new(&sel, CAIRN_FMNIST_CLASSES, &o.sel, &err);
        cairn_cema_selector_free(sel);
    }
    if (rc) {
        fprintf(stderr, "cairn adapt eval: %s\n", err.msg);
        cairn_dataset_free(&full);
        cairn_dataset_free(&sub);
        cairn_nn_model_free(m);
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    result(*res)[5][N_METHODS] = calloc((size_t)o.n_corr, sizeof *res);
    fprintf(stderr,
            "adapt eval: %d %s images per stream, %d corruptions x %d severities, %d devices, "
            "batch %d, bundles every %d rounds; lambda %g lambda_min %g d_margin %g e_min %g "
            "upload_fraction %g upload_random %g upload_power %g lr_edge %g "
            "lr_foundation %g new_per_step %d cloud_batch %d replay %d e0 %g foundation_steps %d "
            "edge_steps %d temperature %g momentum %g adapt_foundation %d min_steps %d w_kl %g "
            "w_ent %g w_ce %g seed %llu\n",
            o.images, cairn__adapt_split_name(o.split), o.n_corr, o.n_sev, o.devices, o.batch,
            o.update_every, (double)o.sel.lambda, (double)o.sel.lambda_min, (double)o.sel.d_margin,
            (double)o.sel.e_min, (double)o.sel.upload_fraction, (double)o.sel.upload_random,
            (double)o.sel.upload_power, (double)o.cema.lr_edge, (double)o.cema.lr_foundation,
            o.cema.new_per_step, o.cema.batch_size, o.cema.replay_capacity,
            (double)o.cema.e0_fraction, o.cema.foundation_steps, o.cema.edge_steps,
            (double)o.cema.temperature, (double)o.cema.momentum, o.cema.adapt_foundation,
            o.min_steps, (double)o.cema.w_kl, (double)o.cema.w_ent, (double)o.cema.w_ce,
            (unsigned long long)o.cema.seed);
    if (o.methods[2] || o.methods[3]) {
        char eps[32] = "epochs not recorded";
        if (o.teacher_epochs >= 0) snprintf(eps, sizeof eps, "%d epochs", o.teacher_epochs);
        fprintf(stderr, "adapt eval: teacher %s: %s, %ld parameters, %s, sha256 %s\n", o.foundation,
                o.teacher_arch, o.teacher_params, eps, o.teacher_sha);
    }
    if (o.stream)
        fprintf(stderr, "adapt eval: the stream in %s: the first %d of its %d images, in order\n",
                o.stream, sub.n, full.n);
    int64_t t0 = cairn_now_ns();
    for (int ci = 0; res && !rc && ci < o.n_corr; ci++) {
        for (int si = 0; !rc && si < o.n_sev; si++) {
            cairn_dataset d = {0};
            const char *cname =
                o.stream ? "stream" : cairn_corruption_name((cairn_corruption)o.corr[ci]);
            uint64_t seed = cairn__adapt_stream_seed(o.corr[ci], o.sev[si], o.split);
            if (o.stream)
                rc = cairn_dataset_head(&d, &sub, sub.n, &err);
            else
                rc = cairn_corrupt_dataset(&d, &sub, (cairn_corruption)o.corr[ci], o.sev[si], seed,
                                           &err);
            for (int k = 0; !rc && k < N_METHODS; k++) {
                if (!o.methods[k]) continue;
                result *r = &res[ci][si][k];
                if (k < 2)
                    rc = run_local(m, k == 0 ? CAIRN_NN_BN_EVAL : CAIRN_NN_BN_BATCH, &d, o.batch, r,
                                   &err);
                else
                    rc = run_cloud(&o, k == 3, &d, r, &err);
                if (!rc) print_json(&o, cname, o.sev[si], k, r);
            }
            cairn_dataset_free(&d);
            fprintf(stderr, "  %s severity %d done (%.0f s elapsed)\n", cname, o.sev[si],
                    (double)(cairn_now_ns() - t0) / 1e9);
        }
    }
    if (!res) rc = cairn_errorf(&err, CAIRN_ENOMEM, "out of memory");
    if (!rc) {
        FILE *f = o.markdown ? fopen(o.markdown, "w") : stdout;
        if (!f) {
            fprintf(stderr, "cairn adapt eval: %s: %s\n", o.markdown, strerror(errno));
            rc = CAIRN_EIO;
        } else {
            print_table(f, &o, res);
            if (f != stdout) fclose(f);
        }
        fprintf(stderr, "adapt eval: %.0f s in all\n", (double)(cairn_now_ns() - t0) / 1e9);
    } else if (err.msg[0]) {
        fprintf(stderr, "cairn adapt eval: %s\n", err.msg);
    }
    free(res);
    curl_global_cleanup();
    cairn_nn_model_free(m);
    cairn_dataset_free(&full);
    cairn_dataset_free(&sub);
    return rc ? 1 : 0;
}
