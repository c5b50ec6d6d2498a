/* The console's loop (htop's ScreenManager): read what the job sent, let
 * the narrator move its story on, redraw when something changed (at most
 * every DRAW_PERIOD_MS while records stream in, at once after a key),
 * dispatch keys through the key table, then sleep until a key or a record
 * arrives, or KEY_WAIT_MS passes. Waking on records keeps the console
 * reading as fast as the job writes, so a job stepping a thousand times a
 * second never piles up the backlog it would drop the console for. */
#include "tui/console/console.h"

#include <errno.h>
#include <langinfo.h>
#include <locale.h>
#include <poll.h>
#include <ncurses.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/core/clock.h"
#include "engine/core/signals.h"
#include "tui/console/draw.h"
#include "tui/console/keys.h"
#include "tui/console/state.h"
#include "tui/job/launcher.h"

enum {
    KEY_WAIT_MS = 100,           /* the longest sleep between looks */
    DRAW_PERIOD_MS = 50,         /* redraws while records stream in */
    CONNECT_TIMEOUT_MS = 30000,  /* for a launched job's socket */
};

/* Signal handlers only set flags (htop's rule). */
static volatile sig_atomic_t quit_signal;

static void on_signal(int sig)
{
    quit_signal = sig;
}

/* ---- talking to the job ------------------------------------------------ */

/* echo logs the line as "> line" in the event log. */
static void send_line(console *c, const char *line, int echo)
{
    if (job_client_send(&c->client, line) < 0) {
        view_event(&c->v, "error: the job's control socket is gone");
        c->connected = 0;
    } else if (echo) {
        char logged[CONSOLE_INPUT_MAX + 8];
        snprintf(logged, sizeof logged, "> %s", line);
        view_event(&c->v, logged);
    }
    c->dirty = 1;
}

void console_send_command(console *c, const char *line)
{
    send_line(c, line, 1);
}

/* How a narrator sends its commands: like the operator's, logged. */
static void narrator_send(void *console_ctx, const char *line)
{
    console_send_command(console_ctx, line);
}

static int fold_record(void *ctx, const char *line)
{
    console *c = ctx;
    view_apply(&c->v, line);
    /* The job replays its run record first on attach: the run's history
     * up to now is in its directory's metrics, read before the live step
     * records that follow. */
    if (!c->v.history_loaded && c->v.have_run && c->v.run_dir[0]) {
        char path[sizeof c->v.run_dir + 16];
        snprintf(path, sizeof path, "%s/metrics.jsonl", c->v.run_dir);
        c->v.history_loaded = 1;
        view_load_history(&c->v, path);
    }
    if (c->narrator)
        c->narrator->record(c->narrator->ctx, line);
    if (c->v.policy == c->policy_wanted)
        c->policy_wanted = VIEW_POLICY_UNKNOWN;
    c->dirty = 1;
    return 0;
}

/* Reads what the job sent; returns 0 when the socket closed. */
static int read_records(console *c)
{
    job_client_status status = job_client_read(&c->client, 0, fold_record, c);
    return status == JOB_CLIENT_OPEN ||
           (status == JOB_CLIENT_FAILED && errno == EINTR);
}

/* Sleeps until a key or the job's next bytes arrive, or wait_ms pass. */
static void wait_for_input(const console *c, int wait_ms)
{
    struct pollfd fds[2] = {
        {.fd = STDIN_FILENO, .events = POLLIN},
        {.fd = c->connected ? c->client.fd : -1, .events = POLLIN},
    };
    poll(fds, 2, wait_ms);
}

/* ---- the terminal ------------------------------------------------------- */

static void setup_terminal(console *c)
{
    setlocale(LC_CTYPE, "");
    c->utf8 = strcmp(nl_langinfo(CODESET), "UTF-8") == 0;
    initscr();
    cbreak();
    noecho();
    keypad(stdscr, TRUE);
    set_escdelay(25);
    curs_set(0);
    timeout(0); /* the loop sleeps in poll, on keys and records */
    c->color = has_colors() && !getenv("NO_COLOR");
    if (c->color) {
        start_color();
        use_default_colors();
        init_pair(COLOR_PAIR_HOT, COLOR_WHITE, COLOR_RED);
        init_pair(COLOR_PAIR_WARM, COLOR_BLACK, COLOR_YELLOW);
        init_pair(COLOR_PAIR_COOL, COLOR_BLACK, COLOR_GREEN);
        init_pair(COLOR_PAIR_COLD, COLOR_WHITE, COLOR_BLUE);
        init_pair(COLOR_PAIR_DEAD, COLOR_WHITE, COLOR_BLACK);
        init_pair(COLOR_PAIR_TITLE, COLOR_BLACK, COLOR_CYAN);
        init_pair(COLOR_PAIR_BAD, COLOR_RED, -1);
    }
}

static void restore_terminal(void)
{
    if (!isendwin())
        endwin();
}

/* ---- the loop ----------------------------------------------------------- */

static int job_ended(const console *c)
{
    return !c->connected && (strcmp(c->v.status, "done") == 0 ||
                             strcmp(c->v.status, "stopped") == 0);
}

/* A job that vanished (the watchdog ended it, say): its log's last word,
 * in the events, when the console started it. */
static void say_last_word(console *c)
{
    char word[VIEW_EVENT_BYTES];
    if (c->log_path[0] &&
        job_log_last_word(c->log_path, word, sizeof word) == 0 &&
        !c->v.have_summary)
        view_event(&c->v, word);
}

/* What the operator reads once the screen is gone; returns the exit
 * status: 0 detached or done, 3 stopped, 1 lost the job. */
static int say_goodbye(const console *c, int left, int status)
{
    if (left && c->connected) {
        const char *name = strrchr(c->v.run_dir, '/');
        printf("moectl: detached; the job goes on. Reattach with:\n"
               "  moectl attach %s\n", name ? name + 1 : c->socket_path);
    }
    else if (strcmp(c->v.status, "stopped") == 0 ||
             strcmp(c->v.status, "done") == 0)
        printf("moectl: the job %s at step %d%s%s\n", c->v.status, c->v.step,
               c->v.run_dir[0] ? "; its run directory: " : "", c->v.run_dir);
    else if (!c->connected) {
        /* The job's own last word says why (the watchdog, say). */
        char word[512];
        if (c->log_path[0] &&
            job_log_last_word(c->log_path, word, sizeof word) == 0)
            printf("moectl: lost the job; it said:\n%s\n", word);
        printf("moectl: lost the job's control socket%s%s\n",
               c->log_path[0] ? "; its log: " : "", c->log_path);
        return 1;
    }
    return status;
}

/* The job ended: its summary stays on the screen until a key (or a
 * signal); the story's console, which ends with the story, leaves after a
 * second. */
static void wait_at_end(console *c)
{
    c->ended = 1;
    console_draw(c);
    if (c->narrator) {
        struct timespec nap = {1, 0};
        nanosleep(&nap, NULL);
        return;
    }
    while (!quit_signal) {
        int key = getch();
        if (key == KEY_RESIZE) {
            console_draw(c);
            continue;
        }
        if (key != ERR)
            return;
        wait_for_input(c, KEY_WAIT_MS);
    }
}

/* Runs until the operator leaves or the job ends; returns an exit status
 * (say_goodbye). */
static int run_console(console *c)
{
    static const int signals[] = {SIGINT, SIGTERM, SIGHUP, 0};
    signals_install(on_signal, signals);
    atexit(restore_terminal);
    setup_terminal(c);
    /* The records do not carry the balance policy; the reply to status
     * does (and lands in the event log). */
    if (c->connected)
        send_line(c, "status", 0);
    c->dirty = 1;
    int status = 0, left = 0;
    double drawn_at = 0;
    while (!left && !quit_signal) {
        if (c->connected && !read_records(c)) {
            c->connected = 0;
            view_event(&c->v, "the job closed its control socket");
            say_last_word(c);
            c->dirty = 1;
        }
        if (c->narrator &&
            c->narrator->tick(c->narrator->ctx, narrator_send, c))
            c->dirty = 1;
        double now = clock_monotonic_s();
        if (c->dirty && now - drawn_at >= DRAW_PERIOD_MS / 1e3) {
            console_draw(c);
            drawn_at = now;
        }
        int key;
        while (!left && (key = getch()) != ERR) {
            console_reaction reaction =
                key == KEY_RESIZE ? CONSOLE_REDRAW : keys_dispatch(c, key);
            left = (reaction & CONSOLE_LEAVE) != 0;
            c->dirty = 1;
            drawn_at = 0; /* a key's answer shows at once */
        }
        if (job_ended(c)) {
            status = strcmp(c->v.status, "stopped") == 0 ? 3 : 0;
            wait_at_end(c);
            break;
        }
        if (!left && !c->dirty)
            wait_for_input(c, KEY_WAIT_MS);
        else if (!left && drawn_at > 0)
            wait_for_input(c, DRAW_PERIOD_MS);
    }
    endwin();
    return say_goodbye(c, left, status);
}

static void console_init(console *c)
{
    memset(c, 0, sizeof *c);
    job_client_init(&c->client);
    c->policy_wanted = VIEW_POLICY_UNKNOWN;
    view_init(&c->v);
}

static void console_finish(console *c)
{
    job_client_close(&c->client);
    view_finish(&c->v);
}

int console_attach(const char *socket_path)
{
    if (!socket_path) {
        fprintf(stderr, "usage: moectl attach SOCKET\n");
        return 2;
    }
    static console c;
    console_init(&c);
    snprintf(c.socket_path, sizeof c.socket_path, "%s", socket_path);
    if (job_client_connect(&c.client, socket_path) < 0) {
        fprintf(stderr, "moectl attach: cannot connect to %s: %s\n",
                socket_path, strerror(errno));
        console_finish(&c);
        return 1;
    }
    c.connected = 1;
    int status = run_console(&c);
    console_finish(&c);
    return status;
}

int console_launch(char *const *engine_argv, const char *run_dir)
{
    return console_launch_narrated(engine_argv, run_dir, NULL);
}

int console_launch_narrated(char *const *engine_argv, const char *run_dir,
                            const console_narrator *narrator)
{
    static console c;
    console_init(&c);
    c.narrator = narrator;
    job_launch job;
    /* The job outlives the console: a session of its own. */
    if (job_launch_init(&job, "moectl", "moectl-console") < 0 ||
        (run_dir && job_launch_log_in(&job, run_dir) < 0) ||
        job_launch_start(&job, engine_argv, 1) < 0 ||
        job_launch_connect(&job, &c.client, CONNECT_TIMEOUT_MS) < 0) {
        job_launch_kill(&job);
        console_finish(&c);
        return 1;
    }
    snprintf(c.socket_path, sizeof c.socket_path, "%s", job.socket_path);
    snprintf(c.log_path, sizeof c.log_path, "%s", job.log_path);
    c.connected = 1;
    int status = run_console(&c);
    /* Reap the job if it ended; a detached job goes on by itself. One the
     * story stopped is waited for, so that it has ended when we do. */
    job_launch_wait(&job, c.quitting);
    console_finish(&c);
    return status;
}
