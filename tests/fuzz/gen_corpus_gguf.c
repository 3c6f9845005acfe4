/*
 * tests/fuzz/gen_corpus_gguf.c — writes the seed corpus of fuzz_gguf: a dozen small, valid and
 * varied GGUF files made with cairn's writer (plus two hand-assembled ones the writer cannot make:
 * a version-2 file and a nested array).
 *
 * Usage: gen_corpus_gguf OUT_DIR   (the directory must exist)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/gguf.h"

static const char *out_dir;
static int n_written;

#define TRY(call)                                                                                  \
    do {                                                                                           \
        if ((call) != 0) {                                                                         \
            fprintf(stderr, "gen_corpus_gguf: %s failed: %s\n", #call, err.msg);                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static void save_buf(const char *name, const void *buf, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.gguf", out_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "gen_corpus_gguf: cannot write %s\n", path);
        exit(1);
    }
    n_written++;
}

static void save(const char *name, cairn_gguf_writer *w)
{
    cairn_error err = {0};
    void *buf;
    size_t len;
    TRY(cairn_gguf_writer_write_memory(w, &buf, &len, &err));
    save_buf(name, buf, len);
    free(buf);
    cairn_gguf_writer_free(w);
}

static cairn_gguf_writer *new_writer(void)
{
    cairn_gguf_writer *w;
    cairn_error err = {0};
    TRY(cairn_gguf_writer_new(&w, &err));
    return w;
}

static void fill(float *x, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((int32_t)seed >> 8) / (float)(1 << 23);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
        return 2;
    }
    out_dir = argv[1];
    cairn_error err = {0};
    float x[1024];
    fill(x, 1024, 1);
    cairn_gguf_writer *w;

    /* 1. Empty. */
    save("empty", new_writer());

    /* 2. Every scalar type. */
    w = new_writer();
    TRY(cairn_gguf_writer_add_u8(w, "s.u8", 7, &err));
    TRY(cairn_gguf_writer_add_i8(w, "s.i8", -7, &err));
    TRY(cairn_gguf_writer_add_u16(w, "s.u16", 700, &err));
    TRY(cairn_gguf_writer_add_i16(w, "s.i16", -700, &err));
    TRY(cairn_gguf_writer_add_u32(w, "s.u32", 70000, &err));
    TRY(cairn_gguf_writer_add_i32(w, "s.i32", -70000, &err));
    TRY(cairn_gguf_writer_add_u64(w, "s.u64", 1ull << 50, &err));
    TRY(cairn_gguf_writer_add_i64(w, "s.i64", -(1ll << 50), &err));
    TRY(cairn_gguf_writer_add_f32(w, "s.f32", 0.5f, &err));
    TRY(cairn_gguf_writer_add_f64(w, "s.f64", -0.25, &err));
    TRY(cairn_gguf_writer_add_bool(w, "s.bool", true, &err));
    TRY(cairn_gguf_writer_add_str(w, "s.str", "hello", &err));
    save("scalars", w);

    /* 3. Arrays of every fixed type, strings, empty. */
    w = new_writer();
    static const cairn_gguf_kv_type fixed[] = {
        CAIRN_GGUF_KV_U8,  CAIRN_GGUF_KV_I8,  CAIRN_GGUF_KV_U16, CAIRN_GGUF_KV_I16,
        CAIRN_GGUF_KV_U32, CAIRN_GGUF_KV_I32, CAIRN_GGUF_KV_F32, CAIRN_GGUF_KV_U64,
        CAIRN_GGUF_KV_I64, CAIRN_GGUF_KV_F64};
    uint8_t raw[64];
    for (int i = 0; i < 64; i++)
        raw[i] = (uint8_t)(i * 37);
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        char key[32];
        snprintf(key, sizeof key, "a.%s", cairn_gguf_kv_type_name(fixed[i]));
        TRY(cairn_gguf_writer_add_arr(w, key, fixed[i], raw, 64 / cairn_gguf_kv_type_size(fixed[i]),
                                      &err));
    }
    uint8_t bools[5] = {1, 0, 1, 1, 0};
    TRY(cairn_gguf_writer_add_arr(w, "a.bool", CAIRN_GGUF_KV_BOOL, bools, 5, &err));
    TRY(cairn_gguf_writer_add_arr(w, "a.empty", CAIRN_GGUF_KV_F32, NULL, 0, &err));
    const char *strs[] = {"<s>", "</s>", "", "hello", "\xe2\x96\x81world"};
    TRY(cairn_gguf_writer_add_arr_str(w, "a.str", strs, 5, &err));
    save("arrays", w);

    /* 4. Plain float tensors. */
    w = new_writer();
    TRY(cairn_gguf_writer_add_str(w, "general.architecture", "llama", &err));
    uint64_t d1[1] = {16}, d2[2] = {8, 4}, d4[4] = {2, 2, 2, 3};
    TRY(cairn_gguf_writer_add_tensor_f32(w, "a.f32", CAIRN_GGUF_F32, 1, d1, x, &err));
    TRY(cairn_gguf_writer_add_tensor_f32(w, "b.f16", CAIRN_GGUF_F16, 2, d2, x, &err));
    TRY(cairn_gguf_writer_add_tensor_f32(w, "c.bf16", CAIRN_GGUF_BF16, 4, d4, x, &err));
    save("float_tensors", w);

    /* 5. Quantized tensors the quantizer can make. */
    w = new_writer();
    uint64_t dq8[2] = {64, 2}, dk[2] = {256, 2};
    TRY(cairn_gguf_writer_add_tensor_f32(w, "q8", CAIRN_GGUF_Q8_0, 2, dq8, x, &err));
    TRY(cairn_gguf_writer_add_tensor_f32(w, "q4k", CAIRN_GGUF_Q4_K, 2, dk, x, &err));
    TRY(cairn_gguf_writer_add_tensor_f32(w, "q6k", CAIRN_GGUF_Q6_K, 2, dk, x, &err));
    save("quantized", w);

    /* 6. Legacy quants from raw bytes (any bytes are a valid encoding). */
    w = new_writer();
    uint8_t bytes[1024];
    for (int i = 0; i < 1024; i++)
        bytes[i] = (uint8_t)(i * 131 + 7);
    bytes[1] = 0x3c; /* make the first scale a sane half */
    uint64_t d32[1] = {32}, d64[1] = {64};
    TRY(cairn_gguf_writer_add_tensor(w, "q4_0", CAIRN_GGUF_Q4_0, 1, d32, bytes, 18, &err));
    TRY(cairn_gguf_writer_add_tensor(w, "q4_1", CAIRN_GGUF_Q4_1, 1, d32, bytes, 20, &err));
    TRY(cairn_gguf_writer_add_tensor(w, "q5_0", CAIRN_GGUF_Q5_0, 1, d64, bytes, 44, &err));
    TRY(cairn_gguf_writer_add_tensor(w, "q5_1", CAIRN_GGUF_Q5_1, 1, d32, bytes, 24, &err));
    TRY(cairn_gguf_writer_add_tensor(w, "i8", CAIRN_GGUF_I8, 1, d32, bytes, 32, &err));
    TRY(cairn_gguf_writer_add_tensor(w, "i16", CAIRN_GGUF_I16, 1, d32, bytes, 64, &err));
    TRY(cairn_gguf_writer_add_tensor(w, "i32", CAIRN_GGUF_I32, 1, d32, bytes, 128, &err));
    TRY(cairn_gguf_writer_add_tensor(w, "f64", CAIRN_GGUF_F64, 1, d32, bytes, 256, &err));
    save("legacy_quants", w);

    /* 7. Alignment 64, several tensors. */
    w = new_writer();
    TRY(cairn_gguf_writer_add_u32(w, "general.alignment", 64, &err));
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "blk.%d.weight", i);
        uint64_t d[1] = {(uint64_t)(3 + i)};
        TRY(cairn_gguf_writer_add_tensor_f32(w, name, CAIRN_GGUF_F32, 1, d, x + i, &err));
    }
    save("aligned64", w);

    /* 8. Types this build cannot dequantize. */
    w = new_writer();
    uint64_t d256[1] = {256}, d7[1] = {7};
    TRY(cairn_gguf_writer_add_tensor(w, "q5k", CAIRN_GGUF_Q5_K, 1, d256, bytes, 176, &err));
    TRY(cairn_gguf_writer_add_tensor(w, "q2k", CAIRN_GGUF_Q2_K, 1, d256, bytes, 84, &err));
    TRY(cairn_gguf_writer_add_tensor(w, "unknown", 99, 1, d7, bytes, 40, &err));
    save("unsupported", w);

    /* 9. A tokenizer-like model header. */
    w = new_writer();
    TRY(cairn_gguf_writer_add_str(w, "general.architecture", "gemma3", &err));
    TRY(cairn_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama", &err));
    const char *toks[40];
    char tokbuf[40][8];
    float scores[40];
    int32_t types[40];
    for (int i = 0; i < 40; i++) {
        snprintf(tokbuf[i], sizeof tokbuf[i], "t%d", i);
        toks[i] = tokbuf[i];
        scores[i] = -(float)i;
        types[i] = i < 3 ? 3 : 1;
    }
    TRY(cairn_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, 40, &err));
    TRY(cairn_gguf_writer_add_arr(w, "tokenizer.ggml.scores", CAIRN_GGUF_KV_F32, scores, 40, &err));
    TRY(cairn_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", CAIRN_GGUF_KV_I32, types, 40,
                                  &err));
    TRY(cairn_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 2, &err));
    TRY(cairn_gguf_writer_add_u32(w, "gemma3.context_length", 32768, &err));
    TRY(cairn_gguf_writer_add_f32(w, "gemma3.attention.layer_norm_rms_epsilon", 1e-6f, &err));
    uint64_t demb[2] = {32, 32};
    TRY(cairn_gguf_writer_add_tensor_f32(w, "token_embd.weight", CAIRN_GGUF_Q8_0, 2, demb, x,
                                         &err));
    save("tokenizer", w);

    /* 10. A long string and a 4-D conv kernel. */
    w = new_writer();
    char longs[600];
    memset(longs, 'z', sizeof longs - 1);
    longs[sizeof longs - 1] = '\0';
    TRY(cairn_gguf_writer_add_str(w, "tokenizer.chat_template", longs, &err));
    uint64_t dconv[4] = {3, 3, 4, 8};
    TRY(cairn_gguf_writer_add_tensor_f32(w, "conv1.weight", CAIRN_GGUF_F32, 4, dconv, x, &err));
    save("conv", w);

    /* 11. Hand-assembled: version 2, and a nested array (array of 2 arrays of u8). */
    uint8_t b[256];
    size_t n = 0;
#define PUT(p, len) (memcpy(b + n, (p), (len)), n += (len))
    uint32_t u32;
    uint64_t u64;
    PUT("GGUF", 4);
    u32 = 2;
    PUT(&u32, 4);
    u64 = 0;
    PUT(&u64, 8);
    u64 = 1;
    PUT(&u64, 8);
    u64 = 4;
    PUT(&u64, 8);
    PUT("nest", 4);
    u32 = CAIRN_GGUF_KV_ARRAY;
    PUT(&u32, 4);
    PUT(&u32, 4); /* element type: array */
    u64 = 2;
    PUT(&u64, 8);
    for (int i = 0; i < 2; i++) {
        u32 = CAIRN_GGUF_KV_U8;
        PUT(&u32, 4);
        u64 = 3;
        PUT(&u64, 8);
        PUT("abc", 3);
    }
    save_buf("v2_nested", b, n);
#undef PUT
    printf("gen_corpus_gguf: wrote %d files to %s\n", n_written, out_dir);
    return 0;
}
