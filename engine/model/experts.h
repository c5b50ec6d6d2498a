/* The routed experts this rank holds: parameters, gradients and both Adam
 * moments of each held expert, in one slab per kind with an explicit
 * expert dimension (slots), indexed by (layer, expert) through slot_of.
 *
 * A rank holds only the experts its placement gives it (engine/moe), so
 * its expert memory is the hosted experts', and adding ranks shrinks it.
 * A slot is [w13 (2F, C) | w2 (C, F)], contiguous, so that one expert's
 * state is one span per slab: migration ships it in three messages.
 *
 * Slots are taken on hold (growing the slabs when none is free) and freed
 * on release; expert_store_trim gives unused slots back to the allocator.
 * Growing or trimming moves the slabs: views are valid until the next
 * hold, release or trim. */
#ifndef MOECTL_ENGINE_MODEL_EXPERTS_H
#define MOECTL_ENGINE_MODEL_EXPERTS_H

#include <stddef.h>

#include "engine/core/error.h"
#include "kernels/backend.h"

/* X(name, elements of one expert's slice, initialisation, weight decay):
 * the slices of a slot, in slot order. */
#define MODEL_EXPERT_TENSORS(X)                                                \
    X(expert_w13, (size_t)2 * F * C, MODEL_INIT_NORMAL, 1) /* (2F, C): rows   \
                                                       [gate | up] */          \
    X(expert_w2, (size_t)C * F, MODEL_INIT_RESIDUAL, 1)    /* (C, F) */

typedef struct expert_store {
    int layers, experts;   /* L, E: the (layer, expert) grid */
    size_t w13_count;      /* elements of expert_w13 in a slot */
    size_t slot_count;     /* elements of a slot: w13 then w2 */
    int capacity;          /* slots allocated */
    int held;              /* slots in use */
    int *slot_of;          /* (L, E) slot of each expert, or -1 */
    int *expert_of;        /* (capacity) l·E + e of each slot, or -1 */
    float *params;         /* (capacity, slot_count) each */
    float *grads;
    float *adam_m;
    float *adam_v;
    const backend *be;     /* whose memory the slabs are */
} expert_store;

/* An empty store for L × E experts of d_model C and width F. */
int expert_store_init(expert_store *s, int layers, int experts, int C, int F,
                      const backend *be, moe_error *err);
void expert_store_finish(expert_store *s);

/* Makes room for `count` slots in all (the slabs are sized exactly; a
 * later hold grows them with some headroom). */
int expert_store_reserve(expert_store *s, int count);

/* Takes a slot for expert (l, e), zeroed: its slot, or -1 when out of
 * memory. Holding an expert held already returns its slot. */
int expert_store_hold(expert_store *s, int l, int e);
/* Frees expert (l, e)'s slot (nothing when it is not held). */
void expert_store_release(expert_store *s, int l, int e);
/* Gives the slots no expert uses back: the slabs shrink to what is held. */
int expert_store_trim(expert_store *s);

static inline int expert_store_holds(const expert_store *s, int l, int e)
{
    return s->slot_of[(size_t)l * s->experts + e] >= 0;
}

/* Expert (l, e)'s slot in a slab (params, grads, adam_m or adam_v), or
 * NULL when it is not held here. */
static inline float *expert_store_slot(const expert_store *s, float *slab,
                                       int l, int e)
{
    int slot = s->slot_of[(size_t)l * s->experts + e];
    return slot < 0 ? NULL : slab + (size_t)slot * s->slot_count;
}

/* Bytes of the four slabs as allocated. */
static inline size_t expert_store_bytes(const expert_store *s)
{
    return (size_t)4 * s->capacity * s->slot_count * sizeof(float);
}

#endif
