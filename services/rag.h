/*
 * services/rag.h — the passage index cairnd serves, and the RAG pipeline up to the answer.
 *
 * A directory holds the docstore (docs.cds), the IVF index (index.ivf), its slow-tier file
 * (index.tier), the lexical index (lexical.db, retrieval/lexical.h) and, when a corpus filled
 * the store, corpus.stamp (retrieval/index.h; `cairn index` builds the same directory). Adding
 * or deleting documents updates all of them: the IVF index is trained on the first documents,
 * later ones are added to it, and the tier file is rebuilt (the tier format is immutable), then
 * swapped in under the index lock; the lexical index gets the same passages and ids. A lexical
 * index whose count differs from the store's at open is refilled from the store.
 *
 * Search modes: dense (the IVF), lexical (BM25 over title and body) and hybrid (both, fused by
 * retrieval/fuse.h), the default.
 *
 * A RAG request (DESIGN "A RAG request, end to end"), cairn_rag_pipeline:
 *   1. embed the question -> q0; start the lookahead prefetch of q0's top clusters
 *      (cairn_rag_prefetch);
 *   2. run the pre-retrieval generation (rewrite or HyDE; cairn_rag_pre_prompt makes its
 *      prompt) on the workers while the prefetch runs, and embed the result -> q1;
 *   3. hybrid search for q1 (cairn_rag_query_run) -> the top-k passages;
 *   4. build the messages that cite them as [1], [2], ... (cairn_rag_answer_prompt); the
 *      caller hands them to the workers for the answer (services/api.c streams it out).
 *
 * Building in the background (params.background, what cairnd does): when the store holds
 * passages that the index lacks (a fresh corpus ingest, a lost or outdated index), open returns
 * at once and a thread embeds them, a batch at a time, adding each batch to the lexical index and
 * to a flat set of vectors that dense search scans exactly; searches answer over what is indexed
 * so far (cairn_rag_get_status says how much). Each batch is also appended to index.partial, so
 * a stop (close, SIGTERM, a crash) loses at most a batch and the next open resumes. When every
 * passage is in, the IVF index is trained on the flat set and written with its tier file, and
 * embed.format last: an index without it is never served as complete. Adds and deletes during
 * the build go to the flat set and the lexical index.
 *
 * Thread-safety: every function may be called from any thread; updates and searches are
 * serialised by the index's own lock (searches share it, updates take it alone).
 */
#ifndef CAIRN_SERVICES_RAG_H
#define CAIRN_SERVICES_RAG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/error.h"
#include "common/metrics.h"
#include "generation/chat.h"
#include "retrieval/docstore.h"
#include "retrieval/embed.h"
#include "retrieval/fuse.h"
#include "retrieval/lexical.h"
#include "services/api_types.h"

struct cairn_workers;
struct cairn_tok;

typedef struct cairn_rag cairn_rag;

typedef struct cairn_rag_params {
    /* The strings are read during cairn_rag_open only: they need not outlive it. */
    const char *dir;       /* index directory (created when missing) */
    cairn_embed *embed;    /* borrowed */
    size_t fast_bytes;     /* fast-tier capacity */
    size_t prefetch_bytes; /* byte budget of one lookahead prefetch when the generation it
                              overlaps has no predicted duration, or the fast tier no measured
                              copy rate (RAM) */
    const char *corpus;    /* ingested when the store is empty at open: a directory (*.txt,
                              *.md), a .jsonl file, or scripts/corpus's debian-Translation-en
                              (with debian-sections beside it); NULL: none */
    size_t corpus_max;     /* passages ingested at most; 0 = all */
    bool background;       /* embed what the index lacks on a thread of its own (see above);
                              false: open embeds it before returning */
    cairn_lex_params lex;  /* column weights of the lexical index */
    cairn_fuse_params fuse; /* hybrid fusion */
} cairn_rag_params;

/* fast_bytes 64 MiB, prefetch_bytes 16 MiB, lex and fuse their modules' defaults. */
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

/* How far the index is: a background build's progress. */
typedef struct cairn_rag_status {
    bool complete;  /* no build runs: every live passage is in both indexes */
    bool failed;    /* the build stopped on an error (logged); what it indexed is served */
    size_t indexed; /* passages searchable (in both indexes) */
    size_t total;   /* live passages in the store */
    double rate;    /* passages/s the build embeds (0 before its first batch) */
    double eta_s;   /* seconds left at that rate; -1 when unknown */
} cairn_rag_status;

/* Fills st. Lock-free: for /health and progress lines, from any thread. */
void cairn_rag_get_status(cairn_rag *r, cairn_rag_status *st);

/* {"complete": bool, "passages": indexed, "total": total}: what a response says of the index
 * it searched. A new reference (NULL when out of memory). */
json_t *cairn_rag_status_json(cairn_rag *r);

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
 * cairn_rag_add_text for n texts at once (texts[i]: text, text_len, key, title, metadata_json):
 * each is chunked with its own key ("key#n"), title and metadata plus "chunk": n, and all the
 * passages are added in one cairn_rag_add, their ids consecutive in text order. counts (n
 * entries; may be NULL) gets each text's passage count. max_passages bounds them all together
 * (CAIRN_ELIMIT). Returns 0 or a CAIRN_E* code naming the text; on error nothing is added.
 */
int cairn_rag_add_texts(cairn_rag *r, const cairn_api_doc *texts, size_t n, size_t max_passages,
                        uint64_t *first_id, size_t *counts, cairn_error *err);

/*
 * Deletes every live passage whose metadata has the top-level string key = value (the chunks
 * of one document), in one update of the store and the indexes (or one document-log entry
 * each). *n_deleted (may be NULL) gets how many. Returns 0, CAIRN_ENOTFOUND (none has it), or
 * the store's/index's error.
 */
int cairn_rag_delete_where(cairn_rag *r, const char *key, const char *value, size_t *n_deleted,
                           cairn_error *err);

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
    float score;    /* dense: inner product; lexical: -BM25; hybrid: the fused score */
    unsigned from;  /* CAIRN_FUSE_DENSE | CAIRN_FUSE_LEXICAL: the list(s) it came from */
    int dense_rank; /* 1-based rank in the dense list, 0: not in it */
    int lex_rank;   /* 1-based rank in the lexical list, 0: not in it */
    char *text, *key, *title, *meta;
} cairn_rag_hit;
void cairn_rag_hits_free(cairn_rag_hit *hits, int n);

/* Embeds text into q (cairn_rag_dim floats). 0 or the embedder's error. */
int cairn_rag_embed(cairn_rag *r, const char *text, float *q, cairn_error *err);
int cairn_rag_dim(const cairn_rag *r);

/*
 * Starts the lookahead prefetch for q0 (returns at once). Its byte budget: the fast tier's copy
 * rate (measured at open) times predicted_s, the predicted duration of the pre-retrieval
 * generation it overlaps (the workers' predictor); prefetch_bytes when predicted_s <= 0 or the
 * tier has no measured rate. No-op on an empty index.
 */
void cairn_rag_prefetch(cairn_rag *r, const float *q0, double predicted_s);

/* The k best passages for q (k <= CAIRN_TIER_MAX_K), probing nprobe clusters (0: default), by
 * the dense index alone (cairn_rag_query_run in dense mode).
 * hits must hold k entries; *n_hits gets how many were found. 0 or a CAIRN_E* code. */
int cairn_rag_search(cairn_rag *r, const float *q, int k, int nprobe, cairn_rag_hit *hits,
                     int *n_hits, cairn_error *err);

/*
 * The dense similarity (inner product with q, cairn_rag_dim floats) of the passages ids[0..n)
 * (n <= CAIRN_TIER_MAX_K) from their stored vectors, into out; NaN for a passage without one
 * (deleted, or not embedded yet). What hybrid fusion's fill uses (retrieval/fuse.h). Returns
 * 0 or CAIRN_ERANGE.
 */
int cairn_rag_dense_scores(cairn_rag *r, const float *q, const uint64_t *ids, int n, float *out,
                           cairn_error *err);

/* What one search asks for. */
typedef struct cairn_rag_query {
    cairn_search_mode mode;
    const char *text;  /* the query text: lexical and hybrid need it */
    const float *q;    /* its embedding (cairn_rag_dim floats): dense and hybrid need it */
    int k;             /* passages wanted, 1..CAIRN_TIER_MAX_K */
    int nprobe;        /* IVF clusters probed; 0: the index's default */
    const cairn_lex_filter *filters; /* metadata key = value, all must hold; may be NULL */
    size_t n_filters;  /* <= CAIRN_LEX_MAX_FILTERS */
} cairn_rag_query;

/* How a search went: seconds in each list, and what each list found. */
typedef struct cairn_rag_search_stats {
    double dense_s, lexical_s, fuse_s;
    int n_dense, n_lexical;
} cairn_rag_search_stats;

/*
 * The q->k best passages for q in its mode, best first, with the metadata filters applied
 * (inside the SQL query for the lexical list; to the IVF's candidates, of which up to
 * CAIRN_TIER_MAX_K are looked at, for the dense one). hits must hold q->k entries; *n_hits
 * gets how many were found; st (may be NULL) gets the timings. Observes
 * cairn_retrieval_search_seconds{mode} and counts each returned passage in
 * cairn_retrieval_results_total{list}. Returns 0, CAIRN_EINVAL (a mode without the text or
 * embedding it needs), CAIRN_ERANGE, CAIRN_EIO, CAIRN_ENOMEM.
 */
int cairn_rag_query_run(cairn_rag *r, const cairn_rag_query *q, cairn_rag_hit *hits, int *n_hits,
                        cairn_rag_search_stats *st, cairn_error *err);

/*
 * As cairn_rag_query_run, embedding q->text first (into embedding, cairn_rag_dim floats, for
 * dense and hybrid; q->q is ignored) as /v1/retrieve and `cairn search` need: in hybrid mode the
 * lexical list is searched on a second thread while the query is embedded and the dense list
 * searched, so hybrid costs about the longer of the two rather than their sum. *embed_s (may be
 * NULL) gets the embedding's seconds (0 when the mode needs none). Returns as
 * cairn_rag_query_run, or the embedder's error.
 */
int cairn_rag_retrieve(cairn_rag *r, const cairn_rag_query *q, float *embedding, double *embed_s,
                       cairn_rag_hit *hits, int *n_hits, cairn_rag_search_stats *st,
                       cairn_error *err);

/*
 * The passage ids each index holds, ascending, malloc'ed (the caller frees; NULL when the
 * count is 0): the IVF's into *dense, the lexical index's into *lexical. For checks that the
 * two agree. Returns 0 or CAIRN_ENOMEM/CAIRN_EIO.
 */
int cairn_rag_index_ids(cairn_rag *r, uint64_t **dense, size_t *n_dense, uint64_t **lexical,
                        size_t *n_lexical, cairn_error *err);

/* The query of a retrieval request's options o for cairn_rag_query_run: text, and q (ignored
 * in lexical mode); filters (CAIRN_API_MAX_FILTERS entries, the caller's) get o's filters and
 * point into o. */
cairn_rag_query cairn_rag_query_of(const cairn_api_rag *o, const char *text, const float *q,
                                   cairn_lex_filter *filters);

/* Passages as the API returns them: id, score, text, key, metadata, and `retrieved_by` (dense,
 * lexical, both) with the rank each list gave (null: not in that list). A new JSON array, or
 * NULL when out of memory. */
json_t *cairn_rag_hits_json(const cairn_rag_hit *h, int n);

/* ---- The answer's prompt ------------------------------------------------------------------- */

/* The system prompt of a RAG answer: answer from the numbered passages, name the package or
 * document the answer comes from, cite [n]. Static text. */
extern const char *const cairn_rag_default_system;

/* "Use": how an answer recommending a software package opens (the worked example's answer
 * does too), so that a small model names the package first. Static text. */
extern const char *const cairn_rag_package_prefix;

/* How the answer's prompt is made. */
typedef struct cairn_rag_prompt_params {
    const cairn_chat_template *tmpl; /* the model's chat format; NULL: a plain prompt (a model
                                        without a template) */
    const struct cairn_tok *tok;     /* counts tokens for budget; NULL: no budget */
    int budget;                      /* tokens the whole prompt may take (with tok) */
    int passage_tokens;              /* each passage cut to this many tokens first (with tok);
                                        0: whole */
    const char *answer_prefix;       /* the answer's first words, written into the prompt after
                                        the assistant's turn opens (the model goes on from them);
                                        NULL: none */
    bool prefix_with_passages;       /* answer_prefix only when a passage fits (the default
                                        "Use" opening: with none, it would push the model to
                                        name a package it was not shown) */
    const char *system;              /* NULL: cairn_rag_default_system */
    bool example;                    /* a worked example (made-up passages, a question and the
                                        answer in the form the system prompt asks for) before
                                        the question: two earlier turns with a template, the
                                        same text before the passages plain */
    bool best_last;                  /* the passages in reverse rank order, the best next to the
                                        question (still numbered by rank: [1] is the best) */
} cairn_rag_prompt_params;

/* An answer's prompt; cairn_rag_prompt_free releases it. */
typedef struct cairn_rag_prompt {
    char *text;            /* the prompt (malloc'ed, NUL-terminated) */
    size_t len;
    int tok_flags;         /* how to tokenize it (special tokens parsed for a template) */
    cairn_chat_msg *msgs;  /* with a template: the messages rendered into text (n_msgs); the
                              system and the question's turn are owned here, the rest borrowed
                              from the caller's messages */
    size_t n_msgs;
    char *strs[2];         /* the owned strings msgs point to */
    const char *answer_prefix; /* the answer's first words, written after the assistant's turn
                              opens (the model went on from them: they belong to the answer,
                              before the generated text); NULL: none. Borrowed from the params */
    int n_passages;        /* passages in it: the first n_passages hits */
    int n_truncated;       /* of them, cut short (to passage_tokens, or to fit the budget) */
    int tokens;            /* its length in tokens (0 without a tokenizer) */
} cairn_rag_prompt;

/*
 * The prompt that answers question (or, with msgs, the last user message of a chat, whose
 * other turns are kept) from hits[0..n): a system turn (p->system, merged before a system
 * message of the chat's own), then the user's turn with the passages numbered [1], [2], ...,
 * each headed by its title (the default corpus: "package: synopsis") or key, and the question;
 * rendered with p->tmpl, or as plain text ending in "Answer:" without one. With p->tok the
 * prompt is kept within p->budget tokens: the passages are cut to a common length (the
 * shortest kept whole, water-filling), and passages at the end are left out when fewer than
 * 32 tokens each would remain. Returns 0 and *out (cairn_rag_prompt_free), CAIRN_EINVAL (no
 * question, a role the template refuses), CAIRN_ELIMIT (the question alone is over the
 * budget), CAIRN_ENOMEM. Pure and thread-safe.
 */
int cairn_rag_prompt_build(const char *question, const cairn_chat_msg *msgs, size_t n_msgs,
                           const cairn_rag_hit *hits, int n, const cairn_rag_prompt_params *p,
                           cairn_rag_prompt *out, cairn_error *err);
void cairn_rag_prompt_free(cairn_rag_prompt *pr); /* zeroed: no-op */

/* ---- The pipeline ------------------------------------------------------------------------ */

/* What one RAG request asks. */
typedef struct cairn_rag_ask {
    const char *question;        /* /v1/rag's question; NULL: the last user message of msgs */
    const cairn_chat_msg *msgs;  /* a chat's messages (borrowed), or NULL */
    size_t n_msgs;
    const cairn_api_rag *opts;   /* k, nprobe, rewrite/HyDE, search mode, filters */
    int max_tokens;              /* the answer's tokens: kept free in the context (at most half
                                    of it) */
    bool plain;                  /* a plain prompt, not the model's chat template */
    int passage_tokens;          /* cairn_rag_prompt_params.passage_tokens */
    const char *answer_prefix;   /* cairn_rag_prompt_params.answer_prefix; NULL: the default,
                                    cairn_rag_package_prefix when the best passage describes a
                                    software package (its metadata has a "package" string: the
                                    default corpus), none otherwise */
    bool no_prefix;              /* no answer prefix, not even the default (as opts->no_prefix,
                                    a request's answer_prefix: false) */
    const char *system;          /* the system prompt; NULL: cairn_rag_default_system */
    bool no_example;             /* leave out the prompt's worked example (shown by default:
                                    cairn_rag_prompt_params.example) */
    bool best_first;             /* the passages best first (default: best last, next to the
                                    question; cairn_rag_prompt_params.best_last) */
    struct cairn_workers *workers; /* borrowed: runs the rewrite/HyDE generation; its chat
                                      template, tokenizer and context shape the prompt */
} cairn_rag_ask;

/* What the pipeline hands to the answer step; cairn_rag_result_free releases it. */
typedef struct cairn_rag_result {
    cairn_rag_hit *hits;   /* the passages, best first (n_hits) */
    int n_hits;
    char *pre_text;        /* the rewrite/HyDE text, or NULL */
    cairn_rag_prompt prompt; /* the answer's prompt: the passages in it, truncation */
    double embed_s, pre_s, search_s;
    cairn_rag_search_stats ss;
} cairn_rag_result;

/*
 * Steps 1-4 of a RAG request on the calling thread (the pre-retrieval generation waits for the
 * workers). Returns 0 and *out (cairn_rag_result_free), or a CAIRN_E* code with err:
 * CAIRN_EINVAL (no user message), CAIRN_ECANCELED (the rewrite/HyDE generation failed),
 * CAIRN_ELIMIT (the question alone fills the context), the embedder's, the search's or the
 * workers' error. Any thread but a worker's.
 */
int cairn_rag_pipeline(cairn_rag *r, const cairn_rag_ask *ask, cairn_rag_result *out,
                       cairn_error *err);
void cairn_rag_result_free(cairn_rag_result *res); /* zeroed: no-op */

/*
 * Runs one generation of prompt (tokenized with tok_flags) on the workers, greedy, to its end
 * or max_tokens or a stop string, and waits for it. Returns the text (malloc'ed), or NULL with
 * err (the workers' refusal, or CAIRN_ECANCELED naming why the generation failed). Any thread
 * but a worker's.
 */
char *cairn_rag_generate(struct cairn_workers *w, const char *prompt, size_t len, int tok_flags,
                         int max_tokens, const char *const *stop, int n_stop, cairn_error *err);

/* The user message for the pre-retrieval generation of mode (rewrite: a search query;
 * hyde: a hypothetical passage). Malloc'ed; NULL when out of memory. */
char *cairn_rag_pre_prompt(cairn_rag_mode mode, const char *question);

#endif
