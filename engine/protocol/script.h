/* Headless scripts: commands of the shared grammar, scheduled by step or
 * by the latest metrics. One line each (`#` starts a comment):
 *
 *   STEP COMMAND               at the boundary after step STEP (0: before
 *                              the first step)
 *   every N COMMAND            after every N-th step
 *   when METRIC OP VALUE COMMAND
 *                              after a step whose figures make the
 *                              condition true when the previous step's did
 *                              not (it fires on the edge, not every step)
 *
 * e.g. `100 policy auto every 50`, `every 500 checkpoint`,
 * `when max_mean > 1.5 plan`. `--at STEP:COMMAND` adds a STEP line. */
#ifndef MOECTL_ENGINE_SCRIPT_H
#define MOECTL_ENGINE_SCRIPT_H

#include <stddef.h>

#include "engine/protocol/command.h"
#include "engine/protocol/metrics.h"

/* X(name, what it is) */
#define SCRIPT_METRICS(X)                                                      \
    X(step, "the step just trained")                                           \
    X(loss, "training loss of the step")                                      \
    X(val_loss, "the latest validation loss")                                 \
    X(lr, "learning rate of the step")                                        \
    X(grad_norm, "gradient norm before clipping")                             \
    X(tokens_per_s, "tokens/s of the step")                                   \
    X(step_ms, "wall time of the step")                                       \
    X(mfu, "model FLOPs utilisation, 0..1")                                   \
    X(cost_per_mtok, "cost per 1M tokens at the step's speed")               \
    X(max_mean, "the largest max/mean expert load over the layers")           \
    X(cv, "the largest coefficient of variation of expert load")              \
    X(dead, "experts that got no token, all layers")                          \
    X(ideal_share, "tokens_per_s / ideal_tokens_per_s")                       \
    X(dropped, "assignments dropped by capacity")                             \
    X(spikes, "steps the loss-spike guard skipped so far")

enum script_metric {
#define X(name, what) SCRIPT_METRIC_##name,
    SCRIPT_METRICS(X)
#undef X
    SCRIPT_METRIC_COUNT
};

typedef enum script_kind { SCRIPT_AT, SCRIPT_EVERY, SCRIPT_WHEN } script_kind;

typedef enum script_op {
    SCRIPT_LT, SCRIPT_LE, SCRIPT_GT, SCRIPT_GE, SCRIPT_EQ, SCRIPT_NE
} script_op;

typedef struct script_line {
    script_kind kind;
    int line;        /* 1-based, in the source */
    int step;        /* SCRIPT_AT */
    int every;       /* SCRIPT_EVERY */
    int metric;      /* SCRIPT_WHEN */
    script_op op;
    double value;
    command cmd;
} script_line;

typedef struct script {
    script_line *lines;
    int count;
    unsigned char *was_true; /* (count) SCRIPT_WHEN edge state */
} script;

/* Parses `text` (named `source` in errors). Every error is one line,
 * `source:line: message`, and nothing is kept. Commands are checked
 * against limits; STEP lines must lie in 0..last_step. */
int script_parse(script *s, const char *source, const char *text,
                 const command_limits *limits, int last_step, char *err,
                 size_t err_size);
/* The same from a file. */
int script_load(script *s, const char *path, const command_limits *limits,
                int last_step, char *err, size_t err_size);
/* Appends a STEP line (as `--at STEP:COMMAND`); -1 when out of memory. */
int script_add(script *s, int step, const command *cmd, int line);
void script_free(script *s);

/* The figures `when` conditions read, from a step (NAN where missing);
 * val_loss is the latest validation loss. */
void script_values(double *values, const step_stats *st, double val_loss);

/* The lines due at the boundary after `step` (values: that step's
 * figures, or NULL before the first step), in script order: their indices
 * into due (room for s->count). Updates the edge state of `when` lines, so
 * it is called once a boundary. Returns their count; none is dropped. */
int script_due(script *s, int step, const double *values, int *due);

/* The command of line i. */
const command *script_command(const script *s, int i);

/* The metric names, for messages and the man page. */
extern const char *const script_metric_names[SCRIPT_METRIC_COUNT];

#endif
