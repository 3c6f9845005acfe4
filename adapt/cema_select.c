/*
 * adapt/cema_select.c — CEMA's edge-side sample selection (adapt/cema_select.h).
 */
#include "adapt/cema_select.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/rand.h"

struct cairn_cema_selector {
    cairn_cema_select_params p;
    int k;
    int have_ema;  /* ema_h is initialised */
    int have_pbar; /* pbar is initialised */
    double ema_h;
    double credit; /* the budget's fraction of a sample carried to the next batch, in [0, 1) */
    uint64_t rng;  /* the budget's random share (splitmix64 state) */
    float *pbar;
    uint64_t seen, kept;
};

cairn_cema_select_params cairn_cema_select_default_params(void)
{
    cairn_cema_select_params p = {
        .lambda = 1.0f,
        .entropy_decay = 0.9f,
        .e_min = 0.0f,
        .d_margin = 0.5f,
        .pred_decay = 0.9f,
        .lambda_min = 0.0f,
        .upload_fraction = 0.0f,
        .upload_random = 0.0f,
        .upload_power = 0.0f,
    };
    return p;
}

int cairn_cema_selector_new(cairn_cema_selector **out, int k, const cairn_cema_select_params *p,
                            cairn_error *err)
{
    *out = NULL;
    if (k < 2 || k > 1000000) return cairn_errorf(err, CAIRN_EINVAL, "selector: %d classes", k);
    if (!(p->lambda > 0) || !(p->entropy_decay >= 0 && p->entropy_decay < 1) || !(p->e_min >= 0) ||
        !(p->d_margin > 0 && p->d_margin <= 1) || !(p->pred_decay >= 0 && p->pred_decay < 1) ||
        !(p->lambda_min >= 0 && p->lambda_min < p->lambda))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "selector: lambda %g, entropy_decay %g, e_min %g, d_margin %g, "
                            "pred_decay %g, lambda_min %g out of range",
                            (double)p->lambda, (double)p->entropy_decay, (double)p->e_min,
                            (double)p->d_margin, (double)p->pred_decay, (double)p->lambda_min);
    if (!(p->upload_fraction >= 0 && p->upload_fraction <= 1))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "selector: upload_fraction %g out of range: 0 (no budget) or the "
                            "fraction of each batch to upload, in (0, 1]",
                            (double)p->upload_fraction);
    if (!(p->upload_random >= 0 && p->upload_random < 1) ||
        (p->upload_random > 0 && !(p->upload_fraction > 0)))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "selector: upload_random %g out of range: the share of the upload "
                            "budget drawn at random, in [0, 1), and only with upload_fraction > 0",
                            (double)p->upload_random);
    if (!(p->upload_power >= 0 && p->upload_power <= 64) ||
        (p->upload_power > 0 && !(p->upload_fraction > 0)))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "selector: upload_power %g out of range: the exponent of the upload "
                            "budget's draw by entropy^beta, in [0, 64] (0: the most uncertain), "
                            "and only with upload_fraction > 0",
                            (double)p->upload_power);
    cairn_cema_selector *s = calloc(1, sizeof *s);
    if (s) s->pbar = calloc((size_t)k, sizeof *s->pbar);
    if (!s || !s->pbar) {
        free(s);
        return cairn_errorf(err, CAIRN_ENOMEM, "selector");
    }
    s->p = *p;
    s->k = k;
    s->rng = 0x43454d41u; /* fixed: a device's choices are reproducible */
    *out = s;
    return 0;
}

void cairn_cema_selector_free(cairn_cema_selector *s)
{
    if (!s) return;
    free(s->pbar);
    free(s);
}

void cairn_cema_selector_reset(cairn_cema_selector *s)
{
    s->have_ema = s->have_pbar = 0;
    s->ema_h = 0;
    /* The budget's carried fraction stays: it is the device's share, not a statistic of the
     * model (cleared, a device that takes a bundle after every batch would upload floor(q n)). */
    memset(s->pbar, 0, (size_t)s->k * sizeof *s->pbar);
}

static int row_ok(const float *p, int k, float h)
{
    if (!isfinite(h) || h < 0) return 0;
    for (int j = 0; j < k; j++)
        if (!(p[j] >= 0.0f && p[j] <= 1.0f)) return 0;
    return 1;
}

static double cosine(const float *a, const float *b, int k)
{
    double ab = 0, aa = 0, bb = 0;
    for (int j = 0; j < k; j++) {
        ab += (double)a[j] * b[j];
        aa += (double)a[j] * a[j];
        bb += (double)b[j] * b[j];
    }
    if (aa <= 0 || bb <= 0) return 0;
    return ab / sqrt(aa * bb);
}

/* Power acquisition's Gumbel key of sample i in a batch whose draw is keyed by seed: beta ln H +
 * G, G = -ln(-ln U). U is a function of (seed, i), so the key is recomputed, not stored (the
 * selector allocates nothing per batch), and a batch's draw is reproducible. */
static double power_key(uint64_t seed, int i, double beta, float h)
{
    uint64_t st = seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(i + 1));
    double u = ((double)(cairn_rand_next(&st) >> 11) + 0.5) / 9007199254740992.0; /* (0, 1) */
    double lh = h > 0 ? log((double)h) : -1e300;
    return beta * lh - log(-log(u));
}

/* The rules of adapt/cema_select.h for one valid sample; a kept sample moves p_bar. */
static int judge(cairn_cema_selector *s, const float *p, float h, double e_max, double e_min_dyn)
{
    const int k = s->k;
    if (!(h < e_max)) return 0;
    if (s->p.e_min > 0 && !(h > s->p.e_min)) return 0;
    if (s->p.lambda_min > 0 && !(h > e_min_dyn)) return 0;
    if (s->have_pbar && fabs(cosine(s->pbar, p, k)) >= s->p.d_margin) return 0;
    if (!s->have_pbar) {
        memcpy(s->pbar, p, (size_t)k * sizeof *p);
        s->have_pbar = 1;
    } else {
        const float a = s->p.pred_decay;
        for (int j = 0; j < k; j++)
            s->pbar[j] = a * s->pbar[j] + (1 - a) * p[j];
    }
    return 1;
}

int cairn_cema_select(cairn_cema_selector *s, const float *probs, const float *entropies, int n,
                      uint8_t *keep)
{
    const int k = s->k;
    /* The batch enters the running mean before it is judged, so that the first batch has a
     * threshold and a sudden shift moves E_max at once. */
    double sum = 0;
    int valid = 0;
    for (int i = 0; i < n; i++)
        if (row_ok(probs + (size_t)i * k, k, entropies[i])) {
            sum += entropies[i];
            valid++;
        }
    if (valid > 0) {
        double mean = sum / valid;
        s->ema_h =
            s->have_ema ? s->p.entropy_decay * s->ema_h + (1 - s->p.entropy_decay) * mean : mean;
        s->have_ema = 1;
    }
    const double e_max = s->p.lambda * s->ema_h, e_min_dyn = s->p.lambda_min * s->ema_h;
    s->seen += (uint64_t)valid;
    int kept = 0;
    if (!(s->p.upload_fraction > 0)) {
        for (int i = 0; i < n; i++) {
            keep[i] = 0;
            if (row_ok(probs + (size_t)i * k, k, entropies[i]))
                kept += keep[i] = judge(s, probs + (size_t)i * k, entropies[i], e_max, e_min_dyn);
        }
        s->kept += (uint64_t)kept;
        return kept;
    }
    /* The budget: q of the valid samples, the fraction carried, so that batches of 32 at q 0.3
     * upload 9 or 10 and 30% in the long run. */
    const double want = s->credit + (double)s->p.upload_fraction * valid;
    const int budget = (int)floor(want + 1e-9);
    s->credit = want - budget > 0 ? want - budget : 0;
    /* keep[] doubles as the work list: 2 = valid, not judged yet. Judging in decreasing entropy
     * fills the budget with the most uncertain samples that pass the other rules. */
    for (int i = 0; i < n; i++)
        keep[i] = row_ok(probs + (size_t)i * k, k, entropies[i]) ? 2 : 0;
    const int top = budget - (int)floor(s->p.upload_random * budget + 0.5);
    const double beta = s->p.upload_power;
    const uint64_t draw = beta > 0 ? cairn_rand_next(&s->rng) : 0;
    while (kept < top) {
        int best = -1;
        double best_key = 0;
        for (int i = 0; i < n; i++) {
            if (keep[i] != 2) continue;
            double key = beta > 0 ? power_key(draw, i, beta, entropies[i]) : entropies[i];
            if (best < 0 || key > best_key) best = i, best_key = key;
        }
        if (best < 0) break;
        keep[best] = judge(s, probs + (size_t)best * k, entropies[best], e_max, e_min_dyn);
        kept += keep[best];
    }
    /* The random share: drawn uniformly from the samples not judged yet, so that the uploads
     * also represent the batch (the cloud normalises the edge model with their statistics). */
    int left = 0;
    for (int i = 0; i < n; i++)
        left += keep[i] == 2;
    for (; kept < budget && left > 0; left--) {
        int r = (int)(cairn_rand_next(&s->rng) % (uint64_t)left), pick = -1;
        for (int i = 0; i < n && pick < 0; i++)
            if (keep[i] == 2 && r-- == 0) pick = i;
        keep[pick] = judge(s, probs + (size_t)pick * k, entropies[pick], e_max, e_min_dyn);
        kept += keep[pick];
    }
    for (int i = 0; i < n; i++)
        if (keep[i] == 2) keep[i] = 0;
    s->kept += (uint64_t)kept;
    return kept;
}

float cairn_cema_selector_e_max(const cairn_cema_selector *s)
{
    return (float)(s->p.lambda * s->ema_h);
}

uint64_t cairn_cema_selector_seen(const cairn_cema_selector *s)
{
    return s->seen;
}
uint64_t cairn_cema_selector_kept(const cairn_cema_selector *s)
{
    return s->kept;
}
