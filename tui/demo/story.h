/* The demo's story: what it knows of the job (a view fed with the job's
 * records, the same decoder the console uses, and the per-step figures it
 * collects from that view to take medians over windows), the commands it
 * sends, and the chapters (tui/demo/chapters.c) it tells. How the story is
 * told, printed or in the console's pane, is tui/demo/demo.c. */
#ifndef MOECTL_TUI_DEMO_STORY_H
#define MOECTL_TUI_DEMO_STORY_H

#include "engine/config/config.h"
#include "tui/console/console.h"
#include "tui/console/view.h"

enum {
    DEMO_MAX_RANKS = 16,
    DEMO_MAX_LAYERS = 8,         /* layers whose imbalance is narrated */
    DEMO_HISTORY = 8192,         /* steps kept, a ring */
    DEMO_WINDOW_DEFAULT = 200,   /* steps per measured window */
    DEMO_WINDOW_MAX = DEMO_HISTORY / 4,
    DEMO_WARMUP_STEPS = 20,      /* not measured: lr warm-up, cold caches */
    DEMO_TEXT_BYTES = 8192,
    /* A command whose event has not come this many steps after it was
     * sent went unanswered. */
    DEMO_ANSWER_STEPS = 50,
};

/* One step's figures, as far as the story reads them (from the view, right
 * after the step record). */
typedef struct demo_step {
    int step;                    /* 0: slot empty */
    double tokens_per_s, ideal_tokens_per_s, cost_per_mtok, mfu, step_ms;
    int straggler;               /* -1: none */
    double idle_ms[DEMO_MAX_RANKS], expert_ms[DEMO_MAX_RANKS];
    double expert_flops_per_s[DEMO_MAX_RANKS];
    double max_mean[DEMO_MAX_LAYERS];
} demo_step;

typedef enum demo_field {
    FIELD_TOKENS_PER_S,
    FIELD_IDEAL_TOKENS_PER_S,
    FIELD_COST_PER_MTOK,
    FIELD_MFU,
    FIELD_STEP_MS,
    FIELD_IDLE_MS,               /* index: rank */
    FIELD_EXPERT_MS,             /* index: rank */
    FIELD_EXPERT_FLOPS_PER_S,    /* index: rank */
    FIELD_MAX_MEAN,              /* index: layer */
} demo_field;

/* Medians over steps first..last (those received). */
typedef struct demo_window {
    int first, last, count;
    double tokens_per_s, ideal_tokens_per_s, cost_per_mtok, mfu, step_ms;
} demo_window;

typedef struct demo demo;

typedef struct demo_chapter {
    const char *heading;
    int (*run)(demo *d);   /* 1 done (text written), 0 waiting, -1 failed */
} demo_chapter;

extern const demo_chapter demo_chapters[];
extern const int demo_chapter_count;

struct demo {
    /* Options, and what the configuration says that records do not. */
    int window;              /* N: steps per measured window */
    int policy_every;        /* K of `policy auto every K` */
    const config *cfg;

    /* The job. */
    view v;
    int latest_step;               /* -1: none yet */
    demo_step *history;            /* DEMO_HISTORY slots, by step */

    /* The story's own commands: the last one sent and its event. */
    char sent[128];
    int sent_at;                   /* latest step when it was sent */
    int event_step;                /* -1: its event has not come */
    int event_index;               /* its line in the view's event log */
    int answered, refused;
    double event_duration_ms;      /* its event's, NAN: not timed */
    char reply[VIEW_EVENT_BYTES];

    /* Plans as they came, by what asked for them. */
    view_plan plan_plan, plan_apply, plan_auto_first;
    int auto_decisions, auto_applied;
    char auto_first_reply[VIEW_EVENT_BYTES];
    int auto_first_event_step;

    /* The first window (chapters 1-3), kept whole once measured. */
    int baseline_first, baseline_last;   /* 0: not yet chosen */
    int have_baseline;
    demo_window baseline;
    double base_max_mean[DEMO_MAX_LAYERS];
    int base_dead[DEMO_MAX_LAYERS];
    double base_idle_ms[DEMO_MAX_RANKS], base_expert_ms[DEMO_MAX_RANKS];
    double base_expert_flops[DEMO_MAX_RANKS];
    int base_straggler_steps[DEMO_MAX_RANKS];
    int base_straggler;                  /* -1: none */
    int base_hot_layer, base_hot_expert, base_hot_rank;
    double base_hot_load, base_hot_ratio;
    int base_experts_on[DEMO_MAX_RANKS];

    /* Story. */
    int chapter, phase;
    int chapter_done;
    long long done_at_ms;
    int move_layer, move_expert, move_from, move_to, move_step;
    double move_duration_ms;       /* NAN: the move was not timed */
    double move_load;
    int apply_step, policy_step, final_last;
    int story_over;
    demo_window before, after;
    char text[DEMO_TEXT_BYTES];
    char title[256];
    char status[256];               /* what a waiting chapter waits for */

    /* How commands reach the job. */
    console_send_fn send;
    void *send_ctx;
};

/* ---- story.c ---- */

/* window and cfg as the options say; allocates the history. Returns 0, or
 * -1 out of memory. */
int demo_init(demo *d, int window, const config *cfg);
void demo_finish(demo *d);

/* Folds one record (a JSON text, no newline) into the story's view. */
void demo_record(demo *d, const char *line);

/* Starts chapter (its title set, its text empty). */
void demo_start_chapter(demo *d, int chapter);

/* Runs the current chapter; 1 when it just finished, -1 when it failed. */
int demo_advance(demo *d);

/* Appends to the chapter's text / sets what it waits for. */
void demo_say(demo *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void demo_set_status(demo *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Sends a command in the grammar's own spelling (command_format), which is
 * how the job names it in its event. Returns -1 if it does not parse. */
int demo_send(demo *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The outcome of the command last sent: 0 while it waits, 1 once applied,
 * -1 when the job refused it or never answered (said in the narration). */
int demo_command_outcome(demo *d);

/* 1 once step has been received; else sets the status. */
int demo_reached(demo *d, int step, const char *what);

/* Medians of steps first..last into w. */
void demo_measure_window(demo *d, int first, int last, demo_window *w);

/* The experts each rank hosts in the latest placement. */
void demo_experts_per_rank(const demo *d, int *out);

/* The expert with the highest load_ema relative to its layer's mean,
 * among those on rank (or any rank when rank < 0). Returns 0 if none. */
int demo_hottest_expert(const demo *d, int rank, int *layer, int *expert,
                        double *load, double *ratio);

#endif
