/* The heuristic planner's working state: its slab, and the bookkeeping
 * of rank sums, item lists, free room and each layer's top times. */
#include "engine/balance/planner_search.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
int planner_search_candidates(planner_search *s, int l, int *list,
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

void planner_search_update_top(planner_search *s, int l)
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
void planner_search_resum(planner_search *s, int l, int r)
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

void planner_search_link(planner_search *s, int i, int r)
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
void planner_search_move(planner_search *s, int i, int to)
{
    int l = i / s->experts, from = s->place[i];
    search_unlink(s, i);
    planner_search_link(s, i, to);
    planner_search_resum(s, l, from);
    planner_search_resum(s, l, to);
}

/* Rebuilds sums, counts, lists and tops from s->place (entries -1
 * skipped). */
void planner_search_rebuild(planner_search *s)
{
    memset(s->held, 0, (size_t)s->ranks * sizeof *s->held);
    memset(s->changes, 0, (size_t)s->layers * sizeof *s->changes);
    for (int r = 0; r < s->ranks; r++) {
        s->first_item[r] = -1;
        search_update_open(s, r);
    }
    for (int i = s->layers * s->experts - 1; i >= 0; i--)
        if (s->place[i] >= 0)
            planner_search_link(s, i, s->place[i]);
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
                planner_search_resum(s, l, r);
        }
        planner_search_update_top(s, l);
    }
}

static size_t planner_aligned(size_t bytes)
{
    return (bytes + 7) & ~(size_t)7;
}

int planner_search_init(planner_search *s, const planner_problem *p)
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

void planner_search_finish(planner_search *s)
{
    free(s->slab);
    s->slab = NULL;
}
