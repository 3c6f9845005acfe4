/* tests/unit/test_metrics.c — exposition text, label children, bounds, concurrent updates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"

static int setup(void **state)
{
    cairn_metrics *r = NULL;
    if (cairn_metrics_new(&r, NULL)) return -1;
    *state = r;
    return 0;
}

static int teardown(void **state)
{
    cairn_metrics_free(*state);
    return 0;
}

static char *render(cairn_metrics *r)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(cairn_metrics_render(r, &text, &len), 0);
    assert_int_equal(len, strlen(text));
    return text;
}

/* The expected text is written from the 0.0.4 format description, not from our output. */
static void test_exposition_exact(void **state)
{
    cairn_metrics *r = *state;
    cairn_error err;
    cairn_counter *reqs;
    cairn_gauge *depth;
    cairn_histogram *lat;
    cairn_metric_family *by_path, *ttft;
    assert_int_equal(cairn_counter_new(r, &reqs, "cairn_requests_total",
                                       "Requests seen.\nAll of them, C:\\ too.", &err),
                     0);
    assert_int_equal(cairn_gauge_new(r, &depth, "cairn_queue_depth", "Queued requests.", &err), 0);
    const double bounds[] = {0.5, 1, 2.5};
    assert_int_equal(
        cairn_histogram_new(r, &lat, "cairn_latency_seconds", "Latency.", bounds, 3, &err), 0);
    const char *labels[] = {"path", "code"};
    assert_int_equal(cairn_counter_family_new(r, &by_path, "cairn_http_requests_total",
                                              "HTTP requests by path and code.", labels, 2, 10,
                                              &err),
                     0);
    const char *model[] = {"model"};
    assert_int_equal(cairn_histogram_family_new(r, &ttft, "cairn_ttft_seconds", "", model, 1, 4,
                                                bounds, 2, &err),
                     0);

    cairn_counter_inc(reqs);
    cairn_counter_inc(reqs);
    cairn_counter_add(reqs, 3);
    cairn_gauge_set(depth, 7);
    cairn_gauge_dec(depth);
    cairn_gauge_add(depth, -7.5);
    cairn_histogram_observe(lat, 0.25);
    cairn_histogram_observe(lat, 0.5); /* le is inclusive */
    cairn_histogram_observe(lat, 0.75);
    cairn_histogram_observe(lat, 4);
    cairn_counter_inc(cairn_counter_child(by_path, CAIRN_LABELS("/v1/rag", "200")));
    cairn_counter_add(cairn_counter_child(by_path, CAIRN_LABELS("/v1/\"odd\"\\\n", "404")), 2);
    cairn_counter_inc(cairn_counter_child(by_path, CAIRN_LABELS("/v1/rag", "200")));
    cairn_histogram_observe(cairn_histogram_child(ttft, CAIRN_LABELS("gemma")), 0.75);

    char *text = render(r);
    const char *expect =
        "# HELP cairn_requests_total Requests seen.\\nAll of them, C:\\\\ too.\n"
        "# TYPE cairn_requests_total counter\n"
        "cairn_requests_total 5\n"
        "# HELP cairn_queue_depth Queued requests.\n"
        "# TYPE cairn_queue_depth gauge\n"
        "cairn_queue_depth -1.5\n"
        "# HELP cairn_latency_seconds Latency.\n"
        "# TYPE cairn_latency_seconds histogram\n"
        "cairn_latency_seconds_bucket{le=\"0.5\"} 2\n"
        "cairn_latency_seconds_bucket{le=\"1\"} 3\n"
        "cairn_latency_seconds_bucket{le=\"2.5\"} 3\n"
        "cairn_latency_seconds_bucket{le=\"+Inf\"} 4\n"
        "cairn_latency_seconds_sum 5.5\n"
        "cairn_latency_seconds_count 4\n"
        "# HELP cairn_http_requests_total HTTP requests by path and code.\n"
        "# TYPE cairn_http_requests_total counter\n"
        "cairn_http_requests_total{path=\"/v1/rag\",code=\"200\"} 2\n"
        "cairn_http_requests_total{path=\"/v1/\\\"odd\\\"\\\\\\n\",code=\"404\"} 2\n"
        "# TYPE cairn_ttft_seconds histogram\n"
        "cairn_ttft_seconds_bucket{model=\"gemma\",le=\"0.5\"} 0\n"
        "cairn_ttft_seconds_bucket{model=\"gemma\",le=\"1\"} 1\n"
        "cairn_ttft_seconds_bucket{model=\"gemma\",le=\"+Inf\"} 1\n"
        "cairn_ttft_seconds_sum{model=\"gemma\"} 0.75\n"
        "cairn_ttft_seconds_count{model=\"gemma\"} 1\n";
    assert_string_equal(text, expect);
    free(text);

    assert_true(cairn_counter_value(reqs) == 5);
    assert_true(cairn_gauge_value(depth) == -1.5);
    assert_int_equal(cairn_histogram_count(lat), 4);
    assert_true(cairn_histogram_sum(lat) == 5.5);
}

static void test_values_formatting(void **state)
{
    cairn_metrics *r = *state;
    cairn_counter *c;
    cairn_gauge *g;
    assert_int_equal(cairn_counter_new(r, &c, "c_total", NULL, NULL), 0);
    assert_int_equal(cairn_gauge_new(r, &g, "g", NULL, NULL), 0);
    cairn_counter_add(c, 0.5);
    cairn_counter_add(c, -3); /* counters never go down */
    cairn_counter_add(c, NAN);
    cairn_counter_inc(c);
    cairn_counter_inc(c);
    cairn_gauge_set(g, 0.1);
    char *text = render(r);
    assert_string_equal(text, "# TYPE c_total counter\nc_total 2.5\n# TYPE g gauge\ng 0.1\n");
    free(text);
    cairn_gauge_set(g, INFINITY);
    text = render(r);
    assert_non_null(strstr(text, "\ng +Inf\n"));
    free(text);
    cairn_gauge_set(g, -INFINITY);
    text = render(r);
    assert_non_null(strstr(text, "\ng -Inf\n"));
    free(text);
    cairn_gauge_set(g, NAN);
    text = render(r);
    assert_non_null(strstr(text, "\ng NaN\n"));
    free(text);
    /* 1e21 and 1.0000000000000002 need the full precision to read back exactly. */
    cairn_gauge_set(g, 1.0000000000000002);
    text = render(r);
    char *line = strstr(text, "\ng ");
    assert_non_null(line);
    assert_true(strtod(line + 3, NULL) == 1.0000000000000002);
    free(text);
}

static void test_children_bounded(void **state)
{
    cairn_metrics *r = *state;
    cairn_metric_family *f;
    const char *labels[] = {"user"};
    assert_int_equal(cairn_counter_family_new(r, &f, "cairn_users_total", "h", labels, 1, 2, NULL),
                     0);
    cairn_counter *a = cairn_counter_child(f, CAIRN_LABELS("a"));
    cairn_counter *b = cairn_counter_child(f, CAIRN_LABELS("b"));
    assert_non_null(a);
    assert_non_null(b);
    assert_ptr_equal(cairn_counter_child(f, CAIRN_LABELS("a")), a);
    assert_null(cairn_counter_child(f, CAIRN_LABELS("c")));
    assert_null(cairn_counter_child(f, CAIRN_LABELS("d")));
    assert_int_equal(cairn_metric_family_dropped(f), 2);
    cairn_counter_inc(cairn_counter_child(f, CAIRN_LABELS("c"))); /* NULL: a no-op */
    assert_null(cairn_counter_child(f, CAIRN_LABELS("\xff")));    /* not UTF-8 */
    /* A family of another kind hands out no children of this kind. */
    assert_null(cairn_gauge_child(f, CAIRN_LABELS("a")));
    assert_null(cairn_histogram_child(f, CAIRN_LABELS("a")));
    cairn_counter_inc(a);
    char *text = render(r);
    assert_string_equal(text, "# HELP cairn_users_total h\n# TYPE cairn_users_total counter\n"
                              "cairn_users_total{user=\"a\"} 1\ncairn_users_total{user=\"b\"} 0\n");
    free(text);
}

static void test_registration_errors(void **state)
{
    cairn_metrics *r = *state;
    cairn_error err;
    cairn_counter *c;
    cairn_metric_family *f;
    assert_int_equal(cairn_counter_new(r, &c, "9starts_with_digit", "", &err), CAIRN_EINVAL);
    assert_null(c);
    assert_int_equal(cairn_counter_new(r, &c, "has-dash", "", &err), CAIRN_EINVAL);
    assert_string_equal(err.msg, "metric name 'has-dash' is not valid");
    assert_int_equal(cairn_counter_new(r, &c, "", "", &err), CAIRN_EINVAL);
    assert_int_equal(cairn_counter_new(r, &c, "ns:sub_total", "", &err),
                     0); /* colons are allowed */
    assert_int_equal(cairn_counter_new(r, &c, "ns:sub_total", "", &err), CAIRN_EINVAL);
    assert_string_equal(err.msg, "metric 'ns:sub_total' is already registered");

    const char *reserved[] = {"__x"}, *colon[] = {"a:b"}, *twice[] = {"a", "a"}, *le[] = {"le"};
    assert_int_equal(cairn_counter_family_new(r, &f, "x1", "", reserved, 1, 0, &err), CAIRN_EINVAL);
    assert_string_equal(err.msg, "x1: label name '__x' is not valid");
    assert_int_equal(cairn_counter_family_new(r, &f, "x2", "", colon, 1, 0, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_counter_family_new(r, &f, "x3", "", twice, 2, 0, &err), CAIRN_EINVAL);
    assert_string_equal(err.msg, "x3: label 'a' given twice");
    assert_int_equal(cairn_counter_family_new(r, &f, "x4", "", le, 1, 0, &err), 0);
    const double b[] = {1, 2};
    assert_int_equal(cairn_histogram_family_new(r, &f, "x5", "", le, 1, 0, b, 2, &err),
                     CAIRN_EINVAL);
    assert_string_equal(err.msg, "x5: label name 'le' is reserved for histograms");

    cairn_histogram *h;
    const double dec[] = {2, 1}, nan_b[] = {1, NAN}, dup[] = {1, 1}, inf_end[] = {1, INFINITY};
    assert_int_equal(cairn_histogram_new(r, &h, "h1", "", dec, 2, &err), CAIRN_EINVAL);
    assert_string_equal(err.msg, "h1: bucket bounds must be finite and strictly increasing");
    assert_int_equal(cairn_histogram_new(r, &h, "h2", "", nan_b, 2, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_histogram_new(r, &h, "h3", "", dup, 2, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_histogram_new(r, &h, "h4", "", inf_end, 2, &err), 0); /* +Inf dropped */
    cairn_histogram_observe(h, 5);
    cairn_histogram_observe(h, NAN); /* ignored */
    char *text = render(r);
    assert_non_null(
        strstr(text, "h4_bucket{le=\"1\"} 0\nh4_bucket{le=\"+Inf\"} 1\nh4_sum 5\nh4_count 1\n"));
    free(text);
}

static void test_exponential_buckets(void **state)
{
    (void)state;
    double b[4];
    cairn_metrics_exponential_buckets(0.001, 10, 4, b);
    assert_true(b[0] == 0.001);
    assert_true(fabs(b[3] - 1.0) < 1e-12);
    assert_true(b[1] > b[0] && b[2] > b[1] && b[3] > b[2]);
}

static void test_default_registry(void **state)
{
    (void)state;
    cairn_metrics *d = cairn_metrics_default();
    assert_non_null(d);
    assert_ptr_equal(cairn_metrics_default(), d);
    cairn_counter *c;
    assert_int_equal(cairn_counter_new(d, &c, "cairn_test_default_total", "", NULL), 0);
}

/* ---- Concurrency ------------------------------------------------------------------------- */

#define INC_THREADS 4
#define INCS        100000

typedef struct {
    cairn_counter *plain;
    cairn_metric_family *fam;
    cairn_histogram *hist;
    cairn_gauge *gauge;
} conc_ctx;

static void *inc_thread(void *arg)
{
    conc_ctx *c = arg;
    for (int i = 0; i < INCS; i++) {
        cairn_counter_inc(c->plain);
        /* Children looked up every time, racing to create them. */
        cairn_counter_inc(cairn_counter_child(c->fam, CAIRN_LABELS(i % 2 ? "odd" : "even")));
        cairn_histogram_observe(c->hist, (double)(i % 4));
        cairn_gauge_add(c->gauge, 0.5);
    }
    return NULL;
}

static void test_concurrent_updates(void **state)
{
    cairn_metrics *r = *state;
    conc_ctx c;
    const char *labels[] = {"parity"};
    const double b[] = {0, 1, 2};
    assert_int_equal(cairn_counter_new(r, &c.plain, "conc_total", "", NULL), 0);
    assert_int_equal(cairn_counter_family_new(r, &c.fam, "conc_by_total", "", labels, 1, 8, NULL),
                     0);
    assert_int_equal(cairn_histogram_new(r, &c.hist, "conc_hist", "", b, 3, NULL), 0);
    assert_int_equal(cairn_gauge_new(r, &c.gauge, "conc_gauge", "", NULL), 0);
    pthread_t th[INC_THREADS];
    for (int t = 0; t < INC_THREADS; t++)
        pthread_create(&th[t], NULL, inc_thread, &c);
    /* Rendering while updates run must be safe. */
    for (int i = 0; i < 5; i++)
        free(render(r));
    for (int t = 0; t < INC_THREADS; t++)
        pthread_join(th[t], NULL);

    assert_true(cairn_counter_value(c.plain) == (double)INC_THREADS * INCS);
    assert_true(cairn_counter_value(cairn_counter_child(c.fam, CAIRN_LABELS("odd"))) ==
                (double)INC_THREADS * INCS / 2);
    assert_int_equal(cairn_histogram_count(c.hist), INC_THREADS * INCS);
    /* Sum of i % 4 over INCS values per thread: each residue INCS/4 times. */
    assert_true(cairn_histogram_sum(c.hist) == (double)INC_THREADS * (INCS / 4) * (0 + 1 + 2 + 3));
    assert_true(cairn_gauge_value(c.gauge) == INC_THREADS * INCS * 0.5);
    char *text = render(r);
    char expect[512];
    snprintf(expect, sizeof expect,
             "conc_hist_bucket{le=\"0\"} %d\nconc_hist_bucket{le=\"1\"} %d\n"
             "conc_hist_bucket{le=\"2\"} %d\nconc_hist_bucket{le=\"+Inf\"} %d\n",
             INC_THREADS * INCS / 4, INC_THREADS * INCS / 2, INC_THREADS * INCS * 3 / 4,
             INC_THREADS * INCS);
    assert_non_null(strstr(text, expect));
    free(text);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_exposition_exact),
        T(test_values_formatting),
        T(test_children_bounded),
        T(test_registration_errors),
        cmocka_unit_test(test_exponential_buckets),
        cmocka_unit_test(test_default_registry),
        T(test_concurrent_updates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
