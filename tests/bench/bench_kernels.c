/*
 * tests/bench/bench_kernels.c — the CPU matrix kernels per weight type, on one shape.
 *
 * For each 32-element type (Q4_0, Q4_1, Q5_0, Q8_0) and the K-quants (Q4_K, Q6_K): a
 * ROWS x COLS matrix of random blocks (SmolLM2-135M's FFN gate, 1536 x 576, by default) times
 * N tokens of random activations through cairn_cpu_matmul on one thread (no pool: the figure is
 * the kernel's), the best of 7 timed passes (best: other jobs on a shared machine only slow a
 * pass down); Q8_0 also repacked 16 rows to a group (cairn_cpu_mat_repack, the output
 * projection's layout, "Q8_0/r16") where the CPU has AVX-512 VNNI. One JSON line per type and
 * token count: ns per pass, weight GB/s (the bytes the
 * pass reads) and Gop/s (2 ROWS COLS N / time), with CPU time beside wall time.
 * Usage: bench_kernels [ROWS COLS]
 */
#include "common/clock.h"
#include "generation/kernels/cpu.h"
#include "proto/gguf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint32_t rnd(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int64_t rows = argc > 2 ? atoll(argv[1]) : 1536, cols = argc > 2 ? atoll(argv[2]) : 576;
    static const uint32_t types[] = {CAIRN_GGUF_Q4_0, CAIRN_GGUF_Q4_1, CAIRN_GGUF_Q5_0,
                                     CAIRN_GGUF_Q8_0, CAIRN_GGUF_Q4_K, CAIRN_GGUF_Q6_K};
    static const int toks[] = {1, 8, 64};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        uint32_t type = types[ti];
        uint32_t bs = cairn_gguf_type_block_size(type), bb = cairn_gguf_type_block_bytes(type);
        if (cols % bs) continue;
        size_t rb = (size_t)(cols / bs) * bb;
        uint8_t *w = malloc(rb * (size_t)rows);
        for (size_t i = 0; i < rb * (size_t)rows; i++)
            w[i] = (uint8_t)rnd();
        /* sane F16 scales: every block's first half-words (d, and Q4_1's m / Q4_K's dmin) */
        for (size_t off = 0; off + bb <= rb * (size_t)rows; off += bb) {
            uint16_t d = cairn_gguf_f32_to_f16(0.01f), m = cairn_gguf_f32_to_f16(-0.05f);
            if (type == CAIRN_GGUF_Q6_K) {
                memcpy(w + off + bb - 2, &d, 2);
                continue;
            }
            memcpy(w + off, &d, 2);
            if (type == CAIRN_GGUF_Q4_1 || type == CAIRN_GGUF_Q4_K) memcpy(w + off + 2, &m, 2);
        }
        for (int repack = 0; repack < (type == CAIRN_GGUF_Q8_0 ? 2 : 1); repack++) {
            cairn_cpu_mat m = {type, rows, cols, rb, w, NULL};
            void *owned = NULL;
            if (repack && (cairn_cpu_mat_repack(&m, &owned, NULL) != 0 || !owned))
                break; /* no AVX-512 VNNI, or rows not a multiple of 16 */
            for (size_t ni = 0; ni < sizeof toks / sizeof toks[0]; ni++) {
                int n = toks[ni];
                float *x = malloc(sizeof(float) * (size_t)(n * cols));
                float *y = malloc(sizeof(float) * (size_t)(n * rows));
                void *scratch = malloc(cairn_cpu_matmul_scratch_bytes(&m, n) + 64);
                for (int64_t i = 0; i < n * cols; i++)
                    x[i] = (float)(rnd() % 2001) / 1000.0f - 1.0f;
                int reps = (int)(2e8 / (double)(rows * cols * n)) + 1;
                double best = 1e30, best_cpu = 1e30;
                for (int pass = 0; pass < 8; pass++) {
                    int64_t t0 = cairn_now_ns();
                    double c0 = cpu_s();
                    for (int r = 0; r < reps; r++)
                        cairn_cpu_matmul(NULL, &m, x, n, y, scratch);
                    double dt = (double)(cairn_now_ns() - t0) * 1e-9 / reps;
                    double dc = (cpu_s() - c0) / reps;
                    if (pass > 0 && dt < best) best = dt; /* pass 0 warms up */
                    if (pass > 0 && dc < best_cpu) best_cpu = dc;
                }
                printf("{\"bench\":\"cpu_matmul\",\"type\":\"%s\",\"rows\":%lld,\"cols\":%lld,"
                       "\"tokens\":%d,\"ns\":%.0f,\"cpu_ns\":%.0f,\"weight_gb_s\":%.2f,"
                       "\"gop_s\":%.2f,\"avx2\":%s}\n",
                       repack ? "Q8_0/r16" : cairn_gguf_type_name(type), (long long)rows,
                       (long long)cols, n, best * 1e9, best_cpu * 1e9,
                       (double)(rb * (size_t)rows) / best * 1e-9,
                       2.0 * (double)(rows * cols * n) / best * 1e-9,
                       cairn_cpu_has_avx2() ? "true" : "false");
                fflush(stdout);
                free(x), free(y), free(scratch);
            }
            free(owned);
        }
        free(w);
    }
    return 0;
}
