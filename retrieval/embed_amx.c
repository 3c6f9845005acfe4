/*
 * retrieval/embed_amx.c — the embedder's linear layers in BF16 on AMX tiles (see
 * embed_amx.h). Built with AMX and AVX-512 BF16 flags; called only after cairn__amx_enable().
 *
 * C = A W^T, A [m x k] activations, W [n x k] weights, both rounded to BF16 (W once, at open;
 * A per product), products accumulated in FP32 by TDPBF16PS. Tiles: C is computed in blocks
 * of 32 rows x 32 columns, four accumulator tiles (16 x 16 FP32) fed per chunk of 32 columns
 * of k by two A tiles (16 rows x 32 BF16) and two W tiles (16 column pairs x 16 rows, the
 * pair-interleaved layout TDPBF16PS takes, packed at open). Eight tile registers in all.
 */
#include "retrieval/embed_amx.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

bool cairn__amx_enable(void)
{
    if (!__builtin_cpu_supports("amx-bf16") || !__builtin_cpu_supports("amx-tile") ||
        !__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512f"))
        return false;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

/* FP32 to BF16, round to nearest even (finite inputs). */
static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

int cairn__amx_pack(cairn__amx_mat *m, const float *w, int n, int k)
{
    memset(m, 0, sizeof *m);
    if (n <= 0 || k <= 0 || n % 32 || k % 32) return -1;
    m->w = aligned_alloc(64, (size_t)n * (size_t)k * 2);
    if (!m->w) return -1;
    m->n = n, m->k = k;
    const int chunks = k / 32;
    for (int j = 0; j < n; j++)
        for (int c = 0; c < k; c++) {
            /* block j / 16, chunk c / 32: row (pair) p = (c % 32) / 2, column j % 16, half c % 2 */
            size_t tile = ((size_t)(j / 16) * chunks + (size_t)(c / 32)) * 512;
            size_t at = tile + (size_t)((c % 32) / 2) * 32 + (size_t)(j % 16) * 2 + (size_t)(c % 2);
            m->w[at] = to_bf16(w[(size_t)j * k + c]);
        }
    return 0;
}

void cairn__amx_free(cairn__amx_mat *m)
{
    free(m->w);
    memset(m, 0, sizeof *m);
}

void cairn__amx_convert_rows(const float *a, int r0, int r1, int k, uint16_t *ab)
{
    for (int i = r0; i < r1; i++) {
        const float *row = a + (size_t)i * k;
        uint16_t *o = ab + (size_t)i * k;
        int c = 0;
        for (; c + 32 <= k; c += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + c + 16),
                                             _mm512_loadu_ps(row + c));
            _mm512_storeu_si512((void *)(o + c), (__m512i)v);
        }
        for (; c < k; c++)
            o[c] = to_bf16(row[c]);
    }
}

typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Tiles 0-3: C (16 x 16 FP32); 4, 5: A (16 x 32 BF16); 6, 7: W (16 x 16 pairs). A constant in
 * memory: GCC 12 drops the stores into a local configuration block before LDTILECFG (the
 * builtin is not seen to read it), which leaves the tiles unconfigured. */
static const tile_config tile_cfg = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

static void configure(void)
{
    _tile_loadconfig(&tile_cfg);
}

/* Accumulators 0-3 = the 32 rows of A (a0: rows 0-15, a1: rows 16-31, stride sa bytes) times
 * the 32 columns of packed W at w0 (columns 0-15) and w1 (16-31), over chunks of 32 of k:
 * tile 0 rows 0-15 x cols 0-15, 1 rows 0-15 x 16-31, 2 rows 16-31 x 0-15, 3 rows 16-31 x
 * 16-31. Tiles configured. */
static inline void tiles_product(const uint16_t *a0, const uint16_t *a1, size_t sa,
                                 const uint16_t *w0, const uint16_t *w1, int chunks)
{
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int q = 0; q < chunks; q++) {
        _tile_loadd(4, a0 + q * 32, sa);
        _tile_loadd(5, a1 + q * 32, sa);
        _tile_loadd(6, w0 + (size_t)q * 512, 64);
        _tile_loadd(7, w1 + (size_t)q * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
}

void cairn__amx_gemm_rows(const uint16_t *ab, int r0, int r1, const cairn__amx_mat *w, float *c)
{
    configure();
    const int k = w->k, n = w->n, chunks = k / 32;
    const size_t lda = (size_t)k * 2; /* bytes */
    float out[16 * 16];
    for (int r = r0; r < r1; r += 32) {
        const uint16_t *a0 = ab + (size_t)r * k, *a1 = a0 + (size_t)16 * k;
        for (int j = 0; j < n; j += 32) {
            const uint16_t *w0 = w->w + (size_t)(j / 16) * chunks * 512;
            const uint16_t *w1 = w0 + (size_t)chunks * 512;
            tiles_product(a0, a1, lda, w0, w1, chunks);
            /* Store each accumulator; rows past r1 stay out of C. */
            for (int t = 0; t < 4; t++) {
                const int rr = r + (t >> 1) * 16, cc = j + (t & 1) * 16;
                if (rr >= r1) continue;
                switch (t) {
                case 0: _tile_stored(0, out, 64); break;
                case 1: _tile_stored(1, out, 64); break;
                case 2: _tile_stored(2, out, 64); break;
                default: _tile_stored(3, out, 64); break;
                }
                const int rows = r1 - rr < 16 ? r1 - rr : 16;
                for (int i = 0; i < rows; i++)
                    memcpy(c + (size_t)(rr + i) * n + cc, out + i * 16, 16 * sizeof(float));
            }
        }
    }
    _tile_release();
}

/* ---- The whole-layer path: tile products, attention on tiles, fused epilogues ---------- */

void cairn__amx_tiles_on(void)
{
    configure();
}

void cairn__amx_tiles_off(void)
{
    _tile_release();
}

/* C [32 x w->n] (row stride ldc floats) = A W^T for the 32 BF16 rows of A at a (row stride lda
 * elements). All 32 rows are read and written: the caller pads. Tiles configured. */
void cairn__amx_gemm32(const uint16_t *a, int lda, const cairn__amx_mat *w, float *c, int ldc)
{
    const int k = w->k, n = w->n, chunks = k / 32;
    const size_t sa = (size_t)lda * 2, sc = (size_t)ldc * 4;
    const uint16_t *a0 = a, *a1 = a + (size_t)16 * lda;
    for (int j = 0; j < n; j += 32) {
        const uint16_t *w0 = w->w + (size_t)(j / 16) * chunks * 512;
        const uint16_t *w1 = w0 + (size_t)chunks * 512;
        tiles_product(a0, a1, sa, w0, w1, chunks);
        _tile_stored(0, c + j, sc);
        _tile_stored(1, c + j + 16, sc);
        _tile_stored(2, c + (size_t)16 * ldc + j, sc);
        _tile_stored(3, c + (size_t)16 * ldc + j + 16, sc);
    }
}

/* 16 floats to BF16, round to nearest even. */
static inline __m256i bf16x16(__m512 v)
{
    return (__m256i)_mm512_cvtneps_pbh(v);
}

void cairn__amx_epi_bias_bf16(const float *c, int ldc, int rows, int n, const float *bias,
                              int n_scaled, float scale, uint16_t *dst, int ldd)
{
    for (int i = 0; i < rows; i++) {
        const float *cr = c + (size_t)i * ldc;
        uint16_t *o = dst + (size_t)i * ldd;
        for (int j = 0; j < n; j += 16) {
            __m512 v = _mm512_add_ps(_mm512_loadu_ps(cr + j), _mm512_loadu_ps(bias + j));
            if (j < n_scaled) v = _mm512_mul_ps(v, _mm512_set1_ps(scale));
            _mm256_storeu_si256((__m256i *)(o + j), bf16x16(v));
        }
    }
}

void cairn__amx_epi_qkv_heads(const float *c, int ldc, int rows, int H, const float *bias,
                              float scale, uint16_t *dst, size_t head_stride)
{
    const __m512 sc = _mm512_set1_ps(scale);
    for (int i = 0; i < rows; i++) {
        const float *cr = c + (size_t)i * ldc;
        for (int h = 0; h < H / 32; h++) {
            uint16_t *o = dst + (size_t)h * head_stride + (size_t)i * 96;
            for (int part = 0; part < 3; part++) {
                const int col = part * H + h * 32;
                for (int j = 0; j < 32; j += 16) {
                    __m512 v = _mm512_add_ps(_mm512_loadu_ps(cr + col + j),
                                             _mm512_loadu_ps(bias + col + j));
                    if (part == 0) v = _mm512_mul_ps(v, sc);
                    _mm256_storeu_si256((__m256i *)(o + part * 32 + j), bf16x16(v));
                }
            }
        }
    }
}

/* erf(x) as a rational function of odd and even polynomials on x clamped to [-4, 4], where
 * erf is +-1 to single precision (the approximation Eigen and XLA use for float erf;
 * |error| below 2e-7 over the range, against libm's erff). */
static inline __m512 erf512(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-4.0f)), _mm512_set1_ps(4.0f));
    const __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(-2.72614225801306e-10f),
                               _mm512_set1_ps(2.77068142495902e-08f));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-2.10102402082508e-06f));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-5.69250639462346e-05f));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-7.34990630326855e-04f));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-2.95459980854025e-03f));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-1.60960333262415e-02f));
    p = _mm512_mul_ps(x, p);
    __m512 q = _mm512_fmadd_ps(x2, _mm512_set1_ps(-1.45660718464996e-05f),
                               _mm512_set1_ps(-2.13374055278905e-04f));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(-1.68282697438203e-03f));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(-7.37332916720468e-03f));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(-1.42647390514189e-02f));
    return _mm512_div_ps(p, q);
}

void cairn__amx_erf16(const float *x, float *y)
{
    _mm512_storeu_ps(y, erf512(_mm512_loadu_ps(x)));
}

void cairn__amx_epi_gelu_bf16(const float *c, int ldc, int rows, int n, const float *bias,
                              uint16_t *dst, int ldd)
{
    const __m512 half = _mm512_set1_ps(0.5f), rs2 = _mm512_set1_ps(0.70710678118654752f);
    for (int i = 0; i < rows; i++) {
        const float *cr = c + (size_t)i * ldc;
        uint16_t *o = dst + (size_t)i * ldd;
        for (int j = 0; j < n; j += 16) {
            __m512 v = _mm512_add_ps(_mm512_loadu_ps(cr + j), _mm512_loadu_ps(bias + j));
            __m512 hv = _mm512_mul_ps(half, v);
            __m512 g = _mm512_fmadd_ps(hv, erf512(_mm512_mul_ps(v, rs2)), hv);
            _mm256_storeu_si256((__m256i *)(o + j), bf16x16(g));
        }
    }
}

void cairn__amx_epi_add_ln(const float *c, int ldc, int rows, int n, const float *bias,
                           const float *g, const float *b, float eps, float *x, uint16_t *xb)
{
    for (int i = 0; i < rows; i++) {
        const float *cr = c + (size_t)i * ldc;
        float *xr = x + (size_t)i * n;
        __m512 s = _mm512_setzero_ps();
        for (int j = 0; j < n; j += 16) {
            __m512 v =
                _mm512_add_ps(_mm512_loadu_ps(xr + j),
                              _mm512_add_ps(_mm512_loadu_ps(cr + j), _mm512_loadu_ps(bias + j)));
            _mm512_storeu_ps(xr + j, v);
            s = _mm512_add_ps(s, v);
        }
        const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(s) / (float)n);
        __m512 ss = _mm512_setzero_ps();
        for (int j = 0; j < n; j += 16) {
            __m512 d = _mm512_sub_ps(_mm512_loadu_ps(xr + j), mean);
            ss = _mm512_fmadd_ps(d, d, ss);
        }
        const __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(ss) / (float)n + eps));
        uint16_t *o = xb + (size_t)i * n;
        for (int j = 0; j < n; j += 16) {
            __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xr + j), mean), inv);
            __m512 v = _mm512_fmadd_ps(d, _mm512_loadu_ps(g + j), _mm512_loadu_ps(b + j));
            _mm512_storeu_ps(xr + j, v);
            _mm256_storeu_si256((__m256i *)(o + j), bf16x16(v));
        }
    }
}

/* e^x for x <= 0 down to -87 (Cephes' expf: x = n ln 2 + r, degree-5 polynomial in r, then
 * scaled by 2^n); below that 0. A few ulp. */
static inline __m512 exp512(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3365478515625f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500E-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507E-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073E-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894E-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459E-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201E-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

size_t cairn__amx_attn_scratch(int max_seq)
{
    size_t t = ((size_t)max_seq + 31) / 32 * 32;
    /* K packed [t x 32], V packed [t x 32] (BF16), scores [16 x t] F32, P [16 x t] BF16,
     * O [16 x 32] F32 */
    return t * 32 * 2 * 2 + 16 * t * 4 + 16 * t * 2 + 16 * 32 * 4 + 64;
}

/*
 * One head (hd 32) of one sequence of T tokens on tiles. q, k, v: the sequence's first rows of
 * Q (already scaled by 1/sqrt(hd)), K and V in BF16, row stride ld elements; q rows up to the
 * next multiple of 16 must be readable (their results are dropped). Output rows (BF16) to dst,
 * stride ldd. Scores and softmax in FP32; the probabilities are rounded to BF16 for the
 * product with V, and normalised after it.
 *   S = Q K^T:  A = 16 query rows x 32 dims; B = K packed per 16 keys as 16 dim pairs x 16
 *               keys x 2 (TDPBF16PS's pair-interleaved layout), one product per 16 x 16 block;
 *   O = P V:    A = 16 rows x 32 keys of P; B = V packed per 32 keys as 16 key pairs x 16
 *               dims x 2, two tiles (dims 0-15, 16-31); keys past T have P = 0 and V = 0.
 * Tiles 0-1 scores, 2-3 output, 4 Q, 5 P, 6-7 K or V. Tiles configured.
 */
void cairn__amx_attn_head32(const uint16_t *q, const uint16_t *k, const uint16_t *v, int ld, int T,
                            void *scratch, uint16_t *dst, int ldd)
{
    const int t16 = (T + 15) / 16 * 16, t32 = (T + 31) / 32 * 32;
    uint8_t *base = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    uint32_t *kp = (uint32_t *)base;                  /* [t32 / 16][16 pairs][16 keys] */
    uint32_t *vp = kp + (size_t)t32 * 16;             /* [t32 / 32][2][16 key pairs][16 dims] */
    float *s = (float *)(vp + (size_t)t32 * 16);      /* [16][t32] */
    uint16_t *p = (uint16_t *)(s + (size_t)16 * t32); /* [16][t32] */
    float *o = (float *)(p + (size_t)16 * t32);       /* [16][32] */
    /* K: word (pair d, key j) = K[j][2d], K[j][2d + 1]: a 16 x 16 transpose of 32-bit words
     * per block of 16 keys. Keys past T are zero. */
    for (int j0 = 0; j0 < t32; j0 += 16) {
        uint32_t *blk = kp + (size_t)j0 * 16;
        for (int j = 0; j < 16; j++) {
            if (j0 + j < T) {
                const uint32_t *kr = (const uint32_t *)(k + (size_t)(j0 + j) * ld);
                for (int d = 0; d < 16; d++)
                    blk[d * 16 + j] = kr[d];
            } else {
                for (int d = 0; d < 16; d++)
                    blk[d * 16 + j] = 0;
            }
        }
    }
    /* V: word (key pair j, dim d) = V[2j][d], V[2j + 1][d]. */
    for (int j0 = 0; j0 < t32; j0 += 32) {
        uint16_t *blk = (uint16_t *)(vp + (size_t)j0 * 16);
        for (int j = 0; j < 32; j++) {
            uint16_t *row = blk + (size_t)(j / 2) * 32 + (j & 1);
            if (j0 + j < T) {
                const uint16_t *vr = v + (size_t)(j0 + j) * ld;
                for (int d = 0; d < 16; d++)
                    row[d * 2] = vr[d];
                for (int d = 0; d < 16; d++)
                    row[512 + d * 2] = vr[16 + d];
            } else {
                for (int d = 0; d < 16; d++)
                    row[d * 2] = row[512 + d * 2] = 0;
            }
        }
    }
    const size_t sq = (size_t)ld * 2, ss = (size_t)t32 * 4, sp = (size_t)t32 * 2;
    for (int i0 = 0; i0 < T; i0 += 16) {
        _tile_loadd(4, q + (size_t)i0 * ld, sq);
        for (int j0 = 0; j0 < t16; j0 += 32) {
            _tile_zero(0);
            _tile_loadd(6, kp + (size_t)j0 * 16, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_stored(0, s + j0, ss);
            if (j0 + 16 < t16) {
                _tile_zero(1);
                _tile_loadd(7, kp + (size_t)(j0 + 16) * 16, 64);
                _tile_dpbf16ps(1, 4, 7);
                _tile_stored(1, s + j0 + 16, ss);
            }
        }
        /* softmax over the T keys of each row; P past T is zero */
        const int rows = T - i0 < 16 ? T - i0 : 16;
        float inv[16];
        for (int i = 0; i < rows; i++) {
            float *sr = s + (size_t)i * t32;
            uint16_t *pr = p + (size_t)i * t32;
            __m512 mx = _mm512_set1_ps(-INFINITY);
            int j = 0;
            for (; j + 16 <= T; j += 16)
                mx = _mm512_max_ps(mx, _mm512_loadu_ps(sr + j));
            const __mmask16 tail = (__mmask16)((1u << (T - j)) - 1);
            if (j < T)
                mx = _mm512_max_ps(mx,
                                   _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail, sr + j));
            const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
            __m512 sum = _mm512_setzero_ps();
            for (j = 0; j + 16 <= T; j += 16) {
                __m512 ev = exp512(_mm512_sub_ps(_mm512_loadu_ps(sr + j), m));
                sum = _mm512_add_ps(sum, ev);
                _mm256_storeu_si256((__m256i *)(pr + j), bf16x16(ev));
            }
            if (j < T) {
                __m512 ev = _mm512_maskz_mov_ps(
                    tail, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, sr + j), m)));
                sum = _mm512_add_ps(sum, ev);
                _mm256_storeu_si256((__m256i *)(pr + j), bf16x16(ev));
                j += 16;
            }
            for (; j < t32; j += 16)
                _mm256_storeu_si256((__m256i *)(pr + j), _mm256_setzero_si256());
            inv[i] = 1.0f / _mm512_reduce_add_ps(sum);
        }
        for (int i = rows; i < 16; i++)
            memset(p + (size_t)i * t32, 0, sp);
        _tile_zero(2);
        _tile_zero(3);
        for (int j0 = 0; j0 < t32; j0 += 32) {
            const uint32_t *blk = vp + (size_t)j0 * 16;
            _tile_loadd(5, p + j0, sp);
            _tile_loadd(6, blk, 64);
            _tile_loadd(7, blk + 256, 64);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(2, o, 128);
        _tile_stored(3, o + 16, 128);
        for (int i = 0; i < rows; i++) {
            const __m512 sc = _mm512_set1_ps(inv[i]);
            uint16_t *dr = dst + (size_t)(i0 + i) * ldd;
            _mm256_storeu_si256((__m256i *)dr,
                                bf16x16(_mm512_mul_ps(_mm512_loadu_ps(o + i * 32), sc)));
            _mm256_storeu_si256((__m256i *)(dr + 16),
                                bf16x16(_mm512_mul_ps(_mm512_loadu_ps(o + i * 32 + 16), sc)));
        }
    }
}
