#include "tui/headless.h"

#include <math.h>
#include <stdlib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "engine/command.h"
#include "engine/control.h"
#include "engine/train.h"

int headless_check_steps(const config *cfg, const headless_options *opt,
                         int report)
{
    if (opt->steps <= cfg->train.steps)
        return 0;
    if (report)
        fprintf(stderr, "moectl: --steps %d is past train.steps %d (the "
                        "schedule ends there; raise it with --set "
                        "train.steps=%d)\n", opt->steps, cfg->train.steps,
                opt->steps);
    return -1;
}

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    /* A second signal leaves at once; checkpoints are renamed into place
     * whole, so none is left half-written. */
    if (stop_requested)
        _exit(128 + sig);
    stop_requested = 1;
}

typedef struct progress_state {
    int tty;
    int log_every;
    int first_step;
    double smoothed_tokens_per_s;
    double val_loss;
    int line_open; /* a \r-redrawn line is on screen */
} progress_state;

static void format_duration(char *out, size_t size, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(out, size, "n/a");
    else if (s < 60)
        snprintf(out, size, "%.0fs", s);
    else if (s < 3600)
        snprintf(out, size, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(out, size, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static void on_step(const step_stats *s, int last_step, void *user)
{
    progress_state *p = user;
    double alpha = s->step == p->first_step ? 1.0 : 0.1;
    p->smoothed_tokens_per_s =
        alpha * s->tokens_per_s + (1 - alpha) * p->smoothed_tokens_per_s;
    int last = s->step == last_step;
    if (!p->tty && !last && s->step % p->log_every != 0)
        return;
    char eta[32], val[32] = "";
    double remaining = (double)(last_step - s->step) * s->tokens /
                       p->smoothed_tokens_per_s;
    format_duration(eta, sizeof eta, remaining);
    if (isfinite(p->val_loss))
        snprintf(val, sizeof val, "  val %.4f", p->val_loss);
    fprintf(stderr, "%sstep %d/%d  loss %.4f%s  lr %.2e  %.0f tok/s  ETA %s%s",
            p->tty ? "\r\033[K" : "", s->step, last_step, s->loss, val, s->lr,
            p->smoothed_tokens_per_s, eta, p->tty ? "" : "\n");
    p->line_open = p->tty;
    fflush(stderr);
}

static void end_line(progress_state *p)
{
    if (p->line_open) {
        fputc('\n', stderr);
        p->line_open = 0;
    }
}

static void on_val(int step, double val_loss, void *user)
{
    progress_state *p = user;
    p->val_loss = val_loss;
    if (!p->tty)
        fprintf(stderr, "step %d  val_loss %.4f\n", step, val_loss);
}

static void on_checkpoint(int step, const char *path, void *user)
{
    progress_state *p = user;
    if (!p->tty)
        fprintf(stderr, "step %d  checkpoint %s\n", step, path);
}

int headless_run(const config *cfg, const headless_options *opt,
                 const comm *c)
{
    moe_error err = {{0}};
    int last_step = opt->steps > 0 ? opt->steps : cfg->train.steps;
    if (headless_check_steps(cfg, opt, c->rank == 0) < 0)
        return 2;

    trainer *t = NULL;
    metrics_sink *metrics = NULL;
    control_server *control = NULL;
    int status = 1;
    scheduled_command *scheduled = NULL;
    if (opt->at_count > 0) {
        scheduled = calloc((size_t)opt->at_count, sizeof *scheduled);
        if (!scheduled) {
            error_set(&err, "out of memory");
            goto done;
        }
    }
    command_limits limits = {cfg->model.n_layers, cfg->moe.n_experts,
                             cfg->cluster.device_count};
    for (int i = 0; i < opt->at_count; i++) {
        char *end;
        long step = strtol(opt->at[i], &end, 10);
        char reason[256];
        if (end == opt->at[i] || *end != ':' || step < 0 ||
            step > cfg->train.steps) {
            error_set(&err, "--at %s: expected STEP:COMMAND with STEP in "
                            "0..%d", opt->at[i], cfg->train.steps);
            status = 2;
            goto done;
        }
        if (command_parse(end + 1, &limits, &scheduled[i].cmd, reason,
                          sizeof reason) < 0) {
            error_set(&err, "--at %s: %s", opt->at[i], reason);
            status = 2;
            goto done;
        }
        if (scheduled[i].cmd.kind == COMMAND_PAUSE ||
            scheduled[i].cmd.kind == COMMAND_RESUME ||
            scheduled[i].cmd.kind == COMMAND_STATUS) {
            error_set(&err, "--at %s: only move, lr, checkpoint and stop can "
                            "be scheduled", opt->at[i]);
            status = 2;
            goto done;
        }
        scheduled[i].step = (int)step;
    }
    /* In step order; equal steps keep their order on the command line. */
    for (int i = 1; i < opt->at_count; i++)
        for (int j = i; j > 0 && scheduled[j - 1].step > scheduled[j].step;
             j--) {
            scheduled_command tmp = scheduled[j];
            scheduled[j] = scheduled[j - 1];
            scheduled[j - 1] = tmp;
        }
    if (trainer_create(&t, cfg, c, &err) < 0)
        goto done;
    if (opt->resume && trainer_resume(t, opt->resume, &err) < 0)
        goto done;
    if (t->state.step >= last_step) {
        error_set(&err, "the checkpoint is at step %d, nothing to do up to "
                        "step %d", t->state.step, last_step);
        status = 2;
        goto done;
    }
    if (c->rank == 0) {
        /* Records go to the metrics file and to the control socket's
         * clients; commands come back through the socket. */
        if (metrics_open(&metrics, opt->metrics, &err) < 0)
            goto done;
        if (control_open(&control, opt->socket, &err) < 0) {
            status = opt->socket ? 2 : 1;
            goto done;
        }
        metrics_attach_control(metrics, control);
        fprintf(stderr, "moectl: control socket %s (moectl ctl %s status)\n",
                control_path(control), control_path(control));
    }

    progress_state p = {
        .tty = isatty(STDERR_FILENO),
        .log_every = cfg->train.log_every,
        .first_step = t->state.step + 1,
        .val_loss = NAN,
    };
    train_progress progress = {on_step, on_val, on_checkpoint, &p};
    train_run_options run = {
        .last_step = last_step,
        .scheduled = scheduled,
        .scheduled_count = opt->at_count,
        .control = control,
        .metrics = metrics,
        .progress = &progress,
        .stop_requested = &stop_requested,
    };

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (c->rank == 0)
        fprintf(stderr, "moectl: training %s (%zu parameters, %zu active) on "
                        "%d rank%s, steps %d..%d\n", cfg->name,
                t->model->param_count, model_active_params(t->model),
                c->world, c->world > 1 ? "s" : "", t->state.step + 1,
                last_step);
    for (int r = 0; c->rank == 0 && r < cfg->cluster.device_count; r++)
        if (cfg->cluster.devices[r].slowdown != 1.0)
            fprintf(stderr, "moectl: rank %d (%s) is EMULATED %.2fx slower "
                            "(cluster.devices[%d].slowdown)\n", r,
                    cfg->cluster.devices[r].name,
                    cfg->cluster.devices[r].slowdown, r);
    run_summary summary;
    train_outcome outcome = trainer_run(t, &run, &summary, &err);
    end_line(&p);
    if (outcome == TRAIN_FAILED)
        goto done;

    char elapsed[32];
    format_duration(elapsed, sizeof elapsed, summary.elapsed_s);
    if (c->rank == 0)
        fprintf(stderr, "moectl: %s at step %d: loss %.4f, val_loss %.4f, "
                    "%.0f tokens/s, %s%s%s\n",
            outcome == TRAIN_STOPPED ? "stopped" : "done", summary.last_step,
            summary.loss, summary.val_loss, summary.tokens_per_s, elapsed,
            summary.checkpoint ? ", checkpoint " : "",
            summary.checkpoint ? summary.checkpoint : "");
    status = outcome == TRAIN_STOPPED ? 3 : 0;
done:
    if (status != 0 && status != 3) {
        if (c->world == 1)
            fprintf(stderr, "moectl: %s\n", err.message);
        else
            fprintf(stderr, "moectl: rank %d: %s\n", c->rank, err.message);
    }
    metrics_close(metrics);
    control_close(control);
    trainer_destroy(t);
    free(scheduled);
    return status;
}
