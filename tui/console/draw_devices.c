#include "tui/console/draw.h"

#include <math.h>
#include <ncurses.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tui/console/format.h"

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
                    (fields[i].bar ? bar_min : draw_text_cols(fields[i].text));
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
            draw_text(row, col, fields[i].text, cols - used);
            used += draw_text_cols(fields[i].text);
        }
    }
}

void draw_devices(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    static const char *const titles[] = {
        "Devices  # compute = all-to-all - all-reduce . idle",
        "Devices  # compute = a2a - allreduce . idle",
        "Devices  #compute =a2a -allred .idle",
        "Devices #comp =a2a -red .idle",
    };
    draw_title(r, draw_longest_fitting(titles, 4, r->cols - 1));
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
        char state[16], capacity[16], held[16], rss[16];
        /* mem: the model state against memory_gb, the measure moves and
         * plans are held to; holds: all it has allocated. */
        format_bytes(state, sizeof state, k ? k->state_gb * 1e9 : NAN);
        format_bytes(held, sizeof held, k ? k->used_gb * 1e9 : NAN);
        format_bytes(rss, sizeof rss, k ? k->rss_gb * 1e9 : NAN);
        format_bytes(capacity, sizeof capacity,
                     k ? k->capacity_gb * 1e9 : NAN);
        enum { NAME, EMU, EXPERTS, PRICE, MEM, HELD, RSS, BACKEND, BAR, ROWS,
               TOKENS, FLOPS, MARK, FIELDS };
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
        if (k && isfinite(k->used_gb))
            snprintf(f[HELD].text, sizeof f[HELD].text, "holds %s", held);
        if (k && isfinite(k->rss_gb)) /* the process as the OS counts it */
            snprintf(f[RSS].text, sizeof f[RSS].text, "rss %s", rss);
        snprintf(f[TOKENS].text, sizeof f[TOKENS].text, "%.0f tok",
                 k ? k->tokens : NAN);
        if (k && k->rows > 0)
            snprintf(f[ROWS].text, sizeof f[ROWS].text, "%d rows", k->rows);
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
                            [PRICE] = 1, [BACKEND] = 0, [HELD] = 0,
                            [RSS] = 1, [ROWS] = 3};
        for (int j = 0; j < FIELDS; j++)
            f[j].keep = f[j].text[0] || f[j].bar ? keep[j] : -1;
        int bar_cols;
        attr_t attrs = i == straggler ? A_BOLD : 0;
        if (c->color && i == straggler)
            attrs |= COLOR_PAIR(COLOR_PAIR_BAD);
        attron(attrs);
        if (two && k) {
            /* Line 1: who and what it holds; line 2: bar, tokens, speed. */
            row_field a[8] = {f[NAME], f[BACKEND], f[EMU], f[EXPERTS],
                              f[MEM],  f[HELD],    f[RSS], f[PRICE]};
            row_field b[5] = {f[BAR], f[ROWS], f[TOKENS], f[FLOPS], f[MARK]};
            fit_fields(a, 8, cols, 0, &bar_cols);
            draw_fields(row++, r->col, cols, a, 8, k, 0);
            fit_fields(b, 5, cols - 2, 8, &bar_cols);
            draw_fields(row++, r->col + 2, cols - 2, b, 5, k, bar_cols);
        } else {
            row_field a[FIELDS] = {f[NAME],    f[EMU],    f[BAR],
                                   f[ROWS],    f[TOKENS], f[FLOPS],
                                   f[EXPERTS], f[MEM],    f[HELD],
                                   f[RSS],     f[PRICE],   f[BACKEND],
                                   f[MARK]};
            fit_fields(a, FIELDS, cols, 4, &bar_cols);
            draw_fields(row++, r->col, cols, a, FIELDS, k, bar_cols);
        }
        attroff(attrs);
    }
}

