#include "engine/model/router.h"

#include <math.h>
#include <string.h>

#include "kernels/topk.h"

int router_capacity(double capacity_factor, int N, int K, int E)
{
    if (capacity_factor <= 0.0)
        return N * K;
    double capacity = ceil(capacity_factor * (double)N * K / E);
    return capacity > (double)N * K ? N * K : (int)capacity;
}

void router_build_dispatch(router_dispatch *d, const int *expert_index,
                           int N, int K, int E, int capacity)
{
    memset(d->selected, 0, (size_t)E * sizeof *d->selected);
    for (int i = 0; i < N * K; i++)
        d->selected[expert_index[i]]++;

    int offset = 0;
    for (int e = 0; e < E; e++) {
        d->group_rows[e] = d->selected[e] < capacity ? d->selected[e] : capacity;
        offset += d->group_rows[e];
    }
    d->slots = offset;
    d->dropped = N * K - offset;

    /* Counting sort by expert, stable in token order; the group_rows
     * prefix sums give each expert's first slot. */
    int *start = d->scratch, *filled = d->scratch + E;
    offset = 0;
    for (int e = 0; e < E; e++) {
        start[e] = offset;
        filled[e] = 0;
        offset += d->group_rows[e];
    }
    for (int t = 0; t < N; t++) {
        for (int k = 0; k < K; k++) {
            int e = expert_index[t * K + k];
            if (filled[e] < d->group_rows[e]) {
                int slot = start[e] + filled[e]++;
                d->slot_of[t * K + k] = slot;
                d->token_of_slot[slot] = t;
            } else {
                d->slot_of[t * K + k] = -1;
            }
        }
    }
}

double router_aux_loss(float *dprobs, const float *probs, const int *selected,
                       int N, int total, int K, int E, double alpha)
{
    double loss = 0.0;
    for (int e = 0; e < E; e++) {
        double mean_prob = 0.0;
        for (int t = 0; t < N; t++)
            mean_prob += probs[(size_t)t * E + e];
        mean_prob /= total;
        double fraction = (double)selected[e] / ((double)total * K);
        loss += fraction * mean_prob;
        if (dprobs) {
            float g = (float)(alpha * E * fraction / total);
            for (int t = 0; t < N; t++)
                dprobs[(size_t)t * E + e] = g;
        }
    }
    return alpha * E * loss;
}

double router_z_loss(float *dlogits, const float *probs, const float *lse,
                     int N, int total, int E, double coef)
{
    double loss = 0.0;
    for (int t = 0; t < N; t++) {
        loss += (double)lse[t] * lse[t];
        if (dlogits) {
            float g = (float)(coef * 2.0 * lse[t] / total);
            for (int e = 0; e < E; e++)
                dlogits[(size_t)t * E + e] += g * probs[(size_t)t * E + e];
        }
    }
    return coef * loss / total;
}

void router_bias_update(float *bias, const int *load, int E, double rate)
{
    long long total = 0;
    for (int e = 0; e < E; e++)
        total += load[e];
    const float step = (float)rate;
    for (int e = 0; e < E; e++) {
        long long above_mean = (long long)E * load[e] - total;
        if (above_mean < 0)
            bias[e] += step;
        else if (above_mean > 0)
            bias[e] -= step;
    }
}

double router_warmup_mix(int step, int warmup_steps)
{
    if (warmup_steps <= 0 || step > warmup_steps)
        return 1.0;
    return (double)(step - 1) / warmup_steps;
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Each key field is folded in through a full avalanche, so neighbouring
 * counters give unrelated draws. */
double router_noise_normal(uint64_t seed, int step, int layer, long token,
                           int expert)
{
    const uint64_t golden = 0x9e3779b97f4a7c15ull;
    uint64_t h = mix64(seed + golden);
    h = mix64(h ^ ((uint64_t)(uint32_t)step + golden));
    h = mix64(h ^ ((uint64_t)(uint32_t)layer + 2 * golden));
    h = mix64(h ^ ((uint64_t)token + 3 * golden));
    h = mix64(h ^ ((uint64_t)(uint32_t)expert + 4 * golden));
    uint64_t a = mix64(h + golden), b = mix64(h + 2 * golden);
    /* Box-Muller on two uniforms in (0, 1] and [0, 1). */
    double u1 = (double)((a >> 11) + 1) * 0x1.0p-53;
    double u2 = (double)(b >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void router_logit_sums(double sums[2], const float *logits, int rows, int E)
{
    double sum = 0.0, sum_squares = 0.0;
    for (size_t i = 0; i < (size_t)rows * E; i++) {
        sum += logits[i];
        sum_squares += (double)logits[i] * logits[i];
    }
    sums[0] = sum;
    sums[1] = sum_squares;
}

void router_select_warmup(int *expert_index, float *gate_weight,
                          const float *logits, const float *probs,
                          const float *bias, const router_warmup *w,
                          double *scratch, int N, int E, int K)
{
    double *score = scratch;
    for (int t = 0; t < N; t++) {
        const float *x = logits + (size_t)t * E;
        const float *p = probs + (size_t)t * E;
        int *index = expert_index + (size_t)t * K;
        float *gate = gate_weight + (size_t)t * K;

        if (w->mix >= 1.0) {
            /* Rounded as the kernel rounds: float probs + float bias. */
            for (int e = 0; e < E; e++)
                score[e] = bias ? (double)(p[e] + bias[e]) : (double)p[e];
        } else {
            double max = -INFINITY;
            for (int e = 0; e < E; e++) {
                double noise = w->mean + w->std *
                    router_noise_normal(w->seed, w->step, w->layer,
                                        w->first_token + t, e);
                score[e] = w->mix * x[e] + (1.0 - w->mix) * noise;
                max = score[e] > max ? score[e] : max;
            }
            double sum = 0.0;
            for (int e = 0; e < E; e++) {
                score[e] = exp(score[e] - max);
                sum += score[e];
            }
            for (int e = 0; e < E; e++)
                score[e] = score[e] / sum + (bias ? bias[e] : 0.0);
        }
        topk_select(index, p, NULL, score, E, K);
        float chosen = 0.0f;
        for (int k = 0; k < K; k++)
            chosen += p[index[k]];
        for (int k = 0; k < K; k++)
            gate[k] = p[index[k]] / chosen;
    }
}
