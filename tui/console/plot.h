/* Text line plots (loss, throughput): a pure function from numbers to lines
 * of text, so it is unit-tested without a terminal. */
#ifndef MOECTL_TUI_PLOT_H
#define MOECTL_TUI_PLOT_H

#include <stddef.h>

#define PLOT_MAX_SERIES 2

/* Bytes one line of `cols` cells needs, NUL included: in UTF-8 mode a cell
 * may take 3 bytes (a Braille pattern or the axis line). */
#define PLOT_LINE_BYTES(cols) (3 * (size_t)(cols) + 1)

typedef struct plot_series {
    const double *y;  /* y[i] is plotted at x = i; NAN or +-INF is a gap */
    int count;
} plot_series;

typedef struct plot_range {
    double min, max;  /* the values of the bottom and the top dot row */
    int valid;        /* 0 when there was no finite point to plot */
} plot_range;

/* The cell (row from the top, column) where plot_render put point `index`
 * of a series of `points` with value y, for a plot of the same shape and
 * range: 0, or -1 when it is not on the plot. Marks points over a plot. */
int plot_point_cell(int rows, int cols, int axis_cols, int points, int utf8,
                    plot_range r, int index, double y, int *row, int *col);

/* Renders up to PLOT_MAX_SERIES series into `rows` lines of exactly `cols`
 * cells each; lines[r] must hold PLOT_LINE_BYTES(cols) bytes and receives a
 * NUL-terminated string (blank cells are spaces, so a line overwrites
 * whatever was there).
 *
 * The first axis_cols cells of each line are the axis: a label right-aligned
 * in axis_cols - 1 cells, then '|' (U+2502 in UTF-8). The top row is
 * labelled with the range's max, the bottom row with its min and, from 3
 * rows up, row (rows-1)/2 with the value at its centre, which is the exact
 * midpoint when rows is odd. Labels are "%.3g", with fewer digits if that
 * does not fit, and blank if nothing fits.
 *
 * The other cells are the plot. With utf8, each cell is a Braille pattern of
 * 2x4 dots (U+2800..U+28FF, the union of both series); otherwise each cell
 * is one dot: '*' for series 0, '+' for series 1, '#' for both.
 *
 * Series share one y range: the min and max of what is plotted, widened by
 * 10% each way when they are equal, so a constant is a flat line in the
 * middle. The x axis spans max(count) points over the plot's dot columns:
 * with fewer points than columns, point i sits at dot column
 * round(i * (columns-1) / (points-1)) and the columns between two finite
 * points are interpolated linearly; with more, dot column c shows the mean
 * of the finite points in [c*points/columns, (c+1)*points/columns). A column
 * also fills the dots between its value and its left neighbour's, so steep
 * changes read as a line. A gap breaks the line.
 *
 * Returns the y range used; nothing but the axis line is drawn when it is
 * not valid. Out-of-range arguments are clamped: axis_cols to [0, cols],
 * series_count to [0, PLOT_MAX_SERIES]; rows or cols <= 0 writes nothing. */
plot_range plot_render(char *const *lines, int rows, int cols, int axis_cols,
                       const plot_series *series, int series_count, int utf8);

#endif
