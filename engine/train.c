#include "engine/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/cpu_backend.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int trainer_create(trainer **out, const config *cfg, moe_error *err)
{
    if (cfg->cluster.device_count != 1 ||
        cfg->cluster.devices[0].backend != CONFIG_BACKEND_CPU)
        return error_set(err, "%s: this build trains on one CPU rank, but "
                              "cluster.devices lists %d device(s) starting "
                              "with a %s one (multi-rank and GPU runs are not "
                              "built yet)", cfg->source,
                         cfg->cluster.device_count,
                         cfg->cluster.devices[0].backend == CONFIG_BACKEND_CPU
                             ? "cpu" : "GPU");
    trainer *t = calloc(1, sizeof *t);
    if (!t)
        return error_set(err, "out of memory");
    t->cfg = *cfg;
    optimizer_settings_from_config(&t->opt, cfg);

    if (cpu_backend_init(&t->be, cfg->cluster.devices[0].threads) < 0) {
        free(t);
        return error_set(err, "cannot start the CPU backend: out of memory");
    }
    if (dataset_load(&t->data, cfg->data.path, cfg->data.val_fraction,
                     cfg->model.seq_len, err) < 0)
        goto fail;
    if (model_create(&t->model, cfg, &t->be, cfg->train.batch_size, err) < 0)
        goto fail;
    size_t tokens = (size_t)cfg->train.batch_size * cfg->model.seq_len;
    t->inputs = malloc(tokens * sizeof *t->inputs);
    t->targets = malloc(tokens * sizeof *t->targets);
    t->expert_load = calloc((size_t)cfg->model.n_layers * cfg->moe.n_experts,
                            sizeof *t->expert_load);
    if (!t->inputs || !t->targets || !t->expert_load) {
        error_set(err, "out of memory");
        goto fail;
    }
    model_init_params(t->model, cfg->train.seed);
    t->state.seed = cfg->train.seed;
    rng_seed(&t->state.data_rng, cfg->train.seed, 2);
    *out = t;
    return 0;
fail:
    trainer_destroy(t);
    return -1;
}

void trainer_destroy(trainer *t)
{
    if (!t)
        return;
    model_destroy(t->model);
    dataset_finish(&t->data);
    cpu_backend_finish(&t->be);
    free(t->inputs);
    free(t->targets);
    free(t->expert_load);
    free(t);
}

int trainer_resume(trainer *t, const char *path, moe_error *err)
{
    checkpoint_state st;
    if (checkpoint_load(path, t->model, &st, err) < 0)
        return -1;
    if (st.seed != t->cfg.train.seed)
        return error_set(err, "%s was trained with train.seed %llu, but the "
                              "configuration has %llu", path,
                         (unsigned long long)st.seed,
                         (unsigned long long)t->cfg.train.seed);
    t->state = st;
    return 0;
}

void trainer_step(trainer *t, step_stats *s)
{
    const config *cfg = &t->cfg;
    model *m = t->model;
    int B = cfg->train.batch_size, T = cfg->model.seq_len;
    int step = t->state.step + 1;

    double start = now_s();
    dataset_train_batch(&t->data, &t->state.data_rng, B, t->inputs,
                        t->targets);
    double batch_done = now_s();
    double loss = model_forward(m, t->inputs, t->targets, B);
    double forward_done = now_s();
    model_zero_grad(m);
    double zeroed = now_s();
    model_backward(m);
    double backward_done = now_s();
    double lr = optimizer_lr(&t->opt, step);
    double grad_norm = optimizer_step(m, &t->opt, step, lr);
    double end = now_s();
    double step_s = end - start;
    t->data_s += batch_done - start;
    t->zero_grad_s += zeroed - forward_done;
    t->optimizer_s += end - backward_done;

    t->state.step = step;
    t->state.tokens_seen += (uint64_t)B * T;
    t->train_s += step_s;
    model_expert_load(m, t->expert_load);

    memset(s, 0, sizeof *s);
    s->step = step;
    s->loss = loss;
    s->aux_loss = m->aux_loss;
    s->z_loss = m->z_loss;
    s->lr = lr;
    s->grad_norm = grad_norm;
    s->step_s = step_s;
    s->tokens = B * T;
    s->tokens_per_s = step_s > 0 ? s->tokens / step_s : NAN;
    s->flops_per_s = s->tokens_per_s * model_flops_per_token(m);
    s->tokens_seen = t->state.tokens_seen;
    s->elapsed_s = t->train_s;
    s->dropped = model_dropped_assignments(m);
    s->layers = m->dims.L;
    s->experts = m->dims.E;
    s->expert_load = t->expert_load;
}

double trainer_validate(trainer *t)
{
    const config *cfg = &t->cfg;
    int B = cfg->train.batch_size, count = cfg->train.eval_batches;
    double sum = 0.0;
    for (int i = 0; i < count; i++) {
        dataset_val_batch(&t->data, i, count, B, t->inputs, t->targets);
        sum += model_forward(t->model, t->inputs, t->targets, B);
    }
    return sum / count;
}

int trainer_checkpoint(trainer *t, char *path_out, size_t path_size,
                       moe_error *err)
{
    return checkpoint_save(t->cfg.checkpoint.dir, t->cfg.checkpoint.keep,
                           t->model, &t->state, path_out, path_size, err);
}

static int due(int step, int every)
{
    return every > 0 && step % every == 0;
}

train_outcome trainer_run(trainer *t, const train_run_options *opt,
                          run_summary *summary, moe_error *err)
{
    const config *cfg = &t->cfg;
    const train_progress *progress = opt->progress;
    char *checkpoint_path = t->last_checkpoint;
    int checkpointed_step = -1;

    memset(summary, 0, sizeof *summary);
    summary->first_step = t->state.step + 1;
    summary->loss = NAN;
    summary->val_loss = NAN;
    summary->val_step = -1;
    summary->status = "done";
    uint64_t tokens_at_start = t->state.tokens_seen;
    double train_s_at_start = t->train_s;

    if (opt->metrics &&
        metrics_write_run(opt->metrics, cfg, t->model, t->state.step, err) < 0)
        return TRAIN_FAILED;

    train_outcome outcome = TRAIN_DONE;
    while (t->state.step < opt->last_step) {
        if (opt->stop_requested && *opt->stop_requested) {
            outcome = TRAIN_STOPPED;
            summary->status = "stopped";
            break;
        }
        step_stats s;
        trainer_step(t, &s);
        summary->loss = s.loss;
        if (!isfinite(s.loss)) {
            error_set(err, "training diverged at step %d: loss is %g (try a "
                           "lower train.lr or a grad_clip)", s.step, s.loss);
            return TRAIN_FAILED;
        }
        if (opt->metrics && metrics_write_step(opt->metrics, &s, err) < 0)
            return TRAIN_FAILED;
        if (progress && progress->on_step)
            progress->on_step(&s, opt->last_step, progress->user);

        int last = s.step == opt->last_step;
        if (due(s.step, cfg->train.eval_every) ||
            (last && cfg->train.eval_every > 0)) {
            double val_loss = trainer_validate(t);
            summary->val_loss = val_loss;
            summary->val_step = s.step;
            if (opt->metrics &&
                metrics_write_val(opt->metrics, s.step, val_loss, err) < 0)
                return TRAIN_FAILED;
            if (progress && progress->on_val)
                progress->on_val(s.step, val_loss, progress->user);
        }
        if (due(s.step, cfg->checkpoint.every) || last) {
            if (trainer_checkpoint(t, checkpoint_path, sizeof t->last_checkpoint,
                                   err) < 0)
                return TRAIN_FAILED;
            checkpointed_step = s.step;
            if (opt->metrics && metrics_write_checkpoint(
                                    opt->metrics, s.step, checkpoint_path,
                                    err) < 0)
                return TRAIN_FAILED;
            if (progress && progress->on_checkpoint)
                progress->on_checkpoint(s.step, checkpoint_path,
                                        progress->user);
        }
    }
    /* A stop between checkpoints still leaves one at the current step. */
    if (outcome == TRAIN_STOPPED && checkpointed_step != t->state.step &&
        t->state.step > 0) {
        if (trainer_checkpoint(t, checkpoint_path, sizeof t->last_checkpoint,
                               err) < 0)
            return TRAIN_FAILED;
        checkpointed_step = t->state.step;
        if (opt->metrics &&
            metrics_write_checkpoint(opt->metrics, t->state.step,
                                     checkpoint_path, err) < 0)
            return TRAIN_FAILED;
        if (progress && progress->on_checkpoint)
            progress->on_checkpoint(t->state.step, checkpoint_path,
                                    progress->user);
    }

    summary->last_step = t->state.step;
    summary->tokens_seen = t->state.tokens_seen;
    summary->elapsed_s = t->train_s - train_s_at_start;
    summary->tokens_per_s =
        summary->elapsed_s > 0
            ? (double)(t->state.tokens_seen - tokens_at_start) /
                  summary->elapsed_s
            : NAN;
    summary->checkpoint = checkpointed_step >= 0 ? checkpoint_path : NULL;
    if (opt->metrics && metrics_write_summary(opt->metrics, summary, err) < 0)
        return TRAIN_FAILED;
    return outcome;
}
