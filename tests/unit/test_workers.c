/*
 * tests/unit/test_workers.c — the generation workers' scheduling policies on the real
 * gemma-3-270m, as a submitter sees them: when tokens arrive, and the layer-yield metric.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "common/clock.h"
#include "services/workers.h"

#include "metric_value.h"

static char model_path[1024];

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t t_first, t_done; /* first text, on_done (cairn_now_ns) */
    int tokens;              /* text callbacks */
    char text[2048];
    size_t len;
    cairn_finish finish;
    int n_generated;
    const char *error;
    int logprobs;      /* on_logprob callbacks */
    bool lp_before_text; /* each came before the text of its token */
} req;

static int on_text(void *user, const char *t, size_t n)
{
    req *q = user;
    pthread_mutex_lock(&q->mu);
    if (!q->tokens++) q->t_first = cairn_now_ns();
    if (q->len + n < sizeof q->text) memcpy(q->text + q->len, t, n), q->len += n;
    q->text[q->len] = '\0';
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

static void on_done(void *user, const cairn_gen_result *r)
{
    req *q = user;
    pthread_mutex_lock(&q->mu);
    q->t_done = cairn_now_ns();
    q->error = r->error;
    q->finish = r->finish;
    q->n_generated = r->n_generated;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

static void on_logprob(void *user, const cairn_gen_logprob *lp)
{
    req *q = user;
    pthread_mutex_lock(&q->mu);
    q->logprobs++;
    q->lp_before_text = q->logprobs == q->tokens + 1;
    assert_true(lp->chosen.logprob <= 0.0f);
    assert_int_equal(lp->n_top, 3);
    pthread_mutex_unlock(&q->mu);
}

/* Waits until q has had n text callbacks or ended. */
static void wait_tokens(req *q, int n)
{
    pthread_mutex_lock(&q->mu);
    while (q->tokens < n && !q->t_done)
        pthread_cond_wait(&q->cv, &q->mu);
    pthread_mutex_unlock(&q->mu);
}

static void submit(cairn_workers *w, req *q, const char *prompt, bool offline, int max_tokens)
{
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    cairn_gen_request rq = {.prompt = prompt,
                            .prompt_len = strlen(prompt),
                            .tok_flags = CAIRN_TOK_ADD_SPECIAL,
                            .max_tokens = max_tokens,
                            .offline = offline,
                            .sample = cairn_sample_greedy_params(),
                            .on_text = on_text,
                            .on_done = on_done,
                            .user = q};
    cairn_error err = {0};
    if (cairn_workers_submit(w, &rq, &err) != 0) fail_msg("submit: %s", err.msg);
}

static void wait_done(req *q)
{
    pthread_mutex_lock(&q->mu);
    while (!q->t_done)
        pthread_cond_wait(&q->cv, &q->mu);
    pthread_mutex_unlock(&q->mu);
    if (q->error) fail_msg("request failed: %s", q->error);
}

/* A document of about n tokens. */
static char *document(const cairn_workers *w, int n)
{
    size_t cap = (size_t)n * 16, len = 0;
    char *s = malloc(cap);
    s[0] = '\0';
    for (int i = 0;; i++) {
        int have = cairn_tok_encode(cairn_workers_tokenizer(w), s, len, NULL, 0, 0, NULL);
        if ((have < 0 ? -have : have) >= n) break;
        len += (size_t)snprintf(s + len, cap - len, "Section %d: the river runs %d km past the "
                                "mill, where farmers grow barley. ", i, 10 + 3 * i);
    }
    return s;
}

/* Workers on the test model with metrics in *m: n_ctx positions, max_seqs slots of which
 * online_reserve are online's, and the policy. */
static cairn_workers *open_workers(cairn_metrics **m, int n_ctx, int max_seqs, int online_reserve,
                                   cairn_sched_policy policy)
{
    cairn_error err = {0};
    assert_int_equal(cairn_metrics_new(m, &err), 0);
    cairn_workers_params wp = cairn_workers_default_params();
    wp.model_path = model_path;
    wp.engine.n_ctx = n_ctx;
    wp.engine.max_seqs = max_seqs;
    wp.online_reserve = online_reserve;
    wp.sched.policy = policy;
    cairn_workers *w = NULL;
    if (cairn_workers_open(&w, &wp, *m, &err)) fail_msg("workers: %s", err.msg);
    return w;
}

/* An online request (24 tokens, more than the model's 18 layers) arrives during the first pass
 * of a ~900-token offline document (two passes). Returns the layer yields the workers counted;
 * *first_after says whether the document's first token came after the online request's last. */
static double yields_around_an_online_request(cairn_sched_policy policy, bool *first_after)
{
    cairn_metrics *m = NULL;
    cairn_workers *w = open_workers(&m, 1024, 4, 1, policy);
    char *doc = document(w, 900);
    req off = {0}, on = {0};
    submit(w, &off, doc, true, 4);
    /* Into the first pass: the worker admits the document at once, and 512 tokens take far
     * longer than this on any CPU the model runs on. */
    cairn_sleep_ns(20 * 1000000LL);
    submit(w, &on, "Count from one to fifty: one, two, three, four,", false, 24);
    wait_done(&on);
    wait_done(&off);
    assert_int_equal(on.tokens, 24); /* more iterations than layers */
    assert_true(off.tokens > 0);
    *first_after = off.t_first > on.t_done;
    double yields = metric_value(m, "cairn_sched_layer_yields_total");
    cairn_workers_close(w);
    cairn_metrics_free(m);
    free(doc);
    return yields;
}

/* online-only runs no offline work while online work exists: the suspended pass waits, whole,
 * until the online request has finished, so it yielded once and the document's first token
 * comes after the online request's last. (Advanced a layer after each online iteration, as
 * under slo, it yielded 16 times here.) */
static void test_online_only_waits_for_online_work(void **state)
{
    (void)state;
    bool after;
    assert_int_equal(yields_around_an_online_request(CAIRN_SCHED_ONLINE_ONLY, &after), 1);
    assert_true(after);
}

/* slo advances the suspended pass a layer after each online iteration, so that the online
 * tokens wait at most a layer: it yields again after each of them. */
static void test_slo_advances_a_layer_per_online_iteration(void **state)
{
    (void)state;
    bool after;
    double yields = yields_around_an_online_request(CAIRN_SCHED_SLO, &after);
    print_message("slo: %.0f layer yields\n", yields);
    assert_true(yields > 1);
}

/* An online request that finds the only slot taken by an offline one preempts it. The offline
 * request does not end: it waits while the online one runs, then goes on where it stopped,
 * recomputing its prompt and what it had generated. Its text and token count are those of the
 * same request run alone (greedy), and one preemption was counted. */
static void test_preempted_offline_request_goes_on(void **state)
{
    (void)state;
    cairn_metrics *m = NULL;
    cairn_workers *w = open_workers(&m, 256, 1, 0, cairn_workers_default_params().sched.policy);
    const char *doc = "Write a short story about a lighthouse keeper and a storm.";
    enum { N = 32 };
    req alone = {0}, off = {0}, on = {0};
    submit(w, &alone, doc, true, N);
    wait_done(&alone);
    assert_int_equal(alone.n_generated, N);
    assert_int_equal(metric_value(m, "cairn_sched_preemptions_total"), 0);

    submit(w, &off, doc, true, N);
    wait_tokens(&off, 8);
    submit(w, &on, "The capital of France is", false, 6);
    wait_done(&on);
    pthread_mutex_lock(&off.mu);
    int64_t off_last_before = off.t_done; /* it must not have ended while preempted */
    pthread_mutex_unlock(&off.mu);
    wait_done(&off);
    assert_int_equal(off_last_before, 0);
    assert_true(off.tokens > 8);
    assert_int_equal(off.finish, CAIRN_FINISH_LENGTH);
    assert_int_equal(off.n_generated, N);
    assert_string_equal(off.text, alone.text);
    assert_int_equal(metric_value(m, "cairn_sched_preemptions_total"), 1);
    cairn_workers_close(w);
    cairn_metrics_free(m);
}

/* n choices of one request: greedy, each equals the request alone and reports a logprob per
 * token; sampled, choice i draws as a request alone with seed + i, so choices differ and a
 * seed reproduces them. The prompt is tokenized and counted once per choice (n_prompt). */
/* An occupancy share outside (0, 1] is refused at open, the error naming the value. */
static void test_offline_occupancy_checked(void **state)
{
    (void)state;
    const double bad[] = {0, -0.5, 1.5, NAN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cairn_workers_params wp = cairn_workers_default_params();
        wp.model_path = model_path;
        wp.sched.offline_occupancy = bad[i];
        cairn_workers *w = NULL;
        cairn_error err = {0};
        assert_int_equal(cairn_workers_open(&w, &wp, NULL, &err), CAIRN_EINVAL);
        assert_null(w);
        assert_non_null(strstr(err.msg, "offline occupancy"));
    }
}

static void test_choices_of_one_request(void **state)
{
    (void)state;
    cairn_metrics *m = NULL;
    cairn_workers *w = open_workers(&m, 256, 4, 0, cairn_workers_default_params().sched.policy);
    const char *prompt = "Write a short story about a lighthouse keeper and a storm.";
    enum { N = 12, C = 3 };
    for (int sampled = 0; sampled < 2; sampled++) {
        cairn_sample_params sp = cairn_sample_greedy_params();
        if (sampled) {
            sp = cairn_sample_default_params();
            sp.temperature = 1.5f;
            sp.top_k = 0;
            sp.top_p = 1.0f;
            sp.seed = 41;
        }
        req alone[C], ch[C];
        memset(alone, 0, sizeof alone);
        memset(ch, 0, sizeof ch);
        void *users[C];
        for (int i = 0; i < C; i++) {
            req *q = &alone[i];
            pthread_mutex_init(&q->mu, NULL);
            pthread_cond_init(&q->cv, NULL);
            cairn_gen_request rq = {.prompt = prompt, .prompt_len = strlen(prompt),
                                    .tok_flags = CAIRN_TOK_ADD_SPECIAL, .max_tokens = N,
                                    .sample = sp, .on_text = on_text, .on_done = on_done,
                                    .user = q};
            rq.sample.seed = sp.seed + (uint64_t)i;
            cairn_error err = {0};
            if (cairn_workers_submit(w, &rq, &err)) fail_msg("submit: %s", err.msg);
            wait_done(q);
            pthread_mutex_init(&ch[i].mu, NULL);
            pthread_cond_init(&ch[i].cv, NULL);
            users[i] = &ch[i];
        }
        cairn_gen_request rq = {.prompt = prompt, .prompt_len = strlen(prompt),
                                .tok_flags = CAIRN_TOK_ADD_SPECIAL, .max_tokens = N,
                                .sample = sp, .on_text = on_text, .on_done = on_done,
                                .n = C, .choice_user = users, .logprobs = true,
                                .top_logprobs = 3, .on_logprob = on_logprob};
        cairn_error err = {0};
        if (cairn_workers_submit(w, &rq, &err)) fail_msg("submit: %s", err.msg);
        for (int i = 0; i < C; i++) {
            wait_done(&ch[i]);
            assert_string_equal(ch[i].text, alone[sampled ? i : 0].text);
            assert_int_equal(ch[i].n_generated, alone[i].n_generated);
            assert_int_equal(ch[i].logprobs, ch[i].n_generated);
            assert_true(ch[i].lp_before_text);
        }
        if (sampled) {
            assert_string_not_equal(ch[0].text, ch[1].text);
            assert_string_not_equal(ch[1].text, ch[2].text);
        }
    }
    /* n above the limit, or without the users, is refused */
    cairn_gen_request bad = {.prompt = prompt, .prompt_len = strlen(prompt), .max_tokens = 2,
                             .sample = cairn_sample_greedy_params(), .on_text = on_text,
                             .on_done = on_done, .n = CAIRN_WORKERS_MAX_N + 1};
    void *users[CAIRN_WORKERS_MAX_N + 1] = {0};
    bad.choice_user = users;
    cairn_error err = {0};
    assert_int_equal(cairn_workers_submit(w, &bad, &err), CAIRN_EINVAL);
    bad.n = 2;
    bad.choice_user = NULL;
    assert_int_equal(cairn_workers_submit(w, &bad, &err), CAIRN_EINVAL);
    cairn_workers_close(w);
    cairn_metrics_free(m);
}

int main(void)
{
    const char *models = getenv("CAIRN_TEST_MODELS");
    snprintf(model_path, sizeof model_path, "%s/gemma-3-270m-q4_k_m.gguf",
             models ? models : "data/models");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_online_only_waits_for_online_work),
        cmocka_unit_test(test_slo_advances_a_layer_per_online_iteration),
        cmocka_unit_test(test_preempted_offline_request_goes_on),
        cmocka_unit_test(test_choices_of_one_request),
        cmocka_unit_test(test_offline_occupancy_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
