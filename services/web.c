/*
 * services/web.c — the web UI's static files (see web.h). The table is filled at open and only
 * read afterwards, so handlers need no lock.
 */
#define CAIRN_LOG_TAG "web"
#include "services/web.h"

#include "common/log.h"

#include <dirent.h>
#include <errno.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define WEB_MAX_FILES 64
#define WEB_MAX_FILE (4u << 20)

typedef struct web_file {
    char name[64];
    const char *type;
    const char *headers[12]; /* the answer's headers: static ones, then ETag (etag below) */
    char *data;
    size_t len;
    char etag[24]; /* "\"<16 hex>\"" */
} web_file;

struct cairn_web {
    web_file files[WEB_MAX_FILES];
    int n;
};

/* The policy allows what the page uses: its own scripts, styles, images and API calls. Chart.js
 * sets canvas sizes through element.style, which style-src does not govern. */
static const char *const html_headers[] = {
    "Cache-Control", "no-cache",
    "X-Content-Type-Options", "nosniff",
    "Referrer-Policy", "no-referrer",
    "Content-Security-Policy",
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    NULL,
};
static const char *const asset_headers[] = {
    "Cache-Control", "no-cache",
    "X-Content-Type-Options", "nosniff",
    NULL,
};

static const struct {
    const char *ext, *type;
} types[] = {
    {".html", "text/html; charset=utf-8"},  {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},    {".svg", "image/svg+xml"},
    {".png", "image/png"},                  {".ico", "image/x-icon"},
    {".json", "application/json"},          {".txt", "text/plain; charset=utf-8"},
};

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= sizeof ((web_file *)0)->name || s[0] == '.') return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static const char *type_of(const char *name)
{
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(dot, types[i].ext)) return types[i].type;
    return "application/octet-stream";
}

/* Reads path (a regular file of at most WEB_MAX_FILE bytes) into the next slot as name. */
static int load(cairn_web *w, const char *path, const char *name, cairn_error *err)
{
    if (w->n == WEB_MAX_FILES)
        return cairn_errorf(err, CAIRN_ELIMIT, "web: more than %d files", WEB_MAX_FILES);
    FILE *f = fopen(path, "rb");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "web: %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > WEB_MAX_FILE) {
        fclose(f);
        return cairn_errorf(err, CAIRN_ELIMIT, "web: %s is not a regular file of at most %u bytes",
                            path, WEB_MAX_FILE);
    }
    web_file *wf = &w->files[w->n];
    wf->len = (size_t)st.st_size;
    wf->data = malloc(wf->len ? wf->len : 1);
    size_t got = wf->data ? fread(wf->data, 1, wf->len, f) : 0;
    fclose(f);
    if (!wf->data || got != wf->len) {
        int code = wf->data ? CAIRN_EIO : CAIRN_ENOMEM;
        free(wf->data);
        wf->data = NULL;
        return cairn_errorf(err, code, "web: cannot read %s", path);
    }
    snprintf(wf->name, sizeof wf->name, "%s", name);
    wf->type = type_of(name);
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)wf->data, wf->len, d);
    snprintf(wf->etag, sizeof wf->etag, "\"%02x%02x%02x%02x%02x%02x%02x%02x\"", d[0], d[1], d[2],
             d[3], d[4], d[5], d[6], d[7]);
    const char *const *base = strstr(wf->type, "text/html") ? html_headers : asset_headers;
    size_t k = 0;
    for (; base[k]; k++) wf->headers[k] = base[k];
    wf->headers[k++] = "ETag";
    wf->headers[k++] = wf->etag;
    wf->headers[k] = NULL;
    w->n++;
    return 0;
}

static const web_file *find(const cairn_web *w, const char *name)
{
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->files[i].name, name)) return &w->files[i];
    return NULL;
}

int cairn_web_open(cairn_web **out, const cairn_web_params *p, cairn_error *err)
{
    *out = NULL;
    if (!p->dir) return cairn_errorf(err, CAIRN_EINVAL, "web: no directory given");
    DIR *d = opendir(p->dir);
    if (!d) return cairn_errorf(err, CAIRN_ENOTFOUND, "web: %s: %s", p->dir, strerror(errno));
    cairn_web *w = calloc(1, sizeof *w);
    if (!w) {
        closedir(d);
        return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    }
    int rc = 0;
    struct dirent *e;
    char path[4096];
    while (!rc && (e = readdir(d))) {
        if (!name_ok(e->d_name)) continue;
        snprintf(path, sizeof path, "%s/%s", p->dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue; /* no links, no dirs */
        rc = load(w, path, e->d_name, err);
    }
    closedir(d);
    if (!rc && !find(w, "index.html"))
        rc = cairn_errorf(err, CAIRN_ENOTFOUND, "web: %s has no index.html", p->dir);
    if (!rc && p->chartjs && !find(w, "chart.js")) {
        cairn_error cerr = {0};
        if (load(w, p->chartjs, "chart.js", &cerr) != 0)
            CAIRN_LOG_WARN("no Chart.js: the metrics page draws no charts", "detail=%s",
                           cerr.msg);
    }
    if (rc) {
        cairn_web_close(w);
        return rc;
    }
    *out = w;
    return 0;
}

static void serve(const web_file *f, const cairn_http_req *req, cairn_http_resp *resp)
{
    resp->headers = f->headers;
    const char *inm = cairn_http_header(req, "If-None-Match");
    if (inm && strstr(inm, f->etag)) {
        resp->status = 304;
        resp->content_type = f->type;
        return;
    }
    char *b = malloc(f->len ? f->len : 1);
    if (!b) {
        cairn_http_json_error(resp, 503, "out of memory");
        return;
    }
    memcpy(b, f->data, f->len);
    resp->status = 200;
    resp->content_type = f->type;
    resp->body = b;
    resp->body_len = f->len;
}

static void on_index(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    serve(find(ctx, "index.html"), req, resp);
}

static void on_asset(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    const web_file *f = find(ctx, req->path + strlen("/ui/"));
    if (!f) {
        cairn_http_json_error(resp, 404, "no such file: %.80s", req->path);
        return;
    }
    serve(f, req, resp);
}

int cairn_web_routes(cairn_web *w, cairn_http *h)
{
    int rc = cairn_http_route(h, "GET", "/", on_index, w);
    if (!rc) rc = cairn_http_route(h, "GET", "/ui/*", on_asset, w);
    return rc;
}

int cairn_web_count(const cairn_web *w) { return w ? w->n : 0; }

void cairn_web_close(cairn_web *w)
{
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->files[i].data);
    free(w);
}
