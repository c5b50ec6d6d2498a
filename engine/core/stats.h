/* Small statistics the engine measures by. */
#ifndef MOECTL_ENGINE_STATS_H
#define MOECTL_ENGINE_STATS_H

/* The median of n values (the mean of the middle two when n is even),
 * sorting them in place; NAN when n < 1. */
double stats_median(double *values, int n);

#endif
