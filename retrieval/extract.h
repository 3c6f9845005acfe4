/*
 * retrieval/extract.h — the text of an uploaded file: plain text, Markdown, HTML, PDF.
 *
 * Uploads are untrusted bytes. The kind is decided from the declared content type and the file
 * name (cairn_extract_kind_for), then checked against the bytes themselves, so that a binary
 * file named .txt or a truncated PDF is refused with a message saying what is wrong instead of
 * filling the index with garbage:
 *   text, markdown  UTF-8 (a BOM is dropped), no NUL bytes, mostly printable; kept as is;
 *   html            parsed by libxml2's HTML parser (recovering from bad markup as browsers
 *                   do, never touching the network); the text of the body without scripts,
 *                   styles or templates, block elements separated by line breaks, runs of
 *                   spaces collapsed; the <title> as the title;
 *   pdf             must start with "%PDF-" and end with "%%EOF" (a file cut short has no
 *                   trailer; poppler would otherwise rebuild it and return half a document);
 *                   the text of every page through poppler's glib API, pages separated by a
 *                   blank line; the document's Title as the title. Encrypted PDFs are refused.
 * Every result is then held to cairn_corpus_check (valid UTF-8, not binary, not empty, at most
 * max_text bytes).
 *
 * Threads: every function may be called from any thread. Poppler's global state is not
 * documented as thread-safe, so PDF extraction is serialised on one lock inside extract.c.
 */
#ifndef CAIRN_RETRIEVAL_EXTRACT_H
#define CAIRN_RETRIEVAL_EXTRACT_H

#include <stddef.h>

#include "common/error.h"

typedef enum {
    CAIRN_EXTRACT_TEXT = 1,
    CAIRN_EXTRACT_MARKDOWN,
    CAIRN_EXTRACT_HTML,
    CAIRN_EXTRACT_PDF,
} cairn_extract_kind;

/* "text", "markdown", "html", "pdf"; "unknown" for anything else. Static. */
const char *cairn_extract_kind_name(cairn_extract_kind kind);

/* The MIME type of kind ("text/plain", "text/markdown", "text/html", "application/pdf"). */
const char *cairn_extract_mime(cairn_extract_kind kind);

/*
 * The kind of a file from its content type (parameters such as "; charset=utf-8" ignored; NULL,
 * "", "application/octet-stream" and curl's default "application/x-www-form-urlencoded" mean
 * none) and its name (by extension: .txt .text .md
 * .markdown .html .htm .xhtml .pdf, any case; may be NULL). Returns 0 and *out, or
 * CAIRN_EUNSUPPORTED (neither names a supported kind) or CAIRN_EINVAL (they name different
 * kinds), with the detail in err.
 */
int cairn_extract_kind_for(const char *filename, const char *content_type,
                           cairn_extract_kind *out, cairn_error *err);

/* What extraction produced; both strings malloc'ed, NUL-terminated (cairn_extract_free). */
typedef struct cairn_extract_result {
    char *text;
    size_t text_len;
    char *title; /* "" when the file names none */
} cairn_extract_result;

/*
 * Extracts the text of len bytes at data as kind. Returns 0 and *out, or CAIRN_EFORMAT (not
 * what it claims to be: a bad or truncated PDF, invalid UTF-8), CAIRN_EUNSUPPORTED (binary
 * content, an encrypted PDF), CAIRN_EINVAL (no text in it, e.g. a scanned PDF), CAIRN_ELIMIT
 * (more than max_text bytes of text), CAIRN_ENOMEM; err says which. On error *out holds
 * nothing to free.
 */
int cairn_extract(cairn_extract_kind kind, const void *data, size_t len, size_t max_text,
                  cairn_extract_result *out, cairn_error *err);

void cairn_extract_free(cairn_extract_result *r); /* zeroed or NULL: no-op */

#endif
