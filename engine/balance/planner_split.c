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

/* planner_split's scratch, one entry per rank. */
typedef struct split_scratch {
    int ranks, units;
    double min_piece;
    double *rows;  /* the layer's rows on the rank */
    double *quota; /* its part of them, in proportion to its rate */
    double *spare; /* quota less rows (less what it has taken since) */
    double *piece; /* rows of the current expert handed to it */
    int *room;     /* replicas it can still take */
} split_scratch;

/* Hands up to `give` of an expert's w rows from rank d to the ranks with
 * the most spare, in pieces of at least min_piece of it, adding their
 * units to its share row `part`. Returns the units given; *excess falls
 * by the rows given. */
static int split_hand_over(split_scratch *sc, int d, double w, double give,
                           int *part, double *excess)
{
    int R = sc->ranks, given = 0;
    for (int r = 0; r < R; r++)
        sc->piece[r] = 0.0;
    while (give > sc->min_piece * w) {
        int best = -1;
        for (int r = 0; r < R; r++)
            if (r != d && sc->spare[r] > sc->min_piece * w &&
                (sc->room[r] > 0 || sc->piece[r] > 0) &&
                (best < 0 || sc->spare[r] > sc->spare[best]))
                best = r;
        if (best < 0)
            break;
        double a = fmin(give, sc->spare[best]);
        int u = (int)floor(a / w * sc->units);
        if (u < 1)
            break;
        if (sc->piece[best] == 0)
            sc->room[best]--;
        sc->piece[best] += a;
        part[best] += u;
        given += u;
        sc->spare[best] -= a;
        give -= a;
        *excess -= a;
    }
    return given;
}

/* Levels layer l: a rank over its quota hands rows of its heaviest
 * experts to the ranks with the most spare. Returns the experts split. */
static int split_level_layer(const planner_problem *p, split_scratch *sc,
                             int l, const int *placement, planner_item *mine,
                             int *primary, int *share)
{
    int R = p->ranks, E = p->experts, split = 0;
    const int *place = placement + (size_t)l * E;
    const double *load = p->load + (size_t)l * E;
    for (int d = 0; d < R; d++) {
        double excess = sc->rows[d] - sc->quota[d];
        if (excess <= 0.01 * sc->quota[d])
            continue;
        int n = 0;
        for (int e = 0; e < E; e++)
            if (place[e] == d && load[e] > 0)
                mine[n++] = (planner_item){load[e], e};
        qsort(mine, (size_t)n, sizeof *mine, planner_item_by_key);
        for (int k = 0; k < n && excess > 0; k++) {
            int e = mine[k].index;
            double w = load[e];
            int *part = share + ((size_t)l * E + e) * R;
            int given = split_hand_over(sc, d, w, fmin(excess, w), part,
                                        &excess);
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
    return split;
}

int planner_split(const planner_problem *p, const int *placement, int units,
                  double min_piece, int *primary, int *share)
{
    int R = p->ranks, E = p->experts, items = p->layers * E, split = 0;
    double *rows = malloc((size_t)4 * R * sizeof *rows);
    int *room = malloc((size_t)R * sizeof *room);
    planner_item *mine = malloc((size_t)E * sizeof *mine);
    if (!rows || !room || !mine) {
        free(rows), free(room), free(mine);
        return -1;
    }
    split_scratch sc = {
        .ranks = R, .units = units, .min_piece = min_piece, .rows = rows,
        .quota = rows + R, .spare = rows + 2 * R, .piece = rows + 3 * R,
        .room = room,
    };
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
            sc.quota[r] = total * p->rank[r].rate / speed;
            sc.spare[r] = sc.quota[r] - rows[r];
        }
        split += split_level_layer(p, &sc, l, placement, mine, primary,
                                   share);
    }
    free(rows), free(room), free(mine);
    return split;
}
