/*
 * generation/kernels/cuda/emu/include/emu.h — a host emulation of the part of CUDA, its
 * runtime and cuBLAS that the CUDA backend uses, so that its kernels can run (slowly) on a
 * machine without a GPU, for checking their indexing, races at barriers and memory accesses
 * (under AddressSanitizer: device memory is host memory) against the CPU backend.
 *
 * A launch runs its blocks one after another, each block's threads as host threads
 * (__syncthreads is a barrier, warp shuffles exchange through per-warp barriers); a thread
 * that returns counts as arrived at every later barrier, as on the GPU. Streams and events do
 * nothing (everything runs at once, in order), stream capture records launches and device
 * copies into a graph that cudaGraphLaunch runs again, and cublasGemmEx multiplies in a plain
 * loop. Not emulated: timing; the GPU's own sin/cos/exp (the host's libm stands in); and the
 * memory model inside a warp: a shuffle here is a barrier for the whole warp, on the GPU it
 * orders only the shuffle, so a lane's shared-memory write after a shuffle can still race
 * with another lane's read before it (compute-sanitizer's racecheck finds those; scripts/
 * gpu-check race). The .cu files go through convert.py first (launches, dynamic shared
 * memory). Not for production builds.
 */
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <tuple>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static /* blocks run one at a time: a static is the block's */
#define __launch_bounds__(...)

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
extern thread_local dim3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
static inline float2 make_float2(float a, float b) { return float2{a, b}; }
static inline int4 make_int4(int a, int b, int c, int d) { return int4{a, b, c, d}; }
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d)
{
    return uint4{a, b, c, d};
}

/* Half and bfloat16 through proto/gguf's conversions (round to nearest even, as the GPU). */
extern "C" float cairn_gguf_f16_to_f32(uint16_t h);
extern "C" uint16_t cairn_gguf_f32_to_f16(float f);
extern "C" uint16_t cairn_gguf_f32_to_bf16(float f);
struct __half { uint16_t x; };
struct __attribute__((aligned(4))) __half2 { __half a, b; };
struct __nv_bfloat16 { uint16_t x; };
static inline float __half2float(__half h) { return cairn_gguf_f16_to_f32(h.x); }
static inline __half __float2half_rn(float f) { return __half{cairn_gguf_f32_to_f16(f)}; }
static inline __half __ushort_as_half(uint16_t u) { return __half{u}; }
static inline uint16_t __half_as_ushort(__half h) { return h.x; }
static inline __half2 __float2half2_rn(float f)
{
    return __half2{__float2half_rn(f), __float2half_rn(f)};
}
static inline __half2 __floats2half2_rn(float a, float b)
{
    return __half2{__float2half_rn(a), __float2half_rn(b)};
}
static inline float2 __half22float2(__half2 h)
{
    return make_float2(__half2float(h.a), __half2float(h.b));
}
static inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    return __nv_bfloat16{cairn_gguf_f32_to_bf16(f)};
}
static inline uint16_t __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }
static inline float __uint_as_float(unsigned u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline unsigned __float_as_uint(float f)
{
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
static inline int __float2int_rn(float f) { return (int)nearbyintf(f); }
static inline int min(int a, int b) { return a < b ? a : b; }
template <class T> static inline T __ldg(const T *p) { return *p; }
/* Rounded on their own, never fused (the host build does not contract across a volatile). */
static inline float __fmul_rn(float a, float b)
{
    volatile float r = a * b;
    return r;
}
static inline float __fadd_rn(float a, float b)
{
    volatile float r = a + b;
    return r;
}
static inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline int __dp4a(int a, int b, int c)
{
    for (int i = 0; i < 4; i++)
        c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
}
static inline int __vsub4(int a, int b)
{
    unsigned r = 0;
    for (int i = 0; i < 4; i++)
        r |= (unsigned)(uint8_t)((uint8_t)(a >> (8 * i)) - (uint8_t)(b >> (8 * i))) << (8 * i);
    return (int)r;
}
void __syncthreads();
void __syncwarp(unsigned mask = 0xffffffffu);
float emu_shfl_f(float v, int o);
int emu_shfl_i(int v, int o);
static inline float __shfl_xor_sync(unsigned, float v, int o) { return emu_shfl_f(v, o); }
static inline int __shfl_xor_sync(unsigned, int v, int o) { return emu_shfl_i(v, o); }

/* ---- Runtime ---- */
typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
} cudaError_t;
typedef enum {
    cudaMemcpyHostToDevice,
    cudaMemcpyDeviceToHost,
    cudaMemcpyDeviceToDevice,
} cudaMemcpyKind;
typedef struct emu_stream *cudaStream_t;
typedef struct emu_event *cudaEvent_t;
typedef struct emu_graph *cudaGraph_t;
typedef struct emu_graph *cudaGraphExec_t;
struct cudaDeviceProp {
    char name[256];
    int major, minor;
    size_t totalGlobalMem;
    int multiProcessorCount;
    size_t sharedMemPerBlockOptin;
};
enum {
    cudaStreamNonBlocking = 1,
    cudaEventDefault = 0,
    cudaEventDisableTiming = 2,
    cudaHostAllocDefault = 0,
    cudaHostAllocPortable = 1,
    cudaStreamCaptureModeRelaxed = 2,
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};
cudaError_t cudaSetDevice(int);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *, int);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *, unsigned);
cudaError_t cudaStreamDestroy(cudaStream_t);
cudaError_t cudaStreamSynchronize(cudaStream_t);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *, unsigned);
cudaError_t cudaEventDestroy(cudaEvent_t);
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t);
cudaError_t cudaEventSynchronize(cudaEvent_t);
cudaError_t cudaMalloc(void **, size_t);
template <class T> cudaError_t cudaMalloc(T **p, size_t n) { return cudaMalloc((void **)p, n); }
cudaError_t cudaFree(void *);
cudaError_t cudaMallocHost(void **, size_t);
cudaError_t cudaFreeHost(void *);
cudaError_t cudaMemcpyAsync(void *, const void *, size_t, cudaMemcpyKind, cudaStream_t);
/* What the retrieval store (retrieval/cuda) uses besides: streams run at once, so a wait is
 * nothing and an elapsed time is a nominal millisecond. */
static inline cudaError_t cudaHostAlloc(void **p, size_t n, unsigned) { return cudaMallocHost(p, n); }
template <class T> cudaError_t cudaHostAlloc(T **p, size_t n, unsigned f)
{
    return cudaHostAlloc((void **)p, n, f);
}
static inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned)
{
    return cudaSuccess;
}
static inline cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
static inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t, cudaEvent_t)
{
    *ms = 1.0f;
    return cudaSuccess;
}
static inline cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}
static inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k)
{
    return cudaMemcpyAsync(d, s, n, k, nullptr);
}
static inline cudaError_t cudaMemset(void *d, int v, size_t n)
{
    memset(d, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *, size_t *);
cudaError_t cudaGetLastError(void);
const char *cudaGetErrorString(cudaError_t);
const char *cudaGetErrorName(cudaError_t);
void emu_allow_smem(size_t);
template <class F> cudaError_t cudaFuncSetAttribute(F, int, int v)
{
    emu_allow_smem((size_t)v);
    return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t, int);
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *, cudaGraph_t, unsigned long long);
cudaError_t cudaGraphLaunch(cudaGraphExec_t, cudaStream_t);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t);
cudaError_t cudaGraphDestroy(cudaGraph_t);

/* A launch (convert.py rewrites kernel<<<grid, block, smem, stream>>>(args) into this, with
 * the arguments evaluated at the launch, as CUDA does). */
void emu_run(dim3 grid, dim3 block, size_t smem, std::function<void()> f);
void *emu_dyn_smem();
namespace emu {
template <class F> void launch(dim3 g, dim3 b, size_t smem, cudaStream_t, F f)
{
    emu_run(g, b, smem, f);
}
} // namespace emu

/* cudaLaunchKernelEx: the emulation runs every kernel after the one before it, so a launch
 * attribute (programmatic dependent launch) changes nothing. */
typedef enum { cudaLaunchAttributeProgrammaticStreamSerialization = 6 } cudaLaunchAttributeID;
typedef struct {
    int programmaticStreamSerializationAllowed;
} cudaLaunchAttributeValue;
typedef struct {
    cudaLaunchAttributeID id;
    cudaLaunchAttributeValue val;
} cudaLaunchAttribute;
typedef struct {
    dim3 gridDim, blockDim;
    size_t dynamicSmemBytes;
    cudaStream_t stream;
    cudaLaunchAttribute *attrs;
    unsigned numAttrs;
} cudaLaunchConfig_t;
template <class... P, class... A>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t *c, void (*k)(P...), A... a)
{
    auto args = std::make_tuple(P(a)...);
    emu_run(c->gridDim, c->blockDim, c->dynamicSmemBytes, [args, k] { std::apply(k, args); });
    return cudaSuccess;
}

/* ---- cuBLAS ---- */
typedef enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7 } cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
typedef struct emu_blas *cublasHandle_t;
cublasStatus_t cublasCreate(cublasHandle_t *);
cublasStatus_t cublasDestroy(cublasHandle_t);
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t);
cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t);
const char *cublasGetStatusString(cublasStatus_t);
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t, cublasOperation_t, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType at, int lda,
                            const void *B, cudaDataType bt, int ldb, const void *beta, void *C,
                            cudaDataType ct, int ldc, cublasComputeType_t, cublasGemmAlgo_t);
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t, cublasOperation_t,
                                          int m, int n, int k, const void *alpha, const void *A,
                                          cudaDataType at, int lda, long long sa, const void *B,
                                          cudaDataType bt, int ldb, long long sb,
                                          const void *beta, void *C, cudaDataType ct, int ldc,
                                          long long sc, int batch, cublasComputeType_t,
                                          cublasGemmAlgo_t);
