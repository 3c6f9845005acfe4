/*
 * tests/fuzz/fuzz_request.c — libFuzzer target for the /v1 request parsers (services/api.h).
 *
 * Input: byte 0 picks the endpoint (modulo 6: chat, completion, embeddings, retrieve, rag,
 * documents), the rest is the request body. Checks: no crash or sanitizer report; a parse
 * either fails with a negative code and a non-empty message, leaving nothing to free, or
 * succeeds with every field inside the limits it was given (max_tokens, k, stop count, n,
 * top_logprobs, text lengths) and strings that are valid UTF-8.
 *
 * Seed corpus: tests/fuzz/corpus/request/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "services/api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_text(const char *s, size_t max)
{
    if (!s) return;
    size_t n = strlen(s);
    if (n > max || !cairn_json_utf8_valid(s, n)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static const cairn_api_kind kinds[] = {CAIRN_API_CHAT,     CAIRN_API_COMPLETION,
                                           CAIRN_API_EMBEDDINGS, CAIRN_API_RETRIEVE,
                                           CAIRN_API_RAG,      CAIRN_API_DOCUMENTS};
    cairn_api_kind kind = kinds[data[0] % 6];
    cairn_api_limits lim = cairn_api_default_limits();
    lim.max_text_bytes = 4096;
    lim.max_tokens_cap = 64;
    cairn_api_req r;
    cairn_error err = {0};
    int rc = cairn_api_parse(kind, (const char *)data + 1, size - 1, &lim, &r, &err);
    if (rc) {
        if (rc >= 0 || !err.msg[0] || r.root) abort();
        return 0;
    }
    if (kind == CAIRN_API_CHAT || kind == CAIRN_API_COMPLETION || kind == CAIRN_API_RAG) {
        if (r.max_tokens < 1 || r.max_tokens > lim.max_tokens_cap) abort();
        if (r.n_stop < 0 || r.n_stop > CAIRN_API_MAX_STOP) abort();
        for (int i = 0; i < r.n_stop; i++) check_text(r.stop[i], 256);
        if (!(r.temperature >= 0 && r.temperature <= 2 && r.top_p > 0 && r.top_p <= 1)) abort();
        if (r.n < 1 || r.n > CAIRN_API_MAX_N) abort();
        if (r.top_logprobs < 0 || (!r.logprobs && r.top_logprobs != 0)) abort();
        if (r.top_logprobs > (kind == CAIRN_API_CHAT ? CAIRN_API_MAX_TOP_LOGPROBS
                                                     : CAIRN_API_MAX_COMPLETION_LOGPROBS))
            abort();
    }
    if (r.rag.enabled && (r.rag.k < 1 || r.rag.k > lim.max_k)) abort();
    for (size_t i = 0; i < r.n_messages; i++) {
        check_text(r.messages[i].role, 32);
        check_text(r.messages[i].content, lim.max_text_bytes);
    }
    check_text(r.prompt, lim.max_text_bytes);
    for (size_t i = 0; i < r.n_inputs; i++) check_text(r.inputs[i], lim.max_text_bytes);
    for (size_t i = 0; i < r.n_docs; i++) check_text(r.docs[i].text, lim.max_text_bytes);
    cairn_api_req_free(&r);
    return 0;
}
