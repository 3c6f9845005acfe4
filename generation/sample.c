/*
 * generation/sample.c — greedy / temperature / top-k / top-p sampling and stop strings.
 *
 * Candidates are ordered totally (probability descending, id ascending). Top-k keeps the k
 * first in one pass over the logits with a heap of k whose root is the last kept: a logit that
 * does not beat the root costs a compare, and blocks of 16 that hold none are dismissed at
 * once (a 262k-entry row: ~0.1 ms, against 3 ms for the quickselect over a scratch copy it
 * replaced). Without top-k, the nucleus is found by quickselect-style partitions until the
 * prefix whose mass first reaches top_p is isolated, then sorting only the last, small part.
 * Expected O(n_vocab) per token either way.
 */
#define _GNU_SOURCE /* memmem */
#include "generation/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ==== Parameters ============================================================================== */

cairn_sample_params cairn_sample_default_params(void)
{
    return (cairn_sample_params){.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 0};
}

cairn_sample_params cairn_sample_greedy_params(void)
{
    return (cairn_sample_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
}

int cairn_sample_params_validate(const cairn_sample_params *p, cairn_error *err)
{
    if (!p) {
        return cairn_errorf(err, CAIRN_EINVAL, "sampling parameters: NULL");
    }
    if (!isfinite(p->temperature) || p->temperature < 0.0f) {
        return cairn_errorf(err, CAIRN_EINVAL, "temperature: %g is not a finite number >= 0",
                            (double)p->temperature);
    }
    if (p->top_k < 0) {
        return cairn_errorf(err, CAIRN_EINVAL, "top_k: %d is negative (0 disables it)", p->top_k);
    }
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) { /* also rejects NaN */
        return cairn_errorf(err, CAIRN_EINVAL, "top_p: %g is outside (0, 1]", (double)p->top_p);
    }
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) {
        return cairn_errorf(err, CAIRN_EINVAL, "min_p: %g is outside [0, 1]", (double)p->min_p);
    }
    if (!(p->repetition_penalty >= 0.0f && p->repetition_penalty <= 10.0f) ||
        (p->repetition_penalty > 0.0f && p->repetition_penalty < 1e-3f)) {
        return cairn_errorf(err, CAIRN_EINVAL, "repetition_penalty: %g is outside (0, 10]",
                            (double)p->repetition_penalty);
    }
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f)) {
        return cairn_errorf(err, CAIRN_EINVAL, "presence_penalty: %g is outside [-2, 2]",
                            (double)p->presence_penalty);
    }
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f)) {
        return cairn_errorf(err, CAIRN_EINVAL, "frequency_penalty: %g is outside [-2, 2]",
                            (double)p->frequency_penalty);
    }
    if (p->n_bias < 0 || p->n_bias > CAIRN_SAMPLE_MAX_BIAS || (p->n_bias > 0 && !p->bias)) {
        return cairn_errorf(err, CAIRN_EINVAL, "logit_bias: %d entries (at most %d)", p->n_bias,
                            CAIRN_SAMPLE_MAX_BIAS);
    }
    for (int32_t i = 0; i < p->n_bias; i++) {
        if (p->bias[i].token < 0) {
            return cairn_errorf(err, CAIRN_EINVAL, "logit_bias: token %d is negative",
                                p->bias[i].token);
        }
        if (!(p->bias[i].bias >= -100.0f && p->bias[i].bias <= 100.0f)) {
            return cairn_errorf(err, CAIRN_EINVAL, "logit_bias: %g for token %d is outside "
                                "[-100, 100]", (double)p->bias[i].bias, p->bias[i].token);
        }
    }
    return 0;
}

static bool penalises(const cairn_sample_params *p)
{
    return (p->repetition_penalty > 0.0f && p->repetition_penalty != 1.0f) ||
           p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
}

bool cairn_sample_params_adjusts(const cairn_sample_params *p)
{
    return p->n_bias > 0 || penalises(p);
}

/* ==== PRNG: xoshiro256** (Blackman & Vigna), seeded by splitmix64 ================================
 */

typedef struct {
    uint64_t s[4];
} rng;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) {
        r->s[i] = splitmix64(&seed);
    }
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(rng *r)
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

/* ==== Sampler ================================================================================= */

typedef struct {
    float v; /* scaled logit, later the unnormalised probability */
    int32_t id;
} cand;

struct cairn_sampler {
    cairn_sample_params p; /* p.bias points at bias below */
    int32_t n_vocab;
    rng rng;
    cand *c; /* n_vocab scratch entries */
    /* With biases or penalties: */
    float *row;              /* the adjusted logits */
    cairn_logit_bias *bias;  /* p.n_bias entries, tokens < n_vocab */
    int32_t *count;          /* with penalties: times each token is in the history */
    int32_t *seen;           /* the distinct tokens of the history, n_seen of them */
    int32_t n_seen;
};

int cairn_sampler_new(cairn_sampler **out, int32_t n_vocab, const cairn_sample_params *p,
                      cairn_error *err)
{
    if (!out) {
        return cairn_errorf(err, CAIRN_EINVAL, "cairn_sampler_new: NULL out");
    }
    *out = NULL;
    int rc = cairn_sample_params_validate(p, err);
    if (rc < 0) {
        return rc;
    }
    if (n_vocab <= 0) {
        return cairn_errorf(err, CAIRN_EINVAL, "sampler: n_vocab %d must be > 0", n_vocab);
    }
    for (int32_t i = 0; i < p->n_bias; i++) {
        if (p->bias[i].token >= n_vocab) {
            return cairn_errorf(err, CAIRN_EINVAL, "logit_bias: token %d is outside the "
                                "vocabulary of %d", p->bias[i].token, n_vocab);
        }
    }
    cairn_sampler *s = calloc(1, sizeof *s);
    bool ok = s && (s->c = malloc((size_t)n_vocab * sizeof *s->c));
    if (ok && cairn_sample_params_adjusts(p)) {
        ok = (s->row = malloc((size_t)n_vocab * sizeof *s->row)) != NULL;
    }
    if (ok && p->n_bias > 0) {
        ok = (s->bias = malloc((size_t)p->n_bias * sizeof *s->bias)) != NULL;
    }
    if (ok && penalises(p)) {
        ok = (s->count = calloc((size_t)n_vocab, sizeof *s->count)) != NULL &&
             (s->seen = malloc((size_t)n_vocab * sizeof *s->seen)) != NULL;
    }
    if (!ok) {
        cairn_sampler_free(s);
        return cairn_errorf(err, CAIRN_ENOMEM, "sampler: out of memory for %d entries", n_vocab);
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    if (p->n_bias > 0) {
        memcpy(s->bias, p->bias, (size_t)p->n_bias * sizeof *s->bias);
    }
    s->p.bias = s->bias;
    rng_seed(&s->rng, p->seed);
    *out = s;
    return 0;
}

void cairn_sampler_free(cairn_sampler *s)
{
    if (s) {
        free(s->c);
        free(s->row);
        free(s->bias);
        free(s->count);
        free(s->seen);
        free(s);
    }
}

void cairn_sampler_accept(cairn_sampler *s, int32_t token)
{
    if (!s->count || token < 0 || token >= s->n_vocab) {
        return;
    }
    if (s->count[token]++ == 0) {
        s->seen[s->n_seen++] = token;
    }
}

/* The logits with the biases added and the history's penalties applied, in s->row. */
static const float *adjusted(cairn_sampler *s, const float *logits)
{
    const cairn_sample_params *p = &s->p;
    float *row = s->row;
    memcpy(row, logits, (size_t)s->n_vocab * sizeof *row);
    for (int32_t i = 0; i < p->n_bias; i++) {
        row[p->bias[i].token] += p->bias[i].bias;
    }
    const float rp = p->repetition_penalty > 0.0f ? p->repetition_penalty : 1.0f;
    for (int32_t i = 0; i < s->n_seen; i++) {
        const int32_t t = s->seen[i];
        float l = row[t];
        if (rp != 1.0f) {
            l = l > 0.0f ? l / rp : l * rp;
        }
        row[t] = l - p->presence_penalty - (float)s->count[t] * p->frequency_penalty;
    }
    return row;
}

void cairn_sampler_reseed(cairn_sampler *s, uint64_t seed)
{
    rng_seed(&s->rng, seed);
}

void cairn_sampler_rng_get(const cairn_sampler *s, cairn_sampler_rng *out)
{
    memcpy(out->s, s->rng.s, sizeof out->s);
}

void cairn_sampler_rng_set(cairn_sampler *s, const cairn_sampler_rng *r)
{
    memcpy(s->rng.s, r->s, sizeof s->rng.s);
}

/* The largest of l[0..BLOCK), NaN ignored (-inf when all are NaN); a loop compilers vectorize. */
enum { BLOCK = 16 };
static inline float block_max(const float *l)
{
    float m[8]; /* independent lanes: a max chain would not vectorize */
    for (int k = 0; k < 8; k++) {
        m[k] = l[k] > -INFINITY ? l[k] : -INFINITY; /* a NaN compares false: skipped */
        m[k] = l[k + 8] > m[k] ? l[k + 8] : m[k];
    }
    for (int w = 4; w > 0; w /= 2) {
        for (int k = 0; k < w; k++) {
            m[k] = m[k] > m[k + w] ? m[k] : m[k + w];
        }
    }
    return m[0];
}

/* The largest of the n logits (a NaN is passed over; -inf for none). */
static float row_max(const float *logits, int32_t n)
{
    float lmax = -INFINITY;
    int32_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK) {
        float m = block_max(logits + i);
        lmax = m > lmax ? m : lmax;
    }
    for (; i < n; i++)
        lmax = logits[i] > lmax ? logits[i] : lmax;
    return lmax;
}

int32_t cairn_sample_argmax(const float *logits, int32_t n)
{
    int32_t best = -1;
    for (int32_t i = 0; i < n; i++) {
        if (i % BLOCK == 0 && i + BLOCK <= n && best >= 0 &&
            !(block_max(logits + i) > logits[best])) {
            i += BLOCK - 1; /* nothing in the block beats the best so far */
            continue;
        }
        if (isnan(logits[i])) {
            continue;
        }
        if (best < 0 || logits[i] > logits[best]) {
            best = i;
        }
    }
    return best;
}

/* a comes before b: larger value first, then lower id. A total order (ids are distinct). */
static inline bool before(const cand *a, const cand *b)
{
    return a->v > b->v || (a->v == b->v && a->id < b->id);
}

static inline void swap_c(cand *a, cand *b)
{
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Partitions c[lo..hi) (hi - lo >= 2) around a median-of-three pivot; returns the pivot's final
 * index j: everything in [lo, j) comes before it, everything in (j, hi) after. */
static size_t partition(cand *c, size_t lo, size_t hi)
{
    size_t mid = lo + (hi - lo) / 2, last = hi - 1;
    if (before(&c[mid], &c[lo])) {
        swap_c(&c[mid], &c[lo]);
    }
    if (before(&c[last], &c[lo])) {
        swap_c(&c[last], &c[lo]);
    }
    if (before(&c[mid], &c[last])) {
        swap_c(&c[mid], &c[last]); /* median now at last */
    }
    cand pv = c[last];
    size_t st = lo;
    for (size_t i = lo; i < last; i++) {
        if (before(&c[i], &pv)) {
            swap_c(&c[i], &c[st++]);
        }
    }
    swap_c(&c[st], &c[last]);
    return st;
}

static int cmp_cand(const void *a, const void *b)
{
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

/* A logit as a candidate's value: (l - lmax) / T, 0 for the maximum itself (also when 1/T
 * overflows). */
static inline float scaled(float l, float lmax, float inv_t)
{
    return l == lmax ? 0.0f : (l - lmax) * inv_t;
}

/* h[0..n) is a heap whose every entry comes before (in `before` order) none of its children:
 * h[0] is the last of them. Restores that from node i down. */
static void sift_down(cand *h, size_t n, size_t i)
{
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) {
            return;
        }
        if (c + 1 < n && before(&h[c], &h[c + 1])) {
            c++; /* the later child */
        }
        if (!before(&h[i], &h[c])) {
            return;
        }
        swap_c(&h[i], &h[c]);
        i = c;
    }
}

/* The k first candidates (in `before` order) among the finite logits of row l[0..n), into
 * h[0..result), sorted; fewer than k when fewer are finite. */
static size_t top_k(cand *h, size_t k, const float *l, int32_t n, float lmax, float inv_t)
{
    size_t m = 0;
    int32_t i = 0;
    for (; i < n && m < k; i++) { /* fill */
        if (isnan(l[i]) || l[i] == -INFINITY) {
            continue;
        }
        h[m] = (cand){scaled(l[i], lmax, inv_t), i};
        for (size_t c = m++; c > 0 && before(&h[(c - 1) / 2], &h[c]); c = (c - 1) / 2) {
            swap_c(&h[(c - 1) / 2], &h[c]);
        }
    }
    /* Ids only grow from here, so a candidate beats the root only with a larger value; NaN and
     * -inf logits never compare larger. */
    for (; i < n; i++) {
        if (i % BLOCK == 0 && i + BLOCK <= n && !(scaled(block_max(l + i), lmax, inv_t) > h[0].v)) {
            i += BLOCK - 1; /* scaled() never decreases, so no entry of the block beats the root */
            continue;
        }
        float v = scaled(l[i], lmax, inv_t);
        if (v > h[0].v) {
            h[0] = (cand){v, i};
            sift_down(h, m, 0);
        }
    }
    qsort(h, m, sizeof *h, cmp_cand);
    return m;
}

/* The size of the nucleus: the fewest first (in order) entries of c[0..n) whose mass reaches
 * need; reorders c so that they are c[0..result). */
static size_t nucleus(cand *c, size_t n, double need)
{
    size_t lo = 0, hi = n;
    double acc = 0.0; /* mass of c[0..lo), all of which is in the nucleus */
    while (hi - lo > 32) {
        size_t j = partition(c, lo, hi);
        double mass = 0.0;
        for (size_t i = lo; i <= j; i++) {
            mass += c[i].v;
        }
        if (acc + mass >= need) {
            hi = j + 1; /* the cut is within [lo, j] */
        } else {
            acc += mass;
            lo = j + 1;
        }
    }
    qsort(c + lo, hi - lo, sizeof *c, cmp_cand);
    for (size_t i = lo; i < hi; i++) {
        acc += c[i].v;
        if (acc >= need) {
            return i + 1;
        }
    }
    return hi; /* rounding: keep everything considered */
}

/* Draws from the m candidates in s->c (scaled logits, one of them 0: the maximum): softmax,
 * min_p, top_p, then the PRNG. */
static int32_t draw(cairn_sampler *s, size_t m)
{
    const cairn_sample_params *p = &s->p;
    double total = 0.0;
    for (size_t i = 0; i < m; i++) {
        s->c[i].v = expf(s->c[i].v); /* <= 1; the maximum (1) is in the set */
        total += s->c[i].v;
    }
    if (p->min_p > 0.0f) { /* the likeliest has the value 1: keep what reaches min_p of it */
        size_t kept = 0;
        total = 0.0;
        for (size_t i = 0; i < m; i++) {
            if (s->c[i].v >= p->min_p) {
                s->c[kept++] = s->c[i];
                total += s->c[i].v;
            }
        }
        m = kept; /* >= 1: the maximum itself */
    }
    if (p->top_p < 1.0f) {
        m = nucleus(s->c, m, (double)p->top_p * total);
        total = 0.0;
        for (size_t i = 0; i < m; i++) {
            total += s->c[i].v;
        }
    }
    double r = rng_uniform(&s->rng) * total, acc = 0.0;
    for (size_t i = 0; i < m; i++) {
        acc += s->c[i].v;
        if (r < acc) {
            return s->c[i].id;
        }
    }
    return s->c[m - 1].id; /* r rounded up to the total */
}

static bool greedy(const cairn_sample_params *p)
{
    return p->temperature == 0.0f || p->top_k == 1;
}

static int32_t pick(cairn_sampler *s, const float *logits, cairn_error *err)
{
    const cairn_sample_params *p = &s->p;
    int32_t n = s->n_vocab;
    if (greedy(p)) {
        int32_t best = cairn_sample_argmax(logits, n);
        if (best < 0 || logits[best] == -INFINITY) {
            return cairn_errorf(err, CAIRN_EINVAL, "sampler: no finite logit in a row of %d", n);
        }
        return best;
    }
    /* Candidates: finite logits as (l - max) / T, which stays finite-or--inf and keeps 0 for
     * the maximum even when 1/T overflows. A +inf logit wins outright. */
    float lmax = row_max(logits, n);
    if (lmax == INFINITY) {
        int32_t i = 0;
        while (logits[i] != INFINITY)
            i++;
        return i;
    }
    float inv_t = 1.0f / p->temperature;
    size_t m = 0;
    if (lmax > -INFINITY && p->top_k > 0 && p->top_k < n) {
        m = top_k(s->c, (size_t)p->top_k, logits, n, lmax, inv_t);
    } else {
        for (int32_t i = 0; i < n && lmax > -INFINITY; i++) {
            float l = logits[i];
            if (!isnan(l) && l != -INFINITY) {
                s->c[m++] = (cand){scaled(l, lmax, inv_t), i};
            }
        }
    }
    if (m == 0) {
        return cairn_errorf(err, CAIRN_EINVAL, "sampler: no finite logit in a row of %d", n);
    }
    return draw(s, m);
}

bool cairn_sample_params_top(const cairn_sample_params *p, int32_t n_vocab, int max, int *k)
{
    *k = 0;
    if (cairn_sample_params_adjusts(p) || max < 1)
        return false;
    if (greedy(p))
        *k = 1;
    else if (p->top_k > 1 && p->top_k <= max && p->top_k < n_vocab)
        *k = p->top_k;
    return *k > 0;
}

int32_t cairn_sampler_sample_top(cairn_sampler *s, const cairn_top *top, cairn_error *err)
{
    const cairn_sample_params *p = &s->p;
    const cairn_cand *c = top->c;
    int k;
    if (s->row || !cairn_sample_params_top(p, s->n_vocab, top->k, &k) || k != top->k)
        return cairn_errorf(err, CAIRN_EINVAL, "sampler: %d entries of a row cannot stand for "
                            "the row with these settings", top->k);
    if (c[0].id < 0) /* the first entry is the largest finite logit, or there is none */
        return cairn_errorf(err, CAIRN_EINVAL, "sampler: no finite logit in a row of %d",
                            s->n_vocab);
    int32_t tok = c[0].id; /* greedy; also a +inf logit, which wins outright (lowest id) */
    if (!greedy(p) && c[0].logit != INFINITY) {
        const float lmax = c[0].logit, inv_t = 1.0f / p->temperature;
        size_t m = 0;
        for (int i = 0; i < k && c[i].id >= 0; i++)
            s->c[m++] = (cand){scaled(c[i].logit, lmax, inv_t), c[i].id};
        qsort(s->c, m, sizeof *s->c, cmp_cand); /* top_k's order: by scaled value, then id */
        tok = draw(s, m);
    }
    cairn_sampler_accept(s, tok);
    return tok;
}

int32_t cairn_sampler_sample(cairn_sampler *s, const float *logits, cairn_error *err)
{
    int32_t tok = pick(s, s->row ? adjusted(s, logits) : logits, err);
    if (tok >= 0) {
        cairn_sampler_accept(s, tok);
    }
    return tok;
}

/* ==== Log probabilities ======================================================================= */

int cairn_sample_logprobs(const float *logits, int32_t n, int32_t token, int k,
                          cairn_token_logprobs *out)
{
    if (n <= 0 || token < 0 || token >= n || k < 0 || k > CAIRN_SAMPLE_MAX_LOGPROBS)
        return CAIRN_EINVAL;
    float lmax = row_max(logits, n);
    if (!(lmax > -INFINITY) || lmax == INFINITY)
        return CAIRN_EINVAL;
    /* log Z = max + log sum exp(l - max); the sum in double over 262k terms. */
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        float l = logits[i];
        if (l > -INFINITY) /* NaN compares false */
            sum += exp((double)l - (double)lmax);
    }
    const double logz = (double)lmax + log(sum);
    const float lt = logits[token];
    out->chosen = (cairn_logprob){token, lt > -INFINITY ? (float)((double)lt - logz) : -INFINITY};
    out->n_top = 0;
    if (k > 0) {
        cand h[CAIRN_SAMPLE_MAX_LOGPROBS];
        size_t m = top_k(h, (size_t)k, logits, n, lmax, 1.0f);
        for (size_t j = 0; j < m; j++) {
            int32_t id = h[j].id;
            out->top[j] = (cairn_logprob){id, (float)((double)logits[id] - logz)};
        }
        out->n_top = (int)m;
    }
    return 0;
}

/* ==== Stop strings ============================================================================ */

struct cairn_stop {
    char **stops;
    size_t *lens;
    size_t n;
    char *buf; /* bytes of the current call: withheld tail of the last one + the new piece */
    size_t len, cap;
    size_t hold_off, hold_len; /* the withheld tail inside buf */
    bool done;
};

int cairn_stop_new(cairn_stop **out, const char *const *stops, size_t n, cairn_error *err)
{
    *out = NULL;
    cairn_stop *m = calloc(1, sizeof *m);
    if (!m) {
        return cairn_errorf(err, CAIRN_ENOMEM, "stop strings: out of memory");
    }
    m->stops = calloc(n ? n : 1, sizeof *m->stops);
    m->lens = calloc(n ? n : 1, sizeof *m->lens);
    if (!m->stops || !m->lens) {
        cairn_stop_free(m);
        return cairn_errorf(err, CAIRN_ENOMEM, "stop strings: out of memory");
    }
    m->n = n;
    for (size_t i = 0; i < n; i++) {
        if (!stops[i] || !stops[i][0]) {
            cairn_stop_free(m);
            return cairn_errorf(err, CAIRN_EINVAL, "stop[%zu]: empty stop string", i);
        }
        m->lens[i] = strlen(stops[i]);
        if (!(m->stops[i] = strdup(stops[i]))) {
            cairn_stop_free(m);
            return cairn_errorf(err, CAIRN_ENOMEM, "stop strings: out of memory");
        }
    }
    *out = m;
    return 0;
}

void cairn_stop_free(cairn_stop *m)
{
    if (!m) {
        return;
    }
    for (size_t i = 0; i < m->n && m->stops; i++) {
        free(m->stops[i]);
    }
    free(m->stops);
    free(m->lens);
    free(m->buf);
    free(m);
}

void cairn_stop_reset(cairn_stop *m)
{
    m->len = m->hold_off = m->hold_len = 0;
    m->done = false;
}

int cairn_stop_feed(cairn_stop *m, const char *piece, size_t len, cairn_stop_result *r)
{
    *r = (cairn_stop_result){.emit = "", .emit_len = 0, .withheld = 0, .stop_index = -1};
    if (m->done) {
        return CAIRN_ESTATE;
    }
    /* Bring the withheld tail of the last call to the front, then append the piece. */
    if (m->hold_len) {
        memmove(m->buf, m->buf + m->hold_off, m->hold_len);
    }
    m->len = m->hold_len;
    m->hold_off = m->hold_len = 0;
    if (m->len + len > m->cap) {
        size_t ncap = (m->len + len) * 2 + 64;
        char *b = realloc(m->buf, ncap);
        if (!b) {
            return CAIRN_ENOMEM;
        }
        m->buf = b, m->cap = ncap;
    }
    if (len) {
        memcpy(m->buf + m->len, piece, len);
    }
    m->len += len;
    if (m->len == 0) {
        return 0;
    }

    /* The earliest complete stop string (the first listed on a tie). */
    size_t best_at = SIZE_MAX;
    for (size_t i = 0; i < m->n; i++) {
        const char *hit = memmem(m->buf, m->len, m->stops[i], m->lens[i]);
        if (hit && (size_t)(hit - m->buf) < best_at) {
            best_at = (size_t)(hit - m->buf);
            r->stop_index = (int)i;
        }
    }
    if (r->stop_index >= 0) {
        m->done = true;
        r->emit = m->buf;
        r->emit_len = best_at;
        return 0;
    }
    /* Withhold the longest tail that is a proper prefix of some stop string. */
    size_t hold = 0;
    for (size_t i = 0; i < m->n; i++) {
        size_t k = m->lens[i] - 1 < m->len ? m->lens[i] - 1 : m->len;
        for (; k > hold; k--) {
            if (memcmp(m->buf + m->len - k, m->stops[i], k) == 0) {
                hold = k;
                break;
            }
        }
    }
    r->emit = m->buf;
    r->emit_len = m->len - hold;
    r->withheld = hold;
    m->hold_off = m->len - hold;
    m->hold_len = hold;
    return 0;
}

void cairn_stop_flush(cairn_stop *m, cairn_stop_result *r)
{
    *r = (cairn_stop_result){.emit = "", .emit_len = 0, .withheld = 0, .stop_index = -1};
    if (!m->done && m->hold_len) {
        r->emit = m->buf + m->hold_off;
        r->emit_len = m->hold_len;
    }
    m->hold_len = 0;
}
