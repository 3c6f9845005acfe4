/*
 * proto/gguf_write.c — GGUF v3 writer.
 *
 * Metadata entries are encoded as they are added (into one growing buffer, in order); tensors are
 * kept as (info, copied data) and laid out at write time, each at the next multiple of the
 * alignment in the data section. Output goes through a small sink that either fills a buffer or
 * streams to a FILE, so both targets share one serializer.
 */
#include "proto/gguf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    char *name;
    uint32_t type, n_dims;
    uint64_t dims[CAIRN_GGUF_MAX_DIMS];
    void *data;
    size_t nbytes;
} w_tensor;

struct cairn_gguf_writer {
    uint8_t *kv; /* encoded metadata entries */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys; /* for duplicate checks */
    size_t keys_cap;
    w_tensor *tensors;
    size_t n_tensors, tensors_cap;
    uint32_t alignment;
};

int cairn_gguf_writer_new(cairn_gguf_writer **out, cairn_error *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    (*out)->alignment = CAIRN_GGUF_DEFAULT_ALIGNMENT;
    return 0;
}

void cairn_gguf_writer_free(cairn_gguf_writer *w)
{
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    for (size_t i = 0; i < w->n_tensors; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->keys);
    free(w->tensors);
    free(w->kv);
    free(w);
}

static int kv_put(cairn_gguf_writer *w, const void *p, size_t n)
{
    if (w->kv_cap - w->kv_len < n) {
        size_t cap = w->kv_cap ? w->kv_cap : 256;
        while (cap - w->kv_len < n) {
            if (cap > SIZE_MAX / 2) return CAIRN_EOVERFLOW;
            cap *= 2;
        }
        uint8_t *q = realloc(w->kv, cap);
        if (!q) return CAIRN_ENOMEM;
        w->kv = q;
        w->kv_cap = cap;
    }
    if (n) memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return 0;
}

static int kv_u32(cairn_gguf_writer *w, uint32_t v)
{
    return kv_put(w, &v, 4);
}
static int kv_u64(cairn_gguf_writer *w, uint64_t v)
{
    return kv_put(w, &v, 8);
}

static int kv_str(cairn_gguf_writer *w, const char *s, size_t len)
{
    int rc = kv_u64(w, len);
    return rc ? rc : kv_put(w, s, len);
}

/*
 * Starts an entry: checks the key, records it and encodes key + type. On any later failure the
 * caller rolls back with kv_abort(), so a failed add leaves the writer as it was.
 */
static int kv_begin(cairn_gguf_writer *w, const char *key, uint32_t type, size_t *mark,
                    cairn_error *err)
{
    if (!key || !*key) return cairn_errorf(err, CAIRN_EINVAL, "empty metadata key");
    if (strcmp(key, "general.alignment") == 0 && type != CAIRN_GGUF_KV_U32)
        return cairn_errorf(err, CAIRN_EINVAL, "general.alignment must be added as u32");
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return cairn_errorf(err, CAIRN_EINVAL, "duplicate metadata key '%s'", key);
    if (w->n_kv == w->keys_cap) {
        size_t cap = w->keys_cap ? 2 * w->keys_cap : 16;
        char **k = realloc(w->keys, cap * sizeof *k);
        if (!k) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        w->keys = k;
        w->keys_cap = cap;
    }
    *mark = w->kv_len;
    int rc = kv_str(w, key, strlen(key));
    if (!rc) rc = kv_u32(w, type);
    if (rc) {
        w->kv_len = *mark;
        return cairn_errorf(err, rc, "metadata key '%s': out of memory", key);
    }
    return 0;
}

static int kv_end(cairn_gguf_writer *w, const char *key, size_t mark, int rc, cairn_error *err)
{
    char *copy = rc ? NULL : strdup(key);
    if (!rc && !copy) rc = CAIRN_ENOMEM;
    if (rc) {
        w->kv_len = mark;
        return cairn_errorf(err, rc, "metadata key '%s': %s", key, cairn_strerror(rc));
    }
    w->keys[w->n_kv++] = copy;
    return 0;
}

static int add_scalar(cairn_gguf_writer *w, const char *key, uint32_t type, const void *v,
                      cairn_error *err)
{
    size_t mark;
    int rc = kv_begin(w, key, type, &mark, err);
    if (rc) return rc;
    return kv_end(w, key, mark, kv_put(w, v, cairn_gguf_kv_type_size(type)), err);
}

int cairn_gguf_writer_add_u8(cairn_gguf_writer *w, const char *key, uint8_t v, cairn_error *err)
{
    return add_scalar(w, key, CAIRN_GGUF_KV_U8, &v, err);
}
int cairn_gguf_writer_add_i8(cairn_gguf_writer *w, const char *key, int8_t v, cairn_error *err)
{
    return add_scalar(w, key, CAIRN_GGUF_KV_I8, &v, err);
}
int cairn_gguf_writer_add_u16(cairn_gguf_writer *w, const char *key, uint16_t v, cairn_error *err)
{
    return add_scalar(w, key, CAIRN_GGUF_KV_U16, &v, err);
}
int cairn_gguf_writer_add_i16(cairn_gguf_writer *w, const char *key, int16_t v, cairn_error *err)
{
    return add_scalar(w, key, CAIRN_GGUF_KV_I16, &v, err);
}
int cairn_gguf_writer_add_u32(cairn_gguf_writer *w, const char *key, uint32_t v, cairn_error *err)
{
    bool is_align = key && strcmp(key, "general.alignment") == 0;
    if (is_align && (v == 0 || v > (1u << 30) || (v & (v - 1))))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "general.alignment %u is not a power of two up to 2^30", v);
    int rc = add_scalar(w, key, CAIRN_GGUF_KV_U32, &v, err);
    if (!rc && is_align) w->alignment = v;
    return rc;
}
int cairn_gguf_writer_add_i32(cairn_gguf_writer *w, const char *key, int32_t v, cairn_error *err)
{
    return add_scalar(w, key, CAIRN_GGUF_KV_I32, &v, err);
}
int cairn_gguf_writer_add_u64(cairn_gguf_writer *w, const char *key, uint64_t v, cairn_error *err)
{
    return add_scalar(w, key, CAIRN_GGUF_KV_U64, &v, err);
}
int cairn_gguf_writer_add_i64(cairn_gguf_writer *w, const char *key, int64_t v, cairn_error *err)
{
    return add_scalar(w, key, CAIRN_GGUF_KV_I64, &v, err);
}
int cairn_gguf_writer_add_f32(cairn_gguf_writer *w, const char *key, float v, cairn_error *err)
{
    return add_scalar(w, key, CAIRN_GGUF_KV_F32, &v, err);
}
int cairn_gguf_writer_add_f64(cairn_gguf_writer *w, const char *key, double v, cairn_error *err)
{
    return add_scalar(w, key, CAIRN_GGUF_KV_F64, &v, err);
}
int cairn_gguf_writer_add_bool(cairn_gguf_writer *w, const char *key, bool v, cairn_error *err)
{
    uint8_t b = v ? 1 : 0;
    return add_scalar(w, key, CAIRN_GGUF_KV_BOOL, &b, err);
}

int cairn_gguf_writer_add_strn(cairn_gguf_writer *w, const char *key, const char *v, size_t len,
                               cairn_error *err)
{
    if (!v && len) return cairn_errorf(err, CAIRN_EINVAL, "metadata key '%s': NULL string", key);
    size_t mark;
    int rc = kv_begin(w, key, CAIRN_GGUF_KV_STRING, &mark, err);
    if (rc) return rc;
    return kv_end(w, key, mark, kv_str(w, v, len), err);
}

int cairn_gguf_writer_add_str(cairn_gguf_writer *w, const char *key, const char *v,
                              cairn_error *err)
{
    if (!v) return cairn_errorf(err, CAIRN_EINVAL, "metadata key '%s': NULL string", key);
    return cairn_gguf_writer_add_strn(w, key, v, strlen(v), err);
}

int cairn_gguf_writer_add_arr(cairn_gguf_writer *w, const char *key, cairn_gguf_kv_type elem_type,
                              const void *data, uint64_t count, cairn_error *err)
{
    size_t es = cairn_gguf_kv_type_size(elem_type);
    if (!es)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "metadata key '%s': array element type %s is not a fixed-size type",
                            key, cairn_gguf_kv_type_name(elem_type));
    if (count > SIZE_MAX / es)
        return cairn_errorf(err, CAIRN_EOVERFLOW, "metadata key '%s': array too large", key);
    if (!data && count) return cairn_errorf(err, CAIRN_EINVAL, "metadata key '%s': NULL data", key);
    if (elem_type == CAIRN_GGUF_KV_BOOL)
        for (uint64_t i = 0; i < count; i++)
            if (((const uint8_t *)data)[i] > 1)
                return cairn_errorf(err, CAIRN_EINVAL,
                                    "metadata key '%s': bool element %llu is not 0 or 1", key,
                                    (unsigned long long)i);
    size_t mark;
    int rc = kv_begin(w, key, CAIRN_GGUF_KV_ARRAY, &mark, err);
    if (rc) return rc;
    rc = kv_u32(w, elem_type);
    if (!rc) rc = kv_u64(w, count);
    if (!rc) rc = kv_put(w, data, (size_t)count * es);
    return kv_end(w, key, mark, rc, err);
}

int cairn_gguf_writer_add_arr_str(cairn_gguf_writer *w, const char *key, const char *const *strs,
                                  uint64_t count, cairn_error *err)
{
    for (uint64_t i = 0; i < count; i++)
        if (!strs[i])
            return cairn_errorf(err, CAIRN_EINVAL, "metadata key '%s': string %llu is NULL", key,
                                (unsigned long long)i);
    size_t mark;
    int rc = kv_begin(w, key, CAIRN_GGUF_KV_ARRAY, &mark, err);
    if (rc) return rc;
    rc = kv_u32(w, CAIRN_GGUF_KV_STRING);
    if (!rc) rc = kv_u64(w, count);
    for (uint64_t i = 0; i < count && !rc; i++)
        rc = kv_str(w, strs[i], strlen(strs[i]));
    return kv_end(w, key, mark, rc, err);
}

/* ---- Tensors --------------------------------------------------------------------------------- */

int cairn_gguf_writer_add_tensor(cairn_gguf_writer *w, const char *name, uint32_t type,
                                 uint32_t n_dims, const uint64_t *dims, const void *data,
                                 size_t nbytes, cairn_error *err)
{
    if (!name || !*name) return cairn_errorf(err, CAIRN_EINVAL, "empty tensor name");
    if (n_dims < 1 || n_dims > CAIRN_GGUF_MAX_DIMS)
        return cairn_errorf(err, CAIRN_EINVAL, "tensor '%s': %u dimensions (1..%d)", name, n_dims,
                            CAIRN_GGUF_MAX_DIMS);
    for (size_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return cairn_errorf(err, CAIRN_EINVAL, "duplicate tensor name '%s'", name);
    uint64_t ne = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (dims[d] == 0)
            return cairn_errorf(err, CAIRN_EINVAL, "tensor '%s': dimension %u is 0", name, d);
        if (__builtin_mul_overflow(ne, dims[d], &ne) || ne > INT64_MAX)
            return cairn_errorf(err, CAIRN_EOVERFLOW, "tensor '%s': element count overflows", name);
    }
    if (cairn_gguf_type_name(type)) {
        uint32_t block = cairn_gguf_type_block_size(type);
        if (dims[0] % block)
            return cairn_errorf(err, CAIRN_EINVAL,
                                "tensor '%s': row length %llu is not a multiple of the %s block "
                                "size %u",
                                name, (unsigned long long)dims[0], cairn_gguf_type_name(type),
                                block);
        uint64_t want;
        int rc = cairn_gguf_tensor_nbytes(type, ne, &want, err);
        if (rc) {
            cairn_error_prefix(err, "tensor '%s'", name);
            return rc;
        }
        if (want != nbytes)
            return cairn_errorf(err, CAIRN_EINVAL,
                                "tensor '%s': %s data of %llu elements is "
                                "%llu bytes, got %zu",
                                name, cairn_gguf_type_name(type), (unsigned long long)ne,
                                (unsigned long long)want, nbytes);
    }
    if (!data && nbytes) return cairn_errorf(err, CAIRN_EINVAL, "tensor '%s': NULL data", name);
    if (w->n_tensors == w->tensors_cap) {
        size_t cap = w->tensors_cap ? 2 * w->tensors_cap : 16;
        w_tensor *t = realloc(w->tensors, cap * sizeof *t);
        if (!t) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        w->tensors = t;
        w->tensors_cap = cap;
    }
    w_tensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->data = malloc(nbytes ? nbytes : 1);
    if (!t->name || !t->data) {
        free(t->name);
        free(t->data);
        return cairn_errorf(err, CAIRN_ENOMEM, "tensor '%s': out of memory for %zu bytes", name,
                            nbytes);
    }
    if (nbytes) memcpy(t->data, data, nbytes);
    t->nbytes = nbytes;
    t->type = type;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < n_dims; d++)
        t->dims[d] = dims[d];
    w->n_tensors++;
    return 0;
}

int cairn_gguf_writer_add_tensor_f32(cairn_gguf_writer *w, const char *name, uint32_t type,
                                     uint32_t n_dims, const uint64_t *dims, const float *data,
                                     cairn_error *err)
{
    if (n_dims < 1 || n_dims > CAIRN_GGUF_MAX_DIMS)
        return cairn_errorf(err, CAIRN_EINVAL, "tensor '%s': %u dimensions (1..%d)", name, n_dims,
                            CAIRN_GGUF_MAX_DIMS);
    uint64_t ne = 1, nbytes;
    for (uint32_t d = 0; d < n_dims; d++)
        if (__builtin_mul_overflow(ne, dims[d], &ne))
            return cairn_errorf(err, CAIRN_EOVERFLOW, "tensor '%s': element count overflows", name);
    int rc = cairn_gguf_tensor_nbytes(type, ne, &nbytes, err);
    if (rc) return cairn_error_prefix(err, "tensor '%s'", name), rc;
    if (nbytes > SIZE_MAX) return cairn_errorf(err, CAIRN_EOVERFLOW, "tensor '%s' too large", name);
    void *buf = malloc(nbytes ? nbytes : 1);
    if (!buf) return cairn_errorf(err, CAIRN_ENOMEM, "tensor '%s': out of memory", name);
    rc = cairn_gguf_quantize(type, data, ne, buf, nbytes, err);
    if (rc)
        cairn_error_prefix(err, "tensor '%s'", name);
    else
        rc = cairn_gguf_writer_add_tensor(w, name, type, n_dims, dims, buf, nbytes, err);
    free(buf);
    return rc;
}

/* ---- Serialization --------------------------------------------------------------------------- */

typedef struct {
    uint8_t *buf; /* memory target, or NULL */
    FILE *f;      /* file target, or NULL */
    uint64_t pos;
    int failed;
} sink;

static void put(sink *s, const void *p, size_t n)
{
    if (s->failed || !n) return;
    if (s->buf)
        memcpy(s->buf + s->pos, p, n);
    else if (fwrite(p, 1, n, s->f) != n)
        s->failed = 1;
    s->pos += n;
}

static void put_zeros(sink *s, uint64_t n)
{
    static const uint8_t zeros[64];
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        put(s, zeros, k);
        n -= k;
    }
}

static uint64_t align_up(uint64_t x, uint32_t a)
{
    return (x + a - 1) / a * a;
}

/* Total file size; fills each tensor's data offset into offs (n_tensors of them). */
static uint64_t layout(const cairn_gguf_writer *w, uint64_t *offs, uint64_t *data_start)
{
    uint64_t pos = 4 + 4 + 8 + 8 + w->kv_len;
    for (size_t i = 0; i < w->n_tensors; i++)
        pos += 8 + strlen(w->tensors[i].name) + 4 + 8 * (uint64_t)w->tensors[i].n_dims + 4 + 8;
    *data_start = align_up(pos, w->alignment);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        off = align_up(off, w->alignment);
        offs[i] = off;
        off += w->tensors[i].nbytes;
    }
    return *data_start + off;
}

static void serialize(const cairn_gguf_writer *w, const uint64_t *offs, uint64_t data_start,
                      sink *s)
{
    uint32_t version = CAIRN_GGUF_VERSION;
    uint64_t nt = w->n_tensors, nkv = w->n_kv;
    put(s, CAIRN_GGUF_MAGIC, 4);
    put(s, &version, 4);
    put(s, &nt, 8);
    put(s, &nkv, 8);
    put(s, w->kv, w->kv_len);
    for (size_t i = 0; i < w->n_tensors; i++) {
        const w_tensor *t = &w->tensors[i];
        uint64_t len = strlen(t->name);
        put(s, &len, 8);
        put(s, t->name, len);
        put(s, &t->n_dims, 4);
        put(s, t->dims, 8 * (size_t)t->n_dims);
        put(s, &t->type, 4);
        put(s, &offs[i], 8);
    }
    put_zeros(s, data_start - s->pos);
    for (size_t i = 0; i < w->n_tensors; i++) {
        put_zeros(s, data_start + offs[i] - s->pos);
        put(s, w->tensors[i].data, w->tensors[i].nbytes);
    }
}

int cairn_gguf_writer_write_memory(const cairn_gguf_writer *w, void **buf, size_t *len,
                                   cairn_error *err)
{
    *buf = NULL;
    *len = 0;
    uint64_t *offs = malloc((w->n_tensors ? w->n_tensors : 1) * sizeof *offs), data_start;
    if (!offs) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    uint64_t total = layout(w, offs, &data_start);
    if (total > SIZE_MAX) {
        free(offs);
        return cairn_errorf(err, CAIRN_EOVERFLOW, "GGUF of %llu bytes does not fit in memory",
                            (unsigned long long)total);
    }
    sink s = {.buf = malloc(total ? (size_t)total : 1)};
    if (!s.buf) {
        free(offs);
        return cairn_errorf(err, CAIRN_ENOMEM, "out of memory for a %llu-byte GGUF",
                            (unsigned long long)total);
    }
    serialize(w, offs, data_start, &s);
    free(offs);
    *buf = s.buf;
    *len = (size_t)total;
    return 0;
}

int cairn_gguf_writer_write_file(const cairn_gguf_writer *w, const char *path, cairn_error *err)
{
    uint64_t *offs = malloc((w->n_tensors ? w->n_tensors : 1) * sizeof *offs), data_start;
    if (!offs) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    layout(w, offs, &data_start);
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (!tmp) {
        free(offs);
        return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    }
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    int rc = 0;
    sink s = {.f = fopen(tmp, "wb")};
    if (!s.f) {
        rc = cairn_errorf(err, CAIRN_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    serialize(w, offs, data_start, &s);
    int e = 0;
    if (s.failed || fflush(s.f) != 0 || fsync(fileno(s.f)) != 0) e = errno ? errno : EIO;
    if (fclose(s.f) != 0 && !e) e = errno;
    if (e) {
        rc = cairn_errorf(err, CAIRN_EIO, "%s: write failed: %s", tmp, strerror(e));
        unlink(tmp);
        goto done;
    }
    if (rename(tmp, path) != 0) {
        rc = cairn_errorf(err, CAIRN_EIO, "rename %s -> %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
    }
done:
    free(tmp);
    free(offs);
    return rc;
}
