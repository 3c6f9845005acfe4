/*
 * services/slo.c — cairnd's scheduler settings from its SLO (slo.h).
 */
#define CAIRN_LOG_TAG "slo"
#include "services/slo.h"

#include "common/log.h"
#include "generation/backend.h"
#include "generation/model.h"
#include "generation/profiler.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int cairn_slo_profile_path(const char *data_dir, const char *model_name, const char *backend,
                           const char *device, char *buf, size_t len)
{
    char slug[160];
    size_t n = 0;
    for (const char *s = device; *s && n + 1 < sizeof slug; s++) {
        if (isalnum((unsigned char)*s)) slug[n++] = (char)tolower((unsigned char)*s);
        else if (n && slug[n - 1] != '-') slug[n++] = '-';
    }
    while (n && slug[n - 1] == '-') n--;
    slug[n] = 0;
    int w = snprintf(buf, len, "%s/profiles/%s-%s-%s.txt", data_dir, model_name, backend,
                     n ? slug : "unknown");
    if (w < 0 || (size_t)w >= len) return CAIRN_ELIMIT;
    return 0;
}

/* The profile to use, if any: sched.profile, else the stored one when it exists. Returns 0
 * (*found says whether one was read and fits this backend and device), or sched.profile's read
 * or parse error (a stored one that cannot be read is logged and passed over). */
static int pick_profile(const cairn_slo_params *p, const char *backend, const char *device,
                        cairn_sched_profile *prof, bool *found, char *source, size_t slen,
                        cairn_error *err)
{
    char stored[4096];
    const char *path = p->profile_path;
    *found = false;
    if (!path) {
        struct stat st;
        if (cairn_slo_profile_path(p->data_dir, p->model_name, backend, device, stored,
                                   sizeof stored) ||
            stat(stored, &st) != 0) {
            CAIRN_LOG_INFO("no stored scheduler profile", "looked_for=%s", stored);
            return 0;
        }
        path = stored;
    }
    int rc = cairn_sched_profile_load(path, prof, err);
    if (rc && !p->profile_path) {
        /* The stored one is cairnd's own cache (an earlier build's, after an upgrade that
         * changed the predictor's features): measure again rather than refuse to start. */
        CAIRN_LOG_WARN("scheduler profile refused", "path=%s why=%s", path, err->msg);
        return 0;
    }
    if (rc) return cairn_error_prefix(err, "sched.profile");
    cairn_error why = {0};
    if (cairn_sched_profile_check(prof, backend, device, &why)) {
        CAIRN_LOG_WARN("scheduler profile refused", "path=%s why=%s", path, why.msg);
        return 0;
    }
    if (!prof->device[0])
        CAIRN_LOG_WARN("scheduler profile of an unknown device", "path=%s detail=%s", path,
                       "a version-2 profile: taken for this CPU's; re-run cairn bench profile");
    snprintf(source, slen, "profile %.*s", (int)(slen > 16 ? slen - 16 : 0), path);
    *found = true;
    return 0;
}

/* The short profiling run at start. Returns 0 or its error (the caller carries on without). */
static int startup_profile(const cairn_slo_params *p, const cairn_engine_params *ep,
                           cairn_slo_plan *out, cairn_error *err)
{
    cairn_model *m = NULL;
    int rc = cairn_model_open(&m, p->model_path, err);
    cairn_profiler_stats st = {0};
    if (!rc) rc = cairn_profiler_run(m, ep, p->startup_iterations, out->coef, &st, err);
    cairn_model_close(m);
    if (rc) return cairn_error_prefix(err, "startup profile");
    out->have_coef = true;
    snprintf(out->source, sizeof out->source, "startup profile (%d iterations, %.1f s, "
             "held-out MAPE %.1f%% on %d)", st.iterations, st.seconds, 100 * st.mape,
             st.held_out);
    CAIRN_LOG_INFO("startup profile", "iterations=%d seconds=%.1f mape_held_out=%.3f "
                   "held_out=%d", st.iterations, st.seconds, st.mape, st.held_out);
    return 0;
}

int cairn_slo_configure(const cairn_slo_params *p, const cairn_engine_params *ep,
                        cairn_slo_plan *out, cairn_error *err)
{
    memset(out, 0, sizeof *out);
    snprintf(out->source, sizeof out->source, "none (learnt from the first iterations)");
    char backend[16], device[256];
    int rc = cairn_backend_identify(ep->device, backend, sizeof backend, device, sizeof device);
    if (rc) return cairn_errorf(err, rc, "workers.device %d: %s", ep->device, device);
    cairn_sched_profile prof;
    bool found = false;
    rc = pick_profile(p, backend, device, &prof, &found, out->source, sizeof out->source, err);
    if (rc) return rc;
    if (found) {
        memcpy(out->coef, prof.coef, sizeof out->coef);
        out->have_coef = true;
    } else if (p->startup_iterations > 0) {
        /* Not fatal: without it the predictor learns from the first iterations served. */
        cairn_error why = {0};
        if (startup_profile(p, ep, out, &why))
            CAIRN_LOG_WARN("no startup profile", "why=%s", why.msg);
    }
    rc = cairn_sched_budgets_for_slo(found ? &prof : NULL, p->ttft_s, p->tbt_s, &out->budget_s,
                                     &out->online_budget_s, err);
    if (rc) return rc;
    if (p->budget_s > 0) {
        CAIRN_LOG_WARN("sched.budget overrides the SLO's", "budget_s=%.4g from_slo_s=%.4g",
                       p->budget_s, out->budget_s);
        out->budget_s = p->budget_s;
    }
    if (p->online_budget_s > 0) {
        CAIRN_LOG_WARN("sched.online_budget overrides the SLO's",
                       "online_budget_s=%.4g from_slo_s=%.4g", p->online_budget_s,
                       out->online_budget_s);
        out->online_budget_s = p->online_budget_s;
    }
    if (out->online_budget_s < out->budget_s) out->online_budget_s = out->budget_s;
    CAIRN_LOG_INFO("scheduler", "backend=%s device=%s slo_ttft_s=%.4g slo_tbt_s=%.4g "
                   "budget_s=%.4g online_budget_s=%.4g predictor=%s", backend, device,
                   p->ttft_s, p->tbt_s, out->budget_s, out->online_budget_s, out->source);
    return 0;
}
