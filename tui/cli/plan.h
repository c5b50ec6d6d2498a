/* `moectl plan`: what training a configuration would cost, for the
 * configured cluster and for every mix of its device types, as the
 * analytic step model (engine/balance/step_model.h) predicts it. This
 * file prints; the model computes. */
#ifndef MOECTL_TUI_PLAN_H
#define MOECTL_TUI_PLAN_H

#include "engine/config/config.h"

typedef struct plan_options {
    int json; /* one JSON object instead of text */
} plan_options;

/* Prints the plan to stdout; returns an exit status (2 when cfg lacks
 * what the model needs, 1 when out of memory, with a one-line reason on
 * stderr). */
int plan_run(const config *cfg, const plan_options *opt);

#endif
