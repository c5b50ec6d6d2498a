#include "engine/balance/batch_split.h"

#include <math.h>

int batch_split_rows(int batch, int world, const double *shares, int *rows)
{
    if (batch < world)
        return -1;
    double total = 0;
    for (int r = 0; r < world; r++)
        total += shares[r];
    /* Each rank's quota of the whole batch, floored but at least one row;
     * then the rows left go to the largest remainders, or the rows over
     * are taken from the ranks furthest above their quota that can spare
     * one. (Giving every rank its one row first and splitting the rest
     * would favour the slow ranks: 16 rows at 2.65:1 would be 11 + 5, not
     * 12 + 4.) */
    int given = 0;
    for (int r = 0; r < world; r++) {
        rows[r] = (int)floor(batch * shares[r] / total);
        if (rows[r] < 1)
            rows[r] = 1;
        given += rows[r];
    }
    while (given != batch) {
        int grow = given < batch, best = -1;
        double best_left = 0;
        for (int r = 0; r < world; r++) {
            double left = batch * shares[r] / total - rows[r]; /* > 0: owed */
            if (!grow && rows[r] <= 1)
                continue;
            if (best < 0 || (grow ? left > best_left : left < best_left)) {
                best_left = left;
                best = r;
            }
        }
        rows[best] += grow ? 1 : -1;
        given += grow ? 1 : -1;
    }
    return 0;
}

int batch_split_min_max(int batch, int world, const double *fixed_s,
                        const double *s_per_row, const int *most, int *rows)
{
    long room = 0;
    for (int r = 0; r < world; r++) {
        if (most[r] < 1)
            return -1;
        room += most[r];
    }
    if (batch < world || room < batch)
        return -1;
    /* Every rank its one row; then each next row to the rank that would
     * finish it first (the greedy is optimal for a maximum of increasing
     * affine times). */
    for (int r = 0; r < world; r++)
        rows[r] = 1;
    for (int given = world; given < batch; given++) {
        int best = -1;
        double best_s = 0;
        for (int r = 0; r < world; r++) {
            double s = (fixed_s ? fixed_s[r] : 0) +
                       (rows[r] + 1) * s_per_row[r];
            if (rows[r] < most[r] && (best < 0 || s < best_s)) {
                best = r;
                best_s = s;
            }
        }
        rows[best]++;
    }
    return 0;
}
