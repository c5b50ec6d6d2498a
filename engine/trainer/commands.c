#include "engine/trainer/commands.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/core/clock.h"
#include "engine/protocol/control.h"
#include "engine/protocol/script.h"

/* The job's state now, as records carry it. */
static record_state boundary_record_state(const boundary_state *b)
{
    const trainer *t = b->t;
    return (record_state){
        .step = t->state.step,
        .last_step = b->opt->last_step,
        .paused = b->paused,
        .lr = optimizer_lr(&t->opt, t->state.step + 1),
        .ranks = t->comm->world,
        .placement_version = t->placement->version,
        .policy = t->bal.policy,
        .every = t->bal.every,
        .min_gain = t->bal.min_gain,
    };
}

enum plan_action { PLAN_SHOW, PLAN_APPLY, PLAN_AUTO };

/* Rank 0's half of planning: plan (or reuse the proposal `apply` names,
 * or for auto, move back from its last plan when that slowed the job),
 * decide whether to carry it out, describe it in text and write the plan
 * record. verdict: planned (0), no plan (-1), metrics failed (-2); apply;
 * a move back. */
static void plan_on_rank0(boundary_state *bs, record_trigger trigger,
                          enum plan_action action, int verdict[3],
                          char *text, size_t text_size, moe_error *err)
{
    trainer *t = bs->t;
    const placement *where = t->placement;
    balancer *b = &t->bal;
    /* Auto's turn moves back first when its last plan slowed the step. */
    int revert = action == PLAN_AUTO && b->revert_due &&
                 balancer_propose_revert(b, where->expert_rank, where->share,
                                         where->version, text,
                                         text_size) == 0;
    int reuse = action == PLAN_APPLY && b->have_proposal &&
                b->proposal_version == t->placement->version;
    if (!revert && !reuse)
        verdict[0] = balancer_plan(b, where->expert_rank, where->share,
                                   where->version, text, text_size);
    if (verdict[0] != 0)
        return;
    double gain = 1.0 - b->after_s / b->before_s;
    int noisy = 0;
    double threshold = balancer_auto_threshold(b, &noisy);
    /* The policy suggests nothing below min_gain (the operator's `plan`
     * still shows such a plan). */
    if (trigger == RECORD_TRIGGER_SUGGEST &&
        (b->proposal_changes == 0 || gain < b->min_gain)) {
        b->have_proposal = 0;
        verdict[0] = -1;
        return;
    }
    verdict[1] = b->proposal_changes > 0 &&
                 (revert || action == PLAN_APPLY ||
                  (action == PLAN_AUTO && gain >= threshold));
    verdict[2] = revert;
    size_t n = revert ? strlen(text) : 0; /* after the move back's reason */
    balancer_describe(b, where->expert_rank, where->share, text + n,
                      text_size - n);
    if (action == PLAN_AUTO && !revert && !verdict[1] &&
        b->proposal_changes > 0)
        snprintf(text + strlen(text), text_size - strlen(text),
                 "; kept: gain below %.3g%%%s", threshold * 100,
                 noisy       ? " (the noise of the latest step times)"
                 : b->missed ? " (min-gain doubled for each recent "
                               "plan that did not deliver)"
                             : "");
    if (bs->metrics &&
        balancer_write_plan(b, bs->metrics, t->state.step,
                            record_trigger_names[revert
                                                     ? RECORD_TRIGGER_REVERT
                                                     : trigger],
                            verdict[1], where->expert_rank, err) < 0)
        verdict[0] = -2;
}

/* Rank 0 plans from its measurements; every rank learns the verdict and,
 * when the plan is to be carried out, the new placement, and makes the
 * same moves in the same order. A "plan" record describes the proposal.
 * Returns 0 (reply says what happened; *refused when there was no plan),
 * or -1 on a failure to write metrics. */
static int plan_collective(boundary_state *bs, record_trigger trigger,
                           enum plan_action action, char *reply,
                           size_t reply_size, int *refused, moe_error *err)
{
    trainer *t = bs->t;
    model *m = t->model;
    balancer *b = &t->bal;
    const comm *c = t->comm;
    size_t cells = (size_t)m->dims.L * m->dims.E;
    int verdict[3] = {0, 0, 0}; /* planned (0) or not (-1); apply; back */
    char text[512] = "";
    if (c->rank == 0)
        plan_on_rank0(bs, trigger, action, verdict, text, sizeof text, err);
    if (c->world > 1)
        comm_broadcast(c, verdict, sizeof verdict, 0);
    if (verdict[0] == -2)
        return -1;
    snprintf(reply, reply_size, "%s", text);
    *refused = verdict[0] < 0;
    if (!verdict[1])
        return 0;
    if (c->world > 1) {
        comm_broadcast(c, b->proposal, cells * sizeof *b->proposal, 0);
        comm_broadcast(c, b->proposal_share,
                       cells * c->world * sizeof *b->proposal_share, 0);
        comm_broadcast(c, b->proposal_rows,
                       (size_t)c->world * sizeof *b->proposal_rows, 0);
    }
    if (c->rank == 0)
        balancer_keep_undo(b, t->placement->expert_rank, t->placement->share,
                           t->rows);
    double start = clock_monotonic_s();
    moe_error why = {0};
    int stopped = 0; /* a receiver out of memory: the rest stays put */
    for (int l = 0; l < m->dims.L && !stopped; l++)
        for (int e = 0; e < m->dims.E && !stopped; e++) {
            size_t i = (size_t)l * m->dims.E + e, moved = 0;
            stopped = trainer_split_expert(t, l, e, b->proposal[i],
                                           b->proposal_share + i * c->world,
                                           &moved, &why) < 0;
            t->migration_bytes += moved;
            t->migrations += moved > 0;
        }
    if (!stopped && memcmp(t->rows, b->proposal_rows,
                           (size_t)c->world * sizeof *t->rows) != 0)
        stopped = trainer_set_rows(t, b->proposal_rows, &why) < 0;
    double took_ms = (clock_monotonic_s() - start) * 1e3;
    if (stopped && c->rank == 0)
        snprintf(reply + strlen(reply), reply_size - strlen(reply),
                 "; stopped part way: %s", why.message);
    if (c->rank == 0) {
        b->have_proposal = 0;
        balancer_mark_applied(b, t->state.step, t->placement->version,
                              action == PLAN_AUTO, verdict[2]);
        snprintf(reply + strlen(reply), reply_size - strlen(reply),
                 "; applied in %.1f ms, placement version %d", took_ms,
                 t->placement->version);
    }
    return 0;
}

int policy_tick(boundary_state *bs, moe_error *err)
{
    trainer *t = bs->t;
    balancer *b = &t->bal;
    if (b->policy == CONFIG_POLICY_OFF || t->state.step == 0 ||
        t->state.step % b->every != 0 || t->comm->world == 1)
        return 0;
    char reply[512];
    int refused;
    int auto_ = b->policy == CONFIG_POLICY_AUTO;
    if (plan_collective(bs, auto_ ? RECORD_TRIGGER_AUTO
                                  : RECORD_TRIGGER_SUGGEST,
                        auto_ ? PLAN_AUTO : PLAN_SHOW, reply, sizeof reply,
                        &refused, err) < 0)
        return -1;
    if (!bs->metrics || (!auto_ && refused)) /* no suggestion: no event */
        return 0;
    record_state state = boundary_record_state(bs);
    metrics_event event = {
        .step = t->state.step,
        .command = auto_ ? "policy auto" : "policy suggest",
        .origin = RECORD_ORIGIN_POLICY,
        .ok = !refused,
        .reply = reply,
        .duration_ms = NAN,
        .state = &state,
    };
    return metrics_write_event(bs->metrics, &event, err);
}

/* What a command did: its reply text, APPLIED_* flags, and how long its
 * work took (NAN: not timed). */
typedef struct command_result {
    char reply[256];
    int flags;
    double duration_ms;
} command_result;

typedef int (*command_handler)(boundary_state *b, const command *c,
                               command_result *out, moe_error *err);

static int apply_move(boundary_state *b, const command *c,
                      command_result *out, moe_error *err)
{
    trainer *t = b->t;
    int share[CONFIG_MAX_DEVICES] = {0};
    share[c->rank] = PLACEMENT_SHARE_UNITS;
    if (trainer_check_room(t, c->layer, c->expert, share, out->reply,
                           sizeof out->reply)) {
        out->flags |= APPLIED_REFUSED;
        return 0;
    }
    double move_start = clock_monotonic_s();
    size_t bytes = 0;
    if (trainer_move_expert(t, c->layer, c->expert, c->rank, &bytes,
                            err) < 0) {
        snprintf(out->reply, sizeof out->reply, "%.250s", err->message);
        out->flags |= APPLIED_REFUSED;
        return 0;
    }
    out->duration_ms = (clock_monotonic_s() - move_start) * 1e3;
    t->migration_bytes += bytes;
    t->migrations += bytes > 0;
    snprintf(out->reply, sizeof out->reply, "expert %d.%d on rank %d from "
             "step %d (%zu bytes moved, placement version %d)", c->layer,
             c->expert, c->rank, t->state.step + 1, bytes,
             t->placement->version);
    return 0;
}

static int apply_split(boundary_state *b, const command *c,
                       command_result *out, moe_error *err)
{
    trainer *t = b->t;
    int world = t->comm->world;
    char *local = out->reply;
    size_t size = sizeof out->reply;
    int *share = calloc((size_t)world, sizeof *share);
    if (!share)
        return error_set(err, "out of memory");
    if (placement_shares_from_weights(world, c->split_count, c->split_rank,
                                  c->split_weight, share) < 0) {
        snprintf(local, size, "split: a weight is too small for its rank "
                 "to get any rows (shares are in 1/%d)", PLACEMENT_SHARE_UNITS);
        out->flags |= APPLIED_REFUSED;
        free(share);
        return 0;
    }
    if (trainer_check_room(t, c->layer, c->expert, share, local, size)) {
        out->flags |= APPLIED_REFUSED;
        free(share);
        return 0;
    }
    double move_start = clock_monotonic_s();
    size_t bytes = 0;
    if (trainer_split_expert(t, c->layer, c->expert, c->rank, share, &bytes,
                             err) < 0) {
        snprintf(local, size, "%.250s", err->message);
        out->flags |= APPLIED_REFUSED;
        free(share);
        return 0;
    }
    out->duration_ms = (clock_monotonic_s() - move_start) * 1e3;
    t->migration_bytes += bytes;
    t->migrations += bytes > 0;
    int at = snprintf(local, size, "expert %d.%d rows from step %d:",
                      c->layer, c->expert, t->state.step + 1);
    for (int i = 0; i < c->split_count && at > 0 && (size_t)at < size; i++)
        at += snprintf(local + at, size - (size_t)at, " rank %d %.1f%%",
                       c->split_rank[i],
                       100.0 * share[c->split_rank[i]] / PLACEMENT_SHARE_UNITS);
    if (at > 0 && (size_t)at < size)
        snprintf(local + at, size - (size_t)at,
                 " (%zu bytes shipped, placement version %d)", bytes,
                 t->placement->version);
    free(share);
    return 0;
}

static int apply_shares(boundary_state *b, const command *c,
                        command_result *out, moe_error *err)
{
    trainer *t = b->t;
    double weights[CONFIG_MAX_DEVICES];
    for (int r = 0; r < c->share_count; r++)
        weights[r] = c->share_weight[r];
    double start = clock_monotonic_s();
    if (trainer_set_shares(t, weights, err) < 0) {
        snprintf(out->reply, sizeof out->reply, "%.250s", err->message);
        out->flags |= APPLIED_REFUSED;
        return 0;
    }
    out->duration_ms = (clock_monotonic_s() - start) * 1e3;
    int at = snprintf(out->reply, sizeof out->reply, "rows from step %d:",
                      t->state.step + 1);
    for (int r = 0; r < t->comm->world && at > 0 &&
                    (size_t)at < sizeof out->reply; r++)
        at += snprintf(out->reply + at, sizeof out->reply - (size_t)at,
                       " rank %d %d", r, t->rows[r]);
    return 0;
}

static int apply_lr(boundary_state *b, const command *c, command_result *out,
                    moe_error *err)
{
    (void)err;
    b->t->opt.lr_override = c->value;
    snprintf(out->reply, sizeof out->reply, "lr %g from step %d", c->value,
             b->t->state.step + 1);
    return 0;
}

static int apply_checkpoint(boundary_state *b, const command *c,
                            command_result *out, moe_error *err)
{
    (void)c;
    trainer *t = b->t;
    if (trainer_checkpoint(t, b->checkpoint_path, sizeof t->last_checkpoint,
                           err) < 0)
        return -1;
    *b->checkpointed_step = t->state.step;
    snprintf(out->reply, sizeof out->reply, "%s", b->checkpoint_path);
    if (b->metrics && metrics_write_checkpoint(b->metrics, t->state.step,
                                               b->checkpoint_path, err) < 0)
        return -1;
    return 0;
}

static int apply_stop(boundary_state *b, const command *c,
                      command_result *out, moe_error *err)
{
    (void)c, (void)err;
    out->flags |= APPLIED_STOP;
    snprintf(out->reply, sizeof out->reply, "stopping after step %d with a "
             "checkpoint", b->t->state.step);
    return 0;
}

static int apply_pause(boundary_state *b, const command *c,
                       command_result *out, moe_error *err)
{
    (void)c, (void)err;
    b->paused = 1;
    snprintf(out->reply, sizeof out->reply, "paused after step %d",
             b->t->state.step);
    return 0;
}

static int apply_resume(boundary_state *b, const command *c,
                        command_result *out, moe_error *err)
{
    (void)c, (void)err;
    snprintf(out->reply, sizeof out->reply, "%s",
             b->paused ? "resumed" : "was not paused");
    b->paused = 0;
    return 0;
}

/* plan and apply. */
static int apply_plan(boundary_state *b, const command *c,
                      command_result *out, moe_error *err)
{
    int apply = c->kind == COMMAND_APPLY;
    if (b->t->comm->world == 1) {
        snprintf(out->reply, sizeof out->reply, "%s: one rank holds every "
                 "expert; there is nothing to place",
                 apply ? "apply" : "plan");
        out->flags |= APPLIED_REFUSED;
        return 0;
    }
    int refused = 0;
    double start = clock_monotonic_s();
    if (plan_collective(b, apply ? RECORD_TRIGGER_APPLY : RECORD_TRIGGER_PLAN,
                        apply ? PLAN_APPLY : PLAN_SHOW, out->reply,
                        sizeof out->reply, &refused, err) < 0)
        return -1;
    if (apply)
        out->duration_ms = (clock_monotonic_s() - start) * 1e3;
    if (refused)
        out->flags |= APPLIED_REFUSED;
    return 0;
}

static int apply_policy(boundary_state *b, const command *c,
                        command_result *out, moe_error *err)
{
    (void)err;
    balancer *bal = &b->t->bal;
    bal->policy = c->policy;
    if (c->every > 0)
        bal->every = c->every;
    if (c->min_gain >= 0)
        bal->min_gain = c->min_gain;
    int next = (b->t->state.step / bal->every + 1) * bal->every;
    if (bal->policy == CONFIG_POLICY_OFF)
        snprintf(out->reply, sizeof out->reply, "policy off: placement "
                 "changes only by hand");
    else
        snprintf(out->reply, sizeof out->reply, "policy %s every %d "
                 "min-gain %g%%: next plan after step %d",
                 config_policy_names[bal->policy], bal->every,
                 bal->min_gain * 100, next);
    return 0;
}

static int apply_status(boundary_state *b, const command *c,
                        command_result *out, moe_error *err)
{
    (void)c, (void)err;
    const trainer *t = b->t;
    snprintf(out->reply, sizeof out->reply, "step %d of %d, %s, lr %g, %d "
             "rank%s, placement version %d, policy %s every %d min-gain %g%%",
             t->state.step, b->opt->last_step,
             b->paused ? "paused" : "running",
             optimizer_lr(&t->opt, t->state.step + 1), t->comm->world,
             t->comm->world > 1 ? "s" : "", t->placement->version,
             config_policy_names[t->bal.policy], t->bal.every,
             t->bal.min_gain * 100);
    return 0;
}

static const struct {
    command_kind kind;
    command_handler run;
} command_handlers[] = {
    {COMMAND_PAUSE, apply_pause},
    {COMMAND_RESUME, apply_resume},
    {COMMAND_STOP, apply_stop},
    {COMMAND_CHECKPOINT, apply_checkpoint},
    {COMMAND_LR, apply_lr},
    {COMMAND_MOVE, apply_move},
    {COMMAND_STATUS, apply_status},
    {COMMAND_PLAN, apply_plan},
    {COMMAND_APPLY, apply_plan},
    {COMMAND_POLICY, apply_policy},
    {COMMAND_SPLIT, apply_split},
    {COMMAND_SHARES, apply_shares},
};

/* Applies c on this rank and (rank 0) writes its event record; fills
 * *state with the job's state after it. Returns APPLIED_* flags, or -1. */
static int apply_command(boundary_state *b, const command *c,
                         record_origin origin, command_result *out,
                         record_state *state, moe_error *err)
{
    *out = (command_result){.duration_ms = NAN};
    size_t n = sizeof command_handlers / sizeof command_handlers[0];
    size_t i = 0;
    while (i < n && command_handlers[i].kind != c->kind)
        i++;
    if (i == n)
        return error_set(err, "command kind %d has no handler", c->kind);
    if (command_handlers[i].run(b, c, out, err) < 0)
        return -1;
    *state = boundary_record_state(b);
    /* A status asked over the socket is answered there; a scripted one
     * is answered in the metrics. */
    if (b->metrics &&
        (c->kind != COMMAND_STATUS || origin != RECORD_ORIGIN_CONTROL)) {
        char text[COMMAND_TEXT_MAX];
        command_format(c, text, sizeof text);
        metrics_event event = {
            .step = b->t->state.step,
            .command = text,
            .origin = origin,
            .ok = !(out->flags & APPLIED_REFUSED),
            .reply = out->reply,
            .duration_ms = out->duration_ms,
            .state = state,
        };
        if (metrics_write_event(b->metrics, &event, err) < 0)
            return -1;
    }
    return out->flags;
}

enum { BOUNDARY_MAX_COMMANDS = 64 };

/* Gives every rank rank 0's commands of this boundary, in its order: the
 * count first (one broadcast a step when there are none), then the
 * commands. */
static void share_commands(const comm *c, command *commands, int *count)
{
    comm_broadcast(c, count, sizeof *count, 0);
    if (*count > 0)
        comm_broadcast(c, commands, (size_t)*count * sizeof *commands, 0);
}

/* One round: rank 0 drains the socket, every rank applies the commands
 * in the same order, rank 0 answers each client. Returns flags or -1. */
static int serve_round(boundary_state *b, const command_limits *limits,
                       moe_error *err)
{
    const comm *c = b->t->comm;
    control_server *control = b->opt->control;
    control_request requests[BOUNDARY_MAX_COMMANDS];
    command commands[BOUNDARY_MAX_COMMANDS];
    int count = 0;
    if (c->rank == 0 && control)
        count = control_poll(control, limits, requests,
                             BOUNDARY_MAX_COMMANDS);
    for (int i = 0; i < count; i++)
        commands[i] = requests[i].cmd;
    share_commands(c, commands, &count);
    int flags = 0;
    for (int i = 0; i < count; i++) {
        command_result result;
        record_state state;
        int applied = apply_command(b, &commands[i], RECORD_ORIGIN_CONTROL,
                                    &result, &state, err);
        if (applied < 0) {
            if (c->rank == 0)
                control_reply(control, &requests[i], 0, err->message);
            return -1;
        }
        flags |= applied & ~APPLIED_REFUSED;
        if (c->rank == 0)
            control_reply_state(control, &requests[i],
                                !(applied & APPLIED_REFUSED), result.reply,
                                &state);
    }
    return flags;
}

int serve_controls(boundary_state *b, moe_error *err)
{
    trainer *t = b->t;
    const comm *c = t->comm;
    const model_dims *d = &t->model->dims;
    command_limits limits = {d->L, d->E, c->world};
    int flags = 0;
    for (;;) {
        int round = serve_round(b, &limits, err);
        if (round < 0)
            return -1;
        flags |= round;
        /* Rank 0 decides for all: without a socket nothing could resume,
         * and a signal to stop (mpirun passes it to every rank) ends the
         * pause, so that the job stops with its checkpoint. */
        int signalled = b->opt->stop_requested && *b->opt->stop_requested;
        int paused = b->paused && !(flags & APPLIED_STOP) &&
                     b->opt->control && !signalled;
        comm_broadcast(c, &paused, sizeof paused, 0);
        if (!paused)
            break;
        b->paused_s = 1;
        /* Rank 0 polls its socket every 20 ms; the others wait for its
         * next round asleep, not spinning in MPI (a paused job leaves the
         * machine's cores to others). */
        if (c->rank == 0) {
            struct timespec nap = {0, 20 * 1000 * 1000};
            nanosleep(&nap, NULL);
        }
        int next_round = 1;
        comm_broadcast_idle(c, &next_round, sizeof next_round, 0, 0.005);
    }
    record_state state = boundary_record_state(b);
    metrics_set_state(b->metrics, &state);
    return flags;
}

int run_script(boundary_state *b, const double *values, moe_error *err)
{
    trainer *t = b->t;
    const comm *c = t->comm;
    const script *s = b->opt->script;
    /* Rank 0 finds every due line once; every rank applies them in
     * batches of BOUNDARY_MAX_COMMANDS (a batch of 0 ends the boundary's),
     * so that none is dropped however many fall due together. */
    int *due = NULL, total = 0;
    if (c->rank == 0) {
        due = malloc(((size_t)s->count + 1) * sizeof *due);
        if (!due)
            return error_set(err, "out of memory for the script's commands");
        total = script_due(b->opt->script, t->state.step, values, due);
    }
    int flags = 0, done = 0, count;
    do {
        command batch[BOUNDARY_MAX_COMMANDS];
        count = 0;
        while (c->rank == 0 && done < total && count < BOUNDARY_MAX_COMMANDS)
            batch[count++] = *script_command(s, due[done++]);
        share_commands(c, batch, &count);
        for (int i = 0; i < count; i++) {
            command_result result;
            record_state state;
            int applied = apply_command(b, &batch[i], RECORD_ORIGIN_SCRIPT,
                                        &result, &state, err);
            if (applied < 0) {
                free(due);
                return -1;
            }
            flags |= applied;
        }
    } while (count > 0);
    free(due);
    return flags;
}
