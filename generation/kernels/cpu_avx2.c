/*
 * generation/kernels/cpu_avx2.c — AVX2/FMA/F16C versions of the hot kernels. Compiled with
 * -mavx2 -mfma -mf16c (generation/CMakeLists.txt); called only when cairn_cpu_has_avx2().
 *
 * Integer dot products use maddubs (u8 x s8 -> s16 pairs): the weight side must be unsigned, so
 * signed x signed products move the sign of x onto y first (|x| . sign(y, x)). Partial sums stay
 * below the s16 limit for every format here: 128*127*2 (Q8/Q4_0/Q5_0), 15*128*2 (Q4_K),
 * 63*128*2 (Q6_K, whose -32 offset is applied afterwards through the activation block sums).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "generation/kernels/cpu.h"
#include "generation/kernels/cpu_internal.h"
#include "proto/gguf.h"

/* Compiles the functions between VNNI_BEGIN and VNNI_END for AVX-512 VNNI as well (GCC and
 * clang spell it differently); they run only when cairn__has_vnni(). */
#define VNNI_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define VNNI_BEGIN                                                                               \
    VNNI_PRAGMA(clang attribute push(__attribute__((target("avx512vl,avx512vnni"))),            \
                                     apply_to = function))
#define VNNI_END VNNI_PRAGMA(clang attribute pop)
#else
#define VNNI_BEGIN VNNI_PRAGMA(GCC push_options) VNNI_PRAGMA(GCC target("avx512vl,avx512vnni"))
#define VNNI_END VNNI_PRAGMA(GCC pop_options)
#endif

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* 16 packed nibbles -> 32 bytes: low nibbles in bytes 0..15, high nibbles in 16..31. */
static inline __m256i nibbles(const uint8_t *q)
{
    __m128i raw = _mm_loadu_si128((const __m128i *)q);
    __m128i m4 = _mm_set1_epi8(0xF);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
}

/* 32 bits -> 32 bytes, byte j = 0xFF when bit j is set. */
static inline __m256i bits_to_bytes(uint32_t x)
{
    const __m256i pick = _mm256_setr_epi64x(0, 0x0101010101010101LL, 0x0202020202020202LL,
                                            0x0303030303030303LL);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), pick);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
}

/* ---- Tiled products over 32-element blocks (Q8_0, Q5_0, Q4_0, Q4_1) ------------------------ */

static inline size_t q8f_block_bytes(uint32_t type)
{
    return type == CAIRN_GGUF_Q8_0   ? sizeof(cairn__blk_q8_0)
           : type == CAIRN_GGUF_Q5_0 ? sizeof(cairn__blk_q5_0)
           : type == CAIRN_GGUF_Q4_1 ? sizeof(cairn__blk_q4_1)
                                     : sizeof(cairn__blk_q4_0);
}

/* Bytes of one token's share of a q8f activation tile: its blocks, their scales, and for Q4_1
 * their Q8_1 sums. */
static inline size_t q8f_tok_bytes(uint32_t type)
{
    return sizeof(cairn__act_q8) + sizeof(float) + (type == CAIRN_GGUF_Q4_1 ? sizeof(float) : 0);
}

/* One weight block as 32 signed bytes, and its scale (and, for Q4_1, its offset *m; Q4_1's
 * values are the unsigned nibbles 0..15, the offset is added through the activations' sums). */
static inline __attribute__((always_inline)) __m256i q8f_decode(uint32_t type, const uint8_t *blk,
                                                                float *d, float *m)
{
    if (type == CAIRN_GGUF_Q4_1) {
        const cairn__blk_q4_1 *w = (const cairn__blk_q4_1 *)blk;
        *d = h2f(w->d);
        *m = h2f(w->m);
        return nibbles(w->qs);
    }
    if (type == CAIRN_GGUF_Q8_0) {
        const cairn__blk_q8_0 *w = (const cairn__blk_q8_0 *)blk;
        *d = h2f(w->d);
        return _mm256_loadu_si256((const __m256i *)w->qs);
    }
    if (type == CAIRN_GGUF_Q5_0) {
        const cairn__blk_q5_0 *w = (const cairn__blk_q5_0 *)blk;
        uint32_t qh;
        memcpy(&qh, w->qh, 4);
        *d = h2f(w->d);
        __m256i hi = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
        return _mm256_sub_epi8(_mm256_or_si256(nibbles(w->qs), hi), _mm256_set1_epi8(16));
    }
    const cairn__blk_q4_0 *w = (const cairn__blk_q4_0 *)blk;
    *d = h2f(w->d);
    return _mm256_sub_epi8(nibbles(w->qs), _mm256_set1_epi8(8));
}

#define QSFX avx2
#define QU8 0
#define QDOT(c, u, s)                                                                            \
    _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
#include "generation/kernels/cpu_gemm_q8.inc"
#undef QSFX
#undef QU8
#undef QDOT

/* The same kernel with AVX-512 VNNI's u8 x s8 -> s32 dot (vpdpbusd on 256-bit registers): one
 * instruction for maddubs + madd + add, and tiles of y + 128 (no sign moves). Called only when
 * cairn__has_vnni(). */
VNNI_BEGIN

#define QSFX vnni
#define QU8 1
#define QDOT(c, u, s) _mm256_dpbusd_epi32(c, u, s)
#include "generation/kernels/cpu_gemm_q8.inc"
#undef QSFX
#undef QU8
#undef QDOT

VNNI_END

/* ---- Q8_0 with 16 rows in the lanes of a 512-bit vector (cpu_internal.h) ----------------- */

void cairn__repack_r16(const uint8_t *w, size_t row_bytes, int64_t nb, int64_t rows, uint8_t *out)
{
    for (int64_t g = 0; g < rows / CAIRN__R16_ROWS; g++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *o = out + (size_t)(g * nb + b) * CAIRN__R16_BLOCK;
            for (int l = 0; l < CAIRN__R16_ROWS; l++) {
                const cairn__blk_q8_0 *blk =
                    (const cairn__blk_q8_0 *)(w + (size_t)(g * CAIRN__R16_ROWS + l) * row_bytes) +
                    b;
                for (int j = 0; j < 8; j++) { /* 4 bytes at a time, each plus 128 */
                    uint32_t v;
                    memcpy(&v, blk->qs + 4 * j, 4);
                    v ^= 0x80808080u;
                    memcpy(o + j * 64 + l * 4, &v, 4);
                }
                memcpy(o + 8 * 64 + 2 * l, &blk->d, 2);
            }
        }
}

void cairn__act_r16_from_q8(const cairn__act_q8 *a, int64_t nb, cairn__act_r16 *out)
{
    for (int64_t b = 0; b < nb; b++) {
        memcpy(out[b].qs, a[b].qs, 32);
        out[b].d = a[b].d;
        for (int j = 0; j < 8; j++)
            out[b].start[j] = -128 * (a[b].qs[4 * j] + a[b].qs[4 * j + 1] + a[b].qs[4 * j + 2] +
                                      a[b].qs[4 * j + 3]);
    }
}

#if defined(__clang__)
#define Z512_BEGIN                                                                                 \
    VNNI_PRAGMA(clang attribute push(                                                              \
        __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))), apply_to = function))
#define Z512_END VNNI_PRAGMA(clang attribute pop)
#else
#define Z512_BEGIN                                                                                 \
    VNNI_PRAGMA(GCC push_options) VNNI_PRAGMA(GCC target("avx512f,avx512bw,avx512vl,avx512vnni"))
#define Z512_END VNNI_PRAGMA(GCC pop_options)
#endif

Z512_BEGIN

/* One group of 16 rows against T (1 or 2) tokens. Per row the float work is the one-row
 * kernel's: lane j of its 8 accumulators sums d_w d_a times the integer sum of bytes 4j..4j+3,
 * block after block (fma), and the 8 are added as hsum8 adds them. */
static inline __attribute__((always_inline)) void
r16_group(const int T, int64_t nb, const uint8_t *wg, const cairn__act_r16 *a0,
          const cairn__act_r16 *a1, float *y0, float *y1)
{
    __m512 acc[2][8];
#pragma GCC unroll 2
    for (int u = 0; u < T; u++)
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            acc[u][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *wb = wg + (size_t)b * CAIRN__R16_BLOCK;
        __m512i w[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            w[j] = _mm512_loadu_si512((const void *)(wb + 64 * j));
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wb + 8 * 64)));
#pragma GCC unroll 2
        for (int u = 0; u < T; u++) {
            const cairn__act_r16 *ab = (u ? a1 : a0) + b;
            const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(ab->d));
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                __m512i y4 = _mm512_broadcastd_epi32(_mm_loadu_si32(ab->qs + 4 * j));
                __m512i p = _mm512_dpbusd_epi32(_mm512_set1_epi32(ab->start[j]), w[j], y4);
                acc[u][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), dd, acc[u][j]);
            }
        }
    }
#pragma GCC unroll 2
    for (int u = 0; u < T; u++) {
        __m512 *c = acc[u];
        __m512 lo = _mm512_add_ps(_mm512_add_ps(c[0], c[4]), _mm512_add_ps(c[2], c[6]));
        __m512 hi = _mm512_add_ps(_mm512_add_ps(c[1], c[5]), _mm512_add_ps(c[3], c[7]));
        _mm512_storeu_ps(u ? y1 : y0, _mm512_add_ps(lo, hi));
    }
}

void cairn__gemm_r16_vnni(int64_t nb, const uint8_t *w, int n_groups, const cairn__act_r16 *a,
                          int nt, float *y, size_t y_stride)
{
    const size_t gbytes = (size_t)nb * CAIRN__R16_BLOCK;
    for (int g = 0; g < n_groups; g++) {
        const uint8_t *wg = w + (size_t)g * gbytes;
        float *yg = y + (size_t)g * CAIRN__R16_ROWS;
        int t = 0;
        for (; t + 2 <= nt; t += 2)
            r16_group(2, nb, wg, a + (size_t)t * nb, a + (size_t)(t + 1) * nb,
                      yg + (size_t)t * y_stride, yg + (size_t)(t + 1) * y_stride);
        if (t < nt) r16_group(1, nb, wg, a + (size_t)t * nb, NULL, yg + (size_t)t * y_stride, NULL);
    }
}

Z512_END

float cairn__dot_q8_0_avx2(int64_t nb, const void *w, const void *a)
{
    return cairn__dot_q8f_avx2(CAIRN_GGUF_Q8_0, nb, w, a);
}

float cairn__dot_q4_0_avx2(int64_t nb, const void *w, const void *a)
{
    return cairn__dot_q8f_avx2(CAIRN_GGUF_Q4_0, nb, w, a);
}

float cairn__dot_q4_1_avx2(int64_t nb, const void *w, const void *a)
{
    return cairn__dot_q8f_avx2(CAIRN_GGUF_Q4_1, nb, w, a);
}

float cairn__dot_q5_0_avx2(int64_t nb, const void *w, const void *a)
{
    return cairn__dot_q8f_avx2(CAIRN_GGUF_Q5_0, nb, w, a);
}

/* ---- Tiled products over K-quant blocks (Q4_K, Q6_K) against Q8_K rows -------------------- */

static inline int hsum8_i32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

#define KSFX avx2
#define KMADD(acc, p16, s16) _mm256_add_epi32(acc, _mm256_madd_epi16(p16, s16))
#define KDOT(c, u, s)                                                                            \
    _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
#include "generation/kernels/cpu_gemm_kq.inc"
#undef KSFX
#undef KMADD
#undef KDOT

/* With AVX-512 VNNI the scale multiply and the accumulation fuse into vpdpwssd. */
VNNI_BEGIN
#define KSFX vnni
#define KMADD(acc, p16, s16) _mm256_dpwssd_epi32(acc, p16, s16)
#define KDOT(c, u, s) _mm256_dpbusd_epi32(c, u, s)
#include "generation/kernels/cpu_gemm_kq.inc"
#undef KSFX
#undef KMADD
#undef KDOT
VNNI_END

float cairn__dot_q4_k_avx2(int64_t nb, const void *w, const void *a)
{
    return cairn__dot_kq_avx2(CAIRN_GGUF_Q4_K, nb, w, a);
}

float cairn__dot_q6_k_avx2(int64_t nb, const void *w, const void *a)
{
    return cairn__dot_kq_avx2(CAIRN_GGUF_Q6_K, nb, w, a);
}

float cairn__dot_f16_avx2(int64_t n, const uint16_t *w, const float *x)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i)));
        __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8)));
        acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc1);
    }
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++)
        s += h2f(w[i]) * x[i];
    return s;
}

float cairn__dot_f32_avx2(int64_t n, const float *w, const float *x)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
    }
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++)
        s += w[i] * x[i];
    return s;
}

void cairn__quant_q8_avx2(const float *x, int64_t nb, cairn__act_q8 *y)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * 32;
        __m256 v[4];
        __m256 mx = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        float amax = _mm_cvtss_f32(m);
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = h2f(_cvtss_sh(amax / 127.0f, _MM_FROUND_TO_NEAREST_INT));
        __m256 vid = _mm256_set1_ps(id);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], vid));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], vid));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], vid));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], vid));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)y[b].qs, _mm256_permutevar8x32_epi32(p, perm));
    }
}

void cairn__f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

void cairn__round_f16_avx2(float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i),
                                                                _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; i++)
        x[i] = h2f(_cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT));
}

/* a = gelu_f16(a) * b through the table (see cairn_cpu_gelu_f16_table): the F16 pattern of
 * each input indexes it; |x| >= 10 passes x (or 0) through, as the portable version does. */
void cairn__gated_gelu_avx2(float *a, const float *b, int64_t n, const float *table)
{
    const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(a + i);
        __m256i idx = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
        __m256 g = _mm256_i32gather_ps(table, idx, 4);
        g = _mm256_blendv_ps(g, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LE_OQ));
        g = _mm256_blendv_ps(g, x, _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
        _mm256_storeu_ps(a + i, _mm256_mul_ps(g, _mm256_loadu_ps(b + i)));
    }
    for (; i < n; i++) {
        float x = a[i];
        float g = x <= -10.0f ? 0.0f
                  : x >= 10.0f ? x
                               : table[_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)];
        a[i] = g * b[i];
    }
}

/*
 * q.k for nq <= 4 query heads that share one KV head. 16 lanes (lane i % 16 takes element i):
 * each K row is converted once for all heads, two 8-lane fma chains per head. 64 lanes: four
 * 16-lane accumulators per head, folded (0 + 2) + (1 + 3), the rest past a multiple of 64 added
 * in double. The 16 lanes are summed as an AVX-512 reduction. As cpu.c's dot_f16_lanes.
 * head_dim must be a multiple of 16.
 */
static inline __attribute__((always_inline)) void
qk_heads(const int NQ, int64_t n, const uint16_t *k, const float *q, size_t q_stride, float *out)
{
    __m256 a0[4], a1[4];
#pragma GCC unroll 4
    for (int g = 0; g < NQ; g++)
        a0[g] = a1[g] = _mm256_setzero_ps();
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i)));
        __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i + 8)));
#pragma GCC unroll 4
        for (int g = 0; g < NQ; g++) {
            const float *qg = q + (size_t)g * q_stride;
            a0[g] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(qg + i), a0[g]);
            a1[g] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(qg + i + 8), a1[g]);
        }
    }
#pragma GCC unroll 4
    for (int g = 0; g < NQ; g++)
        out[g] = hsum8(_mm256_add_ps(a0[g], a1[g]));
}

static float qk64(int64_t n, const uint16_t *k, const float *q)
{
    __m256 a[8];
    for (int j = 0; j < 8; j++)
        a[j] = _mm256_setzero_ps();
    int64_t main = n & ~(int64_t)63, i = 0;
    for (; i < main; i += 64)
        for (int j = 0; j < 8; j++) /* accumulator j / 2, half j % 2 */
            a[j] = _mm256_fmadd_ps(
                _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i + 8 * j))),
                _mm256_loadu_ps(q + i + 8 * j), a[j]);
    __m256 lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
    __m256 hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
    double s = hsum8(_mm256_add_ps(lo, hi));
    for (; i < n; i++)
        s += (double)(h2f(k[i]) * q[i]);
    return (float)s;
}

void cairn__dot_f16_heads_avx2(int64_t n, const uint16_t *k, const float *q, int nq,
                               size_t q_stride, int lanes, float *out)
{
    if (lanes == 64) {
        for (int g = 0; g < nq; g++)
            out[g] = qk64(n, k, q + (size_t)g * q_stride);
        return;
    }
    switch (nq) {
    case 4: qk_heads(4, n, k, q, q_stride, out); break;
    case 3: qk_heads(3, n, k, q, q_stride, out); break;
    case 2: qk_heads(2, n, k, q, q_stride, out); break;
    default: qk_heads(1, n, k, q, q_stride, out); break;
    }
}

/*
 * out_g = sum_p probs_g[p] v_p over the positions lo..hi in `lanes` (16 or 64) position lanes
 * (lane p % lanes, an fma chain in ascending p), folded and summed as cpu.c's lanes_sum.
 * Lane-major: per 16 output columns each lane's chain runs in registers (2 ymm per head) and
 * lands in lanebuf (lanes x 4 x 16 floats). head_dim must be a multiple of 16.
 */
static inline __attribute__((always_inline)) void
pv_lanes(const int NQ, const cairn_cpu_paged *kv, size_t hoff, int lo, int hi,
         const float *probs, size_t p_stride, int head_dim, int lanes, float *lanebuf,
         float *out, size_t o_stride)
{
    const int bt = kv->block_tokens;
    for (int c = 0; c < head_dim; c += 16) {
        for (int j = 0; j < lanes; j++) {
            __m256 a0[4], a1[4];
#pragma GCC unroll 4
            for (int g = 0; g < NQ; g++)
                a0[g] = a1[g] = _mm256_setzero_ps();
            int p = lo + ((j - lo % lanes) + lanes) % lanes;
            /* a probability of 0 adds an exact 0 (the sums are never -0), so every position
             * is multiplied in: no branches */
            for (; p <= hi; p += lanes) {
                const uint16_t *v = kv->v + (size_t)kv->blocks[p / bt] * kv->block_stride +
                                    (size_t)(p % bt) * kv->row_stride + hoff + c;
                __m256 v0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)v));
                __m256 v1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 8)));
#pragma GCC unroll 4
                for (int g = 0; g < NQ; g++) {
                    __m256 va = _mm256_broadcast_ss(probs + (size_t)g * p_stride + (p - lo));
                    a0[g] = _mm256_fmadd_ps(v0, va, a0[g]);
                    a1[g] = _mm256_fmadd_ps(v1, va, a1[g]);
                }
            }
#pragma GCC unroll 4
            for (int g = 0; g < NQ; g++) {
                _mm256_storeu_ps(lanebuf + ((size_t)j * 4 + g) * 16, a0[g]);
                _mm256_storeu_ps(lanebuf + ((size_t)j * 4 + g) * 16 + 8, a1[g]);
            }
        }
#pragma GCC unroll 4
        for (int g = 0; g < NQ; g++)
            for (int h = 0; h < 16; h += 8) {
                __m256 x[16], t[8], u[4];
                for (int l = 0; l < 16; l++) {
#define LB(lane) _mm256_loadu_ps(lanebuf + ((size_t)(lane) * 4 + g) * 16 + h)
                    x[l] = LB(l);
                    if (lanes == 64)
                        x[l] = _mm256_add_ps(_mm256_add_ps(x[l], LB(l + 32)),
                                             _mm256_add_ps(LB(l + 16), LB(l + 48)));
#undef LB
                }
                for (int l = 0; l < 8; l++)
                    t[l] = _mm256_add_ps(x[l], x[l + 8]);
                for (int l = 0; l < 4; l++)
                    u[l] = _mm256_add_ps(t[l], t[l + 4]);
                _mm256_storeu_ps(out + (size_t)g * o_stride + c + h,
                                 _mm256_add_ps(_mm256_add_ps(u[0], u[2]),
                                               _mm256_add_ps(u[1], u[3])));
            }
    }
}

void cairn__pv_avx2(const cairn_cpu_paged *kv, size_t hoff, int lo, int hi, const float *probs,
                    size_t p_stride, int nq, int head_dim, int lanes, float *lanebuf, float *out,
                    size_t o_stride)
{
    switch (nq) {
    case 4:
        pv_lanes(4, kv, hoff, lo, hi, probs, p_stride, head_dim, lanes, lanebuf, out, o_stride);
        break;
    case 3:
        pv_lanes(3, kv, hoff, lo, hi, probs, p_stride, head_dim, lanes, lanebuf, out, o_stride);
        break;
    case 2:
        pv_lanes(2, kv, hoff, lo, hi, probs, p_stride, head_dim, lanes, lanebuf, out, o_stride);
        break;
    default:
        pv_lanes(1, kv, hoff, lo, hi, probs, p_stride, head_dim, lanes, lanebuf, out, o_stride);
        break;
    }
}

/* ggml's exp for 8 values (cpu.c expf_ggml, operation for operation); 2^n is applied in two
 * exact-then-rounding multiplies, which rounds as ldexpf does. */
static inline __m256 expf_ggml8(__m256 x)
{
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r), r);
    __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    __m256 u = _mm256_mul_ps(b, b);
    __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
            _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f)));
    /* j 2^n as (j 2^n1) 2^n2 with n1 = n clamped to [-100, 127]: the first product is exact,
     * the second rounds once (n2 in [-92, 65]), so it rounds as ldexpf */
    __m256 big = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), n), _mm256_set1_ps(192.0f),
                               _CMP_GT_OQ);
    __m256 nc = _mm256_min_ps(_mm256_max_ps(n, _mm256_set1_ps(-192.0f)), _mm256_set1_ps(192.0f));
    __m256 n1 = _mm256_min_ps(_mm256_max_ps(nc, _mm256_set1_ps(-100.0f)), _mm256_set1_ps(127.0f));
    __m256i e1 =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n1), _mm256_set1_epi32(127)), 23);
    __m256i e2 = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_sub_ps(nc, n1)), _mm256_set1_epi32(127)), 23);
    __m256 res = _mm256_mul_ps(_mm256_mul_ps(j, _mm256_castsi256_ps(e1)), _mm256_castsi256_ps(e2));
    __m256 alt =
        _mm256_and_ps(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_GT_OQ), _mm256_set1_ps(INFINITY));
    return _mm256_blendv_ps(res, alt, big);
}

/* x[i] = expf_ggml(x[i] - mx) for i < n; returns nothing, the sums are cpu.c's. */
void cairn__exp_shift_avx2(float *x, int n, float mx)
{
    __m256 vm = _mm256_set1_ps(mx);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, expf_ggml8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)));
    if (i < n) {
        float t[8] = {0};
        memcpy(t, x + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(t, expf_ggml8(_mm256_sub_ps(_mm256_loadu_ps(t), vm)));
        memcpy(x + i, t, sizeof(float) * (size_t)(n - i));
    }
}

/* RoPE over NeoX pairs (i, i + half), 8 pairs at a time, rounded as cpu.c's rotate:
 * x0' = fma(x0, c, -(x1 s)), x1' = fma(x0, s, x1 c). half must be a multiple of 8. */
void cairn__rope_neox_avx2(float *x, int n_heads, int head_dim, const float *cs)
{
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i += 8) {
            __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(cs + half + i);
            __m256 a = _mm256_loadu_ps(xh + i), b = _mm256_loadu_ps(xh + half + i);
            _mm256_storeu_ps(xh + i, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)));
            _mm256_storeu_ps(xh + half + i, _mm256_fmadd_ps(a, s, _mm256_mul_ps(b, c)));
        }
    }
}

/* Q8_K activation blocks, bit-identical to the portable quant_q8k (cpu.c): the scale comes from
 * the first value of largest magnitude, values round half to even and are capped at 127. */
void cairn__quant_q8k_avx2(const float *x, int64_t nb, cairn__act_q8k *y)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * 256;
        __m256 mx = _mm256_setzero_ps();
        for (int k = 0; k < 32; k++)
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * k)));
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        float amax = _mm_cvtss_f32(m);
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        float max = 0.0f;
        __m256 va = _mm256_set1_ps(amax);
        for (int k = 0; k < 32; k++) {
            __m256 ax = _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * k));
            int mask = _mm256_movemask_ps(_mm256_cmp_ps(ax, va, _CMP_EQ_OQ));
            if (mask) {
                max = xb[8 * k + __builtin_ctz((unsigned)mask)];
                break;
            }
        }
        float iscale = -127.0f / max;
        __m256 vs = _mm256_set1_ps(iscale);
        const __m256i cap = _mm256_set1_epi32(127);
        for (int g = 0; g < 8; g++) { /* 32 values per step: 2 bsums groups */
            __m256i v[4];
            for (int k = 0; k < 4; k++)
                v[k] = _mm256_min_epi32(
                    _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(xb + 32 * g + 8 * k))),
                    cap);
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]),
                                           _mm256_packs_epi32(v[2], v[3]));
            _mm256_storeu_si256((__m256i *)(y[b].qs + 32 * g),
                                _mm256_permutevar8x32_epi32(p, perm));
            y[b].bsums[2 * g] = (int16_t)hsum8_i32(_mm256_add_epi32(v[0], v[1]));
            y[b].bsums[2 * g + 1] = (int16_t)hsum8_i32(_mm256_add_epi32(v[2], v[3]));
        }
        y[b].d = 1.0f / iscale;
        y[b].kind = 0;
    }
}

/* sum of (double)(x[i] * x[i]): float squares, double sums in 8 lanes. */
double cairn__sumsq_avx2(const float *x, int64_t n)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 sq = _mm256_mul_ps(v, v);
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
    }
    __m256d a = _mm256_add_pd(a0, a1);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    double s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    for (; i < n; i++)
        s += (double)(x[i] * x[i]);
    return s;
}
