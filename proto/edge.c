/*
 * proto/edge.c — checked encoders and decoders for the edge messages (proto/edge.proto).
 *
 * protobuf-c does the wire parsing (it bounds every length by the buffer); this file enforces
 * what the schema cannot say: counts against limits, array lengths against declared counts,
 * value ranges and finiteness. A decoder either returns a complete struct or frees everything.
 */
#include "proto/edge.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/edge.pb-c.h"

cairn_edge_limits cairn_edge_default_limits(void)
{
    cairn_edge_limits l = {
        .max_message_bytes = 8u << 20,
        .max_samples = 256,
        .max_channels = 4,
        .max_side = 64,
        .max_classes = 1000,
        .max_tensors = 256,
        .max_tensor_numel = 1u << 20,
    };
    return l;
}

static const cairn_edge_limits *limits_or_default(const cairn_edge_limits *lim,
                                                  cairn_edge_limits *tmp)
{
    if (lim) return lim;
    *tmp = cairn_edge_default_limits();
    return tmp;
}

/* ---- Strings -------------------------------------------------------------------------------- */

/* Copies a protobuf string into dst after checking it: < CAIRN_EDGE_STR_MAX bytes, printable
 * ASCII. required: the empty string is rejected. */
static int take_str(char *dst, const char *src, const char *field, int required, cairn_error *err)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= CAIRN_EDGE_STR_MAX)
        return cairn_errorf(err, CAIRN_ELIMIT, "%s: %zu bytes (limit %d)", field, n,
                            CAIRN_EDGE_STR_MAX - 1);
    if (required && n == 0) return cairn_errorf(err, CAIRN_EFORMAT, "%s: missing", field);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)src[i];
        if (ch < 0x20 || ch > 0x7e)
            return cairn_errorf(err, CAIRN_EFORMAT, "%s: byte %zu is not printable ASCII (0x%02x)",
                                field, i, ch);
    }
    memcpy(dst, src ? src : "", n + 1);
    return 0;
}

/* The same check on a struct field about to be encoded (it must be NUL-terminated in place). */
static int check_str(const char *s, const char *field, int required, cairn_error *err)
{
    if (!memchr(s, 0, CAIRN_EDGE_STR_MAX))
        return cairn_errorf(err, CAIRN_ELIMIT, "%s: not terminated within %d bytes", field,
                            CAIRN_EDGE_STR_MAX);
    char tmp[CAIRN_EDGE_STR_MAX];
    return take_str(tmp, s, field, required, err);
}

static int pack_out(const ProtobufCMessage *m, uint8_t **out, size_t *len, cairn_error *err)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return cairn_errorf(err, CAIRN_ENOMEM, "encode: %zu bytes", n);
    protobuf_c_message_pack(m, buf);
    *out = buf;
    *len = n;
    return 0;
}

static int check_size(size_t len, const cairn_edge_limits *lim, const char *what, cairn_error *err)
{
    if (len > lim->max_message_bytes)
        return cairn_errorf(err, CAIRN_ELIMIT, "%s: %zu bytes (limit %zu)", what, len,
                            lim->max_message_bytes);
    return 0;
}

/* ---- Registration ------------------------------------------------------------------------- */

int cairn_edge_register_req_encode(const cairn_edge_register_req *r, uint8_t **out, size_t *len,
                                   cairn_error *err)
{
    int rc;
    if ((rc = check_str(r->enrollment_token, "enrollment_token", 1, err)) ||
        (rc = check_str(r->device_name, "device_name", 0, err)) ||
        (rc = check_str(r->model_name, "model_name", 0, err)))
        return rc;
    Cairn__Edge__RegisterRequest m = CAIRN__EDGE__REGISTER_REQUEST__INIT;
    m.enrollment_token = (char *)r->enrollment_token;
    m.device_name = (char *)r->device_name;
    m.model_name = (char *)r->model_name;
    return pack_out(&m.base, out, len, err);
}

int cairn_edge_register_req_decode(const uint8_t *buf, size_t len, cairn_edge_register_req *out,
                                   cairn_error *err)
{
    memset(out, 0, sizeof *out);
    cairn_edge_limits tmp, *lim = (cairn_edge_limits *)limits_or_default(NULL, &tmp);
    int rc = check_size(len, lim, "RegisterRequest", err);
    if (rc) return rc;
    Cairn__Edge__RegisterRequest *m = cairn__edge__register_request__unpack(NULL, len, buf);
    if (!m)
        return cairn_errorf(err, CAIRN_EFORMAT, "RegisterRequest: not a valid protobuf message");
    if (!(rc = take_str(out->enrollment_token, m->enrollment_token, "enrollment_token", 1, err)) &&
        !(rc = take_str(out->device_name, m->device_name, "device_name", 0, err)))
        rc = take_str(out->model_name, m->model_name, "model_name", 0, err);
    cairn__edge__register_request__free_unpacked(m, NULL);
    if (rc) memset(out, 0, sizeof *out);
    return rc;
}

int cairn_edge_register_resp_encode(const cairn_edge_register_resp *r, uint8_t **out, size_t *len,
                                    cairn_error *err)
{
    int rc;
    if ((rc = check_str(r->device_id, "device_id", 1, err)) ||
        (rc = check_str(r->device_key, "device_key", 1, err)))
        return rc;
    Cairn__Edge__RegisterResponse m = CAIRN__EDGE__REGISTER_RESPONSE__INIT;
    m.device_id = (char *)r->device_id;
    m.device_key = (char *)r->device_key;
    return pack_out(&m.base, out, len, err);
}

int cairn_edge_register_resp_decode(const uint8_t *buf, size_t len, cairn_edge_register_resp *out,
                                    cairn_error *err)
{
    memset(out, 0, sizeof *out);
    cairn_edge_limits tmp, *lim = (cairn_edge_limits *)limits_or_default(NULL, &tmp);
    int rc = check_size(len, lim, "RegisterResponse", err);
    if (rc) return rc;
    Cairn__Edge__RegisterResponse *m = cairn__edge__register_response__unpack(NULL, len, buf);
    if (!m)
        return cairn_errorf(err, CAIRN_EFORMAT, "RegisterResponse: not a valid protobuf message");
    if (!(rc = take_str(out->device_id, m->device_id, "device_id", 1, err)))
        rc = take_str(out->device_key, m->device_key, "device_key", 1, err);
    cairn__edge__register_response__free_unpacked(m, NULL);
    if (rc) memset(out, 0, sizeof *out);
    return rc;
}

/* ---- Sample batches --------------------------------------------------------------------- */

/* Checks the header of a batch (counts against limits); on success *n_img is n*c*h*w. */
static int check_batch_dims(long n, long c, long h, long w, long k, const cairn_edge_limits *lim,
                            size_t *n_img, cairn_error *err)
{
    if (n < 1 || n > lim->max_samples)
        return cairn_errorf(err, n < 1 ? CAIRN_EFORMAT : CAIRN_ELIMIT,
                            "count: %ld samples (allowed 1..%d)", n, lim->max_samples);
    if (c < 1 || c > lim->max_channels)
        return cairn_errorf(err, c < 1 ? CAIRN_EFORMAT : CAIRN_ELIMIT,
                            "channels: %ld (allowed 1..%d)", c, lim->max_channels);
    if (h < 1 || h > lim->max_side || w < 1 || w > lim->max_side)
        return cairn_errorf(err, (h < 1 || w < 1) ? CAIRN_EFORMAT : CAIRN_ELIMIT,
                            "image size: %ldx%ld (allowed 1..%d per side)", h, w, lim->max_side);
    if (k < 2 || k > lim->max_classes)
        return cairn_errorf(err, k < 2 ? CAIRN_EFORMAT : CAIRN_ELIMIT,
                            "num_classes: %ld (allowed 2..%d)", k, lim->max_classes);
    /* All factors are bounded by int limits above; the product of four of them fits size_t on
     * 64-bit hosts, but check anyway for 32-bit devices. */
    size_t per = (size_t)c * (size_t)h * (size_t)w;
    if (per > SIZE_MAX / (size_t)n || (size_t)n * per > lim->max_message_bytes)
        return cairn_errorf(err, CAIRN_ELIMIT, "images: %ld x %zu values exceed the message limit",
                            n, per);
    *n_img = (size_t)n * per;
    return 0;
}

/* Values checks shared by encode and decode. */
static int check_batch_values(const float *images, size_t n_img, const float *probs,
                              const float *ent, int n, int k, cairn_error *err)
{
    for (size_t i = 0; images && i < n_img; i++)
        if (!(images[i] >= 0.0f && images[i] <= 1.0f)) /* also catches NaN */
            return cairn_errorf(err, CAIRN_EFORMAT,
                                "images_f32[%zu]: %g is not a finite value in [0, 1]", i,
                                (double)images[i]);
    const double hmax = log((double)k) + 1e-3;
    for (int i = 0; i < n; i++) {
        double sum = 0;
        for (int j = 0; j < k; j++) {
            float p = probs[(size_t)i * k + j];
            if (!(p >= 0.0f && p <= 1.0f))
                return cairn_errorf(err, CAIRN_EFORMAT, "probs[%d][%d]: %g is not a probability", i,
                                    j, (double)p);
            sum += p;
        }
        if (fabs(sum - 1.0) > 1e-3)
            return cairn_errorf(err, CAIRN_EFORMAT, "probs[%d]: sums to %.6f, not 1", i, sum);
        if (!(ent[i] >= 0.0f && ent[i] <= hmax))
            return cairn_errorf(err, CAIRN_EFORMAT, "entropies[%d]: %g is not in [0, ln %d]", i,
                                (double)ent[i], k);
    }
    return 0;
}

int cairn_edge_batch_encode(const cairn_edge_batch *b, const cairn_edge_limits *lim, uint8_t **out,
                            size_t *len, cairn_error *err)
{
    cairn_edge_limits tmp;
    lim = limits_or_default(lim, &tmp);
    size_t n_img;
    int rc;
    if ((rc = check_str(b->device_id, "device_id", 1, err)) ||
        (rc = check_str(b->model_name, "model_name", 1, err)) ||
        (rc = check_batch_dims(b->n, b->c, b->h, b->w, b->k, lim, &n_img, err)))
        return rc;
    if (!b->images || !b->probs || !b->entropies)
        return cairn_errorf(err, CAIRN_EINVAL, "batch: images, probs and entropies are required");
    if ((rc = check_batch_values(b->images, n_img, b->probs, b->entropies, b->n, b->k, err)))
        return rc;

    Cairn__Edge__SampleBatch m = CAIRN__EDGE__SAMPLE_BATCH__INIT;
    m.device_id = (char *)b->device_id;
    m.model_name = (char *)b->model_name;
    m.model_version = b->model_version;
    m.seq = b->seq;
    m.count = (uint32_t)b->n;
    m.channels = (uint32_t)b->c;
    m.height = (uint32_t)b->h;
    m.width = (uint32_t)b->w;
    m.num_classes = (uint32_t)b->k;
    uint8_t *u8 = NULL;
    if (b->images_were_u8) {
        u8 = malloc(n_img);
        if (!u8) return cairn_errorf(err, CAIRN_ENOMEM, "batch: %zu image bytes", n_img);
        for (size_t i = 0; i < n_img; i++)
            u8[i] = (uint8_t)lrintf(b->images[i] * 255.0f);
        m.images_u8.data = u8;
        m.images_u8.len = n_img;
    } else {
        m.n_images_f32 = n_img;
        m.images_f32 = b->images;
    }
    m.n_probs = (size_t)b->n * (size_t)b->k;
    m.probs = b->probs;
    m.n_entropies = (size_t)b->n;
    m.entropies = b->entropies;
    rc = pack_out(&m.base, out, len, err);
    free(u8);
    return rc;
}

int cairn_edge_batch_decode(const uint8_t *buf, size_t len, const cairn_edge_limits *lim,
                            cairn_edge_batch *out, cairn_error *err)
{
    cairn_edge_limits tmp;
    lim = limits_or_default(lim, &tmp);
    memset(out, 0, sizeof *out);
    int rc = check_size(len, lim, "SampleBatch", err);
    if (rc) return rc;
    Cairn__Edge__SampleBatch *m = cairn__edge__sample_batch__unpack(NULL, len, buf);
    if (!m) return cairn_errorf(err, CAIRN_EFORMAT, "SampleBatch: not a valid protobuf message");

    size_t n_img = 0;
    if ((rc = take_str(out->device_id, m->device_id, "device_id", 1, err)) ||
        (rc = take_str(out->model_name, m->model_name, "model_name", 1, err)) ||
        (rc = check_batch_dims(m->count, m->channels, m->height, m->width, m->num_classes, lim,
                               &n_img, err)))
        goto fail;
    const size_t n = m->count, k = m->num_classes;
    int has_u8 = m->images_u8.len > 0, has_f32 = m->n_images_f32 > 0;
    if (has_u8 == has_f32) {
        rc = cairn_errorf(err, CAIRN_EFORMAT,
                          "images: exactly one of images_u8 / images_f32 "
                          "must be set");
        goto fail;
    }
    size_t got = has_u8 ? m->images_u8.len : m->n_images_f32;
    if (got != n_img) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: %zu values, expected %zu (%zu x %ux%ux%u)",
                          has_u8 ? "images_u8" : "images_f32", got, n_img, n, m->channels,
                          m->height, m->width);
        goto fail;
    }
    if (m->n_probs != n * k) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "probs: %zu values, expected %zu (%zu x %zu)",
                          m->n_probs, n * k, n, k);
        goto fail;
    }
    if (m->n_entropies != n) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "entropies: %zu values, expected %zu", m->n_entropies,
                          n);
        goto fail;
    }
    if ((rc = check_batch_values(has_f32 ? m->images_f32 : NULL, n_img, m->probs, m->entropies,
                                 (int)n, (int)k, err)))
        goto fail;

    out->images = malloc(n_img * sizeof(float));
    out->probs = malloc(n * k * sizeof(float));
    out->entropies = malloc(n * sizeof(float));
    if (!out->images || !out->probs || !out->entropies) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "SampleBatch: %zu samples", n);
        goto fail;
    }
    if (has_u8)
        for (size_t i = 0; i < n_img; i++)
            out->images[i] = m->images_u8.data[i] / 255.0f;
    else
        memcpy(out->images, m->images_f32, n_img * sizeof(float));
    memcpy(out->probs, m->probs, n * k * sizeof(float));
    memcpy(out->entropies, m->entropies, n * sizeof(float));
    out->images_were_u8 = has_u8;
    out->model_version = m->model_version;
    out->seq = m->seq;
    out->n = (int)n;
    out->c = (int)m->channels;
    out->h = (int)m->height;
    out->w = (int)m->width;
    out->k = (int)k;
    cairn__edge__sample_batch__free_unpacked(m, NULL);
    return 0;
fail:
    cairn__edge__sample_batch__free_unpacked(m, NULL);
    cairn_edge_batch_free(out);
    return rc;
}

void cairn_edge_batch_free(cairn_edge_batch *b)
{
    if (!b) return;
    free(b->images);
    free(b->probs);
    free(b->entropies);
    memset(b, 0, sizeof *b);
}

/* ---- Update bundles ---------------------------------------------------------------------- */

/* Checks a tensor's name and shape; on success *numel is the product of the shape. */
static int check_tensor_shape(const char *name, size_t ndim, const uint32_t *shape, int idx,
                              const cairn_edge_limits *lim, size_t *numel, cairn_error *err)
{
    if (ndim < 1 || ndim > CAIRN_EDGE_TENSOR_DIMS)
        return cairn_errorf(err, CAIRN_EFORMAT, "tensor %d '%s': %zu dims (allowed 1..%d)", idx,
                            name, ndim, CAIRN_EDGE_TENSOR_DIMS);
    size_t ne = 1;
    for (size_t d = 0; d < ndim; d++) {
        if (shape[d] < 1 || shape[d] > lim->max_tensor_numel)
            return cairn_errorf(err, CAIRN_EFORMAT, "tensor %d '%s': dim %zu is %u", idx, name, d,
                                shape[d]);
        ne *= shape[d];
        if (ne > lim->max_tensor_numel)
            return cairn_errorf(err, CAIRN_ELIMIT, "tensor %d '%s': more than %zu elements", idx,
                                name, lim->max_tensor_numel);
    }
    *numel = ne;
    return 0;
}

static int check_finite(const float *v, size_t n, const char *name, cairn_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return cairn_errorf(err, CAIRN_EFORMAT, "tensor '%s'[%zu]: %g is not finite", name, i,
                                (double)v[i]);
    return 0;
}

int cairn_edge_payload_encode(const cairn_edge_payload *p, const cairn_edge_limits *lim,
                              uint8_t **out, size_t *len, cairn_error *err)
{
    cairn_edge_limits tmp;
    lim = limits_or_default(lim, &tmp);
    int rc = check_str(p->model_name, "model_name", 1, err);
    if (rc) return rc;
    if (p->n_tensors < 0 || p->n_tensors > lim->max_tensors)
        return cairn_errorf(err, CAIRN_ELIMIT, "bundle: %d tensors (limit %d)", p->n_tensors,
                            lim->max_tensors);
    Cairn__Edge__Tensor *ts = calloc(p->n_tensors ? p->n_tensors : 1, sizeof *ts);
    Cairn__Edge__Tensor **tp = calloc(p->n_tensors ? p->n_tensors : 1, sizeof *tp);
    uint32_t(*shapes)[CAIRN_EDGE_TENSOR_DIMS] =
        calloc(p->n_tensors ? p->n_tensors : 1, sizeof *shapes);
    if (!ts || !tp || !shapes) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "bundle: %d tensors", p->n_tensors);
        goto done;
    }
    for (int i = 0; i < p->n_tensors; i++) {
        const cairn_edge_tensor *t = &p->tensors[i];
        size_t numel = 0;
        if ((rc = check_str(t->name, "tensor name", 1, err))) goto done;
        if (t->ndim < 1 || t->ndim > CAIRN_EDGE_TENSOR_DIMS) {
            rc = cairn_errorf(err, CAIRN_EINVAL, "tensor '%s': ndim %d", t->name, t->ndim);
            goto done;
        }
        for (int d = 0; d < t->ndim; d++)
            shapes[i][d] = t->shape[d] > 0 ? (uint32_t)t->shape[d] : 0;
        if ((rc = check_tensor_shape(t->name, (size_t)t->ndim, shapes[i], i, lim, &numel, err)) ||
            (rc = check_finite(t->data, numel, t->name, err)))
            goto done;
        cairn__edge__tensor__init(&ts[i]);
        ts[i].name = (char *)t->name;
        ts[i].n_shape = (size_t)t->ndim;
        ts[i].shape = shapes[i];
        ts[i].n_data = numel;
        ts[i].data = t->data;
        tp[i] = &ts[i];
    }
    Cairn__Edge__BundlePayload m = CAIRN__EDGE__BUNDLE_PAYLOAD__INIT;
    m.model_name = (char *)p->model_name;
    m.base_sha256.data = (uint8_t *)p->base_sha256;
    m.base_sha256.len = CAIRN_EDGE_SHA256_LEN;
    m.version = p->version;
    m.created_unix_ms = p->created_unix_ms;
    m.n_tensors = (size_t)p->n_tensors;
    m.tensors = tp;
    rc = pack_out(&m.base, out, len, err);
done:
    free(ts);
    free(tp);
    free(shapes);
    return rc;
}

int cairn_edge_payload_decode(const uint8_t *buf, size_t len, const cairn_edge_limits *lim,
                              cairn_edge_payload *out, cairn_error *err)
{
    cairn_edge_limits tmp;
    lim = limits_or_default(lim, &tmp);
    memset(out, 0, sizeof *out);
    int rc = check_size(len, lim, "BundlePayload", err);
    if (rc) return rc;
    Cairn__Edge__BundlePayload *m = cairn__edge__bundle_payload__unpack(NULL, len, buf);
    if (!m) return cairn_errorf(err, CAIRN_EFORMAT, "BundlePayload: not a valid protobuf message");
    if ((rc = take_str(out->model_name, m->model_name, "model_name", 1, err))) goto fail;
    if (m->base_sha256.len != CAIRN_EDGE_SHA256_LEN) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "base_sha256: %zu bytes, expected %d",
                          m->base_sha256.len, CAIRN_EDGE_SHA256_LEN);
        goto fail;
    }
    if (m->n_tensors < 1 || m->n_tensors > (size_t)lim->max_tensors) {
        rc = cairn_errorf(err, m->n_tensors < 1 ? CAIRN_EFORMAT : CAIRN_ELIMIT,
                          "bundle: %zu tensors (allowed 1..%d)", m->n_tensors, lim->max_tensors);
        goto fail;
    }
    memcpy(out->base_sha256, m->base_sha256.data, CAIRN_EDGE_SHA256_LEN);
    out->version = m->version;
    out->created_unix_ms = m->created_unix_ms;
    out->tensors = calloc(m->n_tensors, sizeof *out->tensors);
    if (!out->tensors) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "bundle: %zu tensors", m->n_tensors);
        goto fail;
    }
    for (size_t i = 0; i < m->n_tensors; i++) {
        const Cairn__Edge__Tensor *t = m->tensors[i];
        cairn_edge_tensor *o = &out->tensors[i];
        size_t numel = 0;
        if ((rc = take_str(o->name, t->name, "tensor name", 1, err))) goto fail;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(out->tensors[j].name, o->name)) {
                rc = cairn_errorf(err, CAIRN_EFORMAT, "tensor '%s': appears twice", o->name);
                goto fail;
            }
        if ((rc = check_tensor_shape(o->name, t->n_shape, t->shape, (int)i, lim, &numel, err)))
            goto fail;
        if (t->n_data != numel) {
            rc = cairn_errorf(err, CAIRN_EFORMAT, "tensor '%s': %zu values for a shape of %zu",
                              o->name, t->n_data, numel);
            goto fail;
        }
        if ((rc = check_finite(t->data, numel, o->name, err))) goto fail;
        o->ndim = (int)t->n_shape;
        for (size_t d = 0; d < t->n_shape; d++)
            o->shape[d] = (int)t->shape[d];
        o->numel = numel;
        o->data = malloc(numel * sizeof(float));
        if (!o->data) {
            rc = cairn_errorf(err, CAIRN_ENOMEM, "tensor '%s': %zu values", o->name, numel);
            goto fail;
        }
        memcpy(o->data, t->data, numel * sizeof(float));
        out->n_tensors = (int)i + 1;
    }
    cairn__edge__bundle_payload__free_unpacked(m, NULL);
    return 0;
fail:
    cairn__edge__bundle_payload__free_unpacked(m, NULL);
    cairn_edge_payload_free(out);
    return rc;
}

void cairn_edge_payload_free(cairn_edge_payload *p)
{
    if (!p) return;
    /* n_tensors counts the tensors whose data a decode allocated (all of them on success). */
    for (int i = 0; p->tensors && i < p->n_tensors; i++)
        free(p->tensors[i].data);
    free(p->tensors);
    memset(p, 0, sizeof *p);
}

int cairn_edge_envelope_encode(const cairn_edge_envelope *e, uint8_t **out, size_t *len,
                               cairn_error *err)
{
    int rc = check_str(e->key_id, "key_id", 0, err);
    if (rc) return rc;
    if (!e->payload || !e->payload_len)
        return cairn_errorf(err, CAIRN_EINVAL, "bundle: empty payload");
    Cairn__Edge__UpdateBundle m = CAIRN__EDGE__UPDATE_BUNDLE__INIT;
    m.payload.data = e->payload;
    m.payload.len = e->payload_len;
    m.signature.data = (uint8_t *)e->signature;
    m.signature.len = CAIRN_EDGE_SIG_LEN;
    m.key_id = (char *)e->key_id;
    return pack_out(&m.base, out, len, err);
}

int cairn_edge_envelope_decode(const uint8_t *buf, size_t len, const cairn_edge_limits *lim,
                               cairn_edge_envelope *out, cairn_error *err)
{
    cairn_edge_limits tmp;
    lim = limits_or_default(lim, &tmp);
    memset(out, 0, sizeof *out);
    int rc = check_size(len, lim, "UpdateBundle", err);
    if (rc) return rc;
    Cairn__Edge__UpdateBundle *m = cairn__edge__update_bundle__unpack(NULL, len, buf);
    if (!m) return cairn_errorf(err, CAIRN_EFORMAT, "UpdateBundle: not a valid protobuf message");
    if ((rc = take_str(out->key_id, m->key_id, "key_id", 0, err))) goto done;
    if (m->signature.len != CAIRN_EDGE_SIG_LEN) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "signature: %zu bytes, expected %d", m->signature.len,
                          CAIRN_EDGE_SIG_LEN);
        goto done;
    }
    if (m->payload.len == 0) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "payload: empty");
        goto done;
    }
    out->payload = malloc(m->payload.len);
    if (!out->payload) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "payload: %zu bytes", m->payload.len);
        goto done;
    }
    memcpy(out->payload, m->payload.data, m->payload.len);
    out->payload_len = m->payload.len;
    memcpy(out->signature, m->signature.data, CAIRN_EDGE_SIG_LEN);
done:
    cairn__edge__update_bundle__free_unpacked(m, NULL);
    if (rc) cairn_edge_envelope_free(out);
    return rc;
}

void cairn_edge_envelope_free(cairn_edge_envelope *e)
{
    if (!e) return;
    free(e->payload);
    memset(e, 0, sizeof *e);
}
