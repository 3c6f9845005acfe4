/*
 * clients/edge/examples/transport_socket.c — the transport interface of <cairn_edge.h> over plain
 * POSIX sockets (transport_socket.h says what it does and does not do).
 *
 * One request per connection, HTTP/1.0: the server then answers with a Content-Length or by
 * closing the connection, never with chunked encoding, and there is no connection state to keep
 * between the upload thread and the update thread (each request lives on its caller's stack, so
 * both may run at once). Every wait is a poll() bounded by the request's deadline, so no server
 * can hold a call longer than timeout_ms. Everything the server sends is treated as hostile: the
 * header block is bounded, the status line and Content-Length are parsed strictly, a body shorter
 * than announced is an error, not data, and no body grows past 16 MiB.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem, SOCK_NONBLOCK, MSG_NOSIGNAL, getaddrinfo in strict C modes */
#endif
#include "transport_socket.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEADER_MAX 8192        /* the answer's status line and headers */
#define BODY_MAX   (16u << 20) /* bundles are far smaller; the curl transport has the same cap */

typedef struct {
    char host[256]; /* as connect needs it: no brackets around IPv6 */
    char port[8];
    char host_header[272];
    char auth[1100]; /* "Bearer <key>" */
    int timeout_ms;
} socket_ctx;

/* ---- Deadlines and waiting ------------------------------------------------------------------ */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for events or the deadline passes. Returns 0, CAIRN_ETIMEDOUT or
 * CAIRN_ENET. */
static int wait_fd(int fd, short events, long long deadline, const char *what, cairn_error *err)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) return cairn_errorf(err, CAIRN_ETIMEDOUT, "socket transport: %s", what);
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (n > 0) return 0; /* readable, writable, or an error the next call reports */
        if (n < 0 && errno != EINTR)
            return cairn_errorf(err, CAIRN_ENET, "socket transport: poll: %s", strerror(errno));
    }
}

static int connect_to(const socket_ctx *c, long long deadline, int *fd_out, cairn_error *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(c->host, c->port, &hints, &res);
    if (g)
        return cairn_errorf(err, CAIRN_ENET, "socket transport: %s: %s", c->host,
                            gai_strerror(g));
    int rc = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            rc = cairn_errorf(err, CAIRN_ENET, "socket transport: socket: %s", strerror(errno));
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS) {
            rc = wait_fd(fd, POLLOUT, deadline, "connect timed out", err);
            int so = 0;
            socklen_t sl = sizeof so;
            if (!rc && getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl) == 0 && so == 0) {
                *fd_out = fd;
                freeaddrinfo(res);
                return 0;
            }
            if (!rc)
                rc = cairn_errorf(err, CAIRN_ENET, "socket transport: connect %s:%s: %s",
                                  c->host, c->port, strerror(so ? so : errno));
        } else {
            rc = cairn_errorf(err, CAIRN_ENET, "socket transport: connect %s:%s: %s", c->host,
                              c->port, strerror(errno));
        }
        close(fd);
        if (rc == CAIRN_ETIMEDOUT) break; /* the deadline is shared: no time for the next one */
    }
    freeaddrinfo(res);
    return rc ? rc : cairn_errorf(err, CAIRN_ENET, "socket transport: %s: no address", c->host);
}

static int send_all(int fd, const void *buf, size_t len, long long deadline, cairn_error *err)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL); /* a closed peer is an error, not SIGPIPE */
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            int rc = wait_fd(fd, POLLOUT, deadline, "send timed out", err);
            if (rc) return rc;
        } else {
            return cairn_errorf(err, CAIRN_ENET, "socket transport: send: %s",
                                n < 0 ? strerror(errno) : "connection closed");
        }
    }
    return 0;
}

/* Receives up to cap bytes. Returns the count (0: the server closed the connection) or a negative
 * code. */
static long recv_some(int fd, void *buf, size_t cap, long long deadline, cairn_error *err)
{
    for (;;) {
        ssize_t n = recv(fd, buf, cap, 0);
        if (n >= 0) return (long)n;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return cairn_errorf(err, CAIRN_ENET, "socket transport: recv: %s", strerror(errno));
        int rc = wait_fd(fd, POLLIN, deadline, "no answer in time", err);
        if (rc) return rc;
    }
}

/* ---- The answer ----------------------------------------------------------------------------- */

/* Strict decimal: digits only, no sign, no overflow past max. Returns 0 or -1. */
static int parse_size(const char *s, const char *end, size_t max, size_t *out)
{
    size_t v = 0;
    if (s == end) return -1;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9') return -1;
        if (v > (max - (size_t)(*s - '0')) / 10) return -1;
        v = v * 10 + (size_t)(*s - '0');
    }
    *out = v;
    return 0;
}

/*
 * Parses the header block hdr[0..len) (ending with the blank line): the status, and the body
 * length when announced (*has_len). Returns 0 or CAIRN_ENET / CAIRN_ELIMIT with the reason.
 */
static int parse_head(const char *hdr, size_t len, long *status, int *has_len, size_t *body_len,
                      cairn_error *err)
{
    const char *end = hdr + len, *eol = memchr(hdr, '\r', len);
    /* "HTTP/1.x SSS reason": the version's minor digit and a three-digit status. */
    if (!eol || eol - hdr < 12 || memcmp(hdr, "HTTP/1.", 7) != 0 || hdr[7] < '0' ||
        hdr[7] > '9' || hdr[8] != ' ' || hdr[9] < '1' || hdr[9] > '5' || hdr[10] < '0' ||
        hdr[10] > '9' || hdr[11] < '0' || hdr[11] > '9' || (eol - hdr > 12 && hdr[12] != ' '))
        return cairn_errorf(err, CAIRN_ENET, "socket transport: malformed status line");
    *status = (hdr[9] - '0') * 100 + (hdr[10] - '0') * 10 + (hdr[11] - '0');
    *has_len = 0;
    for (const char *line = eol + 2; line < end;) {
        const char *le = memchr(line, '\r', (size_t)(end - line));
        if (!le || le + 1 >= end || le[1] != '\n')
            return cairn_errorf(err, CAIRN_ENET, "socket transport: malformed header line");
        if (le == line) break; /* the blank line */
        const char *colon = memchr(line, ':', (size_t)(le - line));
        if (!colon || colon == line || *line == ' ' || *line == '\t')
            return cairn_errorf(err, CAIRN_ENET, "socket transport: malformed header line");
        const char *v = colon + 1, *ve = le;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t nl = (size_t)(colon - line);
        if (nl == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
            size_t n;
            if (parse_size(v, ve, (size_t)-1, &n))
                return cairn_errorf(err, CAIRN_ENET, "socket transport: bad Content-Length");
            if (*has_len && n != *body_len) /* two lengths: a smuggling attempt or a bug */
                return cairn_errorf(err, CAIRN_ENET, "socket transport: two Content-Lengths");
            if (n > BODY_MAX)
                return cairn_errorf(err, CAIRN_ELIMIT, "socket transport: a body of %zu bytes "
                                    "(at most %u)", n, BODY_MAX);
            *has_len = 1;
            *body_len = n;
        } else if (nl == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) {
            /* Not allowed in an answer to HTTP/1.0: refuse rather than misread the body. */
            return cairn_errorf(err, CAIRN_ENET, "socket transport: Transfer-Encoding in an "
                                "answer to HTTP/1.0");
        }
        line = le + 2;
    }
    return 0;
}

/*
 * One request: connect, send, read the answer. When want_body and the status is 200, *body gets
 * the malloc'ed body; otherwise the body is not read at all (closing the connection drops it).
 */
static int request(socket_ctx *c, const char *method, const char *path, const uint8_t *body,
                   size_t body_len, long *status, int want_body, uint8_t **out, size_t *out_len,
                   cairn_error *err)
{
    long long deadline = now_ms() + c->timeout_ms;
    char head[HEADER_MAX + 1];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.0\r\nHost: %s\r\nAuthorization: %s\r\n"
                     "Content-Type: application/x-protobuf\r\nAccept: application/x-protobuf\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     method, path, c->host_header, c->auth, body_len);
    if (n < 0 || (size_t)n >= sizeof head || strpbrk(path, "\r\n "))
        return cairn_errorf(err, CAIRN_EINVAL, "socket transport: bad request path");
    int fd = -1;
    int rc = connect_to(c, deadline, &fd, err);
    if (rc) return rc;
    if ((rc = send_all(fd, head, (size_t)n, deadline, err)) ||
        (body_len && (rc = send_all(fd, body, body_len, deadline, err)))) {
        close(fd);
        return rc;
    }

    /* The header block: read until the blank line, keeping what follows it (the body's start). */
    size_t got = 0;
    char *blank = NULL;
    while (!blank) {
        if (got == HEADER_MAX) {
            close(fd);
            return cairn_errorf(err, CAIRN_ENET, "socket transport: headers over %d bytes",
                                HEADER_MAX);
        }
        long r = recv_some(fd, head + got, HEADER_MAX - got, deadline, err);
        if (r <= 0) {
            close(fd);
            return r < 0 ? (int)r
                         : cairn_errorf(err, CAIRN_ENET, "socket transport: connection closed "
                                        "before the answer's headers ended");
        }
        got += (size_t)r;
        head[got] = 0;
        blank = memmem(head, got, "\r\n\r\n", 4);
    }
    size_t head_len = (size_t)(blank - head) + 4, body_have = got - head_len;
    int has_len = 0;
    size_t len = 0;
    if ((rc = parse_head(head, head_len, status, &has_len, &len, err)) ||
        !want_body || *status != 200) {
        close(fd);
        return rc;
    }

    /* The body: exactly Content-Length bytes, or everything until the server closes. */
    size_t cap = has_len ? len : (body_have > 65536 ? body_have : 65536);
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf) {
        close(fd);
        return cairn_errorf(err, CAIRN_ENOMEM, "socket transport: body of %zu bytes", cap);
    }
    /* Bytes past Content-Length are ignored: the connection carries this one answer only. */
    size_t have = has_len && body_have > len ? len : body_have;
    memcpy(buf, head + head_len, have);
    for (;;) {
        if (has_len && have == len) break;
        if (!has_len && have == cap) {
            if (cap >= BODY_MAX) {
                char one;
                long r = recv_some(fd, &one, 1, deadline, err); /* the end, or one too many */
                if (r > 0)
                    rc = cairn_errorf(err, CAIRN_ELIMIT, "socket transport: body over %u bytes",
                                      BODY_MAX);
                else if (r < 0)
                    rc = (int)r;
                goto done;
            }
            size_t ncap = cap * 2 > BODY_MAX ? BODY_MAX : cap * 2;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                rc = cairn_errorf(err, CAIRN_ENOMEM, "socket transport: body of %zu bytes", ncap);
                goto done;
            }
            buf = nb;
            cap = ncap;
        }
        long r = recv_some(fd, buf + have, cap - have, deadline, err);
        if (r < 0) {
            rc = (int)r;
            goto done;
        }
        if (r == 0) {
            if (has_len)
                rc = cairn_errorf(err, CAIRN_ENET, "socket transport: body cut short at %zu of "
                                  "%zu bytes", have, len);
            break;
        }
        have += (size_t)r;
    }
done:
    close(fd);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    *out_len = have;
    return 0;
}

/* ---- The interface -------------------------------------------------------------------------- */

static int socket_post(void *ctx, const char *path, const uint8_t *body, size_t len,
                       long *status, cairn_error *err)
{
    return request(ctx, "POST", path, body, len, status, 0, NULL, NULL, err);
}

static int socket_get(void *ctx, const char *path, uint8_t **body, size_t *len, long *status,
                      cairn_error *err)
{
    *body = NULL;
    *len = 0;
    return request(ctx, "GET", path, NULL, 0, status, 1, body, len, err);
}

static void socket_destroy(void *ctx)
{
    free(ctx);
}

int socket_transport_new(cairn_edge_transport *out, const char *base_url, const char *device_key,
                         int timeout_ms, cairn_error *err)
{
    memset(out, 0, sizeof *out);
    if (!base_url || strncmp(base_url, "http://", 7) != 0)
        return cairn_errorf(err, CAIRN_EINVAL, "socket transport: the URL must be http://HOST"
                            "[:PORT] (no TLS in this transport)");
    if (!device_key || !*device_key || strlen(device_key) > 1024 ||
        strpbrk(device_key, "\r\n") || timeout_ms < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "socket transport: a one-line device key and a "
                            "positive timeout are required");
    socket_ctx *c = calloc(1, sizeof *c);
    if (!c) return cairn_errorf(err, CAIRN_ENOMEM, "socket transport");
    const char *h = base_url + 7, *hs = h, *he;
    if (*h == '[') { /* [IPv6]:port: connect wants the address without its brackets */
        hs = h + 1;
        he = strchr(hs, ']');
        if (!he) goto bad;
    } else {
        he = h + strcspn(h, ":/");
    }
    size_t hl = (size_t)(he - hs);
    if (hl == 0 || hl >= sizeof c->host) goto bad;
    memcpy(c->host, hs, hl);
    const char *rest = *he == ']' ? he + 1 : he;
    if (*rest == ':') {
        size_t pl = strcspn(rest + 1, "/"), pv;
        if (pl == 0 || pl >= sizeof c->port || parse_size(rest + 1, rest + 1 + pl, 65535, &pv) ||
            pv == 0)
            goto bad;
        memcpy(c->port, rest + 1, pl);
        rest += 1 + pl;
    } else {
        memcpy(c->port, "80", 3);
    }
    if (*rest && strcmp(rest, "/") != 0) goto bad; /* requests carry their own absolute path */
    /* Host: as the URL spells it, port included (RFC 9110 7.2). */
    snprintf(c->host_header, sizeof c->host_header, "%.*s", (int)(rest - h), h);
    snprintf(c->auth, sizeof c->auth, "Bearer %s", device_key);
    c->timeout_ms = timeout_ms;
    out->ctx = c;
    out->post = socket_post;
    out->get = socket_get;
    out->destroy = socket_destroy;
    return 0;
bad:
    free(c);
    return cairn_errorf(err, CAIRN_EINVAL, "socket transport: cannot parse URL '%s' "
                        "(http://HOST[:PORT])", base_url);
}
