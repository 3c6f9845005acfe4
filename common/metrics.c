/* common/metrics.c — counters, gauges and histograms, rendered as Prometheus text. */
#include "common/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/strbuf.h"

typedef enum { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM } metric_kind;

/*
 * One time series. Doubles live in _Atomic uint64_t as their bit patterns so that
 * adds can be compare-and-swap loops; counters keep whole increments apart in ival
 * (a plain fetch_add, exact beyond 2^53) from fractional adds in fbits.
 */
typedef struct child {
    struct cairn_metric_family *fam;
    char **values;
    uint64_t hash;
    _Atomic uint64_t ival;     /* counter: whole increments */
    _Atomic uint64_t fbits;    /* counter: fractional adds; gauge: the value */
    _Atomic uint64_t sum_bits; /* histogram: sum of observations */
    _Atomic uint64_t *buckets; /* histogram: n_bounds + 1 non-cumulative counts, +Inf last */
} child;

/* mu guards children and n_children; everything else is fixed after creation. */
struct cairn_metric_family {
    metric_kind kind;
    char *name, *help;
    char **label_names;
    size_t n_labels;
    double *bounds;
    size_t n_bounds;
    size_t max_children;
    pthread_mutex_t mu;
    child **children;
    size_t n_children;
    _Atomic uint64_t dropped;
    struct cairn_metric_family *next;
};

/* mu guards the family list. */
struct cairn_metrics {
    pthread_mutex_t mu;
    cairn_metric_family *head, *tail;
};

/* ---- Atomic doubles --------------------------------------------------------------- */

static uint64_t dbits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bitsd(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static void atomic_add_double(_Atomic uint64_t *a, double v)
{
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, dbits(bitsd(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* ---- Registry ---------------------------------------------------------------------- */

int cairn_metrics_new(cairn_metrics **out, cairn_error *err)
{
    cairn_metrics *r = calloc(1, sizeof *r);
    if (!r) return cairn_errorf(err, CAIRN_ENOMEM, "metrics: out of memory");
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return 0;
}

static void free_child(child *c, size_t n_labels)
{
    if (!c) return;
    if (c->values)
        for (size_t i = 0; i < n_labels; i++)
            free(c->values[i]);
    free(c->values);
    free(c->buckets);
    free(c);
}

static void free_family(cairn_metric_family *f)
{
    for (size_t i = 0; i < f->n_children; i++)
        free_child(f->children[i], f->n_labels);
    free(f->children);
    if (f->label_names)
        for (size_t i = 0; i < f->n_labels; i++)
            free(f->label_names[i]);
    free(f->label_names);
    free(f->bounds);
    free(f->name);
    free(f->help);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

void cairn_metrics_free(cairn_metrics *r)
{
    if (!r) return;
    for (cairn_metric_family *f = r->head, *next; f; f = next) {
        next = f->next;
        free_family(f);
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static pthread_once_t default_once = PTHREAD_ONCE_INIT;
static cairn_metrics *default_registry;

static void make_default(void)
{
    cairn_metrics_new(&default_registry, NULL);
}

cairn_metrics *cairn_metrics_default(void)
{
    pthread_once(&default_once, make_default);
    return default_registry;
}

/* ---- Families ----------------------------------------------------------------------- */

static bool valid_metric_name(const char *s)
{
    if (!s || !*s) return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return true;
}

static bool valid_label_name(const char *s)
{
    return valid_metric_name(s) && !strchr(s, ':') && strncmp(s, "__", 2) != 0;
}

static child *new_child(cairn_metric_family *f, const char *const *values, uint64_t hash);

static uint64_t hash_values(const char *const *values, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a, with a separator between values */
    for (size_t i = 0; i < n; i++) {
        for (const unsigned char *p = (const unsigned char *)values[i]; *p; p++)
            h = (h ^ *p) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull;
    }
    return h;
}

static int family_new(cairn_metrics *r, cairn_metric_family **out, metric_kind kind,
                      const char *name, const char *help, const char *const *label_names,
                      size_t n_labels, size_t max_children, const double *bounds, size_t n_bounds,
                      cairn_error *err)
{
    *out = NULL;
    if (!valid_metric_name(name))
        return cairn_errorf(err, CAIRN_EINVAL, "metric name '%s' is not valid", name ? name : "");
    for (size_t i = 0; i < n_labels; i++) {
        if (!valid_label_name(label_names[i]))
            return cairn_errorf(err, CAIRN_EINVAL, "%s: label name '%s' is not valid", name,
                                label_names[i] ? label_names[i] : "");
        if (kind == KIND_HISTOGRAM && strcmp(label_names[i], "le") == 0)
            return cairn_errorf(err, CAIRN_EINVAL, "%s: label name 'le' is reserved for histograms",
                                name);
        for (size_t j = 0; j < i; j++)
            if (strcmp(label_names[i], label_names[j]) == 0)
                return cairn_errorf(err, CAIRN_EINVAL, "%s: label '%s' given twice", name,
                                    label_names[i]);
    }
    if (kind == KIND_HISTOGRAM && n_bounds > 0 && isinf(bounds[n_bounds - 1]) &&
        bounds[n_bounds - 1] > 0)
        n_bounds--; /* +Inf is implicit */
    for (size_t i = 0; i < n_bounds; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
            return cairn_errorf(err, CAIRN_EINVAL,
                                "%s: bucket bounds must be finite and strictly increasing", name);
    }
    cairn_metric_family *f = calloc(1, sizeof *f);
    if (!f) return cairn_errorf(err, CAIRN_ENOMEM, "metrics: out of memory");
    pthread_mutex_init(&f->mu, NULL);
    f->kind = kind;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    f->n_labels = n_labels;
    f->label_names = calloc(n_labels ? n_labels : 1, sizeof *f->label_names);
    f->n_bounds = kind == KIND_HISTOGRAM ? n_bounds : 0;
    f->bounds = calloc(f->n_bounds ? f->n_bounds : 1, sizeof *f->bounds);
    f->max_children = n_labels == 0  ? 1
                      : max_children ? max_children
                                     : CAIRN_METRICS_DEFAULT_MAX_CHILDREN;
    f->children = calloc(f->max_children, sizeof *f->children);
    bool ok = f->name && f->help && f->label_names && f->bounds && f->children;
    for (size_t i = 0; ok && i < n_labels; i++)
        ok = (f->label_names[i] = strdup(label_names[i]));
    if (ok && f->n_bounds) memcpy(f->bounds, bounds, f->n_bounds * sizeof *bounds);
    if (ok && n_labels == 0) { /* the single series exists from the start */
        child *c = new_child(f, NULL, 0);
        if (c) f->children[f->n_children++] = c;
        ok = c != NULL;
    }
    if (!ok) {
        free_family(f);
        return cairn_errorf(err, CAIRN_ENOMEM, "metrics: out of memory");
    }

    pthread_mutex_lock(&r->mu);
    for (cairn_metric_family *g = r->head; g; g = g->next) {
        if (strcmp(g->name, name) == 0) {
            pthread_mutex_unlock(&r->mu);
            free_family(f);
            return cairn_errorf(err, CAIRN_EINVAL, "metric '%s' is already registered", name);
        }
    }
    if (r->tail)
        r->tail->next = f;
    else
        r->head = f;
    r->tail = f;
    pthread_mutex_unlock(&r->mu);
    *out = f;
    return 0;
}

int cairn_counter_family_new(cairn_metrics *r, cairn_metric_family **out, const char *name,
                             const char *help, const char *const *label_names, size_t n_labels,
                             size_t max_children, cairn_error *err)
{
    return family_new(r, out, KIND_COUNTER, name, help, label_names, n_labels, max_children, NULL,
                      0, err);
}

int cairn_gauge_family_new(cairn_metrics *r, cairn_metric_family **out, const char *name,
                           const char *help, const char *const *label_names, size_t n_labels,
                           size_t max_children, cairn_error *err)
{
    return family_new(r, out, KIND_GAUGE, name, help, label_names, n_labels, max_children, NULL, 0,
                      err);
}

int cairn_histogram_family_new(cairn_metrics *r, cairn_metric_family **out, const char *name,
                               const char *help, const char *const *label_names, size_t n_labels,
                               size_t max_children, const double *bounds, size_t n_bounds,
                               cairn_error *err)
{
    return family_new(r, out, KIND_HISTOGRAM, name, help, label_names, n_labels, max_children,
                      bounds, n_bounds, err);
}

int cairn_counter_new(cairn_metrics *r, cairn_counter **out, const char *name, const char *help,
                      cairn_error *err)
{
    cairn_metric_family *f;
    int rc = family_new(r, &f, KIND_COUNTER, name, help, NULL, 0, 1, NULL, 0, err);
    *out = rc ? NULL : (cairn_counter *)f->children[0];
    return rc;
}

int cairn_gauge_new(cairn_metrics *r, cairn_gauge **out, const char *name, const char *help,
                    cairn_error *err)
{
    cairn_metric_family *f;
    int rc = family_new(r, &f, KIND_GAUGE, name, help, NULL, 0, 1, NULL, 0, err);
    *out = rc ? NULL : (cairn_gauge *)f->children[0];
    return rc;
}

int cairn_histogram_new(cairn_metrics *r, cairn_histogram **out, const char *name, const char *help,
                        const double *bounds, size_t n_bounds, cairn_error *err)
{
    cairn_metric_family *f;
    int rc = family_new(r, &f, KIND_HISTOGRAM, name, help, NULL, 0, 1, bounds, n_bounds, err);
    *out = rc ? NULL : (cairn_histogram *)f->children[0];
    return rc;
}

uint64_t cairn_metric_family_dropped(const cairn_metric_family *f)
{
    return atomic_load(&((cairn_metric_family *)f)->dropped);
}

/* ---- Children ----------------------------------------------------------------------- */

static child *new_child(cairn_metric_family *f, const char *const *values, uint64_t hash)
{
    child *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fam = f;
    c->hash = hash;
    c->values = calloc(f->n_labels ? f->n_labels : 1, sizeof *c->values);
    bool ok = c->values != NULL;
    for (size_t i = 0; ok && i < f->n_labels; i++)
        ok = (c->values[i] = strdup(values[i]));
    if (ok && f->kind == KIND_HISTOGRAM) {
        c->buckets = calloc(f->n_bounds + 1, sizeof *c->buckets);
        ok = c->buckets != NULL;
    }
    if (!ok) {
        free_child(c, f->n_labels);
        return NULL;
    }
    return c;
}

static child *get_child(cairn_metric_family *f, metric_kind kind, const char *const *values)
{
    if (!f || f->kind != kind) return NULL;
    if (f->n_labels == 0) return f->children[0];
    for (size_t i = 0; i < f->n_labels; i++)
        if (!values[i] || !cairn_json_utf8_valid(values[i], strlen(values[i]))) return NULL;
    uint64_t h = hash_values(values, f->n_labels);
    child *found = NULL;
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < f->n_children && !found; i++) {
        child *c = f->children[i];
        if (c->hash != h) continue;
        bool eq = true;
        for (size_t k = 0; k < f->n_labels && eq; k++)
            eq = strcmp(c->values[k], values[k]) == 0;
        if (eq) found = c;
    }
    if (!found) {
        if (f->n_children < f->max_children) {
            found = new_child(f, values, h);
            if (found) f->children[f->n_children++] = found;
        } else {
            atomic_fetch_add(&f->dropped, 1);
        }
    }
    pthread_mutex_unlock(&f->mu);
    return found;
}

cairn_counter *cairn_counter_child(cairn_metric_family *f, const char *const *values)
{
    return (cairn_counter *)get_child(f, KIND_COUNTER, values);
}

cairn_gauge *cairn_gauge_child(cairn_metric_family *f, const char *const *values)
{
    return (cairn_gauge *)get_child(f, KIND_GAUGE, values);
}

cairn_histogram *cairn_histogram_child(cairn_metric_family *f, const char *const *values)
{
    return (cairn_histogram *)get_child(f, KIND_HISTOGRAM, values);
}

/* ---- Updates ------------------------------------------------------------------------ */

void cairn_counter_inc(cairn_counter *c)
{
    if (c) atomic_fetch_add_explicit(&((child *)c)->ival, 1, memory_order_relaxed);
}

void cairn_counter_add(cairn_counter *c, double v)
{
    if (!c || !(v > 0)) return;
    child *ch = (child *)c;
    if (v == floor(v) && v < 1e15)
        atomic_fetch_add_explicit(&ch->ival, (uint64_t)v, memory_order_relaxed);
    else
        atomic_add_double(&ch->fbits, v);
}

double cairn_counter_value(const cairn_counter *c)
{
    if (!c) return 0;
    child *ch = (child *)c;
    return (double)atomic_load(&ch->ival) + bitsd(atomic_load(&ch->fbits));
}

void cairn_gauge_set(cairn_gauge *g, double v)
{
    if (g) atomic_store_explicit(&((child *)g)->fbits, dbits(v), memory_order_relaxed);
}

void cairn_gauge_add(cairn_gauge *g, double v)
{
    if (g) atomic_add_double(&((child *)g)->fbits, v);
}

void cairn_gauge_inc(cairn_gauge *g)
{
    cairn_gauge_add(g, 1.0);
}
void cairn_gauge_dec(cairn_gauge *g)
{
    cairn_gauge_add(g, -1.0);
}

double cairn_gauge_value(const cairn_gauge *g)
{
    return g ? bitsd(atomic_load(&((child *)g)->fbits)) : 0.0;
}

void cairn_histogram_observe(cairn_histogram *h, double v)
{
    if (!h || isnan(v)) return;
    child *c = (child *)h;
    const cairn_metric_family *f = c->fam;
    /* The first bucket whose upper bound is >= v (le is inclusive), by binary search. */
    size_t lo = 0, hi = f->n_bounds;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v <= f->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&c->buckets[lo], 1, memory_order_relaxed);
    atomic_add_double(&c->sum_bits, v);
}

uint64_t cairn_histogram_count(const cairn_histogram *h)
{
    if (!h) return 0;
    child *c = (child *)h;
    uint64_t n = 0;
    for (size_t i = 0; i <= c->fam->n_bounds; i++)
        n += atomic_load(&c->buckets[i]);
    return n;
}

double cairn_histogram_sum(const cairn_histogram *h)
{
    return h ? bitsd(atomic_load(&((child *)h)->sum_bits)) : 0.0;
}

void cairn_metrics_exponential_buckets(double start, double factor, size_t count, double *out)
{
    double v = start;
    for (size_t i = 0; i < count; i++, v *= factor)
        out[i] = v;
}

/* ---- Rendering ---------------------------------------------------------------------- */

/* The shortest "%g" form that reads back as the same double; +Inf, -Inf, NaN per the format.
 * Whole numbers below 2^53 print as integers ("2000", not %g's "2e+03"): both parse alike,
 * but people and grep read the integer. */
static void put_double(cairn_strbuf *sb, double v)
{
    if (isnan(v)) return cairn_strbuf_puts(sb, "NaN");
    if (isinf(v)) return cairn_strbuf_puts(sb, v > 0 ? "+Inf" : "-Inf");
    if (v == floor(v) && fabs(v) < 9007199254740992.0)
        return cairn_strbuf_printf(sb, "%lld", (long long)v);
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    cairn_strbuf_puts(sb, buf);
}

static void put_escaped(cairn_strbuf *sb, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            cairn_strbuf_puts(sb, "\\\\");
        else if (*s == '\n')
            cairn_strbuf_puts(sb, "\\n");
        else if (*s == '"' && quote)
            cairn_strbuf_puts(sb, "\\\"");
        else
            cairn_strbuf_putc(sb, *s);
    }
}

/* name{labels[,le="x"]} — with no braces when there are no labels at all. */
static void put_series(cairn_strbuf *sb, const cairn_metric_family *f, const child *c,
                       const char *suffix, const double *le)
{
    cairn_strbuf_puts(sb, f->name);
    cairn_strbuf_puts(sb, suffix);
    if (f->n_labels == 0 && !le) return cairn_strbuf_putc(sb, ' ');
    cairn_strbuf_putc(sb, '{');
    for (size_t i = 0; i < f->n_labels; i++) {
        if (i) cairn_strbuf_putc(sb, ',');
        cairn_strbuf_printf(sb, "%s=\"", f->label_names[i]);
        put_escaped(sb, c->values[i], true);
        cairn_strbuf_putc(sb, '"');
    }
    if (le) {
        if (f->n_labels) cairn_strbuf_putc(sb, ',');
        cairn_strbuf_puts(sb, "le=\"");
        put_double(sb, *le);
        cairn_strbuf_putc(sb, '"');
    }
    cairn_strbuf_puts(sb, "} ");
}

static void render_child(cairn_strbuf *sb, const cairn_metric_family *f, child *c)
{
    switch (f->kind) {
    case KIND_COUNTER: {
        uint64_t iv = atomic_load(&c->ival);
        double fv = bitsd(atomic_load(&c->fbits));
        put_series(sb, f, c, "", NULL);
        if (fv == 0)
            cairn_strbuf_printf(sb, "%llu", (unsigned long long)iv);
        else
            put_double(sb, (double)iv + fv);
        break;
    }
    case KIND_GAUGE:
        put_series(sb, f, c, "", NULL);
        put_double(sb, bitsd(atomic_load(&c->fbits)));
        break;
    case KIND_HISTOGRAM: {
        /* _count is the +Inf bucket's cumulative count, so the two always agree. */
        uint64_t cum = 0;
        double inf = INFINITY;
        for (size_t i = 0; i <= f->n_bounds; i++) {
            cum += atomic_load(&c->buckets[i]);
            put_series(sb, f, c, "_bucket", i < f->n_bounds ? &f->bounds[i] : &inf);
            cairn_strbuf_printf(sb, "%llu\n", (unsigned long long)cum);
        }
        put_series(sb, f, c, "_sum", NULL);
        put_double(sb, bitsd(atomic_load(&c->sum_bits)));
        cairn_strbuf_putc(sb, '\n');
        put_series(sb, f, c, "_count", NULL);
        cairn_strbuf_printf(sb, "%llu", (unsigned long long)cum);
        break;
    }
    }
    cairn_strbuf_putc(sb, '\n');
}

int cairn_metrics_render(cairn_metrics *r, char **out, size_t *len)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    cairn_strbuf sb = CAIRN_STRBUF_INIT;
    pthread_mutex_lock(&r->mu);
    for (cairn_metric_family *f = r->head; f; f = f->next) {
        if (f->help[0]) {
            cairn_strbuf_printf(&sb, "# HELP %s ", f->name);
            put_escaped(&sb, f->help, false);
            cairn_strbuf_putc(&sb, '\n');
        }
        cairn_strbuf_printf(&sb, "# TYPE %s %s\n", f->name, type_names[f->kind]);
        pthread_mutex_lock(&f->mu);
        for (size_t i = 0; i < f->n_children; i++)
            render_child(&sb, f, f->children[i]);
        pthread_mutex_unlock(&f->mu);
    }
    pthread_mutex_unlock(&r->mu);
    *out = cairn_strbuf_take(&sb, len);
    return *out ? 0 : CAIRN_ENOMEM;
}
