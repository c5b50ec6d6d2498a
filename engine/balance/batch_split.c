#include "engine/balance/batch_split.h"

#include <math.h>

int batch_split_rows(int batch, int world, const double *shares, int *rows)
{
    if (batch < world)
        return -1;
    double total = 0;
    for (int r = 0; r < world; r++)
        total += shares[r];
    /* One row each first, then the rest in proportion. */
    int rest = batch - world, given = 0;
    for (int r = 0; r < world; r++) {
        rows[r] = 1 + (int)floor(rest * shares[r] / total);
        given += rows[r];
    }
    while (given < batch) {
        int best = 0;
        double best_left = -1;
        for (int r = 0; r < world; r++) {
            double left = rest * shares[r] / total - (rows[r] - 1);
            if (left > best_left) {
                best_left = left;
                best = r;
            }
        }
        rows[best]++;
        given++;
    }
    return 0;
}
