/* adapt/train.c — data-parallel SGD training and evaluation of adapt/models CNNs. */
#include "adapt/train.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapt/augmix.h"
#include "adapt/nn/nn_gguf.h"
#include "adapt/nn/nn_train.h"
#include "common/threadpool.h"

#define EVAL_BATCH 256

cairn_train_params cairn_train_default_params(void)
{
    cairn_train_params p = {0};
    p.epochs = 5;
    p.batch_size = 128;
    p.shards = 2;
    p.threads = 1;
    p.lr = 0.05f;
    p.momentum = 0.9f;
    p.weight_decay = 5e-4f;
    p.warmup_steps = 200;
    p.seed = 1;
    p.augment = 0;
    p.shift_px = 2;
    p.erase_prob = 0.5f;
    p.progress_every = 50;
    p.jsd_lambda = 12.0f;
    p.augmix_severity = 3;
    return p;
}

/* ---- Deterministic randomness ---------------------------------------------------------------
 * splitmix64 (Steele et al. 2014) keyed by (seed, stream, index): every random decision depends
 * only on its coordinates, never on which thread makes it. */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

typedef struct {
    uint64_t s;
} rng;

static rng rng_at(uint64_t seed, uint64_t stream, uint64_t index)
{
    rng r = {mix64(mix64(seed ^ 0x5eedull) ^ mix64(stream + 0x1234567ull) ^ index)};
    return r;
}

static uint64_t rng_next(rng *r)
{
    r->s += 0x9e3779b97f4a7c15ull;
    return mix64(r->s);
}

/* Uniform in [0, 1). */
static double rng_unif(rng *r)
{
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform integer in [0, n). */
static int rng_int(rng *r, int n)
{
    return (int)(rng_unif(r) * n);
}

/* ---- Augmentation ---------------------------------------------------------------------------- */

/* Writes the augmented copy of src (h x w, one channel) into dst. */
static void augment_image(const float *src, float *dst, int h, int w, const cairn_train_params *p,
                          rng *r)
{
    int sx = 0, sy = 0, flip = 0;
    if (p->shift_px > 0) {
        sx = rng_int(r, 2 * p->shift_px + 1) - p->shift_px;
        sy = rng_int(r, 2 * p->shift_px + 1) - p->shift_px;
    }
    flip = rng_unif(r) < 0.5;
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            int yy = y - sy, xx = x - sx;
            if (flip) xx = w - 1 - xx;
            dst[y * w + x] = (yy >= 0 && yy < h && xx >= 0 && xx < w) ? src[yy * w + xx] : 0.0f;
        }
    }
    if (rng_unif(r) < p->erase_prob) {
        /* Random erasing: area fraction in [0.02, 0.2], log-uniform aspect in [0.3, 3.3]. */
        for (int attempt = 0; attempt < 10; attempt++) {
            double area = (0.02 + 0.18 * rng_unif(r)) * h * w;
            double aspect = exp(log(0.3) + (log(3.3) - log(0.3)) * rng_unif(r));
            int eh = (int)lround(sqrt(area * aspect)), ew = (int)lround(sqrt(area / aspect));
            if (eh < 1 || ew < 1 || eh >= h || ew >= w) continue;
            int y0 = rng_int(r, h - eh + 1), x0 = rng_int(r, w - ew + 1);
            for (int y = y0; y < y0 + eh; y++)
                for (int x = x0; x < x0 + ew; x++)
                    dst[y * w + x] = 0.0f;
            break;
        }
    }
}

/* ---- Training -------------------------------------------------------------------------------- */

typedef struct shard {
    cairn_nn_model *m;
    float *x;       /* shard_n * px inputs */
    int *y;         /* shard_n labels */
    float *dlogits; /* views * shard_n * k */
    float *djsd;    /* views * shard_n * k: the JS term's gradient (AugMix) */
    double loss;
    int correct;
    int rc;
    cairn_error err;
} shard;

typedef struct run {
    const cairn_dataset *d;
    const cairn_train_params *p;
    shard *shards;
    const int *order; /* this epoch's permutation */
    int batch_start;  /* index into order of the current batch */
    int shard_n;
    int epoch;
    uint64_t step_global;
} run;

static void shard_work(void *ctx, size_t begin, size_t end, int tid)
{
    (void)tid;
    run *R = ctx;
    const cairn_dataset *d = R->d;
    size_t px = (size_t)d->c * d->h * d->w;
    const int views = R->p->augmix ? 3 : 1, sn = R->shard_n;
    for (size_t s = begin; s < end; s++) {
        shard *S = &R->shards[s];
        for (int i = 0; i < sn && !S->rc; i++) {
            int pos = R->batch_start + (int)s * sn + i;
            int idx = R->order[pos];
            const float *src = d->images + (size_t)idx * px;
            float *dst = S->x + (size_t)i * px;
            if (R->p->augment) {
                rng r = rng_at(R->p->seed, 2 + (uint64_t)R->epoch, (uint64_t)pos);
                augment_image(src, dst, d->h, d->w, R->p, &r);
            } else {
                memcpy(dst, src, px * sizeof(float));
            }
            S->y[i] = d->labels[idx];
            /* rows [sn, 2 sn) and [2 sn, 3 sn): two AugMix views of the clean row i */
            cairn_augmix_params ap = cairn_augmix_default_params();
            ap.severity = R->p->augmix_severity;
            for (int v = 1; v < views && !S->rc; v++) {
                rng r = rng_at(R->p->seed, 1000003ull * (uint64_t)v + (uint64_t)R->epoch,
                               (uint64_t)pos);
                S->rc = cairn_augmix_image(dst, S->x + ((size_t)v * sn + i) * px, d->h, d->w,
                                           &ap, rng_next(&r), &S->err);
            }
        }
        if (S->rc) continue;
        const float *logits;
        S->rc = cairn_nn_forward(S->m, S->x, views * sn, &logits, &S->err);
        if (S->rc) continue;
        int k = d->n_classes;
        float loss;
        S->rc = cairn_nn_cross_entropy(logits, S->y, NULL, sn, k, &loss, S->dlogits, &S->err);
        if (S->rc) continue;
        if (views > 1) {
            const float lam = R->p->jsd_lambda;
            loss += lam * cairn_nn_jsd_loss(logits, views, sn, k, S->djsd);
            memset(S->dlogits + (size_t)sn * k, 0, (size_t)(views - 1) * sn * k * sizeof(float));
            for (size_t j = 0; j < (size_t)views * sn * k; j++)
                S->dlogits[j] += lam * S->djsd[j];
        }
        S->loss = loss;
        S->correct = 0;
        for (int i = 0; i < R->shard_n; i++) {
            const float *row = logits + (size_t)i * k;
            int best = 0;
            for (int j = 1; j < k; j++)
                if (row[j] > row[best]) best = j;
            S->correct += best == S->y[i];
        }
        cairn_nn_zero_grad(S->m);
        S->rc = cairn_nn_backward(S->m, S->dlogits, NULL, &S->err);
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Peak lr, linear warm-up, cosine decay to 0 over the run (Loshchilov & Hutter 2017, SGDR
 * without restarts). */
static float lr_at(const cairn_train_params *p, uint64_t step, uint64_t total)
{
    if ((int64_t)step < p->warmup_steps) return p->lr * (float)(step + 1) / (float)p->warmup_steps;
    double t = (double)(step - (uint64_t)p->warmup_steps) /
               (double)(total > (uint64_t)p->warmup_steps ? total - p->warmup_steps : 1);
    return (float)(p->lr * 0.5 * (1.0 + cos(M_PI * t)));
}

static int check_params(const cairn_dataset *d, const cairn_train_params *p, cairn_error *err)
{
    if (!d || !d->images || d->n < 1 || d->c != 1 || d->h != 28 || d->w != 28 || d->n_classes != 10)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "train: the dataset must hold 1x28x28 images of "
                            "10 classes");
    if (p->epochs < 1 || p->shards < 1 || p->batch_size < p->shards ||
        p->batch_size % p->shards != 0)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "train: epochs %d, batch %d, shards %d (batch must be a positive "
                            "multiple of shards)",
                            p->epochs, p->batch_size, p->shards);
    if (!(p->lr > 0) || p->momentum < 0 || p->momentum >= 1 || p->weight_decay < 0 ||
        p->warmup_steps < 0 || p->shift_px < 0 || p->shift_px > 8 || p->erase_prob < 0 ||
        p->erase_prob > 1 || p->threads < 0 || p->limit < 0 || p->width < 0 ||
        !(p->jsd_lambda >= 0) || p->augmix_severity < 1 || p->augmix_severity > 10 ||
        p->start_epoch < 0 || p->start_epoch >= p->epochs || (p->start_epoch > 0 && !p->resume))
        return cairn_errorf(err, CAIRN_EINVAL, "train: a hyper-parameter is out of range");
    int n = p->limit > 0 && p->limit < d->n ? p->limit : d->n;
    if (n < p->batch_size)
        return cairn_errorf(err, CAIRN_EINVAL, "train: %d images, fewer than one batch of %d", n,
                            p->batch_size);
    return 0;
}

/* Loads the weights of a checkpoint (same architecture and width) into m. */
static int load_resume(cairn_nn_model *m, const char *path, cairn_error *err)
{
    cairn_nn_model *c;
    int rc = cairn_nn_load(&c, path, err);
    if (rc) return cairn_error_prefix(err, "train: resume from %s", path), rc;
    int np = cairn_nn_param_count(m);
    if (cairn_nn_param_count(c) != np) rc = CAIRN_EINVAL;
    for (int i = 0; !rc && i < np; i++) {
        cairn_nn_param *a = cairn_nn_param_at(m, i), *b = cairn_nn_param_at(c, i);
        if (strcmp(a->name, b->name) || a->value.numel != b->value.numel)
            rc = CAIRN_EINVAL;
        else
            memcpy(a->value.data, b->value.data, a->value.numel * sizeof(float));
    }
    cairn_nn_model_free(c);
    if (rc)
        return cairn_errorf(err, rc, "train: %s is not a checkpoint of this architecture", path);
    return 0;
}

/* The master's weights after epochs_done epochs, with enough metadata to resume. */
static int save_checkpoint(const cairn_nn_model *m, cairn_model_arch a, const cairn_train_params *p,
                           int epochs_done, cairn_error *err)
{
    cairn_gguf_writer *w;
    int rc = cairn_gguf_writer_new(&w, err);
    if (rc) return rc;
    rc = cairn_nn_save_to_writer(m, w, err);
    if (!rc) rc = cairn_gguf_writer_add_str(w, "cairn.model.arch", cairn_model_arch_name(a), err);
    if (!rc) rc = cairn_gguf_writer_add_u64(w, "cairn.train.seed", p->seed, err);
    if (!rc) rc = cairn_gguf_writer_add_u32(w, "cairn.train.epochs", (uint32_t)p->epochs, err);
    if (!rc)
        rc = cairn_gguf_writer_add_u32(w, "cairn.train.epochs_done", (uint32_t)epochs_done, err);
    if (!rc) rc = cairn_gguf_writer_write_file(w, p->checkpoint, err);
    cairn_gguf_writer_free(w);
    return rc;
}

/* Copies every named tensor (parameters and running statistics) of src into dst. */
static void copy_values(cairn_nn_model *dst, cairn_nn_model *src)
{
    int np = cairn_nn_param_count(src);
    for (int i = 0; i < np; i++) {
        cairn_nn_param *a = cairn_nn_param_at(dst, i), *b = cairn_nn_param_at(src, i);
        memcpy(a->value.data, b->value.data, b->value.numel * sizeof(float));
    }
}

int cairn_train_model(cairn_model_arch a, const cairn_dataset *d, const cairn_train_params *p,
                      cairn_nn_model **out, cairn_train_result *res, cairn_error *err)
{
    *out = NULL;
    int rc = check_params(d, p, err);
    if (rc) return rc;
    /* Parallelism comes from shards; a multi-threaded BLAS inside each would oversubscribe the
     * cores and make sums depend on the thread count. */
    openblas_set_num_threads(1);

    const int S_n = p->shards, shard_n = p->batch_size / p->shards, k = d->n_classes;
    const int n = p->limit > 0 && p->limit < d->n ? p->limit : d->n;
    const int steps = n / p->batch_size; /* the remainder of each epoch is dropped */
    const uint64_t total = (uint64_t)steps * p->epochs;
    const uint64_t first_step = (uint64_t)steps * p->start_epoch; /* resumed runs skip these */
    const size_t px = (size_t)d->c * d->h * d->w;

    shard *shards = calloc((size_t)S_n, sizeof(shard));
    int *order = malloc((size_t)n * sizeof(int));
    cairn_pool *pool = NULL;
    cairn_nn_sgd *opt = NULL;
    if (!shards || !order) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "train: out of memory");
        goto done;
    }
    const int views = p->augmix ? 3 : 1;
    cairn_nn_model_params mp = cairn_nn_model_default_params();
    mp.max_batch = views * shard_n;
    mp.training = 1;
    mp.sgemm = cairn_nn_sgemm_blas;
    for (int s = 0; s < S_n; s++) {
        shard *S = &shards[s];
        if ((rc = cairn_model_build_width(a, p->width, &S->m, err)) != 0) goto done;
        if ((rc = cairn_nn_model_prepare(S->m, &mp, err)) != 0) goto done;
        cairn_nn_set_bn_mode(S->m, CAIRN_NN_BN_TRAIN);
        S->x = malloc((size_t)views * shard_n * px * sizeof(float));
        S->y = malloc((size_t)shard_n * sizeof(int));
        S->dlogits = malloc((size_t)views * shard_n * k * sizeof(float));
        S->djsd = malloc((size_t)views * shard_n * k * sizeof(float));
        if (!S->x || !S->y || !S->dlogits || !S->djsd) {
            rc = cairn_errorf(err, CAIRN_ENOMEM, "train: out of memory");
            goto done;
        }
    }
    cairn_nn_model *master = shards[0].m; /* shard 0 doubles as the master copy */
    cairn_nn_model_init_params(master, p->seed);
    if (p->resume && (rc = load_resume(master, p->resume, err)) != 0) goto done;
    for (int s = 1; s < S_n; s++)
        copy_values(shards[s].m, master);

    cairn_pool_params pp = cairn_pool_default_params();
    if (p->threads > 0) pp.n_threads = p->threads;
    if (pp.n_threads > S_n) pp.n_threads = S_n;
    if ((rc = cairn_pool_open(&pool, &pp, err)) != 0) goto done;

    if ((rc = cairn_nn_sgd_new(&opt, master, err)) != 0) goto done;
    cairn_nn_sgd_params op = cairn_nn_sgd_default_params();
    op.lr = p->lr;
    op.momentum = p->momentum;
    op.weight_decay = p->weight_decay;
    if ((rc = cairn_nn_sgd_add_group(opt, cairn_nn_pred_all, NULL, &op, err)) < 0) goto done;
    rc = 0;

    run R = {.d = d, .p = p, .shards = shards, .order = order, .shard_n = shard_n};
    const int np = cairn_nn_param_count(master);
    double t0 = now_s(), ep_loss = 0;
    long ep_correct = 0, ep_seen = 0;
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int ep = 0; ep < p->epochs; ep++) {
        /* Fisher–Yates with a generator keyed by (seed, epoch). */
        rng r = rng_at(p->seed, 1, (uint64_t)ep);
        for (int i = n - 1; i > 0; i--) {
            int j = rng_int(&r, i + 1), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        if (ep < p->start_epoch) { /* done by the run being resumed: replay its shuffle only */
            R.step_global += (uint64_t)steps;
            continue;
        }
        R.epoch = ep;
        ep_loss = 0;
        ep_correct = ep_seen = 0;
        for (int st = 0; st < steps; st++) {
            R.batch_start = st * p->batch_size;
            cairn_pool_parallel_for(pool, (size_t)S_n, shard_work, &R);
            for (int s = 0; s < S_n; s++) {
                if (shards[s].rc) {
                    rc = shards[s].rc;
                    if (err) *err = shards[s].err;
                    goto done;
                }
                ep_loss += shards[s].loss * shard_n;
                ep_correct += shards[s].correct;
                ep_seen += shard_n;
            }
            /* Average gradients and running statistics into the master, in shard order. */
            if (S_n > 1) {
                float inv = 1.0f / (float)S_n;
                for (int i = 0; i < np; i++) {
                    cairn_nn_param *pm = cairn_nn_param_at(master, i);
                    size_t ne = pm->value.numel;
                    float *acc = pm->trainable ? pm->grad : pm->value.data;
                    if (!acc) continue;
                    for (int s = 1; s < S_n; s++) {
                        cairn_nn_param *ps = cairn_nn_param_at(shards[s].m, i);
                        const float *src = pm->trainable ? ps->grad : ps->value.data;
                        for (size_t e = 0; e < ne; e++)
                            acc[e] += src[e];
                    }
                    for (size_t e = 0; e < ne; e++)
                        acc[e] *= inv;
                }
            }
            float lr = lr_at(p, R.step_global, total);
            cairn_nn_sgd_set_lr(opt, 0, lr);
            cairn_nn_sgd_step(opt);
            for (int s = 1; s < S_n; s++)
                copy_values(shards[s].m, master);
            R.step_global++;

            int last = st == steps - 1;
            if (p->progress &&
                (last || (p->progress_every > 0 && (st + 1) % p->progress_every == 0))) {
                double el = now_s() - t0;
                cairn_train_progress pr = {
                    .epoch = ep + 1,
                    .epochs = p->epochs,
                    .step = st + 1,
                    .steps = steps,
                    .loss = ep_loss / ep_seen,
                    .accuracy = (double)ep_correct / ep_seen,
                    .images_per_s = (double)(R.step_global - first_step) * p->batch_size /
                                    (el > 0 ? el : 1e-9),
                    .eta_s = el / (double)(R.step_global - first_step) *
                             (double)(total - R.step_global),
                    .lr = lr,
                    .epoch_done = last};
                p->progress(&pr, p->progress_ctx);
            }
        }
        if (p->checkpoint && (rc = save_checkpoint(master, a, p, ep + 1, err)) != 0) goto done;
    }
    if (res) {
        res->train_loss = ep_loss / (ep_seen ? ep_seen : 1);
        res->train_accuracy = (double)ep_correct / (ep_seen ? ep_seen : 1);
        res->seconds = now_s() - t0;
    }
    /* Hand back the master, prepared for inference. */
    cairn_nn_model_params ip = cairn_nn_model_default_params();
    ip.max_batch = EVAL_BATCH;
    ip.sgemm = cairn_nn_sgemm_blas;
    if ((rc = cairn_nn_model_prepare(master, &ip, err)) != 0) goto done;
    cairn_nn_set_bn_mode(master, CAIRN_NN_BN_EVAL);
    *out = master;
    shards[0].m = NULL;

done:
    cairn_nn_sgd_free(opt);
    cairn_pool_close(pool);
    if (shards) {
        for (int s = 0; s < S_n; s++) {
            cairn_nn_model_free(shards[s].m);
            free(shards[s].x);
            free(shards[s].y);
            free(shards[s].dlogits);
            free(shards[s].djsd);
        }
    }
    free(shards);
    free(order);
    return rc;
}

/* ---- Evaluation and saving ------------------------------------------------------------------- */

int cairn_eval_accuracy(cairn_nn_model *m, const cairn_dataset *d, double *acc, cairn_error *err)
{
    *acc = 0;
    int c, h, w;
    cairn_nn_input_shape(m, &c, &h, &w);
    if (!d || d->n < 1 || d->c != c || d->h != h || d->w != w)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "eval: dataset images do not match the model "
                            "input %dx%dx%d",
                            c, h, w);
    if ((int)cairn_nn_output_size(m) != d->n_classes)
        return cairn_errorf(err, CAIRN_EINVAL, "eval: model has %zu outputs, dataset %d classes",
                            cairn_nn_output_size(m), d->n_classes);
    cairn_nn_model_params ip = cairn_nn_model_default_params();
    ip.max_batch = EVAL_BATCH;
    ip.sgemm = cairn_nn_sgemm_blas;
    int rc = cairn_nn_model_prepare(m, &ip, err);
    if (rc) return rc;
    cairn_nn_bn_mode mode = cairn_nn_get_bn_mode(m);
    cairn_nn_set_bn_mode(m, CAIRN_NN_BN_EVAL);
    size_t px = (size_t)c * h * w;
    int k = d->n_classes;
    long correct = 0;
    for (int b = 0; b < d->n && !rc; b += EVAL_BATCH) {
        int nb = d->n - b < EVAL_BATCH ? d->n - b : EVAL_BATCH;
        const float *logits;
        rc = cairn_nn_forward(m, d->images + (size_t)b * px, nb, &logits, err);
        for (int i = 0; !rc && i < nb; i++) {
            const float *row = logits + (size_t)i * k;
            int best = 0;
            for (int j = 1; j < k; j++)
                if (row[j] > row[best]) best = j;
            correct += best == d->labels[b + i];
        }
    }
    cairn_nn_set_bn_mode(m, mode);
    if (!rc) *acc = (double)correct / d->n;
    return rc;
}

int cairn_train_save(const cairn_nn_model *m, cairn_model_arch a, const cairn_train_params *p,
                     const cairn_train_result *res, double test_accuracy, const char *path,
                     cairn_error *err)
{
    cairn_gguf_writer *w;
    int rc = cairn_gguf_writer_new(&w, err);
    if (rc) return rc;
    rc = cairn_nn_save_to_writer(m, w, err);
    if (!rc) rc = cairn_gguf_writer_add_str(w, "cairn.model.arch", cairn_model_arch_name(a), err);
    if (!rc) rc = cairn_gguf_writer_add_str(w, "cairn.train.dataset", "fashion-mnist", err);
    if (!rc) rc = cairn_gguf_writer_add_u64(w, "cairn.train.seed", p->seed, err);
    if (!rc) rc = cairn_gguf_writer_add_u32(w, "cairn.train.epochs", (uint32_t)p->epochs, err);
    if (!rc)
        rc = cairn_gguf_writer_add_u32(w, "cairn.train.batch_size", (uint32_t)p->batch_size, err);
    if (!rc) rc = cairn_gguf_writer_add_u32(w, "cairn.train.shards", (uint32_t)p->shards, err);
    if (!rc) rc = cairn_gguf_writer_add_f32(w, "cairn.train.lr", p->lr, err);
    if (!rc) rc = cairn_gguf_writer_add_bool(w, "cairn.train.augment", p->augment != 0, err);
    if (!rc) rc = cairn_gguf_writer_add_bool(w, "cairn.train.augmix", p->augmix != 0, err);
    if (!rc && p->augmix)
        rc = cairn_gguf_writer_add_f32(w, "cairn.train.jsd_lambda", p->jsd_lambda, err);
    if (!rc)
        rc = cairn_gguf_writer_add_f32(w, "cairn.train.accuracy",
                                       res ? (float)res->train_accuracy : -1.0f, err);
    if (!rc)
        rc = cairn_gguf_writer_add_f32(w, "cairn.train.test_accuracy", (float)test_accuracy, err);
    if (!rc) rc = cairn_gguf_writer_write_file(w, path, err);
    cairn_gguf_writer_free(w);
    return rc;
}
