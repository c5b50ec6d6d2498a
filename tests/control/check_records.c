/* Reads JSON Lines files of records (metrics files, control socket
 * transcripts) and checks every line against the one schema
 * (engine/protocol/record.h) through the shared reader: it decodes, it
 * has every declared field of its type with the declared kind and no
 * undeclared one, and every record type the metrics file can hold was
 * seen. Exit 0 when all holds, 1 otherwise.
 *
 * usage: check_records [--all] FILE...
 *   --all  every declared top-level record type must appear, except
 *          "reply" (the control socket's, never in a metrics file) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/protocol/record.h"

enum { LINE_MAX_BYTES = 1 << 22 };

/* Checks one file; counts the types seen. Returns the bad lines. */
static int check_file(const char *path, char *line, int seen[])
{
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("FAIL %s: cannot open\n", path);
        return 1;
    }
    int bad = 0, number = 0;
    while (fgets(line, LINE_MAX_BYTES, f)) {
        number++;
        line[strcspn(line, "\n")] = '\0';
        record_value r;
        char why[256];
        if (record_decode(line, &r, why, sizeof why) < 0 ||
            record_check(&r, why, sizeof why) < 0) {
            printf("FAIL %s:%d: %s\n", path, number, why);
            bad++;
        } else {
            seen[r.type]++;
        }
        record_free(&r);
    }
    fclose(f);
    if (number == 0) {
        printf("FAIL %s: no records\n", path);
        bad++;
    }
    return bad;
}

int main(int argc, char **argv)
{
    int all = argc > 1 && strcmp(argv[1], "--all") == 0;
    int first = 1 + all;
    if (first >= argc) {
        fprintf(stderr, "usage: check_records [--all] FILE...\n");
        return 2;
    }
    char *line = malloc(LINE_MAX_BYTES);
    if (!line)
        return 2;
    int seen[RECORD_TYPE_COUNT] = {0};
    int bad = 0;
    for (int i = first; i < argc; i++)
        bad += check_file(argv[i], line, seen);
    free(line);
    for (int t = 0; t < RECORD_TYPE_COUNT; t++) {
        int expected = record_type_is_top((record_type)t) &&
                       t != RECORD_TYPE_REPLY;
        if (all && expected && seen[t] == 0) {
            printf("FAIL: no %s record in the files\n", record_type_names[t]);
            bad++;
        }
        if (seen[t])
            printf("%d %s record%s ok\n", seen[t], record_type_names[t],
                   seen[t] == 1 ? "" : "s");
    }
    return bad ? 1 : 0;
}
