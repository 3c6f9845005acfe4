/* services/cmd_job.h — `cairn job submit|status` (the offline job queue from the terminal). */
#ifndef CAIRN_SERVICES_CMD_JOB_H
#define CAIRN_SERVICES_CMD_JOB_H

/*
 * Entry of `cairn job`: argv[0] is "job", argv[1] the subcommand (submit | status).
 * Prints to stdout/stderr; returns the process exit status (0 success, 1 failure,
 * 2 usage error).
 */
int cairn_cmd_job(int argc, char **argv);

/* The usage text of `cairn job` (static), for the CLI's help table. */
extern const char *const cairn_cmd_job_usage;

#endif
