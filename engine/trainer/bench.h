/* `moectl bench`: training speed and memory against the BLAS limit and a
 * PyTorch peer measured in the same run. */
#ifndef MOECTL_ENGINE_BENCH_H
#define MOECTL_ENGINE_BENCH_H

#include "engine/config/config.h"

typedef struct bench_options {
    int warmup;          /* steps before measuring */
    int steps;           /* measured steps */
    const char *peer;    /* the PyTorch peer script, or NULL to skip it */
    const char *python;  /* interpreter for the peer */
    int scaling;         /* also the experts and seq_len scaling rows */
    int scaling_steps;
    int profile;         /* time per model part */
    int repeats;         /* interleaved rounds; the best of each is kept */
    int ranks;           /* also the 1, 2, 4 rank rows */
} bench_options;

/* Prints the benchmark to stdout; returns an exit status. */
int bench_run(const config *cfg, const bench_options *opt);

#endif
