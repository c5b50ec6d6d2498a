#include "tui/console/draw.h"

#include <math.h>
#include <ncurses.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tui/console/format.h"

void draw_events(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    draw_title(r, "Events");
    int lines = r->rows - 1;
    int first = v->event_count - lines;
    if (first < 0)
        first = 0;
    if (first < v->event_count - VIEW_EVENTS)
        first = v->event_count - VIEW_EVENTS;
    for (int i = first, row = r->row + 1; i < v->event_count; i++, row++)
        draw_text(row, r->col, v->events[i % VIEW_EVENTS], r->cols);
}

/* The narrator's pane, in place of the event log: its title, its text
 * wrapped to the pane, and the latest events in the rows left over. */
void draw_narration(console *c, const layout_rect *r)
{
    const console_narrator *n = c->narrator;
    draw_title(r, n->title);
    int row = r->row + 1, end = r->row + r->rows, cols = r->cols - 1;
    const char *text = n->text;
    while (*text && row < end) {
        const char *stop = strchr(text, '\n');
        int len = stop ? (int)(stop - text) : (int)strlen(text);
        int kept = len >= 2 && text[0] == ' ' && text[1] == ' ';
        int at = 0;
        do {
            while (!kept && at < len && text[at] == ' ')
                at++;
            int take = len - at;
            if (take > cols && !kept) {
                int cut = cols;
                while (cut > 0 && text[at + cut] != ' ')
                    cut--;
                take = cut > 0 ? cut : cols;
            }
            char line[512];
            snprintf(line, sizeof line, "%.*s", take < 511 ? take : 511,
                     text + at);
            draw_text(row++, r->col, line, cols);
            at += take;
        } while (at < len && row < end && !kept);
        text += len + (stop ? 1 : 0);
    }
    /* What is left shows the latest events, after a blank row. */
    int lines = end - row - 1;
    if (lines < 2)
        return;
    row++;
    int first = c->v.event_count - lines;
    if (first < 0)
        first = 0;
    if (first < c->v.event_count - VIEW_EVENTS)
        first = c->v.event_count - VIEW_EVENTS;
    for (int i = first; i < c->v.event_count && row < end; i++, row++)
        draw_text(row, r->col, c->v.events[i % VIEW_EVENTS], r->cols);
}
