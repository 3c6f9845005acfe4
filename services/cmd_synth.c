/* services/cmd_synth.c — `cairn gguf-synth`: generation/synth.h from the command line. */
#include "services/cmd_synth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "generation/synth.h"

const char *const cairn_cmd_synth_usage =
    "usage: cairn gguf-synth --shape NAME --type TYPE --out FILE [--layers N] [--seed S]\n\n"
    "Writes a GGUF of NAME's architecture and shapes with random weights (for benchmarks and\n"
    "tests: its text is noise, its speed is the real model's).\n\n"
    "  --shape NAME   " CAIRN_SYNTH_SHAPES "\n"
    "  --type TYPE    " CAIRN_SYNTH_TYPES "\n"
    "                 (q4_k_m: Q4_K, and Q6_K where llama.cpp's Q4_K_M puts it)\n"
    "  --layers N     fewer layers than the shape has (the others as the shape says)\n"
    "  --seed S       random seed (default 1)";

int cairn_cmd_synth(int argc, char **argv)
{
    const char *shape_name = NULL, *type_name = NULL, *out = NULL;
    long layers = 0;
    unsigned long long seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "cairn gguf-synth: %s needs a value (see cairn gguf-synth --help)\n",
                    a);
            return 2;
        }
        char *end = NULL;
        if (!strcmp(a, "--shape")) {
            shape_name = v;
        } else if (!strcmp(a, "--type")) {
            type_name = v;
        } else if (!strcmp(a, "--out")) {
            out = v;
        } else if (!strcmp(a, "--layers")) {
            layers = strtol(v, &end, 10);
            if (!*v || *end || layers < 1 || layers > 1024) {
                fprintf(stderr, "cairn gguf-synth: --layers '%s' is not in 1..1024\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--seed")) {
            seed = strtoull(v, &end, 10);
            if (!*v || *end) {
                fprintf(stderr, "cairn gguf-synth: --seed '%s' is not a number\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "cairn gguf-synth: unknown option '%s' (see cairn gguf-synth "
                    "--help)\n", a);
            return 2;
        }
        i++;
    }
    if (!shape_name || !type_name || !out) {
        fprintf(stderr, "cairn gguf-synth: --shape, --type and --out are required\n");
        return 2;
    }
    cairn_error err = {0};
    int rc = cairn_synth_write(out, shape_name, type_name, (int)layers, seed, &err);
    if (rc) {
        fprintf(stderr, "cairn gguf-synth: %s\n", err.msg[0] ? err.msg : cairn_strerror(rc));
        return rc == CAIRN_EINVAL ? 2 : 1;
    }
    fprintf(stderr, "cairn gguf-synth: wrote %s\n", out);
    return 0;
}

