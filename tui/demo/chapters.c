/* The chapters of the demo's story, in order: each measures what it narrates
 * (a median over a stated range of steps) from the figures the story
 * collected through the view. */
#include "tui/demo/story.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* "+5.2%" from a to b, or "n/a". */
static const char *change_text(char *out, size_t size, double a, double b)
{
    if (isfinite(a) && isfinite(b) && a != 0)
        snprintf(out, size, "%+.1f%%", (b / a - 1) * 100);
    else
        snprintf(out, size, "n/a");
    return out;
}

/* "36181 tokens/s (median of steps 21-220)" */
static void say_tokens(demo *d, const demo_window *w)
{
    demo_say(d, "%.0f tokens/s (median of steps %d-%d)", w->tokens_per_s,
        w->first, w->last);
}

static void say_before_after(demo *d, const demo_window *before,
                             const demo_window *after)
{
    char change[32];
    demo_say(d, "Throughput: ");
    say_tokens(d, before);
    demo_say(d, " before, ");
    say_tokens(d, after);
    demo_say(d, " after: %s.\n", change_text(change, sizeof change,
                                        before->tokens_per_s,
                                        after->tokens_per_s));
}

/* ---- the chapters ------------------------------------------------------- */

static const char *rank_label(const demo *d, int r, char *out, size_t size)
{
    const view_device *dev = r >= 0 && r < d->v.device_count
                                 ? &d->v.devices[r]
                                 : NULL;
    snprintf(out, size, "rank %d (%s%s)", r, dev ? dev->name : "?",
             dev && dev->emulated ? ", emulated" : "");
    return out;
}

static int chapter_cluster(demo *d)
{
    if (!d->v.have_run || d->latest_step < 1) {
        demo_set_status(d, "waiting for the job's first step");
        return 0;
    }
    double per_hour = 0;
    for (int r = 0; r < d->v.device_count; r++)
        per_hour += d->v.devices[r].price_per_hour;
    int on[DEMO_MAX_RANKS];
    demo_experts_per_rank(d, on);
    demo_say(d, "moectl started the job \"%s\" on a mixed cluster of %d "
        "ranks, one MPI rank per device:\n", d->v.config, d->v.device_count);
    for (int r = 0; r < d->v.device_count; r++) {
        const view_device *shown = &d->v.devices[r];
        const config_device *dev = &d->cfg->cluster.devices[r];
        demo_say(d, "  rank %d %-9s %s, %d thread%s, peak %.3g TFLOPS, %.3g "
                 "%s/h, %d of %d experts", r, shown->name, shown->backend,
                 dev->threads, dev->threads == 1 ? "" : "s",
                 dev->peak_tflops, shown->price_per_hour, d->v.currency,
                 on[r], d->v.layers * d->v.experts);
        if (shown->emulated)
            demo_say(d, "  EMULATED: %.3gx slower", dev->slowdown);
        demo_say(d, "\n");
    }
    for (int r = 0; r < d->v.device_count; r++)
        if (d->v.devices[r].emulated)
            demo_say(d, "%s is an emulated slow device: the same CPU, made to "
                     "sleep %.3g times as long as it computes (slowdown %.3g "
                     "in the configuration), as a cheaper, slower "
                     "accelerator would.\n", d->v.devices[r].name,
                     d->cfg->cluster.devices[r].slowdown - 1,
                     d->cfg->cluster.devices[r].slowdown);
    demo_say(d, "Together they cost %.3g %s/h. The model: %d layers of %d "
             "experts (top-%d, width %d, d_model %d), %.0f parameters, %.0f "
             "active per token; %d tokens a step. Experts start round-robin "
             "over the ranks (placement at step %d). Every figure that "
             "follows is measured in this run.\n", per_hour, d->v.currency,
             d->v.layers, d->v.experts, d->cfg->moe.top_k,
             d->cfg->moe.expert_hidden, d->cfg->model.d_model,
             d->v.params, d->v.active_params, d->v.tokens_per_step,
             d->latest_step);
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
        demo_set_status(d, "measuring steps %d-%d: step %d",
                   d->baseline_first, d->baseline_last, d->latest_step);
        return 0;
    }
    demo_say(d, "The router spreads tokens unevenly. The busiest expert of "
        "each layer (max/mean of the step's load, median of steps %d-%d):",
        d->baseline_first, d->baseline_last);
    for (int l = 0; l < d->v.layers && l < DEMO_MAX_LAYERS; l++)
        demo_say(d, "%s layer %d %.2fx", l ? "," : "", l, d->base_max_mean[l]);
    demo_say(d, "%s. Dead experts at step %d:", d->v.layers > DEMO_MAX_LAYERS
                                                ? " (first layers)" : "",
        d->baseline_last);
    for (int l = 0; l < d->v.layers && l < DEMO_MAX_LAYERS; l++)
        demo_say(d, "%s layer %d %d", l ? "," : "", l, d->base_dead[l]);
    demo_say(d, ".\n");
    if (d->base_hot_layer >= 0) {
        char where[96];
        demo_say(d, "The hottest expert is %d.%d (layer %d, expert %d): "
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
    for (int r = 0; r < d->v.device_count; r++)
        total += d->base_straggler_steps[r];
    char who[96];
    if (s < 0) {
        demo_say(d, "No rank was named straggler in steps %d-%d.\n",
            d->baseline_first, d->baseline_last);
    } else {
        demo_say(d, "%s was the straggler in %.0f%% of steps %d-%d: every "
            "layer's all-to-all waits for it. Per rank, per step (medians of "
            "those steps):\n", rank_label(d, s, who, sizeof who),
            100.0 * d->base_straggler_steps[s] / (total ? total : 1),
            d->baseline_first, d->baseline_last);
    }
    for (int r = 0; r < d->v.device_count; r++)
        demo_say(d, "  rank %d %-9s experts %.2f ms, idle %.2f ms, %.3g "
            "GFLOP/s on experts, %d experts%s\n",
            r, d->v.devices[r].name, d->base_expert_ms[r],
            d->base_idle_ms[r], d->base_expert_flops[r] / 1e9,
            d->base_experts_on[r], r == s ? "  <- straggler" : "");
    const demo_window *w = &d->baseline;
    demo_say(d, "A median step takes %.2f ms. Throughput: ", w->step_ms);
    say_tokens(d, w);
    demo_say(d, ", %.0f%% of the ideal %.0f tokens/s (median "
        "ideal_tokens_per_s: the experts' work split over the ranks by their "
        "speed). In the console, the heatmap underlines the experts on the "
        "straggler and the Devices panel marks it.\n",
        100 * w->tokens_per_s / w->ideal_tokens_per_s, w->ideal_tokens_per_s);
    return 1;
}

/* The rank that computes experts fastest, other than the straggler. */
static int fastest_rank(const demo *d, int straggler)
{
    int best = -1;
    for (int r = 0; r < d->v.device_count; r++) {
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
            demo_say(d, "There is no straggler to relieve: nothing to "
                     "move.\n");
            return 1;
        }
        d->move_from = s;
        d->move_to = fastest_rank(d, s);
        double ratio;
        if (!demo_hottest_expert(d, s, &d->move_layer, &d->move_expert,
                            &d->move_load, &ratio)) {
            demo_say(d, "%s hosts no expert: nothing to move.\n",
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
        int outcome = demo_command_outcome(d);
        if (outcome <= 0)
            return outcome < 0;
        d->move_step = d->event_step;
        d->move_duration_ms = d->event_duration_ms;
        d->phase = 2;
    }
    int m = d->move_step, n = d->window;
    if (!demo_reached(d, m + n, "after the move"))
        return 0;
    demo_measure_window(d, m - n + 1, m, &d->before);
    demo_measure_window(d, m + 1, m + n, &d->after);
    int on[DEMO_MAX_RANKS];
    demo_experts_per_rank(d, on);
    demo_say(d, "The operator moves the hottest expert on the straggler to "
        "the fastest rank: `%s`, expert %d.%d (load_ema %.1f at step %d) from "
        "%s to %s, which computed experts at %.3g GFLOP/s (median of steps "
        "%d-%d). At step %d the job answered: \"%s\"",
        d->sent, d->move_layer, d->move_expert, d->move_load, d->sent_at,
        rank_label(d, d->move_from, from, sizeof from),
        rank_label(d, d->move_to, to, sizeof to),
        d->base_expert_flops[d->move_to] / 1e9, d->baseline_first,
        d->baseline_last, m, d->reply);
    if (isfinite(d->move_duration_ms))
        demo_say(d, " (the move took %.1f ms)", d->move_duration_ms);
    demo_say(d, ". %s now hosts %d experts.\n",
             d->v.devices[d->move_from].name, on[d->move_from]);
    say_before_after(d, &d->before, &d->after);
    double change = d->after.tokens_per_s / d->before.tokens_per_s - 1;
    if (change >= 0.01)
        demo_say(d, "The straggler has less to do, so every layer's "
            "all-to-all waits less.\n");
    else if (change <= -0.01)
        demo_say(d, "No better: a hand move is a guess. The fast rank now "
            "carries more of that layer, and the machine's two cores are "
            "shared; the planner weighs every expert's load against every "
            "rank's measured speed.\n");
    else
        demo_say(d, "Within noise: one expert of %d barely shifts the "
            "balance.\n",
            d->v.layers * d->v.experts);
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
        int outcome = demo_command_outcome(d);
        if (outcome <= 0)
            return outcome < 0;
        demo_say(d, "`plan` at step %d asks the placement planner, from the "
            "measured loads and rank speeds, for a better placement. It "
            "answered: \"%s\"", d->event_step, d->reply);
        if (d->plan_plan.have)
            demo_say(d, " (plan record: %d changes, predicted step %.2f -> "
                "%.2f ms, gain %.1f%%, %.3g MB to ship)", d->plan_plan.moves,
                d->plan_plan.before_ms, d->plan_plan.after_ms,
                d->plan_plan.gain * 100, d->plan_plan.moved_bytes / 1e6);
        demo_say(d, ".\n");
        if (demo_send(d, "apply") < 0)
            return -1;
        d->phase = 2;
    }
    if (d->phase == 2) {
        int outcome = demo_command_outcome(d);
        if (outcome <= 0)
            return outcome < 0;
        d->apply_step = d->event_step;
        d->phase = 3;
    }
    int a = d->apply_step, n = d->window;
    if (d->phase == 3) {
        if (!demo_reached(d, a + n, "after apply"))
            return 0;
        demo_measure_window(d, a - n + 1, a, &d->before);
        demo_measure_window(d, a + 1, a + n, &d->after);
        d->phase = 4;
    }
    /* Wait for the plan_result of this plan, balance.every steps after it
     * was applied, or give up a window later. */
    int applied = d->plan_apply.have && d->plan_apply.applied &&
                  d->plan_apply.step >= a - 1 && d->plan_apply.moves > 0;
    int measured = d->v.plan_result.have && d->v.plan_result.applied_step == a;
    if (applied && !measured &&
        d->latest_step < a + d->cfg->balance.every + n) {
        demo_set_status(d, "waiting for the plan_result record (due at step "
            "%d)",
                   a + d->cfg->balance.every);
        return 0;
    }
    int on[DEMO_MAX_RANKS];
    demo_experts_per_rank(d, on);
    demo_say(d, "`apply` at step %d carried it out through live migration, "
        "weights and Adam moments included: \"%s\".", a, d->reply);
    if (d->move_from >= 0 && d->move_from < d->v.device_count)
        demo_say(d, " %s now hosts %d experts.",
                 d->v.devices[d->move_from].name, on[d->move_from]);
    demo_say(d, "\n");
    say_before_after(d, &d->before, &d->after);
    if (!(d->after.tokens_per_s > d->before.tokens_per_s))
        demo_say(d, "Not faster on this measure: the plan is a prediction "
            "from each rank's median speed over the latest steps, and "
            "plan_result below says how it fared. "
            "policy auto keeps planning, and backs off from plans that do "
            "not deliver.\n");
    const view_plan_result *q = &d->v.plan_result;
    if (measured)
        demo_say(d, "The plan_result record at step %d: predicted %.2f ms a "
            "step, measured %.2f ms (median of %d steps), before %.2f ms "
            "(median of as many just before)%s.\n", q->step,
            q->predicted_ms, q->measured_ms, q->steps, q->before_ms,
            q->delivered                      ? ""
            : strcmp(q->verdict, "noise") == 0 ? "; the difference is inside "
                                                 "the noise"
                                               : "; it did not deliver half "
                                                 "the predicted gain");
    else if (applied)
        demo_say(d, "No plan_result record came by step %d.\n",
                 d->latest_step);
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
        int outcome = demo_command_outcome(d);
        if (outcome < 0)
            d->policy_step = d->latest_step;
        if (outcome <= 0)
            return outcome < 0;
        d->policy_step = d->event_step;
        d->phase = 2;
    }
    const view_plan *p = &d->plan_auto_first;
    if (!p->have || p->step <= d->policy_step) {
        demo_set_status(d, "waiting for the policy's first decision (step %d, "
                   "now %d)", d->policy_step + d->policy_every,
                   d->latest_step);
        return 0;
    }
    /* Its event, which carries the job's words, follows the plan record. */
    if (!d->auto_first_event_step && d->latest_step <= p->step + 2) {
        demo_set_status(d, "waiting for the event of the decision at step %d",
                   p->step);
        return 0;
    }
    demo_say(d, "`%s` at step %d hands placement to the policy: \"%s\". "
        "Every %d steps it plans, and applies the plan when the predicted "
        "gain is worth it.\n",
            d->sent, d->policy_step, d->reply, d->policy_every);
    demo_say(d, "Its first decision, at step %d: %d changes, predicted step "
        "%.2f -> %.2f ms (gain %.1f%%): %s", p->step, p->moves, p->before_ms,
        p->after_ms, p->gain * 100, p->applied ? "applied" : "kept");
    if (d->auto_first_reply[0])
        demo_say(d, ". The job logged: \"%s\"", d->auto_first_reply);
    demo_say(d, ".\n");
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
    if (!demo_reached(d, last, "under policy auto"))
        return 0;
    demo_window final_window;
    demo_measure_window(d, last - n + 1, last, &final_window);
    const demo_window *b = &d->baseline, *f = &final_window;
    char change[32];
    demo_say(d, "The devices cost the same per hour throughout; what a "
        "token costs falls as throughput rises. Cost per 1M tokens: %.4g %s "
        "(median of steps %d-%d), at the start, and %.4g %s (median of steps "
        "%d-%d), now: %s.\n",
            b->cost_per_mtok, d->v.currency, b->first, b->last,
        f->cost_per_mtok, d->v.currency, f->first, f->last,
        change_text(change, sizeof change, b->cost_per_mtok,
                    f->cost_per_mtok));
    demo_say(d, "Throughput: ");
    say_tokens(d, b);
    demo_say(d, " then, ");
    say_tokens(d, f);
    demo_say(d, " now: %s; %.0f%% of the ideal then, %.0f%% now. MFU %.3g%% "
        "(median of steps %d-%d) then, %.3g%% (median of steps %d-%d) now.\n",
        change_text(change, sizeof change, b->tokens_per_s, f->tokens_per_s),
        100 * b->tokens_per_s / b->ideal_tokens_per_s,
        100 * f->tokens_per_s / f->ideal_tokens_per_s, b->mfu * 100, b->first,
        b->last, f->mfu * 100, f->first, f->last);
    int on[DEMO_MAX_RANKS];
    demo_experts_per_rank(d, on);
    demo_say(d, "By step %d the policy had decided %d time%s and applied %d "
        "plan%s; experts per rank now:", d->latest_step, d->auto_decisions,
        d->auto_decisions == 1 ? "" : "s", d->auto_applied,
        d->auto_applied == 1 ? "" : "s");
    for (int r = 0; r < d->v.device_count; r++)
        demo_say(d, "%s %s %d", r ? "," : "", d->v.devices[r].name, on[r]);
    demo_say(d, ".\n");
    return 1;
}

const demo_chapter demo_chapters[] = {
    {"A mixed cluster starts", chapter_cluster},
    {"Expert load turns uneven", chapter_load},
    {"The straggler", chapter_straggler},
    {"The operator moves an expert", chapter_move},
    {"plan and apply rebalance", chapter_plan},
    {"policy auto keeps it balanced", chapter_policy},
    {"What a token costs", chapter_cost},
};
const int demo_chapter_count =
    (int)(sizeof demo_chapters / sizeof demo_chapters[0]);

