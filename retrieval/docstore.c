/*
 * retrieval/docstore.c — the passage store (see docstore.h for the format and contract).
 */
#include "retrieval/docstore.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/json.h"
#define CAIRN_LOG_TAG "docstore"
#include "common/log.h"

/* ---- On-disk layout ------------------------------------------------------------------------ */

#define DS_MAGIC "CAIRNDS"  /* 8 bytes with its NUL */
#define DS_VERSION 1u
#define DS_HEADER_SIZE 128u
#define DS_RECORD_SIZE 40u
#define DS_FLAG_DELETED 1u

/* Header fields at fixed offsets (bytes), all little-endian. */
enum {
    H_MAGIC = 0,          /* 8 bytes */
    H_VERSION = 8,        /* u32 */
    H_HEADER_SIZE = 12,   /* u32 */
    H_UID = 16,           /* u64 */
    H_RECORDS = 24,       /* u64 */
    H_LIVE = 32,          /* u64 */
    H_NEXT_ID = 40,       /* u64 */
    H_TABLE_OFF = 48,     /* u64 */
    H_FILE_SIZE = 56,     /* u64 */
    H_TABLE_SUM = 64,     /* u64: FNV-1a of the table bytes */
    H_HEADER_SUM = 120,   /* u64: FNV-1a of header bytes [0, 120) */
};

/* One record, as in memory and (field by field, little-endian) on disk. */
typedef struct {
    uint64_t id;
    uint64_t off; /* blob: key\0 title\0 text\0 meta\0 */
    uint32_t key_len, title_len, text_len, meta_len;
    uint32_t flags;
} ds_record;

struct cairn_docstore {
    char *path;
    int fd;
    bool writable;
    bool dirty;          /* records or flags changed since the last commit */
    uint64_t uid;
    uint64_t next_id;
    size_t n_live;
    ds_record *recs;     /* sorted by id */
    size_t n_recs, cap_recs;
    uint64_t write_pos;  /* where the next blob goes: end of file */
    uint64_t committed_size;
    const uint8_t *map;  /* the file, read-only; covers [0, map_len) */
    size_t map_len;
};

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ull

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void wr64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void record_encode(uint8_t *p, const ds_record *r)
{
    wr64(p, r->id);
    wr64(p + 8, r->off);
    wr32(p + 16, r->key_len);
    wr32(p + 20, r->title_len);
    wr32(p + 24, r->text_len);
    wr32(p + 28, r->meta_len);
    wr32(p + 32, r->flags);
    wr32(p + 36, 0);
}

static void record_decode(ds_record *r, const uint8_t *p)
{
    r->id = rd64(p);
    r->off = rd64(p + 8);
    r->key_len = rd32(p + 16);
    r->title_len = rd32(p + 20);
    r->text_len = rd32(p + 24);
    r->meta_len = rd32(p + 28);
    r->flags = rd32(p + 32);
}

static uint64_t blob_size(const ds_record *r)
{
    return (uint64_t)r->key_len + r->title_len + r->text_len + r->meta_len + 4;
}

/* ---- I/O helpers ------------------------------------------------------------------------------ */

static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path,
                      cairn_error *err)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return cairn_errorf(err, CAIRN_EIO, "%s: write at %llu: %s", path,
                                (unsigned long long)off, strerror(errno));
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

static int remap(cairn_docstore *ds, uint64_t len, cairn_error *err)
{
    if (ds->map)
        munmap((void *)ds->map, ds->map_len);
    ds->map = NULL;
    ds->map_len = 0;
    if (len == 0)
        return 0;
    void *m = mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, ds->fd, 0);
    if (m == MAP_FAILED)
        return cairn_errorf(err, CAIRN_EIO, "%s: mmap %llu bytes: %s", ds->path,
                            (unsigned long long)len, strerror(errno));
    ds->map = m;
    ds->map_len = (size_t)len;
    return 0;
}

static int reserve_recs(cairn_docstore *ds, size_t n, cairn_error *err)
{
    if (n <= ds->cap_recs)
        return 0;
    size_t cap = ds->cap_recs ? ds->cap_recs : 256;
    while (cap < n)
        cap *= 2;
    ds_record *r = realloc(ds->recs, cap * sizeof(*r));
    if (!r)
        return cairn_errorf(err, CAIRN_ENOMEM, "docstore: %zu records", n);
    ds->recs = r;
    ds->cap_recs = cap;
    return 0;
}

/* ---- Open and validate ----------------------------------------------------------------------- */

/* The size of the committed store in a file of `size` bytes: the header's file size when the
 * file is longer and the header is whole (magic, checksum) — blobs and a table that a commit
 * wrote after the end and a crash kept from their header; else `size` itself, for
 * validate_and_load to judge. */
static uint64_t committed_size(const cairn_docstore *ds, uint64_t size)
{
    const uint8_t *h = ds->map;
    if (size < DS_HEADER_SIZE || memcmp(h + H_MAGIC, DS_MAGIC, 8) != 0 ||
        rd64(h + H_HEADER_SUM) != fnv1a(FNV_INIT, h, H_HEADER_SUM))
        return size;
    uint64_t committed = rd64(h + H_FILE_SIZE);
    return committed >= DS_HEADER_SIZE && committed < size ? committed : size;
}

static int validate_and_load(cairn_docstore *ds, uint64_t size, cairn_error *err)
{
    const char *path = ds->path;
    const uint8_t *h = ds->map;
    if (size < DS_HEADER_SIZE)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: %llu bytes, shorter than the %u-byte header",
                            path, (unsigned long long)size, DS_HEADER_SIZE);
    if (memcmp(h + H_MAGIC, DS_MAGIC, 8) != 0)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: not a cairn docstore (bad magic)", path);
    uint32_t version = rd32(h + H_VERSION);
    if (version != DS_VERSION)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED, "%s: docstore version %u (this build reads %u)",
                            path, version, DS_VERSION);
    if (rd32(h + H_HEADER_SIZE) != DS_HEADER_SIZE)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: header size %u, expected %u", path,
                            rd32(h + H_HEADER_SIZE), DS_HEADER_SIZE);
    if (rd64(h + H_HEADER_SUM) != fnv1a(FNV_INIT, h, H_HEADER_SUM))
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: header checksum mismatch", path);
    uint64_t n = rd64(h + H_RECORDS), live = rd64(h + H_LIVE), table_off = rd64(h + H_TABLE_OFF);
    uint64_t file_size = rd64(h + H_FILE_SIZE);
    if (file_size != size)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "%s: header says %llu bytes, file has %llu (truncated or appended "
                            "without commit)",
                            path, (unsigned long long)file_size, (unsigned long long)size);
    if (table_off < DS_HEADER_SIZE || table_off > size)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: table offset %llu outside the file", path,
                            (unsigned long long)table_off);
    if (n > (size - table_off) / DS_RECORD_SIZE || table_off + n * DS_RECORD_SIZE != size)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "%s: %llu records at offset %llu do not end at the file's end (%llu)",
                            path, (unsigned long long)n, (unsigned long long)table_off,
                            (unsigned long long)size);
    if (live > n)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: %llu live records of %llu", path,
                            (unsigned long long)live, (unsigned long long)n);
    const uint8_t *table = ds->map + table_off;
    if (rd64(h + H_TABLE_SUM) != fnv1a(FNV_INIT, table, (size_t)(n * DS_RECORD_SIZE)))
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: record table checksum mismatch", path);
    int rc = reserve_recs(ds, (size_t)n, err);
    if (rc)
        return rc;
    uint64_t next_id = rd64(h + H_NEXT_ID);
    size_t counted_live = 0;
    for (uint64_t i = 0; i < n; i++) {
        ds_record *r = &ds->recs[i];
        record_decode(r, table + i * DS_RECORD_SIZE);
        if (r->flags & ~DS_FLAG_DELETED)
            return cairn_errorf(err, CAIRN_EFORMAT, "%s: record %llu: unknown flags 0x%x", path,
                                (unsigned long long)i, r->flags);
        if (i > 0 && r->id <= ds->recs[i - 1].id)
            return cairn_errorf(err, CAIRN_EFORMAT, "%s: record %llu: id %llu not above %llu",
                                path, (unsigned long long)i, (unsigned long long)r->id,
                                (unsigned long long)ds->recs[i - 1].id);
        if (r->id >= next_id)
            return cairn_errorf(err, CAIRN_EFORMAT, "%s: record %llu: id %llu >= next id %llu",
                                path, (unsigned long long)i, (unsigned long long)r->id,
                                (unsigned long long)next_id);
        uint64_t bs = blob_size(r);
        if (r->off < DS_HEADER_SIZE || r->off > table_off || bs > table_off - r->off)
            return cairn_errorf(err, CAIRN_EFORMAT,
                                "%s: record %llu (id %llu): strings at %llu+%llu outside the "
                                "blob area [%u, %llu)",
                                path, (unsigned long long)i, (unsigned long long)r->id,
                                (unsigned long long)r->off, (unsigned long long)bs,
                                DS_HEADER_SIZE, (unsigned long long)table_off);
        const uint8_t *b = ds->map + r->off;
        uint32_t lens[4] = {r->key_len, r->title_len, r->text_len, r->meta_len};
        static const char *const names[4] = {"key", "title", "text", "metadata"};
        for (int f = 0; f < 4; f++) {
            if (b[lens[f]] != 0 || memchr(b, 0, lens[f]) != NULL)
                return cairn_errorf(err, CAIRN_EFORMAT,
                                    "%s: record %llu (id %llu): %s not NUL-terminated at its "
                                    "length %u",
                                    path, (unsigned long long)i, (unsigned long long)r->id,
                                    names[f], lens[f]);
            b += lens[f] + 1;
        }
        if (!(r->flags & DS_FLAG_DELETED))
            counted_live++;
    }
    if (counted_live != live)
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: header says %llu live records, table has %zu",
                            path, (unsigned long long)live, counted_live);
    ds->n_recs = (size_t)n;
    ds->n_live = counted_live;
    ds->uid = rd64(h + H_UID);
    ds->next_id = next_id;
    ds->write_pos = size;
    ds->committed_size = size;
    return 0;
}

/* Writes the table at write_pos, then the header; fsyncs both. */
static int write_table_and_header(cairn_docstore *ds, int fd, const char *path, cairn_error *err)
{
    size_t tbytes = ds->n_recs * DS_RECORD_SIZE;
    uint8_t *table = calloc(1, tbytes ? tbytes : 1);
    if (!table)
        return cairn_errorf(err, CAIRN_ENOMEM, "%s: table of %zu bytes", path, tbytes);
    for (size_t i = 0; i < ds->n_recs; i++)
        record_encode(table + i * DS_RECORD_SIZE, &ds->recs[i]);
    uint64_t table_off = ds->write_pos;
    int rc = pwrite_all(fd, table, tbytes, table_off, path, err);
    uint64_t sum = fnv1a(FNV_INIT, table, tbytes);
    free(table);
    if (rc)
        return rc;
    uint64_t size = table_off + tbytes;
    if (ftruncate(fd, (off_t)size) != 0 || fsync(fd) != 0)
        return cairn_errorf(err, CAIRN_EIO, "%s: truncate/fsync: %s", path, strerror(errno));
    uint8_t h[DS_HEADER_SIZE] = {0};
    memcpy(h + H_MAGIC, DS_MAGIC, 8);
    wr32(h + H_VERSION, DS_VERSION);
    wr32(h + H_HEADER_SIZE, DS_HEADER_SIZE);
    wr64(h + H_UID, ds->uid);
    wr64(h + H_RECORDS, ds->n_recs);
    wr64(h + H_LIVE, ds->n_live);
    wr64(h + H_NEXT_ID, ds->next_id);
    wr64(h + H_TABLE_OFF, table_off);
    wr64(h + H_FILE_SIZE, size);
    wr64(h + H_TABLE_SUM, sum);
    wr64(h + H_HEADER_SUM, fnv1a(FNV_INIT, h, H_HEADER_SUM));
    rc = pwrite_all(fd, h, sizeof(h), 0, path, err);
    if (rc)
        return rc;
    if (fsync(fd) != 0)
        return cairn_errorf(err, CAIRN_EIO, "%s: fsync: %s", path, strerror(errno));
    return 0;
}

int cairn_docstore_open(cairn_docstore **out, const char *path, int flags, cairn_error *err)
{
    *out = NULL;
    cairn_docstore *ds = calloc(1, sizeof(*ds));
    if (!ds || !(ds->path = strdup(path))) {
        free(ds);
        return cairn_errorf(err, CAIRN_ENOMEM, "docstore: out of memory");
    }
    ds->writable = (flags & CAIRN_DOCSTORE_WRITE) != 0;
    int oflags = ds->writable ? O_RDWR : O_RDONLY;
    ds->fd = open(path, oflags | O_CLOEXEC);
    int rc = 0;
    if (ds->fd < 0 && errno == ENOENT && (flags & CAIRN_DOCSTORE_CREATE)) {
        ds->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (ds->fd < 0) {
            rc = cairn_errorf(err, CAIRN_EIO, "%s: create: %s", path, strerror(errno));
            goto fail;
        }
        ds->writable = true;
        if (getrandom(&ds->uid, sizeof(ds->uid), 0) != (ssize_t)sizeof(ds->uid))
            ds->uid = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        ds->uid |= 1; /* 0 means "no docstore" to the IVF index */
        ds->next_id = 1;
        ds->write_pos = DS_HEADER_SIZE;
        rc = write_table_and_header(ds, ds->fd, path, err);
        if (rc)
            goto fail;
        ds->committed_size = DS_HEADER_SIZE;
        rc = remap(ds, DS_HEADER_SIZE, err);
        if (rc)
            goto fail;
        *out = ds;
        return 0;
    }
    if (ds->fd < 0) {
        rc = cairn_errorf(err, errno == ENOENT ? CAIRN_ENOTFOUND : CAIRN_EIO, "%s: %s", path,
                          strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(ds->fd, &st) != 0) {
        rc = cairn_errorf(err, CAIRN_EIO, "%s: stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size < DS_HEADER_SIZE) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: %lld bytes, shorter than the %u-byte header",
                          path, (long long)st.st_size, DS_HEADER_SIZE);
        goto fail;
    }
    rc = remap(ds, (uint64_t)st.st_size, err);
    if (rc)
        goto fail;
    uint64_t size = committed_size(ds, (uint64_t)st.st_size);
    if (size < (uint64_t)st.st_size && ds->writable) {
        /* Appends after the last commit that a crash left without their header: the
         * header still describes the committed store, which lies whole before them. */
        if (ftruncate(ds->fd, (off_t)size) != 0 || fsync(ds->fd) != 0) {
            rc = cairn_errorf(err, CAIRN_EIO, "%s: dropping an uncommitted tail: %s", path,
                              strerror(errno));
            goto fail;
        }
        rc = remap(ds, size, err);
        if (rc)
            goto fail;
    }
    rc = validate_and_load(ds, size, err);
    if (rc)
        goto fail;
    *out = ds;
    return 0;
fail:
    ds->dirty = false;
    cairn_docstore_close(ds);
    return rc;
}

void cairn_docstore_close(cairn_docstore *ds)
{
    if (!ds)
        return;
    if (ds->dirty) {
        cairn_error e;
        if (cairn_docstore_commit(ds, &e) != 0)
            CAIRN_LOG_ERROR("commit on close failed", "error=%s", e.msg);
    }
    if (ds->map)
        munmap((void *)ds->map, ds->map_len);
    if (ds->fd >= 0)
        close(ds->fd);
    free(ds->recs);
    free(ds->path);
    free(ds);
}

/* ---- Writers ----------------------------------------------------------------------------------- */

static int check_field(const char *s, size_t *len, const char *name, size_t i, bool nonempty,
                       cairn_error *err)
{
    size_t n = s ? strnlen(s, (size_t)CAIRN_DOCSTORE_MAX_FIELD + 1) : 0;
    if (n > CAIRN_DOCSTORE_MAX_FIELD)
        return cairn_errorf(err, CAIRN_ELIMIT, "doc %zu: %s longer than %u bytes", i, name,
                            CAIRN_DOCSTORE_MAX_FIELD);
    if (nonempty && n == 0)
        return cairn_errorf(err, CAIRN_EINVAL, "doc %zu: empty %s", i, name);
    if (n && !cairn_json_utf8_valid(s, n))
        return cairn_errorf(err, CAIRN_EFORMAT, "doc %zu: %s is not valid UTF-8", i, name);
    *len = n;
    return 0;
}

/* Appends docs[0..n) with ids first, first+1, ...; first >= next_id (callers check). */
static int append_at(cairn_docstore *ds, const cairn_doc_input *docs, size_t n, uint64_t first,
                     cairn_error *err)
{
    int rc = reserve_recs(ds, ds->n_recs + n, err);
    if (rc)
        return rc;
    /* Validate everything before writing anything. */
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const cairn_doc_input *d = &docs[i];
        size_t lk = 0, lt = 0, lx = 0, lm = 0; /* set by check_field; GCC -O3 cannot tell */
        if ((rc = check_field(d->key, &lk, "key", i, false, err)) ||
            (rc = check_field(d->title, &lt, "title", i, false, err)) ||
            (rc = check_field(d->text, &lx, "text", i, true, err)) ||
            (rc = check_field(d->meta, &lm, "metadata", i, false, err)))
            return rc;
        if (lm) {
            json_t *j = NULL;
            cairn_error je;
            if (cairn_json_parse(&j, d->meta, lm, CAIRN_DOCSTORE_MAX_FIELD, &je) != 0)
                return cairn_errorf(err, CAIRN_EFORMAT, "doc %zu: metadata: %s", i, je.msg);
            bool obj = json_is_object(j);
            json_decref(j);
            if (!obj)
                return cairn_errorf(err, CAIRN_EFORMAT, "doc %zu: metadata is not a JSON object",
                                    i);
        } else {
            lm = 2; /* "{}" */
        }
        total += lk + lt + lx + lm + 4;
    }
    char *buf = malloc(total);
    if (!buf)
        return cairn_errorf(err, CAIRN_ENOMEM, "docstore: append of %zu bytes", total);
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        const cairn_doc_input *d = &docs[i];
        ds_record *r = &ds->recs[ds->n_recs + i];
        memset(r, 0, sizeof(*r));
        r->id = first + i;
        r->off = ds->write_pos + pos;
        const char *meta = (d->meta && d->meta[0]) ? d->meta : "{}";
        const char *f[4] = {d->key ? d->key : "", d->title ? d->title : "", d->text, meta};
        uint32_t *lens[4] = {&r->key_len, &r->title_len, &r->text_len, &r->meta_len};
        for (int k = 0; k < 4; k++) {
            size_t l = strlen(f[k]);
            memcpy(buf + pos, f[k], l + 1);
            *lens[k] = (uint32_t)l;
            pos += l + 1;
        }
    }
    rc = pwrite_all(ds->fd, buf, pos, ds->write_pos, ds->path, err);
    free(buf);
    if (rc)
        return rc;
    ds->write_pos += pos;
    rc = remap(ds, ds->write_pos, err);
    if (rc)
        return rc;
    ds->n_recs += n;
    ds->n_live += n;
    ds->next_id = first + n;
    ds->dirty = true;
    return 0;
}

int cairn_docstore_append(cairn_docstore *ds, const cairn_doc_input *docs, size_t n,
                          uint64_t *first_id, cairn_error *err)
{
    if (!ds->writable)
        return cairn_errorf(err, CAIRN_ESTATE, "%s: opened read-only", ds->path);
    if (first_id)
        *first_id = ds->next_id;
    if (n == 0)
        return 0;
    return append_at(ds, docs, n, ds->next_id, err);
}

int cairn_docstore_append_ids(cairn_docstore *ds, const cairn_doc_input *docs, size_t n,
                              uint64_t first_id, cairn_error *err)
{
    if (!ds->writable)
        return cairn_errorf(err, CAIRN_ESTATE, "%s: opened read-only", ds->path);
    if (first_id < ds->next_id)
        return cairn_errorf(err, CAIRN_ERANGE,
                            "%s: id %llu is not above the store's ids (next id %llu)", ds->path,
                            (unsigned long long)first_id, (unsigned long long)ds->next_id);
    if (n == 0)
        return 0;
    if (first_id > UINT64_MAX - n || first_id + n > (uint64_t)INT64_MAX)
        return cairn_errorf(err, CAIRN_ERANGE, "%s: ids %llu + %zu overflow", ds->path,
                            (unsigned long long)first_id, n);
    return append_at(ds, docs, n, first_id, err);
}

static ds_record *find(const cairn_docstore *ds, uint64_t id)
{
    size_t lo = 0, hi = ds->n_recs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ds->recs[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < ds->n_recs && ds->recs[lo].id == id) ? &ds->recs[lo] : NULL;
}

int cairn_docstore_delete(cairn_docstore *ds, uint64_t id, cairn_error *err)
{
    if (!ds->writable)
        return cairn_errorf(err, CAIRN_ESTATE, "%s: opened read-only", ds->path);
    ds_record *r = find(ds, id);
    if (!r || (r->flags & DS_FLAG_DELETED))
        return cairn_errorf(err, CAIRN_ENOTFOUND, "document %llu: no such document",
                            (unsigned long long)id);
    r->flags |= DS_FLAG_DELETED;
    ds->n_live--;
    ds->dirty = true;
    return 0;
}

int cairn_docstore_commit(cairn_docstore *ds, cairn_error *err)
{
    if (!ds->writable)
        return cairn_errorf(err, CAIRN_ESTATE, "%s: opened read-only", ds->path);
    if (!ds->dirty)
        return 0;
    int rc = write_table_and_header(ds, ds->fd, ds->path, err);
    if (rc)
        return rc;
    ds->write_pos += ds->n_recs * DS_RECORD_SIZE;
    ds->committed_size = ds->write_pos;
    ds->dirty = false;
    return remap(ds, ds->write_pos, err);
}

int cairn_docstore_compact(cairn_docstore *ds, cairn_error *err)
{
    if (!ds->writable)
        return cairn_errorf(err, CAIRN_ESTATE, "%s: opened read-only", ds->path);
    size_t plen = strlen(ds->path);
    char *tmp = malloc(plen + 5);
    if (!tmp)
        return cairn_errorf(err, CAIRN_ENOMEM, "docstore: out of memory");
    memcpy(tmp, ds->path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int rc = cairn_errorf(err, CAIRN_EIO, "%s: create: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    /* Copy live blobs contiguously, rewriting their offsets in a new table. */
    ds_record *nr = malloc((ds->n_live ? ds->n_live : 1) * sizeof(*nr));
    int rc = nr ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "docstore: out of memory");
    uint64_t pos = DS_HEADER_SIZE;
    size_t k = 0;
    for (size_t i = 0; rc == 0 && i < ds->n_recs; i++) {
        const ds_record *r = &ds->recs[i];
        if (r->flags & DS_FLAG_DELETED)
            continue;
        nr[k] = *r;
        nr[k].off = pos;
        rc = pwrite_all(fd, ds->map + r->off, (size_t)blob_size(r), pos, tmp, err);
        pos += blob_size(r);
        k++;
    }
    if (rc == 0) {
        /* Swap in the new table to write it; restore on failure. */
        ds_record *old = ds->recs;
        size_t old_n = ds->n_recs, old_cap = ds->cap_recs;
        uint64_t old_pos = ds->write_pos;
        ds->recs = nr;
        ds->n_recs = k;
        ds->cap_recs = ds->n_live ? ds->n_live : 1;
        ds->write_pos = pos;
        rc = write_table_and_header(ds, fd, tmp, err);
        if (rc == 0 && rename(tmp, ds->path) != 0)
            rc = cairn_errorf(err, CAIRN_EIO, "rename %s: %s", tmp, strerror(errno));
        if (rc) {
            ds->recs = old;
            ds->n_recs = old_n;
            ds->cap_recs = old_cap;
            ds->write_pos = old_pos;
        } else {
            free(old);
            nr = NULL;
            close(ds->fd);
            ds->fd = fd;
            fd = -1;
            ds->write_pos = pos + k * DS_RECORD_SIZE;
            ds->committed_size = ds->write_pos;
            ds->dirty = false;
            rc = remap(ds, ds->write_pos, err);
        }
    }
    free(nr);
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

/* ---- Readers ----------------------------------------------------------------------------------- */

static void fill_doc(const cairn_docstore *ds, const ds_record *r, cairn_doc *out)
{
    const char *b = (const char *)ds->map + r->off;
    out->id = r->id;
    out->deleted = (r->flags & DS_FLAG_DELETED) != 0;
    out->key = b;
    out->key_len = r->key_len;
    b += r->key_len + 1;
    out->title = b;
    out->title_len = r->title_len;
    b += r->title_len + 1;
    out->text = b;
    out->text_len = r->text_len;
    b += r->text_len + 1;
    out->meta = b;
    out->meta_len = r->meta_len;
}

int cairn_docstore_get(const cairn_docstore *ds, uint64_t id, cairn_doc *out, cairn_error *err)
{
    const ds_record *r = find(ds, id);
    if (!r)
        return cairn_errorf(err, CAIRN_ENOTFOUND, "document %llu: no such document",
                            (unsigned long long)id);
    fill_doc(ds, r, out);
    return 0;
}

void cairn_docstore_at(const cairn_docstore *ds, size_t i, cairn_doc *out)
{
    fill_doc(ds, &ds->recs[i], out);
}

size_t cairn_docstore_records(const cairn_docstore *ds) { return ds->n_recs; }
size_t cairn_docstore_live(const cairn_docstore *ds) { return ds->n_live; }
uint64_t cairn_docstore_uid(const cairn_docstore *ds) { return ds->uid; }
uint64_t cairn_docstore_next_id(const cairn_docstore *ds) { return ds->next_id; }
size_t cairn_docstore_file_bytes(const cairn_docstore *ds) { return (size_t)ds->committed_size; }
