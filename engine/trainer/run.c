/* trainer_run: the job from its first step to its last, as a straight
 * line: start → (the step boundary's commands → one step → validation and
 * checkpoint when due)* → finish. The trainer's own operations (create,
 * step, move, checkpoint) are in train.c; the commands at the boundary in
 * commands.c. */
#include "engine/trainer/train.h"
#include "engine/trainer/commands.h"
#include "engine/core/clock.h"
#include "engine/core/stats.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "engine/balance/cost.h"
#include "engine/protocol/record.h"
#include "engine/protocol/script.h"

/* After each step of a job with a GPU rank: did a device fail? GPU ops
 * record their first failure and carry on, so the step's numbers may be
 * garbage; every rank learns of it at the same step (one collective) and
 * stops before the step reaches metrics or a checkpoint. A failing rank
 * keeps its cause; the others name the (highest) failing rank. */
static int device_failed(trainer *t, int step, moe_error *err)
{
    const config *cfg = &t->cfg;
    int gpu_ranks = 0;
    for (int r = 0; r < cfg->cluster.device_count; r++)
        gpu_ranks += cfg->cluster.devices[r].backend != CONFIG_BACKEND_CPU;
    if (!gpu_ranks)
        return 0;
    const char *broken = trainer_device_error(t);
    double failed = broken ? t->comm->rank + 1 : 0;
    if (t->comm->world > 1)
        comm_allreduce_max_double(t->comm, &failed, 1);
    if (failed == 0)
        return 0;
    int rank = broken ? t->comm->rank : (int)failed - 1;
    const config_device *dev = &cfg->cluster.devices[rank];
    if (broken)
        error_set(err, "device %s failed in step %d, which was discarded: "
                       "%s", dev->name, step, broken);
    else
        error_set(err, "the device of rank %d (%s) failed in step %d, "
                       "which was discarded", rank, dev->name, step);
    if (t->last_checkpoint[0]) {
        size_t n = strlen(err->message);
        snprintf(err->message + n, sizeof err->message - n,
                 "; the newest checkpoint is %s", t->last_checkpoint);
    }
    t->failed_together = t->comm->world > 1;
    t->quiet_failure = !broken;
    return 1;
}

/* What trainer_run keeps from its start to its finish. */
typedef struct run_context {
    trainer *t;
    const train_run_options *opt;
    const train_progress *progress; /* rank 0's, else NULL */
    metrics_sink *metrics;          /* rank 0's, else NULL */
    run_summary *summary;
    int checkpointed_step;          /* -1: none written by this run */
    uint64_t tokens_at_start;
    double train_s_at_start;
    int migrations_at_start;
    size_t migration_bytes_at_start;
    double step_s[64];              /* the last steps' times, a ring */
    int steps_timed;
    double values[SCRIPT_METRIC_COUNT]; /* the last step's, for scripts */
    int have_values;
    boundary_state boundary;
    int metrics_failed;             /* on rank 0: stopped for it */
} run_context;

/* The hung-rank watchdog's deadline for the next step's collectives:
 * train.collective_timeout, or 10 x the median of the last 64 steps, at
 * least 60 s; and what its report should say. */
static void watch_next_step(run_context *r, double step_s)
{
    trainer *t = r->t;
    enum { RING = sizeof r->step_s / sizeof *r->step_s };
    if (step_s >= 0)
        r->step_s[r->steps_timed++ % RING] = step_s;
    double deadline = t->cfg.train.collective_timeout;
    if (deadline <= 0 && r->steps_timed > 0) {
        int n = r->steps_timed < RING ? r->steps_timed : RING;
        double sorted[RING];
        memcpy(sorted, r->step_s, (size_t)n * sizeof *sorted);
        double median = stats_median(sorted, n);
        deadline = 10 * median > 60 ? 10 * median : 60;
    }
    if (deadline > 0)
        comm_set_deadline(t->comm, deadline);
    char hint[2 * sizeof t->cfg.checkpoint.dir + 128];
    snprintf(hint, sizeof hint, "it was in step %d; --resume %s continues "
             "from the newest checkpoint", t->state.step + 1,
             t->cfg.checkpoint.dir);
    comm_set_hang_hint(t->comm, hint);
}

/* Only rank 0 writes metrics and reports progress. */
static int run_start(run_context *r, trainer *t, const train_run_options *opt,
                     run_summary *summary, moe_error *err)
{
    int lead = t->comm->rank == 0;
    memset(r, 0, sizeof *r);
    r->t = t;
    r->opt = opt;
    r->progress = lead ? opt->progress : NULL;
    r->metrics = lead ? opt->metrics : NULL;
    r->summary = summary;
    r->checkpointed_step = -1;
    r->tokens_at_start = t->state.tokens_seen;
    r->train_s_at_start = t->train_s;
    r->migrations_at_start = t->migrations;
    r->migration_bytes_at_start = t->migration_bytes;
    r->boundary = (boundary_state){.t = t, .opt = opt, .metrics = r->metrics,
                                   .checkpoint_path = t->last_checkpoint,
                                   .checkpointed_step = &r->checkpointed_step};

    memset(summary, 0, sizeof *summary);
    summary->first_step = t->state.step + 1;
    summary->loss = NAN;
    summary->val_loss = NAN;
    summary->val_step = -1;
    summary->status = "done";
    /* Every rank says what runs its GEMMs; the run record names them. */
    static char gemm[CONFIG_MAX_DEVICES][METRICS_GEMM_MAX];
    char mine[METRICS_GEMM_MAX];
    trainer_describe_gemm(t, mine, sizeof mine);
    comm_gather(t->comm, mine, sizeof mine, gemm);
    if (r->metrics && metrics_write_run(r->metrics, &t->cfg, t->model,
                                        gemm[0], t->state.step, err) < 0)
        return -1;
    watch_next_step(r, -1);
    return 0;
}

/* Commands due at this boundary, on every rank alike: scheduled ones, then
 * what clients of the control socket sent. While paused the job waits
 * here, still answering commands. *stop: the run stops here (a command, or
 * a stop asked of any rank, which stops all of them at the same step). */
static int run_boundary(run_context *r, int *stop, moe_error *err)
{
    trainer *t = r->t;
    boundary_state *b = &r->boundary;
    int flags = 0;
    double commands_start = clock_monotonic_s();
    if (r->opt->script) {
        int scripted = run_script(b, r->have_values ? r->values : NULL, err);
        if (scripted < 0)
            return -1;
        flags |= scripted;
    }
    if (policy_tick(b, err) < 0)
        return -1;
    int served = serve_controls(b, err);
    if (served < 0)
        return -1;
    flags |= served;
    /* Paused time is not command time. */
    if (!b->paused_s)
        r->summary->command_s += clock_monotonic_s() - commands_start;
    b->paused_s = 0;
    *stop = (flags & APPLIED_STOP) != 0;
    if (*stop)
        return 0;
    /* A stop asked of any rank (1), or rank 0's metrics file that could
     * not be written (2): the whole job stops here, with a checkpoint. */
    double asked = r->opt->stop_requested && *r->opt->stop_requested;
    if (metrics_failure(r->metrics))
        asked = 2;
    comm_allreduce_max_double(t->comm, &asked, 1);
    *stop = asked != 0;
    r->metrics_failed = asked == 2;
    return 0;
}

/* Writes a checkpoint at the present step and reports it; a scheduled
 * one (`timed`) counts in the summary's checkpoint time. */
static int run_checkpoint(run_context *r, int timed, moe_error *err)
{
    trainer *t = r->t;
    const train_progress *progress = r->progress;
    double checkpoint_start = clock_monotonic_s();
    /* Writing takes longer than a step: the automatic deadline stretches
     * (a set train.collective_timeout holds for every call). */
    double deadline = comm_deadline(t->comm);
    if (t->cfg.train.collective_timeout <= 0)
        comm_set_deadline(t->comm, 10 * deadline);
    int written = trainer_checkpoint(t, t->last_checkpoint,
                                     sizeof t->last_checkpoint, err);
    comm_set_deadline(t->comm, deadline);
    if (written < 0)
        return -1;
    if (timed)
        r->summary->checkpoint_s += clock_monotonic_s() - checkpoint_start;
    r->checkpointed_step = t->state.step;
    if (r->metrics && metrics_write_checkpoint(r->metrics, t->state.step,
                                               t->last_checkpoint, err) < 0)
        return -1;
    if (progress && progress->on_checkpoint)
        progress->on_checkpoint(t->state.step, t->last_checkpoint,
                                progress->user);
    return 0;
}

/* Validation when due after step s (every train.eval_every, and last). */
static int run_validation(run_context *r, int step, int last,
                          moe_error *err)
{
    trainer *t = r->t;
    int every = t->cfg.train.eval_every;
    if (!due(step, every) && !(last && every > 0))
        return 0;
    double val_start = clock_monotonic_s();
    double val_loss = trainer_validate(t);
    r->summary->val_s += clock_monotonic_s() - val_start;
    r->summary->val_loss = val_loss;
    r->summary->val_step = step;
    if (r->metrics && metrics_write_val(r->metrics, step, val_loss, err) < 0)
        return -1;
    if (r->progress && r->progress->on_val)
        r->progress->on_val(step, val_loss, r->progress->user);
    return 0;
}

/* What the spike guard did at this step, as records: the skip, a lowered
 * learning rate, a roll back (made here, on every rank). */
static json_t *spike_record(const trainer *t, int step,
                            record_spike_action action)
{
    const spike_verdict *v = &t->spike;
    json_t *o = record_begin(RECORD_TYPE_SPIKE);
    record_set_int(o, RECORD_SPIKE_step, step);
    record_set_string(o, RECORD_SPIKE_action,
                      record_spike_action_names[action]);
    record_set_string(o, RECORD_SPIKE_reason, v->why);
    record_set_real(o, RECORD_SPIKE_median_loss, v->median_loss);
    record_set_real(o, RECORD_SPIKE_median_grad_norm, v->median_grad);
    record_set_int(o, RECORD_SPIKE_spikes, t->state.guard.spikes);
    /* Each action fills its own: the others are null. */
    const record_field each[] = {
        RECORD_SPIKE_loss, RECORD_SPIKE_grad_norm, RECORD_SPIKE_requeued_to,
        RECORD_SPIKE_lr_factor, RECORD_SPIKE_until_step,
        RECORD_SPIKE_checkpoint, RECORD_SPIKE_resumed_step};
    for (size_t i = 0; i < sizeof each / sizeof *each; i++)
        record_set_json(o, each[i], NULL);
    return o;
}

static void tell_spike(const run_context *r, int step, const char *format,
                       ...) __attribute__((format(printf, 3, 4)));
static void tell_spike(const run_context *r, int step, const char *format,
                       ...)
{
    if (!r->progress || !r->progress->on_spike)
        return;
    char what[320];
    va_list ap;
    va_start(ap, format);
    vsnprintf(what, sizeof what, format, ap);
    va_end(ap);
    r->progress->on_spike(step, what, r->progress->user);
}

static int run_spike(run_context *r, const step_stats *s, moe_error *err)
{
    trainer *t = r->t;
    const config_spike_guard *g = &t->cfg.train.spike_guard;
    const spike_verdict *v = &t->spike;
    json_t *o = NULL;
    if (v->requeued_to >= 0)
        tell_spike(r, s->step, "skipped (%s); the batch trains again at "
                   "step %d", v->why, v->requeued_to);
    else
        tell_spike(r, s->step, "skipped (%s); the batch is dropped", v->why);
    if (v->lowered)
        tell_spike(r, s->step, "%d spikes within %d steps: learning rate x "
                   "%g through step %d", g->lower_after, g->window,
                   g->lr_factor, t->state.guard.lowered_until);
    if (r->metrics) {
        o = spike_record(t, s->step, RECORD_SPIKE_SKIP);
        record_set_real(o, RECORD_SPIKE_loss, s->loss);
        record_set_real(o, RECORD_SPIKE_grad_norm, s->grad_norm);
        if (v->requeued_to >= 0)
            record_set_int(o, RECORD_SPIKE_requeued_to, v->requeued_to);
        if (metrics_write_record(r->metrics, o, err) < 0)
            return -1;
    }
    if (v->lowered && r->metrics) {
        o = spike_record(t, s->step, RECORD_SPIKE_LOWER_LR);
        record_set_real(o, RECORD_SPIKE_lr_factor, g->lr_factor);
        record_set_int(o, RECORD_SPIKE_until_step,
                       t->state.guard.lowered_until);
        if (metrics_write_record(r->metrics, o, err) < 0)
            return -1;
    }
    if (!v->rollback)
        return 0;
    char path[sizeof t->last_checkpoint];
    if (trainer_rollback(t, path, sizeof path, err) < 0)
        return -1;
    r->checkpointed_step = t->state.step;
    tell_spike(r, s->step, "%d spikes in a row: rolled back to %s (step "
               "%d), another data order", g->rollback_after, path,
               t->state.step);
    if (r->metrics) {
        o = spike_record(t, s->step, RECORD_SPIKE_ROLLBACK);
        record_set_string(o, RECORD_SPIKE_checkpoint, path);
        record_set_int(o, RECORD_SPIKE_resumed_step, t->state.step);
        if (metrics_write_record(r->metrics, o, err) < 0)
            return -1;
    }
    return 0;
}

/* One training step with its records, then validation and a checkpoint
 * when due. */
static int run_step(run_context *r, moe_error *err)
{
    trainer *t = r->t;
    const train_run_options *opt = r->opt;
    step_stats s;
    if (trainer_step(t, &s, err) < 0)
        return -1;
    watch_next_step(r, s.step_s);
    if (device_failed(t, s.step, err))
        return -1;
    if (!s.skipped)
        r->summary->loss = s.loss;
    if (!isfinite(s.loss) && !s.skipped)
        return error_set(err, "training diverged at step %d: loss is %g "
                              "(try a lower train.lr or a grad_clip, or "
                              "train.spike_guard)", s.step, s.loss);
    if (r->metrics && metrics_write_step(r->metrics, &s, err) < 0)
        return -1;
    if (s.skipped && run_spike(r, &s, err) < 0)
        return -1;
    if (t->spike.rollback)
        return 0; /* the step was undone: nothing more is due */
    if (t->comm->rank == 0 &&
        balancer_follow_up(&t->bal, &s, r->metrics, err) < 0)
        return -1;
    if (r->progress && r->progress->on_step)
        r->progress->on_step(&s, opt->last_step, r->progress->user);

    int last = s.step == opt->last_step;
    if (run_validation(r, s.step, last, err) < 0)
        return -1;
    if (t->comm->rank == 0) {
        script_values(r->values, &s, r->summary->val_loss);
        r->have_values = 1;
    }
    if (due(s.step, t->cfg.checkpoint.every) || last)
        return run_checkpoint(r, 1, err);
    return 0;
}

/* A stop between checkpoints still leaves one at the current step; then
 * the run's summary. */
static int run_finish(run_context *r, train_outcome outcome, moe_error *err)
{
    trainer *t = r->t;
    run_summary *summary = r->summary;
    if (outcome == TRAIN_STOPPED && r->checkpointed_step != t->state.step &&
        t->state.step > 0 && run_checkpoint(r, 0, err) < 0)
        return -1;

    summary->last_step = t->state.step;
    summary->tokens_seen = t->state.tokens_seen;
    summary->elapsed_s = t->train_s - r->train_s_at_start;
    summary->tokens_per_s =
        summary->elapsed_s > 0
            ? (double)(t->state.tokens_seen - r->tokens_at_start) /
                  summary->elapsed_s
            : NAN;
    summary->checkpoint = r->checkpointed_step >= 0 ? t->last_checkpoint
                                                    : NULL;
    summary->train_s = summary->elapsed_s;
    summary->cost_per_mtok = cost_per_mtok(t->price_per_hour,
                                           summary->tokens_per_s);
    summary->mfu = cost_mfu(model_flops_per_token(t->model),
                            summary->tokens_per_s, t->peak_flops);
    summary->migrations = t->migrations - r->migrations_at_start;
    summary->spikes = t->state.guard.spikes;
    summary->rollbacks = t->state.guard.rollbacks;
    summary->migration_bytes =
        (double)(t->migration_bytes - r->migration_bytes_at_start);
    if (r->metrics && metrics_write_summary(r->metrics, summary, err) < 0)
        return -1;
    return 0;
}

/* Stopped because rank 0 could not write its metrics: every rank fails
 * together, rank 0 with the reason. */
static train_outcome metrics_failed(run_context *r, moe_error *err)
{
    trainer *t = r->t;
    t->failed_together = t->comm->world > 1;
    t->quiet_failure = t->comm->rank != 0;
    const char *why = metrics_failure(r->metrics);
    error_set(err, "%s; every rank stopped at step %d%s%s (--resume %s "
                   "continues)", why ? why : "rank 0 cannot write metrics",
              t->state.step, r->checkpointed_step >= 0 ? " with a checkpoint: "
                                                       : "",
              r->checkpointed_step >= 0 ? t->last_checkpoint : "",
              t->cfg.checkpoint.dir);
    return TRAIN_FAILED;
}

train_outcome trainer_run(trainer *t, const train_run_options *opt,
                          run_summary *summary, moe_error *err)
{
    run_context r;
    if (run_start(&r, t, opt, summary, err) < 0)
        return TRAIN_FAILED;
    train_outcome outcome = TRAIN_DONE;
    while (t->state.step < opt->last_step) {
        int stop = 0;
        if (run_boundary(&r, &stop, err) < 0)
            return TRAIN_FAILED;
        if (stop) {
            outcome = TRAIN_STOPPED;
            summary->status = "stopped";
            break;
        }
        if (run_step(&r, err) < 0)
            return TRAIN_FAILED;
    }
    if (run_finish(&r, outcome, err) < 0)
        return TRAIN_FAILED;
    if (r.metrics_failed)
        return metrics_failed(&r, err);
    return outcome;
}
