/* Console layout: the exact sizes at 80x24, and invariants over every size
 * from 1x1 to 120x260 (and a sample up to 300x1000) with several options:
 * panels stay on screen, never overlap, tile the screen from 80x24 up (the
 * balance band only for 2+ ranks), and grow with the terminal. */
#include <stdio.h>
#include <string.h>

#include "tui/console/layout.h"

#include "tests/expect.h"

static const char *const panel_name[LAYOUT_PANEL_COUNT] = {
    "header", "loss", "speed", "heatmap", "devices", "balance", "events",
    "footer",
};

static const layout_options options[] = {
    {.layers = 2, .experts = 4, .ranks = 2},
    {.layers = 4, .experts = 16, .ranks = 4},
    {.layers = 0, .experts = 0, .ranks = 0},
    {.layers = 1, .experts = 1, .ranks = 1},
    {.layers = 24, .experts = 64, .ranks = 8},
    {.layers = 2, .experts = 8, .ranks = 16},
    {.layers = 1000, .experts = 1000, .ranks = 1000},
    {.layers = 0, .experts = 1000, .ranks = 0},
    {.layers = 1000, .experts = 0, .ranks = 3},
    {.layers = -5, .experts = -7, .ranks = -1},  /* nonsense: treated as 0 */
};
#define OPTION_COUNT ((int)(sizeof options / sizeof options[0]))

static int overlap(layout_rect a, layout_rect b)
{
    return a.row < b.row + b.rows && b.row < a.row + a.rows &&
           a.col < b.col + b.cols && b.col < a.col + a.cols;
}

static int visible(layout_rect r) { return r.rows > 0; }

static int max_int(int a, int b) { return a > b ? a : b; }

/* The invariants of one layout; returns the failures it found. */
static int check(int rows, int cols, const layout_options *opt)
{
    int before = failures;
    layout l;
    memset(&l, 0x5a, sizeof l);
    layout_compute(&l, rows, cols, opt);
    const layout_rect *p = l.panel;
    char where[96];
    snprintf(where, sizeof where, "%dx%d opt %d/%d/%d", rows, cols,
             opt ? opt->layers : 0, opt ? opt->experts : 0,
             opt ? opt->ranks : 0);

    int small = rows < 24 || cols < 80;
    EXPECT(l.too_small == small, "%s: too_small %d", where, l.too_small);
    if (rows <= 0 || cols <= 0) {
        for (int i = 0; i < LAYOUT_PANEL_COUNT; i++)
            EXPECT(p[i].row == 0 && p[i].col == 0 && p[i].rows == 0 &&
                       p[i].cols == 0,
                   "%s: %s shown on no screen", where, panel_name[i]);
        return failures - before;
    }

    long area = 0;
    for (int i = 0; i < LAYOUT_PANEL_COUNT; i++) {
        layout_rect r = p[i];
        EXPECT(r.rows >= 0 && r.cols >= 0, "%s: %s size %dx%d", where,
               panel_name[i], r.rows, r.cols);
        if (!visible(r)) {
            EXPECT(r.row == 0 && r.col == 0 && r.cols == 0,
                   "%s: hidden %s at %d,%d cols %d", where, panel_name[i],
                   r.row, r.col, r.cols);
            continue;
        }
        EXPECT(r.cols > 0, "%s: %s has rows but no cols", where,
               panel_name[i]);
        EXPECT(r.row >= 0 && r.col >= 0 && r.row + r.rows <= rows &&
                   r.col + r.cols <= cols,
               "%s: %s at %d,%d size %dx%d is off screen", where,
               panel_name[i], r.row, r.col, r.rows, r.cols);
        area += (long)r.rows * r.cols;
        for (int j = 0; j < i; j++)
            EXPECT(!visible(p[j]) || !overlap(r, p[j]), "%s: %s overlaps %s",
                   where, panel_name[i], panel_name[j]);
    }

    layout_rect header = p[LAYOUT_HEADER], footer = p[LAYOUT_FOOTER];
    if (rows >= 2)
        EXPECT(header.row == 0 && header.col == 0 && header.rows == 1 &&
                   header.cols == cols,
               "%s: header at %d,%d size %dx%d", where, header.row,
               header.col, header.rows, header.cols);
    else
        EXPECT(!visible(header), "%s: header shown on %d row(s)", where,
               rows);
    EXPECT(footer.row == rows - 1 && footer.col == 0 && footer.rows == 1 &&
               footer.cols == cols,
           "%s: footer at %d,%d size %dx%d", where, footer.row, footer.col,
           footer.rows, footer.cols);

    if (small) {
        for (int i = LAYOUT_LOSS; i <= LAYOUT_EVENTS; i++)
            EXPECT(!visible(p[i]), "%s: too small, but %s has %d rows", where,
                   panel_name[i], p[i].rows);
        return failures - before;
    }

    int ranks = opt ? max_int(opt->ranks, 0) : 0;
    for (int i = 0; i < LAYOUT_PANEL_COUNT; i++)
        if (i != LAYOUT_BALANCE)
            EXPECT(p[i].rows > 0 && p[i].cols > 0, "%s: %s is empty", where,
                   panel_name[i]);
    EXPECT(area == (long)rows * cols, "%s: panels cover %ld of %ld cells",
           where, area, (long)rows * cols);

    layout_rect loss = p[LAYOUT_LOSS], speed = p[LAYOUT_SPEED];
    layout_rect heatmap = p[LAYOUT_HEATMAP], devices = p[LAYOUT_DEVICES];
    layout_rect balance = p[LAYOUT_BALANCE], events = p[LAYOUT_EVENTS];
    int body = rows - 2;

    /* Bands, top to bottom; the side panels share their band's rows. */
    EXPECT(loss.row == 1 && speed.row == 1 && loss.rows == speed.rows &&
               loss.col == 0 && speed.col == loss.cols &&
               speed.cols == cols - loss.cols,
           "%s: top band loss %d,%d %dx%d speed %d,%d %dx%d", where,
           loss.row, loss.col, loss.rows, loss.cols, speed.row, speed.col,
           speed.rows, speed.cols);
    EXPECT(heatmap.row == 1 + loss.rows && devices.row == heatmap.row &&
               devices.rows == heatmap.rows && heatmap.col == 0 &&
               devices.col == heatmap.cols,
           "%s: middle band", where);
    /* The balance band: three rows under the middle band for 2+ ranks. */
    if (ranks >= 2)
        EXPECT(balance.row == heatmap.row + heatmap.rows &&
                   balance.col == 0 && balance.rows == 3 &&
                   balance.cols == cols,
               "%s: balance at %d,%d %dx%d", where, balance.row,
               balance.col, balance.rows, balance.cols);
    else
        EXPECT(!visible(balance), "%s: balance shown for %d rank(s)", where,
               ranks);
    EXPECT(events.row == heatmap.row + heatmap.rows + balance.rows &&
               events.col == 0 && events.cols == cols &&
               events.row + events.rows == rows - 1,
           "%s: events at %d,%d %dx%d", where, events.row, events.col,
           events.rows, events.cols);

    /* Top band: about 30% of the body, at least 6 rows, and what the
     * events leave past max(12 rows, 25%); loss about 60%. */
    int events_cap = max_int(12, body / 4);
    EXPECT(loss.rows >= 6 && loss.rows >= body * 3 / 10 &&
               (loss.rows <= max_int(6, body * 3 / 10 + 1) ||
                events.rows == events_cap),
           "%s: top band %d of %d body rows", where, loss.rows, body);
    EXPECT(events.rows <= events_cap, "%s: events %d rows, more than %d",
           where, events.rows, events_cap);
    EXPECT(loss.cols * 100 >= cols * 59 && loss.cols * 100 <= cols * 61,
           "%s: loss %d of %d cols", where, loss.cols, cols);

    /* Middle band: the rows it wants (the heatmap a title, the layers, a
     * legend and the selected expert; the devices a title and two rows a
     * rank), unless events would get fewer than 4. The heatmap also has a
     * row of expert indices. */
    int layers = opt ? max_int(opt->layers, 0) : 0;
    int want = max_int(layers + 4, 1 + 2 * ranks);
    EXPECT(events.rows >= 4, "%s: events %d rows", where, events.rows);
    EXPECT(heatmap.rows == want || (heatmap.rows < want && events.rows == 4),
           "%s: middle band %d rows, wants %d, events %d", where,
           heatmap.rows, want, events.rows);

    /* Heatmap: cells, label, stats and border when they fit in 65%; cells
     * and label at least whenever those fit; never more than 65%. */
    int experts = opt ? max_int(opt->experts, 0) : 0;
    int cap = cols * 65 / 100;
    int cells = 2 + 6 + 3 * experts;
    EXPECT(heatmap.cols <= cap, "%s: heatmap %d cols, more than 65%%", where,
           heatmap.cols);
    if (cells + 26 <= cap)
        EXPECT(heatmap.cols == cells + 26, "%s: heatmap %d cols, wants %d",
               where, heatmap.cols, cells + 26);
    else
        EXPECT(heatmap.cols == cap, "%s: heatmap %d cols, could have %d",
               where, heatmap.cols, cap);
    if (cells <= cap)
        EXPECT(heatmap.cols >= cells, "%s: heatmap %d cols, %d experts",
               where, heatmap.cols, experts);
    EXPECT(devices.cols >= 28, "%s: devices %d cols", where, devices.cols);
    return failures - before;
}

/* A bigger terminal never shrinks loss or events. */
static void check_growth(const layout_options *opt)
{
    for (int cols = 80; cols <= 260; cols += 20) {
        layout prev, next;
        layout_compute(&prev, 24, cols, opt);
        for (int rows = 25; rows <= 120; rows++) {
            layout_compute(&next, rows, cols, opt);
            EXPECT(next.panel[LAYOUT_LOSS].rows >=
                           prev.panel[LAYOUT_LOSS].rows &&
                       next.panel[LAYOUT_EVENTS].rows >=
                           prev.panel[LAYOUT_EVENTS].rows,
                   "%dx%d: loss or events shrank growing from %d rows", rows,
                   cols, rows - 1);
            prev = next;
        }
    }
    for (int rows = 24; rows <= 120; rows += 8) {
        layout prev, next;
        layout_compute(&prev, rows, 80, opt);
        for (int cols = 81; cols <= 260; cols++) {
            layout_compute(&next, rows, cols, opt);
            EXPECT(next.panel[LAYOUT_LOSS].cols >=
                           prev.panel[LAYOUT_LOSS].cols &&
                       next.panel[LAYOUT_EVENTS].cols >
                           prev.panel[LAYOUT_EVENTS].cols,
                   "%dx%d: loss or events shrank growing from %d cols", rows,
                   cols, cols - 1);
            prev = next;
        }
    }
}

static void expect_rect(const layout *l, layout_panel panel, int row,
                        int col, int rows, int cols, const char *where)
{
    layout_rect r = l->panel[panel];
    EXPECT(r.row == row && r.col == col && r.rows == rows && r.cols == cols,
           "%s: %s at %d,%d size %dx%d, want %d,%d %dx%d", where,
           panel_name[panel], r.row, r.col, r.rows, r.cols, row, col, rows,
           cols);
}

/* The documented sizes at 80x24. */
static void check_80x24(void)
{
    layout l;
    layout_compute(&l, 24, 80, &options[0]); /* 2 layers, 4 experts, 2 ranks */
    EXPECT(!l.too_small, "80x24 is too small");
    expect_rect(&l, LAYOUT_HEADER, 0, 0, 1, 80, "80x24 2/4/2");
    expect_rect(&l, LAYOUT_LOSS, 1, 0, 6, 48, "80x24 2/4/2");
    expect_rect(&l, LAYOUT_SPEED, 1, 48, 6, 32, "80x24 2/4/2");
    expect_rect(&l, LAYOUT_HEATMAP, 7, 0, 6, 46, "80x24 2/4/2");
    expect_rect(&l, LAYOUT_DEVICES, 7, 46, 6, 34, "80x24 2/4/2");
    expect_rect(&l, LAYOUT_BALANCE, 13, 0, 3, 80, "80x24 2/4/2");
    expect_rect(&l, LAYOUT_EVENTS, 16, 0, 7, 80, "80x24 2/4/2");
    expect_rect(&l, LAYOUT_FOOTER, 23, 0, 1, 80, "80x24 2/4/2");

    layout_compute(&l, 24, 80, &options[1]); /* 4 layers, 16 experts, 4 ranks */
    expect_rect(&l, LAYOUT_LOSS, 1, 0, 6, 48, "80x24 4/16/4");
    expect_rect(&l, LAYOUT_SPEED, 1, 48, 6, 32, "80x24 4/16/4");
    expect_rect(&l, LAYOUT_HEATMAP, 7, 0, 9, 52, "80x24 4/16/4");
    expect_rect(&l, LAYOUT_DEVICES, 7, 52, 9, 28, "80x24 4/16/4");
    expect_rect(&l, LAYOUT_BALANCE, 16, 0, 3, 80, "80x24 4/16/4");
    expect_rect(&l, LAYOUT_EVENTS, 19, 0, 4, 80, "80x24 4/16/4");

    layout_compute(&l, 24, 80, &options[6]); /* 1000 of each */
    expect_rect(&l, LAYOUT_HEATMAP, 7, 0, 9, 52, "80x24 1000s");
    expect_rect(&l, LAYOUT_EVENTS, 19, 0, 4, 80, "80x24 1000s");

    layout_compute(&l, 24, 80, &options[3]); /* one rank: no balance */
    expect_rect(&l, LAYOUT_HEATMAP, 7, 0, 5, 37, "80x24 1/1/1");
    expect_rect(&l, LAYOUT_BALANCE, 0, 0, 0, 0, "80x24 1/1/1");
    expect_rect(&l, LAYOUT_EVENTS, 12, 0, 11, 80, "80x24 1/1/1");

    layout_compute(&l, 23, 80, &options[0]);
    EXPECT(l.too_small, "80x23 is not too small");
    layout_compute(&l, 24, 79, &options[0]);
    EXPECT(l.too_small, "79x24 is not too small");

    layout_compute(&l, 50, 200, &options[1]); /* a bigger terminal */
    /* Events stop at 12 rows (25% of 48); the plots take the rest. */
    expect_rect(&l, LAYOUT_LOSS, 1, 0, 24, 120, "50x200 4/16/4");
    expect_rect(&l, LAYOUT_HEATMAP, 25, 0, 9, 82, "50x200 4/16/4");
    expect_rect(&l, LAYOUT_BALANCE, 34, 0, 3, 200, "50x200 4/16/4");
    expect_rect(&l, LAYOUT_EVENTS, 37, 0, 12, 200, "50x200 4/16/4");
}

int main(void)
{
    check_80x24();

    int layouts = 0;
    for (int o = 0; o < OPTION_COUNT; o++) {
        for (int rows = 1; rows <= 120; rows++)
            for (int cols = 1; cols <= 260; cols++, layouts++)
                if (check(rows, cols, &options[o]) && failures > 50)
                    goto out; /* one broken rule fails everywhere */
        for (int rows = 0; rows <= 300; rows += 13)
            for (int cols = 0; cols <= 1000; cols += 37, layouts++)
                check(rows, cols, &options[o]);
        check(300, 1000, &options[o]);
        check_growth(&options[o]);
    }
    for (int rows = 1; rows <= 120; rows++) /* no options at all */
        for (int cols = 1; cols <= 260; cols++, layouts++)
            check(rows, cols, NULL);

out:
    printf("%d layouts checked, %d failure(s)\n", layouts, failures);
    return failures ? 1 : 0;
}
