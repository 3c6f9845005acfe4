/*
 * tests/unit/test_backend_ops.c — every stage of generation/backend.h on the CUDA backend
 * against the CPU backend, on the same random inputs (ggml's test-backend-ops pattern).
 *
 * Each check runs one stage on both backends from identical device buffers and compares what
 * comes back by the normalized max error, max |gpu - cpu| / max |cpu|, against a tolerance
 * stated beside the check with what it rests on. Shapes: batches of 1, 2, 7, 33 and 520
 * tokens (decode, small and large prefill chunks, mixed), head sizes 64 / 128 / 256,
 * grouped-query groups 1, 4 and 8, a sliding-window layer group, block tables with holes
 * (-1) and blocks shared between sequences; matrix products per weight type (F32, F16, BF16,
 * Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K) on both the GEMV path (<= 16 tokens) and the cuBLAS
 * path, against the CPU backend; a type the CPU backend did not take would be checked against
 * the dequantized weights (proto/gguf's decoder) multiplied in double.
 *
 * On a machine without a usable GPU (or a build without CUDA) it prints
 * "skipped: no CUDA device (<why>)" and exits 0, after checking that asking for a GPU fails
 * cleanly.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/gpu.h"
#include "generation/backend.h"
#include "proto/gguf.h"
#include "tests/unit/first_entries.h"

static cairn_backend *G, *C; /* the CUDA backend, the CPU backend (the reference) */

/* Tokens a step may hold here (the largest batch below is 520), context, GQA group. */
#define MAX_TOKENS 544
#define MAX_CTX 2048
#define MAX_GROUP 8

/* ---- Randomness, buffers, comparisons ---------------------------------------------------- */

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}
static float frand(void) { return (float)(rnd() % 2000001) / 1000000.0f - 1.0f; }

static void fill(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = frand() * scale;
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    assert_non_null(p);
    return p;
}

static void ok(int rc, const cairn_error *err, const char *what)
{
    if (rc)
        fail_msg("%s: %s (%s)", what, cairn_strerror(rc), err->msg);
}

/* One logical buffer with a copy on each backend. */
typedef struct {
    void *g, *c;
    size_t bytes;
} pbuf;

static pbuf pb_new(size_t bytes, const void *init)
{
    pbuf b = {.bytes = bytes};
    cairn_error err = {0};
    ok(G->i->alloc(G, bytes, &b.g, &err), &err, "gpu alloc");
    ok(C->i->alloc(C, bytes, &b.c, &err), &err, "cpu alloc");
    if (init) {
        ok(G->i->upload(G, b.g, init, bytes, &err), &err, "gpu upload");
        ok(C->i->upload(C, b.c, init, bytes, &err), &err, "cpu upload");
    }
    return b;
}

static pbuf pb_rand(size_t n_floats, float scale)
{
    float *h = xmalloc(n_floats * sizeof(float));
    fill(h, n_floats, scale);
    pbuf b = pb_new(n_floats * sizeof(float), h);
    free(h);
    return b;
}

static void pb_put(pbuf *b, const void *src)
{
    cairn_error err = {0};
    ok(G->i->upload(G, b->g, src, b->bytes, &err), &err, "gpu upload");
    ok(C->i->upload(C, b->c, src, b->bytes, &err), &err, "cpu upload");
}

static void pb_get(const pbuf *b, void *g_out, void *c_out)
{
    cairn_error err = {0};
    ok(G->i->download(G, g_out, b->g, b->bytes, &err), &err, "gpu download");
    ok(C->i->download(C, c_out, b->c, b->bytes, &err), &err, "cpu download");
}

static void pb_free(pbuf *b)
{
    G->i->free(G, b->g);
    C->i->free(C, b->c);
    b->g = b->c = NULL;
}

/* max |got - ref| / max |ref| (a NaN in got counts as infinite). */
static double nerr(const float *got, const float *ref, size_t n)
{
    double d = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isnan(ref[i]))
            return INFINITY;
        double e = fabs((double)got[i] - (double)ref[i]);
        d = e > d ? e : d;
        m = fabs((double)ref[i]) > m ? fabs((double)ref[i]) : m;
    }
    return m > 0.0 ? d / m : d;
}

static void expect_close(const char *what, const float *got, const float *ref, size_t n,
                         double tol)
{
    double e = nerr(got, ref, n);
    print_message("  %-58s err %.2e (tol %.0e)\n", what, e, tol);
    if (!(e <= tol))
        fail_msg("%s: normalized max error %.3e exceeds %.1e", what, e, tol);
}

/* Compares a float buffer of both backends. */
static void expect_pb(const char *what, const pbuf *b, double tol)
{
    size_t n = b->bytes / sizeof(float);
    float *g = xmalloc(b->bytes), *c = xmalloc(b->bytes);
    pb_get(b, g, c);
    expect_close(what, g, c, n, tol);
    free(g);
    free(c);
}

static void reserve_both(void)
{
    cairn_error err = {0};
    ok(G->i->reserve(G, MAX_TOKENS, MAX_CTX, MAX_GROUP, &err), &err, "gpu reserve");
    ok(C->i->reserve(C, MAX_TOKENS, MAX_CTX, MAX_GROUP, &err), &err, "cpu reserve");
}

/* ---- Batches ---------------------------------------------------------------------------- */

/* A step: per sequence, the positions already cached (ctx) and the tokens of this step. */
typedef struct {
    const char *name;
    int n_seqs;
    int ctx[4], n_new[4];
} scenario;

static const scenario SCENARIOS[] = {
    {"1 token, decode at 300", 1, {300}, {1}},
    {"2 tokens, decodes at 100 and 700", 2, {100, 700}, {1, 1}},
    {"7 tokens, a prefill chunk after 20", 1, {20}, {7}},
    {"33 tokens, prefill 30 + decode + new 2", 3, {40, 70, 0}, {30, 1, 2}},
    {"520 tokens, two prefills of 260", 2, {0, 5}, {260, 260}},
};
#define N_SCENARIOS (sizeof SCENARIOS / sizeof SCENARIOS[0])

typedef struct {
    cairn_bbatch b;
    int32_t tokens[MAX_TOKENS], pos[MAX_TOKENS], slot[MAX_TOKENS], prompt_len[MAX_TOKENS];
    uint8_t logits[MAX_TOKENS];
    int32_t *tables;
} tbatch;

/* Tokens of a sequence are consecutive in the batch; a prefill's prompt ends with its step. */
static void tbatch_init(tbatch *tb, const scenario *s, int n_groups, int max_table,
                        int32_t *tables, int n_vocab)
{
    memset(tb, 0, sizeof *tb);
    int t = 0;
    for (int i = 0; i < s->n_seqs; i++)
        for (int j = 0; j < s->n_new[i]; j++, t++) {
            tb->tokens[t] = (int32_t)(rnd() % (uint32_t)n_vocab);
            tb->pos[t] = s->ctx[i] + j;
            tb->slot[t] = i;
            tb->prompt_len[t] = s->n_new[i] > 1 ? s->ctx[i] + s->n_new[i] : s->ctx[i];
            tb->logits[t] = j == s->n_new[i] - 1;
        }
    tb->tables = tables;
    tb->b = (cairn_bbatch){.n_tokens = t, .tokens = tb->tokens, .pos = tb->pos,
                           .slot = tb->slot, .prompt_len = tb->prompt_len,
                           .logits = tb->logits, .n_seqs = s->n_seqs, .n_groups = n_groups,
                           .max_table = max_table, .tables = tables};
}

/* A batch of n tokens of one sequence at positions 0.., for the stages without a cache. */
static int32_t trivial_table[1] = {0};
static void tbatch_simple(tbatch *tb, int n, int n_vocab)
{
    scenario s = {"simple", 1, {0}, {n}};
    tbatch_init(tb, &s, 1, 1, trivial_table, n_vocab);
}

static void set_batch(const tbatch *tb)
{
    cairn_error err = {0};
    ok(G->i->batch_set(G, &tb->b, &err), &err, "gpu batch_set");
    ok(C->i->batch_set(C, &tb->b, &err), &err, "cpu batch_set");
}

/* ---- Weights --------------------------------------------------------------------------- */

/* Random weights of `type`: quantized from random floats where proto/gguf's quantizer can,
 * else random block bytes with sane F16 scales (Q4_0, Q5_0: d first; Q4_1: d, then m). */
static void *make_weights(uint32_t type, int64_t rows, int64_t cols, size_t *row_bytes)
{
    uint64_t nb = 0;
    assert_int_equal(cairn_gguf_tensor_nbytes(type, (uint64_t)cols, &nb, NULL), 0);
    *row_bytes = (size_t)nb;
    uint8_t *w = xmalloc(nb * (size_t)rows);
    if (cairn_gguf_type_can_quantize(type)) {
        float *f = xmalloc(sizeof(float) * (size_t)(rows * cols));
        fill(f, (size_t)(rows * cols), 1.0f);
        assert_int_equal(cairn_gguf_quantize(type, f, (uint64_t)(rows * cols), w,
                                             nb * (size_t)rows, NULL), 0);
        free(f);
        return w;
    }
    uint32_t bb = cairn_gguf_type_block_bytes(type);
    for (size_t i = 0; i < nb * (size_t)rows; i++)
        w[i] = (uint8_t)rnd();
    for (size_t off = 0; off < nb * (size_t)rows; off += bb) {
        float d = 0.01f + 0.02f * (float)(rnd() % 100) / 100.0f;
        uint16_t h = cairn_gguf_f32_to_f16(d);
        memcpy(w + off, &h, 2);
        if (type == CAIRN_GGUF_Q4_1) {
            uint16_t m = cairn_gguf_f32_to_f16(-8.0f * d * (0.5f + (float)(rnd() % 100) / 100.0f));
            memcpy(w + off + 2, &m, 2);
        }
    }
    return w;
}

typedef struct {
    cairn_gguf_tensor t;
    void *host;
    cairn_bmat g, c;
    bool c_ok; /* the CPU backend took it (else: the dequantized weights, in double) */
} wmat;

static void wmat_make(wmat *w, const char *name, uint32_t type, int64_t rows, int64_t cols,
                      int use)
{
    memset(w, 0, sizeof *w);
    size_t rb;
    w->host = make_weights(type, rows, cols, &rb);
    w->t = (cairn_gguf_tensor){.name = name, .type = type, .n_dims = 2,
                               .dims = {(uint64_t)cols, (uint64_t)rows, 1, 1},
                               .n_elements = (uint64_t)(rows * cols),
                               .nbytes = (uint64_t)rb * (uint64_t)rows, .data = w->host};
    cairn_error err = {0};
    ok(G->i->mat_load(G, &w->t, name, use, &w->g, &err), &err, "gpu mat_load");
    int rc = C->i->mat_load(C, &w->t, name, use, &w->c, &err);
    w->c_ok = rc == 0;
    if (rc && !(rc == CAIRN_EUNSUPPORTED && type == CAIRN_GGUF_Q4_1))
        ok(rc, &err, "cpu mat_load");
}

static void wmat_free(wmat *w)
{
    G->i->mat_free(G, &w->g);
    if (w->c_ok)
        C->i->mat_free(C, &w->c);
    free(w->host);
}

/* y[t * rows + r] = dot(row r, x[t]) from the dequantized weights, in double. */
static void wmat_ref(const wmat *w, const float *x, int n_tok, float *y)
{
    int64_t rows = (int64_t)w->t.dims[1], cols = (int64_t)w->t.dims[0];
    float *wf = xmalloc(sizeof(float) * (size_t)(rows * cols));
    assert_int_equal(cairn_gguf_dequantize(&w->t, wf, (size_t)(rows * cols), NULL), 0);
    for (int t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < rows; r++) {
            double s = 0.0;
            for (int64_t i = 0; i < cols; i++)
                s += (double)wf[r * cols + i] * x[(int64_t)t * cols + i];
            y[(int64_t)t * rows + r] = (float)s;
        }
    free(wf);
}

static bool is_quant(uint32_t type)
{
    return cairn_gguf_type_block_size(type) > 1;
}

/* The CUDA backend's token count up to which products run as GEMV (CAIRN__GEMV_MAX_TOKENS in
 * generation/kernels/cuda/common.cuh); more tokens go to cuBLAS. */
#define GPU_GEMV_MAX_TOKENS 16
#define GPU_GEMV_FLOAT_MAX_TOKENS 2 /* BF16 and F32 weights: cuBLAS from 3 tokens on */

/* Whether the GPU takes a product of n_tok tokens against this type through cuBLAS. */
static bool gpu_cublas(uint32_t type, int n_tok)
{
    if (type == CAIRN_GGUF_BF16 || type == CAIRN_GGUF_F32)
        return n_tok > GPU_GEMV_FLOAT_MAX_TOKENS;
    return n_tok > GPU_GEMV_MAX_TOKENS;
}

static float bf16_round(float x) { return cairn_gguf_bf16_to_f32(cairn_gguf_f32_to_bf16(x)); }

/*
 * What the CUDA backend computes, in double: on its GEMV path (few tokens) quantized weights
 * meet the activations quantized as it quantizes them (blocks of 32 values, scale amax / 127
 * kept at F16 precision, values rounded to nearest even); on its cuBLAS path the activations
 * and the weights (but F32 ones) are rounded to BF16. The GPU's results then differ from these
 * only by FP32 summation, which makes this a far tighter check of its indexing than the
 * comparison with the CPU, whose activations round differently.
 */
static void gpu_model_ref(const wmat *w, const float *x, int n_tok, float *y)
{
    int64_t rows = (int64_t)w->t.dims[1], cols = (int64_t)w->t.dims[0];
    uint32_t type = w->t.type;
    float *wf = xmalloc(sizeof(float) * (size_t)(rows * cols));
    float *xr = xmalloc(sizeof(float) * (size_t)(n_tok * cols));
    assert_int_equal(cairn_gguf_dequantize(&w->t, wf, (size_t)(rows * cols), NULL), 0);
    memcpy(xr, x, sizeof(float) * (size_t)(n_tok * cols));
    if (gpu_cublas(type, n_tok) && type != CAIRN_GGUF_F32) {
        for (int64_t i = 0; i < rows * cols; i++)
            wf[i] = bf16_round(wf[i]);
        for (int64_t i = 0; i < n_tok * cols; i++)
            xr[i] = bf16_round(xr[i]);
    } else if (n_tok <= GPU_GEMV_MAX_TOKENS && is_quant(type)) {
        for (int64_t b = 0; b < n_tok * cols / 32; b++) {
            float *xb = xr + b * 32, amax = 0.0f;
            for (int j = 0; j < 32; j++)
                amax = fabsf(xb[j]) > amax ? fabsf(xb[j]) : amax;
            float id = amax > 0.0f ? 127.0f / amax : 0.0f;
            float d = cairn_gguf_f16_to_f32(cairn_gguf_f32_to_f16(amax / 127.0f));
            for (int j = 0; j < 32; j++)
                xb[j] = d * nearbyintf(xb[j] * id);
        }
    }
    for (int t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < rows; r++) {
            double s = 0.0;
            for (int64_t i = 0; i < cols; i++)
                s += (double)wf[r * cols + i] * xr[(int64_t)t * cols + i];
            y[(int64_t)t * rows + r] = (float)s;
        }
    free(wf);
    free(xr);
}

/*
 * Tolerances of the matrix products (normalized max error over all outputs):
 *  - float weights on the GEMV path: both backends multiply in FP32, in different orders:
 *    1e-5;
 *  - the cuBLAS path rounds activations and (non-F32) weights to BF16 (8 significant bits,
 *    relative error <= 2^-9 each): a sum of random-signed terms errs by about 2^-9 sqrt(2/3)
 *    times its root-sum-square, and the largest of thousands of outputs reaches ~4 sigma of
 *    that against a maximum ~3 sigma of the outputs: ~3e-3; we allow 1e-2 (F32 weights go to
 *    cuBLAS in FP32: 1e-4);
 *  - quantized weights on the GEMV path: each backend rounds the activations to 8 bits,
 *    the CPU in blocks of 32 (Q4_0, Q5_0, Q8_0) or 256 (Q4_K, Q6_K), the GPU in blocks of 32:
 *    each product term then errs by ~1/254 of its block's largest activation, so two
 *    independent roundings differ by ~0.6% of a term's size, at random sign; over the largest
 *    of the outputs that stays below 1e-2 in our runs and we allow 3e-2.
 */
static double product_tol(uint32_t type, int n_tok)
{
    if (gpu_cublas(type, n_tok))
        return type == CAIRN_GGUF_F32 ? 1e-4 : is_quant(type) ? 3e-2 : 1e-2;
    return is_quant(type) ? 3e-2 : 1e-5;
}

static const uint32_t TYPES[] = {CAIRN_GGUF_F32,  CAIRN_GGUF_F16,  CAIRN_GGUF_BF16,
                                 CAIRN_GGUF_Q8_0, CAIRN_GGUF_Q4_0, CAIRN_GGUF_Q4_1,
                                 CAIRN_GGUF_Q5_0, CAIRN_GGUF_Q4_K, CAIRN_GGUF_Q6_K};
#define N_TYPES (sizeof TYPES / sizeof TYPES[0])
static const int TOKEN_COUNTS[] = {1, 2, 7, 33, 520};
#define N_COUNTS (sizeof TOKEN_COUNTS / sizeof TOKEN_COUNTS[0])

/* ---- Element-wise stages ------------------------------------------------------------------- */

/* rmsnorm: FP32 on both sides (the CPU sums squares in double): 1e-5. In place and not. Rows
 * of a multiple of 4 values up to 16384 take the vector kernel (the row in registers), the
 * others (1002, 20000) the scalar one. */
static void test_rmsnorm(void **state)
{
    (void)state;
    static const int rows[] = {1, 7, 33}, ns[] = {64, 1000, 1002, 2304, 4096, 20000};
    tbatch tb;
    tbatch_simple(&tb, 1, 16);
    set_batch(&tb);
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++)
            for (int with_w = 0; with_w < 2; with_w++) {
                int r = rows[i], n = ns[j];
                pbuf x = pb_rand((size_t)r * n, 3.0f), o = pb_rand((size_t)r * n, 1.0f);
                pbuf w = pb_rand((size_t)n, 1.0f);
                cairn_error err = {0};
                const float *wg = with_w ? w.g : NULL, *wc = with_w ? w.c : NULL;
                ok(G->i->rmsnorm(G, o.g, x.g, wg, r, n, 1e-6f, &err), &err, "gpu rmsnorm");
                ok(C->i->rmsnorm(C, o.c, x.c, wc, r, n, 1e-6f, &err), &err, "cpu rmsnorm");
                /* and in place */
                ok(G->i->rmsnorm(G, x.g, x.g, wg, r, n, 1e-5f, &err), &err, "gpu rmsnorm");
                ok(C->i->rmsnorm(C, x.c, x.c, wc, r, n, 1e-5f, &err), &err, "cpu rmsnorm");
                char what[96];
                snprintf(what, sizeof what, "rmsnorm %d x %d%s", r, n, with_w ? " * w" : "");
                expect_pb(what, &o, 1e-5);
                snprintf(what, sizeof what, "rmsnorm %d x %d%s, in place", r, n,
                         with_w ? " * w" : "");
                expect_pb(what, &x, 1e-5);
                pb_free(&x);
                pb_free(&o);
                pb_free(&w);
            }
}

/* add_norm: FP32 on both sides: 1e-5, for every combination of post and next norms; rows of
 * 640 and 4096 values take the vector kernel, rows of 642 the scalar one. */
static void test_add_norm(void **state)
{
    (void)state;
    static const int ns[] = {640, 642, 4096};
    for (size_t k = 0; k < N_COUNTS * 3; k++) {
        const int n = ns[k % 3];
        int T = TOKEN_COUNTS[k / 3];
        tbatch tb;
        tbatch_simple(&tb, T, 16);
        set_batch(&tb);
        for (int mode = 0; mode < 4; mode++) {
            bool post = mode & 1, next = mode & 2;
            pbuf x = pb_rand((size_t)T * n, 4.0f), a = pb_rand((size_t)T * n, 2.0f);
            pbuf h = pb_rand((size_t)T * n, 1.0f), pw = pb_rand((size_t)n, 1.0f),
                 nw = pb_rand((size_t)n, 1.0f);
            cairn_error err = {0};
            ok(G->i->add_norm(G, x.g, a.g, post ? pw.g : NULL, next ? nw.g : NULL, h.g, n,
                              1e-6f, &err), &err, "gpu add_norm");
            ok(C->i->add_norm(C, x.c, a.c, post ? pw.c : NULL, next ? nw.c : NULL, h.c, n,
                              1e-6f, &err), &err, "cpu add_norm");
            char what[96];
            snprintf(what, sizeof what, "add_norm T=%d n=%d post=%d next=%d: x", T, n, post,
                     next);
            expect_pb(what, &x, 1e-5);
            snprintf(what, sizeof what, "add_norm T=%d n=%d post=%d next=%d: a", T, n, post,
                     next);
            expect_pb(what, &a, 1e-5);
            if (next) {
                snprintf(what, sizeof what, "add_norm T=%d n=%d post=%d next=%d: h", T, n, post,
                         next);
                expect_pb(what, &h, 1e-5);
            }
            pb_free(&x);
            pb_free(&a);
            pb_free(&h);
            pb_free(&pw);
            pb_free(&nw);
        }
    }
}

/* gated: SiLU in FP32 (expf on each side: 1e-5); GELU at half precision on both sides, so a
 * tanh one ulp apart can round to the neighbouring F16 value: 2^-11 relative, 1e-3. Inputs
 * reach past +-10 (where GELU passes x through). */
static void test_gated(void **state)
{
    (void)state;
    const int n = 1000;
    static const int counts[] = {1, 33};
    for (size_t k = 0; k < 2; k++)
        for (int act = 0; act < 2; act++) {
            int T = counts[k];
            tbatch tb;
            tbatch_simple(&tb, T, 16);
            set_batch(&tb);
            pbuf a = pb_rand((size_t)T * n, 12.0f), b = pb_rand((size_t)T * n, 2.0f);
            cairn_error err = {0};
            ok(G->i->gated(G, a.g, b.g, n, act, &err), &err, "gpu gated");
            ok(C->i->gated(C, a.c, b.c, n, act, &err), &err, "cpu gated");
            char what[96];
            snprintf(what, sizeof what, "gated %s T=%d", act ? "GELU-tanh" : "SiLU", T);
            expect_pb(what, &a, act ? 1e-3 : 1e-5);
            pb_free(&a);
            pb_free(&b);
        }
}

/* embed: both decode the same blocks with the same float operations: 1e-6 (a fused
 * multiply-add on the GPU may round the Q4_K min term once instead of twice). */
static void test_embed(void **state)
{
    (void)state;
    const int n_vocab = 300;
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = TYPES[ti];
        int64_t cols = is_quant(type) ? 512 : 200;
        wmat w;
        wmat_make(&w, "token_embd.weight", type, n_vocab, cols, CAIRN_BMAT_ROWS);
        assert_true(w.c_ok);
        static const int counts[] = {1, 7, 33};
        for (size_t k = 0; k < 3; k++) {
            int T = counts[k];
            tbatch tb;
            tbatch_simple(&tb, T, n_vocab);
            tb.tokens[0] = n_vocab - 1; /* the last row too */
            set_batch(&tb);
            pbuf x = pb_rand((size_t)T * cols, 1.0f);
            cairn_error err = {0};
            float scale = k == 1 ? sqrtf((float)cols) : 1.0f;
            ok(G->i->embed(G, &w.g, scale, x.g, &err), &err, "gpu embed");
            ok(C->i->embed(C, &w.c, scale, x.c, &err), &err, "cpu embed");
            char what[96];
            snprintf(what, sizeof what, "embed %s T=%d scale %.1f", cairn_gguf_type_name(type),
                     T, (double)scale);
            expect_pb(what, &x, 1e-6);
            pb_free(&x);
        }
        wmat_free(&w);
    }
}

/* ---- Matrix products --------------------------------------------------------------------- */

/* One product of T tokens against w on both backends (or the GPU against the double
 * reference where the CPU has no kernel). */
static void check_matmul(wmat *w, int T, const char *label)
{
    int64_t rows = (int64_t)w->t.dims[1], cols = (int64_t)w->t.dims[0];
    tbatch tb;
    tbatch_simple(&tb, T, 16);
    set_batch(&tb);
    float *xh = xmalloc(sizeof(float) * (size_t)(T * cols));
    fill(xh, (size_t)(T * cols), 1.0f);
    for (int64_t i = 0; i < T * cols; i += 37)
        xh[i] *= 4.0f; /* a few larger activations, as real ones have */
    pbuf x = pb_new(sizeof(float) * (size_t)(T * cols), xh);
    pbuf y = pb_rand((size_t)(T * rows), 1.0f);
    cairn_error err = {0};
    const cairn_bmat *wg = &w->g;
    float *yg = y.g, *yc = y.c;
    ok(G->i->matmul(G, &wg, 1, x.g, &yg, &err), &err, "gpu matmul");
    float *got = xmalloc(y.bytes), *ref = xmalloc(y.bytes);
    char what[128];
    snprintf(what, sizeof what, "%s %s %lldx%lld T=%d%s", label,
             cairn_gguf_type_name(w->t.type), (long long)rows, (long long)cols, T,
             w->c_ok ? "" : " (vs dequantized, double)");
    if (w->c_ok) {
        const cairn_bmat *wc = &w->c;
        ok(C->i->matmul(C, &wc, 1, x.c, &yc, &err), &err, "cpu matmul");
        pb_get(&y, got, ref);
    } else {
        ok(G->i->download(G, got, y.g, y.bytes, &err), &err, "gpu download");
        wmat_ref(w, xh, T, ref);
    }
    expect_close(what, got, ref, (size_t)(T * rows), product_tol(w->t.type, T));
    /* Against its own rounding (gpu_model_ref): FP32 sums only, 1e-5; on the cuBLAS path a
     * dequantized weight one float ulp off may round to the neighbouring BF16 value (2^-8 of
     * one term): 2e-4. */
    gpu_model_ref(w, xh, T, ref);
    snprintf(what, sizeof what, "%s %s %lldx%lld T=%d vs its own rounding", label,
             cairn_gguf_type_name(w->t.type), (long long)rows, (long long)cols, T);
    expect_close(what, got, ref, (size_t)(T * rows), gpu_cublas(w->t.type, T) ? 2e-4 : 1e-5);
    free(got);
    free(ref);
    free(xh);
    pb_free(&x);
    pb_free(&y);
}

/* Every product in one GEMV shape (CAIRN_CUDA_GEMV: "warp", rows a warp, "block", rows a
 * block, or NULL: the default, the lane form for matrices in the lane layout; CAIRN_CUDA_GEMV_ROWS:
 * rows a warp or block, NULL for the default's choice), the weights loaded in the lane layout
 * where their type takes it, or with rows whole if rows_whole (CAIRN_CUDA_LANE_LAYOUT=0);
 * test_matmul runs each form with its default rows and with the other count, and the row forms
 * on both layouts. */
static void matmul_form(const char *form, const char *rows, bool rows_whole)
{
    char label[96];
    snprintf(label, sizeof label, "matmul (%s, rows %s, %s layout)", form ? form : "default",
             rows ? rows : "auto", rows_whole ? "row" : "lane");
    if (form)
        setenv("CAIRN_CUDA_GEMV", form, 1);
    if (rows)
        setenv("CAIRN_CUDA_GEMV_ROWS", rows, 1);
    setenv("CAIRN_CUDA_LANE_LAYOUT", rows_whole ? "0" : "1", 1);
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = TYPES[ti];
        /* 98 rows: not a multiple of the 4 rows of a GEMV block. Float types also run 90
         * columns, which is no multiple of a 16-byte unit (the scalar GEMV). */
        wmat w;
        wmat_make(&w, "blk.0.ffn_up.weight", type, 98, 512, CAIRN_BMAT_MATMUL);
        reserve_both();
        for (size_t k = 0; k < N_COUNTS; k++)
            check_matmul(&w, TOKEN_COUNTS[k], label);
        wmat_free(&w);
        /* A tall matrix: the GEMV takes two rows a warp from 4 x 4 x 132 (an H100's SMs) =
         * 2112 rows on, the last warp here holding one; rows of 2304 values make the lanes
         * take a second unit each trip, part of them past the row's end. */
        wmat_make(&w, "blk.0.ffn_gate.weight", type, 2113, 2304, CAIRN_BMAT_MATMUL);
        reserve_both();
        check_matmul(&w, 1, label);
        check_matmul(&w, 7, label);
        check_matmul(&w, 33, label);
        wmat_free(&w);
        if (!is_quant(type)) {
            wmat_make(&w, "blk.0.attn_q.weight", type, 50, 90, CAIRN_BMAT_MATMUL);
            reserve_both();
            check_matmul(&w, 3, label);
            check_matmul(&w, 33, label);
            wmat_free(&w);
        }
        if (type == CAIRN_GGUF_Q8_0) { /* 5 blocks a row: no whole lane pieces, rows whole */
            wmat_make(&w, "blk.0.attn_q.weight", type, 50, 160, CAIRN_BMAT_MATMUL);
            reserve_both();
            check_matmul(&w, 1, label);
            check_matmul(&w, 7, label);
            wmat_free(&w);
        }
    }
    unsetenv("CAIRN_CUDA_GEMV");
    unsetenv("CAIRN_CUDA_GEMV_ROWS");
    unsetenv("CAIRN_CUDA_LANE_LAYOUT");
}

/* The lane form in one shape (CAIRN_CUDA_LANE_WARPS, CAIRN_CUDA_LANE_U). */
static void matmul_lane(const char *warps, const char *u)
{
    setenv("CAIRN_CUDA_LANE_WARPS", warps, 1);
    setenv("CAIRN_CUDA_LANE_U", u, 1);
    matmul_form(NULL, NULL, false);
    unsetenv("CAIRN_CUDA_LANE_WARPS");
    unsetenv("CAIRN_CUDA_LANE_U");
}

static void test_matmul(void **state)
{
    (void)state;
    matmul_form(NULL, NULL, false); /* the defaults: the lane form where the layout is lane's */
    matmul_lane("4", "1");          /* 2304 columns: 9 K-quant pieces over 4 warps */
    matmul_lane("16", "2");         /* more warps than pieces */
    matmul_form("warp", NULL, false); /* the row forms read the lane layout too */
    matmul_form("block", NULL, false);
    matmul_form("warp", NULL, true);
    matmul_form("block", NULL, true);
    matmul_form("warp", "2", true); /* two rows a warp on short matrices too */
    matmul_form("block", "1", true);
    matmul_form("warp", "4", true); /* four rows: 98 and 2113 leave a last warp or block short */
    matmul_form("block", "4", true);
}

/*
 * The cuBLAS path's weight tiles (the other tests multiply the BF16 cache's whole copies) in
 * a backend opened with small ones (CAIRN_CUDA_WTILE_MIB=1:
 * a 2113 x 2304 matrix in ten tiles), each decoded on a stream of its own while cuBLAS
 * multiplies the one before it (CAIRN_CUDA_TILE_OVERLAP=1): the products as test_matmul checks
 * them, for every type that takes tiles, at 33 tokens (a prefill) and at 17 (the fewest).
 */
static void test_matmul_tiles(void **state)
{
    (void)state;
    cairn_backend *keep = G;
    cairn_error err = {0};
    setenv("CAIRN_CUDA_WTILE_MIB", "1", 1);
    setenv("CAIRN_CUDA_TILE_OVERLAP", "1", 1);
    setenv("CAIRN_CUDA_BF16_CACHE", "0", 1); /* tiles, not the cache's whole copies */
    int rc = cairn_backend_cuda_open(&G, 0, &err);
    unsetenv("CAIRN_CUDA_WTILE_MIB");
    unsetenv("CAIRN_CUDA_TILE_OVERLAP");
    unsetenv("CAIRN_CUDA_BF16_CACHE");
    ok(rc, &err, "cuda open with small overlapping tiles");
    reserve_both();
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = TYPES[ti];
        if (!is_quant(type) && type != CAIRN_GGUF_F16)
            continue; /* BF16 and F32 go to cuBLAS as they are */
        wmat w;
        wmat_make(&w, "blk.0.ffn_gate.weight", type, 2113, 2304, CAIRN_BMAT_MATMUL);
        reserve_both();
        check_matmul(&w, 33, "matmul (1 MiB tiles, overlapped)");
        check_matmul(&w, GPU_GEMV_MAX_TOKENS + 1, "matmul (1 MiB tiles, overlapped)");
        wmat_free(&w);
    }
    cairn_backend_close(G);
    G = keep;
    reserve_both();
}

/* Free GPU memory that reserve takes in a fresh backend (CAIRN_CUDA_BF16_CACHE=cache) after a
 * 2113 x 2304 Q4_K matrix is loaded; the products of 33 tokens are checked there too. */
static size_t reserve_cost(const char *cache)
{
    cairn_backend *keep = G;
    cairn_error err = {0};
    setenv("CAIRN_CUDA_BF16_CACHE", cache, 1);
    int rc = cairn_backend_cuda_open(&G, 0, &err);
    unsetenv("CAIRN_CUDA_BF16_CACHE");
    ok(rc, &err, "cuda open");
    wmat w;
    wmat_make(&w, "blk.0.ffn_gate.weight", CAIRN_GGUF_Q4_K, 2113, 2304, CAIRN_BMAT_MATMUL);
    size_t before, after, total;
    assert_int_equal(G->i->mem_info(G, &before, &total), 0);
    reserve_both();
    assert_int_equal(G->i->mem_info(G, &after, &total), 0);
    char label[64];
    snprintf(label, sizeof label, "matmul (BF16 cache %s)", cache);
    check_matmul(&w, 33, label);
    wmat_free(&w);
    cairn_backend_close(G);
    G = keep;
    return before - after;
}

/* The BF16 cache holds a loaded matrix decoded whole (2 bytes a value beyond what the tiles'
 * reserve takes) and its products match the CPU's as the tiles' do. */
static void test_bf16_cache(void **state)
{
    (void)state;
    const size_t with = reserve_cost("1"), without = reserve_cost("0");
    const size_t copy = (size_t)2113 * 2304 * 2;
    if (with < without + copy)
        fail_msg("reserve took %zu bytes with the BF16 cache and %zu without: the %zu-byte copy "
                 "is missing", with, without, copy);
    reserve_both();
}

/*
 * The stages that write a product's input (rmsnorm, add_norm's h, gated) leave its int8 form
 * in the scratch, and the product then skips its own quantization: the products must equal,
 * bit for bit, those of a copy of the same rows quantized afresh; and once the rows change by
 * another way (an upload), the product must follow the new rows, not the stale quantization.
 */
static void expect_same_floats(const char *what, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)))
            fail_msg("%s: output %zu is %.9g after the fused quantization, %.9g after a fresh "
                     "one", what, i, (double)a[i], (double)b[i]);
}

static void product_of(const wmat *w, const float *x, float *y)
{
    cairn_error err = {0};
    const cairn_bmat *wg = &w->g;
    ok(G->i->matmul(G, &wg, 1, x, &y, &err), &err, "gpu matmul");
}

/* On the GPU: w x into y1 (from the int8 rows the stage that wrote x may have left), then w
 * over a copy of x (nx floats, into copy) into y2 (quantized afresh); ny outputs, equal bit for
 * bit. */
static void expect_same_as_copy(const char *what, const wmat *w, const float *x, float *copy,
                                size_t nx, float *y1, float *y2, size_t ny)
{
    cairn_error err = {0};
    product_of(w, x, y1);
    ok(G->i->copy(G, copy, x, sizeof(float) * nx, &err), &err, "gpu copy");
    product_of(w, copy, y2);
    float *g1 = xmalloc(sizeof(float) * ny), *g2 = xmalloc(sizeof(float) * ny);
    ok(G->i->download(G, g1, y1, sizeof(float) * ny, &err), &err, "gpu download");
    ok(G->i->download(G, g2, y2, sizeof(float) * ny, &err), &err, "gpu download");
    expect_same_floats(what, g1, g2, ny);
    free(g1);
    free(g2);
}

static void test_fused_quantization(void **state)
{
    (void)state;
    const int n = 512, rows = 96;
    static const uint32_t types[] = {CAIRN_GGUF_Q4_K, CAIRN_GGUF_Q8_0};
    static const int counts[] = {1, 2, 7};
    for (size_t ti = 0; ti < 2; ti++) {
        wmat w;
        wmat_make(&w, "blk.0.ffn_down.weight", types[ti], rows, n, CAIRN_BMAT_MATMUL);
        reserve_both();
        for (size_t k = 0; k < 3; k++) {
            const int T = counts[k];
            const size_t ny = (size_t)T * rows, nx = (size_t)T * n;
            tbatch tb;
            tbatch_simple(&tb, T, 16);
            set_batch(&tb);
            pbuf x = pb_rand(nx, 3.0f), a = pb_rand(nx, 2.0f), h = pb_rand(nx, 1.0f);
            pbuf h2 = pb_rand(nx, 1.0f), nw = pb_rand((size_t)n, 1.0f);
            pbuf y1 = pb_rand(ny, 1.0f), y2 = pb_rand(ny, 1.0f);
            cairn_error err = {0};
            char what[96];
            for (int stage = 0; stage < 4; stage++) {
                const char *name = stage == 0 ? "rmsnorm" : stage == 1 ? "add_norm"
                                   : stage == 2 ? "gated" : "upload after add_norm";
                if (stage == 0)
                    ok(G->i->rmsnorm(G, h.g, x.g, nw.g, T, n, 1e-6f, &err), &err, "rmsnorm");
                else if (stage == 2)
                    ok(G->i->gated(G, h.g, a.g, n, CAIRN_ACT_SILU, &err), &err, "gated");
                else
                    ok(G->i->add_norm(G, x.g, a.g, NULL, nw.g, h.g, n, 1e-6f, &err), &err,
                       "add_norm");
                if (stage == 3) { /* new rows by another way: the product must see them */
                    float *fresh = xmalloc(sizeof(float) * nx);
                    fill(fresh, nx, 5.0f);
                    ok(G->i->upload(G, h.g, fresh, sizeof(float) * nx, &err), &err, "upload");
                    free(fresh);
                }
                snprintf(what, sizeof what, "%s then %s product, T=%d", name,
                         cairn_gguf_type_name(types[ti]), T);
                expect_same_as_copy(what, &w, h.g, h2.g, nx, y1.g, y2.g, ny);
            }
            pb_free(&x);
            pb_free(&a);
            pb_free(&h);
            pb_free(&h2);
            pb_free(&nw);
            pb_free(&y1);
            pb_free(&y2);
        }
        wmat_free(&w);
    }
}

/* Three matrices of one x in one call, as q, k, v are. Sets of one type go in one GEMV
 * launch (rows 98, 30, 30: blocks end inside each matrix, never across two); a mixed set
 * shares int8 activations among its quantized matrices and not with the float one. */
static void check_shared(const uint32_t types[3], const int rows[3], int n_w)
{
    static const char *names[] = {"blk.0.attn_q.weight", "blk.0.attn_k.weight",
                                  "blk.0.attn_v.weight"};
    wmat w[3];
    for (int i = 0; i < n_w; i++)
        wmat_make(&w[i], names[i], types[i], rows[i], 256, CAIRN_BMAT_MATMUL);
    reserve_both();
    static const int counts[] = {1, 2, 7, 33};
    for (size_t k = 0; k < 4; k++) {
        int T = counts[k];
        tbatch tb;
        tbatch_simple(&tb, T, 16);
        set_batch(&tb);
        pbuf x = pb_rand((size_t)T * 256, 1.0f);
        pbuf y[3];
        const cairn_bmat *wg[3], *wc[3];
        float *yg[3], *yc[3];
        for (int i = 0; i < n_w; i++) {
            y[i] = pb_rand((size_t)T * (size_t)w[i].t.dims[1], 1.0f);
            wg[i] = &w[i].g;
            wc[i] = &w[i].c;
            yg[i] = y[i].g;
            yc[i] = y[i].c;
        }
        cairn_error err = {0};
        ok(G->i->matmul(G, wg, n_w, x.g, yg, &err), &err, "gpu matmul");
        ok(C->i->matmul(C, wc, n_w, x.c, yc, &err), &err, "cpu matmul");
        for (int i = 0; i < n_w; i++) {
            char what[96];
            snprintf(what, sizeof what, "matmul of %d, #%d %s %d rows, T=%d", n_w, i,
                     cairn_gguf_type_name(w[i].t.type), rows[i], T);
            expect_pb(what, &y[i], product_tol(w[i].t.type, T));
            pb_free(&y[i]);
        }
        pb_free(&x);
    }
    for (int i = 0; i < n_w; i++)
        wmat_free(&w[i]);
}

static void test_matmul_shared(void **state)
{
    (void)state;
    static const uint32_t mixed[3] = {CAIRN_GGUF_Q8_0, CAIRN_GGUF_Q4_K, CAIRN_GGUF_F16};
    static const uint32_t q4k[3] = {CAIRN_GGUF_Q4_K, CAIRN_GGUF_Q4_K, CAIRN_GGUF_Q4_K};
    static const uint32_t q6k[3] = {CAIRN_GGUF_Q6_K, CAIRN_GGUF_Q6_K, CAIRN_GGUF_Q6_K};
    static const uint32_t bf16[3] = {CAIRN_GGUF_BF16, CAIRN_GGUF_BF16, CAIRN_GGUF_BF16};
    static const uint32_t pair[3] = {CAIRN_GGUF_Q4_K, CAIRN_GGUF_Q4_K, CAIRN_GGUF_Q6_K};
    static const int even[3] = {128, 64, 64}, odd[3] = {98, 30, 30};
    check_shared(mixed, even, 3);
    check_shared(q4k, odd, 3);
    check_shared(q6k, odd, 3);
    check_shared(bf16, odd, 3);
    check_shared(pair, odd, 3); /* q, k in one launch; v in its own */
    check_shared(q4k, odd, 2);  /* gate and up */
    setenv("CAIRN_CUDA_GEMV", "block", 1); /* the block form's sets */
    check_shared(q4k, odd, 3);
    unsetenv("CAIRN_CUDA_GEMV");
}

/* logits: the flagged rows, normalised, projected, into host memory in batch order. The
 * tolerances are the products' (the norm adds FP32 rounding only). */
static void test_logits(void **state)
{
    (void)state;
    static const uint32_t types[] = {CAIRN_GGUF_Q8_0, CAIRN_GGUF_Q6_K, CAIRN_GGUF_F16,
                                     CAIRN_GGUF_BF16, CAIRN_GGUF_Q4_1};
    const int n = 256, vocab = 1000;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        wmat w;
        wmat_make(&w, "output.weight", types[ti], vocab, n,
                  CAIRN_BMAT_LOGITS | CAIRN_BMAT_ROWS);
        reserve_both();
        static const int counts[] = {1, 7, 40};
        for (size_t k = 0; k < 3; k++) {
            int T = counts[k];
            tbatch tb;
            tbatch_simple(&tb, T, 16);
            /* flags: the last token; of 7, tokens 2 and 6; of 40, 20 of them (the cuBLAS
             * path) */
            int n_out = 0;
            for (int t = 0; t < T; t++) {
                tb.logits[t] = T == 1 || (T == 7 && (t == 2 || t == 6)) || (T == 40 && t % 2);
                n_out += tb.logits[t];
            }
            set_batch(&tb);
            float *xh = xmalloc(sizeof(float) * (size_t)(T * n));
            fill(xh, (size_t)(T * n), 3.0f);
            pbuf x = pb_new(sizeof(float) * (size_t)(T * n), xh);
            float *nh = xmalloc(sizeof(float) * (size_t)n);
            fill(nh, (size_t)n, 1.0f);
            pbuf norm = pb_new(sizeof(float) * (size_t)n, nh);
            float *got = xmalloc(sizeof(float) * (size_t)n_out * vocab);
            float *ref = xmalloc(sizeof(float) * (size_t)n_out * vocab);
            cairn_error err = {0};
            ok(G->i->logits(G, &w.g, norm.g, 1e-6f, x.g, n, got, &err), &err, "gpu logits");
            if (w.c_ok) {
                ok(C->i->logits(C, &w.c, norm.c, 1e-6f, x.c, n, ref, &err), &err,
                   "cpu logits");
            } else { /* Q4_1: normalise on the host, multiply the dequantized rows */
                float *rows = xmalloc(sizeof(float) * (size_t)n_out * n);
                int j = 0;
                for (int t = 0; t < T; t++) {
                    if (!tb.logits[t])
                        continue;
                    double ss = 0.0;
                    for (int i = 0; i < n; i++)
                        ss += (double)xh[t * n + i] * xh[t * n + i];
                    float sc = 1.0f / sqrtf((float)(ss / n) + 1e-6f);
                    for (int i = 0; i < n; i++)
                        rows[j * n + i] = xh[t * n + i] * sc * nh[i];
                    j++;
                }
                wmat_ref(&w, rows, n_out, ref);
                free(rows);
            }
            char what[96];
            snprintf(what, sizeof what, "logits %s T=%d (%d rows)",
                     cairn_gguf_type_name(types[ti]), T, n_out);
            expect_close(what, got, ref, (size_t)n_out * vocab, product_tol(types[ti], n_out));
            free(got);
            free(ref);
            free(xh);
            free(nh);
            pb_free(&x);
            pb_free(&norm);
        }
        wmat_free(&w);
    }
}

/* ---- What comes back of the logits rows: logits_pick ---------------------------------------- */

/* F16 output rows for the pick tests: random, but rows 0..9 a copy of row 10 (ties), row 11
 * zero (0 logits), row 12 +inf, row 13 -inf and row 14 NaN (through columns 0 and 1, which
 * the inputs keep positive); sparse: all but every 97th row from 20 on -inf too (fewer
 * finite logits than a pick asks for). */
static uint16_t *pick_weights(int vocab, int n, bool sparse)
{
    uint16_t *w = xmalloc(sizeof *w * (size_t)vocab * (size_t)n);
    float *r = xmalloc(sizeof(float) * (size_t)n);
    for (int v = 0; v < vocab; v++) {
        fill(r, (size_t)n, 1.0f);
        for (int i = 0; i < n; i++)
            w[(size_t)v * n + i] = cairn_gguf_f32_to_f16(v == 11 ? 0.0f : r[i]);
    }
    for (int v = 0; v < 10; v++)
        memcpy(w + (size_t)v * n, w + (size_t)10 * n, sizeof *w * (size_t)n);
    const uint16_t pinf = 0x7C00, ninf = 0xFC00;
    w[(size_t)12 * n] = pinf;
    w[(size_t)13 * n] = ninf;
    w[(size_t)14 * n] = pinf;
    w[(size_t)14 * n + 1] = ninf;
    for (int v = 20; sparse && v < vocab; v++)
        if (v % 97)
            w[(size_t)v * n] = ninf;
    free(r);
    return w;
}

/* logits_pick against the same rows whole (logits): whole rows bit for bit, and each pick's
 * entries exactly the row's first k, ties, zeros, infinities and NaN included. */
static void test_logits_pick(void **state)
{
    (void)state;
    enum { T = 6 };
    const int n = 256;
    static const int vocabs[] = {1000, 9001}, ks[T] = {0, 1, 7, 256, 40, 2};
    for (size_t vi = 0; vi < 2; vi++)
        for (int sparse = 0; sparse < 2; sparse++) {
            const int vocab = vocabs[vi];
            uint16_t *wh = pick_weights(vocab, n, sparse);
            cairn_gguf_tensor t = {.name = "output.weight", .type = CAIRN_GGUF_F16, .n_dims = 2,
                                   .dims = {(uint64_t)n, (uint64_t)vocab, 1, 1},
                                   .n_elements = (uint64_t)vocab * (uint64_t)n,
                                   .nbytes = sizeof *wh * (uint64_t)vocab * (uint64_t)n,
                                   .data = wh};
            cairn_bmat wg;
            cairn_error err = {0};
            ok(G->i->mat_load(G, &t, t.name, CAIRN_BMAT_LOGITS | CAIRN_BMAT_ROWS, &wg, &err),
               &err, "gpu mat_load");
            ok(G->i->reserve(G, MAX_TOKENS, MAX_CTX, MAX_GROUP, &err), &err, "gpu reserve");
            tbatch tb;
            tbatch_simple(&tb, T, 16);
            for (int i = 0; i < T; i++)
                tb.logits[i] = 1;
            ok(G->i->batch_set(G, &tb.b, &err), &err, "gpu batch_set");
            float *xh = xmalloc(sizeof(float) * (size_t)(T * n));
            fill(xh, (size_t)(T * n), 3.0f);
            for (int i = 0; i < T; i++)
                xh[i * n] = xh[i * n + 1] = 1.0f;
            float *nh = xmalloc(sizeof(float) * (size_t)n);
            for (int i = 0; i < n; i++)
                nh[i] = 1.0f;
            pbuf x = pb_new(sizeof(float) * (size_t)(T * n), xh), norm = pb_new(sizeof(float) * (size_t)n, nh);
            float *whole = xmalloc(sizeof(float) * (size_t)T * vocab);
            ok(G->i->logits(G, &wg, norm.g, 1e-6f, x.g, n, whole, &err), &err, "gpu logits");
            /* the pass is over and x may be scratch: the same rows again for the picks */
            pb_free(&x);
            x = pb_new(sizeof(float) * (size_t)(T * n), xh);
            ok(G->i->batch_set(G, &tb.b, &err), &err, "gpu batch_set");
            float *rows = xmalloc(sizeof(float) * (size_t)T * vocab);
            cairn_cand *cand = xmalloc(sizeof *cand * (size_t)T * CAIRN_BACKEND_MAX_PICK);
            cairn_bpick picks[T];
            for (int j = 0; j < T; j++)
                picks[j] = (cairn_bpick){ks[j], rows + (size_t)j * vocab,
                                         cand + (size_t)j * CAIRN_BACKEND_MAX_PICK};
            ok(G->i->logits_pick(G, &wg, norm.g, 1e-6f, x.g, n, picks, &err), &err,
               "gpu logits_pick");
            cairn_cand want[CAIRN_BACKEND_MAX_PICK];
            for (int j = 0; j < T; j++) {
                const float *ref = whole + (size_t)j * vocab;
                if (ks[j] == 0) {
                    assert_memory_equal(rows + (size_t)j * vocab, ref, sizeof(float) * vocab);
                    continue;
                }
                first_entries(ref, vocab, ks[j], want);
                const cairn_cand *got = picks[j].cand;
                for (int i = 0; i < ks[j]; i++)
                    if (got[i].id != want[i].id ||
                        memcmp(&got[i].logit, &want[i].logit, sizeof(float)))
                        fail_msg("logits_pick vocab %d%s row %d k %d: entry %d is {%g, %d}, "
                                 "want {%g, %d}", vocab, sparse ? " (sparse)" : "", j, ks[j], i,
                                 (double)got[i].logit, got[i].id, (double)want[i].logit,
                                 want[i].id);
            }
            print_message("  logits_pick vocab %d%s: rows of k 0, 1, 7, 256, 40, 2 as the "
                          "whole rows say\n", vocab, sparse ? " (sparse)" : "");
            /* a bad pick is refused, naming the row */
            picks[2].k = CAIRN_BACKEND_MAX_PICK + 1;
            assert_int_equal(G->i->logits_pick(G, &wg, norm.g, 1e-6f, x.g, n, picks, &err),
                             CAIRN_EINVAL);
            assert_non_null(strstr(err.msg, "row 2"));
            G->i->mat_free(G, &wg);
            free(wh);
            free(xh);
            free(nh);
            free(whole);
            free(rows);
            free(cand);
            pb_free(&x);
            pb_free(&norm);
        }
}

/* ---- The paged KV cache: qkv and attention -------------------------------------------------- */

#define BT 16     /* token rows a block */
#define WINDOW 40 /* group 1's sliding window */
#define N_LAYERS 3

/* Layers 0 and 2 share group 0 (full attention), layer 1 is group 1 (window). */
static const int LAYER_GROUP[N_LAYERS] = {0, 1, 0}, LAYER_INDEX[N_LAYERS] = {0, 0, 1};

typedef struct {
    int n_head, n_head_kv, hd;
    bool bias, norm, neox;
    float q_scale;
} attn_cfg;

static const attn_cfg CFGS[] = {
    {8, 8, 64, true, false, false, 1.0f},         /* Qwen2/Llama-like: biases, MHA */
    {16, 4, 128, false, true, true, 0.08838835f}, /* Gemma-like: q/k norms, q scaled, GQA 4 */
    {16, 2, 256, false, true, true, 1.0f},        /* head 256, GQA 8 */
    {6, 3, 36, false, false, false, 1.0f},        /* rows no multiple of 8: 4-byte K/V loads */
};

typedef struct {
    int kv_dim, n_blocks[2], max_table;
    size_t block_elems[2];
    pbuf k[2], v[2];
    cairn_bkv kg, kc;
    int32_t *tables; /* [group][seq][max_table] */
} kvfix;

/* Block tables for a scenario: per group and sequence, fresh random block ids for the blocks
 * its positions 0..ctx+n_new-1 touch, except that sequence i > 0 shares the first blocks of
 * sequence 0 that lie wholly before both their step tokens (a forked prefix), and that in the
 * window group the blocks wholly before the window of the sequence's first step token are
 * -1 (freed). */
static void kvfix_init(kvfix *f, const attn_cfg *cfg, const scenario *s)
{
    memset(f, 0, sizeof *f);
    f->kv_dim = cfg->n_head_kv * cfg->hd;
    int need = 0;
    for (int i = 0; i < s->n_seqs; i++) {
        int nb = (s->ctx[i] + s->n_new[i] + BT - 1) / BT;
        need += nb;
        f->max_table = nb + 1 > f->max_table ? nb + 1 : f->max_table;
    }
    f->tables = xmalloc(sizeof(int32_t) * 2 * (size_t)s->n_seqs * (size_t)f->max_table);
    for (int g = 0; g < 2; g++) {
        f->n_blocks[g] = need + 5;
        int *perm = xmalloc(sizeof(int) * (size_t)f->n_blocks[g]);
        for (int i = 0; i < f->n_blocks[g]; i++)
            perm[i] = i;
        for (int i = f->n_blocks[g] - 1; i > 0; i--) {
            int j = (int)(rnd() % (uint32_t)(i + 1)), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        int next = 0;
        for (int i = 0; i < s->n_seqs; i++) {
            int32_t *tab = f->tables + ((size_t)g * s->n_seqs + i) * f->max_table;
            int nb = (s->ctx[i] + s->n_new[i] + BT - 1) / BT;
            int shared = 0;
            if (i > 0) {
                int below = s->ctx[0] < s->ctx[i] ? s->ctx[0] : s->ctx[i];
                shared = below / BT < 2 ? below / BT : 2;
            }
            int lo = g == 1 ? s->ctx[i] - WINDOW + 1 : 0;
            for (int b = 0; b < f->max_table; b++) {
                if (b >= nb)
                    tab[b] = -1;
                else if (lo > 0 && (b + 1) * BT - 1 < lo)
                    tab[b] = -1; /* a freed window block: nothing in range reads it */
                else if (b < shared)
                    tab[b] = f->tables[((size_t)g * s->n_seqs) * f->max_table + b];
                else
                    tab[b] = perm[next++];
            }
        }
        free(perm);
        int layers = g == 0 ? 2 : 1;
        f->block_elems[g] = (size_t)layers * BT * f->kv_dim;
        size_t n = f->block_elems[g] * (size_t)f->n_blocks[g];
        uint16_t *h = xmalloc(n * sizeof(uint16_t));
        for (size_t i = 0; i < n; i++)
            h[i] = cairn_gguf_f32_to_f16(frand());
        f->k[g] = pb_new(n * sizeof(uint16_t), h);
        for (size_t i = 0; i < n; i++)
            h[i] = cairn_gguf_f32_to_f16(frand());
        f->v[g] = pb_new(n * sizeof(uint16_t), h);
        free(h);
    }
    for (int side = 0; side < 2; side++) {
        cairn_bkv *kv = side ? &f->kc : &f->kg;
        kv->n_groups = 2;
        for (int g = 0; g < 2; g++) {
            kv->group[g].k = side ? f->k[g].c : f->k[g].g;
            kv->group[g].v = side ? f->v[g].c : f->v[g].g;
            kv->group[g].block_elems = f->block_elems[g];
            kv->group[g].window = g == 1 ? WINDOW : 0;
        }
        kv->layer_group = LAYER_GROUP;
        kv->layer_index = LAYER_INDEX;
        kv->kv_dim = f->kv_dim;
        kv->block_tokens = BT;
        kv->max_table = f->max_table;
    }
}

static void kvfix_free(kvfix *f)
{
    for (int g = 0; g < 2; g++) {
        pb_free(&f->k[g]);
        pb_free(&f->v[g]);
    }
    free(f->tables);
}

/* An F16 pool of both backends as floats. */
static void pool_get(const pbuf *b, float *g, float *c)
{
    size_t n = b->bytes / sizeof(uint16_t);
    uint16_t *hg = xmalloc(b->bytes), *hc = xmalloc(b->bytes);
    pb_get(b, hg, hc);
    for (size_t i = 0; i < n; i++) {
        g[i] = cairn_gguf_f16_to_f32(hg[i]);
        c[i] = cairn_gguf_f16_to_f32(hc[i]);
    }
    free(hg);
    free(hc);
}

/* The CPU's pools to the GPU as well, so that attention starts from identical caches. */
static void pool_sync(pbuf *b)
{
    void *h = xmalloc(b->bytes);
    cairn_error err = {0};
    ok(C->i->download(C, h, b->c, b->bytes, &err), &err, "cpu download");
    ok(G->i->upload(G, b->g, h, b->bytes, &err), &err, "gpu upload");
    free(h);
}

/*
 * Right after a GPU attention into out: a product over out (which reads the quantized rows the
 * attention kernels leave for the output product, where they do) equals the same product over
 * a copy of out (which quantizes them itself), bit for bit: the two quantize the same floats
 * the same way. Its matrix (then reserve, whose scratch must cover its rows) and buffers are
 * made before the attention runs: an upload forgets the quantized rows.
 */
typedef struct {
    wmat w;
    pbuf y1, y2, o2;
    size_t ny;
} outq8;

static void outq8_matrix(outq8 *r, int qd)
{
    wmat_make(&r->w, "attn_output.weight", CAIRN_GGUF_Q8_0, 64, qd, CAIRN_BMAT_MATMUL);
    reserve_both();
}

static void outq8_buffers(outq8 *r, int T, size_t out_bytes)
{
    r->ny = (size_t)T * 64;
    r->y1 = pb_rand(r->ny, 1.0f);
    r->y2 = pb_rand(r->ny, 1.0f);
    r->o2 = pb_new(out_bytes, NULL);
}

static void outq8_check(outq8 *r, const pbuf *out, int T, int qd)
{
    char what[96];
    snprintf(what, sizeof what, "the product after attention (%d tokens, rows of %d)", T, qd);
    expect_same_as_copy(what, &r->w, out->g, r->o2.g, out->bytes / sizeof(float), r->y1.g,
                        r->y2.g, r->ny);
    pb_free(&r->y1);
    pb_free(&r->y2);
    pb_free(&r->o2);
}

/*
 * qkv, then attention, for one configuration and scenario, on layers 2 (full attention, the
 * second layer of its group) and 1 (window).
 * qkv tolerances: k and v before the cache in FP32 on both sides (the norm's sum, sin/cos to
 * an ulp or two): 1e-4; q is rounded to F16 after its scale on both sides, and values a float
 * ulp apart may round to neighbouring F16 values: 2^-11 relative, 1e-3; the pools hold F16 on
 * both sides, likewise 1e-3 (the whole pools are compared, so a row written to the wrong
 * place shows as a random-sized error).
 * attention tolerance: the CPU rounds the softmax probabilities to F16 before they weigh V
 * (ggml's arithmetic), the GPU keeps them in FP32: each weight errs by up to 2^-11 relative
 * at random sign, so the output errs by well under 2^-11 of the largest V value; normalized
 * by the largest output (itself a weighted average of V rows) we allow 3e-3.
 */
static void check_qkv_attention(const attn_cfg *cfg, const scenario *s)
{
    kvfix f;
    kvfix_init(&f, cfg, s);
    tbatch tb;
    tbatch_init(&tb, s, 2, f.max_table, f.tables, 16);
    const int T = tb.b.n_tokens, hd = cfg->hd, qd = cfg->n_head * hd, kd = f.kv_dim;
    outq8 oq;
    const bool q8 = qd % 32 == 0; /* Q8_0 rows are whole blocks */
    if (q8)
        outq8_matrix(&oq, qd);
    set_batch(&tb);
    for (int pass = 0; pass < 2; pass++) {
        const int layer = pass == 0 ? 2 : 1;
        pbuf q = pb_rand((size_t)T * qd, 2.0f), k = pb_rand((size_t)T * kd, 2.0f),
             v = pb_rand((size_t)T * kd, 2.0f);
        pbuf bq = pb_rand((size_t)qd, 0.5f), bk = pb_rand((size_t)kd, 0.5f),
             bv = pb_rand((size_t)kd, 0.5f);
        pbuf qn = pb_rand((size_t)hd, 1.0f), kn = pb_rand((size_t)hd, 1.0f);
        cairn_bqkv p = {.n_head = cfg->n_head, .n_head_kv = cfg->n_head_kv, .head_dim = hd,
                        .eps = 1e-6f, .rope_base = pass ? 10000.0f : 1000000.0f,
                        .rope_freq_scale = pass ? 1.0f : 0.5f, .rope_neox = cfg->neox,
                        .q_scale = cfg->q_scale, .layer = layer};
        cairn_bqkv pg = p, pc = p;
        if (cfg->bias) {
            pg.bq = bq.g, pg.bk = bk.g, pg.bv = bv.g;
            pc.bq = bq.c, pc.bk = bk.c, pc.bv = bv.c;
        }
        if (cfg->norm) {
            pg.q_norm = qn.g, pg.k_norm = kn.g;
            pc.q_norm = qn.c, pc.k_norm = kn.c;
        }
        pg.kv = &f.kg;
        pc.kv = &f.kc;
        cairn_error err = {0};
        ok(G->i->qkv(G, &pg, q.g, k.g, v.g, &err), &err, "gpu qkv");
        ok(C->i->qkv(C, &pc, q.c, k.c, v.c, &err), &err, "cpu qkv");
        char what[160];
        snprintf(what, sizeof what, "qkv %dh/%dkv x %d, %s, layer %d: q", cfg->n_head,
                 cfg->n_head_kv, hd, s->name, layer);
        expect_pb(what, &q, 1e-3);
        what[strlen(what) - 1] = 'k';
        expect_pb(what, &k, 1e-4);
        what[strlen(what) - 1] = 'v';
        expect_pb(what, &v, 1e-4);
        int g = LAYER_GROUP[layer];
        size_t n = f.k[g].bytes / sizeof(uint16_t);
        float *pgf = xmalloc(n * sizeof(float)), *pcf = xmalloc(n * sizeof(float));
        pool_get(&f.k[g], pgf, pcf);
        snprintf(what, sizeof what, "qkv %dh/%dkv x %d, %s, layer %d: K pool", cfg->n_head,
                 cfg->n_head_kv, hd, s->name, layer);
        expect_close(what, pgf, pcf, n, 1e-3);
        pool_get(&f.v[g], pgf, pcf);
        what[strlen(what) - 6] = 'V';
        expect_close(what, pgf, pcf, n, 1e-3);
        free(pgf);
        free(pcf);
        pool_sync(&f.k[g]);
        pool_sync(&f.v[g]);

        /* attention from the same q (F16 values, as the qkv stage leaves them) and caches */
        float *qh = xmalloc(q.bytes);
        for (size_t i = 0; i < (size_t)T * qd; i++)
            qh[i] = cairn_gguf_f16_to_f32(cairn_gguf_f32_to_f16(frand() * 2.0f));
        pb_put(&q, qh);
        free(qh);
        pbuf out = pb_rand((size_t)T * qd, 1.0f);
        cairn_battn a = {.n_head = cfg->n_head, .n_head_kv = cfg->n_head_kv, .head_dim = hd,
                         .window = g == 1 ? WINDOW : 0, .scale = 1.0f / sqrtf((float)hd),
                         .layer = layer};
        cairn_battn ag = a, ac = a;
        ag.kv = &f.kg;
        ac.kv = &f.kc;
        if (q8)
            outq8_buffers(&oq, T, out.bytes);
        ok(G->i->attention(G, &ag, q.g, out.g, &err), &err, "gpu attention");
        if (q8)
            outq8_check(&oq, &out, T, qd);
        ok(C->i->attention(C, &ac, q.c, out.c, &err), &err, "cpu attention");
        snprintf(what, sizeof what, "attention %dh/%dkv x %d, %s, %s", cfg->n_head,
                 cfg->n_head_kv, hd, s->name, g == 1 ? "window 40" : "full");
        expect_pb(what, &out, 3e-3);
        pb_free(&out);
        pb_free(&q);
        pb_free(&k);
        pb_free(&v);
        pb_free(&bq);
        pb_free(&bk);
        pb_free(&bv);
        pb_free(&qn);
        pb_free(&kn);
    }
    if (q8)
        wmat_free(&oq.w);
    kvfix_free(&f);
}

static void test_qkv_attention(void **state)
{
    (void)state;
    reserve_both();
    for (size_t c = 0; c < sizeof CFGS / sizeof CFGS[0]; c++)
        for (size_t s = 0; s < N_SCENARIOS; s++) {
            /* the 520-token prefill with head 256 costs the CPU reference most; the other
             * configurations cover that batch */
            if (c == 2 && s == N_SCENARIOS - 1)
                continue;
            check_qkv_attention(&CFGS[c], &SCENARIOS[s]);
        }
    /* the tiles' K and V rows two values a load (the 16-byte loads are the default) */
    setenv("CAIRN_CUDA_ATTN_VEC", "0", 1);
    check_qkv_attention(&CFGS[1], &SCENARIOS[0]);
    check_qkv_attention(&CFGS[1], &SCENARIOS[1]);
    unsetenv("CAIRN_CUDA_ATTN_VEC");
}

/* ---- Whole steps: the GPU backend's graphs ------------------------------------------------- */

/*
 * One layer and the logits as model.c runs them, over decode steps of one shape with new tokens
 * and advancing positions each time. The GPU backend runs the first step call by call,
 * captures the second into a CUDA graph and replays it from the third on, so a replay that
 * read stale inputs or baked-in positions would show here. Then a step whose calls differ
 * (no gated stage: the graph is dropped), one with a download in the middle (the step goes on
 * call by call), and one of another shape. Every step's logits and residual rows are checked
 * against the CPU's. Tolerance 5e-2: the stages chain here, and with random weights the
 * activations grow large; a difference far below the products' tolerance in an early stage
 * (an F16 rounding in the cache, FP32 sums in another order) flips an int8 rounding of the
 * next product's activations now and then, and the gated stage amplifies it (1-2e-2 seen in
 * the CUDA emulation, graphs or not). A replay reading wrong data errs by O(1).
 */
typedef struct {
    wmat emb, wq, wk, wv, wo, wg, wu, wd, out;
    pbuf attn_norm, ffn_norm, out_norm, q_norm, k_norm;
    pbuf x, h, q, k, v, att, a, f1, f2;
} steprig;

#define SD 256 /* embedding */
#define SFF 512
#define SVOCAB 300

static void run_step(steprig *r, kvfix *f, const attn_cfg *cfg, const tbatch *tb, int variant,
                     bool gpu, float *logits)
{
    cairn_backend *be = gpu ? G : C;
#define B(buf) ((float *)(gpu ? (buf).g : (buf).c))
#define M(w) (gpu ? &(w).g : &(w).c)
    cairn_error err = {0};
    const int T = tb->b.n_tokens;
    ok(be->i->batch_set(be, &tb->b, &err), &err, "batch_set");
    ok(be->i->embed(be, M(r->emb), 1.0f, B(r->x), &err), &err, "embed");
    ok(be->i->rmsnorm(be, B(r->h), B(r->x), B(r->attn_norm), T, SD, 1e-6f, &err), &err,
       "rmsnorm");
    const cairn_bmat *qkv[3] = {M(r->wq), M(r->wk), M(r->wv)};
    float *qkv_out[3] = {B(r->q), B(r->k), B(r->v)};
    ok(be->i->matmul(be, qkv, 3, B(r->h), qkv_out, &err), &err, "matmul qkv");
    cairn_bqkv p = {.n_head = cfg->n_head, .n_head_kv = cfg->n_head_kv, .head_dim = cfg->hd,
                    .q_norm = B(r->q_norm), .k_norm = B(r->k_norm), .eps = 1e-6f,
                    .rope_base = 10000.0f, .rope_freq_scale = 1.0f, .rope_neox = true,
                    .q_scale = 1.0f, .kv = gpu ? &f->kg : &f->kc, .layer = 2};
    ok(be->i->qkv(be, &p, B(r->q), B(r->k), B(r->v), &err), &err, "qkv");
    if (variant == 2) { /* a download in the middle: the trace hook does this */
        float *tmp = xmalloc(r->q.bytes);
        ok(be->i->download(be, tmp, B(r->q), r->q.bytes, &err), &err, "download");
        free(tmp);
    }
    cairn_battn a = {.n_head = cfg->n_head, .n_head_kv = cfg->n_head_kv, .head_dim = cfg->hd,
                     .window = 0, .scale = 1.0f / sqrtf((float)cfg->hd),
                     .kv = gpu ? &f->kg : &f->kc, .layer = 2};
    ok(be->i->attention(be, &a, B(r->q), B(r->att), &err), &err, "attention");
    const cairn_bmat *wo = M(r->wo);
    float *ao = B(r->a);
    ok(be->i->matmul(be, &wo, 1, B(r->att), &ao, &err), &err, "matmul o");
    ok(be->i->add_norm(be, B(r->x), B(r->a), NULL, B(r->ffn_norm), B(r->h), SD, 1e-6f, &err),
       &err, "add_norm");
    const cairn_bmat *gu[2] = {M(r->wg), M(r->wu)};
    float *gu_out[2] = {B(r->f1), B(r->f2)};
    ok(be->i->matmul(be, gu, 2, B(r->h), gu_out, &err), &err, "matmul gate/up");
    if (variant != 1)
        ok(be->i->gated(be, B(r->f1), B(r->f2), SFF, CAIRN_ACT_SILU, &err), &err, "gated");
    const cairn_bmat *wd = M(r->wd);
    ok(be->i->matmul(be, &wd, 1, B(r->f1), &ao, &err), &err, "matmul down");
    ok(be->i->add_norm(be, B(r->x), B(r->a), NULL, NULL, NULL, SD, 1e-6f, &err), &err,
       "add_norm");
    ok(be->i->logits(be, M(r->out), B(r->out_norm), 1e-6f, B(r->x), SD, logits, &err), &err,
       "logits");
#undef B
#undef M
}

/* With CAIRN_CUDA_ATTN_SHORT=1, steps whose positions are all below CAIRN__ATTN_SHORT (128)
 * take attention's one-block form (every key of a token in one block): batch 1 at 90, and three
 * sequences at 0 (one key), 64 and 127 (128 keys, the most it takes), every configuration (the
 * last, rows of 36 values, takes the tiles: the form reads 16-byte units); then the tiles (the
 * default) for the same steps, against the same CPU. */
static void test_attention_short(void **state)
{
    (void)state;
    static const scenario shorts[] = {
        {"1 token, decode at 90", 1, {90}, {1}},
        {"3 tokens, decodes at 0, 64 and 127", 3, {0, 64, 127}, {1, 1, 1}},
    };
    cairn_backend *keep = G;
    cairn_error err = {0};
    setenv("CAIRN_CUDA_ATTN_SHORT", "1", 1);
    int rc = cairn_backend_cuda_open(&G, 0, &err);
    unsetenv("CAIRN_CUDA_ATTN_SHORT");
    ok(rc, &err, "cuda open with the one-block attention");
    reserve_both();
    for (size_t c = 0; c < sizeof CFGS / sizeof CFGS[0]; c++)
        for (size_t s = 0; s < 2; s++)
            check_qkv_attention(&CFGS[c], &shorts[s]);
    cairn_backend_close(G);
    G = keep;
    reserve_both();
    check_qkv_attention(&CFGS[1], &shorts[0]);
    check_qkv_attention(&CFGS[2], &shorts[1]);
}

static void test_graph_steps(void **state)
{
    (void)state;
    const attn_cfg cfg = {4, 2, 64, false, true, true, 1.0f};
    steprig r;
    const int qd = cfg.n_head * cfg.hd, kd = cfg.n_head_kv * cfg.hd;
    wmat_make(&r.emb, "token_embd.weight", CAIRN_GGUF_Q8_0, SVOCAB, SD, CAIRN_BMAT_ROWS);
    wmat_make(&r.wq, "attn_q.weight", CAIRN_GGUF_Q8_0, qd, SD, CAIRN_BMAT_MATMUL);
    wmat_make(&r.wk, "attn_k.weight", CAIRN_GGUF_Q8_0, kd, SD, CAIRN_BMAT_MATMUL);
    wmat_make(&r.wv, "attn_v.weight", CAIRN_GGUF_Q8_0, kd, SD, CAIRN_BMAT_MATMUL);
    wmat_make(&r.wo, "attn_output.weight", CAIRN_GGUF_Q8_0, SD, qd, CAIRN_BMAT_MATMUL);
    wmat_make(&r.wg, "ffn_gate.weight", CAIRN_GGUF_Q8_0, SFF, SD, CAIRN_BMAT_MATMUL);
    wmat_make(&r.wu, "ffn_up.weight", CAIRN_GGUF_Q8_0, SFF, SD, CAIRN_BMAT_MATMUL);
    wmat_make(&r.wd, "ffn_down.weight", CAIRN_GGUF_Q8_0, SD, SFF, CAIRN_BMAT_MATMUL);
    wmat_make(&r.out, "output.weight", CAIRN_GGUF_Q8_0, SVOCAB, SD, CAIRN_BMAT_LOGITS);
    r.attn_norm = pb_rand(SD, 1.0f);
    r.ffn_norm = pb_rand(SD, 1.0f);
    r.out_norm = pb_rand(SD, 1.0f);
    r.q_norm = pb_rand((size_t)cfg.hd, 1.0f);
    r.k_norm = pb_rand((size_t)cfg.hd, 1.0f);
    const int T = 3;
    r.x = pb_rand((size_t)T * SD, 1.0f);
    r.h = pb_rand((size_t)T * SD, 1.0f);
    r.q = pb_rand((size_t)T * qd, 1.0f);
    r.k = pb_rand((size_t)T * kd, 1.0f);
    r.v = pb_rand((size_t)T * kd, 1.0f);
    r.att = pb_rand((size_t)T * qd, 1.0f);
    r.a = pb_rand((size_t)T * SD, 1.0f);
    r.f1 = pb_rand((size_t)T * SFF, 1.0f);
    r.f2 = pb_rand((size_t)T * SFF, 1.0f);
    reserve_both();
    /* Three sequences; blocks for the 12 steps' positions (kvfix takes them as new tokens). */
    const scenario room = {"decode steps", 3, {10, 50, 100}, {12, 12, 12}};
    kvfix f;
    kvfix_init(&f, &cfg, &room);
    float *lg = xmalloc(sizeof(float) * T * SVOCAB), *lc = xmalloc(sizeof(float) * T * SVOCAB);
    /* variant: 0 the step as it is, 1 without its gated stage, 2 a download in the middle,
     * 3 two tokens (another shape) */
    static const int variants[] = {0, 0, 0, 0, 1, 0, 0, 2, 0, 3, 0, 0};
    for (int step = 0; step < 12; step++) {
        int n = variants[step] == 3 ? 2 : 3;
        scenario s = {"step", n, {10 + step, 50 + step, 100 + step}, {1, 1, 1}};
        tbatch tb;
        tbatch_init(&tb, &s, 2, f.max_table, f.tables, SVOCAB);
        tb.b.n_seqs = 3; /* the tables hold three sequences whatever the step's tokens */
        run_step(&r, &f, &cfg, &tb, variants[step], true, lg);
        run_step(&r, &f, &cfg, &tb, variants[step], false, lc);
        char what[96];
        snprintf(what, sizeof what, "step %d (variant %d): logits", step, variants[step]);
        expect_close(what, lg, lc, (size_t)n * SVOCAB, 5e-2);
        /* (x itself is the logits' scratch on the CPU) */
        snprintf(what, sizeof what, "step %d (variant %d): attention", step, variants[step]);
        float *bg = xmalloc(r.att.bytes), *bc = xmalloc(r.att.bytes);
        pb_get(&r.att, bg, bc);
        expect_close(what, bg, bc, (size_t)n * qd, 5e-2);
        snprintf(what, sizeof what, "step %d (variant %d): ffn out", step, variants[step]);
        pb_get(&r.a, bg, bc);
        expect_close(what, bg, bc, (size_t)n * SD, 5e-2);
        free(bg);
        free(bc);
    }
    free(lg);
    free(lc);
    kvfix_free(&f);
    wmat *ws[] = {&r.emb, &r.wq, &r.wk, &r.wv, &r.wo, &r.wg, &r.wu, &r.wd, &r.out};
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
        wmat_free(ws[i]);
    pbuf *bs[] = {&r.attn_norm, &r.ffn_norm, &r.out_norm, &r.q_norm, &r.k_norm, &r.x, &r.h,
                  &r.q,         &r.k,        &r.v,        &r.att,    &r.a,      &r.f1, &r.f2};
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++)
        pb_free(bs[i]);
}

/* ---- What the GPU backend says when it cannot ------------------------------------------------ */

static void test_errors(void **state)
{
    (void)state;
    char desc[256] = "";
    G->i->describe(G, desc, sizeof desc);
    print_message("  device: %s\n", desc);
    assert_non_null(strstr(desc, "sm_"));

    /* A type without a kernel fails at load, naming the tensor and the type. */
    uint8_t blk[84 * 2] = {0};
    cairn_gguf_tensor t = {.name = "blk.3.ffn_down.weight", .type = CAIRN_GGUF_Q2_K, .n_dims = 2,
                           .dims = {256, 2, 1, 1}, .n_elements = 512, .nbytes = sizeof blk,
                           .data = blk};
    cairn_bmat m;
    cairn_error err = {0};
    assert_int_equal(G->i->mat_load(G, &t, t.name, CAIRN_BMAT_MATMUL, &m, &err),
                     CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "blk.3.ffn_down.weight"));
    assert_non_null(strstr(err.msg, "Q2_K"));

    /* More than the GPU has: CAIRN_ENOMEM naming the bytes asked for and the bytes free. */
    size_t free_b = 0, total_b = 0;
    assert_int_equal(G->i->mem_info(G, &free_b, &total_b), 0);
    assert_true(free_b > 0 && total_b >= free_b);
    void *p = NULL;
    size_t too_much = total_b + ((size_t)1 << 30);
    assert_int_equal(G->i->alloc(G, too_much, &p, &err), CAIRN_ENOMEM);
    assert_null(p);
    char bytes[32];
    snprintf(bytes, sizeof bytes, "%zu", too_much);
    assert_non_null(strstr(err.msg, bytes));
    assert_non_null(strstr(err.msg, "free"));
    /* and the backend still works after it */
    assert_int_equal(G->i->alloc(G, 4096, &p, &err), 0);
    G->i->free(G, p);

    /* A stage before any batch. */
    cairn_backend *fresh = NULL;
    ok(cairn_backend_cuda_open(&fresh, 0, &err), &err, "cuda open");
    float *x = NULL;
    ok(fresh->i->alloc(fresh, 64 * sizeof(float), (void **)&x, &err), &err, "alloc");
    assert_int_equal(fresh->i->gated(fresh, x, x, 64, CAIRN_ACT_SILU, &err), CAIRN_ESTATE);
    fresh->i->free(fresh, x);
    cairn_backend_close(fresh);

    /* No such GPU. */
    int n = cairn_gpu_count(NULL, 0);
    assert_int_equal(cairn_backend_cuda_open(&fresh, n, &err), CAIRN_EUNSUPPORTED);
    assert_null(fresh);
}

static int setup(void **state)
{
    (void)state;
    cairn_error err = {0};
    if (cairn_backend_cuda_open(&G, 0, &err)) {
        fprintf(stderr, "cuda backend: %s\n", err.msg);
        return -1;
    }
    if (cairn_backend_cpu_open(&C, NULL, &err)) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return -1;
    }
    reserve_both(); /* the tests that load matrices reserve again after loading */
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cairn_backend_close(G);
    cairn_backend_close(C);
    return 0;
}

int main(void)
{
    char why[256] = "";
    if (cairn_gpu_count(why, sizeof why) == 0) {
        /* Asking for a GPU must still fail cleanly, with a reason. */
        cairn_backend *be = NULL;
        cairn_error err = {0};
        int rc = cairn_backend_cuda_open(&be, 0, &err);
        if (rc != CAIRN_EUNSUPPORTED || be || !err.msg[0]) {
            fprintf(stderr, "cairn_backend_cuda_open without a GPU returned %d (%s)\n", rc,
                    err.msg);
            return 1;
        }
        printf("skipped: no CUDA device (%s)\n", why);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_add_norm),
        cmocka_unit_test(test_gated),
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_tiles),
        cmocka_unit_test(test_bf16_cache),
        cmocka_unit_test(test_matmul_shared),
        cmocka_unit_test(test_fused_quantization),
        cmocka_unit_test(test_logits),
        cmocka_unit_test(test_logits_pick),
        cmocka_unit_test(test_qkv_attention),
        cmocka_unit_test(test_attention_short),
        cmocka_unit_test(test_graph_steps),
    };
    /* CAIRN_TEST_FILTER=test_matmul (a cmocka pattern, '*' and '?') runs only the tests it
     * names: the emulator (generation/kernels/cuda/emu/run) takes half an hour for them all. */
    const char *only = getenv("CAIRN_TEST_FILTER");
    if (only && *only)
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, setup, teardown);
}
