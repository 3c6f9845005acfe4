/* common/gpu.cu — GPU discovery on CUDA builds. */
#include "common/error.h"
#include "common/gpu.h"

#include <cuda_runtime.h>
#include <stdio.h>

extern "C" int cairn_gpu_built(void) { return 1; }

extern "C" int cairn_gpu_count(char *why, size_t why_len)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess) {
        if (why) snprintf(why, why_len, "CUDA reports: %s", cudaGetErrorString(rc));
        return 0;
    }
    if (n == 0 && why) snprintf(why, why_len, "no CUDA device is present");
    return n;
}

extern "C" int cairn_gpu_describe(int idx, char *buf, size_t len)
{
    cudaDeviceProp p;
    cudaError_t rc = cudaGetDeviceProperties(&p, idx);
    if (rc != cudaSuccess) {
        snprintf(buf, len, "device %d: %s", idx, cudaGetErrorString(rc));
        return CAIRN_EDEVICE;
    }
    snprintf(buf, len, "%s, sm_%d%d, %zu MiB", p.name, p.major, p.minor,
             (size_t)(p.totalGlobalMem >> 20));
    return CAIRN_OK;
}
