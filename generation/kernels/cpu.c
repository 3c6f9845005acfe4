/*
 * generation/kernels/cpu.c — portable kernels and the run-time dispatch to cpu_avx2.c.
 *
 * Block formats follow ggml (see cpu_internal.h). The portable dot products accumulate in
 * int32 per block and scale in float, exactly like the AVX2 ones, so both give the same
 * result up to float summation order.
 */
#include "generation/kernels/cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "generation/kernels/cpu_internal.h"

bool cairn_cpu_has_avx2(void)
{
#if defined(__x86_64__) || defined(__i386__)
#if defined(__clang__) /* clang cannot ask for f16c; every AVX2 CPU has it */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
#endif
#else
    return false;
#endif
}

bool cairn__has_vnni(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return cairn_cpu_has_avx2() && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}

bool cairn_cpu_type_supported(uint32_t type)
{
    switch (type) {
    case CAIRN_GGUF_F32: case CAIRN_GGUF_F16: case CAIRN_GGUF_BF16: case CAIRN_GGUF_Q4_0:
    case CAIRN_GGUF_Q4_1: case CAIRN_GGUF_Q5_0: case CAIRN_GGUF_Q8_0: case CAIRN_GGUF_Q4_K:
    case CAIRN_GGUF_Q6_K:
        return true;
    default:
        return false;
    }
}

int cairn_cpu_mat_from_gguf(cairn_cpu_mat *m, const cairn_gguf_tensor *t, cairn_error *err)
{
    if (!cairn_cpu_type_supported(t->type)) {
        const char *tn = cairn_gguf_type_name(t->type);
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "tensor '%s': type %s (%u) has no CPU kernel",
                            t->name, tn ? tn : "unknown", t->type);
    }
    if (t->n_dims > 2 || t->dims[2] != 1 || t->dims[3] != 1)
        return cairn_errorf(err, CAIRN_EFORMAT, "tensor '%s': expected a matrix, got %u dims",
                            t->name, t->n_dims);
    uint32_t bs = cairn_gguf_type_block_size(t->type);
    if (t->dims[0] == 0 || t->dims[0] % bs != 0)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "tensor '%s': row length %llu is not a multiple of the block size %u",
                            t->name, (unsigned long long)t->dims[0], bs);
    m->type = t->type;
    m->cols = (int64_t)t->dims[0];
    m->rows = (int64_t)t->dims[1];
    m->row_bytes = (size_t)(t->dims[0] / bs) * cairn_gguf_type_block_bytes(t->type);
    m->data = t->data;
    if ((uint64_t)m->row_bytes * t->dims[1] != t->nbytes || !t->data)
        return cairn_errorf(err, CAIRN_EFORMAT, "tensor '%s': size %llu does not match its shape",
                            t->name, (unsigned long long)t->nbytes);
    return 0;
}

/* ---- Activation quantisation ------------------------------------------------------------- */

size_t cairn_cpu_act_bytes(uint32_t type, int64_t cols)
{
    switch (type) {
    case CAIRN_GGUF_Q4_0: case CAIRN_GGUF_Q5_0: case CAIRN_GGUF_Q8_0:
        return (size_t)(cols / 32) * sizeof(cairn__act_q8);
    case CAIRN_GGUF_Q4_1: /* Q8_1: the blocks, then their sums s */
        return (size_t)(cols / 32) * (sizeof(cairn__act_q8) + sizeof(float));
    case CAIRN_GGUF_Q4_K: case CAIRN_GGUF_Q6_K:
        return (size_t)(cols / 256) * sizeof(cairn__act_q8k);
    default:
        return (size_t)cols * sizeof(float);
    }
}

/*
 * Activation quantisers. They reproduce ggml's rounding exactly (ggml-quants.c / ggml-cpu):
 * Q8 blocks of 32 scale by 127 / amax, round half to even and keep the scale as F16; Q8_K
 * blocks of 256 scale by -127 / (the signed value of largest magnitude) and keep 1 / scale in
 * float. With identical quantised activations the integer dot products are identical too, so
 * our logits track llama.cpp's (the reference of the acceptance tests) far more closely than
 * any other 8-bit rounding would.
 */
static void quant_q8(const float *x, int64_t nb, cairn__act_q8 *y)
{
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(xb[j]));
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = cairn_gguf_f16_to_f32(cairn_gguf_f32_to_f16(amax / 127.0f));
        for (int j = 0; j < 32; j++)
            y[b].qs[j] = (int8_t)lrintf(xb[j] * id);
    }
}

static void quant_q8k(const float *x, int64_t nb, cairn__act_q8k *y)
{
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * 256;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 256; j++) {
            if (fabsf(xb[j]) > amax) {
                amax = fabsf(xb[j]);
                max = xb[j];
            }
        }
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        float iscale = -127.0f / max;
        for (int j = 0; j < 256; j++) {
            long v = lrintf(iscale * xb[j]);
            y[b].qs[j] = (int8_t)(v > 127 ? 127 : v);
        }
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++)
                s += y[b].qs[g * 16 + j];
            y[b].bsums[g] = (int16_t)s;
        }
        y[b].d = 1.0f / iscale;
        y[b].kind = 0;
    }
}

/* ggml's quantize_row_q8_1 (x86) rounds the values as Q8_0 does and keeps
 * s = FP16(d * sum(qs)) with d = amax / 127 as a float, before its F16 rounding. */
float cairn__q8_1_sum(const float *x, const cairn__act_q8 *blk)
{
    float amax = 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    for (int j = 0; j < 32; j++)
        sum += blk->qs[j];
    float d = amax / 127.0f;
    return cairn_gguf_f16_to_f32(cairn_gguf_f32_to_f16(d * (float)sum));
}

void cairn_cpu_quantize_act(uint32_t type, const float *x, int64_t cols, void *act, bool use_avx2)
{
    switch (type) {
    case CAIRN_GGUF_Q4_1: {
        const int64_t nb = cols / 32;
        cairn__act_q8 *blk = act;
        float *s = (float *)(blk + nb);
        if (use_avx2)
            cairn__quant_q8_avx2(x, nb, blk);
        else
            quant_q8(x, nb, blk);
        for (int64_t b = 0; b < nb; b++)
            s[b] = cairn__q8_1_sum(x + b * 32, &blk[b]);
        break;
    }
    case CAIRN_GGUF_Q4_0: case CAIRN_GGUF_Q5_0: case CAIRN_GGUF_Q8_0:
        if (use_avx2)
            cairn__quant_q8_avx2(x, cols / 32, act);
        else
            quant_q8(x, cols / 32, act);
        break;
    case CAIRN_GGUF_Q4_K: case CAIRN_GGUF_Q6_K:
        if (use_avx2)
            cairn__quant_q8k_avx2(x, cols / 256, act);
        else
            quant_q8k(x, cols / 256, act);
        break;
    default:
        memcpy(act, x, (size_t)cols * sizeof(float));
        break;
    }
}

/* ---- Portable dot products ----------------------------------------------------------------- */

static inline float h2f(uint16_t h) { return cairn_gguf_f16_to_f32(h); }
static float hsum8_lanes(const float v[8]);

/* The 32-value formats in ggml's 8 lanes (its AVX2 ggml_vec_dot_*_q8_0 and tinyBLAS agree):
 * lane j takes values 4j..4j+3 of a block; each lane's integer sum meets the block's scale
 * d_w d_a in an fma per block; the lanes are summed as hsum8_lanes. w8 holds the block's
 * weights as signed bytes. The same bits as the AVX2 kernels. */
static void q8f_lanes(const int8_t *w8, const cairn__act_q8 *a, float dw, float acc[8])
{
    float d = dw * a->d;
    for (int j = 0; j < 8; j++) {
        int s = 0;
        for (int k = 0; k < 4; k++)
            s += w8[4 * j + k] * a->qs[4 * j + k];
        acc[j] = fmaf((float)s, d, acc[j]);
    }
}

static float dot_q8_0(int64_t nb, const cairn__blk_q8_0 *w, const cairn__act_q8 *a)
{
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++)
        q8f_lanes(w[b].qs, &a[b], h2f(w[b].d), acc);
    return hsum8_lanes(acc);
}

static float dot_q4_0(int64_t nb, const cairn__blk_q4_0 *w, const cairn__act_q8 *a)
{
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++) {
        int8_t w8[32];
        for (int j = 0; j < 16; j++) {
            w8[j] = (int8_t)((w[b].qs[j] & 0xF) - 8);
            w8[j + 16] = (int8_t)((w[b].qs[j] >> 4) - 8);
        }
        q8f_lanes(w8, &a[b], h2f(w[b].d), acc);
    }
    return hsum8_lanes(acc);
}

static float dot_q5_0(int64_t nb, const cairn__blk_q5_0 *w, const cairn__act_q8 *a)
{
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        int8_t w8[32];
        for (int j = 0; j < 16; j++) {
            int h0 = (int)((qh >> j) << 4) & 0x10;
            int h1 = (int)(qh >> (j + 12)) & 0x10;
            w8[j] = (int8_t)(((w[b].qs[j] & 0xF) | h0) - 16);
            w8[j + 16] = (int8_t)(((w[b].qs[j] >> 4) | h1) - 16);
        }
        q8f_lanes(w8, &a[b], h2f(w[b].d), acc);
    }
    return hsum8_lanes(acc);
}

/* Q4_1 against Q8_1 as ggml_vec_dot_q4_1_q8_1 (x86) sums it: the unsigned nibbles in the
 * q8f lanes, and the offsets m * s in one float, fused per block (its compiler contracts
 * `summs += m * s`), added after the lanes' sum. */
static float dot_q4_1(int64_t nb, const cairn__blk_q4_1 *w, const void *act)
{
    const cairn__act_q8 *a = act;
    const float *s = (const float *)(a + nb);
    float acc[8] = {0}, summs = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8_t w8[32];
        for (int j = 0; j < 16; j++) {
            w8[j] = (int8_t)(w[b].qs[j] & 0xF);
            w8[j + 16] = (int8_t)(w[b].qs[j] >> 4);
        }
        summs = fmaf(h2f(w[b].m), s[b], summs);
        q8f_lanes(w8, &a[b], h2f(w[b].d), acc);
    }
    return hsum8_lanes(acc) + summs;
}

/* Q4_K as llama.cpp's x86 build sums it (see cpu_gemm_kq.inc): two fma chains, fed once per
 * block, or once per sub-block pair for a row of a 4-row tile (CAIRN_CPU_ROW_TILE4). */
static float dot_q4_k(int64_t nb, const cairn__blk_q4_k *w, const cairn__act_q8k *a)
{
    float acc = 0.0f, accm = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t sc[8], mn[8];
        cairn__q4k_scales(w[b].scales, sc, mn);
        int pair[4], pmin[4];
        for (int j = 0; j < 4; j++) {
            const uint8_t *q = w[b].qs + 32 * j;
            const int8_t *y = a[b].qs + 64 * j;
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += (q[l] & 0xF) * y[l];
                s1 += (q[l] >> 4) * y[l + 32];
            }
            pair[j] = sc[2 * j] * s0 + sc[2 * j + 1] * s1;
            pmin[j] = mn[2 * j] * (a[b].bsums[4 * j] + a[b].bsums[4 * j + 1]) +
                      mn[2 * j + 1] * (a[b].bsums[4 * j + 2] + a[b].bsums[4 * j + 3]);
        }
        float sd = h2f(w[b].d) * a[b].d, sm = h2f(w[b].dmin) * a[b].d;
        if (a[b].kind & CAIRN_CPU_ROW_TILE4) {
            for (int j = 0; j < 4; j++) {
                acc = fmaf((float)pair[j], sd, acc);
                accm = fmaf((float)pmin[j], sm, accm);
            }
        } else {
            acc = fmaf((float)(pair[0] + pair[1] + pair[2] + pair[3]), sd, acc);
            accm = fmaf((float)(pmin[0] + pmin[1] + pmin[2] + pmin[3]), sm, accm);
        }
    }
    return acc - accm;
}

/* The 8-lane float sum of ggml's AVX2 kernels: (l + h) then (0 + 2) + (1 + 3). */
static float hsum8_lanes(const float v[8])
{
    float t[4];
    for (int i = 0; i < 4; i++)
        t[i] = v[i] + v[i + 4];
    return (t[0] + t[2]) + (t[1] + t[3]);
}

/* Q6_K in ggml's 8 lanes (see cpu_gemm_kq.inc): lane j takes bytes 4j..4j+3 of every 32-value
 * stretch, less 32 * (sc * bsum) of the 16-value groups 2j and 2j+1; lanes meet the scale in
 * an fma per block. For a token of a batch of 8+ (CAIRN_CPU_ROW_WIDE), ggml's tiled kernel:
 * the block's whole sum times d_w, then an fma with d_a. */
static float dot_q6_k(int64_t nb, const cairn__blk_q6_k *w, const cairn__act_q8k *a)
{
    float acc[8] = {0}, wide = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int lane[8];
        for (int j = 0; j < 8; j++)
            lane[j] = -32 * (w[b].scales[2 * j] * a[b].bsums[2 * j] +
                             w[b].scales[2 * j + 1] * a[b].bsums[2 * j + 1]);
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = w[b].ql + 64 * half, *qh = w[b].qh + 32 * half;
            const int8_t *sc = w[b].scales + 8 * half, *y = a[b].qs + 128 * half;
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = (ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4);
                int q2 = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                int q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                int q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                lane[l / 4] += sc[is] * q1 * y[l] + sc[is + 2] * q2 * y[l + 32] +
                               sc[is + 4] * q3 * y[l + 64] + sc[is + 6] * q4 * y[l + 96];
            }
        }
        if (a[b].kind & CAIRN_CPU_ROW_WIDE) { /* ggml's tiled kernel: one sum per block */
            int s1 = 0;
            for (int j = 0; j < 8; j++)
                s1 += lane[j];
            wide = fmaf((float)s1 * h2f(w[b].d), a[b].d, wide);
            continue;
        }
        float d = a[b].d * h2f(w[b].d);
        for (int j = 0; j < 8; j++)
            acc[j] = fmaf((float)lane[j], d, acc[j]);
    }
    return nb > 0 && (a[0].kind & CAIRN_CPU_ROW_WIDE) ? wide : hsum8_lanes(acc);
}

static float dot_f32(int64_t n, const float *w, const float *x)
{
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += w[i] * x[i];
    return s;
}

static float dot_f16(int64_t n, const uint16_t *w, const float *x)
{
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += h2f(w[i]) * x[i];
    return s;
}

static float dot_bf16(int64_t n, const uint16_t *w, const float *x)
{
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += cairn_gguf_bf16_to_f32(w[i]) * x[i];
    return s;
}

float cairn_cpu_vec_dot(uint32_t type, int64_t cols, const void *w, const void *a, bool avx2)
{
    switch (type) {
    case CAIRN_GGUF_Q8_0:
        return avx2 ? cairn__dot_q8_0_avx2(cols / 32, w, a) : dot_q8_0(cols / 32, w, a);
    case CAIRN_GGUF_Q4_0:
        return avx2 ? cairn__dot_q4_0_avx2(cols / 32, w, a) : dot_q4_0(cols / 32, w, a);
    case CAIRN_GGUF_Q4_1:
        return avx2 ? cairn__dot_q4_1_avx2(cols / 32, w, a) : dot_q4_1(cols / 32, w, a);
    case CAIRN_GGUF_Q5_0:
        return avx2 ? cairn__dot_q5_0_avx2(cols / 32, w, a) : dot_q5_0(cols / 32, w, a);
    case CAIRN_GGUF_Q4_K:
        return avx2 ? cairn__dot_q4_k_avx2(cols / 256, w, a) : dot_q4_k(cols / 256, w, a);
    case CAIRN_GGUF_Q6_K:
        return avx2 ? cairn__dot_q6_k_avx2(cols / 256, w, a) : dot_q6_k(cols / 256, w, a);
    case CAIRN_GGUF_F16:
        return avx2 ? cairn__dot_f16_avx2(cols, w, a) : dot_f16(cols, w, a);
    case CAIRN_GGUF_BF16:
        return dot_bf16(cols, w, a);
    case CAIRN_GGUF_F32:
        return avx2 ? cairn__dot_f32_avx2(cols, w, a) : dot_f32(cols, w, a);
    default:
        return 0.0f; /* unreachable: cairn_cpu_mat_from_gguf rejects other types */
    }
}

/* ---- Matrix product ------------------------------------------------------------------------ */

/* Token counts are padded to whole tiles of the tiled kernels (cpu_internal.h). */
static int act_kind(uint32_t type);

size_t cairn_cpu_matmul_scratch_bytes(const cairn_cpu_mat *w, int64_t n_tok)
{
    if (w->r16) return (size_t)n_tok * (size_t)(w->cols / 32) * sizeof(cairn__act_r16);
    size_t padded = ((size_t)n_tok + CAIRN__Q8F_TILE - 1) / CAIRN__Q8F_TILE * CAIRN__Q8F_TILE;
    switch (w->type) {
    case CAIRN_GGUF_F32: case CAIRN_GGUF_F16: case CAIRN_GGUF_BF16:
        return 0; /* float activations are used in place */
    default: /* q8f tiles also keep their tokens' scales side by side: 4 more bytes a block */
        return padded * (cairn_cpu_act_bytes(w->type, w->cols) +
                         (act_kind(w->type) & 1 ? (size_t)(w->cols / 32) * sizeof(float) : 0));
    }
}

/* Which activation format a weight type multiplies against (0: the float rows themselves;
 * 1: Q8 blocks of 32; 3: the same with Q8_1's sums; 2: Q8_K). Odd kinds use the q8f kernels. */
static int act_kind(uint32_t type)
{
    switch (type) {
    case CAIRN_GGUF_Q4_0: case CAIRN_GGUF_Q5_0: case CAIRN_GGUF_Q8_0:
        return 1;
    case CAIRN_GGUF_Q4_1:
        return 3;
    case CAIRN_GGUF_Q4_K: case CAIRN_GGUF_Q6_K:
        return 2;
    default:
        return 0;
    }
}

typedef void (*gemm_fn)(uint32_t type, int64_t nb, const uint8_t *w, size_t w_stride, int nr,
                        const uint8_t *a, int nt, float *y, size_t y_stride);

static gemm_fn pick_gemm(uint32_t type, bool avx2)
{
    if (!avx2)
        return NULL;
    bool vnni = cairn__has_vnni();
    switch (act_kind(type)) {
    case 1: case 3:
        return vnni ? cairn__gemm_q8f_vnni : cairn__gemm_q8f_avx2;
    case 2:
        return vnni ? cairn__gemm_kq_vnni : cairn__gemm_kq_avx2;
    default:
        return NULL;
    }
}

/*
 * The products are cut into tasks of (a chunk of weight rows) x (a block of tokens). A chunk's
 * rows fill about half of L1 so that they stay there while the block's tokens pass; inside a
 * task the tiled kernels decode each weight block once for several tokens. Tasks are numbered
 * matrix-major, then row-chunk-major, so each thread's contiguous share of them reads its
 * weight rows once.
 */
#define MM_CHUNK_BYTES 16384
#define MM_TOK_BLOCK 64
#define MM_MAX_MATS 4

typedef struct {
    const cairn_cpu_mat *w;
    float *y;
    size_t chunk_rows; /* weight rows per task */
    size_t task_end;   /* one past this matrix's last task index */
} mm_part;

typedef struct {
    mm_part part[MM_MAX_MATS];
    int n_mats;
    const float *x;
    int64_t n_tok, cols, nb; /* nb: blocks per row */
    uint32_t act_type;       /* the type the activations are quantized for */
    const uint8_t *act;
    size_t act_row;          /* bytes of one token's activation blocks */
    size_t tok_bytes;        /* tiled layouts: a tile's bytes / its tokens */
    size_t act_blk;          /* bytes of one activation block */
    uint8_t *scratch;
    bool avx2;
    gemm_fn gemm;            /* tiled kernel of the family, or NULL: vec_dot on plain rows */
    int tile;                /* gemm's token tile (its activation layout); 0 with no gemm */
    bool act_u8;             /* q8f tiles hold y + 128 (cairn__gemm_q8f_vnni) */
    size_t n_tblocks;        /* token blocks per row chunk */
    const uint8_t *kinds;    /* per token CAIRN_CPU_ROW_*, for Q8_K activations, or NULL */
} matmul_ctx;

/* Quantizes tokens [b, e): plain rows, or for a tiled kernel block k of token t at
 * ((t / tile) * nb + k) * tile + t % tile blocks from the start. */
static void quant_rows(void *p, size_t b, size_t e, int tid)
{
    (void)tid;
    const matmul_ctx *c = p;
    const int64_t bs = c->cols / c->nb;
    for (size_t t = b; t < e; t++) {
        const float *x = c->x + t * c->cols;
        int32_t kind = c->kinds ? c->kinds[t] : 0;
        if (!c->tile) {
            uint8_t *row = c->scratch + t * c->act_row;
            cairn_cpu_quantize_act(c->act_type, x, c->cols, row, c->avx2);
            for (int64_t k = 0; kind && k < c->nb; k++)
                ((cairn__act_q8k *)row)[k].kind = kind;
            continue;
        }
        size_t tile = (size_t)c->tile, j = t % tile, base = (t - j) * (size_t)c->nb;
        if (act_kind(c->act_type) & 1) { /* q8f tile: blocks, then the scales side by side */
            uint8_t *tb = c->scratch + (t - j) * c->tok_bytes;
            float *ds = (float *)(tb + (size_t)c->nb * tile * sizeof(cairn__act_q8));
            float *ss = act_kind(c->act_type) == 3 ? ds + (size_t)c->nb * tile : NULL;
            for (int64_t k = 0; k < c->nb; k++) {
                cairn__act_q8 *blk = (cairn__act_q8 *)tb + (size_t)k * tile + j;
                cairn_cpu_quantize_act(CAIRN_GGUF_Q8_0, x + k * bs, bs, blk, true);
                if (ss) /* Q8_1: the sums s after the scales */
                    ss[(size_t)k * tile + j] = cairn__q8_1_sum(x + k * bs, blk);
                for (int i = 0; c->act_u8 && i < 32; i++)
                    blk->qs[i] = (int8_t)((uint8_t)blk->qs[i] ^ 0x80);
                ds[(size_t)k * tile + j] = blk->d;
                for (size_t u = j + 1; t + 1 == (size_t)c->n_tok && u < tile; u++) {
                    ds[(size_t)k * tile + u] = 0.0f; /* the last tile's unused tokens */
                    if (ss)
                        ss[(size_t)k * tile + u] = 0.0f;
                }
            }
            continue;
        }
        for (int64_t k = 0; k < c->nb; k++) {
            uint8_t *blk = c->scratch + (base + (size_t)k * tile + j) * c->act_blk;
            cairn_cpu_quantize_act(c->act_type, x + k * bs, bs, blk, true);
            if (kind)
                ((cairn__act_q8k *)blk)->kind = kind;
        }
    }
}

static void matmul_tasks(void *p, size_t ib, size_t ie, int tid)
{
    (void)tid;
    const matmul_ctx *c = p;
    int m = 0;
    for (size_t i = ib; i < ie; i++) {
        while (i >= c->part[m].task_end)
            m++;
        const mm_part *pt = &c->part[m];
        const cairn_cpu_mat *w = pt->w;
        const uint8_t *wd = w->data;
        size_t li = i - (m ? c->part[m - 1].task_end : 0);
        size_t r0 = (li / c->n_tblocks) * pt->chunk_rows, t0 = (li % c->n_tblocks) * MM_TOK_BLOCK;
        size_t nr = (size_t)w->rows - r0 < pt->chunk_rows ? (size_t)w->rows - r0 : pt->chunk_rows;
        size_t nt = (size_t)c->n_tok - t0 < MM_TOK_BLOCK ? (size_t)c->n_tok - t0 : MM_TOK_BLOCK;
        if (c->gemm) {
            /* t0 is a multiple of MM_TOK_BLOCK, so a whole number of tiles */
            c->gemm(w->type, c->nb, wd + r0 * w->row_bytes, w->row_bytes, (int)nr,
                    c->act + t0 * c->tok_bytes, (int)nt, pt->y + t0 * w->rows + r0,
                    (size_t)w->rows);
            continue;
        }
        for (size_t t = t0; t < t0 + nt; t++) {
            const void *a = c->act + t * c->act_row;
            float *yt = pt->y + t * w->rows;
            for (size_t r = r0; r < r0 + nr; r++)
                yt[r] = cairn_cpu_vec_dot(w->type, w->cols, wd + r * w->row_bytes, a, c->avx2);
        }
    }
}

/* ---- The 16-rows-in-lanes path (cairn_cpu_mat_repack) ---- */

int cairn_cpu_mat_repack(cairn_cpu_mat *m, void **owned, cairn_error *err)
{
    *owned = NULL;
    if (m->type != CAIRN_GGUF_Q8_0 || m->rows % CAIRN__R16_ROWS || !cairn__has_vnni()) return 0;
    const int64_t nb = m->cols / 32;
    size_t bytes = (size_t)(m->rows / CAIRN__R16_ROWS) * (size_t)nb * CAIRN__R16_BLOCK;
    void *buf = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!buf)
        return cairn_errorf(err, CAIRN_ENOMEM,
                            "repacking a %lld x %lld Q8_0 matrix: out of "
                            "memory for %zu bytes",
                            (long long)m->rows, (long long)m->cols, bytes);
    cairn__repack_r16(m->data, m->row_bytes, nb, m->rows, buf);
    m->r16 = buf;
    *owned = buf;
    return 0;
}

/* Tasks of R16_TASK_GROUPS groups of 16 rows, each against every token (a group's 11 KB stay
 * in L1 while the token pairs pass). */
#define R16_TASK_GROUPS 4

typedef struct {
    const cairn_cpu_mat *w;
    const float *x;
    int64_t n_tok, nb;
    cairn__act_r16 *act;
    float *y;
    bool avx2;
} r16_ctx;

static void r16_quant(void *p, size_t b, size_t e, int tid)
{
    (void)tid;
    const r16_ctx *c = p;
    for (size_t t = b; t < e; t++)
        for (int64_t k = 0; k < c->nb; k++) {
            cairn__act_q8 q;
            cairn_cpu_quantize_act(CAIRN_GGUF_Q8_0, c->x + (int64_t)t * c->w->cols + k * 32, 32, &q,
                                   c->avx2);
            cairn__act_r16_from_q8(&q, 1, c->act + (int64_t)t * c->nb + k);
        }
}

static void r16_tasks(void *p, size_t b, size_t e, int tid)
{
    (void)tid;
    const r16_ctx *c = p;
    const int64_t groups = c->w->rows / CAIRN__R16_ROWS;
    for (size_t i = b; i < e; i++) {
        int64_t g0 = (int64_t)i * R16_TASK_GROUPS;
        int ng = (int)(groups - g0 < R16_TASK_GROUPS ? groups - g0 : R16_TASK_GROUPS);
        cairn__gemm_r16_vnni(
            c->nb, (const uint8_t *)c->w->r16 + (size_t)(g0 * c->nb) * CAIRN__R16_BLOCK, ng, c->act,
            (int)c->n_tok, c->y + g0 * CAIRN__R16_ROWS, (size_t)c->w->rows);
    }
}

static void matmul_r16(cairn_pool *pool, const cairn_cpu_mat *w, const float *x, int64_t n_tok,
                       float *y, void *scratch)
{
    r16_ctx c = {.w = w,
                 .x = x,
                 .n_tok = n_tok,
                 .nb = w->cols / 32,
                 .act = scratch,
                 .y = y,
                 .avx2 = cairn_cpu_has_avx2()};
    if (pool && n_tok >= 16)
        cairn_pool_parallel_for(pool, (size_t)n_tok, r16_quant, &c);
    else
        r16_quant(&c, 0, (size_t)n_tok, 0);
    size_t groups = (size_t)(w->rows / CAIRN__R16_ROWS);
    size_t tasks = (groups + R16_TASK_GROUPS - 1) / R16_TASK_GROUPS;
    if (pool)
        cairn_pool_parallel_for(pool, tasks, r16_tasks, &c);
    else
        r16_tasks(&c, 0, tasks, 0);
}

bool cairn_cpu_matmul_can_share(const cairn_cpu_mat *a, const cairn_cpu_mat *b)
{
    if (a->cols != b->cols)
        return false;
    if (a->r16 || b->r16) return false; /* its own activation layout */
    int ka = act_kind(a->type), kb = act_kind(b->type);
    return ka == kb && (ka != 0 || a->type == b->type);
}

void cairn_cpu_matmul_n(cairn_pool *pool, const cairn_cpu_mat *const *w, int n, const float *x,
                        int64_t n_tok, float *const *y, void *scratch, const uint8_t *kinds)
{
    if (n == 1 && w[0]->r16) {
        matmul_r16(pool, w[0], x, n_tok, y[0], scratch);
        return;
    }
    bool share = n <= MM_MAX_MATS;
    for (int i = 1; i < n && share; i++)
        share = cairn_cpu_matmul_can_share(w[0], w[i]);
    if (!share) {
        for (int i = 0; i < n; i++)
            cairn_cpu_matmul_n(pool, &w[i], 1, x, n_tok, &y[i], scratch, kinds);
        return;
    }
    const cairn_cpu_mat *w0 = w[0];
    matmul_ctx c = {.n_mats = n, .x = x, .n_tok = n_tok, .cols = w0->cols, .act_type = w0->type,
                    .scratch = scratch, .avx2 = cairn_cpu_has_avx2(),
                    .kinds = act_kind(w0->type) == 2 ? kinds : NULL};
    c.gemm = pick_gemm(w0->type, c.avx2);
    c.act_u8 = c.gemm == cairn__gemm_q8f_vnni && act_kind(w0->type) != 3; /* Q4_1: plain y */
    c.nb = w0->cols / (int64_t)cairn_gguf_type_block_size(w0->type);
    if (cairn_cpu_matmul_scratch_bytes(w0, 1) == 0) {
        c.act = (const uint8_t *)x;
        c.act_row = (size_t)w0->cols * sizeof(float);
    } else {
        c.act = scratch;
        c.act_row = cairn_cpu_act_bytes(w0->type, w0->cols);
        c.act_blk = c.act_row / (size_t)c.nb;
        c.tok_bytes = c.act_row + (act_kind(w0->type) & 1 ? (size_t)c.nb * sizeof(float) : 0);
        if (c.gemm)
            c.tile = act_kind(w0->type) & 1 ? CAIRN__Q8F_TILE : CAIRN__KQ_TILE;
        if (pool && n_tok >= 16) /* fewer rows quantize faster than the pool wakes */
            cairn_pool_parallel_for(pool, (size_t)n_tok, quant_rows, &c);
        else
            quant_rows(&c, 0, (size_t)n_tok, 0);
    }
    c.n_tblocks = ((size_t)n_tok + MM_TOK_BLOCK - 1) / MM_TOK_BLOCK;
    size_t tasks = 0;
    for (int i = 0; i < n; i++) {
        mm_part *pt = &c.part[i];
        pt->w = w[i];
        pt->y = y[i];
        pt->chunk_rows = MM_CHUNK_BYTES / w[i]->row_bytes;
        if (pt->chunk_rows < 4)
            pt->chunk_rows = 4;
        if (pt->chunk_rows > 64)
            pt->chunk_rows = 64;
        /* whole groups for the kernels that take several rows at once */
        size_t group = act_kind(w[i]->type) == 2 ? 8 : CAIRN__Q8F_ROWS;
        pt->chunk_rows = (pt->chunk_rows + group - 1) / group * group;
        tasks += ((size_t)w[i]->rows + pt->chunk_rows - 1) / pt->chunk_rows * c.n_tblocks;
        pt->task_end = tasks;
    }
    if (pool)
        cairn_pool_parallel_for(pool, tasks, matmul_tasks, &c);
    else
        matmul_tasks(&c, 0, tasks, 0);
}

void cairn_cpu_matmul(cairn_pool *pool, const cairn_cpu_mat *w, const float *x, int64_t n_tok,
                      float *y, void *scratch)
{
    cairn_cpu_matmul_n(pool, &w, 1, x, n_tok, &y, scratch, NULL);
}

/* ---- Element-wise ---------------------------------------------------------------------------- */

/*
 * As ggml computes it: squares in float summed in double, the mean and the scale in float,
 * then (x * scale) * w. The AVX2 version sums in 8 double lanes (a different order than the
 * sequential one only at the 1e-16 level).
 */
void cairn_cpu_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss;
    if (cairn_cpu_has_avx2()) {
        ss = cairn__sumsq_avx2(x, n);
    } else {
        ss = 0.0;
        for (int i = 0; i < n; i++)
            ss += (double)(x[i] * x[i]);
    }
    float mean = (float)(ss / n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++)
        out[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

/*
 * theta_i as ggml's rope cache builds it (ggml-cpu ops.cpp, ggml_rope_cache_init): pos times
 * base^(-2/head_dim) multiplied in i times, in float, then times freq_scale. Equal to the
 * closed form up to float rounding, and rounding the same way keeps us next to llama.cpp.
 */
void cairn_cpu_rope_angles(int head_dim, int pos, float base, float freq_scale, float *cs)
{
    int half = head_dim / 2;
    float step = powf(base, -2.0f / (float)head_dim), theta = (float)pos;
    for (int i = 0; i < half; i++) {
        cs[i] = cosf(freq_scale * theta);
        cs[half + i] = sinf(freq_scale * theta);
        theta *= step;
    }
}

/*
 * One RoPE rotation, rounded as llama.cpp's build on an FMA machine rounds it: the compiler
 * contracts x0*c - x1*s into fma(x0, c, -(x1*s)) (and the sine row likewise), so the first
 * product is not rounded on its own. fmaf makes every machine round that way.
 */
static inline void rotate(float *x0, float *x1, float c, float s)
{
    float a = *x0, b = *x1;
    *x0 = fmaf(a, c, -(b * s));
    *x1 = fmaf(a, s, b * c);
}

void cairn_cpu_rope_apply(float *x, int n_heads, int head_dim, const float *cs, bool neox)
{
    int half = head_dim / 2;
    if (neox && half % 8 == 0 && cairn_cpu_has_avx2()) {
        cairn__rope_neox_avx2(x, n_heads, head_dim, cs);
        return;
    }
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float c = cs[i], s = cs[half + i];
            int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
            rotate(xh + i0, xh + i1, c, s);
        }
    }
}

void cairn_cpu_rope(float *x, int n_heads, int head_dim, int pos, float base, float freq_scale,
                    bool neox)
{
    int half = head_dim / 2;
    float step = powf(base, -2.0f / (float)head_dim), theta = (float)pos;
    for (int i = 0; i < half; i++) {
        float c = cosf(freq_scale * theta), s = sinf(freq_scale * theta);
        theta *= step;
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (size_t)h * head_dim;
            int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
            rotate(xh + i0, xh + i1, c, s);
        }
    }
}

/* GELU-tanh in ggml's expression, rounded as its FMA build rounds it (ggml_gelu_f32, the
 * compiler fusing 1 + a x x into fma(a x, x, 1)): the F16 table built from it is ggml's. */
static inline float gelu1(float x)
{
    const float k = 0.79788456080286535587989211986876f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(k * x * fmaf(0.044715f * x, x, 1.0f)));
}

static inline float silu1(float x) { return x / (1.0f + expf(-x)); }

void cairn_cpu_gelu_tanh(float *x, int n)
{
    for (int i = 0; i < n; i++)
        x[i] = gelu1(x[i]);
}

void cairn_cpu_silu(float *x, int n)
{
    for (int i = 0; i < n; i++)
        x[i] = silu1(x[i]);
}

static inline float f16_round(float x) { return h2f(cairn_gguf_f32_to_f16(x)); }

/*
 * GELU at half precision, as ggml evaluates it (a table over all F16 inputs): the input is
 * rounded to F16 and so is the result; |x| >= 10 passes x (or 0) through. The difference from
 * float GELU (< 1e-3 relative) is far below the 8-bit activation rounding that follows, but
 * matching it keeps our greedy choices in step with llama.cpp's.
 */
static inline float gelu_f16(float x)
{
    if (x <= -10.0f)
        return 0.0f;
    if (x >= 10.0f)
        return x;
    return f16_round(gelu1(f16_round(x)));
}

static inline float expf_ggml(float x);

/*
 * The gated MLP's middle as ggml computes it. GELU: gelu_f16 above. SiLU: ggml's SwiGLU
 * (ggml_vec_swiglu_f32, AVX-512 build) takes whole groups of 16 values through its vector
 * silu, x / (1 + e^-x) with its polynomial exp (expf_ggml), and the last n % 16 through the
 * scalar one with libm's expf. The two exps differ in the last bit now and then, and a last bit
 * is enough to move an 8-bit activation of the next product (the down projection's Q8 blocks),
 * so llama.cpp's logits are only reproduced with its split.
 */
void cairn_cpu_gated(float *a, const float *b, int n, bool gelu)
{
    if (gelu) {
        for (int i = 0; i < n; i++)
            a[i] = gelu_f16(a[i]) * b[i];
        return;
    }
    int nv = n - n % 16;
    for (int i = 0; i < nv; i++)
        a[i] = a[i] / (1.0f + expf_ggml(-a[i])) * b[i];
    for (int i = nv; i < n; i++)
        a[i] = silu1(a[i]) * b[i];
}

void cairn_cpu_gelu_f16_table(float *table)
{
    for (uint32_t h = 0; h < CAIRN_CPU_GELU_TABLE_SIZE; h++)
        table[h] = f16_round(gelu1(h2f((uint16_t)h)));
}

void cairn_cpu_gated_gelu_table(float *a, const float *b, int n, const float *table)
{
    if (cairn_cpu_has_avx2()) {
        cairn__gated_gelu_avx2(a, b, n, table);
        return;
    }
    for (int i = 0; i < n; i++) {
        float x = a[i];
        float g = x <= -10.0f ? 0.0f : x >= 10.0f ? x : table[cairn_gguf_f32_to_f16(x)];
        a[i] = g * b[i];
    }
}

/*
 * ggml's exp (ggml-cpu vec.h, ggml_v_expf in the AVX-512 form that its soft_max uses on the
 * machines we are checked on), operation for operation: n = round(x / ln 2), a polynomial in
 * the remainder b = x - n ln 2, scaled by 2^n; |n| > 192 saturates to 0 or infinity. Within
 * 2 ulp of expf, and the same bits as llama.cpp's on every machine.
 */
static inline float expf_ggml(float x)
{
    const float r = 0x1.8p23f;
    float n = fmaf(x, 0x1.715476p+0f, r) - r;
    if (fabsf(n) > 192.0f)
        return n <= 0.0f ? 0.0f : INFINITY;
    float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    float u = b * b;
    float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                        fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                   u, fmaf(0x1.ffffecp-1f, b, 1.0f));
    return ldexpf(j, (int)n);
}

/* The 16-lane float sum of an AVX-512 reduction (GCC's _mm512_reduce_add_ps): halves, then
 * quarters, then (0 + 2) + (1 + 3). */
static float hsum16_lanes(const float v[16])
{
    float t[8], u[4];
    for (int i = 0; i < 8; i++)
        t[i] = v[i] + v[i + 8];
    for (int i = 0; i < 4; i++)
        u[i] = t[i] + t[i + 4];
    return (u[0] + u[2]) + (u[1] + u[3]);
}

/*
 * Softmax over the KV positions lo..hi (x[0..hi-lo]) as ggml's soft_max computes it over a
 * cache whose cell c holds position c (llama.cpp without flash attention): exp through
 * expf_ggml, sums of 16 aligned cells (cells outside lo..hi count 0) in float, added in
 * double, and every value times the float of 1 / the sum.
 */
static void softmax_cells(float *x, int lo, int hi, bool use_avx2)
{
    int n = hi - lo + 1;
    float mx = x[0];
    for (int i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    if (use_avx2)
        cairn__exp_shift_avx2(x, n, mx);
    else
        for (int i = 0; i < n; i++)
            x[i] = expf_ggml(x[i] - mx);
    double sum = 0.0;
    for (int c = lo & ~15; c <= hi; c += 16) {
        float v[16];
        for (int j = 0; j < 16; j++)
            v[j] = c + j < lo || c + j > hi ? 0.0f : x[c + j - lo];
        sum += (double)hsum16_lanes(v);
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++)
        x[i] *= inv;
}

void cairn_cpu_softmax(float *x, int n)
{
    softmax_cells(x, 0, n - 1, cairn_cpu_has_avx2());
}

float cairn__expf_ggml(float x)
{
    return expf_ggml(x);
}

void cairn_cpu_round_f16(float *x, int n)
{
    if (cairn_cpu_has_avx2()) {
        cairn__round_f16_avx2(x, n);
        return;
    }
    for (int i = 0; i < n; i++)
        x[i] = f16_round(x[i]);
}

void cairn_cpu_f32_to_f16(const float *x, uint16_t *y, int n)
{
    if (cairn_cpu_has_avx2()) {
        cairn__f32_to_f16_avx2(x, y, n);
        return;
    }
    for (int i = 0; i < n; i++)
        y[i] = cairn_gguf_f32_to_f16(x[i]);
}

/* ---- Attention ------------------------------------------------------------------------------- */

/*
 * The attention products as llama.cpp computes them over its F16 cache. For a token of a
 * larger batch tinyBLAS (llamafile sgemm, AVX-512) sums in 16 lanes: q.k with lane i % 16
 * taking element i of the head, the V sum with lane p % 16 taking position p. For a token alone
 * ggml_vec_dot_f16 sums in 4 x 16 = 64 lanes (lane i % 64), folds them (0 + 2) + (1 + 3) into
 * 16 and adds what is left past a multiple of 64 in double. Each lane is an fma chain; 16
 * lanes are summed as hsum16_lanes. These portable forms give the AVX2 kernels' bits.
 */
static float lanes_sum(const float *acc, int lanes)
{
    if (lanes == 16)
        return hsum16_lanes(acc);
    float v[16];
    for (int l = 0; l < 16; l++)
        v[l] = (acc[l] + acc[l + 32]) + (acc[l + 16] + acc[l + 48]);
    return hsum16_lanes(v);
}

static float dot_f16_lanes(int n, const uint16_t *k, const float *q, int lanes)
{
    float acc[64] = {0};
    int main = lanes == 16 ? n : n & ~63;
    for (int i = 0; i < main; i++)
        acc[i % lanes] = fmaf(h2f(k[i]), q[i], acc[i % lanes]);
    double s = lanes_sum(acc, lanes);
    for (int i = main; i < n; i++)
        s += (double)(h2f(k[i]) * q[i]);
    return (float)s;
}

static void pv_acc(int w, int lanes, const uint16_t *const *rows, int first, int n_rows,
                   const float *probs, size_t p_stride, int nq, float *acc)
{
    for (int r = 0; r < n_rows; r++) {
        int lane = (first + r) & (lanes - 1);
        for (int g = 0; g < nq; g++) {
            float a = probs[(size_t)g * p_stride + r];
            if (a == 0.0f) /* fma(v, 0, acc) is acc: skipping changes no bit */
                continue;
            float *ac = acc + ((size_t)g * lanes + lane) * w;
            for (int i = 0; i < w; i++)
                ac[i] = fmaf(h2f(rows[r][i]), a, ac[i]);
        }
    }
}

static void pv_reduce(int w, int lanes, int nq, const float *acc, float *out, size_t o_stride)
{
    for (int g = 0; g < nq; g++)
        for (int i = 0; i < w; i++) {
            float v[64];
            for (int j = 0; j < lanes; j++)
                v[j] = acc[((size_t)g * lanes + j) * w + i];
            out[(size_t)g * o_stride + i] = lanes_sum(v, lanes);
        }
}

void cairn_cpu_attention(const float *q, int head_dim, const cairn_cpu_paged *kv, int kv_head,
                         int lo, int hi, float scale, int kind, float *scores, float *out)
{
    cairn_cpu_attention_heads(q, 1, head_dim, kv, kv_head, lo, hi, scale, kind, scores, out);
}

/* Floats of V accumulators per pass: 4 heads x lanes x columns (64 KiB). */
#define PV_ACC (4 * 16 * 256)

void cairn_cpu_attention_heads(const float *q, int n_q, int head_dim, const cairn_cpu_paged *kv,
                               int kv_head, int lo, int hi, float scale, int kind,
                               float *scores, float *out)
{
    cairn__attention_heads(q, n_q, head_dim, kv, kv_head, lo, hi, scale, kind, scores, out,
                           cairn_cpu_has_avx2());
}

void cairn__attention_heads(const float *q, int n_q, int head_dim, const cairn_cpu_paged *kv,
                            int kv_head, int lo, int hi, float scale, int kind, float *scores,
                            float *out, bool use_avx2)
{
    /* tinyBLAS takes batches of 2+ tokens when the summed length is a multiple of 16; the V
     * sum runs over whole cache pages of 256 cells, so only q.k can fall back */
    const int vl = kind & CAIRN_CPU_ROW_BATCH ? 16 : 64;
    const int kl = vl == 16 && head_dim % 16 == 0 ? 16 : 64;
    const bool avx = use_avx2 && head_dim % 16 == 0;
    const int n = hi - lo + 1, cols = PV_ACC / 4 / vl;
    const size_t hoff = (size_t)kv_head * head_dim;
    float acc[PV_ACC];
    for (int g0 = 0; g0 < n_q; g0 += 4) {
        int nq = n_q - g0 < 4 ? n_q - g0 : 4;
        const float *qg = q + (size_t)g0 * head_dim;
        float *og = out + (size_t)g0 * head_dim;
        float dots[4];
        for (int p = lo; p <= hi; p++) {
            const uint16_t *k = kv->k + (size_t)kv->blocks[p / kv->block_tokens] *
                                            kv->block_stride +
                                (size_t)(p % kv->block_tokens) * kv->row_stride + hoff;
            if (avx)
                cairn__dot_f16_heads_avx2(head_dim, k, qg, nq, (size_t)head_dim, kl, dots);
            else
                for (int g = 0; g < nq; g++)
                    dots[g] = dot_f16_lanes(head_dim, k, qg + (size_t)g * head_dim, kl);
            for (int g = 0; g < nq; g++)
                scores[(size_t)g * n + (p - lo)] = scale * dots[g];
        }
        /* ggml multiplies the probabilities by the F16 V cache in F16 */
        for (int g = 0; g < nq; g++) {
            softmax_cells(scores + (size_t)g * n, lo, hi, use_avx2);
            cairn_cpu_round_f16(scores + (size_t)g * n, n);
        }
        if (avx) {
            cairn__pv_avx2(kv, hoff, lo, hi, scores, (size_t)n, nq, head_dim, vl, acc, og,
                           (size_t)head_dim);
            continue;
        }
        for (int d0 = 0; d0 < head_dim; d0 += cols) {
            int w = head_dim - d0 < cols ? head_dim - d0 : cols;
            memset(acc, 0, sizeof(float) * (size_t)nq * vl * w);
            const uint16_t *rows[64];
            for (int p0 = lo; p0 <= hi; p0 += 64) {
                int nr = hi - p0 + 1 < 64 ? hi - p0 + 1 : 64;
                for (int j = 0; j < nr; j++) {
                    int p = p0 + j;
                    rows[j] = kv->v + (size_t)kv->blocks[p / kv->block_tokens] *
                                          kv->block_stride +
                              (size_t)(p % kv->block_tokens) * kv->row_stride + hoff + d0;
                }
                pv_acc(w, vl, rows, p0, nr, scores + (p0 - lo), (size_t)n, nq, acc);
            }
            pv_reduce(w, vl, nq, acc, og + d0, (size_t)head_dim);
        }
    }
}
