/*
 * tests/unit/test_edge_socket.c — the edge SDK's plain-socket transport example
 * (clients/edge/examples/transport_socket.c) against a scripted server on loopback: the requests
 * it sends (method, path, headers, body), the answers it accepts, and every kind of broken,
 * oversized, cut-short or silent answer refused with a clear error within the deadline, never
 * read past its buffers (ASan in `make test`; under qemu-aarch64 in the SDK's aarch64 build).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strcasestr */
#endif
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

/* The example is one file that device makers copy; compile it in whole, as they would. */
#include "clients/edge/examples/transport_socket.c"

/* ---- A scripted server: one connection, one canned answer --------------------------------- */

typedef struct {
    int lfd, port;
    const char *answer; /* sent after the request has been read */
    size_t answer_len;
    size_t big_body; /* then this many more bytes ('x'), for oversized bodies */
    int silent;      /* read the request, answer nothing, hold the connection until stopped */
    int stop;
    char request[65536]; /* what the client sent: head and body */
    size_t request_len;
    pthread_t thread;
    pthread_mutex_t lock;
} server;

static void *serve(void *arg)
{
    server *s = arg;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0) return NULL;
    /* The request: headers, then Content-Length bytes of body. */
    size_t want = (size_t)-1;
    while (s->request_len < sizeof s->request - 1 && s->request_len < want) {
        ssize_t n = recv(fd, s->request + s->request_len,
                         sizeof s->request - 1 - s->request_len, 0);
        if (n <= 0) break;
        s->request_len += (size_t)n;
        s->request[s->request_len] = 0;
        char *end = strstr(s->request, "\r\n\r\n");
        if (end && want == (size_t)-1) {
            char *cl = strcasestr(s->request, "Content-Length:");
            want = (size_t)(end + 4 - s->request) + (cl ? strtoul(cl + 15, NULL, 10) : 0);
        }
    }
    if (s->silent) {
        for (;;) {
            pthread_mutex_lock(&s->lock);
            int stop = s->stop;
            pthread_mutex_unlock(&s->lock);
            if (stop) break;
            usleep(10000);
        }
    } else {
        /* In small pieces, so that the client has to put the answer together. */
        for (size_t off = 0; off < s->answer_len;) {
            size_t n = s->answer_len - off < 7 ? s->answer_len - off : 7;
            if (send(fd, s->answer + off, n, MSG_NOSIGNAL) <= 0) break;
            off += n;
        }
        static char chunk[65536];
        memset(chunk, 'x', sizeof chunk);
        for (size_t off = 0; off < s->big_body;) {
            size_t n = s->big_body - off < sizeof chunk ? s->big_body - off : sizeof chunk;
            ssize_t w = send(fd, chunk, n, MSG_NOSIGNAL);
            if (w <= 0) break; /* the client gave up reading: expected for oversized bodies */
            off += (size_t)w;
        }
    }
    close(fd);
    return NULL;
}

static void start(server *s, const char *answer)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    s->answer = answer;
    s->answer_len = answer ? strlen(answer) : 0;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s->lfd, 4), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &al), 0);
    s->port = ntohs(a.sin_port);
}

static void run(server *s)
{
    assert_int_equal(pthread_create(&s->thread, NULL, serve, s), 0);
}

static void finish(server *s)
{
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    close(s->lfd);
    pthread_mutex_destroy(&s->lock);
}

static cairn_edge_transport transport_to(const server *s, int timeout_ms)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", s->port);
    cairn_edge_transport t;
    cairn_error err;
    int rc = socket_transport_new(&t, url, "k3y", timeout_ms, &err);
    if (rc) fail_msg("transport: %s", err.msg);
    return t;
}

/* GETs the bundle path from a server that answers with `answer`; returns the transport's code. */
static int get_answer(const char *answer, size_t big_body, long *status, uint8_t **body,
                      size_t *len, cairn_error *err)
{
    server s;
    start(&s, answer);
    s.big_body = big_body;
    run(&s);
    cairn_edge_transport t = transport_to(&s, 5000);
    *status = 0;
    int rc = t.get(t.ctx, "/v1/edge/models/edge/bundle?after=3", body, len, status, err);
    finish(&s);
    t.destroy(t.ctx);
    return rc;
}

/* ---- What it sends and what it accepts ------------------------------------------------------ */

static void test_get_sends_the_request_and_returns_the_body(void **state)
{
    (void)state;
    server s;
    start(&s, "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
              "content-length:  5 \r\n\r\nhello");
    run(&s);
    cairn_edge_transport t = transport_to(&s, 5000);
    uint8_t *body = NULL;
    size_t len = 0;
    long status = 0;
    cairn_error err;
    assert_int_equal(t.get(t.ctx, "/v1/edge/models/edge/bundle?after=3", &body, &len, &status,
                           &err),
                     0);
    finish(&s);
    t.destroy(t.ctx);
    assert_int_equal(status, 200);
    assert_int_equal(len, 5);
    assert_memory_equal(body, "hello", 5);
    free(body);
    char host[64];
    snprintf(host, sizeof host, "\r\nHost: 127.0.0.1:%d\r\n", s.port);
    assert_true(strncmp(s.request, "GET /v1/edge/models/edge/bundle?after=3 HTTP/1.0\r\n", 50) ==
                0);
    assert_non_null(strstr(s.request, host));
    assert_non_null(strstr(s.request, "\r\nAuthorization: Bearer k3y\r\n"));
}

static void test_post_sends_the_body(void **state)
{
    (void)state;
    uint8_t body[3000];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (uint8_t)(i * 7);
    server s;
    start(&s, "HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"accepted\": 3}");
    run(&s);
    cairn_edge_transport t = transport_to(&s, 5000);
    long status = 0;
    cairn_error err;
    assert_int_equal(t.post(t.ctx, "/v1/edge/samples", body, sizeof body, &status, &err), 0);
    finish(&s);
    t.destroy(t.ctx);
    assert_int_equal(status, 200);
    assert_true(strncmp(s.request, "POST /v1/edge/samples HTTP/1.0\r\n", 32) == 0);
    assert_non_null(strstr(s.request, "\r\nContent-Length: 3000\r\n"));
    assert_non_null(strstr(s.request, "\r\nContent-Type: application/x-protobuf\r\n"));
    char *b = strstr(s.request, "\r\n\r\n") + 4;
    assert_int_equal(s.request_len - (size_t)(b - s.request), sizeof body);
    assert_memory_equal(b, body, sizeof body);
}

static void test_answers_without_a_body_or_length(void **state)
{
    (void)state;
    uint8_t *body = (uint8_t *)"unchanged";
    size_t len = 1;
    long status;
    cairn_error err;
    /* 204: no body, and none is read. */
    assert_int_equal(get_answer("HTTP/1.1 204 No Content\r\n\r\n", 0, &status, &body, &len, &err),
                     0);
    assert_int_equal(status, 204);
    assert_null(body);
    assert_int_equal(len, 0);
    /* Other statuses come back as they are, for the SDK to judge. */
    assert_int_equal(get_answer("HTTP/1.0 429 Too Many\r\nRetry-After: 1\r\n\r\n", 0, &status,
                                &body, &len, &err),
                     0);
    assert_int_equal(status, 429);
    assert_null(body);
    /* No Content-Length: the body ends where the server closes the connection. */
    assert_int_equal(get_answer("HTTP/1.0 200 OK\r\n\r\n", 100000, &status, &body, &len, &err), 0);
    assert_int_equal(status, 200);
    assert_int_equal(len, 100000);
    assert_true(body[0] == 'x' && body[99999] == 'x');
    free(body);
    /* An empty 200 body is a body of 0 bytes, not an error. */
    assert_int_equal(get_answer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, &status,
                                &body, &len, &err),
                     0);
    assert_non_null(body);
    assert_int_equal(len, 0);
    free(body);
}

/* ---- What it refuses ------------------------------------------------------------------------- */

static void test_broken_answers_are_refused(void **state)
{
    (void)state;
    static const struct {
        const char *answer;
        int code;
        const char *why; /* in the message */
    } cases[] = {
        {"", CAIRN_ENET, "closed before"},
        {"garbage\r\n\r\n", CAIRN_ENET, "status line"},
        {"HTTP/2 200 OK\r\n\r\n", CAIRN_ENET, "status line"},
        {"HTTP/1.1 20 OK\r\n\r\n", CAIRN_ENET, "status line"},
        {"HTTP/1.1 2000 OK\r\n\r\n", CAIRN_ENET, "status line"},
        {"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", CAIRN_ENET, "header line"},
        {"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", CAIRN_ENET, "header line"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello", CAIRN_ENET, "Content-Length"},
        {"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello", CAIRN_ENET, "Content-Length"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n", CAIRN_ENET,
         "Content-Length"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", CAIRN_ENET,
         "two Content-Lengths"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
         CAIRN_ENET, "Transfer-Encoding"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", CAIRN_ENET, "cut short"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 17825792\r\n\r\n", CAIRN_ELIMIT, "at most"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *body = NULL;
        size_t len = 0;
        long status = 0;
        cairn_error err = {0};
        int rc = get_answer(cases[i].answer, 0, &status, &body, &len, &err);
        if (rc != cases[i].code || !strstr(err.msg, cases[i].why))
            fail_msg("answer %zu: got %d '%s', want %d '...%s...'", i, rc, err.msg,
                     cases[i].code, cases[i].why);
        assert_null(body);
    }
}

static void test_oversized_answers_are_refused(void **state)
{
    (void)state;
    uint8_t *body = NULL;
    size_t len = 0;
    long status = 0;
    cairn_error err;
    /* Headers past 8 KiB. */
    char *big = malloc(20000);
    strcpy(big, "HTTP/1.1 200 OK\r\nX-Padding: ");
    size_t at = strlen(big);
    memset(big + at, 'p', 15000);
    strcpy(big + at + 15000, "\r\n\r\n");
    assert_int_equal(get_answer(big, 0, &status, &body, &len, &err), CAIRN_ENET);
    assert_non_null(strstr(err.msg, "headers over"));
    free(big);
    /* A close-delimited body of exactly 16 MiB is taken; one byte more is refused. */
    assert_int_equal(get_answer("HTTP/1.0 200 OK\r\n\r\n", 16u << 20, &status, &body, &len,
                                &err),
                     0);
    assert_int_equal(len, 16u << 20);
    free(body);
    body = NULL;
    assert_int_equal(get_answer("HTTP/1.0 200 OK\r\n\r\n", (16u << 20) + 1, &status, &body, &len,
                                &err),
                     CAIRN_ELIMIT);
    assert_null(body);
}

static void test_silent_server_times_out(void **state)
{
    (void)state;
    server s;
    start(&s, NULL);
    s.silent = 1;
    run(&s);
    cairn_edge_transport t = transport_to(&s, 300);
    long status = 0;
    cairn_error err;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    assert_int_equal(t.post(t.ctx, "/v1/edge/samples", (const uint8_t *)"x", 1, &status, &err),
                     CAIRN_ETIMEDOUT);
    clock_gettime(CLOCK_MONOTONIC, &b);
    finish(&s);
    t.destroy(t.ctx);
    double s_taken = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    assert_true(s_taken >= 0.25 && s_taken < 3.0);
}

static void test_nobody_listening(void **state)
{
    (void)state;
    server s;
    start(&s, NULL);
    cairn_edge_transport t = transport_to(&s, 2000);
    close(s.lfd); /* the port is free again: connecting is refused */
    pthread_mutex_destroy(&s.lock);
    long status = 0;
    cairn_error err;
    assert_int_equal(t.post(t.ctx, "/v1/edge/samples", (const uint8_t *)"x", 1, &status, &err),
                     CAIRN_ENET);
    assert_non_null(strstr(err.msg, "connect"));
    t.destroy(t.ctx);
}

static void test_urls_and_keys(void **state)
{
    (void)state;
    static const char *bad[] = {
        "https://127.0.0.1:8080", "ftp://x", "http://", "http://:8080", "http://h:0",
        "http://h:65536", "http://h:80x", "http://h:80/path", "http://[::1:8080", "http://[]:80",
        "127.0.0.1:8080",
    };
    cairn_edge_transport t;
    cairn_error err;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (socket_transport_new(&t, bad[i], "k", 1000, &err) != CAIRN_EINVAL)
            fail_msg("URL '%s' was accepted", bad[i]);
        assert_null(t.ctx);
    }
    static const char *good[] = {"http://127.0.0.1:8080", "http://localhost",
                                 "http://[::1]:8080/", "http://cloud.example:65535"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (socket_transport_new(&t, good[i], "k", 1000, &err) != 0)
            fail_msg("URL '%s' was refused: %s", good[i], err.msg);
        t.destroy(t.ctx);
    }
    assert_int_equal(socket_transport_new(&t, "http://h", "two\r\nlines", 1000, &err),
                     CAIRN_EINVAL);
    assert_int_equal(socket_transport_new(&t, "http://h", "", 1000, &err), CAIRN_EINVAL);
    assert_int_equal(socket_transport_new(&t, "http://h", "k", 0, &err), CAIRN_EINVAL);
    /* A path that would split the request line is refused before anything is sent. */
    assert_int_equal(socket_transport_new(&t, "http://127.0.0.1:9", "k", 1000, &err), 0);
    long status;
    assert_int_equal(t.post(t.ctx, "/a b", (const uint8_t *)"x", 1, &status, &err), CAIRN_EINVAL);
    t.destroy(t.ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_sends_the_request_and_returns_the_body),
        cmocka_unit_test(test_post_sends_the_body),
        cmocka_unit_test(test_answers_without_a_body_or_length),
        cmocka_unit_test(test_broken_answers_are_refused),
        cmocka_unit_test(test_oversized_answers_are_refused),
        cmocka_unit_test(test_silent_server_times_out),
        cmocka_unit_test(test_nobody_listening),
        cmocka_unit_test(test_urls_and_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
