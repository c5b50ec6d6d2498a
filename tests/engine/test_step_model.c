/* The analytic step model (engine/balance/step_model.h) on two devices
 * small enough to work by hand: every predicted time is recomputed here
 * from the formulas in the header (the pooled optimum, the one-row floor,
 * memory, the all-to-all and the all-reduce), and the cost and MFU from
 * their definitions. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/balance/cost.h"
#include "engine/balance/step_model.h"
#include "engine/config/config.h"

#include "tests/expect.h"

/* One layer of two routed experts (top 1) of 3 · 8 · 16 = 384 parameters,
 * 8 sequences of 4 tokens: G = 32. Device A runs at 0.5 · 200 TFLOP/s =
 * 1e14 FLOP/s, B at 0.5 · 50 = 2.5e13 (4x slower); both hold the whole
 * model; links so fast that communication is nothing unless a test sets
 * them. */
enum { G = 32, EXPERT_PARAMS = 3 * 8 * 16 };
static const double S_A = 1e14, S_B = 2.5e13;

static void small_config(config *cfg)
{
    config_defaults(cfg);
    snprintf(cfg->source, sizeof cfg->source, "small.yaml");
    cfg->model.d_model = 8;
    cfg->model.n_heads = 2;
    cfg->model.n_layers = 1;
    cfg->model.seq_len = 4;
    cfg->moe.n_experts = 2;
    cfg->moe.top_k = 1;
    cfg->moe.n_shared = 0;
    cfg->moe.expert_hidden = 16;
    cfg->train.batch_size = 8;
    cfg->plan.bytes_per_param = 16;
    cfg->plan.dense = CONFIG_DENSE_REPLICATED;
    cfg->plan.exchange_bytes = 2;
    cfg->cluster.link_gbps = 1e15;
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
    return fabs(got - want) <= 1e-9 * fabs(want);
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
    EXPECT(close_to(mix->budget_days,
                    m->cfg->plan.token_budget / tokens_per_s / 86400),
           "%s: %.17g days to the budget", what, mix->budget_days);
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
    const double W_d = 6 * dense * G, W_e = 6.0 * EXPERT_PARAMS * G;
    EXPECT(m.params.expert == EXPERT_PARAMS, "expert %g", m.params.expert);
    EXPECT(m.tokens_per_step == G, "G %g", m.tokens_per_step);
    EXPECT(close_to(m.dense_work, W_d) && close_to(m.expert_work, W_e),
           "work %.17g %.17g", m.dense_work, m.expert_work);
    EXPECT(m.mix_count == 3, "%d mixes", m.mix_count);

    /* Alone, each device does everything. */
    const step_model_mix *a = find_mix(&m, 1), *b = find_mix(&m, 2);
    if (!a || !b) {
        EXPECT(0, "mixes A and B missing");
        step_model_finish(&m);
        return;
    }
    double a_s = (W_d + W_e) / S_A, b_s = (W_d + W_e) / S_B;
    expect_prices("A", &m, a, a_s, 4.0, 200e12);
    expect_prices("B", &m, b, b_s, 0.9, 50e12);

    /* Together, with nothing to exchange, the work pools: the step is
     * all of it at the sum of the speeds, and the two alone add up. */
    const step_model_mix *both = &m.cluster;
    double both_s = (W_d + W_e) / (S_A + S_B);
    EXPECT(both->ranks == 2 && both->entries == 2, "cluster ranks");
    expect_prices("A+B", &m, both, both_s, 4.9, 250e12);
    EXPECT(close_to(both->pooling, 1.0) &&
               close_to(both->members_tokens_per_s, G / a_s + G / b_s),
           "A+B pools %.17g of %.17g tokens/s", both->pooling,
           both->members_tokens_per_s);
    /* Each busy for the whole step, the shares adding up to one. */
    for (int j = 0; j < 2; j++)
        EXPECT(close_to(both->use[j].compute_s, both_s),
               "A+B: type %d busy %.17g s of %.17g", j,
               both->use[j].compute_s, both_s);
    EXPECT(close_to(both->use[0].dense_share + both->use[1].dense_share, 1) &&
               close_to(both->use[0].expert_share +
                            both->use[1].expert_share, 1),
           "A+B shares do not add up");
    EXPECT(close_to(both->use[1].rows, 8 * both->use[1].dense_share),
           "B's rows %.17g", both->use[1].rows);
    /* Split equally, B holds the step up. */
    EXPECT(close_to(both->equal_step_s, 0.5 * (W_d + W_e) / S_B),
           "equal split %.17g s", both->equal_step_s);
    /* Cheapest first: B (0.9 for 1/4 of A's speed) beats A+B beats A. */
    EXPECT(m.mixes[0].mask == 2 && m.mixes[1].mask == 3 &&
               m.mixes[2].mask == 1,
           "order %llu %llu %llu, want B, A+B, A",
           (unsigned long long)m.mixes[0].mask,
           (unsigned long long)m.mixes[1].mask,
           (unsigned long long)m.mixes[2].mask);
    step_model_finish(&m);
}

/* Each device trains a row at least: with B 40x slower than A its one row
 * of eight sets the step. */
static void test_row_floor(void)
{
    config cfg;
    small_config(&cfg);
    cfg.cluster.devices[1].peak_tflops = 5;
    step_model m;
    if (model_init(&m, &cfg) < 0)
        return;
    double W_d = 6 * m.params.dense * G;
    double one_row_s = W_d / 8 / 2.5e12;
    EXPECT(close_to(m.cluster.step_s, one_row_s),
           "step %.17g s, want B's one row, %.17g s", m.cluster.step_s,
           one_row_s);
    EXPECT(close_to(m.cluster.use[1].rows, 1.0) &&
               m.cluster.use[1].expert_share < 1e-9,
           "B trains %.17g rows and %.17g of the experts",
           m.cluster.use[1].rows, m.cluster.use[1].expert_share);
    step_model_finish(&m);
}

/* The all-to-all and the all-reduce, on two A devices (one type). */
static void test_communication(void)
{
    config cfg;
    small_config(&cfg);
    cfg.cluster.device_count = 1;
    cfg.cluster.devices[0].count = 2;
    cfg.cluster.devices[0].link_gbps = 1e-6; /* 1 kB/s */
    step_model m;
    if (model_init(&m, &cfg) < 0)
        return;
    double dense = m.params.dense, b = 1e3;
    double W_d = 6 * dense * G, W_e = 6.0 * EXPERT_PARAMS * G;
    /* Each token's activation to its one expert and back, forward and
     * backward: 4 · 32 · 8 elements of 2 bytes; half of it is remote, and
     * each device moves its half of that each way. */
    double V = 4.0 * G * 1 * 1 * 8 * 2;
    EXPECT(close_to(m.exchange_bytes, V), "V %.17g", m.exchange_bytes);
    double exchange_s = 2 * V * 0.5 / (2 * 2 * b);
    double sync_s = 2 * dense * 2 * 0.5 / b;
    double step_s = (W_d + W_e) / (2 * S_A) + exchange_s + sync_s;
    EXPECT(close_to(m.cluster.use[0].exchange_s, exchange_s),
           "a2a %.17g s, want %.17g", m.cluster.use[0].exchange_s,
           exchange_s);
    EXPECT(close_to(m.cluster.sync_s, sync_s), "all-reduce %.17g s, want "
           "%.17g", m.cluster.sync_s, sync_s);
    EXPECT(close_to(m.cluster.step_s, step_s), "step %.17g s, want %.17g",
           m.cluster.step_s, step_s);
    step_model_finish(&m);

    /* Sharded dense state: three passes; the slowest link bounds it. */
    small_config(&cfg);
    cfg.plan.dense = CONFIG_DENSE_SHARDED;
    cfg.cluster.devices[0].link_gbps = 10;
    cfg.cluster.devices[1].link_gbps = 1;
    if (model_init(&m, &cfg) < 0)
        return;
    sync_s = 3 * m.params.dense * 2 * 0.5 / 1e9;
    EXPECT(close_to(m.cluster.sync_s, sync_s), "sharded all-reduce %.17g s, "
           "want %.17g", m.cluster.sync_s, sync_s);
    step_model_finish(&m);
}

/* Memory: A with room for its dense state alone leaves both experts to B,
 * and the pooled step stands; with room for one expert between them the
 * model fits nowhere. */
static void test_memory(void)
{
    config cfg;
    small_config(&cfg);
    step_model m;
    if (model_init(&m, &cfg) < 0)
        return;
    double dense_bytes = m.params.dense * 16;
    double expert_bytes = EXPERT_PARAMS * 16.0;
    double W = 6 * m.params.dense * G + 6.0 * EXPERT_PARAMS * G;
    step_model_finish(&m);

    cfg.cluster.devices[0].memory_gb = (dense_bytes + 0.5 * expert_bytes) /
                                       1e9;
    if (model_init(&m, &cfg) < 0)
        return;
    EXPECT(m.cluster.fits && close_to(m.cluster.step_s, W / (S_A + S_B)),
           "A full: step %.17g s, want %.17g", m.cluster.step_s,
           W / (S_A + S_B));
    EXPECT(m.cluster.use[0].experts_max == 0 &&
               close_to(m.cluster.use[1].experts, 2.0),
           "A full: A holds %d, B %.17g", m.cluster.use[0].experts_max,
           m.cluster.use[1].experts);
    EXPECT(close_to(m.cluster.use[1].used_gb,
                    (dense_bytes + 2 * expert_bytes) / 1e9),
           "B uses %.17g GB", m.cluster.use[1].used_gb);
    const step_model_mix *a = find_mix(&m, 1);
    EXPECT(a && !a->fits && isnan(a->step_s) && isnan(a->cost_per_mtok),
           "A alone cannot hold the experts");
    EXPECT(m.mixes[m.mix_count - 1].mask == 1,
           "the mix that does not fit comes last");
    EXPECT(isnan(m.cluster.equal_step_s),
           "an even spread does not fit A, yet has a step time");
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
    expect_refused(&cfg, "more than 1000000 devices");
    cfg.cluster.device_count = 0;
    expect_refused(&cfg, "small.yaml: cluster.devices is empty");
}

int main(void)
{
    test_by_hand();
    test_row_floor();
    test_communication();
    test_memory();
    test_check();
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
