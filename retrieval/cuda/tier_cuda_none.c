/*
 * retrieval/cuda/tier_cuda_none.c — the CUDA store on builds without CUDA: there is none
 * (tier_cuda.cu is the real one). Callers need no #ifdef: opening answers CAIRN_EUNSUPPORTED.
 */
#include "retrieval/tier_store.h"

#include <stdio.h>

int cairn_tier_store_cuda_open(cairn_tier_store **out, const cairn_tier_store_params *p,
                               cairn_error *err)
{
    *out = NULL;
    return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                        "tier: GPU %d: this build has no CUDA support (CAIRN_CUDA=OFF)",
                        p->device);
}

void *cairn_tier_pinned_alloc(int device, size_t bytes, char *why, size_t why_len)
{
    if (why)
        snprintf(why, why_len, "GPU %d, %zu bytes: this build has no CUDA support", device,
                 bytes);
    return NULL;
}

void cairn_tier_pinned_free(void *p) { (void)p; }
