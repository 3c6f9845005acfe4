/*
 * tests/bench/bench_retrieval.c — retrieval on the real default corpus with real embeddings.
 *
 * The first N passages of the default corpus (data/corpus/debian-Translation-en, chunked as
 * cairnd chunks it: retrieval/index.h, WordPiece-sized) are embedded with all-MiniLM-L6-v2 on
 * 2 threads. Store and embeddings are cached under data/bench/retrieval/ (docs-N.cds,
 * emb-N.f32), so reruns skip the embedding. Figures, one JSON line each:
 *   - embed_corpus: passages/s of the N-passage embedding (only when it ran, not cached);
 *   - embed_speed: passages/s and tokens/s embedding a fixed sample of 512 passages spread over
 *     the store, 2 threads, median of 3 runs after a warm-up (scripts/bench-onnx-embed times
 *     onnxruntime on the same sample, which this writes to speed-sample.jsonl);
 *   - build: IVF train and add seconds (nlist = cairn_ivf_nlist_for(N));
 *   - recall: recall@10 of IVF search against exact search (brute-force inner products over
 *     all N vectors, computed here with sgemm, not by FAISS) at nprobe 1..64 and the default,
 *     with single-threaded queries/s and p50/p99 latency per query; the queries are the
 *     synopsis queries below (real text, not corpus vectors). recall_at_10 counts a returned
 *     passage whose score reaches the exact 10th score (see recall_tied: the corpus has many
 *     identical passages); recall_at_10_ids compares ids with the exact list;
 *   - synopsis: for Q >= 2,000 packages whose first passage is in the store and whose long
 *     description is not just the synopsis, the synopsis alone is the query; the rate at
 *     which that first passage is in the top 10 (exact and IVF at the default nprobe), and
 *     the looser rates "a passage of the same package" and "a passage with the same text"
 *     (Debian has many packages sharing one long description: -dev, -doc, -data variants);
 *   - tier_search: the same queries through cairnd's tiered search at the default nprobe,
 *     fast tier empty (all misses) and full (all hits);
 *   - lookahead: per query, from an empty fast tier of a quarter of the index, the synopsis
 *     (q1) searched as it is and after prefetching the clusters of a question about it (q0,
 *     "Which Debian package provides ...?"): hit ratio, latency both ways, prefetch time and
 *     bytes; the answers must be identical.
 *
 * Usage: bench_retrieval [--device D] [N]
 *            N passages (default 20000, or $CAIRN_BENCH_PASSAGES; 0 = the whole corpus); D the
 *            fast tier's device for tier_search and lookahead (-1, the default: RAM; N >= 0:
 *            GPU N; those two lines name the device; bench_cuda_retrieval has the GPU
 *            figures on a synthetic index of 10 GB)
 *        bench_retrieval --embed-file IN.jsonl OUT.f32 [RUNS]
 *            embeds the JSON strings of IN.jsonl (one per line) RUNS times (default 3) on 2
 *            threads, writes the vectors (raw float32) and prints the seconds of each run —
 *            scripts/bench-onnx-embed interleaves this with onnxruntime.
 * CAIRN_EMBED_AMX=0 in the environment embeds with F32 linear layers instead of BF16 on AMX
 * tiles (scripts/bench-embed-amx compares the two).
 * The data dir is $CAIRN_DATA (as scripts/setup and `make` have it), else ./data: run from the
 * repository root.
 */
#include "common/clock.h"
#include "common/error.h"
#include "common/json.h"
#include "retrieval/docstore.h"
#include "retrieval/embed.h"
#include "retrieval/index.h"
#include "retrieval/ivf.h"
#include "retrieval/tier.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* libgomp, linked through FAISS: single-threaded query timing. */
extern void omp_set_num_threads(int n);

#define N_THREADS 2
#define K 10
#define SPEED_SAMPLE 512
#define MIN_QUERIES 2000
#define RUNS 3
#define PATH_BYTES 4096
/* Under the data dir: the cache, the model and the corpus. */
#define DIR "bench/retrieval"
#define MODEL "models/all-minilm-l6-v2.gguf"
#define CORPUS "corpus/debian-Translation-en"

static void die(const char *what, const cairn_error *err)
{
    fprintf(stderr, "bench_retrieval: %s: %s\n", what, err ? err->msg : strerror(errno));
    exit(1);
}

/* Writes $CAIRN_DATA/rel (./data/rel when unset) into buf (PATH_BYTES) and returns buf. */
static char *data_path(char *buf, const char *rel)
{
    const char *d = getenv("CAIRN_DATA");
    if (snprintf(buf, PATH_BYTES, "%s/%s", d && *d ? d : "data", rel) >= PATH_BYTES) {
        fprintf(stderr, "bench_retrieval: CAIRN_DATA is too long\n");
        exit(1);
    }
    return buf;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, size_t n, double p)
{
    qsort(v, n, sizeof *v, cmp_double);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static cairn_embed *open_embedder(void)
{
    cairn_embed_params ep = cairn_embed_default_params();
    ep.n_threads = N_THREADS;
    const char *amx = getenv("CAIRN_EMBED_AMX"); /* 0: F32 linear layers (for comparisons) */
    if (amx) ep.amx = strcmp(amx, "0") != 0;
    cairn_embed *e = NULL;
    cairn_error err = {0};
    char model[PATH_BYTES];
    if (cairn_embed_open(&e, data_path(model, MODEL), &ep, &err)) die(model, &err);
    return e;
}

static void on_progress(void *ctx, size_t done, size_t total)
{
    double *t0 = ctx, el = cairn_now_sec() - *t0, rate = el > 0 ? (double)done / el : 0;
    if (done % 2560 && done != total) return;
    fprintf(stderr, "embedding %zu/%zu  %.1f passages/s  ETA %.0f s\n", done, total, rate,
            rate > 0 ? (double)(total - done) / rate : 0.0);
}

/* ---- --embed-file mode ------------------------------------------------------------------- */

static int embed_file(const char *in, const char *out, int runs)
{
    FILE *f = fopen(in, "r");
    if (!f) die(in, NULL);
    size_t n = 0, cap = 0;
    char **texts = NULL, *line = NULL;
    size_t lcap = 0;
    while (getline(&line, &lcap, f) > 0) {
        json_t *j = json_loads(line, JSON_DECODE_ANY, NULL);
        if (!j || !json_is_string(j)) {
            fprintf(stderr, "bench_retrieval: %s line %zu: not a JSON string\n", in, n + 1);
            return 1;
        }
        if (n == cap) texts = realloc(texts, (cap = cap ? 2 * cap : 1024) * sizeof *texts);
        texts[n++] = strdup(json_string_value(j));
        json_decref(j);
    }
    free(line);
    fclose(f);
    cairn_embed *e = open_embedder();
    int dim = cairn_embed_dim(e);
    float *x = malloc(n * (size_t)dim * sizeof *x);
    cairn_error err = {0};
    printf("{\"bench\":\"embed_file\",\"impl\":\"cairn\",\"threads\":%d,\"amx\":%d,"
           "\"passages\":%zu,\"seconds\":[", N_THREADS, cairn_embed_amx(e), n);
    for (int r = 0; r < runs; r++) {
        double t0 = cairn_now_sec();
        if (cairn_embed_batch(e, (const char *const *)texts, (int)n, x, &err)) die("embed", &err);
        printf(r ? ",%.4f" : "%.4f", cairn_now_sec() - t0);
    }
    printf("]}\n");
    FILE *o = fopen(out, "wb");
    if (!o || fwrite(x, sizeof *x * (size_t)dim, n, o) != n || fclose(o)) die(out, NULL);
    for (size_t i = 0; i < n; i++) free(texts[i]);
    free(texts);
    free(x);
    cairn_embed_close(e);
    return 0;
}

/* ---- Corpus and embeddings, cached ---------------------------------------------------------- */

typedef struct {
    char magic[8];
    uint32_t dim, pad;
    uint64_t n, uid;
} emb_header;

/* The store of the first n passages (n 0: all), ingested unless cached. */
static cairn_docstore *load_store(size_t n, cairn_embed *e)
{
    char path[PATH_BYTES + 32], stamp[PATH_BYTES + 32], dir[PATH_BYTES], corpus[PATH_BYTES];
    snprintf(path, sizeof path, "%s/docs-%zu.cds", data_path(dir, DIR), n);
    snprintf(stamp, sizeof stamp, "%s/docs-%zu.stamp", dir, n);
    data_path(corpus, CORPUS);
    cairn_error err = {0};
    cairn_index_stamp st;
    cairn_docstore *ds = NULL;
    if (cairn_index_stamp_read(stamp, &st, NULL) == 0 &&
        cairn_index_stamp_covers(&st, corpus, n) &&
        cairn_docstore_open(&ds, path, 0, NULL) == 0 && cairn_docstore_live(ds) == st.passages)
        return ds;
    cairn_docstore_close(ds);
    remove(stamp);
    remove(path);
    if (cairn_docstore_open(&ds, path, CAIRN_DOCSTORE_CREATE | CAIRN_DOCSTORE_WRITE, &err) ||
        cairn_index_ingest(ds, corpus, n, cairn_embed_tokenizer(e), stamp, NULL, &err))
        die(corpus, &err);
    return ds;
}

static float *load_embeddings(cairn_embed *e, const cairn_docstore *ds, size_t n_arg, int64_t **ids,
                              size_t *n)
{
    char path[PATH_BYTES + 32], dir[PATH_BYTES];
    snprintf(path, sizeof path, "%s/emb-%zu.f32", data_path(dir, DIR), n_arg);
    size_t live = cairn_docstore_live(ds);
    int dim = cairn_embed_dim(e);
    float *x = NULL;
    emb_header h;
    FILE *f = fopen(path, "rb");
    if (f && fread(&h, sizeof h, 1, f) == 1 && !memcmp(h.magic, "CAIRNEMB", 8) &&
        h.dim == (uint32_t)dim && h.n == live && h.uid == cairn_docstore_uid(ds)) {
        x = malloc(live * (size_t)dim * sizeof *x);
        *ids = malloc(live * sizeof **ids);
        if (fread(*ids, sizeof **ids, live, f) != live ||
            fread(x, sizeof *x * (size_t)dim, live, f) != live) {
            free(x);
            free(*ids);
            x = NULL;
        }
    }
    if (f) fclose(f);
    if (x) {
        *n = live;
        fprintf(stderr, "bench_retrieval: %zu embeddings from %s (cached)\n", live, path);
        return x;
    }
    double t0 = cairn_now_sec();
    cairn_error err = {0};
    if (cairn_index_embed_store(e, ds, 256, on_progress, &t0, &x, ids, n, &err))
        die("embedding", &err);
    double s = cairn_now_sec() - t0;
    printf("{\"bench\":\"retrieval\",\"what\":\"embed_corpus\",\"impl\":\"cairn\",\"threads\":%d,"
           "\"passages\":%zu,\"seconds\":%.1f,\"passages_s\":%.1f}\n",
           N_THREADS, *n, s, (double)*n / s);
    fflush(stdout);
    memcpy(h.magic, "CAIRNEMB", 8);
    h.dim = (uint32_t)dim;
    h.pad = 0;
    h.n = *n;
    h.uid = cairn_docstore_uid(ds);
    char tmp[PATH_BYTES + 40];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f || fwrite(&h, sizeof h, 1, f) != 1 || fwrite(*ids, sizeof **ids, *n, f) != *n ||
        fwrite(x, sizeof *x * (size_t)dim, *n, f) != *n || fclose(f) || rename(tmp, path))
        die(path, NULL);
    return x;
}

/* ---- Embedding speed on a fixed sample ------------------------------------------------------ */

static void embed_speed(cairn_embed *e, const cairn_docstore *ds)
{
    size_t live = cairn_docstore_live(ds), recs = cairn_docstore_records(ds), m = 0;
    size_t want = live < SPEED_SAMPLE ? live : SPEED_SAMPLE;
    const char **texts = malloc(want * sizeof *texts);
    char sample[PATH_BYTES];
    FILE *f = fopen(data_path(sample, DIR "/speed-sample.jsonl"), "w");
    if (!f) die(sample, NULL);
    size_t tokens = 0;
    int32_t *ids = malloc(1024 * sizeof *ids);
    for (size_t i = 0; i < recs && m < want; i++) {
        cairn_doc d;
        cairn_docstore_at(ds, i, &d);
        if (d.deleted || i % (recs / want) != 0) continue;
        texts[m++] = d.text;
        json_t *s = json_stringn(d.text, d.text_len);
        char *j = json_dumps(s, JSON_ENCODE_ANY);
        fprintf(f, "%s\n", j);
        free(j);
        json_decref(s);
        tokens += (size_t)cairn_wordpiece_encode(cairn_embed_tokenizer(e), d.text, d.text_len,
                                                 ids, cairn_embed_max_seq(e));
    }
    free(ids);
    fclose(f);
    int dim = cairn_embed_dim(e);
    float *x = malloc(m * (size_t)dim * sizeof *x);
    double runs[RUNS];
    cairn_error err = {0};
    for (int r = -1; r < RUNS; r++) {
        double t0 = cairn_now_sec();
        if (cairn_embed_batch(e, texts, (int)m, x, &err)) die("embed", &err);
        if (r >= 0) runs[r] = cairn_now_sec() - t0;
    }
    double med = pct(runs, RUNS, 0.5);
    printf("{\"bench\":\"retrieval\",\"what\":\"embed_speed\",\"impl\":\"cairn\",\"threads\":%d,"
           "\"passages\":%zu,\"tokens\":%zu,\"seconds_median\":%.3f,\"passages_s\":%.1f,"
           "\"tokens_s\":%.0f,\"runs_s\":[%.3f,%.3f,%.3f]}\n",
           N_THREADS, m, tokens, med, (double)m / med, (double)tokens / med, runs[0], runs[1],
           runs[2]);
    fflush(stdout);
    free(x);
    free(texts);
}

/* ---- Exact search --------------------------------------------------------------------------- */

/* Top K ids of each of nq queries over all n vectors, by inner product (ties: smaller index);
 * kth[i] gets query i's K-th best score. */
static void exact_topk(const float *q, size_t nq, const float *x, const int64_t *xid, size_t n,
                       int dim, int64_t *out, float *kth)
{
    const size_t B = 4096;
    float *s = malloc(nq * B * sizeof *s);
    float *best = malloc(nq * K * sizeof *best);
    for (size_t i = 0; i < nq * K; i++) {
        best[i] = -INFINITY;
        out[i] = -1;
    }
    for (size_t b0 = 0; b0 < n; b0 += B) {
        size_t nb = n - b0 < B ? n - b0 : B;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nb, dim, 1.0f, q, dim,
                    x + b0 * (size_t)dim, dim, 0.0f, s, (int)nb);
        for (size_t i = 0; i < nq; i++) {
            float *bs = best + i * K;
            int64_t *bi = out + i * K;
            for (size_t j = 0; j < nb; j++) {
                float v = s[i * nb + j];
                if (v <= bs[K - 1]) continue;
                int p = K - 1;
                while (p > 0 && bs[p - 1] < v) {
                    bs[p] = bs[p - 1];
                    bi[p] = bi[p - 1];
                    p--;
                }
                bs[p] = v;
                bi[p] = xid[b0 + j];
            }
        }
    }
    for (size_t i = 0; i < nq; i++) kth[i] = best[i * K + K - 1];
    free(s);
    free(best);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/*
 * Recall with ties: the share of the K returned ids whose true inner product with q reaches
 * the exact K-th score. The corpus holds many identical passages (one long description shared
 * by a package's -dev/-doc/-data variants), so equal-scored vectors straddle rank K and an
 * id-by-id comparison would count an equally good answer as a miss.
 */
static double recall_tied(const float *q, const int64_t *got, float kth, const float *x,
                          const int64_t *xid, size_t n, int dim)
{
    int hit = 0;
    for (int i = 0; i < K; i++) {
        if (got[i] < 0) continue;
        const int64_t *row = bsearch(&got[i], xid, n, sizeof *xid, cmp_i64);
        if (!row) continue;
        const float *v = x + (size_t)(row - xid) * (size_t)dim;
        double d = 0;
        for (int j = 0; j < dim; j++) d += (double)q[j] * v[j];
        if (d >= (double)kth - 1e-5) hit++;
    }
    return hit / (double)K;
}

/* Recall by ids: the share of the exact top-K ids (ties broken by smaller id) returned. */
static double overlap(const int64_t *a, const int64_t *b)
{
    int hit = 0;
    for (int i = 0; i < K; i++)
        for (int j = 0; j < K; j++)
            if (a[i] >= 0 && a[i] == b[j]) {
                hit++;
                break;
            }
    return hit / (double)K;
}

/* ---- Synopsis queries ----------------------------------------------------------------------- */

typedef struct {
    char *synopsis;
    uint64_t target; /* the package's first passage */
    char *pkg;       /* key prefix "debian:pkg#" */
} squery;

/* Up to `want` packages spread over the store whose long description is not the synopsis. */
static squery *synopsis_queries(const cairn_docstore *ds, size_t want, size_t *nq)
{
    size_t recs = cairn_docstore_records(ds), cand = 0;
    for (size_t i = 0; i < recs; i++) {
        cairn_doc d;
        cairn_docstore_at(ds, i, &d);
        const char *colon = strstr(d.title, ": ");
        if (!d.deleted && d.key_len > 2 && !strcmp(d.key + d.key_len - 2, "#0") && colon &&
            strcmp(colon + 2, d.text) != 0)
            cand++;
    }
    size_t step = cand > want ? cand / want : 1, c = 0;
    squery *q = calloc(want, sizeof *q);
    *nq = 0;
    for (size_t i = 0; i < recs && *nq < want; i++) {
        cairn_doc d;
        cairn_docstore_at(ds, i, &d);
        const char *colon = strstr(d.title, ": ");
        if (d.deleted || d.key_len <= 2 || strcmp(d.key + d.key_len - 2, "#0") || !colon ||
            !strcmp(colon + 2, d.text))
            continue;
        if (c++ % step) continue;
        q[*nq].synopsis = strdup(colon + 2);
        q[*nq].target = d.id;
        q[*nq].pkg = strndup(d.key, d.key_len - 1); /* "debian:pkg#" */
        (*nq)++;
    }
    return q;
}

typedef struct {
    int first, pkg, same_text;
} qhits;

static void judge(const cairn_docstore *ds, const squery *q, const int64_t *top, qhits *h)
{
    cairn_doc t;
    cairn_docstore_get(ds, q->target, &t, NULL);
    int first = 0, pkg = 0, same = 0;
    for (int i = 0; i < K && top[i] >= 0; i++) {
        cairn_doc d;
        if (cairn_docstore_get(ds, (uint64_t)top[i], &d, NULL)) continue;
        if (d.id == q->target) first = 1;
        if (!strncmp(d.key, q->pkg, strlen(q->pkg))) pkg = 1;
        if (d.text_len == t.text_len && !memcmp(d.text, t.text, t.text_len)) same = 1;
    }
    h->first += first;
    h->pkg += pkg;
    h->same_text += same;
}

/* ---- main ----------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "--embed-file"))
        return embed_file(argv[2], argv[3], argc > 4 ? atoi(argv[4]) : RUNS);
    int device = -1;
    if (argc >= 3 && !strcmp(argv[1], "--device")) {
        device = atoi(argv[2]);
        argc -= 2;
        argv += 2;
    }
    const char *ns = argc > 1 ? argv[1] : getenv("CAIRN_BENCH_PASSAGES");
    char *end = NULL;
    size_t n_arg = ns ? (size_t)strtoull(ns, &end, 10) : 20000;
    if (ns && (!*ns || *end || *ns == '-')) {
        fprintf(stderr, "usage: bench_retrieval [--device N] [PASSAGES]  (0: the whole corpus; "
                        "default 20000 or $CAIRN_BENCH_PASSAGES)\n"
                        "       bench_retrieval --embed-file FILE OUT [RUNS]\n"
                        "bench_retrieval: '%s' is not a number of passages\n", ns);
        return 2;
    }
    char dir[PATH_BYTES];
    if (mkdir(data_path(dir, "bench"), 0755) && errno != EEXIST) die(dir, NULL);
    if (mkdir(data_path(dir, DIR), 0755) && errno != EEXIST) die(dir, NULL);
    cairn_embed *e = open_embedder();
    int dim = cairn_embed_dim(e);
    cairn_docstore *ds = load_store(n_arg, e);
    int64_t *xid;
    size_t n;
    float *x = load_embeddings(e, ds, n_arg, &xid, &n);
    embed_speed(e, ds);

    /* build */
    cairn_error err = {0};
    cairn_ivf_params ip = cairn_ivf_default_params();
    ip.dim = dim;
    ip.nlist = cairn_ivf_nlist_for(n);
    cairn_ivf *ivf = NULL;
    double t0 = cairn_now_sec();
    if (cairn_ivf_new(&ivf, &ip, &err) || cairn_ivf_train(ivf, x, n, &err)) die("train", &err);
    double t1 = cairn_now_sec();
    if (cairn_ivf_add(ivf, x, xid, n, &err)) die("add", &err);
    double t2 = cairn_now_sec();
    size_t nlist = cairn_ivf_nlist(ivf), def_np = cairn_ivf_nprobe(ivf);
    printf("{\"bench\":\"retrieval\",\"what\":\"build\",\"passages\":%zu,\"dim\":%d,\"nlist\":%zu,"
           "\"default_nprobe\":%zu,\"train_s\":%.2f,\"add_s\":%.2f,\"total_s\":%.2f}\n",
           n, dim, nlist, def_np, t1 - t0, t2 - t1, t2 - t0);
    fflush(stdout);

    /* queries: synopses */
    size_t nq;
    squery *sq = synopsis_queries(ds, MIN_QUERIES, &nq);
    const char **qt = malloc(nq * sizeof *qt);
    for (size_t i = 0; i < nq; i++) qt[i] = sq[i].synopsis;
    float *q = malloc(nq * (size_t)dim * sizeof *q);
    if (cairn_embed_batch(e, qt, (int)nq, q, &err)) die("embed queries", &err);
    int64_t *exact = malloc(nq * K * sizeof *exact), *got = malloc(nq * K * sizeof *got);
    float *kth = malloc(nq * sizeof *kth);
    exact_topk(q, nq, x, xid, n, dim, exact, kth);

    omp_set_num_threads(1);
    size_t probes[] = {1, 2, 4, 8, 16, 32, 64, 0};
    double *lat = malloc(nq * sizeof *lat);
    qhits h_exact = {0}, h_ivf = {0};
    for (size_t i = 0; i < nq; i++) judge(ds, &sq[i], exact + i * K, &h_exact);
    for (size_t p = 0; p < sizeof probes / sizeof probes[0]; p++) {
        size_t np = probes[p] ? probes[p] : def_np;
        if (np > nlist) continue;
        float sc[K];
        double rsum = 0, rids = 0, tsum = 0;
        for (size_t i = 0; i < nq; i++) {
            int64_t s0 = cairn_now_ns();
            if (cairn_ivf_search(ivf, q + i * (size_t)dim, 1, K, np, sc, got + i * K, &err))
                die("search", &err);
            lat[i] = (double)(cairn_now_ns() - s0) / 1e6;
            tsum += lat[i];
        }
        for (size_t i = 0; i < nq; i++) {
            rsum += recall_tied(q + i * (size_t)dim, got + i * K, kth[i], x, xid, n, dim);
            rids += overlap(exact + i * K, got + i * K);
        }
        if (!probes[p])
            for (size_t i = 0; i < nq; i++) judge(ds, &sq[i], got + i * K, &h_ivf);
        printf("{\"bench\":\"retrieval\",\"what\":\"recall\",\"passages\":%zu,\"nlist\":%zu,"
               "\"nprobe\":%zu,\"default\":%s,\"queries\":%zu,\"recall_at_10\":%.4f,"
               "\"recall_at_10_ids\":%.4f,\"qps_1thread\":%.0f,\"p50_ms\":%.3f,"
               "\"p99_ms\":%.3f}\n",
               n, nlist, np, probes[p] ? "false" : "true", nq, rsum / (double)nq,
               rids / (double)nq, 1e3 * (double)nq / tsum, pct(lat, nq, 0.5), pct(lat, nq, 0.99));
        fflush(stdout);
    }
    printf("{\"bench\":\"retrieval\",\"what\":\"synopsis\",\"passages\":%zu,\"queries\":%zu,"
           "\"k\":%d,\"exact\":{\"first_passage\":%.4f,\"same_package\":%.4f,\"same_text\":%.4f},"
           "\"ivf_default_nprobe\":{\"nprobe\":%zu,\"first_passage\":%.4f,\"same_package\":%.4f,"
           "\"same_text\":%.4f}}\n",
           n, nq, K, h_exact.first / (double)nq, h_exact.pkg / (double)nq,
           h_exact.same_text / (double)nq, def_np, h_ivf.first / (double)nq,
           h_ivf.pkg / (double)nq, h_ivf.same_text / (double)nq);
    fflush(stdout);

    /* cairnd's tiered search: fast tier empty, then holding every cluster */
    char tier_path[PATH_BYTES + 32];
    snprintf(tier_path, sizeof tier_path, "%s/tier-%zu.tier", dir, n_arg);
    if (cairn_tier_build(ivf, tier_path, cairn_docstore_uid(ds), &err)) die("tier", &err);
    for (int full = 0; full < 2; full++) {
        cairn_tier_params tp = cairn_tier_default_params();
        tp.device = device;
        tp.fast_bytes = full ? (size_t)((double)n * (dim * 4 + 8) * 1.5) + (64u << 20) : 1u << 20;
        cairn_tier *t = NULL;
        if (cairn_tier_open(&t, tier_path, &tp, cairn_docstore_uid(ds), &err)) die("tier", &err);
        if (full) {
            /* bring every cluster in: prefetch with an unlimited budget from each query */
            for (size_t i = 0; i < nq; i += 50) {
                cairn_tier_prefetch(t, q + i * (size_t)dim, SIZE_MAX, 0, NULL);
                cairn_tier_wait(t);
            }
        }
        cairn_tier_reset_stats(t);
        float sc[K];
        double tsum = 0, rsum = 0;
        for (size_t i = 0; i < nq; i++) {
            int64_t s0 = cairn_now_ns();
            cairn_tier_search(t, q + i * (size_t)dim, K, def_np, sc, got + i * K, NULL);
            lat[i] = (double)(cairn_now_ns() - s0) / 1e6;
            tsum += lat[i];
        }
        for (size_t i = 0; i < nq; i++)
            rsum += recall_tied(q + i * (size_t)dim, got + i * K, kth[i], x, xid, n, dim);
        cairn_tier_stats st;
        cairn_tier_get_stats(t, &st);
        printf("{\"bench\":\"retrieval\",\"what\":\"tier_search\",\"device\":%d,"
               "\"fast_tier\":\"%s\",\"nprobe\":%zu,\"queries\":%zu,\"hit_ratio\":%.3f,"
               "\"recall_at_10\":%.4f,\"qps\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
               device, full ? "all clusters" : "1 MiB, cold", def_np, nq,
               st.probed ? (double)st.hits / (double)st.probed : 0.0, rsum / (double)nq,
               1e3 * (double)nq / tsum, pct(lat, nq, 0.5), pct(lat, nq, 0.99));
        fflush(stdout);
        cairn_tier_close(t);
    }

    /* Lookahead: q0 is a question about the package, q1 its rewrite (the synopsis itself). Per
     * query, from an empty fast tier holding a quarter of the index: search q1 as it is
     * ("without"), and search q1 after prefetching q0's clusters ("with"; in cairnd the prefetch
     * overlaps the rewrite's generation, so its time is reported apart). Same answers both
     * ways, or the bench fails. With the fast tier in RAM the slow tier is the file's pages,
     * in the page cache after the first read: a hit and a miss read the same memory, so the
     * two ways differ only by where the scan runs (caller or worker), and a ratio near 1 is
     * all this can show; the gain the prefetch is for needs a slow tier slower than the fast
     * one, as with a GPU fast tier (bench_cuda_retrieval). */
    {
        char **qq = malloc(nq * sizeof *qq);
        for (size_t i = 0; i < nq; i++) {
            size_t len = strlen(sq[i].synopsis) + 64;
            qq[i] = malloc(len);
            snprintf(qq[i], len, "Which Debian package provides %s?", sq[i].synopsis);
        }
        float *q0 = malloc(nq * (size_t)dim * sizeof *q0);
        if (cairn_embed_batch(e, (const char *const *)qq, (int)nq, q0, &err))
            die("embed questions", &err);
        cairn_tier_params tp = cairn_tier_default_params();
        tp.device = device;
        tp.fast_bytes = (size_t)((double)n * (dim * 4 + 8) / 4);
        cairn_tier *t = NULL;
        if (cairn_tier_open(&t, tier_path, &tp, cairn_docstore_uid(ds), &err)) die("tier", &err);
        double *lat_with = malloc(nq * sizeof *lat_with), pre_sum = 0;
        int64_t *got2 = malloc((size_t)K * sizeof *got2);
        uint64_t hits = 0, probed = 0, bytes = 0;
        size_t differ = 0;
        float sc[K];
        for (size_t i = 0; i < nq; i++) {
            /* Which way goes first alternates: whichever search follows the other (or the
             * prefetch's I/O thread) finds the caches and the cores in another state, and a
             * fixed order put that difference on one side only. */
            for (int way = 0; way < 2; way++) {
                if ((way ^ (int)(i & 1)) == 0) {
                    cairn_tier_clear_fast(t);
                    int64_t s0 = cairn_now_ns();
                    cairn_tier_search(t, q + i * (size_t)dim, K, def_np, sc, got + i * K, NULL);
                    lat[i] = (double)(cairn_now_ns() - s0) / 1e6;
                    continue;
                }
                cairn_tier_clear_fast(t);
                cairn_tier_reset_stats(t);
                int64_t p0 = cairn_now_ns();
                cairn_tier_prefetch(t, q0 + i * (size_t)dim, tp.fast_bytes, 0, NULL);
                cairn_tier_wait(t);
                pre_sum += (double)(cairn_now_ns() - p0) / 1e6;
                int64_t s0 = cairn_now_ns();
                cairn_tier_search(t, q + i * (size_t)dim, K, def_np, sc, got2, NULL);
                lat_with[i] = (double)(cairn_now_ns() - s0) / 1e6;
                cairn_tier_stats st;
                cairn_tier_get_stats(t, &st);
                hits += st.hits, probed += st.probed, bytes += st.bytes_prefetched;
            }
            differ += memcmp(got2, got + i * K, (size_t)K * sizeof *got2) != 0;
        }
        double p50 = pct(lat, nq, 0.5), p99 = pct(lat, nq, 0.99);
        printf("{\"bench\":\"retrieval\",\"what\":\"lookahead\",\"device\":%d,\"passages\":%zu,"
               "\"fast_tier_bytes\":%zu,\"nprobe\":%zu,\"queries\":%zu,"
               "\"without\":{\"hit_ratio\":0.0,\"p50_ms\":%.3f,\"p99_ms\":%.3f},"
               "\"with\":{\"hit_ratio\":%.3f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
               "\"prefetch_ms_mean\":%.3f,\"prefetched_mib_mean\":%.2f},"
               "\"answers_differ\":%zu}\n",
               device, n, tp.fast_bytes, def_np, nq, p50, p99,
               probed ? (double)hits / (double)probed : 0.0, pct(lat_with, nq, 0.5),
               pct(lat_with, nq, 0.99), pre_sum / (double)nq,
               (double)bytes / (double)nq / 1048576.0, differ);
        fflush(stdout);
        cairn_tier_close(t);
        for (size_t i = 0; i < nq; i++) free(qq[i]);
        free(qq);
        free(q0);
        free(lat_with);
        free(got2);
        if (differ) {
            fprintf(stderr, "bench_retrieval: prefetch changed %zu answers\n", differ);
            return 1;
        }
    }
    remove(tier_path);

    for (size_t i = 0; i < nq; i++) {
        free(sq[i].synopsis);
        free(sq[i].pkg);
    }
    free(sq);
    free(qt);
    free(q);
    free(exact);
    free(kth);
    free(got);
    free(lat);
    free(x);
    free(xid);
    cairn_ivf_close(ivf);
    cairn_docstore_close(ds);
    cairn_embed_close(e);
    return 0;
}
