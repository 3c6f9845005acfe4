/*
 * services/api.h — cairnd's /v1 API: request parsing, authentication, admission, handlers.
 *
 * The parsers are pure functions from request bytes to a request struct or an error whose
 * message names the offending field ("max_tokens: -1 is below the minimum 1"); they touch no
 * server state, so tests and the fuzz target (tests/fuzz/fuzz_request.c) call them directly.
 * A parsed request keeps the parsed JSON alive: its strings point into it until
 * cairn_api_req_free.
 */
#ifndef CAIRN_SERVICES_API_H
#define CAIRN_SERVICES_API_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/metrics.h"
#include "generation/chat.h"
#include "generation/sample.h"
#include "services/api_types.h"
#include "services/http.h"

/* ---- Request parsing ------------------------------------------------------------------- */

#define CAIRN_API_MAX_STOP 4 /* stop strings per request (OpenAI's limit) */
#define CAIRN_API_MAX_N 8    /* choices per request (n) */
#define CAIRN_API_MAX_TOP_LOGPROBS 20        /* chat top_logprobs (OpenAI's limit) */
#define CAIRN_API_MAX_COMPLETION_LOGPROBS 5  /* completions logprobs (OpenAI's limit) */

typedef struct cairn_api_limits {
    int max_tokens_cap;      /* max_tokens above this: 400. A request without max_tokens gets
                                it: generation then runs until the end of generation, a stop,
                                this cap or the end of the context, whichever comes first */
    size_t max_text_bytes;   /* one prompt, message, input or document */
    size_t max_messages;     /* chat messages per request */
    size_t max_inputs;       /* embedding inputs / documents per request */
    int max_k;               /* retrieval k; at most CAIRN_RAG_MAX_K */
    int max_nprobe;          /* retrieval nprobe */
    /* Sampling defaults for requests that do not set them (the config's sampling.*; OpenAI's
     * own defaults otherwise: temperature 1, top_p 1, no top-k, no min-p). */
    double temperature, top_p, min_p;
    int top_k;
} cairn_api_limits;

/* max_tokens_cap 4096, max_text_bytes 256 KiB, max_messages 256, max_inputs 256,
 * max_k CAIRN_RAG_MAX_K (100), max_nprobe 1024. */
cairn_api_limits cairn_api_default_limits(void);

typedef enum {
    CAIRN_API_CHAT = 1,
    CAIRN_API_COMPLETION,
    CAIRN_API_EMBEDDINGS,
    CAIRN_API_RETRIEVE,
    CAIRN_API_RAG,
    CAIRN_API_DOCUMENTS,
} cairn_api_kind;

/* One parsed request; fields a kind does not use stay zero. */
typedef struct cairn_api_req {
    cairn_api_kind kind;
    void *root;          /* the parsed JSON (json_t *), owned */
    const char *model;   /* may be NULL (the served model is used) */
    /* generation (chat, completion, rag) */
    cairn_chat_msg *messages; /* chat: n_messages entries (malloc'ed array, strings borrowed) */
    size_t n_messages;
    const char *prompt;       /* completion prompt; rag question; retrieve query */
    size_t prompt_len;
    int max_tokens;
    bool max_tokens_given;    /* max_tokens (or max_completion_tokens) was in the request */
    double temperature;       /* 0 = greedy */
    double top_p;
    int top_k;
    double min_p;
    double repetition_penalty; /* 1 = off */
    double presence_penalty, frequency_penalty;
    cairn_logit_bias *bias;    /* logit_bias: n_bias entries (malloc'ed) */
    int n_bias;
    uint64_t seed;
    bool has_seed;             /* false: a fresh random seed per request */
    bool stream;
    int n;                     /* choices, 1..CAIRN_API_MAX_N */
    bool logprobs;             /* chat logprobs: true; completions logprobs: N */
    int top_logprobs;          /* alternatives per token: chat top_logprobs, completions N */
    const char *stop[CAIRN_API_MAX_STOP];
    int n_stop;
    cairn_api_rag rag;
    /* embeddings inputs, documents */
    const char **inputs; /* n_inputs strings (malloc'ed array, strings borrowed) */
    bool base64;         /* embeddings: encoding_format "base64" (little-endian float32) */
    size_t n_inputs;
    cairn_api_doc *docs; /* n_docs (malloc'ed) */
    size_t n_docs;
} cairn_api_req;

/*
 * Parse the body of POST /v1/chat/completions, /v1/completions, /v1/embeddings,
 * /v1/retrieve, /v1/rag, /v1/documents. Return 0 and fill *out (release with
 * cairn_api_req_free), or CAIRN_EFORMAT (not JSON, wrong types, missing fields, bad UTF-8),
 * CAIRN_ERANGE (a value out of bounds), CAIRN_EINVAL (an unknown role, mode or value), with
 * the field named in err. On error *out holds nothing to free. Pure and thread-safe.
 */
int cairn_api_parse(cairn_api_kind kind, const char *body, size_t len, const cairn_api_limits *lim,
                    cairn_api_req *out, cairn_error *err);
void cairn_api_req_free(cairn_api_req *r); /* NULL or zeroed: no-op */

/* ---- Authentication -------------------------------------------------------------------- */

typedef struct cairn_api_auth cairn_api_auth;

/*
 * Builds the key set from keys (comma-separated plaintext keys) and hashes (comma-separated
 * hex SHA-256 digests of keys); either may be NULL or empty. Only the SHA-256 digests are kept.
 * With no key at all, every request is allowed. Returns 0 and *out (cairn_api_auth_free), or
 * CAIRN_EINVAL (a hash that is not 64 hex digits), CAIRN_ENOMEM.
 */
int cairn_api_auth_new(cairn_api_auth **out, const char *keys, const char *hashes,
                       cairn_error *err);
void cairn_api_auth_free(cairn_api_auth *a);
/* Whether any key is configured. */
bool cairn_api_auth_enabled(const cairn_api_auth *a);
/* Checks an Authorization header value ("Bearer <key>"); NULL header fails when keys are
 * configured. Returns 0 or CAIRN_EAUTH with the reason. Thread-safe (read-only). */
int cairn_api_auth_check(const cairn_api_auth *a, const char *authorization, cairn_error *err);

/* A key's identifier for logs: "sha256:" and the first 8 hex digits of its digest. */
#define CAIRN_API_KEY_ID_SIZE 16
/* As cairn_api_auth_check; on success with keys configured, key_id (may be NULL) gets the
 * matching key's identifier, else "". */
int cairn_api_auth_check_id(const cairn_api_auth *a, const char *authorization,
                            char key_id[CAIRN_API_KEY_ID_SIZE], cairn_error *err);
/* Checks req's Authorization header and records the key's identifier on the request for the
 * access log (cairn_http_set_key_id). Returns 0 or CAIRN_EAUTH. On an HTTP thread, in the
 * handler. */
int cairn_api_auth_request(const cairn_api_auth *a, const cairn_http_req *req, cairn_error *err);

/* ---- The service --------------------------------------------------------------------------- */

typedef struct cairn_api cairn_api;
struct cairn_workers;

typedef struct cairn_api_params {
    cairn_api_limits limits;
    const char *api_keys;        /* see cairn_api_auth_new */
    const char *api_key_hashes;
    int max_concurrent;          /* generation requests running at once */
    int max_queue;               /* generation requests waiting beyond those; more: 429 */
    int retry_after_s;           /* Retry-After on 429 */
    const char *model_name;      /* the id /v1/models lists */
    struct cairn_workers *workers; /* borrowed; NULL: generation endpoints answer 503 */
    struct cairn_embed *embed;     /* borrowed; NULL: /v1/embeddings answers 503 */
    struct cairn_rag *rag;         /* borrowed; NULL: retrieval endpoints answer 503 */
    const char *embed_model_name;  /* the id /v1/embeddings reports */
    bool rag_answer_prefix;        /* RAG: an answer from a package's passage opens with "Use"
                                      (cairn_rag_ask.answer_prefix); false: no answer does */
    /* POST /v1/documents/upload: the file's bytes (413 above; the route's own body limit), the
     * text extracted from it, and the passages it may make (413 above either). */
    size_t max_upload;
    size_t max_upload_text;
    size_t max_upload_passages;
} cairn_api_params;

cairn_api_params cairn_api_default_params(void);

/* max_concurrent 8, max_queue 64, retry_after_s 1, max_upload 16 MiB, max_upload_text 4 MiB,
 * max_upload_passages 4096, rag_answer_prefix on; no keys, no components. */

/* Creates the handlers' state and adds the /v1 routes to h. Returns 0 or a CAIRN_E* code. */
int cairn_api_new(cairn_api **out, const cairn_api_params *p, cairn_http *h,
                  cairn_metrics *metrics, cairn_error *err);
/* Finishes the requests the API itself runs (embeddings) and refuses new ones with 503. Call
 * before the HTTP server is freed. Idempotent. */
void cairn_api_stop(cairn_api *a);
void cairn_api_free(cairn_api *a); /* after the HTTP server and the workers are stopped */

#endif
