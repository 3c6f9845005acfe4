/*
 * tests/fuzz/fuzz_sched_profile.c — libFuzzer target for the scheduler's profile files
 * (generation/sched.h), which `cairn bench profile` writes, operators copy between machines,
 * and cairnd reads at start (`sched.profile`).
 *
 * Input: the file's text (a NUL ends it, as the loader refuses files holding one). Checks: no
 * crash or sanitizer report; a failure is CAIRN_EFORMAT with a message; a success holds finite
 * coefficients, a backend of cpu or cuda, a budget of 0 or within 1 ms..10 s, and an SLO only
 * beside a budget; it saves and parses back to the same profile.
 *
 * Seed corpus: gen_corpus_sched_profile.c (profiles as cairn_sched_profile_save writes them).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generation/sched.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void round_trip(const cairn_sched_profile *p)
{
    char path[] = "/tmp/cairn-fuzz-profile-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return; /* no temp dir: the parse checks above still ran */
    close(fd);
    cairn_sched_profile q;
    cairn_error err = {0};
    int rc = cairn_sched_profile_save(path, p, &err);
    if (rc == 0 && cairn_sched_profile_load(path, &q, &err) != 0) abort();
    unlink(path);
    if (rc) {
        if (rc != CAIRN_EINVAL && rc != CAIRN_EIO) abort();
        return;
    }
    /* %.9g keeps coefficients to 9 digits, budgets and SLOs to 6. */
    for (int j = 0; j < CAIRN_PREDICTOR_FEATURES; j++)
        if (fabs(q.coef[j] - p->coef[j]) > 1e-8 * fabs(p->coef[j]) + 1e-300) abort();
    if (fabs(q.budget_s - p->budget_s) > 1e-5 * p->budget_s) abort();
    if (strcmp(q.backend, p->backend[0] ? p->backend : "cpu") || strcmp(q.device, p->device))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    cairn_sched_profile p;
    memset(&p, 0, sizeof p);
    cairn_error err = {0};
    int rc = cairn_sched_profile_parse(text, "fuzz.profile", &p, &err);
    free(text);
    if (rc) {
        if (rc != CAIRN_EFORMAT || !err.msg[0]) abort();
        return 0;
    }
    for (int j = 0; j < CAIRN_PREDICTOR_FEATURES; j++)
        if (!isfinite(p.coef[j])) abort();
    if (p.backend[0] && strcmp(p.backend, "cpu") && strcmp(p.backend, "cuda")) abort();
    if (p.budget_s != 0 && !(p.budget_s >= 0.001 && p.budget_s <= 10)) abort();
    if ((p.ttft_slo_s > 0 || p.tbt_slo_s > 0) && !(p.budget_s > 0)) abort();
    round_trip(&p);
    return 0;
}
