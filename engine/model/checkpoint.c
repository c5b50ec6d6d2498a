#include "engine/model/checkpoint.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/model/checkpoint_files.h"

/* What each rank tells rank 0 of the shard it wrote. */
typedef struct shard_result {
    int32_t experts;
    uint64_t bytes;
    uint64_t hash;
} shard_result;

/* The common head of both kinds of file: magic, version and dims. */
static void put_head(checkpoint_stream *s, const char *magic, const model *m)
{
    const model_dims *d = &m->dims;
    uint32_t version = CHECKPOINT_FORMAT_VERSION;
    int32_t dims[9] = {d->V, d->C, d->L, d->H, d->T, d->E, d->K, d->F, d->S};
    checkpoint_put(s, magic, 8);
    checkpoint_put(s, &version, sizeof version);
    checkpoint_put(s, dims, sizeof dims);
}

/* Dense parameters and both moments, then the routing-side balancing
 * state: bias (L, E) float, running logit mean and variance (L) double
 * each, and whether those are set (int32). */
static int write_dense(const char *path, const model *m, shard_result *out,
                       moe_error *err)
{
    checkpoint_stream s;
    if (checkpoint_write_open(&s, path, err) < 0)
        return -1;
    put_head(&s, CHECKPOINT_DENSE_MAGIC, m);
    uint64_t count = m->dense_count;
    checkpoint_put(&s, &count, sizeof count);
    size_t bytes = m->dense_count * sizeof(float);
    checkpoint_put(&s, m->param_memory, bytes);
    checkpoint_put(&s, m->adam_m_memory, bytes);
    checkpoint_put(&s, m->adam_v_memory, bytes);
    const size_t L = (size_t)m->dims.L, E = (size_t)m->dims.E;
    int32_t ready = m->routing.stats_ready;
    checkpoint_put(&s, m->routing.bias, L * E * sizeof *m->routing.bias);
    checkpoint_put(&s, m->routing.logit_mean, L * sizeof(double));
    checkpoint_put(&s, m->routing.logit_var, L * sizeof(double));
    checkpoint_put(&s, &ready, sizeof ready);
    out->hash = s.hash;
    out->bytes = s.bytes;
    return checkpoint_write_close(&s, path, err);
}

/* The experts this rank owns, in (layer, expert) order: (l, e) as two
 * int32, then the parameters and both moments of its slot. */
static int write_experts(const char *path, const model *m,
                         const int *expert_rank, int rank,
                         shard_result *out, moe_error *err)
{
    const expert_store *st = &m->experts;
    checkpoint_stream s;
    if (checkpoint_write_open(&s, path, err) < 0)
        return -1;
    put_head(&s, CHECKPOINT_EXPERTS_MAGIC, m);
    int32_t count = 0;
    size_t cells = (size_t)m->dims.L * m->dims.E;
    for (size_t x = 0; x < cells; x++)
        count += expert_rank[x] == rank;
    checkpoint_put(&s, &count, sizeof count);
    size_t bytes = st->slot_count * sizeof(float);
    for (size_t x = 0; x < cells; x++) {
        if (expert_rank[x] != rank)
            continue;
        int32_t le[2] = {(int32_t)(x / m->dims.E), (int32_t)(x % m->dims.E)};
        checkpoint_put(&s, le, sizeof le);
        float *slabs[3] = {st->params, st->adam_m, st->adam_v};
        for (int k = 0; k < 3; k++)
            checkpoint_put(&s, expert_store_slot(st, slabs[k], le[0], le[1]),
                           bytes);
    }
    out->experts = count;
    out->hash = s.hash;
    out->bytes = s.bytes;
    return checkpoint_write_close(&s, path, err);
}

static json_t *hex64(uint64_t v)
{
    char text[24];
    snprintf(text, sizeof text, "%016llx", (unsigned long long)v);
    return json_string(text);
}

static json_t *file_entry(const char *name, const shard_result *r)
{
    json_t *entry = json_object();
    json_object_set_new(entry, "file", json_string(name));
    json_object_set_new(entry, "bytes", json_integer((json_int_t)r->bytes));
    json_object_set_new(entry, "fnv1a", hex64(r->hash));
    return entry;
}

/* The manifest: everything needed to find, check and place the state. */
static json_t *manifest_of(const model *m, const int *expert_rank, int world,
                           const checkpoint_state *st, const char *tag,
                           const shard_result *dense,
                           const shard_result *shards)
{
    const model_dims *d = &m->dims;
    json_t *rng_state = json_array(), *placement = json_array(),
           *files = json_array();
    for (int i = 0; i < 4; i++)
        json_array_append_new(rng_state, hex64(st->data_rng.s[i]));
    for (int l = 0; l < d->L; l++) {
        json_t *row = json_array();
        for (int e = 0; e < d->E; e++)
            json_array_append_new(
                row, json_integer(expert_rank[(size_t)l * d->E + e]));
        json_array_append_new(placement, row);
    }
    char name[64];
    for (int r = 0; r < world; r++) {
        snprintf(name, sizeof name, "experts-r%04d-%s.bin", r, tag);
        json_t *entry = file_entry(name, &shards[r]);
        json_object_set_new(entry, "rank", json_integer(r));
        json_object_set_new(entry, "experts",
                            json_integer(shards[r].experts));
        json_array_append_new(files, entry);
    }
    snprintf(name, sizeof name, "dense-%s.bin", tag);
    json_t *shape = json_object();
    const int dims[9] = {d->V, d->C, d->L, d->H, d->T, d->E, d->K, d->F, d->S};
    for (int i = 0; i < 9; i++)
        json_object_set_new(shape, checkpoint_dim_keys[i],
                            json_integer(dims[i]));
    json_t *j = json_object();
    json_object_set_new(j, "format", json_string(CHECKPOINT_FORMAT));
    json_object_set_new(j, "version", json_integer(CHECKPOINT_FORMAT_VERSION));
    json_object_set_new(j, "step", json_integer(st->step));
    json_object_set_new(j, "tokens_seen", json_integer((json_int_t)
                                                           st->tokens_seen));
    json_object_set_new(j, "seed", hex64(st->seed));
    json_object_set_new(j, "data_rng", rng_state);
    json_object_set_new(j, "spike_guard", spike_guard_to_json(&st->guard));
    json_object_set_new(j, "dims", shape);
    json_object_set_new(j, "dense_params", json_integer((json_int_t)
                                                            m->dense_count));
    json_object_set_new(j, "ranks", json_integer(world));
    json_object_set_new(j, "placement", placement);
    json_object_set_new(j, "dense", file_entry(name, dense));
    json_object_set_new(j, "shards", files);
    return j;
}

/* Rank 0: the manifest renamed into place last, then the files of an
 * earlier write of this step removed. */
static int publish(const char *step_dir, json_t *manifest, const char *tag,
                   moe_error *err)
{
    char path[CONFIG_PATH_MAX + 96];
    snprintf(path, sizeof path, "%s/" CHECKPOINT_MANIFEST, step_dir);
    char *text = json_dumps(manifest, JSON_INDENT(1));
    if (!text)
        return error_set(err, "out of memory for the checkpoint manifest");
    checkpoint_stream s;
    int status = checkpoint_write_open(&s, path, err);
    if (status == 0) {
        checkpoint_put(&s, text, strlen(text));
        checkpoint_put(&s, "\n", 1);
        status = checkpoint_write_close(&s, path, err);
    }
    free(text);
    if (status < 0)
        return -1;
    checkpoint_sync_dir(step_dir);
    checkpoint_remove_others(step_dir, tag);
    return 0;
}

/* A name for this write's files, the same on every rank. */
static void make_tag(char tag[16], const comm *c)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    unsigned long long mix = (unsigned long long)now.tv_nsec ^
                             ((unsigned long long)now.tv_sec << 20) ^
                             ((unsigned long long)getpid() << 40);
    snprintf(tag, 16, "%08llx", mix & 0xffffffffull);
    comm_broadcast(c, tag, 16, 0);
}

int checkpoint_save(const char *dir, int keep, const model *m, const comm *c,
                    const int *expert_rank, const checkpoint_state *st,
                    char *path_out, size_t path_size, moe_error *err)
{
    char step_dir[CONFIG_PATH_MAX + 32], path[CONFIG_PATH_MAX + 96];
    char tag[16];
    snprintf(step_dir, sizeof step_dir, "%s/step-%08d", dir, st->step);
    shard_result *shards = calloc((size_t)c->world, sizeof *shards);
    int status = shards ? checkpoint_make_dirs(step_dir, err)
                        : error_set(err, "out of memory");
    if (comm_agree(c, status, err) < 0) {
        free(shards);
        return -1;
    }
    make_tag(tag, c);
    shard_result mine = {0}, dense = {0};
    snprintf(path, sizeof path, "%s/experts-r%04d-%s.bin", step_dir, c->rank,
             tag);
    status = write_experts(path, m, expert_rank, c->rank, &mine, err);
    if (c->rank == 0 && status == 0) {
        snprintf(path, sizeof path, "%s/dense-%s.bin", step_dir, tag);
        status = write_dense(path, m, &dense, err);
    }
    if (comm_agree(c, status, err) < 0) {
        free(shards);
        return -1;
    }
    if (c->world > 1)
        comm_gather(c, &mine, sizeof mine, shards);
    else
        shards[0] = mine;
    if (c->rank == 0) {
        json_t *manifest = manifest_of(m, expert_rank, c->world, st, tag,
                                       &dense, shards);
        status = manifest ? publish(step_dir, manifest, tag, err)
                          : error_set(err, "out of memory");
        json_decref(manifest);
        if (status == 0)
            checkpoint_prune(dir, keep);
    }
    free(shards);
    if (comm_agree(c, status, err) < 0)
        return -1;
    if (path_out)
        snprintf(path_out, path_size, "%s", step_dir);
    return 0;
}
