/*
 * generation/tokenizer.c — the tokenizers' common part: the vocabulary from GGUF metadata,
 * special and end-of-generation tokens, the special-token partition, the merge loop, encode
 * and decode. The algorithm-specific halves are tokenizer_spm.c (SentencePiece-BPE) and
 * tokenizer_bpe.c (byte-level BPE and its pre-tokenizers).
 *
 * The behaviour matches llama.cpp's llama-vocab (the reference the tests compare against):
 *  1. Special-token partition: every user-defined token (and, with PARSE_SPECIAL, every
 *     control/unknown token) is cut out of the raw text, longest token text first, each at all
 *     of its leftmost non-overlapping occurrences in the fragments still raw.
 *  2. Each raw fragment is tokenized on its own (SPM or BPE); cut-out tokens pass through.
 *
 * SPM merge order: the pair whose merged text has the highest vocabulary score first, ties to
 * the leftmost pair. BPE merge order: the pair with the lowest merge rank first, ties leftmost.
 * A queued pair is stale when either side has changed since; stale pairs are skipped when
 * popped (their two lengths no longer add up to the queued size).
 */
#define _GNU_SOURCE /* memmem, qsort_r */
#include "generation/tokenizer.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generation/tokenizer_internal.h"

/* ==== Small helpers ============================================================================
 */

uint32_t cairn__tok_table_size(uint64_t n)
{
    uint32_t cap = 16;
    while (cap < 2 * n) {
        cap <<= 1;
    }
    return cap;
}

int32_t cairn_tok_find(const cairn_tok *t, const char *s, size_t n)
{
    uint32_t i = hash_bytes(HASH_INIT, s, n) & t->mask;
    for (;;) {
        int32_t id = t->slots[i];
        if (id < 0) {
            return -1;
        }
        size_t len;
        const char *x = tok_text(t, id, &len);
        if (len == n && memcmp(x, s, n) == 0) {
            return id;
        }
        i = (i + 1) & t->mask;
    }
}

size_t cairn_tok_utf8_complete(const char *buf, size_t len)
{
    /* Look back at most 3 bytes for a lead byte whose sequence runs past the end. */
    const uint8_t *s = (const uint8_t *)buf;
    for (size_t back = 1; back <= 4 && back <= len; back++) {
        uint8_t b = s[len - back];
        if ((b & 0xC0) == 0x80) {
            continue; /* continuation: keep looking for its lead */
        }
        size_t need = (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 1;
        return need > back ? len - back : len;
    }
    return len;
}

/* ==== Open / close =============================================================================
 */

void cairn_tok_close(cairn_tok *t)
{
    if (!t) {
        return;
    }
    free(t->text);
    free(t->text_off);
    free(t->score);
    free(t->type);
    free(t->piece);
    free(t->piece_off);
    free(t->slots);
    free(t->special);
    free(t->merge_text);
    free(t->merge_off);
    free(t->merge_split);
    free(t->merge_slots);
    free(t);
}

static int get_opt_id(const cairn_gguf *g, const char *key, int32_t n_vocab, int32_t *id,
                      cairn_error *err)
{
    uint32_t v;
    int rc = cairn_gguf_get_u32(g, key, &v, err);
    if (rc == CAIRN_ENOTFOUND) {
        cairn_error_clear(err);
        return 0;
    }
    if (rc < 0) {
        return rc;
    }
    if (v >= (uint32_t)n_vocab) {
        return cairn_errorf(err, CAIRN_EFORMAT, "%s = %u is outside the vocabulary (%d tokens)",
                            key, v, n_vocab);
    }
    *id = (int32_t)v;
    return 0;
}

static int get_opt_bool(const cairn_gguf *g, const char *key, bool *v, cairn_error *err)
{
    int rc = cairn_gguf_get_bool(g, key, v, err);
    if (rc == CAIRN_ENOTFOUND) {
        cairn_error_clear(err);
        return 0;
    }
    return rc;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/* Builds the decoded bytes of every token (so decode_piece is a lookup). */
static int build_pieces(cairn_tok *t, cairn_error *err)
{
    size_t cap = t->text_off[t->n_vocab] + 16, used = 0;
    t->piece = malloc(cap);
    t->piece_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->piece_off);
    if (!t->piece || !t->piece_off) {
        return cairn_errorf(err, CAIRN_ENOMEM, "tokenizer: out of memory for pieces");
    }
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t n;
        const char *s = tok_text(t, id, &n);
        t->piece_off[id] = (uint32_t)used;
        if (cap - used < n + 1) { /* decoded text is never longer than the vocab text, but */
            size_t ncap = cap * 2 + n + 16; /* stay safe against that assumption */
            char *p = realloc(t->piece, ncap);
            if (!p) {
                return cairn_errorf(err, CAIRN_ENOMEM, "tokenizer: out of memory for pieces");
            }
            t->piece = p, cap = ncap;
        }
        char *o = t->piece + used;
        int ty = t->type[id];
        if (ty == CAIRN_TOK_TYPE_CONTROL || ty == CAIRN_TOK_TYPE_UNKNOWN ||
            ty == CAIRN_TOK_TYPE_USER_DEFINED) {
            memcpy(o, s, n);
            used += n;
        } else if (ty == CAIRN_TOK_TYPE_BYTE && t->kind == CAIRN_TOK_SPM) {
            if (n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>' &&
                hexval(s[3]) >= 0 && hexval(s[4]) >= 0) {
                o[0] = (char)(hexval(s[3]) * 16 + hexval(s[4]));
                used += 1;
            }
        } else if (ty == CAIRN_TOK_TYPE_NORMAL || ty == CAIRN_TOK_TYPE_BYTE) {
            if (t->kind == CAIRN_TOK_SPM) {
                for (size_t i = 0; i < n;) { /* U+2581 -> ' ' */
                    if (i + 3 <= n && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                        t->piece[used++] = ' ';
                        i += 3;
                    } else {
                        t->piece[used++] = s[i++];
                    }
                }
            } else {
                used += cairn__tok_bpe_piece(s, n, t->piece + used);
            }
        }
        /* UNUSED / UNDEFINED decode to nothing. */
    }
    t->piece_off[t->n_vocab] = (uint32_t)used;
    return 0;
}

static int cmp_special(const void *a, const void *b, void *ctx)
{
    const cairn_tok *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = t->text_off[x + 1] - t->text_off[x], ly = t->text_off[y + 1] - t->text_off[y];
    if (lx != ly) {
        return lx > ly ? -1 : 1;
    }
    return x < y ? -1 : x > y;
}

/*
 * End of generation, as llama.cpp decides it (llama-vocab.cpp, load): tokens named like an
 * end of turn/text are end-of-generation tokens and are treated as control tokens whatever
 * their stored type (so "</s>" in Gemma's vocabulary is not cut out of plain text and decodes
 * to nothing without DECODE_SPECIAL); EOS and EOT always are. Two exceptions: with
 * <|return|>/<|call|> (or <|calls|>/<|flush|>) present, <|end|> is a plain user-defined token;
 * with <|tool_response> or <|plamo:eos|> present, </s> is a normal one. The EOT id, when the
 * file does not give it, is the first of eot_names present. The fill-in-the-middle pad, repo
 * and separator tokens (tokenizer.ggml.fim_{pad,rep,sep}_token_id, else found by name: SmolLM2's
 * <reponame>) end generation too, as control tokens.
 */
#define DEEPSEEK_EOS                                                                               \
    "<\xEF\xBD\x9C"                                                                                \
    "end\xE2\x96\x81"                                                                              \
    "of\xE2\x96\x81"                                                                               \
    "sentence\xEF\xBD\x9C>"
static void mark_end_of_generation(cairn_tok *t, int32_t fim[3])
{
    static const char *const eot_names[] = {
        "<end_of_turn>",     "<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>",
        "<|end_of_text|>",   "<EOT>",      "_<EOT>",     "[EOT]",   DEEPSEEK_EOS,
        "<end_of_utterance>"};
    static const char *const eog_names[] = {"<|eot_id|>",
                                            "<|im_end|>",
                                            "<|end|>",
                                            "<|return|>",
                                            "<|call|>",
                                            "<|flush|>",
                                            "<|calls|>",
                                            "<end_of_turn>",
                                            "<|endoftext|>",
                                            "</s>",
                                            "<|eom_id|>",
                                            "<EOT>",
                                            "_<EOT>",
                                            "[EOT]",
                                            "[EOS]",
                                            "<|end_of_text|>",
                                            "<end_of_utterance>",
                                            "<eos>",
                                            "<turn|>",
                                            "<|tool_response>",
                                            DEEPSEEK_EOS,
                                            "[e~["};
#define FIND(s) cairn_tok_find(t, (s), strlen(s))
    /* FIM pad, repo, separator: the file's ids (fim[]) or the first of their names present */
    static const char *const fim_names[3][6] = {
        {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", NULL},
        {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL},
        {"<|file_sep|>", "<fim-sep>", "<SEP>", NULL}};
    for (int f = 0; f < 3; f++) {
        for (int k = 0; fim[f] < 0 && fim_names[f][k]; k++) {
            fim[f] = FIND(fim_names[f][k]);
        }
    }
    for (size_t k = 0; t->eot < 0 && k < sizeof eot_names / sizeof eot_names[0]; k++) {
        t->eot = FIND(eot_names[k]);
    }
    int32_t end_id = FIND("<|end|>"), s_id = FIND("</s>");
    bool end_plain = end_id >= 0 && ((FIND("<|return|>") >= 0 && FIND("<|call|>") >= 0) ||
                                     (FIND("<|calls|>") >= 0 && FIND("<|flush|>") >= 0));
    bool s_plain = s_id >= 0 && (FIND("<|tool_response>") >= 0 || FIND("<|plamo:eos|>") >= 0);
    int32_t extra[6] = {t->eos, t->eot, FIND("<|eom_id|>"), fim[0], fim[1], fim[2]};
    for (int f = 0; f < 3; f++) {
        if (fim[f] >= 0) {
            t->type[fim[f]] = CAIRN_TOK_TYPE_CONTROL;
        }
    }
    for (size_t k = 0; k < sizeof eog_names / sizeof eog_names[0] + 6; k++) {
        bool named = k < sizeof eog_names / sizeof eog_names[0];
        int32_t id = named ? FIND(eog_names[k]) : extra[k - sizeof eog_names / sizeof eog_names[0]];
        if (id < 0 || (end_plain && id == end_id) || (s_plain && id == s_id)) {
            continue;
        }
        if (named) {
            t->type[id] = CAIRN_TOK_TYPE_CONTROL;
        }
        bool seen = false;
        for (int i = 0; i < t->n_eog; i++) {
            seen = seen || t->eog[i] == id;
        }
        if (!seen && t->n_eog < MAX_EOG) {
            t->eog[t->n_eog++] = id;
        }
    }
    if (end_plain) {
        t->type[end_id] = CAIRN_TOK_TYPE_USER_DEFINED;
    }
    if (s_plain) {
        t->type[s_id] = CAIRN_TOK_TYPE_NORMAL;
    }
#undef FIND
}

int cairn_tok_open(cairn_tok **out, const cairn_gguf *g, cairn_error *err)
{
    if (!out || !g) {
        return cairn_errorf(err, CAIRN_EINVAL, "cairn_tok_open: NULL argument");
    }
    *out = NULL;
    const char *model = NULL;
    int rc = cairn_gguf_get_str(g, "tokenizer.ggml.model", &model, NULL, err);
    if (rc < 0) {
        cairn_error_prefix(err, "tokenizer");
        return rc;
    }
    cairn_tok_kind kind;
    if (strcmp(model, "llama") == 0) {
        kind = CAIRN_TOK_SPM;
    } else if (strcmp(model, "gpt2") == 0) {
        kind = CAIRN_TOK_BPE;
    } else {
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "tokenizer.ggml.model '%s' is not supported (llama, gpt2)", model);
    }
    const cairn_gguf_kv *tokens = cairn_gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!tokens) {
        return cairn_errorf(err, CAIRN_ENOTFOUND, "tokenizer.ggml.tokens is missing");
    }
    if (tokens->type != CAIRN_GGUF_KV_ARRAY || tokens->arr_type != CAIRN_GGUF_KV_STRING ||
        tokens->arr_count == 0 || tokens->arr_count > (1u << 24)) {
        return cairn_errorf(err, CAIRN_EFORMAT, "tokenizer.ggml.tokens: expected 1..16M strings");
    }
    int32_t n = (int32_t)tokens->arr_count;
    const cairn_gguf_kv *scores = cairn_gguf_find_kv(g, "tokenizer.ggml.scores");
    if (scores &&
        (scores->type != CAIRN_GGUF_KV_ARRAY ||
         (scores->arr_type != CAIRN_GGUF_KV_F32 && scores->arr_type != CAIRN_GGUF_KV_I32) ||
         scores->arr_count < (uint64_t)n)) {
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "tokenizer.ggml.scores: expected %d f32 or i32 values", n);
    }
    const cairn_gguf_kv *types = cairn_gguf_find_kv(g, "tokenizer.ggml.token_type");
    if (types && (types->type != CAIRN_GGUF_KV_ARRAY || types->arr_type != CAIRN_GGUF_KV_I32 ||
                  types->arr_count < (uint64_t)n)) {
        return cairn_errorf(err, CAIRN_EFORMAT, "tokenizer.ggml.token_type: expected %d i32 values",
                            n);
    }

    cairn_tok *t = calloc(1, sizeof *t);
    if (!t) {
        return cairn_errorf(err, CAIRN_ENOMEM, "tokenizer: out of memory");
    }
    t->kind = kind;
    t->n_vocab = n;
    t->bos = t->eos = t->eot = t->unk = -1;

    /* Texts (an empty one becomes "[EMPTY_i]", as llama.cpp does, so it stays addressable). */
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        total += (tokens->strs[i].len ? tokens->strs[i].len : 24) + 1;
    }
    if (total > UINT32_MAX / 2) {
        cairn_tok_close(t);
        return cairn_errorf(err, CAIRN_EFORMAT, "tokenizer.ggml.tokens: %llu bytes is too large",
                            (unsigned long long)total);
    }
    t->text = malloc(total + 1);
    t->text_off = malloc(((size_t)n + 1) * sizeof *t->text_off);
    t->score = malloc((size_t)n * sizeof *t->score);
    t->type = malloc((size_t)n);
    t->mask = cairn__tok_table_size((uint64_t)n) - 1;
    t->slots = malloc(((size_t)t->mask + 1) * sizeof *t->slots);
    if (!t->text || !t->text_off || !t->score || !t->type || !t->slots) {
        cairn_tok_close(t);
        return cairn_errorf(err, CAIRN_ENOMEM, "tokenizer: out of memory for %d tokens", n);
    }
    memset(t->slots, 0xFF, ((size_t)t->mask + 1) * sizeof *t->slots);
    uint32_t used = 0;
    for (int32_t i = 0; i < n; i++) {
        t->text_off[i] = used;
        if (tokens->strs[i].len) {
            memcpy(t->text + used, tokens->strs[i].ptr, tokens->strs[i].len);
            used += (uint32_t)tokens->strs[i].len;
        } else {
            used += (uint32_t)snprintf(t->text + used, 25, "[EMPTY_%d]", i);
        }
        t->text[used++] = '\0';
        t->score[i] = !scores ? 0.0f
                      : scores->arr_type == CAIRN_GGUF_KV_F32
                          ? ((const float *)scores->arr)[i]
                          : (float)((const int32_t *)scores->arr)[i];
        int32_t ty = types ? ((const int32_t *)types->arr)[i] : CAIRN_TOK_TYPE_NORMAL;
        t->type[i] = (uint8_t)(ty >= 0 && ty <= 6 ? ty : CAIRN_TOK_TYPE_UNDEFINED);
    }
    t->text_off[n] = used;
    for (int32_t i = 0; i < n; i++) {
        size_t len;
        const char *s = tok_text(t, i, &len);
        uint32_t h = hash_bytes(HASH_INIT, s, len) & t->mask;
        for (;;) {
            int32_t id = t->slots[h];
            if (id < 0) {
                t->slots[h] = i;
                break;
            }
            size_t l2;
            const char *s2 = tok_text(t, id, &l2);
            if (l2 == len && memcmp(s, s2, len) == 0) {
                t->slots[h] = i; /* duplicate text: the last id wins */
                break;
            }
            h = (h + 1) & t->mask;
        }
    }

    /* Flags and special ids: llama.cpp's defaults per model, then the file's keys. */
    if (kind == CAIRN_TOK_SPM) {
        t->bos = n > 1 ? 1 : -1;
        t->eos = n > 2 ? 2 : -1;
        t->unk = 0;
        t->add_bos = true;
        t->add_space_prefix = true;
    } else {
        t->bos = t->eos = n > 11 ? 11 : -1;
        rc = cairn__tok_bpe_open(t, g, err);
        if (rc < 0) {
            cairn_tok_close(t);
            return rc;
        }
    }
    if ((rc = get_opt_id(g, "tokenizer.ggml.bos_token_id", n, &t->bos, err)) < 0 ||
        (rc = get_opt_id(g, "tokenizer.ggml.eos_token_id", n, &t->eos, err)) < 0 ||
        (rc = get_opt_id(g, "tokenizer.ggml.unknown_token_id", n, &t->unk, err)) < 0 ||
        (rc = get_opt_id(g, "tokenizer.ggml.eot_token_id", n, &t->eot, err)) < 0 ||
        (rc = get_opt_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err)) < 0 ||
        (rc = get_opt_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos, err)) < 0 ||
        (rc = get_opt_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err)) < 0) {
        cairn_tok_close(t);
        return rc;
    }
    if (kind == CAIRN_TOK_BPE) {
        t->add_space_prefix = false;
    }
    if (t->unk >= n) {
        t->unk = -1;
    }

    int32_t fim[3] = {-1, -1, -1};
    if ((rc = get_opt_id(g, "tokenizer.ggml.fim_pad_token_id", n, &fim[0], err)) < 0 ||
        (rc = get_opt_id(g, "tokenizer.ggml.fim_rep_token_id", n, &fim[1], err)) < 0 ||
        (rc = get_opt_id(g, "tokenizer.ggml.fim_sep_token_id", n, &fim[2], err)) < 0) {
        cairn_tok_close(t);
        return rc;
    }
    mark_end_of_generation(t, fim);

    /* Byte fallback ids. */
    for (int b = 0; b < 256; b++) {
        char buf[8];
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        int32_t id = cairn_tok_find(t, buf, 6);
        if (id < 0) {
            char c = (char)b;
            id = cairn_tok_find(t, &c, 1);
        }
        t->byte_tok[b] = id >= 0 ? id : t->unk;
    }

    /* Special tokens, longest text first. */
    t->special = malloc((size_t)n * sizeof *t->special);
    if (!t->special) {
        cairn_tok_close(t);
        return cairn_errorf(err, CAIRN_ENOMEM, "tokenizer: out of memory");
    }
    for (int32_t i = 0; i < n; i++) {
        int ty = t->type[i];
        if (ty == CAIRN_TOK_TYPE_CONTROL || ty == CAIRN_TOK_TYPE_USER_DEFINED ||
            ty == CAIRN_TOK_TYPE_UNKNOWN) {
            t->special[t->n_special++] = i;
        }
    }
    qsort_r(t->special, (size_t)t->n_special, sizeof *t->special, cmp_special, t);

    rc = build_pieces(t, err);
    if (rc < 0) {
        cairn_tok_close(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* ==== Encode ================================================================================== */

bool cairn__tok_grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (*cap >= need) {
        return true;
    }
    size_t ncap = need + need / 2 + 16;
    void *q = realloc(*p, ncap * elem);
    if (!q) {
        return false;
    }
    *p = q, *cap = ncap;
    return true;
}

/* a goes before b in the queue. */
static inline bool bg_before(const cairn_tok *t, const bigram *a, const bigram *b)
{
    if (a->key != b->key) {
        return t->kind == CAIRN_TOK_SPM ? a->key > b->key : a->key < b->key;
    }
    return a->left < b->left;
}

static void heap_push(enc *e, bigram b)
{
    size_t i = e->heap_len++;
    e->heap[i] = b;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_before(e->t, &e->heap[i], &e->heap[p])) {
            break;
        }
        bigram tmp = e->heap[p];
        e->heap[p] = e->heap[i], e->heap[i] = tmp, i = p;
    }
}

static bigram heap_pop(enc *e)
{
    bigram top = e->heap[0];
    e->heap[0] = e->heap[--e->heap_len];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < e->heap_len && bg_before(e->t, &e->heap[l], &e->heap[m])) {
            m = l;
        }
        if (r < e->heap_len && bg_before(e->t, &e->heap[r], &e->heap[m])) {
            m = r;
        }
        if (m == i) {
            break;
        }
        bigram tmp = e->heap[m];
        e->heap[m] = e->heap[i], e->heap[i] = tmp, i = m;
    }
    return top;
}

static void try_bigram(enc *e, const uint8_t *s, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) {
        return;
    }
    const sym *a = &e->syms[l], *b = &e->syms[r];
    bigram bg = {l, r, 0.0f, a->n + b->n};
    if (e->t->kind == CAIRN_TOK_SPM) {
        int32_t id = cairn_tok_find(e->t, (const char *)s + a->start, a->n + b->n);
        if (id < 0) {
            return;
        }
        bg.key = e->t->score[id];
    } else {
        int32_t rank = cairn__tok_merge_rank(e->t, (const char *)s + a->start, a->n,
                                             (const char *)s + b->start, b->n);
        if (rank < 0) {
            return;
        }
        bg.key = (float)rank; /* exact: ranks < 2^24 (the vocabulary bound) */
    }
    heap_push(e, bg);
}

int cairn__tok_merge(enc *e, const uint8_t *s, size_t len, int32_t *nsym)
{
    if (!cairn__tok_grow((void **)&e->syms, &e->syms_cap, len + 1, sizeof(sym)) ||
        !cairn__tok_grow((void **)&e->heap, &e->heap_cap, 3 * len + 4, sizeof(bigram))) {
        return CAIRN_ENOMEM;
    }
    int32_t k = 0;
    for (size_t off = 0; off < len; k++) {
        size_t n = utf8_len(s[off]);
        if (n > len - off) {
            n = len - off;
        }
        e->syms[k] = (sym){k - 1, off + n == len ? -1 : k + 1, (uint32_t)off, (uint32_t)n};
        off += n;
    }
    *nsym = k;
    e->heap_len = 0;
    for (int32_t i = 1; i < k; i++) {
        try_bigram(e, s, i - 1, i);
    }
    while (e->heap_len > 0) {
        bigram bg = heap_pop(e);
        sym *a = &e->syms[bg.left], *b = &e->syms[bg.right];
        if (a->n == 0 || b->n == 0 || a->n + b->n != bg.size) {
            continue; /* stale */
        }
        a->n += b->n;
        b->n = 0;
        a->next = b->next;
        if (b->next >= 0) {
            e->syms[b->next].prev = bg.left;
        }
        try_bigram(e, s, a->prev, bg.left);
        try_bigram(e, s, bg.left, a->next);
    }
    return 0;
}

typedef struct {
    uint32_t off, len;
    int32_t tok; /* -1: raw text */
} frag;

int cairn_tok_encode(const cairn_tok *t, const char *text, size_t len, int32_t *out, int cap,
                     int flags, cairn_error *err)
{
    if (!t || (!text && len) || (!out && cap > 0) || cap < 0) {
        cairn_errorf(err, CAIRN_EINVAL, "cairn_tok_encode: NULL or negative argument");
        return CAIRN_TOK_ENCODE_FAILED;
    }
    if (len > INT32_MAX / 8) {
        cairn_errorf(err, CAIRN_EINVAL, "cairn_tok_encode: text of %zu bytes is too long", len);
        return CAIRN_TOK_ENCODE_FAILED;
    }
    enc e = {.t = t, .out = out, .cap = cap};
    frag *fa = NULL, *fb = NULL;
    int rc = 0;
    size_t nf = 0;
    if (len > 0) {
        fa = malloc((2 * len + 2) * sizeof *fa);
        fb = malloc((2 * len + 2) * sizeof *fb);
        if (!fa || !fb) {
            rc = CAIRN_ENOMEM;
            goto done;
        }
        fa[nf++] = (frag){0, (uint32_t)len, -1};
        /* Pairs of bytes present in the text: skips most special tokens without a search. */
        uint8_t *pairs = calloc(65536 / 8, 1);
        bool first[256] = {false};
        if (!pairs) {
            rc = CAIRN_ENOMEM;
            goto done;
        }
        for (size_t i = 0; i < len; i++) {
            first[(uint8_t)text[i]] = true;
            if (i + 1 < len) {
                unsigned p = (uint8_t)text[i] << 8 | (uint8_t)text[i + 1];
                pairs[p >> 3] |= (uint8_t)(1u << (p & 7));
            }
        }
        bool parse = flags & CAIRN_TOK_PARSE_SPECIAL;
        for (int32_t k = 0; k < t->n_special; k++) {
            int32_t id = t->special[k];
            int ty = t->type[id];
            if (!parse && (ty == CAIRN_TOK_TYPE_CONTROL || ty == CAIRN_TOK_TYPE_UNKNOWN)) {
                continue;
            }
            size_t tl;
            const char *ts = tok_text(t, id, &tl);
            if (tl == 0 || tl > len || !first[(uint8_t)ts[0]]) {
                continue;
            }
            if (tl >= 2) {
                unsigned p = (uint8_t)ts[0] << 8 | (uint8_t)ts[1];
                if (!(pairs[p >> 3] & (1u << (p & 7)))) {
                    continue;
                }
            }
            size_t nb = 0;
            for (size_t i = 0; i < nf; i++) {
                frag f = fa[i];
                if (f.tok >= 0 || f.len < tl) {
                    fb[nb++] = f;
                    continue;
                }
                size_t pos = f.off, end = (size_t)f.off + f.len;
                while (pos + tl <= end) {
                    const char *hit = memmem(text + pos, end - pos, ts, tl);
                    if (!hit) {
                        break;
                    }
                    size_t at = (size_t)(hit - text);
                    if (at > pos) {
                        fb[nb++] = (frag){(uint32_t)pos, (uint32_t)(at - pos), -1};
                    }
                    fb[nb++] = (frag){(uint32_t)at, (uint32_t)tl, id};
                    pos = at + tl;
                }
                if (pos < end) {
                    fb[nb++] = (frag){(uint32_t)pos, (uint32_t)(end - pos), -1};
                }
            }
            frag *tmp = fa;
            fa = fb, fb = tmp, nf = nb;
        }
        free(pairs);
    }

    bool add = flags & CAIRN_TOK_ADD_SPECIAL;
    if (add && t->add_bos) {
        emit(&e, t->bos);
    }
    bool prev_special = true;
    for (size_t i = 0; i < nf && rc == 0; i++) {
        if (fa[i].tok >= 0) {
            emit(&e, fa[i].tok);
            prev_special = true;
            continue;
        }
        if (t->kind == CAIRN_TOK_SPM) {
            rc = cairn__tok_spm_fragment(&e, text + fa[i].off, fa[i].len,
                                         t->add_space_prefix && prev_special);
        } else {
            rc = cairn__tok_bpe_fragment(&e, text + fa[i].off, fa[i].len);
        }
        prev_special = false;
    }
    if (rc == 0 && add && t->add_eos) {
        emit(&e, t->eos);
    }
done:
    free(fa);
    free(fb);
    free(e.buf);
    free(e.syms);
    free(e.heap);
    free(e.cps);
    if (rc < 0) {
        cairn_errorf(err, rc, "cairn_tok_encode: out of memory");
        return CAIRN_TOK_ENCODE_FAILED;
    }
    if (e.n > INT32_MAX) {
        cairn_errorf(err, CAIRN_EOVERFLOW, "cairn_tok_encode: too many tokens");
        return CAIRN_TOK_ENCODE_FAILED;
    }
    return e.n <= cap ? (int)e.n : -(int)e.n;
}

/* ==== Decode and accessors ==================================================================== */

int cairn_tok_decode_piece(const cairn_tok *t, int32_t id, int flags, const char **piece,
                           size_t *len)
{
    if (id < 0 || id >= t->n_vocab) {
        *piece = "", *len = 0;
        return CAIRN_ERANGE;
    }
    int ty = t->type[id];
    if (!(flags & CAIRN_TOK_DECODE_SPECIAL) &&
        (ty == CAIRN_TOK_TYPE_CONTROL || ty == CAIRN_TOK_TYPE_UNKNOWN)) {
        *piece = "", *len = 0;
        return 0;
    }
    *piece = t->piece + t->piece_off[id];
    *len = t->piece_off[id + 1] - t->piece_off[id];
    return 0;
}

int cairn_tok_decode(const cairn_tok *t, const int32_t *ids, size_t n, int flags, char *buf,
                     size_t cap, size_t *out_len, cairn_error *err)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t l;
        if (cairn_tok_decode_piece(t, ids[i], flags, &p, &l) < 0) {
            return cairn_errorf(err, CAIRN_EINVAL,
                                "token %zu: id %d is outside the vocabulary (%d)", i, ids[i],
                                t->n_vocab);
        }
        if (total + l < cap) {
            memcpy(buf + total, p, l);
        }
        total += l;
    }
    if (out_len) {
        *out_len = total;
    }
    if (total >= cap) {
        if (cap > 0) {
            buf[0] = '\0';
        }
        return cairn_errorf(err, CAIRN_ERANGE, "decode: %zu bytes (+1) do not fit in %zu", total,
                            cap);
    }
    buf[total] = '\0';
    return 0;
}

cairn_tok_kind cairn_tok_get_kind(const cairn_tok *t)
{
    return t->kind;
}
int32_t cairn_tok_vocab_size(const cairn_tok *t)
{
    return t->n_vocab;
}
int32_t cairn_tok_bos(const cairn_tok *t)
{
    return t->bos;
}
int32_t cairn_tok_eos(const cairn_tok *t)
{
    return t->eos;
}
int32_t cairn_tok_eot(const cairn_tok *t)
{
    return t->eot;
}

bool cairn_tok_is_eog(const cairn_tok *t, int32_t id)
{
    if (id < 0) {
        return false;
    }
    for (int i = 0; i < t->n_eog; i++) {
        if (t->eog[i] == id) {
            return true;
        }
    }
    return false;
}

int cairn_tok_type(const cairn_tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab ? t->type[id] : -1;
}

const char *cairn_tok_text(const cairn_tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab ? t->text + t->text_off[id] : NULL;
}
