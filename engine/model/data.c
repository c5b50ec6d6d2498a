#include "engine/model/data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dataset_load(dataset *ds, const char *path, double val_fraction, int T,
                 moe_error *err)
{
    memset(ds, 0, sizeof *ds);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT)
            return error_set(err, "%s: no such file (scripts/setup.sh "
                                  "extracts the default KJV corpus there; "
                                  "run it from the repository root)", path);
        return error_set_errno(err, "cannot open %s", path);
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return error_set_errno(err, "cannot seek in %s", path);
    }
    long size = ftell(f);
    rewind(f);
    if (size < 0) {
        fclose(f);
        return error_set_errno(err, "cannot size %s", path);
    }
    ds->bytes = malloc(size > 0 ? (size_t)size : 1);
    if (!ds->bytes) {
        fclose(f);
        return error_set(err, "out of memory reading %s (%ld bytes)", path,
                         size);
    }
    size_t got = fread(ds->bytes, 1, (size_t)size, f);
    int read_error = ferror(f);
    fclose(f);
    if (read_error || got != (size_t)size) {
        dataset_finish(ds);
        return error_set(err, "cannot read %s", path);
    }
    ds->size = (size_t)size;
    ds->T = T;
    ds->train_size = (size_t)((double)ds->size * (1.0 - val_fraction));
    size_t val_size = ds->size - ds->train_size;
    if (ds->train_size < (size_t)T + 2 || val_size < (size_t)T + 2) {
        dataset_finish(ds);
        return error_set(err, "%s: %zu bytes is too small for seq_len %d with "
                              "val_fraction %g (each split needs seq_len + 2)",
                         path, (size_t)size, T, val_fraction);
    }
    return 0;
}

void dataset_finish(dataset *ds)
{
    free(ds->bytes);
    ds->bytes = NULL;
    ds->size = 0;
}

static void copy_window(const dataset *ds, size_t start, int *inputs,
                        int *targets)
{
    for (int t = 0; t < ds->T; t++) {
        inputs[t] = ds->bytes[start + (size_t)t];
        targets[t] = ds->bytes[start + (size_t)t + 1];
    }
}

void dataset_train_batch(const dataset *ds, rng *r, int B, int *inputs,
                         int *targets)
{
    size_t starts = ds->train_size - (size_t)ds->T - 1;
    for (int b = 0; b < B; b++) {
        size_t start = (size_t)rng_below(r, starts);
        copy_window(ds, start, inputs + (size_t)b * ds->T,
                    targets + (size_t)b * ds->T);
    }
}

void dataset_val_batch(const dataset *ds, int index, int count, int B,
                       int *inputs, int *targets)
{
    size_t span = ds->size - ds->train_size - (size_t)ds->T - 1;
    size_t windows = (size_t)count * B;
    for (int b = 0; b < B; b++) {
        size_t w = (size_t)index * B + b;
        size_t start = ds->train_size + (size_t)((double)span * w / windows);
        copy_window(ds, start, inputs + (size_t)b * ds->T,
                    targets + (size_t)b * ds->T);
    }
}
