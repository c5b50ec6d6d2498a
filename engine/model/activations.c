#include "engine/model/activations.h"

#include <stdlib.h>
#include <string.h>

int activations_create(model_activations **out, const model_dims *dm,
                       int B, int local_experts, const backend *be,
                       moe_error *err)
{
    const size_t V = (size_t)dm->V, C = (size_t)dm->C, L = (size_t)dm->L,
                 H = (size_t)dm->H, T = (size_t)dm->T, E = (size_t)dm->E,
                 K = (size_t)dm->K, F = (size_t)dm->F, S = (size_t)dm->S;
    const size_t N = (size_t)B * T, SK = local_experts ? N * K : 0;
    (void)V;

    model_activations *a = calloc(1, sizeof *a);
    if (!a)
        return error_set(err, "out of memory for activations");

    size_t floats = 0, ints = 0;
#define X(name, count) floats += (count);
    MODEL_ACTIVATIONS(X)
#undef X
#define X(name, count) ints += (count);
    MODEL_INDICES(X)
#undef X
    /* What the ops address lives in the backend's memory. */
    a->be = be;
    a->expert_slots = SK;
    a->bytes = floats * sizeof(float) + ints * sizeof(int);
    a->float_memory = be->ops->alloc(be->ctx, floats * sizeof(float));
    a->int_memory = be->ops->alloc(be->ctx, ints * sizeof(int));
    a->w13 = malloc(E * sizeof *a->w13);
    a->w2 = malloc(E * sizeof *a->w2);
    a->dw13 = malloc(E * sizeof *a->dw13);
    a->dw2 = malloc(E * sizeof *a->dw2);
    if (!a->float_memory || !a->int_memory || !a->w13 || !a->w2 || !a->dw13 ||
        !a->dw2) {
        be->ops->free(be->ctx, a->float_memory);
        be->ops->free(be->ctx, a->int_memory);
        free(a->w13);
        free(a->w2);
        free(a->dw13);
        free(a->dw2);
        free(a);
        return error_set(err, "out of memory for activations (%.1f MiB)",
                         (double)(floats * 4 + ints * 4) / (1 << 20));
    }
    /* Zeroed once so that probs above the attention diagonal and unused
     * tails hold defined values. */
    memset(a->float_memory, 0, floats * sizeof(float));
    memset(a->int_memory, 0, ints * sizeof(int));

    float *fp = a->float_memory;
    int *ip = a->int_memory;
#define X(name, count) a->name = fp; fp += (count);
    MODEL_ACTIVATIONS(X)
#undef X
#define X(name, count) a->name = ip; ip += (count);
    MODEL_INDICES(X)
#undef X
    *out = a;
    return 0;
}

void activations_destroy(model_activations *a)
{
    if (!a)
        return;
    a->be->ops->free(a->be->ctx, a->float_memory);
    a->be->ops->free(a->be->ctx, a->int_memory);
    free(a->w13);
    free(a->w2);
    free(a->dw13);
    free(a->dw2);
    free(a->routing_scratch);
    free(a);
}

int activations_reserve_routing(model_activations *a, int sequences, int E)
{
    size_t count = (size_t)2 * sequences + (size_t)E;
    double *scratch = realloc(a->routing_scratch, count * sizeof *scratch);
    if (!scratch)
        return -1;
    a->routing_scratch = scratch;
    a->routing_scratch_count = count;
    return 0;
}

void activations_layer(model_activations *a, const model_dims *d, int batch,
                       int l, layer_acts *v)
{
    const size_t rows = (size_t)batch * d->T, SK = a->expert_slots;
    const size_t C = (size_t)d->C, layer = (size_t)l;
    v->x = a->resid + layer * rows * C;
    v->x_next = a->resid + (layer + 1) * rows * C;
    v->x_mid = a->x_mid + layer * rows * C;
    v->attn_norm_out = a->attn_norm_out + layer * rows * C;
    v->attn_rstd = a->attn_rstd + layer * rows;
    v->qkv = a->qkv + layer * rows * 3 * C;
    v->probs = a->att_probs + layer * batch * d->H * d->T * d->T;
    v->att_out = a->att_out + layer * rows * C;
    v->ffn_norm_out = a->ffn_norm_out + layer * rows * C;
    v->ffn_rstd = a->ffn_rstd + layer * rows;
    v->router_logits = a->router_logits + layer * rows * d->E;
    v->router_probs = a->router_probs + layer * rows * d->E;
    v->router_lse = a->router_lse + layer * rows;
    v->gate = a->gate_weight + layer * rows * d->K;
    v->expert_index = a->expert_index + layer * rows * d->K;
    v->expert_in = a->expert_in + layer * SK * C;
    v->expert_h13 = a->expert_h13 + layer * SK * 2 * d->F;
    v->expert_h = a->expert_h + layer * SK * d->F;
    v->expert_out = a->expert_out + layer * SK * C;
    v->shared_h13 = a->shared_h13 + layer * rows * 2 * d->S;
    v->shared_h = a->shared_h + layer * rows * d->S;
    v->rd = NULL;
}
