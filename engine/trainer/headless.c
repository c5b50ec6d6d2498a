#include "engine/trainer/headless.h"
#include "engine/core/signals.h"

#include <math.h>
#include <stdlib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/balance/cost.h"
#include "engine/core/format.h"
#include "engine/model/checkpoint_files.h"
#include "engine/protocol/command.h"
#include "engine/protocol/control.h"
#include "engine/protocol/prometheus.h"
#include "engine/protocol/registry.h"
#include "engine/protocol/script.h"
#include "engine/trainer/run_dir.h"
#include "engine/trainer/train.h"

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

/* The script of a run: --script's file, then the --at lines. Any error
 * is bad input (err says why), found before anything starts. */
static int build_script(const config *cfg, const headless_options *opt,
                        int last_step, script *plan, moe_error *err)
{
    command_limits limits = {cfg->model.n_layers, cfg->moe.n_experts,
                             cfg->cluster.device_count};
    if (opt->script && script_load(plan, opt->script, &limits, last_step,
                                   err->message, sizeof err->message) < 0)
        return -1;
    for (int i = 0; i < opt->at_count; i++) {
        char *end;
        long step = strtol(opt->at[i], &end, 10);
        char reason[256];
        command cmd;
        if (end == opt->at[i] || *end != ':' || step < 0 ||
            step > cfg->train.steps) {
            error_set(err, "--at %s: expected STEP:COMMAND with STEP in "
                            "0..%d", opt->at[i], cfg->train.steps);
            return -1;
        }
        if (command_parse(end + 1, &limits, &cmd, reason, sizeof reason) < 0) {
            error_set(err, "--at %s: %s", opt->at[i], reason);
            return -1;
        }
        if (cmd.kind == COMMAND_PAUSE || cmd.kind == COMMAND_RESUME) {
            error_set(err, "--at %s: pause and resume cannot be scheduled "
                            "(only a client of the control socket could "
                            "resume)", opt->at[i]);
            return -1;
        }
        if (script_add(plan, (int)step, &cmd, 0) < 0)
            return error_set(err, "out of memory");
    }
    return 0;
}

int headless_check(const config *cfg, const headless_options *opt)
{
    if (headless_check_steps(cfg, opt, 1) < 0)
        return -1;
    script plan = {0};
    moe_error err = {{0}};
    int last_step = opt->steps > 0 ? opt->steps : cfg->train.steps;
    int rc = build_script(cfg, opt, last_step, &plan, &err);
    if (rc < 0)
        fprintf(stderr, "moectl: %s\n", err.message);
    script_free(&plan);
    return rc;
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

static void on_spike(int step, const char *what, void *user)
{
    end_line(user);
    fprintf(stderr, "step %d  spike guard: %s\n", step, what);
}

/* The run's summary for people (the summary record is for machines). */
static void print_summary(const run_summary *s, const config *cfg, int status,
                          const rank_stats *ranks, int world)
{
    const char *currency = cfg->cluster.currency;
    double price = cost_price_per_hour(cfg);
    fprintf(stderr, "moectl: summary\n");
    fprintf(stderr, "  status      %s at step %d (exit %d)\n", s->status,
            s->last_step, status);
    fprintf(stderr, "  loss        %.4f", s->loss);
    if (s->val_step >= 0)
        fprintf(stderr, "   val_loss %.4f (step %d)", s->val_loss, s->val_step);
    fprintf(stderr, "\n  tokens/s    %.0f   MFU %.2f%%\n", s->tokens_per_s,
            s->mfu * 100);
    fprintf(stderr, "  cost        %.4g %s per 1M tokens (%.4g %s/hour)\n",
            s->cost_per_mtok, currency, price, currency);
    fprintf(stderr, "  migrations  %d expert%s, %.0f KB\n", s->migrations,
            s->migrations == 1 ? "" : "s", s->migration_bytes / 1e3);
    if (s->spikes)
        fprintf(stderr, "  spikes      %d step%s skipped, %d roll back%s\n",
                s->spikes, s->spikes == 1 ? "" : "s", s->rollbacks,
                s->rollbacks == 1 ? "" : "s");
    /* Each rank's memory at the last step: its experts' state, the rest
     * it holds, and the most it was resident. */
    for (int r = 0; ranks && r < world; r++) {
        const rank_stats *q = &ranks[r];
        char experts[16], dense[16], rest[16], peak[16];
        format_bytes(experts, sizeof experts, q->expert_state_bytes);
        format_bytes(dense, sizeof dense, q->dense_state_bytes);
        format_bytes(rest, sizeof rest, q->activation_bytes +
                                            q->staging_bytes);
        format_bytes(peak, sizeof peak, q->peak_rss_bytes);
        fprintf(stderr, "  %-11s rank %d: %.0f experts %s, dense %s, "
                        "activations and staging %s; peak RSS %s\n",
                r == 0 ? "memory" : "", r, q->experts, experts, dense, rest,
                peak);
    }
    char train[32], val[32], ckpt[32], cmds[32];
    format_duration(train, sizeof train, s->train_s);
    format_duration(val, sizeof val, s->val_s);
    format_duration(ckpt, sizeof ckpt, s->checkpoint_s);
    format_duration(cmds, sizeof cmds, s->command_s);
    fprintf(stderr, "  time        training %s, validation %s, checkpoints "
                    "%s, commands %s\n", train, val, ckpt, cmds);
}

static int failed_together;

int headless_failed_together(void)
{
    return failed_together;
}

/* Creates the trainer on every rank, and tells every rank whether all
 * started (a GPU rank may find no device): a failure then ends each rank
 * cleanly, with the failing rank's reason, rather than through MPI_Abort.
 * Returns 0 when all started; sets *quiet on a rank that started while
 * another did not (the rank that failed says why). */
static int start_every_rank(trainer **t, const config *cfg, const comm *c,
                            int *quiet, moe_error *err)
{
    int started = trainer_create(t, cfg, c, err) == 0;
    if (c->world > 1) {
        int all_started = started;
        int *each = malloc((size_t)c->world * sizeof *each);
        if (each) {
            comm_allgather_int(c, &started, 1, each);
            for (int r = 0; r < c->world; r++)
                all_started &= each[r];
            free(each);
            if (!all_started) {
                failed_together = 1;
                if (started) {
                    *quiet = 1;
                    return -1;
                }
            }
        }
    }
    return started ? 0 : -1;
}

/* Rank 0's channels: records go to the metrics file and to the control
 * socket's clients; commands come back through the socket. Returns the
 * exit status on failure (2 for a socket path given and unusable), 0 when
 * both are open. */
static int open_channels(const config *cfg, const headless_options *opt,
                         metrics_sink **metrics, control_server **control,
                         prometheus **exporter, moe_error *err)
{
    /* What bad options can refuse comes before the run directory, so that
     * a refused start leaves no run behind. */
    if (control_open(control, opt->socket, err) < 0)
        return opt->socket ? 2 : 1;
    if ((opt->prometheus || opt->prometheus_textfile) &&
        prometheus_open(exporter, opt->prometheus, opt->prometheus_textfile,
                        err) < 0)
        return 2;
    if (opt->run_dir &&
        run_dir_prepare(opt->run_dir, cfg, opt->resume_run, err) < 0)
        return 1;
    if (metrics_open(metrics, opt->metrics, cfg->name, err) < 0)
        return 1;
    if (opt->run_dir && metrics_add_run_file(*metrics, opt->run_dir,
                                             opt->resume_run, err) < 0)
        return 1;
    metrics_attach_control(*metrics, *control);
    if (*exporter) {
        metrics_attach_prometheus(*metrics, *exporter);
        if (opt->prometheus)
            fprintf(stderr, "moectl: Prometheus metrics at %s\n",
                    prometheus_url(*exporter));
    }
    fprintf(stderr, "moectl: control socket %s (moectl ctl %s status)\n",
            control_path(*control), control_path(*control));
    if (opt->run_dir)
        fprintf(stderr, "moectl: run %s in %s\n", opt->run_name,
                opt->run_dir);
    return 0;
}

/* Lists the job in the per-user registry (moectl ps) and notes its socket
 * in the run directory; a failure only costs the listing. */
static void register_job(const config *cfg, const headless_options *opt,
                         const control_server *control, int ranks,
                         char *entry_path, size_t size)
{
    entry_path[0] = '\0';
    if (!opt->run_dir)
        return;
    run_dir_note_socket(opt->run_dir, control_path(control));
    registry_entry e = {.pid = (long)getpid(), .ranks = ranks};
    snprintf(e.name, sizeof e.name, "%s", opt->run_name);
    if (!realpath(opt->run_dir, e.run_dir))
        snprintf(e.run_dir, sizeof e.run_dir, "%s", opt->run_dir);
    snprintf(e.socket, sizeof e.socket, "%s", control_path(control));
    snprintf(e.config, sizeof e.config, "%.*s", (int)sizeof e.config - 1,
             cfg->source);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    e.started = (double)now.tv_sec + now.tv_nsec / 1e9;
    moe_error err;
    if (registry_add(&e, entry_path, size, &err) < 0) {
        fprintf(stderr, "moectl: %s (moectl ps will not list this job)\n",
                err.message);
        entry_path[0] = '\0';
    }
}

static void announce_start(const config *cfg, const trainer *t,
                           const comm *c, int last_step)
{
    fprintf(stderr, "moectl: training %s (%zu parameters, %zu active) on "
                    "%d rank%s, steps %d..%d\n", cfg->name,
            t->model->param_count, model_active_params(t->model), c->world,
            c->world > 1 ? "s" : "", t->state.step + 1, last_step);
    for (int r = 0; r < cfg->cluster.device_count; r++)
        if (cfg->cluster.devices[r].slowdown != 1.0)
            fprintf(stderr, "moectl: rank %d (%s) is EMULATED %.2fx slower "
                            "(cluster.devices[%d].slowdown)\n", r,
                    cfg->cluster.devices[r].name,
                    cfg->cluster.devices[r].slowdown, r);
}

/* The run's end for people: one line, then the summary. Returns the exit
 * status (0 done, 3 stopped). */
static int announce_end(const config *cfg, const run_summary *summary,
                        train_outcome outcome, const trainer *t)
{
    char elapsed[32];
    format_duration(elapsed, sizeof elapsed, summary->elapsed_s);
    fprintf(stderr, "moectl: %s at step %d: loss %.4f, val_loss %.4f, "
                    "%.0f tokens/s, %s%s%s\n",
            outcome == TRAIN_STOPPED ? "stopped" : "done", summary->last_step,
            summary->loss, summary->val_loss, summary->tokens_per_s, elapsed,
            summary->checkpoint ? ", checkpoint " : "",
            summary->checkpoint ? summary->checkpoint : "");
    int status = outcome == TRAIN_STOPPED ? 3 : 0;
    print_summary(summary, cfg, status, summary->last_step > 0 ? t->rank
                                                               : NULL,
                  t->comm->world);
    return status;
}

/* The run's configuration: checkpoints go to the run directory unless
 * checkpoint.dir says. */
static const config *run_config(const config *given,
                                const headless_options *opt)
{
    static config run_cfg;
    run_cfg = *given;
    if (opt->run_dir && !run_cfg.checkpoint.dir[0])
        snprintf(run_cfg.checkpoint.dir, sizeof run_cfg.checkpoint.dir,
                 "%s/checkpoints", opt->run_dir);
    return &run_cfg;
}

int headless_run(const config *given, const headless_options *opt,
                 const comm *c)
{
    moe_error err = {{0}};
    const config *cfg = run_config(given, opt);
    char entry_path[CONFIG_PATH_MAX + 32] = "";
    int last_step = opt->steps > 0 ? opt->steps : cfg->train.steps;
    if (headless_check_steps(cfg, opt, c->rank == 0) < 0)
        return 2;

    trainer *t = NULL;
    int quiet = 0;
    failed_together = 0;
    metrics_sink *metrics = NULL;
    control_server *control = NULL;
    prometheus *exporter = NULL;
    int status = 1;
    script plan = {0};
    if (build_script(cfg, opt, last_step, &plan, &err) < 0) {
        status = 2;
        goto done;
    }
    if (start_every_rank(&t, cfg, c, &quiet, &err) < 0)
        goto done;
    /* Nothing of an earlier write cut short outlives a restart. */
    if (c->rank == 0)
        checkpoint_clean_unfinished(cfg->checkpoint.dir);
    if (opt->resume && trainer_resume(t, opt->resume, &err) < 0)
        goto done;
    if (t->state.step >= last_step) {
        error_set(&err, "the checkpoint is at step %d, nothing to do up to "
                        "step %d", t->state.step, last_step);
        status = 2;
        goto done;
    }
    if (c->rank == 0 &&
        (status = open_channels(cfg, opt, &metrics, &control, &exporter,
                                &err)) != 0)
        goto done;
    if (c->rank == 0)
        register_job(cfg, opt, control, c->world, entry_path,
                     sizeof entry_path);
    status = 1;

    progress_state p = {
        .tty = isatty(STDERR_FILENO),
        .log_every = cfg->train.log_every,
        .first_step = t->state.step + 1,
        .val_loss = NAN,
    };
    train_progress progress = {on_step, on_val, on_checkpoint, on_spike, &p};
    train_run_options run = {
        .last_step = last_step,
        .script = plan.count > 0 ? &plan : NULL,
        .control = control,
        .metrics = metrics,
        .progress = &progress,
        .stop_requested = &stop_requested,
    };

    /* A hang-up (the terminal closed) stops the job as SIGTERM does: at
     * the next step boundary, with a checkpoint, exit 3. */
    static const int signals[] = {SIGINT, SIGTERM, SIGHUP, 0};
    signals_install(on_signal, signals);

    if (c->rank == 0)
        announce_start(cfg, t, c, last_step);
    run_summary summary;
    train_outcome outcome = trainer_run(t, &run, &summary, &err);
    end_line(&p);
    if (outcome == TRAIN_FAILED) {
        /* A device failure, or metrics rank 0 cannot write, ends every
         * rank at the same step: the rank that failed says why, and none
         * aborts the job. */
        if (t->failed_together) {
            failed_together = 1;
            quiet = t->quiet_failure;
        }
        goto done;
    }
    status = outcome == TRAIN_STOPPED ? 3 : 0;
    if (c->rank == 0)
        status = announce_end(cfg, &summary, outcome, t);
done:
    if (status != 0 && status != 3 && !quiet) {
        if (c->world == 1)
            fprintf(stderr, "moectl: %s\n", err.message);
        else
            fprintf(stderr, "moectl: rank %d: %s\n", c->rank, err.message);
    }
    registry_remove(entry_path);
    if (entry_path[0])
        run_dir_note_socket(opt->run_dir, NULL);
    metrics_close(metrics);
    prometheus_close(exporter);
    control_close(control);
    trainer_destroy(t);
    script_free(&plan);
    return status;
}
