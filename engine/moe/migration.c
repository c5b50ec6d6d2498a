#include "engine/moe/migration.h"

#include "engine/config/config.h"

size_t migration_expert_bytes(const model *m)
{
    return 3 * m->expert_param_count * sizeof(float);
}

/* Ships expert (l, e)'s weights and moments from rank `from` to rank `to`,
 * whose slot is taken already. */
static void transfer(model *m, const comm *c, int l, int e, int from, int to)
{
    if (from == to || (c->rank != from && c->rank != to))
        return;
    const expert_store *st = &m->experts;
    float *slabs[3] = {st->params, st->adam_m, st->adam_v};
    size_t bytes = st->slot_count * sizeof(float);
    for (int k = 0; k < 3; k++) {
        float *slot = expert_store_slot(st, slabs[k], l, e);
        if (c->rank == from)
            comm_send(c, slot, bytes, to);
        else
            comm_recv(c, slot, bytes, from);
    }
}

/* Every rank learns whether any failed (the highest failing rank). */
static int any_failed(const comm *c, int failed)
{
    double worst = failed ? c->rank + 1 : 0;
    if (c->world > 1)
        comm_allreduce_max_double(c, &worst, 1);
    return (int)worst;
}

/* Frees the slots no longer placed here, and gives the memory back once a
 * good part of the store is unused. */
static void release_unplaced(model *m, const placement *p, int l, int e)
{
    if (expert_store_holds(&m->experts, l, e) && !placement_holds(p, l, e))
        model_release_expert(m, l, e);
    const expert_store *st = &m->experts;
    if (st->capacity > st->held + st->held / 4 + 1)
        expert_store_trim(&m->experts); /* failing leaves it as it was */
}

int migration_split_expert(model *m, placement *p, const comm *c, int l,
                           int e, int to, const int *share, size_t *shipped,
                           moe_error *err)
{
    int from = placement_rank_of(p, l, e);
    *shipped = 0;
    /* Replicas are identical: a rank that already holds one needs
     * nothing; one that gains a share takes a slot first, and every rank
     * learns whether all could. */
    int gains = share[c->rank] > 0 && placement_share(p, l, e, c->rank) == 0;
    int failing = any_failed(c, gains && model_hold_expert(m, l, e) < 0);
    if (failing) {
        if (gains)
            model_release_expert(m, l, e);
        return error_set(err, "rank %d is out of memory for expert %d.%d "
                              "(%.1f MiB of state); nothing moved",
                         failing - 1, l, e,
                         (double)model_expert_state_bytes(m) / (1 << 20));
    }
    size_t bytes = 0;
    for (int r = 0; r < p->world; r++)
        if (share[r] > 0 && placement_share(p, l, e, r) == 0) {
            transfer(m, c, l, e, from, r);
            bytes += migration_expert_bytes(m);
        }
    if (!placement_assign(p, l, e, to, share))
        return 0;
    release_unplaced(m, p, l, e);
    *shipped = bytes;
    return 0;
}

int migration_move_expert(model *m, placement *p, const comm *c, int l,
                          int e, int to, size_t *shipped, moe_error *err)
{
    int share[CONFIG_MAX_DEVICES] = {0}; /* a rank per device */
    share[to] = PLACEMENT_SHARE_UNITS;
    return migration_split_expert(m, p, c, l, e, to, share, shipped, err);
}

int migration_hold_placed(model *m, const placement *p, moe_error *err)
{
    int count = 0;
    for (int l = 0; l < p->layers; l++)
        for (int e = 0; e < p->experts; e++) {
            if (placement_holds(p, l, e))
                count++;
            else
                model_release_expert(m, l, e);
        }
    int failed = expert_store_trim(&m->experts) < 0 ||
                 expert_store_reserve(&m->experts, count) < 0;
    for (int l = 0; !failed && l < p->layers; l++)
        for (int e = 0; !failed && e < p->experts; e++)
            if (placement_holds(p, l, e))
                failed = model_hold_expert(m, l, e) < 0;
    if (failed)
        return error_set(err, "rank %d is out of memory for its %d experts "
                              "(%.1f MiB of state)", p->rank, count,
                         (double)count * model_expert_state_bytes(m) /
                             (1 << 20));
    return 0;
}
