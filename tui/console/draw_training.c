#include "tui/console/draw.h"

#include <math.h>
#include <ncurses.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tui/console/format.h"
#include "tui/console/plot.h"

/* The step axis under the plot: the first step at the left of the plot
 * area, the newest at the right, "step" between. */
static void draw_step_axis(const view *v, int row, int col, int cols)
{
    enum { AXIS_COLS = 8 };
    char first[24], last[24];
    snprintf(first, sizeof first, "%d", v->history_first_step);
    snprintf(last, sizeof last, "%d", v->history_last_step);
    int room = cols - AXIS_COLS;
    int right = col + cols - (int)strlen(last);
    mvaddstr(row, col + AXIS_COLS - 5, "step");
    mvaddstr(row, col + AXIS_COLS, first);
    if (room > (int)(strlen(first) + strlen(last)) + 1)
        mvaddstr(row, right, last);
    if (v->history_stride > 1 && room > 40) {
        char per[32];
        snprintf(per, sizeof per, "(%d steps a point)", v->history_stride);
        mvaddstr(row, col + AXIS_COLS + room / 2 - (int)strlen(per) / 2, per);
    }
}

/* Validation points over the plot, so they stand apart from the training
 * loss: a bold mark, coloured where the terminal has colour. */
static void mark_validation(const console *c, const layout_rect *r, int rows,
                            int cols, plot_range range)
{
    const view *v = &c->v;
    attr_t attrs = A_BOLD | (c->color ? COLOR_PAIR(COLOR_PAIR_WARM) : 0);
    /* At most one mark in three columns: every k-th point when more. */
    int points = 0;
    for (int i = 0; i < v->history_count; i++)
        points += isfinite(v->val_history[i]) != 0;
    int every = points > cols / 3 ? (points + cols / 3 - 1) / (cols / 3) : 1;
    for (int i = 0, k = 0; i < v->history_count; i++) {
        int row, col;
        if (isfinite(v->val_history[i]) && k++ % every == 0 &&
            plot_point_cell(rows, cols, 8, v->history_count, c->utf8, range,
                            i, v->val_history[i], &row, &col) == 0) {
            attron(attrs);
            mvaddstr(r->row + 1 + row, r->col + col, c->utf8 ? "\u25cf" : "o");
            attroff(attrs);
        }
    }
}

void draw_loss(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    char title[128], val[32] = "n/a";
    const char *train_mark = c->utf8 ? "\u28ff" : "*";
    const char *val_mark = c->utf8 ? "\u25cf" : "o";
    if (v->have_val)
        snprintf(val, sizeof val, "%.4f", v->val_loss);
    if (v->have_step) {
        int n = snprintf(title, sizeof title, "Loss %s %.4f  val %s %s  lr "
                         "%.1e", train_mark, v->loss, val_mark, val, v->lr);
        if (v->spikes > 0) /* steps the spike guard skipped */
            snprintf(title + n, sizeof title - (size_t)n, "  spikes %d",
                     v->spikes);
    } else
        snprintf(title, sizeof title, "Loss n/a");
    draw_title(r, title);
    /* Title, plot, step axis; a gap to the next panel. */
    int rows = r->rows - 2, cols = r->cols - 1;
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
        if (range.valid) {
            for (int i = 0; i < rows; i++)
                mvaddstr(r->row + 1 + i, r->col, lines[i]);
            mark_validation(c, r, rows, cols, range);
            draw_step_axis(v, r->row + 1 + rows, r->col, cols);
        }
    }
    free(lines);
    free(text);
}

void draw_speed(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    draw_title(r, "Throughput and cost");
    int lines = r->rows - 1, row = r->row + 1;
    if (lines < 1)
        return;
    if (!v->have_step) {
        draw_text(row, r->col, "n/a until the first step", r->cols);
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
    format_real(mfu, sizeof mfu, "%.3g%%", v->mfu.valid ? v->mfu.avg * 100
                                                      : NAN);
    format_real(ideal, sizeof ideal, "%.0f%%",
              v->efficiency.valid ? v->efficiency.avg * 100 : NAN);
    snprintf(text[n++], sizeof text[0], "MFU %s, %s of ideal", mfu, ideal);
    snprintf(text[n++], sizeof text[0], "%s GFLOP/s, step %s ms",
             format_real(flops, sizeof flops, "%.1f",
                       v->model_flops_per_s / 1e9),
             format_real(step, sizeof step, "%.1f", v->step_ms));
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
        draw_text(row + i, r->col, text[i], r->cols);
}

