/* The placement planner: which rank should hold each routed expert so that
 * slow devices do not hold up fast ones. A pure function of its inputs (no
 * MPI, no clock): the live trainer feeds it measured loads and speeds, and
 * `moectl plan` feeds it the analytic model of a configuration
 * (engine/balance/step_model.h).
 *
 * The step-time model. Ranks meet at every layer (the token all-to-all), so
 * a layer's expert phase lasts as long as its slowest rank:
 *
 *   T(P) = max_r base_s[r] + Σ_l max_r ( Σ_{e : P[l,e] = r} load[l,e] ) / rate[r]
 *
 * base_s is a rank's time outside routed-expert work (attention, shared
 * experts, the head, its share of communication); rate is the rows per
 * second its expert work runs at (emulated slowdowns included). A plan
 * minimises T(P) + move_s_per_byte · bytes moved, and never places more
 * expert bytes on a rank than its capacity. */
#ifndef MOECTL_ENGINE_PLANNER_H
#define MOECTL_ENGINE_PLANNER_H

#include <stddef.h>

typedef struct planner_rank {
    double rate;           /* expert rows per second (> 0) */
    double base_s;         /* seconds per step outside routed-expert work */
    double capacity_bytes; /* room for routed experts; <= 0: unlimited */
} planner_rank;

typedef struct planner_problem {
    int layers, experts, ranks;
    const double *load;        /* (layers, experts) rows per step, >= 0 */
    const planner_rank *rank;  /* (ranks) */
    const int *placement;      /* (layers, experts) the current placement */
    double expert_bytes;       /* one expert: weights and optimizer state */
    double move_s_per_byte;    /* penalty charged per byte moved */
    /* Split experts (planner_split): a split expert's partial gradients
     * (grad_bytes) join the step's all-reduce, which costs sync_s_per_byte
     * for each byte of its buffer. */
    double grad_bytes;
    double sync_s_per_byte;
} planner_problem;

typedef struct planner_move {
    int layer, expert, from, to;
} planner_move;

/* Predicted step time T(P) of a placement (the formula above). */
double planner_step_time(const planner_problem *p, const int *placement);

/* Expert bytes placement P puts on rank r exceed its capacity somewhere:
 * returns the first such rank, or -1 when P fits. */
int planner_overfull_rank(const planner_problem *p, const int *placement);

/* The heuristic planner. Writes the proposed placement (layers, experts)
 * to `out`; it fits every capacity whenever the current placement does or
 * any placement can be found by greedy filling. Returns 0, or -1 when no
 * placement fits the capacities (out then holds the current placement).
 * Fast: 64 experts × 88 layers × 1,000 ranks in well under a second. */
int planner_plan(const planner_problem *p, int *out);

/* The exact optimum of T(P) + penalty by exhaustive search, for tests:
 * only for ranks^(layers·experts) ≤ 2e7. Returns 0, or -1 when nothing
 * fits or the instance is too large. */
int planner_brute_force(const planner_problem *p, int *out);

/* The moves that turn `from` into `to`, in (layer, expert) order; returns
 * their count (at most layers·experts; moves may be NULL to count). */
int planner_moves(const planner_problem *p, const int *from, const int *to,
                  planner_move *moves);

/* Split experts. A share table (layers, experts, ranks) gives each rank's
 * part of an expert's rows in 1/units; the rows of a layer's expert phase
 * on rank r are then Σ_e load[l,e] · share[l,e,r] / units. */

/* T of a share table: the formula above with shared rows, plus the
 * all-reduce of the split experts' partial gradients. */
double planner_split_step_time(const planner_problem *p, const int *share,
                               int units);

/* The share table of an unsplit placement. */
void planner_whole_shares(const planner_problem *p, const int *placement,
                          int units, int *share);

/* Replicas `to` creates that `from` lacks: (expert, rank) pairs with a
 * share in `to` and none in `from`; each ships an expert. */
int planner_share_transfers(const planner_problem *p, const int *from,
                            const int *to);

/* Levels each layer's rows to the ranks' speeds on top of `placement`:
 * a rank over its part of the layer's rows (in proportion to rate) hands
 * rows of its heaviest experts to the ranks furthest under theirs, in
 * pieces of at least min_piece of the expert (a fraction), never giving a
 * rank more replicas than its capacity holds. Writes the share table and
 * each expert's rank (the one it stays with, or its biggest piece's when
 * it is handed over whole). Returns the experts changed, or -1 when out
 * of memory. */
int planner_split(const planner_problem *p, const int *placement, int units,
                  double min_piece, int *primary, int *share);

#endif
