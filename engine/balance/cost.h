/* What training costs: parameter counts of a configuration (without
 * building its model), MFU and price per token. The analytic step model
 * behind `moectl plan` (engine/balance/step_model.h) prices its mixes
 * with these.
 *
 *   cost per token = Σ price_per_hour / 3600 / tokens_per_s
 *   MFU            = FLOPs per token · tokens_per_s / Σ peak FLOP/s
 *                    (the plan: 6 · N_active FLOPs per token)
 *
 * N_active counts every parameter a token passes through: embeddings,
 * attention, norms, router, shared experts and top_k routed experts. */
#ifndef MOECTL_ENGINE_COST_H
#define MOECTL_ENGINE_COST_H

#include "engine/config/config.h"

/* Parameter counts, as the trainer's model lays them out (for vocab_size
 * 256 and n_kv_heads = n_heads, total equals model->param_count). */
typedef struct cost_params {
    double embedding; /* token embedding and LM head (untied) */
    double attention; /* q, k, v and output projections, all layers */
    double norms;     /* RMSNorm gains */
    double router;    /* router weights, all layers */
    double shared;    /* shared experts, all layers */
    double expert;    /* one routed expert (SwiGLU: 3 · d_model · hidden) */
    double routed;    /* all routed experts, all layers */
    double dense;     /* everything but the routed experts */
    double total;
    double active;    /* dense + top_k routed experts per layer */
} cost_params;

/* Training FLOPs per parameter and token: forward 2, backward 4. */
#define COST_FLOP_PER_PARAM_TOKEN 6.0
/* Training state per parameter: fp32 weight, gradient and both Adam
 * moments. A move ships the weight and the moments (12). */
#define COST_STATE_BYTES_PER_PARAM 16.0
#define COST_MOVE_BYTES_PER_PARAM 12.0

void cost_model_params(const config *cfg, cost_params *out);

/* One device entry's price per hour and peak FLOP/s, its count included. */
double cost_device_price_per_hour(const config_device *device);
double cost_device_peak_flops(const config_device *device);

/* Σ price_per_hour and Σ peak FLOP/s over the devices (count included). */
double cost_price_per_hour(const config *cfg);
double cost_peak_flops(const config *cfg);

/* Money per 1M tokens at tokens_per_s for a cluster costing
 * price_per_hour; NAN when tokens_per_s is not positive. */
double cost_per_mtok(double price_per_hour, double tokens_per_s);

/* Model FLOPs utilisation (0..1 when the peaks are right): training FLOPs
 * per token x tokens/s over the peak. The trainer counts FLOPs per token
 * as its GFLOP/s does (model_flops_per_token: 6 per active parameter but
 * the token embedding, a lookup, plus 12 x layers x d_model x seq_len for
 * attention's scores and weighted sums), so MFU = GFLOP/s / peak; moectl
 * plan's analytic model counts 6 x N_active. */
double cost_mfu(double flops_per_token, double tokens_per_s,
                double peak_flops);

#endif
