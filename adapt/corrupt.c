/*
 * adapt/corrupt.c — Fashion-MNIST-C corruptions. Parameters per severity follow ImageNet-C
 * (Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common Corruptions
 * and Perturbations", the reference make_imagenet_c.py values) where they are scale-free
 * (noise levels, contrast, brightness, fog), and are rescaled by 28/224 where they are lengths
 * in pixels (blur radii, pixelation blocks); elastic follows Simard et al. 2003 as MNIST-C does.
 */
#include "adapt/corrupt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Parameters (docs/ADAPT.md mirrors these tables) ---------------------------------------- */

static const float GAUSS_SIGMA[5] = {0.08f, 0.12f, 0.18f, 0.26f, 0.38f};
static const float SHOT_LAMBDA[5] = {60.f, 25.f, 12.f, 5.f, 3.f};
static const float IMPULSE_AMOUNT[5] = {0.03f, 0.06f, 0.09f, 0.17f, 0.27f};
static const float DEFOCUS_RADIUS[5] = {1.0f, 1.5f, 2.0f, 2.5f, 3.0f};
static const float MOTION_RADIUS[5] = {2.f, 3.f, 4.f, 5.f, 6.f};
static const float MOTION_SIGMA[5] = {1.0f, 1.5f, 2.0f, 2.5f, 3.0f};
static const float CONTRAST_C[5] = {0.4f, 0.3f, 0.2f, 0.1f, 0.05f};
static const float BRIGHT_C[5] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f};
static const int PIXELATE_BLOCK[5] = {2, 3, 4, 5, 6};
static const float ELASTIC_ALPHA[5] = {12.f, 18.f, 24.f, 30.f, 36.f};
static const float ELASTIC_SIGMA[5] = {3.0f, 3.0f, 3.0f, 3.0f, 3.0f};
static const float FOG_T[5] = {1.5f, 2.0f, 2.5f, 3.0f, 3.5f};
static const float FOG_DECAY[5] = {2.0f, 2.0f, 1.7f, 1.5f, 1.4f};

static const char *const NAMES[CAIRN_CORRUPT_COUNT] = {
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",      "motion_blur",
    "contrast",       "brightness", "pixelate",      "elastic_transform", "fog",
};

const char *cairn_corruption_name(cairn_corruption c)
{
    return (unsigned)c < CAIRN_CORRUPT_COUNT ? NAMES[c] : NULL;
}

int cairn_corruption_parse(const char *name, cairn_corruption *out, cairn_error *err)
{
    for (int i = 0; name && i < CAIRN_CORRUPT_COUNT; i++) {
        if (strcmp(name, NAMES[i]) == 0) {
            *out = (cairn_corruption)i;
            return 0;
        }
    }
    return cairn_errorf(err, CAIRN_EINVAL, "unknown corruption '%s'", name ? name : "(null)");
}

/* ---- Randomness: splitmix64 keyed by the seed ------------------------------------------------ */

typedef struct {
    uint64_t s;
} rng;

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static double unif(rng *r) /* [0, 1) */
{
    r->s += 0x9e3779b97f4a7c15ull;
    return (double)(mix64(r->s) >> 11) * (1.0 / 9007199254740992.0);
}

static double normal(rng *r) /* Box–Muller */
{
    double u1 = unif(r), u2 = unif(r);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
}

/* Poisson sample by Knuth's multiplication method: exact, O(lambda); lambda <= 60 here, and
 * exp(-60) is far from double underflow. */
static int poisson(rng *r, double lambda)
{
    double l = exp(-lambda), p = 1.0;
    int k = 0;
    do {
        k++;
        p *= unif(r);
    } while (p > l);
    return k - 1;
}

static float clamp01(float v)
{
    return v < 0.f ? 0.f : (v > 1.f ? 1.f : v);
}

/* Bilinear sample of img at (y, x); outside the image reads `fill`. */
static float sample(const float *img, int h, int w, float y, float x, float fill, int clamp)
{
    if (clamp) {
        y = y < 0 ? 0 : (y > h - 1 ? (float)(h - 1) : y);
        x = x < 0 ? 0 : (x > w - 1 ? (float)(w - 1) : x);
    }
    int y0 = (int)floorf(y), x0 = (int)floorf(x);
    float fy = y - y0, fx = x - x0, acc = 0;
    for (int dy = 0; dy < 2; dy++) {
        for (int dx = 0; dx < 2; dx++) {
            int yy = y0 + dy, xx = x0 + dx;
            float wgt = (dy ? fy : 1 - fy) * (dx ? fx : 1 - fx);
            if (wgt == 0) continue;
            float v = (yy >= 0 && yy < h && xx >= 0 && xx < w) ? img[yy * w + xx] : fill;
            acc += wgt * v;
        }
    }
    return acc;
}

/* ---- Corruptions (src -> dst, distinct buffers) ---------------------------------------------- */

static void defocus(const float *src, float *dst, int h, int w, float radius)
{
    /* Disk kernel of ImageNet-C's defocus blur (its small Gaussian anti-aliasing is dropped: at
     * 28x28 it would blur more than the disk). Edges replicate. */
    int r = (int)floorf(radius);
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            float acc = 0, n = 0;
            for (int dy = -r; dy <= r; dy++) {
                for (int dx = -r; dx <= r; dx++) {
                    if (dx * dx + dy * dy > radius * radius) continue;
                    int yy = y + dy < 0 ? 0 : (y + dy >= h ? h - 1 : y + dy);
                    int xx = x + dx < 0 ? 0 : (x + dx >= w ? w - 1 : x + dx);
                    acc += src[yy * w + xx];
                    n += 1;
                }
            }
            dst[y * w + x] = acc / n;
        }
    }
}

static void motion(const float *src, float *dst, int h, int w, float radius, float sigma, rng *r)
{
    /* ImageNet-C (Wand motion blur): a one-sided trail at an angle uniform in [-45, 45] degrees,
     * weights exp(-t^2 / 2 sigma^2) at t = 0..radius pixels. */
    double ang = (unif(r) * 90.0 - 45.0) * M_PI / 180.0;
    float cy = (float)sin(ang), cx = (float)cos(ang);
    int n = (int)radius;
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            float acc = 0, wsum = 0;
            for (int t = 0; t <= n; t++) {
                float wt = expf(-(float)(t * t) / (2 * sigma * sigma));
                acc += wt * sample(src, h, w, y - t * cy, x - t * cx, 0, 1);
                wsum += wt;
            }
            dst[y * w + x] = acc / wsum;
        }
    }
}

static void pixelate(const float *src, float *dst, int h, int w, int b)
{
    for (int by = 0; by < h; by += b) {
        for (int bx = 0; bx < w; bx += b) {
            int ey = by + b < h ? by + b : h, ex = bx + b < w ? bx + b : w;
            float acc = 0;
            for (int y = by; y < ey; y++)
                for (int x = bx; x < ex; x++)
                    acc += src[y * w + x];
            acc /= (float)((ey - by) * (ex - bx));
            for (int y = by; y < ey; y++)
                for (int x = bx; x < ex; x++)
                    dst[y * w + x] = acc;
        }
    }
}

/* Separable Gaussian blur of f (h x w) in place, edges replicated; tmp holds h*w floats. */
static void gauss_blur(float *f, float *tmp, int h, int w, float sigma)
{
    int r = (int)ceilf(3 * sigma);
    float k[64];
    if (r > 31) r = 31;
    float ks = 0;
    for (int i = -r; i <= r; i++)
        ks += k[i + r] = expf(-(float)(i * i) / (2 * sigma * sigma));
    for (int i = 0; i < 2 * r + 1; i++)
        k[i] /= ks;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            float a = 0;
            for (int i = -r; i <= r; i++) {
                int xx = x + i < 0 ? 0 : (x + i >= w ? w - 1 : x + i);
                a += k[i + r] * f[y * w + xx];
            }
            tmp[y * w + x] = a;
        }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            float a = 0;
            for (int i = -r; i <= r; i++) {
                int yy = y + i < 0 ? 0 : (y + i >= h ? h - 1 : y + i);
                a += k[i + r] * tmp[yy * w + x];
            }
            f[y * w + x] = a;
        }
}

static int elastic(const float *src, float *dst, int h, int w, float alpha, float sigma, rng *r)
{
    /* Simard, Steinkraus & Platt 2003: displacement fields uniform in [-1, 1], smoothed by a
     * Gaussian of std sigma, scaled by alpha; bilinear resampling, background (0) outside. */
    size_t n = (size_t)h * w;
    float *buf = malloc(3 * n * sizeof(float));
    if (!buf) return CAIRN_ENOMEM;
    float *dx = buf, *dy = buf + n, *tmp = buf + 2 * n;
    for (size_t i = 0; i < n; i++) {
        dx[i] = (float)(2 * unif(r) - 1);
        dy[i] = (float)(2 * unif(r) - 1);
    }
    gauss_blur(dx, tmp, h, w, sigma);
    gauss_blur(dy, tmp, h, w, sigma);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            size_t i = (size_t)y * w + x;
            dst[i] = clamp01(sample(src, h, w, y + alpha * dy[i], x + alpha * dx[i], 0, 0));
        }
    free(buf);
    return 0;
}

/* Diamond-square plasma fractal on a (size+1)^2 grid, size a power of two, normalised to
 * [0, 1] (ImageNet-C's plasma_fractal; wibble shrinks by 1/decay per level). */
static int plasma(float *out, int size, float decay, rng *r)
{
    int s1 = size + 1;
    float *g = calloc((size_t)s1 * s1, sizeof(float));
    if (!g) return CAIRN_ENOMEM;
#define G(y, x) g[(size_t)((y) % size) * s1 + ((x) % size)]
    float wibble = 100.f;
    for (int step = size; step >= 2; step /= 2) {
        int half = step / 2;
        /* squares: centre of each step x step square from its corners */
        for (int y = 0; y < size; y += step)
            for (int x = 0; x < size; x += step) {
                float m = (G(y, x) + G(y + step, x) + G(y, x + step) + G(y + step, x + step)) / 4;
                G(y + half, x + half) = m + wibble * (float)(2 * unif(r) - 1);
            }
        /* diamonds: edge midpoints from their four neighbours (wrapping) */
        for (int y = 0; y < size; y += half)
            for (int x = (y / half) % 2 ? 0 : half; x < size; x += step) {
                float m = (G(y + size - half, x) + G(y + half, x) + G(y, x + size - half) +
                           G(y, x + half)) /
                          4;
                G(y, x) = m + wibble * (float)(2 * unif(r) - 1);
            }
        wibble /= decay;
    }
    float lo = INFINITY, hi = -INFINITY;
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            float v = G(y, x);
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++)
            out[y * size + x] = hi > lo ? (G(y, x) - lo) / (hi - lo) : 0.f;
#undef G
    free(g);
    return 0;
}

static int fog(const float *src, float *dst, int h, int w, float t, float decay, rng *r)
{
    /* ImageNet-C: x' = (x + t * plasma) * max(x) / (max(x) + t), then clipped. */
    int size = 2;
    while (size < h || size < w)
        size *= 2;
    float *f = malloc((size_t)size * size * sizeof(float));
    if (!f) return CAIRN_ENOMEM;
    int rc = plasma(f, size, decay, r);
    if (rc) {
        free(f);
        return rc;
    }
    float mx = 0;
    for (int i = 0; i < h * w; i++)
        mx = src[i] > mx ? src[i] : mx;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            dst[y * w + x] = clamp01((src[y * w + x] + t * f[y * size + x]) * mx / (mx + t));
    free(f);
    return 0;
}

int cairn_corrupt_image(cairn_corruption c, int severity, const float *src, float *dst, int h,
                        int w, uint64_t seed, cairn_error *err)
{
    if ((unsigned)c >= CAIRN_CORRUPT_COUNT)
        return cairn_errorf(err, CAIRN_EINVAL, "corrupt: unknown corruption %d", (int)c);
    if (severity < 1 || severity > 5)
        return cairn_errorf(err, CAIRN_ERANGE, "corrupt: severity %d outside 1..5", severity);
    if (h < 1 || w < 1 || h > CAIRN_CORRUPT_MAX_SIDE || w > CAIRN_CORRUPT_MAX_SIDE)
        return cairn_errorf(err, CAIRN_EINVAL, "corrupt: image %d x %d outside 1..%d", h, w,
                            CAIRN_CORRUPT_MAX_SIDE);
    const int s = severity - 1;
    const size_t n = (size_t)h * w;
    rng r = {mix64(seed ^ ((uint64_t)c << 56) ^ ((uint64_t)severity << 48))};
    /* Work from a copy so that dst may alias src. */
    float *in = malloc(n * sizeof(float));
    if (!in) return cairn_errorf(err, CAIRN_ENOMEM, "corrupt: out of memory");
    memcpy(in, src, n * sizeof(float));
    int rc = 0;
    switch (c) {
    case CAIRN_CORRUPT_GAUSSIAN_NOISE:
        for (size_t i = 0; i < n; i++)
            dst[i] = clamp01(in[i] + GAUSS_SIGMA[s] * (float)normal(&r));
        break;
    case CAIRN_CORRUPT_SHOT_NOISE:
        for (size_t i = 0; i < n; i++)
            dst[i] = clamp01((float)poisson(&r, clamp01(in[i]) * SHOT_LAMBDA[s]) / SHOT_LAMBDA[s]);
        break;
    case CAIRN_CORRUPT_IMPULSE_NOISE:
        for (size_t i = 0; i < n; i++) {
            double u = unif(&r);
            dst[i] = u < IMPULSE_AMOUNT[s] / 2 ? 0.f : (u < IMPULSE_AMOUNT[s] ? 1.f : in[i]);
        }
        break;
    case CAIRN_CORRUPT_DEFOCUS_BLUR:
        defocus(in, dst, h, w, DEFOCUS_RADIUS[s]);
        break;
    case CAIRN_CORRUPT_MOTION_BLUR:
        motion(in, dst, h, w, MOTION_RADIUS[s], MOTION_SIGMA[s], &r);
        break;
    case CAIRN_CORRUPT_CONTRAST: {
        double mean = 0;
        for (size_t i = 0; i < n; i++)
            mean += in[i];
        mean /= (double)n;
        for (size_t i = 0; i < n; i++)
            dst[i] = clamp01((float)((in[i] - mean) * CONTRAST_C[s] + mean));
        break;
    }
    case CAIRN_CORRUPT_BRIGHTNESS:
        for (size_t i = 0; i < n; i++)
            dst[i] = clamp01(in[i] + BRIGHT_C[s]);
        break;
    case CAIRN_CORRUPT_PIXELATE:
        pixelate(in, dst, h, w, PIXELATE_BLOCK[s]);
        break;
    case CAIRN_CORRUPT_ELASTIC:
        rc = elastic(in, dst, h, w, ELASTIC_ALPHA[s], ELASTIC_SIGMA[s], &r);
        break;
    case CAIRN_CORRUPT_FOG:
        rc = fog(in, dst, h, w, FOG_T[s], FOG_DECAY[s], &r);
        break;
    default:
        break;
    }
    free(in);
    if (rc) return cairn_errorf(err, rc, "corrupt %s: out of memory", NAMES[c]);
    return 0;
}

int cairn_corrupt_dataset(cairn_dataset *out, const cairn_dataset *src, cairn_corruption c,
                          int severity, uint64_t seed, cairn_error *err)
{
    memset(out, 0, sizeof(*out));
    if (!src || src->c != 1 || src->n < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "corrupt: dataset must hold single-channel images");
    int rc = cairn_dataset_subset(out, src, src->n, err);
    if (rc) return rc;
    size_t px = (size_t)src->h * src->w;
    for (int i = 0; i < src->n; i++) {
        rc = cairn_corrupt_image(c, severity, out->images + (size_t)i * px,
                                 out->images + (size_t)i * px, src->h, src->w,
                                 mix64(seed) ^ mix64((uint64_t)i + 1), err);
        if (rc) {
            cairn_dataset_free(out);
            return rc;
        }
    }
    return 0;
}
