/*
 * tests/fuzz/fuzz_lexquery.c — libFuzzer target for the lexical query builder
 * (cairn_lex_query, retrieval/lexical.h) and the FTS5 search it feeds.
 *
 * Input: any bytes, taken as a user's query text. Checks: no crash or sanitizer report; the
 * expression is "t" or "t1" OR "t2" ... with at most CAIRN_LEX_MAX_TERMS terms, each 1..64
 * bytes of lower-case ASCII letters, digits or non-ASCII UTF-8, so it is valid UTF-8 with no
 * FTS5 syntax outside the quotes; a buffer one byte short is refused with the size needed; and
 * searching an in-memory index with the text never fails (FTS5 never sees syntax it could
 * reject) and returns only ids the index holds.
 *
 * Seed corpus: tests/fuzz/corpus/lexquery/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"
#include "retrieval/lexical.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static cairn_lex *lx;

static void open_index(void)
{
    cairn_error err = {0};
    if (cairn_lex_open(&lx, ":memory:", 1, NULL, &err)) abort();
    static const cairn_lex_doc docs[] = {
        {1, "tmux: terminal multiplexer", "detach and reattach sessions near here", "{\"a\":1}"},
        {2, "café: naïve AND OR NOT", "\"quoted\" (parens) * - ^ : {braces}", "{}"},
    };
    if (cairn_lex_add(lx, docs, 2, &err)) abort();
}

/* Checks one term of len bytes. */
static void check_term(const char *t, size_t len)
{
    if (len < 1 || len > 64) abort();
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c < 0x80 && !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!lx) open_index();
    const char *text = (const char *)data;
    char out[4096];
    int n = cairn_lex_query(text, size, out, sizeof out);
    if (n < 0 || n > CAIRN_LEX_MAX_TERMS) abort(); /* 4096 bytes always suffice */
    size_t len = strlen(out);
    if (!cairn_utf8_valid(out, len)) abort();
    /* parse it back: "t" ( OR "t" )* */
    int terms = 0;
    for (size_t i = 0; i < len;) {
        if (terms && strncmp(out + i, " OR ", 4) != 0) abort();
        if (terms) i += 4;
        if (out[i] != '"') abort();
        const char *end = memchr(out + i + 1, '"', len - i - 1);
        if (!end) abort();
        check_term(out + i + 1, (size_t)(end - (out + i + 1)));
        i = (size_t)(end - out) + 1;
        terms++;
    }
    if (terms != n) abort();
    if (n == 0 && len != 0) abort();
    if (len > 0) {
        char small[4096];
        if (cairn_lex_query(text, size, small, len) != -(int)(len + 1)) abort();
    }
    uint64_t ids[4];
    float sc[4];
    int found = -1;
    cairn_error err = {0};
    if (cairn_lex_search(lx, text, size, NULL, 0, 4, ids, sc, &found, &err) != 0) abort();
    if (found < 0 || found > 2 || (n == 0 && found != 0)) abort();
    for (int i = 0; i < found; i++)
        if (ids[i] != 1 && ids[i] != 2) abort();
    return 0;
}
