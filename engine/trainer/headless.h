/* The headless driver: trains a configuration without a console, with a
 * human progress line on stderr and JSON Lines metrics. */
#ifndef MOECTL_ENGINE_HEADLESS_H
#define MOECTL_ENGINE_HEADLESS_H

#include "engine/core/comm.h"
#include "engine/config/config.h"

typedef struct headless_options {
    int steps;               /* stop after this step; 0: train.steps */
    const char *metrics;     /* path, "-" for stdout, or NULL */
    const char *resume;      /* checkpoint file or directory, or NULL */
    const char *socket;      /* control socket path, or NULL for a fresh
                                private directory */
    const char *const *at;   /* "STEP:COMMAND" lines (--at), in any order */
    int at_count;
    const char *script;      /* --script: a headless script, or NULL */
    const char *run_name;    /* --name: the run directory's name, or NULL */
    const char *run_dir;     /* ROOT/NAME (run_dir.h), or NULL: none */
    int resume_run;          /* --resume named a run directory: continue it
                                (append to its metrics) */
    const char *prometheus;  /* --prometheus [ADDR:]PORT, or NULL */
    const char *prometheus_textfile; /* --prometheus-textfile PATH, or NULL */
} headless_options;

/* Exit status: 0 done, 1 runtime failure, 2 bad input (a malformed
 * script included, before anything starts), 3 stopped by a `stop`
 * command or a signal after a clean checkpoint. */
/* --steps past train.steps is bad input: returns -1, after saying why on
 * stderr when `report` is set. */
int headless_check_steps(const config *cfg, const headless_options *opt,
                         int report);

/* Checks what can be checked before a job starts (--steps, --script,
 * --at); says why on stderr and returns -1 on bad input. */
int headless_check(const config *cfg, const headless_options *opt);

int headless_run(const config *cfg, const headless_options *opt,
                 const comm *c);
/* 1 when the last headless_run failed on every rank together (a rank
 * could not start and all learned it), so no MPI_Abort is needed. */
int headless_failed_together(void);

#endif
