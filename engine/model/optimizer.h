/* AdamW over the model's slabs: linear warm-up then cosine decay of the
 * learning rate, global gradient-norm clipping, decoupled weight decay on
 * matrices only (not on norm gains). */
#ifndef MOECTL_ENGINE_OPTIMIZER_H
#define MOECTL_ENGINE_OPTIMIZER_H

#include "engine/config/config.h"
#include "engine/model/model.h"

typedef struct optimizer_settings {
    double lr;
    double min_lr;
    int warmup_steps;
    int total_steps;
    double beta1;
    double beta2;
    double eps;
    double weight_decay;
    double grad_clip; /* 0: off */
    double lr_override; /* > 0: the operator set the rate (`lr VALUE`) */
} optimizer_settings;

void optimizer_settings_from_config(optimizer_settings *s, const config *cfg);

/* Learning rate of 1-based step `step`: lr·step/warmup during warm-up, then
 * cosine from lr down to min_lr at total_steps (and min_lr after). */
double optimizer_lr(const optimizer_settings *s, int step);

/* Sums the replicated (dense) gradients and the split experts' partial
 * ones over the ranks; other experts' gradients stay with their ranks.
 * Nothing to do on one rank. Returns -1 on every rank when any rank is
 * out of memory for the staging (err says so). */
int optimizer_reduce_gradients(model *m, moe_error *err);

/* Global L2 norm of all gradients (after the reduction). */
double optimizer_grad_norm(model *m);

/* One AdamW update (after optimizer_reduce_gradients) of every tensor at
 * 1-based `step` with learning rate lr;
 * gradients are scaled down so their global norm is at most grad_clip.
 * Returns the gradient norm before clipping. */
double optimizer_step(model *m, const optimizer_settings *s, int step,
                      double lr);
/* The same with the norm measured already (optimizer_grad_norm): the
 * spike guard judges it before the update is applied. */
void optimizer_apply(model *m, const optimizer_settings *s, int step,
                     double lr, double norm);

#endif
