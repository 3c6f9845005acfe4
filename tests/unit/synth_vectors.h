/*
 * tests/unit/synth_vectors.h — synthetic clustered unit vectors for the retrieval tests
 * (test_ivf.c, test_tier.c): a seeded xorshift generator, so data are the same every run.
 * Header-only (static functions): include it in one test file each.
 */
#ifndef CAIRN_TESTS_SYNTH_VECTORS_H
#define CAIRN_TESTS_SYNTH_VECTORS_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static double rng_unit(uint64_t *s) { return ((rng_next(s) >> 11) + 0.5) / 9007199254740992.0; }
static float rng_gauss(uint64_t *s)
{
    return (float)(sqrt(-2.0 * log(rng_unit(s))) * cos(6.283185307179586 * rng_unit(s)));
}
static void normalize(float *v, int d)
{
    double n = 0;
    for (int i = 0; i < d; i++)
        n += (double)v[i] * v[i];
    n = sqrt(n);
    for (int i = 0; i < d; i++)
        v[i] = (float)(v[i] / n);
}

/* n unit vectors around n_centers random centres, noise sigma per component. */
static float *clustered(size_t n, int d, int n_centers, float sigma, uint64_t seed)
{
    uint64_t s = seed;
    float *c = malloc((size_t)n_centers * d * sizeof(float));
    float *x = malloc(n * d * sizeof(float));
    for (int i = 0; i < n_centers * d; i++)
        c[i] = rng_gauss(&s);
    for (int i = 0; i < n_centers; i++)
        normalize(c + (size_t)i * d, d);
    for (size_t i = 0; i < n; i++) {
        const float *ci = c + (rng_next(&s) % (uint64_t)n_centers) * d;
        for (int j = 0; j < d; j++)
            x[i * d + j] = ci[j] + sigma * rng_gauss(&s);
        normalize(x + i * d, d);
    }
    free(c);
    return x;
}

#endif
