/* The byte-level decoder-only MoE language model: build → forward →
 * zero_grad → backward (the update lives in optimizer.c) → destroy.
 *
 * Per layer: RMSNorm → causal multi-head attention with RoPE → residual →
 * RMSNorm → MoE feed-forward (router softmax top-k over E SwiGLU experts,
 * plus always-on shared experts) → residual. Then a final RMSNorm and the
 * LM head, trained with cross-entropy plus the router balance losses.
 *
 * The dense parameters, gradients and both Adam moments each live in one
 * slab with named views generated from MODEL_TENSORS, so sizes and
 * pointers cannot drift apart. The routed experts live in the expert store
 * (experts.h): one slab per kind over the experts this rank holds, with
 * the expert dimension explicit. */
#ifndef MOECTL_ENGINE_MODEL_H
#define MOECTL_ENGINE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/core/comm.h"
#include "engine/config/config.h"
#include "engine/core/error.h"
#include "engine/model/experts.h"
#include "engine/model/profile.h"
#include "engine/model/router.h"
#include "engine/model/routing_balance.h"
#include "engine/model/slowdown.h"
#include "engine/model/tensors.h"
#include "kernels/backend.h"

typedef struct model_activations model_activations;

/* The hyper-parameters of the math. */
typedef struct model_hyper {
    float norm_eps;
    float rope_theta;
    float init_std;
    double aux_loss_coef;
    double z_loss_coef;
    double capacity_factor; /* 0: dropless */
} model_hyper;

/* Results of the last forward. */
typedef struct model_last_forward {
    int batch;         /* sequences of this rank */
    int total_tokens;  /* tokens over all ranks */
    double ce_loss;    /* mean cross-entropy, nats per byte */
    double aux_loss;   /* Σ over layers, coefficient applied */
    double z_loss;     /* Σ over layers, coefficient applied */
    int *expert_index; /* (L, N, K) experts chosen */
} model_last_forward;

struct model_expert_parallel;

typedef struct model {
    model_dims dims;
    model_hyper hyper;
    int batch; /* sequences the activations are sized for */
    int local_experts; /* every expert run here (MODEL_EXPERTS_LOCAL) */
    /* This rank's place in the global batch (model_set_comm): its first
     * sequence and the batch's sequences over every rank. */
    int first_sequence, global_sequences;
    const backend *be;

    double loss_scale;  /* the cross-entropy and its gradient times this
                           (0 or 1: as they are); only the trainer's test
                           hook MOECTL_TEST_SPIKE sets it */
    size_t param_count; /* of the whole model: dense and every expert */
    size_t expert_param_count; /* of one routed expert */
    /* Dense parameters, gradients and Adam moments: one slab each, with
     * the named views of MODEL_TENSORS. */
    size_t dense_count;
    model_tensor_info tensors[MODEL_TENSOR_COUNT];
    float *param_memory; /* (dense_count) each */
    float *grad_memory;
    float *adam_m_memory;
    float *adam_v_memory;
    model_tensors params, grads, adam_m, adam_v;
    /* The routed experts this rank holds (all of them on one rank). */
    expert_store experts;

    model_activations *acts;   /* activations.h */
    router_dispatch *dispatch; /* (L) of the last forward, one rank */
    model_last_forward last;
    routing_balance routing;   /* routing-side balancing state */
    model_profile profile;     /* accumulates until model_profile_reset */
    slowdown slowdown;         /* an emulated slower device */
    /* Seconds in the model's own all-reduces (routing warm-up, the loss,
     * the gradient norm), waiting included, until the trainer takes them
     * (model_take_collective_s). */
    double collective_s;

    /* The ranks sharing the batch (model_set_comm; NULL: a lone model)
     * and, when the experts are spread over them, the expert-parallel
     * layer (model_set_expert_parallel; NULL: every expert local). */
    const comm *comm;
    const struct model_expert_parallel *ep;
    struct {
        float *buffer; /* staging of optimizer_reduce_gradients */
        double *expert_squares; /* (L, E) optimizer_grad_norm's sums */
        size_t capacity;
    } reduce;
} model;

/* How a model's routed experts run. */
enum model_experts {
    MODEL_EXPERTS_LOCAL,   /* every expert held and run here */
    MODEL_EXPERTS_PARALLEL /* none held until placed (model_hold_expert);
                              expert parallelism runs them, so the model
                              keeps no expert activations of its own */
};

/* Builds a model for cfg with activations for `batch` sequences. */
int model_create(model **out, const config *cfg, const backend *be, int batch,
                 enum model_experts experts, moe_error *err);
void model_destroy(model *m);

/* Fills parameters from the seed (normal(0, init_std), residual
 * projections scaled by 1/sqrt(2L), norm gains 1) and zeroes Adam moments.
 * Each routed expert draws from a stream of its own, so a rank fills the
 * experts it holds with the values any other placement gives them. */
void model_init_params(model *m, uint64_t seed);
/* Fills expert (l, e), held here, as model_init_params does. */
void model_init_expert(model *m, uint64_t seed, int l, int e);

/* Takes a zeroed slot for expert (l, e) (a placement gives it to this
 * rank), or frees it: 0, or -1 when out of memory. */
int model_hold_expert(model *m, int l, int e);
void model_release_expert(model *m, int l, int e);

/* Bytes this rank's model holds, by kind. */
typedef struct model_memory {
    size_t dense_state;  /* dense parameters, gradients and moments */
    size_t expert_state; /* the expert store's slots, as allocated */
    size_t activations;  /* the model's activations and scratch */
} model_memory;
model_memory model_memory_bytes(const model *m);
/* Bytes of one routed expert's state: parameters, gradient, 2 moments. */
size_t model_expert_state_bytes(const model *m);

/* Forward pass of B (≤ batch) sequences of T tokens: inputs and targets
 * are (B, T). Returns the mean cross-entropy; aux and z losses are in
 * m->last. */
double model_forward(model *m, const int *inputs, const int *targets, int B);

void model_zero_grad(model *m);

/* Gradients of ce_loss + aux_loss + z_loss for the last forward, added to
 * m->grads. */
void model_backward(model *m);

void model_profile_reset(model *m);

/* Marks the next forwards as those of training step `step` (1-based): the
 * routing warm-up applies to them while step ≤ balance.routing_warmup_steps.
 * Any other forward (validation, benchmarks) routes plainly, by
 * probs + routing.bias, and changes no balancing state. */
void model_begin_train_step(model *m, int step);

/* Ends the training step begun by model_begin_train_step, after its
 * forward: keeps the step's running logit statistics and moves the router
 * bias by the step's global expert loads. Every rank calls it and reaches
 * the same state; it communicates nothing. */
void model_end_train_step(model *m);

/* Emulates a device `slowdown` times slower (cluster.devices[].slowdown):
 * every lap of compute in forward and backward is followed by a sleep
 * (slowdown - 1) times as long, so the all-to-all partners wait for it
 * layer by layer as they would for a slow device. 1: off. */
void model_set_slowdown(model *m, double slowdown);
/* Sleeps the emulated slowdown owed so far: called before every exchange
 * with other ranks. */
void model_slowdown_sync(model *m);
/* Sums x (n) over the ranks sharing the batch, after paying the emulated
 * slowdown owed; the time it takes, waiting for the other ranks included,
 * counts as exchange, not compute (m->collective_s). */
void model_allreduce_sum(model *m, double *x, int n);
/* Returns m->collective_s and zeroes it. */
double model_take_collective_s(model *m);

/* Per-expert weight and gradient pointers of layer l, for grouped GEMMs
 * (NULL for experts not held here); valid until the next call. */
typedef struct model_expert_weights {
    const float **w13, **w2; /* (E) */
    float **dw13, **dw2;     /* (E) */
} model_expert_weights;
model_expert_weights model_expert_views(model *m, int l);

/* Ends a lap of the profile in `part` (of the backward pass when
 * `backward`): the expert-parallel layer times its own parts. */
void model_lap(model *m, enum model_part part, int backward);

/* This rank's copy of expert (l, e), as expert parallelism sees it. */
enum model_expert_residency {
    MODEL_EXPERT_HELD = 1,  /* a replica is here (a share of its rows) */
    MODEL_EXPERT_OWNED = 2, /* here is its primary holder */
    MODEL_EXPERT_SPLIT = 4  /* its rows are split over several ranks */
};

/* The routed experts of every layer computed across ranks: a table the
 * expert-parallel layer (engine/moe) fills and owns; the model calls it
 * instead of its local expert GEMMs. ctx is passed back to every slot. */
typedef struct model_expert_parallel {
    void *ctx;
    /* As the local path, over the ranks: ADDS the combined outputs of the
     * layer's experts for norm_out's tokens to out. */
    void (*forward)(void *ctx, int l, const float *norm_out,
                    const int *expert_index, const float *gate, float *out);
    /* ADDS to dnorm_out, SETS dgate, adds the held experts' gradients. */
    void (*backward)(void *ctx, int l, const float *dout, const float *gate,
                     float *dnorm_out, float *dgate);
    /* The global dispatch of layer l's last forward. */
    const router_dispatch *(*dispatch)(const void *ctx, int l);
    /* Seconds spent exchanging with other ranks so far. */
    double (*exchange_s)(const void *ctx);
    /* enum model_expert_residency bits of expert (l, e) on this rank. */
    int (*residency)(const void *ctx, int l, int e);
} model_expert_parallel;

/* The ranks of c share the batch: this rank trains its `batch` sequences
 * from `first_sequence` of the global batch's `global_sequences`, and the
 * losses are normalised over the global batch and summed over the ranks. */
int model_set_comm(model *m, const comm *c, int first_sequence,
                   int global_sequences, moe_error *err);
/* A new share of the same global batch (the `shares` command): room for
 * `batch` sequences (the activations grow when the share does; on failure
 * nothing changes), then the share's first sequence. */
int model_reserve_rows(model *m, int batch, moe_error *err);
void model_set_first_sequence(model *m, int first_sequence);
/* Installs the expert-parallel layer (its table must outlive the model's
 * use of it), or NULL for every expert local. */
void model_set_expert_parallel(model *m, const model_expert_parallel *ep);
/* 1 when this rank is expert e of layer l's primary holder. */
int model_owns_expert(const model *m, int l, int e);
/* 1 when this rank holds a replica of expert (l, e). */
int model_holds_expert(const model *m, int l, int e);
/* 1 when expert (l, e)'s rows are split over several ranks. */
int model_expert_is_split(const model *m, int l, int e);

/* Tokens routed to each expert by the last forward: load (L, E). */
void model_expert_load(const model *m, int *load);
/* Assignments dropped by the capacity limit in the last forward. */
int model_dropped_assignments(const model *m);

/* Parameters one token passes through: all but the unchosen experts. */
size_t model_active_params(const model *m);
/* Training FLOPs per token: 6 × active non-embedding parameters plus
 * 12·L·C·T for attention scores and values (forward and backward). */
double model_flops_per_token(const model *m);

#endif
