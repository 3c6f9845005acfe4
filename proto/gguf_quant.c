/*
 * proto/gguf_quant.c — GGUF tensor types: sizes, half-float conversions, dequantizers and
 * reference quantizers.
 *
 * Block layouts follow ggml (ggml-common.h) as described in the GGUF spec; all multi-byte
 * fields are little-endian and blocks are packed without padding:
 *   Q4_0  { f16 d; u8 qs[16]; }                         x = d * (q - 8)
 *   Q4_1  { f16 d; f16 m; u8 qs[16]; }                  x = d * q + m
 *   Q5_0  { f16 d; u8 qh[4]; u8 qs[16]; }               x = d * (q - 16), 5th bit from qh
 *   Q5_1  { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }        x = d * q + m
 *   Q8_0  { f16 d; i8 qs[32]; }                         x = d * q
 *   Q4_K  { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }  256 values in 8 sub-blocks of 32,
 *         6-bit scale sc and min m per sub-block:      x = d * sc * q - dmin * m
 *   Q6_K  { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; } 16 sub-blocks of 16:
 *                                                       x = d * sc * (q - 32)
 * Where a low nibble / high nibble split is used, the low nibbles hold the first half of a group
 * and the high nibbles the second half.
 */
#include "common/rand.h"
#include "proto/gguf.h"

#include <math.h>
#include <string.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF reading assumes little-endian");

/* ---- Type table --------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    uint32_t block;
    uint32_t bytes;
} type_info;

static const type_info TYPES[] = {
    [CAIRN_GGUF_F32] = {"F32", 1, 4},
    [CAIRN_GGUF_F16] = {"F16", 1, 2},
    [CAIRN_GGUF_Q4_0] = {"Q4_0", 32, 18},
    [CAIRN_GGUF_Q4_1] = {"Q4_1", 32, 20},
    [CAIRN_GGUF_Q5_0] = {"Q5_0", 32, 22},
    [CAIRN_GGUF_Q5_1] = {"Q5_1", 32, 24},
    [CAIRN_GGUF_Q8_0] = {"Q8_0", 32, 34},
    [CAIRN_GGUF_Q8_1] = {"Q8_1", 32, 36},
    [CAIRN_GGUF_Q2_K] = {"Q2_K", 256, 84},
    [CAIRN_GGUF_Q3_K] = {"Q3_K", 256, 110},
    [CAIRN_GGUF_Q4_K] = {"Q4_K", 256, 144},
    [CAIRN_GGUF_Q5_K] = {"Q5_K", 256, 176},
    [CAIRN_GGUF_Q6_K] = {"Q6_K", 256, 210},
    [CAIRN_GGUF_Q8_K] = {"Q8_K", 256, 292},
    [CAIRN_GGUF_IQ2_XXS] = {"IQ2_XXS", 256, 66},
    [CAIRN_GGUF_IQ2_XS] = {"IQ2_XS", 256, 74},
    [CAIRN_GGUF_IQ3_XXS] = {"IQ3_XXS", 256, 98},
    [CAIRN_GGUF_IQ1_S] = {"IQ1_S", 256, 50},
    [CAIRN_GGUF_IQ4_NL] = {"IQ4_NL", 32, 18},
    [CAIRN_GGUF_IQ3_S] = {"IQ3_S", 256, 110},
    [CAIRN_GGUF_IQ2_S] = {"IQ2_S", 256, 82},
    [CAIRN_GGUF_IQ4_XS] = {"IQ4_XS", 256, 136},
    [CAIRN_GGUF_I8] = {"I8", 1, 1},
    [CAIRN_GGUF_I16] = {"I16", 1, 2},
    [CAIRN_GGUF_I32] = {"I32", 1, 4},
    [CAIRN_GGUF_I64] = {"I64", 1, 8},
    [CAIRN_GGUF_F64] = {"F64", 1, 8},
    [CAIRN_GGUF_IQ1_M] = {"IQ1_M", 256, 56},
    [CAIRN_GGUF_BF16] = {"BF16", 1, 2},
    [CAIRN_GGUF_TQ1_0] = {"TQ1_0", 256, 54},
    [CAIRN_GGUF_TQ2_0] = {"TQ2_0", 256, 66},
    [CAIRN_GGUF_MXFP4] = {"MXFP4", 32, 17},
};

static const type_info *type_get(uint32_t type)
{
    if (type >= sizeof TYPES / sizeof TYPES[0] || !TYPES[type].name) return NULL;
    return &TYPES[type];
}

const char *cairn_gguf_type_name(uint32_t type)
{
    const type_info *ti = type_get(type);
    return ti ? ti->name : NULL;
}

uint32_t cairn_gguf_type_block_size(uint32_t type)
{
    const type_info *ti = type_get(type);
    return ti ? ti->block : 0;
}

uint32_t cairn_gguf_type_block_bytes(uint32_t type)
{
    const type_info *ti = type_get(type);
    return ti ? ti->bytes : 0;
}

bool cairn_gguf_type_can_dequantize(uint32_t type)
{
    switch (type) {
    case CAIRN_GGUF_F32:
    case CAIRN_GGUF_F16:
    case CAIRN_GGUF_BF16:
    case CAIRN_GGUF_F64:
    case CAIRN_GGUF_I8:
    case CAIRN_GGUF_I16:
    case CAIRN_GGUF_I32:
    case CAIRN_GGUF_Q4_0:
    case CAIRN_GGUF_Q4_1:
    case CAIRN_GGUF_Q5_0:
    case CAIRN_GGUF_Q5_1:
    case CAIRN_GGUF_Q8_0:
    case CAIRN_GGUF_Q4_K:
    case CAIRN_GGUF_Q6_K:
        return true;
    default:
        return false;
    }
}

bool cairn_gguf_type_can_quantize(uint32_t type)
{
    switch (type) {
    case CAIRN_GGUF_F32:
    case CAIRN_GGUF_F16:
    case CAIRN_GGUF_BF16:
    case CAIRN_GGUF_Q8_0:
    case CAIRN_GGUF_Q4_K:
    case CAIRN_GGUF_Q6_K:
        return true;
    default:
        return false;
    }
}

int cairn_gguf_tensor_nbytes(uint32_t type, uint64_t n_elements, uint64_t *out, cairn_error *err)
{
    const type_info *ti = type_get(type);
    if (!ti) return cairn_errorf(err, CAIRN_EUNSUPPORTED, "unknown tensor type %u", type);
    if (n_elements % ti->block)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "%llu elements is not a whole number of %s blocks of %u",
                            (unsigned long long)n_elements, ti->name, ti->block);
    uint64_t bytes;
    if (__builtin_mul_overflow(n_elements / ti->block, (uint64_t)ti->bytes, &bytes))
        return cairn_errorf(err, CAIRN_EOVERFLOW, "%llu %s elements overflow a 64-bit byte size",
                            (unsigned long long)n_elements, ti->name);
    *out = bytes;
    return 0;
}

/* ---- Half floats ----------------------------------------------------------------------------- */

float cairn_gguf_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        float v = ldexpf((float)mant, -24); /* zero or subnormal: mant * 2^-24, exact */
        return sign ? -v : v;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (mant << 13);
    else
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t cairn_gguf_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return sign | (ax > 0x7f800000u ? 0x7e00 : 0x7c00);
    if (ax >= 0x477ff000u) return sign | 0x7c00; /* >= 65520 rounds to infinity */
    if (ax < 0x38800000u) {                      /* below 2^-14: subnormal half or zero */
        float a;
        memcpy(&a, &ax, sizeof a);
        return sign | (uint16_t)nearbyintf(a * 16777216.0f); /* units of 2^-24, ties to even */
    }
    ax += 0xfffu + ((ax >> 13) & 1); /* round to nearest even on the 13 dropped bits */
    return sign | (uint16_t)((ax - (112u << 23)) >> 13);
}

float cairn_gguf_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t cairn_gguf_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline float rdh(const uint8_t *p)
{
    return cairn_gguf_f16_to_f32(rd16(p));
}

static inline void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ---- Dequantizers: one block each ------------------------------------------------------------ */

static void dq_q4_0(const uint8_t *b, float *y)
{
    float d = rdh(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((b[2 + j] & 0xf) - 8);
        y[j + 16] = d * (float)((b[2 + j] >> 4) - 8);
    }
}

static void dq_q4_1(const uint8_t *b, float *y)
{
    float d = rdh(b), m = rdh(b + 2);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(b[4 + j] & 0xf) + m;
        y[j + 16] = d * (float)(b[4 + j] >> 4) + m;
    }
}

static void dq_q5_0(const uint8_t *b, float *y)
{
    float d = rdh(b);
    uint32_t qh =
        (uint32_t)b[2] | (uint32_t)b[3] << 8 | (uint32_t)b[4] << 16 | (uint32_t)b[5] << 24;
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = d * (float)(lo - 16);
        y[j + 16] = d * (float)(hi - 16);
    }
}

static void dq_q5_1(const uint8_t *b, float *y)
{
    float d = rdh(b), m = rdh(b + 2);
    uint32_t qh =
        (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 | (uint32_t)b[7] << 24;
    const uint8_t *qs = b + 8;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = d * (float)lo + m;
        y[j + 16] = d * (float)hi + m;
    }
}

static void dq_q8_0(const uint8_t *b, float *y)
{
    float d = rdh(b);
    for (int j = 0; j < 32; j++)
        y[j] = d * (float)(int8_t)b[2 + j];
}

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K block, from its 12 packed bytes. */
static void q4k_scale_min(const uint8_t *s, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static void dq_q4_k(const uint8_t *b, float *y)
{
    float d = rdh(b), dmin = rdh(b + 2);
    const uint8_t *scales = b + 4, *qs = b + 16;
    for (int c = 0; c < 4; c++) { /* 4 chunks of 64: low nibbles then high nibbles */
        int sc0, m0, sc1, m1;
        q4k_scale_min(scales, 2 * c, &sc0, &m0);
        q4k_scale_min(scales, 2 * c + 1, &sc1, &m1);
        float d0 = d * (float)sc0, dm0 = dmin * (float)m0;
        float d1 = d * (float)sc1, dm1 = dmin * (float)m1;
        for (int l = 0; l < 32; l++) {
            y[64 * c + l] = d0 * (float)(qs[32 * c + l] & 0xf) - dm0;
            y[64 * c + 32 + l] = d1 * (float)(qs[32 * c + l] >> 4) - dm1;
        }
    }
}

static void dq_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = rdh(b + 208);
    for (int n = 0; n < 2; n++) { /* two halves of 128 values */
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = (d * (float)sc[is]) * (float)q1;
            y[l + 32] = (d * (float)sc[is + 2]) * (float)q2;
            y[l + 64] = (d * (float)sc[is + 4]) * (float)q3;
            y[l + 96] = (d * (float)sc[is + 6]) * (float)q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

int cairn_gguf_dequantize_raw(uint32_t type, const void *src, size_t src_bytes, float *out,
                              uint64_t n_elements, cairn_error *err)
{
    const type_info *ti = type_get(type);
    if (!cairn_gguf_type_can_dequantize(type))
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "cannot dequantize tensor type %s (%u)",
                            ti ? ti->name : "unknown", type);
    uint64_t need;
    int rc = cairn_gguf_tensor_nbytes(type, n_elements, &need, err);
    if (rc) return rc == CAIRN_EOVERFLOW ? rc : CAIRN_EINVAL;
    if (need > src_bytes)
        return cairn_errorf(err, CAIRN_EINVAL, "%llu %s elements need %llu bytes, have %zu",
                            (unsigned long long)n_elements, ti->name, (unsigned long long)need,
                            src_bytes);
    const uint8_t *p = src;
    uint64_t nb = n_elements / ti->block;
    switch (type) {
    case CAIRN_GGUF_F32:
        memcpy(out, p, n_elements * 4);
        break;
    case CAIRN_GGUF_F16:
        for (uint64_t i = 0; i < n_elements; i++)
            out[i] = rdh(p + 2 * i);
        break;
    case CAIRN_GGUF_BF16:
        for (uint64_t i = 0; i < n_elements; i++)
            out[i] = cairn_gguf_bf16_to_f32(rd16(p + 2 * i));
        break;
    case CAIRN_GGUF_F64:
        for (uint64_t i = 0; i < n_elements; i++) {
            double v;
            memcpy(&v, p + 8 * i, 8);
            out[i] = (float)v;
        }
        break;
    case CAIRN_GGUF_I8:
        for (uint64_t i = 0; i < n_elements; i++)
            out[i] = (float)(int8_t)p[i];
        break;
    case CAIRN_GGUF_I16:
        for (uint64_t i = 0; i < n_elements; i++)
            out[i] = (float)(int16_t)rd16(p + 2 * i);
        break;
    case CAIRN_GGUF_I32:
        for (uint64_t i = 0; i < n_elements; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            out[i] = (float)v;
        }
        break;
    default: {
        void (*fn)(const uint8_t *, float *) = NULL;
        switch (type) {
        case CAIRN_GGUF_Q4_0:
            fn = dq_q4_0;
            break;
        case CAIRN_GGUF_Q4_1:
            fn = dq_q4_1;
            break;
        case CAIRN_GGUF_Q5_0:
            fn = dq_q5_0;
            break;
        case CAIRN_GGUF_Q5_1:
            fn = dq_q5_1;
            break;
        case CAIRN_GGUF_Q8_0:
            fn = dq_q8_0;
            break;
        case CAIRN_GGUF_Q4_K:
            fn = dq_q4_k;
            break;
        case CAIRN_GGUF_Q6_K:
            fn = dq_q6_k;
            break;
        default:
            break;
        }
        for (uint64_t i = 0; i < nb; i++)
            fn(p + i * ti->bytes, out + i * ti->block);
    }
    }
    return 0;
}

int cairn_gguf_dequantize(const cairn_gguf_tensor *t, float *out, size_t n, cairn_error *err)
{
    if (!cairn_gguf_type_can_dequantize(t->type) || !t->data)
        return cairn_errorf(
            err, CAIRN_EUNSUPPORTED, "tensor '%s': cannot dequantize type %s (%u)", t->name,
            cairn_gguf_type_name(t->type) ? cairn_gguf_type_name(t->type) : "unknown", t->type);
    if (n < t->n_elements)
        return cairn_errorf(err, CAIRN_EINVAL, "tensor '%s': %llu elements, output holds %zu",
                            t->name, (unsigned long long)t->n_elements, n);
    int rc = cairn_gguf_dequantize_raw(t->type, t->data, t->nbytes, out, t->n_elements, err);
    if (rc) cairn_error_prefix(err, "tensor '%s'", t->name);
    return rc;
}

int cairn_gguf_dequantize_rows(const cairn_gguf_tensor *t, uint64_t row0, uint64_t n_rows,
                               float *out, size_t n, cairn_error *err)
{
    if (!cairn_gguf_type_can_dequantize(t->type) || !t->data)
        return cairn_errorf(
            err, CAIRN_EUNSUPPORTED, "tensor '%s': cannot dequantize type %s (%u)", t->name,
            cairn_gguf_type_name(t->type) ? cairn_gguf_type_name(t->type) : "unknown", t->type);
    uint64_t row_len = t->dims[0], rows = row_len ? t->n_elements / row_len : 0;
    if (row0 > rows || n_rows > rows - row0)
        return cairn_errorf(err, CAIRN_ERANGE, "tensor '%s': rows %llu..%llu past its %llu rows",
                            t->name, (unsigned long long)row0, (unsigned long long)(row0 + n_rows),
                            (unsigned long long)rows);
    uint64_t count = n_rows * row_len; /* <= n_elements: no overflow */
    if (n < count)
        return cairn_errorf(err, CAIRN_EINVAL, "tensor '%s': %llu rows need %llu floats, have %zu",
                            t->name, (unsigned long long)n_rows, (unsigned long long)count, n);
    uint64_t row_bytes, off;
    int rc = cairn_gguf_tensor_nbytes(t->type, row_len, &row_bytes, err);
    if (rc) {
        cairn_error_prefix(err, "tensor '%s': rows", t->name);
        return rc;
    }
    off = row0 * row_bytes;
    rc = cairn_gguf_dequantize_raw(t->type, (const uint8_t *)t->data + off, t->nbytes - off, out,
                                   count, err);
    if (rc) cairn_error_prefix(err, "tensor '%s'", t->name);
    return rc;
}

/* ---- Reference quantizers ------------------------------------------------------------------- */

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static void q_q8_0(const float *x, uint8_t *b)
{
    float amax = 0;
    for (int j = 0; j < 32; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f;
    wr16(b, cairn_gguf_f32_to_f16(d));
    float dh = rdh(b); /* quantize against the stored (rounded) scale */
    float id = dh != 0 ? 1.0f / dh : 0;
    for (int j = 0; j < 32; j++)
        b[2 + j] = (uint8_t)(int8_t)clampi((int)lrintf(x[j] * id), -127, 127);
}

/*
 * Q4_K: per sub-block of 32, fit x ~ scale * q - min with q in 0..15 (min >= 0 as the offset of
 * the smallest value below zero), then express scales and mins as 6-bit multiples of the
 * super-block's d and dmin.
 */
static void q_q4_k(const float *x, uint8_t *b)
{
    float scale[8], mn[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float lo = 0, hi = 0;
        for (int l = 0; l < 32; l++) {
            lo = fminf(lo, x[32 * j + l]);
            hi = fmaxf(hi, x[32 * j + l]);
        }
        scale[j] = (hi - lo) / 15.0f;
        mn[j] = -lo;
        max_scale = fmaxf(max_scale, scale[j]);
        max_min = fmaxf(max_min, mn[j]);
    }
    wr16(b, cairn_gguf_f32_to_f16(max_scale / 63.0f));
    wr16(b + 2, cairn_gguf_f32_to_f16(max_min / 63.0f));
    float d = rdh(b), dmin = rdh(b + 2);
    int sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = d > 0 ? clampi((int)lrintf(scale[j] / d), 0, 63) : 0;
        m[j] = dmin > 0 ? clampi((int)lrintf(mn[j] / dmin), 0, 63) : 0;
    }
    uint8_t *s = b + 4;
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 0xf) | ((m[j + 4] & 0xf) << 4));
    }
    uint8_t q[256];
    for (int j = 0; j < 8; j++) {
        float ds = d * (float)sc[j], dm = dmin * (float)m[j];
        for (int l = 0; l < 32; l++)
            q[32 * j + l] =
                (uint8_t)(ds > 0 ? clampi((int)lrintf((x[32 * j + l] + dm) / ds), 0, 15) : 0);
    }
    uint8_t *qs = b + 16;
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++)
            qs[32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
}

/* Q6_K: per sub-block of 16, scale = max|x| / 31 so q fits -31..31; scales as int8 multiples of d.
 */
static void q_q6_k(const float *x, uint8_t *b)
{
    float scale[16], max_scale = 0;
    for (int j = 0; j < 16; j++) {
        float amax = 0;
        for (int l = 0; l < 16; l++)
            amax = fmaxf(amax, fabsf(x[16 * j + l]));
        scale[j] = amax / 31.0f;
        max_scale = fmaxf(max_scale, scale[j]);
    }
    wr16(b + 208, cairn_gguf_f32_to_f16(max_scale / 127.0f));
    float d = rdh(b + 208);
    int8_t *sc = (int8_t *)(b + 192);
    uint8_t q[256];
    for (int j = 0; j < 16; j++) {
        sc[j] = (int8_t)(d > 0 ? clampi((int)lrintf(scale[j] / d), -128, 127) : 0);
        float ds = d * (float)sc[j];
        for (int l = 0; l < 16; l++)
            q[16 * j + l] =
                (uint8_t)(ds > 0 ? clampi((int)lrintf(x[16 * j + l] / ds), -32, 31) + 32 : 32);
    }
    uint8_t *ql = b, *qh = b + 128;
    for (int n = 0; n < 2; n++) {
        const uint8_t *Q = q + 128 * n;
        for (int l = 0; l < 32; l++) {
            uint8_t q1 = Q[l], q2 = Q[l + 32], q3 = Q[l + 64], q4 = Q[l + 96];
            ql[64 * n + l] = (uint8_t)((q1 & 0xf) | ((q3 & 0xf) << 4));
            ql[64 * n + l + 32] = (uint8_t)((q2 & 0xf) | ((q4 & 0xf) << 4));
            qh[32 * n + l] =
                (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
        }
    }
}

/* The bytes n_elements of type take, in *need, and whether dst_bytes hold them. */
static int dst_room(uint32_t type, uint64_t n_elements, size_t dst_bytes, uint64_t *need,
                    cairn_error *err)
{
    int rc = cairn_gguf_tensor_nbytes(type, n_elements, need, err);
    if (rc)
        return rc;
    const char *name = cairn_gguf_type_name(type);
    if (*need > dst_bytes)
        return cairn_errorf(err, CAIRN_EINVAL, "%llu elements as %s need %llu bytes, have %zu",
                            (unsigned long long)n_elements, name ? name : "?",
                            (unsigned long long)*need, dst_bytes);
    return 0;
}

int cairn_gguf_quantize(uint32_t type, const float *src, uint64_t n_elements, void *dst,
                        size_t dst_bytes, cairn_error *err)
{
    if (!cairn_gguf_type_can_quantize(type))
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "cannot quantize to tensor type %s (%u)",
                            cairn_gguf_type_name(type) ? cairn_gguf_type_name(type) : "unknown",
                            type);
    uint64_t need;
    int rc = dst_room(type, n_elements, dst_bytes, &need, err);
    if (rc) return rc == CAIRN_EOVERFLOW ? rc : CAIRN_EINVAL;
    uint8_t *p = dst;
    const type_info *ti = type_get(type);
    uint64_t nb = n_elements / ti->block;
    switch (type) {
    case CAIRN_GGUF_F32:
        memcpy(p, src, n_elements * 4);
        break;
    case CAIRN_GGUF_F16:
        for (uint64_t i = 0; i < n_elements; i++)
            wr16(p + 2 * i, cairn_gguf_f32_to_f16(src[i]));
        break;
    case CAIRN_GGUF_BF16:
        for (uint64_t i = 0; i < n_elements; i++)
            wr16(p + 2 * i, cairn_gguf_f32_to_bf16(src[i]));
        break;
    case CAIRN_GGUF_Q8_0:
        for (uint64_t i = 0; i < nb; i++)
            q_q8_0(src + 32 * i, p + 34 * i);
        break;
    case CAIRN_GGUF_Q4_K:
        for (uint64_t i = 0; i < nb; i++)
            q_q4_k(src + 256 * i, p + 144 * i);
        break;
    case CAIRN_GGUF_Q6_K:
        for (uint64_t i = 0; i < nb; i++)
            q_q6_k(src + 256 * i, p + 210 * i);
        break;
    default:
        break;
    }
    return 0;
}

/* ---- Random blocks ----------------------------------------------------------------------------- */

/*
 * Random bits for the quants, then each block's scale fields set so that its values stay
 * within about +-scale: the largest |value| a block can hold is (factor) x d, with the
 * factors of each format's decoding (dequantizers above).
 */
int cairn_gguf_random_blocks(uint32_t type, uint64_t n_elements, float scale, uint64_t *rng,
                             void *dst, size_t dst_bytes, cairn_error *err)
{
    uint64_t need;
    int rc = dst_room(type, n_elements, dst_bytes, &need, err);
    if (rc)
        return rc;
    uint8_t *p = dst;
    const type_info *ti = type_get(type);
    const uint64_t nb = n_elements / ti->block, bb = ti->bytes;
    switch (type) {
    case CAIRN_GGUF_F32:
        for (uint64_t i = 0; i < n_elements; i++) {
            float v = scale * cairn_rand_sym(rng);
            memcpy(p + 4 * i, &v, 4);
        }
        return 0;
    case CAIRN_GGUF_F16:
    case CAIRN_GGUF_BF16:
        for (uint64_t i = 0; i < n_elements; i++) {
            float v = scale * cairn_rand_sym(rng);
            wr16(p + 2 * i, type == CAIRN_GGUF_F16 ? cairn_gguf_f32_to_f16(v)
                                                   : cairn_gguf_f32_to_bf16(v));
        }
        return 0;
    case CAIRN_GGUF_Q4_0: case CAIRN_GGUF_Q4_1: case CAIRN_GGUF_Q5_0: case CAIRN_GGUF_Q8_0:
    case CAIRN_GGUF_Q4_K: case CAIRN_GGUF_Q6_K:
        break;
    default:
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "no random blocks of type %s (%u)",
                            cairn_gguf_type_name(type) ? cairn_gguf_type_name(type) : "unknown",
                            type);
    }
    for (uint64_t i = 0; i < need / 8; i++) {
        uint64_t r = cairn_rand_next(rng);
        memcpy(p + 8 * i, &r, 8);
    }
    for (uint64_t i = need / 8 * 8; i < need; i++)
        p[i] = (uint8_t)cairn_rand_next(rng);
    for (uint64_t i = 0; i < nb; i++) {
        uint8_t *b = p + i * bb;
        switch (type) {
        case CAIRN_GGUF_Q4_0: /* d (q - 8), q in 0..15 */
            wr16(b, cairn_gguf_f32_to_f16(scale / 8));
            break;
        case CAIRN_GGUF_Q4_1: /* d q + m */
            wr16(b, cairn_gguf_f32_to_f16(scale / 8));
            wr16(b + 2, cairn_gguf_f32_to_f16(-scale));
            break;
        case CAIRN_GGUF_Q5_0: /* d (q - 16), q in 0..31 */
            wr16(b, cairn_gguf_f32_to_f16(scale / 16));
            break;
        case CAIRN_GGUF_Q8_0: /* d q, q in -128..127 */
            wr16(b, cairn_gguf_f32_to_f16(scale / 127));
            break;
        case CAIRN_GGUF_Q4_K: /* d sc q - dmin m, sc and m in 0..63, q in 0..15 */
            wr16(b, cairn_gguf_f32_to_f16(scale / 945));
            wr16(b + 2, cairn_gguf_f32_to_f16(scale / 126));
            break;
        default: /* Q6_K: d sc (q - 32), sc in -128..127, d last */
            wr16(b + 208, cairn_gguf_f32_to_f16(scale / 4096));
            break;
        }
    }
    return 0;
}
