/*
 * retrieval/embed.c — BERT encoder forward pass on the CPU (see embed.h).
 *
 * Data layout: a batch of nseq sequences is packed into ntok rows (row t = one token), each
 * activation a row-major [ntok x width] matrix. Linear layers are y = x W^T + b with W stored as
 * PyTorch does, [out x in] row-major (GGUF dims [in, out]), so each projection is one
 * cblas_sgemm(RowMajor, NoTrans, Trans). Biases are added by the element-wise stage that follows
 * each sgemm (attention, GELU, add & LayerNorm), which saves a pass over the output.
 *
 * Threads: everything is a cairn_pool parallel_for: over rows for the sgemm calls (each pool
 * thread one single-threaded sgemm on its rows; blas_threads 1, the default) and the
 * element-wise work, over (sequence, head) pairs for attention. Per-thread scratch is indexed
 * by the parallel_for tid. With blas_threads 0, sgemm parallelises inside BLAS instead.
 *
 * GPU (device >= 0): open hands the F32 weights to retrieval/embed_cuda.h, which uploads them;
 * the CPU side then keeps only the tokenizer and the batch table (ids, sequence starts and
 * lengths), and forward() runs the whole packed batch there. No pool, no activation buffers.
 */
#include "retrieval/embed.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/threadpool.h"
#include "proto/gguf.h"
#include "retrieval/embed_amx.h"
#include "retrieval/embed_cuda.h"

#if defined(__x86_64__)
#define HAVE_AVX2_KERNELS 1
/* retrieval/embed_avx2.c, built with -mavx2 -mfma; called only after a CPU check. */
void cairn__embed_attn_head_avx2(const float *base, int H3, int T, int hd, int H, int hoff,
                                 const float *bq, float scale, float *scratch, float *dst,
                                 int dst_stride);
void cairn__embed_gelu_avx2(float *f, const float *b, int n);
#endif

/* Limits that keep every size computation far from overflow and reject nonsense files. */
#define MAX_HIDDEN    8192
#define MAX_FF        65536
#define MAX_LAYERS    256
#define MAX_POSITIONS 65536

typedef struct {
    float *qkv_w; /* fused [3H x H]: rows of W_q, then W_k, then W_v (owned) */
    float *qkv_b; /* [3H] (owned) */
    const float *o_w, *o_b, *ln1_g, *ln1_b;
    const float *up_w, *up_b, *down_w, *down_b, *ln2_g, *ln2_b;
    cairn__amx_mat qkv_x, o_x, up_x, down_x; /* BF16 forms for AMX (e->amx) */
} layer_t;

struct cairn_embed {
    cairn_gguf *g;
    cairn_wordpiece *wp;
    cairn_pool *pool;
    pthread_mutex_t lock; /* serialises cairn_embed_batch/tokens: they share the buffers */

    int n_layer, H, n_head, hd, FF, max_pos, max_seq, vocab, n_types;
    float eps;
    bool normalize;
    const float *tok_emb, *pos_emb, *type_emb, *emb_ln_g, *emb_ln_b;
    layer_t *layers;
    float **owned; /* tensors dequantized to F32 at open */
    int n_owned;

    int max_batch, max_tokens, n_threads;
    int device; /* -1 CPU, else the GPU that gpu runs on */
    cairn__embed_cuda *gpu; /* device >= 0: the forward pass (embed_cuda.h) */
    int gemm_in_pool; /* sgemm rows split over the pool, BLAS single-threaded */
    bool avx2; /* use the AVX2/FMA kernels */
    bool amx;  /* linear layers in BF16 on AMX tiles (embed_amx.c) */
    bool tiles;   /* amx, and the whole layer on tiles too (forward_tiles: head size 32) */
    uint16_t *ab; /* amx: BF16 activation rows [max_tokens rounded up to 32 x max(H, FF)] */
    /* tiles: BF16 rows of x [tile_rows x H], of Q|K|V by head (Q scaled; [n_head x tile_rows x
     * 96]: a head's Q, K, V of one token side by side) and of attention's output [tile_rows x H]:
     * max_tokens rounded up to 32, plus 32 rows a query tile may read past the last token;
     * per-thread scratch (tile_per_thread bytes each): a 32-row block's products [32 x max(3H, FF)]
     * F32, its GELU output [32 x FF] BF16, attention's scratch. */
    uint16_t *xb, *qkvb, *ctxb;
    size_t tile_rows;
    uint8_t *tile_scratch;
    size_t tile_per_thread;
    /* Buffers for one forward pass, sized at open. Guarded by lock. */
    int32_t *ids, *pos;                 /* [max_tokens] */
    int *seq_start, *seq_len, *seq_out; /* [max_batch] */
    float *x, *qkv, *ctx, *tmp, *ff;    /* [max_tokens x H / 3H / H / H / FF] */
    float *scratch;                     /* n_threads x scratch_per_thread floats */
    size_t scratch_per_thread;
};

cairn_embed_params cairn_embed_default_params(void)
{
    return (cairn_embed_params){
        .n_threads = 0, .max_batch = 32, .max_batch_tokens = 4096, .max_seq = 0, .simd = 1,
        .amx = 1, .blas_threads = 1, .device = -1};
}

int cairn_embed_device(const cairn_embed *e) { return e->device; }

int cairn_embed_threads(const cairn_embed *e) { return e->n_threads; }

int cairn_embed_dim(const cairn_embed *e)
{
    return e->H;
}
int cairn_embed_max_seq(const cairn_embed *e)
{
    return e->max_seq;
}
const cairn_wordpiece *cairn_embed_tokenizer(const cairn_embed *e)
{
    return e->wp;
}

/* ---- Loading ------------------------------------------------------------------------------- */

/*
 * The tensor `name` as F32 with shape [in] (out == 0) or [in, out] (dims[0] = in). F32 data is
 * used in place; other types are dequantized into a buffer owned by e.
 */
static int get_f32(cairn_embed *e, const char *name, uint64_t in, uint64_t out, const float **ptr,
                   cairn_error *err)
{
    const cairn_gguf_tensor *t;
    int rc = cairn_gguf_get_tensor(e->g, name, &t, err);
    if (rc < 0) return rc;
    uint64_t want_rows = out ? out : 1;
    if (t->dims[0] != in || t->n_elements != in * want_rows || (out == 0 && t->n_dims != 1) ||
        (out != 0 && t->n_dims != 2))
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "embed: tensor '%s' has shape [%llu, %llu] (%u dims), expected "
                            "[%llu, %llu]",
                            name, (unsigned long long)t->dims[0], (unsigned long long)t->dims[1],
                            t->n_dims, (unsigned long long)in, (unsigned long long)want_rows);
    if (t->type == CAIRN_GGUF_F32) {
        if ((uintptr_t)t->data % sizeof(float) != 0)
            return cairn_errorf(err, CAIRN_EFORMAT, "embed: tensor '%s' data is misaligned", name);
        *ptr = t->data;
        return 0;
    }
    if (!cairn_gguf_type_can_dequantize(t->type))
        return cairn_errorf(
            err, CAIRN_EUNSUPPORTED, "embed: tensor '%s' has type %s (%u)", name,
            cairn_gguf_type_name(t->type) ? cairn_gguf_type_name(t->type) : "unknown", t->type);
    float **grown = realloc(e->owned, (size_t)(e->n_owned + 1) * sizeof *grown);
    if (!grown) return cairn_errorf(err, CAIRN_ENOMEM, "embed: out of memory");
    e->owned = grown;
    float *buf = malloc(t->n_elements * sizeof(float));
    if (!buf) return cairn_errorf(err, CAIRN_ENOMEM, "embed: out of memory for tensor '%s'", name);
    e->owned[e->n_owned++] = buf;
    rc = cairn_gguf_dequantize(t, buf, t->n_elements, err);
    if (rc < 0) return cairn_error_prefix(err, "embed: tensor '%s'", name);
    *ptr = buf;
    return 0;
}

static int get_dim(const cairn_gguf *g, const char *key, int lo, int hi, int *out, cairn_error *err)
{
    uint32_t v;
    int rc = cairn_gguf_get_u32(g, key, &v, err);
    if (rc < 0) return cairn_error_prefix(err, "embed");
    if (v < (uint32_t)lo || v > (uint32_t)hi)
        return cairn_errorf(err, CAIRN_EFORMAT, "embed: %s = %u is outside %d..%d", key, v, lo, hi);
    *out = (int)v;
    return 0;
}

static int load_hparams(cairn_embed *e, cairn_error *err)
{
    const cairn_gguf *g = e->g;
    const char *arch;
    int rc = cairn_gguf_get_str(g, "general.architecture", &arch, NULL, err);
    if (rc < 0) return cairn_error_prefix(err, "embed");
    if (strcmp(arch, "bert") != 0)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "embed: architecture '%s' is not supported (only 'bert')", arch);
    if ((rc = get_dim(g, "bert.block_count", 1, MAX_LAYERS, &e->n_layer, err)) < 0 ||
        (rc = get_dim(g, "bert.embedding_length", 1, MAX_HIDDEN, &e->H, err)) < 0 ||
        (rc = get_dim(g, "bert.attention.head_count", 1, MAX_HIDDEN, &e->n_head, err)) < 0 ||
        (rc = get_dim(g, "bert.feed_forward_length", 1, MAX_FF, &e->FF, err)) < 0 ||
        (rc = get_dim(g, "bert.context_length", 2, MAX_POSITIONS, &e->max_pos, err)) < 0)
        return rc;
    if (e->H % e->n_head != 0)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "embed: embedding_length %d is not a multiple of head_count %d", e->H,
                            e->n_head);
    e->hd = e->H / e->n_head;
    float eps;
    rc = cairn_gguf_get_f32(g, "bert.attention.layer_norm_epsilon", &eps, err);
    if (rc < 0) return cairn_error_prefix(err, "embed");
    if (!(eps > 0.0f && eps < 1.0f))
        return cairn_errorf(err, CAIRN_EFORMAT, "embed: layer_norm_epsilon %g is not in (0, 1)",
                            (double)eps);
    e->eps = eps;
    uint32_t pooling;
    rc = cairn_gguf_get_u32(g, "bert.pooling_type", &pooling, err);
    if (rc == 0 && pooling != 1)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "embed: pooling_type %u (only 1 = mean is supported)", pooling);
    if (rc < 0 && rc != CAIRN_ENOTFOUND) return cairn_error_prefix(err, "embed");
    e->normalize = true;
    rc = cairn_gguf_get_bool(g, "bert.normalize", &e->normalize, err);
    if (rc < 0 && rc != CAIRN_ENOTFOUND) return cairn_error_prefix(err, "embed");
    uint32_t ms = (uint32_t)e->max_pos;
    rc = cairn_gguf_get_u32(g, "bert.max_seq_length", &ms, err);
    if (rc < 0 && rc != CAIRN_ENOTFOUND) return cairn_error_prefix(err, "embed");
    if (ms < 2 || ms > (uint32_t)e->max_pos)
        return cairn_errorf(err, CAIRN_EFORMAT, "embed: max_seq_length %u is outside 2..%d", ms,
                            e->max_pos);
    if (e->max_seq == 0)
        e->max_seq = (int)ms; /* the length the model was trained to embed */
    else if (e->max_seq > e->max_pos)
        e->max_seq = e->max_pos;
    cairn_error_clear(err);
    return 0;
}

static int load_tensors(cairn_embed *e, cairn_error *err)
{
    const cairn_gguf_tensor *t = cairn_gguf_find_tensor(e->g, "token_embd.weight");
    if (!t || t->n_dims != 2)
        return cairn_errorf(err, CAIRN_ENOTFOUND,
                            "embed: no 2-D tensor 'token_embd.weight' in the model");
    if (t->dims[1] < cairn_wordpiece_vocab_size(e->wp) || t->dims[1] > (1u << 24))
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "embed: token_embd.weight has %llu rows for a vocabulary of %zu",
                            (unsigned long long)t->dims[1], cairn_wordpiece_vocab_size(e->wp));
    e->vocab = (int)cairn_wordpiece_vocab_size(e->wp);
    const cairn_gguf_tensor *tt = cairn_gguf_find_tensor(e->g, "token_types.weight");
    if (!tt || tt->n_dims != 2 || tt->dims[1] < 1 || tt->dims[1] > 16)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "embed: missing or malformed 2-D tensor 'token_types.weight'");
    e->n_types = (int)tt->dims[1];
    uint64_t H = (uint64_t)e->H, FF = (uint64_t)e->FF;
    int rc;
    if ((rc = get_f32(e, "token_embd.weight", H, t->dims[1], &e->tok_emb, err)) < 0 ||
        (rc = get_f32(e, "position_embd.weight", H, (uint64_t)e->max_pos, &e->pos_emb, err)) < 0 ||
        (rc = get_f32(e, "token_types.weight", H, (uint64_t)e->n_types, &e->type_emb, err)) < 0 ||
        (rc = get_f32(e, "token_embd_norm.weight", H, 0, &e->emb_ln_g, err)) < 0 ||
        (rc = get_f32(e, "token_embd_norm.bias", H, 0, &e->emb_ln_b, err)) < 0)
        return rc;
    e->layers = calloc((size_t)e->n_layer, sizeof *e->layers);
    if (!e->layers) return cairn_errorf(err, CAIRN_ENOMEM, "embed: out of memory");
    char name[96];
#define T(field, part, in, out)                                                                    \
    do {                                                                                           \
        snprintf(name, sizeof name, "blk.%d.%s", i, part);                                         \
        if ((rc = get_f32(e, name, in, out, &L->field, err)) < 0) return rc;                       \
    } while (0)
    for (int i = 0; i < e->n_layer; i++) {
        layer_t *L = &e->layers[i];
        const float *qw, *kw, *vw, *qb, *kb, *vb;
        snprintf(name, sizeof name, "blk.%d.attn_q.weight", i);
        if ((rc = get_f32(e, name, H, H, &qw, err)) < 0) return rc;
        snprintf(name, sizeof name, "blk.%d.attn_k.weight", i);
        if ((rc = get_f32(e, name, H, H, &kw, err)) < 0) return rc;
        snprintf(name, sizeof name, "blk.%d.attn_v.weight", i);
        if ((rc = get_f32(e, name, H, H, &vw, err)) < 0) return rc;
        snprintf(name, sizeof name, "blk.%d.attn_q.bias", i);
        if ((rc = get_f32(e, name, H, 0, &qb, err)) < 0) return rc;
        snprintf(name, sizeof name, "blk.%d.attn_k.bias", i);
        if ((rc = get_f32(e, name, H, 0, &kb, err)) < 0) return rc;
        snprintf(name, sizeof name, "blk.%d.attn_v.bias", i);
        if ((rc = get_f32(e, name, H, 0, &vb, err)) < 0) return rc;
        L->qkv_w = malloc(3 * H * H * sizeof(float));
        L->qkv_b = malloc(3 * H * sizeof(float));
        if (!L->qkv_w || !L->qkv_b) return cairn_errorf(err, CAIRN_ENOMEM, "embed: out of memory");
        memcpy(L->qkv_w, qw, H * H * sizeof(float));
        memcpy(L->qkv_w + H * H, kw, H * H * sizeof(float));
        memcpy(L->qkv_w + 2 * H * H, vw, H * H * sizeof(float));
        memcpy(L->qkv_b, qb, H * sizeof(float));
        memcpy(L->qkv_b + H, kb, H * sizeof(float));
        memcpy(L->qkv_b + 2 * H, vb, H * sizeof(float));
        T(o_w, "attn_output.weight", H, H);
        T(o_b, "attn_output.bias", H, 0);
        T(ln1_g, "attn_output_norm.weight", H, 0);
        T(ln1_b, "attn_output_norm.bias", H, 0);
        T(up_w, "ffn_up.weight", H, FF);
        T(up_b, "ffn_up.bias", FF, 0);
        T(down_w, "ffn_down.weight", FF, H);
        T(down_b, "ffn_down.bias", H, 0);
        T(ln2_g, "layer_output_norm.weight", H, 0);
        T(ln2_b, "layer_output_norm.bias", H, 0);
    }
#undef T
    return 0;
}

void cairn_embed_close(cairn_embed *e)
{
    if (!e) return;
    cairn__embed_cuda_close(e->gpu);
    cairn_pool_close(e->pool);
    if (e->layers)
        for (int i = 0; i < e->n_layer; i++) {
            free(e->layers[i].qkv_w);
            free(e->layers[i].qkv_b);
        }
    /* Only where open packed them: embed_amx.c is built for AVX-512, and even its memset
     * there is an AVX-512 store that a CPU without it stops on (SIGILL at -O2). */
    for (int l = 0; e->amx && e->layers && l < e->n_layer; l++) {
        cairn__amx_free(&e->layers[l].qkv_x);
        cairn__amx_free(&e->layers[l].o_x);
        cairn__amx_free(&e->layers[l].up_x);
        cairn__amx_free(&e->layers[l].down_x);
    }
    free(e->layers);
    free(e->ab);
    free(e->xb);
    free(e->qkvb);
    free(e->ctxb);
    free(e->tile_scratch);
    for (int i = 0; i < e->n_owned; i++)
        free(e->owned[i]);
    free(e->owned);
    free(e->ids);
    free(e->pos);
    free(e->seq_start);
    free(e->seq_len);
    free(e->seq_out);
    free(e->x);
    free(e->qkv);
    free(e->ctx);
    free(e->tmp);
    free(e->ff);
    free(e->scratch);
    cairn_wordpiece_close(e->wp);
    cairn_gguf_close(e->g);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

/*
 * The GPU form of open's second half: the weights go to the device, and the host keeps only
 * the batch table (ids and the sequence starts, lengths and output rows) that batch/tokens
 * fill before each forward.
 */
static int open_gpu(cairn_embed *e, const cairn_embed_params *p, cairn_error *err)
{
    e->max_batch = p->max_batch;
    e->max_tokens = p->max_batch_tokens < e->max_seq ? e->max_seq : p->max_batch_tokens;
    e->n_threads = 1; /* tokenization, on the caller's thread */
    cairn__embed_cuda_layer *ls = malloc((size_t)e->n_layer * sizeof *ls);
    if (!ls) return cairn_errorf(err, CAIRN_ENOMEM, "embed: out of memory");
    for (int l = 0; l < e->n_layer; l++) {
        const layer_t *L = &e->layers[l];
        ls[l] = (cairn__embed_cuda_layer){
            .qkv_w = L->qkv_w, .qkv_b = L->qkv_b, .o_w = L->o_w, .o_b = L->o_b,
            .ln1_g = L->ln1_g, .ln1_b = L->ln1_b, .up_w = L->up_w, .up_b = L->up_b,
            .down_w = L->down_w, .down_b = L->down_b, .ln2_g = L->ln2_g, .ln2_b = L->ln2_b};
    }
    cairn__embed_cuda_model m = {
        .n_layer = e->n_layer, .H = e->H, .n_head = e->n_head, .FF = e->FF, .vocab = e->vocab,
        .max_pos = e->max_pos, .n_types = e->n_types, .eps = e->eps,
        .normalize = e->normalize, .tok_emb = e->tok_emb, .pos_emb = e->pos_emb,
        .type_emb = e->type_emb, .emb_ln_g = e->emb_ln_g, .emb_ln_b = e->emb_ln_b,
        .layers = ls, .max_seq = e->max_seq, .max_batch = e->max_batch,
        .max_tokens = e->max_tokens};
    int rc = cairn__embed_cuda_open(&e->gpu, p->device, &m, err);
    free(ls);
    if (rc < 0) return rc;
    for (int l = 0; l < e->n_layer; l++) { /* the fused copies live on the GPU now */
        free(e->layers[l].qkv_w);
        free(e->layers[l].qkv_b);
        e->layers[l].qkv_w = e->layers[l].qkv_b = NULL;
    }
    e->ids = malloc((size_t)e->max_tokens * sizeof *e->ids);
    e->pos = malloc((size_t)e->max_tokens * sizeof *e->pos);
    e->seq_start = malloc((size_t)e->max_batch * sizeof(int));
    e->seq_len = malloc((size_t)e->max_batch * sizeof(int));
    e->seq_out = malloc((size_t)e->max_batch * sizeof(int));
    if (!e->ids || !e->pos || !e->seq_start || !e->seq_len || !e->seq_out)
        return cairn_errorf(err, CAIRN_ENOMEM, "embed: out of memory for the batch table");
    return 0;
}

int cairn_embed_open(cairn_embed **out, const char *path, const cairn_embed_params *params,
                     cairn_error *err)
{
    if (!out || !path) return cairn_errorf(err, CAIRN_EINVAL, "embed: NULL argument");
    *out = NULL;
    cairn_embed_params p = params ? *params : cairn_embed_default_params();
    if (p.n_threads < 0 || p.n_threads > 1024 || p.max_batch < 1 || p.max_batch > 65536 ||
        p.max_batch_tokens < 0 || p.max_batch_tokens > (1 << 22) || p.max_seq < 0 ||
        p.max_seq == 1 || p.blas_threads < 0 || p.blas_threads > 1 || p.amx < 0 || p.amx > 1 ||
        p.device < -1)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "embed: bad params (n_threads %d, max_batch %d, max_batch_tokens %d, "
                            "max_seq %d, blas_threads %d, device %d)",
                            p.n_threads, p.max_batch, p.max_batch_tokens, p.max_seq,
                            p.blas_threads, p.device);
    cairn_embed *e = calloc(1, sizeof *e);
    if (!e) return cairn_errorf(err, CAIRN_ENOMEM, "embed: out of memory");
    pthread_mutex_init(&e->lock, NULL);
    e->max_seq = p.max_seq;
    e->device = p.device;
    int rc = cairn_gguf_open(&e->g, path, err);
    if (rc < 0) goto fail;
    if ((rc = load_hparams(e, err)) < 0) goto fail;
    if ((rc = cairn_wordpiece_open_gguf(&e->wp, e->g, err)) < 0) {
        cairn_error_prefix(err, "embed");
        goto fail;
    }
    if ((rc = load_tensors(e, err)) < 0) goto fail;
    if (p.device >= 0) {
        rc = open_gpu(e, &p, err);
        if (rc < 0) goto fail;
        *out = e;
        return 0;
    }

    cairn_pool_params pp = cairn_pool_default_params(); /* CPUs online */
    if (p.n_threads > 0) pp.n_threads = p.n_threads;
    if ((rc = cairn_pool_open(&e->pool, &pp, err)) < 0) goto fail;
    e->n_threads = cairn_pool_threads(e->pool);
    if (p.blas_threads == 1 && e->n_threads > 1) {
        /* BLAS's own threads would wait (spinning, then sched_yield) between sgemm calls
         * beside the pool's threads, which run the attention and element-wise stages: on 2
         * cores that is 3-4 runnable threads. One BLAS thread per pool thread instead. */
        openblas_set_num_threads(1);
        e->gemm_in_pool = 1;
    }
    e->max_batch = p.max_batch;
#ifdef HAVE_AVX2_KERNELS
    e->avx2 = p.simd && e->hd % 8 == 0 && e->hd <= 128 && __builtin_cpu_supports("avx2") &&
              __builtin_cpu_supports("fma");
#endif
    e->max_tokens = p.max_batch_tokens < e->max_seq ? e->max_seq : p.max_batch_tokens;
#ifdef HAVE_AVX2_KERNELS
    e->amx = p.amx && e->H % 32 == 0 && e->FF % 32 == 0 && cairn__amx_enable();
#endif
    for (int l = 0; e->amx && l < e->n_layer; l++) {
        layer_t *L = &e->layers[l];
        if (cairn__amx_pack(&L->qkv_x, L->qkv_w, 3 * e->H, e->H) ||
            cairn__amx_pack(&L->o_x, L->o_w, e->H, e->H) ||
            cairn__amx_pack(&L->up_x, L->up_w, e->FF, e->H) ||
            cairn__amx_pack(&L->down_x, L->down_w, e->H, e->FF)) {
            rc = cairn_errorf(err, CAIRN_ENOMEM, "embed: out of memory for BF16 weights");
            goto fail;
        }
    }
    e->tiles = e->amx && e->hd == 32 && e->H % 32 == 0;
    if (e->tiles) {
        size_t H = (size_t)e->H, FF = (size_t)e->FF, wide = 3 * H > FF ? 3 * H : FF;
        e->tile_rows = ((size_t)e->max_tokens + 31) / 32 * 32 + 32;
        e->tile_per_thread =
            (32 * wide * 4 + 32 * FF * 2 + cairn__amx_attn_scratch(e->max_seq) + 63) / 64 * 64;
        /* zeroed: rows past the last token are read by the tiles, so they must be finite */
        e->xb = calloc(e->tile_rows * H, 2);
        e->qkvb = calloc(e->tile_rows * 3 * H, 2);
        e->ctxb = calloc(e->tile_rows * H, 2);
        e->tile_scratch = aligned_alloc(64, (size_t)e->n_threads * e->tile_per_thread);
        if (!e->xb || !e->qkvb || !e->ctxb || !e->tile_scratch) {
            rc = cairn_errorf(err, CAIRN_ENOMEM, "embed: out of memory for BF16 activations");
            goto fail;
        }
        memset(e->tile_scratch, 0, (size_t)e->n_threads * e->tile_per_thread);
    } else if (e->amx) {
        size_t widest = (size_t)(e->FF > e->H ? e->FF : e->H);
        size_t rows = ((size_t)e->max_tokens + 31) / 32 * 32;
        e->ab = calloc(rows * widest, sizeof *e->ab); /* padding rows stay finite (zero) */
        if (!e->ab) {
            rc = cairn_errorf(err, CAIRN_ENOMEM, "embed: out of memory for BF16 activations");
            goto fail;
        }
    }
    size_t nt = (size_t)e->max_tokens, H = (size_t)e->H;
    e->ids = malloc(nt * sizeof *e->ids);
    e->pos = malloc(nt * sizeof *e->pos);
    e->seq_start = malloc((size_t)e->max_batch * sizeof(int));
    e->seq_len = malloc((size_t)e->max_batch * sizeof(int));
    e->seq_out = malloc((size_t)e->max_batch * sizeof(int));
    e->x = malloc(nt * H * sizeof(float));
    e->qkv = malloc(nt * 3 * H * sizeof(float));
    e->ctx = malloc(nt * H * sizeof(float));
    e->tmp = malloc(nt * H * sizeof(float));
    e->ff = malloc(nt * (size_t)e->FF * sizeof(float));
    /* attention scratch: K^T [hd x T], V+bias [T x hd], then the portable path's
     * probabilities [T], q and o [hd], or the AVX2 path's two probability rows [T + 8] */
    size_t T = (size_t)e->max_seq, hd = (size_t)e->hd;
    size_t per = 2 * hd * T + (T + 2 * hd > 2 * (T + 8) ? T + 2 * hd : 2 * (T + 8));
    if (per < 2 * H) /* pooling borrows the scratch as H doubles */
        per = 2 * H;
    e->scratch_per_thread = (per + 15) & ~(size_t)15;
    e->scratch = malloc((size_t)e->n_threads * e->scratch_per_thread * sizeof(float));
    if (!e->ids || !e->pos || !e->seq_start || !e->seq_len || !e->seq_out || !e->x || !e->qkv ||
        !e->ctx || !e->tmp || !e->ff || !e->scratch) {
        rc = cairn_errorf(err, CAIRN_ENOMEM,
                          "embed: out of memory for buffers (%d tokens x %d hidden)", e->max_tokens,
                          e->H);
        goto fail;
    }
    *out = e;
    return 0;
fail:
    cairn_embed_close(e);
    return rc;
}

/* ---- Forward pass ---------------------------------------------------------------------------- */

typedef struct {
    cairn_embed *e;
    const layer_t *L;
    int nseq;
    float *out; /* the caller's output, [n x H] */
} fwd_ctx;

/* In place: v = (v - mean) / sqrt(var + eps) * g + b over n floats. */
static void layer_norm(float *v, int n, const float *g, const float *b, float eps)
{
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < n; i++)
        mean += v[i];
    mean /= n;
    for (int i = 0; i < n; i++) {
        double d = v[i] - mean;
        var += d * d;
    }
    var /= n;
    float inv = (float)(1.0 / sqrt(var + (double)eps));
    float m = (float)mean;
    for (int i = 0; i < n; i++)
        v[i] = (v[i] - m) * inv * g[i] + b[i];
}

static void emb_rows(void *arg, size_t begin, size_t end, int tid)
{
    const fwd_ctx *c = arg;
    const cairn_embed *e = c->e;
    int H = e->H;
    for (size_t t = begin; t < end; t++) {
        const float *tok = e->tok_emb + (size_t)e->ids[t] * (size_t)H;
        const float *pos = e->pos_emb + (size_t)e->pos[t] * (size_t)H;
        const float *typ = e->type_emb; /* single-segment input: token type 0 */
        float *x = e->x + t * (size_t)H;
        for (int i = 0; i < H; i++)
            x[i] = tok[i] + pos[i] + typ[i];
        layer_norm(x, H, e->emb_ln_g, e->emb_ln_b, e->eps);
    }
}

/*
 * Scaled dot-product attention for one (sequence, head) pair per index (Vaswani et al. 2017):
 * softmax(Q K^T / sqrt(hd)) V over the sequence's own tokens only, so no padding mask is needed.
 * K is transposed into scratch so that the score loop runs over contiguous keys (vectorises).
 */
static void attn_tasks(void *arg, size_t begin, size_t end, int tid)
{
    const fwd_ctx *c = arg;
    const cairn_embed *e = c->e;
    const int H = e->H, hd = e->hd, H3 = 3 * e->H;
    const float scale = 1.0f / sqrtf((float)hd);
    float *sc = e->scratch + (size_t)tid * e->scratch_per_thread;
    for (size_t task = begin; task < end; task++) {
        int s = (int)(task / (size_t)e->n_head), h = (int)(task % (size_t)e->n_head);
        int T = e->seq_len[s];
        const float *base = e->qkv + (size_t)e->seq_start[s] * (size_t)H3;
        const float *bq = c->L->qkv_b + h * hd, *bk = bq + H, *bv = bq + 2 * H;
#ifdef HAVE_AVX2_KERNELS
        if (e->avx2) {
            cairn__embed_attn_head_avx2(base, H3, T, hd, H, h * hd, bq, scale, sc,
                                        e->ctx + (size_t)e->seq_start[s] * (size_t)H + h * hd, H);
            continue;
        }
#endif
        float *kt = sc, *vb = kt + (size_t)hd * T, *p = vb + (size_t)T * hd, *q = p + T,
              *o = q + hd;
        for (int j = 0; j < T; j++) {
            const float *row = base + (size_t)j * H3 + h * hd;
            for (int d = 0; d < hd; d++) {
                kt[(size_t)d * T + j] = row[H + d] + bk[d];
                vb[(size_t)j * hd + d] = row[2 * H + d] + bv[d];
            }
        }
        for (int i = 0; i < T; i++) {
            const float *qrow = base + (size_t)i * H3 + h * hd;
            for (int d = 0; d < hd; d++)
                q[d] = (qrow[d] + bq[d]) * scale;
            for (int j = 0; j < T; j++)
                p[j] = 0.0f;
            for (int d = 0; d < hd; d++) {
                const float qd = q[d], *kr = kt + (size_t)d * T;
                for (int j = 0; j < T; j++)
                    p[j] += qd * kr[j];
            }
            float mx = p[0];
            for (int j = 1; j < T; j++)
                mx = p[j] > mx ? p[j] : mx;
            float sum = 0.0f;
            for (int j = 0; j < T; j++) {
                p[j] = expf(p[j] - mx);
                sum += p[j];
            }
            float inv = 1.0f / sum;
            for (int d = 0; d < hd; d++)
                o[d] = 0.0f;
            for (int j = 0; j < T; j++) {
                const float w = p[j] * inv, *vr = vb + (size_t)j * hd;
                for (int d = 0; d < hd; d++)
                    o[d] += w * vr[d];
            }
            float *dst = e->ctx + (size_t)(e->seq_start[s] + i) * (size_t)H + h * hd;
            memcpy(dst, o, (size_t)hd * sizeof(float));
        }
    }
}

/* x = LayerNorm(x + tmp + bias) over rows [begin, end): the residual of either block. */
static void add_ln(const cairn_embed *e, size_t begin, size_t end, const float *bias,
                   const float *g, const float *beta)
{
    int H = e->H;
    for (size_t t = begin; t < end; t++) {
        float *x = e->x + t * (size_t)H;
        const float *y = e->tmp + t * (size_t)H;
        for (int i = 0; i < H; i++)
            x[i] += y[i] + bias[i];
        layer_norm(x, H, g, beta, e->eps);
    }
}

/* After the attention block. */
static void add_ln1_rows(void *arg, size_t begin, size_t end, int tid)
{
    const fwd_ctx *c = arg;
    add_ln(c->e, begin, end, c->L->o_b, c->L->ln1_g, c->L->ln1_b);
}

/* After the feed-forward block. */
static void add_ln2_rows(void *arg, size_t begin, size_t end, int tid)
{
    const fwd_ctx *c = arg;
    add_ln(c->e, begin, end, c->L->down_b, c->L->ln2_g, c->L->ln2_b);
}

/* GELU, the exact erf form BERT uses: x/2 (1 + erf(x / sqrt 2)). */
static void gelu_rows(void *arg, size_t begin, size_t end, int tid)
{
    const fwd_ctx *c = arg;
    const cairn_embed *e = c->e;
    const float *b = c->L->up_b;
    int FF = e->FF;
    for (size_t t = begin; t < end; t++) {
        float *f = e->ff + t * (size_t)FF;
#ifdef HAVE_AVX2_KERNELS
        if (e->avx2) {
            cairn__embed_gelu_avx2(f, b, FF);
            continue;
        }
#endif
        for (int i = 0; i < FF; i++) {
            float v = f[i] + b[i];
            f[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        }
    }
}

/* Mean over each sequence's tokens, then L2 normalisation, into the caller's rows. */
static void pool_seqs(void *arg, size_t begin, size_t end, int tid)
{
    const fwd_ctx *c = arg;
    const cairn_embed *e = c->e;
    int H = e->H;
    double *acc = (double *)(void *)(e->scratch + (size_t)tid * e->scratch_per_thread);
    /* scratch_per_thread >= 2 * H floats (see open) */
    for (size_t s = begin; s < end; s++) {
        for (int i = 0; i < H; i++)
            acc[i] = 0.0;
        int T = e->seq_len[s];
        for (int t = 0; t < T; t++) {
            const float *x = e->x + (size_t)(e->seq_start[s] + t) * (size_t)H;
            for (int i = 0; i < H; i++)
                acc[i] += x[i];
        }
        double norm = 0.0;
        for (int i = 0; i < H; i++) {
            acc[i] /= T;
            norm += acc[i] * acc[i];
        }
        norm = sqrt(norm);
        double inv = (e->normalize && norm > 0.0) ? 1.0 / norm : 1.0;
        float *dst = c->out + (size_t)e->seq_out[s] * (size_t)H;
        for (int i = 0; i < H; i++)
            dst[i] = (float)(acc[i] * inv);
    }
}

typedef struct gemm_ctx {
    int n, k;
    const float *a, *w;
    float *c;
} gemm_ctx;

/* Rows [begin, end) of C = A W^T: one single-threaded sgemm per pool thread. */
static void gemm_rows(void *arg, size_t begin, size_t end, int tid)
{
    (void)tid;
    const gemm_ctx *g = arg;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(end - begin), g->n, g->k, 1.0f,
                g->a + begin * (size_t)g->k, g->k, g->w, g->k, 0.0f, g->c + begin * (size_t)g->n,
                g->n);
}

typedef struct amx_ctx {
    cairn_embed *e;
    int m, k;
    const float *a;
    const cairn__amx_mat *w;
    float *c;
} amx_ctx;

/* Row blocks [begin, end) of 32 rows: their activations to BF16, then their rows of C. */
static void amx_rows(void *arg, size_t begin, size_t end, int tid)
{
    (void)tid;
    const amx_ctx *g = arg;
    int r0 = (int)begin * 32, r1 = (int)end * 32 < g->m ? (int)end * 32 : g->m;
    cairn__amx_convert_rows(g->a, r0, r1, g->k, g->e->ab);
    cairn__amx_gemm_rows(g->e->ab, r0, r1, g->w, g->c);
}

/* C[m x n] = A[m x k] W[n x k]^T, in BF16 on AMX tiles when e->amx (wx: W's packed form) */
static void linear(cairn_embed *e, int m, int n, int k, const float *a, const float *w,
                   const cairn__amx_mat *wx, float *c)
{
    if (e->amx) {
        amx_ctx g = {.e = e, .m = m, .k = k, .a = a, .w = wx, .c = c};
        cairn_pool_parallel_for(e->pool, (size_t)(m + 31) / 32, amx_rows, &g);
        return;
    }
    if (e->gemm_in_pool && m >= 2 * e->n_threads) {
        gemm_ctx g = {.n = n, .k = k, .a = a, .w = w, .c = c};
        cairn_pool_parallel_for(e->pool, (size_t)m, gemm_rows, &g);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, w, k, 0.0f, c, n);
}

static void forward_tiles(cairn_embed *e, int nseq, int ntok, float *out);

/* Runs the packed batch in e->ids / pos / seq_* through the encoder into out. Returns 0, or
 * on a GPU CAIRN_EDEVICE. */
static int forward(cairn_embed *e, int nseq, int ntok, float *out, cairn_error *err)
{
    if (e->gpu) /* seq_out runs on from seq_out[0]: sequences are added in output order */
        return cairn__embed_cuda_forward(e->gpu, e->ids, e->seq_start, e->seq_len, nseq, ntok,
                                         out + (size_t)e->seq_out[0] * (size_t)e->H, err);
    if (e->tiles) {
        forward_tiles(e, nseq, ntok, out);
        return 0;
    }
    fwd_ctx c = {.e = e, .L = NULL, .nseq = nseq, .out = out};
    size_t n = (size_t)ntok;
    cairn_pool_parallel_for(e->pool, n, emb_rows, &c);
    for (int l = 0; l < e->n_layer; l++) {
        const layer_t *L = &e->layers[l];
        c.L = L;
        linear(e, ntok, 3 * e->H, e->H, e->x, L->qkv_w, &L->qkv_x, e->qkv);
        cairn_pool_parallel_for(e->pool, (size_t)nseq * (size_t)e->n_head, attn_tasks, &c);
        linear(e, ntok, e->H, e->H, e->ctx, L->o_w, &L->o_x, e->tmp);
        cairn_pool_parallel_for(e->pool, n, add_ln1_rows, &c);
        linear(e, ntok, e->FF, e->H, e->x, L->up_w, &L->up_x, e->ff);
        cairn_pool_parallel_for(e->pool, n, gelu_rows, &c);
        linear(e, ntok, e->H, e->FF, e->ff, L->down_w, &L->down_x, e->tmp);
        cairn_pool_parallel_for(e->pool, n, add_ln2_rows, &c);
    }
    cairn_pool_parallel_for(e->pool, (size_t)nseq, pool_seqs, &c);
    return 0;
}

/* ---- The whole layer on tiles (e->tiles) ---------------------------------------------------- */

/*
 * Per layer two parallel steps instead of six: attention per (sequence, head), then per block
 * of 32 token rows everything that reads only its own rows: the output projection, add &
 * LayerNorm, FFN up and GELU, FFN down, add & LayerNorm, and the next layer's QKV projection
 * (the first layer's QKV follows the embeddings). A block's products stay in its thread's
 * scratch (L2) between the steps. Rows past the last token ride along in the last block; only
 * the token rows of x, xb and qkvb are written, so blocks never write each other's rows.
 */
typedef struct tiles_ctx {
    cairn_embed *e;
    int ntok, layer; /* layer: the one whose attention output the rows step finishes; -1:
                        the embeddings step */
} tiles_ctx;

static uint8_t *tile_scratch(const cairn_embed *e, int tid)
{
    return e->tile_scratch + (size_t)tid * e->tile_per_thread;
}

/* The QKV projection of rows [r0, r0 + rows) of xb with layer L's weights into qkvb. */
static void tiles_qkv(const cairn_embed *e, const layer_t *L, int r0, int rows, float *c)
{
    const int H = e->H;
    cairn__amx_gemm32(e->xb + (size_t)r0 * H, H, &L->qkv_x, c, 3 * H);
    cairn__amx_epi_qkv_heads(c, 3 * H, rows, H, L->qkv_b, 1.0f / sqrtf((float)e->hd),
                             e->qkvb + (size_t)r0 * 96, e->tile_rows * 96);
}

static void tiles_rows(void *arg, size_t begin, size_t end, int tid)
{
    const tiles_ctx *t = arg;
    const cairn_embed *e = t->e;
    const int H = e->H, FF = e->FF;
    float *c = (float *)(void *)tile_scratch(e, tid);
    uint16_t *ffb = (uint16_t *)(c + (size_t)32 * (3 * H > FF ? 3 * H : FF));
    cairn__amx_tiles_on();
    for (size_t blk = begin; blk < end; blk++) {
        const int r0 = (int)blk * 32, rows = t->ntok - r0 < 32 ? t->ntok - r0 : 32;
        float *x = e->x + (size_t)r0 * H;
        uint16_t *xb = e->xb + (size_t)r0 * H;
        if (t->layer >= 0) {
            const layer_t *L = &e->layers[t->layer];
            cairn__amx_gemm32(e->ctxb + (size_t)r0 * H, H, &L->o_x, c, H);
            cairn__amx_epi_add_ln(c, H, rows, H, L->o_b, L->ln1_g, L->ln1_b, e->eps, x, xb);
            cairn__amx_gemm32(xb, H, &L->up_x, c, FF);
            cairn__amx_epi_gelu_bf16(c, FF, 32, FF, L->up_b, ffb, FF);
            cairn__amx_gemm32(ffb, FF, &L->down_x, c, H);
            cairn__amx_epi_add_ln(c, H, rows, H, L->down_b, L->ln2_g, L->ln2_b, e->eps, x, xb);
        } else {
            fwd_ctx fc = {.e = (cairn_embed *)e};
            emb_rows(&fc, (size_t)r0, (size_t)(r0 + rows), tid);
            cairn__amx_convert_rows(e->x, r0, r0 + rows, H, e->xb);
        }
        if (t->layer + 1 < e->n_layer) tiles_qkv(e, &e->layers[t->layer + 1], r0, rows, c);
    }
    cairn__amx_tiles_off();
}

static void tiles_attn(void *arg, size_t begin, size_t end, int tid)
{
    const tiles_ctx *t = arg;
    const cairn_embed *e = t->e;
    const int H = e->H;
    void *sc = tile_scratch(e, tid) + (size_t)32 * (3 * H > e->FF ? 3 * H : e->FF) * 4 +
               (size_t)32 * e->FF * 2;
    cairn__amx_tiles_on();
    for (size_t task = begin; task < end; task++) {
        int s = (int)(task / (size_t)e->n_head), h = (int)(task % (size_t)e->n_head);
        const uint16_t *q = e->qkvb + ((size_t)h * e->tile_rows + e->seq_start[s]) * 96;
        cairn__amx_attn_head32(q, q + 32, q + 64, 96, e->seq_len[s], sc,
                               e->ctxb + (size_t)e->seq_start[s] * H + h * 32, H);
    }
    cairn__amx_tiles_off();
}

static void forward_tiles(cairn_embed *e, int nseq, int ntok, float *out)
{
    tiles_ctx t = {.e = e, .ntok = ntok, .layer = -1};
    size_t blocks = ((size_t)ntok + 31) / 32;
    cairn_pool_parallel_for(e->pool, blocks, tiles_rows, &t);
    for (int l = 0; l < e->n_layer; l++) {
        cairn_pool_parallel_for(e->pool, (size_t)nseq * (size_t)e->n_head, tiles_attn, &t);
        t.layer = l;
        cairn_pool_parallel_for(e->pool, blocks, tiles_rows, &t);
    }
    fwd_ctx c = {.e = e, .nseq = nseq, .out = out};
    cairn_pool_parallel_for(e->pool, (size_t)nseq, pool_seqs, &c);
}

static void add_seq(cairn_embed *e, int *nseq, int *ntok, int len, int out_index)
{
    int s = (*nseq)++;
    e->seq_start[s] = *ntok;
    e->seq_len[s] = len;
    e->seq_out[s] = out_index;
    for (int i = 0; i < len; i++)
        e->pos[*ntok + i] = i;
    *ntok += len;
}

int cairn_embed_batch(cairn_embed *e, const char *const *texts, int n, float *out, cairn_error *err)
{
    if (!e || n < 0 || (n > 0 && (!texts || !out)))
        return cairn_errorf(err, CAIRN_EINVAL, "embed: bad arguments (n = %d)", n);
    pthread_mutex_lock(&e->lock);
    int nseq = 0, ntok = 0, rc = 0;
    for (int i = 0; i < n; i++) {
        if (nseq == e->max_batch || ntok + e->max_seq > e->max_tokens) {
            rc = forward(e, nseq, ntok, out, err);
            nseq = ntok = 0;
            if (rc) break;
        }
        const char *t = texts[i] ? texts[i] : "";
        int len = cairn_wordpiece_encode(e->wp, t, strlen(t), e->ids + ntok, e->max_seq);
        add_seq(e, &nseq, &ntok, len, i);
    }
    if (nseq && rc == 0) rc = forward(e, nseq, ntok, out, err);
    pthread_mutex_unlock(&e->lock);
    return rc;
}

int cairn_embed_tokens(cairn_embed *e, const int32_t *const *ids, const int *lens, int n,
                       float *out, cairn_error *err)
{
    if (!e || n < 0 || (n > 0 && (!ids || !lens || !out)))
        return cairn_errorf(err, CAIRN_EINVAL, "embed: bad arguments (n = %d)", n);
    for (int i = 0; i < n; i++) {
        if (!ids[i] || lens[i] < 1 || lens[i] > e->max_seq)
            return cairn_errorf(err, CAIRN_ERANGE,
                                "embed: sequence %d has %d tokens (allowed 1..%d)", i, lens[i],
                                e->max_seq);
        for (int k = 0; k < lens[i]; k++)
            if (ids[i][k] < 0 || ids[i][k] >= e->vocab)
                return cairn_errorf(err, CAIRN_ERANGE,
                                    "embed: sequence %d token %d: id %d outside 0..%d", i, k,
                                    ids[i][k], e->vocab - 1);
    }
    pthread_mutex_lock(&e->lock);
    int nseq = 0, ntok = 0, rc = 0;
    for (int i = 0; i < n; i++) {
        if (nseq == e->max_batch || ntok + lens[i] > e->max_tokens) {
            rc = forward(e, nseq, ntok, out, err);
            nseq = ntok = 0;
            if (rc) break;
        }
        memcpy(e->ids + ntok, ids[i], (size_t)lens[i] * sizeof(int32_t));
        add_seq(e, &nseq, &ntok, lens[i], i);
    }
    if (nseq && rc == 0) rc = forward(e, nseq, ntok, out, err);
    pthread_mutex_unlock(&e->lock);
    return rc;
}

int cairn_embed_amx(const cairn_embed *e) { return e->amx; }
