/*
 * common/threadpool.h — a fixed pool of worker threads: queued tasks and parallel-for.
 *
 * A pool of n_threads runs parallel_for work on n_threads threads: n_threads - 1
 * workers plus the thread that calls cairn_pool_parallel_for. Tasks given to
 * cairn_pool_submit run on the workers; with n_threads 0 or 1 there are no workers
 * and everything runs inline on the calling thread. cairn_pool_default_params asks
 * for one thread per online CPU.
 *
 * parallel_for is the compute kernels' primitive: it allocates nothing per call,
 * hands out contiguous chunks of the range through one atomic counter (the caller
 * takes chunks too, so it never waits idle for a busy worker), and returns when every
 * chunk is done. Pending parallel_for work takes priority over queued tasks.
 */
#ifndef CAIRN_COMMON_THREADPOOL_H
#define CAIRN_COMMON_THREADPOOL_H

#include <stddef.h>

#include "common/error.h"

typedef struct cairn_pool cairn_pool;

typedef struct {
    int n_threads;      /* threads for parallel_for, the caller included; 0 or 1 = inline */
    int queue_capacity; /* tasks that may wait in the submit queue (>= 1) */
    int spin_us;        /* how long an idle worker polls for parallel_for work before sleeping */
} cairn_pool_params;

/* n_threads = CPUs online, queue_capacity 1024, spin_us 50. */
cairn_pool_params cairn_pool_default_params(void);

/* A task for cairn_pool_submit. */
typedef void (*cairn_pool_task_fn)(void *arg);

/*
 * A parallel_for body: handles indices [begin, end). tid is the thread running it,
 * 0 for the caller and 1..n_threads-1 for workers, so per-thread scratch can be
 * indexed by it.
 */
typedef void (*cairn_pool_range_fn)(void *ctx, size_t begin, size_t end, int tid);

/*
 * Starts the workers. Returns 0 and the pool in *out (the caller closes it), or
 * CAIRN_EINVAL (bad params) / CAIRN_ENOMEM / CAIRN_EIO (thread creation failed).
 */
int cairn_pool_open(cairn_pool **out, const cairn_pool_params *p, cairn_error *err);

/*
 * Runs every task still queued, waits for them, joins the workers and frees the pool.
 * NULL is a no-op. Must not be called from one of the pool's own tasks, nor while
 * another thread may still submit.
 */
void cairn_pool_close(cairn_pool *pool);

/* The threads that run parallel_for work, the caller included: n_threads, at least 1. */
int cairn_pool_threads(const cairn_pool *pool);

/*
 * Queues fn(arg) to run on a worker. Returns 0; CAIRN_EBUSY when queue_capacity tasks
 * are already waiting; CAIRN_ESTATE once close has begun. A pool without workers runs
 * fn(arg) before returning. Thread-safe.
 */
int cairn_pool_submit(cairn_pool *pool, cairn_pool_task_fn fn, void *arg);

/* Blocks until no task is queued or running. Thread-safe; not from a pool task. */
void cairn_pool_wait_idle(cairn_pool *pool);

/*
 * Calls fn over [0, n) split into contiguous chunks across the workers and the
 * calling thread; returns when all of [0, n) has been processed, each index exactly
 * once. Callers from different threads are serialised. A call from inside fn on the
 * same pool runs inline (tid 0), so nesting cannot deadlock. n == 0 returns at once.
 */
void cairn_pool_parallel_for(cairn_pool *pool, size_t n, cairn_pool_range_fn fn, void *ctx);

#endif
