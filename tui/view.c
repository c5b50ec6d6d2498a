#include "tui/view.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void view_init(view *v)
{
    memset(v, 0, sizeof *v);
    snprintf(v->status, sizeof v->status, "starting");
    for (int i = 0; i < VIEW_HISTORY; i++)
        v->loss_history[i] = v->val_history[i] = NAN;
}

void view_finish(view *v)
{
    free(v->expert_load);
    free(v->placement);
    v->expert_load = v->placement = NULL;
}

void view_event(view *v, const char *text)
{
    /* Long lines are cut to the log's width. */
    char *slot = v->events[v->event_count % VIEW_EVENTS];
    size_t n = strlen(text);
    if (n >= sizeof v->events[0])
        n = sizeof v->events[0] - 1;
    memcpy(slot, text, n);
    slot[n] = '\0';
    v->event_count++;
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
    if (layers != v->layers || experts != v->experts || !v->expert_load) {
        free(v->expert_load);
        free(v->placement);
        size_t n = (size_t)(layers > 0 ? layers : 0) *
                   (size_t)(experts > 0 ? experts : 0);
        v->expert_load = calloc(n ? n : 1, sizeof *v->expert_load);
        v->placement = calloc(n ? n : 1, sizeof *v->placement);
        v->layers = layers;
        v->experts = experts;
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
    v->have_run = v->expert_load && v->placement;
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

static void apply_step(view *v, json_t *r)
{
    v->step = (int)json_integer_value(json_object_get(r, "step"));
    v->loss = real_of(r, "loss");
    v->lr = real_of(r, "lr");
    v->tokens_per_s = real_of(r, "tokens_per_s");
    v->model_flops_per_s = real_of(r, "model_flops_per_s");
    v->elapsed_s = real_of(r, "elapsed_s");
    v->step_ms = real_of(r, "step_ms");
    if (isfinite(v->tokens_per_s))
        v->smoothed_tokens_per_s =
            v->have_step && isfinite(v->smoothed_tokens_per_s)
                ? 0.9 * v->smoothed_tokens_per_s + 0.1 * v->tokens_per_s
                : v->tokens_per_s;
    if (v->have_run) {
        read_grid(v->expert_load, json_object_get(r, "expert_load"),
                  v->layers, v->experts);
        read_grid(v->placement, json_object_get(r, "placement"), v->layers,
                  v->experts);
    }
    v->placement_version =
        (int)json_integer_value(json_object_get(r, "placement_version"));
    json_t *ranks = json_object_get(r, "ranks");
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
    }
    record_history(v, v->step, v->loss, NAN);
    v->have_step = 1;
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
    char text[200];
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
        const char *command = json_string_value(json_object_get(r, "command"));
        int step = (int)json_integer_value(json_object_get(r, "step"));
        snprintf(text, sizeof text, "step %d: %s", step,
                 command ? command : "?");
        view_event(v, text);
        if (command && strcmp(command, "pause") == 0)
            snprintf(v->status, sizeof v->status, "paused");
        else if (command && strcmp(command, "resume") == 0)
            snprintf(v->status, sizeof v->status, "running");
    } else if (strcmp(type, "checkpoint") == 0) {
        const char *path = json_string_value(json_object_get(r, "path"));
        snprintf(text, sizeof text, "step %d: checkpoint %s",
                 (int)json_integer_value(json_object_get(r, "step")),
                 path ? path : "?");
        view_event(v, text);
    } else if (strcmp(type, "reply") == 0) {
        int ok = json_is_true(json_object_get(r, "ok"));
        const char *message = json_string_value(
            json_object_get(r, ok ? "message" : "error"));
        snprintf(text, sizeof text, "%s %s", ok ? "ok:" : "error:",
                 message ? message : "");
        view_event(v, text);
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

int view_price_per_hour(const view *v, double *per_hour)
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

int view_cost_per_mtok(const view *v, double *cost)
{
    double per_hour;
    if (!view_price_per_hour(v, &per_hour) || !v->have_step ||
        !(v->smoothed_tokens_per_s > 0))
        return 0;
    *cost = per_hour / 3600.0 / v->smoothed_tokens_per_s * 1e6;
    return 1;
}
