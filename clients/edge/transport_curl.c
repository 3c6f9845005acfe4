/*
 * clients/edge/transport_curl.c — the libcurl transport of libcairn_edge (cairn_edge.h).
 *
 * One easy handle per request: the upload thread and the caller's update thread may use the
 * transport at once, and a device makes few requests, so handle reuse is not worth a lock.
 */
#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

#include "clients/edge/cairn_edge.h"

#define BODY_MAX (16u << 20)

typedef struct {
    char *base_url;
    char *auth_header;
    long timeout_ms;
} curl_ctx;

typedef struct {
    uint8_t *data;
    size_t len, cap;
    int too_big;
} body_buf;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    body_buf *b = userdata;
    size_t n = size * nmemb;
    if (b->len + n > BODY_MAX) {
        b->too_big = 1;
        return 0; /* aborts the transfer */
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d) return 0;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    return n;
}

static int do_request(curl_ctx *c, const char *path, const uint8_t *post, size_t post_len,
                      body_buf *resp, long *status, cairn_error *err)
{
    size_t ulen = strlen(c->base_url) + strlen(path) + 1;
    char *url = malloc(ulen);
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = NULL;
    if (!url || !h) {
        free(url);
        if (h) curl_easy_cleanup(h);
        return cairn_errorf(err, CAIRN_ENOMEM, "curl: request");
    }
    snprintf(url, ulen, "%s%s", c->base_url, path);
    hdr = curl_slist_append(hdr, c->auth_header);
    hdr = curl_slist_append(hdr, "Content-Type: application/x-protobuf");
    hdr = curl_slist_append(hdr, "Accept: application/x-protobuf");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
    if (post) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, (const char *)post);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)post_len);
    }
    CURLcode cc = curl_easy_perform(h);
    int rc = 0;
    if (cc != CURLE_OK) {
        rc = cairn_errorf(err, cc == CURLE_OPERATION_TIMEDOUT ? CAIRN_ETIMEDOUT : CAIRN_ENET,
                          "%s %s: %s%s", post ? "POST" : "GET", url, curl_easy_strerror(cc),
                          resp->too_big ? " (response over 16 MiB)" : "");
    } else {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    }
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    free(url);
    return rc;
}

static int curl_post(void *ctx, const char *path, const uint8_t *body, size_t len, long *status,
                     cairn_error *err)
{
    body_buf resp = {0};
    int rc = do_request(ctx, path, body, len, &resp, status, err);
    free(resp.data);
    return rc;
}

static int curl_get(void *ctx, const char *path, uint8_t **body, size_t *len, long *status,
                    cairn_error *err)
{
    body_buf resp = {0};
    *body = NULL;
    *len = 0;
    int rc = do_request(ctx, path, NULL, 0, &resp, status, err);
    if (rc || *status != 200) {
        free(resp.data);
        return rc;
    }
    *body = resp.data ? resp.data : malloc(1);
    *len = resp.len;
    return *body ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "curl: body");
}

static void curl_destroy(void *ctx)
{
    curl_ctx *c = ctx;
    if (!c) return;
    free(c->base_url);
    free(c->auth_header);
    free(c);
}

int cairn_edge_transport_curl_new(cairn_edge_transport *out, const char *base_url,
                                  const char *device_key, long timeout_ms, cairn_error *err)
{
    memset(out, 0, sizeof *out);
    if (!base_url || !*base_url || !device_key || timeout_ms < 1 || strpbrk(device_key, "\r\n") ||
        strlen(device_key) > 1024)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "curl transport: base URL, device key (one line) "
                            "and a positive timeout are required");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return cairn_errorf(err, CAIRN_ENOMEM, "curl_global_init failed");
    curl_ctx *c = calloc(1, sizeof *c);
    size_t hl = strlen(device_key) + 32;
    if (c) {
        c->base_url = strdup(base_url);
        c->auth_header = malloc(hl);
    }
    if (!c || !c->base_url || !c->auth_header) {
        curl_destroy(c);
        return cairn_errorf(err, CAIRN_ENOMEM, "curl transport");
    }
    size_t bl = strlen(c->base_url);
    while (bl > 0 && c->base_url[bl - 1] == '/')
        c->base_url[--bl] = 0;
    snprintf(c->auth_header, hl, "Authorization: Bearer %s", device_key);
    c->timeout_ms = timeout_ms;
    out->ctx = c;
    out->post = curl_post;
    out->get = curl_get;
    out->destroy = curl_destroy;
    return 0;
}
