/*
 * tests/fuzz/fuzz_doclog.c — the document log's entry parser (services/doclog.c) on arbitrary
 * field/value pairs, as a Redis stream entry may carry them.
 *
 * Input: a sequence of strings, each a 1-byte length (0..255) then that many bytes; they pair
 * up as field, value. A parse must end in 0 or an error code, never a crash or a leak; a parsed
 * add holds exactly n passages, each with non-empty text.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "services/doclog.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *strs[64];
    size_t lens[64], n = 0, at = 0;
    while (n < 64 && at < size) {
        size_t len = data[at++];
        if (len > size - at) len = size - at;
        strs[n] = (const char *)data + at;
        lens[n] = len;
        at += len;
        n++;
    }
    cairn_doclog_entry e;
    cairn_error err = {0};
    if (cairn_doclog_entry_parse(strs, lens, n / 2, &e, &err) == 0) {
        if (e.op == CAIRN_RAG_OP_ADD) {
            if (!e.docs || e.n == 0) abort();
            for (size_t i = 0; i < e.n; i++)
                if (!e.docs[i].text || !e.docs[i].text[0]) abort();
        }
        cairn_doclog_entry_clear(&e);
    }
    return 0;
}
