/* A model's routed experts sharded over the ranks of a job: the placement
 * table, the expert-parallel layer over it, and the wiring that lets the
 * model call that layer without knowing it (model_expert_parallel). On one
 * rank there is a placement table (everything on rank 0) and no layer. */
#ifndef MOECTL_ENGINE_MOE_SHARDING_H
#define MOECTL_ENGINE_MOE_SHARDING_H

#include "engine/core/comm.h"
#include "engine/core/error.h"
#include "engine/model/model.h"
#include "engine/moe/placement.h"

typedef struct sharding sharding;

/* Spreads m's routed experts over the ranks of c: at expert_rank (L, E),
 * or round-robin by expert when NULL. On several ranks m must have been
 * made with MODEL_EXPERTS_PARALLEL: each rank takes slots for the experts
 * placed on it, and fills them (model_init_expert, or a checkpoint). Rank
 * r trains rows[r] (world) sequences of the global batch, numbered rank
 * by rank; this rank's m->batch must be rows[rank]. Destroy it before the
 * model. */
int sharding_create(sharding **out, model *m, const comm *c,
                    const int *expert_rank, const int *rows, moe_error *err);
void sharding_destroy(sharding *s);

/* New shares of the batch: rank r trains rows[r] (world) sequences from
 * the next step; the model's activations and the expert-parallel layer
 * follow. Every rank calls it at the same boundary; -1 on every rank when
 * one is out of memory, the old shares then still in force on all (a
 * rank's grown activations are kept). */
int sharding_set_rows(sharding *s, const int *rows, moe_error *err);

/* After a resume: the checkpoint's ranks (L, E), or the present ones when
 * NULL, every expert unsplit; the model's expert store follows (slots of
 * experts new to this rank are for the caller to fill). -1 on every rank
 * when a rank is out of memory. */
int sharding_restore(sharding *s, const int *expert_rank, moe_error *err);

/* The placement table; change it only through migration.h (and
 * placement_restore at a resume), at a step boundary on every rank. */
placement *sharding_placement(sharding *s);

/* Rows this rank's experts processed in the last forward (all layers). */
long sharding_rows(const sharding *s);

/* Bytes the expert-parallel layer holds now (0 on one rank). */
typedef struct sharding_memory {
    size_t activations; /* expert rows kept from forward to backward, and
                           their gradients */
    size_t staging;     /* all-to-all staging and dispatch tables */
} sharding_memory;
sharding_memory sharding_memory_bytes(const sharding *s);

/* Why the last step's expert parallelism could not run (its buffers could
 * not grow on some rank), or NULL; the same on every rank. */
const char *sharding_failure(const sharding *s);

/* Seconds spent in all-to-all since the last call (and resets). */
double sharding_take_alltoall_s(sharding *s);

#endif
