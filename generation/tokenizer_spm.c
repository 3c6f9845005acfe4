/*
 * generation/tokenizer_spm.c — the SentencePiece-BPE half of the tokenizer (Gemma, Llama 2):
 * spaces become U+2581, symbols merge highest-score-first while the merged text is in the
 * vocabulary, and what stays outside it falls back to <0xNN> byte tokens (llama.cpp's
 * llm_tokenizer_spm, token for token).
 */
#include <string.h>

#include "generation/tokenizer_internal.h"

int cairn__tok_spm_fragment(enc *e, const char *text, size_t len, bool prefix_space)
{
    const cairn_tok *t = e->t;
    if (!cairn__tok_grow((void **)&e->buf, &e->buf_cap, 3 * len + 4, 1)) {
        return CAIRN_ENOMEM;
    }
    size_t m = 0;
    if (prefix_space) {
        memcpy(e->buf, "\xE2\x96\x81", 3), m = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(e->buf + m, "\xE2\x96\x81", 3), m += 3;
        } else {
            e->buf[m++] = (uint8_t)text[i];
        }
    }
    if (m == 0) {
        return 0;
    }
    int32_t nsym;
    int rc = cairn__tok_merge(e, e->buf, m, &nsym);
    if (rc < 0) {
        return rc;
    }
    for (int32_t i = 0; i != -1; i = e->syms[i].next) {
        const sym *y = &e->syms[i];
        int32_t id = cairn_tok_find(t, (const char *)e->buf + y->start, y->n);
        if (id >= 0) {
            emit(e, id);
            continue;
        }
        for (uint32_t j = 0; j < y->n; j++) {
            emit(e, t->byte_tok[e->buf[y->start + j]]);
        }
    }
    return 0;
}
