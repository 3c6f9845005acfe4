/*
 * retrieval/tier_store.h — the memory of the fast tier, behind one seam.
 *
 * tier.c decides what the fast tier holds: which clusters, where in the arena (first fit over
 * the holes between resident clusters, compaction when the free space is in pieces), pins,
 * hotness, eviction, and the threads. A store holds the bytes and does what touches them:
 * copying a cluster in from the slow tier, moving one within the arena, and scanning resident
 * clusters for a batch of queries. The anchors are ggml's ggml_backend_i and SQLite's
 * sqlite3_io_methods: a versioned table of function pointers behind an opaque handle whose
 * first member points to the table. Two stores exist:
 *   - host (tier_host.c): the arena is RAM; copies are memcpy; scans run on the calling thread
 *     with the same arithmetic as the tier's slow-tier scan;
 *   - cuda (cuda/tier_cuda.cu): the arena is GPU memory, laid out for coalesced scans; copies
 *     are queued on a copy stream with a per-cluster event, so a scan waits only for the
 *     copies it needs; scans and the centroid ranking run as kernels with per-query top-k.
 *     On builds without CUDA, cuda/tier_cuda_none.c answers CAIRN_EUNSUPPORTED.
 *
 * Placement. The tier hands out arena offsets: multiples of CAIRN_TIER_STORE_ALIGN, each slot
 * bytes(n) long for a cluster of n vectors (the store's own layout decides that size).
 *
 * Ordering. copy_in and move may return before their bytes land; a later scan, move or sync
 * sees them landed. The tier never scans a cluster it has not copied in, never writes a slot
 * while a scan reads it (pins), and never moves while any scan is in flight.
 *
 * Scores. Both stores compute a vector's inner product with the query as the tier's CPU scan
 * does (four accumulators over dims i mod 4, summed (s0 + s1) + (s2 + s3), no fused
 * multiply-add; NaN scores as -INFINITY), so a fp32 hit scores the same bits in either tier.
 * Ties break by smaller id.
 *
 * Threads: one thread at a time calls copy_in, move and sync (the tier's I/O thread), and one
 * thread at a time calls scan, scan_host and rank (a search); the two may run at once. Errors
 * are 0 or a negative CAIRN_E* code with the detail (the CUDA call that failed, the bytes) in
 * err.
 */
#ifndef CAIRN_RETRIEVAL_TIER_STORE_H
#define CAIRN_RETRIEVAL_TIER_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CAIRN_TIER_STORE_VERSION 2
#define CAIRN_TIER_STORE_ALIGN 64u
/* The largest k a scan returns per query; tier.h's CAIRN_TIER_MAX_K is this one. */
#define CAIRN_TIER_STORE_MAX_K 1024

typedef struct cairn_tier_store cairn_tier_store;
typedef struct cairn_tier_store_i cairn_tier_store_i;

/* Every store's handle starts with this; callers reach the table through it. */
struct cairn_tier_store {
    const cairn_tier_store_i *i;
};

/* A cluster as the slow tier holds it: n ids, and n row-major vectors of dim floats. */
typedef struct {
    const int64_t *ids;
    const float *vecs;
    size_t n;
    bool pinned; /* page-locked host memory: a GPU store may DMA straight from it */
} cairn_tier_block;

/* One (query, resident cluster) pair of a scan. */
typedef struct {
    uint32_t query;   /* index into the scan's batch */
    uint32_t cluster;
    size_t off;       /* the cluster's slot in the arena */
    size_t n;         /* its vectors */
    bool skip;        /* scan it (the bytes are read, the arithmetic done) but keep no result:
                         the whole-buffer scan of tier.c's TeleRAG mode */
} cairn_tier_work;

/* A (query, host block) pair of scan_host: the query scans blocks[block]. */
typedef struct {
    uint32_t query;
    uint32_t block;
} cairn_tier_pair;

typedef struct {
    int dim;
    size_t nlist;
    const float *centroids; /* nlist * dim, read at open (a store that ranks copies them) */
    size_t capacity;        /* arena bytes, a multiple of CAIRN_TIER_STORE_ALIGN */
    size_t max_list;        /* vectors in the largest list */
    int device;             /* the CUDA store's GPU */
    bool fp16;              /* the CUDA store keeps vectors as IEEE half (recall: BENCHMARKS.md) */
    size_t stage_bytes;     /* scan_host's staging space (0: none; the CUDA store then takes no
                               host blocks) */
} cairn_tier_store_params;

struct cairn_tier_store_i {
    int version;      /* CAIRN_TIER_STORE_VERSION */
    const char *name; /* "host", "cuda" */
    /* Waits for queued work and frees everything. */
    void (*close)(cairn_tier_store *s);
    /* Arena bytes a cluster of n vectors takes: a multiple of CAIRN_TIER_STORE_ALIGN. */
    size_t (*bytes)(const cairn_tier_store *s, size_t n);
    /* Copies src into the slot at off (bytes(src->n) long). A pageable src may be reused on
     * return; a pinned one may still be read by DMA until the next sync (the tier's slow tier
     * never changes while the tier is open, so it never waits for that). */
    int (*copy_in)(cairn_tier_store *s, uint32_t cluster, size_t off, const cairn_tier_block *src,
                   cairn_error *err);
    /* Moves cluster's bytes from src_off to dst_off (the ranges may overlap; memmove's sense). */
    int (*move)(cairn_tier_store *s, uint32_t cluster, size_t dst_off, size_t src_off,
                size_t bytes, cairn_error *err);
    /* Waits until every copy_in and move so far has landed. */
    int (*sync)(cairn_tier_store *s, cairn_error *err);
    /*
     * The k (<= CAIRN_TIER_STORE_MAX_K) best vectors per query of the batch (nq queries of dim
     * floats, host memory) over the nw work items (sorted by query): scores[i * k ...] and
     * ids[i * k ...] best first, and filled[i] how many are real; the rest of each row gets
     * -INFINITY and -1. Items with skip set are read but contribute nothing.
     */
    int (*scan)(cairn_tier_store *s, const float *q, size_t nq, const cairn_tier_work *w,
                size_t nw, size_t k, float *scores, int64_t *ids, size_t *filled,
                cairn_error *err);
    /*
     * Optional (NULL: the tier ranks on the CPU). The nprobe clusters whose centroids score
     * best for each query, best first (ties: smaller cluster), into order[i * nprobe ...]:
     * the same order as the tier's CPU ranking. CAIRN_EUNSUPPORTED when nprobe is more than
     * the store ranks (the tier then ranks on the CPU).
     */
    int (*rank)(cairn_tier_store *s, const float *q, size_t nq, size_t nprobe, uint32_t *order,
                cairn_error *err);
    /*
     * Optional (NULL: every miss is the CPU's). scan's work on resident clusters and, in the
     * same call, nb clusters read from host memory (the slow tier's lists; page-locked ones by
     * DMA): each block is copied once into the store's staging space, never the arena, and
     * scanned for every pair naming it (pairs sorted by query, each (query, block) once). One
     * merged top k per query over both. A block may take at most stage_bytes / 2 in the staging
     * space (cairn_tier_store_stage_need); larger ones are CAIRN_ERANGE. The blocks' memory is
     * not read after the call returns. The CUDA store copies on a stream of its own while the
     * resident clusters are scanned, and scans each round of copies as it lands.
     */
    int (*scan_host)(cairn_tier_store *s, const float *q, size_t nq, const cairn_tier_work *w,
                     size_t nw, const cairn_tier_block *blocks, size_t nb,
                     const cairn_tier_pair *pairs, size_t np, size_t k, float *scores,
                     int64_t *ids, size_t *filled, cairn_error *err);
    /* Optional: bytes per second of a copy from page-locked host memory into the store,
     * measured when it opened (0 or NULL: not known). */
    double (*copy_rate)(const cairn_tier_store *s);
};

/* Staging bytes a host block of n vectors of dim floats takes in scan_host (ids, then the
 * row-major vectors, rounded to 256 bytes). */
static inline size_t cairn_tier_store_stage_need(size_t n, int dim)
{
    return (n * (8 + 4 * (size_t)dim) + 255) / 256 * 256;
}

/* The host store: a RAM arena. Returns 0 and *out, or CAIRN_EINVAL, CAIRN_ENOMEM. */
int cairn_tier_store_host_open(cairn_tier_store **out, const cairn_tier_store_params *p,
                               cairn_error *err);

/*
 * The CUDA store on GPU p->device. Returns 0 and *out, or CAIRN_EUNSUPPORTED (a build
 * without CUDA, no such GPU, dim above 4096), CAIRN_EINVAL, CAIRN_ENOMEM (host or GPU memory:
 * err names the bytes), CAIRN_EDEVICE (a CUDA call failed: err names it).
 */
int cairn_tier_store_cuda_open(cairn_tier_store **out, const cairn_tier_store_params *p,
                               cairn_error *err);

/*
 * Page-locked host memory for a slow tier that a GPU store copies from (cudaHostAlloc on
 * GPU 'device'); NULL on a build without CUDA or when the GPU refuses (why says which).
 * Free with cairn_tier_pinned_free. Thread-safe.
 */
void *cairn_tier_pinned_alloc(int device, size_t bytes, char *why, size_t why_len);
void cairn_tier_pinned_free(void *p); /* NULL is a no-op */

static inline void cairn_tier_store_close(cairn_tier_store *s)
{
    if (s)
        s->i->close(s);
}

#ifdef __cplusplus
}
#endif
#endif
