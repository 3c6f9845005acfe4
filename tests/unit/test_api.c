/* tests/unit/test_api.c — /v1 request parsing and API-key checks (services/api.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "services/api.h"

static int parse(cairn_api_kind kind, const char *body, cairn_api_req *r, cairn_error *err)
{
    cairn_api_limits lim = cairn_api_default_limits();
    return cairn_api_parse(kind, body, strlen(body), &lim, r, err);
}

/* Parses body expecting failure with code and a message containing want. */
static void expect_error(cairn_api_kind kind, const char *body, int code, const char *want)
{
    cairn_api_req r;
    cairn_error err = {0};
    int rc = parse(kind, body, &r, &err);
    if (rc != code || !strstr(err.msg, want))
        fail_msg("body %s: got rc %d '%s', want %d containing '%s'", body, rc, err.msg, code, want);
    assert_null(r.root); /* nothing left to free on error */
}

static void test_chat_valid(void **state)
{
    cairn_api_req r;
    cairn_error err = {0};
    int rc = parse(CAIRN_API_CHAT,
                   "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
                   "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hel\"},"
                   "{\"type\":\"text\",\"text\":\"lo\"}]}],\"max_tokens\":7,\"temperature\":0.5,"
                   "\"stream\":true,\"stop\":[\"a\",\"bc\"],\"seed\":3,\"user\":\"ignored\"}",
                   &r, &err);
    assert_int_equal(rc, 0);
    assert_int_equal(r.n_messages, 2);
    assert_string_equal(r.messages[0].role, "system");
    assert_string_equal(r.messages[1].content, "hello");
    assert_int_equal(r.max_tokens, 7);
    assert_true(r.stream);
    assert_int_equal(r.n_stop, 2);
    assert_string_equal(r.stop[1], "bc");
    assert_int_equal(r.seed, 3);
    assert_string_equal(r.model, "m");
    assert_false(r.rag.enabled);
    cairn_api_req_free(&r);
}

static void test_chat_defaults_and_rag(void **state)
{
    cairn_api_req r;
    cairn_error err = {0};
    cairn_api_limits lim = cairn_api_default_limits();
    const char *b = "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],"
                    "\"rag\":{\"k\":3,\"mode\":\"hyde\",\"nprobe\":8}}";
    assert_int_equal(cairn_api_parse(CAIRN_API_CHAT, b, strlen(b), &lim, &r, &err), 0);
    assert_int_equal(r.max_tokens, lim.max_tokens_cap); /* what the context leaves, capped */
    assert_int_equal(r.n, 1);
    assert_false(r.logprobs);
    assert_false(r.stream);
    assert_true(r.rag.enabled);
    assert_int_equal(r.rag.k, 3);
    assert_int_equal(r.rag.nprobe, 8);
    assert_int_equal(r.rag.mode, CAIRN_RAG_HYDE);
    cairn_api_req_free(&r);
}

static void test_chat_errors(void **state)
{
    expect_error(CAIRN_API_CHAT, "{\"messages\":[", CAIRN_EFORMAT, "invalid JSON");
    expect_error(CAIRN_API_CHAT, "[1,2]", CAIRN_EFORMAT, "expected a JSON object, got array");
    expect_error(CAIRN_API_CHAT, "{}", CAIRN_EFORMAT, "messages");
    expect_error(CAIRN_API_CHAT, "{\"messages\":[]}", CAIRN_ERANGE, "messages");
    expect_error(CAIRN_API_CHAT, "{\"messages\":\"hi\"}", CAIRN_EFORMAT, "messages");
    expect_error(CAIRN_API_CHAT, "{\"messages\":[{\"role\":\"pirate\",\"content\":\"x\"}]}",
                 CAIRN_EINVAL, "messages[0]: role: 'pirate'");
    expect_error(CAIRN_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}",
                 CAIRN_EFORMAT, "messages[0]: content");
    expect_error(CAIRN_API_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", CAIRN_EFORMAT,
                 "messages[0]: content");
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char b[512];
    snprintf(b, sizeof b, "{%s,\"max_tokens\":-1}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_ERANGE, "max_tokens: -1");
    snprintf(b, sizeof b, "{%s,\"max_tokens\":100000000000}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_ERANGE, "max_tokens");
    snprintf(b, sizeof b, "{%s,\"max_tokens\":\"5\"}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_EFORMAT, "max_tokens: expected an integer");
    snprintf(b, sizeof b, "{%s,\"temperature\":3}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_ERANGE, "temperature");
    snprintf(b, sizeof b, "{%s,\"top_p\":0}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_ERANGE, "top_p");
    snprintf(b, sizeof b, "{%s,\"stream\":\"yes\"}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_EFORMAT, "stream");
    snprintf(b, sizeof b, "{%s,\"n\":9}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_ERANGE, "n: 9 is above the maximum 8");
    snprintf(b, sizeof b, "{%s,\"n\":\"2\"}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_EFORMAT, "n: expected an integer");
    snprintf(b, sizeof b, "{%s,\"n\":0}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_ERANGE, "n:");
    snprintf(b, sizeof b, "{%s,\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_ERANGE, "stop");
    snprintf(b, sizeof b, "{%s,\"stop\":[\"\"]}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_ERANGE, "stop[0]");
    snprintf(b, sizeof b, "{%s,\"rag\":{\"mode\":\"magic\"}}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_EINVAL, "rag.mode: 'magic'");
    snprintf(b, sizeof b, "{%s,\"rag\":{\"kk\":1}}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_EFORMAT, "kk");
    snprintf(b, sizeof b, "{%s,\"rag\":{\"k\":0}}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_ERANGE, "rag.k");
}

/* Each field asking for what cairn does not do is refused by name; null or the harmless value
 * of it (logprobs false, response_format text, modalities ["text"], best_of 1) is accepted. */
static void test_unsupported_fields(void **state)
{
    (void)state;
    static const struct {
        const char *field, *value;
    } refused[] = {
        {"tools", "[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]"},
        {"tool_choice", "\"auto\""},
        {"functions", "[{\"name\":\"f\"}]"},
        {"function_call", "\"auto\""},
        {"parallel_tool_calls", "true"},
        {"audio", "{\"voice\":\"alloy\",\"format\":\"wav\"}"},
        {"prediction", "{\"type\":\"content\",\"content\":\"x\"}"},
        {"web_search_options", "{}"},
        {"response_format", "{\"type\":\"json_object\"}"},
        {"modalities", "[\"text\",\"audio\"]"},
        {"echo", "true"},
        {"best_of", "3"},
        {"suffix", "\"end\""},
    };
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char b[512], want[64];
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        snprintf(b, sizeof b, "{%s,\"%s\":%s}", m, refused[i].field, refused[i].value);
        snprintf(want, sizeof want, "%s:", refused[i].field);
        expect_error(CAIRN_API_CHAT, b, CAIRN_EUNSUPPORTED, want);
        snprintf(b, sizeof b, "{\"prompt\":\"x\",\"%s\":%s}", refused[i].field, refused[i].value);
        expect_error(CAIRN_API_COMPLETION, b, CAIRN_EUNSUPPORTED, want);
    }
    static const char *const harmless[] = {
        "\"logprobs\":false", "\"logprobs\":null", "\"tools\":null",
        "\"response_format\":{\"type\":\"text\"}", "\"modalities\":[\"text\"]", "\"best_of\":1",
        "\"user\":\"u\"", "\"store\":false", "\"metadata\":{\"a\":\"b\"}",
        "\"stream_options\":{\"include_usage\":true}", "\"service_tier\":\"auto\"",
    };
    for (size_t i = 0; i < sizeof harmless / sizeof harmless[0]; i++) {
        cairn_api_req r;
        cairn_error err = {0};
        snprintf(b, sizeof b, "{%s,%s}", m, harmless[i]);
        if (parse(CAIRN_API_CHAT, b, &r, &err) != 0) fail_msg("%s: %s", b, err.msg);
        cairn_api_req_free(&r);
    }
}

/* n, and logprobs in their two shapes: chat's boolean with top_logprobs 0..20, completions'
 * count 0..5; each wrong type or range is a 400 naming the field. */
static void test_n_and_logprobs(void **state)
{
    (void)state;
    cairn_api_req r;
    cairn_error err = {0};
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char b[256];
    snprintf(b, sizeof b, "{%s,\"n\":3,\"logprobs\":true,\"top_logprobs\":20}", m);
    assert_int_equal(parse(CAIRN_API_CHAT, b, &r, &err), 0);
    assert_int_equal(r.n, 3);
    assert_true(r.logprobs);
    assert_int_equal(r.top_logprobs, 20);
    cairn_api_req_free(&r);
    snprintf(b, sizeof b, "{%s,\"logprobs\":true}", m);
    assert_int_equal(parse(CAIRN_API_CHAT, b, &r, &err), 0);
    assert_true(r.logprobs);
    assert_int_equal(r.top_logprobs, 0);
    cairn_api_req_free(&r);
    snprintf(b, sizeof b, "{%s,\"logprobs\":false,\"top_logprobs\":null}", m);
    assert_int_equal(parse(CAIRN_API_CHAT, b, &r, &err), 0);
    assert_false(r.logprobs);
    cairn_api_req_free(&r);
    snprintf(b, sizeof b, "{%s,\"top_logprobs\":2}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_EINVAL, "top_logprobs: needs logprobs: true");
    snprintf(b, sizeof b, "{%s,\"logprobs\":true,\"top_logprobs\":21}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_ERANGE, "top_logprobs: 21 is above the maximum 20");
    snprintf(b, sizeof b, "{%s,\"logprobs\":true,\"top_logprobs\":-1}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_ERANGE, "top_logprobs: -1 is below");
    snprintf(b, sizeof b, "{%s,\"logprobs\":2}", m);
    expect_error(CAIRN_API_CHAT, b, CAIRN_EFORMAT, "logprobs: expected a boolean");

    const char *c = "{\"prompt\":\"x\",\"logprobs\":5,\"n\":2}";
    assert_int_equal(parse(CAIRN_API_COMPLETION, c, &r, &err), 0);
    assert_true(r.logprobs);
    assert_int_equal(r.top_logprobs, 5);
    assert_int_equal(r.n, 2);
    cairn_api_req_free(&r);
    c = "{\"prompt\":\"x\",\"logprobs\":0}";
    assert_int_equal(parse(CAIRN_API_COMPLETION, c, &r, &err), 0);
    assert_true(r.logprobs);
    assert_int_equal(r.top_logprobs, 0);
    cairn_api_req_free(&r);
    c = "{\"prompt\":\"x\",\"logprobs\":null}";
    assert_int_equal(parse(CAIRN_API_COMPLETION, c, &r, &err), 0);
    assert_false(r.logprobs);
    cairn_api_req_free(&r);
    expect_error(CAIRN_API_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":6}", CAIRN_ERANGE,
                 "logprobs: 6 is above the maximum 5");
    expect_error(CAIRN_API_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":true}",
                 CAIRN_EFORMAT, "logprobs: expected an integer");
    expect_error(CAIRN_API_COMPLETION, "{\"prompt\":\"x\",\"top_logprobs\":2}",
                 CAIRN_EUNSUPPORTED, "top_logprobs: a chat field");
    expect_error(CAIRN_API_COMPLETION, "{\"prompt\":\"x\",\"n\":0}", CAIRN_ERANGE, "n: 0");
    /* /v1/rag takes neither */
    expect_error(CAIRN_API_RAG, "{\"question\":\"x\",\"n\":2}", CAIRN_EFORMAT, "n");
    expect_error(CAIRN_API_RAG, "{\"question\":\"x\",\"logprobs\":true}", CAIRN_EFORMAT,
                 "logprobs");
}

/* Sampling fields: penalties, min_p, logit_bias, and whether a seed was given. */
static void test_sampling_fields(void **state)
{
    (void)state;
    cairn_api_req r;
    cairn_error err = {0};
    const char *b = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"min_p\":0.05,"
                    "\"presence_penalty\":0.5,\"frequency_penalty\":-0.25,"
                    "\"repetition_penalty\":1.1,\"logit_bias\":{\"42\":-100,\"7\":3.5}}";
    assert_int_equal(parse(CAIRN_API_CHAT, b, &r, &err), 0);
    assert_float_equal(r.min_p, 0.05, 1e-12);
    assert_float_equal(r.presence_penalty, 0.5, 1e-12);
    assert_float_equal(r.frequency_penalty, -0.25, 1e-12);
    assert_float_equal(r.repetition_penalty, 1.1, 1e-12);
    assert_int_equal(r.n_bias, 2);
    int found = 0;
    for (int i = 0; i < r.n_bias; i++)
        found += (r.bias[i].token == 42 && r.bias[i].bias == -100.0f) ||
                 (r.bias[i].token == 7 && r.bias[i].bias == 3.5f);
    assert_int_equal(found, 2);
    assert_false(r.has_seed);
    cairn_api_req_free(&r);
    b = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"seed\":0}";
    assert_int_equal(parse(CAIRN_API_CHAT, b, &r, &err), 0);
    assert_true(r.has_seed);
    assert_float_equal(r.repetition_penalty, 1.0, 0); /* off unless asked */
    cairn_api_req_free(&r);
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char e[512];
    snprintf(e, sizeof e, "{%s,\"logit_bias\":{\"abc\":1}}", m);
    expect_error(CAIRN_API_CHAT, e, CAIRN_EINVAL, "logit_bias: 'abc' is not a token id");
    snprintf(e, sizeof e, "{%s,\"logit_bias\":{\"5\":101}}", m);
    expect_error(CAIRN_API_CHAT, e, CAIRN_ERANGE, "logit_bias.5");
    snprintf(e, sizeof e, "{%s,\"logit_bias\":{\"5\":\"x\"}}", m);
    expect_error(CAIRN_API_CHAT, e, CAIRN_EFORMAT, "logit_bias.5");
    snprintf(e, sizeof e, "{%s,\"min_p\":1.5}", m);
    expect_error(CAIRN_API_CHAT, e, CAIRN_ERANGE, "min_p");
    snprintf(e, sizeof e, "{%s,\"presence_penalty\":3}", m);
    expect_error(CAIRN_API_CHAT, e, CAIRN_ERANGE, "presence_penalty");
    snprintf(e, sizeof e, "{%s,\"repetition_penalty\":0}", m);
    expect_error(CAIRN_API_CHAT, e, CAIRN_ERANGE, "repetition_penalty");
}

static void test_bad_utf8(void **state)
{
    /* \xC3\x28 is an invalid two-byte sequence: jansson refuses it while parsing. */
    expect_error(CAIRN_API_COMPLETION, "{\"prompt\":\"a\xC3\x28\"}", CAIRN_EFORMAT,
                 "invalid JSON");
    /* An escaped lone surrogate decodes to invalid UTF-8 as well. */
    cairn_api_req r;
    cairn_error err = {0};
    assert_int_not_equal(parse(CAIRN_API_COMPLETION, "{\"prompt\":\"\\ud800\"}", &r, &err), 0);
    /* An escaped NUL inside a string is refused by name. */
    expect_error(CAIRN_API_COMPLETION, "{\"prompt\":\"a\\u0000b\"}", CAIRN_EFORMAT,
                 "invalid JSON");
}

static void test_completion(void **state)
{
    cairn_api_req r;
    cairn_error err = {0};
    assert_int_equal(parse(CAIRN_API_COMPLETION, "{\"prompt\":[\"abc\"],\"max_tokens\":2}", &r,
                           &err),
                     0);
    assert_string_equal(r.prompt, "abc");
    assert_int_equal(r.prompt_len, 3);
    cairn_api_req_free(&r);
    expect_error(CAIRN_API_COMPLETION, "{\"prompt\":[1,2]}", CAIRN_EUNSUPPORTED, "prompt");
    expect_error(CAIRN_API_COMPLETION, "{\"prompt\":\"\"}", CAIRN_ERANGE, "prompt");
    expect_error(CAIRN_API_COMPLETION, "{\"max_tokens\":2}", CAIRN_EFORMAT, "prompt");
}

static void test_embeddings_retrieve_rag_documents(void **state)
{
    cairn_api_req r;
    cairn_error err = {0};
    assert_int_equal(parse(CAIRN_API_EMBEDDINGS, "{\"input\":\"one\"}", &r, &err), 0);
    assert_int_equal(r.n_inputs, 1);
    assert_string_equal(r.inputs[0], "one");
    cairn_api_req_free(&r);
    assert_int_equal(parse(CAIRN_API_EMBEDDINGS, "{\"input\":[\"a\",\"b\"],\"model\":\"x\"}", &r,
                           &err),
                     0);
    assert_int_equal(r.n_inputs, 2);
    assert_string_equal(r.inputs[1], "b");
    cairn_api_req_free(&r);
    expect_error(CAIRN_API_EMBEDDINGS, "{\"input\":[\"a\",3]}", CAIRN_EFORMAT, "input[1]");
    expect_error(CAIRN_API_EMBEDDINGS, "{\"input\":\"a\",\"encoding_format\":\"hex\"}",
                 CAIRN_EINVAL, "encoding_format: 'hex'");
    assert_int_equal(parse(CAIRN_API_EMBEDDINGS, "{\"input\":\"a\",\"encoding_format\":\"base64\"}",
                           &r, &err),
                     0);
    assert_true(r.base64);
    cairn_api_req_free(&r);

    assert_int_equal(parse(CAIRN_API_RETRIEVE, "{\"query\":\"q\",\"k\":5}", &r, &err), 0);
    assert_int_equal(r.rag.k, 5);
    assert_string_equal(r.prompt, "q");
    cairn_api_req_free(&r);
    expect_error(CAIRN_API_RETRIEVE, "{\"query\":\"q\",\"k\":1000}", CAIRN_ERANGE, "k:");
    expect_error(CAIRN_API_RETRIEVE, "{\"query\":\"q\",\"top\":1}", CAIRN_EFORMAT, "top");
    /* search modes and metadata filters */
    assert_int_equal(parse(CAIRN_API_RETRIEVE, "{\"query\":\"q\"}", &r, &err), 0);
    assert_int_equal(r.rag.search, CAIRN_SEARCH_HYBRID); /* the default */
    assert_int_equal(r.rag.n_filters, 0);
    cairn_api_req_free(&r);
    assert_int_equal(parse(CAIRN_API_RETRIEVE,
                           "{\"query\":\"q\",\"mode\":\"lexical\",\"filter\":{\"section\":"
                           "\"utils\",\"chunk\":0,\"draft\":false}}",
                           &r, &err),
                     0);
    assert_int_equal(r.rag.search, CAIRN_SEARCH_LEXICAL);
    assert_int_equal(r.rag.n_filters, 3);
    assert_string_equal(r.rag.fkey[0], "section");
    assert_string_equal(r.rag.fval[0], "utils");
    assert_string_equal(r.rag.fval[1], "0");
    assert_string_equal(r.rag.fval[2], "false");
    cairn_api_req_free(&r);
    expect_error(CAIRN_API_RETRIEVE, "{\"query\":\"q\",\"mode\":\"bm25\"}", CAIRN_EINVAL,
                 "mode: 'bm25' is not one of hybrid, dense, lexical");
    expect_error(CAIRN_API_RETRIEVE, "{\"query\":\"q\",\"filter\":{\"a\":[1]}}",
                 CAIRN_EFORMAT, "filter.a: expected a string, an integer or a boolean");
    expect_error(CAIRN_API_RETRIEVE, "{\"query\":\"q\",\"filter\":{\"a\":1.5}}",
                 CAIRN_EFORMAT, "filter.a");
    expect_error(CAIRN_API_RETRIEVE, "{\"query\":\"q\",\"filter\":{\"\":\"x\"}}",
                 CAIRN_ERANGE, "filter: a key must be 1..64 bytes");
    expect_error(CAIRN_API_RETRIEVE,
                 "{\"query\":\"q\",\"filter\":{\"a\":1,\"b\":1,\"c\":1,\"d\":1,\"e\":1,"
                 "\"f\":1,\"g\":1,\"h\":1,\"i\":1}}",
                 CAIRN_ERANGE, "filter: at most 8 keys");
    expect_error(CAIRN_API_RETRIEVE, "{\"query\":\"q\",\"filter\":\"x\"}", CAIRN_EFORMAT,
                 "filter");

    assert_int_equal(parse(CAIRN_API_RAG, "{\"question\":\"q\",\"mode\":\"rewrite\",\"k\":2}", &r,
                           &err),
                     0);
    assert_int_equal(r.rag.mode, CAIRN_RAG_REWRITE);
    assert_int_equal(r.rag.k, 2);
    cairn_api_req_free(&r);
    expect_error(CAIRN_API_RAG, "{\"question\":\"q\",\"mode\":\"x\"}", CAIRN_EINVAL, "mode: 'x'");
    assert_int_equal(parse(CAIRN_API_RAG,
                           "{\"question\":\"q\",\"mode\":\"hyde\",\"search_mode\":\"dense\","
                           "\"filter\":{\"package\":\"tmux\"}}",
                           &r, &err),
                     0);
    assert_int_equal(r.rag.mode, CAIRN_RAG_HYDE);
    assert_int_equal(r.rag.search, CAIRN_SEARCH_DENSE);
    assert_int_equal(r.rag.n_filters, 1);
    assert_string_equal(r.rag.fval[0], "tmux");
    cairn_api_req_free(&r);
    expect_error(CAIRN_API_RAG, "{\"question\":\"q\",\"search_mode\":\"x\"}", CAIRN_EINVAL,
                 "search_mode: 'x'");
    assert_int_equal(parse(CAIRN_API_CHAT,
                           "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"rag\":"
                           "{\"search_mode\":\"lexical\",\"filter\":{\"n\":true}}}",
                           &r, &err),
                     0);
    assert_int_equal(r.rag.search, CAIRN_SEARCH_LEXICAL);
    assert_string_equal(r.rag.fval[0], "true");
    cairn_api_req_free(&r);
    expect_error(CAIRN_API_CHAT,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"rag\":"
                 "{\"search_mode\":\"sparse\"}}",
                 CAIRN_EINVAL, "rag.search_mode: 'sparse'");
    /* answer_prefix: on unless a request says false, in /v1/rag and chat's rag object alike */
    assert_int_equal(parse(CAIRN_API_RAG, "{\"question\":\"q\"}", &r, &err), 0);
    assert_false(r.rag.no_prefix);
    cairn_api_req_free(&r);
    assert_int_equal(parse(CAIRN_API_RAG, "{\"question\":\"q\",\"answer_prefix\":false}", &r, &err),
                     0);
    assert_true(r.rag.no_prefix);
    cairn_api_req_free(&r);
    assert_int_equal(parse(CAIRN_API_CHAT,
                           "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"rag\":"
                           "{\"answer_prefix\":false}}",
                           &r, &err),
                     0);
    assert_true(r.rag.no_prefix);
    cairn_api_req_free(&r);
    expect_error(CAIRN_API_RAG, "{\"question\":\"q\",\"answer_prefix\":\"Use\"}", CAIRN_EFORMAT,
                 "answer_prefix");
    expect_error(CAIRN_API_CHAT,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"rag\":"
                 "{\"answer_prefix\":1}}",
                 CAIRN_EFORMAT, "rag.answer_prefix");

    assert_int_equal(parse(CAIRN_API_DOCUMENTS,
                           "{\"documents\":[{\"text\":\"t1\",\"metadata\":{\"src\":\"a\"}},"
                           "{\"text\":\"t2\"}]}",
                           &r, &err),
                     0);
    assert_int_equal(r.n_docs, 2);
    assert_string_equal(r.docs[0].text, "t1");
    assert_string_equal(r.docs[0].metadata_json, "{\"src\":\"a\"}");
    assert_null(r.docs[1].metadata_json);
    cairn_api_req_free(&r);
    expect_error(CAIRN_API_DOCUMENTS, "{\"documents\":[{\"text\":\"a\",\"metadata\":[]}]}",
                 CAIRN_EFORMAT, "documents[0]: metadata");
}

static void test_max_tokens_cap(void **state)
{
    cairn_api_limits lim = cairn_api_default_limits();
    lim.max_tokens_cap = 16; /* a request without max_tokens gets the cap */
    cairn_api_req r;
    cairn_error err = {0};
    const char *ok = "{\"prompt\":\"p\"}";
    assert_int_equal(cairn_api_parse(CAIRN_API_COMPLETION, ok, strlen(ok), &lim, &r, &err), 0);
    assert_int_equal(r.max_tokens, 16);
    cairn_api_req_free(&r);
    const char *big = "{\"prompt\":\"p\",\"max_tokens\":17}";
    assert_int_equal(cairn_api_parse(CAIRN_API_COMPLETION, big, strlen(big), &lim, &r, &err),
                     CAIRN_ERANGE);
    assert_non_null(strstr(err.msg, "max_tokens: 17"));
}

static void test_auth(void **state)
{
    cairn_api_auth *a = NULL;
    cairn_error err = {0};
    /* No keys: open. */
    assert_int_equal(cairn_api_auth_new(&a, NULL, "", &err), 0);
    assert_false(cairn_api_auth_enabled(a));
    assert_int_equal(cairn_api_auth_check(a, NULL, &err), 0);
    cairn_api_auth_free(a);

    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)"hashed-key", 10, d);
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    assert_int_equal(cairn_api_auth_new(&a, "k1, k2", hex, &err), 0);
    assert_true(cairn_api_auth_enabled(a));
    assert_int_equal(cairn_api_auth_check(a, "Bearer k1", &err), 0);
    assert_int_equal(cairn_api_auth_check(a, "bearer k2", &err), 0);
    assert_int_equal(cairn_api_auth_check(a, "Bearer hashed-key", &err), 0);
    assert_int_equal(cairn_api_auth_check(a, "Bearer k3", &err), CAIRN_EAUTH);
    assert_int_equal(cairn_api_auth_check(a, "Bearer k1 ", &err), CAIRN_EAUTH);
    assert_int_equal(cairn_api_auth_check(a, "Basic azE=", &err), CAIRN_EAUTH);
    assert_int_equal(cairn_api_auth_check(a, NULL, &err), CAIRN_EAUTH);
    assert_non_null(strstr(err.msg, "Authorization"));
    cairn_api_auth_free(a);

    assert_int_equal(cairn_api_auth_new(&a, NULL, "abc", &err), CAIRN_EINVAL);
    assert_null(a);
    hex[5] = 'z';
    assert_int_equal(cairn_api_auth_new(&a, NULL, hex, &err), CAIRN_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_valid),
        cmocka_unit_test(test_chat_defaults_and_rag),
        cmocka_unit_test(test_chat_errors),
        cmocka_unit_test(test_unsupported_fields),
        cmocka_unit_test(test_n_and_logprobs),
        cmocka_unit_test(test_sampling_fields),
        cmocka_unit_test(test_bad_utf8),
        cmocka_unit_test(test_completion),
        cmocka_unit_test(test_embeddings_retrieve_rag_documents),
        cmocka_unit_test(test_max_tokens_cap),
        cmocka_unit_test(test_auth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
