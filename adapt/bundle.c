/*
 * adapt/bundle.c — building, signing, verifying and applying update bundles (adapt/bundle.h).
 */
#include "adapt/bundle.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

struct cairn_bundle_key {
    EVP_PKEY *pkey;
    int has_private;
};

/* ---- Keys ----------------------------------------------------------------------------------- */

static int wrap_key(cairn_bundle_key **out, EVP_PKEY *pk, int priv, cairn_error *err)
{
    cairn_bundle_key *k = calloc(1, sizeof *k);
    if (!k) {
        EVP_PKEY_free(pk);
        return cairn_errorf(err, CAIRN_ENOMEM, "bundle key");
    }
    k->pkey = pk;
    k->has_private = priv;
    *out = k;
    return 0;
}

int cairn_bundle_key_generate(cairn_bundle_key **out, cairn_error *err)
{
    *out = NULL;
    EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!pk) return cairn_errorf(err, CAIRN_ENOMEM, "Ed25519 key generation failed");
    return wrap_key(out, pk, 1, err);
}

int cairn_bundle_key_from_pem(cairn_bundle_key **out, const char *pem, size_t len, cairn_error *err)
{
    *out = NULL;
    if (!pem || len == 0 || len > (1u << 20))
        return cairn_errorf(err, CAIRN_EFORMAT, "key: empty or oversized PEM (%zu bytes)", len);
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio) return cairn_errorf(err, CAIRN_ENOMEM, "key: BIO");
    int priv = 1;
    EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    if (!pk) {
        priv = 0;
        (void)BIO_reset(bio);
        pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    }
    BIO_free(bio);
    if (!pk) return cairn_errorf(err, CAIRN_EFORMAT, "key: no PEM private or public key found");
    if (EVP_PKEY_get_id(pk) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(pk);
        return cairn_errorf(err, CAIRN_EFORMAT, "key: not an Ed25519 key");
    }
    return wrap_key(out, pk, priv, err);
}

int cairn_bundle_key_load(cairn_bundle_key **out, const char *path, cairn_error *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "key %s: %s", path, strerror(errno));
    char buf[16384];
    size_t n = fread(buf, 1, sizeof buf, f);
    int bad = ferror(f) || !feof(f);
    fclose(f);
    if (bad)
        return cairn_errorf(err, CAIRN_EIO, "key %s: unreadable or over %zu bytes", path,
                            sizeof buf);
    int rc = cairn_bundle_key_from_pem(out, buf, n, err);
    if (rc) cairn_error_prefix(err, "%s", path);
    return rc;
}

int cairn_bundle_key_to_pem(const cairn_bundle_key *k, int private_part, char **out,
                            cairn_error *err)
{
    *out = NULL;
    if (private_part && !k->has_private)
        return cairn_errorf(err, CAIRN_EINVAL, "key: no private part to write");
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio) return cairn_errorf(err, CAIRN_ENOMEM, "key: BIO");
    int ok = private_part ? PEM_write_bio_PrivateKey(bio, k->pkey, NULL, NULL, 0, NULL, NULL)
                          : PEM_write_bio_PUBKEY(bio, k->pkey);
    char *data;
    long n = ok ? BIO_get_mem_data(bio, &data) : 0;
    char *s = n > 0 ? malloc((size_t)n + 1) : NULL;
    if (s) {
        memcpy(s, data, (size_t)n);
        s[n] = 0;
    }
    BIO_free(bio);
    if (!s) return cairn_errorf(err, CAIRN_ENOMEM, "key: PEM encoding failed");
    *out = s;
    return 0;
}

int cairn_bundle_key_has_private(const cairn_bundle_key *k)
{
    return k && k->has_private;
}

void cairn_bundle_key_free(cairn_bundle_key *k)
{
    if (!k) return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

/* ---- Hashes ---------------------------------------------------------------------------------- */

void cairn_bundle_sha256(const void *buf, size_t len, uint8_t out[CAIRN_EDGE_SHA256_LEN])
{
    unsigned int n = 0;
    EVP_Digest(buf, len, out, &n, EVP_sha256(), NULL);
}

int cairn_bundle_sha256_file(const char *path, uint8_t out[CAIRN_EDGE_SHA256_LEN], cairn_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = 0;
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "sha256 context");
    } else {
        unsigned char buf[65536];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            EVP_DigestUpdate(ctx, buf, n);
        if (ferror(f)) rc = cairn_errorf(err, CAIRN_EIO, "%s: read error", path);
        unsigned int len = 0;
        if (!rc) EVP_DigestFinal_ex(ctx, out, &len);
    }
    EVP_MD_CTX_free(ctx);
    fclose(f);
    return rc;
}

/* ---- Which tensors a bundle may carry ---------------------------------------------------- */

static int is_norm_affine(const cairn_nn_param *p)
{
    return p->kind == CAIRN_NN_NORM_WEIGHT || p->kind == CAIRN_NN_NORM_BIAS;
}

static int is_norm_stat(const cairn_nn_param *p)
{
    return p->kind == CAIRN_NN_RUNNING_MEAN || p->kind == CAIRN_NN_RUNNING_VAR;
}

/* ---- Building ------------------------------------------------------------------------------ */

cairn_bundle_build_params cairn_bundle_default_build_params(void)
{
    cairn_bundle_build_params p;
    memset(&p, 0, sizeof p);
    p.with_running_stats = 1;
    return p;
}

static int ed25519_sign(const cairn_bundle_key *k, const uint8_t *msg, size_t len,
                        uint8_t sig[CAIRN_EDGE_SIG_LEN], cairn_error *err)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t siglen = CAIRN_EDGE_SIG_LEN;
    int ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, k->pkey) == 1 &&
             EVP_DigestSign(ctx, sig, &siglen, msg, len) == 1 && siglen == CAIRN_EDGE_SIG_LEN;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : cairn_errorf(err, CAIRN_EAUTH, "Ed25519 signing failed");
}

int cairn_bundle_build(cairn_nn_model *m, const cairn_bundle_build_params *p,
                       const cairn_bundle_key *priv, uint8_t **out, size_t *len, cairn_error *err)
{
    *out = NULL;
    *len = 0;
    if (!p->model_name || !*p->model_name)
        return cairn_errorf(err, CAIRN_EINVAL, "bundle: model name required");
    if (p->version == 0) return cairn_errorf(err, CAIRN_EINVAL, "bundle: version must be > 0");
    if (!cairn_bundle_key_has_private(priv))
        return cairn_errorf(err, CAIRN_EINVAL, "bundle: signing needs a private key");
    if (strlen(p->model_name) >= CAIRN_EDGE_STR_MAX ||
        (p->key_id && strlen(p->key_id) >= CAIRN_EDGE_STR_MAX))
        return cairn_errorf(err, CAIRN_EINVAL, "bundle: model name or key id too long");

    int np = cairn_nn_param_count(m), nt = 0;
    cairn_edge_payload pl;
    memset(&pl, 0, sizeof pl);
    pl.tensors = calloc(np > 0 ? (size_t)np : 1, sizeof *pl.tensors);
    if (!pl.tensors) return cairn_errorf(err, CAIRN_ENOMEM, "bundle: %d tensors", np);
    for (int i = 0; i < np; i++) {
        cairn_nn_param *q = cairn_nn_param_at(m, i);
        if (!is_norm_affine(q) && !(p->with_running_stats && is_norm_stat(q))) continue;
        cairn_edge_tensor *t = &pl.tensors[nt++];
        snprintf(t->name, sizeof t->name, "%s", q->name);
        t->ndim = q->value.ndim;
        for (int d = 0; d < q->value.ndim; d++)
            t->shape[d] = q->value.shape[d];
        t->numel = q->value.numel;
        t->data = q->value.data; /* borrowed: the encoder copies */
    }
    int rc = 0;
    uint8_t *payload = NULL, *env = NULL;
    size_t payload_len = 0, env_len = 0;
    if (nt == 0) {
        rc = cairn_errorf(err, CAIRN_EINVAL, "bundle: the model has no batchnorm tensors");
        goto done;
    }
    snprintf(pl.model_name, sizeof pl.model_name, "%s", p->model_name);
    memcpy(pl.base_sha256, p->base_sha256, CAIRN_EDGE_SHA256_LEN);
    pl.version = p->version;
    if (p->created_unix_ms) {
        pl.created_unix_ms = p->created_unix_ms;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        pl.created_unix_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    }
    pl.n_tensors = nt;
    if ((rc = cairn_edge_payload_encode(&pl, NULL, &payload, &payload_len, err))) goto done;
    if ((rc =
             cairn_bundle_sign_payload(priv, payload, payload_len, p->key_id, &env, &env_len, err)))
        goto done;
    *out = env;
    *len = env_len;
done:
    free(payload);
    free(pl.tensors); /* data pointers were borrowed */
    return rc;
}

int cairn_bundle_sign_payload(const cairn_bundle_key *priv, const uint8_t *payload,
                              size_t payload_len, const char *key_id, uint8_t **out, size_t *len,
                              cairn_error *err)
{
    *out = NULL;
    *len = 0;
    if (!cairn_bundle_key_has_private(priv))
        return cairn_errorf(err, CAIRN_EINVAL, "bundle: signing needs a private key");
    if (!payload || !payload_len) return cairn_errorf(err, CAIRN_EINVAL, "bundle: empty payload");
    if (key_id && strlen(key_id) >= CAIRN_EDGE_STR_MAX)
        return cairn_errorf(err, CAIRN_EINVAL, "bundle: key id too long");
    cairn_edge_envelope e;
    memset(&e, 0, sizeof e);
    e.payload = (uint8_t *)payload; /* only read by the encoder */
    e.payload_len = payload_len;
    snprintf(e.key_id, sizeof e.key_id, "%s", key_id ? key_id : "");
    int rc = ed25519_sign(priv, payload, payload_len, e.signature, err);
    if (!rc) rc = cairn_edge_envelope_encode(&e, out, len, err);
    return rc;
}

/* ---- Verifying ------------------------------------------------------------------------------ */

int cairn_bundle_verify(const uint8_t *buf, size_t len, const cairn_bundle_key *pub,
                        const cairn_edge_limits *lim, cairn_edge_payload *out, cairn_error *err)
{
    memset(out, 0, sizeof *out);
    if (!pub) return cairn_errorf(err, CAIRN_EINVAL, "bundle: no verification key");
    cairn_edge_envelope e;
    int rc = cairn_edge_envelope_decode(buf, len, lim, &e, err);
    if (rc) return rc;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pub->pkey) == 1 &&
             EVP_DigestVerify(ctx, e.signature, CAIRN_EDGE_SIG_LEN, e.payload, e.payload_len) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        rc = cairn_errorf(err, CAIRN_EAUTH, "bundle: the Ed25519 signature does not verify");
    else
        rc = cairn_edge_payload_decode(e.payload, e.payload_len, lim, out, err);
    cairn_edge_envelope_free(&e);
    return rc;
}

/* ---- Applying -------------------------------------------------------------------------------- */

struct cairn_bundle_snapshot {
    uint64_t version;
    int n;
    char (*names)[CAIRN_NN_NAME_MAX];
    float **values;
    size_t *numel;
};

void cairn_bundle_snapshot_free(cairn_bundle_snapshot *s)
{
    if (!s) return;
    for (int i = 0; s->values && i < s->n; i++)
        free(s->values[i]);
    free(s->values);
    free(s->names);
    free(s->numel);
    free(s);
}

uint64_t cairn_bundle_snapshot_version(const cairn_bundle_snapshot *s)
{
    return s ? s->version : 0;
}

static int same_shape(const cairn_nn_param *q, const cairn_edge_tensor *t)
{
    if (q->value.ndim != t->ndim) return 0;
    for (int d = 0; d < t->ndim; d++)
        if (q->value.shape[d] != t->shape[d]) return 0;
    return 1;
}

int cairn_bundle_apply_payload(cairn_nn_model *m, const cairn_edge_payload *p,
                               const cairn_bundle_expect *x, cairn_bundle_snapshot **prev,
                               cairn_error *err)
{
    if (prev) *prev = NULL;
    /* Rule 2: the same model and base. */
    if (!x->model_name || strcmp(p->model_name, x->model_name) != 0)
        return cairn_errorf(err, CAIRN_EAUTH, "bundle: for model '%s', this device runs '%s'",
                            p->model_name, x->model_name ? x->model_name : "");
    if (memcmp(p->base_sha256, x->base_sha256, CAIRN_EDGE_SHA256_LEN) != 0)
        return cairn_errorf(err, CAIRN_EAUTH,
                            "bundle: built for another base model (SHA-256 "
                            "%02x%02x%02x%02x..., this model %02x%02x%02x%02x...)",
                            p->base_sha256[0], p->base_sha256[1], p->base_sha256[2],
                            p->base_sha256[3], x->base_sha256[0], x->base_sha256[1],
                            x->base_sha256[2], x->base_sha256[3]);
    /* Rule 3: newer. */
    if (p->version <= x->current_version)
        return cairn_errorf(err, CAIRN_ERANGE, "bundle: version %llu is not newer than %llu",
                            (unsigned long long)p->version, (unsigned long long)x->current_version);
    /* Rule 4: every tensor, before any write. */
    cairn_nn_param **dst = calloc((size_t)p->n_tensors, sizeof *dst);
    if (!dst) return cairn_errorf(err, CAIRN_ENOMEM, "bundle: %d tensors", p->n_tensors);
    int rc = 0;
    for (int i = 0; i < p->n_tensors && !rc; i++) {
        const cairn_edge_tensor *t = &p->tensors[i];
        cairn_nn_param *q = cairn_nn_param_find(m, t->name);
        if (!q)
            rc = cairn_errorf(err, CAIRN_EFORMAT, "bundle: the model has no tensor '%s'", t->name);
        else if (!is_norm_affine(q) && !is_norm_stat(q))
            rc = cairn_errorf(err, CAIRN_EFORMAT,
                              "bundle: tensor '%s' is not a batchnorm tensor (refused)", t->name);
        else if (!same_shape(q, t))
            rc = cairn_errorf(err, CAIRN_EFORMAT,
                              "bundle: tensor '%s' has %zu values / %d dims, the model's %zu / %d",
                              t->name, t->numel, t->ndim, q->value.numel, q->value.ndim);
        else if (q->kind == CAIRN_NN_RUNNING_VAR)
            for (size_t j = 0; j < t->numel && !rc; j++)
                if (!(t->data[j] >= 0.0f))
                    rc = cairn_errorf(err, CAIRN_EFORMAT,
                                      "bundle: '%s'[%zu] = %g is a negative "
                                      "variance",
                                      t->name, j, (double)t->data[j]);
        if (!rc) {
            for (size_t j = 0; j < t->numel && !rc; j++)
                if (!isfinite(t->data[j]))
                    rc = cairn_errorf(err, CAIRN_EFORMAT, "bundle: '%s'[%zu] is not finite",
                                      t->name, j);
        }
        dst[i] = q;
    }
    cairn_bundle_snapshot *s = NULL;
    if (!rc && prev) {
        s = calloc(1, sizeof *s);
        if (s) {
            s->version = x->current_version;
            s->names = calloc((size_t)p->n_tensors, sizeof *s->names);
            s->values = calloc((size_t)p->n_tensors, sizeof *s->values);
            s->numel = calloc((size_t)p->n_tensors, sizeof *s->numel);
        }
        if (!s || !s->names || !s->values || !s->numel) {
            rc = cairn_errorf(err, CAIRN_ENOMEM, "bundle: snapshot");
        } else {
            for (int i = 0; i < p->n_tensors && !rc; i++) {
                s->values[i] = malloc(dst[i]->value.numel * sizeof(float));
                if (!s->values[i]) {
                    rc = cairn_errorf(err, CAIRN_ENOMEM, "bundle: snapshot of '%s'", dst[i]->name);
                    break;
                }
                s->n = i + 1;
                memcpy(s->values[i], dst[i]->value.data, dst[i]->value.numel * sizeof(float));
                snprintf(s->names[i], sizeof s->names[i], "%s", dst[i]->name);
                s->numel[i] = dst[i]->value.numel;
            }
        }
    }
    if (!rc) {
        /* Nothing below can fail: the all-or-nothing point. */
        for (int i = 0; i < p->n_tensors; i++)
            memcpy(dst[i]->value.data, p->tensors[i].data, p->tensors[i].numel * sizeof(float));
        if (prev) *prev = s;
    } else {
        cairn_bundle_snapshot_free(s);
    }
    free(dst);
    return rc;
}

int cairn_bundle_apply(cairn_nn_model *m, const uint8_t *buf, size_t len,
                       const cairn_bundle_key *pub, const cairn_bundle_expect *x,
                       uint64_t *new_version, cairn_bundle_snapshot **prev, cairn_error *err)
{
    if (prev) *prev = NULL;
    cairn_edge_payload p;
    int rc = cairn_bundle_verify(buf, len, pub, NULL, &p, err);
    if (rc) return rc;
    rc = cairn_bundle_apply_payload(m, &p, x, prev, err);
    if (!rc && new_version) *new_version = p.version;
    cairn_edge_payload_free(&p);
    return rc;
}

int cairn_bundle_restore(cairn_nn_model *m, const cairn_bundle_snapshot *s, cairn_error *err)
{
    for (int i = 0; i < s->n; i++) {
        cairn_nn_param *q = cairn_nn_param_find(m, s->names[i]);
        if (!q || q->value.numel != s->numel[i])
            return cairn_errorf(err, CAIRN_EINVAL, "rollback: tensor '%s' missing or resized",
                                s->names[i]);
    }
    for (int i = 0; i < s->n; i++)
        memcpy(cairn_nn_param_find(m, s->names[i])->value.data, s->values[i],
               s->numel[i] * sizeof(float));
    return 0;
}
