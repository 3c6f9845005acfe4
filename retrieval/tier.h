/*
 * retrieval/tier.h — IVF clusters in two tiers, with lookahead prefetch and hybrid search.
 *
 * After TeleRAG (MLSys 2026): the slow tier holds every cluster of an IVF index — a file
 * (centroids, then each list's ids and vectors contiguously) mmap'ed read-only, or lists in
 * host memory the caller lends (cairn_tier_open_mem). The fast tier is a bounded cache of whole
 * clusters: RAM (device -1, the host store) or GPU memory (device N, the CUDA store); the
 * memory sits behind retrieval/tier_store.h, this file keeps the policy.
 *
 * Lookahead: cairn_tier_prefetch(q0, budget) ranks clusters by q0's similarity to their
 * centroids and copies them into the fast tier in rank order on the tier's I/O thread,
 * until the byte budget is spent, the fast tier can take no more, or it is cancelled (a
 * newer prefetch cancels an older one). When space runs out it evicts the coldest clusters
 * (hotness: probes, decayed per search) that this prefetch did not bring, and compacts the
 * fast tier in place when free space is fragmented (device-to-device moves on a GPU).
 *
 * Hybrid search: cairn_tier_search(q1, k, nprobe) picks q1's nprobe nearest centroids;
 * probed clusters resident in the fast tier are scanned there (on the GPU: only those
 * clusters, with the top k chosen on the GPU) while the others (misses) are scanned from the
 * slow tier on the tier's search worker at the same time; the two top-k lists merge into one.
 * With miss_split, some misses go to the fast tier's store instead, which copies them on
 * demand into staging space (on a GPU: the copy engine, beside the hit scan) and scans them
 * with the hits; the split balances the store's copy rate against the worker's scan rate so
 * both finish together, and a cluster that several queries of a batch miss is copied once. The fast
 * tier scores a vector with the same arithmetic as the slow-tier scan and ties break by
 * smaller id, so with the tier's own miss scan (the default) and fp32 vectors the answer does
 * not depend on what was prefetched — prefetch changes speed, never results. With FAISS for
 * the misses (miss_faiss) the misses' scores may differ in the last bits (FAISS sums in
 * another order): ids then equal the tier's own except where scores tie within ~1e-6.
 *
 * The slow tier is a snapshot of the index when it was built: rebuild it after adds or
 * removes. Threads: every function is thread-safe; searches are serialised with each
 * other, and may run while a prefetch is in flight.
 */
#ifndef CAIRN_RETRIEVAL_TIER_H
#define CAIRN_RETRIEVAL_TIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "retrieval/ivf.h"
#include "retrieval/tier_store.h"

typedef struct cairn_tier cairn_tier;

/* The largest k a search returns: what a store's scan returns per query. */
#define CAIRN_TIER_MAX_K CAIRN_TIER_STORE_MAX_K

/* How the fast tier is run: cairn's way, or TeleRAG's reproduced for comparison (its released
 * code: every search scans the whole fast tier, keeping only the probed clusters' results; a
 * prefetch waits for each cluster's copy before the next; an eviction re-copies every cluster
 * kept from the slow tier instead of moving it). Answers are the same either way. */
enum { CAIRN_TIER_CAIRN = 0, CAIRN_TIER_TELERAG = 1 };

/* Who scans the misses (probed clusters not in the fast tier). CPU: the tier's search worker,
 * from the slow tier. SPLIT: the store copies some of them on demand into its staging space
 * and scans them itself (on a GPU: the copy engine and the SMs) while the worker scans the
 * rest; the split balances the two by their rates (the store's copy rate measured at open,
 * the worker's scan rate measured on earlier searches), taking first the clusters that most
 * queries of a batch probe (one copy serves them all). STORE: every miss goes to the store
 * (tests). Answers are the same whichever scans what. TeleRAG's mode always uses CPU. */
enum { CAIRN_TIER_MISS_CPU = 0, CAIRN_TIER_MISS_SPLIT = 1, CAIRN_TIER_MISS_STORE = 2 };

typedef struct {
    size_t fast_bytes;  /* capacity of the fast tier (bytes), >= 1 */
    bool miss_worker;   /* scan misses on the worker thread, beside the hit scan (true) */
    double hot_decay;   /* hotness kept per search, in (0, 1] (0.98) */
    int device;         /* -1: the fast tier is RAM; N >= 0: GPU N's memory (-1) */
    bool fp16;          /* GPU fast tier: vectors as IEEE half, scores approximate (false) */
    bool miss_faiss;    /* scan misses with FAISS search_preassigned, not the tier's own scan
                           (false; see above for what it changes) */
    bool slow_in_ram;   /* a file's lists are read into host memory at open (page-locked
                           when the fast tier is a GPU, so copies are DMA) (false) */
    size_t max_batch;   /* queries a search call handles at once; larger batches are split
                           (32) */
    int mode;           /* CAIRN_TIER_CAIRN or CAIRN_TIER_TELERAG */
    int miss_split;     /* CAIRN_TIER_MISS_* (SPLIT) */
    size_t stage_bytes; /* the store's staging space for misses it scans (64 MiB; a cluster
                           larger than half of it always goes to the CPU) */
} cairn_tier_params;

/* fast_bytes 64 MiB, miss_worker true, hot_decay 0.98, device -1, max_batch 32, miss_split
 * SPLIT, stage_bytes 64 MiB, the rest false / CAIRN_TIER_CAIRN. */
cairn_tier_params cairn_tier_default_params(void);

/* A slow tier in host memory, lent by the caller: list c is n[c] ids and n[c] row-major
 * vectors of dim floats. */
typedef struct {
    int dim;
    size_t nlist;
    const float *centroids;     /* nlist * dim floats */
    const int64_t *const *ids;  /* nlist pointers */
    const float *const *vecs;   /* nlist pointers */
    const size_t *n;            /* nlist counts */
    bool pinned;                /* the lists are page-locked (cairn_tier_pinned_alloc) */
} cairn_tier_mem;

/*
 * Writes the slow-tier file for ivf to path (via path.tmp and rename), recording
 * docstore_uid. Returns 0 or CAIRN_ESTATE (untrained index), CAIRN_EIO.
 */
int cairn_tier_build(const cairn_ivf *ivf, const char *path, uint64_t docstore_uid,
                     cairn_error *err);

/*
 * Opens a slow-tier file (mmap; every offset and count validated), allocates the fast tier
 * and starts the I/O and search threads. expect_uid, when not 0, must match the file's.
 * Returns 0 and *out (the caller closes it), or CAIRN_ENOTFOUND, CAIRN_EIO, CAIRN_EFORMAT,
 * CAIRN_ESTATE (other docstore), CAIRN_EINVAL (params), CAIRN_ENOMEM, and what the fast
 * tier's store returns (CAIRN_EUNSUPPORTED: no CUDA in this build or no such GPU;
 * CAIRN_EDEVICE).
 */
int cairn_tier_open(cairn_tier **out, const char *path, const cairn_tier_params *p,
                    uint64_t expect_uid, cairn_error *err);

/*
 * Opens a tier over lists in host memory (m's arrays are copied; the centroids and the lists
 * themselves are borrowed and must outlive the tier, unchanged). Returns 0 and *out, or
 * CAIRN_EINVAL (m or params), CAIRN_ENOMEM, and what the fast tier's store returns
 * (CAIRN_EUNSUPPORTED: no CUDA in this build or no such GPU; CAIRN_EDEVICE).
 */
int cairn_tier_open_mem(cairn_tier **out, const cairn_tier_mem *m, const cairn_tier_params *p,
                        cairn_error *err);

/* Cancels any prefetch, stops the threads, frees everything. NULL is a no-op. */
void cairn_tier_close(cairn_tier *t);

/*
 * Starts prefetching for q0 (dim floats, copied) and returns at once: at most budget_bytes
 * of clusters not yet resident are copied, in rank order, stopping at the first that would
 * exceed the budget; max_clusters (0 = no limit) bounds how many top-ranked clusters are
 * considered. A prefetch still running is cancelled first. Returns 0 or CAIRN_EINVAL.
 */
int cairn_tier_prefetch(cairn_tier *t, const float *q0, size_t budget_bytes, size_t max_clusters,
                        cairn_error *err);

/*
 * The same for the nq (<= max_batch) queries of a batch, sharing the budget. In TeleRAG's
 * mode, or without max_clusters, their rankings are interleaved (every query's best cluster,
 * then every query's second, ...). In cairn's, with max_clusters, the clusters come in the
 * order of how many queries rank them among their first max_clusters (then the best rank any
 * query gives them): a cluster several queries will probe serves all of them from one copy.
 */
int cairn_tier_prefetch_batch(cairn_tier *t, const float *q0, size_t nq, size_t budget_bytes,
                              size_t max_clusters, cairn_error *err);

/*
 * The bytes a prefetch can move in `seconds` (the predicted duration of the generation it
 * overlaps, e.g. the scheduler's estimate of the rewrite or HyDE tokens): the store's copy
 * rate measured at open times seconds. SIZE_MAX when the store has no measured rate (RAM), 0
 * when seconds <= 0. Thread-safe.
 */
size_t cairn_tier_budget_for(const cairn_tier *t, double seconds);

/* The store's copy rate from page-locked host memory, bytes per second, measured at open (0:
 * not known). */
double cairn_tier_copy_rate(const cairn_tier *t);

/* Cancels the running prefetch (if any) and waits until the I/O thread has stopped it. */
void cairn_tier_cancel(cairn_tier *t);

/* Waits until no prefetch is running (it finished, ran out of budget or was cancelled) and
 * what it copied has landed in the fast tier. */
void cairn_tier_wait(cairn_tier *t);

/*
 * The k (<= CAIRN_TIER_MAX_K) best vectors for q1 among its nprobe (clamped to nlist)
 * nearest clusters: scores and ids hold k entries, best first (ties: smaller id first);
 * unfilled slots get id -1 and score -INFINITY. Returns 0 or CAIRN_EINVAL.
 */
int cairn_tier_search(cairn_tier *t, const float *q1, size_t k, size_t nprobe, float *scores,
                      int64_t *ids, cairn_error *err);

/*
 * The same for nq queries (nq * dim floats): scores and ids hold nq * k entries, query i's at
 * i * k. Returns 0, CAIRN_EINVAL, or a fast-tier error (CAIRN_EDEVICE: a CUDA call failed;
 * err names it).
 */
int cairn_tier_search_batch(cairn_tier *t, const float *q1, size_t nq, size_t k, size_t nprobe,
                            float *scores, int64_t *ids, cairn_error *err);

/* Drops every cluster from the fast tier (cancelling any prefetch first). */
void cairn_tier_clear_fast(cairn_tier *t);

typedef struct {
    uint64_t searches;
    uint64_t probed;             /* clusters probed over all searches */
    uint64_t hits;               /* of them, found in the fast tier */
    uint64_t prefetches;         /* prefetch calls */
    uint64_t clusters_prefetched;
    uint64_t bytes_prefetched;   /* copied slow -> fast */
    uint64_t evictions;
    uint64_t compactions;        /* in-place compactions (TeleRAG mode: buffer rebuilds) */
    uint64_t prefetch_ns;        /* I/O thread time in the store's copies (a GPU store queues
                                    them: they land later, see cairn_tier_wait) */
    uint64_t search_ns;          /* wall time in cairn_tier_search */
    uint64_t hit_scan_ns;        /* fast-tier scan time (calling thread) */
    uint64_t miss_scan_ns;       /* slow-tier scan time (worker) */
    uint64_t overlap_ns;         /* time the hit scan and the miss scan ran at once */
    uint64_t rank_ns;            /* choosing the probed clusters */
    uint64_t hit_scan_bytes;     /* fast-tier bytes the hit scans read (whole slots; TeleRAG
                                    mode: every resident slot, per query) */
    uint64_t copies;             /* clusters copied in, by prefetches or TeleRAG re-copies */
    uint64_t recopied_bytes;     /* bytes TeleRAG mode's rebuilds copied again (not counted in
                                    bytes_prefetched) */
    uint64_t moved_bytes;        /* bytes moved within the fast tier by compaction */
    uint64_t prefetch_errors;    /* prefetches a store error stopped (logged) */
    uint64_t budget_bytes;       /* the budgets prefetch calls were given (SIZE_MAX ones: not
                                    counted) */
    uint64_t cpu_miss_bytes;     /* bytes the CPU's miss scans read ((query, cluster) pairs) */
    uint64_t store_miss_bytes;   /* bytes the store copied on demand to scan misses itself */
    uint64_t store_miss_clusters;
    uint64_t store_miss_pairs;   /* (query, cluster) pairs those copies served */
    uint64_t saved_ns;           /* estimated CPU scan time the hits saved: their bytes at the
                                    CPU miss scan's measured rate */
    size_t fast_used;            /* bytes resident now */
    size_t fast_capacity;
    size_t resident_clusters;
} cairn_tier_stats;

/* A snapshot of the counters; hit ratio = hits / probed. */
void cairn_tier_get_stats(cairn_tier *t, cairn_tier_stats *out);

/* Zeroes the counters (not the fast tier). */
void cairn_tier_reset_stats(cairn_tier *t);

size_t cairn_tier_nlist(const cairn_tier *t);
int cairn_tier_dim(const cairn_tier *t);
size_t cairn_tier_count(const cairn_tier *t);       /* vectors in the slow tier */
size_t cairn_tier_total_bytes(const cairn_tier *t); /* bytes of all clusters' data */
/* The fast tier's store ("host" or "cuda") and the bytes a cluster of n vectors takes there. */
const char *cairn_tier_store_name(const cairn_tier *t);
size_t cairn_tier_slot_bytes(const cairn_tier *t, size_t n);

#endif
