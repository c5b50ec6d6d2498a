/* A run's directory: everything one run leaves behind, in one place.
 *
 *   runs/NAME/config.yaml     the resolved configuration (overrides applied)
 *   runs/NAME/metrics.jsonl   every record of the run (always written; a
 *                             resumed run appends)
 *   runs/NAME/checkpoints/    its checkpoints (unless checkpoint.dir is
 *                             set): rotation stays within the run
 *   runs/NAME/engine.log      the job's output, when a console started it
 *   runs/NAME/socket          the control socket's path while it runs
 *
 * NAME is --name, or the configuration's name and the UTC start time
 * (tiny-20261206-114501); `--resume runs/NAME` continues that run in its
 * own directory. */
#ifndef MOECTL_ENGINE_RUN_DIR_H
#define MOECTL_ENGINE_RUN_DIR_H

#include <stddef.h>

#include "engine/config/config.h"
#include "engine/core/error.h"

enum { RUN_NAME_MAX = 96 };

/* Where run directories go: $MOECTL_RUNS_DIR, else "runs" (relative to the
 * current directory). */
const char *run_dir_root(void);

/* The default name: "<config name>-<UTC YYYYmmdd-HHMMSS>". */
void run_dir_default_name(char *out, size_t size, const char *config_name);

/* 0 when `name` can name a run (1..95 characters of A-Z a-z 0-9 . _ -, not
 * starting with '.'); else -1 with the reason in why. */
int run_dir_check_name(const char *name, char *why, size_t why_size);

/* 1 when `path` is a run directory (it holds config.yaml), with its name
 * (the last path component) in name; else 0. */
int run_dir_is_run(const char *path, char *name, size_t size);

/* ROOT/NAME into out. */
void run_dir_path(char *out, size_t size, const char *name);

/* Makes the directory (and ROOT) if missing. A new run refuses a directory
 * that already holds a run's metrics (another run of the same name);
 * `resuming` continues it. Writes config.yaml (a resumed run keeps the
 * first and writes config-resumed.yaml). */
int run_dir_prepare(const char *dir, const config *cfg, int resuming,
                    moe_error *err);

/* Writes DIR/socket (the control socket's path), or removes it (NULL). */
void run_dir_note_socket(const char *dir, const char *socket);

#endif
