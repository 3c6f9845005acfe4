/*
 * adapt/nn/gemm.c — a portable row-major sgemm for the forward half (edge devices need no BLAS).
 * Loop orders keep the innermost loop contiguous in memory so that compilers vectorise it
 * (adapt/CMakeLists.txt compiles this file with -O3 for that); it is a few times slower than
 * OpenBLAS but has no dependencies.
 */
#include "adapt/nn/nn.h"

#include <string.h>

void cairn_nn_sgemm_portable(int trans_a, int trans_b, int m, int n, int k, float alpha,
                             const float *a, int lda, const float *b, int ldb, float beta, float *c,
                             int ldc)
{
    for (int i = 0; i < m; i++) {
        float *ci = c + (size_t)i * ldc;
        if (beta == 0.0f)
            memset(ci, 0, (size_t)n * sizeof(float));
        else if (beta != 1.0f)
            for (int j = 0; j < n; j++)
                ci[j] *= beta;
    }
    if (alpha == 0.0f || k == 0) return;
    if (!trans_b) {
        /* C[i,:] += alpha * op(A)[i,p] * B[p,:], four rows of C at a time so that each B row
         * loaded is used four times; the j loops are contiguous in B and C. */
        int i = 0;
        for (; i + 4 <= m; i += 4) {
            float *restrict c0 = c + (size_t)i * ldc, *restrict c1 = c0 + ldc;
            float *restrict c2 = c1 + ldc, *restrict c3 = c2 + ldc;
            for (int p = 0; p < k; p++) {
                float a0, a1, a2, a3;
                if (trans_a) {
                    const float *ap = a + (size_t)p * lda + i;
                    a0 = ap[0], a1 = ap[1], a2 = ap[2], a3 = ap[3];
                } else {
                    const float *ap = a + (size_t)i * lda + p;
                    a0 = ap[0], a1 = ap[lda], a2 = ap[2 * (size_t)lda], a3 = ap[3 * (size_t)lda];
                }
                a0 *= alpha, a1 *= alpha, a2 *= alpha, a3 *= alpha;
                const float *restrict bp = b + (size_t)p * ldb;
                for (int j = 0; j < n; j++) {
                    const float bv = bp[j];
                    c0[j] += a0 * bv;
                    c1[j] += a1 * bv;
                    c2[j] += a2 * bv;
                    c3[j] += a3 * bv;
                }
            }
        }
        for (; i < m; i++) {
            float *restrict ci = c + (size_t)i * ldc;
            for (int p = 0; p < k; p++) {
                float av = trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                av *= alpha;
                const float *restrict bp = b + (size_t)p * ldb;
                for (int j = 0; j < n; j++)
                    ci[j] += av * bp[j];
            }
        }
    } else if (!trans_a) {
        /* C[i,j] += alpha * dot(A[i,:], B[j,:]) — both rows contiguous. */
        for (int i = 0; i < m; i++) {
            const float *restrict ai = a + (size_t)i * lda;
            for (int j = 0; j < n; j++) {
                const float *restrict bj = b + (size_t)j * ldb;
                float s = 0.0f;
                for (int p = 0; p < k; p++)
                    s += ai[p] * bj[p];
                c[(size_t)i * ldc + j] += alpha * s;
            }
        }
    } else {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                float s = 0.0f;
                for (int p = 0; p < k; p++)
                    s += a[(size_t)p * lda + i] * b[(size_t)j * ldb + p];
                c[(size_t)i * ldc + j] += alpha * s;
            }
    }
}
