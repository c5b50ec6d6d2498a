/* What the console's parts share: its state (the view of the job, the
 * mode, the selection, the command line) and the few calls between the
 * loop, the keys and the drawing. Not an API outside tui/console/. */
#ifndef MOECTL_TUI_CONSOLE_STATE_H
#define MOECTL_TUI_CONSOLE_STATE_H

#include "tui/console/console.h"
#include "tui/console/view.h"
#include "tui/job/client.h"

typedef enum console_mode {
    MODE_NORMAL,
    MODE_COMMAND,      /* the : line */
    MODE_HELP,         /* the ? overlay */
    MODE_MOVE,         /* choosing the target rank of the selected expert */
    MODE_CONFIRM_STOP,
    MODE_QUIT,         /* detach or stop? */
    MODE_COUNT
} console_mode;

enum { CONSOLE_HISTORY_LINES = 32, CONSOLE_INPUT_MAX = 200 };

typedef struct console {
    job_client client;       /* the control socket */
    char socket_path[108];
    char log_path[4096 + 16]; /* the engine's log, when we launched it */
    view v;
    int utf8, color;
    console_mode mode;
    int cursor_layer, cursor_expert;
    /* The heatmap's first layer and expert shown: it scrolls to keep the
     * cursor in view when the model has more than fit. */
    int heat_first_layer, heat_first_expert;
    int heat_summary;        /* v: a row per layer of its hottest and
                                coldest experts instead of the cells */
    int move_target;
    char input[CONSOLE_INPUT_MAX];
    int input_length;
    char history[CONSOLE_HISTORY_LINES][CONSOLE_INPUT_MAX];
    int history_count, history_at;
    int connected;
    int dirty;
    /* The policy b last asked for until the job confirms it, so that b
     * pressed twice quickly still steps off -> suggest -> auto. */
    view_policy policy_wanted;
    /* A story drawn in place of the event log (moectl demo), or NULL. */
    const console_narrator *narrator;
    int quitting;            /* the story's q asked the job to stop */
    int ended;               /* the job ended: the summary is shown */
    int events_back;         /* events scrolled back from the newest (0:
                                following the newest) */
    int events_page;         /* events the panel showed last (a page) */
} console;

/* Sends one command line to the job and logs it as "> line" in the event
 * log; a socket that is gone is logged and marks the console
 * disconnected. */
void console_send_command(console *c, const char *line);

/* Draws the whole screen from the view and clears dirty. */
void console_draw(console *c);

#endif
