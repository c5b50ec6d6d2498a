/* What the console knows about a job: built only from the records the
 * engine publishes (JSON Lines), so the console owns no training state.
 * Every figure has a valid flag: a missing one shows as n/a. */
#ifndef MOECTL_TUI_VIEW_H
#define MOECTL_TUI_VIEW_H

#include <stddef.h>

enum { VIEW_HISTORY = 4096, VIEW_EVENTS = 64, VIEW_MAX_RANKS = 64 };

typedef struct view_device {
    char name[64];
    char backend[8];
    double price_per_hour;
    int emulated;
} view_device;

typedef struct view_rank {
    double expert_ms, dense_ms, alltoall_ms, allreduce_ms, idle_ms;
    double tokens;
    int experts;
} view_rank;

typedef struct view {
    /* From the run record. */
    int have_run;
    char config[64];
    char currency[16];
    int steps_total;
    int layers, experts;
    int tokens_per_step;
    double flops_per_token;
    int device_count;
    view_device devices[VIEW_MAX_RANKS];

    /* From step records. */
    int have_step;
    int step;
    double loss, lr, tokens_per_s, smoothed_tokens_per_s, model_flops_per_s;
    double elapsed_s, step_ms;
    int *expert_load;   /* (layers, experts) of the last step */
    int *placement;     /* (layers, experts) */
    int placement_version;
    int rank_count;
    view_rank ranks[VIEW_MAX_RANKS];
    double loss_history[VIEW_HISTORY]; /* by step, the last VIEW_HISTORY */
    double val_history[VIEW_HISTORY];  /* NAN where no validation */
    int history_count;
    int history_first_step;

    int have_val;
    double val_loss;

    /* Status: running, paused, stopped, done, failed. */
    char status[16];

    char events[VIEW_EVENTS][160];
    int event_count;      /* total ever added; the last VIEW_EVENTS kept */
} view;

void view_init(view *v);
void view_finish(view *v);

/* Folds one record (a JSON text, no newline) into the view. Returns 0, or
 * -1 for a line that is not a record (it is ignored). */
int view_apply(view *v, const char *line);

/* Adds a line to the event log. */
void view_event(view *v, const char *text);

/* Cost figures derived from measurements: price per hour of all devices,
 * cost per 1M tokens at the smoothed rate. Return 0 when not measurable. */
int view_price_per_hour(const view *v, double *per_hour);
int view_cost_per_mtok(const view *v, double *cost);

#endif
