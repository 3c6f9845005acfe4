/*
 * services/cmd_bench_colocate.c — `cairn bench colocate`: the generation workers run in this
 * process under each policy against a standing backlog of offline requests
 * (summarization-shaped: long prompts, 64-token outputs) while online requests arrive as a
 * Poisson process at a sweep of rates. Per (policy, rate) it reports online TTFT and
 * time-between-tokens (TBT) p50/p99, SLO attainment (a request meets the SLO when its TTFT and
 * every gap between its tokens are within the targets), and offline, online and total
 * tokens/s. Rates are given directly or as fractions of the measured online capacity (the
 * completion rate with max_seqs online requests always in flight).
 */
#include "services/cmd_bench_run.h"
#include "services/slo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct colocate_opts {
    cairn__bench_env env;
    const char *policies, *md, *loads_s, *rates_s, *profile;
    const char *requests; /* --requests: a CSV row per online request */
    const char *as_cairnd; /* a data dir: predictor and budgets as cairnd derives them */
    int startup_iterations; /* with as_cairnd and no usable profile */
    cairn_slo_plan plan;    /* as_cairnd's */
    double duration, ttft_ms, tbt_ms, budget_ms, online_ms;
    int backlog;
    bool occupancy_given; /* --offline-occupancy (else env's 0: the scheduler's default) */
    uint64_t seed;
    cairn_sched_profile prof; /* --profile's, when given */
    cairn_sched_policy pols[3];
    int n_pol;
    double vals[16]; /* the loads or rates */
    int n_vals;
} colocate_opts;

static int parse_args(int argc, char **argv, colocate_opts *o)
{
    *o = (colocate_opts){.env = {.model = CAIRN__BENCH_MODEL, .max_seqs = 12, .device = -1},
                         .policies = "slo,online-only,fcfs-hybrid", .loads_s = "0.25,0.5,0.75",
                         .duration = 60, .ttft_ms = 3000, .tbt_ms = 300, .backlog = 8,
                         .seed = 1, .startup_iterations = 48};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!v) return cairn__bench_usage_error("colocate", "%s needs a value", a);
        i++;
        if (!strcmp(a, "-m")) o->env.model = v;
        else if (!strcmp(a, "--policies")) o->policies = v;
        else if (!strcmp(a, "--loads")) o->loads_s = v;
        else if (!strcmp(a, "--rates")) o->rates_s = v;
        else if (!strcmp(a, "--duration")) bad = cairn__bench_num(v, &o->duration);
        else if (!strcmp(a, "--ttft-slo")) bad = cairn__bench_num(v, &o->ttft_ms);
        else if (!strcmp(a, "--tbt-slo")) bad = cairn__bench_num(v, &o->tbt_ms);
        else if (!strcmp(a, "--budget")) bad = cairn__bench_num(v, &o->budget_ms);
        else if (!strcmp(a, "--backlog")) bad = cairn__bench_int(v, &o->backlog);
        else if (!strcmp(a, "--max-seqs")) bad = cairn__bench_int(v, &o->env.max_seqs);
        else if (!strcmp(a, "--threads")) bad = cairn__bench_int(v, &o->env.threads);
        else if (!strcmp(a, "--seed")) {
            char *end;
            o->seed = strtoull(v, &end, 10);
            bad = !*v || *end;
        } else if (!strcmp(a, "--markdown")) o->md = v;
        else if (!strcmp(a, "--requests")) o->requests = v;
        else if (!strcmp(a, "--profile")) o->profile = v;
        else if (!strcmp(a, "--online-budget")) bad = cairn__bench_num(v, &o->online_ms);
        else if (!strcmp(a, "--offline-occupancy")) {
            bad = cairn__bench_num(v, &o->env.offline_occupancy);
            o->occupancy_given = true;
        }
        else if (!strcmp(a, "--device")) bad = cairn__bench_int(v, &o->env.device);
        else if (!strcmp(a, "--as-cairnd")) o->as_cairnd = v;
        else if (!strcmp(a, "--startup-iterations"))
            bad = cairn__bench_int(v, &o->startup_iterations);
        else return cairn__bench_usage_error("colocate", "unknown option '%s'", a);
        if (bad) return cairn__bench_usage_error("colocate", "%s '%s' is not a number", a, v);
    }
    if (o->env.device < -1)
        return cairn__bench_usage_error("colocate", "--device %d: -1 (the CPU) or a GPU index",
                                        o->env.device);
    if (o->as_cairnd && (o->budget_ms > 0 || o->online_ms > 0))
        return cairn__bench_usage_error("colocate", "--as-cairnd derives the budgets: leave "
                                        "--budget and --online-budget out");
    if (o->profile && !o->as_cairnd) {
        cairn_error perr = {0};
        if (cairn_sched_profile_load(o->profile, &o->prof, &perr) != 0) {
            fprintf(stderr, "cairn bench colocate: --profile %s\n", perr.msg);
            return 2;
        }
        o->env.coef = o->prof.coef;
        if (o->budget_ms == 0 && o->prof.budget_s > 0) o->budget_ms = o->prof.budget_s * 1e3;
    }
    if (o->budget_ms == 0 && !o->as_cairnd) o->budget_ms = 150; /* no --budget, no stored one */
    if (!(o->duration >= 5))
        return cairn__bench_usage_error("colocate", "--duration must be at least 5 s");
    if (!(o->ttft_ms > 0) || !(o->tbt_ms > 0) || !(o->budget_ms > 0 || o->as_cairnd) ||
        o->online_ms < 0)
        return cairn__bench_usage_error("colocate", "SLOs and budgets must be positive");
    if (o->backlog < 0)
        return cairn__bench_usage_error("colocate", "--backlog %d is negative", o->backlog);
    if (o->occupancy_given && !(o->env.offline_occupancy > 0 && o->env.offline_occupancy <= 1))
        return cairn__bench_usage_error("colocate", "--offline-occupancy %g is outside (0, 1]",
                                        o->env.offline_occupancy);
    if (o->env.max_seqs < 2 || o->env.max_seqs > 64)
        return cairn__bench_usage_error("colocate", "--max-seqs %d is outside 2..64",
                                        o->env.max_seqs);
    if (o->env.threads < 0)
        return cairn__bench_usage_error("colocate", "--threads %d is negative", o->env.threads);
    if (!o->seed) return cairn__bench_usage_error("colocate", "--seed must not be 0");
    o->env.ttft_slo_s = o->ttft_ms / 1e3;
    o->env.tbt_slo_s = o->tbt_ms / 1e3;
    o->env.online_budget_s =
        o->online_ms > 0 ? o->online_ms / 1e3 : CAIRN__BENCH_ONLINE_SHARE * o->tbt_ms / 1e3;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", o->policies);
    for (char *sp = NULL, *t = strtok_r(buf, ",", &sp); t && o->n_pol < 3;
         t = strtok_r(NULL, ",", &sp)) {
        cairn_error err = {0};
        if (cairn_sched_policy_parse(t, &o->pols[o->n_pol++], &err)) {
            fprintf(stderr, "cairn bench colocate: %s\n", err.msg);
            return 2;
        }
    }
    o->n_vals = cairn__bench_parse_list(o->rates_s ? o->rates_s : o->loads_s, o->vals, 16);
    if (o->n_vals <= 0)
        return cairn__bench_usage_error("colocate", "%s '%s' is not a list of positive numbers",
                                        o->rates_s ? "--rates" : "--loads",
                                        o->rates_s ? o->rates_s : o->loads_s);
    if (o->n_pol == 0) return cairn__bench_usage_error("colocate", "no policy given");
    return 0;
}

/* Prints one (policy, rate) row: a JSON line, and the markdown table's row to mf. */
static void report(const colocate_opts *o, cairn_sched_policy pol, double rps, double capacity,
                   const cairn__bench_result *rr, double mape, int nm, FILE *mf)
{
    bool met = rr->ttft_p99 <= o->env.ttft_slo_s && rr->tbt_p99 <= o->env.tbt_slo_s;
    /* JSON has no NaN: a figure with no samples (or no capacity run) is null. */
    char f[6][32];
    const double fv[6] = {capacity > 0 ? rps / capacity : NAN, rr->ttft_p50, rr->ttft_p99,
                          rr->tbt_p50 * 1e3, rr->tbt_p99 * 1e3, rr->attainment};
    for (int k = 0; k < 6; k++)
        snprintf(f[k], sizeof f[k], isfinite(fv[k]) ? "%.3f" : "null", fv[k]);
    printf("{\"bench\":\"colocate\",\"policy\":\"%s\",\"online_rps\":%.4f,\"load\":%s,"
           "\"ttft_p50\":%s,\"ttft_p99\":%s,\"tbt_p50_ms\":%s,\"tbt_p99_ms\":%s,"
           "\"slo_attainment\":%s,\"slo_met\":%s,\"offline_tps\":%.2f,"
           "\"online_tps\":%.2f,\"total_tps\":%.2f,\"online_done\":%d,"
           "\"online_rejected\":%d,\"offline_done\":%d,\"offline_cut\":%d,"
           "\"predictor_mape\":%.4f,\"predictor_n\":%d,\"offline_occupancy\":%.3g}\n",
           cairn_sched_policy_name(pol), rps, f[0], f[1], f[2], f[3], f[4], f[5],
           met ? "true" : "false", rr->offline_tps, rr->online_tps,
           rr->offline_tps + rr->online_tps, rr->done, rr->rejected, rr->offline_done,
           rr->offline_cut, mape, nm,
           o->env.offline_occupancy > 0 ? o->env.offline_occupancy
                                        : cairn_sched_default_params().offline_occupancy);
    fflush(stdout);
    if (mf) {
        fprintf(mf,
                "| %s | %.3f | %.2f | %.2f / %.2f | %.0f / %.0f | %.0f%%%s | %.1f | "
                "%.1f | %.1f |\n",
                cairn_sched_policy_name(pol), rps, capacity > 0 ? rps / capacity : NAN,
                rr->ttft_p50, rr->ttft_p99, rr->tbt_p50 * 1e3, rr->tbt_p99 * 1e3,
                rr->attainment * 100, met ? "" : " (p99 over SLO)", rr->offline_tps,
                rr->online_tps, rr->offline_tps + rr->online_tps);
        fflush(mf);
    }
}

/* --as-cairnd: the predictor and the budgets as cairnd derives them from its SLO
 * (services/slo.h) for these workers' engine, logged as cairnd logs them. Returns 0 or 1. */
static int derive_as_cairnd(colocate_opts *o)
{
    char name[256];
    const char *base = strrchr(o->env.model, '/') ? strrchr(o->env.model, '/') + 1 : o->env.model;
    size_t n = strlen(base);
    if (n > 5 && !strcmp(base + n - 5, ".gguf")) n -= 5;
    snprintf(name, sizeof name, "%.*s", (int)n, base);
    cairn_engine_params ep = cairn_engine_default_params();
    ep.n_threads = o->env.threads;
    ep.device = o->env.device;
    cairn_slo_params sp = {.model_path = o->env.model, .model_name = name,
                           .data_dir = o->as_cairnd, .profile_path = o->profile,
                           .ttft_s = o->ttft_ms / 1e3, .tbt_s = o->tbt_ms / 1e3,
                           .startup_iterations = o->startup_iterations};
    cairn_error err = {0};
    if (cairn_slo_configure(&sp, &ep, &o->plan, &err)) {
        fprintf(stderr, "cairn bench colocate: %s\n", err.msg);
        return 1;
    }
    o->env.coef = o->plan.have_coef ? o->plan.coef : NULL;
    o->budget_ms = o->plan.budget_s * 1e3;
    o->env.online_budget_s = o->plan.online_budget_s;
    printf("{\"bench\":\"colocate_as_cairnd\",\"ttft_slo_ms\":%.0f,\"tbt_slo_ms\":%.0f,"
           "\"budget_ms\":%.1f,\"online_budget_ms\":%.1f,\"predictor\":\"%s\"}\n",
           o->ttft_ms, o->tbt_ms, o->budget_ms, o->env.online_budget_s * 1e3, o->plan.source);
    fflush(stdout);
    return 0;
}

/* The prompts, made once with the model's tokenizer, and (without --rates) the online
 * capacity: online only, max_seqs requests always in flight, no backlog. Returns 0 or 1. */
static int prepare(const colocate_opts *o, cairn__bench_prompts *pr, double *capacity)
{
    cairn_workers *w = NULL;
    if (cairn__bench_open_workers(&w, &o->env, CAIRN_SCHED_ONLINE_ONLY, o->budget_ms / 1e3, true,
                                  1024))
        return 1;
    cairn__bench_prompts_make(w, o->seed, pr);
    *capacity = 0;
    if (!o->rates_s) {
        double tps = 0;
        *capacity = cairn__bench_capacity(w, &o->env, pr, o->duration / 2, o->seed, &tps);
        printf("{\"bench\":\"colocate_capacity\",\"online_rps\":%.4f,\"online_tps\":%.2f,"
               "\"max_seqs\":%d}\n",
               *capacity, tps, o->env.max_seqs);
        fflush(stdout);
    }
    cairn_workers_close(w);
    return 0;
}

int cairn__bench_colocate(int argc, char **argv)
{
    colocate_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc;
    if (o.as_cairnd && derive_as_cairnd(&o)) return 1;
    cairn__bench_prompts pr;
    double capacity;
    if (prepare(&o, &pr, &capacity)) return 1;

    FILE *mf = o.md ? fopen(o.md, "w") : NULL;
    if (o.md && !mf) fprintf(stderr, "cairn bench colocate: cannot write %s\n", o.md);
    if (mf)
        fprintf(mf, "| policy | online req/s | load | TTFT p50 / p99 (s) | TBT p50 / p99 (ms) | "
                    "SLO attained | offline tok/s | online tok/s | total tok/s |\n"
                    "|---|---|---|---|---|---|---|---|---|\n");
    FILE *rf = o.requests ? fopen(o.requests, "w") : NULL;
    if (o.requests && !rf) {
        fprintf(stderr, "cairn bench colocate: cannot write %s\n", o.requests);
        rc = 1;
    }
    if (rf) fputs(CAIRN__BENCH_REQUESTS_HEADER, rf);
    for (int v = 0; v < o.n_vals && !rc; v++) {
        double rps = o.rates_s ? o.vals[v] : o.vals[v] * capacity;
        for (int p = 0; p < o.n_pol && !rc; p++) {
            cairn_workers *w = NULL;
            if (cairn__bench_open_workers(&w, &o.env, o.pols[p], o.budget_ms / 1e3, true,
                                          1024)) {
                rc = 1;
                break;
            }
            char label[64];
            snprintf(label, sizeof label, "%s %.3g", cairn_sched_policy_name(o.pols[p]),
                     o.rates_s ? rps : o.vals[v]);
            cairn__bench_spec rs = {.online_rps = rps, .duration_s = o.duration,
                                    .backlog = o.backlog, .requests = rf, .label = label};
            cairn__bench_result rr;
            cairn__bench_run_once(w, &o.env, &pr, &rs, o.seed + (uint64_t)v, &rr);
            int nm = 0;
            double mape = cairn_workers_predictor_mape(w, &nm);
            cairn_workers_close(w);
            report(&o, o.pols[p], rps, capacity, &rr, mape, nm, mf);
        }
    }
    if (mf) fclose(mf);
    if (rf && fclose(rf) != 0) {
        fprintf(stderr, "cairn bench colocate: writing %s failed\n", o.requests);
        rc = 1;
    }
    cairn__bench_prompts_free(&pr);
    return rc;
}
