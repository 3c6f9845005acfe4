/* common/config.c — typed configuration from a schema, merged from several sources. */
#include "common/config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/strbuf.h"

extern char **environ;

#define CFG_NAME_MAX 64
#define CFG_FILE_MAX (1u << 20)

typedef union {
    int64_t i;  /* int, duration (ns) */
    uint64_t u; /* size (bytes) */
    double f;
    bool b;
} cfg_num;

typedef struct {
    cairn_config_origin origin; /* CAIRN_CFG_FROM_UNSET: no value */
    char src[96];
    cfg_num v;
    char *s; /* strings */
} cfg_val;

struct cairn_config {
    const cairn_config_key *keys;
    size_t n;
    cfg_val *vals;
    cfg_num *min, *max; /* parsed schema bounds */
    bool *has_min, *has_max;
    bool help;
};

/* ---- Value parsers --------------------------------------------------------------- */

static int parse_int(const char *s, int64_t *out)
{
    if (!*s || isspace((unsigned char)*s)) return CAIRN_EINVAL;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end) return CAIRN_EINVAL;
    if (errno == ERANGE) return CAIRN_ERANGE;
    *out = v;
    return 0;
}

static int parse_float(const char *s, double *out)
{
    if (!*s || isspace((unsigned char)*s)) return CAIRN_EINVAL;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || isnan(v)) return CAIRN_EINVAL;
    if (errno == ERANGE || isinf(v)) return CAIRN_ERANGE;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) return *out = true, 0;
        if (strcasecmp(s, no[i]) == 0) return *out = false, 0;
    }
    return CAIRN_EINVAL;
}

int cairn_parse_size(const char *s, uint64_t *out)
{
    if (!isdigit((unsigned char)*s)) return CAIRN_EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE) return CAIRN_ERANGE;
    static const struct {
        const char *suffix;
        int shift;
    } units[] = {
        {"", 0},     {"b", 0},  {"k", 10},  {"kb", 10},  {"kib", 10}, {"m", 20},  {"mb", 20},
        {"mib", 20}, {"g", 30}, {"gb", 30}, {"gib", 30}, {"t", 40},   {"tb", 40}, {"tib", 40},
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].suffix) == 0) {
            if (units[i].shift && v > (UINT64_MAX >> units[i].shift)) return CAIRN_ERANGE;
            *out = (uint64_t)v << units[i].shift;
            return 0;
        }
    }
    return CAIRN_EINVAL;
}

int cairn_parse_duration(const char *s, int64_t *out_ns)
{
    if (!isdigit((unsigned char)*s) && *s != '.') return CAIRN_EINVAL;
    char *end;
    double v = strtod(s, &end);
    if (end == s || isnan(v)) return CAIRN_EINVAL;
    static const struct {
        const char *unit;
        double ns;
    } units[] = {
        {"", 1e9}, {"ns", 1}, {"us", 1e3}, {"ms", 1e6}, {"s", 1e9}, {"m", 60e9}, {"h", 3600e9},
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].unit) == 0) {
            double ns = v * units[i].ns;
            if (!(ns < 9.2e18)) return CAIRN_ERANGE;
            *out_ns = (int64_t)llround(ns);
            return 0;
        }
    }
    return CAIRN_EINVAL;
}

static const char *type_name(cairn_config_type t)
{
    switch (t) {
    case CAIRN_CFG_INT:
        return "int";
    case CAIRN_CFG_FLOAT:
        return "float";
    case CAIRN_CFG_BOOL:
        return "bool";
    case CAIRN_CFG_STRING:
        return "string";
    case CAIRN_CFG_SIZE:
        return "size";
    case CAIRN_CFG_DURATION:
        return "duration";
    }
    return "?";
}

static const char *type_expect(cairn_config_type t)
{
    switch (t) {
    case CAIRN_CFG_INT:
        return "an integer";
    case CAIRN_CFG_FLOAT:
        return "a number";
    case CAIRN_CFG_BOOL:
        return "a boolean (true/false, yes/no, on/off, 1/0)";
    case CAIRN_CFG_SIZE:
        return "a size (bytes, or with a suffix K, M, G or T)";
    case CAIRN_CFG_DURATION:
        return "a duration (a number with ns, us, ms, s, m or h)";
    default:
        return "a string";
    }
}

/* Parses text for a numeric-like type. CAIRN_EINVAL: malformed, CAIRN_ERANGE: overflow. */
static int parse_num(cairn_config_type t, const char *s, cfg_num *out)
{
    switch (t) {
    case CAIRN_CFG_INT:
        return parse_int(s, &out->i);
    case CAIRN_CFG_FLOAT:
        return parse_float(s, &out->f);
    case CAIRN_CFG_BOOL:
        return parse_bool(s, &out->b);
    case CAIRN_CFG_SIZE:
        return cairn_parse_size(s, &out->u);
    case CAIRN_CFG_DURATION:
        return cairn_parse_duration(s, &out->i);
    default:
        return 0;
    }
}

/* Three-way comparison of two values of a numeric type. */
static int cmp_num(cairn_config_type t, cfg_num a, cfg_num b)
{
    switch (t) {
    case CAIRN_CFG_FLOAT:
        return (a.f > b.f) - (a.f < b.f);
    case CAIRN_CFG_SIZE:
        return (a.u > b.u) - (a.u < b.u);
    default:
        return (a.i > b.i) - (a.i < b.i);
    }
}

static bool in_choices(const char *choices, const char *s)
{
    size_t n = strlen(s);
    for (const char *p = choices;;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, s, n) == 0) return true;
        if (!bar) return false;
        p = bar + 1;
    }
}

/* ---- Keys ------------------------------------------------------------------------- */

/* Compares a user-written key with a schema name, '-' and '_' being the same. */
static bool key_eq(const char *user, size_t ulen, const char *name)
{
    size_t i = 0;
    for (; i < ulen && name[i]; i++) {
        char a = user[i] == '-' ? '_' : user[i];
        if (a != name[i]) return false;
    }
    return i == ulen && !name[i];
}

static long find_key(const cairn_config *c, const char *key, size_t len)
{
    for (size_t i = 0; i < c->n; i++)
        if (key_eq(key, len, c->keys[i].name)) return (long)i;
    return -1;
}

static size_t edit_distance(const char *a, size_t la, const char *b)
{
    size_t lb = strlen(b);
    if (la >= CFG_NAME_MAX || lb >= CFG_NAME_MAX) return (size_t)-1;
    size_t row[CFG_NAME_MAX + 1];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            char ca = a[i - 1] == '-' ? '_' : a[i - 1];
            size_t best = diag + (ca != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static int unknown_key(const cairn_config *c, const char *key, size_t len, const char *src,
                       cairn_error *err)
{
    const char *best = NULL;
    size_t best_d = (size_t)-1;
    for (size_t i = 0; i < c->n; i++) {
        size_t d = edit_distance(key, len, c->keys[i].name);
        if (d < best_d) best_d = d, best = c->keys[i].name;
    }
    if (best && best_d <= 2 && best_d < len)
        return cairn_errorf(err, CAIRN_ENOTFOUND,
                            "unknown key '%.*s' (from %s); did you mean '%s'?",
                            (int)(len > 64 ? 64 : len), key, src, best);
    return cairn_errorf(err, CAIRN_ENOTFOUND, "unknown key '%.*s' (from %s)",
                        (int)(len > 64 ? 64 : len), key, src);
}

/* Parses and checks value for key i; stores it unless a higher-precedence value is set. */
static int set_index(cairn_config *c, size_t i, const char *value, cairn_config_origin origin,
                     const char *src, cairn_error *err)
{
    const cairn_config_key *k = &c->keys[i];
    cfg_val *v = &c->vals[i];
    cfg_num num = {0};
    if (k->type == CAIRN_CFG_STRING) {
        if (k->choices && !in_choices(k->choices, value)) {
            cairn_strbuf sb = CAIRN_STRBUF_INIT;
            for (const char *p = k->choices; *p; p++) {
                if (*p == '|')
                    cairn_strbuf_puts(&sb, ", ");
                else
                    cairn_strbuf_putc(&sb, *p);
            }
            int rc = cairn_errorf(err, CAIRN_EINVAL, "%s: '%.100s' is not one of %s (from %s)",
                                  k->name, value, sb.data ? sb.data : "", src);
            cairn_strbuf_free(&sb);
            return rc;
        }
    } else {
        int rc = parse_num(k->type, value, &num);
        if (rc == CAIRN_ERANGE)
            return cairn_errorf(err, CAIRN_ERANGE, "%s: %.100s is out of range for %s (from %s)",
                                k->name, value, type_name(k->type), src);
        if (rc)
            return cairn_errorf(err, CAIRN_EINVAL, "%s: '%.100s' is not %s (from %s)", k->name,
                                value, type_expect(k->type), src);
        if (c->has_min[i] && cmp_num(k->type, num, c->min[i]) < 0)
            return cairn_errorf(err, CAIRN_ERANGE, "%s: %.100s is below the minimum %s (from %s)",
                                k->name, value, k->min, src);
        if (c->has_max[i] && cmp_num(k->type, num, c->max[i]) > 0)
            return cairn_errorf(err, CAIRN_ERANGE, "%s: %.100s is above the maximum %s (from %s)",
                                k->name, value, k->max, src);
    }
    if (v->origin > origin) return 0; /* a higher-precedence source already set it */
    if (k->type == CAIRN_CFG_STRING) {
        char *s = strdup(value);
        if (!s) return cairn_errorf(err, CAIRN_ENOMEM, "%s: out of memory", k->name);
        free(v->s);
        v->s = s;
    }
    v->v = num;
    v->origin = origin;
    snprintf(v->src, sizeof v->src, "%s", src);
    return 0;
}

int cairn_config_set(cairn_config *c, const char *key, const char *value,
                     cairn_config_origin origin, const char *src, cairn_error *err)
{
    long i = find_key(c, key, strlen(key));
    if (i < 0) return unknown_key(c, key, strlen(key), src, err);
    return set_index(c, (size_t)i, value, origin, src, err);
}

/* ---- Lifecycle -------------------------------------------------------------------- */

void cairn_config_free(cairn_config *c)
{
    if (!c) return;
    if (c->vals)
        for (size_t i = 0; i < c->n; i++)
            free(c->vals[i].s);
    free(c->vals);
    free(c->min);
    free(c->max);
    free(c->has_min);
    free(c->has_max);
    free(c);
}

static bool valid_name(const char *s)
{
    if (!s || !*s || strlen(s) >= CFG_NAME_MAX) return false;
    for (; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '_' || *s == '.'))
            return false;
    return true;
}

int cairn_config_new(cairn_config **out, const cairn_config_key *schema, size_t n_keys,
                     cairn_error *err)
{
    *out = NULL;
    cairn_config *c = calloc(1, sizeof *c);
    if (!c) return cairn_errorf(err, CAIRN_ENOMEM, "config: out of memory");
    c->keys = schema;
    c->n = n_keys;
    size_t n = n_keys ? n_keys : 1;
    c->vals = calloc(n, sizeof *c->vals);
    c->min = calloc(n, sizeof *c->min);
    c->max = calloc(n, sizeof *c->max);
    c->has_min = calloc(n, sizeof *c->has_min);
    c->has_max = calloc(n, sizeof *c->has_max);
    if (!c->vals || !c->min || !c->max || !c->has_min || !c->has_max) {
        cairn_config_free(c);
        return cairn_errorf(err, CAIRN_ENOMEM, "config: out of memory");
    }
    int rc = 0;
    for (size_t i = 0; i < n_keys && !rc; i++) {
        const cairn_config_key *k = &schema[i];
        if (!valid_name(k->name)) {
            rc = cairn_errorf(err, CAIRN_EINVAL, "config schema: bad key name '%s'",
                              k->name ? k->name : "(null)");
            break;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(schema[j].name, k->name) == 0)
                rc = cairn_errorf(err, CAIRN_EINVAL, "config schema: key '%s' declared twice",
                                  k->name);
        if (rc) break;
        if (k->type != CAIRN_CFG_STRING && k->type != CAIRN_CFG_BOOL) {
            if (k->min && parse_num(k->type, k->min, &c->min[i]))
                rc = cairn_errorf(err, CAIRN_EINVAL, "config schema: %s: bad minimum '%s'", k->name,
                                  k->min);
            if (!rc && k->max && parse_num(k->type, k->max, &c->max[i]))
                rc = cairn_errorf(err, CAIRN_EINVAL, "config schema: %s: bad maximum '%s'", k->name,
                                  k->max);
            c->has_min[i] = k->min != NULL;
            c->has_max[i] = k->max != NULL;
        }
        if (!rc && k->def) {
            rc = set_index(c, i, k->def, CAIRN_CFG_FROM_DEFAULT, "default", err);
            if (rc) cairn_error_prefix(err, "config schema");
        }
    }
    if (rc) {
        cairn_config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

/* ---- Sources ---------------------------------------------------------------------- */

static char *trim(char *s, char *end)
{
    while (s < end && isspace((unsigned char)*s))
        s++;
    while (end > s && isspace((unsigned char)end[-1]))
        end--;
    *end = '\0';
    return s;
}

/* Parses one non-blank line "key = value"; line is modified in place. */
static int load_line(cairn_config *c, char *line, const char *src, cairn_error *err)
{
    char *eq = strchr(line, '=');
    if (!eq) return cairn_errorf(err, CAIRN_EFORMAT, "%s: expected 'key = value'", src);
    char *key = trim(line, eq);
    if (!*key) return cairn_errorf(err, CAIRN_EFORMAT, "%s: missing key before '='", src);
    char *val = eq + 1;
    while (isspace((unsigned char)*val))
        val++;
    if (*val == '"') {
        char *w = val, *r = val + 1;
        for (; *r && *r != '"'; r++) {
            if (*r == '\\') {
                r++;
                switch (*r) {
                case 'n':
                    *w++ = '\n';
                    break;
                case 't':
                    *w++ = '\t';
                    break;
                case '"':
                case '\\':
                    *w++ = *r;
                    break;
                default:
                    return cairn_errorf(err, CAIRN_EFORMAT, "%s: %s: bad escape in quoted value",
                                        src, key);
                }
            } else {
                *w++ = *r;
            }
        }
        if (*r != '"')
            return cairn_errorf(err, CAIRN_EFORMAT, "%s: %s: unterminated quoted value", src, key);
        r++;
        while (isspace((unsigned char)*r))
            r++;
        if (*r && *r != '#')
            return cairn_errorf(err, CAIRN_EFORMAT, "%s: %s: text after the closing quote", src,
                                key);
        *w = '\0';
    } else {
        char *end = val;
        while (*end && !(*end == '#' && (end == val || isspace((unsigned char)end[-1]))))
            end++;
        val = trim(val, end);
    }
    long i = find_key(c, key, strlen(key));
    if (i < 0) return unknown_key(c, key, strlen(key), src, err);
    return set_index(c, (size_t)i, val, CAIRN_CFG_FROM_FILE, src, err);
}

int cairn_config_load_text(cairn_config *c, const char *text, size_t len, const char *name,
                           cairn_error *err)
{
    char *buf = malloc(len + 1);
    if (!buf) return cairn_errorf(err, CAIRN_ENOMEM, "%s: out of memory", name);
    memcpy(buf, text, len);
    buf[len] = '\0';
    int rc = 0, lineno = 0;
    char *p = buf, *bufend = buf + len;
    while (p < bufend && !rc) {
        lineno++;
        char *nl = memchr(p, '\n', (size_t)(bufend - p));
        char *end = nl ? nl : bufend;
        char src[96];
        snprintf(src, sizeof src, "%s:%d", name, lineno);
        if (memchr(p, '\0', (size_t)(end - p))) {
            rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: NUL byte in config text", src);
            break;
        }
        char *line = trim(p, end);
        if (*line && *line != '#') rc = load_line(c, line, src, err);
        p = end + 1;
    }
    free(buf);
    return rc;
}

int cairn_config_load_file(cairn_config *c, const char *path, cairn_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = malloc(CFG_FILE_MAX + 1);
    if (!buf) {
        fclose(f);
        return cairn_errorf(err, CAIRN_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, CFG_FILE_MAX + 1, f);
    int rc = 0;
    if (ferror(f))
        rc = cairn_errorf(err, CAIRN_EIO, "%s: read failed: %s", path, strerror(errno));
    else if (n > CFG_FILE_MAX)
        rc = cairn_errorf(err, CAIRN_ELIMIT, "%s: larger than the %u-byte limit for config files",
                          path, CFG_FILE_MAX);
    fclose(f);
    if (!rc) rc = cairn_config_load_text(c, buf, n, path, err);
    free(buf);
    return rc;
}

int cairn_config_load_env(cairn_config *c, char *const *envp, cairn_error *err)
{
    if (!envp) envp = environ;
    for (size_t i = 0; i < c->n; i++) {
        char var[CFG_NAME_MAX + 8] = "CAIRN_";
        size_t vl = 6;
        for (const char *p = c->keys[i].name; *p; p++)
            var[vl++] = (*p == '.' || *p == '-') ? '_' : (char)toupper((unsigned char)*p);
        var[vl] = '\0';
        for (char *const *e = envp; *e; e++) {
            if (strncmp(*e, var, vl) == 0 && (*e)[vl] == '=') {
                int rc = set_index(c, i, *e + vl + 1, CAIRN_CFG_FROM_ENV, var, err);
                if (rc) return rc;
            }
        }
    }
    return 0;
}

int cairn_config_load_args(cairn_config *c, int argc, char *const *argv, const char **positional,
                           int *n_positional, cairn_error *err)
{
    int npos = 0;
    bool flags_done = false;
    for (int a = 0; a < argc; a++) {
        const char *arg = argv[a];
        if (flags_done || arg[0] != '-' || arg[1] == '\0') {
            if (!positional)
                return cairn_errorf(err, CAIRN_EINVAL, "unexpected argument '%.100s'", arg);
            positional[npos++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            flags_done = true;
            continue;
        }
        if (arg[1] != '-') {
            if (strcmp(arg, "-h") == 0) {
                c->help = true;
                continue;
            }
            return cairn_errorf(err, CAIRN_EINVAL,
                                "unknown option '%.100s' (options are --key=value)", arg);
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        char src[96];
        snprintf(src, sizeof src, "--%.*s", (int)(nlen > 80 ? 80 : nlen), name);
        long i = find_key(c, name, nlen);
        if (i < 0 && !eq && key_eq(name, nlen, "help")) {
            c->help = true;
            continue;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (i < 0 && !eq && nlen > 3 && strncmp(name, "no-", 3) == 0) {
            long j = find_key(c, name + 3, nlen - 3);
            if (j >= 0 && c->keys[j].type == CAIRN_CFG_BOOL) {
                i = j;
                value = "false";
            }
        }
        if (i < 0) return unknown_key(c, name, nlen, src, err);
        if (!value) {
            if (c->keys[i].type == CAIRN_CFG_BOOL) {
                value = "true";
            } else if (a + 1 < argc) {
                value = argv[++a];
            } else {
                return cairn_errorf(err, CAIRN_EINVAL, "%s: missing value (from %s)",
                                    c->keys[i].name, src);
            }
        }
        int rc = set_index(c, (size_t)i, value, CAIRN_CFG_FROM_FLAG, src, err);
        if (rc) return rc;
    }
    if (n_positional) *n_positional = npos;
    return 0;
}

int cairn_config_check(const cairn_config *c, cairn_error *err)
{
    for (size_t i = 0; i < c->n; i++) {
        const cairn_config_key *k = &c->keys[i];
        if ((k->flags & CAIRN_CFG_REQUIRED) && c->vals[i].origin == CAIRN_CFG_FROM_UNSET) {
            char flag[CFG_NAME_MAX + 2], var[CFG_NAME_MAX + 8] = "CAIRN_";
            size_t vl = 6, fl = 0;
            for (const char *p = k->name; *p; p++) {
                flag[fl++] = *p == '_' ? '-' : *p;
                var[vl++] = (*p == '.') ? '_' : (char)toupper((unsigned char)*p);
            }
            flag[fl] = var[vl] = '\0';
            return cairn_errorf(err, CAIRN_EINVAL,
                                "%s: required but not set (use --%s, %s or the config file)",
                                k->name, flag, var);
        }
    }
    return 0;
}

bool cairn_config_help_requested(const cairn_config *c)
{
    return c->help;
}

/* ---- Getters ---------------------------------------------------------------------- */

static const cfg_val *get(const cairn_config *c, const char *name, int type)
{
    long i = find_key(c, name, strlen(name));
    assert(i >= 0 && "config: no such key in the schema");
    if (i < 0) return NULL;
    assert((type < 0 || c->keys[i].type == (cairn_config_type)type) && "config: wrong type");
    if (type >= 0 && c->keys[i].type != (cairn_config_type)type) return NULL;
    return &c->vals[i];
}

int64_t cairn_config_int(const cairn_config *c, const char *name)
{
    const cfg_val *v = get(c, name, CAIRN_CFG_INT);
    return v ? v->v.i : 0;
}

double cairn_config_float(const cairn_config *c, const char *name)
{
    const cfg_val *v = get(c, name, CAIRN_CFG_FLOAT);
    return v ? v->v.f : 0.0;
}

bool cairn_config_bool(const cairn_config *c, const char *name)
{
    const cfg_val *v = get(c, name, CAIRN_CFG_BOOL);
    return v ? v->v.b : false;
}

const char *cairn_config_string(const cairn_config *c, const char *name)
{
    const cfg_val *v = get(c, name, CAIRN_CFG_STRING);
    return v ? v->s : NULL;
}

uint64_t cairn_config_size(const cairn_config *c, const char *name)
{
    const cfg_val *v = get(c, name, CAIRN_CFG_SIZE);
    return v ? v->v.u : 0;
}

int64_t cairn_config_duration_ns(const cairn_config *c, const char *name)
{
    const cfg_val *v = get(c, name, CAIRN_CFG_DURATION);
    return v ? v->v.i : 0;
}

bool cairn_config_is_set(const cairn_config *c, const char *name)
{
    const cfg_val *v = get(c, name, -1);
    return v && v->origin != CAIRN_CFG_FROM_UNSET;
}

cairn_config_origin cairn_config_origin_of(const cairn_config *c, const char *name)
{
    const cfg_val *v = get(c, name, -1);
    return v ? v->origin : CAIRN_CFG_FROM_UNSET;
}

const char *cairn_config_source(const cairn_config *c, const char *name)
{
    const cfg_val *v = get(c, name, -1);
    return v && v->origin != CAIRN_CFG_FROM_UNSET ? v->src : "unset";
}

/* ---- Listings --------------------------------------------------------------------- */

char *cairn_config_help(const cairn_config *c)
{
    cairn_strbuf sb = CAIRN_STRBUF_INIT;
    cairn_strbuf_puts(&sb,
                      "Options (flag, environment variable; a config file takes the same keys):\n");
    for (size_t i = 0; i < c->n; i++) {
        const cairn_config_key *k = &c->keys[i];
        cairn_strbuf_puts(&sb, "  --");
        for (const char *p = k->name; *p; p++)
            cairn_strbuf_putc(&sb, *p == '_' ? '-' : *p);
        if (k->type == CAIRN_CFG_BOOL)
            cairn_strbuf_puts(&sb, "[=<bool>]");
        else
            cairn_strbuf_printf(&sb, "=<%s>", type_name(k->type));
        cairn_strbuf_puts(&sb, "  (env CAIRN_");
        for (const char *p = k->name; *p; p++)
            cairn_strbuf_putc(&sb, *p == '.' ? '_' : (char)toupper((unsigned char)*p));
        cairn_strbuf_puts(&sb, ")\n      ");
        cairn_strbuf_puts(&sb, k->help ? k->help : "");
        if (k->choices) {
            cairn_strbuf_puts(&sb, " One of: ");
            for (const char *p = k->choices; *p; p++) {
                if (*p == '|')
                    cairn_strbuf_puts(&sb, ", ");
                else
                    cairn_strbuf_putc(&sb, *p);
            }
            cairn_strbuf_putc(&sb, '.');
        }
        if (k->flags & CAIRN_CFG_REQUIRED) cairn_strbuf_puts(&sb, " Required.");
        if (k->def)
            cairn_strbuf_printf(&sb, " Default: %s.",
                                (k->flags & CAIRN_CFG_SECRET) ? "<secret>" : k->def);
        if (k->min && k->max)
            cairn_strbuf_printf(&sb, " Range: %s to %s.", k->min, k->max);
        else if (k->min)
            cairn_strbuf_printf(&sb, " Minimum: %s.", k->min);
        else if (k->max)
            cairn_strbuf_printf(&sb, " Maximum: %s.", k->max);
        cairn_strbuf_putc(&sb, '\n');
    }
    return cairn_strbuf_take(&sb, NULL);
}

char *cairn_config_describe(const cairn_config *c)
{
    cairn_strbuf sb = CAIRN_STRBUF_INIT;
    for (size_t i = 0; i < c->n; i++) {
        const cairn_config_key *k = &c->keys[i];
        const cfg_val *v = &c->vals[i];
        cairn_strbuf_printf(&sb, "%s = ", k->name);
        if (v->origin == CAIRN_CFG_FROM_UNSET) {
            cairn_strbuf_puts(&sb, "(unset)\n");
            continue;
        }
        if (k->flags & CAIRN_CFG_SECRET) {
            cairn_strbuf_puts(&sb, "<secret>");
        } else {
            switch (k->type) {
            case CAIRN_CFG_INT:
                cairn_strbuf_printf(&sb, "%lld", (long long)v->v.i);
                break;
            case CAIRN_CFG_FLOAT:
                cairn_strbuf_printf(&sb, "%g", v->v.f);
                break;
            case CAIRN_CFG_BOOL:
                cairn_strbuf_puts(&sb, v->v.b ? "true" : "false");
                break;
            case CAIRN_CFG_STRING:
                cairn_strbuf_printf(&sb, "\"%s\"", v->s);
                break;
            case CAIRN_CFG_SIZE:
                cairn_strbuf_printf(&sb, "%llu", (unsigned long long)v->v.u);
                break;
            case CAIRN_CFG_DURATION:
                cairn_strbuf_printf(&sb, "%gs", (double)v->v.i / 1e9);
                break;
            }
        }
        cairn_strbuf_printf(&sb, "  # %s\n", v->src);
    }
    return cairn_strbuf_take(&sb, NULL);
}
