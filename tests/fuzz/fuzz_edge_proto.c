/*
 * tests/fuzz/fuzz_edge_proto.c — libFuzzer target for the edge message decoders (proto/edge.h).
 *
 * Feeds the input to every decoder: SampleBatch, BundlePayload, UpdateBundle (envelope) and the
 * registration messages. Whatever a decoder accepts must satisfy its documented invariants
 * (counts within limits, finite values in range, consistent lengths) and survive an
 * encode/decode round trip; a rejection must carry a message. Any crash, sanitizer report or
 * leak is a finding.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/edge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_edge_proto: check failed: %s (line %d)\n", #cond, __LINE__);     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void batch(const uint8_t *data, size_t size)
{
    cairn_edge_limits lim = cairn_edge_default_limits();
    cairn_edge_batch b;
    cairn_error err;
    int rc = cairn_edge_batch_decode(data, size, &lim, &b, &err);
    if (rc) {
        CHECK(rc < 0 && err.msg[0]);
        CHECK(b.images == NULL && b.n == 0);
        return;
    }
    CHECK(b.n >= 1 && b.n <= lim.max_samples && b.k >= 2 && b.k <= lim.max_classes);
    size_t n_img = (size_t)b.n * b.c * b.h * b.w;
    for (size_t i = 0; i < n_img; i++)
        CHECK(b.images[i] >= 0.0f && b.images[i] <= 1.0f);
    for (int i = 0; i < b.n; i++) {
        CHECK(isfinite(b.entropies[i]));
        for (int j = 0; j < b.k; j++)
            CHECK(b.probs[(size_t)i * b.k + j] >= 0.0f);
    }
    /* What was accepted re-encodes and decodes to the same values. */
    uint8_t *enc = NULL;
    size_t len = 0;
    CHECK(cairn_edge_batch_encode(&b, &lim, &enc, &len, &err) == 0);
    cairn_edge_batch b2;
    CHECK(cairn_edge_batch_decode(enc, len, &lim, &b2, &err) == 0);
    CHECK(b2.n == b.n && b2.k == b.k && b2.images_were_u8 == b.images_were_u8);
    CHECK(!memcmp(b2.probs, b.probs, (size_t)b.n * b.k * sizeof(float)));
    if (!b.images_were_u8) CHECK(!memcmp(b2.images, b.images, n_img * sizeof(float)));
    cairn_edge_batch_free(&b2);
    free(enc);
    cairn_edge_batch_free(&b);
}

static void payload(const uint8_t *data, size_t size)
{
    cairn_edge_payload p;
    cairn_error err;
    int rc = cairn_edge_payload_decode(data, size, NULL, &p, &err);
    if (rc) {
        CHECK(rc < 0 && err.msg[0] && p.tensors == NULL);
        return;
    }
    CHECK(p.n_tensors >= 1);
    for (int i = 0; i < p.n_tensors; i++) {
        size_t ne = 1;
        for (int d = 0; d < p.tensors[i].ndim; d++)
            ne *= (size_t)p.tensors[i].shape[d];
        CHECK(ne == p.tensors[i].numel);
        for (size_t j = 0; j < ne; j++)
            CHECK(isfinite(p.tensors[i].data[j]));
    }
    uint8_t *enc = NULL;
    size_t len = 0;
    CHECK(cairn_edge_payload_encode(&p, NULL, &enc, &len, &err) == 0);
    cairn_edge_payload p2;
    CHECK(cairn_edge_payload_decode(enc, len, NULL, &p2, &err) == 0);
    CHECK(p2.n_tensors == p.n_tensors && p2.version == p.version);
    cairn_edge_payload_free(&p2);
    free(enc);
    cairn_edge_payload_free(&p);
}

static void envelope(const uint8_t *data, size_t size)
{
    cairn_edge_envelope e;
    cairn_error err;
    if (cairn_edge_envelope_decode(data, size, NULL, &e, &err) != 0) {
        CHECK(err.msg[0] && e.payload == NULL);
        return;
    }
    CHECK(e.payload && e.payload_len > 0 && e.payload_len <= size);
    payload(e.payload, e.payload_len); /* what a verified bundle's payload goes through */
    cairn_edge_envelope_free(&e);
}

static void registration(const uint8_t *data, size_t size)
{
    cairn_edge_register_req r;
    cairn_edge_register_resp s;
    cairn_error err;
    if (cairn_edge_register_req_decode(data, size, &r, &err) == 0) {
        CHECK(r.enrollment_token[0]);
        uint8_t *enc = NULL;
        size_t len;
        CHECK(cairn_edge_register_req_encode(&r, &enc, &len, &err) == 0);
        free(enc);
    }
    if (cairn_edge_register_resp_decode(data, size, &s, &err) == 0)
        CHECK(s.device_id[0] && s.device_key[0]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    batch(data, size);
    payload(data, size);
    envelope(data, size);
    registration(data, size);
    return 0;
}
