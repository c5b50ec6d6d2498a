/* A byte dataset: any file is a corpus. The last val_fraction of the bytes
 * is held out for validation; training windows are drawn at random
 * positions from the rest, validation windows at fixed positions so that
 * successive validation losses compare like with like. */
#ifndef MOECTL_ENGINE_DATA_H
#define MOECTL_ENGINE_DATA_H

#include <stddef.h>

#include "engine/core/error.h"
#include "engine/core/rng.h"

typedef struct dataset {
    unsigned char *bytes;
    size_t size;
    size_t train_size; /* training bytes are [0, train_size) */
    int T;             /* window length (targets shift by one) */
} dataset;

int dataset_load(dataset *ds, const char *path, double val_fraction, int T,
                 moe_error *err);
void dataset_finish(dataset *ds);

/* B random training windows: inputs and targets (B, T). */
void dataset_train_batch(const dataset *ds, rng *r, int B, int *inputs,
                         int *targets);

/* Validation batch `index` of `count`: B windows spread evenly over the
 * held-out bytes. */
void dataset_val_batch(const dataset *ds, int index, int count, int B,
                       int *inputs, int *targets);

#endif
