/* The analytic step model (engine/balance/step_model.h) on a two-device
 * configuration small enough to work by hand: every predicted time is
 * recomputed here from the formulas in the header, the placement from
 * first principles (which rank the two experts of the one layer should
 * go to), and the cost and MFU from their definitions. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/balance/cost.h"
#include "engine/balance/step_model.h"
#include "engine/config/config.h"

#include "tests/expect.h"

/* One layer of two routed experts (top 1) of 3 · 8 · 16 = 384 parameters,
 * 4 sequences of 8 tokens: G = 32, and each expert gets 16 rows.
 * Device A runs at 0.5 · 200 TFLOP/s = 1e14 FLOP/s, B at 0.5 · 50 =
 * 2.5e13 (4x slower); both hold the whole model. */
enum { G = 32, EXPERT_PARAMS = 3 * 8 * 16 };
static const double S_A = 1e14, S_B = 2.5e13;

static void small_config(config *cfg)
{
    config_defaults(cfg);
    snprintf(cfg->source, sizeof cfg->source, "small.yaml");
    cfg->model.d_model = 8;
    cfg->model.n_heads = 2;
    cfg->model.n_layers = 1;
    cfg->model.seq_len = 8;
    cfg->moe.n_experts = 2;
    cfg->moe.top_k = 1;
    cfg->moe.n_shared = 0;
    cfg->moe.expert_hidden = 16;
    cfg->train.batch_size = 4;
    cfg->plan.bytes_per_param = 16;
    cfg->plan.dense = CONFIG_DENSE_REPLICATED;
    cfg->cluster.device_count = 2;
    cfg->cluster.devices[1] = cfg->cluster.devices[0];
    config_device *a = &cfg->cluster.devices[0], *b = &cfg->cluster.devices[1];
    snprintf(a->name, sizeof a->name, "A");
    snprintf(b->name, sizeof b->name, "B");
    a->count = b->count = 1;
    a->peak_tflops = 200, a->utilization = 0.5, a->price_per_hour = 4.0;
    b->peak_tflops = 50, b->utilization = 0.5, b->price_per_hour = 0.9;
    a->memory_gb = b->memory_gb = 1.0;
}

static int close_to(double got, double want)
{
    return fabs(got - want) <= 1e-12 * fabs(want);
}

static const step_model_mix *find_mix(const step_model *m, uint64_t mask)
{
    for (int i = 0; i < m->mix_count; i++)
        if (m->mixes[i].mask == mask)
            return &m->mixes[i];
    return NULL;
}

/* The figures every fitting mix must show for step time step_s. */
static void expect_prices(const char *what, const step_model *m,
                          const step_model_mix *mix, double step_s,
                          double price_per_hour, double peak_flops)
{
    double active = m->params.dense + EXPERT_PARAMS; /* top 1 of 1 layer */
    double tokens_per_s = G / step_s;
    EXPECT(mix->fits, "%s: does not fit", what);
    EXPECT(close_to(mix->step_s, step_s), "%s: step %.17g s, want %.17g",
           what, mix->step_s, step_s);
    EXPECT(close_to(mix->tokens_per_s, tokens_per_s),
           "%s: %.17g tokens/s, want %.17g", what, mix->tokens_per_s,
           tokens_per_s);
    EXPECT(close_to(mix->price_per_hour, price_per_hour) &&
               close_to(mix->peak_flops, peak_flops),
           "%s: price %g, peak %g", what, mix->price_per_hour,
           mix->peak_flops);
    double cost = price_per_hour / 3600 / tokens_per_s * 1e6;
    double mfu = 6 * active * tokens_per_s / peak_flops;
    EXPECT(close_to(mix->cost_per_mtok, cost), "%s: cost %.17g, want %.17g",
           what, mix->cost_per_mtok, cost);
    EXPECT(close_to(mix->mfu, mfu), "%s: MFU %.17g, want %.17g", what,
           mix->mfu, mfu);
    /* Both rise and fall with tokens/s: their product is the price of a
     * FLOP of peak, whatever the step time. */
    double product = 1e6 * price_per_hour * 6 * active / (3600 * peak_flops);
    EXPECT(close_to(mix->cost_per_mtok * mix->mfu, product),
           "%s: cost x MFU %.17g, want %.17g", what,
           mix->cost_per_mtok * mix->mfu, product);
}

/* step_model_init, counting a failure. */
static int model_init(step_model *m, const config *cfg)
{
    moe_error err;
    if (step_model_init(m, cfg, &err) < 0) {
        EXPECT(0, "step_model_init: %s", err.message);
        return -1;
    }
    return 0;
}

static void test_by_hand(void)
{
    config cfg;
    small_config(&cfg);
    step_model m;
    if (model_init(&m, &cfg) < 0)
        return;
    const double dense = m.params.dense;
    EXPECT(m.params.expert == EXPERT_PARAMS, "expert %g", m.params.expert);
    EXPECT(m.tokens_per_step == G, "G %g", m.tokens_per_step);
    EXPECT(m.mix_count == 3, "%d mixes", m.mix_count);

    /* The cluster: the batch split over 2 ranks; B sets the dense part. */
    const step_model_mix *both = &m.cluster;
    EXPECT(both->ranks == 2 && both->entries == 2, "cluster ranks");
    double base_a = G / 2.0 * 6 * dense / S_A;
    double base_b = G / 2.0 * 6 * dense / S_B;
    EXPECT(close_to(both->use[0].dense_s, base_a) &&
               close_to(both->use[1].dense_s, base_b),
           "dense %.17g %.17g, want %.17g %.17g", both->use[0].dense_s,
           both->use[1].dense_s, base_a, base_b);
    double rate_a = S_A / (6.0 * EXPERT_PARAMS);
    double rate_b = S_B / (6.0 * EXPERT_PARAMS);
    EXPECT(close_to(both->use[0].expert_rows_per_s, rate_a) &&
               close_to(both->use[1].expert_rows_per_s, rate_b),
           "expert rates %.17g %.17g", both->use[0].expert_rows_per_s,
           both->use[1].expert_rows_per_s);
    /* Round-robin puts one expert on each: B's 16 rows set the layer.
     * Both on A (32 rows at 4x the speed) halves it, and is the best. */
    EXPECT(close_to(both->round_robin_step_s, base_b + 16 / rate_b),
           "round-robin %.17g s", both->round_robin_step_s);
    double both_s = base_b + 32 / rate_a;
    expect_prices("A+B", &m, both, both_s, 4.9, 250e12);
    EXPECT(both->use[0].experts_min == 2 && both->use[0].experts_max == 2 &&
               both->use[1].experts_max == 0,
           "A+B: A holds %d-%d experts, B %d", both->use[0].experts_min,
           both->use[0].experts_max, both->use[1].experts_max);
    double expert_gb = EXPERT_PARAMS * 16 / 1e9, dense_gb = dense * 16 / 1e9;
    EXPECT(close_to(both->use[0].used_gb, dense_gb + 2 * expert_gb) &&
               close_to(both->use[1].used_gb, dense_gb),
           "A+B: used %.17g, %.17g GB", both->use[0].used_gb,
           both->use[1].used_gb);

    /* One device each: the whole batch and both experts on it. */
    const step_model_mix *a = find_mix(&m, 1), *b = find_mix(&m, 2);
    if (!a || !b) {
        EXPECT(0, "mixes A and B missing");
        step_model_finish(&m);
        return;
    }
    double a_s = G * 6 * dense / S_A + 32 / rate_a;
    double b_s = G * 6 * dense / S_B + 32 / rate_b;
    expect_prices("A", &m, a, a_s, 4.0, 200e12);
    expect_prices("B", &m, b, b_s, 0.9, 50e12);
    /* Cheapest first: B (0.9 for 1/4 of A's speed) beats A, A beats A+B
     * (held up by B's dense part). */
    double cost_a = 4.0 / 3600 * a_s / G, cost_b = 0.9 / 3600 * b_s / G;
    double cost_both = 4.9 / 3600 * both_s / G;
    EXPECT(cost_b < cost_a && cost_a < cost_both, "hand costs not ordered");
    EXPECT(m.mixes[0].mask == 2 && m.mixes[1].mask == 1 &&
               m.mixes[2].mask == 3,
           "order %llu %llu %llu, want B, A, A+B",
           (unsigned long long)m.mixes[0].mask,
           (unsigned long long)m.mixes[1].mask,
           (unsigned long long)m.mixes[2].mask);
    step_model_finish(&m);
}

/* Memory: A holds one expert beside its dense state, so the best is
 * round-robin; B without room for the dense state fits nowhere. */
static void test_memory(void)
{
    config cfg;
    small_config(&cfg);
    step_model m;
    if (model_init(&m, &cfg) < 0)
        return;
    double dense_bytes = m.params.dense * 16;
    double expert_bytes = EXPERT_PARAMS * 16.0;
    step_model_finish(&m);

    cfg.cluster.devices[0].memory_gb = (dense_bytes + 1.5 * expert_bytes) /
                                       1e9;
    if (model_init(&m, &cfg) < 0)
        return;
    double base_b = G / 2.0 * 6 * m.params.dense / S_B;
    double rate_b = S_B / (6.0 * EXPERT_PARAMS);
    EXPECT(m.cluster.fits && close_to(m.cluster.step_s, base_b + 16 / rate_b),
           "A full: step %.17g s, want round-robin's %.17g", m.cluster.step_s,
           base_b + 16 / rate_b);
    EXPECT(m.cluster.use[0].experts_max == 1, "A full: holds %d",
           m.cluster.use[0].experts_max);
    const step_model_mix *a = find_mix(&m, 1);
    EXPECT(a && !a->fits && isnan(a->step_s) && isnan(a->cost_per_mtok),
           "A alone cannot hold both experts");
    EXPECT(m.mixes[m.mix_count - 1].mask == 1,
           "the mix that does not fit comes last");
    step_model_finish(&m);

    cfg.cluster.devices[0].memory_gb = 1.0;
    cfg.cluster.devices[1].memory_gb = 0.5 * dense_bytes / 1e9;
    if (model_init(&m, &cfg) < 0)
        return;
    EXPECT(!m.cluster.fits && isnan(m.cluster.step_s) &&
               isnan(m.cluster.use[1].used_gb),
           "B without room for the dense state: the cluster fits");
    /* Need: the dense state and ceil(2 / 2) experts a device. */
    EXPECT(close_to(m.cluster.need_gb, (dense_bytes + expert_bytes) / 1e9),
           "need %.17g GB", m.cluster.need_gb);
    step_model_finish(&m);
}

static void expect_refused(const config *cfg, const char *needle)
{
    moe_error err;
    step_model m;
    EXPECT(step_model_check(cfg, &err) < 0 && strstr(err.message, needle),
           "check: want \"%s\"", needle);
    EXPECT(step_model_init(&m, cfg, &err) < 0 && strstr(err.message, needle),
           "init: want \"%s\"", needle);
    step_model_finish(&m);
}

static void test_check(void)
{
    config cfg;
    small_config(&cfg);
    moe_error err;
    EXPECT(step_model_check(&cfg, &err) == 0, "small config refused");
    cfg.cluster.devices[1].utilization = 0;
    expect_refused(&cfg, "small.yaml: cluster.devices[1] (B) states no "
                         "utilization");
    cfg.cluster.devices[1].name[0] = '\0';
    expect_refused(&cfg, "cluster.devices[1] (devices[1]) states no");
    small_config(&cfg);
    cfg.cluster.devices[0].count = STEP_MODEL_MAX_RANKS;
    expect_refused(&cfg, "more than 65536 devices");
    cfg.cluster.device_count = 0;
    expect_refused(&cfg, "small.yaml: cluster.devices is empty");
}

int main(void)
{
    test_by_hand();
    test_memory();
    test_check();
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
