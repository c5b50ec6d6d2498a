#include "engine/balance/planner.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* fmax without its NaN rules, so that it inlines in the inner loops. */
static double planner_max(double a, double b)
{
    return a > b ? a : b;
}

/* Seconds charged for moving one expert. */
static double planner_move_cost_s(const planner_problem *p)
{
    return p->expert_bytes * p->move_s_per_byte;
}

static double planner_base_s(const planner_problem *p)
{
    double base_s = p->ranks > 0 ? p->rank[0].base_s : 0.0;
    for (int r = 1; r < p->ranks; r++)
        base_s = fmax(base_s, p->rank[r].base_s);
    return base_s;
}

/* How many experts rank r holds without exceeding its capacity, by the
 * same product planner_overfull_rank checks, so the two cannot disagree
 * at a boundary. */
static int planner_room(const planner_problem *p, int r, int items)
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

/* ---- The heuristic: greedy filling and local search ------------------ */

/* Something to sort by key, descending, ties to the lower index. */
typedef struct planner_item {
    double key;
    int index;
} planner_item;

static int planner_item_by_key(const void *x, const void *y)
{
    const planner_item *a = x, *b = y;
    if (a->key != b->key)
        return a->key > b->key ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

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

static double search_penalty(const planner_search *s, int i, int r)
{
    return r == s->p->placement[i] ? 0.0 : s->move_cost_s;
}

static int search_has_room(const planner_search *s, int r)
{
    return s->held[r] < s->room[r];
}

static int planner_lowest_bit(uint64_t word)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctzll(word);
#else
    int bit = 0;
    while (!(word & 1)) {
        word >>= 1;
        bit++;
    }
    return bit;
#endif
}

/* The first position from k on in by_rate whose rank has room, or -1. */
static int search_next_open(const planner_search *s, int k)
{
    if (k >= s->ranks)
        return -1;
    int word = k / 64;
    uint64_t bits = s->open[word] & (~(uint64_t)0 << (k % 64));
    for (;;) {
        if (bits)
            return word * 64 + planner_lowest_bit(bits);
        if (++word >= (s->ranks + 63) / 64)
            return -1;
        bits = s->open[word];
    }
}

/* Keeps rank r's bit in s->open equal to whether it has room. */
static void search_update_open(planner_search *s, int r)
{
    int k = s->position[r];
    uint64_t bit = (uint64_t)1 << (k % 64);
    if (search_has_room(s, r))
        s->open[k / 64] |= bit;
    else
        s->open[k / 64] &= ~bit;
}

/* The layer's largest rank time over ranks other than a and b. */
static double search_rest_s(const planner_search *s, int l, int a, int b)
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
static double search_layer_delta(const planner_search *s, int l, int a, int b,
                                 double a_s, double b_s)
{
    double layer_s = planner_max(search_rest_s(s, l, a, b),
                                 planner_max(a_s, b_s));
    return layer_s - s->top_s[3 * l];
}

/* Marks the ranks holding layer l's experts with a fresh token; writes
 * them to `list` (in order of first expert) when it is not NULL. */
static int search_mark_layer(planner_search *s, int l, int *list)
{
    int n = 0;
    s->token++;
    for (int e = 0; e < s->experts; e++) {
        int r = s->place[(size_t)l * s->experts + e];
        if (r < 0 || s->stamp[r] == s->token)
            continue;
        s->stamp[r] = s->token;
        if (list)
            list[n] = r;
        n++;
    }
    return n;
}

/* The ranks worth trying in layer l: those holding its experts, then the
 * fastest idle rank with room. *blocked: the fastest idle rank when it is
 * full and faster than that one, else -1. */
static int search_candidates(planner_search *s, int l, int *list,
                             int *blocked)
{
    int n = search_mark_layer(s, l, list);
    *blocked = -1;
    int k = 0;
    while (k < s->ranks && s->stamp[s->by_rate[k]] == s->token)
        k++;
    if (k == s->ranks)
        return n;
    if (!search_has_room(s, s->by_rate[k]) && s->room[s->by_rate[k]] > 0)
        *blocked = s->by_rate[k];
    /* Full ranks can be many (the fast ones, once filled): skip them by
     * the bitmap, and the at most `experts` busy ones one by one. */
    for (k = search_next_open(s, k); k >= 0; k = search_next_open(s, k + 1))
        if (s->stamp[s->by_rate[k]] != s->token) {
            list[n++] = s->by_rate[k];
            break;
        }
    return n;
}

static void search_update_top(planner_search *s, int l)
{
    double *t = s->top_s + 3 * l;
    int *k = s->top_rank + 3 * l;
    t[0] = t[1] = t[2] = -1.0;
    k[0] = k[1] = k[2] = -1;
    /* Idle ranks take no time: only the ranks holding experts compete. */
    search_mark_layer(s, l, NULL);
    for (int e = 0; e < s->experts; e++) {
        int r = s->place[(size_t)l * s->experts + e];
        if (r < 0 || s->stamp[r] != s->token)
            continue;
        s->stamp[r] = s->token - 1; /* each rank once */
        double time_s = s->time_s[(size_t)l * s->ranks + r];
        for (int j = 0; j < 3; j++) {
            if (time_s > t[j] || (time_s == t[j] && r < k[j])) {
                for (int m = 2; m > j; m--)
                    t[m] = t[m - 1], k[m] = k[m - 1];
                t[j] = time_s, k[j] = r;
                break;
            }
        }
    }
}

/* Sums are re-added in expert order rather than updated by +/-, so that
 * a long search accumulates no rounding. */
static void search_resum(planner_search *s, int l, int r)
{
    int E = s->experts;
    double rows = 0.0;
    for (int e = 0; e < E; e++)
        if (s->place[(size_t)l * E + e] == r)
            rows += s->p->load[(size_t)l * E + e];
    size_t at = (size_t)l * s->ranks + r;
    s->rank_sum[at] = rows;
    s->time_s[at] = rows / s->p->rank[r].rate;
}

static void search_link(planner_search *s, int i, int r)
{
    s->place[i] = r;
    s->held[r]++;
    search_update_open(s, r);
    s->prev_item[i] = -1;
    s->next_item[i] = s->first_item[r];
    if (s->first_item[r] >= 0)
        s->prev_item[s->first_item[r]] = i;
    s->first_item[r] = i;
    s->changes[i / s->experts]++;
}

static void search_unlink(planner_search *s, int i)
{
    int r = s->place[i], prev = s->prev_item[i], next = s->next_item[i];
    if (prev >= 0)
        s->next_item[prev] = next;
    else
        s->first_item[r] = next;
    if (next >= 0)
        s->prev_item[next] = prev;
    s->held[r]--;
    search_update_open(s, r);
    s->place[i] = -1;
}

/* Moves item i to rank `to`; the caller updates the layer's top times. */
static void search_move(planner_search *s, int i, int to)
{
    int l = i / s->experts, from = s->place[i];
    search_unlink(s, i);
    search_link(s, i, to);
    search_resum(s, l, from);
    search_resum(s, l, to);
}

/* Rebuilds sums, counts, lists and tops from s->place (entries -1
 * skipped). */
static void search_rebuild(planner_search *s)
{
    memset(s->held, 0, (size_t)s->ranks * sizeof *s->held);
    memset(s->changes, 0, (size_t)s->layers * sizeof *s->changes);
    for (int r = 0; r < s->ranks; r++) {
        s->first_item[r] = -1;
        search_update_open(s, r);
    }
    for (int i = s->layers * s->experts - 1; i >= 0; i--)
        if (s->place[i] >= 0)
            search_link(s, i, s->place[i]);
    for (int l = 0; l < s->layers; l++)
        s->kicked_at[l] = -1;
    for (int l = 0; l < s->layers; l++) {
        for (int r = 0; r < s->ranks; r++) {
            size_t at = (size_t)l * s->ranks + r;
            s->rank_sum[at] = s->time_s[at] = 0.0;
        }
        for (int e = 0; e < s->experts; e++) {
            int r = s->place[(size_t)l * s->experts + e];
            if (r >= 0)
                search_resum(s, l, r);
        }
        search_update_top(s, l);
    }
}

/* Places the unplaced items in `order` one by one, each on the rank with
 * room where it finishes first (LPT on uniform machines when the order is
 * by load, descending). penalty_aware: weigh the growth of the layer's
 * time against the move penalty instead. Returns -1 when room runs out. */
static int search_fill(planner_search *s, const planner_item *order,
                       int penalty_aware)
{
    int items = s->layers * s->experts;
    int *list = s->candidates;
    for (int n = 0; n < items; n++) {
        int i = order[n].index, l = i / s->experts;
        if (s->place[i] >= 0)
            continue;
        int blocked, count = search_candidates(s, l, list, &blocked);
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
        search_link(s, i, best);
        search_resum(s, l, best);
        search_update_top(s, l);
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
static void search_fill_packed(planner_search *s)
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
            search_link(s, items[n], s->pack_ranks[s->pack_best[n]]);
        for (int k = 0; k < n_ranks; k++)
            search_resum(s, l, s->pack_ranks[k]);
        search_update_top(s, l);
    }
}

/* The best rank for item i (in another layer than the move that wants
 * its slot) to go to; `freed` will have a free slot. *delta_s: the cost. */
static int search_best_eject(planner_search *s, int i, int freed,
                             double *delta_s)
{
    int l = i / s->experts, from = s->place[i], blocked;
    int *list = s->candidates + 2 * CANDIDATES(s->experts);
    int count = search_candidates(s, l, list, &blocked);
    int home = s->p->placement[i];
    if (home >= 0 && home < s->ranks)
        list[count++] = home;
    list[count++] = freed;
    double x = s->p->load[i];
    double from_s = (s->rank_sum[(size_t)l * s->ranks + from] - x) /
                    s->p->rank[from].rate;
    double best_s = INFINITY;
    int best = -1;
    for (int k = 0; k < count; k++) {
        int c = list[k];
        if (c == from || (c != freed && !search_has_room(s, c)))
            continue;
        double c_s = (s->rank_sum[(size_t)l * s->ranks + c] + x) /
                     s->p->rank[c].rate;
        double d = search_layer_delta(s, l, from, c, from_s, c_s) +
                   search_penalty(s, i, c) - search_penalty(s, i, from);
        if (d < best_s || (d == best_s && c < best)) {
            best_s = d;
            best = c;
        }
    }
    *delta_s = best_s;
    return best;
}

/* The cheapest way to free a slot on full rank b for a move in layer l
 * off rank a: an expert of another layer pushed out. Returns the item,
 * or -1; *to its destination, *delta_s the cost. */
static int search_cheapest_push(planner_search *s, int l, int a, int b,
                                int *to, double *delta_s)
{
    int best = -1;
    *delta_s = INFINITY;
    for (int j = s->first_item[b]; j >= 0; j = s->next_item[j]) {
        if (j / s->experts == l)
            continue;
        double d;
        int c = search_best_eject(s, j, a, &d);
        if (c >= 0 && d < *delta_s) {
            *delta_s = d;
            *to = c;
            best = j;
        }
    }
    return best;
}

/* Whether a change by d_s leaving times a_s, b_s on its two ranks beats
 * the best so far (best_s, its larger and its destination time). */
static int search_better(const planner_search *s, double d_s, double a_s,
                         double b_s, double best_s, double best_peak_s,
                         double best_to_s)
{
    if (d_s < best_s - s->min_gain_s)
        return 1;
    if (!(d_s <= best_s + s->min_gain_s) || d_s >= -s->min_gain_s)
        return 0;
    double peak_s = planner_max(a_s, b_s);
    return peak_s < best_peak_s || (peak_s == best_peak_s && b_s < best_to_s);
}

/* One improvement in layer l, taken off its bottleneck rank a: the best
 * plain move or swap that lowers the objective; else (with_push) a move
 * onto a full rank that pushes an expert of another layer out; else a
 * move or swap that keeps the objective and lowers rank a's time (ties
 * at the top would stop a search that takes only gains). Returns 1 if
 * it changed anything. */
static int search_step_layer(planner_search *s, int l, int with_push)
{
    const planner_problem *p = s->p;
    int E = s->experts, a = s->top_rank[3 * l];
    double layer_s = s->top_s[3 * l];
    if (a < 0 || layer_s <= 0)
        return 0;
    const int *place = s->place + (size_t)l * E;
    const double *load = p->load + (size_t)l * E;
    const double *sum = s->rank_sum + (size_t)l * s->ranks;
    double rate_a = p->rank[a].rate;
    int *list = s->candidates + CANDIDATES(E), blocked;
    int count = search_candidates(s, l, list, &blocked);
    if (blocked >= 0)
        list[count++] = blocked;

    /* Equal gains (often: the layer's time is set elsewhere) go to the
     * move that leaves the two ranks the least loaded. */
    double gain_s = -s->min_gain_s, gain_peak_s = INFINITY;
    double gain_to_s = INFINITY;
    double flat_s = layer_s - s->min_gain_s;
    int gain_e = -1, gain_f = -1, gain_b = -1;
    int flat_e = -1, flat_f = -1, flat_b = -1;
    double push_s = -s->min_gain_s;
    int push_e = -1, push_b = -1;

    for (int e = 0; e < E; e++) {
        if (place[e] != a || load[e] <= 0)
            continue;
        int i = l * E + e, home = p->placement[i];
        double x = load[e], a_s = (sum[a] - x) / rate_a;
        if (!(a_s < layer_s))
            continue;
        double stay_pen = search_penalty(s, i, a);
        list[count] = home >= 0 && home < s->ranks ? home : a;
        for (int k = 0; k <= count; k++) {
            int b = list[k];
            if (b == a || (i == s->tabu_item && b == s->tabu_rank))
                continue;
            double b_s = (sum[b] + x) / p->rank[b].rate;
            if (!(b_s < layer_s))
                continue;
            double pen = search_penalty(s, i, b) - stay_pen;
            double d = search_layer_delta(s, l, a, b, a_s, b_s) + pen;
            if (!search_has_room(s, b)) {
                if (d < push_s)
                    push_s = d, push_e = e, push_b = b;
                continue;
            }
            if (search_better(s, d, a_s, b_s, gain_s, gain_peak_s,
                              gain_to_s)) {
                gain_s = d, gain_to_s = b_s;
                gain_peak_s = planner_max(a_s, b_s);
                gain_e = e, gain_f = -1, gain_b = b;
            } else if (d <= 0 && pen <= 0 && planner_max(a_s, b_s) < flat_s) {
                flat_s = planner_max(a_s, b_s);
                flat_e = e, flat_f = -1, flat_b = b;
            }
        }
    }
    /* Swaps only where no move gains: they cost O(experts) each. */
    for (int e = 0; e < E && gain_e < 0; e++) {
        if (place[e] != a || load[e] <= 0)
            continue;
        int i = l * E + e;
        double x = load[e], stay_pen = search_penalty(s, i, a);
        for (int f = 0; f < E; f++) {
            int b = place[f];
            if (b == a || !(load[f] < x))
                continue;
            int j = l * E + f;
            if ((i == s->tabu_item && b == s->tabu_rank) ||
                (j == s->tabu_item && a == s->tabu_rank))
                continue;
            double y = load[f];
            double a2_s = (sum[a] - x + y) / rate_a;
            double b_s = (sum[b] + x - y) / p->rank[b].rate;
            if (!(b_s < layer_s) || !(a2_s < layer_s))
                continue;
            double pen = search_penalty(s, i, b) - stay_pen +
                         search_penalty(s, j, a) - search_penalty(s, j, b);
            double d = search_layer_delta(s, l, a, b, a2_s, b_s) + pen;
            if (search_better(s, d, a2_s, b_s, gain_s, gain_peak_s,
                              gain_to_s)) {
                gain_s = d, gain_to_s = b_s;
                gain_peak_s = planner_max(a2_s, b_s);
                gain_e = e, gain_f = f, gain_b = b;
            } else if (d <= 0 && pen <= 0 && planner_max(a2_s, b_s) < flat_s) {
                flat_s = planner_max(a2_s, b_s);
                flat_e = e, flat_f = f, flat_b = b;
            }
        }
    }

    if (gain_e >= 0) {
        if (gain_f >= 0)
            search_move(s, l * E + gain_f, a);
        search_move(s, l * E + gain_e, gain_b);
        search_update_top(s, l);
        return 1;
    }
    if (with_push && push_e >= 0) {
        int to;
        double d;
        int j = search_cheapest_push(s, l, a, push_b, &to, &d);
        if (j >= 0 && push_s + d < -s->min_gain_s) {
            search_move(s, l * E + push_e, push_b);
            search_move(s, j, to);
            search_update_top(s, l);
            search_update_top(s, j / E);
            return 1;
        }
    }
    if (flat_e >= 0) {
        if (flat_f >= 0)
            search_move(s, l * E + flat_f, a);
        search_move(s, l * E + flat_e, flat_b);
        search_update_top(s, l);
        return 1;
    }
    return 0;
}

/* Layer l's time plus the penalty of its moved experts. */
static double search_layer_cost(const planner_search *s, int l)
{
    double cost_s = s->top_s[3 * l];
    for (int e = 0; e < s->experts; e++) {
        int i = l * s->experts + e;
        cost_s += search_penalty(s, i, s->place[i]);
    }
    return cost_s;
}

static void search_save(planner_search *s, int l, int slot)
{
    memcpy(s->saved + (size_t)slot * s->experts,
           s->place + (size_t)l * s->experts,
           (size_t)s->experts * sizeof *s->saved);
}

static void search_restore(planner_search *s, int l, int slot)
{
    const int *saved = s->saved + (size_t)slot * s->experts;
    for (int e = 0; e < s->experts; e++) {
        int i = l * s->experts + e;
        if (s->place[i] != saved[e])
            search_move(s, i, saved[e]);
    }
    search_update_top(s, l);
}

static void search_descend(planner_search *s, int l)
{
    for (int k = 0; k < 2 * s->experts + 8 && search_step_layer(s, l, 0); k++)
        ;
}

/* The change of the objective if item i went home now (room aside), or
 * INFINITY when it is home or has none. */
static double search_home_gain(const planner_search *s, int i)
{
    int from = s->place[i], home = s->p->placement[i];
    if (from == home || from < 0 || home < 0 || home >= s->ranks)
        return INFINITY;
    int l = i / s->experts;
    double x = s->p->load[i];
    double from_s = (s->rank_sum[(size_t)l * s->ranks + from] - x) /
                    s->p->rank[from].rate;
    double home_s = (s->rank_sum[(size_t)l * s->ranks + home] + x) /
                    s->p->rank[home].rate;
    return search_layer_delta(s, l, from, home, from_s, home_s) -
           s->move_cost_s;
}

/* Sends home the experts of layer l whose return pays, where there is
 * room. Returns the number sent. */
static int search_return_home_layer(planner_search *s, int l)
{
    int sent = 0;
    for (int e = 0; e < s->experts; e++) {
        int i = l * s->experts + e;
        if (search_home_gain(s, i) < -s->min_gain_s &&
            search_has_room(s, s->p->placement[i])) {
            search_move(s, i, s->p->placement[i]);
            search_update_top(s, l);
            sent++;
        }
    }
    return sent;
}

/* The layers a trial may change, with their cost before it. */
typedef struct planner_trial {
    int layer[3], changes[3], n;
    double before_s;
} planner_trial;

static void trial_add(planner_search *s, planner_trial *t, int l)
{
    for (int k = 0; k < t->n; k++)
        if (t->layer[k] == l)
            return;
    t->layer[t->n] = l;
    t->changes[t->n] = s->changes[l];
    t->before_s += search_layer_cost(s, l);
    search_save(s, l, t->n);
    t->n++;
}

static double trial_cost(const planner_search *s, const planner_trial *t)
{
    double cost_s = 0.0;
    for (int k = 0; k < t->n; k++)
        cost_s += search_layer_cost(s, t->layer[k]);
    return cost_s;
}

static void trial_undo(planner_search *s, const planner_trial *t)
{
    for (int k = t->n - 1; k >= 0; k--) {
        search_restore(s, t->layer[k], k);
        s->changes[t->layer[k]] = t->changes[k]; /* as it was */
    }
}

/* When no single step helps layer l: move an expert off its bottleneck
 * rank a anyway (pushing one of another layer out if the destination is
 * full), let the layers involved settle, send home the experts that can
 * now go (one from any layer into the slot left on a), and keep the
 * result if the layers touched cost less than before. This finds the
 * exchanges of three or more experts that plain moves and swaps cannot.
 * Returns 1 if kept. */
static int search_kick_layer(planner_search *s, int l)
{
    int E = s->experts, a = s->top_rank[3 * l];
    if (a < 0 || s->top_s[3 * l] <= 0 || s->kicked_at[l] == s->changes[l])
        return 0;
    int *list = s->candidates, blocked;
    int count = search_candidates(s, l, list, &blocked);
    if (blocked >= 0)
        list[count++] = blocked;
    for (int e = 0; e < E; e++) {
        int i = l * E + e;
        if (s->place[i] != a || s->p->load[i] <= 0)
            continue;
        for (int k = 0; k < count; k++) {
            int b = list[k], push = -1, to = -1;
            if (b == a)
                continue;
            if (s->trials_left <= 0)
                return 0;
            s->trials_left--;
            if (!search_has_room(s, b)) {
                double push_s;
                push = search_cheapest_push(s, l, a, b, &to, &push_s);
                if (push < 0)
                    continue;
            }
            planner_trial t = {.n = 0};
            trial_add(s, &t, l);
            if (push >= 0)
                trial_add(s, &t, push / E);
            search_move(s, i, b);
            search_update_top(s, l);
            s->tabu_item = i;
            s->tabu_rank = a;
            if (push >= 0) {
                search_move(s, push, to);
                search_update_top(s, push / E);
                search_descend(s, push / E);
            }
            search_descend(s, l);
            s->tabu_item = -1;
            if (s->move_cost_s > 0) {
                for (int n = 0; n < t.n; n++)
                    search_return_home_layer(s, t.layer[n]);
                int home_item = -1;
                double home_s = -s->min_gain_s;
                for (int j = s->home_first[a]; j >= 0 && search_has_room(s, a);
                     j = s->home_next[j]) {
                    int lj = j / E;
                    if (lj == l || (push >= 0 && lj == push / E))
                        continue;
                    double d = search_home_gain(s, j);
                    if (d < home_s) {
                        home_s = d;
                        home_item = j;
                    }
                }
                if (home_item >= 0) {
                    trial_add(s, &t, home_item / E);
                    search_move(s, home_item, a);
                    search_update_top(s, home_item / E);
                }
            }
            if (trial_cost(s, &t) < t.before_s - s->min_gain_s)
                return 1;
            trial_undo(s, &t);
        }
    }
    /* Not again until the layer changes. */
    s->kicked_at[l] = s->changes[l];
    return 0;
}

/* The best swap that sends item i home to a full rank, trading places
 * with an expert of its layer there. Returns that expert, or -1; *delta_s
 * the change of the objective. */
static int search_best_home_swap(const planner_search *s, int i,
                                 double *delta_s)
{
    const planner_problem *p = s->p;
    int E = s->experts, l = i / E, from = s->place[i], home = p->placement[i];
    const double *sum = s->rank_sum + (size_t)l * s->ranks;
    double x = p->load[i];
    int best = -1;
    *delta_s = INFINITY;
    for (int f = 0; f < E; f++) {
        int j = l * E + f;
        if (s->place[j] != home)
            continue;
        double y = p->load[j];
        double from_s = (sum[from] - x + y) / p->rank[from].rate;
        double home_s = (sum[home] + x - y) / p->rank[home].rate;
        double d = search_layer_delta(s, l, from, home, from_s, home_s) -
                   search_penalty(s, i, from) + search_penalty(s, j, from) -
                   search_penalty(s, j, home);
        if (d < *delta_s) {
            *delta_s = d;
            best = j;
        }
    }
    return best;
}

/* Sends home every expert whose return pays for itself. Where its home
 * is full, it trades places with an expert of its layer there, or pushes
 * out one of another layer, whichever pays more. */
static int search_return_home(planner_search *s)
{
    int items = s->layers * s->experts, changed = 0;
    for (int i = 0; i < items && s->moves_left > 0; i++) {
        double d = search_home_gain(s, i);
        if (isinf(d))
            continue;
        int l = i / s->experts, home = s->p->placement[i];
        if (search_has_room(s, home)) {
            if (d < -s->min_gain_s) {
                search_move(s, i, home);
                search_update_top(s, l);
                s->moves_left--;
                changed = 1;
            }
            continue;
        }
        double swap_s, push_s = INFINITY;
        int from = s->place[i], to = -1, push = -1;
        int swap = search_best_home_swap(s, i, &swap_s);
        if (d < -s->min_gain_s) {
            push = search_cheapest_push(s, l, from, home, &to, &push_s);
            push_s = push >= 0 ? d + push_s : INFINITY;
        }
        if (swap >= 0 && swap_s <= push_s && swap_s < -s->min_gain_s) {
            search_move(s, swap, from);
            search_move(s, i, home);
            search_update_top(s, l);
        } else if (push >= 0 && push_s < -s->min_gain_s) {
            search_move(s, push, to);
            search_update_top(s, push / s->experts);
            search_move(s, i, home);
            search_update_top(s, l);
        } else {
            continue;
        }
        s->moves_left -= 2;
        changed = 1;
    }
    return changed;
}

static void search_improve(planner_search *s)
{
    int items = s->layers * s->experts;
    double scale_s = s->move_cost_s;
    for (int l = 0; l < s->layers; l++)
        scale_s += s->top_s[3 * l];
    s->min_gain_s = 1e-12 * scale_s;
    s->moves_left = 8 * items + 64;
    s->trials_left = 4 * items + 64;
    for (int pass = 0; pass < 64 && s->moves_left > 0; pass++) {
        int changed = 0;
        if (s->move_cost_s > 0)
            changed |= search_return_home(s);
        for (int l = 0; l < s->layers; l++)
            while (s->moves_left > 0 && search_step_layer(s, l, 1)) {
                s->moves_left--;
                changed = 1;
            }
        if (changed)
            continue;
        for (int l = 0; l < s->layers; l++)
            if (search_kick_layer(s, l)) {
                s->moves_left--;
                changed = 1;
            }
        if (!changed)
            break;
    }
}


static size_t planner_aligned(size_t bytes)
{
    return (bytes + 7) & ~(size_t)7;
}

/* Allocates the search's slab and fills what depends only on the
 * problem: room, ranks by rate, home lists, items by load. Returns -1
 * when out of memory. */
static int search_init(planner_search *s, const planner_problem *p)
{
    int L = p->layers, E = p->experts, R = p->ranks, items = L * E;
    *s = (planner_search){.p = p, .layers = L, .experts = E, .ranks = R,
                          .move_cost_s = planner_move_cost_s(p),
                          .tabu_item = -1};
    size_t bytes = 0;
#define X(type, name, count) bytes += planner_aligned((count) * sizeof(type));
    PLANNER_SEARCH_ARRAYS(X, L, E, R)
#undef X
    /* Zeroed: stamp starts below every token, open's tail bits stay 0. */
    char *at = s->slab = calloc(1, bytes);
    if (!at)
        return -1;
#define X(type, name, count)                                                 \
    s->name = (type *)(void *)at;                                            \
    at += planner_aligned((count) * sizeof(type));
    PLANNER_SEARCH_ARRAYS(X, L, E, R)
#undef X

    /* Ranks with no room at all go last: they can only mislead a search
     * for the fastest idle rank. */
    for (int r = 0; r < R; r++) {
        s->room[r] = planner_room(p, r, items);
        s->order[r] = (planner_item){s->room[r] > 0 ? p->rank[r].rate : -1.0,
                                     r};
        s->home_first[r] = -1;
    }
    qsort(s->order, (size_t)R, sizeof *s->order, planner_item_by_key);
    for (int k = 0; k < R; k++) {
        s->by_rate[k] = s->order[k].index;
        s->position[s->by_rate[k]] = k;
    }
    for (int i = items - 1; i >= 0; i--) {
        int home = p->placement[i];
        if (home >= 0 && home < R) {
            s->home_next[i] = s->home_first[home];
            s->home_first[home] = i;
        }
    }
    for (int i = 0; i < items; i++)
        s->order[i] = (planner_item){p->load[i], i};
    qsort(s->order, (size_t)items, sizeof *s->order, planner_item_by_key);

    /* Each layer's items hottest first, and the layers heaviest first. */
    for (int l = 0; l < L; l++)
        s->changes[l] = 0;
    for (int n = 0; n < items; n++) {
        int i = s->order[n].index, l = i / E;
        s->by_layer[(size_t)l * E + s->changes[l]++] = i;
    }
    for (int l = 0; l < L; l++) {
        double rows = 0.0;
        for (int e = 0; e < E; e++)
            rows += p->load[(size_t)l * E + e];
        s->layer_order[l] = (planner_item){rows, l};
    }
    qsort(s->layer_order, (size_t)L, sizeof *s->layer_order,
          planner_item_by_key);
    return 0;
}

static void search_finish(planner_search *s)
{
    free(s->slab);
    s->slab = NULL;
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
    search_improve(s);
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
    search_rebuild(s);
}

int planner_plan(const planner_problem *p, int *out)
{
    int L = p->layers, E = p->experts, R = p->ranks, items = L * E;
    memcpy(out, p->placement, (size_t)items * sizeof *out);
    if (items == 0)
        return 0;
    planner_search s;
    if (R <= 0 || search_init(&s, p) != 0)
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
    search_rebuild(&s);
    for (int n = items - 1; n >= 0; n--) {
        int i = s.order[n].index, r = s.place[i];
        if (r >= 0 && s.held[r] > s.room[r]) {
            s.place[i] = -1;
            s.held[r]--;
        }
    }
    search_rebuild(&s);
    if (search_fill(&s, s.order, 1) == 0 &&
        search_finish_start(&s, out, &best_s, bound_s))
        goto done;

    /* (b) From scratch, hottest experts first; (c) the same, weighing
     * each move against its penalty. */
    for (int penalty_aware = 0; penalty_aware <= (s.move_cost_s > 0);
         penalty_aware++) {
        search_clear(&s);
        if (search_fill(&s, s.order, penalty_aware) == 0 &&
            search_finish_start(&s, out, &best_s, bound_s))
            goto done;
    }

    /* (d) From scratch, layer by layer, heaviest layers first. */
    search_clear(&s);
    search_fill_packed(&s);
    search_finish_start(&s, out, &best_s, bound_s);

done:
    search_finish(&s);
    if (!isfinite(best_s)) {
        memcpy(out, p->placement, (size_t)items * sizeof *out);
        return -1;
    }
    return 0;
}

/* ---- Exhaustive search --------------------------------------------- */

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

/* ---- Split experts ---------------------------------------------------- */

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
