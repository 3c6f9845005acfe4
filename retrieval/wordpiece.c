/*
 * retrieval/wordpiece.c — BERT basic tokenizer + WordPiece (see wordpiece.h for the steps).
 *
 * The text is processed in one streaming pass: decode a code point, classify it, fold it
 * (NFD + drop marks + lowercase) and append it to the current word; a word ends at whitespace,
 * punctuation or a CJK ideograph and is then split into pieces. Nothing is copied out of the
 * text except the current word, which lives on the stack (at most 100 characters).
 */
#include "retrieval/wordpiece.h"

#include "common/utf8.h"

#include <stdlib.h>
#include <string.h>

#include "proto/gguf.h"

/* ---- Unicode tables ------------------------------------------------------------------------ */

typedef struct {
    uint32_t lo, hi;
} cairn__wp_range;

/* Code points lo, lo + stride, ... hi map to cp + delta. */
typedef struct {
    uint32_t lo, hi;
    uint32_t stride;
    int32_t delta;
} cairn__wp_map;

/* A code point that folds to 2 or 3 code points (r[2] == 0 for 2). */
typedef struct {
    uint32_t cp;
    uint32_t r[3];
} cairn__wp_multi;

#include "retrieval/wordpiece_tables.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static bool in_ranges(const cairn__wp_range *r, size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].lo)
            hi = mid;
        else if (cp > r[mid].hi)
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* Folds cp through a map table; writes 0..3 code points to out and returns how many. */
static int map_cp(const cairn__wp_map *m, size_t n, const cairn__wp_multi *mm, size_t nm,
                  uint32_t cp, uint32_t out[3])
{
    size_t lo = 0, hi = n;
    while (lo < hi) { /* the last run with m.lo <= cp */
        size_t mid = lo + (hi - lo) / 2;
        if (m[mid].lo <= cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0) {
        const cairn__wp_map *r = &m[lo - 1];
        if (cp <= r->hi && (cp - r->lo) % r->stride == 0) {
            out[0] = (uint32_t)((int64_t)cp + r->delta);
            return 1;
        }
    }
    lo = 0;
    hi = nm;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (mm[mid].cp < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < nm && mm[lo].cp == cp) {
        out[0] = mm[lo].r[0];
        out[1] = mm[lo].r[1];
        if (mm[lo].r[2] == 0) return 2;
        out[2] = mm[lo].r[2];
        return 3;
    }
    out[0] = cp;
    return 1;
}

static bool is_cjk(uint32_t cp)
{
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
           (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
           (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

static bool is_control(uint32_t cp)
{
    if (cp == 9 || cp == 10 || cp == 13) return false;
    return cp == 0 || cp == 0xFFFD || in_ranges(wp_control, N_OF(wp_control), cp);
}

static bool is_space(uint32_t cp)
{
    if (cp < 128) return cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r';
    return in_ranges(wp_space, N_OF(wp_space), cp);
}

static bool is_punct(uint32_t cp)
{
    if (cp < 128)
        return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
               (cp >= 123 && cp <= 126);
    return in_ranges(wp_punct, N_OF(wp_punct), cp);
}


/* ---- Vocabulary ------------------------------------------------------------------------------ */

struct cairn_wordpiece {
    cairn_wordpiece_params p;
    size_t n;
    char *blob;      /* every token, each NUL-terminated */
    uint64_t *off;   /* token i starts at blob + off[i] */
    uint32_t *len;   /* and has len[i] bytes */
    uint32_t *slots; /* open addressing: id + 1, 0 = empty */
    size_t slot_mask;
    int32_t cls, sep, unk, pad;
};

static uint64_t fnv_update(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

#define FNV_SEED 14695981039346656037ull

/* Looks up prefix ("##" or "") followed by s[0..n). */
static int32_t lookup(const cairn_wordpiece *wp, bool cont, const char *s, size_t n)
{
    uint64_t h = FNV_SEED;
    if (cont) h = fnv_update(h, "##", 2);
    h = fnv_update(h, s, n);
    size_t want = n + (cont ? 2 : 0);
    for (size_t k = (size_t)h & wp->slot_mask;; k = (k + 1) & wp->slot_mask) {
        uint32_t v = wp->slots[k];
        if (v == 0) return -1;
        uint32_t id = v - 1;
        if (wp->len[id] != want) continue;
        const char *t = wp->blob + wp->off[id];
        if (cont && (t[0] != '#' || t[1] != '#')) continue;
        if (memcmp(t + (cont ? 2 : 0), s, n) == 0) return (int32_t)id;
    }
}

cairn_wordpiece_params cairn_wordpiece_default_params(void)
{
    return (cairn_wordpiece_params){.lowercase = true, .split_cjk = true};
}

void cairn_wordpiece_close(cairn_wordpiece *wp)
{
    if (!wp) return;
    free(wp->blob);
    free(wp->off);
    free(wp->len);
    free(wp->slots);
    free(wp);
}

int cairn_wordpiece_open(cairn_wordpiece **out, const char *const *tokens, const size_t *lens,
                         size_t n, const cairn_wordpiece_params *p, cairn_error *err)
{
    if (!out || !tokens || !lens || !p)
        return cairn_errorf(err, CAIRN_EINVAL, "wordpiece: NULL argument");
    *out = NULL;
    if (n == 0 || n >= (1u << 31))
        return cairn_errorf(err, CAIRN_EFORMAT, "wordpiece: vocabulary of %zu entries", n);
    cairn_wordpiece *wp = calloc(1, sizeof *wp);
    if (!wp) return cairn_errorf(err, CAIRN_ENOMEM, "wordpiece: out of memory");
    wp->p = *p;
    wp->n = n;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!tokens[i] || lens[i] == 0 || lens[i] > 1024) {
            cairn_wordpiece_close(wp);
            return cairn_errorf(err, CAIRN_EFORMAT,
                                "wordpiece: vocabulary entry %zu is empty or longer than 1024 "
                                "bytes",
                                i);
        }
        total += lens[i] + 1;
    }
    size_t slots = 1;
    while (slots < 2 * n)
        slots <<= 1;
    wp->blob = malloc(total);
    wp->off = malloc(n * sizeof *wp->off);
    wp->len = malloc(n * sizeof *wp->len);
    wp->slots = calloc(slots, sizeof *wp->slots);
    if (!wp->blob || !wp->off || !wp->len || !wp->slots) {
        cairn_wordpiece_close(wp);
        return cairn_errorf(err, CAIRN_ENOMEM, "wordpiece: out of memory for %zu tokens", n);
    }
    wp->slot_mask = slots - 1;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(wp->blob + at, tokens[i], lens[i]);
        wp->blob[at + lens[i]] = '\0';
        wp->off[i] = at;
        wp->len[i] = (uint32_t)lens[i];
        at += lens[i] + 1;
        if (lookup(wp, false, tokens[i], lens[i]) >= 0) {
            cairn_wordpiece_close(wp);
            return cairn_errorf(err, CAIRN_EFORMAT,
                                "wordpiece: vocabulary entry %zu '%.*s' appears twice", i,
                                (int)(lens[i] > 64 ? 64 : lens[i]), tokens[i]);
        }
        size_t k = (size_t)fnv_update(FNV_SEED, tokens[i], lens[i]) & wp->slot_mask;
        while (wp->slots[k])
            k = (k + 1) & wp->slot_mask;
        wp->slots[k] = (uint32_t)i + 1;
    }
    wp->cls = lookup(wp, false, "[CLS]", 5);
    wp->sep = lookup(wp, false, "[SEP]", 5);
    wp->unk = lookup(wp, false, "[UNK]", 5);
    wp->pad = lookup(wp, false, "[PAD]", 5);
    if (wp->pad < 0) wp->pad = 0;
    if (wp->cls < 0 || wp->sep < 0 || wp->unk < 0) {
        cairn_wordpiece_close(wp);
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "wordpiece: vocabulary lacks [CLS], [SEP] or [UNK]");
    }
    *out = wp;
    return 0;
}

int cairn_wordpiece_open_gguf(cairn_wordpiece **out, const struct cairn_gguf *g, cairn_error *err)
{
    if (!out || !g) return cairn_errorf(err, CAIRN_EINVAL, "wordpiece: NULL argument");
    *out = NULL;
    const cairn_gguf_kv *kv = cairn_gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!kv)
        return cairn_errorf(err, CAIRN_ENOTFOUND, "wordpiece: no tokenizer.ggml.tokens in model");
    if (kv->type != CAIRN_GGUF_KV_ARRAY || kv->arr_type != CAIRN_GGUF_KV_STRING || !kv->strs)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "wordpiece: tokenizer.ggml.tokens is not an array of strings");
    cairn_wordpiece_params p = cairn_wordpiece_default_params();
    int rc = cairn_gguf_get_bool(g, "tokenizer.cairn.lowercase", &p.lowercase, err);
    if (rc < 0 && rc != CAIRN_ENOTFOUND) return rc;
    rc = cairn_gguf_get_bool(g, "tokenizer.cairn.split_cjk", &p.split_cjk, err);
    if (rc < 0 && rc != CAIRN_ENOTFOUND) return rc;
    size_t n = (size_t)kv->arr_count;
    const char **toks = malloc((n ? n : 1) * sizeof *toks);
    size_t *lens = malloc((n ? n : 1) * sizeof *lens);
    if (!toks || !lens) {
        free(toks);
        free(lens);
        return cairn_errorf(err, CAIRN_ENOMEM, "wordpiece: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        toks[i] = kv->strs[i].ptr;
        lens[i] = (size_t)kv->strs[i].len;
    }
    rc = cairn_wordpiece_open(out, toks, lens, n, &p, err);
    free(toks);
    free(lens);
    return rc;
}

size_t cairn_wordpiece_vocab_size(const cairn_wordpiece *wp)
{
    return wp->n;
}
int32_t cairn_wordpiece_cls(const cairn_wordpiece *wp)
{
    return wp->cls;
}
int32_t cairn_wordpiece_sep(const cairn_wordpiece *wp)
{
    return wp->sep;
}
int32_t cairn_wordpiece_unk(const cairn_wordpiece *wp)
{
    return wp->unk;
}
int32_t cairn_wordpiece_pad(const cairn_wordpiece *wp)
{
    return wp->pad;
}

int32_t cairn_wordpiece_find(const cairn_wordpiece *wp, const char *s, size_t len)
{
    return s ? lookup(wp, false, s, len) : -1;
}

const char *cairn_wordpiece_token(const cairn_wordpiece *wp, int32_t id)
{
    if (id < 0 || (size_t)id >= wp->n) return NULL;
    return wp->blob + wp->off[id];
}

/* ---- Encoding ------------------------------------------------------------------------------ */

#define WORD_CHARS CAIRN_WORDPIECE_MAX_WORD_CHARS

typedef struct {
    const cairn_wordpiece *wp;
    int32_t *ids;
    int n;     /* ids written */
    int limit; /* room for pieces: max_len - 1 (the [SEP]) */
    char buf[WORD_CHARS * 4];
    uint16_t cstart[WORD_CHARS + 1]; /* byte offset of each character in buf */
    int chars;                       /* characters in the word (may exceed WORD_CHARS) */
} enc_state;

static void push(enc_state *st, int32_t id)
{
    if (st->n < st->limit) st->ids[st->n++] = id;
}

/* Ends the current word: greedy longest-match-first over its characters. */
static void flush_word(enc_state *st)
{
    int nc = st->chars;
    st->chars = 0;
    if (nc == 0) return;
    if (nc > WORD_CHARS) {
        push(st, st->wp->unk);
        return;
    }
    int32_t pieces[WORD_CHARS];
    int np = 0;
    for (int i = 0; i < nc;) {
        int32_t id = -1;
        int j = nc;
        for (; j > i; j--) {
            id = lookup(st->wp, i > 0, st->buf + st->cstart[i],
                        (size_t)(st->cstart[j] - st->cstart[i]));
            if (id >= 0) break;
        }
        if (id < 0) {
            push(st, st->wp->unk);
            return;
        }
        pieces[np++] = id;
        i = j;
    }
    for (int k = 0; k < np; k++)
        push(st, pieces[k]);
}

static void add_char(enc_state *st, uint32_t cp)
{
    if (st->chars < WORD_CHARS) {
        int at = st->cstart[st->chars];
        at += cairn_utf8_encode(cp, (unsigned char *)st->buf + at);
        st->cstart[++st->chars] = (uint16_t)at;
    } else if (st->chars < WORD_CHARS + 1) {
        st->chars++; /* too long: remembered only as "over the limit" */
    }
}

/* A code point after folding: punctuation is a word of its own, anything else extends one. */
static void feed(enc_state *st, uint32_t cp)
{
    if (is_punct(cp)) {
        flush_word(st);
        add_char(st, cp);
        flush_word(st);
    } else {
        add_char(st, cp);
    }
}

static void feed_folded(enc_state *st, uint32_t cp)
{
    const cairn_wordpiece *wp = st->wp;
    if (!wp->p.lowercase) {
        feed(st, cp);
        return;
    }
    if (cp >= 0xAC00 && cp <= 0xD7A3) { /* Hangul syllable: NFD is L V (T) jamo */
        uint32_t s = cp - 0xAC00;
        feed(st, 0x1100 + s / 588);
        feed(st, 0x1161 + (s % 588) / 28);
        if (s % 28) feed(st, 0x11A7 + s % 28);
        return;
    }
    if (cp >= 0x300 && in_ranges(wp_mark, N_OF(wp_mark), cp)) return;
    uint32_t r[3];
    int k;
    if (cp < 0x80) {
        r[0] = (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
        k = 1;
    } else {
        k = map_cp(wp_fold, N_OF(wp_fold), wp_fold_multi, N_OF(wp_fold_multi), cp, r);
    }
    for (int i = 0; i < k; i++)
        feed(st, r[i]);
}

int cairn_wordpiece_encode(const cairn_wordpiece *wp, const char *text, size_t len, int32_t *ids,
                           int max_len)
{
    if (!wp || !ids || (!text && len) || max_len < 2) return CAIRN_EINVAL;
    enc_state st;
    st.wp = wp;
    st.ids = ids;
    st.n = 0;
    st.limit = max_len - 1;
    st.chars = 0;
    st.cstart[0] = 0;
    push(&st, wp->cls);
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len && st.n < st.limit) {
        uint32_t cp = cairn_utf8_decode(s, len, &i, NULL);
        if (is_space(cp)) {
            flush_word(&st);
        } else if (is_control(cp)) {
            continue;
        } else if (wp->p.split_cjk && is_cjk(cp)) {
            flush_word(&st);
            feed_folded(&st, cp);
            flush_word(&st);
        } else {
            feed_folded(&st, cp);
        }
    }
    flush_word(&st);
    st.ids[st.n++] = wp->sep; /* st.n <= limit = max_len - 1 */
    return st.n;
}
