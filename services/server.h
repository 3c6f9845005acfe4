/*
 * services/server.h — the cairnd service: configuration, wiring, lifecycle.
 *
 * cairnd's main and `cairn serve` both call cairn_serve_main, so the two are the same
 * service with the same configuration keys.
 */
#ifndef CAIRN_SERVICES_SERVER_H
#define CAIRN_SERVICES_SERVER_H

/*
 * Loads the configuration (defaults < file < CAIRN_* environment < flags), starts the
 * HTTP server and serves until SIGINT or SIGTERM, then shuts down cleanly: no new
 * connections, in-flight requests finished, everything freed.
 * prog names the program in messages. Returns the process exit status: 0 after a clean
 * shutdown, 1 when the service could not start, 2 for a configuration error.
 * Call from the main thread before any other thread is started (it sets the signal mask
 * that every later thread inherits).
 */
int cairn_serve_main(const char *prog, int argc, char **argv);

#endif
