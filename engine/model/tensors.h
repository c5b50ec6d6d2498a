/* The model's shape and its dense parameter tensors: the dims, and the one
 * list of {name, element count, initialisation, weight decay} (an X-macro)
 * from which the dense slabs' named views are generated. Shared by the model and its
 * activations, which size themselves from the dims. */
#ifndef MOECTL_ENGINE_TENSORS_H
#define MOECTL_ENGINE_TENSORS_H

#include <stddef.h>

typedef struct model_dims {
    int V; /* vocabulary (bytes: 256) */
    int C; /* d_model */
    int L; /* layers */
    int H; /* attention heads */
    int T; /* sequence length */
    int E; /* routed experts per layer */
    int K; /* experts chosen per token */
    int F; /* SwiGLU width of one routed expert */
    int S; /* SwiGLU width of the shared experts together (n_shared * F) */
} model_dims;

/* The dense tensors, replicated on every rank. The routed experts' live
 * in the expert store (experts.h, MODEL_EXPERT_TENSORS), one slot per
 * expert a rank holds.
 * X(name, element count, initialisation, weight decay applies) */
#define MODEL_TENSORS(X)                                                         \
    X(wte, (size_t)d->V * d->C, MODEL_INIT_NORMAL, 1)      /* (V, C) */          \
    X(attn_norm, (size_t)d->L * d->C, MODEL_INIT_ONES, 0)  /* (L, C) */          \
    X(wqkv, (size_t)d->L * 3 * d->C * d->C, MODEL_INIT_NORMAL, 1) /* (L, 3C, C) */ \
    X(wo, (size_t)d->L * d->C * d->C, MODEL_INIT_RESIDUAL, 1) /* (L, C, C) */    \
    X(ffn_norm, (size_t)d->L * d->C, MODEL_INIT_ONES, 0)   /* (L, C) */          \
    X(router, (size_t)d->L * d->E * d->C, MODEL_INIT_NORMAL, 1) /* (L, E, C) */  \
    X(shared_w13, (size_t)d->L * 2 * d->S * d->C, MODEL_INIT_NORMAL, 1)          \
    /* (L, 2S, C) */                                                             \
    X(shared_w2, (size_t)d->L * d->C * d->S, MODEL_INIT_RESIDUAL, 1)             \
    /* (L, C, S) */                                                              \
    X(final_norm, (size_t)d->C, MODEL_INIT_ONES, 0)        /* (C) */             \
    X(lm_head, (size_t)d->V * d->C, MODEL_INIT_NORMAL, 1)  /* (V, C) */

enum model_init { MODEL_INIT_NORMAL, MODEL_INIT_RESIDUAL, MODEL_INIT_ONES };

enum model_tensor_id {
#define X(name, count, init, decay) MODEL_TENSOR_##name,
    MODEL_TENSORS(X)
#undef X
    MODEL_TENSOR_COUNT
};

typedef struct model_tensors {
#define X(name, count, init, decay) float *name;
    MODEL_TENSORS(X)
#undef X
} model_tensors;

typedef struct model_tensor_info {
    const char *name;
    size_t offset; /* elements from the slab start */
    size_t count;
    int decay;
} model_tensor_info;

#endif
