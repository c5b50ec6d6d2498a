#include "tui/console/keys.h"

#include <ncurses.h>
#include <stdio.h>
#include <string.h>

enum { KEY_ESCAPE = 27 };

/* ---- the actions -------------------------------------------------------- */

static console_reaction pause_or_resume(console *c, int key)
{
    console_send_command(c, strcmp(c->v.status, "paused") == 0 ? "resume"
                                                               : "pause");
    return CONSOLE_REDRAW;
}

static console_reaction checkpoint(console *c, int key)
{
    console_send_command(c, "checkpoint");
    return CONSOLE_REDRAW;
}

/* The engine applies its last plan if the placement has not changed
 * since, or plans afresh; its reply says which. */
static console_reaction apply_plan(console *c, int key)
{
    console_send_command(c, "apply");
    return CONSOLE_REDRAW;
}

static console_reaction next_policy(console *c, int key)
{
    view_policy from = c->policy_wanted != VIEW_POLICY_UNKNOWN
                           ? c->policy_wanted
                           : c->v.policy;
    view_policy next = from == CONFIG_POLICY_SUGGEST ? CONFIG_POLICY_AUTO
                       : from == CONFIG_POLICY_AUTO  ? CONFIG_POLICY_OFF
                                                   : CONFIG_POLICY_SUGGEST;
    char line[32];
    snprintf(line, sizeof line, "policy %s", view_policy_name(next));
    console_send_command(c, line);
    c->policy_wanted = next;
    return CONSOLE_REDRAW;
}

static console_reaction enter_mode(console *c, console_mode mode)
{
    c->mode = mode;
    return CONSOLE_REDRAW;
}

static console_reaction ask_stop(console *c, int key)
{
    return enter_mode(c, MODE_CONFIRM_STOP);
}

/* Detach or stop? A job already gone leaves nothing to ask. */
static console_reaction ask_leave(console *c, int key)
{
    if (!c->connected)
        return CONSOLE_LEAVE;
    return enter_mode(c, MODE_QUIT);
}

static console_reaction show_help(console *c, int key)
{
    return enter_mode(c, MODE_HELP);
}

static console_reaction back_to_normal(console *c, int key)
{
    return enter_mode(c, MODE_NORMAL);
}

static console_reaction open_command_line(console *c, int key)
{
    c->input[0] = '\0';
    c->input_length = 0;
    c->history_at = 0;
    return enter_mode(c, MODE_COMMAND);
}

static console_reaction choose_move(console *c, int key)
{
    view *v = &c->v;
    if (!v->have_run || v->device_count < 2) {
        view_event(v, "move: the job has one rank");
        return CONSOLE_REDRAW;
    }
    int here = v->placement[(size_t)c->cursor_layer * v->experts +
                            c->cursor_expert];
    c->move_target = (here + 1) % v->device_count;
    return enter_mode(c, MODE_MOVE);
}

/* The event log scrolls by pages of what it last showed; End follows the
 * newest again. */
static console_reaction events_older(console *c, int key)
{
    int kept = c->v.event_count < VIEW_EVENTS ? c->v.event_count
                                              : VIEW_EVENTS;
    int page = c->events_page > 1 ? c->events_page - 1 : 1;
    c->events_back += page;
    if (c->events_back > kept - 1)
        c->events_back = kept > 0 ? kept - 1 : 0;
    return CONSOLE_REDRAW;
}

static console_reaction events_newer(console *c, int key)
{
    int page = c->events_page > 1 ? c->events_page - 1 : 1;
    c->events_back = c->events_back > page ? c->events_back - page : 0;
    return CONSOLE_REDRAW;
}

static console_reaction events_newest(console *c, int key)
{
    c->events_back = 0;
    return CONSOLE_REDRAW;
}

static console_reaction toggle_heat_summary(console *c, int key)
{
    c->heat_summary = !c->heat_summary;
    return CONSOLE_REDRAW;
}

static console_reaction layer_up(console *c, int key)
{
    c->cursor_layer -= c->cursor_layer > 0;
    return CONSOLE_REDRAW;
}

static console_reaction layer_down(console *c, int key)
{
    c->cursor_layer += c->cursor_layer + 1 < c->v.layers;
    return CONSOLE_REDRAW;
}

static console_reaction expert_left(console *c, int key)
{
    c->cursor_expert -= c->cursor_expert > 0;
    return CONSOLE_REDRAW;
}

static console_reaction expert_right(console *c, int key)
{
    c->cursor_expert += c->cursor_expert + 1 < c->v.experts;
    return CONSOLE_REDRAW;
}

/* The : line. */

static console_reaction send_input(console *c, int key)
{
    if (c->input_length > 0) {
        snprintf(c->history[c->history_count % CONSOLE_HISTORY_LINES],
                 CONSOLE_INPUT_MAX, "%s", c->input);
        c->history_count++;
        console_send_command(c, c->input);
    }
    return enter_mode(c, MODE_NORMAL);
}

static console_reaction delete_input(console *c, int key)
{
    if (c->input_length > 0)
        c->input[--c->input_length] = '\0';
    return CONSOLE_REDRAW;
}

static console_reaction recall_input(console *c, int older)
{
    int n = c->history_count < CONSOLE_HISTORY_LINES ? c->history_count
                                                     : CONSOLE_HISTORY_LINES;
    if (n == 0)
        return CONSOLE_REDRAW;
    c->history_at += older ? 1 : -1;
    if (c->history_at < 1)
        c->history_at = 1;
    if (c->history_at > n)
        c->history_at = n;
    snprintf(c->input, sizeof c->input, "%s",
             c->history[(c->history_count - c->history_at) %
                        CONSOLE_HISTORY_LINES]);
    c->input_length = (int)strlen(c->input);
    return CONSOLE_REDRAW;
}

static console_reaction older_input(console *c, int key)
{
    return recall_input(c, 1);
}

static console_reaction newer_input(console *c, int key)
{
    return recall_input(c, 0);
}

static console_reaction type_input(console *c, int key)
{
    if (c->input_length < CONSOLE_INPUT_MAX - 1) {
        c->input[c->input_length++] = (char)key;
        c->input[c->input_length] = '\0';
    }
    return CONSOLE_REDRAW;
}

/* Choosing where the selected expert goes. */

static console_reaction previous_rank(console *c, int key)
{
    c->move_target = (c->move_target + c->v.device_count - 1) %
                     c->v.device_count;
    return CONSOLE_REDRAW;
}

static console_reaction next_rank(console *c, int key)
{
    c->move_target = (c->move_target + 1) % c->v.device_count;
    return CONSOLE_REDRAW;
}

static console_reaction numbered_rank(console *c, int key)
{
    if (key - '0' < c->v.device_count)
        c->move_target = key - '0';
    return CONSOLE_REDRAW;
}

static console_reaction move_expert(console *c, int key)
{
    char line[64];
    snprintf(line, sizeof line, "move %d.%d %d", c->cursor_layer,
             c->cursor_expert, c->move_target);
    console_send_command(c, line);
    return enter_mode(c, MODE_NORMAL);
}

/* Stop and leave. */

static console_reaction stop_job(console *c, int key)
{
    console_send_command(c, "stop");
    return enter_mode(c, MODE_NORMAL);
}

static console_reaction detach(console *c, int key)
{
    return CONSOLE_LEAVE;
}

static console_reaction stay(console *c, int key)
{
    return CONSOLE_REDRAW;
}

/* The story's keys. */

static console_reaction next_chapter(console *c, int key)
{
    c->narrator->next(c->narrator->ctx);
    return CONSOLE_REDRAW;
}

/* The first q stops the job and leaves once it has stopped; a second q,
 * or a job already gone, leaves now. */
static console_reaction end_story(console *c, int key)
{
    if (c->quitting || !c->connected)
        return CONSOLE_LEAVE;
    console_send_command(c, "stop");
    c->quitting = 1;
    return CONSOLE_REDRAW;
}

/* ---- the table ---------------------------------------------------------- */

#define NORMAL KEYS_IN(MODE_NORMAL)
#define COMMAND KEYS_IN(MODE_COMMAND)
#define HELP KEYS_IN(MODE_HELP)
#define MOVE KEYS_IN(MODE_MOVE)
#define CONFIRM KEYS_IN(MODE_CONFIRM_STOP)
#define LEAVING KEYS_IN(MODE_QUIT)
#define ENTER_KEYS {'\n', '\r', KEY_ENTER}

const console_binding console_bindings[] = {
    {ENTER_KEYS, "Enter", "next chapter of the story", "next", KEYS_STORY,
     next_chapter},
    {{'q'}, "q", "quit: stop the job, then leave", "quit", KEYS_STORY,
     end_story},
    {{'p'}, "p", "pause / resume", "pause", NORMAL, pause_or_resume},
    {{'c'}, "c", "checkpoint now", "checkpoint", NORMAL, checkpoint},
    {{'s'}, "s", "stop (asks first): checkpoint, then end the job", "stop",
     NORMAL, ask_stop},
    {{KEY_UP, 'k'}, "up/k", "select the layer above in the expert heatmap",
     NULL, NORMAL, layer_up},
    {{KEY_DOWN, 'j'}, "down/j", "select the layer below", NULL, NORMAL,
     layer_down},
    {{KEY_LEFT, 'h'}, "left/h", "select the expert to the left", NULL,
     NORMAL, expert_left},
    {{KEY_RIGHT, 'l'}, "right/l", "select the expert to the right", NULL,
     NORMAL, expert_right},
    {{'m'}, "m", "move the selected expert to another rank", "move", NORMAL,
     choose_move},
    {{'v'}, "v", "heatmap: cells, or each layer's hottest/coldest experts",
     NULL, NORMAL, toggle_heat_summary},
    {{KEY_PPAGE}, "PgUp/PgDn", "scroll the event log a page; End: the newest",
     NULL, NORMAL, events_older},
    {{KEY_NPAGE}, "PgDn", NULL, NULL, NORMAL, events_newer},
    {{KEY_END}, "End", NULL, NULL, NORMAL, events_newest},
    {{'a'}, "a", "apply the suggested plan (or plan now and apply)", "apply",
     NORMAL, apply_plan},
    {{'b'}, "b", "balance policy: off -> suggest -> auto -> off", "policy",
     NORMAL, next_policy},
    {{':'}, ":", "command line (up/down: history): pause, resume, stop,\n"
     "checkpoint, status, lr VALUE, move L.E R, plan, apply,\n"
     "policy off|suggest|auto [every N] [min-gain X]", "cmd", NORMAL,
     open_command_line},
    {{'?'}, "?", "this help", "help", NORMAL, show_help},
    {{'q'}, "q", "leave: detach (the job goes on) or stop it", "quit",
     NORMAL, ask_leave},

    {{KEY_ESCAPE}, "Esc", "close the command line", "cancel", COMMAND,
     back_to_normal},
    {ENTER_KEYS, "Enter", "send the command", "send", COMMAND, send_input},
    {{KEY_BACKSPACE, 127, 8}, "Backspace", "delete the last character",
     "delete", COMMAND, delete_input},
    {{KEY_UP}, "up", "an older command", "older", COMMAND, older_input},
    {{KEY_DOWN}, "down", "a newer command", "newer", COMMAND, newer_input},
    {{KEYS_PRINTABLE}, "text", "the command", NULL, COMMAND, type_input},

    {{KEYS_ANY}, "any key", "close the help", "close", HELP, back_to_normal},

    /* Enter and Esc first: the footer keeps what fits, in this order. */
    {ENTER_KEYS, "Enter", "move the expert there", "move", MOVE,
     move_expert},
    {{KEY_ESCAPE}, "Esc", "keep it where it is", "back", MOVE,
     back_to_normal},
    {{KEY_LEFT, 'h'}, "left/h", "the previous rank", "previous", MOVE,
     previous_rank},
    {{KEY_RIGHT, 'l'}, "right/l", "the next rank", "next", MOVE, next_rank},
    {{KEYS_DIGIT}, "0-9", "that rank", "rank", MOVE, numbered_rank},

    {{'y'}, "y", "stop the job (checkpoint first)", "yes", CONFIRM,
     stop_job},
    {{KEYS_ANY}, "n", "keep it running", "no", CONFIRM, back_to_normal},

    {{'d'}, "d", "detach: the job goes on", "detach (the job goes on)",
     LEAVING, detach},
    {{'s'}, "s", "stop the job", "stop the job", LEAVING, stop_job},
    {{KEY_ESCAPE}, "Esc", "stay", "stay", LEAVING, back_to_normal},
    {{KEYS_ANY}, "", NULL, NULL, LEAVING, stay},
};
const int console_binding_count =
    (int)(sizeof console_bindings / sizeof console_bindings[0]);

/* ---- lookup ------------------------------------------------------------- */

unsigned keys_active(const console *c)
{
    unsigned modes = KEYS_IN(c->mode);
    if (c->mode == MODE_NORMAL && c->narrator)
        modes |= KEYS_STORY;
    return modes;
}

static int takes(int bound, int key)
{
    if (bound == KEYS_PRINTABLE)
        return key >= 32 && key < 127;
    if (bound == KEYS_DIGIT)
        return key >= '0' && key <= '9';
    if (bound == KEYS_ANY)
        return 1;
    return bound == key;
}

const console_binding *keys_find(unsigned modes, int key)
{
    for (int i = 0; i < console_binding_count; i++) {
        const console_binding *b = &console_bindings[i];
        if (!(b->modes & modes))
            continue;
        for (int k = 0; k < KEYS_PER_BINDING && b->keys[k]; k++)
            if (takes(b->keys[k], key))
                return b;
    }
    return NULL;
}

console_reaction keys_dispatch(console *c, int key)
{
    const console_binding *b = keys_find(keys_active(c), key);
    return b ? b->run(c, key) : 0;
}

/* ---- the help and the footer -------------------------------------------- */

/* A binding a binding before it shadows (the story's q over the normal
 * q) is not listed: it cannot be reached. */
static int shadowed(const console_binding *b, unsigned modes)
{
    for (const console_binding *a = console_bindings; a < b; a++)
        if ((a->modes & modes) && a->keys[0] == b->keys[0])
            return 1;
    return 0;
}

int keys_help(char (*lines)[KEYS_HELP_COLS], int max, unsigned modes)
{
    int n = 0;
    if (n < max)
        snprintf(lines[n++], KEYS_HELP_COLS, "Keys");
    for (int i = 0; i < console_binding_count && n < max; i++) {
        const console_binding *b = &console_bindings[i];
        if (!(b->modes & modes) || !b->help || shadowed(b, modes))
            continue;
        const char *text = b->help, *label = b->label;
        while (n < max) {
            size_t len = strcspn(text, "\n");
            snprintf(lines[n++], KEYS_HELP_COLS, "  %-10s %.*s", label,
                     (int)len, text);
            if (!text[len])
                break;
            text += len + 1;
            label = "";
        }
    }
    return n;
}

void keys_footer(char *out, size_t size, unsigned modes, int cols)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < console_binding_count; i++) {
        const console_binding *b = &console_bindings[i];
        if (!(b->modes & modes) || !b->footer || shadowed(b, modes))
            continue;
        char item[96];
        int n = snprintf(item, sizeof item, "%s%s %s", used ? "  " : "",
                         b->label, b->footer);
        if (n < 0 || used + (size_t)n >= size || (int)used + n > cols)
            continue;
        memcpy(out + used, item, (size_t)n + 1);
        used += (size_t)n;
    }
}
