/*
 * tests/unit/test_engine.c — the engine on the real gemma-3-270m (skipped without it):
 * batched equals unbatched, stop conditions, callbacks, cancel, followers sharing a prompt's
 * KV blocks, log-probabilities, and clear errors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "generation/engine.h"
#include "generation/kv.h"
#include "tests/reference/gemma3_ref.h"

static cairn_model *model;
static ref_set ref;

static int setup(void **state)
{
    char mpath[1024], rpath[1024];
    const char *models = getenv("CAIRN_TEST_MODELS"), *data = getenv("CAIRN_TEST_DATA");
    snprintf(mpath, sizeof mpath, "%s/gemma-3-270m-q4_k_m.gguf", models ? models : "data/models");
    snprintf(rpath, sizeof rpath, "%s/generation/gemma3_ref.txt", data ? data : "tests/data");
    if (access(mpath, R_OK) != 0)
        return 0; /* tests skip */
    cairn_error err;
    if (cairn_model_open(&model, mpath, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return ref_load(&ref, rpath);
}

static int teardown(void **state)
{
    cairn_model_close(model);
    ref_free(&ref);
    return 0;
}

static cairn_engine *open_engine(int max_batch)
{
    cairn_engine_params p = cairn_engine_default_params();
    p.n_threads = 2;
    p.n_ctx = 1024;
    p.max_batch_tokens = max_batch;
    cairn_engine *e;
    cairn_error err;
    if (cairn_engine_open(&e, model, &p, &err))
        fail_msg("engine: %s", err.msg);
    return e;
}

enum { NP = 5, NGEN = 12, LONG = 650 };

static int prompt_len(int i) { return ref.p[i].n_prompt < LONG ? ref.p[i].n_prompt : LONG; }

static int add(cairn_engine *e, int i, const cairn_gen_params *gp)
{
    int32_t *t = malloc(sizeof(int32_t) * (size_t)prompt_len(i));
    for (int k = 0; k < prompt_len(i); k++)
        t[k] = ref.p[i].prompt[k];
    int id;
    cairn_error err;
    if (cairn_engine_add(e, t, prompt_len(i), gp, &id, &err))
        fail_msg("add: %s", err.msg);
    free(t);
    return id;
}

/* Each prompt alone, then all together with a small batch budget so that prefill chunks of
 * some sequences share passes with decode tokens of others: the same greedy tokens. The long
 * prompt (650 tokens) crosses the 512-token window. */
static void test_batched_equals_unbatched(void **state)
{
    if (!model) fail_msg("the model did not open (see above): run scripts/setup");
    cairn_gen_params gp = cairn_gen_default_params();
    gp.max_tokens = NGEN;
    int32_t alone[NP][NGEN];
    cairn_error err;
    for (int i = 0; i < NP; i++) {
        cairn_engine *e = open_engine(256);
        int id = add(e, i, &gp);
        assert_int_equal(cairn_engine_run(e, &err), 0);
        cairn_seq_info info;
        assert_int_equal(cairn_engine_seq_info(e, id, &info), 0);
        assert_int_equal(info.n_generated, NGEN);
        assert_int_equal(info.finish, CAIRN_FINISH_LENGTH);
        memcpy(alone[i], info.generated, sizeof alone[i]);
        cairn_engine_close(e);
    }
    cairn_engine *e = open_engine(48);
    int ids[NP];
    for (int i = 0; i < NP; i++)
        ids[i] = add(e, i, &gp);
    assert_int_equal(cairn_engine_active(e), NP);
    int steps = 0;
    bool mixed = false;
    while (cairn_engine_active(e) > 0) {
        /* Observe that some pass mixes decoding and prefilling sequences. */
        int dec = 0, pre = 0;
        for (int i = 0; i < NP; i++) {
            cairn_seq_info in;
            cairn_engine_seq_info(e, ids[i], &in);
            if (in.finish == CAIRN_FINISH_NONE)
                *(in.prefilling ? &pre : &dec) += 1;
        }
        mixed |= dec > 0 && pre > 0;
        cairn_step_item items[NP];
        int n = 0, budget = 48;
        for (int i = 0; i < NP; i++) {
            cairn_seq_info in;
            cairn_engine_seq_info(e, ids[i], &in);
            if (in.finish != CAIRN_FINISH_NONE || budget == 0)
                continue;
            int want = in.prefilling ? (in.n_prompt - in.n_prefilled < budget
                                            ? in.n_prompt - in.n_prefilled : budget) : 1;
            items[n++] = (cairn_step_item){ids[i], want};
            budget -= want;
        }
        if (cairn_engine_step(e, items, n, &err))
            fail_msg("step: %s", err.msg);
        steps++;
    }
    assert_true(mixed);
    for (int i = 0; i < NP; i++) {
        cairn_seq_info info;
        assert_int_equal(cairn_engine_seq_info(e, ids[i], &info), 0);
        assert_int_equal(info.n_generated, NGEN);
        for (int k = 0; k < NGEN; k++)
            if (info.generated[k] != alone[i][k])
                fail_msg("prompt %d token %d: batched %d, alone %d", i, k, info.generated[k],
                         alone[i][k]);
    }
    fprintf(stderr, "batched run: %d steps, all %d sequences equal their solo runs\n", steps, NP);
    cairn_engine_close(e);
}

typedef struct {
    int calls, stop_after;
    int32_t last;
    bool saw_last;
} cb_state;

static int on_token(void *user, int seq, int32_t tok, bool last)
{
    cb_state *s = user;
    s->calls++;
    s->last = tok;
    s->saw_last |= last;
    return s->stop_after && s->calls >= s->stop_after;
}

static void test_stops_and_callbacks(void **state)
{
    if (!model) fail_msg("the model did not open (see above): run scripts/setup");
    cairn_engine *e = open_engine(128);
    cairn_error err;
    /* Callback stop after 3 tokens. */
    cb_state cs = {.stop_after = 3};
    cairn_gen_params gp = cairn_gen_default_params();
    gp.max_tokens = 50;
    gp.on_token = on_token;
    gp.user = &cs;
    int a = add(e, 0, &gp);
    /* Stop token: the first greedy token of prompt 0 (known from the solo run). */
    cairn_gen_params gs = cairn_gen_default_params();
    gs.max_tokens = 50;
    int32_t stop = ref.p[0].greedy[1];
    gs.stop_tokens = &stop;
    gs.n_stop_tokens = 1;
    int b = add(e, 0, &gs);
    int c = add(e, 1, &gs);
    assert_int_equal(cairn_engine_cancel(e, c), 0);
    assert_int_equal(cairn_engine_run(e, &err), 0);
    cairn_seq_info in;
    cairn_engine_seq_info(e, a, &in);
    assert_int_equal(in.finish, CAIRN_FINISH_CALLBACK);
    assert_int_equal(in.n_generated, 3);
    assert_int_equal(cs.calls, 3);
    assert_int_equal(cs.last, in.generated[2]);
    cairn_engine_seq_info(e, b, &in);
    assert_int_equal(in.finish, CAIRN_FINISH_STOP);
    assert_int_equal(in.generated[in.n_generated - 1], stop);
    cairn_engine_seq_info(e, c, &in);
    assert_int_equal(in.finish, CAIRN_FINISH_CANCELLED);
    assert_int_equal(in.n_generated, 0);
    /* A finished sequence cannot be stepped; released ids are gone. */
    cairn_step_item it = {a, 1};
    assert_int_equal(cairn_engine_step(e, &it, 1, &err), CAIRN_EINVAL);
    cairn_engine_release(e, a);
    assert_int_equal(cairn_engine_seq_info(e, a, &in), CAIRN_ENOTFOUND);
    assert_int_equal(cairn_engine_cancel(e, 999), CAIRN_ENOTFOUND);
    cairn_engine_close(e);
}

/* The PRNG of a sequence's sampler after one more draw from r (any row takes one draw). */
static cairn_sampler_rng one_draw_past(const cairn_sample_params *sp, const cairn_sampler_rng *r)
{
    enum { V = 64 };
    float row[V] = {0};
    cairn_sampler *s;
    cairn_error err;
    if (cairn_sampler_new(&s, V, sp, &err)) fail_msg("sampler: %s", err.msg);
    cairn_sampler_rng_set(s, r);
    assert_true(cairn_sampler_sample(s, row, &err) >= 0);
    cairn_sampler_rng out;
    cairn_sampler_rng_get(s, &out);
    cairn_sampler_free(s);
    return out;
}

/* A sampled sequence stopped after some tokens and added again (its prompt and tokens as the
 * new prompt, as the workers requeue a preempted request) with its PRNG carried over draws on
 * from where it stood: after its first new token its PRNG is one draw past the carried one.
 * Added again without the carry, it starts over from the seed. Greedy sequences have none. */
static void test_resumed_sequence_draws_on(void **state)
{
    (void)state;
    if (!model) fail_msg("the model did not open (see above): run scripts/setup");
    cairn_engine *e = open_engine(512);
    cairn_error err;
    cairn_gen_params gp = cairn_gen_default_params();
    gp.sample = cairn_sample_default_params(); /* temperature 0.8, top-k 40, top-p 0.95 */
    gp.sample.seed = 77;
    gp.max_tokens = 6;
    int a = add(e, 0, &gp);
    assert_int_equal(cairn_engine_run(e, &err), 0);
    cairn_seq_info in;
    assert_int_equal(cairn_engine_seq_info(e, a, &in), 0);
    assert_int_equal(in.n_generated, 6);
    cairn_sampler_rng at, seed_rng, b_rng, c_rng;
    assert_int_equal(cairn_engine_seq_rng(e, a, &at), 0);
    const int n = prompt_len(0) + in.n_generated;
    int32_t *t = malloc(sizeof *t * (size_t)n);
    for (int k = 0; k < prompt_len(0); k++)
        t[k] = ref.p[0].prompt[k];
    memcpy(t + prompt_len(0), in.generated, sizeof *t * (size_t)in.n_generated);
    cairn_engine_release(e, a);

    gp.max_tokens = 1;
    int b, c;
    assert_int_equal(cairn_engine_add(e, t, n, &gp, &b, &err), 0);
    assert_int_equal(cairn_engine_seq_rng(e, b, &seed_rng), 0); /* fresh: the seed's start */
    assert_int_equal(cairn_engine_seq_set_rng(e, b, &at), 0);
    assert_int_equal(cairn_engine_add(e, t, n, &gp, &c, &err), 0);
    assert_int_equal(cairn_engine_run(e, &err), 0);
    assert_int_equal(cairn_engine_seq_rng(e, b, &b_rng), 0);
    assert_int_equal(cairn_engine_seq_rng(e, c, &c_rng), 0);
    cairn_sampler_rng want_b = one_draw_past(&gp.sample, &at);
    cairn_sampler_rng want_c = one_draw_past(&gp.sample, &seed_rng);
    assert_memory_equal(b_rng.s, want_b.s, sizeof want_b.s);
    assert_memory_equal(c_rng.s, want_c.s, sizeof want_c.s);
    assert_memory_not_equal(b_rng.s, c_rng.s, sizeof c_rng.s);

    gp.sample = cairn_sample_greedy_params();
    int g;
    assert_int_equal(cairn_engine_add(e, t, 8, &gp, &g, &err), 0);
    assert_int_equal(cairn_engine_seq_rng(e, g, &at), CAIRN_ESTATE);
    assert_int_equal(cairn_engine_seq_set_rng(e, g, &at), CAIRN_ESTATE);
    cairn_engine_release(e, g);
    assert_int_equal(cairn_engine_seq_rng(e, g, &at), CAIRN_ENOTFOUND);
    free(t);
    cairn_engine_close(e);
}

/* prompt i generated alone with gp (NGEN tokens) into out. */
static void solo(int i, const cairn_gen_params *gp, int32_t *out)
{
    cairn_engine *e = open_engine(256);
    cairn_error err;
    int id = add(e, i, gp);
    assert_int_equal(cairn_engine_run(e, &err), 0);
    cairn_seq_info in;
    assert_int_equal(cairn_engine_seq_info(e, id, &in), 0);
    assert_int_equal(in.n_generated, gp->max_tokens);
    memcpy(out, in.generated, sizeof *out * (size_t)in.n_generated);
    cairn_engine_close(e);
}

typedef struct {
    cairn_engine *e;
    int id, calls;
} lp_state;

/* Greedy tokens with logprobs: the token is the top-1 entry and has its value; the list is
 * sorted; every value is a log-probability. */
static int check_logprobs(void *user, int seq, int32_t tok, bool last)
{
    (void)last;
    lp_state *st = user;
    const cairn_token_logprobs *lp = cairn_engine_seq_logprobs(st->e, seq);
    assert_non_null(lp);
    assert_int_equal(lp->chosen.token, tok);
    assert_int_equal(lp->n_top, 5);
    assert_int_equal(lp->top[0].token, tok);
    assert_true(lp->top[0].logprob == lp->chosen.logprob);
    for (int j = 0; j < lp->n_top; j++) {
        assert_true(lp->top[j].logprob <= 0.0f);
        if (j) assert_true(lp->top[j - 1].logprob >= lp->top[j].logprob);
    }
    st->calls++;
    return 0;
}

/*
 * n choices of one prompt: followers share the leader's KV blocks once its prompt is prefilled
 * (every kv sequence has the same table and each block three references, the pool spent once)
 * and each continues as it would alone: the greedy follower as the greedy solo run, the
 * sampled one as a solo run with its seed. For the short prompt and the longest (which crosses
 * the 512-token sliding window of Gemma 3's local layers).
 */
static void test_followers_share_the_prompt(void **state)
{
    (void)state;
    if (!model) fail_msg("the model did not open (see above): run scripts/setup");
    int longest = 0;
    for (int i = 1; i < NP; i++)
        if (prompt_len(i) > prompt_len(longest)) longest = i;
    const int prompts[2] = {0, longest};
    for (int pi = 0; pi < 2; pi++) {
        const int i = prompts[pi];
        cairn_gen_params greedy = cairn_gen_default_params();
        greedy.max_tokens = NGEN;
        cairn_gen_params sampled = greedy;
        sampled.sample = cairn_sample_default_params();
        sampled.sample.seed = 11;
        int32_t want_g[NGEN], want_s[NGEN];
        solo(i, &greedy, want_g);
        solo(i, &sampled, want_s);

        cairn_engine *e = open_engine(256);
        const cairn_kv *kv = cairn_engine_kv(e);
        int free0[CAIRN_KV_MAX_GROUPS];
        for (int g = 0; g < cairn_kv_n_groups(kv); g++) free0[g] = cairn_kv_free_blocks(kv, g);
        cairn_error err;
        lp_state st = {.e = e};
        cairn_gen_params lead = greedy;
        lead.logprobs = true;
        lead.top_logprobs = 5;
        lead.on_token = check_logprobs;
        lead.user = &st;
        int l = add(e, i, &lead), f1, f2;
        st.id = l;
        assert_int_equal(cairn_engine_add_follower(e, l, &greedy, &f1, &err), 0);
        assert_int_equal(cairn_engine_add_follower(e, l, &sampled, &f2, &err), 0);
        assert_int_equal(cairn_engine_add_follower(e, f1, &greedy, &f2, &err), CAIRN_ESTATE);
        cairn_seq_info in;
        cairn_engine_seq_info(e, f1, &in);
        assert_int_equal(in.following, l);
        cairn_step_item it = {f1, 8};
        assert_int_equal(cairn_engine_step(e, &it, 1, &err), CAIRN_EINVAL); /* it waits */
        do { /* the leader's prompt alone, in chunks */
            it = (cairn_step_item){l, 200};
            assert_int_equal(cairn_engine_step(e, &it, 1, &err), 0);
            cairn_engine_seq_info(e, l, &in);
        } while (in.prefilling);
        for (int f = 0; f < 2; f++) {
            cairn_engine_seq_info(e, f ? f2 : f1, &in);
            assert_int_equal(in.following, -1);
            assert_false(in.prefilling);
            assert_int_equal(in.n_generated, 1); /* its first token, from the leader's row */
        }
        /* Three kv sequences with one table: every live block referenced three times. */
        int seqs[8], n_seqs = 0;
        for (int k = 0; k < 8; k++)
            if (cairn_kv_seq_len(kv, k) >= 0) seqs[n_seqs++] = k;
        assert_int_equal(n_seqs, 3);
        for (int g = 0; g < cairn_kv_n_groups(kv); g++) {
            const int32_t *t0, *t;
            int nb = cairn_kv_seq_table(kv, seqs[0], g, &t0), live = 0;
            for (int k = 1; k < 3; k++) {
                assert_int_equal(cairn_kv_seq_table(kv, seqs[k], g, &t), nb);
                assert_memory_equal(t, t0, sizeof *t * (size_t)nb);
            }
            for (int b = 0; b < nb; b++)
                if (t0[b] >= 0) {
                    assert_int_equal(cairn_kv_block_refs(kv, g, t0[b]), 3);
                    live++;
                }
            assert_true(live > 0);
            assert_int_equal(free0[g] - cairn_kv_free_blocks(kv, g), live); /* spent once */
        }
        assert_int_equal(cairn_engine_run(e, &err), 0);
        const int ids[3] = {l, f1, f2};
        const int32_t *want[3] = {want_g, want_g, want_s};
        for (int k = 0; k < 3; k++) {
            cairn_engine_seq_info(e, ids[k], &in);
            assert_int_equal(in.n_generated, NGEN);
            for (int t = 0; t < NGEN; t++)
                if (in.generated[t] != want[k][t])
                    fail_msg("prompt %d choice %d token %d: %d, alone %d", i, k, t,
                             in.generated[t], want[k][t]);
        }
        assert_int_equal(st.calls, NGEN);
        cairn_engine_close(e);

        if (pi > 0)
            continue; /* the rest once: a long prompt under ASan costs seconds a prefill */
        /* A leader cancelled before its prompt: the follower prefills it itself. */
        e = open_engine(256);
        l = add(e, i, &greedy);
        assert_int_equal(cairn_engine_add_follower(e, l, &greedy, &f1, &err), 0);
        assert_int_equal(cairn_engine_cancel(e, l), 0);
        cairn_engine_seq_info(e, f1, &in);
        assert_int_equal(in.following, -1);
        assert_int_equal(cairn_engine_run(e, &err), 0);
        cairn_engine_seq_info(e, f1, &in);
        assert_int_equal(in.n_generated, NGEN);
        assert_memory_equal(in.generated, want_g, sizeof want_g);
        /* A leader past its prompt takes no followers. */
        assert_int_equal(cairn_engine_add_follower(e, f1, &greedy, &f2, &err), CAIRN_ESTATE);
        cairn_engine_close(e);
    }
}

static void test_errors(void **state)
{
    if (!model) fail_msg("the model did not open (see above): run scripts/setup");
    cairn_error err;
    cairn_engine_params p = cairn_engine_default_params();
    p.n_threads = 1;
    p.n_ctx = 64;
    p.max_seqs = 2;
    cairn_engine *e;
    p.max_batch_tokens = 0;
    assert_int_equal(cairn_engine_open(&e, model, &p, &err), CAIRN_EINVAL);
    p.max_batch_tokens = 32;
    p.n_ctx = 1 << 30;
    assert_int_equal(cairn_engine_open(&e, model, &p, &err), CAIRN_EINVAL);
    p.n_ctx = 64;
    assert_int_equal(cairn_engine_open(&e, model, &p, &err), 0);
    cairn_gen_params gp = cairn_gen_default_params();
    int32_t toks[100];
    for (int i = 0; i < 100; i++)
        toks[i] = 100 + i;
    int id;
    assert_int_equal(cairn_engine_add(e, toks, 64, &gp, &id, &err), CAIRN_ELIMIT);
    assert_non_null(strstr(err.msg, "context"));
    assert_int_equal(cairn_engine_add(e, toks, 0, &gp, &id, &err), CAIRN_EINVAL);
    toks[3] = 1 << 30;
    assert_int_equal(cairn_engine_add(e, toks, 10, &gp, &id, &err), CAIRN_EINVAL);
    toks[3] = 5;
    gp.sample.top_p = 1.5f;
    gp.sample.temperature = 0.7f;
    assert_int_equal(cairn_engine_add(e, toks, 10, &gp, &id, &err), CAIRN_EINVAL);
    gp = cairn_gen_default_params();
    gp.max_tokens = 0;
    assert_int_equal(cairn_engine_add(e, toks, 10, &gp, &id, &err), CAIRN_EINVAL);
    /* Generation stops at the context end with FINISH_CONTEXT. */
    gp.max_tokens = 1000;
    assert_int_equal(cairn_engine_add(e, toks, 60, &gp, &id, &err), 0);
    int id2;
    assert_int_equal(cairn_engine_add(e, toks, 5, &gp, &id2, &err), 0);
    assert_int_equal(cairn_engine_add(e, toks, 5, &gp, &id2, &err), CAIRN_EBUSY);
    cairn_engine_cancel(e, id2);
    assert_int_equal(cairn_engine_run(e, &err), 0);
    cairn_seq_info in;
    cairn_engine_seq_info(e, id, &in);
    assert_int_equal(in.finish, CAIRN_FINISH_CONTEXT);
    assert_int_equal(in.n_prompt + in.n_generated, 65); /* positions 0..63 fed, +1 sampled */
    cairn_engine_close(e);
}

/* Without kv_blocks the pool of full-attention layers holds max_seqs full contexts (and the 2
 * blocks copy-on-write may need), not two contexts whatever max_seqs says: a worker of
 * workers.max_seqs sequences can run them all to their context's end. */
static void test_kv_pool_follows_max_seqs(void **state)
{
    (void)state;
    if (!model) fail_msg("the model did not open (see above): run scripts/setup");
    const int max_seqs[] = {1, 3, 8, 20};
    for (size_t i = 0; i < sizeof max_seqs / sizeof max_seqs[0]; i++) {
        cairn_engine_params p = cairn_engine_default_params();
        p.n_threads = 1;
        p.n_ctx = 100;
        p.max_seqs = max_seqs[i];
        cairn_engine *e;
        cairn_error err;
        if (cairn_engine_open(&e, model, &p, &err)) fail_msg("engine: %s", err.msg);
        const cairn_kv *kv = cairn_engine_kv(e);
        int full = -1;
        for (int g = 0; g < cairn_kv_n_groups(kv); g++)
            if (cairn_kv_group_window(kv, g) == 0) full = g;
        assert_true(full >= 0);
        const int ctx_blocks = (p.n_ctx + p.block_tokens - 1) / p.block_tokens;
        assert_int_equal(cairn_kv_free_blocks(kv, full), max_seqs[i] * ctx_blocks + 2);
        cairn_engine_close(e);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_pool_follows_max_seqs),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_resumed_sequence_draws_on),
        cmocka_unit_test(test_stops_and_callbacks),
        cmocka_unit_test(test_batched_equals_unbatched),
        cmocka_unit_test(test_followers_share_the_prompt),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
