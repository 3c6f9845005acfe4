/*
 * retrieval/cuda/embed_cuda_none.c — the GPU embedder on builds without CUDA: there is none
 * (embed_cuda.cu is the real one). Opening answers CAIRN_EUNSUPPORTED, so that a caller asking
 * for a GPU learns why and can fall back to the CPU.
 */
#include "retrieval/embed_cuda.h"

#include <stddef.h>

int cairn__embed_cuda_open(cairn__embed_cuda **out, int device, const cairn__embed_cuda_model *m,
                           cairn_error *err)
{
    (void)m;
    *out = NULL;
    return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                        "embed: GPU %d: this build has no CUDA support (CAIRN_CUDA=OFF); "
                        "embed on the CPU (device -1)",
                        device);
}

void cairn__embed_cuda_close(cairn__embed_cuda *g)
{
    (void)g;
}

int cairn__embed_cuda_forward(cairn__embed_cuda *g, const int32_t *ids, const int *start,
                              const int *len, int nseq, int ntok, float *out, cairn_error *err)
{
    (void)g, (void)ids, (void)start, (void)len, (void)nseq, (void)ntok, (void)out;
    return cairn_errorf(err, CAIRN_EUNSUPPORTED, "embed: this build has no CUDA support");
}
