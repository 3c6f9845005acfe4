/*
 * adapt/nn/fwd_linkcheck.c — links against the forward half of adapt/nn alone (no BLAS, no
 * backward/optimizer objects), as clients/edge will, and runs a forward pass through a GGUF
 * round trip in memory. The build failing to link, or this exiting non-zero, means the forward
 * half grew a dependency on the training half.
 */
#include <stdio.h>
#include <stdlib.h>

#include "adapt/nn/nn.h"
#include "adapt/nn/nn_gguf.h"

int main(void)
{
    cairn_error err;
    cairn_nn_model *m = NULL, *l = NULL;
    cairn_gguf_writer *w = NULL;
    cairn_gguf *g = NULL;
    void *buf = NULL;
    size_t len;
    int rc = cairn_nn_model_new(&m, 1, 8, 8, &err);
    if (!rc) rc = cairn_nn_add_conv2d(m, "conv1", 4, 3, 1, 1, 0, &err);
    if (!rc) rc = cairn_nn_add_batchnorm2d(m, "bn1", 1e-5f, 0.1f, &err);
    if (!rc) rc = cairn_nn_add_relu(m, &err);
    if (!rc) rc = cairn_nn_add_maxpool2d(m, 2, 2, &err);
    if (!rc) rc = cairn_nn_add_global_avgpool(m, &err);
    if (!rc) rc = cairn_nn_add_flatten(m, &err);
    if (!rc) rc = cairn_nn_add_linear(m, "fc", 3, 1, &err);
    if (!rc) cairn_nn_model_init_params(m, 1);
    if (!rc) rc = cairn_gguf_writer_new(&w, &err);
    if (!rc) rc = cairn_nn_save_to_writer(m, w, &err);
    if (!rc) rc = cairn_gguf_writer_write_memory(w, &buf, &len, &err);
    if (!rc) rc = cairn_gguf_open_memory(&g, buf, len, &err);
    if (!rc) rc = cairn_nn_load_gguf(&l, g, &err);
    cairn_nn_model_params p = cairn_nn_model_default_params();
    p.max_batch = 2;
    if (!rc) rc = cairn_nn_model_prepare(l, &p, &err);
    float x[2 * 64], prob[2 * 3], h[2];
    for (int i = 0; i < 128; i++)
        x[i] = (float)((i * 37) % 11) / 11.0f;
    const float *y = NULL;
    if (!rc) rc = cairn_nn_forward(l, x, 2, &y, &err);
    if (!rc) {
        cairn_nn_softmax(y, 2, 3, prob);
        cairn_nn_entropy(y, 2, 3, h);
        float s = prob[0] + prob[1] + prob[2];
        if (s < 0.999f || s > 1.001f || !(h[0] >= 0.0f)) rc = CAIRN_EINVAL;
    }
    if (rc) fprintf(stderr, "fwd_linkcheck: %s (%s)\n", err.msg, cairn_strerror(rc));
    cairn_nn_model_free(l);
    cairn_gguf_close(g);
    free(buf);
    cairn_gguf_writer_free(w);
    cairn_nn_model_free(m);
    return rc ? 1 : 0;
}
