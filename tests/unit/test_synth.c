/*
 * tests/unit/test_synth.c — models written by generation/synth (cairn gguf-synth) open and run
 * on the CPU engine for every architecture and every weight type the CPU multiplies; a type it
 * cannot multiply fails at engine open naming the tensor; the same seed writes the same file.
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
#include "generation/kernels/cpu.h"
#include "generation/synth.h"
#include "generation/tokenizer.h"

static void synth(char *path, size_t len, const char *shape, const char *type)
{
    snprintf(path, len, "/tmp/cairn_test_synth_%s_%s_%d.gguf", shape, type, (int)getpid());
    cairn_error err;
    if (cairn_synth_write(path, shape, type, 0, 1, &err))
        fail_msg("synth %s %s: %s", shape, type, err.msg);
}

typedef struct {
    int32_t toks[3][16];
    int n[3];
} gen_out;

static int on_token(void *user, int seq_id, int32_t token, bool last)
{
    (void)last;
    gen_out *o = user;
    int k = seq_id % 3;
    o->toks[k][o->n[k]++] = token;
    return 0;
}

/* Greedy 12 tokens for three prompts, together (batched) or one after another. */
static void generate(cairn_model *m, bool batched, gen_out *o)
{
    cairn_engine_params p = cairn_engine_default_params();
    p.n_threads = 2;
    p.n_ctx = 128;
    p.max_seqs = 3;
    cairn_engine *e;
    cairn_error err;
    if (cairn_engine_open(&e, m, &p, &err))
        fail_msg("engine: %s", err.msg);
    memset(o, 0, sizeof *o);
    const int32_t prompts[3][5] = {{1, 2, 3, 4, 5}, {9, 8, 7, 6, 5}, {100, 200, 300, 400, 500}};
    for (int i = 0; i < 3; i++) {
        cairn_gen_params gp = cairn_gen_default_params();
        gp.max_tokens = 12;
        gp.on_token = on_token;
        gp.user = o;
        int id;
        assert_int_equal(cairn_engine_add(e, prompts[i], 5 - i, &gp, &id, &err), 0);
        assert_int_equal(id, i);
        if (!batched)
            assert_int_equal(cairn_engine_run(e, &err), 0);
    }
    assert_int_equal(cairn_engine_run(e, &err), 0);
    cairn_engine_close(e);
}

static void test_every_arch_and_type_runs(void **state)
{
    (void)state;
    const char *shapes[] = {"tiny-llama", "tiny-qwen2", "tiny-gemma3"};
    const char *types[] = {"q4_k_m", "q8_0", "bf16", "f16", "f32", "q4_0", "q5_0", "q6_k"};
    for (size_t s = 0; s < 3; s++)
        for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
            char path[256];
            synth(path, sizeof path, shapes[s], types[t]);
            cairn_model *m;
            cairn_error err;
            if (cairn_model_open(&m, path, &err))
                fail_msg("%s %s: %s", shapes[s], types[t], err.msg);
            gen_out a, b;
            generate(m, true, &a);
            generate(m, false, &b);
            for (int i = 0; i < 3; i++) {
                assert_int_equal(a.n[i], 12);
                /* Batched equals unbatched on the CPU, bit for bit, whatever the weights. */
                assert_memory_equal(a.toks[i], b.toks[i], sizeof a.toks[i]);
                for (int j = 0; j < 12; j++)
                    assert_true(a.toks[i][j] >= 0 && a.toks[i][j] < 1024);
            }
            cairn_model_close(m);
            unlink(path);
        }
}

/* A weight type without a CPU product (Q5_1: no model cairn ships uses it; every type the writer
 * makes has one) is refused with the tensor and the type named; a model opens on the CPU, and a
 * GPU that does not exist is refused at open. */
static void test_type_without_kernel_fails_at_open(void **state)
{
    (void)state;
    static const uint8_t block[24];
    cairn_gguf_tensor t = {.name = "blk.0.ffn_up.weight", .type = CAIRN_GGUF_Q5_1, .n_dims = 2,
                           .dims = {32, 1, 1, 1}, .n_elements = 32, .nbytes = 24,
                           .data = block};
    cairn_cpu_mat cm;
    cairn_error err;
    assert_int_equal(cairn_cpu_mat_from_gguf(&cm, &t, &err), CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "blk.0.ffn_up.weight"));
    assert_non_null(strstr(err.msg, "Q5_1"));
    char path[256];
    synth(path, sizeof path, "tiny-llama", "q4_1");
    cairn_model *m;
    assert_int_equal(cairn_model_open(&m, path, &err), 0);
    cairn_engine_params p = cairn_engine_default_params();
    p.n_threads = 1;
    p.n_ctx = 64;
    cairn_engine *e = NULL;
    assert_int_equal(cairn_engine_open(&e, m, &p, &err), 0); /* Q4_1: a CPU product now */
    cairn_engine_close(e);
    e = NULL;
    p.device = 99;
    assert_int_not_equal(cairn_engine_open(&e, m, &p, &err), 0);
    assert_null(e);
    cairn_model_close(m);
    unlink(path);
}

/* A synthetic model carries a byte-level tokenizer (one token a byte, BOS first), so that the
 * workers and `cairn bench colocate` can run text on it. */
static void test_tokenizer_one_token_a_byte(void **state)
{
    (void)state;
    char path[256];
    synth(path, sizeof path, "tiny-qwen2", "q8_0");
    cairn_model *m;
    cairn_error err;
    assert_int_equal(cairn_model_open(&m, path, &err), 0);
    cairn_tok *t = NULL;
    if (cairn_tok_open(&t, cairn_model_gguf(m), &err)) fail_msg("tokenizer: %s", err.msg);
    const char text[] = "a river runs through \xc3\xa9";
    int32_t ids[64];
    int n = cairn_tok_encode(t, text, strlen(text), ids, 64, CAIRN_TOK_ADD_SPECIAL, &err);
    assert_int_equal(n, (int)strlen(text) + 1);
    assert_int_equal(ids[0], cairn_tok_vocab_size(t) - 2); /* BOS */
    for (int i = 2; i < n; i++) /* each byte its own token, below the fillers */
        assert_true(ids[i] >= 0 && ids[i] < 256 && ids[i] != ids[0]);
    assert_int_equal(ids[3], ids[7]); /* the two r of "river" */
    cairn_tok_close(t);
    cairn_model_close(m);
    unlink(path);
}

static void test_same_seed_same_file(void **state)
{
    (void)state;
    char a[256], b[300];
    synth(a, sizeof a, "tiny-qwen2", "q4_k_m");
    snprintf(b, sizeof b, "%s.2", a);
    cairn_error err;
    assert_int_equal(cairn_synth_write(b, "tiny-qwen2", "q4_k_m", 0, 1, &err), 0);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cmp -s %s %s", a, b);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(cairn_synth_write(b, "tiny-qwen2", "q4_k_m", 0, 2, &err), 0);
    assert_int_not_equal(system(cmd), 0);
    assert_int_equal(cairn_synth_write(b, "no-such-shape", "q8_0", 0, 1, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "no-such-shape"));
    assert_int_equal(cairn_synth_write(b, "tiny-llama", "q9_9", 0, 1, &err), CAIRN_EINVAL);
    unlink(a);
    unlink(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_arch_and_type_runs),
        cmocka_unit_test(test_type_without_kernel_fails_at_open),
        cmocka_unit_test(test_tokenizer_one_token_a_byte),
        cmocka_unit_test(test_same_seed_same_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
