/*
 * retrieval/fuse.h — hybrid search: one ranked list out of the dense and the lexical one.
 *
 * Two ways, both with a weight per list, a term counting 0 when the passage is absent from that
 * list:
 *  - rrf: weighted reciprocal-rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): a passage
 *    at 1-based rank r_d in the dense list and r_l in the lexical list scores
 *        w_dense / (k_rank + r_d) + w_lex / (k_rank + r_l);
 *  - convex: a convex combination of min-max normalised scores (Bruch, Gai and Ingber, "An
 *    Analysis of Fusion Functions for Hybrid Retrieval", ACM TOIS 2023):
 *        w_dense * (s_d - min_d) / (max_d - min_d) + w_lex * (s_l - min_l) / (max_l - min_l),
 *    min and max over the `depth` passages taken from that list (a list of one scores it 1).
 *    Unlike ranks, scores keep how far ahead a list's first passage is.
 *    Two refinements of convex (Bruch et al. again: normalisation decides how lists mix):
 *    - fill: a passage the lexical list found but the dense list did not is scored by its
 *      exact dense similarity (the caller computes it from the passage's stored vector), and
 *      the dense min and max are taken over these too. Without it such a passage counts 0 on
 *      the dense side, as if it were the dense list's worst, and a lexical match on a few
 *      incidental words of a long question outranks the dense list's best passage.
 *    - lexical scores scaled by the list's maximum (s / max_l, BM25's theoretical minimum
 *      being 0) instead of min-max: a weak best match is not stretched to 1. A passage the
 *      lexical list does not hold scores the list's lowest score when the list was cut at
 *      `depth` (its BM25 is at most that), 0 when the list held every match. Scores that are
 *      not all >= 0 with a positive maximum (not BM25's) fall back to min-max.
 * The method, weights, k_rank and depth are fitted on the training questions (`cairn bench
 * retrieval-quality --fit`; docs/RETRIEVAL.md).
 *
 * Pure functions; any thread.
 */
#ifndef CAIRN_RETRIEVAL_FUSE_H
#define CAIRN_RETRIEVAL_FUSE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"

/* Which index a search asks: both, fused (the default), or one of them. */
typedef enum {
    CAIRN_SEARCH_HYBRID = 0,
    CAIRN_SEARCH_DENSE,
    CAIRN_SEARCH_LEXICAL,
} cairn_search_mode;

/* "hybrid", "dense", "lexical". */
const char *cairn_search_mode_name(cairn_search_mode m);
/* The mode named s; 0 or CAIRN_EINVAL (the message names the three). */
int cairn_search_mode_parse(const char *s, cairn_search_mode *out, cairn_error *err);

typedef enum { CAIRN_FUSE_RRF = 0, CAIRN_FUSE_CONVEX } cairn_fuse_method;

/* How convex scales the lexical list's scores: min-max, or by the maximum alone. */
typedef enum { CAIRN_FUSE_NORM_MINMAX = 0, CAIRN_FUSE_NORM_MAX } cairn_fuse_norm;

typedef struct {
    cairn_fuse_method method;
    double w_dense; /* weight of the dense list, >= 0 */
    double w_lex;   /* weight of the lexical list, >= 0 */
    double k_rank;  /* rrf's rank constant, > 0: larger flattens the head of each list */
    int depth;      /* passages taken from each list before fusing, >= 1 */
    cairn_fuse_norm lex_norm; /* convex: the lexical scores' scaling */
    bool fill;      /* convex: lexical-only passages score their dense similarity (lex_dense) */
} cairn_fuse_params;

/* The fitted defaults (docs/RETRIEVAL.md gives the fit). */
cairn_fuse_params cairn_fuse_default_params(void);

/* Which list(s) a fused passage came from: bits. */
enum { CAIRN_FUSE_DENSE = 1, CAIRN_FUSE_LEXICAL = 2 };

typedef struct {
    uint64_t id;
    float score;    /* the fused score */
    int dense_rank; /* 1-based rank in the dense list; 0: not in it */
    int lex_rank;   /* 1-based rank in the lexical list; 0: not in it */
    unsigned from;  /* CAIRN_FUSE_* bits */
} cairn_fused;

/*
 * Fuses dense[0..n_dense) and lex[0..n_lex) (each best first, with their scores, higher
 * better; the scores may be NULL for rrf; only the first p->depth of each count; an id
 * repeated within a list counts at its first rank) into out, best first: at most k entries;
 * returns how many. lex_dense (may be NULL; used with convex and p->fill) holds the dense
 * similarity of each lexical passage, NaN where it is unknown (such a passage counts 0 on the
 * dense side); entries of passages the dense list holds are ignored. A NaN in dense_scores
 * counts 0 on the dense side too (convex), never NaN in the result. Ties go to the passage
 * with the better single rank, then the smaller id, so the order is deterministic.
 */
int cairn_fuse(const uint64_t *dense, const float *dense_scores, int n_dense, const uint64_t *lex,
               const float *lex_scores, const float *lex_dense, int n_lex,
               const cairn_fuse_params *p, cairn_fused *out, int k);

/* "rrf" or "convex". */
const char *cairn_fuse_method_name(cairn_fuse_method m);

/* "minmax" or "max". */
const char *cairn_fuse_norm_name(cairn_fuse_norm n);

/* "dense", "lexical" or "both" for a from value (anything else: "none"). */
const char *cairn_fuse_from_name(unsigned from);

#endif
