/*
 * services/rag.c — the passage index and the RAG pipeline up to the answer (see rag.h).
 *
 * Locking: `lock` (a rwlock) guards the docstore, the IVF index, the tier pointer and the
 * lexical index's contents: searches and document reads hold it shared, adds and deletes alone.
 * Embedding happens outside it. The lexical index serialises its own SQLite calls.
 */
#define _GNU_SOURCE /* memmem */
#define CAIRN_LOG_TAG "rag"
#include "services/rag.h"

#include "common/clock.h"
#include "common/json.h"
#include "common/log.h"
#include "common/strbuf.h"
#include "retrieval/corpus.h"
#include "retrieval/index.h"
#include "retrieval/ivf.h"
#include "retrieval/tier.h"
#include "services/workers.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(CAIRN_RAG_MAX_K <= CAIRN_TIER_MAX_K, "a request's k must be one a search returns");

struct cairn_rag {
    cairn_rag_params p;
    char *dir;
    char path_ds[4096], path_ivf[4096], path_tier[4096], path_stamp[4096], path_lex[4096];
    char path_format[4096]; /* embed.format: how the passages were embedded (index.h) */
    char path_partial[4096]; /* index.partial: a background build's vectors so far */
    pthread_rwlock_t lock;
    cairn_docstore *ds;
    cairn_ivf *ivf;   /* NULL until the first documents */
    cairn_tier *tier; /* NULL while the index is empty */
    cairn_lex *lex;   /* same passages and ids as the IVF */
    int dim;
    int lock_fd;         /* dir/LOCK, flock'ed for the handle's life; -1 before */
    cairn_rag_log log;   /* set: adds and deletes go through the document log */
    /* The background build (rag.h): while `building`, the dense side is the flat set fx/fids
     * (every vector embedded so far, searched exactly) and each batch is appended to
     * index.partial, so a restart resumes; when it holds every live passage, the IVF index
     * is trained on it and takes its place. Guarded by lock, except the atomics. */
    bool building;
    float *fx;
    int64_t *fids;
    size_t fn, fcap;
    FILE *partial;
    pthread_t builder;
    bool builder_started;
    atomic_bool stop;         /* close asks the builder to stop between batches */
    atomic_bool failed;       /* the build stopped on an error; what it indexed is served */
    atomic_bool a_building;   /* building, for status without the lock */
    atomic_size_t a_indexed;  /* passages in both indexes (for status without the lock) */
    atomic_size_t a_total;    /* live passages in the store */
    atomic_size_t a_embedded; /* passages the build embedded itself (its rate) */
    atomic_llong build_t0;    /* when the build started embedding (cairn_now_ns) */
    cairn_gauge *g_docs, *g_build_progress, *g_build_indexed, *g_build_eta;
    cairn_counter *c_searches, *c_probed, *c_hits, *c_prefetched_bytes;
    cairn_counter *c_budget_bytes, *c_saved_s;
    cairn_histogram *h_mode[3];  /* cairn_retrieval_search_seconds{mode}, by cairn_search_mode */
    cairn_counter *c_from[3];    /* cairn_retrieval_results_total{list}: dense, lexical, both */
};

cairn_rag_params cairn_rag_default_params(void)
{
    return (cairn_rag_params){.fast_bytes = 64u << 20,
                              .prefetch_bytes = 16u << 20,
                              .lex = cairn_lex_default_params(),
                              .fuse = cairn_fuse_default_params()};
}

/* ---- Index maintenance ------------------------------------------------------------------- */

/* Rebuilds the tier file from the IVF index and swaps it in. Called with the lock held alone. */
static int rebuild_tier(cairn_rag *r, cairn_error *err)
{
    cairn_tier_close(r->tier);
    r->tier = NULL;
    if (!r->ivf || cairn_ivf_count(r->ivf) == 0) return 0;
    int rc = cairn_ivf_save(r->ivf, r->path_ivf, cairn_docstore_uid(r->ds), err);
    if (!rc) rc = cairn_tier_build(r->ivf, r->path_tier, cairn_docstore_uid(r->ds), err);
    cairn_tier_params tp = cairn_tier_default_params();
    tp.fast_bytes = r->p.fast_bytes;
    if (!rc) rc = cairn_tier_open(&r->tier, r->path_tier, &tp, cairn_docstore_uid(r->ds), err);
    return rc;
}

/* ---- The flat set of a background build -------------------------------------------------- */

/*
 * index.partial: what a background build embedded so far, so that a restart resumes instead of
 * embedding everything again. A 64-byte header (magic "CAIRNPV1", u32 dim, u32 0, u64 the
 * docstore's uid, the passage text format, CAIRN_INDEX_EMBED_FORMAT, NUL-padded to 40 bytes),
 * then records of an i64 id and dim floats, appended and fdatasync'ed per batch. A torn last
 * record is cut off at load; records of passages deleted since, duplicates and non-finite
 * vectors are skipped.
 */
#define PARTIAL_MAGIC  "CAIRNPV1"
#define PARTIAL_HEADER 64

static void partial_header(const cairn_rag *r, unsigned char h[PARTIAL_HEADER])
{
    memset(h, 0, PARTIAL_HEADER);
    memcpy(h, PARTIAL_MAGIC, 8);
    uint32_t dim = (uint32_t)r->dim;
    uint64_t uid = cairn_docstore_uid(r->ds);
    memcpy(h + 8, &dim, 4);
    memcpy(h + 16, &uid, 8);
    snprintf((char *)h + 24, 40, "%s", CAIRN_INDEX_EMBED_FORMAT);
}

/* Appends n vectors to the flat set and to index.partial. Lock held alone. */
static int flat_add(cairn_rag *r, const float *x, const int64_t *ids, size_t n, cairn_error *err)
{
    size_t dim = (size_t)r->dim;
    if (n == 0) return 0;
    if (r->fn + n > r->fcap) {
        size_t cap = r->fcap ? r->fcap : 1024;
        while (cap < r->fn + n)
            cap *= 2;
        float *fx = realloc(r->fx, cap * dim * sizeof *fx);
        if (fx) r->fx = fx;
        int64_t *fids = fx ? realloc(r->fids, cap * sizeof *fids) : NULL;
        if (!fids) return cairn_errorf(err, CAIRN_ENOMEM, "index build: out of memory");
        r->fids = fids;
        r->fcap = cap;
    }
    memcpy(r->fx + r->fn * dim, x, n * dim * sizeof *x);
    memcpy(r->fids + r->fn, ids, n * sizeof *ids);
    r->fn += n;
    if (!r->partial) return 0;
    bool ok = true;
    for (size_t i = 0; ok && i < n; i++)
        ok = fwrite(&ids[i], sizeof ids[i], 1, r->partial) == 1 &&
             fwrite(x + i * dim, sizeof *x, dim, r->partial) == dim;
    ok = ok && fflush(r->partial) == 0 && fdatasync(fileno(r->partial)) == 0;
    if (!ok) return cairn_errorf(err, CAIRN_EIO, "%s: %s", r->path_partial, strerror(errno));
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Whether id is a live passage of the store. Lock held. */
static bool live_id(const cairn_rag *r, int64_t id)
{
    cairn_doc d;
    return id >= 0 && cairn_docstore_get(r->ds, (uint64_t)id, &d, NULL) == 0 && !d.deleted;
}

/* Loads index.partial into the flat set (none, another store's or another format's: starts
 * it afresh) and opens it for appending. Called at open, before any other thread. */
static int partial_open(cairn_rag *r, cairn_error *err)
{
    const char *path = r->path_partial;
    unsigned char want[PARTIAL_HEADER], have[PARTIAL_HEADER];
    partial_header(r, want);
    size_t dim = (size_t)r->dim, rec = sizeof(int64_t) + dim * sizeof(float);
    FILE *f = fopen(path, "rb");
    size_t kept = 0, good = 0; /* good: whole records before any torn one */
    if (f && fread(have, 1, PARTIAL_HEADER, f) == PARTIAL_HEADER &&
        memcmp(have, want, PARTIAL_HEADER) == 0) {
        unsigned char *buf = malloc(rec);
        int64_t *seen = NULL;
        size_t n_seen = 0, cap_seen = 0;
        bool oom = !buf;
        while (!oom && fread(buf, 1, rec, f) == rec) {
            good++;
            int64_t id;
            memcpy(&id, buf, sizeof id);
            const float *v = (const float *)(void *)(buf + sizeof id);
            bool ok = live_id(r, id);
            for (size_t k = 0; ok && k < dim; k++)
                ok = isfinite(v[k]);
            if (!ok) continue;
            if (n_seen == cap_seen) {
                cap_seen = cap_seen ? 2 * cap_seen : 1024;
                int64_t *g = realloc(seen, cap_seen * sizeof *g);
                if (!(oom = !g))
                    seen = g;
                else
                    break;
            }
            seen[n_seen++] = id;
            if ((oom = flat_add(r, v, &id, 1, err) != 0)) break;
            kept++;
        }
        /* a duplicate id cannot come from the build's own appends: a file with one is not
         * trusted at all */
        bool dup = false;
        if (seen && n_seen) qsort(seen, n_seen, sizeof *seen, cmp_i64);
        for (size_t i = 1; i < n_seen && !dup; i++)
            dup = seen[i] == seen[i - 1];
        if (dup || oom) {
            CAIRN_LOG_WARN("index.partial not trusted: starting the build afresh", "path=%s", path);
            r->fn = kept = good = 0;
        }
        free(seen);
        free(buf);
    }
    if (f) fclose(f);
    if (good == 0) {
        f = fopen(path, "wb");
        bool ok = f && fwrite(want, 1, PARTIAL_HEADER, f) == PARTIAL_HEADER && fflush(f) == 0;
        if (f) fclose(f);
        if (!ok) return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    } else if (truncate(path, (off_t)(PARTIAL_HEADER + good * rec)) != 0) {
        return cairn_errorf(err, CAIRN_EIO, "%s: truncate: %s", path, strerror(errno));
    }
    r->partial = fopen(path, "ab");
    if (!r->partial) return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    if (kept) CAIRN_LOG_INFO("index build resumes", "passages=%zu file=%s", kept, path);
    return 0;
}

/* The live passages among the flat set. Lock held. */
static size_t flat_live(const cairn_rag *r)
{
    size_t n = 0;
    for (size_t i = 0; i < r->fn; i++)
        n += live_id(r, r->fids[i]);
    return n;
}

/* Refreshes the counts status and /metrics read without the lock. Lock held. */
static void counts_update(cairn_rag *r, size_t indexed)
{
    size_t live = cairn_docstore_live(r->ds);
    atomic_store(&r->a_total, live);
    atomic_store(&r->a_indexed, r->building ? indexed : live);
    cairn_gauge_set(r->g_docs, (double)live);
    cairn_gauge_set(r->g_build_indexed, (double)(r->building ? indexed : live));
    cairn_gauge_set(r->g_build_progress,
                    r->building && live ? (double)indexed / (double)live : 1.0);
    if (!r->building) cairn_gauge_set(r->g_build_eta, 0);
}

/* Adds vectors for ids: to the flat set while building, else to the IVF index (training it
 * first when it has none) and a new tier file. Lock held alone. */
static int index_vectors(cairn_rag *r, const float *x, const int64_t *ids, size_t n,
                         cairn_error *err)
{
    if (r->building) return flat_add(r, x, ids, n, err);
    int rc = 0;
    if (!r->ivf) rc = cairn_index_build_ivf(&r->ivf, r->dim, x, ids, n, err); /* + add */
    else rc = cairn_ivf_add(r->ivf, x, ids, n, err);
    if (!rc) rc = rebuild_tier(r, err);
    return rc;
}

/* ---- The lexical index ----------------------------------------------------------------------- */

/*
 * The lexical title of a passage: its title, then for a document that is not the default
 * corpus's the file name its key starts with (when the title does not already say it), then
 * the Markdown headings inside the passage. Malloc'ed; NULL when out of memory.
 */
static char *lex_title(const cairn_doc_input *d)
{
    cairn_strbuf sb = {0};
    const char *title = d->title ? d->title : "";
    cairn_strbuf_puts(&sb, title);
    if (d->key && strncmp(d->key, "debian:", 7) != 0) {
        const char *hash = strrchr(d->key, '#');
        size_t n = hash ? (size_t)(hash - d->key) : strlen(d->key);
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(n < 255 ? n : 255), d->key);
        if (name[0] && strcmp(name, "api") != 0 && !strstr(title, name))
            cairn_strbuf_printf(&sb, "%s%s", sb.len ? " " : "", name);
    }
    for (const char *line = d->text; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t n = end ? (size_t)(end - line) : strlen(line);
        if (n > 1 && line[0] == '#') cairn_strbuf_printf(&sb, " %.*s", (int)n, line);
        line = end ? end + 1 : NULL;
    }
    return cairn_strbuf_take(&sb, NULL);
}

/* Indexes docs (ids first..first+n) in the lexical index. Lock held alone. */
static int lex_add_inputs(cairn_rag *r, const cairn_doc_input *in, size_t n, uint64_t first,
                          cairn_error *err)
{
    cairn_lex_doc *ld = calloc(n ? n : 1, sizeof *ld);
    int rc = ld ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    size_t made = 0;
    for (; !rc && made < n; made++) {
        char *t = lex_title(&in[made]);
        if (!t) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        ld[made] = (cairn_lex_doc){
            .id = first + made, .title = t, .body = in[made].text, .meta = in[made].meta};
    }
    if (!rc) rc = cairn_lex_add(r->lex, ld, n, err);
    for (size_t i = 0; ld && i < made; i++) free((char *)ld[i].title);
    free(ld);
    return rc;
}

/* Refills the lexical index from every live passage of the store, in batches. */
static int lex_rebuild(cairn_rag *r, cairn_error *err)
{
    enum { BATCH = 2048 };
    int rc = cairn_lex_clear(r->lex, err);
    size_t recs = cairn_docstore_records(r->ds);
    cairn_doc_input *in = malloc(BATCH * sizeof *in);
    uint64_t *ids = malloc(BATCH * sizeof *ids);
    if (!rc && (!in || !ids)) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < recs;) {
        size_t m = 0;
        for (; i < recs && m < BATCH; i++) {
            cairn_doc d;
            cairn_docstore_at(r->ds, i, &d);
            if (d.deleted) continue;
            in[m] = (cairn_doc_input){.key = d.key, .title = d.title, .text = d.text,
                                      .meta = d.meta};
            ids[m++] = d.id;
        }
        /* ids of live records are increasing but not consecutive: add one run at a time */
        for (size_t j = 0; !rc && j < m;) {
            size_t e = j + 1;
            while (e < m && ids[e] == ids[e - 1] + 1) e++;
            rc = lex_add_inputs(r, in + j, e - j, ids[j], err);
            j = e;
        }
    }
    free(in);
    free(ids);
    if (!rc) CAIRN_LOG_INFO("lexical index rebuilt", "passages=%zu", cairn_lex_count(r->lex));
    return rc;
}

/* Embeds and indexes every live document of the store (an index file was missing). */
static int reindex_all(cairn_rag *r, cairn_error *err)
{
    float *x;
    int64_t *ids;
    size_t n;
    int rc = cairn_index_embed_store(r->p.embed, r->ds, 0, NULL, NULL, &x, &ids, &n, err);
    if (!rc && n) rc = index_vectors(r, x, ids, n, err);
    if (!rc) CAIRN_LOG_INFO("reindexed", "passages=%zu", n);
    free(x);
    free(ids);
    return rc;
}

/* ---- The background build -------------------------------------------------------------- */

#define BUILD_BATCH 256 /* passages per commit to both indexes and index.partial */
#define BUILD_EMBED 32  /* passages per embedder call: a query's embedding waits one at most */

/* Adds the lexical entries of ids[0..n) (ascending) from the store, runs of consecutive ids
 * at a time; ids no longer live are left out. Lock held alone. */
static int lex_add_ids(cairn_rag *r, const int64_t *ids, size_t n, cairn_error *err)
{
    cairn_doc_input *in = malloc((n ? n : 1) * sizeof *in);
    if (!in) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    int rc = 0;
    for (size_t j = 0; !rc && j < n;) {
        size_t m = 0;
        cairn_doc d;
        while (j + m < n && (m == 0 || ids[j + m] == ids[j + m - 1] + 1) &&
               cairn_docstore_get(r->ds, (uint64_t)ids[j + m], &d, NULL) == 0 && !d.deleted) {
            in[m++] =
                (cairn_doc_input){.key = d.key, .title = d.title, .text = d.text, .meta = d.meta};
        }
        if (m) rc = lex_add_inputs(r, in, m, (uint64_t)ids[j], err);
        j += m ? m : 1;
    }
    free(in);
    return rc;
}

/* The ids of live passages the flat set lacks, ascending, malloc'ed. Lock held. */
static int build_todo(cairn_rag *r, int64_t **out, size_t *n, cairn_error *err)
{
    size_t recs = cairn_docstore_records(r->ds), m = 0;
    int64_t *have = malloc((r->fn ? r->fn : 1) * sizeof *have);
    int64_t *todo = malloc((recs ? recs : 1) * sizeof *todo);
    if (!have || !todo) {
        free(have);
        free(todo);
        return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    }
    if (r->fn) memcpy(have, r->fids, r->fn * sizeof *have); /* fids is NULL while empty */
    qsort(have, r->fn, sizeof *have, cmp_i64);
    for (size_t i = 0; i < recs; i++) {
        cairn_doc d;
        cairn_docstore_at(r->ds, i, &d);
        int64_t id = (int64_t)d.id;
        if (!d.deleted && !bsearch(&id, have, r->fn, sizeof *have, cmp_i64)) todo[m++] = id;
    }
    free(have);
    *out = todo;
    *n = m;
    return 0;
}

/* A progress line and the build's gauges: at most every 30 s or 10% of the passages, and
 * always at the end (final). */
static void build_report(cairn_rag *r, bool final, int64_t *last_ns, size_t *last_done)
{
    size_t done = atomic_load(&r->a_indexed), total = atomic_load(&r->a_total);
    int64_t now = cairn_now_ns();
    double secs = (double)(now - atomic_load(&r->build_t0)) / 1e9;
    double rate = secs > 0 ? (double)atomic_load(&r->a_embedded) / secs : 0;
    double eta = rate > 0 && total > done ? (double)(total - done) / rate : 0;
    cairn_gauge_set(r->g_build_eta, eta);
    if (!final && now - *last_ns < 30 * CAIRN_NS_PER_SEC && (done - *last_done) * 10 < total)
        return;
    *last_ns = now;
    *last_done = done;
    CAIRN_LOG_INFO(final ? "index built" : "indexing in the background",
                   "passages=%zu/%zu percent=%.1f rate=%.1f/s eta_s=%.0f elapsed_s=%.0f", done,
                   total, total ? 100.0 * (double)done / (double)total : 100.0, rate, eta, secs);
}

/* The lexical index made to hold exactly the live passages of the flat set (a build that
 * resumes after a stop between the two, or a lost lexical.db). */
static int build_lex_catch_up(cairn_rag *r, cairn_error *err)
{
    pthread_rwlock_rdlock(&r->lock);
    size_t want = flat_live(r), have = cairn_lex_count(r->lex);
    int64_t *ids = malloc((r->fn ? r->fn : 1) * sizeof *ids);
    size_t n = 0;
    for (size_t i = 0; ids && i < r->fn; i++)
        if (live_id(r, r->fids[i])) ids[n++] = r->fids[i];
    pthread_rwlock_unlock(&r->lock);
    if (!ids) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    int rc = 0;
    if (have != want) {
        CAIRN_LOG_INFO("lexical index refilled for the resumed build", "passages=%zu", n);
        qsort(ids, n, sizeof *ids, cmp_i64);
        pthread_rwlock_wrlock(&r->lock);
        rc = cairn_lex_clear(r->lex, err);
        pthread_rwlock_unlock(&r->lock);
        for (size_t j = 0; !rc && j < n && !atomic_load(&r->stop); j += 2048) {
            pthread_rwlock_wrlock(&r->lock);
            rc = lex_add_ids(r, ids + j, n - j < 2048 ? n - j : 2048, err);
            pthread_rwlock_unlock(&r->lock);
        }
    }
    free(ids);
    return rc;
}

/* Embeds the passages the flat set lacks, a batch at a time, adding each batch to both
 * indexes and index.partial under the lock. Returns 0 (done, or stopped), or an error. */
static int build_embed(cairn_rag *r, cairn_error *err)
{
    int64_t *todo = NULL;
    size_t n = 0;
    pthread_rwlock_rdlock(&r->lock);
    int rc = build_todo(r, &todo, &n, err);
    pthread_rwlock_unlock(&r->lock);
    if (rc) return rc;
    size_t dim = (size_t)r->dim;
    float *x = malloc(BUILD_BATCH * dim * sizeof *x);
    char **texts = calloc(BUILD_BATCH, sizeof *texts);
    int64_t *ids = malloc(BUILD_BATCH * sizeof *ids);
    if (!x || !texts || !ids) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    int64_t last_ns = cairn_now_ns();
    size_t last_done = atomic_load(&r->a_indexed);
    atomic_store(&r->build_t0, cairn_now_ns());
    for (size_t at = 0; !rc && at < n && !atomic_load(&r->stop);) {
        /* the texts are copied under the lock: an add may remap the store */
        size_t m = 0;
        pthread_rwlock_rdlock(&r->lock);
        for (; at < n && m < BUILD_BATCH; at++) {
            cairn_doc d;
            if (cairn_docstore_get(r->ds, (uint64_t)todo[at], &d, NULL) != 0 || d.deleted) continue;
            if (!(texts[m] = cairn_index_passage_text(d.title, d.text))) {
                rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
                break;
            }
            ids[m++] = todo[at];
        }
        pthread_rwlock_unlock(&r->lock);
        size_t got = m;
        for (size_t k = 0; !rc && k < m; k += BUILD_EMBED) {
            if (atomic_load(&r->stop)) {
                m = 0; /* nothing of this batch is added: the next start embeds it */
                break;
            }
            int c = (int)(m - k < BUILD_EMBED ? m - k : BUILD_EMBED);
            rc = cairn_embed_batch(r->p.embed, (const char *const *)texts + k, c, x + k * dim, err);
        }
        for (size_t k = 0; k < got; k++) {
            free(texts[k]);
            texts[k] = NULL;
        }
        if (rc || m == 0) continue;
        pthread_rwlock_wrlock(&r->lock);
        /* passages deleted while they were embedded are left out */
        size_t w = 0;
        for (size_t k = 0; k < m; k++) {
            if (!live_id(r, ids[k])) continue;
            memmove(x + w * dim, x + k * dim, dim * sizeof *x);
            ids[w++] = ids[k];
        }
        rc = lex_add_ids(r, ids, w, err); /* first: a stop between leaves lexical ahead */
        if (!rc) rc = flat_add(r, x, ids, w, err);
        if (!rc) counts_update(r, flat_live(r));
        pthread_rwlock_unlock(&r->lock);
        atomic_fetch_add(&r->a_embedded, m);
        build_report(r, false, &last_ns, &last_done);
    }
    free(x);
    free(texts);
    free(ids);
    free(todo);
    return rc;
}

/* Trains the IVF index on the flat set (outside the lock: k-means takes seconds), then, under
 * it, adds what came meanwhile, drops what was deleted, writes index.ivf, index.tier and
 * embed.format (last: an index is served as complete only with it) and ends the build. */
static int build_finish(cairn_rag *r, cairn_error *err)
{
    size_t dim = (size_t)r->dim;
    pthread_rwlock_rdlock(&r->lock);
    size_t n0 = r->fn, m = 0;
    float *sx = malloc((n0 ? n0 : 1) * dim * sizeof *sx);
    int64_t *sids = malloc((n0 ? n0 : 1) * sizeof *sids);
    for (size_t i = 0; sx && sids && i < n0; i++) {
        if (!live_id(r, r->fids[i])) continue;
        memcpy(sx + m * dim, r->fx + i * dim, dim * sizeof *sx);
        sids[m++] = r->fids[i];
    }
    pthread_rwlock_unlock(&r->lock);
    int rc = sx && sids ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    cairn_ivf *ivf = NULL;
    int64_t t0 = cairn_now_ns();
    if (!rc && m) rc = cairn_index_build_ivf(&ivf, r->dim, sx, sids, m, err);
    double train_s = (double)(cairn_now_ns() - t0) / 1e9;
    free(sx);
    pthread_rwlock_wrlock(&r->lock);
    for (size_t i = n0; !rc && i < r->fn; i++) {
        if (!live_id(r, r->fids[i])) continue;
        if (!ivf)
            rc = cairn_index_build_ivf(&ivf, r->dim, r->fx + i * dim, &r->fids[i], 1, err);
        else
            rc = cairn_ivf_add(ivf, r->fx + i * dim, &r->fids[i], 1, err);
    }
    size_t gone = 0;
    for (size_t i = 0; !rc && i < m; i++)
        if (!live_id(r, sids[i])) sids[gone++] = sids[i];
    if (!rc && gone) rc = cairn_ivf_remove(ivf, sids, gone, NULL, err);
    free(sids);
    if (!rc) {
        cairn_ivf_close(r->ivf);
        r->ivf = ivf;
        ivf = NULL;
        rc = rebuild_tier(r, err);
        if (!rc) rc = cairn_index_format_write(r->path_format, err);
    }
    if (rc) {
        /* the flat set stays what is served */
        cairn_tier_close(r->tier);
        r->tier = NULL;
        cairn_ivf_close(r->ivf);
        r->ivf = NULL;
        cairn_ivf_close(ivf);
    } else {
        r->building = false;
        atomic_store(&r->a_building, false);
        fclose(r->partial);
        r->partial = NULL;
        unlink(r->path_partial);
        free(r->fx);
        free(r->fids);
        r->fx = NULL;
        r->fids = NULL;
        r->fn = r->fcap = 0;
        counts_update(r, 0);
        CAIRN_LOG_INFO("IVF index trained", "passages=%zu nlist=%zu train_s=%.1f",
                       r->ivf ? cairn_ivf_count(r->ivf) : (size_t)0,
                       r->ivf ? cairn_ivf_nlist(r->ivf) : (size_t)0, train_s);
    }
    pthread_rwlock_unlock(&r->lock);
    return rc;
}

static void *build_main(void *arg)
{
    cairn_rag *r = arg;
    cairn_error err = {0};
    int64_t last_ns = 0;
    size_t last_done = 0;
    int rc = build_lex_catch_up(r, &err);
    if (!rc) rc = build_embed(r, &err);
    if (!rc && !atomic_load(&r->stop)) rc = build_finish(r, &err);
    if (rc) {
        atomic_store(&r->failed, true);
        CAIRN_LOG_ERROR("index build failed; serving what it indexed", "error=%s", err.msg);
    } else if (atomic_load(&r->stop)) {
        CAIRN_LOG_INFO("index build stopped; the next start resumes it", "passages=%zu/%zu",
                       atomic_load(&r->a_indexed), atomic_load(&r->a_total));
    } else {
        build_report(r, true, &last_ns, &last_done);
    }
    return NULL;
}

/* Starts a background build: the stale index files go first (an index is complete only when
 * the build writes embed.format last), then index.partial is loaded and the builder thread
 * started. Called at open, before any other thread uses r. */
static int build_start(cairn_rag *r, cairn_error *err)
{
    unlink(r->path_format);
    unlink(r->path_ivf);
    unlink(r->path_tier);
    r->building = true;
    atomic_store(&r->a_building, true);
    int rc = partial_open(r, err);
    if (rc) return rc;
    counts_update(r, flat_live(r));
    CAIRN_LOG_INFO("indexing in the background", "passages=%zu/%zu dir=%s",
                   atomic_load(&r->a_indexed), atomic_load(&r->a_total), r->path_partial);
    if (pthread_create(&r->builder, NULL, build_main, r) != 0)
        return cairn_errorf(err, CAIRN_EIO, "index build: cannot start a thread");
    r->builder_started = true;
    return 0;
}

/*
 * A store filled by an earlier start with a smaller rag.corpus_max (the default was 2,000
 * passages) and nothing else since (no upload, no delete): it is emptied, so that the corpus is
 * ingested as now asked. A store that holds more than that ingest is kept as it is, with a
 * warning (`cairn index --rebuild` starts over).
 */
static int refresh_corpus_slice(cairn_rag *r, cairn_error *err)
{
    size_t live = cairn_docstore_live(r->ds);
    cairn_index_stamp st;
    char abs[PATH_MAX];
    if (live == 0 || cairn_index_stamp_read(r->path_stamp, &st, NULL) != 0 ||
        cairn_index_stamp_covers(&st, r->p.corpus, r->p.corpus_max) ||
        !realpath(r->p.corpus, abs) || strcmp(abs, st.corpus) != 0)
        return 0;
    if (cairn_docstore_records(r->ds) != st.passages || live != st.passages) {
        CAIRN_LOG_WARN("the index holds a smaller slice of the corpus and other documents; "
                       "keeping it",
                       "passages=%zu corpus=%s max_passages=%zu", live, st.corpus, st.max_passages);
        return 0;
    }
    CAIRN_LOG_INFO("the index holds a smaller slice of the corpus; ingesting it again",
                   "passages=%zu max_passages=%zu want=%zu", live, st.max_passages,
                   r->p.corpus_max);
    cairn_docstore_close(r->ds);
    r->ds = NULL;
    unlink(r->path_stamp); /* first: a store without its stamp is never taken for a cached one */
    unlink(r->path_format);
    unlink(r->path_ivf);
    unlink(r->path_tier);
    unlink(r->path_partial);
    unlink(r->path_ds);
    return cairn_docstore_open(&r->ds, r->path_ds, CAIRN_DOCSTORE_WRITE | CAIRN_DOCSTORE_CREATE,
                               err);
}

/* Fills an empty store from the configured corpus (rag.h says which kinds). */
static int ingest_corpus(cairn_rag *r, cairn_error *err)
{
    return cairn_index_ingest(r->ds, r->p.corpus, r->p.corpus_max,
                              cairn_embed_tokenizer(r->p.embed), r->path_stamp, NULL, err);
}

/* Takes dir/LOCK (flock, exclusive, non-blocking) so that a second process cannot write the
 * same index files; the holder's pid is written into the file for the error message. */
static int lock_dir(cairn_rag *r, cairn_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/LOCK", r->p.dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return cairn_errorf(err, CAIRN_EIO, "%s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        close(fd);
        if (e == EWOULDBLOCK)
            return cairn_errorf(err, CAIRN_EBUSY,
                                "index dir %s is in use by another process (pid %s, holding %s); "
                                "each cairnd needs its own rag.dir",
                                r->p.dir, pid[0] ? pid : "unknown", path);
        return cairn_errorf(err, CAIRN_EIO, "%s: flock: %s", path, strerror(e));
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len)
        CAIRN_LOG_WARN("cannot write the lock holder's pid", "path=%s error=%s", path,
                       strerror(errno));
    r->lock_fd = fd;
    return 0;
}

int cairn_rag_open(cairn_rag **out, const cairn_rag_params *p, cairn_metrics *metrics,
                   cairn_error *err)
{
    *out = NULL;
    if (!p->embed || !p->dir) return cairn_errorf(err, CAIRN_EINVAL, "rag: embedder and dir");
    if (mkdir(p->dir, 0755) != 0 && errno != EEXIST)
        return cairn_errorf(err, CAIRN_EIO, "%s: %s", p->dir, strerror(errno));
    cairn_rag *r = calloc(1, sizeof *r);
    if (!r) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    r->p = *p;
    r->dim = cairn_embed_dim(p->embed);
    r->lock_fd = -1;
    pthread_rwlock_init(&r->lock, NULL);
    snprintf(r->path_ds, sizeof r->path_ds, "%s/docs.cds", p->dir);
    snprintf(r->path_ivf, sizeof r->path_ivf, "%s/index.ivf", p->dir);
    snprintf(r->path_tier, sizeof r->path_tier, "%s/index.tier", p->dir);
    snprintf(r->path_stamp, sizeof r->path_stamp, "%s/corpus.stamp", p->dir);
    snprintf(r->path_format, sizeof r->path_format, "%s/embed.format", p->dir);
    snprintf(r->path_lex, sizeof r->path_lex, "%s/lexical.db", p->dir);
    snprintf(r->path_partial, sizeof r->path_partial, "%s/index.partial", p->dir);
    int rc = lock_dir(r, err);
    if (!rc && metrics) {
        rc = cairn_gauge_new(metrics, &r->g_docs, "cairn_rag_documents", "Passages indexed", err);
        if (!rc)
            rc = cairn_gauge_new(metrics, &r->g_build_progress, "cairn_index_build_progress",
                                 "Share of the stored passages indexed (1 when the index "
                                 "is complete; below 1 while it is built in the background)",
                                 err);
        if (!rc)
            rc = cairn_gauge_new(metrics, &r->g_build_indexed, "cairn_index_build_passages",
                                 "Passages indexed and searchable (both indexes)", err);
        if (!rc)
            rc = cairn_gauge_new(metrics, &r->g_build_eta, "cairn_index_build_eta_seconds",
                                 "Seconds the background build expects to take still (0 "
                                 "when none runs)",
                                 err);
        if (!rc) rc = cairn_counter_new(metrics, &r->c_searches, "cairn_retrieval_searches_total",
                                        "Passage searches", err);
        if (!rc) rc = cairn_counter_new(metrics, &r->c_probed,
                                        "cairn_retrieval_clusters_probed_total",
                                        "IVF clusters probed by searches", err);
        if (!rc) rc = cairn_counter_new(metrics, &r->c_hits,
                                        "cairn_retrieval_fast_tier_hits_total",
                                        "Probed clusters found in the fast tier", err);
        if (!rc) rc = cairn_counter_new(metrics, &r->c_prefetched_bytes,
                                        "cairn_prefetch_bytes_total",
                                        "Bytes copied into the fast tier by lookahead prefetch",
                                        err);
        if (!rc) rc = cairn_counter_new(metrics, &r->c_budget_bytes,
                                        "cairn_prefetch_budget_bytes_total",
                                        "Byte budgets given to lookahead prefetches (copy rate x "
                                        "predicted pre-retrieval generation)", err);
        if (!rc) rc = cairn_counter_new(metrics, &r->c_saved_s,
                                        "cairn_retrieval_saved_seconds_total",
                                        "Estimated CPU scan time the fast tier's hits saved", err);
        static const double b[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                   0.025,  0.05,    0.1,    0.25,  0.5,    1};
        static const char *const mode[] = {"mode"}, *const list[] = {"list"};
        cairn_metric_family *f = NULL;
        if (!rc) rc = cairn_histogram_family_new(metrics, &f, "cairn_retrieval_search_seconds",
                                                 "Passage search time by mode (dense, lexical, "
                                                 "hybrid), query embedding not included",
                                                 mode, 1, 3, b, sizeof b / sizeof b[0], err);
        for (int m = 0; !rc && m < 3; m++)
            r->h_mode[m] = cairn_histogram_child(
                f, CAIRN_LABELS(cairn_search_mode_name((cairn_search_mode)m)));
        if (!rc) rc = cairn_counter_family_new(metrics, &f, "cairn_retrieval_results_total",
                                               "Passages returned by searches, by the list that "
                                               "contributed them (dense, lexical, both)",
                                               list, 1, 3, err);
        for (unsigned m = 1; !rc && m <= 3; m++)
            r->c_from[m - 1] = cairn_counter_child(f, CAIRN_LABELS(cairn_fuse_from_name(m)));
    }
    if (!rc) rc = cairn_docstore_open(&r->ds, r->path_ds,
                                      CAIRN_DOCSTORE_WRITE | CAIRN_DOCSTORE_CREATE, err);
    if (!rc && p->corpus) rc = refresh_corpus_slice(r, err);
    if (!rc && cairn_docstore_live(r->ds) == 0 && p->corpus) rc = ingest_corpus(r, err);
    bool build = false; /* p->background and the index must be (re)built */
    if (!rc && cairn_docstore_live(r->ds) > 0) {
        struct stat st;
        if (stat(r->path_ivf, &st) == 0 && cairn_index_format_current(r->path_format) &&
            cairn_ivf_load(&r->ivf, r->path_ivf, cairn_docstore_uid(r->ds), NULL) == 0 &&
            cairn_ivf_count(r->ivf) == cairn_docstore_live(r->ds)) {
            /* the tier file saved with this index, else a new one */
            cairn_tier_params tp = cairn_tier_default_params();
            tp.fast_bytes = p->fast_bytes;
            if (cairn_tier_open(&r->tier, r->path_tier, &tp, cairn_docstore_uid(r->ds), NULL) ||
                cairn_tier_count(r->tier) != cairn_ivf_count(r->ivf) ||
                cairn_tier_nlist(r->tier) != cairn_ivf_nlist(r->ivf))
                rc = rebuild_tier(r, err);
        } else {
            cairn_ivf_close(r->ivf);
            r->ivf = NULL;
            if (p->background)
                build = true;
            else
                rc = reindex_all(r, err);
        }
    }
    /* Every vector now is in the current format (kept, embedded again, or none yet); a
     * background build writes the file when it ends. */
    if (!rc && !build) rc = cairn_index_format_write(r->path_format, err);
    if (!rc) rc = cairn_lex_open(&r->lex, r->path_lex, cairn_docstore_uid(r->ds), &p->lex, err);
    if (!rc && !build && cairn_lex_count(r->lex) != cairn_docstore_live(r->ds))
        rc = lex_rebuild(r, err);
    if (!rc && build) rc = build_start(r, err);
    if (!rc && !build) unlink(r->path_partial); /* a stopped build's, made complete another way */
    if (rc) {
        cairn_rag_close(r);
        return rc;
    }
    if (!build) counts_update(r, 0);
    *out = r;
    return 0;
}

void cairn_rag_close(cairn_rag *r)
{
    if (!r) return;
    if (r->builder_started) {
        atomic_store(&r->stop, true);
        pthread_join(r->builder, NULL);
    }
    if (r->partial) fclose(r->partial);
    free(r->fx);
    free(r->fids);
    cairn_lex_close(r->lex);
    cairn_tier_close(r->tier);
    cairn_ivf_close(r->ivf);
    cairn_docstore_close(r->ds);
    if (r->lock_fd >= 0) close(r->lock_fd); /* releases the flock */
    pthread_rwlock_destroy(&r->lock);
    free(r);
}

size_t cairn_rag_count(cairn_rag *r)
{
    pthread_rwlock_rdlock(&r->lock);
    size_t n = cairn_docstore_live(r->ds);
    pthread_rwlock_unlock(&r->lock);
    return n;
}

int cairn_rag_dim(const cairn_rag *r) { return r->dim; }

void cairn_rag_get_status(cairn_rag *r, cairn_rag_status *st)
{
    memset(st, 0, sizeof *st);
    st->indexed = atomic_load(&r->a_indexed);
    st->total = atomic_load(&r->a_total);
    st->complete = !atomic_load(&r->a_building);
    st->failed = atomic_load(&r->failed);
    st->eta_s = -1;
    int64_t t0 = atomic_load(&r->build_t0);
    size_t emb = atomic_load(&r->a_embedded);
    if (!st->complete && t0 && emb) {
        double secs = (double)(cairn_now_ns() - t0) / 1e9;
        st->rate = secs > 0 ? (double)emb / secs : 0;
        if (st->rate > 0) st->eta_s = (double)(st->total - st->indexed) / st->rate;
    }
}

json_t *cairn_rag_status_json(cairn_rag *r)
{
    cairn_rag_status st;
    cairn_rag_get_status(r, &st);
    return json_pack("{s:b,s:I,s:I}", "complete", st.complete, "passages", (json_int_t)st.indexed,
                     "total", (json_int_t)st.total);
}

int cairn_rag_embed(cairn_rag *r, const char *text, float *q, cairn_error *err)
{
    return cairn_embed_batch(r->p.embed, &text, 1, q, err);
}

int cairn_rag_add(cairn_rag *r, const cairn_api_doc *docs, size_t n, uint64_t *first_id,
                  cairn_error *err)
{
    if (n == 0) return cairn_errorf(err, CAIRN_EINVAL, "documents: none given");
    if (r->log.add) return r->log.add(r->log.ctx, docs, n, first_id, err);
    float *x = malloc(n * (size_t)r->dim * sizeof *x);
    int64_t *ids = malloc(n * sizeof *ids);
    const char **texts = calloc(n, sizeof *texts);
    cairn_doc_input *in = calloc(n, sizeof *in);
    int rc = (x && ids && texts && in) ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < n; i++) {
        texts[i] = cairn_index_passage_text(docs[i].title, docs[i].text);
        if (!texts[i]) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        in[i] = (cairn_doc_input){.key = docs[i].key ? docs[i].key : "api",
                                  .title = docs[i].title,
                                  .text = docs[i].text,
                                  .meta = docs[i].metadata_json};
    }
    if (!rc) rc = cairn_embed_batch(r->p.embed, texts, (int)n, x, err); /* outside the lock */
    if (!rc) {
        pthread_rwlock_wrlock(&r->lock);
        uint64_t first = 0;
        rc = cairn_docstore_append(r->ds, in, n, &first, err);
        if (!rc) rc = cairn_docstore_commit(r->ds, err);
        for (size_t i = 0; !rc && i < n; i++) ids[i] = (int64_t)(first + i);
        if (!rc) rc = index_vectors(r, x, ids, n, err);
        if (!rc) rc = lex_add_inputs(r, in, n, first, err);
        if (!rc && first_id) *first_id = first;
        counts_update(r, r->building ? flat_live(r) : 0);
        pthread_rwlock_unlock(&r->lock);
    }
    for (size_t i = 0; texts && i < n; i++) free((char *)texts[i]);
    free(x);
    free(ids);
    free(texts);
    free(in);
    return rc;
}

/* Passages of the texts being chunked, collected by cairn_corpus_chunk's callback: those of
 * the current text take its key, title and metadata (with "chunk" set per passage). */
typedef struct chunks {
    cairn_api_doc *docs;
    size_t n, cap, max;
    size_t first; /* the current text's first passage */
    const char *key, *title;
    json_t *meta;
} chunks;

static int on_chunk(void *ctx, const char *s, size_t len)
{
    chunks *c = ctx;
    if (c->n == c->max) return CAIRN_ELIMIT;
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 16;
        cairn_api_doc *d = realloc(c->docs, cap * sizeof *d);
        if (!d) return CAIRN_ENOMEM;
        c->docs = d;
        c->cap = cap;
    }
    cairn_api_doc *d = &c->docs[c->n];
    memset(d, 0, sizeof *d);
    size_t chunk = c->n - c->first;
    c->n++;
    char *text = strndup(s, len);
    char *key = malloc(strlen(c->key) + 24);
    json_object_set_new(c->meta, "chunk", json_integer((json_int_t)chunk));
    char *meta = json_dumps(c->meta, JSON_COMPACT);
    d->text = text, d->text_len = len, d->key = key, d->metadata_json = meta, d->title = c->title;
    if (!text || !key || !meta) return CAIRN_ENOMEM;
    sprintf(key, "%s#%zu", c->key, chunk);
    return 0;
}

int cairn_rag_add_texts(cairn_rag *r, const cairn_api_doc *texts, size_t n, size_t max_passages,
                        uint64_t *first_id, size_t *counts, cairn_error *err)
{
    chunks c = {.max = max_passages};
    cairn_corpus_params cp = cairn_corpus_default_params();
    cp.count_tokens = cairn_index_count_wordpiece;
    cp.count_ctx = (void *)cairn_embed_tokenizer(r->p.embed);
    int rc = n ? 0 : cairn_errorf(err, CAIRN_EINVAL, "documents: none given");
    for (size_t i = 0; !rc && i < n; i++) {
        const cairn_api_doc *t = &texts[i];
        c.first = c.n;
        c.key = t->key ? t->key : "api";
        c.title = t->title;
        c.meta = t->metadata_json ? json_loads(t->metadata_json, 0, NULL) : json_object();
        if (!json_is_object(c.meta))
            rc = cairn_errorf(err, CAIRN_EINVAL, "metadata: not a JSON object");
        if (!rc) rc = cairn_corpus_chunk(t->text, t->text_len, &cp, on_chunk, &c);
        if (rc == CAIRN_ELIMIT)
            rc = cairn_errorf(err, CAIRN_ELIMIT, "more than %zu passages (the limit per request)",
                              max_passages);
        else if (rc == CAIRN_ENOMEM) rc = cairn_errorf(err, rc, "out of memory");
        else if (rc && !err->msg[0]) rc = cairn_errorf(err, rc, "chunking failed");
        else if (!rc && c.n == c.first)
            rc = cairn_errorf(err, CAIRN_EINVAL, "no passages: the text is empty");
        if (rc && n > 1) cairn_error_prefix(err, "documents[%zu]", i);
        if (!rc && counts) counts[i] = c.n - c.first;
        json_decref(c.meta);
        c.meta = NULL;
    }
    uint64_t first = 0;
    if (!rc) rc = cairn_rag_add(r, c.docs, c.n, &first, err);
    if (!rc && first_id) *first_id = first;
    for (size_t i = 0; i < c.n; i++) {
        free((char *)c.docs[i].text);
        free((char *)c.docs[i].key);
        free((char *)c.docs[i].metadata_json);
    }
    free(c.docs);
    return rc;
}

int cairn_rag_add_text(cairn_rag *r, const char *text, size_t len, const char *key,
                       const char *title, const char *meta_json, size_t max_passages,
                       uint64_t *first_id, size_t *n_passages, cairn_error *err)
{
    cairn_api_doc d = {.text = text, .text_len = len, .key = key, .title = title,
                       .metadata_json = meta_json};
    size_t count = 0;
    int rc = cairn_rag_add_texts(r, &d, 1, max_passages, first_id, &count, err);
    if (!rc && n_passages) *n_passages = count;
    return rc;
}

int cairn_rag_scan(cairn_rag *r, uint64_t after, bool all,
                   int (*visit)(void *ctx, const cairn_doc *d), void *ctx)
{
    pthread_rwlock_rdlock(&r->lock);
    /* Records are sorted by id: find the first one past `after` by bisection. */
    size_t lo = 0, hi = cairn_docstore_records(r->ds);
    cairn_doc d;
    while (!all && lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        cairn_docstore_at(r->ds, mid, &d);
        if (d.id <= after) lo = mid + 1;
        else hi = mid;
    }
    int rc = 0;
    for (size_t i = lo, n = cairn_docstore_records(r->ds); !rc && i < n; i++) {
        cairn_docstore_at(r->ds, i, &d);
        if (!d.deleted) rc = visit(ctx, &d);
    }
    pthread_rwlock_unlock(&r->lock);
    return rc;
}

int cairn_rag_delete(cairn_rag *r, uint64_t id, cairn_error *err)
{
    if (r->log.del) return r->log.del(r->log.ctx, id, err);
    pthread_rwlock_wrlock(&r->lock);
    int rc = cairn_docstore_delete(r->ds, id, err);
    if (!rc) rc = cairn_docstore_commit(r->ds, err);
    int64_t iid = (int64_t)id;
    if (!rc && r->ivf) rc = cairn_ivf_remove(r->ivf, &iid, 1, NULL, err);
    if (!rc && !r->building) rc = rebuild_tier(r, err);
    if (!rc) rc = cairn_lex_delete(r->lex, &id, 1, err);
    counts_update(r, r->building ? flat_live(r) : 0);
    pthread_rwlock_unlock(&r->lock);
    return rc;
}

/* The ids of live passages whose metadata has key = value (as a string). */
typedef struct where {
    const char *key, *value;
    uint64_t *ids;
    size_t n, cap;
} where;

static int where_visit(void *ctx, const cairn_doc *d)
{
    where *w = ctx;
    /* most passages do not hold the value at all: skip them before parsing */
    if (!d->meta_len || !memmem(d->meta, d->meta_len, w->value, strlen(w->value))) return 0;
    json_t *meta = json_loadb(d->meta, d->meta_len, 0, NULL);
    json_t *v = json_object_get(meta, w->key);
    bool match = json_is_string(v) && !strcmp(json_string_value(v), w->value);
    json_decref(meta);
    if (!match) return 0;
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        uint64_t *ids = realloc(w->ids, cap * sizeof *ids);
        if (!ids) return CAIRN_ENOMEM;
        w->ids = ids;
        w->cap = cap;
    }
    w->ids[w->n++] = d->id;
    return 0;
}

int cairn_rag_delete_where(cairn_rag *r, const char *key, const char *value, size_t *n_deleted,
                           cairn_error *err)
{
    where w = {.key = key, .value = value};
    size_t done = 0;
    int rc = cairn_rag_scan(r, 0, true, where_visit, &w);
    if (rc) rc = cairn_errorf(err, rc, "out of memory");
    else if (!w.n) rc = cairn_errorf(err, CAIRN_ENOTFOUND, "no passage has %s = %s", key, value);
    if (!rc && r->log.del) {
        /* through the document log, one entry per passage; one deleted meanwhile is no loss */
        for (size_t i = 0; !rc && i < w.n; i++) {
            rc = r->log.del(r->log.ctx, w.ids[i], err);
            if (rc == CAIRN_ENOTFOUND) rc = 0;
            else if (!rc) done++;
        }
    } else if (!rc) {
        /* one commit, one IVF removal and one tier rebuild for all of them */
        pthread_rwlock_wrlock(&r->lock);
        for (size_t i = 0; !rc && i < w.n; i++) {
            cairn_doc d;
            if (cairn_docstore_get(r->ds, w.ids[i], &d, NULL) || d.deleted)
                continue; /* deleted meanwhile */
            rc = cairn_docstore_delete(r->ds, w.ids[i], err);
            w.ids[done++] = w.ids[i];
        }
        if (!rc) rc = cairn_docstore_commit(r->ds, err);
        if (!rc && r->ivf && done)
            rc = cairn_ivf_remove(r->ivf, (const int64_t *)w.ids, done, NULL, err);
        if (!rc && done) rc = rebuild_tier(r, err);
        if (!rc && done) rc = cairn_lex_delete(r->lex, w.ids, done, err);
        cairn_gauge_set(r->g_docs, (double)cairn_docstore_live(r->ds));
        pthread_rwlock_unlock(&r->lock);
    }
    if (!rc && !done) rc = cairn_errorf(err, CAIRN_ENOTFOUND, "no passage has %s = %s", key, value);
    if (!rc && n_deleted) *n_deleted = done;
    free(w.ids);
    return rc;
}

/* ---- The document log's side: updates with the log's ids ----------------------------------- */

void cairn_rag_set_log(cairn_rag *r, const cairn_rag_log *log)
{
    pthread_rwlock_wrlock(&r->lock);
    r->log = log ? *log : (cairn_rag_log){0};
    pthread_rwlock_unlock(&r->lock);
}

uint64_t cairn_rag_next_id(cairn_rag *r)
{
    pthread_rwlock_rdlock(&r->lock);
    uint64_t n = cairn_docstore_next_id(r->ds);
    pthread_rwlock_unlock(&r->lock);
    return n;
}

bool cairn_rag_is_live(cairn_rag *r, uint64_t id)
{
    pthread_rwlock_rdlock(&r->lock);
    cairn_doc d;
    bool live = cairn_docstore_get(r->ds, id, &d, NULL) == 0 && !d.deleted;
    pthread_rwlock_unlock(&r->lock);
    return live;
}

/* A per-op refusal: the op is skipped, the batch goes on. */
static void refuse(cairn_rag_op *op, int code, const char *why)
{
    op->result = code < 0 ? code : CAIRN_EINVAL;
    snprintf(op->why, sizeof op->why, "%.199s", why);
}

/* Whether a docstore error is the document's fault (refuse it) rather than the store's. */
static bool doc_fault(int rc)
{
    return rc == CAIRN_EINVAL || rc == CAIRN_EFORMAT || rc == CAIRN_ELIMIT || rc == CAIRN_ERANGE;
}

int cairn_rag_apply(cairn_rag *r, cairn_rag_op *ops, size_t n, size_t *n_done,
                    cairn_error *err)
{
    *n_done = 0;
    /* Which adds are new. Only the log's applier writes while a log is set, so the store
     * cannot change between this look and the write below. An untrained index ends the batch
     * after its first new add: every replica then trains on the same documents whatever its
     * batches are, and so ranks alike. */
    pthread_rwlock_rdlock(&r->lock);
    uint64_t next = cairn_docstore_next_id(r->ds);
    bool trained = r->ivf != NULL;
    pthread_rwlock_unlock(&r->lock);
    size_t end = n, total = 0;
    for (size_t i = 0; i < n; i++) {
        cairn_rag_op *op = &ops[i];
        op->result = 0;
        op->why[0] = '\0';
        if (op->kind != CAIRN_RAG_OP_ADD) continue;
        if (op->n_docs == 0 || op->id > (uint64_t)INT64_MAX - op->n_docs) {
            refuse(op, CAIRN_EINVAL, "no passages, or ids past INT64_MAX");
        } else if (op->id + op->n_docs <= next) {
            op->result = 0; /* applied before (a replay) */
        } else if (op->id < next) {
            refuse(op, CAIRN_ERANGE, "ids overlap those already stored");
        } else {
            op->result = 1;
            next = op->id + op->n_docs;
            total += op->n_docs;
            if (!trained) {
                end = i + 1;
                break;
            }
        }
    }
    float *x = total ? malloc(total * (size_t)r->dim * sizeof *x) : NULL;
    int64_t *ids = total ? malloc(total * sizeof *ids) : NULL;
    int64_t *gone = malloc((end ? end : 1) * sizeof *gone);
    int rc = (!total || (x && ids)) && gone ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    /* Embed outside the lock, one op at a time, so that one bad text refuses only its op. */
    size_t at = 0;
    for (size_t i = 0; !rc && i < end; i++) {
        cairn_rag_op *op = &ops[i];
        if (op->kind != CAIRN_RAG_OP_ADD || op->result != 1) continue;
        const char **texts = calloc(op->n_docs, sizeof *texts);
        bool oom = !texts;
        for (size_t k = 0; !oom && k < op->n_docs; k++)
            oom = !(texts[k] = cairn_index_passage_text(op->docs[k].title, op->docs[k].text));
        cairn_error e = {0};
        int erc = oom ? CAIRN_ENOMEM
                      : cairn_embed_batch(r->p.embed, texts, (int)op->n_docs,
                                          x + at * (size_t)r->dim, &e);
        if (oom) snprintf(e.msg, sizeof e.msg, "out of memory");
        for (size_t k = 0; texts && k < op->n_docs; k++) free((char *)texts[k]);
        free(texts);
        if (erc == CAIRN_ENOMEM) rc = cairn_errorf(err, erc, "%s", e.msg);
        else if (erc) refuse(op, erc, e.msg);
        else at += op->n_docs;
    }
    if (rc) {
        free(x);
        free(ids);
        free(gone);
        return rc;
    }
    pthread_rwlock_wrlock(&r->lock);
    size_t src = 0, dst = 0, n_gone = 0;
    bool changed = false;
    for (size_t i = 0; !rc && i < end; i++) {
        cairn_rag_op *op = &ops[i];
        cairn_error e = {0};
        if (op->kind == CAIRN_RAG_OP_DEL) {
            cairn_doc d;
            if (cairn_docstore_get(r->ds, op->id, &d, NULL) != 0 || d.deleted) {
                op->result = 0; /* absent or deleted already: a no-op */
                continue;
            }
            rc = cairn_docstore_delete(r->ds, op->id, err);
            if (!rc) {
                op->result = 1;
                gone[n_gone++] = (int64_t)op->id;
                changed = true;
            }
            continue;
        }
        if (op->kind != CAIRN_RAG_OP_ADD) {
            refuse(op, CAIRN_EINVAL, "unknown operation");
            continue;
        }
        if (op->result != 1) continue;
        cairn_doc_input *in = calloc(op->n_docs, sizeof *in);
        if (!in) {
            rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
            break;
        }
        for (size_t k = 0; k < op->n_docs; k++)
            in[k] = (cairn_doc_input){.key = op->docs[k].key ? op->docs[k].key : "api",
                                      .title = op->docs[k].title,
                                      .text = op->docs[k].text,
                                      .meta = op->docs[k].metadata_json};
        int arc = cairn_docstore_append_ids(r->ds, in, op->n_docs, op->id, &e);
        if (!arc) rc = lex_add_inputs(r, in, op->n_docs, op->id, err); /* the same ids */
        free(in);
        size_t dim = (size_t)r->dim;
        if (rc) break;
        if (!arc) {
            memmove(x + dst * dim, x + src * dim, op->n_docs * dim * sizeof *x);
            for (size_t k = 0; k < op->n_docs; k++) ids[dst + k] = (int64_t)(op->id + k);
            dst += op->n_docs;
            changed = true;
        } else if (doc_fault(arc)) {
            refuse(op, arc, e.msg);
        } else {
            rc = cairn_errorf(err, arc, "%s", e.msg);
        }
        src += op->n_docs;
    }
    if (!rc && changed) rc = cairn_docstore_commit(r->ds, err);
    if (!rc && dst) {
        if (r->building)
            rc = flat_add(r, x, ids, dst, err);
        else if (!r->ivf)
            rc = cairn_index_build_ivf(&r->ivf, r->dim, x, ids, dst, err);
        else rc = cairn_ivf_add(r->ivf, x, ids, dst, err);
    }
    if (!rc && n_gone && r->ivf) rc = cairn_ivf_remove(r->ivf, gone, n_gone, NULL, err);
    for (size_t i = 0; !rc && i < n_gone; i++) {
        uint64_t id = (uint64_t)gone[i];
        rc = cairn_lex_delete(r->lex, &id, 1, err);
    }
    if (!rc && changed && !r->building) rc = rebuild_tier(r, err);
    counts_update(r, r->building ? flat_live(r) : 0);
    pthread_rwlock_unlock(&r->lock);
    free(x);
    free(ids);
    free(gone);
    if (!rc) *n_done = end;
    return rc;
}

/* ---- Search ----------------------------------------------------------------------------------- */

void cairn_rag_prefetch(cairn_rag *r, const float *q0, double predicted_s)
{
    pthread_rwlock_rdlock(&r->lock);
    if (r->tier) {
        size_t budget = predicted_s > 0 ? cairn_tier_budget_for(r->tier, predicted_s) : SIZE_MAX;
        if (budget == SIZE_MAX) budget = r->p.prefetch_bytes;
        cairn_tier_prefetch(r->tier, q0, budget, 0, NULL);
        cairn_counter_add(r->c_budget_bytes, (double)budget);
    }
    pthread_rwlock_unlock(&r->lock);
}

void cairn_rag_hits_free(cairn_rag_hit *hits, int n)
{
    for (int i = 0; hits && i < n; i++) {
        free(hits[i].text);
        free(hits[i].key);
        free(hits[i].title);
        free(hits[i].meta);
    }
}

/* A metadata value as the text a filter compares with: strings as they are, numbers and
 * booleans as JSON writes them (what the lexical index stores, retrieval/lexical.c). */
static bool meta_value_is(json_t *v, const char *want)
{
    char buf[64];
    if (json_is_string(v)) return !strcmp(json_string_value(v), want);
    if (json_is_integer(v)) snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
    else if (json_is_boolean(v))
        snprintf(buf, sizeof buf, "%s", json_is_true(v) ? "true" : "false");
    else if (json_is_real(v)) snprintf(buf, sizeof buf, "%.17g", json_real_value(v));
    else return false;
    return !strcmp(buf, want);
}

static bool meta_matches(const cairn_doc *d, const cairn_lex_filter *f, size_t n)
{
    if (n == 0) return true;
    json_t *meta = json_loadb(d->meta, d->meta_len, 0, NULL);
    bool ok = meta != NULL;
    for (size_t i = 0; ok && i < n; i++) ok = meta_value_is(json_object_get(meta, f[i].key),
                                                            f[i].value);
    json_decref(meta);
    return ok;
}

/*
 * The dense list: up to want live passages matching the filters, best first, into ids. With
 * filters the IVF is asked for CAIRN_TIER_MAX_K candidates, since some will not match. Read
 * lock held.
 */
static int flat_list(cairn_rag *r, const cairn_rag_query *q, int want, uint64_t *ids, float *scores,
                     int *n, cairn_error *err);

static int dense_list(cairn_rag *r, const cairn_rag_query *q, int want, uint64_t *ids,
                      float *scores, int *n, cairn_error *err)
{
    *n = 0;
    if (r->building) return flat_list(r, q, want, ids, scores, n, err);
    if (!r->tier) return 0;
    float sc[CAIRN_TIER_MAX_K];
    int64_t iv[CAIRN_TIER_MAX_K];
    int fetch = q->n_filters ? CAIRN_TIER_MAX_K : want;
    cairn_tier_stats before, after;
    cairn_tier_get_stats(r->tier, &before);
    size_t np = q->nprobe > 0 ? (size_t)q->nprobe : cairn_ivf_nprobe(r->ivf);
    int rc = cairn_tier_search(r->tier, q->q, (size_t)fetch, np, sc, iv, err);
    cairn_tier_get_stats(r->tier, &after);
    cairn_counter_inc(r->c_searches);
    cairn_counter_add(r->c_probed, (double)(after.probed - before.probed));
    cairn_counter_add(r->c_hits, (double)(after.hits - before.hits));
    cairn_counter_add(r->c_prefetched_bytes,
                      (double)(after.bytes_prefetched - before.bytes_prefetched));
    cairn_counter_add(r->c_saved_s, (double)(after.saved_ns - before.saved_ns) / 1e9);
    for (int i = 0; !rc && i < fetch && iv[i] >= 0 && *n < want; i++) {
        cairn_doc d;
        if (cairn_docstore_get(r->ds, (uint64_t)iv[i], &d, NULL) != 0 || d.deleted) continue;
        if (!meta_matches(&d, q->filters, q->n_filters)) continue;
        ids[*n] = d.id;
        scores[*n] = sc[i];
        (*n)++;
    }
    return rc;
}

/*
 * The dense list while a build runs: exact inner products with every vector embedded so far
 * (one sgemv: ~10 ms over the whole default corpus), the best kept in order (score, then the
 * smaller id), deleted and filtered-out passages skipped. Read lock held.
 */
static int flat_list(cairn_rag *r, const cairn_rag_query *q, int want, uint64_t *ids, float *scores,
                     int *n, cairn_error *err)
{
    *n = 0;
    if (r->fn == 0) return 0;
    float *sc = malloc(r->fn * sizeof *sc); /* only while building: no pool for it */
    if (!sc) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)r->fn, r->dim, 1.0f, r->fx, r->dim, q->q, 1, 0.0f,
                sc, 1);
    int fetch = q->n_filters ? CAIRN_TIER_MAX_K : want;
    int64_t top[CAIRN_TIER_MAX_K];
    float ts[CAIRN_TIER_MAX_K];
    int nt = 0;
    for (size_t i = 0; i < r->fn; i++) {
        float v = sc[i];
        int64_t id = r->fids[i];
        if (nt == fetch && (v < ts[nt - 1] || (v == ts[nt - 1] && id > top[nt - 1]))) continue;
        int at = nt < fetch ? nt++ : nt - 1;
        while (at > 0 && (ts[at - 1] < v || (ts[at - 1] == v && top[at - 1] > id))) {
            ts[at] = ts[at - 1];
            top[at] = top[at - 1];
            at--;
        }
        ts[at] = v;
        top[at] = id;
    }
    free(sc);
    for (int i = 0; i < nt && *n < want; i++) {
        cairn_doc d;
        if (cairn_docstore_get(r->ds, (uint64_t)top[i], &d, NULL) != 0 || d.deleted) continue;
        if (!meta_matches(&d, q->filters, q->n_filters)) continue;
        ids[*n] = d.id;
        scores[*n] = ts[i];
        (*n)++;
    }
    return 0;
}

/*
 * The dense similarity (inner product with q) of passages ids[0..n) (n <= CAIRN_TIER_MAX_K)
 * into out, NaN for a passage without a stored vector (deleted, or not yet embedded). Hybrid
 * fusion's fill (retrieval/fuse.h) needs it for the passages only the lexical list found. One
 * pass over the ids the dense side holds (the IVF's lists, or the flat set while a build runs),
 * the wanted ones found in a small open-addressing table: about 0.2 ms over the whole default
 * corpus, and nothing to keep in step with adds and deletes. Read lock held.
 */
static void dense_scores_locked(cairn_rag *r, const float *q, const uint64_t *ids, int n,
                                float *out)
{
    enum { BITS = 11, SLOTS = 1 << BITS }; /* at least twice CAIRN_TIER_MAX_K: short probes */
    _Static_assert(SLOTS >= 2 * CAIRN_TIER_MAX_K, "the table must stay half empty");
    int16_t slot[SLOTS], first[CAIRN_TIER_MAX_K]; /* first: the entry of ids[i]'s first copy */
    memset(slot, 0xff, sizeof slot); /* -1: empty */
    int distinct = 0;
    for (int i = 0; i < n; i++) {
        out[i] = NAN;
        size_t h = (size_t)((ids[i] * 0x9E3779B97F4A7C15ull) >> (64 - BITS));
        while (slot[h] >= 0 && ids[slot[h]] != ids[i]) h = (h + 1) & (SLOTS - 1);
        if (slot[h] < 0) slot[h] = (int16_t)i, distinct++; /* a repeated id: its first entry */
        first[i] = slot[h];
    }
    if (n == 0) return;
    int found = 0;
    size_t lists = r->building ? 1 : r->ivf ? cairn_ivf_nlist(r->ivf) : 0;
    for (size_t l = 0; l < lists && found < distinct; l++) {
        const float *v = NULL;
        const int64_t *lid = NULL;
        size_t m = 0;
        if (r->building) v = r->fx, lid = r->fids, m = r->fn;
        else if (cairn_ivf_list(r->ivf, l, &v, &lid, &m, NULL) != 0) continue;
        for (size_t j = 0; j < m; j++) {
            uint64_t id = (uint64_t)lid[j];
            size_t h = (size_t)((id * 0x9E3779B97F4A7C15ull) >> (64 - BITS));
            while (slot[h] >= 0 && ids[slot[h]] != id) h = (h + 1) & (SLOTS - 1);
            if (slot[h] < 0 || out[slot[h]] == out[slot[h]]) continue; /* not wanted, or done */
            out[slot[h]] = cblas_sdot(r->dim, q, 1, v + j * (size_t)r->dim, 1);
            found++;
        }
    }
    for (int i = 0; i < n; i++)
        out[i] = out[first[i]]; /* repeats: their first copy's */
}

int cairn_rag_dense_scores(cairn_rag *r, const float *q, const uint64_t *ids, int n, float *out,
                           cairn_error *err)
{
    if (n < 0 || n > CAIRN_TIER_MAX_K)
        return cairn_errorf(err, CAIRN_ERANGE, "ids: %d is outside 0..%d", n, CAIRN_TIER_MAX_K);
    pthread_rwlock_rdlock(&r->lock);
    dense_scores_locked(r, q, ids, n, out);
    pthread_rwlock_unlock(&r->lock);
    return 0;
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* The lexical list of one search; run on a helper thread by cairn_rag_retrieve. */
typedef struct lex_job {
    cairn_rag *r;
    const cairn_rag_query *q;
    int depth, n;
    uint64_t *ids;
    float *scores;
    int rc;
    double secs;
    cairn_error err;
} lex_job;

static void *lex_run(void *arg)
{
    lex_job *j = arg;
    int64_t t0 = cairn_now_ns();
    pthread_rwlock_rdlock(&j->r->lock);
    j->rc = cairn_lex_search(j->r->lex, j->q->text, strlen(j->q->text), j->q->filters,
                             j->q->n_filters, j->depth, j->ids, j->scores, &j->n, &j->err);
    pthread_rwlock_unlock(&j->r->lock);
    j->secs = (double)(cairn_now_ns() - t0) / 1e9;
    return NULL;
}

/*
 * One search. With embed (cairn_rag_retrieve) the query text is embedded into it first, for the
 * modes that need it, and in hybrid mode the lexical list runs on a helper thread meanwhile
 * (it needs no embedding); *embed_s gets the embedding time. The read lock is taken per list
 * and again to copy the passages out, never held while waiting for the helper.
 */
static int search(cairn_rag *r, const cairn_rag_query *qin, float *embed, double *embed_s,
                  cairn_rag_hit *hits, int *n_hits, cairn_rag_search_stats *st, cairn_error *err)
{
    *n_hits = 0;
    cairn_rag_search_stats local;
    if (!st) st = &local;
    memset(st, 0, sizeof *st);
    cairn_rag_query qv = *qin;
    const cairn_rag_query *q = &qv;
    int k = q->k;
    if (k < 1 || k > CAIRN_TIER_MAX_K)
        return cairn_errorf(err, CAIRN_ERANGE, "k: %d is outside 1..%d", k, CAIRN_TIER_MAX_K);
    if (q->n_filters > CAIRN_LEX_MAX_FILTERS)
        return cairn_errorf(err, CAIRN_ERANGE, "filter: at most %d keys, got %zu",
                            CAIRN_LEX_MAX_FILTERS, q->n_filters);
    bool dense = q->mode != CAIRN_SEARCH_LEXICAL, lexical = q->mode != CAIRN_SEARCH_DENSE;
    if (dense && !q->q && !(embed && q->text))
        return cairn_errorf(err, CAIRN_EINVAL, "%s search needs the query's embedding",
                            cairn_search_mode_name(q->mode));
    if (lexical && !q->text)
        return cairn_errorf(err, CAIRN_EINVAL, "%s search needs the query's text",
                            cairn_search_mode_name(q->mode));
    /* hybrid takes `depth` from each list (at least k) before fusing */
    int depth = k;
    if (q->mode == CAIRN_SEARCH_HYBRID && r->p.fuse.depth > depth) depth = r->p.fuse.depth;
    if (depth > CAIRN_TIER_MAX_K) depth = CAIRN_TIER_MAX_K;
    uint64_t dids[CAIRN_TIER_MAX_K], lids[CAIRN_TIER_MAX_K];
    float dsc[CAIRN_TIER_MAX_K], lsc[CAIRN_TIER_MAX_K];
    cairn_fused fused[CAIRN_TIER_MAX_K];
    int nd = 0, nf = 0, rc = 0;
    lex_job lj = {.r = r, .q = q, .depth = depth, .ids = lids, .scores = lsc};
    pthread_t helper;
    bool threaded = false;
    int64_t t0 = cairn_now_ns();
    if (lexical && dense && embed)
        threaded = pthread_create(&helper, NULL, lex_run, &lj) == 0;
    double emb = 0;
    if (embed && dense) {
        int64_t te = cairn_now_ns();
        rc = cairn_rag_embed(r, q->text, embed, err);
        qv.q = embed;
        emb = (double)(cairn_now_ns() - te) / 1e9;
        if (embed_s) *embed_s = emb;
    }
    int64_t t1 = cairn_now_ns();
    if (!rc && dense) {
        pthread_rwlock_rdlock(&r->lock);
        rc = dense_list(r, q, depth, dids, dsc, &nd, err);
        pthread_rwlock_unlock(&r->lock);
    }
    st->dense_s = dense ? (double)(cairn_now_ns() - t1) / 1e9 : 0.0;
    if (threaded) pthread_join(helper, NULL);
    else if (lexical && !rc) lex_run(&lj);
    if (!rc && lexical && lj.rc) {
        rc = lj.rc;
        if (err) *err = lj.err;
    }
    st->lexical_s = lexical ? lj.secs : 0.0; /* a list not asked took no time */
    int64_t t2 = cairn_now_ns();
    int nl = lj.n;
    if (!rc) {
        if (q->mode == CAIRN_SEARCH_HYBRID) {
            float ldense[CAIRN_TIER_MAX_K];
            bool fill = r->p.fuse.method == CAIRN_FUSE_CONVEX && r->p.fuse.fill;
            if (fill) {
                pthread_rwlock_rdlock(&r->lock);
                dense_scores_locked(r, q->q, lids, nl, ldense);
                pthread_rwlock_unlock(&r->lock);
            }
            nf = cairn_fuse(dids, dsc, nd, lids, lsc, fill ? ldense : NULL, nl, &r->p.fuse,
                            fused, k);
        } else {
            const uint64_t *ids = dense ? dids : lids;
            const float *sc = dense ? dsc : lsc;
            nf = dense ? nd : nl;
            for (int i = 0; i < nf; i++)
                fused[i] = (cairn_fused){.id = ids[i],
                                         .score = sc[i],
                                         .dense_rank = dense ? i + 1 : 0,
                                         .lex_rank = dense ? 0 : i + 1,
                                         .from = dense ? CAIRN_FUSE_DENSE : CAIRN_FUSE_LEXICAL};
        }
    }
    pthread_rwlock_rdlock(&r->lock);
    for (int i = 0; !rc && i < nf && i < k; i++) {
        cairn_doc d;
        /* a passage deleted since its list was made is left out */
        if (cairn_docstore_get(r->ds, fused[i].id, &d, NULL) != 0 || d.deleted) continue;
        cairn_rag_hit *h = &hits[*n_hits];
        h->id = d.id;
        h->score = fused[i].score;
        h->from = fused[i].from;
        h->dense_rank = fused[i].dense_rank;
        h->lex_rank = fused[i].lex_rank;
        h->text = dupn(d.text, d.text_len);
        h->key = dupn(d.key, d.key_len);
        h->title = dupn(d.title, d.title_len);
        h->meta = dupn(d.meta, d.meta_len);
        (*n_hits)++;
        if (!h->text || !h->key || !h->title || !h->meta)
            rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    }
    pthread_rwlock_unlock(&r->lock);
    int64_t t3 = cairn_now_ns();
    st->fuse_s = (double)(t3 - t2) / 1e9;
    st->n_dense = nd;
    st->n_lexical = nl;
    if (rc) {
        cairn_rag_hits_free(hits, *n_hits);
        *n_hits = 0;
        return rc;
    }
    /* the search's own time: what the caller waited beyond the query's embedding */
    cairn_histogram_observe(r->h_mode[q->mode], (double)(t3 - t0) / 1e9 - emb);
    for (int i = 0; i < *n_hits; i++)
        if (hits[i].from >= 1 && hits[i].from <= 3) cairn_counter_inc(r->c_from[hits[i].from - 1]);
    return 0;
}

int cairn_rag_query_run(cairn_rag *r, const cairn_rag_query *q, cairn_rag_hit *hits, int *n_hits,
                        cairn_rag_search_stats *st, cairn_error *err)
{
    return search(r, q, NULL, NULL, hits, n_hits, st, err);
}

int cairn_rag_retrieve(cairn_rag *r, const cairn_rag_query *q, float *embedding, double *embed_s,
                       cairn_rag_hit *hits, int *n_hits, cairn_rag_search_stats *st,
                       cairn_error *err)
{
    if (embed_s) *embed_s = 0;
    return search(r, q, embedding, embed_s, hits, n_hits, st, err);
}

int cairn_rag_search(cairn_rag *r, const float *q, int k, int nprobe, cairn_rag_hit *hits,
                     int *n_hits, cairn_error *err)
{
    cairn_rag_query rq = {.mode = CAIRN_SEARCH_DENSE, .q = q, .k = k, .nprobe = nprobe};
    return cairn_rag_query_run(r, &rq, hits, n_hits, NULL, err);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int cairn_rag_index_ids(cairn_rag *r, uint64_t **dense, size_t *n_dense, uint64_t **lexical,
                        size_t *n_lexical, cairn_error *err)
{
    *dense = *lexical = NULL;
    *n_dense = *n_lexical = 0;
    pthread_rwlock_rdlock(&r->lock);
    size_t total = r->ivf ? cairn_ivf_count(r->ivf) : 0, n = 0;
    uint64_t *d = total ? malloc(total * sizeof *d) : NULL;
    int rc = total && !d ? cairn_errorf(err, CAIRN_ENOMEM, "out of memory") : 0;
    for (size_t l = 0; !rc && total && l < cairn_ivf_nlist(r->ivf); l++) {
        const float *v;
        const int64_t *ids;
        size_t m = 0;
        rc = cairn_ivf_list(r->ivf, l, &v, &ids, &m, err);
        for (size_t i = 0; !rc && i < m && n < total; i++) d[n++] = (uint64_t)ids[i];
    }
    if (!rc) rc = cairn_lex_ids(r->lex, lexical, n_lexical, err);
    pthread_rwlock_unlock(&r->lock);
    if (rc) {
        free(d);
        return rc;
    }
    if (n) qsort(d, n, sizeof *d, cmp_u64);
    *dense = d;
    *n_dense = n;
    return 0;
}

/* ---- The pipeline ------------------------------------------------------------------------- */

cairn_rag_query cairn_rag_query_of(const cairn_api_rag *o, const char *text, const float *q,
                                   cairn_lex_filter *filters)
{
    for (size_t i = 0; i < o->n_filters; i++)
        filters[i] = (cairn_lex_filter){.key = o->fkey[i], .value = o->fval[i]};
    return (cairn_rag_query){.mode = o->search,
                             .text = text,
                             .q = o->search == CAIRN_SEARCH_LEXICAL ? NULL : q,
                             .k = o->k,
                             .nprobe = o->nprobe,
                             .filters = filters,
                             .n_filters = o->n_filters};
}

json_t *cairn_rag_hits_json(const cairn_rag_hit *h, int n)
{
    json_t *arr = json_array();
    for (int i = 0; arr && i < n; i++) {
        json_t *meta = json_loads(h[i].meta, 0, NULL);
        json_t *o = json_pack("{s:I,s:f,s:o,s:s,s:o,s:s,s:o,s:o}", "id", (json_int_t)h[i].id,
                              "score", (double)h[i].score, "text",
                              cairn_json_text(h[i].text, strlen(h[i].text)), "key", h[i].key,
                              "metadata", meta ? meta : json_object(), "retrieved_by",
                              cairn_fuse_from_name(h[i].from), "dense_rank",
                              h[i].dense_rank ? json_integer(h[i].dense_rank) : json_null(),
                              "lexical_rank",
                              h[i].lex_rank ? json_integer(h[i].lex_rank) : json_null());
        json_array_append_new(arr, o);
    }
    return arr;
}

/* A generation run to its end on the calling thread: the pre-retrieval step, the benchmark. */
typedef struct sync_gen {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    const char *error;
    cairn_strbuf text;
} sync_gen;

static int sync_on_text(void *user, const char *text, size_t len)
{
    cairn_strbuf_append(&((sync_gen *)user)->text, text, len);
    return 0;
}

static void sync_on_done(void *user, const cairn_gen_result *r)
{
    sync_gen *s = user;
    pthread_mutex_lock(&s->mu);
    s->done = true;
    s->error = r->error;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

char *cairn_rag_generate(cairn_workers *w, const char *prompt, size_t len, int tok_flags,
                         int max_tokens, const char *const *stop, int n_stop, cairn_error *err)
{
    sync_gen s = {.done = false};
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    cairn_gen_request gr = {
        .prompt = prompt,
        .prompt_len = len,
        .tok_flags = tok_flags,
        .max_tokens = max_tokens,
        .sample = cairn_sample_greedy_params(),
        .stop = stop,
        .n_stop = n_stop,
        .on_text = sync_on_text,
        .on_done = sync_on_done,
        .user = &s,
    };
    int rc = cairn_workers_submit(w, &gr, err);
    char *out = NULL;
    if (!rc) {
        pthread_mutex_lock(&s.mu);
        while (!s.done) pthread_cond_wait(&s.cv, &s.mu);
        pthread_mutex_unlock(&s.mu);
        if (s.error) cairn_errorf(err, CAIRN_ECANCELED, "generation: %s", s.error);
        else out = cairn_strbuf_take(&s.text, NULL);
        if (!out && !s.error) cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    }
    cairn_strbuf_free(&s.text);
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
    return out;
}

/* Tokens the pre-retrieval step generates at most. */
#define PRE_TOKENS_HYDE 64
#define PRE_TOKENS_REWRITE 24

/* Runs the rewrite/HyDE generation for question; the text (malloc'ed) or NULL with err. */
static char *pre_generate(cairn_workers *w, cairn_rag_mode mode, const char *question,
                          cairn_error *err)
{
    char *user = cairn_rag_pre_prompt(mode, question);
    if (!user) {
        cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        return NULL;
    }
    cairn_chat_msg m = {.role = "user", .content = user};
    size_t len = 0;
    char *prompt = cairn_chat_render_alloc(cairn_workers_chat_template(w), &m, 1, true, &len, err);
    free(user);
    if (!prompt) return NULL;
    static const char *const stops[] = {"\n\n"};
    char *out = cairn_rag_generate(w, prompt, len, CAIRN_TOK_ADD_SPECIAL | CAIRN_TOK_PARSE_SPECIAL,
                                   mode == CAIRN_RAG_HYDE ? PRE_TOKENS_HYDE : PRE_TOKENS_REWRITE,
                                   stops, 1, err);
    free(prompt);
    if (!out) cairn_error_prefix(err, "pre-retrieval");
    return out;
}

static double since(int64_t t0) { return (double)(cairn_now_ns() - t0) / 1e9; }

void cairn_rag_result_free(cairn_rag_result *res)
{
    if (!res) return;
    cairn_rag_hits_free(res->hits, res->n_hits);
    free(res->hits);
    free(res->pre_text);
    cairn_rag_prompt_free(&res->prompt);
    memset(res, 0, sizeof *res);
}

int cairn_rag_pipeline(cairn_rag *r, const cairn_rag_ask *ask, cairn_rag_result *out,
                       cairn_error *err)
{
    memset(out, 0, sizeof *out);
    const cairn_api_rag *o = ask->opts;
    int dim = r->dim;
    float *q = malloc(2 * (size_t)dim * sizeof *q);
    out->hits = calloc((size_t)o->k, sizeof *out->hits);
    int rc = q && out->hits ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    /* The question: the last user message of a chat, the prompt of /v1/rag. */
    const char *question = ask->question;
    for (size_t i = 0; i < ask->n_msgs; i++)
        if (!strcmp(ask->msgs[i].role, "user")) question = ask->msgs[i].content;
    if (!rc && !question)
        rc = cairn_errorf(err, CAIRN_EINVAL, "messages: no user message to answer");

    bool dense = o->search != CAIRN_SEARCH_LEXICAL;
    int64_t t0 = cairn_now_ns();
    if (!rc && dense) rc = cairn_rag_embed(r, question, q, err);
    out->embed_s = since(t0);
    if (!rc && dense) {
        /* The prefetch overlaps the pre-retrieval generation: its budget is what the fast tier
         * can copy in the predicted time of that generation (a prompt of about the question's
         * length in tokens, at ~4 bytes a token, plus the template's ~48; pre_generate's
         * max_tokens). No pre-retrieval step: the fixed budget. */
        double pred = 0;
        if (o->mode != CAIRN_RAG_NONE && ask->workers)
            pred = cairn_workers_predict_generation(
                ask->workers, 48 + (int)(strlen(question) / 4),
                o->mode == CAIRN_RAG_HYDE ? PRE_TOKENS_HYDE : PRE_TOKENS_REWRITE);
        cairn_rag_prefetch(r, q, pred);
    }
    int64_t t1 = cairn_now_ns();
    float *q1 = q;
    if (!rc && o->mode != CAIRN_RAG_NONE) {
        out->pre_text = pre_generate(ask->workers, o->mode, question, err);
        if (!out->pre_text) rc = CAIRN_ECANCELED;
        /* q1 = normalised mean of the question's and the generated text's embeddings: HyDE
         * (Gao et al. 2022, "Precise Zero-Shot Dense Retrieval without Relevance Labels")
         * averages the query with its hypothetical documents; a rewrite is treated alike, so a
         * poor generation cannot lose the question. */
        if (!rc && out->pre_text[0] && dense) {
            q1 = q + dim;
            rc = cairn_rag_embed(r, out->pre_text, q1, err);
            double norm = 0;
            for (int i = 0; !rc && i < dim; i++) {
                q1[i] = 0.5f * (q1[i] + q[i]);
                norm += (double)q1[i] * q1[i];
            }
            for (int i = 0; !rc && norm > 0 && i < dim; i++) q1[i] /= (float)sqrt(norm);
        }
    }
    out->pre_s = since(t1);
    int64_t t2 = cairn_now_ns();
    /* the lexical list searches the question and the generated text together */
    char *text = NULL;
    const char *pre = out->pre_text;
    if (!rc && pre && pre[0] && (text = malloc(strlen(question) + strlen(pre) + 2)))
        sprintf(text, "%s\n%s", question, pre);
    cairn_lex_filter filters[CAIRN_API_MAX_FILTERS];
    cairn_rag_query rq = cairn_rag_query_of(o, text ? text : question, q1, filters);
    if (!rc) rc = cairn_rag_query_run(r, &rq, out->hits, &out->n_hits, &out->ss, err);
    free(text);
    out->search_s = since(t2);
    free(q);
    /* An answer recommending a package opens with "Use": SmolLM2-135M, given the form by the
     * worked example but not the first word, named the package of the passages in 12 of the 42
     * train questions, 21 with it (docs/BENCHMARKS.md). Only for packages: an answer from a
     * user's documents has no package to recommend. */
    const char *prefix = ask->answer_prefix;
    bool no_prefix = ask->no_prefix || o->no_prefix;
    if (!rc && !prefix && !no_prefix && out->n_hits > 0) {
        json_t *m = json_loads(out->hits[0].meta, 0, NULL);
        if (json_is_string(json_object_get(m, "package"))) prefix = cairn_rag_package_prefix;
        json_decref(m);
    }
    if (no_prefix) prefix = NULL;
    if (!rc) {
        /* The answer keeps max_tokens of the context (at most half of it) for itself. */
        int n_ctx = ask->workers ? cairn_workers_n_ctx(ask->workers) : 0;
        int reserve = ask->max_tokens < n_ctx / 2 ? ask->max_tokens : n_ctx / 2;
        cairn_rag_prompt_params pp = {
            .tmpl = ask->plain || !ask->workers ? NULL : cairn_workers_chat_template(ask->workers),
            .tok = ask->workers ? cairn_workers_tokenizer(ask->workers) : NULL,
            .budget = n_ctx - reserve,
            .passage_tokens = ask->passage_tokens,
            .answer_prefix = prefix,
            .prefix_with_passages = prefix == cairn_rag_package_prefix,
            .system = ask->system,
            .example = !ask->no_example,
            .best_last = !ask->best_first,
        };
        rc = cairn_rag_prompt_build(question, ask->msgs, ask->n_msgs, out->hits, out->n_hits, &pp,
                                    &out->prompt, err);
    }
    if (rc) cairn_rag_result_free(out);
    return rc;
}

/* ---- Prompts ---------------------------------------------------------------------------------- */

char *cairn_rag_pre_prompt(cairn_rag_mode mode, const char *question)
{
    cairn_strbuf sb = {0};
    if (mode == CAIRN_RAG_HYDE)
        cairn_strbuf_printf(&sb, "Write a short passage that answers this question.\n\n"
                                 "Question: %s", question);
    else
        cairn_strbuf_printf(&sb, "Rewrite this question as a short search query. Reply with the "
                                 "query only.\n\nQuestion: %s", question);
    return cairn_strbuf_take(&sb, NULL);
}

/* ---- The answer's prompt ------------------------------------------------------------------- */

const char *const cairn_rag_package_prefix = "Use";

const char *const cairn_rag_default_system =
    "You answer questions from the numbered passages the user gives you. Each passage begins "
    "with its title; for software the title starts with the package name. Answer in one or two "
    "sentences: first name the package (or document) that answers the question, then say what "
    "it does, and cite the passage as [1], [2], ... If no passage answers the question, say so.";

/*
 * A worked example shown before the question when cairn_rag_prompt_params.example is set
 * (few-shot prompting, Brown et al. 2020, "Language Models are Few-Shot Learners"): a made-up
 * question over made-up packages (so it names nothing of a real corpus) and an answer of the
 * form the system prompt asks for. With a chat template it is one earlier user turn and the
 * assistant's reply; plain, the same text before the real passages.
 */
#define EXAMPLE_P1                                                                                 \
    "[1] frobview: viewer for frob image files\n"                                                 \
    "frobview shows frob images in a window, with zoom and a slideshow.\n\n"
#define EXAMPLE_P2                                                                                 \
    "[2] libfrob-dev: frob image library (development files)\n"                                   \
    "This package contains the header files of libfrob.\n\n"
#define EXAMPLE_QUESTION "Question: How can I look at my frob pictures?"
/* in the order the real passages are shown: best first, or best last */
static const char *const example_user[2] = {
    "Passages:\n\n" EXAMPLE_P1 EXAMPLE_P2 EXAMPLE_QUESTION,
    "Passages:\n\n" EXAMPLE_P2 EXAMPLE_P1 EXAMPLE_QUESTION,
};
static const char example_answer[] =
    "Use frobview: it shows frob images in a window, with zoom and a slideshow [1].";

#define MIN_PASSAGE_TOKENS 32 /* fewer left per passage: passages at the end are left out */

/* Tokens of s[0..len) (flags: CAIRN_TOK_*), or -1 when the tokenizer failed. */
static int count_tokens(const cairn_tok *t, const char *s, size_t len, int flags)
{
    cairn_error e = {0};
    int n = cairn_tok_encode(t, s, len, NULL, 0, flags, &e);
    if (n == CAIRN_TOK_ENCODE_FAILED) return -1;
    return n < 0 ? -n : n;
}

/* The longest prefix of s[0..len), ending on a character boundary, of at most max tokens; cut
 * back to the last space when one is near the end, so that no word is halved. */
static size_t prefix_within(const cairn_tok *t, const char *s, size_t len, int max)
{
    size_t lo = 0, hi = len; /* count(lo) <= max; the answer is in [lo, hi] */
    while (lo < hi) {
        size_t mid = lo + (hi - lo + 1) / 2;
        while (mid > lo && mid < len && ((unsigned char)s[mid] & 0xC0) == 0x80) mid--;
        if (mid == lo) break;
        int c = count_tokens(t, s, mid, 0);
        if (c >= 0 && c <= max) lo = mid;
        else hi = mid - 1;
    }
    size_t cut = lo;
    while (cut > lo * 5 / 6 && cut > 0 && s[cut - 1] != ' ' && s[cut - 1] != '\n') cut--;
    return cut > lo * 5 / 6 && cut > 0 ? cut : lo;
}

/* The answer's opening for a prompt of n passages, or NULL. */
static const char *opening(const cairn_rag_prompt_params *p, int n)
{
    if (!p->answer_prefix || !p->answer_prefix[0] || (p->prefix_with_passages && n == 0))
        return NULL;
    return p->answer_prefix;
}

/* The question's turn: the passages hits[0..n) (each text cut to lens[i] bytes, marked when
 * cut) and the question; plain, with the system text first and "Answer:" last. */
static char *user_turn(const char *question, const cairn_rag_hit *hits, const size_t *lens,
                       int n, const char *system, bool plain, const cairn_rag_prompt_params *p)
{
    cairn_strbuf sb = {0};
    const char *prefix = opening(p, n);
    if (plain) cairn_strbuf_printf(&sb, "%s\n\n", system);
    if (plain && p->example)
        cairn_strbuf_printf(&sb, "%s\nAnswer: %s\n\n", example_user[p->best_last],
                            example_answer);
    cairn_strbuf_puts(&sb, n ? "Passages:\n\n" : "No passage was found.\n\n");
    for (int j = 0; j < n; j++) {
        int i = p->best_last ? n - 1 - j : j; /* numbered by rank whatever the order */
        const cairn_rag_hit *h = &hits[i];
        size_t full = strlen(h->text);
        cairn_strbuf_printf(&sb, "[%d] %s\n", i + 1, h->title && h->title[0] ? h->title : h->key);
        cairn_strbuf_append(&sb, h->text, lens[i]);
        cairn_strbuf_puts(&sb, lens[i] < full ? " [...]\n\n" : "\n\n");
    }
    cairn_strbuf_printf(&sb, "Question: %s", question);
    if (plain) cairn_strbuf_puts(&sb, "\nAnswer:");
    if (plain && prefix && prefix[0]) cairn_strbuf_printf(&sb, " %s", prefix);
    return cairn_strbuf_take(&sb, NULL);
}

void cairn_rag_prompt_free(cairn_rag_prompt *pr)
{
    if (!pr) return;
    free(pr->text);
    free(pr->msgs);
    free(pr->strs[0]);
    free(pr->strs[1]);
    memset(pr, 0, sizeof *pr);
}

/* Fills out's text (and messages) from the passages at lens[0..n). */
static int assemble(const char *question, const cairn_chat_msg *msgs, size_t n_msgs,
                    size_t last_user, const cairn_rag_hit *hits, const size_t *lens, int n,
                    const cairn_rag_prompt_params *p, cairn_rag_prompt *out, cairn_error *err)
{
    const char *system = p->system ? p->system : cairn_rag_default_system;
    free(out->text), free(out->msgs), free(out->strs[0]), free(out->strs[1]);
    out->text = NULL, out->msgs = NULL, out->strs[0] = out->strs[1] = NULL, out->n_msgs = 0;
    char *turn = user_turn(question, hits, lens, n, system, !p->tmpl, p);
    if (!turn) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    if (!p->tmpl) {
        out->text = turn;
        out->len = strlen(turn);
        out->tok_flags = CAIRN_TOK_ADD_SPECIAL;
        return 0;
    }
    out->strs[1] = turn;
    /* [system] + the chat's turns (its own system message merged after ours) */
    bool own_system = n_msgs && !strcmp(msgs[0].role, "system");
    size_t ex = p->example ? 2 : 0; /* the worked example's two turns */
    size_t n_out = 1 + ex + (n_msgs ? n_msgs - own_system : 1);
    out->msgs = calloc(n_out, sizeof *out->msgs);
    if (!out->msgs) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    out->msgs[0] = (cairn_chat_msg){.role = "system", .content = system};
    if (ex) {
        out->msgs[1] = (cairn_chat_msg){.role = "user", .content = example_user[p->best_last]};
        out->msgs[2] = (cairn_chat_msg){.role = "assistant", .content = example_answer};
    }
    if (own_system) {
        cairn_strbuf sb = {0};
        cairn_strbuf_printf(&sb, "%s\n\n%s", system, msgs[0].content);
        out->strs[0] = cairn_strbuf_take(&sb, NULL);
        if (!out->strs[0]) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        out->msgs[0].content = out->strs[0];
    }
    if (!n_msgs) out->msgs[1 + ex] = (cairn_chat_msg){.role = "user", .content = turn};
    for (size_t i = own_system; i < n_msgs; i++) {
        out->msgs[1 + ex + i - own_system] = msgs[i];
        if (i == last_user) out->msgs[1 + ex + i - own_system].content = turn;
    }
    out->n_msgs = n_out;
    out->text = cairn_chat_render_alloc(p->tmpl, out->msgs, n_out, true, &out->len, err);
    if (!out->text) return cairn_error_prefix(err, "messages");
    const char *prefix = opening(p, n);
    if (prefix) {
        size_t len = strlen(prefix);
        char *t = realloc(out->text, out->len + len + 1);
        if (!t) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        memcpy(t + out->len, prefix, len + 1);
        out->text = t;
        out->len += len;
    }
    out->tok_flags = CAIRN_TOK_ADD_SPECIAL | CAIRN_TOK_PARSE_SPECIAL;
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int cairn_rag_prompt_build(const char *question, const cairn_chat_msg *msgs, size_t n_msgs,
                           const cairn_rag_hit *hits, int n, const cairn_rag_prompt_params *p,
                           cairn_rag_prompt *out, cairn_error *err)
{
    memset(out, 0, sizeof *out);
    size_t last_user = 0;
    for (size_t i = 0; i < n_msgs; i++)
        if (!strcmp(msgs[i].role, "user")) question = msgs[i].content, last_user = i;
    if (!question) return cairn_errorf(err, CAIRN_EINVAL, "messages: no user message to answer");
    size_t *lens = calloc((size_t)n + 1, sizeof *lens);
    int *toks = calloc((size_t)n + 1, sizeof *toks);
    int *sorted = calloc((size_t)n + 1, sizeof *sorted);
    size_t *capped = calloc((size_t)n + 1, sizeof *capped);
    int rc = lens && toks && sorted && capped ? 0
                                              : cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < n; i++) {
        lens[i] = strlen(hits[i].text);
        if (p->tok && p->passage_tokens > 0 &&
            count_tokens(p->tok, hits[i].text, lens[i], 0) > p->passage_tokens) {
            lens[i] = prefix_within(p->tok, hits[i].text, lens[i], p->passage_tokens);
            out->n_truncated++;
        }
    }
    int use = n;
    if (!rc) rc = assemble(question, msgs, n_msgs, last_user, hits, lens, use, p, out, err);
    int total = !rc && p->tok ? count_tokens(p->tok, out->text, out->len, out->tok_flags) : 0;
    if (!rc && total > p->budget) {
        /* What the prompt takes without the passages' texts; the rest is shared among them,
         * at least MIN_PASSAGE_TOKENS each: passages at the end are left out until it is. */
        size_t *zero = calloc((size_t)n + 1, sizeof *zero);
        if (!zero) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        int fixed = 0, avail = 0;
        for (use = n + 1; !rc && use > 0;) {
            use--;
            rc = assemble(question, msgs, n_msgs, last_user, hits, zero, use, p, out, err);
            fixed = rc ? 0 : count_tokens(p->tok, out->text, out->len, out->tok_flags);
            avail = p->budget - fixed;
            if (avail >= MIN_PASSAGE_TOKENS * use) break;
        }
        free(zero);
        if (!rc && avail < 0)
            rc = cairn_errorf(err, CAIRN_ELIMIT,
                              "the question and the instructions take %d tokens; the context "
                              "leaves %d for the prompt",
                              fixed, p->budget);
        for (int i = 0; !rc && i < use; i++) {
            capped[i] = lens[i]; /* what the passage cap left */
            sorted[i] = toks[i] = count_tokens(p->tok, hits[i].text, lens[i], 0);
        }
        /* Water-filling: the largest cap c with sum(min(t_i, c)) <= avail; then, should the
         * joins tokenize longer than counted apart, lower c until the whole prompt fits. */
        qsort(sorted, (size_t)use, sizeof *sorted, cmp_int);
        int cap = INT32_MAX, rem = avail;
        for (int j = 0; j < use; j++) {
            int share = rem / (use - j);
            if (sorted[j] > share) {
                cap = share;
                break;
            }
            rem -= sorted[j];
        }
        for (int round = 0; !rc; round++) {
            out->n_truncated = 0;
            for (int i = 0; i < use; i++) {
                size_t full = strlen(hits[i].text);
                lens[i] = capped[i];
                if (toks[i] > cap) lens[i] = prefix_within(p->tok, hits[i].text, lens[i], cap);
                out->n_truncated += lens[i] < full;
            }
            rc = assemble(question, msgs, n_msgs, last_user, hits, lens, use, p, out, err);
            total = rc ? 0 : count_tokens(p->tok, out->text, out->len, out->tok_flags);
            if (rc || total <= p->budget) break;
            if (round == 8 || cap <= 1) {
                rc = cairn_errorf(err, CAIRN_ELIMIT, "the passages do not fit the context");
                break;
            }
            int over = (total - p->budget + use - 1) / (use ? use : 1);
            if (cap == INT32_MAX) {
                for (int i = 0; i < use; i++) cap = i == 0 || toks[i] > cap ? toks[i] : cap;
            }
            cap -= over > cap / 10 ? over : cap / 10 + 1;
        }
    }
    if (!rc) {
        out->n_passages = use;
        out->tokens = total;
        out->answer_prefix = opening(p, use);
    } else {
        cairn_rag_prompt_free(out);
    }
    free(lens);
    free(toks);
    free(sorted);
    free(capped);
    return rc;
}
