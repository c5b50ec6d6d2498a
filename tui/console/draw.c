#include "tui/console/draw.h"

#include <math.h>
#include <ncurses.h>
#include <stdio.h>
#include <string.h>

#include "tui/console/format.h"
#include "tui/console/keys.h"

/* Display columns of a UTF-8 text whose glyphs are all one column wide
 * (ours are: ASCII and a few arrows). */
int draw_text_cols(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* UTF-8 terminal (console_draw sets it): the cut mark is an ellipsis. */
static int draw_utf8;

/* Writes s in at most cols columns, never splitting a UTF-8 glyph. Text
 * that does not fit is cut after its last whole word that leaves room for
 * a mark (an ellipsis, or ~): a number is shown whole or not at all. Only
 * a single word wider than the room is cut inside. */
void draw_text(int row, int col, const char *s, int cols)
{
    if (cols <= 0)
        return;
    if (draw_text_cols(s) <= cols) {
        mvaddstr(row, col, s);
        return;
    }
    int bytes = 0, used = 0, word_end = -1;
    while (s[bytes] && used < cols - 1) {
        if (s[bytes] == ' ' && bytes > 0 && s[bytes - 1] != ' ')
            word_end = bytes;
        bytes++;
        while (((unsigned char)s[bytes] & 0xC0) == 0x80)
            bytes++;
        used++;
    }
    if (s[bytes] == ' ' && bytes > 0 && s[bytes - 1] != ' ')
        word_end = bytes; /* the room ends right after a whole word */
    int keep = word_end >= 0 ? word_end : bytes;
    if (keep > 0)
        mvaddnstr(row, col, s, keep);
    addstr(draw_utf8 ? "\u2026" : "~");
}

/* A panel's title on its first row, a column clear of the next panel. */
void draw_title(const layout_rect *r, const char *title)
{
    if (r->rows < 2 || r->cols < 4)
        return;
    attron(A_BOLD);
    draw_text(r->row, r->col, title, r->cols - 1);
    attroff(A_BOLD);
}

/* The longest of texts (longest first) that fits in cols columns. */
const char *draw_longest_fitting(const char *const *texts, int count,
                                 int cols)
{
    for (int i = 0; i < count - 1; i++)
        if (draw_text_cols(texts[i]) <= cols)
            return texts[i];
    return texts[count - 1];
}

static void draw_header(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    char elapsed[16], eta[16];
    format_duration(elapsed, sizeof elapsed,
                    v->have_step ? v->elapsed_s : NAN);
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


/* The target's model state after the move against its memory_gb: the
 * measure the job's own check applies, so "does not fit" is a refusal. */
static void move_memory_preview(const console *c, char *line, size_t size)
{
    const view *v = &c->v;
    int to = c->move_target;
    if (to >= v->rank_count || !isfinite(v->expert_state_bytes))
        return;
    const view_rank *k = &v->ranks[to];
    int here = v->placement &&
               v->placement[(size_t)c->cursor_layer * v->experts +
                            c->cursor_expert] == to;
    double after = k->state_gb * 1e9 + (here ? 0 : v->expert_state_bytes);
    char after_text[16], capacity[16];
    format_bytes(after_text, sizeof after_text, after);
    format_bytes(capacity, sizeof capacity, k->capacity_gb * 1e9);
    snprintf(line, size, "; rank %d state after %s/%s%s", to, after_text,
             capacity, after > k->capacity_gb * 1e9 ? " DOES NOT FIT" : "");
}

/* What the footer says before the keys, in the modes that ask something. */
static void mode_prompt(const console *c, char *line, size_t size)
{
    line[0] = '\0';
    if (c->mode == MODE_MOVE) {
        /* The choices with each rank's load, the chosen one bracketed. */
        int n = snprintf(line, size, "move expert %d.%d to rank %d:",
                         c->cursor_layer, c->cursor_expert, c->move_target);
        for (int i = 0; i < c->v.device_count && n > 0 &&
                        n < (int)size - 1; i++) {
            const view_rank *k = i < c->v.rank_count ? &c->v.ranks[i] : NULL;
            n += snprintf(line + n, size - (size_t)n, " %s%d %s %.0ftok%s",
                          i == c->move_target ? "[" : "", i,
                          c->v.devices[i].name, k ? k->tokens : 0.0,
                          i == c->move_target ? "]" : "");
        }
        if (n > 0 && n < (int)size - 1)
            move_memory_preview(c, line + n, size - (size_t)n);
    } else if (c->mode == MODE_CONFIRM_STOP) {
        snprintf(line, size, "Stop the job (checkpoint first)?");
    } else if (c->mode == MODE_QUIT) {
        snprintf(line, size, "Leave:");
    } else if (c->quitting) {
        snprintf(line, size, "[stopping the job]");
    } else if (!c->connected) {
        snprintf(line, size, "[disconnected]");
    }
}

/* The footer: the : line, or the mode's prompt and the keys it takes,
 * from the key table. */
static void draw_footer(console *c, const layout_rect *r)
{
    mvhline(r->row, r->col, ' ', r->cols);
    char line[512];
    if (c->mode == MODE_COMMAND) {
        snprintf(line, sizeof line, ":%s", c->input);
    } else {
        mode_prompt(c, line, sizeof line);
        size_t used = strlen(line);
        if (used && used + 2 < sizeof line) {
            memcpy(line + used, "  ", 3);
            used += 2;
        }
        keys_footer(line + used, sizeof line - used, keys_active(c),
                    r->cols - (int)used);
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

/* What the heatmap's marks mean, after the keys in the ? overlay. */
static const char *const heatmap_legend[] = {
    "",
    "Heatmap: 10 x tokens (moving average) / layer mean. Underlined, or !",
    "without colour: hosted on the straggler, the rank the others waited",
    "for most often over the last 64 steps (marked in Devices). ++: 10x",
    "the mean or more. It scrolls with the cursor when experts do not fit.",
    "",
};

enum { HELP_LINES_MAX = 40, HELP_COLS = 72 };

/* The ? overlay, centred: the keys of the normal mode (and the story's),
 * the heatmap's legend, and how to close it. */
static void draw_help(const console *c, int rows, int cols)
{
    static char lines[HELP_LINES_MAX][KEYS_HELP_COLS];
    unsigned modes = KEYS_IN(MODE_NORMAL) | (c->narrator ? KEYS_STORY : 0);
    int n = keys_help(lines, HELP_LINES_MAX - 8, modes);
    int legend = (int)(sizeof heatmap_legend / sizeof heatmap_legend[0]);
    for (int i = 0; i < legend; i++)
        snprintf(lines[n++], KEYS_HELP_COLS, "%s", heatmap_legend[i]);
    const console_binding *close = keys_find(KEYS_IN(MODE_HELP), 0);
    if (close)
        snprintf(lines[n++], KEYS_HELP_COLS, "Press %s to %s.", close->label,
                 close->help);
    /* On a short screen the legend goes first, then the keys' tail; the
     * way to close it stays. */
    int room = rows - 2;
    if (n > room && close) {
        int keep = room - 1 > 0 ? room - 1 : 0;
        memmove(lines[keep], lines[n - 1], sizeof lines[0]);
        n = keep + 1;
    }
    int top = rows / 2 - n / 2 - 1, left = cols / 2 - HELP_COLS / 2;
    top = top < 0 ? 0 : top;
    left = left < 0 ? 0 : left;
    for (int i = -1; i <= n; i++) {
        mvhline(top + 1 + i, left, ' ', HELP_COLS);
        if (i >= 0 && i < n)
            mvprintw(top + 1 + i, left + 2, "%.*s", cols - 2, lines[i]);
    }
}

/* The end: the run's summary over the last screen, until a key. Paths
 * too long for the box lose their start, never their end. */
static void draw_end(const console *c, int rows, int cols)
{
    const view *v = &c->v;
    enum { END_LINES = 9 };
    char lines[END_LINES][160];
    int n = 0, width = cols - 4 < 76 ? cols - 4 : 76;
    char loss[32], val[32], tps[32], mfu[32], cost[32], took[32];
    format_real(loss, sizeof loss, "%.4f", v->summary_loss);
    format_real(val, sizeof val, "%.4f", v->summary_val_loss);
    format_real(tps, sizeof tps, "%.0f", v->summary_tokens_per_s);
    format_real(mfu, sizeof mfu, "%.3g%%", v->summary_mfu * 100);
    format_real(cost, sizeof cost, "%.4g", v->summary_cost_per_mtok);
    format_duration(took, sizeof took, v->summary_elapsed_s);
    snprintf(lines[n++], sizeof lines[0], "The job %s at step %d.",
             v->status, v->summary_last_step);
    snprintf(lines[n++], sizeof lines[0], "loss %s   val_loss %s", loss, val);
    snprintf(lines[n++], sizeof lines[0], "tokens/s %s   MFU %s   took %s",
             tps, mfu, took);
    snprintf(lines[n++], sizeof lines[0], "cost %s %s per 1M tokens", cost,
             v->currency);
    const char *paths[2] = {v->summary_checkpoint, v->run_dir};
    const char *labels[2] = {"checkpoint ", "run directory "};
    for (int i = 0; i < 2; i++) {
        const char *p = paths[i][0] ? paths[i] : "none";
        int room = width - 4 - (int)strlen(labels[i]);
        int len = (int)strlen(p);
        snprintf(lines[n++], sizeof lines[0], "%s%s%.*s", labels[i],
                 len > room ? "..." : "", room, len > room ? p + len - room + 3
                                                           : p);
    }
    snprintf(lines[n++], sizeof lines[0], " ");
    snprintf(lines[n++], sizeof lines[0], "Press any key to leave.");
    int top = rows / 2 - n / 2 - 1, left = cols / 2 - width / 2;
    left = left < 0 ? 0 : left;
    for (int i = -1; i <= n; i++) {
        mvhline(top + 1 + i, left, ' ', width);
        if (i >= 0 && i < n)
            mvprintw(top + 1 + i, left + 2, "%.*s", width - 4, lines[i]);
    }
}

void console_draw(console *c)
{
    draw_utf8 = c->utf8;
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
    if (c->mode == MODE_HELP)
        draw_help(c, rows, cols);
    if (c->ended && c->v.have_summary)
        draw_end(c, rows, cols);
    draw_footer(c, &lay.panel[LAYOUT_FOOTER]);
    refresh();
    c->dirty = 0;
}

