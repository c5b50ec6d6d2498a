/* Reading an earlier moectl's single-file checkpoint (format versions 1 and
 * 2: "MOECTLCK", one slab each of weights and both moments over every
 * tensor, the experts' (L, E, ·) between the router and the shared
 * experts, then, from version 2, the routing-side balancing state, and an
 * FNV-1a checksum of everything before it). Every rank streams the file
 * and keeps the dense state and the experts it holds. */
#include "engine/model/checkpoint_legacy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/checkpoint_files.h"

#define LEGACY_VERSION_NO_BALANCE 1u
#define LEGACY_VERSION 2u

typedef struct legacy_header {
    uint32_t version;
    int32_t dims[9]; /* V C L H T E K F S */
    uint64_t param_count;
    int32_t step;
    uint64_t tokens_seen;
    uint64_t seed;
    uint64_t data_rng[4];
} legacy_header;

static void get_header(checkpoint_stream *s, legacy_header *h)
{
    char magic[8];
    checkpoint_get(s, magic, 8);
    if (memcmp(magic, CHECKPOINT_LEGACY_MAGIC, 8) != 0)
        s->failed = 1;
    checkpoint_get(s, &h->version, sizeof h->version);
    checkpoint_get(s, h->dims, sizeof h->dims);
    checkpoint_get(s, &h->param_count, sizeof h->param_count);
    checkpoint_get(s, &h->step, sizeof h->step);
    checkpoint_get(s, &h->tokens_seen, sizeof h->tokens_seen);
    checkpoint_get(s, &h->seed, sizeof h->seed);
    checkpoint_get(s, h->data_rng, sizeof h->data_rng);
}

int checkpoint_legacy_header(const char *path, const model *m,
                             const int32_t want[9], const char *const names[9],
                             checkpoint_state *st, int *expert_rank,
                             int *ranks, moe_error *err)
{
    checkpoint_stream s = {.f = fopen(path, "rb"),
                           .hash = CHECKPOINT_FNV_BASIS};
    if (!s.f)
        return error_set_errno(err, "cannot open checkpoint %s", path);
    legacy_header h;
    get_header(&s, &h);
    if (s.failed || (h.version != LEGACY_VERSION &&
                     h.version != LEGACY_VERSION_NO_BALANCE)) {
        fclose(s.f);
        return error_set(err, "%s: unsupported single-file checkpoint "
                              "version %u", path, h.version);
    }
    for (int i = 0; i < 9; i++)
        if (h.dims[i] != want[i]) {
            fclose(s.f);
            return error_set(err, "%s was written for %s = %d, but the "
                                  "configuration has %d", path, names[i],
                             h.dims[i], want[i]);
        }
    size_t cells = (size_t)m->dims.L * m->dims.E;
    int highest = 0, out_of_range = 0;
    for (size_t i = 0; i < cells; i++) {
        int32_t rank = 0;
        checkpoint_get(&s, &rank, sizeof rank);
        /* A job has at most CONFIG_MAX_DEVICES ranks. */
        out_of_range |= rank >= CONFIG_MAX_DEVICES;
        expert_rank[i] = rank < 0 || rank >= CONFIG_MAX_DEVICES ? 0 : rank;
        highest = expert_rank[i] > highest ? expert_rank[i] : highest;
    }
    fclose(s.f);
    if (s.failed || out_of_range || h.param_count != m->param_count)
        return error_set(err, "%s is truncated or corrupt", path);
    /* It recorded ranks, not how many there were: the highest used. */
    *ranks = highest + 1;
    st->step = h.step;
    st->tokens_seen = h.tokens_seen;
    st->seed = h.seed;
    memcpy(st->data_rng.s, h.data_rng, sizeof h.data_rng);
    return 0;
}

/* One slab of the file: the dense tensors before the experts, each
 * expert's w13, each expert's w2, the dense tensors after them. */
static void get_slab(checkpoint_stream *s, model *m, float *dense,
                     float *expert_slab, float *scratch)
{
    const expert_store *st = &m->experts;
    size_t before = m->tensors[MODEL_TENSOR_shared_w13].offset;
    size_t parts[2] = {st->w13_count, st->slot_count - st->w13_count};
    checkpoint_get(s, dense, before * sizeof(float));
    for (int part = 0; part < 2; part++)
        for (int l = 0; l < m->dims.L; l++)
            for (int e = 0; e < m->dims.E; e++) {
                float *slot = expert_store_slot(st, expert_slab, l, e);
                float *to = slot ? slot + (part ? parts[0] : 0) : scratch;
                checkpoint_get(s, to, parts[part] * sizeof(float));
            }
    checkpoint_get(s, dense + before,
                   (m->dense_count - before) * sizeof(float));
}

int checkpoint_legacy_read(const char *path, model *m, moe_error *err)
{
    const expert_store *st = &m->experts;
    checkpoint_stream s = {.f = fopen(path, "rb"),
                           .hash = CHECKPOINT_FNV_BASIS};
    float *scratch = malloc(st->slot_count * sizeof *scratch);
    if (!s.f || !scratch) {
        if (s.f)
            fclose(s.f);
        free(scratch);
        return error_set_errno(err, "cannot read checkpoint %s", path);
    }
    legacy_header h;
    get_header(&s, &h);
    size_t cells = (size_t)m->dims.L * m->dims.E;
    for (size_t i = 0; i < cells; i++) {
        int32_t rank;
        checkpoint_get(&s, &rank, sizeof rank);
    }
    get_slab(&s, m, m->param_memory, st->params, scratch);
    get_slab(&s, m, m->adam_m_memory, st->adam_m, scratch);
    get_slab(&s, m, m->adam_v_memory, st->adam_v, scratch);
    free(scratch);
    const size_t L = (size_t)m->dims.L, E = (size_t)m->dims.E;
    int32_t ready = 0;
    if (h.version == LEGACY_VERSION) {
        checkpoint_get(&s, m->routing.bias, L * E * sizeof *m->routing.bias);
        checkpoint_get(&s, m->routing.logit_mean, L * sizeof(double));
        checkpoint_get(&s, m->routing.logit_var, L * sizeof(double));
        checkpoint_get(&s, &ready, sizeof ready);
    } else { /* before bias balancing and the warm-up: none of either */
        memset(m->routing.bias, 0, L * E * sizeof *m->routing.bias);
        memset(m->routing.logit_mean, 0, L * sizeof(double));
        memset(m->routing.logit_var, 0, L * sizeof(double));
    }
    for (size_t l = 0; l < L; l++)
        m->routing.logit_std[l] = sqrt(m->routing.logit_var[l]);
    m->routing.stats_ready = ready != 0;
    uint64_t expected = s.hash, checksum = 0;
    checkpoint_get(&s, &checksum, sizeof checksum);
    int trailing = fgetc(s.f) != EOF;
    fclose(s.f);
    if (s.failed || trailing || checksum != expected)
        return error_set(err, "%s is truncated or corrupt (checksum "
                              "mismatch)", path);
    return 0;
}
