/*
 * common/metrics.h — counters, gauges and histograms, rendered as Prometheus text.
 *
 * A registry (cairn_metrics) owns metric families. A family has a name, help text,
 * optional label names fixed at creation and, for histograms, fixed bucket bounds.
 * Its time series ("children") are created on demand from label values, up to a
 * bound given at creation; past the bound the child getters return NULL and count
 * the refusal, and every update function accepts NULL as a no-op, so a flood of
 * distinct label values can never grow memory without limit.
 *
 * Updates are lock-free (atomic adds and compare-and-swap) and may come from any
 * thread; child lookup and rendering take the family's mutex. Look a child up once
 * and keep the pointer on hot paths: children live as long as the registry.
 *
 * cairn_metrics_render writes the Prometheus text exposition format 0.0.4:
 * "# HELP" (with \\ and \n escaped), "# TYPE", one sample per child with label
 * values escaped (\\, \", \n), histograms as cumulative name_bucket{le="..."} series
 * ending in le="+Inf", then name_sum and name_count. Families appear in registration
 * order and children in creation order. Names must match [a-zA-Z_:][a-zA-Z0-9_:]*
 * and label names [a-zA-Z_][a-zA-Z0-9_]* (no leading "__"; "le" is reserved for
 * histograms); the cairn_ prefix is the caller's to apply.
 */
#ifndef CAIRN_COMMON_METRICS_H
#define CAIRN_COMMON_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

typedef struct cairn_metrics cairn_metrics;
typedef struct cairn_metric_family cairn_metric_family;
typedef struct cairn_counter cairn_counter;
typedef struct cairn_gauge cairn_gauge;
typedef struct cairn_histogram cairn_histogram;

/* A label-value list for the child getters: CAIRN_LABELS("/v1/rag", "200"). */
#define CAIRN_LABELS(...) ((const char *const[]){__VA_ARGS__})

/* The default bound on a labeled family's children (max_children 0). */
#define CAIRN_METRICS_DEFAULT_MAX_CHILDREN 1000

/* A new empty registry; the caller frees it with cairn_metrics_free. */
int cairn_metrics_new(cairn_metrics **out, cairn_error *err);

/* Frees the registry with all its families and children. NULL is a no-op. */
void cairn_metrics_free(cairn_metrics *r);

/* The process-wide registry, created on first use and never freed. Thread-safe. */
cairn_metrics *cairn_metrics_default(void);

/*
 * Unlabeled metrics: register a family with one series and return that series.
 * Returns 0, or CAIRN_EINVAL for a bad or already registered name / bad buckets.
 * The metric belongs to the registry. Thread-safe.
 */
int cairn_counter_new(cairn_metrics *r, cairn_counter **out, const char *name, const char *help,
                      cairn_error *err);
int cairn_gauge_new(cairn_metrics *r, cairn_gauge **out, const char *name, const char *help,
                    cairn_error *err);
/* bounds: n_bounds finite, strictly increasing upper bounds; +Inf is implicit. */
int cairn_histogram_new(cairn_metrics *r, cairn_histogram **out, const char *name, const char *help,
                        const double *bounds, size_t n_bounds, cairn_error *err);

/*
 * Labeled families: label_names[0..n_labels) fixed now; at most max_children series
 * (0 = CAIRN_METRICS_DEFAULT_MAX_CHILDREN). The family belongs to the registry.
 */
int cairn_counter_family_new(cairn_metrics *r, cairn_metric_family **out, const char *name,
                             const char *help, const char *const *label_names, size_t n_labels,
                             size_t max_children, cairn_error *err);
int cairn_gauge_family_new(cairn_metrics *r, cairn_metric_family **out, const char *name,
                           const char *help, const char *const *label_names, size_t n_labels,
                           size_t max_children, cairn_error *err);
int cairn_histogram_family_new(cairn_metrics *r, cairn_metric_family **out, const char *name,
                               const char *help, const char *const *label_names, size_t n_labels,
                               size_t max_children, const double *bounds, size_t n_bounds,
                               cairn_error *err);

/*
 * The series for values[0..n_labels) (copied), created on first use. NULL when the
 * family is full, out of memory, a value is not valid UTF-8, or the family is of
 * another kind. Thread-safe.
 */
cairn_counter *cairn_counter_child(cairn_metric_family *f, const char *const *values);
cairn_gauge *cairn_gauge_child(cairn_metric_family *f, const char *const *values);
cairn_histogram *cairn_histogram_child(cairn_metric_family *f, const char *const *values);

/* How many child lookups the family refused because it was full. */
uint64_t cairn_metric_family_dropped(const cairn_metric_family *f);

/* Counters only go up: add ignores negative and NaN amounts. NULL is a no-op. */
void cairn_counter_inc(cairn_counter *c);
void cairn_counter_add(cairn_counter *c, double v);
double cairn_counter_value(const cairn_counter *c);

void cairn_gauge_set(cairn_gauge *g, double v);
void cairn_gauge_add(cairn_gauge *g, double v); /* negative to subtract */
void cairn_gauge_inc(cairn_gauge *g);
void cairn_gauge_dec(cairn_gauge *g);
double cairn_gauge_value(const cairn_gauge *g);

/* Adds one observation (NaN is ignored). NULL is a no-op. */
void cairn_histogram_observe(cairn_histogram *h, double v);
uint64_t cairn_histogram_count(const cairn_histogram *h);
double cairn_histogram_sum(const cairn_histogram *h);

/* Fills out[0..count) with start, start*factor, ... (exponential bucket bounds). */
void cairn_metrics_exponential_buckets(double start, double factor, size_t count, double *out);

/*
 * Renders every family in the text exposition format 0.0.4 into a new string the
 * caller frees; *len (may be NULL) gets its length. Returns 0 or CAIRN_ENOMEM.
 * Thread-safe against concurrent updates and registrations.
 */
int cairn_metrics_render(cairn_metrics *r, char **out, size_t *len);

#endif
