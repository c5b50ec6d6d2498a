/* What a run needs of the file system, checked before any work (before
 * mpirun, before the first step): the corpus, the checkpoint directory,
 * the hostfile. Nothing is created: a directory passes when it exists
 * writable, or when its nearest existing ancestor is a writable
 * directory. Reported where the key was set, as the cross-field checks. */
#include "engine/config/config_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int config_dir_writable(const char *dir, char *why, size_t why_size)
{
    char probe[CONFIG_PATH_MAX];
    snprintf(probe, sizeof probe, "%s", dir[0] ? dir : ".");
    for (;;) {
        struct stat st;
        if (stat(probe, &st) == 0) {
            if (!S_ISDIR(st.st_mode)) {
                snprintf(why, why_size, "%s is not a directory", probe);
                return -1;
            }
            if (access(probe, W_OK | X_OK) != 0) {
                snprintf(why, why_size, "%s is not writable", probe);
                return -1;
            }
            return 0;
        }
        if (errno != ENOENT) {
            snprintf(why, why_size, "%s: %s", probe, strerror(errno));
            return -1;
        }
        char *slash = strrchr(probe, '/');
        while (slash && slash > probe && slash[1] == '\0') { /* "a/b/" */
            *slash = '\0';
            slash = strrchr(probe, '/');
        }
        if (!slash)
            snprintf(probe, sizeof probe, ".");
        else if (slash == probe)
            probe[1] = '\0'; /* "/" */
        else
            *slash = '\0';
    }
}

int config_regular_file(const char *path, long long *size, char *why,
                        size_t why_size)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(why, why_size, "%s: %s", path,
                 errno == ENOENT ? "no such file" : strerror(errno));
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        snprintf(why, why_size, "%s is a directory, not a file", path);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, why_size, "%s is not a regular file (a FIFO, socket "
                 "or device would block or never end)", path);
        return -1;
    }
    if (access(path, R_OK) != 0) {
        snprintf(why, why_size, "%s is not readable", path);
        return -1;
    }
    if (size)
        *size = (long long)st.st_size;
    return 0;
}

int checks_files(load_ctx *ctx)
{
    const config *c = ctx->cfg;
    char why[CONFIG_PATH_MAX + 160];
    long long size = 0;
    if (config_regular_file(c->data.path, &size, why, sizeof why) < 0)
        return checks_fail_key(ctx, CFG(data.path), "%s%s", why,
                               strcmp(c->data.path, "data/kjv.txt") == 0
                                   ? " (scripts/setup.sh extracts the "
                                     "default corpus there; run from the "
                                     "repository root)"
                                   : "");
    /* The training and validation parts each hold a sequence and its
     * next-byte target (engine/model/data.c). */
    long long need = c->model.seq_len + 2;
    long long train = (long long)((double)size * (1.0 - c->data.val_fraction));
    if (train < need || size - train < need)
        return checks_fail_key(ctx, CFG(data.path),
                               "%s: %lld bytes is too small for seq_len %d "
                               "with val_fraction %g (each part needs %lld)",
                               c->data.path, size, c->model.seq_len,
                               c->data.val_fraction, need);
    if (c->checkpoint.dir[0] &&
        config_dir_writable(c->checkpoint.dir, why, sizeof why) < 0)
        return checks_fail_key(ctx, CFG(checkpoint.dir),
                               "cannot write checkpoints to %s: %s",
                               c->checkpoint.dir, why);
    if (c->launcher.hostfile[0] &&
        config_regular_file(c->launcher.hostfile, NULL, why, sizeof why) < 0)
        return checks_fail_key(ctx, CFG(launcher.hostfile), "%s", why);
    return 0;
}
