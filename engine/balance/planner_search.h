/* The heuristic planner's working state (engine/balance/planner.c and
 * the planner_search, planner_fill and planner_improve files): one slab of
 * arrays, the placement being improved, and the bookkeeping that keeps
 * each layer's rank sums and top times current. Internal to the planner. */
#ifndef MOECTL_ENGINE_PLANNER_SEARCH_H
#define MOECTL_ENGINE_PLANNER_SEARCH_H

#include <stdint.h>

#include "engine/balance/planner_internal.h"

/* Room in a candidate list: the ranks holding a layer's experts, the
 * fastest idle rank with room, and up to three more named by the caller. */
#define CANDIDATES(experts) ((experts) + 4)

/* The search's arrays, one slab: {type, name, count} with L layers,
 * E experts, R ranks. Doubles and words first keep every view aligned. */
#define PLANNER_SEARCH_ARRAYS(X, L, E, R)                                     \
    X(double, rank_sum, (size_t)(L) * (R))   /* rows per step per rank */      \
    X(double, time_s, (size_t)(L) * (R))     /* rank_sum / rate */             \
    X(double, top_s, (size_t)(L) * 3)        /* largest rank times, desc. */   \
    X(double, pack_rows, (E))                /* rows per packing rank */       \
    X(planner_item, order, (size_t)(L) * (E) + (R)) /* sort scratch */         \
    X(planner_item, layer_order, (L))        /* layers, heaviest first */      \
    X(uint64_t, open, ((size_t)(R) + 63) / 64) /* bit k: by_rate[k] has room */\
    X(int, place, (size_t)(L) * (E))         /* -1: not placed yet */          \
    X(int, by_layer, (size_t)(L) * (E))      /* items, hottest first */        \
    X(int, next_item, (size_t)(L) * (E))     /* per-rank item lists */         \
    X(int, prev_item, (size_t)(L) * (E))                                       \
    X(int, home_next, (size_t)(L) * (E))     /* per-home item lists */         \
    X(int, top_rank, (size_t)(L) * 3)        /* ranks of top_s; -1 past end */ \
    X(int, changes, (L))                     /* moves in the layer so far */   \
    X(int, kicked_at, (L))                   /* changes when a kick failed */  \
    X(int, held, (R))                        /* experts over all layers */     \
    X(int, room, (R))                        /* experts that fit */            \
    X(int, first_item, (R))                  /* heads of the item lists */     \
    X(int, home_first, (R))                  /* heads of the home lists */     \
    X(int, by_rate, (R))                     /* fastest first; roomless last */\
    X(int, position, (R))                    /* index in by_rate */            \
    X(int, stamp, (R))                       /* == token: busy in the layer */ \
    X(int, candidates, 3 * CANDIDATES(E))    /* one list per nesting level */  \
    X(int, saved, 3 * (size_t)(E))           /* layers before a trial */       \
    X(int, pack_ranks, (E))                  /* ranks a layer is packed on */  \
    X(int, pack_taken, (E))                  /* experts per packing rank */    \
    X(int, pack_assign, (E))                 /* packing rank per expert */     \
    X(int, pack_best, (E))                   /* the best packing found */

/* The working state of one search. A layer's time is decided by the ranks
 * that hold its experts; every rank holding none of them is idle in that
 * layer, and of those only the fastest with room (the best destination),
 * the fastest that is full (reachable by pushing an expert of another
 * layer out) and an expert's home rank (no penalty) are worth trying. So
 * a candidate costs O(experts), not O(ranks), and the three largest rank
 * times of each layer give its time after a change on two ranks in O(1). */
typedef struct planner_search {
    const planner_problem *p;
    int layers, experts, ranks;
    double move_cost_s;
    double min_gain_s;  /* gains below this are rounding, not progress */
    int moves_left;     /* bounds on the work, whatever the rounding */
    int trials_left;
    int tabu_item;      /* during a trial, may not go back to tabu_rank */
    int tabu_rank;
    int token;          /* the current mark in stamp */
    void *slab;
#define X(type, name, count) type *name;
    PLANNER_SEARCH_ARRAYS(X, , , )
#undef X
} planner_search;

static inline double search_penalty(const planner_search *s, int i, int r)
{
    return r == s->p->placement[i] ? 0.0 : s->move_cost_s;
}

static inline int search_has_room(const planner_search *s, int r)
{
    return s->held[r] < s->room[r];
}

/* The layer's largest rank time over ranks other than a and b. */
static inline double search_rest_s(const planner_search *s, int l, int a, int b)
{
    for (int k = 0; k < 3; k++) {
        int r = s->top_rank[3 * l + k];
        if (r < 0)
            return 0.0;
        if (r != a && r != b)
            return s->top_s[3 * l + k];
    }
    return 0.0;
}

/* The change of layer l's time when ranks a and b take times a_s, b_s. */
static inline double search_layer_delta(const planner_search *s, int l,
                                        int a, int b, double a_s,
                                        double b_s)
{
    double layer_s = planner_max(search_rest_s(s, l, a, b),
                                 planner_max(a_s, b_s));
    return layer_s - s->top_s[3 * l];
}

/* Allocates the search's slab and fills what depends only on the
 * problem: room, ranks by rate, home lists, items by load. Returns -1
 * when out of memory. */
int planner_search_init(planner_search *s, const planner_problem *p);
void planner_search_finish(planner_search *s);

/* The ranks worth trying in layer l: those holding its experts, then the
 * fastest idle rank with room. *blocked: the fastest idle rank when it is
 * full and faster than that one, else -1. */
int planner_search_candidates(planner_search *s, int l, int *list,
                              int *blocked);

/* Recomputes layer l's three largest rank times. */
void planner_search_update_top(planner_search *s, int l);

/* Re-adds rank r's rows in layer l (and its time). */
void planner_search_resum(planner_search *s, int l, int r);

/* Places item i on rank r (its lists and counts; not its sums). */
void planner_search_link(planner_search *s, int i, int r);

/* Moves item i to rank `to`; the caller updates the layer's top times. */
void planner_search_move(planner_search *s, int i, int to);

/* Rebuilds sums, counts, lists and tops from s->place (entries -1
 * skipped). */
void planner_search_rebuild(planner_search *s);

/* Places the unplaced items in `order` one by one, each on the rank with
 * room where it finishes first (LPT on uniform machines when the order is
 * by load, descending). penalty_aware: weigh the growth of the layer's
 * time against the move penalty instead. Returns -1 when room runs out. */
int planner_search_fill(planner_search *s, const planner_item *order,
                        int penalty_aware);

/* Places every layer from scratch, heaviest first, each packed onto the
 * fastest ranks with room (at most one per expert: a layer needs no
 * more) against the lowest target time that bisection finds best fit
 * decreasing to meet. */
void planner_search_fill_packed(planner_search *s);

/* Local search from s->place until no move, swap or kick improves it (or
 * the work bounds run out). */
void planner_search_improve(planner_search *s);

#endif
