/*
 * tests/unit/test_engine_yield.c — layer-level preemption on the real gemma-3-270m: a pass
 * that yields at a layer boundary, lets another sequence run, and resumes gives exactly the
 * tokens of an uninterrupted run; held sequences refuse steps; a cancel during the suspension
 * abandons the pass and the other sequences of it still generate exactly what they would have.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "generation/engine.h"
#include "generation/tokenizer.h"

static cairn_model *model;
static cairn_tok *tok;

enum { NGEN = 8, MAXP = 200 };

static int setup(void **state)
{
    (void)state;
    char path[1024];
    const char *models = getenv("CAIRN_TEST_MODELS");
    snprintf(path, sizeof path, "%s/gemma-3-270m-q4_k_m.gguf", models ? models : "data/models");
    cairn_error err = {0};
    if (cairn_model_open(&model, path, &err) || cairn_tok_open(&tok, cairn_model_gguf(model), &err))
        fail_msg("%s (scripts/setup installs the model)", err.msg);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cairn_tok_close(tok);
    cairn_model_close(model);
    return 0;
}

static cairn_engine *open_engine(void)
{
    cairn_engine_params p = cairn_engine_default_params();
    p.n_threads = 2;
    p.n_ctx = 512;
    p.max_seqs = 4;
    cairn_engine *e;
    cairn_error err = {0};
    if (cairn_engine_open(&e, model, &p, &err)) fail_msg("engine: %s", err.msg);
    return e;
}

static const char *const PROMPTS[3] = {
    "A long document about rivers: the Alder runs twenty kilometres through a valley of old "
    "stone, where farmers grow barley and keep sheep near the mills that still grind flour for "
    "three towns. In spring the water rises and the villages report the levels every morning.",
    "The capital of France is",
    "List three colours:",
};

static int add(cairn_engine *e, int which)
{
    int32_t t[MAXP];
    int n = cairn_tok_encode(tok, PROMPTS[which], strlen(PROMPTS[which]), t, MAXP,
                             CAIRN_TOK_ADD_SPECIAL, NULL);
    assert_true(n > 0);
    cairn_gen_params gp = cairn_gen_default_params();
    gp.max_tokens = NGEN;
    int id;
    cairn_error err = {0};
    assert_int_equal(cairn_engine_add(e, t, n, &gp, &id, &err), 0);
    return id;
}

static void tokens_of(cairn_engine *e, int id, int32_t out[NGEN])
{
    cairn_seq_info info;
    assert_int_equal(cairn_engine_seq_info(e, id, &info), 0);
    assert_int_equal(info.n_generated, NGEN);
    memcpy(out, info.generated, sizeof(int32_t) * NGEN);
}

/* Reference: sequences 0 and 1 prefilled together in one pass, then decoded to the end. */
static void reference(int32_t want[2][NGEN])
{
    cairn_engine *e = open_engine();
    int a = add(e, 0), b = add(e, 1);
    cairn_error err = {0};
    assert_int_equal(cairn_engine_run(e, &err), 0);
    tokens_of(e, a, want[0]);
    tokens_of(e, b, want[1]);
    cairn_engine_close(e);
}

typedef struct {
    int calls, yield_at; /* yield on call number yield_at (1-based), once */
} yielder;

static int should_yield(void *ctx)
{
    yielder *y = ctx;
    return ++y->calls == y->yield_at;
}

static void test_yield_and_resume_keep_the_tokens(void **state)
{
    (void)state;
    int32_t want[2][NGEN], got[NGEN];
    reference(want);

    cairn_engine *e = open_engine();
    int a = add(e, 0), b = add(e, 1), c = add(e, 2);
    cairn_seq_info ia, ib;
    cairn_engine_seq_info(e, a, &ia);
    cairn_engine_seq_info(e, b, &ib);
    cairn_step_item items[2] = {{a, ia.n_prompt}, {b, ib.n_prompt}};
    cairn_error err = {0};
    yielder y = {.yield_at = 5};
    assert_int_equal(cairn_engine_step_yield(e, items, 2, should_yield, &y, &err),
                     CAIRN_ENGINE_SUSPENDED);
    assert_true(cairn_engine_suspended(e));
    cairn_engine_seq_info(e, a, &ia);
    assert_true(ia.held && ia.prefilling && ia.n_generated == 0);
    /* Held sequences refuse steps; another sequence runs meanwhile. */
    cairn_step_item held = {a, 1};
    assert_int_equal(cairn_engine_step(e, &held, 1, &err), CAIRN_ESTATE);
    cairn_seq_info ic;
    cairn_engine_seq_info(e, c, &ic);
    cairn_step_item other = {c, ic.n_prompt};
    assert_int_equal(cairn_engine_step(e, &other, 1, &err), 0);
    /* Resume: yield once more on the way, then complete. */
    yielder y2 = {.yield_at = 3};
    assert_int_equal(cairn_engine_resume(e, should_yield, &y2, &err), CAIRN_ENGINE_SUSPENDED);
    assert_int_equal(cairn_engine_resume(e, NULL, NULL, &err), 0);
    assert_false(cairn_engine_suspended(e));
    assert_int_equal(cairn_engine_resume(e, NULL, NULL, &err), CAIRN_ESTATE);
    cairn_engine_seq_info(e, a, &ia);
    assert_true(!ia.held && !ia.prefilling && ia.n_generated == 1);
    assert_int_equal(cairn_engine_run(e, &err), 0);
    tokens_of(e, a, got);
    assert_memory_equal(got, want[0], sizeof got);
    tokens_of(e, b, got);
    assert_memory_equal(got, want[1], sizeof got);
    cairn_engine_close(e);
}

static void test_cancel_abandons_the_suspended_pass(void **state)
{
    (void)state;
    int32_t want[2][NGEN], got[NGEN];
    reference(want);

    cairn_engine *e = open_engine();
    int a = add(e, 0), b = add(e, 1);
    cairn_seq_info ia, ib;
    cairn_engine_seq_info(e, a, &ia);
    cairn_engine_seq_info(e, b, &ib);
    cairn_step_item items[2] = {{a, ia.n_prompt}, {b, ib.n_prompt}};
    cairn_error err = {0};
    yielder y = {.yield_at = 9};
    assert_int_equal(cairn_engine_step_yield(e, items, 2, should_yield, &y, &err),
                     CAIRN_ENGINE_SUSPENDED);
    /* Cancelling b abandons the pass: a is as before it (nothing prefilled), not held. */
    assert_int_equal(cairn_engine_cancel(e, b), 0);
    assert_false(cairn_engine_suspended(e));
    cairn_engine_seq_info(e, a, &ia);
    assert_true(!ia.held && ia.n_prefilled == 0);
    assert_int_equal(cairn_engine_run(e, &err), 0);
    tokens_of(e, a, got);
    assert_memory_equal(got, want[0], sizeof got);
    cairn_engine_close(e); /* also frees what a suspended pass would hold */

    /* Closing an engine with a suspended pass frees everything (ASan checks). */
    e = open_engine();
    a = add(e, 0);
    cairn_engine_seq_info(e, a, &ia);
    cairn_step_item one = {a, ia.n_prompt};
    y = (yielder){.yield_at = 2};
    assert_int_equal(cairn_engine_step_yield(e, &one, 1, should_yield, &y, &err),
                     CAIRN_ENGINE_SUSPENDED);
    cairn_engine_close(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_yield_and_resume_keep_the_tokens),
        cmocka_unit_test(test_cancel_abandons_the_suspended_pass),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
