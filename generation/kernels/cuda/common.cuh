/*
 * generation/kernels/cuda/common.cuh — what the CUDA backend's files share: the backend's state,
 * the device layout of a weight matrix, the error helpers and the per-value decoders of the
 * GGUF block formats. Internal to generation/kernels/cuda.
 *
 * Weights on the device. mat_load repacks each GGUF tensor into planes (see cairn__cmat) so
 * that every kernel reads its quants with aligned 16-byte loads: GGUF's 32-value blocks are 18,
 * 20, 22 or 34 bytes, which would leave most loads unaligned. The bytes read per weight stay
 * those of the file (no padding), which is what a memory-bound decode step pays for.
 *
 * Errors. Every CUDA and cuBLAS call goes through CU_TRY / BLAS_TRY, which return
 * CAIRN_EDEVICE with the call's name and CUDA's message; kernel launches are checked with
 * cudaGetLastError right after. A fault inside a kernel surfaces at the next call that waits
 * (download, logits), named as that call.
 */
#ifndef CAIRN_GENERATION_KERNELS_CUDA_COMMON_CUH
#define CAIRN_GENERATION_KERNELS_CUDA_COMMON_CUH

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern "C" {
#include "common/error.h"
#include "common/threadpool.h"
#include "proto/gguf.h"
}
#include "generation/backend.h"

/* ---- Errors ------------------------------------------------------------------------------- */

/* Records a failed CUDA call (its name is the text of `call` up to the '(') and returns
 * CAIRN_EDEVICE. */
int cairn__cuda_fail(cairn_error *err, const char *call, cudaError_t e);
int cairn__blas_fail(cairn_error *err, const char *call, cublasStatus_t s);

#define CU_TRY(err, call)                                                                      \
    do {                                                                                       \
        cudaError_t cu_e_ = (call);                                                            \
        if (cu_e_ != cudaSuccess)                                                              \
            return cairn__cuda_fail((err), #call, cu_e_);                                      \
    } while (0)

/* After a kernel launch: a bad configuration or an earlier asynchronous fault. */
#define CU_LAUNCHED(err, kernel_name)                                                          \
    do {                                                                                       \
        cudaError_t cu_e_ = cudaGetLastError();                                                \
        if (cu_e_ != cudaSuccess)                                                              \
            return cairn__cuda_fail((err), kernel_name, cu_e_);                                \
    } while (0)

#define BLAS_TRY(err, call)                                                                    \
    do {                                                                                       \
        cublasStatus_t bl_s_ = (call);                                                         \
        if (bl_s_ != CUBLAS_STATUS_SUCCESS)                                                    \
            return cairn__blas_fail((err), #call, bl_s_);                                      \
    } while (0)

/* ---- Weight matrices ------------------------------------------------------------------------ */

/*
 * A matrix on the device, as planes of its rows x nb blocks (row-major over (row, block)):
 *   F32, F16, BF16  q: the values themselves
 *   Q8_0            q: 32 int8 a block;          d: F16 scale a block
 *   Q4_0            q: 16 nibble bytes a block;  d: F16 scale a block
 *   Q4_1            q: 16 nibble bytes a block;  d: F16 (scale, min) pairs, two a block
 *   Q5_0            q: 16 nibble bytes a block;  d: F16 scale a block; qh: the fifth bits
 *   Q4_K            q: the GGUF blocks as stored (144 bytes: d, dmin, scales, qs; 16-aligned)
 *   Q6_K            q: ql, qh, scales (208 bytes a block); d: F16 scale a block
 * A block's nibble bytes keep GGUF's order: byte j holds value j (low) and j + 16 (high).
 *
 * The lane layout (lane != 0; Q8_0, Q4_K and Q6_K by default, CAIRN_CUDA_LANE_LAYOUT=0 keeps
 * rows whole) interleaves the q plane of each group of 32 rows by 16-byte units: unit u of row
 * r (bytes 16 u .. 16 u + 15 of the row's q plane above) lies at
 *   q + ((r / 32) * (qrow / 16) + u) * 512 + (r % 32) * 16,
 * so that 32 lanes, one a row, reading the same unit of their rows read 512 contiguous bytes,
 * and each lane can take whole blocks (a K-quant block's header once for its 256 values) with
 * every load coalesced. The last group is padded with zero rows. The other planes keep rows
 * whole. Only the q plane moves: cairn__q_at finds a byte in either layout.
 */
typedef struct cairn__cmat {
    uint32_t type;
    int64_t rows, cols, nb; /* nb: blocks a row (cols for the float types) */
    int64_t qrow;           /* bytes a row in the q plane (a multiple of 16 in the lane layout) */
    int lane;               /* the lane layout (above) */
    uint8_t *q;
    uint16_t *d;
    uint32_t *qh;
    __nv_bfloat16 *bf; /* the whole matrix decoded to BF16 for cuBLAS (the BF16 cache), or NULL */
    int use;           /* CAIRN_BMAT_*: what the stages do with it */
} cairn__cmat;

/* The planes by value, for kernel arguments. */
struct cairn__mat_dev {
    const uint8_t *q;
    const uint16_t *d;
    const uint32_t *qh;
    int64_t rows, cols, nb, qrow;
    int lane;
};

static inline cairn__mat_dev cairn__mat_dev_of(const cairn__cmat *m)
{
    cairn__mat_dev v = {m->q, m->d, m->qh, m->rows, m->cols, m->nb, m->qrow, m->lane};
    return v;
}

/* Byte off of row's q plane, in either layout (a 16-byte unit stays whole in both). */
static __host__ __device__ __forceinline__ const uint8_t *cairn__q_at(const cairn__mat_dev &m,
                                                                      int64_t row, int64_t off)
{
    if (!m.lane)
        return m.q + row * m.qrow + off;
    return m.q + (((row >> 5) * (m.qrow >> 4) + (off >> 4)) << 9) + ((row & 31) << 4) +
           (off & 15);
}

/* True for the types mat_load takes. */
bool cairn__cuda_type_ok(uint32_t type);

/* Bytes of a type's planes for one row: q, then d, then qh (0 when the plane is unused). */
void cairn__plane_bytes(uint32_t type, int64_t cols, size_t *q, size_t *d, size_t *qh);

/* ---- The backend's state ----------------------------------------------------------------- */

/* Keys of one attention tile, and the largest scratch of the split-KV partials (floats). */
#define CAIRN__ATTN_TILE 32
#define CAIRN__ATTN_PART_FLOATS ((size_t)4 << 20)
/* A step whose positions are all below this many takes attention's one-block form when it is
 * on (every key of a (token, KV head) in one block at once, no splits, no merge: attention.cu). */
#define CAIRN__ATTN_SHORT 128

/* A step of at most this many tokens runs the matrix products as GEMV from the quantized
 * blocks (in passes of CAIRN__GEMV_TOKENS tokens); more tokens go to cuBLAS over tiles
 * dequantized to BF16. Not yet measured on a GPU: a first guess at where the tile
 * dequantization (about 5 bytes a weight moved) costs less than repeated GEMV passes. */
#define CAIRN__GEMV_TOKENS 8
#define CAIRN__GEMV_MAX_TOKENS 16
/* The float types (BF16, F32) leave the GEMV for cuBLAS sooner: above this many tokens. */
#define CAIRN__GEMV_FLOAT_MAX_TOKENS 2

/* Elements of a dequantized weight tile for the cuBLAS path (BF16: 64 MiB). A build may set a
 * smaller one to check the tiling with small matrices. */
#ifndef CAIRN__WTILE_ELEMS
#define CAIRN__WTILE_ELEMS ((size_t)32 << 20)
#endif

/* Runs of at least this many consecutive positions of one sequence in a step attend through
 * cuBLAS (attention.cu), in a scratch of CAIRN__PF_BYTES. */
#define CAIRN__RUN_MIN 16

/* A pass of this many tokens or more that may yield waits for each layer before queueing the
 * next (backend_cuda.cu, layer_done); a shorter one keeps one layer queued ahead. */
#define CAIRN__PACE_CLOSE_TOKENS 1024

#ifndef CAIRN__PF_BYTES /* a build may set a smaller one to check runs taken in several passes */
#define CAIRN__PF_BYTES ((size_t)64 << 20)
#endif

/* Bytes of the logits rows produced at once before they are copied to the host. */
#define CAIRN__LOGITS_BYTES ((size_t)256 << 20)

/* ---- Graphs (graph.cu) ------------------------------------------------------------------ */

/* One stage call of a step, as graph.cu records it (arguments by value; padding zeroed, so
 * that two calls compare with memcmp). */
enum {
    CAIRN__ST_EMBED,
    CAIRN__ST_RMSNORM,
    CAIRN__ST_MATMUL,
    CAIRN__ST_QKV,
    CAIRN__ST_ATTN,
    CAIRN__ST_ADD_NORM,
    CAIRN__ST_GATED,
    CAIRN__ST_LOGITS,
};
#define CAIRN__CALL_MATS 8

typedef struct cairn__call {
    int stage;
    union {
        struct { const cairn_bmat *emb; float scale; float *x; } embed;
        struct { float *out; const float *x, *w; int rows, n; float eps; } rmsnorm;
        struct {
            const cairn_bmat *w[CAIRN__CALL_MATS];
            float *y[CAIRN__CALL_MATS];
            const float *x;
            int n_w;
        } matmul;
        struct { cairn_bqkv p; cairn_bkv kv; float *q, *k, *v; } qkv;
        struct { cairn_battn p; cairn_bkv kv; const float *q; float *out; } attn;
        struct { float *x, *a, *h; const float *post, *next; int n; float eps; } add_norm;
        struct { float *a; const float *b; int n, act; } gated;
        struct { const cairn_bmat *w; const float *norm; float *x; int n; float eps; } logits;
    } u;
} cairn__call;

/* What makes two steps the same shape (and the batch's device copy where the graph reads it). */
typedef struct cairn__gkey {
    int n_tokens, n_seqs, n_groups, max_table, n_out;
    int short_ctx; /* every token's keys fit attention's one-block form (CAIRN__ATTN_SHORT) */
    const int32_t *d_batch;
} cairn__gkey;

typedef struct cairn__graph {
    cairn__gkey key;
    cudaGraphExec_t exec; /* NULL: a free slot */
    cairn__call *calls;
    int n_calls;
    uint64_t used;
} cairn__graph;

#define CAIRN__GRAPHS 8
enum { CAIRN__G_DIRECT, CAIRN__G_CAPTURE, CAIRN__G_REPLAY };

typedef struct cairn__cuda {
    cairn_backend base;
    int device;
    int n_sm;
    size_t smem_optin; /* largest dynamic shared memory a block may opt in to */
    cudaStream_t stream;
    cublasHandle_t blas;
    char desc[256];

    /* What the loaded matrices need of the scratch (reserve reads these). */
    int64_t mm_cols;  /* widest matrix of matmul / logits */
    int64_t mm_elems; /* largest rows x cols of matmul / logits */
    int64_t lg_cols, lg_rows; /* the logits matrices */

    /* Scratch, sized by reserve (each with the bytes it holds). */
    int max_tokens, max_ctx, group;
    int64_t cap_cols;       /* act_q / xbf hold max_tokens rows of this many values */
    int8_t *act_q;          /* quantized activations: token-major rows of cap_cols */
    float2 *act_ds;         /* per 32 values: (scale, scale * sum of the quants) */
    __nv_bfloat16 *xbf;     /* BF16 activations for cuBLAS, or NULL (few tokens only) */
    __nv_bfloat16 *wtile;   /* a dequantized weight tile, or NULL */
    __nv_bfloat16 *wtile2;  /* the second tile when tiles overlap (tile_overlap), or NULL */
    float *lrows;           /* logits: the normalised rows, max_tokens x lrows_cols */
    float *lout;            /* logits: lout_tokens rows of lg_rows before the host copy */
    float *apart;           /* attention partials: CAIRN__ATTN_PART_FLOATS */
    void *pf;               /* prefill runs' attention scratch (CAIRN__PF_BYTES), or NULL */
    size_t act_q_bytes, act_ds_bytes, xbf_bytes, wtile_bytes, wtile2_bytes, lrows_bytes, lout_bytes,
        apart_bytes, pf_bytes;
    int64_t lrows_cols;
    int lout_tokens;
    cairn_cand *d_pick, *h_pick; /* logits_pick's entries, pick_cap of them (h_pick pinned) */
    size_t pick_cap;

    /* Repacking weights: pinned host staging. */
    uint8_t *stage;
    size_t stage_bytes;

    /* The step: host copy (pinned) and device copy of tokens, pos, slot, the logits rows and
     * the block tables, int32 each. */
    int n_tokens, n_seqs, n_groups, max_table, n_out;
    int32_t *h_batch, *d_batch;
    size_t batch_cap; /* int32s in each */
    cudaEvent_t batch_copied; /* the last batch copy out of h_batch finished */
    bool batch_pending;
    bool have_batch;
    bool has_runs; /* the step holds a run of CAIRN__RUN_MIN+ positions of one sequence */
    int max_pos;   /* the step's largest position: no token sees more than max_pos + 1 keys */

    /* layer_done's marks in the queue: the step's n_pace-th call recorded pace[n_pace & 1];
     * steps of CAIRN__PACE_CLOSE_TOKENS or more wait for each layer before the next. */
    cudaEvent_t pace[2];
    int n_pace;

    /* CUDA graphs of repeated step shapes (graph.cu). */
    bool graphs_on;
    int gmode;            /* CAIRN__G_*: how this step's stage calls run */
    cairn__call *rec;     /* this step's calls so far */
    int n_rec, cap_rec;
    int replay;           /* the graph being replayed */
    cairn__gkey cur_key, last_key;
    bool last_done;       /* the last step ran whole, to its logits, without a break */
    cairn__graph graphs[CAIRN__GRAPHS];
    uint64_t gclock;
    FILE *glog;           /* CAIRN_CUDA_GRAPH_LOG: a line per step and per graph event */
    void *blas_ws;        /* cuBLAS's workspace (captured products must not allocate) */
    size_t blas_ws_bytes;

    /* What act_q / act_ds hold: the quantized form of q8_tokens rows of q8_cols at q8_src, as
     * the stage that wrote q8_src (norms, gated) or a product's own quantization left it; a
     * product of those rows then skips its quantize_q8 launch. NULL: nothing known. Every
     * stage and memory operation that may write device memory forgets it first. */
    const float *q8_src;
    int q8_tokens;
    int64_t q8_cols;
    bool q8_fuse;   /* CAIRN_CUDA_Q8_FUSE=0 turns the stages' quantized rows off */
    bool gemv_sets; /* CAIRN_CUDA_GEMV_SETS=0: one matrix a GEMV launch */
    bool pdl;       /* GEMVs start beside the kernel before them (cairn__pdl_wait), on
                       compute capability 9.0 and later unless CAIRN_CUDA_PDL=0 */
    bool pdl_all;   /* and so do the stages between them (the norms, qkv, attention, the
                       gated activation), unless CAIRN_CUDA_PDL=gemv */
    int attn_split_max; /* the most splits of a token's keys (CAIRN_CUDA_ATTN_SPLITS=1-64;
                           default 64) */
    bool attn_short;    /* attention's one-block form for short steps (CAIRN_CUDA_ATTN_SHORT=1;
                           off by default until it has been measured on a GPU) */
    /* CAIRN_CUDA_SKIP=qkv,attn,add_norm,gated: a switch for measuring what each stage costs
     * inside a step; the named stages launch nothing, so the results are wrong (a line on
     * stderr says so at open). A bit per CAIRN__ST_*. */
    unsigned skip;
    /* The cuBLAS path's weight tiles: their elements (CAIRN_CUDA_WTILE_MIB sets the bytes of
     * one), and whether a tile is decoded on `side` while cuBLAS multiplies the one before it
     * (two tiles then; CAIRN_CUDA_TILE_OVERLAP=0 turns it off; tile_ev: the call's start,
     * each tile's decoding done, each tile's product done). */
    size_t wtile_elems;
    bool tile_overlap;
    cudaStream_t side;
    cudaEvent_t tile_ev[5];
    /* The BF16 cache (CAIRN_CUDA_BF16_CACHE=0 turns it off): reserve decodes each loaded
     * matrix that takes tiles whole, in load order, while at least half the GPU's memory stays
     * free after it; a product of many tokens then multiplies that copy, not tiles. mats: the
     * loaded matrices, in load order. */
    bool bf16_cache;
    bool bf16_cache_told; /* its log line went out (what it held, what it left to the tiles) */
    cairn__cmat **mats;
    int n_mats, cap_mats;
} cairn__cuda;

/* Decodes all of m into m->bf (allocated by the caller) on the stream (matmul.cu). */
int cairn__cuda_decode_whole(cairn__cuda *c, cairn__cmat *m, cairn_error *err);

static inline cairn__cuda *cairn__cu(cairn_backend *be) { return (cairn__cuda *)be; }

static inline void cairn__cuda_q8_forget(cairn__cuda *c) { c->q8_src = NULL; }

static inline void cairn__cuda_q8_note(cairn__cuda *c, const float *src, int n_tok, int64_t cols)
{
    c->q8_src = src;
    c->q8_tokens = n_tok;
    c->q8_cols = cols;
}

/* Whether a stage writing n_tok rows of cols values should leave their quantized form in the
 * scratch too: rows a GEMV will read (few tokens), in blocks of 32, inside the scratch. */
static inline bool cairn__cuda_q8_fits(const cairn__cuda *c, int n_tok, int64_t cols)
{
    return c->q8_fuse && c->act_q && n_tok <= CAIRN__GEMV_MAX_TOKENS && n_tok <= c->max_tokens &&
           cols % 32 == 0 && cols <= c->cap_cols;
}

/* The step's arrays inside h_batch / d_batch. */
static inline const int32_t *cairn__b_tokens(const int32_t *base, int n) { (void)n; return base; }
static inline const int32_t *cairn__b_pos(const int32_t *base, int n) { return base + n; }
static inline const int32_t *cairn__b_slot(const int32_t *base, int n) { return base + 2 * n; }
static inline const int32_t *cairn__b_out(const int32_t *base, int n) { return base + 3 * n; }
static inline const int32_t *cairn__b_tables(const int32_t *base, int n) { return base + 4 * n; }

/* Makes the backend's device current on the calling thread. */
int cairn__cuda_enter(cairn__cuda *c, cairn_error *err);

/* cudaMalloc that names what it was for and, past free memory, returns CAIRN_ENOMEM with the
 * bytes asked and the bytes free. */
int cairn__cuda_malloc(cairn__cuda *c, void **out, size_t bytes, const char *what,
                       cairn_error *err);

/* A step must have been set, and reserve must cover it. */
int cairn__cuda_need_batch(cairn__cuda *c, const char *stage, cairn_error *err);

/* graph.cu: the table's stage entries (they record, capture or replay, then run the stages
 * below), and the hooks of the other entries: flush ends a step's graph part before anything
 * that is not a stage (its recorded calls run one by one); invalidate drops every graph (their
 * buffers may be gone); step_begin picks how a new step's calls run. */
int cairn__graph_flush(cairn__cuda *c, cairn_error *err);
void cairn__graph_invalidate(cairn__cuda *c);
int cairn__graph_step_begin(cairn__cuda *c, cairn_error *err);
void cairn__graph_close(cairn__cuda *c);
int cairn__graph_embed(cairn_backend *be, const cairn_bmat *emb, float scale, float *x,
                       cairn_error *err);
int cairn__graph_rmsnorm(cairn_backend *be, float *out, const float *x, const float *w,
                         int rows, int n, float eps, cairn_error *err);
int cairn__graph_matmul(cairn_backend *be, const cairn_bmat *const *w, int n_w, const float *x,
                        float *const *y, cairn_error *err);
int cairn__graph_qkv(cairn_backend *be, const cairn_bqkv *p, float *q, float *k, float *v,
                     cairn_error *err);
int cairn__graph_attention(cairn_backend *be, const cairn_battn *p, const float *q, float *out,
                           cairn_error *err);
int cairn__graph_add_norm(cairn_backend *be, float *x, float *a, const float *post,
                          const float *next, float *h, int n, float eps, cairn_error *err);
int cairn__graph_gated(cairn_backend *be, float *a, const float *b, int n, int act,
                       cairn_error *err);
int cairn__graph_logits_pick(cairn_backend *be, const cairn_bmat *w, const float *norm,
                             float eps, float *x, int n, const cairn_bpick *picks,
                             cairn_error *err);
int cairn__graph_logits(cairn_backend *be, const cairn_bmat *w, const float *norm, float eps,
                        float *x, int n, float *out_host, cairn_error *err);

/* ---- The stages (one .cu per family) --------------------------------------------------------- */

/* matmul.cu: y[i] (n_tok rows of w[i]->rows, token-major) = w[i] x (n_tok rows of w[i]->cols). */
int cairn__cuda_matmul(cairn_backend *be, const cairn_bmat *const *w, int n_w, const float *x,
                       float *const *y, cairn_error *err);
/* picks NULL: whole rows into out_host; else each row as its pick asks (sample.cu), kmax
 * being cairn__cuda_pick_kmax's for them (0 without). */
int cairn__cuda_logits(cairn_backend *be, const cairn_bmat *w, const float *norm, float eps,
                       float *x, int n, float *out_host, const cairn_bpick *picks, int kmax,
                       cairn_error *err);
/* The logits rows into c->lout without the copy to the host: n_out <= lout_tokens only. */
int cairn__cuda_logits_compute(cairn__cuda *c, const cairn_bmat *w, const float *norm,
                               float eps, const float *x, int n, cairn_error *err);

/* sample.cu: the largest k of picks[0..n) (checked: 0..CAIRN_BACKEND_MAX_PICK, host memory
 * given), or an error; logits rows [j0, j0 + nj) of the step, in c->lout (rows of V), queued
 * on their way back: whole into out_host + j0 V (picks NULL), or as picks[j0..] ask; once the
 * stream has finished, rows_done hands each pick its entries (nothing without picks). */
int cairn__cuda_pick_kmax(const cairn_bpick *picks, int n, cairn_error *err);
int cairn__cuda_rows_out(cairn__cuda *c, float *out_host, const cairn_bpick *picks, int j0,
                         int nj, int64_t V, int kmax, cairn_error *err);
void cairn__cuda_rows_done(cairn__cuda *c, const cairn_bpick *picks, int n, int kmax);

/* norm_rope.cu */
int cairn__cuda_rmsnorm(cairn_backend *be, float *out, const float *x, const float *w, int rows,
                        int n, float eps, cairn_error *err);
int cairn__cuda_add_norm(cairn_backend *be, float *x, float *a, const float *post,
                         const float *next, float *h, int n, float eps, cairn_error *err);
int cairn__cuda_qkv(cairn_backend *be, const cairn_bqkv *p, float *q, float *k, float *v,
                    cairn_error *err);
/* Launches out[r] = rmsnorm(x[rows[r]]) * w for r < n_rows (rows NULL: r itself). */
int cairn__cuda_norm_rows(cairn__cuda *c, float *out, const float *x, const int32_t *rows,
                          const float *w, int n_rows, int n, float eps, cairn_error *err);

/* attention.cu (init: once at open) */
int cairn__cuda_attention_init(cairn__cuda *c, cairn_error *err);
int cairn__cuda_attention(cairn_backend *be, const cairn_battn *p, const float *q, float *out,
                          cairn_error *err);

/* elementwise.cu */
int cairn__cuda_gated(cairn_backend *be, float *a, const float *b, int n, int act,
                      cairn_error *err);
int cairn__cuda_embed(cairn_backend *be, const cairn_bmat *emb, float scale, float *x,
                      cairn_error *err);
/* The host-side check of embed: every token a row of emb. */
int cairn__cuda_embed_check(cairn__cuda *c, const cairn_bmat *emb, cairn_error *err);

/* ---- Device helpers ---------------------------------------------------------------------- */

static __device__ __forceinline__ float cairn__h2f(uint16_t h)
{
    return __half2float(__ushort_as_half(h));
}

static __device__ __forceinline__ float cairn__bf2f(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

/*
 * Programmatic dependent launch (compute capability 9.0 on; CUDA programming guide, "Programmatic
 * Dependent Launch and Synchronization"). At batch 1 a GEMV streams a layer's matrix in
 * microseconds, and a kernel's start (launch, the first wave's first loads) is a visible part
 * of that. So a kernel whose output a GEMV reads calls cairn__pdl_trigger as it starts, which
 * lets a GEMV launched with the programmatic-serialization attribute start beside it; the GEMV
 * reads its first weights (constant through a step), then cairn__pdl_wait blocks until the
 * kernel before it has finished and its writes are visible, and only then does it read its
 * activations or write anything. For a kernel launched without the attribute the wait returns
 * at once, and a trigger with no such kernel after it does nothing. Elsewhere (older GPUs, the
 * emulator) both are empty.
 */
static __device__ __forceinline__ void cairn__pdl_trigger(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

static __device__ __forceinline__ void cairn__pdl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* The start of a stage between GEMVs (a norm, qkv, attention, the gated activation, the
 * activations' quantization): the kernel after it may start beside it (cairn__launch), and it
 * may itself have started beside the one before, so it waits before it touches memory. */
static __device__ __forceinline__ void cairn__pdl_stage(void)
{
    cairn__pdl_trigger();
    cairn__pdl_wait();
}

/* kern<<<grid, block, smem, st>>>(args), with the programmatic-serialization attribute when
 * pdl: the kernel may then start beside the one before it on st, so it must call
 * cairn__pdl_wait before it reads or writes anything a kernel before it uses. Its errors reach
 * the caller's CU_LAUNCHED through cudaGetLastError, as a triple-chevron launch's do. */
template <class... P, class... A>
static inline void cairn__launch(bool pdl, void (*kern)(P...), dim3 grid, dim3 block, size_t smem,
                                 cudaStream_t st, A... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = pdl ? 1 : 0;
    (void)cudaLaunchKernelEx(&cfg, kern, args...);
}

static __device__ __forceinline__ float cairn__warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float cairn__warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* The sum of v over the block (blockDim.x a multiple of 32, at most 1024); red holds 32 floats.
 * Every thread gets the sum. Ends with a barrier, so red may be reused right after. */
static __device__ __forceinline__ float cairn__block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cairn__warp_sum(v);
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    float s = lane < nw ? red[lane] : 0.0f;
    s = cairn__warp_sum(s);
    __syncthreads();
    return s;
}

/*
 * Activations quantized for the GEMV, in blocks of 32 values: d = amax / 127 (kept at F16
 * precision), q = round(x * 127 / amax) to nearest even, and (d, d times the sum of the quants)
 * into ds for the weight formats with an offset or a min. Two shapes of the same arithmetic:
 *   cairn__q8_lane: a warp's 32 lanes hold one value each of block blk;
 *   cairn__q8_quad: groups of 8 lanes hold 4 consecutive values each (value index 4 i of the
 *     row for the lane's float4 index i), a group a block.
 * Every lane of the warp must call (the shuffles take the whole warp).
 */
static __device__ __forceinline__ void cairn__q8_lane(float v, int8_t *__restrict__ q,
                                                      float2 *__restrict__ ds, int64_t blk)
{
    const int lane = threadIdx.x & 31;
    const float amax = cairn__warp_max(fabsf(v));
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    const int qv = __float2int_rn(v * id);
    q[blk * 32 + lane] = (int8_t)qv;
    int s = qv;
    for (int o = 16; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
        const float d = __half2float(__float2half_rn(amax / 127.0f));
        ds[blk] = make_float2(d, d * (float)s);
    }
}

static __device__ __forceinline__ void cairn__q8_quad(float4 v, int8_t *__restrict__ q,
                                                      float2 *__restrict__ ds, int64_t i,
                                                      bool store)
{
    float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
    for (int o = 4; o > 0; o >>= 1)
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    const int q0 = __float2int_rn(v.x * id), q1 = __float2int_rn(v.y * id);
    const int q2 = __float2int_rn(v.z * id), q3 = __float2int_rn(v.w * id);
    int s = q0 + q1 + q2 + q3;
    for (int o = 4; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if (!store)
        return;
    ((uint32_t *)q)[i] = (uint32_t)(q0 & 0xFF) | (uint32_t)(q1 & 0xFF) << 8 |
                         (uint32_t)(q2 & 0xFF) << 16 | (uint32_t)(q3 & 0xFF) << 24;
    if ((threadIdx.x & 7) == 0) {
        const float d = __half2float(__float2half_rn(amax / 127.0f));
        ds[i / 8] = make_float2(d, d * (float)s);
    }
}

/* Q4_K's 6-bit scale and min of sub-block j (0..7) from its 12 packed bytes. */
static __device__ __forceinline__ void cairn__q4k_sm(const uint8_t *s, int j, int *sc, int *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Value (row, col) of a matrix, decoded as proto/gguf_quant.c decodes it (same formulas, same
 * float operations). For row lookups and the dequantized tiles; the products use the
 * integer paths in matmul.cu. */
static __device__ __forceinline__ float cairn__deq1(const cairn__mat_dev &m, int64_t row,
                                                    int64_t col, uint32_t type)
{
    switch (type) {
    case CAIRN_GGUF_F32:
        return ((const float *)m.q)[row * m.cols + col];
    case CAIRN_GGUF_F16:
        return cairn__h2f(((const uint16_t *)m.q)[row * m.cols + col]);
    case CAIRN_GGUF_BF16:
        return cairn__bf2f(((const uint16_t *)m.q)[row * m.cols + col]);
    case CAIRN_GGUF_Q8_0: {
        int64_t b = row * m.nb + col / 32;
        return cairn__h2f(m.d[b]) * (float)(int8_t)*cairn__q_at(m, row, col);
    }
    case CAIRN_GGUF_Q4_0:
    case CAIRN_GGUF_Q4_1:
    case CAIRN_GGUF_Q5_0: {
        int64_t b = row * m.nb + col / 32;
        int j = (int)(col % 32);
        uint8_t byte = *cairn__q_at(m, row, col / 32 * 16 + (j & 15));
        int v = j < 16 ? byte & 0xF : byte >> 4;
        if (type == CAIRN_GGUF_Q4_0)
            return cairn__h2f(m.d[b]) * (float)(v - 8);
        if (type == CAIRN_GGUF_Q4_1)
            return cairn__h2f(m.d[2 * b]) * (float)v + cairn__h2f(m.d[2 * b + 1]);
        v |= (int)((m.qh[b] >> j) & 1) << 4;
        return cairn__h2f(m.d[b]) * (float)(v - 16);
    }
    case CAIRN_GGUF_Q4_K: {
        const int64_t o = col / 256 * 144; /* the block's header, then its quants */
        const uint8_t *blk = cairn__q_at(m, row, o);
        int i = (int)(col % 256), c = i / 64, w = i % 64, sub = 2 * c + (w >= 32), sc, mn;
        cairn__q4k_sm(blk + 4, sub, &sc, &mn);
        uint8_t byte = *cairn__q_at(m, row, o + 16 + 32 * c + (w & 31));
        int v = w < 32 ? byte & 0xF : byte >> 4;
        float d = cairn__h2f((uint16_t)(blk[0] | blk[1] << 8));
        float dmin = cairn__h2f((uint16_t)(blk[2] | blk[3] << 8));
        return d * (float)sc * (float)v - dmin * (float)mn;
    }
    case CAIRN_GGUF_Q6_K: {
        int64_t b = row * m.nb + col / 256;
        const int64_t o = col / 256 * 208; /* ql, qh, scales */
        int i = (int)(col % 256), hh = i / 128, r = i % 128, g = r / 32, l = r % 32;
        uint8_t lb = *cairn__q_at(m, row, o + 64 * hh + (g & 1) * 32 + l);
        int lo = g < 2 ? lb & 0xF : lb >> 4;
        int hi = (*cairn__q_at(m, row, o + 128 + 32 * hh + l) >> (2 * g)) & 3;
        int sc = (int8_t)*cairn__q_at(m, row, o + 192 + 8 * hh + l / 16 + 2 * g);
        return (cairn__h2f(m.d[b]) * (float)sc) * (float)((lo | hi << 4) - 32);
    }
    default:
        return 0.0f; /* mat_load refuses other types */
    }
}

#endif
