/*
 * services/cmd_bench_yield.c — `cairn bench yield`: layer-level preemption (after QLLM). An
 * offline document is being prefilled in passes of --pass-tokens (default 512; policy
 * online-only, nothing else running) when an online request arrives at a random moment; its
 * TTFT with and without layer_yield, the same arrival times in both modes.
 *
 * The moments are drawn from the document's own prefill: each mode first runs the document
 * alone, untimed (which also warms the engine), and the online request of each trial then
 * arrives at a uniform 10-90% of that time. So the request meets the prefill on any machine:
 * a fixed delay that suits a CPU's seconds would arrive after a GPU had finished.
 */
#include "services/cmd_bench_run.h"

#include "common/clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_TRIALS = 1000 };

typedef struct yield_opts {
    cairn__bench_env env;
    int trials, doc_tokens;
} yield_opts;

enum { MAX_DOC = 32768, MIN_PASS = 64 };

static int parse_args(int argc, char **argv, yield_opts *o)
{
    *o = (yield_opts){.env = {.model = CAIRN__BENCH_MODEL, .max_seqs = 4, .device = -1,
                              /* the slo policy is not run; its online budget as it was */
                              .online_budget_s = 0.2, .ttft_slo_s = 1e9, .tbt_slo_s = 1e9,
                              .max_batch_tokens = cairn_engine_default_params().max_batch_tokens},
                      .trials = 10, .doc_tokens = 1500};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!v) return cairn__bench_usage_error("yield", "%s needs a value", a);
        i++;
        if (!strcmp(a, "-m")) o->env.model = v;
        else if (!strcmp(a, "--trials")) bad = cairn__bench_int(v, &o->trials);
        else if (!strcmp(a, "--doc-tokens")) bad = cairn__bench_int(v, &o->doc_tokens);
        else if (!strcmp(a, "--pass-tokens")) bad = cairn__bench_int(v, &o->env.max_batch_tokens);
        else if (!strcmp(a, "--threads")) bad = cairn__bench_int(v, &o->env.threads);
        else if (!strcmp(a, "--device")) bad = cairn__bench_int(v, &o->env.device);
        else return cairn__bench_usage_error("yield", "unknown option '%s'", a);
        if (bad) return cairn__bench_usage_error("yield", "%s '%s' is not a number", a, v);
    }
    if (o->trials < 1 || o->trials > MAX_TRIALS)
        return cairn__bench_usage_error("yield", "--trials %d is outside 1..%d", o->trials,
                                        MAX_TRIALS);
    if (o->doc_tokens < 600 || o->doc_tokens > MAX_DOC)
        return cairn__bench_usage_error("yield", "--doc-tokens %d is outside 600..%d",
                                        o->doc_tokens, MAX_DOC);
    if (o->env.max_batch_tokens < MIN_PASS || o->env.max_batch_tokens > MAX_DOC)
        return cairn__bench_usage_error("yield", "--pass-tokens %d is outside %d..%d",
                                        o->env.max_batch_tokens, MIN_PASS, MAX_DOC);
    if (o->env.threads < 0)
        return cairn__bench_usage_error("yield", "--threads %d is negative", o->env.threads);
    if (o->env.device < -1)
        return cairn__bench_usage_error("yield", "--device %d: -1 (the CPU) or a GPU index",
                                        o->env.device);
    return 0;
}

/* The trials of one mode (layer_yield off or on); prints its line. Returns 0 or 1. */
static int run_mode(const yield_opts *o, bool layer_yield)
{
    cairn_workers *w = NULL;
    /* The document, the online request and their outputs, with room for the tokenizer's
     * rounding of the document's length. */
    const int n_ctx = o->doc_tokens + 128;
    if (cairn__bench_open_workers(&w, &o->env, CAIRN_SCHED_ONLINE_ONLY, 0.1, layer_yield, n_ctx))
        return 1;
    uint64_t rng = 42; /* the same documents and arrival times in both modes */
    char *doc = cairn__bench_text_of_tokens(w, o->doc_tokens, &rng);
    char *q = cairn__bench_text_of_tokens(w, 32, &rng);
    cairn__bench_run r;
    cairn__bench_run_init(&r, w, o->env.ttft_slo_s, o->env.tbt_slo_s, 0, INT64_MAX);
    double trial_s = 0, doc_s = 0;
    int rc = 0;
    for (int t = -1; t < o->trials && !rc; t++) {
        int64_t t0 = cairn_now_ns();
        /* Trial -1, the document alone, times its prefill; the others arrive within it. */
        int64_t at = t0 + (int64_t)((0.1 + 0.8 * cairn__bench_rng_unit(&rng)) * doc_s * 1e9);
        if (cairn__bench_submit(&r, doc, false, 4, &rng) != 0) {
            fprintf(stderr, "cairn bench yield: the document was refused\n");
            rc = 1;
            break;
        }
        if (t >= 0) {
            cairn__bench_sleep_until(at);
            if (cairn__bench_submit(&r, q, true, 4, &rng) != 0) {
                fprintf(stderr, "cairn bench yield: the online request was refused\n");
                rc = 1;
                break;
            }
        }
        pthread_mutex_lock(&r.mu);
        while (r.online_in_flight + r.offline_in_flight > 0)
            pthread_cond_wait(&r.cv, &r.mu);
        pthread_mutex_unlock(&r.mu);
        if (t < 0)
            doc_s = r.last_offline_ttft_s;
        else
            trial_s += (double)(cairn_now_ns() - t0) / 1e9;
    }
    if (!rc) {
        double ttft[MAX_TRIALS];
        size_t n = r.n_ttft < MAX_TRIALS ? r.n_ttft : MAX_TRIALS;
        memcpy(ttft, r.ttft, n * sizeof *ttft);
        printf("{\"bench\":\"layer_yield\",\"device\":%d,\"layer_yield\":%s,\"trials\":%d,"
               "\"doc_tokens\":%d,\"pass_tokens\":%d,\"doc_prefill_s\":%.4f,"
               "\"ttft_p50\":%.4f,\"ttft_p90\":%.4f,\"ttft_max\":%.4f,"
               "\"trial_seconds_mean\":%.2f}\n",
               o->env.device, layer_yield ? "true" : "false", o->trials, o->doc_tokens,
               o->env.max_batch_tokens, doc_s, cairn__bench_pct(ttft, n, 0.5),
               cairn__bench_pct(ttft, n, 0.9), cairn__bench_pct(ttft, n, 1.0),
               trial_s / o->trials);
        fflush(stdout);
    }
    cairn_workers_close(w);
    cairn__bench_run_destroy(&r);
    free(doc);
    free(q);
    return rc;
}

int cairn__bench_yield(int argc, char **argv)
{
    yield_opts o;
    int rc = parse_args(argc, argv, &o);
    for (int mode = 0; !rc && mode < 2; mode++)
        rc = run_mode(&o, mode == 1);
    return rc;
}
