/* tests/unit/test_sample.c — sampling (greedy, temperature, top-k, top-p, seed), stop strings. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/error.h"
#include "generation/sample.h"
#include "tests/unit/first_entries.h"

static uint64_t lcg_state = 12345;
static float rnd_logit(void)
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((lcg_state >> 40) % 20000) / 1000.0f - 10.0f;
}

static cairn_sampler *make(int32_t n, float temp, int32_t k, float p, uint64_t seed)
{
    cairn_sample_params sp = {.temperature = temp, .top_k = k, .top_p = p, .seed = seed};
    cairn_sampler *s = NULL;
    cairn_error err = {0};
    assert_int_equal(cairn_sampler_new(&s, n, &sp, &err), 0);
    return s;
}

static void test_greedy_is_argmax(void **state)
{
    (void)state;
    enum { N = 1000 };
    float l[N];
    cairn_sampler *s = make(N, 0.0f, 0, 1.0f, 1);
    cairn_sampler *k1 = make(N, 1.3f, 1, 0.9f, 7); /* top_k = 1 is greedy at any temperature */
    for (int round = 0; round < 50; round++) {
        int best = 0;
        for (int i = 0; i < N; i++) {
            l[i] = rnd_logit();
            if (l[i] > l[best]) {
                best = i;
            }
        }
        assert_int_equal(cairn_sampler_sample(s, l, NULL), best);
        assert_int_equal(cairn_sampler_sample(k1, l, NULL), best);
        assert_int_equal(cairn_sample_argmax(l, N), best);
    }
    /* Ties go to the lowest id; NaN is ignored. */
    for (int i = 0; i < N; i++) {
        l[i] = 1.0f;
    }
    l[3] = NAN;
    l[700] = 5.0f;
    l[900] = 5.0f;
    assert_int_equal(cairn_sampler_sample(s, l, NULL), 700);
    cairn_sampler_free(s);
    cairn_sampler_free(k1);
}

static void test_seed_reproducible(void **state)
{
    (void)state;
    enum { N = 500, DRAWS = 200 };
    float l[N];
    for (int i = 0; i < N; i++) {
        l[i] = rnd_logit() * 0.3f;
    }
    cairn_sampler *a = make(N, 1.0f, 0, 1.0f, 42), *b = make(N, 1.0f, 0, 1.0f, 42);
    cairn_sampler *c = make(N, 1.0f, 0, 1.0f, 43);
    int32_t first[DRAWS];
    int same_as_other_seed = 0;
    for (int i = 0; i < DRAWS; i++) {
        first[i] = cairn_sampler_sample(a, l, NULL);
        assert_int_equal(cairn_sampler_sample(b, l, NULL), first[i]);
        same_as_other_seed += cairn_sampler_sample(c, l, NULL) == first[i];
    }
    assert_true(same_as_other_seed < DRAWS / 2);
    cairn_sampler_reseed(a, 42); /* reseeding replays the sequence */
    for (int i = 0; i < DRAWS; i++) {
        assert_int_equal(cairn_sampler_sample(a, l, NULL), first[i]);
    }
    /* A fresh sampler given a's PRNG half-way draws what a draws from there (a preempted
     * sequence resumed elsewhere); reseeded instead, it would replay the start. */
    cairn_sampler_reseed(a, 42);
    for (int i = 0; i < DRAWS / 2; i++) {
        cairn_sampler_sample(a, l, NULL);
    }
    cairn_sampler_rng at;
    cairn_sampler_rng_get(a, &at);
    cairn_sampler *d = make(N, 1.0f, 0, 1.0f, 42);
    cairn_sampler_rng_set(d, &at);
    int same_as_start = 0;
    for (int i = DRAWS / 2; i < DRAWS; i++) {
        int32_t t = cairn_sampler_sample(d, l, NULL);
        assert_int_equal(t, first[i]);
        same_as_start += t == first[i - DRAWS / 2];
    }
    assert_true(same_as_start < DRAWS / 4);
    cairn_sampler_free(d);
    cairn_sampler_free(a);
    cairn_sampler_free(b);
    cairn_sampler_free(c);
}

/* Frequencies over many draws match the expected probabilities within 5 standard errors. */
static void check_freqs(cairn_sampler *s, const float *l, int n, const double *expect, int draws)
{
    int counts[16] = {0};
    for (int i = 0; i < draws; i++) {
        int32_t t = cairn_sampler_sample(s, l, NULL);
        assert_true(t >= 0 && t < n);
        counts[t]++;
    }
    for (int i = 0; i < n; i++) {
        double f = (double)counts[i] / draws, p = expect[i];
        double se = sqrt(p * (1 - p) / draws) + 1e-12;
        if (p == 0.0) {
            assert_int_equal(counts[i], 0);
        } else if (fabs(f - p) > 5 * se) {
            fail_msg("token %d: frequency %.4f, expected %.4f (±%.4f)", i, f, p, 5 * se);
        }
    }
}

static void test_temperature_matches_softmax(void **state)
{
    (void)state;
    const float l[6] = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -INFINITY};
    const float temps[3] = {0.5f, 1.0f, 2.0f};
    for (int k = 0; k < 3; k++) {
        double e[6], sum = 0;
        for (int i = 0; i < 6; i++) {
            e[i] = exp((double)l[i] / temps[k]);
            sum += e[i];
        }
        for (int i = 0; i < 6; i++) {
            e[i] /= sum;
        }
        cairn_sampler *s = make(6, temps[k], 0, 1.0f, 100 + k);
        check_freqs(s, l, 6, e, 100000);
        cairn_sampler_free(s);
    }
}

static void test_top_k_and_top_p(void **state)
{
    (void)state;
    /* Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1. */
    const float l[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    /* top_k = 2 keeps {0, 1}, renormalised. */
    cairn_sampler *s = make(4, 1.0f, 2, 1.0f, 5);
    check_freqs(s, l, 4, (const double[]){0.625, 0.375, 0, 0}, 50000);
    cairn_sampler_free(s);
    /* top_p = 0.75: 0.5 < 0.75 <= 0.8, so the nucleus is {0, 1}; the tail is never drawn. */
    s = make(4, 1.0f, 0, 0.75f, 6);
    check_freqs(s, l, 4, (const double[]){0.625, 0.375, 0, 0}, 50000);
    cairn_sampler_free(s);
    /* top_p = 0.9 takes in token 2 too. */
    s = make(4, 1.0f, 0, 0.9f, 7);
    check_freqs(s, l, 4, (const double[]){0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0}, 50000);
    cairn_sampler_free(s);
    /* Small top_p: only the most likely token. */
    s = make(4, 1.0f, 0, 0.1f, 8);
    check_freqs(s, l, 4, (const double[]){1, 0, 0, 0}, 2000);
    cairn_sampler_free(s);
}

/* The reference order: larger logit first, then lower id; NaN and -inf left out. */
static const float *ref_l;
static int cmp_ref(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return ref_l[x] > ref_l[y] ? -1 : ref_l[x] < ref_l[y] ? 1 : (x > y) - (x < y);
}

/* Rows full of ties, NaN and -inf, with the top-k boundary inside a run of equal logits: top-k
 * draws exactly the k first tokens of a full sort (larger logit, then lower id), each of them,
 * and arg-max agrees with a plain scan wherever the maximum and the NaNs fall. */
static void test_top_k_ties_nan_inf(void **state)
{
    (void)state;
    enum { N = 1003, K = 37, DRAWS = 20000 };
    float l[N];
    int ids[N];
    for (int round = 0; round < 4; round++) {
        int n = 0;
        for (int i = 0; i < N; i++) {
            l[i] = i % 7 == 0    ? -INFINITY
                   : i % 11 == 0 ? NAN
                                 : -0.5f * (float)((i * 31 + round) % 4);
            if (round == 3 && i % 3 == 0) {
                l[i] = NAN; /* whole blocks of 16 hold NaN here */
            }
            if (i == N - 1 - round * 5) {
                l[i] = 2.0f; /* the maximum, in the last partial block for round 0 */
            }
            if (!isnan(l[i]) && l[i] != -INFINITY) {
                ids[n++] = i;
            }
        }
        ref_l = l;
        qsort(ids, (size_t)n, sizeof *ids, cmp_ref);
        cairn_sampler *s = make(N, 1.0f, K, 1.0f, 40 + (uint64_t)round);
        int seen[N] = {0};
        for (int d = 0; d < DRAWS; d++) {
            seen[cairn_sampler_sample(s, l, NULL)]++;
        }
        for (int r = 0; r < n; r++) {
            if (r < K) {
                assert_true(seen[ids[r]] > 0); /* every one of the k first is drawn ... */
            }
            seen[ids[r]] = 0;
        }
        for (int i = 0; i < N; i++) {
            assert_int_equal(seen[i], 0); /* ... and nothing else */
        }
        cairn_sampler_free(s);
        for (int r = 0; r < n; r++) {
            seen[ids[r]] = 1; /* mark the finite ones */
        }
        assert_int_equal(cairn_sample_argmax(l, N), ids[0]);
        /* argmax over every prefix length: the max in each possible block position */
        for (int len = 1; len <= 80; len++) {
            int best = -1;
            for (int i = 0; i < len; i++) {
                if (!isnan(l[i]) && (best < 0 || l[i] > l[best])) {
                    best = i;
                }
            }
            assert_int_equal(cairn_sample_argmax(l, len), best);
        }
    }
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* A Gemma-sized vocabulary: every draw lies in the nucleus a full sort finds. */
static void test_top_p_large_vocab(void **state)
{
    (void)state;
    enum { N = 262144 };
    float *l = malloc(N * sizeof *l), *sorted = malloc(N * sizeof *l);
    for (int i = 0; i < N; i++) {
        l[i] = rnd_logit();
        sorted[i] = l[i];
    }
    qsort(sorted, N, sizeof *sorted, cmp_desc);
    double sum = 0, acc = 0;
    for (int i = 0; i < N; i++) {
        sum += exp((double)sorted[i] - sorted[0]);
    }
    float cut = sorted[0];
    for (int i = 0; i < N; i++) {
        acc += exp((double)sorted[i] - sorted[0]);
        cut = sorted[i];
        if (acc >= 0.5 * sum) {
            break;
        }
    }
    cairn_sampler *s = make(N, 1.0f, 0, 0.5f, 9);
    cairn_sampler *k = make(N, 1.0f, 50, 1.0f, 10);
    for (int d = 0; d < 100; d++) {
        int32_t t = cairn_sampler_sample(s, l, NULL);
        assert_true(l[t] >= cut - 1e-6f);
        t = cairn_sampler_sample(k, l, NULL);
        assert_true(l[t] >= sorted[49]);
    }
    cairn_sampler_free(s);
    cairn_sampler_free(k);
    free(l);
    free(sorted);
}

static void test_bad_params(void **state)
{
    (void)state;
    cairn_error err = {0};
    cairn_sample_params p = cairn_sample_default_params();
    assert_int_equal(cairn_sample_params_validate(&p, &err), 0);
    p.temperature = -0.1f;
    assert_int_equal(cairn_sample_params_validate(&p, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "temperature"));
    p.temperature = NAN;
    assert_int_equal(cairn_sample_params_validate(&p, &err), CAIRN_EINVAL);
    p = cairn_sample_default_params();
    p.top_p = 0.0f;
    assert_int_equal(cairn_sample_params_validate(&p, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "top_p"));
    p.top_p = 1.5f;
    assert_int_equal(cairn_sample_params_validate(&p, &err), CAIRN_EINVAL);
    p = cairn_sample_default_params();
    p.top_k = -3;
    assert_int_equal(cairn_sample_params_validate(&p, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "top_k"));
    cairn_sampler *s = NULL;
    assert_int_equal(cairn_sampler_new(&s, 10, &p, &err), CAIRN_EINVAL);
    assert_null(s);
    p = cairn_sample_default_params();
    assert_int_equal(cairn_sampler_new(&s, 0, &p, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "n_vocab"));

    /* A tiny temperature behaves as greedy instead of overflowing. */
    const float row[3] = {1.0f, 3.0f, 2.0f};
    s = make(3, 1e-30f, 0, 1.0f, 1);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(cairn_sampler_sample(s, row, &err), 1);
    }
    cairn_sampler_free(s);

    /* A row with nothing to sample is an error, not a token. */
    const float bad[3] = {-INFINITY, NAN, -INFINITY};
    s = make(3, 0.8f, 0, 1.0f, 1);
    assert_int_equal(cairn_sampler_sample(s, bad, &err), CAIRN_EINVAL);
    cairn_sampler_free(s);
    s = make(3, 0.0f, 0, 1.0f, 1);
    assert_int_equal(cairn_sampler_sample(s, bad, &err), CAIRN_EINVAL);
    cairn_sampler_free(s);
}

/* ---- stop strings ---- */

static void test_stop_across_pieces(void **state)
{
    (void)state;
    const char *stops[2] = {"</s>", "STOP"};
    cairn_stop *m = NULL;
    cairn_stop_result r;
    assert_int_equal(cairn_stop_new(&m, stops, 2, NULL), 0);

    assert_int_equal(cairn_stop_feed(m, "abc<", 4, &r), 0);
    assert_int_equal(r.emit_len, 3);
    assert_memory_equal(r.emit, "abc", 3);
    assert_int_equal(r.withheld, 1);
    assert_int_equal(r.stop_index, -1);
    assert_int_equal(cairn_stop_feed(m, "/", 1, &r), 0);
    assert_int_equal(r.emit_len, 0);
    assert_int_equal(r.withheld, 2);
    assert_int_equal(cairn_stop_feed(m, "s>tail", 6, &r), 0);
    assert_int_equal(r.stop_index, 0);
    assert_int_equal(r.emit_len, 0);
    assert_int_equal(cairn_stop_feed(m, "more", 4, &r), CAIRN_ESTATE);

    /* A false start is released once it cannot be a stop string any more. */
    cairn_stop_reset(m);
    assert_int_equal(cairn_stop_feed(m, "x</", 3, &r), 0);
    assert_int_equal(r.emit_len, 1);
    assert_int_equal(cairn_stop_feed(m, "y", 1, &r), 0);
    assert_int_equal(r.emit_len, 3);
    assert_memory_equal(r.emit, "</y", 3);
    assert_int_equal(r.withheld, 0);

    /* Three pieces, text before the stop in the last one. */
    cairn_stop_reset(m);
    assert_int_equal(cairn_stop_feed(m, "hi S", 4, &r), 0);
    assert_int_equal(r.emit_len, 3);
    assert_int_equal(cairn_stop_feed(m, "TO", 2, &r), 0);
    assert_int_equal(r.emit_len, 0);
    assert_int_equal(r.withheld, 3);
    assert_int_equal(cairn_stop_feed(m, "P!", 2, &r), 0);
    assert_int_equal(r.stop_index, 1);
    assert_int_equal(r.emit_len, 0);

    /* Flush at the end hands back what was withheld. */
    cairn_stop_reset(m);
    assert_int_equal(cairn_stop_feed(m, "end ST", 6, &r), 0);
    assert_int_equal(r.emit_len, 4);
    cairn_stop_flush(m, &r);
    assert_int_equal(r.emit_len, 2);
    assert_memory_equal(r.emit, "ST", 2);
    cairn_stop_free(m);

    /* An overlapping prefix: "aab" inside "aaab". */
    const char *s2[1] = {"aab"};
    assert_int_equal(cairn_stop_new(&m, s2, 1, NULL), 0);
    assert_int_equal(cairn_stop_feed(m, "aa", 2, &r), 0);
    assert_int_equal(r.emit_len, 0);
    assert_int_equal(cairn_stop_feed(m, "ab", 2, &r), 0);
    assert_int_equal(r.stop_index, 0);
    assert_int_equal(r.emit_len, 1);
    assert_memory_equal(r.emit, "a", 1);
    cairn_stop_free(m);

    const char *bad[2] = {"ok", ""};
    cairn_error err = {0};
    assert_int_equal(cairn_stop_new(&m, bad, 2, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "stop[1]"));
}

/* Random texts cut into random pieces: what is streamed is exactly the text up to the first
 * stop string (or all of it), whatever the cuts. */
static void test_stop_random_pieces(void **state)
{
    (void)state;
    const char *stops[3] = {"abab", "ba!", "zz"};
    cairn_stop *m = NULL;
    assert_int_equal(cairn_stop_new(&m, stops, 3, NULL), 0);
    uint64_t x = 99;
    for (int round = 0; round < 2000; round++) {
        char text[64], got[64];
        size_t len = 1 + (size_t)(round % 40), got_len = 0;
        for (size_t i = 0; i < len; i++) {
            x = x * 6364136223846793005ull + 1;
            text[i] = "ab!z"[(x >> 33) % 4];
        }
        text[len] = '\0';
        size_t expect = len;
        for (int k = 0; k < 3; k++) {
            const char *h = strstr(text, stops[k]);
            if (h && (size_t)(h - text) < expect) {
                expect = (size_t)(h - text);
            }
        }
        cairn_stop_reset(m);
        cairn_stop_result r;
        bool stopped = false;
        for (size_t pos = 0; pos < len && !stopped;) {
            x = x * 6364136223846793005ull + 1;
            size_t n = 1 + (x >> 33) % 5;
            if (n > len - pos) {
                n = len - pos;
            }
            assert_int_equal(cairn_stop_feed(m, text + pos, n, &r), 0);
            memcpy(got + got_len, r.emit, r.emit_len);
            got_len += r.emit_len;
            stopped = r.stop_index >= 0;
            pos += n;
        }
        if (!stopped) {
            cairn_stop_flush(m, &r);
            memcpy(got + got_len, r.emit, r.emit_len);
            got_len += r.emit_len;
        }
        assert_int_equal(stopped, expect < len);
        assert_int_equal(got_len, expect);
        assert_memory_equal(got, text, expect);
    }
    cairn_stop_free(m);
}

/* logit_bias moves the greedy pick, leaves the caller's row untouched, and a bias token
 * outside the vocabulary is refused with its id. */
static void test_logit_bias(void **state)
{
    (void)state;
    float l[5] = {1.0f, 3.0f, 2.0f, 0.5f, -1.0f}, copy[5];
    memcpy(copy, l, sizeof l);
    cairn_logit_bias b[2] = {{1, -100.0f}, {4, 2.5f}};
    cairn_sample_params sp = cairn_sample_greedy_params();
    sp.bias = b;
    sp.n_bias = 1;
    cairn_sampler *s = NULL;
    cairn_error err = {0};
    assert_true(cairn_sample_params_adjusts(&sp));
    assert_int_equal(cairn_sampler_new(&s, 5, &sp, &err), 0);
    assert_int_equal(cairn_sampler_sample(s, l, &err), 2); /* 3 - 100 loses to 2 */
    assert_memory_equal(l, copy, sizeof l);
    cairn_sampler_free(s);
    sp.n_bias = 2; /* -1 + 2.5 = 1.5 still below 2 */
    assert_int_equal(cairn_sampler_new(&s, 5, &sp, &err), 0);
    assert_int_equal(cairn_sampler_sample(s, l, &err), 2);
    cairn_sampler_free(s);
    b[1].bias = 3.5f; /* -1 + 3.5 = 2.5 wins */
    assert_int_equal(cairn_sampler_new(&s, 5, &sp, &err), 0);
    assert_int_equal(cairn_sampler_sample(s, l, &err), 4);
    cairn_sampler_free(s);
    b[1].token = 5;
    assert_int_equal(cairn_sampler_new(&s, 5, &sp, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "token 5"));
    b[1].token = 4;
    b[1].bias = 101.0f;
    assert_int_equal(cairn_sample_params_validate(&sp, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "logit_bias"));
}

/* The penalties act on the history: repetition divides a positive logit and multiplies a
 * negative one; presence subtracts once, frequency once per occurrence. */
static void test_penalties(void **state)
{
    (void)state;
    float l[4] = {2.0f, 1.5f, -1.0f, -1.2f};
    cairn_error err = {0};
    cairn_sampler *s = NULL;
    cairn_sample_params sp = cairn_sample_greedy_params();
    sp.repetition_penalty = 2.0f;
    assert_int_equal(cairn_sampler_new(&s, 4, &sp, &err), 0);
    assert_int_equal(cairn_sampler_sample(s, l, &err), 0); /* nothing seen yet */
    assert_int_equal(cairn_sampler_sample(s, l, &err), 1); /* 2 / 2 = 1 < 1.5 */
    assert_int_equal(cairn_sampler_sample(s, l, &err), 0); /* both seen: 1 > 0.75 */
    cairn_sampler_free(s);
    /* a negative logit is multiplied: -1 * 2 = -2 falls below -1.2 */
    float n[3] = {-1.0f, -1.2f, -5.0f};
    assert_int_equal(cairn_sampler_new(&s, 3, &sp, &err), 0);
    cairn_sampler_accept(s, 0);
    assert_int_equal(cairn_sampler_sample(s, n, &err), 1);
    cairn_sampler_free(s);
    /* frequency 0.3 an occurrence; presence 0.6 once, however often */
    sp = cairn_sample_greedy_params();
    sp.frequency_penalty = 0.3f;
    assert_int_equal(cairn_sampler_new(&s, 4, &sp, &err), 0);
    cairn_sampler_accept(s, 0);
    assert_int_equal(cairn_sampler_sample(s, l, &err), 0); /* 2 - 0.3 = 1.7: 0 again */
    assert_int_equal(cairn_sampler_sample(s, l, &err), 1); /* seen twice: 2 - 0.6 = 1.4 */
    cairn_sampler_free(s);
    sp = cairn_sample_greedy_params();
    sp.presence_penalty = 0.6f;
    assert_int_equal(cairn_sampler_new(&s, 4, &sp, &err), 0);
    cairn_sampler_accept(s, 0);
    cairn_sampler_accept(s, 0);
    assert_int_equal(cairn_sampler_sample(s, l, &err), 1); /* 2 - 0.6 = 1.4 < 1.5, once */
    cairn_sampler_free(s);
    sp.presence_penalty = 2.5f;
    assert_int_equal(cairn_sample_params_validate(&sp, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "presence_penalty"));
    sp.presence_penalty = 0;
    sp.repetition_penalty = -1.0f;
    assert_int_equal(cairn_sample_params_validate(&sp, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "repetition_penalty"));
    sp.repetition_penalty = 1.0f; /* off */
    assert_false(cairn_sample_params_adjusts(&sp));
}

/* min_p: a token below min_p times the likeliest's probability is never drawn; the others
 * keep their relative odds. */
static void test_min_p(void **state)
{
    (void)state;
    /* probabilities proportional to 1, 0.5, 0.2, 0.05 */
    float l[4] = {0.0f, logf(0.5f), logf(0.2f), logf(0.05f)};
    cairn_sample_params sp = {.temperature = 1.0f, .top_p = 1.0f, .seed = 5, .min_p = 0.1f};
    cairn_sampler *s = NULL;
    cairn_error err = {0};
    assert_int_equal(cairn_sampler_new(&s, 4, &sp, &err), 0);
    int count[4] = {0};
    enum { DRAWS = 20000 };
    for (int i = 0; i < DRAWS; i++)
        count[cairn_sampler_sample(s, l, &err)]++;
    assert_int_equal(count[3], 0);
    /* 1 : 0.5 : 0.2 over 1.7 */
    assert_float_equal((double)count[0] / DRAWS, 1.0 / 1.7, 0.02);
    assert_float_equal((double)count[1] / DRAWS, 0.5 / 1.7, 0.02);
    assert_float_equal((double)count[2] / DRAWS, 0.2 / 1.7, 0.02);
    cairn_sampler_free(s);
    sp.min_p = 1.5f;
    assert_int_equal(cairn_sample_params_validate(&sp, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "min_p"));
}

/* Log-probabilities equal a log-softmax computed here in long double (a two-pass sum), for
 * rows of several sizes with NaN and -inf entries; the top entries are the k largest logits in
 * order (lowest id first on ties), and the chosen token's value equals its top entry's. */
static void test_logprobs_are_log_softmax(void **state)
{
    (void)state;
    static const int32_t sizes[] = {1, 7, 16, 33, 1000, 49152};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const int32_t n = sizes[si];
        float *l = malloc(sizeof *l * (size_t)n);
        for (int32_t i = 0; i < n; i++) l[i] = rnd_logit() * 3.0f;
        if (n > 10) {
            l[3] = NAN;
            l[5] = -INFINITY;
            l[8] = l[9]; /* a tie */
        }
        long double mx = -INFINITY, sum = 0;
        for (int32_t i = 0; i < n; i++)
            if (l[i] > mx) mx = l[i];
        for (int32_t i = 0; i < n; i++)
            if (l[i] > -INFINITY) sum += expl((long double)l[i] - mx);
        const long double logz = mx + logl(sum);
        for (int k = 0; k <= CAIRN_SAMPLE_MAX_LOGPROBS; k += 5) {
            int32_t tok = n > 100 ? 99 : n - 1;
            cairn_token_logprobs lp;
            assert_int_equal(cairn_sample_logprobs(l, n, tok, k, &lp), 0);
            assert_int_equal(lp.chosen.token, tok);
            assert_true(fabsl((long double)lp.chosen.logprob - (l[tok] - logz)) < 1e-4L);
            assert_true(lp.chosen.logprob <= 0.0f);
            int finite = 0;
            for (int32_t i = 0; i < n; i++) finite += l[i] > -INFINITY;
            assert_int_equal(lp.n_top, k < finite ? k : finite);
            for (int j = 0; j < lp.n_top; j++) {
                int32_t id = lp.top[j].token;
                assert_true(fabsl((long double)lp.top[j].logprob - (l[id] - logz)) < 1e-4L);
                /* no token outside the list beats this entry */
                int beaten = 0;
                for (int32_t i = 0; i < n; i++)
                    beaten += l[i] > l[id] || (l[i] == l[id] && i < id);
                assert_int_equal(beaten, j);
                if (j > 0) assert_true(lp.top[j - 1].logprob >= lp.top[j].logprob);
                if (id == tok) assert_true(lp.top[j].logprob == lp.chosen.logprob);
            }
            if (lp.n_top > 0) assert_int_equal(lp.top[0].token, cairn_sample_argmax(l, n));
        }
        free(l);
    }
    /* Errors: k out of range, a token outside the row, no finite logit. */
    float row[4] = {1, 2, 3, 4};
    cairn_token_logprobs lp;
    assert_int_equal(cairn_sample_logprobs(row, 4, 0, CAIRN_SAMPLE_MAX_LOGPROBS + 1, &lp),
                     CAIRN_EINVAL);
    assert_int_equal(cairn_sample_logprobs(row, 4, 4, 1, &lp), CAIRN_EINVAL);
    assert_int_equal(cairn_sample_logprobs(row, 4, -1, 1, &lp), CAIRN_EINVAL);
    float none[3] = {NAN, -INFINITY, NAN};
    assert_int_equal(cairn_sample_logprobs(none, 3, 0, 1, &lp), CAIRN_EINVAL);
    /* A token of probability 0 is -inf (the API writes -9999). */
    float some[3] = {0.0f, -INFINITY, 1.0f};
    assert_int_equal(cairn_sample_logprobs(some, 3, 1, 3, &lp), 0);
    assert_true(isinf(lp.chosen.logprob) && lp.chosen.logprob < 0);
    assert_int_equal(lp.n_top, 2);
    assert_int_equal(lp.top[0].token, 2);
    assert_true(fabsf(expf(lp.top[0].logprob) + expf(lp.top[1].logprob) - 1.0f) < 1e-6f);
}

/* Sampling from a row's first top_k entries draws what sampling from the row draws, draw after
 * draw of one seed: greedy and top-k with temperature, min-p and top-p, over rows with ties,
 * NaN, -inf, +inf and fewer finite logits than k; and which settings allow it. */
static void test_sample_top(void **state)
{
    (void)state;
    enum { N = 5000, STEPS = 200 };
    static const struct { float temp; int k; float p, min_p; } cfg[] = {
        {0.0f, 0, 1.0f, 0.0f},   {0.7f, 1, 1.0f, 0.0f},   {0.8f, 40, 0.95f, 0.0f},
        {1.5f, 256, 1.0f, 0.0f}, {1.0f, 7, 1.0f, 0.05f},  {2.0f, 100, 0.5f, 0.01f},
    };
    float *row = malloc(sizeof(float) * N);
    cairn_cand top[256];
    assert_non_null(row);
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        cairn_sample_params sp = {.temperature = cfg[c].temp, .top_k = cfg[c].k,
                                  .top_p = cfg[c].p, .min_p = cfg[c].min_p, .seed = 77 + c};
        int k = 0;
        assert_true(cairn_sample_params_top(&sp, N, 256, &k));
        assert_int_equal(k, cfg[c].temp == 0.0f || cfg[c].k == 1 ? 1 : cfg[c].k);
        cairn_sampler *whole = NULL, *part = NULL;
        cairn_error err = {0};
        assert_int_equal(cairn_sampler_new(&whole, N, &sp, &err), 0);
        assert_int_equal(cairn_sampler_new(&part, N, &sp, &err), 0);
        for (int step = 0; step < STEPS; step++) {
            for (int i = 0; i < N; i++)
                row[i] = rnd_logit();
            if (step % 4 == 1) /* ties: a run of equal logits at the top */
                for (int i = 100; i < 140; i++)
                    row[i] = 11.0f;
            if (step % 4 == 2) { /* NaN, -inf, and a +inf that wins outright */
                row[3] = NAN, row[4] = -INFINITY, row[N - 1] = INFINITY;
            }
            if (step % 4 == 3) /* fewer finite logits than k */
                for (int i = 0; i < N; i++)
                    if (i % 500)
                        row[i] = -INFINITY;
            first_entries(row, N, k, top);
            const cairn_top t = {top, k};
            int32_t a = cairn_sampler_sample(whole, row, &err);
            int32_t b = cairn_sampler_sample_top(part, &t, &err);
            if (a != b)
                fail_msg("setting %zu step %d: the whole row drew %d, its first %d entries %d",
                         c, step, a, k, b);
        }
        cairn_sampler_free(whole);
        cairn_sampler_free(part);
    }
    /* What the first entries cannot stand for: no top_k, top_k past the maximum or the
     * vocabulary, biases, penalties. */
    cairn_sample_params sp = cairn_sample_default_params();
    int k = -1;
    sp.top_k = 0;
    assert_false(cairn_sample_params_top(&sp, N, 256, &k));
    assert_int_equal(k, 0);
    sp.top_k = 300;
    assert_false(cairn_sample_params_top(&sp, N, 256, &k));
    sp.top_k = 40;
    assert_false(cairn_sample_params_top(&sp, 40, 256, &k));
    sp.repetition_penalty = 1.1f;
    assert_false(cairn_sample_params_top(&sp, N, 256, &k));
    sp.repetition_penalty = 0.0f;
    const cairn_logit_bias bias = {5, 2.0f};
    sp.bias = &bias, sp.n_bias = 1;
    assert_false(cairn_sample_params_top(&sp, N, 256, &k));
    /* a sampler whose settings need the whole row refuses entries, naming why */
    cairn_sampler *s = NULL;
    cairn_error err = {0};
    assert_int_equal(cairn_sampler_new(&s, N, &sp, &err), 0);
    first_entries(row, N, 40, top);
    const cairn_top t = {top, 40};
    assert_int_equal(cairn_sampler_sample_top(s, &t, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "cannot stand for the row"));
    cairn_sampler_free(s);
    /* no finite entry */
    sp = cairn_sample_default_params();
    assert_int_equal(cairn_sampler_new(&s, N, &sp, &err), 0);
    for (int j = 0; j < 40; j++)
        top[j] = (cairn_cand){-INFINITY, -1};
    assert_int_equal(cairn_sampler_sample_top(s, &t, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "no finite logit"));
    cairn_sampler_free(s);
    free(row);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_is_argmax),
        cmocka_unit_test(test_seed_reproducible),
        cmocka_unit_test(test_temperature_matches_softmax),
        cmocka_unit_test(test_top_k_and_top_p),
        cmocka_unit_test(test_top_p_large_vocab),
        cmocka_unit_test(test_top_k_ties_nan_inf),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_logit_bias),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_logprobs_are_log_softmax),
        cmocka_unit_test(test_sample_top),
        cmocka_unit_test(test_stop_across_pieces),
        cmocka_unit_test(test_stop_random_pieces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
