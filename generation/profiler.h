/*
 * generation/profiler.h — a short profile of an engine at start: the latency predictor's
 * coefficients (generation/sched.h) from a few dozen timed iterations of random batch shapes,
 * for a server that has no stored profile (`cairn bench profile --out`) for its backend and
 * device. It is a smaller cousin of `cairn bench profile`: each shape is timed once (after two
 * untimed steps of it on a GPU, whose first steps of a shape are not its steady ones), prompts
 * are short (prefill chunks of 1..128 tokens, decode contexts of 8..320), and the fit is
 * checked on the last 30% of the draws before it is refitted on all of them.
 *
 * Thread-safety: one call runs on the caller's thread (and the engine's compute threads).
 */
#ifndef CAIRN_GENERATION_PROFILER_H
#define CAIRN_GENERATION_PROFILER_H

#include "common/error.h"
#include "generation/engine.h"
#include "generation/model.h"
#include "generation/sched.h"

typedef struct {
    int iterations;    /* timed iterations (at least 35: two a feature in the 70% fitted) */
    double seconds;    /* the whole run, untimed prefill included */
    double mape;       /* the held-out MAPE of the fit on the first 70% (a fraction) */
    int held_out;      /* iterations that MAPE covers */
} cairn_profiler_stats;

/*
 * Opens an engine over m with ep's device, threads and block size (12 sequences of 512
 * positions, or the model's context when shorter; m must outlive the call), times `iterations` steps of random shapes, fits the
 * predictor and writes its coefficients to coef. Returns 0, CAIRN_EINVAL (fewer than 35
 * iterations, or a model context under 256 positions), or the engine's or the fit's error (in err). *st may be NULL.
 */
int cairn_profiler_run(const cairn_model *m, const cairn_engine_params *ep, int iterations,
                       double coef[CAIRN_PREDICTOR_FEATURES], cairn_profiler_stats *st,
                       cairn_error *err);

#endif
