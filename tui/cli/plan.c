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
    json_t *root = json_pack(
        "{s:s, s:s, s:o, s:f, s:f, s:s, s:o, s:o}", "config", cfg->source,
        "currency", cfg->cluster.currency, "model", model, "tokens_per_step",
        m->tokens_per_step, "bytes_per_param", cfg->plan.bytes_per_param,
        "dense", config_dense_names[cfg->plan.dense],
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
        const step_model_device *u = &mix->use[j];
        const config_device *d = &cfg->cluster.devices[u->entry];
        char name[32], experts[32];
        snprintf(experts, sizeof experts, "%d-%d", u->experts_min,
                 u->experts_max);
        printf("  %-10s %6d %6.2f %8.0f %8.0f %8.1f %12s %10.2f\n",
               step_model_device_name(cfg, u->entry, name, sizeof name),
               d->count, d->utilization, d->peak_tflops, d->memory_gb,
               u->used_gb, experts, d->price_per_hour);
    }
    printf("  used GB: the fullest device of the type; experts/dev: routed "
           "experts\n  on one device of the type, fewest-most\n\n");
}

static void print_text(const step_model *m)
{
    const step_model_mix *mixes = m->mixes;
    const int mix_count = m->mix_count;
    const config *cfg = m->cfg;
    const cost_params *p = &m->params;
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
           cfg->train.batch_size, cfg->model.seq_len, m->tokens_per_step,
           cfg->plan.bytes_per_param,
           cfg->plan.dense == CONFIG_DENSE_SHARDED ? "sharded over devices"
                                                   : "on every device");
    print_cluster(m, &m->cluster);

    if (mix_count == 0) {
        printf("Mixes: not listed for more than %d device entries\n\n",
               STEP_MODEL_MAX_MIX_ENTRIES);
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
            const step_model_mix *mix = &mixes[i];
            mix_label(cfg, mix, label, sizeof label);
            if (mix->fits)
                printf("  %-*s %6d %9.2f %10.0f %6.1f %12s  yes%s\n", width,
                       label, mix->ranks, mix->step_s, mix->tokens_per_s,
                       100 * mix->mfu,
                       si(mix->cost_per_mtok * 1e6, 3, a, sizeof a),
                       i == 0 ? "  <- cheapest" : "");
            else
                printf("  %-*s %6d %9s %10s %6s %12s  no: needs %.1f GB a "
                       "device\n", width, label, mix->ranks, "-", "-", "-",
                       "-", mix->need_gb);
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
