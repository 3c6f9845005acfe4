/* services/cmd_adapt.h — `cairn adapt ...` (training and evaluating the adaptation CNNs). */
#ifndef CAIRN_SERVICES_CMD_ADAPT_H
#define CAIRN_SERVICES_CMD_ADAPT_H

#include <stdint.h>

/*
 * Entry of `cairn adapt`: argv[0] is "adapt", argv[1] the subcommand (train | eval-clean |
 * corrupt | eval).
 * Returns the process exit status (0 success, 1 failure, 2 usage error).
 */
int cairn_cmd_adapt(int argc, char **argv);

/*
 * The corruption seed of the stream (corruption, severity) of `cairn adapt eval`'s suite on the
 * test or the train split (train_split 1: seeds offset by 500,000, so no test draw is reused).
 * `cairn adapt corrupt` writes the same streams with it.
 */
uint64_t cairn__adapt_stream_seed(int corruption, int severity, int train_split);

#endif
