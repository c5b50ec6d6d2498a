#include "engine/protocol/registry.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int registry_folder(char *out, size_t size, moe_error *err)
{
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    if (runtime && runtime[0] == '/' && stat(runtime, &st) == 0 &&
        S_ISDIR(st.st_mode))
        snprintf(out, size, "%s/moectl-jobs", runtime);
    else
        snprintf(out, size, "/tmp/moectl-jobs-%ld", (long)getuid());
    if (mkdir(out, 0700) < 0 && errno != EEXIST)
        return error_set_errno(err, "cannot create the job registry %s", out);
    /* Another user's folder of the same name is not ours to trust. */
    if (lstat(out, &st) < 0 || !S_ISDIR(st.st_mode) ||
        st.st_uid != getuid() || (st.st_mode & 077))
        return error_set(err, "the job registry %s is not a private "
                              "directory of this user", out);
    return 0;
}

int registry_add(const registry_entry *e, char *path, size_t size,
                 moe_error *err)
{
    char folder[CONFIG_PATH_MAX];
    if (registry_folder(folder, sizeof folder, err) < 0)
        return -1;
    json_t *o = json_pack("{s:I, s:s, s:s, s:s, s:i, s:s, s:f}", "pid",
                          (json_int_t)e->pid, "name", e->name, "run_dir",
                          e->run_dir, "socket", e->socket, "ranks", e->ranks,
                          "config", e->config, "started", e->started);
    if (!o)
        return error_set(err, "out of memory");
    char tmp[CONFIG_PATH_MAX + 32];
    snprintf(path, size, "%s/%ld.json", folder, e->pid);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    /* Written whole, then renamed: a reader never sees half an entry. */
    int rc = json_dump_file(o, tmp, JSON_COMPACT);
    json_decref(o);
    if (rc < 0 || rename(tmp, path) < 0) {
        unlink(tmp);
        return error_set_errno(err, "cannot write the job registry entry %s",
                               path);
    }
    return 0;
}

void registry_remove(const char *path)
{
    if (path && path[0])
        unlink(path);
}

static int read_entry(const char *path, registry_entry *e)
{
    json_t *o = json_load_file(path, 0, NULL);
    if (!o)
        return -1;
    json_int_t pid = 0;
    const char *name = "", *dir = "", *sock = "", *source = "";
    int ranks = 0;
    double started = 0;
    int rc = json_unpack(o, "{s:I, s:s, s:s, s:s, s:i, s:s, s:F}", "pid",
                         &pid, "name", &name, "run_dir", &dir, "socket",
                         &sock, "ranks", &ranks, "config", &source,
                         "started", &started);
    if (rc == 0) {
        memset(e, 0, sizeof *e);
        e->pid = (long)pid;
        snprintf(e->name, sizeof e->name, "%s", name);
        snprintf(e->run_dir, sizeof e->run_dir, "%s", dir);
        snprintf(e->socket, sizeof e->socket, "%s", sock);
        snprintf(e->config, sizeof e->config, "%s", source);
        e->ranks = ranks;
        e->started = started;
    }
    json_decref(o);
    return rc;
}

/* Whether pid is a live process: not gone, and not a zombie waiting for
 * its parent (a job killed a moment ago). */
static int alive(long pid)
{
    if (pid <= 0 || (kill((pid_t)pid, 0) < 0 && errno == ESRCH))
        return 0;
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1; /* no /proc: kill's answer stands */
    int zombie = 0;
    if (fgets(line, sizeof line, f)) {
        const char *end = strrchr(line, ')'); /* after the command name */
        zombie = end && end[1] == ' ' && (end[2] == 'Z' || end[2] == 'X');
    }
    fclose(f);
    return !zombie;
}

static int by_start(const void *a, const void *b)
{
    const registry_entry *x = a, *y = b;
    return (x->started > y->started) - (x->started < y->started);
}

int registry_list(registry_entry **out, int *count, moe_error *err)
{
    *out = NULL;
    *count = 0;
    char folder[CONFIG_PATH_MAX];
    if (registry_folder(folder, sizeof folder, err) < 0)
        return -1;
    DIR *d = opendir(folder);
    if (!d)
        return error_set_errno(err, "cannot read the job registry %s",
                               folder);
    registry_entry *list = NULL;
    int n = 0, cap = 0;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        size_t len = strlen(ent->d_name);
        if (len < 6 || strcmp(ent->d_name + len - 5, ".json") != 0)
            continue;
        char path[CONFIG_PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", folder, ent->d_name);
        registry_entry e;
        if (read_entry(path, &e) < 0)
            continue;
        /* A process that died without removing its entry. */
        if (!alive(e.pid)) {
            unlink(path);
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            registry_entry *grown = realloc(list, (size_t)cap * sizeof *list);
            if (!grown) {
                free(list);
                closedir(d);
                return error_set(err, "out of memory");
            }
            list = grown;
        }
        list[n++] = e;
    }
    closedir(d);
    if (n > 1)
        qsort(list, (size_t)n, sizeof *list, by_start);
    *out = list;
    *count = n;
    return 0;
}

int registry_socket_of(const char *name_or_path, char *out, size_t size)
{
    registry_entry e;
    if (strchr(name_or_path, '/') || access(name_or_path, F_OK) == 0) {
        snprintf(out, size, "%s", name_or_path);
        return 0;
    }
    if (registry_find(name_or_path, &e) < 0)
        return -1;
    snprintf(out, size, "%s", e.socket);
    return 0;
}

int registry_find(const char *name, registry_entry *out)
{
    registry_entry *list;
    int count;
    moe_error err;
    if (registry_list(&list, &count, &err) < 0)
        return -1;
    int found = -1;
    for (int i = count - 1; i >= 0 && found < 0; i--) /* the newest */
        if (strcmp(list[i].name, name) == 0) {
            *out = list[i];
            found = 0;
        }
    free(list);
    return found;
}
