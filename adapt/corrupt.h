/*
 * adapt/corrupt.h — Fashion-MNIST-C: common corruptions at severities 1–5.
 *
 * After ImageNet-C (Hendrycks & Dietterich, ICLR 2019) and MNIST-C (Mu & Gilmer, 2019), with the
 * parameters rescaled from 224x224 RGB to 28x28 grayscale images in [0, 1]; docs/ADAPT.md holds
 * the parameter table per corruption and severity. Every corruption maps [0, 1] images to [0, 1]
 * images and is deterministic: the same (image, corruption, severity, seed) gives the same
 * output. These corruptions are for EVALUATION only: models are never trained on them.
 *
 * Thread-safety: all functions are reentrant (no shared state).
 */
#ifndef CAIRN_ADAPT_CORRUPT_H
#define CAIRN_ADAPT_CORRUPT_H

#include <stdint.h>

#include "adapt/data.h"
#include "common/error.h"

typedef enum {
    CAIRN_CORRUPT_GAUSSIAN_NOISE, /* x + N(0, sigma^2) */
    CAIRN_CORRUPT_SHOT_NOISE,     /* Poisson(x * lambda) / lambda */
    CAIRN_CORRUPT_IMPULSE_NOISE,  /* salt and pepper: a fraction of pixels set to 0 or 1 */
    CAIRN_CORRUPT_DEFOCUS_BLUR,   /* mean over a disk of radius r */
    CAIRN_CORRUPT_MOTION_BLUR,    /* one-sided Gaussian-weighted trail along a random angle */
    CAIRN_CORRUPT_CONTRAST,       /* (x - mean) * c + mean */
    CAIRN_CORRUPT_BRIGHTNESS,     /* x + c */
    CAIRN_CORRUPT_PIXELATE,       /* block means over b x b blocks */
    CAIRN_CORRUPT_ELASTIC,        /* Simard et al. 2003 smoothed random displacement field */
    CAIRN_CORRUPT_FOG,            /* plasma-fractal haze, ImageNet-C's fog */
    CAIRN_CORRUPT_COUNT
} cairn_corruption;

#define CAIRN_CORRUPT_MAX_SIDE 256

/* Short name: "gaussian_noise", "shot_noise", ..., "fog" (ImageNet-C spelling). NULL for a
 * bad value. */
const char *cairn_corruption_name(cairn_corruption c);

/* Parses a name from cairn_corruption_name. Returns 0 or CAIRN_EINVAL. */
int cairn_corruption_parse(const char *name, cairn_corruption *out, cairn_error *err);

/*
 * Corrupts one single-channel h x w image src (values in [0, 1]) into dst (may equal src) at
 * severity 1..5. Randomness comes only from seed. Returns 0, CAIRN_EINVAL (bad corruption or
 * size) or CAIRN_ERANGE (severity outside 1..5), CAIRN_ENOMEM.
 */
int cairn_corrupt_image(cairn_corruption c, int severity, const float *src, float *dst, int h,
                        int w, uint64_t seed, cairn_error *err);

/*
 * Corrupts every image of src (single channel) into a new dataset *out with the same labels;
 * image i uses a seed derived from (seed, i). The caller frees *out (cairn_dataset_free).
 * Returns as cairn_corrupt_image; *out is zeroed on failure.
 */
int cairn_corrupt_dataset(cairn_dataset *out, const cairn_dataset *src, cairn_corruption c,
                          int severity, uint64_t seed, cairn_error *err);

#endif
