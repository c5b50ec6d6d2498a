/* Console layout: a pure function of the terminal size and options, so it
 * is unit-tested without a terminal (htop's ScreenManager idea). */
#ifndef MOECTL_TUI_LAYOUT_H
#define MOECTL_TUI_LAYOUT_H

typedef struct layout_rect {
    int row, col;     /* top-left, 0-based */
    int rows, cols;   /* size; 0 rows means the panel is hidden */
} layout_rect;

typedef enum layout_panel {
    LAYOUT_HEADER,    /* 1 row: run, status, step/total, progress, ETA */
    LAYOUT_LOSS,      /* loss and validation-loss plot, lr */
    LAYOUT_SPEED,     /* throughput and cost */
    LAYOUT_HEATMAP,   /* expert load: layers x experts, per-layer stats */
    LAYOUT_DEVICES,   /* one or two rows per rank */
    LAYOUT_BALANCE,   /* policy, latest plan and its measured result;
                         hidden for a job of fewer than 2 ranks */
    LAYOUT_EVENTS,    /* event log */
    LAYOUT_FOOTER,    /* 1 row: keys, or the command line */
    LAYOUT_PANEL_COUNT
} layout_panel;

typedef struct layout_options {
    int layers;       /* heatmap rows wanted (model layers) */
    int experts;      /* heatmap columns wanted */
    int ranks;        /* device rows wanted */
} layout_options;

typedef struct layout {
    layout_rect panel[LAYOUT_PANEL_COUNT];
    int too_small;    /* below 80x24: only header, footer and a message */
} layout;

/* Places every panel inside rows x cols. Panels never overlap and never
 * leave the screen; the header is row 0 and the footer the last row. A
 * hidden panel is all zeros. */
void layout_compute(layout *out, int rows, int cols,
                    const layout_options *opt);

#endif
