/*
 * tests/bench/bench_cuda_gemv.c — the decode products alone, in every GEMV shape, to choose
 * between them on the card at hand.
 *
 * Usage: bench_cuda_gemv [--device N] [TYPE...]   (default: q4_k q6_k q8_0 bf16)
 *
 * For each weight type: the matrices of one Llama-3-8B layer (q and o 4096 x 4096, k and v
 * 1024 x 4096, gate and up 14336 x 4096, down 4096 x 14336) with random blocks, in COPIES
 * copies so that a pass over them streams from HBM rather than the 50 MB L2, multiplied as
 * model.c multiplies them (q, k, v in one matmul call; o; gate and up in one; down) through the
 * CUDA backend's own table, at 1, 2 and 8 tokens. The weights are loaded twice: with rows
 * whole (CAIRN_CUDA_LANE_LAYOUT=0), where each row form of matmul.cu (warp or block, rows a
 * warp or block, the block form's threads: CAIRN_CUDA_GEMV, CAIRN_CUDA_GEMV_ROWS,
 * CAIRN_CUDA_GEMV_THREADS) is timed in turn, and in the lane layout (Q8_0, Q4_K, Q6_K), where
 * the lane form is timed in each shape (CAIRN_CUDA_LANE_WARPS, CAIRN_CUDA_LANE_U); "separate"
 * calls q, k, v and gate, up one matrix at a time (the launches before matrix sets). Time: PASSES passes over the copies between two
 * synchronisations, on the host clock, best of 3; per layer and as bandwidth (weight bytes per
 * pass / time) beside a plain read kernel timed in the same run. The launches are not in a
 * CUDA graph here (decode steps are), so the gaps between kernels count; compare the shapes
 * with each other, and whole steps with bench_cuda_generate.
 * JSON lines, one per (type, tokens, shape).
 */
#include "common/clock.h"
#include "common/error.h"
#include "common/gpu.h"
#include "common/rand.h"
#include "generation/backend.h"
#include "proto/gguf.h"
#include "tests/bench/cuda/peak.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define COPIES 4
#define PASSES 10
#define N_MATS 7
#define MAX_TOK 8

static const struct { const char *name; int64_t rows, cols; } LAYER[N_MATS] = {
    {"q", 4096, 4096},     {"k", 1024, 4096},    {"v", 1024, 4096},  {"o", 4096, 4096},
    {"gate", 14336, 4096}, {"up", 14336, 4096}, {"down", 4096, 14336},
};

/* Shapes: NULL leaves the variable unset (matmul.cu's default). row: the weights loaded with
 * rows whole (CAIRN_CUDA_LANE_LAYOUT=0: the warp and block forms), else in the lane layout where
 * the type takes it (the lane form's shapes: CAIRN_CUDA_LANE_WARPS, CAIRN_CUDA_LANE_U). */
static const struct {
    const char *name, *form, *rows, *threads, *lane_warps, *lane_u;
    bool row;
} SHAPES[] = {
    {"row default", NULL, NULL, NULL, NULL, NULL, true},
    {"warp r1", "warp", "1", NULL, NULL, NULL, true},
    {"warp r2", "warp", "2", NULL, NULL, NULL, true},
    {"block r1", "block", "1", NULL, NULL, NULL, true},
    {"block r2", "block", "2", NULL, NULL, NULL, true},
    {"block r2 t64", "block", "2", "64", NULL, NULL, true},
    {"default", NULL, NULL, NULL, NULL, NULL, false},
    {"lane w4 u1", NULL, NULL, NULL, "4", "1", false},
    {"lane w4 u2", NULL, NULL, NULL, "4", "2", false},
    {"lane w8 u1", NULL, NULL, NULL, "8", "1", false},
    {"lane w8 u2", NULL, NULL, NULL, "8", "2", false},
    {"lane w16 u1", NULL, NULL, NULL, "16", "1", false},
};
#define N_SHAPES (sizeof SHAPES / sizeof SHAPES[0])

typedef struct {
    cairn_backend *be;
    cairn_bmat w[COPIES][N_MATS];
    float *x, *y[N_MATS];
    double bytes; /* weight bytes of one layer */
} rig;

static char card[256];

static void setenv_or_unset(const char *name, const char *v)
{
    if (v)
        setenv(name, v, 1);
    else
        unsetenv(name);
}

static int fail(const char *what, const cairn_error *err)
{
    fprintf(stderr, "bench_cuda_gemv: %s: %s\n", what, err->msg);
    return 1;
}

static int load(rig *r, uint32_t type, cairn_error *err)
{
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    r->bytes = 0;
    for (int i = 0; i < N_MATS; i++) {
        const uint64_t n = (uint64_t)(LAYER[i].rows * LAYER[i].cols);
        uint64_t bytes;
        int rc = cairn_gguf_tensor_nbytes(type, n, &bytes, err);
        if (rc)
            return rc;
        void *buf = malloc(bytes);
        if (!buf)
            return cairn_errorf(err, CAIRN_ENOMEM, "%llu bytes", (unsigned long long)bytes);
        rc = cairn_gguf_random_blocks(type, n, sqrtf(3.0f / (float)LAYER[i].cols), &rng, buf,
                                      bytes, err);
        cairn_gguf_tensor t = {.name = LAYER[i].name, .type = type, .n_dims = 2,
                               .dims = {(uint64_t)LAYER[i].cols, (uint64_t)LAYER[i].rows, 1, 1},
                               .n_elements = n, .nbytes = bytes, .data = buf};
        for (int c = 0; c < COPIES && !rc; c++)
            rc = r->be->i->mat_load(r->be, &t, LAYER[i].name, CAIRN_BMAT_MATMUL, &r->w[c][i],
                                    err);
        free(buf);
        if (rc)
            return rc;
        r->bytes += (double)bytes;
    }
    return 0;
}

static void unload(rig *r)
{
    for (int c = 0; c < COPIES; c++)
        for (int i = 0; i < N_MATS; i++)
            r->be->i->mat_free(r->be, &r->w[c][i]);
}

/* One layer's products, of copy c; separate: one matrix a call. */
static int layer(rig *r, int c, bool separate, cairn_error *err)
{
    cairn_backend *be = r->be;
    const cairn_bmat *w[N_MATS];
    for (int i = 0; i < N_MATS; i++)
        w[i] = &r->w[c][i];
    static const int groups[][2] = {{0, 3}, {3, 1}, {4, 2}, {6, 1}}; /* first, count */
    for (int g = 0; g < 4; g++) {
        const int i0 = groups[g][0], n = groups[g][1];
        const float *x = r->x;
        if (separate) {
            for (int i = i0; i < i0 + n; i++) {
                int rc = be->i->matmul(be, &w[i], 1, x, &r->y[i], err);
                if (rc)
                    return rc;
            }
        } else {
            int rc = be->i->matmul(be, &w[i0], n, x, &r->y[i0], err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Seconds a layer, best of 3 runs of PASSES passes over the copies. */
static int time_layers(rig *r, bool separate, double *best, cairn_error *err)
{
    float probe;
    *best = 1e30;
    for (int run = 0; run < 3; run++) {
        int rc = r->be->i->download(r->be, &probe, r->y[0], sizeof probe, err);
        const int64_t t0 = cairn_now_ns();
        for (int p = 0; p < PASSES && !rc; p++)
            for (int c = 0; c < COPIES && !rc; c++)
                rc = layer(r, c, separate, err);
        if (!rc)
            rc = r->be->i->download(r->be, &probe, r->y[0], sizeof probe, err);
        if (rc)
            return rc;
        const double s = (double)(cairn_now_ns() - t0) / 1e9 / (PASSES * COPIES);
        if (s < *best)
            *best = s;
    }
    return 0;
}

static int set_tokens(rig *r, int n, cairn_error *err)
{
    static int32_t tokens[MAX_TOK], pos[MAX_TOK], slot[MAX_TOK], plen[MAX_TOK], table[1];
    static uint8_t logits[MAX_TOK];
    for (int t = 0; t < n; t++) {
        tokens[t] = 0;
        pos[t] = t;
        slot[t] = 0;
        plen[t] = n;
        logits[t] = 0;
    }
    cairn_bbatch b = {.n_tokens = n, .tokens = tokens, .pos = pos, .slot = slot,
                      .prompt_len = plen, .logits = logits, .n_seqs = 1, .n_groups = 1,
                      .max_table = 1, .tables = table};
    return r->be->i->batch_set(r->be, &b, err);
}

static int bench_type(int device, const char *tname, double read_gbs)
{
    uint32_t type = 0;
    cairn_error err = {0};
    while (type < 64 && !(cairn_gguf_type_name(type) &&
                          !strcasecmp(cairn_gguf_type_name(type), tname)))
        type++;
    if (type == 64) {
        fprintf(stderr, "bench_cuda_gemv: unknown type '%s'\n", tname);
        return 1;
    }
    rig r = {0};
    if (cairn_backend_cuda_open(&r.be, device, &err))
        return fail("open", &err);
    size_t xb = sizeof(float) * MAX_TOK * 14336;
    int rc = r.be->i->alloc(r.be, xb, (void **)&r.x, &err);
    for (int i = 0; i < N_MATS && !rc; i++)
        rc = r.be->i->alloc(r.be, sizeof(float) * MAX_TOK * (size_t)LAYER[i].rows,
                            (void **)&r.y[i], &err);
    if (!rc) { /* activations of unit scale */
        float *h = malloc(xb);
        uint64_t rng = 7;
        for (size_t i = 0; h && i < xb / sizeof(float); i++)
            h[i] = cairn_rand_sym(&rng);
        rc = h ? r.be->i->upload(r.be, r.x, h, xb, &err) : cairn_errorf(&err, CAIRN_ENOMEM, "x");
        free(h);
    }
    const bool lane = type == CAIRN_GGUF_Q8_0 || type == CAIRN_GGUF_Q4_K ||
                      type == CAIRN_GGUF_Q6_K; /* the types the lane layout takes */
    /* each layout's shapes on its own load of the weights (a layout is chosen at load) */
    for (int row = 1; row >= 0 && !rc; row--) {
        setenv_or_unset("CAIRN_CUDA_LANE_LAYOUT", row ? "0" : NULL);
        if ((rc = load(&r, type, &err)) || (rc = r.be->i->reserve(r.be, MAX_TOK, 64, 1, &err)))
            break;
        static const int toks[] = {1, 2, 8};
        for (size_t ti = 0; ti < sizeof toks / sizeof toks[0] && !rc; ti++) {
            rc = set_tokens(&r, toks[ti], &err);
            for (size_t s = 0; s <= N_SHAPES && !rc; s++) {
                /* last: the default shape, one matrix a call, on the lane load */
                const bool separate = s == N_SHAPES;
                const size_t k = separate ? 6 : s;
                if (SHAPES[k].row != (row == 1) || (separate && row) ||
                    (!row && !lane && SHAPES[k].lane_warps))
                    continue;
                setenv_or_unset("CAIRN_CUDA_GEMV", SHAPES[k].form);
                setenv_or_unset("CAIRN_CUDA_GEMV_ROWS", SHAPES[k].rows);
                setenv_or_unset("CAIRN_CUDA_GEMV_THREADS", SHAPES[k].threads);
                setenv_or_unset("CAIRN_CUDA_LANE_WARPS", SHAPES[k].lane_warps);
                setenv_or_unset("CAIRN_CUDA_LANE_U", SHAPES[k].lane_u);
                double sec;
                if ((rc = time_layers(&r, separate, &sec, &err)))
                    break;
                const double gbs = r.bytes / sec / 1e9;
                printf("{\"bench\":\"gemv_gpu\",\"card\":\"%s\",\"type\":\"%s\","
                       "\"tokens\":%d,\"layout\":\"%s\",\"shape\":\"%s\","
                       "\"us_per_layer\":%.2f,\"gbs\":%.1f,\"read_gbs\":%.1f,"
                       "\"frac_of_read\":%.3f}\n",
                       card, tname, toks[ti], row ? "row" : "lane",
                       separate ? "default, one matrix a call" : SHAPES[k].name, sec * 1e6, gbs,
                       read_gbs, gbs / read_gbs);
                fflush(stdout);
            }
        }
        unload(&r);
    }
    setenv_or_unset("CAIRN_CUDA_GEMV", NULL);
    setenv_or_unset("CAIRN_CUDA_GEMV_ROWS", NULL);
    setenv_or_unset("CAIRN_CUDA_GEMV_THREADS", NULL);
    setenv_or_unset("CAIRN_CUDA_LANE_WARPS", NULL);
    setenv_or_unset("CAIRN_CUDA_LANE_U", NULL);
    setenv_or_unset("CAIRN_CUDA_LANE_LAYOUT", NULL);
    if (rc)
        fail(tname, &err);
    for (int i = 0; i < N_MATS; i++)
        r.be->i->free(r.be, r.y[i]);
    r.be->i->free(r.be, r.x);
    unload(&r);
    cairn_backend_close(r.be);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    int device = 0, first = 1;
    if (argc > 2 && !strcmp(argv[1], "--device")) {
        device = atoi(argv[2]);
        first = 3;
    }
    char why[256];
    if (cairn_gpu_count(why, sizeof why) <= device) {
        printf("{\"bench\":\"gemv_gpu\",\"skipped\":\"no CUDA device %d (%s)\"}\n", device, why);
        return 0;
    }
    cairn_gpu_describe(device, card, sizeof card);
    double read_gbs = 0;
    if (cairn_peak_read_gbs(device, (size_t)4 << 30, &read_gbs, why, sizeof why)) {
        fprintf(stderr, "bench_cuda_gemv: peak: %s\n", why);
        return 1;
    }
    static const char *defaults[] = {"q4_k", "q6_k", "q8_0", "bf16"};
    int failed = 0;
    if (first < argc)
        for (int i = first; i < argc; i++)
            failed |= bench_type(device, argv[i], read_gbs);
    else
        for (int i = 0; i < 4; i++)
            failed |= bench_type(device, defaults[i], read_gbs);
    return failed;
}
