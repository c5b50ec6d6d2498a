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
    double *per_expert = m->reduce.expert_squares; /* model_set_comm's */
    memset(per_expert, 0, experts * sizeof *per_expert);
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
    size_t w13 = expert_slice(m, MODEL_TENSOR_expert_w13);
    size_t w2 = expert_slice(m, MODEL_TENSOR_expert_w2);
    size_t count = 0;
    for (int i = 0; i < MODEL_TENSOR_COUNT; i++)
        if (!is_expert_tensor(i))
            count += m->tensors[i].count;
    int split = 0;
    for (int l = 0; l < d->L; l++)
        for (int e = 0; e < d->E; e++)
            split += model_expert_is_split(m, l, e);
    count += (size_t)split * (w13 + w2);
    if (count > m->reduce.capacity && reserve_staging(m, count, err) < 0)
        return -1;
    float *pack = m->reduce.buffer;
    /* Pack, reduce, unpack: the same walk both ways. */
    for (int pass = 0; pass < 2; pass++) {
        size_t at = 0;
        for (int i = 0; i < MODEL_TENSOR_COUNT; i++) {
            const model_tensor_info *t = &m->tensors[i];
            if (is_expert_tensor(i))
                continue;
            float *g = m->grad_memory + t->offset;
            if (pass == 0)
                memcpy(pack + at, g, t->count * sizeof *g);
            else
                memcpy(g, pack + at, t->count * sizeof *g);
            at += t->count;
        }
        for (int l = 0; split && l < d->L; l++)
            for (int e = 0; e < d->E; e++) {
                size_t x = (size_t)l * d->E + e;
                if (!model_expert_is_split(m, l, e))
                    continue;
                float *g13 = m->grad_memory +
                             m->tensors[MODEL_TENSOR_expert_w13].offset +
                             x * w13;
                float *g2 = m->grad_memory +
                            m->tensors[MODEL_TENSOR_expert_w2].offset + x * w2;
                int held = model_holds_expert(m, l, e);
                if (pass == 0 && held) {
                    memcpy(pack + at, g13, w13 * sizeof *g13);
                    memcpy(pack + at + w13, g2, w2 * sizeof *g2);
                } else if (pass == 0) {
                    memset(pack + at, 0, (w13 + w2) * sizeof *pack);
                } else if (held) {
                    memcpy(g13, pack + at, w13 * sizeof *g13);
                    memcpy(g2, pack + at + w13, w2 * sizeof *g2);
                }
                at += w13 + w2;
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
        /* Each rank updates only the experts it holds (a split expert's
         * replicas, each with the summed gradient). */
        size_t slice = expert_slice(m, i);
        for (int l = 0; l < m->dims.L; l++)
            for (int e = 0; e < m->dims.E; e++)
                if (model_holds_expert(m, l, e))
                    update(m, s,
                           t->offset + ((size_t)l * m->dims.E + e) * slice,
                           slice, t->decay, lr, scale, step);
    }
    return norm;
}
