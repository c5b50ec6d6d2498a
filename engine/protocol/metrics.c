#include "engine/protocol/metrics.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/protocol/control.h"
#include "engine/protocol/prometheus.h"

struct metrics_sink {
    FILE *f; /* NULL: no file */
    int owned;
    char path[CONFIG_PATH_MAX];
    FILE *run_file; /* the run directory's metrics.jsonl, or NULL */
    char run_path[CONFIG_PATH_MAX + 32];
    char run_dir[CONFIG_PATH_MAX]; /* absolute, or "" */
    control_server *control;
    prometheus *prometheus; /* or NULL */
    char run_id[RECORD_RUN_ID_MAX];
    record_state state; /* written into step records */
    int have_state;
    char failure[CONFIG_PATH_MAX + 160]; /* the first failed write, or "" */
};

void metrics_attach_prometheus(metrics_sink *sink, prometheus *p)
{
    sink->prometheus = p;
}

void metrics_attach_control(metrics_sink *sink, control_server *s)
{
    sink->control = s;
    control_set_run_id(s, sink->run_id);
}

const char *metrics_run_id(const metrics_sink *sink)
{
    return sink->run_id;
}

void metrics_set_state(metrics_sink *sink, const record_state *state)
{
    if (!sink)
        return;
    sink->state = *state;
    sink->have_state = 1;
}

/* "<name>-<UTC start time>-<pid>": new for every process (see record.h). */
static void make_run_id(char *out, size_t size, const char *run_name)
{
    time_t now = time(NULL);
    struct tm utc;
    char when[32] = "unknown";
    if (gmtime_r(&now, &utc))
        strftime(when, sizeof when, "%Y%m%dT%H%M%SZ", &utc);
    snprintf(out, size, "%.48s-%s-%ld", run_name && *run_name ? run_name
                                                               : "run",
             when, (long)getpid());
}

int metrics_open(metrics_sink **out, const char *path, const char *run_name,
                 moe_error *err)
{
    metrics_sink *sink = calloc(1, sizeof *sink);
    if (!sink)
        return error_set(err, "out of memory");
    make_run_id(sink->run_id, sizeof sink->run_id, run_name);
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

int metrics_add_run_file(metrics_sink *sink, const char *run_dir,
                         int append, moe_error *err)
{
    if (!realpath(run_dir, sink->run_dir))
        snprintf(sink->run_dir, sizeof sink->run_dir, "%s", run_dir);
    snprintf(sink->run_path, sizeof sink->run_path, "%s/metrics.jsonl",
             run_dir);
    sink->run_file = fopen(sink->run_path, append ? "a" : "w");
    if (!sink->run_file)
        return error_set_errno(err, "cannot open metrics file %s",
                               sink->run_path);
    return 0;
}

void metrics_close(metrics_sink *sink)
{
    if (!sink)
        return;
    if (sink->run_file)
        fclose(sink->run_file);
    if (sink->owned)
        fclose(sink->f);
    else if (sink->f)
        fflush(sink->f);
    free(sink);
}

static int emit(metrics_sink *sink, json_t *record, moe_error *err)
{
    if (!record)
        return error_set(err, "out of memory building a metrics record");
    record_stamp(record, sink->run_id);
    char *text = json_dumps(record, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        json_decref(record);
        return error_set(err, "out of memory writing a metrics record");
    }
    /* After a failed write the files are left alone (the failure is
     * sticky, see metrics_failure); clients and Prometheus still hear. */
    int failed = !sink->failure[0] && sink->f &&
                 (fputs(text, sink->f) == EOF || fputc('\n', sink->f) == EOF ||
                  fflush(sink->f) != 0);
    const char *failed_path = sink->path;
    if (!failed && !sink->failure[0] && sink->run_file &&
        (fputs(text, sink->run_file) == EOF ||
         fputc('\n', sink->run_file) == EOF ||
         fflush(sink->run_file) != 0)) {
        failed = 1;
        failed_path = sink->run_path;
    }
    if (failed)
        snprintf(sink->failure, sizeof sink->failure,
                 "cannot write metrics to %s: %s", failed_path,
                 strerror(errno));
    /* Clients hear of a record once it is in the file. */
    if (sink->control) {
        control_broadcast(sink->control, text);
        const char *type = json_string_value(json_object_get(record, "type"));
        int kind = type ? config_enum_lookup(record_type_names, type,
                                             strlen(type))
                        : -1;
        if (kind == RECORD_TYPE_RUN)
            control_remember(sink->control, CONTROL_REMEMBER_RUN, text);
        else if (kind == RECORD_TYPE_STEP)
            control_remember(sink->control, CONTROL_REMEMBER_STEP, text);
        else if (kind == RECORD_TYPE_VAL)
            control_remember(sink->control, CONTROL_REMEMBER_VAL, text);
    }
    prometheus_observe(sink->prometheus, record);
    json_decref(record);
    free(text);
    return 0;
}

const char *metrics_failure(const metrics_sink *sink)
{
    return sink && sink->failure[0] ? sink->failure : NULL;
}


static json_t *device_part(const config_device *dev, const char *gemm)
{
    json_t *o = record_begin(RECORD_TYPE_DEVICE);
    record_set_string(o, RECORD_DEVICE_name, dev->name);
    record_set_string(o, RECORD_DEVICE_backend,
                      config_backend_names[dev->backend]);
    record_set_int(o, RECORD_DEVICE_index, dev->index);
    record_set_int(o, RECORD_DEVICE_threads, dev->threads);
    record_set_string(o, RECORD_DEVICE_precision,
                      config_precision_names[dev->precision]);
    record_set_string(o, RECORD_DEVICE_gemm, gemm);
    record_set_real(o, RECORD_DEVICE_price_per_hour, dev->price_per_hour);
    record_set_real(o, RECORD_DEVICE_peak_tflops, dev->peak_tflops);
    record_set_bool(o, RECORD_DEVICE_emulated, dev->slowdown != 1.0);
    return o;
}

static json_t *model_part(const model_dims *d)
{
    json_t *o = record_begin(RECORD_TYPE_MODEL);
    record_set_int(o, RECORD_MODEL_vocab, d->V);
    record_set_int(o, RECORD_MODEL_d_model, d->C);
    record_set_int(o, RECORD_MODEL_layers, d->L);
    record_set_int(o, RECORD_MODEL_heads, d->H);
    record_set_int(o, RECORD_MODEL_seq_len, d->T);
    record_set_int(o, RECORD_MODEL_experts, d->E);
    record_set_int(o, RECORD_MODEL_top_k, d->K);
    record_set_int(o, RECORD_MODEL_expert_hidden, d->F);
    record_set_int(o, RECORD_MODEL_shared_hidden, d->S);
    return o;
}

static json_t *balance_part(const config *cfg)
{
    json_t *o = record_begin(RECORD_TYPE_BALANCE);
    record_set_string(o, RECORD_BALANCE_policy,
                      config_policy_names[cfg->balance.policy]);
    record_set_int(o, RECORD_BALANCE_every, cfg->balance.every);
    record_set_real(o, RECORD_BALANCE_min_gain, cfg->balance.min_gain);
    record_set_real(o, RECORD_BALANCE_bias_update_rate,
                    cfg->balance.bias_update_rate);
    record_set_int(o, RECORD_BALANCE_routing_warmup_steps,
                   cfg->balance.routing_warmup_steps);
    return o;
}

int metrics_write_run(metrics_sink *sink, const config *cfg, const model *m,
                      const char *gemm, int resumed_step, moe_error *err)
{
    json_t *devices = json_array();
    for (int i = 0; i < cfg->cluster.device_count; i++)
        json_array_append_new(
            devices, device_part(&cfg->cluster.devices[i],
                                 gemm + (size_t)i * METRICS_GEMM_MAX));
    json_t *r = record_begin(RECORD_TYPE_RUN);
    record_set_string(r, RECORD_RUN_config, cfg->name);
    record_set_string(r, RECORD_RUN_source, cfg->source);
    record_set_json(r, RECORD_RUN_devices, devices);
    record_set_int(r, RECORD_RUN_params, (long long)m->param_count);
    record_set_int(r, RECORD_RUN_active_params,
                   (long long)model_active_params(m));
    record_set_real(r, RECORD_RUN_flops_per_token, model_flops_per_token(m));
    /* The model state of one routed expert and of the dense part: what the
     * planner and a move's memory check count. */
    record_set_int(r, RECORD_RUN_expert_state_bytes,
                   (long long)model_expert_state_bytes(m));
    record_set_int(r, RECORD_RUN_dense_state_bytes,
                   (long long)model_memory_bytes(m).dense_state);
    record_set_int(r, RECORD_RUN_tokens_per_step,
                   cfg->train.batch_size * cfg->model.seq_len);
    record_set_int(r, RECORD_RUN_steps, cfg->train.steps);
    record_set_json(r, RECORD_RUN_model, model_part(&m->dims));
    record_set_int(r, RECORD_RUN_resumed_from, resumed_step);
    record_set_string(r, RECORD_RUN_run_dir,
                      sink->run_dir[0] ? sink->run_dir : NULL);
    record_set_string(r, RECORD_RUN_currency, cfg->cluster.currency);
    record_set_json(r, RECORD_RUN_balance, balance_part(cfg));
    return emit(sink, r, err);
}

void metrics_layer_imbalance(const int *load, int experts,
                             metrics_imbalance *out)
{
    double sum = 0, sq = 0, max = 0;
    int zeros = 0;
    for (int e = 0; e < experts; e++) {
        sum += load[e];
        sq += (double)load[e] * load[e];
        max = load[e] > max ? load[e] : max;
        zeros += load[e] == 0;
    }
    double mean = sum / experts;
    double var = sq / experts - mean * mean;
    out->max_mean = mean > 0 ? max / mean : NAN;
    out->cv = mean > 0 ? sqrt(fmax(var, 0)) / mean : NAN;
    out->dead = zeros;
}

double metrics_ideal_share(const step_stats *s)
{
    return s->tokens_per_s / s->ideal_tokens_per_s;
}

static json_t *real_or_null(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

static json_t *imbalance_part(const step_stats *s)
{
    json_t *max_mean = json_array(), *cv = json_array(), *dead = json_array();
    for (int l = 0; l < s->layers; l++) {
        metrics_imbalance m;
        metrics_layer_imbalance(s->expert_load + (size_t)l * s->experts,
                                s->experts, &m);
        json_array_append_new(max_mean, real_or_null(m.max_mean));
        json_array_append_new(cv, real_or_null(m.cv));
        json_array_append_new(dead, json_integer(m.dead));
    }
    json_t *o = record_begin(RECORD_TYPE_IMBALANCE);
    record_set_json(o, RECORD_IMBALANCE_max_mean, max_mean);
    record_set_json(o, RECORD_IMBALANCE_cv, cv);
    record_set_json(o, RECORD_IMBALANCE_dead, dead);
    return o;
}

/* Per-layer imbalance of this step's load, the load average, the router
 * bias, cost and MFU. */
static void add_balance(json_t *r, const step_stats *s)
{
    record_set_json(r, RECORD_STEP_imbalance, imbalance_part(s));
    if (s->load_ema) {
        json_t *ema = json_array();
        for (int l = 0; l < s->layers; l++) {
            json_t *cells = json_array();
            for (int e = 0; e < s->experts; e++)
                json_array_append_new(cells, json_real(round(
                    s->load_ema[(size_t)l * s->experts + e] * 100) / 100));
            json_array_append_new(ema, cells);
        }
        record_set_json(r, RECORD_STEP_load_ema, ema);
    }
    if (s->router_bias) {
        json_t *bias = json_array();
        for (int l = 0; l < s->layers; l++) {
            json_t *cells = json_array();
            for (int e = 0; e < s->experts; e++)
                json_array_append_new(cells, json_real(
                    s->router_bias[(size_t)l * s->experts + e]));
            json_array_append_new(bias, cells);
        }
        record_set_json(r, RECORD_STEP_router_bias, bias);
    }
    record_set_real(r, RECORD_STEP_routing_mix, s->routing_mix);
    record_set_json(r, RECORD_STEP_straggler,
                    s->straggler >= 0 ? json_integer(s->straggler)
                                      : json_null());
    record_set_real(r, RECORD_STEP_ideal_tokens_per_s, s->ideal_tokens_per_s);
    record_set_real(r, RECORD_STEP_ideal_share, metrics_ideal_share(s));
    record_set_real(r, RECORD_STEP_mfu, s->mfu);
    record_set_real(r, RECORD_STEP_cost_per_hour, s->cost_per_hour);
    record_set_real(r, RECORD_STEP_cost_per_mtok, s->cost_per_mtok);
    record_set_real(r, RECORD_STEP_cost_per_btok, s->cost_per_mtok * 1e3);
    record_set_real(r, RECORD_STEP_cost_per_ttok, s->cost_per_mtok * 1e6);
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

static json_t *rank_part(int r, const rank_stats *q, const config_device *dev)
{
    json_t *o = record_begin(RECORD_TYPE_RANK);
    record_set_int(o, RECORD_RANK_rank, r);
    record_set_string(o, RECORD_RANK_device, dev->name);
    record_set_string(o, RECORD_RANK_backend,
                      config_backend_names[dev->backend]);
    record_set_bool(o, RECORD_RANK_emulated, dev->slowdown != 1.0);
    record_set_real(o, RECORD_RANK_expert_ms, q->expert_ms);
    record_set_real(o, RECORD_RANK_dense_ms, q->dense_ms);
    record_set_real(o, RECORD_RANK_alltoall_ms, q->alltoall_ms);
    record_set_real(o, RECORD_RANK_allreduce_ms, q->allreduce_ms);
    record_set_real(o, RECORD_RANK_idle_ms, q->idle_ms);
    record_set_int(o, RECORD_RANK_tokens, (long long)q->tokens);
    record_set_int(o, RECORD_RANK_rows, (long long)q->rows);
    record_set_int(o, RECORD_RANK_experts, (long long)q->experts);
    record_set_int(o, RECORD_RANK_migration_bytes,
                   (long long)q->migration_bytes);
    record_set_real(o, RECORD_RANK_expert_flops_per_s, q->expert_flops_per_s);
    record_set_real(o, RECORD_RANK_state_gb, q->state_bytes * 1e-9);
    record_set_real(o, RECORD_RANK_capacity_gb, q->capacity_bytes * 1e-9);
    record_set_real(o, RECORD_RANK_rss_gb, q->rss_bytes * 1e-9);
    record_set_real(o, RECORD_RANK_peak_rss_gb, q->peak_rss_bytes * 1e-9);
    record_set_real(o, RECORD_RANK_expert_state_gb,
                    q->expert_state_bytes * 1e-9);
    record_set_real(o, RECORD_RANK_dense_state_gb, q->dense_state_bytes * 1e-9);
    record_set_real(o, RECORD_RANK_activations_gb, q->activation_bytes * 1e-9);
    record_set_real(o, RECORD_RANK_staging_gb, q->staging_bytes * 1e-9);
    return o;
}

/* The state at the boundary before step s (see metrics_set_state). */
static json_t *step_state_part(const metrics_sink *sink, const step_stats *s)
{
    record_state state = sink->state;
    if (!sink->have_state)
        state = (record_state){.step = s->step - 1, .lr = s->lr,
                               .ranks = s->ranks,
                               .placement_version = s->placement_version};
    return record_state_json(&state);
}

int metrics_write_step(metrics_sink *sink, const step_stats *s,
                       moe_error *err)
{
    json_t *ranks = json_array();
    for (int r = 0; s->rank && r < s->ranks; r++)
        json_array_append_new(ranks, rank_part(r, &s->rank[r],
                                               &s->devices[r]));
    json_t *o = record_begin(RECORD_TYPE_STEP);
    record_set_int(o, RECORD_STEP_step, s->step);
    record_set_real(o, RECORD_STEP_loss, s->loss);
    record_set_real(o, RECORD_STEP_lr, s->lr);
    record_set_real(o, RECORD_STEP_grad_norm, s->grad_norm);
    record_set_real(o, RECORD_STEP_tokens_per_s, s->tokens_per_s);
    record_set_real(o, RECORD_STEP_model_flops_per_s, s->flops_per_s);
    record_set_real(o, RECORD_STEP_aux_loss, s->aux_loss);
    record_set_real(o, RECORD_STEP_z_loss, s->z_loss);
    record_set_real(o, RECORD_STEP_step_ms, s->step_s * 1e3);
    record_set_int(o, RECORD_STEP_tokens, s->tokens);
    record_set_int(o, RECORD_STEP_tokens_seen, (long long)s->tokens_seen);
    record_set_real(o, RECORD_STEP_elapsed_s, s->elapsed_s);
    record_set_int(o, RECORD_STEP_dropped, s->dropped);
    record_set_json(o, RECORD_STEP_expert_load,
                    record_grid_int(s->expert_load, s->layers, s->experts));
    record_set_json(o, RECORD_STEP_ranks, ranks);
    record_set_json(o, RECORD_STEP_placement,
                    record_grid_int(s->placement, s->layers, s->experts));
    record_set_int(o, RECORD_STEP_placement_version, s->placement_version);
    add_balance(o, s);
    if (s->share)
        record_set_json(o, RECORD_STEP_splits, metrics_splits_json(
            s->layers, s->experts, s->ranks, s->placement, s->share,
            s->share_units));
    record_set_json(o, RECORD_STEP_state, step_state_part(sink, s));
    record_set_bool(o, RECORD_STEP_skipped, s->skipped);
    record_set_int(o, RECORD_STEP_spikes, s->spikes);
    return emit(sink, o, err);
}

int metrics_write_val(metrics_sink *sink, int step, double val_loss,
                      moe_error *err)
{
    json_t *o = record_begin(RECORD_TYPE_VAL);
    record_set_int(o, RECORD_VAL_step, step);
    record_set_real(o, RECORD_VAL_val_loss, val_loss);
    return emit(sink, o, err);
}

int metrics_write_checkpoint(metrics_sink *sink, int step, const char *path,
                             moe_error *err)
{
    json_t *o = record_begin(RECORD_TYPE_CHECKPOINT);
    record_set_int(o, RECORD_CHECKPOINT_step, step);
    record_set_string(o, RECORD_CHECKPOINT_path, path);
    return emit(sink, o, err);
}

int metrics_write_event(metrics_sink *sink, const metrics_event *event,
                        moe_error *err)
{
    json_t *o = record_begin(RECORD_TYPE_EVENT);
    record_set_int(o, RECORD_EVENT_step, event->step);
    record_set_string(o, RECORD_EVENT_command, event->command);
    record_set_string(o, RECORD_EVENT_origin,
                      record_origin_names[event->origin]);
    record_set_bool(o, RECORD_EVENT_ok, event->ok);
    record_set_string(o, RECORD_EVENT_reply,
                      event->reply ? event->reply : "");
    if (isfinite(event->duration_ms))
        record_set_real(o, RECORD_EVENT_duration_ms, event->duration_ms);
    record_set_json(o, RECORD_EVENT_state, record_state_json(event->state));
    return emit(sink, o, err);
}

int metrics_write_record(metrics_sink *sink, json_t *record, moe_error *err)
{
    return emit(sink, record, err);
}

int metrics_write_summary(metrics_sink *sink, const run_summary *s,
                          moe_error *err)
{
    json_t *o = record_begin(RECORD_TYPE_SUMMARY);
    record_set_string(o, RECORD_SUMMARY_status, s->status);
    record_set_int(o, RECORD_SUMMARY_first_step, s->first_step);
    record_set_int(o, RECORD_SUMMARY_last_step, s->last_step);
    record_set_real(o, RECORD_SUMMARY_loss, s->loss);
    record_set_real(o, RECORD_SUMMARY_val_loss, s->val_loss);
    record_set_int(o, RECORD_SUMMARY_val_step, s->val_step);
    record_set_real(o, RECORD_SUMMARY_tokens_per_s, s->tokens_per_s);
    record_set_real(o, RECORD_SUMMARY_elapsed_s, s->elapsed_s);
    record_set_int(o, RECORD_SUMMARY_tokens_seen, (long long)s->tokens_seen);
    record_set_string(o, RECORD_SUMMARY_checkpoint, s->checkpoint);
    record_set_real(o, RECORD_SUMMARY_cost_per_mtok, s->cost_per_mtok);
    record_set_real(o, RECORD_SUMMARY_mfu, s->mfu);
    record_set_int(o, RECORD_SUMMARY_migrations, s->migrations);
    record_set_int(o, RECORD_SUMMARY_spikes, s->spikes);
    record_set_int(o, RECORD_SUMMARY_rollbacks, s->rollbacks);
    record_set_real(o, RECORD_SUMMARY_migration_bytes, s->migration_bytes);
    json_t *phases = record_begin(RECORD_TYPE_PHASES);
    record_set_real(phases, RECORD_PHASES_train, s->train_s);
    record_set_real(phases, RECORD_PHASES_validation, s->val_s);
    record_set_real(phases, RECORD_PHASES_checkpoints, s->checkpoint_s);
    record_set_real(phases, RECORD_PHASES_commands, s->command_s);
    record_set_json(o, RECORD_SUMMARY_phases_s, phases);
    return emit(sink, o, err);
}
