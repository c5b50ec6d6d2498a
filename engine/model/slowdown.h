/* Emulation of a slower device (cluster.devices[].slowdown): every stretch
 * of compute (the waits for other ranks excluded) adds (factor - 1) times
 * its length to a debt of sleep. The debt is slept at the end of each lap
 * when it has grown past 50 us (shorter sleeps are mostly overshoot, which
 * is paid back from the debt rather than accumulated), and always in full
 * before the rank next talks to the others, so that they wait for it there
 * as they would for a slow device. */
#ifndef MOECTL_ENGINE_MODEL_SLOWDOWN_H
#define MOECTL_ENGINE_MODEL_SLOWDOWN_H

typedef struct slowdown {
    double factor;         /* > 1: emulate a device this much slower */
    double mark;           /* compute before this (monotonic s) is charged */
    double waited_at_mark; /* seconds waiting for other ranks at the mark */
    double debt_s;         /* emulated slowdown not yet slept */
    double lap_compute_s;  /* compute charged since the last lap */
    double lap_slept_s;    /* slept since the last lap */
    int in_pass;           /* between slowdown_begin and slowdown_end:
                              only a pass's compute is slowed */
} slowdown;

/* Sets the factor (1: off) and lowers the timer slack for short sleeps. */
void slowdown_set(slowdown *s, double factor);
int slowdown_active(const slowdown *s);
/* Forgets the debt and the marks (the factor stays). */
void slowdown_reset(slowdown *s);

/* Starts the laps of a pass at `now`, having waited `waited_s` so far. */
void slowdown_begin(slowdown *s, double now, double waited_s);

/* Ends a lap at `now`: charges its compute, sleeps the debt when past
 * 50 us. Returns the time after any sleep; *correction_s is what the lap
 * would have taken on the slower device less its measured length (its
 * compute times the slowdown, without the sleeps). */
double slowdown_end_lap(slowdown *s, double now, double waited_s,
                        double *correction_s);

/* Sleeps the debt owed so far in full: before every exchange. */
void slowdown_sync(slowdown *s, double waited_s);

/* Ends the pass begun by slowdown_begin (its debt already slept): what runs
 * until the next pass (the gradient reduction, the optimizer) is not
 * charged, as a device slower in its passes is emulated. */
void slowdown_end(slowdown *s);

#endif
