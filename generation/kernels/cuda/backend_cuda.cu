/*
 * generation/kernels/cuda/backend_cuda.cu — the CUDA backend: its table, device memory,
 * weights, scratch and the step's batch. The stages live in matmul.cu, attention.cu,
 * norm_rope.cu and elementwise.cu.
 *
 * Everything runs on one stream in the order the forward pass calls it; only download,
 * upload and logits wait. A step's batch goes up in one copy from pinned memory (batch_set),
 * so a decode step costs one small transfer besides the logits coming back.
 */
#include "generation/kernels/cuda/common.cuh"

#include <stdlib.h>
#include <string.h>

extern "C" {
#include "common/gpu.h"
#include "common/log.h"
}

/* ---- Errors ---------------------------------------------------------------------------------- */

/* The name of a call from its text: "cudaMemcpyAsync(dst, ...)" -> "cudaMemcpyAsync". */
static int call_name_len(const char *call)
{
    const char *p = strchr(call, '(');
    return p ? (int)(p - call) : (int)strlen(call);
}

int cairn__cuda_fail(cairn_error *err, const char *call, cudaError_t e)
{
    return cairn_errorf(err, CAIRN_EDEVICE, "cuda backend: %.*s: %s (%s)", call_name_len(call),
                        call, cudaGetErrorString(e), cudaGetErrorName(e));
}

int cairn__blas_fail(cairn_error *err, const char *call, cublasStatus_t s)
{
    return cairn_errorf(err, CAIRN_EDEVICE, "cuda backend: %.*s: %s", call_name_len(call), call,
                        cublasGetStatusString(s));
}

int cairn__cuda_enter(cairn__cuda *c, cairn_error *err)
{
    /* One backend per device, each used by its own worker thread: the thread's current
     * device is not ours unless we say so. */
    CU_TRY(err, cudaSetDevice(c->device));
    return 0;
}

int cairn__cuda_malloc(cairn__cuda *c, void **out, size_t bytes, const char *what,
                       cairn_error *err)
{
    *out = NULL;
    cudaError_t e = cudaMalloc(out, bytes ? bytes : 1);
    if (e == cudaSuccess)
        return 0;
    *out = NULL;
    (void)cudaGetLastError(); /* an allocation failure is not sticky; clear it */
    if (e != cudaErrorMemoryAllocation)
        return cairn__cuda_fail(err, "cudaMalloc", e);
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    return cairn_errorf(err, CAIRN_ENOMEM,
                        "cuda backend: %s: %zu bytes (%.1f MiB) do not fit in GPU %d's free "
                        "memory, %zu bytes (%.1f MiB) of %zu",
                        what, bytes, (double)bytes / 1048576.0, c->device, free_b,
                        (double)free_b / 1048576.0, total_b);
}

int cairn__cuda_need_batch(cairn__cuda *c, const char *stage, cairn_error *err)
{
    if (!c->have_batch)
        return cairn_errorf(err, CAIRN_ESTATE, "cuda backend: %s before batch_set", stage);
    return 0;
}

/* ---- Memory ---------------------------------------------------------------------------------- */

static int cu_alloc(cairn_backend *be, size_t bytes, void **out, cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    *out = NULL;
    int rc = cairn__cuda_enter(c, err);
    if (rc || (rc = cairn__graph_flush(c, err)))
        return rc;
    return cairn__cuda_malloc(c, out, bytes, "alloc", err);
}

static void cu_free(cairn_backend *be, void *p)
{
    if (!p)
        return;
    cairn__cuda *c = cairn__cu(be);
    cairn__cuda_q8_forget(c); /* it may write where q8_src points */
    (void)cudaSetDevice(c->device);
    /* Queued work may still use p, and so may a graph. A failure here has nobody to report
     * to. */
    (void)cairn__graph_flush(c, NULL);
    cairn__graph_invalidate(c);
    (void)cudaStreamSynchronize(c->stream);
    (void)cudaFree(p);
}

/* Host memory may be pageable: the copies wait, so that src and dst can be reused at once. */
static int cu_upload(cairn_backend *be, void *dst, const void *src, size_t bytes,
                     cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    cairn__cuda_q8_forget(c); /* it may write where q8_src points */
    int rc = cairn__cuda_enter(c, err);
    if (rc || (rc = cairn__graph_flush(c, err)) || !bytes)
        return rc;
    CU_TRY(err, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    CU_TRY(err, cudaStreamSynchronize(c->stream));
    return 0;
}

static int cu_download(cairn_backend *be, void *dst, const void *src, size_t bytes,
                       cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    int rc = cairn__cuda_enter(c, err);
    if (rc || (rc = cairn__graph_flush(c, err)) || !bytes)
        return rc;
    CU_TRY(err, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    CU_TRY(err, cudaStreamSynchronize(c->stream));
    return 0;
}

static int cu_copy(cairn_backend *be, void *dst, const void *src, size_t bytes,
                   cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    cairn__cuda_q8_forget(c); /* it may write where q8_src points */
    int rc = cairn__cuda_enter(c, err);
    if (rc || (rc = cairn__graph_flush(c, err)) || !bytes)
        return rc;
    CU_TRY(err, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
    return 0;
}

/* ---- Weights --------------------------------------------------------------------------------- */

bool cairn__cuda_type_ok(uint32_t type)
{
    switch (type) {
    case CAIRN_GGUF_F32: case CAIRN_GGUF_F16: case CAIRN_GGUF_BF16: case CAIRN_GGUF_Q8_0:
    case CAIRN_GGUF_Q4_0: case CAIRN_GGUF_Q4_1: case CAIRN_GGUF_Q5_0: case CAIRN_GGUF_Q4_K:
    case CAIRN_GGUF_Q6_K:
        return true;
    default:
        return false;
    }
}

void cairn__plane_bytes(uint32_t type, int64_t cols, size_t *q, size_t *d, size_t *qh)
{
    size_t nb32 = (size_t)cols / 32, nb256 = (size_t)cols / 256;
    *d = *qh = 0;
    switch (type) {
    case CAIRN_GGUF_F32: *q = (size_t)cols * 4; break;
    case CAIRN_GGUF_F16: case CAIRN_GGUF_BF16: *q = (size_t)cols * 2; break;
    case CAIRN_GGUF_Q8_0: *q = (size_t)cols; *d = nb32 * 2; break;
    case CAIRN_GGUF_Q4_0: *q = nb32 * 16; *d = nb32 * 2; break;
    case CAIRN_GGUF_Q4_1: *q = nb32 * 16; *d = nb32 * 4; break;
    case CAIRN_GGUF_Q5_0: *q = nb32 * 16; *d = nb32 * 2; *qh = nb32 * 4; break;
    case CAIRN_GGUF_Q4_K: *q = nb256 * 144; break;
    case CAIRN_GGUF_Q6_K: *q = nb256 * 208; *d = nb256 * 2; break;
    default: *q = 0; break;
    }
}

/* Splits one GGUF row (src) into its planes. */
static void repack_row(uint32_t type, int64_t cols, const uint8_t *src, uint8_t *q, uint8_t *d,
                       uint8_t *qh)
{
    int64_t nb32 = cols / 32, nb256 = cols / 256;
    switch (type) {
    case CAIRN_GGUF_Q8_0:
        for (int64_t b = 0; b < nb32; b++) {
            memcpy(d + 2 * b, src + 34 * b, 2);
            memcpy(q + 32 * b, src + 34 * b + 2, 32);
        }
        break;
    case CAIRN_GGUF_Q4_0:
        for (int64_t b = 0; b < nb32; b++) {
            memcpy(d + 2 * b, src + 18 * b, 2);
            memcpy(q + 16 * b, src + 18 * b + 2, 16);
        }
        break;
    case CAIRN_GGUF_Q4_1:
        for (int64_t b = 0; b < nb32; b++) {
            memcpy(d + 4 * b, src + 20 * b, 4); /* d, m */
            memcpy(q + 16 * b, src + 20 * b + 4, 16);
        }
        break;
    case CAIRN_GGUF_Q5_0:
        for (int64_t b = 0; b < nb32; b++) {
            memcpy(d + 2 * b, src + 22 * b, 2);
            memcpy(qh + 4 * b, src + 22 * b + 2, 4);
            memcpy(q + 16 * b, src + 22 * b + 6, 16);
        }
        break;
    case CAIRN_GGUF_Q6_K:
        for (int64_t b = 0; b < nb256; b++) {
            memcpy(q + 208 * b, src + 210 * b, 208); /* ql, qh, scales */
            memcpy(d + 2 * b, src + 210 * b + 208, 2);
        }
        break;
    default: { /* the float types and Q4_K keep their bytes */
        size_t qb, db, hb;
        cairn__plane_bytes(type, cols, &qb, &db, &hb);
        memcpy(q, src, qb);
        break;
    }
    }
}

static void cmat_free(cairn__cmat *m)
{
    if (!m)
        return;
    (void)cudaFree(m->q);
    (void)cudaFree(m->d);
    (void)cudaFree(m->qh);
    (void)cudaFree(m->bf);
    free(m);
}

/* bytes of pinned host memory into *out (what: what for, in the error), or CAIRN_ENOMEM. */
static int pinned_alloc(void **out, size_t bytes, const char *what, cairn_error *err)
{
    *out = NULL;
    cudaError_t e = cudaMallocHost(out, bytes);
    if (e == cudaSuccess)
        return 0;
    (void)cudaGetLastError();
    *out = NULL;
    return cairn_errorf(err, CAIRN_ENOMEM, "cuda backend: %zu bytes of pinned host memory for "
                        "%s: %s", bytes, what, cudaGetErrorString(e));
}

static int stage_reserve(cairn__cuda *c, size_t bytes, cairn_error *err)
{
    if (c->stage_bytes >= bytes)
        return 0;
    if (c->stage)
        (void)cudaFreeHost(c->stage);
    c->stage = NULL;
    c->stage_bytes = 0;
    int rc = pinned_alloc((void **)&c->stage, bytes, "uploading weights", err);
    if (!rc)
        c->stage_bytes = bytes;
    return rc;
}

/* The lane layout (common.cuh) for the matrices whose GEMV reads it (matmul.cu's gemv_lane), unless
 * CAIRN_CUDA_LANE_LAYOUT=0 keeps rows whole (to measure the two side by side). */
static bool lane_layout(uint32_t type, int64_t cols)
{
    const char *e = getenv("CAIRN_CUDA_LANE_LAYOUT");
    if (e && !strcmp(e, "0"))
        return false;
    /* whole pieces a row: 256 values for the K-quants (always), 128 for Q8_0 */
    return (type == CAIRN_GGUF_Q8_0 && cols % 128 == 0) || type == CAIRN_GGUF_Q4_K ||
           type == CAIRN_GGUF_Q6_K;
}

/* Rows of a repacked q plane (n rows of qb bytes at src) into the lane layout at dst: whole
 * groups of 32 rows, the rows past n zero (their units lie between the others' in the last
 * group, so that group is cleared whole first). */
static void interleave_rows(const uint8_t *src, int64_t n, size_t qb, uint8_t *dst)
{
    const int64_t units = (int64_t)(qb / 16);
    if (n % 32)
        memset(dst + qb * (size_t)(n / 32 * 32), 0, qb * 32);
    for (int64_t r = 0; r < n; r++)
        for (int64_t u = 0; u < units; u++)
            memcpy(dst + (((r >> 5) * units + u) << 9) + ((r & 31) << 4), src + qb * r + 16 * u,
                   16);
}

/* Pinned staging for repacked rows: large enough that uploads run near PCIe speed. */
#define STAGE_BYTES ((size_t)16 << 20)

static int cu_mat_load(cairn_backend *be, const cairn_gguf_tensor *t, const char *name, int use,
                       cairn_bmat *m, cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    memset(m, 0, sizeof *m);
    if (!name)
        name = t->name;
    int rc = cairn__cuda_enter(c, err);
    if (rc || (rc = cairn__graph_flush(c, err)))
        return rc;
    if (!cairn__cuda_type_ok(t->type)) {
        const char *tn = cairn_gguf_type_name(t->type);
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "cuda backend: tensor '%s': type %s (%u) has no CUDA kernel", name,
                            tn ? tn : "unknown", t->type);
    }
    if (t->n_dims < 1 || t->n_dims > 2 || t->dims[2] != 1 || t->dims[3] != 1 || !t->data)
        return cairn_errorf(err, CAIRN_EFORMAT, "cuda backend: tensor '%s': expected a matrix "
                            "with data, got %u dims", name, t->n_dims);
    uint32_t bs = cairn_gguf_type_block_size(t->type);
    int64_t cols = (int64_t)t->dims[0], rows = (int64_t)t->dims[1];
    if (cols <= 0 || rows <= 0 || cols % bs != 0 || cols > ((int64_t)1 << 30) ||
        rows > ((int64_t)1 << 31) - 1)
        return cairn_errorf(err, CAIRN_EFORMAT, "cuda backend: tensor '%s': %lld x %lld is not "
                            "a whole number of %u-value blocks a row (or too large)", name,
                            (long long)rows, (long long)cols, bs);
    size_t row_bytes = (size_t)(cols / bs) * cairn_gguf_type_block_bytes(t->type);
    if ((uint64_t)row_bytes * (uint64_t)rows != t->nbytes)
        return cairn_errorf(err, CAIRN_EFORMAT, "cuda backend: tensor '%s': %llu bytes do not "
                            "match its shape", name, (unsigned long long)t->nbytes);

    size_t qb, db, hb;
    cairn__plane_bytes(t->type, cols, &qb, &db, &hb);
    cairn__cmat *cm = (cairn__cmat *)calloc(1, sizeof *cm);
    if (!cm)
        return cairn_errorf(err, CAIRN_ENOMEM, "cuda backend: out of memory");
    cm->type = t->type;
    cm->use = use;
    cm->rows = rows;
    cm->cols = cols;
    cm->nb = bs > 1 ? cols / bs : cols;
    cm->qrow = (int64_t)qb;
    cm->lane = lane_layout(t->type, cols);
    const int64_t q_rows = cm->lane ? (rows + 31) / 32 * 32 : rows; /* the last group padded */
    char what[300];
    snprintf(what, sizeof what, "tensor '%s'", name);
    uint8_t *row_buf = NULL; /* the lane layout: rows repacked here, then interleaved */
    if (cm->lane && !(row_buf = (uint8_t *)malloc(qb * 32))) {
        cmat_free(cm);
        return cairn_errorf(err, CAIRN_ENOMEM, "cuda backend: out of memory");
    }
    if ((rc = cairn__cuda_malloc(c, (void **)&cm->q, qb * (size_t)q_rows, what, err)) ||
        (db && (rc = cairn__cuda_malloc(c, (void **)&cm->d, db * (size_t)rows, what, err))) ||
        (hb && (rc = cairn__cuda_malloc(c, (void **)&cm->qh, hb * (size_t)rows, what, err)))) {
        free(row_buf);
        cmat_free(cm);
        return rc;
    }
    size_t per_row = qb + db + hb, least = per_row * (cm->lane ? 32 : 1);
    if ((rc = stage_reserve(c, least > STAGE_BYTES ? least : STAGE_BYTES, err))) {
        free(row_buf);
        cmat_free(cm);
        return rc;
    }
    /* Rows go up in chunks (whole groups of 32 in the lane layout): repack into the staging
     * buffer's three regions, copy each to its plane, wait before the staging buffer is filled
     * again. */
    int64_t chunk = (int64_t)(c->stage_bytes / per_row);
    if (cm->lane)
        chunk = chunk / 32 * 32;
    const uint8_t *src = (const uint8_t *)t->data;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
        const int64_t nq = cm->lane ? (n + 31) / 32 * 32 : n; /* q plane rows, padded */
        uint8_t *sq = c->stage, *sd = sq + qb * (size_t)nq, *sh = sd + db * (size_t)n;
        for (int64_t g = 0; g < n; g += 32) { /* a group at a time, through row_buf if lane */
            const int64_t gn = n - g < 32 ? n - g : 32;
            uint8_t *q_out = cm->lane ? row_buf : sq + qb * (size_t)g;
            for (int64_t r = 0; r < gn; r++)
                repack_row(t->type, cols, src + (size_t)(r0 + g + r) * row_bytes,
                           q_out + qb * (size_t)r, sd + db * (size_t)(g + r),
                           sh + hb * (size_t)(g + r));
            if (cm->lane)
                interleave_rows(row_buf, gn, qb, sq + qb * (size_t)g);
        }
        cudaError_t e = cudaMemcpyAsync(cm->q + qb * (size_t)r0, sq, qb * (size_t)nq,
                                        cudaMemcpyHostToDevice, c->stream);
        if (e == cudaSuccess && db)
            e = cudaMemcpyAsync((uint8_t *)cm->d + db * (size_t)r0, sd, db * (size_t)n,
                                cudaMemcpyHostToDevice, c->stream);
        if (e == cudaSuccess && hb)
            e = cudaMemcpyAsync((uint8_t *)cm->qh + hb * (size_t)r0, sh, hb * (size_t)n,
                                cudaMemcpyHostToDevice, c->stream);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(c->stream);
        if (e != cudaSuccess) {
            free(row_buf);
            cmat_free(cm);
            rc = cairn__cuda_fail(err, "cudaMemcpyAsync", e);
            return cairn_error_prefix(err, "uploading tensor '%s'", name), rc;
        }
    }
    free(row_buf);
    if (c->n_mats == c->cap_mats) { /* the register of loaded matrices (the BF16 cache's) */
        int cap = c->cap_mats ? 2 * c->cap_mats : 64;
        cairn__cmat **grown = (cairn__cmat **)realloc(c->mats, sizeof *grown * (size_t)cap);
        if (!grown) {
            cmat_free(cm);
            return cairn_errorf(err, CAIRN_ENOMEM, "cuda backend: out of memory");
        }
        c->mats = grown;
        c->cap_mats = cap;
    }
    c->mats[c->n_mats++] = cm;
    m->type = t->type;
    m->rows = rows;
    m->cols = cols;
    m->row_bytes = row_bytes;
    m->data = cm->q;
    m->priv = cm;
    if (use & (CAIRN_BMAT_MATMUL | CAIRN_BMAT_LOGITS)) {
        if (cols > c->mm_cols)
            c->mm_cols = cols;
        if (rows * cols > c->mm_elems)
            c->mm_elems = rows * cols;
    }
    if (use & CAIRN_BMAT_LOGITS) {
        if (cols > c->lg_cols)
            c->lg_cols = cols;
        if (rows > c->lg_rows)
            c->lg_rows = rows;
    }
    return 0;
}

static void cu_mat_free(cairn_backend *be, cairn_bmat *m)
{
    if (!m || !m->priv)
        return;
    (void)cudaSetDevice(cairn__cu(be)->device);
    (void)cairn__graph_flush(cairn__cu(be), NULL); /* queued products may still read it */
    cairn__graph_invalidate(cairn__cu(be));
    (void)cudaStreamSynchronize(cairn__cu(be)->stream);
    cairn__cuda *c = cairn__cu(be);
    for (int i = 0; i < c->n_mats; i++)
        if (c->mats[i] == m->priv) {
            memmove(c->mats + i, c->mats + i + 1, sizeof *c->mats * (size_t)(c->n_mats - i - 1));
            c->n_mats--;
            break;
        }
    cmat_free((cairn__cmat *)m->priv);
    memset(m, 0, sizeof *m);
}

/*
 * The BF16 cache: each loaded matrix whose products of many tokens would go through decoded
 * tiles (the quantized types and F16, matmul or logits matrices) is decoded whole once, in load
 * order, while at least half the GPU's memory stays free after it (so the KV pool, sized after
 * reserve from what is free, keeps most of what the weights leave). cuBLAS then multiplies the
 * copy: a prefill or a large batch costs what it costs in BF16 weights, with no tile decoded
 * per product. The first matrix that does not fit, or whose allocation fails, and every one
 * loaded after it keep the tiles.
 */
static int bf16_cache_fill(cairn__cuda *c, cairn_error *err)
{
    size_t free_b = 0, total_b = 0;
    if (!c->bf16_cache || cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    int added = 0, left = 0, held = 0;
    size_t added_bytes = 0;
    for (int i = 0; i < c->n_mats; i++) {
        cairn__cmat *m = c->mats[i];
        /* only what products read: a matrix whose rows are only looked up (a token
         * embedding that is not also the output projection) gains nothing */
        if (m->type == CAIRN_GGUF_BF16 || m->type == CAIRN_GGUF_F32 ||
            !(m->use & (CAIRN_BMAT_MATMUL | CAIRN_BMAT_LOGITS)))
            continue;
        if (m->bf) {
            held++;
            continue;
        }
        const size_t bytes = (size_t)m->rows * (size_t)m->cols * sizeof(__nv_bfloat16);
        if (left > 0 || bytes > free_b || free_b - bytes < total_b / 2) {
            left++; /* this one, and every one after it, keeps the tiles */
            continue;
        }
        if (cudaMalloc((void **)&m->bf, bytes) != cudaSuccess) {
            (void)cudaGetLastError();
            m->bf = NULL;
            left++;
            continue;
        }
        int rc = cairn__cuda_decode_whole(c, m, err);
        if (rc) { /* a copy half decoded must not be multiplied */
            (void)cudaFree(m->bf);
            m->bf = NULL;
            return rc;
        }
        free_b -= bytes;
        added++;
        added_bytes += bytes;
    }
    CU_TRY(err, cudaStreamSynchronize(c->stream));
    if (added > 0 || (left > 0 && !c->bf16_cache_told)) {
        CAIRN_LOG_INFO("BF16 cache", "device=%d matrices=%d added_mib=%zu left_to_tiles=%d "
                       "free_mib=%zu total_mib=%zu", c->device, held + added, added_bytes >> 20,
                       left, free_b >> 20, total_b >> 20);
        c->bf16_cache_told = true;
    }
    return 0;
}

/* ---- Scratch --------------------------------------------------------------------------------- */

/* Makes *p hold at least want bytes (contents not kept); *have is what it holds. */
static int ensure(cairn__cuda *c, void **p, size_t *have, size_t want, const char *what,
                  cairn_error *err)
{
    if (*p && *have >= want)
        return 0;
    (void)cudaFree(*p);
    *p = NULL;
    *have = 0;
    int rc = cairn__cuda_malloc(c, p, want, what, err);
    if (!rc)
        *have = want;
    return rc;
}

/* cuBLAS's workspace: what NVIDIA advises for Hopper. */
#define BLAS_WS_BYTES ((size_t)32 << 20)

/* Sizes never shrink: a later, smaller reserve keeps what an earlier one made. */
static int cu_reserve(cairn_backend *be, int max_tokens, int max_ctx, int group,
                      cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    cairn__cuda_q8_forget(c); /* it may write where q8_src points */
    if (max_tokens < 1 || max_ctx < 1 || group < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: reserve sizes must be positive");
    int rc = cairn__cuda_enter(c, err);
    if (rc || (rc = cairn__graph_flush(c, err)))
        return rc;
    /* Queued work and graphs may still use the scratch that is about to be replaced. */
    cairn__graph_invalidate(c);
    CU_TRY(err, cudaStreamSynchronize(c->stream));
    size_t T = (size_t)(max_tokens > c->max_tokens ? max_tokens : c->max_tokens);
    size_t cols = (size_t)(c->mm_cols + 31) / 32 * 32;
    if (cols < (size_t)c->cap_cols)
        cols = (size_t)c->cap_cols;
    if (cols < 32)
        cols = 32;
    if ((rc = ensure(c, (void **)&c->act_q, &c->act_q_bytes, T * cols, "activation scratch",
                     err)) ||
        (rc = ensure(c, (void **)&c->act_ds, &c->act_ds_bytes, T * (cols / 32) * sizeof(float2),
                     "activation scratch", err)))
        return rc;
    c->max_tokens = (int)T;
    c->cap_cols = (int64_t)cols;
    /* Products of more tokens go to cuBLAS: BF16 activations (the float types from
     * CAIRN__GEMV_FLOAT_MAX_TOKENS + 1 on), and a dequantized weight tile for the others. */
    if (T > CAIRN__GEMV_FLOAT_MAX_TOKENS && c->mm_elems > 0 &&
        (rc = ensure(c, (void **)&c->xbf, &c->xbf_bytes, T * cols * sizeof(__nv_bfloat16),
                     "BF16 activation scratch", err)))
        return rc;
    if (T > CAIRN__GEMV_MAX_TOKENS && c->mm_elems > 0) {
        size_t tile = (size_t)c->mm_elems < c->wtile_elems ? (size_t)c->mm_elems
                                                           : c->wtile_elems;
        if (tile < cols)
            tile = cols;
        if ((rc = ensure(c, (void **)&c->wtile, &c->wtile_bytes, tile * sizeof(__nv_bfloat16),
                         "weight tile scratch", err)) ||
            (c->tile_overlap &&
             (rc = ensure(c, (void **)&c->wtile2, &c->wtile2_bytes, tile * sizeof(__nv_bfloat16),
                          "weight tile scratch", err))))
            return rc;
    }
    /* Logits: the normalised rows, then chunks of output rows on their way to the host. */
    if (c->lg_rows > 0) {
        size_t per = (size_t)c->lg_rows * sizeof(float);
        size_t lt = CAIRN__LOGITS_BYTES / per;
        lt = lt < 1 ? 1 : lt > T ? T : lt;
        if ((rc = ensure(c, (void **)&c->lrows, &c->lrows_bytes,
                         T * (size_t)c->lg_cols * sizeof(float), "logits scratch", err)) ||
            (rc = ensure(c, (void **)&c->lout, &c->lout_bytes, lt * per, "logits scratch", err)))
            return rc;
        c->lout_tokens = (int)(c->lout_bytes / per);
        c->lrows_cols = c->lg_cols;
        /* logits_pick's entries: up to CAIRN_BACKEND_MAX_PICK a row, a row per token */
        const size_t picks = T * CAIRN_BACKEND_MAX_PICK;
        if (picks > c->pick_cap) { /* both replaced whole */
            (void)cudaFree(c->d_pick);
            (void)cudaFreeHost(c->h_pick);
            c->d_pick = c->h_pick = NULL;
            c->pick_cap = 0;
            const size_t bytes = picks * sizeof(cairn_cand);
            if ((rc = cairn__cuda_malloc(c, (void **)&c->d_pick, bytes, "logits entries", err)) ||
                (rc = pinned_alloc((void **)&c->h_pick, bytes, "logits entries", err)))
                return rc;
            c->pick_cap = picks;
        }
    }
    if ((rc = ensure(c, (void **)&c->apart, &c->apart_bytes,
                     CAIRN__ATTN_PART_FLOATS * sizeof(float), "attention scratch", err)))
        return rc;
    if (T >= CAIRN__RUN_MIN &&
        (rc = ensure(c, &c->pf, &c->pf_bytes, CAIRN__PF_BYTES, "prefill attention scratch",
                     err)))
        return rc;
    /* cuBLAS's workspace, given once, so that a product never allocates (nor in a graph). */
    if (!c->blas_ws) {
        if ((rc = ensure(c, &c->blas_ws, &c->blas_ws_bytes, BLAS_WS_BYTES, "cuBLAS workspace",
                         err)))
            return rc;
        BLAS_TRY(err, cublasSetWorkspace(c->blas, c->blas_ws, c->blas_ws_bytes));
    }
    if (max_ctx > c->max_ctx)
        c->max_ctx = max_ctx;
    if (group > c->group)
        c->group = group;
    /* The BF16 cache serves products of more tokens than a GEMV takes. */
    if (T > CAIRN__GEMV_MAX_TOKENS && (rc = bf16_cache_fill(c, err)))
        return rc;
    return 0;
}

/* ---- The step -------------------------------------------------------------------------------- */

static int cu_batch_set(cairn_backend *be, const cairn_bbatch *b, cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    cairn__cuda_q8_forget(c); /* it may write where q8_src points */
    int rc = cairn__cuda_enter(c, err);
    if (rc || (rc = cairn__graph_flush(c, err))) /* a step that ended without its logits */
        return rc;
    c->have_batch = false;
    if (b->n_tokens < 1 || b->n_tokens > c->max_tokens)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: %d tokens, reserved 1..%d",
                            b->n_tokens, c->max_tokens);
    if (b->n_seqs < 1 || b->n_groups < 1 || b->n_groups > CAIRN_BACKEND_MAX_GROUPS ||
        b->max_table < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: batch of %d sequences, %d groups, "
                            "%d table entries", b->n_seqs, b->n_groups, b->max_table);
    const int n = b->n_tokens;
    for (int t = 0; t < n; t++)
        if (b->slot[t] < 0 || b->slot[t] >= b->n_seqs || b->pos[t] < 0)
            return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: token %d has sequence slot %d "
                                "(of %d) and position %d", t, b->slot[t], b->n_seqs, b->pos[t]);
    size_t n_tab = (size_t)b->n_groups * (size_t)b->n_seqs * (size_t)b->max_table;
    size_t need = 4 * (size_t)n + n_tab;
    /* The previous batch may still be on its way up from h_batch. */
    if (c->batch_pending) {
        CU_TRY(err, cudaEventSynchronize(c->batch_copied));
        c->batch_pending = false;
    }
    if (need > c->batch_cap) {
        size_t cap = need + need / 2 + 64;
        /* d_batch may still be read by queued kernels of the last step */
        CU_TRY(err, cudaStreamSynchronize(c->stream));
        cairn__graph_invalidate(c);
        (void)cudaFreeHost(c->h_batch);
        (void)cudaFree(c->d_batch);
        c->h_batch = NULL;
        c->d_batch = NULL;
        c->batch_cap = 0;
        if ((rc = pinned_alloc((void **)&c->h_batch, cap * sizeof(int32_t), "the batch", err)) ||
            (rc = cairn__cuda_malloc(c, (void **)&c->d_batch, cap * sizeof(int32_t), "batch",
                                     err)))
            return rc;
        c->batch_cap = cap;
    }
    int32_t *h = c->h_batch;
    memcpy(h, b->tokens, sizeof(int32_t) * (size_t)n);
    memcpy(h + n, b->pos, sizeof(int32_t) * (size_t)n);
    memcpy(h + 2 * n, b->slot, sizeof(int32_t) * (size_t)n);
    int n_out = 0;
    for (int t = 0; t < n; t++)
        if (b->logits && b->logits[t])
            h[3 * n + n_out++] = t;
    memcpy(h + 4 * n, b->tables, sizeof(int32_t) * n_tab);
    CU_TRY(err, cudaMemcpyAsync(c->d_batch, h, need * sizeof(int32_t), cudaMemcpyHostToDevice,
                                c->stream));
    CU_TRY(err, cudaEventRecord(c->batch_copied, c->stream));
    c->batch_pending = true;
    c->n_tokens = n;
    c->n_seqs = b->n_seqs;
    c->n_groups = b->n_groups;
    c->max_table = b->max_table;
    c->n_out = n_out;
    c->has_runs = false;
    c->max_pos = 0;
    for (int t = 0; t < n; t++)
        c->max_pos = b->pos[t] > c->max_pos ? b->pos[t] : c->max_pos;
    for (int t = 0, run = 1; t + 1 < n && !c->has_runs; t++) {
        run = b->slot[t + 1] == b->slot[t] && b->pos[t + 1] == b->pos[t] + 1 ? run + 1 : 1;
        c->has_runs = run >= CAIRN__RUN_MIN;
    }
    c->n_pace = 0;
    c->have_batch = true;
    return cairn__graph_step_begin(c, err);
}

/* ---- The table ------------------------------------------------------------------------------- */

static void cu_close(cairn_backend *be)
{
    cairn__cuda *c = cairn__cu(be);
    (void)cudaSetDevice(c->device);
    cairn__graph_close(c);
    if (c->glog)
        (void)fclose(c->glog);
    if (c->stream)
        (void)cudaStreamSynchronize(c->stream);
    (void)cudaFree(c->blas_ws);
    (void)cudaFree(c->act_q);
    (void)cudaFree(c->act_ds);
    (void)cudaFree(c->xbf);
    (void)cudaFree(c->wtile);
    (void)cudaFree(c->wtile2);
    free(c->mats); /* the register only: the matrices are their owners' to free */
    (void)cudaFree(c->lrows);
    (void)cudaFree(c->lout);
    (void)cudaFree(c->d_pick);
    (void)cudaFreeHost(c->h_pick);
    (void)cudaFree(c->apart);
    (void)cudaFree(c->pf);
    (void)cudaFree(c->d_batch);
    if (c->h_batch)
        (void)cudaFreeHost(c->h_batch);
    if (c->stage)
        (void)cudaFreeHost(c->stage);
    if (c->batch_copied)
        (void)cudaEventDestroy(c->batch_copied);
    for (int i = 0; i < 2; i++)
        if (c->pace[i])
            (void)cudaEventDestroy(c->pace[i]);
    for (int i = 0; i < 5; i++)
        if (c->tile_ev[i])
            (void)cudaEventDestroy(c->tile_ev[i]);
    if (c->side) {
        (void)cudaStreamSynchronize(c->side);
        (void)cudaStreamDestroy(c->side);
    }
    if (c->blas)
        (void)cublasDestroy(c->blas);
    if (c->stream)
        (void)cudaStreamDestroy(c->stream);
    free(c);
}

static void cu_describe(const cairn_backend *be, char *buf, size_t len)
{
    snprintf(buf, len, "%s", ((const cairn__cuda *)be)->desc);
}

static void cu_traits(const cairn_backend *be, cairn_backend_traits *out)
{
    (void)be;
    /* A GEMV pass reads the weights once for up to CAIRN__GEMV_TOKENS tokens. */
    out->token_tile = CAIRN__GEMV_TOKENS;
    out->logits_pair = 1;
    out->gemm_from = CAIRN__GEMV_MAX_TOKENS;
    out->cold_steps = 2; /* graph.cu: a shape runs call by call, then is captured, then replays */
}

static int cu_mem_info(const cairn_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    const cairn__cuda *c = (const cairn__cuda *)be;
    if (cudaSetDevice(c->device) != cudaSuccess ||
        cudaMemGetInfo(free_bytes, total_bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        return CAIRN_EDEVICE;
    }
    return 0;
}

/* A layer of a pass that may yield is queued: mark the queue, then wait. A pass of many tokens
 * (a layer of a long prefill takes milliseconds, its launches some 0.1 ms to queue) waits for
 * the layer just queued before the next check, so a yield comes half a layer after it was
 * asked, on average; a shorter pass waits for the mark before it, keeping a layer queued so
 * that the device never waits for the host. Only a step run call by call waits: a captured
 * step's calls run later, at its logits, and a replayed one runs nothing until then (both are
 * decode steps, a graph's worth of milliseconds). */
static int cu_layer_done(cairn_backend *be, cairn_error *err)
{
    cairn__cuda *c = cairn__cu(be);
    if (c->gmode != CAIRN__G_DIRECT)
        return 0;
    int rc = cairn__cuda_enter(c, err);
    if (rc)
        return rc;
    cudaEvent_t now = c->pace[c->n_pace & 1];
    CU_TRY(err, cudaEventRecord(now, c->stream));
    if (c->n_tokens >= CAIRN__PACE_CLOSE_TOKENS)
        CU_TRY(err, cudaEventSynchronize(now));
    else if (c->n_pace > 0)
        CU_TRY(err, cudaEventSynchronize(c->pace[(c->n_pace - 1) & 1]));
    c->n_pace++;
    return 0;
}

static const cairn_backend_i cuda_table = {
    .version = CAIRN_BACKEND_VERSION,
    .name = "cuda",
    .close = cu_close,
    .describe = cu_describe,
    .traits = cu_traits,
    .mem_info = cu_mem_info,
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .copy = cu_copy,
    .mat_load = cu_mat_load,
    .mat_free = cu_mat_free,
    .reserve = cu_reserve,
    .batch_set = cu_batch_set,
    .embed = cairn__graph_embed,
    .rmsnorm = cairn__graph_rmsnorm,
    .matmul = cairn__graph_matmul,
    .qkv = cairn__graph_qkv,
    .attention = cairn__graph_attention,
    .add_norm = cairn__graph_add_norm,
    .gated = cairn__graph_gated,
    .logits = cairn__graph_logits,
    .layer_done = cu_layer_done,
    .logits_pick = cairn__graph_logits_pick,
};

/* CAIRN_CUDA_SKIP's stage names into CAIRN__ST_* bits (unknown names: none). */
static unsigned skip_of(const char *e)
{
    static const struct { const char *name; int stage; } names[] = {
        {"qkv", CAIRN__ST_QKV}, {"attn", CAIRN__ST_ATTN}, {"add_norm", CAIRN__ST_ADD_NORM},
        {"gated", CAIRN__ST_GATED}};
    unsigned bits = 0;
    for (size_t i = 0; e && i < sizeof names / sizeof names[0]; i++) {
        const size_t n = strlen(names[i].name);
        for (const char *p = strstr(e, names[i].name); p; p = strstr(p + 1, names[i].name))
            if ((p == e || p[-1] == ',') && (p[n] == ',' || p[n] == 0))
                bits |= 1u << names[i].stage;
    }
    return bits;
}

extern "C" int cairn_backend_cuda_open(cairn_backend **out, int device, cairn_error *err)
{
    *out = NULL;
    char why[256] = "";
    int n = cairn_gpu_count(why, sizeof why);
    if (device < 0 || device >= n)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "cuda backend: no GPU %d (%d visible%s%s)",
                            device, n, n ? "" : ": ", n ? "" : why);
    cairn__cuda *c = (cairn__cuda *)calloc(1, sizeof *c);
    if (!c)
        return cairn_errorf(err, CAIRN_ENOMEM, "cuda backend: out of memory");
    c->base.i = &cuda_table;
    c->device = device;
    const char *g = getenv("CAIRN_CUDA_GRAPHS"); /* a switch for debugging: "0" turns them off */
    c->graphs_on = !(g && !strcmp(g, "0"));
    /* Switches to measure what each saves: "0" turns off the quantized rows left by the stages
     * that write a product's input, and the one-launch sets of matrices. */
    const char *f = getenv("CAIRN_CUDA_Q8_FUSE"), *st = getenv("CAIRN_CUDA_GEMV_SETS");
    c->q8_fuse = !(f && !strcmp(f, "0"));
    c->gemv_sets = !(st && !strcmp(st, "0"));
    /* "0": every kernel waits for the one before; "gemv": only the GEMVs start early */
    const char *pd = getenv("CAIRN_CUDA_PDL");
    c->pdl = !(pd && !strcmp(pd, "0"));
    c->pdl_all = c->pdl && !(pd && !strcmp(pd, "gemv"));
    /* A file that gets a line per step (how its calls ran) and per graph dropped, to find
     * which steps missed their graph (docs/GPU.md); a file that cannot be opened logs none. */
    const char *gl = getenv("CAIRN_CUDA_GRAPH_LOG");
    if (gl && *gl)
        c->glog = fopen(gl, "a");
    /* The cuBLAS path's tiles (matmul.cu, gemm): MiB of one (1-1024, else the default 64),
     * and whether the next is decoded while the one before is multiplied ("0": not). On an
     * H100 (Llama-3-8B shapes, Q4_K_M; docs/BENCHMARKS.md, session 18) the overlap took a
     * 512-token prefill from 34.8 to 34.3 ms and batch-64 decode steps from 18.76 to 18.38;
     * tiles of 8 or 16 MiB were much slower (56 ms): cuBLAS gets too few rows a product to
     * fill the SMs. */
    const char *tm = getenv("CAIRN_CUDA_WTILE_MIB"), *to = getenv("CAIRN_CUDA_TILE_OVERLAP");
    const long mib = tm ? strtol(tm, NULL, 10) : 0;
    c->wtile_elems = mib >= 1 && mib <= 1024 ? ((size_t)mib << 20) / sizeof(__nv_bfloat16)
                                             : CAIRN__WTILE_ELEMS;
    c->tile_overlap = !(to && !strcmp(to, "0"));
    const char *bc = getenv("CAIRN_CUDA_BF16_CACHE"); /* "0": tiles for every product */
    c->bf16_cache = !(bc && !strcmp(bc, "0"));
    c->skip = skip_of(getenv("CAIRN_CUDA_SKIP"));
    if (c->skip)
        fprintf(stderr, "cuda backend: CAIRN_CUDA_SKIP=%s: those stages launch nothing, so "
                "results are wrong (for measuring only)\n", getenv("CAIRN_CUDA_SKIP"));
    const char *as = getenv("CAIRN_CUDA_ATTN_SPLITS");
    const long asn = as && *as ? strtol(as, NULL, 10) : 0;
    c->attn_split_max = asn >= 1 && asn <= 64 ? (int)asn : 64;
    const char *ash = getenv("CAIRN_CUDA_ATTN_SHORT");
    c->attn_short = ash && !strcmp(ash, "1");
    int rc = 0;
    cudaDeviceProp prop;
    cudaError_t e = cudaSetDevice(device);
    const char *call = "cudaSetDevice";
    if (e == cudaSuccess) {
        call = "cudaGetDeviceProperties";
        e = cudaGetDeviceProperties(&prop, device);
    }
    if (e == cudaSuccess) {
        call = "cudaStreamCreateWithFlags";
        e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    }
    if (e == cudaSuccess) {
        call = "cudaEventCreateWithFlags";
        e = cudaEventCreateWithFlags(&c->batch_copied, cudaEventDisableTiming);
    }
    for (int i = 0; i < 2 && e == cudaSuccess; i++)
        e = cudaEventCreateWithFlags(&c->pace[i], cudaEventDisableTiming);
    if (e == cudaSuccess && c->tile_overlap) {
        call = "cudaStreamCreateWithFlags";
        e = cudaStreamCreateWithFlags(&c->side, cudaStreamNonBlocking);
        call = "cudaEventCreateWithFlags";
        for (int i = 0; i < 5 && e == cudaSuccess; i++)
            e = cudaEventCreateWithFlags(&c->tile_ev[i], cudaEventDisableTiming);
    }
    if (e != cudaSuccess) {
        rc = cairn__cuda_fail(err, call, e);
        cu_close(&c->base);
        return rc;
    }
    c->n_sm = prop.multiProcessorCount;
    c->smem_optin = prop.sharedMemPerBlockOptin;
    c->pdl = c->pdl && prop.major >= 9;
    c->pdl_all = c->pdl_all && c->pdl;
    /* prop.name is at most 256 bytes; desc may cut a very long name short */
    snprintf(c->desc, sizeof c->desc, "%.200s, sm_%d%d, %zu MiB", prop.name, prop.major,
             prop.minor, (size_t)(prop.totalGlobalMem >> 20));
    if ((rc = cairn__cuda_attention_init(c, err))) {
        cu_close(&c->base);
        return rc;
    }
    cublasStatus_t s = cublasCreate(&c->blas);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasSetStream(c->blas, c->stream);
    if (s != CUBLAS_STATUS_SUCCESS) {
        rc = cairn__blas_fail(err, "cublasCreate", s);
        cu_close(&c->base);
        return rc;
    }
    *out = &c->base;
    return 0;
}
