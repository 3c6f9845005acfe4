/*
 * common/json.h — JSON on jansson: bounded parsing, validated field extraction, output.
 *
 * The getters read one field of an object and check it, with error messages that
 * name the field path: "max_tokens: 5000 is above the maximum 4096",
 * "rag.top_k: expected an integer, got string". A key may be a dotted path into
 * nested objects ("rag.top_k"). A field that is absent or JSON null is "missing":
 * an error when required, otherwise the getter returns 0 and leaves *out untouched,
 * so callers set the default first. To name array elements in messages, validate
 * each element and prefix errors with cairn_error_prefix(err, "messages[%zu]", i).
 *
 * Getters return 0 or a negative CAIRN_E* code (EFORMAT for a wrong type or missing
 * field, ERANGE for a value out of bounds). Values handed back (strings, arrays)
 * are borrowed from obj and live as long as it. All functions are thread-safe on
 * distinct objects.
 */
#ifndef CAIRN_COMMON_JSON_H
#define CAIRN_COMMON_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/*
 * Parses len bytes of buf as one JSON value (duplicate object keys rejected, trailing
 * garbage rejected). Inputs over max_len bytes fail with CAIRN_ELIMIT before parsing.
 * Returns 0 and a new reference in *out (release with json_decref), or CAIRN_EFORMAT
 * with "line L, column C: <what>" in err.
 */
int cairn_json_parse(json_t **out, const char *buf, size_t len, size_t max_len, cairn_error *err);

/* Whether s[0..len) is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
bool cairn_json_utf8_valid(const char *s, size_t len);

/* A JSON string of s[0..n) with each byte that does not start a well-formed UTF-8 character
 * replaced by U+FFFD (model output can hold byte-fallback tokens that form no character; a
 * passage can be cut inside one). New reference, or NULL when out of memory. */
json_t *cairn_json_text(const char *s, size_t n);

/* "object", "array", "string", "integer", "number", "boolean" or "null"; static. */
const char *cairn_json_type_name(const json_t *v);

/* An integer field in [min, max]. Integral reals (5.0) are accepted. */
int cairn_json_get_int(const json_t *obj, const char *key, int64_t *out, int64_t min, int64_t max,
                       bool required, cairn_error *err);

/* A number field (integer or real) in [min, max]. */
int cairn_json_get_number(const json_t *obj, const char *key, double *out, double min, double max,
                          bool required, cairn_error *err);

/* A boolean field (true/false only). */
int cairn_json_get_bool(const json_t *obj, const char *key, bool *out, bool required,
                        cairn_error *err);

/*
 * A string field of min_len..max_len bytes, valid UTF-8, without NUL bytes. *out
 * points into obj; *out_len (may be NULL) gets its length.
 */
int cairn_json_get_string(const json_t *obj, const char *key, const char **out, size_t *out_len,
                          size_t min_len, size_t max_len, bool required, cairn_error *err);

/* An array field of min_items..max_items elements; *out is borrowed from obj. */
int cairn_json_get_array(const json_t *obj, const char *key, json_t **out, size_t min_items,
                         size_t max_items, bool required, cairn_error *err);

/* An object field; *out is borrowed from obj. */
int cairn_json_get_object(const json_t *obj, const char *key, json_t **out, bool required,
                          cairn_error *err);

/*
 * Fails with CAIRN_EFORMAT "unknown field 'x'" (prefixed by "path: " when path is not
 * NULL) if obj has a key outside the NULL-terminated list allowed.
 */
int cairn_json_check_keys(const json_t *obj, const char *path, const char *const *allowed,
                          cairn_error *err);

/*
 * Serialises v (compact, or indented by 2 when pretty) into buf of cap bytes,
 * NUL-terminated. *out_len (may be NULL) gets the length without the NUL; when it
 * does not fit, returns CAIRN_ERANGE with *out_len set to the length needed.
 */
int cairn_json_dump_buf(const json_t *v, bool pretty, char *buf, size_t cap, size_t *out_len,
                        cairn_error *err);

/* Serialises v into a new string the caller frees with free(); NULL on failure. */
char *cairn_json_dump(const json_t *v, bool pretty);

#endif
