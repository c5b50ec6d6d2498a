/* How a plan splits the batch (balancer_plan's rows): in proportion to the
 * ranks' measured dense time a row, and never past the rows a rank's
 * memory holds beside its dense state at its measured activation bytes a
 * row. Hand-made step measurements of two ranks, one 3x slower. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/balance/balancer.h"
#include "engine/config/config.h"

#include "tests/expect.h"

enum { LAYERS = 1, EXPERTS = 4, RANKS = 2, BATCH = 16 };

/* Experts 0 and 2 on rank 0, 1 and 3 on rank 1, whole. */
static const int PLACEMENT[LAYERS * EXPERTS] = {0, 1, 0, 1};

/* Dense milliseconds of the passes for `rows` on rank r: rank 1 is 3x
 * slower a row and pays a fixed 20 ms a step (work that does not scale
 * with its rows), when `fixed` says so. */
static double pass_ms(int r, int rows, int fixed)
{
    return (r ? 3.0 : 1.0) * rows + (fixed && r ? 20.0 : 0.0);
}

/* Feeds `steps` steps at rows0 + rows1: each rank `act_bytes` of
 * activations a row. */
static void observe_at(balancer *b, int steps, double act_bytes, int rows0,
                       int rows1, int fixed)
{
    static const int load[LAYERS * EXPERTS] = {500, 520, 480, 548};
    rank_stats rank[RANKS];
    memset(rank, 0, sizeof rank);
    for (int r = 0; r < RANKS; r++) {
        int rows = r ? rows1 : rows0;
        rank[r].rows = rows;
        rank[r].pass_dense_ms = pass_ms(r, rows, fixed);
        rank[r].dense_ms = rank[r].pass_dense_ms + 5; /* the optimizer */
        rank[r].expert_ms = r ? 30.0 : 10.0;
        rank[r].tokens = 1024;
        rank[r].activation_bytes = rows * act_bytes;
    }
    for (int i = 0; i < steps; i++) {
        step_stats s;
        memset(&s, 0, sizeof s);
        s.step = b->samples + 1;
        s.step_s = 0.05;
        s.tokens = BATCH * 8;
        s.layers = LAYERS, s.experts = EXPERTS, s.ranks = RANKS;
        s.expert_load = load;
        s.rank = rank;
        s.placement = PLACEMENT;
        balancer_observe(b, &s);
    }
}

static void whole_shares(int *share)
{
    for (int i = 0; i < LAYERS * EXPERTS; i++)
        for (int r = 0; r < RANKS; r++)
            share[i * RANKS + r] = PLACEMENT[i] == r ? 4096 : 0;
}

/* Two alike ranks, one layer of EXPERTS experts, a batch of BATCH. */
static void two_ranks(config *cfg)
{
    config_defaults(cfg);
    cfg->model.n_layers = LAYERS;
    cfg->moe.n_experts = EXPERTS;
    cfg->train.batch_size = BATCH;
    cfg->cluster.device_count = RANKS;
    cfg->cluster.devices[1] = cfg->cluster.devices[0];
}

static void observe(balancer *b, int steps, double act_bytes)
{
    observe_at(b, steps, act_bytes, 8, 8, 0);
}

/* Plans after 20 steps; returns balancer_plan's status. */
static int plan_rows(const config *cfg, double act_bytes, int *rows)
{
    int share[LAYERS * EXPERTS * RANKS];
    whole_shares(share);
    balancer b;
    moe_error err;
    rows[0] = rows[1] = -1;
    if (balancer_create(&b, cfg, RANKS, 4096, &err) < 0) {
        EXPECT(0, "balancer_create: %s", err.message);
        return -1;
    }
    observe(&b, 20, act_bytes);
    char why[256];
    int status = balancer_plan(&b, PLACEMENT, share, 1, why, sizeof why);
    memcpy(rows, b.proposal_rows, RANKS * sizeof *rows);
    balancer_destroy(&b);
    return status;
}

int main(void)
{
    config cfg;
    two_ranks(&cfg);

    int rows[RANKS];
    /* 3:1 in speed: 12 + 4. */
    EXPECT(plan_rows(&cfg, 1e3, rows) == 0, "plan refused");
    EXPECT(rows[0] == 12 && rows[1] == 4, "3x slower: %d + %d rows", rows[0],
           rows[1]);

    /* Rank 0 holds 10 rows' activations beside its dense state: it keeps
     * 10, the slow rank takes the other 6. */
    balancer probe;
    moe_error err;
    if (balancer_create(&probe, &cfg, RANKS, 4096, &err) < 0)
        return 1;
    double dense = probe.dense_bytes, per_row = 50e6;
    balancer_destroy(&probe);
    cfg.cluster.devices[0].memory_gb = (dense + 10.5 * per_row) / 1e9;
    EXPECT(plan_rows(&cfg, per_row, rows) == 0, "plan refused");
    EXPECT(rows[0] == 10 && rows[1] == 6, "rank 0 holds 10 rows: %d + %d",
           rows[0], rows[1]);

    /* Neither can take more than 7 rows: the batch does not fit, the rows
     * stay at 8 + 8, and no placement fits around them. */
    cfg.cluster.devices[0].memory_gb = (dense + 7.5 * per_row) / 1e9;
    cfg.cluster.devices[1].memory_gb = cfg.cluster.devices[0].memory_gb;
    EXPECT(plan_rows(&cfg, per_row, rows) < 0, "a plan past memory");
    EXPECT(rows[0] == 8 && rows[1] == 8, "no room: %d + %d", rows[0],
           rows[1]);
    /* A fixed cost on the slow rank: at one row count it reads as a row
     * cost (8 rows: (20 + 24) / 8 = 5.5 ms a row; of 16 rows, 14 + 2
     * finish at 14 and 11 ms, 13 + 3 at 13 and 16.5, 15 + 1 at 15 and
     * 5.5: 14 + 2). Once a second count has run, the fit separates the
     * two (20 + 3 ms a row: 14 + 2 finish at 14 and 26 ms, 15 + 1 at 15
     * and 23: 15 + 1). */
    two_ranks(&cfg);
    int share[LAYERS * EXPERTS * RANKS];
    whole_shares(share);
    balancer b;
    if (balancer_create(&b, &cfg, RANKS, 4096, &err) < 0)
        return 1;
    char why[256];
    observe_at(&b, 20, 1e3, 8, 8, 1);
    EXPECT(balancer_plan(&b, PLACEMENT, share, 1, why, sizeof why) == 0 &&
               b.proposal_rows[0] == 14 && b.proposal_rows[1] == 2,
           "one count known: %d + %d", b.proposal_rows[0],
           b.proposal_rows[1]);
    observe_at(&b, 20, 1e3, 14, 2, 1);
    EXPECT(fabs(b.dense_fixed_s[1] - 0.020) < 1e-9 &&
               fabs(b.dense_s_per_row[1] - 0.003) < 1e-9 &&
               fabs(b.dense_fixed_s[0]) < 1e-9 &&
               fabs(b.dense_s_per_row[0] - 0.001) < 1e-9,
           "fit: rank 0 %g + %g a row, rank 1 %g + %g a row",
           b.dense_fixed_s[0], b.dense_s_per_row[0], b.dense_fixed_s[1],
           b.dense_s_per_row[1]);
    EXPECT(balancer_plan(&b, PLACEMENT, share, 1, why, sizeof why) == 0 &&
               b.proposal_rows[0] == 15 && b.proposal_rows[1] == 1,
           "two counts known: %d + %d", b.proposal_rows[0],
           b.proposal_rows[1]);
    balancer_destroy(&b);

    /* Rank speeds and dense times are medians of the latest steps (the
     * judged window, balance.every = 50): a step disturbed 10x on rank 0
     * does not move them, where a 0.9 moving average would by 90%. */
    two_ranks(&cfg);
    if (balancer_create(&b, &cfg, RANKS, 4096, &err) < 0)
        return 1;
    observe_at(&b, 20, 1e3, 8, 8, 0);
    double rate = b.rate[0], base = b.base_s[0];
    rank_stats rank[RANKS];
    memset(rank, 0, sizeof rank);
    for (int r = 0; r < RANKS; r++) {
        rank[r].rows = 8;
        rank[r].pass_dense_ms = pass_ms(r, 8, 0) * (r ? 1 : 10);
        rank[r].dense_ms = rank[r].pass_dense_ms + 5;
        rank[r].expert_ms = (r ? 30.0 : 10.0) * (r ? 1 : 10);
        rank[r].tokens = 1024;
        rank[r].activation_bytes = 8e3;
    }
    static const int load[LAYERS * EXPERTS] = {500, 520, 480, 548};
    step_stats s;
    memset(&s, 0, sizeof s);
    s.step = b.samples + 1, s.step_s = 0.5, s.tokens = BATCH * 8;
    s.layers = LAYERS, s.experts = EXPERTS, s.ranks = RANKS;
    s.expert_load = load, s.rank = rank, s.placement = PLACEMENT;
    balancer_observe(&b, &s);
    EXPECT(b.rate[0] == rate && b.base_s[0] == base,
           "one slow step moved the medians: rate %g -> %g, dense %g -> %g",
           rate, b.rate[0], base, b.base_s[0]);
    EXPECT(fabs(rate - 1024 / 0.010) < 1e-6 && fabs(base - 0.013) < 1e-12,
           "medians: rate %g, dense %g", rate, base);
    balancer_destroy(&b);

    printf("%s\n", failures ? "FAIL" : "ok");
    return failures != 0;
}
