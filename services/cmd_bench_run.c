/*
 * services/cmd_bench_run.c — the scheduler benchmarks' shared harness (cmd_bench_run.h): the
 * generation workers run in this process, fed a standing backlog of offline requests
 * (summarization-shaped: long prompts, 64-token outputs) and online requests arriving as a
 * Poisson process (or a closed loop, to measure capacity); each token's arrival is timed in
 * the workers' callbacks.
 */
#include "services/cmd_bench_run.h"

#include "common/clock.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "services/cmd_bench.h"

/* ---- Small helpers ------------------------------------------------------------------------ */

int cairn__bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cairn__bench_pct(double *v, size_t n, double p)
{
    if (n == 0) return NAN;
    qsort(v, n, sizeof *v, cairn__bench_cmp_double);
    size_t i = (size_t)ceil(p * (double)n) - 1;
    return v[i < n ? i : n - 1];
}

int cairn__bench_parse_list(const char *s, double *out, int cap)
{
    int n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *sp = NULL, *t = strtok_r(buf, ",", &sp); t && n < cap;
         t = strtok_r(NULL, ",", &sp)) {
        char *end;
        errno = 0;
        double v = strtod(t, &end);
        if (errno || *end || !(v > 0)) return -1;
        out[n++] = v;
    }
    return n;
}

int cairn__bench_int(const char *v, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < -2147483647L || x > 2147483647L) return -1;
    *out = (int)x;
    return 0;
}

int cairn__bench_num(const char *v, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || !isfinite(x)) return -1;
    *out = x;
    return 0;
}

int cairn__bench_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cairn bench %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputs("\n\n", stderr);
    va_end(ap);
    fputs(cairn_cmd_bench_usage, stderr);
    return 2;
}

void cairn__bench_sleep_until(int64_t t) { cairn_sleep_ns(t - cairn_now_ns()); }

/* ---- Workers and prompts ------------------------------------------------------------------- */

int cairn__bench_open_workers(cairn_workers **w, const cairn__bench_env *env,
                              cairn_sched_policy pol, double budget_s, bool layer_yield,
                              int n_ctx)
{
    cairn_workers_params wp = cairn_workers_default_params();
    wp.predictor = env->coef;
    wp.layer_yield = layer_yield;
    wp.model_path = env->model;
    wp.engine.n_threads = env->threads;
    wp.engine.max_seqs = env->max_seqs;
    wp.engine.n_ctx = n_ctx;
    wp.engine.device = env->device;
    if (env->max_batch_tokens > 0)
        wp.engine.max_batch_tokens = env->max_batch_tokens;
    /* Room for every sequence's full context: this measures scheduling, not KV pressure. */
    wp.engine.kv_blocks = env->max_seqs * ((n_ctx + wp.engine.block_tokens - 1) /
                                           wp.engine.block_tokens);
    wp.max_queue = 1024;
    wp.max_offline_queue = 1024;
    wp.online_reserve = env->max_seqs / 4 > 0 ? env->max_seqs / 4 : 1;
    wp.sched.policy = pol;
    wp.sched.budget_s = budget_s;
    wp.sched.online_budget_s = env->online_budget_s > budget_s ? env->online_budget_s : budget_s;
    if (env->offline_occupancy > 0) wp.sched.offline_occupancy = env->offline_occupancy;
    wp.timeout_ns = 0;
    cairn_error err = {0};
    if (cairn_workers_open(w, &wp, NULL, &err) != 0) {
        fprintf(stderr, "cairn bench: %s\n", err.msg);
        return 1;
    }
    return 0;
}

char *cairn__bench_text_of_tokens(cairn_workers *w, int tokens, uint64_t *rng)
{
    static const char *const words[] = {
        "the",    "river",  "runs",    "through", "a",       "valley",  "of",      "old",
        "stone",  "where",  "farmers", "grow",    "barley",  "and",     "keep",    "sheep",
        "near",   "mills",  "that",    "still",   "grind",   "flour",   "for",     "three",
        "towns",  "report", "notes",   "water",   "levels",  "rise",    "in",      "spring"};
    size_t cap = (size_t)tokens * 12 + 64, n = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    s[0] = '\0';
    for (;;) {
        int have = cairn_tok_encode(cairn_workers_tokenizer(w), s, n, NULL, 0, 0, NULL);
        have = have < 0 ? -have : have;
        if (have >= tokens || n + 16 > cap) break;
        n += (size_t)snprintf(s + n, cap - n, "%s%s", n ? " " : "",
                              words[cairn__bench_rng_next(rng) % (sizeof words / sizeof words[0])]);
    }
    return s;
}

void cairn__bench_prompts_make(cairn_workers *w, uint64_t seed, cairn__bench_prompts *pr)
{
    pr->n_on = 48;
    pr->n_off = 16;
    pr->on = calloc((size_t)pr->n_on, sizeof *pr->on);
    pr->off = calloc((size_t)pr->n_off, sizeof *pr->off);
    uint64_t rng = seed * 0x9e3779b97f4a7c15ull;
    for (int i = 0; pr->on && i < pr->n_on; i++)
        pr->on[i] = cairn__bench_text_of_tokens(w, cairn__bench_rng_range(&rng, 16, 128), &rng);
    for (int i = 0; pr->off && i < pr->n_off; i++)
        pr->off[i] = cairn__bench_text_of_tokens(w, cairn__bench_rng_range(&rng, 300, 500), &rng);
}

void cairn__bench_prompts_free(cairn__bench_prompts *pr)
{
    for (int i = 0; pr->on && i < pr->n_on; i++)
        free(pr->on[i]);
    for (int i = 0; pr->off && i < pr->n_off; i++)
        free(pr->off[i]);
    free(pr->on);
    free(pr->off);
}

/* ---- A run's requests ---------------------------------------------------------------------- */

typedef struct {
    cairn__bench_run *r;
    bool online;
    int64_t t_submit, t_first, t_last;
    double max_gap;
    int tokens;
    int in_flight; /* online requests in flight when it was submitted, itself included */
} req;

static void push(double **v, size_t *n, size_t *cap, double x)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 1024;
        double *t = realloc(*v, c * sizeof *t);
        if (!t) return;
        *v = t;
        *cap = c;
    }
    (*v)[(*n)++] = x;
}

static int on_text(void *user, const char *s, size_t n)
{
    (void)s, (void)n;
    req *q = user;
    cairn__bench_run *r = q->r;
    int64_t now = cairn_now_ns();
    pthread_mutex_lock(&r->mu);
    bool in_window = now >= r->t_start && now <= r->t_end;
    if (!q->t_first) {
        q->t_first = now;
    } else {
        double g = (double)(now - q->t_last) / 1e9;
        if (q->online) push(&r->gaps, &r->n_gaps, &r->cap_gaps, g);
        if (g > q->max_gap) q->max_gap = g;
    }
    q->t_last = now;
    q->tokens++;
    if (in_window) {
        if (q->online) r->online_tokens++;
        else r->offline_tokens++;
    }
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static void on_done(void *user, const cairn_gen_result *res)
{
    req *q = user;
    cairn__bench_run *r = q->r;
    pthread_mutex_lock(&r->mu);
    if (q->online) {
        r->online_in_flight--;
        if (r->requests)
            fprintf(r->requests, "%s,%.6f,%.6f,%.6f,%d,%d,%d\n", r->label ? r->label : "",
                    (double)(q->t_submit - r->t_start) / 1e9,
                    q->t_first ? (double)(q->t_first - q->t_submit) / 1e9 : -1.0, q->max_gap,
                    q->tokens, q->in_flight, res->error != 0);
        if (!res->error && q->t_first) {
            double ttft = (double)(q->t_first - q->t_submit) / 1e9;
            push(&r->ttft, &r->n_ttft, &r->cap_ttft, ttft);
            r->online_done++;
            r->online_ok += ttft <= r->ttft_slo_s && q->max_gap <= r->tbt_slo_s;
        } else {
            r->online_rejected++;
        }
    } else {
        r->offline_in_flight--;
        if (res->error) r->offline_cut++; /* read before the shutdown cancels the rest */
        else r->offline_done++;
        if (!res->error && q->t_first)
            r->last_offline_ttft_s = (double)(q->t_first - q->t_submit) / 1e9;
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    free(q);
}

void cairn__bench_run_init(cairn__bench_run *r, cairn_workers *w, double ttft_slo_s,
                           double tbt_slo_s, int64_t t_start, int64_t t_end)
{
    *r = (cairn__bench_run){.w = w, .ttft_slo_s = ttft_slo_s, .tbt_slo_s = tbt_slo_s,
                            .t_start = t_start, .t_end = t_end};
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
}

void cairn__bench_run_destroy(cairn__bench_run *r)
{
    free(r->ttft);
    free(r->gaps);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
}

int cairn__bench_submit(cairn__bench_run *r, const char *prompt, bool online, int max_tokens,
                        uint64_t *rng)
{
    req *q = calloc(1, sizeof *q);
    if (!q) return CAIRN_ENOMEM;
    q->r = r;
    q->online = online;
    q->t_submit = cairn_now_ns();
    cairn_gen_request rq = {
        .prompt = prompt,
        .prompt_len = strlen(prompt),
        .tok_flags = CAIRN_TOK_ADD_SPECIAL,
        .max_tokens = max_tokens,
        .offline = !online,
        .sample = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f,
                   .seed = cairn__bench_rng_next(rng)},
        .on_text = on_text,
        .on_done = on_done,
        .user = q,
    };
    pthread_mutex_lock(&r->mu);
    if (online) q->in_flight = ++r->online_in_flight;
    else r->offline_in_flight++;
    pthread_mutex_unlock(&r->mu);
    int rc = cairn_workers_submit(r->w, &rq, NULL);
    if (rc) {
        pthread_mutex_lock(&r->mu);
        if (online) r->online_in_flight--, r->online_rejected++;
        else r->offline_in_flight--;
        pthread_mutex_unlock(&r->mu);
        free(q);
    }
    return rc;
}

/* ---- A measured run ------------------------------------------------------------------------ */

void cairn__bench_run_once(cairn_workers *w, const cairn__bench_env *env,
                           const cairn__bench_prompts *pr, const cairn__bench_spec *spec,
                           uint64_t seed, cairn__bench_result *out)
{
    uint64_t rng = seed;
    int64_t warm = 5 * CAIRN_NS_PER_SEC;
    int64_t t0 = cairn_now_ns();
    cairn__bench_run r;
    cairn__bench_run_init(&r, w, env->ttft_slo_s, env->tbt_slo_s, t0 + warm,
                          t0 + warm + (int64_t)(spec->duration_s * 1e9));
    r.requests = spec->requests;
    r.label = spec->label;
    int64_t next = t0;
    while (cairn_now_ns() < r.t_end) {
        /* Keep the offline backlog full. */
        pthread_mutex_lock(&r.mu);
        int need_off = spec->backlog - r.offline_in_flight;
        int online_now = r.online_in_flight;
        pthread_mutex_unlock(&r.mu);
        for (int i = 0; i < need_off; i++)
            cairn__bench_submit(&r, pr->off[cairn__bench_rng_next(&rng) % (uint64_t)pr->n_off],
                                false, 64, &rng);
        int64_t now = cairn_now_ns();
        if (spec->online_rps < 0) {
            for (int i = online_now; i < (int)-spec->online_rps; i++)
                cairn__bench_submit(&r, pr->on[cairn__bench_rng_next(&rng) % (uint64_t)pr->n_on],
                                    true, 32, &rng);
            cairn__bench_sleep_until(now + 2 * CAIRN_NS_PER_MS);
        } else if (spec->online_rps > 0) {
            if (now >= next) {
                cairn__bench_submit(&r, pr->on[cairn__bench_rng_next(&rng) % (uint64_t)pr->n_on],
                                    true, 32, &rng);
                next += (int64_t)(-log(1.0 - cairn__bench_rng_unit(&rng)) / spec->online_rps *
                                  1e9);
            }
            int64_t wake = next < now + 10 * CAIRN_NS_PER_MS ? next : now + 10 * CAIRN_NS_PER_MS;
            cairn__bench_sleep_until(wake);
        } else {
            cairn__bench_sleep_until(now + 10 * CAIRN_NS_PER_MS);
        }
    }
    /* Drain: online requests finish; offline ones are cut short by closing the workers later,
     * so wait only for online ones (at most 120 s). */
    pthread_mutex_lock(&r.mu);
    int64_t deadline = cairn_now_ns() + 120 * CAIRN_NS_PER_SEC;
    while (r.online_in_flight > 0 && cairn_now_ns() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&r.cv, &r.mu, &ts);
    }
    double win = spec->duration_s;
    /* Requests that arrived before the window are counted too (all online requests). */
    out->ttft_p50 = cairn__bench_pct(r.ttft, r.n_ttft, 0.5);
    out->ttft_p99 = cairn__bench_pct(r.ttft, r.n_ttft, 0.99);
    out->tbt_p50 = cairn__bench_pct(r.gaps, r.n_gaps, 0.5);
    out->tbt_p99 = cairn__bench_pct(r.gaps, r.n_gaps, 0.99);
    int total = r.online_done + r.online_rejected;
    out->attainment = total ? (double)r.online_ok / total : NAN;
    out->offline_tps = (double)r.offline_tokens / win;
    out->online_tps = (double)r.online_tokens / win;
    out->done = r.online_done;
    out->rejected = r.online_rejected;
    out->offline_done = r.offline_done;
    out->offline_cut = r.offline_cut;
    out->rps_done = (double)r.online_done / (win + warm / 1e9);
    pthread_mutex_unlock(&r.mu);
    /* The caller closes the workers, which ends the backlog; stopping them first ends the
     * callbacks that still use r. */
    cairn_workers_stop(w);
    cairn__bench_run_destroy(&r);
}

double cairn__bench_capacity(cairn_workers *w, const cairn__bench_env *env,
                             const cairn__bench_prompts *pr, double duration, uint64_t seed,
                             double *tps)
{
    cairn__bench_spec cap = {.online_rps = -(double)env->max_seqs, .duration_s = duration,
                             .backlog = 0};
    cairn__bench_result cr;
    cairn__bench_run_once(w, env, pr, &cap, seed, &cr);
    if (tps) *tps = cr.online_tps;
    return cr.rps_done;
}
