/* common/json.c — JSON on jansson: bounded parsing, validated field extraction, output. */
#include "common/json.h"
#include "common/utf8.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int cairn_json_parse(json_t **out, const char *buf, size_t len, size_t max_len, cairn_error *err)
{
    *out = NULL;
    if (len > max_len)
        return cairn_errorf(err, CAIRN_ELIMIT,
                            "JSON document of %zu bytes exceeds the limit of %zu", len, max_len);
    json_error_t je;
    json_t *v = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!v)
        return cairn_errorf(err, CAIRN_EFORMAT, "invalid JSON at line %d, column %d: %s", je.line,
                            je.column, je.text);
    *out = v;
    return 0;
}

/* RFC 3629 well-formedness: the shortest form, no surrogates, nothing above U+10FFFF. */
bool cairn_json_utf8_valid(const char *str, size_t len) { return cairn_utf8_valid(str, len); }

json_t *cairn_json_text(const char *s, size_t n)
{
    if (cairn_utf8_valid(s, n)) return json_stringn(s, n);
    char *t = malloc(3 * n + 1); /* each byte becomes at most the 3 bytes of U+FFFD */
    if (!t) return NULL;
    size_t len = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (l && i + l <= n && cairn_utf8_valid(s + i, l)) {
            memcpy(t + len, s + i, l);
            len += l;
            i += l;
        } else {
            memcpy(t + len, "\xEF\xBF\xBD", 3);
            len += 3;
            i++;
        }
    }
    json_t *j = json_stringn(t, len);
    free(t);
    return j;
}

const char *cairn_json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    default:
        return "null";
    }
}

/*
 * Finds the value at a dotted path. Returns 0 with *val NULL when a segment is
 * absent or null, CAIRN_EFORMAT when an intermediate segment is not an object.
 */
static int lookup(const json_t *obj, const char *path, json_t **val, cairn_error *err)
{
    *val = NULL;
    const json_t *cur = obj;
    const char *seg = path;
    for (;;) {
        const char *dot = strchr(seg, '.');
        size_t slen = dot ? (size_t)(dot - seg) : strlen(seg);
        if (!json_is_object(cur)) {
            int plen = (int)(seg - path) - 1;
            if (plen <= 0)
                return cairn_errorf(err, CAIRN_EFORMAT, "expected an object, got %s",
                                    cairn_json_type_name(cur));
            return cairn_errorf(err, CAIRN_EFORMAT, "%.*s: expected an object, got %s", plen, path,
                                cairn_json_type_name(cur));
        }
        json_t *next = json_object_getn(cur, seg, slen);
        if (!next || json_is_null(next)) return 0;
        if (!dot) {
            *val = next;
            return 0;
        }
        cur = next;
        seg = dot + 1;
    }
}

/* Shared start of every getter: the value, or a missing-field result. */
static int fetch(const json_t *obj, const char *key, bool required, json_t **val, cairn_error *err)
{
    int rc = lookup(obj, key, val, err);
    if (rc) return rc;
    if (!*val && required)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: missing required field", key);
    return 0;
}

static int type_error(const char *key, const char *want, const json_t *v, cairn_error *err)
{
    return cairn_errorf(err, CAIRN_EFORMAT, "%s: expected %s, got %s", key, want,
                        cairn_json_type_name(v));
}

int cairn_json_get_int(const json_t *obj, const char *key, int64_t *out, int64_t min, int64_t max,
                       bool required, cairn_error *err)
{
    json_t *v;
    int rc = fetch(obj, key, required, &v, err);
    if (rc || !v) return rc;
    int64_t x;
    if (json_is_integer(v)) {
        x = (int64_t)json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        /* 2^63 as a double is exactly 9223372036854775808.0, just past INT64_MAX. */
        if (d != floor(d))
            return cairn_errorf(err, CAIRN_EFORMAT, "%s: %g is not an integer", key, d);
        if (d < -9223372036854775808.0 || d >= 9223372036854775808.0)
            return cairn_errorf(err, CAIRN_ERANGE, "%s: %g is out of the integer range", key, d);
        x = (int64_t)d;
    } else {
        return type_error(key, "an integer", v, err);
    }
    if (x < min)
        return cairn_errorf(err, CAIRN_ERANGE, "%s: %lld is below the minimum %lld", key,
                            (long long)x, (long long)min);
    if (x > max)
        return cairn_errorf(err, CAIRN_ERANGE, "%s: %lld is above the maximum %lld", key,
                            (long long)x, (long long)max);
    *out = x;
    return 0;
}

int cairn_json_get_number(const json_t *obj, const char *key, double *out, double min, double max,
                          bool required, cairn_error *err)
{
    json_t *v;
    int rc = fetch(obj, key, required, &v, err);
    if (rc || !v) return rc;
    if (!json_is_number(v)) return type_error(key, "a number", v, err);
    double x = json_number_value(v);
    if (x < min)
        return cairn_errorf(err, CAIRN_ERANGE, "%s: %g is below the minimum %g", key, x, min);
    if (x > max)
        return cairn_errorf(err, CAIRN_ERANGE, "%s: %g is above the maximum %g", key, x, max);
    *out = x;
    return 0;
}

int cairn_json_get_bool(const json_t *obj, const char *key, bool *out, bool required,
                        cairn_error *err)
{
    json_t *v;
    int rc = fetch(obj, key, required, &v, err);
    if (rc || !v) return rc;
    if (!json_is_boolean(v)) return type_error(key, "a boolean", v, err);
    *out = json_is_true(v);
    return 0;
}

int cairn_json_get_string(const json_t *obj, const char *key, const char **out, size_t *out_len,
                          size_t min_len, size_t max_len, bool required, cairn_error *err)
{
    json_t *v;
    int rc = fetch(obj, key, required, &v, err);
    if (rc || !v) return rc;
    if (!json_is_string(v)) return type_error(key, "a string", v, err);
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (memchr(s, '\0', n))
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: string contains a NUL character", key);
    if (!cairn_json_utf8_valid(s, n))
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: string is not valid UTF-8", key);
    if (n < min_len)
        return cairn_errorf(err, CAIRN_ERANGE, "%s: string of %zu bytes is shorter than %zu", key,
                            n, min_len);
    if (n > max_len)
        return cairn_errorf(err, CAIRN_ERANGE, "%s: string of %zu bytes is longer than %zu", key, n,
                            max_len);
    *out = s;
    if (out_len) *out_len = n;
    return 0;
}

int cairn_json_get_array(const json_t *obj, const char *key, json_t **out, size_t min_items,
                         size_t max_items, bool required, cairn_error *err)
{
    json_t *v;
    int rc = fetch(obj, key, required, &v, err);
    if (rc || !v) return rc;
    if (!json_is_array(v)) return type_error(key, "an array", v, err);
    size_t n = json_array_size(v);
    if (n < min_items)
        return cairn_errorf(err, CAIRN_ERANGE, "%s: %zu items, at least %zu required", key, n,
                            min_items);
    if (n > max_items)
        return cairn_errorf(err, CAIRN_ERANGE, "%s: %zu items, at most %zu allowed", key, n,
                            max_items);
    *out = v;
    return 0;
}

int cairn_json_get_object(const json_t *obj, const char *key, json_t **out, bool required,
                          cairn_error *err)
{
    json_t *v;
    int rc = fetch(obj, key, required, &v, err);
    if (rc || !v) return rc;
    if (!json_is_object(v)) return type_error(key, "an object", v, err);
    *out = v;
    return 0;
}

int cairn_json_check_keys(const json_t *obj, const char *path, const char *const *allowed,
                          cairn_error *err)
{
    if (!json_is_object(obj)) {
        if (path) return type_error(path, "an object", obj, err);
        return cairn_errorf(err, CAIRN_EFORMAT, "expected an object, got %s",
                            cairn_json_type_name(obj));
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, k) == 0;
        if (!ok) {
            if (path)
                return cairn_errorf(err, CAIRN_EFORMAT, "%s: unknown field '%.100s'", path, k);
            return cairn_errorf(err, CAIRN_EFORMAT, "unknown field '%.100s'", k);
        }
    }
    return 0;
}

static size_t dump_flags(bool pretty)
{
    return (pretty ? JSON_INDENT(2) : JSON_COMPACT) | JSON_ENCODE_ANY;
}

int cairn_json_dump_buf(const json_t *v, bool pretty, char *buf, size_t cap, size_t *out_len,
                        cairn_error *err)
{
    size_t need = json_dumpb(v, NULL, 0, dump_flags(pretty));
    if (need == 0) return cairn_errorf(err, CAIRN_EINVAL, "JSON value cannot be serialised");
    if (out_len) *out_len = need;
    if (need + 1 > cap)
        return cairn_errorf(err, CAIRN_ERANGE, "JSON output of %zu bytes does not fit in %zu", need,
                            cap);
    json_dumpb(v, buf, cap, dump_flags(pretty));
    buf[need] = '\0';
    return 0;
}

char *cairn_json_dump(const json_t *v, bool pretty)
{
    return json_dumps(v, dump_flags(pretty));
}
