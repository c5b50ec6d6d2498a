/* The corpus replay: runs a harness's LLVMFuzzerTestOneInput on every file
 * of the directories (and on the files) it is given, without libFuzzer, so
 * that the suite runs the seeds under ASan and UBSan with any compiler.
 *
 *   fuzz-replay-NAME PATH...
 *
 * Exits 0 after running at least one input; 1 when there was none or a
 * path could not be read. A sanitizer report or a harness's oracle aborts
 * the process; the line before it names the input. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz.h"

/* Reads the whole file at path into *data (the caller frees it). */
static int read_input(const char *path, uint8_t **data, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t capacity = 4096, length = 0;
    uint8_t *buf = malloc(capacity);
    while (buf) {
        length += fread(buf + length, 1, capacity - length, f);
        if (length < capacity)
            break;
        capacity *= 2;
        uint8_t *bigger = realloc(buf, capacity);
        if (!bigger)
            free(buf);
        buf = bigger;
    }
    int failed = ferror(f);
    fclose(f);
    if (!buf || failed) {
        free(buf);
        fprintf(stderr, "replay: cannot read %s\n", path);
        return -1;
    }
    /* Exactly the input's bytes, so that ASan sees a read past its end. */
    uint8_t *exact = malloc(length ? length : 1);
    if (!exact) {
        free(buf);
        fprintf(stderr, "replay: out of memory for %s\n", path);
        return -1;
    }
    memcpy(exact, buf, length);
    free(buf);
    *data = exact;
    *size = length;
    return 0;
}

static int replay_file(const char *path, int *inputs)
{
    uint8_t *data;
    size_t size;
    if (read_input(path, &data, &size) < 0)
        return -1;
    printf("replay %s (%zu bytes)\n", path, size);
    fflush(stdout);
    LLVMFuzzerTestOneInput(data, size);
    free(data);
    ++*inputs;
    return 0;
}

static int visible(const struct dirent *entry)
{
    return entry->d_name[0] != '.';
}

/* Every regular file of dir, in name order. */
static int replay_dir(const char *dir, int *inputs)
{
    struct dirent **entries;
    int n = scandir(dir, &entries, visible, alphasort);
    if (n < 0) {
        fprintf(stderr, "replay: cannot list %s: %s\n", dir, strerror(errno));
        return -1;
    }
    int status = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, entries[i]->d_name);
        if (status == 0 && stat(path, &sb) == 0 && S_ISREG(sb.st_mode))
            status = replay_file(path, inputs);
        free(entries[i]);
    }
    free(entries);
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
        return 2;
    }
    int inputs = 0;
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        int status = S_ISDIR(sb.st_mode) ? replay_dir(argv[i], &inputs)
                                         : replay_file(argv[i], &inputs);
        if (status < 0)
            return 1;
    }
    if (inputs == 0) {
        fprintf(stderr, "replay: no input in %s%s: an empty corpus tests "
                        "nothing\n", argv[1], argc > 2 ? " ..." : "");
        return 1;
    }
    printf("replay: %d inputs ran\n", inputs);
    return 0;
}
