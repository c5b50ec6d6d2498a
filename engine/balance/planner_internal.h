/* What the planner's files share (engine/balance/planner*.c): small
 * helpers of the step-time model and the capacity rule. Not part of the
 * planner's API: include planner.h for that. */
#ifndef MOECTL_ENGINE_PLANNER_INTERNAL_H
#define MOECTL_ENGINE_PLANNER_INTERNAL_H

#include "engine/balance/planner.h"

/* fmax without its NaN rules, so that it inlines in the inner loops. */
static inline double planner_max(double a, double b)
{
    return a > b ? a : b;
}

/* Seconds charged for moving one expert. */
static inline double planner_move_cost_s(const planner_problem *p)
{
    return p->expert_bytes * p->move_s_per_byte;
}

/* The slowest rank's time outside routed-expert work: max_r base_s[r]. */
double planner_base_s(const planner_problem *p);

/* How many experts rank r holds without exceeding its capacity, by the
 * same product planner_overfull_rank checks, so the two cannot disagree
 * at a boundary. */
int planner_room(const planner_problem *p, int r, int items);

/* Something to sort by key. */
typedef struct planner_item {
    double key;
    int index;
} planner_item;

/* qsort order of planner_items: by key descending, ties to the lower
 * index. */
int planner_item_by_key(const void *x, const void *y);

#endif
