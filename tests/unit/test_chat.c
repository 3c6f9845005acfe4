/* tests/unit/test_chat.c — chat templates: rendering per family, detection, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

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

static void test_llama2_mistral_phi3(void **state)
{
    (void)state;
    render_ok(CAIRN_CHAT_LLAMA2, conv, 4, true,
              "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! </s>"
              "<s>[INST] What is 2+2? [/INST]");
    render_ok(CAIRN_CHAT_LLAMA2, conv + 1, 1, true, "[INST] Hi there [/INST]");
    render_ok(CAIRN_CHAT_MISTRAL, conv, 4, true,
              "[INST] Be brief.\n\n  Hi there\n [/INST]Hello!</s>[INST] What is 2+2? [/INST]");
    render_ok(CAIRN_CHAT_PHI3, conv, 4, true,
              "<|system|>\nBe brief.<|end|>\n<|user|>\n  Hi there\n<|end|>\n"
              "<|assistant|>\nHello!<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n");
    render_ok(CAIRN_CHAT_PHI3, conv + 3, 1, false, "<|user|>\nWhat is 2+2?<|end|>\n<|endoftext|>");
    char buf[256];
    size_t len;
    cairn_error err = {0};
    const cairn_chat_msg two_users[2] = {{"user", "a"}, {"user", "b"}};
    for (int f = CAIRN_CHAT_LLAMA2; f <= CAIRN_CHAT_MISTRAL; f++) {
        assert_int_equal(cairn_chat_render((cairn_chat_family)f, two_users, 2, true, buf,
                                           sizeof buf, &len, &err),
                         CAIRN_EINVAL);
        assert_non_null(strstr(err.msg, "alternate"));
        assert_int_equal(
            cairn_chat_render((cairn_chat_family)f, conv, 1, true, buf, sizeof buf, &len, &err),
            CAIRN_EINVAL);
    }
    const cairn_chat_msg tool[1] = {{"tool", "x"}};
    assert_int_equal(cairn_chat_render(CAIRN_CHAT_PHI3, tool, 1, true, buf, sizeof buf, &len, &err),
                     CAIRN_EINVAL);
}

/* Families by their markers in the Jinja source, and ChatML's constant system turn. */
static void test_template_parse(void **state)
{
    (void)state;
    static const struct {
        const char *tmpl;
        cairn_chat_family f;
        const char *system;
    } cases[] = {
        {"{{ '<start_of_turn>' + role + '\n' }}", CAIRN_CHAT_GEMMA, ""},
        {"{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}", CAIRN_CHAT_LLAMA3,
         ""},
        {"{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
         "'<|im_end|>\n'}}{% endfor %}",
         CAIRN_CHAT_CHATML, ""},
        /* a system turn from the messages is no default */
        {"{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>' }}",
         CAIRN_CHAT_CHATML, ""},
        /* Qwen2.5's form: an escaped newline in the Jinja string */
        {"{%- else %}{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}"
         "{{ '<|im_start|>' }}",
         CAIRN_CHAT_CHATML, "You are Qwen."},
        {"{% if m['role'] == 'user' %}{{'<|user|>\n' + m['content'] + '<|end|>\n'}}{% elif "
         "m['role'] == 'assistant' %}{{'<|assistant|>\n'}}{% endif %}",
         CAIRN_CHAT_PHI3, ""},
        {"{{ bos_token + '[INST] ' + '<<SYS>>\\n' + content.strip() + ' [/INST]' }}",
         CAIRN_CHAT_LLAMA2, ""},
        {"{{ '[INST] ' + message['content'] + ' [/INST]' }}", CAIRN_CHAT_MISTRAL, ""},
    };
    cairn_error err = {0};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        cairn_chat_template t;
        if (cairn_chat_template_parse(cases[k].tmpl, strlen(cases[k].tmpl), &t, &err) != 0)
            fail_msg("case %zu: %s", k, err.msg);
        assert_int_equal(t.family, cases[k].f);
        assert_string_equal(t.default_system, cases[k].system);
    }
    cairn_chat_template t;
    const char *vicuna = "{% for m in messages %}USER: {{ m.content }} ASSISTANT:{% endfor %}";
    assert_int_equal(cairn_chat_template_parse(vicuna, strlen(vicuna), &t, &err),
                     CAIRN_EUNSUPPORTED);
    /* the length bounds the search: a marker just past it is not seen */
    const char *cut = "{{ x }}<|im_start|>";
    assert_int_equal(cairn_chat_template_parse(cut, 7, &t, &err), CAIRN_EUNSUPPORTED);
    /* a default system text longer than the template struct holds */
    char big[2 * CAIRN_CHAT_SYSTEM_MAX + 64];
    int w = snprintf(big, sizeof big, "<|im_start|>system\n");
    memset(big + w, 'x', CAIRN_CHAT_SYSTEM_MAX + 5);
    strcpy(big + w + CAIRN_CHAT_SYSTEM_MAX + 5, "<|im_end|>");
    assert_int_equal(cairn_chat_template_parse(big, strlen(big), &t, &err), CAIRN_EUNSUPPORTED);
    /* the default system turn opens a conversation that has none, and only then */
    cairn_chat_template q = {CAIRN_CHAT_CHATML, "Sys."};
    char buf[256];
    size_t len;
    assert_int_equal(
        cairn_chat_render_template(&q, conv + 3, 1, true, buf, sizeof buf, &len, &err), 0);
    assert_string_equal(buf, "<|im_start|>system\nSys.<|im_end|>\n<|im_start|>user\nWhat is "
                             "2+2?<|im_end|>\n<|im_start|>assistant\n");
    assert_int_equal(cairn_chat_render_template(&q, conv, 1, true, buf, sizeof buf, &len, &err),
                     0);
    assert_string_equal(buf,
                        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n");
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
    for (int f = CAIRN_CHAT_GEMMA; f <= CAIRN_CHAT_FAMILY_LAST; f++) {
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

static int detect_named(const char *arch, const char *tmpl, const char *name,
                        cairn_chat_template *out, cairn_error *err)
{
    cairn_gguf_writer *w = NULL;
    assert_int_equal(cairn_gguf_writer_new(&w, err), 0);
    if (arch) {
        assert_int_equal(cairn_gguf_writer_add_str(w, "general.architecture", arch, err), 0);
    }
    if (tmpl) {
        assert_int_equal(cairn_gguf_writer_add_str(w, "tokenizer.chat_template", tmpl, err), 0);
        assert_int_equal(cairn_gguf_writer_add_str(w, "general.name", "Vicuna 7B", err), 0);
    }
    void *mem = NULL;
    size_t len = 0;
    assert_int_equal(cairn_gguf_writer_write_memory(w, &mem, &len, err), 0);
    cairn_gguf *g = NULL;
    assert_int_equal(cairn_gguf_open_memory(&g, mem, len, err), 0);
    int rc = cairn_chat_template_of(g, name, out, err);
    cairn_gguf_close(g);
    cairn_gguf_writer_free(w);
    free(mem);
    return rc;
}

static int detect(const char *arch, const char *tmpl, cairn_chat_family *fam, cairn_error *err)
{
    cairn_chat_template t;
    int rc = detect_named(arch, tmpl, NULL, &t, err);
    *fam = t.family;
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
    /* An unknown template is refused, naming the template, unless the config names a family. */
    const char *vicuna = "{% for m in messages %}USER: {{ m.content }} ASSISTANT:{% endfor %}";
    cairn_chat_template t;
    assert_int_equal(detect_named("llama", vicuna, NULL, &t, &err), CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "USER: {{ m.content }}"));
    assert_non_null(strstr(err.msg, "Vicuna 7B"));
    assert_non_null(strstr(err.msg, "model.chat_template"));
    assert_int_equal(detect_named("llama", vicuna, "mistral", &t, &err), 0);
    assert_int_equal(t.family, CAIRN_CHAT_MISTRAL);
    assert_int_equal(detect_named("llama", vicuna, "vicuna", &t, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "vicuna"));
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

/*
 * SmolLM2-135M-Instruct's own template, rendered by jinja2 (scripts/chat-reference, committed
 * under tests/data/chat): recognised from the GGUF as ChatML with its default system turn, our
 * rendering of every conversation equals Jinja's, and it tokenizes to the turn markers.
 */
static void test_smollm2_template_vs_jinja(void **state)
{
    (void)state;
    const char *dir = getenv("CAIRN_TEST_MODELS"), *data = getenv("CAIRN_TEST_DATA");
    char path[512], ref[512];
    snprintf(path, sizeof path, "%s/smollm2-135m-instruct-q4_1.gguf", dir ? dir : "data/models");
    snprintf(ref, sizeof ref, "%s/chat/smollm2.json", data ? data : "tests/data");
    cairn_gguf *g = NULL;
    cairn_error err = {0};
    if (cairn_gguf_open(&g, path, &err) != 0)
        fail_msg("%s (scripts/setup installs the model)", err.msg);
    cairn_chat_template t;
    assert_int_equal(cairn_chat_template_of(g, NULL, &t, &err), 0);
    assert_int_equal(t.family, CAIRN_CHAT_CHATML);
    assert_true(t.default_system[0] != '\0');
    json_error_t je;
    json_t *root = json_load_file(ref, 0, &je);
    if (!root)
        fail_msg("%s: %s (run scripts/chat-reference)", ref, je.text);
    json_t *cases = json_object_get(root, "cases");
    assert_true(json_array_size(cases) >= 8);
    for (size_t k = 0; k < json_array_size(cases); k++) {
        json_t *c = json_array_get(cases, k), *jm = json_object_get(c, "messages");
        cairn_chat_msg m[8];
        size_t n = json_array_size(jm);
        assert_true(n <= 8);
        for (size_t i = 0; i < n; i++) {
            m[i].role = json_string_value(json_object_get(json_array_get(jm, i), "role"));
            m[i].content = json_string_value(json_object_get(json_array_get(jm, i), "content"));
        }
        bool gen = json_is_true(json_object_get(c, "add_generation_prompt"));
        char buf[2048];
        size_t len;
        if (cairn_chat_render_template(&t, m, n, gen, buf, sizeof buf, &len, &err) != 0)
            fail_msg("case %zu: %s", k, err.msg);
        const char *want = json_string_value(json_object_get(c, "text"));
        if (!want || strcmp(buf, want) != 0)
            fail_msg("case %zu: we render\n%s\njinja2 renders\n%s", k, buf, want ? want : "-");
    }
    /* the turn markers are single control tokens */
    cairn_tok *tk = NULL;
    assert_int_equal(cairn_tok_open(&tk, g, &err), 0);
    char buf[512];
    size_t len;
    assert_int_equal(cairn_chat_render_template(&t, conv + 1, 1, true, buf, sizeof buf, &len, &err),
                     0);
    int32_t ids[256];
    int nt = cairn_tok_encode(tk, buf, len, ids, 256,
                              CAIRN_TOK_ADD_SPECIAL | CAIRN_TOK_PARSE_SPECIAL, &err);
    int32_t start = cairn_tok_find(tk, "<|im_start|>", 12);
    int32_t end = cairn_tok_find(tk, "<|im_end|>", 10);
    int n_start = 0, n_end = 0;
    for (int i = 0; i < nt; i++) {
        n_start += ids[i] == start;
        n_end += ids[i] == end;
    }
    assert_int_equal(ids[0], start); /* no BOS: add_bos_token is false */
    assert_int_equal(n_start, 3);
    assert_int_equal(n_end, 2);
    assert_true(cairn_tok_is_eog(tk, end));
    cairn_tok_close(tk);
    json_decref(root);
    cairn_gguf_close(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemma),  cmocka_unit_test(test_llama3),
        cmocka_unit_test(test_chatml), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_detect), cmocka_unit_test(test_gemma_tokens),
        cmocka_unit_test(test_llama2_mistral_phi3), cmocka_unit_test(test_template_parse),
        cmocka_unit_test(test_smollm2_template_vs_jinja),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
