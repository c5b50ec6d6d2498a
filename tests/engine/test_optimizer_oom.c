/* The gradient all-reduce out of memory: optimizer_reduce_gradients returns
 * an error with a clear message (it used to abort the job) and leaves the
 * gradients as they were; with memory back, the next call succeeds and its
 * pack/unpack leaves a one-rank sum unchanged. Memory runs out through
 * RLIMIT_AS, which sanitizers' reservations make meaningless: skipped
 * there. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine/config/config.h"
#include "engine/core/rng.h"
#include "engine/model/model.h"
#include "engine/model/optimizer.h"
#include "kernels/cpu/cpu_backend.h"

#include "tests/expect.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif

/* Every expert split: the staging holds the whole model's gradients. */
static int every_expert_split(const void *ctx, int l, int e)
{
    (void)ctx, (void)l, (void)e;
    return MODEL_EXPERT_HELD | MODEL_EXPERT_OWNED | MODEL_EXPERT_SPLIT;
}

/* The address space in use now, in bytes. */
static size_t address_space_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%ld", &pages) != 1)
        pages = 0;
    fclose(f);
    return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

static int set_address_limit(rlim_t bytes)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_AS, &limit) != 0)
        return -1;
    limit.rlim_cur = bytes;
    return setrlimit(RLIMIT_AS, &limit);
}

/* Both gradient slabs, one after the other. */
static void gather_gradients(float *out, float *const slabs[2],
                             const size_t counts[2])
{
    memcpy(out, slabs[0], counts[0] * sizeof *out);
    memcpy(out + counts[0], slabs[1], counts[1] * sizeof *out);
}

int main(void)
{
    if (UNDER_SANITIZER) {
        printf("SKIP: RLIMIT_AS means nothing under a sanitizer\n");
        return 77;
    }
    config cfg;
    config_defaults(&cfg);
    cfg.model.d_model = 128;
    cfg.model.n_layers = 2;
    cfg.model.n_heads = 2;
    cfg.model.seq_len = 8;
    cfg.moe.n_experts = 8;
    cfg.moe.top_k = 2;
    cfg.moe.expert_hidden = 512; /* experts: 12 MiB of gradients */
    backend be;
    moe_error err = {{0}};
    model *m = NULL;
    comm alone = {.rank = 0, .world = 1};
    if (cpu_backend_init(&be, 1) < 0 ||
        model_create(&m, &cfg, &be, 1, MODEL_EXPERTS_LOCAL, &err) < 0 ||
        model_set_comm(m, &alone, 0, 1, &err) < 0) {
        printf("FAIL: cannot build the model: %s\n", err.message);
        return 1;
    }
    model_expert_parallel split = {.residency = every_expert_split};
    model_set_expert_parallel(m, &split);
    rng r;
    rng_seed(&r, 7, 0);
    /* Dense gradients, then every expert's (all of them held here). */
    float *slabs[2] = {m->grad_memory, m->experts.grads};
    size_t counts[2] = {m->dense_count,
                        (size_t)m->experts.capacity * m->experts.slot_count};
    size_t bytes = m->param_count * sizeof(float);
    EXPECT(counts[0] + counts[1] == m->param_count, "slabs of %zu + %zu "
           "for %zu parameters", counts[0], counts[1], m->param_count);
    float *before = malloc(bytes), *after = malloc(bytes);
    if (!before || !after)
        return 1;
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < counts[k]; i++)
            slabs[k][i] = (float)rng_normal(&r);
    gather_gradients(before, slabs, counts);
    printf("staging for %zu gradients\n", m->param_count);
    fflush(stdout);

    size_t in_use = address_space_bytes();
    EXPECT(in_use > 0 && set_address_limit(in_use + (1 << 20)) == 0,
           "cannot limit the address space");
    int status = optimizer_reduce_gradients(m, &err);
    set_address_limit(RLIM_INFINITY);
    EXPECT(status == -1, "out of memory returned %d", status);
    EXPECT(strstr(err.message, "out of memory for the gradient all-reduce"),
           "message: %s", err.message);
    EXPECT(m->reduce.buffer == NULL && m->reduce.capacity == 0,
           "no staging kept after the failure");
    gather_gradients(after, slabs, counts);
    EXPECT(memcmp(before, after, bytes) == 0,
           "a failed reduction changed the gradients");

    status = optimizer_reduce_gradients(m, &err);
    EXPECT(status == 0, "with memory back: %d (%s)", status, err.message);
    EXPECT(m->reduce.capacity == m->param_count, "staging for %zu, not %zu",
           m->reduce.capacity, m->param_count);
    gather_gradients(after, slabs, counts);
    EXPECT(memcmp(before, after, bytes) == 0,
           "a one-rank reduction changed the gradients");

    model_set_expert_parallel(m, NULL);
    model_destroy(m);
    cpu_backend_finish(&be);
    free(before);
    free(after);
    if (failures)
        return 1;
    printf("optimizer out of memory: ok\n");
    return 0;
}
