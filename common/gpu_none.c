/* common/gpu_none.c — GPU discovery on builds without CUDA: there is none. */
#include "common/error.h"
#include "common/gpu.h"

#include <stdio.h>

int cairn_gpu_built(void) { return 0; }

int cairn_gpu_count(char *why, size_t why_len)
{
    if (why) snprintf(why, why_len, "this build has no CUDA support (CAIRN_CUDA=OFF)");
    return 0;
}

int cairn_gpu_describe(int idx, char *buf, size_t len)
{
    snprintf(buf, len, "device %d: no CUDA support in this build", idx);
    return CAIRN_EUNSUPPORTED;
}
