/* The console's view of a job, fed records as the engine writes them
 * (engine/protocol/metrics.c, engine/balance/balancer.c,
 * engine/protocol/control.c): every figure comes from a record field, a
 * missing one is n/a, and the balance policy and the paused state are
 * learned from the records' "state" fields, never from reply text. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tui/console/view.h"

#include "tests/expect.h"

static const char run_record[] =
    "{\"type\":\"run\",\"config\":\"tiny2\",\"devices\":["
    "{\"name\":\"cpu0\",\"backend\":\"cpu\",\"price_per_hour\":0.05,"
    "\"emulated\":false},"
    "{\"name\":\"cpu1\",\"backend\":\"cpu\",\"price_per_hour\":0.07,"
    "\"emulated\":true}],"
    "\"tokens_per_step\":256,\"steps\":1000,\"model\":{\"layers\":2,"
    "\"experts\":3},\"currency\":\"EUR\"}";

/* A step record in the current format: step, ms, mfu (NAN: null), ideal
 * tokens/s, cost per 1M, straggler (a JSON value). */
static void step_record(char *out, size_t size, int step, double step_ms,
                        double mfu, double ideal, double mtok,
                        const char *straggler)
{
    double tokens_per_s = 256 / (step_ms * 1e-3);
    char mfu_text[32] = "null";
    if (!isnan(mfu))
        snprintf(mfu_text, sizeof mfu_text, "%.17g", mfu);
    snprintf(out, size,
             "{\"type\":\"step\",\"step\":%d,\"loss\":2.5,\"lr\":0.01,"
             "\"tokens_per_s\":%.17g,\"model_flops_per_s\":1e9,"
             "\"step_ms\":%.17g,\"tokens\":256,\"elapsed_s\":1,"
             "\"expert_load\":[[10,0,20],[5,5,5]],"
             "\"ranks\":[{\"expert_ms\":1,\"dense_ms\":1,\"alltoall_ms\":0.5,"
             "\"allreduce_ms\":0.5,\"idle_ms\":0,\"tokens\":256,"
             "\"experts\":3,\"expert_flops_per_s\":2.5e9,\"state_gb\":0.001,"
             "\"capacity_gb\":24,\"rss_gb\":0.03},"
             "{\"expert_ms\":2,\"dense_ms\":1,\"alltoall_ms\":0.5,"
             "\"allreduce_ms\":0.5,\"idle_ms\":0,\"tokens\":256,"
             "\"experts\":3,\"expert_flops_per_s\":null,\"state_gb\":0.001,"
             "\"capacity_gb\":24,\"rss_gb\":0.03}],"
             "\"placement\":[[0,0,1],[1,1,0]],\"placement_version\":1,"
             "\"imbalance\":{\"max_mean\":[2.0,1.0],\"cv\":[0.8,0.0],"
             "\"dead\":[1,0]},"
             "\"load_ema\":[[11.5,0.5,18],[5,5.25,4.75]],"
             "\"straggler\":%s,\"ideal_tokens_per_s\":%.17g,"
             "\"ideal_share\":%.17g,\"mfu\":%s,"
             "\"cost_per_hour\":0.12,\"cost_per_mtok\":%.17g,"
             "\"cost_per_btok\":%.17g,\"cost_per_ttok\":%.17g,"
             "\"state\":{\"step\":%d,\"last_step\":1000,\"paused\":false,"
             "\"lr\":0.01,\"ranks\":2,\"placement_version\":1,"
             "\"policy\":\"off\",\"every\":50,\"min_gain\":0.05},"
             "\"schema\":2,\"time\":1796300000.25,\"run_id\":\"tiny2-x-1\"}",
             step, tokens_per_s, step_ms, straggler, ideal,
             tokens_per_s / ideal, mfu_text, mtok, mtok * 1e3, mtok * 1e6,
             step - 1);
}

static int near(double a, double b)
{
    return fabs(a - b) <= 1e-9 * fmax(1, fabs(b));
}

static const char *last_event(const view *v)
{
    return v->event_count ? v->events[(v->event_count - 1) % VIEW_EVENTS]
                          : "";
}

static void check_figures(void)
{
    view v;
    view_init(&v);
    view_cost cost;
    EXPECT(!view_cost_now(&v, &cost), "cost before any step");
    EXPECT(view_apply(&v, run_record) == 0, "run record");
    char line[4096];
    /* Two steps, the second twice as slow: rates average by time. */
    step_record(line, sizeof line, 1, 1.0, 0.02, 128000, 0.1, "1");
    EXPECT(view_apply(&v, line) == 0, "step 1");
    EXPECT(v.mfu.valid && near(v.mfu.avg, 0.02), "mfu %g", v.mfu.avg);
    EXPECT(near(v.efficiency.now, 2.0), "efficiency %g", v.efficiency.now);
    step_record(line, sizeof line, 2, 2.0, 0.01, 128000, 0.2, "1");
    view_apply(&v, line);
    /* Weights 0.9 * 1 ms and 0.1 * 2 ms. */
    double tokens_avg = (0.09 * 256000 * 1 + 0.1 * 128000 * 2) /
                        (0.09 * 1 + 0.1 * 2);
    EXPECT(near(v.tokens_per_s.avg, tokens_avg), "tokens/s avg %g, want %g",
           v.tokens_per_s.avg, tokens_avg);
    EXPECT(near(v.tokens_per_s.now, 128000), "tokens/s now %g",
           v.tokens_per_s.now);
    EXPECT(near(v.mfu.avg, (0.09 * 0.02 + 0.1 * 0.01 * 2) / 0.29),
           "mfu avg %g", v.mfu.avg);
    /* Cost per token averages by tokens, the same each step. */
    EXPECT(view_cost_now(&v, &cost), "cost");
    EXPECT(near(cost.per_mtok, (0.09 * 0.1 + 0.1 * 0.2) / 0.19) &&
               near(cost.per_btok, cost.per_mtok * 1e3) &&
               near(cost.per_ttok, cost.per_mtok * 1e6) &&
               near(cost.per_hour, 0.12),
           "cost %g %g %g %g", cost.per_hour, cost.per_mtok, cost.per_btok,
           cost.per_ttok);
    EXPECT(strcmp(v.currency, "EUR") == 0, "currency %s", v.currency);

    /* The grids, the imbalance and the ranks' new fields. */
    EXPECT(v.have_load_ema && near(v.load_ema[2], 18) &&
               near(v.load_ema[4], 5.25),
           "load_ema");
    EXPECT(v.have_imbalance && near(v.max_mean[0], 2.0) &&
               near(v.cv[0], 0.8) && v.dead[0] == 1 && v.dead[1] == 0,
           "imbalance");
    EXPECT(v.placement[2] == 1 && v.expert_load[2] == 20, "grids");
    EXPECT(v.rank_count == 2 && near(v.ranks[0].expert_flops_per_s, 2.5e9) &&
               isnan(v.ranks[1].expert_flops_per_s) &&
               near(v.ranks[1].capacity_gb, 24) &&
               near(v.ranks[1].state_gb, 0.001),
           "ranks");
    EXPECT(v.devices[1].emulated && !v.devices[0].emulated, "emulated");

    /* A null figure is n/a at once, not the last value. */
    step_record(line, sizeof line, 3, 2.0, NAN, 128000, 0.2, "1");
    EXPECT(view_apply(&v, line) == 0, "step with mfu null");
    EXPECT(!v.mfu.valid && v.tokens_per_s.valid, "mfu null is n/a");
    view_finish(&v);
}

/* A step record as engines wrote it before imbalance, load_ema, cost,
 * mfu and straggler. */
static void check_older_engine(void)
{
    view v;
    view_init(&v);
    view_apply(&v, run_record);
    view_apply(&v, "{\"type\":\"step\",\"step\":1,\"loss\":2,\"lr\":0.01,"
                   "\"tokens_per_s\":1000,\"step_ms\":256,\"tokens\":256,"
                   "\"expert_load\":[[1,2,3],[4,5,6]],\"ranks\":[{\"tokens\":"
                   "256,\"experts\":3},{\"tokens\":256,\"experts\":3}],"
                   "\"placement\":[[0,0,1],[1,1,0]]}");
    EXPECT(!v.have_load_ema && !v.have_imbalance && !v.mfu.valid &&
               !v.efficiency.valid && !v.cost_per_mtok.valid,
           "new figures n/a");
    EXPECT(view_straggler(&v, NULL) == -1 && v.straggler_count == 0,
           "no straggler");
    EXPECT(isnan(v.ranks[0].expert_flops_per_s) &&
               isnan(v.ranks[0].state_gb),
           "rank figures n/a");
    view_cost cost;
    /* The engine's figures or none: the view derives no cost of its own. */
    EXPECT(!view_cost_now(&v, &cost), "cost derived from prices %g",
           cost.per_mtok);
    EXPECT(v.expert_load[5] == 6, "expert_load");
    view_finish(&v);
}

static void check_straggler(void)
{
    view v;
    view_init(&v);
    view_apply(&v, run_record);
    char line[4096];
    double share;
    /* 40 steps waited for rank 1, then 30 for rank 0: the last 64 hold
     * 34 of rank 1. */
    for (int i = 1; i <= 70; i++) {
        step_record(line, sizeof line, i, 1, 0.01, 1e5, 0.1,
                    i <= 40 ? "1" : "0");
        view_apply(&v, line);
    }
    EXPECT(view_straggler(&v, &share) == 1 && near(share, 34.0 / 64),
           "straggler %d share %g", view_straggler(&v, NULL), share);
    step_record(line, sizeof line, 71, 1, 0.01, 1e5, 0.1, "0");
    view_apply(&v, line);
    /* 33 and 31 now; then a tie goes to the latest step's. */
    EXPECT(view_straggler(&v, NULL) == 1, "33 to 31");
    step_record(line, sizeof line, 72, 1, 0.01, 1e5, 0.1, "0");
    view_apply(&v, line);
    EXPECT(view_straggler(&v, &share) == 0 && near(share, 0.5),
           "a tie: the latest step's, share %g", share);
    /* A rank out of range is no straggler. */
    step_record(line, sizeof line, 73, 1, 0.01, 1e5, 0.1, "7");
    view_apply(&v, line);
    EXPECT(v.straggler == -1, "rank 7 of 2");
    view_finish(&v);
}

/* A "state" object: the job after a step or command. */
#define STATE(step, paused, policy, every, min_gain)                          \
    "\"state\":{\"step\":" #step ",\"last_step\":1000,\"paused\":" #paused     \
    ",\"lr\":0.01,\"ranks\":2,\"placement_version\":1,\"policy\":\"" policy   \
    "\",\"every\":" #every ",\"min_gain\":" #min_gain "}"

static void check_balance(void)
{
    view v;
    view_init(&v);
    view_apply(&v, run_record);
    EXPECT(v.policy == VIEW_POLICY_UNKNOWN &&
               strcmp(view_policy_name(v.policy), "n/a") == 0,
           "policy unknown at first");

    /* The console's status on attach: the facts are the state's fields;
     * the message is only shown (here it even says otherwise). */
    view_apply(&v, "{\"type\":\"reply\",\"ok\":true,\"command\":\"status\","
                   "\"message\":\"step 5 of 100, running, lr 0.01, 2 ranks, "
                   "placement version 1, policy auto\","
                   STATE(5, false, "off", 50, 0.05) "}");
    EXPECT(v.policy == CONFIG_POLICY_OFF && v.have_state &&
               v.state.step == 5 && !v.paused,
           "status: policy off from the state, not the message");
    EXPECT(strstr(last_event(&v), "ok: step 5 of 100") != NULL,
           "status reply logged: %s", last_event(&v));

    /* b: the event, then the reply to this console, shown once. */
    int before = v.event_count;
    view_apply(&v, "{\"type\":\"event\",\"step\":7,\"command\":\"policy "
                   "suggest\",\"origin\":\"control\",\"ok\":true,"
                   "\"reply\":\"policy suggest every 50 min-gain "
                   "5%: next plan after step 50\","
                   STATE(7, false, "suggest", 50, 0.05) "}");
    view_apply(&v, "{\"type\":\"reply\",\"ok\":true,\"command\":\"policy "
                   "suggest\",\"message\":\"policy suggest every 50 min-gain "
                   "5%: next plan after step 50\","
                   STATE(7, false, "suggest", 50, 0.05) "}");
    EXPECT(v.event_count == before + 1, "policy reply logged %d times",
           v.event_count - before);
    EXPECT(strcmp(last_event(&v), "step 7: policy suggest every 50 min-gain "
                                  "5%: next plan after step 50") == 0,
           "policy event: %s", last_event(&v));
    EXPECT(v.policy == CONFIG_POLICY_SUGGEST && v.policy_every == 50 &&
               near(v.policy_min_gain, 0.05),
           "policy suggest every %d min-gain %g", v.policy_every,
           v.policy_min_gain);

    /* The policy's turn: a plan record, then its event. */
    view_apply(&v, "{\"type\":\"plan\",\"step\":50,\"trigger\":\"auto\","
                   "\"applied\":true,\"moves\":[[0,1,0,1],[1,2,1,0]],"
                   "\"predicted_before_ms\":10.5,\"predicted_after_ms\":9.5,"
                   "\"predicted_gain\":0.095,\"moved_bytes\":1000}");
    EXPECT(v.policy == CONFIG_POLICY_AUTO, "an auto plan implies policy auto");
    EXPECT(v.plan.have && v.plan.step == 50 && v.plan.moves == 2 &&
               v.plan.applied && near(v.plan.before_ms, 10.5) &&
               near(v.plan.after_ms, 9.5) && near(v.plan.gain, 0.095) &&
               near(v.plan.moved_bytes, 1000) &&
               v.plan.trigger == RECORD_TRIGGER_AUTO,
           "plan");
    view_apply(&v, "{\"type\":\"event\",\"step\":50,\"command\":\"policy "
                   "auto\",\"origin\":\"policy\",\"ok\":true,"
                   "\"reply\":\"2 moves, predicted step 10.5 -> 9.5 "
                   "ms (-9.5%)\"," STATE(50, false, "auto", 50, 0.05) "}");
    EXPECT(strcmp(last_event(&v), "step 50: auto plan: 2 moves, predicted "
                                  "step 10.5 -> 9.5 ms (-9.5%)") == 0,
           "policy turn: %s", last_event(&v));
    EXPECT(v.policy_every == 50, "a turn keeps every");

    view_apply(&v, "{\"type\":\"plan_result\",\"step\":100,"
                   "\"applied_step\":50,\"steps\":50,\"before_ms\":10.7,"
                   "\"predicted_ms\":9.5,\"measured_ms\":9.75}");
    EXPECT(v.plan_result.have && v.plan_result.applied_step == 50 &&
               near(v.plan_result.measured_ms, 9.75),
           "plan_result");
    EXPECT(!v.plan_result.delivered, "a plan_result without delivered: not");
    view_apply(&v, "{\"type\":\"plan_result\",\"step\":100,"
                   "\"applied_step\":50,\"steps\":50,\"before_ms\":10.7,"
                   "\"predicted_ms\":9.5,\"measured_ms\":9.75,"
                   "\"delivered\":true}");
    EXPECT(v.plan_result.delivered, "plan_result delivered");
    EXPECT(strcmp(last_event(&v), "step 100: plan at step 50: predicted 9.5 "
                                  "ms, measured 9.75 ms over 50 steps "
                                  "(before 10.7 ms)") == 0,
           "plan_result event: %s", last_event(&v));
    view_apply(&v, "{\"type\":\"plan_result\",\"step\":100,"
                   "\"applied_step\":50,\"steps\":50,\"before_ms\":10.7,"
                   "\"predicted_ms\":9.5,\"measured_ms\":10.6,"
                   "\"noise_ms\":0.25,\"verdict\":\"noise\","
                   "\"delivered\":false}");
    EXPECT(!v.plan_result.delivered && near(v.plan_result.noise_ms, 0.25) &&
               strcmp(v.plan_result.verdict, "noise") == 0,
           "plan_result inside the noise");
    EXPECT(strcmp(last_event(&v), "step 100: plan at step 50: predicted 9.5 "
                                  "ms, measured 10.6 ms over 50 steps "
                                  "(before 10.7 ms): inside the noise "
                                  "(noise 0.25 ms)") == 0,
           "plan_result event: %s", last_event(&v));

    /* a, refused: the event says so itself (ok false); the error reply to
     * this console is not logged again. */
    before = v.event_count;
    view_apply(&v, "{\"type\":\"event\",\"step\":120,\"command\":\"apply\","
                   "\"origin\":\"control\",\"ok\":false,"
                   "\"reply\":\"apply: one rank holds every expert; there "
                   "is nothing to place\","
                   STATE(120, false, "auto", 50, 0.05) "}");
    EXPECT(!v.last_event_ok && v.last_event_step == 120,
           "a refused event: ok %d at step %d", v.last_event_ok,
           v.last_event_step);
    view_apply(&v, "{\"type\":\"reply\",\"ok\":false,\"command\":\"apply\","
                   "\"error\":\"apply: one rank holds every expert; there is "
                   "nothing to place\"," STATE(120, false, "auto", 50, 0.05)
                   "}");
    EXPECT(v.event_count == before + 1 &&
               strcmp(last_event(&v), "step 120: apply: one rank holds every "
                                      "expert; there is nothing to place "
                                      "(refused)") == 0,
           "refused apply: %s", last_event(&v));
    /* The same command at another step is another event's reply. */
    view_apply(&v, "{\"type\":\"reply\",\"ok\":false,\"command\":\"apply\","
                   "\"error\":\"apply: again\","
                   STATE(121, false, "auto", 50, 0.05) "}");
    EXPECT(v.event_count == before + 2 &&
               strcmp(last_event(&v), "error: apply: again") == 0,
           "a reply of another step: %s", last_event(&v));

    /* pause: the state says paused, whatever the reply's words. */
    view_apply(&v, "{\"type\":\"event\",\"step\":121,\"command\":\"pause\","
                   "\"origin\":\"control\",\"ok\":true,\"reply\":\"\","
                   STATE(121, true, "auto", 50, 0.05) "}");
    EXPECT(v.last_event_ok, "an applied event is ok");
    EXPECT(strcmp(last_event(&v), "step 121: pause") == 0 &&
               strcmp(v.status, "paused") == 0 && v.paused,
           "pause: %s, status %s", last_event(&v), v.status);
    view_apply(&v, "{\"type\":\"event\",\"step\":121,\"command\":\"resume\","
                   "\"origin\":\"script\",\"ok\":true,\"reply\":\"resumed\","
                   STATE(121, false, "auto", 50, 0.05) "}");
    EXPECT(strcmp(v.status, "running") == 0 && !v.paused,
           "resume: status %s", v.status);
    /* A scripted status at this step, then one asked over the socket:
     * the socket's reply is no echo of the script's event. */
    before = v.event_count;
    view_apply(&v, "{\"type\":\"event\",\"step\":121,\"command\":\"status\","
                   "\"origin\":\"script\",\"ok\":true,\"reply\":\"step 121\","
                   STATE(121, false, "auto", 50, 0.05) "}");
    view_apply(&v, "{\"type\":\"reply\",\"ok\":true,\"command\":\"status\","
                   "\"message\":\"step 121\","
                   STATE(121, false, "auto", 50, 0.05) "}");
    EXPECT(v.event_count == before + 2 &&
               strcmp(last_event(&v), "ok: step 121") == 0,
           "a socket status after a scripted one: %s", last_event(&v));
    view_apply(&v, "{\"type\":\"reply\",\"ok\":false,\"error\":\"unknown "
                   "command\"}");
    EXPECT(strcmp(last_event(&v), "error: unknown command") == 0,
           "error reply: %s", last_event(&v));
    /* Someone else sets the policy (moectl ctl): the event's state says
     * so, every and min-gain included. */
    view_apply(&v, "{\"type\":\"event\",\"step\":130,\"command\":\"policy "
                   "off\",\"origin\":\"control\",\"ok\":true,"
                   "\"reply\":\"policy off: placement changes only by "
                   "hand\"," STATE(130, false, "off", 30, 0.02) "}");
    EXPECT(v.policy == CONFIG_POLICY_OFF && v.policy_every == 30 &&
               near(v.policy_min_gain, 0.02),
           "policy off from an event");
    EXPECT(view_apply(&v, "not json") == -1, "a line that is no record");
    EXPECT(view_apply(&v, "{\"type\":\"novel\"}") == 0,
           "a record of a type the view does not know is skipped");
    view_finish(&v);
}

/* A console that attaches late learns the policy and the paused state
 * from the first records it gets: the run's balance, the step's state. */
static void check_late_attach(void)
{
    view v;
    view_init(&v);
    view_apply(&v, "{\"type\":\"run\",\"config\":\"tiny2\",\"devices\":[],"
                   "\"steps\":1000,\"model\":{\"layers\":2,\"experts\":3},"
                   "\"balance\":{\"policy\":\"suggest\",\"every\":25,"
                   "\"min_gain\":0.1},\"currency\":\"EUR\"}");
    EXPECT(v.policy == CONFIG_POLICY_SUGGEST && v.policy_every == 25 &&
               near(v.policy_min_gain, 0.1),
           "policy from the run record's balance");
    char line[4096];
    step_record(line, sizeof line, 40, 1.0, 0.02, 128000, 0.1, "1");
    EXPECT(view_apply(&v, line) == 0, "step 40");
    EXPECT(v.policy == CONFIG_POLICY_OFF && v.policy_every == 50 &&
               v.have_state && v.state.step == 39 && !v.paused &&
               strcmp(v.run_id, "tiny2-x-1") == 0,
           "the step record's state and run_id");
    view_finish(&v);
}

/* The whole run's loss from step 1, downsampled: 10,000 steps fill the
 * slots at stride 4 (each slot the mean of its 4 steps); a step seen
 * twice counts once; validation points land in their slots. Then the
 * same history from a metrics file (the attach path), step records read
 * by their lead fields. */
static void check_history(void)
{
    view v;
    view_init(&v);
    for (int step = 1; step <= 10000; step++) {
        double loss = 1000.0 / step + (step % 7) * 0.01;
        char line[256];
        snprintf(line, sizeof line,
                 "{\"type\":\"step\",\"step\":%d,\"loss\":%.17g}", step,
                 loss);
        view_apply(&v, line);
        if (step == 5000) /* again: no second sample */
            view_apply(&v, line);
    }
    view_apply(&v, "{\"type\":\"val\",\"step\":5000,\"val_loss\":0.5}");
    EXPECT(v.history_first_step == 1 && v.history_stride == 4 &&
               v.history_count == 2500 && v.history_last_step == 10000,
           "history: first %d stride %d count %d last %d",
           v.history_first_step, v.history_stride, v.history_count,
           v.history_last_step);
    int bad = 0;
    for (int slot = 0; slot < 2500; slot++) {
        double want = 0;
        for (int step = 1 + 4 * slot; step <= 4 + 4 * slot; step++)
            want += (1000.0 / step + (step % 7) * 0.01) / 4;
        bad += !(fabs(v.loss_history[slot] - want) <= 1e-9 * want) ||
               v.loss_n[slot] != 4;
    }
    EXPECT(bad == 0, "history: %d slots are not the mean of their 4 steps",
           bad);
    EXPECT(near(v.val_history[(5000 - 1) / 4], 0.5) &&
               isnan(v.val_history[0]),
           "history: the validation point in its slot");

    char path[] = "/tmp/moectl-view-history-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    EXPECT(f != NULL, "a temporary metrics file");
    if (!f) {
        view_finish(&v);
        return;
    }
    fprintf(f, "{\"type\":\"run\",\"config\":\"other\"}\n");
    for (int step = 1; step <= 300; step++)
        fprintf(f, "{\"type\":\"step\",\"step\":%d,\"loss\":%.17g,"
                   "\"lr\":0.01}\n", step, 3.0 - step * 0.001);
    fprintf(f, "{\"type\":\"val\",\"step\":300,\"val_loss\":2.75,"
               "\"schema\":2,\"time\":1,\"run_id\":\"r\"}\n");
    fclose(f);
    view w;
    view_init(&w);
    int read = view_load_history(&w, path);
    unlink(path);
    EXPECT(read == 301 && w.history_first_step == 1 &&
               w.history_count == 300 && near(w.loss_history[299], 2.7) &&
               near(w.val_history[299], 2.75) && w.event_count == 1 &&
               strcmp(w.config, "other") != 0,
           "history from a file: read %d, count %d, events %d", read,
           w.history_count, w.event_count);
    view_finish(&w);
    view_finish(&v);
}

/* The loss-spike guard's records: a skip and a lowered rate are events;
 * a roll back also undoes the loss history after the step it went back
 * to, so the steps trained again draw where the undone ones were. */
static void check_spikes(void)
{
    view v;
    view_init(&v);
    view_apply(&v, run_record);
    char line[4096];
    for (int i = 1; i <= 64; i++) {
        step_record(line, sizeof line, i, 1, 0.01, 1e5, 0.1, "null");
        view_apply(&v, line);
    }
    EXPECT(v.history_count == 64 && v.spikes == 0, "64 steps");
    view_apply(&v, "{\"type\":\"spike\",\"step\":62,\"action\":\"skip\","
               "\"reason\":\"loss 70 > 1.5 x median 2.5\",\"loss\":70,"
               "\"grad_norm\":19,\"median_loss\":2.5,\"median_grad_norm\":"
               "0.7,\"spikes\":3,\"requeued_to\":162,\"lr_factor\":null,"
               "\"until_step\":null,\"checkpoint\":null,"
               "\"resumed_step\":null}");
    EXPECT(v.spikes == 3 &&
               strcmp(v.events[(v.event_count - 1) % VIEW_EVENTS],
                      "step 62: spike skipped: loss 70 > 1.5 x median 2.5; "
                      "batch again at 162") == 0,
           "skip event: %s", v.events[(v.event_count - 1) % VIEW_EVENTS]);
    view_apply(&v, "{\"type\":\"spike\",\"step\":64,\"action\":"
               "\"rollback\",\"reason\":\"loss 70 > 1.5 x median 2.5\","
               "\"spikes\":5,\"checkpoint\":\"ck/step-00000060\","
               "\"resumed_step\":60}");
    EXPECT(v.history_count == 60 && isnan(v.loss_history[60]) &&
               v.history_last_step == 60 && v.loss_n[60] == 0,
           "rolled back to 60: count %d, last %d", v.history_count,
           v.history_last_step);
    EXPECT(strstr(v.events[(v.event_count - 1) % VIEW_EVENTS],
                  "rolled back to ck/step-00000060 (step 60)") != NULL,
           "rollback event");
    step_record(line, sizeof line, 61, 1, 0.01, 1e5, 0.1, "null");
    view_apply(&v, line);
    EXPECT(v.history_count == 61 && v.history_last_step == 61 &&
               v.loss_n[60] == 1,
           "step 61 again: count %d", v.history_count);
    view_finish(&v);
}

int main(void)
{
    check_spikes();
    check_history();
    check_figures();
    check_older_engine();
    check_straggler();
    check_balance();
    check_late_attach();
    printf("view: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}
