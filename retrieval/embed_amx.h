/*
 * retrieval/embed_amx.h — BF16 linear layers for the embedder on AMX tiles
 * (retrieval/embed_amx.c). Internal to retrieval/embed.c, which calls these only after
 * cairn__amx_enable() succeeded.
 */
#ifndef CAIRN_RETRIEVAL_EMBED_AMX_H
#define CAIRN_RETRIEVAL_EMBED_AMX_H

#include <stdbool.h>
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

#endif
