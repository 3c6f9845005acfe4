/*
 * services/rag.h — the passage index cairnd serves, and the retrieval half of a RAG request.
 *
 * A directory holds the docstore (docs.cds), the IVF index (index.ivf), its slow-tier file
 * (index.tier) and, when a corpus filled the store, corpus.stamp (retrieval/index.h; `cairn
 * index` builds the same directory). Adding or deleting documents updates all three: the IVF index is trained on
 * the first documents, later ones are added to it, and the tier file is rebuilt (the tier
 * format is immutable), then swapped in under the index lock.
 *
 * A RAG request (DESIGN "A RAG request, end to end"):
 *   1. embed the question -> q0; start the lookahead prefetch of q0's top clusters
 *      (cairn_rag_prefetch);
 *   2. the caller runs the pre-retrieval generation (rewrite or HyDE; cairn_rag_pre_prompt
 *      makes its prompt) while the prefetch runs, and embeds the result -> q1;
 *   3. hybrid search for q1 (cairn_rag_search) -> the top-k passages;
 *   4. cairn_rag_answer_prompt builds the prompt that cites them as [1], [2], ...
 *
 * Thread-safety: every function may be called from any thread; updates and searches are
 * serialised by the index's own lock (searches share it, updates take it alone).
 */
#ifndef CAIRN_SERVICES_RAG_H
#define CAIRN_SERVICES_RAG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/metrics.h"
#include "retrieval/docstore.h"
#include "retrieval/embed.h"
#include "services/api.h"

typedef struct cairn_rag cairn_rag;

typedef struct cairn_rag_params {
    const char *dir;       /* index directory (created when missing) */
    cairn_embed *embed;    /* borrowed */
    size_t fast_bytes;     /* fast-tier capacity */
    size_t prefetch_bytes; /* byte budget of one lookahead prefetch */
    const char *corpus;    /* ingested when the store is empty at open: a directory (*.txt,
                              *.md), a .jsonl file, or scripts/corpus's debian-Translation-en
                              (with debian-sections beside it); NULL: none */
    size_t corpus_max;     /* passages ingested at most; 0 = all */
} cairn_rag_params;

/* fast_bytes 64 MiB, prefetch_bytes 16 MiB. */
cairn_rag_params cairn_rag_default_params(void);

/* Opens (or creates) the index in p->dir, taking the directory's lock (dir/LOCK, flock) for
 * the handle's life. metrics may be NULL. Returns 0 and *out (cairn_rag_close), CAIRN_EBUSY
 * when another process holds the directory (the message names it and the holder's pid), or the
 * docstore/IVF/tier error with detail in err. */
int cairn_rag_open(cairn_rag **out, const cairn_rag_params *p, cairn_metrics *metrics,
                   cairn_error *err);
void cairn_rag_close(cairn_rag *r); /* NULL is a no-op */

/* Passages stored and live. */
size_t cairn_rag_count(cairn_rag *r);

/* Adds n documents (text + optional metadata JSON) and indexes them. *first_id (may be NULL)
 * gets the first id; the others follow. Returns 0 or a CAIRN_E* code (CAIRN_EINVAL for a bad
 * document, naming it). */
int cairn_rag_add(cairn_rag *r, const cairn_api_doc *docs, size_t n, uint64_t *first_id,
                  cairn_error *err);

/*
 * Chunks text (len bytes, checked by the caller) into passages as the corpus ingest does (at
 * most 200 WordPiece tokens, 32 of overlap) and adds them with key "key#n", title, and metadata
 * meta_json (a JSON object as text, may be NULL) plus "chunk": n. Nothing is added when it
 * would make more than max_passages passages (CAIRN_ELIMIT, naming the count). *first_id and
 * *n_passages (either may be NULL) get the first id and the count; ids are consecutive.
 * Returns 0 or a CAIRN_E* code; on error the index is unchanged.
 */
int cairn_rag_add_text(cairn_rag *r, const char *text, size_t len, const char *key,
                       const char *title, const char *meta_json, size_t max_passages,
                       uint64_t *first_id, size_t *n_passages, cairn_error *err);

/*
 * Calls visit for each live passage with an id above after (all of them when all is true), in
 * id order, until visit returns non-zero. The passage's strings are valid during the call only;
 * visit runs under the index's read lock and must not call back into r. Returns 0, or what
 * visit returned.
 */
int cairn_rag_scan(cairn_rag *r, uint64_t after, bool all,
                   int (*visit)(void *ctx, const cairn_doc *d), void *ctx);

/* Deletes document id from the store and the index. 0 or CAIRN_ENOTFOUND. */
int cairn_rag_delete(cairn_rag *r, uint64_t id, cairn_error *err);

/* ---- The document log's side (services/doclog.h) ----------------------------------------- */

/* Where adds and deletes go when replicas share a document log: cairn_rag_add (and so
 * cairn_rag_add_text) and cairn_rag_delete call these instead of writing the index, and the
 * log's applier writes it through cairn_rag_apply. Each returns what the call it replaces
 * returns (0 or a CAIRN_E* code with err). */
typedef struct cairn_rag_log {
    int (*add)(void *ctx, const cairn_api_doc *docs, size_t n, uint64_t *first_id,
               cairn_error *err);
    int (*del)(void *ctx, uint64_t id, cairn_error *err);
    void *ctx;
} cairn_rag_log;

/* Sets (log non-NULL) or clears the log adds and deletes go through. Call before serving. */
void cairn_rag_set_log(cairn_rag *r, const cairn_rag_log *log);

/* The id the store gives next (one past the largest ever stored). */
uint64_t cairn_rag_next_id(cairn_rag *r);

/* Whether id is stored and not deleted. */
bool cairn_rag_is_live(cairn_rag *r, uint64_t id);

typedef enum { CAIRN_RAG_OP_ADD = 1, CAIRN_RAG_OP_DEL = 2 } cairn_rag_op_kind;

/* One update with its ids given (by the log). */
typedef struct cairn_rag_op {
    cairn_rag_op_kind kind;
    uint64_t id;               /* add: the id of docs[0], the others follow; del: the id */
    const cairn_api_doc *docs; /* add: n_docs passages (text, key, title, metadata_json) */
    size_t n_docs;
    int result;    /* out: 1 applied; 0 a no-op (stored before, or deleted/absent); negative:
                      refused (the CAIRN_E* code), with why */
    char why[200]; /* out: why it was refused */
} cairn_rag_op;

/*
 * Applies ops[0..n) in order, idempotently by id: an add whose ids are all below
 * cairn_rag_next_id is a no-op (a replay), one that overlaps them is refused; a delete of an
 * absent or deleted id is a no-op. A bad document (empty text, invalid UTF-8, metadata not a
 * JSON object) refuses its op only. Texts are embedded outside the lock; the store is
 * committed once and the index and tier file are updated once for the batch. *n_done gets how
 * many ops were handled: all of them, except that while the IVF index is untrained the batch
 * ends after the first add (it trains the index; see rag.c). Returns 0, or CAIRN_ENOMEM /
 * CAIRN_EIO when the store or index failed (then *n_done is 0; a retry of the same ops is
 * safe). Called by one thread (the applier).
 */
int cairn_rag_apply(cairn_rag *r, cairn_rag_op *ops, size_t n, size_t *n_done,
                    cairn_error *err);

/* One retrieved passage; strings are malloc'ed copies (cairn_rag_hits_free). */
typedef struct cairn_rag_hit {
    uint64_t id;
    float score;
    char *text, *key, *title, *meta;
} cairn_rag_hit;
void cairn_rag_hits_free(cairn_rag_hit *hits, int n);

/* Embeds text into q (cairn_rag_dim floats). 0 or the embedder's error. */
int cairn_rag_embed(cairn_rag *r, const char *text, float *q, cairn_error *err);
int cairn_rag_dim(const cairn_rag *r);

/* Starts the lookahead prefetch for q0 (returns at once). No-op on an empty index. */
void cairn_rag_prefetch(cairn_rag *r, const float *q0);

/* The k best passages for q (k <= CAIRN_TIER_MAX_K), probing nprobe clusters (0: default).
 * hits must hold k entries; *n_hits gets how many were found. 0 or a CAIRN_E* code. */
int cairn_rag_search(cairn_rag *r, const float *q, int k, int nprobe, cairn_rag_hit *hits,
                     int *n_hits, cairn_error *err);

/* The user message for the pre-retrieval generation of mode (rewrite: a search query;
 * hyde: a hypothetical passage). Malloc'ed; NULL when out of memory. */
char *cairn_rag_pre_prompt(cairn_rag_mode mode, const char *question);

/* The user message asking to answer question from hits[0..n), cited as [1], [2], ...
 * Malloc'ed; NULL when out of memory. */
char *cairn_rag_answer_prompt(const char *question, const cairn_rag_hit *hits, int n);

#endif
