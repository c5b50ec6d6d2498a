#include "engine/model/slowdown.h"

#include <string.h>
#include <time.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "engine/core/clock.h"

void slowdown_set(slowdown *s, double factor)
{
    s->factor = factor;
#ifdef PR_SET_TIMERSLACK
    /* Sleeps of tens of microseconds: the default 50 us slack would
     * swamp them. */
    if (factor > 1.0)
        prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
#endif
}

int slowdown_active(const slowdown *s)
{
    return s->factor > 1.0;
}

void slowdown_reset(slowdown *s)
{
    double factor = s->factor;
    memset(s, 0, sizeof *s);
    s->factor = factor;
}

void slowdown_begin(slowdown *s, double now, double waited_s)
{
    s->lap_slept_s = 0.0;
    s->lap_compute_s = 0.0;
    s->mark = now;
    s->waited_at_mark = waited_s;
    s->in_pass = 1;
}

void slowdown_end(slowdown *s)
{
    s->in_pass = 0;
}

static void charge(slowdown *s, double now, double waited_s)
{
    double compute = s->in_pass ? now - s->mark -
                                      (waited_s - s->waited_at_mark)
                                : 0.0;
    s->mark = now;
    s->waited_at_mark = waited_s;
    s->debt_s += (s->factor - 1.0) * (compute > 0 ? compute : 0);
    s->lap_compute_s += compute > 0 ? compute : 0;
}

static double pay(slowdown *s, double now, double at_least_s)
{
    double debt = s->debt_s;
    if (debt < at_least_s || debt <= 0)
        return now;
    struct timespec nap = {(time_t)debt,
                           (long)((debt - (double)(time_t)debt) * 1e9)};
    nanosleep(&nap, NULL);
    double after = clock_monotonic_s();
    s->debt_s -= after - now;
    s->lap_slept_s += after - now;
    s->mark = after;
    return after;
}

double slowdown_end_lap(slowdown *s, double now, double waited_s,
                        double *correction_s)
{
    if (slowdown_active(s)) {
        charge(s, now, waited_s);
        now = pay(s, now, 50e-6);
    }
    *correction_s = -s->lap_slept_s +
                    (slowdown_active(s) ? (s->factor - 1.0) * s->lap_compute_s
                                        : 0.0);
    s->lap_slept_s = 0.0;
    s->lap_compute_s = 0.0;
    return now;
}

void slowdown_sync(slowdown *s, double waited_s)
{
    if (!slowdown_active(s))
        return;
    double now = clock_monotonic_s();
    charge(s, now, waited_s);
    pay(s, now, 0.0);
}
