/* `moectl plan`: the analytic model of a training step.
 *
 * A mix is a set of cluster.devices entries, each with its count; every
 * device is one rank. Rank r runs at s_r = utilization_r · peak_tflops_r ·
 * 1e12 FLOP/s, and a step trains G = train.batch_size · model.seq_len
 * tokens at 6 FLOP per parameter and token (forward and backward):
 *
 * - Dense parameters are data-parallel, the batch split equally over the n
 *   ranks as the trainer splits it: base_s[r] = (G/n) · 6 · dense / s_r.
 * - Routed experts: every expert of a layer gets G · top_k / n_experts
 *   rows (uniform load); rank r runs them at s_r / (6 · expert) rows/s.
 * - Memory: a rank holds its dense state (dense · bytes_per_param, divided
 *   by n when plan.dense is sharded) and its experts (expert ·
 *   bytes_per_param each) within memory_gb.
 * - The placement planner (engine/balance/planner.h) starts from round-robin and
 *   places the experts within each rank's memory so as to minimise its
 *   step time T: the slowest rank's dense time plus, for each layer, the
 *   slowest rank's expert time (layers meet at the token all-to-all).
 *
 * Then tokens/s = G / T, MFU and cost per token follow engine/balance/cost.h with
 * the mix's Σ peak and Σ price_per_hour. Not modelled: communication,
 * activation memory, load imbalance between experts, expert replicas. */
#include "tui/cli/plan.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/balance/cost.h"
#include "engine/balance/planner.h"

/* Mixes are every subset of the device entries: 2^8 - 1 at most. */
enum { PLAN_MAX_MIX_ENTRIES = 8 };
/* Beyond this the planner's work (ranks × experts) stops being instant. */
enum { PLAN_MAX_RANKS = 65536 };

/* One device entry's part in a mix. */
typedef struct plan_device_use {
    int entry;                    /* index in cluster.devices */
    int experts_min, experts_max; /* routed experts on one of its ranks */
    double used_gb;               /* its fullest rank: dense state + experts */
} plan_device_use;

typedef struct plan_mix {
    uint64_t mask; /* bit i: cluster.devices[i] takes part */
    int entries;
    int ranks;
    int fits;
    double need_gb;            /* per device with the experts spread evenly */
    double step_s;             /* with the planner's placement */
    double round_robin_step_s; /* with the starting placement */
    double tokens_per_s, mfu, price_per_hour, peak_flops, cost_per_mtok;
    plan_device_use use[CONFIG_MAX_DEVICES]; /* (entries) */
} plan_mix;

typedef struct plan_model {
    const config *cfg;
    cost_params params;
    double tokens_per_step; /* G */
    double expert_bytes;
} plan_model;

static double dense_bytes_per_rank(const plan_model *pm, int ranks)
{
    double bytes = pm->params.dense * pm->cfg->plan.bytes_per_param;
    return pm->cfg->plan.dense == CONFIG_DENSE_SHARDED ? bytes / ranks
                                                       : bytes;
}

/* Fills mix for the device entries in mask; returns -1 when out of
 * memory. A mix that cannot hold the model has fits 0 and NAN times. */
static int plan_mix_evaluate(const plan_model *pm, uint64_t mask,
                             plan_mix *mix)
{
    const config *cfg = pm->cfg;
    const int L = cfg->model.n_layers, E = cfg->moe.n_experts;
    const size_t experts = (size_t)L * E;

    memset(mix, 0, sizeof *mix);
    mix->mask = mask;
    for (int i = 0; i < cfg->cluster.device_count; i++) {
        if (!(mask >> i & 1))
            continue;
        const config_device *d = &cfg->cluster.devices[i];
        mix->use[mix->entries++].entry = i;
        mix->ranks += d->count;
        mix->price_per_hour += d->count * d->price_per_hour;
        mix->peak_flops += d->count * d->peak_tflops * 1e12;
    }
    const int n = mix->ranks;
    const double dense_bytes = dense_bytes_per_rank(pm, n);
    const double even_experts = ceil((double)experts / n);
    mix->need_gb = (dense_bytes + even_experts * pm->expert_bytes) / 1e9;
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

    const double G = pm->tokens_per_step;
    for (int j = 0, r = 0; j < mix->entries; j++) {
        const config_device *d = &cfg->cluster.devices[mix->use[j].entry];
        double flops_per_s = d->utilization * d->peak_tflops * 1e12;
        /* A rank with exactly no room holds no expert; <= 0 would read as
         * unlimited. */
        double room = d->memory_gb * 1e9 - dense_bytes;
        for (int c = 0; c < d->count; c++, r++) {
            entry_of_rank[r] = j;
            rank[r] = (planner_rank){
                .rate = flops_per_s / (6 * pm->params.expert),
                .base_s = G / n * 6 * pm->params.dense / flops_per_s,
                .capacity_bytes = room > 0 ? room : 1e-9,
            };
        }
    }
    for (size_t i = 0; i < experts; i++) {
        load[i] = G * cfg->moe.top_k / E;
        start[i] = (int)(i % (size_t)n);
    }
    planner_problem problem = {
        .layers = L, .experts = E, .ranks = n, .load = load, .rank = rank,
        .placement = start, .expert_bytes = pm->expert_bytes,
        .move_s_per_byte = 0,
    };
    mix->round_robin_step_s = planner_step_time(&problem, start);
    status = 0;
    if (planner_plan(&problem, placement) < 0)
        goto done; /* no placement fits the memory */

    mix->fits = 1;
    mix->step_s = planner_step_time(&problem, placement);
    mix->tokens_per_s = G / mix->step_s;
    mix->mfu = cost_mfu(pm->params.active, mix->tokens_per_s,
                        mix->peak_flops);
    mix->cost_per_mtok = cost_per_mtok(mix->price_per_hour,
                                       mix->tokens_per_s);
    for (size_t i = 0; i < experts; i++)
        experts_on_rank[placement[i]]++;
    for (int j = 0; j < mix->entries; j++) {
        mix->use[j].experts_min = (int)experts;
        mix->use[j].used_gb = 0;
    }
    for (int r = 0; r < n; r++) {
        plan_device_use *u = &mix->use[entry_of_rank[r]];
        int k = experts_on_rank[r];
        if (k < u->experts_min)
            u->experts_min = k;
        if (k > u->experts_max)
            u->experts_max = k;
        double gb = (dense_bytes + k * pm->expert_bytes) / 1e9;
        if (gb > u->used_gb)
            u->used_gb = gb;
    }

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
    const plan_mix *x = a, *y = b;
    if (x->fits != y->fits)
        return y->fits - x->fits;
    if (x->fits && x->cost_per_mtok != y->cost_per_mtok)
        return x->cost_per_mtok < y->cost_per_mtok ? -1 : 1;
    if (x->ranks != y->ranks)
        return x->ranks - y->ranks;
    return (x->mask > y->mask) - (x->mask < y->mask);
}

static const char *device_name(const config *cfg, int i, char *buf,
                               size_t size)
{
    if (cfg->cluster.devices[i].name[0])
        return cfg->cluster.devices[i].name;
    snprintf(buf, size, "devices[%d]", i);
    return buf;
}

/* "A+C+D". */
static void mix_label(const config *cfg, const plan_mix *mix, char *out,
                      size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (int j = 0; j < mix->entries && used < size; j++) {
        char buf[32];
        int w = snprintf(out + used, size - used, "%s%s", j ? "+" : "",
                         device_name(cfg, mix->use[j].entry, buf, sizeof buf));
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

/* `digits` significant digits and a scale: "6.40M", "290.6B", "812". */
static const char *si(double x, int digits, char *buf, size_t size)
{
    static const struct {
        double scale;
        const char *suffix;
    } scales[] = {{1e12, "T"}, {1e9, "B"}, {1e6, "M"}, {1e3, "k"}, {1, ""}};
    if (!isfinite(x)) {
        snprintf(buf, size, "-");
        return buf;
    }
    size_t i = 0;
    while (i + 1 < sizeof scales / sizeof scales[0] &&
           fabs(x) < scales[i].scale)
        i++;
    double v = x / scales[i].scale;
    int whole = v != 0 ? (int)floor(log10(fabs(v))) + 1 : 1;
    int decimals = digits > whole ? digits - whole : 0;
    snprintf(buf, size, "%.*f%s", decimals, v, scales[i].suffix);
    return buf;
}

static json_t *number(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

static json_t *mix_json(const plan_model *pm, const plan_mix *mix,
                        int cheapest)
{
    const config *cfg = pm->cfg;
    json_t *devices = json_array(), *names = json_array();
    for (int j = 0; j < mix->entries; j++) {
        const plan_device_use *u = &mix->use[j];
        const config_device *d = &cfg->cluster.devices[u->entry];
        char buf[32];
        const char *name = device_name(cfg, u->entry, buf, sizeof buf);
        json_array_append_new(names, json_string(name));
        json_t *device = json_pack(
            "{s:s, s:i, s:i, s:f, s:f, s:f, s:f, s:o}", "name", name,
            "entry", u->entry, "count", d->count, "utilization",
            d->utilization, "peak_tflops", d->peak_tflops, "memory_gb",
            d->memory_gb, "price_per_hour", d->price_per_hour, "used_gb",
            number(u->used_gb));
        if (mix->fits) {
            json_object_set_new(device, "experts_per_device_min",
                                json_integer(u->experts_min));
            json_object_set_new(device, "experts_per_device_max",
                                json_integer(u->experts_max));
        }
        json_array_append_new(devices, device);
    }
    return json_pack(
        "{s:o, s:i, s:b, s:b, s:o, s:o, s:o, s:o, s:f, s:f, s:o, s:o, "
        "s:o, s:f, s:o}",
        "devices", names, "ranks", mix->ranks, "fits", mix->fits,
        "cheapest", cheapest, "step_s", number(mix->step_s),
        "round_robin_step_s", number(mix->round_robin_step_s),
        "tokens_per_s", number(mix->tokens_per_s), "mfu", number(mix->mfu),
        "price_per_hour", mix->price_per_hour, "peak_flops",
        mix->peak_flops, "cost_per_1m_tokens", number(mix->cost_per_mtok),
        "cost_per_1b_tokens", number(mix->cost_per_mtok * 1e3),
        "cost_per_1t_tokens", number(mix->cost_per_mtok * 1e6),
        "need_gb_per_device", mix->need_gb, "device_types", devices);
}

static int print_json(const plan_model *pm, const plan_mix *cluster,
                      const plan_mix *mixes, int mix_count)
{
    const config *cfg = pm->cfg;
    const cost_params *p = &pm->params;
    int cluster_cheapest = mix_count > 0 && mixes[0].fits &&
                           mixes[0].mask == cluster->mask;
    json_t *rows = json_array();
    for (int i = 0; i < mix_count; i++)
        json_array_append_new(rows, mix_json(pm, &mixes[i],
                                             i == 0 && mixes[i].fits));
    json_t *model = json_pack(
        "{s:f, s:f, s:f, s:f, s:f, s:i, s:i, s:i, s:i}", "total_params",
        p->total, "active_params", p->active, "dense_params", p->dense,
        "expert_params", p->expert, "routed_params", p->routed, "layers",
        cfg->model.n_layers, "experts", cfg->moe.n_experts, "top_k",
        cfg->moe.top_k, "shared_experts", cfg->moe.n_shared);
    json_t *root = json_pack(
        "{s:s, s:s, s:o, s:f, s:f, s:s, s:o, s:o}", "config", cfg->source,
        "currency", cfg->cluster.currency, "model", model, "tokens_per_step",
        pm->tokens_per_step, "bytes_per_param", cfg->plan.bytes_per_param,
        "dense", config_dense_names[cfg->plan.dense],
        "cluster", mix_json(pm, cluster, cluster_cheapest), "mixes", rows);
    if (!root) {
        fprintf(stderr, "moectl plan: cannot build the JSON output\n");
        return 1;
    }
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text)
        return 1;
    puts(text);
    free(text);
    return 0;
}

static void print_cluster(const plan_model *pm, const plan_mix *mix)
{
    const config *cfg = pm->cfg;
    const char *cur = cfg->cluster.currency;
    char a[32], b[32], c[32];
    printf("The configured cluster: %d devices, %.2f %s/h, peak %.0f "
           "TFLOP/s\n", mix->ranks, mix->price_per_hour, cur,
           mix->peak_flops / 1e12);
    if (!mix->fits) {
        printf("  does not fit: the model needs %.1f GB a device "
               "(dense state and experts spread evenly)\n\n", mix->need_gb);
        return;
    }
    printf("  step time      %.2f s (round-robin placement: %.2f s)\n",
           mix->step_s, mix->round_robin_step_s);
    printf("  tokens/s       %.0f\n", mix->tokens_per_s);
    printf("  MFU            %.1f %%\n", 100 * mix->mfu);
    printf("  cost           %s %s per 1M tokens, %s per 1B, %s per 1T\n",
           si(mix->cost_per_mtok, 3, a, sizeof a), cur,
           si(mix->cost_per_mtok * 1e3, 3, b, sizeof b),
           si(mix->cost_per_mtok * 1e6, 3, c, sizeof c));
    printf("\n  %-10s %6s %6s %8s %8s %8s %12s %10s\n", "device", "count",
           "util", "TFLOPS", "mem GB", "used GB", "experts/dev",
           "price/h");
    for (int j = 0; j < mix->entries; j++) {
        const plan_device_use *u = &mix->use[j];
        const config_device *d = &cfg->cluster.devices[u->entry];
        char name[32], experts[32];
        snprintf(experts, sizeof experts, "%d-%d", u->experts_min,
                 u->experts_max);
        printf("  %-10s %6d %6.2f %8.0f %8.0f %8.1f %12s %10.2f\n",
               device_name(cfg, u->entry, name, sizeof name), d->count,
               d->utilization, d->peak_tflops, d->memory_gb, u->used_gb,
               experts, d->price_per_hour);
    }
    printf("  used GB: the fullest device of the type; experts/dev: routed "
           "experts\n  on one device of the type, fewest-most\n\n");
}

static void print_text(const plan_model *pm, const plan_mix *cluster,
                       const plan_mix *mixes, int mix_count)
{
    const config *cfg = pm->cfg;
    const cost_params *p = &pm->params;
    const char *cur = cfg->cluster.currency;
    char a[32], b[32], c[32], d[32];
    printf("moectl plan %s: an analytic estimate, nothing is trained\n\n",
           cfg->source);
    printf("Model: %s parameters, %s active a token\n"
           "  dense %s; %d x %d routed experts of %s each\n",
           si(p->total, 4, a, sizeof a), si(p->active, 4, b, sizeof b),
           si(p->dense, 4, c, sizeof c), cfg->model.n_layers,
           cfg->moe.n_experts, si(p->expert, 3, d, sizeof d));
    printf("Step: %d sequences x %d tokens = %.0f tokens\n"
           "  %g bytes of training state a parameter, dense state %s\n\n",
           cfg->train.batch_size, cfg->model.seq_len, pm->tokens_per_step,
           cfg->plan.bytes_per_param,
           cfg->plan.dense == CONFIG_DENSE_SHARDED ? "sharded over devices"
                                                   : "on every device");
    print_cluster(pm, cluster);

    if (mix_count == 0) {
        printf("Mixes: not listed for more than %d device entries\n\n",
               PLAN_MAX_MIX_ENTRIES);
    } else {
        printf("Mixes of the device types (each at its configured count), "
               "cheapest first:\n");
        char cost_header[32], label[256];
        snprintf(cost_header, sizeof cost_header, "%s/1T tok", cur);
        int width = (int)strlen("devices");
        for (int i = 0; i < mix_count; i++) {
            mix_label(cfg, &mixes[i], label, sizeof label);
            if ((int)strlen(label) > width)
                width = (int)strlen(label);
        }
        printf("  %-*s %6s %9s %10s %6s %12s  %s\n", width, "devices",
               "ranks", "step s", "tokens/s", "MFU %", cost_header, "fits");
        for (int i = 0; i < mix_count; i++) {
            const plan_mix *m = &mixes[i];
            mix_label(cfg, m, label, sizeof label);
            if (m->fits)
                printf("  %-*s %6d %9.2f %10.0f %6.1f %12s  yes%s\n", width,
                       label, m->ranks, m->step_s, m->tokens_per_s,
                       100 * m->mfu,
                       si(m->cost_per_mtok * 1e6, 3, a, sizeof a),
                       i == 0 ? "  <- cheapest" : "");
            else
                printf("  %-*s %6d %9s %10s %6s %12s  no: needs %.1f GB a "
                       "device\n", width, label, m->ranks, "-", "-", "-",
                       "-", m->need_gb);
        }
        printf("\n");
    }
    printf(
        "How: each device runs at utilization x peak. A step is the slowest\n"
        "device's share of the dense work (the batch split equally; 6 FLOP\n"
        "per parameter and token) plus, layer by layer, the slowest device's\n"
        "routed experts (uniform load: top_k / n_experts of the tokens to\n"
        "each), which the planner places within each device's memory.\n"
        "Cost = sum of price/h / 3600 / tokens/s; MFU = 6 x active params x\n"
        "tokens/s / sum of peak. Not modelled: communication, activation\n"
        "memory, uneven expert load, expert replicas. Utilization is each\n"
        "device type's expected MFU (cluster.devices[i].utilization); try\n"
        "another with --set cluster.devices.I.utilization=U.\n");
}

int plan_run(const config *cfg, const plan_options *opt)
{
    if (cfg->cluster.device_count < 1) {
        fprintf(stderr, "moectl plan: %s: cluster.devices is empty\n",
                cfg->source);
        return 2;
    }
    int ranks = 0;
    for (int i = 0; i < cfg->cluster.device_count; i++) {
        const config_device *d = &cfg->cluster.devices[i];
        char buf[32];
        if (d->utilization <= 0) {
            fprintf(stderr,
                    "moectl plan: %s: cluster.devices[%d] (%s) states no "
                    "utilization: set the fraction of peak_tflops it is "
                    "expected to reach, e.g. --set "
                    "cluster.devices.%d.utilization=0.3\n",
                    cfg->source, i, device_name(cfg, i, buf, sizeof buf), i);
            return 2;
        }
        ranks += d->count;
        if (ranks > PLAN_MAX_RANKS) {
            fprintf(stderr, "moectl plan: %s: more than %d devices in "
                            "cluster.devices (counts included)\n",
                    cfg->source, PLAN_MAX_RANKS);
            return 2;
        }
    }

    plan_model pm = {.cfg = cfg};
    cost_model_params(cfg, &pm.params);
    pm.tokens_per_step = (double)cfg->train.batch_size * cfg->model.seq_len;
    pm.expert_bytes = pm.params.expert * cfg->plan.bytes_per_param;

    const int entries = cfg->cluster.device_count;
    const int mix_count = entries <= PLAN_MAX_MIX_ENTRIES
                              ? (1 << entries) - 1 : 0;
    const uint64_t all = entries == 64 ? UINT64_MAX
                                       : ((uint64_t)1 << entries) - 1;
    plan_mix *cluster = malloc(sizeof *cluster);
    plan_mix *mixes = malloc(((size_t)mix_count + 1) * sizeof *mixes);
    int status;
    if (!cluster || !mixes || plan_mix_evaluate(&pm, all, cluster) < 0)
        goto out_of_memory;
    for (int i = 0; i < mix_count; i++) {
        uint64_t mask = (uint64_t)i + 1;
        if (mask == all)
            mixes[i] = *cluster;
        else if (plan_mix_evaluate(&pm, mask, &mixes[i]) < 0)
            goto out_of_memory;
    }
    qsort(mixes, (size_t)mix_count, sizeof *mixes, compare_mixes);

    if (opt->json) {
        status = print_json(&pm, cluster, mixes, mix_count);
    } else {
        print_text(&pm, cluster, mixes, mix_count);
        status = 0;
    }
    if (fflush(stdout) != 0)
        status = 1;
    free(cluster);
    free(mixes);
    return status;

out_of_memory:
    fprintf(stderr, "moectl plan: out of memory\n");
    free(cluster);
    free(mixes);
    return 1;
}
