#include "engine/trainer/run_dir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/model/checkpoint_files.h"

const char *run_dir_root(void)
{
    const char *root = getenv("MOECTL_RUNS_DIR");
    return root && root[0] ? root : "runs";
}

void run_dir_default_name(char *out, size_t size, const char *config_name)
{
    time_t now = time(NULL);
    struct tm utc;
    char when[32] = "run";
    if (gmtime_r(&now, &utc))
        strftime(when, sizeof when, "%Y%m%d-%H%M%S", &utc);
    /* The config's name, reduced to the characters a name may hold. */
    char base[48];
    size_t n = 0;
    for (const char *p = config_name; p && *p && n + 1 < sizeof base; p++)
        base[n++] = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV"
                           "WXYZ0123456789._-", *p) ? *p : '-';
    base[n] = '\0';
    snprintf(out, size, "%s-%s", n && base[0] != '.' ? base : "run", when);
}

int run_dir_check_name(const char *name, char *why, size_t why_size)
{
    size_t n = strlen(name);
    if (n == 0 || n >= RUN_NAME_MAX) {
        snprintf(why, why_size, "a run name has 1 to %d characters",
                 RUN_NAME_MAX - 1);
        return -1;
    }
    if (name[0] == '.') {
        snprintf(why, why_size, "a run name does not start with \".\"");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "0123456789._-", name[i])) {
            snprintf(why, why_size, "a run name holds only letters, digits "
                     "and . _ - (\"%s\" has '%c')", name, name[i]);
            return -1;
        }
    return 0;
}

int run_dir_is_run(const char *path, char *name, size_t size)
{
    char probe[CONFIG_PATH_MAX + 16];
    snprintf(probe, sizeof probe, "%s/config.yaml", path);
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode) ||
        stat(probe, &st) < 0)
        return 0;
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && path[start - 1] != '/')
        start--;
    snprintf(name, size, "%.*s", (int)(len - start), path + start);
    return 1;
}

void run_dir_path(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", run_dir_root(), name);
}

static int write_config(const char *dir, const char *file, const config *cfg,
                        moe_error *err)
{
    char path[CONFIG_PATH_MAX + 32], temp[CONFIG_PATH_MAX + 40];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(temp, sizeof temp, "%s.tmp", path);
    FILE *f = fopen(temp, "w");
    if (!f)
        return error_set_errno(err, "cannot write %s", temp);
    fprintf(f, "# The resolved configuration of this run (%s with its "
               "overrides).\n", cfg->source);
    config_print(cfg, f);
    int failed = ferror(f) != 0;
    if (fclose(f) != 0 || failed || rename(temp, path) != 0) {
        unlink(temp);
        return error_set_errno(err, "cannot write %s", path);
    }
    return 0;
}

int run_dir_prepare(const char *dir, const config *cfg, int resuming,
                    moe_error *err)
{
    if (checkpoint_make_dirs(dir, err) < 0)
        return -1;
    char metrics[CONFIG_PATH_MAX + 32];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    struct stat st;
    if (!resuming && stat(metrics, &st) == 0)
        return error_set(err, "the run directory %s already holds a run; "
                              "give this one another --name, or continue "
                              "that one with --resume %s", dir, dir);
    return write_config(dir, resuming ? "config-resumed.yaml" : "config.yaml",
                        cfg, err);
}

void run_dir_note_socket(const char *dir, const char *socket)
{
    char path[CONFIG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/socket", dir);
    if (!socket) {
        unlink(path);
        return;
    }
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "%s\n", socket);
        fclose(f);
    }
}
