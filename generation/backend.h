/*
 * generation/backend.h — what the forward pass asks of a device.
 *
 * model.c knows the architectures (Gemma 3, Llama, Qwen2) and calls the stages below in their
 * order; a backend knows a device and runs them there. Nothing above this seam includes a
 * kernel header, and nothing below it knows an architecture: a stage gets its shapes and
 * weights as arguments. The anchors are ggml's ggml_backend_i and SQLite's sqlite3_io_methods:
 * a versioned table of function pointers behind an opaque handle whose first member points to
 * the table.
 *
 * Memory. "Device memory" is what alloc hands out: host memory on the CPU backend, GPU memory
 * on the CUDA one. Weights (cairn_bmat, and float vectors through alloc + upload), activations,
 * the KV pages (kv.c allocates its pools here and copies pages with kv_copy) and the logits
 * rows of a step all live there. model.c never dereferences a device pointer: it moves bytes
 * with upload/download (the trace hook and the layer yield's saved states do so).
 *
 * A step. batch_set hands the backend the step's tokens, positions, each token's sequence
 * (an index into the step's block tables), the block tables themselves and which tokens want
 * logits, once; the stages then run over all n_tokens rows. Stages may run asynchronously
 * (the CUDA backend queues them on one stream); download and logits wait for what came before.
 *
 * Results. A backend's stages are tested against the CPU backend's on random inputs
 * (tests/unit/test_backend_ops.c); the CPU backend's rounding is llama.cpp's, bit for bit, which
 * is why its batch_set derives how llama.cpp would have batched each token from its position
 * and its sequence's prompt length (prompt_len below). Other backends may ignore prompt_len.
 *
 * Errors. Every entry that can fail returns 0 or a negative CAIRN_E* code with the detail (the
 * CUDA call that failed, the tensor, the bytes) in err when err is given. Nothing aborts.
 *
 * Thread-safety: a backend is used by one thread at a time (the engine's owner).
 */
#ifndef CAIRN_GENERATION_BACKEND_H
#define CAIRN_GENERATION_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/threadpool.h"
#include "generation/sample.h"
#include "proto/gguf.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CAIRN_BACKEND_VERSION 3
#define CAIRN_BACKEND_MAX_GROUPS 4 /* KV layer groups (distinct attention windows) */

typedef struct cairn_backend cairn_backend;
typedef struct cairn_backend_i cairn_backend_i;

/* Every backend's handle starts with this; callers reach the table through it. */
struct cairn_backend {
    const cairn_backend_i *i;
};

/* A weight matrix of GGUF blocks, rows x cols, as a backend holds it. */
typedef struct cairn_bmat {
    uint32_t type;    /* GGUF type */
    int64_t rows;
    int64_t cols;
    size_t row_bytes; /* bytes of one row of blocks */
    void *data;       /* device memory (the CPU backend borrows the mapped file's bytes) */
    void *priv;       /* the backend's own: repacked rows, ownership; NULL when none */
} cairn_bmat;

/*
 * Where the paged KV cache lives (cairn_kv_layout fills it). Group g's pools hold n_blocks
 * blocks of block_elems F16 values each: block b, layer-in-group i, token row r, value c sits
 * at k[b * block_elems + (i * block_tokens + r) * kv_dim + c] (v likewise).
 */
typedef struct cairn_bkv {
    int n_groups;
    struct {
        uint16_t *k, *v;    /* device memory */
        size_t block_elems; /* layers_in_group * block_tokens * kv_dim */
        int window;         /* 0 = full attention, else the window in positions */
    } group[CAIRN_BACKEND_MAX_GROUPS];
    const int *layer_group; /* per layer (host memory, owned by the cache) */
    const int *layer_index; /* the layer's index inside its group */
    int kv_dim;             /* values per token row: n_kv_heads * head_dim */
    int block_tokens;
    int max_table;          /* block-table entries per sequence and group */
} cairn_bkv;

/*
 * One step's batch, in host memory. The arrays stay valid until the step's last stage returns
 * (a backend may keep pointers to them, or copy them to the device).
 * Token t is at position pos[t] of the step's sequence slot[t] (0 <= slot[t] < n_seqs); its
 * sequence's block table in group g is tables[(g * n_seqs + slot[t]) * max_table ...] (entries
 * -1: freed window blocks). The K/V rows of every token are written by the qkv stage before
 * attention reads them, so a token attends to the earlier tokens of its own step.
 */
typedef struct cairn_bbatch {
    int n_tokens;
    const int32_t *tokens;
    const int32_t *pos;
    const int32_t *slot;
    const int32_t *prompt_len; /* per token: its sequence's prompt length (see above) */
    const uint8_t *logits;     /* per token: non-zero = the logits stage computes its row */
    int n_seqs;
    int n_groups;
    int max_table;
    const int32_t *tables;
} cairn_bbatch;

/* The per-layer work between the q/k/v products and attention (the "qkv" stage). */
typedef struct cairn_bqkv {
    int n_head, n_head_kv, head_dim;
    const float *bq, *bk, *bv;   /* biases (device memory) or NULL */
    const float *q_norm, *k_norm; /* per-head RMSNorm weights [head_dim] or NULL */
    float eps;
    float rope_base, rope_freq_scale;
    bool rope_neox; /* rotate (i, i + head_dim/2) pairs; false: (2i, 2i+1) */
    float q_scale;  /* q *= q_scale after RoPE (1: none) */
    const cairn_bkv *kv;
    int layer;
} cairn_bqkv;

/* Attention of every query head of every batch token over its sequence's cached keys. */
typedef struct cairn_battn {
    int n_head, n_head_kv, head_dim;
    int window;  /* 0: keys 0..pos; W: keys pos-W+1..pos */
    float scale; /* multiplies q.k */
    const cairn_bkv *kv;
    int layer;
} cairn_battn;

enum { CAIRN_ACT_SILU = 0, CAIRN_ACT_GELU_TANH = 1 };

#define CAIRN_BACKEND_MAX_PICK 256 /* the most entries logits_pick returns of a row */

/* What comes back of one logits row (logits_pick): the whole row (k 0, into row), or its k
 * first entries in cairn_sample's order (the largest logit first, ties by the lower id; NaN
 * and -inf never taken), into cand[0..k); a row with fewer finite logits fills the rest of
 * cand with {-inf, -1}. k 1 is the arg-max. */
typedef struct cairn_bpick {
    int k;             /* 0..CAIRN_BACKEND_MAX_PICK */
    float *row;        /* host memory for the row's w->rows floats, when k is 0 */
    cairn_cand *cand;  /* host memory for k entries, when k > 0 */
} cairn_bpick;

/* What a loaded matrix is for (flags): matrix products of the step's rows (matmul), the output
 * projection (logits: a few rows against many, where a backend may lay it out differently),
 * row lookups (embed). */
enum { CAIRN_BMAT_MATMUL = 1, CAIRN_BMAT_LOGITS = 2, CAIRN_BMAT_ROWS = 4 };

/* What a backend can tell the latency predictor about how its cost grows with a batch. */
typedef struct cairn_backend_traits {
    int token_tile; /* tokens per tile of its matrix kernels (a pass costs a step more when it
                       starts a new tile); 1 when cost has no such steps */
    int logits_pair; /* logits rows taken together by the output projection; 1 when none */
    int gemm_from;   /* tokens past which a pass's products take another path at a fixed cost
                        (the CUDA backend dequantizes every quantized matrix into tiles for
                        cuBLAS past 16 tokens); its token tiles count up to it only; 0: none */
    int cold_steps;  /* steps of a batch shape before its steady cost, which a profile should
                        leave untimed (the CUDA backend: 2, the first loading kernels lazily
                        and running call by call, the second capturing the shape's graph); 0 */
} cairn_backend_traits;

struct cairn_backend_i {
    int version; /* CAIRN_BACKEND_VERSION */
    const char *name; /* "cpu", "cuda" */
    void (*close)(cairn_backend *be);
    /* "cpu", or "NVIDIA H100 80GB HBM3, sm_90, 81559 MiB" */
    void (*describe)(const cairn_backend *be, char *buf, size_t len);
    void (*traits)(const cairn_backend *be, cairn_backend_traits *out);
    /* Free and total device memory in bytes (the CPU backend: what the OS reports). */
    int (*mem_info)(const cairn_backend *be, size_t *free_bytes, size_t *total_bytes);

    /* ---- memory ---- */
    int (*alloc)(cairn_backend *be, size_t bytes, void **out, cairn_error *err);
    void (*free)(cairn_backend *be, void *p); /* NULL is a no-op */
    int (*upload)(cairn_backend *be, void *dst, const void *src, size_t bytes, cairn_error *err);
    int (*download)(cairn_backend *be, void *dst, const void *src, size_t bytes,
                    cairn_error *err);
    /* Copies bytes within device memory (KV pages on copy-on-write). */
    int (*copy)(cairn_backend *be, void *dst, const void *src, size_t bytes, cairn_error *err);
    /* Makes m from the 2-D GGUF tensor t (dims[0] = cols): uploads (or borrows) its blocks.
     * use is CAIRN_BMAT_* (what the stages will do with it). CAIRN_EUNSUPPORTED names the
     * tensor and type when the backend has no kernel for that use; CAIRN_ENOMEM names the
     * bytes. */
    int (*mat_load)(cairn_backend *be, const cairn_gguf_tensor *t, const char *name, int use,
                    cairn_bmat *m, cairn_error *err);
    void (*mat_free)(cairn_backend *be, cairn_bmat *m); /* a zeroed m is a no-op */
    /* Sizes the backend's scratch for steps of up to max_tokens tokens over sequences of up
     * to max_ctx positions, with group query heads per KV head, for the matrices loaded so
     * far. Stages allocate nothing; call again after loading more matrices. */
    int (*reserve)(cairn_backend *be, int max_tokens, int max_ctx, int group, cairn_error *err);

    /* ---- a step ---- */
    int (*batch_set)(cairn_backend *be, const cairn_bbatch *b, cairn_error *err);
    /* x[t] = row tokens[t] of emb, times scale. */
    int (*embed)(cairn_backend *be, const cairn_bmat *emb, float scale, float *x,
                 cairn_error *err);
    /* out[r] = rmsnorm(x[r]) * w over rows of n values (w NULL: no weight); out may be x. */
    int (*rmsnorm)(cairn_backend *be, float *out, const float *x, const float *w, int rows,
                   int n, float eps, cairn_error *err);
    /* y[i][t] = w[i] x[t] for the step's n_tokens rows of x, n_w matrices of equal cols. */
    int (*matmul)(cairn_backend *be, const cairn_bmat *const *w, int n_w, const float *x,
                  float *const *y, cairn_error *err);
    /* Per token: biases (v's too, in place), per-head q/k norms, RoPE at its position,
     * q *= q_scale, then its K and V rows (F16) into the cache at (layer, its sequence, its
     * position). */
    int (*qkv)(cairn_backend *be, const cairn_bqkv *p, float *q, float *k, float *v,
               cairn_error *err);
    /* out[t][h] = softmax(scale q[t][h].K) V over the keys p->window allows. */
    int (*attention)(cairn_backend *be, const cairn_battn *p, const float *q, float *out,
                     cairn_error *err);
    /* Residual + norm over the step's rows of n: a = post ? rmsnorm(a) * post : a; x += a;
     * then h = rmsnorm(x) * next when next is given. */
    int (*add_norm)(cairn_backend *be, float *x, float *a, const float *post, const float *next,
                    float *h, int n, float eps, cairn_error *err);
    /* a = act(a) * b over the step's rows of n (act: CAIRN_ACT_*). */
    int (*gated)(cairn_backend *be, float *a, const float *b, int n, int act, cairn_error *err);
    /* The next-token logits of the tokens whose batch logits flag is set, in batch order:
     * out_host[j] = w (rmsnorm(x[t_j]) * norm), w->rows floats each, into host memory. Waits
     * for the step. The pass is over: x's rows may be used as scratch. */
    int (*logits)(cairn_backend *be, const cairn_bmat *w, const float *norm, float eps,
                  float *x, int n, float *out_host, cairn_error *err);
    /* A layer of a pass that may yield (the layer-level yield) has been queued: returns once
     * the device is at most about a layer behind the host, so that a yield check made next
     * sees where the device is, not where the host's queueing is (on the CUDA backend a pass's
     * 32 layers are queued in well under a millisecond, so without it a pass could never yield
     * after its first layer). NULL where stages run synchronously (the CPU backend). Added in
     * version 2. */
    int (*layer_done)(cairn_backend *be, cairn_error *err);
    /* logits, but logits row j comes back as picks[j] says: whole, or only its k first
     * entries (a GPU then sends back a few bytes a row instead of the vocabulary's, and the
     * host samples among k candidates instead of scanning the row). NULL where whole rows
     * cost nothing to take (the CPU backend). Added in version 3. */
    int (*logits_pick)(cairn_backend *be, const cairn_bmat *w, const float *norm, float eps,
                       float *x, int n, const cairn_bpick *picks, cairn_error *err);
};

/*
 * Opens the backend of a device: -1 the CPU (compute on pool, which must outlive it; NULL runs
 * on the caller), N >= 0 CUDA device N. Returns 0 and *out (cairn_backend_close), or
 * CAIRN_EUNSUPPORTED (a CPU-only build, or no such GPU: err says which), CAIRN_ENOMEM,
 * CAIRN_EDEVICE (a CUDA call failed; err names it).
 */
int cairn_backend_open(cairn_backend **out, int device, cairn_pool *pool, cairn_error *err);
void cairn_backend_close(cairn_backend *be); /* NULL is a no-op */

/*
 * What a device's engine would run on, without opening it: its backend's name ("cpu" for -1,
 * "cuda" for N >= 0) into backend[blen], and the device's name into name[nlen]: the CPU's
 * model name (/proc/cpuinfo; the machine type where there is none), or the GPU's name
 * (common/gpu.h, without its compute capability and memory). Scheduler profiles are kept per
 * backend and device by these names. Returns 0, or the GPU query's error (name then says
 * why). Thread-safe.
 */
int cairn_backend_identify(int device, char *backend, size_t blen, char *name, size_t nlen);

/* The backends themselves (cairn_backend_open picks one). */
int cairn_backend_cpu_open(cairn_backend **out, cairn_pool *pool, cairn_error *err);
int cairn_backend_cuda_open(cairn_backend **out, int device, cairn_error *err);

/* Allocates bytes of device memory and uploads src into it (a weight vector). */
int cairn_backend_alloc_upload(cairn_backend *be, const void *src, size_t bytes, void **out,
                               cairn_error *err);

#ifdef __cplusplus
}
#endif
#endif
