/* tests/unit/test_http.c — the HTTP layer over real loopback sockets, with libcurl as client. */
#define _GNU_SOURCE /* strcasestr */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/log.h"
#include "common/metrics.h"
#include "services/http.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct reply {
    long status;
    char body[8192];
    size_t len;
    char retry_after[32];
    char headers[4096]; /* every header line as received */
} reply;

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    reply *r = ud;
    size_t k = sz * n;
    size_t room = sizeof r->body - 1 - r->len;
    size_t c = k < room ? k : room;
    memcpy(r->body + r->len, p, c);
    r->len += c;
    r->body[r->len] = '\0';
    return k;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    reply *r = ud;
    size_t k = sz * n;
    if (k > 13 && strncasecmp(p, "Retry-After: ", 13) == 0)
        snprintf(r->retry_after, sizeof r->retry_after, "%.*s", (int)(k - 15), p + 13);
    size_t used = strlen(r->headers);
    snprintf(r->headers + used, sizeof r->headers - used, "%.*s", (int)k, p);
    return k;
}

/* The value of header name in r (without the line end), or NULL; static buffer. */
static const char *header_of(const reply *r, const char *name)
{
    static char v[512];
    size_t n = strlen(name);
    for (const char *l = r->headers; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : "") {
        if (!strncasecmp(l, name, n) && l[n] == ':') {
            const char *s = l + n + 1;
            while (*s == ' ') s++;
            size_t k = strcspn(s, "\r\n");
            snprintf(v, sizeof v, "%.*s", (int)k, s);
            return v;
        }
    }
    return NULL;
}

/* chunked == 1 sends the body without Content-Length, so the limit is found while reading. */
static reply request_h(int port, const char *method, const char *path, const char *body,
                       size_t len, int chunked, const char *const *hdrs)
{
    reply r = {0};
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    struct curl_slist *h = NULL;
    for (size_t i = 0; hdrs && hdrs[i]; i++) h = curl_slist_append(h, hdrs[i]);
    if (h && !body) curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        if (chunked) h = curl_slist_append(h, "Transfer-Encoding: chunked");
        else curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        h = curl_slist_append(h, "Expect:");
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    else r.status = -1;
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return r;
}

static reply request(int port, const char *method, const char *path, const char *body, size_t len,
                     int chunked)
{
    return request_h(port, method, path, body, len, chunked, NULL);
}

/* An echo route: answers with the body length and the X-Test header. */
static void on_echo(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    char buf[256];
    const char *x = cairn_http_header(req, "X-Test");
    snprintf(buf, sizeof buf, "{\"len\":%zu,\"x\":\"%s\"}", req->body_len, x ? x : "");
    cairn_http_set_text(resp, 200, "application/json", buf);
}

static void on_busy(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_http_json_error(resp, 429, "queue full: %d waiting", 7);
    resp->retry_after_s = 3;
}

typedef struct fixture {
    cairn_metrics *m;
    cairn_http *h;
    int port;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    cairn_error err = {0};
    assert_int_equal(cairn_metrics_new(&f->m, &err), 0);
    cairn_http_params p = cairn_http_default_params();
    p.host = "127.0.0.1";
    p.port = 0;
    p.threads = 2;
    p.max_body = 1000;
    p.cors_origins = "https://ui.example, http://localhost:3000";
    assert_int_equal(cairn_http_new(&f->h, &p, f->m, &err), 0);
    assert_int_equal(cairn_http_route(f->h, "POST", "/echo", on_echo, NULL), 0);
    assert_int_equal(cairn_http_route_limit(f->h, "POST", "/upload", on_echo, NULL, 3000), 0);
    assert_int_equal(cairn_http_route(f->h, "GET", "/busy", on_busy, NULL), 0);
    assert_int_equal(cairn_http_route(f->h, "GET", "/files/*", on_echo, NULL), 0);
    assert_int_equal(cairn_http_start(f->h, &err), 0);
    f->port = cairn_http_port(f->h);
    assert_true(f->port > 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    cairn_http_free(f->h);
    cairn_metrics_free(f->m);
    free(f);
    return 0;
}

static void test_echo_and_prefix_route(void **state)
{
    fixture *f = *state;
    reply r = request(f->port, "POST", "/echo", "hello", 5, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"len\":5,\"x\":\"\"}");
    r = request(f->port, "GET", "/files/a/b", NULL, 0, 0);
    assert_int_equal(r.status, 200);
}

static void test_404_405(void **state)
{
    fixture *f = *state;
    reply r = request(f->port, "GET", "/nope", NULL, 0, 0);
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "\"type\":\"not_found_error\""));
    assert_non_null(strstr(r.body, "/nope"));
    r = request(f->port, "GET", "/echo", NULL, 0, 0);
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.body, "method GET is not allowed"));
}

static void test_413_by_length_and_by_chunks(void **state)
{
    fixture *f = *state;
    char big[5000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    reply r = request(f->port, "POST", "/echo", big, sizeof big - 1, 0);
    assert_int_equal(r.status, 413);
    assert_non_null(strstr(r.body, "limit of 1000 bytes"));
    r = request(f->port, "POST", "/echo", big, sizeof big - 1, 1);
    assert_int_equal(r.status, 413);
    /* exactly at the limit is accepted */
    big[1000] = '\0';
    r = request(f->port, "POST", "/echo", big, 1000, 1);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"len\":1000,\"x\":\"\"}");
}

static void test_retry_after_and_error_shape(void **state)
{
    fixture *f = *state;
    reply r = request(f->port, "GET", "/busy", NULL, 0, 0);
    assert_int_equal(r.status, 429);
    assert_string_equal(r.retry_after, "3");
    assert_string_equal(r.body, "{\"error\":{\"code\":429,\"message\":\"queue full: 7 waiting\","
                                "\"type\":\"rate_limit_error\"}}");
}

static void test_metrics_count_requests(void **state)
{
    fixture *f = *state;
    for (int i = 0; i < 3; i++) request(f->port, "POST", "/echo", "x", 1, 0);
    /* Requests are counted when their connection completes, which may trail the client's
     * receipt of the answer by a moment: render until the count shows (2 s at most). */
    char *text = NULL;
    size_t len = 0;
    const char *want = "cairn_http_requests_total{route=\"/echo\",code=\"200\"} 3";
    for (int i = 0; i < 100; i++) {
        free(text);
        assert_int_equal(cairn_metrics_render(f->m, &text, &len), 0);
        if (strstr(text, want) && strstr(text, "cairn_http_requests_in_flight 0")) break;
        usleep(20000);
    }
    assert_non_null(strstr(text, want));
    assert_non_null(strstr(text, "cairn_http_requests_in_flight 0"));
    free(text);
}

static void test_request_id(void **state)
{
    fixture *f = *state;
    /* Made here when the request has none: on successes and on errors alike. */
    reply a = request(f->port, "POST", "/echo", "x", 1, 0);
    reply b = request(f->port, "GET", "/nope", NULL, 0, 0);
    char id_a[80];
    assert_non_null(header_of(&a, "X-Request-Id"));
    snprintf(id_a, sizeof id_a, "%s", header_of(&a, "X-Request-Id"));
    assert_int_equal(strlen(id_a), 16);
    assert_non_null(header_of(&b, "X-Request-Id"));
    assert_string_not_equal(id_a, header_of(&b, "X-Request-Id"));
    /* Taken from the request when it is a plain short id... */
    const char *mine[] = {"X-Request-Id: trace-42.a:b_C", NULL};
    reply c = request_h(f->port, "POST", "/echo", "x", 1, 0, mine);
    assert_string_equal(header_of(&c, "X-Request-Id"), "trace-42.a:b_C");
    /* ...and replaced when it is not (spaces, quotes, too long). */
    const char *bad[] = {"X-Request-Id: a b\"c", NULL};
    reply d = request_h(f->port, "POST", "/echo", "x", 1, 0, bad);
    assert_int_equal(strlen(header_of(&d, "X-Request-Id")), 16);
    char longid[120] = "X-Request-Id: ";
    memset(longid + 14, 'z', 65);
    const char *lng[] = {longid, NULL};
    reply e = request_h(f->port, "POST", "/echo", "x", 1, 0, lng);
    assert_int_equal(strlen(header_of(&e, "X-Request-Id")), 16);
}

static void test_cors(void **state)
{
    fixture *f = *state;
    const char *pre[] = {"Origin: https://ui.example", "Access-Control-Request-Method: POST",
                         "Access-Control-Request-Headers: authorization, content-type", NULL};
    reply r = request_h(f->port, "OPTIONS", "/echo", NULL, 0, 0, pre);
    assert_int_equal(r.status, 204);
    assert_string_equal(header_of(&r, "Access-Control-Allow-Origin"), "https://ui.example");
    assert_non_null(strstr(header_of(&r, "Access-Control-Allow-Methods"), "POST"));
    assert_non_null(strstr(header_of(&r, "Access-Control-Allow-Headers"), "Authorization"));
    assert_non_null(header_of(&r, "Access-Control-Max-Age"));
    assert_non_null(header_of(&r, "X-Request-Id"));
    /* Another origin: refused, and no CORS header at all. */
    const char *evil[] = {"Origin: https://evil.example", "Access-Control-Request-Method: POST",
                          NULL};
    r = request_h(f->port, "OPTIONS", "/echo", NULL, 0, 0, evil);
    assert_int_equal(r.status, 403);
    assert_null(strcasestr(r.headers, "Access-Control-"));
    assert_non_null(strstr(r.body, "evil.example"));
    /* The actual request from the allowed origin carries the headers; from another, none. */
    const char *ok[] = {"Origin: http://localhost:3000", NULL};
    r = request_h(f->port, "POST", "/echo", "x", 1, 0, ok);
    assert_int_equal(r.status, 200);
    assert_string_equal(header_of(&r, "Access-Control-Allow-Origin"), "http://localhost:3000");
    assert_non_null(strstr(header_of(&r, "Access-Control-Expose-Headers"), "X-Request-Id"));
    r = request_h(f->port, "POST", "/echo", "x", 1, 0, evil);
    assert_int_equal(r.status, 200);
    assert_null(strcasestr(r.headers, "Access-Control-"));
    /* Unknown paths are 404 for OPTIONS too; a plain OPTIONS lists the methods. */
    r = request_h(f->port, "OPTIONS", "/nope", NULL, 0, 0, pre);
    assert_int_equal(r.status, 404);
    r = request(f->port, "OPTIONS", "/echo", NULL, 0, 0);
    assert_int_equal(r.status, 204);
    assert_string_equal(header_of(&r, "Allow"), "POST, OPTIONS");
    assert_null(strcasestr(r.headers, "Access-Control-"));
}

static void test_route_body_limit(void **state)
{
    fixture *f = *state;
    char big[2500];
    memset(big, 'y', sizeof big);
    reply r = request(f->port, "POST", "/upload", big, sizeof big, 0);
    assert_int_equal(r.status, 200); /* over the server's 1000, under the route's 3000 */
    r = request(f->port, "POST", "/echo", big, sizeof big, 0);
    assert_int_equal(r.status, 413);
    char huge[3501]; /* sent chunked: libcurl takes its length from the terminator */
    memset(huge, 'y', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    r = request(f->port, "POST", "/upload", huge, sizeof huge - 1, 1);
    assert_int_equal(r.status, 413);
    assert_non_null(strstr(r.body, "limit of 3000 bytes"));
}

/* One access-log line per request, with its id, route pattern, status and sizes. */
static void test_access_log(void **state)
{
    fixture *f = *state;
    char path[] = "/tmp/cairn-access-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    cairn_log_set_fd(fd);
    const char *id1[] = {"X-Request-Id: log-test-1", NULL};
    const char *id2[] = {"X-Request-Id: log-test-2", NULL};
    request_h(f->port, "POST", "/echo", "hello", 5, 0, id1);
    request_h(f->port, "GET", "/files/a/b?q=secret", NULL, 0, 0, id2);
    char buf[8192] = "";
    for (int i = 0; i < 100; i++) { /* lines are written when the connection completes */
        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
        buf[n > 0 ? n : 0] = '\0';
        if (strstr(buf, "log-test-2")) break;
        usleep(20000);
    }
    cairn_log_set_fd(2);
    close(fd);
    unlink(path);
    const char *l1 = strstr(buf, "id=log-test-1");
    assert_non_null(l1);
    const char *line1 = l1;
    while (line1 > buf && line1[-1] != '\n') line1--;
    assert_non_null(strstr(line1, "access request method=POST route=/echo status=200 bytes=16 "
                                  "bytes_in=5 duration_ms="));
    assert_non_null(strstr(buf, "method=GET route=/files/* status=200"));
    assert_null(strstr(buf, "secret")); /* patterns, never raw paths or queries */
    /* Exactly one line each. */
    assert_null(strstr(l1 + 1, "id=log-test-1"));
}

static void test_bad_params(void **state)
{
    cairn_http *h = NULL;
    cairn_error err = {0};
    cairn_http_params p = cairn_http_default_params();
    p.port = 70000;
    assert_int_equal(cairn_http_new(&h, &p, NULL, &err), CAIRN_ERANGE);
    assert_non_null(strstr(err.msg, "70000"));
    p = cairn_http_default_params();
    p.cors_origins = "https://ok.example,ftp://x";
    assert_int_equal(cairn_http_new(&h, &p, NULL, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "ftp://x"));
    p.cors_origins = "https://ok.example/path";
    assert_int_equal(cairn_http_new(&h, &p, NULL, &err), CAIRN_EINVAL);
    p.cors_origins = NULL;
    p.host = "not-an-address";
    p.port = 0;
    assert_int_equal(cairn_http_new(&h, &p, NULL, &err), 0);
    assert_int_equal(cairn_http_start(h, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "not-an-address"));
    cairn_http_free(h);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_echo_and_prefix_route, setup, teardown),
        cmocka_unit_test_setup_teardown(test_404_405, setup, teardown),
        cmocka_unit_test_setup_teardown(test_413_by_length_and_by_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_after_and_error_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_count_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_body_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_access_log, setup, teardown),
        cmocka_unit_test(test_bad_params),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
