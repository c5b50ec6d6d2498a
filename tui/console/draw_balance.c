#include "tui/console/draw.h"

#include <math.h>
#include <ncurses.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tui/console/format.h"

/* How a plan came about, as the balance panel says it. */
static const char *plan_trigger_name(int trigger)
{
    static const char *const said[] = {
        [RECORD_TRIGGER_PLAN] = "by plan",
        [RECORD_TRIGGER_APPLY] = "by apply",
        [RECORD_TRIGGER_SUGGEST] = "suggested",
        [RECORD_TRIGGER_AUTO] = "auto",
        [RECORD_TRIGGER_REVERT] = "auto, moving back: the last plan slowed "
                                  "the step",
    };
    return trigger >= 0 && trigger <= RECORD_TRIGGER_REVERT ? said[trigger]
                                                            : "?";
}

/* The balance band: the policy; the latest plan; the latest applied plan,
 * measured. Each line has a full and a compact form for narrow screens. */
void draw_balance(console *c, const layout_rect *r)
{
    const view *v = &c->v;
    if (r->rows < 3)
        return;
    int cols = r->cols - 1;
    char full[256], compact[256], every[64] = "";
    if (v->policy != CONFIG_POLICY_OFF && v->policy_every > 0)
        snprintf(every, sizeof every, " every %d steps, min-gain %.3g%%",
                 v->policy_every, v->policy_min_gain * 100);
    snprintf(full, sizeof full, "Balance  policy %s%s",
             view_policy_name(v->policy), every);
    draw_title(r, full);

    const view_plan *p = &v->plan;
    const view_plan_result *q = &v->plan_result;
    if (!p->have) {
        snprintf(full, sizeof full, "no plan yet: a plans and applies, :plan "
                 "only plans, b sets the policy");
        snprintf(compact, sizeof compact, "no plan yet");
    } else if (p->moves == 0) {
        char before[32];
        format_real(before, sizeof before, "%.3g ms", p->before_ms);
        snprintf(full, sizeof full, "plan at step %d (%s): the placement is "
                 "already the best found, step %s", p->step,
                 plan_trigger_name(p->trigger), before);
        snprintf(compact, sizeof compact, "plan at step %d (%s): no move "
                 "helps, step %s", p->step, plan_trigger_name(p->trigger),
                 before);
    } else {
        char moved[16], state[48] = "applied";
        format_bytes(moved, sizeof moved, p->moved_bytes);
        int measured = q->have && q->applied_step >= p->step;
        if (!p->applied && p->trigger == RECORD_TRIGGER_AUTO)
            snprintf(state, sizeof state, "kept: gain below the threshold");
        else if (!p->applied)
            snprintf(state, sizeof state, "not applied (a applies it)");
        else if (!measured && v->policy_every > 0)
            snprintf(state, sizeof state, "applied, measuring until step %d",
                     p->step + v->policy_every);
        else if (!measured)
            snprintf(state, sizeof state, "applied, measuring");
        char before[32], after[32], gain[32];
        format_real(before, sizeof before, "%.3g", p->before_ms);
        format_real(after, sizeof after, "%.3g", p->after_ms);
        format_real(gain, sizeof gain, "%.1f%%", p->gain * 100);
        /* Moves alone, or changes of which some split an expert. */
        char what[48];
        if (p->splits)
            snprintf(what, sizeof what, "%d change%s (%d split)", p->moves,
                     p->moves == 1 ? "" : "s", p->splits);
        else
            snprintf(what, sizeof what, "%d move%s", p->moves,
                     p->moves == 1 ? "" : "s");
        snprintf(full, sizeof full, "plan at step %d (%s): %s, %s -> %s ms "
                 "predicted, gain %s, %s; %s", p->step,
                 plan_trigger_name(p->trigger), what, before, after, gain,
                 moved, state);
        snprintf(compact, sizeof compact, "plan %d (%s): %s, %s -> %s ms "
                 "(gain %s), %s", p->step, plan_trigger_name(p->trigger),
                 what, before, after, gain, state);
    }
    const char *plan_lines[] = {full, compact};
    draw_text(r->row + 1, r->col, draw_longest_fitting(plan_lines, 2, cols),
              cols);

    if (q->have) {
        char predicted[32], measured[32], error[32], before[32];
        format_real(predicted, sizeof predicted, "%.3g", q->predicted_ms);
        format_real(measured, sizeof measured, "%.3g", q->measured_ms);
        format_real(error, sizeof error, "%+.0f%%",
                  (q->measured_ms / q->predicted_ms - 1) * 100);
        format_real(before, sizeof before, "%.3g", q->before_ms);
        char verdict[32] = "";
        if (q->verdict[0])
            snprintf(verdict, sizeof verdict, ": %s",
                     strcmp(q->verdict, "noise") == 0 ? "inside the noise"
                                                      : q->verdict);
        snprintf(full, sizeof full, "plan at step %d: predicted %s ms, "
                 "measured %s ms (%s) over %d steps, before %s ms%s",
                 q->applied_step, predicted, measured, error, q->steps,
                 before, verdict);
        snprintf(compact, sizeof compact, "plan at step %d: predicted %s ms, "
                 "measured %s ms (%s)", q->applied_step, predicted, measured,
                 error);
    } else {
        snprintf(full, sizeof full, "no applied plan measured yet");
        snprintf(compact, sizeof compact, "%s", full);
    }
    const char *result_lines[] = {full, compact};
    draw_text(r->row + 2, r->col, draw_longest_fitting(result_lines, 2, cols),
             cols);
}

