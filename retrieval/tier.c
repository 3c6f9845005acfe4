/*
 * retrieval/tier.c — slow/fast cluster tiers, lookahead prefetch and hybrid search
 * (see tier.h; the design follows TeleRAG, MLSys 2026).
 *
 * Locking: mu guards the slot table, the arena bookkeeping (used, pins), the I/O job
 * fields and the stats. The arena's bytes are written only by the I/O thread: into a
 * LOADING slot (no reader looks at it) or while compacting, which it does only with mu
 * held and no pins outstanding, so no scan can be reading what moves. Searches pin the
 * READY clusters they scan; eviction skips pinned clusters. search_mu serialises searches,
 * so the search scratch and the worker's job fields belong to the one search in flight.
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

#include "common/clock.h"

#define TIER_MAGIC "CAIRNTIR"
#define TIER_VERSION 1u
#define TIER_HEADER 128u
#define TIER_ALIGN 64u

/* ---- Slow-tier file ------------------------------------------------------------------------------ */

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

/* ---- The tier object ----------------------------------------------------------------------------- */

enum { SLOT_ABSENT = 0, SLOT_LOADING, SLOT_READY };

typedef struct {
    size_t off, bytes;  /* place in the arena (bytes rounded up to TIER_ALIGN) */
    int state;
    int pins;           /* searches scanning it now */
    uint64_t gen;       /* the prefetch that last brought or claimed it */
    double hot;         /* probe count, decayed per search as of hot_tick */
    uint64_t hot_tick;
} slot;

typedef struct {
    float s;
    int64_t id;
} hitem;

struct cairn_tier {
    cairn_tier_params p;
    int fd;
    const uint8_t *map;
    size_t map_len;
    int dim;
    size_t nlist, total, total_bytes;
    const float *centroids;
    uint64_t *list_off, *list_n;

    pthread_mutex_t mu;
    pthread_cond_t pins_cv; /* a cluster's pins dropped to 0, or a cancel */
    pthread_cond_t io_cv;   /* a job was posted, or the I/O thread went idle */
    uint8_t *arena;
    size_t cap, used;
    slot *slots;
    int total_pins;
    uint64_t tick;
    cairn_tier_stats st;
    /* I/O job (mu) */
    bool io_job, io_busy, io_cancel, stop;
    float *q0;
    size_t budget, max_clusters;
    uint64_t gen;
    pthread_t io_thread;
    bool io_started;
    /* I/O thread scratch */
    float *io_scores;
    uint32_t *io_order, *io_res;

    /* Search (search_mu) */
    pthread_mutex_t search_mu;
    float *s_scores;
    uint32_t *s_order, *hit_list, *miss_list;
    size_t *hit_off; /* arena offsets of the pinned hits, read under mu */
    size_t n_hit, n_miss;
    hitem *hit_heap, *miss_heap, *merged;
    size_t hit_n, miss_n;
    /* Search worker (w_mu) */
    pthread_mutex_t w_mu;
    pthread_cond_t w_cv;
    bool w_job, w_done, w_stop;
    const float *w_q;
    size_t w_k;
    int64_t w_t0, w_t1;
    pthread_t worker;
    bool worker_started;
};

cairn_tier_params cairn_tier_default_params(void)
{
    return (cairn_tier_params){.fast_bytes = 64u << 20, .miss_worker = true, .hot_decay = 0.98};
}

/* ---- Scoring ------------------------------------------------------------------------------------- */

/* The one inner product both tiers use: the same arithmetic in the same order everywhere. */
static float dot(const float *a, const float *b, int d)
{
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= d; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < d; i++)
        s0 += a[i] * b[i];
    float s = (s0 + s1) + (s2 + s3);
    return isnan(s) ? -INFINITY : s;
}

/* Strict total order: higher score first, then smaller id. */
static bool better(hitem a, hitem b) { return a.s > b.s || (a.s == b.s && a.id < b.id); }

/* A bounded heap whose root is the worst item kept. */
static void heap_push(hitem *h, size_t *n, size_t k, hitem it)
{
    size_t i;
    if (*n < k) {
        i = (*n)++;
        h[i] = it;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!better(h[p], h[i]))
                break;
            hitem t = h[p];
            h[p] = h[i];
            h[i] = t;
            i = p;
        }
        return;
    }
    if (!better(it, h[0]))
        return;
    h[0] = it;
    i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < *n && better(h[w], h[l]))
            w = l;
        if (r < *n && better(h[w], h[r]))
            w = r;
        if (w == i)
            break;
        hitem t = h[w];
        h[w] = h[i];
        h[i] = t;
        i = w;
    }
}

static void scan_block(const uint8_t *block, size_t n, int dim, const float *q, hitem *h,
                       size_t *hn, size_t k)
{
    const int64_t *ids = (const int64_t *)block;
    const float *v = (const float *)(block + 8 * n);
    for (size_t i = 0; i < n; i++)
        heap_push(h, hn, k, (hitem){dot(q, v + i * (size_t)dim, dim), ids[i]});
}

typedef struct {
    const float *scores;
} rank_ctx;

static int rank_cmp(const void *a, const void *b, void *ctx)
{
    const float *s = ((const rank_ctx *)ctx)->scores;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    if (s[x] != s[y])
        return s[x] > s[y] ? -1 : 1;
    return x < y ? -1 : (x > y);
}

/* Orders all clusters by q's similarity to their centroids, best first. */
static void rank_clusters(const cairn_tier *t, const float *q, float *scores, uint32_t *order)
{
    for (size_t c = 0; c < t->nlist; c++) {
        scores[c] = dot(q, t->centroids + c * (size_t)t->dim, t->dim);
        order[c] = (uint32_t)c;
    }
    rank_ctx ctx = {scores};
    qsort_r(order, t->nlist, sizeof(*order), rank_cmp, &ctx);
}

/* ---- Fast-tier space: first fit, compaction, eviction (I/O thread, mu held) ---------------------- */

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

/* Finds room for alloc bytes; returns its offset or SIZE_MAX when nothing more may go. */
static size_t reserve(cairn_tier *t, size_t alloc, uint64_t gen)
{
    for (;;) {
        size_t nres = 0;
        for (size_t c = 0; c < t->nlist; c++)
            if (t->slots[c].state != SLOT_ABSENT)
                t->io_res[nres++] = (uint32_t)c;
        qsort_r(t->io_res, nres, sizeof(uint32_t), off_cmp, t->slots);
        size_t end = 0;
        for (size_t i = 0; i < nres; i++) {
            const slot *s = &t->slots[t->io_res[i]];
            if (s->off - end >= alloc)
                return end;
            end = s->off + s->bytes;
        }
        if (t->cap - end >= alloc)
            return end;
        /* The coldest cluster this prefetch did not bring. */
        size_t victim = SIZE_MAX;
        double vh = 0;
        for (size_t c = 0; c < t->nlist; c++) {
            const slot *s = &t->slots[c];
            if (s->state != SLOT_READY || s->pins || s->gen == gen)
                continue;
            double h = hotness(t, s);
            if (victim == SIZE_MAX || h < vh) {
                victim = c;
                vh = h;
            }
        }
        /* Enough space, but in pieces: compact (slide every cluster down, in place) when
         * the free space is worth it (>= 1/8 of the arena) or nothing can be evicted;
         * otherwise evict, which is cheaper and may open a gap that fits. */
        if (t->cap - t->used >= alloc && (t->cap - t->used >= t->cap / 8 || victim == SIZE_MAX)) {
            while (t->total_pins > 0 && !t->io_cancel)
                pthread_cond_wait(&t->pins_cv, &t->mu);
            if (t->io_cancel)
                return SIZE_MAX;
            size_t cursor = 0;
            for (size_t i = 0; i < nres; i++) {
                slot *s = &t->slots[t->io_res[i]];
                if (s->off != cursor)
                    memmove(t->arena + cursor, t->arena + s->off, s->bytes);
                s->off = cursor;
                cursor += s->bytes;
            }
            t->st.compactions++;
            return cursor;
        }
        if (victim == SIZE_MAX)
            return SIZE_MAX;
        t->slots[victim].state = SLOT_ABSENT;
        t->used -= t->slots[victim].bytes;
        t->st.evictions++;
    }
}

/* ---- I/O thread ---------------------------------------------------------------------------------- */

static void run_prefetch(cairn_tier *t, uint64_t gen, size_t budget, size_t max_clusters)
{
    rank_clusters(t, t->q0, t->io_scores, t->io_order);
    size_t limit = max_clusters && max_clusters < t->nlist ? max_clusters : t->nlist;
    size_t fetched = 0;
    for (size_t r = 0; r < limit; r++) {
        uint32_t c = t->io_order[r];
        size_t need = (size_t)block_bytes(t->list_n[c], t->dim);
        size_t alloc = (size_t)round_up(need, TIER_ALIGN);
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
        size_t off = reserve(t, alloc, gen);
        if (off == SIZE_MAX) {
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
        memcpy(t->arena + off, t->map + t->list_off[c], need);
        int64_t t1 = cairn_now_ns();

        pthread_mutex_lock(&t->mu);
        s->state = SLOT_READY;
        t->st.bytes_prefetched += need;
        t->st.clusters_prefetched++;
        t->st.prefetch_ns += (uint64_t)(t1 - t0);
        pthread_mutex_unlock(&t->mu);
        fetched += need;
    }
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
        size_t budget = t->budget, maxc = t->max_clusters;
        pthread_mutex_unlock(&t->mu);
        run_prefetch(t, gen, budget, maxc);
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

/* ---- Search worker ------------------------------------------------------------------------------- */

static void scan_misses(cairn_tier *t, const float *q, size_t k)
{
    t->miss_n = 0;
    for (size_t i = 0; i < t->n_miss; i++) {
        uint32_t c = t->miss_list[i];
        scan_block(t->map + t->list_off[c], t->list_n[c], t->dim, q, t->miss_heap, &t->miss_n, k);
    }
}

static void *worker_main(void *arg)
{
    cairn_tier *t = arg;
    pthread_mutex_lock(&t->w_mu);
    for (;;) {
        while (!t->w_job && !t->w_stop)
            pthread_cond_wait(&t->w_cv, &t->w_mu);
        if (t->w_stop)
            break;
        t->w_job = false;
        pthread_mutex_unlock(&t->w_mu);
        int64_t t0 = cairn_now_ns();
        scan_misses(t, t->w_q, t->w_k);
        int64_t t1 = cairn_now_ns();
        pthread_mutex_lock(&t->w_mu);
        t->w_t0 = t0;
        t->w_t1 = t1;
        t->w_done = true;
        pthread_cond_broadcast(&t->w_cv);
    }
    pthread_mutex_unlock(&t->w_mu);
    return NULL;
}

/* ---- Open and close ------------------------------------------------------------------------------ */

static int load_file(cairn_tier *t, const char *path, uint64_t expect_uid, cairn_error *err)
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
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "%s: tier file version %u (this build reads %u)",
                            path, (uint32_t)vd, TIER_VERSION);
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
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: sections (centroids %llu, table %llu, data "
                            "%llu) out of order or past the end",
                            path, (unsigned long long)cent_off, (unsigned long long)table_off,
                            (unsigned long long)data_off);
    if (get64(h + 72) != fnv1a(fnv1a(FNV_INIT, t->map + cent_off, cent_bytes),
                               t->map + table_off, table_bytes))
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: centroid/table checksum mismatch", path);
    if (expect_uid && uid != expect_uid)
        return cairn_errorf(err, CAIRN_ESTATE,
                            "%s: tier file belongs to docstore %016llx, not to this one (%016llx)",
                            path, (unsigned long long)uid, (unsigned long long)expect_uid);
    t->list_off = calloc(nlist, sizeof(uint64_t));
    t->list_n = calloc(nlist, sizeof(uint64_t));
    if (!t->list_off || !t->list_n)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier: %llu lists", (unsigned long long)nlist);
    uint64_t sum = 0, per = 8 + 4 * (uint64_t)dim;
    for (uint64_t c = 0; c < nlist; c++) {
        uint64_t off = get64(t->map + table_off + 16 * c), n = get64(t->map + table_off + 16 * c + 8);
        if (off % 8 || off < data_off || off > size || n > (size - off) / per || n > total - sum)
            return cairn_errorf(err, CAIRN_EFORMAT,
                                "%s: list %llu: %llu vectors at offset %llu outside the data "
                                "section [%llu, %llu)",
                                path, (unsigned long long)c, (unsigned long long)n,
                                (unsigned long long)off, (unsigned long long)data_off,
                                (unsigned long long)size);
        t->list_off[c] = off;
        t->list_n[c] = n;
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
    return 0;
}

int cairn_tier_open(cairn_tier **out, const char *path, const cairn_tier_params *p,
                    uint64_t expect_uid, cairn_error *err)
{
    *out = NULL;
    if (p->fast_bytes < 1 || !(p->hot_decay > 0 && p->hot_decay <= 1))
        return cairn_errorf(err, CAIRN_EINVAL, "tier: fast_bytes must be >= 1, hot_decay in (0, 1]");
    cairn_tier *t = calloc(1, sizeof(*t));
    if (!t)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier: out of memory");
    t->fd = -1;
    t->p = *p;
    pthread_mutex_init(&t->mu, NULL);
    pthread_mutex_init(&t->search_mu, NULL);
    pthread_mutex_init(&t->w_mu, NULL);
    pthread_cond_init(&t->pins_cv, NULL);
    pthread_cond_init(&t->io_cv, NULL);
    pthread_cond_init(&t->w_cv, NULL);
    int rc = load_file(t, path, expect_uid, err);
    if (rc)
        goto fail;
    size_t n = t->nlist;
    t->cap = (size_t)round_up(p->fast_bytes, TIER_ALIGN);
    t->arena = aligned_alloc(TIER_ALIGN, t->cap);
    t->slots = calloc(n, sizeof(*t->slots));
    t->q0 = malloc((size_t)t->dim * sizeof(float));
    t->io_scores = malloc(n * sizeof(float));
    t->io_order = malloc(n * sizeof(uint32_t));
    t->io_res = malloc(n * sizeof(uint32_t));
    t->s_scores = malloc(n * sizeof(float));
    t->s_order = malloc(n * sizeof(uint32_t));
    t->hit_list = malloc(n * sizeof(uint32_t));
    t->miss_list = malloc(n * sizeof(uint32_t));
    t->hit_off = malloc(n * sizeof(size_t));
    t->hit_heap = malloc(CAIRN_TIER_MAX_K * sizeof(hitem));
    t->miss_heap = malloc(CAIRN_TIER_MAX_K * sizeof(hitem));
    t->merged = malloc(2 * CAIRN_TIER_MAX_K * sizeof(hitem));
    if (!t->arena || !t->slots || !t->q0 || !t->io_scores || !t->io_order || !t->io_res ||
        !t->s_scores || !t->s_order || !t->hit_list || !t->miss_list || !t->hit_off || !t->hit_heap ||
        !t->miss_heap || !t->merged) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "tier: fast tier of %zu bytes", t->cap);
        goto fail;
    }
    if (pthread_create(&t->io_thread, NULL, io_main, t) != 0) {
        rc = cairn_errorf(err, CAIRN_EIO, "tier: starting the I/O thread failed");
        goto fail;
    }
    t->io_started = true;
    if (p->miss_worker) {
        if (pthread_create(&t->worker, NULL, worker_main, t) != 0) {
            rc = cairn_errorf(err, CAIRN_EIO, "tier: starting the search worker failed");
            goto fail;
        }
        t->worker_started = true;
    }
    t->st.fast_capacity = t->cap;
    *out = t;
    return 0;
fail:
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
    if (t->map)
        munmap((void *)t->map, t->map_len);
    if (t->fd >= 0)
        close(t->fd);
    free(t->list_off);
    free(t->list_n);
    free(t->arena);
    free(t->slots);
    free(t->q0);
    free(t->io_scores);
    free(t->io_order);
    free(t->io_res);
    free(t->s_scores);
    free(t->s_order);
    free(t->hit_list);
    free(t->miss_list);
    free(t->hit_off);
    free(t->hit_heap);
    free(t->miss_heap);
    free(t->merged);
    pthread_mutex_destroy(&t->mu);
    pthread_mutex_destroy(&t->search_mu);
    pthread_mutex_destroy(&t->w_mu);
    pthread_cond_destroy(&t->pins_cv);
    pthread_cond_destroy(&t->io_cv);
    pthread_cond_destroy(&t->w_cv);
    free(t);
}

/* ---- Prefetch ------------------------------------------------------------------------------------ */

int cairn_tier_prefetch(cairn_tier *t, const float *q0, size_t budget_bytes, size_t max_clusters,
                        cairn_error *err)
{
    if (!q0)
        return cairn_errorf(err, CAIRN_EINVAL, "tier: prefetch without a query");
    pthread_mutex_lock(&t->mu);
    cancel_locked(t);
    memcpy(t->q0, q0, (size_t)t->dim * sizeof(float));
    t->budget = budget_bytes;
    t->max_clusters = max_clusters;
    t->io_job = true;
    t->st.prefetches++;
    pthread_cond_broadcast(&t->io_cv);
    pthread_mutex_unlock(&t->mu);
    return 0;
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
    t->used = 0;
    pthread_mutex_unlock(&t->mu);
}

/* ---- Hybrid search ------------------------------------------------------------------------------- */

static int item_cmp(const void *a, const void *b)
{
    hitem x = *(const hitem *)a, y = *(const hitem *)b;
    return better(x, y) ? -1 : better(y, x) ? 1 : 0;
}

int cairn_tier_search(cairn_tier *t, const float *q1, size_t k, size_t nprobe, float *scores,
                      int64_t *ids, cairn_error *err)
{
    if (!q1 || k < 1 || k > CAIRN_TIER_MAX_K)
        return cairn_errorf(err, CAIRN_EINVAL, "tier: k %zu outside [1, %d]", k, CAIRN_TIER_MAX_K);
    if (nprobe < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "tier: nprobe must be >= 1");
    if (nprobe > t->nlist)
        nprobe = t->nlist;
    int64_t start = cairn_now_ns();
    pthread_mutex_lock(&t->search_mu);
    rank_clusters(t, q1, t->s_scores, t->s_order);

    /* Classify and pin under mu: a READY cluster cannot move or go while pinned. */
    pthread_mutex_lock(&t->mu);
    t->tick++;
    t->n_hit = t->n_miss = 0;
    for (size_t r = 0; r < nprobe; r++) {
        uint32_t c = t->s_order[r];
        slot *s = &t->slots[c];
        s->hot = hotness(t, s) + 1.0;
        s->hot_tick = t->tick;
        if (s->state == SLOT_READY) {
            s->pins++;
            t->total_pins++;
            t->hit_off[t->n_hit] = s->off;
            t->hit_list[t->n_hit++] = c;
        } else {
            t->miss_list[t->n_miss++] = c;
        }
    }
    pthread_mutex_unlock(&t->mu);

    bool parallel = t->worker_started && t->n_miss > 0 && t->n_hit > 0;
    if (parallel) {
        pthread_mutex_lock(&t->w_mu);
        t->w_q = q1;
        t->w_k = k;
        t->w_done = false;
        t->w_job = true;
        pthread_cond_broadcast(&t->w_cv);
        pthread_mutex_unlock(&t->w_mu);
    }
    int64_t h0 = cairn_now_ns();
    t->hit_n = 0;
    for (size_t i = 0; i < t->n_hit; i++)
        scan_block(t->arena + t->hit_off[i], t->list_n[t->hit_list[i]], t->dim, q1, t->hit_heap,
                   &t->hit_n, k);
    int64_t h1 = cairn_now_ns(), m0 = h1, m1 = h1;
    if (parallel) {
        pthread_mutex_lock(&t->w_mu);
        while (!t->w_done)
            pthread_cond_wait(&t->w_cv, &t->w_mu);
        m0 = t->w_t0;
        m1 = t->w_t1;
        pthread_mutex_unlock(&t->w_mu);
    } else {
        m0 = cairn_now_ns();
        scan_misses(t, q1, k);
        m1 = cairn_now_ns();
    }

    /* Merge: the top k of the union is the top k of the two top-k lists. */
    size_t n = 0;
    for (size_t i = 0; i < t->hit_n; i++)
        t->merged[n++] = t->hit_heap[i];
    for (size_t i = 0; i < t->miss_n; i++)
        t->merged[n++] = t->miss_heap[i];
    qsort(t->merged, n, sizeof(hitem), item_cmp);
    for (size_t i = 0; i < k; i++) {
        scores[i] = i < n ? t->merged[i].s : -INFINITY;
        ids[i] = i < n ? t->merged[i].id : -1;
    }

    int64_t end = cairn_now_ns();
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->n_hit; i++) {
        slot *s = &t->slots[t->hit_list[i]];
        s->pins--;
        t->total_pins--;
    }
    if (t->total_pins == 0)
        pthread_cond_broadcast(&t->pins_cv);
    t->st.searches++;
    t->st.probed += nprobe;
    t->st.hits += t->n_hit;
    t->st.search_ns += (uint64_t)(end - start);
    t->st.hit_scan_ns += (uint64_t)(h1 - h0);
    t->st.miss_scan_ns += (uint64_t)(m1 - m0);
    if (parallel) {
        int64_t lo = h0 > m0 ? h0 : m0, hi = h1 < m1 ? h1 : m1;
        if (hi > lo)
            t->st.overlap_ns += (uint64_t)(hi - lo);
    }
    pthread_mutex_unlock(&t->mu);
    pthread_mutex_unlock(&t->search_mu);
    return 0;
}

/* ---- Stats and accessors -------------------------------------------------------------------------- */

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
