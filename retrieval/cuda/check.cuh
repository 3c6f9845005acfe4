/*
 * retrieval/cuda/check.cuh — how retrieval's CUDA code (tier_cuda.cu, embed_cuda.cu) turns a
 * failed CUDA runtime call into a CAIRN_E* error that names the call. Internal.
 */
#ifndef CAIRN_RETRIEVAL_CUDA_CHECK_CUH
#define CAIRN_RETRIEVAL_CUDA_CHECK_CUH

#include "common/error.h"

#include <cuda_runtime.h>

/* CAIRN_ENOMEM for an allocation, else CAIRN_EDEVICE, with "who: call: CUDA's message" in err.
 * A non-sticky error is cleared first, so that the next call starts clean. */
static inline int cairn__rcuda_fail(cairn_error *err, const char *who, const char *call,
                                    cudaError_t e)
{
    (void)cudaGetLastError();
    return cairn_errorf(err, e == cudaErrorMemoryAllocation ? CAIRN_ENOMEM : CAIRN_EDEVICE,
                        "%s: %s: %s", who, call, cudaGetErrorString(e));
}

/* In a function with a `cairn_error *err` in scope: returns the error of a failed call. */
#define CAIRN__RCUDA_CHECK(who, call)                                                            \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess)                                                                   \
            return cairn__rcuda_fail(err, (who), #call, e_);                                     \
    } while (0)

#endif
