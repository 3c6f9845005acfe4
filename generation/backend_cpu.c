/*
 * generation/backend_cpu.c — the CPU backend: the stages of backend.h on kernels/cpu.h.
 *
 * Device memory is host memory; weights are borrowed from the mapped GGUF (nothing is copied),
 * except the output projection, which cairn_cpu_mat_repack may lay out for the 16-rows kernel.
 * Work is split over the pool the backend was opened with.
 *
 * Rounding is llama.cpp's, bit for bit (the parity tests compare logits and greedy tokens):
 *   - q is rounded to F16 after RoPE, as it meets the F16 K cache in ggml;
 *   - Gemma's GELU is read from a table of its F16 values;
 *   - a token's matrix products and attention sum in the order llama.cpp's x86 build would have
 *     used for the batch it would have run the token in (CAIRN_CPU_ROW_* kinds). llama.cpp runs
 *     a prompt in batches of 512 tokens (its default n_batch and n_ubatch), then one token per
 *     batch; batch_set derives each token's kind from its position and its prompt's length.
 */
#include "generation/backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generation/kernels/cpu.h"

typedef struct {
    cairn_backend base;
    cairn_pool *pool; /* borrowed; NULL runs on the caller */
    int n_threads;
    float *gelu_table; /* CAIRN_CPU_GELU_TABLE_SIZE entries */
    /* Scratch, sized by reserve. */
    int max_tokens, max_ctx, group;
    size_t act_per_token; /* the largest matmul scratch for one token of the loaded matrices */
    void *act;
    size_t act_bytes;
    float *scores; /* n_threads * max_ctx * group */
    uint8_t *kinds; /* per batch token */
    const cairn_bbatch *b;
} cpu_backend;

static cpu_backend *cpu(cairn_backend *be) { return (cpu_backend *)be; }

/* ---- Row kinds ------------------------------------------------------------------------------- */

/* The CAIRN_CPU_ROW_* kind of the token at position pos of a sequence whose prompt has n_prompt
 * tokens, as llama.cpp runs it: a prompt token is a tile row when its batch has 2+ tokens and
 * it is in the batch's whole groups of four. */
static int row_kind(int pos, int n_prompt)
{
    if (pos >= n_prompt)
        return CAIRN_CPU_ROW_SINGLE;
    int start = pos - pos % 512, len = n_prompt - start < 512 ? n_prompt - start : 512;
    if (len < 2)
        return CAIRN_CPU_ROW_SINGLE;
    return CAIRN_CPU_ROW_BATCH | (pos - start < len - len % 4 ? CAIRN_CPU_ROW_TILE4 : 0) |
           (len >= 8 ? CAIRN_CPU_ROW_WIDE : 0);
}

/* A multiple of every tile width of the matrix kernels. */
#define SCRATCH_TILE 64

/* ---- Memory ---------------------------------------------------------------------------------- */

static int cpu_alloc(cairn_backend *be, size_t bytes, void **out, cairn_error *err)
{
    (void)be;
    *out = malloc(bytes ? bytes : 1);
    if (!*out)
        return cairn_errorf(err, CAIRN_ENOMEM, "cpu backend: out of memory (%zu bytes)", bytes);
    return 0;
}

static void cpu_free(cairn_backend *be, void *p)
{
    (void)be;
    free(p);
}

static int cpu_copy(cairn_backend *be, void *dst, const void *src, size_t bytes,
                    cairn_error *err)
{
    (void)be;
    (void)err;
    memmove(dst, src, bytes);
    return 0;
}

/* What a loaded matrix is to this backend: its kernels' description and, for row lookups,
 * the tensor it came from. */
typedef struct cpu_mat {
    cairn_cpu_mat m;
    void *owned;
    const cairn_gguf_tensor *t;
} cpu_mat;

static const cairn_cpu_mat *mat_of(const cairn_bmat *m) { return &((const cpu_mat *)m->priv)->m; }

static int cpu_mat_load(cairn_backend *be, const cairn_gguf_tensor *t, const char *name, int use,
                        cairn_bmat *m, cairn_error *err)
{
    (void)be;
    memset(m, 0, sizeof *m);
    cairn_cpu_mat cm = {0};
    int rc;
    if (use & (CAIRN_BMAT_MATMUL | CAIRN_BMAT_LOGITS)) {
        if ((rc = cairn_cpu_mat_from_gguf(&cm, t, err)))
            return rc;
    } else {
        /* Row lookups dequantize, which more types allow than the products do. */
        if (!cairn_gguf_type_can_dequantize(t->type) || t->n_dims != 2 || !t->data)
            return cairn_errorf(err, CAIRN_EUNSUPPORTED, "tensor '%s': type %u cannot be read "
                                "by rows", name, t->type);
        cm = (cairn_cpu_mat){.type = t->type, .rows = (int64_t)t->dims[1],
                             .cols = (int64_t)t->dims[0], .row_bytes = t->nbytes / t->dims[1],
                             .data = t->data};
    }
    cpu_mat *priv = calloc(1, sizeof *priv);
    if (!priv)
        return cairn_errorf(err, CAIRN_ENOMEM, "cpu backend: out of memory");
    priv->m = cm;
    priv->t = t;
    if ((use & CAIRN_BMAT_LOGITS) && (rc = cairn_cpu_mat_repack(&priv->m, &priv->owned, err))) {
        free(priv);
        return rc;
    }
    m->type = cm.type;
    m->rows = cm.rows;
    m->cols = cm.cols;
    m->row_bytes = cm.row_bytes;
    m->data = (void *)cm.data;
    m->priv = priv;
    if (use & (CAIRN_BMAT_MATMUL | CAIRN_BMAT_LOGITS)) {
        /* Scratch grows with the token count padded to whole tiles (8, 4 or 2 tokens): per
         * token of a whole number of SCRATCH_TILE tokens, reserve sizes it for max_tokens. */
        size_t per = cairn_cpu_matmul_scratch_bytes(&priv->m, SCRATCH_TILE) / SCRATCH_TILE;
        if (per > cpu(be)->act_per_token)
            cpu(be)->act_per_token = per;
    }
    return 0;
}

static void cpu_mat_free(cairn_backend *be, cairn_bmat *m)
{
    (void)be;
    if (!m || !m->priv)
        return;
    cpu_mat *p = m->priv;
    free(p->owned);
    free(p);
    m->priv = NULL;
}

static int cpu_upload(cairn_backend *be, void *dst, const void *src, size_t bytes,
                      cairn_error *err)
{
    return cpu_copy(be, dst, src, bytes, err);
}

static int cpu_reserve(cairn_backend *be, int max_tokens, int max_ctx, int group,
                       cairn_error *err)
{
    cpu_backend *c = cpu(be);
    if (max_tokens < 1 || max_ctx < 1 || group < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "cpu backend: reserve sizes must be positive");
    size_t act = c->act_per_token * (size_t)((max_tokens + SCRATCH_TILE - 1) / SCRATCH_TILE *
                                             SCRATCH_TILE) + 64;
    if (act > c->act_bytes) {
        void *p = aligned_alloc(64, (act + 63) / 64 * 64);
        if (!p)
            return cairn_errorf(err, CAIRN_ENOMEM, "cpu backend: %zu bytes of scratch", act);
        free(c->act);
        c->act = p;
        c->act_bytes = act;
    }
    if (max_tokens > c->max_tokens) {
        uint8_t *k = realloc(c->kinds, (size_t)max_tokens);
        if (!k)
            return cairn_errorf(err, CAIRN_ENOMEM, "cpu backend: out of memory");
        c->kinds = k;
        c->max_tokens = max_tokens;
    }
    if ((size_t)max_ctx * group > (size_t)c->max_ctx * c->group) {
        float *s = malloc(sizeof(float) * (size_t)c->n_threads * max_ctx * group);
        if (!s)
            return cairn_errorf(err, CAIRN_ENOMEM, "cpu backend: out of memory");
        free(c->scores);
        c->scores = s;
        c->max_ctx = max_ctx;
        c->group = group;
    }
    return 0;
}

/* ---- A step ---------------------------------------------------------------------------------- */

static int cpu_batch_set(cairn_backend *be, const cairn_bbatch *b, cairn_error *err)
{
    cpu_backend *c = cpu(be);
    if (b->n_tokens < 1 || b->n_tokens > c->max_tokens)
        return cairn_errorf(err, CAIRN_EINVAL, "cpu backend: %d tokens, reserved 1..%d",
                            b->n_tokens, c->max_tokens);
    for (int t = 0; t < b->n_tokens; t++)
        c->kinds[t] = (uint8_t)row_kind(b->pos[t], b->prompt_len ? b->prompt_len[t] : 0);
    c->b = b;
    return 0;
}

/* Below this many tokens the per-token work costs less than waking the pool's threads. */
#define EW_PARALLEL_MIN 16

static void run_rows(cpu_backend *c, size_t n, cairn_pool_range_fn fn, void *ctx)
{
    if (c->pool && n >= EW_PARALLEL_MIN)
        cairn_pool_parallel_for(c->pool, n, fn, ctx);
    else
        fn(ctx, 0, n, 0);
}

/* The arguments of a row-wise stage, for its pool tasks. */
typedef struct {
    cpu_backend *c;
    float eps;
    float *out, *x, *a, *h;
    const float *in, *w, *post, *next;
    int n, act;
} row_ctx;

static int cpu_embed(cairn_backend *be, const cairn_bmat *emb, float scale, float *x,
                     cairn_error *err)
{
    cpu_backend *c = cpu(be);
    const cpu_mat *pm = emb->priv;
    const int d = (int)emb->cols;
    for (int t = 0; t < c->b->n_tokens; t++) {
        float *xr = x + (size_t)t * d;
        int rc = cairn_gguf_dequantize_rows(pm->t, (uint64_t)c->b->tokens[t], 1, xr, (size_t)d,
                                            err);
        if (rc)
            return rc;
        if (scale != 1.0f)
            for (int i = 0; i < d; i++)
                xr[i] *= scale;
    }
    return 0;
}

static void norm_rows(void *p, size_t b, size_t e, int tid)
{
    (void)tid;
    row_ctx *r = p;
    for (size_t i = b; i < e; i++)
        cairn_cpu_rmsnorm(r->out + i * r->n, r->in + i * r->n, r->w, r->n, r->eps);
}

static int cpu_rmsnorm(cairn_backend *be, float *out, const float *x, const float *w, int rows,
                       int n, float eps, cairn_error *err)
{
    (void)err;
    row_ctx r = {.out = out, .in = x, .w = w, .n = n, .eps = eps};
    run_rows(cpu(be), (size_t)rows, norm_rows, &r);
    return 0;
}

static int cpu_matmul(cairn_backend *be, const cairn_bmat *const *w, int n_w, const float *x,
                      float *const *y, cairn_error *err)
{
    (void)err;
    cpu_backend *c = cpu(be);
    const cairn_cpu_mat *m[8];
    if (n_w < 1 || n_w > 8)
        return cairn_errorf(err, CAIRN_EINVAL, "cpu backend: %d matrices in one product", n_w);
    for (int i = 0; i < n_w; i++)
        m[i] = mat_of(w[i]);
    cairn_cpu_matmul_n(c->pool, m, n_w, x, c->b->n_tokens, y, c->act, c->kinds);
    return 0;
}

typedef struct {
    cpu_backend *c;
    const cairn_bqkv *p;
    float *q, *k, *v;
} qkv_ctx;

/* The K or V row of token t in the layer's pool (backend.h's cairn_bkv layout). */
static uint16_t *kv_row(const cairn_bkv *kv, const cairn_bbatch *b, int layer, int t, bool v)
{
    int g = kv->layer_group[layer];
    const int32_t *table = b->tables + ((size_t)g * b->n_seqs + b->slot[t]) * b->max_table;
    int pos = b->pos[t];
    size_t off = (size_t)table[pos / kv->block_tokens] * kv->group[g].block_elems +
                 ((size_t)kv->layer_index[layer] * kv->block_tokens +
                  (size_t)(pos % kv->block_tokens)) * kv->kv_dim;
    return (v ? kv->group[g].v : kv->group[g].k) + off;
}

static void qkv_rows(void *ctx, size_t tb, size_t te, int tid)
{
    (void)tid;
    const qkv_ctx *c = ctx;
    const cairn_bqkv *p = c->p;
    const cairn_bbatch *b = c->c->b;
    const int hd = p->head_dim, qd = p->n_head * hd, kd = p->n_head_kv * hd;
    for (size_t t = tb; t < te; t++) {
        float *q = c->q + t * qd, *k = c->k + t * kd, *v = c->v + t * kd;
        if (p->bq) {
            for (int i = 0; i < qd; i++)
                q[i] += p->bq[i];
            for (int i = 0; i < kd; i++)
                k[i] += p->bk[i];
            for (int i = 0; i < kd; i++)
                v[i] += p->bv[i];
        }
        if (p->q_norm) {
            for (int h = 0; h < p->n_head; h++)
                cairn_cpu_rmsnorm(q + h * hd, q + h * hd, p->q_norm, hd, p->eps);
            for (int h = 0; h < p->n_head_kv; h++)
                cairn_cpu_rmsnorm(k + h * hd, k + h * hd, p->k_norm, hd, p->eps);
        }
        int pos = b->pos[t];
        if (hd <= CAIRN_CPU_ROPE_MAX_DIM) {
            float cs[CAIRN_CPU_ROPE_MAX_DIM];
            cairn_cpu_rope_angles(hd, pos, p->rope_base, p->rope_freq_scale, cs);
            cairn_cpu_rope_apply(q, p->n_head, hd, cs, p->rope_neox);
            cairn_cpu_rope_apply(k, p->n_head_kv, hd, cs, p->rope_neox);
        } else {
            cairn_cpu_rope(q, p->n_head, hd, pos, p->rope_base, p->rope_freq_scale, p->rope_neox);
            cairn_cpu_rope(k, p->n_head_kv, hd, pos, p->rope_base, p->rope_freq_scale,
                           p->rope_neox);
        }
        /* Gemma 3 scales q before attention (llama.cpp: ggml_scale(Qcur, f_attention_scale),
         * then a kq scale of 1); q then meets the F16 K cache at F16, as in ggml. */
        if (p->q_scale != 1.0f)
            for (int i = 0; i < qd; i++)
                q[i] *= p->q_scale;
        cairn_cpu_round_f16(q, qd);
        cairn_cpu_f32_to_f16(k, kv_row(p->kv, b, p->layer, (int)t, false), kd);
        cairn_cpu_f32_to_f16(v, kv_row(p->kv, b, p->layer, (int)t, true), kd);
    }
}

static int cpu_qkv(cairn_backend *be, const cairn_bqkv *p, float *q, float *k, float *v,
                   cairn_error *err)
{
    (void)err;
    qkv_ctx c = {.c = cpu(be), .p = p, .q = q, .k = k, .v = v};
    run_rows(cpu(be), (size_t)cpu(be)->b->n_tokens, qkv_rows, &c);
    return 0;
}

typedef struct {
    cpu_backend *c;
    const cairn_battn *p;
    const float *q;
    float *out;
} attn_ctx;

/* One task per (token, KV head): the query heads that share a KV head read its rows once. */
static void attend(void *ctx, size_t ib, size_t ie, int tid)
{
    const attn_ctx *a = ctx;
    const cairn_battn *p = a->p;
    const cairn_bbatch *b = a->c->b;
    const cairn_bkv *kv = p->kv;
    const int hd = p->head_dim, group = p->n_head / p->n_head_kv;
    const int g = kv->layer_group[p->layer];
    float *scores = a->c->scores + (size_t)tid * a->c->max_ctx * group;
    size_t layer_off = (size_t)kv->layer_index[p->layer] * kv->block_tokens * kv->kv_dim;
    cairn_cpu_paged pg = {.k = kv->group[g].k + layer_off, .v = kv->group[g].v + layer_off,
                          .block_stride = kv->group[g].block_elems,
                          .row_stride = (size_t)kv->kv_dim, .block_tokens = kv->block_tokens};
    size_t T = (size_t)b->n_tokens;
    for (size_t i = ib; i < ie; i++) {
        /* Tokens in the order 0, T-1, 1, T-2, ...: a causal prefill's late tokens attend to
         * more positions, and the pool hands each thread a contiguous share of tasks. */
        size_t j = i / p->n_head_kv, t = j & 1 ? T - 1 - j / 2 : j / 2;
        int kvh = (int)(i % p->n_head_kv), h = kvh * group;
        int pos = b->pos[t];
        pg.blocks = b->tables + ((size_t)g * b->n_seqs + b->slot[t]) * b->max_table;
        int lo = p->window ? pos - p->window + 1 : 0;
        if (lo < 0)
            lo = 0;
        cairn_cpu_attention_heads(a->q + t * (size_t)p->n_head * hd + (size_t)h * hd, group, hd,
                                  &pg, kvh, lo, pos, p->scale, a->c->kinds[t], scores,
                                  a->out + t * (size_t)p->n_head * hd + (size_t)h * hd);
    }
}

static int cpu_attention(cairn_backend *be, const cairn_battn *p, const float *q, float *out,
                         cairn_error *err)
{
    cpu_backend *c = cpu(be);
    if (p->n_head / p->n_head_kv > c->group)
        return cairn_errorf(err, CAIRN_EINVAL, "cpu backend: %d query heads per KV head, "
                            "reserved %d", p->n_head / p->n_head_kv, c->group);
    attn_ctx a = {.c = c, .p = p, .q = q, .out = out};
    size_t n = (size_t)c->b->n_tokens * p->n_head_kv;
    if (c->pool)
        cairn_pool_parallel_for(c->pool, n, attend, &a);
    else
        attend(&a, 0, n, 0);
    return 0;
}

static void add_norm_rows(void *p, size_t tb, size_t te, int tid)
{
    (void)tid;
    const row_ctx *r = p;
    const int d = r->n;
    for (size_t t = tb; t < te; t++) {
        float *x = r->x + t * d, *a = r->a + t * d;
        if (r->post)
            cairn_cpu_rmsnorm(a, a, r->post, d, r->eps);
        for (int i = 0; i < d; i++)
            x[i] += a[i];
        if (r->next)
            cairn_cpu_rmsnorm(r->h + t * d, x, r->next, d, r->eps);
    }
}

static int cpu_add_norm(cairn_backend *be, float *x, float *a, const float *post,
                        const float *next, float *h, int n, float eps, cairn_error *err)
{
    (void)err;
    row_ctx r = {.x = x, .a = a, .post = post, .next = next, .h = h, .n = n, .eps = eps};
    run_rows(cpu(be), (size_t)cpu(be)->b->n_tokens, add_norm_rows, &r);
    return 0;
}

static void gated_rows(void *p, size_t tb, size_t te, int tid)
{
    (void)tid;
    const row_ctx *r = p;
    for (size_t t = tb; t < te; t++) {
        float *a = r->a + t * r->n;
        const float *b = r->in + t * r->n;
        if (r->act == CAIRN_ACT_GELU_TANH)
            cairn_cpu_gated_gelu_table(a, b, r->n, r->c->gelu_table);
        else
            cairn_cpu_gated(a, b, r->n, false);
    }
}

static int cpu_gated(cairn_backend *be, float *a, const float *b, int n, int act,
                     cairn_error *err)
{
    cpu_backend *c = cpu(be);
    if (act == CAIRN_ACT_GELU_TANH && !c->gelu_table) {
        c->gelu_table = malloc(sizeof(float) * CAIRN_CPU_GELU_TABLE_SIZE);
        if (!c->gelu_table)
            return cairn_errorf(err, CAIRN_ENOMEM, "cpu backend: out of memory");
        cairn_cpu_gelu_f16_table(c->gelu_table);
    }
    row_ctx r = {.c = c, .a = a, .in = b, .n = n, .act = act};
    run_rows(c, (size_t)c->b->n_tokens, gated_rows, &r);
    return 0;
}

/* The rows that want logits are normalised into the front of x (the pass is over), then
 * projected without row kinds: llama.cpp computes its logits one output row at a time. */
static int cpu_logits(cairn_backend *be, const cairn_bmat *w, const float *norm, float eps,
                      float *x, int n, float *out_host, cairn_error *err)
{
    (void)err;
    cpu_backend *c = cpu(be);
    const cairn_bbatch *b = c->b;
    int n_out = 0;
    for (int t = 0; t < b->n_tokens; t++)
        if (b->logits[t]) /* row n_out <= t: earlier rows are done with */
            cairn_cpu_rmsnorm(x + (size_t)n_out++ * n, x + (size_t)t * n, norm, n, eps);
    if (n_out > 0)
        cairn_cpu_matmul(c->pool, mat_of(w), x, n_out, out_host, c->act);
    return 0;
}

/* ---- The table --------------------------------------------------------------------------------- */

static void cpu_close(cairn_backend *be)
{
    cpu_backend *c = cpu(be);
    free(c->gelu_table);
    free(c->act);
    free(c->scores);
    free(c->kinds);
    free(c);
}

static void cpu_describe(const cairn_backend *be, char *buf, size_t len)
{
    const cpu_backend *c = (const cpu_backend *)be;
    snprintf(buf, len, "cpu, %d threads%s", c->n_threads,
             cairn_cpu_has_avx2() ? ", AVX2" : "");
}

static void cpu_traits(const cairn_backend *be, cairn_backend_traits *out)
{
    (void)be;
    /* The q8 kernels' token tiles (generation/kernels/cpu.c), and the repacked output
     * projection's token pairs. */
    out->token_tile = 8;
    out->logits_pair = 2;
    out->gemm_from = 0;
    out->cold_steps = 0;
}

static int cpu_mem_info(const cairn_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    (void)be;
    long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES),
         psz = sysconf(_SC_PAGESIZE);
    if (pages < 0 || avail < 0 || psz < 0)
        return CAIRN_EIO;
    *free_bytes = (size_t)avail * (size_t)psz;
    *total_bytes = (size_t)pages * (size_t)psz;
    return 0;
}

static const cairn_backend_i cpu_table = {
    .version = CAIRN_BACKEND_VERSION,
    .name = "cpu",
    .close = cpu_close,
    .describe = cpu_describe,
    .traits = cpu_traits,
    .mem_info = cpu_mem_info,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_upload,
    .copy = cpu_copy,
    .mat_load = cpu_mat_load,
    .mat_free = cpu_mat_free,
    .reserve = cpu_reserve,
    .batch_set = cpu_batch_set,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .qkv = cpu_qkv,
    .attention = cpu_attention,
    .add_norm = cpu_add_norm,
    .gated = cpu_gated,
    .logits = cpu_logits,
};

int cairn_backend_cpu_open(cairn_backend **out, cairn_pool *pool, cairn_error *err)
{
    *out = NULL;
    cpu_backend *c = calloc(1, sizeof *c);
    if (!c)
        return cairn_errorf(err, CAIRN_ENOMEM, "cpu backend: out of memory");
    c->base.i = &cpu_table;
    c->pool = pool;
    c->n_threads = pool ? cairn_pool_threads(pool) : 1;
    *out = &c->base;
    return 0;
}
