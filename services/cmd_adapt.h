/* services/cmd_adapt.h — `cairn adapt ...` (training and evaluating the adaptation CNNs). */
#ifndef CAIRN_SERVICES_CMD_ADAPT_H
#define CAIRN_SERVICES_CMD_ADAPT_H

/*
 * Entry of `cairn adapt`: argv[0] is "adapt", argv[1] the subcommand (train | eval-clean).
 * Returns the process exit status (0 success, 1 failure, 2 usage error).
 */
int cairn_cmd_adapt(int argc, char **argv);

#endif
