#include "engine/balance/step_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *step_model_device_name(const config *cfg, int entry, char *buf,
                                   size_t size)
{
    if (cfg->cluster.devices[entry].name[0])
        return cfg->cluster.devices[entry].name;
    snprintf(buf, size, "devices[%d]", entry);
    return buf;
}

double step_model_link_bytes_per_s(const config *cfg, int entry)
{
    double gbps = cfg->cluster.devices[entry].link_gbps;
    return (gbps > 0 ? gbps : cfg->cluster.link_gbps) * 1e9;
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

/* The mix's entries, ranks, price, peak and each type's speeds. */
static void mix_members(const config *cfg, uint64_t mask, step_model_mix *mix)
{
    memset(mix, 0, sizeof *mix);
    mix->mask = mask;
    for (int i = 0; i < cfg->cluster.device_count; i++) {
        if (!(mask >> i & 1))
            continue;
        const config_device *d = &cfg->cluster.devices[i];
        step_model_device *u = &mix->use[mix->entries++];
        u->entry = i;
        u->flops_per_s = d->utilization * d->peak_tflops * 1e12;
        u->link_bytes_per_s = step_model_link_bytes_per_s(cfg, i);
        mix->ranks += d->count;
        mix->price_per_hour += cost_device_price_per_hour(d);
        mix->peak_flops += cost_device_peak_flops(d);
    }
}

/* What one type's devices take: a (seconds per unit of δ), c (per unit of
 * ε), the most of ε their memory holds, and the least δ (a row each). */
typedef struct type_cost {
    double a, c, cap, min_dense;
} type_cost;

/* The mix's type costs; returns 0 when a type cannot hold the dense state
 * or the types together cannot hold the experts. */
static int type_costs(const step_model *m, const step_model_mix *mix,
                      double dense_bytes, type_cost *tc)
{
    const config *cfg = m->cfg;
    const double experts = (double)cfg->model.n_layers * cfg->moe.n_experts;
    const int N = mix->ranks;
    const double remote = N > 1 ? (double)(N - 1) / N : 0.0;
    double held = 0;
    for (int j = 0; j < mix->entries; j++) {
        const step_model_device *u = &mix->use[j];
        const config_device *d = &cfg->cluster.devices[u->entry];
        double exchange = m->exchange_bytes * remote /
                          (2 * u->link_bytes_per_s);
        tc[j].a = (m->dense_work / u->flops_per_s + exchange) / d->count;
        tc[j].c = (m->expert_work / u->flops_per_s + exchange) / d->count;
        double room = d->memory_gb * 1e9 - dense_bytes;
        if (room < 0)
            return 0;
        tc[j].cap = d->count * floor(room / m->expert_bytes) / experts;
        tc[j].min_dense = (double)d->count / cfg->train.batch_size;
        held += tc[j].cap;
    }
    return held >= 1.0 - 1e-12;
}

/* Whether every device of the mix can finish its part within T: expert
 * work goes first where it costs the least dense capacity (smallest c/a:
 * fractional knapsack, optimal), and the dense capacity left must cover
 * the batch. Fills δ and ε of mix->use when it can. */
static int fits_in(const type_cost *tc, const int *order, int entries,
                   double T, step_model_mix *mix)
{
    double left = 1.0, dense = 0.0, floor_total = 0.0;
    for (int k = 0; k < entries; k++) {
        int j = order[k];
        double most = (T - tc[j].a * tc[j].min_dense) / tc[j].c;
        if (most < 0)
            return 0; /* not even its one row a device */
        double give = fmin(left, fmin(most, tc[j].cap));
        mix->use[j].expert_share = give;
        left -= give;
    }
    if (left > 1e-12)
        return 0;
    for (int j = 0; j < entries; j++) {
        mix->use[j].dense_share =
            (T - tc[j].c * mix->use[j].expert_share) / tc[j].a;
        dense += mix->use[j].dense_share;
        floor_total += tc[j].min_dense;
    }
    if (dense < 1.0)
        return 0;
    /* More room than rows: hand out the rows above the one-row floors in
     * proportion to each type's room above its floor. */
    for (int j = 0; j < entries; j++) {
        step_model_device *u = &mix->use[j];
        u->dense_share = tc[j].min_dense +
                         (u->dense_share - tc[j].min_dense) *
                             (1.0 - floor_total) / (dense - floor_total);
    }
    return 1;
}

/* The slowest type's t_j under the shares in mix->use, filling each type's
 * compute and exchange parts. */
static double busiest(const step_model *m, step_model_mix *mix)
{
    const int N = mix->ranks;
    const double remote = N > 1 ? (double)(N - 1) / N : 0.0;
    double T = 0;
    for (int j = 0; j < mix->entries; j++) {
        step_model_device *u = &mix->use[j];
        int n = m->cfg->cluster.devices[u->entry].count;
        u->compute_s = (u->dense_share * m->dense_work +
                        u->expert_share * m->expert_work) /
                       (n * u->flops_per_s);
        u->exchange_s = (u->dense_share + u->expert_share) *
                        m->exchange_bytes * remote /
                        (2 * n * u->link_bytes_per_s);
        T = fmax(T, u->compute_s + u->exchange_s);
    }
    return T;
}

/* S: the dense gradients' ring all-reduce over the slowest link. */
static double sync_s(const step_model *m, const step_model_mix *mix)
{
    const int N = mix->ranks;
    if (N < 2)
        return 0.0;
    double slowest = INFINITY;
    for (int j = 0; j < mix->entries; j++)
        slowest = fmin(slowest, mix->use[j].link_bytes_per_s);
    double passes = m->cfg->plan.dense == CONFIG_DENSE_SHARDED ? 3.0 : 2.0;
    return passes * m->params.dense * m->cfg->plan.exchange_bytes *
           (N - 1) / N / slowest;
}

/* T with the rows and experts split equally over the devices (what the
 * trainer does without shares or balancing), or NAN when the even spread
 * of experts does not fit. */
static double equal_step_s(const step_model *m, step_model_mix copy,
                           double need_gb)
{
    for (int j = 0; j < copy.entries; j++) {
        step_model_device *u = &copy.use[j];
        const config_device *d = &m->cfg->cluster.devices[u->entry];
        if (d->memory_gb < need_gb)
            return NAN;
        u->dense_share = u->expert_share = (double)d->count / copy.ranks;
    }
    return busiest(m, &copy) + sync_s(m, &copy);
}

/* Each type's rows, experts and memory a device under its shares. */
static void describe_devices(const step_model *m, step_model_mix *mix,
                             double dense_bytes)
{
    const config *cfg = m->cfg;
    const double experts = (double)cfg->model.n_layers * cfg->moe.n_experts;
    for (int j = 0; j < mix->entries; j++) {
        step_model_device *u = &mix->use[j];
        int n = cfg->cluster.devices[u->entry].count;
        u->rows = u->dense_share * cfg->train.batch_size / n;
        u->experts = u->expert_share * experts / n;
        u->experts_min = (int)floor(u->experts + 1e-9);
        u->experts_max = (int)ceil(u->experts - 1e-9);
        u->used_gb = (dense_bytes + u->experts_max * m->expert_bytes) / 1e9;
    }
}

/* Fills mix for the device entries in mask. */
static void mix_evaluate(const step_model *m, uint64_t mask,
                         step_model_mix *mix)
{
    const config *cfg = m->cfg;
    mix_members(cfg, mask, mix);
    const int N = mix->ranks;
    const double dense_bytes = dense_bytes_per_rank(m, N);
    const double experts = (double)cfg->model.n_layers * cfg->moe.n_experts;
    mix->need_gb = (dense_bytes + ceil(experts / N) * m->expert_bytes) / 1e9;
    mix->step_s = mix->equal_step_s = mix->sync_s = NAN;
    mix->tokens_per_s = mix->mfu = mix->cost_per_mtok = NAN;
    mix->budget_days = mix->members_tokens_per_s = mix->pooling = NAN;
    for (int j = 0; j < mix->entries; j++)
        mix->use[j].used_gb = NAN;

    type_cost tc[CONFIG_MAX_DEVICES];
    int order[CONFIG_MAX_DEVICES];
    if (N > cfg->train.batch_size || !type_costs(m, mix, dense_bytes, tc))
        return; /* fewer rows than devices, or the memory falls short */
    for (int k = 0; k < mix->entries; k++) { /* by c/a, insertion sort */
        int j = k;
        while (j > 0 && tc[order[j - 1]].c / tc[order[j - 1]].a >
                            tc[k].c / tc[k].a) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = k;
    }
    double hi = 1.0;
    while (!fits_in(tc, order, mix->entries, hi, mix))
        if ((hi *= 2) > 1e15)
            return;
    double lo = 0.0;
    for (int i = 0; i < 100 && hi - lo > 1e-12 * hi; i++) {
        double mid = 0.5 * (lo + hi);
        if (fits_in(tc, order, mix->entries, mid, mix))
            hi = mid;
        else
            lo = mid;
    }
    fits_in(tc, order, mix->entries, hi, mix);

    mix->fits = 1;
    mix->sync_s = sync_s(m, mix);
    mix->equal_step_s = equal_step_s(m, *mix, mix->need_gb);
    mix->step_s = busiest(m, mix) + mix->sync_s;
    mix->tokens_per_s = m->tokens_per_step / mix->step_s;
    mix->mfu = cost_mfu(COST_FLOP_PER_PARAM_TOKEN * m->params.active,
                        mix->tokens_per_s, mix->peak_flops);
    mix->cost_per_mtok = cost_per_mtok(mix->price_per_hour,
                                       mix->tokens_per_s);
    mix->budget_days = cfg->plan.token_budget / mix->tokens_per_s / 86400;
    describe_devices(m, mix, dense_bytes);
}

/* members_tokens_per_s and pooling of mix from its types alone. */
static void pool(step_model_mix *mix, const step_model_mix *alone)
{
    double sum = 0;
    for (int j = 0; j < mix->entries; j++)
        sum += alone[mix->use[j].entry].tokens_per_s; /* NAN: no fit */
    mix->members_tokens_per_s = sum;
    mix->pooling = mix->tokens_per_s / sum;
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
    const double G = (double)cfg->train.batch_size * cfg->model.seq_len;
    const double k_layers = (double)cfg->moe.top_k * cfg->model.n_layers;
    m->tokens_per_step = G;
    m->expert_bytes = m->params.expert * cfg->plan.bytes_per_param;
    m->dense_work = COST_FLOP_PER_PARAM_TOKEN * m->params.dense * G;
    m->expert_work = COST_FLOP_PER_PARAM_TOKEN * m->params.expert *
                     k_layers * G;
    m->exchange_bytes = 4.0 * G * k_layers * cfg->model.d_model *
                        cfg->plan.exchange_bytes;

    const int entries = cfg->cluster.device_count;
    step_model_mix *alone = malloc((size_t)entries * sizeof *alone);
    if (!alone)
        return error_set(err, "out of memory");
    for (int i = 0; i < entries; i++)
        mix_evaluate(m, (uint64_t)1 << i, &alone[i]);
    const uint64_t all = entries == 64 ? UINT64_MAX
                                       : ((uint64_t)1 << entries) - 1;
    mix_evaluate(m, all, &m->cluster);
    pool(&m->cluster, alone);
    if (entries <= STEP_MODEL_MAX_MIX_ENTRIES) {
        int count = (1 << entries) - 1;
        m->mixes = malloc((size_t)count * sizeof *m->mixes);
        if (!m->mixes) {
            free(alone);
            return error_set(err, "out of memory");
        }
        for (int i = 0; i < count; i++) {
            mix_evaluate(m, (uint64_t)i + 1, &m->mixes[i]);
            pool(&m->mixes[i], alone);
        }
        m->mix_count = count;
        qsort(m->mixes, (size_t)count, sizeof *m->mixes, compare_mixes);
    }
    free(alone);
    return 0;
}

void step_model_finish(step_model *m)
{
    free(m->mixes);
    m->mixes = NULL;
    m->mix_count = 0;
}
