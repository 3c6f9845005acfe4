/*
 * retrieval/lexical.h — the lexical passage index: SQLite FTS5 with BM25 beside the IVF.
 *
 * One SQLite file (lexical.db in the index directory) holds, for every live passage of the
 * docstore, its title and body in an FTS5 table whose rowid is the passage id (the same id the
 * IVF stores), and its metadata's top-level scalar values in a side table, so that a metadata
 * filter is part of the SQL query rather than a pass over its results. The docstore's uid is
 * recorded in the file: an index made for another store is emptied on open, and the caller
 * refills it (cairn_lex_count then differs from the store's count).
 *
 * Ranking is FTS5's bm25() with a weight per column: the title (package name and synopsis for
 * the default corpus; the file name for uploads) counts w_title times a body match. Text is
 * tokenized by FTS5's unicode61 tokenizer with Porter stemming, on both sides. A query word
 * that many passages hold (over common_df of them: "file", "system") is looked for in titles
 * only: in bodies it ranks little (BM25's IDF is low) yet costs a score for every one of those
 * passages, and in a title it still says what a passage is about.
 *
 * User text never reaches FTS5's query syntax: cairn_lex_query splits it into words itself and
 * quotes each one, so quotes, NEAR, *, -, ^, :, parentheses and AND/OR/NOT are plain text.
 *
 * Threads: one cairn_lex may be used from several threads; the handle serialises its calls
 * with its own mutex (one SQLite connection, prepared statements reused).
 */
#ifndef CAIRN_RETRIEVAL_LEXICAL_H
#define CAIRN_RETRIEVAL_LEXICAL_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

typedef struct cairn_lex cairn_lex;

typedef struct {
    double w_title;   /* bm25() weight of the title column */
    double w_body;    /* bm25() weight of the body column */
    double common_df; /* a query word in more than this share of the passages ("common") is
                         matched in titles only; (0, 1], 1: never */
} cairn_lex_params;

/* Fitted with `cairn bench retrieval-quality --fit` (docs/RETRIEVAL.md). */
cairn_lex_params cairn_lex_default_params(void);

/*
 * Opens (creating when missing) the lexical index at path for the docstore with uid. When the
 * file was made for another uid (or is of an older layout) its passages are dropped. Returns 0
 * and *out (cairn_lex_close), or CAIRN_EIO (SQLite could not open or write it; the message has
 * SQLite's), CAIRN_EINVAL (bad params).
 */
int cairn_lex_open(cairn_lex **out, const char *path, uint64_t uid, const cairn_lex_params *p,
                   cairn_error *err);
void cairn_lex_close(cairn_lex *lx); /* NULL is a no-op */

/* A passage to index. title may be NULL; meta (a JSON object as text) may be NULL. */
typedef struct {
    uint64_t id;
    const char *title, *body, *meta;
} cairn_lex_doc;

/*
 * Indexes n passages in one transaction (all or none); an id already present is replaced.
 * Returns 0, CAIRN_EIO or CAIRN_EFORMAT (meta not a JSON object), naming the passage.
 */
int cairn_lex_add(cairn_lex *lx, const cairn_lex_doc *docs, size_t n, cairn_error *err);

/* Removes the passages ids[0..n) (absent ones are ignored), in one transaction. 0 or CAIRN_EIO. */
int cairn_lex_delete(cairn_lex *lx, const uint64_t *ids, size_t n, cairn_error *err);

/* Drops every passage. 0 or CAIRN_EIO. */
int cairn_lex_clear(cairn_lex *lx, cairn_error *err);

/* Passages indexed. */
size_t cairn_lex_count(cairn_lex *lx);

/*
 * Every indexed id, ascending, into a malloc'ed *ids (the caller frees; NULL when *n is 0).
 * Returns 0, CAIRN_ENOMEM or CAIRN_EIO.
 */
int cairn_lex_ids(cairn_lex *lx, uint64_t **ids, size_t *n, cairn_error *err);

/* A metadata filter: the passage's metadata has top-level key with this value (strings as they
 * are; numbers and booleans as JSON writes them). */
typedef struct {
    const char *key, *value;
} cairn_lex_filter;

#define CAIRN_LEX_MAX_FILTERS 8
#define CAIRN_LEX_MAX_TERMS 32 /* words of a query kept, in order */

/*
 * The k best passages for text (any bytes: it is split into words as cairn_lex_query does;
 * common words are matched in titles only, unless all are common, when the rarest is matched
 * everywhere), best first, that match every filter: ids[i] and scores[i] (BM25 negated, so
 * higher is better),
 * *n_out of them. A text without a word finds nothing (0, *n_out 0). Returns 0, CAIRN_ERANGE
 * (k < 1, more than CAIRN_LEX_MAX_FILTERS filters), CAIRN_EIO.
 */
int cairn_lex_search(cairn_lex *lx, const char *text, size_t len, const cairn_lex_filter *filters,
                     size_t n_filters, int k, uint64_t *ids, float *scores, int *n_out,
                     cairn_error *err);

/*
 * Makes the FTS5 MATCH expression for len bytes of user text: its words (maximal runs of ASCII
 * letters and digits or of non-ASCII UTF-8 characters; invalid bytes separate words), ASCII
 * lowered, English stop words dropped unless nothing else is left, repeats dropped, at most
 * CAIRN_LEX_MAX_TERMS of them and 64 bytes each, every one in double quotes, joined by OR:
 * `"terminal" OR "multiplexer"`. Writes it NUL-terminated into out (cap bytes) and returns the
 * number of words (0: nothing to search for, out ""), or -(bytes needed) when cap is too small.
 * Pure; any thread.
 */
int cairn_lex_query(const char *text, size_t len, char *out, size_t cap);

#endif
