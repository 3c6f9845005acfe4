/* tests/unit/test_train.c — the edge/foundation CNNs, training and the committed models
 * (adapt/models.h, adapt/train.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapt/data.h"
#include "adapt/models.h"
#include "adapt/nn/nn_gguf.h"
#include "adapt/train.h"
#include "proto/gguf.h"

typedef struct {
    cairn_dataset train, test;
} fixture;

static int setup(void **state)
{
    struct stat st;
    *state = NULL;
    if (stat(CAIRN_FMNIST_DIR "/t10k-images-idx3-ubyte.gz", &st) != 0 &&
        stat(CAIRN_FMNIST_DIR "/t10k-images-idx3-ubyte", &st) != 0)
        return 0;
    fixture *f = calloc(1, sizeof(*f));
    if (cairn_fmnist_load(&f->train, NULL, CAIRN_FMNIST_TRAIN, NULL) ||
        cairn_fmnist_load(&f->test, NULL, CAIRN_FMNIST_TEST, NULL))
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (f) {
        cairn_dataset_free(&f->train);
        cairn_dataset_free(&f->test);
        free(f);
    }
    return 0;
}

static fixture *data(void **state)
{
    if (!*state) skip();
    return *state;
}

static void test_architectures(void **state)
{
    (void)state;
    for (int a = 0; a < 3; a++) {
        cairn_nn_model *m;
        assert_int_equal(cairn_model_build((cairn_model_arch)a, &m, NULL), 0);
        size_t np = cairn_nn_trainable_count(m);
        if (a == CAIRN_MODEL_EDGE)
            assert_true(np <= 100000);
        else if (a == CAIRN_MODEL_FOUNDATION)
            assert_true(np >= 500000 && np <= 2000000);
        else
            assert_true(np >= 2000000 && np <= 4000000); /* issue 22: a few million */
        /* every conv is followed by a batchnorm (residual blocks have theirs inside) */
        int convs = 0, blocks = 0;
        for (int i = 0; i < cairn_nn_layer_count(m); i++) {
            blocks += cairn_nn_layer_type_of(m, i) == CAIRN_NN_RESBLOCK;
            if (cairn_nn_layer_type_of(m, i) != CAIRN_NN_CONV2D) continue;
            convs++;
            assert_true(i + 1 < cairn_nn_layer_count(m));
            assert_int_equal(cairn_nn_layer_type_of(m, i + 1), CAIRN_NN_BATCHNORM2D);
        }
        assert_true(convs + 2 * blocks >= 3);
        assert_true(a == CAIRN_MODEL_FOUNDATION_RES ? blocks == 5 : blocks == 0);
        int c, h, w;
        cairn_nn_output_shape(m, &c, &h, &w);
        assert_int_equal(c * h * w, 10);
        cairn_nn_model_free(m);
        cairn_model_arch back;
        assert_int_equal(cairn_model_arch_parse(cairn_model_arch_name(a), &back, NULL), 0);
        assert_int_equal((int)back, a);
    }
    cairn_model_arch back;
    assert_int_equal(cairn_model_arch_parse("resnet", &back, NULL), CAIRN_EINVAL);
    /* width: foundation-res only; a narrower one is smaller */
    cairn_nn_model *m;
    assert_int_equal(cairn_model_build_width(CAIRN_MODEL_EDGE, 8, &m, NULL), CAIRN_EINVAL);
    assert_int_equal(cairn_model_build_width(CAIRN_MODEL_FOUNDATION_RES, 3, &m, NULL),
                     CAIRN_EINVAL);
    assert_int_equal(cairn_model_build_width(CAIRN_MODEL_FOUNDATION_RES, 32, &m, NULL), 0);
    size_t n32 = cairn_nn_trainable_count(m);
    assert_true(n32 > 500000 && n32 < 1000000); /* about a quarter of width 64's */
    cairn_nn_model_free(m);
}

/* Bitwise comparison of every named tensor of two models with the same architecture. */
static int same_weights(cairn_nn_model *a, cairn_nn_model *b)
{
    int n = cairn_nn_param_count(a);
    if (n != cairn_nn_param_count(b)) return 0;
    for (int i = 0; i < n; i++) {
        cairn_nn_param *pa = cairn_nn_param_at(a, i), *pb = cairn_nn_param_at(b, i);
        if (pa->value.numel != pb->value.numel ||
            memcmp(pa->value.data, pb->value.data, pa->value.numel * sizeof(float)) != 0)
            return 0;
    }
    return 1;
}

static cairn_train_params tiny(void)
{
    cairn_train_params p = cairn_train_default_params();
    p.epochs = 1;
    p.batch_size = 32;
    p.shards = 2;
    p.limit = 256;
    p.warmup_steps = 2;
    p.seed = 11;
    return p;
}

static void test_reproducible_from_seed(void **state)
{
    fixture *f = data(state);
    cairn_train_params p = tiny();
    p.augment = 1; /* augmentation randomness must be seeded too */
    cairn_nn_model *m1, *m2, *m3, *m4;
    cairn_train_result r1, r2;
    cairn_error err;
    p.threads = 1;
    assert_int_equal(cairn_train_model(CAIRN_MODEL_EDGE, &f->train, &p, &m1, &r1, &err), 0);
    p.threads = 2; /* threads execute shards: the weights must not change */
    assert_int_equal(cairn_train_model(CAIRN_MODEL_EDGE, &f->train, &p, &m2, &r2, &err), 0);
    assert_true(same_weights(m1, m2));
    assert_true(r1.train_loss == r2.train_loss);
    p.seed = 12;
    assert_int_equal(cairn_train_model(CAIRN_MODEL_EDGE, &f->train, &p, &m3, NULL, &err), 0);
    assert_false(same_weights(m1, m3));
    /* the trained weights differ from the seed's initialisation */
    assert_int_equal(cairn_model_build(CAIRN_MODEL_EDGE, &m4, NULL), 0);
    cairn_nn_model_init_params(m4, 11);
    assert_false(same_weights(m1, m4));
    cairn_nn_model_free(m1);
    cairn_nn_model_free(m2);
    cairn_nn_model_free(m3);
    cairn_nn_model_free(m4);
}

static void on_progress(const cairn_train_progress *p, void *ctx)
{
    int *calls = ctx;
    assert_true(p->step >= 1 && p->step <= p->steps);
    assert_true(p->loss > 0 && p->accuracy >= 0 && p->accuracy <= 1);
    assert_true(p->eta_s >= 0 && p->images_per_s > 0);
    (*calls)++;
}

/* A short run learns: test accuracy well above chance (0.1) and the GGUF round trip keeps it. */
static void test_learns_and_saves(void **state)
{
    fixture *f = data(state);
    cairn_train_params p = tiny();
    p.limit = 2048;
    p.epochs = 2;
    p.batch_size = 64;
    p.lr = 0.05f;
    p.warmup_steps = 10;
    int calls = 0;
    p.progress = on_progress;
    p.progress_ctx = &calls;
    p.progress_every = 10;
    cairn_nn_model *m, *back;
    cairn_train_result r;
    cairn_error err;
    cairn_dataset sub;
    assert_int_equal(cairn_train_model(CAIRN_MODEL_EDGE, &f->train, &p, &m, &r, &err), 0);
    assert_true(calls >= 2 * (2048 / 64 / 10));
    assert_true(r.train_accuracy > 0.5);
    assert_int_equal(cairn_dataset_subset(&sub, &f->test, 1000, NULL), 0);
    double acc, acc_back;
    assert_int_equal(cairn_eval_accuracy(m, &sub, &acc, &err), 0);
    assert_true(acc > 0.6);

    char path[] = "/tmp/cairn_train_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(cairn_train_save(m, CAIRN_MODEL_EDGE, &p, &r, acc, path, &err), 0);
    assert_int_equal(cairn_nn_load(&back, path, &err), 0);
    assert_int_equal(cairn_eval_accuracy(back, &sub, &acc_back, &err), 0);
    assert_true(acc_back == acc);
    cairn_gguf *g;
    assert_int_equal(cairn_gguf_open(&g, path, &err), 0);
    const char *s;
    size_t len;
    uint64_t seed;
    uint32_t epochs;
    float facc;
    assert_int_equal(cairn_gguf_get_str(g, "cairn.model.arch", &s, &len, &err), 0);
    assert_int_equal(len, 4);
    assert_memory_equal(s, "edge", 4);
    assert_int_equal(cairn_gguf_get_str(g, "cairn.train.dataset", &s, &len, &err), 0);
    assert_memory_equal(s, "fashion-mnist", len);
    assert_int_equal(cairn_gguf_get_u64(g, "cairn.train.seed", &seed, &err), 0);
    assert_int_equal(seed, p.seed);
    assert_int_equal(cairn_gguf_get_u32(g, "cairn.train.epochs", &epochs, &err), 0);
    assert_int_equal(epochs, 2);
    assert_int_equal(cairn_gguf_get_f32(g, "cairn.train.accuracy", &facc, &err), 0);
    assert_float_equal(facc, r.train_accuracy, 1e-6);
    cairn_gguf_close(g);
    unlink(path);
    cairn_dataset_free(&sub);
    cairn_nn_model_free(m);
    cairn_nn_model_free(back);
}

/* AugMix + JSD training: reproducible from the seed whatever the threads, and different from
 * the same run without it (the views and the consistency term change the steps); a checkpoint
 * is written after each epoch and a run resumes from it. */
static void test_augmix_training(void **state)
{
    fixture *f = data(state);
    cairn_train_params p = cairn_train_default_params();
    p.epochs = 2;
    p.batch_size = 16;
    p.shards = 2;
    p.limit = 64;
    p.warmup_steps = 2;
    p.seed = 5;
    p.width = 4;
    p.augment = 1;
    p.augmix = 1;
    char ck[] = "/tmp/cairn_train_ck_XXXXXX";
    int fd = mkstemp(ck);
    assert_true(fd >= 0);
    close(fd);
    p.checkpoint = ck;
    cairn_nn_model *m1, *m2, *m3, *m4;
    cairn_train_result r1, r2;
    cairn_error err;
    p.threads = 1;
    assert_int_equal(cairn_train_model(CAIRN_MODEL_FOUNDATION_RES, &f->train, &p, &m1, &r1, &err),
                     0);
    /* the checkpoint holds the final weights after 2 epochs */
    cairn_nn_model *ckm;
    assert_int_equal(cairn_nn_load(&ckm, ck, &err), 0);
    assert_true(same_weights(m1, ckm));
    cairn_nn_model_free(ckm);
    cairn_gguf *g;
    uint32_t done;
    assert_int_equal(cairn_gguf_open(&g, ck, &err), 0);
    assert_int_equal(cairn_gguf_get_u32(g, "cairn.train.epochs_done", &done, &err), 0);
    assert_int_equal(done, 2);
    cairn_gguf_close(g);
    p.threads = 2;
    p.checkpoint = NULL;
    assert_int_equal(cairn_train_model(CAIRN_MODEL_FOUNDATION_RES, &f->train, &p, &m2, &r2, &err),
                     0);
    assert_true(same_weights(m1, m2));
    assert_true(r1.train_loss == r2.train_loss);
    p.augmix = 0;
    assert_int_equal(cairn_train_model(CAIRN_MODEL_FOUNDATION_RES, &f->train, &p, &m3, NULL, &err),
                     0);
    assert_false(same_weights(m1, m3));
    /* resume the 2-epoch run's checkpoint for a third epoch */
    p.augmix = 1;
    p.epochs = 3;
    p.resume = ck;
    p.start_epoch = 2;
    assert_int_equal(cairn_train_model(CAIRN_MODEL_FOUNDATION_RES, &f->train, &p, &m4, NULL, &err),
                     0);
    assert_false(same_weights(m1, m4));
    /* a checkpoint of another width is refused */
    cairn_nn_model *bad;
    p.width = 6;
    assert_int_equal(cairn_train_model(CAIRN_MODEL_FOUNDATION_RES, &f->train, &p, &bad, NULL, &err),
                     CAIRN_EINVAL);
    assert_null(bad);
    /* start_epoch without a checkpoint to resume from */
    p.width = 4;
    p.resume = NULL;
    assert_int_equal(cairn_train_model(CAIRN_MODEL_FOUNDATION_RES, &f->train, &p, &bad, NULL, &err),
                     CAIRN_EINVAL);
    unlink(ck);
    cairn_nn_model_free(m1);
    cairn_nn_model_free(m2);
    cairn_nn_model_free(m3);
    cairn_nn_model_free(m4);
}

static void test_bad_params(void **state)
{
    fixture *f = data(state);
    cairn_train_params p = tiny();
    cairn_nn_model *m;
    cairn_error err;
    p.batch_size = 33; /* not a multiple of 2 shards */
    assert_int_equal(cairn_train_model(CAIRN_MODEL_EDGE, &f->train, &p, &m, NULL, &err),
                     CAIRN_EINVAL);
    assert_null(m);
    p = tiny();
    p.limit = 16; /* fewer images than a batch */
    assert_int_equal(cairn_train_model(CAIRN_MODEL_EDGE, &f->train, &p, &m, NULL, &err),
                     CAIRN_EINVAL);
    p = tiny();
    p.lr = 0;
    assert_int_equal(cairn_train_model(CAIRN_MODEL_EDGE, &f->train, &p, &m, NULL, &err),
                     CAIRN_EINVAL);
    cairn_dataset wrong = f->train;
    wrong.n_classes = 3;
    p = tiny();
    assert_int_equal(cairn_train_model(CAIRN_MODEL_EDGE, &wrong, &p, &m, NULL, &err), CAIRN_EINVAL);
}

/* adapt/models/<name>.gguf: the committed, trained models (see adapt/models/README.md). */
static void committed_model_path(char *buf, size_t cap, const char *name)
{
    const char *dir = getenv("CAIRN_ADAPT_MODELS");
    const char *td = getenv("CAIRN_TEST_DATA");
    if (dir)
        snprintf(buf, cap, "%s/%s.gguf", dir, name);
    else if (td)
        snprintf(buf, cap, "%s/../../adapt/models/%s.gguf", td, name);
    else
        snprintf(buf, cap, "adapt/models/%s.gguf", name);
}

static void check_committed(void **state, const char *name, double target, int n_test)
{
    fixture *f = data(state);
    char path[4096];
    committed_model_path(path, sizeof(path), name);
    cairn_nn_model *m;
    cairn_error err;
    if (cairn_nn_load(&m, path, &err) != 0) fail_msg("cannot load %s: %s", path, err.msg);
    cairn_dataset sub;
    const cairn_dataset *test = &f->test;
    if (n_test < f->test.n) {
        assert_int_equal(cairn_dataset_subset(&sub, &f->test, n_test, NULL), 0);
        test = &sub;
    }
    double acc;
    assert_int_equal(cairn_eval_accuracy(m, test, &acc, &err), 0);
    printf("%s: clean test accuracy %.4f on %d images\n", name, acc, test->n);
    assert_true(acc >= target);
    if (test != &f->test) cairn_dataset_free(&sub);
    cairn_nn_model_free(m);
}

static void test_committed_edge(void **state)
{
    check_committed(state, "edge", 0.90, 10000);
}

static void test_committed_foundation(void **state)
{
    check_committed(state, "foundation", 0.93, 10000);
}

/* The cloud's teacher for CEMA (issue 22): AugMix-trained, 0.8951 when committed. */
static void test_committed_teacher(void **state)
{
    check_committed(state, "foundation-res-w32", 0.89, 10000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_architectures),        cmocka_unit_test(test_reproducible_from_seed),
        cmocka_unit_test(test_learns_and_saves),     cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_augmix_training),      cmocka_unit_test(test_committed_edge),
        cmocka_unit_test(test_committed_foundation), cmocka_unit_test(test_committed_teacher),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
