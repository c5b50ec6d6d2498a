/* What the console knows about a job: built only from the records the
 * engine publishes (JSON Lines), so the console owns no training state.
 * Every figure has a valid flag: a missing one shows as n/a. */
#ifndef MOECTL_TUI_VIEW_H
#define MOECTL_TUI_VIEW_H

#include <stddef.h>

#include "engine/config/config.h"
#include "engine/protocol/record.h"

enum {
    VIEW_HISTORY = 4096,
    VIEW_EVENTS = 1024,
    VIEW_EVENT_BYTES = 256,
    VIEW_MAX_RANKS = 64,
    /* The straggler shown is the rank most often waited for over this
     * many steps: the per-step one changes too often to read. */
    VIEW_STRAGGLER_WINDOW = 64,
};

/* The balance policy, as far as the records tell: a config_policy, or
 * VIEW_POLICY_UNKNOWN before a record told it. */
typedef int view_policy;
enum { VIEW_POLICY_UNKNOWN = -1 };

/* A measured figure from step records: the latest value and its moving
 * average, valid 0 when the latest record lacked it (absent or null) so
 * that it shows as n/a, not stale. The average weighs each record by what
 * the figure is per: rates (tokens/s, MFU) by the step's time, so that
 * they are total work over total time, and costs per token by its tokens;
 * each record's weight decays by 0.9 per newer one. */
typedef struct view_figure {
    double now, avg;
    double weighted_sum, weight; /* moving sums behind avg */
    int valid;
} view_figure;

typedef struct view_device {
    char name[64];
    char backend[8];
    double price_per_hour;
    int emulated;
} view_device;

typedef struct view_rank {
    double expert_ms, dense_ms, alltoall_ms, allreduce_ms, idle_ms;
    double tokens;
    int rows;      /* sequences of the global batch it trains */
    int experts;
    double expert_flops_per_s;     /* NAN when not published */
    double state_gb, capacity_gb;  /* model state it needs / device memory */
    double rss_gb;
    double used_gb; /* what it holds: expert and dense state, activations,
                       staging (NAN when not published) */
} view_rank;

/* The latest "plan" record. */
typedef struct view_plan {
    int have;
    int step;
    int trigger;        /* record_trigger (plan, apply, suggest, auto);
                           -1: a trigger this console does not know */
    int applied;
    int moves;          /* experts whose rank or split changes */
    int splits;         /* experts split in the plan */
    double before_ms, after_ms; /* predicted step time */
    double gain;                /* predicted fraction of a step saved */
    double moved_bytes;
} view_plan;

/* The latest "plan_result" record: an applied plan, measured. */
typedef struct view_plan_result {
    int have;
    int step, applied_step, steps;
    int delivered;      /* at least half the predicted gain was measured,
                           outside the noise */
    double before_ms, predicted_ms, measured_ms; /* medians but predicted */
    double noise_ms;    /* what the medians differ by by chance */
    char verdict[16];   /* delivered, missed or noise */
} view_plan_result;

typedef struct view {
    /* From the run record. */
    int have_run;
    char config[64];
    char currency[16];
    int steps_total;
    int layers, experts;
    int tokens_per_step;
    double flops_per_token;
    double params, active_params; /* parameters, and those a token uses */
    double expert_state_bytes;    /* model state of one routed expert */
    int device_count;
    view_device devices[VIEW_MAX_RANKS];
    char run_dir[4096];           /* the run's directory, or "" */

    /* From step records. */
    int have_step;
    int step;
    double loss, lr, model_flops_per_s;
    double elapsed_s, step_ms;
    view_figure tokens_per_s;        /* by time */
    view_figure mfu;                 /* 0..1, by time */
    view_figure efficiency;          /* the step's ideal_share: tokens/s
                                        / ideal tokens/s, by time */
    view_figure cost_per_hour;       /* in currency, by time */
    view_figure cost_per_mtok, cost_per_btok, cost_per_ttok; /* by tokens */
    int *expert_load;   /* (layers, experts) of the last step */
    int *placement;     /* (layers, experts) */
    double *kept;       /* (layers, experts) share of its rows an expert's
                           rank computes: 1 unless split */
    int *holders;       /* (layers, experts) ranks sharing it: 1 unless
                           split */
    int split_experts;
    double *load_ema;   /* (layers, experts) moving average of tokens */
    int have_load_ema;  /* the last step record had load_ema */
    double *max_mean;   /* (layers) this step's max/mean load; NAN n/a */
    double *cv;         /* (layers) coefficient of variation; NAN n/a */
    int *dead;          /* (layers) experts routed nothing; -1 n/a */
    int have_imbalance; /* the last step record had imbalance */
    int straggler;      /* rank the others waited for this step; -1 none */
    int stragglers[VIEW_STRAGGLER_WINDOW]; /* ring of the last steps' */
    int straggler_count;                    /* total ever seen */
    int placement_version;
    int rank_count;
    view_rank ranks[VIEW_MAX_RANKS];
    /* The whole run's losses from its first step, downsampled: slot i is
     * the mean over steps first_step + i * stride .. + stride - 1; when a
     * step falls past the last slot, neighbouring slots merge and the
     * stride doubles. */
    double loss_history[VIEW_HISTORY];
    double val_history[VIEW_HISTORY];  /* NAN where no validation */
    int loss_n[VIEW_HISTORY], val_n[VIEW_HISTORY]; /* steps in each mean */
    int history_count;
    int history_first_step;
    int history_stride;                /* steps a slot, a power of two */
    int history_last_step;             /* the newest step with a loss */
    int history_last_val_step;         /* ... with a validation loss */
    int history_loaded;                /* the run's file was read */
    int spikes;                        /* steps the spike guard skipped */

    /* From the summary record, at the end. */
    int have_summary;
    int summary_last_step;
    double summary_loss, summary_val_loss, summary_tokens_per_s;
    double summary_cost_per_mtok, summary_mfu, summary_elapsed_s;
    char summary_checkpoint[4096];

    int have_val;
    double val_loss;

    /* Balance: the latest plan and result, and the policy: from the run
     * record's balance (as configured), then the "state" of every step,
     * event and reply record, and plan triggers (auto, suggest). */
    view_plan plan;
    view_plan_result plan_result;
    view_policy policy;
    int policy_every;        /* 0: not known */
    double policy_min_gain;  /* fraction; NAN: not known */

    /* The job's latest state (record_state): valid when have_state. */
    int have_state;
    record_state state;
    int paused;              /* state.paused, 0 until known */
    char run_id[RECORD_RUN_ID_MAX]; /* of the latest record; "" before */

    /* Status: running, paused, stopped, done, failed. */
    char status[16];

    char events[VIEW_EVENTS][VIEW_EVENT_BYTES];
    int event_count;      /* total ever added; the last VIEW_EVENTS kept */

    /* To show a command's reply once: the last event record's command,
     * its step and slot (a reply with the same command and state.step is
     * that event's), and whether a plan record came since. */
    char last_command[96];
    char last_reply[VIEW_EVENT_BYTES];
    int last_event_step;
    int last_event_ok;      /* the event's ok: 0 when the job refused it */
    double last_event_duration_ms; /* NAN when the event was not timed */
    int last_event_index;   /* -1: none */
    int plan_before_event;
} view;

void view_init(view *v);
void view_finish(view *v);

/* Folds one record (a JSON text, no newline) into the view. Returns 0, or
 * -1 for a line that is not a record (it is ignored). */
int view_apply(view *v, const char *line);

/* Reads the run's earlier records from RUN_DIR/metrics.jsonl (the run
 * record names it): the loss and validation history from its first step
 * and the events, plans and checkpoints, as if they had been seen live.
 * Step records are read for their loss only (fast on long runs). Returns
 * the records read, or -1 when the file cannot be opened. */
int view_load_history(view *v, const char *metrics_path);

/* Adds a line to the event log. */
void view_event(view *v, const char *text);

/* The rank most often the straggler over the last VIEW_STRAGGLER_WINDOW
 * steps, and the fraction of those steps; -1 when none was published. */
int view_straggler(const view *v, double *share);

/* Cost in the run's currency: the step records' figures, averaged (see
 * view_figure), never derived here. Returns 0 when the records carry
 * none. */
typedef struct view_cost {
    double per_hour;
    double per_mtok, per_btok, per_ttok; /* per 1e6, 1e9, 1e12 tokens */
} view_cost;
int view_cost_now(const view *v, view_cost *out);

/* The policy's name (config_policy_names) or "n/a". */
const char *view_policy_name(view_policy policy);

#endif
