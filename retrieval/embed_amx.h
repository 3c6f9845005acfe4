/*
 * retrieval/embed_amx.h — BF16 linear layers for the embedder on AMX tiles
 * (retrieval/embed_amx.c). Internal to retrieval/embed.c, which calls these only after
 * cairn__amx_enable() succeeded.
 */
#ifndef CAIRN_RETRIEVAL_EMBED_AMX_H
#define CAIRN_RETRIEVAL_EMBED_AMX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* W [n x k] in BF16, packed for the tile products: for each block of 16 rows of W and each
 * chunk of 32 of its columns, 1 KiB: 16 column pairs x 16 rows x 2 values. */
typedef struct cairn__amx_mat {
    uint16_t *w;
    int n, k;
} cairn__amx_mat;

/* Whether the CPU has AMX-BF16 and AVX-512 BF16 and the kernel lets this process use the tile
 * registers (arch_prctl ARCH_REQ_XCOMP_PERM). Process-wide; call before any other function. */
bool cairn__amx_enable(void);

/* Packs W (n % 32 == 0, k % 32 == 0). Returns 0, or -1 (bad shape, out of memory). */
int cairn__amx_pack(cairn__amx_mat *m, const float *w, int n, int k);
void cairn__amx_free(cairn__amx_mat *m);

/* Rows [r0, r1) of A [. x k] to BF16 into ab [. x k] (rounded to nearest even). */
void cairn__amx_convert_rows(const float *a, int r0, int r1, int k, uint16_t *ab);

/* Rows [r0, r1) of C [. x w->n] = A W^T from A's BF16 rows ab, FP32 accumulation. r0 is a
 * multiple of 32; rows of ab from r1 up to the next multiple of 32 are read (their values do
 * not matter) but not written to C. */
void cairn__amx_gemm_rows(const uint16_t *ab, int r0, int r1, const cairn__amx_mat *w, float *c);

/* ---- The whole-layer path (embed.c's forward_tiles) ------------------------------------------
 * A layer there runs in two parallel steps: attention per (sequence, head), and everything
 * row-local per block of 32 token rows: output projection, add & LayerNorm, FFN up, GELU, FFN
 * down, add & LayerNorm, and the next layer's QKV projection. Activations between products stay
 * BF16 (what the tiles take); the residual stream x and LayerNorm stay FP32. */

/* Loads the tile configuration (all eight tiles 16 rows x 64 bytes) for this thread / drops it.
 * Every function below needs it loaded. */
void cairn__amx_tiles_on(void);
void cairn__amx_tiles_off(void);

/* C [32 x w->n] (row stride ldc floats) = A W^T for the 32 BF16 rows at a (row stride lda
 * elements); all 32 rows are read and written (the caller pads). */
void cairn__amx_gemm32(const uint16_t *a, int lda, const cairn__amx_mat *w, float *c, int ldc);

/* dst = BF16(c + bias) over rows x n (n % 16 == 0), columns below n_scaled also times scale. */
void cairn__amx_epi_bias_bf16(const float *c, int ldc, int rows, int n, const float *bias,
                              int n_scaled, float scale, uint16_t *dst, int ldd);

/* The QKV projection's epilogue: for each of rows rows and each head h (H / 32 heads of 32),
 * dst + h * head_stride + row * 96 gets BF16 of that head's Q (plus bias, times scale), K and V
 * (plus bias), 32 values each: a head's rows lie contiguous for attention. */
void cairn__amx_epi_qkv_heads(const float *c, int ldc, int rows, int H, const float *bias,
                              float scale, uint16_t *dst, size_t head_stride);

/* dst = BF16(GELU(c + bias)), GELU's erf form (erf to 2e-7 absolute). */
void cairn__amx_epi_gelu_bf16(const float *c, int ldc, int rows, int n, const float *bias,
                              uint16_t *dst, int ldd);

/* x = LayerNorm(x + c + bias) * g + b per row (x and xb row stride n); xb = BF16(x). */
void cairn__amx_epi_add_ln(const float *c, int ldc, int rows, int n, const float *bias,
                           const float *g, const float *b, float eps, float *x, uint16_t *xb);

/* 16 values of the erf approximation above (for tests). */
void cairn__amx_erf16(const float *x, float *y);

/* Bytes of scratch cairn__amx_attn_head32 needs for sequences of up to max_seq tokens. */
size_t cairn__amx_attn_scratch(int max_seq);

/* softmax(Q K^T) V for one head of 32 dims over one sequence of T tokens (see embed_amx.c). */
void cairn__amx_attn_head32(const uint16_t *q, const uint16_t *k, const uint16_t *v, int ld, int T,
                            void *scratch, uint16_t *dst, int ldd);

#endif
