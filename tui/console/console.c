#include "tui/console/console.h"
#include "engine/core/signals.h"

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

#include "tui/console/layout.h"
#include "tui/console/plot.h"
#include "tui/console/view.h"

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
    /* The policy b last asked for until the job confirms it, so that b
     * pressed twice quickly still steps off -> suggest -> auto. */
    view_policy policy_wanted;
    /* A story drawn in place of the event log (moectl demo), or NULL. */
    const console_narrator *narrator;
    int quitting;            /* the narrator asked to stop the job and leave */
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

/* Sends one command; echo logs it as "> line" in the event log. */
static void send_line(console *c, const char *line, int echo)
{
    char text[LINE_MAX_INPUT + 2];
    int n = snprintf(text, sizeof text, "%s\n", line);
    if (c->fd < 0 || n <= 0 ||
        send(c->fd, text, (size_t)n, MSG_NOSIGNAL) != (ssize_t)n) {
        view_event(&c->v, "error: the job's control socket is gone");
        c->connected = 0;
    } else if (echo) {
        char logged[LINE_MAX_INPUT + 8];
        snprintf(logged, sizeof logged, "> %s", line);
        view_event(&c->v, logged);
    }
    c->dirty = 1;
}

static void send_command(console *c, const char *line)
{
    send_line(c, line, 1);
}

/* How a narrator sends its commands: like the operator's, logged. */
static void narrator_send(void *console_ctx, const char *line)
{
    send_command(console_ctx, line);
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
            if (c->narrator)
                c->narrator->record(c->narrator->ctx, start);
            if (c->v.policy == c->policy_wanted)
                c->policy_wanted = VIEW_POLICY_UNKNOWN;
            c->dirty = 1;
            start = nl + 1;
        }
        size_t rest = c->inlen - (size_t)(start - c->inbuf);
        memmove(c->inbuf, start, rest);
        c->inlen = rest;
    }
}

/* ---- drawing --------------------------------------------------------- */

/* Display columns of a UTF-8 text whose glyphs are all one column wide
 * (ours are: ASCII and a few arrows). */
static int text_cols(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* Writes at most cols columns of s, never splitting a UTF-8 glyph. */
static void put_text(int row, int col, const char *s, int cols)
{
    int bytes = 0, used = 0;
    while (s[bytes] && used < cols) {
        bytes++;
        while (((unsigned char)s[bytes] & 0xC0) == 0x80)
            bytes++;
        used++;
    }
    if (bytes > 0)
        mvaddnstr(row, col, s, bytes);
}

/* A panel's title on its first row, a column clear of the next panel. */
static void box_title(const layout_rect *r, const char *title)
{
    if (r->rows < 2 || r->cols < 4)
        return;
    attron(A_BOLD);
    put_text(r->row, r->col, title, r->cols - 1);
    attroff(A_BOLD);
}

/* The longest of texts (longest first) that fits in cols columns. */
static const char *longest_fitting(const char *const *texts, int count,
                                   int cols)
{
    for (int i = 0; i < count - 1; i++)
        if (text_cols(texts[i]) <= cols)
            return texts[i];
    return texts[count - 1];
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
    else if (x > 0 && x < 1e-3) /* 0.00006766, not 6.766e-05 */
        snprintf(out, size, "%.*f %s", 3 - (int)floor(log10(x)), x, cur);
    else
        snprintf(out, size, "%.4g %s", x, cur);
}

static void draw_header(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    char elapsed[16], eta[16];
    format_duration(elapsed, sizeof elapsed, v->have_step ? v->elapsed_s : NAN);
    double remaining = NAN;
    if (v->have_step && v->tokens_per_s.avg > 0 && v->tokens_per_step > 0)
        remaining = (double)(v->steps_total - v->step) * v->tokens_per_step /
                    v->tokens_per_s.avg;
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
    int rows = r->rows - 1, cols = r->cols - 1; /* a gap to the next */
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

static void format_bytes(char *out, size_t size, double bytes)
{
    static const char *const units[] = {"B", "KB", "MB", "GB", "TB"};
    if (!isfinite(bytes) || bytes < 0) {
        snprintf(out, size, "n/a");
        return;
    }
    int u = 0;
    while (bytes >= 1000 && u < 4) {
        bytes /= 1000;
        u++;
    }
    snprintf(out, size, "%.3g %s", bytes, units[u]);
}

/* x in format, or n/a when it is not a number. */
static const char *real_text(char *out, size_t size, const char *format,
                             double x)
{
    if (isfinite(x))
        snprintf(out, size, format, x);
    else
        snprintf(out, size, "n/a");
    return out;
}

/* A line per figure; below 6 lines the cost per hour and per 1M tokens
 * share one, below 7 the footnote goes. */
static void draw_speed(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    box_title(r, "Throughput and cost");
    int lines = r->rows - 1, row = r->row + 1;
    if (lines < 1)
        return;
    if (!v->have_step) {
        put_text(row, r->col, "n/a until the first step", r->cols);
        return;
    }
    char text[8][128];
    int n = 0;
    char now[32] = "n/a", avg[32] = "n/a";
    if (v->tokens_per_s.valid) {
        snprintf(now, sizeof now, "%.0f", v->tokens_per_s.now);
        snprintf(avg, sizeof avg, "%.0f", v->tokens_per_s.avg);
    }
    snprintf(text[n++], sizeof text[0], "tokens/s %s now, %s avg", now, avg);
    char mfu[32], ideal[32], flops[32], step[32];
    real_text(mfu, sizeof mfu, "%.3g%%", v->mfu.valid ? v->mfu.avg * 100
                                                      : NAN);
    real_text(ideal, sizeof ideal, "%.0f%%",
              v->efficiency.valid ? v->efficiency.avg * 100 : NAN);
    snprintf(text[n++], sizeof text[0], "MFU %s, %s of ideal", mfu, ideal);
    snprintf(text[n++], sizeof text[0], "%s GFLOP/s, step %s ms",
             real_text(flops, sizeof flops, "%.1f",
                       v->model_flops_per_s / 1e9),
             real_text(step, sizeof step, "%.1f", v->step_ms));
    view_cost cost;
    int have_cost = view_cost_now(v, &cost);
    char hour[32], mtok[32], btok[32], ttok[32];
    const char *cur = v->currency;
    format_money(hour, sizeof hour, have_cost ? cost.per_hour : NAN, cur);
    format_money(mtok, sizeof mtok, have_cost ? cost.per_mtok : NAN, cur);
    format_money(btok, sizeof btok, have_cost ? cost.per_btok : NAN, cur);
    format_money(ttok, sizeof ttok, have_cost ? cost.per_ttok : NAN, cur);
    if (lines >= 6) {
        snprintf(text[n++], sizeof text[0], "cost %s/hour, %d device%s", hour,
                 v->device_count, v->device_count == 1 ? "" : "s");
        snprintf(text[n++], sizeof text[0], "%s per 1M tokens", mtok);
    } else {
        snprintf(text[n++], sizeof text[0], "%s/h, 1M %s", hour, mtok);
    }
    snprintf(text[n++], sizeof text[0], "1B %s  1T %s", btok, ttok);
    if (lines >= 7)
        snprintf(text[n++], sizeof text[0], "(MFU, cost: moving averages)");
    for (int i = 0; i < n && i < lines; i++)
        put_text(row + i, r->col, text[i], r->cols);
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

/* A layer's imbalance as the engine measured it, or computed from this
 * step's load for engines that do not publish it. */
static void layer_stats(const view *v, int l, char *out, size_t size)
{
    double max_mean = NAN, cv = NAN;
    int dead = -1;
    if (v->have_imbalance) {
        max_mean = v->max_mean[l];
        cv = v->cv[l];
        dead = v->dead[l];
    } else {
        const int *load = v->expert_load + (size_t)l * v->experts;
        double mean = 0, max = 0, var = 0;
        dead = 0;
        for (int e = 0; e < v->experts; e++) {
            mean += load[e];
            max = load[e] > max ? load[e] : max;
            dead += load[e] == 0;
        }
        mean /= v->experts;
        for (int e = 0; e < v->experts; e++)
            var += (load[e] - mean) * (load[e] - mean);
        if (mean > 0) {
            max_mean = max / mean;
            cv = sqrt(var / v->experts) / mean;
        }
    }
    char m[16] = "n/a", k[16] = "n/a", d[16] = "n/a";
    if (isfinite(max_mean))
        snprintf(m, sizeof m, "%.2fx", max_mean);
    if (isfinite(cv))
        snprintf(k, sizeof k, "%.2f", cv);
    if (dead >= 0)
        snprintf(d, sizeof d, "%d", dead);
    snprintf(out, size, "max %s cv %s dead %s", m, k, d);
}

static void draw_heatmap(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    int ema = v->have_load_ema;
    if (c->color)
        box_title(r, ema ? "Expert load: 10 x avg tokens / layer mean"
                         : "Expert load: 10 x tokens / layer mean");
    else
        box_title(r, ema ? "Expert load .:-=+*#%@ = avg tokens / mean"
                         : "Expert load .:-=+*#%@ = tokens / mean");
    if (!v->have_run || !v->have_step || v->layers == 0 || v->experts == 0)
        return;
    double share;
    int straggler = view_straggler(v, &share);
    int row = r->row + 1, end = r->row + r->rows - 1; /* last: selection */
    int cell = 3, label = 6;
    int shown = (r->cols - label - 1) / cell; /* a gap before the next panel */
    if (shown > v->experts)
        shown = v->experts;
    int stats_col = r->col + label + shown * cell + 1;
    int room = r->col + r->cols - stats_col - 1; /* a gap to the next */
    int stats_beside = room >= 24;
    for (int l = 0; l < v->layers && row < end; l++, row++) {
        size_t first = (size_t)l * v->experts;
        const int *load = v->expert_load + first;
        const double *avg = v->load_ema + first;
        double mean = 0;
        for (int e = 0; e < v->experts; e++)
            mean += ema ? avg[e] : load[e];
        mean /= v->experts;
        mvprintw(row, r->col, "L%-4d", l);
        for (int e = 0; e < shown; e++) {
            double value = ema ? avg[e] : load[e];
            double ratio = mean > 0 && isfinite(value) ? value / mean : 0;
            int selected = l == c->cursor_layer && e == c->cursor_expert;
            int on_straggler = straggler >= 0 &&
                               v->placement[first + e] == straggler;
            int pair = load_level(ratio);
            attr_t attrs = (selected ? A_REVERSE : 0) |
                           (on_straggler ? A_UNDERLINE | A_BOLD : 0);
            if (c->color)
                attron(COLOR_PAIR(pair));
            attron(attrs);
            char text[8];
            if (c->color)
                snprintf(text, sizeof text, "%2.0f ",
                         ratio * 10 > 99 ? 99 : ratio * 10);
            else
                snprintf(text, sizeof text, "%c%c ",
                         " .:-=+*#%@"[ratio >= 1.8 ? 9 : (int)(ratio * 5)],
                         selected ? '<' : on_straggler ? '!' : ' ');
            mvaddstr(row, r->col + label + e * cell, text);
            attroff(attrs);
            if (c->color)
                attroff(COLOR_PAIR(pair));
        }
        if (stats_beside) {
            char stats[64];
            layer_stats(v, l, stats, sizeof stats);
            put_text(row, stats_col, stats, room);
        }
    }
    /* The legend, on the row above the selection when the layers left it
     * free. */
    if (row < end && v->straggler_count > 0) {
        char legend[128];
        int hosted = 0;
        for (int i = 0; straggler >= 0 && i < v->layers * v->experts; i++)
            hosted += v->placement[i] == straggler;
        if (straggler >= 0 && hosted)
            snprintf(legend, sizeof legend, "%s on straggler %d (%.0f%% of "
                     "steps)", c->color ? "underlined:" : "!:", straggler,
                     share * 100);
        else if (straggler >= 0)
            snprintf(legend, sizeof legend, "straggler %d (%.0f%% of steps) "
                     "hosts no expert", straggler, share * 100);
        else
            snprintf(legend, sizeof legend, "no straggler");
        put_text(end - 1, r->col, legend, r->cols - 1);
    }
    int l = c->cursor_layer, e = c->cursor_expert;
    if (l < v->layers && e < v->experts) {
        size_t at = (size_t)l * v->experts + e;
        char line[192], extra[64] = "";
        if (ema && isfinite(v->load_ema[at]))
            snprintf(extra, sizeof extra, ", avg %.0f", v->load_ema[at]);
        char split[48] = "";
        if (v->holders[at] > 1)
            snprintf(split, sizeof split, " (%.0f%% of its rows; split over "
                     "%d ranks)", v->kept[at] * 100, v->holders[at]);
        int n = snprintf(line, sizeof line, "expert %d.%d on rank %d%s: %d "
                         "tokens%s%s", l, e, v->placement[at], split,
                         v->expert_load[at], extra,
                         shown < v->experts ? " (more experts than fit)"
                                            : "");
        if (!stats_beside && n > 0 && n < (int)sizeof line) {
            char stats[64];
            layer_stats(v, l, stats, sizeof stats);
            snprintf(line + n, sizeof line - (size_t)n, "; L%d %s", l, stats);
        }
        put_text(end, r->col, line, r->cols - 1);
    }
}

/* A device row is fields joined by spaces. When they do not fit, the
 * least important go first; the bar (if any) takes what is left. */
typedef struct row_field {
    char text[128];
    int keep;       /* higher stays longer */
    int bar;        /* the compute/communication bar: fills the rest */
} row_field;

static void fit_fields(row_field *fields, int count, int cols, int bar_min,
                       int *bar_cols)
{
    for (;;) {
        int used = 0, drop = -1, present = 0;
        for (int i = 0; i < count; i++) {
            if (fields[i].keep < 0)
                continue;
            used += (present++ ? 1 : 0) +
                    (fields[i].bar ? bar_min : text_cols(fields[i].text));
            if (!fields[i].bar &&
                (drop < 0 || fields[i].keep < fields[drop].keep))
                drop = i;
        }
        if (used <= cols || drop < 0) {
            *bar_cols = bar_min + (cols > used ? cols - used : 0);
            return;
        }
        fields[drop].keep = -1;
    }
}

/* The split of a rank's step: compute #, all-to-all =, all-reduce -,
 * idle . */
static void rank_bar(const view_rank *k, char *bar, int width)
{
    double parts[4] = {k->expert_ms + k->dense_ms, k->alltoall_ms,
                       k->allreduce_ms, k->idle_ms};
    double total = 0;
    for (int p = 0; p < 4; p++)
        total += isfinite(parts[p]) ? parts[p] : 0;
    const char marks[4] = {'#', '=', '-', '.'};
    int at = 0;
    for (int p = 0; p < 4 && total > 0; p++) {
        int n = isfinite(parts[p]) ? (int)(parts[p] / total * width + 0.5)
                                   : 0;
        for (int j = 0; j < n && at < width; j++)
            bar[at++] = marks[p];
    }
    while (at < width)
        bar[at++] = ' ';
    bar[at] = '\0';
}

static void draw_fields(int row, int col, int cols, const row_field *fields,
                        int count, const view_rank *k, int bar_cols)
{
    move(row, col);
    int used = 0, present = 0;
    for (int i = 0; i < count && used < cols; i++) {
        if (fields[i].keep < 0)
            continue;
        if (present++) {
            addch(' ');
            used++;
        }
        if (fields[i].bar) {
            char bar[256];
            int width = bar_cols < (int)sizeof bar ? bar_cols
                                                   : (int)sizeof bar - 1;
            if (width > cols - used)
                width = cols - used;
            if (k)
                rank_bar(k, bar, width);
            else
                snprintf(bar, sizeof bar, "%-*s", width, "n/a");
            addnstr(bar, width);
            used += width;
        } else {
            getyx(stdscr, row, col);
            put_text(row, col, fields[i].text, cols - used);
            used += text_cols(fields[i].text);
        }
    }
}

static void draw_devices(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    static const char *const titles[] = {
        "Devices  # compute = all-to-all - all-reduce . idle",
        "Devices  # compute = a2a - allreduce . idle",
        "Devices  #compute =a2a -allred .idle",
        "Devices #comp =a2a -red .idle",
    };
    box_title(r, longest_fitting(titles, 4, r->cols - 1));
    double share;
    int straggler = view_straggler(v, &share);
    /* Two lines a device when they fit: who it is and what it holds, then
     * where its step went. */
    int two = r->rows - 1 >= 2 * v->device_count;
    int row = r->row + 1, end = r->row + r->rows;
    int cols = r->cols - 1; /* a gap to the screen edge */
    for (int i = 0; i < v->device_count && row < end; i++) {
        const view_device *d = &v->devices[i];
        const view_rank *k = i < v->rank_count ? &v->ranks[i] : NULL;
        char state[16], capacity[16];
        format_bytes(state, sizeof state, k ? k->state_gb * 1e9 : NAN);
        format_bytes(capacity, sizeof capacity,
                     k ? k->capacity_gb * 1e9 : NAN);
        enum { NAME, EMU, EXPERTS, PRICE, MEM, BACKEND, BAR, TOKENS, FLOPS,
               MARK, FIELDS };
        row_field f[FIELDS];
        memset(f, 0, sizeof f);
        snprintf(f[NAME].text, sizeof f[NAME].text, "%d %s", i, d->name);
        snprintf(f[BACKEND].text, sizeof f[BACKEND].text, "%s", d->backend);
        snprintf(f[EMU].text, sizeof f[EMU].text, "%s",
                 d->emulated ? "EMULATED" : "");
        snprintf(f[EXPERTS].text, sizeof f[EXPERTS].text, "%d exp",
                 k ? k->experts : 0);
        snprintf(f[PRICE].text, sizeof f[PRICE].text, "%.3g %s/h",
                 d->price_per_hour, v->currency);
        snprintf(f[MEM].text, sizeof f[MEM].text, "mem %s/%s", state,
                 capacity);
        snprintf(f[TOKENS].text, sizeof f[TOKENS].text, "%.0f tok",
                 k ? k->tokens : NAN);
        if (k && isfinite(k->expert_flops_per_s))
            snprintf(f[FLOPS].text, sizeof f[FLOPS].text, "%.3g GFLOP/s",
                     k->expert_flops_per_s / 1e9);
        else
            snprintf(f[FLOPS].text, sizeof f[FLOPS].text, "GFLOP/s n/a");
        if (i == straggler)
            snprintf(f[MARK].text, sizeof f[MARK].text, "%s straggler %.0f%%",
                     c->utf8 ? "\u25c0" : "<", share * 100);
        f[BAR].bar = 1;
        /* What an operator looks for first stays longest: who, emulated,
         * straggler; then speed and what it holds. */
        int keep[FIELDS] = {[NAME] = 9, [EMU] = 8, [MARK] = 7, [FLOPS] = 5,
                            [EXPERTS] = 4, [TOKENS] = 3, [MEM] = 2,
                            [PRICE] = 1, [BACKEND] = 0};
        for (int j = 0; j < FIELDS; j++)
            f[j].keep = f[j].text[0] || f[j].bar ? keep[j] : -1;
        int bar_cols;
        attr_t attrs = i == straggler ? A_BOLD : 0;
        if (c->color && i == straggler)
            attrs |= COLOR_PAIR(COLOR_PAIR_BAD);
        attron(attrs);
        if (two && k) {
            /* Line 1: who and what it holds; line 2: bar, tokens, speed. */
            row_field a[6] = {f[NAME], f[BACKEND], f[EMU], f[EXPERTS],
                              f[MEM], f[PRICE]};
            row_field b[4] = {f[BAR], f[TOKENS], f[FLOPS], f[MARK]};
            fit_fields(a, 6, cols, 0, &bar_cols);
            draw_fields(row++, r->col, cols, a, 6, k, 0);
            fit_fields(b, 4, cols - 2, 8, &bar_cols);
            draw_fields(row++, r->col + 2, cols - 2, b, 4, k, bar_cols);
        } else {
            row_field a[FIELDS] = {f[NAME], f[EMU], f[BAR], f[TOKENS],
                                   f[FLOPS], f[EXPERTS], f[MEM], f[PRICE],
                                   f[BACKEND], f[MARK]};
            fit_fields(a, FIELDS, cols, 4, &bar_cols);
            draw_fields(row++, r->col, cols, a, FIELDS, k, bar_cols);
        }
        attroff(attrs);
    }
}

static const char *plan_trigger_name(const char *trigger)
{
    if (strcmp(trigger, "suggest") == 0)
        return "suggested";
    if (strcmp(trigger, "apply") == 0)
        return "by apply";
    if (strcmp(trigger, "plan") == 0)
        return "by plan";
    return trigger;
}

/* The balance band: the policy; the latest plan; the latest applied plan,
 * measured. Each line has a full and a compact form for narrow screens. */
static void draw_balance(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    if (r->rows < 3)
        return;
    int cols = r->cols - 1;
    char full[256], compact[256], every[64] = "";
    if (v->policy != VIEW_POLICY_OFF && v->policy_every > 0)
        snprintf(every, sizeof every, " every %d steps, min-gain %.3g%%",
                 v->policy_every, v->policy_min_gain * 100);
    snprintf(full, sizeof full, "Balance  policy %s%s",
             view_policy_name(v->policy), every);
    box_title(r, full);

    const view_plan *p = &v->plan;
    const view_plan_result *q = &v->plan_result;
    if (!p->have) {
        snprintf(full, sizeof full, "no plan yet: a plans and applies, :plan "
                 "only plans, b sets the policy");
        snprintf(compact, sizeof compact, "no plan yet");
    } else if (p->moves == 0) {
        char before[32];
        real_text(before, sizeof before, "%.3g ms", p->before_ms);
        snprintf(full, sizeof full, "plan at step %d (%s): the placement is "
                 "already the best found, step %s", p->step,
                 plan_trigger_name(p->trigger), before);
        snprintf(compact, sizeof compact, "plan at step %d (%s): no move "
                 "helps, step %s", p->step, plan_trigger_name(p->trigger),
                 before);
    } else {
        char moved[16], state[48] = "applied";
        format_bytes(moved, sizeof moved, p->moved_bytes);
        int measured = q->have && q->applied_step >= p->step;
        if (!p->applied && strcmp(p->trigger, "auto") == 0)
            snprintf(state, sizeof state, "kept: gain below the threshold");
        else if (!p->applied)
            snprintf(state, sizeof state, "not applied (a applies it)");
        else if (!measured && v->policy_every > 0)
            snprintf(state, sizeof state, "applied, measuring until step %d",
                     p->step + v->policy_every);
        else if (!measured)
            snprintf(state, sizeof state, "applied, measuring");
        char before[32], after[32], gain[32];
        real_text(before, sizeof before, "%.3g", p->before_ms);
        real_text(after, sizeof after, "%.3g", p->after_ms);
        real_text(gain, sizeof gain, "%.1f%%", p->gain * 100);
        /* Moves alone, or changes of which some split an expert. */
        char what[48];
        if (p->splits)
            snprintf(what, sizeof what, "%d change%s (%d split)", p->moves,
                     p->moves == 1 ? "" : "s", p->splits);
        else
            snprintf(what, sizeof what, "%d move%s", p->moves,
                     p->moves == 1 ? "" : "s");
        snprintf(full, sizeof full, "plan at step %d (%s): %s, %s -> %s ms "
                 "predicted, gain %s, %s; %s", p->step,
                 plan_trigger_name(p->trigger), what, before, after, gain,
                 moved, state);
        snprintf(compact, sizeof compact, "plan %d (%s): %s, %s -> %s ms "
                 "(gain %s), %s", p->step, plan_trigger_name(p->trigger),
                 what, before, after, gain, state);
    }
    const char *plan_lines[] = {full, compact};
    put_text(r->row + 1, r->col, longest_fitting(plan_lines, 2, cols), cols);

    if (q->have) {
        char predicted[32], measured[32], error[32], before[32];
        real_text(predicted, sizeof predicted, "%.3g", q->predicted_ms);
        real_text(measured, sizeof measured, "%.3g", q->measured_ms);
        real_text(error, sizeof error, "%+.0f%%",
                  (q->measured_ms / q->predicted_ms - 1) * 100);
        real_text(before, sizeof before, "%.3g", q->before_ms);
        snprintf(full, sizeof full, "plan at step %d: predicted %s ms, "
                 "measured %s ms (%s) over %d steps, before %s ms",
                 q->applied_step, predicted, measured, error, q->steps,
                 before);
        snprintf(compact, sizeof compact, "plan at step %d: predicted %s ms, "
                 "measured %s ms (%s)", q->applied_step, predicted, measured,
                 error);
    } else {
        snprintf(full, sizeof full, "no applied plan measured yet");
        snprintf(compact, sizeof compact, "%s", full);
    }
    const char *result_lines[] = {full, compact};
    put_text(r->row + 2, r->col, longest_fitting(result_lines, 2, cols),
             cols);
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
        put_text(row, r->col, v->events[i % VIEW_EVENTS], r->cols);
}

/* The narrator's pane, in place of the event log: its title, its text
 * wrapped to the pane, and the latest events in the rows left over. */
static void draw_narration(console *c, const layout_rect *r)
{
    const console_narrator *n = c->narrator;
    box_title(r, n->title);
    int row = r->row + 1, end = r->row + r->rows, cols = r->cols - 1;
    const char *text = n->text;
    while (*text && row < end) {
        const char *stop = strchr(text, '\n');
        int len = stop ? (int)(stop - text) : (int)strlen(text);
        int kept = len >= 2 && text[0] == ' ' && text[1] == ' ';
        int at = 0;
        do {
            while (!kept && at < len && text[at] == ' ')
                at++;
            int take = len - at;
            if (take > cols && !kept) {
                int cut = cols;
                while (cut > 0 && text[at + cut] != ' ')
                    cut--;
                take = cut > 0 ? cut : cols;
            }
            char line[512];
            snprintf(line, sizeof line, "%.*s", take < 511 ? take : 511,
                     text + at);
            put_text(row++, r->col, line, cols);
            at += take;
        } while (at < len && row < end && !kept);
        text += len + (stop ? 1 : 0);
    }
    /* What is left shows the latest events, after a blank row. */
    int lines = end - row - 1;
    if (lines < 2)
        return;
    row++;
    int first = c->v.event_count - lines;
    if (first < 0)
        first = 0;
    if (first < c->v.event_count - VIEW_EVENTS)
        first = c->v.event_count - VIEW_EVENTS;
    for (int i = first; i < c->v.event_count && row < end; i++, row++)
        put_text(row, r->col, c->v.events[i % VIEW_EVENTS], r->cols);
}

static const char *const help_lines[] = {
    "Keys",
    "  p          pause / resume",
    "  c          checkpoint now",
    "  s          stop (asks first): checkpoint, then end the job",
    "  arrows/hjkl move over the expert heatmap",
    "  m          move the selected expert to another rank",
    "  a          apply the suggested plan (or plan now and apply)",
    "  b          balance policy: off -> suggest -> auto -> off",
    "  :          command line (up/down: history): pause, resume, stop,",
    "             checkpoint, status, lr VALUE, move L.E R, plan, apply,",
    "             policy off|suggest|auto [every N] [min-gain X]",
    "  ?          this help",
    "  q          leave: detach (the job goes on) or stop it",
    "",
    "Heatmap: 10 x tokens (moving average) / layer mean. Underlined, or !",
    "without colour: hosted on the straggler, the rank the others waited",
    "for most often over the last 64 steps (marked in Devices).",
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
        if (c->narrator)
            snprintf(line, sizeof line, "%sEnter: next  q: quit (stops the "
                     "job)  p pause  m move  a apply  b policy  : cmd  ? help",
                     c->quitting ? "[stopping the job]  "
                     : c->connected ? "" : "[disconnected]  ");
        else
            snprintf(line, sizeof line, "%sp pause  c checkpoint  s stop  m "
                     "move  a apply  b policy  : cmd  ? help  q quit",
                     c->connected ? "" : "[disconnected]  ");
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
        draw_balance(c, &lay.panel[LAYOUT_BALANCE]);
        if (c->narrator)
            draw_narration(c, &lay.panel[LAYOUT_EVENTS]);
        else
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
    case 'a':
        /* The engine applies its last plan if the placement has not
         * changed since, or plans afresh; its reply says which. */
        send_command(c, "apply");
        return REDRAW;
    case 'b': {
        view_policy from = c->policy_wanted != VIEW_POLICY_UNKNOWN
                               ? c->policy_wanted
                               : v->policy;
        view_policy next = from == VIEW_POLICY_SUGGEST ? VIEW_POLICY_AUTO
                           : from == VIEW_POLICY_AUTO  ? VIEW_POLICY_OFF
                                                       : VIEW_POLICY_SUGGEST;
        char line[32];
        snprintf(line, sizeof line, "policy %s", view_policy_name(next));
        send_command(c, line);
        c->policy_wanted = next;
        return REDRAW;
    }
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
    if (c->narrator) {
        int used = c->narrator->key(c->narrator->ctx,
                                    key == KEY_ENTER ? '\n' : key);
        if (used == CONSOLE_KEY_QUIT) {
            /* A second q, or no job to stop: leave now. */
            if (c->quitting || !c->connected)
                return LEAVE;
            send_command(c, "stop");
            c->quitting = 1;
            return REDRAW;
        }
        if (used == CONSOLE_KEY_USED)
            return REDRAW;
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
    static const int signals[] = {SIGINT, SIGTERM, SIGHUP, 0};
    signals_install(on_signal, signals);
    atexit(restore_terminal);
    setup_terminal(c);
    /* The records do not carry the balance policy; the reply to status
     * does (and lands in the event log). */
    if (c->connected)
        send_line(c, "status", 0);
    c->dirty = 1;
    int status = 0, leave = 0;
    while (!leave && !quit_signal) {
        if (c->connected && !read_records(c)) {
            c->connected = 0;
            view_event(&c->v, "the job closed its control socket");
            c->dirty = 1;
        }
        if (c->narrator &&
            c->narrator->tick(c->narrator->ctx, narrator_send, c))
            c->dirty = 1;
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
    c->policy_wanted = VIEW_POLICY_UNKNOWN;
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
    return console_launch_narrated(engine_argv, engine_argc, NULL);
}

int console_launch_narrated(char *const *engine_argv, int engine_argc,
                            const console_narrator *narrator)
{
    static console c;
    console_init(&c);
    c.narrator = narrator;
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
    /* Reap the job if it ended; a detached job goes on by itself. One the
     * narrator stopped is waited for, so that it has ended when we do. */
    waitpid(pid, NULL, c.quitting ? 0 : WNOHANG);
    console_finish(&c);
    return status;
}
