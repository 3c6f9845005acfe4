/*
 * tests/reference/gemma3_ref.h — reads tests/data/generation/gemma3_ref.txt, the llama.cpp
 * reference written by scripts/generation-reference (format described there). Test-only.
 */
#ifndef CAIRN_TESTS_REFERENCE_GEMMA3_REF_H
#define CAIRN_TESTS_REFERENCE_GEMMA3_REF_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REF_MAX_PROMPTS 8
#define REF_TOP 10
#define REF_MAX_CHECKS 128
#define REF_MAX_FULL 4

typedef struct {
    int n_prompt;
    int *prompt;
    int n_greedy;
    int *greedy;
    int n_checks;
    int check_pos[REF_MAX_CHECKS];
    int top_id[REF_MAX_CHECKS][REF_TOP];
    float top_val[REF_MAX_CHECKS][REF_TOP];
    int n_full;
    int full_pos[REF_MAX_FULL];
    char full_file[REF_MAX_FULL][256];
} ref_prompt;

typedef struct {
    int n_vocab;
    int n_prompts;
    ref_prompt p[REF_MAX_PROMPTS];
} ref_set;

static void ref_free(ref_set *r)
{
    for (int i = 0; i < r->n_prompts; i++) {
        free(r->p[i].prompt);
        free(r->p[i].greedy);
    }
    memset(r, 0, sizeof *r);
}

/* Returns 0, or -1 when the file is missing or malformed (the test then fails or skips). */
static int ref_load(ref_set *r, const char *path)
{
    memset(r, 0, sizeof *r);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char word[64];
    int rc = -1;
    while (fscanf(f, "%63s", word) == 1) {
        ref_prompt *p = r->n_prompts ? &r->p[r->n_prompts - 1] : NULL;
        if (!strcmp(word, "model")) {
            if (fscanf(f, "%*s") != 0)
                break;
        } else if (!strcmp(word, "n_vocab")) {
            if (fscanf(f, "%d", &r->n_vocab) != 1)
                break;
        } else if (!strcmp(word, "prompt")) {
            int idx, n;
            if (r->n_prompts == REF_MAX_PROMPTS || fscanf(f, "%d %d", &idx, &n) != 2 || n < 1)
                break;
            p = &r->p[r->n_prompts++];
            p->n_prompt = n;
            p->prompt = malloc(sizeof(int) * (size_t)n);
            for (int i = 0; i < n; i++)
                if (fscanf(f, "%d", &p->prompt[i]) != 1)
                    goto out;
        } else if (!strcmp(word, "greedy") && p) {
            int n;
            if (fscanf(f, "%d", &n) != 1 || n < 1)
                break;
            p->n_greedy = n;
            p->greedy = malloc(sizeof(int) * (size_t)n);
            for (int i = 0; i < n; i++)
                if (fscanf(f, "%d", &p->greedy[i]) != 1)
                    goto out;
        } else if (!strcmp(word, "top") && p && p->n_checks < REF_MAX_CHECKS) {
            int c = p->n_checks++;
            if (fscanf(f, "%d", &p->check_pos[c]) != 1)
                break;
            for (int i = 0; i < REF_TOP; i++)
                if (fscanf(f, "%d:%f", &p->top_id[c][i], &p->top_val[c][i]) != 2)
                    goto out;
        } else if (!strcmp(word, "full") && p && p->n_full < REF_MAX_FULL) {
            int c = p->n_full++;
            if (fscanf(f, "%d %255s", &p->full_pos[c], p->full_file[c]) != 2)
                break;
        } else if (!strcmp(word, "end")) {
            rc = r->n_prompts > 0 && r->n_vocab > 0 ? 0 : -1;
            break;
        } else {
            break;
        }
    }
out:
    fclose(f);
    if (rc)
        ref_free(r);
    return rc;
}

#endif
