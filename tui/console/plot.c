/* Text line plots. Nothing is allocated: each cell asks for the values of
 * the dot columns under it, which costs O(rows * points) per plot, small
 * next to a terminal redraw. */
#include "tui/console/plot.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define UTF8_AXIS_LINE "\xe2\x94\x82" /* U+2502 BOX DRAWINGS LIGHT VERTICAL */

/* The dot grid under the plot cells, dot (0, 0) at the bottom left. */
typedef struct plot_grid {
    int dot_cols, dot_rows;       /* the whole plot */
    int cell_cols, cell_rows;     /* dots per cell: 2x4 Braille, 1x1 ASCII */
    int points;                   /* max(count): what x spans */
} plot_grid;

/* Braille dot bits, [dot column][dot row from the cell's top]. */
static const unsigned char braille_bit[2][4] = {
    {0x01, 0x02, 0x04, 0x40},
    {0x08, 0x10, 0x20, 0x80},
};

static int series_y(const plot_series *s, long long i, double *y)
{
    if (i < 0 || i >= s->count || !isfinite(s->y[i]))
        return 0;
    *y = s->y[i];
    return 1;
}

/* round(i * (dot_cols-1) / (points-1)) for points <= dot_cols, points > 1. */
static long long point_column(const plot_grid *g, long long i)
{
    long long den = g->points - 1;
    return (2 * i * (g->dot_cols - 1) + den) / (2 * den);
}

/* The value dot column c shows, NAN for a gap. */
static double column_value(const plot_series *s, const plot_grid *g, int c)
{
    double y0, y1;
    if (s->count == 0)
        return NAN;
    if (g->points > g->dot_cols) {
        long long begin = (long long)c * g->points / g->dot_cols;
        long long end = (long long)(c + 1) * g->points / g->dot_cols;
        double mean = 0;
        int n = 0;
        for (long long i = begin; i < end; i++)
            if (series_y(s, i, &y0)) {
                n++; /* a running mean, in a form that cannot overflow */
                mean += y0 / n - mean / n;
            }
        return n ? mean : NAN;
    }
    if (g->points == 1)
        return c == 0 && series_y(s, 0, &y0) ? y0 : NAN;

    long long i = (long long)c * (g->points - 1) / (g->dot_cols - 1);
    while (i + 1 < g->points && point_column(g, i + 1) <= c)
        i++;
    long long x0 = point_column(g, i);
    if (x0 == c)
        return series_y(s, i, &y0) ? y0 : NAN;
    if (!series_y(s, i, &y0) || !series_y(s, i + 1, &y1))
        return NAN;
    double t = (double)(c - x0) / (double)(point_column(g, i + 1) - x0);
    return y0 * (1 - t) + y1 * t;
}

/* Where v falls in the range, 0 at min and 1 at max. */
static double range_unit(double v, plot_range r)
{
    if (!(r.max > r.min))
        return 0.5;
    double span = r.max - r.min;
    double t = isfinite(span) ? (v - r.min) / span
                              : (v * 0.5 - r.min * 0.5) /
                                    (r.max * 0.5 - r.min * 0.5);
    return t >= 0 ? (t <= 1 ? t : 1) : 0; /* NAN goes to 0 */
}

static double range_value(plot_range r, double t)
{
    return r.min * (1 - t) + r.max * t;
}

static int dot_row(double v, plot_range r, const plot_grid *g)
{
    return (int)floor(range_unit(v, r) * (g->dot_rows - 1) + 0.5);
}

/* The dot rows lo..hi that series s lights in dot column c: its own value
 * and the dots between it and its left neighbour's. 0 for a gap. */
static int column_span(const plot_series *s, const plot_grid *g,
                       plot_range r, int c, int *lo, int *hi)
{
    double v = column_value(s, g, c);
    if (isnan(v))
        return 0;
    int dot = dot_row(v, r, g);
    *lo = *hi = dot;
    double prev = c > 0 ? column_value(s, g, c - 1) : NAN;
    if (!isnan(prev)) {
        int prev_dot = dot_row(prev, r, g);
        if (prev_dot < dot - 1)
            *lo = prev_dot + 1;
        if (prev_dot > dot + 1)
            *hi = prev_dot - 1;
    }
    return 1;
}

/* Braille bits of the dots series s lights in cell (row, col); in ASCII
 * mode (one dot per cell) nonzero when it lights the cell. */
static unsigned cell_dots(const plot_series *s, const plot_grid *g,
                          plot_range r, int row, int col)
{
    int top = g->dot_rows - 1 - row * g->cell_rows;
    int bottom = top - g->cell_rows + 1;
    unsigned bits = 0;
    for (int dc = 0; dc < g->cell_cols; dc++) {
        int lo, hi;
        if (!column_span(s, g, r, col * g->cell_cols + dc, &lo, &hi))
            continue;
        for (int d = lo > bottom ? lo : bottom; d <= hi && d <= top; d++)
            bits |= braille_bit[dc][top - d];
    }
    return bits;
}

static plot_range series_range(const plot_series *series, int series_count,
                               const plot_grid *g)
{
    plot_range r = {.min = INFINITY, .max = -INFINITY, .valid = 0};
    for (int s = 0; s < series_count; s++)
        for (int c = 0; c < g->dot_cols; c++) {
            double v = column_value(&series[s], g, c);
            if (isnan(v))
                continue;
            r.min = v < r.min ? v : r.min;
            r.max = v > r.max ? v : r.max;
            r.valid = 1;
        }
    if (!r.valid)
        return (plot_range){0, 0, 0};
    if (r.min == r.max) {
        double v = r.min, d = fabs(v) * 0.1;
        if (d == 0)
            d = 1;
        if (isfinite(v - d) && isfinite(v + d)) {
            r.min = v - d;
            r.max = v + d;
        }
    }
    return r;
}

/* Writes exactly `width` characters: v right-aligned, or blanks. */
static char *put_label(char *p, int width, double v)
{
    char text[32];
    int n = -1;
    for (int digits = 3; digits >= 1; digits--) {
        n = snprintf(text, sizeof text, "%.*g", digits, v + 0.0); /* no -0 */
        if (n <= width)
            break;
    }
    if (n < 0 || n > width)
        n = 0;
    memset(p, ' ', (size_t)(width - n));
    memcpy(p + (width - n), text, (size_t)n);
    return p + width;
}

static char *put_axis(char *p, int row, int rows, int axis_cols, int utf8,
                      plot_range r, const plot_grid *g)
{
    int width = axis_cols - 1;
    int mid = (rows - 1) / 2;
    if (r.valid && row == 0) {
        p = put_label(p, width, r.max);
    } else if (r.valid && row == rows - 1) {
        p = put_label(p, width, r.min);
    } else if (r.valid && rows >= 3 && row == mid) {
        double centre = g->dot_rows - 1 - row * g->cell_rows -
                        (g->cell_rows - 1) / 2.0;
        p = put_label(p, width, range_value(r, centre / (g->dot_rows - 1)));
    } else {
        memset(p, ' ', (size_t)width);
        p += width;
    }
    if (utf8) {
        memcpy(p, UTF8_AXIS_LINE, 3);
        return p + 3;
    }
    *p = '|';
    return p + 1;
}

static char *put_cell(char *p, const plot_series *series, int series_count,
                      const plot_grid *g, plot_range r, int row, int col,
                      int utf8)
{
    unsigned lit[PLOT_MAX_SERIES] = {0, 0};
    for (int s = 0; r.valid && s < series_count; s++)
        lit[s] = cell_dots(&series[s], g, r, row, col);
    if (utf8) {
        unsigned bits = lit[0] | lit[1];
        if (!bits) {
            *p = ' ';
            return p + 1;
        }
        p[0] = (char)0xe2;
        p[1] = (char)(0xa0 | (bits >> 6));
        p[2] = (char)(0x80 | (bits & 0x3f));
        return p + 3;
    }
    *p = lit[0] && lit[1] ? '#' : lit[0] ? '*' : lit[1] ? '+' : ' ';
    return p + 1;
}

int plot_point_cell(int rows, int cols, int axis_cols, int points, int utf8,
                    plot_range r, int index, double y, int *row, int *col)
{
    if (!r.valid || rows <= 0 || cols <= axis_cols || points <= 0 ||
        index < 0 || index >= points || !isfinite(y))
        return -1;
    plot_grid g = {.cell_cols = utf8 ? 2 : 1, .cell_rows = utf8 ? 4 : 1,
                   .points = points};
    g.dot_cols = (cols - axis_cols) * g.cell_cols;
    g.dot_rows = rows * g.cell_rows;
    long long c = points > g.dot_cols ? (long long)index * g.dot_cols / points
                  : points == 1       ? 0
                                      : point_column(&g, index);
    *col = axis_cols + (int)(c / g.cell_cols);
    *row = rows - 1 - dot_row(y, r, &g) / g.cell_rows;
    return 0;
}

plot_range plot_render(char *const *lines, int rows, int cols, int axis_cols,
                       const plot_series *series, int series_count, int utf8)
{
    plot_series used[PLOT_MAX_SERIES];
    plot_grid g = {0};

    if (rows <= 0 || cols <= 0)
        return (plot_range){0, 0, 0};
    axis_cols = axis_cols < 0 ? 0 : axis_cols > cols ? cols : axis_cols;
    series_count = series_count < 0 ? 0
                   : series_count > PLOT_MAX_SERIES ? PLOT_MAX_SERIES
                                                    : series_count;
    for (int s = 0; s < series_count; s++) {
        used[s] = series[s];
        if (!used[s].y || used[s].count < 0)
            used[s].count = 0;
        if (used[s].count > g.points)
            g.points = used[s].count;
    }

    g.cell_cols = utf8 ? 2 : 1;
    g.cell_rows = utf8 ? 4 : 1;
    g.dot_cols = (cols - axis_cols) * g.cell_cols;
    g.dot_rows = rows * g.cell_rows;
    plot_range r = series_range(used, series_count, &g);

    for (int row = 0; row < rows; row++) {
        char *p = lines[row];
        if (axis_cols > 0)
            p = put_axis(p, row, rows, axis_cols, utf8, r, &g);
        for (int col = 0; col < cols - axis_cols; col++)
            p = put_cell(p, used, series_count, &g, r, row, col, utf8);
        *p = '\0';
    }
    return r;
}
