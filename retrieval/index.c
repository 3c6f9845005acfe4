/*
 * retrieval/index.c — ingest, embed and build for an index directory (see index.h).
 *
 * The stamp is three text lines, so that a person can read it:
 *   cairn-corpus-stamp 1
 *   max_passages N
 *   passages N
 *   corpus /absolute/path
 * It is written via path.tmp and rename after the docstore commit, so a stamp never
 * describes more than the store holds.
 */
#define CAIRN_LOG_TAG "index"
#include "retrieval/index.h"

#include "common/log.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int cairn_index_paths_for(cairn_index_paths *out, const char *dir, cairn_error *err)
{
    if (!dir || !*dir) return cairn_errorf(err, CAIRN_EINVAL, "index: no directory given");
    /* the longest suffix is "/corpus.stamp" (13) plus path.tmp's 4 when files are replaced */
    if (strlen(dir) + 18 >= CAIRN_INDEX_PATH_MAX)
        return cairn_errorf(err, CAIRN_EINVAL, "index directory: path of %zu bytes is too long",
                            strlen(dir));
    snprintf(out->docs, sizeof out->docs, "%s/docs.cds", dir);
    snprintf(out->format, sizeof out->format, "%s/embed.format", dir);
    snprintf(out->ivf, sizeof out->ivf, "%s/index.ivf", dir);
    snprintf(out->tier, sizeof out->tier, "%s/index.tier", dir);
    snprintf(out->stamp, sizeof out->stamp, "%s/corpus.stamp", dir);
    return 0;
}

/* ---- Stamp ------------------------------------------------------------------------------ */

static int stamp_write(const char *path, const char *corpus, size_t max_passages,
                       size_t passages, cairn_error *err)
{
    char abs[PATH_MAX], tmp[CAIRN_INDEX_PATH_MAX + 8];
    if (!realpath(corpus, abs))
        return cairn_errorf(err, CAIRN_EIO, "corpus %s: %s", corpus, strerror(errno));
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "%s: %s", tmp, strerror(errno));
    fprintf(f, "cairn-corpus-stamp 1\nmax_passages %zu\npassages %zu\ncorpus %s\n", max_passages,
            passages, abs);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(e));
    }
    return 0;
}

/* Parses "name N" into *v. */
static int stamp_number(const char *line, const char *name, size_t *v)
{
    size_t n = strlen(name);
    if (strncmp(line, name, n) != 0 || line[n] != ' ') return -1;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(line + n + 1, &end, 10);
    if (errno || end == line + n + 1 || (*end != '\n' && *end != '\0') || line[n + 1] == '-')
        return -1;
    *v = (size_t)x;
    return 0;
}

int cairn_index_stamp_read(const char *path, cairn_index_stamp *out, cairn_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return cairn_errorf(err, errno == ENOENT ? CAIRN_ENOTFOUND : CAIRN_EIO, "%s: %s", path,
                            strerror(errno));
    char line[CAIRN_INDEX_PATH_MAX + 64];
    int rc = 0, no = 0;
    memset(out, 0, sizeof *out);
    while (!rc && fgets(line, sizeof line, f)) {
        no++;
        size_t len = strlen(line);
        if (len && line[len - 1] == '\n') line[--len] = '\0';
        else if (!feof(f)) rc = -1; /* a line longer than any stamp writes */
        if (rc) break;
        if (no == 1) rc = strcmp(line, "cairn-corpus-stamp 1") ? -1 : 0;
        else if (no == 2) rc = stamp_number(line, "max_passages", &out->max_passages);
        else if (no == 3) rc = stamp_number(line, "passages", &out->passages);
        else if (no == 4 && !strncmp(line, "corpus /", 8) && len - 7 < sizeof out->corpus)
            memcpy(out->corpus, line + 7, len - 6);
        else rc = -1;
    }
    if (!rc && no != 4) {
        rc = -1;
        no++;
    }
    fclose(f);
    if (rc) return cairn_errorf(err, CAIRN_EFORMAT, "%s: line %d is not what a corpus stamp holds",
                                path, no);
    return 0;
}

bool cairn_index_stamp_covers(const cairn_index_stamp *have, const char *corpus,
                              size_t max_passages)
{
    char abs[PATH_MAX];
    if (!corpus || !realpath(corpus, abs) || strcmp(abs, have->corpus) != 0) return false;
    if (have->max_passages == 0) return true;
    if (max_passages != 0 && max_passages <= have->max_passages) return true;
    return have->passages < have->max_passages; /* the corpus had no more */
}

/* ---- Ingest ----------------------------------------------------------------------------- */

size_t cairn_index_count_wordpiece(void *ctx, const char *word, size_t len)
{
    int32_t ids[512];
    int n = cairn_wordpiece_encode(ctx, word, len, ids, 512);
    return n > 2 ? (size_t)n - 2 : 0; /* without [CLS] and [SEP] */
}

int cairn_index_ingest(cairn_docstore *ds, const char *corpus, size_t max_passages,
                       const cairn_wordpiece *wp, const char *stamp_path,
                       cairn_corpus_stats *st, cairn_error *err)
{
    struct stat sb;
    if (!corpus || stat(corpus, &sb) != 0)
        return cairn_errorf(err, CAIRN_ENOTFOUND, "corpus %s: %s", corpus ? corpus : "(none)",
                            corpus ? strerror(errno) : "no path given");
    cairn_corpus_params cp = cairn_corpus_default_params();
    cp.max_passages = max_passages;
    if (wp) {
        cp.count_tokens = cairn_index_count_wordpiece;
        cp.count_ctx = (void *)wp;
    }
    cairn_corpus_stats local = {0};
    if (!st) st = &local;
    size_t before = st->passages;
    size_t n = strlen(corpus);
    const char *slash = strrchr(corpus, '/');
    const char *base = slash ? slash + 1 : corpus;
    int rc;
    if (S_ISDIR(sb.st_mode)) {
        rc = cairn_corpus_ingest_dir(ds, corpus, &cp, st, err);
    } else if (n > 6 && !strcmp(corpus + n - 6, ".jsonl")) {
        rc = cairn_corpus_ingest_jsonl(ds, corpus, &cp, st, err);
    } else if (!strcmp(base, "debian-Translation-en")) {
        char sections[CAIRN_INDEX_PATH_MAX];
        if ((size_t)(base - corpus) + 16 > sizeof sections)
            return cairn_errorf(err, CAIRN_EINVAL, "corpus %s: path too long", corpus);
        snprintf(sections, sizeof sections, "%.*sdebian-sections", (int)(base - corpus), corpus);
        rc = cairn_corpus_ingest_debian(ds, corpus, stat(sections, &sb) == 0 ? sections : NULL,
                                        &cp, st, err);
    } else {
        return cairn_errorf(err, CAIRN_EINVAL,
                            "corpus %s: not a directory, a .jsonl file or debian-Translation-en",
                            corpus);
    }
    if (!rc) rc = cairn_docstore_commit(ds, err);
    if (!rc && stamp_path)
        rc = stamp_write(stamp_path, corpus, max_passages, st->passages - before, err);
    if (!rc)
        CAIRN_LOG_INFO("corpus ingested", "path=%s docs=%zu passages=%zu", corpus, st->docs,
                       st->passages - before);
    return rc;
}

/* ---- Embed and build -------------------------------------------------------------------- */

bool cairn_index_format_current(const char *path)
{
    char buf[128] = {0};
    FILE *f = fopen(path, "r");
    if (!f) return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (n && buf[n - 1] == '\n') buf[n - 1] = '\0';
    return strcmp(buf, CAIRN_INDEX_EMBED_FORMAT) == 0;
}

int cairn_index_format_write(const char *path, cairn_error *err)
{
    char tmp[CAIRN_INDEX_PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return cairn_errorf(err, CAIRN_EIO, "%s: %s", tmp, strerror(errno));
    int ok = fputs(CAIRN_INDEX_EMBED_FORMAT "\n", f) >= 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(e));
    }
    return 0;
}

char *cairn_index_passage_text(const char *title, const char *text)
{
    size_t lt = title ? strlen(title) : 0, lx = text ? strlen(text) : 0;
    char *s = malloc(lt + lx + 3);
    if (!s) return NULL;
    if (lt) {
        memcpy(s, title, lt);
        memcpy(s + lt, ". ", 2);
        lt += 2;
    }
    memcpy(s + lt, text ? text : "", lx + 1);
    return s;
}

int cairn_index_embed_store(cairn_embed *e, const cairn_docstore *ds, size_t chunk,
                            cairn_index_progress_fn progress, void *ctx, float **x,
                            int64_t **ids, size_t *n, cairn_error *err)
{
    *x = NULL;
    *ids = NULL;
    *n = 0;
    size_t live = cairn_docstore_live(ds), recs = cairn_docstore_records(ds);
    size_t dim = (size_t)cairn_embed_dim(e);
    if (live == 0) return 0;
    if (chunk == 0) chunk = 256;
    if (chunk > INT_MAX) chunk = INT_MAX;
    float *xv = malloc(live * dim * sizeof *xv);
    int64_t *iv = malloc(live * sizeof *iv);
    const char **texts = malloc(live * sizeof *texts);
    if (!xv || !iv || !texts) {
        free(xv);
        free(iv);
        free(texts);
        return cairn_errorf(err, CAIRN_ENOMEM, "embedding %zu passages: out of memory", live);
    }
    size_t k = 0;
    for (size_t i = 0; i < recs && k < live; i++) {
        cairn_doc d;
        cairn_docstore_at(ds, i, &d);
        if (d.deleted) continue;
        texts[k] = cairn_index_passage_text(d.title, d.text);
        if (!texts[k]) {
            for (size_t j = 0; j < k; j++) free((char *)texts[j]);
            free(xv);
            free(iv);
            free(texts);
            return cairn_errorf(err, CAIRN_ENOMEM, "embedding %zu passages: out of memory", live);
        }
        iv[k++] = (int64_t)d.id;
    }
    int rc = 0;
    for (size_t done = 0; !rc && done < k;) {
        size_t m = k - done < chunk ? k - done : chunk;
        rc = cairn_embed_batch(e, texts + done, (int)m, xv + done * dim, err);
        done += m;
        if (!rc && progress) progress(ctx, done, k);
    }
    for (size_t j = 0; j < k; j++) free((char *)texts[j]);
    free(texts);
    if (rc) {
        free(xv);
        free(iv);
        return rc;
    }
    *x = xv;
    *ids = iv;
    *n = k;
    return 0;
}

int cairn_index_build_ivf(cairn_ivf **out, int dim, const float *x, const int64_t *ids, size_t n,
                          cairn_error *err)
{
    *out = NULL;
    if (n == 0) return cairn_errorf(err, CAIRN_EINVAL, "index: no vectors to build from");
    cairn_ivf_params ip = cairn_ivf_default_params();
    ip.dim = dim;
    ip.nlist = cairn_ivf_nlist_for(n);
    cairn_ivf *ivf = NULL;
    int rc = cairn_ivf_new(&ivf, &ip, err);
    if (!rc) rc = cairn_ivf_train(ivf, x, n, err);
    if (!rc) rc = cairn_ivf_add(ivf, x, ids, n, err);
    if (rc) {
        cairn_ivf_close(ivf);
        return rc;
    }
    *out = ivf;
    return 0;
}
