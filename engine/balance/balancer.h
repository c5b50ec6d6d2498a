/* Placement-side balancing in a live run: rank 0 keeps moving averages of
 * what the steps measured (per-expert load, per-rank expert speed and time
 * outside expert work, communication), turns them into a planner problem,
 * and judges plans: the predicted step time before and after, and later
 * the measured one. The policy (off, suggest, auto) says when it plans. */
#ifndef MOECTL_ENGINE_BALANCER_H
#define MOECTL_ENGINE_BALANCER_H

#include "engine/config/config.h"
#include "engine/protocol/metrics.h"
#include "engine/balance/planner.h"

enum { BALANCER_WINDOW_MAX = 256, BALANCER_ROW_POINTS = 4 };

/* A rank's dense time at one row count. */
typedef struct balancer_row_point {
    int rows;       /* 0: unused */
    double s;       /* moving average of the passes' dense seconds */
    int samples;
    int seen;       /* the balancer's sample count when last updated */
} balancer_row_point;

/* What an applied plan did, measured. */
typedef enum balancer_verdict {
    BALANCER_NONE,      /* not judged yet */
    BALANCER_DELIVERED, /* at least half the predicted gain, outside the
                           noise */
    BALANCER_MISSED,    /* less, or slower, outside the noise */
    BALANCER_NOISE      /* the medians differ by less than the noise */
} balancer_verdict;
/* "delivered", "missed", "noise" (NULL-terminated; index NONE is NULL). */
extern const char *const balancer_verdict_names[];

typedef struct balancer {
    int layers, experts, ranks;
    double decay;          /* of every moving average (balance.load_ema) */
    int samples;           /* steps observed */
    double *load;          /* (layers, experts) rows routed per step */
    double *rate;          /* (ranks) expert rows per second, 0: unknown */
    double *base_s;        /* (ranks) seconds outside routed-expert work */
    /* rate and base_s are medians of each rank's latest samples (up to the
     * judged window, min(every, BALANCER_WINDOW_MAX) steps), so that one
     * disturbed step does not move a prediction; a rank's dense samples
     * restart when its rows change. Rings of BALANCER_WINDOW_MAX a rank. */
    double *rate_ring, *base_ring;
    int *rate_count, *base_count;
    planner_rank *planner_ranks; /* (ranks) built for the planner */
    double comm_s;         /* step time the compute model does not explain */
    double step_s;         /* measured step time */
    double ideal_s;        /* the last step's time had its expert work been
                              split in proportion to speed (see
                              balancer_observe) */
    double expert_bytes;   /* one expert's state: weights, grad, 2 moments */
    double move_bytes;     /* what a move ships: weights and 2 moments */
    double dense_bytes;    /* replicated state on every rank */
    double link_bytes_per_s;
    double reduce_s_per_byte; /* the gradient all-reduce's measured cost per
                                 byte of buffer (0: not measured yet) */
    const config_device *devices; /* (ranks) */

    config_policy policy;
    int every;             /* steps between plans */
    double min_gain;       /* fraction of a step */

    /* The last plan: proposed placement, splits and prediction. */
    int *proposal;         /* (layers, experts) each expert's rank */
    int *proposal_share;   /* (layers, experts, ranks) in 1/share_units */
    int *rows;             /* (ranks) sequences each trained, last step */
    /* Each rank's dense time in the passes at the row counts it has run
     * (up to BALANCER_ROW_POINTS, the least recently seen replaced): a
     * moving average per count, fitted by least squares to
     * fixed + rows · per_row when two counts are known. */
    balancer_row_point *row_points; /* (ranks, BALANCER_ROW_POINTS) */
    double *dense_fixed_s;   /* (ranks) the fit's fixed part, 0: unknown */
    double *dense_s_per_row; /* (ranks) its slope (or time / rows) */
    int *proposal_rows;    /* (ranks) the plan's split of the batch */
    double *activation_bytes_per_row; /* (ranks) its activations and
                                         expert rows over its rows, last
                                         step: rows take memory too */
    int batch;             /* train.batch_size */
    int share_units;
    double grad_bytes;     /* one expert's gradient */
    int have_proposal;
    int proposal_version;  /* placement version it was made against */
    int proposal_changes;  /* experts whose rank or split changes */
    int proposal_moves;    /* replicas shipped: (expert, rank) pairs that
                              gain a share */
    double before_s, after_s; /* predicted step times, comm included */

    /* The latest step times (a ring of BALANCER_WINDOW_MAX): a plan is
     * judged on the median of the `window` steps just before it was
     * applied against the median of the `window` steps after. */
    double recent_s[BALANCER_WINDOW_MAX];
    int recent_count, recent_next;
    int window;            /* min(every, BALANCER_WINDOW_MAX), set when a
                              plan is applied */

    /* An applied plan waiting to be measured. */
    int pending_result;
    int applied_step;      /* boundary after which the moves took effect */
    double applied_before_s; /* median of the window before */
    double applied_noise_s;  /* what a difference of two window medians
                                reaches by chance (see balancer.c) */
    double applied_after_s;  /* predicted */
    double measured_s[BALANCER_WINDOW_MAX]; /* the window after */
    int measured_steps;
    balancer_verdict verdict; /* of the last plan judged */
    /* Applied plans in a row whose measured gain fell short of half the
     * predicted one: auto then asks for min_gain · 2^missed, so a model
     * that keeps promising what the job does not deliver stops moving
     * experts back and forth. */
    int missed;

    /* What the last applied plan replaced, kept on rank 0 so that auto
     * can move back when its plan measurably slowed the job: the verdict
     * missed with the steps after slower than those before by more than
     * the noise. A move back is judged like any plan but never moved back
     * itself, and the min-gain doubling stands. */
    int *undo_rank;      /* (layers, experts) */
    int *undo_share;     /* (layers, experts, ranks) */
    int *undo_rows;      /* (ranks) */
    int undo_version;    /* placement version the plan left; 0: none */
    int undo_step;       /* the step it was applied after */
    int applied_by_auto; /* the plan being judged was auto's own */
    int applied_revert;  /* ... a move back */
    int revert_due;      /* auto moves back at its next turn */
} balancer;

/* The gain `auto` asks of a plan now, as a fraction of a step: min_gain,
 * doubled for every applied plan in a row that did not deliver, but never
 * less than the noise its verdict would be judged against (the band of
 * the latest `every` step times, see balancer_mark_applied): a smaller
 * gain could not be told from chance, and its prediction rests on rates
 * measured through the same noise. *noisy (may be NULL): the noise set
 * it. */
double balancer_auto_threshold(const balancer *b, int *noisy);

int balancer_create(balancer *b, const config *cfg, int ranks,
                    int share_units, moe_error *err);
void balancer_destroy(balancer *b);

/* Feeds one step's measurements (rank 0: s->rank is gathered). Also fills
 * s->ideal_tokens_per_s and the straggler. */
void balancer_observe(balancer *b, step_stats *s);

/* Plans against `placement` (layers, experts) split by `share` (layers,
 * experts, ranks, in 1/share_units) and stores the proposal: the best of
 * whole-expert moves and of splits on top of them (or of the present
 * placement), by predicted step time plus the cost of what it ships.
 * Returns 0, or -1 with a one-line reason (nothing measured yet, or no
 * placement fits the memory capacities). */
int balancer_plan(balancer *b, const int *placement, const int *share,
                  int placement_version, char *reason, size_t reason_size);

/* Describes the proposal against `placement`: "N moves ..., predicted
 * step A -> B ms (-G%)", listing up to a few moves. */
void balancer_describe(const balancer *b, const int *placement,
                       const int *share, char *out, size_t size);

/* Writes a "plan" record for the proposal (trigger: plan, apply, suggest,
 * auto) with its moves against `placement`. */
int balancer_write_plan(const balancer *b, metrics_sink *sink, int step,
                        const char *trigger, int applied, const int *placement,
                        moe_error *err);

/* Keeps what a plan about to be applied replaces: the placement, its
 * shares and the rows (ranks) now. */
void balancer_keep_undo(balancer *b, const int *placement, const int *share,
                        const int *rows);

/* The proposal was applied at the boundary after `step`, leaving the
 * placement at `version`; by_auto: the policy's own plan (a move back when
 * revert). It will be judged against the median of the window of steps
 * just before. */
void balancer_mark_applied(balancer *b, int step, int version, int by_auto,
                           int revert);

/* When auto's last plan slowed the job (revert_due) and nothing has
 * changed the placement since (`version`), makes the kept placement,
 * shares and rows the proposal, says so in `text` and returns 0; else
 * returns -1. Either way revert_due is cleared. */
int balancer_propose_revert(balancer *b, const int *placement,
                            const int *share, int version, char *text,
                            size_t size);

/* After an applied plan, keeps the step times that follow; when a window
 * of them has run, writes a "plan_result" record with the medians before
 * and after, the noise and the verdict, and returns 1. */
int balancer_follow_up(balancer *b, const step_stats *s, metrics_sink *sink,
                       moe_error *err);

#endif
