/*
 * tests/fuzz/fuzz_gguf.c — libFuzzer target for the GGUF reader.
 *
 * Opens the input with cairn_gguf_open_memory(); when it opens, exercises every getter on every
 * key, looks every tensor up by name, dequantizes the small ones (whole and by rows) and prints
 * the info to /dev/null. Any crash, sanitizer report or leak is a finding; so is an API that
 * contradicts itself (a failed open without a message, a lookup that finds another entry).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_gguf: check failed: %s (line %d)\n", #cond, __LINE__);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void exercise_kv(const cairn_gguf *g, const cairn_gguf_kv *kv)
{
    cairn_error err;
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    bool b;
    const char *s;
    size_t len;
    CHECK(cairn_gguf_find_kv(g, kv->key) == kv);
    int rcs[8] = {
        cairn_gguf_get_u32(g, kv->key, &u32, &err), cairn_gguf_get_i32(g, kv->key, &i32, &err),
        cairn_gguf_get_u64(g, kv->key, &u64, &err), cairn_gguf_get_i64(g, kv->key, &i64, &err),
        cairn_gguf_get_f32(g, kv->key, &f32, &err), cairn_gguf_get_f64(g, kv->key, &f64, &err),
        cairn_gguf_get_bool(g, kv->key, &b, &err),  cairn_gguf_get_str(g, kv->key, &s, &len, &err),
    };
    for (int i = 0; i < 8; i++)
        CHECK(rcs[i] == 0 || rcs[i] == CAIRN_EINVAL);
    if (rcs[7] == 0) CHECK(strlen(s) <= len && s[len] == '\0');
    cairn_gguf_kv_type et;
    uint64_t count;
    const void *arr;
    int rc = cairn_gguf_get_arr(g, kv->key, &et, &count, &arr, &err);
    CHECK(rc == 0 || rc == CAIRN_EINVAL);
    if (rc) return;
    volatile uint8_t sink = 0;
    if (arr) {
        size_t es = cairn_gguf_kv_type_size(et);
        CHECK(es > 0);
        sink ^= ((const uint8_t *)arr)[count * es - 1]; /* the whole copy is readable */
    }
    if (et == CAIRN_GGUF_KV_STRING) {
        for (uint64_t i = 0; i < count; i++) {
            rc = cairn_gguf_get_arr_str(g, kv->key, i, &s, &len, &err);
            CHECK(rc == 0);
            if (len) sink ^= (uint8_t)s[len - 1];
            if (i == 64) i = count > 128 ? count - 64 : i; /* first and last few */
        }
        CHECK(cairn_gguf_get_arr_str(g, kv->key, count, &s, &len, &err) == CAIRN_ERANGE);
    }
    (void)sink;
}

static void exercise_tensor(const cairn_gguf *g, const cairn_gguf_tensor *t)
{
    cairn_error err;
    CHECK(cairn_gguf_find_tensor(g, t->name) == t);
    CHECK(cairn_gguf_tensor_at(g, t->index) == t);
    if (t->data) CHECK(t->file_offset + t->nbytes <= cairn_gguf_file_size(g));
    if (t->n_elements > (1u << 16)) return;
    float *out = malloc(sizeof(float) * (size_t)t->n_elements);
    CHECK(out);
    int rc = cairn_gguf_dequantize(t, out, (size_t)t->n_elements, &err);
    CHECK(rc == 0 || (rc == CAIRN_EUNSUPPORTED && !cairn_gguf_type_can_dequantize(t->type)) ||
          (rc == CAIRN_EUNSUPPORTED && !t->data));
    if (rc == 0) {
        uint64_t rows = t->n_elements / t->dims[0];
        rc = cairn_gguf_dequantize_rows(t, rows - 1, 1, out, (size_t)t->n_elements, &err);
        CHECK(rc == 0);
        CHECK(cairn_gguf_dequantize_rows(t, rows, 1, out, (size_t)t->n_elements, &err) ==
              CAIRN_ERANGE);
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cairn_gguf *g = NULL;
    cairn_error err = {0};
    int rc = cairn_gguf_open_memory(&g, data, size, &err);
    if (rc) {
        CHECK(rc < 0 && g == NULL && err.code == rc && err.msg[0] != '\0');
        return 0;
    }
    CHECK(cairn_gguf_data_offset(g) % cairn_gguf_alignment(g) == 0);
    for (size_t i = 0; i < cairn_gguf_kv_count(g); i++)
        exercise_kv(g, cairn_gguf_kv_at(g, i));
    for (size_t i = 0; i < cairn_gguf_tensor_count(g); i++)
        exercise_tensor(g, cairn_gguf_tensor_at(g, i));
    FILE *devnull = fopen("/dev/null", "w");
    if (devnull) {
        CHECK(cairn_gguf_print_info(devnull, g, 0) == 0);
        CHECK(cairn_gguf_print_info(devnull, g, CAIRN_GGUF_INFO_FULL) == 0);
        fclose(devnull);
    }
    cairn_gguf_close(g);
    return 0;
}
