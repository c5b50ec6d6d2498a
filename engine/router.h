/* Host-side routing bookkeeping around the backend's router kernel:
 * building the expert-sorted dispatch (dropless or with a capacity limit)
 * and the routing-side balance losses with their gradients. */
#ifndef MOECTL_ENGINE_ROUTER_H
#define MOECTL_ENGINE_ROUTER_H

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

#endif
