#include "engine/trainer/train.h"
#include "engine/core/clock.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/balance/batch_split.h"
#include "engine/balance/cost.h"
#include "engine/model/checkpoint_files.h"
#include "engine/moe/migration.h"
#include "engine/protocol/script.h"
#include "kernels/cpu/cpu_backend.h"

/* Resident memory of this process, from /proc (NAN elsewhere). */
static double resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return NAN;
    long pages_total = 0, pages_resident = 0;
    int got = fscanf(f, "%ld %ld", &pages_total, &pages_resident);
    fclose(f);
    return got == 2 ? (double)pages_resident * (double)sysconf(_SC_PAGESIZE)
                    : NAN;
}

/* The most this process has been resident (VmHWM), NAN where unknown. */
static double peak_resident_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return NAN;
    char line[256];
    double kib = NAN;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lf kB", &kib) == 1)
            break;
    fclose(f);
    return kib * 1024.0;
}

/* The rank's backend, from its device entry: the CPU reference, or a GPU
 * backend loaded at run time. Tokens and migrating experts cross between
 * ranks through host-addressable (managed) memory, so any mix of devices
 * works over plain MPI. */
static int start_backend(trainer *t, const config_device *device, int rank,
                         moe_error *err)
{
    if (device->backend == CONFIG_BACKEND_CPU) {
        char why[256];
        if (device->precision == CONFIG_PRECISION_TF32)
            return error_set(err, "device %d, %s (cpu): precision tf32 is a "
                                  "GPU tensor-core format; a cpu device "
                                  "computes in fp32 or bf16",
                             rank, device->name);
        if (device->precision == CONFIG_PRECISION_BF16) {
            if (cpu_backend_init_bf16(&t->be, device->threads, why,
                                      sizeof why) < 0)
                return error_set(err, "device %d, %s (cpu): %s", rank,
                                 device->name, why);
            return 0;
        }
        if (cpu_backend_init(&t->be, device->threads) < 0)
            return error_set(err, "cannot start the CPU backend: out of "
                                  "memory");
        return 0;
    }
    const char *kind = config_backend_names[device->backend];
    char why[384];
    if (gpu_loader_open(&t->gpu, kind, why, sizeof why) < 0 ||
        t->gpu.backend_init(&t->be, device->index,
                            (int)device->precision, why,
                            sizeof why) < 0) {
        gpu_loader_close(&t->gpu);
        return error_set(err, "device %d, %s (%s %d): %s", rank,
                         device->name, kind, device->index, why);
    }
    return 0;
}

void trainer_describe_gemm(const trainer *t, char *out, size_t size)
{
    const config_device *device = &t->cfg.cluster.devices[t->comm->rank];
    if (device->backend == CONFIG_BACKEND_CPU)
        cpu_backend_describe(&t->be, out, size);
    else /* kernels/cuda: cublasGemmEx, compute type from the precision */
        snprintf(out, size, "%s, %s",
                 device->backend == CONFIG_BACKEND_HIP ? "hipBLAS" : "cuBLAS",
                 config_precision_names[device->precision]);
}

const char *trainer_device_error(const trainer *t)
{
    const backend_ops *ops = t->be.ops;
    return ops && ops->last_error ? ops->last_error(t->be.ctx) : NULL;
}

static void stop_backend(trainer *t)
{
    if (t->gpu.handle) {
        t->gpu.backend_finish(&t->be);
        gpu_loader_close(&t->gpu);
    } else {
        cpu_backend_finish(&t->be);
    }
}

/* What a training run needs of its configuration beyond what the config
 * checks: one rank per device entry, a byte model, a divisible batch. */
static int check_run_config(const config *cfg, const comm *c, moe_error *err)
{
    if (cfg->cluster.device_count != c->world)
        return error_set(err, "%s: cluster.devices lists %d device(s) but "
                              "the job has %d rank(s); start it with "
                              "`moectl run`, which launches one rank per "
                              "device", cfg->source,
                         cfg->cluster.device_count, c->world);
    for (int i = 0; i < cfg->cluster.device_count; i++)
        if (cfg->cluster.devices[i].count != 1)
            return error_set(err, "%s: cluster.devices[%d].count is %d: a "
                                  "training run lists one device entry per "
                                  "rank (count is for `moectl plan`)",
                             cfg->source, i, cfg->cluster.devices[i].count);
    if (cfg->model.vocab_size != CONFIG_VOCAB_SIZE ||
        (cfg->model.n_kv_heads != 0 &&
         cfg->model.n_kv_heads != cfg->model.n_heads))
        return error_set(err, "%s: model.vocab_size %d and model.n_kv_heads "
                              "%d describe a model for `moectl plan`; the "
                              "trainer reads bytes (vocab_size 256) with "
                              "n_kv_heads equal to n_heads", cfg->source,
                         cfg->model.vocab_size, cfg->model.n_kv_heads);
    if (cfg->train.batch_size < c->world)
        return error_set(err, "%s: train.batch_size %d gives the %d ranks "
                              "less than a sequence each", cfg->source,
                         cfg->train.batch_size, c->world);
    return 0;
}

/* Experts rank r holds (replicas of split experts included). */
static int experts_held_by(const placement *p, int r)
{
    int held = 0;
    for (int l = 0; l < p->layers; l++)
        for (int e = 0; e < p->experts; e++)
            held += placement_share(p, l, e, r) > 0;
    return held;
}

/* Every rank's model state under the starting placement within its
 * memory_gb: the measure moves are refused by, applied before the start. */
static int check_placed_memory(const trainer *t, moe_error *err)
{
    const balancer *b = &t->bal;
    for (int r = 0; r < t->placement->world; r++) {
        int held = experts_held_by(t->placement, r);
        double need = b->dense_bytes + held * b->expert_bytes;
        double capacity = t->cfg.cluster.devices[r].memory_gb * 1e9;
        if (need > capacity)
            return error_set(err, "%s: cluster.devices[%d].memory_gb is "
                                  "%.3g MB, but rank %d starts with %d "
                                  "experts: %.3g MB dense + %d x %.3g MB = "
                                  "%.3g MB of model state; give it more "
                                  "memory_gb or fewer experts "
                                  "(cluster.placement)", t->cfg.source, r,
                             capacity / 1e6, r, held, b->dense_bytes / 1e6,
                             held, b->expert_bytes / 1e6, need / 1e6);
    }
    return 0;
}

/* MOECTL_TEST_SPIKE=STEP,COUNT,SCALE: a test hook, not a production
 * path. The first COUNT steps from STEP that this process trains (so not
 * again after a roll back) have their cross-entropy and its gradient
 * multiplied by SCALE: an injected loss spike for the guard's tests. */
static void read_test_spike(trainer *t)
{
    const char *hook = getenv("MOECTL_TEST_SPIKE");
    int step, count;
    double scale;
    if (hook && sscanf(hook, "%d,%d,%lf", &step, &count, &scale) == 3 &&
        count > 0 && scale > 0) {
        t->test_spike_step = step;
        t->test_spike_left = count;
        t->test_spike_scale = scale;
    }
}

static double test_spike_scale(trainer *t, int step)
{
    if (t->test_spike_left <= 0 || step < t->test_spike_step)
        return 1.0;
    t->test_spike_left--;
    return t->test_spike_scale;
}

int trainer_create(trainer **out, const config *cfg, const comm *c,
                   moe_error *err)
{
    if (check_run_config(cfg, c, err) < 0)
        return -1;
    const config_device *device = &cfg->cluster.devices[c->rank];
    trainer *t = calloc(1, sizeof *t);
    if (!t)
        return error_set(err, "out of memory");
    t->cfg = *cfg;
    t->comm = c;
    t->rows = calloc((size_t)c->world, sizeof *t->rows);
    double shares[CONFIG_MAX_DEVICES];
    for (int r = 0; r < c->world; r++)
        shares[r] = cfg->cluster.devices[r].batch_share;
    if (!t->rows) {
        free(t);
        return error_set(err, "out of memory");
    }
    batch_split_rows(cfg->train.batch_size, c->world, shares, t->rows);
    for (int r = 0; r < c->rank; r++)
        t->first_row += t->rows[r];
    t->local_batch = t->rows[c->rank];
    optimizer_settings_from_config(&t->opt, cfg);

    if (start_backend(t, device, c->rank, err) < 0) {
        free(t->rows);
        free(t);
        return -1;
    }
    if (dataset_load(&t->data, cfg->data.path, cfg->data.val_fraction,
                     cfg->model.seq_len, err) < 0)
        goto fail;
    int *configured_rank = calloc((size_t)cfg->model.n_layers *
                                    cfg->moe.n_experts,
                                sizeof *configured_rank);
    char reason[256];
    int placed = configured_rank ? config_placement(cfg, configured_rank, reason,
                                                  sizeof reason)
                               : -1;
    if (placed < 0) {
        error_set(err, "%s: cluster.placement: %s", cfg->source,
                  configured_rank ? reason : "out of memory");
        free(configured_rank);
        goto fail;
    }
    enum model_experts experts = c->world > 1 ? MODEL_EXPERTS_PARALLEL
                                              : MODEL_EXPERTS_LOCAL;
    int made = model_create(&t->model, cfg, &t->be, t->local_batch, experts,
                            err) == 0 &&
               sharding_create(&t->sharding, t->model, c,
                               placed ? configured_rank : NULL, t->rows,
                               err) == 0;
    free(configured_rank);
    if (!made)
        goto fail;
    t->placement = sharding_placement(t->sharding);
    size_t tokens = (size_t)cfg->train.batch_size * cfg->model.seq_len;
    /* Tokens go to the ops (embedding, cross-entropy) as they are. */
    t->inputs = t->be.ops->alloc(t->be.ctx, tokens * sizeof *t->inputs);
    t->targets = t->be.ops->alloc(t->be.ctx, tokens * sizeof *t->targets);
    t->expert_load = calloc((size_t)cfg->model.n_layers * cfg->moe.n_experts,
                            sizeof *t->expert_load);
    t->rank = calloc((size_t)c->world, sizeof *t->rank);
    if (!t->inputs || !t->targets || !t->expert_load || !t->rank) {
        error_set(err, "out of memory");
        goto fail;
    }
    if (balancer_create(&t->bal, cfg, c->world, PLACEMENT_SHARE_UNITS,
                        err) < 0 ||
        check_placed_memory(t, err) < 0)
        goto fail;
    t->price_per_hour = cost_price_per_hour(cfg);
    t->peak_flops = cost_peak_flops(cfg);
    model_init_params(t->model, cfg->train.seed);
    /* An emulated slow device: labelled "emulated" in metrics. */
    model_set_slowdown(t->model, device->slowdown);
    t->state.seed = cfg->train.seed;
    rng_seed(&t->state.data_rng, cfg->train.seed, 2);
    read_test_spike(t);
    *out = t;
    return 0;
fail:
    if (trainer_device_error(t)) {
        /* "out of memory for the model", say, and the device's reason. */
        char what[sizeof err->message];
        snprintf(what, sizeof what, "%s", err->message);
        error_set(err, "device %d, %s: %s (%s)", c->rank, device->name, what,
                  trainer_device_error(t));
    }
    trainer_destroy(t);
    return -1;
}

void trainer_destroy(trainer *t)
{
    if (!t)
        return;
    sharding_destroy(t->sharding);
    model_destroy(t->model);
    dataset_finish(&t->data);
    if (t->be.ops) {
        t->be.ops->free(t->be.ctx, t->inputs);
        t->be.ops->free(t->be.ctx, t->targets);
    }
    stop_backend(t);
    free(t->expert_load);
    free(t->rank);
    free(t->rows);
    balancer_destroy(&t->bal);
    free(t);
}

int trainer_resume(trainer *t, const char *path, moe_error *err)
{
    model *m = t->model;
    const comm *c = t->comm;
    size_t experts = (size_t)m->dims.L * m->dims.E;
    int *recorded_rank = calloc(experts, sizeof *recorded_rank);
    if (!recorded_rank)
        return error_set(err, "out of memory");
    checkpoint_reader *reader = NULL;
    int recorded_world = 0;
    int status = checkpoint_open(&reader, path, m, recorded_rank,
                                 &recorded_world, err);
    if (status == 0 && checkpoint_seed(reader) != t->cfg.train.seed)
        status = error_set(err, "%s was trained with train.seed %llu, but "
                                "the configuration has %llu", path,
                           (unsigned long long)checkpoint_seed(reader),
                           (unsigned long long)t->cfg.train.seed);
    /* The recorded placement stands when it was made for this many ranks;
     * otherwise the experts are placed afresh. Checkpoints keep each
     * expert's rank, not its split: a resumed run starts unsplit, and the
     * balance policy splits again if it pays. Then each rank reads the
     * dense state and the experts it now holds. */
    status = comm_agree(c, status, err);
    if (status == 0)
        status = sharding_restore(t->sharding,
                                  recorded_world == c->world ? recorded_rank
                                                             : NULL,
                                  err);
    /* Placed afresh, the experts must fit as at the start. */
    if (status == 0)
        status = check_placed_memory(t, err);
    if (status == 0)
        status = comm_agree(c, checkpoint_read(reader, m, &t->state, err),
                            err);
    checkpoint_close(reader);
    free(recorded_rank);
    return status;
}

int trainer_set_shares(trainer *t, const double *weights, moe_error *err)
{
    int rows[CONFIG_MAX_DEVICES];
    batch_split_rows(t->cfg.train.batch_size, t->comm->world, weights, rows);
    /* The operator's split: auto does not move back over it. */
    t->bal.undo_version = 0;
    return trainer_set_rows(t, rows, err);
}

int trainer_set_rows(trainer *t, const int *rows, moe_error *err)
{
    const comm *c = t->comm;
    if (sharding_set_rows(t->sharding, rows, err) < 0)
        return -1;
    memcpy(t->rows, rows, (size_t)c->world * sizeof *t->rows);
    t->first_row = 0;
    for (int r = 0; r < c->rank; r++)
        t->first_row += rows[r];
    t->local_batch = rows[c->rank];
    return 0;
}

int trainer_move_expert(trainer *t, int l, int e, int to, size_t *shipped,
                        moe_error *err)
{
    return migration_move_expert(t->model, t->placement, t->comm, l, e, to,
                                 shipped, err);
}

int trainer_split_expert(trainer *t, int l, int e, int to, const int *share,
                         size_t *shipped, moe_error *err)
{
    return migration_split_expert(t->model, t->placement, t->comm, l, e, to,
                                  share, shipped, err);
}

int trainer_check_room(const trainer *t, int l, int e, const int *share,
                       char *why, size_t why_size)
{
    const placement *p = t->placement;
    const balancer *b = &t->bal;
    for (int r = 0; r < p->world; r++) {
        if (share[r] == 0 || placement_share(p, l, e, r) > 0)
            continue;
        int held = experts_held_by(p, r);
        double after = b->dense_bytes + (held + 1) * b->expert_bytes;
        double capacity = t->cfg.cluster.devices[r].memory_gb * 1e9;
        if (after <= capacity)
            continue;
        snprintf(why, why_size, "expert %d.%d does not fit on rank %d: "
                 "%.3g MB dense + %d experts x %.3g MB = %.3g MB of model "
                 "state, %.3g MB with it, over memory_gb %.3g MB", l, e, r,
                 b->dense_bytes / 1e6, held, b->expert_bytes / 1e6,
                 (b->dense_bytes + held * b->expert_bytes) / 1e6, after / 1e6,
                 capacity / 1e6);
        return 1;
    }
    return 0;
}

int trainer_checkpoint(trainer *t, char *path_out, size_t path_size,
                       moe_error *err)
{
    /* Each rank writes the experts it owns, rank 0 the dense state, and
     * rank 0 renames the manifest into place last. */
    return checkpoint_save(t->cfg.checkpoint.dir, t->cfg.checkpoint.keep,
                           t->model, t->comm, t->placement->expert_rank,
                           &t->state, path_out, path_size, err);
}

/* When the phases of a step ended (monotonic seconds). */
typedef struct step_times {
    double start, batch_done, forward_done, zeroed, backward_done, reduced,
        end;
} step_times;

/* This rank's share of the step, gathered on rank 0 (t->rank), with each
 * rank's idle time against the busiest. */
static void gather_rank_stats(trainer *t, const step_times *at,
                              double expert_s, double pass_collective_s)
{
    model *m = t->model;
    rank_stats mine;
    memset(&mine, 0, sizeof mine);
    double step_s = at->end - at->start;
    mine.alltoall_ms = sharding_take_alltoall_s(t->sharding) * 1e3;
    /* The expert part holds the routed-expert GEMMs alone (dispatch and
     * the all-to-all count elsewhere): the work placement can move. */
    mine.expert_ms = expert_s * 1e3;
    /* The gradient all-reduce, and the model's small ones (the loss, the
     * gradient norm), where a rank waits for the slowest. */
    mine.allreduce_ms = (at->reduced - at->backward_done +
                         pass_collective_s + model_take_collective_s(m)) *
                        1e3;
    mine.dense_ms = step_s * 1e3 - mine.expert_ms - mine.alltoall_ms -
                    mine.allreduce_ms;
    mine.pass_dense_ms = (at->backward_done - at->batch_done -
                          (at->zeroed - at->forward_done) -
                          pass_collective_s) * 1e3 -
                         mine.expert_ms - mine.alltoall_ms;
    mine.tokens = (double)sharding_rows(t->sharding);
    mine.rows = t->local_batch;
    for (int l = 0; l < m->dims.L; l++)
        for (int e = 0; e < m->dims.E; e++) /* replicas too */
            mine.experts += placement_holds(t->placement, l, e);
    mine.migration_bytes = (double)t->migration_bytes;
    double expert_params = 3.0 * m->dims.C * m->dims.F;
    mine.expert_flops_per_s = expert_s > 0
        ? mine.tokens * COST_FLOP_PER_PARAM_TOKEN * expert_params / expert_s
        : NAN;
    mine.state_bytes = t->bal.dense_bytes + mine.experts * t->bal.expert_bytes;
    mine.capacity_bytes =
        t->cfg.cluster.devices[t->comm->rank].memory_gb * 1e9;
    mine.rss_bytes = resident_bytes();
    mine.peak_rss_bytes = peak_resident_bytes();
    model_memory held = model_memory_bytes(m);
    sharding_memory moe = sharding_memory_bytes(t->sharding);
    mine.expert_state_bytes = (double)held.expert_state;
    mine.dense_state_bytes = (double)held.dense_state;
    mine.activation_bytes = (double)(held.activations + moe.activations);
    mine.staging_bytes = (double)(moe.staging + m->reduce.capacity *
                                                    sizeof(float));
    comm_gather(t->comm, &mine, sizeof mine, t->rank);
    if (t->comm->rank != 0)
        return;
    double slowest = 0;
    for (int r = 0; r < t->comm->world; r++) {
        rank_stats *q = &t->rank[r];
        double busy = q->expert_ms + q->dense_ms;
        slowest = busy > slowest ? busy : slowest;
    }
    for (int r = 0; r < t->comm->world; r++)
        t->rank[r].idle_ms =
            slowest - (t->rank[r].expert_ms + t->rank[r].dense_ms);
}

/* The step's record: the model's results, the placement, the cost. */
static void describe_step(trainer *t, step_stats *s, int step, double loss,
                          double lr, double grad_norm, double step_s)
{
    const model *m = t->model;
    int tokens = t->cfg.train.batch_size * t->cfg.model.seq_len;
    memset(s, 0, sizeof *s);
    s->step = step;
    s->loss = loss;
    s->aux_loss = m->last.aux_loss;
    s->z_loss = m->last.z_loss;
    s->lr = lr;
    s->grad_norm = grad_norm;
    s->step_s = step_s;
    s->tokens = tokens;
    s->tokens_per_s = step_s > 0 ? s->tokens / step_s : NAN;
    s->flops_per_s = s->tokens_per_s * model_flops_per_token(m);
    s->tokens_seen = t->state.tokens_seen;
    s->elapsed_s = t->train_s;
    s->dropped = model_dropped_assignments(m);
    s->layers = m->dims.L;
    s->experts = m->dims.E;
    s->expert_load = t->expert_load;
    s->ranks = t->comm->world;
    s->rank = t->rank;
    s->devices = t->cfg.cluster.devices;
    s->placement = t->placement->expert_rank;
    s->share = t->placement->share;
    s->share_units = PLACEMENT_SHARE_UNITS;
    s->split_experts = placement_split_count(t->placement);
    s->placement_version = t->placement->version;
    s->straggler = -1;
    s->ideal_tokens_per_s = NAN;
    s->router_bias = t->cfg.balance.bias_update_rate > 0 ? m->routing.bias
                                                          : NULL;
    s->routing_mix = m->routing.mix;
    s->cost_per_hour = t->price_per_hour;
    s->cost_per_mtok = cost_per_mtok(t->price_per_hour, s->tokens_per_s);
    /* The same FLOP count as flops_per_s: MFU = flops_per_s / peak. */
    s->mfu = cost_mfu(model_flops_per_token(m), s->tokens_per_s,
                      t->peak_flops);
}

/* The guard's verdict, the same on every rank: all judge rank 0's loss
 * and gradient norm (an all-reduce may differ in its last bits between
 * ranks). */
static spike_verdict judge_step(trainer *t, int step, double loss,
                                double grad_norm, const rng *drawn,
                                int replayed)
{
    const config_spike_guard *s = &t->cfg.train.spike_guard;
    double figures[2] = {loss, grad_norm};
    if (s->window > 0)
        comm_broadcast(t->comm, figures, sizeof figures, 0);
    return spike_guard_judge(&t->state.guard, s, step, figures[0],
                             figures[1], drawn, replayed);
}

int trainer_rollback(trainer *t, char *path_out, size_t path_size,
                     moe_error *err)
{
    const config_spike_guard *s = &t->cfg.train.spike_guard;
    spike_guard_state kept = t->state.guard;
    char path[sizeof t->last_checkpoint] = "";
    int found = 0;
    if (t->comm->rank == 0)
        found = checkpoint_newest(t->cfg.checkpoint.dir, path,
                                  sizeof path) == 0;
    comm_broadcast(t->comm, &found, sizeof found, 0);
    comm_broadcast(t->comm, path, sizeof path, 0);
    if (kept.rollbacks >= s->max_rollbacks)
        return error_set(err, "persistent loss spike at step %d after %d "
                              "roll back(s) (train.spike_guard."
                              "max_rollbacks); the newest checkpoint is %s",
                         t->state.step, kept.rollbacks,
                         found ? path : "none");
    if (!found)
        return error_set(err, "persistent loss spike at step %d and no "
                              "checkpoint in %s to roll back to (lower "
                              "checkpoint.every)", t->state.step,
                         t->cfg.checkpoint.dir);
    if (trainer_resume(t, path, err) < 0)
        return -1;
    /* The counts go on; the history is the checkpoint's. Another data
     * order: the same batches would likely spike again. */
    spike_guard_state *g = &t->state.guard;
    g->spikes = kept.spikes;
    g->rollbacks = kept.rollbacks + 1;
    g->consecutive = 0;
    if (kept.lowered_until > g->lowered_until)
        g->lowered_until = kept.lowered_until;
    rng_seed(&t->state.data_rng, t->cfg.train.seed, 2 + (uint64_t)
                                                          g->rollbacks);
    snprintf(path_out, path_size, "%s", path);
    return 0;
}

static double experts_s(const model *m)
{
    return m->profile.forward_s[MODEL_PART_experts] +
           m->profile.backward_s[MODEL_PART_experts];
}

int trainer_step(trainer *t, step_stats *s, moe_error *err)
{
    const config *cfg = &t->cfg;
    model *m = t->model;
    int B = cfg->train.batch_size, T = cfg->model.seq_len;
    int step = t->state.step + 1;
    step_times at;

    double experts_before = experts_s(m);
    model_take_collective_s(m); /* validation's, if any */
    at.start = clock_monotonic_s();
    /* A batch the spike guard skipped trains again when due, in place of
     * a fresh one; `drawn` is where this step's batch came from. */
    rng drawn = t->state.data_rng;
    int replayed = spike_guard_take_due(&t->state.guard, step, &drawn);
    rng replay = drawn;
    dataset_train_batch(&t->data, replayed ? &replay : &t->state.data_rng,
                        B, t->inputs, t->targets);
    at.batch_done = clock_monotonic_s();
    size_t shard = (size_t)t->first_row * T;
    model_begin_train_step(m, step);
    m->loss_scale = test_spike_scale(t, step);
    double loss = model_forward(m, t->inputs + shard, t->targets + shard,
                                t->local_batch);
    at.forward_done = clock_monotonic_s();
    model_zero_grad(m);
    at.zeroed = clock_monotonic_s();
    model_backward(m);
    at.backward_done = clock_monotonic_s();
    double pass_collective_s = model_take_collective_s(m);
    const char *failure = sharding_failure(t->sharding);
    if (failure)
        return error_set(err, "%s", failure);
    if (optimizer_reduce_gradients(m, err) < 0)
        return -1;
    at.reduced = clock_monotonic_s();
    double lr = optimizer_lr(&t->opt, step) *
                spike_guard_lr_scale(&t->state.guard,
                                     &cfg->train.spike_guard, step);
    double grad_norm = optimizer_grad_norm(m);
    t->spike = judge_step(t, step, loss, grad_norm, &drawn, replayed);
    if (!t->spike.spike)
        optimizer_apply(m, &t->opt, step, lr, grad_norm);
    at.end = clock_monotonic_s();
    double step_s = at.end - at.start;
    t->data_s += at.batch_done - at.start;
    t->zero_grad_s += at.zeroed - at.forward_done;
    t->optimizer_s += at.end - at.backward_done;
    gather_rank_stats(t, &at, experts_s(m) - experts_before,
                      pass_collective_s);

    t->state.step = step;
    t->state.tokens_seen += (uint64_t)B * T; /* the global batch */
    t->train_s += step_s;
    model_expert_load(m, t->expert_load);
    model_end_train_step(m);
    describe_step(t, s, step, loss, lr, grad_norm, step_s);
    s->skipped = t->spike.spike;
    s->spikes = t->state.guard.spikes;
    if (t->comm->rank == 0)
        balancer_observe(&t->bal, s);
    return 0;
}

double trainer_validate(trainer *t)
{
    const config *cfg = &t->cfg;
    int B = cfg->train.batch_size, count = cfg->train.eval_batches;
    double sum = 0.0;
    size_t shard = (size_t)t->first_row * cfg->model.seq_len;
    for (int i = 0; i < count; i++) {
        dataset_val_batch(&t->data, i, count, B, t->inputs, t->targets);
        sum += model_forward(t->model, t->inputs + shard, t->targets + shard,
                             t->local_batch);
    }
    return sum / count;
}
