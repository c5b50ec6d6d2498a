/* The placement planner's API: feasibility, moves, and the heuristic's
 * driver (planner_plan), which improves several starting placements and
 * keeps the best. */
#include "engine/balance/planner.h"

#include <math.h>
#include <string.h>

#include "engine/balance/planner_search.h"

int planner_item_by_key(const void *x, const void *y)
{
    const planner_item *a = x, *b = y;
    if (a->key != b->key)
        return a->key > b->key ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

int planner_room(const planner_problem *p, int r, int items)
{
    double capacity = p->rank[r].capacity_bytes, bytes = p->expert_bytes;
    if (capacity <= 0 || bytes <= 0)
        return items;
    double fit = floor(capacity / bytes);
    int n = fit < items ? (int)fit : items;
    if (n < 0)
        n = 0;
    while (n > 0 && (double)n * bytes > capacity)
        n--;
    while (n < items && (double)(n + 1) * bytes <= capacity)
        n++;
    return n;
}

int planner_overfull_rank(const planner_problem *p, const int *placement)
{
    int items = p->layers * p->experts;
    for (int r = 0; r < p->ranks; r++) {
        double capacity = p->rank[r].capacity_bytes;
        if (capacity <= 0)
            continue;
        int held = 0;
        for (int i = 0; i < items; i++)
            held += placement[i] == r;
        if ((double)held * p->expert_bytes > capacity)
            return r;
    }
    return -1;
}

int planner_moves(const planner_problem *p, const int *from, const int *to,
                  planner_move *moves)
{
    int n = 0;
    for (int l = 0; l < p->layers; l++)
        for (int e = 0; e < p->experts; e++) {
            size_t i = (size_t)l * p->experts + e;
            if (from[i] == to[i])
                continue;
            if (moves)
                moves[n] = (planner_move){l, e, from[i], to[i]};
            n++;
        }
    return n;
}

/* T(P) + penalty for the experts whose rank differs from the current one. */
static double planner_objective(const planner_problem *p, const int *placement)
{
    int moved = planner_moves(p, p->placement, placement, NULL);
    return planner_step_time(p, placement) + planner_move_cost_s(p) * moved;
}

/* No placement beats this: per layer, its hottest expert alone on the
 * fastest rank, or all its rows spread over every rank's rate. */
static double planner_lower_bound_s(const planner_problem *p)
{
    double fastest = 0.0, total_rate = 0.0, bound_s = planner_base_s(p);
    for (int r = 0; r < p->ranks; r++) {
        fastest = planner_max(fastest, p->rank[r].rate);
        total_rate += p->rank[r].rate;
    }
    for (int l = 0; l < p->layers; l++) {
        double rows = 0.0, hottest = 0.0;
        for (int e = 0; e < p->experts; e++) {
            double x = p->load[(size_t)l * p->experts + e];
            rows += x;
            hottest = planner_max(hottest, x);
        }
        bound_s += planner_max(hottest / fastest, rows / total_rate);
    }
    return bound_s;
}

/* Improves s->place and keeps it in `best` if its objective is lower.
 * Returns 1 once `best` meets the lower bound: nothing can beat it. */
static int search_finish_start(planner_search *s, int *best, double *best_s,
                               double bound_s)
{
    planner_search_improve(s);
    double objective_s = planner_objective(s->p, s->place);
    if (objective_s < *best_s) {
        *best_s = objective_s;
        memcpy(best, s->place,
               (size_t)s->layers * s->experts * sizeof *best);
    }
    return *best_s <= bound_s * (1 + 1e-12);
}

static void search_clear(planner_search *s)
{
    for (int i = 0; i < s->layers * s->experts; i++)
        s->place[i] = -1;
    planner_search_rebuild(s);
}

int planner_plan(const planner_problem *p, int *out)
{
    int L = p->layers, E = p->experts, R = p->ranks, items = L * E;
    memcpy(out, p->placement, (size_t)items * sizeof *out);
    if (items == 0)
        return 0;
    planner_search s;
    if (R <= 0 || planner_search_init(&s, p) != 0)
        return -1;

    double total_room = 0, best_s = INFINITY;
    for (int r = 0; r < R; r++)
        total_room += s.room[r];
    if (total_room < items)
        goto done;
    double bound_s = planner_lower_bound_s(p);
    int current_valid = 1;
    for (int i = 0; i < items; i++)
        current_valid &= p->placement[i] >= 0 && p->placement[i] < R;
    if (current_valid && planner_overfull_rank(p, p->placement) < 0)
        best_s = planner_objective(p, p->placement);

    /* (a) From the current placement: experts off the ranks it overfills
     * (lightest first) and experts it leaves unplaced are placed again. */
    for (int i = 0; i < items; i++) {
        int r = p->placement[i];
        s.place[i] = r >= 0 && r < R ? r : -1;
    }
    planner_search_rebuild(&s);
    for (int n = items - 1; n >= 0; n--) {
        int i = s.order[n].index, r = s.place[i];
        if (r >= 0 && s.held[r] > s.room[r]) {
            s.place[i] = -1;
            s.held[r]--;
        }
    }
    planner_search_rebuild(&s);
    if (planner_search_fill(&s, s.order, 1) == 0 &&
        search_finish_start(&s, out, &best_s, bound_s))
        goto done;

    /* (b) From scratch, hottest experts first; (c) the same, weighing
     * each move against its penalty. */
    for (int penalty_aware = 0; penalty_aware <= (s.move_cost_s > 0);
         penalty_aware++) {
        search_clear(&s);
        if (planner_search_fill(&s, s.order, penalty_aware) == 0 &&
            search_finish_start(&s, out, &best_s, bound_s))
            goto done;
    }

    /* (d) From scratch, layer by layer, heaviest layers first. */
    search_clear(&s);
    planner_search_fill_packed(&s);
    search_finish_start(&s, out, &best_s, bound_s);

done:
    planner_search_finish(&s);
    if (!isfinite(best_s)) {
        memcpy(out, p->placement, (size_t)items * sizeof *out);
        return -1;
    }
    return 0;
}
