/* The versioned placement table of the routed experts: the rank of each
 * expert (its primary holder) and, for split experts, every rank's share of
 * its rows. Every rank keeps an identical copy and changes it at the same
 * step boundary (migration.c); each change raises the version.
 *
 * Shares are in units of 1/PLACEMENT_SHARE_UNITS. A rank with a share holds
 * a replica (weights and Adam moments) and computes its share of the rows,
 * taken in slot order (rank order of the shares); the replicas' partial
 * gradients are summed among the holders before the optimizer step, so
 * every replica takes the same update. The expert's rank always holds a
 * share and is the replica counted by the gradient norm and saved in
 * checkpoints. An unsplit expert has all units at its rank. */
#ifndef MOECTL_ENGINE_MOE_PLACEMENT_H
#define MOECTL_ENGINE_MOE_PLACEMENT_H

#include "engine/core/error.h"

#define PLACEMENT_SHARE_UNITS 4096

/* Read the fields; change them only through the functions below (the
 * trainer through migration.h). */
typedef struct placement {
    int layers, experts; /* L, E */
    int world;           /* ranks */
    int rank;            /* this rank */
    int *expert_rank;    /* (L, E) primary holder of each expert */
    int *share;          /* (L, E, world) shares of each expert's rows */
    int version;         /* raised by every change */
} placement;

/* L × E experts over `world` ranks, seen from `rank`: at expert_rank
 * (L, E), or round-robin by expert when NULL; unsplit, version 1. */
int placement_create(placement **out, int layers, int experts, int world,
                     int rank, const int *expert_rank, moe_error *err);
void placement_destroy(placement *p);

/* The primary holder of expert (l, e). */
int placement_rank_of(const placement *p, int l, int e);
/* 1 when this rank is expert (l, e)'s primary holder. */
int placement_owns(const placement *p, int l, int e);
/* Share of rank r in expert (l, e), in 1/PLACEMENT_SHARE_UNITS. */
int placement_share(const placement *p, int l, int e, int r);
/* 1 when this rank holds a replica of expert (l, e): a share of its rows. */
int placement_holds(const placement *p, int l, int e);
/* 1 when expert (l, e) is split over more than one rank. */
int placement_is_split(const placement *p, int l, int e);
/* Experts currently split over more than one rank. */
int placement_split_count(const placement *p);

/* Gives expert (l, e) rank `to` and the shares `share` (world); returns 1
 * and raises the version when anything changed, else 0. The weights move
 * separately (migration.c). */
int placement_assign(placement *p, int l, int e, int to, const int *share);
/* Gives all of (l, e)'s rows to its rank: no longer split (no version
 * change: checkpoints keep no splits). */
void placement_unsplit(placement *p, int l, int e);
/* After a resume: takes the checkpoint's ranks (L, E; raises the version),
 * or keeps the present ones when NULL; every expert ends unsplit. */
void placement_restore(placement *p, const int *expert_rank);

/* Shares (world) for n distinct ranks with integer weights: units in
 * proportion, the rounding remainder to the first. Returns -1 when a
 * rank's share would round to nothing. */
int placement_shares_from_weights(int world, int n, const int *ranks,
                                  const int *weights, int *share);

#endif
