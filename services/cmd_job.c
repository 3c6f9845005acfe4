/*
 * services/cmd_job.c — `cairn job submit FILE|-` and `cairn job status ID`.
 *
 * submit reads a document (a file, or stdin for "-") and queues it as a job of --type
 * (default summarize). A file that is exactly a JSON object {"type": T, "payload": P}
 * is a job specification instead, so that any job type can be queued. It prints the id.
 * status prints the job's status JSON (see cairn_jobs_status_json).
 */
#include "services/cmd_job.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "services/jobs.h"

const char *const cairn_cmd_job_usage =
    "usage: cairn job submit [--redis URL] [--type TYPE] FILE|-\n"
    "       cairn job status [--redis URL] ID\n"
    "\n"
    "submit: queues FILE (or stdin for '-') as an offline job of TYPE (default summarize) on\n"
    "        the Redis stream cairn:jobs and prints its id. A FILE holding exactly a JSON\n"
    "        object {\"type\": \"...\", \"payload\": \"...\"} gives the type and payload itself.\n"
    "status: prints the job's status as JSON: status (queued, running, done or failed),\n"
    "        timestamps, worker, attempts, error and, once done, the result. Exit status 1\n"
    "        when no such job exists (never submitted, or its result expired).\n"
    "\n"
    "Redis: --redis URL, else $CAIRN_REDIS_URL, else redis://127.0.0.1:6379/0\n"
    "       (URL form redis://[[user]:password@]host[:port][/db]).\n";

/* Reads all of f, up to limit bytes; NULL (errno set, EFBIG when longer) on failure. */
static char *read_all(FILE *f, size_t limit, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) return NULL;
    for (;;) {
        if (n == cap) {
            if (cap > limit) {
                free(buf);
                errno = EFBIG;
                return NULL;
            }
            cap *= 2;
            char *p = realloc(buf, cap + 1);
            if (!p) {
                free(buf);
                return NULL;
            }
            buf = p;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0) {
            if (ferror(f)) {
                free(buf);
                errno = EIO;
                return NULL;
            }
            break;
        }
    }
    if (n > limit) {
        free(buf);
        errno = EFBIG;
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Whether doc is a job specification {"type", "payload"}; fills type and payload then. */
static json_t *job_spec(const char *doc, size_t len, const char **type, const char **payload,
                        size_t *plen, size_t max_payload)
{
    size_t i = 0;
    while (i < len && (doc[i] == ' ' || doc[i] == '\n' || doc[i] == '\t' || doc[i] == '\r'))
        i++;
    if (i == len || doc[i] != '{') return NULL;
    json_t *o = NULL;
    if (cairn_json_parse(&o, doc, len, len, NULL)) return NULL;
    static const char *const keys[] = {"type", "payload", NULL};
    if (!json_is_object(o) || cairn_json_check_keys(o, NULL, keys, NULL) ||
        cairn_json_get_string(o, "type", type, NULL, 1, 64, true, NULL) ||
        cairn_json_get_string(o, "payload", payload, plen, 0, max_payload * 2, true, NULL)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int cairn_cmd_job(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : NULL;
    if (!sub || !strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
        fputs(cairn_cmd_job_usage, sub ? stdout : stderr);
        return sub ? 0 : 2;
    }
    bool submit = !strcmp(sub, "submit"), status = !strcmp(sub, "status");
    if (!submit && !status) {
        fprintf(stderr, "cairn job: unknown subcommand '%s' (submit or status)\n", sub);
        return 2;
    }
    const char *url = getenv("CAIRN_REDIS_URL"), *type = "summarize", *arg = NULL;
    if (!url || !*url) url = "redis://127.0.0.1:6379/0";
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--redis") && next)
            url = argv[++i];
        else if (!strncmp(a, "--redis=", 8))
            url = a + 8;
        else if (submit && !strcmp(a, "--type") && next)
            type = argv[++i];
        else if (submit && !strncmp(a, "--type=", 7))
            type = a + 7;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(cairn_cmd_job_usage, stdout);
            return 0;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "cairn job %s: unknown option '%s' (see cairn job --help)\n", sub, a);
            return 2;
        } else if (arg) {
            fprintf(stderr, "cairn job %s: one %s only\n", sub, submit ? "FILE" : "ID");
            return 2;
        } else
            arg = a;
    }
    if (!arg) {
        fprintf(stderr, "cairn job %s: missing %s (see cairn job --help)\n", sub,
                submit ? "FILE (or - for stdin)" : "ID");
        return 2;
    }

    cairn_jobs_params p = cairn_jobs_default_params();
    p.redis_url = url;
    p.reconnect_timeout_ms = 5000;
    /* The CLI accepts any type name; workers dead-letter types they do not run. */
    const char *types[] = {type, NULL};
    p.types = types;
    char *doc = NULL;
    size_t len = 0;
    json_t *spec = NULL;
    const char *payload = NULL;
    if (submit) {
        FILE *f = strcmp(arg, "-") ? fopen(arg, "rb") : stdin;
        if (!f) {
            fprintf(stderr, "cairn job submit: %s: %s\n", arg, strerror(errno));
            return 1;
        }
        doc = read_all(f, p.max_payload * 2 + 4096, &len);
        int e = errno;
        if (f != stdin) fclose(f);
        if (!doc) {
            fprintf(stderr, "cairn job submit: %s: %s\n", arg,
                    e == EFBIG ? "larger than the payload limit" : strerror(e));
            return 1;
        }
        payload = doc;
        if ((spec = job_spec(doc, len, &type, &payload, &len, p.max_payload))) types[0] = type;
    }

    cairn_error err = {0};
    cairn_jobs *q = NULL;
    int rc = cairn_jobs_open(&q, &p, &err), code = 0;
    if (rc) {
        fprintf(stderr, "cairn job %s: %s\n", sub, err.msg[0] ? err.msg : cairn_strerror(rc));
        code = 1;
    } else if (submit) {
        char id[CAIRN_JOB_ID_MAX + 1];
        rc = cairn_jobs_submit(q, type, payload, len, id, &err);
        if (rc) {
            fprintf(stderr, "cairn job submit: %s\n", err.msg[0] ? err.msg : cairn_strerror(rc));
            code = 1;
        } else
            printf("%s\n", id);
    } else {
        char *json = NULL;
        rc = cairn_jobs_status_json(q, arg, &json, NULL, &err);
        if (rc) {
            fprintf(stderr, "cairn job status: %s\n", err.msg[0] ? err.msg : cairn_strerror(rc));
            code = 1;
        } else
            printf("%s\n", json);
        free(json);
    }
    cairn_jobs_close(q);
    json_decref(spec);
    free(doc);
    if (fflush(stdout) != 0) code = 1;
    return code;
}
