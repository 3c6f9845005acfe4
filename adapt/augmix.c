/*
 * adapt/augmix.c — AugMix's operations on 8-bit single-channel images and the AugMix mix
 * (Hendrycks et al., ICLR 2020; the operations as PIL implements them, which is what the paper's
 * augmentations.py calls). See augmix.h for the magnitudes.
 */
#include "adapt/augmix.h"

#include <math.h>
#include <string.h>

#include "common/rand.h"

cairn_augmix_params cairn_augmix_default_params(void)
{
    return (cairn_augmix_params){.severity = 3, .width = 3, .depth = 0, .alpha = 1.0f};
}

/* ---- Randomness ------------------------------------------------------------------------------ */

/* Uniform in [0, 1). */
static double unif(uint64_t *r)
{
    return (double)(cairn_rand_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform in (0, 1]: safe under log. */
static double unif_pos(uint64_t *r)
{
    return 1.0 - unif(r);
}

static double normal(uint64_t *r)
{
    return sqrt(-2.0 * log(unif_pos(r))) * cos(2.0 * M_PI * unif(r));
}

/* Gamma(a, 1) by Marsaglia and Tsang (ACM TOMS 2000); a < 1 through Gamma(a + 1) U^(1/a). */
static double gamma_draw(uint64_t *r, double a)
{
    if (a < 1.0) return gamma_draw(r, a + 1.0) * pow(unif_pos(r), 1.0 / a);
    const double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = normal(r), v = 1.0 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = unif_pos(r);
        if (log(u) < 0.5 * x * x + d - d * v + d * log(v)) return d * v;
    }
}

/* ---- Point operations ------------------------------------------------------------------------ */

void cairn_augmix_autocontrast(const uint8_t *src, uint8_t *dst, int n)
{
    int lo = 255, hi = 0;
    for (int i = 0; i < n; i++) {
        if (src[i] < lo) lo = src[i];
        if (src[i] > hi) hi = src[i];
    }
    if (hi <= lo) {
        memmove(dst, src, (size_t)n);
        return;
    }
    uint8_t lut[256];
    const double scale = 255.0 / (hi - lo), offset = -lo * scale;
    for (int v = 0; v < 256; v++) {
        int o = (int)(v * scale + offset); /* Python's int(): truncation towards 0 */
        lut[v] = (uint8_t)(o < 0 ? 0 : o > 255 ? 255 : o);
    }
    for (int i = 0; i < n; i++)
        dst[i] = lut[src[i]];
}

void cairn_augmix_equalize(const uint8_t *src, uint8_t *dst, int n)
{
    long hist[256] = {0};
    for (int i = 0; i < n; i++)
        hist[src[i]]++;
    int last = 255;
    while (last > 0 && hist[last] == 0)
        last--;
    long step = ((long)n - hist[last]) / 255;
    if (step == 0) {
        memmove(dst, src, (size_t)n);
        return;
    }
    uint8_t lut[256];
    long acc = step / 2;
    for (int v = 0; v < 256; v++) {
        long o = acc / step;
        lut[v] = (uint8_t)(o > 255 ? 255 : o);
        acc += hist[v];
    }
    for (int i = 0; i < n; i++)
        dst[i] = lut[src[i]];
}

void cairn_augmix_posterize(const uint8_t *src, uint8_t *dst, int n, int bits)
{
    bits = bits < 1 ? 1 : bits > 8 ? 8 : bits;
    const uint8_t mask = (uint8_t)(0xff << (8 - bits));
    for (int i = 0; i < n; i++)
        dst[i] = src[i] & mask;
}

void cairn_augmix_solarize(const uint8_t *src, uint8_t *dst, int n, int threshold)
{
    for (int i = 0; i < n; i++)
        dst[i] = src[i] >= threshold ? (uint8_t)(255 - src[i]) : src[i];
}

/* ---- Geometric operations -------------------------------------------------------------------- */

void cairn_augmix_affine(const uint8_t *src, uint8_t *dst, int h, int w, const double m[6])
{
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            const double xs = x + 0.5, ys = y + 0.5;
            double xin = m[0] * xs + m[1] * ys + m[2], yin = m[3] * xs + m[4] * ys + m[5];
            if (xin < 0 || xin >= w || yin < 0 || yin >= h) {
                dst[y * w + x] = 0;
                continue;
            }
            xin -= 0.5, yin -= 0.5;
            int x0 = (int)floor(xin), y0 = (int)floor(yin);
            double dx = xin - x0, dy = yin - y0;
            /* neighbours outside the image repeat the edge (PIL's bilinear filter) */
            int xa = x0 < 0 ? 0 : x0, xb = x0 + 1 >= w ? w - 1 : x0 + 1;
            int ya = y0 < 0 ? 0 : y0, yb = y0 + 1 >= h ? h - 1 : y0 + 1;
            double top = src[ya * w + xa] + dx * (src[ya * w + xb] - src[ya * w + xa]);
            double bot = src[yb * w + xa] + dx * (src[yb * w + xb] - src[yb * w + xa]);
            double v = top + dy * (bot - top) + 0.5;
            dst[y * w + x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
}

/* PIL rounds the rotation matrix to 15 decimals, so that 90-degree turns are exact. */
static double round15(double v)
{
    return round(v * 1e15) / 1e15;
}

void cairn_augmix_rotate(const uint8_t *src, uint8_t *dst, int h, int w, double degrees)
{
    const double t = -degrees * M_PI / 180.0, cx = w / 2.0, cy = h / 2.0;
    double m[6] = {round15(cos(t)), round15(sin(t)), 0, round15(-sin(t)), round15(cos(t)), 0};
    m[2] = m[0] * -cx + m[1] * -cy + cx;
    m[5] = m[3] * -cx + m[4] * -cy + cy;
    cairn_augmix_affine(src, dst, h, w, m);
}

void cairn_augmix_shear(const uint8_t *src, uint8_t *dst, int h, int w, double s, int axis)
{
    const double mx[6] = {1, s, 0, 0, 1, 0}, my[6] = {1, 0, 0, s, 1, 0};
    cairn_augmix_affine(src, dst, h, w, axis ? my : mx);
}

void cairn_augmix_translate(const uint8_t *src, uint8_t *dst, int h, int w, double px, int axis)
{
    const double mx[6] = {1, 0, px, 0, 1, 0}, my[6] = {1, 0, 0, 0, 1, px};
    cairn_augmix_affine(src, dst, h, w, axis ? my : mx);
}

/* ---- Random magnitudes and the mix ----------------------------------------------------------- */

/* The paper's sample_level: U(0.1, severity). */
static double level(uint64_t *r, int severity)
{
    return 0.1 + unif(r) * (severity - 0.1);
}

static double signed_by(uint64_t *r, double v)
{
    return unif(r) > 0.5 ? -v : v;
}

void cairn_augmix_apply(cairn_augmix_op op, int severity, const uint8_t *src, uint8_t *dst, int h,
                        int w, uint64_t *rng)
{
    const int n = h * w;
    const double u = level(rng, severity);
    switch (op) {
    case CAIRN_AUGMIX_AUTOCONTRAST:
        cairn_augmix_autocontrast(src, dst, n);
        break;
    case CAIRN_AUGMIX_EQUALIZE:
        cairn_augmix_equalize(src, dst, n);
        break;
    case CAIRN_AUGMIX_POSTERIZE:
        cairn_augmix_posterize(src, dst, n, 4 - (int)(u * 4 / 10));
        break;
    case CAIRN_AUGMIX_ROTATE:
        cairn_augmix_rotate(src, dst, h, w, signed_by(rng, (int)(u * 30 / 10)));
        break;
    case CAIRN_AUGMIX_SOLARIZE:
        cairn_augmix_solarize(src, dst, n, 256 - (int)(u * 256 / 10));
        break;
    case CAIRN_AUGMIX_SHEAR_X:
    case CAIRN_AUGMIX_SHEAR_Y:
        cairn_augmix_shear(src, dst, h, w, signed_by(rng, u * 0.3 / 10),
                           op == CAIRN_AUGMIX_SHEAR_Y);
        break;
    case CAIRN_AUGMIX_TRANSLATE_X:
    case CAIRN_AUGMIX_TRANSLATE_Y: {
        const int side = op == CAIRN_AUGMIX_TRANSLATE_X ? w : h;
        cairn_augmix_translate(src, dst, h, w, signed_by(rng, (int)(u * (side / 3.0) / 10)),
                               op == CAIRN_AUGMIX_TRANSLATE_Y);
        break;
    }
    default:
        memmove(dst, src, (size_t)n);
    }
}

int cairn_augmix_image(const float *src, float *dst, int h, int w, const cairn_augmix_params *p,
                       uint64_t seed, cairn_error *err)
{
    cairn_augmix_params dp = cairn_augmix_default_params();
    if (!p) p = &dp;
    if (h < 1 || w < 1 || h * w > CAIRN_AUGMIX_MAX_PIXELS)
        return cairn_errorf(err, CAIRN_EINVAL, "augmix: image %dx%d outside 1..%d pixels", h, w,
                            CAIRN_AUGMIX_MAX_PIXELS);
    if (p->severity < 1 || p->severity > 10 || p->width < 1 || p->width > 8 || p->depth < 0 ||
        p->depth > 8 || !(p->alpha > 0 && p->alpha <= 100))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "augmix: severity %d (1..10), width %d (1..8), depth %d (0..8), "
                            "alpha %g (0..100]",
                            p->severity, p->width, p->depth, (double)p->alpha);
    const int n = h * w;
    uint64_t r = seed;
    uint8_t base[CAIRN_AUGMIX_MAX_PIXELS], a[CAIRN_AUGMIX_MAX_PIXELS], b[CAIRN_AUGMIX_MAX_PIXELS];
    float mix[CAIRN_AUGMIX_MAX_PIXELS];
    for (int i = 0; i < n; i++) {
        float v = src[i] < 0 ? 0 : src[i] > 1 ? 1 : src[i];
        base[i] = (uint8_t)lrintf(v * 255.0f);
        mix[i] = 0.0f;
    }
    /* Dirichlet(alpha) = normalised Gamma(alpha) draws; Beta(alpha, alpha) likewise. */
    double wts[8], sum = 0;
    for (int c = 0; c < p->width; c++)
        sum += (wts[c] = gamma_draw(&r, p->alpha));
    double ga = gamma_draw(&r, p->alpha), gb = gamma_draw(&r, p->alpha);
    const float m = (float)(ga / (ga + gb));
    for (int c = 0; c < p->width; c++) {
        int depth = p->depth > 0 ? p->depth : 1 + (int)(unif(&r) * 3);
        const uint8_t *cur = base;
        uint8_t *out = a;
        for (int d = 0; d < depth; d++) {
            cairn_augmix_op op = (cairn_augmix_op)(int)(unif(&r) * CAIRN_AUGMIX_N_OPS);
            cairn_augmix_apply(op, p->severity, cur, out, h, w, &r);
            cur = out;
            out = out == a ? b : a;
        }
        const float wc = (float)(wts[c] / sum);
        for (int i = 0; i < n; i++)
            mix[i] += wc * ((float)cur[i] / 255.0f);
    }
    /* (1 - m) src + m mix, written so that a mix equal to src gives src exactly */
    for (int i = 0; i < n; i++)
        dst[i] = src[i] + m * (mix[i] - src[i]);
    return 0;
}
