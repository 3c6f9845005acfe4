/*
 * adapt/cema.c — the cloud half of CEMA: replay, foundation entropy minimisation, distillation
 * into the edge model's batchnorm affine parameters, bundles (adapt/cema.h).
 */
#include "adapt/cema.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "adapt/nn/nn_gguf.h"
#include "adapt/nn/nn_train.h"

struct cairn_cema_cloud {
    cairn_cema_params p;
    char model_name[CAIRN_EDGE_STR_MAX];
    uint8_t base_sha[CAIRN_EDGE_SHA256_LEN];
    cairn_nn_model *edge, *found;
    cairn_nn_sgd *opt_edge, *opt_found;
    size_t dim; /* C*H*W */
    int k;      /* classes */

    /* Pending uploads: a ring of pending_capacity images, and the counters' snapshot, guarded
     * by qlock. */
    pthread_mutex_t qlock;
    float *pending;
    size_t p_head, p_count;
    uint64_t received, dropped;
    /* What cairn_cema_cloud_counters reports of the mlock side, copied at the end of each step
     * and bundle, so that a reader (an HTTP thread) never waits for a step: the adaptation
     * thread runs at idle priority and a step can take long on a loaded machine. */
    size_t snap_replay;
    uint64_t snap_steps, snap_version;

    /* Everything below is guarded by mlock (step, bundle, accessors). */
    pthread_mutex_t mlock;
    float *replay; /* ring of replay_capacity images */
    size_t r_head, r_count;
    int *r_idx; /* scratch permutation for sampling without replacement */
    uint64_t rng;
    uint64_t steps, version;

    /* Step scratch, sized for batch_size. */
    float *x;
    float *lf, *le; /* logits of foundation and edge */
    float *hf, *he; /* entropies */
    float *w, *s;   /* foundation EM weights; distillation weights */
    int *pseudo;
    float *g, *gtmp; /* dlogits accumulators */
    float *zf, *ze;  /* logits / T of foundation and edge (distillation at temperature T) */
};

cairn_cema_params cairn_cema_default_params(void)
{
    cairn_cema_params p = {
        .model_name = "edge",
        .replay_capacity = 1024,
        .pending_capacity = 4096,
        .batch_size = 64,
        .new_per_step = 32,
        .lr_foundation = 0.001f,
        .lr_edge = 0.01f,
        .momentum = 0.9f,
        .e0_fraction = 0.4f,
        .w_kl = 1.0f,
        .w_ent = 0.2f,
        .w_ce = 0.5f,
        .temperature = 1.0f,
        .foundation_steps = 1,
        .edge_steps = 1,
        .adapt_foundation = 1,
        .seed = 1,
    };
    return p;
}

/* splitmix64: reproducible replay sampling from the seed. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int prepare_for_adaptation(cairn_nn_model *m, const cairn_cema_params *p, float lr,
                                  cairn_nn_sgd **opt, cairn_error *err)
{
    cairn_nn_model_params mp = cairn_nn_model_default_params();
    mp.max_batch = p->batch_size;
    mp.training = 1;
    mp.sgemm = cairn_nn_sgemm_blas;
    int rc = cairn_nn_model_prepare(m, &mp, err);
    if (rc) return rc;
    /* Gradients only for BN affine: backward then skips the conv/linear weight products. */
    cairn_nn_set_requires_grad(m, cairn_nn_pred_all, NULL, 0);
    if (cairn_nn_set_requires_grad(m, cairn_nn_pred_norm_affine, NULL, 1) == 0)
        return cairn_errorf(err, CAIRN_EINVAL, "cema: the model has no batchnorm to adapt");
    if ((rc = cairn_nn_sgd_new(opt, m, err))) return rc;
    cairn_nn_sgd_params sp = cairn_nn_sgd_default_params();
    sp.lr = lr;
    sp.momentum = p->momentum;
    sp.weight_decay = 0;
    rc = cairn_nn_sgd_add_group(*opt, cairn_nn_pred_norm_affine, NULL, &sp, err);
    return rc < 0 ? rc : 0;
}

void cairn_cema_cloud_close(cairn_cema_cloud *c)
{
    if (!c) return;
    cairn_nn_sgd_free(c->opt_edge);
    cairn_nn_sgd_free(c->opt_found);
    cairn_nn_model_free(c->edge);
    cairn_nn_model_free(c->found);
    pthread_mutex_destroy(&c->qlock);
    pthread_mutex_destroy(&c->mlock);
    free(c->pending);
    free(c->replay);
    free(c->r_idx);
    free(c->x);
    free(c->lf);
    free(c->le);
    free(c->hf);
    free(c->he);
    free(c->w);
    free(c->s);
    free(c->pseudo);
    free(c->g);
    free(c->gtmp);
    free(c->zf);
    free(c->ze);
    free(c);
}

int cairn_cema_cloud_open(cairn_cema_cloud **out, const char *edge_model_path,
                          const char *foundation_model_path, const cairn_cema_params *p,
                          cairn_error *err)
{
    *out = NULL;
    if (p->batch_size < 2 || p->new_per_step < 1 || p->new_per_step > p->batch_size ||
        p->replay_capacity < 0 || p->pending_capacity < 1 || !(p->lr_edge > 0) ||
        !(p->lr_foundation > 0) || !(p->momentum >= 0 && p->momentum < 1) ||
        !(p->e0_fraction > 0) || !(p->w_kl >= 0) || !(p->w_ent >= 0) || !(p->w_ce >= 0) ||
        !(p->temperature > 0 && p->temperature <= 100) || p->foundation_steps < 1 ||
        p->foundation_steps > 64 || p->edge_steps < 1 || p->edge_steps > 64)
        return cairn_errorf(err, CAIRN_EINVAL, "cema: parameters out of range");
    const char *name = p->model_name ? p->model_name : "edge";
    if (!*name || strlen(name) >= CAIRN_EDGE_STR_MAX)
        return cairn_errorf(err, CAIRN_EINVAL, "cema: model name empty or too long");

    cairn_cema_cloud *c = calloc(1, sizeof *c);
    if (!c) return cairn_errorf(err, CAIRN_ENOMEM, "cema");
    pthread_mutex_init(&c->qlock, NULL);
    pthread_mutex_init(&c->mlock, NULL);
    c->p = *p;
    snprintf(c->model_name, sizeof c->model_name, "%s", name);
    c->p.model_name = c->model_name;
    c->rng = p->seed;

    int rc;
    if ((rc = cairn_bundle_sha256_file(edge_model_path, c->base_sha, err)) ||
        (rc = cairn_nn_load(&c->edge, edge_model_path, err)) ||
        (rc = cairn_nn_load(&c->found, foundation_model_path, err)))
        goto fail;
    int ec, eh, ew, fc, fh, fw;
    cairn_nn_input_shape(c->edge, &ec, &eh, &ew);
    cairn_nn_input_shape(c->found, &fc, &fh, &fw);
    if (ec != fc || eh != fh || ew != fw ||
        cairn_nn_output_size(c->edge) != cairn_nn_output_size(c->found) ||
        cairn_nn_output_size(c->edge) < 2) {
        rc = cairn_errorf(err, CAIRN_EINVAL,
                          "cema: edge (%dx%dx%d -> %zu) and foundation "
                          "(%dx%dx%d -> %zu) models do not match",
                          ec, eh, ew, cairn_nn_output_size(c->edge), fc, fh, fw,
                          cairn_nn_output_size(c->found));
        goto fail;
    }
    c->dim = (size_t)ec * eh * ew;
    c->k = (int)cairn_nn_output_size(c->edge);
    if ((rc = prepare_for_adaptation(c->edge, p, p->lr_edge, &c->opt_edge, err)) ||
        (rc = prepare_for_adaptation(c->found, p, p->lr_foundation, &c->opt_found, err)))
        goto fail;

    const size_t B = (size_t)p->batch_size, K = (size_t)c->k;
    c->pending = malloc((size_t)p->pending_capacity * c->dim * sizeof(float));
    c->replay = malloc(((size_t)p->replay_capacity + 1) * c->dim * sizeof(float));
    c->r_idx = malloc(((size_t)p->replay_capacity + 1) * sizeof(int));
    c->x = malloc(B * c->dim * sizeof(float));
    c->lf = malloc(B * K * sizeof(float));
    c->le = malloc(B * K * sizeof(float));
    c->hf = malloc(B * sizeof(float));
    c->he = malloc(B * sizeof(float));
    c->w = malloc(B * sizeof(float));
    c->s = malloc(B * sizeof(float));
    c->pseudo = malloc(B * sizeof(int));
    c->g = malloc(B * K * sizeof(float));
    c->gtmp = malloc(B * K * sizeof(float));
    c->zf = malloc(B * K * sizeof(float));
    c->ze = malloc(B * K * sizeof(float));
    if (!c->pending || !c->replay || !c->r_idx || !c->x || !c->lf || !c->le || !c->hf || !c->he ||
        !c->w || !c->s || !c->pseudo || !c->g || !c->gtmp || !c->zf || !c->ze) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "cema: buffers");
        goto fail;
    }
    *out = c;
    return 0;
fail:
    cairn_cema_cloud_close(c);
    return rc;
}

/* ---- Uploads ------------------------------------------------------------------------------ */

int cairn_cema_cloud_add_samples(cairn_cema_cloud *c, const float *images, int n, cairn_error *err)
{
    if (n < 0) return cairn_errorf(err, CAIRN_EINVAL, "cema: %d samples", n);
    for (size_t i = 0; i < (size_t)n * c->dim; i++)
        if (!isfinite(images[i]))
            return cairn_errorf(err, CAIRN_EFORMAT, "cema: sample %zu has a non-finite value",
                                i / c->dim);
    const size_t cap = (size_t)c->p.pending_capacity;
    pthread_mutex_lock(&c->qlock);
    for (int i = 0; i < n; i++) {
        if (c->p_count == cap) { /* full: drop the oldest */
            c->p_head = (c->p_head + 1) % cap;
            c->p_count--;
            c->dropped++;
        }
        size_t slot = (c->p_head + c->p_count) % cap;
        memcpy(c->pending + slot * c->dim, images + (size_t)i * c->dim, c->dim * sizeof(float));
        c->p_count++;
    }
    c->received += (uint64_t)n;
    pthread_mutex_unlock(&c->qlock);
    return 0;
}

int cairn_cema_cloud_add_batch(cairn_cema_cloud *c, const cairn_edge_batch *b, cairn_error *err)
{
    if ((size_t)b->c * b->h * b->w != c->dim || b->c < 1) {
        int mc, mh, mw;
        cairn_nn_input_shape(c->edge, &mc, &mh, &mw);
        return cairn_errorf(err, CAIRN_EINVAL,
                            "cema: images are %dx%dx%d, the model takes "
                            "%dx%dx%d",
                            b->c, b->h, b->w, mc, mh, mw);
    }
    if (b->k != c->k)
        return cairn_errorf(err, CAIRN_EINVAL, "cema: %d classes, the model has %d", b->k, c->k);
    return cairn_cema_cloud_add_samples(c, b->images, b->n, err);
}

/* ---- One step ----------------------------------------------------------------------------- */

/* Fills c->x with the step's batch; returns its size and the split. replay_only: no pending
 * sample, the whole batch from the replay buffer. Caller holds mlock. */
static int assemble_batch(cairn_cema_cloud *c, int replay_only, int *n_new, int *n_rep)
{
    const size_t B = (size_t)c->p.batch_size, D = c->dim;
    size_t nn = 0;
    pthread_mutex_lock(&c->qlock);
    const size_t pcap = (size_t)c->p.pending_capacity;
    size_t avail = replay_only ? 0 : c->p_count;
    nn = avail < (size_t)c->p.new_per_step ? avail : (size_t)c->p.new_per_step;
    size_t nr = B - nn < c->r_count ? B - nn : c->r_count;
    if ((nn == 0 && !replay_only) || nn + nr < 2) {
        pthread_mutex_unlock(&c->qlock);
        return 0;
    }
    for (size_t i = 0; i < nn; i++) {
        memcpy(c->x + i * D, c->pending + ((c->p_head + i) % pcap) * D, D * sizeof(float));
    }
    c->p_head = (c->p_head + nn) % pcap;
    c->p_count -= nn;
    pthread_mutex_unlock(&c->qlock);

    /* Replayed samples: a partial Fisher-Yates shuffle of the buffer's indices. */
    for (size_t i = 0; i < c->r_count; i++)
        c->r_idx[i] = (int)i;
    for (size_t i = 0; i < nr; i++) {
        size_t j = i + (size_t)(next_rand(&c->rng) % (c->r_count - i));
        int t = c->r_idx[i];
        c->r_idx[i] = c->r_idx[j];
        c->r_idx[j] = t;
        memcpy(c->x + (nn + i) * D, c->replay + (size_t)c->r_idx[i] * D, D * sizeof(float));
    }
    *n_new = (int)nn;
    *n_rep = (int)nr;
    return (int)(nn + nr);
}

/* The new samples of this step enter the replay buffer (FIFO: the oldest leave). */
static void push_replay(cairn_cema_cloud *c, int n_new)
{
    const size_t cap = (size_t)c->p.replay_capacity, D = c->dim;
    if (cap == 0) return;
    for (int i = 0; i < n_new; i++) {
        size_t slot;
        if (c->r_count < cap) {
            slot = (c->r_head + c->r_count) % cap;
            c->r_count++;
        } else {
            slot = c->r_head;
            c->r_head = (c->r_head + 1) % cap;
        }
        memcpy(c->replay + slot * D, c->x + (size_t)i * D, D * sizeof(float));
    }
}

static int argmax(const float *v, int k)
{
    int best = 0;
    for (int j = 1; j < k; j++)
        if (v[j] > v[best]) best = j;
    return best;
}

static float mean(const float *v, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += v[i];
    return n ? (float)(s / n) : 0.0f;
}

/* Copies the mlock side's counters for readers (mlock held). */
static void publish_counters(cairn_cema_cloud *c)
{
    pthread_mutex_lock(&c->qlock);
    c->snap_replay = c->r_count;
    c->snap_steps = c->steps;
    c->snap_version = c->version;
    pthread_mutex_unlock(&c->qlock);
}

static int step(cairn_cema_cloud *c, int replay_only, cairn_cema_step_stats *stats,
                cairn_error *err)
{
    pthread_mutex_lock(&c->mlock);
    int n_new = 0, n_rep = 0, rc = 0;
    const int n = assemble_batch(c, replay_only, &n_new, &n_rep);
    if (n == 0) goto done;
    const int K = c->k;
    const size_t NK = (size_t)n * K;
    const float *out;

    /* 2. Foundation: batch statistics, entropy minimisation on its reliable samples. The last
     * forward's outputs (before its update) teach the edge model. */
    const float e0 = c->p.e0_fraction * logf((float)K);
    cairn_nn_set_bn_mode(c->found, CAIRN_NN_BN_BATCH);
    for (int fs = 0; fs < c->p.foundation_steps; fs++) {
        if ((rc = cairn_nn_forward(c->found, c->x, n, &out, err))) goto done;
        memcpy(c->lf, out, NK * sizeof(float));
        cairn_nn_entropy(c->lf, n, K, c->hf);
        int reliable = 0;
        for (int i = 0; i < n; i++) {
            c->w[i] = c->hf[i] < e0 ? expf(e0 - c->hf[i]) : 0.0f;
            reliable += c->hf[i] < e0;
        }
        if (!c->p.adapt_foundation || reliable == 0) break; /* nothing would move */
        cairn_nn_zero_grad(c->found);
        cairn_nn_entropy_loss(c->lf, c->w, n, K, c->g);
        if ((rc = cairn_nn_backward(c->found, c->g, NULL, err))) goto done;
        cairn_nn_sgd_step(c->opt_found);
    }

    /* 3. Edge: distillation from the teacher's outputs. */
    const float T = c->p.temperature;
    double ssum = 0;
    for (int i = 0; i < n; i++) {
        c->s[i] = expf(-c->hf[i]);
        ssum += c->s[i];
        c->pseudo[i] = argmax(c->lf + (size_t)i * K, K);
    }
    for (int i = 0; i < n; i++)
        c->s[i] = (float)(c->s[i] * n / ssum);
    for (size_t j = 0; j < NK; j++)
        c->zf[j] = c->lf[j] / T;
    float l_kl = 0, l_ent = 0, l_ce = 0;
    cairn_nn_set_bn_mode(c->edge, CAIRN_NN_BN_TRAIN);
    for (int es = 0; es < c->p.edge_steps; es++) {
        if ((rc = cairn_nn_forward(c->edge, c->x, n, &out, err))) goto done;
        if (es == 0) { /* the step's statistics: the edge model as the batch found it */
            memcpy(c->le, out, NK * sizeof(float));
            cairn_nn_entropy(c->le, n, K, c->he);
        }
        /* d(T^2 KL(z_f/T, z_e/T))/dz_e = T * dKL/d(z_e/T) */
        for (size_t j = 0; j < NK; j++)
            c->ze[j] = out[j] / T;
        float kl = T * T * cairn_nn_kl_div(c->zf, c->ze, c->s, n, K, NULL, c->g);
        for (size_t j = 0; j < NK; j++)
            c->g[j] *= c->p.w_kl * T;
        float ent = cairn_nn_entropy_loss(out, NULL, n, K, c->gtmp);
        for (size_t j = 0; j < NK; j++)
            c->g[j] += c->p.w_ent * c->gtmp[j];
        float ce = 0;
        if ((rc = cairn_nn_cross_entropy(out, c->pseudo, c->s, n, K, &ce, c->gtmp, err))) goto done;
        for (size_t j = 0; j < NK; j++)
            c->g[j] += c->p.w_ce * c->gtmp[j];
        if (es == 0) l_kl = kl, l_ent = ent, l_ce = ce;
        cairn_nn_zero_grad(c->edge);
        if ((rc = cairn_nn_backward(c->edge, c->g, NULL, err))) goto done;
        cairn_nn_sgd_step(c->opt_edge);
    }

    push_replay(c, n_new);
    c->steps++;
    if (stats) {
        int agree = 0;
        for (int i = 0; i < n; i++)
            agree += argmax(c->le + (size_t)i * K, K) == c->pseudo[i];
        stats->n_new = n_new;
        stats->n_replay = n_rep;
        stats->foundation_entropy = mean(c->hf, n);
        stats->edge_entropy = mean(c->he, n);
        stats->loss_kl = l_kl;
        stats->loss_ent = l_ent;
        stats->loss_ce = l_ce;
        stats->agreement = (float)agree / (float)n;
    }
    rc = n;
    publish_counters(c);
done:
    pthread_mutex_unlock(&c->mlock);
    return rc;
}

int cairn_cema_cloud_step(cairn_cema_cloud *c, cairn_cema_step_stats *stats, cairn_error *err)
{
    return step(c, 0, stats, err);
}

int cairn_cema_cloud_replay_step(cairn_cema_cloud *c, cairn_cema_step_stats *stats,
                                 cairn_error *err)
{
    return step(c, 1, stats, err);
}

/* ---- Bundles and accessors --------------------------------------------------------------- */

int cairn_cema_cloud_bundle(cairn_cema_cloud *c, const cairn_bundle_key *priv, uint8_t **out,
                            size_t *len, uint64_t *version, cairn_error *err)
{
    pthread_mutex_lock(&c->mlock);
    cairn_bundle_build_params bp = cairn_bundle_default_build_params();
    bp.model_name = c->model_name;
    memcpy(bp.base_sha256, c->base_sha, sizeof bp.base_sha256);
    bp.version = c->version + 1;
    int rc = cairn_bundle_build(c->edge, &bp, priv, out, len, err);
    if (!rc) {
        c->version = bp.version;
        if (version) *version = bp.version;
        publish_counters(c);
    }
    pthread_mutex_unlock(&c->mlock);
    return rc;
}

void cairn_cema_cloud_counters(cairn_cema_cloud *c, cairn_cema_counters *out)
{
    pthread_mutex_lock(&c->qlock);
    out->replay = c->snap_replay;
    out->steps = c->snap_steps;
    out->version = c->snap_version;
    out->received = c->received;
    out->dropped = c->dropped;
    out->pending = c->p_count;
    pthread_mutex_unlock(&c->qlock);
}

void cairn_cema_cloud_base_sha256(const cairn_cema_cloud *c, uint8_t out[CAIRN_EDGE_SHA256_LEN])
{
    memcpy(out, c->base_sha, CAIRN_EDGE_SHA256_LEN);
}

cairn_nn_model *cairn_cema_cloud_edge_model(cairn_cema_cloud *c)
{
    return c->edge;
}
cairn_nn_model *cairn_cema_cloud_foundation_model(cairn_cema_cloud *c)
{
    return c->found;
}
