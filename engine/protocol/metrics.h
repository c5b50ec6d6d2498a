/* Metrics as JSON Lines: one record per step, per validation, a run
 * record at the start and a summary at the end (schema in README.md).
 * Built with jansson; each line is flushed as it is written so a reader
 * tailing the file sees whole records. */
#ifndef MOECTL_ENGINE_METRICS_H
#define MOECTL_ENGINE_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "engine/config/config.h"
#include "engine/core/error.h"
#include "engine/model/model.h"

typedef struct metrics_sink metrics_sink;
struct control_server;

/* What one training step measured. */
/* What one rank measured in a step (milliseconds unless named). */
typedef struct rank_stats {
    double expert_ms;    /* its experts' GEMMs and SwiGLU */
    double dense_ms;     /* everything else it computed */
    double alltoall_ms;  /* token and gradient exchange, waiting included */
    double allreduce_ms; /* summing replicated gradients */
    double idle_ms;      /* the slowest rank's busy time minus its own */
    double tokens;       /* rows its experts processed */
    double experts;      /* experts it holds */
    double migration_bytes; /* moved by its migrations so far */
    double expert_flops_per_s; /* achieved on its expert work (emulated
                                  slowdown included) */
    double state_bytes;  /* model state it needs: dense state and the
                            experts it hosts (16 bytes a parameter) */
    double capacity_bytes; /* cluster.devices[].memory_gb */
    double rss_bytes;    /* resident memory of its process */
} rank_stats;

typedef struct step_stats {
    int step;             /* 1-based index of the step just completed */
    double loss;          /* mean cross-entropy, nats per byte */
    double aux_loss;      /* Switch aux loss over all layers, α applied */
    double z_loss;        /* router z-loss over all layers, coef applied */
    double lr;
    double grad_norm;     /* before clipping */
    double step_s;        /* wall time of forward + backward + update */
    double tokens_per_s;  /* tokens of this step / step_s */
    double flops_per_s;   /* model FLOPs of this step / step_s */
    int tokens;           /* tokens trained this step */
    uint64_t tokens_seen; /* since step 0 */
    double elapsed_s;     /* training time in this process */
    int dropped;          /* assignments dropped by capacity */
    int layers, experts;
    const int *expert_load; /* (layers, experts) tokens routed this step */
    int ranks;              /* ranks in the job */
    const rank_stats *rank; /* (ranks), on rank 0 */
    const config_device *devices; /* (ranks) */
    const int *placement;   /* (layers, experts) rank of each expert */
    const int *share;       /* (layers, experts, ranks) split shares in
                               1/MODEL_SHARE_UNITS, or NULL: unsplit */
    int share_units;
    int split_experts;      /* experts split over several ranks */
    int placement_version;
    /* Balance and cost, on rank 0. */
    const double *load_ema; /* (layers, experts) moving average of load */
    const float *router_bias; /* (layers, experts) aux-free balance bias */
    double routing_mix;     /* Ling warm-up weight of the real logits */
    int straggler;          /* the rank the others waited for, -1: none */
    double ideal_tokens_per_s; /* with expert work split in proportion to
                                  the ranks' measured speeds */
    double cost_per_hour;   /* Σ price_per_hour */
    double cost_per_mtok;   /* cost per 1M tokens at this step's speed */
    double mfu;             /* 6·active·tokens_per_s / Σ peak */
} step_stats;

typedef struct run_summary {
    int first_step, last_step;
    double loss, val_loss; /* NAN when not measured */
    int val_step;
    double tokens_per_s;   /* tokens trained / training time */
    double elapsed_s;
    uint64_t tokens_seen;
    const char *checkpoint; /* last checkpoint written, or NULL */
    const char *status;     /* "done" | "stopped" */
    double cost_per_mtok;   /* Σ price_per_hour at the run's tokens/s */
    double mfu;             /* at the run's tokens/s */
    int migrations;         /* experts moved in this run */
    double migration_bytes;
    /* Wall time by phase, seconds. */
    double train_s, val_s, checkpoint_s, command_s;
} run_summary;

/* path "-" writes to standard output; NULL writes no file (records then
 * only go to a control server). */
int metrics_open(metrics_sink **out, const char *path, moe_error *err);
/* Every record written from now on also goes to the clients of s. */
void metrics_attach_control(metrics_sink *sink, struct control_server *s);
void metrics_close(metrics_sink *sink);

int metrics_write_run(metrics_sink *sink, const config *cfg, const model *m,
                      int resumed_step, moe_error *err);
int metrics_write_step(metrics_sink *sink, const step_stats *s,
                       moe_error *err);
int metrics_write_val(metrics_sink *sink, int step, double val_loss,
                      moe_error *err);
int metrics_write_checkpoint(metrics_sink *sink, int step, const char *path,
                             moe_error *err);
/* A command applied at the boundary after `step`, with its reply (may be
 * NULL) and how long it took (NAN: not timed). */
int metrics_write_event(metrics_sink *sink, int step, const char *command_text,
                        const char *reply, double duration_ms,
                        moe_error *err);
struct json_t;
/* [[layer, expert, [[rank, share], ...]], ...] for the experts of a share
 * table (layers, experts, ranks in 1/units) split over several ranks,
 * their rank (placement) first: the "splits" of step and plan records. */
struct json_t *metrics_splits_json(int layers, int experts, int ranks,
                                   const int *placement, const int *share,
                                   int units);
/* Any record built by the caller (it is consumed). */
int metrics_write_record(metrics_sink *sink, struct json_t *record,
                         moe_error *err);
int metrics_write_summary(metrics_sink *sink, const run_summary *s,
                          moe_error *err);

#endif
