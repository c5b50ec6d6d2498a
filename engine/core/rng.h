/* Deterministic random numbers: xoshiro256** seeded through splitmix64.
 * Every random choice of a run (initialisation, data order) draws from a
 * stream derived from train.seed, so a seed fixes the whole run. */
#ifndef MOECTL_ENGINE_RNG_H
#define MOECTL_ENGINE_RNG_H

#include <stdint.h>

typedef struct rng {
    uint64_t s[4];
} rng;

/* Seeds stream `stream` of `seed`: different streams are independent. */
void rng_seed(rng *r, uint64_t seed, uint64_t stream);
uint64_t rng_next(rng *r);
/* Uniform in [0, n) without modulo bias; n > 0. */
uint64_t rng_below(rng *r, uint64_t n);
/* Uniform in [0, 1). */
double rng_uniform(rng *r);
/* Standard normal (Box-Muller). */
double rng_normal(rng *r);

#endif
