/* Reads JSON Lines files of records (metrics files, control socket
 * transcripts) and checks every line against the one schema
 * (engine/protocol/record.h) through the shared reader: it decodes, it
 * has every declared field of its type with the declared kind and no
 * undeclared one, and every record type the metrics file can hold was
 * seen. Exit 0 when all holds, 1 otherwise.
 *
 * usage: check_records [--all] FILE...
 *        check_records --markdown
 *   --all       every declared top-level record type must appear, except
 *               "reply" (the control socket's, never in a metrics file)
 *   --markdown  prints the schema as a Markdown table (for the README) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/protocol/record.h"

enum { LINE_MAX_BYTES = 1 << 22 };

/* Whether r has the run_id of the file's first record (kept in id). */
static int same_run(char *id, size_t size, const record_value *r)
{
    const char *run_id = record_string(r, RECORD_COMMON_run_id);
    if (!id[0])
        snprintf(id, size, "%s", run_id);
    return strcmp(id, run_id) == 0 && run_id[0];
}

/* Checks one file; counts the types seen. Returns the bad lines. */
static int check_file(const char *path, char *line, int seen[])
{
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("FAIL %s: cannot open\n", path);
        return 1;
    }
    int bad = 0, number = 0;
    char run_id[RECORD_RUN_ID_MAX] = "";
    while (fgets(line, LINE_MAX_BYTES, f)) {
        number++;
        line[strcspn(line, "\n")] = '\0';
        record_value r;
        char why[256];
        if (record_decode(line, &r, why, sizeof why) < 0 ||
            record_check(&r, why, sizeof why) < 0) {
            printf("FAIL %s:%d: %s\n", path, number, why);
            bad++;
        } else if (!same_run(run_id, sizeof run_id, &r)) {
            printf("FAIL %s:%d: run_id %s after %s: one run, one id\n",
                   path, number, record_string(&r, RECORD_COMMON_run_id),
                   run_id);
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

static void print_markdown(void)
{
    static const char *const kinds[] = {"int", "real", "string", "bool",
                                        "array", "object"};
    static const char *const presence[] = {"", "null when n/a",
                                           "optional"};
    printf("| record | field | kind | unit | |\n|---|---|---|---|---|\n");
    for (int f = 0; f < RECORD_FIELD_COUNT; f++) {
        const record_field_info *i = &record_fields[f];
        const char *owner = i->owner == RECORD_TYPE_COMMON
                                ? "every record"
                                : record_type_names[i->owner];
        char kind[64];
        snprintf(kind, sizeof kind, "%s%s%s", kinds[i->kind],
                 i->part >= 0 ? " of " : "",
                 i->part >= 0 ? record_type_names[i->part] : "");
        printf("| %s | `%s` | %s | %s | %s |\n", owner, i->name, kind,
               i->unit, presence[i->presence]);
    }
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--markdown") == 0) {
        print_markdown();
        return 0;
    }
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
