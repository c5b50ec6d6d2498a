/* The predicted step time: T(P) of a placement and of a share table of
 * split experts (the formulas in planner.h). */
#include "engine/balance/planner.h"

#include <math.h>
#include <stdlib.h>

#include "engine/balance/planner_internal.h"

double planner_base_s(const planner_problem *p)
{
    double base_s = p->ranks > 0 ? p->rank[0].base_s : 0.0;
    for (int r = 1; r < p->ranks; r++)
        base_s = fmax(base_s, p->rank[r].base_s);
    return base_s;
}

double planner_step_time(const planner_problem *p, const int *placement)
{
    int E = p->experts;
    double total_s = planner_base_s(p);
    /* Each rank's sum is formed at its first expert in the layer: O(E²)
     * per layer and no scratch memory, so this cannot fail. */
    for (int l = 0; l < p->layers; l++) {
        const int *place = placement + (size_t)l * E;
        const double *load = p->load + (size_t)l * E;
        double layer_s = 0.0;
        for (int e = 0; e < E; e++) {
            int r = place[e], seen = 0;
            for (int f = 0; f < e && !seen; f++)
                seen = place[f] == r;
            if (seen)
                continue;
            double rows = 0.0;
            for (int f = e; f < E; f++)
                if (place[f] == r)
                    rows += load[f];
            layer_s = fmax(layer_s, rows / p->rank[r].rate);
        }
        total_s += layer_s;
    }
    return total_s;
}

double planner_split_step_time(const planner_problem *p, const int *share,
                               int units)
{
    int R = p->ranks, E = p->experts;
    double *rows = malloc((size_t)R * sizeof *rows);
    if (!rows)
        return INFINITY;
    double total_s = planner_base_s(p);
    for (int l = 0; l < p->layers; l++) {
        for (int r = 0; r < R; r++)
            rows[r] = 0.0;
        for (int e = 0; e < E; e++) {
            const int *part = share + ((size_t)l * E + e) * R;
            double load = p->load[(size_t)l * E + e];
            int holders = 0;
            for (int r = 0; r < R; r++)
                if (part[r] > 0) {
                    rows[r] += load * part[r] / units;
                    holders++;
                }
            /* A split expert's partial gradients join the step's
             * all-reduce, which every rank waits for. */
            if (holders > 1)
                total_s += p->grad_bytes * p->sync_s_per_byte;
        }
        double layer_s = 0.0;
        for (int r = 0; r < R; r++)
            layer_s = planner_max(layer_s, rows[r] / p->rank[r].rate);
        total_s += layer_s;
    }
    free(rows);
    return total_s;
}
