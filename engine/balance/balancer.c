#include "engine/balance/balancer.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/balance/batch_split.h"
#include "engine/balance/cost.h"
#include "engine/core/stats.h"

int balancer_create(balancer *b, const config *cfg, int ranks,
                    int share_units, moe_error *err)
{
    memset(b, 0, sizeof *b);
    b->layers = cfg->model.n_layers;
    b->experts = cfg->moe.n_experts;
    b->ranks = ranks;
    b->decay = cfg->balance.load_ema;
    b->policy = cfg->balance.policy;
    b->every = cfg->balance.every;
    b->min_gain = cfg->balance.min_gain;
    b->devices = cfg->cluster.devices;
    cost_params params;
    cost_model_params(cfg, &params);
    b->expert_bytes = COST_STATE_BYTES_PER_PARAM * params.expert;
    b->move_bytes = COST_MOVE_BYTES_PER_PARAM * params.expert;
    b->dense_bytes = COST_STATE_BYTES_PER_PARAM * params.dense;
    b->grad_bytes = 4.0 * params.expert;
    b->share_units = share_units;
    b->link_bytes_per_s = cfg->cluster.link_gbps * 1e9;
    size_t cells = (size_t)b->layers * b->experts;
    b->load = calloc(cells, sizeof *b->load);
    b->proposal = calloc(cells, sizeof *b->proposal);
    b->proposal_share = calloc(cells * ranks, sizeof *b->proposal_share);
    b->rate = calloc((size_t)ranks, sizeof *b->rate);
    b->base_s = calloc((size_t)ranks, sizeof *b->base_s);
    b->planner_ranks = calloc((size_t)ranks, sizeof *b->planner_ranks);
    b->rows = calloc((size_t)ranks, sizeof *b->rows);
    b->dense_s_per_row = calloc((size_t)ranks, sizeof *b->dense_s_per_row);
    b->dense_fixed_s = calloc((size_t)ranks, sizeof *b->dense_fixed_s);
    b->row_points = calloc((size_t)ranks * BALANCER_ROW_POINTS,
                           sizeof *b->row_points);
    b->proposal_rows = calloc((size_t)ranks, sizeof *b->proposal_rows);
    b->activation_bytes_per_row =
        calloc((size_t)ranks, sizeof *b->activation_bytes_per_row);
    b->undo_rank = calloc(cells, sizeof *b->undo_rank);
    b->undo_share = calloc(cells * ranks, sizeof *b->undo_share);
    b->undo_rows = calloc((size_t)ranks, sizeof *b->undo_rows);
    size_t ring = (size_t)ranks * BALANCER_WINDOW_MAX;
    b->rate_ring = calloc(ring, sizeof *b->rate_ring);
    b->base_ring = calloc(ring, sizeof *b->base_ring);
    b->rate_count = calloc((size_t)ranks, sizeof *b->rate_count);
    b->base_count = calloc((size_t)ranks, sizeof *b->base_count);
    b->batch = cfg->train.batch_size;
    if (!b->load || !b->proposal || !b->proposal_share || !b->rate ||
        !b->base_s || !b->planner_ranks || !b->rows ||
        !b->dense_s_per_row || !b->dense_fixed_s || !b->row_points ||
        !b->proposal_rows || !b->activation_bytes_per_row ||
        !b->undo_rank || !b->undo_share || !b->undo_rows || !b->rate_ring ||
        !b->base_ring || !b->rate_count || !b->base_count) {
        balancer_destroy(b);
        return error_set(err, "out of memory");
    }
    return 0;
}

void balancer_destroy(balancer *b)
{
    free(b->load);
    free(b->proposal);
    free(b->proposal_share);
    free(b->rate);
    free(b->base_s);
    free(b->rate_ring);
    free(b->base_ring);
    free(b->rate_count);
    free(b->base_count);
    free(b->planner_ranks);
    free(b->rows);
    free(b->dense_s_per_row);
    free(b->dense_fixed_s);
    free(b->row_points);
    free(b->proposal_rows);
    free(b->activation_bytes_per_row);
    free(b->undo_rank);
    free(b->undo_share);
    free(b->undo_rows);
    memset(b, 0, sizeof *b);
}

static void average(double *avg, double x, double decay, int first)
{
    *avg = first ? x : decay * *avg + (1.0 - decay) * x;
}

/* The planner's view of the ranks from the moving averages: a rank that
 * never ran expert work is assumed as fast as the median known rank. */
static void build_ranks(balancer *b)
{
    double known[CONFIG_MAX_DEVICES];
    int n = 0;
    for (int r = 0; r < b->ranks; r++)
        if (b->rate[r] > 0 && n < CONFIG_MAX_DEVICES)
            known[n++] = b->rate[r];
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && known[j - 1] > known[j]; j--) {
            double x = known[j];
            known[j] = known[j - 1];
            known[j - 1] = x;
        }
    double fallback = n ? known[n / 2] : 1.0;
    for (int r = 0; r < b->ranks; r++) {
        planner_rank *q = &b->planner_ranks[r];
        q->rate = b->rate[r] > 0 ? b->rate[r] : fallback;
        q->base_s = b->base_s[r];
        q->capacity_bytes = b->devices[r].memory_gb * 1e9 - b->dense_bytes;
        if (q->capacity_bytes <= 0)
            q->capacity_bytes = 1; /* room for nothing, but "limited" */
    }
}

static planner_problem problem(balancer *b, const double *load,
                               const int *placement)
{
    build_ranks(b);
    planner_problem p = {
        .layers = b->layers, .experts = b->experts, .ranks = b->ranks,
        .load = load, .rank = b->planner_ranks, .placement = placement,
        .expert_bytes = b->expert_bytes,
        /* A move ships move_bytes once; its cost is spread over the steps
         * until the next plan. */
        .move_s_per_byte = b->move_bytes / b->expert_bytes /
                           b->link_bytes_per_s / b->every,
        .grad_bytes = b->grad_bytes,
        .sync_s_per_byte = b->reduce_s_per_byte > 0
                               ? b->reduce_s_per_byte
                               : 1.0 / b->link_bytes_per_s,
    };
    return p;
}

/* Keeps rank r's dense time at `rows`, then refits its line. */
static void observe_rows(balancer *b, int r, int rows, double s)
{
    balancer_row_point *p = b->row_points + (size_t)r * BALANCER_ROW_POINTS;
    balancer_row_point *at = NULL, *spare = p;
    for (int i = 0; i < BALANCER_ROW_POINTS; i++) {
        if (p[i].rows == rows)
            at = &p[i];
        /* An unused point, else the least recently seen. */
        if (spare->rows != 0 &&
            (p[i].rows == 0 || p[i].seen < spare->seen))
            spare = &p[i];
    }
    if (!at) {
        at = spare;
        *at = (balancer_row_point){.rows = rows};
    }
    average(&at->s, s, b->decay, at->samples == 0);
    at->samples++;
    at->seen = b->samples;

    /* Least squares over the counts with a few samples each: fixed +
     * rows · per_row, kept only when both are positive; else time / rows
     * at the present count. */
    double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int i = 0; i < BALANCER_ROW_POINTS; i++) {
        if (p[i].rows == 0 || p[i].samples < 3)
            continue;
        double x = p[i].rows, y = p[i].s;
        n++, sx += x, sy += y, sxx += x * x, sxy += x * y;
    }
    double var = n * sxx - sx * sx;
    double slope = var > 0 ? (n * sxy - sx * sy) / var : 0;
    double fixed = var > 0 ? (sy - slope * sx) / n : 0;
    if (var > 0 && slope > 0 && fixed >= 0) {
        b->dense_s_per_row[r] = slope;
        b->dense_fixed_s[r] = fixed;
    } else {
        b->dense_s_per_row[r] = at->s / rows;
        b->dense_fixed_s[r] = 0;
    }
}

static int judged_window(const balancer *b);

/* Adds x to rank r's ring (count samples so far) and returns the median
 * of its latest min(count, window) samples. */
static double ring_median(const balancer *b, double *ring, int *count,
                          double x)
{
    ring[*count % BALANCER_WINDOW_MAX] = x;
    ++*count;
    int window = judged_window(b);
    int n = *count < window ? *count : window;
    double latest[BALANCER_WINDOW_MAX];
    for (int i = 0; i < n; i++)
        latest[i] = ring[(*count - 1 - i) % BALANCER_WINDOW_MAX];
    return stats_median(latest, n);
}

void balancer_observe(balancer *b, step_stats *s)
{
    int first = b->samples == 0;
    size_t cells = (size_t)b->layers * b->experts;
    double step_load[4096];
    double *now = cells <= 4096 ? step_load : malloc(cells * sizeof *now);
    for (size_t i = 0; i < cells; i++) {
        average(&b->load[i], s->expert_load[i], b->decay, first);
        if (now)
            now[i] = s->expert_load[i];
    }
    double slowest = -1;
    s->straggler = -1;
    for (int r = 0; r < b->ranks; r++) {
        const rank_stats *q = &s->rank[r];
        double *rates = b->rate_ring + (size_t)r * BALANCER_WINDOW_MAX;
        double *bases = b->base_ring + (size_t)r * BALANCER_WINDOW_MAX;
        int rows = q->rows > 0 ? (int)q->rows : 1;
        if (q->tokens > 0 && q->expert_ms > 0)
            b->rate[r] = ring_median(b, rates, &b->rate_count[r],
                                     q->tokens / (q->expert_ms * 1e-3));
        if (rows != b->rows[r])
            b->base_count[r] = 0; /* other rows: a dense time of its own */
        b->base_s[r] = ring_median(b, bases, &b->base_count[r],
                                   q->dense_ms * 1e-3);
        /* The dense time of the passes alone, kept per row count: the
         * optimizer's and the batch's costs do not move with rows. */
        double pass_ms = q->pass_dense_ms > 0 ? q->pass_dense_ms
                                              : q->dense_ms;
        observe_rows(b, r, rows, pass_ms * 1e-3);
        b->rows[r] = rows;
        b->activation_bytes_per_row[r] = q->activation_bytes / rows;
        double busy = q->expert_ms + q->dense_ms;
        if (busy > slowest) {
            slowest = busy;
            s->straggler = r;
        }
    }
    if (b->ranks == 1)
        s->straggler = -1;
    /* The all-reduce's own cost per byte: the rank that arrived last
     * waited least, so its time is the closest to the transfer alone. */
    double reduce_s = INFINITY;
    for (int r = 0; r < b->ranks; r++)
        reduce_s = fmin(reduce_s, s->rank[r].allreduce_ms * 1e-3);
    double reduced = b->dense_bytes / 4.0 + s->split_experts * b->grad_bytes;
    if (b->ranks > 1 && reduced > 0 && isfinite(reduce_s))
        average(&b->reduce_s_per_byte, reduce_s / reduced, b->decay,
                b->reduce_s_per_byte == 0);
    average(&b->step_s, s->step_s, b->decay, first);
    b->recent_s[b->recent_next] = s->step_s;
    b->recent_next = (b->recent_next + 1) % BALANCER_WINDOW_MAX;
    b->recent_count += b->recent_count < BALANCER_WINDOW_MAX;
    /* What the compute model leaves unexplained is communication. The
     * ideal keeps everything measured but the expert phase, whose rows it
     * splits over the ranks in proportion to their speed, layer by layer,
     * so that all ranks finish each layer together: this step's time less
     * the excess of the layers' slowest ranks over that split. */
    double ideal = NAN;
    if (now) {
        planner_problem p = problem(b, now, s->placement);
        double compute = s->share && s->split_experts
                             ? planner_split_step_time(&p, s->share,
                                                       s->share_units)
                             : planner_step_time(&p, s->placement);
        average(&b->comm_s, s->step_s - compute, b->decay, first);
        double rows = 0, speed = 0, base = 0;
        for (size_t i = 0; i < cells; i++)
            rows += now[i];
        for (int r = 0; r < b->ranks; r++) {
            speed += b->planner_ranks[r].rate;
            base = fmax(base, b->planner_ranks[r].base_s);
        }
        double excess = compute - base - rows / speed;
        b->ideal_s = s->step_s - (excess > 0 ? excess : 0);
        ideal = s->tokens / b->ideal_s;
    }
    if (now != step_load)
        free(now);
    b->samples++;
    s->load_ema = b->load;
    s->ideal_tokens_per_s = ideal;
}

/* Experts whose rank or split differ between two proposals. */
static int changed_experts(const balancer *b, const int *placement_a,
                           const int *share_a, const int *placement_b,
                           const int *share_b)
{
    int changed = 0, R = b->ranks;
    for (size_t i = 0; i < (size_t)b->layers * b->experts; i++)
        changed += placement_a[i] != placement_b[i] ||
                   memcmp(share_a + i * R, share_b + i * R,
                          (size_t)R * sizeof *share_a) != 0;
    return changed;
}

/* Whether the proposed split of the batch differs from the present. */
static int rows_changed(const balancer *b)
{
    return memcmp(b->rows, b->proposal_rows,
                  (size_t)b->ranks * sizeof *b->rows) != 0;
}

/* The most rows rank r's memory holds beside its dense state, at its
 * measured activation bytes a row (INT_MAX when not measured). */
static int rows_room(const balancer *b, int r)
{
    double per_row = b->activation_bytes_per_row[r];
    double room = b->devices[r].memory_gb * 1e9 - b->dense_bytes;
    if (per_row <= 0)
        return INT_MAX;
    return room <= 0 ? 0 : (int)fmin(floor(room / per_row), INT_MAX);
}

/* The rows that finish the dense work soonest at each rank's measured
 * dense time (fixed + rows · per_row), no rank past the rows its memory
 * holds; the present rows where a rank has no measure yet, or the memory
 * cannot hold the batch. */
static void propose_rows(balancer *b)
{
    int most[CONFIG_MAX_DEVICES], measured = 1;
    for (int r = 0; r < b->ranks; r++) {
        measured &= b->dense_s_per_row[r] > 0;
        most[r] = rows_room(b, r);
    }
    if (!measured || batch_split_min_max(b->batch, b->ranks,
                                         b->dense_fixed_s,
                                         b->dense_s_per_row, most,
                                         b->proposal_rows) < 0)
        memcpy(b->proposal_rows, b->rows, (size_t)b->ranks * sizeof *b->rows);
}

/* One plan: the rows (proposed from the ranks' dense speeds, or the
 * present ones when keep_rows), then the placement around them. */
static int plan_once(balancer *b, const int *placement, const int *share,
                     int placement_version, int keep_rows, char *reason,
                     size_t reason_size)
{
    size_t cells = (size_t)b->layers * b->experts;
    int *moved = malloc(cells * sizeof *moved);
    int *candidate = malloc(cells * sizeof *candidate);
    int *candidate_share = malloc(cells * b->ranks * sizeof *candidate_share);
    if (!moved || !candidate || !candidate_share) {
        free(moved), free(candidate), free(candidate_share);
        snprintf(reason, reason_size, "plan: out of memory");
        return -1;
    }
    planner_problem p = problem(b, b->load, placement);
    int U = b->share_units;
    double before = planner_split_step_time(&p, share, U);
    /* The dense work's split: rows in proportion to each rank's measured
     * dense speed; the placement is then planned for the ranks' dense
     * times under those rows, so the two levers are chosen together. */
    if (keep_rows)
        memcpy(b->proposal_rows, b->rows, (size_t)b->ranks * sizeof *b->rows);
    else
        propose_rows(b);
    for (int r = 0; r < b->ranks; r++) {
        planner_rank *q = &b->planner_ranks[r];
        q->base_s = b->base_s[r] + b->dense_s_per_row[r] *
                                       (b->proposal_rows[r] - b->rows[r]);
        /* The experts fit around the rows' activations. */
        q->capacity_bytes -= b->activation_bytes_per_row[r] *
                             b->proposal_rows[r];
        if (q->capacity_bytes <= 0)
            q->capacity_bytes = 1;
    }
    if (planner_plan(&p, moved) < 0) {
        free(moved), free(candidate), free(candidate_share);
        snprintf(reason, reason_size, "plan: no placement fits the devices' "
                                      "memory (cluster.devices[].memory_gb)");
        return -1;
    }
    double ship_s = p.move_s_per_byte * p.expert_bytes; /* per replica */
    /* Candidates: the whole-expert plan, and splits on top of it and on
     * top of the present placement. The cheapest by predicted step time
     * plus what shipping its replicas costs wins; staying put costs
     * `before`. */
    memcpy(b->proposal, placement, cells * sizeof *placement);
    memcpy(b->proposal_share, share, cells * b->ranks * sizeof *share);
    /* Staying put on the placement, with the new rows. */
    double stay = planner_split_step_time(&p, share, U);
    double best_after = stay, best_cost = stay;
    for (int k = 0; k < 3; k++) {
        if (k == 0) {
            memcpy(candidate, moved, cells * sizeof *moved);
            planner_whole_shares(&p, moved, U, candidate_share);
        } else if (planner_split(&p, k == 1 ? moved : placement, U, 0.02,
                                 candidate, candidate_share) < 0) {
            continue;
        }
        double after = planner_split_step_time(&p, candidate_share, U);
        double cost = after + ship_s * planner_share_transfers(
                                           &p, share, candidate_share);
        if (cost < best_cost - 1e-12) {
            best_cost = cost;
            best_after = after;
            memcpy(b->proposal, candidate, cells * sizeof *candidate);
            memcpy(b->proposal_share, candidate_share,
                   cells * b->ranks * sizeof *candidate_share);
        }
    }
    free(moved), free(candidate), free(candidate_share);
    b->before_s = b->comm_s + before;
    b->after_s = b->comm_s + best_after;
    b->proposal_changes = changed_experts(b, placement, share, b->proposal,
                                          b->proposal_share) +
                          rows_changed(b);
    b->proposal_moves = planner_share_transfers(&p, share, b->proposal_share);
    b->proposal_version = placement_version;
    b->have_proposal = 1;
    return 0;
}

int balancer_plan(balancer *b, const int *placement, const int *share,
                  int placement_version, char *reason, size_t reason_size)
{
    if (b->samples == 0) {
        snprintf(reason, reason_size, "plan: nothing measured yet; train a "
                                      "step first");
        return -1;
    }
    int rc = plan_once(b, placement, share, placement_version, 0, reason,
                       reason_size);
    /* Rows in proportion to dense speed can still predict a slower step
     * once the experts are placed around them: then the present rows. */
    if (rc == 0 && rows_changed(b) && b->after_s > b->before_s)
        rc = plan_once(b, placement, share, placement_version, 1, reason,
                       reason_size);
    return rc;
}

/* One expert's proposed state: "3" when whole, "3:57%,0:14%" when split
 * (the expert's rank first). */
static int describe_expert(const balancer *b, size_t i, char *out,
                           size_t size)
{
    const int *part = b->proposal_share + i * b->ranks;
    int rank = b->proposal[i];
    if (part[rank] == b->share_units)
        return snprintf(out, size, "%d", rank);
    int n = snprintf(out, size, "%d:%.0f%%", rank,
                     100.0 * part[rank] / b->share_units);
    for (int r = 0; r < b->ranks; r++)
        if (r != rank && part[r] > 0 && n > 0 && (size_t)n < size)
            n += snprintf(out + n, size - (size_t)n, ",%d:%.0f%%", r,
                          100.0 * part[r] / b->share_units);
    return n;
}

void balancer_describe(const balancer *b, const int *placement,
                       const int *share, char *out, size_t size)
{
    size_t n = 0;
#define PUT(...)                                                               \
    do {                                                                       \
        int k = snprintf(out + n, n < size ? size - n : 0, __VA_ARGS__);       \
        if (k > 0)                                                             \
            n += (size_t)k;                                                    \
    } while (0)
    double gain = b->before_s > 0 ? 1.0 - b->after_s / b->before_s : 0;
    if (b->proposal_changes == 0) {
        PUT("placement is already the best found: predicted step %.3g ms",
            b->before_s * 1e3);
        return;
    }
    int splits = 0, rows = rows_changed(b);
    int experts = b->proposal_changes - rows;
    for (size_t i = 0; i < (size_t)b->layers * b->experts; i++)
        splits += b->proposal_share[i * b->ranks + b->proposal[i]] <
                  b->share_units;
    if (rows) { /* "rows 4/4 -> 6/2, " */
        for (int r = 0; r < b->ranks; r++)
            PUT("%s%d", r ? "/" : "rows ", b->rows[r]);
        for (int r = 0; r < b->ranks; r++)
            PUT("%s%d", r ? "/" : " -> ", b->proposal_rows[r]);
        PUT(", ");
    }
    /* The figures are each rank's medians over its latest steps (fewer at
     * the start of a run). */
    int window = judged_window(b);
    if (splits)
        PUT("%d change%s (%d expert%s split, %d replica%s shipped), "
            "predicted step %.3g -> %.3g ms (%+.1f%%, medians of %d "
            "steps):",
            experts, experts == 1 ? "" : "s", splits,
            splits == 1 ? "" : "s", b->proposal_moves,
            b->proposal_moves == 1 ? "" : "s", b->before_s * 1e3,
            b->after_s * 1e3, -gain * 100, window);
    else
        PUT("%d move%s, predicted step %.3g -> %.3g ms (%+.1f%%, medians "
            "of %d steps):",
            experts, experts == 1 ? "" : "s", b->before_s * 1e3,
            b->after_s * 1e3, -gain * 100, window);
    int shown = 0, R = b->ranks;
    for (int l = 0; l < b->layers; l++)
        for (int e = 0; e < b->experts; e++) {
            size_t i = (size_t)l * b->experts + e;
            if (placement[i] == b->proposal[i] &&
                !memcmp(share + i * R, b->proposal_share + i * R,
                        (size_t)R * sizeof *share))
                continue;
            if (shown++ == 4) {
                PUT(" ...");
                return;
            }
            char to[128];
            describe_expert(b, i, to, sizeof to);
            PUT(" %d.%d %d->%s", l, e, placement[i], to);
        }
#undef PUT
}

int balancer_write_plan(const balancer *b, metrics_sink *sink, int step,
                        const char *trigger, int applied, const int *placement,
                        moe_error *err)
{
    if (!sink)
        return 0;
    json_t *moves = json_array();
    for (int l = 0; l < b->layers; l++)
        for (int e = 0; e < b->experts; e++) {
            size_t i = (size_t)l * b->experts + e;
            if (placement[i] != b->proposal[i])
                json_array_append_new(moves, json_pack(
                    "[i, i, i, i]", l, e, placement[i], b->proposal[i]));
        }
    json_t *splits = metrics_splits_json(b->layers, b->experts, b->ranks,
                                         b->proposal, b->proposal_share,
                                         b->share_units);
    double gain = b->before_s > 0 ? 1.0 - b->after_s / b->before_s : 0;
    json_t *record = record_begin(RECORD_TYPE_PLAN);
    record_set_int(record, RECORD_PLAN_step, step);
    record_set_string(record, RECORD_PLAN_trigger, trigger);
    record_set_bool(record, RECORD_PLAN_applied, applied);
    record_set_json(record, RECORD_PLAN_moves, moves);
    record_set_json(record, RECORD_PLAN_splits, splits);
    json_t *rows = json_array();
    for (int r = 0; r < b->ranks; r++)
        json_array_append_new(rows, json_integer(b->proposal_rows[r]));
    record_set_json(record, RECORD_PLAN_rows, rows);
    record_set_int(record, RECORD_PLAN_changes, b->proposal_changes);
    record_set_real(record, RECORD_PLAN_predicted_before_ms,
                    b->before_s * 1e3);
    record_set_real(record, RECORD_PLAN_predicted_after_ms, b->after_s * 1e3);
    record_set_real(record, RECORD_PLAN_predicted_gain, gain);
    record_set_real(record, RECORD_PLAN_moved_bytes,
                    b->move_bytes * b->proposal_moves);
    return metrics_write_record(sink, record, err);
}


void balancer_keep_undo(balancer *b, const int *placement, const int *share,
                        const int *rows)
{
    size_t cells = (size_t)b->layers * b->experts;
    memcpy(b->undo_rank, placement, cells * sizeof *placement);
    memcpy(b->undo_share, share, cells * b->ranks * sizeof *share);
    memcpy(b->undo_rows, rows, (size_t)b->ranks * sizeof *rows);
}

int balancer_propose_revert(balancer *b, const int *placement,
                            const int *share, int version, char *text,
                            size_t size)
{
    int due = b->revert_due;
    b->revert_due = 0;
    if (!due || version != b->undo_version)
        return -1;
    size_t cells = (size_t)b->layers * b->experts;
    memcpy(b->proposal, b->undo_rank, cells * sizeof *b->proposal);
    memcpy(b->proposal_share, b->undo_share,
           cells * b->ranks * sizeof *b->proposal_share);
    memcpy(b->proposal_rows, b->undo_rows,
           (size_t)b->ranks * sizeof *b->proposal_rows);
    /* As predictions: the medians measured after and before the plan. */
    double measured = stats_median(b->measured_s, b->measured_steps);
    b->before_s = measured;
    b->after_s = b->applied_before_s;
    b->proposal_changes = changed_experts(b, placement, share, b->proposal,
                                          b->proposal_share) +
                          rows_changed(b);
    b->proposal_moves = 0;
    for (size_t i = 0; i < cells * b->ranks; i++)
        b->proposal_moves += b->proposal_share[i] > 0 && share[i] == 0;
    b->proposal_version = version;
    b->have_proposal = 1;
    snprintf(text, size, "moving back from the plan applied after step %d: "
             "%.3g ms a step after it against %.3g before (noise %.2g); ",
             b->undo_step, measured * 1e3, b->applied_before_s * 1e3,
             b->applied_noise_s * 1e3);
    return 0;
}

/* The steps a plan is judged over: `every` as it is now, at most the
 * ring. */
static int judged_window(const balancer *b)
{
    return b->every < 1                     ? 1
           : b->every > BALANCER_WINDOW_MAX ? BALANCER_WINDOW_MAX
                                            : b->every;
}

/* The median of the last `window` step times, and in *noise what the
 * difference of two such medians reaches by chance (0 with fewer than two
 * steps). */
static double recent_median(const balancer *b, int window, double *noise)
{
    double before[BALANCER_WINDOW_MAX], spread[BALANCER_WINDOW_MAX];
    int n = b->recent_count < window ? b->recent_count : window;
    for (int i = 0; i < n; i++)
        before[i] = b->recent_s[(b->recent_next - 1 - i + BALANCER_WINDOW_MAX)
                                % BALANCER_WINDOW_MAX];
    double mid = n > 0 ? stats_median(before, n) : b->step_s;
    for (int i = 0; i < n; i++)
        spread[i] = fabs(before[i] - mid);
    /* A robust standard deviation (1.4826 x the median absolute
     * deviation); a median's standard error is 1.2533 sigma/sqrt(n), and
     * the difference of two has sqrt(2) of that: its 95% band. */
    double sigma = n > 1 ? 1.4826 * stats_median(spread, n) : 0.0;
    *noise = 1.96 * 1.2533 * sigma * sqrt(2.0 / window);
    return mid;
}

double balancer_auto_threshold(const balancer *b, int *noisy)
{
    double asked = b->min_gain * (double)(1 << b->missed), noise_s;
    double mid = recent_median(b, judged_window(b), &noise_s);
    double noise = mid > 0 ? noise_s / mid : 0.0;
    if (noisy)
        *noisy = noise > asked;
    return noise > asked ? noise : asked;
}

void balancer_mark_applied(balancer *b, int step, int version, int by_auto,
                           int revert)
{
    b->undo_version = version;
    b->undo_step = step;
    b->applied_by_auto = by_auto;
    b->applied_revert = revert;
    b->window = judged_window(b);
    double mid = recent_median(b, b->window, &b->applied_noise_s);
    b->applied_before_s = mid;
    b->applied_after_s = b->after_s;
    b->applied_step = step;
    b->measured_steps = 0;
    b->pending_result = 1;
}

const char *const balancer_verdict_names[] = {
    [BALANCER_DELIVERED] = "delivered",
    [BALANCER_MISSED] = "missed",
    [BALANCER_NOISE] = "noise",
    NULL,
};

/* The measured gain against the predicted one and the noise. */
static balancer_verdict verdict_of(const balancer *b, double measured)
{
    double gain = b->applied_before_s - measured;
    double promised = b->applied_before_s - b->applied_after_s;
    if (fabs(gain) <= b->applied_noise_s)
        return BALANCER_NOISE;
    return gain > 0 && gain >= 0.5 * promised ? BALANCER_DELIVERED
                                              : BALANCER_MISSED;
}

int balancer_follow_up(balancer *b, const step_stats *s, metrics_sink *sink,
                       moe_error *err)
{
    if (!b->pending_result || s->step <= b->applied_step)
        return 0;
    b->measured_s[b->measured_steps++] = s->step_s;
    /* The window after follows `every` as it is now (a policy command
     * may have changed it since the plan was applied). */
    int window = judged_window(b);
    if (b->measured_steps < window)
        return 0;
    b->pending_result = 0;
    double measured = stats_median(b->measured_s, b->measured_steps);
    balancer_verdict verdict = b->verdict = verdict_of(b, measured);
    /* Only a plan that measurably delivered resets what auto asks; a move
     * back that restored the step does not (the plan it undid missed). */
    int delivered = verdict == BALANCER_DELIVERED;
    b->missed = delivered && !b->applied_revert ? 0
                : delivered                     ? b->missed
                : b->missed < 6                 ? b->missed + 1
                                                : 6;
    b->revert_due = verdict == BALANCER_MISSED && b->applied_by_auto &&
                    !b->applied_revert &&
                    measured > b->applied_before_s + b->applied_noise_s;
    if (sink) {
        json_t *record = record_begin(RECORD_TYPE_PLAN_RESULT);
        record_set_int(record, RECORD_PLAN_RESULT_step, s->step);
        record_set_int(record, RECORD_PLAN_RESULT_applied_step,
                       b->applied_step);
        record_set_int(record, RECORD_PLAN_RESULT_steps, b->measured_steps);
        record_set_real(record, RECORD_PLAN_RESULT_before_ms,
                        b->applied_before_s * 1e3);
        record_set_real(record, RECORD_PLAN_RESULT_predicted_ms,
                        b->applied_after_s * 1e3);
        record_set_real(record, RECORD_PLAN_RESULT_measured_ms,
                        measured * 1e3);
        record_set_real(record, RECORD_PLAN_RESULT_noise_ms,
                        b->applied_noise_s * 1e3);
        record_set_string(record, RECORD_PLAN_RESULT_verdict,
                          balancer_verdict_names[verdict]);
        record_set_bool(record, RECORD_PLAN_RESULT_delivered, delivered);
        if (metrics_write_record(sink, record, err) < 0)
            return -1;
    }
    return 1;
}
