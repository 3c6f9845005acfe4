/*
 * tests/unit/test_gguf.c — GGUF reader, writer, dequantizers, quantizers, info printing, hostile
 * files, and the real Gemma model checked against reference data made by the `gguf` Python
 * package (scripts/gguf-reference).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/gguf.h"

/* ---- Helpers --------------------------------------------------------------------------------- */

/* Deterministic pseudo-random floats in [-1, 1) (xorshift; no global state). */
static float rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((double)(*s >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}
static void put64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static void *must_write(cairn_gguf_writer *w, size_t *len)
{
    void *buf;
    cairn_error err = {0};
    int rc = cairn_gguf_writer_write_memory(w, &buf, len, &err);
    if (rc) fail_msg("write_memory: %s", err.msg);
    return buf;
}

static cairn_gguf *must_open(const void *buf, size_t len)
{
    cairn_gguf *g;
    cairn_error err = {0};
    int rc = cairn_gguf_open_memory(&g, buf, len, &err);
    if (rc) fail_msg("open_memory: %s", err.msg);
    return g;
}

/* Opening must fail with code; the message must contain every non-NULL needle. */
static void expect_open_error(const void *buf, size_t len, int code, const char *needle1,
                              const char *needle2)
{
    cairn_gguf *g = (cairn_gguf *)1;
    cairn_error err = {0};
    int rc = cairn_gguf_open_memory(&g, buf, len, &err);
    if (rc != code)
        fail_msg("expected %s, got %d (%s): %s", cairn_strerror(code), rc, cairn_strerror(rc),
                 err.msg);
    assert_null(g);
    assert_int_equal(err.code, code);
    if (needle1 && !strstr(err.msg, needle1)) fail_msg("'%s' not in: %s", needle1, err.msg);
    if (needle2 && !strstr(err.msg, needle2)) fail_msg("'%s' not in: %s", needle2, err.msg);
}

/* Position of the tensor-info entry of `name` in a serialized file: where its u64 length is. */
static size_t find_info(const uint8_t *buf, size_t len, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 8; i + n <= len; i++) {
        uint64_t l;
        memcpy(&l, buf + i - 8, 8);
        if (l == n && memcmp(buf + i, name, n) == 0) return i - 8;
    }
    fail_msg("'%s' not found in the file", name);
    return 0;
}

/* ---- Types and half floats ------------------------------------------------------------------- */

static void test_type_table(void **state)
{
    (void)state;
    assert_string_equal(cairn_gguf_type_name(CAIRN_GGUF_Q4_K), "Q4_K");
    assert_null(cairn_gguf_type_name(5)); /* removed Q4_2 */
    assert_null(cairn_gguf_type_name(1000));
    /* Block sizes follow from the block structs of the GGUF spec. */
    assert_int_equal(cairn_gguf_type_block_bytes(CAIRN_GGUF_Q8_0), 2 + 32);
    assert_int_equal(cairn_gguf_type_block_bytes(CAIRN_GGUF_Q4_K), 2 + 2 + 12 + 256 / 2);
    assert_int_equal(cairn_gguf_type_block_bytes(CAIRN_GGUF_Q6_K), 256 / 2 + 256 / 4 + 16 + 2);
    assert_int_equal(cairn_gguf_type_block_bytes(CAIRN_GGUF_Q5_0), 2 + 4 + 16);
    assert_int_equal(cairn_gguf_type_block_size(CAIRN_GGUF_Q6_K), 256);
    uint64_t nb;
    assert_int_equal(cairn_gguf_tensor_nbytes(CAIRN_GGUF_Q8_0, 64, &nb, NULL), 0);
    assert_int_equal(nb, 68);
    assert_int_equal(cairn_gguf_tensor_nbytes(CAIRN_GGUF_Q8_0, 33, &nb, NULL), CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_tensor_nbytes(77, 32, &nb, NULL), CAIRN_EUNSUPPORTED);
    assert_int_equal(cairn_gguf_tensor_nbytes(CAIRN_GGUF_F32, UINT64_MAX / 2, &nb, NULL),
                     CAIRN_EOVERFLOW);
    assert_true(cairn_gguf_type_can_dequantize(CAIRN_GGUF_Q5_0));
    assert_false(cairn_gguf_type_can_dequantize(CAIRN_GGUF_Q5_K));
}

static void test_half_floats(void **state)
{
    (void)state;
    assert_true(cairn_gguf_f16_to_f32(0x3c00) == 1.0f);
    assert_true(cairn_gguf_f16_to_f32(0xc000) == -2.0f);
    assert_true(cairn_gguf_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(cairn_gguf_f16_to_f32(0x0001) == ldexpf(1, -24));
    assert_true(cairn_gguf_f16_to_f32(0x0400) == ldexpf(1, -14));
    assert_true(isinf(cairn_gguf_f16_to_f32(0x7c00)));
    assert_true(isnan(cairn_gguf_f16_to_f32(0x7e00)));
    assert_true(cairn_gguf_f16_to_f32(0x3555) == 1365.0f / 4096); /* (1 + 341/1024) / 4 */
    assert_true(cairn_gguf_f16_to_f32(0x83ff) == -1023 * ldexpf(1, -24));
    /* Rounding to nearest, ties to even. */
    assert_int_equal(cairn_gguf_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00);
    assert_int_equal(cairn_gguf_f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3c02);
    assert_int_equal(cairn_gguf_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(cairn_gguf_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(cairn_gguf_f32_to_f16(ldexpf(1, -25)), 0x0000);
    assert_int_equal(cairn_gguf_f32_to_f16(3 * ldexpf(1, -25)), 0x0002);
    assert_int_equal(cairn_gguf_f32_to_f16(-0.0f), 0x8000);
    /* Every finite half survives half -> float -> half. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue; /* NaN payloads */
        uint16_t back = cairn_gguf_f32_to_f16(cairn_gguf_f16_to_f32((uint16_t)h));
        if (back != h) fail_msg("half %04x came back as %04x", h, back);
    }
    assert_true(cairn_gguf_bf16_to_f32(0x3f80) == 1.0f);
    assert_int_equal(cairn_gguf_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(cairn_gguf_f32_to_bf16(1.0f + ldexpf(1, -8)), 0x3f80);     /* tie: even */
    assert_int_equal(cairn_gguf_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)), 0x3f82); /* tie: even */
}

/* ---- Dequantizers on hand-built blocks ----------------------------------------------------- */

static void test_dequant_q8_0_block(void **state)
{
    (void)state;
    uint8_t b[34];
    put16(b, 0x3800); /* d = 0.5 */
    for (int j = 0; j < 32; j++)
        b[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    float y[32];
    assert_int_equal(cairn_gguf_dequantize_raw(CAIRN_GGUF_Q8_0, b, sizeof b, y, 32, NULL), 0);
    for (int j = 0; j < 32; j++)
        assert_true(y[j] == 0.5f * (float)(j * 8 - 128));
    cairn_error err;
    assert_int_equal(cairn_gguf_dequantize_raw(CAIRN_GGUF_Q8_0, b, 33, y, 32, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_dequantize_raw(CAIRN_GGUF_Q8_0, b, 34, y, 31, &err), CAIRN_EINVAL);
}

static void test_dequant_q5_0_block(void **state)
{
    (void)state;
    /* Intended 5-bit values q[j] in 0..31; element j's low nibble sits in qs[j % 16] (low half
     * for j < 16, high half otherwise), its 5th bit in bit j of the little-endian u32 qh. */
    int q[32];
    for (int j = 0; j < 32; j++)
        q[j] = (j * 7 + 3) % 32;
    uint8_t b[22] = {0};
    put16(b, 0x4000); /* d = 2 */
    uint32_t qh = 0;
    for (int j = 0; j < 32; j++) {
        if (q[j] & 16) qh |= 1u << j;
        b[6 + j % 16] |= (uint8_t)((q[j] & 15) << (j < 16 ? 0 : 4));
    }
    put32(b + 2, qh);
    float y[32];
    assert_int_equal(cairn_gguf_dequantize_raw(CAIRN_GGUF_Q5_0, b, sizeof b, y, 32, NULL), 0);
    for (int j = 0; j < 32; j++)
        assert_true(y[j] == 2.0f * (float)(q[j] - 16));
}

static void test_dequant_q4_k_block(void **state)
{
    (void)state;
    /* Intended: 8 sub-blocks with 6-bit scales sc and mins m, 4-bit q. Packing per the spec:
     * bytes 0-3 low 6 bits = sc[0..3], bytes 4-7 low 6 bits = m[0..3]; sub-blocks 4..7 keep their
     * low 4 bits in bytes 8-11 (sc low nibble, m high nibble) and their top 2 bits in the top bits
     * of bytes 0-3 (sc) and 4-7 (m). Values: chunk c of 64 = sub-blocks 2c (low nibbles of
     * qs[32c..32c+31]) and 2c+1 (high nibbles). */
    int sc[8] = {1, 63, 17, 40, 33, 62, 5, 48}, m[8] = {0, 9, 63, 21, 50, 16, 61, 2}, q[256];
    for (int i = 0; i < 256; i++)
        q[i] = (i * 5 + i / 7) % 16;
    uint8_t b[144] = {0};
    put16(b, 0x2e66);     /* d ~ 0.1 */
    put16(b + 2, 0x2666); /* dmin ~ 0.025 */
    for (int j = 0; j < 4; j++) {
        b[4 + j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        b[8 + j] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
        b[12 + j] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++)
            b[16 + 32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
    float d = cairn_gguf_f16_to_f32(0x2e66), dmin = cairn_gguf_f16_to_f32(0x2666), y[256];
    assert_int_equal(cairn_gguf_dequantize_raw(CAIRN_GGUF_Q4_K, b, sizeof b, y, 256, NULL), 0);
    for (int i = 0; i < 256; i++) {
        int s = i / 32;
        float want = (float)((double)d * sc[s] * q[i] - (double)dmin * m[s]);
        if (fabsf(y[i] - want) > 1e-6f * fmaxf(1, fabsf(want)))
            fail_msg("Q4_K element %d: got %.9g want %.9g", i, y[i], want);
    }
}

static void test_dequant_q6_k_block(void **state)
{
    (void)state;
    /* Intended: 16 int8 scales, 6-bit q (0..63, value q - 32). Packing per the spec, for each
     * half h of 128 values and l in 0..31: ql[64h+l] = q[l] low4 | q[l+64] low4 << 4,
     * ql[64h+32+l] = q[l+32] low4 | q[l+96] low4 << 4, qh[32h+l] = top 2 bits of q[l], q[l+32],
     * q[l+64], q[l+96] at bits 0, 2, 4, 6 (q indices relative to the half). */
    int8_t sc[16];
    int q[256];
    for (int j = 0; j < 16; j++)
        sc[j] = (int8_t)(j * 17 - 128);
    for (int i = 0; i < 256; i++)
        q[i] = (i * 11 + 5) % 64;
    uint8_t b[210] = {0};
    for (int h = 0; h < 2; h++) {
        const int *Q = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            b[64 * h + l] = (uint8_t)((Q[l] & 15) | ((Q[l + 64] & 15) << 4));
            b[64 * h + 32 + l] = (uint8_t)((Q[l + 32] & 15) | ((Q[l + 96] & 15) << 4));
            b[128 + 32 * h + l] = (uint8_t)((Q[l] >> 4) | ((Q[l + 32] >> 4) << 2) |
                                            ((Q[l + 64] >> 4) << 4) | ((Q[l + 96] >> 4) << 6));
        }
    }
    memcpy(b + 192, sc, 16);
    put16(b + 208, 0x1c00); /* d = 2^-8 */
    float y[256];
    assert_int_equal(cairn_gguf_dequantize_raw(CAIRN_GGUF_Q6_K, b, sizeof b, y, 256, NULL), 0);
    for (int i = 0; i < 256; i++) {
        float want = ldexpf((float)(sc[i / 16] * (q[i] - 32)), -8);
        if (y[i] != want) fail_msg("Q6_K element %d: got %.9g want %.9g", i, y[i], want);
    }
}

static void test_dequant_plain_types(void **state)
{
    (void)state;
    uint8_t b[8];
    float y[4];
    put16(b, 0x3c00);
    put16(b + 2, 0xbc00);
    put16(b + 4, 0x4248); /* 3.140625 */
    put16(b + 6, 0x0000);
    assert_int_equal(cairn_gguf_dequantize_raw(CAIRN_GGUF_F16, b, 8, y, 4, NULL), 0);
    assert_true(y[0] == 1 && y[1] == -1 && y[2] == 3.140625f && y[3] == 0);
    put16(b, 0x4049); /* bf16 3.140625 */
    put16(b + 2, 0xc000);
    assert_int_equal(cairn_gguf_dequantize_raw(CAIRN_GGUF_BF16, b, 4, y, 2, NULL), 0);
    assert_true(y[0] == 3.140625f && y[1] == -2);
    cairn_error err;
    assert_int_equal(cairn_gguf_dequantize_raw(CAIRN_GGUF_Q2_K, b, 8, y, 0, &err),
                     CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "Q2_K"));
}

/* ---- Quantizer round trips (through the writer and reader) ---------------------------------- */

static void check_roundtrip_type(uint32_t type, double tol_rel_block)
{
    enum { ROWS = 3, COLS = 512 };
    static float x[ROWS * COLS], y[ROWS * COLS];
    uint64_t s = 0x9e3779b97f4a7c15ull ^ type;
    for (int i = 0; i < ROWS * COLS; i++)
        x[i] = rnd(&s) * (1 + (i / 256) % 4);
    x[5] = 0;
    cairn_gguf_writer *w;
    cairn_error err = {0};
    assert_int_equal(cairn_gguf_writer_new(&w, &err), 0);
    uint64_t dims[2] = {COLS, ROWS};
    if (cairn_gguf_writer_add_tensor_f32(w, "t", type, 2, dims, x, &err))
        fail_msg("add %s: %s", cairn_gguf_type_name(type), err.msg);
    size_t len;
    void *buf = must_write(w, &len);
    cairn_gguf *g = must_open(buf, len);
    const cairn_gguf_tensor *t = cairn_gguf_tensor_at(g, 0);
    assert_int_equal(t->type, type);
    assert_int_equal(t->n_elements, ROWS * COLS);
    assert_int_equal(cairn_gguf_dequantize(t, y, ROWS * COLS, &err), 0);
    /* Error bound per block: a fraction of the block's largest magnitude. */
    uint32_t bs = cairn_gguf_type_block_size(type);
    double worst = 0;
    for (int b0 = 0; b0 < ROWS * COLS; b0 += (int)bs) {
        float amax = 0;
        for (uint32_t j = 0; j < bs; j++)
            amax = fmaxf(amax, fabsf(x[b0 + j]));
        for (uint32_t j = 0; j < bs; j++) {
            double e = fabs((double)y[b0 + j] - x[b0 + j]);
            double lim = type == CAIRN_GGUF_F16 || type == CAIRN_GGUF_BF16
                             ? tol_rel_block * fabs(x[b0 + j]) + 1e-7
                             : tol_rel_block * amax + 1e-7;
            if (e > lim)
                fail_msg("%s element %d: %.9g -> %.9g (|err| %.3g > %.3g)",
                         cairn_gguf_type_name(type), b0 + (int)j, x[b0 + j], y[b0 + j], e, lim);
            if (e / (amax + 1e-30) > worst) worst = e / (amax + 1e-30);
        }
    }
    if (type == CAIRN_GGUF_F32) assert_memory_equal(x, y, sizeof x);
    /* The reconstruction must actually track the input (an all-zero decoder would fail). */
    assert_true(worst < tol_rel_block + 1e-6);
    assert_true(y[1] != 0 || x[1] == 0);
    cairn_gguf_close(g);
    free(buf);
    cairn_gguf_writer_free(w);
}

static void test_quantize_roundtrip(void **state)
{
    (void)state;
    check_roundtrip_type(CAIRN_GGUF_F32, 0);
    check_roundtrip_type(CAIRN_GGUF_F16, ldexp(1, -11));
    check_roundtrip_type(CAIRN_GGUF_BF16, ldexp(1, -8));
    check_roundtrip_type(CAIRN_GGUF_Q8_0, 0.5 / 127 * 1.01); /* half a step of amax/127 */
    check_roundtrip_type(CAIRN_GGUF_Q6_K, 1.0 / 31 * 1.2);   /* ~half a step, scales rounded */
    check_roundtrip_type(CAIRN_GGUF_Q4_K, 2.0 / 15 * 1.2);   /* range/15/2 with range <= 2amax */
}

/* ---- Metadata round trip --------------------------------------------------------------------- */

static void test_metadata_roundtrip(void **state)
{
    (void)state;
    cairn_gguf_writer *w;
    cairn_error err = {0};
    assert_int_equal(cairn_gguf_writer_new(&w, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_u8(w, "k.u8", 200, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_i8(w, "k.i8", -100, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_u16(w, "k.u16", 60000, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_i16(w, "k.i16", -30000, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "k.u32", 4000000000u, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_i32(w, "k.i32", -2000000000, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_u64(w, "k.u64", 1ull << 40, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_i64(w, "k.i64", -(1ll << 50), &err), 0);
    assert_int_equal(cairn_gguf_writer_add_f32(w, "k.f32", 0.1f, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_f64(w, "k.f64", 0.1, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_bool(w, "k.bool", true, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "k.str", "héllo wörld", &err), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "k.empty", "", &err), 0);
    assert_int_equal(cairn_gguf_writer_add_strn(w, "k.nul", "a\0b", 3, &err), 0);
    int32_t ints[5] = {-1, 0, 1, INT32_MAX, INT32_MIN};
    float floats[3] = {1.5f, -0.25f, 1e30f};
    uint8_t bools[4] = {1, 0, 0, 1};
    uint64_t u64s[2] = {UINT64_MAX, 7};
    double f64s[2] = {-1e300, 2.5};
    int16_t i16s[3] = {-5, 5, 300};
    const char *strs[4] = {"<pad>", "", "▁the", "line\nbreak"};
    assert_int_equal(cairn_gguf_writer_add_arr(w, "a.i32", CAIRN_GGUF_KV_I32, ints, 5, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_arr(w, "a.f32", CAIRN_GGUF_KV_F32, floats, 3, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_arr(w, "a.bool", CAIRN_GGUF_KV_BOOL, bools, 4, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_arr(w, "a.u64", CAIRN_GGUF_KV_U64, u64s, 2, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_arr(w, "a.f64", CAIRN_GGUF_KV_F64, f64s, 2, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_arr(w, "a.i16", CAIRN_GGUF_KV_I16, i16s, 3, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_arr(w, "a.empty", CAIRN_GGUF_KV_U8, NULL, 0, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_arr_str(w, "a.str", strs, 4, &err), 0);
    /* The writer refuses what the reader would refuse. */
    assert_int_equal(cairn_gguf_writer_add_u8(w, "k.u8", 1, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "duplicate"));
    assert_int_equal(cairn_gguf_writer_add_u8(w, "", 1, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "general.alignment", 48, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_writer_add_arr(w, "a.bad", CAIRN_GGUF_KV_STRING, strs, 1, &err),
                     CAIRN_EINVAL);

    size_t len;
    void *buf = must_write(w, &len);
    cairn_gguf *g = must_open(buf, len);
    assert_int_equal(cairn_gguf_version(g), 3);
    assert_int_equal(cairn_gguf_alignment(g), 32);
    assert_int_equal(cairn_gguf_kv_count(g), 22);
    assert_int_equal(cairn_gguf_tensor_count(g), 0);
    assert_string_equal(cairn_gguf_kv_at(g, 0)->key, "k.u8");
    assert_string_equal(cairn_gguf_kv_at(g, 21)->key, "a.str");
    assert_null(cairn_gguf_kv_at(g, 22));

    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    bool b;
    const char *s;
    size_t slen;
    assert_int_equal(cairn_gguf_get_u32(g, "k.u8", &u32, &err), 0);
    assert_int_equal(u32, 200);
    assert_int_equal(cairn_gguf_get_i32(g, "k.i8", &i32, &err), 0);
    assert_int_equal(i32, -100);
    assert_int_equal(cairn_gguf_get_u32(g, "k.u16", &u32, &err), 0);
    assert_int_equal(u32, 60000);
    assert_int_equal(cairn_gguf_get_i32(g, "k.i16", &i32, &err), 0);
    assert_int_equal(i32, -30000);
    assert_int_equal(cairn_gguf_get_u32(g, "k.u32", &u32, &err), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(cairn_gguf_get_i32(g, "k.u32", &i32, &err), CAIRN_EINVAL); /* too big */
    assert_non_null(strstr(err.msg, "k.u32"));
    assert_int_equal(cairn_gguf_get_i32(g, "k.i32", &i32, &err), 0);
    assert_int_equal(i32, -2000000000);
    assert_int_equal(cairn_gguf_get_u32(g, "k.i32", &u32, &err), CAIRN_EINVAL); /* negative */
    assert_int_equal(cairn_gguf_get_u64(g, "k.u64", &u64, &err), 0);
    assert_true(u64 == 1ull << 40);
    assert_int_equal(cairn_gguf_get_u32(g, "k.u64", &u32, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_get_i64(g, "k.i64", &i64, &err), 0);
    assert_true(i64 == -(1ll << 50));
    assert_int_equal(cairn_gguf_get_f32(g, "k.f32", &f32, &err), 0);
    assert_true(f32 == 0.1f);
    assert_int_equal(cairn_gguf_get_f64(g, "k.f64", &f64, &err), 0);
    assert_true(f64 == 0.1);
    assert_int_equal(cairn_gguf_get_f64(g, "k.f32", &f64, &err), 0);
    assert_true(f64 == (double)0.1f);
    assert_int_equal(cairn_gguf_get_bool(g, "k.bool", &b, &err), 0);
    assert_true(b);
    assert_int_equal(cairn_gguf_get_str(g, "k.str", &s, &slen, &err), 0);
    assert_string_equal(s, "héllo wörld");
    assert_int_equal(slen, strlen("héllo wörld"));
    assert_int_equal(cairn_gguf_get_str(g, "k.empty", &s, &slen, &err), 0);
    assert_string_equal(s, "");
    assert_int_equal(cairn_gguf_get_str(g, "k.nul", &s, &slen, &err), 0);
    assert_int_equal(slen, 3);
    assert_memory_equal(s, "a\0b", 3);
    /* Wrong types and missing keys. */
    assert_int_equal(cairn_gguf_get_str(g, "k.u8", &s, NULL, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "'k.u8' is u8, not string"));
    assert_int_equal(cairn_gguf_get_f32(g, "k.str", &f32, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_get_bool(g, "k.u8", &b, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_get_u32(g, "k.f32", &u32, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_get_u32(g, "nope", &u32, &err), CAIRN_ENOTFOUND);
    assert_non_null(strstr(err.msg, "nope"));
    assert_null(cairn_gguf_find_kv(g, "nope"));

    cairn_gguf_kv_type et;
    uint64_t count;
    const void *data;
    assert_int_equal(cairn_gguf_get_arr(g, "a.i32", &et, &count, &data, &err), 0);
    assert_int_equal(et, CAIRN_GGUF_KV_I32);
    assert_int_equal(count, 5);
    assert_memory_equal(data, ints, sizeof ints);
    assert_int_equal((uintptr_t)data % 4, 0);
    assert_int_equal(cairn_gguf_get_arr(g, "a.f32", &et, &count, &data, &err), 0);
    assert_memory_equal(data, floats, sizeof floats);
    assert_int_equal(cairn_gguf_get_arr(g, "a.bool", &et, &count, &data, &err), 0);
    assert_int_equal(et, CAIRN_GGUF_KV_BOOL);
    assert_memory_equal(data, bools, sizeof bools);
    assert_int_equal(cairn_gguf_get_arr(g, "a.u64", &et, &count, &data, &err), 0);
    assert_memory_equal(data, u64s, sizeof u64s);
    assert_int_equal((uintptr_t)data % 8, 0);
    assert_int_equal(cairn_gguf_get_arr(g, "a.f64", &et, &count, &data, &err), 0);
    assert_memory_equal(data, f64s, sizeof f64s);
    assert_int_equal(cairn_gguf_get_arr(g, "a.i16", &et, &count, &data, &err), 0);
    assert_memory_equal(data, i16s, sizeof i16s);
    assert_int_equal(cairn_gguf_get_arr(g, "a.empty", &et, &count, &data, &err), 0);
    assert_int_equal(count, 0);
    assert_int_equal(cairn_gguf_get_arr(g, "a.str", &et, &count, &data, &err), 0);
    assert_int_equal(et, CAIRN_GGUF_KV_STRING);
    assert_int_equal(count, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(cairn_gguf_get_arr_str(g, "a.str", (uint64_t)i, &s, &slen, &err), 0);
        assert_int_equal(slen, strlen(strs[i]));
        assert_memory_equal(s, strs[i], slen);
    }
    assert_int_equal(cairn_gguf_get_arr_str(g, "a.str", 4, &s, &slen, &err), CAIRN_ERANGE);
    assert_int_equal(cairn_gguf_get_arr_str(g, "a.i32", 0, &s, &slen, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_get_arr(g, "k.u8", &et, &count, &data, &err), CAIRN_EINVAL);
    const cairn_gguf_kv *kv = cairn_gguf_find_kv(g, "a.str");
    assert_non_null(kv);
    assert_memory_equal(kv->strs[2].ptr, "▁the", kv->strs[2].len);
    cairn_gguf_close(g);
    free(buf);
    cairn_gguf_writer_free(w);
}

/* ---- Tensors, alignment, files ----------------------------------------------------------------
 */

static void test_tensors_alignment_and_lookup(void **state)
{
    (void)state;
    cairn_gguf_writer *w;
    cairn_error err = {0};
    assert_int_equal(cairn_gguf_writer_new(&w, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "general.alignment", 64, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "general.architecture", "tiny", &err), 0);
    float a[3] = {1, 2, 3}, c[2 * 3 * 4 * 5];
    for (int i = 0; i < 120; i++)
        c[i] = (float)i;
    uint64_t da[1] = {3}, dc[4] = {2, 3, 4, 5};
    assert_int_equal(cairn_gguf_writer_add_tensor(w, "a", CAIRN_GGUF_F32, 1, da, a, 12, &err), 0);
    assert_int_equal(
        cairn_gguf_writer_add_tensor_f32(w, "c.weight", CAIRN_GGUF_F32, 4, dc, c, &err), 0);
    /* Writer-side validation. */
    assert_int_equal(cairn_gguf_writer_add_tensor(w, "a", CAIRN_GGUF_F32, 1, da, a, 12, &err),
                     CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_writer_add_tensor(w, "b", CAIRN_GGUF_F32, 1, da, a, 8, &err),
                     CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_writer_add_tensor(w, "b", CAIRN_GGUF_F32, 5, dc, a, 8, &err),
                     CAIRN_EINVAL);
    uint64_t d33[1] = {33};
    assert_int_equal(cairn_gguf_writer_add_tensor(w, "b", CAIRN_GGUF_Q8_0, 1, d33, a, 0, &err),
                     CAIRN_EINVAL);
    /* An unknown type is written as given and still opens. */
    uint8_t blob[64];
    memset(blob, 0xab, sizeof blob);
    uint64_t du[1] = {7};
    assert_int_equal(cairn_gguf_writer_add_tensor(w, "unknown", 200, 1, du, blob, 64, &err), 0);
    uint8_t q5k[176] = {0};
    uint64_t d256[1] = {256};
    assert_int_equal(
        cairn_gguf_writer_add_tensor(w, "q5k", CAIRN_GGUF_Q5_K, 1, d256, q5k, 176, &err), 0);
    size_t len;
    uint8_t *buf = must_write(w, &len);
    cairn_gguf *g = must_open(buf, len);
    assert_int_equal(cairn_gguf_alignment(g), 64);
    assert_int_equal(cairn_gguf_data_offset(g) % 64, 0);
    assert_int_equal(cairn_gguf_tensor_count(g), 4);
    const cairn_gguf_tensor *t;
    assert_int_equal(cairn_gguf_get_tensor(g, "c.weight", &t, &err), 0);
    assert_int_equal(t->index, 1);
    assert_int_equal(t->n_dims, 4);
    assert_int_equal(t->dims[0], 2);
    assert_int_equal(t->dims[3], 5);
    assert_int_equal(t->n_elements, 120);
    assert_int_equal(t->nbytes, 480);
    assert_int_equal(t->offset % 64, 0);
    assert_int_equal(t->file_offset, cairn_gguf_data_offset(g) + t->offset);
    assert_ptr_equal(t->data, buf + t->file_offset);
    assert_memory_equal(t->data, c, sizeof c);
    assert_ptr_equal(cairn_gguf_tensor_at(g, 1), t);
    assert_null(cairn_gguf_tensor_at(g, 4));
    assert_int_equal(cairn_gguf_get_tensor(g, "missing", &t, &err), CAIRN_ENOTFOUND);
    assert_non_null(strstr(err.msg, "missing"));
    t = cairn_gguf_find_tensor(g, "a");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 1);
    assert_int_equal(t->dims[1], 1);

    /* Rows: a 2x3x4x5 tensor has 60 rows of 2. */
    float rows[6];
    t = cairn_gguf_find_tensor(g, "c.weight");
    assert_int_equal(cairn_gguf_dequantize_rows(t, 10, 3, rows, 6, &err), 0);
    for (int i = 0; i < 6; i++)
        assert_true(rows[i] == (float)(20 + i));
    assert_int_equal(cairn_gguf_dequantize_rows(t, 59, 2, rows, 6, &err), CAIRN_ERANGE);
    assert_int_equal(cairn_gguf_dequantize_rows(t, 0, 4, rows, 6, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_gguf_dequantize(t, rows, 6, &err), CAIRN_EINVAL);

    t = cairn_gguf_find_tensor(g, "unknown");
    assert_non_null(t);
    assert_int_equal(t->type, 200);
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(cairn_gguf_dequantize(t, rows, 6, &err), CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "unknown"));
    t = cairn_gguf_find_tensor(g, "q5k");
    assert_int_equal(t->nbytes, 176);
    float big[256];
    assert_int_equal(cairn_gguf_dequantize(t, big, 256, &err), CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "Q5_K"));
    cairn_gguf_close(g);
    free(buf);
    cairn_gguf_writer_free(w);
}

static void test_write_file_atomic(void **state)
{
    (void)state;
    char dir[] = "/tmp/cairn-gguf-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    cairn_gguf_writer *w;
    cairn_error err = {0};
    assert_int_equal(cairn_gguf_writer_new(&w, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "general.name", "first", &err), 0);
    float v[32];
    for (int i = 0; i < 32; i++)
        v[i] = (float)i / 4;
    uint64_t d[1] = {32};
    assert_int_equal(cairn_gguf_writer_add_tensor_f32(w, "v", CAIRN_GGUF_Q8_0, 1, d, v, &err), 0);
    assert_int_equal(cairn_gguf_writer_write_file(w, path, &err), 0);
    /* Overwrite with a different file: the path must then hold the second one. */
    cairn_gguf_writer *w2;
    assert_int_equal(cairn_gguf_writer_new(&w2, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w2, "general.name", "second", &err), 0);
    assert_int_equal(cairn_gguf_writer_write_file(w2, path, &err), 0);
    cairn_gguf *g;
    assert_int_equal(cairn_gguf_open(&g, path, &err), 0);
    const char *name;
    assert_int_equal(cairn_gguf_get_str(g, "general.name", &name, NULL, &err), 0);
    assert_string_equal(name, "second");
    cairn_gguf_close(g);
    assert_int_equal(cairn_gguf_writer_write_file(w, path, &err), 0);
    assert_int_equal(cairn_gguf_open(&g, path, &err), 0);
    float out[32];
    assert_int_equal(cairn_gguf_dequantize(cairn_gguf_find_tensor(g, "v"), out, 32, &err), 0);
    for (int i = 0; i < 32; i++)
        assert_true(fabsf(out[i] - v[i]) <= 7.75f / 127 / 2 * 1.01f);
    cairn_gguf_close(g);
    /* No temp files are left behind. */
    DIR *dp = opendir(dir);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(dp)))
        if (de->d_name[0] != '.') files++;
    closedir(dp);
    assert_int_equal(files, 1);
    /* Errors: a directory that does not exist; a file that does not exist or is empty. */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/no/such/dir.gguf", dir);
    assert_int_equal(cairn_gguf_writer_write_file(w, bad, &err), CAIRN_EIO);
    assert_int_equal(cairn_gguf_open(&g, bad, &err), CAIRN_EIO);
    assert_null(g);
    assert_non_null(strstr(err.msg, "dir.gguf"));
    char empty[300];
    snprintf(empty, sizeof empty, "%s/empty.gguf", dir);
    FILE *f = fopen(empty, "w");
    fclose(f);
    assert_int_equal(cairn_gguf_open(&g, empty, &err), CAIRN_EFORMAT);
    unlink(empty);
    unlink(path);
    rmdir(dir);
    cairn_gguf_writer_free(w);
    cairn_gguf_writer_free(w2);
}

/* ---- Hostile files ----------------------------------------------------------------------------
 */

/* A small valid file: 2 KVs, 2 tensors (F32 [8,2] "wa" and Q8_0 [32] "wb"). */
static uint8_t *small_file(size_t *len)
{
    cairn_gguf_writer *w;
    cairn_error err = {0};
    assert_int_equal(cairn_gguf_writer_new(&w, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "general.architecture", "llama", &err), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "llama.block_count", 2, &err), 0);
    float x[32];
    for (int i = 0; i < 32; i++)
        x[i] = (float)i - 10;
    uint64_t da[2] = {8, 2}, db[1] = {32};
    assert_int_equal(cairn_gguf_writer_add_tensor_f32(w, "wa", CAIRN_GGUF_F32, 2, da, x, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_tensor_f32(w, "wb", CAIRN_GGUF_Q8_0, 1, db, x, &err), 0);
    uint8_t *buf = must_write(w, len);
    cairn_gguf_writer_free(w);
    return buf;
}

static void test_truncated_at_every_length(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = small_file(&len);
    cairn_gguf_close(must_open(buf, len));
    for (size_t n = 0; n < len; n++) {
        /* A fresh heap copy of exactly n bytes, so ASan catches any read past the end. */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, buf, n);
        cairn_gguf *g = (cairn_gguf *)1;
        cairn_error err = {0};
        int rc = cairn_gguf_open_memory(&g, p, n, &err);
        if (rc >= 0) fail_msg("a %zu-byte prefix of a %zu-byte file opened", n, len);
        assert_null(g);
        assert_int_equal(rc, CAIRN_EFORMAT);
        if (!strstr(err.msg, "offset ")) fail_msg("no offset in: %s", err.msg);
        free(p);
    }
    free(buf);
}

static void test_hostile_headers(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = small_file(&len), *p = malloc(len);
    char want[128];

    memcpy(p, buf, len);
    memcpy(p, "GGUG", 4);
    expect_open_error(p, len, CAIRN_EFORMAT, "offset 0", "magic");

    memcpy(p, buf, len);
    put32(p + 4, 4);
    expect_open_error(p, len, CAIRN_EUNSUPPORTED, "offset 4", "version 4");
    put32(p + 4, 1);
    expect_open_error(p, len, CAIRN_EUNSUPPORTED, "offset 4", "version 1");
    put32(p + 4, 2); /* v2 has the same layout: accepted */
    cairn_gguf *g = must_open(p, len);
    assert_int_equal(cairn_gguf_version(g), 2);
    cairn_gguf_close(g);

    memcpy(p, buf, len);
    put64(p + 8, 1ull << 60);
    snprintf(want, sizeof want, "tensor count %llu exceeds what a %zu-byte file can hold",
             1ull << 60, len);
    expect_open_error(p, len, CAIRN_EFORMAT, "offset 8", want);

    memcpy(p, buf, len);
    put64(p + 16, UINT64_MAX);
    expect_open_error(p, len, CAIRN_EFORMAT, "offset 16", "metadata count");

    /* First key's length (at 24) far past the end. */
    memcpy(p, buf, len);
    put64(p + 24, 1ull << 62);
    expect_open_error(p, len, CAIRN_EFORMAT, "offset 24", "past the end");

    /* The first value is a string: key "general.architecture" (20 bytes) at 32..51, type at 52,
     * string length at 56. */
    memcpy(p, buf, len);
    assert_int_equal(p[52], CAIRN_GGUF_KV_STRING);
    put64(p + 56, len);
    expect_open_error(p, len, CAIRN_EFORMAT, "offset 56", "metadata string value");
    memcpy(p, buf, len);
    put32(p + 52, 99);
    expect_open_error(p, len, CAIRN_EUNSUPPORTED, "offset 52", "unknown value type 99");

    /* Duplicate key: rename the second key to the first's name length-preservingly is not
     * possible, so instead point both at "general.architecture" by shrinking: use the tensor
     * names below. Duplicate tensor names: "wb" -> "wa". */
    memcpy(p, buf, len);
    size_t ib = find_info(buf, len, "wb");
    p[ib + 9] = 'a';
    expect_open_error(p, len, CAIRN_EFORMAT, "duplicate tensor name 'wa'", "offset ");

    /* Tensor "wa": n_dims at +10, dims at +14, +22, type at +30, offset at +34. */
    size_t ia = find_info(buf, len, "wa");
    memcpy(p, buf, len);
    put32(p + ia + 10, 5);
    expect_open_error(p, len, CAIRN_EUNSUPPORTED, "5 dimensions", "offset ");
    memcpy(p, buf, len);
    put64(p + ia + 14, 1ull << 33);
    put64(p + ia + 22, 1ull << 33);
    snprintf(want, sizeof want, "offset %zu:", ia + 22);
    expect_open_error(p, len, CAIRN_EOVERFLOW, want, "overflows");
    memcpy(p, buf, len);
    put64(p + ia + 22, 0);
    expect_open_error(p, len, CAIRN_EFORMAT, "dimension 1 is 0", NULL);
    memcpy(p, buf, len);
    put64(p + ia + 14, 1ull << 40); /* product fine, bytes far past EOF */
    expect_open_error(p, len, CAIRN_EFORMAT, "tensor 'wa'", "run past the end");
    memcpy(p, buf, len);
    put64(p + ia + 34, 4);
    snprintf(want, sizeof want, "offset %zu: tensor 'wa'", ia);
    expect_open_error(p, len, CAIRN_EFORMAT, want, "not a multiple of the alignment 32");
    memcpy(p, buf, len);
    put64(p + ia + 34, 1ull << 40);
    expect_open_error(p, len, CAIRN_EFORMAT, "tensor 'wa'", "past the end");
    memcpy(p, buf, len);
    put64(p + ia + 34, UINT64_MAX - 31); /* aligned, and offset + size overflows */
    expect_open_error(p, len, CAIRN_EFORMAT, "tensor 'wa'", "past the end");
    /* Q8_0 tensor "wb" with a row length that is not a whole number of blocks. */
    memcpy(p, buf, len);
    put64(p + ib + 14, 31);
    expect_open_error(p, len, CAIRN_EFORMAT, "tensor 'wb'", "not a multiple of the Q8_0 block");
    /* Tensor data past EOF: cut the last 4 bytes of the file. */
    expect_open_error(buf, len - 4, CAIRN_EFORMAT, "tensor 'wb'", "run past the end");
    free(p);
    free(buf);
}

/* Hand-assembled files for what the writer cannot produce. */
typedef struct {
    uint8_t b[512];
    size_t n;
} raw;

static void raw_bytes(raw *r, const void *p, size_t n)
{
    memcpy(r->b + r->n, p, n);
    r->n += n;
}
static void raw_u32(raw *r, uint32_t v)
{
    raw_bytes(r, &v, 4);
}
static void raw_u64(raw *r, uint64_t v)
{
    raw_bytes(r, &v, 8);
}
static void raw_str(raw *r, const char *s)
{
    raw_u64(r, strlen(s));
    raw_bytes(r, s, strlen(s));
}
static void raw_header(raw *r, uint64_t nt, uint64_t nkv)
{
    r->n = 0;
    raw_bytes(r, "GGUF", 4);
    raw_u32(r, 3);
    raw_u64(r, nt);
    raw_u64(r, nkv);
}

static void test_hostile_metadata(void **state)
{
    (void)state;
    raw r;
    /* Duplicate keys. */
    raw_header(&r, 0, 2);
    raw_str(&r, "a.b");
    raw_u32(&r, CAIRN_GGUF_KV_U8);
    raw_bytes(&r, "\x01", 1);
    size_t second = r.n;
    raw_str(&r, "a.b");
    raw_u32(&r, CAIRN_GGUF_KV_U8);
    raw_bytes(&r, "\x02", 1);
    char want[64];
    snprintf(want, sizeof want, "offset %zu: duplicate metadata key 'a.b'", second);
    expect_open_error(r.b, r.n, CAIRN_EFORMAT, want, "first at offset 24");

    /* A bool that is neither 0 nor 1. */
    raw_header(&r, 0, 1);
    raw_str(&r, "flag");
    raw_u32(&r, CAIRN_GGUF_KV_BOOL);
    raw_bytes(&r, "\x02", 1);
    expect_open_error(r.b, r.n, CAIRN_EFORMAT, "offset 40", "bool value 2");

    /* An array whose count needs more bytes than the file has. */
    raw_header(&r, 0, 1);
    raw_str(&r, "arr");
    raw_u32(&r, CAIRN_GGUF_KV_ARRAY);
    raw_u32(&r, CAIRN_GGUF_KV_U32);
    raw_u64(&r, 1ull << 61);
    raw_u32(&r, 0);
    expect_open_error(r.b, r.n, CAIRN_EFORMAT, "array count 2305843009213693952", "u32");

    /* Arrays of strings with a string running off the end. */
    raw_header(&r, 0, 1);
    raw_str(&r, "strs");
    raw_u32(&r, CAIRN_GGUF_KV_ARRAY);
    raw_u32(&r, CAIRN_GGUF_KV_STRING);
    raw_u64(&r, 2);
    raw_str(&r, "ok");
    raw_u64(&r, 100);
    raw_bytes(&r, "short", 5);
    expect_open_error(r.b, r.n, CAIRN_EFORMAT, "array string length 100", "past the end");

    /* Nested arrays: depth 2 is accepted (content not exposed), depth 4 is refused. */
    for (int depth = 2; depth <= 4; depth += 2) {
        raw_header(&r, 0, 1);
        raw_str(&r, "nest");
        raw_u32(&r, CAIRN_GGUF_KV_ARRAY);
        for (int d = 1; d < depth; d++) {
            raw_u32(&r, CAIRN_GGUF_KV_ARRAY);
            raw_u64(&r, 1);
        }
        raw_u32(&r, CAIRN_GGUF_KV_U8);
        raw_u64(&r, 2);
        raw_bytes(&r, "\x05\x06", 2);
        if (depth == 2) {
            cairn_gguf *g = must_open(r.b, r.n);
            const cairn_gguf_kv *kv = cairn_gguf_find_kv(g, "nest");
            assert_int_equal(kv->arr_type, CAIRN_GGUF_KV_ARRAY);
            assert_int_equal(kv->arr_count, 1);
            cairn_gguf_close(g);
        } else {
            expect_open_error(r.b, r.n, CAIRN_EUNSUPPORTED, "nested deeper than 3", "'nest'");
        }
    }

    /* A key with a NUL inside, an empty key. */
    raw_header(&r, 0, 1);
    raw_u64(&r, 3);
    raw_bytes(&r, "a\0b", 3);
    raw_u32(&r, CAIRN_GGUF_KV_U8);
    raw_bytes(&r, "\x01", 1);
    expect_open_error(r.b, r.n, CAIRN_EFORMAT, "offset 24", "NUL");
    raw_header(&r, 0, 1);
    raw_str(&r, "");
    raw_u32(&r, CAIRN_GGUF_KV_U8);
    raw_bytes(&r, "\x01", 1);
    expect_open_error(r.b, r.n, CAIRN_EFORMAT, "offset 24", "empty metadata key");

    /* general.alignment that is not a power of two, or not an integer. */
    raw_header(&r, 0, 1);
    raw_str(&r, "general.alignment");
    raw_u32(&r, CAIRN_GGUF_KV_U32);
    raw_u32(&r, 24);
    expect_open_error(r.b, r.n, CAIRN_EFORMAT, "general.alignment", "power-of-two");
    raw_header(&r, 0, 1);
    raw_str(&r, "general.alignment");
    raw_u32(&r, CAIRN_GGUF_KV_STRING);
    raw_str(&r, "32");
    expect_open_error(r.b, r.n, CAIRN_EFORMAT, "general.alignment", "string");

    /* A tensor whose name is fine but whose data offset lies past the data section. */
    raw_header(&r, 1, 0);
    raw_str(&r, "t");
    raw_u32(&r, 1);
    raw_u64(&r, 4);
    raw_u32(&r, CAIRN_GGUF_F32);
    raw_u64(&r, 64);
    while (r.n % 32)
        raw_bytes(&r, "", 1);
    raw_bytes(&r, "0123456789abcdef", 16);
    expect_open_error(r.b, r.n, CAIRN_EFORMAT, "offset 24: tensor 't'", "data offset 64");
}

/* ---- Info printing ------------------------------------------------------------------------ */

/* Random blocks of every type stay within about the scale asked for, are finite, use their
 * range (not all zero) and differ between seeds. */
static void test_random_blocks(void **state)
{
    (void)state;
    const uint32_t ts[] = {CAIRN_GGUF_F32, CAIRN_GGUF_F16, CAIRN_GGUF_BF16, CAIRN_GGUF_Q4_0,
                           CAIRN_GGUF_Q4_1, CAIRN_GGUF_Q5_0, CAIRN_GGUF_Q8_0, CAIRN_GGUF_Q4_K,
                           CAIRN_GGUF_Q6_K};
    enum { N = 4096 };
    static float y[N];
    static uint8_t buf[N * 4], other[N * 4];
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        uint64_t rng = 7, rng2 = 8, bytes;
        cairn_error err;
        assert_int_equal(cairn_gguf_tensor_nbytes(ts[i], N, &bytes, NULL), 0);
        assert_int_equal(cairn_gguf_random_blocks(ts[i], N, 0.5f, &rng, buf, sizeof buf, &err), 0);
        assert_int_equal(cairn_gguf_random_blocks(ts[i], N, 0.5f, &rng2, other, sizeof other,
                                                  &err), 0);
        assert_int_not_equal(memcmp(buf, other, bytes), 0);
        assert_int_equal(cairn_gguf_dequantize_raw(ts[i], buf, bytes, y, N, &err), 0);
        float mx = 0;
        for (int j = 0; j < N; j++) {
            assert_true(isfinite(y[j]));
            mx = fmaxf(mx, fabsf(y[j]));
        }
        assert_true(mx <= 0.5f * 1.2f);
        assert_true(mx >= 0.5f * 0.25f);
        /* Too small a buffer and a type without random blocks are errors, not writes. */
        assert_int_equal(cairn_gguf_random_blocks(ts[i], N, 0.5f, &rng, buf, bytes - 1, &err),
                         CAIRN_EINVAL);
    }
    uint64_t rng = 1;
    cairn_error err;
    assert_int_equal(cairn_gguf_random_blocks(CAIRN_GGUF_IQ4_XS, 256, 1, &rng, buf, sizeof buf,
                                              &err), CAIRN_EUNSUPPORTED);
}

static void test_print_info(void **state)
{
    (void)state;
    cairn_gguf_writer *w;
    cairn_error err = {0};
    assert_int_equal(cairn_gguf_writer_new(&w, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "general.architecture", "tiny", &err), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "general.name", "Tiny Model", &err), 0);
    char longstr[400];
    memset(longstr, 'x', sizeof longstr - 1);
    longstr[sizeof longstr - 1] = '\0';
    assert_int_equal(cairn_gguf_writer_add_str(w, "tokenizer.chat_template", longstr, &err), 0);
    int32_t many[100];
    for (int i = 0; i < 100; i++)
        many[i] = i * 3;
    assert_int_equal(cairn_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", CAIRN_GGUF_KV_I32,
                                               many, 100, &err),
                     0);
    const char *toks[3] = {"<s>", "a\"b", "tab\there"};
    assert_int_equal(cairn_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, 3, &err), 0);
    float x[256 * 2];
    for (int i = 0; i < 512; i++)
        x[i] = (float)i / 512;
    uint64_t d2[2] = {256, 2};
    assert_int_equal(
        cairn_gguf_writer_add_tensor_f32(w, "blk.0.w", CAIRN_GGUF_Q4_K, 2, d2, x, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_tensor_f32(w, "norm", CAIRN_GGUF_F32, 2, d2, x, &err),
                     0);
    size_t len;
    void *buf = must_write(w, &len);
    cairn_gguf *g = must_open(buf, len);
    char *text = NULL;
    size_t tlen = 0;
    FILE *f = open_memstream(&text, &tlen);
    assert_int_equal(cairn_gguf_print_info(f, g, 0), 0);
    fclose(f);
    const char *needles[] = {"GGUF version 3",
                             "Tiny Model",
                             "tiny",
                             "metadata:     5 keys",
                             "alignment:    32",
                             "parameters:   1024",
                             "Q4_K x1",
                             "F32 x1",
                             "i32[100]",
                             "0, 3, 6",
                             "... 92 more",
                             "(399 bytes)",
                             "\"a\\\"b\"",
                             "\"tab\\there\"",
                             "blk.0.w",
                             "[256, 2]",
                             "288"};
    for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++)
        if (!strstr(text, needles[i])) fail_msg("'%s' not in:\n%s", needles[i], text);
    char sizes[64];
    snprintf(sizes, sizeof sizes, "%zu bytes", len);
    assert_non_null(strstr(text, sizes));
    free(text);
    /* FULL shows everything; NO_TENSORS / NO_METADATA drop sections. */
    f = open_memstream(&text, &tlen);
    assert_int_equal(cairn_gguf_print_info(f, g, CAIRN_GGUF_INFO_FULL | CAIRN_GGUF_INFO_NO_TENSORS),
                     0);
    fclose(f);
    assert_non_null(strstr(text, "297"));
    assert_null(strstr(text, "more"));
    assert_null(strstr(text, "blk.0.w"));
    assert_non_null(strstr(text, longstr));
    free(text);
    f = open_memstream(&text, &tlen);
    assert_int_equal(cairn_gguf_print_info(f, g, CAIRN_GGUF_INFO_NO_METADATA), 0);
    fclose(f);
    assert_null(strstr(text, "token_type"));
    assert_non_null(strstr(text, "norm"));
    free(text);
    cairn_gguf_close(g);
    free(buf);
    cairn_gguf_writer_free(w);
}

/* ---- The real model against the gguf package's dequantization ---------------------------- */

static bool close_enough(float got, float ref)
{
    uint32_t a, b;
    memcpy(&a, &got, 4);
    memcpy(&b, &ref, 4);
    return a == b || fabsf(got - ref) <= 1e-6f * fmaxf(1, fabsf(ref));
}

static void test_real_model_matches_reference(void **state)
{
    (void)state;
    const char *models = getenv("CAIRN_TEST_MODELS"), *data = getenv("CAIRN_TEST_DATA");
    char mpath[1024], rpath[1024];
    snprintf(mpath, sizeof mpath, "%s/gemma-3-270m-q4_k_m.gguf", models ? models : "data/models");
    snprintf(rpath, sizeof rpath, "%s/gguf/gemma-3-270m-q4_k_m.ref", data ? data : "tests/data");
    if (access(mpath, R_OK) != 0)
        fail_msg("model %s is missing: run scripts/setup (make test installs it)", mpath);
    FILE *rf = fopen(rpath, "r");
    if (!rf) fail_msg("reference data %s is missing (scripts/gguf-reference makes it)", rpath);
    cairn_gguf *g;
    cairn_error err = {0};
    if (cairn_gguf_open(&g, mpath, &err)) fail_msg("open %s: %s", mpath, err.msg);
    const char *arch;
    assert_int_equal(cairn_gguf_get_str(g, "general.architecture", &arch, NULL, &err), 0);

    enum { CHUNK = 1 << 20 };
    float *buf = malloc(sizeof(float) * (CHUNK + 256 * 1024));
    char *line = NULL;
    size_t cap = 0;
    size_t n_checked = 0, n_samples = 0;
    while (getline(&line, &cap, rf) > 0) {
        if (line[0] != 'T') continue;
        char name[256], tname[32];
        unsigned type, n_dims;
        int pos;
        if (sscanf(line, "T %255s %31s %u %u%n", name, tname, &type, &n_dims, &pos) != 4)
            fail_msg("bad reference line: %s", line);
        char *p = line + pos;
        uint64_t dims[4] = {1, 1, 1, 1}, n;
        for (unsigned d = 0; d < n_dims; d++)
            dims[d] = strtoull(p, &p, 10);
        n = strtoull(p, &p, 10);
        double sum = strtod(p, &p), sumsq = strtod(p, &p), sumabs = strtod(p, &p);
        long ns = strtol(p, &p, 10);

        const cairn_gguf_tensor *t = cairn_gguf_find_tensor(g, name);
        if (!t) fail_msg("tensor %s (in the reference) not found", name);
        assert_int_equal(t->type, type);
        assert_string_equal(cairn_gguf_type_name(t->type), tname);
        assert_int_equal(t->n_dims, n_dims);
        for (unsigned d = 0; d < 4; d++)
            assert_int_equal(t->dims[d], dims[d]);
        assert_int_equal(t->n_elements, n);

        /* Samples, in increasing index order. */
        if (getline(&line, &cap, rf) <= 0 || line[0] != 'S') fail_msg("no samples for %s", name);
        char *sp = line + 1;
        uint64_t *sidx = malloc(sizeof(uint64_t) * (size_t)(ns + 1));
        uint32_t *sbits = malloc(sizeof(uint32_t) * (size_t)(ns + 1));
        for (long i = 0; i < ns; i++) {
            sidx[i] = strtoull(sp, &sp, 10);
            sbits[i] = (uint32_t)strtoul(sp, &sp, 16);
        }

        /* Dequantize in row chunks; sum in float64 as the reference did. */
        uint64_t row = t->dims[0], rows = n / row, per = CHUNK / row ? CHUNK / row : 1;
        double s = 0, sq = 0, sa = 0;
        long si = 0;
        for (uint64_t r0 = 0; r0 < rows; r0 += per) {
            uint64_t nr = rows - r0 < per ? rows - r0 : per;
            if (cairn_gguf_dequantize_rows(t, r0, nr, buf, CHUNK + 256 * 1024, &err))
                fail_msg("%s: %s", name, err.msg);
            uint64_t base = r0 * row, cnt = nr * row;
            for (uint64_t i = 0; i < cnt; i++) {
                double v = buf[i];
                s += v;
                sq += v * v;
                sa += fabs(v);
            }
            while (si < ns && sidx[si] < base + cnt) {
                float ref;
                memcpy(&ref, &sbits[si], 4);
                float got = buf[sidx[si] - base];
                if (!close_enough(got, ref))
                    fail_msg("%s [%s] element %llu: got %.9g, reference %.9g", name, tname,
                             (unsigned long long)sidx[si], got, ref);
                si++;
                n_samples++;
            }
        }
        assert_int_equal(si, ns);
        if (fabs(s - sum) > 1e-6 * fmax(fabs(sum), sumabs) + 1e-9)
            fail_msg("%s: sum %.17g, reference %.17g", name, s, sum);
        if (fabs(sq - sumsq) > 1e-6 * fabs(sumsq) + 1e-12)
            fail_msg("%s: sum of squares %.17g, reference %.17g", name, sq, sumsq);
        if (fabs(sa - sumabs) > 1e-6 * fabs(sumabs) + 1e-12)
            fail_msg("%s: sum of |x| %.17g, reference %.17g", name, sa, sumabs);
        free(sidx);
        free(sbits);
        n_checked++;
    }
    /* Every tensor of the file was in the reference. */
    assert_int_equal(n_checked, cairn_gguf_tensor_count(g));
    assert_true(n_samples > 100 * n_checked);
    FILE *devnull = fopen("/dev/null", "w");
    assert_int_equal(cairn_gguf_print_info(devnull, g, 0), 0);
    fclose(devnull);
    free(line);
    free(buf);
    fclose(rf);
    cairn_gguf_close(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_half_floats),
        cmocka_unit_test(test_dequant_q8_0_block),
        cmocka_unit_test(test_dequant_q5_0_block),
        cmocka_unit_test(test_dequant_q4_k_block),
        cmocka_unit_test(test_dequant_q6_k_block),
        cmocka_unit_test(test_dequant_plain_types),
        cmocka_unit_test(test_quantize_roundtrip),
        cmocka_unit_test(test_metadata_roundtrip),
        cmocka_unit_test(test_tensors_alignment_and_lookup),
        cmocka_unit_test(test_write_file_atomic),
        cmocka_unit_test(test_truncated_at_every_length),
        cmocka_unit_test(test_hostile_headers),
        cmocka_unit_test(test_hostile_metadata),
        cmocka_unit_test(test_print_info),
        cmocka_unit_test(test_random_blocks),
        cmocka_unit_test(test_real_model_matches_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
