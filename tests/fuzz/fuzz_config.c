/* Fuzzes the configuration loader: the input is a YAML file's text.
 *
 * Oracle: a configuration that loads prints (config_print) as YAML that
 * loads again and prints the same text; otherwise the harness aborts with
 * both texts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/config/config.h"
#include "tests/fuzz/fuzz.h"

/* The source both loads name, so that both printed headers agree. */
#define SOURCE "fuzz.yaml"

/* config_print into a string (the caller frees it); NULL when out of
 * memory. */
static char *print_config(const config *cfg, size_t *length)
{
    char *text = NULL;
    FILE *out = open_memstream(&text, length);
    if (!out)
        return NULL;
    config_print(cfg, out);
    if (fclose(out) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* config_load refuses a larger file before reading it. */
    if (size > CONFIG_TEXT_MAX)
        return 0;
    /* 16 KiB each: kept off the stack. */
    static config first, second;
    moe_error err;
    char *text = fuzz_text(data, size);
    if (!text || config_load_text(&first, SOURCE, text, size, NULL, 0,
                                  &err) < 0) {
        free(text);
        return 0;
    }
    free(text);
    size_t printed_length = 0, again_length = 0;
    char *printed = print_config(&first, &printed_length);
    if (!printed)
        return 0;
    if (config_load_text(&second, SOURCE, printed, printed_length, NULL, 0,
                         &err) < 0) {
        fprintf(stderr, "fuzz_config: the printed configuration does not "
                        "load:\n%s\n--- printed:\n%s", err.message, printed);
        abort();
    }
    char *again = print_config(&second, &again_length);
    if (again && (again_length != printed_length ||
                  memcmp(again, printed, printed_length) != 0)) {
        fprintf(stderr, "fuzz_config: the printed configuration prints "
                        "differently once loaded:\n--- first:\n%s--- "
                        "again:\n%s", printed, again);
        abort();
    }
    free(again);
    free(printed);
    return 0;
}
