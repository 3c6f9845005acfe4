/*
 * retrieval/cuda/embed_cuda.cu — the BERT encoder's forward pass on one GPU (embed_cuda.h).
 *
 * The same computation as embed.c's CPU path, stage for stage, over the same ragged packed
 * batch (sequences back to back, row t one token, no padding rows):
 *   emb_ln      x = LayerNorm(tok[id] + pos[p] + type[0])           one warp per token
 *   per layer:
 *     cuBLAS    qkv = x W_qkv^T                                      [ntok x 3H]
 *     attention ctx = softmax((q + b_q)(k + b_k)^T / sqrt(hd)) (v + b_v)   a block per
 *               (head, sequence) over the sequence's own tokens: no mask, no padding
 *     cuBLAS    tmp = ctx W_o^T;  add_ln: x = LayerNorm(x + tmp + b_o)
 *     cuBLAS    ff = x W_up^T;    bias_gelu: ff = GELU(ff + b_up)   (erf form, as BERT)
 *     cuBLAS    tmp = ff W_down^T; add_ln: x = LayerNorm(x + tmp + b_down)
 *   pool        mean over each sequence's rows, then L2 normalisation   a block per sequence
 * Biases are added by the stage after each projection, as on the CPU, so the GEMMs are plain
 * C = A W^T. Weights are F32 in one device arena, uploaded once at open; the projections run
 * as cublasGemmEx in FP32 (CUBLAS_COMPUTE_32F: no TF32), so a vector differs from the CPU's
 * only by the order of the sums (the unit test bounds it). Like the rest of retrieval/cuda this
 * file is built with --fmad=false.
 *
 * Memory: every device buffer and the two page-locked staging buffers (the batch's ids,
 * positions and sequence table in; the pooled vectors out) are sized at open for max_tokens /
 * max_batch; a forward allocates nothing. One stream, owned here, carries the upload, every
 * kernel, the GEMMs (the cuBLAS handle is bound to it) and the download; the host waits once,
 * at the end (also after an error, so that nothing queued outlives the call). Every CUDA and
 * cuBLAS call is checked and returned as CAIRN_EDEVICE (CAIRN_ENOMEM for allocations) naming
 * the call; nothing aborts.
 */
extern "C" {
#include "common/error.h"
}
#include "retrieval/cuda/check.cuh"
#include "retrieval/embed_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LN_WARPS 4        /* tokens per LayerNorm block, one warp each */
#define ATT_THREADS 128   /* 4 warps: each takes every 4th query of its (head, sequence) */
#define POOL_THREADS 128
#define GELU_THREADS 256
#define GELU_BLOCKS 528   /* grid-stride cap: 4 blocks per SM of an H100 */
#define MAX_HD 128        /* head sizes 32, 64, 96, 128: a lane takes hd / 32 of the output */

/* ---- Kernels --------------------------------------------------------------------------------- */

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* row = (row - mean) / sqrt(var + eps) * g + b over n floats, by the calling warp. Two passes
 * (mean, then the squared deviations) as on the CPU; each lane touches only its own elements
 * i = lane (mod 32), so no barrier is needed between the writes and the reads. */
__device__ void warp_layer_norm(float *row, int n, const float *g, const float *b, float eps)
{
    const int lane = threadIdx.x & 31;
    float s = 0.0f;
    for (int i = lane; i < n; i += 32)
        s += row[i];
    const float mean = warp_sum(s) / (float)n;
    float q = 0.0f;
    for (int i = lane; i < n; i += 32) {
        float d = row[i] - mean;
        q += d * d;
    }
    const float inv = 1.0f / sqrtf(warp_sum(q) / (float)n + eps);
    for (int i = lane; i < n; i += 32)
        row[i] = (row[i] - mean) * inv * g[i] + b[i];
}

/* x[t] = LayerNorm(tok[ids[t]] + pos[pos[t]] + type[0]): single-segment input, type 0. */
__global__ void emb_ln(const int *ids, const int *pos, int ntok, int H, const float *tok,
                       const float *posw, const float *typ, const float *g, const float *b,
                       float eps, float *x)
{
    const int t = blockIdx.x * LN_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (t >= ntok)
        return;
    const float *tr = tok + (size_t)ids[t] * H, *pr = posw + (size_t)pos[t] * H;
    float *xr = x + (size_t)t * H;
    for (int i = lane; i < H; i += 32)
        xr[i] = tr[i] + pr[i] + typ[i];
    warp_layer_norm(xr, H, g, b, eps);
}

/* x[t] = LayerNorm(x[t] + y[t] + bias): the residual of either block. */
__global__ void add_ln(float *x, const float *y, const float *bias, const float *g,
                       const float *b, float eps, int ntok, int H)
{
    const int t = blockIdx.x * LN_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (t >= ntok)
        return;
    float *xr = x + (size_t)t * H;
    const float *yr = y + (size_t)t * H;
    for (int i = lane; i < H; i += 32)
        xr[i] += yr[i] + bias[i];
    warp_layer_norm(xr, H, g, b, eps);
}

/* f = GELU(f + b) over n = ntok x FF floats, the exact form: v/2 (1 + erf(v / sqrt 2)). */
__global__ void bias_gelu(float *f, const float *b, int FF, size_t n)
{
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float v = f[i] + b[i % (size_t)FF];
        f[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

/* Shared memory of one attention block for sequences up to tmax tokens: K + b_k [tmax x
 * (hd + 1)] (the odd row stride keeps a warp's 32 keys in 32 banks), V + b_v [tmax x hd], and
 * per warp its scaled query [hd] and its probabilities [tmax]. */
static size_t attn_smem(int tmax, int hd)
{
    return sizeof(float) * ((size_t)tmax * (hd + 1) + (size_t)tmax * hd +
                            (size_t)(ATT_THREADS / 32) * (hd + tmax));
}

/*
 * Scaled dot-product attention (Vaswani et al. 2017) for head blockIdx.x of sequence
 * blockIdx.y over that sequence's own tokens. K and V of the head are staged in shared memory
 * with their biases; each warp then takes queries i = warp (mod 4): lane j scores keys
 * j (mod 32), the warp reduces max and sum, and lane d writes output dims d (mod 32). The
 * arithmetic follows embed.c's attn_tasks: q scaled before the dot products, the probabilities
 * scaled by 1/sum before they weight V.
 */
__global__ void attention(const float *qkv, const float *bias, const int *start, const int *len,
                          int H, int hd, int tmax, float scale, float *ctx)
{
    extern __shared__ float sm[];
    const int h = blockIdx.x, s = blockIdx.y, T = len[s], t0 = start[s], H3 = 3 * H;
    const int ks = hd + 1, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *K = sm, *V = K + (size_t)tmax * ks;
    float *q = V + (size_t)tmax * hd + (size_t)warp * (hd + tmax), *p = q + hd;
    const float *bq = bias + h * hd, *bk = bq + H, *bv = bq + 2 * H;
    for (int idx = threadIdx.x; idx < T * hd; idx += blockDim.x) {
        const int j = idx / hd, d = idx % hd;
        const float *row = qkv + (size_t)(t0 + j) * H3 + h * hd;
        K[j * ks + d] = row[H + d] + bk[d];
        V[j * hd + d] = row[2 * H + d] + bv[d];
    }
    __syncthreads();
    for (int i = warp; i < T; i += ATT_THREADS / 32) {
        const float *qr = qkv + (size_t)(t0 + i) * H3 + h * hd;
        for (int d = lane; d < hd; d += 32)
            q[d] = (qr[d] + bq[d]) * scale;
        __syncwarp();
        float mx = -INFINITY;
        for (int j = lane; j < T; j += 32) {
            const float *k = K + j * ks;
            float sc = 0.0f;
            for (int d = 0; d < hd; d++)
                sc += q[d] * k[d];
            p[j] = sc;
            mx = fmaxf(mx, sc);
        }
        mx = warp_max(mx);
        float sum = 0.0f;
        for (int j = lane; j < T; j += 32) {
            float e = expf(p[j] - mx);
            p[j] = e;
            sum += e;
        }
        const float inv = 1.0f / warp_sum(sum);
        __syncwarp(); /* every lane's p[] written before any lane reads them all */
        for (int d = lane; d < hd; d += 32) {
            float o = 0.0f;
            for (int j = 0; j < T; j++)
                o += p[j] * inv * V[j * hd + d];
            ctx[(size_t)(t0 + i) * H + h * hd + d] = o;
        }
        __syncwarp(); /* q[] and p[] read by all before the next query overwrites them */
    }
}

/* out[s] = the mean of sequence s's rows of x, L2-normalised when normalize. */
__global__ void pool(const float *x, const int *start, const int *len, int H, int normalize,
                     float *out)
{
    __shared__ float part[POOL_THREADS / 32];
    __shared__ float norm;
    const int s = blockIdx.x, T = len[s];
    const float *base = x + (size_t)start[s] * H;
    float *o = out + (size_t)s * H;
    float sq = 0.0f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        float a = 0.0f;
        for (int t = 0; t < T; t++)
            a += base[(size_t)t * H + i];
        a /= (float)T;
        o[i] = a;
        sq += a * a;
    }
    sq = warp_sum(sq);
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x >> 5] = sq;
    __syncthreads();
    if (threadIdx.x == 0) {
        float n = 0.0f;
        for (int w = 0; w < POOL_THREADS / 32; w++)
            n += part[w];
        norm = sqrtf(n);
    }
    __syncthreads();
    const float inv = normalize && norm > 0.0f ? 1.0f / norm : 1.0f;
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        o[i] *= inv;
}

/* ---- Host side ------------------------------------------------------------------------------- */

typedef struct {
    const float *qkv_w, *qkv_b, *o_w, *o_b, *ln1_g, *ln1_b;
    const float *up_w, *up_b, *down_w, *down_b, *ln2_g, *ln2_b;
} dlayer; /* device pointers into the weight arena */

struct cairn__embed_cuda {
    int dev;
    int n_layer, H, n_head, hd, FF, max_seq, max_batch, max_tokens, normalize;
    float eps;
    cudaStream_t stream;
    cublasHandle_t blas;
    float *weights;  /* the arena: every tensor, F32 */
    const float *tok, *pos, *typ, *emb_g, *emb_b;
    dlayer *layers;
    float *x, *qkv, *ctx, *tmp, *ff, *out; /* activations [max_tokens x H / 3H / H / H / FF],
                                              pooled vectors [max_batch x H] */
    int *meta;       /* device: a forward's ids [ntok], positions [ntok], starts and lengths */
    int *meta_host;  /* page-locked staging of the same, [2 max_tokens + 2 max_batch] */
    float *out_host; /* page-locked, [max_batch x H] */
};

static int fail(cairn_error *err, const char *call, cudaError_t e)
{
    return cairn__rcuda_fail(err, "embed cuda", call, e);
}

#define CK(call) CAIRN__RCUDA_CHECK("embed cuda", call)

/* A launch is checked by the error it leaves (bad configuration, too much shared memory). */
#define LAUNCHED(name)                                                                           \
    do {                                                                                         \
        cudaError_t e_ = cudaGetLastError();                                                     \
        if (e_ != cudaSuccess)                                                                   \
            return fail(err, "launch of " name, e_);                                             \
    } while (0)

#define BLAS(call, name)                                                                         \
    do {                                                                                         \
        cublasStatus_t s_ = (call);                                                              \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                         \
            return cairn_errorf(err, CAIRN_EDEVICE, "embed cuda: %s: %s", name,                  \
                                cublasGetStatusString(s_));                                      \
    } while (0)

/* C[m x n] = A[m x k] W[n x k]^T, all row-major F32. In cuBLAS's column-major terms C^T =
 * W A^T: W read transposed (lda k), A^T as it lies (ldb k), C^T with ldc n. */
static int linear(cairn__embed_cuda *g, int m, int n, int k, const float *a, const float *w,
                  float *c, int layer, const char *what, cairn_error *err)
{
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s = cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, w,
                                    CUDA_R_32F, k, a, CUDA_R_32F, k, &zero, c, CUDA_R_32F, n,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return cairn_errorf(err, CAIRN_EDEVICE,
                            "embed cuda: cublasGemmEx (layer %d %s, %d x %d x %d): %s", layer,
                            what, m, n, k, cublasGetStatusString(s));
    return 0;
}

extern "C" void cairn__embed_cuda_close(cairn__embed_cuda *g)
{
    if (!g)
        return;
    cudaSetDevice(g->dev);
    if (g->stream)
        cudaStreamSynchronize(g->stream);
    if (g->blas)
        cublasDestroy(g->blas);
    if (g->stream)
        cudaStreamDestroy(g->stream);
    cudaFree(g->weights);
    cudaFree(g->x);
    cudaFree(g->qkv);
    cudaFree(g->ctx);
    cudaFree(g->tmp);
    cudaFree(g->ff);
    cudaFree(g->out);
    cudaFree(g->meta);
    if (g->meta_host)
        cudaFreeHost(g->meta_host);
    if (g->out_host)
        cudaFreeHost(g->out_host);
    (void)cudaGetLastError();
    free(g->layers);
    free(g);
}

/* Copies n floats of src into the arena at *cur (synchronously: open only) and advances it. */
static int put(float **cur, const float *src, size_t n, const float **dst, cairn_error *err)
{
    CK(cudaMemcpy(*cur, src, n * sizeof(float), cudaMemcpyHostToDevice));
    *dst = *cur;
    *cur += n;
    return 0;
}

static int upload(cairn__embed_cuda *g, const cairn__embed_cuda_model *m, cairn_error *err)
{
    const size_t H = (size_t)m->H, FF = (size_t)m->FF;
    const size_t per_layer = 3 * H * H + 3 * H + H * H + H + 2 * H + FF * H + FF + H * FF + H +
                             2 * H;
    const size_t total = (size_t)m->vocab * H + (size_t)m->max_pos * H + H + 2 * H +
                         (size_t)m->n_layer * per_layer;
    CK(cudaMalloc(&g->weights, total * sizeof(float)));
    float *cur = g->weights;
    int rc;
    if ((rc = put(&cur, m->tok_emb, (size_t)m->vocab * H, &g->tok, err)) ||
        (rc = put(&cur, m->pos_emb, (size_t)m->max_pos * H, &g->pos, err)) ||
        (rc = put(&cur, m->type_emb, H, &g->typ, err)) ||
        (rc = put(&cur, m->emb_ln_g, H, &g->emb_g, err)) ||
        (rc = put(&cur, m->emb_ln_b, H, &g->emb_b, err)))
        return rc;
    for (int l = 0; l < m->n_layer; l++) {
        const cairn__embed_cuda_layer *s = &m->layers[l];
        dlayer *d = &g->layers[l];
        if ((rc = put(&cur, s->qkv_w, 3 * H * H, &d->qkv_w, err)) ||
            (rc = put(&cur, s->qkv_b, 3 * H, &d->qkv_b, err)) ||
            (rc = put(&cur, s->o_w, H * H, &d->o_w, err)) ||
            (rc = put(&cur, s->o_b, H, &d->o_b, err)) ||
            (rc = put(&cur, s->ln1_g, H, &d->ln1_g, err)) ||
            (rc = put(&cur, s->ln1_b, H, &d->ln1_b, err)) ||
            (rc = put(&cur, s->up_w, FF * H, &d->up_w, err)) ||
            (rc = put(&cur, s->up_b, FF, &d->up_b, err)) ||
            (rc = put(&cur, s->down_w, H * FF, &d->down_w, err)) ||
            (rc = put(&cur, s->down_b, H, &d->down_b, err)) ||
            (rc = put(&cur, s->ln2_g, H, &d->ln2_g, err)) ||
            (rc = put(&cur, s->ln2_b, H, &d->ln2_b, err)))
            return rc;
    }
    return 0;
}

static int open_device(cairn__embed_cuda *g, const cairn__embed_cuda_model *m, cairn_error *err)
{
    CK(cudaSetDevice(g->dev));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, g->dev));
    const size_t smem = attn_smem(m->max_seq, g->hd);
    if (smem > prop.sharedMemPerBlockOptin)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "embed cuda: attention over %d tokens needs %zu bytes of shared "
                            "memory a block; GPU %d (%s) has %zu",
                            m->max_seq, smem, g->dev, prop.name,
                            (size_t)prop.sharedMemPerBlockOptin);
    CK(cudaFuncSetAttribute(attention, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    CK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    BLAS(cublasCreate(&g->blas), "cublasCreate");
    BLAS(cublasSetStream(g->blas, g->stream), "cublasSetStream");
    int rc = upload(g, m, err);
    if (rc)
        return rc;
    const size_t nt = (size_t)g->max_tokens, H = (size_t)g->H;
    CK(cudaMalloc(&g->x, nt * H * sizeof(float)));
    CK(cudaMalloc(&g->qkv, nt * 3 * H * sizeof(float)));
    CK(cudaMalloc(&g->ctx, nt * H * sizeof(float)));
    CK(cudaMalloc(&g->tmp, nt * H * sizeof(float)));
    CK(cudaMalloc(&g->ff, nt * (size_t)g->FF * sizeof(float)));
    CK(cudaMalloc(&g->out, (size_t)g->max_batch * H * sizeof(float)));
    const size_t meta = (2 * nt + 2 * (size_t)g->max_batch) * sizeof(int);
    CK(cudaMalloc(&g->meta, meta));
    CK(cudaMallocHost((void **)&g->meta_host, meta));
    CK(cudaMallocHost((void **)&g->out_host, (size_t)g->max_batch * H * sizeof(float)));
    return 0;
}

extern "C" int cairn__embed_cuda_open(cairn__embed_cuda **out, int device,
                                      const cairn__embed_cuda_model *m, cairn_error *err)
{
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || device < 0 || device >= count) {
        (void)cudaGetLastError();
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "embed: no GPU %d (%s); embed on the CPU (device -1)", device,
                            e != cudaSuccess ? cudaGetErrorString(e)
                                             : count == 1 ? "1 GPU present"
                                                          : "fewer GPUs present");
    }
    const int hd = m->n_head > 0 ? m->H / m->n_head : 0;
    if (hd < 32 || hd > MAX_HD || hd % 32 != 0 || m->H % m->n_head != 0)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "embed cuda: head size %d (hidden %d / %d heads); the attention "
                            "kernel takes multiples of 32 up to %d",
                            hd, m->H, m->n_head, MAX_HD);
    cairn__embed_cuda *g = (cairn__embed_cuda *)calloc(1, sizeof *g);
    dlayer *layers = (dlayer *)calloc((size_t)m->n_layer, sizeof *layers);
    if (!g || !layers) {
        free(g);
        free(layers);
        return cairn_errorf(err, CAIRN_ENOMEM, "embed cuda: out of memory");
    }
    g->dev = device;
    g->layers = layers;
    g->n_layer = m->n_layer;
    g->H = m->H;
    g->n_head = m->n_head;
    g->hd = hd;
    g->FF = m->FF;
    g->eps = m->eps;
    g->normalize = m->normalize;
    g->max_seq = m->max_seq;
    g->max_batch = m->max_batch;
    g->max_tokens = m->max_tokens;
    int rc = open_device(g, m, err);
    if (rc) {
        cairn__embed_cuda_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

/* Queues the whole forward pass of a packed batch on the stream (see forward below). */
static int enqueue(cairn__embed_cuda *g, const int32_t *ids, const int *start, const int *len,
                   int nseq, int ntok, cairn_error *err)
{
    /* The batch's table in one copy: ids, positions, starts, lengths. */
    int *h_ids = g->meta_host, *h_pos = h_ids + ntok, *h_start = h_pos + ntok,
        *h_len = h_start + nseq;
    int tmax = 1;
    memcpy(h_ids, ids, (size_t)ntok * sizeof(int));
    for (int s = 0; s < nseq; s++) {
        h_start[s] = start[s];
        h_len[s] = len[s];
        tmax = len[s] > tmax ? len[s] : tmax;
        for (int i = 0; i < len[s]; i++)
            h_pos[start[s] + i] = i;
    }
    const int *d_ids = g->meta, *d_pos = d_ids + ntok, *d_start = d_pos + ntok,
              *d_len = d_start + nseq;
    cudaStream_t st = g->stream;
    CK(cudaMemcpyAsync(g->meta, g->meta_host, (2 * (size_t)ntok + 2 * (size_t)nseq) * sizeof(int),
                       cudaMemcpyHostToDevice, st));
    const int H = g->H, FF = g->FF, ln_blocks = (ntok + LN_WARPS - 1) / LN_WARPS;
    emb_ln<<<ln_blocks, LN_WARPS * 32, 0, st>>>(d_ids, d_pos, ntok, H, g->tok, g->pos, g->typ,
                                                 g->emb_g, g->emb_b, g->eps, g->x);
    LAUNCHED("emb_ln");
    const float scale = 1.0f / sqrtf((float)g->hd);
    const size_t nff = (size_t)ntok * FF;
    size_t gelu_blocks = (nff + GELU_THREADS - 1) / GELU_THREADS;
    if (gelu_blocks > GELU_BLOCKS)
        gelu_blocks = GELU_BLOCKS;
    int rc;
    for (int l = 0; l < g->n_layer; l++) {
        const dlayer *L = &g->layers[l];
        if ((rc = linear(g, ntok, 3 * H, H, g->x, L->qkv_w, g->qkv, l, "qkv", err)))
            return rc;
        attention<<<dim3(g->n_head, nseq), ATT_THREADS, attn_smem(tmax, g->hd), st>>>(
            g->qkv, L->qkv_b, d_start, d_len, H, g->hd, tmax, scale, g->ctx);
        LAUNCHED("attention");
        if ((rc = linear(g, ntok, H, H, g->ctx, L->o_w, g->tmp, l, "attn_output", err)))
            return rc;
        add_ln<<<ln_blocks, LN_WARPS * 32, 0, st>>>(g->x, g->tmp, L->o_b, L->ln1_g, L->ln1_b,
                                                     g->eps, ntok, H);
        LAUNCHED("add_ln");
        if ((rc = linear(g, ntok, FF, H, g->x, L->up_w, g->ff, l, "ffn_up", err)))
            return rc;
        bias_gelu<<<(unsigned)gelu_blocks, GELU_THREADS, 0, st>>>(g->ff, L->up_b, FF, nff);
        LAUNCHED("bias_gelu");
        if ((rc = linear(g, ntok, H, FF, g->ff, L->down_w, g->tmp, l, "ffn_down", err)))
            return rc;
        add_ln<<<ln_blocks, LN_WARPS * 32, 0, st>>>(g->x, g->tmp, L->down_b, L->ln2_g,
                                                     L->ln2_b, g->eps, ntok, H);
        LAUNCHED("add_ln");
    }
    pool<<<nseq, POOL_THREADS, 0, st>>>(g->x, d_start, d_len, H, g->normalize, g->out);
    LAUNCHED("pool");
    CK(cudaMemcpyAsync(g->out_host, g->out, (size_t)nseq * H * sizeof(float),
                       cudaMemcpyDeviceToHost, st));
    return 0;
}

extern "C" int cairn__embed_cuda_forward(cairn__embed_cuda *g, const int32_t *ids,
                                         const int *start, const int *len, int nseq, int ntok,
                                         float *out, cairn_error *err)
{
    if (nseq < 1 || nseq > g->max_batch || ntok < 1 || ntok > g->max_tokens)
        return cairn_errorf(err, CAIRN_EINVAL, "embed cuda: %d sequences, %d tokens (at most "
                            "%d, %d)", nseq, ntok, g->max_batch, g->max_tokens);
    CK(cudaSetDevice(g->dev));
    int rc = enqueue(g, ids, start, len, nseq, ntok, err);
    /* Wait even after an error: what was queued reads the staging buffers the next call
     * refills. The first error is the one reported. */
    cudaError_t e = cudaStreamSynchronize(g->stream);
    if (rc)
        return rc;
    if (e != cudaSuccess)
        return fail(err, "cudaStreamSynchronize", e);
    memcpy(out, g->out_host, (size_t)nseq * g->H * sizeof(float));
    return 0;
}
