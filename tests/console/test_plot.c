/* Text plots: exact output for known data (a rising line, a constant, gaps,
 * steep steps, means of many points, two series, the ASCII fallback and the
 * axis labels), then a sweep of sizes and awkward data checking that every
 * line is exactly `cols` cells and stays inside its buffer. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tui/console/plot.h"

#include "tests/expect.h"

#define MAX_ROWS 8
#define MAX_COLS 40
#define CANARY 8

static char buffer[MAX_ROWS][PLOT_LINE_BYTES(MAX_COLS) + CANARY];
static char *lines[MAX_ROWS];

static plot_range render(int rows, int cols, int axis_cols,
                         const plot_series *series, int series_count,
                         int utf8)
{
    memset(buffer, 0x7f, sizeof buffer);
    for (int r = 0; r < MAX_ROWS; r++)
        lines[r] = buffer[r];
    return plot_render(lines, rows, cols, axis_cols, series, series_count,
                       utf8);
}

static void expect_lines(const char *what, int rows, const char *const *want)
{
    for (int r = 0; r < rows; r++)
        EXPECT(strcmp(lines[r], want[r]) == 0,
               "%s: line %d is \"%s\", want \"%s\"", what, r, lines[r],
               want[r]);
}

static void expect_range(const char *what, plot_range got, double min,
                         double max)
{
    EXPECT(got.valid && got.min == min && got.max == max,
           "%s: range %d [%.17g, %.17g], want [%.17g, %.17g]", what,
           got.valid, got.min, got.max, min, max);
}

/* Decodes a line into code points; returns how many, -1 if malformed. */
static int decode(const char *s, unsigned *cell, int max_cells)
{
    int n = 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        if (n == max_cells)
            return -1;
        if (*p < 0x80) {
            cell[n++] = *p++;
        } else if ((p[0] & 0xf0) == 0xe0 && (p[1] & 0xc0) == 0x80 &&
                   (p[2] & 0xc0) == 0x80) {
            cell[n++] = (p[0] & 0x0fu) << 12 | (p[1] & 0x3fu) << 6 |
                        (p[2] & 0x3fu);
            p += 3;
        } else {
            return -1;
        }
    }
    return n;
}

static void test_rising_braille(void)
{
    double y[12];
    for (int i = 0; i < 12; i++)
        y[i] = i;
    plot_series s = {y, 12};
    /* 6 plot cells = 12 dot columns, 3 rows = 12 dot rows: dot i at (i, i). */
    plot_range r = render(3, 10, 4, &s, 1, 1);
    const char *want[] = {
        " 11│    ⡠⠊",
        "5.5│  ⡠⠊  ",
        "  0│⡠⠊    ",
    };
    expect_lines("rising braille", 3, want);
    expect_range("rising braille", r, 0, 11);
}

static void test_rising_ascii(void)
{
    double y[] = {10, 20, 30, 40, 50, 60};
    plot_series s = {y, 6};
    plot_range r = render(3, 6, 0, &s, 1, 0);
    const char *want[] = {"    **", "  **  ", "**    "};
    expect_lines("rising ascii", 3, want);
    expect_range("rising ascii", r, 10, 60);
}

/* Any size from 2 dot columns up, any number of points: the first dot is
 * the bottom-left one and the last the top-right one. */
static void test_rising_corners(void)
{
    double y[50];
    unsigned cell[MAX_COLS + 1];
    for (int i = 0; i < 50; i++)
        y[i] = 0.25 * i - 3;
    for (int utf8 = 0; utf8 <= 1; utf8++)
        for (int rows = 1; rows <= 6; rows++)
            for (int cols = 1; cols <= 12; cols++)
                for (int count = 2; count <= 50; count++) {
                    plot_series s = {y, count};
                    if (!utf8 && cols == 1)
                        continue; /* one dot column: the mean of them all */
                    render(rows, cols, 0, &s, 1, utf8);
                    int n = decode(lines[rows - 1], cell, MAX_COLS);
                    unsigned first = n > 0 ? cell[0] : 0;
                    n = decode(lines[0], cell, MAX_COLS);
                    unsigned last = n > 0 ? cell[n - 1] : 0;
                    if (utf8)
                        EXPECT(first >= 0x2800 && (first & 0x40) &&
                                   last >= 0x2800 && (last & 0x08),
                               "rising %dx%d, %d points: first U+%04X, "
                               "last U+%04X", rows, cols, count, first, last);
                    else
                        EXPECT(first == '*' && last == '*',
                               "rising ascii %dx%d, %d points: '%c' '%c'",
                               rows, cols, count, first, last);
                }
}

static void test_constant(void)
{
    double y[] = {5, 5, 5, 5};
    plot_series s = {y, 4};
    plot_range r = render(3, 7, 5, &s, 1, 1);
    const char *want[] = {
        " 5.5│  ",
        "   5│⠒⠒",
        " 4.5│  ",
    };
    expect_lines("constant", 3, want);
    expect_range("constant", r, 4.5, 5.5);

    double zero[] = {0, 0, 0};
    s = (plot_series){zero, 3};
    r = render(3, 5, 2, &s, 1, 0);
    /* "-1" does not fit one cell: the bottom label is blank, not "-". */
    const char *want_zero[] = {"1|   ", "0|***", " |   "};
    expect_lines("constant zero", 3, want_zero);
    expect_range("constant zero", r, -1, 1);
}

static void test_gaps(void)
{
    double y[] = {1, NAN, 1, 2, NAN};
    plot_series s = {y, 5};
    plot_range r = render(2, 5, 0, &s, 1, 0);
    const char *want[] = {"   * ", "* *  "};
    expect_lines("gaps", 2, want);
    expect_range("gaps", r, 1, 2);

    /* Interpolated columns next to a gap are gaps too; +-INF is a gap. */
    double sparse[] = {0, NAN, 1, INFINITY, -INFINITY};
    s = (plot_series){sparse, 3};
    r = render(1, 3, 0, &s, 1, 1);
    const char *want_sparse[] = {"⡀ ⠈"};
    expect_lines("sparse", 1, want_sparse);
    expect_range("sparse", r, 0, 1);

    s = (plot_series){sparse + 3, 2};
    r = render(2, 4, 2, &s, 1, 1);
    const char *want_none[] = {" │  ", " │  "};
    expect_lines("all gaps", 2, want_none);
    EXPECT(!r.valid, "all gaps: range is valid");
}

static void test_interpolation_and_steps(void)
{
    double y[] = {0, 3};
    plot_series s = {y, 2};
    render(4, 4, 0, &s, 1, 0);
    const char *want[] = {"   *", "  * ", " *  ", "*   "};
    expect_lines("interpolated", 4, want);

    /* A jump of 7 dots fills the column between the two values. */
    double jump[] = {0, 7};
    s = (plot_series){jump, 2};
    render(2, 1, 0, &s, 1, 1);
    const char *want_jump[] = {"⢸", "⡸"};
    expect_lines("jump", 2, want_jump);
}

static void test_means(void)
{
    double y[] = {0, 2, 4, 6};
    plot_series s = {y, 4};
    plot_range r = render(3, 2, 0, &s, 1, 0);
    const char *want[] = {" *", " *", "* "};
    expect_lines("means", 3, want);
    expect_range("means", r, 1, 5);

    /* 5 points over 2 columns: [0, 2) and [2, 5); gaps are left out. */
    double odd[] = {1, 3, 5, NAN, 9};
    s = (plot_series){odd, 5};
    r = render(1, 2, 0, &s, 1, 0);
    expect_range("uneven means", r, 2, 7);
}

static void test_two_series(void)
{
    double rising[] = {0, 1, 2, 3}, falling[] = {3, 2, 1, 0};
    plot_series s[] = {{rising, 4}, {falling, 4}};
    plot_range r = render(3, 4, 0, s, 2, 0);
    const char *want[] = {"+  *", " ## ", "*  +"};
    expect_lines("two series", 3, want);
    expect_range("two series", r, 0, 3);

    /* The longer series sets the x span; the shorter fills the left. */
    double ones[] = {1, 1, 1, 1}, zeros[] = {0, 0};
    plot_series t[] = {{ones, 4}, {zeros, 2}};
    r = render(2, 4, 0, t, 2, 0);
    const char *want_lengths[] = {"****", "++  "};
    expect_lines("lengths", 2, want_lengths);
    expect_range("lengths", r, 0, 1);

    /* In Braille the series share cells: their dots are merged. */
    r = render(1, 2, 0, s, 2, 1);
    /* 4 dot rows, 4 dot columns: rising 0,1,2,3 and falling 3,2,1,0. */
    const char *want_braille[] = {"⡱⢎"};
    expect_lines("two series braille", 1, want_braille);

    /* A third series is ignored. */
    plot_series three[] = {{rising, 4}, {falling, 4}, {ones, 4}};
    r = render(3, 4, 0, three, 3, 0);
    expect_lines("three series", 3, want);
}

static void test_labels(void)
{
    double y[] = {-1.5, 12345};
    plot_series s = {y, 2};
    render(2, 11, 9, &s, 1, 0);
    const char *want_wide[] = {"1.23e+04| *", "    -1.5|* "};
    expect_lines("wide labels", 2, want_wide);

    render(2, 8, 6, &s, 1, 0);
    const char *want_narrow[] = {"1e+04| *", " -1.5|* "};
    expect_lines("narrow labels", 2, want_narrow);

    render(2, 6, 4, &s, 1, 0);
    /* Nothing of 12345 fits 3 cells; "-1.5" does not, "-2" (%.1g) does. */
    const char *want_tiny[] = {"   | *", " -2|* "};
    expect_lines("tiny labels", 2, want_tiny);

    render(2, 3, 1, &s, 1, 1);
    /* 4 dot columns: 0, then 1/3 and 2/3 of the way, then the top; each
     * column fills the dots up from its left neighbour. */
    const char *want_bare[] = {"│ ⡜", "│⡰⠁"};
    expect_lines("axis without labels", 2, want_bare);

    /* With an even row count the middle label is the value at the centre
     * of its row, not a midpoint no row shows: 16 dot rows over 0..15,
     * row 1 covers dots 11..8, centre 9.5. */
    double line[16];
    for (int i = 0; i < 16; i++)
        line[i] = i;
    s = (plot_series){line, 16};
    render(4, 12, 4, &s, 1, 1);
    EXPECT(strncmp(lines[0], " 15│", 6) == 0 &&
               strncmp(lines[1], "9.5│", 6) == 0 &&
               strncmp(lines[2], "   │", 6) == 0 &&
               strncmp(lines[3], "  0│", 6) == 0,
           "even rows labels: \"%s\" \"%s\" \"%s\" \"%s\"", lines[0],
           lines[1], lines[2], lines[3]);
    render(4, 20, 4, &s, 1, 0); /* ASCII: 4 dot rows over 0..15 */
    EXPECT(strncmp(lines[1], " 10|", 4) == 0, "ascii middle label \"%s\"",
           lines[1]);
}

static void test_degenerate_arguments(void)
{
    double y[] = {1, 2};
    plot_series s = {y, 2};
    plot_range r = render(0, 10, 2, &s, 1, 1);
    EXPECT(!r.valid && (unsigned char)buffer[0][0] == 0x7f,
           "0 rows: wrote something");
    r = render(3, 0, 2, &s, 1, 1);
    EXPECT(!r.valid && (unsigned char)buffer[0][0] == 0x7f,
           "0 cols: wrote something");

    r = render(1, 3, 5, &s, 1, 0); /* axis wider than the line */
    const char *want_axis[] = {"  |"};
    expect_lines("all axis", 1, want_axis);
    EXPECT(!r.valid, "no plot columns, yet a range");

    r = render(1, 3, 0, &s, 0, 0);
    const char *want_blank[] = {"   "};
    expect_lines("no series", 1, want_blank);
    EXPECT(!r.valid, "no series, yet a range");

    plot_series null_series = {NULL, 5};
    r = render(1, 3, 0, &null_series, 1, 0);
    expect_lines("NULL y", 1, want_blank);
    EXPECT(!r.valid, "NULL y, yet a range");

    r = render(1, 3, -4, &s, -1, 0);
    expect_lines("negative counts", 1, want_blank);

    /* One point: at the left, in the middle. */
    s.count = 1;
    r = render(3, 3, 0, &s, 1, 0);
    const char *want_one[] = {"   ", "*  ", "   "};
    expect_lines("one point", 3, want_one);
    expect_range("one point", r, 0.9, 1.1);
}

static unsigned next_random(unsigned *state)
{
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

/* Every line is exactly cols cells of the allowed kinds and stays inside
 * PLOT_LINE_BYTES(cols), whatever the data. */
static void test_sweep(void)
{
    static const double odd[] = {NAN, INFINITY, -INFINITY, 1e308, -1e308,
                                 5e-324, -0.0, 1.7976931348623157e308};
    double y[2][60];
    unsigned cell[MAX_COLS + 1], state = 12345;
    int checked = 0;
    for (int trial = 0; trial < 4000; trial++) {
        int rows = 1 + (int)(next_random(&state) % MAX_ROWS);
        int cols = 1 + (int)(next_random(&state) % MAX_COLS);
        int axis_cols = (int)(next_random(&state) % (unsigned)(cols + 1));
        int utf8 = (int)(next_random(&state) & 1);
        int series_count = (int)(next_random(&state) % 3);
        plot_series s[2];
        for (int k = 0; k < 2; k++) {
            s[k] = (plot_series){y[k], (int)(next_random(&state) % 61)};
            double scale = pow(10, (int)(next_random(&state) % 40) - 20);
            for (int i = 0; i < 60; i++) {
                unsigned u = next_random(&state);
                y[k][i] = u % 7 == 0 ? odd[u / 7 % 8]
                                     : scale * ((double)(u % 2001) - 1000);
            }
        }
        plot_range r = render(rows, cols, axis_cols, s, series_count, utf8);
        EXPECT(!r.valid || (isfinite(r.min) && isfinite(r.max) &&
                            r.min <= r.max),
               "sweep %d: range [%g, %g]", trial, r.min, r.max);
        for (int row = 0; row < rows; row++) {
            const char *end = memchr(lines[row], '\0', sizeof buffer[row]);
            size_t len = end ? (size_t)(end - lines[row]) : sizeof buffer[row];
            EXPECT(len < PLOT_LINE_BYTES(cols), "sweep %d: line %d is %zu "
                   "bytes for %d cols", trial, row, len, cols);
            for (size_t b = PLOT_LINE_BYTES(cols); b < sizeof buffer[row]; b++)
                EXPECT((unsigned char)buffer[row][b] == 0x7f,
                       "sweep %d: line %d wrote byte %zu", trial, row, b);
            int n = decode(lines[row], cell, MAX_COLS);
            EXPECT(n == cols, "sweep %d: %dx%d axis %d utf8 %d: line %d has "
                   "%d cells", trial, rows, cols, axis_cols, utf8, row, n);
            for (int c = axis_cols; c < n; c++)
                EXPECT(utf8 ? cell[c] == ' ' ||
                                  (cell[c] > 0x2800 && cell[c] <= 0x28ff)
                            : strchr(" *+#", (int)cell[c]) != NULL,
                       "sweep %d: cell %d is U+%04X", trial, c, cell[c]);
            if (axis_cols > 0 && n == cols)
                EXPECT(cell[axis_cols - 1] == (utf8 ? 0x2502u : '|'),
                       "sweep %d: no axis line", trial);
            checked++;
        }
        if (failures > 50)
            break;
    }
    printf("%d swept lines\n", checked);
}

int main(void)
{
    test_rising_braille();
    test_rising_ascii();
    test_rising_corners();
    test_constant();
    test_gaps();
    test_interpolation_and_steps();
    test_means();
    test_two_series();
    test_labels();
    test_degenerate_arguments();
    test_sweep();
    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
