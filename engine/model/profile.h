/* Where a step's time goes, by part of the model (the console and
 * `moectl bench --profile` show it). */
#ifndef MOECTL_ENGINE_MODEL_PROFILE_H
#define MOECTL_ENGINE_MODEL_PROFILE_H

#define MODEL_PARTS(X)                                                         \
    X(embedding)                                                               \
    X(norms)          /* RMSNorms and residual adds */                         \
    X(attention)      /* qkv, RoPE, attention, output projection */            \
    X(router)         /* router GEMM, softmax, top-k, dispatch, aux/z */       \
    X(permute)        /* token permute and un-permute */                       \
    X(experts)        /* routed expert GEMMs and SwiGLU */                     \
    X(shared_experts)                                                          \
    X(head)           /* final norm, LM head, cross-entropy */

enum model_part {
#define X(name) MODEL_PART_##name,
    MODEL_PARTS(X)
#undef X
    MODEL_PART_COUNT
};

extern const char *const model_part_names[MODEL_PART_COUNT];

typedef struct model_profile {
    double forward_s[MODEL_PART_COUNT];
    double backward_s[MODEL_PART_COUNT];
    double lap_start; /* monotonic seconds at the last lap */
} model_profile;

/* Starts the laps of a pass at `now`. */
void profile_begin(model_profile *p, double now);

/* Ends a lap at `now` in `part` (of the backward pass when `backward`),
 * adding correction_s to its length (see slowdown_end_lap). */
void profile_lap(model_profile *p, enum model_part part, int backward,
                 double now, double correction_s);

#endif
