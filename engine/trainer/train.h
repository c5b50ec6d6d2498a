/* The training loop of one rank: draw a batch, forward, backward, AdamW
 * update; validation and checkpoints when due; metrics for every step. */
#ifndef MOECTL_ENGINE_TRAIN_H
#define MOECTL_ENGINE_TRAIN_H

#include <signal.h>
#include <stdint.h>

#include "engine/balance/balancer.h"
#include "engine/model/checkpoint.h"
#include "engine/protocol/command.h"
#include "engine/core/comm.h"
#include "engine/config/config.h"
#include "engine/model/data.h"
#include "engine/core/error.h"
#include "engine/core/gpu_loader.h"
#include "engine/protocol/metrics.h"
#include "engine/model/model.h"
#include "engine/model/optimizer.h"
#include "engine/moe/placement.h"
#include "engine/moe/sharding.h"
#include "kernels/backend.h"

typedef struct trainer {
    config cfg;
    const comm *comm;       /* this rank in the job */
    int local_batch;        /* sequences this rank trains per step */
    int *rows;              /* (world) sequences each rank trains
                               (cluster.devices[].batch_share) */
    int first_row;          /* this rank's first sequence of the batch */
    backend be;
    gpu_loader gpu;        /* the GPU backend's module, for a GPU device */
    model *model;
    sharding *sharding;     /* the experts over the ranks */
    placement *placement;   /* sharding's table: read it, change it only
                               through trainer_move/split_expert */
    dataset data;
    optimizer_settings opt;
    checkpoint_state state; /* step, tokens seen, seed, data RNG */
    int *inputs;            /* (B, T) the global batch; this rank trains
                               rows [first_row, +local_batch) */
    int *targets;           /* (B, T) */
    int *expert_load;       /* (L, E) of the last step */
    rank_stats *rank;       /* (world) of the last step, on rank 0 */
    double train_s;         /* time spent in training steps, this process */
    double data_s;          /* of which drawing batches */
    double zero_grad_s;     /* of which zeroing gradients */
    double optimizer_s;     /* of which clipping and AdamW */
    char last_checkpoint[CONFIG_PATH_MAX + 32];
    size_t migration_bytes; /* moved by this rank's migrations so far */
    int migrations;         /* experts moved so far */
    balancer bal;           /* measurements on rank 0; policy on all */
    double price_per_hour;  /* Σ over the devices */
    double peak_flops;      /* Σ over the devices */
    spike_verdict spike;    /* the guard's verdict on the last step */
    int test_spike_step;    /* MOECTL_TEST_SPIKE: from this step, */
    int test_spike_left;    /* this many steps (once in the process) */
    double test_spike_scale; /* have their cross-entropy scaled */
    int quiet_failure;      /* ... and another rank says why */
    int failed_together;    /* trainer_run failed on every rank at the same
                               step (a device failure): the failing rank
                               reports it, the others stay quiet */
} trainer;

/* What runs this rank's GEMMs ("fp32, OpenBLAS", "bf16 GEMMs, oneDNN
 * gemm:jit, avx512_core_bf16", "cuBLAS, tf32"). */
void trainer_describe_gemm(const trainer *t, char *out, size_t size);

/* c: the ranks of the job (one rank per cluster device). */
int trainer_create(trainer **out, const config *cfg, const comm *c,
                   moe_error *err);
void trainer_destroy(trainer *t);

/* The first failure of this rank's GPU backend (a runtime, BLAS or
 * allocation error), or NULL: always NULL on a CPU rank. GPU ops do not
 * stop on failure; trainer_run checks after every step. */
const char *trainer_device_error(const trainer *t);

/* Continues from a checkpoint file, or the newest one in a directory. */
int trainer_resume(trainer *t, const char *path, moe_error *err);

/* Trains one step and describes it in *s. Returns -1 on every rank when
 * the step could not be completed (out of memory; err says why). */
int trainer_step(trainer *t, step_stats *s, moe_error *err);

/* After the guard's verdict of persistent spikes (t->spike.rollback):
 * continues from the newest checkpoint in checkpoint.dir with another
 * data order, the guard's counts kept; its path in path_out. -1 on every
 * rank when there is none, or after train.spike_guard.max_rollbacks. */
int trainer_rollback(trainer *t, char *path_out, size_t path_size,
                     moe_error *err);

/* Mean validation cross-entropy over train.eval_batches fixed batches. */
double trainer_validate(trainer *t);

int trainer_checkpoint(trainer *t, char *path_out, size_t path_size,
                       moe_error *err);

/* Moves expert (l, e) with its Adam moments to rank `to`; every rank calls
 * it at the same step boundary. *shipped: the bytes moved. Returns -1 on
 * every rank, nothing moved, when the receiver is out of memory. */
int trainer_move_expert(trainer *t, int l, int e, int to, size_t *shipped,
                        moe_error *err);

/* Gives expert (l, e) rank `to` and splits its rows by `share` (world,
 * in 1/PLACEMENT_SHARE_UNITS, share[to] > 0): each rank that gains a share
 * and had none receives a replica from the expert's present rank. Every
 * rank calls it at the same boundary. As trainer_move_expert otherwise. */
int trainer_split_expert(trainer *t, int l, int e, int to, const int *share,
                         size_t *shipped, moe_error *err);

/* Splits the global batch over the ranks in proportion to weights (world)
 * from the next step; every rank calls it at the same boundary. -1 on
 * every rank, the old rows kept, when a rank is out of memory. */
int trainer_set_shares(trainer *t, const double *weights, moe_error *err);
/* The same with the rows (world, summing to train.batch_size) given. */
int trainer_set_rows(trainer *t, const int *rows, moe_error *err);

/* Why a move or split of expert (l, e) to the ranks with a share in
 * `share` would not fit: the first receiver whose model state (dense and
 * held experts, 16 bytes a parameter, the planner's measure) would exceed
 * its memory_gb, with the figures, in why; 0 when it fits. Every rank
 * reaches the same answer. */
int trainer_check_room(const trainer *t, int l, int e, const int *share,
                       char *why, size_t why_size);

typedef struct train_progress {
    void (*on_step)(const step_stats *s, int last_step, void *user);
    void (*on_val)(int step, double val_loss, void *user);
    void (*on_checkpoint)(int step, const char *path, void *user);
    /* The spike guard acted: "skipped (loss 70 > 1.5 x median 2.6); the
     * batch trains again at step 160", "rolled back to ...". */
    void (*on_spike)(int step, const char *what, void *user);
    void *user;
} train_progress;

typedef enum train_outcome {
    TRAIN_DONE,    /* reached the last step */
    TRAIN_STOPPED, /* *stop_requested became set; checkpoint written */
    TRAIN_FAILED,  /* see err */
} train_outcome;

/* A command to apply at the step boundary after step `step`. */
typedef struct scheduled_command {
    int step;
    command cmd;
} scheduled_command;

struct control_server;

typedef struct train_run_options {
    int last_step;                /* stop after this step (≤ train.steps) */
    struct control_server *control; /* rank 0's control socket, or NULL */
    struct script *script;        /* commands by step or metrics; may be
                                     NULL. Every rank passes the same one;
                                     rank 0 decides what is due. */
    metrics_sink *metrics;        /* may be NULL */
    const train_progress *progress; /* may be NULL */
    volatile sig_atomic_t *stop_requested; /* may be NULL */
} train_run_options;

/* Runs steps until last_step or a stop request, validating every
 * train.eval_every steps and at the end, checkpointing every
 * checkpoint.every steps and at the end. Fills *summary. */
train_outcome trainer_run(trainer *t, const train_run_options *opt,
                          run_summary *summary, moe_error *err);

#endif
