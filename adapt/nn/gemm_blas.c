/* adapt/nn/gemm_blas.c — OpenBLAS behind cairn_nn_sgemm_fn (training half, cloud side). */
#include "adapt/nn/nn_train.h"

#include <cblas.h>

void cairn_nn_sgemm_blas(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                         int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
