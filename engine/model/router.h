/* Host-side routing bookkeeping around the backend's router kernel:
 * building the expert-sorted dispatch (dropless or with a capacity limit),
 * the routing-side balance losses with their gradients, auxiliary-loss-free
 * bias balancing and the stochastic routing warm-up. */
#ifndef MOECTL_ENGINE_ROUTER_H
#define MOECTL_ENGINE_ROUTER_H

#include <stdint.h>

/* Expert-sorted dispatch of N tokens × K choices over E experts. */
typedef struct router_dispatch {
    int *group_rows;    /* (E) slots kept per expert, in expert order */
    int *selected;      /* (E) assignments chosen per expert, before drops */
    int *token_of_slot; /* (N*K) token of each kept slot */
    int *slot_of;       /* (N*K) slot of assignment t*K+k, or -1 if dropped */
    int *scratch;       /* (2E) working space */
    int slots;          /* kept slots, Σ group_rows */
    int dropped;        /* assignments dropped by the capacity limit */
} router_dispatch;

/* Capacity per expert for a capacity factor (0: dropless, returns N*K). */
int router_capacity(double capacity_factor, int N, int K, int E);

/* Fills d from expert_index (N, K). Within an expert, slots follow token
 * order, so the dispatch is deterministic; assignments past `capacity`
 * are dropped. d's arrays must hold the sizes noted above. */
void router_build_dispatch(router_dispatch *d, const int *expert_index,
                           int N, int K, int E, int capacity);

/* Switch auxiliary loss α·E·Σ_i f_i·P_i over `total` tokens, with f_i the
 * fraction of the total·K assignments that chose expert i (`selected` are
 * counts over all tokens) and P_i the mean router probability. This call
 * sees N of the tokens (probs (N, E)); it returns their share of the loss,
 * so the shares of all ranks add up to it. When dprobs (N, E) is not NULL,
 * it is SET to the gradient α·E·f_i/total (f treated as constant, as in
 * Switch). */
double router_aux_loss(float *dprobs, const float *probs, const int *selected,
                       int N, int total, int K, int E, double alpha);

/* Router z-loss coef·mean_t(lse_t²) over `total` tokens, of which this call
 * sees N; returns their share. When dlogits (N, E) is not NULL, ADDS the
 * gradient coef·2·lse_t·p_te/total. */
double router_z_loss(float *dlogits, const float *probs, const float *lse,
                     int N, int total, int E, double coef);

/* Auxiliary-loss-free bias balancing (DeepSeek-V3): after a training step
 * with per-expert loads load (E) (assignments over all ranks), every
 * b_i += rate · sign(mean_load − load_i); an expert exactly at the mean
 * keeps its bias. The comparison is done in integers (Σ load vs E·load_i),
 * so it is exact. */
void router_bias_update(float *bias, const int *load, int E, double rate);

/* The routing warm-up's mixing weight w for training step `step` (1-based)
 * of a `warmup_steps`-step warm-up: w = (step − 1) / warmup_steps while
 * step ≤ warmup_steps (0 at step 1, (W−1)/W at step W), then 1. A warm-up
 * of 0 steps is off: always 1. */
double router_warmup_mix(int step, int warmup_steps);

/* Decay of the running logit statistics the warm-up noise is drawn from:
 * μ ← d·μ + (1−d)·batch mean, and likewise the variance. */
#define ROUTER_LOGIT_EMA_DECAY 0.9

/* A standard normal draw from a counter-based generator keyed by
 * (seed, step, layer, global token index, expert): the same key always
 * gives the same number, whichever rank draws it and in whatever order. */
double router_noise_normal(uint64_t seed, int step, int layer, long token,
                           int expert);

/* Σ x and Σ x² (in double, in row order) of `rows` rows of E logits. */
void router_logit_sums(double sums[2], const float *logits, int rows, int E);

/* What the warm-up's selection mixes in. */
typedef struct router_warmup {
    double mix;       /* w: weight of the logits, 1 − w of the noise */
    double mean, std; /* the noise is Normal(mean, std) */
    uint64_t seed;    /* the noise key: seed, step, layer, token, expert */
    int step;
    int layer;
    long first_token; /* global index of row 0 */
} router_warmup;

/* Top-k selection during the routing warm-up, for N tokens. The scores are
 * softmax(w·logits + (1−w)·noise) + bias, noise_{t,e} = mean + std·
 * router_noise_normal(seed, step, layer, first_token + t, e); with w ≥ 1
 * they are probs + bias, exactly as the backend's router_forward. Writes
 * expert_index (N, K), descending, ties to the lower index, and
 * gate_weight (N, K): the unbiased, unmixed probs (N, E) of the chosen
 * experts renormalised to sum 1. bias (E) may be NULL; scratch holds E
 * doubles. */
void router_select_warmup(int *expert_index, float *gate_weight,
                          const float *logits, const float *probs,
                          const float *bias, const router_warmup *w,
                          double *scratch, int N, int E, int K);

#endif
