/* The heuristic's starting placements: greedy filling (LPT on uniform
 * machines) and packing layer by layer against a bisected target time. */
#include "engine/balance/planner_search.h"

#include <math.h>
#include <string.h>

/* Places the unplaced items in `order` one by one, each on the rank with
 * room where it finishes first (LPT on uniform machines when the order is
 * by load, descending). penalty_aware: weigh the growth of the layer's
 * time against the move penalty instead. Returns -1 when room runs out. */
int planner_search_fill(planner_search *s, const planner_item *order,
                        int penalty_aware)
{
    int items = s->layers * s->experts;
    int *list = s->candidates;
    for (int n = 0; n < items; n++) {
        int i = order[n].index, l = i / s->experts;
        if (s->place[i] >= 0)
            continue;
        int blocked, count = planner_search_candidates(s, l, list, &blocked);
        int home = s->p->placement[i];
        if (home >= 0 && home < s->ranks)
            list[count++] = home;
        double x = s->p->load[i], layer_s = s->top_s[3 * l];
        double best_key = INFINITY, best_finish_s = INFINITY;
        int best = -1;
        for (int k = 0; k < count; k++) {
            int r = list[k];
            if (!search_has_room(s, r))
                continue;
            double rows = s->rank_sum[(size_t)l * s->ranks + r] + x;
            double finish_s = rows / s->p->rank[r].rate;
            double key = penalty_aware
                ? planner_max(layer_s, finish_s) + search_penalty(s, i, r)
                : finish_s;
            int tie = key == best_key &&
                      (finish_s < best_finish_s ||
                       (finish_s == best_finish_s && r < best));
            if (key < best_key || tie) {
                best_key = key;
                best_finish_s = finish_s;
                best = r;
            }
        }
        if (best < 0)
            return -1;
        planner_search_link(s, i, best);
        planner_search_resum(s, l, best);
        planner_search_update_top(s, l);
    }
    return 0;
}

/* Packs a layer's experts (`items`, hottest first) onto the first
 * n_ranks of s->pack_ranks so that none runs past target_s: each goes
 * where the fewest rows are left over below the target (best fit
 * decreasing). target_s = INFINITY: where it finishes first (LPT)
 * instead. Returns the layer's time, or INFINITY when one did not fit. */
static double search_pack(planner_search *s, const int *items, int n_ranks,
                          double target_s)
{
    const planner_rank *rank = s->p->rank;
    for (int k = 0; k < n_ranks; k++) {
        s->pack_rows[k] = 0.0;
        s->pack_taken[k] = 0;
    }
    for (int n = 0; n < s->experts; n++) {
        double x = s->p->load[items[n]], best_key = INFINITY;
        int best = -1;
        for (int k = 0; k < n_ranks; k++) {
            int r = s->pack_ranks[k];
            if (s->held[r] + s->pack_taken[k] >= s->room[r])
                continue;
            double finish_s = (s->pack_rows[k] + x) / rank[r].rate;
            if (finish_s > target_s)
                continue;
            double key = isinf(target_s) ? finish_s
                                         : (target_s - finish_s) * rank[r].rate;
            if (key < best_key) {
                best_key = key;
                best = k;
            }
        }
        if (best < 0)
            return INFINITY;
        s->pack_assign[n] = best;
        s->pack_rows[best] += x;
        s->pack_taken[best]++;
    }
    double layer_s = 0.0;
    for (int k = 0; k < n_ranks; k++)
        layer_s = fmax(layer_s, s->pack_rows[k] / rank[s->pack_ranks[k]].rate);
    return layer_s;
}

/* Places every layer from scratch, heaviest first, each packed onto the
 * fastest ranks with room (at most one per expert: a layer needs no
 * more) against the lowest target time that bisection finds best fit
 * decreasing to meet. */
void planner_search_fill_packed(planner_search *s)
{
    int E = s->experts;
    for (int q = 0; q < s->layers; q++) {
        int l = s->layer_order[q].index;
        const int *items = s->by_layer + (size_t)l * E;
        int n_ranks = 0;
        double rows = 0.0, rate = 0.0;
        for (int k = 0; k < s->ranks && n_ranks < E; k++) {
            int r = s->by_rate[k];
            if (search_has_room(s, r)) {
                s->pack_ranks[n_ranks++] = r;
                rate += s->p->rank[r].rate;
            }
        }
        for (int n = 0; n < E; n++)
            rows += s->p->load[items[n]];
        /* Room for every expert is certain: the total room covers them. */
        double best_s = search_pack(s, items, n_ranks, INFINITY);
        memcpy(s->pack_best, s->pack_assign, (size_t)E * sizeof *s->pack_best);
        double lo_s = fmax(rows / rate, s->p->load[items[0]] /
                                            s->p->rank[s->pack_ranks[0]].rate);
        double hi_s = best_s;
        for (int iter = 0; iter < 32 && hi_s - lo_s > 1e-9 * hi_s; iter++) {
            double mid_s = 0.5 * (lo_s + hi_s);
            double layer_s = search_pack(s, items, n_ranks, mid_s);
            if (isinf(layer_s)) {
                lo_s = mid_s;
                continue;
            }
            hi_s = mid_s;
            if (layer_s < best_s) {
                best_s = layer_s;
                memcpy(s->pack_best, s->pack_assign,
                       (size_t)E * sizeof *s->pack_best);
            }
        }
        for (int n = 0; n < E; n++)
            planner_search_link(s, items[n], s->pack_ranks[s->pack_best[n]]);
        for (int k = 0; k < n_ranks; k++)
            planner_search_resum(s, l, s->pack_ranks[k]);
        planner_search_update_top(s, l);
    }
}
