/*
 * adapt/nn/nn_gguf.h — saving and loading adapt/nn models as GGUF (proto/gguf.h).
 *
 * A file holds the architecture as metadata and every named tensor (parameters and batchnorm
 * running statistics) under its model name ("conv1.weight"), so a model can be rebuilt from the
 * file alone. Metadata keys:
 *   general.architecture        "cairn.cnn"
 *   cairn.cnn.input_shape       i32[3]: C, H, W
 *   cairn.cnn.layer_count       u32
 *   cairn.cnn.layer.<i>.type    "conv2d" | "batchnorm2d" | "linear" | "relu" | "maxpool2d" |
 *                               "avgpool2d" | "global_avgpool" | "flatten" | "resblock"
 *   cairn.cnn.layer.<i>.name    layers with parameters
 *   conv2d:      .out_channels .kernel .stride .padding (u32), .bias (bool)
 *   batchnorm2d: .eps .momentum (f32)
 *   linear:      .out_features (u32), .bias (bool)
 *   pools:       .kernel .stride (u32)
 *   resblock:    .out_channels .stride (u32), .eps .momentum (f32); its tensors are named
 *                "<name>.conv1.weight" ... (cairn_nn_add_resblock), the projection present exactly
 *                when stride != 1 or out_channels != the input's channels
 * Tensor dims are written in GGUF order (fastest first): a PyTorch [OC, IC, KH, KW] conv weight
 * is stored with dims {KW, KH, IC, OC}. Tensors are saved as F32; load accepts any type that
 * cairn_gguf_dequantize decodes (F16, BF16, Q8_0, ...).
 *
 * Part of the forward half (edge devices load models); needs proto/ but no BLAS.
 * Thread-safety: as for the model; distinct models and files are independent.
 */
#ifndef CAIRN_ADAPT_NN_NN_GGUF_H
#define CAIRN_ADAPT_NN_NN_GGUF_H

#include "adapt/nn/nn.h"
#include "proto/gguf.h"

#define CAIRN_NN_GGUF_ARCH "cairn.cnn"

/*
 * Adds m's architecture metadata and all its named tensors (F32) to w, so that callers can add
 * their own metadata (a model name, a version) before writing. Returns 0 or the writer's error
 * (CAIRN_EINVAL for a duplicate key or tensor already in w, CAIRN_ENOMEM).
 */
int cairn_nn_save_to_writer(const cairn_nn_model *m, cairn_gguf_writer *w, cairn_error *err);

/* Writes m to path atomically (see cairn_gguf_writer_write_file). Returns 0 or a negative code. */
int cairn_nn_save(const cairn_nn_model *m, const char *path, cairn_error *err);

/*
 * Builds a new model from an open GGUF file: architecture from the metadata, values from the
 * tensors. The file is untrusted: every count, size and shape is checked, every tensor must be
 * present with exactly the expected shape and finite values, and no other tensor may be there.
 * On success the caller owns *out (not yet prepared: call cairn_nn_model_prepare). Returns 0,
 * CAIRN_EFORMAT (missing/mismatched key or tensor, bad value, NaN/Inf), CAIRN_EUNSUPPORTED
 * (another architecture, a tensor type that cannot be decoded), CAIRN_ELIMIT (a dimension over
 * the limits below) or CAIRN_ENOMEM. *out is NULL on failure.
 */
int cairn_nn_load_gguf(cairn_nn_model **out, const cairn_gguf *g, cairn_error *err);

/* cairn_nn_load_gguf on the file at path (opened, read, closed). */
int cairn_nn_load(cairn_nn_model **out, const char *path, cairn_error *err);

/* Limits a loaded architecture must respect (beyond them: CAIRN_ELIMIT). */
#define CAIRN_NN_MAX_LAYERS 256
#define CAIRN_NN_MAX_DIM    65536 /* channels, features, image sides */
#define CAIRN_NN_MAX_KERNEL 64

#endif
