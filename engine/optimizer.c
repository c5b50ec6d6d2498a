#include "engine/optimizer.h"

#include <math.h>
#include <stdlib.h>

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

static int is_expert_tensor(int i)
{
    return i == MODEL_TENSOR_expert_w13 || i == MODEL_TENSOR_expert_w2;
}

/* Elements of one expert's slice of an expert tensor. */
static size_t expert_slice(const model *m, int i)
{
    return m->tensors[i].count / ((size_t)m->dims.L * m->dims.E);
}

double optimizer_grad_norm(const model *m)
{
    const backend_ops *ops = m->be->ops;
    if (!m->ep)
        return sqrt(ops->sum_squares(m->be->ctx, m->grad_memory,
                                     m->param_count));
    /* Dense gradients are already summed and identical on every rank;
     * each expert's lives on its rank alone. Per-expert sums are shared
     * (each has exactly one nonzero contribution, so the sum is exact) and
     * added in (layer, expert) order: the norm does not depend on where
     * the experts are. */
    double dense = 0.0;
    size_t experts = (size_t)m->dims.L * m->dims.E;
    double *per_expert = calloc(experts, sizeof *per_expert);
    if (!per_expert)
        return NAN;
    for (int i = 0; i < MODEL_TENSOR_COUNT; i++) {
        const model_tensor_info *t = &m->tensors[i];
        if (!is_expert_tensor(i)) {
            dense += ops->sum_squares(m->be->ctx, m->grad_memory + t->offset,
                                      t->count);
            continue;
        }
        size_t slice = expert_slice(m, i);
        for (size_t x = 0; x < experts; x++)
            if (model_owns_expert(m, (int)(x / m->dims.E),
                                  (int)(x % m->dims.E)))
                per_expert[x] += ops->sum_squares(
                    m->be->ctx, m->grad_memory + t->offset + x * slice, slice);
    }
    comm_allreduce_sum_double(m->comm, per_expert, (int)experts);
    double total = dense;
    for (size_t x = 0; x < experts; x++)
        total += per_expert[x];
    free(per_expert);
    return sqrt(total);
}

static void update(model *m, const optimizer_settings *s, size_t offset,
                   size_t count, int decay, double lr, double scale, int step)
{
    m->be->ops->adamw_update(m->be->ctx, m->param_memory + offset,
                             m->grad_memory + offset,
                             m->adam_m_memory + offset,
                             m->adam_v_memory + offset, count, (float)lr,
                             (float)s->beta1, (float)s->beta2, (float)s->eps,
                             decay ? (float)s->weight_decay : 0.0f,
                             (float)scale, step);
}

void optimizer_reduce_gradients(model *m)
{
    if (!m->ep)
        return;
    for (int i = 0; i < MODEL_TENSOR_COUNT; i++)
        if (!is_expert_tensor(i))
            comm_allreduce_sum_float(m->comm,
                                     m->grad_memory + m->tensors[i].offset,
                                     m->tensors[i].count);
}

double optimizer_step(model *m, const optimizer_settings *s, int step,
                      double lr)
{
    double norm = optimizer_grad_norm(m);
    double scale = 1.0;
    if (s->grad_clip > 0.0 && norm > s->grad_clip)
        scale = s->grad_clip / norm;
    for (int i = 0; i < MODEL_TENSOR_COUNT; i++) {
        const model_tensor_info *t = &m->tensors[i];
        if (t->count == 0)
            continue;
        if (!m->ep || !is_expert_tensor(i)) {
            update(m, s, t->offset, t->count, t->decay, lr, scale, step);
            continue;
        }
        /* Each rank updates only the experts it holds. */
        size_t slice = expert_slice(m, i);
        for (int l = 0; l < m->dims.L; l++)
            for (int e = 0; e < m->dims.E; e++)
                if (model_owns_expert(m, l, e))
                    update(m, s,
                           t->offset + ((size_t)l * m->dims.E + e) * slice,
                           slice, t->decay, lr, scale, step);
    }
    return norm;
}
