/*
 * generation/kernels/cpu_internal.h — block layouts and the AVX2 entry points shared by
 * cpu.c and cpu_avx2.c. Internal to generation/kernels.
 */
#ifndef CAIRN_GENERATION_KERNELS_CPU_INTERNAL_H
#define CAIRN_GENERATION_KERNELS_CPU_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/gguf.h"

/* Weight blocks, as GGUF stores them (ggml's layouts). */
typedef struct { uint16_t d; int8_t qs[32]; } cairn__blk_q8_0;                   /* 34 B */
typedef struct { uint16_t d; uint8_t qs[16]; } cairn__blk_q4_0;                  /* 18 B */
typedef struct { uint16_t d, m; uint8_t qs[16]; } cairn__blk_q4_1;               /* 20 B */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } cairn__blk_q5_0;   /* 22 B */
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[128];
} cairn__blk_q4_k; /* 144 B */
typedef struct {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
} cairn__blk_q6_k; /* 210 B */

/* Activation blocks (ours, never stored): 8-bit values and a float scale. */
typedef struct { float d; int8_t qs[32]; } cairn__act_q8;                        /* 36 B */
/* Q4_1 weights multiply ggml's Q8_1 activations: the Q8 block plus s = d * sum(qs), where d is
 * the unrounded amax / 127 and s is rounded to F16 (its m * s term adds the weights' offset).
 * A row in the plain layout is nb cairn__act_q8 blocks followed by the nb values of s; a q8f
 * tile (below) keeps them after its scales, CAIRN__Q8F_TILE per block. */
float cairn__q8_1_sum(const float *x, const cairn__act_q8 *blk);
/* kind: the token's CAIRN_CPU_ROW_* flags (generation/kernels/cpu.h), which pick the order in
 * which Q4_K and Q6_K products sum (llama.cpp's for such a token). Set for every block. */
typedef struct {
    float d;
    int8_t qs[256];
    int16_t bsums[16];
    int32_t kind;
} cairn__act_q8k; /* 296 B */

_Static_assert(sizeof(cairn__blk_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(cairn__blk_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(cairn__blk_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(cairn__blk_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(cairn__blk_q4_k) == 144, "q4_k layout");
_Static_assert(sizeof(cairn__blk_q6_k) == 210, "q6_k layout");
_Static_assert(sizeof(cairn__act_q8k) == 296, "q8_k layout");

/* Q4_K's 6-bit sub-block scales and mins (8 of each) from its 12 packed bytes. */
static inline void cairn__q4k_scales(const uint8_t *q, uint8_t sc[8], uint8_t mn[8])
{
    for (int j = 0; j < 4; j++) {
        sc[j] = q[j] & 63;
        mn[j] = q[j + 4] & 63;
    }
    for (int j = 4; j < 8; j++) {
        sc[j] = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        mn[j] = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

float cairn__dot_q8_0_avx2(int64_t nb, const void *w, const void *a);
float cairn__dot_q4_0_avx2(int64_t nb, const void *w, const void *a);
float cairn__dot_q4_1_avx2(int64_t nb, const void *w, const void *a);
float cairn__dot_q5_0_avx2(int64_t nb, const void *w, const void *a);
float cairn__dot_q4_k_avx2(int64_t nb, const void *w, const void *a);
float cairn__dot_q6_k_avx2(int64_t nb, const void *w, const void *a);
float cairn__dot_f16_avx2(int64_t n, const uint16_t *w, const float *x);
float cairn__dot_f32_avx2(int64_t n, const float *w, const float *x);
/*
 * Tiled products for the batched path: y[t * y_stride + r] = dot(weight row r, activation row
 * t) for r < nr, t < nt, where weight row r starts at w + r * w_stride; nb blocks per row.
 * The activations come in token tiles (CAIRN__Q8F_TILE tokens for q8f, CAIRN__KQ_TILE for kq;
 * the last tile may be partly unused): tile k starts at a + k * TILE * nb * (activation block
 * bytes, + 4 bytes a block for q8f) and holds block b of its token j at index b * TILE + j, so
 * that one pointer reaches a block of every token of the tile; a q8f tile then holds its
 * tokens' scales, TILE floats per block (unused tokens' 0), so that the scale products d_w d_a
 * of a block take one multiply for the whole tile; a Q4_1 tile then holds its tokens' Q8_1 sums
 * s the same way. cairn__gemm_q8f_vnni's tiles (but Q4_1's, whose weights are unsigned) hold
 * each quantized value plus 128 as an unsigned byte (y ^ 0x80). q8f: Q8_0, Q5_0, Q4_0, Q4_1;
 * kq: Q4_K, Q6_K; the vnni variants need cairn__has_vnni(). Each result is bit-identical to
 * cairn__dot_*_avx2 of the same row and activation.
 */
#define CAIRN__Q8F_TILE 8
#define CAIRN__KQ_TILE 4
/* A q8f weight block decoded to signed bytes, and the q8f kernels' decode buffer (36 KiB: a
 * group of rows stays in L1 while the token tiles pass). */
typedef struct { int8_t x[32]; float d; } cairn__q8f_dec;
#define CAIRN__Q8F_DEC_BLOCKS 1024
/* Weight rows the VNNI q8f kernel takes at once against a full tile of pre-decoded rows. */
#define CAIRN__Q8F_ROWS 3
/* Only in cpu_avx2.c: a K-quant weight block decoded for the kq kernels (its 8 x 32 values as
 * bytes, its 8 scale vectors, the mins (Q4_K) or 16 scales (Q6_K) as int16, its float scales),
 * and the size of their decode buffer (72 KiB, L2; longer rows decode as they go). */
#ifdef __AVX2__
#include <immintrin.h>
typedef struct {
    __m256i q[8], s[8], x;
    float d, dmin;
} cairn__kq_dec;
#define CAIRN__KQ_DEC_BLOCKS 128
/* Eight weight rows of one K-quant block for the 8-row kernels: q[i] holds value bytes
 * 4i..4i+3 of each row (row r in 32-bit lane r), sc the int32 scale of each 32-value (Q4_K) or
 * 16-value (Q6_K) group, mp int16 pairs per row (Q4_K: the mins of sub-blocks 2p, 2p+1; Q6_K:
 * the scales of groups 2p, 2p+1), and the rows' float scales. */
typedef struct {
    __m256i q[64], sc[16], mp[8];
    __m256 d, dmin;
} cairn__kq8_dec;
#define CAIRN__KQ8_DEC_BLOCKS 16
#endif
/*
 * Q8_0 rows repacked 16 to a group, one row in each 32-bit lane of a 512-bit vector (for the
 * output projection, whose 262k rows a decode step multiplies by a few tokens): for block b of
 * group g, at (g * nb + b) * CAIRN__R16_BLOCK bytes, 8 vectors of 64 bytes (vector j holds
 * bytes 4j..4j+3 of each row's block, plus 128, as unsigned bytes), then the 16 rows' fp16
 * scales. One vpdpbusd then advances a 4-byte group of 16 rows, and no horizontal sums
 * remain. Activations are per token: nb cairn__act_r16 blocks (the Q8 block, and -128 times
 * the sum of each 4-byte group, where the unsigned weights' sums start).
 */
#define CAIRN__R16_ROWS  16
#define CAIRN__R16_BLOCK (8 * 64 + 16 * 2)
typedef struct {
    int8_t qs[32];
    float d;
    int32_t start[8];
} cairn__act_r16; /* 68 B */
void cairn__repack_r16(const uint8_t *w, size_t row_bytes, int64_t nb, int64_t rows, uint8_t *out);
void cairn__act_r16_from_q8(const cairn__act_q8 *a, int64_t nb, cairn__act_r16 *out);
/* y[t * y_stride + 16 g + l] = row 16 g + l against token t, for g < n_groups, t < nt; a holds
 * nt tokens of nb blocks each. Bit-identical to cairn__dot_q8_0_avx2. Needs cairn__has_vnni(). */
void cairn__gemm_r16_vnni(int64_t nb, const uint8_t *w, int n_groups, const cairn__act_r16 *a,
                          int nt, float *y, size_t y_stride);
void cairn__gemm_q8f_avx2(uint32_t type, int64_t nb, const uint8_t *w, size_t w_stride, int nr,
                          const uint8_t *a, int nt, float *y, size_t y_stride);
void cairn__gemm_q8f_vnni(uint32_t type, int64_t nb, const uint8_t *w, size_t w_stride, int nr,
                          const uint8_t *a, int nt, float *y, size_t y_stride);
void cairn__gemm_kq_avx2(uint32_t type, int64_t nb, const uint8_t *w, size_t w_stride, int nr,
                         const uint8_t *a, int nt, float *y, size_t y_stride);
void cairn__gemm_kq_vnni(uint32_t type, int64_t nb, const uint8_t *w, size_t w_stride, int nr,
                         const uint8_t *a, int nt, float *y, size_t y_stride);
/* Single rows in the plain layout (the vec_dot building blocks). */
float cairn__dot_q8f_avx2(uint32_t type, int64_t nb, const void *w, const void *a);
float cairn__dot_kq_avx2(uint32_t type, int64_t nb, const void *w, const void *a);
float cairn__dot_kq_vnni(uint32_t type, int64_t nb, const void *w, const void *a);
/* True when the CPU also has AVX-512 VNNI with 256-bit (VL) forms. */
bool cairn__has_vnni(void);
void cairn__quant_q8_avx2(const float *x, int64_t nb, cairn__act_q8 *y);
void cairn__f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n);
void cairn__round_f16_avx2(float *x, int64_t n);
double cairn__sumsq_avx2(const float *x, int64_t n);
void cairn__quant_q8k_avx2(const float *x, int64_t nb, cairn__act_q8k *y);
void cairn__rope_neox_avx2(float *x, int n_heads, int head_dim, const float *cs);
void cairn__gated_gelu_avx2(float *a, const float *b, int64_t n, const float *table);
/* q.k for nq <= 4 heads in `lanes` (16 or 64) lanes, as cpu.c's dot_f16_lanes. */
void cairn__dot_f16_heads_avx2(int64_t n, const uint16_t *k, const float *q, int nq,
                               size_t q_stride, int lanes, float *out);
/* The V side of attention in `lanes` (16 or 64) position lanes, as cpu.c's pv_acc and
 * pv_reduce; lanebuf holds lanes x 4 x 16 floats; head_dim a multiple of 16. */
struct cairn_cpu_paged;
void cairn__pv_avx2(const struct cairn_cpu_paged *kv, size_t hoff, int lo, int hi,
                    const float *probs, size_t p_stride, int nq, int head_dim, int lanes,
                    float *lanebuf, float *out, size_t o_stride);
/* x[i] = ggml's exp of x[i] - mx (cpu.c expf_ggml), bit for bit. */
void cairn__exp_shift_avx2(float *x, int n, float mx);
/* For tests: ggml's exp (portable), and attention with the implementation chosen. */
float cairn__expf_ggml(float x);
void cairn__attention_heads(const float *q, int n_q, int head_dim,
                            const struct cairn_cpu_paged *kv, int kv_head, int lo, int hi,
                            float scale, int kind, float *scores, float *out, bool use_avx2);

#endif
