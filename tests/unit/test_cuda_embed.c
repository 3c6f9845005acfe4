/*
 * tests/unit/test_cuda_embed.c — the embedder's forward pass on the GPU against the CPU's
 * (issue 19; the CPU path is the reference, as in ggml's test-backend-ops).
 *
 *   - a set of texts (empty, NULL, short, one past 256 tokens and truncated, non-ASCII, and a
 *     batch of 40 of lengths 1..~150 tokens, which the default max_batch of 32 splits into two
 *     forwards) embedded on the CPU and on GPU 0: every GPU vector has unit norm, cosine
 *     >= 0.9999 with the CPU's and no component more than 1e-3 from it. Both sides compute in
 *     FP32 (the CPU with amx 0: F32 sgemm, not BF16 tiles; the GPU's cuBLAS in
 *     CUBLAS_COMPUTE_32F, no TF32), so they differ only in the order of their sums: about 1e-6
 *     per component is expected (the test prints the worst); 1e-3 is a bound that rounding
 *     cannot reach and a wrong bias, mask or position would exceed by far;
 *   - on the GPU, the batch one text at a time gives the batched vectors (within 1e-5: cuBLAS
 *     may pick another kernel for another number of rows), and so does cairn_embed_tokens, and
 *     an embedder whose max_batch / max_batch_tokens force many small forwards;
 *   - errors: device 99 (no such GPU) and, on a machine without a GPU, device 0 fail with
 *     CAIRN_EUNSUPPORTED and say why; device -2 is CAIRN_EINVAL. These run everywhere.
 * The model: all-minilm-l6-v2.gguf from CAIRN_TEST_MODELS; where it is missing (the GPU
 * machine: 90 MB is more than a call carries) one of its shapes with random weights
 * (synth_bert.h), said so in the output. Without a GPU the GPU tests print that they were
 * skipped and pass (scripts/gpu-check runs them where there is one). Under the CUDA emulation
 * (generation/kernels/cuda/emu/run, which sets CAIRN_EMU=1) the batch is 12 texts instead of 40,
 * to finish in minutes on host threads. `test_cuda_embed --kernels` runs only the comparison with
 * the CPU, over the 8 fixed texts (every kernel, one long sequence): what scripts/gpu-check
 * race runs under compute-sanitizer's racecheck.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/gpu.h"
#include "retrieval/embed.h"

#include "synth_bert.h"
#include "vec_compare.h"

#define MAX_TEXTS 64

static char model[512];
static char synth_path[64];
static const char *texts[MAX_TEXTS];
static char *owned[MAX_TEXTS];
static int n_texts;
static int dim;
static float *cpu_vecs, *gpu_vecs;
static int kernels_only; /* --kernels: the fixed texts alone */

/* The real model where it is, else the synthetic one (written once, removed at teardown). */
static const char *model_path(void)
{
    if (model[0]) return model;
    const char *dir = getenv("CAIRN_TEST_MODELS");
    snprintf(model, sizeof model, "%s/all-minilm-l6-v2.gguf", dir ? dir : "data/models");
    if (access(model, R_OK) == 0) {
        print_message("model: %s\n", model);
        return model;
    }
    snprintf(synth_path, sizeof synth_path, "/tmp/cairn-test-cudaembed-XXXXXX");
    int fd = mkstemp(synth_path);
    assert_true(fd >= 0);
    close(fd);
    cairn_error err;
    if (synth_bert_write(synth_path, 19, &err)) fail_msg("synthetic model: %s", err.msg);
    print_message("model: %s is missing; all-MiniLM-L6-v2's shapes with random weights "
                  "(synth_bert.h) instead\n",
                  model);
    snprintf(model, sizeof model, "%s", synth_path);
    return model;
}

static cairn_embed *open_on(int device, int max_batch, int max_batch_tokens)
{
    cairn_embed_params p = cairn_embed_default_params();
    p.device = device;
    p.amx = 0; /* the CPU reference in F32, as the GPU computes */
    if (max_batch) p.max_batch = max_batch;
    if (max_batch_tokens) p.max_batch_tokens = max_batch_tokens;
    cairn_embed *e = NULL;
    cairn_error err;
    if (cairn_embed_open(&e, model_path(), &p, &err))
        fail_msg("open on device %d: %s", device, err.msg);
    assert_int_equal(cairn_embed_device(e), device);
    return e;
}

static void embed(cairn_embed *e, const char *const *t, int n, float *out)
{
    cairn_error err;
    if (cairn_embed_batch(e, t, n, out, &err)) fail_msg("embed: %s", err.msg);
}

static char *text_of_words(int n_words, int seed)
{
    static const char *const words[] = {
        "retrieval", "cluster",  "the",     "prefetch", "of",       "GPU",   "latency",
        "answer",    "question", "vector",  "index",    "a",        "query", "embedding",
        "document",  "passage",  "search",  "model",    "token",    "fast",  "slow",
        "memory",    "copy",     "between", "layers",   "attention"};
    const int nw = (int)(sizeof words / sizeof words[0]);
    char *s = malloc((size_t)n_words * 12 + 2);
    assert_non_null(s);
    s[0] = 0;
    for (int i = 0; i < n_words; i++) {
        strcat(s, words[(i * 7 + seed * 13) % nw]);
        strcat(s, (i + seed) % 9 == 8 ? ". " : " ");
    }
    return s;
}

static int setup(void **state)
{
    (void)state;
    int batch = kernels_only ? 0 : getenv("CAIRN_EMU") ? 12 : 40;
    n_texts = 0;
    texts[n_texts++] = "";
    texts[n_texts++] = NULL; /* counts as empty */
    texts[n_texts++] = "hello";
    texts[n_texts++] = "How far ahead can the GPU fetch the clusters a query will probe?";
    owned[n_texts] = text_of_words(400, 1); /* ~400 tokens: truncated to 256 */
    texts[n_texts] = owned[n_texts];
    n_texts++;
    texts[n_texts++] = "Größe, Maß und naïve Cafés — «quoted» ½ ©";
    texts[n_texts++] = "東京は日本の首都です。北京是中国的首都。";
    texts[n_texts++] = "Ελληνικά και русский текст 🙂 ok";
    for (int i = 0; i < batch; i++) {
        owned[n_texts] = text_of_words(1 + (i * 37) % 120, i);
        texts[n_texts] = owned[n_texts];
        n_texts++;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < MAX_TEXTS; i++) {
        free(owned[i]);
        owned[i] = NULL;
    }
    return 0;
}

/* ---- GPU against CPU ------------------------------------------------------------------------ */

static void test_gpu_matches_cpu(void **state)
{
    (void)state;
    cairn_embed *cpu = open_on(-1, 0, 0), *gpu = open_on(0, 0, 0);
    dim = cairn_embed_dim(cpu);
    assert_int_equal(cairn_embed_dim(gpu), dim);
    assert_int_equal(cairn_embed_max_seq(gpu), cairn_embed_max_seq(cpu));
    assert_int_equal(cairn_embed_threads(gpu), 1);
    cpu_vecs = malloc((size_t)n_texts * dim * sizeof(float));
    gpu_vecs = malloc((size_t)n_texts * dim * sizeof(float));
    assert_non_null(cpu_vecs);
    assert_non_null(gpu_vecs);
    embed(cpu, texts, n_texts, cpu_vecs);
    embed(gpu, texts, n_texts, gpu_vecs);
    double worst_cos = 1.0, worst_abs = 0.0;
    for (int i = 0; i < n_texts; i++) {
        const float *g = gpu_vecs + (size_t)i * dim, *c = cpu_vecs + (size_t)i * dim;
        for (int k = 0; k < dim; k++)
            if (!isfinite(g[k])) fail_msg("text %d: component %d is %g", i, k, (double)g[k]);
        double n = sqrt(dot(g, g, dim));
        if (fabs(n - 1.0) > 1e-4) fail_msg("text %d: norm %.6f, want 1", i, n);
        double cos = dot(g, c, dim) / (n * sqrt(dot(c, c, dim)));
        double d = max_abs_diff(g, c, (size_t)dim);
        if (cos < 0.9999 || d > 1e-3)
            fail_msg("text %d (\"%.40s\"): cosine %.7f, max |diff| %.3g against the CPU", i,
                     texts[i] ? texts[i] : "(null)", cos, d);
        worst_cos = cos < worst_cos ? cos : worst_cos;
        worst_abs = d > worst_abs ? d : worst_abs;
    }
    print_message("%d texts: GPU against CPU (F32): lowest cosine %.9f, largest |diff| %.3g\n",
                  n_texts, worst_cos, worst_abs);
    /* the empty and the NULL text embed alike */
    assert_true(max_abs_diff(gpu_vecs, gpu_vecs + dim, (size_t)dim) == 0.0);
    cairn_embed_close(cpu);
    cairn_embed_close(gpu);
}

/* One at a time, through the tokens API, and in many small forwards: the batched vectors. */
static void test_gpu_batching_invariant(void **state)
{
    (void)state;
    if (!gpu_vecs) skip();
    cairn_embed *gpu = open_on(0, 0, 0);
    float *one = malloc((size_t)n_texts * dim * sizeof(float));
    assert_non_null(one);
    for (int i = 0; i < n_texts; i++)
        embed(gpu, &texts[i], 1, one + (size_t)i * dim);
    double d1 = max_abs_diff(one, gpu_vecs, (size_t)n_texts * dim);

    /* the tokens API on a few texts, tokenized here as embed.c does */
    const cairn_wordpiece *wp = cairn_embed_tokenizer(gpu);
    int max_seq = cairn_embed_max_seq(gpu), n_tok = 6, lens[6];
    int32_t *ids[6];
    for (int i = 0; i < n_tok; i++) {
        const char *t = texts[2 + i] ? texts[2 + i] : "";
        ids[i] = malloc((size_t)max_seq * sizeof(int32_t));
        assert_non_null(ids[i]);
        lens[i] = cairn_wordpiece_encode(wp, t, strlen(t), ids[i], max_seq);
    }
    float *tok = malloc((size_t)n_tok * dim * sizeof(float));
    assert_non_null(tok);
    cairn_error err;
    if (cairn_embed_tokens(gpu, (const int32_t *const *)ids, lens, n_tok, tok, &err))
        fail_msg("embed tokens: %s", err.msg);
    double d2 = max_abs_diff(tok, gpu_vecs + (size_t)2 * dim, (size_t)n_tok * dim);
    assert_int_equal(lens[2], max_seq); /* the long text was truncated */
    cairn_embed_close(gpu);

    /* at most 3 sequences and 300 tokens a forward: many forwards per call */
    gpu = open_on(0, 3, 300);
    float *small = malloc((size_t)n_texts * dim * sizeof(float));
    assert_non_null(small);
    embed(gpu, texts, n_texts, small);
    double d3 = max_abs_diff(small, gpu_vecs, (size_t)n_texts * dim);
    cairn_embed_close(gpu);
    print_message("GPU: one at a time %.3g, tokens API %.3g, 3-sequence forwards %.3g from "
                  "the batched vectors\n",
                  d1, d2, d3);
    assert_true(d1 <= 1e-5);
    assert_true(d2 <= 1e-5);
    assert_true(d3 <= 1e-5);
    for (int i = 0; i < n_tok; i++)
        free(ids[i]);
    free(tok);
    free(one);
    free(small);
}

/* ---- Errors (run everywhere) --------------------------------------------------------------- */

static void test_open_errors(void **state)
{
    (void)state;
    cairn_embed_params p = cairn_embed_default_params();
    assert_int_equal(p.device, -1);
    cairn_embed *e = NULL;
    cairn_error err;
    p.device = 99;
    assert_int_equal(cairn_embed_open(&e, model_path(), &p, &err), CAIRN_EUNSUPPORTED);
    assert_null(e);
    print_message("device 99: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "99"));
    char why[256];
    if (cairn_gpu_count(why, sizeof why) == 0) {
        p.device = 0;
        assert_int_equal(cairn_embed_open(&e, model_path(), &p, &err), CAIRN_EUNSUPPORTED);
        assert_null(e);
        print_message("device 0 without a GPU: %s\n", err.msg);
        assert_true(strlen(err.msg) > 10);
    }
    p.device = -2;
    assert_int_equal(cairn_embed_open(&e, model_path(), &p, &err), CAIRN_EINVAL);
    assert_null(e);
}

int main(int argc, char **argv)
{
    kernels_only = argc > 1 && !strcmp(argv[1], "--kernels");
    const struct CMUnitTest always[] = {
        cmocka_unit_test(test_open_errors),
    };
    int rc = cmocka_run_group_tests(always, setup, teardown);
    char why[256];
    if (cairn_gpu_count(why, sizeof why) == 0) {
        printf("skipped: the GPU tests (no CUDA device: %s)\n", why);
        if (synth_path[0]) unlink(synth_path);
        return rc;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpu_matches_cpu),
        cmocka_unit_test(test_gpu_batching_invariant),
    };
    const struct CMUnitTest kernels[] = {
        cmocka_unit_test(test_gpu_matches_cpu),
    };
    if (kernels_only)
        rc |= cmocka_run_group_tests(kernels, setup, teardown);
    else
        rc |= cmocka_run_group_tests(tests, setup, teardown);
    free(cpu_vecs);
    free(gpu_vecs);
    if (synth_path[0]) unlink(synth_path);
    return rc;
}
