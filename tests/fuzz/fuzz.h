/* What the fuzzing harnesses share: libFuzzer's entry point, which each
 * harness defines and both libFuzzer and the corpus replay (replay.c)
 * call, and the NUL-terminated copy of an input that the engine's text
 * readers take. */
#ifndef MOECTL_TESTS_FUZZ_H
#define MOECTL_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Runs one input; returns 0 (libFuzzer keeps other values for itself).
 * An oracle that does not hold aborts, so both libFuzzer and the replay
 * report it as a crash with the input that caused it. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input as a C string (a NUL byte inside it ends the text early, as it
 * would for a reader of the real file or line); free it. NULL when out of
 * memory. */
static inline char *fuzz_text(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return NULL;
    if (size)
        memcpy(text, data, size);
    text[size] = '\0';
    return text;
}

#endif
