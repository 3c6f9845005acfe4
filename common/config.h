/*
 * common/config.h — typed configuration from a schema, merged from several sources.
 *
 * A program declares its keys in a table (cairn_config_key). Values come from, in
 * rising precedence:
 *   1. the schema's defaults;
 *   2. a config file of `key = value` lines: '#' starts a comment (at the start of a
 *      line, or after whitespace in an unquoted value); a value may be "double
 *      quoted" with \" \\ \n \t escapes; a key given twice takes the later value;
 *   3. environment variables CAIRN_<KEY>: the key upper-cased, '.' and '-' → '_'
 *      (port → CAIRN_PORT, http.threads → CAIRN_HTTP_THREADS);
 *   4. command-line flags --key=value or --key value; '-' and '_' are the same in
 *      flag names (--data-dir = --data_dir); a bool flag alone means true and
 *      --no-key means false; `--` ends the flags.
 * A value from a lower-precedence source never replaces one from a higher source,
 * whatever the order of the load calls, so a program can read flags first (to find
 * the config file's path) and the file after. Every value is still validated.
 *
 * Errors name the key, the value, the problem and where it came from:
 *   "port: 70000 is above the maximum 65535 (from CAIRN_PORT)"
 *   "unknown key 'prot' (from cairnd.conf:3); did you mean 'port'?"
 * Unknown keys in files and flags are errors; unknown CAIRN_* variables are ignored
 * (other tools share the prefix).
 *
 * Value syntax by type: int — decimal integer; float — decimal or exponent form;
 * bool — true/false, yes/no, on/off, 1/0; string — any text; size — an integer
 * count of bytes with an optional suffix K, M, G, T (also KB/KiB, ...; all powers of
 * 1024); duration — a number with a unit ns, us, ms, s, m or h (bare numbers are seconds).
 *
 * A cairn_config is not thread-safe while loading; once loaded, concurrent readers are fine.
 */
#ifndef CAIRN_COMMON_CONFIG_H
#define CAIRN_COMMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

typedef enum {
    CAIRN_CFG_INT,      /* int64_t */
    CAIRN_CFG_FLOAT,    /* double */
    CAIRN_CFG_BOOL,     /* bool */
    CAIRN_CFG_STRING,   /* const char * */
    CAIRN_CFG_SIZE,     /* uint64_t bytes */
    CAIRN_CFG_DURATION, /* int64_t nanoseconds */
} cairn_config_type;

enum {
    CAIRN_CFG_REQUIRED = 1, /* cairn_config_check fails while the key is unset */
    CAIRN_CFG_SECRET = 2,   /* the value is never printed (help, describe) */
};

/* One key of a schema. Strings are borrowed: the schema must outlive the config. */
typedef struct {
    const char *name; /* [a-z0-9_.], e.g. "port", "http.threads" */
    cairn_config_type type;
    const char *def; /* default, written as in a file; NULL = none */
    const char *min; /* inclusive bounds for int/float/size/duration, as text; NULL = none */
    const char *max;
    const char *help;    /* one line */
    const char *choices; /* strings only: allowed values separated by '|'; NULL = any */
    unsigned flags;      /* CAIRN_CFG_REQUIRED | CAIRN_CFG_SECRET */
} cairn_config_key;

/* Where a value came from, in rising precedence. */
typedef enum {
    CAIRN_CFG_FROM_UNSET = 0,
    CAIRN_CFG_FROM_DEFAULT,
    CAIRN_CFG_FROM_FILE,
    CAIRN_CFG_FROM_ENV,
    CAIRN_CFG_FROM_FLAG,
} cairn_config_origin;

typedef struct cairn_config cairn_config;

/*
 * Checks the schema (names, bounds, defaults) and applies the defaults. Returns 0 and
 * *out (free with cairn_config_free), or CAIRN_EINVAL naming the bad schema entry.
 */
int cairn_config_new(cairn_config **out, const cairn_config_key *schema, size_t n_keys,
                     cairn_error *err);
void cairn_config_free(cairn_config *c); /* NULL is a no-op */

/* Loads a config file (at most 1 MiB). CAIRN_EIO when it cannot be read. */
int cairn_config_load_file(cairn_config *c, const char *path, cairn_error *err);

/* Loads config-file text; name stands for the file in messages ("name:line"). */
int cairn_config_load_text(cairn_config *c, const char *text, size_t len, const char *name,
                           cairn_error *err);

/* Loads CAIRN_<KEY> variables from envp (NULL-terminated "NAME=value"; NULL = environ). */
int cairn_config_load_env(cairn_config *c, char *const *envp, cairn_error *err);

/*
 * Loads flags from argv[0..argc) (pass argc - 1, argv + 1 from main). Arguments that are
 * not flags are stored in positional (capacity argc) with their count in *n_positional;
 * with positional NULL they are errors. --help / -h set cairn_config_help_requested.
 */
int cairn_config_load_args(cairn_config *c, int argc, char *const *argv, const char **positional,
                           int *n_positional, cairn_error *err);

/*
 * Sets one key from text, as if from origin; src names the source in messages.
 * Returns 0, CAIRN_ENOTFOUND for an unknown key, or CAIRN_EINVAL / CAIRN_ERANGE.
 */
int cairn_config_set(cairn_config *c, const char *key, const char *value,
                     cairn_config_origin origin, const char *src, cairn_error *err);

/* Fails with CAIRN_EINVAL naming the first required key that is still unset. */
int cairn_config_check(const cairn_config *c, cairn_error *err);

bool cairn_config_help_requested(const cairn_config *c);

/*
 * Typed getters. name must be a schema key of that type (a programmer error
 * otherwise: asserts in debug builds, returns 0/NULL). Unset keys read as 0, false
 * or NULL. Strings are owned by the config and valid until the key is set again or
 * the config is freed.
 */
int64_t cairn_config_int(const cairn_config *c, const char *name);
double cairn_config_float(const cairn_config *c, const char *name);
bool cairn_config_bool(const cairn_config *c, const char *name);
const char *cairn_config_string(const cairn_config *c, const char *name);
uint64_t cairn_config_size(const cairn_config *c, const char *name);
int64_t cairn_config_duration_ns(const cairn_config *c, const char *name);
bool cairn_config_is_set(const cairn_config *c, const char *name);

/* Where the key's value came from, and its description ("default", "cairnd.conf:3", "CAIRN_PORT",
 * "--port"). */
cairn_config_origin cairn_config_origin_of(const cairn_config *c, const char *name);
const char *cairn_config_source(const cairn_config *c, const char *name);

/*
 * The option listing for --help, generated from the schema: one entry per key with
 * flag, type, environment variable, help, default and bounds. The caller frees it;
 * NULL when out of memory.
 */
char *cairn_config_help(const cairn_config *c);

/* The effective values, one "key = value  # source" line each, secrets as "<secret>". Caller frees.
 */
char *cairn_config_describe(const cairn_config *c);

/* The parsers behind size and duration values; 0 or CAIRN_EINVAL / CAIRN_ERANGE. */
int cairn_parse_size(const char *s, uint64_t *out);
int cairn_parse_duration(const char *s, int64_t *out_ns);

#endif
