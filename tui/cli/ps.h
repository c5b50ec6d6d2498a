/* moectl ps: the running jobs of this user, from the job registry
 * (engine/protocol/registry.h), with each run's latest step and state
 * read from its run directory's metrics. */
#ifndef MOECTL_TUI_PS_H
#define MOECTL_TUI_PS_H

#include <stdio.h>

/* Prints the table (or "no running jobs") to out; returns an exit status
 * (0, or 1 when the registry cannot be read). */
int ps_run(FILE *out);

#endif
