/* `moectl ctl SOCKET COMMAND...`: sends one command to a running job's
 * control socket and prints its reply. */
#ifndef MOECTL_TUI_CTL_H
#define MOECTL_TUI_CTL_H

#include <stdio.h>

enum { CTL_TIMEOUT_MS = 10000 };

/* argv[0..argc) are the command's words, joined with spaces into one line.
 * Prints the reply's message (or "ok") on stdout, or the error on stderr.
 * Exit status: 0 ok, 1 an error reply, no reply within CTL_TIMEOUT_MS or a
 * connection failure, 2 bad usage. */
int ctl_run(const char *socket_path, int argc, char **argv);

/* Sends line (without its newline) and waits up to timeout_ms for the
 * reply, skipping the other records; writes to out and err. Same status as
 * ctl_run. */
int ctl_request(const char *socket_path, const char *line, int timeout_ms,
                FILE *out, FILE *err);

#endif
