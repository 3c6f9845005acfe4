/* tests/bench/cuda/peak.h — the GPU's best read bandwidth and BF16 GEMM rate (peak.cu). */
#ifndef CAIRN_TESTS_BENCH_CUDA_PEAK_H
#define CAIRN_TESTS_BENCH_CUDA_PEAK_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* GB/s reading `bytes` once (best of 5 passes). 0, or -1 with the CUDA call in why. */
int cairn_peak_read_gbs(int device, size_t bytes, double *gbs, char *why, size_t why_len);

/* TFLOP/s of C[m x n] = A^T B, BF16 in and out, FP32 accumulation (best of 5 x 10 calls). */
int cairn_peak_gemm_tflops(int device, int m, int n, int k, double *tflops, char *why,
                           size_t why_len);

#ifdef __cplusplus
}
#endif
#endif
