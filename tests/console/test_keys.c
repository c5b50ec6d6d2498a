/* The console's key table: the ? overlay and the footer are generated from
 * it, so every binding shows up there with its key; footers fit the width
 * they are given; every key reaches its own binding; no mode binds a key
 * twice. No terminal is needed. */
#include <ncurses.h>
#include <stdio.h>
#include <string.h>

#include "tui/console/keys.h"

#include "tests/expect.h"

enum { HELP_MAX = 64 };

static const unsigned mode_bits[] = {
    KEYS_IN(MODE_NORMAL), KEYS_IN(MODE_COMMAND), KEYS_IN(MODE_HELP),
    KEYS_IN(MODE_MOVE), KEYS_IN(MODE_CONFIRM_STOP), KEYS_IN(MODE_QUIT),
    KEYS_STORY,
};
enum { MODE_BITS = sizeof mode_bits / sizeof mode_bits[0] };

/* The help, joined into one text. */
static void help_text(unsigned modes, char *out, size_t size)
{
    static char lines[HELP_MAX][KEYS_HELP_COLS];
    int n = keys_help(lines, HELP_MAX, modes);
    EXPECT(n > 1 && n < HELP_MAX, "help for modes %#x has %d lines", modes,
           n);
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        strncat(out, lines[i], size - strlen(out) - 2);
        strncat(out, "\n", size - strlen(out) - 1);
    }
}

/* A binding shadowed by an earlier one of the same modes is unreachable
 * there, and rightly left out of the help and footer. */
static int representative(int bound)
{
    return bound == KEYS_PRINTABLE ? 'x'
           : bound == KEYS_DIGIT   ? '7'
           : bound == KEYS_ANY     ? KEY_F(12)
                                   : bound;
}

static int reachable(const console_binding *b, unsigned modes)
{
    return keys_find(modes, representative(b->keys[0])) == b;
}

static void check_table(void)
{
    EXPECT(console_binding_count > 20, "%d bindings", console_binding_count);
    for (int i = 0; i < console_binding_count; i++) {
        const console_binding *b = &console_bindings[i];
        EXPECT(b->keys[0] != 0 && b->label && b->modes && b->run,
               "binding %d (%s) is incomplete", i, b->label);
    }
}

/* The ? overlay shows the normal and story bindings, each with its key
 * label and its whole help text, and help mode's way out. */
static void check_help(void)
{
    static char text[HELP_MAX * KEYS_HELP_COLS];
    unsigned modes = KEYS_IN(MODE_NORMAL) | KEYS_STORY | KEYS_IN(MODE_HELP);
    help_text(modes, text, sizeof text);
    int listed = 0;
    for (int i = 0; i < console_binding_count; i++) {
        const console_binding *b = &console_bindings[i];
        if (!(b->modes & modes) || !b->help || !reachable(b, modes))
            continue;
        char first[KEYS_HELP_COLS];
        snprintf(first, sizeof first, "  %-10s %.*s", b->label,
                 (int)strcspn(b->help, "\n"), b->help);
        EXPECT(strstr(text, first), "the help lacks \"%s\":\n%s", first,
               text);
        listed++;
    }
    EXPECT(listed >= 12, "only %d bindings in the help", listed);
    /* The operator's ones, by their words. */
    const char *words[] = {"pause / resume", "checkpoint now",
                           "balance policy: off -> suggest -> auto",
                           "policy off|suggest|auto", "next chapter"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        EXPECT(strstr(text, words[i]), "the help lacks \"%s\"", words[i]);
    /* Without a story, its keys are not listed, and q is the normal one. */
    help_text(KEYS_IN(MODE_NORMAL), text, sizeof text);
    EXPECT(!strstr(text, "next chapter"), "a story key without a story");
    EXPECT(strstr(text, "leave: detach"), "no normal q in:\n%s", text);
}

/* Each mode's footer lists its bindings' labels and words, in table order,
 * and never takes more than the columns it is given. */
static void check_footer(void)
{
    char footer[1024];
    for (int m = 0; m < MODE_BITS; m++) {
        unsigned modes = mode_bits[m] == KEYS_STORY
                             ? KEYS_STORY | KEYS_IN(MODE_NORMAL)
                             : mode_bits[m];
        keys_footer(footer, sizeof footer, modes, 1000);
        const char *at = footer;
        for (int i = 0; i < console_binding_count; i++) {
            const console_binding *b = &console_bindings[i];
            if (!(b->modes & modes) || !b->footer || !reachable(b, modes))
                continue;
            char item[128];
            snprintf(item, sizeof item, "%s %s", b->label, b->footer);
            const char *found = strstr(at, item);
            EXPECT(found, "footer of modes %#x lacks \"%s\" after \"%s\"",
                   modes, item, at);
            at = found ? found + strlen(item) : at;
        }
        for (int cols = 0; cols <= 120; cols++) {
            keys_footer(footer, sizeof footer, modes, cols);
            EXPECT((int)strlen(footer) <= cols, "modes %#x: %zu > %d cols",
                   modes, strlen(footer), cols);
        }
    }
    /* At 80 columns the normal footer keeps help and quit. */
    keys_footer(footer, sizeof footer, KEYS_IN(MODE_NORMAL), 80);
    EXPECT(strstr(footer, "? help") && strstr(footer, "q quit"),
           "80-column footer: \"%s\"", footer);
    keys_footer(footer, sizeof footer, KEYS_STORY | KEYS_IN(MODE_NORMAL), 80);
    EXPECT(strncmp(footer, "Enter next  q quit", 18) == 0,
           "the story's footer: \"%s\"", footer);
}

/* Within one mode no key is bound twice (the story's keys come before the
 * normal ones on purpose: that is a different mode bit). */
static void check_unique(void)
{
    for (int m = 0; m < MODE_BITS; m++)
        for (int i = 0; i < console_binding_count; i++) {
            const console_binding *a = &console_bindings[i];
            if (!(a->modes & mode_bits[m]))
                continue;
            for (int k = 0; k < KEYS_PER_BINDING && a->keys[k]; k++) {
                const console_binding *b =
                    keys_find(mode_bits[m], representative(a->keys[k]));
                EXPECT(b == a || a->keys[k] == KEYS_ANY,
                       "mode %#x: key %d of \"%s\" reaches \"%s\"",
                       mode_bits[m], a->keys[k], a->label,
                       b ? b->label : "nothing");
            }
        }
    EXPECT(keys_find(KEYS_IN(MODE_NORMAL), 'z') == NULL, "z is bound");
    const console_binding *q =
        keys_find(KEYS_STORY | KEYS_IN(MODE_NORMAL), 'q');
    EXPECT(q && q->modes == KEYS_STORY, "the story's q is not first");
    const console_binding *digit = keys_find(KEYS_IN(MODE_MOVE), '3');
    EXPECT(digit && strcmp(digit->label, "0-9") == 0, "3 in move mode");
}

int main(void)
{
    check_table();
    check_help();
    check_footer();
    check_unique();
    if (failures)
        printf("%d failures\n", failures);
    else
        printf("ok\n");
    return failures != 0;
}
