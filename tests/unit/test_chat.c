/* tests/unit/test_chat.c — chat templates: rendering per family, detection, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/error.h"
#include "generation/chat.h"
#include "generation/tokenizer.h"
#include "proto/gguf.h"

static const cairn_chat_msg conv[4] = {
    {"system", "Be brief."},
    {"user", "  Hi there\n"},
    {"assistant", "Hello!"},
    {"user", "What is 2+2?"},
};

static void render_ok(cairn_chat_family f, const cairn_chat_msg *m, size_t n, bool gen,
                      const char *expect)
{
    char buf[1024];
    size_t len = 0;
    cairn_error err = {0};
    int rc = cairn_chat_render(f, m, n, gen, buf, sizeof buf, &len, &err);
    if (rc) {
        fail_msg("render: %s", err.msg);
    }
    assert_string_equal(buf, expect);
    assert_int_equal(len, strlen(expect));
}

static void test_gemma(void **state)
{
    (void)state;
    render_ok(CAIRN_CHAT_GEMMA, conv, 4, true,
              "<start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n"
              "<start_of_turn>model\nHello!<end_of_turn>\n"
              "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
              "<start_of_turn>model\n");
    render_ok(CAIRN_CHAT_GEMMA, conv + 1, 1, false, "<start_of_turn>user\nHi there<end_of_turn>\n");
    /* "model" is Gemma's own name for the assistant. */
    const cairn_chat_msg m[2] = {{"user", "a"}, {"model", "b"}};
    render_ok(CAIRN_CHAT_GEMMA, m, 2, false,
              "<start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n");
    /* A lone system message is kept, as a user turn. */
    render_ok(CAIRN_CHAT_GEMMA, conv, 1, true,
              "<start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>model\n");
}

static void test_llama3(void **state)
{
    (void)state;
    render_ok(CAIRN_CHAT_LLAMA3, conv, 4, true,
              "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void test_chatml(void **state)
{
    (void)state;
    render_ok(CAIRN_CHAT_CHATML, conv, 4, true,
              "<|im_start|>system\nBe brief.<|im_end|>\n"
              "<|im_start|>user\n  Hi there\n<|im_end|>\n"
              "<|im_start|>assistant\nHello!<|im_end|>\n"
              "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
              "<|im_start|>assistant\n");
    render_ok(CAIRN_CHAT_CHATML, NULL, 0, true, "<|im_start|>assistant\n");
}

static void test_errors(void **state)
{
    (void)state;
    char buf[16];
    size_t len = 0;
    cairn_error err = {0};
    /* Too small: the size needed, for a retry. */
    char big[1024];
    size_t full = 0;
    assert_int_equal(
        cairn_chat_render(CAIRN_CHAT_LLAMA3, conv, 4, true, big, sizeof big, &full, &err), 0);
    assert_int_equal(
        cairn_chat_render(CAIRN_CHAT_LLAMA3, conv, 4, true, buf, sizeof buf, &len, &err),
        CAIRN_ERANGE);
    assert_int_equal(len, full);
    assert_int_equal(cairn_chat_render(CAIRN_CHAT_LLAMA3, conv, 4, true, big, full, &len, &err),
                     CAIRN_ERANGE); /* no room for the NUL */
    assert_int_equal(cairn_chat_render(CAIRN_CHAT_LLAMA3, conv, 4, true, big, full + 1, &len, &err),
                     0);

    const cairn_chat_msg bad_role[1] = {{"wizard", "x"}};
    for (int f = CAIRN_CHAT_GEMMA; f <= CAIRN_CHAT_CHATML; f++) {
        assert_int_equal(
            cairn_chat_render((cairn_chat_family)f, bad_role, 1, true, big, sizeof big, &len, &err),
            CAIRN_EINVAL);
        assert_non_null(strstr(err.msg, "wizard"));
    }
    const cairn_chat_msg late_system[2] = {{"user", "a"}, {"system", "b"}};
    assert_int_equal(
        cairn_chat_render(CAIRN_CHAT_GEMMA, late_system, 2, true, big, sizeof big, &len, &err),
        CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "messages[1]"));
    assert_int_equal(
        cairn_chat_render(CAIRN_CHAT_CHATML, late_system, 2, true, big, sizeof big, &len, &err), 0);
    const cairn_chat_msg two_users[2] = {{"user", "a"}, {"user", "b"}};
    assert_int_equal(
        cairn_chat_render(CAIRN_CHAT_GEMMA, two_users, 2, true, big, sizeof big, &len, &err),
        CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "alternate"));
    const cairn_chat_msg null_content[1] = {{"user", NULL}};
    assert_int_equal(
        cairn_chat_render(CAIRN_CHAT_CHATML, null_content, 1, true, big, sizeof big, &len, &err),
        CAIRN_EINVAL);
    assert_int_equal(
        cairn_chat_render(CAIRN_CHAT_CHATML, NULL, 0, false, big, sizeof big, &len, &err),
        CAIRN_EINVAL);
    cairn_chat_family fam;
    assert_int_equal(cairn_chat_family_from_name("qwen2", &fam, &err), 0);
    assert_int_equal(fam, CAIRN_CHAT_CHATML);
    assert_int_equal(cairn_chat_family_from_name("vicuna", &fam, &err), CAIRN_EINVAL);
}

static int detect(const char *arch, const char *tmpl, cairn_chat_family *fam, cairn_error *err)
{
    cairn_gguf_writer *w = NULL;
    assert_int_equal(cairn_gguf_writer_new(&w, err), 0);
    if (arch) {
        assert_int_equal(cairn_gguf_writer_add_str(w, "general.architecture", arch, err), 0);
    }
    if (tmpl) {
        assert_int_equal(cairn_gguf_writer_add_str(w, "tokenizer.chat_template", tmpl, err), 0);
    }
    void *mem = NULL;
    size_t len = 0;
    assert_int_equal(cairn_gguf_writer_write_memory(w, &mem, &len, err), 0);
    cairn_gguf *g = NULL;
    assert_int_equal(cairn_gguf_open_memory(&g, mem, len, err), 0);
    int rc = cairn_chat_detect(g, fam, err);
    cairn_gguf_close(g);
    cairn_gguf_writer_free(w);
    free(mem);
    return rc;
}

static void test_detect(void **state)
{
    (void)state;
    cairn_chat_family f = 0;
    cairn_error err = {0};
    assert_int_equal(detect("gemma3", NULL, &f, &err), 0);
    assert_int_equal(f, CAIRN_CHAT_GEMMA);
    assert_int_equal(detect("llama", NULL, &f, &err), 0);
    assert_int_equal(f, CAIRN_CHAT_LLAMA3);
    assert_int_equal(detect("qwen2", NULL, &f, &err), 0);
    assert_int_equal(f, CAIRN_CHAT_CHATML);
    /* The template in the file decides over the architecture. */
    assert_int_equal(detect("llama", "{% for m in messages %}<|im_start|>{{ m.role }}", &f, &err),
                     0);
    assert_int_equal(f, CAIRN_CHAT_CHATML);
    assert_int_equal(detect("mamba", NULL, &f, &err), CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "mamba"));
    assert_int_equal(detect(NULL, NULL, &f, &err), CAIRN_ENOTFOUND);
}

/* On the real Gemma model, a rendered conversation tokenizes to the turn markers. */
static void test_gemma_tokens(void **state)
{
    (void)state;
    const char *dir = getenv("CAIRN_TEST_MODELS");
    char path[512];
    snprintf(path, sizeof path, "%s/gemma-3-270m-q4_k_m.gguf", dir ? dir : "data/models");
    cairn_gguf *g = NULL;
    cairn_error err = {0};
    if (cairn_gguf_open(&g, path, &err) != 0) {
        fail_msg("%s (scripts/setup installs the model)", err.msg);
    }
    cairn_chat_family f;
    assert_int_equal(cairn_chat_detect(g, &f, &err), 0);
    assert_int_equal(f, CAIRN_CHAT_GEMMA);
    cairn_tok *t = NULL;
    assert_int_equal(cairn_tok_open(&t, g, &err), 0);
    char buf[512];
    size_t len;
    assert_int_equal(cairn_chat_render(f, conv + 1, 1, true, buf, sizeof buf, &len, &err), 0);
    int32_t ids[128];
    int n = cairn_tok_encode(t, buf, len, ids, 128, CAIRN_TOK_ADD_SPECIAL | CAIRN_TOK_PARSE_SPECIAL,
                             &err);
    assert_true(n > 6);
    int32_t sot = cairn_tok_find(t, "<start_of_turn>", 15), eot = cairn_tok_eot(t);
    assert_int_equal(ids[0], cairn_tok_bos(t));
    assert_int_equal(ids[1], sot);
    int n_sot = 0, n_eot = 0;
    for (int i = 0; i < n; i++) {
        n_sot += ids[i] == sot;
        n_eot += ids[i] == eot;
    }
    assert_int_equal(n_sot, 2);
    assert_int_equal(n_eot, 1);
    cairn_tok_close(t);
    cairn_gguf_close(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemma),  cmocka_unit_test(test_llama3),
        cmocka_unit_test(test_chatml), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_detect), cmocka_unit_test(test_gemma_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
