/*
 * services/cmd_index.c — `cairn index`, `cairn embed`, `cairn search`.
 *
 * `cairn index` builds the same index directory cairnd serves (data/index by default) with
 * the same code (retrieval/index.h): ingest the corpus into the docstore, embed every passage,
 * train and fill the IVF index, write the tier file, then fill the lexical index (lexical.db)
 * by opening the directory as cairnd does. Each step is skipped when the directory
 * already holds its result, so the index is cached between runs; corpus.stamp tells whether
 * the cached store covers the corpus and passage limit asked for (a store filled with its
 * first 2,000 passages, the old default, does not cover the whole corpus, and is rebuilt).
 * `cairn search` opens the directory through services/rag.c, exactly as cairnd does.
 */
#include "services/cmd_index.h"

#include "common/clock.h"
#include "common/error.h"
#include "common/json.h"
#include "retrieval/docstore.h"
#include "retrieval/embed.h"
#include "retrieval/index.h"
#include "retrieval/ivf.h"
#include "retrieval/tier.h"
#include "services/rag.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *const cairn_cmd_index_usage =
    "usage: cairn index [--full | --max N] [--corpus PATH] [--dir DIR] [--rebuild]\n"
    "                   [--model FILE] [--threads T] [--data-dir DIR]\n\n"
    "Ingests a corpus into an index directory (docstore, IVF index, tier file): passages are\n"
    "embedded with a progress line (rate, ETA) on stderr, then the IVF index is trained. The\n"
    "result is cached: a run asking for no more than the directory holds only reports it;\n"
    "cairnd serves the same directory.\n\n"
    "  --corpus PATH   a directory of *.txt/*.md files, a .jsonl file ({id, text, metadata,\n"
    "                  title}), or debian-Translation-en\n"
    "                  (default DATA/corpus/debian-Translation-en)\n"
    "  --dir DIR       index directory (default DATA/index, the one cairnd serves)\n"
    "  --max N         ingest the first N passages (default: all of them, as cairnd does)\n"
    "  --full          ingest the whole corpus (68,199 passages of the default corpus; the\n"
    "                  default)\n"
    "  --rebuild       start from an empty directory even when the cached index would do\n"
    "  --model FILE    embedder GGUF (default DATA/models/all-minilm-l6-v2.gguf)\n"
    "  --threads T     embedding threads; 0 = CPUs online (default 0)\n"
    "  --embed-device N  embed on CUDA GPU N (default -1: the CPU)\n"
    "  --data-dir DIR  where the defaults above live (default ./data)";

const char *const cairn_cmd_embed_usage =
    "usage: cairn embed [--model FILE] [--threads T] [--embed-device N] [--data-dir DIR]\n"
    "                   TEXT...\n\n"
    "Prints each TEXT's embedding (mean-pooled, L2-normalised) as a JSON array of floats on\n"
    "its own line, in the order given.\n\n"
    "  --model FILE    embedder GGUF (default DATA/models/all-minilm-l6-v2.gguf)\n"
    "  --threads T     threads; 0 = CPUs online (default 0)\n"
    "  --embed-device N  embed on CUDA GPU N (default -1: the CPU)\n"
    "  --data-dir DIR  where the default model lives (default ./data)";

const char *const cairn_cmd_search_usage =
    "usage: cairn search [-k K] [--mode M] [--nprobe P] [--json] [--dir DIR] [--model FILE]\n"
    "                    [--threads T] [--data-dir DIR] TEXT\n\n"
    "Prints the K passages of the index that best match TEXT, best first (rank, score, the\n"
    "list that found it, id, title and the start of the text), and the embed and search\n"
    "times on stderr.\n\n"
    "  -k K            passages to print, 1..1024 (default 5)\n"
    "  --mode M        hybrid (default: both lists, fused), dense (the IVF index of\n"
    "                  embeddings) or lexical (BM25 over titles and texts)\n"
    "  --nprobe P      IVF clusters to search, >= 1 (default: the index's own; more than the\n"
    "                  index has searches them all)\n"
    "  --json          one JSON object per passage {rank, id, score, retrieved_by, dense_rank,\n"
    "                  lexical_rank, key, title, text, metadata}\n"
    "  --dir DIR       index directory (default DATA/index; `cairn index` builds it)\n"
    "  --model FILE    embedder GGUF: the one the index was built with (default\n"
    "                  DATA/models/all-minilm-l6-v2.gguf)\n"
    "  --threads T     threads; 0 = CPUs online (default 0)\n"
    "  --embed-device N  embed the query on CUDA GPU N (default -1: the CPU)\n"
    "  --data-dir DIR  where the defaults above live (default ./data)";

/* ---- Options -------------------------------------------------------------------------------- */

enum {
    OPT_CORPUS = 1 << 0,
    OPT_DIR = 1 << 1,
    OPT_MAX = 1 << 2,
    OPT_FULL = 1 << 3,
    OPT_REBUILD = 1 << 4,
    OPT_MODEL = 1 << 5,
    OPT_THREADS = 1 << 6,
    OPT_DATA = 1 << 7,
    OPT_K = 1 << 8,
    OPT_NPROBE = 1 << 9,
    OPT_JSON = 1 << 10,
    OPT_MODE = 1 << 11,
    OPT_EDEV = 1 << 12,
};

typedef struct opts {
    const char *cmd;
    const char *corpus, *dir, *model, *data_dir;
    cairn_search_mode mode;
    long max, threads, k, nprobe, embed_device;
    int full, rebuild, json, max_set;
    char **texts; /* positional arguments */
    int n_texts;
    char corpus_buf[4096], dir_buf[4096], model_buf[4096];
} opts;

static int parse_long(const opts *o, const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "cairn %s: %s wants an integer in %ld..%ld, got '%s'\n", o->cmd, opt, lo,
                hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Parses argv[1..] into o, accepting the options in `allowed`. Returns 0 or 2 (usage error,
 * printed). Positional arguments are collected in o->texts (argv is reordered in place). */
static int parse_opts(opts *o, int argc, char **argv, int allowed)
{
    memset(o, 0, sizeof *o);
    o->cmd = argv[0];
    o->data_dir = "./data";
    o->k = 5;
    o->full = 1; /* the whole corpus unless --max says otherwise */
    o->embed_device = -1;
    o->texts = argv + 1;
    int only_texts = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (only_texts || a[0] != '-' || a[1] == '\0') {
            o->texts[o->n_texts++] = argv[i];
            continue;
        }
        if (!strcmp(a, "--")) {
            only_texts = 1;
            continue;
        }
        struct {
            const char *name;
            int bit;
            int takes;
        } const table[] = {
            {"--corpus", OPT_CORPUS, 1}, {"--dir", OPT_DIR, 1},         {"--max", OPT_MAX, 1},
            {"--full", OPT_FULL, 0},     {"--rebuild", OPT_REBUILD, 0}, {"--model", OPT_MODEL, 1},
            {"-m", OPT_MODEL, 1},        {"--threads", OPT_THREADS, 1}, {"--data-dir", OPT_DATA, 1},
            {"-k", OPT_K, 1},            {"--nprobe", OPT_NPROBE, 1},   {"--json", OPT_JSON, 0},
            {"--mode", OPT_MODE, 1},     {"--embed-device", OPT_EDEV, 1},
        };
        int bit = 0, takes = 0;
        for (size_t t = 0; t < sizeof table / sizeof table[0]; t++)
            if (!strcmp(a, table[t].name)) {
                bit = table[t].bit;
                takes = table[t].takes;
            }
        if (!(bit & allowed)) {
            fprintf(stderr, "cairn %s: unknown option '%s' (see cairn %s --help)\n", o->cmd, a,
                    o->cmd);
            return 2;
        }
        if (takes && !v) {
            fprintf(stderr, "cairn %s: %s needs a value (see cairn %s --help)\n", o->cmd, a,
                    o->cmd);
            return 2;
        }
        int bad = 0;
        switch (bit) {
        case OPT_CORPUS: o->corpus = v; break;
        case OPT_DIR: o->dir = v; break;
        case OPT_MODEL: o->model = v; break;
        case OPT_DATA: o->data_dir = v; break;
        case OPT_MAX:
            bad = parse_long(o, a, v, 1, 1000000000L, &o->max);
            o->max_set = 1;
            break;
        case OPT_THREADS: bad = parse_long(o, a, v, 0, 1024, &o->threads); break;
        case OPT_EDEV: bad = parse_long(o, a, v, -1, 1023, &o->embed_device); break;
        case OPT_K: bad = parse_long(o, a, v, 1, CAIRN_TIER_MAX_K, &o->k); break;
        case OPT_NPROBE: bad = parse_long(o, a, v, 1, 65536, &o->nprobe); break;
        case OPT_FULL:
            o->full = 2;
            break; /* said, not only the default */
        case OPT_REBUILD: o->rebuild = 1; break;
        case OPT_JSON: o->json = 1; break;
        case OPT_MODE: {
            cairn_error e = {0};
            if (cairn_search_mode_parse(v, &o->mode, &e)) {
                fprintf(stderr, "cairn %s: --mode: %s\n", o->cmd, e.msg);
                bad = 1;
            }
            break;
        }
        }
        if (bad) return 2;
        i += takes;
    }
    if (o->full == 2 && o->max_set) {
        fprintf(stderr, "cairn %s: --full and --max exclude each other\n", o->cmd);
        return 2;
    }
    if (o->max_set) o->full = 0;
    if (!o->model) {
        snprintf(o->model_buf, sizeof o->model_buf, "%s/models/all-minilm-l6-v2.gguf",
                 o->data_dir);
        o->model = o->model_buf;
    }
    if (!o->dir) {
        snprintf(o->dir_buf, sizeof o->dir_buf, "%s/index", o->data_dir);
        o->dir = o->dir_buf;
    }
    if (!o->corpus) {
        snprintf(o->corpus_buf, sizeof o->corpus_buf, "%s/corpus/debian-Translation-en",
                 o->data_dir);
        o->corpus = o->corpus_buf;
    }
    return 0;
}

static int open_embedder(const opts *o, cairn_embed **e)
{
    cairn_error err = {0};
    cairn_embed_params ep = cairn_embed_default_params();
    ep.n_threads = (int)o->threads;
    ep.device = (int)o->embed_device;
    if (cairn_embed_open(e, o->model, &ep, &err)) {
        fprintf(stderr, "cairn %s: embedder %s: %s\n", o->cmd, o->model, err.msg);
        return 1;
    }
    return 0;
}

/* ---- Progress ------------------------------------------------------------------------------- */

/* A progress line on stderr: redrawn in place on a terminal, else one line every 10 s. */
typedef struct progress {
    const char *what;
    int tty;
    double t0, last;
} progress;

static void fmt_hms(double s, char *buf, size_t cap)
{
    long t = s < 0 ? 0 : (long)(s + 0.5);
    snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
}

static void on_progress(void *ctx, size_t done, size_t total)
{
    progress *p = ctx;
    double now = cairn_now_sec(), el = now - p->t0;
    int final = done >= total;
    if (!final && now - p->last < (p->tty ? 0.2 : 10.0)) return;
    p->last = now;
    double rate = el > 0 ? (double)done / el : 0.0;
    char eta[32], elapsed[32];
    fmt_hms(rate > 0 ? (double)(total - done) / rate : 0.0, eta, sizeof eta);
    fmt_hms(el, elapsed, sizeof elapsed);
    fprintf(stderr, "%s%s %zu/%zu (%.1f%%)  %.1f passages/s  elapsed %s  ETA %s%s",
            p->tty ? "\r" : "", p->what, done, total, total ? 100.0 * (double)done / (double)total
                                                            : 100.0,
            rate, elapsed, eta, p->tty && !final ? "\x1b[K" : "\n");
    fflush(stderr);
}

/* ---- cairn index ---------------------------------------------------------------------------- */

static void remove_index_files(const cairn_index_paths *ip)
{
    remove(ip->stamp); /* first: a store without its stamp is never taken for a cached one */
    remove(ip->tier);
    remove(ip->ivf);
    remove(ip->docs);
}

/*
 * Opens the store for o, deciding whether the cached one covers the request. *cached gets
 * 1 when the store was reused. Returns 0 or an exit status.
 */
static int open_store(const opts *o, const cairn_index_paths *ip, cairn_embed *e,
                      cairn_docstore **ds, int *cached)
{
    cairn_error err = {0};
    size_t max = o->full ? 0 : (size_t)o->max;
    struct stat sb;
    *cached = 0;
    if (o->rebuild) remove_index_files(ip);
    if (stat(ip->docs, &sb) == 0) {
        if (cairn_docstore_open(ds, ip->docs, 0, &err)) {
            fprintf(stderr, "cairn index: %s (pass --rebuild to start over)\n", err.msg);
            return 1;
        }
        size_t live = cairn_docstore_live(*ds);
        cairn_index_stamp st;
        int rc = live ? cairn_index_stamp_read(ip->stamp, &st, &err) : 0;
        if (rc == CAIRN_ENOTFOUND) {
            fprintf(stderr,
                    "cairn index: %s holds %zu passages that no corpus ingest recorded "
                    "(documents added through the API?): pass --rebuild to replace them, or "
                    "--dir for another directory\n",
                    o->dir, live);
            cairn_docstore_close(*ds);
            *ds = NULL;
            return 1;
        }
        if (rc) {
            fprintf(stderr, "cairn index: %s (pass --rebuild to start over)\n", err.msg);
            cairn_docstore_close(*ds);
            *ds = NULL;
            return 1;
        }
        if (live && cairn_index_stamp_covers(&st, o->corpus, max)) {
            *cached = 1;
            return 0;
        }
        cairn_docstore_close(*ds);
        *ds = NULL;
        if (live) {
            char lim[32] = "all";
            if (st.max_passages) snprintf(lim, sizeof lim, "at most %zu", st.max_passages);
            fprintf(stderr, "cairn index: %s holds %zu passages (%s) of %s; rebuilding it\n",
                    o->dir, live, lim, st.corpus);
        }
        remove_index_files(ip);
    }
    if (cairn_docstore_open(ds, ip->docs, CAIRN_DOCSTORE_WRITE | CAIRN_DOCSTORE_CREATE, &err)) {
        fprintf(stderr, "cairn index: %s\n", err.msg);
        return 1;
    }
    cairn_corpus_stats cs = {0};
    double t0 = cairn_now_sec();
    if (max) fprintf(stderr, "ingesting %s (the first %zu passages)\n", o->corpus, max);
    else fprintf(stderr, "ingesting %s (all of it)\n", o->corpus);
    if (cairn_index_ingest(*ds, o->corpus, max, cairn_embed_tokenizer(e), ip->stamp, &cs, &err)) {
        fprintf(stderr, "cairn index: %s\n", err.msg);
        cairn_docstore_close(*ds);
        *ds = NULL;
        remove_index_files(ip);
        return 1;
    }
    fprintf(stderr,
            "ingested %zu documents into %zu passages in %.1f s (skipped: %zu empty, %zu huge, "
            "%zu binary, %zu bad UTF-8, %zu bad lines)\n",
            cs.docs, cs.passages, cairn_now_sec() - t0, cs.skipped_empty, cs.skipped_huge,
            cs.skipped_binary, cs.skipped_utf8, cs.bad_lines);
    if (cs.bad_lines)
        fprintf(stderr, "  first bad line %zu: %s\n", cs.first_bad_line, cs.first_bad);
    if (cs.passages == 0) {
        fprintf(stderr, "cairn index: %s gave no passages to index\n", o->corpus);
        cairn_docstore_close(*ds);
        *ds = NULL;
        remove_index_files(ip);
        return 1;
    }
    return 0;
}

int cairn_cmd_index(int argc, char **argv)
{
    opts o;
    int st = parse_opts(&o, argc, argv,
                        OPT_CORPUS | OPT_DIR | OPT_MAX | OPT_FULL | OPT_REBUILD | OPT_MODEL |
                            OPT_THREADS | OPT_DATA | OPT_EDEV);
    if (st) return st;
    if (o.n_texts) {
        fprintf(stderr, "cairn index: unexpected argument '%s' (see cairn index --help)\n",
                o.texts[0]);
        return 2;
    }
    struct stat sb;
    if (stat(o.corpus, &sb) != 0) {
        fprintf(stderr, "cairn index: corpus %s: %s\n", o.corpus, strerror(errno));
        return 1;
    }
    cairn_error err = {0};
    cairn_index_paths ip;
    if (cairn_index_paths_for(&ip, o.dir, &err)) {
        fprintf(stderr, "cairn index: %s\n", err.msg);
        return 2;
    }
    if (mkdir(o.dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "cairn index: %s: %s\n", o.dir, strerror(errno));
        return 1;
    }
    cairn_embed *e = NULL;
    cairn_docstore *ds = NULL;
    cairn_ivf *ivf = NULL;
    cairn_tier *tier = NULL;
    float *x = NULL;
    int64_t *ids = NULL;
    int status = open_embedder(&o, &e), cached = 0;
    if (!status) status = open_store(&o, &ip, e, &ds, &cached);
    if (status) goto out;
    status = 1;
    size_t live = cairn_docstore_live(ds);
    uint64_t uid = cairn_docstore_uid(ds);
    double embed_s = 0, build_s = 0;
    int ivf_cached = cached && cairn_index_format_current(ip.format) &&
                     cairn_ivf_load(&ivf, ip.ivf, uid, NULL) == 0 &&
                     cairn_ivf_count(ivf) == live && cairn_ivf_dim(ivf) == cairn_embed_dim(e);
    if (!ivf_cached) {
        cairn_ivf_close(ivf);
        ivf = NULL;
        remove(ip.tier);
        progress pr = {.what = "embedding", .tty = isatty(STDERR_FILENO), .t0 = cairn_now_sec()};
        size_t n = 0;
        if (cairn_index_embed_store(e, ds, 256, on_progress, &pr, &x, &ids, &n, &err)) {
            fprintf(stderr, "\ncairn index: embedding: %s\n", err.msg);
            goto out;
        }
        embed_s = cairn_now_sec() - pr.t0;
        double t0 = cairn_now_sec();
        fprintf(stderr, "training the IVF index (nlist %zu) and adding %zu vectors\n",
                cairn_ivf_nlist_for(n), n);
        if (cairn_index_build_ivf(&ivf, cairn_embed_dim(e), x, ids, n, &err) ||
            cairn_ivf_save(ivf, ip.ivf, uid, &err) || cairn_index_format_write(ip.format, &err)) {
            fprintf(stderr, "cairn index: %s\n", err.msg);
            goto out;
        }
        build_s = cairn_now_sec() - t0;
    }
    cairn_tier_params tp = cairn_tier_default_params();
    tp.fast_bytes = 1u << 20; /* only opened to check the file */
    if (cairn_tier_open(&tier, ip.tier, &tp, uid, NULL) || cairn_tier_count(tier) != live) {
        cairn_tier_close(tier);
        tier = NULL;
        if (cairn_tier_build(ivf, ip.tier, uid, &err)) {
            fprintf(stderr, "cairn index: %s\n", err.msg);
            goto out;
        }
    }
    /* the lexical index: opening the directory as cairnd does fills it when it is missing or
     * holds other passages (services/rag.c) */
    {
        cairn_rag_params rp = cairn_rag_default_params();
        rp.dir = o.dir;
        rp.embed = e;
        cairn_rag *r = NULL;
        cairn_ivf_close(ivf); /* rag loads its own */
        ivf = NULL;
        double t0 = cairn_now_sec();
        if (cairn_rag_open(&r, &rp, NULL, &err)) {
            fprintf(stderr, "cairn index: lexical index: %s\n", err.msg);
            goto out;
        }
        cairn_rag_close(r);
        if (cairn_ivf_load(&ivf, ip.ivf, uid, &err)) {
            fprintf(stderr, "cairn index: %s\n", err.msg);
            goto out;
        }
        if (!ivf_cached)
            fprintf(stderr, "lexical index ready in %.1f s\n", cairn_now_sec() - t0);
    }
    if (ivf_cached) {
        printf("index %s is cached: %zu passages, nlist %zu, default nprobe %zu (--rebuild "
               "rebuilds it)\n",
               o.dir, live, cairn_ivf_nlist(ivf), cairn_ivf_nprobe(ivf));
    } else {
        printf("indexed %zu passages into %s: embedding %.1f s (%.1f passages/s), IVF train + "
               "add %.2f s (nlist %zu, default nprobe %zu)\n",
               live, o.dir, embed_s, embed_s > 0 ? (double)live / embed_s : 0.0, build_s,
               cairn_ivf_nlist(ivf), cairn_ivf_nprobe(ivf));
    }
    status = fflush(stdout) ? 1 : 0;
out:
    free(x);
    free(ids);
    cairn_tier_close(tier);
    cairn_ivf_close(ivf);
    cairn_docstore_close(ds);
    cairn_embed_close(e);
    return status;
}

/* ---- cairn embed ---------------------------------------------------------------------------- */

int cairn_cmd_embed(int argc, char **argv)
{
    opts o;
    int st = parse_opts(&o, argc, argv, OPT_MODEL | OPT_THREADS | OPT_DATA | OPT_EDEV);
    if (st) return st;
    if (o.n_texts == 0) {
        fprintf(stderr, "cairn embed: no TEXT given (see cairn embed --help)\n");
        return 2;
    }
    cairn_embed *e = NULL;
    if (open_embedder(&o, &e)) return 1;
    int dim = cairn_embed_dim(e), status = 1;
    float *out = malloc((size_t)o.n_texts * (size_t)dim * sizeof *out);
    cairn_error err = {0};
    if (!out) {
        fprintf(stderr, "cairn embed: out of memory\n");
    } else if (cairn_embed_batch(e, (const char *const *)o.texts, o.n_texts, out, &err)) {
        fprintf(stderr, "cairn embed: %s\n", err.msg);
    } else {
        for (int i = 0; i < o.n_texts; i++) {
            const float *v = out + (size_t)i * (size_t)dim;
            putchar('[');
            for (int j = 0; j < dim; j++)
                printf(j ? ",%.9g" : "%.9g", v[j]);
            puts("]");
        }
        status = fflush(stdout) ? 1 : 0;
    }
    free(out);
    cairn_embed_close(e);
    return status;
}

/* ---- cairn search --------------------------------------------------------------------------- */

/* The first n bytes of s, cut back to a whole UTF-8 character, newlines as spaces. */
static void print_snippet(const char *s, size_t n)
{
    size_t len = strlen(s);
    if (len > n) {
        len = n;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80) len--;
    }
    for (size_t i = 0; i < len; i++) putchar(s[i] == '\n' ? ' ' : s[i]);
    if (len < strlen(s)) fputs("...", stdout);
}

static void print_hit_json(int rank, const cairn_rag_hit *h)
{
    json_t *o = json_object(), *meta = json_loads(h->meta, 0, NULL);
    json_object_set_new(o, "rank", json_integer(rank));
    json_object_set_new(o, "id", json_integer((json_int_t)h->id));
    json_object_set_new(o, "score", json_real(h->score));
    json_object_set_new(o, "retrieved_by", json_string(cairn_fuse_from_name(h->from)));
    json_object_set_new(o, "dense_rank", h->dense_rank ? json_integer(h->dense_rank) : json_null());
    json_object_set_new(o, "lexical_rank", h->lex_rank ? json_integer(h->lex_rank) : json_null());
    json_object_set_new(o, "key", json_string(h->key));
    json_object_set_new(o, "title", json_string(h->title));
    json_object_set_new(o, "text", json_string(h->text));
    json_object_set_new(o, "metadata", meta ? meta : json_object());
    char *s = json_dumps(o, JSON_COMPACT);
    if (s) puts(s);
    free(s);
    json_decref(o);
}

int cairn_cmd_search(int argc, char **argv)
{
    opts o;
    int st = parse_opts(&o, argc, argv,
                        OPT_DIR | OPT_MODEL | OPT_THREADS | OPT_DATA | OPT_K | OPT_NPROBE |
                            OPT_JSON | OPT_MODE | OPT_EDEV);
    if (st) return st;
    if (o.n_texts != 1) {
        fprintf(stderr, "cairn search: %s (see cairn search --help)\n",
                o.n_texts ? "one TEXT only (quote it)" : "no TEXT given");
        return 2;
    }
    cairn_error err = {0};
    cairn_index_paths ip;
    struct stat sb;
    if (cairn_index_paths_for(&ip, o.dir, &err)) {
        fprintf(stderr, "cairn search: %s\n", err.msg);
        return 2;
    }
    if (stat(ip.docs, &sb) != 0 || stat(ip.ivf, &sb) != 0) {
        fprintf(stderr, "cairn search: no index in %s (%s missing): run cairn index first\n",
                o.dir, stat(ip.docs, &sb) != 0 ? "docs.cds" : "index.ivf");
        return 1;
    }
    cairn_embed *e = NULL;
    if (open_embedder(&o, &e)) return 1;
    cairn_rag *r = NULL;
    cairn_rag_params rp = cairn_rag_default_params();
    rp.dir = o.dir;
    rp.embed = e;
    int status = 1, n_hits = 0, dim = cairn_embed_dim(e);
    cairn_rag_hit *hits = calloc((size_t)o.k, sizeof *hits);
    float *q = malloc((size_t)dim * sizeof *q);
    if (!hits || !q) {
        fprintf(stderr, "cairn search: out of memory\n");
        goto out;
    }
    if (cairn_rag_open(&r, &rp, NULL, &err)) {
        fprintf(stderr, "cairn search: index %s: %s\n", o.dir, err.msg);
        goto out;
    }
    if (cairn_rag_count(r) == 0) {
        fprintf(stderr, "cairn search: index %s is empty: run cairn index first\n", o.dir);
        goto out;
    }
    double t0 = cairn_now_sec(), embed_s = 0;
    cairn_rag_query rq = {.mode = o.mode, .text = o.texts[0], .k = (int)o.k,
                          .nprobe = (int)o.nprobe};
    if (cairn_rag_retrieve(r, &rq, q, &embed_s, hits, &n_hits, NULL, &err)) {
        fprintf(stderr, "cairn search: %s\n", err.msg);
        goto out;
    }
    double t1 = t0 + embed_s;
    double t2 = cairn_now_sec();
    for (int i = 0; i < n_hits; i++) {
        if (o.json) {
            print_hit_json(i + 1, &hits[i]);
            continue;
        }
        printf("%2d. %.4f  %-7s [%llu] %s\n    ", i + 1, hits[i].score,
               cairn_fuse_from_name(hits[i].from), (unsigned long long)hits[i].id,
               hits[i].title[0] ? hits[i].title : hits[i].key);
        print_snippet(hits[i].text, 200);
        putchar('\n');
    }
    fprintf(stderr, "[timings] %s: %d passages of %zu; embed %.1f ms, search %.2f ms\n",
            cairn_search_mode_name(o.mode), n_hits, cairn_rag_count(r), (t1 - t0) * 1e3,
            (t2 - t1) * 1e3);
    status = fflush(stdout) ? 1 : 0;
out:
    cairn_rag_hits_free(hits, n_hits);
    free(hits);
    free(q);
    cairn_rag_close(r);
    cairn_embed_close(e);
    return status;
}
