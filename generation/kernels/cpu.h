/*
 * generation/kernels/cpu.h — CPU compute kernels for the generation engine.
 *
 * Matrix products run straight from the GGUF weight blocks (F32, F16, BF16, Q4_0, Q4_1, Q5_0,
 * Q8_0, Q4_K, Q6_K); nothing is dequantized ahead of time. For the quantized types the
 * activations are quantized on the fly to 8 bits per block, as llama.cpp does: Q8 blocks of 32
 * for the 32-element weight formats (Q8_1 for Q4_1: the blocks and each one's d * sum, which
 * carries Q4_1's offsets) and 256-element blocks with 16-element partial sums for the
 * K-quants. The dot products then run in integer arithmetic (AVX2 maddubs), which is what makes
 * a decode step memory-bound instead of compute-bound, and it keeps our rounding close to
 * llama.cpp's, the reference we are checked against. Float weights use float dot products.
 *
 * Every kernel has a portable C version; AVX2/FMA/F16C versions (cpu_avx2.c) are picked at run
 * time when cairn_cpu_has_avx2() says the CPU has them, with AVX-512 VNNI forms of the integer
 * products where the CPU has that too. With several tokens, the matrix products decode each
 * weight block once for a tile of tokens (8 for the 32-element formats, 4 for the K-quants);
 * every tile width and instruction set gives the same bits, so a token's results never depend
 * on the batch it is in. Kernels allocate nothing: callers pass scratch sized with the *_bytes
 * helpers. All functions are thread-safe on disjoint outputs.
 */
#ifndef CAIRN_GENERATION_KERNELS_CPU_H
#define CAIRN_GENERATION_KERNELS_CPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/threadpool.h"
#include "proto/gguf.h"

/* True when the CPU runs AVX2, FMA and F16C (checked once by the compiler runtime). */
bool cairn_cpu_has_avx2(void);

/* True when the matrix kernels can multiply weights of this GGUF type. */
bool cairn_cpu_type_supported(uint32_t type);

/* A row-major weight matrix in GGUF storage: rows x cols, each row `row_bytes` of blocks. */
typedef struct cairn_cpu_mat {
    uint32_t type;
    int64_t rows;
    int64_t cols;
    size_t row_bytes;
    const void *data; /* borrowed; rows * row_bytes bytes */
    const void *r16;  /* NULL, or the rows repacked by cairn_cpu_mat_repack (borrowed) */
} cairn_cpu_mat;

/*
 * Describes the 2-D GGUF tensor t (dims[0] = cols, dims[1] = rows) as a matrix. Returns 0,
 * CAIRN_EUNSUPPORTED (a type the kernels cannot multiply) or CAIRN_EFORMAT (not 2-D, or a
 * row length that is not a whole number of blocks). The matrix borrows t's data.
 */
int cairn_cpu_mat_from_gguf(cairn_cpu_mat *m, const cairn_gguf_tensor *t, cairn_error *err);

/*
 * Repacks a Q8_0 matrix whose rows are a multiple of 16 into the layout of the 16-rows-in-lanes
 * kernel, on CPUs with AVX-512 VNNI: a decode step's product of the 262k-row output projection
 * with a few tokens then runs 1.3-1.6x faster (one vpdpbusd advances 16 rows; no horizontal sums),
 * with the same bits. Sets m->r16 and *owned (free it after the matrix's last use) when it
 * applies; otherwise leaves m as it is and sets *owned to NULL. The original rows stay in
 * use for everything else (the token embedding lookup). Returns 0 or CAIRN_ENOMEM.
 */
int cairn_cpu_mat_repack(cairn_cpu_mat *m, void **owned, cairn_error *err);

/* Bytes of activation scratch that cairn_cpu_matmul needs for n_tok rows against w. */
size_t cairn_cpu_matmul_scratch_bytes(const cairn_cpu_mat *w, int64_t n_tok);

/*
 * y[t * w->rows + r] = dot(row r of w, x[t * w->cols ...]) for t < n_tok, r < w->rows.
 * scratch holds cairn_cpu_matmul_scratch_bytes() bytes (64-byte aligned is best). Work is split
 * over the pool's threads in (row chunk x token block) tasks (pool may be NULL: runs on the
 * caller). x and y must not alias. Each y equals cairn_cpu_vec_dot of its row and token.
 */
void cairn_cpu_matmul(cairn_pool *pool, const cairn_cpu_mat *w, const float *x, int64_t n_tok,
                      float *y, void *scratch);

/* True when a and b multiply the same quantized activations (same cols and activation format),
 * so that cairn_cpu_matmul_n can quantize once for both. */
bool cairn_cpu_matmul_can_share(const cairn_cpu_mat *a, const cairn_cpu_mat *b);

/*
 * How llama.cpp's x86 build would have batched a token, as flags. Its rounding depends on it,
 * and we reproduce its rounding (the parity tests compare our logits and greedy tokens with it
 * bit for bit), so the kernels that it runs differently per batch shape take the flags per
 * token. 0 (SINGLE): a token alone in its batch (decode): ggml's vector dot products. BATCH:
 * a row of a batch of 2+ tokens: tinyBLAS for the F16 attention products. WIDE: a batch of
 * 8+ tokens: ggml's tiled K-quant kernel for Q6_K. TILE4: a row of a whole 4-row tile of its
 * batch: the repacked Q4_K kernel sums per sub-block pair. A token's results depend on its own
 * flags only, never on its neighbours in our batch.
 */
#define CAIRN_CPU_ROW_SINGLE 0
#define CAIRN_CPU_ROW_BATCH 1
#define CAIRN_CPU_ROW_TILE4 2
#define CAIRN_CPU_ROW_WIDE 4

/*
 * y[i] = w[i] x for n matrices of the same x (each y[i] as in cairn_cpu_matmul): when they can
 * share activations (q, k, v; gate, up) x is quantized once and all their rows go through the
 * pool in one pass; otherwise it runs the products one after another. scratch holds the
 * largest cairn_cpu_matmul_scratch_bytes() of them. Results equal cairn_cpu_matmul's.
 * kinds (may be NULL: all CAIRN_CPU_ROW_SINGLE) gives each token's CAIRN_CPU_ROW_* flags; only
 * Q4_K (TILE4) and Q6_K (WIDE) products depend on them.
 */
void cairn_cpu_matmul_n(cairn_pool *pool, const cairn_cpu_mat *const *w, int n, const float *x,
                        int64_t n_tok, float *const *y, void *scratch, const uint8_t *kinds);

/*
 * Single-row building blocks, exposed for tests and for callers that split work themselves.
 * act_bytes: size of one quantized activation row of `cols` for weights of `type`;
 * quantize_act: x[cols] -> act; vec_dot: one weight row against one quantized activation row.
 * use_avx2 picks the implementation (pass cairn_cpu_has_avx2() in production; false tests
 * the portable code).
 */
size_t cairn_cpu_act_bytes(uint32_t type, int64_t cols);
void cairn_cpu_quantize_act(uint32_t type, const float *x, int64_t cols, void *act, bool use_avx2);
float cairn_cpu_vec_dot(uint32_t type, int64_t cols, const void *wrow, const void *act,
                        bool use_avx2);

/* ---- Element-wise and normalisation ------------------------------------------------------- */

/* out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i] (w NULL: no weight). out may equal x. */
void cairn_cpu_rmsnorm(float *out, const float *x, const float *w, int n, float eps);

/*
 * Rotary position embedding in place over n_heads heads of head_dim (even) at position pos:
 * frequency theta_i = pos * freq_scale * base^(-2i/head_dim). neox = true rotates the pairs
 * (i, i + head_dim/2) (GPT-NeoX / Gemma / Qwen2 layout); false rotates (2i, 2i+1) (Llama as
 * stored by the GGUF converter).
 */
void cairn_cpu_rope(float *x, int n_heads, int head_dim, int pos, float base, float freq_scale,
                    bool neox);

/* cairn_cpu_rope in two steps, so that q and k of a token share one set of angles:
 * rope_angles fills cs[0..head_dim/2) with cos(theta_i) and cs[head_dim/2..head_dim) with
 * sin(theta_i); rope_apply rotates n_heads heads with them. Same results as cairn_cpu_rope. */
#define CAIRN_CPU_ROPE_MAX_DIM 1024
void cairn_cpu_rope_angles(int head_dim, int pos, float base, float freq_scale, float *cs);
void cairn_cpu_rope_apply(float *x, int n_heads, int head_dim, const float *cs, bool neox);

/* x = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the GELU approximation Gemma uses. */
void cairn_cpu_gelu_tanh(float *x, int n);
/* x = x / (1 + exp(-x)). */
void cairn_cpu_silu(float *x, int n);
/* a[i] = act(a[i]) * b[i] with act GELU-tanh (gelu true) or SiLU: the gated MLP's middle.
 * GELU is evaluated at half precision (F16 input and output), as ggml does. */
void cairn_cpu_gated(float *a, const float *b, int n, bool gelu);
/* Entries of a GELU table: one per F16 bit pattern. */
#define CAIRN_CPU_GELU_TABLE_SIZE 65536
/* Fills table[CAIRN_CPU_GELU_TABLE_SIZE] with GELU-tanh at half precision (the value ggml's
 * F16 table holds), for cairn_cpu_gated_gelu_table. */
void cairn_cpu_gelu_f16_table(float *table);
/* a[i] = gelu(a[i]) * b[i], equal to cairn_cpu_gated(a, b, n, true) but through the table
 * (a lookup instead of tanh per value). Thread-safe; the table is only read. */
void cairn_cpu_gated_gelu_table(float *a, const float *b, int n, const float *table);
/* Softmax in place over n values (n >= 1), max-subtracted. */
void cairn_cpu_softmax(float *x, int n);

/* ---- Attention over a paged KV cache -------------------------------------------------------- */

/*
 * Where one layer's K and V rows of one sequence live: key position p is in block
 * blocks[p / block_tokens] (a negative id marks a freed block), at row p % block_tokens.
 * K and V are F16; a row holds n_kv_heads * head_dim values.
 */
typedef struct cairn_cpu_paged {
    const uint16_t *k; /* this layer's K at block 0, row 0 */
    const uint16_t *v;
    size_t block_stride; /* elements from one block to the next */
    size_t row_stride;   /* elements from one token row to the next */
    const int32_t *blocks;
    int block_tokens;
} cairn_cpu_paged;

/*
 * Attention of one query head q[head_dim] over key positions [lo, hi] (inclusive) of kv
 * head kv_head: out[head_dim] = softmax(scale * q.k_p) . v_p. scores holds hi - lo + 1 floats.
 * The arithmetic is ggml's over an F16 cache without flash attention, as llama.cpp runs it for
 * a token with these CAIRN_CPU_ROW_* flags, cell p of its cache holding position p: the two
 * products sum in 16 lanes (tinyBLAS, BATCH) or 64 (ggml_vec_dot_f16, a token alone), exp is
 * ggml's, and the probabilities are rounded to F16 before they weigh V.
 * Callers that want q rounded like ggml's round it to F16 first (cairn_cpu_round_f16).
 * Every position in the range must be in a live block (the caller's window guarantees it).
 */
void cairn_cpu_attention(const float *q, int head_dim, const cairn_cpu_paged *kv, int kv_head,
                         int lo, int hi, float scale, int kind, float *scores, float *out);

/*
 * cairn_cpu_attention for n_q query heads that share KV head kv_head (grouped-query attention):
 * q and out hold n_q consecutive heads of head_dim; scores holds n_q * (hi - lo + 1) floats.
 * Each K and V row is read and converted once for all of them; the results equal n_q calls of
 * cairn_cpu_attention bit for bit.
 */
void cairn_cpu_attention_heads(const float *q, int n_q, int head_dim, const cairn_cpu_paged *kv,
                               int kv_head, int lo, int hi, float scale, int kind,
                               float *scores, float *out);

/* Rounds n values to the nearest F16 value, in place. */
void cairn_cpu_round_f16(float *x, int n);

/* F32 -> F16 conversion of n values (used to store K/V rows). */
void cairn_cpu_f32_to_f16(const float *x, uint16_t *y, int n);

#endif
