#include "engine/moe/migration.h"

#include "engine/config/config.h"

size_t migration_expert_bytes(const model *m)
{
    size_t experts = (size_t)m->dims.L * m->dims.E;
    size_t slice = m->tensors[MODEL_TENSOR_expert_w13].count / experts +
                   m->tensors[MODEL_TENSOR_expert_w2].count / experts;
    return 3 * slice * sizeof(float);
}

void migration_transfer_expert(model *m, const comm *c, int l, int e,
                               int from, int to)
{
    if (from == to || (c->rank != from && c->rank != to))
        return;
    int ids[2] = {MODEL_TENSOR_expert_w13, MODEL_TENSOR_expert_w2};
    float *slabs[3] = {m->param_memory, m->adam_m_memory, m->adam_v_memory};
    for (int i = 0; i < 2; i++) {
        const model_tensor_info *info = &m->tensors[ids[i]];
        size_t slice = info->count / ((size_t)m->dims.L * m->dims.E);
        size_t offset = info->offset + ((size_t)l * m->dims.E + e) * slice;
        for (int k = 0; k < 3; k++) {
            if (c->rank == from)
                comm_send(c, slabs[k] + offset, slice * sizeof(float), to);
            else
                comm_recv(c, slabs[k] + offset, slice * sizeof(float), from);
        }
    }
}

size_t migration_split_expert(model *m, placement *p, const comm *c, int l,
                              int e, int to, const int *share)
{
    int from = placement_rank_of(p, l, e);
    size_t bytes = 0;
    /* Replicas are identical: a rank that already holds one needs
     * nothing; one that gains a share gets the expert from its rank. */
    for (int r = 0; r < p->world; r++)
        if (share[r] > 0 && placement_share(p, l, e, r) == 0) {
            migration_transfer_expert(m, c, l, e, from, r);
            bytes += migration_expert_bytes(m);
        }
    return placement_assign(p, l, e, to, share) ? bytes : 0;
}

size_t migration_move_expert(model *m, placement *p, const comm *c, int l,
                             int e, int to)
{
    int share[CONFIG_MAX_DEVICES] = {0}; /* a rank per device */
    share[to] = PLACEMENT_SHARE_UNITS;
    return migration_split_expert(m, p, c, l, e, to, share);
}

void migration_gather_experts(model *m, const placement *p, const comm *c,
                              int root)
{
    for (int l = 0; l < p->layers; l++)
        for (int e = 0; e < p->experts; e++)
            migration_transfer_expert(m, c, l, e, placement_rank_of(p, l, e),
                                      root);
}
