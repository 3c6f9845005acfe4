/*
 * generation/model.c — hyperparameters, tensor binding and the forward pass.
 *
 * Forward pass over T batch tokens, per layer (shapes per token):
 *   h = rmsnorm(x) * attn_norm
 *   q, k, v = Wq h, Wk h, Wv h            (+ biases for qwen2)
 *   gemma3: q, k = rmsnorm per head * q_norm / k_norm
 *   q, k = rope(q, k, pos)                (gemma3: local base on window layers)
 *   K/V rows of every batch token -> paged cache, then per (token, head):
 *   o = softmax(scale q.K[lo..pos]) V      (lo = pos - window + 1 on window layers)
 *   a = Wo o;  gemma3: a = rmsnorm(a) * post_attention_norm
 *   x += a
 *   h = rmsnorm(x) * ffn_norm;  f = Wdown (act(Wgate h) * Wup h)   (gemma3 GELU-tanh, else SiLU)
 *   gemma3: f = rmsnorm(f) * post_ffw_norm
 *   x += f
 * then logits = Wout (rmsnorm(x) * output_norm) for the tokens asked for.
 * Gemma 3 reference: llama.cpp's gemma3 graph and the Gemma 3 technical report.
 */
#include "generation/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generation/backend.h"

/* A layer's weights as the file holds them: norm weights and biases decoded to floats, the
 * matrices as tensors of the mapped file (a backend loads them: cairn_model_ws_new). */
typedef struct {
    float *attn_norm, *ffn_norm, *q_norm, *k_norm, *post_attn_norm, *post_ffw_norm;
    float *bq, *bk, *bv;
    const cairn_gguf_tensor *wq, *wk, *wv, *wo, *wgate, *wup, *wdown;
} layer_w;

struct cairn_model {
    cairn_gguf *g;
    cairn_model_hparams hp;
    char arch_name[32];
    int *layer_window;
    layer_w *layers;
    const cairn_gguf_tensor *tok_embd;
    float *output_norm;
    const cairn_gguf_tensor *output; /* tok_embd when the output is tied */
};

/* The same weights on a backend's device. */
typedef struct {
    float *attn_norm, *ffn_norm, *q_norm, *k_norm, *post_attn_norm, *post_ffw_norm;
    float *bq, *bk, *bv;
    cairn_bmat wq, wk, wv, wo, wgate, wup, wdown;
} dev_layer;

struct cairn_model_ws {
    cairn_backend *be; /* borrowed */
    int max_tokens, max_ctx, n_layer;
    dev_layer *layers;
    cairn_bmat output, embd; /* embd unused (data NULL) when the output is tied */
    float *output_norm;
    /* Activations, device memory, max_tokens rows each. */
    float *x, *h, *q, *k, *v, *att, *a, *ffa, *ffb;
    /* Host: the step's sequences and block tables (cairn_bbatch). */
    int32_t *seq_first;  /* distinct seqs of the batch, in order of appearance */
    int32_t *seq_count;
    int32_t *seq_next;   /* per distinct seq: expected next position, during validation */
    int32_t *slot;       /* per token: its sequence's index in seq_first */
    uint8_t *want;       /* per token: its logits are wanted */
    int32_t *tables;     /* n_groups * n_seq * max_table; grown when a batch needs more */
    size_t tables_cap;
    cairn_bbatch bb;     /* the step the backend holds (it may keep pointers to it) */
    cairn_model_trace_fn trace; /* see cairn_model_ws_set_trace */
    void *trace_ctx;
    float *trace_rows;   /* host copy of a stage's rows for the trace hook */
};

/* The widest row a stage traces. */
static int trace_width(const cairn_model_hparams *hp)
{
    int w = hp->n_embd;
    if (hp->n_head * hp->head_dim > w)
        w = hp->n_head * hp->head_dim;
    if (hp->n_head * hp->head_dim_v > w)
        w = hp->n_head * hp->head_dim_v;
    return hp->n_ff > w ? hp->n_ff : w;
}

int cairn_model_ws_set_trace(cairn_model_ws *ws, const cairn_model *m, cairn_model_trace_fn fn,
                             void *ctx, cairn_error *err)
{
    if (fn && !ws->trace_rows) {
        ws->trace_rows = malloc(sizeof(float) * (size_t)ws->max_tokens * trace_width(&m->hp));
        if (!ws->trace_rows)
            return cairn_errorf(err, CAIRN_ENOMEM, "model trace: out of memory");
    }
    ws->trace = fn;
    ws->trace_ctx = ctx;
    return 0;
}

/* Hands a stage's rows to the trace hook (copied off the device first). */
static int trace(cairn_model_ws *ws, int layer, const char *stage, const float *rows, int n,
                 int width, cairn_error *err)
{
    int rc = ws->be->i->download(ws->be, ws->trace_rows, rows,
                                 sizeof(float) * (size_t)n * width, err);
    if (!rc)
        ws->trace(ws->trace_ctx, layer, stage, ws->trace_rows, n, width);
    return rc;
}

#define TRACE(ws, layer, stage, rows, n, width)                                                 \
    do {                                                                                       \
        if ((ws)->trace && (rc = trace((ws), (layer), (stage), (rows), (n), (width), err)))    \
            return rc;                                                                         \
    } while (0)

/* ---- Loading -------------------------------------------------------------------------------- */

static int get_u32_req(const cairn_gguf *g, const char *arch, const char *name, uint32_t *out,
                       cairn_error *err)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, name);
    int rc = cairn_gguf_get_u32(g, key, out, err);
    if (rc == CAIRN_ENOTFOUND)
        return cairn_errorf(err, rc, "model: missing metadata key '%s'", key);
    return rc;
}

static int get_u32_opt(const cairn_gguf *g, const char *arch, const char *name, uint32_t *out,
                       cairn_error *err)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, name);
    int rc = cairn_gguf_get_u32(g, key, out, err);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

static int get_f32_opt(const cairn_gguf *g, const char *arch, const char *name, float *out,
                       cairn_error *err)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, name);
    int rc = cairn_gguf_get_f32(g, key, out, err);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

/* A 1-D tensor of n values decoded into a new float array (norm weights, biases). */
static int load_vec(const cairn_gguf *g, const char *name, int n, bool required, float **out,
                    cairn_error *err)
{
    *out = NULL;
    const cairn_gguf_tensor *t = cairn_gguf_find_tensor(g, name);
    if (!t) {
        if (!required)
            return 0;
        return cairn_errorf(err, CAIRN_ENOTFOUND, "model: missing tensor '%s'", name);
    }
    if (t->n_elements != (uint64_t)n || t->dims[0] != (uint64_t)n)
        return cairn_errorf(err, CAIRN_EFORMAT, "model: tensor '%s' has %llu values, expected %d",
                            name, (unsigned long long)t->n_elements, n);
    float *v = malloc(sizeof(float) * (size_t)n);
    if (!v)
        return cairn_errorf(err, CAIRN_ENOMEM, "model: out of memory");
    int rc = cairn_gguf_dequantize(t, v, (size_t)n, err);
    if (rc) {
        free(v);
        return cairn_error_prefix(err, "model: tensor '%s'", name), rc;
    }
    *out = v;
    return 0;
}

/* A 2-D tensor of rows x cols (GGUF dims[0] = cols). Its type is the backend's business: a
 * backend without a kernel for it refuses it when it loads the weights (cairn_model_ws_new). */
static int load_mat(const cairn_gguf *g, const char *name, int64_t rows, int64_t cols,
                    const cairn_gguf_tensor **out, cairn_error *err)
{
    const cairn_gguf_tensor *t = cairn_gguf_find_tensor(g, name);
    if (!t)
        return cairn_errorf(err, CAIRN_ENOTFOUND, "model: missing tensor '%s'", name);
    if (t->n_dims > 2 || t->dims[2] != 1 || t->dims[3] != 1)
        return cairn_errorf(err, CAIRN_EFORMAT, "model: tensor '%s' is not a matrix (%u dims)",
                            name, t->n_dims);
    if ((int64_t)t->dims[1] != rows || (int64_t)t->dims[0] != cols)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "model: tensor '%s' is %lld x %lld (rows x cols), expected %lld x %lld",
                            name, (long long)t->dims[1], (long long)t->dims[0], (long long)rows,
                            (long long)cols);
    uint32_t bs = cairn_gguf_type_block_size(t->type);
    if (bs == 0)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "model: tensor '%s' has type %u, unknown "
                            "to this build", name, t->type);
    if (t->dims[0] % bs != 0 || !t->data)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "model: tensor '%s': row length %lld is not a whole number of "
                            "blocks of its type %u", name, (long long)cols, t->type);
    *out = t;
    return 0;
}

void cairn_model_close(cairn_model *m)
{
    if (!m)
        return;
    if (m->layers) {
        for (int l = 0; l < m->hp.n_layer; l++) {
            layer_w *L = &m->layers[l];
            free(L->attn_norm);
            free(L->ffn_norm);
            free(L->q_norm);
            free(L->k_norm);
            free(L->post_attn_norm);
            free(L->post_ffw_norm);
            free(L->bq);
            free(L->bk);
            free(L->bv);
        }
    }
    free(m->layers);
    free(m->layer_window);
    free(m->output_norm);
    cairn_gguf_close(m->g);
    free(m);
}

static int check_range(const char *what, long long v, long long lo, long long hi,
                       cairn_error *err)
{
    if (v < lo || v > hi)
        return cairn_errorf(err, CAIRN_ERANGE, "model: %s = %lld is outside [%lld, %lld]", what, v,
                            lo, hi);
    return 0;
}

static int bind(cairn_model *m, cairn_error *err)
{
    const cairn_gguf *g = m->g;
    cairn_model_hparams *hp = &m->hp;
    const char *arch = m->arch_name;
    uint32_t u;
    int rc;
#define REQ(name, field)                                                                         \
    do {                                                                                         \
        if ((rc = get_u32_req(g, arch, name, &u, err)))                                          \
            return rc;                                                                           \
        if ((rc = check_range(name, u, 1, 1 << 20, err)))                                        \
            return rc;                                                                           \
        hp->field = (int)u;                                                                      \
    } while (0)
    REQ("embedding_length", n_embd);
    REQ("block_count", n_layer);
    REQ("attention.head_count", n_head);
    REQ("feed_forward_length", n_ff);
    REQ("context_length", n_ctx_train);
#undef REQ
    if ((rc = check_range("block_count", hp->n_layer, 1, 1024, err)))
        return rc;
    u = (uint32_t)hp->n_head;
    if ((rc = get_u32_opt(g, arch, "attention.head_count_kv", &u, err)))
        return rc;
    hp->n_head_kv = (int)u;
    u = (uint32_t)(hp->n_embd / hp->n_head);
    if ((rc = get_u32_opt(g, arch, "attention.key_length", &u, err)))
        return rc;
    hp->head_dim = (int)u;
    if ((rc = get_u32_opt(g, arch, "attention.value_length", &u, err)))
        return rc;
    hp->head_dim_v = (int)u;
    if ((rc = check_range("attention.head_count_kv", hp->n_head_kv, 1, hp->n_head, err)) ||
        (rc = check_range("attention.key_length", hp->head_dim, 2, 4096, err)) ||
        (rc = check_range("attention.value_length", hp->head_dim_v, 1, 4096, err)))
        return rc;
    if (hp->n_head % hp->n_head_kv != 0)
        return cairn_errorf(err, CAIRN_ERANGE,
                            "model: head_count %d is not a multiple of head_count_kv %d",
                            hp->n_head, hp->n_head_kv);
    if (hp->head_dim_v != hp->head_dim)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "model: value_length %d differs from key_length %d",
                            hp->head_dim_v, hp->head_dim);
    if (hp->head_dim % 2 != 0)
        return cairn_errorf(err, CAIRN_ERANGE, "model: key_length %d is odd (RoPE needs pairs)",
                            hp->head_dim);
    hp->rms_eps = 1e-6f;
    if ((rc = get_f32_opt(g, arch, "attention.layer_norm_rms_epsilon", &hp->rms_eps, err)))
        return rc;
    hp->rope_base = 10000.0f;
    if ((rc = get_f32_opt(g, arch, "rope.freq_base", &hp->rope_base, err)))
        return rc;
    float factor = 0.0f;
    if ((rc = get_f32_opt(g, arch, "rope.scaling.factor", &factor, err)))
        return rc;
    hp->rope_freq_scale = factor > 0.0f ? 1.0f / factor : 1.0f;
    if (!(hp->rope_base > 0.0f) || !(hp->rms_eps > 0.0f))
        return cairn_errorf(err, CAIRN_ERANGE, "model: rope.freq_base and rms epsilon must be > 0");
    hp->rope_base_local = hp->rope_base;
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    hp->rope_neox = hp->arch != CAIRN_ARCH_LLAMA;

    m->layer_window = calloc((size_t)hp->n_layer, sizeof(int));
    m->layers = calloc((size_t)hp->n_layer, sizeof(layer_w));
    if (!m->layer_window || !m->layers)
        return cairn_errorf(err, CAIRN_ENOMEM, "model: out of memory");
    hp->layer_window = m->layer_window;
    if (hp->arch == CAIRN_ARCH_GEMMA3) {
        /* Gemma 3: five sliding-window layers, then one global layer; local RoPE base 10k. */
        uint32_t win = 0, pattern = 6;
        if ((rc = get_u32_req(g, arch, "attention.sliding_window", &win, err)) ||
            (rc = get_u32_opt(g, arch, "attention.sliding_window_pattern", &pattern, err)))
            return rc;
        if ((rc = check_range("attention.sliding_window", win, 1, 1 << 24, err)) ||
            (rc = check_range("attention.sliding_window_pattern", pattern, 1, 1024, err)))
            return rc;
        hp->sliding_window = (int)win;
        for (int l = 0; l < hp->n_layer; l++)
            m->layer_window[l] = (l + 1) % (int)pattern != 0 ? (int)win : 0;
        hp->rope_base_local = 10000.0f;
    }

    m->tok_embd = cairn_gguf_find_tensor(g, "token_embd.weight");
    if (!m->tok_embd)
        return cairn_errorf(err, CAIRN_ENOTFOUND, "model: missing tensor 'token_embd.weight'");
    if (m->tok_embd->n_dims != 2 || m->tok_embd->dims[0] != (uint64_t)hp->n_embd ||
        m->tok_embd->dims[1] < 1 || m->tok_embd->dims[1] > (1u << 24))
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "model: token_embd.weight must be %d x n_vocab", hp->n_embd);
    if (!cairn_gguf_type_can_dequantize(m->tok_embd->type))
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "model: token_embd.weight type %u",
                            m->tok_embd->type);
    hp->n_vocab = (int)m->tok_embd->dims[1];
    if ((rc = load_vec(g, "output_norm.weight", hp->n_embd, true, &m->output_norm, err)))
        return rc;
    if (cairn_gguf_find_tensor(g, "output.weight")) {
        if ((rc = load_mat(g, "output.weight", hp->n_vocab, hp->n_embd, &m->output, err)))
            return rc;
    } else if ((rc = load_mat(g, "token_embd.weight", hp->n_vocab, hp->n_embd, &m->output,
                              err))) {
        return rc; /* tied output */
    }

    const int d = hp->n_embd, qd = hp->n_head * hp->head_dim, kd = hp->n_head_kv * hp->head_dim,
              vd = hp->n_head_kv * hp->head_dim_v, od = hp->n_head * hp->head_dim_v;
    bool gemma = hp->arch == CAIRN_ARCH_GEMMA3, qwen = hp->arch == CAIRN_ARCH_QWEN2;
    for (int l = 0; l < hp->n_layer; l++) {
        layer_w *L = &m->layers[l];
        char nm[96];
#define N(s) (snprintf(nm, sizeof nm, "blk.%d.%s", l, s), nm)
        if ((rc = load_vec(g, N("attn_norm.weight"), d, true, &L->attn_norm, err)) ||
            (rc = load_vec(g, N("ffn_norm.weight"), d, true, &L->ffn_norm, err)) ||
            (rc = load_mat(g, N("attn_q.weight"), qd, d, &L->wq, err)) ||
            (rc = load_mat(g, N("attn_k.weight"), kd, d, &L->wk, err)) ||
            (rc = load_mat(g, N("attn_v.weight"), vd, d, &L->wv, err)) ||
            (rc = load_mat(g, N("attn_output.weight"), d, od, &L->wo, err)) ||
            (rc = load_mat(g, N("ffn_gate.weight"), hp->n_ff, d, &L->wgate, err)) ||
            (rc = load_mat(g, N("ffn_up.weight"), hp->n_ff, d, &L->wup, err)) ||
            (rc = load_mat(g, N("ffn_down.weight"), d, hp->n_ff, &L->wdown, err)))
            return rc;
        if (gemma &&
            ((rc = load_vec(g, N("attn_q_norm.weight"), hp->head_dim, true, &L->q_norm, err)) ||
             (rc = load_vec(g, N("attn_k_norm.weight"), hp->head_dim, true, &L->k_norm, err)) ||
             (rc = load_vec(g, N("post_attention_norm.weight"), d, true, &L->post_attn_norm,
                            err)) ||
             (rc = load_vec(g, N("post_ffw_norm.weight"), d, true, &L->post_ffw_norm, err))))
            return rc;
        if (qwen &&
            ((rc = load_vec(g, N("attn_q.bias"), qd, true, &L->bq, err)) ||
             (rc = load_vec(g, N("attn_k.bias"), kd, true, &L->bk, err)) ||
             (rc = load_vec(g, N("attn_v.bias"), vd, true, &L->bv, err))))
            return rc;
#undef N
    }
    return 0;
}

int cairn_model_open(cairn_model **out, const char *path, cairn_error *err)
{
    *out = NULL;
    cairn_model *m = calloc(1, sizeof *m);
    if (!m)
        return cairn_errorf(err, CAIRN_ENOMEM, "model: out of memory");
    int rc = cairn_gguf_open(&m->g, path, err);
    if (rc) {
        free(m);
        return rc;
    }
    const char *arch = NULL;
    rc = cairn_gguf_get_str(m->g, "general.architecture", &arch, NULL, err);
    if (rc) {
        cairn_model_close(m);
        return cairn_errorf(err, rc == CAIRN_ENOTFOUND ? CAIRN_EFORMAT : rc,
                            "model %s: no string 'general.architecture'", path);
    }
    if (!strcmp(arch, "gemma3"))
        m->hp.arch = CAIRN_ARCH_GEMMA3;
    else if (!strcmp(arch, "llama"))
        m->hp.arch = CAIRN_ARCH_LLAMA;
    else if (!strcmp(arch, "qwen2"))
        m->hp.arch = CAIRN_ARCH_QWEN2;
    else {
        cairn_errorf(err, CAIRN_EUNSUPPORTED,
                     "model %s: architecture '%.64s' is not supported (gemma3, llama, qwen2)",
                     path, arch);
        cairn_model_close(m);
        return CAIRN_EUNSUPPORTED;
    }
    snprintf(m->arch_name, sizeof m->arch_name, "%s", arch);
    m->hp.arch_name = m->arch_name;
    rc = bind(m, err);
    if (rc) {
        cairn_error_prefix(err, "%s", path);
        cairn_model_close(m);
        return rc;
    }
    *out = m;
    return 0;
}

const cairn_model_hparams *cairn_model_hparams_of(const cairn_model *m) { return &m->hp; }
const cairn_gguf *cairn_model_gguf(const cairn_model *m) { return m->g; }

void cairn_model_kv_params(const cairn_model *m, cairn_kv_params *p)
{
    p->n_layers = m->hp.n_layer;
    p->layer_window = m->layer_window;
    p->kv_dim = m->hp.n_head_kv * m->hp.head_dim;
}

/* ---- Workspace: the weights on a backend, and the activations -------------------------------- */

static void free_vec(cairn_backend *be, float **v)
{
    be->i->free(be, *v);
    *v = NULL;
}

void cairn_model_ws_free(cairn_model_ws *ws)
{
    if (!ws)
        return;
    cairn_backend *be = ws->be;
    if (ws->layers) {
        /* Entries the open did not reach are zero: free and mat_free take them. */
        for (int l = 0; l < ws->n_layer; l++) {
            dev_layer *D = &ws->layers[l];
            cairn_bmat *mats[7] = {&D->wq, &D->wk, &D->wv, &D->wo, &D->wgate, &D->wup, &D->wdown};
            for (int i = 0; i < 7; i++)
                be->i->mat_free(be, mats[i]);
            float **vecs[9] = {&D->attn_norm, &D->ffn_norm, &D->q_norm, &D->k_norm,
                               &D->post_attn_norm, &D->post_ffw_norm, &D->bq, &D->bk, &D->bv};
            for (int i = 0; i < 9; i++)
                free_vec(be, vecs[i]);
        }
    }
    free(ws->layers);
    be->i->mat_free(be, &ws->output);
    be->i->mat_free(be, &ws->embd);
    free_vec(be, &ws->output_norm);
    float **acts[9] = {&ws->x, &ws->h, &ws->q, &ws->k, &ws->v, &ws->att, &ws->a, &ws->ffa,
                       &ws->ffb};
    for (int i = 0; i < 9; i++)
        free_vec(be, acts[i]);
    free(ws->seq_first);
    free(ws->seq_count);
    free(ws->seq_next);
    free(ws->slot);
    free(ws->want);
    free(ws->tables);
    free(ws->trace_rows);
    free(ws);
}

/* A host vector of n floats on the device (NULL stays NULL). */
static int put_vec(cairn_backend *be, const float *v, int n, float **out, cairn_error *err)
{
    *out = NULL;
    if (!v)
        return 0;
    return cairn_backend_alloc_upload(be, v, sizeof(float) * (size_t)n, (void **)out, err);
}

static int put_mat(cairn_backend *be, const cairn_gguf_tensor *t, int use, cairn_bmat *out,
                   cairn_error *err)
{
    return be->i->mat_load(be, t, t->name, use, out, err);
}

static int load_layer(cairn_backend *be, const cairn_model *m, int l, dev_layer *D,
                      cairn_error *err)
{
    const cairn_model_hparams *hp = &m->hp;
    const layer_w *L = &m->layers[l];
    const int d = hp->n_embd, qd = hp->n_head * hp->head_dim, kd = hp->n_head_kv * hp->head_dim;
    int rc;
    if ((rc = put_mat(be, L->wq, CAIRN_BMAT_MATMUL, &D->wq, err)) ||
        (rc = put_mat(be, L->wk, CAIRN_BMAT_MATMUL, &D->wk, err)) ||
        (rc = put_mat(be, L->wv, CAIRN_BMAT_MATMUL, &D->wv, err)) ||
        (rc = put_mat(be, L->wo, CAIRN_BMAT_MATMUL, &D->wo, err)) ||
        (rc = put_mat(be, L->wgate, CAIRN_BMAT_MATMUL, &D->wgate, err)) ||
        (rc = put_mat(be, L->wup, CAIRN_BMAT_MATMUL, &D->wup, err)) ||
        (rc = put_mat(be, L->wdown, CAIRN_BMAT_MATMUL, &D->wdown, err)) ||
        (rc = put_vec(be, L->attn_norm, d, &D->attn_norm, err)) ||
        (rc = put_vec(be, L->ffn_norm, d, &D->ffn_norm, err)) ||
        (rc = put_vec(be, L->q_norm, hp->head_dim, &D->q_norm, err)) ||
        (rc = put_vec(be, L->k_norm, hp->head_dim, &D->k_norm, err)) ||
        (rc = put_vec(be, L->post_attn_norm, d, &D->post_attn_norm, err)) ||
        (rc = put_vec(be, L->post_ffw_norm, d, &D->post_ffw_norm, err)) ||
        (rc = put_vec(be, L->bq, qd, &D->bq, err)) || (rc = put_vec(be, L->bk, kd, &D->bk, err)) ||
        (rc = put_vec(be, L->bv, kd, &D->bv, err)))
        return cairn_error_prefix(err, "model: layer %d", l), rc;
    return 0;
}

int cairn_model_ws_new(cairn_model_ws **out, const cairn_model *m, cairn_backend *be,
                       int max_tokens, int max_ctx, cairn_error *err)
{
    *out = NULL;
    if (max_tokens < 1 || max_ctx < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "model workspace: sizes must be positive");
    const cairn_model_hparams *hp = &m->hp;
    cairn_model_ws *ws = calloc(1, sizeof *ws);
    if (!ws)
        return cairn_errorf(err, CAIRN_ENOMEM, "model workspace: out of memory");
    ws->be = be;
    ws->max_tokens = max_tokens;
    ws->max_ctx = max_ctx;
    ws->n_layer = hp->n_layer;
    int rc;
    ws->layers = calloc((size_t)hp->n_layer, sizeof(dev_layer));
    if (!ws->layers) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "model workspace: out of memory");
        goto fail;
    }
    bool tied = m->output == m->tok_embd;
    if ((rc = put_mat(be, m->output, CAIRN_BMAT_LOGITS | (tied ? CAIRN_BMAT_ROWS : 0),
                      &ws->output, err)) ||
        (!tied && (rc = put_mat(be, m->tok_embd, CAIRN_BMAT_ROWS, &ws->embd, err))) ||
        (rc = put_vec(be, m->output_norm, hp->n_embd, &ws->output_norm, err)))
        goto fail;
    for (int l = 0; l < hp->n_layer; l++)
        if ((rc = load_layer(be, m, l, &ws->layers[l], err)))
            goto fail;
    size_t T = (size_t)max_tokens;
    size_t qd = (size_t)hp->n_head * hp->head_dim, kd = (size_t)hp->n_head_kv * hp->head_dim;
    size_t od = (size_t)hp->n_head * hp->head_dim_v;
    struct { float **p; size_t n; } acts[9] = {
        {&ws->x, (size_t)hp->n_embd}, {&ws->h, (size_t)hp->n_embd}, {&ws->a, (size_t)hp->n_embd},
        {&ws->q, qd}, {&ws->k, kd}, {&ws->v, kd}, {&ws->att, od}, {&ws->ffa, (size_t)hp->n_ff},
        {&ws->ffb, (size_t)hp->n_ff}};
    for (int i = 0; i < 9; i++)
        if ((rc = be->i->alloc(be, sizeof(float) * T * acts[i].n, (void **)acts[i].p, err)))
            goto fail;
    if ((rc = be->i->reserve(be, max_tokens, max_ctx, hp->n_head / hp->n_head_kv, err)))
        goto fail;
    ws->seq_first = malloc(sizeof(int32_t) * T);
    ws->seq_count = malloc(sizeof(int32_t) * T);
    ws->seq_next = malloc(sizeof(int32_t) * T);
    ws->slot = malloc(sizeof(int32_t) * T);
    ws->want = malloc(T);
    if (!ws->seq_first || !ws->seq_count || !ws->seq_next || !ws->slot || !ws->want) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "model workspace: out of memory");
        goto fail;
    }
    *out = ws;
    return 0;
fail:
    cairn_model_ws_free(ws);
    return rc;
}

/* ---- Forward ---------------------------------------------------------------------------------- */

/* Finds the batch's distinct sequences (in order of appearance) and each token's slot among
 * them; returns how many. Distinct sequences are few: a linear scan keeps it allocation-free. */
static int find_seqs(cairn_model_ws *ws, const cairn_batch *b)
{
    int n_seq = 0;
    for (int i = 0; i < b->n_tokens; i++) {
        int j = 0;
        while (j < n_seq && ws->seq_first[j] != b->seq[i])
            j++;
        if (j == n_seq)
            ws->seq_first[n_seq++] = b->seq[i];
        ws->slot[i] = j;
    }
    return n_seq;
}

/* Checks the batch against the cache and appends its rows; all or nothing. */
static int reserve(const cairn_model *m, cairn_model_ws *ws, cairn_kv *kv, const cairn_batch *b,
                   cairn_error *err)
{
    int n_seq = find_seqs(ws, b);
    int32_t *ids = ws->seq_first, *cnt = ws->seq_count, *next = ws->seq_next;
    for (int j = 0; j < n_seq; j++) {
        next[j] = cairn_kv_seq_len(kv, ids[j]);
        cnt[j] = 0;
        if (next[j] < 0)
            return cairn_errorf(err, CAIRN_EINVAL, "forward: unknown sequence %d", ids[j]);
    }
    for (int i = 0; i < b->n_tokens; i++) {
        int32_t tok = b->tokens[i], j = ws->slot[i];
        if (tok < 0 || tok >= m->hp.n_vocab)
            return cairn_errorf(err, CAIRN_EINVAL, "forward: token %d at batch index %d is not "
                                "in the vocabulary (%d)", tok, i, m->hp.n_vocab);
        if (b->pos[i] != next[j])
            return cairn_errorf(err, CAIRN_EINVAL,
                                "forward: sequence %d expects position %d, batch index %d has %d",
                                ids[j], next[j], i, b->pos[i]);
        if (b->pos[i] >= ws->max_ctx)
            return cairn_errorf(err, CAIRN_ELIMIT,
                                "forward: position %d is past the context length %d", b->pos[i],
                                ws->max_ctx);
        next[j]++;
        cnt[j]++;
    }
    for (int j = 0; j < n_seq; j++) {
        int rc = cairn_kv_append(kv, ids[j], cnt[j], err);
        if (rc) {
            for (int r = 0; r < j; r++)
                cairn_kv_truncate(kv, ids[r], next[r] - cnt[r], NULL);
            return rc;
        }
    }
    return 0;
}

/* Hands the step to the backend: tokens, positions, slots and the sequences' block tables. */
static int set_batch(cairn_model_ws *ws, cairn_kv *kv, const cairn_batch *b, cairn_error *err)
{
    int n_seq = find_seqs(ws, b), n_groups = cairn_kv_n_groups(kv);
    int max_table = cairn_kv_max_table(kv);
    size_t need = (size_t)n_groups * n_seq * max_table;
    if (need > ws->tables_cap) {
        /* Grows to the largest batch seen; steady state allocates nothing. */
        int32_t *t = realloc(ws->tables, sizeof(int32_t) * need);
        if (!t)
            return cairn_errorf(err, CAIRN_ENOMEM, "forward: out of memory for block tables");
        ws->tables = t;
        ws->tables_cap = need;
    }
    for (int g = 0; g < n_groups; g++)
        for (int j = 0; j < n_seq; j++) {
            int32_t *dst = ws->tables + ((size_t)g * n_seq + j) * max_table;
            const int32_t *src;
            int n = cairn_kv_seq_table(kv, ws->seq_first[j], g, &src);
            if (n < 0)
                return cairn_errorf(err, CAIRN_EINVAL, "forward: unknown sequence %d",
                                    ws->seq_first[j]);
            memcpy(dst, src, sizeof(int32_t) * (size_t)n);
            for (int e = n; e < max_table; e++)
                dst[e] = -1;
        }
    cairn_bbatch bb = {.n_tokens = b->n_tokens, .tokens = b->tokens, .pos = b->pos,
                       .slot = ws->slot, .prompt_len = b->prompt_len, .logits = ws->want,
                       .n_seqs = n_seq, .n_groups = n_groups, .max_table = max_table,
                       .tables = ws->tables};
    ws->bb = bb;
    return ws->be->i->batch_set(ws->be, &ws->bb, err);
}

int cairn_model_forward(const cairn_model *m, cairn_model_ws *ws, cairn_kv *kv,
                        const cairn_batch *b, float *logits, cairn_error *err)
{
    return cairn_model_forward_ex(m, ws, kv, b, logits, NULL, err);
}

int cairn_model_forward_ex(const cairn_model *m, cairn_model_ws *ws, cairn_kv *kv,
                           const cairn_batch *b, float *logits, cairn_model_yield *y,
                           cairn_error *err)
{
    const cairn_model_hparams *hp = &m->hp;
    cairn_backend *be = ws->be;
    const cairn_backend_i *B = be->i;
    const int T = b->n_tokens, d = hp->n_embd;
    if (T < 1 || T > ws->max_tokens)
        return cairn_errorf(err, CAIRN_EINVAL, "forward: %d tokens, the workspace holds 1..%d", T,
                            ws->max_tokens);
    const int first = y ? y->first_layer : 0;
    if (first < 0 || first >= hp->n_layer || (first > 0 && !y->x_save))
        return cairn_errorf(err, CAIRN_EINVAL, "forward: cannot resume at layer %d of %d", first,
                            hp->n_layer);
    int rc = 0;
    if (first == 0 && (rc = reserve(m, ws, kv, b, err)))
        return rc;
    /* Which rows want logits: the flags given, or the batch's last token. */
    for (int t = 0; t < T; t++)
        ws->want[t] = b->logits ? b->logits[t] != 0 : t == T - 1;
    /* Every call sets the batch again: a resumed pass may follow other steps. */
    if ((rc = set_batch(ws, kv, b, err)))
        return rc;
    if (first > 0) {
        /* Resuming: the batch's K/V rows of the layers before `first` are in the cache. */
        if ((rc = B->copy(be, ws->x, y->x_save, sizeof(float) * (size_t)T * d, err)))
            return rc;
    } else {
        const cairn_bmat *emb = ws->embd.data ? &ws->embd : &ws->output;
        if ((rc = B->embed(be, emb, hp->arch == CAIRN_ARCH_GEMMA3 ? sqrtf((float)d) : 1.0f, ws->x,
                           err)))
            return rc;
        TRACE(ws, -1, "embd", ws->x, T, d);
    }

    const bool gemma = hp->arch == CAIRN_ARCH_GEMMA3;
    const int qd = hp->n_head * hp->head_dim, kd = hp->n_head_kv * hp->head_dim;
    cairn_bkv kvl;
    cairn_kv_layout(kv, &kvl);
    const bool may_yield = y && y->should_yield && y->x_save;
    for (int l = first; l < hp->n_layer; l++) {
        /* Pace the queue first on a backend that runs stages asynchronously: the check then
         * sees the device at most a layer behind. */
        if (l > first && may_yield && B->layer_done && (rc = B->layer_done(be, err)))
            return rc;
        if (l > first && may_yield && y->should_yield(y->ctx)) {
            if ((rc = B->copy(be, y->x_save, ws->x, sizeof(float) * (size_t)T * d, err)))
                return rc;
            y->next_layer = l;
            return CAIRN_MODEL_YIELDED;
        }
        const dev_layer *D = &ws->layers[l];
        const bool local = m->layer_window[l] != 0;
        /* The layer before left h = rmsnorm(x) * attn_norm in its last add_norm; the first
         * layer of a pass (or of a resumed one) makes it here. */
        if (l == first && (rc = B->rmsnorm(be, ws->h, ws->x, D->attn_norm, T, d, hp->rms_eps,
                                           err)))
            return rc;
        TRACE(ws, l, "attn_norm", ws->h, T, d);
        const cairn_bmat *qkv[3] = {&D->wq, &D->wk, &D->wv};
        float *qkv_out[3] = {ws->q, ws->k, ws->v};
        if ((rc = B->matmul(be, qkv, 3, ws->h, qkv_out, err)))
            return rc;
        /* Gemma 3 scales q before attention (llama.cpp: ggml_scale(Qcur, f_attention_scale),
         * then a kq scale of 1); the others scale q.k. */
        cairn_bqkv qp = {.n_head = hp->n_head, .n_head_kv = hp->n_head_kv,
                         .head_dim = hp->head_dim, .bq = D->bq, .bk = D->bk, .bv = D->bv,
                         .q_norm = D->q_norm, .k_norm = D->k_norm, .eps = hp->rms_eps,
                         .rope_base = local ? hp->rope_base_local : hp->rope_base,
                         .rope_freq_scale = local ? 1.0f : hp->rope_freq_scale,
                         .rope_neox = hp->rope_neox, .q_scale = gemma ? hp->attn_scale : 1.0f,
                         .kv = &kvl, .layer = l};
        if ((rc = B->qkv(be, &qp, ws->q, ws->k, ws->v, err)))
            return rc;
        TRACE(ws, l, "q", ws->q, T, qd);
        TRACE(ws, l, "k", ws->k, T, kd);
        TRACE(ws, l, "v", ws->v, T, hp->n_head_kv * hp->head_dim_v);
        cairn_battn ap = {.n_head = hp->n_head, .n_head_kv = hp->n_head_kv,
                          .head_dim = hp->head_dim, .window = m->layer_window[l],
                          .scale = gemma ? 1.0f : hp->attn_scale, .kv = &kvl, .layer = l};
        if ((rc = B->attention(be, &ap, ws->q, ws->att, err)))
            return rc;
        TRACE(ws, l, "kqv_out", ws->att, T, hp->n_head * hp->head_dim_v);
        const cairn_bmat *wo = &D->wo, *wdown = &D->wdown;
        if ((rc = B->matmul(be, &wo, 1, ws->att, &ws->a, err)))
            return rc;
        TRACE(ws, l, "attn_out", ws->a, T, d);
        if ((rc = B->add_norm(be, ws->x, ws->a, D->post_attn_norm, D->ffn_norm, ws->h, d,
                              hp->rms_eps, err)))
            return rc;
        TRACE(ws, l, "sa_out", ws->x, T, d);
        TRACE(ws, l, "ffn_norm", ws->h, T, d);
        const cairn_bmat *gu[2] = {&D->wgate, &D->wup};
        float *gu_out[2] = {ws->ffa, ws->ffb};
        if ((rc = B->matmul(be, gu, 2, ws->h, gu_out, err)))
            return rc;
        TRACE(ws, l, "ffn_gate", ws->ffa, T, hp->n_ff);
        TRACE(ws, l, "ffn_up", ws->ffb, T, hp->n_ff);
        if ((rc = B->gated(be, ws->ffa, ws->ffb, hp->n_ff,
                           gemma ? CAIRN_ACT_GELU_TANH : CAIRN_ACT_SILU, err)))
            return rc;
        TRACE(ws, l, "ffn_act", ws->ffa, T, hp->n_ff);
        if ((rc = B->matmul(be, &wdown, 1, ws->ffa, &ws->a, err)))
            return rc;
        TRACE(ws, l, "ffn_out", ws->a, T, d);
        const float *next = l + 1 < hp->n_layer ? ws->layers[l + 1].attn_norm : NULL;
        if ((rc = B->add_norm(be, ws->x, ws->a, D->post_ffw_norm, next, next ? ws->h : NULL, d,
                              hp->rms_eps, err)))
            return rc;
        TRACE(ws, l, "l_out", ws->x, T, d);
    }
    if (b->picks)
        return B->logits_pick ? B->logits_pick(be, &ws->output, ws->output_norm, hp->rms_eps,
                                               ws->x, d, b->picks, err)
                              : cairn_errorf(err, CAIRN_EUNSUPPORTED, "forward: the %s "
                                             "backend returns whole logits rows only",
                                             B->name);
    return B->logits(be, &ws->output, ws->output_norm, hp->rms_eps, ws->x, d, logits, err);
}
