/*
 * retrieval/faiss_ext.h — what cairn needs from FAISS that its C API lacks.
 *
 * Not part of FAISS's C API: these are cairn's own functions (cairn_faiss_ext_*), written
 * in C++ over the same FAISS objects that the C API's handles point to, so they work with
 * the compat file and with a system libfaiss_c alike (both wrap the C++ library).
 * Functions return 0 or -1; the message of the last failure on the calling thread is
 * cairn_faiss_ext_last_error(). No C++ exception crosses into C.
 */
#ifndef CAIRN_RETRIEVAL_FAISS_EXT_H
#define CAIRN_RETRIEVAL_FAISS_EXT_H

#include <stddef.h>
#include <stdint.h>

#include "retrieval/faiss_c_compat.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Message of the last failed cairn_faiss_ext_* call on this thread ("" when none). */
const char *cairn_faiss_ext_last_error(void);

/*
 * IVF search with nprobe given per call (the index's own nprobe is left alone, so
 * concurrent searches with different nprobe are safe). index must be an IndexIVF.
 * distances/labels hold n * k entries; missing results have label -1.
 * Thread-safe against other searches, not against writers of the index.
 */
int cairn_faiss_ext_ivf_search(const FaissIndex *index, idx_t n, const float *x, idx_t k,
                               size_t nprobe, float *distances, idx_t *labels);

/*
 * Raw access to inverted list list_no of an IndexIVFFlat: *vectors gets its n vectors
 * (n * d floats, contiguous) and *ids their n ids. Both point into the index (or into the
 * memory a borrowing index borrows) and stay valid until the index is modified or freed.
 * Returns -1 when index is not an in-memory IndexIVFFlat or list_no is out of range.
 */
int cairn_faiss_ext_ivfflat_list(const FaissIndex *index, size_t list_no, const float **vectors,
                                 const idx_t **ids, size_t *n);

/*
 * A new inner-product IndexIVFFlat (*out, freed with faiss_Index_free) whose nlist
 * centroids are copied but whose inverted lists borrow the caller's memory: list c is n[c]
 * ids and n[c] row-major vectors of d floats, which must stay valid and unchanged while the
 * index lives. Adding to or removing from it fails (read-only lists). parallel_mode is
 * FAISS's IndexIVF::parallel_mode (0: split a batch over queries, 1: over lists).
 */
int cairn_faiss_ext_ivfflat_borrow(FaissIndex **out, int d, size_t nlist, const float *centroids,
                                   const idx_t *const *ids, const float *const *vecs,
                                   const size_t *n, int parallel_mode);

/*
 * IndexIVF::search_preassigned with nprobe given per call: assign holds n * nprobe list
 * numbers (entries < 0 are skipped), x n queries; distances/labels n * k (missing: label -1).
 * With parallel_mode 0 a batch is split over the threads by queries, as IndexIVF::search
 * does (FAISS's search_preassigned alone would run it on one thread).
 * Thread-safe against other searches, not against writers of the index.
 */
int cairn_faiss_ext_ivf_search_preassigned(const FaissIndex *index, idx_t n, const float *x,
                                           idx_t k, const idx_t *assign, size_t nprobe,
                                           float *distances, idx_t *labels);

/* OpenMP threads of the FAISS calls the calling thread makes from now on (n >= 1; 0 leaves
 * them); returns the count before. Other threads keep theirs. */
int cairn_faiss_ext_set_threads(int n);

/* Sets IndexIVF::parallel_mode (not thread-safe against searches of the index). */
int cairn_faiss_ext_ivf_set_parallel_mode(FaissIndex *index, int mode);

#ifdef __cplusplus
}
#endif

#endif
