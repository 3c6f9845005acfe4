/*
 * retrieval/tier.c — slow/fast cluster tiers, lookahead prefetch and hybrid search
 * (see tier.h; the design follows TeleRAG, MLSys 2026). The fast tier's memory is a store
 * (tier_store.h); this file decides what it holds and where.
 *
 * Locking: mu guards the slot table, the arena bookkeeping (used, hi_water, pins), the I/O
 * job fields and the stats. The fast tier is written only by the I/O thread, through the
 * store: into a LOADING slot (no reader looks at it) or while compacting, which it does only
 * with mu held and no pins outstanding, so no scan can be reading what moves. A store may
 * finish a copy after copy_in returns (the CUDA store queues it on a stream); the slot turns
 * READY at once and the store makes a scan of it wait for its bytes. Searches pin the READY
 * clusters they scan and unpin them only after the store's scan has returned (finished
 * reading); eviction skips pinned clusters. search_mu serialises searches, so the search
 * scratch, the miss split's arrays and rates and the worker's job fields belong to the one
 * search in flight. Misses the store scans itself (split_misses) are copied into the store's
 * own staging, never into the arena, so they take no slot and need no pin.
 */
#define _GNU_SOURCE /* qsort_r */
#include "retrieval/tier.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CAIRN_LOG_TAG "tier"
#include "common/clock.h"
#include "common/log.h"
#include "retrieval/tier_score.h"
#include "retrieval/tier_store.h"

#define TIER_MAGIC "CAIRNTIR"
#define TIER_VERSION 1u
#define TIER_HEADER 128u
#define TIER_ALIGN 64u

/* ---- Slow-tier file -------------------------------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ull

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

/* A cluster's block: its n ids (int64), then its n vectors (dim floats each). */
static uint64_t block_bytes(uint64_t n, int dim) { return n * (8 + 4 * (uint64_t)dim); }

int cairn_tier_build(const cairn_ivf *ivf, const char *path, uint64_t docstore_uid,
                     cairn_error *err)
{
    const float *cent;
    int rc = cairn_ivf_centroids(ivf, &cent, err);
    if (rc)
        return rc;
    int dim = cairn_ivf_dim(ivf);
    size_t nlist = cairn_ivf_nlist(ivf);
    uint64_t cent_off = TIER_HEADER, cent_bytes = (uint64_t)nlist * dim * 4;
    uint64_t table_off = round_up(cent_off + cent_bytes, 8), table_bytes = (uint64_t)nlist * 16;
    uint64_t data_off = round_up(table_off + table_bytes, TIER_ALIGN);
    uint8_t *table = calloc(nlist, 16);
    if (!table)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier: table of %zu lists", nlist);
    uint64_t pos = data_off, total = 0;
    for (size_t c = 0; c < nlist; c++) {
        const float *v;
        const int64_t *ids;
        size_t n;
        if ((rc = cairn_ivf_list(ivf, c, &v, &ids, &n, err))) {
            free(table);
            return rc;
        }
        put64(table + 16 * c, pos);
        put64(table + 16 * c + 8, n);
        pos = round_up(pos + block_bytes(n, dim), TIER_ALIGN);
        total += n;
    }
    uint64_t file_size = pos;
    uint8_t h[TIER_HEADER] = {0};
    memcpy(h, TIER_MAGIC, 8);
    put64(h + 8, TIER_VERSION | (uint64_t)(uint32_t)dim << 32);
    put64(h + 16, nlist);
    put64(h + 24, total);
    put64(h + 32, docstore_uid);
    put64(h + 40, cent_off);
    put64(h + 48, table_off);
    put64(h + 56, data_off);
    put64(h + 64, file_size);
    put64(h + 72, fnv1a(fnv1a(FNV_INIT, cent, cent_bytes), table, table_bytes));
    put64(h + 120, fnv1a(FNV_INIT, h, 120));

    size_t tl = strlen(path) + 5;
    char *tmp = malloc(tl);
    FILE *f = NULL;
    if (tmp) {
        snprintf(tmp, tl, "%s.tmp", path);
        f = fopen(tmp, "we");
    }
    if (!f) {
        rc = cairn_errorf(err, tmp ? CAIRN_EIO : CAIRN_ENOMEM, "tier: %s: %s", tmp ? tmp : path,
                          strerror(errno));
        free(tmp);
        free(table);
        return rc;
    }
    static const uint8_t zeros[TIER_ALIGN];
    bool ok = fwrite(h, 1, TIER_HEADER, f) == TIER_HEADER &&
              fwrite(cent, 1, cent_bytes, f) == cent_bytes;
    uint64_t at = cent_off + cent_bytes;
    ok = ok && fwrite(zeros, 1, table_off - at, f) == table_off - at &&
         fwrite(table, 1, table_bytes, f) == table_bytes;
    at = table_off + table_bytes;
    ok = ok && fwrite(zeros, 1, data_off - at, f) == data_off - at;
    at = data_off;
    for (size_t c = 0; ok && c < nlist; c++) {
        const float *v;
        const int64_t *ids;
        size_t n;
        if ((rc = cairn_ivf_list(ivf, c, &v, &ids, &n, err)))
            break;
        ok = fwrite(ids, 8, n, f) == n && fwrite(v, 4 * (size_t)dim, n, f) == n;
        uint64_t end = at + block_bytes(n, dim), next = round_up(end, TIER_ALIGN);
        ok = ok && fwrite(zeros, 1, next - end, f) == next - end;
        at = next;
    }
    ok = (fflush(f) == 0) && ok;
    ok = (fsync(fileno(f)) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (rc == 0 && !ok)
        rc = cairn_errorf(err, CAIRN_EIO, "tier: write %s: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) != 0)
        rc = cairn_errorf(err, CAIRN_EIO, "tier: rename %s: %s", tmp, strerror(errno));
    if (rc)
        remove(tmp);
    free(tmp);
    free(table);
    return rc;
}

/* ---- The tier object ------------------------------------------------------------------------- */

enum { SLOT_ABSENT = 0, SLOT_LOADING, SLOT_READY };

typedef struct {
    size_t off, bytes;  /* place in the fast tier (bytes: the store's slot size) */
    int state;
    int pins;           /* searches scanning it now (a batch pins once per query probing it) */
    uint64_t gen;       /* the prefetch that last brought or claimed it */
    double hot;         /* probe count, decayed per search as of hot_tick */
    uint64_t hot_tick;
} slot;

struct cairn_tier {
    cairn_tier_params p;
    /* The slow tier: a mapped file, its lists copied to RAM, or the caller's lists. */
    int fd;
    const uint8_t *map;
    size_t map_len;
    void *ram;            /* slow_in_ram: the file's data section */
    bool ram_pinned;
    int dim;
    size_t nlist, total, total_bytes, max_list;
    const float *centroids;
    const int64_t **l_ids;
    const float **l_vecs;
    size_t *l_n;
    bool slow_pinned;     /* the lists are page-locked */
    cairn_ivf *miss_ivf;  /* miss_faiss: FAISS over the slow tier's lists (borrowed) */

    cairn_tier_store *store;

    pthread_mutex_t mu;
    pthread_cond_t pins_cv; /* a cluster's pins dropped to 0, or a cancel */
    pthread_cond_t io_cv;   /* a job was posted, or the I/O thread went idle */
    size_t cap, used;
    size_t hi_water;        /* every resident slot ends at or below it; == used: no holes */
    slot *slots;
    int total_pins;
    uint64_t tick;
    cairn_tier_stats st;
    /* I/O job (mu) */
    bool io_job, io_busy, io_cancel, stop;
    float *q0;              /* max_batch * dim */
    size_t q0_n, budget, max_clusters;
    uint64_t gen;
    pthread_t io_thread;
    bool io_started;
    /* I/O thread scratch */
    float *io_scores;       /* nlist */
    cairn__titem *io_heap;  /* nlist */
    uint32_t *io_order;     /* max_batch * nlist: each query's ranking */
    uint32_t *io_plan;      /* nlist: the interleaved, deduplicated order of the job */
    uint8_t *io_seen;       /* nlist */
    uint32_t *io_res;       /* nlist: resident clusters by offset */
    uint32_t *io_want;      /* nlist: TeleRAG mode's clusters to bring */

    /* Search (search_mu) */
    pthread_mutex_t search_mu;
    float *s_scores;        /* nlist */
    cairn__titem *s_heap;   /* nlist */
    uint32_t *s_order;      /* max_batch * nlist: each query's probes, best first */
    uint32_t *s_mark;       /* nlist: TeleRAG mode, which query probes a cluster */
    cairn_tier_work *hit_w; /* max_batch * nlist */
    size_t n_hit, n_miss;
    int64_t *miss_assign;   /* max_batch * nlist: a query's probed misses, -1 for hits */
    float *hit_s, *miss_s;  /* max_batch * CAIRN_TIER_MAX_K */
    int64_t *hit_id, *miss_id;
    size_t *hit_fill, *miss_fill; /* max_batch */
    cairn__titem *miss_heap, *merged;
    /* The misses the store scans (miss_split): per cluster of the chunk, the queries missing
     * it and its block; the blocks and (query, block) pairs handed to scan_host. */
    uint32_t *m_cnt;          /* nlist, zero between searches */
    int32_t *m_blk;           /* nlist, -1 between searches */
    uint32_t *m_list;         /* nlist: the chunk's missed clusters */
    cairn_tier_block *m_blocks; /* nlist */
    cairn_tier_pair *m_pairs; /* max_batch * nlist */
    size_t m_nb, m_np, n_cpu_miss;
    double m_cpu_bytes;       /* what the worker's scan reads ((query, cluster) pairs) */
    double cpu_bps[2];        /* the worker's miss scan per thread, batch 1 / larger (EWMA) */
    double store_eff;         /* the store's measured time against its model (EWMA; 1 at open) */
    double m_store_s;         /* the modelled time of the store's share of this search */
    int cpu_threads;          /* threads the worker's miss scan uses */
    /* Whether handing the misses to the worker pays (host store): it does when the hit scan the
     * caller runs meanwhile outlasts the hand-off (waking the worker, waking the caller back),
     * which on a loaded 2-core machine costs more than a small scan. */
    double hit_bps;           /* the host store's hit scan, bytes of (query, cluster) pairs/s */
    double handoff_ns;        /* the hand-off's measured cost (EWMA; 0 until measured) */
    unsigned handoff_age;     /* inline searches since the hand-off was last measured */
    /* The chunk being searched (written before the worker is woken, read by it). */
    const float *b_q;
    size_t b_nq, b_k, b_nprobe;
    int miss_rc;
    cairn_error miss_err;
    /* Search worker (w_mu) */
    pthread_mutex_t w_mu;
    pthread_cond_t w_cv;
    bool w_job, w_done, w_stop;
    int64_t w_t0, w_t1;
    pthread_t worker;
    bool worker_started;
};

cairn_tier_params cairn_tier_default_params(void)
{
    return (cairn_tier_params){.fast_bytes = 64u << 20,
                               .miss_worker = true,
                               .hot_decay = 0.98,
                               .device = -1,
                               .max_batch = 32,
                               .mode = CAIRN_TIER_CAIRN,
                               .miss_split = CAIRN_TIER_MISS_SPLIT,
                               .stage_bytes = 64u << 20};
}

static cairn_tier_block block_of(const cairn_tier *t, uint32_t c)
{
    return (cairn_tier_block){t->l_ids[c], t->l_vecs[c], t->l_n[c], t->slow_pinned};
}

/* ---- Ranking --------------------------------------------------------------------------------- */

/* The depth clusters whose centroids score best for q, best first (ties: smaller cluster):
 * the first depth entries of a full sort, found with a bounded heap. */
static void rank_top(const cairn_tier *t, const float *q, size_t depth, float *scores,
                     cairn__titem *heap, uint32_t *order)
{
    size_t hn = 0;
    for (size_t c = 0; c < t->nlist; c++) {
        scores[c] = cairn__tier_dot(q, t->centroids + c * (size_t)t->dim, t->dim);
        cairn__tier_heap_push(heap, &hn, depth, (cairn__titem){scores[c], (int64_t)c});
    }
    qsort(heap, hn, sizeof(*heap), cairn__tier_item_cmp);
    for (size_t r = 0; r < hn; r++)
        order[r] = (uint32_t)heap[r].id;
}

/* ---- Fast-tier space: first fit, compaction, eviction (I/O thread, mu held) ------------------ */

static int off_cmp(const void *a, const void *b, void *ctx)
{
    const slot *s = ctx;
    size_t x = s[*(const uint32_t *)a].off, y = s[*(const uint32_t *)b].off;
    return x < y ? -1 : (x > y);
}

static double hotness(const cairn_tier *t, const slot *s)
{
    return s->hot * pow(t->p.hot_decay, (double)(t->tick - s->hot_tick));
}

/* Collects the resident clusters into io_res, by offset; returns how many. */
static size_t residents_by_offset(cairn_tier *t)
{
    size_t nres = 0;
    for (size_t c = 0; c < t->nlist; c++)
        if (t->slots[c].state != SLOT_ABSENT)
            t->io_res[nres++] = (uint32_t)c;
    qsort_r(t->io_res, nres, sizeof(uint32_t), off_cmp, t->slots);
    return nres;
}

/* The coldest resident of io_res[0, nres) that may go: READY, unpinned, not brought or claimed
 * by this prefetch (gen). Ties go to the smaller cluster. SIZE_MAX when none; *at its index. */
static size_t coldest(const cairn_tier *t, size_t nres, uint64_t gen, size_t *at)
{
    size_t victim = SIZE_MAX;
    double vh = 0;
    for (size_t i = 0; i < nres; i++) {
        uint32_t c = t->io_res[i];
        const slot *s = &t->slots[c];
        if (s->state != SLOT_READY || s->pins || s->gen == gen)
            continue;
        double h = hotness(t, s);
        if (victim == SIZE_MAX || h < vh || (h == vh && c < victim)) {
            victim = c;
            vh = h;
            *at = i;
        }
    }
    return victim;
}

static void evict(cairn_tier *t, size_t c)
{
    t->slots[c].state = SLOT_ABSENT;
    t->used -= t->slots[c].bytes;
    t->st.evictions++;
}

/* Waits (mu held) until no search pins a cluster; false when cancelled first. */
static bool wait_unpinned(cairn_tier *t)
{
    while (t->total_pins > 0 && !t->io_cancel)
        pthread_cond_wait(&t->pins_cv, &t->mu);
    return !t->io_cancel;
}

/*
 * Finds room for alloc bytes; returns its offset, or SIZE_MAX when nothing more may go (*rc
 * then says whether a store call failed). Packed (no holes): the end. Otherwise first fit
 * over the holes between residents; failing that, compaction or eviction (below).
 */
static size_t reserve(cairn_tier *t, size_t alloc, uint64_t gen, int *rc, cairn_error *err)
{
    *rc = 0;
    if (t->used == t->hi_water && t->cap - t->hi_water >= alloc) {
        size_t off = t->hi_water;
        t->hi_water += alloc;
        return off;
    }
    size_t nres = residents_by_offset(t);
    for (;;) {
        size_t end = 0;
        for (size_t i = 0; i < nres; i++) {
            const slot *s = &t->slots[t->io_res[i]];
            if (s->off - end >= alloc)
                return end;
            end = s->off + s->bytes;
        }
        if (t->cap - end >= alloc) {
            if (end + alloc > t->hi_water)
                t->hi_water = end + alloc;
            return end;
        }
        size_t at = 0, victim = coldest(t, nres, gen, &at);
        /* Enough space, but in pieces: compact (slide every cluster down, in place) when
         * the free space is worth it (>= 1/8 of the arena) or nothing can be evicted;
         * otherwise evict, which is cheaper and may open a gap that fits. */
        if (t->cap - t->used >= alloc && (t->cap - t->used >= t->cap / 8 || victim == SIZE_MAX)) {
            if (!wait_unpinned(t))
                return SIZE_MAX;
            size_t cursor = 0;
            for (size_t i = 0; i < nres; i++) {
                uint32_t c = t->io_res[i];
                slot *s = &t->slots[c];
                if (s->off != cursor) {
                    *rc = t->store->i->move(t->store, c, cursor, s->off, s->bytes, err);
                    if (*rc) {
                        /* What moved is in place; what did not stays; nothing is lost but
                         * this prefetch. */
                        return SIZE_MAX;
                    }
                    t->st.moved_bytes += s->bytes;
                }
                s->off = cursor;
                cursor += s->bytes;
            }
            t->st.compactions++;
            t->hi_water = cursor + alloc;
            return cursor;
        }
        if (victim == SIZE_MAX)
            return SIZE_MAX;
        evict(t, victim);
        memmove(t->io_res + at, t->io_res + at + 1, (nres - at - 1) * sizeof(uint32_t));
        nres--;
    }
}

/* ---- I/O thread ------------------------------------------------------------------------------ */

/* Demand order of a batch prefetch: more queries first, then the better best rank, then the
 * smaller cluster. io_scores holds each cluster's count and io_res its best rank (both are
 * scratch of the I/O thread, free again once the plan is made). */
static int demand_cmp(const void *a, const void *b, void *ctx)
{
    const cairn_tier *t = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    float cx = t->io_scores[x], cy = t->io_scores[y];
    if (cx != cy)
        return cx > cy ? -1 : 1;
    if (t->io_res[x] != t->io_res[y])
        return t->io_res[x] < t->io_res[y] ? -1 : 1;
    return x < y ? -1 : (x > y);
}

/* The job's clusters in the order to fetch them, each once; returns how many. One query: its
 * ranking. A batch: each query's ranking, interleaved (every query's best, then every query's
 * second best, ...); in cairn's mode with max_clusters, by demand instead (tier.h). */
static size_t plan_prefetch(cairn_tier *t, size_t nq, size_t max_clusters)
{
    size_t depth = max_clusters && max_clusters < t->nlist ? max_clusters : t->nlist;
    for (size_t i = 0; i < nq; i++)
        rank_top(t, t->q0 + i * (size_t)t->dim, depth, t->io_scores, t->io_heap,
                 t->io_order + i * t->nlist);
    memset(t->io_seen, 0, t->nlist);
    size_t np = 0;
    if (nq > 1 && max_clusters && t->p.mode == CAIRN_TIER_CAIRN) {
        /* io_scores: how many queries rank the cluster within depth; io_res: its best rank. */
        for (size_t c = 0; c < t->nlist; c++) {
            t->io_scores[c] = 0;
            t->io_res[c] = UINT32_MAX;
        }
        for (size_t i = 0; i < nq; i++)
            for (size_t r = 0; r < depth; r++) {
                uint32_t c = t->io_order[i * t->nlist + r];
                t->io_scores[c] += 1;
                if (r < t->io_res[c])
                    t->io_res[c] = (uint32_t)r;
                if (!t->io_seen[c]) {
                    t->io_seen[c] = 1;
                    t->io_plan[np++] = c;
                }
            }
        qsort_r(t->io_plan, np, sizeof(uint32_t), demand_cmp, t);
        return np;
    }
    for (size_t r = 0; r < depth; r++)
        for (size_t i = 0; i < nq; i++) {
            uint32_t c = t->io_order[i * t->nlist + r];
            if (!t->io_seen[c]) {
                t->io_seen[c] = 1;
                t->io_plan[np++] = c;
            }
        }
    return np;
}

static void io_failed(cairn_tier *t, const cairn_error *e)
{
    t->st.prefetch_errors++;
    CAIRN_LOG_WARN("prefetch stopped", "store=%s error=%s", t->store->i->name, e->msg);
}

static void run_prefetch(cairn_tier *t, uint64_t gen, size_t nq, size_t budget,
                         size_t max_clusters)
{
    size_t np = plan_prefetch(t, nq, max_clusters), fetched = 0;
    cairn_error e = {0};
    for (size_t r = 0; r < np; r++) {
        uint32_t c = t->io_plan[r];
        size_t need = (size_t)block_bytes(t->l_n[c], t->dim);
        size_t alloc = t->store->i->bytes(t->store, t->l_n[c]);
        pthread_mutex_lock(&t->mu);
        slot *s = &t->slots[c];
        if (t->io_cancel) {
            pthread_mutex_unlock(&t->mu);
            break;
        }
        if (s->state != SLOT_ABSENT || need == 0) {
            s->gen = gen; /* already resident: keep it through this prefetch */
            pthread_mutex_unlock(&t->mu);
            continue;
        }
        if (fetched + need > budget) {
            pthread_mutex_unlock(&t->mu);
            break;
        }
        if (alloc > t->cap) {
            pthread_mutex_unlock(&t->mu);
            continue; /* never fits; the search scans it from the slow tier */
        }
        int rc;
        size_t off = reserve(t, alloc, gen, &rc, &e);
        if (off == SIZE_MAX) {
            if (rc)
                io_failed(t, &e);
            pthread_mutex_unlock(&t->mu);
            break;
        }
        s->state = SLOT_LOADING;
        s->off = off;
        s->bytes = alloc;
        s->gen = gen;
        t->used += alloc;
        pthread_mutex_unlock(&t->mu);

        int64_t t0 = cairn_now_ns();
        cairn_tier_block b = block_of(t, c);
        rc = t->store->i->copy_in(t->store, c, off, &b, &e);
        int64_t t1 = cairn_now_ns();

        pthread_mutex_lock(&t->mu);
        if (rc) {
            s->state = SLOT_ABSENT;
            t->used -= alloc;
            io_failed(t, &e);
            pthread_mutex_unlock(&t->mu);
            break;
        }
        s->state = SLOT_READY;
        t->st.bytes_prefetched += need;
        t->st.clusters_prefetched++;
        t->st.copies++;
        t->st.prefetch_ns += (uint64_t)(t1 - t0);
        pthread_mutex_unlock(&t->mu);
        fetched += need;
    }
}

/*
 * TeleRAG's way (its released code, as issue 19 describes it): choose what to bring, evict
 * the coldest clusters until it fits, and when anything was evicted rebuild the buffer by
 * copying every kept cluster again from the slow tier, packed from offset 0; then copy the
 * new clusters one at a time, each copy waited for before the next. All of it with mu held.
 */
static void run_prefetch_telerag(cairn_tier *t, uint64_t gen, size_t nq, size_t budget,
                                 size_t max_clusters)
{
    size_t np = plan_prefetch(t, nq, max_clusters), fetched = 0, nwant = 0, want_bytes = 0;
    cairn_error e = {0};
    pthread_mutex_lock(&t->mu);
    for (size_t r = 0; r < np && !t->io_cancel; r++) {
        uint32_t c = t->io_plan[r];
        size_t need = (size_t)block_bytes(t->l_n[c], t->dim);
        size_t alloc = t->store->i->bytes(t->store, t->l_n[c]);
        if (t->slots[c].state != SLOT_ABSENT || need == 0) {
            t->slots[c].gen = gen;
            continue;
        }
        if (fetched + need > budget)
            break;
        if (alloc > t->cap)
            continue;
        t->io_want[nwant++] = c;
        fetched += need;
        want_bytes += alloc;
    }
    size_t nres = residents_by_offset(t), evicted = 0;
    while (t->cap - t->used < want_bytes) {
        size_t at = 0, victim = coldest(t, nres, gen, &at);
        if (victim == SIZE_MAX)
            break;
        evict(t, victim);
        memmove(t->io_res + at, t->io_res + at + 1, (nres - at - 1) * sizeof(uint32_t));
        nres--;
        evicted++;
    }
    while (nwant > 0 && t->cap - t->used < want_bytes)
        want_bytes -= t->store->i->bytes(t->store, t->l_n[t->io_want[--nwant]]);
    int rc = 0;
    if (evicted || t->used != t->hi_water) {
        if (!wait_unpinned(t)) {
            pthread_mutex_unlock(&t->mu);
            return;
        }
        size_t cursor = 0;
        for (size_t i = 0; i < nres && !rc; i++) {
            uint32_t c = t->io_res[i];
            slot *s = &t->slots[c];
            cairn_tier_block b = block_of(t, c);
            rc = t->store->i->copy_in(t->store, c, cursor, &b, &e);
            if (!rc)
                rc = t->store->i->sync(t->store, &e);
            s->off = cursor;
            cursor += s->bytes;
            t->st.recopied_bytes += (uint64_t)block_bytes(b.n, t->dim);
            t->st.copies++;
        }
        t->hi_water = cursor;
        t->st.compactions++;
    }
    for (size_t i = 0; i < nwant && !rc && !t->io_cancel; i++) {
        uint32_t c = t->io_want[i];
        slot *s = &t->slots[c];
        size_t alloc = t->store->i->bytes(t->store, t->l_n[c]);
        cairn_tier_block b = block_of(t, c);
        int64_t t0 = cairn_now_ns();
        rc = t->store->i->copy_in(t->store, c, t->hi_water, &b, &e);
        if (!rc)
            rc = t->store->i->sync(t->store, &e);
        if (rc)
            break;
        t->st.prefetch_ns += (uint64_t)(cairn_now_ns() - t0);
        s->state = SLOT_READY;
        s->off = t->hi_water;
        s->bytes = alloc;
        s->gen = gen;
        t->hi_water += alloc;
        t->used += alloc;
        t->st.bytes_prefetched += (uint64_t)block_bytes(b.n, t->dim);
        t->st.clusters_prefetched++;
        t->st.copies++;
    }
    if (rc) {
        /* A failed rebuild leaves slots whose bytes may be wrong: drop every cluster. */
        for (size_t c = 0; c < t->nlist; c++)
            t->slots[c].state = SLOT_ABSENT;
        t->used = t->hi_water = 0;
        io_failed(t, &e);
    }
    pthread_mutex_unlock(&t->mu);
}

static void *io_main(void *arg)
{
    cairn_tier *t = arg;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->io_job && !t->stop)
            pthread_cond_wait(&t->io_cv, &t->mu);
        if (t->stop)
            break;
        t->io_job = false;
        t->io_busy = true;
        uint64_t gen = ++t->gen;
        size_t nq = t->q0_n, budget = t->budget, maxc = t->max_clusters;
        pthread_mutex_unlock(&t->mu);
        if (t->p.mode == CAIRN_TIER_TELERAG)
            run_prefetch_telerag(t, gen, nq, budget, maxc);
        else
            run_prefetch(t, gen, nq, budget, maxc);
        pthread_mutex_lock(&t->mu);
        t->io_busy = false;
        pthread_cond_broadcast(&t->io_cv);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* Cancels the running and pending prefetch; returns with mu held and the I/O thread idle. */
static void cancel_locked(cairn_tier *t)
{
    t->io_job = false;
    while (t->io_busy) {
        t->io_cancel = true;
        pthread_cond_broadcast(&t->pins_cv);
        pthread_cond_wait(&t->io_cv, &t->mu);
    }
    t->io_cancel = false;
}

/* ---- Misses: the slow tier, on the search worker or the caller ------------------------------- */

static int scan_misses(cairn_tier *t, cairn_error *err)
{
    size_t nq = t->b_nq, k = t->b_k, np = t->b_nprobe;
    if (t->miss_ivf) {
        /* One query: FAISS splits its lists over the threads; a batch: the queries. */
        int rc = cairn_ivf_set_split_lists(t->miss_ivf, nq == 1, err);
        if (!rc)
            rc = cairn_ivf_search_preassigned(t->miss_ivf, t->b_q, nq, k, t->miss_assign, np,
                                              t->miss_s, t->miss_id, err);
        for (size_t i = 0; i < nq && !rc; i++) {
            size_t f = 0;
            while (f < k && t->miss_id[i * k + f] >= 0)
                f++;
            t->miss_fill[i] = f;
        }
        return rc;
    }
    for (size_t i = 0; i < nq; i++) {
        size_t hn = 0;
        const float *q = t->b_q + i * (size_t)t->dim;
        for (size_t r = 0; r < np; r++) {
            int64_t c = t->miss_assign[i * np + r];
            if (c >= 0)
                cairn__tier_scan_rows(t->l_ids[c], t->l_vecs[c], t->l_n[c], t->dim, q,
                                      t->miss_heap, &hn, k);
        }
        for (size_t r = 0; r < hn; r++) {
            t->miss_s[i * k + r] = t->miss_heap[r].s;
            t->miss_id[i * k + r] = t->miss_heap[r].id;
        }
        t->miss_fill[i] = hn;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    cairn_tier *t = arg;
    /* FAISS's threads leave a core to the search thread (which waits on the GPU's scan) and
     * one to the I/O thread, so that no OpenMP thread of the miss scan shares a core. */
    if (t->miss_ivf)
        cairn_ivf_set_threads(t->cpu_threads);
    pthread_mutex_lock(&t->w_mu);
    for (;;) {
        while (!t->w_job && !t->w_stop)
            pthread_cond_wait(&t->w_cv, &t->w_mu);
        if (t->w_stop)
            break;
        t->w_job = false;
        pthread_mutex_unlock(&t->w_mu);
        int64_t t0 = cairn_now_ns();
        int rc = scan_misses(t, &t->miss_err);
        int64_t t1 = cairn_now_ns();
        pthread_mutex_lock(&t->w_mu);
        t->miss_rc = rc;
        t->w_t0 = t0;
        t->w_t1 = t1;
        t->w_done = true;
        pthread_cond_broadcast(&t->w_cv);
    }
    pthread_mutex_unlock(&t->w_mu);
    return NULL;
}

/* ---- Open and close -------------------------------------------------------------------------- */

static int load_file(cairn_tier *t, const char *path, uint64_t expect_uid, uint64_t *data_off_out,
                     cairn_error *err)
{
    t->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (t->fd < 0)
        return cairn_errorf(err, errno == ENOENT ? CAIRN_ENOTFOUND : CAIRN_EIO, "%s: %s", path,
                            strerror(errno));
    struct stat st;
    if (fstat(t->fd, &st) != 0)
        return cairn_errorf(err, CAIRN_EIO, "%s: stat: %s", path, strerror(errno));
    uint64_t size = (uint64_t)st.st_size;
    if (!S_ISREG(st.st_mode) || size < TIER_HEADER)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: %llu bytes, shorter than the %u-byte header",
                            path, (unsigned long long)size, TIER_HEADER);
    void *m = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, t->fd, 0);
    if (m == MAP_FAILED)
        return cairn_errorf(err, CAIRN_EIO, "%s: mmap: %s", path, strerror(errno));
    t->map = m;
    t->map_len = (size_t)size;
    const uint8_t *h = t->map;
    if (memcmp(h, TIER_MAGIC, 8) != 0)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: not a cairn tier file (bad magic)", path);
    if (get64(h + 120) != fnv1a(FNV_INIT, h, 120))
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: header checksum mismatch", path);
    uint64_t vd = get64(h + 8);
    if ((uint32_t)vd != TIER_VERSION)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "%s: tier file version %u (this build reads %u)", path, (uint32_t)vd,
                            TIER_VERSION);
    uint32_t dim = (uint32_t)(vd >> 32);
    uint64_t nlist = get64(h + 16), total = get64(h + 24), uid = get64(h + 32);
    uint64_t cent_off = get64(h + 40), table_off = get64(h + 48), data_off = get64(h + 56);
    if (dim < 1 || dim > 65536 || nlist < 1 || nlist > 65536)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: dim %u / nlist %llu out of range", path, dim,
                            (unsigned long long)nlist);
    if (get64(h + 64) != size)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: header says %llu bytes, file has %llu", path,
                            (unsigned long long)get64(h + 64), (unsigned long long)size);
    uint64_t cent_bytes = nlist * dim * 4, table_bytes = nlist * 16;
    if (cent_off != TIER_HEADER || cent_off + cent_bytes > table_off || table_off % 8 ||
        table_off + table_bytes > data_off || data_off > size)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "%s: sections (centroids %llu, table %llu, data %llu) out of order "
                            "or past the end",
                            path, (unsigned long long)cent_off, (unsigned long long)table_off,
                            (unsigned long long)data_off);
    if (get64(h + 72) != fnv1a(fnv1a(FNV_INIT, t->map + cent_off, cent_bytes),
                               t->map + table_off, table_bytes))
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: centroid/table checksum mismatch", path);
    if (expect_uid && uid != expect_uid)
        return cairn_errorf(err, CAIRN_ESTATE,
                            "%s: tier file belongs to docstore %016llx, not to this one (%016llx)",
                            path, (unsigned long long)uid, (unsigned long long)expect_uid);
    t->l_ids = calloc(nlist, sizeof(*t->l_ids));
    t->l_vecs = calloc(nlist, sizeof(*t->l_vecs));
    t->l_n = calloc(nlist, sizeof(*t->l_n));
    if (!t->l_ids || !t->l_vecs || !t->l_n)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier: %llu lists", (unsigned long long)nlist);
    uint64_t sum = 0, per = 8 + 4 * (uint64_t)dim;
    for (uint64_t c = 0; c < nlist; c++) {
        uint64_t off = get64(t->map + table_off + 16 * c);
        uint64_t n = get64(t->map + table_off + 16 * c + 8);
        if (off % 8 || off < data_off || off > size || n > (size - off) / per || n > total - sum)
            return cairn_errorf(err, CAIRN_EFORMAT,
                                "%s: list %llu: %llu vectors at offset %llu outside the data "
                                "section [%llu, %llu)",
                                path, (unsigned long long)c, (unsigned long long)n,
                                (unsigned long long)off, (unsigned long long)data_off,
                                (unsigned long long)size);
        t->l_ids[c] = (const int64_t *)(t->map + off);
        t->l_vecs[c] = (const float *)(t->map + off + 8 * n);
        t->l_n[c] = (size_t)n;
        sum += n;
        t->total_bytes += (size_t)block_bytes(n, (int)dim);
    }
    if (sum != total)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: lists hold %llu vectors, header says %llu",
                            path, (unsigned long long)sum, (unsigned long long)total);
    t->dim = (int)dim;
    t->nlist = (size_t)nlist;
    t->total = (size_t)total;
    t->centroids = (const float *)(t->map + cent_off);
    *data_off_out = data_off;
    return 0;
}

/* slow_in_ram: the file's data section into host memory (page-locked for a GPU fast tier). */
static int load_ram(cairn_tier *t, uint64_t data_off, cairn_error *err)
{
    size_t len = t->map_len - (size_t)data_off;
    if (len == 0)
        return 0;
    char why[256] = "";
    if (t->p.device >= 0) {
        t->ram = cairn_tier_pinned_alloc(t->p.device, len, why, sizeof why);
        t->ram_pinned = t->ram != NULL;
        if (!t->ram)
            CAIRN_LOG_WARN("slow tier not page-locked", "bytes=%zu why=%s", len, why);
    }
    if (!t->ram)
        t->ram = malloc(len);
    if (!t->ram)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier: slow tier of %zu bytes in RAM", len);
    memcpy(t->ram, t->map + data_off, len);
    for (size_t c = 0; c < t->nlist; c++) {
        size_t off = (size_t)((const uint8_t *)t->l_ids[c] - t->map) - (size_t)data_off;
        t->l_ids[c] = (const int64_t *)((uint8_t *)t->ram + off);
        t->l_vecs[c] = (const float *)((uint8_t *)t->ram + off + 8 * t->l_n[c]);
    }
    t->slow_pinned = t->ram_pinned;
    return 0;
}

static cairn_tier *tier_new(const cairn_tier_params *p)
{
    cairn_tier *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->fd = -1;
    t->p = *p;
    pthread_mutex_init(&t->mu, NULL);
    pthread_mutex_init(&t->search_mu, NULL);
    pthread_mutex_init(&t->w_mu, NULL);
    pthread_cond_init(&t->pins_cv, NULL);
    pthread_cond_init(&t->io_cv, NULL);
    pthread_cond_init(&t->w_cv, NULL);
    return t;
}

static int check_params(const cairn_tier_params *p, cairn_error *err)
{
    if (p->fast_bytes < 1 || !(p->hot_decay > 0 && p->hot_decay <= 1))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "tier: fast_bytes must be >= 1, hot_decay in (0, 1]");
    if (p->max_batch < 1 || p->max_batch > 4096 || p->device < -1 ||
        (p->mode != CAIRN_TIER_CAIRN && p->mode != CAIRN_TIER_TELERAG) ||
        p->miss_split < CAIRN_TIER_MISS_CPU || p->miss_split > CAIRN_TIER_MISS_STORE)
        return cairn_errorf(err, CAIRN_EINVAL, "tier: max_batch %zu (1..4096), device %d, mode "
                            "%d, miss_split %d", p->max_batch, p->device, p->mode,
                            p->miss_split);
    return 0;
}

/* Everything after the slow tier is known: the store, the scratch, the threads. */
static int tier_start(cairn_tier *t, cairn_error *err)
{
    size_t n = t->nlist, mb = t->p.max_batch;
    for (size_t c = 0; c < n; c++)
        if (t->l_n[c] > t->max_list)
            t->max_list = t->l_n[c];
    cairn_tier_store_params sp = {
        .dim = t->dim,
        .nlist = n,
        .centroids = t->centroids,
        .capacity = (size_t)round_up(t->p.fast_bytes, CAIRN_TIER_STORE_ALIGN),
        .max_list = t->max_list,
        .device = t->p.device,
        .fp16 = t->p.fp16,
        .stage_bytes = t->p.mode == CAIRN_TIER_CAIRN && t->p.miss_split != CAIRN_TIER_MISS_CPU
                           ? t->p.stage_bytes
                           : 0,
    };
    int rc = t->p.device < 0 ? cairn_tier_store_host_open(&t->store, &sp, err)
                             : cairn_tier_store_cuda_open(&t->store, &sp, err);
    if (rc)
        return rc;
    if (t->p.miss_faiss &&
        (rc = cairn_ivf_borrow(&t->miss_ivf, t->dim, n, t->centroids,
                               (const int64_t *const *)t->l_ids, (const float *const *)t->l_vecs,
                               t->l_n, err)))
        return rc;
    t->cap = sp.capacity;
    t->slots = calloc(n, sizeof(*t->slots));
    t->q0 = malloc(mb * (size_t)t->dim * sizeof(float));
    t->io_scores = malloc(n * sizeof(float));
    t->io_heap = malloc(n * sizeof(cairn__titem));
    t->io_order = malloc(mb * n * sizeof(uint32_t));
    t->io_plan = malloc(n * sizeof(uint32_t));
    t->io_seen = malloc(n);
    t->io_res = malloc(n * sizeof(uint32_t));
    t->io_want = malloc(n * sizeof(uint32_t));
    t->s_scores = malloc(n * sizeof(float));
    t->s_heap = malloc(n * sizeof(cairn__titem));
    t->s_order = malloc(mb * n * sizeof(uint32_t));
    t->s_mark = calloc(n, sizeof(uint32_t));
    t->hit_w = malloc(mb * n * sizeof(cairn_tier_work));
    t->miss_assign = malloc(mb * n * sizeof(int64_t));
    t->hit_s = malloc(mb * CAIRN_TIER_MAX_K * sizeof(float));
    t->miss_s = malloc(mb * CAIRN_TIER_MAX_K * sizeof(float));
    t->hit_id = malloc(mb * CAIRN_TIER_MAX_K * sizeof(int64_t));
    t->miss_id = malloc(mb * CAIRN_TIER_MAX_K * sizeof(int64_t));
    t->hit_fill = malloc(mb * sizeof(size_t));
    t->miss_fill = malloc(mb * sizeof(size_t));
    t->miss_heap = malloc(CAIRN_TIER_MAX_K * sizeof(cairn__titem));
    t->merged = malloc(2 * CAIRN_TIER_MAX_K * sizeof(cairn__titem));
    t->m_cnt = calloc(n, sizeof(uint32_t));
    t->m_blk = malloc(n * sizeof(int32_t));
    t->m_list = malloc(n * sizeof(uint32_t));
    t->m_blocks = malloc(n * sizeof(cairn_tier_block));
    t->m_pairs = malloc(mb * n * sizeof(cairn_tier_pair));
    if (t->m_blk)
        for (size_t c = 0; c < n; c++)
            t->m_blk[c] = -1;
    t->store_eff = 1;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    t->cpu_threads = t->p.miss_faiss ? (ncpu > 3 ? (int)ncpu - 2 : 1) : 1;
    if (!t->slots || !t->q0 || !t->io_scores || !t->io_heap || !t->io_order || !t->io_plan ||
        !t->io_seen || !t->io_res || !t->io_want || !t->s_scores || !t->s_heap || !t->s_order ||
        !t->s_mark || !t->hit_w || !t->miss_assign || !t->hit_s || !t->miss_s || !t->hit_id ||
        !t->miss_id || !t->hit_fill || !t->miss_fill || !t->miss_heap || !t->merged ||
        !t->m_cnt || !t->m_blk || !t->m_list || !t->m_blocks || !t->m_pairs)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier: scratch for %zu lists x %zu queries", n, mb);
    if (pthread_create(&t->io_thread, NULL, io_main, t) != 0)
        return cairn_errorf(err, CAIRN_EIO, "tier: starting the I/O thread failed");
    t->io_started = true;
    if (t->p.miss_worker) {
        if (pthread_create(&t->worker, NULL, worker_main, t) != 0)
            return cairn_errorf(err, CAIRN_EIO, "tier: starting the search worker failed");
        t->worker_started = true;
    }
    t->st.fast_capacity = t->cap;
    return 0;
}

int cairn_tier_open(cairn_tier **out, const char *path, const cairn_tier_params *p,
                    uint64_t expect_uid, cairn_error *err)
{
    *out = NULL;
    int rc = check_params(p, err);
    if (rc)
        return rc;
    cairn_tier *t = tier_new(p);
    if (!t)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier: out of memory");
    uint64_t data_off = 0;
    if (!(rc = load_file(t, path, expect_uid, &data_off, err)) &&
        !(rc = p->slow_in_ram ? load_ram(t, data_off, err) : 0) && !(rc = tier_start(t, err))) {
        *out = t;
        return 0;
    }
    cairn_tier_close(t);
    return rc;
}

int cairn_tier_open_mem(cairn_tier **out, const cairn_tier_mem *m, const cairn_tier_params *p,
                        cairn_error *err)
{
    *out = NULL;
    int rc = check_params(p, err);
    if (rc)
        return rc;
    if (!m || m->dim < 1 || m->dim > 65536 || m->nlist < 1 || m->nlist > 65536 ||
        !m->centroids || !m->ids || !m->vecs || !m->n)
        return cairn_errorf(err, CAIRN_EINVAL, "tier: lists in memory need dim, nlist (both in "
                            "[1, 65536]), centroids, ids, vecs and n");
    cairn_tier *t = tier_new(p);
    if (!t)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier: out of memory");
    size_t n = m->nlist;
    t->dim = m->dim;
    t->nlist = n;
    t->centroids = m->centroids;
    t->slow_pinned = m->pinned;
    t->l_ids = calloc(n, sizeof(*t->l_ids));
    t->l_vecs = calloc(n, sizeof(*t->l_vecs));
    t->l_n = calloc(n, sizeof(*t->l_n));
    if (!t->l_ids || !t->l_vecs || !t->l_n) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "tier: %zu lists", n);
    } else {
        for (size_t c = 0; c < n && !rc; c++) {
            if (m->n[c] && (!m->ids[c] || !m->vecs[c]))
                rc = cairn_errorf(err, CAIRN_EINVAL, "tier: list %zu: %zu vectors, no memory", c,
                                  m->n[c]);
            t->l_ids[c] = m->ids[c];
            t->l_vecs[c] = m->vecs[c];
            t->l_n[c] = m->n[c];
            t->total += m->n[c];
            t->total_bytes += (size_t)block_bytes(m->n[c], m->dim);
        }
    }
    if (!rc && !(rc = tier_start(t, err))) {
        *out = t;
        return 0;
    }
    cairn_tier_close(t);
    return rc;
}

void cairn_tier_close(cairn_tier *t)
{
    if (!t)
        return;
    if (t->io_started) {
        pthread_mutex_lock(&t->mu);
        cancel_locked(t);
        t->stop = true;
        pthread_cond_broadcast(&t->io_cv);
        pthread_mutex_unlock(&t->mu);
        pthread_join(t->io_thread, NULL);
    }
    if (t->worker_started) {
        pthread_mutex_lock(&t->w_mu);
        t->w_stop = true;
        pthread_cond_broadcast(&t->w_cv);
        pthread_mutex_unlock(&t->w_mu);
        pthread_join(t->worker, NULL);
    }
    cairn_tier_store_close(t->store);
    cairn_ivf_close(t->miss_ivf);
    if (t->ram_pinned)
        cairn_tier_pinned_free(t->ram);
    else
        free(t->ram);
    if (t->map)
        munmap((void *)t->map, t->map_len);
    if (t->fd >= 0)
        close(t->fd);
    free(t->l_ids);
    free(t->l_vecs);
    free(t->l_n);
    free(t->slots);
    free(t->q0);
    free(t->io_scores);
    free(t->io_heap);
    free(t->io_order);
    free(t->io_plan);
    free(t->io_seen);
    free(t->io_res);
    free(t->io_want);
    free(t->s_scores);
    free(t->s_heap);
    free(t->s_order);
    free(t->s_mark);
    free(t->hit_w);
    free(t->miss_assign);
    free(t->hit_s);
    free(t->miss_s);
    free(t->hit_id);
    free(t->miss_id);
    free(t->hit_fill);
    free(t->miss_fill);
    free(t->miss_heap);
    free(t->merged);
    free(t->m_cnt);
    free(t->m_blk);
    free(t->m_list);
    free(t->m_blocks);
    free(t->m_pairs);
    pthread_mutex_destroy(&t->mu);
    pthread_mutex_destroy(&t->search_mu);
    pthread_mutex_destroy(&t->w_mu);
    pthread_cond_destroy(&t->pins_cv);
    pthread_cond_destroy(&t->io_cv);
    pthread_cond_destroy(&t->w_cv);
    free(t);
}

/* ---- Prefetch -------------------------------------------------------------------------------- */

int cairn_tier_prefetch_batch(cairn_tier *t, const float *q0, size_t nq, size_t budget_bytes,
                              size_t max_clusters, cairn_error *err)
{
    if (!q0 || nq < 1 || nq > t->p.max_batch)
        return cairn_errorf(err, CAIRN_EINVAL, "tier: prefetch of %zu queries (1..%zu)", nq,
                            t->p.max_batch);
    pthread_mutex_lock(&t->mu);
    cancel_locked(t);
    memcpy(t->q0, q0, nq * (size_t)t->dim * sizeof(float));
    t->q0_n = nq;
    t->budget = budget_bytes;
    t->max_clusters = max_clusters;
    t->io_job = true;
    t->st.prefetches++;
    if (budget_bytes != SIZE_MAX)
        t->st.budget_bytes += budget_bytes;
    pthread_cond_broadcast(&t->io_cv);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

int cairn_tier_prefetch(cairn_tier *t, const float *q0, size_t budget_bytes, size_t max_clusters,
                        cairn_error *err)
{
    if (!q0)
        return cairn_errorf(err, CAIRN_EINVAL, "tier: prefetch without a query");
    return cairn_tier_prefetch_batch(t, q0, 1, budget_bytes, max_clusters, err);
}

void cairn_tier_cancel(cairn_tier *t)
{
    pthread_mutex_lock(&t->mu);
    cancel_locked(t);
    pthread_mutex_unlock(&t->mu);
}

void cairn_tier_wait(cairn_tier *t)
{
    pthread_mutex_lock(&t->mu);
    while (t->io_job || t->io_busy)
        pthread_cond_wait(&t->io_cv, &t->mu);
    /* The I/O thread is idle and stays so while mu is held: the store's copy side is ours. */
    cairn_error e;
    if (t->store->i->sync(t->store, &e))
        io_failed(t, &e);
    pthread_mutex_unlock(&t->mu);
}

void cairn_tier_clear_fast(cairn_tier *t)
{
    pthread_mutex_lock(&t->mu);
    cancel_locked(t);
    while (t->total_pins > 0)
        pthread_cond_wait(&t->pins_cv, &t->mu);
    for (size_t c = 0; c < t->nlist; c++)
        t->slots[c].state = SLOT_ABSENT;
    t->used = t->hi_water = 0;
    pthread_mutex_unlock(&t->mu);
}

/* ---- Hybrid search --------------------------------------------------------------------------- */

/* Pins what a chunk of queries finds in the fast tier and lists the rest (mu held). */
static void classify(cairn_tier *t, size_t nq, size_t nprobe)
{
    t->n_hit = t->n_miss = 0;
    bool telerag = t->p.mode == CAIRN_TIER_TELERAG;
    for (size_t i = 0; i < nq; i++) {
        t->tick++;
        const uint32_t *order = t->s_order + i * nprobe;
        for (size_t r = 0; r < nprobe; r++) {
            uint32_t c = order[r];
            slot *s = &t->slots[c];
            s->hot = hotness(t, s) + 1.0;
            s->hot_tick = t->tick;
            if (s->state == SLOT_READY) {
                t->miss_assign[i * nprobe + r] = -1;
                if (telerag) {
                    t->s_mark[c] = (uint32_t)i + 1;
                    continue;
                }
                s->pins++;
                t->total_pins++;
                t->hit_w[t->n_hit++] = (cairn_tier_work){
                    .query = (uint32_t)i, .cluster = c, .off = s->off, .n = t->l_n[c]};
            } else {
                t->miss_assign[i * nprobe + r] = c;
                t->n_miss++;
            }
        }
        if (!telerag)
            continue;
        /* The whole fast tier, for every query: the probed clusters' results are kept. */
        for (size_t c = 0; c < t->nlist; c++) {
            slot *s = &t->slots[c];
            if (s->state != SLOT_READY)
                continue;
            s->pins++;
            t->total_pins++;
            t->hit_w[t->n_hit++] = (cairn_tier_work){.query = (uint32_t)i,
                                                     .cluster = (uint32_t)c,
                                                     .off = s->off,
                                                     .n = t->l_n[c],
                                                     .skip = t->s_mark[c] != (uint32_t)i + 1};
        }
        for (size_t r = 0; r < nprobe; r++)
            t->s_mark[order[r]] = 0;
    }
}

/* ---- Misses: who scans what ------------------------------------------------------------------ */

static double pair_bytes(const cairn_tier *t, uint32_t c) { return (double)block_bytes(t->l_n[c], t->dim); }

/* The worker's miss scan per thread for a chunk of nq queries: measured, or a first guess. */
static double cpu_rate(const cairn_tier *t, size_t nq)
{
    double r = t->cpu_bps[nq > 1];
    return r > 0 ? r : 2e9;
}

/* Threads a CPU miss scan of `units` pieces of parallel work keeps busy (FAISS splits one
 * query's lists over its threads, a batch by queries; the tier's own scan is one thread). */
static double cpu_lanes(const cairn_tier *t, size_t units)
{
    size_t p = (size_t)t->cpu_threads;
    return (double)(units < p ? (units ? units : 1) : p);
}

static int miss_cmp(const void *a, const void *b, void *ctx)
{
    const cairn_tier *t = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    if (t->m_cnt[x] != t->m_cnt[y])
        return t->m_cnt[x] > t->m_cnt[y] ? -1 : 1;
    if (t->l_n[x] != t->l_n[y])
        return t->l_n[x] > t->l_n[y] ? -1 : 1;
    return x < y ? -1 : (x > y);
}

/*
 * Chooses the misses the store scans itself (miss_split): fills m_blocks and m_pairs and takes
 * those out of miss_assign; n_cpu_miss and m_cpu_bytes say what is left for the worker. The
 * worker's time is modelled as its (query, cluster) bytes over its per-thread rate times the
 * threads it keeps busy; the store's as its clusters' bytes over its copy rate (measured at
 * open; one copy serves every query of the batch that probes the cluster) plus a fixed cost
 * per cluster. Clusters move to the store, the most-probed (then largest) first, whenever that
 * lowers the later of the two finishing times, so both finish about together.
 */
static void split_misses(cairn_tier *t, size_t nq, size_t nprobe)
{
    size_t total = nq * nprobe, nm = 0;
    t->m_nb = t->m_np = 0;
    t->n_cpu_miss = t->n_miss;
    t->m_cpu_bytes = 0;
    t->m_store_s = 0;
    for (size_t i = 0; i < total; i++)
        if (t->miss_assign[i] >= 0)
            t->m_cpu_bytes += pair_bytes(t, (uint32_t)t->miss_assign[i]);
    if (t->n_miss == 0 || t->p.mode != CAIRN_TIER_CAIRN ||
        t->p.miss_split == CAIRN_TIER_MISS_CPU || !t->store->i->scan_host)
        return;
    for (size_t i = 0; i < total; i++) {
        int64_t c = t->miss_assign[i];
        if (c >= 0 && t->m_cnt[c]++ == 0)
            t->m_list[nm++] = (uint32_t)c;
    }
    qsort_r(t->m_list, nm, sizeof(uint32_t), miss_cmp, t);
    double r = cpu_rate(t, nq);
    double copy = t->store->i->copy_rate ? t->store->i->copy_rate(t->store) : 0;
    if (copy <= 0)
        copy = r * t->cpu_threads; /* not known: as fast as the worker */
    copy *= 0.9 * t->store_eff;
    const double per_cluster = 5e-6;
    size_t half = t->p.stage_bytes / 2 / 256 * 256, cpu_clusters = nm;
    bool all = t->p.miss_split == CAIRN_TIER_MISS_STORE;
    double cpu_bytes = t->m_cpu_bytes, t_store = 0;
    for (size_t j = 0; j < nm; j++) {
        uint32_t c = t->m_list[j];
        if (t->l_n[c] == 0 || cairn_tier_store_stage_need(t->l_n[c], t->dim) > half)
            continue;
        double b = pair_bytes(t, c), cb = t->m_cnt[c] * b;
        double tc = cpu_bytes / (r * cpu_lanes(t, nq == 1 ? cpu_clusters : nq));
        double tc2 = cpu_clusters > 1
                         ? (cpu_bytes - cb) / (r * cpu_lanes(t, nq == 1 ? cpu_clusters - 1 : nq))
                         : 0;
        double ts2 = t_store + b / copy + per_cluster;
        if (!all && fmax(ts2, tc2) >= fmax(t_store, tc))
            continue;
        t->m_blk[c] = (int32_t)t->m_nb;
        t->m_blocks[t->m_nb++] = block_of(t, c);
        t_store = ts2;
        cpu_bytes -= cb;
        cpu_clusters--;
    }
    for (size_t i = 0; i < nq; i++)
        for (size_t k = 0; k < nprobe; k++) {
            int64_t c = t->miss_assign[i * nprobe + k];
            if (c < 0 || t->m_blk[c] < 0)
                continue;
            t->m_pairs[t->m_np++] = (cairn_tier_pair){(uint32_t)i, (uint32_t)t->m_blk[c]};
            t->miss_assign[i * nprobe + k] = -1;
            t->n_cpu_miss--;
        }
    for (size_t j = 0; j < nm; j++) {
        t->m_cnt[t->m_list[j]] = 0;
        t->m_blk[t->m_list[j]] = -1;
    }
    t->m_cpu_bytes = cpu_bytes < 0 ? 0 : cpu_bytes;
    t->m_store_s = t_store;
}

/*
 * Whether the misses go to the worker while the caller scans the hits. With both sides taking h
 * and m, in turn they take h + m and handed off max(h, w + m), w the hand-off's cost: it pays
 * exactly when w < h. On a GPU store the caller waits on the device, so it always pays; on the
 * host store h is predicted from the hit pairs' bytes and the measured scan rate. The hand-off
 * is re-measured every 32nd search that could use it (load changes its cost), and used while
 * either is not yet known.
 */
static bool handoff_pays(cairn_tier *t, bool on_store, double hit_pair_bytes)
{
    if (on_store || t->p.device >= 0 || t->hit_bps <= 0 || t->handoff_ns <= 0)
        return true;
    if (++t->handoff_age >= 32)
        return true;
    return hit_pair_bytes / t->hit_bps * 1e9 > t->handoff_ns;
}

static int search_chunk(cairn_tier *t, const float *q, size_t nq, size_t k, size_t nprobe,
                        float *scores, int64_t *ids, cairn_error *err)
{
    int64_t start = cairn_now_ns();
    int rc = CAIRN_EUNSUPPORTED;
    if (t->store->i->rank) {
        rc = t->store->i->rank(t->store, q, nq, nprobe, t->s_order, err);
        if (rc && rc != CAIRN_EUNSUPPORTED)
            return rc;
    }
    if (rc == CAIRN_EUNSUPPORTED)
        for (size_t i = 0; i < nq; i++)
            rank_top(t, q + i * (size_t)t->dim, nprobe, t->s_scores, t->s_heap,
                     t->s_order + i * nprobe);
    int64_t ranked = cairn_now_ns();

    pthread_mutex_lock(&t->mu);
    classify(t, nq, nprobe);
    pthread_mutex_unlock(&t->mu);
    split_misses(t, nq, nprobe);

    t->b_q = q;
    t->b_nq = nq;
    t->b_k = k;
    t->b_nprobe = nprobe;
    bool on_store = t->m_np > 0;
    /* What the store's scan reads: its hits' bytes, their (query, cluster) pairs', the misses'
     * blocks it copies. */
    double hit_bytes = 0, hit_pair_bytes = 0, store_bytes = 0;
    if (t->n_hit || on_store) {
        for (size_t i = 0; i < t->n_hit; i++) {
            hit_bytes += (double)t->store->i->bytes(t->store, t->hit_w[i].n);
            if (!t->hit_w[i].skip)
                hit_pair_bytes += pair_bytes(t, t->hit_w[i].cluster);
        }
        for (size_t b = 0; b < t->m_nb; b++)
            store_bytes += (double)block_bytes(t->m_blocks[b].n, t->dim);
    }
    bool parallel = t->worker_started && t->n_cpu_miss > 0 && (t->n_hit > 0 || on_store) &&
                    handoff_pays(t, on_store, hit_pair_bytes);
    int64_t woken = 0;
    if (parallel) {
        woken = cairn_now_ns();
        pthread_mutex_lock(&t->w_mu);
        t->w_done = false;
        t->w_job = true;
        pthread_cond_broadcast(&t->w_cv);
        pthread_mutex_unlock(&t->w_mu);
    }
    int64_t h0 = cairn_now_ns();
    rc = 0;
    if (t->n_hit || on_store) {
        rc = on_store ? t->store->i->scan_host(t->store, q, nq, t->hit_w, t->n_hit, t->m_blocks,
                                               t->m_nb, t->m_pairs, t->m_np, k, t->hit_s,
                                               t->hit_id, t->hit_fill, err)
                      : t->store->i->scan(t->store, q, nq, t->hit_w, t->n_hit, k, t->hit_s,
                                          t->hit_id, t->hit_fill, err);
    } else {
        memset(t->hit_fill, 0, nq * sizeof(size_t));
    }
    int64_t h1 = cairn_now_ns(), m0 = h1, m1 = h1;
    int mrc = 0;
    if (parallel) {
        pthread_mutex_lock(&t->w_mu);
        while (!t->w_done)
            pthread_cond_wait(&t->w_cv, &t->w_mu);
        m0 = t->w_t0;
        m1 = t->w_t1;
        mrc = t->miss_rc;
        pthread_mutex_unlock(&t->w_mu);
        if (mrc && !rc && err)
            *err = t->miss_err;
        /* The hand-off's cost: the worker's start after the wake-up, and the caller's own
         * wake-up after the later of the two scans ended. */
        int64_t joined = cairn_now_ns(), last = m1 > h1 ? m1 : h1;
        double cost = (double)(m0 - woken) + (double)(joined > last ? joined - last : 0);
        t->handoff_ns = t->handoff_ns > 0 ? 0.8 * t->handoff_ns + 0.2 * cost : cost;
        t->handoff_age = 0;
    } else if (t->n_cpu_miss) {
        m0 = cairn_now_ns();
        mrc = scan_misses(t, rc ? NULL : err);
        m1 = cairn_now_ns();
    } else {
        memset(t->miss_fill, 0, nq * sizeof(size_t));
    }
    if (!rc)
        rc = mrc;

    /* Merge: the top k of the union is the top k of the two top-k lists. */
    for (size_t i = 0; i < nq && !rc; i++) {
        size_t n = 0;
        for (size_t r = 0; r < t->hit_fill[i]; r++)
            t->merged[n++] = (cairn__titem){t->hit_s[i * k + r], t->hit_id[i * k + r]};
        for (size_t r = 0; r < t->miss_fill[i]; r++)
            t->merged[n++] = (cairn__titem){t->miss_s[i * k + r], t->miss_id[i * k + r]};
        qsort(t->merged, n, sizeof(cairn__titem), cairn__tier_item_cmp);
        for (size_t r = 0; r < k; r++) {
            scores[i * k + r] = r < n ? t->merged[r].s : -INFINITY;
            ids[i * k + r] = r < n ? t->merged[r].id : -1;
        }
    }

    /* The worker's measured rate per thread (large enough scans only: small ones are mostly
     * the cost of starting). */
    size_t cpu_units = nq == 1 ? t->n_cpu_miss : nq;
    double lanes = cpu_lanes(t, cpu_units), rate_now = cpu_rate(t, nq);
    if (!rc && t->n_cpu_miss && t->m_cpu_bytes >= (double)(1u << 20) && m1 > m0) {
        double obs = t->m_cpu_bytes / ((double)(m1 - m0) / 1e9 * lanes);
        double *r = &t->cpu_bps[nq > 1];
        *r = *r > 0 ? 0.7 * *r + 0.3 * obs : obs;
    }
    /* The host store's hit scan rate (scans long enough to time). */
    if (!rc && !on_store && t->p.device < 0 && hit_pair_bytes > 0 && h1 - h0 >= 20000) {
        double obs = hit_pair_bytes / ((double)(h1 - h0) / 1e9);
        t->hit_bps = t->hit_bps > 0 ? 0.7 * t->hit_bps + 0.3 * obs : obs;
    }
    /* The store's side likewise: its call took (h1 - h0) for what the model said m_store_s
     * (a lower bound, as the hits are scanned in the same call): scale its rate to match, when
     * its share was large enough to measure. */
    if (!rc && on_store && t->m_store_s >= 2e-4 && h1 > h0) {
        double e = t->store_eff * t->m_store_s / ((double)(h1 - h0) / 1e9);
        e = 0.7 * t->store_eff + 0.3 * e;
        t->store_eff = e < 0.2 ? 0.2 : e > 1.5 ? 1.5 : e;
    }
    int64_t end = cairn_now_ns();
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->n_hit; i++) {
        t->slots[t->hit_w[i].cluster].pins--;
        t->total_pins--;
    }
    if (t->total_pins == 0)
        pthread_cond_broadcast(&t->pins_cv);
    t->st.searches += nq;
    t->st.probed += nq * nprobe;
    t->st.hits += nq * nprobe - t->n_miss;
    t->st.search_ns += (uint64_t)(end - start);
    t->st.rank_ns += (uint64_t)(ranked - start);
    t->st.hit_scan_ns += (uint64_t)(h1 - h0);
    t->st.hit_scan_bytes += (uint64_t)hit_bytes;
    t->st.miss_scan_ns += (uint64_t)(m1 - m0);
    t->st.cpu_miss_bytes += (uint64_t)t->m_cpu_bytes;
    t->st.store_miss_bytes += (uint64_t)store_bytes;
    t->st.store_miss_clusters += t->m_nb;
    t->st.store_miss_pairs += t->m_np;
    t->st.saved_ns += (uint64_t)(1e9 * hit_pair_bytes /
                                 (rate_now * cpu_lanes(t, nq == 1 ? t->n_hit : nq)));
    if (parallel) {
        int64_t lo = h0 > m0 ? h0 : m0, hi = h1 < m1 ? h1 : m1;
        if (hi > lo)
            t->st.overlap_ns += (uint64_t)(hi - lo);
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int cairn_tier_search_batch(cairn_tier *t, const float *q1, size_t nq, size_t k, size_t nprobe,
                            float *scores, int64_t *ids, cairn_error *err)
{
    if (!q1 || k < 1 || k > CAIRN_TIER_MAX_K)
        return cairn_errorf(err, CAIRN_EINVAL, "tier: k %zu outside [1, %d]", k, CAIRN_TIER_MAX_K);
    if (nprobe < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "tier: nprobe must be >= 1");
    if (nprobe > t->nlist)
        nprobe = t->nlist;
    int rc = 0;
    pthread_mutex_lock(&t->search_mu);
    for (size_t i = 0; i < nq && !rc; i += t->p.max_batch) {
        size_t n = nq - i < t->p.max_batch ? nq - i : t->p.max_batch;
        rc = search_chunk(t, q1 + i * (size_t)t->dim, n, k, nprobe, scores + i * k, ids + i * k,
                          err);
    }
    pthread_mutex_unlock(&t->search_mu);
    return rc;
}

int cairn_tier_search(cairn_tier *t, const float *q1, size_t k, size_t nprobe, float *scores,
                      int64_t *ids, cairn_error *err)
{
    return cairn_tier_search_batch(t, q1, 1, k, nprobe, scores, ids, err);
}

/* ---- Stats and accessors --------------------------------------------------------------------- */

void cairn_tier_get_stats(cairn_tier *t, cairn_tier_stats *out)
{
    pthread_mutex_lock(&t->mu);
    *out = t->st;
    out->fast_used = t->used;
    out->fast_capacity = t->cap;
    size_t r = 0;
    for (size_t c = 0; c < t->nlist; c++)
        r += t->slots[c].state == SLOT_READY;
    out->resident_clusters = r;
    pthread_mutex_unlock(&t->mu);
}

void cairn_tier_reset_stats(cairn_tier *t)
{
    pthread_mutex_lock(&t->mu);
    memset(&t->st, 0, sizeof(t->st));
    pthread_mutex_unlock(&t->mu);
}

size_t cairn_tier_nlist(const cairn_tier *t) { return t->nlist; }
int cairn_tier_dim(const cairn_tier *t) { return t->dim; }
size_t cairn_tier_count(const cairn_tier *t) { return t->total; }
size_t cairn_tier_total_bytes(const cairn_tier *t) { return t->total_bytes; }
const char *cairn_tier_store_name(const cairn_tier *t) { return t->store->i->name; }
double cairn_tier_copy_rate(const cairn_tier *t)
{
    return t->store->i->copy_rate ? t->store->i->copy_rate(t->store) : 0;
}

size_t cairn_tier_budget_for(const cairn_tier *t, double seconds)
{
    double r = cairn_tier_copy_rate(t);
    if (!(seconds > 0))
        return 0;
    if (r <= 0)
        return SIZE_MAX;
    double b = r * seconds;
    return b >= (double)SIZE_MAX ? SIZE_MAX : (size_t)b;
}

size_t cairn_tier_slot_bytes(const cairn_tier *t, size_t n)
{
    return t->store->i->bytes(t->store, n);
}
