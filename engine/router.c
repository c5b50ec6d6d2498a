#include "engine/router.h"

#include <math.h>
#include <string.h>

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
