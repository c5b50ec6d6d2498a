/* Checkpoints, sharded like the model: each rank writes the routed experts
 * it owns and rank 0 the dense state (weights, both Adam moments, the
 * routing-side balancing state), into one directory per checkpoint,
 *
 *     DIR/step-NNNNNNNN/manifest.json          written last
 *     DIR/step-NNNNNNNN/dense-TAG.bin          rank 0
 *     DIR/step-NNNNNNNN/experts-rRRRR-TAG.bin  one per rank
 *
 * The manifest names every file with its size and FNV-1a hash, the model's
 * shape, the step, tokens seen, seed, data position and the placement.
 * Every file is written to a temporary name, fsynced and renamed; the
 * manifest is renamed into place last, so a checkpoint is whole or absent
 * (a kill at any moment leaves the previous one loadable), and files of an
 * older write of the same step are removed only after it. Resuming reads
 * the manifest on every rank; each rank reads the dense state and the
 * experts it holds under the placement it resumes with, from whichever
 * shards hold them: any rank count resumes any checkpoint. Every rank must
 * see DIR at the same path (a shared file system across machines). */
#ifndef MOECTL_ENGINE_CHECKPOINT_H
#define MOECTL_ENGINE_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "engine/core/comm.h"
#include "engine/core/error.h"
#include "engine/core/rng.h"
#include "engine/model/model.h"
#include "engine/model/spike_guard.h"

typedef struct checkpoint_state {
    int step;             /* steps completed */
    uint64_t tokens_seen; /* training tokens consumed */
    uint64_t seed;
    rng data_rng;         /* the data position: next windows drawn from it */
    spike_guard_state guard; /* the loss-spike guard's medians and queue */
} checkpoint_state;

/* Every rank of c calls it: writes DIR/step-NNNNNNNN (creating DIR), with
 * the placement expert_rank (L, E) (every expert's owner writes it), and
 * if path_out is not NULL stores the checkpoint's path there on every
 * rank; then rank 0 keeps only the newest `keep`. Returns -1 on every rank
 * when any rank failed (the lowest failing rank's reason in err); the
 * previous checkpoints are then untouched. */
int checkpoint_save(const char *dir, int keep, const model *m, const comm *c,
                    const int *expert_rank, const checkpoint_state *st,
                    char *path_out, size_t path_size, moe_error *err);

typedef struct checkpoint_reader checkpoint_reader;

/* Opens a checkpoint for m's shape: `path` is a checkpoint directory (or
 * its manifest.json), an earlier moectl's step-NNNNNNNN.ckpt, or a
 * directory of them, meaning the newest whole one.
 * Fills expert_rank (L, E) with the recorded placement and *ranks with the
 * rank count it was written by (for an earlier moectl's single-file
 * checkpoint, which still loads: the highest rank it names, plus one).
 * Every rank may call it. */
int checkpoint_open(checkpoint_reader **out, const char *path,
                    const model *m, int *expert_rank, int *ranks,
                    moe_error *err);
uint64_t checkpoint_seed(const checkpoint_reader *r);
/* Reads the dense state and every expert m holds now (its expert store),
 * checking each file read against the manifest's size and hash. */
int checkpoint_read(checkpoint_reader *r, model *m, checkpoint_state *st,
                    moe_error *err);
void checkpoint_close(checkpoint_reader *r);

#endif
