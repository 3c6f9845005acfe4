/* services/cairnd.c — the cairn daemon: `cairnd [--config FILE] [--KEY=VALUE ...]`. */
#include "services/server.h"

int main(int argc, char **argv) { return cairn_serve_main("cairnd", argc, argv); }
