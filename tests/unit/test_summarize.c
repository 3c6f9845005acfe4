/*
 * tests/unit/test_summarize.c — the summarize job on the real gemma-3-270m through the
 * generation workers: a short document in one request; a long one map-reduce style, with an
 * online request served while it runs; KV-cache pressure preempting offline pieces, which the
 * workers requeue and which still finish; bad documents and abandonment through the keepalive.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/utf8.h"
#include "services/summarize.h"

#include "metric_value.h"

static char model_path[1024];

/* A long factual document: 40 paragraphs about made-up rivers, each with numbers. */
static char *document(int paragraphs, size_t *len)
{
    static const char *const names[] = {"Alder", "Brenn", "Corrow", "Dunmere", "Eskel"};
    size_t cap = (size_t)paragraphs * 400 + 1, n = 0;
    char *s = malloc(cap);
    for (int i = 0; i < paragraphs; i++)
        n += (size_t)snprintf(s + n, cap - n,
                              "The %s river, section %d, runs %d kilometres through the valley "
                              "of %s. Its flow doubles in spring, when snow melts on the hills, "
                              "and %d villages draw their water from it. Fishermen report trout "
                              "and pike; the old mill at kilometre %d still grinds flour.\n\n",
                              names[i % 5], i + 1, 20 + 7 * i, names[(i + 2) % 5], 3 + i % 6,
                              5 + 3 * i);
    *len = n;
    return s;
}

static cairn_workers *open_workers_metrics(int max_seqs, int kv_blocks, cairn_metrics *m)
{
    cairn_workers_params wp = cairn_workers_default_params();
    wp.model_path = model_path;
    wp.engine.n_ctx = 512;
    wp.engine.max_seqs = max_seqs;
    wp.engine.kv_blocks = kv_blocks;
    wp.online_reserve = 1;
    cairn_workers *w = NULL;
    cairn_error err = {0};
    int rc = cairn_workers_open(&w, &wp, m, &err);
    if (rc) fail_msg("workers: %s", err.msg);
    return w;
}

static cairn_workers *open_workers(int max_seqs, int kv_blocks)
{
    return open_workers_metrics(max_seqs, kv_blocks, NULL);
}

static void check_summary(const char *s, size_t n)
{
    assert_non_null(s);
    assert_true(n > 10);
    assert_int_equal(strlen(s), n);
    assert_true(cairn_utf8_valid(s, n));
}

/* ---- An online request running beside the summary ----------------------------------------- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    size_t chars;
    const char *error;
} online;

static int online_text(void *user, const char *t, size_t n)
{
    (void)t;
    ((online *)user)->chars += n;
    return 0;
}

static void online_done(void *user, const cairn_gen_result *r)
{
    online *o = user;
    pthread_mutex_lock(&o->mu);
    o->done = 1;
    o->error = r->error;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

/* A request that counts its tokens and waits for a given count (for slot preemption); it
 * asks to stop at its next token once `stop` is set. */
typedef struct {
    online o;
    int tokens;
    bool stop;
} counted;

static int counted_text(void *user, const char *t, size_t n)
{
    (void)t, (void)n;
    counted *c = user;
    pthread_mutex_lock(&c->o.mu);
    c->tokens++;
    bool stop = c->stop;
    pthread_cond_broadcast(&c->o.cv);
    pthread_mutex_unlock(&c->o.mu);
    return stop;
}

static int tokens_of(counted *c)
{
    pthread_mutex_lock(&c->o.mu);
    int n = c->tokens;
    pthread_mutex_unlock(&c->o.mu);
    return n;
}

static void counted_done(void *user, const cairn_gen_result *r)
{
    online_done(&((counted *)user)->o, r);
}

static void wait_tokens(counted *c, int n)
{
    pthread_mutex_lock(&c->o.mu);
    while (c->tokens < n && !c->o.done)
        pthread_cond_wait(&c->o.cv, &c->o.mu);
    pthread_mutex_unlock(&c->o.mu);
}

static void submit_counted(cairn_workers *w, counted *c, const char *prompt, bool offline,
                           int max_tokens)
{
    pthread_mutex_init(&c->o.mu, NULL);
    pthread_cond_init(&c->o.cv, NULL);
    cairn_gen_request rq = {.prompt = prompt,
                            .prompt_len = strlen(prompt),
                            .tok_flags = CAIRN_TOK_ADD_SPECIAL,
                            .max_tokens = max_tokens,
                            .offline = offline,
                            .sample = cairn_sample_greedy_params(),
                            .on_text = counted_text,
                            .on_done = counted_done,
                            .user = c};
    cairn_error err = {0};
    if (cairn_workers_submit(w, &rq, &err) != 0) fail_msg("submit: %s", err.msg);
}

static void wait_done_counted(counted *c)
{
    pthread_mutex_lock(&c->o.mu);
    while (!c->o.done)
        pthread_cond_wait(&c->o.cv, &c->o.mu);
    pthread_mutex_unlock(&c->o.mu);
}

/* An online request that finds every slot taken by offline ones takes the slot of the offline
 * sequence with the least work done, not simply the newest: here the older one, 5 prompt tokens
 * and a few generated, gives way (it waits, requeued, while the online request runs), and the
 * newer one, whose ~450-token prompt is computed, runs on beside the online request (a budget
 * no iteration reaches lets it decode in every iteration). */
static void test_slot_goes_from_the_least_work(void **state)
{
    (void)state;
    cairn_workers_params wp = cairn_workers_default_params();
    wp.model_path = model_path;
    wp.engine.n_ctx = 512;
    wp.engine.max_seqs = 2;
    wp.online_reserve = 0;
    wp.sched.budget_s = wp.sched.online_budget_s = 60;
    cairn_workers *w = NULL;
    cairn_error err = {0};
    if (cairn_workers_open(&w, &wp, NULL, &err)) fail_msg("workers: %s", err.msg);
    size_t len;
    char *doc = document(5, &len); /* ~450 tokens */
    counted older = {.tokens = 0}, newer = {.tokens = 0}, on = {.tokens = 0};
    submit_counted(w, &older, "Count slowly from one", true, 400);
    wait_tokens(&older, 1);
    submit_counted(w, &newer, doc, true, 40);
    wait_tokens(&newer, 1);
    submit_counted(w, &on, "The capital of France is", false, 4);
    wait_tokens(&on, 1);
    int older_at = tokens_of(&older), newer_at = tokens_of(&newer);
    wait_done_counted(&on);
    assert_null(on.o.error);
    if (tokens_of(&older) != older_at || tokens_of(&newer) <= newer_at)
        fail_msg("while the online request ran, the older offline request went %d -> %d tokens "
                 "and the newer %d -> %d: the one with less work should have waited",
                 older_at, tokens_of(&older), newer_at, tokens_of(&newer));
    /* The older one was requeued, not ended: it goes on once a slot is free. */
    pthread_mutex_lock(&older.o.mu);
    assert_false(older.o.done);
    older.stop = true;
    pthread_mutex_unlock(&older.o.mu);
    wait_done_counted(&older);
    wait_done_counted(&newer);
    assert_null(older.o.error);
    assert_true(tokens_of(&older) > older_at);
    assert_null(newer.o.error);
    free(doc);
    cairn_workers_close(w);
}

static void test_short_and_long_documents(void **state)
{
    (void)state;
    cairn_workers *w = open_workers(4, 0);
    cairn_summarize_params p = cairn_summarize_default_params();
    p.summary_tokens = 40;
    cairn_summarize_stats st;
    cairn_error err = {0};
    char *out = NULL;
    size_t n = 0;

    size_t len;
    char *doc = document(2, &len);
    int rc = cairn_summarize(w, doc, len, &p, &out, &n, &st, &err);
    if (rc) fail_msg("short: %s", err.msg);
    check_summary(out, n);
    assert_int_equal(st.pieces, 1);
    assert_int_equal(st.rounds, 1);
    assert_int_equal(st.requests, 1);
    assert_true(st.tokens_generated >= 1 && st.tokens_generated <= 40);
    free(out);
    free(doc);

    /* Long: more tokens than a 512-token context holds, so map-reduce. An online request
     * submitted meanwhile is served. */
    doc = document(14, &len);
    online o = {.done = 0};
    pthread_mutex_init(&o.mu, NULL);
    pthread_cond_init(&o.cv, NULL);
    cairn_gen_request rq = {.prompt = "The capital of France is",
                            .prompt_len = strlen("The capital of France is"),
                            .tok_flags = CAIRN_TOK_ADD_SPECIAL,
                            .max_tokens = 8,
                            .sample = cairn_sample_greedy_params(),
                            .on_text = online_text,
                            .on_done = online_done,
                            .user = &o};
    assert_int_equal(cairn_workers_submit(w, &rq, &err), 0);
    rc = cairn_summarize(w, doc, len, &p, &out, &n, &st, &err);
    if (rc) fail_msg("long: %s", err.msg);
    check_summary(out, n);
    assert_true(st.doc_tokens > 512);
    assert_true(st.pieces >= 3);
    assert_true(st.rounds >= 2);
    assert_true(st.requests >= st.pieces + 1);
    pthread_mutex_lock(&o.mu);
    while (!o.done) pthread_cond_wait(&o.cv, &o.mu);
    pthread_mutex_unlock(&o.mu);
    assert_null(o.error);
    assert_true(o.chars > 0);
    free(out);
    free(doc);
    cairn_workers_close(w);
}

/* A KV cache that holds about one sequence: offline pieces preempt each other, the workers
 * requeue them (the summarizer resubmits nothing), and the summary still comes out. */
static void test_kv_pressure_preempts_and_requeues(void **state)
{
    (void)state;
    cairn_metrics *m = NULL;
    assert_int_equal(cairn_metrics_new(&m, NULL), 0);
    cairn_workers *w = open_workers_metrics(4, 30, m);
    cairn_summarize_params p = cairn_summarize_default_params();
    p.summary_tokens = 32;
    p.max_attempts = 12;
    cairn_summarize_stats st;
    cairn_error err = {0};
    char *out = NULL;
    size_t n = 0, len;
    char *doc = document(12, &len);
    int rc = cairn_summarize(w, doc, len, &p, &out, &n, &st, &err);
    if (rc) fail_msg("summarize: %s", err.msg);
    check_summary(out, n);
    assert_true(st.pieces >= 2);
    assert_int_equal(st.resubmitted, 0);
    double preempted = metric_value(m, "cairn_sched_preemptions_total");
    print_message("%d pieces, %.0f preemptions\n", st.pieces, preempted);
    assert_true(preempted >= 1);
    free(out);
    free(doc);
    cairn_workers_close(w);
    cairn_metrics_free(m);
}

static int stop_now(void *ctx)
{
    ++*(int *)ctx;
    return 1;
}

static void test_bad_documents_and_abandon(void **state)
{
    (void)state;
    cairn_workers *w = open_workers(2, 0);
    cairn_summarize_params p = cairn_summarize_default_params();
    cairn_error err = {0};
    char *out = (char *)1;
    size_t n = 1;
    assert_int_equal(cairn_summarize(w, "", 0, &p, &out, &n, NULL, &err), CAIRN_EINVAL);
    assert_null(out);
    assert_int_equal(cairn_summarize(w, " \n\t ", 4, &p, &out, &n, NULL, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "empty"));
    assert_int_equal(cairn_summarize(w, "abc\xff", 4, &p, &out, &n, NULL, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "UTF-8"));
    p.summary_tokens = 500; /* leaves no room in a 512-token context */
    assert_int_equal(cairn_summarize(w, "text", 4, &p, &out, &n, NULL, &err), CAIRN_EINVAL);

    /* The keepalive asks to stop: the summary is abandoned, the workers carry on. */
    p = cairn_summarize_default_params();
    p.summary_tokens = 300;
    int calls = 0;
    p.keepalive = stop_now;
    p.keepalive_ctx = &calls;
    p.keepalive_ms = 1;
    size_t len;
    char *doc = document(3, &len);
    assert_int_equal(cairn_summarize(w, doc, len, &p, &out, &n, NULL, &err), CAIRN_ECANCELED);
    assert_true(calls >= 1);
    assert_null(out);
    p.keepalive = NULL;
    p.summary_tokens = 16;
    assert_int_equal(cairn_summarize(w, doc, len, &p, &out, &n, NULL, &err), 0);
    check_summary(out, n);
    free(out);
    free(doc);
    cairn_workers_close(w);
}

int main(void)
{
    const char *models = getenv("CAIRN_TEST_MODELS");
    snprintf(model_path, sizeof model_path, "%s/gemma-3-270m-q4_k_m.gguf",
             models ? models : "data/models");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_short_and_long_documents),
        cmocka_unit_test(test_kv_pressure_preempts_and_requeues),
        cmocka_unit_test(test_slot_goes_from_the_least_work),
        cmocka_unit_test(test_bad_documents_and_abandon),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
