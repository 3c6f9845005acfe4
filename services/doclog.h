/*
 * services/doclog.h — the document log: replicas of cairnd that share one corpus through a
 * Redis stream (DESIGN "Scale-out"; docs/DEPLOY.md).
 *
 * Every add and delete is an entry of the stream "cairn:docs":
 *   add: op add  first <id>  n <count>  passages <JSON array of {key,title,text,meta}>
 *   del: op del  id <id>
 * An add takes its ids from the counter "cairn:docs:next" in the same Lua script (EVAL) that
 * appends the entry, so ids grow in the log's order whichever replica added. Each replica runs
 * one applier thread that reads the stream (XREAD BLOCK, at most 1 s so that stop is noticed)
 * from the last entry its index holds and applies it (cairn_rag_apply: idempotent by id), then
 * writes that position to dir/doclog.pos (temp file, fsync, rename) after the index commit. A
 * crash between the two replays entries that are then no-ops. An entry that does not parse or
 * validate is logged with its entry id, counted (cairn_doclog_rejected_total) and skipped.
 *
 * The replica that takes a request appends the entry and waits (bounded) until its own applier
 * has applied it, then answers with the ids: a client reads its own writes on that replica,
 * and the others follow within their read latency.
 *
 * The base corpus (rag.corpus, ingested into an empty index) must be the same everywhere: its
 * stamp (passages, next id, content hash) is recorded in Redis (cairn:docs:base, SET NX) by
 * the first replica and compared by every later one, which refuses to start on a mismatch;
 * the counter starts past the base ids (SET NX).
 */
#ifndef CAIRN_SERVICES_DOCLOG_H
#define CAIRN_SERVICES_DOCLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/metrics.h"
#include "services/api_types.h"
#include "services/rag.h"

/* Limits on one entry: passages per add (the API's per-request limit is lower) and bytes of
 * the passages field. */
#define CAIRN_DOCLOG_MAX_PASSAGES 10000
#define CAIRN_DOCLOG_MAX_BYTES (64u << 20)

/* A stream entry id "ms-seq". */
typedef struct {
    uint64_t ms, seq;
} cairn_doclog_pos;

/* Parses "ms-seq" (both decimal, no sign; "0" alone is 0-0) of len bytes. 0 or CAIRN_EINVAL. */
int cairn_doclog_pos_parse(const char *s, size_t len, cairn_doclog_pos *out);
/* -1, 0, 1 as a is before, equal to, after b. */
int cairn_doclog_pos_cmp(cairn_doclog_pos a, cairn_doclog_pos b);

/* One parsed entry. The strings of docs are owned by the entry (cairn_doclog_entry_clear). */
typedef struct {
    cairn_rag_op_kind op;
    uint64_t id;          /* add: the first id; del: the id */
    cairn_api_doc *docs;  /* add: n docs */
    size_t n;
} cairn_doclog_entry;

/*
 * Parses and validates one entry from its field/value pairs (fields[i], values[i] of
 * lens[i] bytes; 2*n_pairs strings in all, field first): the op is "add" or "del"; ids are
 * decimal below 2^63 without sign or leading zeros; an add's n is 1..CAIRN_DOCLOG_MAX_PASSAGES
 * and its passages a JSON array of exactly n objects whose "text" is a non-empty string and
 * whose key, title (strings) and meta (a JSON object) are optional; unknown fields, repeated
 * fields and NUL bytes are refused. Returns 0 and *out, or CAIRN_EINVAL / CAIRN_ELIMIT with
 * the reason in err (never crashes on any input); CAIRN_ENOMEM.
 */
int cairn_doclog_entry_parse(const char *const *strs, const size_t *lens, size_t n_pairs,
                             cairn_doclog_entry *out, cairn_error *err);
void cairn_doclog_entry_clear(cairn_doclog_entry *e);

/* The passages field of an add: a compact JSON array of {key,title,text,meta}. Malloc'ed, or
 * NULL (out of memory, or a document's metadata that is not a JSON object). */
char *cairn_doclog_passages_json(const cairn_api_doc *docs, size_t n);

typedef struct {
    const char *redis_url;   /* required */
    const char *dir;         /* the index dir (doclog.pos and doclog.base live there) */
    const char *stream;      /* default "cairn:docs" */
    const char *corpus_name; /* recorded in the base stamp for the error message; may be NULL */
    int wait_ms;             /* how long a request waits for its entry to apply; default 10000 */
    int batch;               /* entries applied per batch at most; default 64 */
} cairn_doclog_params;

cairn_doclog_params cairn_doclog_default_params(void);

typedef struct cairn_doclog cairn_doclog;

/*
 * Connects, checks or records the base stamp, sets the id counter, applies the log from the
 * position dir/doclog.pos holds (from the start when there is none) up to its current end,
 * then starts the applier thread and routes rag's adds and deletes through the log
 * (cairn_rag_set_log). rag must outlive the handle. Returns 0 and *out (cairn_doclog_close),
 * or CAIRN_ENET (Redis unreachable), CAIRN_ESTATE (base corpus mismatch; Redis lost the log
 * this index applied), CAIRN_EIO, CAIRN_ENOMEM, with a message saying what to do.
 */
int cairn_doclog_open(cairn_doclog **out, const cairn_doclog_params *p, cairn_rag *rag,
                      cairn_metrics *m, cairn_error *err);

/* Stops the applier (within about a second) and frees the handle; rag's updates are then
 * refused (CAIRN_ESTATE). NULL is a no-op. */
void cairn_doclog_close(cairn_doclog *d);

#endif
