/* adapt/nn/tensor.c — owned and view float32 tensors (see tensor.h). */
#include "adapt/nn/tensor.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

size_t cairn_tensor_shape_numel(int ndim, const int *shape)
{
    if (ndim < 1 || ndim > CAIRN_TENSOR_MAX_DIMS || shape == NULL) return 0;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 1) return 0;
        if (n > SIZE_MAX / sizeof(float) / (size_t)shape[i]) return 0;
        n *= (size_t)shape[i];
    }
    return n;
}

static int set_shape(cairn_tensor *t, int ndim, const int *shape, cairn_error *err)
{
    if (ndim < 1 || ndim > CAIRN_TENSOR_MAX_DIMS || shape == NULL)
        return cairn_errorf(err, CAIRN_EINVAL, "tensor: rank %d outside 1..%d", ndim,
                            CAIRN_TENSOR_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 1)
            return cairn_errorf(err, CAIRN_EINVAL, "tensor: dimension %d is %d (< 1)", i, shape[i]);
    size_t n = cairn_tensor_shape_numel(ndim, shape);
    if (n == 0) return cairn_errorf(err, CAIRN_EOVERFLOW, "tensor: size overflows");
    t->ndim = ndim;
    for (int i = 0; i < CAIRN_TENSOR_MAX_DIMS; i++)
        t->shape[i] = i < ndim ? shape[i] : 1;
    t->numel = n;
    return 0;
}

int cairn_tensor_alloc(cairn_tensor *t, int ndim, const int *shape, cairn_error *err)
{
    cairn_tensor tmp = {0};
    int rc = set_shape(&tmp, ndim, shape, err);
    if (rc) return rc;
    tmp.data = calloc(tmp.numel, sizeof(float));
    if (!tmp.data)
        return cairn_errorf(err, CAIRN_ENOMEM, "tensor: cannot allocate %zu floats", tmp.numel);
    tmp.owned = 1;
    *t = tmp;
    return 0;
}

int cairn_tensor_view(cairn_tensor *t, float *data, int ndim, const int *shape, cairn_error *err)
{
    cairn_tensor tmp = {0};
    int rc = set_shape(&tmp, ndim, shape, err);
    if (rc) return rc;
    tmp.data = data;
    tmp.owned = 0;
    *t = tmp;
    return 0;
}

int cairn_tensor_reshape(cairn_tensor *t, int ndim, const int *shape, cairn_error *err)
{
    cairn_tensor tmp = *t;
    int rc = set_shape(&tmp, ndim, shape, err);
    if (rc) return rc;
    if (tmp.numel != t->numel)
        return cairn_errorf(err, CAIRN_EINVAL, "tensor: reshape from %zu to %zu elements", t->numel,
                            tmp.numel);
    *t = tmp;
    return 0;
}

void cairn_tensor_free(cairn_tensor *t)
{
    if (!t) return;
    if (t->owned) free(t->data);
    memset(t, 0, sizeof(*t));
}
