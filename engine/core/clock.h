/* The one clock: monotonic time, for durations and deadlines. Wall-clock
 * time (record timestamps) is taken with clock_gettime(CLOCK_REALTIME) at
 * the one place that writes records. */
#ifndef MOECTL_ENGINE_CLOCK_H
#define MOECTL_ENGINE_CLOCK_H

#include <time.h>

static inline double clock_monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline long long clock_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
