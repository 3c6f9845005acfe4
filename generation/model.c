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

#include "generation/kernels/cpu.h"

typedef struct {
    float *attn_norm, *ffn_norm, *q_norm, *k_norm, *post_attn_norm, *post_ffw_norm;
    float *bq, *bk, *bv;
    cairn_cpu_mat wq, wk, wv, wo, wgate, wup, wdown;
} layer_w;

struct cairn_model {
    cairn_gguf *g;
    cairn_model_hparams hp;
    char arch_name[32];
    int *layer_window;
    layer_w *layers;
    const cairn_gguf_tensor *tok_embd;
    float *output_norm;
    cairn_cpu_mat output;
    void *output_r16;             /* output repacked for the 16-rows kernel, or NULL */
    float *gelu_table;            /* gemma3: GELU at F16, CAIRN_CPU_GELU_TABLE_SIZE entries */
};

struct cairn_model_ws {
    int max_tokens, max_ctx, n_threads;
    float *x, *h, *q, *k, *v, *att, *a, *ffa, *ffb, *emb_row;
    float *scores; /* n_threads * max_ctx * query heads per KV head */
    void *act;
    size_t act_bytes;
    int32_t *seq_next;   /* per kv seq id: expected next position, during validation */
    int32_t *seq_first;  /* distinct seqs of the batch, in order of appearance */
    int32_t *seq_count;
    cairn_model_trace_fn trace; /* see cairn_model_ws_set_trace */
    void *trace_ctx;
};

void cairn_model_ws_set_trace(cairn_model_ws *ws, cairn_model_trace_fn fn, void *ctx)
{
    ws->trace = fn;
    ws->trace_ctx = ctx;
}

#define TRACE(ws, layer, stage, rows, n, width)                                                 \
    do {                                                                                       \
        if ((ws)->trace)                                                                       \
            (ws)->trace((ws)->trace_ctx, (layer), (stage), (rows), (n), (width));              \
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

static int load_mat(const cairn_gguf *g, const char *name, int64_t rows, int64_t cols,
                    cairn_cpu_mat *out, cairn_error *err)
{
    const cairn_gguf_tensor *t = cairn_gguf_find_tensor(g, name);
    if (!t)
        return cairn_errorf(err, CAIRN_ENOTFOUND, "model: missing tensor '%s'", name);
    int rc = cairn_cpu_mat_from_gguf(out, t, err);
    if (rc)
        return rc;
    if (out->rows != rows || out->cols != cols)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "model: tensor '%s' is %lld x %lld (rows x cols), expected %lld x %lld",
                            name, (long long)out->rows, (long long)out->cols, (long long)rows,
                            (long long)cols);
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
    free(m->output_r16);
    free(m->gelu_table);
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
        m->gelu_table = malloc(sizeof(float) * CAIRN_CPU_GELU_TABLE_SIZE);
        if (!m->gelu_table)
            return cairn_errorf(err, CAIRN_ENOMEM, "model: out of memory");
        cairn_cpu_gelu_f16_table(m->gelu_table);
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
    if ((rc = cairn_cpu_mat_repack(&m->output, &m->output_r16, err))) return rc;

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

/* ---- Workspace ------------------------------------------------------------------------------ */

/* The largest matmul scratch any product of the model needs for n_tok tokens. */
static size_t act_scratch_bytes(const cairn_model *m, int n_tok)
{
    size_t b = cairn_cpu_matmul_scratch_bytes(&m->output, n_tok);
    for (int l = 0; l < m->hp.n_layer; l++) {
        const layer_w *L = &m->layers[l];
        const cairn_cpu_mat *all[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wgate, &L->wup,
                                       &L->wdown};
        for (int i = 0; i < 7; i++) {
            size_t s = cairn_cpu_matmul_scratch_bytes(all[i], n_tok);
            b = s > b ? s : b;
        }
    }
    return b;
}

void cairn_model_ws_free(cairn_model_ws *ws)
{
    if (!ws)
        return;
    free(ws->x);
    free(ws->h);
    free(ws->q);
    free(ws->k);
    free(ws->v);
    free(ws->att);
    free(ws->a);
    free(ws->ffa);
    free(ws->ffb);
    free(ws->emb_row);
    free(ws->scores);
    free(ws->act);
    free(ws->seq_next);
    free(ws->seq_first);
    free(ws->seq_count);
    free(ws);
}

int cairn_model_ws_new(cairn_model_ws **out, const cairn_model *m, int max_tokens, int max_ctx,
                       int n_threads, cairn_error *err)
{
    *out = NULL;
    if (max_tokens < 1 || max_ctx < 1 || n_threads < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "model workspace: sizes must be positive");
    const cairn_model_hparams *hp = &m->hp;
    cairn_model_ws *ws = calloc(1, sizeof *ws);
    if (!ws)
        return cairn_errorf(err, CAIRN_ENOMEM, "model workspace: out of memory");
    ws->max_tokens = max_tokens;
    ws->max_ctx = max_ctx;
    ws->n_threads = n_threads;
    size_t T = (size_t)max_tokens;
    size_t qd = (size_t)hp->n_head * hp->head_dim, kd = (size_t)hp->n_head_kv * hp->head_dim;
    size_t vd = (size_t)hp->n_head_kv * hp->head_dim_v, od = (size_t)hp->n_head * hp->head_dim_v;
    ws->x = malloc(sizeof(float) * T * hp->n_embd);
    ws->h = malloc(sizeof(float) * T * hp->n_embd);
    ws->a = malloc(sizeof(float) * T * hp->n_embd);
    ws->q = malloc(sizeof(float) * T * qd);
    ws->k = malloc(sizeof(float) * T * kd);
    ws->v = malloc(sizeof(float) * T * vd);
    ws->att = malloc(sizeof(float) * T * od);
    ws->ffa = malloc(sizeof(float) * T * hp->n_ff);
    ws->ffb = malloc(sizeof(float) * T * hp->n_ff);
    ws->emb_row = malloc(sizeof(float) * hp->n_embd);
    ws->scores = malloc(sizeof(float) * (size_t)n_threads * (size_t)max_ctx *
                        (size_t)(hp->n_head / hp->n_head_kv));
    ws->act_bytes = act_scratch_bytes(m, max_tokens) + 64;
    ws->act = malloc(ws->act_bytes);
    ws->seq_first = malloc(sizeof(int32_t) * T);
    ws->seq_count = malloc(sizeof(int32_t) * T);
    ws->seq_next = malloc(sizeof(int32_t) * T);
    if (!ws->seq_first || !ws->seq_count || !ws->seq_next || !ws->x || !ws->h || !ws->a || !ws->q || !ws->k || !ws->v || !ws->att || !ws->ffa ||
        !ws->ffb || !ws->emb_row || !ws->scores || !ws->act) {
        cairn_model_ws_free(ws);
        return cairn_errorf(err, CAIRN_ENOMEM, "model workspace: out of memory");
    }
    *out = ws;
    return 0;
}

/* ---- Forward ---------------------------------------------------------------------------------- */

typedef struct {
    const cairn_model *m;
    cairn_model_ws *ws;
    cairn_kv *kv;
    const cairn_batch *b;
    int layer;
} fwd_ctx;

/* Per token after the q/k/v projections: biases, q/k norms, RoPE, K/V rows into the cache. */
static void post_qkv(void *p, size_t tb, size_t te, int tid)
{
    (void)tid;
    fwd_ctx *c = p;
    const cairn_model_hparams *hp = &c->m->hp;
    const layer_w *L = &c->m->layers[c->layer];
    int hd = hp->head_dim, qd = hp->n_head * hd, kd = hp->n_head_kv * hd,
        vd = hp->n_head_kv * hp->head_dim_v;
    bool local = c->m->layer_window[c->layer] != 0;
    float base = local ? hp->rope_base_local : hp->rope_base;
    float fscale = local ? 1.0f : hp->rope_freq_scale;
    for (size_t t = tb; t < te; t++) {
        float *q = c->ws->q + t * qd, *k = c->ws->k + t * kd, *v = c->ws->v + t * vd;
        if (L->bq) {
            for (int i = 0; i < qd; i++)
                q[i] += L->bq[i];
            for (int i = 0; i < kd; i++)
                k[i] += L->bk[i];
            for (int i = 0; i < vd; i++)
                v[i] += L->bv[i];
        }
        if (L->q_norm) {
            for (int h = 0; h < hp->n_head; h++)
                cairn_cpu_rmsnorm(q + h * hd, q + h * hd, L->q_norm, hd, hp->rms_eps);
            for (int h = 0; h < hp->n_head_kv; h++)
                cairn_cpu_rmsnorm(k + h * hd, k + h * hd, L->k_norm, hd, hp->rms_eps);
        }
        int pos = c->b->pos[t], seq = c->b->seq[t];
        if (hd <= CAIRN_CPU_ROPE_MAX_DIM) {
            float cs[CAIRN_CPU_ROPE_MAX_DIM];
            cairn_cpu_rope_angles(hd, pos, base, fscale, cs);
            cairn_cpu_rope_apply(q, hp->n_head, hd, cs, hp->rope_neox);
            cairn_cpu_rope_apply(k, hp->n_head_kv, hd, cs, hp->rope_neox);
        } else {
            cairn_cpu_rope(q, hp->n_head, hd, pos, base, fscale, hp->rope_neox);
            cairn_cpu_rope(k, hp->n_head_kv, hd, pos, base, fscale, hp->rope_neox);
        }
        /* Gemma 3 scales q before attention (llama.cpp: ggml_scale(Qcur, f_attention_scale),
         * then a kq scale of 1); q then meets the F16 K cache at F16, as in ggml. */
        if (hp->arch == CAIRN_ARCH_GEMMA3)
            for (int i = 0; i < qd; i++)
                q[i] *= hp->attn_scale;
        cairn_cpu_round_f16(q, qd);
        cairn_cpu_f32_to_f16(k, cairn_kv_k_row(c->kv, c->layer, seq, pos), kd);
        cairn_cpu_f32_to_f16(v, cairn_kv_v_row(c->kv, c->layer, seq, pos), vd);
    }
}

/* One task per (token, KV head): the query heads that share a KV head read its rows once. */
static void attend(void *p, size_t ib, size_t ie, int tid)
{
    fwd_ctx *c = p;
    const cairn_model_hparams *hp = &c->m->hp;
    int hd = hp->head_dim, hdv = hp->head_dim_v, group = hp->n_head / hp->n_head_kv;
    int window = c->m->layer_window[c->layer];
    float *scores = c->ws->scores + (size_t)tid * c->ws->max_ctx * group;
    cairn_cpu_paged pg;
    int cur_seq = -1;
    size_t T = (size_t)c->b->n_tokens;
    for (size_t i = ib; i < ie; i++) {
        /* Tokens in the order 0, T-1, 1, T-2, ...: a causal prefill's late tokens attend to
         * more positions, and the pool hands each thread a contiguous share of tasks. */
        size_t j = i / hp->n_head_kv, t = j & 1 ? T - 1 - j / 2 : j / 2;
        int kvh = (int)(i % hp->n_head_kv), h = kvh * group;
        int pos = c->b->pos[t], seq = c->b->seq[t];
        if (seq != cur_seq) {
            cairn_kv_paged(c->kv, c->layer, seq, &pg);
            cur_seq = seq;
        }
        int lo = window ? pos - window + 1 : 0;
        if (lo < 0)
            lo = 0;
        cairn_cpu_attention_heads(c->ws->q + t * (size_t)hp->n_head * hd + (size_t)h * hd, group,
                                  hd, &pg, kvh, lo, pos,
                                  hp->arch == CAIRN_ARCH_GEMMA3 ? 1.0f : hp->attn_scale,
                                  c->b->kinds ? c->b->kinds[t] : CAIRN_CPU_ROW_SINGLE, scores,
                                  c->ws->att + t * (size_t)hp->n_head * hdv + (size_t)h * hdv);
    }
}

/*
 * The element-wise stretches between matrix products, per token (run over the pool):
 *   ATTN_IN  h = rmsnorm(x) * attn_norm
 *   ATTN_OUT (gemma3: a = rmsnorm(a) * post_attention_norm); x += a; h = rmsnorm(x) * ffn_norm
 *   FFN_MID  ffa = act(ffa) * ffb
 *   FFN_OUT  (gemma3: a = rmsnorm(a) * post_ffw_norm); x += a
 */
enum { ATTN_IN, ATTN_OUT, FFN_MID, FFN_OUT };

/* Below this many tokens the per-token work costs less than waking the pool's threads. */
#define EW_PARALLEL_MIN 16

typedef struct {
    const cairn_model *m;
    cairn_model_ws *ws;
    const layer_w *L;
    int op;
} ew_ctx;

static void elementwise(void *p, size_t tb, size_t te, int tid)
{
    (void)tid;
    const ew_ctx *c = p;
    const cairn_model_hparams *hp = &c->m->hp;
    const layer_w *L = c->L;
    const int d = hp->n_embd, ff = hp->n_ff;
    bool gemma = hp->arch == CAIRN_ARCH_GEMMA3;
    for (size_t t = tb; t < te; t++) {
        float *x = c->ws->x + t * d, *h = c->ws->h + t * d, *a = c->ws->a + t * d;
        switch (c->op) {
        case ATTN_IN:
            cairn_cpu_rmsnorm(h, x, L->attn_norm, d, hp->rms_eps);
            break;
        case ATTN_OUT:
        case FFN_OUT:
            if (gemma)
                cairn_cpu_rmsnorm(a, a, c->op == ATTN_OUT ? L->post_attn_norm : L->post_ffw_norm,
                                  d, hp->rms_eps);
            for (int i = 0; i < d; i++)
                x[i] += a[i];
            if (c->op == ATTN_OUT)
                cairn_cpu_rmsnorm(h, x, L->ffn_norm, d, hp->rms_eps);
            break;
        default:
            if (c->m->gelu_table)
                cairn_cpu_gated_gelu_table(c->ws->ffa + t * ff, c->ws->ffb + t * ff, ff,
                                           c->m->gelu_table);
            else
                cairn_cpu_gated(c->ws->ffa + t * ff, c->ws->ffb + t * ff, ff, gemma);
            break;
        }
    }
}

static void run_elementwise(const cairn_model *m, cairn_model_ws *ws, cairn_pool *pool,
                            const layer_w *L, int op, int T)
{
    ew_ctx c = {.m = m, .ws = ws, .L = L, .op = op};
    if (pool && T >= EW_PARALLEL_MIN)
        cairn_pool_parallel_for(pool, (size_t)T, elementwise, &c);
    else
        elementwise(&c, 0, (size_t)T, 0);
}

/* Checks the batch against the cache and appends its rows; all or nothing. */
static int reserve(const cairn_model *m, cairn_model_ws *ws, cairn_kv *kv, const cairn_batch *b,
                   cairn_error *err)
{
    /* Distinct sequences are few; a linear scan over them keeps this allocation-free. */
    int n_seq = 0;
    int32_t *ids = ws->seq_first, *cnt = ws->seq_count, *next = ws->seq_next;
    for (int i = 0; i < b->n_tokens; i++) {
        int32_t tok = b->tokens[i], s = b->seq[i];
        if (tok < 0 || tok >= m->hp.n_vocab)
            return cairn_errorf(err, CAIRN_EINVAL, "forward: token %d at batch index %d is not "
                                "in the vocabulary (%d)", tok, i, m->hp.n_vocab);
        int j = 0;
        while (j < n_seq && ids[j] != s)
            j++;
        if (j == n_seq) {
            int len = cairn_kv_seq_len(kv, s);
            if (len < 0)
                return cairn_errorf(err, CAIRN_EINVAL, "forward: unknown sequence %d", s);
            ids[n_seq] = s;
            cnt[n_seq] = 0;
            next[n_seq] = len;
            n_seq++;
        }
        if (b->pos[i] != next[j])
            return cairn_errorf(err, CAIRN_EINVAL,
                                "forward: sequence %d expects position %d, batch index %d has %d",
                                s, next[j], i, b->pos[i]);
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

int cairn_model_row_kind(int pos, int n_prompt)
{
    if (pos >= n_prompt)
        return CAIRN_CPU_ROW_SINGLE;
    int start = pos - pos % 512, len = n_prompt - start < 512 ? n_prompt - start : 512;
    if (len < 2)
        return CAIRN_CPU_ROW_SINGLE;
    return CAIRN_CPU_ROW_BATCH | (pos - start < len - len % 4 ? CAIRN_CPU_ROW_TILE4 : 0) |
           (len >= 8 ? CAIRN_CPU_ROW_WIDE : 0);
}

int cairn_model_forward(const cairn_model *m, cairn_model_ws *ws, cairn_kv *kv, cairn_pool *pool,
                        const cairn_batch *b, float *logits, cairn_error *err)
{
    return cairn_model_forward_ex(m, ws, kv, pool, b, logits, NULL, err);
}

int cairn_model_forward_ex(const cairn_model *m, cairn_model_ws *ws, cairn_kv *kv,
                           cairn_pool *pool, const cairn_batch *b, float *logits,
                           cairn_model_yield *y, cairn_error *err)
{
    const cairn_model_hparams *hp = &m->hp;
    const int T = b->n_tokens, d = hp->n_embd;
    if (T < 1 || T > ws->max_tokens)
        return cairn_errorf(err, CAIRN_EINVAL, "forward: %d tokens, the workspace holds 1..%d", T,
                            ws->max_tokens);
    if (pool && cairn_pool_threads(pool) > ws->n_threads)
        return cairn_errorf(err, CAIRN_EINVAL, "forward: pool has more threads than the workspace");
    const int first = y ? y->first_layer : 0;
    if (first < 0 || first >= hp->n_layer || (first > 0 && !y->x_save))
        return cairn_errorf(err, CAIRN_EINVAL, "forward: cannot resume at layer %d of %d", first,
                            hp->n_layer);
    int rc = 0;
    if (first > 0) {
        /* Resuming: the batch's K/V rows of the layers before `first` are in the cache. */
        memcpy(ws->x, y->x_save, (size_t)T * d * sizeof(float));
        goto layers;
    }
    rc = reserve(m, ws, kv, b, err);
    if (rc)
        return rc;

    /* Embeddings. */
    float emb_scale = hp->arch == CAIRN_ARCH_GEMMA3 ? sqrtf((float)d) : 1.0f;
    for (int t = 0; t < T; t++) {
        float *x = ws->x + (size_t)t * d;
        rc = cairn_gguf_dequantize_rows(m->tok_embd, (uint64_t)b->tokens[t], 1, x, (size_t)d, err);
        if (rc)
            return rc;
        if (emb_scale != 1.0f)
            for (int i = 0; i < d; i++)
                x[i] *= emb_scale;
    }
    TRACE(ws, -1, "embd", ws->x, T, d);

layers:;
    fwd_ctx c = {.m = m, .ws = ws, .kv = kv, .b = b};
    for (int l = first; l < hp->n_layer; l++) {
        if (l > first && y && y->should_yield && y->x_save && y->should_yield(y->ctx)) {
            memcpy(y->x_save, ws->x, (size_t)T * d * sizeof(float));
            y->next_layer = l;
            return CAIRN_MODEL_YIELDED;
        }
        const layer_w *L = &m->layers[l];
        const cairn_cpu_mat *wo = &L->wo, *wdown = &L->wdown;
        c.layer = l;
        run_elementwise(m, ws, pool, L, ATTN_IN, T);
        TRACE(ws, l, "attn_norm", ws->h, T, d);
        const cairn_cpu_mat *qkv[3] = {&L->wq, &L->wk, &L->wv};
        float *qkv_out[3] = {ws->q, ws->k, ws->v};
        cairn_cpu_matmul_n(pool, qkv, 3, ws->h, T, qkv_out, ws->act, b->kinds);
        if (pool && T >= EW_PARALLEL_MIN)
            cairn_pool_parallel_for(pool, (size_t)T, post_qkv, &c);
        else
            post_qkv(&c, 0, (size_t)T, 0);
        TRACE(ws, l, "q", ws->q, T, hp->n_head * hp->head_dim);
        TRACE(ws, l, "k", ws->k, T, hp->n_head_kv * hp->head_dim);
        TRACE(ws, l, "v", ws->v, T, hp->n_head_kv * hp->head_dim_v);
        if (pool)
            cairn_pool_parallel_for(pool, (size_t)T * hp->n_head_kv, attend, &c);
        else
            attend(&c, 0, (size_t)T * hp->n_head_kv, 0);
        TRACE(ws, l, "kqv_out", ws->att, T, hp->n_head * hp->head_dim_v);
        cairn_cpu_matmul_n(pool, &wo, 1, ws->att, T, &ws->a, ws->act, b->kinds);
        TRACE(ws, l, "attn_out", ws->a, T, d);
        run_elementwise(m, ws, pool, L, ATTN_OUT, T);
        TRACE(ws, l, "sa_out", ws->x, T, d);
        TRACE(ws, l, "ffn_norm", ws->h, T, d);
        const cairn_cpu_mat *gu[2] = {&L->wgate, &L->wup};
        float *gu_out[2] = {ws->ffa, ws->ffb};
        cairn_cpu_matmul_n(pool, gu, 2, ws->h, T, gu_out, ws->act, b->kinds);
        TRACE(ws, l, "ffn_gate", ws->ffa, T, hp->n_ff);
        TRACE(ws, l, "ffn_up", ws->ffb, T, hp->n_ff);
        run_elementwise(m, ws, pool, L, FFN_MID, T);
        TRACE(ws, l, "ffn_act", ws->ffa, T, hp->n_ff);
        cairn_cpu_matmul_n(pool, &wdown, 1, ws->ffa, T, &ws->a, ws->act, b->kinds);
        TRACE(ws, l, "ffn_out", ws->a, T, d);
        run_elementwise(m, ws, pool, L, FFN_OUT, T);
        TRACE(ws, l, "l_out", ws->x, T, d);
    }

    /* Gather the rows that want logits, normalise, project. */
    int n_out = 0;
    for (int t = 0; t < T; t++) {
        bool want = b->logits ? b->logits[t] != 0 : t == T - 1;
        if (!want)
            continue;
        cairn_cpu_rmsnorm(ws->h + (size_t)n_out * d, ws->x + (size_t)t * d, m->output_norm, d,
                          hp->rms_eps);
        n_out++;
    }
    if (n_out > 0)
        cairn_cpu_matmul(pool, &m->output, ws->h, n_out, logits, ws->act);
    return 0;
}
