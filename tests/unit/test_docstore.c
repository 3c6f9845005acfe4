/* tests/unit/test_docstore.c — the passage store: append, get, delete, compact, reopen, corruption. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "retrieval/docstore.h"

static char tmpdir[64];
static char path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/cairn-test-ds-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(path, sizeof(path), "%s/docs.cds", tmpdir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    char p2[160];
    snprintf(p2, sizeof(p2), "%s/bad.cds", tmpdir);
    unlink(p2);
    return rmdir(tmpdir);
}

/* FNV-1a 64 and little-endian stores, as the format describes (docstore.c). */
static uint64_t fnv(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static size_t file_size(const char *p)
{
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    return (size_t)st.st_size;
}

static void test_append_get_reopen(void **state)
{
    (void)state;
    unlink(path);
    cairn_docstore *ds = NULL;
    cairn_error err;
    assert_int_equal(cairn_docstore_open(&ds, path, CAIRN_DOCSTORE_WRITE, &err), CAIRN_ENOTFOUND);
    assert_int_equal(cairn_docstore_open(&ds, path, CAIRN_DOCSTORE_WRITE | CAIRN_DOCSTORE_CREATE,
                                         &err), 0);
    assert_int_equal(cairn_docstore_records(ds), 0);
    uint64_t uid = cairn_docstore_uid(ds);
    assert_true(uid != 0);
    cairn_doc_input in[3] = {
        {"a.txt#0", "A", "first passage", "{\"source\":\"a.txt\"}"},
        {"b#0", NULL, "second, with UTF-8: caf\xc3\xa9 \xe2\x9c\x93", NULL},
        {"c#0", "C", "third", "{}"},
    };
    uint64_t first = 0;
    assert_int_equal(cairn_docstore_append(ds, in, 3, &first, &err), 0);
    cairn_doc d;
    /* Visible before commit. */
    assert_int_equal(cairn_docstore_get(ds, first + 1, &d, &err), 0);
    assert_string_equal(d.text, in[1].text);
    assert_int_equal(d.text_len, strlen(in[1].text));
    assert_string_equal(d.title, "");
    assert_string_equal(d.meta, "{}");
    assert_int_equal(cairn_docstore_commit(ds, &err), 0);
    uint64_t first2 = 0;
    assert_int_equal(cairn_docstore_append(ds, &in[2], 1, &first2, &err), 0);
    assert_int_equal(first2, first + 3);
    cairn_docstore_close(ds); /* commits */

    assert_int_equal(cairn_docstore_open(&ds, path, 0, &err), 0);
    assert_true(cairn_docstore_uid(ds) == uid);
    assert_int_equal(cairn_docstore_records(ds), 4);
    assert_int_equal(cairn_docstore_live(ds), 4);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cairn_docstore_get(ds, first + (uint64_t)i, &d, &err), 0);
        assert_int_equal(d.id, first + (uint64_t)i);
        assert_string_equal(d.key, in[i].key);
        assert_string_equal(d.text, in[i].text);
        assert_false(d.deleted);
    }
    assert_string_equal(d.meta, "{}");
    cairn_docstore_at(ds, 0, &d);
    assert_string_equal(d.meta, in[0].meta);
    assert_int_equal(cairn_docstore_get(ds, first + 99, &d, &err), CAIRN_ENOTFOUND);
    /* Read-only: writers refuse. */
    assert_int_equal(cairn_docstore_append(ds, in, 1, NULL, &err), CAIRN_ESTATE);
    assert_int_equal(cairn_docstore_delete(ds, first, &err), CAIRN_ESTATE);
    cairn_docstore_close(ds);
}

static void test_bad_documents_rejected_whole_batch(void **state)
{
    (void)state;
    unlink(path);
    cairn_docstore *ds = NULL;
    cairn_error err;
    assert_int_equal(cairn_docstore_open(&ds, path, CAIRN_DOCSTORE_CREATE | CAIRN_DOCSTORE_WRITE,
                                         &err), 0);
    cairn_doc_input good = {"k", "t", "text", NULL};
    cairn_doc_input cases[] = {
        {"k", "t", "", NULL},                  /* empty text */
        {"k", "t", "bad \xff utf8", NULL},     /* invalid UTF-8 */
        {"k", "t\xc3", "text", NULL},          /* truncated sequence in the title */
        {"k", "t", "text", "[1,2]"},           /* metadata not an object */
        {"k", "t", "text", "{\"a\":"},         /* metadata not JSON */
    };
    int want[] = {CAIRN_EINVAL, CAIRN_EFORMAT, CAIRN_EFORMAT, CAIRN_EFORMAT, CAIRN_EFORMAT};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cairn_doc_input batch[2] = {good, cases[i]};
        assert_int_equal(cairn_docstore_append(ds, batch, 2, NULL, &err), want[i]);
        assert_non_null(strstr(err.msg, "doc 1"));
        assert_int_equal(cairn_docstore_records(ds), 0); /* all or nothing */
    }
    cairn_docstore_close(ds);
}

static void test_delete_and_compact(void **state)
{
    (void)state;
    unlink(path);
    cairn_docstore *ds = NULL;
    cairn_error err;
    assert_int_equal(cairn_docstore_open(&ds, path, CAIRN_DOCSTORE_CREATE | CAIRN_DOCSTORE_WRITE,
                                         &err), 0);
    enum { N = 200 };
    char texts[N][48];
    cairn_doc_input in[N];
    for (int i = 0; i < N; i++) {
        snprintf(texts[i], sizeof(texts[i]), "passage number %d with some words", i);
        in[i] = (cairn_doc_input){texts[i], NULL, texts[i], NULL};
    }
    uint64_t first;
    /* Several commits leave dead tables behind; compaction must drop them. */
    for (int b = 0; b < 4; b++) {
        assert_int_equal(cairn_docstore_append(ds, in + b * 50, 50, b ? NULL : &first, &err), 0);
        assert_int_equal(cairn_docstore_commit(ds, &err), 0);
    }
    for (int i = 0; i < N; i += 3)
        assert_int_equal(cairn_docstore_delete(ds, first + (uint64_t)i, &err), 0);
    assert_int_equal(cairn_docstore_delete(ds, first, &err), CAIRN_ENOTFOUND); /* twice */
    assert_int_equal(cairn_docstore_delete(ds, first + 10000, &err), CAIRN_ENOTFOUND);
    size_t live = N - (N + 2) / 3;
    assert_int_equal(cairn_docstore_live(ds), live);
    assert_int_equal(cairn_docstore_commit(ds, &err), 0);
    size_t before = file_size(path);
    uint64_t uid = cairn_docstore_uid(ds), next = cairn_docstore_next_id(ds);
    assert_int_equal(cairn_docstore_compact(ds, &err), 0);
    size_t after = file_size(path);
    assert_true(after < before);
    assert_int_equal(cairn_docstore_records(ds), live);
    assert_true(cairn_docstore_uid(ds) == uid);
    assert_true(cairn_docstore_next_id(ds) == next);
    /* Append after compaction continues the ids. */
    uint64_t id_new;
    assert_int_equal(cairn_docstore_append(ds, in, 1, &id_new, &err), 0);
    assert_true(id_new == next);
    cairn_docstore_close(ds);

    assert_int_equal(cairn_docstore_open(&ds, path, 0, &err), 0);
    cairn_doc d;
    for (int i = 0; i < N; i++) {
        int rc = cairn_docstore_get(ds, first + (uint64_t)i, &d, &err);
        if (i % 3 == 0) {
            assert_int_equal(rc, CAIRN_ENOTFOUND);
        } else {
            assert_int_equal(rc, 0);
            assert_string_equal(d.text, texts[i]); /* ids are stable across compaction */
        }
    }
    assert_int_equal(cairn_docstore_get(ds, id_new, &d, &err), 0);
    assert_string_equal(d.text, texts[0]);
    cairn_docstore_close(ds);
}

static void test_corrupt_files(void **state)
{
    (void)state;
    unlink(path);
    cairn_docstore *ds = NULL;
    cairn_error err;
    assert_int_equal(cairn_docstore_open(&ds, path, CAIRN_DOCSTORE_CREATE | CAIRN_DOCSTORE_WRITE,
                                         &err), 0);
    cairn_doc_input in[2] = {{"k1", "t1", "hello world", NULL}, {"k2", "t2", "second", NULL}};
    assert_int_equal(cairn_docstore_append(ds, in, 2, NULL, &err), 0);
    cairn_docstore_close(ds);
    size_t len = file_size(path);
    FILE *f = fopen(path, "rb");
    uint8_t *bytes = malloc(len);
    assert_int_equal(fread(bytes, 1, len, f), len);
    fclose(f);
    char bad[160];
    snprintf(bad, sizeof(bad), "%s/bad.cds", tmpdir);
    /* Each mutation: flip/modify, write, open must fail with EFORMAT naming the problem. */
    struct {
        size_t off;
        uint8_t xor;
        size_t keep; /* bytes written (0: all) */
        const char *what;
    } cases[] = {
        {0, 0x20, 0, "magic"},
        {24, 0x01, 0, "checksum"},          /* record count */
        {128 + 3, 0x01, 0, "checksum"},     /* a text byte: the table still matches... */
        {len - 40 + 8, 0x7f, 0, "checksum"}, /* a record's blob offset */
        {0, 0, len - 1, "bytes"},           /* truncated */
        {0, 0, 50, "header"},               /* shorter than a header */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        f = fopen(bad, "wb");
        bytes[cases[i].off] ^= cases[i].xor;
        fwrite(bytes, 1, cases[i].keep ? cases[i].keep : len, f);
        bytes[cases[i].off] ^= cases[i].xor;
        fclose(f);
        int rc = cairn_docstore_open(&ds, bad, 0, &err);
        if (i == 2) {
            /* Text bytes are not checksummed (the mmap'ed blob is read lazily): the store
             * opens and shows the changed byte, still NUL-terminated and bounded. */
            assert_int_equal(rc, 0);
            cairn_doc d;
            cairn_docstore_at(ds, 0, &d);
            assert_int_equal(d.key_len, 2);
            cairn_docstore_close(ds);
            continue;
        }
        assert_int_equal(rc, CAIRN_EFORMAT);
        assert_non_null(strstr(err.msg, cases[i].what));
        assert_null(ds);
    }
    /* Hostile but well-checksummed files: the bounds checks themselves must catch them. */
    struct {
        size_t field; /* offset within record 0 */
        uint32_t value;
        const char *what;
    } hostile[] = {
        {24, 0xfffffff0u, "outside the blob area"}, /* text_len huge */
        {24, 5, "NUL-terminated"},                  /* text_len short of its NUL */
        {32, 4, "unknown flags"},
    };
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
        uint8_t *b = malloc(len);
        memcpy(b, bytes, len);
        size_t table = len - 2 * 40;
        for (int k = 0; k < 4; k++)
            b[table + hostile[i].field + k] = (uint8_t)(hostile[i].value >> (8 * k));
        put64(b + 64, fnv(b + table, 2 * 40));
        put64(b + 120, fnv(b, 120));
        f = fopen(bad, "wb");
        fwrite(b, 1, len, f);
        fclose(f);
        assert_int_equal(cairn_docstore_open(&ds, bad, 0, &err), CAIRN_EFORMAT);
        assert_non_null(strstr(err.msg, hostile[i].what));
        free(b);
    }
    free(bytes);
}

/* A crash after an append (or after a commit wrote its table) but before the commit's header
 * leaves bytes after the committed file: open reads the committed store; a writable open cuts
 * them off, and the store goes on from there. The tail here is what such a crash leaves: the
 * blobs and table of a second commit, written after the first's end. */
static void test_uncommitted_tail(void **state)
{
    (void)state;
    unlink(path);
    cairn_docstore *ds = NULL;
    cairn_error err;
    assert_int_equal(cairn_docstore_open(&ds, path, CAIRN_DOCSTORE_CREATE | CAIRN_DOCSTORE_WRITE,
                                         &err), 0);
    cairn_doc_input one[1] = {{"k1", "t1", "committed text", NULL}};
    assert_int_equal(cairn_docstore_append(ds, one, 1, NULL, &err), 0);
    cairn_docstore_close(ds);
    const size_t committed = file_size(path);
    FILE *f = fopen(path, "rb");
    uint8_t *first = malloc(committed);
    assert_int_equal(fread(first, 1, committed, f), committed);
    fclose(f);
    /* A second commit, whose file is the first one's plus a tail; then the first's header. */
    assert_int_equal(cairn_docstore_open(&ds, path, CAIRN_DOCSTORE_WRITE, &err), 0);
    cairn_doc_input two[1] = {{"k2", "t2", "never committed", NULL}};
    assert_int_equal(cairn_docstore_append(ds, two, 1, NULL, &err), 0);
    cairn_docstore_close(ds);
    const size_t longer = file_size(path);
    assert_true(longer > committed);
    f = fopen(path, "r+b");
    assert_int_equal(fwrite(first, 1, 128, f), 128); /* the header only */
    fclose(f);
    for (int writable = 0; writable < 2; writable++) {
        assert_int_equal(cairn_docstore_open(&ds, path, writable ? CAIRN_DOCSTORE_WRITE : 0,
                                             &err), 0);
        assert_int_equal(cairn_docstore_live(ds), 1);
        cairn_doc d;
        cairn_docstore_at(ds, 0, &d);
        assert_string_equal(d.text, "committed text");
        if (writable) { /* cut off, and the store appends after its committed end */
            assert_int_equal(file_size(path), committed);
            assert_int_equal(cairn_docstore_append(ds, two, 1, NULL, &err), 0);
            assert_int_equal(cairn_docstore_live(ds), 2);
        } else {
            assert_int_equal(file_size(path), longer); /* a reader changes nothing */
        }
        cairn_docstore_close(ds);
    }
    assert_int_equal(cairn_docstore_open(&ds, path, 0, &err), 0);
    assert_int_equal(cairn_docstore_live(ds), 2);
    cairn_docstore_close(ds);
    free(first);
}

/* Appends with the ids a replicated log gives: gaps allowed, never at or below the store's ids;
 * the ids survive compaction and reopening, and a plain append continues after them. */
static void test_append_with_given_ids(void **state)
{
    (void)state;
    unlink(path);
    cairn_docstore *ds = NULL;
    cairn_error err;
    assert_int_equal(cairn_docstore_open(&ds, path, CAIRN_DOCSTORE_WRITE | CAIRN_DOCSTORE_CREATE,
                                         &err), 0);
    cairn_doc_input in[3] = {{"k0", NULL, "zero", NULL}, {"k1", NULL, "one", NULL},
                             {"k2", "T", "two", "{\"n\":2}"}};
    assert_int_equal(cairn_docstore_append_ids(ds, in, 2, 10, &err), 0);
    assert_int_equal(cairn_docstore_next_id(ds), 12);
    cairn_doc d;
    assert_int_equal(cairn_docstore_get(ds, 11, &d, &err), 0);
    assert_string_equal(d.text, "one");
    assert_int_equal(cairn_docstore_get(ds, 1, &d, &err), CAIRN_ENOTFOUND);
    /* Ids at or below the last stored are refused, and nothing is written. */
    assert_int_equal(cairn_docstore_append_ids(ds, &in[2], 1, 11, &err), CAIRN_ERANGE);
    assert_non_null(strstr(err.msg, "not above"));
    assert_int_equal(cairn_docstore_append_ids(ds, &in[2], 1, 3, &err), CAIRN_ERANGE);
    assert_int_equal(cairn_docstore_records(ds), 2);
    /* Past INT64_MAX: refused. */
    assert_int_equal(cairn_docstore_append_ids(ds, &in[2], 1, (uint64_t)INT64_MAX, &err),
                     CAIRN_ERANGE);
    /* A bad document refuses the batch as append does. */
    cairn_doc_input bad = {"kb", NULL, "", NULL};
    assert_int_equal(cairn_docstore_append_ids(ds, &bad, 1, 20, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_docstore_next_id(ds), 12);
    /* A gap, then delete, compact, reopen: the ids stay. */
    assert_int_equal(cairn_docstore_append_ids(ds, &in[2], 1, 40, &err), 0);
    assert_int_equal(cairn_docstore_delete(ds, 10, &err), 0);
    assert_int_equal(cairn_docstore_commit(ds, &err), 0);
    assert_int_equal(cairn_docstore_compact(ds, &err), 0);
    cairn_docstore_close(ds);
    assert_int_equal(cairn_docstore_open(&ds, path, CAIRN_DOCSTORE_WRITE, &err), 0);
    assert_int_equal(cairn_docstore_next_id(ds), 41);
    assert_int_equal(cairn_docstore_live(ds), 2);
    assert_int_equal(cairn_docstore_get(ds, 40, &d, &err), 0);
    assert_string_equal(d.meta, "{\"n\":2}");
    /* Compaction dropped id 10, yet it may not come back: next_id is kept. */
    assert_int_equal(cairn_docstore_append_ids(ds, in, 1, 10, &err), CAIRN_ERANGE);
    uint64_t first = 0;
    assert_int_equal(cairn_docstore_append(ds, in, 1, &first, &err), 0);
    assert_int_equal(first, 41);
    cairn_docstore_close(ds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_get_reopen),
        cmocka_unit_test(test_bad_documents_rejected_whole_batch),
        cmocka_unit_test(test_delete_and_compact),
        cmocka_unit_test(test_corrupt_files),
        cmocka_unit_test(test_uncommitted_tail),
        cmocka_unit_test(test_append_with_given_ids),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
