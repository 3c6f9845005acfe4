/*
 * retrieval/corpus.c — document checks, token chunking, and the three ingest paths.
 */
#include "retrieval/corpus.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/json.h"
#include "common/strbuf.h"
#define CAIRN_LOG_TAG "corpus"
#include "common/log.h"

cairn_corpus_params cairn_corpus_default_params(void)
{
    return (cairn_corpus_params){
        .max_tokens = 200,
        .overlap_tokens = 32,
        .max_doc_bytes = 4u << 20,
        .batch = 512,
    };
}

static int check_params(const cairn_corpus_params *p, cairn_error *err)
{
    if (p->max_tokens < 1 || p->overlap_tokens >= p->max_tokens || p->batch < 1 ||
        p->max_doc_bytes < 1)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "corpus: need max_tokens >= 1, overlap_tokens < max_tokens, batch "
                            ">= 1 (got %zu, %zu, %zu)",
                            p->max_tokens, p->overlap_tokens, p->batch);
    return 0;
}

/* ---- Checks ------------------------------------------------------------------------------------ */

/* Offset of the first byte that starts an ill-formed UTF-8 sequence (len when none). */
static size_t utf8_bad_offset(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t n = 1;
        while (n <= 4 && i + n <= len && !cairn_json_utf8_valid(s + i, n))
            n++;
        if (n > 4 || i + n > len)
            return i;
        i += n;
    }
    return len;
}

int cairn_corpus_check(const char *s, size_t len, size_t max_bytes, cairn_error *err)
{
    if (len > max_bytes)
        return cairn_errorf(err, CAIRN_ELIMIT, "document of %zu bytes is over the limit of %zu",
                            len, max_bytes);
    size_t ctrl = 0, nonspace = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == 0)
            return cairn_errorf(err, CAIRN_EUNSUPPORTED, "binary document: NUL byte at offset %zu",
                                i);
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\f')
            ctrl++;
        if (!isspace(c))
            nonspace++;
    }
    if (nonspace == 0)
        return cairn_errorf(err, CAIRN_EINVAL, "empty document");
    if (ctrl * 10 > len)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "binary document: %zu of %zu bytes are control characters", ctrl, len);
    if (!cairn_json_utf8_valid(s, len))
        return cairn_errorf(err, CAIRN_EFORMAT, "invalid UTF-8 near byte offset %zu",
                            utf8_bad_offset(s, len));
    return 0;
}

static void count_skip(cairn_corpus_stats *st, int rc)
{
    switch (rc) {
    case CAIRN_EINVAL: st->skipped_empty++; break;
    case CAIRN_ELIMIT: st->skipped_huge++; break;
    case CAIRN_EUNSUPPORTED: st->skipped_binary++; break;
    default: st->skipped_utf8++; break;
    }
}

/* ---- Chunking ---------------------------------------------------------------------------------- */

typedef struct {
    size_t off, len, tokens;
} word;

int cairn_corpus_chunk(const char *text, size_t len, const cairn_corpus_params *p,
                       cairn_corpus_chunk_fn fn, void *ctx)
{
    int rc = check_params(p, NULL);
    if (rc)
        return rc;
    size_t n = 0, cap = 0;
    word *w = NULL;
    for (size_t i = 0; i < len;) {
        while (i < len && isspace((unsigned char)text[i]))
            i++;
        if (i >= len)
            break;
        size_t s = i;
        while (i < len && !isspace((unsigned char)text[i]))
            i++;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 256;
            word *nw = realloc(w, nc * sizeof(*w));
            if (!nw) {
                free(w);
                return CAIRN_ENOMEM;
            }
            w = nw;
            cap = nc;
        }
        size_t t = p->count_tokens ? p->count_tokens(p->count_ctx, text + s, i - s) : 1;
        w[n++] = (word){s, i - s, t};
    }
    size_t start = 0;
    while (start < n) {
        /* Extend [start, end) while the passage stays within max_tokens; at least one word. */
        size_t end = start, sum = 0;
        while (end < n && (end == start || sum + w[end].tokens <= p->max_tokens))
            sum += w[end++].tokens;
        const char *s = text + w[start].off;
        rc = fn(ctx, s, w[end - 1].off + w[end - 1].len - w[start].off);
        if (rc || end == n)
            break;
        /* Next passage starts at the earliest word after start whose tail to end fits the overlap. */
        size_t next = end, tail = 0;
        while (next > start + 1 && tail + w[next - 1].tokens <= p->overlap_tokens)
            tail += w[--next].tokens;
        start = next;
    }
    free(w);
    return rc;
}

/* ---- Batching passages into the docstore ------------------------------------------------------- */

typedef struct {
    cairn_docstore *ds;
    const cairn_corpus_params *p;
    cairn_corpus_stats *st;
    cairn_error *err;
    cairn_doc_input *docs;
    size_t n;
    size_t added; /* passages this call */
    bool full;    /* max_passages reached */
    /* The document being chunked. */
    const char *key_prefix, *title;
    json_t *meta; /* borrowed; "chunk" is set per passage */
    size_t chunk;
} batch;

/* Whether max_passages has been reached: no more input needs reading. */
static bool batch_full(const batch *b)
{
    return b->full || (b->p->max_passages && b->added >= b->p->max_passages);
}

static void batch_clear(batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        free((char *)b->docs[i].key);
        free((char *)b->docs[i].title);
        free((char *)b->docs[i].text);
        free((char *)b->docs[i].meta);
    }
    b->n = 0;
}

static int batch_flush(batch *b)
{
    if (b->n == 0)
        return 0;
    int rc = cairn_docstore_append(b->ds, b->docs, b->n, NULL, b->err);
    if (rc == 0)
        b->st->passages += b->n;
    batch_clear(b);
    return rc;
}

static int batch_open(batch *b, cairn_docstore *ds, const cairn_corpus_params *p,
                      cairn_corpus_stats *st, cairn_error *err)
{
    memset(b, 0, sizeof(*b));
    b->ds = ds;
    b->p = p;
    b->st = st;
    b->err = err;
    b->docs = calloc(p->batch, sizeof(*b->docs));
    return b->docs ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "corpus: batch of %zu", p->batch);
}

/* Flushes what is left and commits; returns rc when it is already an error. */
static int batch_close(batch *b, int rc)
{
    if (rc == 0)
        rc = batch_flush(b);
    batch_clear(b);
    free(b->docs);
    if (rc == 0)
        rc = cairn_docstore_commit(b->ds, b->err);
    return rc;
}

static int add_passage(void *ctx, const char *s, size_t len)
{
    batch *b = ctx;
    if (b->p->max_passages && b->added >= b->p->max_passages) {
        b->full = true;
        return 1; /* stops the chunker; not an error */
    }
    json_object_set_new(b->meta, "chunk", json_integer((json_int_t)b->chunk));
    cairn_doc_input *d = &b->docs[b->n];
    cairn_strbuf key = CAIRN_STRBUF_INIT;
    cairn_strbuf_printf(&key, "%s#%zu", b->key_prefix, b->chunk);
    d->key = cairn_strbuf_take(&key, NULL);
    d->title = strdup(b->title ? b->title : "");
    d->text = strndup(s, len);
    d->meta = cairn_json_dump(b->meta, false);
    b->n++;
    if (!d->key || !d->title || !d->text || !d->meta) {
        cairn_errorf(b->err, CAIRN_ENOMEM, "corpus: out of memory");
        return CAIRN_ENOMEM;
    }
    b->chunk++;
    b->added++;
    if (b->n == b->p->batch)
        return batch_flush(b);
    return 0;
}

/* Checks and chunks one document; skips (and counts) a bad one. Returns 0 or a real error. */
static int add_document(batch *b, const char *text, size_t len, const char *key_prefix,
                        const char *title, json_t *meta, const char *where)
{
    cairn_error e;
    int rc = cairn_corpus_check(text, len, b->p->max_doc_bytes, &e);
    if (rc) {
        count_skip(b->st, rc);
        CAIRN_LOG_WARN("document skipped", "where=%s reason=%s", where, e.msg);
        return 0;
    }
    b->st->docs++;
    b->key_prefix = key_prefix;
    b->title = title;
    b->meta = meta;
    b->chunk = 0;
    rc = cairn_corpus_chunk(text, len, b->p, add_passage, b);
    if (rc == 1 && b->full)
        return 0;
    return rc;
}

/* ---- Directories ------------------------------------------------------------------------------- */

static bool wanted_file(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && (strcasecmp(dot, ".txt") == 0 || strcasecmp(dot, ".md") == 0);
}

static int read_file(const char *path, size_t max, char **out, size_t *len, cairn_error *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return cairn_errorf(err, CAIRN_EIO, "%s: stat: %s", path, strerror(errno));
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return cairn_errorf(err, CAIRN_ELIMIT, "%s: %lld bytes is over the limit of %zu", path,
                            (long long)st.st_size, max);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return cairn_errorf(err, CAIRN_ENOMEM, "%s: out of memory", path);
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = 0;
    *out = buf;
    *len = got;
    return 0;
}

static int walk(batch *b, const char *root, const char *rel, int depth)
{
    if (depth > 64)
        return cairn_errorf(b->err, CAIRN_ELIMIT, "%s/%s: directories nested over 64 deep", root,
                            rel);
    cairn_strbuf dpath = CAIRN_STRBUF_INIT;
    cairn_strbuf_printf(&dpath, "%s%s%s", root, rel[0] ? "/" : "", rel);
    struct dirent **ents = NULL;
    int n = scandir(dpath.data, &ents, NULL, alphasort);
    int rc = 0;
    if (n < 0)
        rc = cairn_errorf(b->err, CAIRN_EIO, "%s: %s", dpath.data, strerror(errno));
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        if (rc == 0 && !batch_full(b) && name[0] != '.') {
            cairn_strbuf r = CAIRN_STRBUF_INIT, full = CAIRN_STRBUF_INIT;
            cairn_strbuf_printf(&r, "%s%s%s", rel, rel[0] ? "/" : "", name);
            cairn_strbuf_printf(&full, "%s/%s", root, r.data);
            struct stat st;
            if (lstat(full.data, &st) == 0 && S_ISDIR(st.st_mode)) {
                rc = walk(b, root, r.data, depth + 1);
            } else if (lstat(full.data, &st) == 0 && S_ISREG(st.st_mode) && wanted_file(name)) {
                char *text = NULL;
                size_t len = 0;
                cairn_error e;
                int frc = read_file(full.data, b->p->max_doc_bytes, &text, &len, &e);
                if (frc == CAIRN_ELIMIT) {
                    b->st->skipped_huge++;
                    CAIRN_LOG_WARN("document skipped", "where=%s reason=%s", r.data,
                                   e.msg);
                } else if (frc) {
                    rc = cairn_errorf(b->err, frc, "%s", e.msg);
                } else {
                    b->st->files++;
                    json_t *meta = json_pack("{s:s}", "source", r.data);
                    rc = meta ? add_document(b, text, len, r.data, r.data, meta, r.data)
                              : cairn_errorf(b->err, CAIRN_ENOMEM, "corpus: out of memory");
                    json_decref(meta);
                }
                free(text);
            }
            cairn_strbuf_free(&r);
            cairn_strbuf_free(&full);
        }
        free(ents[i]);
    }
    free(ents);
    cairn_strbuf_free(&dpath);
    return rc;
}

int cairn_corpus_ingest_dir(cairn_docstore *ds, const char *dir, const cairn_corpus_params *p,
                            cairn_corpus_stats *st, cairn_error *err)
{
    int rc = check_params(p, err);
    if (rc)
        return rc;
    struct stat sst;
    if (stat(dir, &sst) != 0 || !S_ISDIR(sst.st_mode))
        return cairn_errorf(err, CAIRN_ENOTFOUND, "%s: not a directory", dir);
    batch b;
    if ((rc = batch_open(&b, ds, p, st, err)))
        return rc;
    rc = walk(&b, dir, "", 0);
    return batch_close(&b, rc);
}

/* ---- JSONL ------------------------------------------------------------------------------------- */

static void bad_line(batch *b, size_t line, const char *msg)
{
    b->st->bad_lines++;
    if (!b->st->first_bad_line) {
        b->st->first_bad_line = line;
        size_t n = strnlen(msg, sizeof(b->st->first_bad) - 1); /* may cut a long message */
        memcpy(b->st->first_bad, msg, n);
        b->st->first_bad[n] = 0;
    }
    CAIRN_LOG_WARN("JSONL line skipped", "line=%zu reason=%s", line, msg);
}

/* Validates one JSONL object and adds its document. Returns 0, a real error, or CAIRN_EFORMAT
 * with the reason in *e for a bad line. */
static int jsonl_line(batch *b, const char *line, size_t len, size_t lineno, cairn_error *e,
                      bool *bad)
{
    *bad = true;
    json_t *obj = NULL;
    int rc = cairn_json_parse(&obj, line, len, b->p->max_doc_bytes + 65536, e);
    if (rc)
        return rc;
    static const char *const keys[] = {"id", "text", "metadata", "title", NULL};
    char idbuf[32];
    const char *id = NULL, *text = NULL, *title = NULL;
    size_t text_len = 0;
    json_t *meta = NULL, *idv = NULL;
    if (!json_is_object(obj)) {
        rc = cairn_errorf(e, CAIRN_EFORMAT, "expected a JSON object, got %s",
                          cairn_json_type_name(obj));
        goto out;
    }
    if ((rc = cairn_json_check_keys(obj, NULL, keys, e)))
        goto out;
    idv = json_object_get(obj, "id");
    if (json_is_string(idv) && json_string_length(idv) > 0 && json_string_length(idv) <= 1024 &&
        !memchr(json_string_value(idv), 0, json_string_length(idv))) {
        id = json_string_value(idv);
    } else if (json_is_integer(idv)) {
        snprintf(idbuf, sizeof(idbuf), "%lld", (long long)json_integer_value(idv));
        id = idbuf;
    } else {
        rc = cairn_errorf(e, CAIRN_EFORMAT,
                          "id: expected a non-empty string (<= 1024 bytes) or an integer, got %s",
                          idv ? cairn_json_type_name(idv) : "nothing");
        goto out;
    }
    /* Only the type is checked here; emptiness, size and content go through corpus_check. */
    json_t *tv = json_object_get(obj, "text");
    if (!json_is_string(tv)) {
        rc = cairn_errorf(e, CAIRN_EFORMAT, "text: expected a string, got %s",
                          tv ? cairn_json_type_name(tv) : "nothing");
        goto out;
    }
    text = json_string_value(tv);
    text_len = json_string_length(tv);
    if ((rc = cairn_json_get_string(obj, "title", &title, NULL, 0, 4096, false, e)))
        goto out;
    json_t *mv = NULL;
    if ((rc = cairn_json_get_object(obj, "metadata", &mv, false, e)))
        goto out;
    meta = mv ? json_deep_copy(mv) : json_object();
    if (!meta) {
        rc = cairn_errorf(b->err, CAIRN_ENOMEM, "corpus: out of memory");
        *bad = false;
        goto out;
    }
    json_object_set_new(meta, "source_id", json_string(id));
    *bad = false;
    char where[48];
    snprintf(where, sizeof(where), "line %zu", lineno);
    rc = add_document(b, text, text_len, id, title ? title : id, meta, where);
out:
    json_decref(meta);
    json_decref(obj);
    return rc;
}

int cairn_corpus_ingest_jsonl(cairn_docstore *ds, const char *path, const cairn_corpus_params *p,
                              cairn_corpus_stats *st, cairn_error *err)
{
    int rc = check_params(p, err);
    if (rc)
        return rc;
    FILE *f = fopen(path, "re");
    if (!f)
        return cairn_errorf(err, errno == ENOENT ? CAIRN_ENOTFOUND : CAIRN_EIO, "%s: %s", path,
                            strerror(errno));
    batch b;
    if ((rc = batch_open(&b, ds, p, st, err))) {
        fclose(f);
        return rc;
    }
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t len;
    while (rc == 0 && !batch_full(&b) && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        size_t i = 0;
        while (i < (size_t)len && isspace((unsigned char)line[i]))
            i++;
        if (i == (size_t)len)
            continue;
        cairn_error e;
        bool bad = false;
        rc = jsonl_line(&b, line, (size_t)len, lineno, &e, &bad);
        if (rc && bad) {
            if (p->strict) {
                rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: line %zu: %s", path, lineno, e.msg);
            } else {
                bad_line(&b, lineno, e.msg);
                rc = 0;
            }
        }
    }
    if (rc == 0 && ferror(f))
        rc = cairn_errorf(err, CAIRN_EIO, "%s: read error after line %zu", path, lineno);
    free(line);
    fclose(f);
    return batch_close(&b, rc);
}

/* ---- Debian Translation-en ---------------------------------------------------------------------- */

typedef struct {
    char *pkg, *section;
} sec_entry;

static int sec_cmp(const void *a, const void *b)
{
    return strcmp(((const sec_entry *)a)->pkg, ((const sec_entry *)b)->pkg);
}

static void free_sections(sec_entry *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(s[i].pkg); /* section shares the allocation */
    free(s);
}

static int load_sections(const char *path, sec_entry **out, size_t *n_out, cairn_error *err)
{
    *out = NULL;
    *n_out = 0;
    FILE *f = fopen(path, "re");
    if (!f)
        return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, n = 0, ncap = 0;
    sec_entry *s = NULL;
    ssize_t len;
    int rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        char *tab = strchr(line, '\t');
        if (!tab || tab == line || !tab[1])
            continue;
        if (n == ncap) {
            size_t nc = ncap ? ncap * 2 : 1024;
            sec_entry *ns = realloc(s, nc * sizeof(*s));
            if (!ns) {
                rc = cairn_errorf(err, CAIRN_ENOMEM, "%s: out of memory", path);
                break;
            }
            s = ns;
            ncap = nc;
        }
        char *dup = strdup(line);
        if (!dup) {
            rc = cairn_errorf(err, CAIRN_ENOMEM, "%s: out of memory", path);
            break;
        }
        dup[tab - line] = 0;
        s[n].pkg = dup;
        s[n].section = dup + (tab - line) + 1;
        n++;
    }
    free(line);
    fclose(f);
    if (rc) {
        free_sections(s, n);
        return rc;
    }
    if (n)
        qsort(s, n, sizeof(*s), sec_cmp);
    *out = s;
    *n_out = n;
    return 0;
}

typedef struct {
    char pkg[256];
    cairn_strbuf synopsis, longdesc;
    bool in_desc;
} stanza;

static int emit_stanza(batch *b, stanza *sz, const sec_entry *secs, size_t n_secs, size_t lineno)
{
    int rc = 0;
    if (sz->pkg[0] && sz->synopsis.len) {
        const char *text = sz->longdesc.len ? sz->longdesc.data : sz->synopsis.data;
        size_t text_len = sz->longdesc.len ? sz->longdesc.len : sz->synopsis.len;
        cairn_strbuf title = CAIRN_STRBUF_INIT, key = CAIRN_STRBUF_INIT;
        cairn_strbuf_printf(&title, "%s: %s", sz->pkg, sz->synopsis.data);
        cairn_strbuf_printf(&key, "debian:%s", sz->pkg);
        json_t *meta = json_pack("{s:s,s:s}", "source", "debian", "package", sz->pkg);
        sec_entry k = {.pkg = sz->pkg};
        const sec_entry *hit = n_secs ? bsearch(&k, secs, n_secs, sizeof(k), sec_cmp) : NULL;
        if (meta && hit)
            json_object_set_new(meta, "section", json_string(hit->section));
        char where[300];
        snprintf(where, sizeof(where), "package %s (line %zu)", sz->pkg, lineno);
        if (!meta || title.failed || key.failed || sz->longdesc.failed)
            rc = cairn_errorf(b->err, CAIRN_ENOMEM, "corpus: out of memory");
        else
            rc = add_document(b, text, text_len, key.data, title.data, meta, where);
        json_decref(meta);
        cairn_strbuf_free(&title);
        cairn_strbuf_free(&key);
    }
    sz->pkg[0] = 0;
    cairn_strbuf_free(&sz->synopsis);
    cairn_strbuf_free(&sz->longdesc);
    sz->in_desc = false;
    return rc;
}

int cairn_corpus_ingest_debian(cairn_docstore *ds, const char *translation_path,
                               const char *sections_path, const cairn_corpus_params *p,
                               cairn_corpus_stats *st, cairn_error *err)
{
    int rc = check_params(p, err);
    if (rc)
        return rc;
    sec_entry *secs = NULL;
    size_t n_secs = 0;
    if (sections_path && (rc = load_sections(sections_path, &secs, &n_secs, err)))
        return rc;
    FILE *f = fopen(translation_path, "re");
    if (!f) {
        free_sections(secs, n_secs);
        return cairn_errorf(err, errno == ENOENT ? CAIRN_ENOTFOUND : CAIRN_EIO,
                            "%s: %s (run scripts/corpus)", translation_path, strerror(errno));
    }
    batch b;
    if ((rc = batch_open(&b, ds, p, st, err))) {
        fclose(f);
        free_sections(secs, n_secs);
        return rc;
    }
    stanza sz = {.synopsis = CAIRN_STRBUF_INIT, .longdesc = CAIRN_STRBUF_INIT};
    char *line = NULL;
    size_t cap = 0, lineno = 0, stanzas = 0;
    ssize_t len;
    while (rc == 0 && !batch_full(&b) && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (len == 0) {
            rc = emit_stanza(&b, &sz, secs, n_secs, lineno);
            continue;
        }
        if (line[0] == ' ' || line[0] == '\t') {
            if (!sz.in_desc)
                continue; /* continuation of a field we do not keep */
            /* Debian policy 5.6.13: " ." is an empty line; otherwise drop the one leading space. */
            if (sz.longdesc.len)
                cairn_strbuf_putc(&sz.longdesc, '\n');
            if (strcmp(line, " .") != 0)
                cairn_strbuf_append(&sz.longdesc, line + 1, (size_t)len - 1);
            if (sz.longdesc.len > p->max_doc_bytes + 1) {
                sz.in_desc = false; /* add_document will skip it as huge */
            }
            continue;
        }
        sz.in_desc = false;
        if (strncmp(line, "Package:", 8) == 0) {
            if (sz.pkg[0])
                rc = emit_stanza(&b, &sz, secs, n_secs, lineno);
            const char *v = line + 8;
            while (*v == ' ')
                v++;
            snprintf(sz.pkg, sizeof(sz.pkg), "%s", v);
            stanzas++;
        } else if (strncmp(line, "Description-en:", 15) == 0) {
            const char *v = line + 15;
            while (*v == ' ')
                v++;
            cairn_strbuf_free(&sz.synopsis);
            cairn_strbuf_puts(&sz.synopsis, v);
            sz.in_desc = true;
        }
    }
    if (rc == 0 && !batch_full(&b))
        rc = emit_stanza(&b, &sz, secs, n_secs, lineno);
    cairn_strbuf_free(&sz.synopsis);
    cairn_strbuf_free(&sz.longdesc);
    if (rc == 0 && ferror(f))
        rc = cairn_errorf(err, CAIRN_EIO, "%s: read error after line %zu", translation_path,
                          lineno);
    if (rc == 0 && stanzas == 0)
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: no 'Package:' stanzas (not a Translation-en file?)",
                          translation_path);
    free(line);
    fclose(f);
    free_sections(secs, n_secs);
    return batch_close(&b, rc);
}
