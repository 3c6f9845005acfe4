/*
 * tests/unit/test_sched.c — the latency predictor (recovers a known cost model from noisy
 * iterations; out-of-sample MAPE; bad observations ignored) and iteration planning under the
 * three policies (what runs, in which order, within which budget; the starvation guard).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "generation/sched.h"

/* A plausible cost model of a 2-core CPU iteration (seconds). */
static const double TRUE_COEF[CAIRN_PREDICTOR_FEATURES] = {
    0.012,   /* weights streamed once per iteration */
    0.0021,  /* per prefill token */
    0.0015,  /* per decode token */
    2.0e-7,  /* attention within a prefill chunk */
    0.0004,  /* per prefilling sequence */
    0.0001,  /* per decoding sequence */
    3.0e-6,  /* per token of context attended */
};

static double true_time(const cairn_batch_shape *s)
{
    const double f[] = {1, s->s_p, s->s_d, (double)s->s_p * s->s_p, s->n_p, s->n_d,
                        (double)s->ctx};
    double t = 0;
    for (int j = 0; j < CAIRN_PREDICTOR_FEATURES; j++)
        t += TRUE_COEF[j] * f[j];
    return t;
}

static uint64_t rng = 88172645463325252ull;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

static cairn_batch_shape random_shape(void)
{
    cairn_batch_shape s = {0};
    s.n_d = (int)(urand() * 9);
    s.s_d = s.n_d;
    if (urand() < 0.5) {
        s.n_p = 1 + (int)(urand() * 2);
        s.s_p = s.n_p * (1 + (int)(urand() * 256));
    }
    if (s.s_p + s.s_d == 0) s.s_d = s.n_d = 1;
    s.ctx = (int64_t)((s.n_p + s.n_d) * urand() * 800);
    return s;
}

static void test_predictor_recovers_a_cost_model(void **state)
{
    (void)state;
    cairn_predictor *p = NULL;
    cairn_error err = {0};
    assert_int_equal(cairn_predictor_new(&p, 8, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_predictor_new(&p, 512, &err), 0);
    cairn_predictor_set_refit(p, 0);
    cairn_batch_shape one = {.s_d = 1, .n_d = 1, .ctx = 10};
    assert_true(cairn_predictor_predict(p, &one) == 0); /* not fitted */
    assert_int_equal(cairn_predictor_fit(p, &err), CAIRN_ESTATE);

    /* Bad observations are ignored: an empty batch, zero, negative and NaN times. */
    cairn_batch_shape empty = {0};
    cairn_predictor_observe(p, &empty, 0.01);
    cairn_predictor_observe(p, &one, 0);
    cairn_predictor_observe(p, &one, -1);
    cairn_predictor_observe(p, &one, NAN);
    assert_int_equal(cairn_predictor_fit(p, &err), CAIRN_ESTATE);

    /* 400 iterations with 2% multiplicative noise. */
    for (int i = 0; i < 400; i++) {
        cairn_batch_shape s = random_shape();
        cairn_predictor_observe(p, &s, true_time(&s) * (1 + 0.04 * (urand() - 0.5)));
    }
    assert_int_equal(cairn_predictor_fit(p, &err), 0);
    double c[CAIRN_PREDICTOR_FEATURES];
    assert_true(cairn_predictor_coefficients(p, c));
    /* The dominant terms come back within a few percent. A decoding sequence always decodes one
     * token, so S_d and N_d are the same feature: only their sum can be identified. */
    assert_true(fabs(c[0] - TRUE_COEF[0]) / TRUE_COEF[0] < 0.05);
    assert_true(fabs(c[1] - TRUE_COEF[1]) / TRUE_COEF[1] < 0.05);
    const double per_decode = TRUE_COEF[2] + TRUE_COEF[5];
    assert_true(fabs(c[2] + c[5] - per_decode) / per_decode < 0.10);

    /* Held out: 200 new iterations, MAPE measured before each joins the window. */
    int n = -1;
    assert_true(cairn_predictor_mape(p, &n) == 0 && n == 0);
    double worst = 0;
    for (int i = 0; i < 200; i++) {
        cairn_batch_shape s = random_shape();
        double t = true_time(&s) * (1 + 0.04 * (urand() - 0.5));
        worst = fmax(worst, fabs(cairn_predictor_predict(p, &s) - t) / t);
        cairn_predictor_observe(p, &s, t);
    }
    double mape = cairn_predictor_mape(p, &n);
    assert_int_equal(n, 200);
    assert_true(mape > 0 && mape < 0.02);
    assert_true(worst < 0.08);

    /* Coefficients can be set (a stored profile) and predict exactly. */
    cairn_predictor *q = NULL;
    assert_int_equal(cairn_predictor_new(&q, 64, &err), 0);
    cairn_predictor_set_coefficients(q, TRUE_COEF);
    cairn_batch_shape s = random_shape();
    assert_float_equal(cairn_predictor_predict(q, &s), true_time(&s), 1e-12);
    cairn_predictor_free(q);
    cairn_predictor_free(p);
}

static void test_predictor_refits_on_its_own(void **state)
{
    (void)state;
    cairn_predictor *p = NULL;
    assert_int_equal(cairn_predictor_new(&p, 64, NULL), 0);
    cairn_predictor_set_refit(p, 16);
    for (int i = 0; i < 15; i++) {
        cairn_batch_shape s = random_shape();
        cairn_predictor_observe(p, &s, true_time(&s));
    }
    cairn_batch_shape one = {.s_d = 1, .n_d = 1, .ctx = 10};
    assert_true(cairn_predictor_predict(p, &one) == 0);
    cairn_batch_shape s = random_shape();
    cairn_predictor_observe(p, &s, true_time(&s)); /* the 16th: refit */
    assert_float_equal(cairn_predictor_predict(p, &one), true_time(&one), 1e-3 * true_time(&one));
    cairn_predictor_free(p);
}

/* ---- Planning -------------------------------------------------------------------------------- */

#define MS ((int64_t)1000000)

static cairn_sched_seq seq(int id, int online, int remaining, int ctx, int64_t arrival)
{
    return (cairn_sched_seq){.id = id, .online = online, .prefilling = remaining > 0,
                             .remaining = remaining, .ctx = ctx, .t_arrival = arrival,
                             .t_served = arrival};
}

static int find(const cairn_step_item *it, int n, int id)
{
    for (int i = 0; i < n; i++)
        if (it[i].id == id) return it[i].n_tokens;
    return 0;
}

static cairn_predictor *fitted(void)
{
    cairn_predictor *p = NULL;
    assert_int_equal(cairn_predictor_new(&p, 64, NULL), 0);
    cairn_predictor_set_coefficients(p, TRUE_COEF);
    return p;
}

static void test_slo_plan_keeps_the_budget(void **state)
{
    (void)state;
    cairn_predictor *p = fitted();
    cairn_sched_params sp = cairn_sched_default_params();
    sp.budget_s = 0.100;
    sp.online_budget_s = 0.150;
    const int64_t now = 1000 * MS;
    /* Two online decodes, one online prompt of 300, two offline decodes, an offline document of
     * 2000 tokens. */
    cairn_sched_seq s[] = {
        seq(1, 0, 2000, 0, 10 * MS),   seq(2, 1, 0, 100, 20 * MS),  seq(3, 0, 0, 500, 5 * MS),
        seq(4, 1, 300, 0, 900 * MS),   seq(5, 1, 0, 50, 800 * MS),  seq(6, 0, 0, 700, 6 * MS),
    };
    for (int i = 0; i < 6; i++)
        s[i].t_served = now - MS; /* nobody is starving */
    cairn_step_item it[6];
    cairn_batch_shape sh;
    int n = cairn_sched_plan(&sp, p, s, 6, now, it, &sh);
    /* Online decodes always run; the online prompt gets the largest chunk within the online
     * budget. */
    assert_int_equal(find(it, n, 2), 1);
    assert_int_equal(find(it, n, 5), 1);
    int chunk = find(it, n, 4);
    assert_true(chunk >= sp.min_chunk && chunk < 300);
    assert_true(cairn_predictor_predict(p, &sh) <= sp.online_budget_s + 1e-12);
    assert_true(cairn_predictor_predict(p, &sh) > sp.budget_s); /* more than offline may use */
    /* One more token of the online prompt would break the budget (the chunk is the largest). */
    cairn_batch_shape more = sh;
    more.s_p++;
    assert_true(cairn_predictor_predict(p, &more) > sp.online_budget_s);
    /* With the budget spent on the online prompt, no offline work rides along. */
    assert_int_equal(find(it, n, 1) + find(it, n, 3) + find(it, n, 6), 0);

    /* Without the online prompt, offline decodes come first, then an offline prefill chunk. */
    cairn_sched_seq t[] = {seq(1, 0, 2000, 0, 10 * MS), seq(2, 1, 0, 100, 20 * MS),
                           seq(3, 0, 0, 500, 5 * MS), seq(6, 0, 0, 700, 6 * MS)};
    for (int i = 0; i < 4; i++)
        t[i].t_served = now - MS;
    n = cairn_sched_plan(&sp, p, t, 4, now, it, &sh);
    assert_int_equal(find(it, n, 2), 1);
    assert_int_equal(find(it, n, 3), 1);
    assert_int_equal(find(it, n, 6), 1);
    int off = find(it, n, 1);
    assert_true(off >= sp.min_chunk && off < 2000);
    assert_true(cairn_predictor_predict(p, &sh) <= sp.budget_s + 1e-12);
    assert_int_equal(sh.s_p, off);
    assert_int_equal(sh.s_d, 3);
    assert_int_equal(sh.n_p, 1);
    assert_int_equal(sh.ctx, 100 + 500 + 700);

    /* A tight budget: the online decode still runs, offline work waits. */
    sp.budget_s = 0.001;
    n = cairn_sched_plan(&sp, p, t, 4, now, it, &sh);
    assert_int_equal(n, 1);
    assert_int_equal(it[0].id, 2);
    cairn_predictor_free(p);
}

static void test_starvation_guard(void **state)
{
    (void)state;
    cairn_predictor *p = fitted();
    cairn_sched_params sp = cairn_sched_default_params();
    sp.budget_s = 0.001; /* nothing offline fits */
    sp.starve_ns = 500 * (int64_t)MS;
    const int64_t now = 10000 * MS;
    cairn_sched_seq s[] = {seq(1, 1, 0, 10, now - 10 * MS), seq(2, 0, 0, 10, 0),
                           seq(3, 0, 900, 0, 0), seq(4, 0, 0, 10, 0)};
    s[0].t_served = now - MS;
    s[1].t_served = now - 2000 * (int64_t)MS; /* starved */
    s[2].t_served = now - 2000 * (int64_t)MS; /* starved, prefilling */
    s[3].t_served = now - 100 * (int64_t)MS;  /* served recently */
    cairn_step_item it[4];
    int n = cairn_sched_plan(&sp, p, s, 4, now, it, NULL);
    assert_int_equal(find(it, n, 1), 1);
    assert_int_equal(find(it, n, 2), 1);
    assert_int_equal(find(it, n, 3), sp.min_chunk);
    assert_int_equal(find(it, n, 4), 0);

    /* Only offline work and a budget nothing fits: the oldest still advances. */
    cairn_sched_seq o[] = {seq(7, 0, 900, 0, now - 5), seq(8, 0, 0, 10, now - 9)};
    n = cairn_sched_plan(&sp, p, o, 2, now, it, NULL);
    assert_int_equal(n, 1);
    assert_int_equal(find(it, n, 8), 1);
    o[0] = seq(7, 0, 900, 0, now - 5); /* (the plan sorted o) */
    o[1] = seq(8, 0, 900, 0, now - 9);
    n = cairn_sched_plan(&sp, p, o, 2, now, it, NULL);
    assert_int_equal(n, 1);
    assert_int_equal(find(it, n, 8), sp.min_chunk);
    cairn_predictor_free(p);
}

static void test_baseline_policies(void **state)
{
    (void)state;
    cairn_sched_params sp = cairn_sched_default_params();
    sp.max_batch_tokens = 100;
    cairn_step_item it[4];
    /* online-only: offline work is left out while any online sequence exists. */
    sp.policy = CAIRN_SCHED_ONLINE_ONLY;
    cairn_sched_seq a[] = {seq(1, 0, 0, 10, 1), seq(2, 1, 500, 0, 5), seq(3, 0, 50, 0, 2),
                           seq(4, 1, 0, 10, 9)};
    int n = cairn_sched_plan(&sp, NULL, a, 4, 100, it, NULL);
    assert_int_equal(n, 2);
    assert_int_equal(find(it, n, 4), 1);
    assert_int_equal(find(it, n, 2), 99);
    cairn_sched_seq b[] = {seq(1, 0, 0, 10, 1), seq(3, 0, 500, 0, 2)};
    n = cairn_sched_plan(&sp, NULL, b, 2, 100, it, NULL);
    assert_int_equal(find(it, n, 1), 1);
    assert_int_equal(find(it, n, 3), 99);

    /* fcfs-hybrid: one order for both classes: decodes, then prefill by arrival. */
    sp.policy = CAIRN_SCHED_FCFS_HYBRID;
    cairn_sched_seq c[] = {seq(1, 1, 80, 0, 7), seq(2, 0, 0, 10, 9), seq(3, 0, 60, 0, 3),
                           seq(4, 1, 0, 10, 1)};
    n = cairn_sched_plan(&sp, NULL, c, 4, 100, it, NULL);
    assert_int_equal(find(it, n, 4), 1);
    assert_int_equal(find(it, n, 2), 1);
    assert_int_equal(find(it, n, 3), 60); /* arrived before the online prompt */
    assert_int_equal(find(it, n, 1), 38);

    cairn_sched_policy pol;
    cairn_error err = {0};
    assert_int_equal(cairn_sched_policy_parse("online-only", &pol, &err), 0);
    assert_int_equal(pol, CAIRN_SCHED_ONLINE_ONLY);
    assert_string_equal(cairn_sched_policy_name(pol), "online-only");
    assert_int_equal(cairn_sched_policy_parse("fifo", &pol, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "fifo"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_predictor_recovers_a_cost_model),
        cmocka_unit_test(test_predictor_refits_on_its_own),
        cmocka_unit_test(test_slo_plan_keeps_the_budget),
        cmocka_unit_test(test_starvation_guard),
        cmocka_unit_test(test_baseline_policies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
