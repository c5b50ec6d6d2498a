/* How the global batch is split over the ranks: each rank trains its own
 * rows (sequences), in proportion to its share. The loss and gradients are
 * normalised over the global batch, so the split changes speed, not the
 * math. */
#ifndef MOECTL_ENGINE_BALANCE_BATCH_SPLIT_H
#define MOECTL_ENGINE_BALANCE_BATCH_SPLIT_H

/* rows (world) of `batch` sequences in proportion to shares (world, > 0):
 * floors first, then the remainders, largest first (ties to the lower
 * rank), with at least one row a rank. Returns -1 when batch < world. */
int batch_split_rows(int batch, int world, const double *shares, int *rows);

#endif
