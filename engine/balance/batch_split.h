/* How the global batch is split over the ranks: each rank trains its own
 * rows (sequences), in proportion to its share. The loss and gradients are
 * normalised over the global batch, so the split changes speed, not the
 * math. */
#ifndef MOECTL_ENGINE_BALANCE_BATCH_SPLIT_H
#define MOECTL_ENGINE_BALANCE_BATCH_SPLIT_H

/* rows (world) of `batch` sequences in proportion to shares (world, > 0):
 * each rank's quota of the batch floored (at least one row), then the
 * remainders, largest first (ties to the lower rank). Returns -1 when
 * batch < world. */
int batch_split_rows(int batch, int world, const double *shares, int *rows);

/* rows (world) of `batch` sequences that minimise the slowest rank's
 * fixed_s + rows · s_per_row (world; fixed_s NULL: none; s_per_row > 0:
 * seconds a row), each rank at least one row and at most most[r]. Returns
 * -1 when batch < world or the ranks' `most` cannot hold the batch. */
int batch_split_min_max(int batch, int world, const double *fixed_s,
                        const double *s_per_row, const int *most, int *rows);

#endif
