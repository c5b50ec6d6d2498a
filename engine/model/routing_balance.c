#include "engine/model/routing_balance.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/router.h"

int routing_balance_init(routing_balance *rb, const config *cfg, int layers,
                         int experts, const backend *be, moe_error *err)
{
    memset(rb, 0, sizeof *rb);
    rb->layers = layers;
    rb->experts = experts;
    rb->bias_update_rate = cfg->balance.bias_update_rate;
    rb->warmup_steps = cfg->balance.routing_warmup_steps;
    rb->seed = cfg->train.seed;
    rb->mix = 1.0;
    size_t bias_bytes = (size_t)layers * experts * sizeof *rb->bias;
    /* The router op reads the bias: the backend's memory. */
    rb->bias = be->ops->alloc(be->ctx, bias_bytes);
    if (rb->bias)
        memset(rb->bias, 0, bias_bytes);
    /* mean, var, std, pending mean, pending var: (L) each */
    rb->logit_mean = calloc((size_t)5 * layers, sizeof(double));
    if (!rb->bias || !rb->logit_mean) {
        routing_balance_finish(rb, be);
        return error_set(err, "out of memory for the routing balance state");
    }
    rb->logit_var = rb->logit_mean + layers;
    rb->logit_std = rb->logit_mean + 2 * layers;
    rb->pending_mean = rb->logit_mean + 3 * layers;
    rb->pending_var = rb->logit_mean + 4 * layers;
    return 0;
}

void routing_balance_finish(routing_balance *rb, const backend *be)
{
    be->ops->free(be->ctx, rb->bias);
    free(rb->logit_mean);
    rb->bias = NULL;
    rb->logit_mean = NULL;
}

void routing_balance_begin_step(routing_balance *rb, int step)
{
    rb->step = step;
    rb->mix = router_warmup_mix(step, rb->warmup_steps);
}

int routing_balance_warming_up(const routing_balance *rb)
{
    return rb->step > 0 && rb->step <= rb->warmup_steps;
}

void routing_balance_observe(routing_balance *rb, int l, double batch_mean,
                             double batch_var, double *mean, double *var)
{
    *mean = batch_mean;
    *var = batch_var;
    if (rb->stats_ready) {
        const double decay = ROUTER_LOGIT_EMA_DECAY;
        *mean = decay * rb->logit_mean[l] + (1.0 - decay) * batch_mean;
        *var = decay * rb->logit_var[l] + (1.0 - decay) * batch_var;
    }
    rb->pending_mean[l] = *mean;
    rb->pending_var[l] = *var;
}

void routing_balance_end_step(routing_balance *rb,
                              const int *(*selected)(const void *ctx, int l),
                              const void *ctx)
{
    if (rb->step <= 0)
        return;
    if (routing_balance_warming_up(rb)) {
        for (int l = 0; l < rb->layers; l++) {
            rb->logit_mean[l] = rb->pending_mean[l];
            rb->logit_var[l] = rb->pending_var[l];
            rb->logit_std[l] = sqrt(rb->logit_var[l]);
        }
        rb->stats_ready = 1;
    }
    if (rb->bias_update_rate > 0.0)
        for (int l = 0; l < rb->layers; l++)
            router_bias_update(rb->bias + (size_t)l * rb->experts,
                               selected(ctx, l), rb->experts,
                               rb->bias_update_rate);
    rb->step = 0;
}
