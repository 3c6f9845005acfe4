/*
 * generation/synth.h — models of real architectures' shapes with random weights (synth.c says
 * what for and how the weights are made).
 */
#ifndef CAIRN_GENERATION_SYNTH_H
#define CAIRN_GENERATION_SYNTH_H

#include <stdint.h>

#include "common/error.h"

#define CAIRN_SYNTH_SHAPES \
    "llama3-8b, qwen2-0.5b, gemma3-270m, tiny-llama, tiny-qwen2, tiny-gemma3"
#define CAIRN_SYNTH_TYPES "q4_k_m, q8_0, bf16, f16, f32, q4_0, q4_1, q5_0, q4_k, q6_k"

/*
 * Writes a GGUF of the named shape (CAIRN_SYNTH_SHAPES) with weights of type_name
 * (CAIRN_SYNTH_TYPES; q4_k_m mixes Q4_K and Q6_K as llama.cpp's Q4_K_M does) to path,
 * atomically. layers > 0 keeps only that many of the shape's layers. The same seed writes the
 * same file. Returns 0, CAIRN_EINVAL (unknown shape or type), CAIRN_ENOMEM, CAIRN_EIO.
 */
int cairn_synth_write(const char *path, const char *shape_name, const char *type_name,
                      int layers, uint64_t seed, cairn_error *err);

#endif
