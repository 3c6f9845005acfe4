/* tests/bench/cuda/synth_ivf.h — a synthetic IVF index made on the GPU, and the pinned
 * host-to-device copy rate (synth_ivf.cu), for bench_cuda_retrieval. */
#ifndef CAIRN_TESTS_BENCH_CUDA_SYNTH_IVF_H
#define CAIRN_TESTS_BENCH_CUDA_SYNTH_IVF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Fills vecs[c] (n[c] * dim floats each, host memory, page-locked for speed) for the nlist
 * lists: vector i of list c is normalize(centers[c] + noise * g) with g ~ N(0, I / dim) drawn
 * from a counter-based hash of (seed, i, dimension), computed on GPU `device` and copied back.
 * 0, or -1 with the CUDA call in why.
 */
int cairn_bench_synth_lists(int device, int dim, size_t nlist, const float *centers,
                            const size_t *n, float noise, uint64_t seed, float *const *vecs,
                            char *why, size_t why_len);

/* GB/s copying `bytes` from page-locked host memory to the GPU (best of 5). 0 or -1. */
int cairn_bench_pinned_h2d_gbs(int device, size_t bytes, double *gbs, char *why, size_t why_len);

#ifdef __cplusplus
}
#endif
#endif
