/*
 * common/rand.h — the one small PRNG for code that needs reproducible noise (synthetic
 * weights, benchmarks, tests): splitmix64 (Steele, Lea and Flood, "Fast splittable
 * pseudorandom number generators", OOPSLA 2014). Not for anything secret. The state is the
 * caller's; functions are thread-safe on distinct states.
 */
#ifndef CAIRN_COMMON_RAND_H
#define CAIRN_COMMON_RAND_H

#include <stdint.h>

/* The next 64 random bits; advances *state. */
static inline uint64_t cairn_rand_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A uniform float in [-1, 1). */
static inline float cairn_rand_sym(uint64_t *state)
{
    return (float)((double)(cairn_rand_next(state) >> 40) / (double)(1ull << 23) - 1.0);
}

#endif
