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

/* A story told beside the job (the demo, tui/demo/demo.c), drawn in place of
 * the event log. The console stays a view: it hands the narrator every
 * record and key, and lets it send commands like an operator would. */
typedef void (*console_send_fn)(void *console, const char *line);

enum { CONSOLE_KEY_IGNORED, CONSOLE_KEY_USED, CONSOLE_KEY_QUIT };

typedef struct console_narrator {
    void *ctx;
    /* Every record the job sends (a JSON text, no newline). */
    void (*record)(void *ctx, const char *line);
    /* About ten times a second; send(console, line) sends a command.
     * Returns nonzero when the text changed. */
    int (*tick)(void *ctx, console_send_fn send, void *console);
    /* A key in the console's normal mode, before its own keys: returns
     * CONSOLE_KEY_*; QUIT stops the job and leaves once it has stopped. */
    int (*key)(void *ctx, int key);
    /* Buffers the narrator keeps up to date: the pane's title, and the
     * text, paragraphs separated by '\n' (wrapped to the pane; a line
     * starting with two blanks is kept as it is). */
    const char *title;
    const char *text;
} console_narrator;

/* console_launch with a narrator (NULL: none). */
int console_launch_narrated(char *const *engine_argv, int engine_argc,
                            const console_narrator *narrator);

#endif
