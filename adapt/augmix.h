/*
 * adapt/augmix.h — AugMix (Hendrycks, Mu, Cubuk, Zoph, Gilmer, Lakshminarayanan, ICLR 2020) for
 * single-channel images: `width` chains of 1–3 operations each, mixed with Dirichlet(alpha)
 * weights, then mixed with the original image by a Beta(alpha, alpha) weight.
 *
 * The operations are the paper's set without those that overlap the evaluation corruptions
 * (its code drops contrast, color, brightness and sharpness for ImageNet-C, and so do we; none
 * of adapt/corrupt.h's noises, blurs, contrast, brightness, pixelation, elastic or fog is here):
 * autocontrast, equalize, posterize, rotate, solarize, shear x/y, translate x/y. They work on
 * 8-bit pixels as PIL's ImageOps and Image.transform do (the paper's implementation); a float
 * image in [0, 1] is rounded to 8 bits for the chains and the mix is computed in float.
 *
 * Magnitudes follow the paper's augmentations.py: for severity s, a level u ~ U(0.1, s), then
 *   posterize  bits = 4 - int(u * 4 / 10)           solarize  threshold = 256 - int(u * 256 / 10)
 *   rotate     ±int(u * 30 / 10) degrees             shear     ±u * 0.3 / 10
 *   translate  ±int(u * (side / 3) / 10) pixels
 * Every random draw comes from the seed (common/rand.h), so one seed gives one image.
 * Thread-safety: all functions are reentrant (no shared state).
 */
#ifndef CAIRN_ADAPT_AUGMIX_H
#define CAIRN_ADAPT_AUGMIX_H

#include <stdint.h>

#include "common/error.h"

#define CAIRN_AUGMIX_MAX_PIXELS 4096 /* images up to 64 x 64 */

typedef enum {
    CAIRN_AUGMIX_AUTOCONTRAST,
    CAIRN_AUGMIX_EQUALIZE,
    CAIRN_AUGMIX_POSTERIZE,
    CAIRN_AUGMIX_ROTATE,
    CAIRN_AUGMIX_SOLARIZE,
    CAIRN_AUGMIX_SHEAR_X,
    CAIRN_AUGMIX_SHEAR_Y,
    CAIRN_AUGMIX_TRANSLATE_X,
    CAIRN_AUGMIX_TRANSLATE_Y,
    CAIRN_AUGMIX_N_OPS,
} cairn_augmix_op;

typedef struct cairn_augmix_params {
    int severity; /* 1..10, default 3 (the paper's) */
    int width;    /* chains, 1..8, default 3 */
    int depth;    /* operations per chain, 1..8; 0: uniform in 1..3 per chain (default) */
    float alpha;  /* Dirichlet and Beta concentration, default 1 */
} cairn_augmix_params;

cairn_augmix_params cairn_augmix_default_params(void);

/* ---- The operations on 8-bit images (n = h * w pixels; dst may not alias src) --------------- */

/* Maps [min, max] linearly onto [0, 255] (PIL autocontrast, cutoff 0: lut = int(p * scale +
 * offset)); a constant image is copied. */
void cairn_augmix_autocontrast(const uint8_t *src, uint8_t *dst, int n);
/* PIL's equalize: step = (n - count of the highest level present) / 255 (integer); when 0 the image is
 * copied; else level i maps to min(255, (step / 2 + count below i) / step). */
void cairn_augmix_equalize(const uint8_t *src, uint8_t *dst, int n);
/* Keeps the top `bits` bits (1..8) of each pixel. */
void cairn_augmix_posterize(const uint8_t *src, uint8_t *dst, int n, int bits);
/* Pixels >= threshold become 255 - p (PIL solarize). */
void cairn_augmix_solarize(const uint8_t *src, uint8_t *dst, int n, int threshold);
/*
 * PIL's Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR): output pixel (x, y) reads the
 * input at (a x' + b y' + c, d x' + e y' + f) with x' = x + 0.5, y' = y + 0.5 in continuous
 * coordinates (pixel centres at +0.5), bilinear between pixel centres, 0 outside the image.
 */
void cairn_augmix_affine(const uint8_t *src, uint8_t *dst, int h, int w, const double m[6]);
/* Counter-clockwise rotation by `degrees` about the image centre (PIL's rotate). */
void cairn_augmix_rotate(const uint8_t *src, uint8_t *dst, int h, int w, double degrees);
/* Shear: axis 0 reads x + s * y (shear_x), axis 1 reads y + s * x (shear_y). */
void cairn_augmix_shear(const uint8_t *src, uint8_t *dst, int h, int w, double s, int axis);
/* Translation: the output at x reads the input at x + px (axis 0; axis 1: y). */
void cairn_augmix_translate(const uint8_t *src, uint8_t *dst, int h, int w, double px, int axis);

/* One operation at a random magnitude for `severity` (header comment), drawing from *rng. */
void cairn_augmix_apply(cairn_augmix_op op, int severity, const uint8_t *src, uint8_t *dst, int h,
                        int w, uint64_t *rng);

/*
 * AugMix of one image in [0, 1] (h x w, one channel) into dst (may equal src):
 *   dst = (1 - m) src + m sum_i w_i chain_i(src),  (w_i) ~ Dirichlet(alpha), m ~ Beta(alpha, alpha).
 * Deterministic in seed. Returns 0, or CAIRN_EINVAL for bad params or an image over
 * CAIRN_AUGMIX_MAX_PIXELS.
 */
int cairn_augmix_image(const float *src, float *dst, int h, int w, const cairn_augmix_params *p,
                       uint64_t seed, cairn_error *err);

#endif
