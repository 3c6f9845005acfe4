/*
 * services/slo.h — cairnd's scheduler settings from its SLO: the latency predictor's
 * coefficients and the slo policy's budgets for one engine's backend and device.
 *
 * cairnd is configured by its SLO (slo.ttft, slo.tbt: p99 targets). The predictor's
 * coefficients come from a profile measured on the same backend and device: sched.profile when
 * set, else the stored one, DATA/profiles/<model>-<backend>-<device>.txt (cairn_slo_profile_path;
 * `cairn bench profile --out DATA/profiles/` writes it there), else a short profiling run at
 * start (generation/profiler.h), logged with its length and held-out error. A profile measured
 * on another backend or device is refused with the reason logged (a CPU profile is never used
 * for a GPU engine, nor one GPU's for another). The budgets follow from the SLO and the profile
 * (cairn_sched_budgets_for_slo). Explicit sched.budget / sched.online_budget win over the
 * derived values, with a warning that names both.
 *
 * Thread-safety: called once, at start, on cairnd's main thread.
 */
#ifndef CAIRN_SERVICES_SLO_H
#define CAIRN_SERVICES_SLO_H

#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"
#include "generation/engine.h"
#include "generation/sched.h"

typedef struct {
    const char *model_path;   /* the LLM's GGUF */
    const char *model_name;   /* its id (the stored profile's file name) */
    const char *data_dir;     /* stored profiles live in data_dir/profiles/ */
    const char *profile_path; /* sched.profile, or NULL */
    double ttft_s, tbt_s;     /* slo.ttft, slo.tbt (p99, seconds) */
    double budget_s;          /* sched.budget when set explicitly, else 0 */
    double online_budget_s;   /* sched.online_budget when set explicitly, else 0 */
    int startup_iterations;   /* sched.startup_profile: iterations of the run at start; 0 none */
} cairn_slo_params;

typedef struct {
    bool have_coef;                           /* coef holds a profile's coefficients */
    double coef[CAIRN_PREDICTOR_FEATURES];
    double budget_s, online_budget_s;         /* for cairn_sched_params */
    char source[512];                         /* where the coefficients came from, for logs */
} cairn_slo_plan;

/* The stored profile's path for a model on a backend and device: data_dir/profiles/
 * <model_name>-<backend>-<device>.txt, the device's name in lower case with every run of other
 * characters than letters and digits made one '-'. Returns 0, or CAIRN_ELIMIT when it does not
 * fit len. */
int cairn_slo_profile_path(const char *data_dir, const char *model_name, const char *backend,
                           const char *device, char *buf, size_t len);

/*
 * Settles the predictor and the budgets for workers whose engines use ep (its device decides
 * the backend). Returns 0 and *out, or: CAIRN_EINVAL (a bad SLO), a profile's parse or read
 * error (sched.profile, or a stored profile that exists). A startup run that fails is logged
 * and left out (the predictor then learns from the first iterations).
 */
int cairn_slo_configure(const cairn_slo_params *p, const cairn_engine_params *ep,
                        cairn_slo_plan *out, cairn_error *err);

#endif
