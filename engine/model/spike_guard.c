#include "engine/model/spike_guard.h"
#include "engine/core/stats.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

void spike_guard_reset(spike_guard_state *g)
{
    memset(g, 0, sizeof *g);
}

/* The median of a history, which stays in its order. */
static double median(const double *values, int count)
{
    double sorted[SPIKE_GUARD_WINDOW_MAX];
    memcpy(sorted, values, (size_t)count * sizeof *sorted);
    return stats_median(sorted, count);
}

static void remember_applied(spike_guard_state *g, int window, double loss,
                             double grad_norm)
{
    if (g->count == window) { /* oldest first: drop the oldest */
        memmove(g->loss, g->loss + 1, (size_t)(window - 1) * sizeof *g->loss);
        memmove(g->grad, g->grad + 1, (size_t)(window - 1) * sizeof *g->grad);
        g->count--;
    }
    g->loss[g->count] = loss;
    g->grad[g->count] = grad_norm;
    g->count++;
}

/* Spikes among the last `window` steps, this one included. */
static int spikes_within(const spike_guard_state *g, int step, int window)
{
    int n = 0;
    for (int i = 0; i < g->recent_count; i++)
        n += g->recent[i] > step - window;
    return n;
}

static void remember_spike(spike_guard_state *g, int step)
{
    if (g->recent_count == SPIKE_GUARD_RECENT_MAX) {
        memmove(g->recent, g->recent + 1,
                (SPIKE_GUARD_RECENT_MAX - 1) * sizeof *g->recent);
        g->recent_count--;
    }
    g->recent[g->recent_count++] = step;
    g->spikes++;
    g->consecutive++;
}

/* The batch trains again requeue_after steps on, unless the queue is
 * full or the batch was a requeued one already (a batch that spikes
 * twice is dropped). */
static int requeue(spike_guard_state *g, const config_spike_guard *s,
                   int step, const rng *batch, int replayed)
{
    if (replayed || !batch || g->queued == SPIKE_GUARD_QUEUE_MAX)
        return -1;
    spike_requeued *q = &g->queue[g->queued++];
    q->due_step = step + s->requeue_after;
    q->batch = *batch;
    return q->due_step;
}

/* Why the figures are a spike, or "" when they are not. */
static void judge_figures(const config_spike_guard *s, double loss,
                          double grad_norm, spike_verdict *v)
{
    if (!isfinite(loss) || !isfinite(grad_norm))
        snprintf(v->why, sizeof v->why, "loss %g, gradient norm %g: not "
                 "finite", loss, grad_norm);
    else if (isfinite(v->median_loss) && loss > s->loss_factor * v->median_loss)
        snprintf(v->why, sizeof v->why, "loss %.4g > %g x median %.4g",
                 loss, s->loss_factor, v->median_loss);
    else if (isfinite(v->median_grad) &&
             grad_norm > s->grad_factor * v->median_grad)
        snprintf(v->why, sizeof v->why,
                 "gradient norm %.4g > %g x median %.4g", grad_norm,
                 s->grad_factor, v->median_grad);
}

spike_verdict spike_guard_judge(spike_guard_state *g,
                                const config_spike_guard *s, int step,
                                double loss, double grad_norm,
                                const rng *batch, int replayed)
{
    spike_verdict v;
    memset(&v, 0, sizeof v);
    v.requeued_to = -1;
    v.median_loss = v.median_grad = NAN;
    if (s->window <= 0)
        return v;
    int window = s->window < SPIKE_GUARD_WINDOW_MAX ? s->window
                                                    : SPIKE_GUARD_WINDOW_MAX;
    if (g->count > window) { /* a resume with a smaller window */
        int drop = g->count - window;
        memmove(g->loss, g->loss + drop, (size_t)window * sizeof *g->loss);
        memmove(g->grad, g->grad + drop, (size_t)window * sizeof *g->grad);
        g->count = window;
    }
    if (g->count >= s->min_steps && g->count > 0) {
        v.median_loss = median(g->loss, g->count);
        v.median_grad = median(g->grad, g->count);
    }
    judge_figures(s, loss, grad_norm, &v);
    if (!v.why[0]) {
        remember_applied(g, window, loss, grad_norm);
        g->consecutive = 0;
        return v;
    }
    v.spike = 1;
    remember_spike(g, step);
    v.requeued_to = requeue(g, s, step, batch, replayed);
    if (s->rollback_after > 0 && g->consecutive >= s->rollback_after) {
        v.rollback = 1;
        return v;
    }
    if (s->lower_after > 0 && g->lowered_until < step &&
        spikes_within(g, step, window) >= s->lower_after) {
        g->lowered_until = step + s->lower_steps;
        v.lowered = 1;
    }
    return v;
}

double spike_guard_lr_scale(const spike_guard_state *g,
                            const config_spike_guard *s, int step)
{
    return s->window > 0 && step <= g->lowered_until ? s->lr_factor : 1.0;
}

int spike_guard_take_due(spike_guard_state *g, int step, rng *batch)
{
    for (int i = 0; i < g->queued; i++) {
        if (g->queue[i].due_step > step)
            continue;
        *batch = g->queue[i].batch;
        memmove(&g->queue[i], &g->queue[i + 1],
                (size_t)(g->queued - i - 1) * sizeof *g->queue);
        g->queued--;
        return 1;
    }
    return 0;
}

/* ---- In the checkpoint's manifest ---- */

static json_t *hex_u64(uint64_t x)
{
    char text[20];
    snprintf(text, sizeof text, "%016llx", (unsigned long long)x);
    return json_string(text);
}

static int read_hex_u64(json_t *j, uint64_t *out)
{
    const char *text = json_string_value(j);
    char *end;
    if (!text || strlen(text) != 16)
        return -1;
    *out = strtoull(text, &end, 16);
    return *end ? -1 : 0;
}

json_t *spike_guard_to_json(const spike_guard_state *g)
{
    json_t *j = json_object(), *loss = json_array(), *grad = json_array(),
           *recent = json_array(), *queue = json_array();
    for (int i = 0; i < g->count; i++) {
        json_array_append_new(loss, json_real(g->loss[i]));
        json_array_append_new(grad, json_real(g->grad[i]));
    }
    for (int i = 0; i < g->recent_count; i++)
        json_array_append_new(recent, json_integer(g->recent[i]));
    for (int i = 0; i < g->queued; i++) {
        json_t *entry = json_array();
        json_array_append_new(entry, json_integer(g->queue[i].due_step));
        for (int k = 0; k < 4; k++)
            json_array_append_new(entry, hex_u64(g->queue[i].batch.s[k]));
        json_array_append_new(queue, entry);
    }
    json_object_set_new(j, "loss", loss);
    json_object_set_new(j, "grad_norm", grad);
    json_object_set_new(j, "spikes", json_integer(g->spikes));
    json_object_set_new(j, "consecutive", json_integer(g->consecutive));
    json_object_set_new(j, "recent", recent);
    json_object_set_new(j, "lowered_until", json_integer(g->lowered_until));
    json_object_set_new(j, "rollbacks", json_integer(g->rollbacks));
    json_object_set_new(j, "queue", queue);
    return j;
}

static int read_count(json_t *j, const char *key, int *out)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > 1000000000)
        return -1;
    *out = (int)json_integer_value(v);
    return 0;
}

int spike_guard_from_json(json_t *j, spike_guard_state *g)
{
    spike_guard_reset(g);
    if (!j)
        return 0; /* a checkpoint from before the guard: no history */
    json_t *loss = json_object_get(j, "loss"),
           *grad = json_object_get(j, "grad_norm"),
           *recent = json_object_get(j, "recent"),
           *queue = json_object_get(j, "queue");
    size_t n = json_array_size(loss);
    if (!json_is_object(j) || !json_is_array(loss) ||
        json_array_size(grad) != n || n > SPIKE_GUARD_WINDOW_MAX ||
        !json_is_array(recent) ||
        json_array_size(recent) > SPIKE_GUARD_RECENT_MAX ||
        !json_is_array(queue) ||
        json_array_size(queue) > SPIKE_GUARD_QUEUE_MAX ||
        read_count(j, "spikes", &g->spikes) < 0 ||
        read_count(j, "consecutive", &g->consecutive) < 0 ||
        read_count(j, "lowered_until", &g->lowered_until) < 0 ||
        read_count(j, "rollbacks", &g->rollbacks) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(loss, i), *b = json_array_get(grad, i);
        if (!json_is_number(a) || !json_is_number(b))
            return -1;
        g->loss[i] = json_number_value(a);
        g->grad[i] = json_number_value(b);
    }
    g->count = (int)n;
    for (size_t i = 0; i < json_array_size(recent); i++) {
        json_t *v = json_array_get(recent, i);
        if (!json_is_integer(v))
            return -1;
        g->recent[g->recent_count++] = (int)json_integer_value(v);
    }
    for (size_t i = 0; i < json_array_size(queue); i++) {
        json_t *entry = json_array_get(queue, i);
        spike_requeued *q = &g->queue[g->queued++];
        if (json_array_size(entry) != 5 ||
            !json_is_integer(json_array_get(entry, 0)))
            return -1;
        q->due_step = (int)json_integer_value(json_array_get(entry, 0));
        for (int k = 0; k < 4; k++)
            if (read_hex_u64(json_array_get(entry, (size_t)k + 1),
                             &q->batch.s[k]) < 0)
                return -1;
    }
    return 0;
}
