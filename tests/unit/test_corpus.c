/* tests/unit/test_corpus.c — document checks, token chunking, directory/JSONL/Debian ingest. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "retrieval/corpus.h"

static char tmpdir[64];

static void put_file(const char *rel, const char *content, size_t len)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", tmpdir, rel);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, len, f), len);
    fclose(f);
}

static cairn_docstore *new_store(const char *name)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", tmpdir, name);
    unlink(p);
    cairn_docstore *ds = NULL;
    cairn_error err;
    assert_int_equal(cairn_docstore_open(&ds, p, CAIRN_DOCSTORE_CREATE | CAIRN_DOCSTORE_WRITE,
                                         &err), 0);
    return ds;
}

/* ---- Checks --------------------------------------------------------------------------------------- */

static void test_check(void **state)
{
    (void)state;
    cairn_error err;
    assert_int_equal(cairn_corpus_check("hello", 5, 100, &err), 0);
    assert_int_equal(cairn_corpus_check("", 0, 100, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_corpus_check(" \n\t ", 4, 100, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_corpus_check("hello", 5, 4, &err), CAIRN_ELIMIT);
    assert_int_equal(cairn_corpus_check("he\0llo", 6, 100, &err), CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "offset 2"));
    assert_int_equal(cairn_corpus_check("a\x01\x02\x03\x04 b", 7, 100, &err), CAIRN_EUNSUPPORTED);
    assert_int_equal(cairn_corpus_check("caf\xc3\xa9 ok \xff!", 11, 100, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "offset 9"));
    assert_int_equal(cairn_corpus_check("\xe2\x82", 2, 100, &err), CAIRN_EFORMAT); /* cut short */
    assert_int_equal(cairn_corpus_check("\xe2\x82\xac", 3, 100, &err), 0);        /* euro sign */
}

/* ---- Chunking ------------------------------------------------------------------------------------- */

typedef struct {
    char *texts[256];
    size_t n;
} chunks;

static int collect(void *ctx, const char *s, size_t len)
{
    chunks *c = ctx;
    assert_true(c->n < 256);
    c->texts[c->n++] = strndup(s, len);
    return 0;
}

static void free_chunks(chunks *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->texts[i]);
    c->n = 0;
}

/* Word indices of "w<i>" words in a passage: first and last, and the count. */
static void word_span(const char *s, long *first, long *last, long *count)
{
    *count = 0;
    const char *p = s;
    while ((p = strchr(p, 'w'))) {
        long v = strtol(p + 1, (char **)&p, 10);
        if (*count == 0)
            *first = v;
        *last = v;
        (*count)++;
    }
}

static void test_chunk_words_with_overlap(void **state)
{
    (void)state;
    char *text = malloc(1000 * 8);
    size_t len = 0;
    for (int i = 0; i < 1000; i++)
        len += (size_t)sprintf(text + len, "%sw%d", i ? (i % 7 ? " " : "\n\n") : "", i);
    cairn_corpus_params p = cairn_corpus_default_params();
    p.max_tokens = 100;
    p.overlap_tokens = 20;
    chunks c = {0};
    assert_int_equal(cairn_corpus_chunk(text, len, &p, collect, &c), 0);
    long prev_last = -1, f = -1, l = -1, n = 0;
    for (size_t i = 0; i < c.n; i++) {
        word_span(c.texts[i], &f, &l, &n);
        assert_true(n <= 100 && n >= 1);
        assert_int_equal(l - f + 1, n); /* contiguous words */
        if (i == 0)
            assert_int_equal(f, 0);
        else
            assert_int_equal(prev_last - f + 1, 20); /* overlap, in words */
        if (i + 1 < c.n)
            assert_int_equal(n, 100); /* full passages except the last */
        prev_last = l;
    }
    assert_int_equal(prev_last, 999);
    /* Passages are slices of the text: original separators kept. */
    assert_non_null(strstr(c.texts[0], "w6\n\nw7"));
    free_chunks(&c);

    /* Whitespace-only gives nothing; one short text gives itself. */
    assert_int_equal(cairn_corpus_chunk("  \n ", 4, &p, collect, &c), 0);
    assert_int_equal(c.n, 0);
    assert_int_equal(cairn_corpus_chunk(" one two ", 9, &p, collect, &c), 0);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.texts[0], "one two");
    free_chunks(&c);
    /* Bad params. */
    p.overlap_tokens = 100;
    assert_int_equal(cairn_corpus_chunk(text, len, &p, collect, &c), CAIRN_EINVAL);
    free(text);
}

/* A tokenizer-like count: one token per 3 bytes, rounded up. */
static size_t count3(void *ctx, const char *w, size_t len)
{
    (*(size_t *)ctx)++;
    (void)w;
    return (len + 2) / 3;
}

static void test_chunk_uses_token_counts(void **state)
{
    (void)state;
    const char *text = "a bb ccc dddd eeeee ffffff ggggggg hhhhhhhh iiiiiiiii "
                       "averyveryverylongwordthatexceedsthelimitonitsown jj";
    cairn_corpus_params p = cairn_corpus_default_params();
    size_t calls = 0;
    p.max_tokens = 6;
    p.overlap_tokens = 2;
    p.count_tokens = count3;
    p.count_ctx = &calls;
    chunks c = {0};
    assert_int_equal(cairn_corpus_chunk(text, strlen(text), &p, collect, &c), 0);
    assert_int_equal(calls, 11); /* once per word */
    bool saw_long = false;
    for (size_t i = 0; i < c.n; i++) {
        size_t tokens = 0, words = 0;
        char *save = NULL, *dup = strdup(c.texts[i]);
        for (char *w = strtok_r(dup, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
            tokens += (strlen(w) + 2) / 3;
            words++;
        }
        free(dup);
        if (strstr(c.texts[i], "averyvery")) {
            saw_long = true;
            assert_int_equal(words, 1); /* over the limit alone: a passage of its own */
        } else {
            assert_true(tokens <= 6);
        }
    }
    assert_true(saw_long);
    assert_non_null(strstr(c.texts[c.n - 1], "jj"));
    free_chunks(&c);
}

/* ---- Ingest --------------------------------------------------------------------------------------- */

static void test_ingest_dir(void **state)
{
    (void)state;
    char p[256];
    snprintf(p, sizeof(p), "%s/docs", tmpdir);
    mkdir(p, 0755);
    snprintf(p, sizeof(p), "%s/docs/sub", tmpdir);
    mkdir(p, 0755);
    put_file("docs/a.txt", "Alpha document text.", 20);
    put_file("docs/sub/b.MD", "# Beta\n\nMarkdown body.", 22);
    put_file("docs/c.bin", "ignored", 7);
    put_file("docs/empty.txt", "  \n", 3);
    put_file("docs/bad.txt", "bad \xc3\x28 utf8", 11);
    put_file("docs/bin.txt", "x\0y", 3);
    char big[300];
    memset(big, 'z', sizeof(big));
    put_file("docs/big.txt", big, sizeof(big));
    snprintf(p, sizeof(p), "%s/docs/loop", tmpdir);
    unlink(p);
    assert_int_equal(symlink(".", p), 0); /* a loop if followed */

    cairn_docstore *ds = new_store("dir.cds");
    cairn_corpus_params cp = cairn_corpus_default_params();
    cp.max_doc_bytes = 256;
    cairn_corpus_stats st = {0};
    cairn_error err;
    snprintf(p, sizeof(p), "%s/docs", tmpdir);
    assert_int_equal(cairn_corpus_ingest_dir(ds, p, &cp, &st, &err), 0);
    assert_int_equal(st.docs, 2);
    assert_int_equal(st.passages, 2);
    assert_int_equal(st.skipped_empty, 1);
    assert_int_equal(st.skipped_utf8, 1);
    assert_int_equal(st.skipped_binary, 1);
    assert_int_equal(st.skipped_huge, 1);
    assert_int_equal(cairn_docstore_records(ds), 2);
    cairn_doc d;
    cairn_docstore_at(ds, 0, &d); /* name order: a.txt before sub/ */
    assert_string_equal(d.key, "a.txt#0");
    assert_string_equal(d.text, "Alpha document text.");
    json_t *m = json_loads(d.meta, 0, NULL);
    assert_non_null(m);
    assert_string_equal(json_string_value(json_object_get(m, "source")), "a.txt");
    assert_int_equal(json_integer_value(json_object_get(m, "chunk")), 0);
    json_decref(m);
    cairn_docstore_at(ds, 1, &d);
    assert_string_equal(d.key, "sub/b.MD#0");
    assert_int_equal(cairn_corpus_ingest_dir(ds, "/nonexistent-dir", &cp, &st, &err),
                     CAIRN_ENOTFOUND);
    cairn_docstore_close(ds);
}

static void test_ingest_jsonl(void **state)
{
    (void)state;
    const char *lines =
        "{\"id\": \"doc-1\", \"text\": \"First text.\", \"metadata\": {\"lang\": \"en\"}}\n"
        "{\"id\": \"doc-2\", \"text\": \n"                          /* 2: broken JSON */
        "{\"id\": \"doc-3\"}\n"                                     /* 3: no text */
        "\n"                                                        /* 4: blank, ignored */
        "{\"id\": [1], \"text\": \"x\"}\n"                          /* 5: bad id */
        "{\"id\": 6, \"text\": \"Six.\", \"title\": \"T6\"}\n"      /* 6: integer id, ok */
        "{\"id\": \"doc-7\", \"text\": \"\"}\n"                     /* 7: empty: skipped */
        "{\"id\": \"doc-8\", \"text\": \"x\", \"extra\": 1}\n"      /* 8: unknown field */
        "[1, 2]\n"                                                  /* 9: not an object */
        "{\"id\": \"doc-10\", \"text\": \"bad \xff\"}\n";           /* 10: invalid UTF-8 */
    put_file("in.jsonl", lines, strlen(lines));
    char p[256];
    snprintf(p, sizeof(p), "%s/in.jsonl", tmpdir);
    cairn_docstore *ds = new_store("jsonl.cds");
    cairn_corpus_params cp = cairn_corpus_default_params();
    cairn_corpus_stats st = {0};
    cairn_error err;
    assert_int_equal(cairn_corpus_ingest_jsonl(ds, p, &cp, &st, &err), 0);
    assert_int_equal(st.docs, 2);
    assert_int_equal(st.passages, 2);
    assert_int_equal(st.skipped_empty, 1);
    assert_int_equal(st.bad_lines, 6); /* 2, 3, 5, 8, 9, 10 */
    assert_int_equal(st.first_bad_line, 2);
    cairn_doc d;
    cairn_docstore_at(ds, 0, &d);
    assert_string_equal(d.key, "doc-1#0");
    assert_string_equal(d.title, "doc-1");
    json_t *m = json_loads(d.meta, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(m, "lang")), "en");
    assert_string_equal(json_string_value(json_object_get(m, "source_id")), "doc-1");
    json_decref(m);
    cairn_docstore_at(ds, 1, &d);
    assert_string_equal(d.key, "6#0");
    assert_string_equal(d.title, "T6");
    cairn_docstore_close(ds);

    /* strict: the first bad line fails the call, with its number. */
    ds = new_store("jsonl2.cds");
    cp.strict = true;
    memset(&st, 0, sizeof(st));
    assert_int_equal(cairn_corpus_ingest_jsonl(ds, p, &cp, &st, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "line 2"));
    cairn_docstore_close(ds);
    /* max_passages stops early. */
    ds = new_store("jsonl3.cds");
    cp.strict = false;
    cp.max_passages = 1;
    memset(&st, 0, sizeof(st));
    assert_int_equal(cairn_corpus_ingest_jsonl(ds, p, &cp, &st, &err), 0);
    assert_int_equal(cairn_docstore_records(ds), 1);
    cairn_docstore_close(ds);
}

static void test_ingest_debian(void **state)
{
    (void)state;
    const char *tr = "Package: alpha\n"
                     "Description-md5: 0123\n"
                     "Description-en: first tool\n"
                     " Alpha does things.\n"
                     " .\n"
                     " Second paragraph.\n"
                     "\n"
                     "Package: beta\n"
                     "Description-md5: 4567\n"
                     "Description-en: no long text\n"
                     "\n"
                     "Package: gamma\n"
                     "Description-en: third\n"
                     " Gamma text\n"
                     "  indented line\n";
    const char *secs = "alpha\tutils\ngamma\tgames\n";
    put_file("Translation-en", tr, strlen(tr));
    put_file("sections", secs, strlen(secs));
    char p1[256], p2[256];
    snprintf(p1, sizeof(p1), "%s/Translation-en", tmpdir);
    snprintf(p2, sizeof(p2), "%s/sections", tmpdir);
    cairn_docstore *ds = new_store("deb.cds");
    cairn_corpus_params cp = cairn_corpus_default_params();
    cairn_corpus_stats st = {0};
    cairn_error err;
    assert_int_equal(cairn_corpus_ingest_debian(ds, p1, p2, &cp, &st, &err), 0);
    assert_int_equal(st.docs, 3);
    assert_int_equal(cairn_docstore_records(ds), 3);
    cairn_doc d;
    cairn_docstore_at(ds, 0, &d);
    assert_string_equal(d.title, "alpha: first tool");
    assert_string_equal(d.text, "Alpha does things.\n\nSecond paragraph.");
    assert_string_equal(d.key, "debian:alpha#0");
    json_t *m = json_loads(d.meta, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(m, "package")), "alpha");
    assert_string_equal(json_string_value(json_object_get(m, "section")), "utils");
    json_decref(m);
    cairn_docstore_at(ds, 1, &d);
    assert_string_equal(d.text, "no long text"); /* the synopsis stands in */
    m = json_loads(d.meta, 0, NULL);
    assert_null(json_object_get(m, "section"));
    json_decref(m);
    cairn_docstore_at(ds, 2, &d);
    assert_string_equal(d.text, "Gamma text\n indented line");
    cairn_docstore_close(ds);
    /* Not a Translation file; missing file. */
    ds = new_store("deb2.cds");
    assert_int_equal(cairn_corpus_ingest_debian(ds, p2, NULL, &cp, &st, &err), CAIRN_EFORMAT);
    snprintf(p1, sizeof(p1), "%s/nope", tmpdir);
    assert_int_equal(cairn_corpus_ingest_debian(ds, p1, NULL, &cp, &st, &err), CAIRN_ENOTFOUND);
    assert_non_null(strstr(err.msg, "scripts/corpus"));
    cairn_docstore_close(ds);
}

/* The real default corpus, which scripts/setup fetches into the data dir (scripts/corpus). */
static void test_default_corpus_size(void **state)
{
    (void)state;
    const char *models = getenv("CAIRN_TEST_MODELS");
    char tr[512], secs[512];
    snprintf(tr, sizeof(tr), "%s/../corpus/debian-Translation-en", models ? models : "data/models");
    snprintf(secs, sizeof(secs), "%s/../corpus/debian-sections", models ? models : "data/models");
    /* scripts/setup fetches the corpus, so its absence is a failed set-up, not a reason to skip. */
    if (access(tr, R_OK) != 0) fail_msg("%s is missing: run scripts/setup (scripts/corpus)", tr);
    cairn_docstore *ds = new_store("default.cds");
    cairn_corpus_params cp = cairn_corpus_default_params();
    cairn_corpus_stats st = {0};
    cairn_error err;
    assert_int_equal(cairn_corpus_ingest_debian(ds, tr, secs, &cp, &st, &err), 0);
    print_message("default corpus: %zu descriptions, %zu passages, skipped %zu/%zu/%zu/%zu\n",
                  st.docs, st.passages, st.skipped_empty, st.skipped_huge, st.skipped_binary,
                  st.skipped_utf8);
    assert_true(st.passages >= 50000);
    cairn_docstore_close(ds);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/cairn-test-corpus-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_chunk_words_with_overlap),
        cmocka_unit_test(test_chunk_uses_token_counts),
        cmocka_unit_test(test_ingest_dir),
        cmocka_unit_test(test_ingest_jsonl),
        cmocka_unit_test(test_ingest_debian),
        cmocka_unit_test(test_default_corpus_size),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
