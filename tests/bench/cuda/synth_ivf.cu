/*
 * tests/bench/cuda/synth_ivf.cu — see synth_ivf.h. The vectors are made on the GPU because a
 * 10 GB index cannot travel to the GPU machine and 2.5e9 Gaussian draws take a CPU seconds.
 */
#include "tests/bench/cuda/synth_ivf.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(call)                                                                                 \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess) {                                                                 \
            snprintf(why, why_len, "%s: %s", #call, cudaGetErrorString(e_));                     \
            goto out;                                                                            \
        }                                                                                        \
    } while (0)

__device__ unsigned long long mix64(unsigned long long z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A standard normal from the hash of (seed, vector, dimension): Box-Muller on two uniforms. */
__device__ float gauss(unsigned long long seed, unsigned long long v, int j)
{
    unsigned long long h = mix64(seed ^ mix64(v * 0x100000001b3ull + (unsigned long long)j));
    float u1 = ((h >> 40) + 0.5f) / 16777216.0f, u2 = (((h >> 16) & 0xffffff) + 0.5f) / 16777216.0f;
    return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

/* One block per vector: out[i] = normalize(center[list[i]] + noise * g / sqrt(dim)). */
__global__ void synth(const float *__restrict__ centers, const int *__restrict__ list, int dim,
                      float noise, unsigned long long seed, unsigned long long first,
                      float *__restrict__ out)
{
    __shared__ float part[256];
    size_t i = blockIdx.x;
    const float *c = centers + (size_t)list[i] * dim;
    float *o = out + i * dim, scale = noise * rsqrtf((float)dim), ss = 0;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float x = c[j] + scale * gauss(seed, first + i, j);
        o[j] = x;
        ss += x * x;
    }
    part[threadIdx.x] = ss;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    float inv = rsqrtf(part[0]);
    for (int j = threadIdx.x; j < dim; j += blockDim.x)
        o[j] *= inv;
}

extern "C" int cairn_bench_synth_lists(int device, int dim, size_t nlist, const float *centers,
                                       const size_t *n, float noise, uint64_t seed,
                                       float *const *vecs, char *why, size_t why_len)
{
    const size_t batch = 65536; /* vectors per launch */
    int rc = -1;
    float *dc = NULL, *dout = NULL;
    int *dlist = NULL, *hlist = NULL;
    cudaStream_t st = NULL;
    size_t c = 0, r = 0, done = 0;
    CK(cudaSetDevice(device));
    CK(cudaMalloc(&dc, nlist * (size_t)dim * sizeof(float)));
    CK(cudaMemcpy(dc, centers, nlist * (size_t)dim * sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaMalloc(&dout, batch * (size_t)dim * sizeof(float)));
    CK(cudaMalloc(&dlist, batch * sizeof(int)));
    CK(cudaMallocHost(&hlist, batch * sizeof(int)));
    CK(cudaStreamCreate(&st));
    while (c < nlist) {
        /* The next batch: from (list c, row r) on, whole lists or a part of one. */
        size_t m = 0, c0 = c, r0 = r;
        while (c < nlist && m < batch) {
            size_t take = n[c] - r < batch - m ? n[c] - r : batch - m;
            for (size_t k = 0; k < take; k++)
                hlist[m + k] = (int)c;
            m += take;
            r += take;
            if (r == n[c]) {
                c++;
                r = 0;
            }
        }
        if (m == 0)
            break;
        CK(cudaMemcpyAsync(dlist, hlist, m * sizeof(int), cudaMemcpyHostToDevice, st));
        synth<<<(unsigned)m, 256, 0, st>>>(dc, dlist, dim, noise, seed, done, dout);
        CK(cudaGetLastError());
        /* Back to each list's place on the host. */
        size_t at = 0, cc = c0, rr = r0;
        while (at < m) {
            size_t take = n[cc] - rr < m - at ? n[cc] - rr : m - at;
            CK(cudaMemcpyAsync(vecs[cc] + rr * dim, dout + at * dim, take * dim * sizeof(float),
                               cudaMemcpyDeviceToHost, st));
            at += take;
            rr += take;
            if (rr == n[cc]) {
                cc++;
                rr = 0;
            }
        }
        CK(cudaStreamSynchronize(st)); /* hlist and dout are reused by the next batch */
        done += m;
    }
    rc = 0;
out:
    if (st)
        cudaStreamDestroy(st);
    cudaFree(dc);
    cudaFree(dout);
    cudaFree(dlist);
    cudaFreeHost(hlist);
    return rc;
}

extern "C" int cairn_bench_pinned_h2d_gbs(int device, size_t bytes, double *gbs, char *why,
                                          size_t why_len)
{
    int rc = -1;
    void *h = NULL, *d = NULL;
    cudaEvent_t a = NULL, b = NULL;
    float best = 1e30f;
    CK(cudaSetDevice(device));
    CK(cudaMallocHost(&h, bytes));
    CK(cudaMalloc(&d, bytes));
    CK(cudaMemset(d, 0, bytes));
    for (size_t i = 0; i < bytes; i += 4096)
        ((char *)h)[i] = (char)i; /* touch every page */
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int r = 0; r < 6; r++) { /* the first run warms up; best of the rest */
        CK(cudaEventRecord(a));
        CK(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice));
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (r > 0 && ms < best)
            best = ms;
    }
    *gbs = (double)bytes / (best / 1e3) / 1e9;
    rc = 0;
out:
    cudaFreeHost(h);
    cudaFree(d);
    if (a)
        cudaEventDestroy(a);
    if (b)
        cudaEventDestroy(b);
    return rc;
}
