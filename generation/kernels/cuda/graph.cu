/*
 * generation/kernels/cuda/graph.cu — CUDA graphs of repeated step shapes.
 *
 * A decode step launches some twenty kernels a layer. At batch 1 a step's weights stream
 * through in a millisecond or two, so launching them one by one (a few microseconds each, on
 * the host and between kernels on the GPU) would set the pace. The stage entries of the table
 * therefore go through here: every stage call of a step is recorded (which stage, its
 * arguments by value), and
 *   - a step of the same shape as the one before it (token, sequence, table and logits-row
 *     counts, and where the batch sits on the device), which ran whole to its logits, has its
 *     launches captured into a graph (cudaStreamBeginCapture) instead of run, and the graph is
 *     launched at its logits;
 *   - a later step of a shape with a graph runs nothing while its calls match the graph's, one
 *     for one (model.c makes the same calls with the same buffers for the same shape), and
 *     launches the graph at its logits.
 * What differs between such steps lives in device memory that the graph reads: the batch's
 * tokens, positions, slots and tables (batch_set uploads them before the step's kernels), and
 * every input buffer. No kernel argument depends on them (attention cuts each token's keys on
 * the device), so a graph serves every step of its shape.
 *
 * Whatever else comes in the middle of a step (a download for the trace hook, the layer yield's
 * save, an upload, a copy, an allocation, a new batch) first flushes: the calls recorded so far
 * run one by one, and the step goes on without a graph. A call that differs from the graph's
 * flushes too, and drops that graph unless it was the step's first (a pass resumed at a later
 * layer after a yield). Anything that may free or move a buffer a graph uses (free, mat_free,
 * reserve, a larger batch buffer) drops every graph. Steps holding a prefill run never use
 * graphs (attention splits them by the batch's contents).
 *
 * CAIRN_CUDA_GRAPHS=0 in the environment turns graphs off (every call runs as it comes).
 */
#include "generation/kernels/cuda/common.cuh"

#include <stdlib.h>
#include <string.h>

extern "C" {
#include "common/clock.h"
}

/* A line of the graph log (CAIRN_CUDA_GRAPH_LOG): the wall clock, then what happened. */
static void glog(cairn__cuda *c, const char *what, int a, int b)
{
    if (!c->glog)
        return;
    fprintf(c->glog, "%.6f %s %d %d tokens=%d seqs=%d out=%d\n", (double)cairn_wall_ns() / 1e9,
            what, a, b, c->n_tokens, c->n_seqs, c->n_out);
}

/* ---- Running a recorded call ---------------------------------------------------------------- */

static int dispatch(cairn__cuda *c, const cairn__call *k, cairn_error *err)
{
    cairn_backend *be = &c->base;
    switch (k->stage) {
    case CAIRN__ST_EMBED:
        return cairn__cuda_embed(be, k->u.embed.emb, k->u.embed.scale, k->u.embed.x, err);
    case CAIRN__ST_RMSNORM:
        return cairn__cuda_rmsnorm(be, k->u.rmsnorm.out, k->u.rmsnorm.x, k->u.rmsnorm.w,
                                   k->u.rmsnorm.rows, k->u.rmsnorm.n, k->u.rmsnorm.eps, err);
    case CAIRN__ST_MATMUL:
        return cairn__cuda_matmul(be, k->u.matmul.w, k->u.matmul.n_w, k->u.matmul.x,
                                  k->u.matmul.y, err);
    case CAIRN__ST_QKV: {
        cairn_bqkv p = k->u.qkv.p;
        p.kv = &k->u.qkv.kv;
        return cairn__cuda_qkv(be, &p, k->u.qkv.q, k->u.qkv.k, k->u.qkv.v, err);
    }
    case CAIRN__ST_ATTN: {
        cairn_battn p = k->u.attn.p;
        p.kv = &k->u.attn.kv;
        return cairn__cuda_attention(be, &p, k->u.attn.q, k->u.attn.out, err);
    }
    case CAIRN__ST_ADD_NORM:
        return cairn__cuda_add_norm(be, k->u.add_norm.x, k->u.add_norm.a, k->u.add_norm.post,
                                    k->u.add_norm.next, k->u.add_norm.h, k->u.add_norm.n,
                                    k->u.add_norm.eps, err);
    case CAIRN__ST_GATED:
        return cairn__cuda_gated(be, k->u.gated.a, k->u.gated.b, k->u.gated.n, k->u.gated.act,
                                 err);
    default: /* logits are never re-run from the record: graph_logits runs them itself */
        return cairn_errorf(err, CAIRN_ESTATE, "cuda backend: stage %d cannot be replayed",
                            k->stage);
    }
}

/* ---- The graph cache ----------------------------------------------------------------------- */

static bool key_eq(const cairn__gkey *a, const cairn__gkey *b)
{
    return a->n_tokens == b->n_tokens && a->n_seqs == b->n_seqs && a->n_groups == b->n_groups &&
           a->max_table == b->max_table && a->n_out == b->n_out &&
           a->short_ctx == b->short_ctx && a->d_batch == b->d_batch;
}

static void graph_drop(cairn__graph *g)
{
    if (g->exec)
        (void)cudaGraphExecDestroy(g->exec);
    free(g->calls);
    memset(g, 0, sizeof *g);
}

void cairn__graph_invalidate(cairn__cuda *c)
{
    glog(c, "invalidate", 0, 0);
    for (int i = 0; i < CAIRN__GRAPHS; i++)
        graph_drop(&c->graphs[i]);
}

void cairn__graph_close(cairn__cuda *c)
{
    if (c->gmode == CAIRN__G_CAPTURE) {
        cudaGraph_t g = NULL;
        (void)cudaStreamEndCapture(c->stream, &g);
        if (g)
            (void)cudaGraphDestroy(g);
        (void)cudaGetLastError();
    }
    cairn__graph_invalidate(c);
    free(c->rec);
    c->rec = NULL;
}

static int find_graph(cairn__cuda *c, const cairn__gkey *key)
{
    for (int i = 0; i < CAIRN__GRAPHS; i++)
        if (c->graphs[i].exec && key_eq(&c->graphs[i].key, key))
            return i;
    return -1;
}

/* Stores the step's graph in a free slot, or in place of the least recently used one. */
static int store_graph(cairn__cuda *c, cudaGraphExec_t exec)
{
    int slot = 0;
    for (int i = 0; i < CAIRN__GRAPHS; i++) {
        if (!c->graphs[i].exec) {
            slot = i;
            break;
        }
        if (c->graphs[i].used < c->graphs[slot].used)
            slot = i;
    }
    cairn__call *calls = (cairn__call *)malloc(sizeof(cairn__call) * (size_t)c->n_rec);
    if (!calls)
        return CAIRN_ENOMEM;
    if (c->graphs[slot].exec)
        glog(c, "evict", slot, 0);
    graph_drop(&c->graphs[slot]);
    memcpy(calls, c->rec, sizeof(cairn__call) * (size_t)c->n_rec);
    cairn__graph *g = &c->graphs[slot];
    g->key = c->cur_key;
    g->exec = exec;
    g->calls = calls;
    g->n_calls = c->n_rec;
    g->used = ++c->gclock;
    return 0;
}

/* ---- Steps ----------------------------------------------------------------------------------- */

static int record(cairn__cuda *c, const cairn__call *k, cairn_error *err)
{
    if (c->n_rec == c->cap_rec) {
        int cap = c->cap_rec ? 2 * c->cap_rec : 256;
        cairn__call *r = (cairn__call *)realloc(c->rec, sizeof(cairn__call) * (size_t)cap);
        if (!r)
            return cairn_errorf(err, CAIRN_ENOMEM, "cuda backend: out of memory");
        c->rec = r;
        c->cap_rec = cap;
    }
    c->rec[c->n_rec++] = *k;
    return 0;
}

/* Ends a capture in progress, dropping what it caught (nothing of it ran). */
static void abandon_capture(cairn__cuda *c)
{
    cudaGraph_t g = NULL;
    (void)cudaStreamEndCapture(c->stream, &g);
    if (g)
        (void)cudaGraphDestroy(g);
    (void)cudaGetLastError(); /* a capture ended early may leave its error behind */
}

int cairn__graph_flush(cairn__cuda *c, cairn_error *err)
{
    if (c->gmode == CAIRN__G_DIRECT)
        return 0;
    glog(c, c->gmode == CAIRN__G_CAPTURE ? "flush-capture" : "flush-replay", c->n_rec, 0);
    if (c->gmode == CAIRN__G_CAPTURE)
        abandon_capture(c);
    c->gmode = CAIRN__G_DIRECT;
    c->last_done = false;
    /* The step's calls so far were captured or matched, not run: run them now. */
    for (int i = 0; i < c->n_rec; i++) {
        int rc = dispatch(c, &c->rec[i], err);
        if (rc)
            return rc;
    }
    return 0;
}

int cairn__graph_step_begin(cairn__cuda *c, cairn_error *err)
{
    (void)err;
    cairn__gkey key = {c->n_tokens, c->n_seqs,  c->n_groups,
                       c->max_table, c->n_out,   c->attn_short && c->max_pos < CAIRN__ATTN_SHORT,
                       c->d_batch};
    const bool was_done = c->last_done;
    const cairn__gkey last = c->last_key;
    c->cur_key = key;
    c->last_key = key;
    c->last_done = false;
    c->n_rec = 0;
    c->gmode = CAIRN__G_DIRECT;
    /* Graphs for steps that end in logits that fit one pass of the scratch and hold no
     * prefill run (attention takes those apart on the host, by the batch's contents). */
    if (!c->graphs_on || c->n_out < 1 || c->n_out > c->lout_tokens || c->has_runs) {
        glog(c, "step-ungraphed", c->has_runs, 0);
        return 0;
    }
    int g = find_graph(c, &key);
    if (g >= 0) {
        c->gmode = CAIRN__G_REPLAY;
        c->replay = g;
        glog(c, "step-replay", g, 0);
        return 0;
    }
    if (was_done && key_eq(&last, &key)) {
        if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
            /* steps run one call at a time from now on: slower, not wrong */
            (void)cudaGetLastError();
            c->graphs_on = false;
            return 0;
        }
        c->gmode = CAIRN__G_CAPTURE;
    }
    glog(c, c->gmode == CAIRN__G_CAPTURE ? "step-capture" : "step-direct", was_done,
         key_eq(&last, &key));
    return 0;
}

/* A stage call: run, capture, or match it against the graph being replayed. */
static int stage(cairn__cuda *c, const cairn__call *k, cairn_error *err)
{
    if (c->skip & (1u << k->stage))
        return 0; /* CAIRN_CUDA_SKIP: measuring what the stage costs */
    int rc;
    switch (c->gmode) {
    case CAIRN__G_CAPTURE:
        if ((rc = record(c, k, err)))
            return rc;
        if ((rc = dispatch(c, k, err))) {
            /* the captured calls before it never ran; the step has failed anyway */
            abandon_capture(c);
            c->gmode = CAIRN__G_DIRECT;
        }
        return rc;
    case CAIRN__G_REPLAY: {
        const cairn__graph *g = &c->graphs[c->replay];
        if (c->n_rec < g->n_calls - 1 &&
            memcmp(&g->calls[c->n_rec], k, sizeof *k) == 0)
            return record(c, k, err);
        /* Not the graph's next call: this shape's steps are not all alike. A step that differs
         * from its first call on (a pass resumed at a later layer after a yield) leaves the
         * graph to the steps it fits. */
        glog(c, "mismatch", c->n_rec, k->stage);
        if (c->n_rec > 0)
            graph_drop(&c->graphs[c->replay]);
        if ((rc = cairn__graph_flush(c, err)))
            return rc;
        return dispatch(c, k, err);
    }
    default:
        return dispatch(c, k, err);
    }
}

static cairn__cuda *enter(cairn_backend *be, cairn__call *k, int stage_id)
{
    memset(k, 0, sizeof *k);
    k->stage = stage_id;
    return cairn__cu(be);
}

/* Copies of the caller's parameter structs, field by field (their padding stays zero). */
static void copy_bkv(cairn_bkv *d, const cairn_bkv *s)
{
    d->n_groups = s->n_groups;
    for (int g = 0; g < s->n_groups && g < CAIRN_BACKEND_MAX_GROUPS; g++) {
        d->group[g].k = s->group[g].k;
        d->group[g].v = s->group[g].v;
        d->group[g].block_elems = s->group[g].block_elems;
        d->group[g].window = s->group[g].window;
    }
    d->layer_group = s->layer_group;
    d->layer_index = s->layer_index;
    d->kv_dim = s->kv_dim;
    d->block_tokens = s->block_tokens;
    d->max_table = s->max_table;
}

/* ---- The table's stage entries ----------------------------------------------------------- */

int cairn__graph_embed(cairn_backend *be, const cairn_bmat *emb, float scale, float *x,
                       cairn_error *err)
{
    cairn__call k;
    cairn__cuda *c = enter(be, &k, CAIRN__ST_EMBED);
    /* the tokens change from step to step: checked whether the call runs now or not */
    int rc = cairn__cuda_need_batch(c, "embed", err);
    if (rc || (rc = cairn__cuda_embed_check(c, emb, err)))
        return rc;
    k.u.embed.emb = emb;
    k.u.embed.scale = scale;
    k.u.embed.x = x;
    return stage(c, &k, err);
}

int cairn__graph_rmsnorm(cairn_backend *be, float *out, const float *x, const float *w,
                         int rows, int n, float eps, cairn_error *err)
{
    cairn__call k;
    cairn__cuda *c = enter(be, &k, CAIRN__ST_RMSNORM);
    k.u.rmsnorm.out = out;
    k.u.rmsnorm.x = x;
    k.u.rmsnorm.w = w;
    k.u.rmsnorm.rows = rows;
    k.u.rmsnorm.n = n;
    k.u.rmsnorm.eps = eps;
    return stage(c, &k, err);
}

int cairn__graph_matmul(cairn_backend *be, const cairn_bmat *const *w, int n_w, const float *x,
                        float *const *y, cairn_error *err)
{
    cairn__call k;
    cairn__cuda *c = enter(be, &k, CAIRN__ST_MATMUL);
    if (n_w < 1 || n_w > CAIRN__CALL_MATS)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: matmul of %d matrices (1..%d)",
                            n_w, CAIRN__CALL_MATS);
    for (int i = 0; i < n_w; i++) {
        k.u.matmul.w[i] = w[i];
        k.u.matmul.y[i] = y[i];
    }
    k.u.matmul.x = x;
    k.u.matmul.n_w = n_w;
    return stage(c, &k, err);
}

int cairn__graph_qkv(cairn_backend *be, const cairn_bqkv *p, float *q, float *k_, float *v,
                     cairn_error *err)
{
    cairn__call k;
    cairn__cuda *c = enter(be, &k, CAIRN__ST_QKV);
    if (!p->kv)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: qkv without a cache");
    cairn_bqkv *d = &k.u.qkv.p;
    d->n_head = p->n_head;
    d->n_head_kv = p->n_head_kv;
    d->head_dim = p->head_dim;
    d->bq = p->bq;
    d->bk = p->bk;
    d->bv = p->bv;
    d->q_norm = p->q_norm;
    d->k_norm = p->k_norm;
    d->eps = p->eps;
    d->rope_base = p->rope_base;
    d->rope_freq_scale = p->rope_freq_scale;
    d->rope_neox = p->rope_neox;
    d->q_scale = p->q_scale;
    d->kv = NULL; /* the cache by value below: the caller's struct may move */
    d->layer = p->layer;
    copy_bkv(&k.u.qkv.kv, p->kv);
    k.u.qkv.q = q;
    k.u.qkv.k = k_;
    k.u.qkv.v = v;
    return stage(c, &k, err);
}

int cairn__graph_attention(cairn_backend *be, const cairn_battn *p, const float *q, float *out,
                           cairn_error *err)
{
    cairn__call k;
    cairn__cuda *c = enter(be, &k, CAIRN__ST_ATTN);
    if (!p->kv)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: attention without a cache");
    cairn_battn *d = &k.u.attn.p;
    d->n_head = p->n_head;
    d->n_head_kv = p->n_head_kv;
    d->head_dim = p->head_dim;
    d->window = p->window;
    d->scale = p->scale;
    d->kv = NULL;
    d->layer = p->layer;
    copy_bkv(&k.u.attn.kv, p->kv);
    k.u.attn.q = q;
    k.u.attn.out = out;
    return stage(c, &k, err);
}

int cairn__graph_add_norm(cairn_backend *be, float *x, float *a, const float *post,
                          const float *next, float *h, int n, float eps, cairn_error *err)
{
    cairn__call k;
    cairn__cuda *c = enter(be, &k, CAIRN__ST_ADD_NORM);
    k.u.add_norm.x = x;
    k.u.add_norm.a = a;
    k.u.add_norm.h = h;
    k.u.add_norm.post = post;
    k.u.add_norm.next = next;
    k.u.add_norm.n = n;
    k.u.add_norm.eps = eps;
    return stage(c, &k, err);
}

int cairn__graph_gated(cairn_backend *be, float *a, const float *b, int n, int act,
                       cairn_error *err)
{
    cairn__call k;
    cairn__cuda *c = enter(be, &k, CAIRN__ST_GATED);
    k.u.gated.a = a;
    k.u.gated.b = b;
    k.u.gated.n = n;
    k.u.gated.act = act;
    return stage(c, &k, err);
}

/* The logits end a step: capture it into a graph, or launch the graph it matched, then send the
 * rows to the host: whole into out_host, or (picks) as each row's pick asks, the picks running
 * after the graph, outside it. */
static int logits_step(cairn_backend *be, const cairn_bmat *w, const float *norm, float eps,
                       float *x, int n, float *out_host, const cairn_bpick *picks,
                       cairn_error *err)
{
    cairn__call k;
    cairn__cuda *c = enter(be, &k, CAIRN__ST_LOGITS);
    const int kmax = picks ? cairn__cuda_pick_kmax(picks, c->n_out, err) : 0;
    if (kmax < 0)
        return kmax;
    k.u.logits.w = w;
    k.u.logits.norm = norm;
    k.u.logits.x = x;
    k.u.logits.n = n;
    k.u.logits.eps = eps;
    int rc = 0;
    if (c->gmode == CAIRN__G_REPLAY) {
        cairn__graph *g = &c->graphs[c->replay];
        if (c->n_rec == g->n_calls - 1 && memcmp(&g->calls[c->n_rec], &k, sizeof k) == 0) {
            CU_TRY(err, cudaGraphLaunch(g->exec, c->stream));
            g->used = ++c->gclock;
            c->gmode = CAIRN__G_DIRECT;
            goto copy_out;
        }
        graph_drop(g);
        if ((rc = cairn__graph_flush(c, err)))
            return rc;
    } else if (c->gmode == CAIRN__G_CAPTURE) {
        if ((rc = record(c, &k, err)) ||
            (rc = cairn__cuda_logits_compute(c, w, norm, eps, x, n, err))) {
            abandon_capture(c);
            c->gmode = CAIRN__G_DIRECT;
            return rc;
        }
        cudaGraph_t graph = NULL;
        cudaGraphExec_t exec = NULL;
        cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
        if (e == cudaSuccess)
            e = cudaGraphInstantiate(&exec, graph, 0);
        if (graph)
            (void)cudaGraphDestroy(graph);
        c->gmode = CAIRN__G_DIRECT;
        if (e != cudaSuccess) {
            /* Nothing captured ran. Run the step one call at a time, and leave graphs off:
             * this device or driver does not take them. */
            (void)cudaGetLastError();
            c->graphs_on = false;
            c->n_rec--; /* the logits run below */
            for (int i = 0; i < c->n_rec; i++)
                if ((rc = dispatch(c, &c->rec[i], err)))
                    return rc;
            rc = cairn__cuda_logits(be, w, norm, eps, x, n, out_host, picks, kmax, err);
            return rc;
        }
        if (store_graph(c, exec)) {
            (void)cudaGraphExecDestroy(exec);
            return cairn_errorf(err, CAIRN_ENOMEM, "cuda backend: out of memory");
        }
        CU_TRY(err, cudaGraphLaunch(exec, c->stream));
        goto copy_out;
    }
    if ((rc = cairn__cuda_logits(be, w, norm, eps, x, n, out_host, picks, kmax, err)))
        return rc;
    c->last_done = true;
    return 0;

copy_out:
    {
        const cairn__cmat *m = (const cairn__cmat *)w->priv;
        if ((rc = cairn__cuda_rows_out(c, out_host, picks, 0, c->n_out, m->rows, kmax, err)))
            return rc;
        CU_TRY(err, cudaStreamSynchronize(c->stream));
        cairn__cuda_rows_done(c, picks, c->n_out, kmax);
    }
    c->last_done = true;
    return 0;
}

int cairn__graph_logits(cairn_backend *be, const cairn_bmat *w, const float *norm, float eps,
                        float *x, int n, float *out_host, cairn_error *err)
{
    return logits_step(be, w, norm, eps, x, n, out_host, NULL, err);
}

int cairn__graph_logits_pick(cairn_backend *be, const cairn_bmat *w, const float *norm,
                             float eps, float *x, int n, const cairn_bpick *picks,
                             cairn_error *err)
{
    if (!picks)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: logits_pick without picks");
    return logits_step(be, w, norm, eps, x, n, NULL, picks, err);
}
