/* admin_client.h: the command side of the admin commands (admin_client.c).
 *
 * Main thread of the `mkv` command, after the config is loaded; never in a server. */
#ifndef MKV_ADMIN_CLIENT_H
#define MKV_ADMIN_CLIENT_H

#include "mkv/config.h"

/* Runs admin script `script` (a built-in name, or a FILE.lua path) with the command's
 * options as typed (argv, borrowed): inside the server that holds cfg->db if one
 * answers, else in this process. Prints its output; returns the exit code (0 nothing
 * failed, 1 something failed, 2 the job could not run). */
int mkv_admin_client_run(const mkv_config_t *cfg, const char *script, int argc, char **argv);

#endif
