/*
 * retrieval/index.h — building an index directory: ingest a corpus, embed it, train the IVF.
 *
 * One index directory holds the docstore (docs.cds), the IVF index (index.ivf), its slow-tier
 * file (index.tier) and a stamp (corpus.stamp) saying which corpus filled the store and how
 * many passages it was limited to, so that a later run can tell whether the cached store
 * already holds what it asks for. cairnd (services/rag.c) and `cairn index` both build
 * through these functions.
 *
 * Threads: the functions are thread-safe on distinct docstores and index objects; the
 * embedder serialises its own calls.
 */
#ifndef CAIRN_RETRIEVAL_INDEX_H
#define CAIRN_RETRIEVAL_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "retrieval/corpus.h"
#include "retrieval/docstore.h"
#include "retrieval/embed.h"
#include "retrieval/ivf.h"

#define CAIRN_INDEX_PATH_MAX 4096

/* The files of an index directory. */
typedef struct {
    char docs[CAIRN_INDEX_PATH_MAX];  /* dir/docs.cds */
    char ivf[CAIRN_INDEX_PATH_MAX];   /* dir/index.ivf */
    char tier[CAIRN_INDEX_PATH_MAX];  /* dir/index.tier */
    char stamp[CAIRN_INDEX_PATH_MAX]; /* dir/corpus.stamp */
    char format[CAIRN_INDEX_PATH_MAX]; /* dir/embed.format */
} cairn_index_paths;

/* Fills out with dir's file names. Returns 0 or CAIRN_EINVAL (dir NULL or too long). */
int cairn_index_paths_for(cairn_index_paths *out, const char *dir, cairn_error *err);

/* Which corpus filled a store: written after a successful ingest. */
typedef struct {
    char corpus[CAIRN_INDEX_PATH_MAX]; /* the corpus path, made absolute */
    size_t max_passages;               /* the limit asked for; 0 = none */
    size_t passages;                   /* passages the ingest appended */
} cairn_index_stamp;

/*
 * Reads a stamp file. Returns 0, CAIRN_ENOTFOUND (no file), CAIRN_EIO or CAIRN_EFORMAT (not
 * a stamp, with the line that is wrong).
 */
int cairn_index_stamp_read(const char *path, cairn_index_stamp *out, cairn_error *err);

/*
 * Whether a store ingested as `have` holds everything that ingesting corpus (its path, same
 * spelling rules as cairn_index_ingest) with max_passages (0 = all) would: the same corpus
 * and either no limit then, a limit at least as large as asked, or fewer passages than its
 * limit (the corpus ran out first).
 */
bool cairn_index_stamp_covers(const cairn_index_stamp *have, const char *corpus,
                              size_t max_passages);

/* Tokens the embedder's WordPiece makes of one word: a cairn_corpus_count_fn whose ctx is a
 * const cairn_wordpiece *. Passages chunked with it fit the embedder without truncation. */
size_t cairn_index_count_wordpiece(void *ctx, const char *word, size_t len);

/*
 * Ingests corpus into ds and commits: a directory (*.txt, *.md), a file ending in .jsonl,
 * or scripts/corpus's debian-Translation-en (with debian-sections beside it when present).
 * At most max_passages passages (0 = all); tokens counted with wp when not NULL (one per
 * word otherwise). On success writes stamp_path (when not NULL) describing the ingest.
 * st (may be NULL) gets the counts. Returns 0, CAIRN_ENOTFOUND (no corpus), CAIRN_EINVAL
 * (another kind of file), or the corpus/docstore error.
 */
int cairn_index_ingest(cairn_docstore *ds, const char *corpus, size_t max_passages,
                       const cairn_wordpiece *wp, const char *stamp_path,
                       cairn_corpus_stats *st, cairn_error *err);

/* What the embedder sees of a passage: "title. text" (text alone without a title), malloc'ed;
 * NULL when out of memory. Queries are embedded as they are. */
char *cairn_index_passage_text(const char *title, const char *text);

/* The passage text's format, written to dir/embed.format beside the vectors it made: an index
 * whose file is missing or says otherwise was embedded another way and must be embedded again
 * (before this file existed, passages were embedded without their titles). */
#define CAIRN_INDEX_EMBED_FORMAT "passage text: title. text"

/* Whether path holds CAIRN_INDEX_EMBED_FORMAT. */
bool cairn_index_format_current(const char *path);

/* Writes CAIRN_INDEX_EMBED_FORMAT to path (temp file and rename). Returns 0 or CAIRN_EIO. */
int cairn_index_format_write(const char *path, cairn_error *err);

/* Called after each chunk of embedded passages: done of total so far. */
typedef void (*cairn_index_progress_fn)(void *ctx, size_t done, size_t total);

/*
 * Embeds the text of every live passage of ds, in id order, in chunks of `chunk` passages
 * (0 = 256), calling progress (may be NULL) after each. *x (n * dim floats) and *ids (n)
 * are malloc'ed for the caller to free; *n gets the count (0 with NULL arrays when the store
 * is empty). Returns 0, CAIRN_ENOMEM or the embedder's error.
 */
int cairn_index_embed_store(cairn_embed *e, const cairn_docstore *ds, size_t chunk,
                            cairn_index_progress_fn progress, void *ctx, float **x,
                            int64_t **ids, size_t *n, cairn_error *err);

/*
 * A new IVF index over n vectors of dim floats: nlist = cairn_ivf_nlist_for(n), trained on
 * all n vectors, then the vectors added with ids. Returns 0 and *out (the caller closes it),
 * or the IVF error. n must be >= 1.
 */
int cairn_index_build_ivf(cairn_ivf **out, int dim, const float *x, const int64_t *ids, size_t n,
                          cairn_error *err);

#endif
