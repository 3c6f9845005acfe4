/*
 * tests/bench/cuda/rag_index.c — the synthetic index and query pairs of the GPU retrieval
 * benchmarks.
 *
 * The index: 768-d, IVF4096, fp32 vectors in page-locked host memory (the slow tier: "host
 * RAM", copied from by DMA). Centroids have a three-level structure like topics in a real
 * embedding space: 8 super-topics, 64 topics, 4096 centres, centre = normalize(0.55 S + 0.55 T
 * + 0.63 g) (g ~ N(0, I/d)), so a centre shares cosine ~0.6 with the other centres of its topic
 * and ~0.3 with those of its super-topic. List sizes are log-normal (sigma 0.5) around the
 * mean, as IVF lists are unbalanced. A vector of list c is normalize(centre_c + g) (cosine
 * ~0.71 to its centre), made on the GPU (synth_ivf.cu); it is filed under its own centre (no
 * k-means: the assignment is the generating centre, which is also nearly always the nearest).
 *
 * Query pairs: q1 (the rewrite, which is searched) is made as a vector is, around a random
 * centre; q0 (the question as first seen, which is prefetched for) is normalize(rho q1 +
 * sqrt(1 - rho^2) u) with u a random unit vector orthogonal to q1, so cos(q0, q1) = rho
 * exactly. rho is drawn from the distribution measured on real pairs with all-MiniLM-L6-v2:
 * 600 Debian packages spread over the default corpus, q0 = "Which Debian package provides
 * <synopsis>?", q1 = the synopsis (the repository's lookahead pair, see bench_retrieval.c):
 * mean 0.866, 10-90% 0.81-0.91; or q1 = the package's long description (a HyDE-like
 * document): mean 0.620, 10-90% 0.44-0.78.
 */
#include "tests/bench/cuda/rag_index.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/clock.h"
#include "common/rand.h"
#include "retrieval/tier_store.h"
#include "tests/bench/cuda/synth_ivf.h"

/* Quantiles 0, 5, ..., 100% of cos(q0, q1) over the 600 real pairs (see the top). */
static const double RHO_REWRITE[21] = {0.6922, 0.7846, 0.8086, 0.8213, 0.8340, 0.8427, 0.8494,
                                       0.8561, 0.8628, 0.8681, 0.8731, 0.8769, 0.8834, 0.8875,
                                       0.8926, 0.8972, 0.9029, 0.9068, 0.9144, 0.9219, 0.9532};
static const double RHO_HYDE[21] = {0.1875, 0.3791, 0.4374, 0.4716, 0.5114, 0.5425, 0.5610,
                                    0.5781, 0.5934, 0.6099, 0.6293, 0.6450, 0.6616, 0.6827,
                                    0.7024, 0.7256, 0.7399, 0.7552, 0.7789, 0.8167, 0.9165};

double rag_gauss(uint64_t *s)
{
    double u1 = ((double)(cairn_rand_next(s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = ((double)(cairn_rand_next(s) >> 11) + 0.5) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void rag_normalize(float *v, int d)
{
    double n = 0;
    for (int i = 0; i < d; i++)
        n += (double)v[i] * v[i];
    n = sqrt(n);
    for (int i = 0; i < d; i++)
        v[i] = (float)(v[i] / n);
}

static void random_unit(float *v, uint64_t *s)
{
    for (int j = 0; j < RAG_DIM; j++)
        v[j] = (float)rag_gauss(s);
    rag_normalize(v, RAG_DIM);
}

int rag_index_make(rag_index *x, int device, double gib, uint64_t seed, char *why,
                   size_t why_len)
{
    uint64_t s = seed;
    float *sup = malloc(8 * RAG_DIM * sizeof(float)), *top = malloc(64 * RAG_DIM * sizeof(float));
    x->cent = malloc((size_t)RAG_NLIST * RAG_DIM * sizeof(float));
    x->n = malloc(RAG_NLIST * sizeof(size_t));
    x->ids = malloc(RAG_NLIST * sizeof(int64_t *));
    x->vecs = malloc(RAG_NLIST * sizeof(float *));
    double *w = malloc(RAG_NLIST * sizeof(double)), sum = 0;
    x->pinned = NULL;
    if (!sup || !top || !x->cent || !x->n || !x->ids || !x->vecs || !w) {
        snprintf(why, why_len, "out of memory");
        free(sup);
        free(top);
        free(w);
        return -1;
    }
    for (int i = 0; i < 8; i++)
        random_unit(sup + i * RAG_DIM, &s);
    for (int i = 0; i < 64; i++)
        random_unit(top + i * RAG_DIM, &s);
    for (size_t c = 0; c < RAG_NLIST; c++) {
        float *v = x->cent + c * RAG_DIM;
        for (int j = 0; j < RAG_DIM; j++)
            v[j] = 0.55f * sup[(c / 512) * RAG_DIM + j] + 0.55f * top[(c / 64) * RAG_DIM + j] +
                   0.63f * (float)(rag_gauss(&s) / sqrt((double)RAG_DIM));
        rag_normalize(v, RAG_DIM);
    }
    free(sup);
    free(top);
    size_t per = 8 + 4 * RAG_DIM, want = (size_t)(gib * 1073741824.0 / (4.0 * RAG_DIM));
    for (size_t c = 0; c < RAG_NLIST; c++)
        sum += (w[c] = exp(0.5 * rag_gauss(&s)));
    x->n_total = 0;
    for (size_t c = 0; c < RAG_NLIST; c++)
        x->n_total += (x->n[c] = (size_t)((double)want * w[c] / sum) + 1);
    free(w);
    x->total_bytes = x->n_total * per;
    double t0 = cairn_now_sec();
    x->pinned = cairn_tier_pinned_alloc(device, x->total_bytes, why, why_len);
    if (!x->pinned)
        return -1;
    size_t at = 0;
    int64_t id = 0;
    for (size_t c = 0; c < RAG_NLIST; c++) {
        x->ids[c] = (int64_t *)(x->pinned + at);
        for (size_t r = 0; r < x->n[c]; r++)
            x->ids[c][r] = id++;
        at += 8 * x->n[c];
        x->vecs[c] = (float *)(x->pinned + at);
        at += 4 * RAG_DIM * x->n[c];
    }
    if (cairn_bench_synth_lists(device, RAG_DIM, RAG_NLIST, x->cent, x->n, 1.0f, seed, x->vecs,
                                why, why_len))
        return -1;
    x->gen_s = cairn_now_sec() - t0;
    return 0;
}

void rag_index_free(rag_index *x)
{
    cairn_tier_pinned_free(x->pinned);
    free(x->cent);
    free(x->n);
    free(x->ids);
    free(x->vecs);
}

void rag_make_pairs(const rag_index *x, rag_pairs_kind kind, size_t n, float *q0, float *q1,
                    double *rho_out, uint64_t *s)
{
    const double *rq = kind == RAG_PAIRS_HYDE ? RHO_HYDE : RHO_REWRITE;
    float u[RAG_DIM];
    for (size_t i = 0; i < n; i++) {
        float *a = q1 + i * RAG_DIM, *b = q0 + i * RAG_DIM;
        const float *c = x->cent + (cairn_rand_next(s) % RAG_NLIST) * RAG_DIM;
        for (int j = 0; j < RAG_DIM; j++)
            a[j] = c[j] + (float)(rag_gauss(s) / sqrt((double)RAG_DIM));
        rag_normalize(a, RAG_DIM);
        double p = (double)(cairn_rand_next(s) >> 11) / 9007199254740992.0 * 20.0;
        int lo = (int)p;
        double rho = lo >= 20 ? rq[20] : rq[lo] + (p - lo) * (rq[lo + 1] - rq[lo]);
        random_unit(u, s);
        double d = 0;
        for (int j = 0; j < RAG_DIM; j++)
            d += (double)u[j] * a[j];
        for (int j = 0; j < RAG_DIM; j++)
            u[j] -= (float)(d * a[j]);
        rag_normalize(u, RAG_DIM);
        for (int j = 0; j < RAG_DIM; j++)
            b[j] = (float)(rho * a[j] + sqrt(1.0 - rho * rho) * u[j]);
        rag_normalize(b, RAG_DIM);
        if (rho_out)
            rho_out[i] = rho;
    }
}
