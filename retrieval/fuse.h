/*
 * retrieval/fuse.h — hybrid search: one ranked list out of the dense and the lexical one.
 *
 * Weighted reciprocal-rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009, with a weight
 * per list): a passage at 1-based rank r_d in the dense list and r_l in the lexical list scores
 *     w_dense / (k_rank + r_d) + w_lex / (k_rank + r_l),
 * a term counting 0 when the passage is absent from that list. Ranks, not scores, are fused:
 * inner products and BM25 live on scales that move with the query. The weights and k_rank are
 * fitted on the training questions (`cairn bench retrieval-quality --fit`; docs/RETRIEVAL.md).
 *
 * Pure functions; any thread.
 */
#ifndef CAIRN_RETRIEVAL_FUSE_H
#define CAIRN_RETRIEVAL_FUSE_H

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

typedef struct {
    double w_dense; /* weight of the dense list, >= 0 */
    double w_lex;   /* weight of the lexical list, >= 0 */
    double k_rank;  /* rank constant, > 0: larger flattens the head of each list */
    int depth;      /* passages taken from each list before fusing, >= 1 */
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
 * Fuses dense[0..n_dense) and lex[0..n_lex) (each best first; only the first p->depth of each
 * count; an id repeated within a list counts at its first rank) into out, best first: at most
 * k entries; returns how many. Ties go to the passage with the better single rank, then the
 * smaller id, so the order is deterministic.
 */
int cairn_fuse(const uint64_t *dense, int n_dense, const uint64_t *lex, int n_lex,
               const cairn_fuse_params *p, cairn_fused *out, int k);

/* "dense", "lexical" or "both" for a from value (anything else: "none"). */
const char *cairn_fuse_from_name(unsigned from);

#endif
