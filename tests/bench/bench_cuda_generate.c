/*
 * tests/bench/bench_cuda_generate.c — generation on a GPU, beside what the GPU can do at best.
 *
 * Usage: bench_cuda_generate [--device N] [--dir DIR] [TYPE...]
 *        bench_cuda_generate [--device N] --model FILE
 * With --model, a real GGUF file instead (gemma-3-270m: docs/GPU.md says how it reaches the GPU
 * machine): the same lines on the GPU, then on the CPU engine of the same machine beside it
 * ("device":-1, "card":"cpu").
 * For each TYPE (default q4_k_m q8_0 bf16) it writes a Llama-3-8B-shaped model with random
 * weights (generation/synth: the speed and memory traffic of the real model, whose file cannot
 * travel to the GPU machine) into DIR (default /dev/shm), opens an engine on the GPU and prints
 * JSON lines:
 *   - peak: read bandwidth of a plain streaming kernel over 4 GiB, and cuBLAS BF16 GEMM at the
 *     prefill's shape (512 tokens x 4096 x 14336) and at 8192^3 (bench/cuda/peak.cu);
 *   - decode, batch 1: median step time over 64 steps after a 16-token prompt; effective
 *     bandwidth = bytes of weights a step reads (every matrix but the token embedding; the
 *     embedding row is noise) / step time, and its fraction of the measured read bandwidth;
 *   - decode, batch 8 / 32 / 64: tokens per second over 32 steps of all sequences;
 *   - prefill: one 512-token prompt, median of 3; TFLOP/s counted as 2 x (parameters of the
 *     layer matrices) x 512 + 2 x (output projection) for its one logits row, and its fraction
 *     of the GEMM peak at the same shape.
 * The card is named in every line; scripts/bench-torch-generate prints the PyTorch peer's.
 *
 * Comparing the backend's switches (docs/GPU.md) in one run, on one file per type:
 *   --variant NAME:VAR=VALUE[,VAR=VALUE...]   (repeatable) each TYPE's file is measured once
 *            per variant, in the order given, with those environment variables set for that
 *            engine only; NAME is the lines' "variant". "NAME:" alone: the defaults.
 *   --decode1  batch-1 decode only (with variants: several short runs on one machine).
 */
#include "common/clock.h"
#include "common/error.h"
#include "common/gpu.h"
#include "generation/engine.h"
#include "generation/synth.h"
#include "proto/gguf.h"
#include "tests/bench/cuda/peak.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char card[256];
static double peak_gflops, peak_gbs;

/* --variant and --decode1. */
#define MAX_VARIANTS 16
static const char *variants[MAX_VARIANTS];
static int n_variants;
static bool decode1_only;
static const char *variant_name = ""; /* the one being measured */

/* Sets (on) or unsets the VAR=VALUE list after "NAME:" of variant v; the name into out. */
static int variant_env(const char *v, bool on, char *name, size_t cap)
{
    const char *colon = strchr(v, ':');
    if (!colon || colon == v || (size_t)(colon - v) >= cap) {
        fprintf(stderr, "bench_cuda_generate: --variant '%s': expected NAME:VAR=VALUE,...\n", v);
        return 1;
    }
    snprintf(name, cap, "%.*s", (int)(colon - v), v);
    char list[1024];
    if (strlen(colon + 1) >= sizeof list) {
        fprintf(stderr, "bench_cuda_generate: --variant '%.40s...': its settings are longer "
                "than %zu bytes\n", v, sizeof list - 1);
        return 1;
    }
    snprintf(list, sizeof list, "%s", colon + 1);
    char *save = NULL;
    for (char *kv = strtok_r(list, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq || eq == kv) {
            fprintf(stderr, "bench_cuda_generate: --variant '%s': '%s' is not VAR=VALUE\n", v,
                    kv);
            return 1;
        }
        *eq = '\0';
        if (on ? setenv(kv, eq + 1, 1) : unsetenv(kv)) {
            fprintf(stderr, "bench_cuda_generate: --variant '%s': cannot set %s\n", v, kv);
            return 1;
        }
    }
    return 0;
}

/* A point for the roofline plot (scripts/plot-bench): flops and bytes of one step, its time. */
static void roofline(const char *kernel, double flops, double bytes, double s)
{
    printf("{\"bench\":\"roofline\",\"card\":\"%s\",\"kernel\":\"%s\",\"intensity\":%.3f,"
           "\"gflops\":%.1f,\"peak_gflops\":%.0f,\"peak_gb_s\":%.0f}\n", card, kernel,
           flops / bytes, flops / s / 1e9, peak_gflops, peak_gbs);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Bytes a decode step reads: every 2-D tensor but the token embedding (whose one row is read),
 * which counts when it is also the output projection. */
static double step_bytes(const cairn_model *m, double *layer_params, double *out_params)
{
    const cairn_gguf *g = cairn_model_gguf(m);
    bool tied = !cairn_gguf_find_tensor(g, "output.weight");
    double bytes = 0;
    *layer_params = *out_params = 0;
    for (size_t i = 0; i < cairn_gguf_tensor_count(g); i++) {
        const cairn_gguf_tensor *t = cairn_gguf_tensor_at(g, i);
        if (t->n_dims != 2)
            continue;
        bool embd = !strcmp(t->name, "token_embd.weight");
        bool out = !strcmp(t->name, "output.weight") || (tied && embd);
        if (embd && !tied)
            continue;
        bytes += (double)t->nbytes;
        if (out)
            *out_params += (double)t->n_elements;
        else
            *layer_params += (double)t->n_elements;
    }
    return bytes;
}

static int step_all(cairn_engine *e, const int *ids, int n, int chunk, cairn_error *err)
{
    cairn_step_item items[64];
    for (int i = 0; i < n; i++)
        items[i] = (cairn_step_item){.id = ids[i], .n_tokens = chunk};
    return cairn_engine_step(e, items, n, err);
}

/* Adds n sequences of a prompt_len-token prompt and prefills them (chunk by chunk). */
static int add_seqs(cairn_engine *e, int n, int prompt_len, int max_tokens, int32_t vocab,
                    int *ids, cairn_error *err)
{
    int32_t prompt[512];
    for (int s = 0; s < n; s++) {
        for (int i = 0; i < prompt_len; i++)
            prompt[i] = (int32_t)((s * 7919 + i * 104729) % vocab);
        cairn_gen_params gp = cairn_gen_default_params();
        gp.max_tokens = max_tokens;
        int rc = cairn_engine_add(e, prompt, prompt_len, &gp, &ids[s], err);
        if (rc)
            return rc;
    }
    /* Prefill a few sequences per step: 512 tokens at most per pass. */
    int per = 512 / prompt_len;
    for (int s = 0; s < n; s += per) {
        int k = n - s < per ? n - s : per;
        int rc = step_all(e, ids + s, k, prompt_len, err);
        if (rc)
            return rc;
    }
    return 0;
}

/*
 * One model file on one device (a GPU, or -1: the CPU engine beside it): load, decode at batch
 * 1, 8, 32 and 64, prefill of 512 tokens. `model` and `type` label the lines.
 */
static int bench_file(int device, const char *path, const char *model, const char *type,
                      double synth_s, double read_gbs, double gemm_prefill)
{
    cairn_error err = {0};
    cairn_model *m = NULL;
    cairn_engine *e = NULL;
    cairn_engine_params ep = cairn_engine_default_params();
    ep.device = device;
    ep.max_seqs = 64;
    ep.n_ctx = 1024;
    ep.max_batch_tokens = 512;
    ep.kv_blocks = 64 * 128 / ep.block_tokens; /* 64 sequences of 128 positions */
    int64_t t0 = cairn_now_ns();
    if (cairn_model_open(&m, path, &err) || cairn_engine_open(&e, m, &ep, &err)) {
        fprintf(stderr, "bench_cuda_generate: %s: %s\n", path, err.msg);
        cairn_model_close(m);
        return 1;
    }
    double open_s = (double)(cairn_now_ns() - t0) / 1e9;
    double lp, op, bytes = step_bytes(m, &lp, &op);
    /* Every line's head: the card (or "cpu"), the model and its weight type. */
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "{\"bench\":\"generate_gpu\",\"impl\":\"cairn\",\"card\":\"%s\","
                      "\"device\":%d,\"model\":\"%s\",\"type\":\"%s\"",
                      device >= 0 ? card : "cpu", device, model, type);
    if (*variant_name && hn > 0 && (size_t)hn < sizeof head)
        snprintf(head + hn, sizeof head - (size_t)hn, ",\"variant\":\"%s\"", variant_name);
    printf("%s,\"what\":\"load\",\"synth_s\":%.2f,\"open_s\":%.2f,"
           "\"weight_bytes_per_step\":%.0f}\n", head, synth_s, open_s, bytes);
    int ids[64], rc = 0;
    const int32_t vocab = cairn_model_hparams_of(m)->n_vocab;

    /* Decode, batch 1. */
    enum { STEPS = 64 };
    double t[STEPS];
    if ((rc = add_seqs(e, 1, 16, STEPS + 8, vocab, ids, &err)))
        goto out;
    for (int i = 0; i < 4; i++) /* warm-up steps */
        if ((rc = step_all(e, ids, 1, 1, &err)))
            goto out;
    for (int i = 0; i < STEPS; i++) {
        int64_t a = cairn_now_ns();
        if ((rc = step_all(e, ids, 1, 1, &err)))
            goto out;
        t[i] = (double)(cairn_now_ns() - a) / 1e9;
    }
    cairn_engine_release(e, ids[0]);
    double s1 = median(t, STEPS);
    printf("%s,\"what\":\"decode\",\"batch\":1,\"step_ms\":%.3f,\"tok_s\":%.1f,"
           "\"eff_gbs\":%.1f", head, s1 * 1e3, 1 / s1, bytes / s1 / 1e9);
    if (device >= 0) /* the read kernel is the GPU's */
        printf(",\"read_gbs\":%.1f,\"frac_of_read\":%.3f", read_gbs,
               bytes / s1 / 1e9 / read_gbs);
    printf("}\n");
    char k[128];
    if (device >= 0) {
        snprintf(k, sizeof k, "%s decode b1", type);
        roofline(k, 2 * (lp + op), bytes, s1);
    }
    fflush(stdout);

    /* Decode, batches of 8, 32, 64. */
    const int batches[3] = {8, 32, 64};
    for (int bi = 0; bi < (decode1_only ? 0 : 3); bi++) {
        int n = batches[bi];
        enum { BSTEPS = 32 };
        double bt[BSTEPS];
        if ((rc = add_seqs(e, n, 16, BSTEPS + 4, vocab, ids, &err)))
            goto out;
        for (int i = 0; i < 2; i++)
            if ((rc = step_all(e, ids, n, 1, &err)))
                goto out;
        for (int i = 0; i < BSTEPS; i++) {
            int64_t a = cairn_now_ns();
            if ((rc = step_all(e, ids, n, 1, &err)))
                goto out;
            bt[i] = (double)(cairn_now_ns() - a) / 1e9;
        }
        for (int i = 0; i < n; i++)
            cairn_engine_release(e, ids[i]);
        double sb = median(bt, BSTEPS);
        printf("%s,\"what\":\"decode\",\"batch\":%d,\"step_ms\":%.3f,\"tok_s\":%.1f}\n",
               head, n, sb * 1e3, n / sb);
        if (device >= 0) {
            snprintf(k, sizeof k, "%s decode b%d", type, n);
            roofline(k, 2 * (lp + op) * n, bytes, sb);
        }
        fflush(stdout);
    }

    /* Prefill of 512 tokens. */
    if (decode1_only)
        goto out; /* rc is 0 */
    double pt[3];
    for (int r = 0; r < 4; r++) {
        int32_t prompt[512];
        for (int i = 0; i < 512; i++)
            prompt[i] = (int32_t)((r * 31 + i * 7919) % vocab);
        cairn_gen_params gp = cairn_gen_default_params();
        gp.max_tokens = 1;
        if ((rc = cairn_engine_add(e, prompt, 512, &gp, &ids[0], &err)))
            goto out;
        int64_t a = cairn_now_ns();
        if ((rc = step_all(e, ids, 1, 512, &err)))
            goto out;
        double dt = (double)(cairn_now_ns() - a) / 1e9;
        cairn_engine_release(e, ids[0]);
        if (r > 0)
            pt[r - 1] = dt;
    }
    double sp = median(pt, 3), tf = (2 * lp * 512 + 2 * op) / sp / 1e12;
    printf("%s,\"what\":\"prefill\",\"tokens\":512,\"ms\":%.2f,\"tok_s\":%.0f,"
           "\"tflops\":%.1f", head, sp * 1e3, 512 / sp, tf);
    if (device >= 0)
        printf(",\"gemm_tflops\":%.1f,\"frac_of_gemm\":%.3f", gemm_prefill, tf / gemm_prefill);
    printf("}\n");
    if (device >= 0) {
        snprintf(k, sizeof k, "%s prefill 512", type);
        roofline(k, 2 * lp * 512 + 2 * op, bytes, sp);
    }
    fflush(stdout);
out:
    if (rc)
        fprintf(stderr, "bench_cuda_generate: %s: %s\n", path, err.msg);
    cairn_engine_close(e);
    cairn_model_close(m);
    return rc ? 1 : 0;
}

/* A Llama-3-8B-shaped model of `type` with random weights, written into dir and benchmarked. */
static int bench_type(int device, const char *dir, const char *type, double read_gbs,
                      double gemm_prefill)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/cairn_bench_llama3-8b_%s.gguf", dir, type);
    cairn_error err = {0};
    int64_t t0 = cairn_now_ns();
    if (cairn_synth_write(path, "llama3-8b", type, 0, 1, &err)) {
        fprintf(stderr, "bench_cuda_generate: %s\n", err.msg);
        return 1;
    }
    double synth_s = (double)(cairn_now_ns() - t0) / 1e9;
    int rc = 0;
    if (!n_variants)
        rc = bench_file(device, path, "llama3-8b", type, synth_s, read_gbs, gemm_prefill);
    for (int v = 0; v < n_variants && !rc; v++) {
        char name[64];
        if ((rc = variant_env(variants[v], true, name, sizeof name)))
            break;
        variant_name = name;
        rc = bench_file(device, path, "llama3-8b", type, synth_s, read_gbs, gemm_prefill);
        variant_name = "";
        rc |= variant_env(variants[v], false, name, sizeof name);
    }
    unlink(path);
    return rc;
}

/* A file's name without its folder and extensions: the label of its lines. */
static const char *model_name(const char *path)
{
    static char name[256];
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    snprintf(name, sizeof name, "%.*s", (int)strcspn(base, "."), base);
    return name;
}

int main(int argc, char **argv)
{
    int device = 0, first_type = argc;
    const char *dir = "/dev/shm", *model = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            device = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
            dir = argv[++i];
        } else if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(argv[i], "--variant") && i + 1 < argc) {
            if (n_variants == MAX_VARIANTS) {
                fprintf(stderr, "bench_cuda_generate: at most %d variants\n", MAX_VARIANTS);
                return 2;
            }
            variants[n_variants++] = argv[++i];
        } else if (!strcmp(argv[i], "--decode1")) {
            decode1_only = true;
        } else {
            first_type = i;
            break;
        }
    }
    char why[256];
    if (model && device < 0) /* the CPU engine alone */
        return bench_file(-1, model, model_name(model), "file", 0, 0, 0);
    if (cairn_gpu_count(why, sizeof why) <= device) {
        printf("{\"bench\":\"generate_gpu\",\"skipped\":\"no CUDA device %d (%s)\"}\n", device,
               why);
        return 0;
    }
    cairn_gpu_describe(device, card, sizeof card);
    double read_gbs = 0, gemm_prefill = 0, gemm_big = 0;
    if (cairn_peak_read_gbs(device, (size_t)4 << 30, &read_gbs, why, sizeof why) ||
        cairn_peak_gemm_tflops(device, 14336, 512, 4096, &gemm_prefill, why, sizeof why) ||
        cairn_peak_gemm_tflops(device, 8192, 8192, 8192, &gemm_big, why, sizeof why)) {
        fprintf(stderr, "bench_cuda_generate: peak: %s\n", why);
        return 1;
    }
    peak_gflops = gemm_big * 1e3;
    peak_gbs = read_gbs;
    printf("{\"bench\":\"generate_gpu\",\"impl\":\"peak\",\"card\":\"%s\",\"read_gbs\":%.1f,"
           "\"gemm_bf16_tflops_512x4096x14336\":%.1f,\"gemm_bf16_tflops_8192\":%.1f}\n", card,
           read_gbs, gemm_prefill, gemm_big);
    fflush(stdout);
    static const char *defaults[] = {"q4_k_m", "q8_0", "bf16"};
    int failed = 0;
    if (model) { /* a real file: on the GPU, then on the CPU engine of this machine beside it */
        failed |= bench_file(device, model, model_name(model), "file", 0, read_gbs, gemm_prefill);
        failed |= bench_file(-1, model, model_name(model), "file", 0, 0, 0);
        return failed;
    }
    if (first_type < argc) {
        for (int i = first_type; i < argc; i++)
            failed |= bench_type(device, dir, argv[i], read_gbs, gemm_prefill);
    } else {
        for (int i = 0; i < 3; i++)
            failed |= bench_type(device, dir, defaults[i], read_gbs, gemm_prefill);
    }
    return failed;
}
