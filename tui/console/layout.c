/* Console layout. The screen is cut into horizontal bands:
 *
 *   row 0             HEADER                              full width
 *   top band          LOSS (60% of cols) | SPEED (rest)    30% of body, >= 6
 *   middle band       HEATMAP            | DEVICES (rest)  the rows they want
 *   balance band      BALANCE                             3 rows, 2+ ranks
 *   bottom band       EVENTS                              the rest, 4 to
 *                                                         max(12, 25%)
 *   last row          FOOTER                              full width
 *
 * The body is rows 1 .. rows-2. The middle band wants a title, a row per
 * layer, a legend and the selected expert on the heatmap's side, and a
 * title and two rows per rank on the devices' side; it gets that unless
 * EVENTS would be left fewer than EVENTS_MIN_ROWS. Everything a bigger
 * terminal adds beyond that goes to the top band (30% or more) and
 * EVENTS, which stops at 12 rows or 25% of the body: the rest grows the
 * plots. The
 * balance band (a title, the latest plan, its measured result) is shown
 * only for jobs of two ranks or more: one rank has nothing to place.
 *
 * Sizes at 80x24 (body 22 rows): top band 6 rows, LOSS 48 cols, SPEED 32;
 * the middle band 3..9 rows; EVENTS 4..13 rows; the heatmap 34..52 cols and
 * DEVICES 28..46 cols. These minimums are what a 24-row, 80-column terminal
 * affords, so every panel is shown from 80x24 up. */
#include "tui/console/layout.h"

#include <string.h>

enum {
    LAYOUT_MIN_ROWS = 24,
    LAYOUT_MIN_COLS = 80,
    TOP_PERCENT = 30,          /* of the body rows */
    TOP_MIN_ROWS = 6,          /* a box, a title and a 4-line plot */
    LOSS_PERCENT = 60,         /* of the columns */
    EVENTS_MIN_ROWS = 4,       /* a title and three log lines */
    BALANCE_ROWS = 3,          /* a title, the plan, its result */
    BORDER_COLS = 2,           /* a column kept clear at each side */
    HEATMAP_EXTRA_ROWS = 4,    /* title, expert indices, legend, the
                                  selected expert */
    EVENTS_MAX_PERCENT = 25,   /* of the body, or EVENTS_MAX_ROWS if more:
                                  the rest goes to the plots */
    EVENTS_MAX_ROWS = 12,
    HEATMAP_LABEL_COLS = 6,    /* "L12  " */
    HEATMAP_CELL_COLS = 3,     /* one expert */
    HEATMAP_STATS_COLS = 26,   /* per-layer max/min load, imbalance */
    HEATMAP_MAX_PERCENT = 65,  /* of the columns, so DEVICES keeps >= 28 */
};

static int min_int(int a, int b) { return a < b ? a : b; }
static int max_int(int a, int b) { return a > b ? a : b; }

static layout_rect rect(int row, int col, int rows, int cols)
{
    layout_rect r = {.row = row, .col = col, .rows = rows, .cols = cols};
    return r;
}

/* Clamped so that the arithmetic below cannot overflow on absurd options. */
static int wanted(int n, int limit)
{
    return n < 0 ? 0 : min_int(n, limit);
}

void layout_compute(layout *out, int rows, int cols,
                    const layout_options *opt)
{
    memset(out, 0, sizeof *out);
    out->too_small = rows < LAYOUT_MIN_ROWS || cols < LAYOUT_MIN_COLS;
    if (rows <= 0 || cols <= 0)
        return;

    /* With a single row, the footer keeps it: it holds the command line
     * and the keys, which are what make the console usable at all. */
    if (rows >= 2)
        out->panel[LAYOUT_HEADER] = rect(0, 0, 1, cols);
    out->panel[LAYOUT_FOOTER] = rect(rows - 1, 0, 1, cols);
    if (out->too_small)
        return;

    int layers = wanted(opt ? opt->layers : 0, rows);
    int experts = wanted(opt ? opt->experts : 0, cols);
    int ranks = wanted(opt ? opt->ranks : 0, rows);

    int body = rows - 2;
    int top = max_int(TOP_MIN_ROWS, body * TOP_PERCENT / 100);
    int balance = ranks >= 2 ? BALANCE_ROWS : 0;
    int middle = min_int(max_int(layers + HEATMAP_EXTRA_ROWS, 1 + 2 * ranks),
                         body - top - balance - EVENTS_MIN_ROWS);
    int events = body - top - middle - balance;
    /* A tall terminal grows the plots, not an empty log. */
    int events_cap = max_int(EVENTS_MAX_ROWS, body * EVENTS_MAX_PERCENT / 100);
    if (events > events_cap) {
        top += events - events_cap;
        events = events_cap;
    }

    int loss_cols = cols * LOSS_PERCENT / 100;
    int heatmap_want = BORDER_COLS + HEATMAP_LABEL_COLS +
                       experts * HEATMAP_CELL_COLS + HEATMAP_STATS_COLS;
    int heatmap_cols = min_int(heatmap_want, cols * HEATMAP_MAX_PERCENT / 100);

    int row = 1;
    out->panel[LAYOUT_LOSS] = rect(row, 0, top, loss_cols);
    out->panel[LAYOUT_SPEED] = rect(row, loss_cols, top, cols - loss_cols);
    row += top;
    out->panel[LAYOUT_HEATMAP] = rect(row, 0, middle, heatmap_cols);
    out->panel[LAYOUT_DEVICES] =
        rect(row, heatmap_cols, middle, cols - heatmap_cols);
    row += middle;
    if (balance > 0)
        out->panel[LAYOUT_BALANCE] = rect(row, 0, balance, cols);
    row += balance;
    out->panel[LAYOUT_EVENTS] = rect(row, 0, events, cols);
}
