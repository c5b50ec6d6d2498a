/* The placement planner: the step-time formula against a naive one, the
 * heuristic against exhaustive search on small random instances, named
 * hard cases, and a full-size instance for validity. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/balance/planner.h"
#include "engine/core/rng.h"

#include "tests/expect.h"

enum { MAX_ITEMS = 64, MAX_RANKS = 8 };

/* A small instance that owns its arrays. */
typedef struct instance {
    planner_problem p;
    double load[MAX_ITEMS];  /* (layers, experts) */
    planner_rank rank[MAX_RANKS];
    int placement[MAX_ITEMS]; /* (layers, experts) */
} instance;

static void instance_bind(instance *in, int layers, int experts, int ranks)
{
    in->p.layers = layers;
    in->p.experts = experts;
    in->p.ranks = ranks;
    in->p.load = in->load;
    in->p.rank = in->rank;
    in->p.placement = in->placement;
}

/* The formula of planner.h, written out with an explicit rank loop. */
static double naive_step_time(const planner_problem *p, const int *placement)
{
    double base_s = -INFINITY;
    for (int r = 0; r < p->ranks; r++)
        base_s = fmax(base_s, p->rank[r].base_s);
    double total_s = base_s;
    for (int l = 0; l < p->layers; l++) {
        double layer_s = 0.0;
        for (int r = 0; r < p->ranks; r++) {
            double rows = 0.0;
            for (int e = 0; e < p->experts; e++)
                if (placement[l * p->experts + e] == r)
                    rows += p->load[l * p->experts + e];
            layer_s = fmax(layer_s, rows / p->rank[r].rate);
        }
        total_s += layer_s;
    }
    return total_s;
}

static double naive_objective(const planner_problem *p, const int *placement)
{
    int moved = 0;
    for (int i = 0; i < p->layers * p->experts; i++)
        moved += placement[i] != p->placement[i];
    return naive_step_time(p, placement) +
           p->move_s_per_byte * p->expert_bytes * moved;
}

static int naive_fits(const planner_problem *p, const int *placement)
{
    for (int r = 0; r < p->ranks; r++) {
        int held = 0;
        for (int i = 0; i < p->layers * p->experts; i++)
            held += placement[i] == r;
        if (p->rank[r].capacity_bytes > 0 &&
            held * p->expert_bytes > p->rank[r].capacity_bytes)
            return 0;
    }
    return 1;
}

static int in_range(const planner_problem *p, const int *placement)
{
    for (int i = 0; i < p->layers * p->experts; i++)
        if (placement[i] < 0 || placement[i] >= p->ranks)
            return 0;
    return 1;
}

static void random_instance(instance *in, rng *r, int layers, int experts,
                            int ranks)
{
    instance_bind(in, layers, experts, ranks);
    for (int i = 0; i < layers * experts; i++) {
        in->load[i] = 100.0 + 900.0 * rng_uniform(r);
        in->placement[i] = (int)rng_below(r, (uint64_t)ranks);
    }
    for (int k = 0; k < ranks; k++)
        in->rank[k] = (planner_rank){100.0 + 900.0 * rng_uniform(r),
                                     0.5 * rng_uniform(r), 0.0};
    in->p.expert_bytes = 1e6 * (1.0 + rng_uniform(r));
    in->p.move_s_per_byte = 1e-9 * rng_uniform(r);
}

static void test_step_time(void)
{
    rng r;
    rng_seed(&r, 21, 0);
    double max_rel = 0;
    for (int t = 0; t < 100; t++) {
        instance in;
        random_instance(&in, &r, 1 + (int)rng_below(&r, 6),
                        1 + (int)rng_below(&r, 10), 1 + (int)rng_below(&r, 7));
        double got = planner_step_time(&in.p, in.placement);
        double want = naive_step_time(&in.p, in.placement);
        max_rel = fmax(max_rel, fabs(got - want) / want);
    }
    EXPECT(max_rel < 1e-12, "step time relative error %g", max_rel);
    printf("step time: 100 instances, max relative error %.2e\n", max_rel);
}

static void test_moves(void)
{
    rng r;
    rng_seed(&r, 22, 0);
    for (int t = 0; t < 50; t++) {
        instance in;
        random_instance(&in, &r, 1 + (int)rng_below(&r, 5),
                        1 + (int)rng_below(&r, 8), 1 + (int)rng_below(&r, 4));
        int items = in.p.layers * in.p.experts, to[MAX_ITEMS], want = 0;
        for (int i = 0; i < items; i++) {
            to[i] = (int)rng_below(&r, (uint64_t)in.p.ranks);
            want += to[i] != in.placement[i];
        }
        planner_move moves[MAX_ITEMS];
        int n = planner_moves(&in.p, in.placement, to, moves);
        EXPECT(n == want, "%d moves, want %d", n, want);
        EXPECT(planner_moves(&in.p, in.placement, to, NULL) == n,
               "count without moves differs");
        int applied[MAX_ITEMS];
        memcpy(applied, in.placement, sizeof applied);
        for (int k = 0; k < n; k++) {
            planner_move m = moves[k];
            int i = m.layer * in.p.experts + m.expert;
            EXPECT(m.from == in.placement[i] && m.to == to[i] && m.from != m.to,
                   "move %d (%d,%d) %d->%d", k, m.layer, m.expert, m.from,
                   m.to);
            if (k > 0) {
                planner_move prev = moves[k - 1];
                EXPECT(prev.layer * in.p.experts + prev.expert < i,
                       "moves out of order at %d", k);
            }
            applied[i] = m.to;
        }
        EXPECT(memcmp(applied, to, (size_t)items * sizeof *to) == 0,
               "moves do not turn from into to");
    }
    printf("moves: 50 instances\n");
}

static void test_overfull(void)
{
    rng r;
    rng_seed(&r, 23, 0);
    int checked_overfull = 0;
    for (int t = 0; t < 100; t++) {
        instance in;
        random_instance(&in, &r, 1 + (int)rng_below(&r, 4),
                        2 + (int)rng_below(&r, 8), 1 + (int)rng_below(&r, 6));
        int items = in.p.layers * in.p.experts, held[MAX_RANKS] = {0};
        for (int i = 0; i < items; i++)
            held[in.placement[i]]++;
        int want = -1;
        for (int k = 0; k < in.p.ranks; k++) {
            /* Capacity exactly held, one short, or unlimited. */
            int kind = (int)rng_below(&r, 3);
            double capacity = kind == 2 ? 0.0
                : (held[k] - kind) * in.p.expert_bytes;
            if (kind == 1 && held[k] == 1)
                capacity = -1.0; /* would be 0 bytes: means unlimited */
            in.rank[k].capacity_bytes = capacity;
            if (kind == 1 && held[k] > 1 && want < 0)
                want = k;
        }
        int got = planner_overfull_rank(&in.p, in.placement);
        EXPECT(got == want, "overfull rank %d, want %d", got, want);
        checked_overfull += want >= 0;
    }
    EXPECT(checked_overfull > 20, "only %d overfull cases", checked_overfull);
    printf("overfull rank: 100 instances, %d overfull\n", checked_overfull);
}

/* Enough to rebuild a failing instance by hand. */
static void print_instance(const planner_problem *p, const int *plan,
                           const int *best)
{
    printf("  %d layers, %d experts, %d ranks, %.6g s per move\n", p->layers,
           p->experts, p->ranks, p->move_s_per_byte * p->expert_bytes);
    for (int r = 0; r < p->ranks; r++)
        printf("  rank %d: rate %.6g, base %.6g s, room %.3g experts\n", r,
               p->rank[r].rate, p->rank[r].base_s,
               p->rank[r].capacity_bytes / p->expert_bytes);
    for (int i = 0; i < p->layers * p->experts; i++)
        printf("  expert %d: load %.6g, current %d, plan %d, optimum %d\n", i,
               p->load[i], p->placement[i], plan[i], best[i]);
}

/* Plans `in` and checks the plan against exhaustive search; returns the
 * objective ratio heuristic / optimum (0 on failure). */
static double check_against_brute(const instance *in, const char *name)
{
    const planner_problem *p = &in->p;
    int plan[MAX_ITEMS], best[MAX_ITEMS];
    int plan_status = planner_plan(p, plan);
    int brute_status = planner_brute_force(p, best);
    EXPECT(plan_status == 0 && brute_status == 0, "%s: status %d, brute %d",
           name, plan_status, brute_status);
    if (plan_status || brute_status)
        return 0;
    EXPECT(in_range(p, plan) && naive_fits(p, plan), "%s: plan invalid", name);
    EXPECT(in_range(p, best) && naive_fits(p, best), "%s: optimum invalid",
           name);
    double plan_s = naive_objective(p, plan), best_s = naive_objective(p, best);
    EXPECT(best_s <= plan_s * (1 + 1e-12), "%s: optimum %.9g above plan %.9g",
           name, best_s, plan_s);
    EXPECT(plan_s <= 1.05 * best_s, "%s: plan %.9g, optimum %.9g (ratio %.4f)",
           name, plan_s, best_s, plan_s / best_s);
    if (naive_fits(p, p->placement)) {
        double current_s = naive_objective(p, p->placement);
        EXPECT(plan_s <= current_s * (1 + 1e-12),
               "%s: plan %.9g worse than current %.9g", name, plan_s,
               current_s);
    }
    if (plan_s > 1.05 * best_s)
        print_instance(p, plan, best);
    return plan_s / best_s;
}

static void test_against_brute_force(void)
{
    enum { INSTANCES = 400 };
    rng r;
    rng_seed(&r, 24, 0);
    double worst = 1, sum = 0;
    int optimal = 0, capacity_bound = 0, hot = 0, penalised = 0;
    for (int t = 0; t < INSTANCES; t++) {
        instance in;
        int layers = 1 + (int)rng_below(&r, 2);
        int experts = 2 + (int)rng_below(&r, 4);
        int ranks = 2 + (int)rng_below(&r, 2);
        random_instance(&in, &r, layers, experts, ranks);
        int items = layers * experts;

        /* Rates: a fast device and ones 2x and 4x slower, or random. */
        double fast = in.rank[0].rate;
        if (rng_below(&r, 2)) {
            for (int k = 0; k < ranks; k++)
                in.rank[k].rate = fast / (double)(1 << ((k + t) % 3));
        }
        if (rng_below(&r, 3) == 0) {
            int e = (int)rng_below(&r, (uint64_t)items);
            in.load[e] *= 5.0 + 20.0 * rng_uniform(&r);
            hot++;
        }
        if (rng_below(&r, 4) == 0)
            in.load[rng_below(&r, (uint64_t)items)] = 0.0;
        /* The fastest rank holds fewer experts than its share. */
        if (rng_below(&r, 2)) {
            int fastest = 0;
            for (int k = 1; k < ranks; k++)
                if (in.rank[k].rate > in.rank[fastest].rate)
                    fastest = k;
            int fit = (int)rng_below(&r, (uint64_t)(items / 2 + 1));
            in.rank[fastest].capacity_bytes =
                fit ? (fit + 0.5) * in.p.expert_bytes : 0.5 * in.p.expert_bytes;
            capacity_bound++;
        }
        /* Penalty off, or of the order of a layer's time. */
        double layer_s = 0;
        for (int i = 0; i < items; i++)
            layer_s += in.load[i];
        layer_s /= layers * fast * ranks;
        if (rng_below(&r, 2)) {
            in.p.move_s_per_byte = 0.0;
        } else {
            in.p.move_s_per_byte =
                layer_s * rng_uniform(&r) / in.p.expert_bytes;
            penalised++;
        }
        char name[32];
        snprintf(name, sizeof name, "instance %d", t);
        double ratio = check_against_brute(&in, name);
        if (ratio > 0) {
            worst = fmax(worst, ratio);
            sum += ratio;
            optimal += ratio <= 1 + 1e-9;
        }
    }
    printf("vs brute force: %d instances (%d hot expert, %d capacity-bound, "
           "%d penalised), worst ratio %.4f, mean %.5f, optimal %d\n",
           INSTANCES, hot, capacity_bound, penalised, worst, sum / INSTANCES,
           optimal);
}

static void test_named_cases(void)
{
    /* Devices 1x, 2x and 4x slower, eight equal experts: the best split
     * is 5/2/1 (5 units of time); 4/2/1 would leave one over. */
    instance in;
    memset(&in, 0, sizeof in);
    instance_bind(&in, 1, 8, 3);
    for (int e = 0; e < 8; e++)
        in.load[e] = 10.0;
    in.rank[0] = (planner_rank){10.0, 0.0, 0.0};
    in.rank[1] = (planner_rank){5.0, 0.0, 0.0};
    in.rank[2] = (planner_rank){2.5, 0.0, 0.0};
    for (int e = 0; e < 8; e++)
        in.placement[e] = 2; /* all on the slowest */
    in.p.expert_bytes = 1.0;
    int plan[MAX_ITEMS];
    EXPECT(planner_plan(&in.p, plan) == 0, "slow devices: status");
    double step_s = planner_step_time(&in.p, plan);
    EXPECT(fabs(step_s - 5.0) < 1e-12, "slow devices: step %.6f, want 5",
           step_s);
    check_against_brute(&in, "slow devices");

    /* One very hot expert: it gets the fast rank to itself. */
    instance_bind(&in, 1, 6, 3);
    double loads[6] = {10, 10, 10, 80, 10, 10};
    memcpy(in.load, loads, sizeof loads);
    in.rank[0] = (planner_rank){5.0, 0.0, 0.0};
    in.rank[1] = (planner_rank){10.0, 0.0, 0.0};
    in.rank[2] = (planner_rank){5.0, 0.0, 0.0};
    for (int e = 0; e < 6; e++)
        in.placement[e] = e % 3;
    EXPECT(planner_plan(&in.p, plan) == 0, "hot expert: status");
    int shared = 0;
    for (int e = 0; e < 6; e++)
        shared += e != 3 && plan[e] == plan[3];
    EXPECT(plan[3] == 1 && shared == 0, "hot expert on rank %d with %d others",
           plan[3], shared);
    step_s = planner_step_time(&in.p, plan);
    EXPECT(fabs(step_s - 8.0) < 1e-12, "hot expert: step %.6f, want 8", step_s);
    check_against_brute(&in, "hot expert");

    /* More experts than fit on the fast device: it holds three of eight,
     * and they must be the hottest ones of whichever layers gain most. */
    instance_bind(&in, 2, 4, 2);
    double loads2[8] = {40, 10, 10, 10, 30, 30, 5, 5};
    memcpy(in.load, loads2, sizeof loads2);
    in.rank[0] = (planner_rank){4.0, 0.0, 3.5};
    in.rank[1] = (planner_rank){1.0, 0.0, 0.0};
    for (int i = 0; i < 8; i++)
        in.placement[i] = 1;
    EXPECT(planner_plan(&in.p, plan) == 0, "fast device full: status");
    EXPECT(planner_overfull_rank(&in.p, plan) < 0,
           "fast device full: overfull");
    double ratio = check_against_brute(&in, "fast device full");
    EXPECT(ratio > 0 && ratio <= 1 + 1e-12, "fast device full: ratio %.6f",
           ratio);

    /* A placement that overfills a rank is repaired. */
    for (int i = 0; i < 8; i++)
        in.placement[i] = 0;
    EXPECT(planner_plan(&in.p, plan) == 0, "repair: status");
    EXPECT(planner_overfull_rank(&in.p, plan) < 0, "repair: still overfull");

    /* An expert with no rank yet (-1) is placed. */
    for (int i = 0; i < 8; i++)
        in.placement[i] = i < 3 ? 0 : 1;
    in.placement[5] = -1;
    EXPECT(planner_plan(&in.p, plan) == 0, "unplaced: status");
    EXPECT(in_range(&in.p, plan) && naive_fits(&in.p, plan),
           "unplaced: plan invalid");

    /* Nothing fits: -1, and out holds the current placement. */
    in.rank[1].capacity_bytes = 2.5;
    EXPECT(planner_plan(&in.p, plan) == -1, "no room: status");
    EXPECT(memcmp(plan, in.placement, 8 * sizeof *plan) == 0,
           "no room: out is not the current placement");
    EXPECT(planner_brute_force(&in.p, plan) == -1, "no room: brute status");

    /* A penalty larger than any gain: nothing moves. */
    in.rank[1].capacity_bytes = 0.0;
    for (int i = 0; i < 8; i++)
        in.placement[i] = i % 3 != 0; /* three on the fast rank: it fits */
    in.p.move_s_per_byte = 1e3;
    EXPECT(planner_plan(&in.p, plan) == 0, "penalty: status");
    EXPECT(planner_moves(&in.p, in.placement, plan, NULL) == 0,
           "penalty: %d moves", planner_moves(&in.p, in.placement, plan, NULL));
    in.p.move_s_per_byte = 0.0;

    /* Zero loads: every placement takes the base time; nothing moves when
     * moving costs anything. */
    for (int i = 0; i < 8; i++)
        in.load[i] = 0.0;
    in.rank[0].base_s = 0.25;
    in.p.move_s_per_byte = 1e-6;
    EXPECT(planner_plan(&in.p, plan) == 0, "zero loads: status");
    EXPECT(planner_moves(&in.p, in.placement, plan, NULL) == 0,
           "zero loads: moved");
    EXPECT(planner_step_time(&in.p, plan) == 0.25, "zero loads: step %g",
           planner_step_time(&in.p, plan));
    in.p.move_s_per_byte = 0.0;

    /* One rank: everything stays. */
    rng r;
    rng_seed(&r, 25, 0);
    random_instance(&in, &r, 3, 5, 1);
    EXPECT(planner_plan(&in.p, plan) == 0, "one rank: status");
    EXPECT(memcmp(plan, in.placement, 15 * sizeof *plan) == 0,
           "one rank: moved");

    printf("named cases: slow devices, hot expert, fast device full, "
           "repair, unplaced, no room, penalty, zero loads, one rank\n");
}

/* More ranks than experts, equal rates: each expert alone is optimal, so
 * each layer takes its hottest expert's time. */
static void test_more_ranks_than_experts(void)
{
    enum { L = 3, E = 16, R = 100 };
    rng r;
    rng_seed(&r, 26, 0);
    static double load[L * E];
    static planner_rank rank[R];
    static int placement[L * E], plan[L * E];
    double want_s = 0.0;
    for (int l = 0; l < L; l++) {
        double hottest = 0;
        for (int e = 0; e < E; e++) {
            load[l * E + e] = 10.0 + 90.0 * rng_uniform(&r);
            hottest = fmax(hottest, load[l * E + e]);
            placement[l * E + e] = e % 4;
        }
        want_s += hottest / 50.0;
    }
    for (int k = 0; k < R; k++)
        rank[k] = (planner_rank){50.0, 0.0, 0.0};
    planner_problem p = {L, E, R, load, rank, placement, 1.0, 0.0, 0.0, 0.0};
    EXPECT(planner_plan(&p, plan) == 0, "many ranks: status");
    double step_s = planner_step_time(&p, plan);
    EXPECT(fabs(step_s - want_s) < 1e-9 * want_s,
           "many ranks: step %.9g, want %.9g", step_s, want_s);
    printf("more ranks than experts: step %.6f s, optimum %.6f s\n", step_s,
           want_s);
}

/* Invariants of a share table from planner_split: every expert's shares
 * add up to `units`, its rank holds one, and no rank gains more replicas
 * than its capacity holds. */
static void check_shares(const char *what, const planner_problem *p,
                         const int *primary, const int *share, int units)
{
    int R = p->ranks, items = p->layers * p->experts;
    for (int i = 0; i < items; i++) {
        int sum = 0;
        for (int r = 0; r < R; r++) {
            EXPECT(share[i * R + r] >= 0, "%s: negative share", what);
            sum += share[i * R + r];
        }
        EXPECT(sum == units, "%s: expert %d shares add to %d", what, i, sum);
        EXPECT(share[i * R + primary[i]] > 0,
               "%s: expert %d's rank %d holds no share", what, i, primary[i]);
    }
    for (int r = 0; r < R; r++) {
        double cap = p->rank[r].capacity_bytes;
        int held = 0;
        for (int i = 0; i < items; i++)
            held += share[i * R + r] > 0;
        EXPECT(cap <= 0 || held * p->expert_bytes <= cap ||
                   planner_overfull_rank(p, p->placement) == r,
               "%s: rank %d holds %d replicas, room for %.0f", what, r, held,
               cap / p->expert_bytes);
    }
}

/* Four experts on four ranks, one rank 2x slower: no whole-expert
 * placement beats round robin (each fast rank would need 8/7 of an
 * expert), but splits reach the proportional split exactly. */
static void test_split_levels(void)
{
    enum { L = 2, E = 4, R = 4, U = 4096 };
    double load[L * E];
    planner_rank rank[R];
    int placement[L * E], primary[L * E], share[L * E * R];
    for (int i = 0; i < L * E; i++) {
        load[i] = 500.0;
        placement[i] = i % E;
    }
    for (int r = 0; r < R; r++)
        rank[r] = (planner_rank){r == 3 ? 50.0 : 100.0, 0.001, 0.0};
    planner_problem p = {L, E, R, load, rank, placement, 1.0, 0.0, 0.0, 0.0};
    int changed = planner_split(&p, placement, U, 0.02, primary, share);
    EXPECT(changed == L, "levels: %d experts changed, want %d", changed, L);
    check_shares("levels", &p, primary, share, U);
    double before = planner_step_time(&p, placement);
    double after = planner_split_step_time(&p, share, U);
    double ideal = 0.001 + L * (E * 500.0) / 350.0;
    EXPECT(fabs(after - ideal) < 1e-3 * ideal,
           "levels: split step %.6f s, ideal %.6f s", after, ideal);
    EXPECT(after < before, "levels: %.6f s is no better than %.6f s", after,
           before);
    /* The slow rank keeps 4/7 of its expert, the others take 1/7 each. */
    EXPECT(abs(share[3 * R + 3] - U * 4 / 7) <= 2,
           "levels: slow rank keeps %d of %d", share[3 * R + 3], U);
    printf("split levels: step %.4f s -> %.4f s (ideal %.4f s)\n", before,
           after, ideal);
    /* Each replica's gradient joins the all-reduce: a sync cost larger
     * than the gain makes the split cost more than it saves. */
    p.grad_bytes = 1e6;
    p.sync_s_per_byte = 5e-6;
    double costly = planner_split_step_time(&p, share, U);
    EXPECT(fabs(costly - (after + L * 5.0)) < 1e-9,
           "levels: sync charged %.6f s, want %.6f s", costly - after,
           L * 5.0);
    EXPECT(costly > before, "levels: a 5 s sync per split expert should "
                            "lose (%.4f vs %.4f s)", costly, before);
}

/* Random instances: the invariants hold, and without a sync cost a split
 * never predicts a slower step than the placement it starts from. */
static void test_split_random(void)
{
    enum { L = 3, E = 6, R = 5, U = 4096 };
    rng r;
    rng_seed(&r, 31, 0);
    for (int trial = 0; trial < 500; trial++) {
        double load[L * E];
        planner_rank rank[R];
        int placement[L * E], primary[L * E], share[L * E * R];
        for (int i = 0; i < L * E; i++) {
            load[i] = trial % 3 == 0 && i % E == 0 ? 1000.0
                                                   : 100.0 * rng_uniform(&r);
            placement[i] = (int)(rng_uniform(&r) * R) % R;
        }
        for (int k = 0; k < R; k++) {
            double speed = trial % 2 ? 1.0 + 3.0 * rng_uniform(&r) : 1.0;
            /* Every third instance: room for a few experts beyond what each
             * rank already holds. */
            double cap = trial % 3 == 2 ? (double)(L * E / R + 3) : 0.0;
            rank[k] = (planner_rank){100.0 * speed, 0.01 * rng_uniform(&r),
                                     cap};
        }
        planner_problem p = {L, E, R, load, rank, placement, 1.0, 0.0, 0.0,
                             0.0};
        if (planner_overfull_rank(&p, placement) >= 0)
            continue;
        int changed = planner_split(&p, placement, U, 0.02, primary, share);
        EXPECT(changed >= 0, "random %d: status %d", trial, changed);
        check_shares("random", &p, primary, share, U);
        double before = planner_step_time(&p, placement);
        double after = planner_split_step_time(&p, share, U);
        EXPECT(after <= before * (1 + 1e-9), "random %d: split %.6f s slower "
               "than %.6f s", trial, after, before);
    }
}

static double seconds_since(const struct timespec *start, clockid_t clock_id)
{
    struct timespec now;
    clock_gettime(clock_id, &now);
    return (double)(now.tv_sec - start->tv_sec) +
           1e-9 * (double)(now.tv_nsec - start->tv_nsec);
}

/* Full size: 64 experts x 88 layers x 1,000 ranks, mixed rates and
 * capacities, from a placement that piles every layer on the slowest
 * ranks. The time is reported, not asserted. */
static void test_scale(void)
{
    enum { L = 88, E = 64, R = 1000 };
    rng r;
    rng_seed(&r, 27, 0);
    double *load = malloc(sizeof(double) * L * E);
    planner_rank *rank = malloc(sizeof(planner_rank) * R);
    int *placement = malloc(sizeof(int) * L * E);
    int *plan = malloc(sizeof(int) * L * E);
    int *again = malloc(sizeof(int) * L * E);
    if (!load || !rank || !placement || !plan || !again) {
        EXPECT(0, "scale: out of memory");
        goto done;
    }
    for (int i = 0; i < L * E; i++)
        load[i] = 1000.0 * exp(1.5 * rng_normal(&r)); /* a few very hot */
    double expert_bytes = 3e8;
    for (int k = 0; k < R; k++) {
        double slowdown = (double)(1 << (k % 3)); /* 1x, 2x, 4x slower */
        int fit = 6 + (int)rng_below(&r, 8);
        rank[k] = (planner_rank){2e6 / slowdown, 0.02 + 0.01 * rng_uniform(&r),
                                 (fit + 0.5) * expert_bytes};
    }
    /* Slowest ranks first, each filled to capacity in turn. */
    int slowest_first[R], n = 0, held = 0;
    for (int slow = 2; slow >= 0; slow--)
        for (int q = slow; q < R; q += 3)
            slowest_first[n++] = q;
    n = 0;
    for (int i = 0; i < L * E; i++) {
        if ((double)(held + 1) * expert_bytes >
            rank[slowest_first[n]].capacity_bytes) {
            n++;
            held = 0;
        }
        placement[i] = slowest_first[n];
        held++;
    }
    planner_problem p = {L, E, R, load, rank, placement, expert_bytes, 1e-12,
                         0.0, 0.0};
    EXPECT(planner_overfull_rank(&p, placement) < 0, "scale: start overfull");

    struct timespec start, start_cpu;
    clock_gettime(CLOCK_MONOTONIC, &start);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &start_cpu);
    int status = planner_plan(&p, plan);
    double plan_cpu_s = seconds_since(&start_cpu, CLOCK_PROCESS_CPUTIME_ID);
    double plan_wall_s = seconds_since(&start, CLOCK_MONOTONIC);

    EXPECT(status == 0, "scale: status %d", status);
    EXPECT(in_range(&p, plan), "scale: rank out of range");
    EXPECT(planner_overfull_rank(&p, plan) < 0 && naive_fits(&p, plan),
           "scale: plan overfull");
    double start_s = naive_objective(&p, placement);
    double plan_s = naive_objective(&p, plan);
    EXPECT(plan_s < start_s, "scale: plan %.6f not below start %.6f", plan_s,
           start_s);
    /* A lower bound: each layer's load spread over all ranks' rates. */
    double total_rate = 0, bound_s = 0;
    for (int q = 0; q < R; q++)
        total_rate += rank[q].rate;
    for (int l = 0; l < L; l++) {
        double rows = 0, hottest = 0;
        for (int e = 0; e < E; e++) {
            rows += load[l * E + e];
            hottest = fmax(hottest, load[l * E + e]);
        }
        bound_s += fmax(rows / total_rate, hottest / 2e6);
    }
    printf("scale %d experts x %d layers x %d ranks: planned in %.3f s wall "
           "(%.3f s CPU), objective %.4f s (start %.4f s, expert-time lower "
           "bound %.4f s), %d moves\n",
           E, L, R, plan_wall_s, plan_cpu_s, plan_s, start_s, bound_s,
           planner_moves(&p, placement, plan, NULL));

    /* Deterministic: the same problem, the same plan. */
    EXPECT(planner_plan(&p, again) == status &&
               memcmp(plan, again, sizeof(int) * L * E) == 0,
           "scale: a second run planned differently");
done:
    free(load);
    free(rank);
    free(placement);
    free(plan);
    free(again);
}

int main(void)
{
    test_step_time();
    test_moves();
    test_overfull();
    test_against_brute_force();
    test_named_cases();
    test_more_ranks_than_experts();
    test_split_levels();
    test_split_random();
    test_scale();
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
