/*
 * retrieval/fuse.c — hybrid fusion: weighted reciprocal ranks or convex scores (see fuse.h).
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
    /* Fitted on tests/bench/retrieval/questions.jsonl's train half (docs/RETRIEVAL.md). */
    return (cairn_fuse_params){.method = CAIRN_FUSE_CONVEX,
                               .w_dense = 1.0,
                               .w_lex = 0.5,
                               .k_rank = 60.0,
                               .depth = 100,
                               .lex_norm = CAIRN_FUSE_NORM_MAX,
                               .fill = true};
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

const char *cairn_fuse_norm_name(cairn_fuse_norm n)
{
    return n == CAIRN_FUSE_NORM_MAX ? "max" : "minmax";
}

/* x scaled into [0, 1] by lo and hi (1 when they are equal). */
static double minmax(double x, double lo, double hi)
{
    return hi > lo ? (x - lo) / (hi - lo) : 1.0;
}

int cairn_fuse(const uint64_t *dense, const float *dense_scores, int n_dense, const uint64_t *lex,
               const float *lex_scores, const float *lex_dense, int n_lex,
               const cairn_fuse_params *p, cairn_fused *out, int k)
{
    /* per candidate: its dense and lexical scores, when it has them */
    static _Thread_local cairn_fused c[CAND_MAX];
    static _Thread_local float cd[CAND_MAX], cl[CAND_MAX];
    static _Thread_local bool has_d[CAND_MAX];
    int n = 0, depth = p->depth > 0 ? p->depth : 1;
    if (depth > CAND_MAX / 2) depth = CAND_MAX / 2;
    int nd = n_dense < depth ? n_dense : depth, nl = n_lex < depth ? n_lex : depth;
    bool convex = p->method == CAIRN_FUSE_CONVEX;
    bool fill = convex && p->fill && lex_dense && dense_scores;
    for (int i = 0; i < nd; i++) {
        int before = n;
        cairn_fused *f = candidate(c, &n, dense[i]);
        if (!f || f->dense_rank) continue;
        size_t at = (size_t)(f - c);
        if (n > before) has_d[at] = false;
        f->dense_rank = i + 1;
        f->from |= CAIRN_FUSE_DENSE;
        /* a NaN score (a query embedding gone bad) counts as none: NaN must not reach the
         * range, the comparator or the response */
        if (dense_scores && dense_scores[i] == dense_scores[i])
            cd[at] = dense_scores[i], has_d[at] = true;
    }
    for (int i = 0; i < nl; i++) {
        int before = n;
        cairn_fused *f = candidate(c, &n, lex[i]);
        if (!f || f->lex_rank) continue;
        size_t at = (size_t)(f - c);
        if (n > before) has_d[at] = false;
        f->lex_rank = i + 1;
        f->from |= CAIRN_FUSE_LEXICAL;
        if (lex_scores) cl[at] = lex_scores[i];
        if (fill && !f->dense_rank && lex_dense[i] == lex_dense[i]) /* not NaN */
            cd[at] = lex_dense[i], has_d[at] = true;
    }
    /* convex: each side's range over the candidates that have its score */
    double dlo = 0, dhi = 0, llo = 0, lhi = 0;
    bool any_d = false, any_l = false;
    for (int j = 0; convex && j < n; j++) {
        if (has_d[j]) {
            if (!any_d || cd[j] < dlo) dlo = cd[j];
            if (!any_d || cd[j] > dhi) dhi = cd[j];
            any_d = true;
        }
        if (c[j].lex_rank && lex_scores) {
            if (!any_l || cl[j] < llo) llo = cl[j];
            if (!any_l || cl[j] > lhi) lhi = cl[j];
            any_l = true;
        }
    }
    /* scaled by the maximum: a passage the list does not hold scored at most its lowest score
     * when the list was cut at depth, nothing when it held every match */
    bool by_max = p->lex_norm == CAIRN_FUSE_NORM_MAX && lhi > 0 && llo >= 0;
    double floor_l = by_max && n_lex >= depth ? llo / lhi : 0.0;
    double kr = p->k_rank > 0 ? p->k_rank : 1.0;
    for (int j = 0; j < n; j++) {
        cairn_fused *f = &c[j];
        double s = 0;
        if (!convex) {
            if (f->dense_rank) s += p->w_dense / (kr + f->dense_rank);
            if (f->lex_rank) s += p->w_lex / (kr + f->lex_rank);
        } else {
            if (has_d[j]) s += p->w_dense * minmax(cd[j], dlo, dhi);
            if (f->lex_rank && lex_scores)
                s += p->w_lex * (by_max ? cl[j] / lhi : minmax(cl[j], llo, lhi));
            else if (!f->lex_rank)
                s += p->w_lex * floor_l;
        }
        f->score = (float)s;
    }
    qsort(c, (size_t)n, sizeof *c, cmp_fused);
    int m = n < k ? n : k;
    for (int i = 0; i < m; i++) out[i] = c[i];
    return m < 0 ? 0 : m;
}
