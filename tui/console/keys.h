/* The console's keys: one table of bindings (keys, the action, its help
 * text, the modes it applies in), from which the key dispatch, the footer
 * and the ? overlay all come (htop's Action_setBindings). */
#ifndef MOECTL_TUI_CONSOLE_KEYS_H
#define MOECTL_TUI_CONSOLE_KEYS_H

#include <stddef.h>

#include "tui/console/state.h"

/* What a key's action asks of the loop: a bitmask. */
enum {
    CONSOLE_REDRAW = 1u << 0,   /* the screen changed */
    CONSOLE_LEAVE = 1u << 1,    /* close the console */
};
typedef unsigned console_reaction;

/* The modes a binding applies in, as bits: 1u << MODE_x, and the story's
 * own keys, which come first in the normal mode when a narrator tells one
 * (moectl demo). */
#define KEYS_IN(mode) (1u << (mode))
enum { KEYS_STORY = 1u << MODE_COUNT };

/* Key codes that stand for a class of keys in a binding. */
enum {
    KEYS_PRINTABLE = -2,   /* a printable ASCII character */
    KEYS_DIGIT = -3,       /* 0-9 */
    KEYS_ANY = -4,         /* any key (after the other bindings) */
    KEYS_PER_BINDING = 4,
};

typedef struct console_binding {
    int keys[KEYS_PER_BINDING];   /* ncurses codes or characters; 0 ends */
    const char *label;            /* how the help and footer name them */
    const char *help;             /* the ? overlay; '\n' continues it */
    const char *footer;           /* a word or two; NULL: not shown there */
    unsigned modes;               /* KEYS_IN(...) | KEYS_STORY */
    console_reaction (*run)(console *c, int key);
} console_binding;

extern const console_binding console_bindings[];
extern const int console_binding_count;

/* The modes whose bindings apply to c now. */
unsigned keys_active(const console *c);

/* The first binding of modes that takes key, or NULL. */
const console_binding *keys_find(unsigned modes, int key);

/* Runs key's binding in c's mode; an unbound key changes nothing. */
console_reaction keys_dispatch(console *c, int key);

/* The ? overlay for modes: a title, a line per binding (its continuation
 * lines indented), into lines[max][cols]. Returns the lines written. */
enum { KEYS_HELP_COLS = 96 };
int keys_help(char (*lines)[KEYS_HELP_COLS], int max, unsigned modes);

/* The footer's key list for modes, "p pause  c checkpoint ...", in table
 * order, leaving out what does not fit in cols columns. */
void keys_footer(char *out, size_t size, unsigned modes, int cols);

#endif
