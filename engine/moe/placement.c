#include "engine/moe/placement.h"

#include <stdlib.h>
#include <string.h>

int placement_create(placement **out, int layers, int experts, int world,
                     int rank, const int *expert_rank, moe_error *err)
{
    placement *p = calloc(1, sizeof *p);
    size_t cells = (size_t)layers * experts;
    if (!p)
        return error_set(err, "out of memory for the placement table");
    p->layers = layers;
    p->experts = experts;
    p->world = world;
    p->rank = rank;
    p->expert_rank = malloc(cells * sizeof *p->expert_rank);
    p->share = calloc(cells * world, sizeof *p->share);
    if (!p->expert_rank || !p->share) {
        placement_destroy(p);
        return error_set(err, "out of memory for the placement table");
    }
    for (size_t i = 0; i < cells; i++)
        p->expert_rank[i] = expert_rank ? expert_rank[i]
                                        : (int)(i % (size_t)experts) % world;
    for (int l = 0; l < layers; l++)
        for (int e = 0; e < experts; e++)
            placement_unsplit(p, l, e);
    p->version = 1;
    *out = p;
    return 0;
}

void placement_destroy(placement *p)
{
    if (!p)
        return;
    free(p->expert_rank);
    free(p->share);
    free(p);
}

static size_t cell(const placement *p, int l, int e)
{
    return (size_t)l * p->experts + e;
}

int placement_rank_of(const placement *p, int l, int e)
{
    return p->expert_rank[cell(p, l, e)];
}

int placement_owns(const placement *p, int l, int e)
{
    return placement_rank_of(p, l, e) == p->rank;
}

int placement_share(const placement *p, int l, int e, int r)
{
    return p->share[cell(p, l, e) * p->world + r];
}

int placement_holds(const placement *p, int l, int e)
{
    return placement_share(p, l, e, p->rank) > 0;
}

int placement_is_split(const placement *p, int l, int e)
{
    return placement_share(p, l, e, placement_rank_of(p, l, e)) <
           PLACEMENT_SHARE_UNITS;
}

int placement_split_count(const placement *p)
{
    int split = 0;
    for (int l = 0; l < p->layers; l++)
        for (int e = 0; e < p->experts; e++)
            split += placement_is_split(p, l, e);
    return split;
}

int placement_assign(placement *p, int l, int e, int to, const int *share)
{
    int *rank = &p->expert_rank[cell(p, l, e)];
    int *now = p->share + cell(p, l, e) * p->world;
    int changed = *rank != to ||
                  memcmp(now, share, (size_t)p->world * sizeof *share) != 0;
    if (!changed)
        return 0;
    *rank = to;
    memcpy(now, share, (size_t)p->world * sizeof *share);
    p->version++;
    return 1;
}

void placement_unsplit(placement *p, int l, int e)
{
    int *share = p->share + cell(p, l, e) * p->world;
    memset(share, 0, (size_t)p->world * sizeof *share);
    share[placement_rank_of(p, l, e)] = PLACEMENT_SHARE_UNITS;
}

void placement_restore(placement *p, const int *expert_rank)
{
    if (expert_rank) {
        memcpy(p->expert_rank, expert_rank,
               (size_t)p->layers * p->experts * sizeof *expert_rank);
        p->version++;
    }
    for (int l = 0; l < p->layers; l++)
        for (int e = 0; e < p->experts; e++)
            placement_unsplit(p, l, e);
}

int placement_shares_from_weights(int world, int n, const int *ranks,
                                  const int *weights, int *share)
{
    long total = 0, given = 0;
    for (int i = 0; i < n; i++)
        total += weights[i];
    for (int r = 0; r < world; r++)
        share[r] = 0;
    for (int i = 0; i < n; i++) {
        share[ranks[i]] =
            (int)((long)weights[i] * PLACEMENT_SHARE_UNITS / total);
        if (share[ranks[i]] == 0)
            return -1;
        given += share[ranks[i]];
    }
    share[ranks[0]] += (int)(PLACEMENT_SHARE_UNITS - given);
    return 0;
}
