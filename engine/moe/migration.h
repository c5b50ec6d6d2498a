/* Migration of routed experts between ranks: an expert's weights and both
 * Adam moments travel point to point, and the placement table follows.
 * Every rank calls these at the same step boundary, in the same order. */
#ifndef MOECTL_ENGINE_MOE_MIGRATION_H
#define MOECTL_ENGINE_MOE_MIGRATION_H

#include <stddef.h>

#include "engine/core/comm.h"
#include "engine/model/model.h"
#include "engine/moe/placement.h"

/* What one expert's migration ships: its weights and both moments. */
size_t migration_expert_bytes(const model *m);

/* Sends expert (l, e)'s weights and Adam moments from rank `from` to rank
 * `to` (nothing on the other ranks, nor when from == to). */
void migration_transfer_expert(model *m, const comm *c, int l, int e,
                               int from, int to);

/* Gives expert (l, e) rank `to` and splits its rows by `share` (world, in
 * 1/PLACEMENT_SHARE_UNITS, share[to] > 0): each rank that gains a share and
 * had none receives a replica from the expert's present rank. Returns the
 * bytes shipped (0 when nothing changed). */
size_t migration_split_expert(model *m, placement *p, const comm *c, int l,
                              int e, int to, const int *share);

/* A move is a split with every row on `to`. */
size_t migration_move_expert(model *m, placement *p, const comm *c, int l,
                             int e, int to);

/* Brings every expert's primary copy to rank `root` (before it writes the
 * whole model to a checkpoint). */
void migration_gather_experts(model *m, const placement *p, const comm *c,
                              int root);

#endif
