/* The ncurses console: launches a job (or attaches to one), renders the
 * records it publishes and sends commands in the shared grammar. It holds
 * no training state. */
#ifndef MOECTL_TUI_CONSOLE_H
#define MOECTL_TUI_CONSOLE_H

/* Opens the console on a new job: `engine_argv` (NULL-terminated) is the
 * command line that runs the job headless (it gets --socket added);
 * run_dir: the run's directory, where the job's log goes (NULL: the
 * private directory of its socket).
 * Returns an exit status: 0 detached or done, 3 stopped, 1 lost the job
 * or could not start it. */
int console_launch(char *const *engine_argv, const char *run_dir);

/* Opens the console on a running job's control socket. */
int console_attach(const char *socket_path);

/* A story told beside the job (the demo, tui/demo/), drawn in place of
 * the event log. The console stays a view: it hands the narrator every
 * record, lets it send commands like an operator would, and gives it the
 * story's keys of its key table (Enter: next chapter; q: stop the job and
 * leave). */
typedef void (*console_send_fn)(void *console, const char *line);

typedef struct console_narrator {
    void *ctx;
    /* Every record the job sends (a JSON text, no newline). */
    void (*record)(void *ctx, const char *line);
    /* About ten times a second; send(console, line) sends a command.
     * Returns nonzero when the text changed. */
    int (*tick)(void *ctx, console_send_fn send, void *console);
    /* Enter: the next chapter. */
    void (*next)(void *ctx);
    /* Buffers the narrator keeps up to date: the pane's title, and the
     * text, paragraphs separated by '\n' (wrapped to the pane; a line
     * starting with two blanks is kept as it is). */
    const char *title;
    const char *text;
} console_narrator;

/* console_launch with a narrator (NULL: none). */
int console_launch_narrated(char *const *engine_argv, const char *run_dir,
                            const console_narrator *narrator);

#endif
