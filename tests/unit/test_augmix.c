/*
 * tests/unit/test_augmix.c — AugMix's operations and mix (adapt/augmix.h). Each operation is
 * checked on a known image against what its definition gives, computed here (a rotation by 90
 * degrees is an index permutation, posterize a bit mask, ...), and the mix for determinism.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapt/augmix.h"
#include "common/rand.h"

enum { H = 28, W = 28, N = H * W };

/* A non-symmetric image: random bytes (no rotation or flip maps it onto itself). */
static void random_image(uint8_t *img, uint64_t seed)
{
    for (int i = 0; i < N; i++)
        img[i] = (uint8_t)(cairn_rand_next(&seed) >> 56);
}

static void test_rotate(void **state)
{
    (void)state;
    uint8_t src[N], dst[N], back[N];
    random_image(src, 1);
    /* counter-clockwise by 90 degrees: the output's row y is the input's column W-1-y */
    cairn_augmix_rotate(src, dst, H, W, 90);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            assert_int_equal(dst[y * W + x], src[x * W + (W - 1 - y)]);
    /* and -90 undoes it; 0 is the identity */
    cairn_augmix_rotate(dst, back, H, W, -90);
    assert_memory_equal(back, src, N);
    cairn_augmix_rotate(src, dst, H, W, 0);
    assert_memory_equal(dst, src, N);
    /* 180 = reversed pixel order */
    cairn_augmix_rotate(src, dst, H, W, 180);
    for (int i = 0; i < N; i++)
        assert_int_equal(dst[i], src[N - 1 - i]);
}

static void test_translate_shear(void **state)
{
    (void)state;
    uint8_t src[N], dst[N];
    random_image(src, 2);
    /* the output at x reads the input at x + 3; beyond the edge it is 0 */
    cairn_augmix_translate(src, dst, H, W, 3, 0);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            assert_int_equal(dst[y * W + x], x + 3 < W ? src[y * W + x + 3] : 0);
    cairn_augmix_translate(src, dst, H, W, -2, 1);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            assert_int_equal(dst[y * W + x], y - 2 >= 0 ? src[(y - 2) * W + x] : 0);
    /* shear_x by 2: row y reads x + 2 (y + 0.5) = x + 2y + 1 (pixel centres at +0.5) */
    cairn_augmix_shear(src, dst, H, W, 2.0, 0);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int xs = x + 2 * y + 1;
            assert_int_equal(dst[y * W + x], xs < W ? src[y * W + xs] : 0);
        }
    cairn_augmix_shear(src, dst, H, W, 0.0, 1);
    assert_memory_equal(dst, src, N);
    /* half a pixel: the mean of two neighbours, rounded */
    cairn_augmix_translate(src, dst, H, W, 0.5, 0);
    for (int y = 0; y < H; y++)
        for (int x = 0; x + 1 < W; x++)
            assert_int_equal(dst[y * W + x],
                             (int)floor((src[y * W + x] + src[y * W + x + 1]) / 2.0 + 0.5));
}

static void test_posterize_solarize(void **state)
{
    (void)state;
    uint8_t src[256], dst[256];
    for (int i = 0; i < 256; i++)
        src[i] = (uint8_t)i;
    for (int bits = 1; bits <= 8; bits++) {
        cairn_augmix_posterize(src, dst, 256, bits);
        int levels = 0;
        for (int i = 0; i < 256; i++) {
            /* the top `bits` bits survive: a multiple of 2^(8-bits), at most 2^(8-bits)-1 lower */
            int q = 1 << (8 - bits);
            assert_int_equal(dst[i] % q, 0);
            assert_true(dst[i] <= i && i - dst[i] < q);
            levels += i == 0 || dst[i] != dst[i - 1];
        }
        assert_int_equal(levels, 1 << bits);
    }
    cairn_augmix_solarize(src, dst, 256, 128);
    for (int i = 0; i < 256; i++)
        assert_int_equal(dst[i], i < 128 ? i : 255 - i);
    cairn_augmix_solarize(src, dst, 256, 256);
    assert_memory_equal(dst, src, 256);
}

static void test_equalize_autocontrast(void **state)
{
    (void)state;
    uint8_t src[N], dst[N];
    /* two levels, half each: equalize spreads them to black and white */
    for (int i = 0; i < N; i++)
        src[i] = i % 2 ? 100 : 50;
    cairn_augmix_equalize(src, dst, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(dst[i], i % 2 ? 255 : 0);
    /* fewer than 255 pixels below the top level: step 0, the image is kept */
    for (int i = 0; i < N; i++)
        src[i] = i < 200 ? 10 : 90;
    cairn_augmix_equalize(src, dst, N);
    assert_memory_equal(dst, src, N);

    /* autocontrast maps [50, 150] onto [0, 255], monotonically; a constant image is kept */
    for (int i = 0; i < N; i++)
        src[i] = (uint8_t)(50 + i % 101);
    cairn_augmix_autocontrast(src, dst, N);
    for (int i = 0; i < N; i++) {
        /* the linear map (v - 50) * 2.55, truncated (within one level of float rounding) */
        double want = (src[i] - 50) * 2.55;
        assert_true(dst[i] <= want + 1e-9 && dst[i] > want - 1.0 - 1e-9);
        if (i > 0 && src[i] > src[i - 1]) assert_true(dst[i] >= dst[i - 1]);
    }
    assert_int_equal(dst[0], 0);
    assert_int_equal(dst[100], 255);
    memset(src, 77, N);
    cairn_augmix_autocontrast(src, dst, N);
    assert_memory_equal(dst, src, N);
}

static void test_mix_deterministic(void **state)
{
    (void)state;
    float src[N], a[N], b[N], c[N];
    uint64_t s = 9;
    for (int i = 0; i < N; i++)
        src[i] = (float)((cairn_rand_next(&s) >> 40) / (double)(1 << 24));
    cairn_augmix_params p = cairn_augmix_default_params();
    assert_int_equal(cairn_augmix_image(src, a, H, W, &p, 1234, NULL), 0);
    assert_int_equal(cairn_augmix_image(src, b, H, W, &p, 1234, NULL), 0);
    assert_memory_equal(a, b, sizeof(a));
    /* in place gives the same image */
    memcpy(c, src, sizeof(c));
    assert_int_equal(cairn_augmix_image(c, c, H, W, &p, 1234, NULL), 0);
    assert_memory_equal(a, c, sizeof(a));
    /* other seeds give other images, all within [0, 1] */
    int differ = 0;
    for (uint64_t seed = 1; seed <= 20; seed++) {
        assert_int_equal(cairn_augmix_image(src, b, H, W, &p, seed, NULL), 0);
        differ += memcmp(a, b, sizeof(a)) != 0;
        for (int i = 0; i < N; i++)
            assert_true(b[i] >= 0.0f && b[i] <= 1.0f);
    }
    assert_true(differ >= 19);
    /* bad parameters */
    cairn_error err;
    p.severity = 11;
    assert_int_equal(cairn_augmix_image(src, b, H, W, &p, 1, &err), CAIRN_EINVAL);
    p = cairn_augmix_default_params();
    p.width = 0;
    assert_int_equal(cairn_augmix_image(src, b, H, W, &p, 1, &err), CAIRN_EINVAL);
    p = cairn_augmix_default_params();
    assert_int_equal(cairn_augmix_image(src, b, 100, 100, &p, 1, &err), CAIRN_EINVAL);
}

/* One chain of one operation (width 1, depth 1) on a 0/1 checkerboard: where the drawn operation
 * is the identity on it, the image comes back unchanged whatever the mix weight. */
static void test_mix_of_identities(void **state)
{
    (void)state;
    float src[N], out[N];
    for (int i = 0; i < N; i++)
        src[i] = (i / W + i % W) % 2 ? 1.0f : 0.0f;
    cairn_augmix_params p = cairn_augmix_default_params();
    p.width = 1;
    p.depth = 1;
    int unchanged = 0;
    for (uint64_t seed = 1; seed <= 200; seed++) {
        assert_int_equal(cairn_augmix_image(src, out, H, W, &p, seed, NULL), 0);
        unchanged += memcmp(src, out, sizeof(src)) == 0;
    }
    /* equalize and autocontrast always are; rotate when int(3u) = 0 (u ~ U(0.1, 3): 8%) and
     * each translation when int(0.933u) = 0 (33%): (2 + 0.08 + 0.67) / 9 = 31% of 200, ~61;
     * posterize, solarize and shears (bilinear) always change it */
    assert_true(unchanged >= 30 && unchanged <= 95);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rotate),
        cmocka_unit_test(test_translate_shear),
        cmocka_unit_test(test_posterize_solarize),
        cmocka_unit_test(test_equalize_autocontrast),
        cmocka_unit_test(test_mix_deterministic),
        cmocka_unit_test(test_mix_of_identities),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
