/*
 * tests/fuzz/fuzz_tokenizer.c — libFuzzer target for generation/tokenizer.
 *
 * Input: byte 0 picks the tokenizer and the operation, the rest is the payload.
 *   bit 0..1  tokenizer: 0 a small SentencePiece vocabulary, 1 a small byte-level BPE one
 *             (llama-bpe rules), 2 the same with smollm rules, 3 qwen2 rules; all built in
 *             memory with cairn's GGUF writer at start-up; when CAIRN_FUZZ_TOKENIZER_GGUF names
 *             a model file (e.g. the real gemma-3-270m), selector 2 uses that vocabulary
 *             instead.
 *   bit 2     operation: 0 encode the payload as text, 1 decode it as little-endian int32 ids
 *   bit 3..4  encode flags (ADD_SPECIAL, PARSE_SPECIAL); decode flag DECODE_SPECIAL
 * Checks: no crash or sanitizer report; encode counts agree between a sizing call and a real
 * one; every id produced is in range; valid UTF-8 text without special parsing round-trips
 * through the SentencePiece tokenizer; decode of arbitrary ids never overruns.
 *
 * Build: clang -fsanitize=fuzzer,address,undefined with cairn_all (CMake option CAIRN_FUZZ).
 * Seed corpus: tests/fuzz/corpus/tokenizer/.
 */
#define _GNU_SOURCE /* memmem */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generation/tokenizer.h"
#include "proto/gguf.h"

static cairn_tok *toks[4];

static cairn_tok *build(const char *model, const char *pre)
{
    /* Vocabulary: control tokens, the 256 byte tokens (SPM) or the GPT-2 byte alphabet (BPE),
     * and a few merged tokens. */
    const char *fixed_spm[] = {"<pad>",
                               "<eos>",
                               "<bos>",
                               "<unk>",
                               "<start_of_turn>",
                               "<end_of_turn>",
                               "\xE2\x96\x81",
                               "\xE2\x96\x81t",
                               "he",
                               "\xE2\x96\x81the",
                               "in",
                               "\xE2\x96\x81\xE2\x96\x81",
                               "  ",
                               "<b>"};
    const int fixed_spm_types[] = {3, 3, 3, 2, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4};
    const char *fixed_bpe[] = {
        "<|begin_of_text|>", "<|eot_id|>", "<|im_end|>",       "\xC4\xA0t", "he",
        "\xC4\xA0the",       "in",         "\xC4\xA0\xC4\xA0", "<tool>"};
    const int fixed_bpe_types[] = {3, 3, 3, 1, 1, 1, 1, 1, 4};
    const char *merges[] = {"\xC4\xA0 t", "h e", "\xC4\xA0t he", "i n", "\xC4\xA0 \xC4\xA0"};
    bool spm = strcmp(model, "llama") == 0;
    size_t nf = spm ? sizeof fixed_spm / sizeof *fixed_spm : sizeof fixed_bpe / sizeof *fixed_bpe;
    size_t n = nf + 256;
    const char **strs = calloc(n, sizeof *strs);
    char(*bytes)[8] = calloc(256, 8);
    int32_t *types = calloc(n, sizeof *types);
    float *scores = calloc(n, sizeof *scores);
    for (size_t i = 0; i < nf; i++) {
        strs[i] = spm ? fixed_spm[i] : fixed_bpe[i];
        types[i] = spm ? fixed_spm_types[i] : fixed_bpe_types[i];
        scores[i] = -(float)i;
    }
    int next = 256;
    for (int b = 0; b < 256; b++) {
        if (spm) {
            snprintf(bytes[b], 8, "<0x%02X>", b);
            types[nf + (size_t)b] = 6;
        } else {
            bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
            unsigned cp = self ? (unsigned)b : (unsigned)next++;
            if (cp < 0x80) {
                bytes[b][0] = (char)cp;
            } else {
                bytes[b][0] = (char)(0xC0 | (cp >> 6));
                bytes[b][1] = (char)(0x80 | (cp & 0x3F));
            }
            types[nf + (size_t)b] = 1;
        }
        strs[nf + (size_t)b] = bytes[b];
        scores[nf + (size_t)b] = -1000.0f;
    }
    cairn_gguf_writer *w = NULL;
    cairn_tok *t = NULL;
    void *mem = NULL;
    size_t len = 0;
    cairn_gguf *g = NULL;
    if (cairn_gguf_writer_new(&w, NULL) == 0 &&
        cairn_gguf_writer_add_str(w, "tokenizer.ggml.model", model, NULL) == 0 &&
        (!pre || cairn_gguf_writer_add_str(w, "tokenizer.ggml.pre", pre, NULL) == 0) &&
        cairn_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", strs, n, NULL) == 0 &&
        cairn_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", CAIRN_GGUF_KV_I32, types, n,
                                  NULL) == 0 &&
        cairn_gguf_writer_add_arr(w, "tokenizer.ggml.scores", CAIRN_GGUF_KV_F32, scores, n, NULL) ==
            0 &&
        (spm || cairn_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, 5, NULL) == 0) &&
        cairn_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", spm ? 2 : 0, NULL) == 0 &&
        cairn_gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", false, NULL) == 0 &&
        cairn_gguf_writer_write_memory(w, &mem, &len, NULL) == 0 &&
        cairn_gguf_open_memory(&g, mem, len, NULL) == 0) {
        if (cairn_tok_open(&t, g, NULL) != 0) {
            t = NULL;
        }
    }
    cairn_gguf_close(g);
    free(mem);
    cairn_gguf_writer_free(w);
    free(strs);
    free(bytes);
    free(types);
    free(scores);
    if (!t) {
        abort(); /* the fixed vocabularies must load */
    }
    return t;
}

static void init(void)
{
    toks[0] = build("llama", NULL);
    toks[1] = build("gpt2", "llama-bpe");
    toks[3] = build("gpt2", "qwen2");
    toks[2] = build("gpt2", "smollm");
    const char *path = getenv("CAIRN_FUZZ_TOKENIZER_GGUF");
    cairn_gguf *g = NULL;
    if (path && cairn_gguf_open(&g, path, NULL) == 0) {
        cairn_tok *t = NULL;
        if (cairn_tok_open(&t, g, NULL) == 0) {
            cairn_tok_close(toks[2]);
            toks[2] = t;
        }
        cairn_gguf_close(g);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!toks[0]) {
        init();
    }
    if (size < 1) {
        return 0;
    }
    uint8_t sel = data[0];
    const cairn_tok *t = toks[sel & 3];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    if (!(sel & 4)) {
        int flags =
            (sel & 8 ? CAIRN_TOK_ADD_SPECIAL : 0) | (sel & 16 ? CAIRN_TOK_PARSE_SPECIAL : 0);
        int need = cairn_tok_encode(t, text, len, NULL, 0, flags, NULL);
        if (need == CAIRN_TOK_ENCODE_FAILED) {
            return 0;
        }
        int n_need = need < 0 ? -need : need;
        int32_t *ids = malloc(((size_t)n_need + 1) * sizeof *ids);
        int n = cairn_tok_encode(t, text, len, ids, n_need, flags, NULL);
        if (n != n_need) {
            abort();
        }
        for (int i = 0; i < n; i++) {
            if (ids[i] < 0 || ids[i] >= cairn_tok_vocab_size(t)) {
                abort();
            }
        }
        size_t cap = (size_t)n * 64 + len + 1, out_len = 0;
        char *buf = malloc(cap);
        if (cairn_tok_decode(t, ids, (size_t)n, 0, buf, cap, &out_len, NULL) != 0) {
            abort();
        }
        /* SentencePiece round-trips valid UTF-8 text when nothing special is added or parsed
         * (user-defined tokens decode raw, so they round-trip too): a mismatch is a bug. */
        if (t == toks[0] && flags == 0 && cairn_tok_utf8_complete(text, len) == len) {
            bool valid = true;
            for (size_t i = 0; i < len;) { /* strict check: every sequence complete */
                uint8_t b = (uint8_t)text[i];
                size_t k = b < 0x80             ? 1
                           : (b & 0xE0) == 0xC0 ? 2
                           : (b & 0xF0) == 0xE0 ? 3
                           : (b & 0xF8) == 0xF0 ? 4
                                                : 0;
                if (k == 0 || i + k > len) {
                    valid = false;
                    break;
                }
                for (size_t j = 1; j < k; j++) {
                    valid = valid && ((uint8_t)text[i + j] & 0xC0) == 0x80;
                }
                i += k;
            }
            /* A literal U+2581 in the text decodes as a space: SentencePiece's own escape. */
            valid = valid && !memmem(text, len, "\xE2\x96\x81", 3);
            if (valid && (out_len != len || memcmp(buf, text, len) != 0)) {
                abort();
            }
        }
        free(buf);
        free(ids);
    } else {
        size_t n = len / 4;
        int32_t *ids = malloc((n + 1) * sizeof *ids);
        memcpy(ids, text, n * 4);
        char small[64];
        size_t out_len = 0;
        (void)cairn_tok_decode(t, ids, n, sel & 8 ? CAIRN_TOK_DECODE_SPECIAL : 0, small,
                               sizeof small, &out_len, NULL);
        for (size_t i = 0; i < n; i++) {
            const char *p;
            size_t pl;
            (void)cairn_tok_decode_piece(t, ids[i], 0, &p, &pl);
        }
        free(ids);
    }
    return 0;
}
