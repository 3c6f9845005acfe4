/*
 * proto/gguf.h — the GGUF v3 model container: reader, writer, tensor types, dequantizers.
 *
 * GGUF (ggml's "GGML Universal File", spec: ggml/docs/gguf.md) is the one container for every
 * model cairn loads. Layout, all little-endian:
 *
 *   "GGUF" u32 version u64 n_tensors u64 n_kv
 *   n_kv      x { string key, u32 value_type, value }
 *   n_tensors x { string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset }
 *   padding to `general.alignment` (default 32)
 *   data section: tensor data at the given offsets (relative to the section start, aligned)
 *
 * where string = u64 length + bytes (no NUL) and an array value = u32 elem_type, u64 count, elems.
 *
 * The reader maps the file (or reads a caller's buffer) and checks every count, length, offset
 * and size against the bytes that are really there, and for overflow, before using it. A hostile
 * or truncated file gets a negative CAIRN_E* code and a message naming the byte offset and the
 * reason; it never crashes the process. Version 2 files (same layout) are accepted too.
 *
 * Error codes used by the reader:
 *   CAIRN_EIO          the file could not be opened, stat'ed or mapped (errno in the message)
 *   CAIRN_EFORMAT      malformed: bad magic, truncated, counts/lengths/offsets past the end,
 *                      misaligned tensor data, bad bool, duplicate key or tensor name, ...
 *   CAIRN_EUNSUPPORTED version other than 2 or 3, n_dims > 4, arrays nested deeper than 3,
 *                      unknown metadata value type
 *   CAIRN_EOVERFLOW    a dims product or byte size that overflows 64 bits
 *   CAIRN_ENOTFOUND    (getters) no such key or tensor
 *   CAIRN_EINVAL       (getters) the key holds another type, or the value does not fit
 *
 * A tensor of a type this build does not know (or cannot dequantize) does not stop the file
 * from opening: its metadata is readable and cairn_gguf_dequantize() reports CAIRN_EUNSUPPORTED.
 *
 * Thread-safety: an open cairn_gguf is immutable; any number of threads may read it (getters,
 * dequantize, print_info) at once. A writer is not thread-safe; use one per thread.
 * The host must be little-endian (checked at compile time).
 */
#ifndef CAIRN_PROTO_GGUF_H
#define CAIRN_PROTO_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/error.h"

#define CAIRN_GGUF_MAGIC             "GGUF"
#define CAIRN_GGUF_VERSION           3
#define CAIRN_GGUF_DEFAULT_ALIGNMENT 32
#define CAIRN_GGUF_MAX_DIMS          4
#define CAIRN_GGUF_MAX_ARRAY_DEPTH   3 /* an array of arrays of arrays, no deeper */

/* ---- Metadata value types (GGUF spec `gguf_metadata_value_type`) ------------------------------
 */
typedef enum cairn_gguf_kv_type {
    CAIRN_GGUF_KV_U8 = 0,
    CAIRN_GGUF_KV_I8 = 1,
    CAIRN_GGUF_KV_U16 = 2,
    CAIRN_GGUF_KV_I16 = 3,
    CAIRN_GGUF_KV_U32 = 4,
    CAIRN_GGUF_KV_I32 = 5,
    CAIRN_GGUF_KV_F32 = 6,
    CAIRN_GGUF_KV_BOOL = 7,
    CAIRN_GGUF_KV_STRING = 8,
    CAIRN_GGUF_KV_ARRAY = 9,
    CAIRN_GGUF_KV_U64 = 10,
    CAIRN_GGUF_KV_I64 = 11,
    CAIRN_GGUF_KV_F64 = 12,
    CAIRN_GGUF_KV_COUNT_ /* number of value types; not a type */
} cairn_gguf_kv_type;

/* "u8", "string", "array", ...; "?" for an unknown value. Static; thread-safe. */
const char *cairn_gguf_kv_type_name(cairn_gguf_kv_type t);
/* Bytes of one scalar of a fixed-size type (1..8); 0 for STRING, ARRAY and unknown values. */
size_t cairn_gguf_kv_type_size(cairn_gguf_kv_type t);

/* ---- Tensor types (ggml_type ids as stored in GGUF) ------------------------------------------ */
typedef enum cairn_gguf_type {
    CAIRN_GGUF_F32 = 0,
    CAIRN_GGUF_F16 = 1,
    CAIRN_GGUF_Q4_0 = 2,
    CAIRN_GGUF_Q4_1 = 3,
    CAIRN_GGUF_Q5_0 = 6,
    CAIRN_GGUF_Q5_1 = 7,
    CAIRN_GGUF_Q8_0 = 8,
    CAIRN_GGUF_Q8_1 = 9,
    CAIRN_GGUF_Q2_K = 10,
    CAIRN_GGUF_Q3_K = 11,
    CAIRN_GGUF_Q4_K = 12,
    CAIRN_GGUF_Q5_K = 13,
    CAIRN_GGUF_Q6_K = 14,
    CAIRN_GGUF_Q8_K = 15,
    CAIRN_GGUF_IQ2_XXS = 16,
    CAIRN_GGUF_IQ2_XS = 17,
    CAIRN_GGUF_IQ3_XXS = 18,
    CAIRN_GGUF_IQ1_S = 19,
    CAIRN_GGUF_IQ4_NL = 20,
    CAIRN_GGUF_IQ3_S = 21,
    CAIRN_GGUF_IQ2_S = 22,
    CAIRN_GGUF_IQ4_XS = 23,
    CAIRN_GGUF_I8 = 24,
    CAIRN_GGUF_I16 = 25,
    CAIRN_GGUF_I32 = 26,
    CAIRN_GGUF_I64 = 27,
    CAIRN_GGUF_F64 = 28,
    CAIRN_GGUF_IQ1_M = 29,
    CAIRN_GGUF_BF16 = 30,
    CAIRN_GGUF_TQ1_0 = 34,
    CAIRN_GGUF_TQ2_0 = 35,
    CAIRN_GGUF_MXFP4 = 39,
} cairn_gguf_type;

/* "F32", "Q4_K", ...; NULL for an id this build does not know. Static; thread-safe. */
const char *cairn_gguf_type_name(uint32_t type);
/* Elements per block (1 for plain types, 32 for Q8_0, 256 for K-quants); 0 if unknown. */
uint32_t cairn_gguf_type_block_size(uint32_t type);
/* Bytes per block (4 for F32, 34 for Q8_0, 144 for Q4_K, ...); 0 if unknown. */
uint32_t cairn_gguf_type_block_bytes(uint32_t type);
/* True when cairn_gguf_dequantize() can decode this type: F32, F16, BF16, F64, I8/I16/I32,
 * Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K. */
bool cairn_gguf_type_can_dequantize(uint32_t type);
/* True when cairn_gguf_quantize() can encode this type: F32, F16, BF16, Q8_0, Q4_K, Q6_K. */
bool cairn_gguf_type_can_quantize(uint32_t type);

/*
 * Bytes that n_elements of `type` occupy. Returns 0 and sets *out, or CAIRN_EUNSUPPORTED
 * (unknown type), CAIRN_EINVAL (n_elements not a multiple of the block size) or
 * CAIRN_EOVERFLOW. Thread-safe.
 */
int cairn_gguf_tensor_nbytes(uint32_t type, uint64_t n_elements, uint64_t *out, cairn_error *err);

/* IEEE half and bfloat16 conversions (round-to-nearest-even on the way down). Thread-safe. */
float cairn_gguf_f16_to_f32(uint16_t h);
uint16_t cairn_gguf_f32_to_f16(float f);
float cairn_gguf_bf16_to_f32(uint16_t h);
uint16_t cairn_gguf_f32_to_bf16(float f);

/* ---- Reader ------------------------------------------------------------------------------- */
typedef struct cairn_gguf cairn_gguf;

/* A string inside the file: NOT NUL-terminated; ptr stays valid while the cairn_gguf is open. */
typedef struct cairn_gguf_str {
    const char *ptr;
    uint64_t len;
} cairn_gguf_str;

/*
 * One metadata entry, read-only, owned by the cairn_gguf. Only the fields for its type are set:
 *  - integer/bool scalars: `i` (signed types sign-extended) and `u` (the same bits);
 *    floats: `f` (f32 widened to double);
 *  - STRING: `str` (NUL-terminated copy, owned by the cairn_gguf; may contain NULs, see str_len);
 *  - ARRAY of numbers/bools: arr_type, arr_count and `arr`, a naturally aligned host copy of the
 *    elements (e.g. `(const int32_t *)kv->arr` for I32; bools are uint8_t 0/1);
 *  - ARRAY of STRING: arr_type, arr_count and `strs[arr_count]` pointing into the file;
 *  - ARRAY of ARRAY: arr_type and arr_count only; the content was validated but is not exposed.
 */
typedef struct cairn_gguf_kv {
    const char *key; /* NUL-terminated copy */
    cairn_gguf_kv_type type;
    uint64_t offset; /* byte offset of this entry in the file (for messages) */
    int64_t i;
    uint64_t u;
    double f;
    const char *str;
    uint64_t str_len;
    cairn_gguf_kv_type arr_type;
    uint64_t arr_count;
    const void *arr;
    const cairn_gguf_str *strs;
} cairn_gguf_kv;

/*
 * One tensor, read-only, owned by the cairn_gguf. dims[0] is the fastest-varying dimension
 * (the row length, ggml's ne[0]); unused dims are 1. `data` points at the tensor's bytes inside
 * the mapping / caller buffer, aligned to the file's alignment relative to the buffer start;
 * `nbytes` is its size. For a type unknown to this build, nbytes is 0 and data NULL.
 */
typedef struct cairn_gguf_tensor {
    const char *name; /* NUL-terminated copy */
    uint32_t index;
    uint32_t type;
    uint32_t n_dims;
    uint64_t dims[CAIRN_GGUF_MAX_DIMS];
    uint64_t n_elements;
    uint64_t offset;      /* relative to the data section, as stored */
    uint64_t file_offset; /* absolute byte offset of the data in the file */
    uint64_t nbytes;
    const void *data;
} cairn_gguf_tensor;

/*
 * Opens and validates the GGUF file at path (mapped read-only; tensor data is not copied).
 * Returns 0 and sets *out, or a negative code with the detail in err (see the table above).
 * The caller owns *out and frees it with cairn_gguf_close().
 */
int cairn_gguf_open(cairn_gguf **out, const char *path, cairn_error *err);

/*
 * The same over a caller's buffer of len bytes, which must stay valid and unchanged until
 * cairn_gguf_close(); tensor data pointers point into it. Used by tests and the fuzzer.
 */
int cairn_gguf_open_memory(cairn_gguf **out, const void *buf, size_t len, cairn_error *err);

/* Unmaps and frees everything; every pointer obtained from g becomes invalid. NULL is a no-op. */
void cairn_gguf_close(cairn_gguf *g);

uint32_t cairn_gguf_version(const cairn_gguf *g);
uint32_t cairn_gguf_alignment(const cairn_gguf *g);
uint64_t cairn_gguf_file_size(const cairn_gguf *g);
uint64_t cairn_gguf_data_offset(const cairn_gguf *g); /* absolute offset of the data section */
/* The mapped bytes (file_size of them); valid while g is open. */
const void *cairn_gguf_bytes(const cairn_gguf *g);

/* Metadata entries in file order. kv_at returns NULL when i >= kv_count. */
size_t cairn_gguf_kv_count(const cairn_gguf *g);
const cairn_gguf_kv *cairn_gguf_kv_at(const cairn_gguf *g, size_t i);
/* The entry for key, or NULL when absent (hash lookup). */
const cairn_gguf_kv *cairn_gguf_find_kv(const cairn_gguf *g, const char *key);

/*
 * Typed getters. Each returns 0 and sets *out, CAIRN_ENOTFOUND when the key is absent, or
 * CAIRN_EINVAL when the stored type does not convert (message names the key and both types).
 * Integer getters accept any integer type whose value fits the target exactly (a u8 or u64
 * holding 2048 both satisfy get_u32); get_f32/get_f64 accept F32 and F64; get_bool only BOOL;
 * get_str only STRING and hands back the NUL-terminated copy owned by g (len may be NULL).
 * On error *out is left unchanged, so a default set beforehand survives a missing key.
 */
int cairn_gguf_get_u32(const cairn_gguf *g, const char *key, uint32_t *out, cairn_error *err);
int cairn_gguf_get_i32(const cairn_gguf *g, const char *key, int32_t *out, cairn_error *err);
int cairn_gguf_get_u64(const cairn_gguf *g, const char *key, uint64_t *out, cairn_error *err);
int cairn_gguf_get_i64(const cairn_gguf *g, const char *key, int64_t *out, cairn_error *err);
int cairn_gguf_get_f32(const cairn_gguf *g, const char *key, float *out, cairn_error *err);
int cairn_gguf_get_f64(const cairn_gguf *g, const char *key, double *out, cairn_error *err);
int cairn_gguf_get_bool(const cairn_gguf *g, const char *key, bool *out, cairn_error *err);
int cairn_gguf_get_str(const cairn_gguf *g, const char *key, const char **out, size_t *len,
                       cairn_error *err);

/*
 * Array getter: element type, count and a pointer to the aligned host copy of numeric/bool
 * elements (NULL for arrays of strings or arrays). Returns 0, CAIRN_ENOTFOUND, or CAIRN_EINVAL
 * when the key is not an array. The data is owned by g.
 */
int cairn_gguf_get_arr(const cairn_gguf *g, const char *key, cairn_gguf_kv_type *elem_type,
                       uint64_t *count, const void **data, cairn_error *err);

/*
 * Element i of a string array: sets *s (NOT NUL-terminated, points into the file) and *len.
 * Returns 0, CAIRN_ENOTFOUND, CAIRN_EINVAL (not an array of strings) or CAIRN_ERANGE (i >= count).
 * For bulk access (a tokenizer vocabulary) use cairn_gguf_find_kv()->strs directly.
 */
int cairn_gguf_get_arr_str(const cairn_gguf *g, const char *key, uint64_t i, const char **s,
                           size_t *len, cairn_error *err);

/* Tensors in file order; tensor_at returns NULL when i >= tensor_count. */
size_t cairn_gguf_tensor_count(const cairn_gguf *g);
const cairn_gguf_tensor *cairn_gguf_tensor_at(const cairn_gguf *g, size_t i);
/* The tensor named name, or NULL when absent (hash lookup). */
const cairn_gguf_tensor *cairn_gguf_find_tensor(const cairn_gguf *g, const char *name);
/* The same with an error: 0 and *out, or CAIRN_ENOTFOUND naming the tensor. */
int cairn_gguf_get_tensor(const cairn_gguf *g, const char *name, const cairn_gguf_tensor **out,
                          cairn_error *err);

/* ---- Dequantize / quantize ------------------------------------------------------------------ */

/*
 * Decodes all of t into out[0 .. t->n_elements), in storage order (dims[0] fastest).
 * n is the capacity of out in floats. Returns 0, CAIRN_EUNSUPPORTED (type cannot be decoded),
 * or CAIRN_EINVAL (n < n_elements). Thread-safe; allocates nothing.
 */
int cairn_gguf_dequantize(const cairn_gguf_tensor *t, float *out, size_t n, cairn_error *err);

/*
 * Decodes rows [row0, row0 + n_rows) of t, a row being dims[0] elements (for a 1-D tensor the
 * only row). Writes n_rows * dims[0] floats. Returns 0, CAIRN_EUNSUPPORTED, CAIRN_ERANGE (rows
 * past the end) or CAIRN_EINVAL (n too small).
 */
int cairn_gguf_dequantize_rows(const cairn_gguf_tensor *t, uint64_t row0, uint64_t n_rows,
                               float *out, size_t n, cairn_error *err);

/*
 * Decodes n_elements values of `type` from src (src_bytes available) into out. n_elements must
 * be a multiple of the type's block size. Returns 0, CAIRN_EUNSUPPORTED, CAIRN_EINVAL (not a
 * whole number of blocks, or src_bytes too small).
 */
int cairn_gguf_dequantize_raw(uint32_t type, const void *src, size_t src_bytes, float *out,
                              uint64_t n_elements, cairn_error *err);

/*
 * Reference quantizer: encodes n_elements floats (a multiple of the block size) into dst
 * (dst_bytes available; need cairn_gguf_tensor_nbytes()). Simple round-to-nearest encoders for
 * F32, F16, BF16, Q8_0, Q4_K and Q6_K, good enough for tests and small models, not tuned for
 * quality like ggml's. Returns 0, CAIRN_EUNSUPPORTED or CAIRN_EINVAL. Thread-safe.
 */
int cairn_gguf_quantize(uint32_t type, const float *src, uint64_t n_elements, void *dst,
                        size_t dst_bytes, cairn_error *err);

/*
 * Synthetic weights: fills dst (dst_bytes available) with n_elements of `type` whose values are
 * random and within about +-scale (F32, F16, BF16 uniform; the quantized types F32-free: random
 * quants with their block scales set for that range). Far faster than quantizing random floats,
 * for models of real shapes whose values do not matter (benchmarks, cairn gguf-synth). Types:
 * F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K. Returns 0, CAIRN_EUNSUPPORTED or
 * CAIRN_EINVAL. Thread-safe on distinct rng states.
 */
int cairn_gguf_random_blocks(uint32_t type, uint64_t n_elements, float scale, uint64_t *rng,
                             void *dst, size_t dst_bytes, cairn_error *err);

/* ---- Writer --------------------------------------------------------------------------------- */
typedef struct cairn_gguf_writer cairn_gguf_writer;

/*
 * A new, empty writer (GGUF v3, alignment 32 unless a u32 "general.alignment" is added, which
 * must be a power of two). Returns 0 or CAIRN_ENOMEM. Free with cairn_gguf_writer_free().
 */
int cairn_gguf_writer_new(cairn_gguf_writer **out, cairn_error *err);
void cairn_gguf_writer_free(cairn_gguf_writer *w); /* NULL is a no-op */

/*
 * Add one metadata entry; entries are written in the order added. Keys and string values are
 * copied. Returns 0, CAIRN_EINVAL (empty or duplicate key, bad alignment value) or CAIRN_ENOMEM.
 */
int cairn_gguf_writer_add_u8(cairn_gguf_writer *w, const char *key, uint8_t v, cairn_error *err);
int cairn_gguf_writer_add_i8(cairn_gguf_writer *w, const char *key, int8_t v, cairn_error *err);
int cairn_gguf_writer_add_u16(cairn_gguf_writer *w, const char *key, uint16_t v, cairn_error *err);
int cairn_gguf_writer_add_i16(cairn_gguf_writer *w, const char *key, int16_t v, cairn_error *err);
int cairn_gguf_writer_add_u32(cairn_gguf_writer *w, const char *key, uint32_t v, cairn_error *err);
int cairn_gguf_writer_add_i32(cairn_gguf_writer *w, const char *key, int32_t v, cairn_error *err);
int cairn_gguf_writer_add_u64(cairn_gguf_writer *w, const char *key, uint64_t v, cairn_error *err);
int cairn_gguf_writer_add_i64(cairn_gguf_writer *w, const char *key, int64_t v, cairn_error *err);
int cairn_gguf_writer_add_f32(cairn_gguf_writer *w, const char *key, float v, cairn_error *err);
int cairn_gguf_writer_add_f64(cairn_gguf_writer *w, const char *key, double v, cairn_error *err);
int cairn_gguf_writer_add_bool(cairn_gguf_writer *w, const char *key, bool v, cairn_error *err);
/* A NUL-terminated string value. */
int cairn_gguf_writer_add_str(cairn_gguf_writer *w, const char *key, const char *v,
                              cairn_error *err);
/* A string value of len bytes (may contain NULs). */
int cairn_gguf_writer_add_strn(cairn_gguf_writer *w, const char *key, const char *v, size_t len,
                               cairn_error *err);
/*
 * An array of count fixed-size elements of elem_type (not STRING/ARRAY), read from data in
 * host layout (e.g. a float[] for F32, a uint8_t[] of 0/1 for BOOL). Copied.
 */
int cairn_gguf_writer_add_arr(cairn_gguf_writer *w, const char *key, cairn_gguf_kv_type elem_type,
                              const void *data, uint64_t count, cairn_error *err);
/* An array of count NUL-terminated strings. Copied. */
int cairn_gguf_writer_add_arr_str(cairn_gguf_writer *w, const char *key, const char *const *strs,
                                  uint64_t count, cairn_error *err);

/*
 * Add a tensor: name (unique, non-empty), type, n_dims (1..4) dims (dims[0] fastest, each > 0)
 * and nbytes of already-encoded data (use cairn_gguf_quantize() to encode floats). For a known
 * type nbytes must equal cairn_gguf_tensor_nbytes(); for an unknown type id it is taken as given
 * (tests use this to make files with unsupported tensors). The data is copied.
 * Returns 0, CAIRN_EINVAL, CAIRN_EOVERFLOW or CAIRN_ENOMEM.
 */
int cairn_gguf_writer_add_tensor(cairn_gguf_writer *w, const char *name, uint32_t type,
                                 uint32_t n_dims, const uint64_t *dims, const void *data,
                                 size_t nbytes, cairn_error *err);

/* Convenience: quantize n floats to `type` and add them as a tensor. */
int cairn_gguf_writer_add_tensor_f32(cairn_gguf_writer *w, const char *name, uint32_t type,
                                     uint32_t n_dims, const uint64_t *dims, const float *data,
                                     cairn_error *err);

/*
 * Write the file atomically: to "<path>.tmp.<pid>", fsync, rename over path. On failure the
 * old file (if any) is untouched and the temp file removed. Returns 0 or CAIRN_EIO/ENOMEM.
 * The writer stays usable (it can be written again).
 */
int cairn_gguf_writer_write_file(const cairn_gguf_writer *w, const char *path, cairn_error *err);

/*
 * Write into a new malloc'ed buffer; the caller owns *buf and frees it with free().
 * Returns 0 or CAIRN_ENOMEM / CAIRN_EOVERFLOW.
 */
int cairn_gguf_writer_write_memory(const cairn_gguf_writer *w, void **buf, size_t *len,
                                   cairn_error *err);

/* ---- Info ----------------------------------------------------------------------------------- */
enum {
    CAIRN_GGUF_INFO_NO_METADATA = 1 << 0, /* omit the metadata section */
    CAIRN_GGUF_INFO_NO_TENSORS = 1 << 1,  /* omit the tensor table */
    CAIRN_GGUF_INFO_FULL = 1 << 2,        /* do not abbreviate long arrays and strings */
};

/*
 * Prints what `cairn gguf-info FILE` shows: a header summary (version, counts, alignment, file
 * size, total parameters, tensor types histogram), the metadata (long arrays abbreviated to
 * count + first items, long strings truncated, unless FULL) and a tensor table (index, name,
 * type, shape, elements, bytes, offset). Returns 0 or CAIRN_EIO when writing to out failed.
 */
int cairn_gguf_print_info(FILE *out, const cairn_gguf *g, int flags);

#endif
