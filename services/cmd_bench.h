/* services/cmd_bench.h — `cairn bench colocate` and `cairn bench profile`: the scheduler's
 * benchmarks (online latency beside offline throughput; the latency predictor's accuracy). */
#ifndef CAIRN_SERVICES_CMD_BENCH_H
#define CAIRN_SERVICES_CMD_BENCH_H

extern const char *const cairn_cmd_bench_usage;

/* argv[0] is "bench". Returns the exit status: 0 success, 1 failure, 2 usage error. */
int cairn_cmd_bench(int argc, char **argv);

#endif
