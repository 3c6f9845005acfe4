/*
 * services/api_types.h — the parsed parts of /v1 requests that the RAG pipeline reads too:
 * retrieval options, documents, and the limit on passages a request may ask for.
 *
 * Its own header so that services/rag.h (the index and the pipeline) needs neither the API's
 * handlers (api.h) nor HTTP (http.h); api.h includes it for the parsers' users. Types only.
 */
#ifndef CAIRN_SERVICES_API_TYPES_H
#define CAIRN_SERVICES_API_TYPES_H

#include <stdbool.h>
#include <stddef.h>

#include "retrieval/fuse.h"

/* The most passages one retrieval may return (k of /v1/retrieve, /v1/rag and chat's `rag`):
 * the default of cairn_api_limits.max_k, and what the API and the pipeline size their passage
 * arrays by. At most retrieval's own maximum (CAIRN_TIER_MAX_K; rag.c checks). */
#define CAIRN_RAG_MAX_K 100

typedef enum { CAIRN_RAG_NONE = 0, CAIRN_RAG_REWRITE, CAIRN_RAG_HYDE } cairn_rag_mode;

#define CAIRN_API_MAX_FILTERS 8 /* metadata filter keys per request */

typedef struct cairn_api_rag {
    bool enabled;        /* the request asked for retrieval */
    int k;               /* passages, 1..max_k (default 4) */
    int nprobe;          /* clusters probed; 0 = the index's default */
    cairn_rag_mode mode; /* pre-retrieval generation */
    cairn_search_mode search; /* dense, lexical or hybrid (default) */
    bool no_prefix;      /* answer_prefix: false: no opening written for the answer (rag.h,
                            cairn_rag_ask.answer_prefix) */
    /* filter: {"key": value, ...}: passages whose metadata has every key with that value
     * (strings as they are, numbers and booleans as JSON writes them). Keys point into the
     * request's JSON; values into it or into fval_buf. */
    size_t n_filters;
    const char *fkey[CAIRN_API_MAX_FILTERS], *fval[CAIRN_API_MAX_FILTERS];
    char fval_buf[CAIRN_API_MAX_FILTERS][32];
} cairn_api_rag;

/* A document's id as POST /v1/documents makes it ("doc-" and 16 hex digits), with its NUL. */
#define CAIRN_API_DOC_ID_SIZE 21

typedef struct cairn_api_doc {
    const char *text;
    size_t text_len;
    const char *metadata_json; /* compact JSON object (malloc'ed), or NULL */
    const char *key;           /* where it came from; NULL: "api" */
    const char *title;         /* NULL: none */
} cairn_api_doc;

#endif
