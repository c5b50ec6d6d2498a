/* The step boundary of trainer_run (internal to engine/trainer): the
 * commands due there (the script's, the balance policy's turn, the control
 * socket's), applied on every rank in the same order, each answered with
 * an event record (and a reply to the client that sent it) that carries
 * the job's state after it. Names kept from train.c, whose trainer_run
 * calls them. */
#ifndef MOECTL_ENGINE_TRAINER_COMMANDS_H
#define MOECTL_ENGINE_TRAINER_COMMANDS_H

#include "engine/trainer/train.h"

/* Flags of what the commands at one boundary did. */
enum { APPLIED_STOP = 1, APPLIED_REFUSED = 2 };

typedef struct boundary_state {
    trainer *t;
    const train_run_options *opt;
    metrics_sink *metrics;  /* NULL except on rank 0 */
    char *checkpoint_path;
    int *checkpointed_step;
    int paused;
    int paused_s;  /* the boundary waited paused: not command time */
} boundary_state;

/* Whether a step is a multiple of every (> 0). */
static inline int due(int step, int every)
{
    return every > 0 && step % every == 0;
}

/* The script's commands due after this step (values: the last step's
 * figures, NULL before the first). Returns APPLIED_* flags, or -1. */
int run_script(boundary_state *b, const double *values, moe_error *err);

/* The balance policy's turn (every `every` steps when not off). Returns 0,
 * or -1 on a failure to write metrics. */
int policy_tick(boundary_state *b, moe_error *err);

/* The control socket's commands, repeated while paused; at the end the
 * state is handed to the metrics for the next step record. Returns
 * APPLIED_* flags, or -1. */
int serve_controls(boundary_state *b, moe_error *err);

#endif
