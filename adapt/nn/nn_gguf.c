/*
 * adapt/nn/nn_gguf.c — models to and from GGUF (see nn_gguf.h for the layout). Loading treats
 * the file as hostile: every value is range-checked and every tensor's shape is checked against
 * the architecture before anything of that size is allocated.
 */
#include "adapt/nn/nn_gguf.h"
#include "adapt/nn/nn_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define KEY_MAX 96
/* Largest per-sample activation a loaded model may have (floats). */
#define MAX_ACT_ELEMS ((size_t)1 << 26)

static const char *const type_names[] = {
    [CAIRN_NN_CONV2D] = "conv2d",
    [CAIRN_NN_BATCHNORM2D] = "batchnorm2d",
    [CAIRN_NN_LINEAR] = "linear",
    [CAIRN_NN_RELU] = "relu",
    [CAIRN_NN_MAXPOOL2D] = "maxpool2d",
    [CAIRN_NN_AVGPOOL2D] = "avgpool2d",
    [CAIRN_NN_GLOBAL_AVGPOOL] = "global_avgpool",
    [CAIRN_NN_FLATTEN] = "flatten",
    [CAIRN_NN_RESBLOCK] = "resblock",
};
#define N_TYPES ((int)(sizeof(type_names) / sizeof(type_names[0])))

static void layer_key(char *buf, int i, const char *field)
{
    snprintf(buf, KEY_MAX, "cairn.cnn.layer.%d.%s", i, field);
}

/* ---- Save ---------------------------------------------------------------------------------- */

static int put_u32(cairn_gguf_writer *w, int i, const char *field, int v, cairn_error *err)
{
    char key[KEY_MAX];
    layer_key(key, i, field);
    return cairn_gguf_writer_add_u32(w, key, (uint32_t)v, err);
}

static int put_str(cairn_gguf_writer *w, int i, const char *field, const char *v, cairn_error *err)
{
    char key[KEY_MAX];
    layer_key(key, i, field);
    return cairn_gguf_writer_add_str(w, key, v, err);
}

static int put_bool(cairn_gguf_writer *w, int i, const char *field, int v, cairn_error *err)
{
    char key[KEY_MAX];
    layer_key(key, i, field);
    return cairn_gguf_writer_add_bool(w, key, v != 0, err);
}

static int put_f32(cairn_gguf_writer *w, int i, const char *field, float v, cairn_error *err)
{
    char key[KEY_MAX];
    layer_key(key, i, field);
    return cairn_gguf_writer_add_f32(w, key, v, err);
}

/* The layer's name is its first parameter's name without the ".suffix" (a residual block's:
 * without ".conv1.weight"). */
static void layer_name(const cairn_nn_model *m, const cairn_nn__layer *l, char *out)
{
    const char *full = m->params[l->p_weight].name;
    size_t len = strlen(full);
    if (l->type == CAIRN_NN_RESBLOCK) {
        len -= strlen(".conv1.weight");
    } else {
        const char *dot = strrchr(full, '.');
        if (dot) len = (size_t)(dot - full);
    }
    memcpy(out, full, len);
    out[len] = '\0';
}

int cairn_nn_save_to_writer(const cairn_nn_model *m, cairn_gguf_writer *w, cairn_error *err)
{
    int rc;
    const int32_t in_shape[3] = {m->in_c, m->in_h, m->in_w};
    if ((rc = cairn_gguf_writer_add_str(w, "general.architecture", CAIRN_NN_GGUF_ARCH, err)) ||
        (rc = cairn_gguf_writer_add_arr(w, "cairn.cnn.input_shape", CAIRN_GGUF_KV_I32, in_shape, 3,
                                        err)) ||
        (rc = cairn_gguf_writer_add_u32(w, "cairn.cnn.layer_count", (uint32_t)m->n_layers, err)))
        return rc;
    for (int i = 0; i < m->n_layers; i++) {
        const cairn_nn__layer *l = &m->layers[i];
        char name[CAIRN_NN_NAME_MAX];
        if ((rc = put_str(w, i, "type", type_names[l->type], err))) return rc;
        if (l->p_weight >= 0) {
            layer_name(m, l, name);
            if ((rc = put_str(w, i, "name", name, err))) return rc;
        }
        switch (l->type) {
        case CAIRN_NN_CONV2D:
            if ((rc = put_u32(w, i, "out_channels", l->out_c, err)) ||
                (rc = put_u32(w, i, "kernel", l->kernel, err)) ||
                (rc = put_u32(w, i, "stride", l->stride, err)) ||
                (rc = put_u32(w, i, "padding", l->padding, err)) ||
                (rc = put_bool(w, i, "bias", l->has_bias, err)))
                return rc;
            break;
        case CAIRN_NN_BATCHNORM2D:
            if ((rc = put_f32(w, i, "eps", l->eps, err)) ||
                (rc = put_f32(w, i, "momentum", l->momentum, err)))
                return rc;
            break;
        case CAIRN_NN_LINEAR:
            if ((rc = put_u32(w, i, "out_features", l->out_c, err)) ||
                (rc = put_bool(w, i, "bias", l->has_bias, err)))
                return rc;
            break;
        case CAIRN_NN_MAXPOOL2D:
        case CAIRN_NN_AVGPOOL2D:
            if ((rc = put_u32(w, i, "kernel", l->kernel, err)) ||
                (rc = put_u32(w, i, "stride", l->stride, err)))
                return rc;
            break;
        case CAIRN_NN_RESBLOCK:
            if ((rc = put_u32(w, i, "out_channels", l->out_c, err)) ||
                (rc = put_u32(w, i, "stride", l->stride, err)) ||
                (rc = put_f32(w, i, "eps", l->eps, err)) ||
                (rc = put_f32(w, i, "momentum", l->momentum, err)))
                return rc;
            break;
        default:
            break;
        }
    }
    for (int i = 0; i < m->n_params; i++) {
        const cairn_nn_param *p = &m->params[i];
        uint64_t dims[CAIRN_TENSOR_MAX_DIMS];
        for (int d = 0; d < p->value.ndim; d++)
            dims[d] = (uint64_t)p->value.shape[p->value.ndim - 1 - d];
        rc = cairn_gguf_writer_add_tensor(w, p->name, CAIRN_GGUF_F32, (uint32_t)p->value.ndim, dims,
                                          p->value.data, p->value.numel * sizeof(float), err);
        if (rc) return rc;
    }
    return 0;
}

int cairn_nn_save(const cairn_nn_model *m, const char *path, cairn_error *err)
{
    cairn_gguf_writer *w;
    int rc = cairn_gguf_writer_new(&w, err);
    if (rc) return rc;
    rc = cairn_nn_save_to_writer(m, w, err);
    if (!rc) rc = cairn_gguf_writer_write_file(w, path, err);
    cairn_gguf_writer_free(w);
    return rc;
}

/* ---- Load ---------------------------------------------------------------------------------- */

/* A u32 layer field in [lo, hi]; missing or mistyped: EFORMAT; out of range: ELIMIT. */
static int get_field(const cairn_gguf *g, int i, const char *field, int lo, int hi, int *out,
                     cairn_error *err)
{
    char key[KEY_MAX];
    layer_key(key, i, field);
    uint32_t v;
    int rc = cairn_gguf_get_u32(g, key, &v, err);
    if (rc) return cairn_errorf(err, CAIRN_EFORMAT, "nn load: '%s' missing or not an integer", key);
    if (v < (uint32_t)lo || v > (uint32_t)hi)
        return cairn_errorf(err, v < (uint32_t)lo ? CAIRN_EFORMAT : CAIRN_ELIMIT,
                            "nn load: '%s' = %u outside %d..%d", key, v, lo, hi);
    *out = (int)v;
    return 0;
}

static int get_flag(const cairn_gguf *g, int i, const char *field, int *out, cairn_error *err)
{
    char key[KEY_MAX];
    layer_key(key, i, field);
    bool v;
    if (cairn_gguf_get_bool(g, key, &v, err))
        return cairn_errorf(err, CAIRN_EFORMAT, "nn load: '%s' missing or not a bool", key);
    *out = v;
    return 0;
}

static int get_real(const cairn_gguf *g, int i, const char *field, float *out, cairn_error *err)
{
    char key[KEY_MAX];
    layer_key(key, i, field);
    if (cairn_gguf_get_f32(g, key, out, err) || !isfinite(*out))
        return cairn_errorf(err, CAIRN_EFORMAT, "nn load: '%s' missing or not a finite float", key);
    return 0;
}

/*
 * Checks that the file holds "<lname>.<suffix>" with exactly the (PyTorch-order) shape given,
 * before the layer allocates a tensor of that size.
 */
static int expect_tensor(const cairn_gguf *g, const char *lname, const char *suffix, int ndim,
                         const int64_t *shape, cairn_error *err)
{
    char name[CAIRN_NN_NAME_MAX + 32];
    snprintf(name, sizeof(name), "%s.%s", lname, suffix);
    const cairn_gguf_tensor *t = cairn_gguf_find_tensor(g, name);
    if (!t) return cairn_errorf(err, CAIRN_EFORMAT, "nn load: tensor '%s' missing", name);
    int ok = t->n_dims == (uint32_t)ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = t->dims[d] == (uint64_t)shape[ndim - 1 - d];
    if (!ok) {
        char want[96], got[96];
        int wl = 0, gl = 0;
        for (int d = 0; d < ndim; d++)
            wl += snprintf(want + wl, sizeof(want) - (size_t)wl, "%s%lld", d ? "," : "",
                           (long long)shape[ndim - 1 - d]);
        for (uint32_t d = 0; d < t->n_dims && d < CAIRN_GGUF_MAX_DIMS; d++)
            gl += snprintf(got + gl, sizeof(got) - (size_t)gl, "%s%llu", d ? "," : "",
                           (unsigned long long)t->dims[d]);
        if (wl == 0) want[0] = '\0';
        if (gl == 0) got[0] = '\0';
        return cairn_errorf(err, CAIRN_EFORMAT, "nn load: tensor '%s' has dims [%s], expected [%s]",
                            name, got, want);
    }
    if (!cairn_gguf_type_can_dequantize(t->type))
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "nn load: tensor '%s' has type %u (%s)", name,
                            t->type,
                            cairn_gguf_type_name(t->type) ? cairn_gguf_type_name(t->type) : "?");
    return 0;
}

/* Builder errors (bad configuration) become format errors of the file. */
static int as_format(int rc, int i, cairn_error *err)
{
    if (rc == CAIRN_EINVAL || rc == CAIRN_EOVERFLOW) {
        if (err) err->code = CAIRN_EFORMAT;
        cairn_error_prefix(err, "nn load: layer %d", i);
        return CAIRN_EFORMAT;
    }
    return rc;
}

static int build_layer(cairn_nn_model *m, const cairn_gguf *g, int i, cairn_error *err)
{
    char key[KEY_MAX];
    const char *tname, *lname = NULL;
    layer_key(key, i, "type");
    if (cairn_gguf_get_str(g, key, &tname, NULL, err))
        return cairn_errorf(err, CAIRN_EFORMAT, "nn load: '%s' missing or not a string", key);
    int type = -1;
    for (int t = 0; t < N_TYPES; t++)
        if (strcmp(tname, type_names[t]) == 0) type = t;
    if (type < 0)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "nn load: layer %d has unknown type '%.40s'",
                            i, tname);
    if (type == CAIRN_NN_CONV2D || type == CAIRN_NN_BATCHNORM2D || type == CAIRN_NN_LINEAR ||
        type == CAIRN_NN_RESBLOCK) {
        layer_key(key, i, "name");
        size_t len;
        if (cairn_gguf_get_str(g, key, &lname, &len, err) || len == 0 || len != strlen(lname) ||
            len > CAIRN_NN_NAME_MAX - 16)
            return cairn_errorf(err, CAIRN_EFORMAT,
                                "nn load: '%s' missing, empty, or longer than %d", key,
                                CAIRN_NN_NAME_MAX - 16);
    }
    int c, h, w, rc = 0;
    cairn_nn_output_shape(m, &c, &h, &w);
    switch ((cairn_nn_layer_type)type) {
    case CAIRN_NN_CONV2D: {
        int oc = 0, k = 0, s = 0, p = 0, bias = 0; /* set by the getters; 0 keeps -O3 quiet */
        if ((rc = get_field(g, i, "out_channels", 1, CAIRN_NN_MAX_DIM, &oc, err)) ||
            (rc = get_field(g, i, "kernel", 1, CAIRN_NN_MAX_KERNEL, &k, err)) ||
            (rc = get_field(g, i, "stride", 1, CAIRN_NN_MAX_KERNEL, &s, err)) ||
            (rc = get_field(g, i, "padding", 0, CAIRN_NN_MAX_KERNEL, &p, err)) ||
            (rc = get_flag(g, i, "bias", &bias, err)))
            return rc;
        if ((rc = expect_tensor(g, lname, "weight", 4, (const int64_t[]){oc, c, k, k}, err)) ||
            (bias && (rc = expect_tensor(g, lname, "bias", 1, (const int64_t[]){oc}, err))))
            return rc;
        return as_format(cairn_nn_add_conv2d(m, lname, oc, k, s, p, bias, err), i, err);
    }
    case CAIRN_NN_BATCHNORM2D: {
        float eps, mom;
        if ((rc = get_real(g, i, "eps", &eps, err)) || (rc = get_real(g, i, "momentum", &mom, err)))
            return rc;
        static const char *const sfx[4] = {"weight", "bias", "running_mean", "running_var"};
        for (int j = 0; j < 4; j++)
            if ((rc = expect_tensor(g, lname, sfx[j], 1, (const int64_t[]){c}, err))) return rc;
        return as_format(cairn_nn_add_batchnorm2d(m, lname, eps, mom, err), i, err);
    }
    case CAIRN_NN_LINEAR: {
        int out = 0, bias = 0;
        if ((rc = get_field(g, i, "out_features", 1, CAIRN_NN_MAX_DIM, &out, err)) ||
            (rc = get_flag(g, i, "bias", &bias, err)))
            return rc;
        int64_t in = (int64_t)c * h * w;
        if ((rc = expect_tensor(g, lname, "weight", 2, (const int64_t[]){out, in}, err)) ||
            (bias && (rc = expect_tensor(g, lname, "bias", 1, (const int64_t[]){out}, err))))
            return rc;
        return as_format(cairn_nn_add_linear(m, lname, out, bias, err), i, err);
    }
    case CAIRN_NN_MAXPOOL2D:
    case CAIRN_NN_AVGPOOL2D: {
        int k = 0, s = 0;
        if ((rc = get_field(g, i, "kernel", 1, CAIRN_NN_MAX_KERNEL, &k, err)) ||
            (rc = get_field(g, i, "stride", 1, CAIRN_NN_MAX_KERNEL, &s, err)))
            return rc;
        rc = type == CAIRN_NN_MAXPOOL2D ? cairn_nn_add_maxpool2d(m, k, s, err)
                                        : cairn_nn_add_avgpool2d(m, k, s, err);
        return as_format(rc, i, err);
    }
    case CAIRN_NN_RESBLOCK: {
        int oc = 0, s = 0;
        float eps, mom;
        if ((rc = get_field(g, i, "out_channels", 1, CAIRN_NN_MAX_DIM, &oc, err)) ||
            (rc = get_field(g, i, "stride", 1, CAIRN_NN__MAX_RES_STRIDE, &s, err)) ||
            (rc = get_real(g, i, "eps", &eps, err)) || (rc = get_real(g, i, "momentum", &mom, err)))
            return rc;
        if (strlen(lname) > CAIRN_NN_NAME_MAX - 24)
            return cairn_errorf(err, CAIRN_EFORMAT, "nn load: layer %d name longer than %d", i,
                                CAIRN_NN_NAME_MAX - 24);
        const int proj = s != 1 || oc != c;
        static const char *const bsfx[4] = {"weight", "bias", "running_mean", "running_var"};
        char sub[CAIRN_NN_NAME_MAX];
        const char *bns[3] = {"bn1", "bn2", "pbn"};
        snprintf(sub, sizeof(sub), "%s.conv1", lname);
        if ((rc = expect_tensor(g, sub, "weight", 4, (const int64_t[]){oc, c, 3, 3}, err)))
            return rc;
        snprintf(sub, sizeof(sub), "%s.conv2", lname);
        if ((rc = expect_tensor(g, sub, "weight", 4, (const int64_t[]){oc, oc, 3, 3}, err)))
            return rc;
        if (proj) {
            snprintf(sub, sizeof(sub), "%s.proj", lname);
            if ((rc = expect_tensor(g, sub, "weight", 4, (const int64_t[]){oc, c, 1, 1}, err)))
                return rc;
        }
        for (int b = 0; b < (proj ? 3 : 2); b++) {
            snprintf(sub, sizeof(sub), "%s.%s", lname, bns[b]);
            for (int j = 0; j < 4; j++)
                if ((rc = expect_tensor(g, sub, bsfx[j], 1, (const int64_t[]){oc}, err)))
                    return rc;
        }
        return as_format(cairn_nn_add_resblock(m, lname, oc, s, eps, mom, err), i, err);
    }
    case CAIRN_NN_RELU:
        return cairn_nn_add_relu(m, err);
    case CAIRN_NN_GLOBAL_AVGPOOL:
        return cairn_nn_add_global_avgpool(m, err);
    case CAIRN_NN_FLATTEN:
        return as_format(cairn_nn_add_flatten(m, err), i, err);
    }
    return cairn_errorf(err, CAIRN_EUNSUPPORTED, "nn load: layer %d", i);
}

int cairn_nn_load_gguf(cairn_nn_model **out, const cairn_gguf *g, cairn_error *err)
{
    *out = NULL;
    const char *arch;
    if (cairn_gguf_get_str(g, "general.architecture", &arch, NULL, err))
        return cairn_errorf(err, CAIRN_EFORMAT, "nn load: no general.architecture string");
    if (strcmp(arch, CAIRN_NN_GGUF_ARCH) != 0)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "nn load: architecture '%.40s', expected '%s'",
                            arch, CAIRN_NN_GGUF_ARCH);
    cairn_gguf_kv_type et;
    uint64_t cnt;
    const void *arr;
    if (cairn_gguf_get_arr(g, "cairn.cnn.input_shape", &et, &cnt, &arr, err) ||
        et != CAIRN_GGUF_KV_I32 || cnt != 3 || !arr)
        return cairn_errorf(err, CAIRN_EFORMAT, "nn load: cairn.cnn.input_shape must be i32[3]");
    const int32_t *in = arr;
    for (int d = 0; d < 3; d++)
        if (in[d] < 1 || in[d] > CAIRN_NN_MAX_DIM)
            return cairn_errorf(err, in[d] < 1 ? CAIRN_EFORMAT : CAIRN_ELIMIT,
                                "nn load: input dimension %d is %d (allowed 1..%d)", d, in[d],
                                CAIRN_NN_MAX_DIM);
    uint32_t n_layers;
    if (cairn_gguf_get_u32(g, "cairn.cnn.layer_count", &n_layers, err))
        return cairn_errorf(err, CAIRN_EFORMAT, "nn load: cairn.cnn.layer_count missing");
    if (n_layers < 1 || n_layers > CAIRN_NN_MAX_LAYERS)
        return cairn_errorf(err, n_layers < 1 ? CAIRN_EFORMAT : CAIRN_ELIMIT,
                            "nn load: %u layers (allowed 1..%d)", n_layers, CAIRN_NN_MAX_LAYERS);
    if ((size_t)in[0] * in[1] * in[2] > MAX_ACT_ELEMS)
        return cairn_errorf(err, CAIRN_ELIMIT, "nn load: input of %d x %d x %d too large", in[0],
                            in[1], in[2]);

    cairn_nn_model *m;
    int rc = cairn_nn_model_new(&m, in[0], in[1], in[2], err);
    if (rc) return rc;
    for (int i = 0; i < (int)n_layers; i++) {
        rc = build_layer(m, g, i, err);
        if (rc) goto fail;
        if (cairn_nn__act_size(m, m->n_layers) > MAX_ACT_ELEMS) {
            rc = cairn_errorf(err, CAIRN_ELIMIT, "nn load: layer %d output too large", i);
            goto fail;
        }
    }
    if (cairn_gguf_tensor_count(g) != (size_t)m->n_params) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "nn load: %zu tensors in the file, the model has %d",
                          cairn_gguf_tensor_count(g), m->n_params);
        goto fail;
    }
    for (int i = 0; i < m->n_params; i++) {
        cairn_nn_param *p = &m->params[i];
        const cairn_gguf_tensor *t = cairn_gguf_find_tensor(g, p->name);
        /* build_layer checked presence and shape */
        rc = cairn_gguf_dequantize(t, p->value.data, p->value.numel, err);
        if (rc) {
            cairn_error_prefix(err, "nn load: tensor '%s'", p->name);
            goto fail;
        }
        for (size_t j = 0; j < p->value.numel; j++)
            if (!isfinite(p->value.data[j])) {
                rc = cairn_errorf(err, CAIRN_EFORMAT, "nn load: tensor '%s' element %zu is %g",
                                  p->name, j, (double)p->value.data[j]);
                goto fail;
            }
        if (p->kind == CAIRN_NN_RUNNING_VAR)
            for (size_t j = 0; j < p->value.numel; j++)
                if (p->value.data[j] < 0) {
                    rc = cairn_errorf(err, CAIRN_EFORMAT,
                                      "nn load: tensor '%s' element %zu is negative", p->name, j);
                    goto fail;
                }
    }
    *out = m;
    return 0;
fail:
    cairn_nn_model_free(m);
    return rc;
}

int cairn_nn_load(cairn_nn_model **out, const char *path, cairn_error *err)
{
    *out = NULL;
    cairn_gguf *g;
    int rc = cairn_gguf_open(&g, path, err);
    if (rc) return rc;
    rc = cairn_nn_load_gguf(out, g, err);
    cairn_gguf_close(g);
    return rc;
}
