/*
 * services/api_parse.c — pure parsers for the /v1 request bodies, and API-key checks.
 *
 * Chat and completion requests follow OpenAI's shapes. Fields that change nothing a user sees
 * (user, store, metadata, service_tier, stream_options) are accepted and ignored, as OpenAI
 * clients send them; fields asking for what cairn does not do (tools, response_format other
 * than text, echo, best_of > 1, ...) get a 400 naming the field, never silence; every field cairn
 * uses is type- and range-checked. cairn's own endpoints (retrieve, rag, documents)
 * and the `rag` extension object reject unknown fields, so typos do not pass silently.
 */
#include "services/api.h"

#include "common/json.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

cairn_api_limits cairn_api_default_limits(void)
{
    return (cairn_api_limits){
        .max_tokens_cap = 4096,
        .max_text_bytes = 256u << 10,
        .max_messages = 256,
        .max_inputs = 256,
        .max_k = CAIRN_RAG_MAX_K,
        .max_nprobe = 1024,
        .temperature = 1.0,
        .top_p = 1.0,
    };
}

void cairn_api_req_free(cairn_api_req *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n_docs; i++) free((char *)r->docs[i].metadata_json);
    free(r->docs);
    free(r->bias);
    free(r->messages);
    free(r->inputs);
    json_decref((json_t *)r->root);
    memset(r, 0, sizeof *r);
}

/* ---- Shared fields --------------------------------------------------------------------- */

/* OpenAI's message content: a string, or an array of {"type": "text", "text": "..."} parts,
 * which are joined into one string stored in the JSON tree itself (so it lives as long as it). */
static int get_content(json_t *msg, const cairn_api_limits *lim, const char **out,
                       cairn_error *err)
{
    json_t *c = json_object_get(msg, "content");
    if (!c || json_is_null(c)) return cairn_errorf(err, CAIRN_EFORMAT, "content: missing");
    if (json_is_string(c))
        return cairn_json_get_string(msg, "content", out, NULL, 0, lim->max_text_bytes, true, err);
    if (!json_is_array(c))
        return cairn_errorf(err, CAIRN_EFORMAT, "content: expected a string or an array, got %s",
                            cairn_json_type_name(c));
    size_t total = 0, i;
    json_t *part;
    json_array_foreach(c, i, part) {
        if (!json_is_object(part))
            return cairn_errorf(err, CAIRN_EFORMAT, "content[%zu]: expected an object, got %s", i,
                                cairn_json_type_name(part));
        const char *type = NULL, *text = NULL;
        size_t n = 0;
        int rc = cairn_json_get_string(part, "type", &type, NULL, 1, 32, true, err);
        if (!rc && strcmp(type, "text") != 0)
            rc = cairn_errorf(err, CAIRN_EUNSUPPORTED,
                              "type: '%s' is not supported (only 'text' parts)", type);
        if (!rc) rc = cairn_json_get_string(part, "text", &text, &n, 0, lim->max_text_bytes, true,
                                           err);
        if (rc) return cairn_error_prefix(err, "content[%zu]", i);
        total += n;
        if (total > lim->max_text_bytes)
            return cairn_errorf(err, CAIRN_ERANGE, "content: longer than %zu bytes",
                                lim->max_text_bytes);
    }
    char *joined = malloc(total + 1);
    if (!joined) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    size_t off = 0;
    json_array_foreach(c, i, part) {
        json_t *t = json_object_get(part, "text");
        size_t n = json_string_length(t);
        memcpy(joined + off, json_string_value(t), n);
        off += n;
    }
    joined[off] = '\0';
    json_t *s = json_stringn_nocheck(joined, off);
    free(joined);
    if (!s || json_object_set_new(msg, "content", s) != 0)
        return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    *out = json_string_value(json_object_get(msg, "content"));
    return 0;
}

static int get_stop(json_t *o, cairn_api_req *r, cairn_error *err)
{
    json_t *s = json_object_get(o, "stop");
    if (!s || json_is_null(s)) return 0;
    if (json_is_string(s)) {
        int rc = cairn_json_get_string(o, "stop", &r->stop[0], NULL, 1, 256, true, err);
        if (!rc) r->n_stop = 1;
        return rc;
    }
    if (!json_is_array(s))
        return cairn_errorf(err, CAIRN_EFORMAT, "stop: expected a string or an array, got %s",
                            cairn_json_type_name(s));
    if (json_array_size(s) > CAIRN_API_MAX_STOP)
        return cairn_errorf(err, CAIRN_ERANGE, "stop: %zu strings, at most %d allowed",
                            json_array_size(s), CAIRN_API_MAX_STOP);
    size_t i;
    json_t *v;
    json_array_foreach(s, i, v) {
        if (!json_is_string(v))
            return cairn_errorf(err, CAIRN_EFORMAT, "stop[%zu]: expected a string, got %s", i,
                                cairn_json_type_name(v));
        size_t n = json_string_length(v);
        if (n < 1 || n > 256 || memchr(json_string_value(v), 0, n))
            return cairn_errorf(err, CAIRN_ERANGE,
                                "stop[%zu]: must be 1..256 bytes without NUL", i);
        r->stop[r->n_stop++] = json_string_value(v);
    }
    return 0;
}

/* The retrieval options k, nprobe, mode and answer_prefix: inside the `rag` object (prefix
 * "rag.") of a chat request, or at the top level of /v1/rag (prefix ""). Dotted keys make
 * messages name the full path ("rag.k: 0 is below the minimum 1"). */
/*
 * The search mode (field `name`, absent: hybrid) and the metadata filter (field `fname`, an
 * object of at most CAIRN_API_MAX_FILTERS keys of 1..64 bytes, each a string of at most 256
 * bytes, an integer or a boolean) of a retrieval.
 */
static int get_search(json_t *o, const char *name, const char *fname, cairn_api_rag *rag,
                      cairn_error *err)
{
    const char *mode = NULL;
    json_t *f = NULL;
    int rc = cairn_json_get_string(o, name, &mode, NULL, 1, 16, false, err);
    rag->search = CAIRN_SEARCH_HYBRID;
    if (!rc && mode && cairn_search_mode_parse(mode, &rag->search, err))
        return cairn_error_prefix(err, "%s", name);
    if (!rc) rc = cairn_json_get_object(o, fname, &f, false, err);
    if (rc || !f) return rc;
    if (json_object_size(f) > CAIRN_API_MAX_FILTERS)
        return cairn_errorf(err, CAIRN_ERANGE, "%s: at most %d keys, got %zu", fname,
                            CAIRN_API_MAX_FILTERS, json_object_size(f));
    const char *key;
    json_t *v;
    json_object_foreach(f, key, v) {
        size_t i = rag->n_filters;
        size_t kl = strlen(key);
        if (kl < 1 || kl > 64 || !cairn_json_utf8_valid(key, kl))
            return cairn_errorf(err, CAIRN_ERANGE, "%s: a key must be 1..64 bytes of UTF-8",
                                fname);
        if (json_is_string(v)) {
            size_t n = json_string_length(v);
            if (n > 256 || memchr(json_string_value(v), 0, n))
                return cairn_errorf(err, CAIRN_ERANGE,
                                    "%s.%s: must be at most 256 bytes without NUL", fname, key);
            rag->fval[i] = json_string_value(v);
        } else if (json_is_integer(v)) {
            snprintf(rag->fval_buf[i], sizeof rag->fval_buf[i], "%lld",
                     (long long)json_integer_value(v));
            rag->fval[i] = rag->fval_buf[i];
        } else if (json_is_boolean(v)) {
            rag->fval[i] = json_is_true(v) ? "true" : "false";
        } else {
            return cairn_errorf(err, CAIRN_EFORMAT,
                                "%s.%s: expected a string, an integer or a boolean, got %s",
                                fname, key, cairn_json_type_name(v));
        }
        rag->fkey[i] = key;
        rag->n_filters++;
    }
    return 0;
}

/* The largest k a request may ask for: the limit, never past what the passage arrays hold. */
static int64_t max_k(const cairn_api_limits *lim)
{
    return lim->max_k < CAIRN_RAG_MAX_K ? lim->max_k : CAIRN_RAG_MAX_K;
}

static int get_rag(json_t *o, const char *prefix, const cairn_api_limits *lim, cairn_api_rag *rag,
                   cairn_error *err)
{
    char kk[16], kn[16], km[16], kp[32];
    snprintf(kk, sizeof kk, "%sk", prefix);
    snprintf(kn, sizeof kn, "%snprobe", prefix);
    snprintf(km, sizeof km, "%smode", prefix);
    snprintf(kp, sizeof kp, "%sanswer_prefix", prefix);
    int64_t k = 4 < max_k(lim) ? 4 : max_k(lim), nprobe = 0;
    const char *mode = NULL;
    bool answer_prefix = true;
    int rc = cairn_json_get_int(o, kk, &k, 1, max_k(lim), false, err);
    if (!rc) rc = cairn_json_get_int(o, kn, &nprobe, 0, lim->max_nprobe, false, err);
    if (!rc) rc = cairn_json_get_string(o, km, &mode, NULL, 1, 16, false, err);
    if (!rc) rc = cairn_json_get_bool(o, kp, &answer_prefix, false, err);
    if (rc) return rc;
    rag->mode = CAIRN_RAG_NONE;
    if (mode) {
        if (!strcmp(mode, "none")) rag->mode = CAIRN_RAG_NONE;
        else if (!strcmp(mode, "rewrite")) rag->mode = CAIRN_RAG_REWRITE;
        else if (!strcmp(mode, "hyde")) rag->mode = CAIRN_RAG_HYDE;
        else
            return cairn_errorf(err, CAIRN_EINVAL, "%s: '%s' is not one of none, rewrite, hyde",
                                km, mode);
    }
    char ks[32], kf[16];
    snprintf(ks, sizeof ks, "%ssearch_mode", prefix);
    snprintf(kf, sizeof kf, "%sfilter", prefix);
    if ((rc = get_search(o, ks, kf, rag, err))) return rc;
    rag->enabled = true;
    rag->k = (int)k;
    rag->nprobe = (int)nprobe;
    rag->no_prefix = !answer_prefix;
    return 0;
}

/* A field given (not absent, not null) that asks for what cairn does not do: a 400 naming it. */
static int refuse(json_t *o, const char *key, const char *why, cairn_error *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    return cairn_errorf(err, CAIRN_EUNSUPPORTED, "%s: %s", key, why);
}

/* The fields of OpenAI's generation requests that cairn does not honour, each refused by name
 * (a client must not believe it got what it asked for). */
static int refuse_unsupported(json_t *o, cairn_error *err)
{
    static const char *const no_tools = "tools and function calling are not supported by cairn";
    int rc = refuse(o, "tools", no_tools, err);
    if (!rc) rc = refuse(o, "tool_choice", no_tools, err);
    if (!rc) rc = refuse(o, "functions", no_tools, err);
    if (!rc) rc = refuse(o, "function_call", no_tools, err);
    if (!rc) rc = refuse(o, "parallel_tool_calls", no_tools, err);
    if (!rc) rc = refuse(o, "audio", "audio output is not supported by cairn", err);
    if (!rc) rc = refuse(o, "prediction", "predicted outputs are not supported by cairn", err);
    if (!rc) rc = refuse(o, "web_search_options", "web search is not supported by cairn", err);
    if (!rc) rc = refuse(o, "suffix", "suffixes (insertion) are not supported by cairn", err);
    if (rc) return rc;
    json_t *v = json_object_get(o, "echo");
    if (v && !json_is_null(v) && !json_is_false(v))
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "echo: echoing the prompt is not supported "
                            "by cairn");
    v = json_object_get(o, "best_of");
    if (v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1))
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "best_of: only 1 is supported by cairn");
    v = json_object_get(o, "response_format");
    if (v && !json_is_null(v)) {
        json_t *t = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!json_is_string(t) || strcmp(json_string_value(t), "text"))
            return cairn_errorf(err, CAIRN_EUNSUPPORTED, "response_format: only {\"type\": "
                                "\"text\"} is supported by cairn (no JSON mode or schemas)");
    }
    v = json_object_get(o, "modalities");
    if (v && !json_is_null(v)) {
        bool text_only = json_is_array(v) && json_array_size(v) >= 1;
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m) text_only = text_only && json_is_string(m) &&
                                                !strcmp(json_string_value(m), "text");
        if (!text_only)
            return cairn_errorf(err, CAIRN_EUNSUPPORTED, "modalities: only [\"text\"] is "
                                "supported by cairn");
    }
    return 0;
}

/* logit_bias: {"token id": bias, ...}, ids as decimal strings, biases in -100..100. */
static int get_bias(json_t *o, cairn_api_req *r, cairn_error *err)
{
    json_t *b = NULL;
    int rc = cairn_json_get_object(o, "logit_bias", &b, false, err);
    if (rc || !b || json_object_size(b) == 0) return rc;
    if (json_object_size(b) > CAIRN_SAMPLE_MAX_BIAS)
        return cairn_errorf(err, CAIRN_ERANGE, "logit_bias: %zu entries (at most %d)",
                            json_object_size(b), CAIRN_SAMPLE_MAX_BIAS);
    r->bias = calloc(json_object_size(b), sizeof *r->bias);
    if (!r->bias) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    const char *key;
    json_t *v;
    json_object_foreach(b, key, v) {
        char *end;
        errno = 0;
        long id = strtol(key, &end, 10);
        if (!*key || *end || errno || id < 0 || id > INT32_MAX)
            return cairn_errorf(err, CAIRN_EINVAL, "logit_bias: '%s' is not a token id", key);
        if (!json_is_number(v))
            return cairn_errorf(err, CAIRN_EFORMAT, "logit_bias.%s: expected a number, got %s",
                                key, cairn_json_type_name(v));
        double bias = json_number_value(v);
        if (!(bias >= -100 && bias <= 100))
            return cairn_errorf(err, CAIRN_ERANGE, "logit_bias.%s: %g is outside -100..100", key,
                                bias);
        r->bias[r->n_bias++] = (cairn_logit_bias){(int32_t)id, (float)bias};
    }
    return 0;
}

/* Generation parameters shared by chat, completions and rag. */
static int get_gen(json_t *o, const cairn_api_limits *lim, cairn_api_req *r, cairn_error *err)
{
    /* none given: what the context leaves, up to the cap (the engine stops at the context) */
    int64_t max_tokens = lim->max_tokens_cap;
    int64_t top_k = lim->top_k, n = 1, seed = 0;
    double temperature = lim->temperature, top_p = lim->top_p, min_p = lim->min_p;
    double repetition = 1.0, presence = 0, frequency = 0;
    bool stream = false;
    int rc = cairn_json_get_string(o, "model", &r->model, NULL, 1, 256, false, err);
    /* max_completion_tokens is the newer name of max_tokens; take whichever is given. */
    if (!rc) rc = cairn_json_get_int(o, "max_tokens", &max_tokens, 1, lim->max_tokens_cap, false,
                                     err);
    if (!rc) rc = cairn_json_get_int(o, "max_completion_tokens", &max_tokens, 1,
                                     lim->max_tokens_cap, false, err);
    if (!rc) rc = cairn_json_get_number(o, "temperature", &temperature, 0, 2, false, err);
    if (!rc) rc = cairn_json_get_number(o, "top_p", &top_p, 0, 1, false, err);
    if (!rc && top_p <= 0) rc = cairn_errorf(err, CAIRN_ERANGE, "top_p: must be above 0");
    if (!rc) rc = cairn_json_get_int(o, "top_k", &top_k, 0, 1000000, false, err);
    if (!rc) rc = cairn_json_get_number(o, "min_p", &min_p, 0, 1, false, err);
    if (!rc) rc = cairn_json_get_int(o, "seed", &seed, INT64_MIN, INT64_MAX, false, err);
    if (!rc) rc = cairn_json_get_int(o, "n", &n, 1, CAIRN_API_MAX_N, false, err);
    if (!rc) rc = cairn_json_get_bool(o, "stream", &stream, false, err);
    if (!rc) rc = cairn_json_get_number(o, "presence_penalty", &presence, -2, 2, false, err);
    if (!rc) rc = cairn_json_get_number(o, "frequency_penalty", &frequency, -2, 2, false, err);
    if (!rc) rc = cairn_json_get_number(o, "repetition_penalty", &repetition, 0, 10, false,
                                        err);
    if (!rc && repetition <= 0)
        rc = cairn_errorf(err, CAIRN_ERANGE, "repetition_penalty: must be above 0 (1 is off)");
    if (!rc) rc = get_bias(o, r, err);
    if (!rc) rc = refuse_unsupported(o, err);
    if (!rc) rc = get_stop(o, r, err);
    if (rc) return rc;
    json_t *sv = json_object_get(o, "seed");
    r->has_seed = sv && !json_is_null(sv);
    r->min_p = min_p;
    r->repetition_penalty = repetition;
    r->presence_penalty = presence;
    r->frequency_penalty = frequency;
    json_t *so = NULL;
    if ((rc = cairn_json_get_object(o, "stream_options", &so, false, err))) return rc;
    r->max_tokens = (int)max_tokens;
    r->max_tokens_given = json_object_get(o, "max_tokens") ||
                          json_object_get(o, "max_completion_tokens");
    r->temperature = temperature;
    r->top_p = top_p;
    r->top_k = (int)top_k;
    r->seed = (uint64_t)seed;
    r->stream = stream;
    r->n = (int)n;
    return 0;
}

/* chat: logprobs (a boolean) and top_logprobs (0..20, only with logprobs: true). */
static int get_chat_logprobs(json_t *o, cairn_api_req *r, cairn_error *err)
{
    bool want = false;
    int64_t top = 0;
    int rc = 0;
    if (!json_is_null(json_object_get(o, "logprobs")))
        rc = cairn_json_get_bool(o, "logprobs", &want, false, err);
    if (!rc && !json_is_null(json_object_get(o, "top_logprobs"))) {
        rc = cairn_json_get_int(o, "top_logprobs", &top, 0, CAIRN_API_MAX_TOP_LOGPROBS, false,
                                err);
        if (!rc && json_object_get(o, "top_logprobs") && !want)
            rc = cairn_errorf(err, CAIRN_EINVAL, "top_logprobs: needs logprobs: true");
    }
    r->logprobs = want;
    r->top_logprobs = (int)top;
    return rc;
}

/* completions (legacy): logprobs is a count of alternatives, 0..5; top_logprobs is chat's. */
static int get_completion_logprobs(json_t *o, cairn_api_req *r, cairn_error *err)
{
    int64_t n = -1;
    int rc = 0;
    if (!json_is_null(json_object_get(o, "logprobs")))
        rc = cairn_json_get_int(o, "logprobs", &n, 0, CAIRN_API_MAX_COMPLETION_LOGPROBS, false,
                                err);
    if (!rc)
        rc = refuse(o, "top_logprobs", "a chat field; /v1/completions takes logprobs: N "
                    "(0..5 alternatives)", err);
    r->logprobs = n >= 0;
    r->top_logprobs = n > 0 ? (int)n : 0;
    return rc;
}

/* ---- Per endpoint ---------------------------------------------------------------------- */

static int parse_chat(json_t *o, const cairn_api_limits *lim, cairn_api_req *r, cairn_error *err)
{
    json_t *msgs = NULL;
    int rc = cairn_json_get_array(o, "messages", &msgs, 1, lim->max_messages, true, err);
    if (!rc) rc = get_gen(o, lim, r, err);
    if (!rc) rc = get_chat_logprobs(o, r, err);
    json_t *ro = NULL;
    if (!rc) rc = cairn_json_get_object(o, "rag", &ro, false, err);
    if (!rc && ro) {
        static const char *const allowed[] = {"k",      "nprobe", "mode", "search_mode",
                                              "filter", "answer_prefix", NULL};
        rc = cairn_json_check_keys(ro, "rag", allowed, err);
        if (!rc) rc = get_rag(o, "rag.", lim, &r->rag, err);
    }
    if (rc) return rc;
    r->messages = calloc(json_array_size(msgs), sizeof *r->messages);
    if (!r->messages) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        if (!json_is_object(m))
            return cairn_errorf(err, CAIRN_EFORMAT, "messages[%zu]: expected an object, got %s", i,
                                cairn_json_type_name(m));
        const char *role = NULL, *content = NULL;
        rc = cairn_json_get_string(m, "role", &role, NULL, 1, 32, true, err);
        if (!rc && strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant") &&
            strcmp(role, "developer"))
            rc = cairn_errorf(err, CAIRN_EINVAL,
                              "role: '%s' is not one of system, developer, user, assistant", role);
        if (!rc) rc = get_content(m, lim, &content, err);
        if (rc) return cairn_error_prefix(err, "messages[%zu]", i);
        /* OpenAI's "developer" role is the newer name of "system". */
        r->messages[i].role = strcmp(role, "developer") ? role : "system";
        r->messages[i].content = content;
    }
    r->n_messages = json_array_size(msgs);
    return 0;
}

static int parse_completion(json_t *o, const cairn_api_limits *lim, cairn_api_req *r,
                            cairn_error *err)
{
    json_t *p = json_object_get(o, "prompt");
    /* OpenAI also takes a one-element array of strings; token arrays are not supported. */
    if (p && json_is_array(p)) {
        if (json_array_size(p) != 1 || !json_is_string(json_array_get(p, 0)))
            return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                                "prompt: only a string or an array of one string is supported");
        json_object_set(o, "prompt", json_array_get(p, 0));
    }
    int rc = cairn_json_get_string(o, "prompt", &r->prompt, &r->prompt_len, 1, lim->max_text_bytes,
                                   true, err);
    if (!rc) rc = get_gen(o, lim, r, err);
    if (!rc) rc = get_completion_logprobs(o, r, err);
    return rc;
}

static int parse_embeddings(json_t *o, const cairn_api_limits *lim, cairn_api_req *r,
                            cairn_error *err)
{
    const char *fmt = NULL;
    int rc = cairn_json_get_string(o, "model", &r->model, NULL, 1, 256, false, err);
    if (!rc) rc = cairn_json_get_string(o, "encoding_format", &fmt, NULL, 1, 16, false, err);
    if (!rc && fmt && strcmp(fmt, "float") && strcmp(fmt, "base64"))
        rc = cairn_errorf(err, CAIRN_EINVAL,
                          "encoding_format: '%s' is not one of float, base64", fmt);
    r->base64 = fmt && !strcmp(fmt, "base64");
    if (rc) return rc;
    json_t *in = json_object_get(o, "input");
    if (in && json_is_string(in)) {
        r->inputs = malloc(sizeof *r->inputs);
        if (!r->inputs) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        rc = cairn_json_get_string(o, "input", &r->inputs[0], NULL, 0, lim->max_text_bytes, true,
                                   err);
        if (!rc) r->n_inputs = 1;
        return rc;
    }
    json_t *arr = NULL;
    if ((rc = cairn_json_get_array(o, "input", &arr, 1, lim->max_inputs, true, err)))
        return rc;
    r->inputs = calloc(json_array_size(arr), sizeof *r->inputs);
    if (!r->inputs) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        if (!json_is_string(v))
            return cairn_errorf(err, CAIRN_EFORMAT, "input[%zu]: expected a string, got %s", i,
                                cairn_json_type_name(v));
        size_t n = json_string_length(v);
        if (n > lim->max_text_bytes || memchr(json_string_value(v), 0, n))
            return cairn_errorf(err, CAIRN_ERANGE,
                                "input[%zu]: must be at most %zu bytes without NUL", i,
                                lim->max_text_bytes);
        r->inputs[r->n_inputs++] = json_string_value(v);
    }
    return 0;
}

static int parse_retrieve(json_t *o, const cairn_api_limits *lim, cairn_api_req *r,
                          cairn_error *err)
{
    static const char *const allowed[] = {"query", "k", "nprobe", "mode", "filter", NULL};
    int64_t k = 4 < max_k(lim) ? 4 : max_k(lim), nprobe = 0;
    int rc = cairn_json_check_keys(o, NULL, allowed, err);
    if (!rc) rc = cairn_json_get_string(o, "query", &r->prompt, &r->prompt_len, 1,
                                        lim->max_text_bytes, true, err);
    if (!rc) rc = cairn_json_get_int(o, "k", &k, 1, max_k(lim), false, err);
    if (!rc) rc = cairn_json_get_int(o, "nprobe", &nprobe, 0, lim->max_nprobe, false, err);
    memset(&r->rag, 0, sizeof r->rag);
    /* here `mode` is the search mode: /v1/retrieve has no pre-retrieval generation */
    if (!rc) rc = get_search(o, "mode", "filter", &r->rag, err);
    r->rag.enabled = true;
    r->rag.k = (int)k;
    r->rag.nprobe = (int)nprobe;
    return rc;
}

static int parse_rag(json_t *o, const cairn_api_limits *lim, cairn_api_req *r, cairn_error *err)
{
    static const char *const allowed[] = {"question", "model", "max_tokens", "temperature",
                                          "top_p", "top_k", "min_p", "seed", "stream", "stop",
                                          "repetition_penalty", "presence_penalty",
                                          "frequency_penalty", "logit_bias", "k", "nprobe",
                                          "mode", "search_mode", "filter", "answer_prefix",
                                          NULL};
    int rc = cairn_json_check_keys(o, NULL, allowed, err);
    if (!rc) rc = cairn_json_get_string(o, "question", &r->prompt, &r->prompt_len, 1,
                                        lim->max_text_bytes, true, err);
    if (!rc) rc = get_gen(o, lim, r, err);
    if (rc) return rc;
    return get_rag(o, "", lim, &r->rag, err);
}

static int parse_documents(json_t *o, const cairn_api_limits *lim, cairn_api_req *r,
                           cairn_error *err)
{
    static const char *const allowed[] = {"documents", NULL};
    static const char *const doc_allowed[] = {"text", "title", "metadata", NULL};
    json_t *arr = NULL;
    int rc = cairn_json_check_keys(o, NULL, allowed, err);
    if (!rc) rc = cairn_json_get_array(o, "documents", &arr, 1, lim->max_inputs, true, err);
    if (rc) return rc;
    r->docs = calloc(json_array_size(arr), sizeof *r->docs);
    if (!r->docs) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    size_t i;
    json_t *d;
    json_array_foreach(arr, i, d) {
        if (!json_is_object(d))
            return cairn_errorf(err, CAIRN_EFORMAT, "documents[%zu]: expected an object, got %s",
                                i, cairn_json_type_name(d));
        cairn_api_doc *doc = &r->docs[r->n_docs++];
        json_t *meta = NULL;
        rc = cairn_json_check_keys(d, NULL, doc_allowed, err);
        if (!rc) rc = cairn_json_get_string(d, "text", &doc->text, &doc->text_len, 1,
                                            lim->max_text_bytes, true, err);
        if (!rc) rc = cairn_json_get_string(d, "title", &doc->title, NULL, 0, 512, false, err);
        if (!rc) rc = cairn_json_get_object(d, "metadata", &meta, false, err);
        if (!rc && meta) {
            doc->metadata_json = json_dumps(meta, JSON_COMPACT);
            if (!doc->metadata_json) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        }
        if (rc) return cairn_error_prefix(err, "documents[%zu]", i);
    }
    return 0;
}

int cairn_api_parse(cairn_api_kind kind, const char *body, size_t len, const cairn_api_limits *lim,
                    cairn_api_req *out, cairn_error *err)
{
    memset(out, 0, sizeof *out);
    json_t *root = NULL;
    /* The HTTP layer bounds the body; this bound only keeps the parser pure and safe alone. */
    size_t max_len = lim->max_text_bytes * 4 + (1u << 20);
    int rc = cairn_json_parse(&root, body, len, max_len, err);
    if (rc) return rc; /* the message starts "invalid JSON at line L, column C" */
    if (!json_is_object(root)) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "request body: expected a JSON object, got %s",
                          cairn_json_type_name(root));
        json_decref(root);
        return rc;
    }
    out->kind = kind;
    out->root = root;
    switch (kind) {
    case CAIRN_API_CHAT: rc = parse_chat(root, lim, out, err); break;
    case CAIRN_API_COMPLETION: rc = parse_completion(root, lim, out, err); break;
    case CAIRN_API_EMBEDDINGS: rc = parse_embeddings(root, lim, out, err); break;
    case CAIRN_API_RETRIEVE: rc = parse_retrieve(root, lim, out, err); break;
    case CAIRN_API_RAG: rc = parse_rag(root, lim, out, err); break;
    case CAIRN_API_DOCUMENTS: rc = parse_documents(root, lim, out, err); break;
    default: rc = cairn_errorf(err, CAIRN_EINVAL, "unknown request kind %d", (int)kind);
    }
    if (rc) cairn_api_req_free(out);
    return rc;
}

/* ---- API keys ----------------------------------------------------------------------------- */

struct cairn_api_auth {
    size_t n;
    unsigned char (*digests)[SHA256_DIGEST_LENGTH];
};

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Calls fn on each trimmed, non-empty item of a comma-separated list. */
static int each_item(const char *list, int (*fn)(cairn_api_auth *, const char *, size_t,
                                                 cairn_error *),
                     cairn_api_auth *a, cairn_error *err)
{
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        const char *s = p;
        while (n && (*s == ' ' || *s == '\t')) s++, n--;
        while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
        if (n) {
            int rc = fn(a, s, n, err);
            if (rc) return rc;
        }
        p = e ? e + 1 : p + strlen(p);
    }
    return 0;
}

static int grow(cairn_api_auth *a, cairn_error *err)
{
    void *d = realloc(a->digests, (a->n + 1) * sizeof *a->digests);
    if (!d) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    a->digests = d;
    return 0;
}

static int add_key(cairn_api_auth *a, const char *s, size_t n, cairn_error *err)
{
    int rc = grow(a, err);
    if (!rc) SHA256((const unsigned char *)s, n, a->digests[a->n++]);
    return rc;
}

static int add_hash(cairn_api_auth *a, const char *s, size_t n, cairn_error *err)
{
    if (n != 2 * SHA256_DIGEST_LENGTH)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "auth.api_key_hashes: an entry of %zu characters is not a hex "
                            "SHA-256 digest (64 hex digits)", n);
    int rc = grow(a, err);
    if (rc) return rc;
    for (size_t i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return cairn_errorf(err, CAIRN_EINVAL,
                                "auth.api_key_hashes: entry has a non-hex character");
        a->digests[a->n][i] = (unsigned char)(hi << 4 | lo);
    }
    a->n++;
    return 0;
}

int cairn_api_auth_new(cairn_api_auth **out, const char *keys, const char *hashes,
                       cairn_error *err)
{
    *out = NULL;
    cairn_api_auth *a = calloc(1, sizeof *a);
    if (!a) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    int rc = each_item(keys, add_key, a, err);
    if (!rc) rc = each_item(hashes, add_hash, a, err);
    if (rc) {
        cairn_api_auth_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

void cairn_api_auth_free(cairn_api_auth *a)
{
    if (!a) return;
    free(a->digests);
    free(a);
}

bool cairn_api_auth_enabled(const cairn_api_auth *a) { return a && a->n > 0; }

int cairn_api_auth_check(const cairn_api_auth *a, const char *authorization, cairn_error *err)
{
    return cairn_api_auth_check_id(a, authorization, NULL, err);
}

int cairn_api_auth_check_id(const cairn_api_auth *a, const char *authorization,
                            char key_id[CAIRN_API_KEY_ID_SIZE], cairn_error *err)
{
    if (key_id) key_id[0] = '\0';
    if (!cairn_api_auth_enabled(a)) return 0;
    if (!authorization)
        return cairn_errorf(err, CAIRN_EAUTH,
                            "missing API key: send 'Authorization: Bearer <key>'");
    if (strncasecmp(authorization, "Bearer ", 7) != 0)
        return cairn_errorf(err, CAIRN_EAUTH,
                            "the Authorization header must read 'Bearer <key>'");
    const char *key = authorization + 7;
    while (*key == ' ') key++;
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)key, strlen(key), d);
    /* Compare against every digest in constant time, so timing tells nothing about which
     * (or how much of a) key matched. */
    int ok = 0;
    for (size_t i = 0; i < a->n; i++) ok |= CRYPTO_memcmp(d, a->digests[i], sizeof d) == 0;
    if (!ok) return cairn_errorf(err, CAIRN_EAUTH, "invalid API key");
    /* The first 4 bytes of the digest operators configured (or can compute): enough to tell
     * keys apart in a log, nothing that helps to guess one. */
    if (key_id) snprintf(key_id, CAIRN_API_KEY_ID_SIZE, "sha256:%02x%02x%02x%02x", d[0], d[1],
                         d[2], d[3]);
    return 0;
}

int cairn_api_auth_request(const cairn_api_auth *a, const cairn_http_req *req, cairn_error *err)
{
    char id[CAIRN_API_KEY_ID_SIZE];
    int rc = cairn_api_auth_check_id(a, cairn_http_header(req, "Authorization"), id, err);
    if (!rc && id[0]) cairn_http_set_key_id(req, id);
    return rc;
}
