/* Fuzzes the command grammar: the input is one line, as the console's `:`
 * prompt, a script or a control socket client sends it. Each line is
 * parsed against two jobs: the command test's (4 layers, 8 experts, 3
 * ranks) and the largest a configuration allows.
 *
 * Oracles: a line that parses formats (command_format) as a line that
 * parses again and formats the same; a line that does not parse leaves
 * the command untouched and gives a one-line reason. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/protocol/command.h"
#include "engine/protocol/control.h"
#include "tests/fuzz/fuzz.h"

static const command_limits jobs[] = {
    {.layers = 4, .experts = 8, .ranks = 3},
    {.layers = 256, .experts = 1024, .ranks = CONFIG_MAX_DEVICES},
};

static void check_line(const char *line, const command_limits *limits)
{
    command parsed, untouched;
    memset(&parsed, 0x5a, sizeof parsed);
    untouched = parsed;
    char reason[256] = "", formatted[2 * CONTROL_LINE_MAX],
         again[2 * CONTROL_LINE_MAX];
    if (command_parse(line, limits, &parsed, reason, sizeof reason) < 0) {
        if (memcmp(&parsed, &untouched, sizeof parsed) != 0 || !reason[0] ||
            strchr(reason, '\n')) {
            fprintf(stderr, "fuzz_command: a refused line changed the "
                            "command or gave no one-line reason: \"%s\"\n",
                    reason);
            abort();
        }
        return;
    }
    command_format(&parsed, formatted, sizeof formatted);
    command reparsed;
    if (command_parse(formatted, limits, &reparsed, reason,
                      sizeof reason) < 0) {
        fprintf(stderr, "fuzz_command: \"%s\" formats as \"%s\", which does "
                        "not parse: %s\n", line, formatted, reason);
        abort();
    }
    command_format(&reparsed, again, sizeof again);
    if (strcmp(formatted, again) != 0) {
        fprintf(stderr, "fuzz_command: \"%s\" formats as \"%s\", which "
                        "formats as \"%s\"\n", line, formatted, again);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The control socket refuses longer lines before parsing them. */
    if (size > CONTROL_LINE_MAX)
        return 0;
    char *line = fuzz_text(data, size);
    if (!line)
        return 0;
    for (size_t i = 0; i < sizeof jobs / sizeof jobs[0]; i++)
        check_line(line, &jobs[i]);
    free(line);
    return 0;
}
