/* The exact optimum by exhaustive search, for testing the heuristic. */
#include "engine/balance/planner.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/balance/planner_internal.h"

/* Rows on rank r in layer l over the layer's items before `end` (the ones
 * placed so far), summed afresh in expert order so that every placement
 * gets the same rounding however the search reached it. */
static double brute_rank_sum(const planner_problem *p, const int *choice,
                             int l, int end, int r)
{
    double rows = 0.0;
    for (int i = l * p->experts; i < end; i++)
        if (choice[i] == r)
            rows += p->load[i];
    return rows;
}

int planner_brute_force(const planner_problem *p, int *out)
{
    int L = p->layers, E = p->experts, R = p->ranks, items = L * E;
    if (items == 0)
        return 0;
    if (R <= 0 || (double)items * log((double)R) > log(2e7))
        return -1;

    double move_cost_s = planner_move_cost_s(p), base_s = planner_base_s(p);
    int *choice = malloc((size_t)items * sizeof *choice);
    int *room = malloc((size_t)R * sizeof *room);
    int *held = calloc((size_t)R, sizeof *held);
    double *rank_sum = calloc((size_t)L * R, sizeof *rank_sum);
    int status = -1;
    if (!choice || !room || !held || !rank_sum)
        goto done;
    for (int r = 0; r < R; r++)
        room[r] = planner_room(p, r, items);

    /* Depth-first over items in (layer, expert) order. Loads are >= 0, so
     * the objective of a partial placement only grows as it fills: a
     * partial one no better than the best so far is cut. */
    double best_s = INFINITY;
    int moved = 0, depth = 0;
    choice[0] = -1;
    while (depth >= 0) {
        int i = depth, l = i / E, r = choice[i];
        if (r >= 0) {
            held[r]--;
            moved -= r != p->placement[i];
            rank_sum[(size_t)l * R + r] = brute_rank_sum(p, choice, l, i, r);
        }
        r = ++choice[i];
        if (r >= R) {
            depth--;
            continue;
        }
        /* Placed even when it overfills, so the next turn's undo holds. */
        held[r]++;
        moved += r != p->placement[i];
        rank_sum[(size_t)l * R + r] = brute_rank_sum(p, choice, l, i + 1, r);
        if (held[r] > room[r])
            continue;

        double bound_s = base_s + move_cost_s * moved;
        for (int k = 0; k < L; k++) {
            double layer_s = 0.0;
            for (int q = 0; q < R; q++)
                layer_s = fmax(layer_s, rank_sum[(size_t)k * R + q] /
                                            p->rank[q].rate);
            bound_s += layer_s;
        }
        if (!(bound_s < best_s))
            continue;
        if (depth == items - 1) {
            best_s = bound_s;
            memcpy(out, choice, (size_t)items * sizeof *out);
            continue;
        }
        choice[++depth] = -1;
    }
    status = isfinite(best_s) ? 0 : -1;

done:
    free(choice);
    free(room);
    free(held);
    free(rank_sum);
    return status;
}
