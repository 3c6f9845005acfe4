/*
 * services/cli.c — the `cairn` command: subcommand dispatch and --help for each.
 *
 * Each subcommand is a row in the table below: its name, a one-line summary, its usage
 * text and the function that runs it. `cairn help CMD` and `cairn CMD --help` print the
 * usage; an unknown subcommand gets the list and exit status 2.
 */
#include "common/error.h"
#include "common/gpu.h"
#include "proto/gguf.h"
#include "services/cmd_adapt.h"
#include "services/cmd_bench.h"
#include "services/cmd_generate.h"
#include "services/cmd_synth.h"
#include "services/cmd_index.h"
#include "services/cmd_job.h"
#include "services/server.h"

#include <stdio.h>
#include <string.h>

#define CAIRN_VERSION_STRING "0.1.0"

typedef struct command {
    const char *name;
    const char *summary;
    const char *usage;
    int (*run)(int argc, char **argv);
    const char *const *usage_ref; /* usage text defined by the command's own module, if any */
} command;

static const char *usage_of(const struct command *c)
{
    return c->usage_ref ? *c->usage_ref : c->usage;
}

static const command *find_command(const char *name);
static void print_commands(FILE *out);

/* ---- cairn gguf-info ----------------------------------------------------------------- */

static int cmd_gguf_info(int argc, char **argv)
{
    int flags = 0;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--all") == 0) flags |= CAIRN_GGUF_INFO_FULL;
        else if (strcmp(argv[i], "--no-tensors") == 0) flags |= CAIRN_GGUF_INFO_NO_TENSORS;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "cairn gguf-info: unknown option '%s' (see cairn gguf-info --help)\n",
                    argv[i]);
            return 2;
        } else if (path) {
            fprintf(stderr, "cairn gguf-info: one FILE only (got '%s' and '%s')\n", path, argv[i]);
            return 2;
        } else path = argv[i];
    }
    if (!path) {
        fprintf(stderr, "cairn gguf-info: missing FILE (see cairn gguf-info --help)\n");
        return 2;
    }
    cairn_error err = {0};
    cairn_gguf *g = NULL;
    int rc = cairn_gguf_open(&g, path, &err);
    if (rc) {
        fprintf(stderr, "cairn gguf-info: %s: %s\n", path, err.msg[0] ? err.msg : cairn_strerror(rc));
        return 1;
    }
    rc = cairn_gguf_print_info(stdout, g, flags);
    cairn_gguf_close(g);
    if (fflush(stdout) != 0 || rc) return 1;
    return 0;
}

/* ---- cairn serve ---------------------------------------------------------------------- */

static int cmd_serve(int argc, char **argv) { return cairn_serve_main("cairn serve", argc, argv); }

/* ---- cairn version --------------------------------------------------------------------- */

static int cmd_version(int argc, char **argv)
{
    char why[256] = "";
    int n = cairn_gpu_count(why, sizeof why);
    printf("cairn %s\n", CAIRN_VERSION_STRING);
    printf("cuda: %s\n", cairn_gpu_built() ? "built in" : "not built");
    if (n == 0) printf("gpus: none (%s)\n", why);
    for (int i = 0; i < n; i++) {
        char desc[256];
        cairn_gpu_describe(i, desc, sizeof desc);
        printf("gpu %d: %s\n", i, desc);
    }
    return 0;
}

/* ---- cairn help ----------------------------------------------------------------------- */

static int cmd_help(int argc, char **argv)
{
    if (argc < 2) {
        printf("usage: cairn COMMAND [ARGS]\n\n");
        print_commands(stdout);
        printf("\n`cairn help COMMAND` or `cairn COMMAND --help` tells more.\n");
        return 0;
    }
    const command *c = find_command(argv[1]);
    if (!c) {
        fprintf(stderr, "cairn: no such command '%s'\n\n", argv[1]);
        print_commands(stderr);
        return 2;
    }
    printf("%s\n", usage_of(c));
    return 0;
}

static const command commands[] = {
    {"gguf-info", "print a GGUF file's metadata and tensor table",
     "usage: cairn gguf-info [--all] [--no-tensors] FILE\n\n"
     "Prints the header (version, counts, alignment, size, parameters, tensor types),\n"
     "the metadata (long arrays and strings abbreviated) and the tensor table\n"
     "(name, type, shape, elements, bytes, offset).\n\n"
     "  --all         print arrays and strings in full\n"
     "  --no-tensors  leave out the tensor table",
     cmd_gguf_info, NULL},
    {"gguf-synth", "write a model of real shapes with random weights (benchmarks, tests)",
     NULL, cairn_cmd_synth, &cairn_cmd_synth_usage},
    {"adapt", "train and evaluate the edge and foundation CNNs (Fashion-MNIST)",
     "usage: cairn adapt train --model edge|foundation --out FILE [--epochs N] [--seed S]\n"
     "                         [--threads T]\n"
     "       cairn adapt eval-clean --model FILE\n\n"
     "train       trains on clean Fashion-MNIST (foundation: with generic augmentation only)\n"
     "            and saves a GGUF; progress shows epoch, loss, accuracy, rate and ETA\n"
     "eval-clean  prints the model's accuracy on the clean test set",
     cairn_cmd_adapt, NULL},
    {"generate", "generate text from a prompt with a GGUF model, streamed",
     NULL, cairn_cmd_generate, &cairn_cmd_generate_usage},
    {"index", "ingest a corpus and build the passage index (cached), with progress",
     NULL, cairn_cmd_index, &cairn_cmd_index_usage},
    {"embed", "print the embeddings of texts as JSON arrays",
     NULL, cairn_cmd_embed, &cairn_cmd_embed_usage},
    {"search", "the passages of the index nearest to a text",
     NULL, cairn_cmd_search, &cairn_cmd_search_usage},
    {"bench", "scheduler benchmarks: latency predictor profile, online/offline co-location",
     NULL, cairn_cmd_bench, &cairn_cmd_bench_usage},
    {"job", "submit offline summarization jobs to Redis and read their status",
     NULL, cairn_cmd_job, &cairn_cmd_job_usage},
    {"serve", "run the cairnd service in the foreground",
     "usage: cairn serve [--config FILE] [--KEY=VALUE ...]\n\n"
     "Runs the same service as cairnd; `cairn serve --help-config` lists every key.",
     cmd_serve, NULL},
    {"version", "print the version and the GPUs this build can use",
     "usage: cairn version", cmd_version, NULL},
    {"help", "list the commands, or describe one", "usage: cairn help [COMMAND]", cmd_help, NULL},
};

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

static void print_commands(FILE *out)
{
    fprintf(out, "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return cmd_help(1, argv);
    if (strcmp(argv[1], "--version") == 0) return cmd_version(1, argv);
    const command *c = find_command(argv[1]);
    if (!c) {
        fprintf(stderr, "cairn: no such command '%s'\n\n", argv[1]);
        print_commands(stderr);
        return 2;
    }
    /* `cairn CMD --help` anywhere among CMD's arguments prints its usage and stops.
     * serve has its own --help (it lists the configuration keys). */
    if (c->run != cmd_serve)
        for (int i = 2; i < argc; i++)
            if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
                printf("%s\n", usage_of(c));
                return 0;
            }
    return c->run(argc - 1, argv + 1);
}
