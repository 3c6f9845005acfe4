/* common/threadpool.c — worker threads, a bounded task queue and parallel-for. */
#include "common/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/clock.h"

typedef struct {
    cairn_pool_task_fn fn;
    void *arg;
} pool_task;

typedef struct {
    cairn_pool *pool;
    int tid;
} worker_start;

/*
 * Locking: mu guards the queue (q, q_head, q_count), running, stop and the
 * parallel_for job description (pf_fn, pf_ctx, pf_n, pf_nchunks), which is only
 * written while pf_gen changes. pf_lock serialises parallel_for callers.
 *
 * Chunk claims go through pf_claim = (generation << 32) | next chunk, updated by
 * compare-and-swap: a worker that read the job of an earlier generation can never
 * claim a chunk of a later one, so the caller only waits for chunks, never for
 * stragglers, and a job's ctx is never touched after parallel_for returns.
 */
#define PF_CHUNKS_PER_THREAD 4

struct cairn_pool {
    int n_threads, n_workers, spin_us;
    pthread_t *threads;
    worker_start *starts;

    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* workers: a task, a parallel_for job or stop */
    pthread_cond_t idle_cv; /* wait_idle: queue empty and nothing running */
    pthread_cond_t done_cv; /* parallel_for caller: all chunks done */
    pool_task *q;
    int q_cap, q_head, q_count, running;
    bool stop;

    pthread_mutex_t pf_lock;
    _Atomic uint32_t pf_gen;
    cairn_pool_range_fn pf_fn;
    void *pf_ctx;
    size_t pf_n, pf_nchunks;
    _Atomic uint64_t pf_claim;
    _Atomic size_t pf_done;
};

/* Set while a thread runs parallel_for chunks, so a nested call runs inline. */
static _Thread_local cairn_pool *tls_pf_pool;
static _Thread_local int tls_tid;

cairn_pool_params cairn_pool_default_params(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int n = cpus < 1 ? 1 : cpus > 4096 ? 4096 : (int)cpus;
    return (cairn_pool_params){.n_threads = n, .queue_capacity = 1024, .spin_us = 50};
}

int cairn_pool_threads(const cairn_pool *pool)
{
    return pool->n_threads;
}

/* ---- parallel_for ------------------------------------------------------------------ */

static void chunk_range(size_t n, size_t nchunks, size_t i, size_t *b, size_t *e)
{
    size_t base = n / nchunks, rem = n % nchunks;
    *b = i * base + (i < rem ? i : rem);
    *e = *b + base + (i < rem ? 1 : 0);
}

/* Claims and runs chunks of generation gen until none are left. */
static void run_chunks(cairn_pool *pool, uint32_t gen, cairn_pool_range_fn fn, void *ctx, size_t n,
                       size_t nchunks, int tid)
{
    cairn_pool *outer = tls_pf_pool;
    tls_pf_pool = pool;
    for (;;) {
        uint64_t v = atomic_load(&pool->pf_claim);
        if ((uint32_t)(v >> 32) != gen || (v & 0xffffffffu) >= nchunks) break;
        if (!atomic_compare_exchange_weak(&pool->pf_claim, &v, v + 1)) continue;
        size_t b, e;
        chunk_range(n, nchunks, (size_t)(v & 0xffffffffu), &b, &e);
        fn(ctx, b, e, tid);
        if (atomic_fetch_add(&pool->pf_done, 1) + 1 == nchunks) {
            pthread_mutex_lock(&pool->mu);
            pthread_cond_signal(&pool->done_cv);
            pthread_mutex_unlock(&pool->mu);
        }
    }
    tls_pf_pool = outer;
}

void cairn_pool_parallel_for(cairn_pool *pool, size_t n, cairn_pool_range_fn fn, void *ctx)
{
    if (n == 0) return;
    if (pool->n_workers == 0 || n == 1 || tls_pf_pool == pool) {
        fn(ctx, 0, n, tls_pf_pool == pool ? tls_tid : 0);
        return;
    }
    /* A few chunks per thread: a thread that was late to start, or was descheduled,
     * leaves its remaining chunks to the others instead of holding everyone up. */
    size_t want = (size_t)pool->n_threads * PF_CHUNKS_PER_THREAD;
    size_t nchunks = n < want ? n : want;
    pthread_mutex_lock(&pool->pf_lock);
    pthread_mutex_lock(&pool->mu);
    uint32_t gen = atomic_load(&pool->pf_gen) + 1;
    pool->pf_fn = fn;
    pool->pf_ctx = ctx;
    pool->pf_n = n;
    pool->pf_nchunks = nchunks;
    atomic_store(&pool->pf_done, 0);
    atomic_store(&pool->pf_claim, (uint64_t)gen << 32);
    atomic_store(&pool->pf_gen, gen);
    pthread_cond_broadcast(&pool->work_cv);
    pthread_mutex_unlock(&pool->mu);

    int saved_tid = tls_tid;
    tls_tid = 0;
    run_chunks(pool, gen, fn, ctx, n, nchunks, 0);
    tls_tid = saved_tid;

    /* The remaining chunks are in flight on workers: poll briefly, then sleep. */
    for (int i = 0; i < 200 && atomic_load(&pool->pf_done) < nchunks; i++)
        sched_yield();
    if (atomic_load(&pool->pf_done) < nchunks) {
        pthread_mutex_lock(&pool->mu);
        while (atomic_load(&pool->pf_done) < nchunks)
            pthread_cond_wait(&pool->done_cv, &pool->mu);
        pthread_mutex_unlock(&pool->mu);
    }
    pthread_mutex_unlock(&pool->pf_lock);
}

/* ---- Workers ------------------------------------------------------------------------ */

static void *worker_main(void *arg)
{
    worker_start *ws = arg;
    cairn_pool *pool = ws->pool;
    tls_tid = ws->tid;
    bool spun = true; /* spin only right after parallel_for work, when more tends to follow */
    pthread_mutex_lock(&pool->mu);
    uint32_t seen = atomic_load(&pool->pf_gen);
    for (;;) {
        uint32_t gen = atomic_load(&pool->pf_gen);
        if (gen != seen) {
            seen = gen;
            cairn_pool_range_fn fn = pool->pf_fn;
            void *ctx = pool->pf_ctx;
            size_t n = pool->pf_n, nchunks = pool->pf_nchunks;
            pthread_mutex_unlock(&pool->mu);
            run_chunks(pool, gen, fn, ctx, n, nchunks, ws->tid);
            pthread_mutex_lock(&pool->mu);
            spun = false;
            continue;
        }
        if (pool->q_count > 0) {
            pool_task t = pool->q[pool->q_head];
            pool->q_head = (pool->q_head + 1) % pool->q_cap;
            pool->q_count--;
            pool->running++;
            pthread_mutex_unlock(&pool->mu);
            t.fn(t.arg);
            pthread_mutex_lock(&pool->mu);
            pool->running--;
            if (pool->q_count == 0 && pool->running == 0) pthread_cond_broadcast(&pool->idle_cv);
            continue;
        }
        if (pool->stop) break;
        if (!spun && pool->spin_us > 0) {
            spun = true;
            pthread_mutex_unlock(&pool->mu);
            int64_t until = cairn_now_ns() + (int64_t)pool->spin_us * CAIRN_NS_PER_US;
            while (atomic_load(&pool->pf_gen) == seen && cairn_now_ns() < until)
                sched_yield();
            pthread_mutex_lock(&pool->mu);
            continue;
        }
        pthread_cond_wait(&pool->work_cv, &pool->mu);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

/* ---- Open, submit, close ---------------------------------------------------------- */

int cairn_pool_open(cairn_pool **out, const cairn_pool_params *params, cairn_error *err)
{
    *out = NULL;
    cairn_pool_params p = params ? *params : cairn_pool_default_params();
    if (p.n_threads < 0 || p.n_threads > 4096)
        return cairn_errorf(err, CAIRN_EINVAL, "thread pool: n_threads %d is outside 0..4096",
                            p.n_threads);
    if (p.queue_capacity < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "thread pool: queue_capacity %d must be >= 1",
                            p.queue_capacity);
    if (p.n_threads == 0) p.n_threads = 1; /* inline, like 1 */
    cairn_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return cairn_errorf(err, CAIRN_ENOMEM, "thread pool: out of memory");
    pool->n_threads = p.n_threads;
    pool->spin_us = p.spin_us > 0 ? p.spin_us : 0;
    pool->q_cap = p.queue_capacity;
    pool->q = calloc((size_t)p.queue_capacity, sizeof *pool->q);
    pool->threads = calloc((size_t)p.n_threads, sizeof *pool->threads);
    pool->starts = calloc((size_t)p.n_threads, sizeof *pool->starts);
    if (!pool->q || !pool->threads || !pool->starts) {
        free(pool->q);
        free(pool->threads);
        free(pool->starts);
        free(pool);
        return cairn_errorf(err, CAIRN_ENOMEM, "thread pool: out of memory");
    }
    pthread_mutex_init(&pool->mu, NULL);
    pthread_mutex_init(&pool->pf_lock, NULL);
    pthread_cond_init(&pool->work_cv, NULL);
    pthread_cond_init(&pool->idle_cv, NULL);
    pthread_cond_init(&pool->done_cv, NULL);
    for (int i = 1; i < p.n_threads; i++) {
        pool->starts[i] = (worker_start){.pool = pool, .tid = i};
        int rc = pthread_create(&pool->threads[i], NULL, worker_main, &pool->starts[i]);
        if (rc != 0) {
            cairn_pool_close(pool);
            return cairn_errorf(err, CAIRN_EIO, "thread pool: cannot start worker %d of %d", i,
                                p.n_threads - 1);
        }
        pool->n_workers++;
    }
    *out = pool;
    return 0;
}

int cairn_pool_submit(cairn_pool *pool, cairn_pool_task_fn fn, void *arg)
{
    pthread_mutex_lock(&pool->mu);
    if (pool->stop) {
        pthread_mutex_unlock(&pool->mu);
        return CAIRN_ESTATE;
    }
    if (pool->n_workers == 0) {
        pthread_mutex_unlock(&pool->mu);
        fn(arg);
        return 0;
    }
    if (pool->q_count == pool->q_cap) {
        pthread_mutex_unlock(&pool->mu);
        return CAIRN_EBUSY;
    }
    pool->q[(pool->q_head + pool->q_count) % pool->q_cap] = (pool_task){fn, arg};
    pool->q_count++;
    pthread_cond_signal(&pool->work_cv);
    pthread_mutex_unlock(&pool->mu);
    return 0;
}

void cairn_pool_wait_idle(cairn_pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    while (pool->q_count > 0 || pool->running > 0)
        pthread_cond_wait(&pool->idle_cv, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
}

void cairn_pool_close(cairn_pool *pool)
{
    if (!pool) return;
    pthread_mutex_lock(&pool->mu);
    pool->stop = true;
    pthread_cond_broadcast(&pool->work_cv);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i <= pool->n_workers; i++)
        pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mu);
    pthread_mutex_destroy(&pool->pf_lock);
    pthread_cond_destroy(&pool->work_cv);
    pthread_cond_destroy(&pool->idle_cv);
    pthread_cond_destroy(&pool->done_cv);
    free(pool->q);
    free(pool->threads);
    free(pool->starts);
    free(pool);
}
