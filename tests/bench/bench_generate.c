/*
 * tests/bench/bench_generate.c — CPU generation throughput on the real model.
 *
 * Figures (each the median of 3 timed runs after one warm-up run), one JSON line each:
 *   - prompt processing: one 512-token prompt prefilled (tok/s = 512 / time to its first token);
 *   - generation, 1 stream: 64 greedy tokens after a short prompt; tok/s counts the 63 tokens
 *     after the first over the time from the first token to the last (prefill excluded);
 *   - generation, 8 streams: 8 sequences with different short prompts in one engine, driven by
 *     cairn_engine_run (continuous batching); aggregate tok/s = 8 x 63 tokens over the time from
 *     the moment every sequence has its first token to the end.
 * Stop tokens are not set, so every sequence generates exactly 64 tokens.
 * Also: read bandwidth over a 256 MiB buffer (1 and 2 threads, best of 5 passes) and the decode
 * bound = bandwidth / weight bytes read per token (see weight_bytes_per_token()).
 *
 * Each figure also reports cpu_tok_s: the same tokens over the process CPU time of the same
 * interval. With CAIRN_BENCH_THREADS=1 that figure hardly moves when other jobs load the
 * machine (waiting for a core is not counted), which makes it the comparison to trust on a
 * shared VM; scripts/bench-llamacpp reports the same.
 *
 * The prompts are built by a rule scripts/bench-llamacpp repeats (the tokenizers agree).
 * Usage: bench_generate [--serve] [MODEL]  (default $CAIRN_BENCH_MODEL, else
 * $CAIRN_DATA/models/gemma-3-270m-q4_k_m.gguf, with ./data when CAIRN_DATA is unset).
 *
 * --serve: the model loaded and the engine open, one timed run per command read from stdin
 * ("prompt", "gen1", "gen8"; a run not timed first is the caller's to ask for), each answered by
 * one JSON line {"bench":"generate_run",...}; at end of input, the bandwidth and bound lines.
 * scripts/bench-llamacpp drives it so, alternating cairn's runs with llama.cpp's: on a shared
 * machine a load change then lands on both sides of a figure, not on one.
 * Threads: $CAIRN_BENCH_THREADS, default 2 (the 2-core machine's figure).
 */
#include "common/clock.h"
#include "common/error.h"
#include "generation/engine.h"
#include "generation/model.h"
#include "generation/tokenizer.h"
#include "proto/gguf.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N_THREADS 2 /* the most threads; the run uses n_threads */
#define PP_TOKENS 512
#define GEN_TOKENS 64
#define N_STREAMS 8
#define RUNS 3
#define BW_BYTES ((size_t)256 << 20)

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median3(const double *v)
{
    double s[RUNS];
    memcpy(s, v, sizeof s);
    qsort(s, RUNS, sizeof s[0], cmp_double);
    return s[RUNS / 2];
}

static int n_threads = N_THREADS;

static int64_t cpu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void print_figure(const char *what, int streams, const double *runs, const double *cpu)
{
    printf("{\"bench\":\"generate\",\"impl\":\"cairn\",\"what\":\"%s\",\"streams\":%d,"
           "\"threads\":%d,\"tok_s\":%.2f,\"runs\":[%.2f,%.2f,%.2f],\"cpu_tok_s\":%.2f}\n",
           what, streams, n_threads, median3(runs), runs[0], runs[1], runs[2], median3(cpu));
    fflush(stdout);
}

/* ---- timing callback ---- */

typedef struct {
    int n_seqs;
    int got_first;       /* sequences that have their first token */
    int64_t t_all_first; /* when the last of them got it */
    int64_t t_last;      /* the latest token */
    int64_t c_all_first, c_last; /* the same moments in process CPU time */
    int tokens;          /* all tokens generated */
    int ids[N_STREAMS];  /* engine ids of the sequences */
    unsigned char first[N_STREAMS];
} timing;

static int on_token(void *user, int seq_id, int32_t token, bool last)
{
    (void)token;
    (void)last;
    timing *t = user;
    int64_t now = cairn_now_ns();
    int slot = 0;
    while (slot < t->n_seqs - 1 && t->ids[slot] != seq_id) slot++;
    if (!t->first[slot]) {
        t->first[slot] = 1;
        if (++t->got_first == t->n_seqs) {
            t->t_all_first = now;
            t->c_all_first = cpu_now_ns();
        }
    }
    t->tokens++;
    t->t_last = now;
    t->c_last = cpu_now_ns();
    return 0;
}

/* ---- prompts (scripts/bench-llamacpp builds the same text) ---- */

static const char *const animals[] = {"fox", "owl", "cat", "bear", "wolf", "hare", "crow", "deer"};

/* The long prompt's text: numbered sentences, truncated to PP_TOKENS tokens after tokenizing. */
static char *long_text(void)
{
    size_t cap = 64 << 10, len = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    s[0] = '\0';
    for (int i = 0; i < 300; i++)
        len += (size_t)snprintf(s + len, cap - len,
                                "%sSentence %d: the quick brown %s number %d jumps over the lazy "
                                "dog near the river.",
                                i ? " " : "", i, animals[i % 8], i * 7 + 3);
    return s;
}

static void stream_text(int i, char *buf, size_t cap)
{
    snprintf(buf, cap,
             "Story %d: Once upon a time, in a small village by the sea, there lived a %s who "
             "loved to",
             i, animals[i % 8]);
}

static int encode(const cairn_tok *tok, const char *text, int32_t *ids, int cap)
{
    cairn_error err = {0};
    int n = cairn_tok_encode(tok, text, strlen(text), ids, cap, CAIRN_TOK_ADD_SPECIAL, &err);
    if (n < 0) fprintf(stderr, "bench_generate: tokenizing: %s\n", n < -1 ? "prompt too long" : err.msg);
    return n;
}

/* ---- one timed run: adds the prompts, runs the engine, returns tok/s (< 0 on error) ---- */

typedef enum { FIG_PP, FIG_GEN } figure;

static double run_once(cairn_engine *eng, figure fig, int32_t *const *prompts, const int *n_prompt,
                       int n_seqs, double *cpu_tok_s)
{
    cairn_error err = {0};
    timing t = {.n_seqs = n_seqs};
    int *ids = t.ids;
    cairn_gen_params gp = cairn_gen_default_params();
    gp.max_tokens = fig == FIG_PP ? 1 : GEN_TOKENS;
    gp.on_token = on_token;
    gp.user = &t;
    int64_t t0 = cairn_now_ns(), c0 = cpu_now_ns();
    for (int i = 0; i < n_seqs; i++)
        if (cairn_engine_add(eng, prompts[i], n_prompt[i], &gp, &ids[i], &err)) goto fail;
    if (cairn_engine_run(eng, &err)) goto fail;
    for (int i = 0; i < n_seqs; i++) cairn_engine_release(eng, ids[i]);
    if (fig == FIG_PP) {
        *cpu_tok_s = n_prompt[0] / ((double)(t.c_all_first - c0) / 1e9);
        return n_prompt[0] / ((double)(t.t_all_first - t0) / 1e9);
    }
    if (t.tokens != n_seqs * GEN_TOKENS) {
        fprintf(stderr, "bench_generate: %d tokens generated, expected %d\n", t.tokens,
                n_seqs * GEN_TOKENS);
        return -1;
    }
    *cpu_tok_s = (double)(n_seqs * (GEN_TOKENS - 1)) / ((double)(t.c_last - t.c_all_first) / 1e9);
    return (double)(n_seqs * (GEN_TOKENS - 1)) / ((double)(t.t_last - t.t_all_first) / 1e9);
fail:
    fprintf(stderr, "bench_generate: %s\n", err.msg);
    return -1;
}

/*
 * --serve: one timed run per command line, in the caller's order (see the file comment). An
 * unknown command is answered by an error line, so the caller does not wait on a line that will
 * not come; a failed run ends the loop (the engine's state is then unknown).
 */
static int serve(cairn_engine *eng, int32_t *long_ids, int n_long, int32_t *const *stream_ids,
                 const int *n_stream)
{
    char cmd[64];
    int32_t *pp_prompts[1] = {long_ids};
    while (fgets(cmd, sizeof cmd, stdin)) {
        cmd[strcspn(cmd, "\r\n")] = '\0';
        figure fig;
        int n_seqs;
        const char *what;
        if (!strcmp(cmd, "prompt")) {
            fig = FIG_PP, n_seqs = 1, what = "prompt";
        } else if (!strcmp(cmd, "gen1")) {
            fig = FIG_GEN, n_seqs = 1, what = "generation";
        } else if (!strcmp(cmd, "gen8")) {
            fig = FIG_GEN, n_seqs = N_STREAMS, what = "generation";
        } else {
            printf("{\"bench\":\"generate_run\",\"impl\":\"cairn\",\"error\":\"unknown "
                   "command (prompt, gen1 or gen8)\"}\n");
            fflush(stdout);
            continue;
        }
        double cpu = 0, tps;
        if (fig == FIG_PP)
            tps = run_once(eng, fig, pp_prompts, &n_long, 1, &cpu);
        else
            tps = run_once(eng, fig, stream_ids, n_stream, n_seqs, &cpu);
        if (tps < 0) return -1;
        printf("{\"bench\":\"generate_run\",\"impl\":\"cairn\",\"what\":\"%s\","
               "\"streams\":%d,\"threads\":%d,\"tok_s\":%.3f,\"cpu_tok_s\":%.3f}\n",
               what, n_seqs, n_threads, tps, cpu);
        fflush(stdout);
    }
    return 0;
}

static int measure(cairn_engine *eng, const char *what, figure fig, int32_t *const *prompts,
                   const int *n_prompt, int n_seqs)
{
    double runs[RUNS], cpu[RUNS], warm;
    if (run_once(eng, fig, prompts, n_prompt, n_seqs, &warm) < 0) return -1; /* warm-up */
    for (int r = 0; r < RUNS; r++)
        if ((runs[r] = run_once(eng, fig, prompts, n_prompt, n_seqs, &cpu[r])) < 0) return -1;
    print_figure(what, n_seqs, runs, cpu);
    return 0;
}

/* ---- memory read bandwidth ---- */

typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} bw_part;

static void *bw_read(void *arg)
{
    bw_part *b = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= b->n; i += 4) {
        s0 += b->p[i];
        s1 += b->p[i + 1];
        s2 += b->p[i + 2];
        s3 += b->p[i + 3];
    }
    b->sum = s0 ^ s1 ^ s2 ^ s3;
    return NULL;
}

/* Best of 5 passes over buf with n_threads readers; bytes/s, or -1. */
static double bandwidth(const uint64_t *buf, size_t n_words, int n_threads, uint64_t *sink)
{
    double best = -1;
    for (int pass = 0; pass < 5; pass++) {
        bw_part parts[N_THREADS];
        pthread_t th[N_THREADS];
        size_t per = n_words / (size_t)n_threads;
        int64_t t0 = cairn_now_ns();
        for (int i = 0; i < n_threads; i++) {
            parts[i] = (bw_part){buf + per * (size_t)i, per, 0};
            if (i && pthread_create(&th[i], NULL, bw_read, &parts[i])) return -1;
        }
        bw_read(&parts[0]);
        for (int i = 1; i < n_threads; i++) pthread_join(th[i], NULL);
        double s = (double)(cairn_now_ns() - t0) / 1e9;
        for (int i = 0; i < n_threads; i++) *sink ^= parts[i].sum;
        double bps = (double)(per * (size_t)n_threads * 8) / s;
        if (bps > best) best = bps;
    }
    return best;
}

/*
 * Weight bytes one decode step reads: every tensor of the file once, except that the token
 * embedding table contributes only the one row looked up for the token -- unless the output
 * projection is tied to it (no output.weight), in which case the whole table is read for the
 * logits anyway. For gemma-3 (tied) that is: all tensor bytes + one embedding row.
 */
static double weight_bytes_per_token(const cairn_gguf *g, int *tied, double *embd_bytes)
{
    double total = 0;
    const cairn_gguf_tensor *embd = cairn_gguf_find_tensor(g, "token_embd.weight");
    for (size_t i = 0; i < cairn_gguf_tensor_count(g); i++)
        total += (double)cairn_gguf_tensor_at(g, i)->nbytes;
    *tied = cairn_gguf_find_tensor(g, "output.weight") == NULL;
    *embd_bytes = embd ? (double)embd->nbytes : 0;
    if (!embd) return total;
    double row = (double)embd->nbytes / (double)embd->dims[1];
    return *tied ? total + row : total - (double)embd->nbytes + row;
}

int main(int argc, char **argv)
{
    bool serving = argc > 1 && !strcmp(argv[1], "--serve");
    if (serving) argc--, argv++;
    const char *path = argc > 1 ? argv[1] : getenv("CAIRN_BENCH_MODEL");
    char def[4096];
    if (!path) {
        const char *d = getenv("CAIRN_DATA");
        snprintf(def, sizeof def, "%s/models/gemma-3-270m-q4_k_m.gguf", d && *d ? d : "data");
        path = def;
    }
    cairn_error err = {0};
    cairn_model *model = NULL;
    cairn_tok *tok = NULL;
    cairn_engine *eng = NULL;
    int status = 1;
    char *text = NULL;
    int32_t *long_ids = NULL, *stream_ids[N_STREAMS] = {0};
    int n_stream[N_STREAMS];
    if (cairn_model_open(&model, path, &err) ||
        cairn_tok_open(&tok, cairn_model_gguf(model), &err)) {
        printf("{\"bench\":\"generate\",\"impl\":\"cairn\",\"note\":\"skipped: %s\"}\n",
               "model not available");
        fprintf(stderr, "bench_generate: %s: %s\n", path, err.msg);
        status = 0;
        goto out;
    }
    if (!(text = long_text()) || !(long_ids = malloc(sizeof *long_ids * 65536))) goto out;
    int n_long = encode(tok, text, long_ids, 65536);
    if (n_long < PP_TOKENS) {
        fprintf(stderr, "bench_generate: long prompt has %d tokens, need %d\n", n_long, PP_TOKENS);
        goto out;
    }
    n_long = PP_TOKENS;
    for (int i = 0; i < N_STREAMS; i++) {
        char buf[512];
        stream_text(i, buf, sizeof buf);
        if (!(stream_ids[i] = malloc(sizeof(int32_t) * 600))) goto out;
        if ((n_stream[i] = encode(tok, buf, stream_ids[i], 600)) < 0) goto out;
    }

    const char *nt = getenv("CAIRN_BENCH_THREADS");
    if (nt && atoi(nt) >= 1 && atoi(nt) <= N_THREADS) n_threads = atoi(nt);
    cairn_engine_params ep = cairn_engine_default_params();
    ep.n_threads = n_threads;
    ep.max_seqs = N_STREAMS;
    ep.max_batch_tokens = PP_TOKENS;
    ep.n_ctx = 1024;
    if (cairn_engine_open(&eng, model, &ep, &err)) {
        fprintf(stderr, "bench_generate: %s\n", err.msg);
        goto out;
    }
    int32_t *pp_prompts[1] = {long_ids};
    if (serving) {
        if (serve(eng, long_ids, n_long, stream_ids, n_stream)) goto out;
    } else if (measure(eng, "prompt", FIG_PP, pp_prompts, &n_long, 1) ||
               measure(eng, "generation", FIG_GEN, stream_ids, n_stream, 1) ||
               measure(eng, "generation", FIG_GEN, stream_ids, n_stream, N_STREAMS)) {
        goto out;
    }

    /* Bandwidth and the decode bound. */
    uint64_t *buf = malloc(BW_BYTES), sink = 0;
    if (!buf) goto out;
    for (size_t i = 0; i < BW_BYTES / 8; i++) buf[i] = i * 0x9E3779B97F4A7C15ull;
    double bw1 = bandwidth(buf, BW_BYTES / 8, 1, &sink);
    double bw2 = bandwidth(buf, BW_BYTES / 8, N_THREADS, &sink);
    free(buf);
    int tied;
    double embd_bytes;
    double wbytes = weight_bytes_per_token(cairn_model_gguf(model), &tied, &embd_bytes);
    printf("{\"bench\":\"membw\",\"what\":\"read\",\"buffer_mib\":256,\"gb_s_1thread\":%.2f,"
           "\"gb_s_%dthreads\":%.2f,\"sink\":%u}\n",
           bw1 / 1e9, N_THREADS, bw2 / 1e9, (unsigned)(sink & 1));
    printf("{\"bench\":\"generate\",\"what\":\"decode_bound\",\"streams\":1,"
           "\"weight_bytes_per_token\":%.0f,\"token_embd_bytes\":%.0f,\"tied_output\":%s,"
           "\"bandwidth_gb_s\":%.2f,\"tok_s\":%.2f}\n",
           wbytes, embd_bytes, tied ? "true" : "false", bw2 / 1e9, bw2 / wbytes);
    status = 0;
out:
    cairn_engine_close(eng);
    cairn_tok_close(tok);
    cairn_model_close(model);
    free(text);
    free(long_ids);
    for (int i = 0; i < N_STREAMS; i++) free(stream_ids[i]);
    return status;
}
