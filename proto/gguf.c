/*
 * proto/gguf.c — GGUF reader: validation, metadata and tensor lookup.
 *
 * The parser walks the file once with a bounds-checked cursor. Every read first checks that the
 * bytes are there (`need`), every count is checked against the bytes left before anything is
 * allocated for it, and every size product or offset sum is overflow-checked. What is kept
 * (keys, names, string values, numeric arrays, the string tables) lives in an arena freed at
 * close; tensor data stays in the mapping. The arena never holds more than a small multiple of
 * the header's size, so a hostile count cannot make us allocate more than the file justifies.
 */
#include "proto/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- Arena ----------------------------------------------------------------------------------- */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} arena_block;

static void *arena_alloc(arena_block **head, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    arena_block *b = *head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 60000 ? n : 64000;
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = *head;
        b->used = 0;
        b->cap = cap;
        *head = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

static void arena_free(arena_block *b)
{
    while (b) {
        arena_block *next = b->next;
        free(b);
        b = next;
    }
}

/* ---- The handle ------------------------------------------------------------------------------ */

struct cairn_gguf {
    const uint8_t *base;
    uint64_t size;
    void *map; /* non-NULL when we mapped the file ourselves */
    uint32_t version, alignment;
    uint64_t data_offset;
    cairn_gguf_kv *kvs;
    size_t n_kv;
    cairn_gguf_tensor *tensors;
    size_t n_tensors;
    uint32_t *kv_hash, *t_hash; /* open addressing: slot holds index + 1, 0 = empty */
    size_t kv_cap, t_cap;       /* powers of two */
    arena_block *arena;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static size_t hash_cap_for(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    return cap;
}

/* Finds name in a table whose slots index `names` (stride bytes apart); returns index or -1. */
static long hash_find(const uint32_t *tab, size_t cap, const void *items, size_t stride,
                      const char *name)
{
    if (!tab) return -1;
    for (size_t i = hash_str(name) & (cap - 1);; i = (i + 1) & (cap - 1)) {
        if (!tab[i]) return -1;
        size_t idx = tab[i] - 1;
        const char *cand = *(const char *const *)((const char *)items + idx * stride);
        if (strcmp(cand, name) == 0) return (long)idx;
    }
}

/* Inserts index idx under name; returns the index already holding name, or -1 when inserted. */
static long hash_insert(uint32_t *tab, size_t cap, const void *items, size_t stride,
                        const char *name, size_t idx)
{
    for (size_t i = hash_str(name) & (cap - 1);; i = (i + 1) & (cap - 1)) {
        if (!tab[i]) {
            tab[i] = (uint32_t)(idx + 1);
            return -1;
        }
        size_t other = tab[i] - 1;
        const char *cand = *(const char *const *)((const char *)items + other * stride);
        if (strcmp(cand, name) == 0) return (long)other;
    }
}

/* ---- Bounds-checked cursor ------------------------------------------------------------------- */

typedef struct {
    cairn_gguf *g;
    uint64_t pos;
    cairn_error *err;
} cursor;

static int need(cursor *c, uint64_t n, const char *what)
{
    uint64_t left = c->g->size - c->pos;
    if (n > left)
        return cairn_errorf(c->err, CAIRN_EFORMAT,
                            "offset %llu: %s needs %llu bytes but the %llu-byte file has only "
                            "%llu left (truncated?)",
                            (unsigned long long)c->pos, what, (unsigned long long)n,
                            (unsigned long long)c->g->size, (unsigned long long)left);
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what)
{
    int rc = need(c, 4, what);
    if (rc) return rc;
    memcpy(v, c->g->base + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what)
{
    int rc = need(c, 8, what);
    if (rc) return rc;
    memcpy(v, c->g->base + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int rd_str(cursor *c, cairn_gguf_str *s, const char *what)
{
    uint64_t at = c->pos, len;
    int rc = rd_u64(c, &len, what);
    if (rc) return rc;
    uint64_t left = c->g->size - c->pos;
    if (len > left)
        return cairn_errorf(c->err, CAIRN_EFORMAT,
                            "offset %llu: %s length %llu runs past the end of the %llu-byte file "
                            "(%llu bytes left)",
                            (unsigned long long)at, what, (unsigned long long)len,
                            (unsigned long long)c->g->size, (unsigned long long)left);
    s->ptr = (const char *)c->g->base + c->pos;
    s->len = len;
    c->pos += len;
    return 0;
}

/* A NUL-terminated arena copy of a key or name; NULs inside are a format error. */
static int copy_name(cursor *c, cairn_gguf_str s, uint64_t at, const char *what, char **out)
{
    if (s.len == 0)
        return cairn_errorf(c->err, CAIRN_EFORMAT, "offset %llu: empty %s", (unsigned long long)at,
                            what);
    if (memchr(s.ptr, 0, s.len))
        return cairn_errorf(c->err, CAIRN_EFORMAT, "offset %llu: %s contains a NUL byte",
                            (unsigned long long)at, what);
    char *p = arena_alloc(&c->g->arena, s.len + 1);
    if (!p) return cairn_errorf(c->err, CAIRN_ENOMEM, "out of memory copying a %s", what);
    memcpy(p, s.ptr, s.len);
    p[s.len] = '\0';
    *out = p;
    return 0;
}

/* ---- Metadata values ------------------------------------------------------------------------- */

static int read_scalar(cursor *c, cairn_gguf_kv *kv, uint32_t type)
{
    size_t n = cairn_gguf_kv_type_size(type);
    uint64_t at = c->pos;
    int rc = need(c, n, "metadata value");
    if (rc) return rc;
    const uint8_t *p = c->g->base + c->pos;
    c->pos += n;
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64 = 0;
    float f32;
    switch (type) {
    case CAIRN_GGUF_KV_U8:
        kv->u = p[0];
        kv->i = p[0];
        break;
    case CAIRN_GGUF_KV_I8:
        kv->i = (int8_t)p[0];
        kv->u = (uint64_t)kv->i;
        break;
    case CAIRN_GGUF_KV_U16:
        memcpy(&u16, p, 2);
        kv->u = u16;
        kv->i = u16;
        break;
    case CAIRN_GGUF_KV_I16:
        memcpy(&u16, p, 2);
        kv->i = (int16_t)u16;
        kv->u = (uint64_t)kv->i;
        break;
    case CAIRN_GGUF_KV_U32:
        memcpy(&u32, p, 4);
        kv->u = u32;
        kv->i = u32;
        break;
    case CAIRN_GGUF_KV_I32:
        memcpy(&u32, p, 4);
        kv->i = (int32_t)u32;
        kv->u = (uint64_t)kv->i;
        break;
    case CAIRN_GGUF_KV_U64:
        memcpy(&u64, p, 8);
        kv->u = u64;
        kv->i = (int64_t)u64;
        break;
    case CAIRN_GGUF_KV_I64:
        memcpy(&u64, p, 8);
        kv->u = u64;
        kv->i = (int64_t)u64;
        break;
    case CAIRN_GGUF_KV_F32:
        memcpy(&f32, p, 4);
        kv->f = f32;
        break;
    case CAIRN_GGUF_KV_F64:
        memcpy(&kv->f, p, 8);
        break;
    case CAIRN_GGUF_KV_BOOL:
        u8 = p[0];
        if (u8 > 1)
            return cairn_errorf(c->err, CAIRN_EFORMAT,
                                "offset %llu: key '%s': bool value %u is neither 0 nor 1",
                                (unsigned long long)at, kv->key, u8);
        kv->u = u8;
        kv->i = u8;
        break;
    default:
        break;
    }
    return 0;
}

/*
 * Reads (after its u32 type) the body of an array value: u64 count and the elements. When kv is
 * not NULL the elements are kept in it; nested arrays (depth > 1) are validated and skipped.
 */
static int read_array(cursor *c, cairn_gguf_kv *kv, const char *key, int depth)
{
    uint64_t at = c->pos;
    uint32_t et;
    uint64_t count;
    int rc = rd_u32(c, &et, "array element type");
    if (!rc) rc = rd_u64(c, &count, "array count");
    if (rc) return rc;
    if (et >= CAIRN_GGUF_KV_COUNT_)
        return cairn_errorf(c->err, CAIRN_EUNSUPPORTED,
                            "offset %llu: key '%s': unknown array element type %u",
                            (unsigned long long)at, key, et);
    if (et == CAIRN_GGUF_KV_ARRAY && depth >= CAIRN_GGUF_MAX_ARRAY_DEPTH)
        return cairn_errorf(c->err, CAIRN_EUNSUPPORTED,
                            "offset %llu: key '%s': arrays nested deeper than %d",
                            (unsigned long long)at, key, CAIRN_GGUF_MAX_ARRAY_DEPTH);
    /* Smallest encoding of one element: its size, a string's length, an array's header. */
    uint64_t min_elem = et == CAIRN_GGUF_KV_STRING  ? 8
                        : et == CAIRN_GGUF_KV_ARRAY ? 12
                                                    : cairn_gguf_kv_type_size(et);
    uint64_t left = c->g->size - c->pos;
    if (count > left / min_elem)
        return cairn_errorf(c->err, CAIRN_EFORMAT,
                            "offset %llu: key '%s': array count %llu of %s exceeds what the "
                            "%llu bytes left in the %llu-byte file can hold",
                            (unsigned long long)(at + 4), key, (unsigned long long)count,
                            cairn_gguf_kv_type_name(et), (unsigned long long)left,
                            (unsigned long long)c->g->size);
    if (kv) {
        kv->arr_type = et;
        kv->arr_count = count;
    }
    if (et == CAIRN_GGUF_KV_STRING) {
        cairn_gguf_str *strs = NULL;
        if (kv && count) {
            strs = arena_alloc(&c->g->arena, count * sizeof *strs); /* count <= size / 8 */
            if (!strs) return cairn_errorf(c->err, CAIRN_ENOMEM, "key '%s': out of memory", key);
        }
        for (uint64_t i = 0; i < count; i++) {
            cairn_gguf_str s;
            rc = rd_str(c, &s, "array string");
            if (rc) {
                cairn_error_prefix(c->err, "key '%s' string %llu of %llu", key,
                                   (unsigned long long)i, (unsigned long long)count);
                return rc;
            }
            if (strs) strs[i] = s;
        }
        if (kv) kv->strs = strs;
        return 0;
    }
    if (et == CAIRN_GGUF_KV_ARRAY) {
        /* Each element is an array value itself: u32 type, u64 count, elements (no extra tag). */
        for (uint64_t i = 0; i < count; i++) {
            rc = read_array(c, NULL, key, depth + 1);
            if (rc) return rc;
        }
        return 0;
    }
    uint64_t bytes = count * min_elem; /* no overflow: count <= left / min_elem */
    const uint8_t *p = c->g->base + c->pos;
    if (et == CAIRN_GGUF_KV_BOOL)
        for (uint64_t i = 0; i < count; i++)
            if (p[i] > 1)
                return cairn_errorf(c->err, CAIRN_EFORMAT,
                                    "offset %llu: key '%s': bool element %llu is %u, not 0 or 1",
                                    (unsigned long long)(c->pos + i), key, (unsigned long long)i,
                                    p[i]);
    if (kv && bytes) {
        void *copy = arena_alloc(&c->g->arena, bytes);
        if (!copy) return cairn_errorf(c->err, CAIRN_ENOMEM, "key '%s': out of memory", key);
        memcpy(copy, p, bytes);
        kv->arr = copy;
    }
    c->pos += bytes;
    return 0;
}

static int read_kv(cursor *c, cairn_gguf_kv *kv)
{
    uint64_t at = c->pos;
    cairn_gguf_str ks;
    uint32_t type;
    char *key;
    int rc = rd_str(c, &ks, "metadata key");
    if (!rc) rc = copy_name(c, ks, at, "metadata key", &key);
    if (rc) return rc;
    kv->key = key;
    kv->offset = at;
    uint64_t tat = c->pos;
    rc = rd_u32(c, &type, "metadata value type");
    if (rc) return rc;
    if (type >= CAIRN_GGUF_KV_COUNT_)
        return cairn_errorf(c->err, CAIRN_EUNSUPPORTED,
                            "offset %llu: key '%s' has unknown value type %u",
                            (unsigned long long)tat, key, type);
    kv->type = type;
    if (type == CAIRN_GGUF_KV_ARRAY) return read_array(c, kv, key, 1);
    if (type == CAIRN_GGUF_KV_STRING) {
        cairn_gguf_str s;
        rc = rd_str(c, &s, "metadata string value");
        if (rc) return rc;
        char *v = arena_alloc(&c->g->arena, s.len + 1);
        if (!v) return cairn_errorf(c->err, CAIRN_ENOMEM, "key '%s': out of memory", key);
        memcpy(v, s.ptr, s.len);
        v[s.len] = '\0';
        kv->str = v;
        kv->str_len = s.len;
        return 0;
    }
    return read_scalar(c, kv, type);
}

/* ---- Tensor infos ---------------------------------------------------------------------------- */

static int read_tensor_info(cursor *c, cairn_gguf_tensor *t, uint64_t *info_at)
{
    uint64_t at = c->pos;
    cairn_gguf_str ns;
    char *name;
    int rc = rd_str(c, &ns, "tensor name");
    if (!rc) rc = copy_name(c, ns, at, "tensor name", &name);
    if (rc) return rc;
    t->name = name;
    *info_at = at;
    uint64_t dat = c->pos;
    rc = rd_u32(c, &t->n_dims, "tensor n_dims");
    if (rc) return rc;
    if (t->n_dims > CAIRN_GGUF_MAX_DIMS)
        return cairn_errorf(c->err, CAIRN_EUNSUPPORTED,
                            "offset %llu: tensor '%s' has %u dimensions (at most %d)",
                            (unsigned long long)dat, name, t->n_dims, CAIRN_GGUF_MAX_DIMS);
    uint64_t ne = 1;
    for (int d = 0; d < CAIRN_GGUF_MAX_DIMS; d++)
        t->dims[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t dim_at = c->pos;
        rc = rd_u64(c, &t->dims[d], "tensor dimension");
        if (rc) return rc;
        if (t->dims[d] == 0)
            return cairn_errorf(c->err, CAIRN_EFORMAT, "offset %llu: tensor '%s' dimension %u is 0",
                                (unsigned long long)dim_at, name, d);
        if (__builtin_mul_overflow(ne, t->dims[d], &ne) || ne > INT64_MAX)
            return cairn_errorf(c->err, CAIRN_EOVERFLOW,
                                "offset %llu: tensor '%s': the product of its dimensions "
                                "overflows at dimension %u (%llu)",
                                (unsigned long long)dim_at, name, d,
                                (unsigned long long)t->dims[d]);
    }
    t->n_elements = ne;
    rc = rd_u32(c, &t->type, "tensor type");
    if (!rc) rc = rd_u64(c, &t->offset, "tensor data offset");
    return rc;
}

/* Checks a tensor's type, size, alignment and extent once the data section's start is known. */
static int place_tensor(cursor *c, cairn_gguf_tensor *t, uint64_t info_at)
{
    cairn_gguf *g = c->g;
    uint64_t data_size = g->size > g->data_offset ? g->size - g->data_offset : 0;
    if (t->offset % g->alignment)
        return cairn_errorf(c->err, CAIRN_EFORMAT,
                            "offset %llu: tensor '%s': data offset %llu is not a multiple of the "
                            "alignment %u",
                            (unsigned long long)info_at, t->name, (unsigned long long)t->offset,
                            g->alignment);
    if (t->offset > data_size)
        return cairn_errorf(c->err, CAIRN_EFORMAT,
                            "offset %llu: tensor '%s': data offset %llu lies past the end of the "
                            "%llu-byte data section (file %llu bytes)",
                            (unsigned long long)info_at, t->name, (unsigned long long)t->offset,
                            (unsigned long long)data_size, (unsigned long long)g->size);
    t->file_offset = g->data_offset + t->offset; /* <= size: no overflow */
    uint32_t block = cairn_gguf_type_block_size(t->type);
    if (!block) return 0; /* unknown type: opens, but nbytes 0 and no data */
    if (t->dims[0] % block)
        return cairn_errorf(c->err, CAIRN_EFORMAT,
                            "offset %llu: tensor '%s': row length %llu is not a multiple of the "
                            "%s block size %u",
                            (unsigned long long)info_at, t->name, (unsigned long long)t->dims[0],
                            cairn_gguf_type_name(t->type), block);
    uint64_t nbytes;
    int rc = cairn_gguf_tensor_nbytes(t->type, t->n_elements, &nbytes, c->err);
    if (rc)
        return cairn_error_prefix(c->err, "offset %llu: tensor '%s'", (unsigned long long)info_at,
                                  t->name),
               rc;
    if (nbytes > data_size - t->offset)
        return cairn_errorf(c->err, CAIRN_EFORMAT,
                            "offset %llu: tensor '%s': %llu bytes of %s data at file offset %llu "
                            "run past the end of the %llu-byte file",
                            (unsigned long long)info_at, t->name, (unsigned long long)nbytes,
                            cairn_gguf_type_name(t->type), (unsigned long long)t->file_offset,
                            (unsigned long long)g->size);
    t->nbytes = nbytes;
    t->data = g->base + t->file_offset;
    return 0;
}

/* ---- Open ------------------------------------------------------------------------------------ */

/* Makes room for element i in a doubling array; false when out of memory. */
static bool grow(void **arr, size_t *cap, size_t i, size_t elem)
{
    if (i < *cap) return true;
    size_t n = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, n * elem);
    if (!p) return false;
    *arr = p;
    *cap = n;
    return true;
}

static int parse(cairn_gguf *g, cairn_error *err)
{
    cursor cur = {.g = g, .pos = 0, .err = err}, *c = &cur;
    int rc = need(c, 4, "magic");
    if (rc) return rc;
    if (memcmp(g->base, CAIRN_GGUF_MAGIC, 4) != 0)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "offset 0: bad magic %02x %02x %02x %02x (expected \"GGUF\"): not a "
                            "GGUF file",
                            g->base[0], g->base[1], g->base[2], g->base[3]);
    c->pos = 4;
    rc = rd_u32(c, &g->version, "version");
    if (rc) return rc;
    if (g->version != 2 && g->version != 3)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "offset 4: GGUF version %u is not supported "
                            "(only 2 and 3%s)",
                            g->version, (g->version & 0xffff) == 0 ? "; a big-endian file?" : "");
    uint64_t n_tensors, n_kv;
    rc = rd_u64(c, &n_tensors, "tensor count");
    if (!rc) rc = rd_u64(c, &n_kv, "metadata count");
    if (rc) return rc;
    size_t kv_cap = 0;
    /* A KV takes at least 13 bytes (key length, type, u8), a tensor info at least 24. */
    uint64_t left = g->size - c->pos;
    if (n_kv > left / 13)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "offset 16: metadata count %llu exceeds what a %llu-byte file can hold",
                            (unsigned long long)n_kv, (unsigned long long)g->size);
    if (n_tensors > left / 24 || n_tensors > UINT32_MAX - 1)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "offset 8: tensor count %llu exceeds what a %llu-byte file can hold",
                            (unsigned long long)n_tensors, (unsigned long long)g->size);

    /*
     * Entry arrays grow as entries are actually read, so a hostile count costs no more memory
     * than the bytes behind it; the hash tables are built afterwards (and find duplicates).
     */
    uint64_t *info_at = NULL;
    for (uint64_t i = 0; i < n_kv; i++) {
        if (!grow((void **)&g->kvs, &kv_cap, i, sizeof *g->kvs)) goto oom;
        cairn_gguf_kv *kv = &g->kvs[i];
        memset(kv, 0, sizeof *kv);
        g->n_kv = i + 1;
        rc = read_kv(c, kv);
        if (rc) goto out;
    }
    g->kv_cap = hash_cap_for(g->n_kv);
    g->kv_hash = calloc(g->kv_cap, sizeof *g->kv_hash);
    if (!g->kv_hash) goto oom;
    for (size_t i = 0; i < g->n_kv; i++) {
        cairn_gguf_kv *kv = &g->kvs[i];
        long dup = hash_insert(g->kv_hash, g->kv_cap, g->kvs, sizeof *kv, kv->key, i);
        if (dup >= 0) {
            rc = cairn_errorf(err, CAIRN_EFORMAT,
                              "offset %llu: duplicate metadata key '%s' (first at offset %llu)",
                              (unsigned long long)kv->offset, kv->key,
                              (unsigned long long)g->kvs[dup].offset);
            goto out;
        }
    }

    g->alignment = CAIRN_GGUF_DEFAULT_ALIGNMENT;
    const cairn_gguf_kv *al = cairn_gguf_find_kv(g, "general.alignment");
    if (al) {
        bool is_int = al->type <= CAIRN_GGUF_KV_I32 && al->type != CAIRN_GGUF_KV_F32;
        is_int = is_int || al->type == CAIRN_GGUF_KV_U64 || al->type == CAIRN_GGUF_KV_I64;
        if (!is_int || al->i <= 0 || al->u > (1u << 30) || (al->u & (al->u - 1))) {
            rc = cairn_errorf(err, CAIRN_EFORMAT,
                              "offset %llu: general.alignment must be a power-of-two integer "
                              "up to 2^30 (got type %s, value %lld)",
                              (unsigned long long)al->offset, cairn_gguf_kv_type_name(al->type),
                              (long long)al->i);
            goto out;
        }
        g->alignment = (uint32_t)al->u;
    }

    size_t t_cap = 0, at_cap = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        if (!grow((void **)&g->tensors, &t_cap, i, sizeof *g->tensors) ||
            !grow((void **)&info_at, &at_cap, i, sizeof *info_at))
            goto oom;
        cairn_gguf_tensor *t = &g->tensors[i];
        memset(t, 0, sizeof *t);
        t->index = (uint32_t)i;
        t->name = "";
        g->n_tensors = i + 1;
        rc = read_tensor_info(c, t, &info_at[i]);
        if (rc) goto out;
    }
    g->t_cap = hash_cap_for(g->n_tensors);
    g->t_hash = calloc(g->t_cap, sizeof *g->t_hash);
    if (!g->t_hash) goto oom;
    for (size_t i = 0; i < g->n_tensors; i++) {
        cairn_gguf_tensor *t = &g->tensors[i];
        long dup = hash_insert(g->t_hash, g->t_cap, g->tensors, sizeof *t, t->name, i);
        if (dup >= 0) {
            rc = cairn_errorf(err, CAIRN_EFORMAT,
                              "offset %llu: duplicate tensor name '%s' (first at offset %llu)",
                              (unsigned long long)info_at[i], t->name,
                              (unsigned long long)info_at[dup]);
            goto out;
        }
    }

    /* The data section starts at the next multiple of the alignment (pos <= size <= 2^63). */
    g->data_offset = (c->pos + g->alignment - 1) / g->alignment * g->alignment;
    for (uint64_t i = 0; i < n_tensors; i++) {
        rc = place_tensor(c, &g->tensors[i], info_at[i]);
        if (rc) goto out;
    }
    rc = 0;
out:
    free(info_at);
    return rc;
oom:
    rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory reading %llu keys and %llu tensors",
                      (unsigned long long)n_kv, (unsigned long long)n_tensors);
    goto out;
}

static int open_common(cairn_gguf **out, cairn_gguf *g, cairn_error *err)
{
    int rc = parse(g, err);
    if (rc) {
        cairn_gguf_close(g);
        *out = NULL;
        return rc;
    }
    *out = g;
    return 0;
}

int cairn_gguf_open_memory(cairn_gguf **out, const void *buf, size_t len, cairn_error *err)
{
    *out = NULL;
    if (!buf && len) return cairn_errorf(err, CAIRN_EINVAL, "NULL buffer of %zu bytes", len);
    cairn_gguf *g = calloc(1, sizeof *g);
    if (!g) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    static const uint8_t empty[1];
    g->base = buf ? buf : empty;
    g->size = len;
    return open_common(out, g, err);
}

int cairn_gguf_open(cairn_gguf **out, const char *path, cairn_error *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return cairn_errorf(err, CAIRN_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return cairn_errorf(err, CAIRN_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return cairn_errorf(err, CAIRN_EIO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: offset 0: empty file, not GGUF", path);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return cairn_errorf(err, CAIRN_EIO, "%s: cannot map: %s", path, strerror(e));
    cairn_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        munmap(map, (size_t)st.st_size);
        return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    }
    g->map = map;
    g->base = map;
    g->size = (uint64_t)st.st_size;
    int rc = open_common(out, g, err);
    if (rc) cairn_error_prefix(err, "%s", path);
    return rc;
}

void cairn_gguf_close(cairn_gguf *g)
{
    if (!g) return;
    if (g->map) munmap(g->map, (size_t)g->size);
    free(g->kvs);
    free(g->tensors);
    free(g->kv_hash);
    free(g->t_hash);
    arena_free(g->arena);
    free(g);
}

/* ---- Accessors ------------------------------------------------------------------------------- */

uint32_t cairn_gguf_version(const cairn_gguf *g)
{
    return g->version;
}
uint32_t cairn_gguf_alignment(const cairn_gguf *g)
{
    return g->alignment;
}
uint64_t cairn_gguf_file_size(const cairn_gguf *g)
{
    return g->size;
}
uint64_t cairn_gguf_data_offset(const cairn_gguf *g)
{
    return g->data_offset;
}
const void *cairn_gguf_bytes(const cairn_gguf *g)
{
    return g->base;
}
size_t cairn_gguf_kv_count(const cairn_gguf *g)
{
    return g->n_kv;
}
size_t cairn_gguf_tensor_count(const cairn_gguf *g)
{
    return g->n_tensors;
}

const cairn_gguf_kv *cairn_gguf_kv_at(const cairn_gguf *g, size_t i)
{
    return i < g->n_kv ? &g->kvs[i] : NULL;
}

const cairn_gguf_tensor *cairn_gguf_tensor_at(const cairn_gguf *g, size_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const cairn_gguf_kv *cairn_gguf_find_kv(const cairn_gguf *g, const char *key)
{
    long i = hash_find(g->kv_hash, g->kv_cap, g->kvs, sizeof *g->kvs, key);
    return i >= 0 && (size_t)i < g->n_kv ? &g->kvs[i] : NULL;
}

const cairn_gguf_tensor *cairn_gguf_find_tensor(const cairn_gguf *g, const char *name)
{
    long i = hash_find(g->t_hash, g->t_cap, g->tensors, sizeof *g->tensors, name);
    return i >= 0 && (size_t)i < g->n_tensors ? &g->tensors[i] : NULL;
}

int cairn_gguf_get_tensor(const cairn_gguf *g, const char *name, const cairn_gguf_tensor **out,
                          cairn_error *err)
{
    *out = cairn_gguf_find_tensor(g, name);
    if (!*out) return cairn_errorf(err, CAIRN_ENOTFOUND, "no tensor named '%s'", name);
    return 0;
}

const char *cairn_gguf_kv_type_name(cairn_gguf_kv_type t)
{
    static const char *const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                        "bool", "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < CAIRN_GGUF_KV_COUNT_ ? names[t] : "?";
}

size_t cairn_gguf_kv_type_size(cairn_gguf_kv_type t)
{
    switch (t) {
    case CAIRN_GGUF_KV_U8:
    case CAIRN_GGUF_KV_I8:
    case CAIRN_GGUF_KV_BOOL:
        return 1;
    case CAIRN_GGUF_KV_U16:
    case CAIRN_GGUF_KV_I16:
        return 2;
    case CAIRN_GGUF_KV_U32:
    case CAIRN_GGUF_KV_I32:
    case CAIRN_GGUF_KV_F32:
        return 4;
    case CAIRN_GGUF_KV_U64:
    case CAIRN_GGUF_KV_I64:
    case CAIRN_GGUF_KV_F64:
        return 8;
    default:
        return 0;
    }
}

/* ---- Typed getters --------------------------------------------------------------------------- */

static int lookup(const cairn_gguf *g, const char *key, const cairn_gguf_kv **kv, cairn_error *err)
{
    *kv = cairn_gguf_find_kv(g, key);
    if (!*kv) return cairn_errorf(err, CAIRN_ENOTFOUND, "no metadata key '%s'", key);
    return 0;
}

static bool is_signed_int(cairn_gguf_kv_type t)
{
    return t == CAIRN_GGUF_KV_I8 || t == CAIRN_GGUF_KV_I16 || t == CAIRN_GGUF_KV_I32 ||
           t == CAIRN_GGUF_KV_I64;
}

static bool is_unsigned_int(cairn_gguf_kv_type t)
{
    return t == CAIRN_GGUF_KV_U8 || t == CAIRN_GGUF_KV_U16 || t == CAIRN_GGUF_KV_U32 ||
           t == CAIRN_GGUF_KV_U64;
}

static int wrong_type(const cairn_gguf_kv *kv, const char *want, cairn_error *err)
{
    return cairn_errorf(err, CAIRN_EINVAL, "metadata key '%s' is %s, not %s", kv->key,
                        cairn_gguf_kv_type_name(kv->type), want);
}

/* Reads an integer key as a range [lo, hi]; the value is returned as signed or unsigned. */
static int get_int(const cairn_gguf *g, const char *key, bool want_signed, int64_t lo, uint64_t hi,
                   int64_t *si, uint64_t *ui, const char *want, cairn_error *err)
{
    const cairn_gguf_kv *kv;
    int rc = lookup(g, key, &kv, err);
    if (rc) return rc;
    bool neg;
    if (is_signed_int(kv->type))
        neg = kv->i < 0;
    else if (is_unsigned_int(kv->type))
        neg = false;
    else
        return wrong_type(kv, want, err);
    bool fits = neg ? (want_signed && kv->i >= lo) : kv->u <= hi;
    if (!fits)
        return cairn_errorf(
            err, CAIRN_EINVAL, "metadata key '%s': value %s%llu does not fit %s", key,
            neg ? "-" : "",
            neg ? (unsigned long long)(-(kv->i + 1)) + 1 : (unsigned long long)kv->u, want);
    if (si) *si = neg ? kv->i : (int64_t)kv->u;
    if (ui) *ui = kv->u;
    return 0;
}

int cairn_gguf_get_u32(const cairn_gguf *g, const char *key, uint32_t *out, cairn_error *err)
{
    uint64_t v = 0;
    int rc = get_int(g, key, false, 0, UINT32_MAX, NULL, &v, "u32", err);
    if (!rc) *out = (uint32_t)v;
    return rc;
}

int cairn_gguf_get_i32(const cairn_gguf *g, const char *key, int32_t *out, cairn_error *err)
{
    int64_t v = 0;
    int rc = get_int(g, key, true, INT32_MIN, INT32_MAX, &v, NULL, "i32", err);
    if (!rc) *out = (int32_t)v;
    return rc;
}

int cairn_gguf_get_u64(const cairn_gguf *g, const char *key, uint64_t *out, cairn_error *err)
{
    return get_int(g, key, false, 0, UINT64_MAX, NULL, out, "u64", err);
}

int cairn_gguf_get_i64(const cairn_gguf *g, const char *key, int64_t *out, cairn_error *err)
{
    return get_int(g, key, true, INT64_MIN, INT64_MAX, out, NULL, "i64", err);
}

int cairn_gguf_get_f64(const cairn_gguf *g, const char *key, double *out, cairn_error *err)
{
    const cairn_gguf_kv *kv;
    int rc = lookup(g, key, &kv, err);
    if (rc) return rc;
    if (kv->type != CAIRN_GGUF_KV_F32 && kv->type != CAIRN_GGUF_KV_F64)
        return wrong_type(kv, "a float", err);
    *out = kv->f;
    return 0;
}

int cairn_gguf_get_f32(const cairn_gguf *g, const char *key, float *out, cairn_error *err)
{
    double v = 0;
    int rc = cairn_gguf_get_f64(g, key, &v, err);
    if (!rc) *out = (float)v;
    return rc;
}

int cairn_gguf_get_bool(const cairn_gguf *g, const char *key, bool *out, cairn_error *err)
{
    const cairn_gguf_kv *kv;
    int rc = lookup(g, key, &kv, err);
    if (rc) return rc;
    if (kv->type != CAIRN_GGUF_KV_BOOL) return wrong_type(kv, "bool", err);
    *out = kv->u != 0;
    return 0;
}

int cairn_gguf_get_str(const cairn_gguf *g, const char *key, const char **out, size_t *len,
                       cairn_error *err)
{
    const cairn_gguf_kv *kv;
    int rc = lookup(g, key, &kv, err);
    if (rc) return rc;
    if (kv->type != CAIRN_GGUF_KV_STRING) return wrong_type(kv, "string", err);
    *out = kv->str;
    if (len) *len = (size_t)kv->str_len;
    return 0;
}

int cairn_gguf_get_arr(const cairn_gguf *g, const char *key, cairn_gguf_kv_type *elem_type,
                       uint64_t *count, const void **data, cairn_error *err)
{
    const cairn_gguf_kv *kv;
    int rc = lookup(g, key, &kv, err);
    if (rc) return rc;
    if (kv->type != CAIRN_GGUF_KV_ARRAY) return wrong_type(kv, "array", err);
    if (elem_type) *elem_type = kv->arr_type;
    if (count) *count = kv->arr_count;
    if (data) *data = kv->arr;
    return 0;
}

int cairn_gguf_get_arr_str(const cairn_gguf *g, const char *key, uint64_t i, const char **s,
                           size_t *len, cairn_error *err)
{
    const cairn_gguf_kv *kv;
    int rc = lookup(g, key, &kv, err);
    if (rc) return rc;
    if (kv->type != CAIRN_GGUF_KV_ARRAY || kv->arr_type != CAIRN_GGUF_KV_STRING)
        return wrong_type(kv, "array of strings", err);
    if (i >= kv->arr_count)
        return cairn_errorf(err, CAIRN_ERANGE, "metadata key '%s': index %llu of %llu strings", key,
                            (unsigned long long)i, (unsigned long long)kv->arr_count);
    *s = kv->strs[i].ptr;
    *len = (size_t)kv->strs[i].len;
    return 0;
}
