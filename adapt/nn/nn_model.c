/*
 * adapt/nn/nn_model.c — building a sequential model, its named parameters, and sizing every
 * buffer once (cairn_nn_model_prepare) so that forward and backward never allocate.
 * Forward half: no BLAS.
 */
#include "adapt/nn/nn_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Building ------------------------------------------------------------------------------ */

int cairn_nn_model_new(cairn_nn_model **out, int c, int h, int w, cairn_error *err)
{
    *out = NULL;
    if (c < 1 || h < 1 || w < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "nn: input shape %dx%dx%d must be positive", c, h,
                            w);
    if (cairn_tensor_shape_numel(3, (const int[]){c, h, w}) == 0)
        return cairn_errorf(err, CAIRN_EOVERFLOW, "nn: input shape %dx%dx%d too large", c, h, w);
    cairn_nn_model *m = calloc(1, sizeof(*m));
    if (!m) return cairn_errorf(err, CAIRN_ENOMEM, "nn: out of memory");
    m->in_c = c;
    m->in_h = h;
    m->in_w = w;
    m->bn_mode = CAIRN_NN_BN_EVAL;
    m->sgemm = cairn_nn_sgemm_portable;
    *out = m;
    return 0;
}

static void free_buffers(cairn_nn_model *m)
{
    free(m->act);
    free(m->act_store);
    free(m->col);
    free(m->dcol);
    free(m->grad_a);
    free(m->grad_b);
    free(m->bn_store);
    free(m->argmax_store);
    free(m->res_store);
    for (int i = 0; i < 3; i++) {
        free(m->res_s[i]);
        m->res_s[i] = NULL;
    }
    m->res_store = NULL;
    m->act = NULL;
    m->act_store = m->col = m->dcol = m->grad_a = m->grad_b = m->bn_store = NULL;
    m->argmax_store = NULL;
    for (int i = 0; i < m->n_layers; i++) {
        m->layers[i].bn_mean = m->layers[i].bn_invstd = NULL;
        m->layers[i].argmax = NULL;
        m->layers[i].r_t1 = m->layers[i].r_u = m->layers[i].r_t4 = m->layers[i].r_p1 = NULL;
        for (int j = 0; j < m->layers[i].n_sub; j++)
            m->layers[i].sub[j].bn_mean = m->layers[i].sub[j].bn_invstd = NULL;
    }
    for (int i = 0; i < m->n_params; i++) {
        free(m->params[i].grad);
        m->params[i].grad = NULL;
    }
}

void cairn_nn_model_free(cairn_nn_model *m)
{
    if (!m) return;
    free_buffers(m);
    for (int i = 0; i < m->n_params; i++)
        cairn_tensor_free(&m->params[i].value);
    free(m->params);
    for (int i = 0; i < m->n_layers; i++)
        free(m->layers[i].sub);
    free(m->layers);
    free(m);
}

/* Current per-sample output shape: the last layer's, or the input's. */
static void cur_shape(const cairn_nn_model *m, int *c, int *h, int *w)
{
    if (m->n_layers == 0) {
        *c = m->in_c, *h = m->in_h, *w = m->in_w;
    } else {
        const cairn_nn__layer *l = &m->layers[m->n_layers - 1];
        *c = l->out_c, *h = l->out_h, *w = l->out_w;
    }
}

/* Appends a layer reading the current output shape; returns it zeroed but for type and input. */
static cairn_nn__layer *push_layer(cairn_nn_model *m, cairn_nn_layer_type type, cairn_error *err,
                                   int *rc)
{
    *rc = 0;
    if (m->prepared) {
        *rc = cairn_errorf(err, CAIRN_ESTATE, "nn: cannot add a layer after prepare");
        return NULL;
    }
    if (m->n_layers == m->cap_layers) {
        int cap = m->cap_layers ? 2 * m->cap_layers : 8;
        cairn_nn__layer *nl = realloc(m->layers, (size_t)cap * sizeof(*nl));
        if (!nl) {
            *rc = cairn_errorf(err, CAIRN_ENOMEM, "nn: out of memory");
            return NULL;
        }
        m->layers = nl;
        m->cap_layers = cap;
    }
    cairn_nn__layer l = {0};
    l.type = type;
    cur_shape(m, &l.in_c, &l.in_h, &l.in_w);
    l.p_weight = l.p_bias = l.p_mean = l.p_var = -1;
    m->layers[m->n_layers] = l;
    return &m->layers[m->n_layers];
}

/* Adds a named tensor for layer index `layer` (not yet counted in n_layers); returns its index. */
static int add_param(cairn_nn_model *m, const char *lname, const char *suffix,
                     cairn_nn_param_kind kind, cairn_nn_layer_type ltype, int ndim,
                     const int *shape, cairn_error *err)
{
    char name[CAIRN_NN_NAME_MAX];
    int len = snprintf(name, sizeof(name), "%s.%s", lname, suffix);
    if (len < 0 || len >= (int)sizeof(name))
        return cairn_errorf(err, CAIRN_EINVAL, "nn: parameter name '%s.%s' longer than %d", lname,
                            suffix, CAIRN_NN_NAME_MAX - 1);
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return cairn_errorf(err, CAIRN_EINVAL, "nn: duplicate parameter name '%s'", name);
    if (m->n_params == m->cap_params) {
        int cap = m->cap_params ? 2 * m->cap_params : 16;
        cairn_nn_param *np = realloc(m->params, (size_t)cap * sizeof(*np));
        if (!np) return cairn_errorf(err, CAIRN_ENOMEM, "nn: out of memory");
        m->params = np;
        m->cap_params = cap;
    }
    cairn_nn_param p = {0};
    memcpy(p.name, name, (size_t)len + 1);
    int rc = cairn_tensor_alloc(&p.value, ndim, shape, err);
    if (rc) return cairn_error_prefix(err, "nn: parameter '%s'", name), rc;
    p.kind = kind;
    p.layer_type = ltype;
    p.layer = m->n_layers;
    p.trainable = kind != CAIRN_NN_RUNNING_MEAN && kind != CAIRN_NN_RUNNING_VAR;
    p.requires_grad = p.trainable;
    m->params[m->n_params] = p;
    return m->n_params++;
}

/* Drops parameters added for a layer that then failed (they are the last ones). */
static void drop_params_from(cairn_nn_model *m, int first)
{
    while (m->n_params > first)
        cairn_tensor_free(&m->params[--m->n_params].value);
}

static int need_name(const char *name, const char *what, cairn_error *err)
{
    if (!name || !*name)
        return cairn_errorf(err, CAIRN_EINVAL, "nn: a %s layer needs a name", what);
    return 0;
}

int cairn_nn_add_conv2d(cairn_nn_model *m, const char *name, int out_c, int kernel, int stride,
                        int padding, int bias, cairn_error *err)
{
    int rc = need_name(name, "conv2d", err);
    if (rc) return rc;
    if (out_c < 1 || kernel < 1 || stride < 1 || padding < 0)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "nn: conv2d '%s': out_c %d, kernel %d, stride %d, padding %d invalid",
                            name, out_c, kernel, stride, padding);
    cairn_nn__layer *l = push_layer(m, CAIRN_NN_CONV2D, err, &rc);
    if (!l) return rc;
    int ph = l->in_h + 2 * padding, pw = l->in_w + 2 * padding;
    if (ph < kernel || pw < kernel)
        return cairn_errorf(err, CAIRN_EINVAL, "nn: conv2d '%s': kernel %d larger than %dx%d", name,
                            kernel, ph, pw);
    l->kernel = kernel;
    l->stride = stride;
    l->padding = padding;
    l->has_bias = bias != 0;
    l->out_c = out_c;
    l->out_h = (ph - kernel) / stride + 1;
    l->out_w = (pw - kernel) / stride + 1;
    int first = m->n_params;
    rc = add_param(m, name, "weight", CAIRN_NN_WEIGHT, l->type, 4,
                   (const int[]){out_c, l->in_c, kernel, kernel}, err);
    if (rc < 0) return rc;
    l->p_weight = rc;
    if (bias) {
        rc = add_param(m, name, "bias", CAIRN_NN_BIAS, l->type, 1, (const int[]){out_c}, err);
        if (rc < 0) return drop_params_from(m, first), rc;
        l->p_bias = rc;
    }
    m->n_layers++;
    return 0;
}

int cairn_nn_add_batchnorm2d(cairn_nn_model *m, const char *name, float eps, float momentum,
                             cairn_error *err)
{
    int rc = need_name(name, "batchnorm2d", err);
    if (rc) return rc;
    if (!(eps > 0) || !(momentum >= 0 && momentum <= 1))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "nn: batchnorm2d '%s': eps %g must be > 0, momentum %g in [0,1]", name,
                            (double)eps, (double)momentum);
    cairn_nn__layer *l = push_layer(m, CAIRN_NN_BATCHNORM2D, err, &rc);
    if (!l) return rc;
    l->out_c = l->in_c, l->out_h = l->in_h, l->out_w = l->in_w;
    l->eps = eps;
    l->momentum = momentum;
    int first = m->n_params;
    const int shape[1] = {l->in_c};
    static const char *const suffix[4] = {"weight", "bias", "running_mean", "running_var"};
    static const cairn_nn_param_kind kinds[4] = {CAIRN_NN_NORM_WEIGHT, CAIRN_NN_NORM_BIAS,
                                                 CAIRN_NN_RUNNING_MEAN, CAIRN_NN_RUNNING_VAR};
    int idx[4];
    for (int i = 0; i < 4; i++) {
        idx[i] = add_param(m, name, suffix[i], kinds[i], l->type, 1, shape, err);
        if (idx[i] < 0) return drop_params_from(m, first), idx[i];
    }
    l->p_weight = idx[0], l->p_bias = idx[1], l->p_mean = idx[2], l->p_var = idx[3];
    /* Identity until init: gamma 1, running variance 1. */
    for (int c = 0; c < l->in_c; c++) {
        m->params[idx[0]].value.data[c] = 1.0f;
        m->params[idx[3]].value.data[c] = 1.0f;
    }
    m->n_layers++;
    return 0;
}

int cairn_nn_add_linear(cairn_nn_model *m, const char *name, int out, int bias, cairn_error *err)
{
    int rc = need_name(name, "linear", err);
    if (rc) return rc;
    if (out < 1) return cairn_errorf(err, CAIRN_EINVAL, "nn: linear '%s': out %d < 1", name, out);
    cairn_nn__layer *l = push_layer(m, CAIRN_NN_LINEAR, err, &rc);
    if (!l) return rc;
    size_t in = (size_t)l->in_c * l->in_h * l->in_w;
    if (in > INT32_MAX)
        return cairn_errorf(err, CAIRN_EINVAL, "nn: linear '%s': %zu inputs", name, in);
    l->out_c = out, l->out_h = 1, l->out_w = 1;
    l->has_bias = bias != 0;
    int first = m->n_params;
    rc =
        add_param(m, name, "weight", CAIRN_NN_WEIGHT, l->type, 2, (const int[]){out, (int)in}, err);
    if (rc < 0) return rc;
    l->p_weight = rc;
    if (bias) {
        rc = add_param(m, name, "bias", CAIRN_NN_BIAS, l->type, 1, (const int[]){out}, err);
        if (rc < 0) return drop_params_from(m, first), rc;
        l->p_bias = rc;
    }
    m->n_layers++;
    return 0;
}

int cairn_nn_add_relu(cairn_nn_model *m, cairn_error *err)
{
    int rc;
    cairn_nn__layer *l = push_layer(m, CAIRN_NN_RELU, err, &rc);
    if (!l) return rc;
    l->out_c = l->in_c, l->out_h = l->in_h, l->out_w = l->in_w;
    m->n_layers++;
    return 0;
}

static int add_pool(cairn_nn_model *m, cairn_nn_layer_type type, int kernel, int stride,
                    cairn_error *err)
{
    int rc;
    if (kernel < 1 || stride < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "nn: pool kernel %d, stride %d invalid", kernel,
                            stride);
    cairn_nn__layer *l = push_layer(m, type, err, &rc);
    if (!l) return rc;
    if (l->in_h < kernel || l->in_w < kernel)
        return cairn_errorf(err, CAIRN_EINVAL, "nn: pool kernel %d larger than input %dx%d", kernel,
                            l->in_h, l->in_w);
    l->kernel = kernel;
    l->stride = stride;
    l->out_c = l->in_c;
    l->out_h = (l->in_h - kernel) / stride + 1;
    l->out_w = (l->in_w - kernel) / stride + 1;
    m->n_layers++;
    return 0;
}

int cairn_nn_add_maxpool2d(cairn_nn_model *m, int kernel, int stride, cairn_error *err)
{
    return add_pool(m, CAIRN_NN_MAXPOOL2D, kernel, stride, err);
}

int cairn_nn_add_avgpool2d(cairn_nn_model *m, int kernel, int stride, cairn_error *err)
{
    return add_pool(m, CAIRN_NN_AVGPOOL2D, kernel, stride, err);
}

int cairn_nn_add_global_avgpool(cairn_nn_model *m, cairn_error *err)
{
    int rc;
    cairn_nn__layer *l = push_layer(m, CAIRN_NN_GLOBAL_AVGPOOL, err, &rc);
    if (!l) return rc;
    l->out_c = l->in_c, l->out_h = 1, l->out_w = 1;
    m->n_layers++;
    return 0;
}

int cairn_nn_add_flatten(cairn_nn_model *m, cairn_error *err)
{
    int rc;
    cairn_nn__layer *l = push_layer(m, CAIRN_NN_FLATTEN, err, &rc);
    if (!l) return rc;
    size_t f = (size_t)l->in_c * l->in_h * l->in_w;
    if (f > INT32_MAX) return cairn_errorf(err, CAIRN_EINVAL, "nn: flatten: %zu features", f);
    l->out_c = (int)f, l->out_h = 1, l->out_w = 1;
    m->n_layers++;
    return 0;
}

/* Fills a block's conv sub-layer (no bias) and adds its weight "<block>.<sub>.weight". */
static int res_conv(cairn_nn_model *m, const char *block, const char *sub, cairn_nn__layer *l,
                    int in_c, int in_h, int in_w, int out_c, int kernel, int stride, int padding,
                    cairn_error *err)
{
    char lname[CAIRN_NN_NAME_MAX];
    snprintf(lname, sizeof(lname), "%s.%s", block, sub);
    *l = (cairn_nn__layer){.type = CAIRN_NN_CONV2D, .in_c = in_c, .in_h = in_h, .in_w = in_w};
    l->p_weight = l->p_bias = l->p_mean = l->p_var = -1;
    l->kernel = kernel, l->stride = stride, l->padding = padding;
    l->out_c = out_c;
    l->out_h = (in_h + 2 * padding - kernel) / stride + 1;
    l->out_w = (in_w + 2 * padding - kernel) / stride + 1;
    int rc = add_param(m, lname, "weight", CAIRN_NN_WEIGHT, CAIRN_NN_CONV2D, 4,
                       (const int[]){out_c, in_c, kernel, kernel}, err);
    if (rc < 0) return rc;
    l->p_weight = rc;
    return 0;
}

/* Fills a block's batchnorm sub-layer over c channels of h x w and adds its four tensors. */
static int res_bn(cairn_nn_model *m, const char *block, const char *sub, cairn_nn__layer *l,
                  int c, int h, int w, float eps, float momentum, cairn_error *err)
{
    char lname[CAIRN_NN_NAME_MAX];
    snprintf(lname, sizeof(lname), "%s.%s", block, sub);
    *l = (cairn_nn__layer){.type = CAIRN_NN_BATCHNORM2D, .in_c = c, .in_h = h, .in_w = w};
    l->out_c = c, l->out_h = h, l->out_w = w;
    l->eps = eps, l->momentum = momentum;
    static const char *const suffix[4] = {"weight", "bias", "running_mean", "running_var"};
    static const cairn_nn_param_kind kinds[4] = {CAIRN_NN_NORM_WEIGHT, CAIRN_NN_NORM_BIAS,
                                                 CAIRN_NN_RUNNING_MEAN, CAIRN_NN_RUNNING_VAR};
    int idx[4];
    for (int i = 0; i < 4; i++) {
        idx[i] = add_param(m, lname, suffix[i], kinds[i], CAIRN_NN_BATCHNORM2D, 1,
                           (const int[]){c}, err);
        if (idx[i] < 0) return idx[i];
    }
    l->p_weight = idx[0], l->p_bias = idx[1], l->p_mean = idx[2], l->p_var = idx[3];
    for (int j = 0; j < c; j++) {
        m->params[idx[0]].value.data[j] = 1.0f;
        m->params[idx[3]].value.data[j] = 1.0f;
    }
    return 0;
}

int cairn_nn_add_resblock(cairn_nn_model *m, const char *name, int out_c, int stride, float eps,
                          float momentum, cairn_error *err)
{
    int rc = need_name(name, "resblock", err);
    if (rc) return rc;
    if (strlen(name) > CAIRN_NN_NAME_MAX - 24)
        return cairn_errorf(err, CAIRN_EINVAL, "nn: resblock name '%s' longer than %d", name,
                            CAIRN_NN_NAME_MAX - 24);
    if (out_c < 1 || stride < 1 || stride > CAIRN_NN__MAX_RES_STRIDE || !(eps > 0) ||
        !(momentum >= 0 && momentum <= 1))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "nn: resblock '%s': out_c %d, stride %d, eps %g, momentum %g invalid",
                            name, out_c, stride, (double)eps, (double)momentum);
    cairn_nn__layer *l = push_layer(m, CAIRN_NN_RESBLOCK, err, &rc);
    if (!l) return rc;
    const int proj = stride != 1 || out_c != l->in_c;
    cairn_nn__layer *sub = calloc(6, sizeof(*sub));
    if (!sub) return cairn_errorf(err, CAIRN_ENOMEM, "nn: out of memory");
    const int C = l->in_c, H = l->in_h, W = l->in_w;
    const int OH = (H + 2 - 3) / stride + 1, OW = (W + 2 - 3) / stride + 1;
    int first = m->n_params;
    rc = res_conv(m, name, "conv1", &sub[RES_CONV1], C, H, W, out_c, 3, stride, 1, err);
    if (!rc) rc = res_bn(m, name, "bn1", &sub[RES_BN1], out_c, OH, OW, eps, momentum, err);
    if (!rc) rc = res_conv(m, name, "conv2", &sub[RES_CONV2], out_c, OH, OW, out_c, 3, 1, 1, err);
    if (!rc) rc = res_bn(m, name, "bn2", &sub[RES_BN2], out_c, OH, OW, eps, momentum, err);
    if (!rc && proj)
        rc = res_conv(m, name, "proj", &sub[RES_PCONV], C, H, W, out_c, 1, stride, 0, err);
    if (!rc && proj) rc = res_bn(m, name, "pbn", &sub[RES_PBN], out_c, OH, OW, eps, momentum, err);
    if (rc) {
        drop_params_from(m, first);
        free(sub);
        return rc;
    }
    l->sub = sub;
    l->n_sub = proj ? 6 : 4;
    l->stride = stride;
    l->eps = eps, l->momentum = momentum;
    l->out_c = out_c, l->out_h = OH, l->out_w = OW;
    l->p_weight = sub[RES_CONV1].p_weight; /* the block's first tensor, for its name */
    m->n_layers++;
    return 0;
}

/* ---- Sizing -------------------------------------------------------------------------------- */

size_t cairn_nn__act_size(const cairn_nn_model *m, int i)
{
    if (i == 0) return (size_t)m->in_c * m->in_h * m->in_w;
    const cairn_nn__layer *l = &m->layers[i - 1];
    return (size_t)l->out_c * l->out_h * l->out_w;
}

cairn_nn_model_params cairn_nn_model_default_params(void)
{
    return (cairn_nn_model_params){.max_batch = 64, .training = 0, .sgemm = NULL};
}

static void *xcalloc(size_t n, size_t size, int *fail)
{
    if (n == 0) return NULL;
    void *p = calloc(n, size);
    if (!p) *fail = 1;
    return p;
}

int cairn_nn_model_prepare(cairn_nn_model *m, const cairn_nn_model_params *p, cairn_error *err)
{
    cairn_nn_model_params dp = cairn_nn_model_default_params();
    if (!p) p = &dp;
    if (m->n_layers == 0) return cairn_errorf(err, CAIRN_EINVAL, "nn: model has no layers");
    if (p->max_batch < 1 || p->max_batch > (1 << 20))
        return cairn_errorf(err, CAIRN_EINVAL, "nn: max_batch %d outside 1..%d", p->max_batch,
                            1 << 20);
    free_buffers(m);
    m->prepared = 1;
    m->training = p->training != 0;
    m->max_batch = p->max_batch;
    m->sgemm = p->sgemm ? p->sgemm : cairn_nn_sgemm_portable;
    m->last_n = 0;

    size_t B = (size_t)p->max_batch, total = 0, max_act = 0, max_col = 0, n_bn = 0, n_arg = 0;
    size_t n_res = 0; /* residual blocks' kept activations per sample */
    for (int i = 0; i <= m->n_layers; i++) {
        size_t s = cairn_nn__act_size(m, i);
        if (s > max_act) max_act = s;
        /* flatten's output aliases its input */
        if (i == 0 || m->layers[i - 1].type != CAIRN_NN_FLATTEN) total += s;
    }
    for (int i = 0; i < m->n_layers; i++) {
        const cairn_nn__layer *l = &m->layers[i];
        if (l->type == CAIRN_NN_CONV2D) {
            size_t c = (size_t)l->in_c * l->kernel * l->kernel * l->out_h * l->out_w;
            if (c > max_col) max_col = c;
        } else if (l->type == CAIRN_NN_BATCHNORM2D) {
            n_bn += 2 * (size_t)l->in_c;
        } else if (l->type == CAIRN_NN_MAXPOOL2D) {
            n_arg += (size_t)l->out_c * l->out_h * l->out_w;
        } else if (l->type == CAIRN_NN_RESBLOCK) {
            for (int j = 0; j < l->n_sub; j++) {
                const cairn_nn__layer *u = &l->sub[j];
                if (u->type == CAIRN_NN_CONV2D) {
                    size_t c = (size_t)u->in_c * u->kernel * u->kernel * u->out_h * u->out_w;
                    if (c > max_col) max_col = c;
                } else {
                    n_bn += 2 * (size_t)u->in_c;
                }
            }
            n_res += (size_t)(l->n_sub == 6 ? 4 : 3) * l->out_c * l->out_h * l->out_w;
        }
    }
    if (total > SIZE_MAX / sizeof(float) / B || n_res > SIZE_MAX / sizeof(float) / B ||
        n_arg > SIZE_MAX / sizeof(int) / B)
        return m->prepared = 0, cairn_errorf(err, CAIRN_EOVERFLOW, "nn: buffers too large");

    int fail = 0;
    m->act = xcalloc((size_t)m->n_layers + 1, sizeof(float *), &fail);
    m->act_store = xcalloc(total * B, sizeof(float), &fail);
    m->col = xcalloc(max_col, sizeof(float), &fail);
    m->bn_store = xcalloc(n_bn, sizeof(float), &fail);
    m->argmax_store = xcalloc(n_arg * B, sizeof(int), &fail);
    if (n_res) {
        m->res_store = xcalloc(n_res * B, sizeof(float), &fail);
        m->res_s[0] = xcalloc(max_act * B, sizeof(float), &fail);
        if (m->training) {
            m->res_s[1] = xcalloc(max_act * B, sizeof(float), &fail);
            m->res_s[2] = xcalloc(max_act * B, sizeof(float), &fail);
        }
    }
    if (m->training) {
        m->dcol = xcalloc(max_col, sizeof(float), &fail);
        m->grad_a = xcalloc(max_act * B, sizeof(float), &fail);
        m->grad_b = xcalloc(max_act * B, sizeof(float), &fail);
        for (int i = 0; i < m->n_params; i++)
            if (m->params[i].trainable)
                m->params[i].grad = xcalloc(m->params[i].value.numel, sizeof(float), &fail);
    }
    if (fail) {
        free_buffers(m);
        m->prepared = 0;
        return cairn_errorf(err, CAIRN_ENOMEM, "nn: cannot allocate buffers for batch %d",
                            p->max_batch);
    }
    float *a = m->act_store, *bn = m->bn_store, *rs = m->res_store;
    int *am = m->argmax_store;
    for (int i = 0; i <= m->n_layers; i++) {
        if (i > 0 && m->layers[i - 1].type == CAIRN_NN_FLATTEN) {
            m->act[i] = m->act[i - 1];
        } else {
            m->act[i] = a;
            a += cairn_nn__act_size(m, i) * B;
        }
    }
    for (int i = 0; i < m->n_layers; i++) {
        cairn_nn__layer *l = &m->layers[i];
        if (l->type == CAIRN_NN_BATCHNORM2D) {
            l->bn_mean = bn;
            l->bn_invstd = bn + l->in_c;
            bn += 2 * (size_t)l->in_c;
        } else if (l->type == CAIRN_NN_MAXPOOL2D) {
            l->argmax = am;
            am += (size_t)l->out_c * l->out_h * l->out_w * B;
        } else if (l->type == CAIRN_NN_RESBLOCK) {
            for (int j = 0; j < l->n_sub; j++) {
                cairn_nn__layer *u = &l->sub[j];
                if (u->type != CAIRN_NN_BATCHNORM2D) continue;
                u->bn_mean = bn;
                u->bn_invstd = bn + u->in_c;
                bn += 2 * (size_t)u->in_c;
            }
            const size_t os = (size_t)l->out_c * l->out_h * l->out_w * B;
            l->r_t1 = rs, rs += os;
            l->r_u = rs, rs += os;
            l->r_t4 = rs, rs += os;
            if (l->n_sub == 6) l->r_p1 = rs, rs += os;
        }
    }
    return 0;
}

/* ---- Initialisation ------------------------------------------------------------------------ */

/* splitmix64: a tiny reproducible generator, state on the caller's stack. */
static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void cairn_nn_model_init_params(cairn_nn_model *m, uint64_t seed)
{
    uint64_t s = seed;
    for (int i = 0; i < m->n_params; i++) {
        cairn_nn_param *p = &m->params[i];
        float *d = p->value.data;
        size_t n = p->value.numel;
        switch (p->kind) {
        case CAIRN_NN_WEIGHT: {
            /* fan_in = everything but the output dimension */
            size_t fan_in = n / (size_t)p->value.shape[0];
            float bound = sqrtf(6.0f / (float)fan_in);
            for (size_t j = 0; j < n; j++) {
                double u = (double)(splitmix64(&s) >> 11) * (1.0 / 9007199254740992.0);
                d[j] = (float)((2.0 * u - 1.0) * bound);
            }
            break;
        }
        case CAIRN_NN_NORM_WEIGHT:
        case CAIRN_NN_RUNNING_VAR:
            for (size_t j = 0; j < n; j++)
                d[j] = 1.0f;
            break;
        default:
            memset(d, 0, n * sizeof(float));
        }
    }
}

/* ---- Accessors ----------------------------------------------------------------------------- */

void cairn_nn_set_bn_mode(cairn_nn_model *m, cairn_nn_bn_mode mode)
{
    m->bn_mode = mode;
}
cairn_nn_bn_mode cairn_nn_get_bn_mode(const cairn_nn_model *m)
{
    return m->bn_mode;
}
int cairn_nn_layer_count(const cairn_nn_model *m)
{
    return m->n_layers;
}

cairn_nn_layer_type cairn_nn_layer_type_of(const cairn_nn_model *m, int i)
{
    return m->layers[i].type;
}

void cairn_nn_input_shape(const cairn_nn_model *m, int *c, int *h, int *w)
{
    *c = m->in_c, *h = m->in_h, *w = m->in_w;
}

void cairn_nn_output_shape(const cairn_nn_model *m, int *c, int *h, int *w)
{
    cur_shape(m, c, h, w);
}

size_t cairn_nn_output_size(const cairn_nn_model *m)
{
    return cairn_nn__act_size(m, m->n_layers);
}

int cairn_nn_param_count(const cairn_nn_model *m)
{
    return m->n_params;
}

cairn_nn_param *cairn_nn_param_at(cairn_nn_model *m, int i)
{
    return i >= 0 && i < m->n_params ? &m->params[i] : NULL;
}

cairn_nn_param *cairn_nn_param_find(cairn_nn_model *m, const char *name)
{
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

size_t cairn_nn_trainable_count(const cairn_nn_model *m)
{
    size_t n = 0;
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].trainable) n += m->params[i].value.numel;
    return n;
}
