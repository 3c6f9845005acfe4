/*
 * services/web.h — the web UI's static files, served by cairnd at / and /ui/<name>.
 *
 * The files of one directory (web/ in the source tree, or where `make install` put it) are read
 * once at start into memory: a request can only name one of them, never a path on disk, so no
 * request reaches the file system. Chart.js is not part of the repository: it is read from the
 * Debian package libjs-chart.js (/usr/share/javascript/chart.js/) and served as /ui/chart.js;
 * when it is missing the page still works, without charts.
 *
 * Answers carry an ETag (If-None-Match gets 304), Cache-Control: no-cache (so an upgraded
 * server's page is picked up at once) and, for HTML, a Content-Security-Policy that allows
 * scripts, styles and connections to this server only.
 */
#ifndef CAIRN_SERVICES_WEB_H
#define CAIRN_SERVICES_WEB_H

#include "common/error.h"
#include "services/http.h"

typedef struct cairn_web cairn_web;

typedef struct cairn_web_params {
    const char *dir;     /* the directory holding index.html and its assets (required) */
    const char *chartjs; /* Chart.js's UMD build; NULL or missing: no /ui/chart.js */
} cairn_web_params;

/*
 * Reads the files: every regular file of dir whose name is made of letters, digits, '.', '_'
 * and '-' (not starting with '.'), at most 64 files of 4 MiB each. Returns 0 and *out
 * (cairn_web_close), or CAIRN_ENOTFOUND (no dir, or no index.html in it), CAIRN_ELIMIT,
 * CAIRN_EIO, CAIRN_ENOMEM with the detail in err.
 */
int cairn_web_open(cairn_web **out, const cairn_web_params *p, cairn_error *err);

/* Adds GET / and GET /ui/{name} to h (before cairn_http_start). 0 or CAIRN_ELIMIT. */
int cairn_web_routes(cairn_web *w, cairn_http *h);

/* Files loaded (Chart.js included). */
int cairn_web_count(const cairn_web *w);

/* After the HTTP server is freed. NULL is a no-op. */
void cairn_web_close(cairn_web *w);

#endif
