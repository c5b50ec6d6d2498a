/* Router bookkeeping: dispatch building (dropless and with capacity), the
 * Switch auxiliary loss and the z-loss, their values against naive
 * formulas and their gradients against finite differences. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/rng.h"
#include "engine/router.h"

#include "tests/expect.h"

static void softmax_rows(float *probs, float *lse, const float *logits, int N,
                         int E)
{
    for (int t = 0; t < N; t++) {
        double max = logits[t * E];
        for (int e = 1; e < E; e++)
            max = fmax(max, logits[t * E + e]);
        double sum = 0;
        for (int e = 0; e < E; e++)
            sum += exp(logits[t * E + e] - max);
        for (int e = 0; e < E; e++)
            probs[t * E + e] = (float)(exp(logits[t * E + e] - max) / sum);
        if (lse)
            lse[t] = (float)(max + log(sum));
    }
}

static void test_dispatch(int capacity_factor_tenths)
{
    enum { N = 37, K = 3, E = 5 };
    rng r;
    rng_seed(&r, 7, (uint64_t)capacity_factor_tenths);
    int expert_index[N * K];
    for (int t = 0; t < N; t++) {
        /* K distinct experts per token, as top-k gives. */
        int first = (int)rng_below(&r, E);
        for (int k = 0; k < K; k++)
            expert_index[t * K + k] = (first + k * 2) % E;
    }
    int group_rows[E], selected[E], token_of_slot[N * K], slot_of[N * K],
        scratch[2 * E];
    router_dispatch d = {group_rows, selected, token_of_slot, slot_of,
                         scratch, 0, 0};
    double cf = capacity_factor_tenths / 10.0;
    int capacity = router_capacity(cf, N, K, E);
    router_build_dispatch(&d, expert_index, N, K, E, capacity);

    int expect_selected[E] = {0}, expect_dropped = 0, kept = 0;
    for (int i = 0; i < N * K; i++)
        expect_selected[expert_index[i]]++;
    for (int e = 0; e < E; e++) {
        EXPECT(selected[e] == expect_selected[e], "selected[%d]", e);
        int rows = expect_selected[e] < capacity ? expect_selected[e] : capacity;
        EXPECT(group_rows[e] == rows, "group_rows[%d] = %d, want %d", e,
               group_rows[e], rows);
        expect_dropped += expect_selected[e] - rows;
        kept += rows;
    }
    EXPECT(d.slots == kept && d.dropped == expect_dropped,
           "slots %d dropped %d", d.slots, d.dropped);

    /* Every kept assignment's slot lies in its expert's group and points
     * back at its token; slots within a group follow token order. */
    int start = 0, seen[N * K];
    memset(seen, 0, sizeof seen);
    int group_start[E];
    for (int e = 0; e < E; e++) {
        group_start[e] = start;
        start += group_rows[e];
    }
    for (int t = 0; t < N; t++)
        for (int k = 0; k < K; k++) {
            int e = expert_index[t * K + k], slot = slot_of[t * K + k];
            if (slot < 0)
                continue;
            EXPECT(slot >= group_start[e] && slot < group_start[e] + group_rows[e],
                   "slot %d outside expert %d", slot, e);
            EXPECT(token_of_slot[slot] == t, "token_of_slot[%d]", slot);
            seen[slot]++;
        }
    for (int s = 0; s < d.slots; s++) {
        EXPECT(seen[s] == 1, "slot %d used %d times", s, seen[s]);
        if (s > 0 && token_of_slot[s] < token_of_slot[s - 1]) {
            int same_group = 0;
            for (int e = 0; e < E; e++)
                same_group |= s > group_start[e] &&
                              s < group_start[e] + group_rows[e];
            EXPECT(!same_group, "slots out of token order at %d", s);
        }
    }
    /* Drops take the latest tokens of an over-full expert. */
    for (int t = 0; t < N; t++)
        for (int k = 0; k < K; k++) {
            if (slot_of[t * K + k] >= 0)
                continue;
            int e = expert_index[t * K + k], earlier = 0;
            for (int u = 0; u < t; u++)
                for (int j = 0; j < K; j++)
                    earlier += expert_index[u * K + j] == e;
            EXPECT(earlier >= capacity, "token %d dropped early", t);
        }
    printf("dispatch cf=%.1f: capacity %d, slots %d, dropped %d\n", cf,
           capacity, d.slots, d.dropped);
}

static void test_aux_loss(void)
{
    enum { N = 23, K = 2, E = 6 };
    rng r;
    rng_seed(&r, 11, 0);
    float logits[N * E], probs[N * E], dprobs[N * E];
    for (int i = 0; i < N * E; i++)
        logits[i] = (float)(2.0 * rng_normal(&r));
    softmax_rows(probs, NULL, logits, N, E);
    int selected[E] = {0};
    for (int t = 0; t < N; t++) {
        int a = (int)rng_below(&r, E), b = (a + 1 + (int)rng_below(&r, E - 1)) % E;
        selected[a]++;
        selected[b]++;
    }
    double alpha = 0.37;
    double loss = router_aux_loss(dprobs, probs, selected, N, N, K, E, alpha);
    double naive = 0;
    for (int e = 0; e < E; e++) {
        double P = 0;
        for (int t = 0; t < N; t++)
            P += probs[t * E + e];
        naive += (selected[e] / (double)(N * K)) * (P / N);
    }
    naive *= alpha * E;
    EXPECT(fabs(loss - naive) < 1e-9, "aux loss %.12g, naive %.12g", loss, naive);

    /* The loss is linear in probs (f held constant): central differences are
     * exact up to rounding. */
    double max_err = 0;
    for (int i = 0; i < N * E; i++) {
        float saved = probs[i];
        double h = 1e-2;
        probs[i] = saved + (float)h;
        double up = router_aux_loss(NULL, probs, selected, N, N, K, E, alpha);
        probs[i] = saved - (float)h;
        double down = router_aux_loss(NULL, probs, selected, N, N, K, E, alpha);
        probs[i] = saved;
        double numeric = (up - down) / (2 * h);
        max_err = fmax(max_err, fabs(numeric - dprobs[i]));
    }
    EXPECT(max_err < 1e-5, "aux dprobs max error %g", max_err);

    /* Uniform probabilities give α·Σ_i f_i: α itself at perfect balance. */
    float uniform[N * E];
    int even[E];
    for (int i = 0; i < N * E; i++)
        uniform[i] = 1.0f / E;
    for (int e = 0; e < E; e++)
        even[e] = N * K / E;
    double balanced = router_aux_loss(NULL, uniform, even, N, N, K, E, alpha);
    double expect = alpha * E * E * ((double)(N * K / E) / (N * K)) / E;
    EXPECT(fabs(balanced - expect) < 1e-6, "balanced aux %g, want %g",
           balanced, expect);
    printf("aux loss: value %.6f, max grad error %.2e\n", loss, max_err);
}

static void test_z_loss(void)
{
    enum { N = 19, E = 7 };
    rng r;
    rng_seed(&r, 13, 0);
    float logits[N * E], probs[N * E], lse[N], dlogits[N * E];
    for (int i = 0; i < N * E; i++)
        logits[i] = (float)(3.0 * rng_normal(&r));
    softmax_rows(probs, lse, logits, N, E);
    double coef = 0.05;
    for (int i = 0; i < N * E; i++)
        dlogits[i] = 0.25f; /* checks that the gradient is added */
    double loss = router_z_loss(dlogits, probs, lse, N, N, E, coef);
    double naive = 0;
    for (int t = 0; t < N; t++) {
        double s = 0;
        for (int e = 0; e < E; e++)
            s += exp((double)logits[t * E + e]);
        naive += log(s) * log(s);
    }
    naive *= coef / N;
    EXPECT(fabs(loss - naive) < 1e-5 * fabs(naive), "z loss %.9g, naive %.9g",
           loss, naive);

    double max_err = 0;
    for (int i = 0; i < N * E; i++) {
        float saved = logits[i];
        double h = 1e-2, values[2];
        for (int side = 0; side < 2; side++) {
            logits[i] = saved + (float)(side ? -h : h);
            softmax_rows(probs, lse, logits, N, E);
            values[side] = router_z_loss(NULL, probs, lse, N, N, E, coef);
        }
        logits[i] = saved;
        double numeric = (values[0] - values[1]) / (2 * h);
        max_err = fmax(max_err, fabs(numeric - (dlogits[i] - 0.25)));
    }
    softmax_rows(probs, lse, logits, N, E);
    EXPECT(max_err < 1e-4, "z-loss dlogits max error %g", max_err);
    printf("z loss: value %.6f, max grad error %.2e\n", loss, max_err);
}

int main(void)
{
    test_dispatch(0);   /* dropless */
    test_dispatch(10);  /* capacity factor 1.0: some drops */
    test_dispatch(5);   /* 0.5: many drops */
    test_aux_loss();
    test_z_loss();
    EXPECT(router_capacity(0.0, 10, 2, 4) == 20, "dropless capacity");
    EXPECT(router_capacity(1.0, 10, 2, 4) == 5, "capacity 1.0");
    EXPECT(router_capacity(1.25, 10, 2, 4) == 7, "capacity rounds up");
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
