/* The cost model: parameter counts against the trainer's own layout for
 * random small configurations, the price and MFU formulas on hand-worked
 * numbers, and the shipped Ling presets against the figures the paper
 * states. usage: test_cost SOURCE_ROOT */
#include <math.h>
#include <stdio.h>

#include "engine/config/config.h"
#include "engine/balance/cost.h"
#include "engine/model/model.h"
#include "engine/core/rng.h"
#include "kernels/cpu/cpu_backend.h"

#include "tests/expect.h"

static int pick(rng *r, int lo, int hi)
{
    return lo + (int)rng_below(r, (uint64_t)(hi - lo + 1));
}

/* cost_model_params must count exactly what model_create allocates. */
static void test_matches_model(const backend *be)
{
    rng r;
    rng_seed(&r, 2024, 0);
    for (int trial = 0; trial < 12; trial++) {
        config cfg;
        config_defaults(&cfg);
        cfg.model.n_heads = pick(&r, 1, 4);
        cfg.model.d_model = cfg.model.n_heads * 2 * pick(&r, 1, 6);
        cfg.model.n_layers = pick(&r, 1, 4);
        cfg.model.seq_len = pick(&r, 2, 8);
        cfg.moe.n_experts = pick(&r, 1, 9);
        cfg.moe.top_k = pick(&r, 1, cfg.moe.n_experts);
        cfg.moe.n_shared = pick(&r, 0, 2);
        cfg.moe.expert_hidden = pick(&r, 1, 40);
        /* Both spellings of multi-head attention. */
        cfg.model.n_kv_heads = trial % 2 ? cfg.model.n_heads : 0;

        model *m = NULL;
        moe_error err;
        if (model_create(&m, &cfg, be, 1, MODEL_EXPERTS_LOCAL, &err) < 0) {
            EXPECT(0, "trial %d: model_create: %s", trial, err.message);
            continue;
        }
        cost_params p;
        cost_model_params(&cfg, &p);
        EXPECT(p.total == (double)m->param_count,
               "trial %d (C %d L %d H %d E %d K %d shared %d F %d): total "
               "%.0f, model %zu", trial, cfg.model.d_model, cfg.model.n_layers,
               cfg.model.n_heads, cfg.moe.n_experts, cfg.moe.top_k,
               cfg.moe.n_shared, cfg.moe.expert_hidden, p.total,
               m->param_count);
        EXPECT(p.active == (double)model_active_params(m),
               "trial %d: active %.0f, model %zu", trial, p.active,
               model_active_params(m));
        EXPECT(p.routed == (double)cfg.model.n_layers * cfg.moe.n_experts *
                               (double)m->expert_param_count,
               "trial %d: routed %.0f", trial, p.routed);
        EXPECT(p.dense + p.routed == p.total, "trial %d: parts", trial);
        model_destroy(m);
    }
}

static void test_formulas(void)
{
    /* 36 an hour at 100 tokens/s: 1e-4 a token, 100 per million. */
    EXPECT(fabs(cost_per_mtok(36, 100) - 100) < 1e-9, "%.12g",
           cost_per_mtok(36, 100));
    EXPECT(fabs(cost_per_mtok(3600, 1) - 1e6) < 1e-6, "%.12g",
           cost_per_mtok(3600, 1));
    EXPECT(isnan(cost_per_mtok(36, 0)), "no tokens: NAN");
    EXPECT(isnan(cost_per_mtok(36, -1)), "negative tokens: NAN");
    /* 6 · 1e9 · 250 FLOP/s of 3e12: half the peak. */
    EXPECT(fabs(cost_mfu(6e9, 250, 3e12) - 0.5) < 1e-12, "%.12g",
           cost_mfu(6e9, 250, 3e12));

    config cfg;
    config_defaults(&cfg);
    cfg.cluster.device_count = 2;
    cfg.cluster.devices[1] = cfg.cluster.devices[0];
    cfg.cluster.devices[0].count = 3;
    cfg.cluster.devices[0].price_per_hour = 2.5;
    cfg.cluster.devices[0].peak_tflops = 100;
    cfg.cluster.devices[1].count = 2;
    cfg.cluster.devices[1].price_per_hour = 7;
    cfg.cluster.devices[1].peak_tflops = 370;
    EXPECT(cost_device_price_per_hour(&cfg.cluster.devices[0]) == 7.5 &&
               cost_device_price_per_hour(&cfg.cluster.devices[1]) == 14,
           "one entry's price: count x price_per_hour");
    EXPECT(cost_device_peak_flops(&cfg.cluster.devices[1]) == 740e12,
           "one entry's peak: %.12g",
           cost_device_peak_flops(&cfg.cluster.devices[1]));
    EXPECT(fabs(cost_price_per_hour(&cfg) - 21.5) < 1e-12, "%.12g",
           cost_price_per_hour(&cfg));
    EXPECT(fabs(cost_peak_flops(&cfg) - 1040e12) < 1, "%.12g",
           cost_peak_flops(&cfg));
}

/* The shipped presets, as `moectl plan` reads them. */
static int load_preset(config *cfg, const char *root, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/configs/%s.yaml", root, name);
    moe_error err;
    if (config_load(cfg, path, NULL, 0, &err) < 0) {
        EXPECT(0, "%s", err.message);
        return -1;
    }
    return 0;
}

static void expect_near(const char *what, double got, double want,
                        double rel)
{
    EXPECT(fabs(got / want - 1) <= rel, "%s: %.4g, want %.4g within %.0f%%",
           what, got, want, 100 * rel);
}

static void test_ling(const char *root)
{
    config cfg;
    cost_params p;
    if (load_preset(&cfg, root, "ling-lite") < 0)
        return;
    cost_model_params(&cfg, &p);
    expect_near("Ling-Lite total", p.total, 16.8e9, 0.02);
    expect_near("Ling-Lite active", p.active, 2.75e9, 0.02);

    if (load_preset(&cfg, root, "ling-plus") < 0)
        return;
    cost_model_params(&cfg, &p);
    expect_near("Ling-Plus total", p.total, 290e9, 0.02);
    expect_near("Ling-Plus active", p.active, 28.8e9, 0.02);

    /* The paper's figure for device D: 6.35M RMB per 1T tokens at 27.5
     * RMB/h is ~1203 tokens/s a device, which is an MFU of ~0.21. */
    double tokens_per_s = 27.5 / 3600 / (6.35e6 / 1e12);
    double mfu = cost_mfu(COST_FLOP_PER_PARAM_TOKEN * p.active, tokens_per_s,
                          989e12);
    EXPECT(fabs(mfu - 0.21) < 0.005, "Ling-Plus on D: MFU %.4f", mfu);
    expect_near("D per 1T", cost_per_mtok(27.5, tokens_per_s) * 1e6, 6.35e6,
                1e-9);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        printf("usage: test_cost SOURCE_ROOT\n");
        return 2;
    }
    backend be = {0};
    if (cpu_backend_init(&be, 1) < 0) {
        printf("FAIL: no CPU backend\n");
        return 1;
    }
    test_matches_model(&be);
    test_formulas();
    test_ling(argv[1]);
    cpu_backend_finish(&be);
    if (failures) {
        printf("%d failures\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
