/* adapt/models.c — edge and foundation CNN definitions. */
#include "adapt/models.h"

#include <stdio.h>
#include <string.h>

const char *cairn_model_arch_name(cairn_model_arch a)
{
    return a == CAIRN_MODEL_EDGE ? "edge" : "foundation";
}

int cairn_model_arch_parse(const char *s, cairn_model_arch *out, cairn_error *err)
{
    if (s && strcmp(s, "edge") == 0)
        *out = CAIRN_MODEL_EDGE;
    else if (s && strcmp(s, "foundation") == 0)
        *out = CAIRN_MODEL_FOUNDATION;
    else
        return cairn_errorf(err, CAIRN_EINVAL, "unknown model '%s' (edge or foundation)",
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
    *out = NULL;
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
