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
    balancer_mark_applied(b, 100);
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
    /* The prediction was above the step time it was judged against and
     * the step got slower: missed, not delivered. */
    v = judge(&b, &r, 147.0, 150.0, 164.0, 2.0);
    EXPECT(strcmp(v, "missed") == 0, "147 -> 164 ms: %s", v);
    /* Without jitter any measurable gain counts. */
    v = judge(&b, &r, 10.0, 9.0, 9.4, 0.0);
    EXPECT(strcmp(v, "delivered") == 0 && b.missed == 0,
           "10 -> 9.4 ms, promised 9: %s", v);
    balancer_destroy(&b);
    if (failures)
        return 1;
    printf("ok: delivered, inside the noise, missed, and a slower step "
           "after a prediction above it is missed\n");
    return 0;
}
