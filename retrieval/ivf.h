/*
 * retrieval/ivf.h — an IVF index of passage vectors (FAISS IndexIVFFlat, inner product).
 *
 * Vectors are L2-normalised embeddings, so inner product is cosine similarity; higher
 * scores are better. The index is trained once (k-means over a sample gives nlist
 * centroids), then vectors are added with the docstore ids of their passages.
 *
 * A saved index is one file: a 64-byte header (magic "CAIRNIVF", version, dim, nlist,
 * count, the uid of the docstore it indexes, payload size and checksum) and FAISS's own
 * serialisation. Loading checks all of that before FAISS parses a byte, and refuses an
 * index built for a different docstore (CAIRN_ESTATE, naming both uids).
 *
 * Threads: searches and the const getters may run concurrently; train, add and remove
 * need exclusive access.
 */
#ifndef CAIRN_RETRIEVAL_IVF_H
#define CAIRN_RETRIEVAL_IVF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

typedef struct cairn_ivf cairn_ivf;

typedef struct {
    int dim;       /* vector dimension (384 for all-MiniLM-L6-v2) */
    size_t nlist;  /* clusters; 0 = cairn_ivf_nlist_for(training set size) */
    size_t nprobe; /* clusters searched when a search passes nprobe 0; 0 = nlist / 8, >= 8 */
} cairn_ivf_params;

/* dim 384, nlist 0 (sized at train time), nprobe 0 (auto). */
cairn_ivf_params cairn_ivf_default_params(void);

/* The nlist used for n training vectors: about 4 * sqrt(n), at most n / 39 (FAISS wants
 * >= 39 points per centroid), within [1, 65536]. */
size_t cairn_ivf_nlist_for(size_t n);

/* A new, untrained index. Returns 0 and *out (caller closes), or CAIRN_EINVAL/ENOMEM. */
int cairn_ivf_new(cairn_ivf **out, const cairn_ivf_params *p, cairn_error *err);

/*
 * An index over lists the caller already holds (a benchmark's synthetic lists, a tier's slow
 * tier): nlist centroids (copied) and, per list c, n[c] ids and n[c] row-major vectors of dim
 * floats, borrowed: they must outlive the index, unchanged. Searches work as on any index;
 * add, remove and save return CAIRN_ESTATE. Returns 0 and *out, or CAIRN_EINVAL, CAIRN_EIO.
 */
int cairn_ivf_borrow(cairn_ivf **out, int dim, size_t nlist, const float *centroids,
                     const int64_t *const *ids, const float *const *vecs, const size_t *n,
                     cairn_error *err);

/*
 * Scans given lists instead of the nearest ones (FAISS search_preassigned): assign holds
 * nq * nprobe list numbers, entries < 0 skipped. scores/ids as cairn_ivf_search. Returns 0,
 * CAIRN_EINVAL (k, or a list number >= nlist), CAIRN_ESTATE (not trained), CAIRN_EIO.
 */
int cairn_ivf_search_preassigned(const cairn_ivf *ivf, const float *q, size_t nq, size_t k,
                                 const int64_t *assign, size_t nprobe, float *scores,
                                 int64_t *ids, cairn_error *err);

/*
 * How FAISS spreads one search call over its OpenMP threads: false (the default) splits a
 * batch by queries, so one query runs on one thread; true splits each query's lists. Needs
 * exclusive access (no search may run at the same time).
 */
int cairn_ivf_set_split_lists(cairn_ivf *ivf, bool split_lists, cairn_error *err);

/* OpenMP threads of the FAISS searches the calling thread makes from now on (n >= 1; 0 leaves
 * them); returns the count before. Other threads keep theirs. */
int cairn_ivf_set_threads(int n);

/* Frees the index. NULL is a no-op. */
void cairn_ivf_close(cairn_ivf *ivf);

/* Trains the coarse quantizer on n vectors (n * dim floats). Returns 0, CAIRN_EINVAL (too
 * few vectors for nlist), CAIRN_ESTATE (already trained), CAIRN_EIO (FAISS failed). */
int cairn_ivf_train(cairn_ivf *ivf, const float *x, size_t n, cairn_error *err);

/* Adds n vectors with their ids (>= 0). Returns 0, CAIRN_ESTATE (not trained), CAIRN_EINVAL. */
int cairn_ivf_add(cairn_ivf *ivf, const float *x, const int64_t *ids, size_t n, cairn_error *err);

/*
 * The k best vectors for each of nq queries, searching nprobe clusters (0 = the index's
 * default). scores and ids hold nq * k entries, best first; unfilled slots get id -1 and
 * score -INFINITY. Returns 0, CAIRN_EINVAL, CAIRN_ESTATE (not trained).
 */
int cairn_ivf_search(const cairn_ivf *ivf, const float *q, size_t nq, size_t k, size_t nprobe,
                     float *scores, int64_t *ids, cairn_error *err);

/* Removes every vector whose id is among ids; *n_removed (may be NULL) gets how many. */
int cairn_ivf_remove(cairn_ivf *ivf, const int64_t *ids, size_t n, size_t *n_removed,
                     cairn_error *err);

/* Writes the index to path (via path.tmp and rename), recording docstore_uid. */
int cairn_ivf_save(const cairn_ivf *ivf, const char *path, uint64_t docstore_uid,
                   cairn_error *err);

/*
 * Loads an index saved by cairn_ivf_save. When expect_uid is not 0 it must equal the uid
 * recorded in the file (CAIRN_ESTATE otherwise). Returns 0 and *out, or CAIRN_ENOTFOUND,
 * CAIRN_EIO, CAIRN_EFORMAT (bad header, checksum, or payload), CAIRN_EUNSUPPORTED, CAIRN_ESTATE.
 */
int cairn_ivf_load(cairn_ivf **out, const char *path, uint64_t expect_uid, cairn_error *err);

int cairn_ivf_dim(const cairn_ivf *ivf);
size_t cairn_ivf_nlist(const cairn_ivf *ivf);   /* 0 before training with nlist 0 */
size_t cairn_ivf_nprobe(const cairn_ivf *ivf);  /* the default nprobe, resolved */
size_t cairn_ivf_count(const cairn_ivf *ivf);   /* vectors in the index */
uint64_t cairn_ivf_docstore_uid(const cairn_ivf *ivf); /* the uid in the loaded file; 0 for a new index */

/* The nlist * dim centroids, borrowed (valid until the index is modified or closed).
 * Returns 0 or CAIRN_ESTATE (not trained). */
int cairn_ivf_centroids(const cairn_ivf *ivf, const float **out, cairn_error *err);

/* Cluster list_no's n vectors (n * dim floats) and ids, borrowed as above. */
int cairn_ivf_list(const cairn_ivf *ivf, size_t list_no, const float **vectors,
                   const int64_t **ids, size_t *n, cairn_error *err);

#endif
