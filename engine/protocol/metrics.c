#include "engine/protocol/metrics.h"

#include <jansson.h>

#include "engine/protocol/control.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct metrics_sink {
    FILE *f; /* NULL: no file */
    int owned;
    char path[CONFIG_PATH_MAX];
    control_server *control;
};

void metrics_attach_control(metrics_sink *sink, control_server *s)
{
    sink->control = s;
}

int metrics_open(metrics_sink **out, const char *path, moe_error *err)
{
    metrics_sink *sink = calloc(1, sizeof *sink);
    if (!sink)
        return error_set(err, "out of memory");
    snprintf(sink->path, sizeof sink->path, "%s", path ? path : "");
    if (!path) {
        sink->f = NULL;
    } else if (strcmp(path, "-") == 0) {
        sink->f = stdout;
    } else {
        sink->f = fopen(path, "w");
        sink->owned = 1;
        if (!sink->f) {
            free(sink);
            return error_set_errno(err, "cannot open metrics file %s", path);
        }
    }
    *out = sink;
    return 0;
}

void metrics_close(metrics_sink *sink)
{
    if (!sink)
        return;
    if (sink->owned)
        fclose(sink->f);
    else if (sink->f)
        fflush(sink->f);
    free(sink);
}

/* JSON has no NaN or infinity: a value that is not finite is null. */
static json_t *number(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

static int emit(metrics_sink *sink, json_t *record, moe_error *err)
{
    if (!record)
        return error_set(err, "out of memory building a metrics record");
    char *text = json_dumps(record, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        json_decref(record);
        return error_set(err, "out of memory writing a metrics record");
    }
    int failed = sink->f && (fputs(text, sink->f) == EOF ||
                             fputc('\n', sink->f) == EOF ||
                             fflush(sink->f) != 0);
    /* Clients hear of a record once it is in the file. */
    if (sink->control) {
        control_broadcast(sink->control, text);
        const char *type = json_string_value(json_object_get(record, "type"));
        if (type && strcmp(type, "run") == 0)
            control_remember(sink->control, CONTROL_REMEMBER_RUN, text);
        else if (type && strcmp(type, "step") == 0)
            control_remember(sink->control, CONTROL_REMEMBER_STEP, text);
        else if (type && strcmp(type, "val") == 0)
            control_remember(sink->control, CONTROL_REMEMBER_VAL, text);
    }
    json_decref(record);
    free(text);
    if (failed)
        return error_set_errno(err, "cannot write metrics to %s", sink->path);
    return 0;
}

int metrics_write_run(metrics_sink *sink, const config *cfg, const model *m,
                      int resumed_step, moe_error *err)
{
    const model_dims *d = &m->dims;
    json_t *devices = json_array();
    for (int i = 0; i < cfg->cluster.device_count; i++) {
        const config_device *dev = &cfg->cluster.devices[i];
        json_array_append_new(devices, json_pack(
            "{s:s, s:s, s:i, s:i, s:f, s:f, s:b}", "name", dev->name,
            "backend", config_backend_names[dev->backend], "index", dev->index, "threads",
            dev->threads, "price_per_hour", dev->price_per_hour,
            "peak_tflops", dev->peak_tflops, "emulated", dev->slowdown != 1.0));
    }
    json_t *record = json_pack(
        "{s:s, s:s, s:s, s:o, s:I, s:I, s:f, s:i, s:i, s:{s:i, s:i, s:i, s:i, "
        "s:i, s:i, s:i, s:i, s:i}, s:i, s:s}",
        "type", "run", "config", cfg->name, "source", cfg->source,
        "devices", devices,
        "params", (json_int_t)m->param_count,
        "active_params", (json_int_t)model_active_params(m),
        "flops_per_token", model_flops_per_token(m),
        "tokens_per_step", cfg->train.batch_size * cfg->model.seq_len,
        "steps", cfg->train.steps,
        "model", "vocab", d->V, "d_model", d->C, "layers", d->L, "heads",
        d->H, "seq_len", d->T, "experts", d->E, "top_k", d->K,
        "expert_hidden", d->F, "shared_hidden", d->S,
        "resumed_from", resumed_step, "currency", cfg->cluster.currency);
    if (record)
        json_object_set_new(record, "balance", json_pack(
            "{s:s, s:i, s:f, s:f, s:i}", "policy",
            config_policy_names[cfg->balance.policy], "every", cfg->balance.every,
            "min_gain", cfg->balance.min_gain, "bias_update_rate",
            cfg->balance.bias_update_rate, "routing_warmup_steps",
            cfg->balance.routing_warmup_steps));
    return emit(sink, record, err);
}

/* Per-layer imbalance of this step's load: max/mean, coefficient of
 * variation and dead (unrouted) experts; the load average; cost and MFU. */
static void add_balance(json_t *record, const step_stats *s)
{
    json_t *max_mean = json_array(), *cv = json_array(), *dead = json_array();
    json_t *ema = json_array();
    for (int l = 0; l < s->layers; l++) {
        const int *row = s->expert_load + (size_t)l * s->experts;
        double sum = 0, sq = 0, max = 0;
        int zeros = 0;
        for (int e = 0; e < s->experts; e++) {
            sum += row[e];
            sq += (double)row[e] * row[e];
            max = row[e] > max ? row[e] : max;
            zeros += row[e] == 0;
        }
        double mean = sum / s->experts;
        double var = sq / s->experts - mean * mean;
        json_array_append_new(max_mean, number(mean > 0 ? max / mean : NAN));
        json_array_append_new(cv, number(mean > 0 ? sqrt(fmax(var, 0)) / mean
                                                  : NAN));
        json_array_append_new(dead, json_integer(zeros));
        if (s->load_ema) {
            json_t *cells = json_array();
            for (int e = 0; e < s->experts; e++)
                json_array_append_new(cells, json_real(round(
                    s->load_ema[(size_t)l * s->experts + e] * 100) / 100));
            json_array_append_new(ema, cells);
        }
    }
    json_object_set_new(record, "imbalance", json_pack(
        "{s:o, s:o, s:o}", "max_mean", max_mean, "cv", cv, "dead", dead));
    if (s->load_ema)
        json_object_set_new(record, "load_ema", ema);
    else
        json_decref(ema);
    if (s->router_bias) {
        json_t *bias = json_array();
        for (int l = 0; l < s->layers; l++) {
            json_t *cells = json_array();
            for (int e = 0; e < s->experts; e++)
                json_array_append_new(cells, json_real(
                    s->router_bias[(size_t)l * s->experts + e]));
            json_array_append_new(bias, cells);
        }
        json_object_set_new(record, "router_bias", bias);
    }
    json_object_set_new(record, "routing_mix", number(s->routing_mix));
    json_object_set_new(record, "straggler",
                        s->straggler >= 0 ? json_integer(s->straggler)
                                          : json_null());
    json_object_set_new(record, "ideal_tokens_per_s",
                        number(s->ideal_tokens_per_s));
    json_object_set_new(record, "mfu", number(s->mfu));
    json_object_set_new(record, "cost_per_hour", number(s->cost_per_hour));
    json_object_set_new(record, "cost_per_mtok", number(s->cost_per_mtok));
    json_object_set_new(record, "cost_per_btok",
                        number(s->cost_per_mtok * 1e3));
    json_object_set_new(record, "cost_per_ttok",
                        number(s->cost_per_mtok * 1e6));
}

json_t *metrics_splits_json(int layers, int experts, int ranks,
                            const int *placement, const int *share,
                            int units)
{
    json_t *splits = json_array();
    for (int l = 0; l < layers; l++)
        for (int e = 0; e < experts; e++) {
            size_t i = (size_t)l * experts + e;
            const int *part = share + i * ranks;
            int rank = placement[i];
            if (part[rank] == units)
                continue;
            json_t *shares = json_array();
            json_array_append_new(shares, json_pack(
                "[i, f]", rank, (double)part[rank] / units));
            for (int r = 0; r < ranks; r++)
                if (r != rank && part[r] > 0)
                    json_array_append_new(shares, json_pack(
                        "[i, f]", r, (double)part[r] / units));
            json_array_append_new(splits, json_pack("[i, i, o]", l, e,
                                                    shares));
        }
    return splits;
}

int metrics_write_step(metrics_sink *sink, const step_stats *s,
                       moe_error *err)
{
    json_t *load = json_array();
    for (int l = 0; l < s->layers; l++) {
        json_t *row = json_array();
        for (int e = 0; e < s->experts; e++)
            json_array_append_new(
                row, json_integer(s->expert_load[(size_t)l * s->experts + e]));
        json_array_append_new(load, row);
    }
    json_t *ranks = json_array(), *placement = json_array();
    for (int r = 0; s->rank && r < s->ranks; r++) {
        const rank_stats *q = &s->rank[r];
        const config_device *dev = &s->devices[r];
        json_array_append_new(ranks, json_pack(
            "{s:i, s:s, s:s, s:b, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:I}",
            "rank", r, "device", dev->name, "backend", config_backend_names[dev->backend],
            "emulated", dev->slowdown != 1.0, "expert_ms", number(q->expert_ms),
            "dense_ms", number(q->dense_ms), "alltoall_ms",
            number(q->alltoall_ms), "allreduce_ms", number(q->allreduce_ms),
            "idle_ms", number(q->idle_ms), "tokens", (json_int_t)q->tokens,
            "experts", (json_int_t)q->experts, "migration_bytes",
            (json_int_t)q->migration_bytes));
        json_t *row = json_array_get(ranks, json_array_size(ranks) - 1);
        json_object_set_new(row, "expert_flops_per_s",
                            number(q->expert_flops_per_s));
        json_object_set_new(row, "state_gb", number(q->state_bytes * 1e-9));
        json_object_set_new(row, "capacity_gb",
                            number(q->capacity_bytes * 1e-9));
        json_object_set_new(row, "rss_gb", number(q->rss_bytes * 1e-9));
    }
    for (int l = 0; s->placement && l < s->layers; l++) {
        json_t *row = json_array();
        for (int e = 0; e < s->experts; e++)
            json_array_append_new(
                row, json_integer(s->placement[(size_t)l * s->experts + e]));
        json_array_append_new(placement, row);
    }
    json_t *record = json_pack(
        "{s:s, s:i, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:i, s:I, s:o, "
        "s:i, s:o, s:o, s:o, s:i}",
        "type", "step", "step", s->step, "loss", number(s->loss),
        "lr", number(s->lr), "grad_norm", number(s->grad_norm),
        "tokens_per_s", number(s->tokens_per_s),
        "model_flops_per_s", number(s->flops_per_s),
        "aux_loss", number(s->aux_loss), "z_loss", number(s->z_loss),
        "step_ms", number(s->step_s * 1e3), "tokens", s->tokens,
        "tokens_seen", (json_int_t)s->tokens_seen,
        "elapsed_s", number(s->elapsed_s), "dropped", s->dropped,
        "expert_load", load, "ranks", ranks, "placement", placement,
        "placement_version", s->placement_version);
    if (record)
        add_balance(record, s);
    if (record && s->share)
        json_object_set_new(record, "splits", metrics_splits_json(
            s->layers, s->experts, s->ranks, s->placement, s->share,
            s->share_units));
    return emit(sink, record, err);
}

int metrics_write_val(metrics_sink *sink, int step, double val_loss,
                      moe_error *err)
{
    return emit(sink,
                json_pack("{s:s, s:i, s:o}", "type", "val", "step", step,
                          "val_loss", number(val_loss)),
                err);
}

int metrics_write_checkpoint(metrics_sink *sink, int step, const char *path,
                             moe_error *err)
{
    return emit(sink,
                json_pack("{s:s, s:i, s:s}", "type", "checkpoint", "step",
                          step, "path", path),
                err);
}

int metrics_write_event(metrics_sink *sink, int step, const char *command_text,
                        const char *reply, double duration_ms,
                        moe_error *err)
{
    json_t *record = json_pack("{s:s, s:i, s:s}", "type", "event", "step",
                               step, "command", command_text);
    if (record && reply)
        json_object_set_new(record, "reply", json_string(reply));
    if (record && isfinite(duration_ms))
        json_object_set_new(record, "duration_ms", json_real(duration_ms));
    return emit(sink, record, err);
}

int metrics_write_record(metrics_sink *sink, json_t *record, moe_error *err)
{
    return emit(sink, record, err);
}

int metrics_write_summary(metrics_sink *sink, const run_summary *s,
                          moe_error *err)
{
    json_t *record = json_pack(
        "{s:s, s:s, s:i, s:i, s:o, s:o, s:i, s:o, s:o, s:I}",
        "type", "summary", "status", s->status, "first_step", s->first_step,
        "last_step", s->last_step, "loss", number(s->loss),
        "val_loss", number(s->val_loss), "val_step", s->val_step,
        "tokens_per_s", number(s->tokens_per_s),
        "elapsed_s", number(s->elapsed_s),
        "tokens_seen", (json_int_t)s->tokens_seen);
    if (record) {
        json_object_set_new(record, "checkpoint",
                            s->checkpoint ? json_string(s->checkpoint)
                                          : json_null());
        json_object_set_new(record, "cost_per_mtok",
                            number(s->cost_per_mtok));
        json_object_set_new(record, "mfu", number(s->mfu));
        json_object_set_new(record, "migrations",
                            json_integer(s->migrations));
        json_object_set_new(record, "migration_bytes",
                            number(s->migration_bytes));
        json_object_set_new(record, "phases_s", json_pack(
            "{s:o, s:o, s:o, s:o}", "train", number(s->train_s),
            "validation", number(s->val_s), "checkpoints",
            number(s->checkpoint_s), "commands", number(s->command_s)));
    }
    return emit(sink, record, err);
}
