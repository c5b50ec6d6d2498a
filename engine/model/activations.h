/* Activations of one forward pass kept for the backward pass, and the
 * backward pass's scratch: one float slab and one int slab in the
 * backend's memory, with named views generated from MODEL_ACTIVATIONS and
 * MODEL_INDICES; layer_acts are one layer's views. */
#ifndef MOECTL_ENGINE_MODEL_ACTIVATIONS_H
#define MOECTL_ENGINE_MODEL_ACTIVATIONS_H

#include <stddef.h>

#include "engine/core/error.h"
#include "engine/model/tensors.h"
#include "engine/model/router.h"
#include "kernels/backend.h"

/* N = batch·T tokens, SK = N·K slots (0 when expert parallelism runs the
 * experts: the model then routes but keeps no expert rows). */
#define MODEL_ACTIVATIONS(X)                                                   \
    X(resid, (size_t)(L + 1) * N * C)  /* (L+1, N, C) residual entering each \
                                          layer, then the final one */         \
    X(x_mid, (size_t)L * N * C)        /* (L, N, C) after attention */         \
    X(attn_norm_out, (size_t)L * N * C) /* (L, N, C) */                        \
    X(attn_rstd, (size_t)L * N)        /* (L, N) */                            \
    X(qkv, (size_t)L * N * 3 * C)      /* (L, N, 3C) after RoPE */             \
    X(att_probs, (size_t)L * B * H * T * T) /* (L, B, H, T, T) */              \
    X(att_out, (size_t)L * N * C)      /* (L, N, C) heads before wo */         \
    X(ffn_norm_out, (size_t)L * N * C) /* (L, N, C) */                         \
    X(ffn_rstd, (size_t)L * N)         /* (L, N) */                            \
    X(router_logits, (size_t)L * N * E) /* (L, N, E) */                        \
    X(router_probs, (size_t)L * N * E) /* (L, N, E) */                         \
    X(router_lse, (size_t)L * N)       /* (L, N) */                            \
    X(gate_weight, (size_t)L * N * K)  /* (L, N, K) */                         \
    X(expert_in, (size_t)L * SK * C)   /* (L, SK, C) tokens sorted by expert */ \
    X(expert_h13, (size_t)L * SK * 2 * F) /* (L, SK, 2F) */                    \
    X(expert_h, (size_t)L * SK * F)    /* (L, SK, F) */                        \
    X(expert_out, (size_t)L * SK * C)  /* (L, SK, C) */                        \
    X(shared_h13, (size_t)L * N * 2 * S) /* (L, N, 2S) */                      \
    X(shared_h, (size_t)L * N * S)     /* (L, N, S) */                         \
    X(branch_out, (size_t)N * C)       /* (N, C) scratch */                    \
    X(final_out, (size_t)N * C)        /* (N, C) */                            \
    X(final_rstd, (size_t)N)           /* (N) */                               \
    X(logits, (size_t)N * V)           /* (N, V); dlogits after forward */     \
    X(losses, (size_t)N)               /* (N) */                               \
    X(d_resid, (size_t)N * C)          /* backward scratch from here on */     \
    X(d_norm_out, (size_t)N * C)                                               \
    X(d_qkv, (size_t)N * 3 * C)                                                \
    X(d_att_out, (size_t)N * C)                                                \
    X(d_router_logits, (size_t)N * E)                                          \
    X(d_router_probs, (size_t)N * E)                                           \
    X(d_gate, (size_t)N * K)                                                   \
    X(d_expert_out, (size_t)SK * C)                                            \
    X(d_expert_h, (size_t)SK * F)                                              \
    X(d_expert_h13, (size_t)SK * 2 * F)                                        \
    X(d_expert_in, (size_t)SK * C)                                             \
    X(d_shared_h, (size_t)N * S)                                               \
    X(d_shared_h13, (size_t)N * 2 * S)

#define MODEL_INDICES(X)                                                       \
    X(inputs, (size_t)N)                                                       \
    X(targets, (size_t)N)                                                      \
    X(expert_index, (size_t)L * N * K) /* (L, N, K) */                         \
    X(group_rows, (size_t)L * E)       /* (L, E) */                            \
    X(selected, (size_t)L * E)         /* (L, E) */                            \
    X(token_of_slot, (size_t)L * SK)   /* (L, SK) */                           \
    X(slot_of, (size_t)L * SK)         /* (L, N, K) */                         \
    X(dispatch_scratch, (size_t)2 * E)

typedef struct model_activations model_activations; /* also in model.h */

struct model_activations {
    const backend *be;  /* whose memory float_memory and int_memory are */
    float *float_memory;
    int *int_memory;
#define X(name, count) float *name;
    MODEL_ACTIVATIONS(X)
#undef X
#define X(name, count) int *name;
    MODEL_INDICES(X)
#undef X
    /* Per-expert weight views for the grouped GEMMs of one layer. */
    const float **w13;
    const float **w2;
    float **dw13;
    float **dw2;
    /* Routing warm-up scratch: (sequences of the global batch, 2) logit
     * sums, then (E) scores. */
    double *routing_scratch;
    size_t routing_scratch_count;
    size_t expert_slots; /* SK per layer: the slots the views stride by */
    size_t bytes;        /* of both slabs */
};

/* Slabs for `batch` sequences of the model's dims, zeroed; with
 * local_experts 0 the expert rows are left to expert parallelism. */
int activations_create(model_activations **out, const model_dims *dims,
                       int batch, int local_experts, const backend *be,
                       moe_error *err);
void activations_destroy(model_activations *a);

/* Sizes the routing warm-up scratch for `sequences` of the global batch. */
int activations_reserve_routing(model_activations *a, int sequences, int E);

/* Views of layer l's saved activations. Strides use the allocated batch,
 * so a smaller validation batch reuses the same slab. */
typedef struct layer_acts {
    float *x;             /* (N, C) residual entering the layer */
    float *x_next;        /* (N, C) residual leaving it */
    float *x_mid;         /* (N, C) residual after attention */
    float *attn_norm_out; /* (N, C) */
    float *attn_rstd;     /* (N) */
    float *qkv;           /* (N, 3C) */
    float *probs;         /* (B, H, T, T) */
    float *att_out;       /* (N, C) */
    float *ffn_norm_out;  /* (N, C) */
    float *ffn_rstd;      /* (N) */
    float *router_logits; /* (N, E) */
    float *router_probs;  /* (N, E) */
    float *router_lse;    /* (N) */
    float *gate;          /* (N, K) */
    int *expert_index;    /* (N, K) */
    float *expert_in;     /* (SK, C) */
    float *expert_h13;    /* (SK, 2F) */
    float *expert_h;      /* (SK, F) */
    float *expert_out;    /* (SK, C) */
    float *shared_h13;    /* (N, 2S) */
    float *shared_h;      /* (N, S) */
    router_dispatch *rd;
} layer_acts;

/* Layer l's views (strides of the allocated `batch`); rd is left NULL. */
void activations_layer(model_activations *a, const model_dims *d, int batch,
                       int l, layer_acts *v);

#endif
