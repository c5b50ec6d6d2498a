#include "tui/console/view.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void figure_init(view_figure *f)
{
    f->now = f->avg = NAN;
    f->weighted_sum = f->weight = 0;
    f->valid = 0;
}

void view_init(view *v)
{
    memset(v, 0, sizeof *v);
    snprintf(v->status, sizeof v->status, "starting");
    for (int i = 0; i < VIEW_HISTORY; i++)
        v->loss_history[i] = v->val_history[i] = NAN;
    v->history_stride = 1;
    view_figure *figures[] = {&v->tokens_per_s, &v->mfu, &v->efficiency,
                              &v->cost_per_hour, &v->cost_per_mtok,
                              &v->cost_per_btok, &v->cost_per_ttok};
    for (size_t i = 0; i < sizeof figures / sizeof figures[0]; i++)
        figure_init(figures[i]);
    v->straggler = -1;
    v->policy = VIEW_POLICY_UNKNOWN;
    v->policy_min_gain = NAN;
    v->last_event_index = -1;
    v->last_event_duration_ms = NAN;
}

static void free_grids(view *v)
{
    free(v->expert_load);
    free(v->placement);
    free(v->kept);
    free(v->holders);
    free(v->load_ema);
    free(v->max_mean);
    free(v->cv);
    free(v->dead);
    v->expert_load = v->placement = v->dead = v->holders = NULL;
    v->kept = NULL;
    v->load_ema = v->max_mean = v->cv = NULL;
}

void view_finish(view *v)
{
    free_grids(v);
}

void view_event(view *v, const char *text)
{
    /* Long lines are cut to the log's width. */
    char *slot = v->events[v->event_count % VIEW_EVENTS];
    snprintf(slot, VIEW_EVENT_BYTES, "%s", text);
    v->event_count++;
}

const char *view_policy_name(view_policy policy)
{
    return policy >= CONFIG_POLICY_OFF && policy <= CONFIG_POLICY_AUTO
               ? config_policy_names[policy]
               : "n/a";
}

static void copy_string(char *out, size_t size, const record_value *r,
                        record_field f)
{
    const char *s = record_string(r, f);
    snprintf(out, size, "%s", s ? s : "");
}

static int int_of(const record_value *r, record_field f)
{
    return (int)record_int(r, f, 0);
}

/* The latest value of a figure, and its moving average with this record
 * weighing weight (see view_figure). */
static void figure_update(view_figure *f, double x, double weight)
{
    f->valid = isfinite(x);
    if (!f->valid)
        return;
    f->now = x;
    if (!(weight > 0) || !isfinite(weight))
        return; /* no measure of how much it counts: the average stands */
    f->weighted_sum = 0.9 * f->weighted_sum + 0.1 * x * weight;
    f->weight = 0.9 * f->weight + 0.1 * weight;
    f->avg = f->weighted_sum / f->weight;
}

/* Fills grid (layers, experts) from an array of arrays of integers. */
static void read_grid(int *grid, json_t *rows, int layers, int experts)
{
    for (int l = 0; l < layers; l++) {
        json_t *row = json_array_get(rows, (size_t)l);
        for (int e = 0; e < experts; e++)
            grid[(size_t)l * experts + e] =
                (int)json_integer_value(json_array_get(row, (size_t)e));
    }
}

/* Reads a (layers, experts) grid of numbers; returns 0 when rows is not
 * an array of that shape, leaving grid as it was. */
static int read_real_grid(double *grid, json_t *rows, int layers,
                          int experts)
{
    if (json_array_size(rows) != (size_t)layers)
        return 0;
    for (int l = 0; l < layers; l++)
        if (json_array_size(json_array_get(rows, (size_t)l)) !=
            (size_t)experts)
            return 0;
    for (int l = 0; l < layers; l++) {
        json_t *row = json_array_get(rows, (size_t)l);
        for (int e = 0; e < experts; e++) {
            json_t *x = json_array_get(row, (size_t)e);
            grid[(size_t)l * experts + e] =
                json_is_number(x) ? json_number_value(x) : NAN;
        }
    }
    return 1;
}

/* The policy and its settings as a record's state or balance tells. */
static void learn_policy(view *v, config_policy policy, int every,
                         double min_gain)
{
    v->policy = policy;
    if (every > 0)
        v->policy_every = every;
    if (isfinite(min_gain))
        v->policy_min_gain = min_gain;
}

/* The job's state after a step or command: the policy and paused. */
static void learn_state(view *v, const record_value *r, record_field f)
{
    record_state state;
    if (record_state_read(r, f, &state) < 0)
        return;
    v->state = state;
    v->have_state = 1;
    v->paused = state.paused;
    learn_policy(v, state.policy, state.every, state.min_gain);
    if (strcmp(v->status, "running") == 0 || strcmp(v->status, "paused") == 0 ||
        strcmp(v->status, "starting") == 0)
        snprintf(v->status, sizeof v->status, "%s",
                 state.paused ? "paused" : "running");
}

static void alloc_grids(view *v, int layers, int experts)
{
    free_grids(v);
    size_t cells = (size_t)layers * (size_t)experts;
    size_t rows = layers ? (size_t)layers : 1;
    cells = cells ? cells : 1;
    v->expert_load = calloc(cells, sizeof *v->expert_load);
    v->placement = calloc(cells, sizeof *v->placement);
    v->kept = calloc(cells, sizeof *v->kept);
    v->holders = calloc(cells, sizeof *v->holders);
    v->load_ema = calloc(cells, sizeof *v->load_ema);
    v->max_mean = calloc(rows, sizeof *v->max_mean);
    v->cv = calloc(rows, sizeof *v->cv);
    v->dead = calloc(rows, sizeof *v->dead);
    v->layers = layers;
    v->experts = experts;
    v->have_load_ema = v->have_imbalance = 0;
}

static int grids_ready(const view *v)
{
    return v->expert_load && v->placement && v->kept && v->holders &&
           v->load_ema && v->max_mean && v->cv && v->dead;
}

static void apply_run(view *v, const record_value *r)
{
    copy_string(v->config, sizeof v->config, r, RECORD_RUN_config);
    copy_string(v->currency, sizeof v->currency, r, RECORD_RUN_currency);
    copy_string(v->run_dir, sizeof v->run_dir, r, RECORD_RUN_run_dir);
    v->steps_total = int_of(r, RECORD_RUN_steps);
    v->tokens_per_step = int_of(r, RECORD_RUN_tokens_per_step);
    v->flops_per_token = record_real(r, RECORD_RUN_flops_per_token);
    v->params = record_real(r, RECORD_RUN_params);
    v->active_params = record_real(r, RECORD_RUN_active_params);
    v->expert_state_bytes = record_real(r, RECORD_RUN_expert_state_bytes);
    record_value model;
    record_part(r, RECORD_RUN_model, 0, &model);
    int layers = int_of(&model, RECORD_MODEL_layers);
    int experts = int_of(&model, RECORD_MODEL_experts);
    layers = layers > 0 ? layers : 0;
    experts = experts > 0 ? experts : 0;
    if (layers != v->layers || experts != v->experts || !v->expert_load)
        alloc_grids(v, layers, experts);
    v->device_count = 0;
    for (size_t i = 0; i < record_count(r, RECORD_RUN_devices) &&
                       i < VIEW_MAX_RANKS; i++) {
        record_value d;
        record_part(r, RECORD_RUN_devices, i, &d);
        view_device *dev = &v->devices[v->device_count++];
        copy_string(dev->name, sizeof dev->name, &d, RECORD_DEVICE_name);
        copy_string(dev->backend, sizeof dev->backend, &d,
                    RECORD_DEVICE_backend);
        dev->price_per_hour = record_real(&d, RECORD_DEVICE_price_per_hour);
        dev->emulated = record_bool(&d, RECORD_DEVICE_emulated);
    }
    record_value balance;
    if (record_part(r, RECORD_RUN_balance, 0, &balance) == 0) {
        int policy = record_enum(&balance, RECORD_BALANCE_policy,
                                 config_policy_names);
        if (policy >= 0)
            learn_policy(v, (config_policy)policy,
                         int_of(&balance, RECORD_BALANCE_every),
                         record_real(&balance, RECORD_BALANCE_min_gain));
    }
    v->have_run = grids_ready(v);
    if (strcmp(v->status, "starting") == 0)
        snprintf(v->status, sizeof v->status, "running");
}

/* Slots i and i+1 of one series into slot i/2: the weighted mean. */
static void merge_pairs(double *mean, int *n)
{
    for (int i = 0; i < VIEW_HISTORY / 2; i++) {
        int a = n[2 * i], b = n[2 * i + 1];
        double x = a ? mean[2 * i] : 0, y = b ? mean[2 * i + 1] : 0;
        n[i] = a + b;
        mean[i] = a + b ? (x * a + y * b) / (a + b) : NAN;
    }
    for (int i = VIEW_HISTORY / 2; i < VIEW_HISTORY; i++) {
        n[i] = 0;
        mean[i] = NAN;
    }
}

/* One series' sample at a slot. A step seen again (on attach, from the
 * file and live) replaces its value at stride 1 and is skipped at coarser
 * strides, where it is already in the slot's mean. */
static void add_to_slot(double *mean, int *n, int *last_step, int index,
                        int step, double x, int stride)
{
    if (isnan(x))
        return;
    if (step <= *last_step) {
        if (stride == 1) {
            mean[index] = x;
            n[index] = 1;
        }
        return;
    }
    *last_step = step;
    if (n[index] == 0 || isnan(mean[index])) {
        mean[index] = x;
        n[index] = 1;
    } else {
        mean[index] += (x - mean[index]) / ++n[index];
    }
}

static void record_history(view *v, int step, double loss, double val)
{
    if (v->history_count == 0)
        v->history_first_step = step;
    if (step < v->history_first_step)
        return;
    int index = (step - v->history_first_step) / v->history_stride;
    while (index >= VIEW_HISTORY) { /* halve the resolution */
        merge_pairs(v->loss_history, v->loss_n);
        merge_pairs(v->val_history, v->val_n);
        v->history_stride *= 2;
        v->history_count = (v->history_count + 1) / 2;
        index = (step - v->history_first_step) / v->history_stride;
    }
    add_to_slot(v->loss_history, v->loss_n, &v->history_last_step, index,
                step, loss, v->history_stride);
    add_to_slot(v->val_history, v->val_n, &v->history_last_val_step, index,
                step, val, v->history_stride);
    if (index + 1 > v->history_count)
        v->history_count = index + 1;
}

/* Per-layer imbalance as the engine measured it; layers it lacks are
 * n/a. */
static void apply_imbalance(view *v, const record_value *step)
{
    record_value imbalance;
    v->have_imbalance =
        record_part(step, RECORD_STEP_imbalance, 0, &imbalance) == 0;
    if (!v->have_imbalance)
        return;
    json_t *max_mean = record_json(&imbalance, RECORD_IMBALANCE_max_mean);
    json_t *cv = record_json(&imbalance, RECORD_IMBALANCE_cv);
    json_t *dead = record_json(&imbalance, RECORD_IMBALANCE_dead);
    for (int l = 0; l < v->layers; l++) {
        json_t *m = json_array_get(max_mean, (size_t)l);
        json_t *c = json_array_get(cv, (size_t)l);
        json_t *d = json_array_get(dead, (size_t)l);
        v->max_mean[l] = json_is_number(m) ? json_number_value(m) : NAN;
        v->cv[l] = json_is_number(c) ? json_number_value(c) : NAN;
        v->dead[l] = json_is_integer(d) ? (int)json_integer_value(d) : -1;
    }
}

static void apply_ranks(view *v, const record_value *step)
{
    v->rank_count = 0;
    size_t n = record_count(step, RECORD_STEP_ranks);
    for (size_t i = 0; i < n && i < VIEW_MAX_RANKS; i++) {
        record_value q;
        record_part(step, RECORD_STEP_ranks, i, &q);
        view_rank *k = &v->ranks[v->rank_count++];
        k->expert_ms = record_real(&q, RECORD_RANK_expert_ms);
        k->dense_ms = record_real(&q, RECORD_RANK_dense_ms);
        k->alltoall_ms = record_real(&q, RECORD_RANK_alltoall_ms);
        k->allreduce_ms = record_real(&q, RECORD_RANK_allreduce_ms);
        k->idle_ms = record_real(&q, RECORD_RANK_idle_ms);
        k->tokens = record_real(&q, RECORD_RANK_tokens);
        k->rows = int_of(&q, RECORD_RANK_rows);
        k->experts = int_of(&q, RECORD_RANK_experts);
        k->expert_flops_per_s = record_real(&q, RECORD_RANK_expert_flops_per_s);
        k->state_gb = record_real(&q, RECORD_RANK_state_gb);
        k->capacity_gb = record_real(&q, RECORD_RANK_capacity_gb);
        k->rss_gb = record_real(&q, RECORD_RANK_rss_gb);
        k->used_gb = record_real(&q, RECORD_RANK_expert_state_gb) +
                     record_real(&q, RECORD_RANK_dense_state_gb) +
                     record_real(&q, RECORD_RANK_activations_gb) +
                     record_real(&q, RECORD_RANK_staging_gb);
    }
}

/* The step record's "splits": [[layer, expert, [[rank, share], ...]]],
 * the expert's rank first. */
static void apply_splits(view *v, json_t *splits)
{
    size_t cells = (size_t)v->layers * v->experts;
    for (size_t i = 0; i < cells; i++) {
        v->kept[i] = 1.0;
        v->holders[i] = 1;
    }
    v->split_experts = 0;
    for (size_t i = 0; i < json_array_size(splits); i++) {
        json_t *s = json_array_get(splits, i);
        json_t *parts = json_array_get(s, 2);
        json_int_t l = json_integer_value(json_array_get(s, 0));
        json_int_t e = json_integer_value(json_array_get(s, 1));
        if (l < 0 || l >= v->layers || e < 0 || e >= v->experts ||
            json_array_size(parts) < 2)
            continue;
        size_t at = (size_t)l * v->experts + (size_t)e;
        v->kept[at] = json_number_value(json_array_get(
            json_array_get(parts, 0), 1));
        v->holders[at] = (int)json_array_size(parts);
        v->split_experts++;
    }
}

/* The figures that are averaged (see view_figure). */
static void apply_figures(view *v, const record_value *r)
{
    double tokens = record_real(r, RECORD_STEP_tokens);
    figure_update(&v->tokens_per_s, record_real(r, RECORD_STEP_tokens_per_s),
                  v->step_ms);
    figure_update(&v->mfu, record_real(r, RECORD_STEP_mfu), v->step_ms);
    figure_update(&v->efficiency, record_real(r, RECORD_STEP_ideal_share),
                  v->step_ms);
    figure_update(&v->cost_per_hour, record_real(r, RECORD_STEP_cost_per_hour),
                  v->step_ms);
    figure_update(&v->cost_per_mtok, record_real(r, RECORD_STEP_cost_per_mtok),
                  tokens);
    figure_update(&v->cost_per_btok, record_real(r, RECORD_STEP_cost_per_btok),
                  tokens);
    figure_update(&v->cost_per_ttok, record_real(r, RECORD_STEP_cost_per_ttok),
                  tokens);
}

static void apply_step(view *v, const record_value *r)
{
    v->step = int_of(r, RECORD_STEP_step);
    v->spikes = (int)record_int(r, RECORD_STEP_spikes, 0);
    v->loss = record_real(r, RECORD_STEP_loss);
    v->lr = record_real(r, RECORD_STEP_lr);
    v->model_flops_per_s = record_real(r, RECORD_STEP_model_flops_per_s);
    v->elapsed_s = record_real(r, RECORD_STEP_elapsed_s);
    v->step_ms = record_real(r, RECORD_STEP_step_ms);
    apply_figures(v, r);
    if (v->have_run) {
        read_grid(v->expert_load, record_json(r, RECORD_STEP_expert_load),
                  v->layers, v->experts);
        read_grid(v->placement, record_json(r, RECORD_STEP_placement),
                  v->layers, v->experts);
        v->have_load_ema = read_real_grid(
            v->load_ema, record_json(r, RECORD_STEP_load_ema), v->layers,
            v->experts);
        apply_imbalance(v, r);
        apply_splits(v, record_json(r, RECORD_STEP_splits));
    }
    v->placement_version = int_of(r, RECORD_STEP_placement_version);
    apply_ranks(v, r);
    long long straggler = record_int(r, RECORD_STEP_straggler, -1);
    v->straggler = straggler >= 0 && straggler < v->rank_count
                       ? (int)straggler
                       : -1;
    /* older engines publish none: keep the window empty */
    if (record_json(r, RECORD_STEP_straggler))
        v->stragglers[v->straggler_count++ % VIEW_STRAGGLER_WINDOW] =
            v->straggler;
    record_history(v, v->step, v->loss, NAN);
    learn_state(v, r, RECORD_STEP_state);
    v->have_step = 1;
}

static void apply_plan(view *v, const record_value *r)
{
    view_plan *p = &v->plan;
    p->have = 1;
    p->step = int_of(r, RECORD_PLAN_step);
    p->trigger = record_enum(r, RECORD_PLAN_trigger, record_trigger_names);
    p->applied = record_bool(r, RECORD_PLAN_applied);
    p->moves = (int)record_int(r, RECORD_PLAN_changes,
                               (long long)record_count(r, RECORD_PLAN_moves));
    p->splits = (int)record_count(r, RECORD_PLAN_splits);
    p->before_ms = record_real(r, RECORD_PLAN_predicted_before_ms);
    p->after_ms = record_real(r, RECORD_PLAN_predicted_after_ms);
    p->gain = record_real(r, RECORD_PLAN_predicted_gain);
    p->moved_bytes = record_real(r, RECORD_PLAN_moved_bytes);
    /* Only the policy's own turns plan as "auto" or "suggest". */
    int trigger = record_enum(r, RECORD_PLAN_trigger, record_trigger_names);
    if (trigger == RECORD_TRIGGER_AUTO || trigger == RECORD_TRIGGER_REVERT)
        v->policy = CONFIG_POLICY_AUTO;
    else if (trigger == RECORD_TRIGGER_SUGGEST)
        v->policy = CONFIG_POLICY_SUGGEST;
    v->plan_before_event = 1;
}

static char *ms_text(char out[32], double ms)
{
    if (isfinite(ms))
        snprintf(out, 32, "%.3g", ms);
    else
        snprintf(out, 32, "n/a");
    return out;
}

static void apply_plan_result(view *v, const record_value *r)
{
    view_plan_result *p = &v->plan_result;
    p->have = 1;
    p->step = int_of(r, RECORD_PLAN_RESULT_step);
    p->applied_step = int_of(r, RECORD_PLAN_RESULT_applied_step);
    p->steps = int_of(r, RECORD_PLAN_RESULT_steps);
    p->before_ms = record_real(r, RECORD_PLAN_RESULT_before_ms);
    p->predicted_ms = record_real(r, RECORD_PLAN_RESULT_predicted_ms);
    p->measured_ms = record_real(r, RECORD_PLAN_RESULT_measured_ms);
    p->delivered = record_bool(r, RECORD_PLAN_RESULT_delivered);
    p->noise_ms = record_real(r, RECORD_PLAN_RESULT_noise_ms);
    copy_string(p->verdict, sizeof p->verdict, r, RECORD_PLAN_RESULT_verdict);
    char text[VIEW_EVENT_BYTES], predicted[32], measured[32], before[32],
        noise[32];
    int n = snprintf(text, sizeof text, "step %d: plan at step %d: predicted "
                     "%s ms, measured %s ms over %d steps (before %s ms)",
                     p->step, p->applied_step,
                     ms_text(predicted, p->predicted_ms),
                     ms_text(measured, p->measured_ms), p->steps,
                     ms_text(before, p->before_ms));
    if (p->verdict[0] && n > 0 && (size_t)n < sizeof text)
        snprintf(text + n, sizeof text - (size_t)n, ": %s (noise %s ms)",
                 strcmp(p->verdict, "noise") == 0 ? "inside the noise"
                                                  : p->verdict,
                 ms_text(noise, p->noise_ms));
    view_event(v, text);
}

/* Commands whose replies restate them ("lr 0.0001 from step 58"): their
 * events are logged with the reply alone, as are refusals, whose reasons
 * name their command ("apply: one rank holds every expert; ..."). Keyed
 * by the command's name, the first word of the grammar. */
static const char *const restating_commands[] = {"lr", "policy", NULL};

static int restates(const char *command)
{
    if (!command)
        return 0;
    return config_enum_lookup(restating_commands, command,
                              strcspn(command, " ")) >= 0;
}

static void apply_event(view *v, const record_value *r)
{
    const char *command = record_string(r, RECORD_EVENT_command);
    const char *reply = record_string(r, RECORD_EVENT_reply);
    int step = int_of(r, RECORD_EVENT_step);
    int refused = record_has(r, RECORD_EVENT_ok) &&
                  !record_bool(r, RECORD_EVENT_ok);
    int origin = record_enum(r, RECORD_EVENT_origin, record_origin_names);
    learn_state(v, r, RECORD_EVENT_state);
    reply = reply && *reply ? reply : NULL;
    char text[VIEW_EVENT_BYTES];
    /* The policy's own turn: say so, rather than show it as if someone
     * had set the policy. */
    if (origin == RECORD_ORIGIN_POLICY)
        snprintf(text, sizeof text, "step %d: %s plan: %s", step,
                 v->policy == CONFIG_POLICY_AUTO ? "auto" : "suggested",
                 reply ? reply : "");
    else if (reply && (restates(command) || refused))
        snprintf(text, sizeof text, "step %d: %s", step, reply);
    else
        snprintf(text, sizeof text, "step %d: %s%s%s", step,
                 command ? command : "?", reply ? ": " : "",
                 reply ? reply : "");
    if (refused)
        snprintf(text + strlen(text), sizeof text - strlen(text),
                 " (refused)");
    view_event(v, text);
    v->plan_before_event = 0;
    snprintf(v->last_command, sizeof v->last_command, "%s",
             command ? command : "");
    snprintf(v->last_reply, sizeof v->last_reply, "%s", reply ? reply : "");
    v->last_event_step = step;
    v->last_event_ok = !refused;
    v->last_event_duration_ms = record_real(r, RECORD_EVENT_duration_ms);
    /* Only a command from the socket is answered by a reply as well. */
    v->last_event_index =
        origin == RECORD_ORIGIN_CONTROL ? v->event_count - 1 : -1;
}

static void apply_reply(view *v, const record_value *r)
{
    int ok = record_bool(r, RECORD_REPLY_ok);
    const char *command = record_string(r, RECORD_REPLY_command);
    const char *message =
        record_string(r, ok ? RECORD_REPLY_message : RECORD_REPLY_error);
    message = message ? message : "";
    learn_state(v, r, RECORD_REPLY_state);
    /* A command applied at a step boundary was logged already by its
     * event record (the same command at the same step): show it once. */
    record_state state;
    int logged = command && v->last_event_index >= 0 &&
                 v->last_event_index > v->event_count - VIEW_EVENTS &&
                 record_state_read(r, RECORD_REPLY_state, &state) == 0 &&
                 state.step == v->last_event_step &&
                 strcmp(command, v->last_command) == 0;
    if (logged) {
        v->last_event_index = -1;
        return;
    }
    char text[VIEW_EVENT_BYTES];
    snprintf(text, sizeof text, "%s %s", ok ? "ok:" : "error:", message);
    view_event(v, text);
}

static void apply_val(view *v, const record_value *r)
{
    int step = int_of(r, RECORD_VAL_step);
    v->val_loss = record_real(r, RECORD_VAL_val_loss);
    v->have_val = isfinite(v->val_loss);
    record_history(v, step, NAN, v->val_loss);
    char text[VIEW_EVENT_BYTES];
    snprintf(text, sizeof text, "step %d: val_loss %.4f", step, v->val_loss);
    view_event(v, text);
}

static void apply_checkpoint(view *v, const record_value *r)
{
    const char *path = record_string(r, RECORD_CHECKPOINT_path);
    char text[VIEW_EVENT_BYTES];
    snprintf(text, sizeof text, "step %d: checkpoint %s",
             int_of(r, RECORD_CHECKPOINT_step), path ? path : "?");
    view_event(v, text);
}

/* A roll back: the history after the step it continues from is undone. */
static void truncate_history(view *v, int step)
{
    if (v->history_count == 0)
        return;
    int keep = step < v->history_first_step
                   ? 0
                   : (step - v->history_first_step) / v->history_stride + 1;
    for (int i = keep; i < v->history_count; i++) {
        v->loss_history[i] = v->val_history[i] = NAN;
        v->loss_n[i] = v->val_n[i] = 0;
    }
    if (keep < v->history_count)
        v->history_count = keep;
    if (v->history_last_step > step)
        v->history_last_step = step;
    if (v->history_last_val_step > step)
        v->history_last_val_step = step;
}

static void apply_spike(view *v, const record_value *r)
{
    int step = int_of(r, RECORD_SPIKE_step);
    int action = record_enum(r, RECORD_SPIKE_action,
                             record_spike_action_names);
    const char *reason = record_string(r, RECORD_SPIKE_reason);
    char text[VIEW_EVENT_BYTES];
    v->spikes = int_of(r, RECORD_SPIKE_spikes);
    if (action == RECORD_SPIKE_ROLLBACK) {
        const char *path = record_string(r, RECORD_SPIKE_checkpoint);
        int resumed = int_of(r, RECORD_SPIKE_resumed_step);
        snprintf(text, sizeof text, "step %d: spikes persist: rolled back "
                 "to %s (step %d)", step, path ? path : "?", resumed);
        truncate_history(v, resumed);
    } else if (action == RECORD_SPIKE_LOWER_LR) {
        snprintf(text, sizeof text, "step %d: spikes repeat: lr x %g "
                 "through step %lld", step,
                 record_real(r, RECORD_SPIKE_lr_factor),
                 record_int(r, RECORD_SPIKE_until_step, -1));
    } else {
        long long again = record_int(r, RECORD_SPIKE_requeued_to, -1);
        char when[48] = "; batch dropped";
        if (again >= 0)
            snprintf(when, sizeof when, "; batch again at %lld", again);
        snprintf(text, sizeof text, "step %d: spike skipped: %s%s", step,
                 reason ? reason : "?", when);
    }
    view_event(v, text);
}

static void apply_summary(view *v, const record_value *r)
{
    v->have_summary = 1;
    v->summary_last_step = int_of(r, RECORD_SUMMARY_last_step);
    v->summary_loss = record_real(r, RECORD_SUMMARY_loss);
    v->summary_val_loss = record_real(r, RECORD_SUMMARY_val_loss);
    v->summary_tokens_per_s = record_real(r, RECORD_SUMMARY_tokens_per_s);
    v->summary_cost_per_mtok = record_real(r, RECORD_SUMMARY_cost_per_mtok);
    v->summary_mfu = record_real(r, RECORD_SUMMARY_mfu);
    v->summary_elapsed_s = record_real(r, RECORD_SUMMARY_elapsed_s);
    copy_string(v->summary_checkpoint, sizeof v->summary_checkpoint, r,
                RECORD_SUMMARY_checkpoint);
    int status = record_enum(r, RECORD_SUMMARY_status, record_status_names);
    snprintf(v->status, sizeof v->status, "%s",
             status == RECORD_STATUS_STOPPED ? "stopped" : "done");
    char text[VIEW_EVENT_BYTES];
    snprintf(text, sizeof text, "run %s at step %d", v->status,
             int_of(r, RECORD_SUMMARY_last_step));
    view_event(v, text);
}

/* What each record type does to the view. */
static void (*const view_appliers[RECORD_TYPE_COUNT])(view *,
                                                      const record_value *) = {
    [RECORD_TYPE_RUN] = apply_run,
    [RECORD_TYPE_STEP] = apply_step,
    [RECORD_TYPE_VAL] = apply_val,
    [RECORD_TYPE_CHECKPOINT] = apply_checkpoint,
    [RECORD_TYPE_EVENT] = apply_event,
    [RECORD_TYPE_PLAN] = apply_plan,
    [RECORD_TYPE_PLAN_RESULT] = apply_plan_result,
    [RECORD_TYPE_SPIKE] = apply_spike,
    [RECORD_TYPE_SUMMARY] = apply_summary,
    [RECORD_TYPE_REPLY] = apply_reply,
};

int view_apply(view *v, const char *line)
{
    record_value r;
    char why[128];
    if (record_decode(line, &r, why, sizeof why) < 0) {
        /* A record of a type this console does not know is skipped. */
        int is_record = r.json != NULL;
        record_free(&r);
        return is_record ? 0 : -1;
    }
    const char *run_id = record_string(&r, RECORD_COMMON_run_id);
    if (run_id)
        snprintf(v->run_id, sizeof v->run_id, "%s", run_id);
    if (view_appliers[r.type])
        view_appliers[r.type](v, &r);
    record_free(&r);
    return 0;
}

int view_load_history(view *v, const char *metrics_path)
{
    FILE *f = fopen(metrics_path, "r");
    if (!f)
        return -1;
    static const char step_head[] = "{\"type\":\"step\",\"step\":";
    static const char loss_key[] = ",\"loss\":";
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int count = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n')
            line[n - 1] = '\0';
        if (strncmp(line, step_head, sizeof step_head - 1) == 0) {
            /* Step records lead with step and loss: read just those. */
            char *end, *after;
            long step = strtol(line + sizeof step_head - 1, &end, 10);
            if (strncmp(end, loss_key, sizeof loss_key - 1) == 0) {
                double loss = strtod(end + sizeof loss_key - 1, &after);
                if (after != end + sizeof loss_key - 1)
                    record_history(v, (int)step, loss, NAN);
            }
            count++;
            continue;
        }
        /* The run record is the live one's; an earlier segment's summary
         * (a resumed run) is not this job's end. */
        if (strncmp(line, "{\"type\":\"run\"", 13) == 0 ||
            strncmp(line, "{\"type\":\"summary\"", 17) == 0)
            continue;
        if (view_apply(v, line) == 0)
            count++;
    }
    free(line);
    fclose(f);
    v->history_loaded = 1;
    return count;
}

int view_straggler(const view *v, double *share)
{
    int n = v->straggler_count < VIEW_STRAGGLER_WINDOW
                ? v->straggler_count
                : VIEW_STRAGGLER_WINDOW;
    int counts[VIEW_MAX_RANKS] = {0};
    int best = -1;
    for (int i = 0; i < n; i++) {
        int r = v->stragglers[i];
        if (r < 0 || r >= VIEW_MAX_RANKS)
            continue;
        counts[r]++;
        /* Ties go to the latest step's straggler, then the lower rank. */
        if (best < 0 || counts[r] > counts[best])
            best = r;
    }
    if (best >= 0 && v->straggler >= 0 &&
        counts[v->straggler] == counts[best])
        best = v->straggler;
    if (share)
        *share = best >= 0 ? (double)counts[best] / n : NAN;
    return best;
}

int view_cost_now(const view *v, view_cost *out)
{
    if (!v->have_step || !v->cost_per_mtok.valid)
        return 0;
    out->per_hour = v->cost_per_hour.valid ? v->cost_per_hour.avg : NAN;
    out->per_mtok = v->cost_per_mtok.avg;
    out->per_btok = v->cost_per_btok.valid ? v->cost_per_btok.avg : NAN;
    out->per_ttok = v->cost_per_ttok.valid ? v->cost_per_ttok.avg : NAN;
    return 1;
}
