/* The one command language of moectl: the console's `:` prompt, headless
 * scripts and the control socket all parse commands here. */
#ifndef MOECTL_ENGINE_COMMAND_H
#define MOECTL_ENGINE_COMMAND_H

#include <stddef.h>

#include "engine/config/config.h"

typedef enum command_kind {
    COMMAND_PAUSE,
    COMMAND_RESUME,
    COMMAND_STOP,
    COMMAND_CHECKPOINT,
    COMMAND_LR,     /* value */
    COMMAND_MOVE,   /* layer, expert, rank */
    COMMAND_STATUS,
    COMMAND_PLAN,   /* show the planner's moves and predicted gain */
    COMMAND_APPLY,  /* carry out the last plan (or a fresh one) */
    COMMAND_POLICY, /* policy, every, min_gain */
    COMMAND_SPLIT,  /* layer, expert, split_* (rank = split_rank[0]) */
    COMMAND_SHARES, /* share_count weights, one a rank */
} command_kind;

/* Most ranks one split names. */
enum { COMMAND_SPLIT_MAX = 16 };

typedef struct command {
    command_kind kind;
    double value;   /* lr */
    int layer;      /* move */
    int expert;     /* move */
    int rank;       /* move */
    config_policy policy; /* policy */
    int every;      /* policy: steps between plans; 0 keeps the current */
    double min_gain; /* policy: fraction of a step; < 0 keeps the current */
    int split_count;                     /* split: ranks named */
    int split_rank[COMMAND_SPLIT_MAX];   /* distinct; the first is the
                                            expert's rank */
    int split_weight[COMMAND_SPLIT_MAX]; /* 1..1000: rows in proportion */
    int share_count;                     /* shares: one weight a rank */
    int share_weight[CONFIG_MAX_DEVICES]; /* 1..1000: batch rows in
                                             proportion */
} command;

/* Limits a command is checked against (out-of-range is an error). */
typedef struct command_limits {
    int layers;
    int experts;
    int ranks;
} command_limits;

/* Parses one line (surrounding blanks ignored). On error returns -1 and
 * writes a one-line reason (no trailing newline) into reason. */
int command_parse(const char *line, const command_limits *limits,
                  command *out, char *reason, size_t reason_size);

/* Writes the command back in the grammar, e.g. "move 2.5 1". */
/* Room for any command command_format writes: shares of 64 weights of
 * 1000, a split over 16 ranks. */
enum { COMMAND_TEXT_MAX = 8 + 5 * CONFIG_MAX_DEVICES + 16 };
void command_format(const command *c, char *out, size_t size);

#endif
