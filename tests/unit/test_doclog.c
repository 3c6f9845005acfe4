/* tests/unit/test_doclog.c — the document log's entry parser and validator, positions, and the
 * passages JSON a replica writes (services/doclog.c). Redis itself: test_replicas.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/doclog.h"

/* Parses NULL-terminated field/value strings. */
static int parse(cairn_doclog_entry *e, cairn_error *err, const char *const *kv)
{
    size_t n = 0, lens[64];
    while (kv[n]) {
        lens[n] = strlen(kv[n]);
        n++;
    }
    return cairn_doclog_entry_parse(kv, lens, n / 2, e, err);
}

static void test_add_and_del(void **state)
{
    (void)state;
    cairn_doclog_entry e;
    cairn_error err = {0};
    const char *add[] = {"op", "add", "first", "49", "n", "2", "passages",
                         "[{\"key\":\"k\",\"title\":\"T\",\"text\":\"caf\xc3\xa9\","
                         "\"meta\":{\"a\":[1,2]}},{\"text\":\"two\"}]",
                         NULL};
    assert_int_equal(parse(&e, &err, add), 0);
    assert_int_equal(e.op, CAIRN_RAG_OP_ADD);
    assert_int_equal(e.id, 49);
    assert_int_equal(e.n, 2);
    assert_string_equal(e.docs[0].key, "k");
    assert_string_equal(e.docs[0].title, "T");
    assert_string_equal(e.docs[0].text, "caf\xc3\xa9");
    assert_string_equal(e.docs[0].metadata_json, "{\"a\":[1,2]}");
    assert_null(e.docs[1].key);
    assert_null(e.docs[1].metadata_json);
    assert_int_equal(e.docs[1].text_len, 3);
    cairn_doclog_entry_clear(&e);

    const char *del[] = {"id", "7", "op", "del", NULL};
    assert_int_equal(parse(&e, &err, del), 0);
    assert_int_equal(e.op, CAIRN_RAG_OP_DEL);
    assert_int_equal(e.id, 7);
    cairn_doclog_entry_clear(&e);
}

/* What a replica writes, it reads back the same. */
static void test_round_trip(void **state)
{
    (void)state;
    cairn_api_doc docs[2] = {
        {.text = "alpha \"quoted\"\n", .key = "api", .metadata_json = "{\"x\":1}"},
        {.text = "beta", .title = "B"},
    };
    char *pj = cairn_doclog_passages_json(docs, 2);
    assert_non_null(pj);
    const char *kv[] = {"op", "add", "first", "1", "n", "2", "passages", pj, NULL};
    cairn_doclog_entry e;
    cairn_error err = {0};
    assert_int_equal(parse(&e, &err, kv), 0);
    assert_string_equal(e.docs[0].text, docs[0].text);
    assert_string_equal(e.docs[0].key, "api");
    assert_string_equal(e.docs[0].metadata_json, "{\"x\":1}");
    assert_string_equal(e.docs[1].title, "B");
    cairn_doclog_entry_clear(&e);
    free(pj);
    /* Metadata that is not a JSON object cannot be written. */
    cairn_api_doc bad = {.text = "x", .metadata_json = "[1]"};
    assert_null(cairn_doclog_passages_json(&bad, 1));
}

static void test_malformed_entries_refused(void **state)
{
    (void)state;
    static const struct {
        const char *kv[12];
        int rc;
        const char *words;
    } cases[] = {
        {{NULL}, CAIRN_EINVAL, "'op' missing"},
        {{"op", "dance", NULL}, CAIRN_EINVAL, "expected add or del"},
        {{"op", "del", NULL}, CAIRN_EINVAL, "'id' missing"},
        {{"op", "del", "id", "-3", NULL}, CAIRN_EINVAL, "decimal id"},
        {{"op", "del", "id", "007", NULL}, CAIRN_EINVAL, "decimal id"},
        {{"op", "del", "id", "9223372036854775808", NULL}, CAIRN_EINVAL, "2^63"},
        {{"op", "del", "id", "1", "n", "1", NULL}, CAIRN_EINVAL, "only op and id"},
        {{"op", "del", "id", "1", "id", "2", NULL}, CAIRN_EINVAL, "repeated"},
        {{"op", "del", "id", "1", "colour", "red", NULL}, CAIRN_EINVAL, "unknown field"},
        {{"op", "add", "first", "1", "n", "1", NULL}, CAIRN_EINVAL, "required"},
        {{"op", "add", "first", "1", "n", "0", "passages", "[]", NULL}, CAIRN_EINVAL, "positive"},
        {{"op", "add", "first", "1", "n", "10001", "passages", "[]", NULL}, CAIRN_ELIMIT,
         "above"},
        {{"op", "add", "first", "x", "n", "1", "passages", "[]", NULL}, CAIRN_EINVAL, "first"},
        {{"op", "add", "first", "9223372036854775807", "n", "1", "passages",
          "[{\"text\":\"a\"}]", NULL}, CAIRN_EINVAL, "past 2^63"},
        {{"op", "add", "first", "1", "n", "1", "passages", "{not json", NULL}, CAIRN_EINVAL,
         "passages"},
        {{"op", "add", "first", "1", "n", "1", "passages", "{}", NULL}, CAIRN_EINVAL, "array"},
        {{"op", "add", "first", "1", "n", "2", "passages", "[{\"text\":\"a\"}]", NULL},
         CAIRN_EINVAL, "n says 2"},
        {{"op", "add", "first", "1", "n", "1", "passages", "[3]", NULL}, CAIRN_EINVAL,
         "not a JSON object"},
        {{"op", "add", "first", "1", "n", "1", "passages", "[{\"text\":\"\"}]", NULL},
         CAIRN_EINVAL, "text missing or empty"},
        {{"op", "add", "first", "1", "n", "1", "passages", "[{\"title\":\"t\"}]", NULL},
         CAIRN_EINVAL, "text missing"},
        {{"op", "add", "first", "1", "n", "1", "passages", "[{\"text\":5}]", NULL},
         CAIRN_EINVAL, "not a string"},
        {{"op", "add", "first", "1", "n", "1", "passages", "[{\"text\":\"a\\u0000b\"}]", NULL},
         CAIRN_EINVAL, "NUL"},
        {{"op", "add", "first", "1", "n", "1", "passages", "[{\"text\":\"a\",\"meta\":[]}]",
          NULL}, CAIRN_EINVAL, "meta is not a JSON object"},
        {{"op", "add", "first", "1", "n", "1", "passages", "[{\"text\":\"a\",\"extra\":1}]",
          NULL}, CAIRN_EINVAL, "unknown field 'extra'"},
        {{"op", "add", "first", "1", "n", "1", "passages", "[{\"text\":\"\xff\"}]", NULL},
         CAIRN_EINVAL, "passages"},
        {{"op", "add", "id", "1", "first", "1", "n", "1", "passages", "[{\"text\":\"a\"}]",
          NULL}, CAIRN_EINVAL, "'id' is not allowed"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cairn_doclog_entry e;
        cairn_error err = {0};
        int rc = parse(&e, &err, cases[i].kv);
        if (rc != cases[i].rc || !strstr(err.msg, cases[i].words))
            fail_msg("case %zu: rc %d, message '%s' (want %d, '%s')", i, rc, err.msg,
                     cases[i].rc, cases[i].words);
        assert_null(e.docs); /* nothing is left for the caller to free */
    }
    /* A NUL inside a field name or value is not a match for any field. */
    const char *kv[] = {"op\0x", "del", "id", "1"};
    size_t lens[] = {4, 3, 2, 1};
    cairn_doclog_entry e;
    cairn_error err = {0};
    assert_int_equal(cairn_doclog_entry_parse(kv, lens, 2, &e, &err), CAIRN_EINVAL);
}

static void test_positions(void **state)
{
    (void)state;
    cairn_doclog_pos p, q;
    assert_int_equal(cairn_doclog_pos_parse("1700000000000-5", 15, &p), 0);
    assert_true(p.ms == 1700000000000ull && p.seq == 5);
    assert_int_equal(cairn_doclog_pos_parse("0", 1, &q), 0);
    assert_true(q.ms == 0 && q.seq == 0);
    assert_int_equal(cairn_doclog_pos_cmp(q, p), -1);
    assert_int_equal(cairn_doclog_pos_parse("1700000000000-12", 16, &q), 0);
    assert_int_equal(cairn_doclog_pos_cmp(q, p), 1); /* numeric, not text, order */
    assert_int_equal(cairn_doclog_pos_cmp(p, p), 0);
    const char *bad[] = {"", "-", "1-", "-1", "1-2-3", "a-1", "1-b", "99999999999999999999-0",
                         " 1-0"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(cairn_doclog_pos_parse(bad[i], strlen(bad[i]), &p), CAIRN_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_and_del),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_malformed_entries_refused),
        cmocka_unit_test(test_positions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
