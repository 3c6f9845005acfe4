/* adapt/data.c — IDX (MNIST-format) reading for Fashion-MNIST, plain or gzip-compressed. */
#include "adapt/data.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define IDX_MAX_FILE_BYTES ((size_t)1 << 30) /* 1 GiB decompressed: far above Fashion-MNIST */

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

int cairn_idx_parse(const uint8_t *buf, size_t len, int expect_ndim, const uint8_t **data,
                    uint32_t dims[3], cairn_error *err)
{
    if (expect_ndim != 1 && expect_ndim != 3)
        return cairn_errorf(err, CAIRN_EINVAL, "idx: expected ndim must be 1 or 3, not %d",
                            expect_ndim);
    if (len < 4)
        return cairn_errorf(err, CAIRN_EFORMAT, "idx: %zu bytes, shorter than the magic", len);
    if (buf[0] != 0 || buf[1] != 0)
        return cairn_errorf(err, CAIRN_EFORMAT, "idx: bad magic %02x%02x%02x%02x", buf[0], buf[1],
                            buf[2], buf[3]);
    if (buf[2] != 0x08)
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "idx: element type 0x%02x, expected 0x08 (unsigned byte)", buf[2]);
    if (buf[3] != expect_ndim)
        return cairn_errorf(err, CAIRN_EFORMAT, "idx: %d dimensions, expected %d", buf[3],
                            expect_ndim);
    size_t header = 4 + 4 * (size_t)expect_ndim;
    if (len < header)
        return cairn_errorf(err, CAIRN_EFORMAT, "idx: %zu bytes, header needs %zu", len, header);
    uint64_t total = 1;
    for (int i = 0; i < expect_ndim; i++) {
        dims[i] = be32(buf + 4 + 4 * i);
        if (dims[i] == 0) return cairn_errorf(err, CAIRN_EFORMAT, "idx: dimension %d is 0", i);
        total *= dims[i];
        if (total > IDX_MAX_FILE_BYTES)
            return cairn_errorf(err, CAIRN_EFORMAT, "idx: dims imply more than %zu bytes",
                                IDX_MAX_FILE_BYTES);
    }
    if (total != len - header)
        return cairn_errorf(err, CAIRN_EFORMAT, "idx: dims imply %llu data bytes, file holds %zu",
                            (unsigned long long)total, len - header);
    *data = buf + header;
    return 0;
}

/* Reads a whole file, gunzipping it when it starts with the gzip magic (gzread passes plain
 * files through unchanged, so one path serves both). */
static int read_maybe_gz(const char *path, uint8_t **out, size_t *out_len, cairn_error *err)
{
    *out = NULL;
    *out_len = 0;
    struct stat st;
    if (stat(path, &st) != 0)
        return cairn_errorf(err, errno == ENOENT ? CAIRN_ENOTFOUND : CAIRN_EIO, "%s: %s", path,
                            strerror(errno));
    gzFile f = gzopen(path, "rb");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "%s: cannot open", path);
    size_t cap = (size_t)st.st_size * 4 + 4096, len = 0;
    if (cap > IDX_MAX_FILE_BYTES) cap = IDX_MAX_FILE_BYTES;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        gzclose(f);
        return cairn_errorf(err, CAIRN_ENOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (len == cap) {
            if (cap >= IDX_MAX_FILE_BYTES) {
                free(buf);
                gzclose(f);
                return cairn_errorf(err, CAIRN_ELIMIT, "%s: more than %zu bytes decompressed", path,
                                    IDX_MAX_FILE_BYTES);
            }
            size_t ncap = cap * 2 > IDX_MAX_FILE_BYTES ? IDX_MAX_FILE_BYTES : cap * 2;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                gzclose(f);
                return cairn_errorf(err, CAIRN_ENOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap = ncap;
        }
        size_t want = cap - len > (1u << 30) ? (1u << 30) : cap - len;
        int r = gzread(f, buf + len, (unsigned)want);
        if (r < 0) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            cairn_errorf(err, CAIRN_EFORMAT, "%s: decompression failed: %s", path, msg);
            free(buf);
            gzclose(f);
            return CAIRN_EFORMAT;
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    gzclose(f);
    *out = buf;
    *out_len = len;
    return 0;
}

void cairn_dataset_free(cairn_dataset *d)
{
    if (!d) return;
    free(d->images);
    free(d->labels);
    memset(d, 0, sizeof(*d));
}

int cairn_idx_load_pair(cairn_dataset *out, const char *images_path, const char *labels_path,
                        int n_classes, cairn_error *err)
{
    memset(out, 0, sizeof(*out));
    if (n_classes < 1 || n_classes > 256)
        return cairn_errorf(err, CAIRN_EINVAL, "idx: n_classes %d outside 1..256", n_classes);
    uint8_t *ib = NULL, *lb = NULL;
    size_t il = 0, ll = 0;
    int rc = read_maybe_gz(images_path, &ib, &il, err);
    if (rc) return rc;
    rc = read_maybe_gz(labels_path, &lb, &ll, err);
    if (rc) {
        free(ib);
        return rc;
    }
    const uint8_t *ipx, *lpx;
    uint32_t idims[3], ldims[3];
    if ((rc = cairn_idx_parse(ib, il, 3, &ipx, idims, err)) != 0) {
        cairn_error_prefix(err, "%s", images_path);
        goto done;
    }
    if ((rc = cairn_idx_parse(lb, ll, 1, &lpx, ldims, err)) != 0) {
        cairn_error_prefix(err, "%s", labels_path);
        goto done;
    }
    if (idims[0] != ldims[0]) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s holds %u images but %s holds %u labels",
                          images_path, idims[0], labels_path, ldims[0]);
        goto done;
    }
    if (idims[0] > CAIRN_DATA_MAX_IMAGES || idims[1] > 4096 || idims[2] > 4096) {
        rc = cairn_errorf(err, CAIRN_ELIMIT, "%s: %u x %u x %u over the loader's limits",
                          images_path, idims[0], idims[1], idims[2]);
        goto done;
    }
    size_t n = idims[0], px = (size_t)idims[1] * idims[2];
    out->images = malloc(n * px * sizeof(float));
    out->labels = malloc(n * sizeof(int));
    if (!out->images || !out->labels) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "idx: out of memory for %zu images", n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (lpx[i] >= n_classes) {
            rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: label %u at index %zu outside 0..%d",
                              labels_path, lpx[i], i, n_classes - 1);
            goto done;
        }
        out->labels[i] = lpx[i];
    }
    for (size_t i = 0; i < n * px; i++)
        out->images[i] = (float)ipx[i] * (1.0f / 255.0f);
    out->n = (int)n;
    out->c = 1;
    out->h = (int)idims[1];
    out->w = (int)idims[2];
    out->n_classes = n_classes;
done:
    free(ib);
    free(lb);
    if (rc) cairn_dataset_free(out);
    return rc;
}

/* Picks "<dir>/<name>" or "<dir>/<name>.gz", whichever exists; hint ends the error. */
static int find_file(char *buf, size_t cap, const char *dir, const char *name, const char *hint,
                     cairn_error *err)
{
    struct stat st;
    snprintf(buf, cap, "%s/%s", dir, name);
    if (stat(buf, &st) == 0) return 0;
    snprintf(buf, cap, "%s/%s.gz", dir, name);
    if (stat(buf, &st) == 0) return 0;
    return cairn_errorf(err, CAIRN_ENOTFOUND, "%s/%s[.gz] not found (%s)", dir, name, hint);
}

#define FMNIST_HINT "is the Debian package dataset-fashion-mnist installed?"

int cairn_fmnist_load(cairn_dataset *out, const char *dir, cairn_fmnist_split split,
                      cairn_error *err)
{
    memset(out, 0, sizeof(*out));
    if (!dir) dir = CAIRN_FMNIST_DIR;
    const char *prefix = split == CAIRN_FMNIST_TRAIN ? "train" : "t10k";
    char name[64], ip[4096], lp[4096];
    snprintf(name, sizeof(name), "%s-images-idx3-ubyte", prefix);
    int rc = find_file(ip, sizeof(ip), dir, name, FMNIST_HINT, err);
    if (rc) return rc;
    snprintf(name, sizeof(name), "%s-labels-idx1-ubyte", prefix);
    if ((rc = find_file(lp, sizeof(lp), dir, name, FMNIST_HINT, err)) != 0) return rc;
    rc = cairn_idx_load_pair(out, ip, lp, CAIRN_FMNIST_CLASSES, err);
    if (rc) return rc;
    if (out->h != CAIRN_FMNIST_SIDE || out->w != CAIRN_FMNIST_SIDE) {
        int h = out->h, w = out->w;
        cairn_dataset_free(out);
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: images are %d x %d, Fashion-MNIST is 28 x 28",
                            ip, h, w);
    }
    return 0;
}

/* n images of src (all when n >= src->n) into out: at the evenly spaced indices i * src->n / n
 * (spread), or the first n in order. what names the operation in errors. */
static int pick(cairn_dataset *out, const cairn_dataset *src, int n, bool spread,
                const char *what, cairn_error *err)
{
    memset(out, 0, sizeof(*out));
    if (n <= 0) return cairn_errorf(err, CAIRN_EINVAL, "%s of %d images", what, n);
    if (n > src->n) n = src->n;
    size_t px = (size_t)src->c * src->h * src->w;
    out->images = malloc((size_t)n * px * sizeof(float));
    out->labels = malloc((size_t)n * sizeof(int));
    if (!out->images || !out->labels) {
        cairn_dataset_free(out);
        return cairn_errorf(err, CAIRN_ENOMEM, "%s of %d images: out of memory", what, n);
    }
    for (int i = 0; i < n; i++) {
        size_t j = spread ? (size_t)i * (size_t)src->n / (size_t)n : (size_t)i;
        memcpy(out->images + (size_t)i * px, src->images + j * px, px * sizeof(float));
        out->labels[i] = src->labels[j];
    }
    out->n = n;
    out->c = src->c;
    out->h = src->h;
    out->w = src->w;
    out->n_classes = src->n_classes;
    return 0;
}

int cairn_dataset_subset(cairn_dataset *out, const cairn_dataset *src, int n, cairn_error *err)
{
    return pick(out, src, n, true, "subset", err);
}

int cairn_dataset_head(cairn_dataset *out, const cairn_dataset *src, int n, cairn_error *err)
{
    return pick(out, src, n, false, "head", err);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Writes header then body to path through path.tmp and a rename. */
static int write_whole(const char *path, const uint8_t *header, size_t hlen, const uint8_t *body,
                       size_t blen, cairn_error *err)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return cairn_errorf(err, CAIRN_EINVAL, "idx: path too long: %s", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "%s: %s", tmp, strerror(errno));
    int ok = fwrite(header, 1, hlen, f) == hlen && fwrite(body, 1, blen, f) == blen;
    int saved = errno;
    if (fclose(f) != 0 && ok) ok = 0, saved = errno;
    if (!ok) {
        unlink(tmp);
        return cairn_errorf(err, CAIRN_EIO, "%s: %s", tmp, strerror(saved));
    }
    if (rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(saved));
    }
    return 0;
}

int cairn_idx_write_pair(const cairn_dataset *d, const char *images_path,
                         const char *labels_path, cairn_error *err)
{
    if (d->n <= 0 || d->c != 1 || d->h <= 0 || d->w <= 0)
        return cairn_errorf(err, CAIRN_EINVAL, "idx: cannot write %d images of %d x %d x %d",
                            d->n, d->c, d->h, d->w);
    size_t px = (size_t)d->h * d->w, n = (size_t)d->n;
    uint8_t *img = malloc(n * px), *lab = malloc(n);
    if (!img || !lab) {
        free(img);
        free(lab);
        return cairn_errorf(err, CAIRN_ENOMEM, "idx: out of memory for %zu images", n);
    }
    int rc = 0;
    for (size_t i = 0; !rc && i < n * px; i++) {
        float v = d->images[i];
        if (!(v >= 0.0f && v <= 1.0f))
            rc = cairn_errorf(err, CAIRN_EINVAL, "idx: pixel %zu of image %zu is %g, outside "
                              "[0, 1]", i % px, i / px, (double)v);
        else
            img[i] = (uint8_t)(v * 255.0f + 0.5f);
    }
    for (size_t i = 0; !rc && i < n; i++) {
        if (d->labels[i] < 0 || d->labels[i] > 255)
            rc = cairn_errorf(err, CAIRN_EINVAL, "idx: label %d at index %zu is not a byte",
                              d->labels[i], i);
        else
            lab[i] = (uint8_t)d->labels[i];
    }
    uint8_t ih[16] = {0, 0, 0x08, 3}, lh[8] = {0, 0, 0x08, 1};
    put_be32(ih + 4, (uint32_t)n);
    put_be32(ih + 8, (uint32_t)d->h);
    put_be32(ih + 12, (uint32_t)d->w);
    put_be32(lh + 4, (uint32_t)n);
    if (!rc) rc = write_whole(images_path, ih, sizeof ih, img, n * px, err);
    if (!rc) rc = write_whole(labels_path, lh, sizeof lh, lab, n, err);
    free(img);
    free(lab);
    return rc;
}

int cairn_stream_load(cairn_dataset *out, const char *dir, cairn_error *err)
{
    memset(out, 0, sizeof(*out));
    const char *hint = "a stream directory holds " CAIRN_STREAM_IMAGES " and "
                       CAIRN_STREAM_LABELS ", IDX files as Fashion-MNIST's";
    char ip[4096], lp[4096];
    int rc = find_file(ip, sizeof(ip), dir, CAIRN_STREAM_IMAGES, hint, err);
    if (!rc) rc = find_file(lp, sizeof(lp), dir, CAIRN_STREAM_LABELS, hint, err);
    if (!rc) rc = cairn_idx_load_pair(out, ip, lp, CAIRN_FMNIST_CLASSES, err);
    if (rc) return rc;
    if (out->h != CAIRN_FMNIST_SIDE || out->w != CAIRN_FMNIST_SIDE) {
        int h = out->h, w = out->w;
        cairn_dataset_free(out);
        return cairn_errorf(err, CAIRN_EFORMAT, "%s: images are %d x %d; the models take 28 x "
                            "28", ip, h, w);
    }
    return 0;
}
