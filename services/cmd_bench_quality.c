/*
 * services/cmd_bench_quality.c — `cairn bench retrieval-quality`: how often each search mode
 * finds the passage that answers a question, and how long it takes.
 *
 * The questions (tests/bench/retrieval/questions.jsonl) are written for the default corpus,
 * each with the Debian package whose description answers it, and split into a train and a test
 * half. A question is a hit at rank r when the r-th passage returned belongs to its package
 * (metadata "package"); hit@1, hit@4, hit@10 and MRR (over the first 10 passages; 0 beyond)
 * are reported per mode. Every package must have a passage in the index: a question whose
 * package is missing fails the run, since the index then is not the whole corpus.
 *
 * Latency: each question is asked in every mode, the modes in rotating order so that none
 * always runs on a warmer cache, R times (--repeat); a mode's time is the whole retrieval as
 * /v1/retrieve runs it (embedding the query for dense and hybrid, then the search).
 *
 * --fit evaluates the training half instead, over a grid of lexical title weights and fusion
 * parameters, and prints the best (docs/RETRIEVAL.md): what the defaults in retrieval/lexical.c
 * and retrieval/fuse.c were set from. The test half is never looked at by --fit.
 */
#include "services/cmd_bench_quality.h"

#include "common/clock.h"
#include "common/json.h"
#include "retrieval/fuse.h"
#include "retrieval/index.h"
#include "retrieval/tier.h"
#include "services/rag.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *const cairn_cmd_bench_quality_usage =
    "usage: cairn bench retrieval-quality [--questions FILE] [--split test|train|all]\n"
    "                                     [--dir DIR] [--data-dir DIR] [--model FILE]\n"
    "                                     [--threads T] [--repeat R] [--fit]\n\n"
    "Asks every question of the split (default test) in each search mode (dense, lexical,\n"
    "hybrid) and prints per mode hit@1, hit@4, hit@10, MRR and the p50/p90 latency as JSON\n"
    "lines. The index must hold the whole default corpus (cairn index --full --dir DIR).\n\n"
    "  --questions FILE  JSON lines {id, split, package, question}\n"
    "                    (default tests/bench/retrieval/questions.jsonl)\n"
    "  --dir DIR         index directory (default DATA/index-full)\n"
    "  --repeat R        times each question is asked per mode for the latency (default 3)\n"
    "  --fit             fit the lexical title weight and the fusion on the train split and\n"
    "                    print the grid's best (the test split is not read)\n";

#define MAX_Q 1024
#define LIST 100 /* passages per list when fitting */

typedef struct question {
    char *text, *package;
    int train;
} question;

typedef struct bench {
    question q[MAX_Q];
    int n;
} bench;

/* ---- Questions -------------------------------------------------------------------------- */

static int load_questions(bench *b, const char *path, const char *split)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cairn bench retrieval-quality: %s: %s\n", path, strerror(errno));
        return 1;
    }
    char line[8192];
    int no = 0, rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        no++;
        if (line[0] == '\n') continue;
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        const char *sp = NULL, *pkg = NULL, *text = NULL;
        cairn_error err = {0};
        static const char *const allowed[] = {"id", "split", "package", "question", NULL};
        int64_t id = 0;
        if (!o) cairn_errorf(&err, CAIRN_EFORMAT, "not JSON: %s", je.text);
        else if (cairn_json_check_keys(o, NULL, allowed, &err) ||
                 cairn_json_get_int(o, "id", &id, 1, 1000000, true, &err) ||
                 cairn_json_get_string(o, "split", &sp, NULL, 4, 5, true, &err) ||
                 cairn_json_get_string(o, "package", &pkg, NULL, 1, 128, true, &err) ||
                 cairn_json_get_string(o, "question", &text, NULL, 1, 2000, true, &err))
            ;
        else if (strcmp(sp, "train") && strcmp(sp, "test"))
            cairn_errorf(&err, CAIRN_EINVAL, "split: '%s' is not train or test", sp);
        if (err.msg[0]) {
            fprintf(stderr, "cairn bench retrieval-quality: %s:%d: %s\n", path, no, err.msg);
            rc = 1;
        } else if (!strcmp(split, "all") || !strcmp(split, sp)) {
            if (b->n == MAX_Q) {
                fprintf(stderr, "cairn bench retrieval-quality: %s: more than %d questions\n",
                        path, MAX_Q);
                rc = 1;
            } else {
                b->q[b->n++] = (question){strdup(text), strdup(pkg), !strcmp(sp, "train")};
            }
        }
        json_decref(o);
    }
    fclose(f);
    if (!rc && b->n == 0) {
        fprintf(stderr, "cairn bench retrieval-quality: %s has no %s questions\n", path, split);
        rc = 1;
    }
    return rc;
}

/* Every question's package must have a passage in the index. */
typedef struct pkg_check {
    bench *b;
    char *seen; /* per question */
} pkg_check;

static int check_visit(void *ctx, const cairn_doc *d)
{
    pkg_check *c = ctx;
    json_t *m = json_loadb(d->meta, d->meta_len, 0, NULL);
    const char *p = json_string_value(json_object_get(m, "package"));
    for (int i = 0; p && i < c->b->n; i++)
        if (!c->seen[i] && !strcmp(c->b->q[i].package, p)) c->seen[i] = 1;
    json_decref(m);
    return 0;
}

static int check_packages(bench *b, cairn_rag *r)
{
    pkg_check c = {b, calloc((size_t)b->n, 1)};
    if (!c.seen) return 1;
    cairn_rag_scan(r, 0, true, check_visit, &c);
    int missing = 0;
    for (int i = 0; i < b->n; i++)
        if (!c.seen[i]) {
            fprintf(stderr, "cairn bench retrieval-quality: no passage of package %s in the "
                            "index (question: %s)\n",
                    b->q[i].package, b->q[i].text);
            missing++;
        }
    free(c.seen);
    if (missing)
        fprintf(stderr, "cairn bench retrieval-quality: %d packages missing: is the index the "
                        "whole default corpus (cairn index --full)?\n",
                missing);
    return missing ? 1 : 0;
}

/* ---- Scoring ------------------------------------------------------------------------------ */

typedef struct score {
    int n, hit1, hit4, hit10;
    double rr;
} score;

/* pkgs[0..n): the packages of the passages returned, best first. */
static void score_add(score *s, const char *want, const char *const *pkgs, int n)
{
    int rank = 0;
    for (int i = 0; i < n && i < 10 && !rank; i++)
        if (pkgs[i] && !strcmp(pkgs[i], want)) rank = i + 1;
    s->n++;
    s->hit1 += rank == 1;
    s->hit4 += rank >= 1 && rank <= 4;
    s->hit10 += rank >= 1;
    s->rr += rank ? 1.0 / rank : 0.0;
}

static double objective(const score *s)
{
    /* every figure counts alike, so that no one of them is bought with another */
    return ((double)s->hit1 + s->hit4 + s->hit10) / s->n + s->rr / s->n;
}

/* A hit's package, or NULL. Malloc'ed. */
static char *package_of(const cairn_rag_hit *h)
{
    json_t *m = json_loads(h->meta, 0, NULL);
    const char *p = json_string_value(json_object_get(m, "package"));
    char *out = p ? strdup(p) : NULL;
    json_decref(m);
    return out;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p)
{
    if (n == 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    int i = (int)ceil(p * n) - 1;
    return v[i < 0 ? 0 : i];
}

/* ---- Evaluation --------------------------------------------------------------------------- */

/* One retrieval as /v1/retrieve runs it; *secs gets its time. Fills pkgs (malloc'ed). */
static int retrieve(cairn_rag *r, cairn_search_mode mode, const char *text, int k, float *q,
                    char **pkgs, int *n, double *secs, double *search_secs)
{
    cairn_rag_hit hits[LIST];
    cairn_error err = {0};
    double t0 = cairn_now_sec(), embed_s = 0;
    cairn_rag_query rq = {.mode = mode, .text = text, .k = k};
    if (cairn_rag_retrieve(r, &rq, q, &embed_s, hits, n, NULL, &err)) {
        fprintf(stderr, "cairn bench retrieval-quality: search: %s\n", err.msg);
        return 1;
    }
    double t2 = cairn_now_sec(), t1 = t0 + embed_s;
    *secs = t2 - t0;
    if (search_secs) *search_secs = t2 - t1;
    for (int i = 0; i < *n; i++) pkgs[i] = package_of(&hits[i]);
    cairn_rag_hits_free(hits, *n);
    return 0;
}

static void free_pkgs(char **p, int n)
{
    for (int i = 0; i < n; i++) free(p[i]);
}

static int evaluate(bench *b, cairn_rag *r, const char *split, int repeat)
{
    score s[3] = {{0}};
    int nt = b->n * repeat;
    double *lat[3], *srch[3];
    for (int m = 0; m < 3; m++) {
        lat[m] = calloc((size_t)nt, sizeof(double));
        srch[m] = calloc((size_t)nt, sizeof(double));
    }
    float *q = malloc((size_t)cairn_rag_dim(r) * sizeof *q);
    int rc = q ? 0 : 1, at = 0;
    for (int rep = 0; !rc && rep < repeat; rep++)
        for (int i = 0; !rc && i < b->n; i++, at++)
            for (int j = 0; !rc && j < 3; j++) {
                int m = (i + rep + j) % 3; /* rotate which mode goes first */
                char *pkgs[10] = {0};
                int n = 0;
                rc = retrieve(r, (cairn_search_mode)m, b->q[i].text, 10, q, pkgs, &n,
                              &lat[m][at], &srch[m][at]);
                if (!rc && rep == 0)
                    score_add(&s[m], b->q[i].package, (const char *const *)pkgs, n);
                free_pkgs(pkgs, n);
            }
    cairn_fuse_params fp = cairn_fuse_default_params();
    cairn_lex_params lp = cairn_lex_default_params();
    for (int m = 0; !rc && m < 3; m++) {
        double p50 = pct(lat[m], nt, 0.5), p90 = pct(lat[m], nt, 0.9);
        double s50 = pct(srch[m], nt, 0.5);
        printf("{\"bench\":\"retrieval_quality\",\"mode\":\"%s\",\"split\":\"%s\","
               "\"questions\":%d,\"passages\":%zu,\"hit1\":%.4f,\"hit4\":%.4f,\"hit10\":%.4f,"
               "\"mrr\":%.4f,\"hits\":[%d,%d,%d],\"p50_ms\":%.3f,\"p90_ms\":%.3f,"
               "\"search_p50_ms\":%.3f,\"timings\":%d,\"w_title\":%g,\"common_df\":%g,"
               "\"method\":\"%s\",\"w_dense\":%g,\"w_lex\":%g,\"k_rank\":%g,\"depth\":%d}\n",
               cairn_search_mode_name((cairn_search_mode)m), split, s[m].n,
               cairn_rag_count(r), (double)s[m].hit1 / s[m].n, (double)s[m].hit4 / s[m].n,
               (double)s[m].hit10 / s[m].n, s[m].rr / s[m].n, s[m].hit1, s[m].hit4, s[m].hit10,
               p50 * 1e3, p90 * 1e3, s50 * 1e3, nt, lp.w_title, lp.common_df,
               cairn_fuse_method_name(fp.method), fp.w_dense, fp.w_lex, fp.k_rank,
               fp.depth);
    }
    for (int m = 0; m < 3; m++) {
        free(lat[m]);
        free(srch[m]);
    }
    free(q);
    return rc;
}

/* ---- Fitting ------------------------------------------------------------------------------ */

typedef struct lists {
    uint64_t ids[LIST];
    float scores[LIST];
    char *pkg[LIST];
    int n;
} lists;

static const char *pkg_for(const lists *d, const lists *l, uint64_t id)
{
    for (int i = 0; i < d->n; i++)
        if (d->ids[i] == id) return d->pkg[i];
    for (int i = 0; i < l->n; i++)
        if (l->ids[i] == id) return l->pkg[i];
    return NULL;
}

static int fetch_list(cairn_rag *r, cairn_search_mode m, const char *text, const float *q,
                      lists *out)
{
    cairn_rag_hit hits[LIST];
    cairn_error err = {0};
    cairn_rag_query rq = {.mode = m, .text = text, .q = q, .k = LIST};
    if (cairn_rag_query_run(r, &rq, hits, &out->n, NULL, &err)) {
        fprintf(stderr, "cairn bench retrieval-quality: %s\n", err.msg);
        return 1;
    }
    for (int i = 0; i < out->n; i++) {
        out->ids[i] = hits[i].id;
        out->scores[i] = hits[i].score;
        out->pkg[i] = package_of(&hits[i]);
    }
    cairn_rag_hits_free(hits, out->n);
    return 0;
}

static void print_score(const char *what, const score *s, const char *extra)
{
    printf("{\"bench\":\"retrieval_fit\",\"what\":\"%s\",\"split\":\"train\",\"questions\":%d,"
           "\"hit1\":%.4f,\"hit4\":%.4f,\"hit10\":%.4f,\"mrr\":%.4f%s}\n",
           what, s->n, (double)s->hit1 / s->n, (double)s->hit4 / s->n, (double)s->hit10 / s->n,
           s->rr / s->n, extra);
}

static int fit(bench *b, const cairn_rag_params *base)
{
    static const double w_titles[] = {1, 2, 4, 8, 16, 32};
    static const double common_dfs[] = {1, 0.1, 0.05, 0.02};
    static const double ratios[] = {0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6}; /* w_lex / w_dense */
    static const double k_ranks[] = {1, 2, 5, 10, 20, 40, 60, 100};
    static const int depths[] = {10, 20, 50, 100};
    enum { NT = 6, NC = 4, NW = NT * NC }; /* lexical configurations: title weight x common_df */
    lists *dense = calloc((size_t)b->n, sizeof *dense);
    lists *lex = calloc((size_t)b->n * NW, sizeof *lex);
    float *q = malloc(4096 * sizeof *q);
    int rc = dense && lex && q ? 0 : 1;
    for (int w = 0; !rc && w < NW; w++) {
        cairn_rag_params p = *base;
        p.lex.w_title = w_titles[w / NC];
        p.lex.common_df = common_dfs[w % NC];
        cairn_rag *r = NULL;
        cairn_error err = {0};
        if (cairn_rag_open(&r, &p, NULL, &err)) {
            fprintf(stderr, "cairn bench retrieval-quality: %s\n", err.msg);
            rc = 1;
            break;
        }
        for (int i = 0; !rc && i < b->n; i++) {
            if (w == 0) {
                rc = cairn_rag_embed(r, b->q[i].text, q, &err);
                if (!rc) rc = fetch_list(r, CAIRN_SEARCH_DENSE, b->q[i].text, q, &dense[i]);
            }
            if (!rc) rc = fetch_list(r, CAIRN_SEARCH_LEXICAL, b->q[i].text, NULL,
                                     &lex[(size_t)w * b->n + i]);
        }
        cairn_rag_close(r);
    }
    score sd = {0};
    for (int i = 0; !rc && i < b->n; i++)
        score_add(&sd, b->q[i].package, (const char *const *)dense[i].pkg, dense[i].n);
    if (!rc) print_score("dense", &sd, "");
    double best = -1;
    score best_s = {0};
    cairn_fuse_params best_p = {0};
    int best_w = 0;
    cairn_fused fused[10];
    for (int w = 0; !rc && w < NW; w++) {
        score sl = {0};
        const lists *lw = &lex[(size_t)w * b->n];
        for (int i = 0; i < b->n; i++)
            score_add(&sl, b->q[i].package, (const char *const *)lw[i].pkg, lw[i].n);
        char extra[64];
        snprintf(extra, sizeof extra, ",\"w_title\":%g,\"common_df\":%g", w_titles[w / NC],
                 common_dfs[w % NC]);
        print_score("lexical", &sl, extra);
        for (int meth = 0; meth < 2; meth++)
        for (size_t a = 0; a < sizeof ratios / sizeof *ratios; a++)
            for (size_t kr = 0; kr < (meth ? 1 : sizeof k_ranks / sizeof *k_ranks); kr++)
                for (size_t d = 0; d < sizeof depths / sizeof *depths; d++) {
                    cairn_fuse_params fp = {.method = (cairn_fuse_method)meth,
                                            .w_dense = 1,
                                            .w_lex = ratios[a],
                                            .k_rank = meth ? 0 : k_ranks[kr],
                                            .depth = depths[d]};
                    score s = {0};
                    for (int i = 0; i < b->n; i++) {
                        uint64_t di[LIST], li[LIST];
                        for (int j = 0; j < dense[i].n; j++) di[j] = dense[i].ids[j];
                        for (int j = 0; j < lw[i].n; j++) li[j] = lw[i].ids[j];
                        int n = cairn_fuse(di, dense[i].scores, dense[i].n, li, lw[i].scores,
                                           lw[i].n, &fp, fused, 10);
                        const char *pk[10];
                        for (int j = 0; j < n; j++) pk[j] = pkg_for(&dense[i], &lw[i], fused[j].id);
                        score_add(&s, b->q[i].package, pk, n);
                    }
                    double o = objective(&s);
                    if (o > best + 1e-12) {
                        best = o;
                        best_s = s;
                        best_p = fp;
                        best_w = w;
                    }
                }
    }
    if (!rc && getenv("CAIRN_FIT_VERBOSE")) { /* each train question's ranks, best config */
        const lists *lw = &lex[(size_t)best_w * b->n];
        for (int i = 0; i < b->n; i++) {
            uint64_t di[LIST], li[LIST];
            for (int j = 0; j < dense[i].n; j++) di[j] = dense[i].ids[j];
            for (int j = 0; j < lw[i].n; j++) li[j] = lw[i].ids[j];
            int n = cairn_fuse(di, dense[i].scores, dense[i].n, li, lw[i].scores, lw[i].n,
                               &best_p, fused, 10),
                rf = 0, rd = 0, rl = 0;
            for (int j = 0; j < n && !rf; j++) {
                const char *pk = pkg_for(&dense[i], &lw[i], fused[j].id);
                if (pk && !strcmp(pk, b->q[i].package)) rf = j + 1;
            }
            for (int j = 0; j < dense[i].n && !rd; j++)
                if (dense[i].pkg[j] && !strcmp(dense[i].pkg[j], b->q[i].package)) rd = j + 1;
            for (int j = 0; j < lw[i].n && !rl; j++)
                if (lw[i].pkg[j] && !strcmp(lw[i].pkg[j], b->q[i].package)) rl = j + 1;
            fprintf(stderr, "fit: hybrid %2d dense %3d lexical %3d  %s | %s | top: %s, %s\n", rf,
                    rd, rl, b->q[i].package, b->q[i].text, lw[i].n ? lw[i].pkg[0] : "-",
                    dense[i].n ? dense[i].pkg[0] : "-");
        }
    }
    if (!rc) {
        char extra[160];
        snprintf(extra, sizeof extra,
                 ",\"w_title\":%g,\"common_df\":%g,\"method\":\"%s\",\"w_dense\":%g,"
                 "\"w_lex\":%g,\"k_rank\":%g,\"depth\":%d",
                 w_titles[best_w / NC], common_dfs[best_w % NC],
                 cairn_fuse_method_name(best_p.method), best_p.w_dense, best_p.w_lex,
                 best_p.k_rank, best_p.depth);
        print_score("hybrid_best", &best_s, extra);
    }
    for (int i = 0; dense && i < b->n; i++) free_pkgs(dense[i].pkg, dense[i].n);
    for (int i = 0; lex && i < b->n * NW; i++) free_pkgs(lex[i].pkg, lex[i].n);
    free(dense);
    free(lex);
    free(q);
    return rc;
}

/* ---- Command ------------------------------------------------------------------------------ */

int cairn_cmd_bench_quality(int argc, char **argv)
{
    const char *questions = "tests/bench/retrieval/questions.jsonl", *split = NULL;
    const char *dir = NULL, *data = "./data", *model = NULL;
    long threads = 0, repeat = 3;
    int do_fit = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long *num = NULL;
        long lo = 0, hi = 0;
        if (!strcmp(a, "--fit")) {
            do_fit = 1;
            continue;
        }
        if (!v) goto usage;
        if (!strcmp(a, "--questions")) questions = v;
        else if (!strcmp(a, "--split")) split = v;
        else if (!strcmp(a, "--dir")) dir = v;
        else if (!strcmp(a, "--data-dir")) data = v;
        else if (!strcmp(a, "--model") || !strcmp(a, "-m")) model = v;
        else if (!strcmp(a, "--threads")) num = &threads, lo = 0, hi = 1024;
        else if (!strcmp(a, "--repeat")) num = &repeat, lo = 1, hi = 100;
        else goto usage;
        if (num) {
            char *end;
            errno = 0;
            *num = strtol(v, &end, 10);
            if (errno || end == v || *end || *num < lo || *num > hi) {
                fprintf(stderr, "cairn bench retrieval-quality: %s wants %ld..%ld, got '%s'\n", a,
                        lo, hi, v);
                return 2;
            }
        }
        i++;
    }
    if (!split) split = do_fit ? "train" : "test";
    if (strcmp(split, "test") && strcmp(split, "train") && strcmp(split, "all")) goto usage;
    if (do_fit && strcmp(split, "train")) {
        fprintf(stderr, "cairn bench retrieval-quality: --fit reads the train split only\n");
        return 2;
    }
    char dir_buf[4096], model_buf[4096];
    if (!dir) {
        snprintf(dir_buf, sizeof dir_buf, "%s/index-full", data);
        dir = dir_buf;
    }
    if (!model) {
        snprintf(model_buf, sizeof model_buf, "%s/models/all-minilm-l6-v2.gguf", data);
        model = model_buf;
    }
    cairn_index_paths ip;
    cairn_error err = {0};
    struct stat sb;
    if (cairn_index_paths_for(&ip, dir, &err)) {
        fprintf(stderr, "cairn bench retrieval-quality: %s\n", err.msg);
        return 2;
    }
    if (stat(ip.docs, &sb) != 0 || stat(ip.ivf, &sb) != 0) {
        fprintf(stderr,
                "cairn bench retrieval-quality: no index in %s: build it with cairn index --full "
                "--dir %s (about 20 minutes on 2 cores)\n",
                dir, dir);
        return 1;
    }
    bench *b = calloc(1, sizeof *b);
    if (!b || load_questions(b, questions, split)) {
        free(b);
        return 1;
    }
    cairn_embed *e = NULL;
    cairn_embed_params ep = cairn_embed_default_params();
    ep.n_threads = (int)threads;
    int status = 1;
    cairn_rag *r = NULL;
    if (cairn_embed_open(&e, model, &ep, &err)) {
        fprintf(stderr, "cairn bench retrieval-quality: embedder %s: %s\n", model, err.msg);
        goto out;
    }
    cairn_rag_params rp = cairn_rag_default_params();
    rp.dir = dir;
    rp.embed = e;
    if (cairn_rag_open(&r, &rp, NULL, &err)) {
        fprintf(stderr, "cairn bench retrieval-quality: index %s: %s\n", dir, err.msg);
        goto out;
    }
    if (check_packages(b, r)) goto out;
    if (do_fit) {
        cairn_rag_close(r);
        r = NULL;
        status = fit(b, &rp);
    } else {
        status = evaluate(b, r, split, (int)repeat);
    }
    if (!status) status = fflush(stdout) ? 1 : 0;
out:
    cairn_rag_close(r);
    cairn_embed_close(e);
    for (int i = 0; i < b->n; i++) {
        free(b->q[i].text);
        free(b->q[i].package);
    }
    free(b);
    return status;
usage:
    fputs(cairn_cmd_bench_quality_usage, stderr);
    return 2;
}
