#include "engine/optimizer.h"

#include <math.h>

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
    if (s->warmup_steps > 0 && step <= s->warmup_steps)
        return s->lr * step / s->warmup_steps;
    int decay_steps = s->total_steps - s->warmup_steps;
    if (decay_steps <= 0 || step >= s->total_steps)
        return s->min_lr;
    double progress = (double)(step - s->warmup_steps) / decay_steps;
    double cosine = 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
    return s->min_lr + (s->lr - s->min_lr) * cosine;
}

double optimizer_grad_norm(const model *m)
{
    return sqrt(m->be->ops->sum_squares(m->be->ctx, m->grad_memory,
                                        m->param_count));
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
        m->be->ops->adamw_update(m->be->ctx, m->param_memory + t->offset,
                                 m->grad_memory + t->offset,
                                 m->adam_m_memory + t->offset,
                                 m->adam_v_memory + t->offset, t->count,
                                 (float)lr, (float)s->beta1, (float)s->beta2,
                                 (float)s->eps,
                                 t->decay ? (float)s->weight_decay : 0.0f,
                                 (float)scale, step);
    }
    return norm;
}
