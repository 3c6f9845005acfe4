/*
 * services/doclog.c — the document log on Redis Streams (see doclog.h).
 *
 * Threads: the applier thread owns `rd` (its Redis handle) and is the only writer of the index
 * while the log is set. Request threads append entries through `pub` under `pub_mu`, then wait
 * on `cond` under `mu`, which guards `applied` (the position the index holds) and the ring of
 * recent refusals.
 */
#define CAIRN_LOG_TAG "doclog"
#include "services/doclog.h"

#include "common/clock.h"
#include "common/json.h"
#include "common/log.h"
#include "services/redis.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define COUNTER_SUFFIX ":next"
#define BASE_SUFFIX ":base"
#define REFUSED_RING 64

/* ---- Positions ------------------------------------------------------------------------------ */

static int parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    if (len == 0 || len > 20 || (len > 1 && s[0] == '0')) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (max - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int cairn_doclog_pos_parse(const char *s, size_t len, cairn_doclog_pos *out)
{
    const char *dash = memchr(s, '-', len);
    cairn_doclog_pos p = {0, 0};
    if (!dash) {
        if (parse_u64(s, len, UINT64_MAX, &p.ms)) return CAIRN_EINVAL;
    } else if (parse_u64(s, (size_t)(dash - s), UINT64_MAX, &p.ms) ||
               parse_u64(dash + 1, len - (size_t)(dash - s) - 1, UINT64_MAX, &p.seq)) {
        return CAIRN_EINVAL;
    }
    *out = p;
    return 0;
}

int cairn_doclog_pos_cmp(cairn_doclog_pos a, cairn_doclog_pos b)
{
    if (a.ms != b.ms) return a.ms < b.ms ? -1 : 1;
    if (a.seq != b.seq) return a.seq < b.seq ? -1 : 1;
    return 0;
}

static void pos_str(cairn_doclog_pos p, char *buf, size_t n)
{
    snprintf(buf, n, "%" PRIu64 "-%" PRIu64, p.ms, p.seq);
}

/* ---- Entries -------------------------------------------------------------------------------- */

void cairn_doclog_entry_clear(cairn_doclog_entry *e)
{
    if (!e) return;
    for (size_t i = 0; e->docs && i < e->n; i++) {
        free((char *)e->docs[i].text);
        free((char *)e->docs[i].key);
        free((char *)e->docs[i].title);
        free((char *)e->docs[i].metadata_json);
    }
    free(e->docs);
    memset(e, 0, sizeof *e);
}

/* An optional string member of a passage: absent or null gives NULL; a string is copied. */
static int opt_string(json_t *o, const char *name, size_t i, char **out, cairn_error *err)
{
    *out = NULL;
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v))
        return cairn_errorf(err, CAIRN_EINVAL, "passage %zu: %s is not a string", i, name);
    size_t len = json_string_length(v);
    if (memchr(json_string_value(v), '\0', len))
        return cairn_errorf(err, CAIRN_EINVAL, "passage %zu: %s holds a NUL byte", i, name);
    *out = strndup(json_string_value(v), len);
    return *out ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
}

static int parse_passages(json_t *arr, cairn_doclog_entry *e, cairn_error *err)
{
    if (!json_is_array(arr)) return cairn_errorf(err, CAIRN_EINVAL, "passages: not a JSON array");
    if (json_array_size(arr) != e->n)
        return cairn_errorf(err, CAIRN_EINVAL, "passages: %zu given, n says %zu",
                            json_array_size(arr), e->n);
    e->docs = calloc(e->n, sizeof *e->docs);
    if (!e->docs) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    for (size_t i = 0; i < e->n; i++) {
        json_t *o = json_array_get(arr, i);
        if (!json_is_object(o))
            return cairn_errorf(err, CAIRN_EINVAL, "passage %zu: not a JSON object", i);
        const char *k;
        json_t *v;
        json_object_foreach(o, k, v)
        {
            if (strcmp(k, "key") && strcmp(k, "title") && strcmp(k, "text") && strcmp(k, "meta"))
                return cairn_errorf(err, CAIRN_EINVAL, "passage %zu: unknown field '%.32s'", i,
                                    k);
        }
        cairn_api_doc *d = &e->docs[i];
        char *text = NULL, *key = NULL, *title = NULL;
        int rc = opt_string(o, "text", i, &text, err);
        d->text = text;
        if (!rc) rc = opt_string(o, "key", i, &key, err);
        d->key = key;
        if (!rc) rc = opt_string(o, "title", i, &title, err);
        d->title = title;
        if (rc) return rc;
        if (!text || !*text)
            return cairn_errorf(err, CAIRN_EINVAL, "passage %zu: text missing or empty", i);
        d->text_len = strlen(text);
        json_t *meta = json_object_get(o, "meta");
        if (meta && !json_is_null(meta)) {
            if (!json_is_object(meta))
                return cairn_errorf(err, CAIRN_EINVAL, "passage %zu: meta is not a JSON object",
                                    i);
            char *m = json_dumps(meta, JSON_COMPACT);
            if (!m) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
            d->metadata_json = m;
        }
    }
    return 0;
}

int cairn_doclog_entry_parse(const char *const *strs, const size_t *lens, size_t n_pairs,
                             cairn_doclog_entry *out, cairn_error *err)
{
    memset(out, 0, sizeof *out);
    enum { F_OP, F_FIRST, F_N, F_PASSAGES, F_ID, F_COUNT };
    static const char *const names[F_COUNT] = {"op", "first", "n", "passages", "id"};
    int at[F_COUNT];
    for (int f = 0; f < F_COUNT; f++) at[f] = -1;
    for (size_t i = 0; i < n_pairs; i++) {
        const char *name = strs[2 * i];
        size_t nl = lens[2 * i];
        int f = 0;
        while (f < F_COUNT && !(strlen(names[f]) == nl && !memcmp(names[f], name, nl))) f++;
        if (f == F_COUNT)
            return cairn_errorf(err, CAIRN_EINVAL, "unknown field '%.*s'", nl > 32 ? 32 : (int)nl,
                                name);
        if (at[f] >= 0) return cairn_errorf(err, CAIRN_EINVAL, "field '%s' repeated", names[f]);
        at[f] = (int)(2 * i + 1);
    }
#define VAL(f) strs[at[f]], lens[at[f]]
    if (at[F_OP] < 0) return cairn_errorf(err, CAIRN_EINVAL, "field 'op' missing");
    const char *op = strs[at[F_OP]];
    size_t opl = lens[at[F_OP]];
    int rc;
    if (opl == 3 && !memcmp(op, "del", 3)) {
        if (at[F_ID] < 0) return cairn_errorf(err, CAIRN_EINVAL, "del: field 'id' missing");
        if (at[F_FIRST] >= 0 || at[F_N] >= 0 || at[F_PASSAGES] >= 0)
            return cairn_errorf(err, CAIRN_EINVAL, "del: only op and id are allowed");
        if (parse_u64(VAL(F_ID), (uint64_t)INT64_MAX, &out->id))
            return cairn_errorf(err, CAIRN_EINVAL, "del: id is not a decimal id below 2^63");
        out->op = CAIRN_RAG_OP_DEL;
        return 0;
    }
    if (!(opl == 3 && !memcmp(op, "add", 3)))
        return cairn_errorf(err, CAIRN_EINVAL, "op '%.*s': expected add or del",
                            opl > 16 ? 16 : (int)opl, op);
    if (at[F_ID] >= 0) return cairn_errorf(err, CAIRN_EINVAL, "add: field 'id' is not allowed");
    if (at[F_FIRST] < 0 || at[F_N] < 0 || at[F_PASSAGES] < 0)
        return cairn_errorf(err, CAIRN_EINVAL, "add: fields first, n and passages are required");
    uint64_t n = 0;
    if (parse_u64(VAL(F_FIRST), (uint64_t)INT64_MAX, &out->id))
        return cairn_errorf(err, CAIRN_EINVAL, "add: first is not a decimal id below 2^63");
    if (parse_u64(VAL(F_N), UINT64_MAX, &n) || n == 0)
        return cairn_errorf(err, CAIRN_EINVAL, "add: n is not a positive count");
    if (n > CAIRN_DOCLOG_MAX_PASSAGES)
        return cairn_errorf(err, CAIRN_ELIMIT, "add: n %" PRIu64 " is above %d passages", n,
                            CAIRN_DOCLOG_MAX_PASSAGES);
    if (out->id > (uint64_t)INT64_MAX - n)
        return cairn_errorf(err, CAIRN_EINVAL, "add: ids past 2^63");
    const char *pj = strs[at[F_PASSAGES]];
    size_t pl = lens[at[F_PASSAGES]];
    if (pl > CAIRN_DOCLOG_MAX_BYTES)
        return cairn_errorf(err, CAIRN_ELIMIT, "add: passages larger than %u bytes",
                            CAIRN_DOCLOG_MAX_BYTES);
    json_t *arr = NULL;
    cairn_error je = {0};
    if (cairn_json_parse(&arr, pj, pl, CAIRN_DOCLOG_MAX_BYTES, &je) != 0)
        return cairn_errorf(err, CAIRN_EINVAL, "add: passages: %s", je.msg);
    out->op = CAIRN_RAG_OP_ADD;
    out->n = (size_t)n;
    rc = parse_passages(arr, out, err);
    json_decref(arr);
    if (rc) cairn_doclog_entry_clear(out);
    return rc;
#undef VAL
}

char *cairn_doclog_passages_json(const cairn_api_doc *docs, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        json_t *o = json_object();
        if (!o || json_array_append_new(arr, o)) goto fail;
        const cairn_api_doc *d = &docs[i];
        if (d->key && json_object_set_new(o, "key", json_string(d->key))) goto fail;
        if (d->title && json_object_set_new(o, "title", json_string(d->title))) goto fail;
        if (!d->text || json_object_set_new(o, "text", json_string(d->text))) goto fail;
        if (d->metadata_json) {
            json_t *m = json_loads(d->metadata_json, 0, NULL);
            if (!json_is_object(m)) {
                json_decref(m);
                goto fail;
            }
            json_object_set_new(o, "meta", m);
        }
    }
    char *s = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    return s;
fail:
    json_decref(arr);
    return NULL;
}

/* ---- The handle ----------------------------------------------------------------------------- */

struct cairn_doclog {
    cairn_doclog_params p;
    char stream[256], counter[270], base_key[270];
    char path_pos[4200], path_base[4200];
    char dir[4096]; /* the index dir (p.dir is borrowed during open only) */
    cairn_rag *rag;
    cairn_redis *rd;  /* the applier's */
    cairn_redis *pub; /* request threads', under pub_mu */
    pthread_mutex_t pub_mu;
    pthread_mutex_t mu; /* guards applied, refused */
    pthread_cond_t cond;
    cairn_doclog_pos applied;
    struct {
        cairn_doclog_pos pos;
        int code;
        char why[200];
    } refused[REFUSED_RING];
    unsigned n_refused;
    pthread_t thread;
    bool thread_started;
    atomic_bool stop;
    cairn_counter *c_applied, *c_rejected;
    cairn_gauge *g_lag_s;
};

cairn_doclog_params cairn_doclog_default_params(void)
{
    return (cairn_doclog_params){.stream = "cairn:docs", .wait_ms = 10000, .batch = 64};
}

/* Writes the position after the index commit: temp file, fsync, rename, fsync of the dir. */
static int write_pos(cairn_doclog *d, cairn_doclog_pos p, cairn_error *err)
{
    char tmp[4300], buf[64];
    snprintf(tmp, sizeof tmp, "%s.tmp", d->path_pos);
    pos_str(p, buf, sizeof buf);
    size_t len = strlen(buf);
    buf[len++] = '\n';
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return cairn_errorf(err, CAIRN_EIO, "%s: %s", tmp, strerror(errno));
    bool ok = write(fd, buf, len) == (ssize_t)len && fsync(fd) == 0;
    int e = errno;
    close(fd);
    if (!ok || rename(tmp, d->path_pos) != 0) {
        if (ok) e = errno;
        unlink(tmp);
        return cairn_errorf(err, CAIRN_EIO, "%s: %s", d->path_pos, strerror(e));
    }
    int dfd = open(d->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* the rename, durable */
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* Reads a small text file into buf (trailing newline dropped). 1: read; 0: absent; <0 error. */
static int read_small(const char *path, char *buf, size_t n, cairn_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return 0;
        return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    }
    ssize_t got = read(fd, buf, n - 1);
    close(fd);
    if (got < 0) return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    buf[got] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    return 1;
}

static uint64_t fnv1a(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 0x100000001b3ull;
    return h;
}

typedef struct {
    uint64_t h;
    size_t n;
} stamp_acc;

static int stamp_visit(void *ctx, const cairn_doc *doc)
{
    stamp_acc *a = ctx;
    char id[24];
    int l = snprintf(id, sizeof id, "%" PRIu64, doc->id);
    a->h = fnv1a(a->h, id, (size_t)l + 1);
    a->h = fnv1a(a->h, doc->key, doc->key_len + 1);
    a->h = fnv1a(a->h, doc->title, doc->title_len + 1);
    a->h = fnv1a(a->h, doc->text, doc->text_len + 1);
    a->h = fnv1a(a->h, doc->meta, doc->meta_len + 1);
    a->n++;
    return 0;
}

/* The base stamp "passages next hash corpus": what every replica's base corpus must match. */
static void make_stamp(cairn_doclog *d, char *buf, size_t n)
{
    stamp_acc a = {.h = 0xcbf29ce484222325ull};
    cairn_rag_scan(d->rag, 0, true, stamp_visit, &a);
    snprintf(buf, n, "%zu %" PRIu64 " %016" PRIx64 " %s", a.n, cairn_rag_next_id(d->rag), a.h,
             d->p.corpus_name ? d->p.corpus_name : "-");
}

/* Whether two stamps agree on passages, next id and hash (the corpus name is informative). */
static bool stamps_match(const char *a, const char *b)
{
    size_t la = 0, lb = 0;
    for (int sp = 0; a[la] && sp < 3; la++) sp += a[la] == ' ';
    for (int sp = 0; b[lb] && sp < 3; lb++) sp += b[lb] == ' ';
    return la == lb && !memcmp(a, b, la);
}

static int cmd(cairn_redis *r, redisReply **rep, int block_ms, int argc, const char **argv,
               const size_t *lens, cairn_error *err)
{
    int rc = cairn_redis_cmd(r, rep, block_ms, argc, argv, lens, err);
    if (!rc && (*rep)->type == REDIS_REPLY_ERROR) {
        rc = cairn_errorf(err, CAIRN_ENET, "redis %s: %s", argv[0], (*rep)->str);
        freeReplyObject(*rep);
        *rep = NULL;
    }
    return rc;
}

/* Records the base stamp in Redis (first replica) or checks it (later ones); sets the counter.
 * has_pos: the index has applied the log before. */
static int check_base(cairn_doclog *d, bool has_pos, cairn_error *err)
{
    char stamp[512];
    int rc = read_small(d->path_base, stamp, sizeof stamp, err);
    if (rc < 0) return rc;
    if (rc == 0) {
        if (has_pos)
            return cairn_errorf(err, CAIRN_ESTATE,
                                "%s is missing while doclog.pos exists: the index dir is "
                                "damaged; remove %s to rebuild it from the corpus and the log",
                                d->path_base, d->dir);
        make_stamp(d, stamp, sizeof stamp);
        FILE *f = fopen(d->path_base, "w");
        if (!f || fprintf(f, "%s\n", stamp) < 0 || fflush(f) || fsync(fileno(f))) {
            if (f) fclose(f);
            return cairn_errorf(err, CAIRN_EIO, "%s: %s", d->path_base, strerror(errno));
        }
        fclose(f);
    }
    redisReply *rep = NULL;
    const char *get[] = {"GET", d->base_key};
    if ((rc = cmd(d->rd, &rep, 0, 2, get, NULL, err))) return rc;
    bool absent = rep->type == REDIS_REPLY_NIL;
    char theirs[512] = "";
    if (rep->type == REDIS_REPLY_STRING) snprintf(theirs, sizeof theirs, "%s", rep->str);
    freeReplyObject(rep);
    if (absent) {
        if (has_pos)
            return cairn_errorf(err, CAIRN_ESTATE,
                                "Redis has no %s but this index (%s) has applied the document "
                                "log before: Redis lost its data; restore Redis, or remove the "
                                "index dir of every replica to start a new log",
                                d->base_key, d->dir);
        const char *set[] = {"SET", d->base_key, stamp, "NX"};
        if ((rc = cmd(d->rd, &rep, 0, 4, set, NULL, err))) return rc;
        freeReplyObject(rep);
        if ((rc = cmd(d->rd, &rep, 0, 2, get, NULL, err))) return rc;
        if (rep->type == REDIS_REPLY_STRING) snprintf(theirs, sizeof theirs, "%s", rep->str);
        freeReplyObject(rep);
    }
    if (!stamps_match(stamp, theirs))
        return cairn_errorf(err, CAIRN_ESTATE,
                            "base corpus mismatch: this index's base is '%s' (passages next-id "
                            "hash corpus), Redis %s records '%s'; every replica needs the same "
                            "rag.corpus and rag.corpus_max",
                            stamp, d->base_key, theirs);
    /* The counter starts past the base ids (the second word of the stamp). */
    char next[32];
    snprintf(next, sizeof next, "%.*s", (int)strcspn(strchr(stamp, ' ') + 1, " "),
             strchr(stamp, ' ') + 1);
    const char *setn[] = {"SET", d->counter, next, "NX"};
    if ((rc = cmd(d->rd, &rep, 0, 4, setn, NULL, err))) return rc;
    freeReplyObject(rep);
    return 0;
}

/* Remembers a refused entry so that the request waiting for it can say why. Under mu. */
static void note_refused(cairn_doclog *d, cairn_doclog_pos pos, int code, const char *why)
{
    unsigned i = d->n_refused++ % REFUSED_RING;
    d->refused[i].pos = pos;
    d->refused[i].code = code;
    snprintf(d->refused[i].why, sizeof d->refused[i].why, "%.199s", why);
}

/* Applies one XREAD/XRANGE batch of entries (an array of [id, [field, value, ...]]). Returns 0
 * with *last the batch's last entry id (the position to write), or an error leaving the
 * position where it was (the batch is then read again: replays are no-ops). */
static int apply_entries(cairn_doclog *d, const redisReply *entries, cairn_doclog_pos *last,
                         cairn_error *err)
{
    size_t n = entries->elements;
    cairn_doclog_entry *ents = calloc(n ? n : 1, sizeof *ents);
    cairn_rag_op *ops = calloc(n ? n : 1, sizeof *ops);
    cairn_doclog_pos *pos = calloc(n ? n : 1, sizeof *pos);
    size_t *op_of = calloc(n ? n : 1, sizeof *op_of); /* entry -> op index, or SIZE_MAX */
    int rc = ents && ops && pos && op_of ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    size_t n_ops = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        const redisReply *e = entries->element[i];
        op_of[i] = SIZE_MAX;
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING ||
            cairn_doclog_pos_parse(e->element[0]->str, e->element[0]->len, &pos[i])) {
            rc = cairn_errorf(err, CAIRN_ENET, "redis: unexpected stream reply shape");
            break;
        }
        const redisReply *kv = e->element[1];
        cairn_error pe = {0};
        int prc = CAIRN_EINVAL;
        if (kv->type == REDIS_REPLY_ARRAY && kv->elements % 2 == 0 && kv->elements <= 64) {
            const char *strs[64];
            size_t lens[64];
            bool ok = true;
            for (size_t k = 0; k < kv->elements; k++) {
                ok &= kv->element[k]->type == REDIS_REPLY_STRING;
                strs[k] = kv->element[k]->str;
                lens[k] = kv->element[k]->len;
            }
            if (ok) prc = cairn_doclog_entry_parse(strs, lens, kv->elements / 2, &ents[i], &pe);
            else cairn_errorf(&pe, CAIRN_EINVAL, "a field or value is not a string");
        } else {
            cairn_errorf(&pe, CAIRN_EINVAL, "not a list of field/value pairs");
        }
        if (prc == CAIRN_ENOMEM) {
            rc = cairn_errorf(err, prc, "%s", pe.msg);
            break;
        }
        if (prc) {
            CAIRN_LOG_WARN("document log entry refused", "entry=%s error=%s",
                           e->element[0]->str, pe.msg);
            cairn_counter_inc(d->c_rejected);
            pthread_mutex_lock(&d->mu);
            note_refused(d, pos[i], prc, pe.msg);
            pthread_mutex_unlock(&d->mu);
            continue;
        }
        op_of[i] = n_ops;
        ops[n_ops++] = (cairn_rag_op){.kind = ents[i].op, .id = ents[i].id, .docs = ents[i].docs,
                                      .n_docs = ents[i].n};
    }
    size_t done = 0;
    while (!rc && done < n_ops) {
        size_t k = 0;
        rc = cairn_rag_apply(d->rag, ops + done, n_ops - done, &k, err);
        done += k;
    }
    if (!rc) {
        pthread_mutex_lock(&d->mu);
        for (size_t i = 0; i < n; i++) {
            if (op_of[i] == SIZE_MAX) continue;
            cairn_rag_op *op = &ops[op_of[i]];
            if (op->result < 0) {
                char id[48];
                pos_str(pos[i], id, sizeof id);
                CAIRN_LOG_WARN("document log entry refused", "entry=%s error=%s", id, op->why);
                cairn_counter_inc(d->c_rejected);
                note_refused(d, pos[i], op->result, op->why);
            } else if (op->result > 0) {
                cairn_counter_inc(d->c_applied);
            }
        }
        pthread_mutex_unlock(&d->mu);
        if (n) *last = pos[n - 1];
        if (n) cairn_gauge_set(d->g_lag_s, (double)((int64_t)cairn_wall_ns() / 1000000 -
                                                    (int64_t)pos[n - 1].ms) / 1e3);
    }
    for (size_t i = 0; ents && i < n; i++) cairn_doclog_entry_clear(&ents[i]);
    free(ents);
    free(ops);
    free(pos);
    free(op_of);
    return rc;
}

/* Reads entries after the applied position (blocking up to block_ms; 0: not at all), applies
 * them and writes the position. *n_read gets how many entries came. */
static int step(cairn_doclog *d, int block_ms, size_t *n_read, cairn_error *err)
{
    *n_read = 0;
    char from[48], count[16], block[16];
    pthread_mutex_lock(&d->mu);
    pos_str(d->applied, from, sizeof from);
    pthread_mutex_unlock(&d->mu);
    snprintf(count, sizeof count, "%d", d->p.batch);
    snprintf(block, sizeof block, "%d", block_ms);
    const char *argv[] = {"XREAD", "COUNT", count, "BLOCK", block, "STREAMS", d->stream, from};
    const char *nb[] = {"XREAD", "COUNT", count, "STREAMS", d->stream, from};
    redisReply *rep = NULL;
    int rc = block_ms > 0 ? cmd(d->rd, &rep, block_ms, 8, argv, NULL, err)
                          : cmd(d->rd, &rep, 0, 6, nb, NULL, err);
    if (rc) return rc;
    if (rep->type == REDIS_REPLY_NIL) {
        freeReplyObject(rep);
        return 0;
    }
    /* [[stream, [[id, [f, v, ...]], ...]]] */
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 1 ||
        rep->element[0]->type != REDIS_REPLY_ARRAY || rep->element[0]->elements != 2 ||
        rep->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(rep);
        return cairn_errorf(err, CAIRN_ENET, "redis XREAD: unexpected reply shape");
    }
    const redisReply *entries = rep->element[0]->element[1];
    cairn_doclog_pos last;
    pthread_mutex_lock(&d->mu);
    last = d->applied;
    pthread_mutex_unlock(&d->mu);
    rc = apply_entries(d, entries, &last, err);
    *n_read = entries->elements;
    freeReplyObject(rep);
    if (!rc && *n_read) rc = write_pos(d, last, err);
    if (!rc && *n_read) {
        pthread_mutex_lock(&d->mu);
        d->applied = last;
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&d->mu);
    }
    return rc;
}

static void *applier(void *arg)
{
    cairn_doclog *d = arg;
    int64_t last_warn = 0;
    while (!atomic_load(&d->stop)) {
        cairn_error err = {0};
        size_t n = 0;
        int rc = step(d, 1000, &n, &err);
        if (rc) {
            int64_t now = cairn_now_ms();
            if (now - last_warn > 5000) {
                CAIRN_LOG_ERROR("document log: applying failed, retrying", "error=%s", err.msg);
                last_warn = now;
            }
            for (int i = 0; i < 10 && !atomic_load(&d->stop); i++) cairn_sleep_ms(100);
        }
    }
    return NULL;
}

/* ---- Writes through the log ----------------------------------------------------------------- */

/* Waits until the applier has applied entry pos; 0, or the entry's refusal, or
 * CAIRN_ETIMEDOUT. */
static int wait_applied(cairn_doclog *d, cairn_doclog_pos pos, cairn_error *err)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    int64_t ns = until.tv_nsec + (int64_t)(d->p.wait_ms % 1000) * 1000000;
    until.tv_sec += d->p.wait_ms / 1000 + ns / 1000000000;
    until.tv_nsec = ns % 1000000000;
    pthread_mutex_lock(&d->mu);
    int rc = 0;
    while (cairn_doclog_pos_cmp(d->applied, pos) < 0 && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&d->cond, &d->mu, &until);
    int out = 0;
    char id[48];
    pos_str(pos, id, sizeof id);
    if (cairn_doclog_pos_cmp(d->applied, pos) < 0) {
        out = cairn_errorf(err, CAIRN_ETIMEDOUT,
                           "document log entry %s was written but not applied here within %d ms "
                           "(it will be: retry the read later)",
                           id, d->p.wait_ms);
    } else {
        unsigned n = d->n_refused < REFUSED_RING ? d->n_refused : REFUSED_RING;
        for (unsigned i = 0; i < n; i++)
            if (cairn_doclog_pos_cmp(d->refused[i].pos, pos) == 0)
                out = cairn_errorf(err, d->refused[i].code, "%s", d->refused[i].why);
    }
    pthread_mutex_unlock(&d->mu);
    return out;
}

/* The add script: ids from the counter and the entry in one atomic step, so ids grow in log
 * order. A retried call (the reply was lost) finds its token and returns the first answer
 * instead of adding twice. KEYS: stream, counter, token key. ARGV: n, passages. */
static const char add_script[] =
    "local done = redis.call('GET', KEYS[3])\n"
    "if done then return cjson.decode(done) end\n"
    "local n = tonumber(ARGV[1])\n"
    "local first = redis.call('INCRBY', KEYS[2], n) - n\n"
    "local fs = string.format('%d', first)\n"
    "local id = redis.call('XADD', KEYS[1], '*', 'op', 'add', 'first', fs, 'n', ARGV[1],\n"
    "                      'passages', ARGV[2])\n"
    "local out = {fs, id}\n"
    "redis.call('SET', KEYS[3], cjson.encode(out), 'EX', 300)\n"
    "return out\n";

static int log_add(void *ctx, const cairn_api_doc *docs, size_t n, uint64_t *first_id,
                   cairn_error *err)
{
    cairn_doclog *d = ctx;
    if (n > CAIRN_DOCLOG_MAX_PASSAGES)
        return cairn_errorf(err, CAIRN_ELIMIT, "more than %d passages in one add",
                            CAIRN_DOCLOG_MAX_PASSAGES);
    for (size_t i = 0; i < n; i++)
        if (!docs[i].text || !docs[i].text[0])
            return cairn_errorf(err, CAIRN_EINVAL, "doc %zu: empty text", i);
    char *passages = cairn_doclog_passages_json(docs, n);
    if (!passages)
        return cairn_errorf(err, CAIRN_EINVAL, "documents: metadata is not a JSON object (or "
                                               "out of memory)");
    unsigned char rnd[16];
    char token[64] = "cairn:docs:req:";
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) memset(rnd, 0, sizeof rnd);
    for (int i = 0; i < 16; i++) sprintf(token + 15 + 2 * i, "%02x", rnd[i]);
    char nbuf[24];
    snprintf(nbuf, sizeof nbuf, "%zu", n);
    const char *argv[] = {"EVAL", add_script, "3", d->stream, d->counter, token, nbuf, passages};
    redisReply *rep = NULL;
    pthread_mutex_lock(&d->pub_mu);
    int rc = cmd(d->pub, &rep, 0, 8, argv, NULL, err);
    pthread_mutex_unlock(&d->pub_mu);
    free(passages);
    if (rc) return cairn_errorf(err, CAIRN_ENET, "document log unavailable: %s", err->msg);
    uint64_t first = 0;
    cairn_doclog_pos pos;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_STRING ||
        parse_u64(rep->element[0]->str, rep->element[0]->len, UINT64_MAX, &first) ||
        cairn_doclog_pos_parse(rep->element[1]->str, rep->element[1]->len, &pos)) {
        freeReplyObject(rep);
        return cairn_errorf(err, CAIRN_ENET, "document log: unexpected reply to the add script");
    }
    freeReplyObject(rep);
    rc = wait_applied(d, pos, err);
    if (!rc && first_id) *first_id = first;
    return rc;
}

static int log_del(void *ctx, uint64_t id, cairn_error *err)
{
    cairn_doclog *d = ctx;
    /* Absent here means absent in the log up to what this replica applied: 404 at once. */
    if (!cairn_rag_is_live(d->rag, id))
        return cairn_errorf(err, CAIRN_ENOTFOUND, "no document with id %" PRIu64, id);
    char ids[24];
    snprintf(ids, sizeof ids, "%" PRIu64, id);
    const char *argv[] = {"XADD", d->stream, "*", "op", "del", "id", ids};
    redisReply *rep = NULL;
    pthread_mutex_lock(&d->pub_mu);
    int rc = cmd(d->pub, &rep, 0, 7, argv, NULL, err);
    pthread_mutex_unlock(&d->pub_mu);
    if (rc) return cairn_errorf(err, CAIRN_ENET, "document log unavailable: %s", err->msg);
    cairn_doclog_pos pos;
    bool ok = rep->type == REDIS_REPLY_STRING &&
              cairn_doclog_pos_parse(rep->str, rep->len, &pos) == 0;
    freeReplyObject(rep);
    if (!ok) return cairn_errorf(err, CAIRN_ENET, "document log: unexpected reply to XADD");
    return wait_applied(d, pos, err);
}

/* ---- Open and close ------------------------------------------------------------------------- */

int cairn_doclog_open(cairn_doclog **out, const cairn_doclog_params *p, cairn_rag *rag,
                      cairn_metrics *m, cairn_error *err)
{
    *out = NULL;
    if (!p->redis_url || !p->dir || !rag)
        return cairn_errorf(err, CAIRN_EINVAL, "docs.log = redis needs redis.url and an index");
    cairn_doclog *d = calloc(1, sizeof *d);
    if (!d) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    d->p = *p;
    cairn_doclog_params def = cairn_doclog_default_params();
    if (!d->p.stream) d->p.stream = def.stream;
    if (d->p.wait_ms <= 0) d->p.wait_ms = def.wait_ms;
    if (d->p.batch <= 0) d->p.batch = def.batch;
    d->rag = rag;
    snprintf(d->stream, sizeof d->stream, "%s", d->p.stream);
    snprintf(d->counter, sizeof d->counter, "%s" COUNTER_SUFFIX, d->stream);
    snprintf(d->base_key, sizeof d->base_key, "%s" BASE_SUFFIX, d->stream);
    snprintf(d->path_pos, sizeof d->path_pos, "%s/doclog.pos", p->dir);
    snprintf(d->path_base, sizeof d->path_base, "%s/doclog.base", p->dir);
    snprintf(d->dir, sizeof d->dir, "%s", p->dir);
    d->p.dir = NULL; /* borrowed only during open */
    pthread_mutex_init(&d->pub_mu, NULL);
    pthread_mutex_init(&d->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->cond, &ca);
    pthread_condattr_destroy(&ca);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", p->dir);
    d->p.dir = dir;
    int rc = 0;
    if (m) {
        rc = cairn_counter_new(m, &d->c_applied, "cairn_doclog_applied_total",
                               "Document log entries applied to this replica's index", err);
        if (!rc) rc = cairn_counter_new(m, &d->c_rejected, "cairn_doclog_rejected_total",
                                        "Document log entries refused as malformed or invalid",
                                        err);
        if (!rc) rc = cairn_gauge_new(m, &d->g_lag_s, "cairn_doclog_lag_seconds",
                                      "Age of the last applied entry when it was applied", err);
    }
    cairn_redis_params rp = cairn_redis_default_params();
    rp.reconnect_timeout_ms = 5000; /* the applier retries on its own; stop must be prompt */
    if (!rc) rc = cairn_redis_open(&d->rd, p->redis_url, &rp, err);
    if (!rc) rc = cairn_redis_open(&d->pub, p->redis_url, NULL, err);
    char buf[96];
    int has = rc ? 0 : read_small(d->path_pos, buf, sizeof buf, err);
    if (has < 0) rc = has;
    if (has > 0 && cairn_doclog_pos_parse(buf, strlen(buf), &d->applied))
        rc = cairn_errorf(err, CAIRN_ESTATE, "%s: '%.40s' is not a stream position; remove %s to "
                          "rebuild the index", d->path_pos, buf, dir);
    if (!rc) rc = check_base(d, has > 0, err);
    /* Catch up before serving, so that a replica answers as the others once it is ready. */
    size_t total = 0, n = 1;
    int64_t t0 = cairn_now_ns();
    while (!rc && n) {
        rc = step(d, 0, &n, err);
        total += n;
    }
    if (!rc) {
        char at[48];
        pos_str(d->applied, at, sizeof at);
        CAIRN_LOG_INFO("document log caught up", "stream=%s entries=%zu position=%s "
                       "passages=%zu seconds=%.2f", d->stream, total, at, cairn_rag_count(rag),
                       (double)(cairn_now_ns() - t0) / 1e9);
    }
    d->p.dir = NULL;
    if (!rc) {
        if (pthread_create(&d->thread, NULL, applier, d) != 0)
            rc = cairn_errorf(err, CAIRN_EIO, "doclog: cannot start the applier thread");
        else d->thread_started = true;
    }
    if (rc) {
        cairn_doclog_close(d);
        return rc;
    }
    cairn_rag_set_log(rag, &(cairn_rag_log){.add = log_add, .del = log_del, .ctx = d});
    *out = d;
    return 0;
}

static int refuse_add(void *ctx, const cairn_api_doc *docs, size_t n, uint64_t *first_id,
                      cairn_error *err)
{
    (void)ctx, (void)docs, (void)n, (void)first_id;
    return cairn_errorf(err, CAIRN_ESTATE, "the document log is closed (shutting down)");
}

static int refuse_del(void *ctx, uint64_t id, cairn_error *err)
{
    (void)ctx, (void)id;
    return cairn_errorf(err, CAIRN_ESTATE, "the document log is closed (shutting down)");
}

void cairn_doclog_close(cairn_doclog *d)
{
    if (!d) return;
    /* Updates after this point must not write the index behind the log's back. */
    if (d->thread_started)
        cairn_rag_set_log(d->rag, &(cairn_rag_log){.add = refuse_add, .del = refuse_del});
    atomic_store(&d->stop, true);
    if (d->thread_started) pthread_join(d->thread, NULL);
    cairn_redis_close(d->rd);
    cairn_redis_close(d->pub);
    pthread_mutex_destroy(&d->pub_mu);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cond);
    free(d);
}
