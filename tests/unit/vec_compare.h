/*
 * tests/unit/vec_compare.h — comparing float vectors in the embedder's tests (test_embed.c,
 * test_cuda_embed.c): a dot product and the largest absolute difference, in double.
 * Header-only (static functions): include it in one test file each.
 */
#ifndef CAIRN_TESTS_VEC_COMPARE_H
#define CAIRN_TESTS_VEC_COMPARE_H

#include <math.h>
#include <stddef.h>

static double dot(const float *a, const float *b, int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        m = d > m ? d : m;
    }
    return m;
}

#endif
