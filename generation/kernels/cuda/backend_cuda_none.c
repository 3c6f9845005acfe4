/*
 * generation/kernels/cuda/backend_cuda_none.c — cairn_backend_cuda_open on builds without CUDA
 * (the CMake of generation/ builds this file instead of the .cu files), so that callers never
 * need an #ifdef to ask for a GPU.
 */
#include "generation/backend.h"

#include <stddef.h>

int cairn_backend_cuda_open(cairn_backend **out, int device, cairn_error *err)
{
    *out = NULL;
    return cairn_errorf(err, CAIRN_EUNSUPPORTED, "cairn was built without CUDA (GPU %d asked for)",
                        device);
}
