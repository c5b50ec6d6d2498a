#include "tui/demo/story.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/core/clock.h"
#include "engine/protocol/command.h"

int demo_init(demo *d, int window, const config *cfg)
{
    memset(d, 0, sizeof *d);
    d->latest_step = -1;
    d->base_straggler = -1;
    d->move_from = d->move_to = -1;
    d->event_step = d->event_index = -1;
    d->event_duration_ms = d->move_duration_ms = NAN;
    d->window = window;
    d->policy_every = window / 4 > 10 ? window / 4 : 10;
    d->cfg = cfg;
    view_init(&d->v);
    d->history = calloc(DEMO_HISTORY, sizeof *d->history);
    return d->history ? 0 : -1;
}

void demo_finish(demo *d)
{
    view_finish(&d->v);
    free(d->history);
    d->history = NULL;
}

void demo_say(demo *d, const char *fmt, ...)
{
    size_t used = strlen(d->text);
    if (used + 1 >= sizeof d->text)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->text + used, sizeof d->text - used, fmt, ap);
    va_end(ap);
}

void demo_set_status(demo *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->status, sizeof d->status, fmt, ap);
    va_end(ap);
}

/* ---- measuring ---------------------------------------------------------- */

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static demo_step *slot_of(const demo *d, int step)
{
    demo_step *s = &d->history[step % DEMO_HISTORY];
    return step > 0 && s->step == step ? s : NULL;
}

static double field_of(const demo_step *s, demo_field field, int index)
{
    switch (field) {
    case FIELD_TOKENS_PER_S: return s->tokens_per_s;
    case FIELD_IDEAL_TOKENS_PER_S: return s->ideal_tokens_per_s;
    case FIELD_COST_PER_MTOK: return s->cost_per_mtok;
    case FIELD_MFU: return s->mfu;
    case FIELD_STEP_MS: return s->step_ms;
    case FIELD_IDLE_MS: return s->idle_ms[index];
    case FIELD_EXPERT_MS: return s->expert_ms[index];
    case FIELD_EXPERT_FLOPS_PER_S: return s->expert_flops_per_s[index];
    case FIELD_MAX_MEAN: return s->max_mean[index];
    }
    return NAN;
}

/* The median of a field over the steps first..last that were received and
 * carry a finite value (the mean of the middle two for an even count). */
static double median_of(const demo *d, int first, int last,
                        demo_field field, int index, int *count)
{
    static double values[DEMO_HISTORY];
    int n = 0;
    for (int step = first; step <= last && n < DEMO_HISTORY; step++) {
        const demo_step *s = slot_of(d, step);
        double x = s ? field_of(s, field, index) : NAN;
        if (isfinite(x))
            values[n++] = x;
    }
    if (count)
        *count = n;
    if (n == 0)
        return NAN;
    qsort(values, (size_t)n, sizeof values[0], compare_doubles);
    return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

void demo_measure_window(demo *d, int first, int last, demo_window *w)
{
    w->first = first;
    w->last = last;
    w->tokens_per_s = median_of(d, first, last, FIELD_TOKENS_PER_S, 0,
                                &w->count);
    w->ideal_tokens_per_s =
        median_of(d, first, last, FIELD_IDEAL_TOKENS_PER_S, 0, NULL);
    w->cost_per_mtok = median_of(d, first, last, FIELD_COST_PER_MTOK, 0, NULL);
    w->mfu = median_of(d, first, last, FIELD_MFU, 0, NULL);
    w->step_ms = median_of(d, first, last, FIELD_STEP_MS, 0, NULL);
}

void demo_experts_per_rank(const demo *d, int *out)
{
    for (int r = 0; r < DEMO_MAX_RANKS; r++)
        out[r] = 0;
    for (int i = 0; i < d->v.layers * d->v.experts; i++)
        if (d->v.placement[i] >= 0 && d->v.placement[i] < DEMO_MAX_RANKS)
            out[d->v.placement[i]]++;
}

int demo_hottest_expert(const demo *d, int rank, int *layer, int *expert,
                        double *load, double *ratio)
{
    const view *v = &d->v;
    int found = 0;
    double best = -1;
    for (int l = 0; l < v->layers; l++) {
        const double *row = v->load_ema + (size_t)l * v->experts;
        double mean = 0;
        for (int e = 0; e < v->experts; e++)
            mean += isfinite(row[e]) ? row[e] : 0;
        mean /= v->experts;
        for (int e = 0; e < v->experts; e++) {
            if (rank >= 0 && v->placement[l * v->experts + e] != rank)
                continue;
            double r = mean > 0 && isfinite(row[e]) ? row[e] / mean : 0;
            if (r > best) {
                best = r;
                *layer = l;
                *expert = e;
                *load = row[e];
                *ratio = r;
                found = 1;
            }
        }
    }
    return found;
}

/* The straggler of the first window: the rank named most often. */
static void measure_baseline_straggler(demo *d)
{
    int ranks = d->v.device_count;
    for (int r = 0; r < ranks; r++)
        d->base_straggler_steps[r] = 0;
    for (int step = d->baseline_first; step <= d->baseline_last; step++) {
        const demo_step *s = slot_of(d, step);
        if (s && s->straggler >= 0 && s->straggler < ranks)
            d->base_straggler_steps[s->straggler]++;
    }
    d->base_straggler = -1;
    for (int r = 0; r < ranks; r++)
        if (d->base_straggler_steps[r] > 0 &&
            (d->base_straggler < 0 ||
             d->base_straggler_steps[r] >
                 d->base_straggler_steps[d->base_straggler]))
            d->base_straggler = r;
}

/* Once the first window is complete, everything chapters 1-3 and 7 quote
 * from it is kept, so that the ring may move on. */
static void measure_baseline(demo *d)
{
    int first = d->baseline_first, last = d->baseline_last;
    demo_measure_window(d, first, last, &d->baseline);
    for (int l = 0; l < d->v.layers && l < DEMO_MAX_LAYERS; l++) {
        d->base_max_mean[l] = median_of(d, first, last, FIELD_MAX_MEAN, l,
                                        NULL);
        d->base_dead[l] = d->v.have_imbalance ? d->v.dead[l] : -1;
    }
    for (int r = 0; r < d->v.device_count; r++) {
        d->base_idle_ms[r] = median_of(d, first, last, FIELD_IDLE_MS, r, NULL);
        d->base_expert_ms[r] =
            median_of(d, first, last, FIELD_EXPERT_MS, r, NULL);
        d->base_expert_flops[r] =
            median_of(d, first, last, FIELD_EXPERT_FLOPS_PER_S, r, NULL);
    }
    measure_baseline_straggler(d);
    d->base_hot_layer = d->base_hot_expert = -1;
    if (demo_hottest_expert(d, -1, &d->base_hot_layer, &d->base_hot_expert,
                            &d->base_hot_load, &d->base_hot_ratio))
        d->base_hot_rank = d->v.placement[d->base_hot_layer * d->v.experts +
                                          d->base_hot_expert];
    demo_experts_per_rank(d, d->base_experts_on);
    d->have_baseline = 1;
}

/* ---- folding records ---------------------------------------------------- */

static double figure_now(const view_figure *f)
{
    return f->valid ? f->now : NAN;
}

/* The step the view just took in, into the ring. */
static void sample_step(demo *d)
{
    const view *v = &d->v;
    demo_step *s = &d->history[v->step % DEMO_HISTORY];
    memset(s, 0, sizeof *s);
    s->step = v->step;
    s->tokens_per_s = figure_now(&v->tokens_per_s);
    /* efficiency is tokens_per_s / ideal_tokens_per_s of the same step. */
    s->ideal_tokens_per_s = s->tokens_per_s / figure_now(&v->efficiency);
    s->cost_per_mtok = figure_now(&v->cost_per_mtok);
    s->mfu = figure_now(&v->mfu);
    s->step_ms = v->step_ms;
    s->straggler = v->straggler;
    for (int r = 0; r < DEMO_MAX_RANKS; r++) {
        const view_rank *k = r < v->rank_count ? &v->ranks[r] : NULL;
        s->idle_ms[r] = k ? k->idle_ms : NAN;
        s->expert_ms[r] = k ? k->expert_ms : NAN;
        s->expert_flops_per_s[r] = k ? k->expert_flops_per_s : NAN;
    }
    for (int l = 0; l < DEMO_MAX_LAYERS; l++)
        s->max_mean[l] = v->have_imbalance && l < v->layers ? v->max_mean[l]
                                                            : NAN;
    d->latest_step = v->step;
    if (!d->have_baseline && d->baseline_last > 0 &&
        v->step >= d->baseline_last)
        measure_baseline(d);
}

/* A plan record the view just took in, kept by what asked for it. */
static void keep_plan(demo *d)
{
    const view_plan *p = &d->v.plan;
    if (p->trigger == RECORD_TRIGGER_PLAN) {
        d->plan_plan = *p;
    } else if (p->trigger == RECORD_TRIGGER_APPLY) {
        d->plan_apply = *p;
    } else if (p->trigger == RECORD_TRIGGER_AUTO) {
        if (!d->plan_auto_first.have)
            d->plan_auto_first = *p;
        d->auto_decisions++;
        d->auto_applied += p->applied;
    }
}

/* An event record the view just took in: a command applied at the
 * boundary after the latest step. */
static void note_event(demo *d)
{
    const view *v = &d->v;
    if (d->sent[0] && d->event_step < 0 && v->step >= d->sent_at &&
        strcmp(v->last_command, d->sent) == 0) {
        d->event_step = v->last_event_step;
        d->event_index = v->last_event_index;
        d->refused = !v->last_event_ok;
        d->event_duration_ms = v->last_event_duration_ms;
        d->answered = 1;
        snprintf(d->reply, sizeof d->reply, "%s", v->last_reply);
    }
    /* The first decision of policy auto: its event carries the reply. */
    if (strcmp(v->last_command, "policy auto") == 0 &&
        d->plan_auto_first.have && d->auto_first_event_step == 0 &&
        v->step == d->plan_auto_first.step) {
        d->auto_first_event_step = v->step;
        snprintf(d->auto_first_reply, sizeof d->auto_first_reply, "%s",
                 v->last_reply);
    }
}

void demo_record(demo *d, const char *line)
{
    view *v = &d->v;
    int events_before = v->event_count;
    int plan_step = v->plan.step, had_plan = v->plan.have;
    int plan_trigger = v->plan.trigger;
    if (view_apply(v, line) < 0)
        return;
    if (v->have_run && v->have_step && v->step > 0 &&
        v->step != d->latest_step)
        sample_step(d);
    if (v->plan.have && (!had_plan || v->plan.step != plan_step ||
                         v->plan.trigger != plan_trigger))
        keep_plan(d);
    if (v->event_count > events_before &&
        v->last_event_index == v->event_count - 1)
        note_event(d);
}

/* ---- commands ----------------------------------------------------------- */

int demo_send(demo *d, const char *fmt, ...)
{
    char line[128], reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    command_limits limits = {d->v.layers, d->v.experts, d->v.device_count};
    command c;
    if (command_parse(line, &limits, &c, reason, sizeof reason) < 0) {
        demo_say(d, "The demo could not form the command \"%s\": %s.\n", line,
                 reason);
        return -1;
    }
    command_format(&c, d->sent, sizeof d->sent);
    d->sent_at = d->latest_step;
    d->event_step = d->event_index = -1;
    d->event_duration_ms = NAN;
    d->answered = d->refused = 0;
    d->reply[0] = '\0';
    d->send(d->send_ctx, d->sent);
    return 0;
}

int demo_command_outcome(demo *d)
{
    if (d->event_step < 0 && d->latest_step > d->sent_at + DEMO_ANSWER_STEPS) {
        demo_say(d, "`%s` went unanswered for %d steps.\n", d->sent,
                 DEMO_ANSWER_STEPS);
        return -1;
    }
    if (d->event_step < 0) {
        demo_set_status(d, "waiting for step boundary that applies `%s`",
                        d->sent);
        return 0;
    }
    if (!d->answered) {
        demo_set_status(d, "waiting for the job's reply to `%s`", d->sent);
        return 0;
    }
    if (d->refused) {
        demo_say(d, "`%s` was refused: %s\n", d->sent, d->reply);
        return -1;
    }
    return 1;
}

int demo_reached(demo *d, int step, const char *what)
{
    if (d->latest_step >= step)
        return 1;
    demo_set_status(d, "measuring %s: step %d of %d", what,
                    d->latest_step < 0 ? 0 : d->latest_step, step);
    return 0;
}

/* ---- chapters ----------------------------------------------------------- */

void demo_start_chapter(demo *d, int chapter)
{
    d->chapter = chapter;
    d->phase = 0;
    d->chapter_done = 0;
    d->text[0] = '\0';
    d->status[0] = '\0';
    snprintf(d->title, sizeof d->title, "Demo %d/%d: %s", chapter + 1,
             demo_chapter_count, demo_chapters[chapter].heading);
}

int demo_advance(demo *d)
{
    if (d->chapter_done || d->story_over)
        return 0;
    int status = demo_chapters[d->chapter].run(d);
    if (status != 0) {
        d->chapter_done = 1;
        d->done_at_ms = clock_monotonic_ms();
        d->status[0] = '\0';
    }
    return status;
}
