/* services/cmd_generate.h — `cairn generate` (one prompt through the engine, streamed). */
#ifndef CAIRN_SERVICES_CMD_GENERATE_H
#define CAIRN_SERVICES_CMD_GENERATE_H

extern const char *const cairn_cmd_generate_usage;

/* argv[0] is "generate". Returns the exit status: 0 success, 1 failure, 2 usage error. */
int cairn_cmd_generate(int argc, char **argv);

#endif
