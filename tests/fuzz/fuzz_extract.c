/*
 * tests/fuzz/fuzz_extract.c — libFuzzer target for the text extraction of uploads
 * (retrieval/extract.h): HTML through libxml2, PDF through poppler, plain text.
 *
 * Input: byte 0 picks the kind (modulo 4: text, markdown, html, pdf), the rest is the file.
 * Checks: no crash or sanitizer report; a failure has a negative code and a message and leaves
 * nothing to free; a success gives non-empty, valid UTF-8 text of at most the limit, without
 * NUL bytes, and a title of at most 200 bytes.
 *
 * Seed corpus: tests/fuzz/corpus/extract/ (a page with scripts, entities and broken markup;
 * a small PDF, the same cut short, and one with its cross-reference table torn out).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "retrieval/extract.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static const cairn_extract_kind kinds[] = {CAIRN_EXTRACT_TEXT, CAIRN_EXTRACT_MARKDOWN,
                                               CAIRN_EXTRACT_HTML, CAIRN_EXTRACT_PDF};
    const size_t max_text = 64 << 10;
    cairn_extract_result r;
    cairn_error err = {0};
    int rc = cairn_extract(kinds[data[0] % 4], data + 1, size - 1, max_text, &r, &err);
    if (rc) {
        if (rc > 0 || !err.msg[0] || r.text || r.title) abort();
        return 0;
    }
    if (!r.text || !r.title || r.text_len == 0 || r.text_len > max_text) abort();
    if (strlen(r.text) != r.text_len || !cairn_json_utf8_valid(r.text, r.text_len)) abort();
    if (strlen(r.title) > 200) abort();
    cairn_extract_free(&r);
    return 0;
}
