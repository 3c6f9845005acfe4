/*
 * retrieval/docstore.h — the passage store: one mmap'ed file of texts and metadata.
 *
 * Each document (a passage) has a stable 64-bit id, assigned in increasing order and never
 * reused, and four NUL-terminated strings: key (where it came from: "path#3", a JSONL id),
 * title, text and metadata (a JSON object, as text). Deleting sets a tombstone; compaction
 * rewrites the file without them, keeping every surviving id.
 *
 * File layout (little-endian; see docstore.c for the exact fields):
 *   header (128 bytes: magic "CAIRNDS\0", version, uid, counts, table offset, checksums)
 *   string blobs  key\0 title\0 text\0 meta\0, one per record, appended over time
 *   record table  n_records x 40 bytes {id, blob offset, 4 lengths, flags}, sorted by id,
 *                 always last in the file
 * Appends write new blobs after the end of the file; commit writes a new table after them
 * and then the header, so a crash before the header write leaves the old state readable:
 * open reads the committed store the header describes, and a writable open cuts the
 * uncommitted tail off the file.
 * Every count, offset, length and terminator is validated on open: a corrupt or truncated
 * file gets a CAIRN_EFORMAT error naming what is wrong, never a crash.
 *
 * The uid is random, made when the file is created and kept by compaction; an IVF index
 * saved for this docstore records it (see ivf.h) so a mismatched pair is caught.
 *
 * Threads: any number of readers may call the const functions at once; a writer (append,
 * delete, commit, compact) needs exclusive access (the caller's rwlock).
 */
#ifndef CAIRN_RETRIEVAL_DOCSTORE_H
#define CAIRN_RETRIEVAL_DOCSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

typedef struct cairn_docstore cairn_docstore;

enum {
    CAIRN_DOCSTORE_WRITE = 1,  /* open for append/delete/compact */
    CAIRN_DOCSTORE_CREATE = 2, /* create an empty store when the file does not exist */
};

/* Longest string one field may hold (a passage is far smaller; the limit bounds the format). */
#define CAIRN_DOCSTORE_MAX_FIELD (64u << 20)

/* A document to append. title and meta may be NULL (empty title, "{}"). */
typedef struct {
    const char *key;
    const char *title;
    const char *text;
    const char *meta; /* a JSON object as text */
} cairn_doc_input;

/* A stored document. Strings are borrowed from the store's mapping: valid until the next
 * append, commit, compact or close. */
typedef struct {
    uint64_t id;
    bool deleted;
    const char *key, *title, *text, *meta;
    size_t key_len, title_len, text_len, meta_len;
} cairn_doc;

/*
 * Opens (or with CAIRN_DOCSTORE_CREATE makes) the store at path, validating all of it.
 * Returns 0 and *out (the caller closes it), or CAIRN_ENOTFOUND (no file, no CREATE),
 * CAIRN_EIO, CAIRN_EFORMAT (corrupt; the message says which field), CAIRN_EUNSUPPORTED
 * (newer version), CAIRN_ENOMEM.
 */
int cairn_docstore_open(cairn_docstore **out, const char *path, int flags, cairn_error *err);

/* Commits pending changes (logging a failure) and frees the store. NULL is a no-op. */
void cairn_docstore_close(cairn_docstore *ds);

/*
 * Appends n documents; their ids are consecutive from *first_id (may be NULL). Validates
 * each one first (all or nothing): text non-empty, every field valid UTF-8 without NUL
 * and under CAIRN_DOCSTORE_MAX_FIELD, meta a JSON object. Visible to get() at once;
 * durable after commit. Returns 0, CAIRN_ESTATE (read-only), CAIRN_EINVAL/EFORMAT (bad
 * document, "doc 3: ..."), CAIRN_EIO.
 */
int cairn_docstore_append(cairn_docstore *ds, const cairn_doc_input *docs, size_t n,
                          uint64_t *first_id, cairn_error *err);

/*
 * As cairn_docstore_append, with the ids given: first_id, first_id+1, ... (a replicated log
 * assigns them). first_id must not be below cairn_docstore_next_id (ids only grow; gaps are
 * allowed): CAIRN_ERANGE otherwise, and when the ids would pass INT64_MAX. Same validation
 * and errors as cairn_docstore_append; next_id becomes first_id + n.
 */
int cairn_docstore_append_ids(cairn_docstore *ds, const cairn_doc_input *docs, size_t n,
                              uint64_t first_id, cairn_error *err);

/* Sets the tombstone of id. Returns 0, CAIRN_ENOTFOUND (no such live id), CAIRN_ESTATE. */
int cairn_docstore_delete(cairn_docstore *ds, uint64_t id, cairn_error *err);

/* Writes the record table and header (fsync'ed) so that appends and deletes are durable. */
int cairn_docstore_commit(cairn_docstore *ds, cairn_error *err);

/*
 * Rewrites the file without tombstoned records or dead tables (to path.tmp, then rename),
 * keeping ids and uid. Returns 0 or CAIRN_EIO/CAIRN_ESTATE.
 */
int cairn_docstore_compact(cairn_docstore *ds, cairn_error *err);

/* The document with this id (deleted ones too; check ->deleted). 0 or CAIRN_ENOTFOUND. */
int cairn_docstore_get(const cairn_docstore *ds, uint64_t id, cairn_doc *out, cairn_error *err);

/* The i-th record in id order, i < cairn_docstore_records(ds). For iteration. */
void cairn_docstore_at(const cairn_docstore *ds, size_t i, cairn_doc *out);

size_t cairn_docstore_records(const cairn_docstore *ds); /* records, tombstoned included */
size_t cairn_docstore_live(const cairn_docstore *ds);    /* records not deleted */
uint64_t cairn_docstore_uid(const cairn_docstore *ds);   /* the store's identity */
uint64_t cairn_docstore_next_id(const cairn_docstore *ds); /* the id the next append gets */
size_t cairn_docstore_file_bytes(const cairn_docstore *ds); /* bytes in the file, committed */

#endif
