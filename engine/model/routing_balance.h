/* Routing-side balancing state of the model: training state, in
 * checkpoints and identical on every rank.
 * - Bias balancing (balance.bias_update_rate): top-k selects by
 *   probs + bias, gate weights stay unbiased; after each training step the
 *   bias moves by the step's global expert loads.
 * - Routing warm-up (balance.routing_warmup_steps): during the first steps
 *   top-k selects by softmax(w·logits + (1−w)·noise) + bias, the noise
 *   drawn from the running logit statistics (router_select_warmup). */
#ifndef MOECTL_ENGINE_MODEL_ROUTING_BALANCE_H
#define MOECTL_ENGINE_MODEL_ROUTING_BALANCE_H

#include <stdint.h>

#include "engine/config/config.h"
#include "engine/core/error.h"
#include "kernels/backend.h"

typedef struct routing_balance {
    int layers, experts;     /* L, E */
    double bias_update_rate; /* 0: off */
    int warmup_steps;        /* 0: off */
    uint64_t seed;           /* train.seed: keys the routing noise */
    float *bias;             /* (L, E) in the backend's memory */
    double *logit_mean;      /* (L) running mean of the router logits */
    double *logit_var;       /* (L) running variance */
    double *logit_std;       /* (L) its square root, for metrics */
    int stats_ready;         /* the running statistics hold a step */
    double mix;              /* w of the last training step; 1: off/over */
    int step;                /* training step being routed, 0: plain */
    double *pending_mean;    /* (L) statistics including this step's */
    double *pending_var;     /* (L)   batch, kept at the step's end */
} routing_balance;

int routing_balance_init(routing_balance *rb, const config *cfg, int layers,
                         int experts, const backend *be, moe_error *err);
void routing_balance_finish(routing_balance *rb, const backend *be);

/* Marks the next forwards as those of training step `step` (1-based). */
void routing_balance_begin_step(routing_balance *rb, int step);
/* 1 while a training step within the warm-up is being routed. */
int routing_balance_warming_up(const routing_balance *rb);
/* Layer l's running logit statistics with this step's batch mean and
 * variance folded in: kept as pending, and returned in *mean and *var. */
void routing_balance_observe(routing_balance *rb, int l, double batch_mean,
                             double batch_var, double *mean, double *var);
/* Ends the step: keeps the pending statistics (during the warm-up) and
 * moves the bias by each layer's global load, from selected(ctx, l) (E). */
void routing_balance_end_step(routing_balance *rb,
                              const int *(*selected)(const void *ctx, int l),
                              const void *ctx);

#endif
