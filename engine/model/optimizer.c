#include "engine/model/optimizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void optimizer_settings_from_config(optimizer_settings *s, const config *cfg)
{
    s->lr = cfg->train.lr;
    s->min_lr = cfg->train.min_lr;
    s->warmup_steps = cfg->train.warmup_steps;
    s->total_steps = cfg->train.steps;
    s->beta1 = cfg->train.beta1;
    s->beta2 = cfg->train.beta2;
    s->eps = cfg->train.eps;
    s->weight_decay = cfg->train.weight_decay;
    s->grad_clip = cfg->train.grad_clip;
}

double optimizer_lr(const optimizer_settings *s, int step)
{
    if (s->lr_override > 0.0)
        return s->lr_override;
    if (s->warmup_steps > 0 && step <= s->warmup_steps)
        return s->lr * step / s->warmup_steps;
    int decay_steps = s->total_steps - s->warmup_steps;
    if (decay_steps <= 0 || step >= s->total_steps)
        return s->min_lr;
    double progress = (double)(step - s->warmup_steps) / decay_steps;
    double cosine = 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
    return s->min_lr + (s->lr - s->min_lr) * cosine;
}

double optimizer_grad_norm(model *m)
{
    const backend_ops *ops = m->be->ops;
    const expert_store *st = &m->experts;
    /* Dense gradients are already summed and identical on every rank;
     * each expert's lives on its rank alone. Per-expert sums are shared
     * (each has exactly one nonzero contribution, so the sum is exact) and
     * added in (layer, expert) order: the norm does not depend on where
     * the experts are, nor on how many ranks there are. */
    double dense = ops->sum_squares(m->be->ctx, m->grad_memory,
                                    m->dense_count);
    size_t experts = (size_t)m->dims.L * m->dims.E;
    double *per_expert = m->reduce.expert_squares; /* model_set_comm's */
    double lone[1];
    int shared = m->ep != NULL;
    double total = dense;
    for (size_t x = 0; x < experts; x++) {
        int l = (int)(x / m->dims.E), e = (int)(x % m->dims.E);
        double *sum = shared ? &per_expert[x] : lone;
        *sum = 0.0;
        if (model_owns_expert(m, l, e))
            *sum = ops->sum_squares(m->be->ctx,
                                    expert_store_slot(st, st->grads, l, e),
                                    st->slot_count);
        if (!shared)
            total += *sum;
    }
    if (!shared)
        return sqrt(total);
    model_allreduce_sum(m, per_expert, (int)experts);
    for (size_t x = 0; x < experts; x++)
        total += per_expert[x];
    return sqrt(total);
}

/* AdamW on `count` elements at `offset` of the four slabs. */
static void update(model *m, const optimizer_settings *s, float *const slab[4],
                   size_t offset, size_t count, int decay, double lr,
                   double scale, int step)
{
    m->be->ops->adamw_update(m->be->ctx, slab[0] + offset, slab[1] + offset,
                             slab[2] + offset, slab[3] + offset, count,
                             (float)lr,
                             (float)s->beta1, (float)s->beta2, (float)s->eps,
                             decay ? (float)s->weight_decay : 0.0f,
                             (float)scale, step);
}

/* One all-reduce per step for everything ranks share: the dense
 * gradients, and the partial gradients of split experts (each holder
 * computed its share of the expert's rows; the others add zeros, which
 * leave a sum bit for bit as it was). The sum runs in rank order on every
 * rank, so every replica of a split expert takes the same update. */
/* Grows the staging to `count` floats plus the all-reduce's scratch. Every
 * rank grows at the same step (the count follows the placement, the same
 * everywhere), and all learn whether any failed: none is left waiting in
 * the all-reduce. */
static int reserve_staging(model *m, size_t count, moe_error *err)
{
    size_t total = count + comm_allreduce_scratch_count(m->comm, count);
    free(m->reduce.buffer);
    m->reduce.buffer = malloc(total * sizeof *m->reduce.buffer);
    double failed = m->reduce.buffer == NULL;
    comm_allreduce_max_double(m->comm, &failed, 1);
    if (failed) {
        free(m->reduce.buffer);
        m->reduce.buffer = NULL;
        m->reduce.capacity = 0;
        return error_set(err, "out of memory for the gradient all-reduce "
                              "(%.1f MiB a rank): fewer split experts or "
                              "a smaller model need less",
                         (double)total * sizeof(float) / (1 << 20));
    }
    m->reduce.capacity = count;
    return 0;
}

int optimizer_reduce_gradients(model *m, moe_error *err)
{
    if (!m->ep)
        return 0;
    const model_dims *d = &m->dims;
    const expert_store *st = &m->experts;
    size_t slot = st->slot_count;
    int split = 0;
    for (int l = 0; l < d->L; l++)
        for (int e = 0; e < d->E; e++)
            split += model_expert_is_split(m, l, e);
    size_t count = m->dense_count + (size_t)split * slot;
    if (count > m->reduce.capacity && reserve_staging(m, count, err) < 0)
        return -1;
    float *pack = m->reduce.buffer;
    /* Pack, reduce, unpack: the same walk both ways. */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0)
            memcpy(pack, m->grad_memory, m->dense_count * sizeof *pack);
        else
            memcpy(m->grad_memory, pack, m->dense_count * sizeof *pack);
        size_t at = m->dense_count;
        for (int l = 0; split && l < d->L; l++)
            for (int e = 0; e < d->E; e++) {
                if (!model_expert_is_split(m, l, e))
                    continue;
                float *g = expert_store_slot(st, st->grads, l, e);
                if (pass == 0 && g)
                    memcpy(pack + at, g, slot * sizeof *g);
                else if (pass == 0)
                    memset(pack + at, 0, slot * sizeof *pack);
                else if (g)
                    memcpy(g, pack + at, slot * sizeof *g);
                at += slot;
            }
        if (pass == 0)
            comm_allreduce_sum_float(m->comm, pack, count, pack + count);
    }
    return 0;
}

double optimizer_step(model *m, const optimizer_settings *s, int step,
                      double lr)
{
    double norm = optimizer_grad_norm(m);
    optimizer_apply(m, s, step, lr, norm);
    return norm;
}

void optimizer_apply(model *m, const optimizer_settings *s, int step,
                     double lr, double norm)
{
    double scale = 1.0;
    if (s->grad_clip > 0.0 && norm > s->grad_clip)
        scale = s->grad_clip / norm;
    float *const dense[4] = {m->param_memory, m->grad_memory,
                             m->adam_m_memory, m->adam_v_memory};
    for (int i = 0; i < MODEL_TENSOR_COUNT; i++) {
        const model_tensor_info *t = &m->tensors[i];
        if (t->count > 0)
            update(m, s, dense, t->offset, t->count, t->decay, lr, scale,
                   step);
    }
    /* Each rank updates the experts it holds (a split expert's replicas,
     * each with the summed gradient). */
    const expert_store *st = &m->experts;
    float *const experts[4] = {st->params, st->grads, st->adam_m, st->adam_v};
    const size_t C = (size_t)m->dims.C, F = (size_t)m->dims.F;
    for (int slot = 0; slot < st->capacity; slot++) {
        if (st->expert_of[slot] < 0)
            continue;
        size_t offset = (size_t)slot * st->slot_count;
#define X(name, count, init, decay)                                             \
        update(m, s, experts, offset, (count), (decay), lr, scale, step);      \
        offset += (count);
        MODEL_EXPERT_TENSORS(X)
#undef X
    }
}
