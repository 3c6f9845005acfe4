/* tests/unit/test_kernels.c — CPU kernels against plain float references on random inputs. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/threadpool.h"
#include "generation/kernels/cpu.h"
#include "generation/kernels/cpu_internal.h"
#include "proto/gguf.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}
static float frand(void) { return (float)(rnd() % 2000001) / 1000000.0f - 1.0f; }

/* Random weights of `type`: quantized from random floats where our quantizer can, else random
 * block bytes with a sane f16 scale (Q4_0, Q4_1, Q5_0: the scale is the first 2 bytes; Q4_1's
 * offset m, the next 2, is a negative multiple of the scale as a quantizer would make it). */
static void *make_weights(uint32_t type, int64_t rows, int64_t cols, size_t *row_bytes)
{
    uint64_t nb = 0;
    assert_int_equal(cairn_gguf_tensor_nbytes(type, (uint64_t)cols, &nb, NULL), 0);
    *row_bytes = (size_t)nb;
    uint8_t *w = malloc(nb * (size_t)rows);
    assert_non_null(w);
    if (cairn_gguf_type_can_quantize(type)) {
        float *f = malloc(sizeof(float) * (size_t)(rows * cols));
        for (int64_t i = 0; i < rows * cols; i++)
            f[i] = frand();
        assert_int_equal(cairn_gguf_quantize(type, f, (uint64_t)(rows * cols), w,
                                             nb * (size_t)rows, NULL), 0);
        free(f);
    } else {
        uint32_t bb = cairn_gguf_type_block_bytes(type);
        for (size_t i = 0; i < nb * (size_t)rows; i++)
            w[i] = (uint8_t)rnd();
        for (size_t off = 0; off < nb * (size_t)rows; off += bb) {
            float df = 0.01f + 0.02f * (float)(rnd() % 100) / 100.0f;
            uint16_t d = cairn_gguf_f32_to_f16(df);
            memcpy(w + off, &d, 2);
            if (type == CAIRN_GGUF_Q4_1) {
                uint16_t m = cairn_gguf_f32_to_f16(-df * (float)(rnd() % 1600) / 100.0f);
                memcpy(w + off + 2, &m, 2);
            }
        }
    }
    return w;
}

static void check_type(uint32_t type, int64_t cols, bool avx2)
{
    const int64_t rows = 7;
    size_t rb;
    uint8_t *w = make_weights(type, rows, cols, &rb);
    float *x = malloc(sizeof(float) * (size_t)cols), *wf = malloc(sizeof(float) * (size_t)cols);
    void *act = malloc(cairn_cpu_act_bytes(type, cols));
    for (int64_t i = 0; i < cols; i++)
        x[i] = frand() * (i % 5 == 0 ? 3.0f : 1.0f);
    cairn_cpu_quantize_act(type, x, cols, act, avx2);
    for (int64_t r = 0; r < rows; r++) {
        assert_int_equal(cairn_gguf_dequantize_raw(type, w + r * rb, rb, wf, (uint64_t)cols, NULL),
                         0);
        double ref = 0.0, mag = 0.0;
        for (int64_t i = 0; i < cols; i++) {
            ref += (double)wf[i] * x[i];
            mag += fabs((double)wf[i] * x[i]);
        }
        float got = cairn_cpu_vec_dot(type, cols, w + r * rb, act, avx2);
        /* 8-bit activations: relative error of the terms ~ 1/254; float types much tighter. */
        bool quant = cairn_gguf_type_block_size(type) > 1;
        double tol = (quant ? 1e-2 : 1e-5) * mag + 1e-6;
        if (fabs(got - ref) > tol)
            fail_msg("%s cols %lld row %lld avx2 %d: got %f want %f (tol %g)",
                     cairn_gguf_type_name(type), (long long)cols, (long long)r, avx2, got, ref,
                     tol);
    }
    free(w);
    free(x);
    free(wf);
    free(act);
}

static const uint32_t types[] = {CAIRN_GGUF_F32,  CAIRN_GGUF_F16,  CAIRN_GGUF_BF16,
                                 CAIRN_GGUF_Q4_0, CAIRN_GGUF_Q5_0, CAIRN_GGUF_Q8_0,
                                 CAIRN_GGUF_Q4_K, CAIRN_GGUF_Q6_K, CAIRN_GGUF_Q4_1};

static void test_vec_dot_portable(void **state)
{
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        check_type(types[i], 256, false);
        check_type(types[i], 1024, false);
    }
}

static void test_vec_dot_avx2(void **state)
{
    if (!cairn_cpu_has_avx2())
        skip();
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        check_type(types[i], 256, true);
        check_type(types[i], 768, true);
    }
}


/* Exact check: the dot product against the *dequantized activation blocks* must equal the
 * float dot product of the dequantized weights to float rounding, for every bit layout. */
static double act_value(uint32_t type, const void *act, int64_t i)
{
    if (cairn_gguf_type_block_size(type) == 32) {
        const cairn__act_q8 *a = act;
        return (double)a[i / 32].d * a[i / 32].qs[i % 32];
    }
    const cairn__act_q8k *a = act;
    return (double)a[i / 256].d * a[i / 256].qs[i % 256];
}

static void test_vec_dot_exact(void **state)
{
    for (int avx = 0; avx < 2; avx++) {
        if (avx && !cairn_cpu_has_avx2())
            continue;
        for (size_t ti = 3; ti < sizeof(types) / sizeof(types[0]); ti++) {
            uint32_t type = types[ti];
            if (type == CAIRN_GGUF_Q4_1)
                continue; /* its m * s terms: test_q4_1_vs_scalar_reference */
            const int64_t cols = 1024, rows = 5;
            size_t rb;
            uint8_t *w = make_weights(type, rows, cols, &rb);
            float x[1024], wf[1024];
            for (int i = 0; i < cols; i++)
                x[i] = frand();
            void *act = malloc(cairn_cpu_act_bytes(type, cols));
            cairn_cpu_quantize_act(type, x, cols, act, avx);
            for (int64_t r = 0; r < rows; r++) {
                assert_int_equal(cairn_gguf_dequantize_raw(type, w + r * rb, rb, wf,
                                                           (uint64_t)cols, NULL), 0);
                double ref = 0, mag = 0;
                for (int64_t i = 0; i < cols; i++) {
                    ref += wf[i] * act_value(type, act, i);
                    mag += fabs(wf[i] * act_value(type, act, i));
                }
                float got = cairn_cpu_vec_dot(type, cols, w + r * rb, act, avx);
                if (fabs(got - ref) > 2e-6 * mag + 1e-6)
                    fail_msg("%s avx2 %d row %lld: got %.7f want %.7f", cairn_gguf_type_name(type),
                             avx, (long long)r, got, ref);
            }
            free(w);
            free(act);
        }
    }
}

/*
 * Q4_1 against a scalar reference written from the formats' definitions (ggml's Q4_1 and
 * Q8_1): the activations x quantize per block of 32 to y = round-half-even(x * 127 / amax),
 * d = F16(amax / 127) and s = F16(amax / 127 * sum(y)); the product is
 * sum over blocks of d_w d_a sum(q y) + m s, where the weight values are q (0..15, low nibbles
 * first) times d_w plus m. Both implementations (portable and AVX2) must quantize exactly so,
 * agree with the reference to float rounding, and give each other's bits.
 */
static void test_q4_1_vs_scalar_reference(void **state)
{
    (void)state;
    enum { COLS = 1024, NB = COLS / 32, ROWS = 9 };
    size_t rb;
    uint8_t *w = make_weights(CAIRN_GGUF_Q4_1, ROWS, COLS, &rb);
    assert_int_equal(rb, (size_t)NB * 20);
    float x[COLS];
    for (int i = 0; i < COLS; i++)
        x[i] = frand() * (i % 9 == 0 ? 5.0f : 1.0f);
    x[64] = 0.0f; /* a block of zeros: d = 0, s = 0 */
    for (int i = 64; i < 96; i++)
        x[i] = 0.0f;
    /* the reference quantization */
    int8_t yq[COLS];
    float yd[NB], ys[NB];
    for (int b = 0; b < NB; b++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            yq[b * 32 + j] = (int8_t)nearbyintf(x[b * 32 + j] * id);
            sum += yq[b * 32 + j];
        }
        yd[b] = cairn_gguf_f16_to_f32(cairn_gguf_f32_to_f16(d));
        ys[b] = cairn_gguf_f16_to_f32(cairn_gguf_f32_to_f16(d * (float)sum));
    }
    size_t ab = cairn_cpu_act_bytes(CAIRN_GGUF_Q4_1, COLS);
    assert_int_equal(ab, (size_t)NB * (sizeof(cairn__act_q8) + sizeof(float)));
    for (int avx = 0; avx < 2; avx++) {
        if (avx && !cairn_cpu_has_avx2())
            continue;
        uint8_t *act = malloc(ab);
        cairn_cpu_quantize_act(CAIRN_GGUF_Q4_1, x, COLS, act, avx);
        const cairn__act_q8 *a = (const cairn__act_q8 *)act;
        const float *s = (const float *)(a + NB);
        for (int b = 0; b < NB; b++) {
            assert_memory_equal(a[b].qs, yq + b * 32, 32);
            assert_memory_equal(&a[b].d, &yd[b], sizeof(float));
            assert_memory_equal(&s[b], &ys[b], sizeof(float));
        }
        for (int r = 0; r < ROWS; r++) {
            const uint8_t *row = w + (size_t)r * rb;
            double ref = 0.0, mag = 0.0;
            for (int b = 0; b < NB; b++) {
                uint16_t dh, mh;
                memcpy(&dh, row + b * 20, 2);
                memcpy(&mh, row + b * 20 + 2, 2);
                const uint8_t *qs = row + b * 20 + 4;
                long isum = 0;
                for (int j = 0; j < 16; j++)
                    isum += (long)(qs[j] & 0xF) * yq[b * 32 + j] +
                            (long)(qs[j] >> 4) * yq[b * 32 + 16 + j];
                double dw = cairn_gguf_f16_to_f32(dh), m = cairn_gguf_f16_to_f32(mh);
                double term = dw * yd[b] * (double)isum, off = m * ys[b];
                ref += term + off;
                mag += fabs(term) + fabs(off);
            }
            float got = cairn_cpu_vec_dot(CAIRN_GGUF_Q4_1, COLS, row, act, avx);
            if (fabs(got - ref) > 1e-6 * mag + 1e-7)
                fail_msg("Q4_1 avx2 %d row %d: got %.9g, reference %.9g", avx, r, got, ref);
            if (avx) { /* the AVX2 kernel gives the portable one's bits */
                float p = cairn_cpu_vec_dot(CAIRN_GGUF_Q4_1, COLS, row, act, false);
                assert_memory_equal(&p, &got, sizeof p);
            }
        }
        free(act);
    }
    free(w);
}

/* The AVX2 and portable paths agree closely on the same quantized activations. */
static void test_avx2_matches_portable(void **state)
{
    if (!cairn_cpu_has_avx2())
        skip();
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        uint32_t type = types[i];
        const int64_t cols = 512;
        size_t rb;
        uint8_t *w = make_weights(type, 1, cols, &rb);
        float x[512];
        for (int j = 0; j < cols; j++)
            x[j] = frand();
        size_t ab = cairn_cpu_act_bytes(type, cols);
        uint8_t *a0 = malloc(ab), *a1 = malloc(ab);
        cairn_cpu_quantize_act(type, x, cols, a0, false);
        cairn_cpu_quantize_act(type, x, cols, a1, true);
        assert_memory_equal(a0, a1, ab);
        float p = cairn_cpu_vec_dot(type, cols, w, a0, false);
        float v = cairn_cpu_vec_dot(type, cols, w, a0, true);
        assert_true(fabsf(p - v) <= 1e-4f * (1.0f + fabsf(p)));
        free(w);
        free(a0);
        free(a1);
    }
}

/* The kernels follow llama.cpp's summation order for each row kind; the portable and AVX2
 * forms of every kind give the same bits (our logits must not depend on the CPU). */
static void test_row_kinds_portable_equals_avx2(void **state)
{
    if (!cairn_cpu_has_avx2())
        skip();
    static const uint32_t kq[] = {CAIRN_GGUF_Q4_K, CAIRN_GGUF_Q6_K};
    static const int kinds[] = {CAIRN_CPU_ROW_SINGLE, CAIRN_CPU_ROW_BATCH, CAIRN_CPU_ROW_TILE4,
                                CAIRN_CPU_ROW_WIDE,
                                CAIRN_CPU_ROW_BATCH | CAIRN_CPU_ROW_TILE4 | CAIRN_CPU_ROW_WIDE};
    for (size_t ti = 0; ti < 2; ti++) {
        const int64_t cols = 1024;
        size_t rb;
        uint8_t *w = make_weights(kq[ti], 3, cols, &rb);
        float x[1024];
        for (int j = 0; j < cols; j++)
            x[j] = 4.0f * frand();
        cairn__act_q8k a[4];
        cairn_cpu_quantize_act(kq[ti], x, cols, a, true);
        float first = 0.0f;
        for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
            for (int b = 0; b < 4; b++)
                a[b].kind = kinds[k];
            for (int r = 0; r < 3; r++) {
                float p = cairn_cpu_vec_dot(kq[ti], cols, w + r * rb, a, false);
                float v = cairn_cpu_vec_dot(kq[ti], cols, w + r * rb, a, true);
                assert_memory_equal(&p, &v, sizeof p);
                if (r == 0 && k == 0)
                    first = p;
                /* every order is a rounding of the same sum */
                assert_true(fabsf(p - first) <= 1e-4f * (1.0f + fabsf(first)) || r > 0);
            }
        }
        free(w);
    }
    /* ggml's exp, vector against scalar, over the whole range softmax meets (x <= 0) and past
     * the saturation points */
    float xs[4096], ys[4096];
    for (int i = 0; i < 4096; i++)
        xs[i] = -0.06f * (float)i + (i % 7 == 0 ? 0.001f * frand() : 0.0f);
    xs[1] = -87.3f, xs[2] = -103.97f, xs[3] = -120.0f, xs[4] = -133.2f, xs[5] = -200.0f;
    memcpy(ys, xs, sizeof xs);
    cairn__exp_shift_avx2(ys, 4096, 0.0f);
    for (int i = 0; i < 4096; i++) {
        float want = cairn__expf_ggml(xs[i]);
        if (memcmp(&want, &ys[i], sizeof want) != 0)
            fail_msg("exp(%.9g): scalar %.9g vector %.9g", xs[i], want, ys[i]);
        assert_true(fabsf(want - expf(xs[i])) <= 4e-7f * expf(xs[i]) + 1e-45f);
    }
}

/* Attention: the portable and AVX2 implementations give the same bits for every row kind,
 * including windows that start mid-lane and a group of query heads. */
static void test_attention_portable_equals_avx2(void **state)
{
    if (!cairn_cpu_has_avx2())
        skip();
    enum { BT = 16, NB = 40, D = 64, NQ = 4 };
    static uint16_t k[NB * BT * D], v[NB * BT * D];
    for (int i = 0; i < NB * BT * D; i++) {
        k[i] = cairn_gguf_f32_to_f16(2.0f * frand());
        v[i] = cairn_gguf_f32_to_f16(frand());
    }
    int32_t blocks[NB];
    for (int i = 0; i < NB; i++)
        blocks[i] = (i * 7) % NB;
    cairn_cpu_paged pg = {.k = k, .v = v, .block_stride = BT * D, .row_stride = D,
                          .blocks = blocks, .block_tokens = BT};
    float q[NQ * D], a[NQ * D], b[NQ * D];
    static float scores[NQ * NB * BT];
    for (int i = 0; i < NQ * D; i++)
        q[i] = frand();
    cairn_cpu_round_f16(q, NQ * D);
    static const int range[][2] = {{0, 0}, {0, 15}, {3, 70}, {37, 600}, {0, NB * BT - 1}};
    for (int kind = 0; kind < 8; kind++)
        for (int ri = 0; ri < 5; ri++) {
            int lo = range[ri][0], hi = range[ri][1];
            cairn__attention_heads(q, NQ, D, &pg, 0, lo, hi, 1.0f, kind, scores, a, false);
            cairn__attention_heads(q, NQ, D, &pg, 0, lo, hi, 1.0f, kind, scores, b, true);
            assert_memory_equal(a, b, sizeof a);
        }
}

/* matmul over the pool equals row-by-row vec_dot bit for bit, for token counts that exercise
 * full and partial token tiles and more than one token block, with the tokens' row kinds
 * mixed: a sequence's results must not depend on what it is batched with (the engine's
 * batched == unbatched guarantee). */
static void test_matmul(void **state)
{
    cairn_pool_params pp = cairn_pool_default_params();
    pp.n_threads = 3;
    cairn_pool *pool;
    assert_int_equal(cairn_pool_open(&pool, &pp, NULL), 0);
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        const int64_t rows = 37, cols = 512;
        size_t rb;
        uint8_t *w = make_weights(types[ti], rows, cols, &rb);
        cairn_cpu_mat m = {.type = types[ti], .rows = rows, .cols = cols, .row_bytes = rb,
                           .data = w};
        static const int64_t counts[] = {1, 5, 8, 13, 70};
        for (size_t ci = 0; ci < sizeof(counts) / sizeof(counts[0]); ci++) {
            int64_t nt = counts[ci];
            float *x = malloc(sizeof(float) * (size_t)(nt * cols));
            float *y = malloc(sizeof(float) * (size_t)(nt * rows));
            for (int64_t i = 0; i < nt * cols; i++)
                x[i] = frand();
            void *scr = malloc(cairn_cpu_matmul_scratch_bytes(&m, nt) + 1);
            /* row kinds, all the same (whole tiles take the kernels' 4-row paths) or mixed:
             * each token sums in its own kind's order, whatever its tile */
            uint8_t kinds[70];
            for (int64_t t = 0; t < nt; t++)
                kinds[t] = (uint8_t)(ci % 2 ? (t * 5 + ci) % 8 : 7);
            const cairn_cpu_mat *mp = &m;
            cairn_cpu_matmul_n(pool, &mp, 1, x, nt, &y, scr, kinds);
            void *act = malloc(cairn_cpu_act_bytes(m.type, cols));
            for (int64_t t = 0; t < nt; t++) {
                cairn_cpu_quantize_act(m.type, x + t * cols, cols, act, cairn_cpu_has_avx2());
                if (m.type == CAIRN_GGUF_Q4_K || m.type == CAIRN_GGUF_Q6_K)
                    for (int64_t b = 0; b < cols / 256; b++)
                        ((cairn__act_q8k *)act)[b].kind = kinds[t];
                for (int64_t r = 0; r < rows; r++) {
                    float want = cairn_cpu_vec_dot(m.type, cols, w + r * rb, act,
                                                   cairn_cpu_has_avx2());
                    if (memcmp(&y[t * rows + r], &want, sizeof want) != 0)
                        fail_msg("%s tokens %lld: y[%lld][%lld] = %.9g, vec_dot %.9g",
                                 cairn_gguf_type_name(m.type), (long long)nt, (long long)t,
                                 (long long)r, y[t * rows + r], want);
                }
            }
            free(act);
            free(scr);
            free(x);
            free(y);
        }
        free(w);
    }
    cairn_pool_close(pool);
}

/* Lays nt tokens out as a tiled kernel reads them (cpu_internal.h): q8f tiles of 8 with the
 * scales after the blocks (values + 128 for the VNNI kernel) and, for Q4_1, the Q8_1 sums
 * after the scales; kq tiles of 4. */
static uint8_t *make_tiles(uint32_t type, const float *x, int64_t nt, int64_t cols,
                           const uint8_t *kinds, bool u8)
{
    bool kq = type == CAIRN_GGUF_Q4_K || type == CAIRN_GGUF_Q6_K;
    bool q41 = type == CAIRN_GGUF_Q4_1;
    int64_t tile = kq ? CAIRN__KQ_TILE : CAIRN__Q8F_TILE, nb = cols / (kq ? 256 : 32);
    size_t blk = kq ? sizeof(cairn__act_q8k) : sizeof(cairn__act_q8);
    size_t tile_bytes =
        (size_t)(tile * nb) * (blk + (kq ? 0 : sizeof(float)) + (q41 ? sizeof(float) : 0));
    size_t tiles = ((size_t)nt + (size_t)tile - 1) / (size_t)tile;
    uint8_t *a = calloc(tiles, tile_bytes);
    assert_non_null(a);
    for (int64_t t = 0; t < nt; t++) {
        uint8_t *tb = a + (size_t)(t / tile) * tile_bytes;
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *ab = tb + (size_t)(b * tile + t % tile) * blk;
            int64_t bs = kq ? 256 : 32;
            if (q41) { /* a Q8_1 row of one block: the block, then its sum */
                uint8_t one[sizeof(cairn__act_q8) + sizeof(float)];
                cairn_cpu_quantize_act(type, x + t * cols + b * bs, bs, one, true);
                memcpy(ab, one, blk);
                memcpy(tb + (size_t)(tile * nb) * (blk + sizeof(float)) +
                           (size_t)(b * tile + t % tile) * sizeof(float),
                       one + blk, sizeof(float));
            } else {
                cairn_cpu_quantize_act(type, x + t * cols + b * bs, bs, ab, true);
            }
            if (kq) {
                ((cairn__act_q8k *)ab)->kind = kinds[t];
                continue;
            }
            cairn__act_q8 *q = (cairn__act_q8 *)ab;
            ((float *)(tb + (size_t)(tile * nb) * blk))[b * tile + t % tile] = q->d;
            for (int i = 0; u8 && i < 32; i++)
                q->qs[i] = (int8_t)((uint8_t)q->qs[i] ^ 0x80);
        }
    }
    return a;
}

/* The tiled kernels of both instruction sets (AVX2, and AVX-512 VNNI where the CPU has it)
 * equal vec_dot bit for bit, called directly so that each variant runs whatever this CPU
 * would pick: row counts with and without whole 8-row groups, every tile fill, row kinds the
 * K-quant 8-row kernels take and kinds they leave to the one-row kernels. */
static void test_tiled_kernels_each_isa(void **state)
{
    (void)state;
    if (!cairn_cpu_has_avx2())
        skip();
    static const uint32_t tt[] = {CAIRN_GGUF_Q8_0, CAIRN_GGUF_Q5_0, CAIRN_GGUF_Q4_0,
                                  CAIRN_GGUF_Q4_1, CAIRN_GGUF_Q4_K, CAIRN_GGUF_Q6_K};
    for (size_t ti = 0; ti < sizeof tt / sizeof tt[0]; ti++)
        for (int isa = 0; isa < (cairn__has_vnni() ? 2 : 1); isa++) {
            uint32_t type = tt[ti];
            bool kq = type == CAIRN_GGUF_Q4_K || type == CAIRN_GGUF_Q6_K;
            const int64_t cols = 512, nb = cols / (kq ? 256 : 32);
            static const int rows_c[] = {8, 19};
            static const int nt_c[] = {3, 9, 16};
            for (size_t ri = 0; ri < 2; ri++)
                for (size_t ni = 0; ni < 3; ni++)
                    for (int mixed = 0; mixed < 2; mixed++) {
                        int rows = rows_c[ri], nt = nt_c[ni];
                        size_t rb;
                        uint8_t *w = make_weights(type, rows, cols, &rb);
                        float *x = malloc(sizeof(float) * (size_t)(nt * cols));
                        float *y = malloc(sizeof(float) * (size_t)(nt * rows));
                        uint8_t kinds[16];
                        for (int64_t i = 0; i < nt * cols; i++)
                            x[i] = frand();
                        for (int t = 0; t < nt; t++)
                            kinds[t] = (uint8_t)(mixed ? (t * 3 + 1) % 8 : 7);
                        uint8_t *a = make_tiles(type, x, nt, cols, kinds,
                                                !kq && isa == 1 && type != CAIRN_GGUF_Q4_1);
                        if (kq)
                            (isa ? cairn__gemm_kq_vnni : cairn__gemm_kq_avx2)(
                                type, nb, w, rb, rows, a, nt, y, (size_t)rows);
                        else
                            (isa ? cairn__gemm_q8f_vnni : cairn__gemm_q8f_avx2)(
                                type, nb, w, rb, rows, a, nt, y, (size_t)rows);
                        void *act = malloc(cairn_cpu_act_bytes(type, cols));
                        for (int t = 0; t < nt; t++) {
                            cairn_cpu_quantize_act(type, x + t * cols, cols, act, true);
                            for (int64_t b = 0; kq && b < nb; b++)
                                ((cairn__act_q8k *)act)[b].kind = kinds[t];
                            for (int r = 0; r < rows; r++) {
                                float want = cairn_cpu_vec_dot(type, cols, w + (size_t)r * rb,
                                                               act, true);
                                if (memcmp(&y[t * rows + r], &want, sizeof want) != 0)
                                    fail_msg("%s %s rows %d tokens %d kinds %s: y[%d][%d] = "
                                             "%.9g, vec_dot %.9g",
                                             cairn_gguf_type_name(type), isa ? "vnni" : "avx2",
                                             rows, nt, mixed ? "mixed" : "all", t, r,
                                             y[t * rows + r], want);
                            }
                        }
                        free(act);
                        free(a);
                        free(y);
                        free(x);
                        free(w);
                    }
        }
}

/* The repacked Q8_0 path (cairn_cpu_mat_repack, the output projection's) through
 * cairn_cpu_matmul, with and without a pool, equals vec_dot bit for bit: odd and even token
 * counts (its kernel takes tokens in pairs), one and several 16-row groups per task. Where the
 * CPU has no AVX-512 VNNI the repack must decline and leave the plain path. */
static void test_matmul_repacked_q8_0(void **state)
{
    (void)state;
    const int64_t cols = 640;
    static const int rows_c[] = {16, 48, 112};
    static const int nt_c[] = {1, 2, 3, 8, 17};
    cairn_pool_params pp = cairn_pool_default_params();
    pp.n_threads = 2;
    cairn_pool *pool = NULL;
    assert_int_equal(cairn_pool_open(&pool, &pp, NULL), 0);
    for (size_t ri = 0; ri < 3; ri++) {
        int rows = rows_c[ri];
        size_t rb;
        uint8_t *w = make_weights(CAIRN_GGUF_Q8_0, rows, cols, &rb);
        cairn_cpu_mat m = {CAIRN_GGUF_Q8_0, rows, cols, rb, w, NULL};
        void *owned = (void *)1;
        assert_int_equal(cairn_cpu_mat_repack(&m, &owned, NULL), 0);
        if (!cairn__has_vnni()) {
            assert_null(owned);
            assert_null(m.r16);
            print_message("no AVX-512 VNNI: the repacked kernel is not run on this CPU\n");
            free(w);
            continue;
        }
        assert_non_null(m.r16);
        for (size_t ni = 0; ni < 5; ni++)
            for (int use_pool = 0; use_pool < 2; use_pool++) {
                int nt = nt_c[ni];
                float *x = malloc(sizeof(float) * (size_t)(nt * cols));
                float *y = malloc(sizeof(float) * (size_t)(nt * rows));
                void *scratch = malloc(cairn_cpu_matmul_scratch_bytes(&m, nt));
                void *act = malloc(cairn_cpu_act_bytes(CAIRN_GGUF_Q8_0, cols));
                for (int64_t i = 0; i < nt * cols; i++)
                    x[i] = frand() * (i % 7 == 0 ? 4.0f : 1.0f);
                cairn_cpu_matmul(use_pool ? pool : NULL, &m, x, nt, y, scratch);
                for (int t = 0; t < nt; t++) {
                    cairn_cpu_quantize_act(CAIRN_GGUF_Q8_0, x + t * cols, cols, act, true);
                    for (int r = 0; r < rows; r++) {
                        float want =
                            cairn_cpu_vec_dot(CAIRN_GGUF_Q8_0, cols, w + (size_t)r * rb, act, true);
                        if (memcmp(&y[t * rows + r], &want, sizeof want) != 0)
                            fail_msg("repacked Q8_0 rows %d tokens %d pool %d: y[%d][%d] = %.9g, "
                                     "vec_dot %.9g",
                                     rows, nt, use_pool, t, r, y[t * rows + r], want);
                    }
                }
                free(act);
                free(scratch);
                free(y);
                free(x);
            }
        free(owned);
        free(w);
    }
    cairn_pool_close(pool);
}

static void test_rmsnorm_softmax_act(void **state)
{
    float x[64], w[64], out[64];
    double ss = 0;
    for (int i = 0; i < 64; i++) {
        x[i] = frand() * 4.0f;
        w[i] = frand();
        ss += x[i] * x[i];
    }
    cairn_cpu_rmsnorm(out, x, w, 64, 1e-6f);
    for (int i = 0; i < 64; i++)
        assert_true(fabs(out[i] - x[i] / sqrt(ss / 64 + 1e-6) * w[i]) < 1e-5);

    float s[10] = {1, 2, 3, 1000, -5, 0, 0.5f, 2, 3, 4};
    cairn_cpu_softmax(s, 10);
    double sum = 0;
    for (int i = 0; i < 10; i++)
        sum += s[i];
    assert_true(fabs(sum - 1.0) < 1e-6);
    assert_true(s[3] > 0.999f);
    float u[3] = {0.0f, 1.0f, 2.0f};
    cairn_cpu_softmax(u, 3);
    assert_true(fabsf(u[1] / u[0] - expf(1.0f)) < 1e-4f);

    float g[4] = {-3.0f, -0.5f, 0.0f, 2.0f}, si[4];
    memcpy(si, g, sizeof g);
    cairn_cpu_gelu_tanh(g, 4);
    cairn_cpu_silu(si, 4);
    const float in[4] = {-3.0f, -0.5f, 0.0f, 2.0f};
    for (int i = 0; i < 4; i++) {
        double v = in[i];
        double gr = 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
        assert_true(fabs(g[i] - gr) < 1e-6);
        assert_true(fabs(si[i] - v / (1 + exp(-v))) < 1e-6);
    }
}

/* RoPE: rotation preserves pair norms; position 0 is the identity; layouts pair differently. */
static void test_rope(void **state)
{
    enum { H = 2, D = 8 };
    float x[H * D], y[H * D], z[H * D];
    for (int i = 0; i < H * D; i++)
        x[i] = frand();
    memcpy(y, x, sizeof x);
    cairn_cpu_rope(y, H, D, 0, 10000.0f, 1.0f, true);
    assert_memory_equal(x, y, sizeof x);
    int pos = 7;
    memcpy(y, x, sizeof x);
    memcpy(z, x, sizeof x);
    cairn_cpu_rope(y, H, D, pos, 10000.0f, 1.0f, true);
    cairn_cpu_rope(z, H, D, pos, 10000.0f, 1.0f, false);
    for (int h = 0; h < H; h++) {
        for (int i = 0; i < D / 2; i++) {
            double th = pos * pow(10000.0, -2.0 * i / D);
            const float *xh = x + h * D;
            /* neox pairs (i, i + D/2) */
            double a = xh[i], b = xh[i + D / 2];
            assert_true(fabs(y[h * D + i] - (a * cos(th) - b * sin(th))) < 1e-5);
            assert_true(fabs(y[h * D + i + D / 2] - (a * sin(th) + b * cos(th))) < 1e-5);
            /* normal pairs (2i, 2i+1) */
            a = xh[2 * i];
            b = xh[2 * i + 1];
            assert_true(fabs(z[h * D + 2 * i] - (a * cos(th) - b * sin(th))) < 1e-5);
            assert_true(fabs(z[h * D + 2 * i + 1] - (a * sin(th) + b * cos(th))) < 1e-5);
        }
    }
}

/* Paged attention over scattered blocks equals a dense float softmax(qK)V. */
static void test_attention(void **state)
{
    enum { BT = 4, NB = 6, KVH = 2, D = 32, ROW = KVH * D };
    uint16_t k[NB * BT * ROW], v[NB * BT * ROW];
    for (int i = 0; i < NB * BT * ROW; i++) {
        k[i] = cairn_gguf_f32_to_f16(frand());
        v[i] = cairn_gguf_f32_to_f16(frand());
    }
    int32_t blocks[5] = {3, -1, 0, 5, 2}; /* block 1 was freed (out of the window) */
    cairn_cpu_paged pg = {.k = k, .v = v, .block_stride = BT * ROW, .row_stride = ROW,
                          .blocks = blocks, .block_tokens = BT};
    float q[D], out[D], scores[32];
    for (int i = 0; i < D; i++)
        q[i] = frand();
    int lo = 9, hi = 17;
    for (int kh = 0; kh < KVH; kh++) {
        cairn_cpu_attention(q, D, &pg, kh, lo, hi, 0.3f, CAIRN_CPU_ROW_SINGLE, scores, out);
        double sc[32], mx = -1e30, sum = 0;
        for (int p = lo; p <= hi; p++) {
            size_t off = (size_t)blocks[p / BT] * BT * ROW + (size_t)(p % BT) * ROW + kh * D;
            double s = 0;
            for (int i = 0; i < D; i++)
                s += q[i] * cairn_gguf_f16_to_f32(k[off + i]);
            sc[p - lo] = 0.3 * s;
            if (sc[p - lo] > mx)
                mx = sc[p - lo];
        }
        for (int p = lo; p <= hi; p++)
            sum += (sc[p - lo] = exp(sc[p - lo] - mx));
        for (int i = 0; i < D; i++) {
            double o = 0;
            for (int p = lo; p <= hi; p++) {
                size_t off = (size_t)blocks[p / BT] * BT * ROW + (size_t)(p % BT) * ROW + kh * D;
                /* The kernel weighs V with F16-rounded probabilities (ggml's arithmetic). */
                float prob =
                    cairn_gguf_f16_to_f32(cairn_gguf_f32_to_f16((float)(sc[p - lo] / sum)));
                o += prob * cairn_gguf_f16_to_f32(v[off + i]);
            }
            assert_true(fabs(out[i] - o) < 1e-5);
        }
    }
}

/* Grouped-query attention: heads sharing a KV head give exactly what one head at a time gives,
 * with group sizes above the kernel's 4-head step and positions spanning its 64-row runs; a
 * head_dim that is not a multiple of 16 takes the fallback path. */
static void test_attention_heads(void **state)
{
    enum { BT = 8, NB = 12, KVH = 2, MAXD = 48, ROW = KVH * MAXD, NQ = 6 };
    static uint16_t k[NB * BT * ROW], v[NB * BT * ROW];
    for (int i = 0; i < NB * BT * ROW; i++) {
        k[i] = cairn_gguf_f32_to_f16(frand());
        v[i] = cairn_gguf_f32_to_f16(frand());
    }
    int32_t blocks[NB] = {7, 3, 11, 0, 5, 9, 1, 10, 2, 8, 4, 6};
    static const int dims[] = {32, 48, 40};
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        int D = dims[di];
        cairn_cpu_paged pg = {.k = k, .v = v, .block_stride = BT * ROW, .row_stride = ROW,
                              .blocks = blocks, .block_tokens = BT};
        float q[NQ * MAXD], got[NQ * MAXD], want[NQ * MAXD];
        static float scores[NQ * NB * BT];
        for (int i = 0; i < NQ * D; i++)
            q[i] = frand();
        cairn_cpu_round_f16(q, NQ * D);
        static const int range[][2] = {{0, 0}, {3, 70}, {5, NB * BT - 1}};
        for (int ri = 0; ri < 3 * 3; ri++) {
            int lo = range[ri % 3][0], hi = range[ri % 3][1], kind = ri / 3; /* each row kind */
            cairn_cpu_attention_heads(q, NQ, D, &pg, 1, lo, hi, 0.2f, kind, scores, got);
            for (int g = 0; g < NQ; g++)
                cairn_cpu_attention(q + g * D, D, &pg, 1, lo, hi, 0.2f, kind, scores,
                                    want + g * D);
            assert_memory_equal(got, want, sizeof(float) * (size_t)(NQ * D));
        }
    }
}

/* The table-driven gated GELU equals the direct F16 evaluation bit for bit, including the
 * |x| >= 10 pass-through and a length that is not a multiple of the vector width. */
static void test_gated_gelu_table(void **state)
{
    float *table = malloc(sizeof(float) * CAIRN_CPU_GELU_TABLE_SIZE);
    assert_non_null(table);
    cairn_cpu_gelu_f16_table(table);
    enum { N = 1003 };
    float a[N], b[N], c[N];
    for (int i = 0; i < N; i++) {
        a[i] = frand() * (i % 7 == 0 ? 14.0f : 4.0f);
        b[i] = frand();
    }
    a[0] = 10.0f;
    a[1] = -10.0f;
    a[2] = 0.0f;
    memcpy(c, a, sizeof a);
    cairn_cpu_gated_gelu_table(a, b, N, table);
    cairn_cpu_gated(c, b, N, true);
    assert_memory_equal(a, c, sizeof a);
    free(table);
}

/* Products sharing one quantization (cairn_cpu_matmul_n) equal separate products bit for bit,
 * for a mix of types that can share (Q5_0, Q8_0) and one that cannot (Q4_K). */
static void test_matmul_n(void **state)
{
    cairn_pool_params pp = cairn_pool_default_params();
    pp.n_threads = 2;
    cairn_pool *pool;
    assert_int_equal(cairn_pool_open(&pool, &pp, NULL), 0);
    const int64_t cols = 512, nt = 11;
    const uint32_t tys[3] = {CAIRN_GGUF_Q5_0, CAIRN_GGUF_Q8_0, CAIRN_GGUF_Q4_K};
    const int64_t rows[3] = {40, 9, 23};
    cairn_cpu_mat m[3];
    const cairn_cpu_mat *mp[3];
    float *y[3], *want[3];
    uint8_t *wd[3];
    size_t scr_bytes = 0;
    for (int i = 0; i < 3; i++) {
        size_t rb;
        wd[i] = make_weights(tys[i], rows[i], cols, &rb);
        m[i] = (cairn_cpu_mat){.type = tys[i], .rows = rows[i], .cols = cols, .row_bytes = rb,
                               .data = wd[i]};
        mp[i] = &m[i];
        y[i] = malloc(sizeof(float) * (size_t)(nt * rows[i]));
        want[i] = malloc(sizeof(float) * (size_t)(nt * rows[i]));
        size_t sb = cairn_cpu_matmul_scratch_bytes(&m[i], nt);
        scr_bytes = sb > scr_bytes ? sb : scr_bytes;
    }
    assert_true(cairn_cpu_matmul_can_share(&m[0], &m[1]));
    assert_false(cairn_cpu_matmul_can_share(&m[0], &m[2]));
    float *x = malloc(sizeof(float) * (size_t)(nt * cols));
    for (int64_t i = 0; i < nt * cols; i++)
        x[i] = frand();
    void *scr = malloc(scr_bytes);
    for (int n = 2; n <= 3; n++) {
        cairn_cpu_matmul_n(pool, mp, n, x, nt, y, scr, NULL);
        for (int i = 0; i < n; i++) {
            cairn_cpu_matmul(pool, &m[i], x, nt, want[i], scr);
            assert_memory_equal(y[i], want[i], sizeof(float) * (size_t)(nt * rows[i]));
        }
    }
    for (int i = 0; i < 3; i++) {
        free(wd[i]);
        free(y[i]);
        free(want[i]);
    }
    free(x);
    free(scr);
    cairn_pool_close(pool);
}

/* Shared angles: rope_angles + rope_apply is cairn_cpu_rope exactly, in both pair layouts. */
static void test_rope_split(void **state)
{
    enum { H = 3, D = 64 };
    float x[H * D], y[H * D], cs[D];
    for (int i = 0; i < H * D; i++)
        x[i] = frand();
    for (int neox = 0; neox < 2; neox++) {
        memcpy(y, x, sizeof x);
        cairn_cpu_rope(x, H, D, 613, 1e6f, 0.125f, neox);
        cairn_cpu_rope_angles(D, 613, 1e6f, 0.125f, cs);
        cairn_cpu_rope_apply(y, H, D, cs, neox);
        assert_memory_equal(x, y, sizeof x);
    }
}

static void test_mat_from_gguf_errors(void **state)
{
    cairn_gguf_tensor t = {.name = "w", .type = CAIRN_GGUF_Q4_K, .n_dims = 2,
                           .dims = {100, 4, 1, 1}};
    cairn_cpu_mat m;
    cairn_error err;
    assert_int_equal(cairn_cpu_mat_from_gguf(&m, &t, &err), CAIRN_EFORMAT);
    t.type = CAIRN_GGUF_IQ1_M;
    assert_int_equal(cairn_cpu_mat_from_gguf(&m, &t, &err), CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "'w'"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vec_dot_portable),
        cmocka_unit_test(test_vec_dot_avx2),
        cmocka_unit_test(test_vec_dot_exact),
        cmocka_unit_test(test_q4_1_vs_scalar_reference),
        cmocka_unit_test(test_avx2_matches_portable),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_attention_heads),
        cmocka_unit_test(test_gated_gelu_table),
        cmocka_unit_test(test_row_kinds_portable_equals_avx2),
        cmocka_unit_test(test_attention_portable_equals_avx2),
        cmocka_unit_test(test_matmul_n),
        cmocka_unit_test(test_rope_split),
        cmocka_unit_test(test_tiled_kernels_each_isa),
        cmocka_unit_test(test_matmul_repacked_q8_0),
        cmocka_unit_test(test_rmsnorm_softmax_act),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_mat_from_gguf_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
