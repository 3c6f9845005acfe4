/*
 * generation/tokenizer_internal.h — what tokenizer.c (vocabulary, special tokens, the merge
 * loop, encode and decode) shares with its two halves: tokenizer_spm.c (SentencePiece-BPE) and
 * tokenizer_bpe.c (byte-level BPE: the merges, the GPT-2 byte alphabet, the pre-tokenizers).
 * Internal to generation/.
 */
#ifndef CAIRN_GENERATION_TOKENIZER_INTERNAL_H
#define CAIRN_GENERATION_TOKENIZER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "generation/tokenizer.h"
#include "proto/gguf.h"

#define MAX_EOG 16

/* The byte-level BPE pre-tokenizers (tokenizer.ggml.pre), as llama.cpp splits text for them. */
typedef enum {
    CAIRN__TOK_PRE_NONE = 0, /* SentencePiece */
    CAIRN__TOK_PRE_LLAMA3,   /* llama-bpe, llama3, llama-v3 */
    CAIRN__TOK_PRE_QWEN2,    /* qwen2 */
    CAIRN__TOK_PRE_SMOLLM,   /* smollm: each \p{N} alone, then GPT-2's split */
} cairn__tok_pre;

struct cairn_tok {
    cairn_tok_kind kind;
    int32_t n_vocab;
    /* Vocabulary texts, NUL-terminated, in one arena: token i is text + text_off[i]. */
    char *text;
    uint32_t *text_off; /* n_vocab + 1 */
    float *score;
    uint8_t *type;
    /* Decoded bytes of each token (what decode_piece hands out). */
    char *piece;
    uint32_t *piece_off; /* n_vocab + 1 */
    /* text -> id, open addressing; the last of duplicate texts wins (as in llama.cpp). */
    int32_t *slots;
    uint32_t mask;
    /* Tokens cut out of the text before tokenizing, longest text first. */
    int32_t *special;
    int32_t n_special;
    int32_t byte_tok[256]; /* SPM byte fallback: <0xNN>; -1 when absent */
    int32_t bos, eos, eot, unk;
    int32_t eog[MAX_EOG];
    int n_eog;
    bool add_bos, add_eos, add_space_prefix, ignore_merges;
    cairn__tok_pre pre; /* BPE pre-tokenizer */
    int digits_max;     /* llama3 / qwen2 rules: longest run of digits in one word (3 or 1) */
    /* BPE merges "left right": arena, split position, hash of indices (rank = index). */
    char *merge_text;
    uint32_t *merge_off; /* n_merges + 1 */
    uint32_t *merge_split;
    int32_t n_merges;
    int32_t *merge_slots;
    uint32_t merge_mask;
    /* GPT-2 byte -> unicode alphabet, as UTF-8 (1 or 2 bytes). */
    uint8_t byte_enc[256][2];
    uint8_t byte_enc_len[256];
};

static inline uint32_t hash_bytes(uint32_t h, const char *s, size_t n)
{
    /* FNV-1a: cheap and good enough for vocabulary strings. */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h;
}
#define HASH_INIT 2166136261u
#define HASH_INIT 2166136261u

static inline const char *tok_text(const cairn_tok *t, int32_t id, size_t *len)
{
    *len = t->text_off[id + 1] - t->text_off[id] - 1;
    return t->text + t->text_off[id];
}

/* Byte length of the UTF-8 sequence a lead byte announces, as llama.cpp's unicode_len_utf8
 * (continuation and invalid bytes count as 1; 0xF8.. as 4); the caller clamps to the text. */
static inline size_t utf8_len(uint8_t b)
{
    static const uint8_t lens[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lens[b >> 4];
}

/* ---- Encode: the work memory of one call, and the merge loop both halves use ---- */

typedef struct {
    int32_t prev, next;
    uint32_t start, n;
} sym;

typedef struct {
    int32_t left, right;
    float key; /* SPM: score (higher first); BPE: rank (lower first) */
    uint32_t size;
} bigram;

/* Work memory of one encode call. */
typedef struct {
    const cairn_tok *t;
    int32_t *out;
    int cap;
    int64_t n; /* tokens produced so far (may exceed cap: then only counted) */
    uint8_t *buf;
    size_t buf_cap;
    sym *syms;
    size_t syms_cap;
    bigram *heap;
    size_t heap_len, heap_cap;
    uint32_t *cps;
    size_t cps_cap;
} enc;

static inline void emit(enc *e, int32_t id)
{
    if (id < 0) {
        return;
    }
    if (e->n < e->cap) {
        e->out[e->n] = id;
    }
    e->n++;
}

/* Grows *p (*cap elements of elem bytes) to hold need; false when out of memory. */
bool cairn__tok_grow(void **p, size_t *cap, size_t need, size_t elem);
/* Capacity of an open-addressing table for n entries (a power of two, at least 2n). */
uint32_t cairn__tok_table_size(uint64_t n);
/* Runs the merge loop over s[0..len) split into UTF-8 characters (SPM: highest score first;
 * BPE: lowest merge rank first); leaves the chain in e->syms. 0 or CAIRN_ENOMEM. */
int cairn__tok_merge(enc *e, const uint8_t *s, size_t len, int32_t *nsym);

/* ---- SentencePiece (tokenizer_spm.c) ---- */

/* Encodes one raw fragment (spaces become U+2581; prefix_space adds one in front). */
int cairn__tok_spm_fragment(enc *e, const char *text, size_t len, bool prefix_space);

/* ---- Byte-level BPE (tokenizer_bpe.c) ---- */

/* Reads tokenizer.ggml.pre and tokenizer.ggml.merges into t and builds the byte alphabet.
 * 0, CAIRN_EUNSUPPORTED (an unknown pre-tokenizer), CAIRN_EFORMAT or CAIRN_ENOMEM. */
int cairn__tok_bpe_open(cairn_tok *t, const cairn_gguf *g, cairn_error *err);
/* Rank of the merge (left, right), or -1. */
int32_t cairn__tok_merge_rank(const cairn_tok *t, const char *l, size_t ln, const char *r,
                              size_t rn);
/* The bytes a normal token's text s[0..n) stands for (the GPT-2 alphabet mapped back) into
 * out (at least n bytes); returns how many. */
size_t cairn__tok_bpe_piece(const char *s, size_t n, char *out);
/* Encodes one raw fragment: pre-tokenizer split, then the merges of each word. */
int cairn__tok_bpe_fragment(enc *e, const char *text, size_t len);

#endif
