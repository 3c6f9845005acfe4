/*
 * adapt/nn/optim.c — SGD with momentum and weight decay over parameter groups (training half).
 * Each group owns the momentum buffers of its parameters, allocated when the group is added, so
 * a step allocates nothing.
 */
#include "adapt/nn/nn_internal.h"
#include "adapt/nn/nn_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    cairn_nn_sgd_params hp;
    int n;       /* parameters in the group */
    int *idx;    /* their indices in the model */
    float **vel; /* their momentum buffers (NULL while momentum is 0) */
} sgd_group;

struct cairn_nn_sgd {
    cairn_nn_model *m;
    sgd_group *groups;
    int n_groups;
    unsigned char *claimed; /* per model param: already in a group */
};

int cairn_nn_pred_all(const cairn_nn_param *p, void *ctx)
{
    (void)ctx;
    return p->trainable;
}

int cairn_nn_pred_norm_affine(const cairn_nn_param *p, void *ctx)
{
    (void)ctx;
    return p->kind == CAIRN_NN_NORM_WEIGHT || p->kind == CAIRN_NN_NORM_BIAS;
}

cairn_nn_sgd_params cairn_nn_sgd_default_params(void)
{
    return (cairn_nn_sgd_params){.lr = 0.01f, .momentum = 0.0f, .weight_decay = 0.0f};
}

int cairn_nn_sgd_new(cairn_nn_sgd **out, cairn_nn_model *m, cairn_error *err)
{
    *out = NULL;
    if (!m->prepared || !m->training)
        return cairn_errorf(err, CAIRN_ESTATE, "sgd: model not prepared for training");
    cairn_nn_sgd *o = calloc(1, sizeof(*o));
    if (o) o->claimed = calloc((size_t)m->n_params + 1, 1);
    if (!o || !o->claimed) {
        free(o);
        return cairn_errorf(err, CAIRN_ENOMEM, "sgd: out of memory");
    }
    o->m = m;
    *out = o;
    return 0;
}

static void free_group(sgd_group *g)
{
    if (g->vel)
        for (int i = 0; i < g->n; i++)
            free(g->vel[i]);
    free(g->vel);
    free(g->idx);
}

void cairn_nn_sgd_free(cairn_nn_sgd *o)
{
    if (!o) return;
    for (int i = 0; i < o->n_groups; i++)
        free_group(&o->groups[i]);
    free(o->groups);
    free(o->claimed);
    free(o);
}

int cairn_nn_sgd_add_group(cairn_nn_sgd *o, cairn_nn_param_pred pred, void *ctx,
                           const cairn_nn_sgd_params *p, cairn_error *err)
{
    if (!(p->lr >= 0) || !isfinite(p->lr) || !(p->momentum >= 0 && p->momentum < 1) ||
        !(p->weight_decay >= 0) || !isfinite(p->weight_decay))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "sgd: lr %g, momentum %g, weight_decay %g: need lr >= 0, "
                            "0 <= momentum < 1, weight_decay >= 0",
                            (double)p->lr, (double)p->momentum, (double)p->weight_decay);
    cairn_nn_model *m = o->m;
    sgd_group g = {.hp = *p};
    g.idx = calloc((size_t)m->n_params + 1, sizeof(int));
    g.vel = calloc((size_t)m->n_params + 1, sizeof(float *));
    if (!g.idx || !g.vel) goto oom;
    for (int i = 0; i < m->n_params; i++) {
        const cairn_nn_param *prm = &m->params[i];
        if (o->claimed[i] || !prm->trainable || !prm->grad || !pred(prm, ctx)) continue;
        g.vel[g.n] = calloc(prm->value.numel, sizeof(float));
        if (!g.vel[g.n]) goto oom;
        g.idx[g.n++] = i;
    }
    sgd_group *ng = realloc(o->groups, (size_t)(o->n_groups + 1) * sizeof(*ng));
    if (!ng) goto oom;
    o->groups = ng;
    for (int i = 0; i < g.n; i++)
        o->claimed[g.idx[i]] = 1;
    o->groups[o->n_groups] = g;
    return o->n_groups++;
oom:
    free_group(&g);
    return cairn_errorf(err, CAIRN_ENOMEM, "sgd: out of memory");
}

int cairn_nn_sgd_group_size(const cairn_nn_sgd *o, int g)
{
    return g >= 0 && g < o->n_groups ? o->groups[g].n : 0;
}

void cairn_nn_sgd_set_lr(cairn_nn_sgd *o, int g, float lr)
{
    if (g >= 0 && g < o->n_groups) o->groups[g].hp.lr = lr;
}

void cairn_nn_sgd_step(cairn_nn_sgd *o)
{
    for (int gi = 0; gi < o->n_groups; gi++) {
        const sgd_group *g = &o->groups[gi];
        const float lr = g->hp.lr, mu = g->hp.momentum, wd = g->hp.weight_decay;
        for (int k = 0; k < g->n; k++) {
            cairn_nn_param *p = &o->m->params[g->idx[k]];
            float *w = p->value.data, *v = g->vel[k];
            const float *gr = p->grad;
            if (!gr) continue; /* the model was re-prepared without training */
            for (size_t j = 0; j < p->value.numel; j++) {
                float d = gr[j] + wd * w[j];
                v[j] = mu * v[j] + d;
                w[j] -= lr * v[j];
            }
        }
    }
}

void cairn_nn_sgd_reset(cairn_nn_sgd *o)
{
    for (int gi = 0; gi < o->n_groups; gi++)
        for (int k = 0; k < o->groups[gi].n; k++)
            memset(o->groups[gi].vel[k], 0,
                   o->m->params[o->groups[gi].idx[k]].value.numel * sizeof(float));
}
