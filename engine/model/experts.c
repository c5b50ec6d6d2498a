#include "engine/model/experts.h"

#include <stdlib.h>
#include <string.h>

int expert_store_init(expert_store *s, int layers, int experts, int C, int F,
                      const backend *be, moe_error *err)
{
    memset(s, 0, sizeof *s);
    s->layers = layers;
    s->experts = experts;
    s->be = be;
    size_t slot = 0;
#define X(name, count, init, decay) slot += (count);
    MODEL_EXPERT_TENSORS(X)
#undef X
    s->w13_count = (size_t)2 * F * C;
    s->slot_count = slot;
    size_t cells = (size_t)layers * experts;
    s->slot_of = malloc(cells * sizeof *s->slot_of);
    if (!s->slot_of)
        return error_set(err, "out of memory for the expert table");
    for (size_t i = 0; i < cells; i++)
        s->slot_of[i] = -1;
    return 0;
}

static void free_slabs(const backend *be, float *slabs[4])
{
    for (int k = 0; k < 4; k++)
        be->ops->free(be->ctx, slabs[k]);
}

void expert_store_finish(expert_store *s)
{
    if (!s->be)
        return;
    float *slabs[4] = {s->params, s->grads, s->adam_m, s->adam_v};
    free_slabs(s->be, slabs);
    free(s->slot_of);
    free(s->expert_of);
    memset(s, 0, sizeof *s);
}

/* Moves the held slots, in slot order, into slabs of `capacity` slots:
 * slot numbers are kept when growing and packed when shrinking. */
static int resize(expert_store *s, int capacity)
{
    const backend *be = s->be;
    size_t bytes = (size_t)capacity * s->slot_count * sizeof(float);
    float *fresh[4] = {NULL, NULL, NULL, NULL};
    int *expert_of = malloc((capacity ? (size_t)capacity : 1) *
                            sizeof *expert_of);
    int failed = !expert_of;
    for (int k = 0; k < 4 && !failed; k++)
        failed = (fresh[k] = be->ops->alloc(be->ctx, bytes ? bytes : 1)) ==
                 NULL;
    if (failed) {
        free_slabs(be, fresh);
        free(expert_of);
        return -1;
    }
    float *old[4] = {s->params, s->grads, s->adam_m, s->adam_v};
    int packed = capacity < s->capacity;
    int to = 0;
    for (int from = 0; from < s->capacity; from++) {
        int x = s->expert_of[from];
        if (packed && x < 0)
            continue;
        int slot = packed ? to++ : from;
        expert_of[slot] = x;
        if (x < 0)
            continue;
        s->slot_of[x] = slot;
        for (int k = 0; k < 4; k++)
            memcpy(fresh[k] + (size_t)slot * s->slot_count,
                   old[k] + (size_t)from * s->slot_count,
                   s->slot_count * sizeof(float));
    }
    for (int slot = packed ? to : s->capacity; slot < capacity; slot++)
        expert_of[slot] = -1;
    free_slabs(be, old);
    free(s->expert_of);
    s->params = fresh[0];
    s->grads = fresh[1];
    s->adam_m = fresh[2];
    s->adam_v = fresh[3];
    s->expert_of = expert_of;
    s->capacity = capacity;
    return 0;
}

int expert_store_reserve(expert_store *s, int count)
{
    return count > s->capacity ? resize(s, count) : 0;
}

int expert_store_hold(expert_store *s, int l, int e)
{
    size_t x = (size_t)l * s->experts + e;
    if (s->slot_of[x] >= 0)
        return s->slot_of[x];
    if (s->held == s->capacity &&
        resize(s, s->capacity + s->capacity / 8 + 1) < 0)
        return -1;
    int slot = 0;
    while (s->expert_of[slot] >= 0)
        slot++;
    s->expert_of[slot] = (int)x;
    s->slot_of[x] = slot;
    s->held++;
    float *slabs[4] = {s->params, s->grads, s->adam_m, s->adam_v};
    for (int k = 0; k < 4; k++)
        memset(slabs[k] + (size_t)slot * s->slot_count, 0,
               s->slot_count * sizeof(float));
    return slot;
}

void expert_store_release(expert_store *s, int l, int e)
{
    size_t x = (size_t)l * s->experts + e;
    int slot = s->slot_of[x];
    if (slot < 0)
        return;
    s->expert_of[slot] = -1;
    s->slot_of[x] = -1;
    s->held--;
}

int expert_store_trim(expert_store *s)
{
    return s->held < s->capacity ? resize(s, s->held) : 0;
}
