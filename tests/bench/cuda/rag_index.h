/* tests/bench/cuda/rag_index.h — the synthetic 768-d IVF4096 index and question -> rewrite
 * query pairs of the GPU retrieval benchmarks (bench_cuda_retrieval, bench_cuda_rag); see
 * rag_index.c for how they are made. */
#ifndef CAIRN_TESTS_BENCH_CUDA_RAG_INDEX_H
#define CAIRN_TESTS_BENCH_CUDA_RAG_INDEX_H

#include <stddef.h>
#include <stdint.h>

#define RAG_DIM 768
#define RAG_NLIST 4096

typedef struct {
    size_t n_total, total_bytes;
    float *cent;     /* RAG_NLIST * RAG_DIM */
    size_t *n;
    int64_t **ids;
    float **vecs;
    uint8_t *pinned; /* one page-locked block holding every list (ids, then vectors, per list) */
    double gen_s;
} rag_index;

/* Which measured distribution cos(q0, q1) follows: a rewrite (question -> synopsis) or a
 * HyDE-like document (question -> long description). */
typedef enum { RAG_PAIRS_REWRITE = 0, RAG_PAIRS_HYDE = 1 } rag_pairs_kind;

/* Makes the index on GPU `device`: gib GiB of fp32 vectors. 0, or -1 with why. */
int rag_index_make(rag_index *x, int device, double gib, uint64_t seed, char *why,
                   size_t why_len);
void rag_index_free(rag_index *x);

/* n pairs: q1 (searched) near a random centre, as a vector is; q0 (prefetched for) at cosine
 * rho from q1, rho drawn from the measured distribution of `kind` (rho_out may be NULL). */
void rag_make_pairs(const rag_index *x, rag_pairs_kind kind, size_t n, float *q0, float *q1,
                    double *rho_out, uint64_t *s);

/* A standard normal draw, and v scaled to unit length. */
double rag_gauss(uint64_t *s);
void rag_normalize(float *v, int d);

#endif
