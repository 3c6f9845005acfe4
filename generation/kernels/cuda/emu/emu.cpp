/*
 * generation/kernels/cuda/emu/emu.cpp — the CUDA emulation's runtime (see include/emu.h).
 *
 * Launches: a pool of host threads, one per CUDA thread of a block, runs the blocks one after
 * another. Barriers: a block barrier and one per warp, rebuilt for every block; a thread that
 * returns drops out of them (arrive_and_drop), as an exited thread on the GPU no longer holds a
 * barrier. Fresh shared and device memory is filled with 0xFF bytes (NaN as floats), so that a
 * read of something never written shows.
 */
#include "emu.h"

#include <barrier>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

static std::vector<unsigned char> g_smem;
static std::barrier<> *g_block_bar;
static std::vector<std::barrier<> *> g_warp_bar;
static std::vector<float> g_slot_f;
static std::vector<int> g_slot_i;
static thread_local int t_linear;
static size_t g_smem_allowed = 48 * 1024;
static size_t g_kernels, g_graph_launches, g_graph_kernels, g_captures;

void __syncthreads() { g_block_bar->arrive_and_wait(); }
void __syncwarp(unsigned) { g_warp_bar[t_linear >> 5]->arrive_and_wait(); }

template <class T> static T shfl(std::vector<T> &slot, T v, int o)
{
    int w = t_linear >> 5, lane = t_linear & 31;
    slot[t_linear] = v;
    g_warp_bar[w]->arrive_and_wait();
    T r = slot[(w << 5) | (lane ^ o)];
    g_warp_bar[w]->arrive_and_wait();
    return r;
}
float emu_shfl_f(float v, int o) { return shfl(g_slot_f, v, o); }
int emu_shfl_i(int v, int o) { return shfl(g_slot_i, v, o); }
void *emu_dyn_smem() { return g_smem.data(); }
void emu_allow_smem(size_t n) { g_smem_allowed = n > g_smem_allowed ? n : g_smem_allowed; }

static void make_bars(int nt)
{
    delete g_block_bar;
    g_block_bar = NULL;
    for (auto *b : g_warp_bar)
        delete b;
    g_warp_bar.clear();
    if (nt < 1)
        return;
    g_block_bar = new std::barrier<>(nt);
    for (int w = 0; w * 32 < nt; w++)
        g_warp_bar.push_back(new std::barrier<>(std::min(32, nt - 32 * w)));
}

/* Host threads kept between launches (starting 128 threads a launch costs more than the
 * kernels). */
struct Pool {
    std::mutex mu;
    std::condition_variable cv, done_cv;
    long gen = 0;
    int n_threads = 0, active = 0, remaining = 0;
    std::function<void(int)> job;
    void worker(int id)
    {
        long seen = 0;
        for (;;) {
            std::unique_lock<std::mutex> l(mu);
            cv.wait(l, [&] { return gen != seen; });
            seen = gen;
            if (id >= active)
                continue;
            auto j = job;
            l.unlock();
            j(id);
            l.lock();
            if (--remaining == 0)
                done_cv.notify_one();
        }
    }
    void run(int n, std::function<void(int)> f)
    {
        for (; n_threads < n; n_threads++) {
            int id = n_threads;
            std::thread([this, id] { worker(id); }).detach();
        }
        std::unique_lock<std::mutex> l(mu);
        job = f;
        active = n;
        remaining = n;
        gen++;
        cv.notify_all();
        done_cv.wait(l, [&] { return remaining == 0; });
    }
};
static Pool *g_pool;

struct emu_graph {
    std::vector<std::function<void()>> ops;
};
static emu_graph *g_capture;

static void report()
{
    make_bars(0); /* the last barriers: not leaks */
    fprintf(stderr, "cuda emulation: %zu kernels run, %zu graphs captured, %zu graph launches "
            "(%zu kernels in them)\n", g_kernels, g_captures, g_graph_launches, g_graph_kernels);
}

static void run_now(dim3 grid, dim3 block, size_t smem, std::function<void()> f)
{
    int nt = (int)(block.x * block.y * block.z);
    if (nt < 1 || nt > 1024 || nt % 32 || grid.x < 1 || grid.y < 1 || grid.z < 1 ||
        grid.y > 65535 || grid.z > 65535 || smem > g_smem_allowed) {
        fprintf(stderr, "cuda emulation: bad launch: grid (%u, %u, %u), %d threads, %zu bytes "
                "of shared memory (%zu allowed)\n", grid.x, grid.y, grid.z, nt, smem,
                g_smem_allowed);
        abort();
    }
    if (!g_pool) {
        g_pool = new Pool;
        atexit(report);
    }
    g_kernels++;
    blockDim = block;
    gridDim = grid;
    g_smem.assign(smem + 16, 0xFF);
    g_slot_f.assign((size_t)nt, 0.0f);
    g_slot_i.assign((size_t)nt, 0);
    make_bars(nt);
    std::barrier<> launch_bar(nt);
    long nblocks = (long)grid.x * grid.y * grid.z;
    g_pool->run(nt, [&](int t) {
        t_linear = t;
        threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
        for (long b = 0; b < nblocks; b++) {
            blockIdx = dim3((unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                            (unsigned)(b / ((long)grid.x * grid.y)));
            f();
            g_block_bar->arrive_and_drop();
            g_warp_bar[t >> 5]->arrive_and_drop();
            launch_bar.arrive_and_wait();
            if (t == 0) {
                make_bars(nt);
                memset(g_smem.data(), 0xFF, g_smem.size());
            }
            launch_bar.arrive_and_wait();
        }
    });
}

void emu_run(dim3 grid, dim3 block, size_t smem, std::function<void()> f)
{
    if (g_capture)
        g_capture->ops.push_back([=] { run_now(grid, block, smem, f); });
    else
        run_now(grid, block, smem, f);
}

[[noreturn]] static void misuse(const char *what)
{
    fprintf(stderr, "cuda emulation: %s\n", what);
    abort();
}

/* ---- Runtime ---- */

static std::mutex g_mu;
static std::unordered_map<void *, size_t> g_alloc;
static size_t g_used;
static const size_t TOTAL = (size_t)16 << 30;

cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int)
{
    memset(p, 0, sizeof *p);
    strcpy(p->name, "CUDA emulation");
    p->major = 9;
    p->totalGlobalMem = TOTAL;
    p->multiProcessorCount = 132; /* an H100's, so that the same launch shapes come out */
    p->sharedMemPerBlockOptin = 232448;
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned)
{
    *s = (cudaStream_t)0x1;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t)
{
    if (g_capture)
        misuse("a stream synchronised during a capture");
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned)
{
    *e = (cudaEvent_t)0x2;
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaMalloc(void **p, size_t n)
{
    if (g_capture)
        misuse("cudaMalloc during a capture");
    std::lock_guard<std::mutex> l(g_mu);
    *p = NULL;
    if (n > TOTAL - g_used || !(*p = malloc(n)))
        return cudaErrorMemoryAllocation;
    memset(*p, 0xFF, n);
    g_alloc[*p] = n;
    g_used += n;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    std::lock_guard<std::mutex> l(g_mu);
    auto it = g_alloc.find(p);
    if (it == g_alloc.end())
        misuse("cudaFree of a pointer cudaMalloc did not return");
    g_used -= it->second;
    g_alloc.erase(it);
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t n)
{
    *p = malloc(n);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void *p)
{
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t)
{
    if (g_capture) {
        if (k != cudaMemcpyDeviceToDevice)
            misuse("a copy to or from the host during a capture");
        g_capture->ops.push_back([=] { memcpy(d, s, n); });
        return cudaSuccess;
    }
    memcpy(d, s, n);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *f, size_t *t)
{
    std::lock_guard<std::mutex> l(g_mu);
    *f = TOTAL - g_used;
    *t = TOTAL;
    return cudaSuccess;
}
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char *cudaGetErrorString(cudaError_t e) { return e ? "emulated error" : "no error"; }
const char *cudaGetErrorName(cudaError_t e) { return e ? "cudaErrorEmulated" : "cudaSuccess"; }

cudaError_t cudaStreamBeginCapture(cudaStream_t, int)
{
    if (g_capture)
        return cudaErrorInvalidValue;
    g_capture = new emu_graph;
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *g)
{
    *g = g_capture;
    if (!g_capture)
        return cudaErrorInvalidValue;
    g_capture = NULL;
    g_captures++;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long)
{
    *e = new emu_graph(*g);
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t)
{
    g_graph_launches++;
    for (auto &op : e->ops) {
        op();
        g_graph_kernels++;
    }
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e)
{
    delete e;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
    delete g;
    return cudaSuccess;
}

/* ---- cuBLAS: C = alpha op(A) op(B) + beta C, column-major, FP32 sums ---- */

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = (cublasHandle_t)0x3;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t) { return CUBLAS_STATUS_SUCCESS; }
const char *cublasGetStatusString(cublasStatus_t s) { return s ? "emulated error" : "success"; }

static size_t type_bytes(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }

static float load(const void *p, cudaDataType t, size_t i)
{
    if (t == CUDA_R_32F)
        return ((const float *)p)[i];
    if (t == CUDA_R_16F)
        return cairn_gguf_f16_to_f32(((const uint16_t *)p)[i]);
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                 const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                 int ldb, float beta, float *C, int ldc)
{
    if (at == CUDA_R_32F && bt == CUDA_R_32F) {
        /* The same sums in the same order, without load()'s type dispatch per element: the
         * embedder's FP32 projections (retrieval/cuda/embed_cuda.cu) are most of its run here. */
        const float *a = (const float *)A, *b = (const float *)B;
        const bool ta_t = ta == CUBLAS_OP_T, tb_t = tb == CUBLAS_OP_T;
        const size_t sa_i = ta_t ? (size_t)lda : 1, sa_k = ta_t ? 1 : (size_t)lda;
        const size_t sb_j = tb_t ? 1 : (size_t)ldb, sb_k = tb_t ? (size_t)ldb : 1;
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                const float *ar = a + (size_t)i * sa_i, *bc = b + (size_t)j * sb_j;
                float s = 0.0f;
                for (int kk = 0; kk < k; kk++)
                    s += ar[(size_t)kk * sa_k] * bc[(size_t)kk * sb_k];
                float *c = C + (size_t)i + (size_t)j * ldc;
                *c = alpha * s + (beta != 0.0f ? beta * *c : 0.0f);
            }
        return;
    }
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float s = 0.0f;
            for (int kk = 0; kk < k; kk++) {
                size_t ia = ta == CUBLAS_OP_T ? (size_t)kk + (size_t)i * lda
                                              : (size_t)i + (size_t)kk * lda;
                size_t ib = tb == CUBLAS_OP_T ? (size_t)j + (size_t)kk * ldb
                                              : (size_t)kk + (size_t)j * ldb;
                s += load(A, at, ia) * load(B, bt, ib);
            }
            float *c = C + (size_t)i + (size_t)j * ldc;
            *c = alpha * s + (beta != 0.0f ? beta * *c : 0.0f);
        }
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t,
                            cublasGemmAlgo_t)
{
    if (ct != CUDA_R_32F || at != bt || m < 0 || n < 0 || k < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    if ((ta == CUBLAS_OP_T ? lda < k : lda < m) || (tb == CUBLAS_OP_T ? ldb < n : ldb < k) ||
        ldc < m)
        return CUBLAS_STATUS_INVALID_VALUE;
    const float a = *(const float *)alpha, b = *(const float *)beta; /* read at the call */
    float *c = (float *)C;
    if (g_capture)
        g_capture->ops.push_back(
            [=] { gemm(ta, tb, m, n, k, a, A, at, lda, B, bt, ldb, b, c, ldc); });
    else
        gemm(ta, tb, m, n, k, a, A, at, lda, B, bt, ldb, b, c, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta,
                                          cublasOperation_t tb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType at,
                                          int lda, long long sa, const void *B, cudaDataType bt,
                                          int ldb, long long sb, const void *beta, void *C,
                                          cudaDataType ct, int ldc, long long sc, int batch,
                                          cublasComputeType_t ctype, cublasGemmAlgo_t algo)
{
    for (int i = 0; i < batch; i++) {
        cublasStatus_t s = cublasGemmEx(
            h, ta, tb, m, n, k, alpha, (const char *)A + (size_t)i * sa * type_bytes(at), at,
            lda, (const char *)B + (size_t)i * sb * type_bytes(bt), bt, ldb, beta,
            (char *)C + (size_t)i * sc * type_bytes(ct), ct, ldc, ctype, algo);
        if (s)
            return s;
    }
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- common/gpu.h: one emulated device ---- */

extern "C" int cairn_gpu_built(void) { return 1; }
extern "C" int cairn_gpu_count(char *why, size_t n)
{
    (void)why;
    (void)n;
    return 1;
}
extern "C" int cairn_gpu_describe(int idx, char *buf, size_t len)
{
    if (idx != 0) {
        snprintf(buf, len, "device %d: the emulation has one", idx);
        return -14; /* CAIRN_EDEVICE */
    }
    snprintf(buf, len, "CUDA emulation, sm_90, 16384 MiB");
    return 0;
}
