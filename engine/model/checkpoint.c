#include "engine/model/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHECKPOINT_MAGIC "MOECTLCK"
/* Version 2 added the routing-side balancing state after the Adam moments.
 * Version 1 files are still read: they predate bias balancing and the
 * routing warm-up, so their runs had a zero bias and no logit statistics,
 * which is what loading them gives. */
#define CHECKPOINT_VERSION 2u
#define CHECKPOINT_VERSION_NO_BALANCE 1u

/* The header, written field by field in this order. */
typedef struct checkpoint_header {
    uint32_t version;
    int32_t dims[9]; /* V C L H T E K F S */
    uint64_t param_count;
    int32_t step;
    uint64_t tokens_seen;
    uint64_t seed;
    uint64_t data_rng[4];
} checkpoint_header;

typedef struct stream {
    FILE *f;
    uint64_t hash; /* FNV-1a over every byte written or read */
    int failed;
} stream;

static void hash_bytes(stream *s, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        s->hash ^= p[i];
        s->hash *= 0x100000001b3ull;
    }
}

static void put(stream *s, const void *data, size_t n)
{
    if (s->failed || fwrite(data, 1, n, s->f) != n)
        s->failed = 1;
    hash_bytes(s, data, n);
}

static void get(stream *s, void *data, size_t n)
{
    if (s->failed || fread(data, 1, n, s->f) != n) {
        s->failed = 1;
        memset(data, 0, n);
    }
    hash_bytes(s, data, n);
}

/* Routing-side balancing: bias (L, E) float, running logit mean and
 * variance (L) double each, and whether those are set (int32). */
static void put_balance_state(stream *s, const model *m)
{
    const size_t L = (size_t)m->dims.L, E = (size_t)m->dims.E;
    int32_t ready = m->routing.stats_ready;
    put(s, m->routing.bias, L * E * sizeof *m->routing.bias);
    put(s, m->routing.logit_mean, L * sizeof(double));
    put(s, m->routing.logit_var, L * sizeof(double));
    put(s, &ready, sizeof ready);
}

static void get_balance_state(stream *s, model *m, uint32_t version)
{
    const size_t L = (size_t)m->dims.L, E = (size_t)m->dims.E;
    int32_t ready = 0;
    if (version == CHECKPOINT_VERSION_NO_BALANCE) {
        memset(m->routing.bias, 0, L * E * sizeof *m->routing.bias);
        memset(m->routing.logit_mean, 0, L * sizeof(double));
        memset(m->routing.logit_var, 0, L * sizeof(double));
    } else {
        get(s, m->routing.bias, L * E * sizeof *m->routing.bias);
        get(s, m->routing.logit_mean, L * sizeof(double));
        get(s, m->routing.logit_var, L * sizeof(double));
        get(s, &ready, sizeof ready);
    }
    for (size_t l = 0; l < L; l++)
        m->routing.logit_std[l] = sqrt(m->routing.logit_var[l]);
    m->routing.stats_ready = ready != 0;
}

static void dims_of(const model *m, int32_t dims[9])
{
    const model_dims *d = &m->dims;
    int32_t v[9] = {d->V, d->C, d->L, d->H, d->T, d->E, d->K, d->F, d->S};
    memcpy(dims, v, sizeof v);
}

static int make_dirs(const char *dir, moe_error *err)
{
    char path[CONFIG_PATH_MAX];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return error_set(err, "checkpoint directory name too long: %s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return error_set_errno(err, "cannot create %s", path);
        *p = '/';
    }
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return error_set_errno(err, "cannot create %s", path);
    return 0;
}

/* Step number of a name "step-NNNNNNNN.ckpt", or -1. */
static long checkpoint_step_of(const char *name)
{
    int step = -1, end = 0;
    if (sscanf(name, "step-%d.ckpt%n", &step, &end) != 1 ||
        name[end] != '\0' || step < 0)
        return -1;
    return step;
}

/* Steps of the checkpoints in dir, ascending; returns how many (≤ cap),
 * or -1 when dir cannot be read. */
static int list_steps(const char *dir, long *steps, int cap)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        long step = checkpoint_step_of(entry->d_name);
        if (step < 0)
            continue;
        if (n < cap) {
            steps[n++] = step;
        } else {
            /* Keep the largest `cap` steps. */
            int smallest = 0;
            for (int i = 1; i < n; i++)
                if (steps[i] < steps[smallest])
                    smallest = i;
            if (step > steps[smallest])
                steps[smallest] = step;
        }
    }
    closedir(d);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && steps[j - 1] > steps[j]; j--) {
            long t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    return n;
}

static void prune(const char *dir, int keep)
{
    enum { cap = 4096 };
    long *steps = malloc(cap * sizeof *steps);
    if (!steps)
        return;
    int n = list_steps(dir, steps, cap);
    for (int i = 0; i + keep < n; i++) {
        char path[CONFIG_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/step-%08ld.ckpt", dir, steps[i]);
        unlink(path);
    }
    free(steps);
}

/* The written file's data on the disk before it is renamed into place. */
static int flush_to_disk(FILE *f, moe_error *err)
{
    CHECK_CALL(err, fflush(f));
    CHECK_CALL(err, fsync(fileno(f)));
    return 0;
}

static int publish(const char *temp, const char *path, moe_error *err)
{
    CHECK_CALL(err, rename(temp, path));
    return 0;
}

int checkpoint_save(const char *dir, int keep, const model *m,
                    const int *expert_rank,
                    const checkpoint_state *st, char *path_out,
                    size_t path_size, moe_error *err)
{
    if (make_dirs(dir, err) < 0)
        return -1;
    char path[CONFIG_PATH_MAX + 32], temp[CONFIG_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/step-%08d.ckpt", dir, st->step);
    snprintf(temp, sizeof temp, "%s.tmp.%ld", path, (long)getpid());

    stream s = {.f = fopen(temp, "wb"), .hash = 0xcbf29ce484222325ull};
    if (!s.f)
        return error_set_errno(err, "cannot create %s", temp);

    checkpoint_header h = {
        .version = CHECKPOINT_VERSION,
        .param_count = m->param_count,
        .step = st->step,
        .tokens_seen = st->tokens_seen,
        .seed = st->seed,
    };
    dims_of(m, h.dims);
    memcpy(h.data_rng, st->data_rng.s, sizeof h.data_rng);

    put(&s, CHECKPOINT_MAGIC, 8);
    put(&s, &h.version, sizeof h.version);
    put(&s, h.dims, sizeof h.dims);
    put(&s, &h.param_count, sizeof h.param_count);
    put(&s, &h.step, sizeof h.step);
    put(&s, &h.tokens_seen, sizeof h.tokens_seen);
    put(&s, &h.seed, sizeof h.seed);
    put(&s, h.data_rng, sizeof h.data_rng);
    /* Placement: the rank of each (layer, expert). */
    size_t experts = (size_t)m->dims.L * m->dims.E;
    for (size_t i = 0; i < experts; i++) {
        int32_t rank = expert_rank ? expert_rank[i] : 0;
        put(&s, &rank, sizeof rank);
    }
    size_t bytes = m->param_count * sizeof(float);
    put(&s, m->param_memory, bytes);
    put(&s, m->adam_m_memory, bytes);
    put(&s, m->adam_v_memory, bytes);
    put_balance_state(&s, m);
    uint64_t checksum = s.hash;
    put(&s, &checksum, sizeof checksum);

    int status = s.failed ? error_set_errno(err, "cannot write checkpoint "
                                                 "%s", temp)
                          : flush_to_disk(s.f, err);
    if (fclose(s.f) != 0 && status == 0)
        status = error_set_errno(err, "cannot close checkpoint %s", temp);
    if (status == 0)
        status = publish(temp, path, err);
    if (status < 0) {
        unlink(temp);
        return -1;
    }
    /* Make the rename itself durable. */
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dir_fd >= 0) {
        fsync(dir_fd);
        close(dir_fd);
    }
    if (path_out)
        snprintf(path_out, path_size, "%s", path);
    if (keep > 0)
        prune(dir, keep);
    return 0;
}

static int resolve_path(const char *path, char *out, size_t size,
                        moe_error *err)
{
    struct stat sb;
    if (stat(path, &sb) < 0)
        return error_set_errno(err, "cannot resume from %s", path);
    if (!S_ISDIR(sb.st_mode)) {
        snprintf(out, size, "%s", path);
        return 0;
    }
    long newest;
    int n = list_steps(path, &newest, 1);
    if (n <= 0)
        return error_set(err, "cannot resume from %s: no step-*.ckpt in it",
                         path);
    snprintf(out, size, "%s/step-%08ld.ckpt", path, newest);
    return 0;
}

int checkpoint_load(const char *path, model *m, checkpoint_state *st,
                    int *placement, moe_error *err)
{
    char file[CONFIG_PATH_MAX + 32];
    if (resolve_path(path, file, sizeof file, err) < 0)
        return -1;
    stream s = {.f = fopen(file, "rb"), .hash = 0xcbf29ce484222325ull};
    if (!s.f)
        return error_set_errno(err, "cannot open checkpoint %s", file);

    char magic[8];
    checkpoint_header h;
    get(&s, magic, 8);
    if (s.failed || memcmp(magic, CHECKPOINT_MAGIC, 8) != 0) {
        fclose(s.f);
        return error_set(err, "%s is not a moectl checkpoint", file);
    }
    get(&s, &h.version, sizeof h.version);
    get(&s, h.dims, sizeof h.dims);
    get(&s, &h.param_count, sizeof h.param_count);
    get(&s, &h.step, sizeof h.step);
    get(&s, &h.tokens_seen, sizeof h.tokens_seen);
    get(&s, &h.seed, sizeof h.seed);
    get(&s, h.data_rng, sizeof h.data_rng);
    if (s.failed || (h.version != CHECKPOINT_VERSION &&
                     h.version != CHECKPOINT_VERSION_NO_BALANCE)) {
        fclose(s.f);
        return error_set(err, "%s: unsupported checkpoint version %u", file,
                         h.version);
    }
    int32_t dims[9];
    dims_of(m, dims);
    static const char *const dim_names[9] = {
        "vocab", "model.d_model", "model.n_layers", "model.n_heads",
        "model.seq_len", "moe.n_experts", "moe.top_k", "moe.expert_hidden",
        "moe.n_shared * expert_hidden"};
    for (int i = 0; i < 9; i++) {
        if (dims[i] != h.dims[i]) {
            fclose(s.f);
            return error_set(err, "%s was written for %s = %d, but the "
                                  "configuration has %d", file, dim_names[i],
                             h.dims[i], dims[i]);
        }
    }
    size_t experts = (size_t)m->dims.L * m->dims.E;
    for (size_t i = 0; i < experts; i++) {
        int32_t rank;
        get(&s, &rank, sizeof rank);
        if (placement)
            placement[i] = rank;
    }
    size_t bytes = m->param_count * sizeof(float);
    get(&s, m->param_memory, bytes);
    get(&s, m->adam_m_memory, bytes);
    get(&s, m->adam_v_memory, bytes);
    get_balance_state(&s, m, h.version);
    uint64_t expected = s.hash, checksum;
    get(&s, &checksum, sizeof checksum);
    int trailing = fgetc(s.f) != EOF;
    fclose(s.f);
    if (s.failed || trailing || checksum != expected)
        return error_set(err, "%s is truncated or corrupt (checksum mismatch)",
                         file);

    st->step = h.step;
    st->tokens_seen = h.tokens_seen;
    st->seed = h.seed;
    memcpy(st->data_rng.s, h.data_rng, sizeof h.data_rng);
    return 0;
}
