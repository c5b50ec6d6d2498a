/* The per-user list of running jobs, so that none is lost: each job's rank
 * 0 writes one small JSON file when its control socket opens and removes
 * it when it ends. `moectl ps` lists them (dropping the entries of
 * processes that died without removing theirs) and `moectl attach NAME`
 * finds a job's socket by its run name.
 *
 * The folder: $XDG_RUNTIME_DIR/moectl-jobs when that variable names a
 * directory, else /tmp/moectl-jobs-UID; mode 0700 either way. One file a
 * job: PID.json, {"pid", "name", "run_dir", "socket", "ranks", "config",
 * "started"}. */
#ifndef MOECTL_ENGINE_REGISTRY_H
#define MOECTL_ENGINE_REGISTRY_H

#include <stddef.h>

#include "engine/config/config.h"
#include "engine/core/error.h"

enum { REGISTRY_NAME_MAX = 96, REGISTRY_SOCKET_MAX = 108 };

typedef struct registry_entry {
    long pid;                          /* rank 0's process */
    char name[REGISTRY_NAME_MAX];      /* the run's name */
    char run_dir[CONFIG_PATH_MAX];     /* absolute */
    char socket[REGISTRY_SOCKET_MAX];  /* the control socket */
    int ranks;
    char config[CONFIG_PATH_MAX];      /* the configuration's source */
    double started;                    /* Unix seconds */
} registry_entry;

/* The registry's folder into out, created (0700) when missing. */
int registry_folder(char *out, size_t size, moe_error *err);

/* Writes e's file; its path into path (for registry_remove). */
int registry_add(const registry_entry *e, char *path, size_t size,
                 moe_error *err);
void registry_remove(const char *path);

/* The live entries, oldest first, in a malloc'd array (free it); the
 * files of dead processes are removed. -1 when the folder cannot be read
 * (err says why). */
int registry_list(registry_entry **out, int *count, moe_error *err);

/* The live entry named `name`: 0, or -1 when there is none. */
int registry_find(const char *name, registry_entry *out);

/* A control socket from what an operator typed: a path (it has a '/' or
 * exists) as it is, else a running job's name looked up here. 0, or -1
 * when it is neither. */
int registry_socket_of(const char *name_or_path, char *out, size_t size);

#endif
