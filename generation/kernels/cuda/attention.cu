/*
 * generation/kernels/cuda/attention.cu — paged attention over the KV block tables.
 *
 * One kernel serves decode tokens and prefill chunks: a block takes one batch token, one KV
 * head with the G query heads that share it (grouped-query attention reads each K/V row once
 * for all of them), and one split of the token's key range. It walks the keys in tiles of
 * CAIRN__ATTN_TILE positions: the tile's K and V rows (F16) go to shared memory through the
 * block table, the scores scale * q.k are computed, and an online softmax (running max m,
 * running sum l, rescaled accumulator o; Milakov & Gimelshein 2018, as in FlashAttention)
 * folds them in without ever holding all scores.
 *
 * Decode (few tokens, long contexts) would leave most of the GPU idle with one block per
 * (token, KV head), so the key range is split over several blocks ("flash-decoding"): each
 * writes its unnormalised o with its m and l, and a second kernel merges the splits with the
 * log-sum-exp rule o = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s, M = max_s m_s.
 *
 * Prefill runs (RUN_MIN or more consecutive positions of one sequence in the batch, outside
 * graphs) go another way: their keys are gathered into contiguous rows, and cuBLAS computes
 * S = scale Q K^T per head in FP32 from F16 inputs (tensor cores), a kernel turns each row into
 * causal, windowed softmax probabilities rounded to F16 (as the CPU backend rounds them), and
 * cuBLAS computes O = P V. Each token's queries otherwise reread its keys from the cache per
 * tile, which for a 512-token chunk cost more than the chunk's matrix products.
 *
 * Sliding windows: keys lo = max(0, pos - window + 1) .. pos. A table entry of -1 (a freed
 * window block) inside the range is skipped as a masked key rather than read; kv.c frees
 * only blocks no query can see, so this guards memory, not results.
 * Arithmetic: scores, exponentials, sums and the V products in FP32 over the F16 cache.
 */
#include "generation/kernels/cuda/common.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ATTN_THREADS 128
#define ATTN_VL 4 /* 16-byte K and V loads a thread keeps in flight while filling a tile */
#define TK CAIRN__ATTN_TILE
static_assert(TK == 32, "the softmax step gives each key of a tile one lane of a warp");

struct attn_args {
    const float *q;
    float *out;
    const uint16_t *k, *v; /* the layer's rows in block 0 of its group's pools */
    int64_t block_elems;
    int kv_dim, bt;
    const int32_t *tables;
    int n_seqs, max_table, group;
    const int32_t *pos, *slot;
    int n_head, n_head_kv, hd, G, window;
    float scale;
    int n_split;
    int t_base; /* the launch covers batch tokens t_base + blockIdx.z */
    bool vec;   /* K and V rows in 16-byte loads (attn_vec_ok) */
    bool one_block; /* attn_short instead of attn_tile (and its merge) */
    size_t smem;    /* the dynamic shared memory of the kernel that runs */
    float *part; /* n_split > 1: partial o, rows of hd; then (m, l) pairs from part_ml */
    float *part_ml;
    int8_t *q8; /* the output's quantized form too (put_out), by attn_tile when unsplit, else
                   by attn_merge; or NULL */
    float2 *q8_ds;
};

/* Fewer blocks than this many per SM leave the GPU underused: split the keys. */
#define SPLIT_WAVES 2
#define SPLIT_MAX 64

/* The keys a split takes when a token's n_keys are cut into at most n_split runs: equal runs,
 * but never shorter than a tile (a short context in many splits paid a block and a merge term
 * for each key or two). The runs past the last key are empty. */
static __device__ __forceinline__ int split_len_of(int n_keys, int n_split)
{
    const int len = (n_keys + n_split - 1) / n_split;
    return len < TK ? TK : len;
}

/* The cache block of position p in a table, or -1. */
static __device__ __forceinline__ int block_of(const int32_t *table, int p, int bt, int max_table)
{
    const int i = p / bt;
    return i < max_table ? table[i] : -1;
}

/*
 * K and V rows kb .. kb + nk - 1 of a tile into ks, vs (rows of hd + 2 halves; a freed block's
 * rows as zeros), kv head offset hoff, for attn_tile's threads.
 * tile_rows_vec (a.vec): ATTN_VL pieces of 8 values of K and of V a thread in flight before any
 * store, so the tile's rows arrive in one memory round trip or two (hd 128: one). tile_rows: two
 * values a load (rows are 4-byte aligned: hd even), one load and one store a trip, which paid a
 * round trip a trip (sixteen at hd 128).
 */
template <int NTH = ATTN_THREADS>
static __device__ __forceinline__ void tile_rows_vec(const attn_args &a, const int32_t *table,
                                                     int kb, int nk, int64_t hoff, __half *ks,
                                                     __half *vs)
{
    const int hs = a.hd + 2, h8 = a.hd / 8, n8 = nk * h8, tid = threadIdx.x;
    for (int i0 = 0; i0 < n8; i0 += ATTN_VL * NTH) {
        int4 kk[ATTN_VL], vv[ATTN_VL];
#pragma unroll
        for (int u = 0; u < ATTN_VL; u++) {
            const int i = i0 + u * NTH + tid, j = i / h8, c = i - j * h8;
            kk[u] = vv[u] = make_int4(0, 0, 0, 0);
            const int blk = i < n8 ? block_of(table, kb + j, a.bt, a.max_table) : -1;
            if (blk >= 0) {
                const int64_t off = (int64_t)blk * a.block_elems +
                                    (int64_t)((kb + j) % a.bt) * a.kv_dim + hoff + 8 * c;
                kk[u] = __ldg((const int4 *)(a.k + off));
                vv[u] = __ldg((const int4 *)(a.v + off));
            }
        }
#pragma unroll
        for (int u = 0; u < ATTN_VL; u++) {
            const int i = i0 + u * NTH + tid, j = i / h8, c = i - j * h8;
            if (i < n8) { /* padded rows are 4-byte aligned: four stores of two */
                const int w[4] = {kk[u].x, kk[u].y, kk[u].z, kk[u].w};
                const int x[4] = {vv[u].x, vv[u].y, vv[u].z, vv[u].w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    *(int *)(ks + j * hs + 8 * c + 2 * e) = w[e];
                    *(int *)(vs + j * hs + 8 * c + 2 * e) = x[e];
                }
            }
        }
    }
}

static __device__ __forceinline__ void tile_rows(const attn_args &a, const int32_t *table, int kb,
                                                 int nk, int64_t hoff, __half *ks, __half *vs)
{
    const int hs = a.hd + 2, hp = a.hd / 2;
    for (int i = threadIdx.x; i < nk * hp; i += blockDim.x) {
        const int j = i / hp, c = i - j * hp, p = kb + j;
        const int blk = block_of(table, p, a.bt, a.max_table);
        __half2 kk = __float2half2_rn(0.0f), vv = kk;
        if (blk >= 0) {
            const int64_t off = (int64_t)blk * a.block_elems + (int64_t)(p % a.bt) * a.kv_dim +
                                hoff + 2 * c;
            kk = *(const __half2 *)(a.k + off);
            vv = *(const __half2 *)(a.v + off);
        }
        *(__half2 *)(ks + j * hs + 2 * c) = kk;
        *(__half2 *)(vs + j * hs + 2 * c) = vv;
    }
}

/* Output value i of the step's rows, and its quantized form when q is set (the output
 * product's input: every lane of the warp calls, on 32 consecutive values of one head; the
 * step's rows are contiguous, so block i / 32 of the rows is block i / 32 of the scratch). */
static __device__ __forceinline__ void put_out(float *out, int8_t *q, float2 *ds, int64_t i,
                                               float v)
{
    out[i] = v;
    if (q)
        cairn__q8_lane(v, q, ds, i / 32);
}

/* sum over keys j < nk of p[j] V[j][d] (V rows hs halves apart in shared memory), in four
 * chains (fewer dependent FMAs in a row), added up in a fixed order. */
static __device__ __forceinline__ float pv_sum(const float *p, const __half *vs, int hs, int d,
                                               int nk)
{
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int j = 0;
    for (; j + 4 <= nk; j += 4)
#pragma unroll
        for (int u = 0; u < 4; u++)
            acc[u] = fmaf(p[j + u], __half2float(vs[(j + u) * hs + d]), acc[u]);
    for (; j < nk; j++)
        acc[0] = fmaf(p[j], __half2float(vs[j * hs + d]), acc[0]);
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

__global__ void __launch_bounds__(ATTN_THREADS) attn_tile(attn_args a)
{
    cairn__pdl_stage();
    extern __shared__ float smem[];
    const int G = a.G, hd = a.hd, hp = hd / 2, hs = hd + 2; /* hs: padded row, in halves */
    float *qs = smem;       /* G x hd queries */
    float *os = qs + G * hd; /* G x hd accumulators */
    float *ps = os + G * hd; /* G x TK scores, then probabilities */
    float *ms = ps + G * TK; /* G running maxima */
    float *ls = ms + G;      /* G running sums */
    float *cs = ls + G;      /* G rescale factors of the current tile */
    __half *ks = (__half *)(cs + G); /* TK x hs: K rows of the tile */
    __half *vs = ks + TK * hs;       /* TK x hs: V rows */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
    const int s = blockIdx.x, kvh = blockIdx.y, t = a.t_base + blockIdx.z;

    const int pos = a.pos[t];
    int lo = a.window ? pos - a.window + 1 : 0;
    if (lo < 0)
        lo = 0;
    /* This token's keys, cut into runs (here, not on the host: a step's launch then does not
     * depend on its positions, and a captured graph replays for any). */
    const int split_len = split_len_of(pos - lo + 1, a.n_split);
    const int k0 = lo + s * split_len;
    const int k1 = min(pos, k0 + split_len - 1);
    /* partial row of query head (kvh G + g): ((i n_head + kvh G + g) n_split + s), i the
     * token's place in this launch (the partials hold one launch's tokens) */
    const int64_t prow0 =
        ((int64_t)blockIdx.z * a.n_head + (int64_t)kvh * G) * a.n_split + s;
    if (k0 > pos) { /* this token has fewer keys than the longest: an empty split */
        for (int g = tid; g < G; g += blockDim.x) {
            a.part_ml[2 * (prow0 + (int64_t)g * a.n_split)] = -INFINITY;
            a.part_ml[2 * (prow0 + (int64_t)g * a.n_split) + 1] = 0.0f;
        }
        return;
    }
    const int32_t *table = a.tables + ((int64_t)a.group * a.n_seqs + a.slot[t]) * a.max_table;
    const float *qt = a.q + ((int64_t)t * a.n_head + (int64_t)kvh * G) * hd;
    for (int i = tid; i < G * hd; i += blockDim.x) {
        qs[i] = qt[i];
        os[i] = 0.0f;
    }
    for (int g = tid; g < G; g += blockDim.x) {
        ms[g] = -INFINITY;
        ls[g] = 0.0f;
    }
    const int64_t hoff = (int64_t)kvh * hd;
    __syncthreads();

    for (int kb = k0; kb <= k1; kb += TK) {
        const int nk = min(TK, k1 - kb + 1);
        if (a.vec)
            tile_rows_vec(a, table, kb, nk, hoff, ks, vs);
        else
            tile_rows(a, table, kb, nk, hoff, ks, vs);
        __syncthreads();
        /* Scores: thread (g, j); lanes take consecutive keys, whose padded rows fall in
         * different banks. */
        for (int i = tid; i < G * TK; i += blockDim.x) {
            const int g = i / TK, j = i - g * TK;
            float sc = -INFINITY;
            if (j < nk && block_of(table, kb + j, a.bt, a.max_table) >= 0) {
                const float *qg = qs + g * hd;
                const __half2 *kr = (const __half2 *)(ks + j * hs);
                /* Four sums: fewer dependent FMAs in a row than one chain of hd (session 15
                 * measured no difference in a whole step; docs/BENCHMARKS.md). */
                float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                int c = 0;
                for (; c + 2 <= hp; c += 2) {
                    const float2 k0 = __half22float2(kr[c]), k1 = __half22float2(kr[c + 1]);
                    acc[0] = fmaf(qg[2 * c], k0.x, acc[0]);
                    acc[1] = fmaf(qg[2 * c + 1], k0.y, acc[1]);
                    acc[2] = fmaf(qg[2 * c + 2], k1.x, acc[2]);
                    acc[3] = fmaf(qg[2 * c + 3], k1.y, acc[3]);
                }
                for (; c < hp; c++) { /* hd / 2 odd */
                    const float2 k0 = __half22float2(kr[c]);
                    acc[0] = fmaf(qg[2 * c], k0.x, acc[0]);
                    acc[1] = fmaf(qg[2 * c + 1], k0.y, acc[1]);
                }
                sc = a.scale * ((acc[0] + acc[1]) + (acc[2] + acc[3]));
            }
            ps[i] = sc;
        }
        __syncthreads();
        /* Online softmax, a warp per query head, a lane per key of the tile. */
        for (int g = warp; g < G; g += nwarps) {
            const float v = ps[g * TK + lane];
            const float m_old = ms[g], m_new = fmaxf(m_old, cairn__warp_max(v));
            const float p = m_new == -INFINITY ? 0.0f : expf(v - m_new);
            const float corr = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
            const float sum = cairn__warp_sum(p);
            ps[g * TK + lane] = p;
            /* Every lane has read ms[g] and ls[g] before lane 0 overwrites them (racecheck: the
             * shuffles order the lanes, but not their shared-memory accesses). */
            __syncwarp();
            if (lane == 0) {
                ms[g] = m_new;
                ls[g] = ls[g] * corr + sum;
                cs[g] = corr;
            }
        }
        __syncthreads();
        /* o = o * corr + P V: thread (g, d), lanes over consecutive d. */
        for (int i = tid; i < G * hd; i += blockDim.x) {
            const int g = i / hd, d = i - g * hd;
            os[i] = os[i] * cs[g] + pv_sum(ps + g * TK, vs, hs, d, nk);
        }
        __syncthreads();
    }

    if (a.n_split == 1) {
        const int64_t o0 = ((int64_t)t * a.n_head + (int64_t)kvh * G) * hd;
        for (int i = tid; i < G * hd; i += blockDim.x) {
            const float l = ls[i / hd];
            put_out(a.out, a.q8, a.q8_ds, o0 + i, l > 0.0f ? os[i] / l : 0.0f);
        }
        return;
    }
    for (int i = tid; i < G * hd; i += blockDim.x) {
        const int g = i / hd, d = i - g * hd;
        a.part[(prow0 + (int64_t)g * a.n_split) * hd + d] = os[i];
    }
    for (int g = tid; g < G; g += blockDim.x) {
        a.part_ml[2 * (prow0 + (int64_t)g * a.n_split)] = ms[g];
        a.part_ml[2 * (prow0 + (int64_t)g * a.n_split) + 1] = ls[g];
    }
}

/*
 * The one-block form, for steps whose positions are all below CAIRN__ATTN_SHORT (decode over a
 * short context, the common case of a chat turn's first hundred tokens): a block takes one
 * (token, KV head) and all of the token's keys at once. The tile path above walks keys in
 * tiles of 32, each a round trip to memory and four barriers, and splits them over blocks with
 * a merge kernel after; for a hundred keys that chain, not the bytes, set attention's time (an
 * H100, Llama-3-8B shapes, batch 1 at ~50 keys: 13.6 us a layer, CAIRN_CUDA_SKIP=attn).
 * Here the token's position, slot and queries load together, then every K and V row of its
 * keys in one round trip (16-byte loads, ATTN_VL in flight a thread); a warp a key computes
 * the G scores (its lanes over the head's values, the sums by shuffles); a warp a query head
 * takes the softmax over all keys at once; and a thread an output value sums P V and leaves
 * it (and its int8 form for the output product, put_out) in place.
 * Same arithmetic as the tile path: FP32 scores, exponentials and sums over the F16 cache.
 */
#define SHORT_THREADS 256
#define SHORT_GMAX 8 /* query heads a KV head at most (a lane keeps a sum for each) */

__global__ void __launch_bounds__(SHORT_THREADS) attn_short(attn_args a)
{
    cairn__pdl_stage();
    extern __shared__ float smem[];
    const int G = a.G, hd = a.hd, h2 = hd / 2, hs = hd + 2;
    float *qs = smem;                         /* G x hd queries */
    float *ps = qs + G * hd;                  /* G x CAIRN__ATTN_SHORT scores, probabilities */
    float *inv = ps + G * CAIRN__ATTN_SHORT;  /* G: 1 / the sum of the head's exponentials */
    __half *ks = (__half *)(inv + SHORT_GMAX); /* keys x hs: K rows */
    __half *vs = ks + CAIRN__ATTN_SHORT * hs;  /* V rows */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = SHORT_THREADS / 32;
    const int kvh = blockIdx.x, t = a.t_base + blockIdx.y;
    const int pos = a.pos[t], slot = a.slot[t];
    const float *qt = a.q + ((int64_t)t * a.n_head + (int64_t)kvh * G) * hd;
    for (int i = tid; i < G * hd; i += SHORT_THREADS)
        qs[i] = qt[i];
    int lo = a.window ? pos - a.window + 1 : 0;
    lo = lo < 0 ? 0 : lo;
    const int nk = pos - lo + 1; /* <= CAIRN__ATTN_SHORT: the host's test */
    const int32_t *table = a.tables + ((int64_t)a.group * a.n_seqs + slot) * a.max_table;
    tile_rows_vec<SHORT_THREADS>(a, table, lo, nk, (int64_t)kvh * hd, ks, vs);
    __syncthreads();

    /* Scores: a warp a key, lane l over the value pairs l, l + 32, ... of the row. */
    for (int j = warp; j < nk; j += nw) {
        float acc[SHORT_GMAX];
#pragma unroll
        for (int g = 0; g < SHORT_GMAX; g++)
            acc[g] = 0.0f;
        const __half2 *kr = (const __half2 *)(ks + j * hs);
        for (int c = lane; c < h2; c += 32) {
            const float2 k2 = __half22float2(kr[c]);
#pragma unroll
            for (int g = 0; g < SHORT_GMAX; g++)
                if (g < G) {
                    const float2 q2 = ((const float2 *)(qs + g * hd))[c];
                    acc[g] = fmaf(q2.x, k2.x, fmaf(q2.y, k2.y, acc[g]));
                }
        }
        const bool live = block_of(table, lo + j, a.bt, a.max_table) >= 0;
#pragma unroll
        for (int g = 0; g < SHORT_GMAX; g++)
            if (g < G) {
                const float sc = cairn__warp_sum(acc[g]);
                if (lane == g)
                    ps[g * CAIRN__ATTN_SHORT + j] = live ? a.scale * sc : -INFINITY;
            }
    }
    __syncthreads();
    /* Softmax: a warp a query head, over all its keys. */
    for (int g = warp; g < G; g += nw) {
        float *pg = ps + g * CAIRN__ATTN_SHORT;
        float m = -INFINITY;
        for (int j = lane; j < nk; j += 32)
            m = fmaxf(m, pg[j]);
        m = cairn__warp_max(m);
        float l = 0.0f;
        for (int j = lane; j < nk; j += 32) {
            const float p = m == -INFINITY ? 0.0f : expf(pg[j] - m);
            pg[j] = p;
            l += p;
        }
        l = cairn__warp_sum(l);
        if (lane == 0)
            inv[g] = l > 0.0f ? 1.0f / l : 0.0f;
    }
    __syncthreads();
    /* o = P V / l: thread i takes value d of head g (i = g hd + d), lanes over consecutive d;
     * G hd is a multiple of 32 when q is set (out_q8_ok), so whole warps call put_out. */
    const int64_t o0 = ((int64_t)t * a.n_head + (int64_t)kvh * G) * hd;
    for (int i = tid; i < G * hd; i += SHORT_THREADS) {
        const int g = i / hd, d = i - g * hd;
        put_out(a.out, a.q8, a.q8_ds, o0 + i,
                pv_sum(ps + g * CAIRN__ATTN_SHORT, vs, hs, d, nk) * inv[g]);
    }
}

/* One block per (query head, token): the log-sum-exp merge of its splits. Warp 0 reads the
 * splits' (m, l) pairs a lane each and leaves each split's weight e^(m_s - M) in shared
 * memory; then every thread sums its values of o over the splits that hold keys. With q (the
 * output product's input, out_q8_ok: a thread per value, hd a multiple of 32), each warp also
 * leaves its 32 values quantized in q / ds (put_out), and the product skips quantize_q8. */
__global__ void attn_merge(const float *__restrict__ part, const float *__restrict__ ml,
                           int n_split, int hd, int n_head, int t_base,
                           const int32_t *__restrict__ pos_of, int window,
                           float *__restrict__ out, int8_t *__restrict__ q,
                           float2 *__restrict__ ds)
{
    cairn__pdl_stage();
    __shared__ float wts[SPLIT_MAX];
    __shared__ float Ls;
    const int h = blockIdx.x, t = t_base + blockIdx.y;
    const int64_t r0 = ((int64_t)blockIdx.y * n_head + h) * n_split; /* as attn_tile wrote */
    const int pos = pos_of[t];
    const int lo = window && pos - window + 1 > 0 ? pos - window + 1 : 0;
    const int n_keys = pos - lo + 1, len = split_len_of(n_keys, n_split);
    const int n_used = (n_keys + len - 1) / len; /* the later splits are empty */
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        float m = -INFINITY;
        for (int s = lane; s < n_used; s += 32)
            if (ml[2 * (r0 + s) + 1] > 0.0f)
                m = fmaxf(m, ml[2 * (r0 + s)]);
        const float M = cairn__warp_max(m);
        float L = 0.0f;
        for (int s = lane; s < n_used; s += 32) {
            const float l = ml[2 * (r0 + s) + 1];
            const float w = l > 0.0f ? expf(ml[2 * (r0 + s)] - M) : 0.0f;
            wts[s] = w;
            L += l * w;
        }
        L = cairn__warp_sum(L);
        if (lane == 0)
            Ls = L;
    }
    __syncthreads();
    const float L = Ls;
    const int64_t o0 = ((int64_t)t * n_head + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < n_used; s++)
            acc += part[(r0 + s) * hd + d] * wts[s];
        put_out(out, q, ds, o0 + d, L > 0.0f ? acc / L : 0.0f); /* q: blockDim.x == hd */
    }
}

/* Whether the kernel that writes the output (attn_tile unsplit, else attn_merge) can
 * leave it quantized for the output product too: warps of 32 values of one head (hd a
 * multiple of 32; attn_merge's one pass of a thread per value), rows the scratch holds. */
static bool out_q8_ok(const cairn__cuda *c, const attn_args &a, int T)
{
    return a.hd % 32 == 0 && a.hd <= 256 && cairn__cuda_q8_fits(c, T, (int64_t)a.n_head * a.hd);
}

/* attn_tile (and the merge when split) over batch tokens [t0, t0 + n). */
static int tiles(cairn__cuda *c, const attn_args *base, int t0, int n, bool q8,
                 cairn_error *err)
{
    attn_args a = *base;
    a.t_base = t0;
    a.q8 = q8 ? c->act_q : NULL;
    a.q8_ds = q8 ? c->act_ds : NULL;
    if (a.one_block) {
        cairn__launch(c->pdl_all, attn_short, dim3((unsigned)a.n_head_kv, (unsigned)n),
                      dim3(SHORT_THREADS), a.smem, c->stream, a);
        CU_LAUNCHED(err, "attn_short");
        return 0;
    }
    dim3 grid((unsigned)a.n_split, (unsigned)a.n_head_kv, (unsigned)n);
    cairn__launch(c->pdl_all, attn_tile, grid, dim3(ATTN_THREADS), a.smem, c->stream, a);
    CU_LAUNCHED(err, "attn_tile");
    if (a.n_split > 1) {
        int threads = a.hd < 256 ? (a.hd + 31) / 32 * 32 : 256;
        cairn__launch(c->pdl_all, attn_merge, dim3((unsigned)a.n_head, (unsigned)n),
                      dim3((unsigned)threads), 0, c->stream, a.part, a.part_ml, a.n_split, a.hd,
                      a.n_head, t0, a.pos, a.window, a.out, a.q8, a.q8_ds);
        CU_LAUNCHED(err, "attn_merge");
    }
    return 0;
}

/* ---- Prefill runs through cuBLAS ----------------------------------------------------------- */

#define RUN_MIN CAIRN__RUN_MIN

/* Keys lo..lo + n_keys - 1 of (layer, sequence) into contiguous rows Kc, Vc (kv_dim values
 * each); valid[j] says whether key j's block is live (a -1 entry: zeros, masked). */
__global__ void gather_kv(const uint16_t *__restrict__ k, const uint16_t *__restrict__ v,
                          int64_t block_elems, int kv_dim, int bt,
                          const int32_t *__restrict__ table, int max_table, int lo,
                          uint16_t *__restrict__ kc, uint16_t *__restrict__ vc,
                          uint8_t *__restrict__ valid)
{
    const int j = blockIdx.x, p = lo + j;
    const int blk = block_of(table, p, bt, max_table);
    if (threadIdx.x == 0)
        valid[j] = blk >= 0;
    const int64_t src = (int64_t)blk * block_elems + (int64_t)(p % bt) * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kc[(int64_t)j * kv_dim + i] = blk >= 0 ? k[src + i] : 0;
        vc[(int64_t)j * kv_dim + i] = blk >= 0 ? v[src + i] : 0;
    }
}

__global__ void to_f16(const float *__restrict__ x, int64_t n, __half *__restrict__ y)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(x[i]);
}

static __device__ __forceinline__ float block_max(float v, float *red)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cairn__warp_max(v);
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    float m = lane < nw ? red[lane] : -INFINITY;
    m = cairn__warp_max(m);
    __syncthreads();
    return m;
}

/* Block (i, h): row i of head h's scores (keys k_lo + j, j < n_keys; rows ld apart) into
 * probabilities at F16, over the keys query i (at position qpos0 + i) may see: lo..its
 * position, live. */
__global__ void pf_softmax(const float *__restrict__ S, __half *__restrict__ P,
                           const uint8_t *__restrict__ valid, int n_keys, int ld, int tq,
                           int k_lo, int qpos0, int window)
{
    __shared__ float red[32];
    const int i = blockIdx.x, h = blockIdx.y;
    const int64_t row = ((int64_t)h * tq + i) * ld;
    const int pos = qpos0 + i;
    int lo = window ? pos - window + 1 : 0;
    lo = lo > k_lo ? lo : k_lo;
    const int j0 = lo - k_lo, j1 = pos - k_lo; /* inclusive, inside [0, n_keys) */
    float m = -INFINITY;
    for (int j = j0 + threadIdx.x; j <= j1; j += blockDim.x)
        if (valid[j])
            m = fmaxf(m, S[row + j]);
    m = block_max(m, red);
    float sum = 0.0f;
    for (int j = j0 + threadIdx.x; j <= j1; j += blockDim.x)
        if (valid[j])
            sum += expf(S[row + j] - m);
    sum = cairn__block_sum(sum, red);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int j = threadIdx.x; j < n_keys; j += blockDim.x) {
        const bool in = j >= j0 && j <= j1 && valid[j];
        P[row + j] = __float2half_rn(in ? expf(S[row + j] - m) * inv : 0.0f);
    }
}

static size_t align256(size_t n) { return (n + 255) / 256 * 256; }

/* Score rows are n_keys rounded up to 8 apart, so that every head's and row's start is
 * 16-byte aligned for cuBLAS's tensor-core kernels. */
static int64_t keys_ld(int64_t n_keys) { return (n_keys + 7) / 8 * 8; }

/* The scratch a run of n queries from position p0 takes: the gathered keys, the queries at
 * F16, and per query row the scores (FP32) and probabilities (F16) of every head. Returns the
 * query rows a pass can take (0: the run does not fit; tiles then). */
static int run_rows(const cairn__cuda *c, const cairn_battn *p, int p0, int n)
{
    const int64_t kv_dim = p->kv->kv_dim, qd = (int64_t)p->n_head * p->head_dim;
    int k_lo = p->window ? p0 - p->window + 1 : 0;
    k_lo = k_lo < 0 ? 0 : k_lo;
    const int64_t n_keys = p0 + n - k_lo;
    const size_t fixed = 2 * align256((size_t)(n_keys * kv_dim) * 2) + align256((size_t)n_keys) +
                         align256((size_t)(n * qd) * 2);
    const size_t per_row = (size_t)p->n_head * (size_t)keys_ld(n_keys) * (4 + 2);
    if (!c->pf || fixed >= c->pf_bytes || n_keys > (1 << 30))
        return 0;
    size_t rows = (c->pf_bytes - fixed - 512) / per_row;
    return rows > (size_t)n ? n : (int)rows;
}

/* The end of the run of consecutive positions of one sequence that starts at batch token t. */
static int run_end(const int32_t *hpos, const int32_t *hslot, int T, int t)
{
    int e = t + 1;
    while (e < T && hslot[e] == hslot[t] && hpos[e] == hpos[e - 1] + 1)
        e++;
    return e;
}

static int prefill_run(cairn__cuda *c, const cairn_battn *p, const attn_args *a, int t0, int n,
                       cairn_error *err)
{
    const int32_t *hpos = cairn__b_pos(c->h_batch, c->n_tokens);
    const int slot = cairn__b_slot(c->h_batch, c->n_tokens)[t0], p0 = hpos[t0];
    const int hd = p->head_dim, G = a->G, n_kv = p->n_head_kv, kv_dim = a->kv_dim;
    const int qd = p->n_head * hd;
    int k_lo = p->window ? p0 - p->window + 1 : 0;
    k_lo = k_lo < 0 ? 0 : k_lo;
    const int n_keys = p0 + n - k_lo, ld = (int)keys_ld(n_keys);
    const int tq_max = run_rows(c, p, p0, n);
    uint8_t *base = (uint8_t *)c->pf;
    uint16_t *kc = (uint16_t *)base;
    uint16_t *vc = (uint16_t *)(base + align256((size_t)n_keys * kv_dim * 2));
    uint8_t *valid = (uint8_t *)vc + align256((size_t)n_keys * kv_dim * 2);
    __half *qh = (__half *)(valid + align256((size_t)n_keys));
    float *S = (float *)((uint8_t *)qh + align256((size_t)n * qd * 2));
    __half *P = (__half *)(S + (size_t)p->n_head * tq_max * ld);

    const int32_t *table = cairn__b_tables(c->d_batch, c->n_tokens) +
                           ((int64_t)a->group * c->n_seqs + slot) * c->max_table;
    gather_kv<<<(unsigned)n_keys, 128, 0, c->stream>>>(a->k, a->v, a->block_elems, kv_dim, a->bt,
                                                      table, c->max_table, k_lo, kc, vc, valid);
    CU_LAUNCHED(err, "gather_kv");
    const int64_t nq = (int64_t)n * qd, nqb = (nq + 255) / 256;
    to_f16<<<(unsigned)(nqb < 65535 * 8 ? nqb : 65535 * 8), 256, 0, c->stream>>>(
        a->q + (int64_t)t0 * qd, nq, qh);
    CU_LAUNCHED(err, "to_f16");
    const float zero = 0.0f, one = 1.0f, scale = p->scale;
    for (int i0 = 0; i0 < n; i0 += tq_max) {
        const int tq = n - i0 < tq_max ? n - i0 : tq_max;
        const long long s_head = (long long)tq * ld; /* one head's scores */
        /* S_h (n_keys x tq, column-major) = scale K_kvh^T Q_h for the heads h = kvh G + g */
        for (int g = 0; g < G; g++)
            BLAS_TRY(err, cublasGemmStridedBatchedEx(
                              c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n_keys, tq, hd, &scale, kc,
                              CUDA_R_16F, kv_dim, hd, qh + (int64_t)i0 * qd + (int64_t)g * hd,
                              CUDA_R_16F, qd, (long long)G * hd, &zero, S + g * s_head,
                              CUDA_R_32F, ld, G * s_head, n_kv, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
        pf_softmax<<<dim3((unsigned)tq, (unsigned)p->n_head), 256, 0, c->stream>>>(
            S, P, valid, n_keys, ld, tq, k_lo, p0 + i0, p->window);
        CU_LAUNCHED(err, "pf_softmax");
        /* O_h (hd x tq, column-major, into out's rows) = V_kvh P_h */
        for (int g = 0; g < G; g++)
            BLAS_TRY(err, cublasGemmStridedBatchedEx(
                              c->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, tq, n_keys, &one, vc,
                              CUDA_R_16F, kv_dim, hd, P + g * s_head, CUDA_R_16F, ld,
                              G * s_head, &zero, a->out + (int64_t)(t0 + i0) * qd + g * hd,
                              CUDA_R_32F, qd, (long long)G * hd, n_kv, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    }
    return 0;
}

/* Whether attn_tile reads K and V rows 8 values to a 16-byte load: hd, kv_dim and the blocks
 * multiples of 8 values, the pools 16-byte aligned (else two values at a time: rows are 4-byte
 * aligned, hd even), unless CAIRN_CUDA_ATTN_VEC=0 (to measure the two side by side). */
static bool attn_vec_ok(const attn_args &a)
{
    const char *e = getenv("CAIRN_CUDA_ATTN_VEC");
    return !(e && !strcmp(e, "0")) && a.hd % 8 == 0 && a.kv_dim % 8 == 0 &&
           a.block_elems % 8 == 0 && (((uintptr_t)a.k | (uintptr_t)a.v) & 15) == 0;
}

int cairn__cuda_attention_init(cairn__cuda *c, cairn_error *err)
{
    /* Once, at open, to all the GPU allows: a call in a captured step must not need it. */
    CU_TRY(err, cudaFuncSetAttribute(attn_tile, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)c->smem_optin));
    CU_TRY(err, cudaFuncSetAttribute(attn_short, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)c->smem_optin));
    return 0;
}

int cairn__cuda_attention(cairn_backend *be, const cairn_battn *p, const float *q, float *out,
                          cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    cairn__cuda_q8_forget(c); /* it may write where q8_src points */
    int rc = cairn__cuda_need_batch(c, "attention", err);
    if (rc || (rc = cairn__cuda_enter(c, err)))
        return rc;
    const cairn_bkv *kv = p->kv;
    if (p->n_head < 1 || p->n_head_kv < 1 || p->n_head % p->n_head_kv != 0 || p->head_dim < 2 ||
        p->head_dim % 2 != 0 || !kv || kv->kv_dim != p->n_head_kv * p->head_dim)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: attention over %d heads, %d KV "
                            "heads of %d values (cache rows of %d)", p->n_head, p->n_head_kv,
                            p->head_dim, kv ? kv->kv_dim : 0);
    const int g = kv->layer_group[p->layer];
    if (g < 0 || g >= kv->n_groups || g >= c->n_groups)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: layer %d's KV group %d is not in "
                            "the batch's %d groups", p->layer, g, c->n_groups);
    const int T = c->n_tokens, G = p->n_head / p->n_head_kv, hd = p->head_dim;
    if (T > 65535)
        return cairn_errorf(err, CAIRN_ELIMIT, "cuda backend: attention over %d tokens (at most "
                            "65535 a step)", T);
    const size_t smem = sizeof(float) * (size_t)(2 * G * hd + G * TK + 3 * G) +
                        sizeof(__half) * 2 * TK * (size_t)(hd + 2);
    if (smem > c->smem_optin)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "cuda backend: attention with %d query "
                            "heads per KV head of %d values needs %zu bytes of shared memory, "
                            "the GPU allows %zu", G, hd, smem, c->smem_optin);
    /* The tokens the tiles take: all of them, or those outside the prefill runs that go
     * through cuBLAS (the same test as the launch loop below). */
    const bool runs = c->gmode == CAIRN__G_DIRECT && c->has_runs;
    const int32_t *hpos = cairn__b_pos(c->h_batch, T), *hslot = cairn__b_slot(c->h_batch, T);
    int n_tile = T;
    if (runs) {
        n_tile = 0;
        for (int t = 0, e; t < T; t = e) {
            e = run_end(hpos, hslot, T, t);
            if (!(e - t >= RUN_MIN && run_rows(c, p, hpos[t], e - t) > 0))
                n_tile += e - t;
        }
    }
    /* The split depends on the step's shape only (each token cuts its own keys into n_split
     * runs): enough blocks for SPLIT_WAVES per SM over the tiles' tokens, as far as the
     * partials' scratch allows. Counting every token of a mixed step here (its prefill runs
     * included) gave its few decode tokens one block per KV head each. */
    int n_split = 1;
    const int base = n_tile * p->n_head_kv;
    if (n_tile > 0 && base < SPLIT_WAVES * c->n_sm) {
        size_t fit = CAIRN__ATTN_PART_FLOATS / ((size_t)n_tile * p->n_head * (size_t)(hd + 2));
        n_split = (SPLIT_WAVES * c->n_sm + base - 1) / base;
        n_split = n_split < c->attn_split_max ? n_split : c->attn_split_max;
        if ((size_t)n_split > fit)
            n_split = (int)fit;
        if (n_split < 2)
            n_split = 1;
    }
    const size_t layer_off = (size_t)kv->layer_index[p->layer] * kv->block_tokens * kv->kv_dim;
    const size_t rows = (size_t)n_tile * p->n_head * n_split;
    attn_args a;
    a.q = q;
    a.out = out;
    a.k = kv->group[g].k + layer_off;
    a.v = kv->group[g].v + layer_off;
    a.block_elems = (int64_t)kv->group[g].block_elems;
    a.kv_dim = kv->kv_dim;
    a.bt = kv->block_tokens;
    a.tables = cairn__b_tables(c->d_batch, T);
    a.n_seqs = c->n_seqs;
    a.max_table = c->max_table;
    a.group = g;
    a.pos = cairn__b_pos(c->d_batch, T);
    a.slot = cairn__b_slot(c->d_batch, T);
    a.n_head = p->n_head;
    a.n_head_kv = p->n_head_kv;
    a.hd = hd;
    a.G = G;
    a.window = p->window;
    a.scale = p->scale;
    a.n_split = n_split;
    a.t_base = 0;
    a.part = c->apart;
    a.part_ml = c->apart + rows * (size_t)hd;
    a.vec = attn_vec_ok(a);
    /* Every key of every token in one block when the step's positions are short and the form
     * is on (the graph's key holds the same test: graph.cu). */
    const size_t smem_short =
        sizeof(float) * (size_t)(G * hd + G * CAIRN__ATTN_SHORT + SHORT_GMAX) +
        sizeof(__half) * 2 * CAIRN__ATTN_SHORT * (size_t)(hd + 2);
    a.one_block = c->attn_short && c->max_pos < CAIRN__ATTN_SHORT && G <= SHORT_GMAX && a.vec &&
                  smem_short <= c->smem_optin;
    a.smem = a.one_block ? smem_short : smem;
    if (!runs) {
        /* One launch writes the whole step's rows: it may leave them quantized too. */
        const bool q8 = out_q8_ok(c, a, T);
        if ((rc = tiles(c, &a, 0, T, q8, err)))
            return rc;
        if (q8)
            cairn__cuda_q8_note(c, out, T, (int64_t)a.n_head * a.hd);
        return 0;
    }
    /* Prefill runs through cuBLAS, the other tokens (decode tokens, short chunks) in tiles. */
    int pending = 0; /* first token not yet attended */
    for (int t = 0, e; t < T; t = e) {
        e = run_end(hpos, hslot, T, t);
        if (e - t >= RUN_MIN && run_rows(c, p, hpos[t], e - t) > 0) {
            if (pending < t && (rc = tiles(c, &a, pending, t - pending, false, err)))
                return rc;
            if ((rc = prefill_run(c, p, &a, t, e - t, err)))
                return rc;
            pending = e;
        }
    }
    if (pending < T)
        return tiles(c, &a, pending, T - pending, false, err);
    return 0;
}
