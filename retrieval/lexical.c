/*
 * retrieval/lexical.c — the FTS5 lexical index (see lexical.h).
 *
 * Schema (lexical.db):
 *   lex_info(k PRIMARY KEY, v)   "format" = 1, "uid" = the docstore's uid in decimal
 *   lex USING fts5(title, body)  rowid = passage id; unicode61 + Porter stemming
 *   lex_kv(id, k, v)             one row per top-level scalar of a passage's metadata
 *   lex_vocab                    fts5vocab over lex: documents per (stemmed) term
 * WAL journal with synchronous=NORMAL: a crash may lose the last transactions but never leaves
 * the file inconsistent, and the caller rebuilds the index whenever its count disagrees with
 * the docstore's.
 */
#define CAIRN_LOG_TAG "lexical"
#include "retrieval/lexical.h"

#include "common/log.h"
#include "common/utf8.h"

#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LEX_FORMAT "1"

struct cairn_lex {
    sqlite3 *db;
    pthread_mutex_t mu; /* guards everything below */
    sqlite3_stmt *ins, *ins_kv, *del, *del_kv, *count, *search, *df;
    fts5_tokenizer tok; /* the table's tokenizer, to stem query words as FTS5 will */
    Fts5Tokenizer *tk;
    size_t rows; /* passages indexed, refreshed after each write */
    cairn_lex_params p;
};

cairn_lex_params cairn_lex_default_params(void)
{
    /* fitted on the train questions (docs/RETRIEVAL.md) */
    return (cairn_lex_params){.w_title = 32.0, .w_body = 1.0, .common_df = 0.05};
}

/* The FTS5 extension API of db (SQLite's documented way: SELECT fts5(?) with a pointer). */
static fts5_api *fts5_api_of(sqlite3 *db)
{
    fts5_api *api = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT fts5(?1)", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_pointer(st, 1, (void *)&api, "fts5_api_ptr", NULL);
        sqlite3_step(st);
    }
    sqlite3_finalize(st);
    return api;
}

static void refresh_rows(cairn_lex *lx)
{
    lx->rows = 0;
    if (sqlite3_step(lx->count) == SQLITE_ROW)
        lx->rows = (size_t)sqlite3_column_int64(lx->count, 0);
    sqlite3_reset(lx->count);
}

static int sql_error(cairn_lex *lx, cairn_error *err, const char *what)
{
    return cairn_errorf(err, CAIRN_EIO, "lexical index: %s: %s", what, sqlite3_errmsg(lx->db));
}

static int exec(cairn_lex *lx, const char *sql, cairn_error *err)
{
    char *msg = NULL;
    if (sqlite3_exec(lx->db, sql, NULL, NULL, &msg) == SQLITE_OK) return 0;
    int rc = cairn_errorf(err, CAIRN_EIO, "lexical index: %s", msg ? msg : "SQL failed");
    sqlite3_free(msg);
    return rc;
}

static int prepare(cairn_lex *lx, const char *sql, sqlite3_stmt **st, cairn_error *err)
{
    if (sqlite3_prepare_v3(lx->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) != SQLITE_OK)
        return sql_error(lx, err, "prepare");
    return 0;
}

/* The value of lex_info key k into buf ("" when absent). */
static void info_get(cairn_lex *lx, const char *k, char *buf, size_t cap)
{
    sqlite3_stmt *st = NULL;
    buf[0] = '\0';
    if (sqlite3_prepare_v2(lx->db, "SELECT v FROM lex_info WHERE k = ?1", -1, &st, NULL) !=
        SQLITE_OK)
        return;
    sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(buf, cap, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

static int info_set(cairn_lex *lx, const char *k, const char *v, cairn_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(lx->db, "INSERT OR REPLACE INTO lex_info(k, v) VALUES (?1, ?2)", -1,
                           &st, NULL) != SQLITE_OK)
        return sql_error(lx, err, "lex_info");
    sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, v, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sql_error(lx, err, "lex_info");
    sqlite3_finalize(st);
    return rc;
}

static const char schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    "CREATE TABLE IF NOT EXISTS lex_info(k TEXT PRIMARY KEY, v TEXT NOT NULL);"
    "CREATE VIRTUAL TABLE IF NOT EXISTS lex USING fts5(title, body,"
    " tokenize = 'porter unicode61 remove_diacritics 2');"
    "CREATE TABLE IF NOT EXISTS lex_kv(id INTEGER NOT NULL, k TEXT NOT NULL, v TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS lex_kv_kv ON lex_kv(k, v, id);"
    "CREATE INDEX IF NOT EXISTS lex_kv_id ON lex_kv(id);"
    "CREATE VIRTUAL TABLE IF NOT EXISTS lex_vocab USING fts5vocab(lex, 'row');";

int cairn_lex_open(cairn_lex **out, const char *path, uint64_t uid, const cairn_lex_params *p,
                   cairn_error *err)
{
    *out = NULL;
    cairn_lex_params d = cairn_lex_default_params();
    if (!p) p = &d;
    if (!path) return cairn_errorf(err, CAIRN_EINVAL, "lexical index: no path");
    if (!(p->w_title > 0 && p->w_title <= 1000 && p->w_body > 0 && p->w_body <= 1000))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "lexical index: column weights %g, %g are outside (0, 1000]",
                            p->w_title, p->w_body);
    if (!(p->common_df > 0 && p->common_df <= 1))
        return cairn_errorf(err, CAIRN_EINVAL, "lexical index: common_df %g is outside (0, 1]",
                            p->common_df);
    cairn_lex *lx = calloc(1, sizeof *lx);
    if (!lx) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    lx->p = *p;
    pthread_mutex_init(&lx->mu, NULL);
    int rc = 0;
    if (sqlite3_open_v2(path, &lx->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        rc = cairn_errorf(err, CAIRN_EIO, "lexical index %s: %s", path,
                          lx->db ? sqlite3_errmsg(lx->db) : "out of memory");
        cairn_lex_close(lx);
        return rc;
    }
    sqlite3_busy_timeout(lx->db, 5000);
    rc = exec(lx, schema, err);
    char have_uid[32], want_uid[32], format[16];
    snprintf(want_uid, sizeof want_uid, "%" PRIu64, uid);
    if (!rc) {
        info_get(lx, "uid", have_uid, sizeof have_uid);
        info_get(lx, "format", format, sizeof format);
        if (strcmp(have_uid, want_uid) != 0 || strcmp(format, LEX_FORMAT) != 0) {
            if (have_uid[0])
                CAIRN_LOG_INFO("lexical index belongs to another store: emptied", "path=%s",
                               path);
            rc = exec(lx, "BEGIN; DELETE FROM lex; DELETE FROM lex_kv;", err);
            if (!rc) rc = info_set(lx, "uid", want_uid, err);
            if (!rc) rc = info_set(lx, "format", LEX_FORMAT, err);
            if (!rc) rc = exec(lx, "COMMIT", err);
            else sqlite3_exec(lx->db, "ROLLBACK", NULL, NULL, NULL);
        }
    }
    char sql[256];
    /* The weights are numbers we checked, not user text. bm25() is lower for better matches. */
    snprintf(sql, sizeof sql,
             "SELECT rowid, bm25(lex, %.17g, %.17g) AS s FROM lex WHERE lex MATCH ?1 "
             "ORDER BY s, rowid LIMIT ?2",
             lx->p.w_title, lx->p.w_body);
    if (!rc) rc = prepare(lx, "INSERT OR REPLACE INTO lex(rowid, title, body) VALUES (?1, ?2, ?3)",
                          &lx->ins, err);
    /* Top-level scalars only, as text: the form GET /v1/documents' filters compare with. */
    if (!rc)
        rc = prepare(lx,
                     "INSERT INTO lex_kv(id, k, v) SELECT ?1, key, CASE type"
                     " WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'"
                     " ELSE CAST(value AS TEXT) END FROM json_each(?2)"
                     " WHERE type IN ('true', 'false', 'integer', 'real', 'text')",
                     &lx->ins_kv, err);
    if (!rc) rc = prepare(lx, "DELETE FROM lex WHERE rowid = ?1", &lx->del, err);
    if (!rc) rc = prepare(lx, "DELETE FROM lex_kv WHERE id = ?1", &lx->del_kv, err);
    if (!rc) rc = prepare(lx, "SELECT count(*) FROM lex", &lx->count, err);
    if (!rc) rc = prepare(lx, sql, &lx->search, err);
    if (!rc) rc = prepare(lx, "SELECT doc FROM lex_vocab WHERE term = ?1", &lx->df, err);
    if (!rc) {
        /* the tokenizer the table was made with (the schema above) */
        static const char *const args[] = {"unicode61", "remove_diacritics", "2"};
        fts5_api *api = fts5_api_of(lx->db);
        void *ud = NULL;
        if (!api || api->xFindTokenizer(api, "porter", &ud, &lx->tok) != SQLITE_OK ||
            lx->tok.xCreate(ud, (const char **)args, 3, &lx->tk) != SQLITE_OK)
            rc = cairn_errorf(err, CAIRN_EIO, "lexical index: SQLite's FTS5 porter tokenizer "
                                              "is not available");
    }
    if (!rc) refresh_rows(lx);
    if (rc) {
        cairn_error_prefix(err, "%s", path);
        cairn_lex_close(lx);
        return rc;
    }
    *out = lx;
    return 0;
}

void cairn_lex_close(cairn_lex *lx)
{
    if (!lx) return;
    sqlite3_finalize(lx->ins);
    sqlite3_finalize(lx->ins_kv);
    sqlite3_finalize(lx->del);
    sqlite3_finalize(lx->del_kv);
    sqlite3_finalize(lx->count);
    sqlite3_finalize(lx->search);
    sqlite3_finalize(lx->df);
    if (lx->tk) lx->tok.xDelete(lx->tk);
    if (lx->db && sqlite3_close(lx->db) != SQLITE_OK)
        CAIRN_LOG_WARN("lexical index close failed", "error=%s", sqlite3_errmsg(lx->db));
    pthread_mutex_destroy(&lx->mu);
    free(lx);
}

/* Runs st once to completion and resets it. */
static int step_done(cairn_lex *lx, sqlite3_stmt *st, cairn_error *err, const char *what)
{
    int s = sqlite3_step(st);
    int rc = s == SQLITE_DONE ? 0 : sql_error(lx, err, what);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

static int remove_one(cairn_lex *lx, uint64_t id, cairn_error *err)
{
    sqlite3_bind_int64(lx->del, 1, (sqlite3_int64)id);
    int rc = step_done(lx, lx->del, err, "delete");
    sqlite3_bind_int64(lx->del_kv, 1, (sqlite3_int64)id);
    if (!rc) rc = step_done(lx, lx->del_kv, err, "delete metadata");
    return rc;
}

int cairn_lex_add(cairn_lex *lx, const cairn_lex_doc *docs, size_t n, cairn_error *err)
{
    pthread_mutex_lock(&lx->mu);
    int rc = exec(lx, "BEGIN", err);
    for (size_t i = 0; !rc && i < n; i++) {
        const cairn_lex_doc *d = &docs[i];
        if (d->id > (uint64_t)INT64_MAX) {
            rc = cairn_errorf(err, CAIRN_ERANGE, "lexical index: passage id %" PRIu64
                              " is beyond SQLite's rowids", d->id);
            break;
        }
        /* an id indexed before keeps no stale metadata rows */
        rc = remove_one(lx, d->id, err);
        sqlite3_bind_int64(lx->ins, 1, (sqlite3_int64)d->id);
        sqlite3_bind_text(lx->ins, 2, d->title ? d->title : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(lx->ins, 3, d->body ? d->body : "", -1, SQLITE_STATIC);
        if (!rc) rc = step_done(lx, lx->ins, err, "insert");
        if (!rc && d->meta && *d->meta) {
            sqlite3_bind_int64(lx->ins_kv, 1, (sqlite3_int64)d->id);
            sqlite3_bind_text(lx->ins_kv, 2, d->meta, -1, SQLITE_STATIC);
            if (sqlite3_step(lx->ins_kv) != SQLITE_DONE)
                rc = cairn_errorf(err, CAIRN_EFORMAT,
                                  "lexical index: passage %" PRIu64 ": metadata: %s", d->id,
                                  sqlite3_errmsg(lx->db));
            sqlite3_reset(lx->ins_kv);
            sqlite3_clear_bindings(lx->ins_kv);
        }
    }
    if (!rc) rc = exec(lx, "COMMIT", err);
    if (rc) sqlite3_exec(lx->db, "ROLLBACK", NULL, NULL, NULL);
    refresh_rows(lx);
    pthread_mutex_unlock(&lx->mu);
    return rc;
}

int cairn_lex_delete(cairn_lex *lx, const uint64_t *ids, size_t n, cairn_error *err)
{
    pthread_mutex_lock(&lx->mu);
    int rc = exec(lx, "BEGIN", err);
    for (size_t i = 0; !rc && i < n; i++)
        if (ids[i] <= (uint64_t)INT64_MAX) rc = remove_one(lx, ids[i], err);
    if (!rc) rc = exec(lx, "COMMIT", err);
    if (rc) sqlite3_exec(lx->db, "ROLLBACK", NULL, NULL, NULL);
    refresh_rows(lx);
    pthread_mutex_unlock(&lx->mu);
    return rc;
}

int cairn_lex_clear(cairn_lex *lx, cairn_error *err)
{
    pthread_mutex_lock(&lx->mu);
    int rc = exec(lx, "BEGIN; DELETE FROM lex; DELETE FROM lex_kv; COMMIT;", err);
    if (rc) sqlite3_exec(lx->db, "ROLLBACK", NULL, NULL, NULL);
    refresh_rows(lx);
    pthread_mutex_unlock(&lx->mu);
    return rc;
}

size_t cairn_lex_count(cairn_lex *lx)
{
    pthread_mutex_lock(&lx->mu);
    size_t n = lx->rows;
    pthread_mutex_unlock(&lx->mu);
    return n;
}

int cairn_lex_ids(cairn_lex *lx, uint64_t **ids, size_t *n, cairn_error *err)
{
    *ids = NULL;
    *n = 0;
    size_t total = cairn_lex_count(lx), k = 0;
    if (total == 0) return 0;
    uint64_t *v = malloc(total * sizeof *v);
    if (!v) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    pthread_mutex_lock(&lx->mu);
    sqlite3_stmt *st = NULL;
    int rc = 0, s = SQLITE_DONE;
    if (sqlite3_prepare_v2(lx->db, "SELECT rowid FROM lex ORDER BY rowid", -1, &st, NULL) !=
        SQLITE_OK)
        rc = sql_error(lx, err, "ids");
    while (!rc && (s = sqlite3_step(st)) == SQLITE_ROW && k < total)
        v[k++] = (uint64_t)sqlite3_column_int64(st, 0);
    if (!rc && s != SQLITE_DONE && s != SQLITE_ROW) rc = sql_error(lx, err, "ids");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&lx->mu);
    if (rc) {
        free(v);
        return rc;
    }
    *ids = v;
    *n = k;
    return 0;
}

/* ---- Queries ---------------------------------------------------------------------------- */

/* Common English words that carry no topic: every passage has them, and OR-ing them would
 * make BM25 rank thousands of passages per query for nothing. Sorted for bsearch. */
static const char *const stop_words[] = {
    "a",     "about", "an",    "and",   "any",   "are",   "as",    "at",    "be",    "by",
    "can",   "could", "do",    "does",  "for",   "from",  "get",   "had",   "has",   "have",
    "how",   "i",     "if",    "in",    "into",  "is",    "it",    "its",   "me",    "my",
    "need",  "not",   "of",    "on",    "or",    "other", "should", "so",   "some",  "than",
    "that",  "the",   "their", "them",  "then",  "there", "these", "they",  "this",  "to",
    "use",   "want",  "was",   "way",   "we",    "what",  "when",  "where", "which", "while",
    "who",   "why",   "will",  "with",  "would", "you",   "your",
};

static int cmp_word(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool is_stop(const char *w)
{
    return bsearch(&w, stop_words, sizeof stop_words / sizeof stop_words[0], sizeof stop_words[0],
                   cmp_word) != NULL;
}

#define TERM_MAX 64

/* Splits text into words (lexical.h says which); calls fn for each, lowered, NUL-terminated. */
static void each_word(const char *text, size_t len, void (*fn)(void *, const char *), void *ctx)
{
    char w[TERM_MAX + 4];
    size_t wl = 0, i = 0;
    const unsigned char *s = (const unsigned char *)text;
    while (i <= len) {
        size_t start = i;
        bool word_char = false;
        if (i < len) {
            if (s[i] < 0x80) {
                word_char = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
                            (s[i] >= '0' && s[i] <= '9');
                i++;
            } else {
                bool valid = false;
                cairn_utf8_decode(s, len, &i, &valid);
                word_char = valid;
                if (i == start) i++; /* never stall */
            }
        } else {
            i++; /* the end closes the last word */
        }
        if (word_char) {
            size_t n = i - start;
            if (wl + n <= TERM_MAX) { /* a longer word keeps its first whole characters */
                for (size_t j = 0; j < n; j++) {
                    char c = (char)s[start + j];
                    w[wl++] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
                }
            }
            continue;
        }
        if (wl) {
            w[wl] = '\0';
            fn(ctx, w);
            wl = 0;
        }
    }
}

typedef struct terms {
    char t[CAIRN_LEX_MAX_TERMS][TERM_MAX + 1];
    int n;
    bool keep_stop;
} terms;

static void add_term(void *ctx, const char *w)
{
    terms *ts = ctx;
    if (ts->n == CAIRN_LEX_MAX_TERMS || (!ts->keep_stop && is_stop(w))) return;
    for (int i = 0; i < ts->n; i++)
        if (!strcmp(ts->t[i], w)) return;
    snprintf(ts->t[ts->n++], TERM_MAX + 1, "%s", w);
}

static void collect_terms(const char *text, size_t len, terms *ts)
{
    ts->n = 0;
    ts->keep_stop = false;
    if (text) each_word(text, len, add_term, ts);
    if (ts->n == 0 && text) { /* only stop words: search for them after all */
        ts->keep_stop = true;
        each_word(text, len, add_term, ts);
    }
}

/* Writes the expression of ts into out; title_only[i] (may be NULL) restricts term i to the
 * title column. Returns the number of terms, or -(bytes needed). */
static int write_expr(const terms *ts, const bool *title_only, char *out, size_t cap)
{
    /* Words hold only letters, digits and non-ASCII characters, so a double quote never
     * needs escaping, and nothing outside the quotes is user text. */
    size_t need = 1;
    for (int i = 0; i < ts->n; i++)
        need += strlen(ts->t[i]) + 2 + (i ? 4 : 0) + (title_only && title_only[i] ? 8 : 0);
    if (need > cap || !out) return -(int)need;
    size_t at = 0;
    out[0] = '\0';
    for (int i = 0; i < ts->n; i++)
        at += (size_t)snprintf(out + at, cap - at, "%s%s\"%s\"", i ? " OR " : "",
                               title_only && title_only[i] ? "title : " : "", ts->t[i]);
    return ts->n;
}

int cairn_lex_query(const char *text, size_t len, char *out, size_t cap)
{
    terms ts;
    collect_terms(text, len, &ts);
    return write_expr(&ts, NULL, out, cap);
}

typedef struct stem_ctx {
    char *out;
    size_t cap;
    bool got;
} stem_ctx;

static int on_token(void *ctx, int flags, const char *tok, int n, int start, int end)
{
    (void)flags, (void)start, (void)end;
    stem_ctx *c = ctx;
    if (!c->got && n > 0 && (size_t)n < c->cap) {
        memcpy(c->out, tok, (size_t)n);
        c->out[n] = '\0';
        c->got = true;
    }
    return SQLITE_OK;
}

/* Passages holding word (as FTS5 tokenizes it). Lock held. */
static int64_t doc_freq(cairn_lex *lx, const char *word)
{
    char stem[TERM_MAX * 4 + 8];
    stem_ctx c = {stem, sizeof stem, false};
    lx->tok.xTokenize(lx->tk, &c, FTS5_TOKENIZE_QUERY, word, (int)strlen(word), on_token);
    if (!c.got) return 0;
    int64_t n = 0;
    sqlite3_bind_text(lx->df, 1, stem, -1, SQLITE_STATIC);
    if (sqlite3_step(lx->df) == SQLITE_ROW) n = sqlite3_column_int64(lx->df, 0);
    sqlite3_reset(lx->df);
    sqlite3_clear_bindings(lx->df);
    return n;
}

int cairn_lex_search(cairn_lex *lx, const char *text, size_t len, const cairn_lex_filter *filters,
                     size_t n_filters, int k, uint64_t *ids, float *scores, int *n_out,
                     cairn_error *err)
{
    *n_out = 0;
    if (k < 1) return cairn_errorf(err, CAIRN_ERANGE, "k: %d is below 1", k);
    if (n_filters > CAIRN_LEX_MAX_FILTERS)
        return cairn_errorf(err, CAIRN_ERANGE, "filter: at most %d keys, got %zu",
                            CAIRN_LEX_MAX_FILTERS, n_filters);
    char q[CAIRN_LEX_MAX_TERMS * (TERM_MAX + 14) + 1];
    terms ts;
    collect_terms(text, len, &ts);
    if (ts.n == 0) return 0; /* nothing to search for */
    pthread_mutex_lock(&lx->mu);
    bool title_only[CAIRN_LEX_MAX_TERMS];
    int rarest = 0, n_common = 0;
    int64_t df_min = INT64_MAX;
    for (int i = 0; i < ts.n; i++) {
        int64_t df = lx->p.common_df < 1 ? doc_freq(lx, ts.t[i]) : 0;
        title_only[i] = (double)df > lx->p.common_df * (double)lx->rows;
        n_common += title_only[i];
        if (df < df_min) df_min = df, rarest = i;
    }
    if (n_common == ts.n) title_only[rarest] = false; /* something must match bodies */
    write_expr(&ts, title_only, q, sizeof q); /* q is large enough for any terms */
    sqlite3_stmt *st = lx->search;
    int rc = 0;
    if (n_filters) {
        /* A filtered query is rarer: prepared each time, every value bound, never spliced. */
        char sql[1024];
        int at = snprintf(sql, sizeof sql,
                          "SELECT rowid, bm25(lex, %.17g, %.17g) AS s FROM lex WHERE lex MATCH "
                          "?1",
                          lx->p.w_title, lx->p.w_body);
        for (size_t i = 0; i < n_filters; i++)
            at += snprintf(sql + at, sizeof sql - (size_t)at,
                           " AND rowid IN (SELECT id FROM lex_kv WHERE k = ?%zu AND v = ?%zu)",
                           3 + 2 * i, 4 + 2 * i);
        snprintf(sql + at, sizeof sql - (size_t)at, " ORDER BY s, rowid LIMIT ?2");
        st = NULL;
        if (sqlite3_prepare_v2(lx->db, sql, -1, &st, NULL) != SQLITE_OK)
            rc = sql_error(lx, err, "prepare");
        for (size_t i = 0; !rc && i < n_filters; i++) {
            sqlite3_bind_text(st, 3 + 2 * (int)i, filters[i].key, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 4 + 2 * (int)i, filters[i].value, -1, SQLITE_STATIC);
        }
    }
    if (!rc) {
        sqlite3_bind_text(st, 1, q, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 2, k);
        int s;
        while ((s = sqlite3_step(st)) == SQLITE_ROW && *n_out < k) {
            ids[*n_out] = (uint64_t)sqlite3_column_int64(st, 0);
            scores[*n_out] = (float)-sqlite3_column_double(st, 1);
            (*n_out)++;
        }
        if (s != SQLITE_DONE && s != SQLITE_ROW) {
            rc = sql_error(lx, err, "search");
            *n_out = 0;
        }
    }
    if (st == lx->search) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    } else {
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&lx->mu);
    return rc;
}
