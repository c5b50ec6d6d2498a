/* Expert parallelism: the MoE feed-forward of a model whose routed experts
 * live on different ranks, by a versioned placement table.
 *
 * Each rank runs the dense layers on its own shard of the batch. After the
 * router, the ranks share their top-k choices (all-gather), so every rank
 * builds the same global dispatch as a single rank would. Token rows go to
 * their experts' ranks (all-to-all, counts known from the dispatch), each
 * rank runs its experts over their tokens in global slot order, and the
 * results come back the same way. Backward mirrors it. An expert's GEMMs
 * see exactly the rows, in exactly the order, of a one-rank run, so expert
 * results do not depend on placement or rank count. */
#ifndef MOECTL_ENGINE_EXPERT_PARALLEL_H
#define MOECTL_ENGINE_EXPERT_PARALLEL_H

#include "engine/core/comm.h"
#include "engine/core/error.h"
#include "engine/model/router.h"
#include "engine/moe/placement.h"
#include "kernels/backend.h"

typedef struct expert_parallel expert_parallel;

/* Per-expert weight and gradient pointers of one layer (E each), for the
 * grouped GEMMs. */
typedef struct expert_parallel_weights {
    const float **w13, **w2; /* (E): (2F, C) and (C, F) */
    float **dw13, **dw2;     /* (E) */
} expert_parallel_weights;

/* Where the time of an expert-parallel layer goes (the model's profile). */
enum expert_parallel_part {
    EXPERT_PARALLEL_ROUTER,  /* all-gather of the choices, the plan */
    EXPERT_PARALLEL_PERMUTE, /* permutes and all-to-alls */
    EXPERT_PARALLEL_EXPERTS  /* the routed expert GEMMs */
};

/* What expert parallelism needs from the model, given explicitly. */
typedef struct expert_parallel_setup {
    int layers, experts, top_k; /* L, E, K */
    int d_model, expert_hidden; /* C, F */
    int local_tokens;           /* rows of this rank's batch (batch·T) */
    double capacity_factor;     /* 0: dropless */
    const backend *be;          /* whose memory the buffers are */
    const comm *comm;
    const placement *placement; /* read at every forward */
    /* Hooks into the model, called with `model`: layer l's expert weight
     * views (valid until the next call), the end of a profile lap, and
     * the moment before every exchange with other ranks (the emulated
     * slowdown is paid there). */
    void *model;
    expert_parallel_weights (*weights)(void *model, int l);
    void (*lap)(void *model, enum expert_parallel_part part, int backward);
    void (*before_exchange)(void *model);
} expert_parallel_setup;

/* Buffers for the worst case (every slot on this rank) are taken here, so
 * a step allocates nothing. */
int expert_parallel_create(expert_parallel **out,
                           const expert_parallel_setup *setup,
                           moe_error *err);
void expert_parallel_destroy(expert_parallel *ep);

/* Layer l forward: routes the local tokens' rows of norm_out (N_local, C)
 * chosen by expert_index/gate (N_local, K) and ADDS the combined expert
 * outputs to out (N_local, C). Fills the layer's global dispatch, whose
 * `selected` counts are global. */
void expert_parallel_forward(expert_parallel *ep, int l,
                             const float *norm_out, const int *expert_index,
                             const float *gate, float *out);

/* Layer l backward: dout (N_local, C) is the gradient of out; ADDS to
 * dnorm_out (N_local, C), SETS dgate (N_local, K), and adds this rank's
 * experts' weight gradients. */
void expert_parallel_backward(expert_parallel *ep, int l, const float *dout,
                              const float *gate, float *dnorm_out,
                              float *dgate);

/* The global dispatch of layer l's last forward. */
const router_dispatch *expert_parallel_dispatch(const expert_parallel *ep,
                                                int l);

/* Rows this rank's experts processed in the last forward (all layers). */
long expert_parallel_rows(const expert_parallel *ep);

/* Seconds spent in all-to-all since the last take. */
double expert_parallel_peek_alltoall_s(const expert_parallel *ep);

/* Seconds spent in all-to-all since the last call (and resets). */
double expert_parallel_take_alltoall_s(expert_parallel *ep);

#endif
