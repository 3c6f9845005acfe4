/*
 * tests/unit/test_cuda_model.c — the whole model on the CUDA backend against the CPU backend.
 *
 * For tiny Llama, Qwen2 and Gemma 3 models from generation/synth in every weight type both
 * backends multiply, and for the real gemma-3-270m when CAIRN_TEST_MODELS has it:
 *   - the CPU generates greedily; the GPU is fed the same tokens (teacher forcing: a prefill,
 *     then one token per step) and its arg-max is compared at every step. A step where the two
 *     differ must be a near-tie of the CPU's own logits (the GPU's choice within TIE of the
 *     CPU's best); the count of equal steps is printed, and for gemma-3-270m at least 300 of
 *     320 must be equal;
 *   - batched == unbatched on the GPU: three sequences in one pass give each sequence's logits
 *     as its own passes do (within the stated tolerance; the GPU's kernels may sum in another
 *     order for another batch shape), and the same greedy tokens up to near-ties;
 *   - a pass that yields at layer boundaries and resumes gives the logits of the pass run
 *     whole (the layer-level yield on the GPU);
 *   - a type without a CUDA kernel, or more weights than the GPU holds, fails at open naming
 *     the tensor or the bytes;
 *   - the CUDA engine draws the same tokens (greedy, and seeded top-k) from the first entries
 *     of its logits rows (logits_pick) as from the whole rows.
 * Without a GPU it says so plainly and passes: CI has none; scripts/gpu-check runs it where
 * there is one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/gpu.h"
#include "generation/engine.h"
#include "generation/synth.h"
#include "tests/reference/gemma3_ref.h"

/* A near-tie: the GPU's pick is within TIE x (1 + max |logit|) of the CPU's best logit. */
#define TIE 0.01f

typedef struct {
    cairn_pool *pool;
    cairn_backend *be;
    cairn_kv *kv;
    cairn_model_ws *ws;
} rig;

static void rig_open(rig *r, const cairn_model *m, int device, int max_tokens, int max_ctx)
{
    cairn_error err;
    memset(r, 0, sizeof *r);
    if (device < 0) {
        cairn_pool_params pp = cairn_pool_default_params();
        pp.n_threads = 2;
        assert_int_equal(cairn_pool_open(&r->pool, &pp, NULL), 0);
    }
    if (cairn_backend_open(&r->be, device, r->pool, &err))
        fail_msg("backend %d: %s", device, err.msg);
    cairn_kv_params kp = cairn_kv_default_params();
    cairn_model_kv_params(m, &kp);
    kp.n_blocks = 4 * ((max_ctx + kp.block_tokens - 1) / kp.block_tokens);
    kp.max_seq_tokens = max_ctx;
    kp.max_seqs = 4;
    kp.backend = r->be;
    if (cairn_kv_open(&r->kv, &kp, &err))
        fail_msg("kv: %s", err.msg);
    if (cairn_model_ws_new(&r->ws, m, r->be, max_tokens, max_ctx, &err))
        fail_msg("weights on backend %d: %s", device, err.msg);
}

static void rig_close(rig *r)
{
    cairn_model_ws_free(r->ws);
    cairn_kv_close(r->kv);
    cairn_backend_close(r->be);
    cairn_pool_close(r->pool);
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

static float max_abs(const float *x, int n)
{
    float m = 0;
    for (int i = 0; i < n; i++)
        m = fmaxf(m, fabsf(x[i]));
    return m;
}

/* Runs toks[0..n) through a new sequence of r: a prefill of n_pre tokens, then one token per
 * step; logits of every position from n_pre - 1 on into out[(pos - n_pre + 1) * nv]. */
static void run(rig *r, const cairn_model *m, const int32_t *toks, int n, int n_pre, float *out)
{
    const int nv = cairn_model_hparams_of(m)->n_vocab;
    int seq;
    cairn_error err;
    assert_int_equal(cairn_kv_seq_new(r->kv, &seq, &err), 0);
    int32_t sq[512], pos[512];
    uint8_t want[512];
    assert_true(n_pre <= 512);
    for (int i = 0; i < n_pre; i++) {
        sq[i] = seq;
        pos[i] = i;
        want[i] = i == n_pre - 1;
    }
    cairn_batch b = {n_pre, toks, sq, pos, want, NULL, NULL};
    if (cairn_model_forward(m, r->ws, r->kv, &b, out, &err))
        fail_msg("prefill: %s", err.msg);
    for (int i = n_pre; i < n; i++) {
        int32_t p = i;
        uint8_t w = 1;
        cairn_batch d = {1, toks + i, &seq, &p, &w, NULL, NULL};
        if (cairn_model_forward(m, r->ws, r->kv, &d, out + (size_t)(i - n_pre + 1) * nv, &err))
            fail_msg("step %d: %s", i, err.msg);
    }
    cairn_kv_seq_free(r->kv, seq);
}

typedef struct {
    int steps, equal, ties;
    float max_rel; /* max |gpu - cpu| / (1 + max |cpu|) over the logits */
} cmp_stats;

/*
 * The CPU generates n_gen greedy tokens after the prompt; the GPU is teacher-forced along them.
 * Fails on a difference that is not a near-tie.
 */
static cmp_stats compare(const cairn_model *m, const int32_t *prompt, int n_prompt, int n_gen)
{
    const int nv = cairn_model_hparams_of(m)->n_vocab, n = n_prompt + n_gen;
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)n);
    float *lc = malloc(sizeof(float) * (size_t)(n_gen + 1) * nv);
    float *lg = malloc(sizeof(float) * (size_t)(n_gen + 1) * nv);
    assert_true(toks && lc && lg);
    memcpy(toks, prompt, sizeof(int32_t) * (size_t)n_prompt);
    rig cpu, gpu;
    rig_open(&cpu, m, -1, n_prompt, n + 1);
    rig_open(&gpu, m, 0, n_prompt, n + 1);
    /* Greedy on the CPU, one step at a time (its logits land where run() puts them). */
    {
        int seq;
        cairn_error err;
        assert_int_equal(cairn_kv_seq_new(cpu.kv, &seq, &err), 0);
        int32_t sq[512], pos[512];
        uint8_t want[512] = {0};
        for (int i = 0; i < n_prompt; i++) {
            sq[i] = seq;
            pos[i] = i;
        }
        want[n_prompt - 1] = 1;
        cairn_batch b = {n_prompt, toks, sq, pos, want, NULL, NULL};
        if (cairn_model_forward(m, cpu.ws, cpu.kv, &b, lc, &err))
            fail_msg("cpu prefill: %s", err.msg);
        for (int i = n_prompt; i < n; i++) {
            const float *row = lc + (size_t)(i - n_prompt) * nv;
            toks[i] = argmax(row, nv);
            int32_t p = i;
            uint8_t w = 1;
            cairn_batch d = {1, toks + i, &seq, &p, &w, NULL, NULL};
            if (cairn_model_forward(m, cpu.ws, cpu.kv, &d, lc + (size_t)(i - n_prompt + 1) * nv,
                                    &err))
                fail_msg("cpu step: %s", err.msg);
        }
    }
    run(&gpu, m, toks, n, n_prompt, lg);
    cmp_stats st = {0};
    for (int s = 0; s < n_gen; s++) {
        const float *c = lc + (size_t)s * nv, *g = lg + (size_t)s * nv;
        float scale = 1 + max_abs(c, nv);
        for (int i = 0; i < nv; i++) {
            assert_true(isfinite(g[i]));
            st.max_rel = fmaxf(st.max_rel, fabsf(g[i] - c[i]) / scale);
        }
        int ac = argmax(c, nv), ag = argmax(g, nv);
        st.steps++;
        if (ac == ag) {
            st.equal++;
            continue;
        }
        if (c[ac] - c[ag] > TIE * scale)
            fail_msg("step %d: GPU picks %d (CPU logit %.5f), CPU %d (%.5f): not a near-tie", s,
                     ag, c[ag], ac, c[ac]);
        st.ties++;
    }
    rig_close(&cpu);
    rig_close(&gpu);
    free(toks);
    free(lc);
    free(lg);
    return st;
}

/* A tiny model of shape and type from the writer: n_gen greedy steps after the prompt, the
 * GPU's against the CPU's (compare). Random tiny models have flat distributions: near-ties
 * happen, but rarely. */
static void check_tiny(const char *shape, const char *type, const int32_t *prompt, int n_prompt,
                       int n_gen, const char *label)
{
    char path[256];
    snprintf(path, sizeof path, "/tmp/cairn_test_cuda_%s_%s_%d.gguf", shape, type,
             (int)getpid());
    cairn_error err;
    if (cairn_synth_write(path, shape, type, 0, 3, &err))
        fail_msg("synth: %s", err.msg);
    cairn_model *m;
    if (cairn_model_open(&m, path, &err))
        fail_msg("%s: %s", path, err.msg);
    cmp_stats st = compare(m, prompt, n_prompt, n_gen);
    printf("%-12s %-7s%s greedy steps equal %d/%d (near-ties %d), max |dlogit| / "
           "(1 + max|logit|) %.5f\n", shape, type, label, st.equal, st.steps, st.ties,
           st.max_rel);
    assert_true(st.equal >= st.steps * 9 / 10);
    assert_true(st.max_rel < 0.05f);
    cairn_model_close(m);
    unlink(path);
}

static void test_tiny_models(void **state)
{
    (void)state;
    const char *shapes[] = {"tiny-llama", "tiny-qwen2", "tiny-gemma3"};
    const char *types[] = {"q4_k_m", "q8_0", "bf16", "f16", "f32", "q4_0", "q5_0", "q6_k"};
    const int32_t prompt[9] = {1, 17, 300, 42, 999, 5, 77, 512, 8};
    for (size_t s = 0; s < 3; s++)
        for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
            check_tiny(shapes[s], types[t], prompt, 9, 40, "");
}

/* CAIRN_CUDA_ATTN_SHORT=1 (attention's one-block form while every position is below 128): the
 * same greedy steps as the CPU, over 130 steps so that the pass crosses position 128 and its
 * graphs change form, on a model of each architecture (Gemma 3's sliding windows among them). */
static void test_attention_short_models(void **state)
{
    (void)state;
    const char *shapes[] = {"tiny-llama", "tiny-qwen2", "tiny-gemma3"};
    const char *types[] = {"q4_k_m", "bf16", "q8_0"};
    const int32_t prompt[9] = {1, 17, 300, 42, 999, 5, 77, 512, 8};
    setenv("CAIRN_CUDA_ATTN_SHORT", "1", 1);
    for (size_t s = 0; s < 3; s++)
        check_tiny(shapes[s], types[s], prompt, 9, 130, " one-block attention:");
    unsetenv("CAIRN_CUDA_ATTN_SHORT");
}

/* Three sequences in one pass (a prefill chunk and two decode tokens) against each alone. */
static void test_batched_equals_unbatched(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "/tmp/cairn_test_cuda_batch_%d.gguf", (int)getpid());
    cairn_error err;
    if (cairn_synth_write(path, "tiny-llama", "q4_k_m", 0, 5, &err))
        fail_msg("synth: %s", err.msg);
    cairn_model *m;
    assert_int_equal(cairn_model_open(&m, path, &err), 0);
    const int nv = cairn_model_hparams_of(m)->n_vocab;
    rig g;
    rig_open(&g, m, 0, 64, 128);
    int s[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(cairn_kv_seq_new(g.kv, &s[i], &err), 0);
    const int32_t toks[12] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8};
    /* Sequences 1 and 2 get a 5-token prefix first; then one pass carries seq 0's 7-token
     * prefill and a decode token each of seqs 1 and 2. */
    for (int i = 1; i < 3; i++) {
        int32_t sq[5] = {s[i], s[i], s[i], s[i], s[i]}, pos[5] = {0, 1, 2, 3, 4};
        cairn_batch b = {5, toks + i, sq, pos, NULL, NULL, NULL};
        float *lg = malloc(sizeof(float) * (size_t)nv);
        assert_int_equal(cairn_model_forward(m, g.ws, g.kv, &b, lg, &err), 0);
        free(lg);
    }
    int32_t bt[9], bs[9], bp[9];
    uint8_t bw[9] = {0};
    for (int i = 0; i < 7; i++) {
        bt[i] = toks[i];
        bs[i] = s[0];
        bp[i] = i;
    }
    bw[6] = 1;
    bt[7] = toks[9], bs[7] = s[1], bp[7] = 5, bw[7] = 1;
    bt[8] = toks[10], bs[8] = s[2], bp[8] = 5, bw[8] = 1;
    float *batched = malloc(sizeof(float) * 3 * (size_t)nv);
    cairn_batch b = {9, bt, bs, bp, bw, NULL, NULL};
    assert_int_equal(cairn_model_forward(m, g.ws, g.kv, &b, batched, &err), 0);
    rig_close(&g);

    /* Each alone, on a fresh cache. */
    float *alone = malloc(sizeof(float) * 3 * (size_t)nv);
    rig a;
    rig_open(&a, m, 0, 64, 128);
    int32_t seq0[7];
    memcpy(seq0, toks, sizeof seq0);
    float *tmp = malloc(sizeof(float) * 8 * (size_t)nv);
    run(&a, m, seq0, 7, 7, tmp);
    memcpy(alone, tmp, sizeof(float) * (size_t)nv);
    for (int i = 1; i < 3; i++) {
        int32_t q[6];
        memcpy(q, toks + i, sizeof(int32_t) * 5);
        q[5] = toks[8 + i];
        run(&a, m, q, 6, 5, tmp);
        memcpy(alone + (size_t)i * nv, tmp + (size_t)nv, sizeof(float) * (size_t)nv);
    }
    rig_close(&a);
    for (int r = 0; r < 3; r++) {
        const float *x = batched + (size_t)r * nv, *y = alone + (size_t)r * nv;
        float scale = 1 + max_abs(y, nv), md = 0;
        for (int i = 0; i < nv; i++)
            md = fmaxf(md, fabsf(x[i] - y[i]));
        printf("batched vs alone, sequence %d: max |dlogit| %.6f (scale %.3f)\n", r, md, scale);
        assert_true(md <= 2e-3f * scale);
        int ax = argmax(x, nv), ay = argmax(y, nv);
        assert_true(ax == ay || y[ay] - y[ax] <= TIE * scale);
    }
    free(batched);
    free(alone);
    free(tmp);
    cairn_model_close(m);
    unlink(path);
}

/* Every other yield check says yes. */
static int every_other(void *ctx)
{
    int *calls = ctx;
    return (*calls)++ % 2 == 0;
}

/* The layer-level yield on the GPU: a 40-token prefill (cuBLAS products and attention) that
 * stops at every other layer boundary and is resumed from its saved states gives the logits
 * of the same pass run whole, and a decode step after it the same too. The GPU queues a
 * pass's layers ahead of the host; layer_done paces them so the checks happen between
 * layers the device has run (a check that said yes after the whole pass had been queued
 * would leave nothing to resume). */
static void test_yield_resumes(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "/tmp/cairn_test_cuda_yield_%d.gguf", (int)getpid());
    cairn_error err;
    if (cairn_synth_write(path, "tiny-gemma3", "q4_k_m", 0, 7, &err))
        fail_msg("synth: %s", err.msg);
    cairn_model *m;
    assert_int_equal(cairn_model_open(&m, path, &err), 0);
    const cairn_model_hparams *hp = cairn_model_hparams_of(m);
    const int nv = hp->n_vocab, n = 40;
    int32_t toks[41], sq[40], pos[40];
    uint8_t want[40] = {0};
    for (int i = 0; i < 41; i++)
        toks[i] = (i * 37 + 11) % nv;
    want[n - 1] = 1;
    float *whole = malloc(sizeof(float) * 2 * (size_t)nv);
    float *parts = malloc(sizeof(float) * 2 * (size_t)nv);
    assert_non_null(whole);
    assert_non_null(parts);
    for (int mode = 0; mode < 2; mode++) {
        rig g;
        rig_open(&g, m, 0, 64, 128);
        int s;
        assert_int_equal(cairn_kv_seq_new(g.kv, &s, &err), 0);
        for (int i = 0; i < n; i++)
            sq[i] = s, pos[i] = i;
        cairn_batch b = {n, toks, sq, pos, want, NULL, NULL};
        float *out = mode ? parts : whole;
        if (mode == 0) {
            if (cairn_model_forward(m, g.ws, g.kv, &b, out, &err))
                fail_msg("whole pass: %s", err.msg);
        } else {
            void *x_save = NULL; /* device memory, as the engine keeps it */
            if (g.be->i->alloc(g.be, sizeof(float) * (size_t)n * (size_t)hp->n_embd, &x_save,
                               &err))
                fail_msg("x_save: %s", err.msg);
            int calls = 0, yields = 0, rc;
            cairn_model_yield y = {every_other, &calls, x_save, 0, 0};
            while ((rc = cairn_model_forward_ex(m, g.ws, g.kv, &b, out, &y, &err)) ==
                   CAIRN_MODEL_YIELDED) {
                assert_true(y.next_layer > y.first_layer && y.next_layer < hp->n_layer);
                y.first_layer = y.next_layer;
                yields++;
            }
            g.be->i->free(g.be, x_save);
            if (rc)
                fail_msg("yielding pass: %s", err.msg);
            printf("the pass yielded %d times over %d layers\n", yields, hp->n_layer);
            assert_true(yields >= 1);
        }
        int32_t p = n;
        uint8_t w = 1;
        cairn_batch d = {1, toks + n, &s, &p, &w, NULL, NULL};
        if (cairn_model_forward(m, g.ws, g.kv, &d, out + nv, &err))
            fail_msg("decode after the pass: %s", err.msg);
        rig_close(&g);
    }
    for (int r = 0; r < 2; r++) {
        const float *x = parts + (size_t)r * nv, *y = whole + (size_t)r * nv;
        float scale = 1 + max_abs(y, nv), md = 0;
        for (int i = 0; i < nv; i++)
            md = fmaxf(md, fabsf(x[i] - y[i]));
        printf("yielded vs whole, %s: max |dlogit| %.6f (scale %.3f)\n",
               r ? "the decode step after" : "the prefill", md, scale);
        assert_true(md <= 1e-4f * scale);
        assert_int_equal(argmax(x, nv), argmax(y, nv));
    }
    free(whole);
    free(parts);
    cairn_model_close(m);
    unlink(path);
}

/* gemma-3-270m's real weights, when the device has the file (docs/GPU.md says how it gets
 * there): 320 greedy steps after the first reference prompt, at least 300 equal and every
 * other one a near-tie. */
static void test_gemma3_270m(void **state)
{
    (void)state;
    char path[1024], rpath[1024];
    const char *models = getenv("CAIRN_TEST_MODELS"), *data = getenv("CAIRN_TEST_DATA");
    snprintf(path, sizeof path, "%s/gemma-3-270m-q4_k_m.gguf", models ? models : "data/models");
    snprintf(rpath, sizeof rpath, "%s/generation/gemma3_ref.txt", data ? data : "tests/data");
    if (access(path, R_OK) != 0) {
        printf("skipped: %s is not on this machine\n", path);
        return;
    }
    ref_set ref;
    assert_int_equal(ref_load(&ref, rpath), 0);
    cairn_model *m;
    cairn_error err;
    assert_int_equal(cairn_model_open(&m, path, &err), 0);
    int n = ref.p[0].n_prompt < 64 ? ref.p[0].n_prompt : 64;
    cmp_stats st = compare(m, ref.p[0].prompt, n, 320);
    printf("gemma-3-270m: greedy steps equal %d/%d (near-ties %d), max |dlogit| / "
           "(1 + max|logit|) %.5f\n", st.equal, st.steps, st.ties, st.max_rel);
    assert_true(st.equal >= 300);
    cairn_model_close(m);
    ref_free(&ref);
}

/* Bad input at open: weights larger than the GPU's free memory fail with the bytes named;
 * a tensor type the GPU has no kernel for is refused naming the tensor. */
static void test_open_errors(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "/tmp/cairn_test_cuda_err_%d.gguf", (int)getpid());
    cairn_error err;
    if (cairn_synth_write(path, "llama3-8b", "bf16", 2, 1, &err))
        fail_msg("synth: %s", err.msg);
    cairn_model *m;
    assert_int_equal(cairn_model_open(&m, path, &err), 0);
    cairn_backend *be;
    assert_int_equal(cairn_backend_open(&be, 0, NULL, &err), 0);
    size_t free_b, total_b;
    assert_int_equal(be->i->mem_info(be, &free_b, &total_b), 0);
    /* Leave 1 GiB free: the model's 2.9 GB cannot fit. */
    void *hog = NULL;
    assert_int_equal(be->i->alloc(be, free_b - ((size_t)1 << 30), &hog, &err), 0);
    cairn_model_ws *ws = NULL;
    int rc = cairn_model_ws_new(&ws, m, be, 8, 64, &err);
    printf("a 2-layer Llama-3-8B in BF16 with 1 GiB of %zu MiB free: %s\n", total_b >> 20,
           err.msg);
    assert_int_equal(rc, CAIRN_ENOMEM);
    assert_null(ws);
    assert_non_null(strstr(err.msg, "bytes"));
    be->i->free(be, hog);
    /* Once memory is back, the same open succeeds: the failed one leaked nothing. */
    assert_int_equal(cairn_model_ws_new(&ws, m, be, 8, 64, &err), 0);
    cairn_model_ws_free(ws);

    const cairn_gguf_tensor *t = cairn_gguf_find_tensor(cairn_model_gguf(m), "blk.0.attn_q.weight");
    assert_non_null(t);
    cairn_gguf_tensor fake = *t;
    fake.type = CAIRN_GGUF_IQ4_XS;
    cairn_bmat bm;
    assert_int_equal(be->i->mat_load(be, &fake, fake.name, CAIRN_BMAT_MATMUL, &bm, &err),
                     CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "blk.0.attn_q.weight"));
    cairn_backend_close(be);
    cairn_model_close(m);
    unlink(path);
}

/* ---- The engine's logits rows: first entries (logits_pick) against whole rows ---------------- */

typedef struct {
    int32_t tok[4][64];
    int n[4];
} gen_out;

static int record_token(void *user, int seq, int32_t token, bool last)
{
    (void)last;
    gen_out *g = user;
    if (seq >= 0 && seq < 4 && g->n[seq] < 64)
        g->tok[seq][g->n[seq]++] = token;
    return 0;
}

/* Four sequences on the CUDA engine, batched: greedy, top-k 40 and top-k 256 with seeds (the
 * GPU sends back 1, 40 or 256 entries a row), and top-k 40 with logprobs (the whole row). */
static void generate4(const cairn_model *m, gen_out *g)
{
    cairn_engine_params ep = cairn_engine_default_params();
    ep.device = 0;
    ep.max_seqs = 4;
    ep.n_ctx = 256;
    cairn_engine *e;
    cairn_error err;
    if (cairn_engine_open(&e, m, &ep, &err))
        fail_msg("cuda engine: %s", err.msg);
    memset(g, 0, sizeof *g);
    const int32_t prompt[6] = {1, 17, 300, 42, 999, 5};
    for (int i = 0; i < 4; i++) {
        cairn_gen_params gp = cairn_gen_default_params();
        gp.max_tokens = 48;
        gp.on_token = record_token;
        gp.user = g;
        if (i > 0) {
            gp.sample = cairn_sample_default_params();
            gp.sample.temperature = 1.5f; /* flat: the draws reach past the first entries */
            gp.sample.top_k = i == 2 ? 256 : 40;
            gp.sample.top_p = 1.0f;
            gp.sample.seed = 1000u + (uint64_t)i;
            gp.logprobs = i == 3;
        }
        int id;
        if (cairn_engine_add(e, prompt, 6, &gp, &id, &err))
            fail_msg("add: %s", err.msg);
        assert_int_equal(id, i);
    }
    if (cairn_engine_run(e, &err))
        fail_msg("run: %s", err.msg);
    cairn_engine_close(e);
}

/* The same tokens whether the GPU sends back whole rows (CAIRN_LOGITS_PICK=0) or their first
 * entries: the arg-max, and seeded draws among the top k. */
static void test_engine_picks(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "/tmp/cairn_test_cuda_picks_%d.gguf", (int)getpid());
    cairn_error err;
    if (cairn_synth_write(path, "tiny-llama", "q8_0", 0, 3, &err))
        fail_msg("synth: %s", err.msg);
    cairn_model *m;
    if (cairn_model_open(&m, path, &err))
        fail_msg("%s: %s", path, err.msg);
    gen_out picked, whole;
    setenv("CAIRN_LOGITS_PICK", "1", 1);
    generate4(m, &picked);
    setenv("CAIRN_LOGITS_PICK", "0", 1);
    generate4(m, &whole);
    unsetenv("CAIRN_LOGITS_PICK");
    static const char *const what[4] = {"greedy", "top-k 40", "top-k 256", "top-k 40, logprobs"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(picked.n[i], 48);
        assert_int_equal(whole.n[i], 48);
        int same = 0;
        while (same < 48 && picked.tok[i][same] == whole.tok[i][same])
            same++;
        printf("engine %-18s tokens equal with the first entries and with whole rows: %d/48\n",
               what[i], same);
        assert_int_equal(same, 48);
    }
    /* the draws are not all the arg-max: the sampled sequences differ from the greedy one */
    assert_true(memcmp(picked.tok[0], picked.tok[1], sizeof picked.tok[0]) != 0);
    cairn_model_close(m);
    unlink(path);
}

int main(int argc, char **argv)
{
    char why[256];
    if (cairn_gpu_count(why, sizeof why) == 0) {
        printf("skipped: no CUDA device (%s)\n", why);
        return 0;
    }
    /* --kernels: one small whole-model run, every kernel once (for racecheck, which is slow). */
    if (argc > 1 && !strcmp(argv[1], "--kernels")) {
        const struct CMUnitTest kernels[] = {cmocka_unit_test(test_batched_equals_unbatched)};
        return cmocka_run_group_tests(kernels, NULL, NULL);
    }
    /* CAIRN_TEST_FILTER=test_yield_resumes (a cmocka pattern) runs only the tests it matches
     * (the emulator in generation/kernels/cuda/emu runs the whole file in hours). */
    const char *only = getenv("CAIRN_TEST_FILTER");
    if (only && *only)
        cmocka_set_test_filter(only);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_models),
        cmocka_unit_test(test_attention_short_models),
        cmocka_unit_test(test_batched_equals_unbatched),
        cmocka_unit_test(test_yield_resumes),
        cmocka_unit_test(test_gemma3_270m),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_engine_picks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
