/*
 * generation/kv.c — paged KV cache: block pools per layer group, block tables, refcounts.
 *
 * Invariants: a block id is either on its group's free stack (refs 0) or referenced by refs
 * table entries of live sequences; a sequence's table has entries for blocks
 * [0, ceil(len / block_tokens)), -1 where a window group freed the block.
 */
#include "generation/kv.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int window;        /* 0 = full attention */
    int n_layers;      /* layers in this group */
    int n_blocks;
    size_t block_elems; /* n_layers * block_tokens * kv_dim */
    uint16_t *k, *v;   /* n_blocks * block_elems each */
    int32_t *refs;     /* per block */
    int32_t *free_stack;
    int n_free;
} kv_group;

typedef struct {
    int used;
    int len;
    int32_t *table[CAIRN_KV_MAX_GROUPS]; /* max_table entries each */
} kv_seq;

struct cairn_kv {
    cairn_kv_params p;
    int n_groups;
    kv_group groups[CAIRN_KV_MAX_GROUPS];
    int *layer_group;  /* per layer */
    int *layer_index;  /* index of the layer inside its group */
    int max_table;     /* ceil(max_seq_tokens / block_tokens) */
    kv_seq *seqs;
};

cairn_kv_params cairn_kv_default_params(void)
{
    return (cairn_kv_params){.block_tokens = 16, .n_blocks = 256, .n_blocks_window = 0,
                             .max_seqs = 64, .max_seq_tokens = 4096};
}

/* Pools come from the backend when there is one (device memory), else from the heap. */
static int pool_alloc(cairn_kv *kv, size_t bytes, uint16_t **out, cairn_error *err)
{
    cairn_backend *be = kv->p.backend;
    if (be)
        return be->i->alloc(be, bytes, (void **)out, err);
    *out = malloc(bytes);
    return *out ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "kv cache: out of memory (%zu bytes)",
                                   bytes);
}

static void pool_free(cairn_kv *kv, uint16_t *p)
{
    if (kv->p.backend)
        kv->p.backend->i->free(kv->p.backend, p);
    else
        free(p);
}

static int page_copy(cairn_kv *kv, uint16_t *dst, const uint16_t *src, size_t n,
                     cairn_error *err)
{
    cairn_backend *be = kv->p.backend;
    if (be)
        return be->i->copy(be, dst, src, n * sizeof(uint16_t), err);
    memcpy(dst, src, n * sizeof(uint16_t));
    return 0;
}

void cairn_kv_close(cairn_kv *kv)
{
    if (!kv)
        return;
    for (int g = 0; g < kv->n_groups; g++) {
        pool_free(kv, kv->groups[g].k);
        pool_free(kv, kv->groups[g].v);
        free(kv->groups[g].refs);
        free(kv->groups[g].free_stack);
    }
    if (kv->seqs)
        for (int s = 0; s < kv->p.max_seqs; s++)
            for (int g = 0; g < kv->n_groups; g++)
                free(kv->seqs[s].table[g]);
    free(kv->seqs);
    free(kv->layer_group);
    free(kv->layer_index);
    free(kv);
}

int cairn_kv_open(cairn_kv **out, const cairn_kv_params *p, cairn_error *err)
{
    *out = NULL;
    if (p->n_layers <= 0 || p->kv_dim <= 0 || p->block_tokens <= 0 || p->n_blocks <= 0 ||
        p->n_blocks_window < 0 || p->max_seqs <= 0 || p->max_seq_tokens <= 0)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "kv cache: n_layers, kv_dim, block_tokens, n_blocks, max_seqs and "
                            "max_seq_tokens must be positive");
    cairn_kv *kv = calloc(1, sizeof *kv);
    if (!kv)
        return cairn_errorf(err, CAIRN_ENOMEM, "kv cache: out of memory");
    kv->p = *p;
    kv->p.layer_window = NULL;
    kv->layer_group = calloc((size_t)p->n_layers, sizeof(int));
    kv->layer_index = calloc((size_t)p->n_layers, sizeof(int));
    kv->seqs = calloc((size_t)p->max_seqs, sizeof(kv_seq));
    if (!kv->layer_group || !kv->layer_index || !kv->seqs)
        goto nomem;
    for (int l = 0; l < p->n_layers; l++) {
        int w = p->layer_window ? p->layer_window[l] : 0;
        if (w < 0) {
            cairn_kv_close(kv);
            return cairn_errorf(err, CAIRN_EINVAL, "kv cache: layer %d has window %d", l, w);
        }
        int g = 0;
        while (g < kv->n_groups && kv->groups[g].window != w)
            g++;
        if (g == kv->n_groups) {
            if (g == CAIRN_KV_MAX_GROUPS) {
                cairn_kv_close(kv);
                return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                                    "kv cache: more than %d distinct attention windows",
                                    CAIRN_KV_MAX_GROUPS);
            }
            kv->groups[g].window = w;
            kv->n_groups++;
        }
        kv->layer_group[l] = g;
        kv->layer_index[l] = kv->groups[g].n_layers++;
    }
    kv->max_table = (p->max_seq_tokens + p->block_tokens - 1) / p->block_tokens;
    for (int g = 0; g < kv->n_groups; g++) {
        kv_group *gr = &kv->groups[g];
        gr->n_blocks = gr->window && p->n_blocks_window ? p->n_blocks_window : p->n_blocks;
        gr->block_elems = (size_t)gr->n_layers * (size_t)p->block_tokens * (size_t)p->kv_dim;
        if (gr->block_elems > SIZE_MAX / sizeof(uint16_t) / (size_t)gr->n_blocks) {
            cairn_kv_close(kv);
            return cairn_errorf(err, CAIRN_EOVERFLOW, "kv cache: pool size overflows");
        }
        size_t bytes = gr->block_elems * (size_t)gr->n_blocks * sizeof(uint16_t);
        int rc;
        if ((rc = pool_alloc(kv, bytes, &gr->k, err)) ||
            (rc = pool_alloc(kv, bytes, &gr->v, err))) {
            cairn_kv_close(kv);
            return cairn_error_prefix(err, "kv cache group %d (%d blocks)", g, gr->n_blocks),
                   rc;
        }
        gr->refs = calloc((size_t)gr->n_blocks, sizeof(int32_t));
        gr->free_stack = malloc((size_t)gr->n_blocks * sizeof(int32_t));
        if (!gr->refs || !gr->free_stack)
            goto nomem;
        /* Pop order 0, 1, 2, ...: the stack holds ids in reverse. */
        for (int b = 0; b < gr->n_blocks; b++)
            gr->free_stack[b] = gr->n_blocks - 1 - b;
        gr->n_free = gr->n_blocks;
    }
    *out = kv;
    return 0;
nomem:
    cairn_kv_close(kv);
    return cairn_errorf(err, CAIRN_ENOMEM, "kv cache: out of memory");
}

static kv_seq *get_seq(const cairn_kv *kv, int seq)
{
    if (seq < 0 || seq >= kv->p.max_seqs || !kv->seqs[seq].used)
        return NULL;
    return &kv->seqs[seq];
}

static int ceil_blocks(const cairn_kv *kv, int n)
{
    return (n + kv->p.block_tokens - 1) / kv->p.block_tokens;
}

static void block_unref(kv_group *g, int32_t b)
{
    if (b < 0)
        return;
    if (--g->refs[b] == 0)
        g->free_stack[g->n_free++] = b;
}

static int32_t block_take(kv_group *g)
{
    int32_t b = g->free_stack[--g->n_free];
    g->refs[b] = 1;
    return b;
}

int cairn_kv_seq_new(cairn_kv *kv, int *seq, cairn_error *err)
{
    for (int s = 0; s < kv->p.max_seqs; s++) {
        kv_seq *sq = &kv->seqs[s];
        if (sq->used)
            continue;
        for (int g = 0; g < kv->n_groups; g++) {
            if (!sq->table[g]) {
                sq->table[g] = malloc((size_t)kv->max_table * sizeof(int32_t));
                if (!sq->table[g])
                    return cairn_errorf(err, CAIRN_ENOMEM, "kv cache: out of memory");
            }
        }
        sq->used = 1;
        sq->len = 0;
        *seq = s;
        return 0;
    }
    return cairn_errorf(err, CAIRN_EBUSY, "kv cache: all %d sequence slots are in use",
                        kv->p.max_seqs);
}

/* First position a query at position `pos` can see in a group. */
static int first_visible(const kv_group *g, int pos)
{
    if (!g->window)
        return 0;
    int lo = pos - g->window + 1;
    return lo < 0 ? 0 : lo;
}

int cairn_kv_seq_fork(cairn_kv *kv, int src, int n_tokens, int *dst, cairn_error *err)
{
    kv_seq *s = get_seq(kv, src);
    if (!s || n_tokens < 0 || n_tokens > s->len)
        return cairn_errorf(err, CAIRN_EINVAL, "kv fork: bad source %d or length %d", src,
                            n_tokens);
    int nb = ceil_blocks(kv, n_tokens);
    for (int g = 0; g < kv->n_groups; g++) {
        int need = first_visible(&kv->groups[g], n_tokens) / kv->p.block_tokens;
        for (int b = need; b < nb; b++)
            if (s->table[g][b] < 0)
                return cairn_errorf(err, CAIRN_ESTATE,
                                    "kv fork: sequence %d no longer holds the window rows "
                                    "that position %d needs",
                                    src, n_tokens);
    }
    int d;
    int rc = cairn_kv_seq_new(kv, &d, err);
    if (rc)
        return rc;
    kv_seq *t = &kv->seqs[d];
    s = &kv->seqs[src];
    for (int g = 0; g < kv->n_groups; g++) {
        for (int b = 0; b < nb; b++) {
            int32_t id = s->table[g][b];
            t->table[g][b] = id;
            if (id >= 0)
                kv->groups[g].refs[id]++;
        }
    }
    t->len = n_tokens;
    *dst = d;
    return 0;
}

void cairn_kv_seq_free(cairn_kv *kv, int seq)
{
    kv_seq *s = get_seq(kv, seq);
    if (!s)
        return;
    int nb = ceil_blocks(kv, s->len);
    for (int g = 0; g < kv->n_groups; g++)
        for (int b = 0; b < nb; b++)
            block_unref(&kv->groups[g], s->table[g][b]);
    s->used = 0;
    s->len = 0;
}

int cairn_kv_seq_len(const cairn_kv *kv, int seq)
{
    const kv_seq *s = get_seq(kv, seq);
    return s ? s->len : -1;
}

int cairn_kv_append(cairn_kv *kv, int seq, int n, cairn_error *err)
{
    kv_seq *s = get_seq(kv, seq);
    if (!s || n < 0)
        return cairn_errorf(err, CAIRN_EINVAL, "kv append: unknown sequence %d", seq);
    if (n > kv->p.max_seq_tokens - s->len)
        return cairn_errorf(err, CAIRN_ELIMIT,
                            "kv append: sequence %d would hold %lld positions, the context is %d",
                            seq, (long long)s->len + n, kv->p.max_seq_tokens);
    if (n == 0)
        return 0;
    const int bt = kv->p.block_tokens;
    int old_nb = ceil_blocks(kv, s->len), new_nb = ceil_blocks(kv, s->len + n);
    int partial = s->len % bt != 0;

    /* Check every group first, so that a failure changes nothing. */
    for (int g = 0; g < kv->n_groups; g++) {
        kv_group *gr = &kv->groups[g];
        int need = new_nb - old_nb, freed = 0;
        if (partial && gr->refs[s->table[g][old_nb - 1]] > 1)
            need++;
        int keep_from = first_visible(gr, s->len) / bt;
        for (int b = 0; b < keep_from && b < old_nb; b++)
            if (s->table[g][b] >= 0 && gr->refs[s->table[g][b]] == 1)
                freed++;
        if (need > gr->n_free + freed)
            return cairn_errorf(err, CAIRN_EBUSY,
                                "kv cache exhausted: sequence %d needs %d more blocks in layer "
                                "group %d (window %d), %d free of %d",
                                seq, need, g, gr->window, gr->n_free, gr->n_blocks);
    }
    for (int g = 0; g < kv->n_groups; g++) {
        kv_group *gr = &kv->groups[g];
        int32_t *tab = s->table[g];
        int keep_from = first_visible(gr, s->len) / bt;
        for (int b = 0; b < keep_from && b < old_nb; b++) {
            block_unref(gr, tab[b]);
            tab[b] = -1;
        }
        if (partial && gr->refs[tab[old_nb - 1]] > 1) {
            int32_t old = tab[old_nb - 1], nw = block_take(gr);
            size_t off_new = (size_t)nw * gr->block_elems, off_old = (size_t)old * gr->block_elems;
            gr->refs[old]--;
            tab[old_nb - 1] = nw;
            /* Only a device fault fails a copy; the table already names the new block. */
            int rc = page_copy(kv, gr->k + off_new, gr->k + off_old, gr->block_elems, err);
            if (!rc)
                rc = page_copy(kv, gr->v + off_new, gr->v + off_old, gr->block_elems, err);
            if (rc)
                return rc;
        }
        for (int b = old_nb; b < new_nb; b++)
            tab[b] = block_take(gr);
    }
    s->len += n;
    return 0;
}

int cairn_kv_truncate(cairn_kv *kv, int seq, int n, cairn_error *err)
{
    kv_seq *s = get_seq(kv, seq);
    if (!s || n < 0 || n > s->len)
        return cairn_errorf(err, CAIRN_EINVAL, "kv truncate: bad sequence %d or length %d", seq,
                            n);
    int old_nb = ceil_blocks(kv, s->len), new_nb = ceil_blocks(kv, n);
    for (int g = 0; g < kv->n_groups; g++)
        for (int b = new_nb; b < old_nb; b++) {
            block_unref(&kv->groups[g], s->table[g][b]);
            s->table[g][b] = -1;
        }
    s->len = n;
    return 0;
}

static uint16_t *row(const cairn_kv *kv, uint16_t *base, int layer, int seq, int pos)
{
    const kv_group *g = &kv->groups[kv->layer_group[layer]];
    int32_t b = kv->seqs[seq].table[kv->layer_group[layer]][pos / kv->p.block_tokens];
    size_t layer_off = (size_t)kv->layer_index[layer] * kv->p.block_tokens * kv->p.kv_dim;
    return base + (size_t)b * g->block_elems + layer_off +
           (size_t)(pos % kv->p.block_tokens) * kv->p.kv_dim;
}

uint16_t *cairn_kv_k_row(cairn_kv *kv, int layer, int seq, int pos)
{
    return row(kv, kv->groups[kv->layer_group[layer]].k, layer, seq, pos);
}

uint16_t *cairn_kv_v_row(cairn_kv *kv, int layer, int seq, int pos)
{
    return row(kv, kv->groups[kv->layer_group[layer]].v, layer, seq, pos);
}

void cairn_kv_layout(const cairn_kv *kv, cairn_bkv *out)
{
    memset(out, 0, sizeof *out);
    out->n_groups = kv->n_groups;
    for (int g = 0; g < kv->n_groups; g++) {
        out->group[g].k = kv->groups[g].k;
        out->group[g].v = kv->groups[g].v;
        out->group[g].block_elems = kv->groups[g].block_elems;
        out->group[g].window = kv->groups[g].window;
    }
    out->layer_group = kv->layer_group;
    out->layer_index = kv->layer_index;
    out->kv_dim = kv->p.kv_dim;
    out->block_tokens = kv->p.block_tokens;
    out->max_table = kv->max_table;
}

int cairn_kv_max_table(const cairn_kv *kv) { return kv->max_table; }

int cairn_kv_n_groups(const cairn_kv *kv) { return kv->n_groups; }
int cairn_kv_layer_group(const cairn_kv *kv, int layer) { return kv->layer_group[layer]; }
int cairn_kv_group_window(const cairn_kv *kv, int group) { return kv->groups[group].window; }
int cairn_kv_free_blocks(const cairn_kv *kv, int group) { return kv->groups[group].n_free; }
int cairn_kv_block_refs(const cairn_kv *kv, int group, int block)
{
    return kv->groups[group].refs[block];
}

int cairn_kv_seq_table(const cairn_kv *kv, int seq, int group, const int32_t **table)
{
    const kv_seq *s = get_seq(kv, seq);
    if (!s)
        return -1;
    *table = s->table[group];
    return ceil_blocks(kv, s->len);
}
