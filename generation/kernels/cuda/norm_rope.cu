/*
 * generation/kernels/cuda/norm_rope.cu — RMSNorm, residual + norm, and the qkv stage (biases,
 * per-head q/k norms, RoPE, q scale, K/V rows into the paged cache), as the CPU backend
 * computes them (generation/kernels/cpu.c):
 *   rmsnorm: out = x * (1 / sqrt(mean(x^2) + eps)) * w;
 *   RoPE: theta_i = pos * freq_scale * base^(-2i/head_dim), the powers built by repeated
 *     multiplication with step = base^(-2/head_dim) as ggml's rope cache does (step comes from
 *     the host's powf, so the angles are the CPU's), rotations as fma(a, c, -(b s)) and
 *     fma(a, s, b c); neox pairs (i, i + head_dim/2), otherwise (2i, 2i+1);
 *   q rounded to F16 after q_scale, as the CPU backend does (q meets an F16 cache).
 * One block per row (norms) or per (head, token) (qkv); sums of squares in FP32 over the block
 * (the CPU sums in double: the difference is at the 1e-7 level).
 */
#include "generation/kernels/cuda/common.cuh"

#include <math.h>

#define NORM_THREADS 256

/* The vector forms: 1024 threads, each keeping up to NORM_VEC float4 of the row in registers
 * from the first read to the last write, so a row costs one read of each input and one write
 * of each output, all loads of a thread in flight at once (the scalar loop's strided reads
 * waited for each other: 13-16 us a row of 4096 at batch 1 on an H100, where this takes 2-3).
 * Rows of n % 4 == 0 values, n <= 4 NORM_VEC NORM_VTHREADS, 16-byte aligned. */
#define NORM_VTHREADS 1024
#define NORM_VEC 4

static bool norm_vec_ok(int n, const void *a, const void *b, const void *c_, const void *d,
                        const void *e)
{
    const uintptr_t any = (uintptr_t)a | (uintptr_t)b | (uintptr_t)c_ | (uintptr_t)d |
                          (uintptr_t)e;
    return n % 4 == 0 && n <= 4 * NORM_VEC * NORM_VTHREADS && (any & 15) == 0;
}

static __device__ __forceinline__ float4 f4_scale(float4 v, float s, const float4 *w, int i)
{
    const float4 m = w ? w[i] : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    return make_float4(v.x * s * m.x, v.y * s * m.y, v.z * s * m.z, v.w * s * m.w);
}

static __device__ __forceinline__ float f4_ss(float4 v)
{
    return v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
}

/* out[r] = rmsnorm(x[rows ? rows[r] : r]) * w. out may be x when rows is NULL: each thread
 * reads and writes only its own elements, and the block sum sits between the two passes. */
__global__ void __launch_bounds__(NORM_THREADS)
    rmsnorm_rows(float *out, const float *x, const int32_t *__restrict__ rows,
                 const float *__restrict__ w, int n, float eps)
{
    cairn__pdl_stage();
    __shared__ float red[32];
    const int64_t r = blockIdx.x;
    const float *xr = x + (rows ? (int64_t)rows[r] : r) * n;
    float *o = out + r * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = cairn__block_sum(ss, red);
    const float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        o[i] = xr[i] * scale * (w ? w[i] : 1.0f);
}

/* The vector form; with q non-NULL it also leaves out's quantized form (cairn__q8_quad) at
 * q + r n, ds + r n / 32 (n a multiple of 32). */
__global__ void __launch_bounds__(NORM_VTHREADS)
    rmsnorm_rows_vec(float *out, const float *x, const int32_t *__restrict__ rows,
                     const float *__restrict__ w, int n, float eps, int8_t *__restrict__ q,
                     float2 *__restrict__ ds)
{
    cairn__pdl_stage();
    __shared__ float red[32];
    const int64_t r = blockIdx.x;
    const float4 *xr = (const float4 *)(x + (rows ? (int64_t)rows[r] : r) * n);
    float4 *o = (float4 *)(out + r * n);
    const int n4 = n / 4;
    float4 v[NORM_VEC];
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_VEC; k++) {
        const int i = threadIdx.x + k * NORM_VTHREADS;
        v[k] = i < n4 ? xr[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        ss += f4_ss(v[k]);
    }
    ss = cairn__block_sum(ss, red);
    const float scale = 1.0f / sqrtf(ss / (float)n + eps);
#pragma unroll
    for (int k = 0; k < NORM_VEC; k++) {
        const int i = threadIdx.x + k * NORM_VTHREADS;
        const float4 h = i < n4 ? f4_scale(v[k], scale, (const float4 *)w, i) : v[k];
        if (i < n4)
            o[i] = h;
        if (q && k * NORM_VTHREADS < n4) /* block-uniform: the whole warp calls */
            cairn__q8_quad(h, q + r * n, ds + r * (n / 32), i, i < n4);
    }
}

/* Also leaves out's quantized form in the scratch when rows is NULL and it fits. */
int cairn__cuda_norm_rows(cairn__cuda *c, float *out, const float *x, const int32_t *rows,
                          const float *w, int n_rows, int n, float eps, cairn_error *err)
{
    cairn__cuda_q8_forget(c);
    if (n_rows <= 0)
        return 0;
    if (norm_vec_ok(n, out, x, w, NULL, NULL)) {
        const bool q8 = !rows && cairn__cuda_q8_fits(c, n_rows, n);
        cairn__launch(c->pdl_all, rmsnorm_rows_vec, dim3((unsigned)n_rows), dim3(NORM_VTHREADS), 0,
                      c->stream, out, x, rows, w, n, eps, q8 ? c->act_q : NULL,
                      q8 ? c->act_ds : NULL);
        CU_LAUNCHED(err, "rmsnorm_rows_vec");
        if (q8)
            cairn__cuda_q8_note(c, out, n_rows, n);
        return 0;
    }
    cairn__launch(c->pdl_all, rmsnorm_rows, dim3((unsigned)n_rows), dim3(NORM_THREADS), 0,
                  c->stream, out, x, rows, w, n, eps);
    CU_LAUNCHED(err, "rmsnorm_rows");
    return 0;
}

int cairn__cuda_rmsnorm(cairn_backend *be, float *out, const float *x, const float *w, int rows,
                        int n, float eps, cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    int rc = cairn__cuda_enter(c, err);
    if (rc)
        return rc;
    if (rows < 0 || n < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: rmsnorm of %d rows of %d", rows,
                            n);
    return cairn__cuda_norm_rows(c, out, x, NULL, w, rows, n, eps, err);
}

/* a = post ? rmsnorm(a) * post : a; x += a; h = rmsnorm(x) * next when next is given. Each
 * thread keeps to its own elements through all passes (same loop), so only the block sums
 * need barriers. */
__global__ void __launch_bounds__(NORM_THREADS)
    add_norm_rows(float *__restrict__ x, float *__restrict__ a, const float *__restrict__ post,
                  const float *__restrict__ next, float *__restrict__ h, int n, float eps)
{
    cairn__pdl_stage();
    __shared__ float red[32];
    const int64_t r = blockIdx.x;
    float *xr = x + r * n, *ar = a + r * n;
    if (post) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            ss += ar[i] * ar[i];
        ss = cairn__block_sum(ss, red);
        const float scale = 1.0f / sqrtf(ss / (float)n + eps);
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const float v = ar[i] * scale * post[i];
            ar[i] = v;
            xr[i] += v;
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            xr[i] += ar[i];
    }
    if (!next)
        return;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = cairn__block_sum(ss, red);
    const float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        h[r * n + i] = xr[i] * scale * next[i];
}

/* add_norm_rows with the row in registers (the vector form's conditions). */
__global__ void __launch_bounds__(NORM_VTHREADS)
    add_norm_rows_vec(float *__restrict__ x, float *__restrict__ a,
                      const float *__restrict__ post, const float *__restrict__ next,
                      float *__restrict__ h, int n, float eps, int8_t *__restrict__ q,
                      float2 *__restrict__ ds)
{
    cairn__pdl_stage();
    __shared__ float red[32];
    const int64_t r = blockIdx.x;
    float4 *xr = (float4 *)(x + r * n), *ar = (float4 *)(a + r * n);
    const int n4 = n / 4;
    float4 xv[NORM_VEC], av[NORM_VEC];
#pragma unroll
    for (int k = 0; k < NORM_VEC; k++) {
        const int i = threadIdx.x + k * NORM_VTHREADS;
        const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        xv[k] = i < n4 ? xr[i] : z;
        av[k] = i < n4 ? ar[i] : z;
    }
    if (post) {
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < NORM_VEC; k++)
            ss += f4_ss(av[k]);
        ss = cairn__block_sum(ss, red);
        const float scale = 1.0f / sqrtf(ss / (float)n + eps);
#pragma unroll
        for (int k = 0; k < NORM_VEC; k++) {
            const int i = threadIdx.x + k * NORM_VTHREADS;
            if (i < n4) {
                av[k] = f4_scale(av[k], scale, (const float4 *)post, i);
                ar[i] = av[k];
            }
        }
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_VEC; k++) {
        const int i = threadIdx.x + k * NORM_VTHREADS;
        xv[k] = make_float4(xv[k].x + av[k].x, xv[k].y + av[k].y, xv[k].z + av[k].z,
                            xv[k].w + av[k].w);
        if (i < n4)
            xr[i] = xv[k];
        ss += f4_ss(xv[k]);
    }
    if (!next)
        return;
    ss = cairn__block_sum(ss, red);
    const float scale = 1.0f / sqrtf(ss / (float)n + eps);
    float4 *hr = (float4 *)(h + r * n);
#pragma unroll
    for (int k = 0; k < NORM_VEC; k++) {
        const int i = threadIdx.x + k * NORM_VTHREADS;
        const float4 hv = i < n4 ? f4_scale(xv[k], scale, (const float4 *)next, i) : xv[k];
        if (i < n4)
            hr[i] = hv;
        if (q && k * NORM_VTHREADS < n4) /* block-uniform: the whole warp calls */
            cairn__q8_quad(hv, q + r * n, ds + r * (n / 32), i, i < n4);
    }
}

int cairn__cuda_add_norm(cairn_backend *be, float *x, float *a, const float *post,
                         const float *next, float *h, int n, float eps, cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    int rc = cairn__cuda_need_batch(c, "add_norm", err);
    if (rc || (rc = cairn__cuda_enter(c, err)))
        return rc;
    if (n < 1 || (next && !h))
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: add_norm of rows of %d%s", n,
                            next && !h ? " with a norm and no output" : "");
    cairn__cuda_q8_forget(c);
    if (norm_vec_ok(n, x, a, post, next, h)) {
        /* h is the next products' input: its quantized form comes with it. */
        const bool q8 = next && cairn__cuda_q8_fits(c, c->n_tokens, n);
        cairn__launch(c->pdl_all, add_norm_rows_vec, dim3((unsigned)c->n_tokens),
                      dim3(NORM_VTHREADS), 0, c->stream, x, a, post, next, h, n, eps,
                      q8 ? c->act_q : NULL, q8 ? c->act_ds : NULL);
        CU_LAUNCHED(err, "add_norm_rows_vec");
        if (q8)
            cairn__cuda_q8_note(c, h, c->n_tokens, n);
        return 0;
    }
    cairn__launch(c->pdl_all, add_norm_rows, dim3((unsigned)c->n_tokens), dim3(NORM_THREADS), 0,
                  c->stream, x, a, post, next, h, n, eps);
    CU_LAUNCHED(err, "add_norm_rows");
    return 0;
}

/* ---- qkv ------------------------------------------------------------------------------------- */

#define QKV_THREADS 128

struct qkv_args {
    float *q, *k, *v;
    const float *bq, *bk, *bv, *q_norm, *k_norm;
    int n_head, n_head_kv, hd;
    float eps, step, freq_scale, q_scale;
    bool neox;
    uint16_t *kc, *vc; /* the layer's rows in block 0 of its group's pools */
    int64_t block_elems;
    int kv_dim, bt;
    const int32_t *tables;
    int n_seqs, max_table, group;
    const int32_t *pos, *slot;
};

/* Block (head, token); heads 0..n_head-1 are q's, then k's, then v's. */
__global__ void __launch_bounds__(QKV_THREADS) qkv_rows(qkv_args a)
{
    cairn__pdl_stage();
    extern __shared__ float s[]; /* the head's hd values */
    __shared__ float red[32];
    const int hid = blockIdx.x, hd = a.hd;
    const int64_t t = blockIdx.y;
    int kind, h;
    float *ptr;
    const float *bias, *nw;
    if (hid < a.n_head) {
        kind = 0;
        h = hid;
        ptr = a.q + (t * a.n_head + h) * hd;
        bias = a.bq;
        nw = a.q_norm;
    } else if (hid < a.n_head + a.n_head_kv) {
        kind = 1;
        h = hid - a.n_head;
        ptr = a.k + (t * a.n_head_kv + h) * hd;
        bias = a.bk;
        nw = a.k_norm;
    } else {
        kind = 2;
        h = hid - a.n_head - a.n_head_kv;
        ptr = a.v + (t * a.n_head_kv + h) * hd;
        bias = a.bv;
        nw = NULL;
    }
    for (int i = threadIdx.x; i < hd; i += blockDim.x)
        s[i] = ptr[i] + (bias ? bias[h * hd + i] : 0.0f);

    const int pos = a.pos[t];
    uint16_t *crow = NULL;
    if (kind != 0) {
        const int32_t *table = a.tables + ((int64_t)a.group * a.n_seqs + a.slot[t]) * a.max_table;
        const int bi = pos / a.bt;
        const int blk = bi < a.max_table ? table[bi] : -1;
        if (blk >= 0) /* a token's own block is live; -1 would be a caller's bug: no write */
            crow = (kind == 1 ? a.kc : a.vc) + (int64_t)blk * a.block_elems +
                   (int64_t)(pos % a.bt) * a.kv_dim + (int64_t)h * hd;
    }
    if (kind == 2) { /* v: the bias in place, then the cache */
        for (int i = threadIdx.x; i < hd; i += blockDim.x) {
            ptr[i] = s[i];
            if (crow)
                crow[i] = __half_as_ushort(__float2half_rn(s[i]));
        }
        return;
    }
    if (nw) { /* kind is block-uniform, so every thread reaches the block sum */
        float ss = 0.0f;
        for (int i = threadIdx.x; i < hd; i += blockDim.x)
            ss += s[i] * s[i];
        ss = cairn__block_sum(ss, red);
        const float scale = 1.0f / sqrtf(ss / (float)hd + a.eps);
        for (int i = threadIdx.x; i < hd; i += blockDim.x)
            s[i] = s[i] * scale * nw[i];
    }
    __syncthreads();
    const int half = hd / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float theta = (float)pos;
        for (int j = 0; j < i; j++)
            theta *= a.step;
        const float cv = cosf(a.freq_scale * theta), sv = sinf(a.freq_scale * theta);
        const int i0 = a.neox ? i : 2 * i, i1 = a.neox ? i + half : 2 * i + 1;
        const float x0 = s[i0], x1 = s[i1];
        s[i0] = fmaf(x0, cv, -(x1 * sv));
        s[i1] = fmaf(x0, sv, x1 * cv);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float v = s[i];
        if (kind == 0) {
            v = __half2float(__float2half_rn(v * a.q_scale));
            ptr[i] = v;
        } else {
            ptr[i] = v;
            if (crow)
                crow[i] = __half_as_ushort(__float2half_rn(v));
        }
    }
}

int cairn__cuda_qkv(cairn_backend *be, const cairn_bqkv *p, float *q, float *k, float *v,
                    cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    cairn__cuda_q8_forget(c); /* it may write where q8_src points */
    int rc = cairn__cuda_need_batch(c, "qkv", err);
    if (rc || (rc = cairn__cuda_enter(c, err)))
        return rc;
    const cairn_bkv *kv = p->kv;
    if (p->n_head < 1 || p->n_head_kv < 1 || p->head_dim < 2 || p->head_dim % 2 != 0 || !kv ||
        kv->kv_dim != p->n_head_kv * p->head_dim || (p->bq && (!p->bk || !p->bv)) ||
        (p->q_norm && !p->k_norm))
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: qkv of %d heads, %d KV heads of "
                            "%d values (cache rows of %d)", p->n_head, p->n_head_kv,
                            p->head_dim, kv ? kv->kv_dim : 0);
    const int g = kv->layer_group[p->layer];
    if (g < 0 || g >= kv->n_groups || g >= c->n_groups)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: layer %d's KV group %d is not in "
                            "the batch's %d groups", p->layer, g, c->n_groups);
    if (c->n_tokens > 65535)
        return cairn_errorf(err, CAIRN_ELIMIT, "cuda backend: qkv over %d tokens (at most 65535 "
                            "a step)", c->n_tokens);
    const size_t layer_off = (size_t)kv->layer_index[p->layer] * kv->block_tokens * kv->kv_dim;
    qkv_args a;
    a.q = q;
    a.k = k;
    a.v = v;
    a.bq = p->bq;
    a.bk = p->bk;
    a.bv = p->bv;
    a.q_norm = p->q_norm;
    a.k_norm = p->k_norm;
    a.n_head = p->n_head;
    a.n_head_kv = p->n_head_kv;
    a.hd = p->head_dim;
    a.eps = p->eps;
    a.step = powf(p->rope_base, -2.0f / (float)p->head_dim); /* the CPU's powf, bit for bit */
    a.freq_scale = p->rope_freq_scale;
    a.q_scale = p->q_scale;
    a.neox = p->rope_neox;
    a.kc = kv->group[g].k + layer_off;
    a.vc = kv->group[g].v + layer_off;
    a.block_elems = (int64_t)kv->group[g].block_elems;
    a.kv_dim = kv->kv_dim;
    a.bt = kv->block_tokens;
    a.tables = cairn__b_tables(c->d_batch, c->n_tokens);
    a.n_seqs = c->n_seqs;
    a.max_table = c->max_table;
    a.group = g;
    a.pos = cairn__b_pos(c->d_batch, c->n_tokens);
    a.slot = cairn__b_slot(c->d_batch, c->n_tokens);
    dim3 grid((unsigned)(p->n_head + 2 * p->n_head_kv), (unsigned)c->n_tokens);
    cairn__launch(c->pdl_all, qkv_rows, grid, dim3(QKV_THREADS),
                  sizeof(float) * (size_t)p->head_dim, c->stream, a);
    CU_LAUNCHED(err, "qkv_rows");
    return 0;
}
