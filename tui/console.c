#include "tui/console.h"

#include <errno.h>
#include <fcntl.h>
#include <langinfo.h>
#include <locale.h>
#include <math.h>
#include <ncurses.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tui/layout.h"
#include "tui/plot.h"
#include "tui/view.h"

/* Signal handlers only set flags (htop's rule). */
static volatile sig_atomic_t quit_signal;

static void on_signal(int sig)
{
    quit_signal = sig;
}

enum { COLOR_PAIR_HOT = 1, COLOR_PAIR_WARM, COLOR_PAIR_COOL, COLOR_PAIR_COLD,
       COLOR_PAIR_DEAD, COLOR_PAIR_TITLE, COLOR_PAIR_BAD };

typedef enum mode {
    MODE_NORMAL,
    MODE_COMMAND,  /* the : line */
    MODE_HELP,     /* the ? overlay */
    MODE_MOVE,     /* choosing the target rank of the selected expert */
    MODE_CONFIRM_STOP,
    MODE_QUIT,     /* detach or stop? */
} mode;

enum { HISTORY_LINES = 32, LINE_MAX_INPUT = 200 };

typedef struct console {
    int fd;                  /* the control socket */
    char socket_path[108];
    char log_path[256];      /* the engine's log, when we launched it */
    pid_t engine;            /* 0 when attached */
    view v;
    int utf8, color;
    mode mode;
    int cursor_layer, cursor_expert;
    int move_target;
    char input[LINE_MAX_INPUT];
    int input_length;
    char history[HISTORY_LINES][LINE_MAX_INPUT];
    int history_count, history_at;
    char inbuf[1 << 16];
    size_t inlen;
    int connected;
    int dirty;
} console;

/* ---- the socket ------------------------------------------------------ */

static int connect_socket(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void send_command(console *c, const char *line)
{
    char text[LINE_MAX_INPUT + 2];
    int n = snprintf(text, sizeof text, "%s\n", line);
    if (c->fd < 0 || n <= 0 ||
        send(c->fd, text, (size_t)n, MSG_NOSIGNAL) != (ssize_t)n) {
        view_event(&c->v, "error: the job's control socket is gone");
        c->connected = 0;
    } else {
        char echo[LINE_MAX_INPUT + 8];
        snprintf(echo, sizeof echo, "> %s", line);
        view_event(&c->v, echo);
    }
    c->dirty = 1;
}

/* Reads what the job sent; returns 0 when the socket closed. */
static int read_records(console *c)
{
    for (;;) {
        if (c->inlen == sizeof c->inbuf - 1)
            c->inlen = 0; /* a line this long is not a record: drop it */
        ssize_t n = recv(c->fd, c->inbuf + c->inlen,
                         sizeof c->inbuf - 1 - c->inlen, 0);
        if (n == 0)
            return 0;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        c->inlen += (size_t)n;
        char *start = c->inbuf, *nl;
        while ((nl = memchr(start, '\n', c->inlen - (size_t)(start - c->inbuf)))) {
            *nl = '\0';
            view_apply(&c->v, start);
            c->dirty = 1;
            start = nl + 1;
        }
        size_t rest = c->inlen - (size_t)(start - c->inbuf);
        memmove(c->inbuf, start, rest);
        c->inlen = rest;
    }
}

/* ---- drawing --------------------------------------------------------- */

static void box_title(const layout_rect *r, const char *title)
{
    if (r->rows < 2 || r->cols < 4)
        return;
    attron(A_BOLD);
    mvprintw(r->row, r->col, "%.*s", r->cols, title);
    attroff(A_BOLD);
}

static void format_duration(char *out, size_t size, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(out, size, "n/a");
    else if (s < 3600)
        snprintf(out, size, "%d:%02d", (int)s / 60, (int)s % 60);
    else
        snprintf(out, size, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static void format_money(char *out, size_t size, double x, const char *cur)
{
    if (!isfinite(x))
        snprintf(out, size, "n/a");
    else if (x >= 1e6)
        snprintf(out, size, "%.2fM %s", x / 1e6, cur);
    else if (x >= 1e3)
        snprintf(out, size, "%.1fk %s", x / 1e3, cur);
    else
        snprintf(out, size, "%.4g %s", x, cur);
}

static void draw_header(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    char elapsed[16], eta[16];
    format_duration(elapsed, sizeof elapsed, v->have_step ? v->elapsed_s : NAN);
    double remaining = NAN;
    if (v->have_step && v->smoothed_tokens_per_s > 0 && v->tokens_per_step > 0)
        remaining = (double)(v->steps_total - v->step) * v->tokens_per_step /
                    v->smoothed_tokens_per_s;
    format_duration(eta, sizeof eta, remaining);
    char left[256];
    snprintf(left, sizeof left, " moectl  %s  [%s]  step %d/%d ",
             v->have_run ? v->config : "(waiting for the job)", v->status,
             v->step, v->steps_total);
    char right[64];
    snprintf(right, sizeof right, " elapsed %s  ETA %s ", elapsed, eta);
    int bar = r->cols - (int)strlen(left) - (int)strlen(right) - 2;
    if (c->color)
        attron(COLOR_PAIR(COLOR_PAIR_TITLE));
    attron(A_REVERSE);
    mvhline(r->row, r->col, ' ', r->cols);
    mvprintw(r->row, r->col, "%.*s", r->cols, left);
    if (bar > 4) {
        double f = v->steps_total > 0 ? (double)v->step / v->steps_total : 0;
        int filled = (int)(f * bar + 0.5);
        mvaddch(r->row, r->col + (int)strlen(left), '[');
        for (int i = 0; i < bar; i++)
            addch(i < filled ? '=' : ' ');
        addch(']');
    }
    if ((int)strlen(right) < r->cols)
        mvprintw(r->row, r->col + r->cols - (int)strlen(right), "%s", right);
    attroff(A_REVERSE);
    if (c->color)
        attroff(COLOR_PAIR(COLOR_PAIR_TITLE));
}

static void draw_loss(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    char title[128], val[32] = "n/a";
    if (v->have_val)
        snprintf(val, sizeof val, "%.4f", v->val_loss);
    if (v->have_step)
        snprintf(title, sizeof title, "Loss %.4f  val %s  lr %.1e", v->loss,
                 val, v->lr);
    else
        snprintf(title, sizeof title, "Loss n/a");
    box_title(r, title);
    int rows = r->rows - 1, cols = r->cols;
    if (rows < 2 || cols < 12 || v->history_count == 0)
        return;
    plot_series series[2] = {{v->loss_history, v->history_count},
                             {v->val_history, v->history_count}};
    char **lines = calloc((size_t)rows, sizeof *lines);
    char *text = malloc((size_t)rows * PLOT_LINE_BYTES(cols));
    if (lines && text) {
        for (int i = 0; i < rows; i++)
            lines[i] = text + (size_t)i * PLOT_LINE_BYTES(cols);
        plot_range range = plot_render(lines, rows, cols, 8, series, 2,
                                       c->utf8);
        if (range.valid)
            for (int i = 0; i < rows; i++)
                mvaddstr(r->row + 1 + i, r->col, lines[i]);
    }
    free(lines);
    free(text);
}

static void draw_speed(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    box_title(r, "Throughput and cost");
    int row = r->row + 1, width = r->cols;
    if (!v->have_step) {
        mvprintw(row, r->col, "%.*s", width, "n/a until the first step");
        return;
    }
    mvprintw(row++, r->col, "%.*s", width, "");
    char line[128];
    snprintf(line, sizeof line, "tokens/s %.0f now, %.0f avg",
             v->tokens_per_s, v->smoothed_tokens_per_s);
    mvprintw(row - 1, r->col, "%.*s", width, line);
    if (row < r->row + r->rows)
        mvprintw(row++, r->col, "%.1f GFLOP/s, step %.1f ms",
                 v->model_flops_per_s / 1e9, v->step_ms);
    double per_hour, per_mtok;
    char a[32], b[32], d[32];
    if (view_price_per_hour(v, &per_hour) && row < r->row + r->rows) {
        format_money(a, sizeof a, per_hour, v->currency);
        mvprintw(row++, r->col, "price %s/hour, %d device%s", a,
                 v->device_count, v->device_count > 1 ? "s" : "");
    }
    if (view_cost_per_mtok(v, &per_mtok)) {
        format_money(a, sizeof a, per_mtok, v->currency);
        format_money(b, sizeof b, per_mtok * 1e3, v->currency);
        format_money(d, sizeof d, per_mtok * 1e6, v->currency);
        if (row < r->row + r->rows)
            mvprintw(row++, r->col, "%s per 1M tokens", a);
        if (row < r->row + r->rows)
            mvprintw(row++, r->col, "1B %s  1T %s", b, d);
        if (row < r->row + r->rows)
            mvprintw(row++, r->col, "(at the avg rate)");
    }
}

static int load_level(double ratio)
{
    if (ratio <= 0)
        return COLOR_PAIR_DEAD;
    if (ratio < 0.5)
        return COLOR_PAIR_COLD;
    if (ratio < 1.0)
        return COLOR_PAIR_COOL;
    if (ratio < 1.5)
        return COLOR_PAIR_WARM;
    return COLOR_PAIR_HOT;
}

static void draw_heatmap(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    box_title(r, c->color ? "Expert load: 10 x tokens / layer mean"
                          : "Expert load: .:-=+*#%@ by tokens / layer mean");
    if (!v->have_run || !v->have_step)
        return;
    int row = r->row + 1;
    int cell = 3, label = 6;
    int shown = (r->cols - label - 1) / cell; /* a gap before the next panel */
    if (shown > v->experts)
        shown = v->experts;
    int stats_col = r->col + label + shown * cell + 1;
    for (int l = 0; l < v->layers && row < r->row + r->rows - 1; l++, row++) {
        const int *load = v->expert_load + (size_t)l * v->experts;
        double mean = 0, max = 0, var = 0;
        int dead = 0;
        for (int e = 0; e < v->experts; e++) {
            mean += load[e];
            max = load[e] > max ? load[e] : max;
            dead += load[e] == 0;
        }
        mean /= v->experts;
        for (int e = 0; e < v->experts; e++)
            var += (load[e] - mean) * (load[e] - mean);
        double cv = mean > 0 ? sqrt(var / v->experts) / mean : 0;
        mvprintw(row, r->col, "L%-4d", l);
        for (int e = 0; e < shown; e++) {
            double ratio = mean > 0 ? load[e] / mean : 0;
            int selected = l == c->cursor_layer && e == c->cursor_expert;
            int pair = load_level(ratio);
            if (c->color)
                attron(COLOR_PAIR(pair));
            if (selected)
                attron(A_REVERSE);
            char text[8];
            if (c->color)
                snprintf(text, sizeof text, "%2.0f ", ratio * 10 > 99 ? 99
                                                                      : ratio * 10);
            else
                snprintf(text, sizeof text, "%c%c ",
                         " .:-=+*#%@"[ratio >= 1.8 ? 9 : (int)(ratio * 5)],
                         selected ? '<' : ' ');
            mvaddstr(row, r->col + label + e * cell, text);
            if (selected)
                attroff(A_REVERSE);
            if (c->color)
                attroff(COLOR_PAIR(pair));
        }
        int room = r->col + r->cols - stats_col - 1; /* a gap to the next */
        if (room >= 24) {
            char stats[64];
            snprintf(stats, sizeof stats, "max %.2fx cv %.2f dead %d",
                     mean > 0 ? max / mean : 0, cv, dead);
            mvprintw(row, stats_col, "%.*s", room, stats);
        }
    }
    int l = c->cursor_layer, e = c->cursor_expert;
    if (l < v->layers && e < v->experts) {
        size_t at = (size_t)l * v->experts + e;
        mvprintw(r->row + r->rows - 1, r->col,
                 "%.*s", r->cols, "");
        char line[128];
        snprintf(line, sizeof line, "expert %d.%d on rank %d: %d tokens "
                 "this step%s", l, e, v->placement[at], v->expert_load[at],
                 shown < v->experts ? " (more experts than fit)" : "");
        mvprintw(r->row + r->rows - 1, r->col, "%.*s", r->cols, line);
    }
}

static void draw_devices(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    box_title(r, "Devices  # compute = all-to-all - all-reduce . idle");
    /* Two lines a device when they fit: who it is, then where its step
     * went. */
    int two = r->rows - 1 >= 2 * v->device_count;
    int row = r->row + 1, end = r->row + r->rows;
    for (int i = 0; i < v->device_count && row < end; i++) {
        const view_device *d = &v->devices[i];
        const view_rank *k = i < v->rank_count ? &v->ranks[i] : NULL;
        char line[256], bar[128] = "";
        snprintf(line, sizeof line, "%d %s %s%s %d exp %.3g %s/h", i,
                 d->name, d->backend, d->emulated ? " EMULATED" : "",
                 k ? k->experts : 0, d->price_per_hour, v->currency);
        mvprintw(row++, r->col, "%.*s", r->cols, line);
        int width = r->cols - 14;
        if (width > (int)sizeof bar - 1)
            width = (int)sizeof bar - 1;
        if (k && width > 4) {
            double parts[4] = {k->expert_ms + k->dense_ms, k->alltoall_ms,
                               k->allreduce_ms, k->idle_ms};
            double total = parts[0] + parts[1] + parts[2] + parts[3];
            const char marks[4] = {'#', '=', '-', '.'};
            int at = 0;
            for (int p = 0; p < 4 && total > 0; p++) {
                int n = (int)(parts[p] / total * width + 0.5);
                for (int j = 0; j < n && at < width; j++)
                    bar[at++] = marks[p];
            }
            bar[at] = '\0';
        }
        if (!two || row >= end || !k)
            continue;
        snprintf(line, sizeof line, "  %-*s %7.0f tok", width > 0 ? width : 0,
                 bar, k->tokens);
        mvprintw(row++, r->col, "%.*s", r->cols, line);
    }
}

static void draw_events(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    box_title(r, "Events");
    int lines = r->rows - 1;
    int first = v->event_count - lines;
    if (first < 0)
        first = 0;
    if (first < v->event_count - VIEW_EVENTS)
        first = v->event_count - VIEW_EVENTS;
    for (int i = first, row = r->row + 1; i < v->event_count; i++, row++)
        mvprintw(row, r->col, "%.*s", r->cols, v->events[i % VIEW_EVENTS]);
}

static const char *const help_lines[] = {
    "Keys",
    "  p          pause / resume",
    "  c          checkpoint now",
    "  s          stop (asks first): checkpoint, then end the job",
    "  arrows/hjkl move over the expert heatmap",
    "  m          move the selected expert to another rank",
    "  :          command line: pause, resume, stop, checkpoint, status,",
    "             lr VALUE, move L.E R (up/down: history)",
    "  ?          this help",
    "  q          leave: detach (the job goes on) or stop it",
    "",
    "Press any key to close.",
};

static void draw_footer(console *c, const layout_rect *r)
{
    mvhline(r->row, r->col, ' ', r->cols);
    char line[256];
    switch (c->mode) {
    case MODE_COMMAND:
        snprintf(line, sizeof line, ":%s", c->input);
        break;
    case MODE_MOVE: {
        /* The choices with each rank's load, the chosen one bracketed. */
        int n = snprintf(line, sizeof line, "move expert %d.%d to rank %d:",
                         c->cursor_layer, c->cursor_expert, c->move_target);
        for (int i = 0; i < c->v.device_count && n > 0 &&
                        n < (int)sizeof line - 1; i++) {
            const view_rank *k = i < c->v.rank_count ? &c->v.ranks[i] : NULL;
            n += snprintf(line + n, sizeof line - (size_t)n, " %s%d %s %.0ftok"
                          "%s", i == c->move_target ? "[" : "", i,
                          c->v.devices[i].name, k ? k->tokens : 0.0,
                          i == c->move_target ? "]" : "");
        }
        if (n > 0 && n < (int)sizeof line - 1)
            snprintf(line + n, sizeof line - (size_t)n,
                     "  Enter moves, Esc cancels");
        break;
    }
    case MODE_CONFIRM_STOP:
        snprintf(line, sizeof line, "Stop the job (checkpoint first)? y/n");
        break;
    case MODE_QUIT:
        snprintf(line, sizeof line, "Leave: d detach (the job goes on), "
                 "s stop the job, Esc stay");
        break;
    default:
        snprintf(line, sizeof line, "p pause/resume  c checkpoint  s stop  "
                 "m move  : command  ? help  q quit%s",
                 c->connected ? "" : "  [disconnected]");
    }
    attron(A_REVERSE);
    mvprintw(r->row, r->col, "%-*.*s", r->cols, r->cols, line);
    attroff(A_REVERSE);
    if (c->mode == MODE_COMMAND) {
        curs_set(1);
        move(r->row, r->col + 1 + c->input_length);
    } else {
        curs_set(0);
    }
}

static void draw(console *c)
{
    int rows, cols;
    getmaxyx(stdscr, rows, cols);
    layout_options opt = {c->v.layers, c->v.experts, c->v.device_count};
    layout lay;
    layout_compute(&lay, rows, cols, &opt);
    erase();
    draw_header(c, &lay.panel[LAYOUT_HEADER]);
    if (lay.too_small) {
        mvprintw(rows / 2, 0, "%.*s", cols,
                 "The console needs at least 80x24.");
    } else {
        draw_loss(c, &lay.panel[LAYOUT_LOSS]);
        draw_speed(c, &lay.panel[LAYOUT_SPEED]);
        draw_heatmap(c, &lay.panel[LAYOUT_HEATMAP]);
        draw_devices(c, &lay.panel[LAYOUT_DEVICES]);
        draw_events(c, &lay.panel[LAYOUT_EVENTS]);
    }
    if (c->mode == MODE_HELP) {
        int n = (int)(sizeof help_lines / sizeof help_lines[0]);
        int top = rows / 2 - n / 2 - 1, left = cols / 2 - 36;
        for (int i = -1; i <= n; i++) {
            mvhline(top + 1 + i, left < 0 ? 0 : left, ' ', 72);
            if (i >= 0 && i < n)
                mvprintw(top + 1 + i, (left < 0 ? 0 : left) + 2, "%.*s",
                         cols - 2, help_lines[i]);
        }
    }
    draw_footer(c, &lay.panel[LAYOUT_FOOTER]);
    refresh();
    c->dirty = 0;
}

/* ---- keys ------------------------------------------------------------ */

typedef enum reaction { KEEP = 0, REDRAW = 1, LEAVE = 2 } reaction;

static reaction command_key(console *c, int key)
{
    if (key == 27) {
        c->mode = MODE_NORMAL;
    } else if (key == '\n' || key == KEY_ENTER) {
        if (c->input_length > 0) {
            snprintf(c->history[c->history_count % HISTORY_LINES],
                     LINE_MAX_INPUT, "%s", c->input);
            c->history_count++;
            send_command(c, c->input);
        }
        c->mode = MODE_NORMAL;
    } else if (key == KEY_BACKSPACE || key == 127 || key == 8) {
        if (c->input_length > 0)
            c->input[--c->input_length] = '\0';
    } else if (key == KEY_UP || key == KEY_DOWN) {
        int n = c->history_count < HISTORY_LINES ? c->history_count
                                                 : HISTORY_LINES;
        if (n == 0)
            return REDRAW;
        c->history_at += key == KEY_UP ? 1 : -1;
        if (c->history_at < 1)
            c->history_at = 1;
        if (c->history_at > n)
            c->history_at = n;
        snprintf(c->input, sizeof c->input, "%s",
                 c->history[(c->history_count - c->history_at) %
                            HISTORY_LINES]);
        c->input_length = (int)strlen(c->input);
    } else if (key >= 32 && key < 127 && c->input_length < LINE_MAX_INPUT - 1) {
        c->input[c->input_length++] = (char)key;
        c->input[c->input_length] = '\0';
    }
    return REDRAW;
}

static reaction normal_key(console *c, int key)
{
    view *v = &c->v;
    switch (key) {
    case 'p':
        send_command(c, strcmp(v->status, "paused") == 0 ? "resume"
                                                         : "pause");
        return REDRAW;
    case 'c':
        send_command(c, "checkpoint");
        return REDRAW;
    case 's':
        c->mode = MODE_CONFIRM_STOP;
        return REDRAW;
    case 'q':
        c->mode = MODE_QUIT;
        return REDRAW;
    case '?':
        c->mode = MODE_HELP;
        return REDRAW;
    case ':':
        c->mode = MODE_COMMAND;
        c->input[0] = '\0';
        c->input_length = 0;
        c->history_at = 0;
        return REDRAW;
    case 'm':
        if (v->have_run && v->device_count > 1) {
            c->mode = MODE_MOVE;
            int here = v->placement[(size_t)c->cursor_layer * v->experts +
                                    c->cursor_expert];
            c->move_target = (here + 1) % v->device_count;
        } else {
            view_event(v, "move: the job has one rank");
        }
        return REDRAW;
    case KEY_UP: case 'k':
        c->cursor_layer -= c->cursor_layer > 0;
        return REDRAW;
    case KEY_DOWN: case 'j':
        c->cursor_layer += c->cursor_layer + 1 < v->layers;
        return REDRAW;
    case KEY_LEFT: case 'h':
        c->cursor_expert -= c->cursor_expert > 0;
        return REDRAW;
    case KEY_RIGHT: case 'l':
        c->cursor_expert += c->cursor_expert + 1 < v->experts;
        return REDRAW;
    case KEY_RESIZE:
        return REDRAW;
    default:
        return KEEP;
    }
}

static reaction handle_key(console *c, int key)
{
    switch (c->mode) {
    case MODE_COMMAND:
        return command_key(c, key);
    case MODE_HELP:
        c->mode = MODE_NORMAL;
        return REDRAW;
    case MODE_MOVE:
        if (key == KEY_LEFT || key == 'h')
            c->move_target = (c->move_target + c->v.device_count - 1) %
                             c->v.device_count;
        else if (key == KEY_RIGHT || key == 'l')
            c->move_target = (c->move_target + 1) % c->v.device_count;
        else if (key >= '0' && key <= '9' && key - '0' < c->v.device_count)
            c->move_target = key - '0';
        else if (key == '\n' || key == KEY_ENTER) {
            char line[64];
            snprintf(line, sizeof line, "move %d.%d %d", c->cursor_layer,
                     c->cursor_expert, c->move_target);
            send_command(c, line);
            c->mode = MODE_NORMAL;
        } else if (key == 27)
            c->mode = MODE_NORMAL;
        return REDRAW;
    case MODE_CONFIRM_STOP:
        if (key == 'y')
            send_command(c, "stop");
        c->mode = MODE_NORMAL;
        return REDRAW;
    case MODE_QUIT:
        if (key == 'd')
            return LEAVE;
        if (key == 's') {
            send_command(c, "stop");
            c->mode = MODE_NORMAL;
            return REDRAW;
        }
        if (key == 27)
            c->mode = MODE_NORMAL;
        return REDRAW;
    case MODE_NORMAL:
        break;
    }
    return normal_key(c, key);
}

/* ---- the loop -------------------------------------------------------- */

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
    timeout(100);
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

/* Runs until the operator leaves or the job ends. Returns an exit status:
 * 0 detached or done, 3 stopped, 1 lost the job. */
static int run_console(console *c)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    atexit(restore_terminal);
    setup_terminal(c);
    c->dirty = 1;
    int status = 0, leave = 0;
    while (!leave && !quit_signal) {
        if (c->connected && !read_records(c)) {
            c->connected = 0;
            view_event(&c->v, "the job closed its control socket");
            c->dirty = 1;
        }
        if (c->dirty)
            draw(c);
        int key = getch();
        if (key != ERR && handle_key(c, key) == LEAVE)
            leave = 1;
        if (key != ERR)
            c->dirty = 1;
        if (!c->connected && (strcmp(c->v.status, "done") == 0 ||
                              strcmp(c->v.status, "stopped") == 0)) {
            draw(c);
            status = strcmp(c->v.status, "stopped") == 0 ? 3 : 0;
            struct timespec nap = {1, 0};
            nanosleep(&nap, NULL);
            break;
        }
    }
    endwin();
    if (leave && c->connected)
        printf("moectl: detached; the job goes on. Reattach with:\n"
               "  moectl attach %s\n", c->socket_path);
    else if (strcmp(c->v.status, "stopped") == 0 ||
             strcmp(c->v.status, "done") == 0)
        printf("moectl: the job %s at step %d\n", c->v.status, c->v.step);
    else if (!c->connected) {
        printf("moectl: lost the job's control socket%s%s\n",
               c->log_path[0] ? "; its log: " : "", c->log_path);
        status = 1;
    }
    return status;
}

static void console_init(console *c)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    view_init(&c->v);
}

static void console_finish(console *c)
{
    if (c->fd >= 0)
        close(c->fd);
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
    c.fd = connect_socket(socket_path);
    if (c.fd < 0) {
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

int console_launch(char *const *engine_argv, int engine_argc)
{
    static console c;
    console_init(&c);
    char dir[] = "/tmp/moectl-console-XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "moectl: cannot create a private directory: %s\n",
                strerror(errno));
        return 1;
    }
    snprintf(c.socket_path, sizeof c.socket_path, "%s/control.sock", dir);
    snprintf(c.log_path, sizeof c.log_path, "%s/engine.log", dir);

    char **argv = calloc((size_t)engine_argc + 4, sizeof *argv);
    if (!argv)
        return 1;
    for (int i = 0; i < engine_argc; i++)
        argv[i] = engine_argv[i];
    argv[engine_argc] = "--socket";
    argv[engine_argc + 1] = c.socket_path;
    argv[engine_argc + 2] = NULL;

    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* The job outlives the console: its own session, its output in a
         * log next to the socket. */
        setsid();
        int null = open("/dev/null", O_RDONLY);
        int log = open(c.log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (null >= 0)
            dup2(null, STDIN_FILENO);
        if (log >= 0) {
            dup2(log, STDOUT_FILENO);
            dup2(log, STDERR_FILENO);
        }
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    free(argv);
    if (pid < 0) {
        fprintf(stderr, "moectl: cannot start the job: %s\n",
                strerror(errno));
        return 1;
    }
    c.engine = pid;
    /* Wait for the job's socket (it loads data and builds the model
     * first); give up if the job exits. */
    for (int tries = 0; tries < 600; tries++) {
        c.fd = connect_socket(c.socket_path);
        if (c.fd >= 0)
            break;
        int wstatus;
        if (waitpid(pid, &wstatus, WNOHANG) == pid) {
            fprintf(stderr, "moectl: the job ended before it started "
                            "listening (exit status %d); its log %s:\n",
                    WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1,
                    c.log_path);
            char command[512];
            snprintf(command, sizeof command, "tail -n 20 '%s' >&2",
                     c.log_path);
            if (system(command) != 0)
                fprintf(stderr, "(cannot show the log)\n");
            console_finish(&c);
            return 1;
        }
        struct timespec nap = {0, 50 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    if (c.fd < 0) {
        fprintf(stderr, "moectl: the job did not open %s; its log: %s\n",
                c.socket_path, c.log_path);
        console_finish(&c);
        return 1;
    }
    c.connected = 1;
    int status = run_console(&c);
    /* Reap the job if it ended; a detached job goes on by itself. */
    waitpid(pid, NULL, WNOHANG);
    console_finish(&c);
    return status;
}
