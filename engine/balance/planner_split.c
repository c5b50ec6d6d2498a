/* Split experts: share tables, and levelling a layer's rows to the
 * ranks' speeds by handing pieces of experts over. */
#include "engine/balance/planner.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/balance/planner_internal.h"

void planner_whole_shares(const planner_problem *p, const int *placement,
                          int units, int *share)
{
    size_t cells = (size_t)p->layers * p->experts;
    memset(share, 0, cells * p->ranks * sizeof *share);
    for (size_t i = 0; i < cells; i++)
        share[i * p->ranks + placement[i]] = units;
}

int planner_share_transfers(const planner_problem *p, const int *from,
                            const int *to)
{
    size_t n = (size_t)p->layers * p->experts * p->ranks;
    int transfers = 0;
    for (size_t i = 0; i < n; i++)
        transfers += to[i] > 0 && from[i] == 0;
    return transfers;
}

/* Orders one rank's experts of a layer by load, heaviest first. */
static int planner_by_load(const void *x, const void *y)
{
    const planner_item *a = x, *b = y;
    if (a->key != b->key)
        return a->key < b->key ? 1 : -1;
    return a->index - b->index;
}

int planner_split(const planner_problem *p, const int *placement, int units,
                  double min_piece, int *primary, int *share)
{
    int R = p->ranks, E = p->experts, items = p->layers * E, split = 0;
    double *rows = malloc((size_t)3 * R * sizeof *rows);
    double *piece = malloc((size_t)R * sizeof *piece);
    int *room = malloc((size_t)R * sizeof *room);
    planner_item *mine = malloc((size_t)E * sizeof *mine);
    if (!rows || !piece || !room || !mine) {
        free(rows), free(piece), free(room), free(mine);
        return -1;
    }
    double *quota = rows + R, *spare = rows + 2 * R;
    memcpy(primary, placement, (size_t)items * sizeof *primary);
    planner_whole_shares(p, placement, units, share);
    for (int r = 0; r < R; r++) {
        int held = 0;
        for (int i = 0; i < items; i++)
            held += placement[i] == r;
        room[r] = planner_room(p, r, items) - held;
    }
    double speed = 0.0;
    for (int r = 0; r < R; r++)
        speed += p->rank[r].rate;
    for (int l = 0; l < p->layers; l++) {
        const int *place = placement + (size_t)l * E;
        const double *load = p->load + (size_t)l * E;
        double total = 0.0;
        for (int r = 0; r < R; r++)
            rows[r] = 0.0;
        for (int e = 0; e < E; e++) {
            rows[place[e]] += load[e];
            total += load[e];
        }
        for (int r = 0; r < R; r++) {
            quota[r] = total * p->rank[r].rate / speed;
            spare[r] = quota[r] - rows[r];
        }
        /* A rank over its share of the layer's rows (in proportion to
         * speed) hands rows of its heaviest experts to the ranks with the
         * most room under theirs. */
        for (int d = 0; d < R; d++) {
            double excess = rows[d] - quota[d];
            if (excess <= 0.01 * quota[d])
                continue;
            int n = 0;
            for (int e = 0; e < E; e++)
                if (place[e] == d && load[e] > 0)
                    mine[n++] = (planner_item){load[e], e};
            qsort(mine, (size_t)n, sizeof *mine, planner_by_load);
            for (int k = 0; k < n && excess > 0; k++) {
                int e = mine[k].index;
                double w = load[e], give = fmin(excess, w);
                int *part = share + ((size_t)l * E + e) * R;
                for (int r = 0; r < R; r++)
                    piece[r] = 0.0;
                int given = 0;
                while (give > min_piece * w) {
                    int best = -1;
                    for (int r = 0; r < R; r++)
                        if (r != d && spare[r] > min_piece * w &&
                            (room[r] > 0 || piece[r] > 0) &&
                            (best < 0 || spare[r] > spare[best]))
                            best = r;
                    if (best < 0)
                        break;
                    double a = fmin(give, spare[best]);
                    int u = (int)floor(a / w * units);
                    if (u < 1)
                        break;
                    if (piece[best] == 0)
                        room[best]--;
                    piece[best] += a;
                    part[best] += u;
                    given += u;
                    spare[best] -= a;
                    give -= a;
                    excess -= a;
                }
                if (!given)
                    continue;
                part[d] -= given;
                if (part[d] <= 0) { /* handed over whole: the biggest piece
                                       holder becomes its rank */
                    part[d] = 0;
                    int to = 0;
                    for (int r = 1; r < R; r++)
                        if (part[r] > part[to])
                            to = r;
                    primary[(size_t)l * E + e] = to;
                }
                split += 1;
            }
        }
    }
    free(rows), free(piece), free(room), free(mine);
    return split;
}
