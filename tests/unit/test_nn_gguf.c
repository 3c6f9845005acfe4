/*
 * tests/unit/test_nn_gguf.c — adapt/nn models saved to and loaded from GGUF: round trips
 * (file and memory), other tensor types, and hostile files rejected with a reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapt/nn/nn.h"
#include "adapt/nn/nn_gguf.h"

static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static float uni(uint64_t *s, float lo, float hi)
{
    return lo + (hi - lo) * (float)((double)(next(s) >> 11) / 9007199254740992.0);
}

/* Every layer kind, with and without biases. */
static cairn_nn_model *full_model(void)
{
    cairn_error err;
    cairn_nn_model *m;
    assert_int_equal(cairn_nn_model_new(&m, 2, 10, 9, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv1", 4, 3, 1, 1, 0, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn1", 1e-3f, 0.2f, &err), 0);
    assert_int_equal(cairn_nn_add_relu(m, &err), 0);
    assert_int_equal(cairn_nn_add_maxpool2d(m, 2, 2, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv2", 5, 3, 2, 1, 1, &err), 0);
    assert_int_equal(cairn_nn_add_avgpool2d(m, 2, 1, &err), 0);
    assert_int_equal(cairn_nn_add_global_avgpool(m, &err), 0);
    assert_int_equal(cairn_nn_add_flatten(m, &err), 0);
    assert_int_equal(cairn_nn_add_linear(m, "head.fc", 3, 1, &err), 0);
    uint64_t s = 99;
    for (int i = 0; i < cairn_nn_param_count(m); i++) {
        cairn_nn_param *p = cairn_nn_param_at(m, i);
        float lo = p->kind == CAIRN_NN_RUNNING_VAR ? 0.5f : -1.0f;
        for (size_t j = 0; j < p->value.numel; j++)
            p->value.data[j] = uni(&s, lo, 1.0f);
    }
    return m;
}

static void assert_same_model(cairn_nn_model *a, cairn_nn_model *b)
{
    assert_int_equal(cairn_nn_layer_count(a), cairn_nn_layer_count(b));
    for (int i = 0; i < cairn_nn_layer_count(a); i++)
        assert_int_equal(cairn_nn_layer_type_of(a, i), cairn_nn_layer_type_of(b, i));
    int c1, h1, w1, c2, h2, w2;
    cairn_nn_output_shape(a, &c1, &h1, &w1);
    cairn_nn_output_shape(b, &c2, &h2, &w2);
    assert_true(c1 == c2 && h1 == h2 && w1 == w2);
    assert_int_equal(cairn_nn_param_count(a), cairn_nn_param_count(b));
    for (int i = 0; i < cairn_nn_param_count(a); i++) {
        cairn_nn_param *p = cairn_nn_param_at(a, i), *q = cairn_nn_param_at(b, i);
        assert_string_equal(p->name, q->name);
        assert_int_equal(p->kind, q->kind);
        assert_int_equal(p->value.ndim, q->value.ndim);
        for (int d = 0; d < p->value.ndim; d++)
            assert_int_equal(p->value.shape[d], q->value.shape[d]);
        assert_memory_equal(p->value.data, q->value.data, p->value.numel * sizeof(float));
    }
    /* same outputs (eval mode uses the running statistics, which travelled too) */
    cairn_error err;
    assert_int_equal(cairn_nn_model_prepare(a, NULL, &err), 0);
    assert_int_equal(cairn_nn_model_prepare(b, NULL, &err), 0);
    float x[3 * 2 * 10 * 9];
    uint64_t s = 5;
    for (size_t i = 0; i < sizeof(x) / sizeof(float); i++)
        x[i] = uni(&s, -1, 1);
    const float *ya, *yb;
    assert_int_equal(cairn_nn_forward(a, x, 3, &ya, &err), 0);
    float keep[9];
    memcpy(keep, ya, sizeof(keep));
    assert_int_equal(cairn_nn_forward(b, x, 3, &yb, &err), 0);
    assert_memory_equal(keep, yb, sizeof(keep));
}

static void test_roundtrip_file(void **state)
{
    (void)state;
    cairn_error err;
    char path[] = "/tmp/test_nn_gguf_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    cairn_nn_model *m = full_model(), *l;
    assert_int_equal(cairn_nn_save(m, path, &err), 0);
    assert_int_equal(cairn_nn_load(&l, path, &err), 0);
    assert_same_model(m, l);
    /* the file is a GGUF other tools can read: names, dims in GGUF order, F32 */
    cairn_gguf *g;
    assert_int_equal(cairn_gguf_open(&g, path, &err), 0);
    const cairn_gguf_tensor *t = cairn_gguf_find_tensor(g, "conv2.weight");
    assert_non_null(t);
    assert_int_equal(t->type, CAIRN_GGUF_F32);
    assert_int_equal(t->n_dims, 4);
    assert_true(t->dims[0] == 3 && t->dims[1] == 3 && t->dims[2] == 4 && t->dims[3] == 5);
    assert_non_null(cairn_gguf_find_tensor(g, "bn1.running_var"));
    const char *arch;
    assert_int_equal(cairn_gguf_get_str(g, "general.architecture", &arch, NULL, &err), 0);
    assert_string_equal(arch, CAIRN_NN_GGUF_ARCH);
    cairn_gguf_close(g);
    unlink(path);
    cairn_nn_model_free(m);
    cairn_nn_model_free(l);

    assert_int_equal(cairn_nn_load(&l, "/nonexistent/x.gguf", &err), CAIRN_EIO);
    assert_null(l);
}

static void test_roundtrip_memory_extra_metadata(void **state)
{
    (void)state;
    cairn_error err;
    cairn_nn_model *m = full_model(), *l;
    cairn_gguf_writer *w;
    assert_int_equal(cairn_gguf_writer_new(&w, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "general.name", "edge-test", &err), 0);
    assert_int_equal(cairn_nn_save_to_writer(m, w, &err), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "cairn.update.version", 7, &err), 0);
    void *buf;
    size_t len;
    assert_int_equal(cairn_gguf_writer_write_memory(w, &buf, &len, &err), 0);
    cairn_gguf_writer_free(w);
    cairn_gguf *g;
    assert_int_equal(cairn_gguf_open_memory(&g, buf, len, &err), 0);
    assert_int_equal(cairn_nn_load_gguf(&l, g, &err), 0);
    uint32_t v;
    assert_int_equal(cairn_gguf_get_u32(g, "cairn.update.version", &v, &err), 0);
    assert_int_equal(v, 7);
    cairn_gguf_close(g);
    free(buf);
    assert_same_model(m, l);
    cairn_nn_model_free(m);
    cairn_nn_model_free(l);
}

/*
 * A one-conv model written by hand, with one thing broken per `fault`, so that each rejection
 * is tested on a file that differs from a good one in that one respect.
 */
enum fault {
    F_NONE,
    F_ARCH,
    F_NO_TENSOR,
    F_SHAPE,
    F_NAN,
    F_EXTRA_TENSOR,
    F_HUGE_CHANNELS,
    F_ZERO_LAYERS,
    F_UNKNOWN_TYPE,
    F_NO_KERNEL,
    F_F16,
    F_BAD_INPUT,
};

static int load_faulty(enum fault f, cairn_nn_model **out, cairn_error *err)
{
    cairn_error e2;
    cairn_gguf_writer *w;
    assert_int_equal(cairn_gguf_writer_new(&w, &e2), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "general.architecture",
                                               f == F_ARCH ? "llama" : "cairn.cnn", &e2),
                     0);
    const int32_t in[3] = {1, 4, f == F_BAD_INPUT ? -4 : 4};
    assert_int_equal(
        cairn_gguf_writer_add_arr(w, "cairn.cnn.input_shape", CAIRN_GGUF_KV_I32, in, 3, &e2), 0);
    assert_int_equal(
        cairn_gguf_writer_add_u32(w, "cairn.cnn.layer_count", f == F_ZERO_LAYERS ? 0 : 1, &e2), 0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "cairn.cnn.layer.0.type",
                                               f == F_UNKNOWN_TYPE ? "conv3d" : "conv2d", &e2),
                     0);
    assert_int_equal(cairn_gguf_writer_add_str(w, "cairn.cnn.layer.0.name", "c", &e2), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "cairn.cnn.layer.0.out_channels",
                                               f == F_HUGE_CHANNELS ? 1000000000u : 2, &e2),
                     0);
    if (f != F_NO_KERNEL)
        assert_int_equal(cairn_gguf_writer_add_u32(w, "cairn.cnn.layer.0.kernel", 3, &e2), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "cairn.cnn.layer.0.stride", 1, &e2), 0);
    assert_int_equal(cairn_gguf_writer_add_u32(w, "cairn.cnn.layer.0.padding", 1, &e2), 0);
    assert_int_equal(cairn_gguf_writer_add_bool(w, "cairn.cnn.layer.0.bias", true, &e2), 0);
    float wt[18], b[2] = {0.5f, -0.25f};
    for (int i = 0; i < 18; i++)
        wt[i] = 0.125f * (float)(i - 9);
    if (f == F_NAN) wt[4] = NAN;
    const uint64_t wd[4] = {3, 3, 1, 2}, wd_bad[4] = {3, 3, 2, 1}, bd[1] = {2};
    uint32_t type = f == F_F16 ? CAIRN_GGUF_F16 : CAIRN_GGUF_F32;
    if (f != F_NO_TENSOR)
        assert_int_equal(cairn_gguf_writer_add_tensor_f32(w, "c.weight", type, 4,
                                                          f == F_SHAPE ? wd_bad : wd, wt, &e2),
                         0);
    assert_int_equal(cairn_gguf_writer_add_tensor_f32(w, "c.bias", type, 1, bd, b, &e2), 0);
    if (f == F_EXTRA_TENSOR)
        assert_int_equal(cairn_gguf_writer_add_tensor_f32(w, "d.bias", type, 1, bd, b, &e2), 0);
    void *buf;
    size_t len;
    assert_int_equal(cairn_gguf_writer_write_memory(w, &buf, &len, &e2), 0);
    cairn_gguf_writer_free(w);
    cairn_gguf *g;
    assert_int_equal(cairn_gguf_open_memory(&g, buf, len, &e2), 0);
    int rc = cairn_nn_load_gguf(out, g, err);
    cairn_gguf_close(g);
    free(buf);
    return rc;
}

static void test_load_good_and_f16(void **state)
{
    (void)state;
    cairn_error err;
    cairn_nn_model *m;
    assert_int_equal(load_faulty(F_NONE, &m, &err), 0);
    cairn_nn_param *w = cairn_nn_param_find(m, "c.weight");
    assert_non_null(w);
    /* GGUF dims {3,3,1,2} are PyTorch [2,1,3,3] */
    assert_int_equal(w->value.shape[0], 2);
    assert_int_equal(w->value.shape[1], 1);
    assert_true(w->value.data[17] == 0.125f * 8);
    cairn_nn_model_free(m);
    /* F16 tensors decode to the same values (all exactly representable in half) */
    assert_int_equal(load_faulty(F_F16, &m, &err), 0);
    w = cairn_nn_param_find(m, "c.weight");
    for (int i = 0; i < 18; i++)
        assert_true(w->value.data[i] == 0.125f * (float)(i - 9));
    assert_true(cairn_nn_param_find(m, "c.bias")->value.data[1] == -0.25f);
    cairn_nn_model_free(m);
}

static void expect_reject(enum fault f, int code, const char *needle)
{
    cairn_error err = {0};
    cairn_nn_model *m = (cairn_nn_model *)&err; /* must be reset to NULL */
    int rc = load_faulty(f, &m, &err);
    if (rc != code) fail_msg("fault %d: rc %d (%s), expected %d", f, rc, err.msg, code);
    assert_null(m);
    if (!strstr(err.msg, needle)) fail_msg("fault %d: message '%s' lacks '%s'", f, err.msg, needle);
}

static void test_load_rejects_hostile(void **state)
{
    (void)state;
    expect_reject(F_ARCH, CAIRN_EUNSUPPORTED, "llama");
    expect_reject(F_NO_TENSOR, CAIRN_EFORMAT, "'c.weight' missing");
    expect_reject(F_SHAPE, CAIRN_EFORMAT, "c.weight");
    expect_reject(F_NAN, CAIRN_EFORMAT, "element 4");
    expect_reject(F_EXTRA_TENSOR, CAIRN_EFORMAT, "3 tensors");
    expect_reject(F_HUGE_CHANNELS, CAIRN_ELIMIT, "out_channels");
    expect_reject(F_ZERO_LAYERS, CAIRN_EFORMAT, "0 layers");
    expect_reject(F_UNKNOWN_TYPE, CAIRN_EUNSUPPORTED, "conv3d");
    expect_reject(F_NO_KERNEL, CAIRN_EFORMAT, "kernel");
    expect_reject(F_BAD_INPUT, CAIRN_EFORMAT, "input dimension 2");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_file),
        cmocka_unit_test(test_roundtrip_memory_extra_metadata),
        cmocka_unit_test(test_load_good_and_f16),
        cmocka_unit_test(test_load_rejects_hostile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
