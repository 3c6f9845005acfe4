/*
 * common/gpu.h — what GPUs this process can use.
 *
 * Built as gpu.cu on CUDA builds and as gpu_none.c otherwise, so callers never
 * need #ifdefs to ask whether a GPU is present.
 */
#ifndef CAIRN_COMMON_GPU_H
#define CAIRN_COMMON_GPU_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when this binary was built with CUDA, 0 otherwise. */
int cairn_gpu_built(void);

/*
 * Number of usable CUDA devices (0 when none, no driver, or a CPU-only build).
 * When it returns 0, why[] (if given) says why in a sentence. Thread-safe.
 */
int cairn_gpu_count(char *why, size_t why_len);

/* Writes "NAME, sm_XY, N MiB" for device idx into buf. 0 or a negative CAIRN_E* code. */
int cairn_gpu_describe(int idx, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
