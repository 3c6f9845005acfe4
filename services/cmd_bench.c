/*
 * services/cmd_bench.c — `cairn bench`: its usage, and the dispatch to each benchmark.
 *
 * The scheduler's benchmarks each have a file: cmd_bench_profile.c (the latency predictor's
 * accuracy and the SLO profiler's budget), cmd_bench_colocate.c (online latency beside offline
 * throughput under each policy), cmd_bench_yield.c (layer-level preemption); what they share
 * (the workers run in this process, prompts, a measured run) is cmd_bench_run.c. The retrieval
 * benchmark is cmd_bench_quality.c.
 */
#include "services/cmd_bench.h"
#include "services/cmd_bench_quality.h"
#include "services/cmd_bench_run.h"

#include <stdio.h>
#include <string.h>

const char *const cairn_cmd_bench_usage =
    "usage: cairn bench profile  [-m MODEL] [--iterations N] [--repeat R] [--warmup W]\n"
    "                            [--threads T] [--device N] [--out FILE|DIR] [--samples CSV]\n"
    "                            [--ttft-slo MS --tbt-slo MS [--load F] [--budgets MS,...]\n"
    "                             [--duration S] [--backlog N] [--max-seqs N]]\n"
    "       cairn bench colocate [-m MODEL] [--policies P,...] [--loads F,...|--rates R,...]\n"
    "                            [--duration S] [--ttft-slo MS] [--tbt-slo MS] [--budget MS]\n"
    "                            [--backlog N] [--max-seqs N] [--threads T] [--seed S]\n"
    "                            [--online-budget MS] [--profile FILE] [--markdown FILE]\n"
    "                            [--device N] [--as-cairnd DATA_DIR [--startup-iterations N]]\n"
    "                            [--offline-occupancy F] [--requests CSV]\n"
    "       cairn bench yield    [-m MODEL] [--trials N] [--doc-tokens N] [--pass-tokens N]\n"
    "                            [--threads T] [--device N]\n"
    "       cairn bench retrieval-quality [...]  (cairn bench retrieval-quality --help)\n"
    "       cairn bench rag-answers [...]  (cairn bench rag-answers --help)\n\n"
    "profile   times N (default 600) iterations of random batch shapes, each shape R times\n"
    "          in a row (default 3) after W untimed steps of it (default 2 on a GPU, where a\n"
    "          shape's first steps load kernels and capture a graph; 0 on the CPU), fits the\n"
    "          latency predictor on the first 70% of the shapes (each one's median time) and\n"
    "          prints its MAPE on every timed iteration of the rest per bucket, as fitted and\n"
    "          as cairnd refits it (mape_online), beside the machine's noise floor in that\n"
    "          bucket (JSON lines; cpu_stall: the share of the timed time other tasks waited\n"
    "          for a CPU, i.e. how far from idle it was).\n"
    "          noise_floor compares back-to-back repeats; noise_floor_spread times fixed\n"
    "          decode batches of 1, 4 and 8 tokens every 10 shapes through the run\n"
    "          (sched_profile_probe lines), the noise a shape meets over minutes;\n"
    "          sched_profile_machine times a fixed 15 ms arithmetic loop and a fixed\n"
    "          15 ms memory stream 3 times each after every shape: the machine's\n"
    "          repeatability with the engine out of it.\n"
    "          --samples writes\n"
    "          every timed iteration (shape, seconds) as CSV; --out stores the profile\n"
    "          (cairn-sched-profile 3: backend, device, features, coefficients; a directory\n"
    "          gets the name cairnd looks for in DATA/profiles/). With an SLO it then runs the\n"
    "          slo policy at --load (default 0.5) of the online capacity with each budget\n"
    "          (default 50,100,150,200,300,400 ms, tried smallest first) for S seconds\n"
    "          (default 30) and picks the largest before the first whose p99 TTFT or TBT\n"
    "          misses the SLO; --out then also holds that budget and its SLO\n"
    "          (cairnd: sched.profile, or DATA/profiles/<model>-<backend>-<device>.txt).\n"
    "colocate  per policy (default slo,online-only,fcfs-hybrid) and online rate, Poisson\n"
    "          arrivals for S seconds (default 60) beside a backlog of N (default 8) offline\n"
    "          requests; prints JSON lines, then a markdown table. Loads are fractions of the\n"
    "          measured online capacity (default 0.25,0.5,0.75). Online prompts are 16-128\n"
    "          tokens (uniform), outputs 32 tokens; offline prompts 300-500 tokens, outputs 64.\n"
    "          SLO defaults: TTFT 3000 ms, TBT 300 ms; slo budget: --budget, else the\n"
    "          --profile's stored one, else 150 ms; online prompt chunks' budget 0.6 x the\n"
    "          TBT SLO (--online-budget); offline work pauses while online requests hold\n"
    "          F (default 0.75) of --max-seqs (--offline-occupancy; 1: only when all).\n"
    "          --requests: a CSV row per online request (label, submitted, TTFT, largest\n"
    "          gap, tokens, online requests in flight at its submission, error).\n"
    "          --profile: predictor coefficients (and budget)\n"
    "          from `bench profile --out` (else learnt as it runs). --as-cairnd DATA_DIR:\n"
    "          predictor and budgets as cairnd derives them from --ttft-slo/--tbt-slo\n"
    "          (--profile, else DATA_DIR/profiles/'s for this backend and device, else its\n"
    "          short profiling run of --startup-iterations, default 48).\n"
    "yield     layer-level preemption: an offline document (default 1500 tokens, at most\n"
    "          32768) is being prefilled in passes of --pass-tokens (default 512; policy\n"
    "          online-only, nothing else running) when an online request (32 tokens) arrives\n"
    "          at a random moment, 10-90% into the document's prefill as timed alone first;\n"
    "          its TTFT with and without layer_yield, N trials each (default 10), same\n"
    "          arrival times.\n"
    "--device N runs the engine on GPU N (default -1, the CPU).\n";

int cairn_cmd_bench(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "profile")) return cairn__bench_profile(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "colocate")) return cairn__bench_colocate(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "yield")) return cairn__bench_yield(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "retrieval-quality")) {
        if (argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
            fputs(cairn_cmd_bench_quality_usage, stdout);
            return 0;
        }
        return cairn_cmd_bench_quality(argc, argv);
    }
    if (argc >= 2 && !strcmp(argv[1], "rag-answers")) {
        if (argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
            fputs(cairn_cmd_bench_answers_usage, stdout);
            return 0;
        }
        return cairn_cmd_bench_answers(argc, argv);
    }
    fputs(cairn_cmd_bench_usage, stderr);
    return 2;
}
