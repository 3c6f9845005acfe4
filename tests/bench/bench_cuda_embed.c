/*
 * tests/bench/bench_cuda_embed.c — query embedding on the GPU beside the CPU (issue 19: the
 * first clusters should start moving about a millisecond after the request arrives, so the
 * question's embedding must take well under that).
 *
 * Usage: bench_cuda_embed [--embed-device N] [--model PATH] [--iters I] [--threads T]
 *
 * One JSON line per figure:
 *   - embed_query, once on the CPU (n_threads T, default the CPUs online; BF16 AMX tiles where
 *     the CPU has them, as cairnd embeds) and once on GPU N (default 0): one ~20-token query
 *     (the question below cut to 20 tokens with [CLS] and [SEP]), batch 1, I timed calls
 *     (default 1000 on the GPU, 200 on the CPU) after 20 untimed ones; p50, p99 and mean in
 *     ms, tokenization included (it runs on the calling thread either way);
 *   - embed_batch, each device: 32 passages of ~128 tokens in one call, passages/s (median of
 *     5 calls after one warm-up).
 * The model: --model, else $CAIRN_DATA/models/all-minilm-l6-v2.gguf (./data when unset), else
 * (the GPU machine, where the 90 MB file is not carried) all-MiniLM-L6-v2's shapes with random
 * weights (tests/unit/synth_bert.h): the same work, so the same time; "model" says which.
 */
#include "common/clock.h"
#include "common/error.h"
#include "common/gpu.h"
#include "retrieval/embed.h"
#include "tests/unit/synth_bert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QUERY_TOKENS 20
#define BATCH        32
#define WARMUP       20

static const char QUESTION[] =
    "how does lookahead retrieval prefetch the ivf clusters that a question will probe while "
    "the language model is still rewriting it on the gpu and what does that save";

/* A message fit for a JSON string: double quotes and backslashes become single quotes. */
static const char *json_safe(char *msg)
{
    for (char *c = msg; *c; c++)
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) *c = '\'';
    return msg;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *sorted, int n, double p)
{
    int i = (int)(p * (n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

/* The longest prefix of QUESTION, in whole words, of at most QUERY_TOKENS tokens. */
static void make_query(const cairn_embed *e, char *q, size_t cap, int *tokens)
{
    const cairn_wordpiece *wp = cairn_embed_tokenizer(e);
    int32_t ids[512];
    size_t best = 0;
    *tokens = 0;
    for (size_t end = 1; end <= sizeof QUESTION - 1 && end < cap; end++) {
        if (QUESTION[end] != ' ' && QUESTION[end] != 0) continue;
        int n = cairn_wordpiece_encode(wp, QUESTION, end, ids, 512);
        if (n > QUERY_TOKENS) break;
        best = end;
        *tokens = n;
    }
    memcpy(q, QUESTION, best);
    q[best] = 0;
}

static int run(const char *model, const char *model_name, int device, int threads, int iters)
{
    cairn_embed_params p = cairn_embed_default_params();
    p.device = device;
    if (threads > 0) p.n_threads = threads;
    cairn_embed *e = NULL;
    cairn_error err;
    char where[160];
    if (device >= 0) {
        char desc[128];
        if (cairn_gpu_describe(device, desc, sizeof desc)) snprintf(desc, sizeof desc, "?");
        snprintf(where, sizeof where, "\"device\":%d,\"card\":\"%s\"", device, desc);
    } else {
        snprintf(where, sizeof where, "\"device\":-1,\"threads\":%d", threads);
    }
    if (cairn_embed_open(&e, model, &p, &err)) {
        printf("{\"bench\":\"embed_query\",%s,\"error\":\"%s\"}\n", where, json_safe(err.msg));
        return 1;
    }
    if (device < 0)
        snprintf(where, sizeof where, "\"device\":-1,\"threads\":%d,\"amx\":%d",
                 cairn_embed_threads(e), cairn_embed_amx(e));
    int dim = cairn_embed_dim(e), tokens;
    char q[sizeof QUESTION];
    make_query(e, q, sizeof q, &tokens);
    const char *texts[BATCH];
    texts[0] = q;
    float *out = malloc((size_t)BATCH * dim * sizeof(float));
    double *ms = malloc((size_t)iters * sizeof(double));
    if (!out || !ms) {
        fprintf(stderr, "bench_cuda_embed: out of memory\n");
        exit(1);
    }
    int rc = 0;
    for (int i = 0; i < WARMUP + iters && rc == 0; i++) {
        int64_t t0 = cairn_now_ns();
        rc = cairn_embed_batch(e, texts, 1, out, &err);
        if (i >= WARMUP) ms[i - WARMUP] = (double)(cairn_now_ns() - t0) / 1e6;
    }
    if (rc) {
        printf("{\"bench\":\"embed_query\",%s,\"error\":\"%s\"}\n", where, json_safe(err.msg));
        return 1;
    }
    double sum = 0;
    for (int i = 0; i < iters; i++)
        sum += ms[i];
    qsort(ms, (size_t)iters, sizeof *ms, cmp_double);
    printf("{\"bench\":\"embed_query\",%s,\"model\":\"%s\",\"tokens\":%d,\"batch\":1,"
           "\"iters\":%d,\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"mean_ms\":%.4f,\"min_ms\":%.4f}\n",
           where, model_name, tokens, iters, pct(ms, iters, 0.5), pct(ms, iters, 0.99), sum / iters,
           ms[0]);
    fflush(stdout);

    /* 32 passages of ~128 tokens: the question repeated, cut at different words */
    static char passages[BATCH][1200];
    for (int i = 0; i < BATCH; i++) {
        size_t n = 0;
        for (int r = 0; r < 4 && n + sizeof QUESTION < sizeof passages[i]; r++) {
            memcpy(passages[i] + n, QUESTION + (size_t)(i * 3) % 40,
                   sizeof QUESTION - 1 - (size_t)(i * 3) % 40);
            n += sizeof QUESTION - 1 - (size_t)(i * 3) % 40;
            passages[i][n++] = ' ';
        }
        passages[i][n] = 0;
        texts[i] = passages[i];
    }
    double runs[6];
    for (int r = 0; r < 6 && rc == 0; r++) {
        int64_t t0 = cairn_now_ns();
        rc = cairn_embed_batch(e, texts, BATCH, out, &err);
        runs[r] = (double)(cairn_now_ns() - t0) / 1e9;
    }
    if (rc) {
        printf("{\"bench\":\"embed_batch\",%s,\"error\":\"%s\"}\n", where, json_safe(err.msg));
        return 1;
    }
    qsort(runs + 1, 5, sizeof *runs, cmp_double);
    printf("{\"bench\":\"embed_batch\",%s,\"model\":\"%s\",\"batch\":%d,\"seconds\":%.5f,"
           "\"passages_per_s\":%.1f}\n",
           where, model_name, BATCH, runs[3], BATCH / runs[3]);
    fflush(stdout);
    free(out);
    free(ms);
    cairn_embed_close(e);
    return 0;
}

int main(int argc, char **argv)
{
    int device = 0, iters = 0, threads = 0;
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "--embed-device") || !strcmp(argv[i], "--device")) && i + 1 < argc)
            device = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc)
            iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_cuda_embed [--embed-device N] [--model PATH] "
                            "[--iters I] [--threads T]\n");
            return 2;
        }
    }
    if (device < 0 || iters < 0 || threads < 0) {
        fprintf(stderr, "bench_cuda_embed: --embed-device, --iters and --threads are >= 0\n");
        return 2;
    }
    char path[4096], synth[64] = "";
    const char *name = "all-minilm-l6-v2";
    if (!model) {
        const char *d = getenv("CAIRN_DATA");
        snprintf(path, sizeof path, "%s/models/all-minilm-l6-v2.gguf", d && *d ? d : "data");
        model = path;
    }
    if (access(model, R_OK) != 0) {
        snprintf(synth, sizeof synth, "/tmp/cairn-bench-embed-XXXXXX");
        int fd = mkstemp(synth);
        if (fd >= 0) close(fd);
        cairn_error err;
        if (fd < 0 || synth_bert_write(synth, 19, &err)) {
            fprintf(stderr,
                    "bench_cuda_embed: %s is missing and no synthetic model could be "
                    "written\n",
                    model);
            return 1;
        }
        fprintf(stderr,
                "bench_cuda_embed: %s is missing: all-MiniLM-L6-v2's shapes with "
                "random weights instead\n",
                model);
        model = synth;
        name = "synthetic-minilm-l6-shapes";
    }
    int rc = run(model, name, -1, threads, iters ? iters : 200);
    rc |= run(model, name, device, 0, iters ? iters : 1000);
    if (synth[0]) unlink(synth);
    return rc;
}
