/* tests/unit/test_corrupt.c — the Fashion-MNIST-C corruptions (adapt/corrupt.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapt/corrupt.h"
#include "adapt/data.h"

#define N_IMG 100
#define PX    784

/* N_IMG real test images (evenly spaced over the test set). */
static int setup(void **state)
{
    struct stat st;
    if (stat(CAIRN_FMNIST_DIR "/t10k-images-idx3-ubyte.gz", &st) != 0 &&
        stat(CAIRN_FMNIST_DIR "/t10k-images-idx3-ubyte", &st) != 0) {
        *state = NULL;
        return 0;
    }
    cairn_dataset te;
    cairn_dataset *sub = calloc(1, sizeof(*sub));
    if (cairn_fmnist_load(&te, NULL, CAIRN_FMNIST_TEST, NULL) ||
        cairn_dataset_subset(sub, &te, N_IMG, NULL))
        return -1;
    cairn_dataset_free(&te);
    *state = sub;
    return 0;
}

static int teardown(void **state)
{
    cairn_dataset_free(*state);
    free(*state);
    return 0;
}

static const cairn_dataset *images(void **state)
{
    if (!*state) fail_msg("no Fashion-MNIST: scripts/setup installs dataset-fashion-mnist");
    return *state;
}

static double mean_of(const float *x)
{
    double s = 0;
    for (int i = 0; i < PX; i++)
        s += x[i];
    return s / PX;
}

static double std_of(const float *x)
{
    double m = mean_of(x), s = 0;
    for (int i = 0; i < PX; i++)
        s += (x[i] - m) * (x[i] - m);
    return sqrt(s / PX);
}

static double l2(const float *a, const float *b)
{
    double s = 0;
    for (int i = 0; i < PX; i++)
        s += (double)(a[i] - b[i]) * (a[i] - b[i]);
    return sqrt(s);
}

/* Anisotropic total variation: sum of absolute differences between neighbours. */
static double tv(const float *x)
{
    double s = 0;
    for (int y = 0; y < 28; y++)
        for (int i = 0; i < 28; i++) {
            if (i + 1 < 28) s += fabsf(x[y * 28 + i + 1] - x[y * 28 + i]);
            if (y + 1 < 28) s += fabsf(x[(y + 1) * 28 + i] - x[y * 28 + i]);
        }
    return s;
}

static void test_names(void **state)
{
    (void)state;
    for (int c = 0; c < CAIRN_CORRUPT_COUNT; c++) {
        cairn_corruption back;
        const char *name = cairn_corruption_name((cairn_corruption)c);
        assert_non_null(name);
        assert_int_equal(cairn_corruption_parse(name, &back, NULL), 0);
        assert_int_equal((int)back, c);
    }
    cairn_corruption back;
    assert_int_equal(cairn_corruption_parse("snow", &back, NULL), CAIRN_EINVAL);
    assert_null(cairn_corruption_name(CAIRN_CORRUPT_COUNT));
}

static void test_bad_arguments(void **state)
{
    (void)state;
    float x[PX] = {0}, y[PX];
    cairn_error err;
    assert_int_equal(cairn_corrupt_image(CAIRN_CORRUPT_FOG, 0, x, y, 28, 28, 1, &err),
                     CAIRN_ERANGE);
    assert_int_equal(cairn_corrupt_image(CAIRN_CORRUPT_FOG, 6, x, y, 28, 28, 1, &err),
                     CAIRN_ERANGE);
    assert_int_equal(cairn_corrupt_image(CAIRN_CORRUPT_COUNT, 1, x, y, 28, 28, 1, &err),
                     CAIRN_EINVAL);
    assert_int_equal(cairn_corrupt_image(CAIRN_CORRUPT_FOG, 1, x, y, 0, 28, 1, &err), CAIRN_EINVAL);
}

/* Outputs in [0, 1]; the same seed gives the same image; in-place equals out-of-place; the
 * random corruptions change with the seed. */
static void test_range_and_determinism(void **state)
{
    const cairn_dataset *d = images(state);
    float *a = malloc(PX * sizeof(float)), *b = malloc(PX * sizeof(float));
    for (int c = 0; c < CAIRN_CORRUPT_COUNT; c++) {
        for (int s = 1; s <= 5; s++) {
            for (int i = 0; i < 10; i++) {
                const float *src = d->images + (size_t)i * PX;
                assert_int_equal(cairn_corrupt_image(c, s, src, a, 28, 28, 42 + i, NULL), 0);
                for (int p = 0; p < PX; p++)
                    assert_true(a[p] >= 0.0f && a[p] <= 1.0f);
                memcpy(b, src, PX * sizeof(float));
                assert_int_equal(cairn_corrupt_image(c, s, b, b, 28, 28, 42 + i, NULL), 0);
                assert_memory_equal(a, b, PX * sizeof(float));
            }
        }
    }
    const cairn_corruption random_ones[] = {CAIRN_CORRUPT_GAUSSIAN_NOISE, CAIRN_CORRUPT_SHOT_NOISE,
                                            CAIRN_CORRUPT_IMPULSE_NOISE,  CAIRN_CORRUPT_MOTION_BLUR,
                                            CAIRN_CORRUPT_ELASTIC,        CAIRN_CORRUPT_FOG};
    for (size_t k = 0; k < sizeof(random_ones) / sizeof(random_ones[0]); k++) {
        int differs = 0;
        for (int i = 0; i < 5 && !differs; i++) {
            const float *src = d->images + (size_t)i * PX;
            cairn_corrupt_image(random_ones[k], 5, src, a, 28, 28, 1, NULL);
            cairn_corrupt_image(random_ones[k], 5, src, b, 28, 28, 2, NULL);
            differs = memcmp(a, b, PX * sizeof(float)) != 0;
        }
        assert_true(differs);
    }
    free(a);
    free(b);
}

/* Mean L2 distance to the clean image over N_IMG images grows strictly with severity. */
static void test_severity_monotone(void **state)
{
    const cairn_dataset *d = images(state);
    float *out = malloc(PX * sizeof(float));
    for (int c = 0; c < CAIRN_CORRUPT_COUNT; c++) {
        double prev = 0;
        for (int s = 1; s <= 5; s++) {
            double dist = 0;
            for (int i = 0; i < N_IMG; i++) {
                const float *src = d->images + (size_t)i * PX;
                assert_int_equal(cairn_corrupt_image(c, s, src, out, 28, 28, 7 + i, NULL), 0);
                dist += l2(src, out);
            }
            dist /= N_IMG;
            printf("%-18s severity %d: mean L2 distance %.3f\n", cairn_corruption_name(c), s, dist);
            if (dist <= prev) {
                free(out);
                fail_msg("%s: mean distance %.4f at severity %d <= %.4f at %d",
                         cairn_corruption_name(c), dist, s, prev, s - 1);
            }
            prev = dist;
        }
    }
    free(out);
}

static void test_defining_properties(void **state)
{
    const cairn_dataset *d = images(state);
    float *o = malloc(PX * sizeof(float));
    for (int s = 1; s <= 5; s++) {
        for (int i = 0; i < N_IMG; i++) {
            const float *x = d->images + (size_t)i * PX;
            /* brightness raises the mean */
            cairn_corrupt_image(CAIRN_CORRUPT_BRIGHTNESS, s, x, o, 28, 28, i, NULL);
            assert_true(mean_of(o) > mean_of(x));
            /* contrast keeps the mean (no clipping happens) and shrinks the deviation */
            cairn_corrupt_image(CAIRN_CORRUPT_CONTRAST, s, x, o, 28, 28, i, NULL);
            assert_float_equal(mean_of(o), mean_of(x), 1e-4);
            assert_true(std_of(o) < 0.5 * std_of(x));
            /* impulse: every changed pixel is 0 or 1, and some change */
            cairn_corrupt_image(CAIRN_CORRUPT_IMPULSE_NOISE, s, x, o, 28, 28, i, NULL);
            for (int p = 0; p < PX; p++)
                if (o[p] != x[p]) assert_true(o[p] == 0.0f || o[p] == 1.0f);
            /* blurs lower total variation */
            cairn_corrupt_image(CAIRN_CORRUPT_DEFOCUS_BLUR, s, x, o, 28, 28, i, NULL);
            assert_true(tv(o) < tv(x));
            cairn_corrupt_image(CAIRN_CORRUPT_MOTION_BLUR, s, x, o, 28, 28, i, NULL);
            assert_true(tv(o) < tv(x));
            /* fog lifts the dark background and never exceeds the clean maximum */
            cairn_corrupt_image(CAIRN_CORRUPT_FOG, s, x, o, 28, 28, i, NULL);
            double bg_clean = 0, bg_fog = 0, mx = 0, mo = 0;
            for (int p = 0; p < PX; p++) {
                if (x[p] == 0.0f) {
                    bg_clean += x[p];
                    bg_fog += o[p];
                }
                mx = x[p] > mx ? x[p] : mx;
                mo = o[p] > mo ? o[p] : mo;
            }
            assert_true(bg_fog > bg_clean);
            assert_true(mo <= mx + 1e-6);
        }
        /* pixelate: constant over b x b blocks, b = 2..6 by severity; block means kept */
        int b = s + 1;
        for (int i = 0; i < 10; i++) {
            const float *x = d->images + (size_t)i * PX;
            cairn_corrupt_image(CAIRN_CORRUPT_PIXELATE, s, x, o, 28, 28, i, NULL);
            for (int y = 0; y < 28; y++)
                for (int xx = 0; xx < 28; xx++)
                    assert_true(o[y * 28 + xx] == o[(y / b * b) * 28 + xx / b * b]);
            double sx = 0, so = 0;
            for (int y = 0; y < b; y++)
                for (int xx = 0; xx < b; xx++) {
                    sx += x[(10 / b * b + y) * 28 + 10 / b * b + xx];
                    so += o[(10 / b * b + y) * 28 + 10 / b * b + xx];
                }
            assert_float_equal(so, sx, 1e-4);
        }
    }
    /* impulse at severity 5 touches about 27% of the pixels (about 13.5% set to each extreme
     * where the pixel was not already there); count over all images */
    long changed = 0;
    for (int i = 0; i < N_IMG; i++) {
        const float *x = d->images + (size_t)i * PX;
        cairn_corrupt_image(CAIRN_CORRUPT_IMPULSE_NOISE, 5, x, o, 28, 28, i, NULL);
        for (int p = 0; p < PX; p++)
            changed += o[p] != x[p];
    }
    double frac = (double)changed / (N_IMG * PX);
    assert_true(frac > 0.10 && frac < 0.30);
    /* gaussian noise is zero-mean on mid-grey: residuals average ~0 where no clipping occurs */
    float grey[PX], g[PX];
    for (int p = 0; p < PX; p++)
        grey[p] = 0.5f;
    cairn_corrupt_image(CAIRN_CORRUPT_GAUSSIAN_NOISE, 1, grey, g, 28, 28, 3, NULL);
    assert_float_equal(mean_of(g), 0.5, 0.02);
    assert_float_equal(std_of(g), 0.08, 0.015);
    free(o);
}

static void test_dataset(void **state)
{
    const cairn_dataset *d = images(state);
    cairn_dataset c1, c2;
    assert_int_equal(cairn_corrupt_dataset(&c1, d, CAIRN_CORRUPT_SHOT_NOISE, 3, 9, NULL), 0);
    assert_int_equal(cairn_corrupt_dataset(&c2, d, CAIRN_CORRUPT_SHOT_NOISE, 3, 9, NULL), 0);
    assert_int_equal(c1.n, d->n);
    assert_memory_equal(c1.labels, d->labels, d->n * sizeof(int));
    assert_memory_equal(c1.images, c2.images, (size_t)d->n * PX * sizeof(float));
    assert_true(memcmp(c1.images, d->images, PX * sizeof(float)) != 0);
    cairn_dataset_free(&c1);
    cairn_dataset_free(&c2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_range_and_determinism),
        cmocka_unit_test(test_severity_monotone),
        cmocka_unit_test(test_defining_properties),
        cmocka_unit_test(test_dataset),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
