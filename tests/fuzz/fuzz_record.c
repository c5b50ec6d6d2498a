/* Fuzzes the one record reader: the input is one line of a metrics file
 * or of the control socket's stream. It is decoded, checked against the
 * schema, and read through every getter of every declared field (the parts
 * of arrays included), as the console and `moectl ctl` read it.
 *
 * Oracles: a refused line gives a one-line reason; so does a record that
 * fails its check. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/protocol/record.h"
#include "tests/fuzz/fuzz.h"

static void check_reason(const char *what, const char *why)
{
    if (!why[0] || strchr(why, '\n')) {
        fprintf(stderr, "fuzz_record: %s gave no one-line reason: \"%s\"\n",
                what, why);
        abort();
    }
}

/* Reads every field of r (and, one level down, of its parts) the way a
 * reader does; the values themselves are not checked. */
static void read_fields(const record_value *r, int depth)
{
    record_state state;
    for (int f = 0; f < RECORD_FIELD_COUNT; f++) {
        record_field field = (record_field)f;
        (void)record_has(r, field);
        (void)record_int(r, field, -1);
        (void)record_real(r, field);
        (void)record_string(r, field);
        (void)record_bool(r, field);
        (void)record_enum(r, field, config_policy_names);
        (void)record_state_read(r, field, &state);
        size_t n = record_count(r, field);
        for (size_t i = 0; depth < 2 && i < (n ? n : 1) && i < 64; i++) {
            record_value part;
            if (record_part(r, field, i, &part) == 0)
                read_fields(&part, depth + 1);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line = fuzz_text(data, size);
    if (!line)
        return 0;
    record_value r;
    char why[256] = "";
    if (record_decode(line, &r, why, sizeof why) < 0) {
        check_reason("record_decode", why);
    } else {
        why[0] = '\0';
        if (record_check(&r, why, sizeof why) < 0)
            check_reason("record_check", why);
        read_fields(&r, 0);
    }
    record_free(&r);
    free(line);
    return 0;
}
