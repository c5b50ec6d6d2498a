#include "engine/moe/expert_parallel.h"
#include "engine/core/clock.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>


/* What one layer keeps from forward to backward. Slots are global (as a
 * one-rank run numbers them); "outgoing" are the slots of this rank's
 * tokens, ordered by (destination rank, slot); "mine" are the slots of
 * this rank's experts, in slot order. */
typedef struct ep_layer {
    router_dispatch dispatch; /* global, identical on every rank */
    int *outgoing_slot;       /* (N_local*K) */
    int *outgoing_token;      /* (N_local*K) local token of each */
    int *position_of;         /* (N_local*K) assignment -> outgoing index, -1 */
    int outgoing;
    int *send_rows;           /* (world) outgoing rows per destination */
    int *recv_rows;           /* (world) incoming rows per source */
    int *recv_position;       /* (N*K) my i-th slot's row in the receive order */
    int mine;                 /* slots of my experts */
    int *group_rows;          /* (E) rows per expert here: 0 if not mine */
    float *returned;          /* (N_local*K, C) expert outputs, outgoing order */
    float *expert_in;         /* (N*K, C) my slots' inputs */
    float *expert_h13;        /* (N*K, 2F) */
    float *expert_h;          /* (N*K, F) */
    float *expert_out;        /* (N*K, C) */
} ep_layer;

struct expert_parallel {
    expert_parallel_setup setup;
    const comm *c;
    int N_local, N_total; /* tokens */
    ep_layer *layers;
    int *global_index;    /* (N_total*K) scratch */
    int *scratch;         /* (2E) dispatch scratch */
    int *order;           /* (N_total*K) scratch */
    int *dest;            /* (N_total*K) rank of each slot */
    int *rank_start;      /* (world) plan scratch: first row per rank */
    int *rank_fill;       /* (world) rows placed per rank so far */
    float *send;          /* (N_total*K, max(C, 2F)) staging */
    float *recv;          /* same */
    float *d_expert_out, *d_expert_h, *d_expert_h13, *d_expert_in; /* (N*K, ·) */
    float *d_returned;    /* (N_local*K, C) */
    long rows;
    double alltoall_s;
};

/* Zeroed memory of the model's backend: the ops address these buffers,
 * and MPI reads and writes them from the host. */
static void *take(const backend *be, size_t bytes, int *failed)
{
    void *p = be->ops->alloc(be->ctx, bytes ? bytes : 1);
    if (!p)
        *failed = 1;
    else
        memset(p, 0, bytes ? bytes : 1);
    return p;
}

static void give_back(const backend *be, void *p)
{
    be->ops->free(be->ctx, p);
}

/* The buffers of one layer, kept from its forward to its backward. */
static void layer_take(expert_parallel *ep, ep_layer *y, int *failed)
{
    const expert_parallel_setup *d = &ep->setup;
    const backend *be = d->be;
    const comm *c = ep->c;
    size_t NK = (size_t)ep->N_total * d->top_k;
    size_t local_NK = (size_t)ep->N_local * d->top_k;
    size_t C = (size_t)d->d_model, F = (size_t)d->expert_hidden;
    y->dispatch.group_rows = take(be, (size_t)d->experts * sizeof(int), failed);
    y->dispatch.selected = take(be, (size_t)d->experts * sizeof(int), failed);
    y->dispatch.token_of_slot = take(be, NK * sizeof(int), failed);
    y->dispatch.slot_of = take(be, NK * sizeof(int), failed);
    y->dispatch.scratch = ep->scratch;
    y->outgoing_slot = take(be, local_NK * sizeof(int), failed);
    y->outgoing_token = take(be, local_NK * sizeof(int), failed);
    y->position_of = take(be, local_NK * sizeof(int), failed);
    y->send_rows = take(be, (size_t)c->world * sizeof(int), failed);
    y->recv_rows = take(be, (size_t)c->world * sizeof(int), failed);
    y->recv_position = take(be, NK * sizeof(int), failed);
    y->group_rows = take(be, (size_t)d->experts * sizeof(int), failed);
    y->returned = take(be, local_NK * C * sizeof(float), failed);
    y->expert_in = take(be, NK * C * sizeof(float), failed);
    y->expert_h13 = take(be, NK * 2 * F * sizeof(float), failed);
    y->expert_h = take(be, NK * F * sizeof(float), failed);
    y->expert_out = take(be, NK * C * sizeof(float), failed);
}

int expert_parallel_create(expert_parallel **out,
                           const expert_parallel_setup *setup,
                           moe_error *err)
{
    expert_parallel *ep = calloc(1, sizeof *ep);
    if (!ep)
        return error_set(err, "out of memory");
    ep->setup = *setup;
    const expert_parallel_setup *d = &ep->setup;
    const backend *be = d->be;
    const comm *c = d->comm;
    ep->c = c;
    ep->N_local = d->local_tokens;
    ep->N_total = ep->N_local * c->world;
    size_t NK = (size_t)ep->N_total * d->top_k;
    size_t local_NK = (size_t)ep->N_local * d->top_k;
    size_t C = (size_t)d->d_model, F = (size_t)d->expert_hidden;
    size_t widest = C > 2 * F ? C : 2 * F;
    int failed = 0;
    ep->layers = calloc((size_t)d->layers, sizeof *ep->layers);
    failed = !ep->layers;
    ep->global_index = take(be, NK * sizeof(int), &failed);
    ep->scratch = take(be, (size_t)2 * d->experts * sizeof(int), &failed);
    ep->order = take(be, NK * sizeof(int), &failed);
    ep->dest = take(be, NK * sizeof(int), &failed);
    ep->rank_start = take(be, (size_t)c->world * sizeof(int), &failed);
    ep->rank_fill = take(be, (size_t)c->world * sizeof(int), &failed);
    ep->send = take(be, NK * widest * sizeof(float), &failed);
    ep->recv = take(be, NK * widest * sizeof(float), &failed);
    ep->d_expert_out = take(be, NK * C * sizeof(float), &failed);
    ep->d_expert_h = take(be, NK * F * sizeof(float), &failed);
    ep->d_expert_h13 = take(be, NK * 2 * F * sizeof(float), &failed);
    ep->d_expert_in = take(be, NK * C * sizeof(float), &failed);
    ep->d_returned = take(be, local_NK * C * sizeof(float), &failed);
    for (int l = 0; !failed && l < d->layers; l++)
        layer_take(ep, &ep->layers[l], &failed);
    if (failed) {
        expert_parallel_destroy(ep);
        return error_set(err, "out of memory for expert-parallel buffers");
    }
    *out = ep;
    return 0;
}

void expert_parallel_destroy(expert_parallel *ep)
{
    if (!ep)
        return;
    const backend *be = ep->setup.be;
    for (int l = 0; ep->layers && l < ep->setup.layers; l++) {
        ep_layer *y = &ep->layers[l];
        give_back(be, y->dispatch.group_rows);
        give_back(be, y->dispatch.selected);
        give_back(be, y->dispatch.token_of_slot);
        give_back(be, y->dispatch.slot_of);
        give_back(be, y->outgoing_slot);
        give_back(be, y->outgoing_token);
        give_back(be, y->position_of);
        give_back(be, y->send_rows);
        give_back(be, y->recv_rows);
        give_back(be, y->recv_position);
        give_back(be, y->group_rows);
        give_back(be, y->returned);
        give_back(be, y->expert_in);
        give_back(be, y->expert_h13);
        give_back(be, y->expert_h);
        give_back(be, y->expert_out);
    }
    free(ep->layers);
    give_back(be, ep->global_index);
    give_back(be, ep->scratch);
    give_back(be, ep->order);
    give_back(be, ep->dest);
    give_back(be, ep->rank_start);
    give_back(be, ep->rank_fill);
    give_back(be, ep->send);
    give_back(be, ep->recv);
    give_back(be, ep->d_expert_out);
    give_back(be, ep->d_expert_h);
    give_back(be, ep->d_expert_h13);
    give_back(be, ep->d_expert_in);
    give_back(be, ep->d_returned);
    free(ep);
}

/* Expert of every slot, from the dispatch's group sizes. */
static void slot_experts(const router_dispatch *rd, int E, int *expert_of)
{
    int s = 0;
    for (int e = 0; e < E; e++)
        for (int i = 0; i < rd->group_rows[e]; i++)
            expert_of[s++] = e;
}

/* Rank of every slot: an expert's rows go to its holders in rank order,
 * rank r taking rows [n·cum(r-1), n·cum(r)) of its n (cum: the shares of
 * ranks up to r, as a fraction). Unsplit, all go to the expert's rank. */
static void slot_ranks(const placement *p, int l, const router_dispatch *rd,
                       int world, int *dest)
{
    int s = 0;
    for (int e = 0; e < p->experts; e++) {
        long n = rd->group_rows[e];
        long cum = 0, begin = 0;
        for (int r = 0; r < world; r++) {
            int share = placement_share(p, l, e, r);
            if (!share)
                continue;
            cum += share;
            long end = n * cum / PLACEMENT_SHARE_UNITS;
            for (long i = begin; i < end; i++)
                dest[s + i] = r;
            begin = end;
        }
        s += (int)n;
    }
}

/* Builds the layer's global dispatch and the send/receive plan. */
static void plan_layer(expert_parallel *ep, int l, const int *expert_index)
{
    const expert_parallel_setup *d = &ep->setup;
    const comm *c = ep->c;
    ep_layer *y = &ep->layers[l];
    const int K = d->top_k, E = d->experts, world = c->world;
    int first_token = c->rank * ep->N_local;

    d->before_exchange(d->model);
    comm_allgather_int(c, expert_index, ep->N_local * K, ep->global_index);
    router_build_dispatch(&y->dispatch, ep->global_index, ep->N_total, K, E,
                          router_capacity(d->capacity_factor, ep->N_total, K,
                                          E));
    int *expert_of = ep->order;
    slot_experts(&y->dispatch, E, expert_of);
    int *dest = ep->dest;
    slot_ranks(d->placement, l, &y->dispatch, world, dest);

    /* Outgoing: slots of my tokens, by destination then slot. */
    memset(y->send_rows, 0, (size_t)world * sizeof(int));
    for (int s = 0; s < y->dispatch.slots; s++) {
        int t = y->dispatch.token_of_slot[s];
        if (t >= first_token && t < first_token + ep->N_local)
            y->send_rows[dest[s]]++;
    }
    int *start = ep->rank_start, *fill = ep->rank_fill;
    int at = 0;
    for (int r = 0; r < world; r++) {
        start[r] = at;
        fill[r] = 0;
        at += y->send_rows[r];
    }
    y->outgoing = at;
    for (int i = 0; i < ep->N_local * K; i++)
        y->position_of[i] = -1;
    for (int s = 0; s < y->dispatch.slots; s++) {
        int t = y->dispatch.token_of_slot[s];
        if (t < first_token || t >= first_token + ep->N_local)
            continue;
        int pos = start[dest[s]] + fill[dest[s]]++;
        y->outgoing_slot[pos] = s;
        y->outgoing_token[pos] = t - first_token;
    }
    /* Assignment -> outgoing position, for combining returned rows. */
    for (int pos = 0; pos < y->outgoing; pos++) {
        int s = y->outgoing_slot[pos];
        int t = y->dispatch.token_of_slot[s] - first_token;
        for (int k = 0; k < K; k++)
            if (y->dispatch.slot_of[(size_t)(t + first_token) * K + k] == s)
                y->position_of[(size_t)t * K + k] = pos;
    }

    /* Mine: slots of my experts in slot order; their rows arrive grouped
     * by source rank (the token's rank), each source in slot order. */
    memset(y->recv_rows, 0, (size_t)world * sizeof(int));
    y->mine = 0;
    memset(y->group_rows, 0, (size_t)E * sizeof(int));
    for (int s = 0; s < y->dispatch.slots; s++)
        if (dest[s] == c->rank) {
            y->group_rows[expert_of[s]]++;
            y->recv_rows[y->dispatch.token_of_slot[s] / ep->N_local]++;
        }
    at = 0;
    for (int r = 0; r < world; r++) {
        start[r] = at;
        fill[r] = 0;
        at += y->recv_rows[r];
    }
    for (int s = 0; s < y->dispatch.slots; s++) {
        if (dest[s] != c->rank)
            continue;
        int source = y->dispatch.token_of_slot[s] / ep->N_local;
        y->recv_position[y->mine++] = start[source] + fill[source]++;
    }
}

/* Rows in `from` (receive order) to my slot order in `to`, or back. */
static void gather_rows(float *to, const float *from, const int *position,
                        int count, int row)
{
    for (int i = 0; i < count; i++)
        memcpy(to + (size_t)i * row, from + (size_t)position[i] * row,
               (size_t)row * sizeof(float));
}

static void scatter_rows(float *to, const float *from, const int *position,
                         int count, int row)
{
    for (int i = 0; i < count; i++)
        memcpy(to + (size_t)position[i] * row, from + (size_t)i * row,
               (size_t)row * sizeof(float));
}

static void alltoall(expert_parallel *ep, const float *send,
                     const int *send_rows, float *recv, const int *recv_rows,
                     int row)
{
    ep->setup.before_exchange(ep->setup.model);
    double start = clock_monotonic_s();
    comm_alltoallv_rows(ep->c, send, send_rows, recv, recv_rows, row);
    ep->alltoall_s += clock_monotonic_s() - start;
}

void expert_parallel_forward(expert_parallel *ep, int l,
                             const float *norm_out, const int *expert_index,
                             const float *gate, float *out)
{
    const expert_parallel_setup *d = &ep->setup;
    const backend_ops *ops = d->be->ops;
    void *ctx = d->be->ctx;
    const int C = d->d_model, F = d->expert_hidden, E = d->experts,
              K = d->top_k;
    ep_layer *y = &ep->layers[l];

    if (l == 0)
        ep->rows = 0;
    plan_layer(ep, l, expert_index);
    d->lap(d->model, EXPERT_PARALLEL_ROUTER, 0);
    ops->moe_permute(ctx, ep->send, norm_out, y->outgoing_token, y->outgoing,
                     C);
    alltoall(ep, ep->send, y->send_rows, ep->recv, y->recv_rows, C);
    gather_rows(y->expert_in, ep->recv, y->recv_position, y->mine, C);
    d->lap(d->model, EXPERT_PARALLEL_PERMUTE, 0);

    expert_parallel_weights w = d->weights(d->model, l);
    ops->grouped_matmul_forward(ctx, y->expert_h13, y->expert_in, w.w13,
                                y->group_rows, E, C, 2 * F);
    ops->swiglu_forward(ctx, y->expert_h, y->expert_h13, y->mine, F);
    ops->grouped_matmul_forward(ctx, y->expert_out, y->expert_h, w.w2,
                                y->group_rows, E, F, C);
    ep->rows += y->mine;
    d->lap(d->model, EXPERT_PARALLEL_EXPERTS, 0);

    scatter_rows(ep->send, y->expert_out, y->recv_position, y->mine, C);
    alltoall(ep, ep->send, y->recv_rows, y->returned, y->send_rows, C);
    ops->moe_unpermute(ctx, out, y->returned, y->position_of, gate,
                       ep->N_local, K, C);
}

void expert_parallel_backward(expert_parallel *ep, int l, const float *dout,
                              const float *gate, float *dnorm_out,
                              float *dgate)
{
    const expert_parallel_setup *d = &ep->setup;
    const backend_ops *ops = d->be->ops;
    void *ctx = d->be->ctx;
    const int C = d->d_model, F = d->expert_hidden, E = d->experts,
              K = d->top_k;
    ep_layer *y = &ep->layers[l];

    memset(ep->d_returned, 0, (size_t)y->outgoing * C * sizeof(float));
    ops->moe_unpermute_backward(ctx, ep->d_returned, dgate, dout, y->returned,
                                y->position_of, gate, ep->N_local, K, C);
    alltoall(ep, ep->d_returned, y->send_rows, ep->recv, y->recv_rows, C);
    gather_rows(ep->d_expert_out, ep->recv, y->recv_position, y->mine, C);
    d->lap(d->model, EXPERT_PARALLEL_PERMUTE, 1);

    expert_parallel_weights w = d->weights(d->model, l);
    ops->grouped_matmul_backward(ctx, ep->d_expert_h, w.dw2, ep->d_expert_out,
                                 y->expert_h, w.w2, y->group_rows, E, F, C);
    ops->swiglu_backward(ctx, ep->d_expert_h13, ep->d_expert_h, y->expert_h13,
                         y->mine, F);
    ops->grouped_matmul_backward(ctx, ep->d_expert_in, w.dw13,
                                 ep->d_expert_h13, y->expert_in, w.w13,
                                 y->group_rows, E, C, 2 * F);
    d->lap(d->model, EXPERT_PARALLEL_EXPERTS, 1);

    scatter_rows(ep->send, ep->d_expert_in, y->recv_position, y->mine, C);
    alltoall(ep, ep->send, y->recv_rows, ep->recv, y->send_rows, C);
    /* Add each token's rows back in global slot order, as one rank does:
     * outgoing is ordered by destination first, so reorder. */
    int *position_of_slot = ep->order;
    for (int s = 0; s < y->dispatch.slots; s++)
        position_of_slot[s] = -1;
    for (int pos = 0; pos < y->outgoing; pos++)
        position_of_slot[y->outgoing_slot[pos]] = pos;
    for (int s = 0; s < y->dispatch.slots; s++) {
        int pos = position_of_slot[s];
        if (pos < 0)
            continue;
        const float *row = ep->recv + (size_t)pos * C;
        float *dst = dnorm_out + (size_t)y->outgoing_token[pos] * C;
        for (int j = 0; j < C; j++)
            dst[j] += row[j];
    }
}

const router_dispatch *expert_parallel_dispatch(const expert_parallel *ep,
                                               int l)
{
    return &ep->layers[l].dispatch;
}

long expert_parallel_rows(const expert_parallel *ep)
{
    return ep->rows;
}

double expert_parallel_peek_alltoall_s(const expert_parallel *ep)
{
    return ep->alltoall_s;
}

double expert_parallel_take_alltoall_s(expert_parallel *ep)
{
    double s = ep->alltoall_s;
    ep->alltoall_s = 0;
    return s;
}
