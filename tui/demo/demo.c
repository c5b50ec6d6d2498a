#include "tui/demo/demo.h"
#include "engine/core/signals.h"
#include "engine/core/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/protocol/command.h"
#include "engine/config/config.h"
#include "moectl_build.h"
#include "tui/console/console.h"

enum {
    DEMO_MAX_RANKS = 16,
    DEMO_MAX_LAYERS = 8,         /* layers whose imbalance is narrated */
    DEMO_HISTORY = 8192,         /* steps kept, a ring */
    DEMO_WINDOW_DEFAULT = 200,   /* steps per measured window */
    DEMO_WINDOW_MAX = DEMO_HISTORY / 4,
    DEMO_WARMUP_STEPS = 20,      /* not measured: lr warm-up, cold caches */
    DEMO_TEXT_BYTES = 8192,
    DEMO_HOLD_MS = 5000,         /* --autoplay: a finished chapter stays */
    DEMO_LINE_MAX = 16 << 20,    /* a record longer than this is not one */
    DEMO_WRAP_COLS = 78,
    DEMO_EXIT_RUNTIME = 1,
    DEMO_EXIT_USAGE = 2,
    DEMO_MAX_SETS = 256,
};

/* One step record, as far as the story reads it. */
typedef struct demo_step {
    int step;                    /* 0: slot empty */
    double tokens_per_s, ideal_tokens_per_s, cost_per_mtok, mfu, step_ms;
    int straggler;               /* -1: none */
    double idle_ms[DEMO_MAX_RANKS], expert_ms[DEMO_MAX_RANKS];
    double expert_flops_per_s[DEMO_MAX_RANKS];
    double max_mean[DEMO_MAX_LAYERS];
} demo_step;

typedef enum demo_field {
    FIELD_TOKENS_PER_S,
    FIELD_IDEAL_TOKENS_PER_S,
    FIELD_COST_PER_MTOK,
    FIELD_MFU,
    FIELD_STEP_MS,
    FIELD_IDLE_MS,               /* index: rank */
    FIELD_EXPERT_MS,             /* index: rank */
    FIELD_EXPERT_FLOPS_PER_S,    /* index: rank */
    FIELD_MAX_MEAN,              /* index: layer */
} demo_field;

/* A plan record. */
typedef struct demo_plan {
    int have;
    int step, applied, moves;
    double before_ms, after_ms, gain, moved_bytes;
    char first_moves[128];       /* the first few, as "0.3 1->0" */
} demo_plan;

/* Medians over steps first..last (those received). */
typedef struct demo_window {
    int first, last, count;
    double tokens_per_s, ideal_tokens_per_s, cost_per_mtok, mfu, step_ms;
} demo_window;

typedef struct demo demo;
typedef int (*demo_chapter_fn)(demo *d);

typedef struct demo_chapter {
    const char *heading;
    demo_chapter_fn run;   /* 1 done (text written), 0 waiting, -1 failed */
} demo_chapter;

struct demo {
    /* Options. */
    int window;              /* N: steps per measured window */
    int policy_every;        /* K of `policy auto every K` */
    int balance_every;       /* the job's balance.every before the story */
    double slowdown[DEMO_MAX_RANKS];

    /* From the run record. */
    int have_run;
    char config_name[64], currency[16];
    int ranks, layers, experts, top_k, expert_hidden, d_model;
    int tokens_per_step;
    double params, active_params;
    char name[DEMO_MAX_RANKS][64];
    char backend[DEMO_MAX_RANKS][8];
    int threads[DEMO_MAX_RANKS], emulated[DEMO_MAX_RANKS];
    double price_per_hour[DEMO_MAX_RANKS], peak_tflops[DEMO_MAX_RANKS];

    /* From step records. */
    int first_step, latest_step;   /* -1: none yet */
    demo_step *history;            /* DEMO_HISTORY slots, by step */
    double *load_ema;              /* (layers, experts) of the latest step */
    int *placement;                /* (layers, experts) */
    int dead[DEMO_MAX_LAYERS];

    /* The story's own commands: the last one sent, its reply, its event. */
    char sent[128];
    int sent_at;                   /* latest step when it was sent */
    int have_reply, reply_ok;
    char reply[512];
    int event_step;                /* -1: its event has not come */
    double event_duration_ms;

    demo_plan plan_plan, plan_apply, plan_auto_first;
    int auto_decisions, auto_applied;
    char auto_first_reply[512];
    int auto_first_event_step;
    int have_plan_result;
    int result_step, result_applied_step, result_steps, result_delivered;
    double result_before_ms, result_predicted_ms, result_measured_ms;

    int have_checkpoint, checkpoint_step;
    char checkpoint_path[512];
    int have_summary, summary_last_step;
    char summary_status[16];

    /* The first window (chapters 1-3), kept whole once measured. */
    int baseline_first, baseline_last;   /* 0: not yet chosen */
    int have_baseline;
    demo_window baseline;
    double base_max_mean[DEMO_MAX_LAYERS];
    int base_dead[DEMO_MAX_LAYERS];
    double base_idle_ms[DEMO_MAX_RANKS], base_expert_ms[DEMO_MAX_RANKS];
    double base_expert_flops[DEMO_MAX_RANKS];
    int base_straggler_steps[DEMO_MAX_RANKS];
    int base_straggler;                  /* -1: none */
    int base_hot_layer, base_hot_expert, base_hot_rank;
    double base_hot_load, base_hot_ratio;
    int base_experts_on[DEMO_MAX_RANKS];

    /* Story. */
    int chapter, phase;
    int chapter_done;
    long long done_at_ms;
    int move_layer, move_expert, move_from, move_to, move_step;
    double move_load;
    int apply_step, policy_step, final_last;
    int story_over;
    demo_window before, after;
    char text[DEMO_TEXT_BYTES];
    char title[256];
    char status[256];               /* what a waiting chapter waits for */

    /* How commands reach the job. */
    console_send_fn send;
    void *send_ctx;
};

/* ---- small helpers ----------------------------------------------------- */

static void say(demo *d, const char *fmt, ...)
{
    size_t used = strlen(d->text);
    if (used + 1 >= sizeof d->text)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->text + used, sizeof d->text - used, fmt, ap);
    va_end(ap);
}

static void set_status(demo *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->status, sizeof d->status, fmt, ap);
    va_end(ap);
}

static double real_of(json_t *o, const char *key)
{
    json_t *x = json_object_get(o, key);
    return json_is_number(x) ? json_number_value(x) : NAN;
}

static int int_of(json_t *o, const char *key, int fallback)
{
    json_t *x = json_object_get(o, key);
    return json_is_integer(x) ? (int)json_integer_value(x) : fallback;
}

static void string_of(char *out, size_t size, json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    snprintf(out, size, "%s", s ? s : "");
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* "+5.2%" from a to b, or "n/a". */
static const char *change_text(char *out, size_t size, double a, double b)
{
    if (isfinite(a) && isfinite(b) && a != 0)
        snprintf(out, size, "%+.1f%%", (b / a - 1) * 100);
    else
        snprintf(out, size, "n/a");
    return out;
}

/* ---- folding records ----------------------------------------------------- */

static demo_step *slot_of(demo *d, int step)
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
static double median_of(demo *d, int first, int last, demo_field field,
                        int index, int *count)
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

static void measure_window(demo *d, int first, int last, demo_window *w)
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

/* The experts each rank hosts in the latest placement. */
static void experts_per_rank(const demo *d, int *out)
{
    for (int r = 0; r < DEMO_MAX_RANKS; r++)
        out[r] = 0;
    for (int i = 0; i < d->layers * d->experts; i++)
        if (d->placement[i] >= 0 && d->placement[i] < DEMO_MAX_RANKS)
            out[d->placement[i]]++;
}

/* The expert with the highest load_ema relative to its layer's mean,
 * among those on rank (or any rank when rank < 0). Returns 0 if none. */
static int hottest_expert(const demo *d, int rank, int *layer, int *expert,
                          double *load, double *ratio)
{
    int found = 0;
    double best = -1;
    for (int l = 0; l < d->layers; l++) {
        const double *row = d->load_ema + (size_t)l * d->experts;
        double mean = 0;
        for (int e = 0; e < d->experts; e++)
            mean += isfinite(row[e]) ? row[e] : 0;
        mean /= d->experts;
        for (int e = 0; e < d->experts; e++) {
            if (rank >= 0 && d->placement[l * d->experts + e] != rank)
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

/* Once the first window is complete, everything chapters 1-3 and 7 quote
 * from it is kept, so that the ring may move on. */
static void measure_baseline(demo *d)
{
    int first = d->baseline_first, last = d->baseline_last;
    measure_window(d, first, last, &d->baseline);
    for (int l = 0; l < d->layers && l < DEMO_MAX_LAYERS; l++) {
        d->base_max_mean[l] = median_of(d, first, last, FIELD_MAX_MEAN, l,
                                        NULL);
        d->base_dead[l] = d->dead[l];
    }
    for (int r = 0; r < d->ranks; r++) {
        d->base_idle_ms[r] = median_of(d, first, last, FIELD_IDLE_MS, r, NULL);
        d->base_expert_ms[r] =
            median_of(d, first, last, FIELD_EXPERT_MS, r, NULL);
        d->base_expert_flops[r] =
            median_of(d, first, last, FIELD_EXPERT_FLOPS_PER_S, r, NULL);
        d->base_straggler_steps[r] = 0;
    }
    for (int step = first; step <= last; step++) {
        const demo_step *s = slot_of(d, step);
        if (s && s->straggler >= 0 && s->straggler < d->ranks)
            d->base_straggler_steps[s->straggler]++;
    }
    d->base_straggler = -1;
    for (int r = 0; r < d->ranks; r++)
        if (d->base_straggler_steps[r] > 0 &&
            (d->base_straggler < 0 ||
             d->base_straggler_steps[r] >
                 d->base_straggler_steps[d->base_straggler]))
            d->base_straggler = r;
    d->base_hot_layer = d->base_hot_expert = -1;
    if (hottest_expert(d, -1, &d->base_hot_layer, &d->base_hot_expert,
                       &d->base_hot_load, &d->base_hot_ratio))
        d->base_hot_rank =
            d->placement[d->base_hot_layer * d->experts + d->base_hot_expert];
    experts_per_rank(d, d->base_experts_on);
    d->have_baseline = 1;
}

static void read_run(demo *d, json_t *r)
{
    string_of(d->config_name, sizeof d->config_name, r, "config");
    string_of(d->currency, sizeof d->currency, r, "currency");
    json_t *devices = json_object_get(r, "devices");
    d->ranks = (int)json_array_size(devices);
    if (d->ranks > DEMO_MAX_RANKS)
        d->ranks = DEMO_MAX_RANKS;
    for (int i = 0; i < d->ranks; i++) {
        json_t *dev = json_array_get(devices, (size_t)i);
        string_of(d->name[i], sizeof d->name[i], dev, "name");
        string_of(d->backend[i], sizeof d->backend[i], dev, "backend");
        d->threads[i] = int_of(dev, "threads", 0);
        d->price_per_hour[i] = real_of(dev, "price_per_hour");
        d->peak_tflops[i] = real_of(dev, "peak_tflops");
        d->emulated[i] = json_is_true(json_object_get(dev, "emulated"));
    }
    json_t *model = json_object_get(r, "model");
    int layers = int_of(model, "layers", 0), experts = int_of(model,
                                                              "experts", 0);
    d->top_k = int_of(model, "top_k", 0);
    d->expert_hidden = int_of(model, "expert_hidden", 0);
    d->d_model = int_of(model, "d_model", 0);
    d->tokens_per_step = int_of(r, "tokens_per_step", 0);
    d->params = real_of(r, "params");
    d->active_params = real_of(r, "active_params");
    if (layers > 0 && experts > 0 &&
        (layers != d->layers || experts != d->experts || !d->load_ema)) {
        free(d->load_ema);
        free(d->placement);
        d->load_ema = calloc((size_t)layers * experts, sizeof *d->load_ema);
        d->placement = calloc((size_t)layers * experts, sizeof *d->placement);
        if (!d->load_ema || !d->placement) {
            free(d->load_ema);
            free(d->placement);
            d->load_ema = NULL;
            d->placement = NULL;
            return;
        }
        d->layers = layers;
        d->experts = experts;
    }
    d->have_run = d->load_ema != NULL;
}

static void read_step(demo *d, json_t *r)
{
    int step = int_of(r, "step", 0);
    if (step <= 0 || !d->have_run)
        return;
    demo_step *s = &d->history[step % DEMO_HISTORY];
    memset(s, 0, sizeof *s);
    s->step = step;
    s->tokens_per_s = real_of(r, "tokens_per_s");
    s->ideal_tokens_per_s = real_of(r, "ideal_tokens_per_s");
    s->cost_per_mtok = real_of(r, "cost_per_mtok");
    s->mfu = real_of(r, "mfu");
    s->step_ms = real_of(r, "step_ms");
    s->straggler = int_of(r, "straggler", -1);
    for (int i = 0; i < DEMO_MAX_RANKS; i++)
        s->idle_ms[i] = s->expert_ms[i] = s->expert_flops_per_s[i] = NAN;
    json_t *ranks = json_object_get(r, "ranks");
    for (size_t i = 0; i < json_array_size(ranks) && i < DEMO_MAX_RANKS;
         i++) {
        json_t *k = json_array_get(ranks, i);
        s->idle_ms[i] = real_of(k, "idle_ms");
        s->expert_ms[i] = real_of(k, "expert_ms");
        s->expert_flops_per_s[i] = real_of(k, "expert_flops_per_s");
    }
    json_t *imbalance = json_object_get(r, "imbalance");
    json_t *max_mean = json_object_get(imbalance, "max_mean");
    json_t *dead = json_object_get(imbalance, "dead");
    for (int l = 0; l < DEMO_MAX_LAYERS; l++) {
        json_t *x = json_array_get(max_mean, (size_t)l);
        s->max_mean[l] = json_is_number(x) ? json_number_value(x) : NAN;
        json_t *n = json_array_get(dead, (size_t)l);
        d->dead[l] = json_is_integer(n) ? (int)json_integer_value(n) : -1;
    }
    json_t *ema = json_object_get(r, "load_ema");
    json_t *placement = json_object_get(r, "placement");
    for (int l = 0; l < d->layers; l++)
        for (int e = 0; e < d->experts; e++) {
            json_t *x = json_array_get(json_array_get(ema, (size_t)l),
                                       (size_t)e);
            json_t *p = json_array_get(json_array_get(placement, (size_t)l),
                                       (size_t)e);
            if (json_is_number(x))
                d->load_ema[l * d->experts + e] = json_number_value(x);
            if (json_is_integer(p))
                d->placement[l * d->experts + e] =
                    (int)json_integer_value(p);
        }
    if (d->first_step < 0)
        d->first_step = step;
    d->latest_step = step;
    if (!d->have_baseline && d->baseline_last > 0 &&
        step >= d->baseline_last)
        measure_baseline(d);
}

static void read_plan(demo *d, json_t *r)
{
    char trigger[16];
    string_of(trigger, sizeof trigger, r, "trigger");
    demo_plan p = {.have = 1};
    p.step = int_of(r, "step", 0);
    p.applied = json_is_true(json_object_get(r, "applied"));
    json_t *moves = json_object_get(r, "moves");
    json_t *splits = json_object_get(r, "splits");
    json_t *changes = json_object_get(r, "changes");
    p.moves = json_is_integer(changes) ? (int)json_integer_value(changes)
                                       : (int)json_array_size(moves);
    int listed = (int)json_array_size(moves);
    p.before_ms = real_of(r, "predicted_before_ms");
    p.after_ms = real_of(r, "predicted_after_ms");
    p.gain = real_of(r, "predicted_gain");
    p.moved_bytes = real_of(r, "moved_bytes");
    size_t used = 0;
    for (int i = 0; i < listed && i < 4; i++) {
        json_t *m = json_array_get(moves, (size_t)i);
        int n = snprintf(p.first_moves + used, sizeof p.first_moves - used,
                         "%s%d.%d %d->%d", i ? ", " : "",
                         (int)json_integer_value(json_array_get(m, 0)),
                         (int)json_integer_value(json_array_get(m, 1)),
                         (int)json_integer_value(json_array_get(m, 2)),
                         (int)json_integer_value(json_array_get(m, 3)));
        if (n < 0 || (size_t)n >= sizeof p.first_moves - used)
            break;
        used += (size_t)n;
    }
    /* Then the splits: "0.3 split 3:57%,0:14%", the expert's rank first. */
    for (size_t i = 0; i < json_array_size(splits) && listed < 4; i++) {
        json_t *sp = json_array_get(splits, i), *parts = json_array_get(sp, 2);
        int n = snprintf(p.first_moves + used, sizeof p.first_moves - used,
                         "%s%d.%d split", listed++ ? ", " : "",
                         (int)json_integer_value(json_array_get(sp, 0)),
                         (int)json_integer_value(json_array_get(sp, 1)));
        for (size_t k = 0; n > 0 && k < json_array_size(parts); k++) {
            json_t *part = json_array_get(parts, k);
            if ((size_t)n >= sizeof p.first_moves - used)
                break;
            n += snprintf(p.first_moves + used + n,
                          sizeof p.first_moves - used - (size_t)n, "%s%d:%.0f%%",
                          k ? "," : " ",
                          (int)json_integer_value(json_array_get(part, 0)),
                          json_number_value(json_array_get(part, 1)) * 100);
        }
        if (n < 0 || (size_t)n >= sizeof p.first_moves - used)
            break;
        used += (size_t)n;
    }
    if (p.moves > 4 && used + 5 < sizeof p.first_moves)
        snprintf(p.first_moves + used, sizeof p.first_moves - used, ", ...");
    if (strcmp(trigger, "plan") == 0) {
        d->plan_plan = p;
    } else if (strcmp(trigger, "apply") == 0) {
        d->plan_apply = p;
    } else if (strcmp(trigger, "auto") == 0) {
        if (!d->plan_auto_first.have)
            d->plan_auto_first = p;
        d->auto_decisions++;
        d->auto_applied += p.applied;
    }
}

static void read_event(demo *d, json_t *r)
{
    char command_text[128];
    string_of(command_text, sizeof command_text, r, "command");
    int step = int_of(r, "step", 0);
    if (d->sent[0] && d->event_step < 0 && step >= d->sent_at &&
        strcmp(command_text, d->sent) == 0) {
        d->event_step = step;
        d->event_duration_ms = real_of(r, "duration_ms");
    }
    /* The first decision of policy auto: its event carries the reply. */
    if (strcmp(command_text, "policy auto") == 0 &&
        d->plan_auto_first.have && d->auto_first_event_step == 0 &&
        step == d->plan_auto_first.step) {
        d->auto_first_event_step = step;
        string_of(d->auto_first_reply, sizeof d->auto_first_reply, r,
                  "reply");
    }
}

static void read_reply(demo *d, json_t *r)
{
    char command_text[128];
    string_of(command_text, sizeof command_text, r, "command");
    /* The console shares the connection: only the story's own command. */
    if (!d->sent[0] || d->have_reply ||
        (command_text[0] && strcmp(command_text, d->sent) != 0))
        return;
    d->have_reply = 1;
    d->reply_ok = json_is_true(json_object_get(r, "ok"));
    string_of(d->reply, sizeof d->reply, r, d->reply_ok ? "message" : "error");
}

static void demo_record(demo *d, const char *line)
{
    json_t *r = json_loads(line, 0, NULL);
    if (!json_is_object(r)) {
        json_decref(r);
        return;
    }
    const char *type = json_string_value(json_object_get(r, "type"));
    if (!type) {
    } else if (strcmp(type, "run") == 0) {
        read_run(d, r);
    } else if (strcmp(type, "step") == 0) {
        read_step(d, r);
    } else if (strcmp(type, "plan") == 0) {
        read_plan(d, r);
    } else if (strcmp(type, "event") == 0) {
        read_event(d, r);
    } else if (strcmp(type, "reply") == 0) {
        read_reply(d, r);
    } else if (strcmp(type, "plan_result") == 0) {
        d->have_plan_result = 1;
        d->result_step = int_of(r, "step", 0);
        d->result_applied_step = int_of(r, "applied_step", 0);
        d->result_steps = int_of(r, "steps", 0);
        d->result_before_ms = real_of(r, "before_ms");
        d->result_predicted_ms = real_of(r, "predicted_ms");
        d->result_measured_ms = real_of(r, "measured_ms");
        d->result_delivered = json_is_true(json_object_get(r, "delivered"));
    } else if (strcmp(type, "checkpoint") == 0) {
        d->have_checkpoint = 1;
        d->checkpoint_step = int_of(r, "step", 0);
        string_of(d->checkpoint_path, sizeof d->checkpoint_path, r, "path");
    } else if (strcmp(type, "summary") == 0) {
        d->have_summary = 1;
        d->summary_last_step = int_of(r, "last_step", 0);
        string_of(d->summary_status, sizeof d->summary_status, r, "status");
    }
    json_decref(r);
}

/* ---- commands ------------------------------------------------------------- */

/* Sends a command in the grammar's own spelling (command_format), which is
 * how the job names it in its reply and event. Returns -1 if it does not
 * parse. */
static int demo_send(demo *d, const char *fmt, ...)
{
    char line[128], reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    command_limits limits = {d->layers, d->experts, d->ranks};
    command c;
    if (command_parse(line, &limits, &c, reason, sizeof reason) < 0) {
        say(d, "The demo could not form the command \"%s\": %s.\n", line,
            reason);
        return -1;
    }
    command_format(&c, d->sent, sizeof d->sent);
    d->sent_at = d->latest_step;
    d->have_reply = d->reply_ok = 0;
    d->reply[0] = '\0';
    d->event_step = -1;
    d->event_duration_ms = NAN;
    d->send(d->send_ctx, d->sent);
    return 0;
}

/* 1 when the reply (and, for an accepted command, its event) came. */
static int command_answered(demo *d)
{
    if (!d->have_reply) {
        set_status(d, "waiting for the job's reply to `%s`", d->sent);
        return 0;
    }
    if (d->reply_ok && d->event_step < 0) {
        set_status(d, "waiting for step boundary that applies `%s`",
                   d->sent);
        return 0;
    }
    return 1;
}

/* The outcome of the command last sent: 0 while it waits, 1 once applied,
 * -1 when the job refused it (said in the narration: the chapter ends). */
static int command_outcome(demo *d)
{
    if (!command_answered(d))
        return 0;
    if (!d->reply_ok) {
        say(d, "`%s` was refused: %s\n", d->sent, d->reply);
        return -1;
    }
    return 1;
}

static int reached(demo *d, int step, const char *what)
{
    if (d->latest_step >= step)
        return 1;
    set_status(d, "measuring %s: step %d of %d", what,
               d->latest_step < 0 ? 0 : d->latest_step, step);
    return 0;
}

/* "36181 tokens/s (median of steps 21-220)" */
static void say_tokens(demo *d, const demo_window *w)
{
    say(d, "%.0f tokens/s (median of steps %d-%d)", w->tokens_per_s,
        w->first, w->last);
}

static void say_before_after(demo *d, const demo_window *before,
                             const demo_window *after)
{
    char change[32];
    say(d, "Throughput: ");
    say_tokens(d, before);
    say(d, " before, ");
    say_tokens(d, after);
    say(d, " after: %s.\n", change_text(change, sizeof change,
                                        before->tokens_per_s,
                                        after->tokens_per_s));
}

/* ---- the chapters ---------------------------------------------------------- */

static const char *rank_label(const demo *d, int r, char *out, size_t size)
{
    snprintf(out, size, "rank %d (%s%s)", r, r >= 0 && r < d->ranks
                                                 ? d->name[r] : "?",
             r >= 0 && r < d->ranks && d->emulated[r] ? ", emulated" : "");
    return out;
}

static int chapter_cluster(demo *d)
{
    if (!d->have_run || d->latest_step < 1) {
        set_status(d, "waiting for the job's first step");
        return 0;
    }
    double per_hour = 0;
    for (int r = 0; r < d->ranks; r++)
        per_hour += d->price_per_hour[r];
    int on[DEMO_MAX_RANKS];
    experts_per_rank(d, on);
    say(d, "moectl started the job \"%s\" on a mixed cluster of %d ranks, "
        "one MPI rank per device:\n", d->config_name, d->ranks);
    for (int r = 0; r < d->ranks; r++) {
        say(d, "  rank %d %-9s %s, %d thread%s, peak %.3g TFLOPS, %.3g %s/h, "
            "%d of %d experts", r, d->name[r], d->backend[r], d->threads[r],
            d->threads[r] == 1 ? "" : "s", d->peak_tflops[r],
            d->price_per_hour[r], d->currency, on[r],
            d->layers * d->experts);
        if (d->emulated[r])
            say(d, "  EMULATED: %.3gx slower", d->slowdown[r]);
        say(d, "\n");
    }
    for (int r = 0; r < d->ranks; r++)
        if (d->emulated[r])
            say(d, "%s is an emulated slow device: the same CPU, made to "
                "sleep %.3g times as long as it computes (slowdown %.3g in "
                "the configuration), as a cheaper, slower accelerator "
                "would.\n", d->name[r], d->slowdown[r] - 1, d->slowdown[r]);
    say(d, "Together they cost %.3g %s/h. The model: %d layers of %d experts "
        "(top-%d, width %d, d_model %d), %.0f parameters, %.0f active per "
        "token; %d tokens a step. Experts start round-robin over the ranks "
        "(placement at step %d). Every figure that follows is measured in "
        "this run.\n", per_hour, d->currency, d->layers, d->experts,
        d->top_k, d->expert_hidden, d->d_model, d->params, d->active_params,
        d->tokens_per_step, d->latest_step);
    /* The first window: after the warm-up, from the next step on. */
    d->baseline_first = d->latest_step + 1 > DEMO_WARMUP_STEPS + 1
                            ? d->latest_step + 1
                            : DEMO_WARMUP_STEPS + 1;
    d->baseline_last = d->baseline_first + d->window - 1;
    return 1;
}

static int chapter_load(demo *d)
{
    if (!d->have_baseline) {
        set_status(d, "measuring steps %d-%d: step %d",
                   d->baseline_first, d->baseline_last, d->latest_step);
        return 0;
    }
    say(d, "The router spreads tokens unevenly. The busiest expert of each "
        "layer (max/mean of the step's load, median of steps %d-%d):",
        d->baseline_first, d->baseline_last);
    for (int l = 0; l < d->layers && l < DEMO_MAX_LAYERS; l++)
        say(d, "%s layer %d %.2fx", l ? "," : "", l, d->base_max_mean[l]);
    say(d, "%s. Dead experts at step %d:", d->layers > DEMO_MAX_LAYERS
                                                ? " (first layers)" : "",
        d->baseline_last);
    for (int l = 0; l < d->layers && l < DEMO_MAX_LAYERS; l++)
        say(d, "%s layer %d %d", l ? "," : "", l, d->base_dead[l]);
    say(d, ".\n");
    if (d->base_hot_layer >= 0) {
        char where[96];
        say(d, "The hottest expert is %d.%d (layer %d, expert %d): "
            "load_ema %.1f tokens a step at step %d, %.2fx its layer's mean, "
            "on %s.\n", d->base_hot_layer, d->base_hot_expert,
            d->base_hot_layer, d->base_hot_expert, d->base_hot_load,
            d->baseline_last, d->base_hot_ratio,
            rank_label(d, d->base_hot_rank, where, sizeof where));
    }
    return 1;
}

static int chapter_straggler(demo *d)
{
    if (!d->have_baseline)
        return chapter_load(d);
    int s = d->base_straggler, total = 0;
    for (int r = 0; r < d->ranks; r++)
        total += d->base_straggler_steps[r];
    char who[96];
    if (s < 0) {
        say(d, "No rank was named straggler in steps %d-%d.\n",
            d->baseline_first, d->baseline_last);
    } else {
        say(d, "%s was the straggler in %.0f%% of steps %d-%d: every layer's "
            "all-to-all waits for it. Per rank, per step (medians of those "
            "steps):\n", rank_label(d, s, who, sizeof who),
            100.0 * d->base_straggler_steps[s] / (total ? total : 1),
            d->baseline_first, d->baseline_last);
    }
    for (int r = 0; r < d->ranks; r++)
        say(d, "  rank %d %-9s experts %.2f ms, idle %.2f ms, %.3g GFLOP/s "
            "on experts, %d experts%s\n", r, d->name[r], d->base_expert_ms[r],
            d->base_idle_ms[r], d->base_expert_flops[r] / 1e9,
            d->base_experts_on[r], r == s ? "  <- straggler" : "");
    const demo_window *w = &d->baseline;
    say(d, "A median step takes %.2f ms. Throughput: ", w->step_ms);
    say_tokens(d, w);
    say(d, ", %.0f%% of the ideal %.0f tokens/s (median ideal_tokens_per_s: "
        "the experts' work split over the ranks by their speed). In the "
        "console, the heatmap underlines the experts on the straggler and "
        "the Devices panel marks it.\n",
        100 * w->tokens_per_s / w->ideal_tokens_per_s, w->ideal_tokens_per_s);
    return 1;
}

/* The rank that computes experts fastest, other than the straggler. */
static int fastest_rank(const demo *d, int straggler)
{
    int best = -1;
    for (int r = 0; r < d->ranks; r++) {
        if (r == straggler)
            continue;
        if (best < 0 || (isfinite(d->base_expert_flops[r]) &&
                         !(d->base_expert_flops[r] <=
                           d->base_expert_flops[best])))
            best = r;
    }
    return best;
}

static int chapter_move(demo *d)
{
    char from[96], to[96];
    if (d->phase == 0) {
        int s = d->base_straggler;
        if (s < 0) {
            say(d, "There is no straggler to relieve: nothing to move.\n");
            return 1;
        }
        d->move_from = s;
        d->move_to = fastest_rank(d, s);
        double ratio;
        if (!hottest_expert(d, s, &d->move_layer, &d->move_expert,
                            &d->move_load, &ratio)) {
            say(d, "%s hosts no expert: nothing to move.\n",
                rank_label(d, s, from, sizeof from));
            return 1;
        }
        if (demo_send(d, "move %d.%d %d", d->move_layer, d->move_expert,
                      d->move_to) < 0)
            return -1;
        d->move_step = d->latest_step;
        d->phase = 1;
    }
    if (d->phase == 1) {
        int outcome = command_outcome(d);
        if (outcome <= 0)
            return outcome < 0;
        d->move_step = d->event_step;
        d->phase = 2;
    }
    int m = d->move_step, n = d->window;
    if (!reached(d, m + n, "after the move"))
        return 0;
    measure_window(d, m - n + 1, m, &d->before);
    measure_window(d, m + 1, m + n, &d->after);
    int on[DEMO_MAX_RANKS];
    experts_per_rank(d, on);
    say(d, "The operator moves the hottest expert on the straggler to the "
        "fastest rank: `%s`, expert %d.%d (load_ema %.1f at step %d) from %s "
        "to %s, which computed experts at %.3g GFLOP/s (median of steps "
        "%d-%d). At step %d the job answered: \"%s\"",
        d->sent, d->move_layer, d->move_expert, d->move_load, d->sent_at,
        rank_label(d, d->move_from, from, sizeof from),
        rank_label(d, d->move_to, to, sizeof to),
        d->base_expert_flops[d->move_to] / 1e9, d->baseline_first,
        d->baseline_last, m, d->reply);
    if (isfinite(d->event_duration_ms))
        say(d, " (the move took %.1f ms)", d->event_duration_ms);
    say(d, ". %s now hosts %d experts.\n", d->name[d->move_from],
        on[d->move_from]);
    say_before_after(d, &d->before, &d->after);
    double change = d->after.tokens_per_s / d->before.tokens_per_s - 1;
    if (change >= 0.01)
        say(d, "The straggler has less to do, so every layer's all-to-all "
            "waits less.\n");
    else if (change <= -0.01)
        say(d, "No better: a hand move is a guess. The fast rank now carries "
            "more of that layer, and the machine's two cores are shared; the "
            "planner weighs every expert's load against every rank's "
            "measured speed.\n");
    else
        say(d, "Within noise: one expert of %d barely shifts the balance.\n",
            d->layers * d->experts);
    return 1;
}

static int chapter_plan(demo *d)
{
    if (d->phase == 0) {
        if (demo_send(d, "plan") < 0)
            return -1;
        d->phase = 1;
    }
    if (d->phase == 1) {
        int outcome = command_outcome(d);
        if (outcome <= 0)
            return outcome < 0;
        say(d, "`plan` at step %d asks the placement planner, from the "
            "measured loads and rank speeds, for a better placement. It "
            "answered: \"%s\"", d->event_step, d->reply);
        if (d->plan_plan.have)
            say(d, " (plan record: %d changes, predicted step %.2f -> %.2f ms, "
                "gain %.1f%%, %.3g MB to ship)", d->plan_plan.moves,
                d->plan_plan.before_ms, d->plan_plan.after_ms,
                d->plan_plan.gain * 100, d->plan_plan.moved_bytes / 1e6);
        say(d, ".\n");
        if (demo_send(d, "apply") < 0)
            return -1;
        d->phase = 2;
    }
    if (d->phase == 2) {
        int outcome = command_outcome(d);
        if (outcome <= 0)
            return outcome < 0;
        d->apply_step = d->event_step;
        d->phase = 3;
    }
    int a = d->apply_step, n = d->window;
    if (d->phase == 3) {
        if (!reached(d, a + n, "after apply"))
            return 0;
        measure_window(d, a - n + 1, a, &d->before);
        measure_window(d, a + 1, a + n, &d->after);
        d->phase = 4;
    }
    /* Wait for the plan_result of this plan, balance.every steps after it
     * was applied, or give up a window later. */
    int applied = d->plan_apply.have && d->plan_apply.applied &&
                  d->plan_apply.step >= a - 1 && d->plan_apply.moves > 0;
    int measured = d->have_plan_result && d->result_applied_step == a;
    if (applied && !measured &&
        d->latest_step < a + d->balance_every + n) {
        set_status(d, "waiting for the plan_result record (due at step %d)",
                   a + d->balance_every);
        return 0;
    }
    int on[DEMO_MAX_RANKS];
    experts_per_rank(d, on);
    say(d, "`apply` at step %d carried it out through live migration, "
        "weights and Adam moments included: \"%s\".", a, d->reply);
    if (d->move_from >= 0 && d->move_from < d->ranks)
        say(d, " %s now hosts %d experts.", d->name[d->move_from],
            on[d->move_from]);
    say(d, "\n");
    say_before_after(d, &d->before, &d->after);
    if (!(d->after.tokens_per_s > d->before.tokens_per_s))
        say(d, "Not faster on this measure: the plan is a prediction from "
            "moving averages, and plan_result below says how it fared. "
            "policy auto keeps planning, and backs off from plans that do "
            "not deliver.\n");
    if (measured)
        say(d, "The plan_result record at step %d: predicted %.2f ms a step, "
            "measured %.2f ms (mean over %d steps), before %.2f ms%s.\n",
            d->result_step, d->result_predicted_ms, d->result_measured_ms,
            d->result_steps, d->result_before_ms,
            d->result_delivered ? "" : "; it did not deliver half the "
                                      "predicted gain");
    else if (applied)
        say(d, "No plan_result record came by step %d.\n", d->latest_step);
    return 1;
}

static int chapter_policy(demo *d)
{
    if (d->phase == 0) {
        if (demo_send(d, "policy auto every %d", d->policy_every) < 0)
            return -1;
        d->phase = 1;
    }
    if (d->phase == 1) {
        int outcome = command_outcome(d);
        if (outcome < 0)
            d->policy_step = d->latest_step;
        if (outcome <= 0)
            return outcome < 0;
        d->policy_step = d->event_step;
        d->phase = 2;
    }
    const demo_plan *p = &d->plan_auto_first;
    if (!p->have || p->step <= d->policy_step) {
        set_status(d, "waiting for the policy's first decision (step %d, "
                   "now %d)", d->policy_step + d->policy_every,
                   d->latest_step);
        return 0;
    }
    /* Its event, which carries the job's words, follows the plan record. */
    if (!d->auto_first_event_step && d->latest_step <= p->step + 2) {
        set_status(d, "waiting for the event of the decision at step %d",
                   p->step);
        return 0;
    }
    say(d, "`%s` at step %d hands placement to the policy: \"%s\". Every %d "
        "steps it plans, and applies the plan when the predicted gain is "
        "worth it.\n", d->sent, d->policy_step, d->reply, d->policy_every);
    say(d, "Its first decision, at step %d: %d changes, predicted step %.2f -> "
        "%.2f ms (gain %.1f%%): %s", p->step, p->moves, p->before_ms,
        p->after_ms, p->gain * 100, p->applied ? "applied" : "kept");
    if (p->moves > 0)
        say(d, " (%s)", p->first_moves);
    if (d->auto_first_reply[0])
        say(d, ". The job logged: \"%s\"", d->auto_first_reply);
    say(d, ".\n");
    return 1;
}

static int chapter_cost(demo *d)
{
    int n = d->window;
    if (d->phase == 0) {
        /* The last window: the policy has had two windows and two turns,
         * or, when the reader took longer, the latest steps. */
        int last = d->policy_step + 2 * n;
        if (last < d->policy_step + 2 * d->policy_every)
            last = d->policy_step + 2 * d->policy_every;
        d->final_last = last > d->latest_step ? last : d->latest_step;
        d->phase = 1;
    }
    int last = d->final_last;
    if (!reached(d, last, "under policy auto"))
        return 0;
    demo_window final_window;
    measure_window(d, last - n + 1, last, &final_window);
    const demo_window *b = &d->baseline, *f = &final_window;
    char change[32];
    say(d, "The devices cost the same per hour throughout; what a token costs "
        "falls as throughput rises. Cost per 1M tokens: %.4g %s (median of "
        "steps %d-%d), at the start, and %.4g %s (median of steps %d-%d), "
        "now: %s.\n", b->cost_per_mtok, d->currency, b->first, b->last,
        f->cost_per_mtok, d->currency, f->first, f->last,
        change_text(change, sizeof change, b->cost_per_mtok,
                    f->cost_per_mtok));
    say(d, "Throughput: ");
    say_tokens(d, b);
    say(d, " then, ");
    say_tokens(d, f);
    say(d, " now: %s; %.0f%% of the ideal then, %.0f%% now. MFU %.3g%% "
        "(median of steps %d-%d) then, %.3g%% (median of steps %d-%d) now.\n",
        change_text(change, sizeof change, b->tokens_per_s, f->tokens_per_s),
        100 * b->tokens_per_s / b->ideal_tokens_per_s,
        100 * f->tokens_per_s / f->ideal_tokens_per_s, b->mfu * 100, b->first,
        b->last, f->mfu * 100, f->first, f->last);
    int on[DEMO_MAX_RANKS];
    experts_per_rank(d, on);
    say(d, "By step %d the policy had decided %d time%s and applied %d "
        "plan%s; experts per rank now:", d->latest_step, d->auto_decisions,
        d->auto_decisions == 1 ? "" : "s", d->auto_applied,
        d->auto_applied == 1 ? "" : "s");
    for (int r = 0; r < d->ranks; r++)
        say(d, "%s %s %d", r ? "," : "", d->name[r], on[r]);
    say(d, ".\n");
    return 1;
}

static const demo_chapter chapters[] = {
    {"A mixed cluster starts", chapter_cluster},
    {"Expert load turns uneven", chapter_load},
    {"The straggler", chapter_straggler},
    {"The operator moves an expert", chapter_move},
    {"plan and apply rebalance", chapter_plan},
    {"policy auto keeps it balanced", chapter_policy},
    {"What a token costs", chapter_cost},
};
enum { DEMO_CHAPTERS = sizeof chapters / sizeof chapters[0] };

static void start_chapter(demo *d, int chapter)
{
    d->chapter = chapter;
    d->phase = 0;
    d->chapter_done = 0;
    d->text[0] = '\0';
    d->status[0] = '\0';
    snprintf(d->title, sizeof d->title, "Demo %d/%d: %s", chapter + 1,
             DEMO_CHAPTERS, chapters[chapter].heading);
}

/* Runs the current chapter; 1 when it just finished, -1 when it failed. */
static int demo_advance(demo *d)
{
    if (d->chapter_done || d->story_over)
        return 0;
    int status = chapters[d->chapter].run(d);
    if (status != 0) {
        d->chapter_done = 1;
        d->done_at_ms = clock_monotonic_ms();
        d->status[0] = '\0';
    }
    return status;
}

static void demo_init(demo *d)
{
    memset(d, 0, sizeof *d);
    d->first_step = d->latest_step = -1;
    d->base_straggler = -1;
    d->move_from = d->move_to = -1;
    d->window = DEMO_WINDOW_DEFAULT;
}

static void demo_finish(demo *d)
{
    free(d->history);
    free(d->load_ema);
    free(d->placement);
}

/* ---- headless ------------------------------------------------------------- */

static volatile sig_atomic_t demo_signal;

static void on_demo_signal(int sig)
{
    demo_signal = sig;
}

/* Prints text wrapped at DEMO_WRAP_COLS; lines starting with two blanks
 * are kept as they are. */
static void print_wrapped(FILE *out, const char *text)
{
    while (*text) {
        const char *end = strchr(text, '\n');
        size_t len = end ? (size_t)(end - text) : strlen(text);
        if (len >= 2 && text[0] == ' ' && text[1] == ' ') {
            fprintf(out, "%.*s\n", (int)len, text);
        } else {
            size_t at = 0;
            while (at < len) {
                while (at < len && text[at] == ' ')
                    at++;
                size_t take = len - at, cut = take;
                if (take > DEMO_WRAP_COLS) {
                    cut = DEMO_WRAP_COLS;
                    while (cut > 0 && text[at + cut] != ' ')
                        cut--;
                    if (cut == 0)
                        cut = DEMO_WRAP_COLS;
                }
                fprintf(out, "%.*s\n", (int)cut, text + at);
                at += cut;
            }
        }
        text += len + (end ? 1 : 0);
    }
}

typedef struct demo_socket {
    int fd;
    char *buf;
    size_t len, cap;
} demo_socket;

static void socket_send(void *ctx, const char *line)
{
    demo_socket *s = ctx;
    char text[256];
    int n = snprintf(text, sizeof text, "%s\n", line);
    if (n > 0 && n < (int)sizeof text)
        (void)!send(s->fd, text, (size_t)n, MSG_NOSIGNAL);
}

/* Reads what is there; folds each complete line. Returns 0 when the job
 * closed the socket. */
static int socket_read(demo_socket *s, demo *d)
{
    for (;;) {
        if (s->len == s->cap) {
            if (s->cap >= DEMO_LINE_MAX)
                s->len = 0; /* not a record: drop it */
            else {
                char *grown = realloc(s->buf, s->cap * 2 + 1);
                if (!grown)
                    return 0;
                s->buf = grown;
                s->cap *= 2;
            }
        }
        ssize_t n = recv(s->fd, s->buf + s->len, s->cap - s->len,
                         MSG_DONTWAIT);
        if (n == 0)
            return 0;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        s->len += (size_t)n;
        char *start = s->buf, *nl;
        while ((nl = memchr(start, '\n', s->len - (size_t)(start - s->buf)))) {
            *nl = '\0';
            demo_record(d, start);
            start = nl + 1;
        }
        size_t rest = s->len - (size_t)(start - s->buf);
        memmove(s->buf, start, rest);
        s->len = rest;
    }
}

static int connect_job(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void show_log(const char *log_path)
{
    FILE *f = fopen(log_path, "r");
    if (!f)
        return;
    /* The last lines say why. */
    static char tail[16][512];
    int n = 0;
    while (fgets(tail[n % 16], sizeof tail[0], f))
        n++;
    fclose(f);
    for (int i = n > 16 ? n - 16 : 0; i < n; i++)
        fputs(tail[i % 16], stderr);
}

static int run_headless(demo *d, char **engine_argv, const char *socket_path,
                        const char *log_path, const char *metrics_path)
{
    static const int signals[] = {SIGINT, SIGTERM, 0};
    signals_install(on_demo_signal, signals);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        int log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (null >= 0)
            dup2(null, STDIN_FILENO);
        if (log >= 0) {
            dup2(log, STDOUT_FILENO);
            dup2(log, STDERR_FILENO);
        }
        execv("/proc/self/exe", engine_argv);
        _exit(127);
    }
    if (pid < 0) {
        fprintf(stderr, "moectl demo: cannot start the job: %s\n",
                strerror(errno));
        return DEMO_EXIT_RUNTIME;
    }
    demo_socket s = {.fd = -1, .cap = 1 << 16};
    s.buf = malloc(s.cap + 1);
    int status = DEMO_EXIT_RUNTIME, wstatus = 0, reaped = 0;
    for (int tries = 0; s.buf && tries < 1200 && s.fd < 0; tries++) {
        s.fd = connect_job(socket_path);
        if (s.fd >= 0)
            break;
        if (waitpid(pid, &wstatus, WNOHANG) == pid) {
            reaped = 1;
            break;
        }
        struct timespec nap = {0, 50 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    if (s.fd < 0) {
        fprintf(stderr, "moectl demo: the job did not open its control "
                        "socket; its log %s:\n", log_path);
        show_log(log_path);
        goto finish;
    }
    d->send = socket_send;
    d->send_ctx = &s;
    printf("moectl demo: the job's metrics go to %s\n", metrics_path);
    start_chapter(d, 0);
    printf("\n== %s ==\n", d->title);
    fflush(stdout);
    int connected = 1, stop_sent = 0, failed = 0;
    while (connected) {
        struct pollfd pfd = {.fd = s.fd, .events = POLLIN};
        if (poll(&pfd, 1, 200) < 0 && errno != EINTR)
            break;
        connected = socket_read(&s, d);
        if (demo_signal && !stop_sent) {
            socket_send(&s, "stop");
            stop_sent = 1;
            failed = 1;
        }
        while (!stop_sent && !d->story_over) {
            int r = demo_advance(d);
            if (r == 0)
                break;
            print_wrapped(stdout, d->text);
            if (r < 0) {
                failed = 1;
                d->story_over = 1;
            } else if (d->chapter + 1 < DEMO_CHAPTERS) {
                start_chapter(d, d->chapter + 1);
                printf("\n== %s ==\n", d->title);
            } else {
                d->story_over = 1;
            }
            fflush(stdout);
        }
        if (d->story_over && !stop_sent) {
            socket_send(&s, "stop");
            stop_sent = 1;
        }
    }
    if (!d->story_over && !failed)
        fprintf(stderr, "moectl demo: the job ended at step %d before the "
                        "story did (%s); its log: %s\n", d->latest_step,
                d->status, log_path);
    if (!reaped)
        while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR)
            ;
    reaped = 1;
    int job = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
    if (d->story_over && !failed && (job == 0 || job == 3)) {
        printf("\nThe job stopped at step %d", d->summary_last_step);
        if (d->have_checkpoint)
            printf(", checkpoint %s", d->checkpoint_path);
        printf(".\nmetrics: %s\n", metrics_path);
        status = 0;
    } else {
        if (job != 0 && job != 3) {
            fprintf(stderr, "moectl demo: the job exited with status %d; its "
                            "log %s:\n", job, log_path);
            show_log(log_path);
        }
        printf("metrics: %s\n", metrics_path);
        status = demo_signal ? 3 : DEMO_EXIT_RUNTIME;
    }
finish:
    if (!reaped) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    if (s.fd >= 0)
        close(s.fd);
    free(s.buf);
    return status;
}

/* ---- in the console --------------------------------------------------------- */

typedef struct demo_narration {
    demo *d;
    int autoplay;
    char text[DEMO_TEXT_BYTES + 512];
} demo_narration;

static void narration_record(void *ctx, const char *line)
{
    demo_narration *n = ctx;
    demo_record(n->d, line);
}

static void narration_compose(demo_narration *n)
{
    demo *d = n->d;
    if (d->chapter_done)
        snprintf(n->text, sizeof n->text, "%s%s", d->text,
                 d->story_over
                     ? "The story is over; the job goes on under policy auto. "
                       "q stops it and leaves."
                 : n->autoplay ? "(next chapter in a few seconds)"
                               : "Enter: next chapter");
    else
        snprintf(n->text, sizeof n->text, "%s%s...", d->text, d->status);
}

static int narration_tick(void *ctx, console_send_fn send, void *console)
{
    demo_narration *n = ctx;
    demo *d = n->d;
    d->send = send;
    d->send_ctx = console;
    int changed = 0;
    if (!d->chapter_done) {
        char before[sizeof d->status];
        memcpy(before, d->status, sizeof before);
        int r = demo_advance(d);
        if (r != 0 && d->chapter + 1 == DEMO_CHAPTERS)
            d->story_over = 1;
        if (r < 0)
            d->story_over = 1;
        changed = r != 0 || strcmp(before, d->status) != 0;
    } else if (n->autoplay && !d->story_over &&
               clock_monotonic_ms() - d->done_at_ms >= DEMO_HOLD_MS) {
        start_chapter(d, d->chapter + 1);
        changed = 1;
    }
    if (changed)
        narration_compose(n);
    return changed;
}

static void narration_next(void *ctx)
{
    demo_narration *n = ctx;
    demo *d = n->d;
    if (d->chapter_done && !d->story_over) {
        start_chapter(d, d->chapter + 1);
        narration_compose(&n[0]);
    }
}

static int run_console(demo *d, char **engine_argv,
                       int autoplay, const char *metrics_path)
{
    static demo_narration n;
    n.d = d;
    n.autoplay = autoplay;
    start_chapter(d, 0);
    narration_compose(&n);
    console_narrator narrator = {
        .ctx = &n,
        .record = narration_record,
        .tick = narration_tick,
        .next = narration_next,
        .title = d->title,
        .text = n.text,
    };
    int status = console_launch_narrated(engine_argv, &narrator);
    printf("moectl demo: metrics: %s\n", metrics_path);
    /* Stopped by q is how the demo ends. */
    return status == 3 ? 0 : status;
}

/* ---- arguments ------------------------------------------------------------ */

static const char demo_usage[] =
    "usage: moectl demo [CONFIG] [--headless] [--autoplay] [--metrics PATH]\n"
    "                   [--steps-per-chapter N] [--set KEY=VALUE]...\n";

static int parse_count(const char *text, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

int demo_main(int argc, char **argv)
{
    const char *config_path = NULL, *metrics = NULL;
    const char *sets[DEMO_MAX_SETS];
    int set_count = 0, headless = 0, autoplay = 0;
    int window = DEMO_WINDOW_DEFAULT;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = strcmp(arg, "--metrics") == 0 ||
                    strcmp(arg, "--set") == 0 ||
                    strcmp(arg, "--steps-per-chapter") == 0;
        if (takes && !value) {
            fprintf(stderr, "moectl demo: option %s needs a value\n%s", arg,
                    demo_usage);
            return DEMO_EXIT_USAGE;
        }
        if (strcmp(arg, "--headless") == 0) {
            headless = 1;
        } else if (strcmp(arg, "--autoplay") == 0) {
            autoplay = 1;
        } else if (strcmp(arg, "--metrics") == 0) {
            metrics = argv[++i];
        } else if (strcmp(arg, "--set") == 0) {
            if (set_count == DEMO_MAX_SETS) {
                fprintf(stderr, "moectl demo: too many --set options\n");
                return DEMO_EXIT_USAGE;
            }
            sets[set_count++] = argv[++i];
        } else if (strcmp(arg, "--steps-per-chapter") == 0) {
            if (parse_count(value, 10, DEMO_WINDOW_MAX, &window) < 0) {
                fprintf(stderr, "moectl demo: --steps-per-chapter needs an "
                                "integer from 10 to %d, got \"%s\"\n",
                        DEMO_WINDOW_MAX, value);
                return DEMO_EXIT_USAGE;
            }
            i++;
        } else if (arg[0] == '-' && arg[1]) {
            fprintf(stderr, "moectl demo: unknown option %s\n%s", arg,
                    demo_usage);
            return DEMO_EXIT_USAGE;
        } else if (!config_path) {
            config_path = arg;
        } else {
            fprintf(stderr, "moectl demo: unexpected argument \"%s\"\n%s",
                    arg, demo_usage);
            return DEMO_EXIT_USAGE;
        }
    }
    /* No terminal: the story is told as text, like `moectl run`. */
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))
        headless = 1;
    if (!config_path)
        config_path = access("configs/demo.yaml", R_OK) == 0
                          ? "configs/demo.yaml"
                          : MOECTL_SOURCE_ROOT "/configs/demo.yaml";
    /* The corpus path is relative; run from elsewhere, the checkout's. */
    static char corpus_set[CONFIG_PATH_MAX + 16];
    const char *all_sets[DEMO_MAX_SETS + 1];
    int all_count = 0;
    if (access("data/kjv.txt", R_OK) != 0 &&
        access(MOECTL_SOURCE_ROOT "/data/kjv.txt", R_OK) == 0) {
        snprintf(corpus_set, sizeof corpus_set, "data.path=%s",
                 MOECTL_SOURCE_ROOT "/data/kjv.txt");
        all_sets[all_count++] = corpus_set;
    }
    for (int i = 0; i < set_count; i++)
        all_sets[all_count++] = sets[i];

    static config cfg;
    moe_error err = {{0}};
    if (config_load(&cfg, config_path, all_sets, all_count, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        return DEMO_EXIT_USAGE;
    }
    if (cfg.cluster.device_count < 2 ||
        cfg.cluster.device_count > DEMO_MAX_RANKS) {
        fprintf(stderr, "moectl demo: the story needs 2 to %d devices; %s "
                        "has %d\n", DEMO_MAX_RANKS, config_path,
                cfg.cluster.device_count);
        return DEMO_EXIT_USAGE;
    }

    static demo d;
    demo_init(&d);
    d.window = window;
    d.policy_every = window / 4 > 10 ? window / 4 : 10;
    d.balance_every = cfg.balance.every;
    for (int r = 0; r < cfg.cluster.device_count; r++)
        d.slowdown[r] = cfg.cluster.devices[r].slowdown;
    d.history = calloc(DEMO_HISTORY, sizeof *d.history);
    if (!d.history) {
        fprintf(stderr, "moectl demo: out of memory\n");
        return DEMO_EXIT_RUNTIME;
    }

    /* A private directory for the socket, the job's log and (unless
     * --metrics) its metrics, which stay for whoever wants to check. */
    char dir[] = "/tmp/moectl-demo-XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "moectl demo: cannot create a private directory: "
                        "%s\n", strerror(errno));
        demo_finish(&d);
        return DEMO_EXIT_RUNTIME;
    }
    static char socket_path[64], log_path[64], metrics_path[4096];
    snprintf(socket_path, sizeof socket_path, "%s/control.sock", dir);
    snprintf(log_path, sizeof log_path, "%s/engine.log", dir);
    snprintf(metrics_path, sizeof metrics_path, "%s",
             metrics ? metrics : "");
    if (!metrics)
        snprintf(metrics_path, sizeof metrics_path, "%s/metrics.jsonl", dir);

    char **engine = calloc((size_t)all_count * 2 + 16, sizeof *engine);
    if (!engine) {
        demo_finish(&d);
        return DEMO_EXIT_RUNTIME;
    }
    int n = 0;
    engine[n++] = "moectl";
    engine[n++] = "run";
    engine[n++] = (char *)config_path;
    engine[n++] = "--headless";
    engine[n++] = "--metrics";
    engine[n++] = metrics_path;
    for (int i = 0; i < all_count; i++) {
        engine[n++] = "--set";
        engine[n++] = (char *)all_sets[i];
    }
    int status;
    if (headless) {
        engine[n++] = "--socket";
        engine[n++] = socket_path;
        engine[n] = NULL;
        status = run_headless(&d, engine, socket_path, log_path,
                              metrics_path);
        rmdir(dir); /* when empty: the log stays if it has something */
    } else {
        engine[n] = NULL;
        status = run_console(&d, engine, autoplay, metrics_path);
        rmdir(dir); /* when empty */
    }
    free(engine);
    demo_finish(&d);
    return status;
}
