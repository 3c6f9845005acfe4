/*
 * generation/kernels/cuda/matmul.cu — matrix products: the matmul and logits stages.
 *
 * Few tokens (decode; at most CAIRN__GEMV_MAX_TOKENS): a GEMV straight from the weight planes,
 * each weight meeting up to CAIRN__GEMV_TOKENS tokens' activations before the next load, so
 * that the weights are read once per pass whatever the token count. Matrices in the lane
 * layout (Q8_0, Q4_K, Q6_K; common.cuh) take the lane form, gemv_lane: a lane a row, whole
 * blocks a lane, a warp's loads 512 contiguous bytes. The others take a row form: each warp
 * takes one weight row and its lanes walk the row in units of 16 bytes of quants (one aligned
 * 128-bit load each), a warp reading 512 contiguous bytes at a time (the block form, gemv_sk,
 * spreads a row's units over a block's warps instead; each type takes the form measured faster
 * for it).
 * The quantized types multiply against
 * activations quantized once per call to int8 in blocks of 32 (scale amax / 127, the scale
 * kept as F16 like the CPU's Q8 activations) with dp4a integer dot products; the float types
 * multiply against the float activations.
 *
 * Many tokens (prefill): the activations are converted to BF16 once, the weights dequantized
 * to BF16 a tile of rows at a time, and cuBLAS multiplies the two with FP32 accumulation and
 * output (F32 weights go to cuBLAS as they are, BF16 weights without a tile).
 *
 * Layout: y is token-major, y[t * rows + r] = dot(row r of w, x[t]), as on the CPU. In cuBLAS's
 * column-major terms that is C (rows x T, ldc = rows) = A^T B with A the weights (cols x rows,
 * lda = cols) and B the activations (cols x T, ldb = cols).
 */
#include "generation/kernels/cuda/common.cuh"

#include <stdlib.h>
#include <string.h>

#define GEMV_WARPS 4

/* Activations of a pass: token t's quants at q + t * cols, its block scales at
 * ds + t * cols / 32, its floats at x + t * cols. */
struct act_dev {
    const int8_t *q;
    const float2 *ds;
    const float *x;
    int64_t cols;
};

/* ---- Activation quantization ----------------------------------------------------------------- */

/* One warp per block of 32 values (cairn__q8_lane). */
__global__ void quantize_q8(const float *__restrict__ x, int64_t n_blocks, int8_t *__restrict__ q,
                            float2 *__restrict__ ds)
{
    cairn__pdl_stage();
    const int64_t blk = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (blk >= n_blocks)
        return; /* warp-uniform */
    cairn__q8_lane(x[blk * 32 + (threadIdx.x & 31)], q, ds, blk);
}

__global__ void to_bf16(const float *__restrict__ x, int64_t n, __nv_bfloat16 *__restrict__ y)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(x[i]);
}

/* ---- GEMV units ------------------------------------------------------------------------------ */

static __device__ __forceinline__ int dot16(int4 w, int4 a, int s)
{
    s = __dp4a(w.x, a.x, s);
    s = __dp4a(w.y, a.y, s);
    s = __dp4a(w.z, a.z, s);
    return __dp4a(w.w, a.w, s);
}

static __device__ __forceinline__ int4 ld16(const void *p) { return __ldg((const int4 *)p); }

/* The 4 bits of h (values 4i..4i+3 of a block) moved to bit 4 of each byte. */
static __device__ __forceinline__ int spread4(uint32_t h)
{
    return (int)(((h & 1) << 4) | ((h & 2) << 11) | ((h & 4) << 18) | ((h & 8) << 25));
}

static __device__ __forceinline__ int4 nib_lo(int4 w)
{
    return make_int4(w.x & 0x0F0F0F0F, w.y & 0x0F0F0F0F, w.z & 0x0F0F0F0F, w.w & 0x0F0F0F0F);
}

static __device__ __forceinline__ int4 nib_hi(int4 w)
{
    return make_int4((w.x >> 4) & 0x0F0F0F0F, (w.y >> 4) & 0x0F0F0F0F, (w.z >> 4) & 0x0F0F0F0F,
                     (w.w >> 4) & 0x0F0F0F0F);
}

/* Units a row: the GEMV's lanes walk these. */
template <uint32_t TYPE>
static __device__ __forceinline__ int64_t units_of(const cairn__mat_dev &m)
{
    if constexpr (TYPE == CAIRN_GGUF_Q8_0)
        return m.cols / 16;
    else if constexpr (TYPE == CAIRN_GGUF_Q4_K)
        return m.nb * 8;
    else if constexpr (TYPE == CAIRN_GGUF_Q6_K)
        return m.nb * 4;
    else if constexpr (TYPE == CAIRN_GGUF_F32)
        return m.cols / 4;
    else if constexpr (TYPE == CAIRN_GGUF_F16 || TYPE == CAIRN_GGUF_BF16)
        return m.cols / 8;
    else
        return m.nb; /* Q4_0, Q4_1, Q5_0: a block of 32 values in 16 bytes */
}

/*
 * A unit is 16 bytes of a row's quants, one aligned 128-bit load; wunit holds it decoded (with
 * its scales) in registers, aunit the activations of one token that meet it, and dot() their
 * product. A warp's lanes take consecutive units, so a warp reads 512 contiguous bytes.
 *   Q8_0: 16 int8 values, half a block.
 *   Q4_0/Q4_1/Q5_0: one block: 16 bytes of nibbles (value j low, j + 16 high), meeting the
 *     activation block's 32 quants as two 16-byte halves; the offset (8, 16) or the min meets
 *     the activations' scaled sum.
 *   Q4_K: 16 of a block's 128 quant bytes, k = u % 8: chunk c = k / 2 of 64 values, bytes
 *     16 (k % 2) .. +16 of it, whose low nibbles are values 64c + l of sub-block 2c and whose
 *     high nibbles are values 64c + 32 + l of sub-block 2c + 1 (l = 16 (k % 2) .. +16). The
 *     sub-block mins meet the activations' sums once per sub-block: in the k % 2 == 0 unit.
 *   Q6_K: a quarter of a block, k = u % 4: half hh = k / 2, l = 16 (k % 2) .. +16, the bytes
 *     ql[64 hh + l], ql[64 hh + 32 + l], qh[32 hh + l] (three loads): 64 values in four groups
 *     of 16 (values 128 hh + 32 g + l, g = 0..3), each with its own scale.
 *   F32: 4 values; F16, BF16: 8 values.
 */
/* Q4_K sub-block j's scale and min (hdr: the block's first 16 bytes, d, dmin and the packed
 * 6-bit scales), each times d or dmin: value = scale q - min. */
static __device__ __forceinline__ void q4k_sub(const int4 &hdr, int j, float *scale, float *min)
{
    int sc, mn;
    cairn__q4k_sm((const uint8_t *)&hdr + 4, j, &sc, &mn);
    *scale = cairn__h2f((uint16_t)(hdr.x & 0xFFFF)) * (float)sc;
    *min = cairn__h2f((uint16_t)((uint32_t)hdr.x >> 16)) * (float)mn;
}

template <uint32_t TYPE> struct wunit;
template <uint32_t TYPE> struct aunit;

struct wunit_q8 { int4 q; float d; };
struct aunit_q8 { int4 q; float d; };
struct wunit_q4 { int4 lo, hi; float d, m; };
struct aunit_q4 { int4 a0, a1; float2 ds; };
struct wunit_q4k { int4 lo, hi; float d0, d1, m0, m1; };
struct aunit_q4k { int4 a0, a1; float2 ds0, ds1; };
struct wunit_q6k { int q[4][4]; float s[4]; };
struct aunit_q6k { int4 a[4]; float d[4]; };
struct wunit_f8 { float w[8]; };
struct aunit_f8 { float4 x0, x1; };
struct wunit_f4 { float4 w; };
struct aunit_f4 { float4 x; };

template <> struct wunit<CAIRN_GGUF_Q8_0> : wunit_q8 {};
template <> struct aunit<CAIRN_GGUF_Q8_0> : aunit_q8 {};
template <> struct wunit<CAIRN_GGUF_Q4_0> : wunit_q4 {};
template <> struct aunit<CAIRN_GGUF_Q4_0> : aunit_q4 {};
template <> struct wunit<CAIRN_GGUF_Q4_1> : wunit_q4 {};
template <> struct aunit<CAIRN_GGUF_Q4_1> : aunit_q4 {};
template <> struct wunit<CAIRN_GGUF_Q5_0> : wunit_q4 {};
template <> struct aunit<CAIRN_GGUF_Q5_0> : aunit_q4 {};
template <> struct wunit<CAIRN_GGUF_Q4_K> : wunit_q4k {};
template <> struct aunit<CAIRN_GGUF_Q4_K> : aunit_q4k {};
template <> struct wunit<CAIRN_GGUF_Q6_K> : wunit_q6k {};
template <> struct aunit<CAIRN_GGUF_Q6_K> : aunit_q6k {};
template <> struct wunit<CAIRN_GGUF_F16> : wunit_f8 {};
template <> struct aunit<CAIRN_GGUF_F16> : aunit_f8 {};
template <> struct wunit<CAIRN_GGUF_BF16> : wunit_f8 {};
template <> struct aunit<CAIRN_GGUF_BF16> : aunit_f8 {};
template <> struct wunit<CAIRN_GGUF_F32> : wunit_f4 {};
template <> struct aunit<CAIRN_GGUF_F32> : aunit_f4 {};

/* A Q6_K unit from its three loads (ql of groups 0, 2; ql of groups 1, 3; qh), the block's d
 * and the unit's four group scales: the 6-bit quants less 32 as signed bytes. */
static __device__ __forceinline__ void q6k_decode(wunit_q6k &w, const int4 &qa, const int4 &qb,
                                                  const int4 &qh, float d, int8_t s0, int8_t s1,
                                                  int8_t s2, int8_t s3)
{
    const int pa[4] = {qa.x, qa.y, qa.z, qa.w}, pb[4] = {qb.x, qb.y, qb.z, qb.w};
    const int ph[4] = {qh.x, qh.y, qh.z, qh.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        w.q[0][i] = __vsub4((pa[i] & 0x0F0F0F0F) | ((ph[i] << 4) & 0x30303030), 0x20202020);
        w.q[1][i] = __vsub4((pb[i] & 0x0F0F0F0F) | ((ph[i] << 2) & 0x30303030), 0x20202020);
        w.q[2][i] = __vsub4(((pa[i] >> 4) & 0x0F0F0F0F) | (ph[i] & 0x30303030), 0x20202020);
        w.q[3][i] =
            __vsub4(((pb[i] >> 4) & 0x0F0F0F0F) | ((ph[i] >> 2) & 0x30303030), 0x20202020);
    }
    w.s[0] = d * (float)s0;
    w.s[1] = d * (float)s1;
    w.s[2] = d * (float)s2;
    w.s[3] = d * (float)s3;
}

template <uint32_t TYPE>
static __device__ __forceinline__ void load_w(wunit<TYPE> &w, const cairn__mat_dev &m,
                                              int64_t row, int64_t u)
{
    if constexpr (TYPE == CAIRN_GGUF_Q8_0) {
        w.q = ld16(cairn__q_at(m, row, u * 16));
        w.d = cairn__h2f(m.d[row * m.nb + (u >> 1)]);
    } else if constexpr (TYPE == CAIRN_GGUF_Q4_0 || TYPE == CAIRN_GGUF_Q4_1 ||
                         TYPE == CAIRN_GGUF_Q5_0) {
        const int64_t b = row * m.nb + u;
        const int4 q = ld16(cairn__q_at(m, row, u * 16));
        w.lo = nib_lo(q);
        w.hi = nib_hi(q);
        if constexpr (TYPE == CAIRN_GGUF_Q4_1) {
            w.d = cairn__h2f(m.d[2 * b]);
            w.m = cairn__h2f(m.d[2 * b + 1]);
        } else {
            w.d = cairn__h2f(m.d[b]);
            w.m = 0.0f;
        }
        if constexpr (TYPE == CAIRN_GGUF_Q5_0) {
            const uint32_t qh = m.qh[b];
            w.lo.x |= spread4(qh & 0xF);
            w.lo.y |= spread4((qh >> 4) & 0xF);
            w.lo.z |= spread4((qh >> 8) & 0xF);
            w.lo.w |= spread4((qh >> 12) & 0xF);
            w.hi.x |= spread4((qh >> 16) & 0xF);
            w.hi.y |= spread4((qh >> 20) & 0xF);
            w.hi.z |= spread4((qh >> 24) & 0xF);
            w.hi.w |= spread4(qh >> 28);
        }
    } else if constexpr (TYPE == CAIRN_GGUF_Q4_K) {
        const int k = (int)(u & 7), c = k >> 1;
        const int64_t o = (u >> 3) * 144; /* the block's header, then its quants */
        const int4 hdr = ld16(cairn__q_at(m, row, o)); /* d, dmin, 12 bytes of scales */
        const int4 q = ld16(cairn__q_at(m, row, o + 16 + 16 * k));
        w.lo = nib_lo(q);
        w.hi = nib_hi(q);
        q4k_sub(hdr, 2 * c, &w.d0, &w.m0);
        q4k_sub(hdr, 2 * c + 1, &w.d1, &w.m1);
        if (k & 1) /* the mins meet the sums once a sub-block: in its first unit */
            w.m0 = w.m1 = 0.0f;
    } else if constexpr (TYPE == CAIRN_GGUF_Q6_K) {
        const int k = (int)(u & 3), hh = k >> 1, is = k & 1, l0 = 16 * is;
        const int64_t b = row * m.nb + (u >> 2), o = (u >> 2) * 208; /* ql, qh, scales */
        const int4 qa = ld16(cairn__q_at(m, row, o + 64 * hh + l0));
        const int4 qb = ld16(cairn__q_at(m, row, o + 64 * hh + 32 + l0));
        const int4 qh = ld16(cairn__q_at(m, row, o + 128 + 32 * hh + l0));
        const int8_t *sc = (const int8_t *)cairn__q_at(m, row, o + 192 + 8 * hh + is);
        q6k_decode(w, qa, qb, qh, cairn__h2f(m.d[b]), sc[0], sc[2], sc[4], sc[6]);
    } else if constexpr (TYPE == CAIRN_GGUF_F32) {
        w.w = __ldg((const float4 *)m.q + row * (m.cols / 4) + u);
    } else { /* F16, BF16 */
        const int4 q = ld16(m.q + (row * m.cols + u * 8) * 2);
        const uint32_t pw[4] = {(uint32_t)q.x, (uint32_t)q.y, (uint32_t)q.z, (uint32_t)q.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if constexpr (TYPE == CAIRN_GGUF_F16) {
                w.w[2 * i] = cairn__h2f((uint16_t)(pw[i] & 0xFFFF));
                w.w[2 * i + 1] = cairn__h2f((uint16_t)(pw[i] >> 16));
            } else {
                w.w[2 * i] = __uint_as_float(pw[i] << 16);
                w.w[2 * i + 1] = __uint_as_float(pw[i] & 0xFFFF0000u);
            }
        }
    }
}

/* Token t's activations for unit u (act rows: t * cols quants, t * cols / 32 scales). */
template <uint32_t TYPE>
static __device__ __forceinline__ void load_a(aunit<TYPE> &x, const act_dev &a, int t,
                                              int64_t u)
{
    const int64_t nba = a.cols / 32;
    if constexpr (TYPE == CAIRN_GGUF_Q8_0) {
        x.q = *(const int4 *)(a.q + t * a.cols + u * 16);
        x.d = a.ds[t * nba + (u >> 1)].x;
    } else if constexpr (TYPE == CAIRN_GGUF_Q4_0 || TYPE == CAIRN_GGUF_Q4_1 ||
                         TYPE == CAIRN_GGUF_Q5_0) {
        const int8_t *aq = a.q + t * a.cols + u * 32;
        x.a0 = *(const int4 *)aq;
        x.a1 = *(const int4 *)(aq + 16);
        x.ds = a.ds[t * nba + u];
    } else if constexpr (TYPE == CAIRN_GGUF_Q4_K) {
        const int k = (int)(u & 7);
        const int64_t ab = (u >> 3) * 8 + 2 * (k >> 1); /* the activation block of sub-block 2c */
        const int8_t *aq = a.q + t * a.cols + ab * 32 + 16 * (k & 1);
        x.a0 = *(const int4 *)aq;
        x.a1 = *(const int4 *)(aq + 32);
        x.ds0 = a.ds[t * nba + ab];
        x.ds1 = a.ds[t * nba + ab + 1];
    } else if constexpr (TYPE == CAIRN_GGUF_Q6_K) {
        const int k = (int)(u & 3);
        const int64_t ab = (u >> 2) * 8 + 4 * (k >> 1); /* the activation block of group 0 */
        const int8_t *aq = a.q + t * a.cols + ab * 32 + 16 * (k & 1);
#pragma unroll
        for (int g = 0; g < 4; g++) {
            x.a[g] = *(const int4 *)(aq + 32 * g);
            x.d[g] = a.ds[t * nba + ab + g].x;
        }
    } else if constexpr (TYPE == CAIRN_GGUF_F32) {
        x.x = *((const float4 *)(a.x + t * a.cols) + u);
    } else {
        const float4 *xv = (const float4 *)(a.x + t * a.cols + u * 8);
        x.x0 = xv[0];
        x.x1 = xv[1];
    }
}

template <uint32_t TYPE>
static __device__ __forceinline__ float dot(const wunit<TYPE> &w, const aunit<TYPE> &x)
{
    if constexpr (TYPE == CAIRN_GGUF_Q8_0) {
        return w.d * x.d * (float)dot16(w.q, x.q, 0);
    } else if constexpr (TYPE == CAIRN_GGUF_Q4_0 || TYPE == CAIRN_GGUF_Q4_1 ||
                         TYPE == CAIRN_GGUF_Q5_0) {
        const float s = (float)dot16(w.hi, x.a1, dot16(w.lo, x.a0, 0));
        if constexpr (TYPE == CAIRN_GGUF_Q4_0)
            return w.d * (x.ds.x * s - 8.0f * x.ds.y);
        else if constexpr (TYPE == CAIRN_GGUF_Q5_0)
            return w.d * (x.ds.x * s - 16.0f * x.ds.y);
        else
            return w.d * x.ds.x * s + w.m * x.ds.y;
    } else if constexpr (TYPE == CAIRN_GGUF_Q4_K) {
        const float s0 = (float)dot16(w.lo, x.a0, 0), s1 = (float)dot16(w.hi, x.a1, 0);
        return w.d0 * x.ds0.x * s0 + w.d1 * x.ds1.x * s1 - (w.m0 * x.ds0.y + w.m1 * x.ds1.y);
    } else if constexpr (TYPE == CAIRN_GGUF_Q6_K) {
        float v = 0.0f;
#pragma unroll
        for (int g = 0; g < 4; g++) {
            int s = __dp4a(w.q[g][0], x.a[g].x, 0);
            s = __dp4a(w.q[g][1], x.a[g].y, s);
            s = __dp4a(w.q[g][2], x.a[g].z, s);
            s = __dp4a(w.q[g][3], x.a[g].w, s);
            v += w.s[g] * x.d[g] * (float)s;
        }
        return v;
    } else if constexpr (TYPE == CAIRN_GGUF_F32) {
        return w.w.x * x.x.x + w.w.y * x.x.y + w.w.z * x.x.z + w.w.w * x.x.w;
    } else {
        return w.w[0] * x.x0.x + w.w[1] * x.x0.y + w.w[2] * x.x0.z + w.w[3] * x.x0.w +
               w.w[4] * x.x1.x + w.w[5] * x.x1.y + w.w[6] * x.x1.z + w.w[7] * x.x1.w;
    }
}

/*
 * A set of up to GEMV_SET matrices of one type that share the activations (q, k and v; gate
 * and up): one launch covers all their rows, so that the small ones (k and v, a quarter of q's
 * rows under grouped-query attention) fill the GPU beside the large one instead of running
 * alone, and a layer pays for fewer launches. Blocks [blk_end[i - 1], blk_end[i]) take matrix
 * i; a block never straddles two.
 */
#define GEMV_SET 3

struct gemv_set {
    cairn__mat_dev m[GEMV_SET];
    float *y[GEMV_SET]; /* y[i][t * m[i].rows + r] */
    unsigned blk_end[GEMV_SET];
    int n;
};

/* This block's matrix, its output and the block's index within that matrix. */
static __device__ __forceinline__ int set_pick(const gemv_set &s, cairn__mat_dev &m, float *&y,
                                               int64_t &blk)
{
    int i = 0;
#pragma unroll
    for (int k = 1; k < GEMV_SET; k++)
        if (k < s.n && blockIdx.x >= s.blk_end[k - 1])
            i = k;
    m = i == 0 ? s.m[0] : i == 1 ? s.m[1] : s.m[2];
    y = i == 0 ? s.y[0] : i == 1 ? s.y[1] : s.y[2];
    blk = (int64_t)blockIdx.x - (i == 0 ? 0 : (int64_t)s.blk_end[i - 1]);
    return i;
}

/*
 * The walk both forms share: the caller's thread (index tid of `step` threads on the row)
 * takes units u, u + step, ... of rows row0 .. row0 + nr - 1, U = 2 units a row per trip, so
 * that 2 R independent 16-byte loads are in flight a thread; each token's activations, loaded
 * once a trip, serve all R rows. acc[r][t] gets the thread's partial sums.
 */
template <uint32_t TYPE, int NT, int R>
static __device__ __forceinline__ void gemv_walk(const cairn__mat_dev &m, const act_dev &a,
                                                 int nt, int64_t row0, int nr, int tid, int step,
                                                 float (&acc)[R][NT])
{
    constexpr int U = 2;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++)
            acc[r][t] = 0.0f;
    const int64_t n_units = units_of<TYPE>(m);
    bool waited = false;
    for (int64_t u0 = tid; u0 < n_units; u0 += (int64_t)U * step) {
        wunit<TYPE> w[U][R];
#pragma unroll
        for (int j = 0; j < U; j++)
#pragma unroll
            for (int r = 0; r < R; r++) {
                w[j][r] = wunit<TYPE>{};
                if (r < nr && u0 + (int64_t)j * step < n_units)
                    load_w<TYPE>(w[j][r], m, row0 + r, u0 + (int64_t)j * step);
            }
        if (!waited) { /* the first weights are on their way: now the activations' writer */
            cairn__pdl_wait();
            waited = true;
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < nt) {
#pragma unroll
                for (int j = 0; j < U; j++) {
                    const int64_t u = u0 + (int64_t)j * step;
                    if (u < n_units) {
                        aunit<TYPE> x;
                        load_a<TYPE>(x, a, t, u);
#pragma unroll
                        for (int r = 0; r < R; r++)
                            acc[r][t] += dot<TYPE>(w[j][r], x);
                    }
                }
            }
        }
    }
    if (!waited) /* a thread with no units still writes after the wait (the caller's sums) */
        cairn__pdl_wait();
}

/*
 * The warp form: one warp takes R consecutive rows (R is warp-uniform, and so is the number nr
 * of them inside the matrix: a warp leaves or stays whole); its lanes take consecutive units.
 */
template <uint32_t TYPE, int NT, int R>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv(gemv_set s, act_dev a, int nt)
{
    cairn__pdl_trigger(); /* the stage after it may start beside it */
    cairn__mat_dev m;
    float *y;
    int64_t blk;
    set_pick(s, m, y, blk);
    const int lane = threadIdx.x & 31;
    const int64_t row0 = (blk * GEMV_WARPS + (threadIdx.x >> 5)) * R;
    if (row0 >= m.rows)
        return;
    const int nr = m.rows - row0 < R ? (int)(m.rows - row0) : R;
    float acc[R][NT];
    gemv_walk<TYPE, NT, R>(m, a, nt, row0, nr, lane, 32, acc);
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float v = cairn__warp_sum(acc[r][t]);
            if (lane == 0 && r < nr && t < nt)
                y[t * m.rows + row0 + r] = v;
        }
}

/*
 * The block form ("split-K"): a block of GEMV_SK_THREADS threads takes R rows, and all its
 * threads walk the units of those rows together (a warp still reads 512 contiguous bytes), so
 * that a row of a few hundred units is read in one or two trips instead of a warp's five to
 * fourteen; the block's partial sums meet in shared memory. At batch 1 the warp form leaves
 * too few warps per SM with too few loads in flight for HBM: each of its trips waits out a
 * full memory latency (Nsight Compute on an H100: 1.0-1.3 TB/s on Llama-3-8B's Q4_K matrices,
 * 23-27% of the SM's warp slots active).
 */
#define GEMV_SK_THREADS 128

template <uint32_t TYPE, int NT, int R, int TH = GEMV_SK_THREADS>
__global__ void __launch_bounds__(TH)
    gemv_sk(gemv_set s, act_dev a, int nt)
{
    cairn__pdl_trigger(); /* the stage after it may start beside it */
    static_assert(R * NT <= 32, "warp 0 finishes one (row, token) sum a lane");
    __shared__ float red[TH / 32][R * NT];
    cairn__mat_dev m;
    float *y;
    int64_t blk;
    set_pick(s, m, y, blk);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t row0 = blk * R;
    const int nr = m.rows - row0 < R ? (int)(m.rows - row0) : R;
    float acc[R][NT];
    gemv_walk<TYPE, NT, R>(m, a, nt, row0, nr, tid, TH, acc);
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float v = cairn__warp_sum(acc[r][t]);
            if (lane == 0)
                red[warp][r * NT + t] = v;
        }
    __syncthreads();
    if (warp == 0 && lane < R * NT) {
        const int r = lane / NT, t = lane % NT;
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < TH / 32; w++)
            v += red[w][lane];
        if (r < nr && t < nt)
            y[t * m.rows + row0 + r] = v;
    }
}

/*
 * The lane form, for matrices in the lane layout (common.cuh; Q8_0, Q4_K, Q6_K): a block of W
 * warps takes one group of 32 rows, lane i row 32 g + i, and warp w the row's pieces w, w + W,
 * ... (a piece: a K-quant block of 256 values, or four Q8_0 blocks), U pieces a trip with all
 * their loads in flight before any arithmetic. A warp's load of one unit of its 32 rows is 512
 * contiguous bytes, and every lane reads the same activations (one broadcast), so a lane
 * decodes each K-quant header once for its 256 values and each activation load serves a whole
 * piece, where the row forms above re-read the header and the activations for every 16 bytes
 * of weights (Nsight Compute in session 11: Q4_K's products at 1.39 TB/s, 45% of the SM's
 * waits on L1). The warps' partial sums meet in shared memory, in a fixed order.
 */
template <uint32_t TYPE> struct lane_piece;
template <> struct lane_piece<CAIRN_GGUF_Q4_K> { int4 h, q[8]; };
template <> struct lane_piece<CAIRN_GGUF_Q6_K> { int4 ql[8], qh[4], sc; float d; };
template <> struct lane_piece<CAIRN_GGUF_Q8_0> { int4 q[8]; uint2 d; };

template <uint32_t TYPE> static __host__ __device__ constexpr int lane_units() /* 16-byte units a piece */
{
    return TYPE == CAIRN_GGUF_Q4_K ? 9 : TYPE == CAIRN_GGUF_Q6_K ? 13 : 8;
}

template <uint32_t TYPE> static __host__ __device__ constexpr int lane_values() /* values a piece */
{
    return TYPE == CAIRN_GGUF_Q8_0 ? 128 : 256;
}

/* Piece p of the lane's row: its units from u (the lane's 16 bytes of the group's first unit of
 * the piece; unit k is 512 bytes on), its scales from the d plane. Rows past the matrix (the
 * last group's padding) read zero units and no scales. */
template <uint32_t TYPE>
static __device__ __forceinline__ void lane_load(lane_piece<TYPE> &w, const uint8_t *u,
                                                 const cairn__mat_dev &m, int64_t row,
                                                 int64_t p)
{
    const bool in = row < m.rows;
    if constexpr (TYPE == CAIRN_GGUF_Q4_K) {
        w.h = ld16(u);
#pragma unroll
        for (int k = 0; k < 8; k++)
            w.q[k] = ld16(u + 512 * (k + 1));
    } else if constexpr (TYPE == CAIRN_GGUF_Q6_K) {
#pragma unroll
        for (int k = 0; k < 8; k++)
            w.ql[k] = ld16(u + 512 * k);
#pragma unroll
        for (int k = 0; k < 4; k++)
            w.qh[k] = ld16(u + 512 * (8 + k));
        w.sc = ld16(u + 512 * 12);
        w.d = in ? cairn__h2f(m.d[row * m.nb + p]) : 0.0f;
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++)
            w.q[k] = ld16(u + 512 * k);
        w.d.x = w.d.y = 0u;
        if (in)
            w.d = __ldg((const uint2 *)(m.d + row * m.nb + 4 * p));
    }
}

static __device__ __forceinline__ int8_t byte_of(const int4 &v, int i)
{
    const int w = i < 4 ? v.x : i < 8 ? v.y : i < 12 ? v.z : v.w;
    return (int8_t)(w >> (8 * (i & 3)));
}

/* acc[t] += piece p of the lane's row . token t's activations, for t < nt. */
template <uint32_t TYPE, int NT>
static __device__ __forceinline__ void lane_dot(const lane_piece<TYPE> &w, const act_dev &a,
                                                int nt, int64_t p, float (&acc)[NT])
{
    const int64_t nba = a.cols / 32, c0 = p * lane_values<TYPE>();
    if constexpr (TYPE == CAIRN_GGUF_Q4_K) {
        /* the 8 sub-blocks' 6-bit scales and mins, four to a word */
        const uint32_t s0 = (uint32_t)w.h.y, s1 = (uint32_t)w.h.z, s2 = (uint32_t)w.h.w;
        const uint32_t sc[2] = {s0 & 0x3F3F3F3Fu, (s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u)};
        const uint32_t mn[2] = {s1 & 0x3F3F3F3Fu,
                                ((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u)};
        const float d = cairn__h2f((uint16_t)(w.h.x & 0xFFFF));
        const float dmin = cairn__h2f((uint16_t)((uint32_t)w.h.x >> 16));
        float sum[NT], msum[NT];
#pragma unroll
        for (int t = 0; t < NT; t++)
            sum[t] = msum[t] = 0.0f;
#pragma unroll
        for (int c = 0; c < 4; c++) { /* 64 values: sub-blocks 2c (low nibbles), 2c + 1 (high) */
            const int4 lo0 = nib_lo(w.q[2 * c]), lo1 = nib_lo(w.q[2 * c + 1]);
            const int4 hi0 = nib_hi(w.q[2 * c]), hi1 = nib_hi(w.q[2 * c + 1]);
            const int j0 = 2 * c, j1 = 2 * c + 1;
            const float f0 = (float)((sc[j0 >> 2] >> (8 * (j0 & 3))) & 0xFF);
            const float f1 = (float)((sc[j1 >> 2] >> (8 * (j1 & 3))) & 0xFF);
            const float g0 = (float)((mn[j0 >> 2] >> (8 * (j0 & 3))) & 0xFF);
            const float g1 = (float)((mn[j1 >> 2] >> (8 * (j1 & 3))) & 0xFF);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t < nt) {
                    const int8_t *aq = a.q + t * a.cols + c0 + 64 * c;
                    const int4 *av = (const int4 *)aq;
                    const int s_lo = dot16(lo1, av[1], dot16(lo0, av[0], 0));
                    const int s_hi = dot16(hi1, av[3], dot16(hi0, av[2], 0));
                    const float2 ds0 = a.ds[t * nba + c0 / 32 + j0];
                    const float2 ds1 = a.ds[t * nba + c0 / 32 + j1];
                    sum[t] += f0 * ds0.x * (float)s_lo + f1 * ds1.x * (float)s_hi;
                    msum[t] += g0 * ds0.y + g1 * ds1.y;
                }
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++)
            acc[t] += d * sum[t] - dmin * msum[t];
    } else if constexpr (TYPE == CAIRN_GGUF_Q6_K) {
#pragma unroll
        for (int k = 0; k < 4; k++) { /* the row forms' four units: half k / 2, lanes 16 (k % 2) */
            const int hh = k >> 1, is = k & 1;
            wunit<CAIRN_GGUF_Q6_K> q;
            q6k_decode(q, w.ql[4 * hh + is], w.ql[4 * hh + 2 + is], w.qh[2 * hh + is], w.d,
                       byte_of(w.sc, 8 * hh + is), byte_of(w.sc, 8 * hh + is + 2),
                       byte_of(w.sc, 8 * hh + is + 4), byte_of(w.sc, 8 * hh + is + 6));
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t < nt) {
                    aunit<CAIRN_GGUF_Q6_K> x;
                    load_a<CAIRN_GGUF_Q6_K>(x, a, t, 4 * p + k); /* the row forms' unit k */
                    acc[t] += dot<CAIRN_GGUF_Q6_K>(q, x);
                }
            }
        }
    } else {
        const uint32_t dw[2] = {w.d.x, w.d.y};
#pragma unroll
        for (int b = 0; b < 4; b++) {
            const float d = cairn__h2f((uint16_t)(dw[b >> 1] >> (16 * (b & 1))));
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t < nt) {
                    const int4 *av = (const int4 *)(a.q + t * a.cols + c0 + 32 * b);
                    const int s = dot16(w.q[2 * b + 1], av[1], dot16(w.q[2 * b], av[0], 0));
                    acc[t] += d * a.ds[t * nba + c0 / 32 + b].x * (float)s;
                }
            }
        }
    }
}

template <uint32_t TYPE, int NT, int W, int U>
__global__ void __launch_bounds__(W * 32)
    gemv_lane(gemv_set s, act_dev a, int nt)
{
    cairn__pdl_trigger(); /* the stage after it may start beside it */
    __shared__ float red[W][NT][32];
    cairn__mat_dev m;
    float *y;
    int64_t g;
    set_pick(s, m, y, g);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row = g * 32 + lane, n_pieces = m.cols / lane_values<TYPE>();
    const uint8_t *base = m.q + ((g * (m.qrow >> 4)) << 9) + (lane << 4);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    bool waited = false;
    for (int64_t p0 = warp; p0 < n_pieces; p0 += W * U) {
        lane_piece<TYPE> w[U];
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t p = p0 + (int64_t)j * W;
            if (p < n_pieces)
                lane_load<TYPE>(w[j], base + ((p * lane_units<TYPE>()) << 9), m, row, p);
        }
        if (!waited) { /* the first weights are on their way: now the activations' writer */
            cairn__pdl_wait();
            waited = true;
        }
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t p = p0 + (int64_t)j * W;
            if (p < n_pieces)
                lane_dot<TYPE, NT>(w[j], a, nt, p, acc);
        }
    }
    if (!waited)
        cairn__pdl_wait();
#pragma unroll
    for (int t = 0; t < NT; t++)
        red[warp][t][lane] = acc[t];
    __syncthreads();
    for (int i = threadIdx.x; i < NT * 32; i += W * 32) {
        const int t = i >> 5, l = i & 31;
        float v = 0.0f;
#pragma unroll
        for (int k = 0; k < W; k++)
            v += red[k][t][l];
        if (t < nt && g * 32 + l < m.rows)
            y[t * m.rows + g * 32 + l] = v;
    }
}

/* ---- Tiles for cuBLAS ------------------------------------------------------------------------ */

/* 8 values into 8 BF16 at o (16-byte aligned) in one store. */
static __device__ __forceinline__ void store8(__nv_bfloat16 *o, const float *v)
{
    uint32_t p[4];
#pragma unroll
    for (int i = 0; i < 4; i++)
        p[i] = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * i])) |
               (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * i + 1])) << 16;
    *(uint4 *)o = make_uint4(p[0], p[1], p[2], p[3]);
}

/* 16 values q[0..15] (bytes of a, signed or not as the type's) as d * (q - off) + m. */
static __device__ __forceinline__ void store16(__nv_bfloat16 *o, int4 q, bool is_signed,
                                               float d, float off, float m)
{
    const int w[4] = {q.x, q.y, q.z, q.w};
    float v[16];
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const int b = (w[i / 4] >> (8 * (i % 4))) & 0xFF;
        const float qv = (float)(is_signed ? (int)(int8_t)b : b);
        v[i] = d * (qv - off) + m;
    }
    store8(o, v);
    store8(o + 8, v + 8);
}

/*
 * Rows r0 + blockIdx.y of m into row blockIdx.y of out (row-major, cols a row) as BF16, for
 * the types and rows dequant_bf16_w does not take. A thread decodes one GEMV unit (16 quant
 * bytes, its scale read once) into its 16 or 32 values, stored 8 at a time; each value as
 * proto/gguf_quant.c computes it: Q8_0 d q; Q4_0 d (q - 8); Q4_1 d q + m; Q5_0 d (q - 16);
 * F16 itself.
 */
template <uint32_t TYPE>
__global__ void dequant_bf16(cairn__mat_dev m, int64_t r0, __nv_bfloat16 *__restrict__ out)
{
    const int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (u >= units_of<TYPE>(m))
        return;
    const int64_t row = r0 + blockIdx.y;
    __nv_bfloat16 *o = out + (int64_t)blockIdx.y * m.cols;
    if constexpr (TYPE == CAIRN_GGUF_Q8_0) {
        const int4 q = ld16(cairn__q_at(m, row, u * 16));
        store16(o + u * 16, q, true, cairn__h2f(m.d[row * m.nb + (u >> 1)]), 0.0f, 0.0f);
    } else if constexpr (TYPE == CAIRN_GGUF_Q4_0 || TYPE == CAIRN_GGUF_Q4_1 ||
                         TYPE == CAIRN_GGUF_Q5_0) {
        const int64_t b = row * m.nb + u;
        const int4 q = ld16(cairn__q_at(m, row, u * 16));
        int4 lo = nib_lo(q), hi = nib_hi(q);
        float d, mn = 0.0f, off = 8.0f;
        if constexpr (TYPE == CAIRN_GGUF_Q4_1) {
            d = cairn__h2f(m.d[2 * b]);
            mn = cairn__h2f(m.d[2 * b + 1]);
            off = 0.0f;
        } else {
            d = cairn__h2f(m.d[b]);
        }
        if constexpr (TYPE == CAIRN_GGUF_Q5_0) {
            const uint32_t qh = m.qh[b];
            lo.x |= spread4(qh & 0xF);
            lo.y |= spread4((qh >> 4) & 0xF);
            lo.z |= spread4((qh >> 8) & 0xF);
            lo.w |= spread4((qh >> 12) & 0xF);
            hi.x |= spread4((qh >> 16) & 0xF);
            hi.y |= spread4((qh >> 20) & 0xF);
            hi.z |= spread4((qh >> 24) & 0xF);
            hi.w |= spread4(qh >> 28);
            off = 16.0f;
        }
        store16(o + u * 32, lo, false, d, off, mn);
        store16(o + u * 32 + 16, hi, false, d, off, mn);
    } else { /* F16 (cols a multiple of 8) */
        const int4 q = ld16(m.q + (row * m.cols + u * 8) * 2);
        const uint32_t pw[4] = {(uint32_t)q.x, (uint32_t)q.y, (uint32_t)q.z, (uint32_t)q.w};
        float v[8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[2 * i] = cairn__h2f((uint16_t)(pw[i] & 0xFFFF));
            v[2 * i + 1] = cairn__h2f((uint16_t)(pw[i] >> 16));
        }
        store8(o + u * 8, v);
    }
}

/*
 * The same values for Q4_K, Q6_K and Q8_0 rows of a multiple of 256 values, with the writes
 * coalesced: a warp takes DEQ_W_UNITS consecutive 256-value pieces (a K-quant block, or eight
 * Q8_0 blocks) of the tile, rows n_rows from r0, and lane i writes values 8i .. 8i + 7 of each
 * in one 16-byte store (a warp's store is 512 contiguous bytes). dequant_bf16's thread a
 * unit wrote each K-quant unit's values as runs 32 or 64 values apart, so every store of a
 * warp touched twice the sectors it filled. Each lane reads 8 quant bytes (and Q6_K 8 of the
 * high bits) a piece; the header's scales are one address for the warp.
 */
#define DEQ_W_WARPS 8
#define DEQ_W_UNITS 2

template <uint32_t TYPE>
static __device__ __forceinline__ void deq8(const cairn__mat_dev &m, int64_t row, int64_t b,
                                            int lane, float *v)
{
    if constexpr (TYPE == CAIRN_GGUF_Q4_K) {
        const int c = lane >> 3, h = (lane >> 2) & 1, l0 = 8 * (lane & 3);
        const int4 hdr = ld16(cairn__q_at(m, row, b * 144));
        const uint2 q = __ldg((const uint2 *)cairn__q_at(m, row, b * 144 + 16 + 32 * c + l0));
        float d, mn;
        q4k_sub(hdr, 2 * c + h, &d, &mn);
        const float mm = -mn;
        const uint32_t w[2] = {q.x, q.y};
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint32_t byte = (w[i >> 2] >> (8 * (i & 3))) & 0xFF;
            v[i] = d * ((float)(h ? byte >> 4 : byte & 0xF) - 0.0f) + mm;
        }
    } else if constexpr (TYPE == CAIRN_GGUF_Q6_K) {
        const int n = lane >> 4, g = (lane >> 2) & 3, l0 = 8 * (lane & 3);
        const int64_t o = b * 208; /* ql, qh, scales */
        const uint2 ql = __ldg((const uint2 *)cairn__q_at(m, row, o + 64 * n + 32 * (g & 1) + l0));
        const uint2 qh = __ldg((const uint2 *)cairn__q_at(m, row, o + 128 + 32 * n + l0));
        const int8_t sc = (int8_t)*cairn__q_at(m, row, o + 192 + 8 * n + 2 * g + (l0 >> 4));
        const float s = cairn__h2f(m.d[row * m.nb + b]) * (float)sc;
        const uint32_t wl[2] = {ql.x, ql.y}, wh[2] = {qh.x, qh.y};
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint32_t lo = (wl[i >> 2] >> (8 * (i & 3) + (g >= 2 ? 4 : 0))) & 0xF;
            const uint32_t hi = (wh[i >> 2] >> (8 * (i & 3) + 2 * g)) & 3;
            v[i] = s * ((float)((int)(lo | hi << 4) - 32) - 0.0f) + 0.0f;
        }
    } else { /* Q8_0: piece b is blocks 8b .. 8b + 7 of the row */
        const int64_t col = b * 256 + 8 * lane;
        const uint2 q = __ldg((const uint2 *)cairn__q_at(m, row, col));
        const float d = cairn__h2f(m.d[row * m.nb + (col >> 5)]);
        const uint32_t w[2] = {q.x, q.y};
#pragma unroll
        for (int i = 0; i < 8; i++)
            v[i] = d * ((float)(int8_t)((w[i >> 2] >> (8 * (i & 3))) & 0xFF) - 0.0f) + 0.0f;
    }
}

template <uint32_t TYPE>
__global__ void __launch_bounds__(DEQ_W_WARPS * 32)
    dequant_bf16_w(cairn__mat_dev m, int64_t r0, int64_t n_rows, __nv_bfloat16 *__restrict__ out)
{
    const int lane = threadIdx.x & 31;
    const int64_t per_row = m.cols / 256, total = n_rows * per_row;
    const int64_t w0 = ((int64_t)blockIdx.x * DEQ_W_WARPS + (threadIdx.x >> 5)) * DEQ_W_UNITS;
    float v[DEQ_W_UNITS][8];
#pragma unroll
    for (int j = 0; j < DEQ_W_UNITS; j++) /* every piece's loads before any store */
        if (w0 + j < total) {
            const int64_t rr = (w0 + j) / per_row;
            deq8<TYPE>(m, r0 + rr, w0 + j - rr * per_row, lane, v[j]);
        }
#pragma unroll
    for (int j = 0; j < DEQ_W_UNITS; j++)
        if (w0 + j < total) {
            const int64_t rr = (w0 + j) / per_row;
            store8(out + rr * m.cols + (w0 + j - rr * per_row) * 256 + 8 * lane, v[j]);
        }
}

/* F16 rows whose length is not a multiple of 8: one value a thread. */
__global__ void dequant_bf16_f16_scalar(cairn__mat_dev m, int64_t r0,
                                        __nv_bfloat16 *__restrict__ out)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < m.cols)
        out[(int64_t)blockIdx.y * m.cols + i] =
            __float2bfloat16_rn(cairn__deq1(m, r0 + blockIdx.y, i, CAIRN_GGUF_F16));
}

/* Float weights against float activations that are not 16-byte aligned (or whose row length
 * is not a multiple of a 16-byte unit): one value at a time. */
template <uint32_t TYPE, int NT>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_scalar(cairn__mat_dev m, const float *__restrict__ x, int nt, float *__restrict__ y,
                int64_t ys)
{
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= m.rows)
        return;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    for (int64_t i = lane; i < m.cols; i += 32) {
        const float w = cairn__deq1(m, row, i, TYPE);
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t < nt)
                acc[t] += w * x[t * m.cols + i];
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const float s = cairn__warp_sum(acc[t]);
        if (lane == 0 && t < nt)
            y[t * ys + row] = s;
    }
}

/* ---- Host side ------------------------------------------------------------------------------- */

static bool is_quant(uint32_t type)
{
    return type != CAIRN_GGUF_F32 && type != CAIRN_GGUF_F16 && type != CAIRN_GGUF_BF16;
}

static int blocks_for(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    return (int)(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

static int prep_q8(cairn__cuda *c, const float *x, int n_tok, int64_t cols, cairn_error *err)
{
    const int64_t nb = (int64_t)n_tok * (cols / 32);
    const int warps = 8;
    cairn__launch(c->pdl_all, quantize_q8, dim3((unsigned)((nb + warps - 1) / warps)),
                  dim3(warps * 32), 0, c->stream, x, nb, c->act_q, c->act_ds);
    CU_LAUNCHED(err, "quantize_q8");
    cairn__cuda_q8_note(c, x, n_tok, cols);
    return 0;
}

static int prep_bf16(cairn__cuda *c, const float *x, int n_tok, int64_t cols, cairn_error *err)
{
    const int64_t n = (int64_t)n_tok * cols;
    to_bf16<<<blocks_for(n, 256), 256, 0, c->stream>>>(x, n, c->xbf);
    CU_LAUNCHED(err, "to_bf16");
    return 0;
}

/*
 * How a GEMV launch is shaped: the form (warp or block) and rows a warp or block (R). Chosen
 * per type from bench_cuda_gemv on an H100 (docs/BENCHMARKS.md, one Llama-3-8B layer's
 * products, the shapes side by side in one run):
 *   - the block form for Q4_K (batch 1: 94 us a layer against the warp form's 120), Q8_0 and
 *     the float types, two rows a block once the set has rows enough for every SM to hold
 *     several blocks of them;
 *   - the warp form for Q6_K, one row a warp at 1 and 2 tokens (100 us against 113 for two)
 *     and two from 3 on (265 against 389 at 8 tokens);
 *   - the warp form for Q4_0, Q4_1 and Q5_0 (unmeasured), two rows a warp for tall sets.
 * Walking 4 units a trip instead of 2 was slower for every type, form and row count measured.
 * The environment overrides each, to measure them side by side: CAIRN_CUDA_GEMV=warp|block,
 * CAIRN_CUDA_GEMV_ROWS=1|2|4 (4: each token's activations serve four rows; slower for every
 * type and form on an H100, Q4_K's block form 112 us a layer against 94, as its 127 registers
 * leave fewer warps in flight: no default picks it).
 */
struct gemv_shape {
    bool block;
    int r;
    int threads; /* the block form's threads: 64 (Q4_K) or 128 */
};

static gemv_shape gemv_shape_of(uint32_t type, int64_t rows, int nt, int n_sm)
{
    gemv_shape g;
    const char *f = getenv("CAIRN_CUDA_GEMV");
    if (f && !strcmp(f, "warp"))
        g.block = false;
    else if (f && !strcmp(f, "block"))
        g.block = true;
    else
        g.block = type == CAIRN_GGUF_Q4_K || type == CAIRN_GGUF_Q8_0 ||
                  type == CAIRN_GGUF_F32 || type == CAIRN_GGUF_F16 || type == CAIRN_GGUF_BF16;
    const bool many = g.block ? rows >= (int64_t)16 * n_sm : rows >= (int64_t)4 * GEMV_WARPS * n_sm;
    g.r = many ? 2 : 1;
    if (type == CAIRN_GGUF_Q6_K && !g.block)
        g.r = nt <= 2 ? 1 : 2;
    const char *r = getenv("CAIRN_CUDA_GEMV_ROWS");
    if (r && (!strcmp(r, "1") || !strcmp(r, "2") || !strcmp(r, "4")))
        g.r = r[0] - '0';
    /* 64 threads for Q4_K: a 4096-column row is 128 units, so each thread has both units of
     * its trip in flight, where 128 threads leave half their second loads empty. On an H100
     * (bench_cuda_gemv, one layer): 93.9 us against 94.9 at 1 token, 186 against 206 at 8;
     * a whole Q4_K_M decode step 4.27 -> 4.14 ms at batch 1, 8.79 -> 8.34 at batch 8. The
     * other block-form types keep 128 (unmeasured). CAIRN_CUDA_GEMV_THREADS=64|128 sets it. */
    const char *th = getenv("CAIRN_CUDA_GEMV_THREADS");
    if (th && (!strcmp(th, "64") || !strcmp(th, "128")))
        g.threads = atoi(th);
    else
        g.threads = type == CAIRN_GGUF_Q4_K ? 64 : GEMV_SK_THREADS;
    return g;
}

/* A GEMV launch, with pdl allowed to start beside the kernel before it (cairn__pdl_wait). */
template <class... P, class... A>
static void launch_pdl(bool pdl, void (*kern)(P...), unsigned grid, int threads,
                       cudaStream_t st, A... args)
{
    cairn__launch(pdl, kern, dim3(grid), dim3((unsigned)threads), 0, st, args...);
}

template <uint32_t TYPE, int NT, int R>
static void launch_shaped(cudaStream_t st, bool pdl, const gemv_shape &g, const gemv_set &s,
                          const act_dev &a, int nt, unsigned grid)
{
    if (g.block && g.threads == 64)
        launch_pdl(pdl, gemv_sk<TYPE, NT, R, 64>, grid, 64, st, s, a, nt);
    else if (g.block)
        launch_pdl(pdl, gemv_sk<TYPE, NT, R>, grid, GEMV_SK_THREADS, st, s, a, nt);
    else
        launch_pdl(pdl, gemv<TYPE, NT, R>, grid, GEMV_WARPS * 32, st, s, a, nt);
}

template <uint32_t TYPE, int R>
static void launch_rows(cudaStream_t st, bool pdl, const gemv_shape &g, const gemv_set &s,
                        const act_dev &a, int nt, unsigned grid)
{
    if (nt <= 1)
        launch_shaped<TYPE, 1, R>(st, pdl, g, s, a, nt, grid);
    else if (nt <= 2)
        launch_shaped<TYPE, 2, R>(st, pdl, g, s, a, nt, grid);
    else if (nt <= 4)
        launch_shaped<TYPE, 4, R>(st, pdl, g, s, a, nt, grid);
    else
        launch_shaped<TYPE, 8, R>(st, pdl, g, s, a, nt, grid);
}

/* Float weights whose rows or activations are not 16-byte units: one value at a time, one
 * matrix a launch. */
template <uint32_t TYPE>
static void launch_scalar(cudaStream_t st, const cairn__mat_dev &m, const float *x, int nt,
                          float *y)
{
    const unsigned grid = (unsigned)((m.rows + GEMV_WARPS - 1) / GEMV_WARPS);
    const int threads = GEMV_WARPS * 32;
    if (nt <= 1)
        gemv_scalar<TYPE, 1><<<grid, threads, 0, st>>>(m, x, nt, y, m.rows);
    else if (nt <= 2)
        gemv_scalar<TYPE, 2><<<grid, threads, 0, st>>>(m, x, nt, y, m.rows);
    else if (nt <= 4)
        gemv_scalar<TYPE, 4><<<grid, threads, 0, st>>>(m, x, nt, y, m.rows);
    else
        gemv_scalar<TYPE, 8><<<grid, threads, 0, st>>>(m, x, nt, y, m.rows);
}

/*
 * The lane form's shape: W warps a block (a group of 32 rows) and U pieces a trip. Default: 16
 * warps, one piece a trip, for every type and token count: fastest of the six shapes in
 * bench_cuda_gemv on an H100 (session 19, one Llama-3-8B layer's products; docs/BENCHMARKS.md):
 * Q4_K 52.5 us a layer at 1 token against 55.8 for 8 warps and 2 pieces, 132 against 166 at 8
 * tokens; Q6_K 76.8 against 78.3; Q8_0 88.4 against 101.1. Two pieces a trip with 16 warps
 * spill (512 threads leave 128 registers a thread). CAIRN_CUDA_LANE_WARPS=4|8|16 and
 * CAIRN_CUDA_LANE_U=1|2 set them, to measure them side by side.
 */
static void lane_shape(int *w, int *u)
{
    const char *e = getenv("CAIRN_CUDA_LANE_WARPS");
    *w = e && (!strcmp(e, "4") || !strcmp(e, "8")) ? atoi(e) : 16;
    e = getenv("CAIRN_CUDA_LANE_U");
    *u = e && !strcmp(e, "2") ? 2 : 1;
}

template <uint32_t TYPE, int NT, int W>
static void launch_lane_w(cudaStream_t st, bool pdl, int u, const gemv_set &s, const act_dev &a,
                          int nt, unsigned grid)
{
    if (u == 1)
        launch_pdl(pdl, gemv_lane<TYPE, NT, W, 1>, grid, W * 32, st, s, a, nt);
    else
        launch_pdl(pdl, gemv_lane<TYPE, NT, W, 2>, grid, W * 32, st, s, a, nt);
}

template <uint32_t TYPE, int NT>
static void launch_lane_nt(cudaStream_t st, bool pdl, int w, int u, const gemv_set &s,
                           const act_dev &a, int nt, unsigned grid)
{
    if (w == 4)
        launch_lane_w<TYPE, NT, 4>(st, pdl, u, s, a, nt, grid);
    else if (w == 16)
        launch_lane_w<TYPE, NT, 16>(st, pdl, u, s, a, nt, grid);
    else
        launch_lane_w<TYPE, NT, 8>(st, pdl, u, s, a, nt, grid);
}

/* The lane form over the set s (every matrix of it in the lane layout): a block a group. */
template <uint32_t TYPE>
static void launch_lane(cudaStream_t st, bool pdl, gemv_set s, const act_dev &a, int nt)
{
    int w, u;
    lane_shape(&w, &u);
    unsigned grid = 0;
    for (int i = 0; i < s.n; i++) {
        grid += (unsigned)((s.m[i].rows + 31) / 32);
        s.blk_end[i] = grid;
    }
    if (nt <= 1)
        launch_lane_nt<TYPE, 1>(st, pdl, w, u, s, a, nt, grid);
    else if (nt <= 2)
        launch_lane_nt<TYPE, 2>(st, pdl, w, u, s, a, nt, grid);
    else if (nt <= 4)
        launch_lane_nt<TYPE, 4>(st, pdl, w, u, s, a, nt, grid);
    else
        launch_lane_nt<TYPE, 8>(st, pdl, w, u, s, a, nt, grid);
}

/* One pass of nt tokens over the set s (its y already offset to the pass's first token). */
template <uint32_t TYPE>
static void launch_gemv(cudaStream_t st, gemv_set s, const act_dev &a, int nt, bool vec,
                        int n_sm, bool pdl)
{
    if constexpr (TYPE == CAIRN_GGUF_Q4_K || TYPE == CAIRN_GGUF_Q6_K ||
                  TYPE == CAIRN_GGUF_Q8_0) {
        /* the lane layout's own form, unless CAIRN_CUDA_GEMV names a row form (which reads
         * either layout) */
        const char *f = getenv("CAIRN_CUDA_GEMV");
        bool lane = !(f && (!strcmp(f, "warp") || !strcmp(f, "block")));
        for (int i = 0; i < s.n; i++)
            lane = lane && s.m[i].lane;
        if (lane) {
            launch_lane<TYPE>(st, pdl, s, a, nt);
            return;
        }
    }
    constexpr bool is_float =
        TYPE == CAIRN_GGUF_F32 || TYPE == CAIRN_GGUF_F16 || TYPE == CAIRN_GGUF_BF16;
    if constexpr (is_float) {
        if (!vec) {
            for (int i = 0; i < s.n; i++)
                launch_scalar<TYPE>(st, s.m[i], a.x, nt, s.y[i]);
            return;
        }
    }
    int64_t rows = 0;
    for (int i = 0; i < s.n; i++)
        rows += s.m[i].rows;
    const gemv_shape g = gemv_shape_of(TYPE, rows, nt, n_sm);
    const int64_t per_block = g.block ? g.r : (int64_t)GEMV_WARPS * g.r;
    unsigned grid = 0;
    for (int i = 0; i < s.n; i++) {
        grid += (unsigned)((s.m[i].rows + per_block - 1) / per_block);
        s.blk_end[i] = grid;
    }
    if (g.r == 4)
        launch_rows<TYPE, 4>(st, pdl, g, s, a, nt, grid);
    else if (g.r == 2)
        launch_rows<TYPE, 2>(st, pdl, g, s, a, nt, grid);
    else
        launch_rows<TYPE, 1>(st, pdl, g, s, a, nt, grid);
}

static_assert(CAIRN__GEMV_TOKENS == 8, "launch_gemv instantiates passes of up to 8 tokens");

/* y[i] = w[i] x for n_tok <= CAIRN__GEMV_MAX_TOKENS tokens, in passes of up to 8 tokens; the
 * n <= GEMV_SET matrices are of one type and share x (and its quantized form). */
static int gemv_passes(cairn__cuda *c, const cairn__cmat *const *w, int n, const float *x,
                       int n_tok, float *const *y, cairn_error *err)
{
    const uint32_t type = w[0]->type;
    const int64_t cols = w[0]->cols;
    bool vec = true;
    if (type == CAIRN_GGUF_F32)
        vec = cols % 4 == 0 && ((uintptr_t)x & 15) == 0;
    else if (type == CAIRN_GGUF_F16 || type == CAIRN_GGUF_BF16)
        vec = cols % 8 == 0 && ((uintptr_t)x & 15) == 0;
    for (int t0 = 0; t0 < n_tok; t0 += CAIRN__GEMV_TOKENS) {
        const int nt = n_tok - t0 < CAIRN__GEMV_TOKENS ? n_tok - t0 : CAIRN__GEMV_TOKENS;
        const act_dev a = {c->act_q + (int64_t)t0 * cols, c->act_ds + (int64_t)t0 * (cols / 32),
                           x + (int64_t)t0 * cols, cols};
        gemv_set s = {};
        s.n = n;
        for (int i = 0; i < n; i++) {
            s.m[i] = cairn__mat_dev_of(w[i]);
            s.y[i] = y[i] + (int64_t)t0 * w[i]->rows;
        }
#define GEMV(T, VEC)                                                                           \
    case T:                                                                                    \
        launch_gemv<T>(c->stream, s, a, nt, VEC, c->n_sm, c->pdl);                             \
        break
        switch (type) {
            GEMV(CAIRN_GGUF_F32, vec);
            GEMV(CAIRN_GGUF_F16, vec);
            GEMV(CAIRN_GGUF_BF16, vec);
            GEMV(CAIRN_GGUF_Q8_0, true);
            GEMV(CAIRN_GGUF_Q4_0, true);
            GEMV(CAIRN_GGUF_Q4_1, true);
            GEMV(CAIRN_GGUF_Q5_0, true);
            GEMV(CAIRN_GGUF_Q4_K, true);
            GEMV(CAIRN_GGUF_Q6_K, true);
        default:
            return cairn_errorf(err, CAIRN_EUNSUPPORTED, "cuda backend: no GEMV for type %u",
                                type);
        }
#undef GEMV
        CU_LAUNCHED(err, "gemv");
    }
    return 0;
}

/* Rows r0 .. r0 + n_rows - 1 of w into the tile `out`, on stream s; n_rows <= 65535 (a grid's
 * y dimension). */
static int launch_dequant(const cairn__cmat *w, int64_t r0, int64_t n_rows, __nv_bfloat16 *out,
                          cudaStream_t s, cairn_error *err)
{
    const cairn__mat_dev m = cairn__mat_dev_of(w);
    if (w->type == CAIRN_GGUF_F16 && w->cols % 8) {
        const dim3 grid((unsigned)((w->cols + 255) / 256), (unsigned)n_rows);
        dequant_bf16_f16_scalar<<<grid, 256, 0, s>>>(m, r0, out);
        CU_LAUNCHED(err, "dequant_bf16_f16_scalar");
        return 0;
    }
    /* K-quant rows are whole blocks of 256 values */
    if (w->type == CAIRN_GGUF_Q4_K || w->type == CAIRN_GGUF_Q6_K ||
        (w->type == CAIRN_GGUF_Q8_0 && w->cols % 256 == 0)) {
        const int64_t pieces = n_rows * (w->cols / 256);
        const int64_t per_block = (int64_t)DEQ_W_WARPS * DEQ_W_UNITS;
        const unsigned grid = (unsigned)((pieces + per_block - 1) / per_block);
        if (w->type == CAIRN_GGUF_Q4_K)
            dequant_bf16_w<CAIRN_GGUF_Q4_K><<<grid, DEQ_W_WARPS * 32, 0, s>>>(m, r0, n_rows,
                                                                               out);
        else if (w->type == CAIRN_GGUF_Q6_K)
            dequant_bf16_w<CAIRN_GGUF_Q6_K><<<grid, DEQ_W_WARPS * 32, 0, s>>>(m, r0, n_rows,
                                                                               out);
        else
            dequant_bf16_w<CAIRN_GGUF_Q8_0><<<grid, DEQ_W_WARPS * 32, 0, s>>>(m, r0, n_rows,
                                                                               out);
        CU_LAUNCHED(err, "dequant_bf16_w");
        return 0;
    }
    /* a thread a unit: units a row as units_of<> counts them */
    int64_t units;
    switch (w->type) {
    case CAIRN_GGUF_Q8_0: units = w->cols / 16; break;
    case CAIRN_GGUF_F16: units = w->cols / 8; break;
    default: units = w->nb; break;
    }
    const dim3 grid((unsigned)((units + 127) / 128), (unsigned)n_rows);
#define DEQ(T)                                                                                 \
    case T:                                                                                    \
        dequant_bf16<T><<<grid, 128, 0, s>>>(m, r0, out);                                      \
        break
    switch (w->type) {
        DEQ(CAIRN_GGUF_F16);
        DEQ(CAIRN_GGUF_Q8_0);
        DEQ(CAIRN_GGUF_Q4_0);
        DEQ(CAIRN_GGUF_Q4_1);
        DEQ(CAIRN_GGUF_Q5_0);
    default:
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "cuda backend: no tile decoder for type %u",
                            w->type);
    }
#undef DEQ
    CU_LAUNCHED(err, "dequant_bf16");
    return 0;
}

int cairn__cuda_decode_whole(cairn__cuda *c, cairn__cmat *m, cairn_error *err)
{
    for (int64_t r0 = 0; r0 < m->rows; r0 += 65535) {
        const int64_t n = m->rows - r0 < 65535 ? m->rows - r0 : 65535;
        int rc = launch_dequant(m, r0, n, m->bf + r0 * m->cols, c->stream, err);
        if (rc)
            return rc;
    }
    return 0;
}

/* y = w x through cuBLAS; x's BF16 copy is in c->xbf unless the weights are F32. */
static int gemm(cairn__cuda *c, const cairn__cmat *w, const float *x, int n_tok, float *y,
                cairn_error *err)
{
    const float one = 1.0f, zero = 0.0f;
    const int rows = (int)w->rows, cols = (int)w->cols;
    if (w->type == CAIRN_GGUF_F32) {
        BLAS_TRY(err, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n_tok, cols, &one,
                                   w->q, CUDA_R_32F, cols, x, CUDA_R_32F, cols, &zero, y,
                                   CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return 0;
    }
    if (w->type == CAIRN_GGUF_BF16 || w->bf) { /* BF16 weights, or the BF16 cache's copy */
        const void *wb = w->bf ? (const void *)w->bf : (const void *)w->q;
        BLAS_TRY(err, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n_tok, cols, &one,
                                   wb, CUDA_R_16BF, cols, c->xbf, CUDA_R_16BF, cols, &zero, y,
                                   CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return 0;
    }
    const int64_t tile_elems = (int64_t)(c->wtile_bytes / sizeof(__nv_bfloat16));
    int64_t chunk = tile_elems / w->cols;
    if (chunk > 65535)
        chunk = 65535;
    if (!c->wtile || chunk < 1)
        return cairn_errorf(err, CAIRN_ESTATE, "cuda backend: no weight tile scratch for a "
                            "%lld-column product (call reserve after loading the weights)",
                            (long long)w->cols);
    const bool overlap = c->tile_overlap && c->wtile2 && w->rows > chunk;
    if (overlap) /* the side stream starts after what the stream has queued so far */
        CU_TRY(err, cudaEventRecord(c->tile_ev[0], c->stream));
    for (int64_t r0 = 0, i = 0; r0 < w->rows; r0 += chunk, i++) {
        const int n = (int)(w->rows - r0 < chunk ? w->rows - r0 : chunk);
        __nv_bfloat16 *tile = overlap && (i & 1) ? c->wtile2 : c->wtile;
        int rc;
        if (overlap) {
            /* Tile i is decoded on the side stream once the product that last read its buffer
             * (tile i - 2) is done, beside the product of tile i - 1; its product waits for
             * it. Every wait names an event recorded in this call, so that a captured step
             * (graph.cu) forks the side stream from the stream and joins it back. */
            cudaEvent_t deq = c->tile_ev[1 + (i & 1)], done = c->tile_ev[3 + (i & 1)];
            CU_TRY(err, cudaStreamWaitEvent(c->side, i < 2 ? c->tile_ev[0] : done, 0));
            if ((rc = launch_dequant(w, r0, n, tile, c->side, err)))
                return rc;
            CU_TRY(err, cudaEventRecord(deq, c->side));
            CU_TRY(err, cudaStreamWaitEvent(c->stream, deq, 0));
        } else if ((rc = launch_dequant(w, r0, n, tile, c->stream, err))) {
            return rc; /* the stream orders the next tile's decoding after this product */
        }
        BLAS_TRY(err, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, n_tok, cols, &one,
                                   tile, CUDA_R_16BF, cols, c->xbf, CUDA_R_16BF, cols, &zero,
                                   y + r0, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
        if (overlap)
            CU_TRY(err, cudaEventRecord(c->tile_ev[3 + (i & 1)], c->stream));
    }
    return 0;
}

/* The most tokens a product of this type takes as a GEMV: the float types go to cuBLAS from 3
 * tokens on (their GEMV does the float products one token at a time: BF16 at batch 8 took
 * 15.3 ms a step where cuBLAS at batch 32 took 10.3 on an H100); the quantized types from
 * CAIRN__GEMV_MAX_TOKENS + 1 (cuBLAS needs their tiles dequantized first). */
static int gemv_max_tokens(uint32_t type)
{
    return type == CAIRN_GGUF_BF16 || type == CAIRN_GGUF_F32 ? CAIRN__GEMV_FLOAT_MAX_TOKENS
                                                             : CAIRN__GEMV_MAX_TOKENS;
}

/* What a product of n_tok tokens against w reads from the scratch. */
static bool wants_q8(const cairn__cmat *w, int n_tok)
{
    return n_tok <= gemv_max_tokens(w->type) && is_quant(w->type);
}

static bool wants_bf16(const cairn__cmat *w, int n_tok)
{
    return n_tok > gemv_max_tokens(w->type) && w->type != CAIRN_GGUF_F32;
}

static int check_scratch(cairn__cuda *c, const cairn__cmat *w, int n_tok, cairn_error *err)
{
    if (n_tok > c->max_tokens || w->cols > c->cap_cols ||
        (wants_bf16(w, n_tok) && !c->xbf))
        return cairn_errorf(err, CAIRN_ESTATE, "cuda backend: a %d-token product with a "
                            "%lld-column matrix needs more scratch than reserve made (%d tokens, "
                            "%lld columns): call reserve after loading the weights", n_tok,
                            (long long)w->cols, c->max_tokens, (long long)c->cap_cols);
    return 0;
}

/* x's quantized form (n_tok rows of cols) is in the scratch when the stage that wrote x left it
 * there (cairn__cuda_q8_note), or after prep_q8. */
static int need_q8(cairn__cuda *c, const float *x, int n_tok, int64_t cols, cairn_error *err)
{
    if (c->q8_src == x && c->q8_tokens == n_tok && c->q8_cols == cols)
        return 0;
    return prep_q8(c, x, n_tok, cols, err);
}

/* y = w x; have_bf16: x's BF16 form is already in the scratch. */
static int product(cairn__cuda *c, const cairn__cmat *w, const float *x, int n_tok, float *y,
                   bool have_bf16, cairn_error *err)
{
    int rc = check_scratch(c, w, n_tok, err);
    if (rc)
        return rc;
    if (n_tok <= gemv_max_tokens(w->type)) {
        if (is_quant(w->type) && (rc = need_q8(c, x, n_tok, w->cols, err)))
            return rc;
        return gemv_passes(c, &w, 1, x, n_tok, &y, err);
    }
    if (wants_bf16(w, n_tok) && !have_bf16 && (rc = prep_bf16(c, x, n_tok, w->cols, err)))
        return rc;
    return gemm(c, w, x, n_tok, y, err);
}

/* ---- The stages ------------------------------------------------------------------------------ */

int cairn__cuda_matmul(cairn_backend *be, const cairn_bmat *const *w, int n_w, const float *x,
                       float *const *y, cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    int rc = cairn__cuda_need_batch(c, "matmul", err);
    if (rc || (rc = cairn__cuda_enter(c, err)))
        return rc;
    if (n_w < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: matmul of %d matrices", n_w);
    const int T = c->n_tokens;
    const cairn__cmat *m[CAIRN__CALL_MATS];
    if (n_w > CAIRN__CALL_MATS)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: matmul of %d matrices (at most "
                            "%d)", n_w, CAIRN__CALL_MATS);
    /* The matrices share x: quantize (or convert) it once for all of them. */
    bool q8 = false, bf = false;
    for (int i = 0; i < n_w; i++) {
        m[i] = (const cairn__cmat *)w[i]->priv;
        if (!m[i] || m[i]->cols != m[0]->cols)
            return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: matmul matrix %d is not "
                                "loaded or differs in columns from the first", i);
        if ((rc = check_scratch(c, m[i], T, err)))
            return rc;
        q8 |= wants_q8(m[i], T);
        bf |= wants_bf16(m[i], T);
    }
    const int64_t cols = m[0]->cols;
    if (q8 && (rc = need_q8(c, x, T, cols, err)))
        return rc;
    if (bf && (rc = prep_bf16(c, x, T, cols, err)))
        return rc;
    /* Runs of matrices of one type that take the GEMV go in one launch a pass. */
    for (int i = 0; i < n_w;) {
        if (T > gemv_max_tokens(m[i]->type)) {
            if ((rc = product(c, m[i], x, T, y[i], bf, err)))
                return rc;
            i++;
            continue;
        }
        int n = 1;
        while (c->gemv_sets && i + n < n_w && n < GEMV_SET && m[i + n]->type == m[i]->type)
            n++;
        if ((rc = gemv_passes(c, m + i, n, x, T, y + i, err)))
            return rc;
        i += n;
    }
    /* An output written over x leaves its quantized form stale. */
    for (int i = 0; i < n_w; i++)
        if (c->q8_src && y[i] < c->q8_src + (size_t)T * (size_t)cols &&
            c->q8_src < y[i] + (size_t)T * (size_t)m[i]->rows)
            cairn__cuda_q8_forget(c);
    return 0;
}

/* The wanted rows, normalised, side by side in lrows (their indices came with the batch). */
static int logits_check(cairn__cuda *c, const cairn__cmat *m, int n, cairn_error *err)
{
    if (!m || m->cols != n)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: logits matrix of %lld columns "
                            "for rows of %d", m ? (long long)m->cols : 0LL, n);
    if (c->n_out > 0 &&
        (!c->lrows || !c->lout || (int64_t)n > c->lrows_cols ||
         (size_t)m->rows * sizeof(float) * (size_t)c->lout_tokens > c->lout_bytes))
        return cairn_errorf(err, CAIRN_ESTATE, "cuda backend: no logits scratch for this "
                            "matrix (load it with CAIRN_BMAT_LOGITS before reserve)");
    return 0;
}

int cairn__cuda_logits_compute(cairn__cuda *c, const cairn_bmat *w, const float *norm,
                               float eps, const float *x, int n, cairn_error *err)
{
    const cairn__cmat *m = (const cairn__cmat *)w->priv;
    int rc = cairn__cuda_need_batch(c, "logits", err);
    if (rc || (rc = logits_check(c, m, n, err)))
        return rc;
    if (c->n_out > c->lout_tokens)
        return cairn_errorf(err, CAIRN_ESTATE, "cuda backend: %d logits rows in one pass, "
                            "the scratch holds %d", c->n_out, c->lout_tokens);
    const int32_t *rows = cairn__b_out(c->d_batch, c->n_tokens);
    if ((rc = cairn__cuda_norm_rows(c, c->lrows, x, rows, norm, c->n_out, n, eps, err)))
        return rc;
    return product(c, m, c->lrows, c->n_out, c->lout, false, err);
}

int cairn__cuda_logits(cairn_backend *be, const cairn_bmat *w, const float *norm, float eps,
                       float *x, int n, float *out_host, const cairn_bpick *picks, int kmax,
                       cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    cairn__cuda_q8_forget(c); /* it may write where q8_src points */
    int rc = cairn__cuda_need_batch(c, "logits", err);
    if (rc || (rc = cairn__cuda_enter(c, err)))
        return rc;
    const cairn__cmat *m = (const cairn__cmat *)w->priv;
    if ((rc = logits_check(c, m, n, err)))
        return rc;
    if (c->n_out > 0) {
        const int32_t *rows = cairn__b_out(c->d_batch, c->n_tokens);
        if ((rc = cairn__cuda_norm_rows(c, c->lrows, x, rows, norm, c->n_out, n, eps, err)))
            return rc;
        for (int j0 = 0; j0 < c->n_out; j0 += c->lout_tokens) {
            const int nj = c->n_out - j0 < c->lout_tokens ? c->n_out - j0 : c->lout_tokens;
            if ((rc = product(c, m, c->lrows + (int64_t)j0 * n, nj, c->lout, false, err)))
                return rc;
            if ((rc = cairn__cuda_rows_out(c, out_host, picks, j0, nj, m->rows, kmax, err)))
                return rc;
        }
    }
    CU_TRY(err, cudaStreamSynchronize(c->stream));
    cairn__cuda_rows_done(c, picks, c->n_out, kmax);
    return 0;
}
