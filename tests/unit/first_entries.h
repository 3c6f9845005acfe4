/*
 * tests/unit/first_entries.h — a logits row's first k entries as the tests work them out
 * (test_sample.c, test_backend_ops.c): the finite and +inf logits sorted by cairn_sample's
 * order (the larger logit first, ties by the lower id; -0 and +0 tie), the rest of the k as
 * {-inf, -1}: what a GPU's logits_pick must send back, and what the sampler draws from.
 * Header-only (static functions): include it in one test file each.
 */
#ifndef CAIRN_TESTS_FIRST_ENTRIES_H
#define CAIRN_TESTS_FIRST_ENTRIES_H

#include <math.h>
#include <stdlib.h>

#include "generation/sample.h"

static int first_entries_order(const void *a, const void *b)
{
    const cairn_cand *e = a, *f = b;
    if (e->logit != f->logit)
        return e->logit > f->logit ? -1 : 1;
    return (e->id > f->id) - (e->id < f->id);
}

static void first_entries(const float *l, int n, int k, cairn_cand *out)
{
    cairn_cand *all = malloc(sizeof *all * (size_t)(n > 0 ? n : 1));
    if (!all)
        abort();
    int m = 0;
    for (int i = 0; i < n; i++)
        if (l[i] > -INFINITY) /* NaN compares false */
            all[m++] = (cairn_cand){l[i], i};
    qsort(all, (size_t)m, sizeof *all, first_entries_order);
    for (int j = 0; j < k; j++)
        out[j] = j < m ? all[j] : (cairn_cand){-INFINITY, -1};
    free(all);
}

#endif
