/* Migration of routed experts between ranks: an expert's weights and both
 * Adam moments travel point to point, the receiver takes the expert into
 * its expert store and the sender frees it, and the placement table
 * follows. Every rank calls these at the same step boundary, in the same
 * order. */
#ifndef MOECTL_ENGINE_MOE_MIGRATION_H
#define MOECTL_ENGINE_MOE_MIGRATION_H

#include <stddef.h>

#include "engine/core/comm.h"
#include "engine/core/error.h"
#include "engine/model/model.h"
#include "engine/moe/placement.h"

/* What one expert's migration ships: its weights and both moments. */
size_t migration_expert_bytes(const model *m);

/* Gives expert (l, e) rank `to` and splits its rows by `share` (world, in
 * 1/PLACEMENT_SHARE_UNITS, share[to] > 0): each rank that gains a share and
 * had none takes a slot and receives a replica from the expert's present
 * rank; each rank left without a share frees its slot. *shipped is the
 * bytes shipped (0 when nothing changed). Returns -1 on every rank, with
 * nothing changed anywhere, when a rank could not take the slot. */
int migration_split_expert(model *m, placement *p, const comm *c, int l,
                           int e, int to, const int *share, size_t *shipped,
                           moe_error *err);

/* A move is a split with every row on `to`. */
int migration_move_expert(model *m, placement *p, const comm *c, int l,
                          int e, int to, size_t *shipped, moe_error *err);

/* Makes this rank's expert store match the placement: takes a slot for
 * every expert it now holds and frees the others (contents of new slots
 * are for the caller to fill). -1 when out of memory; it communicates
 * nothing, so the caller agrees with the other ranks. */
int migration_hold_placed(model *m, const placement *p, moe_error *err);

#endif
