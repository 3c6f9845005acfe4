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
#include <string.h>

#include "generation/kernels/cpu_internal.h"

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* Signed 32 x int8 dot product -> 8 int32 partial sums. */
static inline __m256i dot_s8(__m256i x, __m256i y)
{
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

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

float cairn__dot_q8_0_avx2(int64_t nb, const void *wv, const void *av)
{
    const cairn__blk_q8_0 *w = wv;
    const cairn__act_q8 *a = av;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i x = _mm256_loadu_si256((const __m256i *)w[b].qs);
        __m256i y = _mm256_loadu_si256((const __m256i *)a[b].qs);
        __m256 d = _mm256_set1_ps(h2f(w[b].d) * a[b].d);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_s8(x, y)), d, acc);
    }
    return hsum8(acc);
}

float cairn__dot_q4_0_avx2(int64_t nb, const void *wv, const void *av)
{
    const cairn__blk_q4_0 *w = wv;
    const cairn__act_q8 *a = av;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i x = _mm256_sub_epi8(nibbles(w[b].qs), _mm256_set1_epi8(8));
        __m256i y = _mm256_loadu_si256((const __m256i *)a[b].qs);
        __m256 d = _mm256_set1_ps(h2f(w[b].d) * a[b].d);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_s8(x, y)), d, acc);
    }
    return hsum8(acc);
}

float cairn__dot_q5_0_avx2(int64_t nb, const void *wv, const void *av)
{
    const cairn__blk_q5_0 *w = wv;
    const cairn__act_q8 *a = av;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        __m256i hi = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
        __m256i x = _mm256_sub_epi8(_mm256_or_si256(nibbles(w[b].qs), hi), _mm256_set1_epi8(16));
        __m256i y = _mm256_loadu_si256((const __m256i *)a[b].qs);
        __m256 d = _mm256_set1_ps(h2f(w[b].d) * a[b].d);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_s8(x, y)), d, acc);
    }
    return hsum8(acc);
}

float cairn__dot_q4_k_avx2(int64_t nb, const void *wv, const void *av)
{
    const cairn__blk_q4_k *w = wv;
    const cairn__act_q8k *a = av;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps();
    float mins = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t sc[8], mn[8];
        cairn__q4k_scales(w[b].scales, sc, mn);
        int summ = 0;
        for (int k = 0; k < 8; k++)
            summ += mn[k] * (a[b].bsums[2 * k] + a[b].bsums[2 * k + 1]);
        mins += a[b].d * h2f(w[b].dmin) * (float)summ;
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * j));
            __m256i lo = _mm256_and_si256(raw, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            __m256i y0 = _mm256_loadu_si256((const __m256i *)(a[b].qs + 64 * j));
            __m256i y1 = _mm256_loadu_si256((const __m256i *)(a[b].qs + 64 * j + 32));
            __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0),
                                           _mm256_set1_epi16(sc[2 * j]));
            __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1),
                                           _mm256_set1_epi16(sc[2 * j + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        __m256 d = _mm256_set1_ps(a[b].d * h2f(w[b].d));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), d, acc);
    }
    return hsum8(acc) - mins;
}

float cairn__dot_q6_k_avx2(int64_t nb, const void *wv, const void *av)
{
    const cairn__blk_q6_k *w = wv;
    const cairn__act_q8k *a = av;
    const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    float bias = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        float d = a[b].d * h2f(w[b].d);
        int bs = 0;
        for (int g = 0; g < 16; g++)
            bs += w[b].scales[g] * a[b].bsums[g];
        bias += d * 32.0f * (float)bs;
        __m256i sumi = _mm256_setzero_si256();
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = w[b].ql + 64 * half, *qhp = w[b].qh + 32 * half;
            const int8_t *sc = w[b].scales + 8 * half, *y = a[b].qs + 128 * half;
            __m256i qh = _mm256_loadu_si256((const __m256i *)qhp);
            __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
            q[1] = _mm256_or_si256(
                _mm256_and_si256(l1, m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
            q[2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
            q[3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
            for (int k = 0; k < 4; k++) {
                __m256i yk = _mm256_loadu_si256((const __m256i *)(y + 32 * k));
                __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]),
                                             _mm_set1_epi16(sc[2 * k]));
                __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], yk), s);
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(d), acc);
    }
    return hsum8(acc) - bias;
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

void cairn__axpy_f16_avx2(int64_t n, float a, const uint16_t *v, float *y)
{
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, vv, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++)
        y[i] += a * h2f(v[i]);
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
