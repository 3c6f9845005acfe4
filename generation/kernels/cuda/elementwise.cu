/*
 * generation/kernels/cuda/elementwise.cu — the gated activation and the embedding lookup.
 *
 * GELU is evaluated at half precision as the CPU backend (and ggml) do: the input rounded to
 * F16, GELU-tanh in float, the result rounded to F16, |x| >= 10 passed through (or 0), so the
 * two backends agree to float rounding of tanh. SiLU is x / (1 + e^-x) in float.
 */
#include "generation/kernels/cuda/common.cuh"

#include <math.h>

static __device__ __forceinline__ float f16_round(float x)
{
    return __half2float(__float2half_rn(x));
}

/* 0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))), the tanh approximation of GELU. */
static __device__ __forceinline__ float gelu_f16(float x)
{
    if (x <= -10.0f)
        return 0.0f;
    if (x >= 10.0f)
        return x;
    const float k = 0.79788456080286535587989211986876f; /* sqrt(2/pi) */
    const float h = f16_round(x);
    return f16_round(0.5f * h * (1.0f + tanhf(k * h * fmaf(0.044715f * h, h, 1.0f))));
}

__global__ void gated_rows(float *__restrict__ a, const float *__restrict__ b, int64_t n,
                           int gelu)
{
    cairn__pdl_stage();
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float x = a[i];
        const float g = gelu ? gelu_f16(x) : x / (1.0f + expf(-x));
        a[i] = g * b[i];
    }
}

/* gated_rows for rows of n % 32 == 0 that a GEMV reads next: a warp a block of 32 values, which
 * it also leaves quantized in q / ds (cairn__q8_lane; the rows are contiguous, so block blk of
 * the whole step is block blk of the scratch). */
__global__ void gated_rows_q8(float *__restrict__ a, const float *__restrict__ b,
                              int64_t n_blocks, int gelu, int8_t *__restrict__ q,
                              float2 *__restrict__ ds)
{
    cairn__pdl_stage();
    const int64_t blk = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (blk >= n_blocks)
        return; /* warp-uniform */
    const int64_t i = blk * 32 + (threadIdx.x & 31);
    const float x = a[i];
    const float g = (gelu ? gelu_f16(x) : x / (1.0f + expf(-x))) * b[i];
    a[i] = g;
    cairn__q8_lane(g, q, ds, blk);
}

int cairn__cuda_gated(cairn_backend *be, float *a, const float *b, int n, int act,
                      cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    int rc = cairn__cuda_need_batch(c, "gated", err);
    if (rc || (rc = cairn__cuda_enter(c, err)))
        return rc;
    if (n < 1 || (act != CAIRN_ACT_SILU && act != CAIRN_ACT_GELU_TANH))
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: gated over rows of %d, "
                            "activation %d", n, act);
    cairn__cuda_q8_forget(c);
    const int64_t total = (int64_t)c->n_tokens * n;
    if (cairn__cuda_q8_fits(c, c->n_tokens, n)) { /* a is the down product's input */
        const int64_t nb = total / 32;
        cairn__launch(c->pdl_all, gated_rows_q8, dim3((unsigned)((nb + 7) / 8)), dim3(256), 0,
                      c->stream, a, b, nb, act == CAIRN_ACT_GELU_TANH, c->act_q, c->act_ds);
        CU_LAUNCHED(err, "gated_rows_q8");
        cairn__cuda_q8_note(c, a, c->n_tokens, n);
        return 0;
    }
    int64_t blocks = (total + 255) / 256;
    if (blocks > 65535 * 8)
        blocks = 65535 * 8;
    cairn__launch(c->pdl_all, gated_rows, dim3((unsigned)blocks), dim3(256), 0, c->stream, a, b,
                  total, act == CAIRN_ACT_GELU_TANH);
    CU_LAUNCHED(err, "gated_rows");
    return 0;
}

/* Block t: x[t] = row tokens[t] of the matrix, times scale. */
template <uint32_t TYPE>
__global__ void embed_rows(cairn__mat_dev m, const int32_t *__restrict__ tokens, float scale,
                           float *__restrict__ x)
{
    const int64_t t = blockIdx.x, row = tokens[t];
    for (int64_t i = threadIdx.x; i < m.cols; i += blockDim.x)
        x[t * m.cols + i] = cairn__deq1(m, row, i, TYPE) * scale;
}

int cairn__cuda_embed_check(cairn__cuda *c, const cairn_bmat *emb, cairn_error *err)
{
    const cairn__cmat *m = (const cairn__cmat *)emb->priv;
    if (!m)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: embed from a matrix not loaded");
    /* A token past the table would read past the matrix: check on the host copy. */
    const int32_t *tok = cairn__b_tokens(c->h_batch, c->n_tokens);
    for (int t = 0; t < c->n_tokens; t++)
        if (tok[t] < 0 || tok[t] >= m->rows)
            return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: token %d at batch index %d is "
                                "not a row of the embeddings (%lld)", tok[t], t,
                                (long long)m->rows);
    return 0;
}

int cairn__cuda_embed(cairn_backend *be, const cairn_bmat *emb, float scale, float *x,
                      cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    cairn__cuda_q8_forget(c); /* it may write where q8_src points */
    int rc = cairn__cuda_need_batch(c, "embed", err);
    if (rc || (rc = cairn__cuda_enter(c, err)) || (rc = cairn__cuda_embed_check(c, emb, err)))
        return rc;
    const cairn__cmat *m = (const cairn__cmat *)emb->priv;
    const cairn__mat_dev md = cairn__mat_dev_of(m);
    const int32_t *dt = cairn__b_tokens(c->d_batch, c->n_tokens);
    const unsigned grid = (unsigned)c->n_tokens;
    cudaStream_t s = c->stream;
    switch (m->type) {
    case CAIRN_GGUF_F32: embed_rows<CAIRN_GGUF_F32><<<grid, 256, 0, s>>>(md, dt, scale, x); break;
    case CAIRN_GGUF_F16: embed_rows<CAIRN_GGUF_F16><<<grid, 256, 0, s>>>(md, dt, scale, x); break;
    case CAIRN_GGUF_BF16: embed_rows<CAIRN_GGUF_BF16><<<grid, 256, 0, s>>>(md, dt, scale, x); break;
    case CAIRN_GGUF_Q8_0: embed_rows<CAIRN_GGUF_Q8_0><<<grid, 256, 0, s>>>(md, dt, scale, x); break;
    case CAIRN_GGUF_Q4_0: embed_rows<CAIRN_GGUF_Q4_0><<<grid, 256, 0, s>>>(md, dt, scale, x); break;
    case CAIRN_GGUF_Q4_1: embed_rows<CAIRN_GGUF_Q4_1><<<grid, 256, 0, s>>>(md, dt, scale, x); break;
    case CAIRN_GGUF_Q5_0: embed_rows<CAIRN_GGUF_Q5_0><<<grid, 256, 0, s>>>(md, dt, scale, x); break;
    case CAIRN_GGUF_Q4_K: embed_rows<CAIRN_GGUF_Q4_K><<<grid, 256, 0, s>>>(md, dt, scale, x); break;
    case CAIRN_GGUF_Q6_K: embed_rows<CAIRN_GGUF_Q6_K><<<grid, 256, 0, s>>>(md, dt, scale, x); break;
    default:
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "cuda backend: no row decoder for type %u",
                            m->type);
    }
    CU_LAUNCHED(err, "embed_rows");
    return 0;
}
