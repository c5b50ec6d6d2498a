/* Checkpoints: weights, both Adam moments, step, RNG state, data position,
 * expert placement and the routing-side balancing state (router bias,
 * running logit statistics) in one file, written to a temp file, fsynced, then
 * renamed into place, so a crash never leaves a half-written checkpoint
 * under a checkpoint's name. A checksum covers the whole file. */
#ifndef MOECTL_ENGINE_CHECKPOINT_H
#define MOECTL_ENGINE_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "engine/core/error.h"
#include "engine/model/model.h"
#include "engine/core/rng.h"

typedef struct checkpoint_state {
    int step;             /* steps completed */
    uint64_t tokens_seen; /* training tokens consumed */
    uint64_t seed;
    rng data_rng;         /* the data position: next windows drawn from it */
} checkpoint_state;

/* Writes DIR/step-NNNNNNNN.ckpt (creating DIR) and, if path_out is not
 * NULL, stores its path there; then keeps only the newest `keep`. The
 * placement recorded is expert_rank (L, E) (all on rank 0 when NULL). */
int checkpoint_save(const char *dir, int keep, const model *m,
                    const int *expert_rank, const checkpoint_state *st, char *path_out,
                    size_t path_size, moe_error *err);

/* Reads a checkpoint into m (whose shape must match) and st. `path` is a
 * checkpoint file or a directory, meaning its newest checkpoint. When
 * placement (L, E) is not NULL it receives the recorded placement. */
int checkpoint_load(const char *path, model *m, checkpoint_state *st,
                    int *placement, moe_error *err);

#endif
