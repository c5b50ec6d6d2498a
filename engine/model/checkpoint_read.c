#include "engine/model/checkpoint.h"

#include <errno.h>
#include <math.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/config/config.h"
#include "engine/model/checkpoint_files.h"
#include "engine/model/checkpoint_legacy.h"

struct checkpoint_reader {
    char dir[CONFIG_PATH_MAX + 320]; /* the checkpoint's directory */
    json_t *manifest;  /* NULL: an earlier moectl's single file, at dir */
    checkpoint_state state;
    int *expert_rank; /* (L, E) the recorded placement */
    int legacy;       /* dir is an earlier moectl's single-file checkpoint */
};

static const char *const dim_names[9] = {
    "vocab", "model.d_model", "model.n_layers", "model.n_heads",
    "model.seq_len", "moe.n_experts", "moe.top_k", "moe.expert_hidden",
    "moe.n_shared * expert_hidden"};

static void dims_of(const model *m, int32_t dims[9])
{
    const model_dims *d = &m->dims;
    int32_t v[9] = {d->V, d->C, d->L, d->H, d->T, d->E, d->K, d->F, d->S};
    memcpy(dims, v, sizeof v);
}

static int parse_hex64(json_t *value, uint64_t *out)
{
    const char *text = json_string_value(value);
    char *end;
    if (!text)
        return -1;
    errno = 0;
    *out = strtoull(text, &end, 16);
    return errno || *end || end == text ? -1 : 0;
}

/* The checkpoint directory `path` names. */
static int resolve(checkpoint_reader *r, const char *path, moe_error *err)
{
    struct stat sb;
    if (stat(path, &sb) < 0)
        return error_set_errno(err, "cannot resume from %s", path);
    char manifest[sizeof r->dir + 32];
    if (S_ISDIR(sb.st_mode)) {
        snprintf(manifest, sizeof manifest, "%s/" CHECKPOINT_MANIFEST, path);
        if (stat(manifest, &sb) == 0) {
            snprintf(r->dir, sizeof r->dir, "%s", path);
            return 0;
        }
        char newest[sizeof r->dir + 8];
        if (checkpoint_newest(path, newest, sizeof newest) < 0)
            return error_set(err, "cannot resume from %s: no whole "
                                  "checkpoint in it (step-NNNNNNNN with a "
                                  "manifest)", path);
        return resolve(r, newest, err);
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strcmp(base, CHECKPOINT_MANIFEST) == 0) {
        snprintf(r->dir, sizeof r->dir, "%.*s", (int)(base - path), path);
        if (!r->dir[0])
            snprintf(r->dir, sizeof r->dir, ".");
        return 0;
    }
    FILE *f = fopen(path, "rb");
    char magic[8] = {0};
    if (f) {
        if (fread(magic, 1, 8, f) != 8)
            memset(magic, 0, sizeof magic);
        fclose(f);
    }
    if (memcmp(magic, CHECKPOINT_LEGACY_MAGIC, 8) != 0)
        return error_set(err, "%s is not a moectl checkpoint", path);
    snprintf(r->dir, sizeof r->dir, "%s", path);
    r->legacy = 1;
    return 0;
}

/* The manifest's shape against m's, and its placement. */
static int check_manifest(checkpoint_reader *r, const model *m,
                          int *expert_rank, int *ranks, moe_error *err)
{
    json_t *j = r->manifest, *dims = json_object_get(j, "dims");
    const char *format = json_string_value(json_object_get(j, "format"));
    json_int_t version = json_integer_value(json_object_get(j, "version"));
    if (!format || strcmp(format, CHECKPOINT_FORMAT) != 0 ||
        version != CHECKPOINT_FORMAT_VERSION || !json_is_object(dims))
        return error_set(err, "%s/" CHECKPOINT_MANIFEST " is not a version "
                              "%d moectl checkpoint manifest", r->dir,
                         CHECKPOINT_FORMAT_VERSION);
    int32_t want[9];
    dims_of(m, want);
    for (int i = 0; i < 9; i++) {
        json_int_t got = json_integer_value(json_object_get(dims, checkpoint_dim_keys[i]));
        if (got != want[i])
            return error_set(err, "%s was written for %s = %lld, but the "
                                  "configuration has %d", r->dir,
                             dim_names[i], (long long)got, want[i]);
    }
    json_t *placement = json_object_get(j, "placement"),
           *rng_state = json_object_get(j, "data_rng");
    *ranks = (int)json_integer_value(json_object_get(j, "ranks"));
    int bad = *ranks < 1 || json_array_size(placement) != (size_t)m->dims.L ||
              json_array_size(rng_state) != 4 ||
              parse_hex64(json_object_get(j, "seed"), &r->state.seed) < 0;
    for (int l = 0; !bad && l < m->dims.L; l++) {
        json_t *row = json_array_get(placement, (size_t)l);
        bad = json_array_size(row) != (size_t)m->dims.E;
        for (int e = 0; !bad && e < m->dims.E; e++) {
            json_int_t rank = json_integer_value(json_array_get(row, (size_t)e));
            bad = rank < 0 || rank >= *ranks;
            expert_rank[(size_t)l * m->dims.E + e] = (int)rank;
        }
    }
    for (int i = 0; !bad && i < 4; i++)
        bad = parse_hex64(json_array_get(rng_state, (size_t)i),
                          &r->state.data_rng.s[i]) < 0;
    r->state.step = (int)json_integer_value(json_object_get(j, "step"));
    r->state.tokens_seen =
        (uint64_t)json_integer_value(json_object_get(j, "tokens_seen"));
    if (bad || r->state.step < 0)
        return error_set(err, "%s/" CHECKPOINT_MANIFEST ": a malformed "
                              "placement, seed or data position", r->dir);
    if (spike_guard_from_json(json_object_get(j, "spike_guard"),
                              &r->state.guard) < 0)
        return error_set(err, "%s/" CHECKPOINT_MANIFEST ": a malformed "
                              "spike_guard", r->dir);
    return 0;
}

int checkpoint_open(checkpoint_reader **out, const char *path,
                    const model *m, int *expert_rank, int *ranks,
                    moe_error *err)
{
    *out = NULL;
    checkpoint_reader *r = calloc(1, sizeof *r);
    if (!r)
        return error_set(err, "out of memory");
    if (resolve(r, path, err) < 0) {
        free(r);
        return -1;
    }
    size_t cells = (size_t)m->dims.L * m->dims.E;
    r->expert_rank = malloc(cells * sizeof *r->expert_rank);
    if (!r->expert_rank) {
        checkpoint_close(r);
        return error_set(err, "out of memory");
    }
    int32_t want[9];
    dims_of(m, want);
    if (r->legacy) {
        if (checkpoint_legacy_header(r->dir, m, want, dim_names, &r->state,
                                     r->expert_rank, ranks, err) < 0) {
            checkpoint_close(r);
            return -1;
        }
        memcpy(expert_rank, r->expert_rank, cells * sizeof *expert_rank);
        *out = r;
        return 0;
    }
    char file[sizeof r->dir + 32];
    snprintf(file, sizeof file, "%s/" CHECKPOINT_MANIFEST, r->dir);
    json_error_t why;
    r->manifest = json_load_file(file, 0, &why);
    if (!r->manifest) {
        error_set(err, "%s:%d:%d: %s", file, why.line, why.column, why.text);
        checkpoint_close(r);
        return -1;
    }
    if (check_manifest(r, m, r->expert_rank, ranks, err) < 0) {
        checkpoint_close(r);
        return -1;
    }
    memcpy(expert_rank, r->expert_rank, cells * sizeof *expert_rank);
    *out = r;
    return 0;
}

uint64_t checkpoint_seed(const checkpoint_reader *r)
{
    return r->state.seed;
}

void checkpoint_close(checkpoint_reader *r)
{
    if (!r)
        return;
    json_decref(r->manifest);
    free(r->expert_rank);
    free(r);
}

/* Opens the file of a manifest entry and checks its head. */
static int open_entry(const checkpoint_reader *r, json_t *entry,
                      const char *magic, const model *m, checkpoint_stream *s,
                      char *path, size_t path_size, moe_error *err)
{
    const char *name = json_string_value(json_object_get(entry, "file"));
    if (!name || strchr(name, '/'))
        return error_set(err, "%s/" CHECKPOINT_MANIFEST ": a file entry "
                              "without a plain name", r->dir);
    snprintf(path, path_size, "%s/%s", r->dir, name);
    *s = (checkpoint_stream){.f = fopen(path, "rb"),
                             .hash = CHECKPOINT_FNV_BASIS};
    if (!s->f)
        return error_set_errno(err, "cannot open %s", path);
    char got[8];
    uint32_t version;
    int32_t dims[9], want[9];
    checkpoint_get(s, got, 8);
    checkpoint_get(s, &version, sizeof version);
    checkpoint_get(s, dims, sizeof dims);
    dims_of(m, want);
    if (s->failed || memcmp(got, magic, 8) != 0 ||
        version != CHECKPOINT_FORMAT_VERSION ||
        memcmp(dims, want, sizeof dims) != 0) {
        fclose(s->f);
        return error_set(err, "%s is not the checkpoint file its manifest "
                              "names (kind, version or shape differ)", path);
    }
    return 0;
}

/* Closes it: the whole file read, of the size and hash the entry says. */
static int close_entry(checkpoint_stream *s, json_t *entry, const char *path,
                       moe_error *err)
{
    int trailing = fgetc(s->f) != EOF;
    fclose(s->f);
    uint64_t hash = 0;
    json_int_t bytes = json_integer_value(json_object_get(entry, "bytes"));
    if (s->failed || trailing || bytes != (json_int_t)s->bytes ||
        parse_hex64(json_object_get(entry, "fnv1a"), &hash) < 0 ||
        hash != s->hash)
        return error_set(err, "%s is truncated or corrupt (size or hash "
                              "differs from the manifest)", path);
    return 0;
}

static int read_dense(checkpoint_reader *r, model *m, moe_error *err)
{
    json_t *entry = json_object_get(r->manifest, "dense");
    char path[sizeof r->dir + 256];
    checkpoint_stream s;
    if (open_entry(r, entry, CHECKPOINT_DENSE_MAGIC, m, &s, path, sizeof path,
                   err) < 0)
        return -1;
    uint64_t count = 0;
    checkpoint_get(&s, &count, sizeof count);
    if (count != m->dense_count) {
        fclose(s.f);
        return error_set(err, "%s holds %llu dense parameters, the model "
                              "%zu", path, (unsigned long long)count,
                         m->dense_count);
    }
    size_t bytes = m->dense_count * sizeof(float);
    checkpoint_get(&s, m->param_memory, bytes);
    checkpoint_get(&s, m->adam_m_memory, bytes);
    checkpoint_get(&s, m->adam_v_memory, bytes);
    const size_t L = (size_t)m->dims.L, E = (size_t)m->dims.E;
    int32_t ready = 0;
    checkpoint_get(&s, m->routing.bias, L * E * sizeof *m->routing.bias);
    checkpoint_get(&s, m->routing.logit_mean, L * sizeof(double));
    checkpoint_get(&s, m->routing.logit_var, L * sizeof(double));
    checkpoint_get(&s, &ready, sizeof ready);
    for (size_t l = 0; l < L; l++)
        m->routing.logit_std[l] = sqrt(m->routing.logit_var[l]);
    m->routing.stats_ready = ready != 0;
    return close_entry(&s, entry, path, err);
}

/* Reads shard `entry` through, keeping the experts m holds; *found counts
 * them. */
static int read_shard(checkpoint_reader *r, json_t *entry, model *m,
                      float *scratch, int *found, moe_error *err)
{
    const expert_store *st = &m->experts;
    char path[sizeof r->dir + 256];
    checkpoint_stream s;
    if (open_entry(r, entry, CHECKPOINT_EXPERTS_MAGIC, m, &s, path,
                   sizeof path, err) < 0)
        return -1;
    int32_t count = 0;
    checkpoint_get(&s, &count, sizeof count);
    size_t bytes = st->slot_count * sizeof(float);
    for (int32_t i = 0; i < count && !s.failed; i++) {
        int32_t le[2];
        checkpoint_get(&s, le, sizeof le);
        if (le[0] < 0 || le[0] >= m->dims.L || le[1] < 0 ||
            le[1] >= m->dims.E) {
            s.failed = 1;
            break;
        }
        int held = expert_store_holds(st, le[0], le[1]);
        float *slabs[3] = {st->params, st->adam_m, st->adam_v};
        for (int k = 0; k < 3; k++)
            checkpoint_get(&s, held ? expert_store_slot(st, slabs[k], le[0],
                                                        le[1])
                                    : scratch,
                           bytes);
        *found += held;
    }
    return close_entry(&s, entry, path, err);
}

/* Whether shard `rank` holds any expert m holds. */
static int shard_needed(const checkpoint_reader *r, const model *m, int rank)
{
    size_t cells = (size_t)m->dims.L * m->dims.E;
    for (size_t x = 0; x < cells; x++)
        if (r->expert_rank[x] == rank && m->experts.slot_of[x] >= 0)
            return 1;
    return 0;
}

int checkpoint_read(checkpoint_reader *r, model *m, checkpoint_state *st,
                    moe_error *err)
{
    if (r->legacy) {
        if (checkpoint_legacy_read(r->dir, m, err) < 0)
            return -1;
        *st = r->state;
        return 0;
    }
    if (read_dense(r, m, err) < 0)
        return -1;
    json_t *shards = json_object_get(r->manifest, "shards");
    float *scratch = malloc(m->experts.slot_count * sizeof *scratch);
    if (!scratch)
        return error_set(err, "out of memory");
    int found = 0, status = 0;
    for (size_t i = 0; status == 0 && i < json_array_size(shards); i++) {
        json_t *entry = json_array_get(shards, i);
        int rank = (int)json_integer_value(json_object_get(entry, "rank"));
        if (shard_needed(r, m, rank))
            status = read_shard(r, entry, m, scratch, &found, err);
    }
    free(scratch);
    if (status == 0 && found != m->experts.held)
        status = error_set(err, "%s: %d of the %d experts this rank holds "
                                "are in no shard", r->dir,
                           m->experts.held - found, m->experts.held);
    if (status == 0)
        *st = r->state;
    return status;
}
