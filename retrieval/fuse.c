/*
 * retrieval/fuse.c — weighted reciprocal-rank fusion (see fuse.h).
 *
 * Lists are short (depth, a few dozen), so candidates are merged by a linear scan rather than a
 * hash, in a caller-free stack array bounded by CAND_MAX.
 */
#include "retrieval/fuse.h"

#include <stdlib.h>
#include <string.h>

#define CAND_MAX 2048 /* 2 x the largest depth taken */

cairn_fuse_params cairn_fuse_default_params(void)
{
    /* Fitted on tests/bench/questions.jsonl's train half (docs/RETRIEVAL.md). */
    return (cairn_fuse_params){
        .method = CAIRN_FUSE_CONVEX, .w_dense = 1.0, .w_lex = 1.5, .k_rank = 60.0, .depth = 100};
}

const char *cairn_search_mode_name(cairn_search_mode m)
{
    return m == CAIRN_SEARCH_DENSE ? "dense" : m == CAIRN_SEARCH_LEXICAL ? "lexical" : "hybrid";
}

int cairn_search_mode_parse(const char *s, cairn_search_mode *out, cairn_error *err)
{
    if (s && !strcmp(s, "hybrid")) *out = CAIRN_SEARCH_HYBRID;
    else if (s && !strcmp(s, "dense")) *out = CAIRN_SEARCH_DENSE;
    else if (s && !strcmp(s, "lexical")) *out = CAIRN_SEARCH_LEXICAL;
    else
        return cairn_errorf(err, CAIRN_EINVAL, "'%.32s' is not one of hybrid, dense, lexical",
                            s ? s : "");
    return 0;
}

const char *cairn_fuse_from_name(unsigned from)
{
    switch (from) {
    case CAIRN_FUSE_DENSE: return "dense";
    case CAIRN_FUSE_LEXICAL: return "lexical";
    case CAIRN_FUSE_DENSE | CAIRN_FUSE_LEXICAL: return "both";
    default: return "none";
    }
}

static int best_rank(const cairn_fused *f)
{
    int d = f->dense_rank ? f->dense_rank : 1 << 30, l = f->lex_rank ? f->lex_rank : 1 << 30;
    return d < l ? d : l;
}

static int cmp_fused(const void *a, const void *b)
{
    const cairn_fused *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    int rx = best_rank(x), ry = best_rank(y);
    if (rx != ry) return rx < ry ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* The candidate for id, appended when new; NULL when the array is full. */
static cairn_fused *candidate(cairn_fused *c, int *n, uint64_t id)
{
    for (int i = 0; i < *n; i++)
        if (c[i].id == id) return &c[i];
    if (*n == CAND_MAX) return NULL;
    c[*n] = (cairn_fused){.id = id};
    return &c[(*n)++];
}

const char *cairn_fuse_method_name(cairn_fuse_method m)
{
    return m == CAIRN_FUSE_CONVEX ? "convex" : "rrf";
}

/* What the passage at 0-based rank i of a list adds before its weight; lo and hi are the
 * list's smallest and largest score (convex). */
static double contribution(const cairn_fuse_params *p, const float *sc, float lo, float hi, int i)
{
    if (p->method != CAIRN_FUSE_CONVEX) return 1.0 / ((p->k_rank > 0 ? p->k_rank : 1.0) + i + 1);
    if (!sc) return 0.0;
    return hi > lo ? ((double)sc[i] - lo) / ((double)hi - lo) : 1.0;
}

static void score_range(const float *sc, int n, float *lo, float *hi)
{
    *lo = *hi = sc && n ? sc[0] : 0.0f;
    for (int j = 1; sc && j < n; j++) {
        if (sc[j] < *lo) *lo = sc[j];
        if (sc[j] > *hi) *hi = sc[j];
    }
}

int cairn_fuse(const uint64_t *dense, const float *dense_scores, int n_dense, const uint64_t *lex,
               const float *lex_scores, int n_lex, const cairn_fuse_params *p, cairn_fused *out,
               int k)
{
    static _Thread_local cairn_fused c[CAND_MAX];
    int n = 0, depth = p->depth > 0 ? p->depth : 1;
    if (depth > CAND_MAX / 2) depth = CAND_MAX / 2;
    int nd = n_dense < depth ? n_dense : depth, nl = n_lex < depth ? n_lex : depth;
    float dlo, dhi, llo, lhi;
    score_range(dense_scores, nd, &dlo, &dhi);
    score_range(lex_scores, nl, &llo, &lhi);
    for (int i = 0; i < nd; i++) {
        cairn_fused *f = candidate(c, &n, dense[i]);
        if (!f || f->dense_rank) continue;
        f->dense_rank = i + 1;
        f->from |= CAIRN_FUSE_DENSE;
        f->score += (float)(p->w_dense * contribution(p, dense_scores, dlo, dhi, i));
    }
    for (int i = 0; i < nl; i++) {
        cairn_fused *f = candidate(c, &n, lex[i]);
        if (!f || f->lex_rank) continue;
        f->lex_rank = i + 1;
        f->from |= CAIRN_FUSE_LEXICAL;
        f->score += (float)(p->w_lex * contribution(p, lex_scores, llo, lhi, i));
    }
    qsort(c, (size_t)n, sizeof *c, cmp_fused);
    int m = n < k ? n : k;
    for (int i = 0; i < m; i++) out[i] = c[i];
    return m < 0 ? 0 : m;
}
