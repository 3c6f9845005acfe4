/*
 * retrieval/cuda/tier_cuda.cu — the CUDA store of the fast tier (retrieval/tier_store.h).
 *
 * Memory. One device arena of the tier's capacity; the tier places clusters in it (offsets,
 * eviction, compaction) and this file lays each cluster out for the scan:
 *   [ n int64 ids, padded to 64 bytes ][ ceil(n / 32) groups of 32 vectors ]
 * where a group stores its 32 vectors interleaved by 4-element chunks: chunk j of vector l sits
 * at (j * 32 + l) * 4 elements from the group's start (the interleaved layout of cuVS
 * IVF-Flat). A warp whose lanes take the 32 vectors of a group then reads 32 consecutive chunks
 * per load: 512 contiguous bytes in fp32, 256 in fp16. Dims are padded to a multiple of 4 with
 * zeros, which the scan never adds (see below).
 *
 * Copies. copy_in lands the row-major block (ids, vectors) in a device landing buffer — by DMA
 * straight from page-locked lists, or through a ring of page-locked staging buffers when the
 * lists are pageable (an mmap'ed file): the CPU fills one while the DMA engine drains another
 * — and a kernel interleaves it into the slot (and converts to fp16 when asked). All of it is
 * queued on one copy stream and followed by an event recorded for that cluster, with a
 * sequence number. A scan waits (on its own stream) for the event of the newest-queued cluster
 * among those it reads: the copy stream runs in order, so that one event covers every copy it
 * needs and none queued after it. Moves (compaction) run on the same stream: device-to-device,
 * through the landing buffer when source and destination overlap.
 *
 * Scans. The tier's (query, cluster) pairs are cut into chunks of at most 1024 vectors, one
 * thread block each: the block scores its vectors (one vector per thread, the query in shared
 * memory), sorts the 1024 (score, id) pairs with a bitonic sort in shared memory and writes its
 * best k. A second kernel, one block per query, merges the chunks' lists into the query's top
 * k: a sorted best-so-far of pow2(k) entries plus up to 1024 candidates that beat the current
 * k-th, sorted together whenever any came. Ranking the centroids is the same two kernels over
 * the centroids laid out like a cluster (in chunks of 256, so that one query's ranking spreads
 * over several SMs), with k = nprobe.
 *
 * Arithmetic. fp32 scores are the CPU scan's bits: four accumulators over dims i mod 4, the
 * tail dims into the first, (s0 + s1) + (s2 + s3), every product and sum rounded on its own
 * (__fmul_rn, __fadd_rn; this file is also built with --fmad=false), NaN as -INFINITY; ties
 * break by smaller id. fp16 storage scores the halves' exact values in the same order, so its
 * answers differ from fp32's only through the rounding of the stored vectors.
 *
 * Threads: the tier's I/O thread calls copy_in, move and sync; one search at a time calls scan
 * and rank. Each entry point makes the store's GPU current on the calling thread.
 */
extern "C" {
#include "common/error.h"
}
#include "retrieval/tier_store.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 1024        /* vectors per scan block, and candidates per merge round */
#define RANK_CHUNK 256    /* centroids per ranking block: 16 blocks per query for IVF4096 */
#define MERGE_BUF 2048    /* pow2(k) <= 1024 best + 1024 candidates */
#define THREADS 256
#define MAX_DIM 4096      /* the query sits in shared memory */
#define RING 4
#define RING_BYTES (8u << 20)
#define ID_SENTINEL LLONG_MAX

/* ---- Kernels --------------------------------------------------------------------------------- */

/* One chunk of one (query, cluster) pair; vecs points at the chunk's first group. */
struct dwork {
    const void *vecs;
    const long long *ids; /* NULL: ids are idbase + i (the centroids) */
    long long idbase;
    unsigned n;           /* <= CHUNK */
    unsigned query;
    unsigned skip;        /* scored, then dropped (the tier's TeleRAG mode) */
    unsigned pad;
};

/* Sorts s/id[0, n2) best first (higher score, then smaller id); n2 a power of two. Every
 * thread of the block calls it; it starts and ends with the block in step. */
__device__ void bitonic_best_first(float *s, long long *id, int n2)
{
    __syncthreads();
    for (int size = 2; size <= n2; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < n2 / 2; t += blockDim.x) {
                int lo = 2 * t - (t & (stride - 1)), hi = lo + stride;
                bool up = (lo & size) == 0; /* this run ends best first */
                float a = s[lo], b = s[hi];
                long long ia = id[lo], ib = id[hi];
                bool b_better = b > a || (b == a && ib < ia);
                if (b_better == up) {
                    s[lo] = b;
                    s[hi] = a;
                    id[lo] = ib;
                    id[hi] = ia;
                }
            }
            __syncthreads();
        }
}

__device__ int pow2_at_least(int n)
{
    int p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

__device__ __forceinline__ void acc4(float &s0, float &s1, float &s2, float &s3, float4 q,
                                     float x, float y, float z, float w)
{
    s0 = __fadd_rn(s0, __fmul_rn(q.x, x));
    s1 = __fadd_rn(s1, __fmul_rn(q.y, y));
    s2 = __fadd_rn(s2, __fmul_rn(q.z, z));
    s3 = __fadd_rn(s3, __fmul_rn(q.w, w));
}

/* The tail dims (dim mod 4) of the last chunk go to s0, in order, as on the CPU. */
__device__ __forceinline__ void acc_tail(float &s0, float4 q, float x, float y, float z, int rem)
{
    s0 = __fadd_rn(s0, __fmul_rn(q.x, x));
    if (rem > 1)
        s0 = __fadd_rn(s0, __fmul_rn(q.y, y));
    if (rem > 2)
        s0 = __fadd_rn(s0, __fmul_rn(q.z, z));
}

__device__ __forceinline__ float finish(float s0, float s1, float s2, float s3)
{
    float s = __fadd_rn(__fadd_rn(s0, s1), __fadd_rn(s2, s3));
    return isnan(s) ? -INFINITY : s;
}

/* Vector i of a chunk against the query in shared memory (d4 float4s, zero padded). */
__device__ float dot_f32(const void *vecs, int i, int dim, int d4, const float4 *qs)
{
    const float4 *v = (const float4 *)vecs + (size_t)(i >> 5) * d4 * 32 + (i & 31);
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int full = dim >> 2, rem = dim & 3;
#pragma unroll 4
    for (int j = 0; j < full; j++) {
        float4 x = __ldg(v + (size_t)j * 32);
        acc4(s0, s1, s2, s3, qs[j], x.x, x.y, x.z, x.w);
    }
    if (rem) {
        float4 x = __ldg(v + (size_t)full * 32);
        acc_tail(s0, qs[full], x.x, x.y, x.z, rem);
    }
    return finish(s0, s1, s2, s3);
}

__device__ float dot_f16(const void *vecs, int i, int dim, int d4, const float4 *qs)
{
    const uint2 *v = (const uint2 *)vecs + (size_t)(i >> 5) * d4 * 32 + (i & 31);
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int full = dim >> 2, rem = dim & 3;
#pragma unroll 4
    for (int j = 0; j < full; j++) {
        uint2 r = __ldg(v + (size_t)j * 32);
        float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&r.x));
        float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&r.y));
        acc4(s0, s1, s2, s3, qs[j], a.x, a.y, b.x, b.y);
    }
    if (rem) {
        uint2 r = __ldg(v + (size_t)full * 32);
        float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&r.x));
        float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&r.y));
        acc_tail(s0, qs[full], a.x, a.y, b.x, rem);
    }
    return finish(s0, s1, s2, s3);
}

/*
 * Stage 1: block b scores work item b's vectors and writes its best min(k, n) to
 * cs/cid[b * k ...] (cn[b] = how many; 0 for a skipped item). Dynamic shared memory: the
 * query (d4 float4s), then CHUNK scores and CHUNK ids.
 */
template <bool HALF>
__global__ void scan_chunks(const dwork *__restrict__ w, const float *__restrict__ q, int dim,
                            int d4, int k, float *__restrict__ cs, long long *__restrict__ cid,
                            int *__restrict__ cn)
{
    extern __shared__ float4 smem4[];
    float4 *qs = smem4;
    float *ss = (float *)(smem4 + d4);
    long long *si = (long long *)(ss + CHUNK); /* d4 * 16 + CHUNK * 4: 8-byte aligned */
    const dwork wk = w[blockIdx.x];
    const float *qg = q + (size_t)wk.query * dim;
    float *qf = (float *)qs;
    for (int j = threadIdx.x; j < d4 * 4; j += blockDim.x)
        qf[j] = j < dim ? qg[j] : 0.0f;
    __syncthreads();
    int n = (int)wk.n;
    for (int i = threadIdx.x; i < CHUNK; i += blockDim.x) {
        float s = -INFINITY;
        long long id = ID_SENTINEL;
        if (i < n) {
            s = HALF ? dot_f16(wk.vecs, i, dim, d4, qs) : dot_f32(wk.vecs, i, dim, d4, qs);
            id = wk.ids ? wk.ids[i] : wk.idbase + i;
        }
        ss[i] = s;
        si[i] = id;
    }
    bitonic_best_first(ss, si, pow2_at_least(n > 0 ? n : 1));
    int f = wk.skip ? 0 : (n < k ? n : k);
    float *os = cs + (size_t)blockIdx.x * k;
    long long *oi = cid + (size_t)blockIdx.x * k;
    for (int r = threadIdx.x; r < f; r += blockDim.x) {
        os[r] = ss[r];
        oi[r] = si[r];
    }
    if (threadIdx.x == 0)
        cn[blockIdx.x] = f;
}

/*
 * Stage 2: block i merges the lists of work items [qstart[i], qstart[i + 1]) (each cn[w] long,
 * at stride k) into query i's best min(k, total): os/oi[i * k ...], on[i]. kp = pow2(k).
 */
__global__ void merge_topk(const int *__restrict__ qstart, const float *__restrict__ cs,
                           const long long *__restrict__ cid, const int *__restrict__ cn, int k,
                           int kp, float *__restrict__ os, long long *__restrict__ oi,
                           int *__restrict__ on)
{
    __shared__ float ss[MERGE_BUF];
    __shared__ long long si[MERGE_BUF];
    __shared__ int cnt, have;
    int qi = blockIdx.x;
    size_t p0 = (size_t)qstart[qi] * k, p1 = (size_t)qstart[qi + 1] * k;
    for (int i = threadIdx.x; i < kp; i += blockDim.x) {
        ss[i] = -INFINITY;
        si[i] = ID_SENTINEL;
    }
    if (threadIdx.x == 0) {
        cnt = 0;
        have = 0;
    }
    __syncthreads();
    for (size_t base = p0; base < p1; base += CHUNK) {
        bool full = have >= k; /* then only a candidate better than the k-th gets in */
        float ts = ss[k - 1];
        long long ti = si[k - 1];
        size_t end = base + CHUNK < p1 ? base + CHUNK : p1;
        for (size_t p = base + threadIdx.x; p < end; p += blockDim.x) {
            size_t wi = p / (size_t)k;
            int r = (int)(p - wi * (size_t)k);
            if (r >= cn[wi])
                continue;
            float s = cs[p];
            long long id = cid[p];
            if (!full || s > ts || (s == ts && id < ti)) {
                int at = atomicAdd(&cnt, 1);
                ss[kp + at] = s;
                si[kp + at] = id;
            }
        }
        __syncthreads();
        int c = cnt;
        if (c > 0) {
            int n2 = pow2_at_least(kp + c);
            for (int i = kp + c + threadIdx.x; i < n2; i += blockDim.x) {
                ss[i] = -INFINITY;
                si[i] = ID_SENTINEL;
            }
            bitonic_best_first(ss, si, n2);
            if (threadIdx.x == 0) {
                have = have + c < kp ? have + c : kp;
                cnt = 0;
            }
        }
        __syncthreads();
    }
    int f = have < k ? have : k;
    for (int r = threadIdx.x; r < f; r += blockDim.x) {
        os[(size_t)qi * k + r] = ss[r];
        oi[(size_t)qi * k + r] = si[r];
    }
    if (threadIdx.x == 0)
        on[qi] = f;
}

/* Row-major (ids, vectors) of n vectors into the slot layout (see the top of the file). */
template <bool HALF>
__global__ void interleave(const long long *__restrict__ rid, const float *__restrict__ raw,
                           int n, int dim, int d4, long long *__restrict__ oid,
                           void *__restrict__ out)
{
    size_t groups = ((size_t)n + 31) / 32, total = groups * 32 * (size_t)d4;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        int lane = (int)(t & 31);
        size_t rest = t >> 5;
        int j = (int)(rest % (size_t)d4);
        size_t g = rest / (size_t)d4, i = g * 32 + lane;
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (i < (size_t)n)
            for (int c = 0; c < 4; c++)
                if (4 * j + c < dim)
                    v[c] = raw[i * dim + 4 * j + c];
        size_t at = (g * d4 + j) * 32 + lane; /* in 4-element chunks */
        if (HALF) {
            __half2 a = __floats2half2_rn(v[0], v[1]), b = __floats2half2_rn(v[2], v[3]);
            uint2 r;
            r.x = *reinterpret_cast<unsigned *>(&a);
            r.y = *reinterpret_cast<unsigned *>(&b);
            ((uint2 *)out)[at] = r;
        } else {
            ((float4 *)out)[at] = make_float4(v[0], v[1], v[2], v[3]);
        }
        if (j == 0 && i < (size_t)n)
            oid[i] = rid[i];
    }
}

/* ---- The store ------------------------------------------------------------------------------- */

typedef struct {
    cairn_tier_store base;
    int dev, dim, d4;
    bool half;
    size_t nlist, cap, max_list, elem, group_bytes;
    unsigned char *arena;
    /* Copy side (the tier's I/O thread) */
    cudaStream_t copy;
    unsigned char *landing; /* raw ids at 0, raw vectors at land_vec; also the move scratch */
    size_t landing_bytes, land_vec;
    unsigned char *ring[RING]; /* page-locked staging */
    cudaEvent_t ring_ev[RING];
    int ring_next;
    cudaEvent_t *ev;      /* per cluster: its last copy or move */
    unsigned long long *seq, next_seq; /* seq[c]: when ev[c] was last recorded (0: never) */
    /* Search side */
    cudaStream_t search;
    unsigned char *cent_alloc; /* the centroids, laid out as a cluster of fp32 vectors ... */
    unsigned char *cent;       /* ... whose first group starts here */
    unsigned char *h_up, *d_up;  /* [queries | qstart | work] */
    size_t up_cap, d_up_cap;
    unsigned char *h_down, *d_down; /* [filled (int) | scores | ids] */
    size_t down_cap, d_down_cap;
    unsigned char *d_cand;  /* [cn (int) | cs | cid] */
    size_t cand_cap;
    dwork *h_work;          /* built here, copied into h_up */
    size_t work_cap;
    int *h_qs;              /* nq + 1: each query's first work item */
    size_t qs_cap;
} cuda_store;

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

static int fail(cairn_error *err, const char *call, cudaError_t e)
{
    (void)cudaGetLastError(); /* clear a non-sticky error so the next call starts clean */
    return cairn_errorf(err, e == cudaErrorMemoryAllocation ? CAIRN_ENOMEM : CAIRN_EDEVICE,
                        "tier cuda store: %s: %s", call, cudaGetErrorString(e));
}

#define CK(call)                                                                                 \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess)                                                                   \
            return fail(err, #call, e_);                                                         \
    } while (0)

static size_t ids_bytes(size_t n) { return round_up(8 * n, CAIRN_TIER_STORE_ALIGN); }

static size_t cuda_bytes(const cairn_tier_store *s, size_t n)
{
    const cuda_store *c = (const cuda_store *)s;
    return round_up(ids_bytes(n) + (n + 31) / 32 * c->group_bytes, CAIRN_TIER_STORE_ALIGN);
}

/* Grows a device buffer to at least need bytes (the stream using it is idle). */
static int grow_dev(unsigned char **p, size_t *cap, size_t need, cairn_error *err)
{
    if (need <= *cap)
        return 0;
    size_t want = need > 2 * *cap ? need : 2 * *cap;
    CK(cudaFree(*p));
    *p = NULL;
    *cap = 0;
    CK(cudaMalloc((void **)p, want));
    *cap = want;
    return 0;
}

static int grow_host(unsigned char **p, size_t *cap, size_t need, cairn_error *err)
{
    if (need <= *cap)
        return 0;
    size_t want = need > 2 * *cap ? need : 2 * *cap;
    CK(cudaFreeHost(*p));
    *p = NULL;
    *cap = 0;
    CK(cudaHostAlloc((void **)p, want, cudaHostAllocDefault));
    *cap = want;
    return 0;
}

static int set_device(const cuda_store *c, cairn_error *err)
{
    CK(cudaSetDevice(c->dev));
    return 0;
}

/* Room for nwd work items and nq + 1 query starts (kept between searches). */
static int work_room(cuda_store *c, size_t nwd, size_t nq, cairn_error *err)
{
    if (nwd > c->work_cap) {
        dwork *p = (dwork *)realloc(c->h_work, nwd * sizeof(dwork));
        if (!p)
            return cairn_errorf(err, CAIRN_ENOMEM, "tier cuda store: %zu work items", nwd);
        c->h_work = p;
        c->work_cap = nwd;
    }
    if (nq + 1 > c->qs_cap) {
        int *p = (int *)realloc(c->h_qs, (nq + 1) * sizeof(int));
        if (!p)
            return cairn_errorf(err, CAIRN_ENOMEM, "tier cuda store: %zu queries", nq);
        c->h_qs = p;
        c->qs_cap = nq + 1;
    }
    return 0;
}

static void cuda_close(cairn_tier_store *s)
{
    cuda_store *c = (cuda_store *)s;
    /* Best effort: a failing GPU still gets its memory back from the driver at exit. */
    cudaSetDevice(c->dev);
    if (c->copy)
        cudaStreamSynchronize(c->copy);
    if (c->search)
        cudaStreamSynchronize(c->search);
    if (c->ev)
        for (size_t i = 0; i < c->nlist; i++)
            if (c->ev[i])
                cudaEventDestroy(c->ev[i]);
    for (int r = 0; r < RING; r++) {
        if (c->ring_ev[r])
            cudaEventDestroy(c->ring_ev[r]);
        cudaFreeHost(c->ring[r]);
    }
    cudaFree(c->arena);
    cudaFree(c->landing);
    cudaFree(c->cent_alloc);
    cudaFree(c->d_up);
    cudaFree(c->d_down);
    cudaFree(c->d_cand);
    cudaFreeHost(c->h_up);
    cudaFreeHost(c->h_down);
    if (c->copy)
        cudaStreamDestroy(c->copy);
    if (c->search)
        cudaStreamDestroy(c->search);
    free(c->ev);
    free(c->seq);
    free(c->h_work);
    free(c->h_qs);
    free(c);
}

/* ---- Copy side ------------------------------------------------------------------------------- */

/* bytes from pageable host memory to the device, through the staging ring. */
static int staged_copy(cuda_store *c, unsigned char *dst, const void *src, size_t bytes,
                       cairn_error *err)
{
    const unsigned char *from = (const unsigned char *)src;
    for (size_t o = 0; o < bytes; o += RING_BYTES) {
        size_t len = bytes - o < RING_BYTES ? bytes - o : RING_BYTES;
        int r = c->ring_next;
        c->ring_next = (r + 1) % RING;
        CK(cudaEventSynchronize(c->ring_ev[r])); /* its previous DMA has drained it */
        memcpy(c->ring[r], from + o, len);
        CK(cudaMemcpyAsync(dst + o, c->ring[r], len, cudaMemcpyHostToDevice, c->copy));
        CK(cudaEventRecord(c->ring_ev[r], c->copy));
    }
    return 0;
}

static int upload(cuda_store *c, unsigned char *dst, const void *src, size_t bytes, bool pinned,
                  cairn_error *err)
{
    if (bytes == 0)
        return 0;
    if (pinned) {
        CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->copy));
        return 0;
    }
    return staged_copy(c, dst, src, bytes, err);
}

static int mark_written(cuda_store *c, uint32_t cluster, cairn_error *err)
{
    CK(cudaEventRecord(c->ev[cluster], c->copy));
    c->seq[cluster] = ++c->next_seq;
    return 0;
}

static int launch_interleave(cuda_store *c, bool half, const long long *rid, const float *raw,
                             size_t n, unsigned char *slot, cudaStream_t st, cairn_error *err)
{
    size_t total = (n + 31) / 32 * 32 * (size_t)c->d4;
    unsigned blocks = (unsigned)((total + THREADS - 1) / THREADS);
    if (blocks > 65535u * 16)
        blocks = 65535u * 16;
    long long *oid = (long long *)slot;
    void *out = slot + ids_bytes(n);
    if (half)
        interleave<true><<<blocks, THREADS, 0, st>>>(rid, raw, (int)n, c->dim, c->d4, oid, out);
    else
        interleave<false><<<blocks, THREADS, 0, st>>>(rid, raw, (int)n, c->dim, c->d4, oid, out);
    CK(cudaGetLastError());
    return 0;
}

static int cuda_copy_in(cairn_tier_store *s, uint32_t cluster, size_t off,
                        const cairn_tier_block *src, cairn_error *err)
{
    cuda_store *c = (cuda_store *)s;
    size_t n = src->n, b = cuda_bytes(s, n);
    if (cluster >= c->nlist || off % CAIRN_TIER_STORE_ALIGN || off > c->cap || b > c->cap - off ||
        n > c->max_list)
        return cairn_errorf(err, CAIRN_ERANGE, "tier cuda store: cluster %u of %zu vectors "
                            "(%zu bytes) at %zu; capacity %zu, largest list %zu",
                            cluster, n, b, off, c->cap, c->max_list);
    if (n == 0)
        return 0;
    CK(cudaSetDevice(c->dev));
    int rc = upload(c, c->landing, src->ids, 8 * n, src->pinned, err);
    if (!rc)
        rc = upload(c, c->landing + c->land_vec, src->vecs, 4 * n * (size_t)c->dim, src->pinned,
                    err);
    if (!rc)
        rc = launch_interleave(c, c->half, (const long long *)c->landing,
                               (const float *)(c->landing + c->land_vec), n, c->arena + off,
                               c->copy, err);
    if (!rc)
        rc = mark_written(c, cluster, err);
    return rc;
}

static int cuda_move(cairn_tier_store *s, uint32_t cluster, size_t dst, size_t src, size_t bytes,
                     cairn_error *err)
{
    cuda_store *c = (cuda_store *)s;
    if (cluster >= c->nlist || dst > c->cap || src > c->cap || bytes > c->cap - dst ||
        bytes > c->cap - src || bytes > c->landing_bytes)
        return cairn_errorf(err, CAIRN_ERANGE, "tier cuda store: move of %zu bytes %zu -> %zu "
                            "(capacity %zu)", bytes, src, dst, c->cap);
    if (dst == src || bytes == 0)
        return 0;
    CK(cudaSetDevice(c->dev));
    /* cudaMemcpy's ranges must not overlap: an overlapping move goes through the landing
     * buffer (two device-to-device copies, never the host). */
    if (dst < src + bytes && src < dst + bytes) {
        CK(cudaMemcpyAsync(c->landing, c->arena + src, bytes, cudaMemcpyDeviceToDevice, c->copy));
        CK(cudaMemcpyAsync(c->arena + dst, c->landing, bytes, cudaMemcpyDeviceToDevice, c->copy));
    } else {
        CK(cudaMemcpyAsync(c->arena + dst, c->arena + src, bytes, cudaMemcpyDeviceToDevice,
                           c->copy));
    }
    return mark_written(c, cluster, err);
}

static int cuda_sync(cairn_tier_store *s, cairn_error *err)
{
    cuda_store *c = (cuda_store *)s;
    CK(cudaSetDevice(c->dev));
    CK(cudaStreamSynchronize(c->copy));
    return 0;
}

/* ---- Search side ----------------------------------------------------------------------------- */

/*
 * Uploads the queries and nwd work items, runs the two stages for k and downloads the
 * results; waits for the copy of cluster `newest` first (-1: none). On return the search
 * stream is idle, also after an error.
 */
static int run_topk(cuda_store *c, const float *q, size_t nq, size_t nwd, const int *qstart,
                    bool half_data, size_t k, long newest, cairn_error *err)
{
    size_t qb = nq * (size_t)c->dim * 4, sb = round_up((nq + 1) * sizeof(int), 16);
    size_t wb = nwd * sizeof(dwork), up = round_up(qb, 16) + sb + wb;
    size_t fb = round_up(nq * sizeof(int), 16), rb = nq * k;
    size_t down = fb + round_up(rb * 4, 16) + rb * 8;
    size_t cnb = round_up(nwd * sizeof(int), 16), cand = cnb + round_up(nwd * k * 4, 16) +
                                                        nwd * k * 8;
    int rc = grow_host(&c->h_up, &c->up_cap, up, err);
    if (!rc)
        rc = grow_dev(&c->d_up, &c->d_up_cap, up, err);
    if (!rc)
        rc = grow_host(&c->h_down, &c->down_cap, down, err);
    if (!rc)
        rc = grow_dev(&c->d_down, &c->d_down_cap, down, err);
    if (!rc)
        rc = grow_dev(&c->d_cand, &c->cand_cap, cand, err);
    if (rc)
        return rc;
    memcpy(c->h_up, q, qb);
    memcpy(c->h_up + round_up(qb, 16), qstart, (nq + 1) * sizeof(int));
    memcpy(c->h_up + round_up(qb, 16) + sb, c->h_work, wb);
    const float *dq = (const float *)c->d_up;
    const int *dqs = (const int *)(c->d_up + round_up(qb, 16));
    const dwork *dw = (const dwork *)(c->d_up + round_up(qb, 16) + sb);
    int *cn = (int *)c->d_cand;
    float *cs = (float *)(c->d_cand + cnb);
    long long *cid = (long long *)(c->d_cand + cnb + round_up(nwd * k * 4, 16));
    int *on = (int *)c->d_down;
    float *os = (float *)(c->d_down + fb);
    long long *oi = (long long *)(c->d_down + fb + round_up(rb * 4, 16));
    int kp = 1;
    while ((size_t)kp < k)
        kp <<= 1;
    size_t smem = (size_t)c->d4 * 16 + CHUNK * (4 + 8);
    cudaError_t e = cudaMemcpyAsync(c->d_up, c->h_up, up, cudaMemcpyHostToDevice, c->search);
    const char *what = "cudaMemcpyAsync(upload)";
    if (e == cudaSuccess && newest >= 0) {
        e = cudaStreamWaitEvent(c->search, c->ev[newest], 0);
        what = "cudaStreamWaitEvent";
    }
    if (e == cudaSuccess && nwd > 0) {
        if (half_data)
            scan_chunks<true><<<(unsigned)nwd, THREADS, smem, c->search>>>(dw, dq, c->dim, c->d4,
                                                                          (int)k, cs, cid, cn);
        else
            scan_chunks<false><<<(unsigned)nwd, THREADS, smem, c->search>>>(
                dw, dq, c->dim, c->d4, (int)k, cs, cid, cn);
        e = cudaGetLastError();
        what = "scan_chunks<<<>>>";
    }
    if (e == cudaSuccess) {
        merge_topk<<<(unsigned)nq, THREADS, 0, c->search>>>(dqs, cs, cid, cn, (int)k, kp, os, oi,
                                                             on);
        e = cudaGetLastError();
        what = "merge_topk<<<>>>";
    }
    if (e == cudaSuccess) {
        e = cudaMemcpyAsync(c->h_down, c->d_down, down, cudaMemcpyDeviceToHost, c->search);
        what = "cudaMemcpyAsync(download)";
    }
    cudaError_t se = cudaStreamSynchronize(c->search);
    if (e == cudaSuccess && se != cudaSuccess) {
        e = se;
        what = "cudaStreamSynchronize(search)";
    }
    if (e != cudaSuccess)
        return fail(err, what, e);
    return 0;
}

static int cuda_scan(cairn_tier_store *s, const float *q, size_t nq, const cairn_tier_work *w,
                     size_t nw, size_t k, float *scores, int64_t *ids, size_t *filled,
                     cairn_error *err)
{
    cuda_store *c = (cuda_store *)s;
    if (k < 1 || k > CAIRN_TIER_STORE_MAX_K || nq < 1 || nq > INT_MAX / 2)
        return cairn_errorf(err, CAIRN_EINVAL, "tier cuda store: k %zu, %zu queries", k, nq);
    /* Cut the items into chunks, checking what the tier hands over. */
    size_t nwd = 0;
    for (size_t i = 0; i < nw; i++)
        nwd += (w[i].n + CHUNK - 1) / CHUNK;
    int rc = work_room(c, nwd, nq, err);
    if (rc)
        return rc;
    int *qstart = c->h_qs;
    long newest = -1;
    size_t at = 0, wd = 0;
    for (size_t i = 0; i < nq; i++) {
        qstart[i] = (int)wd;
        for (; at < nw && w[at].query == i; at++) {
            const cairn_tier_work *x = &w[at];
            if (x->cluster >= c->nlist || x->off > c->cap ||
                cuda_bytes(s, x->n) > c->cap - x->off)
                return cairn_errorf(err, CAIRN_ERANGE, "tier cuda store: cluster %u (%zu "
                                    "vectors) at %zu past the capacity %zu", x->cluster, x->n,
                                    x->off, c->cap);
            if (c->seq[x->cluster] &&
                (newest < 0 || c->seq[x->cluster] > c->seq[newest]))
                newest = (long)x->cluster;
            const unsigned char *slot = c->arena + x->off;
            const unsigned char *vec = slot + ids_bytes(x->n);
            for (size_t r0 = 0; r0 < x->n; r0 += CHUNK) {
                size_t m = x->n - r0 < CHUNK ? x->n - r0 : CHUNK;
                c->h_work[wd++] = dwork{vec + r0 / 32 * c->group_bytes,
                                        (const long long *)slot + r0, 0, (unsigned)m,
                                        (unsigned)i, x->skip ? 1u : 0u, 0};
            }
        }
    }
    qstart[nq] = (int)wd;
    if (at != nw)
        return cairn_errorf(err, CAIRN_EINVAL, "tier cuda store: work items not sorted by "
                            "query, or a query past the batch of %zu", nq);
    if ((rc = set_device(c, err)) ||
        (rc = run_topk(c, q, nq, wd, qstart, c->half, k, newest, err)))
        return rc;
    const int *f = (const int *)c->h_down;
    const float *os = (const float *)(c->h_down + round_up(nq * sizeof(int), 16));
    const long long *oi =
        (const long long *)(c->h_down + round_up(nq * sizeof(int), 16) + round_up(nq * k * 4, 16));
    for (size_t i = 0; i < nq; i++) {
        filled[i] = (size_t)f[i];
        for (size_t r = 0; r < k; r++) {
            bool real = r < (size_t)f[i];
            scores[i * k + r] = real ? os[i * k + r] : -INFINITY;
            ids[i * k + r] = real ? (int64_t)oi[i * k + r] : -1;
        }
    }
    return 0;
}

static int cuda_rank(cairn_tier_store *s, const float *q, size_t nq, size_t nprobe,
                     uint32_t *order, cairn_error *err)
{
    cuda_store *c = (cuda_store *)s;
    if (nprobe > CAIRN_TIER_STORE_MAX_K || nprobe > c->nlist || nprobe < 1)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "tier cuda store: ranks 1..%d clusters, "
                            "not %zu", CAIRN_TIER_STORE_MAX_K, nprobe);
    if (nq < 1 || nq > INT_MAX / 2)
        return cairn_errorf(err, CAIRN_EINVAL, "tier cuda store: %zu queries", nq);
    size_t per = (c->nlist + RANK_CHUNK - 1) / RANK_CHUNK, nwd = nq * per;
    int rc = work_room(c, nwd, nq, err);
    if (rc)
        return rc;
    int *qstart = c->h_qs;
    size_t gb32 = (size_t)c->d4 * 32 * 16; /* centroids are fp32 whatever the lists are */
    for (size_t i = 0; i < nq; i++) {
        qstart[i] = (int)(i * per);
        for (size_t b = 0; b < per; b++) {
            size_t r0 = b * RANK_CHUNK;
            size_t m = c->nlist - r0 < RANK_CHUNK ? c->nlist - r0 : RANK_CHUNK;
            c->h_work[i * per + b] = dwork{c->cent + r0 / 32 * gb32, NULL, (long long)r0,
                                           (unsigned)m, (unsigned)i, 0, 0};
        }
    }
    qstart[nq] = (int)nwd;
    if ((rc = set_device(c, err)) ||
        (rc = run_topk(c, q, nq, nwd, qstart, false, nprobe, -1, err)))
        return rc;
    const int *f = (const int *)c->h_down;
    const long long *oi = (const long long *)(c->h_down + round_up(nq * sizeof(int), 16) +
                                              round_up(nq * nprobe * 4, 16));
    for (size_t i = 0; i < nq; i++) {
        if ((size_t)f[i] != nprobe)
            return cairn_errorf(err, CAIRN_EDEVICE, "tier cuda store: ranking gave %d of %zu "
                                "clusters", f[i], nprobe);
        for (size_t r = 0; r < nprobe; r++)
            order[i * nprobe + r] = (uint32_t)oi[i * nprobe + r];
    }
    return 0;
}

static const cairn_tier_store_i cuda_i = {
    CAIRN_TIER_STORE_VERSION, "cuda", cuda_close, cuda_bytes, cuda_copy_in,
    cuda_move,                cuda_sync, cuda_scan, cuda_rank,
};

/* ---- Open ------------------------------------------------------------------------------------ */

static int open_device(cuda_store *c, const cairn_tier_store_params *p, cairn_error *err)
{
    CK(cudaSetDevice(c->dev));
    size_t max_slot = cuda_bytes(&c->base, c->max_list);
    c->land_vec = round_up(8 * c->max_list, 256);
    size_t raw = c->land_vec + 4 * c->max_list * (size_t)c->dim;
    c->landing_bytes = round_up(raw > max_slot ? raw : max_slot, 256);
    if (c->landing_bytes == 0)
        c->landing_bytes = 256;
    /* Asked first, so that a fast tier larger than the GPU is a plain error, not a failed
     * allocation (which compute-sanitizer would also report). */
    size_t free_b = 0, total_b = 0;
    CK(cudaMemGetInfo(&free_b, &total_b));
    if (c->cap + c->landing_bytes > free_b)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier cuda store: GPU %d has %zu bytes free (of "
                            "%zu); the fast tier asks %zu bytes", c->dev, free_b, total_b,
                            c->cap + c->landing_bytes);
    cudaError_t e = cudaMalloc((void **)&c->arena, c->cap);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return cairn_errorf(err, CAIRN_ENOMEM, "tier cuda store: GPU %d: %zu bytes for the fast "
                            "tier: %s", c->dev, c->cap, cudaGetErrorString(e));
    }
    CK(cudaMalloc((void **)&c->landing, c->landing_bytes));
    CK(cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&c->search, cudaStreamNonBlocking));
    for (int r = 0; r < RING; r++) {
        CK(cudaHostAlloc((void **)&c->ring[r], RING_BYTES, cudaHostAllocDefault));
        CK(cudaEventCreateWithFlags(&c->ring_ev[r], cudaEventDisableTiming));
    }
    c->ev = (cudaEvent_t *)calloc(c->nlist, sizeof(cudaEvent_t));
    c->seq = (unsigned long long *)calloc(c->nlist, sizeof(unsigned long long));
    if (!c->ev || !c->seq)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier cuda store: %zu clusters", c->nlist);
    for (size_t i = 0; i < c->nlist; i++)
        CK(cudaEventCreateWithFlags(&c->ev[i], cudaEventDisableTiming));
    /* The centroids, laid out as one fp32 cluster with ids 0..nlist-1 (ids unused). */
    size_t nl = c->nlist, cb = (nl + 31) / 32 * (size_t)c->d4 * 32 * 16;
    CK(cudaMalloc((void **)&c->cent_alloc, ids_bytes(nl) + cb));
    float *raw_c = NULL;
    long long *raw_id = NULL;
    e = cudaMalloc((void **)&raw_c, nl * (size_t)c->dim * 4);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&raw_id, nl * 8);
    if (e == cudaSuccess)
        e = cudaMemcpy(raw_c, p->centroids, nl * (size_t)c->dim * 4, cudaMemcpyHostToDevice);
    if (e == cudaSuccess)
        e = cudaMemset(raw_id, 0, nl * 8);
    int rc = 0;
    if (e != cudaSuccess) {
        rc = fail(err, "uploading the centroids", e);
    } else {
        rc = launch_interleave(c, false, raw_id, raw_c, nl, c->cent_alloc, c->copy, err);
        if (!rc && (e = cudaStreamSynchronize(c->copy)) != cudaSuccess)
            rc = fail(err, "cudaStreamSynchronize(centroids)", e);
    }
    cudaFree(raw_c);
    cudaFree(raw_id);
    if (rc)
        return rc;
    c->cent = c->cent_alloc + ids_bytes(nl);
    return 0;
}

extern "C" int cairn_tier_store_cuda_open(cairn_tier_store **out,
                                          const cairn_tier_store_params *p, cairn_error *err)
{
    *out = NULL;
    if (p->dim < 1 || p->dim > MAX_DIM)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "tier cuda store: dim %d outside [1, %d]",
                            p->dim, MAX_DIM);
    if (p->nlist < 1 || !p->centroids || p->capacity < 1 ||
        p->capacity % CAIRN_TIER_STORE_ALIGN)
        return cairn_errorf(err, CAIRN_EINVAL, "tier cuda store: nlist %zu, capacity %zu (a "
                            "positive multiple of %u), centroids %s", p->nlist, p->capacity,
                            CAIRN_TIER_STORE_ALIGN, p->centroids ? "given" : "missing");
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || p->device < 0 || p->device >= count) {
        (void)cudaGetLastError();
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "tier cuda store: no GPU %d (%s)", p->device,
                            e != cudaSuccess ? cudaGetErrorString(e) : "fewer GPUs present");
    }
    cuda_store *c = (cuda_store *)calloc(1, sizeof(*c));
    if (!c)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier cuda store: out of memory");
    c->base.i = &cuda_i;
    c->dev = p->device;
    c->dim = p->dim;
    c->d4 = (p->dim + 3) / 4;
    c->half = p->fp16;
    c->nlist = p->nlist;
    c->cap = p->capacity;
    c->max_list = p->max_list;
    c->elem = p->fp16 ? 2 : 4;
    c->group_bytes = (size_t)c->d4 * 32 * 4 * c->elem;
    int rc = open_device(c, p, err);
    if (rc) {
        cuda_close(&c->base);
        return rc;
    }
    *out = &c->base;
    return 0;
}

extern "C" void *cairn_tier_pinned_alloc(int device, size_t bytes, char *why, size_t why_len)
{
    void *p = NULL;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        if (why)
            snprintf(why, why_len, "GPU %d: cudaHostAlloc of %zu bytes: %s", device, bytes,
                     cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

extern "C" void cairn_tier_pinned_free(void *p)
{
    if (p)
        cudaFreeHost(p);
}
