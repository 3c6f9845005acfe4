/*
 * proto/edge.h — the edge messages of proto/edge.proto as plain C structs, with checked decoders.
 *
 * Everything a device or cairnd receives is hostile until a decoder here has accepted it: each
 * decoder takes bytes and gives back either a fully validated struct or a negative CAIRN_E* code
 * with the reason in err (which field, which count, which limit). The checks: the message size,
 * every string's length and charset, every count against cairn_edge_limits, that array lengths
 * agree with the declared counts, and that every float is finite and in range (pixels in [0, 1],
 * probabilities in [0, 1] summing to 1 per sample, entropies in [0, ln K]).
 *
 * Codes: CAIRN_EFORMAT (not protobuf, wrong lengths, NaN/Inf, out-of-range values, bad strings),
 * CAIRN_ELIMIT (a count or size over a limit), CAIRN_ENOMEM.
 *
 * Thread-safety: all functions are reentrant; structs are plain values owned by the caller.
 * No BLAS, no OpenSSL: both edge devices and cairnd link this.
 */
#ifndef CAIRN_PROTO_EDGE_H
#define CAIRN_PROTO_EDGE_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#define CAIRN_EDGE_STR_MAX     64 /* ids, names, keys: at most 63 bytes, printable ASCII */
#define CAIRN_EDGE_SHA256_LEN  32
#define CAIRN_EDGE_SIG_LEN     64 /* Ed25519 */
#define CAIRN_EDGE_TENSOR_DIMS 4

/* Bounds a decoder enforces. The defaults suit 28x28 grayscale, 10-class models. */
typedef struct cairn_edge_limits {
    size_t max_message_bytes; /* whole encoded message (default 8 MiB) */
    int max_samples;          /* samples per SampleBatch (default 256) */
    int max_channels;         /* default 4 */
    int max_side;             /* image height / width (default 64) */
    int max_classes;          /* default 1000 */
    int max_tensors;          /* tensors per bundle (default 256) */
    size_t max_tensor_numel;  /* elements per bundle tensor (default 1 << 20) */
} cairn_edge_limits;

cairn_edge_limits cairn_edge_default_limits(void);

/* ---- Registration ------------------------------------------------------------------------- */

typedef struct cairn_edge_register_req {
    char enrollment_token[CAIRN_EDGE_STR_MAX];
    char device_name[CAIRN_EDGE_STR_MAX];
    char model_name[CAIRN_EDGE_STR_MAX];
} cairn_edge_register_req;

typedef struct cairn_edge_register_resp {
    char device_id[CAIRN_EDGE_STR_MAX];
    char device_key[CAIRN_EDGE_STR_MAX];
} cairn_edge_register_resp;

/*
 * Encoders write a newly malloc'ed buffer to *out (caller frees with free()) and its length to
 * *len. They validate their input as the decoders would (so nothing invalid is ever sent) and
 * return 0, CAIRN_EINVAL / CAIRN_EFORMAT / CAIRN_ELIMIT for a bad struct, or CAIRN_ENOMEM.
 * Decoders fill *out (zeroed first) and return 0 or a negative code.
 */
int cairn_edge_register_req_encode(const cairn_edge_register_req *r, uint8_t **out, size_t *len,
                                   cairn_error *err);
int cairn_edge_register_req_decode(const uint8_t *buf, size_t len, cairn_edge_register_req *out,
                                   cairn_error *err);
int cairn_edge_register_resp_encode(const cairn_edge_register_resp *r, uint8_t **out, size_t *len,
                                    cairn_error *err);
int cairn_edge_register_resp_decode(const uint8_t *buf, size_t len, cairn_edge_register_resp *out,
                                    cairn_error *err);

/* ---- Sample batches --------------------------------------------------------------------- */

/*
 * A decoded SampleBatch. images always holds floats in [0, 1] (a u8 upload is divided by 255);
 * images_were_u8 says which form came over the wire. The arrays are owned by the struct:
 * release them with cairn_edge_batch_free. For encoding, the caller fills the fields and
 * points the arrays at its own memory (the encoder does not take ownership).
 */
typedef struct cairn_edge_batch {
    char device_id[CAIRN_EDGE_STR_MAX];
    char model_name[CAIRN_EDGE_STR_MAX];
    uint64_t model_version;
    uint64_t seq;
    int n, c, h, w, k;  /* samples, channels, height, width, classes */
    float *images;      /* n * c * h * w */
    float *probs;       /* n * k */
    float *entropies;   /* n */
    int images_were_u8; /* decode: the upload used images_u8; encode: send images as u8 */
} cairn_edge_batch;

int cairn_edge_batch_encode(const cairn_edge_batch *b, const cairn_edge_limits *lim, uint8_t **out,
                            size_t *len, cairn_error *err);
/* lim NULL means cairn_edge_default_limits(). */
int cairn_edge_batch_decode(const uint8_t *buf, size_t len, const cairn_edge_limits *lim,
                            cairn_edge_batch *out, cairn_error *err);
/* Frees the arrays a decode allocated and zeroes *b. NULL is a no-op. Never call it on a struct
 * whose arrays point at caller memory. */
void cairn_edge_batch_free(cairn_edge_batch *b);

/* ---- Update bundles ---------------------------------------------------------------------- */

typedef struct cairn_edge_tensor {
    char name[CAIRN_EDGE_STR_MAX];
    int ndim; /* 1..CAIRN_EDGE_TENSOR_DIMS */
    int shape[CAIRN_EDGE_TENSOR_DIMS];
    size_t numel;
    float *data;
} cairn_edge_tensor;

/* A decoded BundlePayload; arrays owned by the struct after a decode (cairn_edge_payload_free). */
typedef struct cairn_edge_payload {
    char model_name[CAIRN_EDGE_STR_MAX];
    uint8_t base_sha256[CAIRN_EDGE_SHA256_LEN];
    uint64_t version;
    uint64_t created_unix_ms;
    int n_tensors;
    cairn_edge_tensor *tensors;
} cairn_edge_payload;

int cairn_edge_payload_encode(const cairn_edge_payload *p, const cairn_edge_limits *lim,
                              uint8_t **out, size_t *len, cairn_error *err);
/* Rejects duplicate tensor names, shapes that disagree with the data length, NaN/Inf values. */
int cairn_edge_payload_decode(const uint8_t *buf, size_t len, const cairn_edge_limits *lim,
                              cairn_edge_payload *out, cairn_error *err);
void cairn_edge_payload_free(cairn_edge_payload *p);

/*
 * The signed envelope (UpdateBundle). Decoding it does NOT verify the signature (that needs a
 * key: adapt/bundle.h) nor parse the payload; it only checks sizes. After a decode, payload is a
 * malloc'ed copy owned by the struct (cairn_edge_envelope_free); for encoding, the caller points
 * it at its own bytes (not taken over).
 */
typedef struct cairn_edge_envelope {
    uint8_t *payload;
    size_t payload_len;
    uint8_t signature[CAIRN_EDGE_SIG_LEN];
    char key_id[CAIRN_EDGE_STR_MAX];
} cairn_edge_envelope;

int cairn_edge_envelope_encode(const cairn_edge_envelope *e, uint8_t **out, size_t *len,
                               cairn_error *err);
int cairn_edge_envelope_decode(const uint8_t *buf, size_t len, const cairn_edge_limits *lim,
                               cairn_edge_envelope *out, cairn_error *err);
/* Frees a decoded envelope's payload and zeroes *e. NULL is a no-op. */
void cairn_edge_envelope_free(cairn_edge_envelope *e);

#endif
