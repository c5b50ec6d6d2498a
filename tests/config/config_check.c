/* Behaves like `moectl check [CONFIG] [--set KEY=VALUE]...`: prints the
 * resolved configuration and exits 0, or prints the error and exits 2. */
#include <stdio.h>
#include <string.h>

#include "engine/config/config.h"

#define SETS_MAX 256

static int usage(void)
{
    fputs("usage: config_check check [CONFIG] [--set KEY=VALUE]...\n", stderr);
    return 2;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    const char *sets[SETS_MAX];
    int set_count = 0;

    if (argc < 2 || strcmp(argv[1], "check") != 0)
        return usage();
    for (int i = 2; i < argc; i++) {
        const char *set = NULL;
        if (strcmp(argv[i], "--set") == 0) {
            if (i + 1 >= argc)
                return usage();
            set = argv[++i];
        } else if (strncmp(argv[i], "--set=", 6) == 0) {
            set = argv[i] + 6;
        } else if (argv[i][0] == '-' || path) {
            return usage();
        } else {
            path = argv[i];
        }
        if (set) {
            if (set_count == SETS_MAX)
                return usage();
            sets[set_count++] = set;
        }
    }

    config cfg;
    moe_error err;
    if (config_load(&cfg, path, sets, set_count, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        return 2;
    }
    config_print(&cfg, stdout);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        perror("config_check: stdout");
        return 1;
    }
    return 0;
}
