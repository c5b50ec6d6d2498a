/* `moectl plan`: prints what engine/balance/step_model.h predicts for a
 * configuration, as a text table or as one JSON object. */
#include "tui/cli/plan.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/balance/step_model.h"

/* "A+C+D". */
static void mix_label(const config *cfg, const step_model_mix *mix, char *out,
                      size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (int j = 0; j < mix->entries && used < size; j++) {
        char buf[32];
        const char *name = step_model_device_name(cfg, mix->use[j].entry,
                                                  buf, sizeof buf);
        int w = snprintf(out + used, size - used, "%s%s", j ? "+" : "",
                         name);
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

static json_t *mix_json(const step_model *m, const step_model_mix *mix,
                        int cheapest)
{
    const config *cfg = m->cfg;
    json_t *devices = json_array(), *names = json_array();
    for (int j = 0; j < mix->entries; j++) {
        const step_model_device *u = &mix->use[j];
        const config_device *d = &cfg->cluster.devices[u->entry];
        char buf[32];
        const char *name = step_model_device_name(cfg, u->entry, buf,
                                                  sizeof buf);
        json_array_append_new(names, json_string(name));
        json_t *device = json_pack(
            "{s:s, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:o}", "name", name,
            "entry", u->entry, "count", d->count, "utilization",
            d->utilization, "peak_tflops", d->peak_tflops, "memory_gb",
            d->memory_gb, "price_per_hour", d->price_per_hour, "link_gbps",
            u->link_bytes_per_s / 1e9, "used_gb", number(u->used_gb));
        if (mix->fits) {
            json_t *shares = json_pack(
                "{s:f, s:f, s:f, s:f, s:i, s:i, s:f, s:f}", "dense_share",
                u->dense_share, "expert_share", u->expert_share,
                "rows_per_device", u->rows, "experts_per_device", u->experts,
                "experts_per_device_min", u->experts_min,
                "experts_per_device_max", u->experts_max, "compute_s",
                u->compute_s, "exchange_s", u->exchange_s);
            json_object_update(device, shares);
            json_decref(shares);
        }
        json_array_append_new(devices, device);
    }
    return json_pack(
        "{s:o, s:i, s:b, s:b, s:o, s:o, s:o, s:o, s:o, s:f, s:f, s:o, s:o, "
        "s:o, s:o, s:o, s:o, s:f, s:o}",
        "devices", names, "ranks", mix->ranks, "fits", mix->fits,
        "cheapest", cheapest, "step_s", number(mix->step_s),
        "allreduce_s", number(mix->sync_s),
        "equal_split_step_s", number(mix->equal_step_s),
        "tokens_per_s", number(mix->tokens_per_s), "mfu", number(mix->mfu),
        "price_per_hour", mix->price_per_hour, "peak_flops",
        mix->peak_flops, "cost_per_1m_tokens", number(mix->cost_per_mtok),
        "cost_per_1b_tokens", number(mix->cost_per_mtok * 1e3),
        "cost_per_1t_tokens", number(mix->cost_per_mtok * 1e6),
        "days_to_budget", number(mix->budget_days),
        "members_tokens_per_s", number(mix->members_tokens_per_s),
        "pooling", number(mix->pooling),
        "need_gb_per_device", mix->need_gb, "device_types", devices);
}

static int print_json(const step_model *m)
{
    const step_model_mix *cluster = &m->cluster, *mixes = m->mixes;
    const int mix_count = m->mix_count;
    const config *cfg = m->cfg;
    const cost_params *p = &m->params;
    int cluster_cheapest = mix_count > 0 && mixes[0].fits &&
                           mixes[0].mask == cluster->mask;
    json_t *rows = json_array();
    for (int i = 0; i < mix_count; i++)
        json_array_append_new(rows, mix_json(m, &mixes[i],
                                             i == 0 && mixes[i].fits));
    json_t *model = json_pack(
        "{s:f, s:f, s:f, s:f, s:f, s:i, s:i, s:i, s:i}", "total_params",
        p->total, "active_params", p->active, "dense_params", p->dense,
        "expert_params", p->expert, "routed_params", p->routed, "layers",
        cfg->model.n_layers, "experts", cfg->moe.n_experts, "top_k",
        cfg->moe.top_k, "shared_experts", cfg->moe.n_shared);
    json_t *assumptions = json_pack(
        "{s:f, s:f, s:f, s:f, s:f, s:s, s:b}", "dense_flop_per_step",
        m->dense_work, "expert_flop_per_step", m->expert_work,
        "alltoall_bytes_per_step", m->exchange_bytes, "exchange_bytes",
        cfg->plan.exchange_bytes, "cluster_link_gbps", cfg->cluster.link_gbps,
        "allreduce", cfg->plan.dense == CONFIG_DENSE_SHARDED
                         ? "ring, 3 passes (sharded dense state)"
                         : "ring, 2 passes",
        "overlap", 0);
    json_t *root = json_pack(
        "{s:s, s:s, s:o, s:f, s:f, s:s, s:f, s:o, s:o, s:o}", "config",
        cfg->source, "currency", cfg->cluster.currency, "model", model,
        "tokens_per_step", m->tokens_per_step, "bytes_per_param",
        cfg->plan.bytes_per_param, "dense", config_dense_names[cfg->plan.dense],
        "token_budget", cfg->plan.token_budget, "assumptions", assumptions,
        "cluster", mix_json(m, cluster, cluster_cheapest), "mixes", rows);
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

static void print_cluster(const step_model *m, const step_model_mix *mix)
{
    const config *cfg = m->cfg;
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
    printf("  step time      %.2f s, all-reduce %.2f s of it (rows and "
           "experts split equally: %.2f s)\n", mix->step_s, mix->sync_s,
           mix->equal_step_s);
    printf("  tokens/s       %.0f, %.2f of its device types' alone added "
           "up\n", mix->tokens_per_s, mix->pooling);
    printf("  MFU            %.1f %%\n", 100 * mix->mfu);
    printf("  cost           %s %s per 1M tokens, %s per 1B, %s per 1T\n",
           si(mix->cost_per_mtok, 3, a, sizeof a), cur,
           si(mix->cost_per_mtok * 1e3, 3, b, sizeof b),
           si(mix->cost_per_mtok * 1e6, 3, c, sizeof c));
    printf("  time to %s tokens: %.1f days\n",
           si(cfg->plan.token_budget, 3, a, sizeof a), mix->budget_days);
    printf("\n  %-8s %5s %5s %6s %5s %6s %6s %7s %8s %7s %6s %7s\n",
           "device", "count", "util", "TFLOPS", "GB/s", "mem GB", "used",
           "rows", "experts", "compute", "a2a", "price/h");
    for (int j = 0; j < mix->entries; j++) {
        const step_model_device *u = &mix->use[j];
        const config_device *d = &cfg->cluster.devices[u->entry];
        char name[32];
        printf("  %-8s %5d %5.2f %6.0f %5.1f %6.0f %6.1f %7.2f %8.2f %7.2f "
               "%6.2f %7.2f\n",
               step_model_device_name(cfg, u->entry, name, sizeof name),
               d->count, d->utilization, d->peak_tflops,
               u->link_bytes_per_s / 1e9, d->memory_gb, u->used_gb, u->rows,
               u->experts, u->compute_s, u->exchange_s, d->price_per_hour);
    }
    printf("  a device of the type: GB/s its link, used GB its fullest "
           "memory, rows\n  its sequences a step and experts its routed "
           "experts (fractional: split\n  with another device), compute "
           "and a2a its seconds a step\n\n");
}

/* The mix that reaches plan.token_budget first. */
static int fastest_mix(const step_model *m)
{
    int best = -1;
    for (int i = 0; i < m->mix_count; i++)
        if (m->mixes[i].fits &&
            (best < 0 || m->mixes[i].step_s < m->mixes[best].step_s))
            best = i;
    return best;
}

static void print_mixes(const step_model *m)
{
    const step_model_mix *mixes = m->mixes;
    const config *cfg = m->cfg;
    char a[32], cost_header[32], days_header[32], label[256];
    printf("Mixes of the device types (each at its configured count), "
           "cheapest first;\npool: tokens/s over the sum of its types' "
           "tokens/s alone:\n");
    snprintf(cost_header, sizeof cost_header, "%s/1T tok",
             cfg->cluster.currency);
    snprintf(days_header, sizeof days_header, "days/%s",
             si(cfg->plan.token_budget, 3, a, sizeof a));
    int width = (int)strlen("devices"), fastest = fastest_mix(m);
    for (int i = 0; i < m->mix_count; i++) {
        mix_label(cfg, &mixes[i], label, sizeof label);
        if ((int)strlen(label) > width)
            width = (int)strlen(label);
    }
    printf("  %-*s %6s %8s %9s %5s %6s %12s %9s  %s\n", width, "devices",
           "ranks", "step s", "tokens/s", "pool", "MFU %", cost_header,
           days_header, "fits");
    for (int i = 0; i < m->mix_count; i++) {
        const step_model_mix *mix = &mixes[i];
        mix_label(cfg, mix, label, sizeof label);
        if (!mix->fits) {
            printf("  %-*s %6d %8s %9s %5s %6s %12s %9s  no: needs %.1f GB "
                   "a device\n", width, label, mix->ranks, "-", "-", "-",
                   "-", "-", "-", mix->need_gb);
            continue;
        }
        char pool[16] = "-";
        if (isfinite(mix->pooling) && mix->entries > 1)
            snprintf(pool, sizeof pool, "%.2f", mix->pooling);
        printf("  %-*s %6d %8.2f %9.0f %5s %6.1f %12s %9.1f  yes%s%s\n",
               width, label, mix->ranks, mix->step_s, mix->tokens_per_s,
               pool, 100 * mix->mfu,
               si(mix->cost_per_mtok * 1e6, 3, a, sizeof a),
               mix->budget_days, i == 0 ? "  <- cheapest" : "",
               i == fastest ? "  <- fastest" : "");
    }
    printf("\n");
}

static void print_text(const step_model *m)
{
    const config *cfg = m->cfg;
    const cost_params *p = &m->params;
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
           cfg->train.batch_size, cfg->model.seq_len, m->tokens_per_step,
           cfg->plan.bytes_per_param,
           cfg->plan.dense == CONFIG_DENSE_SHARDED ? "sharded over devices"
                                                   : "on every device");
    print_cluster(m, &m->cluster);
    if (m->mix_count == 0)
        printf("Mixes: not listed for more than %d device entries\n\n",
               STEP_MODEL_MAX_MIX_ENTRIES);
    else
        print_mixes(m);
    printf(
        "How: one planner splits both levers by speed. Each device type "
        "trains a\nshare of the batch's rows (dense work: 6 FLOP per "
        "parameter and token)\nand runs a share of every layer's routed "
        "expert rows (uniform load,\nexperts split between devices where "
        "needed), chosen so that the slowest\ndevice finishes first, "
        "within each device's memory (dense state and its\nexperts, %g "
        "bytes a parameter). Each device computes at utilization x\npeak.\n"
        "Communication, not overlapped with compute: the all-to-all moves "
        "%s\nbytes a step (each token's activation to its %d experts and "
        "back,\nforward and backward, %g bytes an element), each device "
        "its part over\nits own link; the dense gradients' ring all-reduce "
        "(%s dense parameters)\nruns at the slowest link's speed.\n"
        "Assumptions that drive it: cluster.devices[].utilization and\n"
        "cluster.devices[].link_gbps (else cluster.link_gbps, %g GB/s); "
        "change\none with --set cluster.devices.I.utilization=U. Cost = "
        "sum of price/h\n/ 3600 / tokens/s; MFU = 6 x active params x "
        "tokens/s / sum of peak.\nNot modelled: activation memory, uneven "
        "expert load, the memory of split\nexperts' replicas, rows being "
        "whole sequences.\n",
        cfg->plan.bytes_per_param, si(m->exchange_bytes, 3, a, sizeof a),
        cfg->moe.top_k, cfg->plan.exchange_bytes,
        si(p->dense, 4, b, sizeof b), cfg->cluster.link_gbps);
}

int plan_run(const config *cfg, const plan_options *opt)
{
    moe_error err;
    if (step_model_check(cfg, &err) < 0) {
        fprintf(stderr, "moectl plan: %s\n", err.message);
        return 2;
    }
    step_model m;
    if (step_model_init(&m, cfg, &err) < 0) {
        fprintf(stderr, "moectl plan: %s\n", err.message);
        step_model_finish(&m);
        return 1;
    }
    int status = 0;
    if (opt->json)
        status = print_json(&m);
    else
        print_text(&m);
    if (fflush(stdout) != 0)
        status = 1;
    step_model_finish(&m);
    return status;
}
