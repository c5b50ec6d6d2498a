/* The ncurses console: launches a job (or attaches to one), renders the
 * records it publishes and sends commands in the shared grammar. It holds
 * no training state. */
#ifndef MOECTL_TUI_CONSOLE_H
#define MOECTL_TUI_CONSOLE_H

/* Opens the console on a new job: `engine_argv` is the command line that
 * runs the job headless (it gets --socket added). Returns an exit status. */
int console_launch(char *const *engine_argv, int engine_argc);

/* Opens the console on a running job's control socket. */
int console_attach(const char *socket_path);

#endif
