#include "tui/console/view.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const policy_names[] = {"off", "suggest", "auto"};

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
    view_figure *figures[] = {&v->tokens_per_s, &v->mfu, &v->efficiency,
                              &v->cost_per_hour, &v->cost_per_mtok,
                              &v->cost_per_btok, &v->cost_per_ttok};
    for (size_t i = 0; i < sizeof figures / sizeof figures[0]; i++)
        figure_init(figures[i]);
    v->straggler = -1;
    v->policy = VIEW_POLICY_UNKNOWN;
    v->policy_min_gain = NAN;
    v->last_event_index = -1;
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
    return policy >= VIEW_POLICY_OFF && policy <= VIEW_POLICY_AUTO
               ? policy_names[policy]
               : "n/a";
}

static double real_of(json_t *o, const char *key)
{
    json_t *x = json_object_get(o, key);
    return json_is_number(x) ? json_number_value(x) : NAN;
}

static void copy_string(char *out, size_t size, json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    snprintf(out, size, "%s", s ? s : "");
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

static int policy_of_word(const char *word, size_t n)
{
    for (int p = VIEW_POLICY_OFF; p <= VIEW_POLICY_AUTO; p++)
        if (strlen(policy_names[p]) == n &&
            strncmp(word, policy_names[p], n) == 0)
            return p;
    return VIEW_POLICY_UNKNOWN;
}

/* "policy WORD..." at text: the policy it names, or unknown. */
static int policy_at(const char *text)
{
    if (!text || strncmp(text, "policy ", 7) != 0)
        return VIEW_POLICY_UNKNOWN;
    const char *word = text + 7;
    return policy_of_word(word, strcspn(word, " :,;"));
}

/* What the engine writes when a policy is set: "policy auto every 100
 * min-gain 2%: next plan after step 200" or "policy off: ...". */
static void learn_policy_reply(view *v, const char *reply)
{
    int policy = policy_at(reply);
    if (policy == VIEW_POLICY_UNKNOWN)
        return;
    v->policy = (view_policy)policy;
    int every;
    double min_gain_percent;
    const char *rest = strchr(reply + 7, ' ');
    if (rest && sscanf(rest, " every %d min-gain %lf%%", &every,
                       &min_gain_percent) == 2) {
        v->policy_every = every;
        v->policy_min_gain = min_gain_percent / 100;
    }
}

static void apply_run(view *v, json_t *r)
{
    copy_string(v->config, sizeof v->config, r, "config");
    copy_string(v->currency, sizeof v->currency, r, "currency");
    v->steps_total = (int)json_integer_value(json_object_get(r, "steps"));
    v->tokens_per_step =
        (int)json_integer_value(json_object_get(r, "tokens_per_step"));
    v->flops_per_token = real_of(r, "flops_per_token");
    json_t *model = json_object_get(r, "model");
    int layers = (int)json_integer_value(json_object_get(model, "layers"));
    int experts = (int)json_integer_value(json_object_get(model, "experts"));
    layers = layers > 0 ? layers : 0;
    experts = experts > 0 ? experts : 0;
    if (layers != v->layers || experts != v->experts || !v->expert_load) {
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
    json_t *devices = json_object_get(r, "devices");
    v->device_count = 0;
    for (size_t i = 0; i < json_array_size(devices) && i < VIEW_MAX_RANKS;
         i++) {
        json_t *d = json_array_get(devices, i);
        view_device *dev = &v->devices[v->device_count++];
        copy_string(dev->name, sizeof dev->name, d, "name");
        copy_string(dev->backend, sizeof dev->backend, d, "backend");
        dev->price_per_hour = real_of(d, "price_per_hour");
        dev->emulated = json_is_true(json_object_get(d, "emulated"));
    }
    v->have_run = v->expert_load && v->placement && v->kept &&
                  v->holders && v->load_ema &&
                  v->max_mean && v->cv && v->dead;
    if (strcmp(v->status, "starting") == 0)
        snprintf(v->status, sizeof v->status, "running");
}

static void record_history(view *v, int step, double loss, double val)
{
    if (v->history_count == 0)
        v->history_first_step = step;
    int index = step - v->history_first_step;
    if (index < 0)
        return;
    if (index >= VIEW_HISTORY) {
        /* Keep the newest: shift by what does not fit. */
        int drop = index - VIEW_HISTORY + 1;
        memmove(v->loss_history, v->loss_history + drop,
                (size_t)(VIEW_HISTORY - drop) * sizeof(double));
        memmove(v->val_history, v->val_history + drop,
                (size_t)(VIEW_HISTORY - drop) * sizeof(double));
        for (int i = VIEW_HISTORY - drop; i < VIEW_HISTORY; i++)
            v->loss_history[i] = v->val_history[i] = NAN;
        v->history_first_step += drop;
        index = VIEW_HISTORY - 1;
    }
    if (!isnan(loss))
        v->loss_history[index] = loss;
    if (!isnan(val))
        v->val_history[index] = val;
    if (index + 1 > v->history_count)
        v->history_count = index + 1;
}

/* Per-layer imbalance as the engine measured it; layers it lacks are
 * n/a. */
static void apply_imbalance(view *v, json_t *imbalance)
{
    v->have_imbalance = json_is_object(imbalance);
    if (!v->have_imbalance)
        return;
    json_t *max_mean = json_object_get(imbalance, "max_mean");
    json_t *cv = json_object_get(imbalance, "cv");
    json_t *dead = json_object_get(imbalance, "dead");
    for (int l = 0; l < v->layers; l++) {
        json_t *m = json_array_get(max_mean, (size_t)l);
        json_t *c = json_array_get(cv, (size_t)l);
        json_t *d = json_array_get(dead, (size_t)l);
        v->max_mean[l] = json_is_number(m) ? json_number_value(m) : NAN;
        v->cv[l] = json_is_number(c) ? json_number_value(c) : NAN;
        v->dead[l] = json_is_integer(d) ? (int)json_integer_value(d) : -1;
    }
}

static void apply_ranks(view *v, json_t *ranks)
{
    v->rank_count = 0;
    for (size_t i = 0; i < json_array_size(ranks) && i < VIEW_MAX_RANKS; i++) {
        json_t *q = json_array_get(ranks, i);
        view_rank *k = &v->ranks[v->rank_count++];
        k->expert_ms = real_of(q, "expert_ms");
        k->dense_ms = real_of(q, "dense_ms");
        k->alltoall_ms = real_of(q, "alltoall_ms");
        k->allreduce_ms = real_of(q, "allreduce_ms");
        k->idle_ms = real_of(q, "idle_ms");
        k->tokens = real_of(q, "tokens");
        k->experts = (int)json_integer_value(json_object_get(q, "experts"));
        k->expert_flops_per_s = real_of(q, "expert_flops_per_s");
        k->state_gb = real_of(q, "state_gb");
        k->capacity_gb = real_of(q, "capacity_gb");
        k->rss_gb = real_of(q, "rss_gb");
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

static void apply_step(view *v, json_t *r)
{
    v->step = (int)json_integer_value(json_object_get(r, "step"));
    v->loss = real_of(r, "loss");
    v->lr = real_of(r, "lr");
    v->model_flops_per_s = real_of(r, "model_flops_per_s");
    v->elapsed_s = real_of(r, "elapsed_s");
    v->step_ms = real_of(r, "step_ms");
    double tokens_per_s = real_of(r, "tokens_per_s");
    double ideal = real_of(r, "ideal_tokens_per_s");
    double tokens = real_of(r, "tokens");
    figure_update(&v->tokens_per_s, tokens_per_s, v->step_ms);
    figure_update(&v->mfu, real_of(r, "mfu"), v->step_ms);
    figure_update(&v->efficiency, ideal > 0 ? tokens_per_s / ideal : NAN,
                  v->step_ms);
    figure_update(&v->cost_per_hour, real_of(r, "cost_per_hour"),
                  v->step_ms);
    figure_update(&v->cost_per_mtok, real_of(r, "cost_per_mtok"), tokens);
    figure_update(&v->cost_per_btok, real_of(r, "cost_per_btok"), tokens);
    figure_update(&v->cost_per_ttok, real_of(r, "cost_per_ttok"), tokens);
    if (v->have_run) {
        read_grid(v->expert_load, json_object_get(r, "expert_load"),
                  v->layers, v->experts);
        read_grid(v->placement, json_object_get(r, "placement"), v->layers,
                  v->experts);
        v->have_load_ema = read_real_grid(
            v->load_ema, json_object_get(r, "load_ema"), v->layers,
            v->experts);
        apply_imbalance(v, json_object_get(r, "imbalance"));
        apply_splits(v, json_object_get(r, "splits"));
    }
    v->placement_version =
        (int)json_integer_value(json_object_get(r, "placement_version"));
    apply_ranks(v, json_object_get(r, "ranks"));
    json_t *straggler = json_object_get(r, "straggler");
    v->straggler = json_is_integer(straggler) &&
                           json_integer_value(straggler) >= 0 &&
                           json_integer_value(straggler) < v->rank_count
                       ? (int)json_integer_value(straggler)
                       : -1;
    if (straggler) /* older engines publish none: keep the window empty */
        v->stragglers[v->straggler_count++ % VIEW_STRAGGLER_WINDOW] =
            v->straggler;
    record_history(v, v->step, v->loss, NAN);
    v->have_step = 1;
}

static void apply_plan(view *v, json_t *r)
{
    view_plan *p = &v->plan;
    p->have = 1;
    p->step = (int)json_integer_value(json_object_get(r, "step"));
    copy_string(p->trigger, sizeof p->trigger, r, "trigger");
    p->applied = json_is_true(json_object_get(r, "applied"));
    json_t *changes = json_object_get(r, "changes");
    p->moves = json_is_integer(changes)
                   ? (int)json_integer_value(changes)
                   : (int)json_array_size(json_object_get(r, "moves"));
    p->splits = (int)json_array_size(json_object_get(r, "splits"));
    p->before_ms = real_of(r, "predicted_before_ms");
    p->after_ms = real_of(r, "predicted_after_ms");
    p->gain = real_of(r, "predicted_gain");
    p->moved_bytes = real_of(r, "moved_bytes");
    /* Only the policy's own turns plan as "auto" or "suggest". */
    int policy = policy_of_word(p->trigger, strlen(p->trigger));
    if (policy == VIEW_POLICY_AUTO || policy == VIEW_POLICY_SUGGEST)
        v->policy = (view_policy)policy;
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

static void apply_plan_result(view *v, json_t *r)
{
    view_plan_result *p = &v->plan_result;
    p->have = 1;
    p->step = (int)json_integer_value(json_object_get(r, "step"));
    p->applied_step =
        (int)json_integer_value(json_object_get(r, "applied_step"));
    p->steps = (int)json_integer_value(json_object_get(r, "steps"));
    p->before_ms = real_of(r, "before_ms");
    p->predicted_ms = real_of(r, "predicted_ms");
    p->measured_ms = real_of(r, "measured_ms");
    char text[VIEW_EVENT_BYTES], predicted[32], measured[32], before[32];
    snprintf(text, sizeof text, "step %d: plan at step %d: predicted %s ms, "
             "measured %s ms over %d steps (before %s ms)", p->step,
             p->applied_step, ms_text(predicted, p->predicted_ms),
             ms_text(measured, p->measured_ms), p->steps,
             ms_text(before, p->before_ms));
    view_event(v, text);
}

/* Replies that restate their command ("lr 0.0001 from step 58") are
 * logged alone. */
static int says_command(const char *reply, const char *command)
{
    size_t n = strlen(command);
    return strncmp(reply, command, n) == 0 &&
           (reply[n] == '\0' || reply[n] == ' ' || reply[n] == ':');
}

static void apply_event(view *v, json_t *r)
{
    const char *command = json_string_value(json_object_get(r, "command"));
    const char *reply = json_string_value(json_object_get(r, "reply"));
    int step = (int)json_integer_value(json_object_get(r, "step"));
    char text[VIEW_EVENT_BYTES];
    /* The policy's own turn is logged as the command "policy auto" (or
     * suggest), after its plan record: say so, rather than show it as if
     * someone had set the policy. */
    int policy = policy_at(command);
    int policy_turn = v->plan_before_event && policy != VIEW_POLICY_UNKNOWN &&
                      strcmp(command + 7, v->plan.trigger) == 0;
    if (policy_turn)
        snprintf(text, sizeof text, "step %d: %s plan: %s", step,
                 policy == VIEW_POLICY_AUTO ? "auto" : "suggested",
                 reply ? reply : "");
    else if (reply && command && says_command(reply, command))
        snprintf(text, sizeof text, "step %d: %s", step, reply);
    else
        snprintf(text, sizeof text, "step %d: %s%s%s", step,
                 command ? command : "?", reply ? ": " : "",
                 reply ? reply : "");
    view_event(v, text);
    v->plan_before_event = 0;
    snprintf(v->last_command, sizeof v->last_command, "%s",
             command ? command : "");
    snprintf(v->last_reply, sizeof v->last_reply, "%s", reply ? reply : "");
    v->last_event_index = v->event_count - 1;
    if (policy != VIEW_POLICY_UNKNOWN) {
        v->policy = (view_policy)policy;
        if (!policy_turn)
            learn_policy_reply(v, reply);
    }
    if (command && strcmp(command, "pause") == 0)
        snprintf(v->status, sizeof v->status, "paused");
    else if (command && strcmp(command, "resume") == 0)
        snprintf(v->status, sizeof v->status, "running");
}

static void apply_reply(view *v, json_t *r)
{
    int ok = json_is_true(json_object_get(r, "ok"));
    const char *command = json_string_value(json_object_get(r, "command"));
    const char *message =
        json_string_value(json_object_get(r, ok ? "message" : "error"));
    message = message ? message : "";
    if (ok && command && strcmp(command, "status") == 0) {
        const char *at = strstr(message, "policy ");
        int policy = policy_at(at);
        if (policy != VIEW_POLICY_UNKNOWN)
            v->policy = (view_policy)policy;
    } else if (ok && policy_at(command) != VIEW_POLICY_UNKNOWN) {
        learn_policy_reply(v, message);
    }
    /* A command applied at a step boundary was logged already, with this
     * reply, by its event record: show it once, marked if refused. */
    int logged = command && v->last_event_index >= 0 &&
                 v->last_event_index > v->event_count - VIEW_EVENTS &&
                 strcmp(command, v->last_command) == 0 &&
                 strcmp(message, v->last_reply) == 0;
    char text[VIEW_EVENT_BYTES];
    if (logged) {
        if (!ok) {
            char *slot = v->events[v->last_event_index % VIEW_EVENTS];
            snprintf(text, sizeof text, "%.*s (refused)",
                     (int)sizeof text - 11, slot);
            snprintf(slot, VIEW_EVENT_BYTES, "%s", text);
        }
        v->last_event_index = -1;
        return;
    }
    snprintf(text, sizeof text, "%s %s", ok ? "ok:" : "error:", message);
    view_event(v, text);
}

int view_apply(view *v, const char *line)
{
    json_error_t error;
    json_t *r = json_loads(line, 0, &error);
    const char *type = json_string_value(json_object_get(r, "type"));
    if (!type) {
        json_decref(r);
        return -1;
    }
    char text[VIEW_EVENT_BYTES];
    if (strcmp(type, "run") == 0) {
        apply_run(v, r);
    } else if (strcmp(type, "step") == 0) {
        apply_step(v, r);
    } else if (strcmp(type, "val") == 0) {
        int step = (int)json_integer_value(json_object_get(r, "step"));
        v->val_loss = real_of(r, "val_loss");
        v->have_val = isfinite(v->val_loss);
        record_history(v, step, NAN, v->val_loss);
        snprintf(text, sizeof text, "step %d: val_loss %.4f", step,
                 v->val_loss);
        view_event(v, text);
    } else if (strcmp(type, "event") == 0) {
        apply_event(v, r);
    } else if (strcmp(type, "plan") == 0) {
        apply_plan(v, r);
    } else if (strcmp(type, "plan_result") == 0) {
        apply_plan_result(v, r);
    } else if (strcmp(type, "checkpoint") == 0) {
        const char *path = json_string_value(json_object_get(r, "path"));
        snprintf(text, sizeof text, "step %d: checkpoint %s",
                 (int)json_integer_value(json_object_get(r, "step")),
                 path ? path : "?");
        view_event(v, text);
    } else if (strcmp(type, "reply") == 0) {
        apply_reply(v, r);
    } else if (strcmp(type, "summary") == 0) {
        const char *status = json_string_value(json_object_get(r, "status"));
        snprintf(v->status, sizeof v->status, "%s",
                 status && strcmp(status, "stopped") == 0 ? "stopped"
                                                           : "done");
        snprintf(text, sizeof text, "run %s at step %d", v->status,
                 (int)json_integer_value(json_object_get(r, "last_step")));
        view_event(v, text);
    }
    json_decref(r);
    return 0;
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

static int price_per_hour_of_devices(const view *v, double *per_hour)
{
    if (!v->have_run || v->device_count == 0)
        return 0;
    double sum = 0;
    for (int i = 0; i < v->device_count; i++) {
        if (!isfinite(v->devices[i].price_per_hour))
            return 0;
        sum += v->devices[i].price_per_hour;
    }
    *per_hour = sum;
    return 1;
}

int view_cost_now(const view *v, view_cost *out)
{
    if (!v->have_step)
        return 0;
    if (v->cost_per_mtok.valid) {
        out->per_hour = v->cost_per_hour.valid ? v->cost_per_hour.avg : NAN;
        out->per_mtok = v->cost_per_mtok.avg;
        out->per_btok = v->cost_per_btok.valid ? v->cost_per_btok.avg
                                               : out->per_mtok * 1e3;
        out->per_ttok = v->cost_per_ttok.valid ? v->cost_per_ttok.avg
                                               : out->per_mtok * 1e6;
        return 1;
    }
    double per_hour;
    if (!price_per_hour_of_devices(v, &per_hour) || !v->tokens_per_s.valid ||
        !(v->tokens_per_s.avg > 0))
        return 0;
    out->per_hour = per_hour;
    out->per_mtok = per_hour / 3600.0 / v->tokens_per_s.avg * 1e6;
    out->per_btok = out->per_mtok * 1e3;
    out->per_ttok = out->per_mtok * 1e6;
    return 1;
}
