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
 * Copies. copy_in lands the row-major block (ids, vectors) in one of two device landing
 * buffers — by DMA straight from page-locked lists (one copy when the ids and the vectors lie
 * back to back, as in the slow-tier file), or through a ring of page-locked staging buffers
 * when the lists are pageable (an mmap'ed file) — on the dma stream; a kernel on the copy
 * stream then interleaves it into the slot (and converts to fp16 when asked). Events hand each
 * landing buffer from one stream to the other (land_ready: filled; land_free: read), so the
 * DMA engine fills one buffer while the previous cluster is interleaved out of the other and
 * never waits for a kernel (with one buffer on one stream it idled for each interleave and
 * each small ids copy: 69% of a pinned copy's rate on an H100). Each cluster is followed by an
 * event recorded on the copy stream, with a sequence number. A scan waits (on its own stream)
 * for the event of the newest-queued cluster among those it reads: the copy stream, the only
 * one that writes the arena, runs in order, so that one event covers every copy it needs and
 * none queued after it. Moves (compaction) run on the copy stream too: device-to-device,
 * through a scratch buffer when source and destination overlap.
 *
 * Misses on the GPU (scan_host). The tier may hand a scan, besides resident clusters, clusters
 * that are not resident: they are copied from host memory on a miss stream into a staging
 * space of two halves, row-major as they lie (no interleave), in rounds that each fill one
 * half; the search stream scans a round's blocks (a row-major variant of the scan: the same
 * arithmetic in the same order) once its copies have landed, while the next round is copied
 * into the other half. A block is copied once however many queries of the batch probe it. The
 * resident clusters are scanned meanwhile; one merge covers both.
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
 * Threads: the tier's I/O thread calls copy_in, move and sync; one search at a time calls scan,
 * scan_host and rank. Each entry point makes the store's GPU current on the calling thread.
 */
extern "C" {
#include "common/error.h"
}
#include "retrieval/cuda/check.cuh"
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
#define NLAND 2
#define ID_SENTINEL LLONG_MAX

/* ---- Kernels --------------------------------------------------------------------------------- */

enum { LAYOUT_F32 = 0, LAYOUT_F16 = 1, LAYOUT_ROWS = 2 };

/* One chunk of one (query, cluster) pair; vecs points at the chunk's first group (interleaved
 * layouts) or its first row (LAYOUT_ROWS: a host block copied as it is into the staging). */
struct dwork {
    const void *vecs;
    const long long *ids; /* NULL: ids are idbase + i (the centroids) */
    long long idbase;
    unsigned n;           /* <= CHUNK */
    unsigned query;
    unsigned skip;        /* scored, then dropped (the tier's TeleRAG mode) */
    unsigned layout;      /* LAYOUT_* */
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

/* Row-major fp32: the same arithmetic in the same order, read a vector at a time (each thread
 * walks its own row; the rows a warp reads share cache lines over successive dims). */
__device__ float dot_rows(const void *vecs, int i, int dim, const float4 *qs)
{
    const float *v = (const float *)vecs + (size_t)i * dim;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int full = dim >> 2, rem = dim & 3;
    for (int j = 0; j < full; j++) {
        const float *x = v + 4 * j;
        acc4(s0, s1, s2, s3, qs[j], __ldg(x), __ldg(x + 1), __ldg(x + 2), __ldg(x + 3));
    }
    if (rem) {
        const float *x = v + 4 * full;
        acc_tail(s0, qs[full], __ldg(x), rem > 1 ? __ldg(x + 1) : 0.0f,
                 rem > 2 ? __ldg(x + 2) : 0.0f, rem);
    }
    return finish(s0, s1, s2, s3);
}

/*
 * Stage 1: block base + b scores work item base + b's vectors and writes its best min(k, n) to
 * cs/cid[(base + b) * k ...] (cn[base + b] = how many; 0 for a skipped item). Dynamic shared
 * memory: the query (d4 float4s), then CHUNK scores and CHUNK ids.
 */
__global__ void scan_chunks(const dwork *__restrict__ w, unsigned base,
                            const float *__restrict__ q, int dim, int d4, int k,
                            float *__restrict__ cs, long long *__restrict__ cid,
                            int *__restrict__ cn)
{
    extern __shared__ float4 smem4[];
    float4 *qs = smem4;
    float *ss = (float *)(smem4 + d4);
    long long *si = (long long *)(ss + CHUNK); /* d4 * 16 + CHUNK * 4: 8-byte aligned */
    const unsigned b = base + blockIdx.x;
    const dwork wk = w[b];
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
            s = wk.layout == LAYOUT_F16    ? dot_f16(wk.vecs, i, dim, d4, qs)
                : wk.layout == LAYOUT_ROWS ? dot_rows(wk.vecs, i, dim, qs)
                                           : dot_f32(wk.vecs, i, dim, d4, qs);
            id = wk.ids ? wk.ids[i] : wk.idbase + i;
        }
        ss[i] = s;
        si[i] = id;
    }
    bitonic_best_first(ss, si, pow2_at_least(n > 0 ? n : 1));
    int f = wk.skip ? 0 : (n < k ? n : k);
    float *os = cs + (size_t)b * k;
    long long *oi = cid + (size_t)b * k;
    for (int r = threadIdx.x; r < f; r += blockDim.x) {
        os[r] = ss[r];
        oi[r] = si[r];
    }
    if (threadIdx.x == 0)
        cn[b] = f;
}

/*
 * Stage 2: block i merges the lists of work items qitem[qstart[i] .. qstart[i + 1]) (each
 * cn[w] long, at stride k) into query i's best min(k, total): os/oi[i * k ...], on[i].
 * kp = pow2(k).
 */
__global__ void merge_topk(const int *__restrict__ qstart, const int *__restrict__ qitem,
                           const float *__restrict__ cs,
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
            size_t slot = p / (size_t)k;
            int r = (int)(p - slot * (size_t)k);
            size_t wi = (size_t)qitem[slot];
            if (r >= cn[wi])
                continue;
            float s = cs[wi * k + r];
            long long id = cid[wi * k + r];
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
    /* Copy side (the tier's I/O thread). Host-to-device copies go on dma into one of NLAND
     * landing buffers; the interleaving kernel that empties it, and every move, go on copy,
     * the one stream that writes the arena. land_ready[l]: landing l is filled (dma);
     * land_free[l]: its kernel has read it (copy). So the DMA engine fills the next landing
     * buffer while the previous one is interleaved, instead of waiting for each kernel. */
    cudaStream_t dma, copy;
    unsigned char *landing[NLAND]; /* raw ids at 0, raw vectors right after them */
    size_t landing_bytes;
    cudaEvent_t land_ready[NLAND], land_free[NLAND];
    int land_next;
    unsigned char *scratch; /* overlapping moves go through it */
    size_t scratch_bytes;
    unsigned char *ring[RING]; /* page-locked staging */
    cudaEvent_t ring_ev[RING];
    int ring_next;
    cudaEvent_t *ev;      /* per cluster: its last copy or move (recorded on copy) */
    unsigned long long *seq, next_seq; /* seq[c]: when ev[c] was last recorded (0: never) */
    double copy_bps;      /* a page-locked copy's rate, measured at open */
    /* Search side */
    cudaStream_t search;
    cudaStream_t miss;    /* scan_host's copies into the staging halves */
    unsigned char *stage; /* scan_host's staging: two halves, filled and scanned in turn */
    size_t stage_half;
    cudaEvent_t half_ready[2], half_free[2];
    unsigned char *cent_alloc; /* the centroids, laid out as a cluster of fp32 vectors ... */
    unsigned char *cent;       /* ... whose first group starts here */
    unsigned char *h_up, *d_up;  /* [queries | qstart | qitem | work] */
    size_t up_cap, d_up_cap;
    unsigned char *h_down, *d_down; /* [filled (int) | scores | ids] */
    size_t down_cap, d_down_cap;
    unsigned char *d_cand;  /* [cn (int) | cs | cid] */
    size_t cand_cap;
    dwork *h_work;          /* built here, copied into h_up */
    size_t work_cap;
    int *h_qitem;           /* each query's work items, query by query */
    size_t qitem_cap;
    int *h_qs;              /* nq + 1: each query's first entry in h_qitem */
    size_t qs_cap;
    size_t *h_boff;         /* scan_host: each block's offset in the staging */
    unsigned *h_bround;     /* ... and its round */
    size_t *h_rpos;         /* per round: next work item */
    size_t blk_cap, bround_cap, round_cap;
} cuda_store;

/* A round of scan_host: blocks [b0, b1) copied into half (r & 1), then work items
 * [base, base + count) scanned. */
typedef struct {
    size_t b0, b1, base, count;
} round_t;

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

static int fail(cairn_error *err, const char *call, cudaError_t e)
{
    return cairn__rcuda_fail(err, "tier cuda store", call, e);
}

#define CK(call) CAIRN__RCUDA_CHECK("tier cuda store", call)

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

/* Grows a host array of elements of size es to at least need (kept between calls). */
static int grow_arr(void **p, size_t *cap, size_t need, size_t es, cairn_error *err,
                    const char *what)
{
    if (need <= *cap)
        return 0;
    size_t want = need > 2 * *cap ? need : 2 * *cap;
    void *q = realloc(*p, want * es);
    if (!q)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier cuda store: %zu %s", want, what);
    *p = q;
    *cap = want;
    return 0;
}

/* Room for nwd work items and nq + 1 query starts (kept between searches). */
static int work_room(cuda_store *c, size_t nwd, size_t nq, cairn_error *err)
{
    int rc = grow_arr((void **)&c->h_work, &c->work_cap, nwd, sizeof(dwork), err, "work items");
    if (!rc)
        rc = grow_arr((void **)&c->h_qitem, &c->qitem_cap, nwd, sizeof(int), err, "work items");
    if (!rc)
        rc = grow_arr((void **)&c->h_qs, &c->qs_cap, nq + 1, sizeof(int), err, "queries");
    return rc;
}

static void cuda_close(cairn_tier_store *s)
{
    cuda_store *c = (cuda_store *)s;
    /* Best effort: a failing GPU still gets its memory back from the driver at exit. */
    cudaSetDevice(c->dev);
    cudaStream_t streams[4] = {c->dma, c->copy, c->search, c->miss};
    for (int i = 0; i < 4; i++)
        if (streams[i])
            cudaStreamSynchronize(streams[i]);
    if (c->ev)
        for (size_t i = 0; i < c->nlist; i++)
            if (c->ev[i])
                cudaEventDestroy(c->ev[i]);
    for (int r = 0; r < RING; r++) {
        if (c->ring_ev[r])
            cudaEventDestroy(c->ring_ev[r]);
        cudaFreeHost(c->ring[r]);
    }
    for (int l = 0; l < NLAND; l++) {
        if (c->land_ready[l])
            cudaEventDestroy(c->land_ready[l]);
        if (c->land_free[l])
            cudaEventDestroy(c->land_free[l]);
        cudaFree(c->landing[l]);
    }
    for (int h = 0; h < 2; h++) {
        if (c->half_ready[h])
            cudaEventDestroy(c->half_ready[h]);
        if (c->half_free[h])
            cudaEventDestroy(c->half_free[h]);
    }
    cudaFree(c->arena);
    cudaFree(c->scratch);
    cudaFree(c->stage);
    cudaFree(c->cent_alloc);
    cudaFree(c->d_up);
    cudaFree(c->d_down);
    cudaFree(c->d_cand);
    cudaFreeHost(c->h_up);
    cudaFreeHost(c->h_down);
    for (int i = 0; i < 4; i++)
        if (streams[i])
            cudaStreamDestroy(streams[i]);
    free(c->ev);
    free(c->seq);
    free(c->h_work);
    free(c->h_qitem);
    free(c->h_qs);
    free(c->h_boff);
    free(c->h_bround);
    free(c->h_rpos);
    free(c);
}

/* ---- Copy side ------------------------------------------------------------------------------- */

/* bytes from pageable host memory to the device on stream st, through the staging ring. */
static int staged_copy(cuda_store *c, unsigned char *dst, const void *src, size_t bytes,
                       cudaStream_t st, cairn_error *err)
{
    const unsigned char *from = (const unsigned char *)src;
    for (size_t o = 0; o < bytes; o += RING_BYTES) {
        size_t len = bytes - o < RING_BYTES ? bytes - o : RING_BYTES;
        int r = c->ring_next;
        c->ring_next = (r + 1) % RING;
        CK(cudaEventSynchronize(c->ring_ev[r])); /* its previous DMA has drained it */
        memcpy(c->ring[r], from + o, len);
        CK(cudaMemcpyAsync(dst + o, c->ring[r], len, cudaMemcpyHostToDevice, st));
        CK(cudaEventRecord(c->ring_ev[r], st));
    }
    return 0;
}

/* The raw block (n ids, then n row-major vectors) to dst on the dma stream: one copy when the
 * ids and vectors lie back to back in host memory (the slow-tier file, lists packed as the
 * benchmark packs them), else two. */
static int upload_block(cuda_store *c, unsigned char *dst, const cairn_tier_block *b,
                        cairn_error *err)
{
    size_t idb = 8 * b->n, vb = 4 * b->n * (size_t)c->dim;
    bool packed = (const unsigned char *)b->vecs == (const unsigned char *)b->ids + idb;
    if (b->pinned) {
        if (packed) {
            CK(cudaMemcpyAsync(dst, b->ids, idb + vb, cudaMemcpyHostToDevice, c->dma));
        } else {
            CK(cudaMemcpyAsync(dst, b->ids, idb, cudaMemcpyHostToDevice, c->dma));
            CK(cudaMemcpyAsync(dst + idb, b->vecs, vb, cudaMemcpyHostToDevice, c->dma));
        }
        return 0;
    }
    if (packed)
        return staged_copy(c, dst, b->ids, idb + vb, c->dma, err);
    int rc = staged_copy(c, dst, b->ids, idb, c->dma, err);
    return rc ? rc : staged_copy(c, dst + idb, b->vecs, vb, c->dma, err);
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
    int l = c->land_next;
    c->land_next = (l + 1) % NLAND;
    unsigned char *land = c->landing[l];
    /* The landing buffer's previous kernel has read it; then fill it, then interleave. */
    CK(cudaStreamWaitEvent(c->dma, c->land_free[l], 0));
    int rc = upload_block(c, land, src, err);
    if (rc)
        return rc;
    CK(cudaEventRecord(c->land_ready[l], c->dma));
    CK(cudaStreamWaitEvent(c->copy, c->land_ready[l], 0));
    rc = launch_interleave(c, c->half, (const long long *)land,
                           (const float *)(land + 8 * n), n, c->arena + off, c->copy, err);
    if (rc)
        return rc;
    CK(cudaEventRecord(c->land_free[l], c->copy));
    return mark_written(c, cluster, err);
}

static int cuda_move(cairn_tier_store *s, uint32_t cluster, size_t dst, size_t src, size_t bytes,
                     cairn_error *err)
{
    cuda_store *c = (cuda_store *)s;
    if (cluster >= c->nlist || dst > c->cap || src > c->cap || bytes > c->cap - dst ||
        bytes > c->cap - src || bytes > c->scratch_bytes)
        return cairn_errorf(err, CAIRN_ERANGE, "tier cuda store: move of %zu bytes %zu -> %zu "
                            "(capacity %zu)", bytes, src, dst, c->cap);
    if (dst == src || bytes == 0)
        return 0;
    CK(cudaSetDevice(c->dev));
    /* cudaMemcpy's ranges must not overlap: an overlapping move goes through the scratch
     * buffer (two device-to-device copies, never the host). */
    if (dst < src + bytes && src < dst + bytes) {
        CK(cudaMemcpyAsync(c->scratch, c->arena + src, bytes, cudaMemcpyDeviceToDevice, c->copy));
        CK(cudaMemcpyAsync(c->arena + dst, c->scratch, bytes, cudaMemcpyDeviceToDevice, c->copy));
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
    CK(cudaStreamSynchronize(c->dma));
    CK(cudaStreamSynchronize(c->copy));
    return 0;
}

static double cuda_copy_rate(const cairn_tier_store *s) { return ((const cuda_store *)s)->copy_bps; }

/* ---- Search side ----------------------------------------------------------------------------- */

/* Launches stage 1 over work items [base, base + count) on the search stream. */
static cudaError_t launch_scan(cuda_store *c, const dwork *dw, size_t base, size_t count,
                               const float *dq, size_t k, float *cs, long long *cid, int *cn)
{
    if (count == 0)
        return cudaSuccess;
    size_t smem = (size_t)c->d4 * 16 + CHUNK * (4 + 8);
    scan_chunks<<<(unsigned)count, THREADS, smem, c->search>>>(dw, (unsigned)base, dq, c->dim,
                                                               c->d4, (int)k, cs, cid, cn);
    return cudaGetLastError();
}

/* Queues round r's copies (its blocks into half r & 1) on the miss stream, after the scan that
 * last read that half. */
static cudaError_t queue_round(cuda_store *c, const round_t *rd, int h,
                               const cairn_tier_block *blocks, const char **what)
{
    cudaError_t e = cudaStreamWaitEvent(c->miss, c->half_free[h], 0);
    *what = "cudaStreamWaitEvent(miss)";
    for (size_t b = rd->b0; b < rd->b1 && e == cudaSuccess; b++) {
        const cairn_tier_block *x = &blocks[b];
        unsigned char *dst = c->stage + (size_t)h * c->stage_half + c->h_boff[b];
        size_t idb = 8 * x->n, vb = 4 * x->n * (size_t)c->dim;
        *what = "cudaMemcpyAsync(host block)";
        if ((const unsigned char *)x->vecs == (const unsigned char *)x->ids + idb) {
            e = cudaMemcpyAsync(dst, x->ids, idb + vb, cudaMemcpyHostToDevice, c->miss);
        } else {
            e = cudaMemcpyAsync(dst, x->ids, idb, cudaMemcpyHostToDevice, c->miss);
            if (e == cudaSuccess)
                e = cudaMemcpyAsync(dst + idb, x->vecs, vb, cudaMemcpyHostToDevice, c->miss);
        }
    }
    if (e == cudaSuccess) {
        e = cudaEventRecord(c->half_ready[h], c->miss);
        *what = "cudaEventRecord(half_ready)";
    }
    return e;
}

/*
 * Uploads the queries and nwd work items (the first nres on resident clusters, then the rounds'
 * items on staged host blocks), runs the two stages for k and downloads the results; the
 * resident items wait for the copy of cluster `newest` first (-1: none), each round's items
 * for that round's copies. On return the search and miss streams are idle, also after an
 * error (so the host blocks are no longer read).
 */
static int run_topk(cuda_store *c, const float *q, size_t nq, size_t nwd, size_t nres,
                    const round_t *rounds, size_t nr, const cairn_tier_block *blocks,
                    size_t k, long newest, cairn_error *err)
{
    size_t qb = round_up(nq * (size_t)c->dim * 4, 16), sb = round_up((nq + 1) * sizeof(int), 16);
    size_t ib = round_up(nwd * sizeof(int), 16);
    size_t wb = nwd * sizeof(dwork), up = qb + sb + ib + wb;
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
    memcpy(c->h_up, q, nq * (size_t)c->dim * 4);
    memcpy(c->h_up + qb, c->h_qs, (nq + 1) * sizeof(int));
    memcpy(c->h_up + qb + sb, c->h_qitem, nwd * sizeof(int));
    memcpy(c->h_up + qb + sb + ib, c->h_work, wb);
    const float *dq = (const float *)c->d_up;
    const int *dqs = (const int *)(c->d_up + qb);
    const int *dqi = (const int *)(c->d_up + qb + sb);
    const dwork *dw = (const dwork *)(c->d_up + qb + sb + ib);
    int *cn = (int *)c->d_cand;
    float *cs = (float *)(c->d_cand + cnb);
    long long *cid = (long long *)(c->d_cand + cnb + round_up(nwd * k * 4, 16));
    int *on = (int *)c->d_down;
    float *os = (float *)(c->d_down + fb);
    long long *oi = (long long *)(c->d_down + fb + round_up(rb * 4, 16));
    int kp = 1;
    while ((size_t)kp < k)
        kp <<= 1;
    const char *what = "queueing the host blocks' first copies";
    cudaError_t e = cudaSuccess;
    /* The first two rounds' copies start at once, beside the resident scan. */
    for (size_t r = 0; r < nr && r < 2 && e == cudaSuccess; r++)
        e = queue_round(c, &rounds[r], (int)(r & 1), blocks, &what);
    if (e == cudaSuccess) {
        e = cudaMemcpyAsync(c->d_up, c->h_up, up, cudaMemcpyHostToDevice, c->search);
        what = "cudaMemcpyAsync(upload)";
    }
    if (e == cudaSuccess && newest >= 0 && nres > 0) {
        e = cudaStreamWaitEvent(c->search, c->ev[newest], 0);
        what = "cudaStreamWaitEvent";
    }
    if (e == cudaSuccess) {
        e = launch_scan(c, dw, 0, nres, dq, k, cs, cid, cn);
        what = "scan_chunks (launch)";
    }
    for (size_t r = 0; r < nr && e == cudaSuccess; r++) {
        int h = (int)(r & 1);
        if (r >= 2)
            e = queue_round(c, &rounds[r], h, blocks, &what);
        if (e == cudaSuccess) {
            e = cudaStreamWaitEvent(c->search, c->half_ready[h], 0);
            what = "cudaStreamWaitEvent(half_ready)";
        }
        if (e == cudaSuccess) {
            e = launch_scan(c, dw, rounds[r].base, rounds[r].count, dq, k, cs, cid, cn);
            what = "scan_chunks (launch, host blocks)";
        }
        if (e == cudaSuccess) {
            e = cudaEventRecord(c->half_free[h], c->search);
            what = "cudaEventRecord(half_free)";
        }
    }
    if (e == cudaSuccess) {
        merge_topk<<<(unsigned)nq, THREADS, 0, c->search>>>(dqs, dqi, cs, cid, cn, (int)k, kp, os,
                                                             oi, on);
        e = cudaGetLastError();
        what = "merge_topk (launch)";
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
    se = nr ? cudaStreamSynchronize(c->miss) : cudaSuccess;
    if (e == cudaSuccess && se != cudaSuccess) {
        e = se;
        what = "cudaStreamSynchronize(miss)";
    }
    if (e != cudaSuccess)
        return fail(err, what, e);
    return 0;
}

/* Copies the downloaded top k of each query out. */
static void take_results(const cuda_store *c, size_t nq, size_t k, float *scores, int64_t *ids,
                         size_t *filled)
{
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
}

static int cuda_scan_host(cairn_tier_store *s, const float *q, size_t nq,
                          const cairn_tier_work *w, size_t nw, const cairn_tier_block *blocks,
                          size_t nb, const cairn_tier_pair *pairs, size_t np, size_t k,
                          float *scores, int64_t *ids, size_t *filled, cairn_error *err)
{
    cuda_store *c = (cuda_store *)s;
    if (k < 1 || k > CAIRN_TIER_STORE_MAX_K || nq < 1 || nq > INT_MAX / 2)
        return cairn_errorf(err, CAIRN_EINVAL, "tier cuda store: k %zu, %zu queries", k, nq);
    /* Place the host blocks: in order, into rounds that each fill at most half the staging. */
    int rc = grow_arr((void **)&c->h_boff, &c->blk_cap, nb, sizeof(size_t), err, "blocks");
    if (!rc)
        rc = grow_arr((void **)&c->h_bround, &c->bround_cap, nb, sizeof(unsigned), err,
                      "blocks");
    if (rc)
        return rc;
    size_t nr = 0, used = 0;
    for (size_t b = 0; b < nb; b++) {
        size_t need = cairn_tier_store_stage_need(blocks[b].n, c->dim);
        if (need > c->stage_half || blocks[b].n > UINT_MAX)
            return cairn_errorf(err, CAIRN_ERANGE, "tier cuda store: host block %zu of %zu "
                                "vectors needs %zu staging bytes; %zu per round", b, blocks[b].n,
                                need, c->stage_half);
        if (nr == 0 || used + need > c->stage_half) {
            nr++;
            used = 0;
        }
        c->h_bround[b] = (unsigned)(nr - 1);
        c->h_boff[b] = used;
        used += need;
    }
    for (size_t p = 0; p < np; p++)
        if (pairs[p].block >= nb || pairs[p].query >= nq ||
            (p && pairs[p].query < pairs[p - 1].query))
            return cairn_errorf(err, CAIRN_EINVAL, "tier cuda store: pair %zu (query %u, block "
                                "%u) out of order or past %zu queries / %zu blocks", p,
                                pairs[p].query, pairs[p].block, nq, nb);
    /* Work items: the resident ones first (query by query), then each round's. */
    size_t nres = 0, nwd;
    for (size_t i = 0; i < nw; i++)
        nres += (w[i].n + CHUNK - 1) / CHUNK;
    round_t *rounds = NULL;
    if (nr) {
        rounds = (round_t *)calloc(nr, sizeof(round_t));
        if (!rounds)
            return cairn_errorf(err, CAIRN_ENOMEM, "tier cuda store: %zu rounds", nr);
    }
    for (size_t b = 0; b < nb; b++) {
        round_t *rd = &rounds[c->h_bround[b]];
        if (rd->b1 == 0)
            rd->b0 = b;
        rd->b1 = b + 1;
    }
    for (size_t p = 0; p < np; p++)
        rounds[c->h_bround[pairs[p].block]].count +=
            (blocks[pairs[p].block].n + CHUNK - 1) / CHUNK;
    nwd = nres;
    for (size_t r = 0; r < nr; r++) {
        rounds[r].base = nwd;
        nwd += rounds[r].count;
    }
    rc = work_room(c, nwd, nq, err);
    if (!rc)
        rc = grow_arr((void **)&c->h_rpos, &c->round_cap, nr, sizeof(size_t), err, "rounds");
    if (rc) {
        free(rounds);
        return rc;
    }
    for (size_t r = 0; r < nr; r++)
        c->h_rpos[r] = rounds[r].base;
    int *qstart = c->h_qs, *qitem = c->h_qitem;
    long newest = -1;
    size_t at = 0, pp = 0, wd = 0, qi = 0;
    for (size_t i = 0; i < nq; i++) {
        qstart[i] = (int)qi;
        for (; at < nw && w[at].query == i; at++) {
            const cairn_tier_work *x = &w[at];
            if (x->cluster >= c->nlist || x->off > c->cap ||
                cuda_bytes(s, x->n) > c->cap - x->off) {
                free(rounds);
                return cairn_errorf(err, CAIRN_ERANGE, "tier cuda store: cluster %u (%zu "
                                    "vectors) at %zu past the capacity %zu", x->cluster, x->n,
                                    x->off, c->cap);
            }
            if (c->seq[x->cluster] &&
                (newest < 0 || c->seq[x->cluster] > c->seq[newest]))
                newest = (long)x->cluster;
            const unsigned char *slot = c->arena + x->off;
            const unsigned char *vec = slot + ids_bytes(x->n);
            for (size_t r0 = 0; r0 < x->n; r0 += CHUNK) {
                size_t m = x->n - r0 < CHUNK ? x->n - r0 : CHUNK;
                qitem[qi++] = (int)wd;
                c->h_work[wd++] = dwork{vec + r0 / 32 * c->group_bytes,
                                        (const long long *)slot + r0, 0, (unsigned)m,
                                        (unsigned)i, x->skip ? 1u : 0u,
                                        c->half ? (unsigned)LAYOUT_F16 : (unsigned)LAYOUT_F32};
            }
        }
        for (; pp < np && pairs[pp].query == i; pp++) {
            uint32_t b = pairs[pp].block;
            unsigned r = c->h_bround[b];
            const unsigned char *blk = c->stage + (size_t)(r & 1) * c->stage_half + c->h_boff[b];
            size_t n = blocks[b].n;
            for (size_t r0 = 0; r0 < n; r0 += CHUNK) {
                size_t m = n - r0 < CHUNK ? n - r0 : CHUNK;
                size_t d = c->h_rpos[r]++;
                qitem[qi++] = (int)d;
                c->h_work[d] = dwork{blk + 8 * n + r0 * (size_t)c->dim * 4,
                                     (const long long *)blk + r0, 0, (unsigned)m, (unsigned)i,
                                     0u, (unsigned)LAYOUT_ROWS};
            }
        }
    }
    qstart[nq] = (int)qi;
    if (at != nw || pp != np) {
        free(rounds);
        return cairn_errorf(err, CAIRN_EINVAL, "tier cuda store: work items not sorted by "
                            "query, or a query past the batch of %zu", nq);
    }
    if (!(rc = set_device(c, err)))
        rc = run_topk(c, q, nq, nwd, nres, rounds, nr, blocks, k, newest, err);
    free(rounds);
    if (rc)
        return rc;
    take_results(c, nq, k, scores, ids, filled);
    return 0;
}

static int cuda_scan(cairn_tier_store *s, const float *q, size_t nq, const cairn_tier_work *w,
                     size_t nw, size_t k, float *scores, int64_t *ids, size_t *filled,
                     cairn_error *err)
{
    return cuda_scan_host(s, q, nq, w, nw, NULL, 0, NULL, 0, k, scores, ids, filled, err);
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
            c->h_qitem[i * per + b] = (int)(i * per + b);
            c->h_work[i * per + b] = dwork{c->cent + r0 / 32 * gb32, NULL, (long long)r0,
                                           (unsigned)m, (unsigned)i, 0, (unsigned)LAYOUT_F32};
        }
    }
    qstart[nq] = (int)nwd;
    if ((rc = set_device(c, err)) ||
        (rc = run_topk(c, q, nq, nwd, nwd, NULL, 0, NULL, nprobe, -1, err)))
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
    CAIRN_TIER_STORE_VERSION, "cuda",    cuda_close, cuda_bytes,     cuda_copy_in,
    cuda_move,                cuda_sync, cuda_scan,  cuda_rank,      cuda_scan_host,
    cuda_copy_rate,
};

/* ---- Open ------------------------------------------------------------------------------------ */

/* The rate of a page-locked host-to-device copy (8 MiB pieces, as prefetches copy clusters of
 * a few MiB): the ring's buffers into a scratch allocation, timed by events on the dma stream. */
static int measure_copy(cuda_store *c, cairn_error *err)
{
    unsigned char *d = NULL;
    cudaEvent_t a = NULL, b = NULL;
    cudaError_t e = cudaMalloc((void **)&d, RING_BYTES);
    if (e == cudaSuccess)
        e = cudaEventCreate(&a);
    if (e == cudaSuccess)
        e = cudaEventCreate(&b);
    if (e == cudaSuccess) /* warm-up */
        e = cudaMemcpyAsync(d, c->ring[0], RING_BYTES, cudaMemcpyHostToDevice, c->dma);
    if (e == cudaSuccess)
        e = cudaEventRecord(a, c->dma);
    enum { REPS = 8 };
    for (int r = 0; r < REPS && e == cudaSuccess; r++)
        e = cudaMemcpyAsync(d, c->ring[r % RING], RING_BYTES, cudaMemcpyHostToDevice, c->dma);
    if (e == cudaSuccess)
        e = cudaEventRecord(b, c->dma);
    if (e == cudaSuccess)
        e = cudaEventSynchronize(b);
    float ms = 0;
    if (e == cudaSuccess)
        e = cudaEventElapsedTime(&ms, a, b);
    if (e == cudaSuccess && ms > 0)
        c->copy_bps = (double)REPS * RING_BYTES / (ms * 1e-3);
    cudaStreamSynchronize(c->dma);
    if (a)
        cudaEventDestroy(a);
    if (b)
        cudaEventDestroy(b);
    cudaFree(d);
    return e == cudaSuccess ? 0 : fail(err, "measuring a page-locked copy", e);
}

static int open_device(cuda_store *c, const cairn_tier_store_params *p, cairn_error *err)
{
    CK(cudaSetDevice(c->dev));
    size_t max_slot = cuda_bytes(&c->base, c->max_list);
    c->landing_bytes = round_up(c->max_list * (8 + 4 * (size_t)c->dim), 256);
    if (c->landing_bytes == 0)
        c->landing_bytes = 256;
    c->scratch_bytes = round_up(max_slot, 256);
    if (c->scratch_bytes == 0)
        c->scratch_bytes = 256;
    c->stage_half = p->stage_bytes / 2 / 256 * 256;
    size_t extra = NLAND * c->landing_bytes + c->scratch_bytes + 2 * c->stage_half;
    /* Asked first, so that a fast tier larger than the GPU is a plain error, not a failed
     * allocation (which compute-sanitizer would also report). */
    size_t free_b = 0, total_b = 0;
    CK(cudaMemGetInfo(&free_b, &total_b));
    if (c->cap + extra > free_b)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier cuda store: GPU %d has %zu bytes free (of "
                            "%zu); the fast tier asks %zu bytes", c->dev, free_b, total_b,
                            c->cap + extra);
    cudaError_t e = cudaMalloc((void **)&c->arena, c->cap);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return cairn_errorf(err, CAIRN_ENOMEM, "tier cuda store: GPU %d: %zu bytes for the fast "
                            "tier: %s", c->dev, c->cap, cudaGetErrorString(e));
    }
    for (int l = 0; l < NLAND; l++) {
        CK(cudaMalloc((void **)&c->landing[l], c->landing_bytes));
        CK(cudaEventCreateWithFlags(&c->land_ready[l], cudaEventDisableTiming));
        CK(cudaEventCreateWithFlags(&c->land_free[l], cudaEventDisableTiming));
    }
    CK(cudaMalloc((void **)&c->scratch, c->scratch_bytes));
    if (c->stage_half)
        CK(cudaMalloc((void **)&c->stage, 2 * c->stage_half));
    for (int h = 0; h < 2; h++) {
        CK(cudaEventCreateWithFlags(&c->half_ready[h], cudaEventDisableTiming));
        CK(cudaEventCreateWithFlags(&c->half_free[h], cudaEventDisableTiming));
    }
    CK(cudaStreamCreateWithFlags(&c->dma, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&c->search, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&c->miss, cudaStreamNonBlocking));
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
    return measure_copy(c, err);
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
