/*
 * adapt/bundle.h — update bundles: the cloud's distilled normalization-layer parameters, sent to
 * edge devices signed (DESIGN "Edge protocol").
 *
 * A bundle is an UpdateBundle message (proto/edge.proto): a serialized BundlePayload — model
 * name, SHA-256 of the base model's GGUF file, a version, named float tensors — and an Ed25519
 * signature (RFC 8032, OpenSSL EVP_PKEY_ED25519) over exactly those payload bytes.
 *
 * A bundle may carry only batchnorm tensors: gamma and beta ("bnX.weight" / "bnX.bias") and,
 * when built with with_running_stats, the running mean and variance. A device applies one only
 * when, all of them:
 *   1. the signature verifies with the device's pinned public key;
 *   2. the model name and the base-model SHA-256 match the model the device loaded;
 *   3. the version is strictly newer than the one the device runs;
 *   4. every tensor names a batchnorm tensor of the model, with exactly its shape; values are
 *      finite (running variances >= 0).
 * Everything is checked before the first write, and the writes are plain copies into memory that
 * already exists, so the apply is all-or-nothing; the previous values are kept in a snapshot for
 * rollback. On any rejection the model keeps its parameters bit for bit.
 *
 * BLAS-free: cloud (cairnd, adapt/cema) and edge (libcairn_edge) both link it.
 * Thread-safety: functions are reentrant; a key may be shared by threads for signing and
 * verifying (OpenSSL keys are immutable once loaded); a model is the caller's to guard.
 */
#ifndef CAIRN_ADAPT_BUNDLE_H
#define CAIRN_ADAPT_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include "adapt/nn/nn.h"
#include "common/error.h"
#include "proto/edge.h"

/* ---- Keys ----------------------------------------------------------------------------------- */

typedef struct cairn_bundle_key cairn_bundle_key;

/* A fresh Ed25519 key pair. The caller owns *out (cairn_bundle_key_free). Returns 0 or
 * CAIRN_ENOMEM. */
int cairn_bundle_key_generate(cairn_bundle_key **out, cairn_error *err);

/*
 * Reads a PEM key: a private key ("PRIVATE KEY", can sign and verify) or a public key ("PUBLIC
 * KEY", verify only). Anything but Ed25519 is refused. Returns 0, CAIRN_EFORMAT (not PEM, not an
 * Ed25519 key) or CAIRN_EIO (file). The caller owns *out.
 */
int cairn_bundle_key_from_pem(cairn_bundle_key **out, const char *pem, size_t len,
                              cairn_error *err);
int cairn_bundle_key_load(cairn_bundle_key **out, const char *path, cairn_error *err);

/* Writes the private (private_part != 0; needs a private key) or the public key as PEM into a
 * malloc'ed NUL-terminated string *out (caller frees). Returns 0, CAIRN_EINVAL or CAIRN_ENOMEM. */
int cairn_bundle_key_to_pem(const cairn_bundle_key *k, int private_part, char **out,
                            cairn_error *err);

/* 1 when k can sign. */
int cairn_bundle_key_has_private(const cairn_bundle_key *k);

void cairn_bundle_key_free(cairn_bundle_key *k); /* NULL is a no-op */

/* ---- Hashes ---------------------------------------------------------------------------------- */

void cairn_bundle_sha256(const void *buf, size_t len, uint8_t out[CAIRN_EDGE_SHA256_LEN]);
/* SHA-256 of a file's bytes (streamed). Returns 0 or CAIRN_EIO. */
int cairn_bundle_sha256_file(const char *path, uint8_t out[CAIRN_EDGE_SHA256_LEN],
                             cairn_error *err);

/* ---- Building (cloud) -------------------------------------------------------------------- */

typedef struct cairn_bundle_build_params {
    const char *model_name;                     /* required */
    uint8_t base_sha256[CAIRN_EDGE_SHA256_LEN]; /* of the base model's GGUF file */
    uint64_t version;                           /* > 0; strictly increasing per model */
    int with_running_stats;   /* also ship running mean/variance (default 1: the edge runs its
                                 batchnorms in eval mode, so the affine params distilled under the
                                 shifted statistics need those statistics) */
    const char *key_id;       /* optional, informational */
    uint64_t created_unix_ms; /* 0: now */
} cairn_bundle_build_params;

cairn_bundle_build_params cairn_bundle_default_build_params(void);

/*
 * Builds and signs a bundle of m's batchnorm tensors. *out is malloc'ed (caller frees) and holds
 * *len bytes of an UpdateBundle. Returns 0, CAIRN_EINVAL (no model name, version 0, key without
 * its private part, a model without batchnorm), CAIRN_EFORMAT (a non-finite value) or
 * CAIRN_ENOMEM. m is only read.
 */
int cairn_bundle_build(cairn_nn_model *m, const cairn_bundle_build_params *p,
                       const cairn_bundle_key *priv, uint8_t **out, size_t *len, cairn_error *err);

/*
 * Signs already-encoded BundlePayload bytes (cairn_edge_payload_encode) and wraps them in an
 * UpdateBundle: for callers that assemble payloads themselves. *out is malloc'ed (caller frees).
 * Returns 0, CAIRN_EINVAL (no private key, empty payload, key_id too long) or CAIRN_ENOMEM.
 */
int cairn_bundle_sign_payload(const cairn_bundle_key *priv, const uint8_t *payload,
                              size_t payload_len, const char *key_id, uint8_t **out, size_t *len,
                              cairn_error *err);

/* ---- Verifying and applying (edge) -------------------------------------------------------- */

/*
 * Decodes the envelope, verifies the signature with pub over the payload bytes, then decodes
 * the payload into *out (owned by the caller: cairn_edge_payload_free). The payload is parsed
 * only after the signature verified. lim NULL: defaults. Returns 0, CAIRN_EFORMAT (malformed),
 * CAIRN_ELIMIT, CAIRN_EAUTH (the signature does not verify) or CAIRN_ENOMEM.
 */
int cairn_bundle_verify(const uint8_t *buf, size_t len, const cairn_bundle_key *pub,
                        const cairn_edge_limits *lim, cairn_edge_payload *out, cairn_error *err);

/* What the device runs; a bundle must match it. */
typedef struct cairn_bundle_expect {
    const char *model_name;
    uint8_t base_sha256[CAIRN_EDGE_SHA256_LEN];
    uint64_t current_version; /* 0: the base model */
} cairn_bundle_expect;

/* The values a bundle overwrote, and the version before it. */
typedef struct cairn_bundle_snapshot cairn_bundle_snapshot;

/*
 * Checks a verified payload against x and m (rules 2-4 above) and, when all pass, copies its
 * tensors into m. When prev is not NULL, *prev receives a snapshot of the overwritten values
 * (caller owns it: cairn_bundle_snapshot_free). Returns 0, CAIRN_EAUTH (another model name or
 * base model), CAIRN_ERANGE (version not newer), CAIRN_EFORMAT (unknown tensor, a tensor that is
 * not a batchnorm tensor, shape mismatch, negative variance) or CAIRN_ENOMEM — in every case
 * with m unchanged.
 */
int cairn_bundle_apply_payload(cairn_nn_model *m, const cairn_edge_payload *p,
                               const cairn_bundle_expect *x, cairn_bundle_snapshot **prev,
                               cairn_error *err);

/*
 * cairn_bundle_verify then cairn_bundle_apply_payload: bytes from the network in, model updated
 * or untouched out. *new_version (may be NULL) receives the applied version. Returns as those.
 */
int cairn_bundle_apply(cairn_nn_model *m, const uint8_t *buf, size_t len,
                       const cairn_bundle_key *pub, const cairn_bundle_expect *x,
                       uint64_t *new_version, cairn_bundle_snapshot **prev, cairn_error *err);

/* Writes a snapshot's values back into m (rollback). Returns 0, or CAIRN_EINVAL when m lacks a
 * tensor of the snapshot or its shape changed (m is then unchanged). */
int cairn_bundle_restore(cairn_nn_model *m, const cairn_bundle_snapshot *s, cairn_error *err);

/* The version the model ran before the bundle that produced s. */
uint64_t cairn_bundle_snapshot_version(const cairn_bundle_snapshot *s);

void cairn_bundle_snapshot_free(cairn_bundle_snapshot *s); /* NULL is a no-op */

#endif
