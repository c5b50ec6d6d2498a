/* Fuzzes the headless script parser: the input is a script's text, read
 * for the job tests/cli/test_script.py runs (configs/tiny.yaml: 2 layers,
 * 4 experts, 2 ranks, 200 steps). A script that parses is then scheduled
 * over a few boundaries with figures that move, so that `when` lines turn
 * true and false.
 *
 * Oracles: script_due names each line at most once a boundary, in script
 * order; a STEP line only at its step, an `every N` line only at multiples
 * of N. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/protocol/script.h"
#include "tests/fuzz/fuzz.h"

static const command_limits job = {.layers = 2, .experts = 4, .ranks = 2};
enum { LAST_STEP = 200, BOUNDARIES = 6 };

/* The figures of `step`: each metric rises and falls at its own pace, and
 * one is missing (NAN) at every other step. */
static void figures(int step, double *values)
{
    for (int m = 0; m < SCRIPT_METRIC_COUNT; m++)
        values[m] = (double)((step * (m + 3)) % 7) - 2.0;
    values[SCRIPT_METRIC_step] = step;
    if (step % 2)
        values[SCRIPT_METRIC_val_loss] = NAN;
}

static void check_due(const script *s, int step, const int *due, int n)
{
    for (int k = 0; k < n; k++) {
        int i = due[k];
        const script_line *line = i >= 0 && i < s->count ? &s->lines[i]
                                                         : NULL;
        int ok = line && (k == 0 || due[k - 1] < i);
        if (ok && line->kind == SCRIPT_AT)
            ok = line->step == step;
        if (ok && line->kind == SCRIPT_EVERY)
            ok = step > 0 && step % line->every == 0;
        if (!ok) {
            fprintf(stderr, "fuzz_script: at step %d script_due names line "
                            "index %d (of %d) out of place\n", step, i,
                    s->count);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* script_load reads up to 16 MiB; lines over 1023 bytes are refused,
     * so longer inputs add nothing but time. */
    if (size > 1 << 16)
        return 0;
    char *text = fuzz_text(data, size);
    if (!text)
        return 0;
    script s = {0};
    char err[512];
    if (script_parse(&s, "fuzz.script", text, &job, LAST_STEP, err,
                     sizeof err) == 0) {
        int *due = malloc(((size_t)s.count + 1) * sizeof *due);
        double values[SCRIPT_METRIC_COUNT];
        for (int step = 0; due && step < BOUNDARIES; step++) {
            figures(step, values);
            int n = script_due(&s, step, step ? values : NULL, due);
            check_due(&s, step, due, n);
        }
        free(due);
    }
    script_free(&s);
    free(text);
    return 0;
}
