#include "tui/console/draw.h"

#include <math.h>
#include <ncurses.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tui/console/format.h"

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

/* Where the heatmap's parts go in its rectangle. */
typedef struct heatmap_geometry {
    int label, cell;     /* columns: "L12  ", one expert */
    int shown;           /* experts that fit */
    int first_expert;    /* the first shown (the view scrolls) */
    int stats_col, room; /* the per-layer stats beside the cells */
    int stats_beside;
    int straggler;       /* -1: none */
    double share;        /* of the steps it was the straggler */
} heatmap_geometry;

/* One layer's row: its label, a cell per expert shown, its stats. */
static void draw_layer_row(const console *c, const heatmap_geometry *g,
                           int row, int col, int l)
{
    const view *v = &c->v;
    int ema = v->have_load_ema;
    size_t first = (size_t)l * v->experts;
    const int *load = v->expert_load + first;
    const double *avg = v->load_ema + first;
    double mean = 0;
    for (int e = 0; e < v->experts; e++)
        mean += ema ? avg[e] : load[e];
    mean /= v->experts;
    mvprintw(row, col, "L%-4d", l);
    for (int i = 0; i < g->shown; i++) {
        int e = g->first_expert + i;
        double value = ema ? avg[e] : load[e];
        double ratio = mean > 0 && isfinite(value) ? value / mean : 0;
        int selected = l == c->cursor_layer && e == c->cursor_expert;
        int on_straggler = g->straggler >= 0 &&
                           v->placement[first + e] == g->straggler;
        int pair = load_level(ratio);
        attr_t attrs = (selected ? A_REVERSE : 0) |
                       (on_straggler ? A_UNDERLINE | A_BOLD : 0);
        if (c->color)
            attron(COLOR_PAIR(pair));
        attron(attrs);
        char text[8];
        if (c->color && ratio * 10 >= 99.5) /* 10x the mean or more */
            snprintf(text, sizeof text, "++ ");
        else if (c->color)
            snprintf(text, sizeof text, "%2.0f ", ratio * 10);
        else
            snprintf(text, sizeof text, "%c%c ",
                     " .:-=+*#%@"[ratio >= 1.8 ? 9 : (int)(ratio * 5)],
                     selected ? '<' : on_straggler ? '!' : ' ');
        mvaddstr(row, col + g->label + i * g->cell, text);
        attroff(attrs);
        if (c->color)
            attroff(COLOR_PAIR(pair));
    }
    if (g->stats_beside) {
        char stats[64];
        layer_stats(v, l, stats, sizeof stats);
        draw_text(row, g->stats_col, stats, g->room);
    }
}

/* The summary row of layer l (v): its hottest experts and coldest live
 * ones with their load over the layer mean, and how many got nothing, as
 * many as fit in `cols`. */
static void draw_layer_summary(const console *c, int row, int col, int cols,
                               int l)
{
    enum { MOST = 8 };
    const view *v = &c->v;
    size_t first = (size_t)l * v->experts;
    double mean = 0;
    int dead = 0;
    for (int e = 0; e < v->experts; e++) {
        double x = v->have_load_ema ? v->load_ema[first + e]
                                    : v->expert_load[first + e];
        mean += x;
        dead += v->expert_load[first + e] == 0;
    }
    mean /= v->experts;
    /* The MOST hottest and coldest (not dead), by selection. */
    int hot[MOST], cold[MOST], nh = 0, nc = 0;
    double load[4096];
    int n = v->experts < 4096 ? v->experts : 4096;
    for (int e = 0; e < n; e++)
        load[e] = v->have_load_ema ? v->load_ema[first + e]
                                   : v->expert_load[first + e];
    for (int k = 0; k < MOST && k < n; k++) {
        int h = -1, cl = -1;
        for (int e = 0; e < n; e++) {
            int taken = 0;
            for (int j = 0; j < nh; j++)
                taken |= hot[j] == e;
            for (int j = 0; j < nc; j++)
                taken |= cold[j] == e;
            if (taken)
                continue;
            if (h < 0 || load[e] > load[h])
                h = e;
            if (v->expert_load[first + e] > 0 && (cl < 0 || load[e] < load[cl]))
                cl = e;
        }
        if (h >= 0)
            hot[nh++] = h;
        if (cl >= 0 && cl != h)
            cold[nc++] = cl;
    }
    char line[512];
    int at = snprintf(line, sizeof line, "L%-4d dead %d  hot", l, dead);
    /* Alternate hot and cold until the room is used: the extremes first. */
    char hots[256] = "", colds[256] = "";
    int hl = 0, cl = 0, shown_h = 0, shown_c = 0;
    for (int k = 0; k < MOST; k++) {
        char a[32] = "", b[32] = "";
        if (k < nh && mean > 0)
            snprintf(a, sizeof a, " %d:%.2fx", hot[k], load[hot[k]] / mean);
        if (k < nc && mean > 0)
            snprintf(b, sizeof b, " %d:%.2fx", cold[k], load[cold[k]] / mean);
        int need = at + hl + cl + (int)strlen(a) + (int)strlen(b) + 7;
        if (need > cols)
            break;
        hl += snprintf(hots + hl, sizeof hots - (size_t)hl, "%s", a);
        cl += snprintf(colds + cl, sizeof colds - (size_t)cl, "%s", b);
        shown_h += a[0] != 0, shown_c += b[0] != 0;
    }
    snprintf(line + at, sizeof line - (size_t)at, "%s  cold%s", hots,
             shown_c ? colds : " -");
    (void)shown_h;
    if (l == c->cursor_layer)
        attron(A_BOLD);
    draw_text(row, col, line, cols);
    if (l == c->cursor_layer)
        attroff(A_BOLD);
}

/* What the underlined (or !) cells mean. */
static void draw_legend(const console *c, const heatmap_geometry *g,
                        int row, const layout_rect *r)
{
    const view *v = &c->v;
    char legend[128];
    int hosted = 0;
    for (int i = 0; g->straggler >= 0 && i < v->layers * v->experts; i++)
        hosted += v->placement[i] == g->straggler;
    if (g->straggler >= 0 && hosted)
        snprintf(legend, sizeof legend, "%s on straggler %d (%.0f%% of "
                 "steps)", c->color ? "underlined:" : "!:", g->straggler,
                 g->share * 100);
    else if (g->straggler >= 0)
        snprintf(legend, sizeof legend, "straggler %d (%.0f%% of steps) "
                 "hosts no expert", g->straggler, g->share * 100);
    else
        snprintf(legend, sizeof legend, "no straggler");
    draw_text(row, r->col, legend, r->cols - 1);
}

/* The selected expert: where it is and what it was sent. */
static void draw_selection(const console *c, const heatmap_geometry *g,
                           int row, const layout_rect *r)
{
    const view *v = &c->v;
    int l = c->cursor_layer, e = c->cursor_expert;
    if (l >= v->layers || e >= v->experts)
        return;
    size_t at = (size_t)l * v->experts + e;
    int width = r->cols - 1, rank = v->placement[at];
    int load = v->expert_load[at], split = v->holders[at] > 1;
    int avg = v->have_load_ema && isfinite(v->load_ema[at]);
    int scrolled = g->shown < v->experts;
    int last = g->first_expert + g->shown - 1;
    char line[256], part[3][64] = {"", "", ""};
    /* The long form, or where it does not fit a compact one: a number is
     * never cut. */
    if (split)
        snprintf(part[0], sizeof part[0], " (%.0f%% of its rows; split over "
                 "%d ranks)", v->kept[at] * 100, v->holders[at]);
    if (avg)
        snprintf(part[1], sizeof part[1], ", avg %.0f", v->load_ema[at]);
    if (scrolled)
        snprintf(part[2], sizeof part[2], " [experts %d-%d of %d]",
                 g->first_expert, last, v->experts);
    int n = snprintf(line, sizeof line, "expert %d.%d on rank %d%s: %d "
                     "tokens%s%s", l, e, rank, part[0], load, part[1],
                     part[2]);
    if (n > width) {
        if (split)
            snprintf(part[0], sizeof part[0], " %.0f%%/%d",
                     v->kept[at] * 100, v->holders[at]);
        if (avg)
            snprintf(part[1], sizeof part[1], " avg %.0f", v->load_ema[at]);
        if (scrolled)
            snprintf(part[2], sizeof part[2], " [%d-%d/%d]",
                     g->first_expert, last, v->experts);
        n = snprintf(line, sizeof line, "%d.%d rank %d%s: %d tok%s%s", l, e,
                     rank, part[0], load, part[1], part[2]);
    }
    if (!g->stats_beside && n > 0 && n < (int)sizeof line) {
        char stats[64];
        layer_stats(v, l, stats, sizeof stats);
        if (n + 4 + (int)strlen(stats) + (l > 9) + (l > 99) <= width)
            snprintf(line + n, sizeof line - (size_t)n, "; L%d %s", l, stats);
    }
    draw_text(row, r->col, line, r->cols - 1);
}

/* The first index of a window of `shown` of `count` items that keeps
 * `cursor` in view, moving *first as little as it can. */
static int scroll_to(int *first, int cursor, int shown, int count)
{
    if (*first > cursor)
        *first = cursor;
    if (cursor >= *first + shown)
        *first = cursor - shown + 1;
    if (*first > count - shown)
        *first = count - shown;
    if (*first < 0)
        *first = 0;
    return *first;
}

/* The row of expert indices over the cells; where the experts shown are
 * not all of them, which ones ("0-37 of 64") after the label. */
static void draw_expert_header(const heatmap_geometry *g, int row,
                               const layout_rect *r, int layers)
{
    (void)layers;
    for (int i = 0; i < g->shown; i++) {
        char index[8];
        int e = g->first_expert + i;
        /* Three-digit indices every other cell, so they do not touch. */
        if (e >= 100 && i % 2)
            continue;
        snprintf(index, sizeof index, "%2d", e);
        mvaddstr(row, r->col + g->label + i * g->cell, index);
    }
    mvaddstr(row, r->col, "exp");
}

void draw_heatmap(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    int ema = v->have_load_ema;
    if (c->heat_summary)
        draw_title(r, "Expert load by layer: hottest and coldest expert:load "
                      "/ mean (v: cells)");
    else if (c->color)
        draw_title(r, ema ? "Expert load: 10 x avg tokens / layer mean"
                          : "Expert load: 10 x tokens / layer mean");
    else
        draw_title(r, ema ? "Expert load .:-=+*#%@ = avg tokens / mean"
                          : "Expert load .:-=+*#%@ = tokens / mean");
    if (!v->have_run || !v->have_step || v->layers == 0 || v->experts == 0)
        return;
    heatmap_geometry g = {.label = 6, .cell = 3};
    g.straggler = view_straggler(v, &g.share);
    g.shown = (r->cols - g.label - 1) / g.cell; /* a gap before the next */
    if (g.shown > v->experts)
        g.shown = v->experts;
    if (g.shown < 1)
        return;
    g.first_expert = scroll_to(&c->heat_first_expert, c->cursor_expert,
                               g.shown, v->experts);
    g.stats_col = r->col + g.label + g.shown * g.cell + 1;
    g.room = r->col + r->cols - g.stats_col - 1; /* a gap to the next */
    g.stats_beside = g.room >= 24;
    int row = r->row + 1, end = r->row + r->rows - 1; /* last: selection */
    /* Expert indices above the cells: always when the experts or layers
     * do not all fit, else when a row is left beside the layers and the
     * straggler's legend. */
    int scrolled = g.shown < v->experts || end - row < v->layers;
    int legend = v->straggler_count > 0;
    if (!c->heat_summary &&
        (scrolled ? end - row >= 2 : end - row >= v->layers + 1 + legend)) {
        draw_expert_header(&g, row, r, v->layers);
        row++;
    }
    int rows = end - row;
    if (rows < 1)
        rows = 1;
    int first_layer = scroll_to(&c->heat_first_layer, c->cursor_layer,
                                rows, v->layers);
    for (int l = first_layer; l < v->layers && row < end; l++, row++)
        if (c->heat_summary)
            draw_layer_summary(c, row, r->col, r->cols - 1, l);
        else
            draw_layer_row(c, &g, row, r->col, l);
    /* The legend, on the row above the selection when the layers left it
     * free. */
    if (row < end && v->straggler_count > 0)
        draw_legend(c, &g, end - 1, r);
    draw_selection(c, &g, end, r);
}
