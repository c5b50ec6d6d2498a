/* Metrics as JSON Lines: one record per step, per validation, a run
 * record at the start and a summary at the end, each built through the
 * schema of engine/protocol/record.h. Each line is flushed as it is
 * written so a reader tailing the file sees whole records. */
#ifndef MOECTL_ENGINE_METRICS_H
#define MOECTL_ENGINE_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "engine/config/config.h"
#include "engine/core/error.h"
#include "engine/model/model.h"
#include "engine/protocol/record.h"

typedef struct metrics_sink metrics_sink;
struct control_server;

/* What one training step measured. */
/* What one rank measured in a step (milliseconds unless named). */
typedef struct rank_stats {
    double expert_ms;    /* its experts' GEMMs and SwiGLU */
    double dense_ms;     /* everything else it computed */
    double pass_dense_ms; /* the part of dense_ms in the forward and
                             backward passes, which grows with its rows
                             (not the optimizer's, zeroing's or the
                             batch's fixed costs); the planner's measure
                             of a row, not a record field */
    double alltoall_ms;  /* routing and token exchange, waiting included */
    double allreduce_ms; /* summing replicated gradients, and the loss and
                            gradient norm's sums, waiting included */
    double idle_ms;      /* the slowest rank's busy time minus its own */
    double tokens;       /* rows its experts processed */
    double rows;         /* sequences of the global batch it trained */
    double experts;      /* experts it holds */
    double migration_bytes; /* moved by its migrations so far */
    double expert_flops_per_s; /* achieved on its expert work (emulated
                                  slowdown included) */
    double state_bytes;  /* model state it needs: dense state and the
                            experts it hosts (16 bytes a parameter) */
    double capacity_bytes; /* cluster.devices[].memory_gb */
    double rss_bytes;    /* resident memory of its process */
    double peak_rss_bytes; /* the most it has been resident (VmHWM) */
    /* What it holds, by kind, as allocated: */
    double expert_state_bytes; /* its experts' weights, grads, moments */
    double dense_state_bytes;  /* the replicated dense state */
    double activation_bytes;   /* the model's and the expert rows' */
    double staging_bytes;      /* all-to-all and all-reduce staging and
                                  dispatch tables */
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
    int skipped;            /* the spike guard did not apply the step */
    int spikes;             /* steps the guard skipped so far */
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
    int spikes;             /* steps the spike guard skipped, in all */
    int rollbacks;          /* its roll backs, in all */
    double migration_bytes;
    /* Wall time by phase, seconds. */
    double train_s, val_s, checkpoint_s, command_s;
} run_summary;

/* path "-" writes to standard output; NULL writes no file (records then
 * only go to a control server). run_name (the config's name) starts the
 * run_id of every record (record.h). */
int metrics_open(metrics_sink **out, const char *path, const char *run_name,
                 moe_error *err);
/* Every record also goes to RUN_DIR/metrics.jsonl, appended to when
 * `append` (a resumed run); the run record names the directory. */
int metrics_add_run_file(metrics_sink *sink, const char *run_dir,
                         int append, moe_error *err);
/* Every record written from now on is also folded into p's exposition
 * (engine/protocol/prometheus.h). */
struct prometheus;
void metrics_attach_prometheus(metrics_sink *sink, struct prometheus *p);
/* Every record written from now on also goes to the clients of s, whose
 * replies carry the same run_id. */
void metrics_attach_control(metrics_sink *sink, struct control_server *s);
void metrics_close(metrics_sink *sink);
/* The first write to a metrics file that failed (a full disk, say), or
 * NULL. Writes do not fail for it: the trainer checks at the step
 * boundary and stops every rank with a checkpoint, the files left as
 * they were. */
const char *metrics_failure(const metrics_sink *sink);
const char *metrics_run_id(const metrics_sink *sink);
/* The job's state at this boundary: step records written from now on
 * carry it (the state the step ran in). */
void metrics_set_state(metrics_sink *sink, const record_state *state);

/* One layer's imbalance of a step's load: max/mean and coefficient of
 * variation (NAN when nothing was routed), dead (unrouted) experts. The
 * one computation behind the records and the script's metrics. */
typedef struct metrics_imbalance {
    double max_mean, cv;
    int dead;
} metrics_imbalance;
void metrics_layer_imbalance(const int *load, int experts,
                             metrics_imbalance *out);
/* tokens_per_s / ideal_tokens_per_s: the fraction of the ideal speed. */
double metrics_ideal_share(const step_stats *s);

/* What runs a device's matrix products, as its backend says: "fp32,
 * OpenBLAS", or the library, kernel and ISA oneDNN chose. */
enum { METRICS_GEMM_MAX = 160 };
/* The run record; gemm: (devices) strings of METRICS_GEMM_MAX bytes, one
 * per rank (trainer_describe_gemm, gathered). */
int metrics_write_run(metrics_sink *sink, const config *cfg, const model *m,
                      const char *gemm, int resumed_step, moe_error *err);
int metrics_write_step(metrics_sink *sink, const step_stats *s,
                       moe_error *err);
int metrics_write_val(metrics_sink *sink, int step, double val_loss,
                      moe_error *err);
int metrics_write_checkpoint(metrics_sink *sink, int step, const char *path,
                             moe_error *err);
/* A command applied (or refused) at the boundary after `step`. */
typedef struct metrics_event {
    int step;
    const char *command;       /* in the command grammar */
    record_origin origin;
    int ok;                    /* applied, not refused */
    const char *reply;         /* for display; may be NULL */
    double duration_ms;        /* NAN: not timed */
    const record_state *state; /* after the command */
} metrics_event;
int metrics_write_event(metrics_sink *sink, const metrics_event *event,
                        moe_error *err);
struct json_t;
/* [[layer, expert, [[rank, share], ...]], ...] for the experts of a share
 * table (layers, experts, ranks in 1/units) split over several ranks,
 * their rank (placement) first: the "splits" of step and plan records. */
struct json_t *metrics_splits_json(int layers, int experts, int ranks,
                                   const int *placement, const int *share,
                                   int units);
/* Any record built by the caller with record_begin (it is consumed);
 * the common fields are added here. */
int metrics_write_record(metrics_sink *sink, struct json_t *record,
                         moe_error *err);
int metrics_write_summary(metrics_sink *sink, const run_summary *s,
                          moe_error *err);

#endif
