#include "engine/balance/step_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/balance/planner.h"

const char *step_model_device_name(const config *cfg, int entry, char *buf,
                                   size_t size)
{
    if (cfg->cluster.devices[entry].name[0])
        return cfg->cluster.devices[entry].name;
    snprintf(buf, size, "devices[%d]", entry);
    return buf;
}

int step_model_check(const config *cfg, moe_error *err)
{
    if (cfg->cluster.device_count < 1)
        return error_set(err, "%s: cluster.devices is empty", cfg->source);
    int ranks = 0;
    for (int i = 0; i < cfg->cluster.device_count; i++) {
        const config_device *d = &cfg->cluster.devices[i];
        char buf[32];
        if (d->utilization <= 0)
            return error_set(
                err,
                "%s: cluster.devices[%d] (%s) states no utilization: set the "
                "fraction of peak_tflops it is expected to reach, e.g. --set "
                "cluster.devices.%d.utilization=0.3",
                cfg->source, i,
                step_model_device_name(cfg, i, buf, sizeof buf), i);
        ranks += d->count;
        if (ranks > STEP_MODEL_MAX_RANKS)
            return error_set(err, "%s: more than %d devices in "
                                  "cluster.devices (counts included)",
                             cfg->source, STEP_MODEL_MAX_RANKS);
    }
    return 0;
}

static double dense_bytes_per_rank(const step_model *m, int ranks)
{
    double bytes = m->params.dense * m->cfg->plan.bytes_per_param;
    return m->cfg->plan.dense == CONFIG_DENSE_SHARDED ? bytes / ranks
                                                      : bytes;
}

/* The mix's entries, ranks, price and peak. */
static void mix_members(const config *cfg, uint64_t mask, step_model_mix *mix)
{
    memset(mix, 0, sizeof *mix);
    mix->mask = mask;
    for (int i = 0; i < cfg->cluster.device_count; i++) {
        if (!(mask >> i & 1))
            continue;
        const config_device *d = &cfg->cluster.devices[i];
        mix->use[mix->entries++].entry = i;
        mix->ranks += d->count;
        mix->price_per_hour += cost_device_price_per_hour(d);
        mix->peak_flops += cost_device_peak_flops(d);
    }
}

/* Each rank's speed, dense time and room for experts, for the planner;
 * each device entry's share of them in mix->use. */
static void mix_ranks(const step_model *m, step_model_mix *mix,
                      double dense_bytes, planner_rank *rank,
                      int *entry_of_rank)
{
    const double G = m->tokens_per_step;
    const int n = mix->ranks;
    for (int j = 0, r = 0; j < mix->entries; j++) {
        step_model_device *u = &mix->use[j];
        const config_device *d = &m->cfg->cluster.devices[u->entry];
        u->flops_per_s = d->utilization * d->peak_tflops * 1e12;
        u->expert_rows_per_s =
            u->flops_per_s / (COST_FLOP_PER_PARAM_TOKEN * m->params.expert);
        u->dense_s = G / n * COST_FLOP_PER_PARAM_TOKEN * m->params.dense /
                     u->flops_per_s;
        /* A rank with exactly no room holds no expert; <= 0 would read as
         * unlimited. */
        double room = d->memory_gb * 1e9 - dense_bytes;
        for (int c = 0; c < d->count; c++, r++) {
            entry_of_rank[r] = j;
            rank[r] = (planner_rank){
                .rate = u->expert_rows_per_s,
                .base_s = u->dense_s,
                .capacity_bytes = room > 0 ? room : 1e-9,
            };
        }
    }
}

/* Each device entry's fewest and most experts a rank, and its fullest
 * rank's memory, under `placement`. */
static void mix_usage(const step_model *m, step_model_mix *mix,
                      double dense_bytes, const int *placement,
                      const int *entry_of_rank, int *experts_on_rank)
{
    const size_t experts = (size_t)m->cfg->model.n_layers *
                           m->cfg->moe.n_experts;
    for (size_t i = 0; i < experts; i++)
        experts_on_rank[placement[i]]++;
    for (int j = 0; j < mix->entries; j++) {
        mix->use[j].experts_min = (int)experts;
        mix->use[j].used_gb = 0;
    }
    for (int r = 0; r < mix->ranks; r++) {
        step_model_device *u = &mix->use[entry_of_rank[r]];
        int k = experts_on_rank[r];
        if (k < u->experts_min)
            u->experts_min = k;
        if (k > u->experts_max)
            u->experts_max = k;
        double gb = (dense_bytes + k * m->expert_bytes) / 1e9;
        if (gb > u->used_gb)
            u->used_gb = gb;
    }
}

/* Fills mix for the device entries in mask; returns -1 when out of
 * memory. */
static int mix_evaluate(const step_model *m, uint64_t mask,
                        step_model_mix *mix)
{
    const config *cfg = m->cfg;
    const int L = cfg->model.n_layers, E = cfg->moe.n_experts;
    const size_t experts = (size_t)L * E;

    mix_members(cfg, mask, mix);
    const int n = mix->ranks;
    const double dense_bytes = dense_bytes_per_rank(m, n);
    const double even_experts = ceil((double)experts / n);
    mix->need_gb = (dense_bytes + even_experts * m->expert_bytes) / 1e9;
    mix->step_s = mix->round_robin_step_s = NAN;
    mix->tokens_per_s = mix->mfu = mix->cost_per_mtok = NAN;
    for (int j = 0; j < mix->entries; j++) {
        mix->use[j].used_gb = NAN;
        if (cfg->cluster.devices[mix->use[j].entry].memory_gb * 1e9 <
            dense_bytes)
            return 0; /* the dense state alone does not fit */
    }

    planner_rank *rank = malloc((size_t)n * sizeof *rank);
    int *entry_of_rank = malloc((size_t)n * sizeof *entry_of_rank);
    int *experts_on_rank = calloc((size_t)n, sizeof *experts_on_rank);
    double *load = malloc(experts * sizeof *load);
    int *start = malloc(experts * sizeof *start);
    int *placement = malloc(experts * sizeof *placement);
    int status = -1;
    if (!rank || !entry_of_rank || !experts_on_rank || !load || !start ||
        !placement)
        goto done;

    const double G = m->tokens_per_step;
    mix_ranks(m, mix, dense_bytes, rank, entry_of_rank);
    for (size_t i = 0; i < experts; i++) {
        load[i] = G * cfg->moe.top_k / E;
        start[i] = (int)(i % (size_t)n);
    }
    planner_problem problem = {
        .layers = L, .experts = E, .ranks = n, .load = load, .rank = rank,
        .placement = start, .expert_bytes = m->expert_bytes,
        .move_s_per_byte = 0,
    };
    mix->round_robin_step_s = planner_step_time(&problem, start);
    status = 0;
    if (planner_plan(&problem, placement) < 0)
        goto done; /* no placement fits the memory */

    mix->fits = 1;
    mix->step_s = planner_step_time(&problem, placement);
    mix->tokens_per_s = G / mix->step_s;
    mix->mfu = cost_mfu(m->params.active, mix->tokens_per_s,
                        mix->peak_flops);
    mix->cost_per_mtok = cost_per_mtok(mix->price_per_hour,
                                       mix->tokens_per_s);
    mix_usage(m, mix, dense_bytes, placement, entry_of_rank,
              experts_on_rank);

done:
    free(rank);
    free(entry_of_rank);
    free(experts_on_rank);
    free(load);
    free(start);
    free(placement);
    return status;
}

/* Fitting mixes first, cheapest first. */
static int compare_mixes(const void *a, const void *b)
{
    const step_model_mix *x = a, *y = b;
    if (x->fits != y->fits)
        return y->fits - x->fits;
    if (x->fits && x->cost_per_mtok != y->cost_per_mtok)
        return x->cost_per_mtok < y->cost_per_mtok ? -1 : 1;
    if (x->ranks != y->ranks)
        return x->ranks - y->ranks;
    return (x->mask > y->mask) - (x->mask < y->mask);
}

int step_model_init(step_model *m, const config *cfg, moe_error *err)
{
    memset(m, 0, sizeof *m);
    if (step_model_check(cfg, err) < 0)
        return -1;
    m->cfg = cfg;
    cost_model_params(cfg, &m->params);
    m->tokens_per_step = (double)cfg->train.batch_size * cfg->model.seq_len;
    m->expert_bytes = m->params.expert * cfg->plan.bytes_per_param;

    const int entries = cfg->cluster.device_count;
    const uint64_t all = entries == 64 ? UINT64_MAX
                                       : ((uint64_t)1 << entries) - 1;
    if (mix_evaluate(m, all, &m->cluster) < 0)
        return error_set(err, "out of memory");
    if (entries > STEP_MODEL_MAX_MIX_ENTRIES)
        return 0;
    int count = (1 << entries) - 1;
    m->mixes = malloc((size_t)count * sizeof *m->mixes);
    if (!m->mixes)
        return error_set(err, "out of memory");
    for (int i = 0; i < count; i++) {
        uint64_t mask = (uint64_t)i + 1;
        if (mask == all) {
            m->mixes[i] = m->cluster;
        } else if (mix_evaluate(m, mask, &m->mixes[i]) < 0) {
            step_model_finish(m);
            return error_set(err, "out of memory");
        }
    }
    m->mix_count = count;
    qsort(m->mixes, (size_t)count, sizeof *m->mixes, compare_mixes);
    return 0;
}

void step_model_finish(step_model *m)
{
    free(m->mixes);
    m->mixes = NULL;
    m->mix_count = 0;
}
