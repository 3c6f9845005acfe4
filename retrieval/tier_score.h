/*
 * retrieval/tier_score.h — the one scoring arithmetic and result order of the tiers (internal:
 * tier.c and tier_host.c; cuda/tier_cuda.cu repeats the arithmetic in a kernel, op for op).
 *
 * The inner product runs four accumulators over dims i mod 4 and sums (s0 + s1) + (s2 + s3);
 * the tail dims (dim mod 4) go to s0. These files are built without -mfma, so no multiply-add
 * is fused and every store that repeats the order scores the same bits. NaN scores -INFINITY.
 * Results are ordered by higher score, then smaller id: a strict total order on distinct ids,
 * so the top k of a set does not depend on the order in which it was scanned.
 */
#ifndef CAIRN_RETRIEVAL_TIER_SCORE_H
#define CAIRN_RETRIEVAL_TIER_SCORE_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    float s;
    int64_t id;
} cairn__titem;

static inline float cairn__tier_dot(const float *a, const float *b, int d)
{
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= d; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < d; i++)
        s0 += a[i] * b[i];
    float s = (s0 + s1) + (s2 + s3);
    return isnan(s) ? -INFINITY : s;
}

/* Strict total order: higher score first, then smaller id. */
static inline bool cairn__tier_better(cairn__titem a, cairn__titem b)
{
    return a.s > b.s || (a.s == b.s && a.id < b.id);
}

/* A bounded heap of at most k items whose root is the worst kept. */
static inline void cairn__tier_heap_push(cairn__titem *h, size_t *n, size_t k, cairn__titem it)
{
    size_t i;
    if (*n < k) {
        i = (*n)++;
        h[i] = it;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!cairn__tier_better(h[p], h[i]))
                break;
            cairn__titem t = h[p];
            h[p] = h[i];
            h[i] = t;
            i = p;
        }
        return;
    }
    if (!cairn__tier_better(it, h[0]))
        return;
    h[0] = it;
    i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < *n && cairn__tier_better(h[w], h[l]))
            w = l;
        if (r < *n && cairn__tier_better(h[w], h[r]))
            w = r;
        if (w == i)
            break;
        cairn__titem t = h[w];
        h[w] = h[i];
        h[i] = t;
        i = w;
    }
}

static inline int cairn__tier_item_cmp(const void *a, const void *b)
{
    cairn__titem x = *(const cairn__titem *)a, y = *(const cairn__titem *)b;
    return cairn__tier_better(x, y) ? -1 : cairn__tier_better(y, x) ? 1 : 0;
}

/* Scans n row-major vectors with their ids into the heap h (size *hn, at most k). */
static inline void cairn__tier_scan_rows(const int64_t *ids, const float *v, size_t n, int dim,
                                         const float *q, cairn__titem *h, size_t *hn, size_t k)
{
    for (size_t i = 0; i < n; i++)
        cairn__tier_heap_push(h, hn, k,
                              (cairn__titem){cairn__tier_dot(q, v + i * (size_t)dim, dim), ids[i]});
}

#endif
