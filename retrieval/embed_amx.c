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

/* Tiles 0-3: C (16 x 16 FP32); 4, 5: A (16 x 32 BF16); 6, 7: W (16 x 16 pairs). */
static void configure(void)
{
    tile_config tc;
    memset(&tc, 0, sizeof tc);
    tc.palette = 1;
    for (int t = 0; t < 8; t++) {
        tc.rows[t] = 16;
        tc.colsb[t] = 64;
    }
    _tile_loadconfig(&tc);
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
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int q = 0; q < chunks; q++) {
                _tile_loadd(4, a0 + q * 32, lda);
                _tile_loadd(5, a1 + q * 32, lda);
                _tile_loadd(6, w0 + (size_t)q * 512, 64);
                _tile_loadd(7, w1 + (size_t)q * 512, 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
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
