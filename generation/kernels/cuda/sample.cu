/*
 * generation/kernels/cuda/sample.cu — what comes back of a step's logits rows.
 *
 * A decode step of a Llama-3 vocabulary ends in 128,256 logits a row: half a megabyte to copy
 * to pageable host memory and scan there, a row per sequence. Most rows need far less: the
 * arg-max (greedy decoding), or the top_k entries a sampler keeps (cairn_sample_params_top).
 * pick_rows finds a row's K first entries on the GPU, in cairn_sample's order (the largest
 * logit first, ties by the lower id, NaN and -inf never), and only those (8 bytes each) cross
 * the bus; the host then draws among them exactly as from the row (generation/sample.h).
 *
 * A block a row, PICK_THREADS threads, thread t scanning its own contiguous run of the row (so
 * that walking the runs in thread order walks the row in id order):
 *   K 1: each thread's best, then a tree over the block.
 *   K > 1: a radix select over order-preserving 32-bit keys finds the K-th largest key, 8 bits
 *     a pass from the top (four passes, a histogram per warp in shared memory); every entry
 *     above it is taken, and of those equal to it the lowest ids that complete K (each thread
 *     counts its run's, a scan gives each its slots, in id order); the at most K taken are
 *     sorted in shared memory (bitonic).
 * A row with fewer than K finite logits returns them all, the rest as {-inf, -1}.
 */
#include "generation/kernels/cuda/common.cuh"

#include <string.h>

#define PICK_THREADS 256 /* >= CAIRN_BACKEND_MAX_PICK: the sort holds one entry a thread */
#define PICK_WARPS (PICK_THREADS / 32)

/* Order-preserving key of a logit; 0 for NaN and -inf (never taken), -0 as +0. */
static __device__ __forceinline__ unsigned pick_key(float f)
{
    if (!(f > -INFINITY))
        return 0u;
    if (f == 0.0f)
        f = 0.0f;
    const unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Entry (av, ai) comes before (bv, bi): the larger logit, then the lower id (-1, no entry,
 * last). */
static __device__ __forceinline__ bool pick_before(float av, int ai, float bv, int bi)
{
    return av > bv || (av == bv && (unsigned)ai < (unsigned)bi);
}

__global__ void __launch_bounds__(PICK_THREADS)
    pick_rows(const float *__restrict__ lg, int64_t V, int K, cairn_cand *__restrict__ out)
{
    __shared__ float cv[PICK_THREADS];
    __shared__ int ci[PICK_THREADS];
    __shared__ int hist[PICK_WARPS][256];
    __shared__ int run_a[PICK_THREADS], run_b[PICK_THREADS];
    __shared__ unsigned s_key;
    __shared__ int s_need, s_total;
    const float *row = lg + (int64_t)blockIdx.x * V;
    cairn_cand *o = out + (int64_t)blockIdx.x * K;
    const int tid = threadIdx.x;
    const int64_t per = (V + PICK_THREADS - 1) / PICK_THREADS;
    const int64_t b = (int64_t)tid * per < V ? (int64_t)tid * per : V;
    const int64_t e = b + per < V ? b + per : V;

    if (K == 1) {
        float bv = -INFINITY;
        int bi = -1;
        for (int64_t i = b; i < e; i++) {
            const float f = row[i];
            if (f > -INFINITY && (bi < 0 || f > bv))
                bv = f, bi = (int)i;
        }
        cv[tid] = bv;
        ci[tid] = bi;
        __syncthreads();
        for (int s = PICK_THREADS / 2; s > 0; s >>= 1) {
            if (tid < s && pick_before(cv[tid + s], ci[tid + s], cv[tid], ci[tid]))
                cv[tid] = cv[tid + s], ci[tid] = ci[tid + s];
            __syncthreads();
        }
        if (tid == 0) {
            o[0].logit = ci[0] >= 0 ? cv[0] : -INFINITY;
            o[0].id = ci[0];
        }
        return;
    }

    int n = 0;
    for (int64_t i = b; i < e; i++)
        n += pick_key(row[i]) != 0u;
    run_a[tid] = n;
    __syncthreads();
    if (tid == 0) {
        int t = 0;
        for (int j = 0; j < PICK_THREADS; j++)
            t += run_a[j];
        s_total = t;
    }
    __syncthreads();
    const int total = s_total;
    /* Taken: every key above thr, and need_eq of the keys equal to it. */
    unsigned thr = 0u;
    int need_eq = 0;
    if (total > K) {
        unsigned prefix = 0u, mask = 0u;
        int need = K;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int j = tid; j < PICK_WARPS * 256; j += PICK_THREADS)
                hist[j / 256][j % 256] = 0;
            __syncthreads();
            int *h = hist[tid / 32];
            for (int64_t i = b; i < e; i++) {
                const unsigned k = pick_key(row[i]);
                if (k && (k & mask) == prefix)
                    atomicAdd(&h[(k >> shift) & 255u], 1);
            }
            __syncthreads();
            if (tid == 0) { /* the digit where the count from the top reaches need */
                int acc = 0, d = 255;
                for (; d > 0; d--) {
                    int c = 0;
                    for (int w = 0; w < PICK_WARPS; w++)
                        c += hist[w][d];
                    if (acc + c >= need)
                        break;
                    acc += c;
                }
                s_key = prefix | ((unsigned)d << shift);
                s_need = need - acc;
            }
            __syncthreads();
            prefix = s_key;
            need = s_need;
            mask |= 255u << shift;
        }
        thr = prefix;
        need_eq = need;
    }
    const int n_gt = total > K ? K - need_eq : total, m = total > K ? K : total;
    int g = 0, q = 0;
    for (int64_t i = b; i < e; i++) {
        const unsigned k = pick_key(row[i]);
        g += k > thr;
        q += need_eq > 0 && k == thr;
    }
    __syncthreads(); /* everyone has read s_key / s_need and run_a */
    run_a[tid] = g;
    run_b[tid] = q;
    __syncthreads();
    if (tid == 0) { /* exclusive scans: each run's first slot */
        int sg = 0, sq = 0;
        for (int j = 0; j < PICK_THREADS; j++) {
            const int a = run_a[j], c = run_b[j];
            run_a[j] = sg, run_b[j] = sq;
            sg += a, sq += c;
        }
    }
    __syncthreads();
    int sg = run_a[tid], sq = run_b[tid];
    for (int64_t i = b; i < e; i++) {
        const float f = row[i];
        const unsigned k = pick_key(f);
        if (k > thr) {
            cv[sg] = f, ci[sg] = (int)i, sg++;
        } else if (need_eq > 0 && k == thr) {
            if (sq < need_eq)
                cv[n_gt + sq] = f, ci[n_gt + sq] = (int)i;
            sq++;
        }
    }
    __syncthreads();
    if (tid >= m)
        cv[tid] = -INFINITY, ci[tid] = -1;
    __syncthreads();
    for (int size = 2; size <= PICK_THREADS; size <<= 1)
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            const int j = tid ^ stride;
            if (j > tid) {
                const float av = cv[tid], bv = cv[j];
                const int ai = ci[tid], bi = ci[j];
                const bool first = (tid & size) == 0; /* this half sorts first-to-last */
                if (first ? pick_before(bv, bi, av, ai) : pick_before(av, ai, bv, bi)) {
                    cv[tid] = bv, ci[tid] = bi;
                    cv[j] = av, ci[j] = ai;
                }
            }
            __syncthreads();
        }
    if (tid < K) {
        o[tid].logit = cv[tid];
        o[tid].id = ci[tid];
    }
}

int cairn__cuda_pick_kmax(const cairn_bpick *picks, int n, cairn_error *err)
{
    int kmax = 0;
    for (int j = 0; j < n; j++) {
        const cairn_bpick *p = &picks[j];
        if (p->k < 0 || p->k > CAIRN_BACKEND_MAX_PICK || (p->k == 0 && !p->row) ||
            (p->k > 0 && !p->cand))
            return cairn_errorf(err, CAIRN_EINVAL, "cuda backend: logits row %d asks for %d "
                                "entries (0..%d) with%s host memory for them", j, p->k,
                                CAIRN_BACKEND_MAX_PICK,
                                (p->k ? (const void *)p->cand : (const void *)p->row) ? ""
                                                                                      : "out");
        kmax = p->k > kmax ? p->k : kmax;
    }
    return kmax;
}

int cairn__cuda_rows_out(cairn__cuda *c, float *out_host, const cairn_bpick *picks, int j0,
                         int nj, int64_t V, int kmax, cairn_error *err)
{
    if (!picks) {
        CU_TRY(err, cudaMemcpyAsync(out_host + (int64_t)j0 * V, c->lout,
                                    sizeof(float) * (size_t)nj * (size_t)V,
                                    cudaMemcpyDeviceToHost, c->stream));
        return 0;
    }
    for (int j = j0; j < j0 + nj; j++)
        if (picks[j].k == 0)
            CU_TRY(err, cudaMemcpyAsync(picks[j].row, c->lout + (int64_t)(j - j0) * V,
                                        sizeof(float) * (size_t)V, cudaMemcpyDeviceToHost,
                                        c->stream));
    if (kmax == 0)
        return 0;
    if ((size_t)(j0 + nj) * (size_t)kmax > c->pick_cap)
        return cairn_errorf(err, CAIRN_ESTATE, "cuda backend: %d logits rows of %d entries, "
                            "the scratch holds %zu entries", j0 + nj, kmax, c->pick_cap);
    cairn_cand *d = c->d_pick + (size_t)j0 * (size_t)kmax;
    pick_rows<<<(unsigned)nj, PICK_THREADS, 0, c->stream>>>(c->lout, V, kmax, d);
    CU_LAUNCHED(err, "pick_rows");
    CU_TRY(err, cudaMemcpyAsync(c->h_pick + (size_t)j0 * (size_t)kmax, d,
                                sizeof(cairn_cand) * (size_t)nj * (size_t)kmax,
                                cudaMemcpyDeviceToHost, c->stream));
    return 0;
}

void cairn__cuda_rows_done(cairn__cuda *c, const cairn_bpick *picks, int n, int kmax)
{
    for (int j = 0; picks && j < n; j++)
        if (picks[j].k > 0)
            memcpy(picks[j].cand, c->h_pick + (size_t)j * (size_t)kmax,
                   sizeof(cairn_cand) * (size_t)picks[j].k);
}
