/*
 * tests/unit/test_bundle.c — update bundles: build, sign, verify, apply, roll back; and every
 * kind of tampering (flipped byte, wrong key, older version, another base model, wrong shape,
 * a tensor that is not a batchnorm tensor) rejected with the model kept bit for bit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "adapt/bundle.h"
#include "adapt/nn/nn.h"

/* A small CNN with two batchnorms; bn1 has c1 channels. */
static cairn_nn_model *small_model(int c1, uint64_t seed)
{
    cairn_error err;
    cairn_nn_model *m = NULL;
    assert_int_equal(cairn_nn_model_new(&m, 1, 8, 8, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv1", c1, 3, 1, 1, 0, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn1", 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_relu(m, &err), 0);
    assert_int_equal(cairn_nn_add_conv2d(m, "conv2", 6, 3, 1, 1, 0, &err), 0);
    assert_int_equal(cairn_nn_add_batchnorm2d(m, "bn2", 1e-5f, 0.1f, &err), 0);
    assert_int_equal(cairn_nn_add_relu(m, &err), 0);
    assert_int_equal(cairn_nn_add_global_avgpool(m, &err), 0);
    assert_int_equal(cairn_nn_add_flatten(m, &err), 0);
    assert_int_equal(cairn_nn_add_linear(m, "fc", 3, 1, &err), 0);
    cairn_nn_model_init_params(m, seed);
    /* Give every batchnorm tensor distinct values, so that an apply is visible. */
    for (int i = 0; i < cairn_nn_param_count(m); i++) {
        cairn_nn_param *p = cairn_nn_param_at(m, i);
        if (p->layer_type != CAIRN_NN_BATCHNORM2D) continue;
        for (size_t j = 0; j < p->value.numel; j++)
            p->value.data[j] = 0.5f + (float)((seed * 31 + i * 7 + j) % 13) / 10.0f;
    }
    return m;
}

/* A copy of every named tensor's bytes, to compare bit for bit. */
typedef struct {
    int n;
    float **v;
    size_t *numel;
} model_copy;

static model_copy copy_model(cairn_nn_model *m)
{
    model_copy c = {.n = cairn_nn_param_count(m)};
    c.v = calloc((size_t)c.n, sizeof *c.v);
    c.numel = calloc((size_t)c.n, sizeof *c.numel);
    for (int i = 0; i < c.n; i++) {
        cairn_nn_param *p = cairn_nn_param_at(m, i);
        c.numel[i] = p->value.numel;
        c.v[i] = malloc(p->value.numel * sizeof(float));
        memcpy(c.v[i], p->value.data, p->value.numel * sizeof(float));
    }
    return c;
}

static int same_as_copy(cairn_nn_model *m, const model_copy *c)
{
    for (int i = 0; i < c->n; i++)
        if (memcmp(cairn_nn_param_at(m, i)->value.data, c->v[i], c->numel[i] * sizeof(float)))
            return 0;
    return 1;
}

static void free_copy(model_copy *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->v[i]);
    free(c->v);
    free(c->numel);
}

typedef struct {
    cairn_bundle_key *key;
    cairn_nn_model *src; /* the cloud's adapted model */
    cairn_nn_model *dst; /* the device's model */
    cairn_bundle_expect x;
    uint8_t *bundle;
    size_t len;
} fixture;

static void make_bundle(fixture *f, cairn_nn_model *src, uint64_t version, const uint8_t *sha,
                        const cairn_bundle_key *key)
{
    cairn_error err;
    cairn_bundle_build_params bp = cairn_bundle_default_build_params();
    bp.model_name = "edge";
    memcpy(bp.base_sha256, sha, CAIRN_EDGE_SHA256_LEN);
    bp.version = version;
    free(f->bundle);
    f->bundle = NULL;
    int rc = cairn_bundle_build(src, &bp, key, &f->bundle, &f->len, &err);
    if (rc) fail_msg("build: %s", err.msg);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    cairn_error err;
    assert_int_equal(cairn_bundle_key_generate(&f->key, &err), 0);
    f->src = small_model(4, 1);
    f->dst = small_model(4, 2);
    f->x.model_name = "edge";
    cairn_bundle_sha256("base model bytes", 16, f->x.base_sha256);
    f->x.current_version = 0;
    make_bundle(f, f->src, 1, f->x.base_sha256, f->key);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    cairn_bundle_key_free(f->key);
    cairn_nn_model_free(f->src);
    cairn_nn_model_free(f->dst);
    free(f->bundle);
    free(f);
    return 0;
}

/* Applies f->bundle to f->dst and expects code; on a rejection the model must be untouched. */
static void expect_rejected(fixture *f, const cairn_bundle_key *pub, int code)
{
    model_copy before = copy_model(f->dst);
    cairn_error err;
    cairn_bundle_snapshot *snap = (cairn_bundle_snapshot *)&err; /* must be reset to NULL */
    uint64_t v = 77;
    int rc = cairn_bundle_apply(f->dst, f->bundle, f->len, pub, &f->x, &v, &snap, &err);
    assert_int_equal(rc, code);
    assert_true(strlen(err.msg) > 0);
    assert_null(snap);
    assert_int_equal(v, 77);
    assert_true(same_as_copy(f->dst, &before));
    free_copy(&before);
}

static void test_apply_copies_batchnorm_only_and_rolls_back(void **state)
{
    fixture *f = *state;
    cairn_error err;
    model_copy before = copy_model(f->dst);
    cairn_bundle_snapshot *snap = NULL;
    uint64_t v = 0;
    int rc = cairn_bundle_apply(f->dst, f->bundle, f->len, f->key, &f->x, &v, &snap, &err);
    assert_int_equal(rc, 0);
    assert_int_equal(v, 1);
    assert_non_null(snap);
    assert_int_equal(cairn_bundle_snapshot_version(snap), 0);
    for (int i = 0; i < cairn_nn_param_count(f->dst); i++) {
        cairn_nn_param *d = cairn_nn_param_at(f->dst, i), *s = cairn_nn_param_at(f->src, i);
        size_t bytes = d->value.numel * sizeof(float);
        if (d->layer_type == CAIRN_NN_BATCHNORM2D)
            assert_memory_equal(d->value.data, s->value.data, bytes); /* took the cloud's */
        else
            assert_memory_equal(d->value.data, before.v[i], bytes); /* conv/fc untouched */
    }
    assert_false(same_as_copy(f->dst, &before));
    assert_int_equal(cairn_bundle_restore(f->dst, snap, &err), 0);
    assert_true(same_as_copy(f->dst, &before));
    cairn_bundle_snapshot_free(snap);
    free_copy(&before);
}

static void test_affine_only_bundle(void **state)
{
    fixture *f = *state;
    cairn_error err;
    cairn_bundle_build_params bp = cairn_bundle_default_build_params();
    bp.model_name = "edge";
    memcpy(bp.base_sha256, f->x.base_sha256, CAIRN_EDGE_SHA256_LEN);
    bp.version = 3;
    bp.with_running_stats = 0;
    free(f->bundle);
    assert_int_equal(cairn_bundle_build(f->src, &bp, f->key, &f->bundle, &f->len, &err), 0);
    cairn_edge_payload p;
    assert_int_equal(cairn_bundle_verify(f->bundle, f->len, f->key, NULL, &p, &err), 0);
    assert_int_equal(p.n_tensors, 4); /* bn1/bn2 weight and bias */
    for (int i = 0; i < p.n_tensors; i++)
        assert_null(strstr(p.tensors[i].name, "running"));
    assert_int_equal(p.version, 3);
    cairn_edge_payload_free(&p);
}

static void test_flipped_byte_rejected(void **state)
{
    fixture *f = *state;
    /* Every single-byte flip anywhere in the bundle must be refused. */
    for (size_t i = 0; i < f->len; i++) {
        f->bundle[i] ^= 0x01;
        model_copy before = copy_model(f->dst);
        cairn_error err;
        int rc = cairn_bundle_apply(f->dst, f->bundle, f->len, f->key, &f->x, NULL, NULL, &err);
        if (rc == 0) fail_msg("flip of byte %zu of %zu accepted", i, f->len);
        assert_true(same_as_copy(f->dst, &before));
        free_copy(&before);
        f->bundle[i] ^= 0x01;
    }
    /* One flip in the middle of the signed payload: the signature check is what catches it. */
    f->bundle[f->len / 2] ^= 0x80;
    expect_rejected(f, f->key, CAIRN_EAUTH);
}

static void test_wrong_key_rejected(void **state)
{
    fixture *f = *state;
    cairn_bundle_key *other = NULL;
    cairn_error err;
    assert_int_equal(cairn_bundle_key_generate(&other, &err), 0);
    expect_rejected(f, other, CAIRN_EAUTH);             /* signed by f->key, verified with other */
    make_bundle(f, f->src, 1, f->x.base_sha256, other); /* signed by an unknown key */
    expect_rejected(f, f->key, CAIRN_EAUTH);
    cairn_bundle_key_free(other);
}

static void test_older_version_rejected(void **state)
{
    fixture *f = *state;
    f->x.current_version = 5;
    make_bundle(f, f->src, 5, f->x.base_sha256, f->key); /* same version: not newer */
    expect_rejected(f, f->key, CAIRN_ERANGE);
    make_bundle(f, f->src, 4, f->x.base_sha256, f->key);
    expect_rejected(f, f->key, CAIRN_ERANGE);
    make_bundle(f, f->src, 6, f->x.base_sha256, f->key); /* newer: accepted */
    cairn_error err;
    uint64_t v = 0;
    assert_int_equal(cairn_bundle_apply(f->dst, f->bundle, f->len, f->key, &f->x, &v, NULL, &err),
                     0);
    assert_int_equal(v, 6);
}

static void test_other_base_model_rejected(void **state)
{
    fixture *f = *state;
    uint8_t other[CAIRN_EDGE_SHA256_LEN];
    cairn_bundle_sha256("another base model", 18, other);
    make_bundle(f, f->src, 1, other, f->key);
    expect_rejected(f, f->key, CAIRN_EAUTH);
    /* and another model name */
    f->x.model_name = "edge-v2";
    make_bundle(f, f->src, 1, f->x.base_sha256, f->key);
    expect_rejected(f, f->key, CAIRN_EAUTH);
}

static void test_wrong_shape_rejected(void **state)
{
    fixture *f = *state;
    /* Same tensor names, bn1 with 8 channels where the device's has 4. */
    cairn_nn_model *wide = small_model(8, 3);
    make_bundle(f, wide, 1, f->x.base_sha256, f->key);
    expect_rejected(f, f->key, CAIRN_EFORMAT);
    cairn_nn_model_free(wide);
}

static void test_non_batchnorm_tensor_rejected(void **state)
{
    fixture *f = *state;
    /* A validly signed payload that would overwrite conv1.weight (and bn1.weight). */
    cairn_nn_param *conv = cairn_nn_param_find(f->src, "conv1.weight");
    cairn_nn_param *bn = cairn_nn_param_find(f->src, "bn1.weight");
    cairn_edge_tensor t[2] = {{.ndim = 1, .shape = {4}, .numel = 4, .data = bn->value.data},
                              {.ndim = 4, .numel = conv->value.numel, .data = conv->value.data}};
    strcpy(t[0].name, "bn1.weight");
    strcpy(t[1].name, "conv1.weight");
    for (int d = 0; d < 4; d++)
        t[1].shape[d] = conv->value.shape[d];
    cairn_edge_payload p = {.version = 1, .n_tensors = 2, .tensors = t};
    strcpy(p.model_name, "edge");
    memcpy(p.base_sha256, f->x.base_sha256, CAIRN_EDGE_SHA256_LEN);
    uint8_t *pl = NULL;
    size_t pl_len = 0;
    cairn_error err;
    assert_int_equal(cairn_edge_payload_encode(&p, NULL, &pl, &pl_len, &err), 0);
    free(f->bundle);
    assert_int_equal(cairn_bundle_sign_payload(f->key, pl, pl_len, "k1", &f->bundle, &f->len, &err),
                     0);
    free(pl);
    expect_rejected(f, f->key, CAIRN_EFORMAT);
}

static void test_key_pem_round_trip(void **state)
{
    fixture *f = *state;
    cairn_error err;
    char *priv_pem = NULL, *pub_pem = NULL;
    assert_int_equal(cairn_bundle_key_to_pem(f->key, 1, &priv_pem, &err), 0);
    assert_int_equal(cairn_bundle_key_to_pem(f->key, 0, &pub_pem, &err), 0);
    assert_non_null(strstr(priv_pem, "PRIVATE KEY"));
    assert_non_null(strstr(pub_pem, "PUBLIC KEY"));
    cairn_bundle_key *priv = NULL, *pub = NULL;
    assert_int_equal(cairn_bundle_key_from_pem(&priv, priv_pem, strlen(priv_pem), &err), 0);
    assert_int_equal(cairn_bundle_key_from_pem(&pub, pub_pem, strlen(pub_pem), &err), 0);
    assert_true(cairn_bundle_key_has_private(priv));
    assert_false(cairn_bundle_key_has_private(pub));
    /* A bundle signed with the reloaded private key verifies with the reloaded public key. */
    make_bundle(f, f->src, 1, f->x.base_sha256, priv);
    cairn_edge_payload p;
    assert_int_equal(cairn_bundle_verify(f->bundle, f->len, pub, NULL, &p, &err), 0);
    cairn_edge_payload_free(&p);
    /* The public key cannot sign. */
    cairn_bundle_build_params bp = cairn_bundle_default_build_params();
    bp.model_name = "edge";
    bp.version = 1;
    uint8_t *out = NULL;
    size_t len = 0;
    assert_int_equal(cairn_bundle_build(f->src, &bp, pub, &out, &len, &err), CAIRN_EINVAL);
    assert_null(out);
    /* Garbage is not a key. */
    cairn_bundle_key *bad = NULL;
    assert_int_equal(
        cairn_bundle_key_from_pem(&bad, "-----BEGIN PUBLIC KEY-----\nAAAA\n", 32, &err),
        CAIRN_EFORMAT);
    assert_null(bad);
    cairn_bundle_key_free(priv);
    cairn_bundle_key_free(pub);
    free(priv_pem);
    free(pub_pem);
}

static void test_truncated_and_garbage_rejected(void **state)
{
    fixture *f = *state;
    size_t full = f->len;
    for (size_t cut = 0; cut < full; cut += 7) {
        f->len = cut;
        model_copy before = copy_model(f->dst);
        cairn_error err;
        assert_true(cairn_bundle_apply(f->dst, f->bundle, f->len, f->key, &f->x, NULL, NULL, &err) <
                    0);
        assert_true(same_as_copy(f->dst, &before));
        free_copy(&before);
    }
    f->len = full;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_apply_copies_batchnorm_only_and_rolls_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_affine_only_bundle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_byte_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_key_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_older_version_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_base_model_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_shape_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_non_batchnorm_tensor_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_pem_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_and_garbage_rejected, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
