/*
 * tests/fuzz/gen_corpus_sched_profile.c — writes the seed corpus of fuzz_sched_profile: profiles
 * as cairn_sched_profile_save writes them (every optional line present or absent), so that the
 * seeds follow the predictor's features when they change.
 *
 * Usage: gen_corpus_sched_profile OUT_DIR   (the directory must exist)
 */
#include <stdio.h>
#include <stdlib.h>

#include "generation/sched.h"

static void save(const char *dir, const char *name, const cairn_sched_profile *p)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    cairn_error err = {0};
    if (cairn_sched_profile_save(path, p, &err) != 0) {
        fprintf(stderr, "gen_corpus_sched_profile: %s\n", err.msg);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_corpus_sched_profile OUT_DIR\n");
        return 2;
    }
    cairn_sched_profile p = {.budget_s = 0};
    for (int j = 0; j < CAIRN_PREDICTOR_FEATURES; j++)
        p.coef[j] = (j % 2 ? -1.0 : 1.0) * 1e-4 * (j + 1);
    save(argv[1], "bare", &p); /* backend cpu, no device, no budget */
    snprintf(p.backend, sizeof p.backend, "cuda");
    snprintf(p.device, sizeof p.device, "NVIDIA H100 80GB HBM3");
    p.budget_s = 0.04;
    save(argv[1], "budget", &p);
    p.ttft_slo_s = 1.0;
    p.tbt_slo_s = 0.1;
    save(argv[1], "slo", &p);
    return 0;
}
