/*
 * generation/profiler.c — a short profile of an engine (profiler.h).
 *
 * The shapes: 0..8 decoding sequences (their prompts of 8..160 tokens prefilled untimed, then
 * a token each per timed step) and, in most draws, one prefill chunk of 1..128 tokens after 0
 * or 16..128 cached ones, finishing its prompt or not. These are the shapes a serving engine
 * runs; the predictor's features (sched.h) are linear in what they count, so a fit on them
 * extrapolates to longer prompts through the same coefficients.
 */
#include "generation/profiler.h"

#include "common/clock.h"
#include "common/rand.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

/* MIN_ITERS: the fit on the first 70% needs two iterations a feature (cairn_predictor_fit). */
enum { MAX_DEC = 8, SEQS = MAX_DEC + 4, CTX = 512,
       MIN_ITERS = (2 * CAIRN_PREDICTOR_FEATURES * 10 + 6) / 7 };

typedef struct {
    cairn_engine *e;
    int ctx; /* CTX, or the model's context when shorter */
    int32_t vocab;
    uint64_t rng;
    cairn_gen_params gp;
    int dec[MAX_DEC], n_dec;
} prof;

static int pick(prof *p, int lo, int hi) /* [lo, hi] */
{
    return lo + (int)(cairn_rand_next(&p->rng) % (uint64_t)(hi - lo + 1));
}

/* A sequence with a random prompt of n tokens (ids well inside the vocabulary); its id or -1. */
static int add_seq(prof *p, int n)
{
    int32_t prompt[CTX];
    n = n < p->ctx - 64 ? n : p->ctx - 64; /* room to decode after it */
    for (int k = 0; k < n; k++)
        prompt[k] = 100 + (int32_t)(cairn_rand_next(&p->rng) % (uint64_t)(p->vocab - 200));
    int id;
    return cairn_engine_add(p->e, prompt, n, &p->gp, &id, NULL) ? -1 : id;
}

/* Retires long or finished decoding sequences; adds new ones (prefilled untimed) up to want. */
static int top_up(prof *p, int want, cairn_error *err) /* 0 or the engine's error */
{
    for (int i = 0; i < p->n_dec;) {
        cairn_seq_info info;
        cairn_engine_seq_info(p->e, p->dec[i], &info);
        if (info.finish != CAIRN_FINISH_NONE ||
            info.n_prefilled + info.n_generated > p->ctx - 192) {
            cairn_engine_release(p->e, p->dec[i]);
            p->dec[i] = p->dec[--p->n_dec];
        } else {
            i++;
        }
    }
    while (p->n_dec < want) {
        int id = add_seq(p, pick(p, 8, 160));
        if (id < 0) return 0;
        cairn_step_item all = {id, CTX};
        int rc = cairn_engine_step(p->e, &all, 1, err);
        if (rc) return rc;
        p->dec[p->n_dec++] = id;
    }
    return 0;
}

/* A drawn shape: how many decoding sequences take a token, and the prefill chunk (if any). */
typedef struct {
    int want;                  /* decoding sequences */
    bool pre;                  /* a prefill chunk too */
    int chunk, prefix, extra;  /* its tokens, the cached ones before it, the prompt after it */
} draw;

static draw draw_shape(prof *p)
{
    draw d = {.want = pick(p, 0, MAX_DEC)};
    d.pre = d.want == 0 || pick(p, 0, 9) < 6;
    d.chunk = pick(p, 1, p->ctx / 4);
    d.prefix = pick(p, 0, 2) ? 0 : pick(p, 16, p->ctx / 4);
    d.extra = pick(p, 0, 2) ? 0 : pick(p, 1, 32);
    return d;
}

/* Runs draw d once and times it: *shape and *seconds (0 when nothing ran). The decoding
 * sequences move a token on; the prefill chunk is a fresh sequence's. Returns 0 or the engine's
 * error code. */
static int run_draw(prof *p, const draw *d, cairn_batch_shape *shape, double *seconds,
                    cairn_error *err)
{
    cairn_step_item items[SEQS];
    int n = 0, pid = -1, rc = 0;
    *shape = (cairn_batch_shape){0};
    *seconds = 0;
    for (int i = 0; i < p->n_dec && i < d->want; i++) {
        cairn_seq_info info;
        cairn_engine_seq_info(p->e, p->dec[i], &info);
        items[n++] = (cairn_step_item){p->dec[i], 1};
        cairn_batch_shape_add(shape, false, info.n_prefilled + info.n_generated, 1, true);
    }
    if (d->pre && (pid = add_seq(p, d->prefix + d->chunk + d->extra)) >= 0) {
        cairn_step_item first = {pid, d->prefix};
        if (d->prefix && (rc = cairn_engine_step(p->e, &first, 1, err))) {
            cairn_engine_release(p->e, pid);
            return rc;
        }
        items[n++] = (cairn_step_item){pid, d->chunk};
        cairn_batch_shape_add(shape, true, d->prefix, d->chunk, d->extra == 0);
    }
    if (n > 0) {
        int64_t t0 = cairn_now_ns();
        rc = cairn_engine_step(p->e, items, n, err);
        *seconds = (double)(cairn_now_ns() - t0) / 1e9;
    }
    if (pid >= 0) cairn_engine_release(p->e, pid);
    return rc;
}

/* Draws a shape and times it after `warmup` untimed steps of it. Returns 0 or the engine's
 * error code. */
static int time_one(prof *p, int warmup, cairn_batch_shape *shape, double *seconds,
                    cairn_error *err)
{
    draw d = draw_shape(p);
    int rc = top_up(p, d.want, err);
    for (int w = 0; !rc && w <= warmup; w++)
        rc = run_draw(p, &d, shape, seconds, err);
    return rc;
}

int cairn_profiler_run(const cairn_model *m, const cairn_engine_params *ep, int iterations,
                       double coef[CAIRN_PREDICTOR_FEATURES], cairn_profiler_stats *st,
                       cairn_error *err)
{
    if (iterations < MIN_ITERS)
        return cairn_errorf(err, CAIRN_EINVAL, "profiler: %d iterations; at least %d",
                            iterations, MIN_ITERS);
    int64_t t_start = cairn_now_ns();
    const cairn_model_hparams *hp = cairn_model_hparams_of(m);
    if (hp->n_ctx_train < 256)
        return cairn_errorf(err, CAIRN_EINVAL, "profiler: the model's context (%d) is shorter "
                            "than the 256 positions its shapes need", hp->n_ctx_train);
    cairn_engine_params p = *ep;
    p.max_seqs = SEQS;
    p.n_ctx = hp->n_ctx_train < CTX ? hp->n_ctx_train : CTX;
    p.kv_blocks = SEQS * ((p.n_ctx + p.block_tokens - 1) / p.block_tokens);
    prof pr = {.rng = 0x5eed5eedull, .vocab = hp->n_vocab, .ctx = p.n_ctx};
    pr.gp = cairn_gen_default_params();
    pr.gp.max_tokens = p.n_ctx;
    cairn_batch_shape *shapes = malloc(sizeof *shapes * (size_t)iterations);
    double *t = malloc(sizeof *t * (size_t)iterations);
    cairn_predictor *fit = NULL, *all = NULL;
    int rc = shapes && t ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "profiler: out of memory");
    if (!rc) rc = cairn_engine_open(&pr.e, m, &p, err);
    /* A shape's first steps on a GPU load kernels and capture its graph: the backend's cold
     * steps run untimed first, as `cairn bench profile --warmup` does. */
    cairn_backend_traits traits = {1, 1, 0, 0};
    if (!rc) {
        cairn_backend *be = cairn_engine_backend(pr.e);
        be->i->traits(be, &traits);
    }
    int n = 0;
    while (!rc && n < iterations) {
        rc = time_one(&pr, traits.cold_steps, &shapes[n], &t[n], err);
        if (!rc && t[n] > 0) n++;
    }
    cairn_engine_close(pr.e);
    /* Fit on the first 70%, measure the rest; then the coefficients of a fit on all. */
    const int n_fit = n * 7 / 10;
    if (!rc) rc = cairn_predictor_new(&fit, n_fit, err);
    if (!rc) rc = cairn_predictor_new(&all, n, err);
    if (!rc) {
        cairn_predictor_set_refit(fit, 0);
        cairn_predictor_set_refit(all, 0);
        cairn_predictor_set_traits(fit, &traits);
        cairn_predictor_set_traits(all, &traits);
        for (int i = 0; i < n; i++) {
            if (i < n_fit) cairn_predictor_observe(fit, &shapes[i], t[i]);
            cairn_predictor_observe(all, &shapes[i], t[i]);
        }
        rc = cairn_predictor_fit(fit, err);
    }
    if (!rc) rc = cairn_predictor_fit(all, err);
    if (!rc) {
        double sum = 0;
        for (int i = n_fit; i < n; i++)
            sum += fabs(cairn_predictor_predict(fit, &shapes[i]) - t[i]) / t[i];
        cairn_predictor_coefficients(all, coef);
        if (st)
            *st = (cairn_profiler_stats){.iterations = n,
                                         .seconds = (double)(cairn_now_ns() - t_start) / 1e9,
                                         .mape = n > n_fit ? sum / (n - n_fit) : 0,
                                         .held_out = n - n_fit};
    }
    cairn_predictor_free(fit);
    cairn_predictor_free(all);
    free(shapes);
    free(t);
    return rc;
}
