/*
 * tests/bench/cuda/peak.cu — what the GPU can do at best, timed in the same run as the engine:
 * read bandwidth (one pass over a buffer far larger than L2, 16-byte loads, every byte used)
 * and cuBLAS BF16 GEMM throughput (tensor cores, FP32 accumulation). The engine's figures are
 * quoted as fractions of these (bench_cuda_generate.c).
 */
#include "tests/bench/cuda/peak.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>

/* Each thread sums its uint4s; one atomicAdd per block keeps the reads from being dropped. */
__global__ void read_kernel(const uint4 *__restrict__ p, size_t n, unsigned long long *sink)
{
    unsigned int acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldcs(p + i); /* streaming: no reuse */
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    __shared__ unsigned int s;
    if (threadIdx.x == 0)
        s = 0;
    __syncthreads();
    atomicXor(&s, acc);
    __syncthreads();
    if (threadIdx.x == 0)
        atomicAdd(sink, (unsigned long long)s);
}

/* Random BF16 values in [-1, 1): a product of zeros runs faster than one of real data. */
__global__ void fill_random(__nv_bfloat16 *p, size_t n, unsigned seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        p[i] = __float2bfloat16((float)(h & 0xffff) / 32768.0f - 1.0f);
    }
}

#define CK(call)                                                                                 \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess) {                                                                 \
            snprintf(why, why_len, "%s: %s", #call, cudaGetErrorString(e_));                     \
            goto out;                                                                            \
        }                                                                                        \
    } while (0)

extern "C" int cairn_peak_read_gbs(int device, size_t bytes, double *gbs, char *why,
                                   size_t why_len)
{
    int rc = -1, sms = 0;
    uint4 *buf = NULL;
    unsigned long long *sink = NULL;
    cudaEvent_t a = NULL, b = NULL;
    float best = 1e30f;
    CK(cudaSetDevice(device));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    CK(cudaMalloc(&buf, bytes));
    CK(cudaMemset(buf, 1, bytes));
    CK(cudaMalloc(&sink, sizeof *sink));
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int r = 0; r < 6; r++) { /* the first run warms up; best of the rest */
        CK(cudaEventRecord(a));
        read_kernel<<<sms * 8, 512>>>(buf, bytes / sizeof(uint4), sink);
        CK(cudaGetLastError());
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
    cudaFree(buf);
    cudaFree(sink);
    if (a)
        cudaEventDestroy(a);
    if (b)
        cudaEventDestroy(b);
    return rc;
}

extern "C" int cairn_peak_gemm_tflops(int device, int m, int n, int k, double *tflops, char *why,
                                      size_t why_len)
{
    int rc = -1;
    __nv_bfloat16 *A = NULL, *B = NULL, *C = NULL;
    cublasHandle_t h = NULL;
    cudaEvent_t a = NULL, b = NULL;
    float best = 1e30f, one = 1.0f, zero = 0.0f;
    CK(cudaSetDevice(device));
    CK(cudaMalloc(&A, sizeof(*A) * (size_t)m * k));
    CK(cudaMalloc(&B, sizeof(*B) * (size_t)k * n));
    CK(cudaMalloc(&C, sizeof(*C) * (size_t)m * n));
    fill_random<<<1024, 256>>>(A, (size_t)m * k, 1u);
    fill_random<<<1024, 256>>>(B, (size_t)k * n, 2u);
    CK(cudaGetLastError());
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, why_len, "cublasCreate failed");
        goto out;
    }
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int r = 0; r < 6; r++) {
        CK(cudaEventRecord(a));
        for (int i = 0; i < 10; i++) {
            cublasStatus_t s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, A,
                                            CUDA_R_16BF, k, B, CUDA_R_16BF, k, &zero, C,
                                            CUDA_R_16BF, m, CUBLAS_COMPUTE_32F,
                                            CUBLAS_GEMM_DEFAULT);
            if (s != CUBLAS_STATUS_SUCCESS) {
                snprintf(why, why_len, "cublasGemmEx: status %d", (int)s);
                goto out;
            }
        }
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (r > 0 && ms / 10 < best)
            best = ms / 10;
    }
    *tflops = 2.0 * m * n * (double)k / (best / 1e3) / 1e12;
    rc = 0;
out:
    if (h)
        cublasDestroy(h);
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
    if (a)
        cudaEventDestroy(a);
    if (b)
        cudaEventDestroy(b);
    return rc;
}
