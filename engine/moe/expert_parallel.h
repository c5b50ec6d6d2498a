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
 * results do not depend on placement or rank count.
 *
 * Memory follows the rows routed here, so it falls as ranks are added:
 * the expert-side activations (each layer's and the shared gradients) and
 * the all-to-all staging (rows of C) hold the rows of this rank's experts
 * (the staging also its tokens' outgoing rows), starting at the even share
 * N_local*K and grown on demand to rows + rows/4, rounded up to 64, never
 * past the cap: N_total*K, or with a capacity factor, the experts of the
 * layer held here times the capacity per expert (the staging at least
 * N_local*K). The dispatch's integer arrays stay N_total*K. Every rank
 * knows every rank's rows from the global dispatch and keeps every rank's
 * capacities by the same rule, so all know when any rank grows; only then
 * do they agree, with one all-reduce, whether every rank took its
 * buffers. If one could not, every rank fails the layer alike
 * (expert_parallel_failure) and skips its expert-parallel work, with no
 * exchange, until the next forward of layer 0. */
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
    const int *rank_tokens;     /* (world) tokens of each rank's share of
                                   the batch (rows·T), in rank order: the
                                   global batch's tokens are numbered
                                   rank by rank */
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

/* Takes the dispatch's arrays and the expert-side buffers at the even
 * share of rows (N_local*K); the forward grows the latter on demand, up to
 * their cap (see the top of this file). Called by every rank. */
int expert_parallel_create(expert_parallel **out,
                           const expert_parallel_setup *setup,
                           moe_error *err);
void expert_parallel_destroy(expert_parallel *ep);

/* Layer l forward: routes the local tokens' rows of norm_out (N_local, C)
 * chosen by expert_index/gate (N_local, K) and ADDS the combined expert
 * outputs to out (N_local, C). Fills the layer's global dispatch, whose
 * `selected` counts are global. Grows the buffers where any rank needs
 * more rows (then with a collective on every rank). Layer 0 clears a past
 * failure; after a failure it does nothing until then. */
void expert_parallel_forward(expert_parallel *ep, int l,
                             const float *norm_out, const int *expert_index,
                             const float *gate, float *out);

/* Layer l backward: dout (N_local, C) is the gradient of out; ADDS to
 * dnorm_out (N_local, C), SETS dgate (N_local, K), and adds this rank's
 * experts' weight gradients. After a failure it only zeroes dgate. */
void expert_parallel_backward(expert_parallel *ep, int l, const float *dout,
                              const float *gate, float *dnorm_out,
                              float *dgate);

/* The global dispatch of layer l's last forward. */
const router_dispatch *expert_parallel_dispatch(const expert_parallel *ep,
                                                int l);

/* Why the step's expert parallelism failed, the same text on every rank
 * (which rank could not take how many rows, MiB, and the cap), or NULL
 * when it did not. It holds from the failing layer's forward to the next
 * forward of layer 0; a step that sees it must be dropped on every rank,
 * since the layers after the failure did not run. */
const char *expert_parallel_failure(const expert_parallel *ep);

/* Bytes this rank's expert parallelism holds now; *activations (or NULL)
 * gets the expert-side rows: every layer's expert_in/h13/h/out and
 * returned rows, and the shared gradient buffers; *staging (or NULL) the
 * all-to-all send/receive buffers and the integer dispatch arrays.
 * Returns their sum. */
size_t expert_parallel_bytes(const expert_parallel *ep, size_t *activations,
                             size_t *staging);

/* Rows this rank's experts processed in the last forward (all layers). */
long expert_parallel_rows(const expert_parallel *ep);

/* Seconds spent in all-to-all since the last take. */
double expert_parallel_peek_alltoall_s(const expert_parallel *ep);

/* Seconds spent in all-to-all since the last call (and resets). */
double expert_parallel_take_alltoall_s(expert_parallel *ep);

#endif
