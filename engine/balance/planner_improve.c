/* The heuristic's local search: moves and swaps off each layer's
 * bottleneck rank, pushes onto full ranks, kicks that find longer
 * exchanges, and experts sent home when their return pays. */
#include "engine/balance/planner_search.h"

#include <math.h>
#include <string.h>

/* The best rank for item i (in another layer than the move that wants
 * its slot) to go to; `freed` will have a free slot. *delta_s: the cost. */
static int search_best_eject(planner_search *s, int i, int freed,
                             double *delta_s)
{
    int l = i / s->experts, from = s->place[i], blocked;
    int *list = s->candidates + 2 * CANDIDATES(s->experts);
    int count = planner_search_candidates(s, l, list, &blocked);
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

/* One layer's bottleneck rank a, what it holds and the best changes off
 * it found so far: a gain (a move, or a swap with expert gain_f), a move
 * onto a full rank that needs a push, and a flat change that keeps the
 * objective but lowers the larger of the two ranks' times. */
typedef struct search_step {
    int l, a;
    double layer_s, rate_a;
    const int *place;   /* (experts) the layer's placement */
    const double *load; /* (experts) */
    const double *sum;  /* (ranks) the layer's rows per rank */
    double gain_s, gain_peak_s, gain_to_s;
    int gain_e, gain_f, gain_b;
    double flat_s;
    int flat_e, flat_f, flat_b;
    double push_s;
    int push_e, push_b;
} search_step;

/* Records a change by d (pen of it penalty) that moves expert e to rank b
 * (and f, when not -1, back to a), leaving times a_s and b_s. */
static void step_offer(const planner_search *s, search_step *t, double d,
                       double pen, double a_s, double b_s, int e, int f,
                       int b)
{
    if (search_better(s, d, a_s, b_s, t->gain_s, t->gain_peak_s,
                      t->gain_to_s)) {
        t->gain_s = d, t->gain_to_s = b_s;
        t->gain_peak_s = planner_max(a_s, b_s);
        t->gain_e = e, t->gain_f = f, t->gain_b = b;
    } else if (d <= 0 && pen <= 0 && planner_max(a_s, b_s) < t->flat_s) {
        t->flat_s = planner_max(a_s, b_s);
        t->flat_e = e, t->flat_f = f, t->flat_b = b;
    }
}

/* Every move of an expert off rank a to a candidate in list (count of
 * them; the slot after them takes the expert's home). */
static void step_try_moves(const planner_search *s, search_step *t,
                           int *list, int count)
{
    const planner_problem *p = s->p;
    int E = s->experts, a = t->a;
    for (int e = 0; e < E; e++) {
        if (t->place[e] != a || t->load[e] <= 0)
            continue;
        int i = t->l * E + e, home = p->placement[i];
        double x = t->load[e], a_s = (t->sum[a] - x) / t->rate_a;
        if (!(a_s < t->layer_s))
            continue;
        double stay_pen = search_penalty(s, i, a);
        list[count] = home >= 0 && home < s->ranks ? home : a;
        for (int k = 0; k <= count; k++) {
            int b = list[k];
            if (b == a || (i == s->tabu_item && b == s->tabu_rank))
                continue;
            double b_s = (t->sum[b] + x) / p->rank[b].rate;
            if (!(b_s < t->layer_s))
                continue;
            double pen = search_penalty(s, i, b) - stay_pen;
            double d = search_layer_delta(s, t->l, a, b, a_s, b_s) + pen;
            if (!search_has_room(s, b)) {
                if (d < t->push_s)
                    t->push_s = d, t->push_e = e, t->push_b = b;
                continue;
            }
            step_offer(s, t, d, pen, a_s, b_s, e, -1, b);
        }
    }
}

/* Every swap of an expert on rank a with a lighter one of the layer
 * elsewhere: they cost O(experts) each, so only where no move gains. */
static void step_try_swaps(const planner_search *s, search_step *t)
{
    const planner_problem *p = s->p;
    int E = s->experts, a = t->a;
    for (int e = 0; e < E && t->gain_e < 0; e++) {
        if (t->place[e] != a || t->load[e] <= 0)
            continue;
        int i = t->l * E + e;
        double x = t->load[e], stay_pen = search_penalty(s, i, a);
        for (int f = 0; f < E; f++) {
            int b = t->place[f];
            if (b == a || !(t->load[f] < x))
                continue;
            int j = t->l * E + f;
            if ((i == s->tabu_item && b == s->tabu_rank) ||
                (j == s->tabu_item && a == s->tabu_rank))
                continue;
            double y = t->load[f];
            double a2_s = (t->sum[a] - x + y) / t->rate_a;
            double b_s = (t->sum[b] + x - y) / p->rank[b].rate;
            if (!(b_s < t->layer_s) || !(a2_s < t->layer_s))
                continue;
            double pen = search_penalty(s, i, b) - stay_pen +
                         search_penalty(s, j, a) - search_penalty(s, j, b);
            double d = search_layer_delta(s, t->l, a, b, a2_s, b_s) + pen;
            step_offer(s, t, d, pen, a2_s, b_s, e, f, b);
        }
    }
}

/* Moves expert e of the step's layer to rank b, and f (when not -1)
 * back to its bottleneck rank. */
static void step_take(planner_search *s, const search_step *t, int e, int f,
                      int b)
{
    int E = s->experts;
    if (f >= 0)
        planner_search_move(s, t->l * E + f, t->a);
    planner_search_move(s, t->l * E + e, b);
    planner_search_update_top(s, t->l);
}

/* Carries out the best change found: a gain; else (with_push) a push
 * that pays; else a flat change. Returns 1 if it changed anything. */
static int step_apply(planner_search *s, const search_step *t, int with_push)
{
    int E = s->experts, l = t->l, a = t->a;
    if (t->gain_e >= 0) {
        step_take(s, t, t->gain_e, t->gain_f, t->gain_b);
        return 1;
    }
    if (with_push && t->push_e >= 0) {
        int to;
        double d;
        int j = search_cheapest_push(s, l, a, t->push_b, &to, &d);
        if (j >= 0 && t->push_s + d < -s->min_gain_s) {
            planner_search_move(s, l * E + t->push_e, t->push_b);
            planner_search_move(s, j, to);
            planner_search_update_top(s, l);
            planner_search_update_top(s, j / E);
            return 1;
        }
    }
    if (t->flat_e >= 0) {
        step_take(s, t, t->flat_e, t->flat_f, t->flat_b);
        return 1;
    }
    return 0;
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
    int *list = s->candidates + CANDIDATES(E), blocked;
    int count = planner_search_candidates(s, l, list, &blocked);
    if (blocked >= 0)
        list[count++] = blocked;

    /* Equal gains (often: the layer's time is set elsewhere) go to the
     * move that leaves the two ranks the least loaded. */
    search_step t = {
        .l = l, .a = a, .layer_s = layer_s, .rate_a = p->rank[a].rate,
        .place = s->place + (size_t)l * E, .load = p->load + (size_t)l * E,
        .sum = s->rank_sum + (size_t)l * s->ranks,
        .gain_s = -s->min_gain_s, .gain_peak_s = INFINITY,
        .gain_to_s = INFINITY, .gain_e = -1, .gain_f = -1, .gain_b = -1,
        .flat_s = layer_s - s->min_gain_s,
        .flat_e = -1, .flat_f = -1, .flat_b = -1,
        .push_s = -s->min_gain_s, .push_e = -1, .push_b = -1,
    };
    step_try_moves(s, &t, list, count);
    step_try_swaps(s, &t);
    return step_apply(s, &t, with_push);
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
            planner_search_move(s, i, saved[e]);
    }
    planner_search_update_top(s, l);
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
            planner_search_move(s, i, s->p->placement[i]);
            planner_search_update_top(s, l);
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
    int count = planner_search_candidates(s, l, list, &blocked);
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
            planner_search_move(s, i, b);
            planner_search_update_top(s, l);
            s->tabu_item = i;
            s->tabu_rank = a;
            if (push >= 0) {
                planner_search_move(s, push, to);
                planner_search_update_top(s, push / E);
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
                    planner_search_move(s, home_item, a);
                    planner_search_update_top(s, home_item / E);
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
                planner_search_move(s, i, home);
                planner_search_update_top(s, l);
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
            planner_search_move(s, swap, from);
            planner_search_move(s, i, home);
            planner_search_update_top(s, l);
        } else if (push >= 0 && push_s < -s->min_gain_s) {
            planner_search_move(s, push, to);
            planner_search_update_top(s, push / s->experts);
            planner_search_move(s, i, home);
            planner_search_update_top(s, l);
        } else {
            continue;
        }
        s->moves_left -= 2;
        changed = 1;
    }
    return changed;
}

void planner_search_improve(planner_search *s)
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
