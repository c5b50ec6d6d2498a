/* How an applied plan is judged (balancer_mark_applied, balancer_follow_up):
 * the median of the `every` step times just before it was applied against
 * the median of the `every` after, with a noise band from the spread of
 * the window before. Hand-made step times, jittered by a seeded RNG. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/balance/balancer.h"
#include "engine/config/config.h"
#include "engine/core/rng.h"

#include "tests/expect.h"

enum { EVERY = 20 };

/* How the plan judged was made: auto's own (a move back when revert), or
 * by hand (apply). */
static int by_auto = 1, revert = 0;

/* Judges a plan applied after `before_ms` steps, predicted at
 * `predicted_ms`, measured at `after_ms`, each step jittered by up to
 * +-jitter_ms; returns the verdict's name. */
static const char *judge(balancer *b, rng *r, double before_ms,
                         double predicted_ms, double after_ms,
                         double jitter_ms)
{
    b->recent_count = b->recent_next = 0;
    for (int i = 0; i < EVERY; i++) {
        double ms = before_ms + jitter_ms * (2 * rng_uniform(r) - 1);
        b->recent_s[b->recent_next++] = ms * 1e-3;
        b->recent_count++;
    }
    b->after_s = predicted_ms * 1e-3;
    balancer_mark_applied(b, 100, 2, by_auto, revert);
    int done = 0;
    for (int i = 1; i <= EVERY && !done; i++) {
        step_stats s;
        memset(&s, 0, sizeof s);
        s.step = 100 + i;
        s.step_s = (after_ms + jitter_ms * (2 * rng_uniform(r) - 1)) * 1e-3;
        done = balancer_follow_up(b, &s, NULL, NULL);
    }
    EXPECT(done, "no verdict after %d steps", EVERY);
    return b->verdict == BALANCER_NONE ? "none"
                                       : balancer_verdict_names[b->verdict];
}

/* Auto's plan made the step slower: it moves back to what the plan
 * replaced, once, and only while nothing else changed the placement. */
static void check_revert(balancer *b, rng *r)
{
    EXPECT(b->revert_due, "auto's plan, 147 -> 164 ms: move back due");
    int L = b->layers, E = b->experts, R = b->ranks;
    int before[64], before_share[128], now[64], now_share[128];
    int rows_before[2] = {5, 3};
    EXPECT(L * E <= 64 && R == 2, "the test's arrays hold %d x %d", L, E);
    for (int i = 0; i < L * E; i++) {
        before[i] = i % R, now[i] = (i + 1) % R;
        for (int q = 0; q < R; q++) {
            before_share[i * R + q] = q == before[i] ? b->share_units : 0;
            now_share[i * R + q] = q == now[i] ? b->share_units : 0;
        }
    }
    b->rows[0] = 4, b->rows[1] = 4;
    balancer_keep_undo(b, before, before_share, rows_before);
    char text[256];
    EXPECT(balancer_propose_revert(b, now, now_share, 3, text, sizeof text) <
                   0 && !b->revert_due,
           "placement version 3, not the plan's 2: no move back");
    b->revert_due = 1;
    EXPECT(balancer_propose_revert(b, now, now_share, 2, text, sizeof text) ==
                   0,
           "no move back proposed");
    EXPECT(!memcmp(b->proposal, before, (size_t)L * E * sizeof *before) &&
               !memcmp(b->proposal_share, before_share,
                       (size_t)L * E * R * sizeof *before_share) &&
               b->proposal_rows[0] == 5 && b->proposal_rows[1] == 3,
           "the move back is not the placement and rows kept");
    EXPECT(b->proposal_changes == L * E + 1 && b->proposal_moves == L * E,
           "changes %d, moves %d", b->proposal_changes, b->proposal_moves);
    EXPECT(fabs(b->before_s - 164e-3) < 2e-3 &&
               fabs(b->after_s - 147e-3) < 2e-3,
           "move back predicted %g -> %g s: the medians measured",
           b->before_s, b->after_s);
    EXPECT(strstr(text, "after step 100") != NULL, "text: %s", text);
    /* A move back that slows the job is not moved back from, nor is a
     * plan applied by hand. */
    revert = 1;
    judge(b, r, 147.0, 150.0, 164.0, 2.0);
    EXPECT(!b->revert_due, "a move back was moved back from");
    /* A move back that restores the step keeps the doubled min-gain: the
     * plan it undid missed. */
    int missed = b->missed;
    const char *v = judge(b, r, 164.0, 147.0, 147.0, 2.0);
    EXPECT(strcmp(v, "delivered") == 0 && b->missed == missed,
           "a move back 164 -> 147 ms: %s, missed %d -> %d", v, missed,
           b->missed);
    revert = 0, by_auto = 0;
    judge(b, r, 147.0, 150.0, 164.0, 2.0);
    EXPECT(!b->revert_due, "a plan applied by hand was moved back from");
    by_auto = 1;
}

/* Auto asks at least the noise its verdict would face. */
static void check_threshold(balancer *b, rng *r)
{
    b->missed = 0;
    b->min_gain = 0.02;
    b->recent_count = b->recent_next = 0;
    for (int i = 0; i < EVERY; i++) {
        b->recent_s[b->recent_next++] = 100e-3;
        b->recent_count++;
    }
    int noisy = -1;
    double quiet = balancer_auto_threshold(b, &noisy);
    EXPECT(quiet == 0.02 && !noisy, "steady steps: threshold %g (noisy %d)",
           quiet, noisy);
    b->recent_count = b->recent_next = 0;
    for (int i = 0; i < EVERY; i++) {
        b->recent_s[b->recent_next++] =
            (100.0 + 20.0 * (2 * rng_uniform(r) - 1)) * 1e-3;
        b->recent_count++;
    }
    double loud = balancer_auto_threshold(b, &noisy);
    /* +-20% uniform: sigma ~11.5 ms, the band ~1.96 x 1.25 x 11.5 x
     * sqrt(2/20) = 9 ms of 100. */
    EXPECT(noisy && loud > 0.05 && loud < 0.15,
           "+-20 ms of jitter on 100: threshold %g (noisy %d)", loud, noisy);
    b->missed = 4; /* 0.02 x 16 = 0.32, above the noise */
    double doubled = balancer_auto_threshold(b, &noisy);
    EXPECT(fabs(doubled - 0.32) < 1e-12 && !noisy,
           "min-gain doubled 4 times: %g (noisy %d)", doubled, noisy);
}

int main(void)
{
    config cfg;
    config_defaults(&cfg);
    cfg.balance.every = EVERY;
    balancer b;
    moe_error err;
    if (balancer_create(&b, &cfg, 2, 4096, &err) < 0) {
        printf("FAIL: %s\n", err.message);
        return 1;
    }
    rng r;
    rng_seed(&r, 11, 0);
    const char *v = judge(&b, &r, 10.0, 8.0, 8.0, 0.2);
    EXPECT(strcmp(v, "delivered") == 0 && b.missed == 0,
           "10 -> 8 ms as predicted: %s", v);
    EXPECT(fabs(b.applied_before_s - 10e-3) < 0.2e-3,
           "before is the median of the window: %g", b.applied_before_s);
    v = judge(&b, &r, 10.0, 8.0, 10.05, 0.2);
    EXPECT(strcmp(v, "noise") == 0 && b.missed == 1,
           "10 -> 10.05 ms with 0.2 ms of jitter: %s (noise %.3f ms)", v,
           b.applied_noise_s * 1e3);
    v = judge(&b, &r, 10.0, 8.0, 9.7, 0.2);
    EXPECT(strcmp(v, "missed") == 0 && b.missed == 2,
           "10 -> 9.7 ms of a promised 8: %s", v);
    EXPECT(!b.revert_due, "10 -> 9.7 ms is faster: no move back");
    /* The prediction was above the step time it was judged against and
     * the step got slower: missed, not delivered. */
    v = judge(&b, &r, 147.0, 150.0, 164.0, 2.0);
    EXPECT(strcmp(v, "missed") == 0, "147 -> 164 ms: %s", v);
    check_revert(&b, &r);
    /* Without jitter any measurable gain counts. */
    v = judge(&b, &r, 10.0, 9.0, 9.4, 0.0);
    EXPECT(strcmp(v, "delivered") == 0 && b.missed == 0,
           "10 -> 9.4 ms, promised 9: %s", v);
    check_threshold(&b, &r);
    balancer_destroy(&b);
    if (failures)
        return 1;
    printf("ok: delivered, inside the noise, missed, a slower step after "
           "a prediction above it is missed, and auto moves back from its "
           "plan that slowed the job (once, and not over other changes); auto asks "
           "at least the noise\n");
    return 0;
}
