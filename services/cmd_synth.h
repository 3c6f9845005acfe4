/* services/cmd_synth.h — `cairn gguf-synth` (a model of real shapes with random weights). */
#ifndef CAIRN_SERVICES_CMD_SYNTH_H
#define CAIRN_SERVICES_CMD_SYNTH_H

extern const char *const cairn_cmd_synth_usage;

/* argv[0] is "gguf-synth". Returns the exit status: 0 success, 1 failure, 2 usage error. */
int cairn_cmd_synth(int argc, char **argv);

#endif
