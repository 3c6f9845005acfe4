/* tests/unit/test_adapt_data.c — IDX parsing and Fashion-MNIST loading (adapt/data.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "adapt/data.h"

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* An IDX image file of n images h x w with pixel (i, j) = (i * 7 + j) % 256. */
static size_t make_images(uint8_t *buf, uint32_t n, uint32_t h, uint32_t w)
{
    buf[0] = buf[1] = 0;
    buf[2] = 0x08;
    buf[3] = 3;
    put_be32(buf + 4, n);
    put_be32(buf + 8, h);
    put_be32(buf + 12, w);
    for (uint32_t i = 0; i < n * h * w; i++)
        buf[16 + i] = (uint8_t)((i / (h * w)) * 7 + i % (h * w));
    return 16 + (size_t)n * h * w;
}

static size_t make_labels(uint8_t *buf, uint32_t n, uint8_t mod)
{
    buf[0] = buf[1] = 0;
    buf[2] = 0x08;
    buf[3] = 1;
    put_be32(buf + 4, n);
    for (uint32_t i = 0; i < n; i++)
        buf[8 + i] = (uint8_t)(i % mod);
    return 8 + n;
}

static void write_file(const char *path, const uint8_t *b, size_t n, int gz)
{
    if (gz) {
        gzFile f = gzopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(gzwrite(f, b, (unsigned)n), (int)n);
        gzclose(f);
    } else {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(b, 1, n, f), n);
        fclose(f);
    }
}

static void test_parse_rejects_bad_headers(void **state)
{
    (void)state;
    uint8_t buf[16 + 2 * 4 * 4];
    size_t n = make_images(buf, 2, 4, 4);
    const uint8_t *data;
    uint32_t dims[3];
    cairn_error err;
    assert_int_equal(cairn_idx_parse(buf, n, 3, &data, dims, &err), 0);
    assert_ptr_equal(data, buf + 16);
    assert_int_equal(dims[0], 2);
    assert_int_equal(dims[1], 4);

    /* one byte short, one too many */
    assert_int_equal(cairn_idx_parse(buf, n - 1, 3, &data, dims, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "data bytes"));
    uint8_t big[sizeof(buf) + 1];
    memcpy(big, buf, n);
    big[n] = 0;
    assert_int_equal(cairn_idx_parse(big, n + 1, 3, &data, dims, &err), CAIRN_EFORMAT);
    /* labels expected, images given */
    assert_int_equal(cairn_idx_parse(buf, n, 1, &data, dims, &err), CAIRN_EFORMAT);
    /* bad magic, bad type */
    buf[0] = 1;
    assert_int_equal(cairn_idx_parse(buf, n, 3, &data, dims, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "magic"));
    buf[0] = 0;
    buf[2] = 0x0D; /* float */
    assert_int_equal(cairn_idx_parse(buf, n, 3, &data, dims, &err), CAIRN_EFORMAT);
    buf[2] = 0x08;
    /* a zero dim; a truncated header */
    put_be32(buf + 8, 0);
    assert_int_equal(cairn_idx_parse(buf, 16, 3, &data, dims, &err), CAIRN_EFORMAT);
    assert_int_equal(cairn_idx_parse(buf, 10, 3, &data, dims, &err), CAIRN_EFORMAT);
    assert_int_equal(cairn_idx_parse(buf, 3, 3, &data, dims, &err), CAIRN_EFORMAT);
    /* huge dims claiming gigabytes */
    put_be32(buf + 4, 0xFFFFFFFFu);
    put_be32(buf + 8, 0xFFFFu);
    assert_int_equal(cairn_idx_parse(buf, n, 3, &data, dims, &err), CAIRN_EFORMAT);
}

static void test_load_pair_plain_and_gzip(void **state)
{
    (void)state;
    char dir[] = "/tmp/cairn_idx_XXXXXX";
    assert_non_null(mkdtemp(dir));
    uint8_t ib[16 + 5 * 3 * 2], lb[8 + 5];
    size_t in = make_images(ib, 5, 3, 2), ln = make_labels(lb, 5, 4);
    char ip[256], lp[256], lgz[256];
    snprintf(ip, sizeof(ip), "%s/img", dir);
    snprintf(lp, sizeof(lp), "%s/lab", dir);
    snprintf(lgz, sizeof(lgz), "%s/lab.gz", dir);
    write_file(ip, ib, in, 0);
    write_file(lgz, lb, ln, 1);
    write_file(lp, lb, ln, 0);

    for (int gz = 0; gz < 2; gz++) {
        cairn_dataset d;
        cairn_error err;
        assert_int_equal(cairn_idx_load_pair(&d, ip, gz ? lgz : lp, 4, &err), 0);
        assert_int_equal(d.n, 5);
        assert_int_equal(d.h, 3);
        assert_int_equal(d.w, 2);
        for (int i = 0; i < 5 * 6; i++)
            assert_float_equal(d.images[i], ib[16 + i] / 255.0f, 1e-7);
        for (int i = 0; i < 5; i++)
            assert_int_equal(d.labels[i], lb[8 + i]);
        cairn_dataset_free(&d);
    }
    /* a label >= n_classes */
    cairn_dataset d;
    cairn_error err;
    assert_int_equal(cairn_idx_load_pair(&d, ip, lp, 3, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "label 3"));
    assert_null(d.images);
    /* counts disagree */
    ln = make_labels(lb, 4, 4);
    write_file(lp, lb, ln, 0);
    assert_int_equal(cairn_idx_load_pair(&d, ip, lp, 4, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "5 images"));
    /* a corrupt gzip stream */
    uint8_t junk[40] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff};
    write_file(lgz, junk, sizeof(junk), 0);
    assert_int_not_equal(cairn_idx_load_pair(&d, ip, lgz, 4, &err), 0);
    /* missing files */
    char missing[256];
    snprintf(missing, sizeof(missing), "%s/nope", dir);
    assert_int_equal(cairn_idx_load_pair(&d, missing, lp, 4, &err), CAIRN_ENOTFOUND);
    assert_int_equal(cairn_fmnist_load(&d, dir, CAIRN_FMNIST_TEST, &err), CAIRN_ENOTFOUND);
    assert_non_null(strstr(err.msg, "t10k-images"));
    unlink(ip);
    unlink(lp);
    unlink(lgz);
    rmdir(dir);
}

static int have_fmnist(void)
{
    struct stat st;
    return stat(CAIRN_FMNIST_DIR "/t10k-images-idx3-ubyte.gz", &st) == 0 ||
           stat(CAIRN_FMNIST_DIR "/t10k-images-idx3-ubyte", &st) == 0;
}

static void test_real_fashion_mnist(void **state)
{
    (void)state;
    if (!have_fmnist())
        fail_msg("no Fashion-MNIST in " CAIRN_FMNIST_DIR ": scripts/setup installs it");
    cairn_dataset tr, te, sub;
    cairn_error err;
    assert_int_equal(cairn_fmnist_load(&te, NULL, CAIRN_FMNIST_TEST, &err), 0);
    assert_int_equal(cairn_fmnist_load(&tr, NULL, CAIRN_FMNIST_TRAIN, &err), 0);
    /* Fashion-MNIST's published sizes: 60,000 train and 10,000 test images, 10 balanced
     * classes (6,000 and 1,000 each). */
    assert_int_equal(tr.n, 60000);
    assert_int_equal(te.n, 10000);
    assert_int_equal(te.c, 1);
    assert_int_equal(te.h, 28);
    assert_int_equal(te.w, 28);
    int count[10] = {0};
    for (int i = 0; i < te.n; i++)
        count[te.labels[i]]++;
    for (int k = 0; k < 10; k++)
        assert_int_equal(count[k], 1000);
    float lo = 1, hi = 0;
    for (size_t i = 0; i < (size_t)te.n * 784; i++) {
        lo = te.images[i] < lo ? te.images[i] : lo;
        hi = te.images[i] > hi ? te.images[i] : hi;
    }
    assert_true(lo == 0.0f && hi == 1.0f);

    assert_int_equal(cairn_dataset_subset(&sub, &te, 2000, &err), 0);
    assert_int_equal(sub.n, 2000);
    assert_int_equal(sub.labels[1], te.labels[5]);
    assert_memory_equal(sub.images + 784, te.images + 5 * 784, 784 * sizeof(float));
    cairn_dataset_free(&sub);
    assert_int_equal(cairn_dataset_subset(&sub, &te, 0, &err), CAIRN_EINVAL);
    cairn_dataset_free(&tr);
    cairn_dataset_free(&te);
}

/* A stream written with cairn_idx_write_pair reads back exactly through cairn_stream_load;
 * malformed stream files get errors that name the file and the fault. */
static void test_stream_round_trip_and_errors(void **state)
{
    (void)state;
    char dir[] = "/tmp/cairn_stream_XXXXXX";
    assert_non_null(mkdtemp(dir));
    enum { N = 37 };
    cairn_dataset d = {.n = N, .c = 1, .h = 28, .w = 28, .n_classes = 10};
    d.images = malloc(sizeof(float) * N * 784);
    d.labels = malloc(sizeof(int) * N);
    /* byte-valued pixels as the loader represents byte k: k * (1 / 255) */
    for (int i = 0; i < N * 784; i++)
        d.images[i] = (float)((i * 31 + i / 784) % 256) * (1.0f / 255.0f);
    for (int i = 0; i < N; i++)
        d.labels[i] = (i * 7) % 10;
    char ip[256], lp[256];
    snprintf(ip, sizeof ip, "%s/" CAIRN_STREAM_IMAGES, dir);
    snprintf(lp, sizeof lp, "%s/" CAIRN_STREAM_LABELS, dir);
    cairn_error err = {0};
    assert_int_equal(cairn_idx_write_pair(&d, ip, lp, &err), 0);
    cairn_dataset back;
    assert_int_equal(cairn_stream_load(&back, dir, &err), 0);
    assert_int_equal(back.n, N);
    assert_int_equal(back.h, 28);
    assert_int_equal(back.w, 28);
    assert_memory_equal(back.images, d.images, sizeof(float) * N * 784); /* bit for bit */
    assert_memory_equal(back.labels, d.labels, sizeof(int) * N);
    /* the head keeps the stream's order */
    cairn_dataset head;
    assert_int_equal(cairn_dataset_head(&head, &back, 5, &err), 0);
    assert_int_equal(head.n, 5);
    assert_memory_equal(head.labels, d.labels, sizeof(int) * 5);
    assert_memory_equal(head.images, d.images, sizeof(float) * 5 * 784);
    cairn_dataset_free(&head);
    cairn_dataset_free(&back);

    /* a pixel outside [0, 1] cannot be written */
    d.images[100] = 1.5f;
    assert_int_equal(cairn_idx_write_pair(&d, ip, lp, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "outside [0, 1]"));
    d.images[100] = 0.0f;

    /* wrong magic */
    uint8_t buf[16 + N * 784];
    FILE *f = fopen(ip, "rb");
    assert_non_null(f);
    assert_int_equal(fread(buf, 1, sizeof buf, f), sizeof buf);
    fclose(f);
    uint8_t bad[sizeof buf];
    memcpy(bad, buf, sizeof buf);
    bad[0] = 0x1f, bad[1] = 0x00;
    write_file(ip, bad, sizeof bad, 0);
    assert_int_equal(cairn_stream_load(&back, dir, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "bad magic"));
    assert_non_null(strstr(err.msg, CAIRN_STREAM_IMAGES));
    /* truncated */
    write_file(ip, buf, sizeof buf - 100, 0);
    assert_int_equal(cairn_stream_load(&back, dir, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "data bytes"));
    /* label count mismatch */
    write_file(ip, buf, sizeof buf, 0);
    uint8_t lb[8 + N];
    size_t ln = make_labels(lb, N - 1, 10);
    write_file(lp, lb, ln, 0);
    assert_int_equal(cairn_stream_load(&back, dir, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "37 images"));
    assert_non_null(strstr(err.msg, "36 labels"));
    /* a label the models do not know */
    ln = make_labels(lb, N, 12);
    write_file(lp, lb, ln, 0);
    assert_int_equal(cairn_stream_load(&back, dir, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "label 10"));
    /* images of another size */
    uint8_t small[16 + 4 * 9];
    write_file(ip, small, make_images(small, 4, 3, 3), 0);
    ln = make_labels(lb, 4, 10);
    write_file(lp, lb, ln, 0);
    assert_int_equal(cairn_stream_load(&back, dir, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "3 x 3"));
    /* no files */
    unlink(ip);
    assert_int_equal(cairn_stream_load(&back, dir, &err), CAIRN_ENOTFOUND);
    assert_non_null(strstr(err.msg, CAIRN_STREAM_IMAGES));
    unlink(lp);
    rmdir(dir);
    cairn_dataset_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_rejects_bad_headers),
        cmocka_unit_test(test_load_pair_plain_and_gzip),
        cmocka_unit_test(test_real_fashion_mnist),
        cmocka_unit_test(test_stream_round_trip_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
