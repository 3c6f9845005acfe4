/*
 * retrieval/corpus.h — ingest documents into a docstore: files, JSONL, the default corpus.
 *
 * Documents are checked (cairn_corpus_check), split into passages of at most max_tokens
 * tokens with overlap_tokens of overlap (cairn_corpus_chunk), and appended to a docstore
 * in batches, then committed. Tokens are counted per whitespace-separated word by a
 * caller's callback (the WordPiece tokenizer counts exactly that way, since it splits on
 * whitespace first); without one, each word counts as one token.
 *
 * A document that is empty, over max_doc_bytes, binary or not UTF-8 is skipped and counted
 * in the stats by reason; a bad JSONL line is skipped and counted with its line number
 * (or, with strict, fails the call). I/O errors on the inputs or the docstore fail the call.
 * Functions here are thread-safe on distinct docstores.
 */
#ifndef CAIRN_RETRIEVAL_CORPUS_H
#define CAIRN_RETRIEVAL_CORPUS_H

#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"
#include "retrieval/docstore.h"

/* Tokens in one whitespace-free word of len bytes. Must be >= 0; called from the ingesting thread. */
typedef size_t (*cairn_corpus_count_fn)(void *ctx, const char *word, size_t len);

typedef struct {
    size_t max_tokens;     /* tokens per passage, >= 1 */
    size_t overlap_tokens; /* tokens shared by consecutive passages, < max_tokens */
    size_t max_doc_bytes;  /* larger documents are skipped as huge */
    size_t batch;          /* passages per docstore append */
    size_t max_passages;   /* stop after this many passages in one call; 0 = no limit */
    bool strict;           /* fail on the first bad JSONL line instead of skipping it */
    cairn_corpus_count_fn count_tokens; /* NULL: one token per word */
    void *count_ctx;
} cairn_corpus_params;

/* max_tokens 200, overlap_tokens 32, max_doc_bytes 4 MiB, batch 512, no limit, not strict. */
cairn_corpus_params cairn_corpus_default_params(void);

/* What an ingest call did. Counters add up over calls that share the struct. */
typedef struct {
    size_t files;           /* files read (directory ingest) */
    size_t docs;            /* documents accepted */
    size_t passages;        /* passages appended */
    size_t skipped_empty;   /* empty or only whitespace */
    size_t skipped_huge;    /* over max_doc_bytes */
    size_t skipped_binary;  /* NUL bytes or mostly control characters */
    size_t skipped_utf8;    /* invalid UTF-8 */
    size_t bad_lines;       /* JSONL lines that did not validate */
    size_t first_bad_line;  /* 1-based line number of the first, 0 when none */
    char first_bad[256];    /* its error message */
} cairn_corpus_stats;

/*
 * Whether len bytes of s are an acceptable document. Returns 0, or CAIRN_EINVAL (empty
 * or whitespace only), CAIRN_ELIMIT (over max_bytes), CAIRN_EUNSUPPORTED (binary: a NUL
 * byte, or over 10% control characters), CAIRN_EFORMAT (invalid UTF-8, with the byte offset).
 */
int cairn_corpus_check(const char *s, size_t len, size_t max_bytes, cairn_error *err);

/* Called once per passage: len bytes at s (a slice of the text, not NUL-terminated). */
typedef int (*cairn_corpus_chunk_fn)(void *ctx, const char *s, size_t len);

/*
 * Splits text into passages: maximal runs of whole words whose token counts sum to at most
 * p->max_tokens (a single longer word is a passage of its own), each starting so that it
 * repeats about p->overlap_tokens of the previous one. Whitespace-only text gives none.
 * Returns 0, CAIRN_EINVAL (bad params), CAIRN_ENOMEM, or the first nonzero fn result.
 */
int cairn_corpus_chunk(const char *text, size_t len, const cairn_corpus_params *p,
                       cairn_corpus_chunk_fn fn, void *ctx);

/*
 * Ingests every *.txt and *.md file under dir (recursively, in name order, symlinks not
 * followed). Passage key "relpath#n", title the relative path, metadata {"source", "chunk"}.
 */
int cairn_corpus_ingest_dir(cairn_docstore *ds, const char *dir, const cairn_corpus_params *p,
                            cairn_corpus_stats *st, cairn_error *err);

/*
 * Ingests a JSONL file: one object per line, {"id": string or integer, "text": string,
 * "metadata": object (optional), "title": string (optional)}; blank lines are ignored.
 * Passage key "id#n"; metadata is the line's, plus "source_id" and "chunk".
 */
int cairn_corpus_ingest_jsonl(cairn_docstore *ds, const char *path, const cairn_corpus_params *p,
                              cairn_corpus_stats *st, cairn_error *err);

/*
 * Ingests the default corpus: Debian's Translation-en stanzas (Package, Description-en and
 * its long text), as scripts/corpus leaves them. sections_path (may be NULL) is a file of
 * "package<TAB>section" lines. Title "package: synopsis"; text the long description (the
 * synopsis when there is none); key "debian:package#n"; metadata {"package", "section"?,
 * "source": "debian", "chunk"}.
 */
int cairn_corpus_ingest_debian(cairn_docstore *ds, const char *translation_path,
                               const char *sections_path, const cairn_corpus_params *p,
                               cairn_corpus_stats *st, cairn_error *err);

#endif
