/*
 * retrieval/embed_avx2.c — AVX2/FMA kernels for the embedder: one attention head of one
 * sequence, and bias + GELU over a row. Compiled with -mavx2 -mfma (retrieval/CMakeLists.txt);
 * embed.c calls them only when the CPU reports both features, otherwise its portable loops.
 * Results agree with the portable path to float rounding (exp and erf approximations below
 * are accurate to a few ulp and 1.5e-7 absolute respectively).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

void cairn__embed_attn_head_avx2(const float *base, int H3, int T, int hd, int H, int hoff,
                                 const float *bq, float scale, float *scratch, float *dst,
                                 int dst_stride);
void cairn__embed_gelu_avx2(float *f, const float *b, int n);

/* e^x for x in [-88, 88] (Cephes' expf: range reduction by ln 2, degree-5 polynomial). */
static inline __m256 exp256(__m256 x)
{
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365478515625f));
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
    return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
}

/* erf(x), Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7). */
static inline __m256 erf256(__m256 x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 s = _mm256_and_ps(x, sign), a = _mm256_andnot_ps(sign, x);
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                             _mm256_fmadd_ps(a, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    p = _mm256_mul_ps(p, t);
    __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
    __m256 r = _mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.0f));
    return _mm256_or_ps(r, s);
}

void cairn__embed_gelu_avx2(float *f, const float *b, int n)
{
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f),
                 rs2 = _mm256_set1_ps(0.70710678118654752f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_add_ps(_mm256_loadu_ps(f + i), _mm256_loadu_ps(b + i));
        __m256 g = _mm256_mul_ps(_mm256_mul_ps(half, v),
                                 _mm256_add_ps(one, erf256(_mm256_mul_ps(v, rs2))));
        _mm256_storeu_ps(f + i, g);
    }
    for (; i < n; i++) {
        float v = f[i] + b[i];
        f[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

/* p[j] = q . K^T[:, j] for j0 <= j < T (K^T rows of stride T): four independent FMA chains
 * per 32 keys, since one chain would be bound by FMA latency, not throughput. */
static inline void scores1(const float *q, const float *kt, int j0, int T, int hd, float *p)
{
    int j = j0;
    for (; j + 32 <= T; j += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int d = 0; d < hd; d++) {
            const __m256 qd = _mm256_set1_ps(q[d]);
            const float *kr = kt + (size_t)d * T + j;
            a0 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kr), a0);
            a1 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kr + 8), a1);
            a2 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kr + 16), a2);
            a3 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kr + 24), a3);
        }
        _mm256_storeu_ps(p + j, a0);
        _mm256_storeu_ps(p + j + 8, a1);
        _mm256_storeu_ps(p + j + 16, a2);
        _mm256_storeu_ps(p + j + 24, a3);
    }
    for (; j + 8 <= T; j += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int d = 0; d < hd; d++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(q[d]), _mm256_loadu_ps(kt + (size_t)d * T + j),
                                  acc);
        _mm256_storeu_ps(p + j, acc);
    }
    for (; j < T; j++) {
        float s = 0.0f;
        for (int d = 0; d < hd; d++)
            s += q[d] * kt[(size_t)d * T + j];
        p[j] = s;
    }
}

/* scores1 for two query rows at once: each K load feeds both rows, and there are twice the
 * independent chains. */
static inline void scores2(const float *q0, const float *q1, const float *kt, int T, int hd,
                           float *p0, float *p1)
{
    int j = 0;
    for (; j + 32 <= T; j += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int d = 0; d < hd; d++) {
            const __m256 x = _mm256_set1_ps(q0[d]), y = _mm256_set1_ps(q1[d]);
            const float *kr = kt + (size_t)d * T + j;
            const __m256 k0 = _mm256_loadu_ps(kr), k1 = _mm256_loadu_ps(kr + 8),
                         k2 = _mm256_loadu_ps(kr + 16), k3 = _mm256_loadu_ps(kr + 24);
            a0 = _mm256_fmadd_ps(x, k0, a0);
            a1 = _mm256_fmadd_ps(x, k1, a1);
            a2 = _mm256_fmadd_ps(x, k2, a2);
            a3 = _mm256_fmadd_ps(x, k3, a3);
            b0 = _mm256_fmadd_ps(y, k0, b0);
            b1 = _mm256_fmadd_ps(y, k1, b1);
            b2 = _mm256_fmadd_ps(y, k2, b2);
            b3 = _mm256_fmadd_ps(y, k3, b3);
        }
        _mm256_storeu_ps(p0 + j, a0);
        _mm256_storeu_ps(p0 + j + 8, a1);
        _mm256_storeu_ps(p0 + j + 16, a2);
        _mm256_storeu_ps(p0 + j + 24, a3);
        _mm256_storeu_ps(p1 + j, b0);
        _mm256_storeu_ps(p1 + j + 8, b1);
        _mm256_storeu_ps(p1 + j + 16, b2);
        _mm256_storeu_ps(p1 + j + 24, b3);
    }
    for (; j + 8 <= T; j += 8) {
        __m256 a = _mm256_setzero_ps(), b = a;
        for (int d = 0; d < hd; d++) {
            const __m256 k = _mm256_loadu_ps(kt + (size_t)d * T + j);
            a = _mm256_fmadd_ps(_mm256_set1_ps(q0[d]), k, a);
            b = _mm256_fmadd_ps(_mm256_set1_ps(q1[d]), k, b);
        }
        _mm256_storeu_ps(p0 + j, a);
        _mm256_storeu_ps(p1 + j, b);
    }
    if (j < T) {
        scores1(q0, kt, j, T, hd, p0);
        scores1(q1, kt, j, T, hd, p1);
    }
}

/* p[j] = exp(p[j] - max p) for j < T; returns 1 / their sum. */
static inline float softmax_exp(float *p, int T)
{
    float mx = p[0];
    for (int j = 1; j < T; j++)
        mx = p[j] > mx ? p[j] : mx;
    __m256 vmx = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= T; j += 8) {
        __m256 ev = exp256(_mm256_sub_ps(_mm256_loadu_ps(p + j), vmx));
        _mm256_storeu_ps(p + j, ev);
        vsum = _mm256_add_ps(vsum, ev);
    }
    float sum8[8];
    _mm256_storeu_ps(sum8, vsum);
    float sum = sum8[0] + sum8[1] + sum8[2] + sum8[3] + sum8[4] + sum8[5] + sum8[6] + sum8[7];
    for (; j < T; j++) {
        p[j] = expf(p[j] - mx);
        sum += p[j];
    }
    return 1.0f / sum;
}

/* o = sum_j p[j] * inv * V[j] for one row; nv = hd / 8 <= 16. */
static inline void pv1(const float *p, float inv, const float *vb, int T, int hd, float *o)
{
    const int nv = hd / 8;
    __m256 acc[16];
    for (int k = 0; k < nv; k++)
        acc[k] = _mm256_setzero_ps();
    for (int j = 0; j < T; j++) {
        __m256 w = _mm256_set1_ps(p[j] * inv);
        const float *vr = vb + (size_t)j * hd;
        for (int k = 0; k < nv; k++)
            acc[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr + 8 * k), acc[k]);
    }
    for (int k = 0; k < nv; k++)
        _mm256_storeu_ps(o + 8 * k, acc[k]);
}

/* pv1 for two rows with hd == 32 (all-MiniLM's head size): eight chains, V loads shared. */
static inline void pv2_32(const float *p0, float inv0, const float *p1, float inv1,
                          const float *vb, int T, float *o0, float *o1)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0,
           b3 = a0;
    for (int j = 0; j < T; j++) {
        const __m256 x = _mm256_set1_ps(p0[j] * inv0), y = _mm256_set1_ps(p1[j] * inv1);
        const float *vr = vb + (size_t)j * 32;
        const __m256 v0 = _mm256_loadu_ps(vr), v1 = _mm256_loadu_ps(vr + 8),
                     v2 = _mm256_loadu_ps(vr + 16), v3 = _mm256_loadu_ps(vr + 24);
        a0 = _mm256_fmadd_ps(x, v0, a0);
        a1 = _mm256_fmadd_ps(x, v1, a1);
        a2 = _mm256_fmadd_ps(x, v2, a2);
        a3 = _mm256_fmadd_ps(x, v3, a3);
        b0 = _mm256_fmadd_ps(y, v0, b0);
        b1 = _mm256_fmadd_ps(y, v1, b1);
        b2 = _mm256_fmadd_ps(y, v2, b2);
        b3 = _mm256_fmadd_ps(y, v3, b3);
    }
    _mm256_storeu_ps(o0, a0);
    _mm256_storeu_ps(o0 + 8, a1);
    _mm256_storeu_ps(o0 + 16, a2);
    _mm256_storeu_ps(o0 + 24, a3);
    _mm256_storeu_ps(o1, b0);
    _mm256_storeu_ps(o1 + 8, b1);
    _mm256_storeu_ps(o1 + 16, b2);
    _mm256_storeu_ps(o1 + 24, b3);
}

/*
 * softmax(Q K^T * scale) V for one head (columns hoff .. hoff + hd of the Q, K, V thirds of the
 * qkv rows at base, each row H3 = 3H floats, biases bq, bq + H, bq + 2H) over T tokens; row i
 * of the result goes to dst + i * dst_stride. hd must be a multiple of 8 and at most 128.
 * scratch: K^T [hd x T], V [T x hd], two probability rows [T + 8] each. Query rows go two at a
 * time when hd is 32 (the arithmetic per row is the same as one at a time).
 */
void cairn__embed_attn_head_avx2(const float *base, int H3, int T, int hd, int H, int hoff,
                                 const float *bq, float scale, float *scratch, float *dst,
                                 int dst_stride)
{
    const float *bk = bq + H, *bv = bq + 2 * H;
    float *kt = scratch, *vb = kt + (size_t)hd * T, *p0 = vb + (size_t)T * hd, *p1 = p0 + T + 8;
    const int nv = hd / 8;
    for (int j = 0; j < T; j++) {
        const float *row = base + (size_t)j * H3 + hoff;
        for (int d = 0; d < hd; d++)
            kt[(size_t)d * T + j] = row[H + d] + bk[d];
        for (int k = 0; k < nv; k++)
            _mm256_storeu_ps(
                vb + (size_t)j * hd + 8 * k,
                _mm256_add_ps(_mm256_loadu_ps(row + 2 * H + 8 * k), _mm256_loadu_ps(bv + 8 * k)));
    }
    float q0[128], q1[128];
    int i = 0;
    if (hd == 32) {
        for (; i + 2 <= T; i += 2) {
            const float *r0 = base + (size_t)i * H3 + hoff, *r1 = r0 + H3;
            for (int d = 0; d < hd; d++) {
                q0[d] = (r0[d] + bq[d]) * scale;
                q1[d] = (r1[d] + bq[d]) * scale;
            }
            scores2(q0, q1, kt, T, hd, p0, p1);
            float inv0 = softmax_exp(p0, T), inv1 = softmax_exp(p1, T);
            pv2_32(p0, inv0, p1, inv1, vb, T, dst + (size_t)i * dst_stride,
                   dst + (size_t)(i + 1) * dst_stride);
        }
    }
    for (; i < T; i++) {
        const float *qrow = base + (size_t)i * H3 + hoff;
        for (int d = 0; d < hd; d++)
            q0[d] = (qrow[d] + bq[d]) * scale;
        scores1(q0, kt, 0, T, hd, p0);
        float inv = softmax_exp(p0, T);
        pv1(p0, inv, vb, T, hd, dst + (size_t)i * dst_stride);
    }
}
