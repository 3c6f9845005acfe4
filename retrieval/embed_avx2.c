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

/*
 * softmax(Q K^T * scale) V for one head (columns hoff .. hoff + hd of the Q, K, V thirds of the
 * qkv rows at base, each row H3 = 3H floats, biases bq, bq + H, bq + 2H) over T tokens; row i
 * of the result goes to dst + i * dst_stride. hd must be a multiple of 8 and at most 128.
 * scratch: K^T [hd x T], V [T x hd], p [T + 8].
 */
void cairn__embed_attn_head_avx2(const float *base, int H3, int T, int hd, int H, int hoff,
                                 const float *bq, float scale, float *scratch, float *dst,
                                 int dst_stride)
{
    const float *bk = bq + H, *bv = bq + 2 * H;
    float *kt = scratch, *vb = kt + (size_t)hd * T, *p = vb + (size_t)T * hd;
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
    float q[128];
    for (int i = 0; i < T; i++) {
        const float *qrow = base + (size_t)i * H3 + hoff;
        for (int d = 0; d < hd; d++)
            q[d] = (qrow[d] + bq[d]) * scale;
        int j = 0;
        /* four independent FMA chains: one chain is bound by FMA latency, not throughput */
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
        float mx = p[0];
        for (j = 1; j < T; j++)
            mx = p[j] > mx ? p[j] : mx;
        __m256 vmx = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
        for (j = 0; j + 8 <= T; j += 8) {
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
        const float inv = 1.0f / sum;
        __m256 acc[16];
        for (int k = 0; k < nv; k++)
            acc[k] = _mm256_setzero_ps();
        for (j = 0; j < T; j++) {
            __m256 w = _mm256_set1_ps(p[j] * inv);
            const float *vr = vb + (size_t)j * hd;
            for (int k = 0; k < nv; k++)
                acc[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr + 8 * k), acc[k]);
        }
        float *o = dst + (size_t)i * dst_stride;
        for (int k = 0; k < nv; k++)
            _mm256_storeu_ps(o + 8 * k, acc[k]);
    }
}
