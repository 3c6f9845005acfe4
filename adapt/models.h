/*
 * adapt/models.h — the two CNN architectures of cloud–edge adaptation (DESIGN "adapt/").
 *
 *   edge        ~91k parameters: three 3x3 conv+BN+ReLU blocks (16, 32, 32 channels, 2 max pools)
 *               and a 48-unit hidden linear layer. What devices run, forward only.
 *   foundation  ~0.87M parameters: four 3x3 conv+BN+ReLU (32, 32, 64, 64 channels, 2 max pools),
 *               a 256-unit hidden linear layer. Cloud side; the teacher in CEMA distillation.
 *   foundation-res  a residual CNN (issue 22's teacher), width w (default 64): stem 3x3 conv
 *               (w/2)+BN+ReLU at 28x28; residual blocks (adapt/nn cairn_nn_add_resblock)
 *               w stride 2 (14x14); 2w stride 2, 2w (7x7); 4w stride 2, 4w (4x4); global
 *               average pool, linear(4w -> 10). w = 64: 2.73M parameters.
 * Both take 1 x 28 x 28 inputs in [0, 1] and output 10 logits. Convs carry no bias (the BN
 * after each conv has one); BN uses eps 1e-5, momentum 0.1.
 *
 * Thread-safety: the builders are reentrant; each returns a new model.
 */
#ifndef CAIRN_ADAPT_MODELS_H
#define CAIRN_ADAPT_MODELS_H

#include "adapt/nn/nn.h"
#include "common/error.h"

typedef enum {
    CAIRN_MODEL_EDGE,
    CAIRN_MODEL_FOUNDATION,
    CAIRN_MODEL_FOUNDATION_RES,
} cairn_model_arch;

#define CAIRN_MODEL_RES_WIDTH 64 /* foundation-res default width */

/* "edge" / "foundation" / "foundation-res". */
const char *cairn_model_arch_name(cairn_model_arch a);

/* Parses "edge" / "foundation" / "foundation-res". Returns 0 or CAIRN_EINVAL. */
int cairn_model_arch_parse(const char *s, cairn_model_arch *out, cairn_error *err);

/*
 * Builds the architecture (parameters allocated, not initialised, not prepared). The caller owns
 * *out (cairn_nn_model_free). Returns 0, CAIRN_EINVAL or CAIRN_ENOMEM.
 */
int cairn_model_build(cairn_model_arch a, cairn_nn_model **out, cairn_error *err);

/* As cairn_model_build, with foundation-res's width (even, 2..1024; 0: the default). The other
 * architectures have one width: any other value than 0 is CAIRN_EINVAL for them. */
int cairn_model_build_width(cairn_model_arch a, int width, cairn_nn_model **out, cairn_error *err);

#endif
