/*
 * adapt/nn/tensor.h — a dense float32 tensor of up to 4 dimensions (NCHW order).
 *
 * A tensor either owns its data (cairn_tensor_alloc, released by cairn_tensor_free) or is a view
 * onto memory owned by someone else (cairn_tensor_view; cairn_tensor_free then only forgets it).
 * Data are contiguous, row-major: the last dimension varies fastest. Part of the forward half of
 * adapt/nn (edge devices link it). A tensor is a plain value: not thread-safe to mutate.
 */
#ifndef CAIRN_ADAPT_NN_TENSOR_H
#define CAIRN_ADAPT_NN_TENSOR_H

#include <stddef.h>

#include "common/error.h"

#define CAIRN_TENSOR_MAX_DIMS 4

typedef struct cairn_tensor {
    float *data;
    int ndim;                         /* 1..CAIRN_TENSOR_MAX_DIMS */
    int shape[CAIRN_TENSOR_MAX_DIMS]; /* unused trailing entries are 1 */
    size_t numel;
    int owned; /* 1 when cairn_tensor_free must release data */
} cairn_tensor;

/*
 * Allocates a zero-filled tensor of the given shape into *t (which the caller owns and later
 * passes to cairn_tensor_free). Returns 0, CAIRN_EINVAL for a bad rank or a dimension < 1,
 * CAIRN_EOVERFLOW when the size does not fit, or CAIRN_ENOMEM.
 */
int cairn_tensor_alloc(cairn_tensor *t, int ndim, const int *shape, cairn_error *err);

/*
 * Makes *t a view of data (not copied, not owned: data must outlive the view).
 * Returns 0 or CAIRN_EINVAL / CAIRN_EOVERFLOW for a bad shape.
 */
int cairn_tensor_view(cairn_tensor *t, float *data, int ndim, const int *shape, cairn_error *err);

/*
 * Gives the tensor a new shape with the same number of elements, keeping the data.
 * Returns 0, or CAIRN_EINVAL when the element counts differ (t is then unchanged).
 */
int cairn_tensor_reshape(cairn_tensor *t, int ndim, const int *shape, cairn_error *err);

/* Releases owned data and zeroes *t. NULL, views and already-freed tensors are no-ops. */
void cairn_tensor_free(cairn_tensor *t);

/* Number of elements a shape holds, or 0 when the shape is invalid or overflows size_t. */
size_t cairn_tensor_shape_numel(int ndim, const int *shape);

#endif
