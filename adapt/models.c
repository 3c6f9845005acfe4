/* adapt/models.c — edge, foundation and foundation-res CNN definitions. */
#include "adapt/models.h"

#include <stdio.h>
#include <string.h>

const char *cairn_model_arch_name(cairn_model_arch a)
{
    return a == CAIRN_MODEL_EDGE ? "edge"
           : a == CAIRN_MODEL_FOUNDATION_RES ? "foundation-res"
                                             : "foundation";
}

int cairn_model_arch_parse(const char *s, cairn_model_arch *out, cairn_error *err)
{
    if (s && strcmp(s, "edge") == 0)
        *out = CAIRN_MODEL_EDGE;
    else if (s && strcmp(s, "foundation") == 0)
        *out = CAIRN_MODEL_FOUNDATION;
    else if (s && strcmp(s, "foundation-res") == 0)
        *out = CAIRN_MODEL_FOUNDATION_RES;
    else
        return cairn_errorf(err, CAIRN_EINVAL,
                            "unknown model '%s' (edge, foundation or foundation-res)",
                            s ? s : "(null)");
    return 0;
}

/* conv (no bias) -> batchnorm -> relu, named conv<i> / bn<i>. */
static int conv_bn_relu(cairn_nn_model *m, int i, int out_c, cairn_error *err)
{
    char cn[16], bn[16];
    snprintf(cn, sizeof(cn), "conv%d", i);
    snprintf(bn, sizeof(bn), "bn%d", i);
    int rc = cairn_nn_add_conv2d(m, cn, out_c, 3, 1, 1, 0, err);
    if (!rc) rc = cairn_nn_add_batchnorm2d(m, bn, 1e-5f, 0.1f, err);
    if (!rc) rc = cairn_nn_add_relu(m, err);
    return rc;
}

int cairn_model_build(cairn_model_arch a, cairn_nn_model **out, cairn_error *err)
{
    return cairn_model_build_width(a, 0, out, err);
}

/*
 * The residual teacher. Downsampling early (the first block already halves 28 -> 14) keeps the
 * cost per image near 4x the plain foundation's while most parameters sit in the 4x4 stage.
 */
static int build_res(cairn_nn_model *m, int w, cairn_error *err)
{
    const float eps = 1e-5f, mom = 0.1f;
    int rc = cairn_nn_add_conv2d(m, "stem", w / 2, 3, 1, 1, 0, err); /* w/2 x 28 x 28 */
    if (!rc) rc = cairn_nn_add_batchnorm2d(m, "stem_bn", eps, mom, err);
    if (!rc) rc = cairn_nn_add_relu(m, err);
    if (!rc) rc = cairn_nn_add_resblock(m, "s1.b0", w, 2, eps, mom, err);     /* w x 14 x 14 */
    if (!rc) rc = cairn_nn_add_resblock(m, "s2.b0", 2 * w, 2, eps, mom, err); /* 2w x 7 x 7 */
    if (!rc) rc = cairn_nn_add_resblock(m, "s2.b1", 2 * w, 1, eps, mom, err);
    if (!rc) rc = cairn_nn_add_resblock(m, "s3.b0", 4 * w, 2, eps, mom, err); /* 4w x 4 x 4 */
    if (!rc) rc = cairn_nn_add_resblock(m, "s3.b1", 4 * w, 1, eps, mom, err);
    if (!rc) rc = cairn_nn_add_global_avgpool(m, err);
    if (!rc) rc = cairn_nn_add_flatten(m, err);
    if (!rc) rc = cairn_nn_add_linear(m, "fc", 10, 1, err);
    return rc;
}

int cairn_model_build_width(cairn_model_arch a, int width, cairn_nn_model **out, cairn_error *err)
{
    *out = NULL;
    if (a == CAIRN_MODEL_FOUNDATION_RES ? (width != 0 && (width < 2 || width > 1024 || width % 2))
                                        : width != 0)
        return cairn_errorf(err, CAIRN_EINVAL, "model %s: width %d not allowed",
                            cairn_model_arch_name(a), width);
    cairn_nn_model *m;
    int rc = cairn_nn_model_new(&m, 1, 28, 28, err);
    if (rc) return rc;
    if (a == CAIRN_MODEL_EDGE) {
        if (!rc) rc = conv_bn_relu(m, 1, 16, err);          /* 16 x 28 x 28 */
        if (!rc) rc = conv_bn_relu(m, 2, 32, err);          /* 32 x 28 x 28 */
        if (!rc) rc = cairn_nn_add_maxpool2d(m, 2, 2, err); /* 32 x 14 x 14 */
        if (!rc) rc = conv_bn_relu(m, 3, 32, err);          /* 32 x 14 x 14 */
        if (!rc) rc = cairn_nn_add_maxpool2d(m, 2, 2, err); /* 32 x 7 x 7 */
        if (!rc) rc = cairn_nn_add_flatten(m, err);         /* 1568 */
        if (!rc) rc = cairn_nn_add_linear(m, "fc1", 48, 1, err);
        if (!rc) rc = cairn_nn_add_relu(m, err);
        if (!rc) rc = cairn_nn_add_linear(m, "fc2", 10, 1, err);
    } else if (a == CAIRN_MODEL_FOUNDATION) {
        if (!rc) rc = conv_bn_relu(m, 1, 32, err); /* 32 x 28 x 28 */
        if (!rc) rc = conv_bn_relu(m, 2, 32, err);
        if (!rc) rc = cairn_nn_add_maxpool2d(m, 2, 2, err); /* 32 x 14 x 14 */
        if (!rc) rc = conv_bn_relu(m, 3, 64, err);          /* 64 x 14 x 14 */
        if (!rc) rc = conv_bn_relu(m, 4, 64, err);
        if (!rc) rc = cairn_nn_add_maxpool2d(m, 2, 2, err); /* 64 x 7 x 7 */
        if (!rc) rc = cairn_nn_add_flatten(m, err);         /* 3136 */
        if (!rc) rc = cairn_nn_add_linear(m, "fc1", 256, 1, err);
        if (!rc) rc = cairn_nn_add_relu(m, err);
        if (!rc) rc = cairn_nn_add_linear(m, "fc2", 10, 1, err);
    } else if (a == CAIRN_MODEL_FOUNDATION_RES) {
        rc = build_res(m, width ? width : CAIRN_MODEL_RES_WIDTH, err);
    } else {
        rc = cairn_errorf(err, CAIRN_EINVAL, "unknown model architecture %d", (int)a);
    }
    if (rc) {
        cairn_nn_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}
