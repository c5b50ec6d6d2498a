/* The loss-spike guard (train.spike_guard), after the Ling report's
 * stability lessons: a step whose loss or gradient norm jumps past a
 * factor of the running median of the steps it let through is not
 * applied (no optimizer update), and its batch is trained again later;
 * spikes that repeat lower the learning rate for a while; spikes that
 * persist ask for a roll back to the newest checkpoint. A non-finite loss
 * or gradient norm is always a spike.
 *
 * The guard only judges: the trainer applies its verdicts. Its state is
 * plain data, kept in the checkpoint, so a resumed run judges as the run
 * it continues would have. Every rank judges the same figures (rank 0's)
 * and so reaches the same verdicts. */
#ifndef MOECTL_ENGINE_SPIKE_GUARD_H
#define MOECTL_ENGINE_SPIKE_GUARD_H

#include "engine/config/config.h"
#include "engine/core/rng.h"

enum {
    SPIKE_GUARD_WINDOW_MAX = CONFIG_SPIKE_WINDOW_MAX,
    SPIKE_GUARD_QUEUE_MAX = 16, /* skipped batches waiting to train */
    SPIKE_GUARD_RECENT_MAX = CONFIG_SPIKE_RECENT_MAX,
};

/* A skipped batch, due again at `due_step`: the data RNG it was drawn
 * from, so that drawing from it again gives the same sequences. */
typedef struct spike_requeued {
    int due_step;
    rng batch;
} spike_requeued;

typedef struct spike_guard_state {
    double loss[SPIKE_GUARD_WINDOW_MAX];  /* of applied steps, oldest
                                             first */
    double grad[SPIKE_GUARD_WINDOW_MAX];
    int count;                            /* filled, ≤ window */
    int spikes;                           /* steps skipped so far */
    int consecutive;                      /* spikes in a row, now */
    int recent[SPIKE_GUARD_RECENT_MAX];   /* steps of the latest spikes */
    int recent_count;
    int lowered_until;                    /* lr scaled through this step */
    int rollbacks;                        /* rolls back so far */
    int queued;
    spike_requeued queue[SPIKE_GUARD_QUEUE_MAX];
} spike_guard_state;

typedef struct spike_verdict {
    int spike;            /* the step is not applied */
    int requeued_to;      /* the batch trains again at this step; -1 */
    int lowered;          /* this spike lowered the lr (through
                             lowered_until) */
    int rollback;         /* spikes persist: roll back */
    double median_loss;   /* NAN before min_steps */
    double median_grad;
    char why[160];        /* "loss 41.2 > 1.5 x median 2.71" */
} spike_verdict;

void spike_guard_reset(spike_guard_state *g);

/* Judges step `step` and updates the state: an applied step joins the
 * medians, a spike is counted, its batch (drawn from `batch`) queued
 * unless it was itself a requeued one (`replayed`). */
spike_verdict spike_guard_judge(spike_guard_state *g,
                                const config_spike_guard *s, int step,
                                double loss, double grad_norm,
                                const rng *batch, int replayed);

/* The factor on the learning rate of step `step`: lr_factor while lowered,
 * else 1. */
double spike_guard_lr_scale(const spike_guard_state *g,
                            const config_spike_guard *s, int step);

/* A queued batch due at or before `step`: removed from the queue into
 * *batch, 1; else 0. */
int spike_guard_take_due(spike_guard_state *g, int step, rng *batch);

/* The state as the checkpoint's manifest keeps it ("spike_guard"), and
 * back: -1 on a malformed one; NULL (an older checkpoint) is an empty
 * history. */
struct json_t;
struct json_t *spike_guard_to_json(const spike_guard_state *g);
int spike_guard_from_json(struct json_t *j, spike_guard_state *g);

#endif
