/* services/cmd_index.h — `cairn index`, `cairn embed` and `cairn search`: the passage index
 * from the terminal (building it with progress, embedding texts, querying it). */
#ifndef CAIRN_SERVICES_CMD_INDEX_H
#define CAIRN_SERVICES_CMD_INDEX_H

extern const char *const cairn_cmd_index_usage;
extern const char *const cairn_cmd_embed_usage;
extern const char *const cairn_cmd_search_usage;

/* argv[0] is the subcommand's name. Each returns the exit status: 0 success, 1 failure,
 * 2 usage error (the message names the argument). */
int cairn_cmd_index(int argc, char **argv);
int cairn_cmd_embed(int argc, char **argv);
int cairn_cmd_search(int argc, char **argv);

#endif
