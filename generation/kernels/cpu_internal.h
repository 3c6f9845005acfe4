/*
 * generation/kernels/cpu_internal.h — block layouts and the AVX2 entry points shared by
 * cpu.c and cpu_avx2.c. Internal to generation/kernels.
 */
#ifndef CAIRN_GENERATION_KERNELS_CPU_INTERNAL_H
#define CAIRN_GENERATION_KERNELS_CPU_INTERNAL_H

#include <stdint.h>

/* Weight blocks, as GGUF stores them (ggml's layouts). */
typedef struct { uint16_t d; int8_t qs[32]; } cairn__blk_q8_0;                   /* 34 B */
typedef struct { uint16_t d; uint8_t qs[16]; } cairn__blk_q4_0;                  /* 18 B */
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
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } cairn__act_q8k;   /* 292 B */

_Static_assert(sizeof(cairn__blk_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(cairn__blk_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(cairn__blk_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(cairn__blk_q4_k) == 144, "q4_k layout");
_Static_assert(sizeof(cairn__blk_q6_k) == 210, "q6_k layout");
_Static_assert(sizeof(cairn__act_q8k) == 292, "q8_k layout");

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
float cairn__dot_q5_0_avx2(int64_t nb, const void *w, const void *a);
float cairn__dot_q4_k_avx2(int64_t nb, const void *w, const void *a);
float cairn__dot_q6_k_avx2(int64_t nb, const void *w, const void *a);
float cairn__dot_f16_avx2(int64_t n, const uint16_t *w, const float *x);
float cairn__dot_f32_avx2(int64_t n, const float *w, const float *x);
void cairn__quant_q8_avx2(const float *x, int64_t nb, cairn__act_q8 *y);
void cairn__axpy_f16_avx2(int64_t n, float a, const uint16_t *v, float *y);
void cairn__f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n);

#endif
