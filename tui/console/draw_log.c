#include "tui/console/draw.h"

#include <math.h>
#include <ncurses.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tui/console/format.h"

/* Where an event's text breaks to fit `cols` columns: at the last blank
 * before the edge (or at the edge in a word too long), continuation lines
 * indented by two. Fills starts/lengths; returns the line count. */
static int wrap_event(const char *text, int cols, int *starts, int *lengths,
                      int most)
{
    int n = 0, at = 0, len = (int)strlen(text);
    while (at < len && n < most) {
        int room = n ? cols - 2 : cols;
        int take = len - at;
        if (take > room) {
            int cut = room;
            while (cut > 0 && text[at + cut] != ' ')
                cut--;
            take = cut > 0 ? cut : room;
        }
        starts[n] = at;
        lengths[n++] = take;
        at += take;
        while (at < len && text[at] == ' ')
            at++;
    }
    return n;
}

/* The event log, newest at the bottom, each event wrapped (never cut);
 * scrolled back by c->events_back events (PgUp, PgDn, End). */
void draw_events(console *c, const layout_rect *r)
{
    enum { WRAP_MOST = 8 };
    const view *v = &c->v;
    int kept = v->event_count < VIEW_EVENTS ? v->event_count : VIEW_EVENTS;
    if (c->events_back > kept - 1)
        c->events_back = kept > 0 ? kept - 1 : 0;
    int newest = v->event_count - 1 - c->events_back;
    char title[96];
    if (c->events_back > 0)
        snprintf(title, sizeof title, "Events (%d newer below: PgDn, End)",
                 c->events_back);
    else
        snprintf(title, sizeof title, "Events");
    draw_title(r, title);
    int lines = r->rows - 1, cols = r->cols - 1;
    if (lines < 1 || cols < 8)
        return;
    /* From the newest shown back, as many whole events as fit. */
    int first = newest + 1, used = 0;
    while (first - 1 >= v->event_count - kept && first - 1 >= 0) {
        int starts[WRAP_MOST], lengths[WRAP_MOST];
        int need = wrap_event(v->events[(first - 1) % VIEW_EVENTS], cols,
                              starts, lengths, WRAP_MOST);
        if (used + (need ? need : 1) > lines)
            break;
        used += need ? need : 1;
        first--;
    }
    c->events_page = newest + 1 - first;
    int row = r->row + 1;
    for (int i = first; i <= newest; i++) {
        const char *text = v->events[i % VIEW_EVENTS];
        int starts[WRAP_MOST], lengths[WRAP_MOST];
        int n = wrap_event(text, cols, starts, lengths, WRAP_MOST);
        for (int k = 0; k < n; k++) {
            char line[VIEW_EVENT_BYTES + 4];
            snprintf(line, sizeof line, "%s%.*s", k ? "  " : "", lengths[k],
                     text + starts[k]);
            draw_text(row++, r->col, line, r->cols);
        }
        row += n == 0;
    }
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
