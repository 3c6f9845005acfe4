/*
 * generation/sched.c — latency predictor and iteration planning (see sched.h).
 */
#include "generation/sched.h"

#include <math.h>
#include <pthread.h>
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
    int fitted;
    int refit_every, since_fit;
    double *ape; /* ring of out-of-sample absolute percentage errors */
    int n_ape, ape_head;
    double ape_sum;
    pthread_mutex_t lock; /* guards ape ring and coefficients against readers on other threads */
};

static void features(const cairn_batch_shape *s, double f[NF])
{
    f[0] = 1.0;
    f[1] = s->s_p;
    f[2] = s->s_d;
    f[3] = (double)s->s_p * s->s_p;
    f[4] = s->n_p;
    f[5] = s->n_d;
    f[6] = (double)s->ctx;
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

double cairn_predictor_predict(const cairn_predictor *p, const cairn_batch_shape *s)
{
    if (!p || !p->fitted) return 0;
    double f[NF];
    features(s, f);
    return predict_features(p->coef, f);
}

void cairn_predictor_set_refit(cairn_predictor *p, int every)
{
    p->refit_every = every > 0 ? every : 0;
}

void cairn_predictor_observe(cairn_predictor *p, const cairn_batch_shape *s, double seconds)
{
    if (s->s_p + s->s_d <= 0 || !(seconds > 0) || !isfinite(seconds)) return;
    double f[NF];
    features(s, f);
    pthread_mutex_lock(&p->lock);
    if (p->fitted) {
        double e = fabs(predict_features(p->coef, f) - seconds) / seconds;
        if (p->n_ape == p->window) p->ape_sum -= p->ape[p->ape_head];
        else p->n_ape++;
        p->ape[p->ape_head] = e;
        p->ape_sum += e;
        p->ape_head = (p->ape_head + 1) % p->window;
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
 * scaled to a maximum of 1 first (S_p^2 reaches 10^5..10^6 while the constant is 1), and a tiny
 * ridge term keeps features the window never exercised (say, no prefill yet) at zero instead of
 * making the system singular.
 */
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
        a[j][j] += 1e-9 * tr / NF + 1e-300;
    }
    if (cholesky_solve(a, b, c) != 0)
        return cairn_errorf(err, CAIRN_ESTATE, "predictor: the fit is singular");
    pthread_mutex_lock(&p->lock);
    for (int j = 0; j < NF; j++)
        p->coef[j] = c[j] / scale[j];
    p->fitted = 1;
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
    p->fitted = 1;
    pthread_mutex_unlock(&p->lock);
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
    pl->shape.ctx += s->ctx;
    if (s->prefilling) {
        pl->shape.s_p += n;
        pl->shape.n_p++;
    } else {
        pl->shape.s_d++;
        pl->shape.n_d++;
    }
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
    t.ctx += s->ctx;
    if (s->prefilling) {
        t.s_p += n;
        t.n_p++;
    } else {
        t.s_d++;
        t.n_d++;
    }
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

static int starving(const cairn_sched_params *sp, const cairn_sched_seq *s, int64_t now)
{
    int64_t since = s->t_served > s->t_arrival ? s->t_served : s->t_arrival;
    return !s->online && now - since > sp->starve_ns;
}

static void slo(plan *pl, cairn_sched_seq *seqs, int n, int64_t now)
{
    const cairn_sched_params *sp = pl->sp;
    /* 1. online decode tokens. */
    for (int i = 0; i < n && room(pl) > 0; i++)
        if (seqs[i].online && !seqs[i].prefilling) add(pl, &seqs[i], 1);
    /* 2. starved offline sequences: their minimum service, whatever the budget. */
    for (int i = 0; i < n && room(pl) > 0; i++) {
        cairn_sched_seq *s = &seqs[i];
        if (planned(s) || !starving(sp, s, now)) continue;
        int c = s->prefilling ? s->remaining : 1;
        if (c > sp->min_chunk) c = sp->min_chunk;
        if (c > room(pl)) c = room(pl);
        add(pl, s, c);
    }
    /* 3. online prefill chunks: as large as the budget allows, at least min_chunk. */
    for (int i = 0; i < n && room(pl) > 0; i++) {
        cairn_sched_seq *s = &seqs[i];
        if (planned(s) || !s->online || !s->prefilling) continue;
        int c = best_chunk(pl, s), floor = s->remaining < sp->min_chunk ? s->remaining
                                                                         : sp->min_chunk;
        if (c < floor) c = floor < room(pl) ? floor : room(pl);
        add(pl, s, c);
    }
    /* 4. offline decode tokens while the prediction stays within the budget. */
    for (int i = 0; i < n && room(pl) > 0; i++) {
        cairn_sched_seq *s = &seqs[i];
        if (planned(s) || s->online || s->prefilling) continue;
        if (fits(pl, s, 1) || pl->n_items == 0) add(pl, s, 1); /* never an empty iteration */
    }
    /* 5. offline prefill chunks in what remains of the budget (not below min_chunk, unless
     *    that finishes the prompt). */
    for (int i = 0; i < n && room(pl) > 0; i++) {
        cairn_sched_seq *s = &seqs[i];
        if (planned(s) || s->online || !s->prefilling) continue;
        int c = best_chunk(pl, s);
        if (pl->n_items == 0 && c < sp->min_chunk) /* never an empty iteration */
            c = s->remaining < sp->min_chunk ? s->remaining : sp->min_chunk;
        if (c > room(pl)) c = room(pl);
        if (c >= sp->min_chunk || (c > 0 && c == s->remaining)) add(pl, s, c);
        else break; /* FCFS among offline prefills: a later one does not overtake */
    }
}

int cairn_sched_plan(const cairn_sched_params *sp, const cairn_predictor *pred,
                     cairn_sched_seq *seqs, int n, int64_t now, cairn_step_item *items,
                     cairn_batch_shape *shape)
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
        slo(&pl, seqs, n, now);
        break;
    }
    for (int i = 0; i < n; i++)
        if (planned(&seqs[i])) seqs[i].id = -1 - seqs[i].id;
    if (shape) *shape = pl.shape;
    return pl.n_items;
}
