/*
 * generation/tokenizer_bpe.c — the byte-level BPE half of the tokenizer (Llama 3, Qwen2,
 * SmolLM): text is pre-split into words by the rules of tokenizer.ggml.pre, each word's bytes
 * are written in the GPT-2 byte-to-unicode alphabet, and the tokenizer.ggml.merges pairs are
 * applied lowest rank first (llama.cpp's llm_tokenizer_bpe, token for token).
 */
#include <string.h>
#include <stdlib.h>

#include "common/utf8.h"
#include "generation/tokenizer_internal.h"
#include "generation/tokenizer_unicode.h"

/* Decodes one code point at s[*off..n), advancing *off. An invalid sequence consumes one byte
 * and yields U+FFFD (llama.cpp's unicode_cpts_from_utf8; overlongs and surrogates pass). */
static uint32_t utf8_next(const uint8_t *s, size_t n, size_t *off)
{
    size_t i = *off;
    uint8_t b = s[i];
    if (b < 0x80) {
        *off = i + 1;
        return b;
    }
    size_t need;
    uint32_t cp;
    if ((b & 0xE0) == 0xC0) {
        need = 2, cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
        need = 3, cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
        need = 4, cp = b & 0x07;
    } else {
        *off = i + 1;
        return 0xFFFD;
    }
    if (i + need > n) {
        *off = i + 1;
        return 0xFFFD;
    }
    for (size_t k = 1; k < need; k++) {
        if ((s[i + k] & 0xC0) != 0x80) {
            *off = i + 1;
            return 0xFFFD;
        }
        cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp > 0x10FFFF) {
        *off = i + 1;
        return 0xFFFD;
    }
    *off = i + need;
    return cp;
}

/* ---- Unicode classes for the BPE pre-tokenizer ---- */
enum { UC_LETTER = 1, UC_NUMBER = 2, UC_SPACE = 4, UC_OTHER = 8 };

static bool is_space_cp(uint32_t c)
{
    if (c <= 0x20) {
        return c == 0x20 || (c >= 0x09 && c <= 0x0D);
    }
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static int uclass(uint32_t c)
{
    if (c < 0x80) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            return UC_LETTER;
        }
        if (c >= '0' && c <= '9') {
            return UC_NUMBER;
        }
        return is_space_cp(c) ? UC_SPACE : UC_OTHER;
    }
    if (is_space_cp(c)) {
        return UC_SPACE;
    }
    size_t lo = 0, hi = sizeof cairn_tok__uranges / sizeof cairn_tok__uranges[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < cairn_tok__uranges[mid].first) {
            hi = mid;
        } else if (c > cairn_tok__uranges[mid].last) {
            lo = mid + 1;
        } else {
            return cairn_tok__uranges[mid].cls == 1 ? UC_LETTER : UC_NUMBER;
        }
    }
    return UC_OTHER;
}

static void gpt2_byte_map(cairn_tok *t)
{
    /* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes
     * to U+0100.. in byte order, so every byte has a visible, non-space character. */
    int next = 256;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        uint32_t cp = self ? (uint32_t)b : (uint32_t)next++;
        uint8_t o[4];
        size_t n = cairn_utf8_encode(cp, o);
        t->byte_enc_len[b] = (uint8_t)n;
        memcpy(t->byte_enc[b], o, n);
    }
}


/* Inverse of the GPT-2 map for one code point: the byte, or -1. */
static int gpt2_cp_to_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF)) {
        return (int)cp;
    }
    if (cp < 256 || cp >= 256 + 68) {
        return -1;
    }
    int k = (int)(cp - 256);
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if (!self && k-- == 0) {
            return b;
        }
    }
    return -1;
}

static int load_merges(cairn_tok *t, const cairn_gguf *g, cairn_error *err)
{
    const cairn_gguf_kv *kv = cairn_gguf_find_kv(g, "tokenizer.ggml.merges");
    if (!kv) {
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "tokenizer: gpt2 model without tokenizer.ggml.merges");
    }
    if (kv->type != CAIRN_GGUF_KV_ARRAY || kv->arr_type != CAIRN_GGUF_KV_STRING) {
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "tokenizer.ggml.merges: expected an array of strings");
    }
    if (kv->arr_count > (1u << 24)) { /* ranks must stay exact as float heap keys */
        return cairn_errorf(err, CAIRN_EFORMAT, "tokenizer.ggml.merges: %llu entries is too many",
                            (unsigned long long)kv->arr_count);
    }
    int32_t n = (int32_t)kv->arr_count;
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        total += kv->strs[i].len + 1;
    }
    if (total > UINT32_MAX - 16) {
        return cairn_errorf(err, CAIRN_EFORMAT, "tokenizer.ggml.merges: too large");
    }
    t->n_merges = n;
    t->merge_text = malloc(total + 1);
    t->merge_off = malloc(((size_t)n + 1) * sizeof *t->merge_off);
    t->merge_split = malloc(((size_t)n + 1) * sizeof *t->merge_split);
    t->merge_mask = cairn__tok_table_size((uint64_t)n) - 1;
    t->merge_slots = malloc(((size_t)t->merge_mask + 1) * sizeof *t->merge_slots);
    if (!t->merge_text || !t->merge_off || !t->merge_split || !t->merge_slots) {
        return cairn_errorf(err, CAIRN_ENOMEM, "tokenizer: out of memory for merges");
    }
    memset(t->merge_slots, 0xFF, ((size_t)t->merge_mask + 1) * sizeof *t->merge_slots);
    uint32_t used = 0;
    for (int32_t i = 0; i < n; i++) {
        const char *s = kv->strs[i].ptr;
        size_t len = (size_t)kv->strs[i].len;
        t->merge_off[i] = used;
        memcpy(t->merge_text + used, s, len);
        t->merge_text[used + len] = '\0';
        used += (uint32_t)len + 1;
        /* Split at the first space after the first byte (llama.cpp: word.find(' ', 1)); an
         * entry without one can never match and is kept only to preserve the ranks. */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp) {
            t->merge_split[i] = UINT32_MAX;
            continue;
        }
        t->merge_split[i] = (uint32_t)(sp - s);
        uint32_t h = hash_bytes(HASH_INIT, s, len) & t->merge_mask;
        for (;;) {
            int32_t m = t->merge_slots[h];
            if (m < 0) {
                t->merge_slots[h] = i;
                break;
            }
            size_t ml = t->merge_off[m + 1] - t->merge_off[m] - 1; /* m < i: both set */
            if (ml == len && memcmp(t->merge_text + t->merge_off[m], s, len) == 0) {
                break; /* duplicate: the first (lowest) rank stays */
            }
            h = (h + 1) & t->merge_mask;
        }
    }
    t->merge_off[n] = used;
    return 0;
}

int32_t cairn__tok_merge_rank(const cairn_tok *t, const char *l, size_t ln, const char *r,
                              size_t rn)
{
    uint32_t h = hash_bytes(HASH_INIT, l, ln);
    h = hash_bytes(h, " ", 1);
    h = hash_bytes(h, r, rn);
    uint32_t i = h & t->merge_mask;
    for (;;) {
        int32_t m = t->merge_slots[i];
        if (m < 0) {
            return -1;
        }
        const char *s = t->merge_text + t->merge_off[m];
        size_t len = t->merge_off[m + 1] - t->merge_off[m] - 1;
        if (t->merge_split[m] == ln && len == ln + 1 + rn && memcmp(s, l, ln) == 0 &&
            memcmp(s + ln + 1, r, rn) == 0) {
            return m;
        }
        i = (i + 1) & t->merge_mask;
    }
}

/* Reads the pre-tokenizer and the merges (see the header). */
int cairn__tok_bpe_open(cairn_tok *t, const cairn_gguf *g, cairn_error *err)
{
    const char *pre = "default";
    int rc = cairn_gguf_get_str(g, "tokenizer.ggml.pre", &pre, NULL, err);
    if (rc == CAIRN_ENOTFOUND) {
        cairn_error_clear(err);
        pre = "default";
    } else if (rc < 0) {
        return rc;
    }
    if (!strcmp(pre, "llama3") || !strcmp(pre, "llama-v3") || !strcmp(pre, "llama-bpe")) {
        t->pre = CAIRN__TOK_PRE_LLAMA3;
        t->digits_max = 3;
        t->ignore_merges = true;
        t->add_bos = true;
    } else if (!strcmp(pre, "qwen2")) {
        t->pre = CAIRN__TOK_PRE_QWEN2;
        t->digits_max = 1;
    } else if (!strcmp(pre, "smollm")) {
        t->pre = CAIRN__TOK_PRE_SMOLLM;
    } else {
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "tokenizer.ggml.pre '%s' is not supported (llama-bpe, llama3, qwen2, "
                            "smollm)",
                            pre);
    }
    rc = load_merges(t, g, err);
    if (rc < 0) {
        return rc;
    }
    gpt2_byte_map(t);
    return 0;
}

size_t cairn__tok_bpe_piece(const char *s, size_t n, char *out)
{
    size_t off = 0, used = 0;
    while (off < n) {
        size_t start = off;
        uint32_t cp = utf8_next((const uint8_t *)s, n, &off);
        int b = gpt2_cp_to_byte(cp);
        if (b >= 0) {
            out[used++] = (char)b;
        } else { /* not in the byte alphabet: keep the text as it is */
            memcpy(out + used, s + start, off - start);
            used += off - start;
        }
    }
    return used;
}

/* End (exclusive) of the pre-tokenizer word that starts at cps[pos] (pos < n): the llama3 /
 * qwen2 rules, tried in order, as the regex alternation
 *   '(s|t|re|ve|m|ll|d)  |  [^\r\n\p{L}\p{N}]?\p{L}+  |  \p{N}{1,D}  |  ' '?[^\s\p{L}\p{N}]+[\r\n]*
 *   | \s*[\r\n]+  |  \s+(?!\S)  |  \s+
 * with case-insensitive contractions and D = digits_max. */
static size_t bpe_word_end(const uint32_t *cps, size_t n, size_t pos, int digits_max)
{
#define CLS(i) ((i) < n ? uclass(cps[i]) : 0)
    uint32_t c = cps[pos];
    int f = uclass(c);
    if (c == '\'' && pos + 1 < n) {
        uint32_t c1 = cps[pos + 1] | (cps[pos + 1] < 0x80 ? 0x20 : 0);
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
            return pos + 2;
        }
        if (pos + 2 < n) {
            uint32_t c2 = cps[pos + 2] | (cps[pos + 2] < 0x80 ? 0x20 : 0);
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
                return pos + 3;
            }
        }
    }
    if (!(c == '\r' || c == '\n' || f == UC_NUMBER)) {
        if (f == UC_LETTER || CLS(pos + 1) == UC_LETTER) {
            size_t p = pos + 1;
            while (CLS(p) == UC_LETTER) {
                p++;
            }
            return p;
        }
    }
    if (f == UC_NUMBER) {
        size_t p = pos;
        while (p < n && p - pos < (size_t)digits_max && uclass(cps[p]) == UC_NUMBER) {
            p++;
        }
        return p;
    }
    int f2 = c == ' ' ? CLS(pos + 1) : f;
    if (!(f2 & (UC_SPACE | UC_LETTER | UC_NUMBER))) {
        size_t p = pos + (c == ' ');
        while (p < n && (CLS(p) & UC_OTHER)) {
            p++;
        }
        while (p < n && (cps[p] == '\r' || cps[p] == '\n')) {
            p++;
        }
        return p;
    }
    size_t ws = 0, last_nl = 0;
    while (CLS(pos + ws) == UC_SPACE) {
        if (cps[pos + ws] == '\r' || cps[pos + ws] == '\n') {
            last_nl = pos + ws + 1;
        }
        ws++;
    }
    if (last_nl > 0) {
        return last_nl;
    }
    if (ws > 1 && pos + ws < n) {
        return pos + ws - 1;
    }
    if (ws > 0) {
        return pos + ws;
    }
    return pos + 1;
#undef CLS
}

/*
 * GPT-2's split, the second regex of llama.cpp's `smollm` pre-tokenizer (the same one serves
 * starcoder, refact, command-r, codeshell, exaone and minerva):
 *   's|'t|'re|'ve|'m|'ll|'d |  ?\p{L}+  |  ?\p{N}+  |  ?[^\s\p{L}\p{N}]+  |  \s+(?!\S)  |  \s+
 * with case-sensitive contractions. The end (exclusive) of the word that starts at cps[pos]
 * (pos < n), n being the end of the piece the first regex (\p{N}) left: look-ahead stops there.
 */
static size_t gpt2_word_end(const uint32_t *cps, size_t n, size_t pos)
{
#define CLS(i) ((i) < n ? uclass(cps[i]) : 0)
    uint32_t c = cps[pos];
    if (c == '\'' && pos + 1 < n) {
        uint32_t c1 = cps[pos + 1];
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
            return pos + 2;
        }
        if (pos + 2 < n) {
            uint32_t c2 = cps[pos + 2];
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
                return pos + 3;
            }
        }
    }
    int f2 = c == ' ' ? CLS(pos + 1) : uclass(c);
    size_t p = pos + (c == ' ');
    if (f2 == UC_LETTER || f2 == UC_NUMBER) { /*  ?\p{L}+ and  ?\p{N}+ */
        while (CLS(p) == f2) {
            p++;
        }
        return p;
    }
    if (f2 == UC_OTHER) { /*  ?[^\s\p{L}\p{N}]+ */
        while (CLS(p) == UC_OTHER) {
            p++;
        }
        return p;
    }
    size_t ws = 0;
    while (CLS(pos + ws) == UC_SPACE) {
        ws++;
    }
    if (ws > 1 && pos + ws < n) { /* \s+(?!\S): leave the last space to the next word */
        return pos + ws - 1;
    }
    return ws > 0 ? pos + ws : pos + 1;
#undef CLS
}

int cairn__tok_bpe_fragment(enc *e, const char *text, size_t len)
{
    const cairn_tok *t = e->t;
    if (!cairn__tok_grow((void **)&e->cps, &e->cps_cap, len + 1, sizeof(uint32_t))) {
        return CAIRN_ENOMEM;
    }
    size_t ncp = 0;
    for (size_t off = 0; off < len;) {
        e->cps[ncp++] = utf8_next((const uint8_t *)text, len, &off);
    }
    size_t piece_end = 0; /* smollm: end of the current piece of its first split, \p{N} */
    for (size_t pos = 0; pos < ncp;) {
        size_t end;
        if (t->pre == CAIRN__TOK_PRE_SMOLLM) {
            if (pos >= piece_end) { /* a number alone, or the stretch up to the next one */
                piece_end = pos + 1;
                if (uclass(e->cps[pos]) != UC_NUMBER) {
                    while (piece_end < ncp && uclass(e->cps[piece_end]) != UC_NUMBER) {
                        piece_end++;
                    }
                }
            }
            end = gpt2_word_end(e->cps, piece_end, pos);
        } else {
            end = bpe_word_end(e->cps, ncp, pos, t->digits_max);
        }
        /* The word in the GPT-2 byte alphabet: at most 4 bytes per code point, 2 per byte. */
        if (!cairn__tok_grow((void **)&e->buf, &e->buf_cap, 8 * (end - pos) + 8, 1)) {
            return CAIRN_ENOMEM;
        }
        size_t m = 0;
        for (size_t i = pos; i < end; i++) {
            uint8_t u[4];
            size_t k = cairn_utf8_encode(e->cps[i], u);
            for (size_t j = 0; j < k; j++) {
                memcpy(e->buf + m, t->byte_enc[u[j]], t->byte_enc_len[u[j]]);
                m += t->byte_enc_len[u[j]];
            }
        }
        pos = end;
        if (t->ignore_merges) {
            int32_t id = cairn_tok_find(t, (const char *)e->buf, m);
            if (id >= 0) {
                emit(e, id);
                continue;
            }
        }
        int32_t nsym;
        int rc = cairn__tok_merge(e, e->buf, m, &nsym);
        if (rc < 0) {
            return rc;
        }
        for (int32_t i = 0; i != -1 && nsym > 0; i = e->syms[i].next) {
            const sym *y = &e->syms[i];
            int32_t id = cairn_tok_find(t, (const char *)e->buf + y->start, y->n);
            if (id >= 0) {
                emit(e, id);
                continue;
            }
            for (uint32_t j = 0; j < y->n; j++) { /* single bytes of the mapped text */
                emit(e, cairn_tok_find(t, (const char *)e->buf + y->start + j, 1));
            }
        }
    }
    return 0;
}
