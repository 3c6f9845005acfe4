/*
 * generation/sched.c — latency predictor and iteration planning (see sched.h).
 */
#include "generation/sched.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NF CAIRN_PREDICTOR_FEATURES

/* ---- Latency predictor ---------------------------------------------------------------------- */

struct cairn_predictor {
    int window;
    double (*x)[NF]; /* ring of feature rows */
    double *y;       /* their measured seconds */
    int n, head;     /* rows held, next slot */
    double coef[NF];
    double drift;     /* EWMA of log(measured / model): the machine's present speed (see DRIFT) */
    double prior[NF]; /* loaded coefficients that refits are drawn towards (has_prior) */
    int fitted, has_prior;
    int refit_every, since_fit;
    double *ape; /* ring of out-of-sample absolute percentage errors */
    int n_ape, ape_head;
    double ape_sum;
    pthread_mutex_t lock; /* guards ape ring and coefficients against readers on other threads */
    cairn_backend_traits traits; /* the steps of the backend's cost (zero: none) */
};

const char *const cairn_predictor_feature_names[NF] = {
    "1",           "tokens",       "logits_rows", "prefill_chunks", "keys_prefill",
    "keys_decode", "logits_tiles", "token_tiles", "logits_pairs", "gemm_steps",
    "gemm_tokens", "gemm_mixed",
};

void cairn_batch_shape_add(cairn_batch_shape *s, bool prefill, int ctx, int n, bool last)
{
    if (prefill) {
        s->s_p += n;
        s->n_p++;
        s->keys_p += (int64_t)n * ctx + (int64_t)n * (n + 1) / 2;
        s->n_out += last;
    } else {
        s->s_d++;
        s->n_d++;
        s->keys_d += ctx;
        s->n_out++;
    }
}

/* How many groups of `size` n tokens take; 0 when the backend's cost has no such steps. */
static double groups(int n, int size)
{
    return size > 1 ? (double)((n + size - 1) / size) : 0.0;
}

/* The feature vector of a shape, in cairn_predictor_feature_names' order (sched.h says why). */
static void features(const cairn_predictor *p, const cairn_batch_shape *s, double f[NF])
{
    f[0] = 1.0;
    f[1] = s->s_p + s->s_d;
    f[2] = s->n_out;
    f[3] = s->n_p;
    f[4] = (double)s->keys_p;
    f[5] = (double)s->keys_d;
    const int tokens = s->s_p + s->s_d;
    const bool gemm = p->traits.gemm_from > 0 && tokens > p->traits.gemm_from;
    f[6] = groups(s->n_out, p->traits.token_tile);
    f[7] = gemm ? 0.0 : groups(tokens, p->traits.token_tile);
    f[8] = groups(s->n_out, p->traits.logits_pair);
    f[9] = gemm ? 1.0 : 0.0;
    f[10] = gemm ? tokens : 0.0;
    f[11] = gemm && s->s_d > 0 ? 1.0 : 0.0;
}

int cairn_predictor_new(cairn_predictor **out, int window, cairn_error *err)
{
    *out = NULL;
    if (window < 16 || window > 1 << 20)
        return cairn_errorf(err, CAIRN_EINVAL, "predictor: window %d is outside 16..%d", window,
                            1 << 20);
    cairn_predictor *p = calloc(1, sizeof *p);
    if (p) {
        p->x = calloc((size_t)window, sizeof *p->x);
        p->y = calloc((size_t)window, sizeof *p->y);
        p->ape = calloc((size_t)window, sizeof *p->ape);
    }
    if (!p || !p->x || !p->y || !p->ape) {
        cairn_predictor_free(p);
        return cairn_errorf(err, CAIRN_ENOMEM, "predictor: window of %d", window);
    }
    p->window = window;
    p->refit_every = 32;
    pthread_mutex_init(&p->lock, NULL);
    *out = p;
    return 0;
}

void cairn_predictor_free(cairn_predictor *p)
{
    if (!p) return;
    if (p->window) pthread_mutex_destroy(&p->lock);
    free(p->x);
    free(p->y);
    free(p->ape);
    free(p);
}

static double predict_features(const double coef[NF], const double f[NF])
{
    double t = 0;
    for (int j = 0; j < NF; j++)
        t += coef[j] * f[j];
    return t > 0 ? t : 0;
}

/*
 * The model times a speed factor. This VM's speed drifts by ~10% over a minute (the same shape
 * took 22.5, then 25, then 22.4 ms in one profile run), which a window refit follows only
 * slowly and a loaded profile not at all; the factor is an exponential moving average of
 * log(measured / model) over the iterations in time order, weight DRIFT each. Replayed on four
 * recorded 600-iteration profiles (each held-out shape predicted before any of its own timings
 * joined) it moved the held-out MAPE from 6.7/4.8/10.2/7.4% to 5.4/4.4/7.9/8.3%: better in
 * three, worse in the one whose errors were by shape more than by time. It is recomputed over
 * the window after each refit, so it always measures the present model's residuals.
 */
#define DRIFT 0.05

static double predict_now(const cairn_predictor *p, const double f[NF])
{
    return predict_features(p->coef, f) * exp(p->drift);
}

static void drift_add(cairn_predictor *p, const double f[NF], double seconds)
{
    double m = predict_features(p->coef, f);
    if (m > 0) p->drift = (1 - DRIFT) * p->drift + DRIFT * log(seconds / m);
}

double cairn_predictor_predict(const cairn_predictor *p, const cairn_batch_shape *s)
{
    if (!p || !p->fitted) return 0;
    double f[NF];
    features(p, s, f);
    return predict_now(p, f);
}

double cairn_predictor_generation(const cairn_predictor *p, int prompt, int tokens,
                                  int max_chunk)
{
    if (!p || prompt < 1 || tokens < 1 || max_chunk < 1) return 0;
    pthread_mutex_t *l = (pthread_mutex_t *)&p->lock;
    pthread_mutex_lock(l);
    double t = 0, f[NF];
    if (p->fitted) {
        for (int at = 0; at < prompt; at += max_chunk) {
            int n = prompt - at < max_chunk ? prompt - at : max_chunk;
            cairn_batch_shape s = {0};
            cairn_batch_shape_add(&s, true, at, n, at + n == prompt);
            features(p, &s, f);
            t += predict_now(p, f);
        }
        for (int j = 1; j < tokens; j++) { /* the prompt's last chunk samples the first token */
            cairn_batch_shape s = {0};
            cairn_batch_shape_add(&s, false, prompt + j - 1, 1, false);
            features(p, &s, f);
            t += predict_now(p, f);
        }
    }
    pthread_mutex_unlock(l);
    return t;
}

void cairn_predictor_set_traits(cairn_predictor *p, const cairn_backend_traits *t)
{
    p->traits = *t;
}

void cairn_predictor_set_refit(cairn_predictor *p, int every)
{
    p->refit_every = every > 0 ? every : 0;
}

void cairn_predictor_observe(cairn_predictor *p, const cairn_batch_shape *s, double seconds)
{
    if (s->s_p + s->s_d <= 0 || !(seconds > 0) || !isfinite(seconds)) return;
    double f[NF];
    features(p, s, f);
    pthread_mutex_lock(&p->lock);
    if (p->fitted) {
        double e = fabs(predict_now(p, f) - seconds) / seconds;
        if (p->n_ape == p->window) p->ape_sum -= p->ape[p->ape_head];
        else p->n_ape++;
        p->ape[p->ape_head] = e;
        p->ape_sum += e;
        p->ape_head = (p->ape_head + 1) % p->window;
        drift_add(p, f, seconds);
    }
    pthread_mutex_unlock(&p->lock);
    memcpy(p->x[p->head], f, sizeof f);
    p->y[p->head] = seconds;
    p->head = (p->head + 1) % p->window;
    if (p->n < p->window) p->n++;
    if (p->refit_every && ++p->since_fit >= p->refit_every) cairn_predictor_fit(p, NULL);
}

/* Solves the symmetric positive definite system a x = b (a is n x n, overwritten) by
 * Cholesky. Returns 0, or -1 when a is not positive definite. */
static int cholesky_solve(double a[NF][NF], double b[NF], double x[NF])
{
    for (int j = 0; j < NF; j++) {
        double d = a[j][j];
        for (int k = 0; k < j; k++)
            d -= a[j][k] * a[j][k];
        if (!(d > 0)) return -1;
        a[j][j] = sqrt(d);
        for (int i = j + 1; i < NF; i++) {
            double v = a[i][j];
            for (int k = 0; k < j; k++)
                v -= a[i][k] * a[j][k];
            a[i][j] = v / a[j][j];
        }
    }
    double z[NF];
    for (int i = 0; i < NF; i++) {
        double v = b[i];
        for (int k = 0; k < i; k++)
            v -= a[i][k] * z[k];
        z[i] = v / a[i][i];
    }
    for (int i = NF - 1; i >= 0; i--) {
        double v = z[i];
        for (int k = i + 1; k < NF; k++)
            v -= a[k][i] * x[k];
        x[i] = v / a[i][i];
    }
    return 0;
}

/*
 * Weighted least squares with weights 1/y^2 (minimises squared relative error). Columns are
 * scaled to a maximum of 1 first (attention keys reach 10^5 while the constant is 1). A ridge
 * term keeps the system solvable when the window never exercised a feature (say, no prefill
 * yet): a tiny one towards zero, or, when coefficients were loaded (a stored profile), one of
 * PRIOR_WEIGHT x the mean diagonal towards them. Then a window that holds only a few shapes (a
 * quiet spell of small decode batches) moves what it measures and leaves the rest of the
 * profile as it was, instead of extrapolating: on a 900-iteration profile of this VM the
 * window refits without the prior erred 94% on small decode batches, with it 12%.
 */
#define PRIOR_WEIGHT 0.1
int cairn_predictor_fit(cairn_predictor *p, cairn_error *err)
{
    p->since_fit = 0;
    if (p->n < 2 * NF)
        return cairn_errorf(err, CAIRN_ESTATE, "predictor: %d iterations, at least %d needed",
                            p->n, 2 * NF);
    double scale[NF] = {0};
    for (int i = 0; i < p->n; i++)
        for (int j = 0; j < NF; j++)
            if (fabs(p->x[i][j]) > scale[j]) scale[j] = fabs(p->x[i][j]);
    for (int j = 0; j < NF; j++)
        if (scale[j] == 0) scale[j] = 1;
    double a[NF][NF] = {{0}}, b[NF] = {0}, c[NF];
    for (int i = 0; i < p->n; i++) {
        double w = 1.0 / (p->y[i] * p->y[i]), f[NF];
        for (int j = 0; j < NF; j++)
            f[j] = p->x[i][j] / scale[j];
        for (int j = 0; j < NF; j++) {
            b[j] += w * f[j] * p->y[i];
            for (int k = 0; k <= j; k++)
                a[j][k] += w * f[j] * f[k];
        }
    }
    double tr = 0;
    for (int j = 0; j < NF; j++)
        tr += a[j][j];
    for (int j = 0; j < NF; j++) {
        for (int k = j + 1; k < NF; k++)
            a[j][k] = a[k][j];
        if (p->has_prior) {
            double l = PRIOR_WEIGHT * tr / NF + 1e-300;
            a[j][j] += l;
            b[j] += l * p->prior[j] * scale[j];
        } else {
            a[j][j] += 1e-9 * tr / NF + 1e-300;
        }
    }
    if (cholesky_solve(a, b, c) != 0)
        return cairn_errorf(err, CAIRN_ESTATE, "predictor: the fit is singular");
    pthread_mutex_lock(&p->lock);
    for (int j = 0; j < NF; j++)
        p->coef[j] = c[j] / scale[j];
    p->fitted = 1;
    p->drift = 0; /* the new model's residuals over the window, oldest first */
    for (int i = 0, o = p->n < p->window ? 0 : p->head; i < p->n; i++)
        drift_add(p, p->x[(o + i) % p->window], p->y[(o + i) % p->window]);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

double cairn_predictor_mape(const cairn_predictor *p, int *n)
{
    pthread_mutex_t *l = (pthread_mutex_t *)&p->lock;
    pthread_mutex_lock(l);
    double m = p->n_ape ? p->ape_sum / p->n_ape : 0;
    if (n) *n = p->n_ape;
    pthread_mutex_unlock(l);
    return m;
}

int cairn_predictor_coefficients(const cairn_predictor *p, double out[NF])
{
    memcpy(out, p->coef, sizeof p->coef);
    return p->fitted;
}

void cairn_predictor_set_coefficients(cairn_predictor *p, const double c[NF])
{
    pthread_mutex_lock(&p->lock);
    memcpy(p->coef, c, sizeof p->coef);
    memcpy(p->prior, c, sizeof p->prior);
    p->fitted = p->has_prior = 1;
    p->drift = 0;
    pthread_mutex_unlock(&p->lock);
}

/* ---- Stored profiles ------------------------------------------------------------------------ */

#define PROFILE_MAGIC "cairn-sched-profile"

/* The next line of *p (without its end), advancing *p; NULL at the end of the text. Lines are
 * copied into buf (cap bytes); a longer one is cut, which the callers then reject. */
/* The next line of *p into buf (without its newline or CR); NULL at the end. *too_long is set
 * when the line did not fit in cap - 1 characters (buf then holds its start). */
static const char *next_line(const char **p, char *buf, size_t cap, bool *too_long)
{
    if (!**p) return NULL;
    const char *e = strchr(*p, '\n');
    size_t len = e ? (size_t)(e - *p) : strlen(*p);
    size_t k = len < cap - 1 ? len : cap - 1;
    *too_long = len > cap - 1;
    memcpy(buf, *p, k);
    buf[k] = 0;
    if (k && buf[k - 1] == '\r') buf[k - 1] = 0;
    *p += len + (e != NULL);
    return buf;
}

/* Splits line at its first blank: the key (NUL-terminated in place) and the rest (blanks
 * skipped). */
static char *split_key(char *line)
{
    char *v = line + strcspn(line, " \t");
    if (*v) *v++ = 0;
    return v + strspn(v, " \t");
}

/* Whether the blank-separated words of v are exactly cairn_predictor_feature_names. */
static bool same_features(const char *v)
{
    for (int j = 0; j < NF; j++) {
        size_t n = strlen(cairn_predictor_feature_names[j]);
        v += strspn(v, " \t");
        if (strncmp(v, cairn_predictor_feature_names[j], n) || (v[n] && !strchr(" \t", v[n])))
            return false;
        v += n;
    }
    return v[strspn(v, " \t")] == 0;
}

/* Parses one finite number of a profile; *end after it. Returns 0 or -1. */
static int parse_number(const char *v, double *out, const char **end)
{
    char *e;
    errno = 0;
    *out = strtod(v, &e);
    if (e == v || errno || !isfinite(*out) || (*e && !strchr(" \t", *e))) return -1;
    *end = e;
    return 0;
}

int cairn_sched_profile_parse(const char *text, const char *name, cairn_sched_profile *out,
                              cairn_error *err)
{
    static const char rerun[] = "re-run `cairn bench profile --out FILE`";
    memset(out, 0, sizeof *out);
    const char *p = text;
    char line[1024];
    int no = 0;
    bool have_features = false, have_coef = false, have_budget = false, have_slo = false;
    bool have_backend = false, have_device = false, too_long;
    int version = 0;
    snprintf(out->backend, sizeof out->backend, "cpu"); /* version 2: every one was a CPU's */
    while (next_line(&p, line, sizeof line, &too_long)) {
        no++;
        if (too_long)
            return cairn_errorf(err, CAIRN_EFORMAT, "%s: line %d is longer than %zu characters",
                                name, no, sizeof line - 1);
        if (no == 1) {
            char *v = split_key(line), *end;
            if (!strcmp(line, PROFILE_MAGIC)) {
                errno = 0;
                long ver = strtol(v, &end, 10);
                if (end == v || errno || end[strspn(end, " \t")])
                    return cairn_errorf(err, CAIRN_EFORMAT, "%s: line 1: '%s' is not a version "
                                        "number", name, v);
                if (ver != 2 && ver != CAIRN_SCHED_PROFILE_VERSION)
                    return cairn_errorf(err, CAIRN_EFORMAT, "%s: profile version %ld; this "
                                        "build reads versions 2 and %d: %s", name, ver,
                                        CAIRN_SCHED_PROFILE_VERSION, rerun);
                version = (int)ver;
                continue;
            }
            double x;
            const char *e;
            if (parse_number(line, &x, &e) == 0)
                return cairn_errorf(err, CAIRN_EFORMAT, "%s: a profile of the old format (bare "
                                    "coefficients of the first predictor's 7 features); the "
                                    "predictor's features have changed: %s", name, rerun);
            return cairn_errorf(err, CAIRN_EFORMAT, "%s: not a scheduler profile (line 1 is not "
                                "'%s %d')", name, PROFILE_MAGIC, CAIRN_SCHED_PROFILE_VERSION);
        }
        char *v = split_key(line);
        if (!line[0] && !*v) continue; /* a blank line */
        if (!strcmp(line, "backend") && version >= 3 && !have_backend && !have_features) {
            if (strcmp(v, "cpu") && strcmp(v, "cuda"))
                return cairn_errorf(err, CAIRN_EFORMAT, "%s: line %d: backend '%s' is not cpu "
                                    "or cuda", name, no, v);
            snprintf(out->backend, sizeof out->backend, "%s", v);
            have_backend = true;
        } else if (!strcmp(line, "device") && version >= 3 && !have_device && !have_features) {
            if (!*v || strlen(v) >= sizeof out->device)
                return cairn_errorf(err, CAIRN_EFORMAT, "%s: line %d: the device name is empty "
                                    "or longer than %zu characters", name, no,
                                    sizeof out->device - 1);
            snprintf(out->device, sizeof out->device, "%s", v);
            have_device = true;
        } else if (!strcmp(line, "features") && !have_features && !have_coef) {
            if (!same_features(v))
                return cairn_errorf(err, CAIRN_EFORMAT, "%s: line %d: the features '%s' are not "
                                    "this build's: %s", name, no, v, rerun);
            have_features = true;
        } else if (!strcmp(line, "coefficients") && have_features && !have_coef) {
            const char *q = v;
            int n = 0;
            for (q += strspn(q, " \t"); *q; q += strspn(q, " \t"), n++) {
                double x;
                const char *e;
                if (parse_number(q, &x, &e) != 0)
                    return cairn_errorf(err, CAIRN_EFORMAT, "%s: line %d: coefficient %d '%.*s' "
                                        "is not a finite number", name, no, n + 1,
                                        (int)strcspn(q, " \t"), q);
                if (n < NF) out->coef[n] = x;
                q = e;
            }
            if (n != NF)
                return cairn_errorf(err, CAIRN_EFORMAT, "%s: line %d: %d coefficients, %d "
                                    "expected", name, no, n, NF);
            have_coef = true;
        } else if (!strcmp(line, "budget") && have_coef && !have_budget) {
            const char *e;
            if (parse_number(v, &out->budget_s, &e) != 0 || e[strspn(e, " \t")])
                return cairn_errorf(err, CAIRN_EFORMAT, "%s: line %d: budget '%s' is not a "
                                    "number of seconds", name, no, v);
            if (!(out->budget_s >= 0.001 && out->budget_s <= 10))
                return cairn_errorf(err, CAIRN_EFORMAT, "%s: line %d: budget %g s is outside "
                                    "1 ms..10 s", name, no, out->budget_s);
            have_budget = true;
        } else if (!strcmp(line, "slo") && have_budget && !have_slo) {
            const char *e1, *e2;
            if (parse_number(v, &out->ttft_slo_s, &e1) != 0 ||
                parse_number(e1 + strspn(e1, " \t"), &out->tbt_slo_s, &e2) != 0 ||
                e2[strspn(e2, " \t")] || !(out->ttft_slo_s > 0) || !(out->tbt_slo_s > 0))
                return cairn_errorf(err, CAIRN_EFORMAT, "%s: line %d: slo '%s' is not two "
                                    "positive numbers of seconds (TTFT TBT)", name, no, v);
            have_slo = true;
        } else {
            return cairn_errorf(err, CAIRN_EFORMAT, "%s: line %d: unexpected '%s' (expected %s)",
                                name, no, line, !have_features ? "the features line"
                                : !have_coef ? "the coefficients line"
                                : "at most a budget line and an slo line");
        }
    }
    if (no == 0)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: empty file: %s", name, rerun);
    if (!have_coef)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: no %s line (the file is cut short): %s",
                            name, have_features ? "coefficients" : "features", rerun);
    return 0;
}

int cairn_sched_profile_load(const char *path, cairn_sched_profile *out, cairn_error *err)
{
    enum { CAP = 64 * 1024 };
    FILE *f = fopen(path, "rb");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    char *buf = malloc(CAP + 1);
    if (!buf) {
        fclose(f);
        return cairn_errorf(err, CAIRN_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, CAP + 1, f);
    int bad = ferror(f);
    fclose(f);
    int rc;
    if (bad) rc = cairn_errorf(err, CAIRN_EIO, "%s: read error", path);
    else if (n > CAP) rc = cairn_errorf(err, CAIRN_ELIMIT, "%s: larger than %d bytes", path, CAP);
    else if (memchr(buf, 0, n)) rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: not a text file", path);
    else {
        buf[n] = 0;
        rc = cairn_sched_profile_parse(buf, path, out, err);
    }
    free(buf);
    return rc;
}

int cairn_sched_profile_save(const char *path, const cairn_sched_profile *p, cairn_error *err)
{
    const char *backend = p->backend[0] ? p->backend : "cpu";
    if (strpbrk(backend, "\r\n") || strpbrk(p->device, "\r\n"))
        return cairn_errorf(err, CAIRN_EINVAL, "%s: a backend or device name with a line break",
                            path);
    FILE *f = fopen(path, "w");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    fprintf(f, "%s %d\nbackend %s\n", PROFILE_MAGIC, CAIRN_SCHED_PROFILE_VERSION, backend);
    if (p->device[0]) fprintf(f, "device %s\n", p->device);
    fprintf(f, "features");
    for (int j = 0; j < NF; j++)
        fprintf(f, " %s", cairn_predictor_feature_names[j]);
    fprintf(f, "\ncoefficients");
    for (int j = 0; j < NF; j++)
        fprintf(f, " %.9g", p->coef[j]);
    fprintf(f, "\n");
    if (p->budget_s > 0) fprintf(f, "budget %.6g\n", p->budget_s);
    if (p->budget_s > 0 && p->ttft_slo_s > 0 && p->tbt_slo_s > 0)
        fprintf(f, "slo %.6g %.6g\n", p->ttft_slo_s, p->tbt_slo_s);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) return cairn_errorf(err, CAIRN_EIO, "%s: write failed", path);
    return 0;
}

int cairn_sched_profile_check(const cairn_sched_profile *p, const char *backend,
                              const char *device, cairn_error *err)
{
    if (strcmp(p->backend, backend))
        return cairn_errorf(err, CAIRN_EINVAL, "it was measured on the %s backend (%s), and "
                            "this engine runs on the %s backend (%s): re-run `cairn bench "
                            "profile` there", p->backend, p->device[0] ? p->device : "unknown",
                            backend, device);
    if (p->device[0] && strcmp(p->device, device))
        return cairn_errorf(err, CAIRN_EINVAL, "it was measured on %s '%s', and this engine "
                            "runs on '%s': re-run `cairn bench profile` there",
                            !strcmp(backend, "cpu") ? "the CPU" : "the GPU", p->device, device);
    return 0;
}

int cairn_sched_budgets_for_slo(const cairn_sched_profile *prof, double ttft_s, double tbt_s,
                                double *budget_s, double *online_budget_s, cairn_error *err)
{
    if (!(ttft_s > 0) || !(tbt_s > 0) || !isfinite(ttft_s) || !isfinite(tbt_s))
        return cairn_errorf(err, CAIRN_EINVAL, "the SLO (TTFT %g s, TBT %g s) must be positive",
                            ttft_s, tbt_s);
    if (!(tbt_s < ttft_s))
        return cairn_errorf(err, CAIRN_EINVAL, "the TBT SLO %g s must be below the TTFT SLO %g s",
                            tbt_s, ttft_s);
    double online = CAIRN_SCHED_ONLINE_SHARE * tbt_s, b = CAIRN_SCHED_BUDGET_SHARE * tbt_s;
    if (prof && prof->budget_s > 0 && prof->tbt_slo_s > 0)
        b = prof->budget_s * tbt_s / prof->tbt_slo_s;
    *online_budget_s = online;
    *budget_s = b < online ? b : online;
    return 0;
}

/* ---- Policies ----------------------------------------------------------------------------- */

static const char *const policy_names[] = {"slo", "online-only", "fcfs-hybrid"};

int cairn_sched_policy_parse(const char *s, cairn_sched_policy *out, cairn_error *err)
{
    for (int i = 0; i < 3; i++)
        if (s && !strcmp(s, policy_names[i])) {
            *out = (cairn_sched_policy)i;
            return 0;
        }
    return cairn_errorf(err, CAIRN_EINVAL,
                        "scheduling policy '%s' is not one of slo, online-only, fcfs-hybrid",
                        s ? s : "(null)");
}

const char *cairn_sched_policy_name(cairn_sched_policy p)
{
    return (unsigned)p < 3 ? policy_names[p] : "?";
}

cairn_sched_params cairn_sched_default_params(void)
{
    return (cairn_sched_params){
        .policy = CAIRN_SCHED_SLO,
        .max_batch_tokens = 512,
        .budget_s = 0.1,
        .online_budget_s = 0.2,
        .min_chunk = 16,
        .starve_ns = 2000000000LL,
        .max_seqs = 0,
        .offline_occupancy = 0.75,
    };
}

/* ---- Planning ------------------------------------------------------------------------------- */

typedef struct {
    const cairn_sched_params *sp;
    const cairn_predictor *pred;
    cairn_step_item *items;
    int n_items, tokens;
    cairn_batch_shape shape;
} plan;

static int room(const plan *pl) { return pl->sp->max_batch_tokens - pl->tokens; }

static void add(plan *pl, cairn_sched_seq *s, int n)
{
    pl->items[pl->n_items++] = (cairn_step_item){s->id, n};
    pl->tokens += n;
    cairn_batch_shape_add(&pl->shape, s->prefilling, s->ctx, n, n >= s->remaining);
    s->id = -1 - s->id; /* planned: no second item for it */
}

static int planned(const cairn_sched_seq *s) { return s->id < 0; }

/* Would adding a decode token of s (n = 1) or a prefill chunk of n keep the prediction within
 * the budget (the online one for online sequences)? */
static int fits(const plan *pl, const cairn_sched_seq *s, int n)
{
    const double limit = s->online ? pl->sp->online_budget_s : pl->sp->budget_s;
    if (!pl->pred || n > room(pl)) return n <= room(pl);
    cairn_batch_shape t = pl->shape;
    cairn_batch_shape_add(&t, s->prefilling, s->ctx, n, n >= s->remaining);
    return cairn_predictor_predict(pl->pred, &t) <= limit;
}

/* The largest prefill chunk of s that fits the budget and the token room (0 if none). */
static int best_chunk(const plan *pl, const cairn_sched_seq *s)
{
    int hi = s->remaining < room(pl) ? s->remaining : room(pl);
    if (hi <= 0 || !fits(pl, s, 1)) return 0;
    if (fits(pl, s, hi)) return hi;
    int lo = 1; /* fits(lo) holds, fits(hi) does not */
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (fits(pl, s, mid)) lo = mid;
        else hi = mid;
    }
    return lo;
}

static int by_arrival(const void *a, const void *b)
{
    const cairn_sched_seq *x = a, *y = b;
    return (x->t_arrival > y->t_arrival) - (x->t_arrival < y->t_arrival);
}

/* Decode tokens, then prefill chunks, over seqs[0..n) in order, with no budget: the plain
 * continuous batching of online-only and fcfs-hybrid. */
static void plain(plan *pl, cairn_sched_seq *seqs, int n)
{
    for (int i = 0; i < n && room(pl) > 0; i++)
        if (!seqs[i].prefilling) add(pl, &seqs[i], 1);
    for (int i = 0; i < n && room(pl) > 0; i++)
        if (seqs[i].prefilling && !planned(&seqs[i])) {
            int c = seqs[i].remaining < room(pl) ? seqs[i].remaining : room(pl);
            if (c > 0) add(pl, &seqs[i], c);
        }
}

/* An offline sequence not served (since its last iteration, or its arrival) for starve_ns. */
static int starving(const cairn_sched_params *sp, const cairn_sched_seq *s, int64_t now)
{
    int64_t since = s->t_served > s->t_arrival ? s->t_served : s->t_arrival;
    return !s->online && now - since > sp->starve_ns;
}

/* The occupancy guard (sched.h, slo 5): whether the online sequences, running or waiting for
 * a slot, hold offline_occupancy of the slots or more. */
static bool online_crowded(const cairn_sched_params *sp, const cairn_sched_seq *seqs, int n,
                           int online_waiting)
{
    if (sp->max_seqs <= 0) return false;
    int online = online_waiting;
    for (int i = 0; i < n; i++)
        online += seqs[i].online;
    return online >= sp->offline_occupancy * sp->max_seqs;
}

static void slo(plan *pl, cairn_sched_seq *seqs, int n, int online_waiting, int64_t now)
{
    const cairn_sched_params *sp = pl->sp;
    /* 1. online decode tokens. */
    for (int i = 0; i < n && room(pl) > 0; i++)
        if (seqs[i].online && !seqs[i].prefilling) add(pl, &seqs[i], 1);
    /* 2. online prefill chunks, first come, first served: each as large as the online budget
     *    allows; the oldest prompt at least min_chunk whatever the budget (so prompts always
     *    advance), a later one only a chunk of min_chunk or more (or its rest) within the
     *    budget, and none overtakes an earlier one that got less. Giving every prompt its
     *    min_chunk beyond the budget stretched the iterations of a burst of prompts past the
     *    TBT SLO (five prompts: 16 tokens each on top of a full budget) and, by spreading the
     *    prefill, delayed every prompt's first token. */
    bool oldest = true;
    for (int i = 0; i < n && room(pl) > 0; i++) {
        cairn_sched_seq *s = &seqs[i];
        if (planned(s) || !s->online || !s->prefilling) continue;
        int c = best_chunk(pl, s), floor = s->remaining < sp->min_chunk ? s->remaining
                                                                         : sp->min_chunk;
        if (c < floor && !oldest) break;
        if (c < floor) c = floor < room(pl) ? floor : room(pl);
        add(pl, s, c);
        oldest = false;
    }
    /* 3. starvation guard: the oldest offline sequence, when it has not advanced for
     *    starve_ns, gets its minimum service (a decode token or a min_chunk chunk) whatever
     *    the budget. Only the oldest: offline work is served first come, first served (4 and
     *    5), so the oldest advancing is what bounds every offline sequence's wait. Serving
     *    every starved sequence in turn instead spread the offline work over all of them,
     *    and none finished for tens of seconds. After online prefill, so that the guard does
     *    not take the budget online prompts need. */
    for (int i = 0; i < n && room(pl) > 0; i++) {
        cairn_sched_seq *s = &seqs[i];
        if (s->online || planned(s)) continue;
        if (starving(sp, s, now)) {
            int c = s->prefilling ? s->remaining : 1;
            if (c > sp->min_chunk) c = sp->min_chunk;
            add(pl, s, c < room(pl) ? c : room(pl));
        }
        break;
    }
    /* 4. offline decode tokens while the prediction stays within the budget, unless the
     *    online sequences crowd the slots (the occupancy guard: then only 3 serves offline
     *    work, and an iteration with nothing else still gets its oldest token below). */
    const bool crowded = online_crowded(sp, seqs, n, online_waiting);
    for (int i = 0; i < n && room(pl) > 0 && !(crowded && pl->n_items > 0); i++) {
        cairn_sched_seq *s = &seqs[i];
        if (planned(s) || s->online || s->prefilling) continue;
        if ((!crowded && fits(pl, s, 1)) || pl->n_items == 0)
            add(pl, s, 1); /* never an empty iteration */
    }
    /* 5. offline prefill chunks in what remains of the budget (not below min_chunk, unless
     *    that finishes the prompt). */
    for (int i = 0; i < n && room(pl) > 0 && !(crowded && pl->n_items > 0); i++) {
        cairn_sched_seq *s = &seqs[i];
        if (planned(s) || s->online || !s->prefilling) continue;
        int c = crowded ? 0 : best_chunk(pl, s);
        if (pl->n_items == 0 && c < sp->min_chunk) /* never an empty iteration */
            c = s->remaining < sp->min_chunk ? s->remaining : sp->min_chunk;
        if (c > room(pl)) c = room(pl);
        if (c >= sp->min_chunk || (c > 0 && c == s->remaining)) add(pl, s, c);
        else break; /* FCFS among offline prefills: a later one does not overtake */
    }
}

int cairn_sched_plan(const cairn_sched_params *sp, const cairn_predictor *pred,
                     cairn_sched_seq *seqs, int n, int online_waiting, int64_t now,
                     cairn_step_item *items, cairn_batch_shape *shape)
{
    plan pl = {.sp = sp, .pred = pred && pred->fitted ? pred : NULL, .items = items};
    if (n > 0) qsort(seqs, (size_t)n, sizeof *seqs, by_arrival);
    switch (sp->policy) {
    case CAIRN_SCHED_FCFS_HYBRID:
        plain(&pl, seqs, n);
        break;
    case CAIRN_SCHED_ONLINE_ONLY: {
        /* Online sequences first in the array (stable within each class by arrival). */
        int k = 0;
        for (int i = 0; i < n; i++)
            if (seqs[i].online) {
                cairn_sched_seq t = seqs[i];
                memmove(&seqs[k + 1], &seqs[k], (size_t)(i - k) * sizeof t);
                seqs[k++] = t;
            }
        plain(&pl, seqs, k ? k : n);
        break;
    }
    case CAIRN_SCHED_SLO:
    default:
        slo(&pl, seqs, n, online_waiting, now);
        break;
    }
    for (int i = 0; i < n; i++)
        if (planned(&seqs[i])) seqs[i].id = -1 - seqs[i].id;
    if (shape) *shape = pl.shape;
    return pl.n_items;
}
