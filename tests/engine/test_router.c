/* Router bookkeeping: dispatch building (dropless and with capacity), the
 * Switch auxiliary loss and the z-loss, their values against naive
 * formulas and their gradients against finite differences; bias balancing
 * (update rule, biased selection with unbiased gates) and the routing
 * warm-up (schedule, noise statistics, mixed selection, chunk invariance). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/core/rng.h"
#include "engine/model/router.h"
#include "kernels/cpu/cpu_backend.h"

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

static void test_bias_update(void)
{
    enum { E = 9 };
    rng r;
    rng_seed(&r, 17, 0);
    int tied = 0;
    for (int trial = 0; trial < 50; trial++) {
        int load[E];
        float bias[E], before[E];
        for (int e = 0; e < E; e++) {
            load[e] = (int)rng_below(&r, 200);
            bias[e] = before[e] = (float)(0.1 * rng_normal(&r));
        }
        /* Some experts exactly at the mean: Σ load = E·load_i. */
        if (trial % 2) {
            int total = 0;
            for (int e = 0; e < E - 1; e++)
                total += load[e];
            int at_mean = total / (E - 1);
            load[0] = load[3] = at_mean;
            total = 0;
            for (int e = 0; e < E - 1; e++)
                total += load[e];
            load[E - 1] = E * at_mean - total; /* makes the mean at_mean */
            if (load[E - 1] < 0)
                continue;
        }
        double rate = 0.001 + 0.01 * rng_uniform(&r);
        router_bias_update(bias, load, E, rate);
        double mean = 0;
        for (int e = 0; e < E; e++)
            mean += load[e];
        mean /= E;
        for (int e = 0; e < E; e++) {
            float want = load[e] < mean   ? before[e] + (float)rate
                         : load[e] > mean ? before[e] - (float)rate
                                          : before[e];
            EXPECT(bias[e] == want, "trial %d: bias[%d] %.9g, want %.9g "
                   "(load %d, mean %g)", trial, e, bias[e], want, load[e],
                   mean);
        }
        if (trial % 2) {
            EXPECT(bias[0] == before[0] && bias[3] == before[3],
                   "an expert at the mean load moved");
            tied++;
        }
    }
    EXPECT(tied >= 10, "only %d trials had loads at the mean", tied);
    printf("bias update: sign(mean - load), no move at the mean (%d trials "
           "with ties)\n", tied);
}

/* Naive top-k of scores (E): descending, ties to the lower index. */
static void naive_top_k(int *index, const double *scores, int E, int K)
{
    int order[64];
    for (int e = 0; e < E; e++)
        order[e] = e;
    for (int i = 1; i < E; i++) /* stable insertion sort, descending */
        for (int j = i; j > 0 && scores[order[j]] > scores[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    for (int k = 0; k < K; k++)
        index[k] = order[k];
}

static void random_logits(rng *r, float *logits, int N, int E)
{
    for (int i = 0; i < N * E; i++)
        logits[i] = (float)(1.5 * rng_normal(r));
    /* Exact ties within some rows. */
    for (int t = 0; t < N; t += 5)
        logits[t * E + 3] = logits[t * E + 1];
}

static void test_biased_selection(void)
{
    enum { N = 41, E = 8, K = 3 };
    rng r;
    rng_seed(&r, 19, 0);
    backend be;
    if (cpu_backend_init(&be, 1) < 0) {
        EXPECT(0, "cannot start the CPU backend");
        return;
    }
    float logits[N * E], probs[N * E], lse[N], bias[E], gate[N * K],
        plain_gate[N * K], host_gate[N * K];
    int index[N * K], plain_index[N * K], host_index[N * K];
    random_logits(&r, logits, N, E);
    for (int e = 0; e < E; e++)
        bias[e] = (float)(0.08 * rng_normal(&r));
    bias[1] = bias[3] = 0.02f; /* keeps the tied pair tied */
    be.ops->router_forward(be.ctx, probs, lse, index, gate, logits, bias, N,
                           E, K);
    be.ops->router_forward(be.ctx, probs, lse, plain_index, plain_gate,
                           logits, NULL, N, E, K);
    int differs = 0;
    for (int t = 0; t < N; t++) {
        double scores[E];
        int want[K];
        for (int e = 0; e < E; e++)
            scores[e] = (double)(probs[t * E + e] + bias[e]);
        naive_top_k(want, scores, E, K);
        double chosen = 0;
        for (int k = 0; k < K; k++) {
            EXPECT(index[t * K + k] == want[k], "token %d choice %d: %d, "
                   "want %d", t, k, index[t * K + k], want[k]);
            chosen += probs[t * E + want[k]];
            differs |= index[t * K + k] != plain_index[t * K + k];
        }
        /* Gate weights: the unbiased probs renormalised. */
        for (int k = 0; k < K; k++)
            EXPECT(fabs(gate[t * K + k] - probs[t * E + want[k]] / chosen) <
                       1e-6, "token %d gate %d: %g", t, k, gate[t * K + k]);
    }
    EXPECT(differs, "the bias changed no selection: the test is too weak");

    /* The warm-up's host selection at w = 1 is the kernel's, bit for bit,
     * however the noise is set. */
    router_warmup w = {.mix = 1.0, .mean = 0.3, .std = 2.0, .seed = 5,
                       .step = 3, .layer = 1, .first_token = 100};
    double scratch[E];
    router_select_warmup(host_index, host_gate, logits, probs, bias, &w,
                         scratch, N, E, K);
    EXPECT(memcmp(host_index, index, sizeof index) == 0 &&
               memcmp(host_gate, gate, sizeof gate) == 0,
           "host selection at w = 1 differs from the kernel's");
    router_select_warmup(host_index, host_gate, logits, probs, NULL, &w,
                         scratch, N, E, K);
    EXPECT(memcmp(host_index, plain_index, sizeof index) == 0 &&
               memcmp(host_gate, plain_gate, sizeof gate) == 0,
           "host selection at w = 1 without bias differs from the kernel's");
    cpu_backend_finish(&be);
    printf("biased selection: naive top-k of probs + b, unbiased gates, "
           "w = 1 equals the kernel\n");
}

static void test_warmup_mix(void)
{
    EXPECT(router_warmup_mix(1, 0) == 1.0 && router_warmup_mix(7, 0) == 1.0,
           "a warm-up of 0 steps is off");
    const int W = 8;
    for (int s = 1; s <= W; s++)
        EXPECT(router_warmup_mix(s, W) == (double)(s - 1) / W,
               "w at step %d of %d: %g", s, W, router_warmup_mix(s, W));
    EXPECT(router_warmup_mix(1, W) == 0.0, "w starts at 0");
    EXPECT(router_warmup_mix(W + 1, W) == 1.0 &&
               router_warmup_mix(W + 50, W) == 1.0, "w is 1 after warm-up");
    printf("warm-up mix: (step - 1) / %d, then 1\n", W);
}

static void test_noise(void)
{
    /* Noise ~ Normal(mean, std): sample moments over many keys. */
    const double mu = 1.3, sigma = 0.7;
    const int tokens = 4000, experts = 50;
    double sum = 0, sum2 = 0, cross = 0, fourth = 0;
    for (long t = 0; t < tokens; t++)
        for (int e = 0; e < experts; e++) {
            double z = router_noise_normal(42, 3, 1, t, e);
            double x = mu + sigma * z;
            sum += x;
            sum2 += x * x;
            fourth += z * z * z * z;
            /* Another step, same token and expert: independent. */
            cross += z * router_noise_normal(42, 4, 1, t, e);
        }
    double n = (double)tokens * experts;
    double mean = sum / n, std = sqrt(sum2 / n - mean * mean);
    EXPECT(fabs(mean - mu) < 5 * sigma / sqrt(n), "noise mean %g, want %g",
           mean, mu);
    EXPECT(fabs(std - sigma) < 0.01 * sigma, "noise std %g, want %g", std,
           sigma);
    EXPECT(fabs(fourth / n - 3.0) < 0.1, "noise kurtosis %g, want 3",
           fourth / n);
    EXPECT(fabs(cross / n) < 5 / sqrt(n), "draws of two steps correlate: %g",
           cross / n);
    EXPECT(router_noise_normal(42, 3, 1, 17, 2) ==
               router_noise_normal(42, 3, 1, 17, 2),
           "one key, two values");
    EXPECT(router_noise_normal(42, 3, 1, 17, 2) !=
                   router_noise_normal(43, 3, 1, 17, 2) &&
               router_noise_normal(42, 3, 1, 17, 2) !=
                   router_noise_normal(42, 3, 0, 17, 2),
           "seed and layer do not change the draw");
    printf("noise: mean %.4f (want %.1f), std %.4f (want %.1f) over %.0f "
           "draws\n", mean, mu, std, sigma, n);
}

/* Mixed selection against a naive computation, and the same selection
 * whether the tokens are routed in one call or in chunks with their global
 * indices: rank invariance in miniature. */
static void test_mixed_selection(void)
{
    enum { N = 60, E = 6, K = 2 };
    rng r;
    rng_seed(&r, 23, 0);
    backend be;
    if (cpu_backend_init(&be, 1) < 0) {
        EXPECT(0, "cannot start the CPU backend");
        return;
    }
    float logits[N * E], probs[N * E], lse[N], bias[E], gate[N * K],
        chunk_gate[N * K];
    int index[N * K], chunk_index[N * K];
    random_logits(&r, logits, N, E);
    for (int e = 0; e < E; e++)
        bias[e] = (float)(0.05 * rng_normal(&r));
    be.ops->router_forward(be.ctx, probs, lse, index, gate, logits, bias, N,
                           E, K);
    const double mixes[] = {0.0, 0.35, 0.9};
    for (int i = 0; i < 3; i++) {
        router_warmup w = {.mix = mixes[i], .mean = -0.4, .std = 1.7,
                           .seed = 1234, .step = 5, .layer = 2,
                           .first_token = 480};
        double scratch[E];
        router_select_warmup(index, gate, logits, probs, bias, &w, scratch,
                             N, E, K);
        int kernel_agrees = 0;
        int plain[N * K];
        float plain_gate[N * K];
        be.ops->router_forward(be.ctx, probs, lse, plain, plain_gate, logits,
                               bias, N, E, K);
        for (int t = 0; t < N; t++) {
            double mixed[E], max = -INFINITY, sum = 0, scores[E];
            for (int e = 0; e < E; e++) {
                double noise = w.mean + w.std * router_noise_normal(
                                   w.seed, w.step, w.layer, w.first_token + t,
                                   e);
                mixed[e] = w.mix * logits[t * E + e] + (1 - w.mix) * noise;
                max = fmax(max, mixed[e]);
            }
            for (int e = 0; e < E; e++)
                sum += exp(mixed[e] - max);
            for (int e = 0; e < E; e++)
                scores[e] = exp(mixed[e] - max) / sum + bias[e];
            int want[K];
            naive_top_k(want, scores, E, K);
            double chosen = 0;
            for (int k = 0; k < K; k++) {
                EXPECT(index[t * K + k] == want[k], "w %g token %d choice "
                       "%d: %d, want %d", w.mix, t, k, index[t * K + k],
                       want[k]);
                chosen += probs[t * E + want[k]];
            }
            for (int k = 0; k < K; k++)
                EXPECT(fabs(gate[t * K + k] - probs[t * E + want[k]] / chosen)
                           < 1e-6, "w %g token %d: gate not the unmixed "
                           "probs", w.mix, t);
            kernel_agrees += memcmp(index + t * K, plain + t * K,
                                    K * sizeof(int)) == 0;
        }
        if (w.mix < 0.5)
            EXPECT(kernel_agrees < N * 3 / 4, "w %g: the noise changed "
                   "only %d of %d selections", w.mix, N - kernel_agrees, N);

        /* Chunks of 7, 0, 20 and the rest, each with its global index. */
        const int cuts[] = {0, 7, 7, 27, N};
        for (int c = 0; c + 1 < 5; c++) {
            router_warmup part = w;
            part.first_token = w.first_token + cuts[c];
            router_select_warmup(chunk_index + cuts[c] * K,
                                 chunk_gate + cuts[c] * K,
                                 logits + cuts[c] * E, probs + cuts[c] * E,
                                 bias, &part, scratch, cuts[c + 1] - cuts[c],
                                 E, K);
        }
        EXPECT(memcmp(chunk_index, index, sizeof index) == 0 &&
                   memcmp(chunk_gate, gate, sizeof gate) == 0,
               "w %g: routing in chunks differs from routing at once", w.mix);
        printf("mixed selection w = %.2f: naive agrees, %d of %d tokens "
               "routed differently from plain, chunk-invariant\n", w.mix,
               N - kernel_agrees, N);
    }
    cpu_backend_finish(&be);
}

static void test_logit_sums(void)
{
    enum { N = 13, E = 5 };
    rng r;
    rng_seed(&r, 29, 0);
    float logits[N * E];
    for (int i = 0; i < N * E; i++)
        logits[i] = (float)(0.5 + rng_normal(&r));
    double sums[2], s = 0, s2 = 0;
    router_logit_sums(sums, logits, N, E);
    for (int i = 0; i < N * E; i++) {
        s += logits[i];
        s2 += (double)logits[i] * logits[i];
    }
    EXPECT(sums[0] == s && sums[1] == s2, "logit sums %g %g, want %g %g",
           sums[0], sums[1], s, s2);
}

int main(void)
{
    test_dispatch(0);   /* dropless */
    test_dispatch(10);  /* capacity factor 1.0: some drops */
    test_dispatch(5);   /* 0.5: many drops */
    test_aux_loss();
    test_z_loss();
    test_bias_update();
    test_biased_selection();
    test_warmup_mix();
    test_noise();
    test_mixed_selection();
    test_logit_sums();
    EXPECT(router_capacity(0.0, 10, 2, 4) == 20, "dropless capacity");
    EXPECT(router_capacity(1.0, 10, 2, 4) == 5, "capacity 1.0");
    EXPECT(router_capacity(1.25, 10, 2, 4) == 7, "capacity rounds up");
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
