#include "engine/model/checkpoint_files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/config/config.h"

const char *const checkpoint_dim_keys[9] = {
    "vocab", "d_model", "n_layers", "n_heads", "seq_len", "n_experts",
    "top_k", "expert_hidden", "shared_hidden"};

static void hash_bytes(checkpoint_stream *s, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        s->hash ^= p[i];
        s->hash *= 0x100000001b3ull;
    }
    s->bytes += n;
}

void checkpoint_put(checkpoint_stream *s, const void *data, size_t n)
{
    if (s->failed || fwrite(data, 1, n, s->f) != n)
        s->failed = 1;
    hash_bytes(s, data, n);
}

void checkpoint_get(checkpoint_stream *s, void *data, size_t n)
{
    if (s->failed || fread(data, 1, n, s->f) != n) {
        s->failed = 1;
        memset(data, 0, n);
    }
    hash_bytes(s, data, n);
}

int checkpoint_write_open(checkpoint_stream *s, const char *path,
                          moe_error *err)
{
    char temp[CONFIG_PATH_MAX + 96];
    snprintf(temp, sizeof temp, "%s.tmp", path);
    *s = (checkpoint_stream){.f = fopen(temp, "wb"),
                             .hash = CHECKPOINT_FNV_BASIS};
    if (!s->f)
        return error_set_errno(err, "cannot create %s", temp);
    return 0;
}

int checkpoint_write_close(checkpoint_stream *s, const char *path,
                           moe_error *err)
{
    char temp[CONFIG_PATH_MAX + 96];
    snprintf(temp, sizeof temp, "%s.tmp", path);
    int status = 0;
    if (s->failed)
        status = error_set_errno(err, "cannot write %s", temp);
    else if (fflush(s->f) != 0 || fsync(fileno(s->f)) != 0)
        status = error_set_errno(err, "cannot flush %s to disk", temp);
    if (fclose(s->f) != 0 && status == 0)
        status = error_set_errno(err, "cannot close %s", temp);
    s->f = NULL;
    if (status == 0 && rename(temp, path) != 0)
        status = error_set_errno(err, "cannot rename %s into place", temp);
    if (status < 0)
        unlink(temp);
    return status;
}

int checkpoint_make_dirs(const char *dir, moe_error *err)
{
    char path[CONFIG_PATH_MAX + 32];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return error_set(err, "checkpoint directory name too long: %s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return error_set_errno(err, "cannot create %s", path);
        *p = '/';
    }
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return error_set_errno(err, "cannot create %s", path);
    return 0;
}

void checkpoint_sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Step of "step-NNNNNNNN" followed by `suffix` exactly, or -1. */
static long step_in_name(const char *name, const char *suffix)
{
    int step = -1, end = 0;
    if (sscanf(name, "step-%d%n", &step, &end) != 1 || step < 0 ||
        strcmp(name + end, suffix) != 0)
        return -1;
    return step;
}

static int is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

long checkpoint_step_of(const char *dir, const char *name)
{
    long step = step_in_name(name, ".ckpt");
    if (step >= 0)
        return step;
    step = step_in_name(name, "");
    char manifest[CONFIG_PATH_MAX + 300];
    snprintf(manifest, sizeof manifest, "%s/%s/" CHECKPOINT_MANIFEST, dir,
             name);
    return step >= 0 && is_file(manifest) ? step : -1;
}

int checkpoint_newest(const char *dir, char *out, size_t size)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    long newest = -1;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        long step = checkpoint_step_of(dir, entry->d_name);
        /* A directory of a step wins over an earlier moectl's file. */
        int better = step > newest ||
                     (step == newest && step_in_name(entry->d_name, "") >= 0);
        if (step >= 0 && better) {
            newest = step;
            snprintf(out, size, "%s/%s", dir, entry->d_name);
        }
    }
    closedir(d);
    return newest >= 0 ? 0 : -1;
}

/* Removes DIR/name, a checkpoint file or a checkpoint directory of files. */
static void remove_checkpoint(const char *dir, const char *name)
{
    char path[CONFIG_PATH_MAX + 300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (unlink(path) == 0)
        return;
    DIR *d = opendir(path);
    if (!d)
        return;
    /* The manifest first: from then on the directory is no checkpoint. */
    char file[CONFIG_PATH_MAX + 600];
    snprintf(file, sizeof file, "%s/" CHECKPOINT_MANIFEST, path);
    unlink(file);
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        snprintf(file, sizeof file, "%s/%s", path, entry->d_name);
        unlink(file);
    }
    closedir(d);
    rmdir(path);
}

void checkpoint_remove_others(const char *step_dir, const char *tag)
{
    DIR *d = opendir(step_dir);
    if (!d)
        return;
    char file[CONFIG_PATH_MAX + 600];
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        const char *name = entry->d_name;
        if (name[0] == '.' || strcmp(name, CHECKPOINT_MANIFEST) == 0 ||
            strstr(name, tag) != NULL)
            continue;
        snprintf(file, sizeof file, "%s/%s", step_dir, name);
        unlink(file);
    }
    closedir(d);
}

static int by_step(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

void checkpoint_prune(const char *dir, int keep)
{
    DIR *d = opendir(dir);
    if (!d || keep <= 0) {
        if (d)
            closedir(d);
        return;
    }
    long *steps = NULL;
    size_t n = 0, cap = 0;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        long step = checkpoint_step_of(dir, entry->d_name);
        if (step < 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            long *grown = realloc(steps, cap * sizeof *steps);
            if (!grown)
                break;
            steps = grown;
        }
        steps[n++] = step;
    }
    if (n == 0) {
        closedir(d);
        free(steps);
        return;
    }
    qsort(steps, n, sizeof *steps, by_step);
    long oldest_kept = steps[n > (size_t)keep ? n - (size_t)keep : 0];
    long newest = steps[n - 1];
    rewinddir(d);
    while ((entry = readdir(d)) != NULL) {
        long step = checkpoint_step_of(dir, entry->d_name);
        long unfinished = step < 0 ? step_in_name(entry->d_name, "") : -1;
        if ((step >= 0 && step < oldest_kept) ||
            (unfinished >= 0 && unfinished < newest))
            remove_checkpoint(dir, entry->d_name);
    }
    closedir(d);
    free(steps);
}

static int has_suffix(const char *name, const char *suffix)
{
    size_t n = strlen(name), k = strlen(suffix);
    return n > k && strcmp(name + n - k, suffix) == 0;
}

void checkpoint_clean_unfinished(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    char path[CONFIG_PATH_MAX + 300];
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        const char *name = entry->d_name;
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (has_suffix(name, ".tmp")) {
            unlink(path); /* a single-file write cut short */
            continue;
        }
        if (step_in_name(name, "") < 0)
            continue;
        if (checkpoint_step_of(dir, name) < 0) { /* no manifest: unfinished */
            remove_checkpoint(dir, name);
            continue;
        }
        DIR *step = opendir(path); /* a whole one: its cut-short rewrites */
        struct dirent *file;
        while (step && (file = readdir(step)) != NULL)
            if (has_suffix(file->d_name, ".tmp")) {
                char stale[CONFIG_PATH_MAX + 600];
                snprintf(stale, sizeof stale, "%s/%s", path, file->d_name);
                unlink(stale);
            }
        if (step)
            closedir(step);
    }
    closedir(d);
}
