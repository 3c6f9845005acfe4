/*
 * retrieval/tier_host.c — the host store of the fast tier (see tier_store.h): a RAM arena
 * holding each cluster as the slow-tier file does, its n ids then its n vectors; copies are
 * memcpy and finish before copy_in returns; scans run on the calling thread.
 */
#include "retrieval/tier_store.h"

#include <stdlib.h>
#include <string.h>

#include "retrieval/tier_score.h"

typedef struct {
    cairn_tier_store base;
    int dim;
    size_t cap;
    uint8_t *arena;
    cairn__titem *heap; /* CAIRN_TIER_STORE_MAX_K items: one query's results at a time */
} host_store;

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

static size_t host_bytes(const cairn_tier_store *s, size_t n)
{
    const host_store *h = (const host_store *)s;
    return round_up(n * (8 + 4 * (size_t)h->dim), CAIRN_TIER_STORE_ALIGN);
}

static void host_close(cairn_tier_store *s)
{
    host_store *h = (host_store *)s;
    free(h->arena);
    free(h->heap);
    free(h);
}

static int host_copy_in(cairn_tier_store *s, uint32_t cluster, size_t off,
                        const cairn_tier_block *src, cairn_error *err)
{
    host_store *h = (host_store *)s;
    (void)cluster;
    size_t idb = src->n * 8, vb = src->n * 4 * (size_t)h->dim;
    if (off > h->cap || idb + vb > h->cap - off)
        return cairn_errorf(err, CAIRN_ERANGE, "tier host store: %zu bytes at %zu past %zu",
                            idb + vb, off, h->cap);
    memcpy(h->arena + off, src->ids, idb);
    memcpy(h->arena + off + idb, src->vecs, vb);
    return 0;
}

static int host_move(cairn_tier_store *s, uint32_t cluster, size_t dst, size_t src, size_t bytes,
                     cairn_error *err)
{
    host_store *h = (host_store *)s;
    (void)cluster;
    if (dst > h->cap || src > h->cap || bytes > h->cap - dst || bytes > h->cap - src)
        return cairn_errorf(err, CAIRN_ERANGE, "tier host store: move of %zu bytes %zu -> %zu "
                            "past %zu", bytes, src, dst, h->cap);
    memmove(h->arena + dst, h->arena + src, bytes);
    return 0;
}

static int host_sync(cairn_tier_store *s, cairn_error *err)
{
    (void)s;
    (void)err;
    return 0;
}

/* scan_host on the calling thread: resident items from the arena, host blocks where they lie.
 * Each query's results are one heap over both, so the order of the two does not matter. */
static int host_scan_host(cairn_tier_store *s, const float *q, size_t nq,
                          const cairn_tier_work *w, size_t nw, const cairn_tier_block *blocks,
                          size_t nb, const cairn_tier_pair *pairs, size_t np, size_t k,
                          float *scores, int64_t *ids, size_t *filled, cairn_error *err)
{
    host_store *h = (host_store *)s;
    if (k < 1 || k > CAIRN_TIER_STORE_MAX_K)
        return cairn_errorf(err, CAIRN_EINVAL, "tier host store: k %zu", k);
    for (size_t p = 0; p < np; p++)
        if (pairs[p].block >= nb || pairs[p].query >= nq ||
            (p && pairs[p].query < pairs[p - 1].query))
            return cairn_errorf(err, CAIRN_EINVAL, "tier host store: pair %zu (query %u, block "
                                "%u) out of order or past %zu queries / %zu blocks", p,
                                pairs[p].query, pairs[p].block, nq, nb);
    int d = h->dim;
    volatile float sink = 0; /* skipped items are read and scored all the same */
    size_t at = 0, pp = 0;
    for (size_t i = 0; i < nq; i++) {
        size_t hn = 0;
        const float *qi = q + i * (size_t)d;
        for (; at < nw && w[at].query == i; at++) {
            const uint8_t *b = h->arena + w[at].off;
            const int64_t *bid = (const int64_t *)b;
            const float *v = (const float *)(b + 8 * w[at].n);
            if (w[at].skip) {
                float acc = 0;
                for (size_t r = 0; r < w[at].n; r++)
                    acc += cairn__tier_dot(qi, v + r * (size_t)d, d);
                sink += acc;
                continue;
            }
            cairn__tier_scan_rows(bid, v, w[at].n, d, qi, h->heap, &hn, k);
        }
        for (; pp < np && pairs[pp].query == i; pp++) {
            const cairn_tier_block *b = &blocks[pairs[pp].block];
            cairn__tier_scan_rows(b->ids, b->vecs, b->n, d, qi, h->heap, &hn, k);
        }
        qsort(h->heap, hn, sizeof(cairn__titem), cairn__tier_item_cmp);
        for (size_t r = 0; r < k; r++) {
            scores[i * k + r] = r < hn ? h->heap[r].s : -INFINITY;
            ids[i * k + r] = r < hn ? h->heap[r].id : -1;
        }
        filled[i] = hn;
    }
    if (at != nw)
        return cairn_errorf(err, CAIRN_EINVAL, "tier host store: work items not sorted by "
                            "query, or a query past the batch of %zu", nq);
    return 0;
}

static int host_scan(cairn_tier_store *s, const float *q, size_t nq, const cairn_tier_work *w,
                     size_t nw, size_t k, float *scores, int64_t *ids, size_t *filled,
                     cairn_error *err)
{
    return host_scan_host(s, q, nq, w, nw, NULL, 0, NULL, 0, k, scores, ids, filled, err);
}

static const cairn_tier_store_i host_i = {
    .version = CAIRN_TIER_STORE_VERSION,
    .name = "host",
    .close = host_close,
    .bytes = host_bytes,
    .copy_in = host_copy_in,
    .move = host_move,
    .sync = host_sync,
    .scan = host_scan,
    .rank = NULL,
    .scan_host = host_scan_host,
    .copy_rate = NULL,
};

int cairn_tier_store_host_open(cairn_tier_store **out, const cairn_tier_store_params *p,
                               cairn_error *err)
{
    *out = NULL;
    if (p->dim < 1 || p->capacity < 1 || p->capacity % CAIRN_TIER_STORE_ALIGN)
        return cairn_errorf(err, CAIRN_EINVAL, "tier host store: dim %d, capacity %zu (a "
                            "positive multiple of %u)", p->dim, p->capacity,
                            CAIRN_TIER_STORE_ALIGN);
    host_store *h = calloc(1, sizeof(*h));
    if (!h)
        return cairn_errorf(err, CAIRN_ENOMEM, "tier host store: out of memory");
    h->base.i = &host_i;
    h->dim = p->dim;
    h->cap = p->capacity;
    h->arena = aligned_alloc(CAIRN_TIER_STORE_ALIGN, p->capacity);
    h->heap = malloc(CAIRN_TIER_STORE_MAX_K * sizeof(cairn__titem));
    if (!h->arena || !h->heap) {
        host_close(&h->base);
        return cairn_errorf(err, CAIRN_ENOMEM, "tier host store: arena of %zu bytes",
                            p->capacity);
    }
    *out = &h->base;
    return 0;
}
