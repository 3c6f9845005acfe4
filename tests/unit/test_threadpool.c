/* tests/unit/test_threadpool.c — parallel_for coverage, submit backpressure, shutdown. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "common/clock.h"
#include "common/threadpool.h"

static cairn_pool *open_pool(int n_threads, int queue_capacity)
{
    cairn_pool_params p = cairn_pool_default_params();
    p.n_threads = n_threads;
    p.queue_capacity = queue_capacity;
    cairn_pool *pool = NULL;
    cairn_error err;
    assert_int_equal(cairn_pool_open(&pool, &p, &err), 0);
    assert_non_null(pool);
    return pool;
}

/* ---- parallel_for ---------------------------------------------------------------------- */

typedef struct {
    _Atomic int *hits;
    size_t n;
    int n_threads;
    _Atomic int bad; /* a range out of bounds or empty, or a tid out of range */
} cover_ctx;

static void cover_fn(void *arg, size_t begin, size_t end, int tid)
{
    cover_ctx *c = arg;
    if (begin >= end || end > c->n || tid < 0 || tid >= c->n_threads) atomic_fetch_add(&c->bad, 1);
    for (size_t i = begin; i < end && i < c->n; i++)
        atomic_fetch_add(&c->hits[i], 1);
}

static void check_cover(cairn_pool *pool, size_t n)
{
    cover_ctx c = {.n = n, .n_threads = cairn_pool_threads(pool)};
    c.hits = calloc(n ? n : 1, sizeof *c.hits);
    atomic_init(&c.bad, 0);
    cairn_pool_parallel_for(pool, n, cover_fn, &c);
    assert_int_equal(atomic_load(&c.bad), 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(atomic_load(&c.hits[i]), 1);
    free(c.hits);
}

static void test_parallel_for_covers_every_index_once(void **state)
{
    (void)state;
    const int threads[] = {0, 1, 2, 3, 8};
    const size_t sizes[] = {0, 1, 2, 5, 7, 1000, 100003};
    for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
        cairn_pool *pool = open_pool(threads[t], 16);
        assert_int_equal(cairn_pool_threads(pool), threads[t] > 1 ? threads[t] : 1);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
            for (int rep = 0; rep < 20; rep++)
                check_cover(pool, sizes[s]);
        cairn_pool_close(pool);
    }
}

static void *pf_caller(void *arg)
{
    for (int rep = 0; rep < 200; rep++)
        check_cover(arg, 257);
    return NULL;
}

static void test_parallel_for_from_many_threads(void **state)
{
    (void)state;
    cairn_pool *pool = open_pool(3, 16);
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&th[i], NULL, pf_caller, pool);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    cairn_pool_close(pool);
}

typedef struct {
    cairn_pool *pool;
    _Atomic int *hits; /* 64 x 64 */
} nest_ctx;

typedef struct {
    nest_ctx *outer;
    size_t row;
} nest_row;

static void nest_inner(void *arg, size_t b, size_t e, int tid)
{
    nest_row *r = arg;
    for (size_t j = b; j < e; j++)
        atomic_fetch_add(&r->outer->hits[r->row * 64 + j], 1);
}

static void nest_outer(void *arg, size_t b, size_t e, int tid)
{
    nest_ctx *c = arg;
    for (size_t i = b; i < e; i++) {
        nest_row r = {c, i};
        cairn_pool_parallel_for(c->pool, 64, nest_inner, &r);
    }
}

static void test_nested_parallel_for_runs_inline(void **state)
{
    (void)state;
    cairn_pool *pool = open_pool(4, 16);
    nest_ctx c = {pool, calloc(64 * 64, sizeof(_Atomic int))};
    cairn_pool_parallel_for(pool, 64, nest_outer, &c);
    for (int i = 0; i < 64 * 64; i++)
        assert_int_equal(atomic_load(&c.hits[i]), 1);
    free(c.hits);
    cairn_pool_close(pool);
}

/* ---- submit ------------------------------------------------------------------------------ */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open, started;
    _Atomic int done;
} gate;

static void gate_init(gate *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->open = g->started = false;
    atomic_init(&g->done, 0);
}

static void gate_destroy(gate *g)
{
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

/* Blocks its worker until the gate opens. */
static void blocker(void *arg)
{
    gate *g = arg;
    pthread_mutex_lock(&g->mu);
    g->started = true;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    atomic_fetch_add(&g->done, 1);
}

static void wait_started(gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (!g->started)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void open_gate(gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void count_task(void *arg)
{
    atomic_fetch_add((_Atomic int *)arg, 1);
}

static void test_submit_backpressure(void **state)
{
    (void)state;
    cairn_pool *pool = open_pool(2, 4); /* one worker, four queue slots */
    gate g;
    gate_init(&g);
    _Atomic int count;
    atomic_init(&count, 0);
    assert_int_equal(cairn_pool_submit(pool, blocker, &g), 0);
    wait_started(&g); /* the worker is now busy; the queue is empty */
    for (int i = 0; i < 4; i++)
        assert_int_equal(cairn_pool_submit(pool, count_task, &count), 0);
    assert_int_equal(cairn_pool_submit(pool, count_task, &count), CAIRN_EBUSY);
    assert_int_equal(atomic_load(&count), 0);

    /* parallel_for still completes while the only worker is blocked: the caller does it all. */
    check_cover(pool, 1000);

    open_gate(&g);
    cairn_pool_wait_idle(pool);
    assert_int_equal(atomic_load(&count), 4);
    assert_int_equal(atomic_load(&g.done), 1);
    /* Room again once drained. */
    assert_int_equal(cairn_pool_submit(pool, count_task, &count), 0);
    cairn_pool_wait_idle(pool);
    assert_int_equal(atomic_load(&count), 5);
    cairn_pool_close(pool);
    gate_destroy(&g);
}

static void slow_count_task(void *arg)
{
    cairn_sleep_ns(20000);
    atomic_fetch_add((_Atomic int *)arg, 1);
}

static void test_close_finishes_queued_work(void **state)
{
    (void)state;
    cairn_pool *pool = open_pool(3, 1000);
    _Atomic int count;
    atomic_init(&count, 0);
    for (int i = 0; i < 500; i++)
        assert_int_equal(cairn_pool_submit(pool, slow_count_task, &count), 0);
    cairn_pool_close(pool);
    assert_int_equal(atomic_load(&count), 500);
}

typedef struct {
    cairn_pool *pool;
    _Atomic int *count;
    _Atomic int rejected;
} submitter;

static void *submit_thread(void *arg)
{
    submitter *s = arg;
    for (int i = 0; i < 2000; i++) {
        while (cairn_pool_submit(s->pool, count_task, s->count) == CAIRN_EBUSY) {
            atomic_fetch_add(&s->rejected, 1);
            cairn_sleep_ns(1000);
        }
    }
    return NULL;
}

static void test_submit_under_contention(void **state)
{
    (void)state;
    cairn_pool *pool = open_pool(3, 8);
    _Atomic int count;
    atomic_init(&count, 0);
    submitter s = {.pool = pool, .count = &count};
    atomic_init(&s.rejected, 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, submit_thread, &s);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    cairn_pool_wait_idle(pool);
    assert_int_equal(atomic_load(&count), 4 * 2000);
    cairn_pool_close(pool);
}

static void test_no_workers_runs_inline(void **state)
{
    (void)state;
    for (int n = 0; n <= 1; n++) {
        cairn_pool *pool = open_pool(n, 4);
        assert_int_equal(cairn_pool_threads(pool), 1);
        _Atomic int count;
        atomic_init(&count, 0);
        for (int i = 0; i < 3000; i++)
            assert_int_equal(cairn_pool_submit(pool, count_task, &count), 0);
        assert_int_equal(atomic_load(&count), 3000); /* already run, and no EBUSY past capacity */
        cairn_pool_wait_idle(pool);
        check_cover(pool, 10);
        cairn_pool_close(pool);
    }
    cairn_pool_params p = cairn_pool_default_params();
    assert_true(p.n_threads >= 1);
}

static void test_bad_params(void **state)
{
    (void)state;
    cairn_pool_params p = cairn_pool_default_params();
    cairn_pool *pool = (cairn_pool *)&p;
    cairn_error err;
    p.n_threads = -1;
    assert_int_equal(cairn_pool_open(&pool, &p, &err), CAIRN_EINVAL);
    assert_null(pool);
    p = cairn_pool_default_params();
    p.queue_capacity = 0;
    assert_int_equal(cairn_pool_open(&pool, &p, &err), CAIRN_EINVAL);
    cairn_pool_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parallel_for_covers_every_index_once),
        cmocka_unit_test(test_parallel_for_from_many_threads),
        cmocka_unit_test(test_nested_parallel_for_runs_inline),
        cmocka_unit_test(test_submit_backpressure),
        cmocka_unit_test(test_close_finishes_queued_work),
        cmocka_unit_test(test_submit_under_contention),
        cmocka_unit_test(test_no_workers_runs_inline),
        cmocka_unit_test(test_bad_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
