#include "engine/balance/cost.h"

#include <math.h>

void cost_model_params(const config *cfg, cost_params *out)
{
    const double V = cfg->model.vocab_size, C = cfg->model.d_model,
                 L = cfg->model.n_layers, E = cfg->moe.n_experts,
                 K = cfg->moe.top_k, F = cfg->moe.expert_hidden,
                 S = (double)cfg->moe.n_shared * cfg->moe.expert_hidden;
    const int n_heads = cfg->model.n_heads;
    const int n_kv_heads = cfg->model.n_kv_heads > 0 ? cfg->model.n_kv_heads
                                                     : n_heads;
    const double head_dim = (double)(cfg->model.d_model / n_heads);
    const double kv_width = n_kv_heads * head_dim;

    /* As MODEL_TENSORS lays them out; k and v narrow to n_kv_heads heads. */
    out->embedding = 2 * V * C;        /* wte (V, C) and lm_head (V, C) */
    out->attention = L * (2 * C * C +  /* q and o: (C, C) each */
                          2 * kv_width * C); /* k and v: (kv, C) each */
    out->norms = (2 * L + 1) * C;      /* attn and ffn (L, C), final (C) */
    out->router = L * E * C;           /* (L, E, C) */
    out->shared = L * 3 * S * C;       /* w13 (L, 2S, C), w2 (L, C, S) */
    out->expert = 3 * C * F;           /* w13 (2F, C), w2 (C, F) */
    out->routed = L * E * out->expert;
    out->dense = out->embedding + out->attention + out->norms + out->router +
                 out->shared;
    out->total = out->dense + out->routed;
    out->active = out->dense + L * K * out->expert;
}

double cost_device_price_per_hour(const config_device *device)
{
    return device->count * device->price_per_hour;
}

double cost_device_peak_flops(const config_device *device)
{
    return device->count * device->peak_tflops * 1e12;
}

double cost_price_per_hour(const config *cfg)
{
    double sum = 0;
    for (int i = 0; i < cfg->cluster.device_count; i++)
        sum += cost_device_price_per_hour(&cfg->cluster.devices[i]);
    return sum;
}

double cost_peak_flops(const config *cfg)
{
    double sum = 0;
    for (int i = 0; i < cfg->cluster.device_count; i++)
        sum += cost_device_peak_flops(&cfg->cluster.devices[i]);
    return sum;
}

double cost_per_mtok(double price_per_hour, double tokens_per_s)
{
    if (!(tokens_per_s > 0))
        return NAN;
    return price_per_hour / 3600.0 / tokens_per_s * 1e6;
}

double cost_mfu(double flops_per_token, double tokens_per_s,
                double peak_flops)
{
    if (!(peak_flops > 0))
        return NAN;
    return flops_per_token * tokens_per_s / peak_flops;
}
