#include "engine/moe/sharding.h"

#include <stdlib.h>

#include "engine/moe/expert_parallel.h"
#include "engine/moe/migration.h"

struct sharding {
    model *m;
    const comm *c;
    placement *placement;
    expert_parallel *ep;         /* NULL on one rank */
    model_expert_parallel table; /* what the model calls */
};

/* Hooks of expert parallelism into the model. */
static expert_parallel_weights hook_weights(void *model_ctx, int l)
{
    model_expert_weights w = model_expert_views(model_ctx, l);
    return (expert_parallel_weights){w.w13, w.w2, w.dw13, w.dw2};
}

static void hook_lap(void *model_ctx, enum expert_parallel_part part,
                     int backward)
{
    static const enum model_part parts[] = {
        [EXPERT_PARALLEL_ROUTER] = MODEL_PART_router,
        [EXPERT_PARALLEL_PERMUTE] = MODEL_PART_permute,
        [EXPERT_PARALLEL_EXPERTS] = MODEL_PART_experts,
    };
    model_lap(model_ctx, parts[part], backward);
}

static void hook_before_exchange(void *model_ctx)
{
    model_slowdown_sync(model_ctx);
}

/* The model's table, onto expert parallelism and the placement. */
static void table_forward(void *ctx, int l, const float *norm_out,
                          const int *expert_index, const float *gate,
                          float *out)
{
    sharding *s = ctx;
    expert_parallel_forward(s->ep, l, norm_out, expert_index, gate, out);
}

static void table_backward(void *ctx, int l, const float *dout,
                           const float *gate, float *dnorm_out, float *dgate)
{
    sharding *s = ctx;
    expert_parallel_backward(s->ep, l, dout, gate, dnorm_out, dgate);
}

static const router_dispatch *table_dispatch(const void *ctx, int l)
{
    const sharding *s = ctx;
    return expert_parallel_dispatch(s->ep, l);
}

static double table_exchange_s(const void *ctx)
{
    const sharding *s = ctx;
    return expert_parallel_peek_alltoall_s(s->ep);
}

static int table_residency(const void *ctx, int l, int e)
{
    const sharding *s = ctx;
    return (placement_holds(s->placement, l, e) ? MODEL_EXPERT_HELD : 0) |
           (placement_owns(s->placement, l, e) ? MODEL_EXPERT_OWNED : 0) |
           (placement_is_split(s->placement, l, e) ? MODEL_EXPERT_SPLIT : 0);
}

/* Rank r's tokens (rows[r]·T), this rank's first sequence and the
 * batch's sequences. */
static void layout_rows(const sharding *s, const int *rows, int *tokens,
                        int *first, int *total)
{
    *first = *total = 0;
    for (int r = 0; r < s->c->world; r++) {
        *first += r < s->c->rank ? rows[r] : 0;
        *total += rows[r];
        tokens[r] = rows[r] * s->m->dims.T;
    }
}

/* The expert-parallel layer for rank tokens `tokens`, in s->ep. */
static int make_expert_parallel(sharding *s, const int *tokens,
                                moe_error *err)
{
    const model_dims *d = &s->m->dims;
    expert_parallel_setup setup = {
        .layers = d->L, .experts = d->E, .top_k = d->K,
        .d_model = d->C, .expert_hidden = d->F,
        .rank_tokens = tokens,
        .capacity_factor = s->m->hyper.capacity_factor,
        .be = s->m->be, .comm = s->c, .placement = s->placement,
        .model = s->m, .weights = hook_weights, .lap = hook_lap,
        .before_exchange = hook_before_exchange,
    };
    return expert_parallel_create(&s->ep, &setup, err);
}

int sharding_create(sharding **out, model *m, const comm *c,
                    const int *expert_rank, const int *rows, moe_error *err)
{
    const model_dims *d = &m->dims;
    sharding *s = calloc(1, sizeof *s);
    int *tokens = calloc((size_t)c->world, sizeof *tokens);
    if (!s || !tokens) {
        free(s);
        free(tokens);
        return error_set(err, "out of memory");
    }
    s->m = m;
    s->c = c;
    int first, total;
    layout_rows(s, rows, tokens, &first, &total);
    if (placement_create(&s->placement, d->L, d->E, c->world, c->rank,
                         expert_rank, err) < 0 ||
        model_set_comm(m, c, first, total, err) < 0)
        goto fail;
    if (c->world > 1) {
        if (migration_hold_placed(m, s->placement, err) < 0 ||
            make_expert_parallel(s, tokens, err) < 0)
            goto fail;
        s->table = (model_expert_parallel){
            .ctx = s, .forward = table_forward, .backward = table_backward,
            .dispatch = table_dispatch, .exchange_s = table_exchange_s,
            .residency = table_residency,
        };
        model_set_expert_parallel(m, &s->table);
    }
    free(tokens);
    *out = s;
    return 0;
fail:
    free(tokens);
    sharding_destroy(s);
    return -1;
}

int sharding_set_rows(sharding *s, const int *rows, moe_error *err)
{
    /* Everything the new shares need is taken first; only when every rank
     * has it do they switch (nothing to allocate then). The layer is made
     * again for the new numbering of the tokens. */
    int *tokens = calloc((size_t)s->c->world, sizeof *tokens);
    int first = 0, total = 0;
    int status = tokens ? 0 : error_set(err, "out of memory");
    if (status == 0) {
        layout_rows(s, rows, tokens, &first, &total);
        status = model_reserve_rows(s->m, rows[s->c->rank], err);
    }
    expert_parallel *kept = s->ep;
    if (status == 0 && kept) {
        s->ep = NULL;
        status = make_expert_parallel(s, tokens, err);
    }
    free(tokens);
    if (comm_agree(s->c, status, err) < 0) {
        if (s->ep != kept)
            expert_parallel_destroy(s->ep);
        s->ep = kept;
        return -1;
    }
    if (kept && s->ep != kept)
        expert_parallel_destroy(kept);
    model_set_first_sequence(s->m, first);
    return 0;
}

void sharding_destroy(sharding *s)
{
    if (!s)
        return;
    if (s->ep)
        model_set_expert_parallel(s->m, NULL);
    expert_parallel_destroy(s->ep);
    placement_destroy(s->placement);
    free(s);
}

int sharding_restore(sharding *s, const int *expert_rank, moe_error *err)
{
    placement_restore(s->placement, expert_rank);
    if (!s->ep)
        return 0;
    return comm_agree(s->c, migration_hold_placed(s->m, s->placement, err),
                      err);
}

placement *sharding_placement(sharding *s)
{
    return s->placement;
}

long sharding_rows(const sharding *s)
{
    const model_dims *d = &s->m->dims;
    return s->ep ? expert_parallel_rows(s->ep)
                 : (long)s->m->batch * d->T * d->K;
}

double sharding_take_alltoall_s(sharding *s)
{
    return s->ep ? expert_parallel_take_alltoall_s(s->ep) : 0.0;
}

sharding_memory sharding_memory_bytes(const sharding *s)
{
    sharding_memory bytes = {0, 0};
    if (s->ep)
        expert_parallel_bytes(s->ep, &bytes.activations, &bytes.staging);
    return bytes;
}

const char *sharding_failure(const sharding *s)
{
    return s->ep ? expert_parallel_failure(s->ep) : NULL;
}
