/* Drawing the console's panels with ncurses: each panel is drawn from the
 * view into the rectangle the layout gives it (tui/console/layout.c). */
#ifndef MOECTL_TUI_CONSOLE_DRAW_H
#define MOECTL_TUI_CONSOLE_DRAW_H

#include "tui/console/layout.h"
#include "tui/console/state.h"

enum { COLOR_PAIR_HOT = 1, COLOR_PAIR_WARM, COLOR_PAIR_COOL, COLOR_PAIR_COLD,
       COLOR_PAIR_DEAD, COLOR_PAIR_TITLE, COLOR_PAIR_BAD };

/* Display columns of a UTF-8 text whose glyphs are all one column wide
 * (ours are: ASCII and a few arrows). */
int draw_text_cols(const char *s);

/* Writes at most cols columns of s at row, col, never splitting a UTF-8
 * glyph. */
void draw_text(int row, int col, const char *s, int cols);

/* A panel's title on its first row, a column clear of the next panel. */
void draw_title(const layout_rect *r, const char *title);

/* The longest of texts (longest first) that fits in cols columns. */
const char *draw_longest_fitting(const char *const *texts, int count,
                                 int cols);

/* The panels (draw_training.c, draw_experts.c, draw_devices.c,
 * draw_balance.c, draw_log.c). */
void draw_loss(console *c, const layout_rect *r);
void draw_speed(console *c, const layout_rect *r);
void draw_heatmap(console *c, const layout_rect *r);
void draw_devices(console *c, const layout_rect *r);
void draw_balance(console *c, const layout_rect *r);
void draw_events(console *c, const layout_rect *r);
void draw_narration(console *c, const layout_rect *r);

#endif
