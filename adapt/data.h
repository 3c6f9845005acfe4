/*
 * adapt/data.h — Fashion-MNIST (IDX format) loading.
 *
 * The IDX format (LeCun's MNIST format): a big-endian header of magic 0x00000801 (labels, u8,
 * one dim) or 0x00000803 (images, u8, three dims N x rows x cols), each dim a big-endian u32,
 * then the data. Files may be gzip-compressed (the Debian package `dataset-fashion-mnist`
 * ships them as .gz under /usr/share/datasets/fashion-mnist); the loader reads both.
 *
 * Images come back as float32 in [0, 1] (byte / 255), NCHW with C = 1: n x 1 x 28 x 28.
 * Thread-safety: loading is reentrant; a loaded set is read-only and may be shared.
 */
#ifndef CAIRN_ADAPT_DATA_H
#define CAIRN_ADAPT_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#define CAIRN_FMNIST_DIR      "/usr/share/datasets/fashion-mnist"
#define CAIRN_FMNIST_SIDE     28
#define CAIRN_FMNIST_PIXELS   (CAIRN_FMNIST_SIDE * CAIRN_FMNIST_SIDE)
#define CAIRN_FMNIST_CLASSES  10
#define CAIRN_DATA_MAX_IMAGES 1000000 /* sanity bound on an IDX header's count */

typedef struct cairn_dataset {
    float *images; /* n * c * h * w floats in [0, 1] */
    int *labels;   /* n labels in 0..n_classes-1 */
    int n, c, h, w;
    int n_classes;
} cairn_dataset;

typedef enum { CAIRN_FMNIST_TRAIN, CAIRN_FMNIST_TEST } cairn_fmnist_split;

/*
 * Loads one split of Fashion-MNIST from dir (NULL: CAIRN_FMNIST_DIR). Looks for
 * "<prefix>-images-idx3-ubyte[.gz]" and "<prefix>-labels-idx1-ubyte[.gz]" with prefix "train" or
 * "t10k". On success fills *out (the caller releases it with cairn_dataset_free).
 * Returns 0, CAIRN_ENOTFOUND (no file), CAIRN_EIO, CAIRN_EFORMAT (bad magic, dims, size, a label
 * out of range, counts that disagree), CAIRN_ELIMIT or CAIRN_ENOMEM; *out is zeroed on failure.
 */
int cairn_fmnist_load(cairn_dataset *out, const char *dir, cairn_fmnist_split split,
                      cairn_error *err);

/*
 * Loads an image file and a label file (IDX, optionally gzipped) given by path. Labels must be
 * < n_classes. Same returns as cairn_fmnist_load.
 */
int cairn_idx_load_pair(cairn_dataset *out, const char *images_path, const char *labels_path,
                        int n_classes, cairn_error *err);

/*
 * Parses IDX bytes (already decompressed). On success *data points into buf at the first data
 * byte, dims[0..*ndim-1] hold the dims. expect_ndim is 1 or 3; the element type must be u8
 * (0x08). Returns 0 or CAIRN_EFORMAT (bad magic, type, dims, or a size that does not match len).
 */
int cairn_idx_parse(const uint8_t *buf, size_t len, int expect_ndim, const uint8_t **data,
                    uint32_t dims[3], cairn_error *err);

/* Releases a dataset's arrays and zeroes it. NULL is a no-op. */
void cairn_dataset_free(cairn_dataset *d);

/*
 * Fills out with n images of src (all when n >= src->n) at the evenly spaced indices
 * i * src->n / n, so that classes stay balanced in the shuffled Fashion-MNIST order.
 * The caller frees out. Returns 0, CAIRN_EINVAL or CAIRN_ENOMEM.
 */
int cairn_dataset_subset(cairn_dataset *out, const cairn_dataset *src, int n, cairn_error *err);

/*
 * The first n images of src in their order (all when n >= src->n): a stream keeps its order,
 * where cairn_dataset_subset spreads its picks. The caller frees out. Returns 0, CAIRN_EINVAL
 * or CAIRN_ENOMEM.
 */
int cairn_dataset_head(cairn_dataset *out, const cairn_dataset *src, int n, cairn_error *err);

/*
 * Writes d (one channel, values in [0, 1], labels below 256) as two uncompressed IDX files:
 * images as the bytes round(v * 255), labels as bytes. Each file is written under a temporary
 * name and renamed, so a reader never sees half of one. Returns 0, CAIRN_EINVAL (a dataset
 * IDX cannot hold) or CAIRN_EIO (with the path and the reason).
 */
int cairn_idx_write_pair(const cairn_dataset *d, const char *images_path,
                         const char *labels_path, cairn_error *err);

/* The files of an operator's stream directory (each may also end in .gz). */
#define CAIRN_STREAM_IMAGES "images-idx3-ubyte"
#define CAIRN_STREAM_LABELS "labels-idx1-ubyte"

/*
 * Loads an operator's stream of labelled images from dir (CAIRN_STREAM_IMAGES and
 * CAIRN_STREAM_LABELS, plain or gzipped), in the order the files hold them: 28 x 28 images
 * and labels 0..9, the Fashion-MNIST classes the models know. Same returns as
 * cairn_fmnist_load; every error names the file and what is wrong with it.
 */
int cairn_stream_load(cairn_dataset *out, const char *dir, cairn_error *err);

#endif
