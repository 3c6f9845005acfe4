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
 * Sliding windows: keys lo = max(0, pos - window + 1) .. pos. A table entry of -1 (a freed
 * window block) inside the range is skipped as a masked key rather than read; kv.c frees
 * only blocks no query can see, so this guards memory, not results.
 * Arithmetic: scores, exponentials, sums and the V products in FP32 over the F16 cache.
 */
#include "generation/kernels/cuda/common.cuh"

#include <math.h>

#define ATTN_THREADS 128
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
    float *part; /* n_split > 1: partial o, rows of hd; then (m, l) pairs from part_ml */
    float *part_ml;
};

/* The cache block of position p in a table, or -1. */
static __device__ __forceinline__ int block_of(const int32_t *table, int p, int bt, int max_table)
{
    const int i = p / bt;
    return i < max_table ? table[i] : -1;
}

__global__ void __launch_bounds__(ATTN_THREADS) attn_tile(attn_args a)
{
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
    const int s = blockIdx.x, kvh = blockIdx.y, t = blockIdx.z;

    const int pos = a.pos[t];
    int lo = a.window ? pos - a.window + 1 : 0;
    if (lo < 0)
        lo = 0;
    /* This token's keys, cut into n_split equal runs (here, not on the host: a step's launch
     * then does not depend on its positions, and a captured graph replays for any). */
    const int split_len = (pos - lo + a.n_split) / a.n_split;
    const int k0 = lo + s * split_len;
    const int k1 = min(pos, k0 + split_len - 1);
    /* partial row of query head (kvh G + g): ((t n_head + kvh G + g) n_split + s) */
    const int64_t prow0 = ((int64_t)t * a.n_head + (int64_t)kvh * G) * a.n_split + s;
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
        /* K and V rows of the tile, two values at a time (rows are 4-byte aligned: hd even). */
        for (int i = tid; i < nk * hp; i += blockDim.x) {
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
        __syncthreads();
        /* Scores: thread (g, j); lanes take consecutive keys, whose padded rows fall in
         * different banks. */
        for (int i = tid; i < G * TK; i += blockDim.x) {
            const int g = i / TK, j = i - g * TK;
            float sc = -INFINITY;
            if (j < nk && block_of(table, kb + j, a.bt, a.max_table) >= 0) {
                const float *qg = qs + g * hd;
                const __half2 *kr = (const __half2 *)(ks + j * hs);
                float acc = 0.0f;
                for (int c = 0; c < hp; c++) {
                    const float2 kf = __half22float2(kr[c]);
                    acc = fmaf(qg[2 * c], kf.x, acc);
                    acc = fmaf(qg[2 * c + 1], kf.y, acc);
                }
                sc = a.scale * acc;
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
            const float *pg = ps + g * TK;
            float acc = os[i] * cs[g];
            for (int j = 0; j < nk; j++)
                acc = fmaf(pg[j], __half2float(vs[j * hs + d]), acc);
            os[i] = acc;
        }
        __syncthreads();
    }

    if (a.n_split == 1) {
        float *ot = a.out + ((int64_t)t * a.n_head + (int64_t)kvh * G) * hd;
        for (int i = tid; i < G * hd; i += blockDim.x) {
            const float l = ls[i / hd];
            ot[i] = l > 0.0f ? os[i] / l : 0.0f;
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

/* One block per (query head, token): the log-sum-exp merge of its splits. */
__global__ void attn_merge(const float *__restrict__ part, const float *__restrict__ ml,
                           int n_split, int hd, int n_head, float *__restrict__ out)
{
    const int h = blockIdx.x, t = blockIdx.y;
    const int64_t r0 = ((int64_t)t * n_head + h) * n_split;
    float M = -INFINITY;
    for (int s = 0; s < n_split; s++)
        if (ml[2 * (r0 + s) + 1] > 0.0f)
            M = fmaxf(M, ml[2 * (r0 + s)]);
    float L = 0.0f;
    for (int s = 0; s < n_split; s++) {
        const float l = ml[2 * (r0 + s) + 1];
        if (l > 0.0f)
            L += l * expf(ml[2 * (r0 + s)] - M);
    }
    float *o = out + ((int64_t)t * n_head + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < n_split; s++) {
            const float l = ml[2 * (r0 + s) + 1];
            if (l > 0.0f)
                acc += part[(r0 + s) * hd + d] * expf(ml[2 * (r0 + s)] - M);
        }
        o[d] = L > 0.0f ? acc / L : 0.0f;
    }
}

/* Fewer blocks than this many per SM leave the GPU underused: split the keys. */
#define SPLIT_WAVES 2
#define SPLIT_MAX 64

int cairn__cuda_attention_init(cairn__cuda *c, cairn_error *err)
{
    /* Once, at open, to all the GPU allows: a call in a captured step must not need it. */
    CU_TRY(err, cudaFuncSetAttribute(attn_tile, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)c->smem_optin));
    return 0;
}

int cairn__cuda_attention(cairn_backend *be, const cairn_battn *p, const float *q, float *out,
                          cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
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
    /* The split depends on the step's shape only (each token cuts its own keys into n_split
     * runs): enough blocks for SPLIT_WAVES per SM, as far as the partials' scratch allows. */
    int n_split = 1;
    const int base = T * p->n_head_kv;
    if (base < SPLIT_WAVES * c->n_sm) {
        size_t fit = CAIRN__ATTN_PART_FLOATS / ((size_t)T * p->n_head * (size_t)(hd + 2));
        n_split = (SPLIT_WAVES * c->n_sm + base - 1) / base;
        n_split = n_split < SPLIT_MAX ? n_split : SPLIT_MAX;
        if ((size_t)n_split > fit)
            n_split = (int)fit;
        if (n_split < 2)
            n_split = 1;
    }
    const size_t layer_off = (size_t)kv->layer_index[p->layer] * kv->block_tokens * kv->kv_dim;
    const size_t rows = (size_t)T * p->n_head * n_split;
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
    a.part = c->apart;
    a.part_ml = c->apart + rows * (size_t)hd;
    dim3 grid((unsigned)n_split, (unsigned)p->n_head_kv, (unsigned)T);
    attn_tile<<<grid, ATTN_THREADS, smem, c->stream>>>(a);
    CU_LAUNCHED(err, "attn_tile");
    if (n_split > 1) {
        int threads = hd < 256 ? (hd + 31) / 32 * 32 : 256;
        attn_merge<<<dim3((unsigned)p->n_head, (unsigned)T), threads, 0, c->stream>>>(
            a.part, a.part_ml, n_split, hd, p->n_head, out);
        CU_LAUNCHED(err, "attn_merge");
    }
    return 0;
}
