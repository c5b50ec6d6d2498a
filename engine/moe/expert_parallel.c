#include "engine/moe/expert_parallel.h"
#include "engine/core/clock.h"

#include <stdio.h>
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
    float *expert_in;         /* (rows, C) my slots' inputs; rows: capacity */
    float *expert_h13;        /* (rows, 2F) */
    float *expert_h;          /* (rows, F) */
    float *expert_out;        /* (rows, C) */
} ep_layer;

/* Buffers sized in rows, grown together: each layer's activations, then
 * the shared gradients, then the all-to-all staging. */
enum { EP_GROUP_BUFFERS = 4 };
typedef struct ep_group {
    float **buffer[EP_GROUP_BUFFERS];
    size_t width[EP_GROUP_BUFFERS]; /* floats per row */
    int count;
} ep_group;

struct expert_parallel {
    expert_parallel_setup setup;
    const comm *c;
    int N_local, N_total; /* tokens */
    int *token_start;     /* (world + 1) first global token of each rank */
    int *rank_of_token;   /* (N_total) the rank whose batch holds it */
    int *gather_counts;   /* (world) choices each rank shares: tokens·K */
    int *gather_displs;   /* (world) where they go */
    ep_layer *layers;
    int *global_index;    /* (N_total*K) scratch */
    int *scratch;         /* (2E) dispatch scratch */
    int *order;           /* (N_total*K) scratch */
    int *dest;            /* (N_total*K) rank of each slot */
    int *rank_start;      /* (world) plan scratch: first row per rank */
    int *rank_fill;       /* (world) rows placed per rank so far */
    int *mine_of;         /* (world) rows of each rank's experts, this layer */
    int *outgoing_of;     /* (world) rows of each rank's tokens, this layer */
    /* Every rank's capacity in rows, kept identically on every rank, so
     * that all know when any grows: group g of rank r at [g*world + r],
     * g = layer l (l < L), the gradients (L), the staging (L+1). */
    int *capacity;        /* (L+2, world) */
    int *proposed;        /* (3, world) layer, gradients, staging */
    float *send;          /* (staging rows, C) */
    float *recv;          /* same */
    float *d_expert_out, *d_expert_h, *d_expert_h13, *d_expert_in; /* (rows, ·) */
    float *d_returned;    /* (N_local*K, C) */
    size_t fixed_activation_bytes, metadata_bytes; /* not grown */
    long rows;
    double alltoall_s;
    int failed;           /* the same on every rank */
    char failure[256];
};

/* Zeroed memory of the model's backend: the ops address these buffers,
 * and MPI reads and writes them from the host. `held` (or NULL) counts
 * the bytes taken. */
static void *take(const backend *be, size_t bytes, size_t *held, int *failed)
{
    void *p = be->ops->alloc(be->ctx, bytes ? bytes : 1);
    if (!p) {
        *failed = 1;
        return NULL;
    }
    memset(p, 0, bytes ? bytes : 1);
    if (held)
        *held += bytes;
    return p;
}

static void give_back(const backend *be, void *p)
{
    if (p)
        be->ops->free(be->ctx, p);
}

/* Floats per row of each buffer of group g (see ep_group); returns how
 * many buffers it has. */
static int group_widths(const expert_parallel *ep, int g, size_t *width)
{
    size_t C = (size_t)ep->setup.d_model, F = (size_t)ep->setup.expert_hidden;
    if (g > ep->setup.layers) {
        width[0] = width[1] = C; /* every all-to-all moves rows of C */
        return 2;
    }
    width[0] = C, width[1] = 2 * F, width[2] = F, width[3] = C;
    if (g == ep->setup.layers)
        width[1] = F, width[2] = 2 * F;
    return 4;
}

static size_t group_row_bytes(const expert_parallel *ep, int g)
{
    size_t width[EP_GROUP_BUFFERS], bytes = 0;
    int count = group_widths(ep, g, width);
    for (int i = 0; i < count; i++)
        bytes += width[i] * sizeof(float);
    return bytes;
}

static ep_group group_of(expert_parallel *ep, int g)
{
    ep_group out = {0};
    out.count = group_widths(ep, g, out.width);
    float **buffer[EP_GROUP_BUFFERS] = {&ep->send, &ep->recv};
    if (g < ep->setup.layers) {
        ep_layer *y = &ep->layers[g];
        buffer[0] = &y->expert_in, buffer[1] = &y->expert_h13;
        buffer[2] = &y->expert_h, buffer[3] = &y->expert_out;
    } else if (g == ep->setup.layers) {
        buffer[0] = &ep->d_expert_out, buffer[1] = &ep->d_expert_h;
        buffer[2] = &ep->d_expert_h13, buffer[3] = &ep->d_expert_in;
    }
    memcpy(out.buffer, buffer, sizeof buffer);
    return out;
}

/* Fresh buffers of `rows` rows for g: all of them, or none and -1. */
static int group_take(const backend *be, const ep_group *g, int rows,
                      float **fresh)
{
    int failed = 0;
    for (int i = 0; i < g->count; i++)
        fresh[i] = take(be, (size_t)rows * g->width[i] * sizeof(float), NULL,
                        &failed);
    if (!failed)
        return 0;
    for (int i = 0; i < g->count; i++) {
        give_back(be, fresh[i]);
        fresh[i] = NULL;
    }
    return -1;
}

/* Puts g's fresh buffers in place of its old ones (no copy: what they
 * hold is written before it is read). */
static void group_swap(const backend *be, const ep_group *g, float **fresh)
{
    for (int i = 0; i < g->count; i++) {
        give_back(be, *g->buffer[i]);
        *g->buffer[i] = fresh[i];
    }
}

/* The buffers of one layer, kept from its forward to its backward, but
 * for its activations (grown with the rows routed here). */
static void layer_take(expert_parallel *ep, ep_layer *y, int *failed)
{
    const expert_parallel_setup *d = &ep->setup;
    const backend *be = d->be;
    const comm *c = ep->c;
    size_t NK = (size_t)ep->N_total * d->top_k;
    size_t local_NK = (size_t)ep->N_local * d->top_k;
    size_t C = (size_t)d->d_model, E = (size_t)d->experts;
    size_t *meta = &ep->metadata_bytes;
    y->dispatch.group_rows = take(be, E * sizeof(int), meta, failed);
    y->dispatch.selected = take(be, E * sizeof(int), meta, failed);
    y->dispatch.token_of_slot = take(be, NK * sizeof(int), meta, failed);
    y->dispatch.slot_of = take(be, NK * sizeof(int), meta, failed);
    y->dispatch.scratch = ep->scratch;
    y->outgoing_slot = take(be, local_NK * sizeof(int), meta, failed);
    y->outgoing_token = take(be, local_NK * sizeof(int), meta, failed);
    y->position_of = take(be, local_NK * sizeof(int), meta, failed);
    y->send_rows = take(be, (size_t)c->world * sizeof(int), meta, failed);
    y->recv_rows = take(be, (size_t)c->world * sizeof(int), meta, failed);
    y->recv_position = take(be, NK * sizeof(int), meta, failed);
    y->group_rows = take(be, E * sizeof(int), meta, failed);
    y->returned = take(be, local_NK * C * sizeof(float),
                       &ep->fixed_activation_bytes, failed);
}

/* Tokens of rank r's share of the batch. */
static int tokens_of(const expert_parallel *ep, int r)
{
    return ep->token_start[r + 1] - ep->token_start[r];
}

/* Every grown group at each rank's own rows, tokens·K, on every rank. */
static void groups_take(expert_parallel *ep, int *failed)
{
    const int world = ep->c->world, K = ep->setup.top_k;
    const int rows = ep->N_local * K;
    for (int g = 0; !*failed && g < ep->setup.layers + 2; g++) {
        ep_group group = group_of(ep, g);
        float *fresh[EP_GROUP_BUFFERS] = {0};
        *failed = group_take(ep->setup.be, &group, rows, fresh) < 0;
        if (!*failed)
            group_swap(ep->setup.be, &group, fresh);
        for (int r = 0; r < world; r++)
            ep->capacity[g * world + r] = tokens_of(ep, r) * K;
    }
}

/* Where each rank's tokens start, which rank holds each token, and the
 * all-gather's counts. */
static void layout_tokens(expert_parallel *ep, const int *rank_tokens,
                          int *failed)
{
    const int world = ep->c->world, K = ep->setup.top_k;
    const backend *be = ep->setup.be;
    size_t *meta = &ep->metadata_bytes;
    ep->token_start = take(be, (size_t)(world + 1) * sizeof(int), meta,
                           failed);
    ep->gather_counts = take(be, (size_t)world * sizeof(int), meta, failed);
    ep->gather_displs = take(be, (size_t)world * sizeof(int), meta, failed);
    if (*failed)
        return;
    ep->token_start[0] = 0;
    for (int r = 0; r < world; r++) {
        ep->token_start[r + 1] = ep->token_start[r] + rank_tokens[r];
        ep->gather_counts[r] = rank_tokens[r] * K;
        ep->gather_displs[r] = ep->token_start[r] * K;
    }
    ep->N_local = tokens_of(ep, ep->c->rank);
    ep->N_total = ep->token_start[world];
    ep->rank_of_token = take(be, (size_t)ep->N_total * sizeof(int), meta,
                             failed);
    for (int r = 0; !*failed && r < world; r++)
        for (int t = ep->token_start[r]; t < ep->token_start[r + 1]; t++)
            ep->rank_of_token[t] = r;
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
    ep->setup.rank_tokens = NULL; /* the caller's; token_start keeps them */
    int failed = 0;
    layout_tokens(ep, setup->rank_tokens, &failed);
    size_t NK = (size_t)ep->N_total * d->top_k;
    size_t local_NK = (size_t)ep->N_local * d->top_k;
    size_t C = (size_t)d->d_model, W = (size_t)c->world;
    size_t *meta = &ep->metadata_bytes;
    ep->layers = calloc((size_t)d->layers, sizeof *ep->layers);
    failed |= !ep->layers;
    ep->global_index = take(be, NK * sizeof(int), meta, &failed);
    ep->scratch = take(be, (size_t)2 * d->experts * sizeof(int), meta, &failed);
    ep->order = take(be, NK * sizeof(int), meta, &failed);
    ep->dest = take(be, NK * sizeof(int), meta, &failed);
    ep->rank_start = take(be, W * sizeof(int), meta, &failed);
    ep->rank_fill = take(be, W * sizeof(int), meta, &failed);
    ep->mine_of = take(be, W * sizeof(int), meta, &failed);
    ep->outgoing_of = take(be, W * sizeof(int), meta, &failed);
    ep->capacity = take(be, (size_t)(d->layers + 2) * W * sizeof(int), meta,
                        &failed);
    ep->proposed = take(be, 3 * W * sizeof(int), meta, &failed);
    ep->d_returned = take(be, local_NK * C * sizeof(float),
                          &ep->fixed_activation_bytes, &failed);
    for (int l = 0; !failed && l < d->layers; l++)
        layer_take(ep, &ep->layers[l], &failed);
    groups_take(ep, &failed);
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
    }
    for (int g = ep->layers ? 0 : ep->setup.layers; g < ep->setup.layers + 2;
         g++) {
        ep_group group = group_of(ep, g);
        for (int i = 0; i < group.count; i++)
            give_back(be, *group.buffer[i]);
    }
    free(ep->layers);
    give_back(be, ep->global_index);
    give_back(be, ep->scratch);
    give_back(be, ep->order);
    give_back(be, ep->dest);
    give_back(be, ep->rank_start);
    give_back(be, ep->rank_fill);
    give_back(be, ep->mine_of);
    give_back(be, ep->outgoing_of);
    give_back(be, ep->capacity);
    give_back(be, ep->proposed);
    give_back(be, ep->d_returned);
    give_back(be, ep->token_start);
    give_back(be, ep->rank_of_token);
    give_back(be, ep->gather_counts);
    give_back(be, ep->gather_displs);
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
    int first_token = ep->token_start[c->rank];

    d->before_exchange(d->model);
    /* The routing exchange counts with the all-to-alls: a rank ahead
     * waits here for the others' routers. */
    double began = clock_monotonic_s();
    comm_allgatherv_int(c, expert_index, ep->N_local * K, ep->gather_counts,
                        ep->gather_displs, ep->global_index);
    ep->alltoall_s += clock_monotonic_s() - began;
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
            y->recv_rows[ep->rank_of_token[y->dispatch.token_of_slot[s]]]++;
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
        int source = ep->rank_of_token[y->dispatch.token_of_slot[s]];
        y->recv_position[y->mine++] = start[source] + fill[source]++;
    }
}

/* Most rows rank r's experts can get at layer l: every slot (dropless),
 * or the capacity of each expert it holds (a share of an expert's rows is
 * within the expert's capacity). */
static int rows_cap(const expert_parallel *ep, int l, int r)
{
    const expert_parallel_setup *d = &ep->setup;
    long all = (long)ep->N_total * d->top_k;
    if (d->capacity_factor <= 0.0)
        return (int)all;
    long held = 0;
    for (int e = 0; e < d->experts; e++)
        held += placement_share(d->placement, l, e, r) > 0;
    long cap = held * router_capacity(d->capacity_factor, ep->N_total,
                                      d->top_k, d->experts);
    return (int)(cap < all ? cap : all);
}

/* The growth rule, the same on every rank: a capacity short of `want`
 * rows grows to want + want/4 rounded up to 64 rows, but not past cap. */
static int grown(int have, int want, int cap)
{
    if (want <= have)
        return have;
    long rows = ((long)want + (want + 3) / 4 + 63) / 64 * 64;
    if (rows > cap)
        rows = cap;
    return rows < want ? want : (int)rows;
}

/* Every rank's capacities after layer l (layer, gradients, staging) into
 * `proposed`, from the global dispatch and dest[] every rank has; returns
 * 1 when any rank grows. */
static int propose(expert_parallel *ep, int l)
{
    const ep_layer *y = &ep->layers[l];
    const int world = ep->c->world, L = ep->setup.layers;
    memset(ep->mine_of, 0, (size_t)world * sizeof(int));
    memset(ep->outgoing_of, 0, (size_t)world * sizeof(int));
    for (int s = 0; s < y->dispatch.slots; s++) {
        ep->mine_of[ep->dest[s]]++;
        ep->outgoing_of[ep->rank_of_token[y->dispatch.token_of_slot[s]]]++;
    }
    int any = 0;
    for (int r = 0; r < world; r++) {
        int cap = rows_cap(ep, l, r);
        int mine = ep->mine_of[r], outgoing = ep->outgoing_of[r];
        const int want[3] = {mine, mine, mine > outgoing ? mine : outgoing};
        const int local = tokens_of(ep, r) * ep->setup.top_k;
        const int caps[3] = {cap, cap, cap > local ? cap : local};
        const int group[3] = {l, L, L + 1};
        for (int i = 0; i < 3; i++) {
            int have = ep->capacity[group[i] * world + r];
            int next = grown(have, want[i], caps[i]);
            ep->proposed[i * world + r] = next;
            any |= next != have;
        }
    }
    return any;
}

/* Marks the layer failed on rank `failed_rank`'s figures, which every
 * rank has, so the message is the same everywhere. */
static void fail(expert_parallel *ep, int l, int failed_rank)
{
    const int world = ep->c->world, L = ep->setup.layers;
    const int group[3] = {l, L, L + 1};
    double bytes = 0;
    for (int i = 0; i < 3; i++) {
        int rows = ep->proposed[i * world + failed_rank];
        if (rows != ep->capacity[group[i] * world + failed_rank])
            bytes += (double)rows * group_row_bytes(ep, group[i]);
    }
    snprintf(ep->failure, sizeof ep->failure,
             "expert parallelism, layer %d: rank %d could not take %.1f MiB "
             "for %d rows (%d routed to its experts, %d from its tokens; "
             "cap %d rows)",
             l, failed_rank, bytes / (1024.0 * 1024.0),
             ep->proposed[failed_rank], ep->mine_of[failed_rank],
             ep->outgoing_of[failed_rank], rows_cap(ep, l, failed_rank));
    ep->failed = 1;
}

/* Grows this rank's buffers for layer l when any rank needs more rows.
 * Only then, on every rank alike, the ranks agree on the outcome: all
 * keep the new sizes or, when a rank could not take its buffers, all keep
 * the old ones and the layer fails. */
static void grow(expert_parallel *ep, int l)
{
    const backend *be = ep->setup.be;
    const int world = ep->c->world, rank = ep->c->rank, L = ep->setup.layers;
    const int group[3] = {l, L, L + 1};
    if (!propose(ep, l))
        return;
    float *fresh[3][EP_GROUP_BUFFERS] = {{0}};
    int failed = 0;
    for (int i = 0; i < 3 && !failed; i++) {
        int rows = ep->proposed[i * world + rank];
        ep_group g = group_of(ep, group[i]);
        if (rows != ep->capacity[group[i] * world + rank])
            failed = group_take(be, &g, rows, fresh[i]) < 0;
    }
    double failed_rank = failed ? rank + 1 : 0; /* the highest, plus one */
    comm_allreduce_max_double(ep->c, &failed_rank, 1);
    for (int i = 0; i < 3; i++) {
        ep_group g = group_of(ep, group[i]);
        if (failed_rank == 0 && fresh[i][0])
            group_swap(be, &g, fresh[i]);
        else
            for (int j = 0; j < g.count; j++)
                give_back(be, fresh[i][j]);
    }
    if (failed_rank != 0) {
        fail(ep, l, (int)failed_rank - 1);
        return;
    }
    for (int i = 0; i < 3; i++)
        for (int r = 0; r < world; r++)
            ep->capacity[group[i] * world + r] = ep->proposed[i * world + r];
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

    if (l == 0) {
        ep->rows = 0;
        ep->failed = 0;
    }
    if (ep->failed) /* on every rank: no exchange for the rest of the step */
        return;
    plan_layer(ep, l, expert_index);
    grow(ep, l);
    if (ep->failed)
        return;
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

    if (ep->failed) { /* on every rank, as in the forward */
        memset(dgate, 0, (size_t)ep->N_local * K * sizeof(float));
        return;
    }
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

const char *expert_parallel_failure(const expert_parallel *ep)
{
    return ep->failed ? ep->failure : NULL;
}

size_t expert_parallel_bytes(const expert_parallel *ep, size_t *activations,
                             size_t *staging)
{
    const int world = ep->c->world, rank = ep->c->rank, L = ep->setup.layers;
    size_t held[2] = {ep->fixed_activation_bytes, ep->metadata_bytes};
    for (int g = 0; g < L + 2; g++)
        held[g == L + 1] += (size_t)ep->capacity[g * world + rank] *
                            group_row_bytes(ep, g);
    if (activations)
        *activations = held[0];
    if (staging)
        *staging = held[1];
    return held[0] + held[1];
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
