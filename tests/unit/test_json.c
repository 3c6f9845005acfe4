/* tests/unit/test_json.c — bounded parsing, validated extraction and its messages, output. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "common/json.h"

static json_t *parse(const char *text)
{
    json_t *v = NULL;
    cairn_error err;
    int rc = cairn_json_parse(&v, text, strlen(text), 1 << 20, &err);
    if (rc) fail_msg("parse failed: %s", err.msg);
    return v;
}

static void test_parse_errors_have_position(void **state)
{
    (void)state;
    json_t *v = (json_t *)1;
    cairn_error err;
    const char *bad = "{\n  \"a\": 1,\n  \"b\": }";
    assert_int_equal(cairn_json_parse(&v, bad, strlen(bad), 1000, &err), CAIRN_EFORMAT);
    assert_null(v);
    assert_non_null(strstr(err.msg, "line 3, column"));

    const char *dup = "{\"a\": 1, \"a\": 2}";
    assert_int_equal(cairn_json_parse(&v, dup, strlen(dup), 1000, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "duplicate"));

    const char *trailing = "{} x";
    assert_int_equal(cairn_json_parse(&v, trailing, strlen(trailing), 1000, &err), CAIRN_EFORMAT);

    const char *big = "[1, 2, 3]";
    assert_int_equal(cairn_json_parse(&v, big, strlen(big), 8, &err), CAIRN_ELIMIT);
    assert_non_null(strstr(err.msg, "9 bytes"));
    assert_int_equal(cairn_json_parse(&v, big, strlen(big), 9, &err), 0);
    assert_int_equal(json_array_size(v), 3);
    json_decref(v);

    /* Bytes after a length are not read; invalid UTF-8 in a string is refused by the parser. */
    const char *bad_utf8 = "\"\xc3\x28\"";
    assert_int_equal(cairn_json_parse(&v, bad_utf8, strlen(bad_utf8), 100, &err), CAIRN_EFORMAT);
}

static void test_get_int(void **state)
{
    (void)state;
    json_t *o = parse("{\"max_tokens\": 100, \"neg\": -5, \"s\": \"7\", \"r\": 5.0, \"f\": 5.5,"
                      " \"n\": null, \"big\": 5000}");
    cairn_error err;
    int64_t v = -1;
    assert_int_equal(cairn_json_get_int(o, "max_tokens", &v, 1, 4096, true, &err), 0);
    assert_int_equal(v, 100);
    assert_int_equal(cairn_json_get_int(o, "r", &v, 0, 10, true, &err), 0);
    assert_int_equal(v, 5);

    v = 42; /* absent or null and optional: untouched */
    assert_int_equal(cairn_json_get_int(o, "absent", &v, 0, 10, false, &err), 0);
    assert_int_equal(cairn_json_get_int(o, "n", &v, 0, 10, false, &err), 0);
    assert_int_equal(v, 42);

    assert_int_equal(cairn_json_get_int(o, "absent", &v, 0, 10, true, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "absent: missing required field");
    assert_int_equal(cairn_json_get_int(o, "s", &v, 0, 10, true, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "s: expected an integer, got string");
    assert_int_equal(cairn_json_get_int(o, "f", &v, 0, 10, true, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "f: 5.5 is not an integer");
    assert_int_equal(cairn_json_get_int(o, "big", &v, 1, 4096, true, &err), CAIRN_ERANGE);
    assert_string_equal(err.msg, "big: 5000 is above the maximum 4096");
    assert_int_equal(cairn_json_get_int(o, "neg", &v, 0, 10, true, &err), CAIRN_ERANGE);
    assert_string_equal(err.msg, "neg: -5 is below the minimum 0");
    assert_int_equal(v, 42);
    json_decref(o);
}

static void test_nested_paths(void **state)
{
    (void)state;
    json_t *o = parse("{\"rag\": {\"top_k\": 8, \"opts\": {\"deep\": true}}, \"s\": \"x\"}");
    cairn_error err;
    int64_t k = 0;
    bool deep = false;
    assert_int_equal(cairn_json_get_int(o, "rag.top_k", &k, 1, 100, true, &err), 0);
    assert_int_equal(k, 8);
    assert_int_equal(cairn_json_get_bool(o, "rag.opts.deep", &deep, true, &err), 0);
    assert_true(deep);
    assert_int_equal(cairn_json_get_int(o, "rag.top_k", &k, 1, 4, true, &err), CAIRN_ERANGE);
    assert_string_equal(err.msg, "rag.top_k: 8 is above the maximum 4");
    assert_int_equal(cairn_json_get_int(o, "rag.missing", &k, 1, 4, true, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "rag.missing: missing required field");
    assert_int_equal(cairn_json_get_int(o, "s.x", &k, 1, 4, true, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "s: expected an object, got string");
    json_decref(o);
}

static void test_get_string(void **state)
{
    (void)state;
    json_t *o = parse("{\"model\": \"gemma\", \"empty\": \"\", \"num\": 3, \"uni\": \"h\\u00e9\"}");
    cairn_error err;
    const char *s = NULL;
    size_t len = 0;
    assert_int_equal(cairn_json_get_string(o, "model", &s, &len, 1, 64, true, &err), 0);
    assert_string_equal(s, "gemma");
    assert_int_equal(len, 5);
    assert_int_equal(cairn_json_get_string(o, "uni", &s, &len, 1, 64, true, &err), 0);
    assert_int_equal(len, 3); /* é is two bytes */
    assert_int_equal(cairn_json_get_string(o, "model", &s, &len, 1, 4, true, &err), CAIRN_ERANGE);
    assert_string_equal(err.msg, "model: string of 5 bytes is longer than 4");
    assert_int_equal(cairn_json_get_string(o, "empty", &s, NULL, 1, 4, true, &err), CAIRN_ERANGE);
    assert_string_equal(err.msg, "empty: string of 0 bytes is shorter than 1");
    assert_int_equal(cairn_json_get_string(o, "num", &s, NULL, 0, 4, true, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "num: expected a string, got integer");

    /* Values built in code bypass the parser's checks; the getter still refuses them. */
    json_object_set_new(o, "nul", json_stringn_nocheck("a\0b", 3));
    json_object_set_new(o, "latin1", json_string_nocheck("caf\xe9"));
    assert_int_equal(cairn_json_get_string(o, "nul", &s, NULL, 0, 64, true, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "nul: string contains a NUL character");
    assert_int_equal(cairn_json_get_string(o, "latin1", &s, NULL, 0, 64, true, &err),
                     CAIRN_EFORMAT);
    assert_string_equal(err.msg, "latin1: string is not valid UTF-8");
    json_decref(o);
}

static void test_number_bool_array_object(void **state)
{
    (void)state;
    json_t *o = parse("{\"t\": 0.7, \"i\": 2, \"b\": false, \"bs\": \"true\", \"a\": [1,2,3],"
                      " \"o\": {\"x\": 1}}");
    cairn_error err;
    double d = 0;
    bool b = true;
    json_t *a = NULL, *obj = NULL;
    assert_int_equal(cairn_json_get_number(o, "t", &d, 0, 2, true, &err), 0);
    assert_true(d == 0.7);
    assert_int_equal(cairn_json_get_number(o, "i", &d, 0, 2, true, &err), 0);
    assert_true(d == 2.0);
    assert_int_equal(cairn_json_get_number(o, "t", &d, 1, 2, true, &err), CAIRN_ERANGE);
    assert_string_equal(err.msg, "t: 0.7 is below the minimum 1");
    assert_int_equal(cairn_json_get_number(o, "b", &d, 0, 2, true, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "b: expected a number, got boolean");

    assert_int_equal(cairn_json_get_bool(o, "b", &b, true, &err), 0);
    assert_false(b);
    assert_int_equal(cairn_json_get_bool(o, "bs", &b, true, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "bs: expected a boolean, got string");

    assert_int_equal(cairn_json_get_array(o, "a", &a, 1, 3, true, &err), 0);
    assert_int_equal(json_array_size(a), 3);
    assert_int_equal(cairn_json_get_array(o, "a", &a, 1, 2, true, &err), CAIRN_ERANGE);
    assert_string_equal(err.msg, "a: 3 items, at most 2 allowed");
    assert_int_equal(cairn_json_get_array(o, "a", &a, 4, 9, true, &err), CAIRN_ERANGE);
    assert_string_equal(err.msg, "a: 3 items, at least 4 required");
    assert_int_equal(cairn_json_get_array(o, "o", &a, 0, 9, true, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "o: expected an array, got object");

    assert_int_equal(cairn_json_get_object(o, "o", &obj, true, &err), 0);
    assert_int_equal(json_object_size(obj), 1);
    assert_int_equal(cairn_json_get_object(o, "a", &obj, true, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "a: expected an object, got array");
    json_decref(o);
}

static void test_check_keys_and_element_prefix(void **state)
{
    (void)state;
    json_t *o = parse("{\"messages\": [{\"role\": \"user\"}, {\"role\": 5}], \"modle\": \"x\"}");
    cairn_error err;
    static const char *const allowed[] = {"messages", "model", NULL};
    assert_int_equal(cairn_json_check_keys(o, NULL, allowed, &err), CAIRN_EFORMAT);
    assert_string_equal(err.msg, "unknown field 'modle'");
    json_t *msgs = NULL;
    assert_int_equal(cairn_json_get_array(o, "messages", &msgs, 1, 10, true, &err), 0);
    static const char *const msg_keys[] = {"role", "content", NULL};
    const char *role;
    assert_int_equal(cairn_json_check_keys(json_array_get(msgs, 0), "messages[0]", msg_keys, &err),
                     0);
    assert_int_equal(
        cairn_json_get_string(json_array_get(msgs, 1), "role", &role, NULL, 1, 16, true, &err),
        CAIRN_EFORMAT);
    cairn_error_prefix(&err, "messages[%d]", 1);
    assert_string_equal(err.msg, "messages[1]: role: expected a string, got integer");
    json_decref(o);
}

static void test_utf8_validation(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"plain ascii", true},
        {"h\xc3\xa9llo", true},      /* é */
        {"\xe2\x82\xac", true},      /* € */
        {"\xf0\x9d\x84\x9e", true},  /* U+1D11E */
        {"\xf4\x8f\xbf\xbf", true},  /* U+10FFFF */
        {"\xc0\x80", false},         /* overlong NUL */
        {"\xe0\x80\xaf", false},     /* overlong '/' */
        {"\xed\xa0\x80", false},     /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", false}, /* above U+10FFFF */
        {"\xe2\x82", false},         /* truncated */
        {"\x80", false},             /* lone continuation */
        {"\xff", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_int_equal(cairn_json_utf8_valid(cases[i].s, strlen(cases[i].s)), cases[i].ok);
}

static void test_dump(void **state)
{
    (void)state;
    json_t *o = parse("{\"b\": [1, 2.5, \"x\\\"y\"], \"a\": {\"c\": null}}");
    char *full = cairn_json_dump(o, false);
    assert_non_null(full);
    assert_string_equal(full, "{\"b\":[1,2.5,\"x\\\"y\"],\"a\":{\"c\":null}}");
    size_t n = strlen(full), got = 0;
    char buf[256];
    cairn_error err;
    assert_int_equal(cairn_json_dump_buf(o, false, buf, sizeof buf, &got, &err), 0);
    assert_int_equal(got, n);
    assert_string_equal(buf, full);
    got = 0;
    assert_int_equal(cairn_json_dump_buf(o, false, buf, n, &got, &err),
                     CAIRN_ERANGE); /* no room for NUL */
    assert_int_equal(got, n);
    assert_int_equal(cairn_json_dump_buf(o, false, buf, n + 1, &got, &err), 0);

    char *pretty = cairn_json_dump(o, true);
    assert_non_null(strchr(pretty, '\n'));
    json_t *back = parse(pretty);
    assert_true(json_equal(o, back));
    json_decref(back);
    free(pretty);
    free(full);
    /* Scalars serialise too. */
    json_t *num = json_integer(7);
    char *s = cairn_json_dump(num, false);
    assert_string_equal(s, "7");
    free(s);
    json_decref(num);
    json_decref(o);
}

/* Text for a JSON string: valid UTF-8 as it is; each stray byte one U+FFFD, the rest kept. */
static void test_text_replaces_invalid_utf8(void **state)
{
    (void)state;
    json_t *j = cairn_json_text("caf\xC3\xA9", 5);
    assert_string_equal(json_string_value(j), "caf\xC3\xA9");
    json_decref(j);
    /* a lone continuation byte, a truncated 3-byte character at the end */
    j = cairn_json_text("a\x80" "b\xE2\x82", 5);
    assert_string_equal(json_string_value(j), "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD");
    json_decref(j);
    j = cairn_json_text("", 0);
    assert_string_equal(json_string_value(j), "");
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_errors_have_position),
        cmocka_unit_test(test_get_int),
        cmocka_unit_test(test_nested_paths),
        cmocka_unit_test(test_get_string),
        cmocka_unit_test(test_number_bool_array_object),
        cmocka_unit_test(test_check_keys_and_element_prefix),
        cmocka_unit_test(test_utf8_validation),
        cmocka_unit_test(test_dump),
        cmocka_unit_test(test_text_replaces_invalid_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
