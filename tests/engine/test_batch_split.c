/* How the global batch is split over ranks (batch_split_rows): every row
 * given once, at least one a rank, each rank within one row of its quota,
 * and no bias towards the slow ranks. Random shares from a seeded RNG. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/balance/batch_split.h"
#include "engine/core/rng.h"

#include "tests/expect.h"

static void check(int batch, int world, const double *shares)
{
    int rows[64];
    EXPECT(batch_split_rows(batch, world, shares, rows) == 0,
           "batch %d over %d ranks refused", batch, world);
    double total = 0;
    int sum = 0, lifted = 0;
    for (int r = 0; r < world; r++)
        total += shares[r];
    for (int r = 0; r < world; r++)
        lifted += batch * shares[r] / total < 1;
    for (int r = 0; r < world; r++) {
        double quota = batch * shares[r] / total;
        sum += rows[r];
        EXPECT(rows[r] >= 1, "rank %d of %d gets %d rows", r, world, rows[r]);
        /* Never a row above the quota rounded up; within one row of it
         * unless ranks lifted to their one row took rows elsewhere. */
        EXPECT(rows[r] <= (quota < 1 ? 1 : ceil(quota)),
               "batch %d: rank %d gets %d rows for a quota of %.3f", batch,
               r, rows[r], quota);
        EXPECT(lifted || fabs(rows[r] - quota) < 1.0,
               "batch %d: rank %d gets %d rows for a quota of %.3f", batch,
               r, rows[r], quota);
    }
    EXPECT(sum == batch, "batch %d split into %d rows", batch, sum);
}

/* The slowest of fixed + rows · s_per_row. */
static double slowest(int world, const int *rows, const double *fixed,
                      const double *s_per_row)
{
    double t = 0;
    for (int r = 0; r < world; r++)
        t = fmax(t, fixed[r] + rows[r] * s_per_row[r]);
    return t;
}

/* batch_split_min_max against every split of a small batch over 3 ranks
 * within the caps, for affine times. */
static void check_min_max(int batch, const double *fixed,
                          const double *s_per_row, const int *most)
{
    int rows[3], best_rows[3] = {0};
    double best = INFINITY;
    for (int a = 1; a <= most[0]; a++)
        for (int b = 1; b <= most[1]; b++) {
            int c = batch - a - b;
            if (c < 1 || c > most[2])
                continue;
            int split[3] = {a, b, c};
            double t = slowest(3, split, fixed, s_per_row);
            if (t < best) {
                best = t;
                memcpy(best_rows, split, sizeof split);
            }
        }
    int status = batch_split_min_max(batch, 3, fixed, s_per_row, most, rows);
    if (!isfinite(best)) {
        EXPECT(status < 0, "batch %d past the caps accepted", batch);
        return;
    }
    EXPECT(status == 0 && rows[0] + rows[1] + rows[2] == batch &&
               rows[0] <= most[0] && rows[1] <= most[1] &&
               rows[2] <= most[2] &&
               fabs(slowest(3, rows, fixed, s_per_row) - best) <= 1e-12 * best,
           "batch %d: %d %d %d (%.6g s), best %d %d %d (%.6g s)", batch,
           rows[0], rows[1], rows[2], slowest(3, rows, fixed, s_per_row),
           best_rows[0], best_rows[1], best_rows[2], best);
}

int main(void)
{
    int rows[4];
    /* 16 rows at 2.65 : 1 is 11.6 + 4.4: 12 + 4. */
    double skew[2] = {2.65, 1.0};
    batch_split_rows(16, 2, skew, rows);
    EXPECT(rows[0] == 12 && rows[1] == 4, "2.65:1 of 16: %d + %d", rows[0],
           rows[1]);
    double even[3] = {1, 1, 1};
    batch_split_rows(16, 3, even, rows);
    EXPECT(rows[0] == 6 && rows[1] == 5 && rows[2] == 5,
           "16 over 3 alike: %d %d %d (ties to the lower rank)", rows[0],
           rows[1], rows[2]);
    /* A rank whose quota rounds to nothing still trains a row; the one it
     * gets is taken from the rank furthest above its quota. */
    double tiny[3] = {100, 100, 1};
    batch_split_rows(8, 3, tiny, rows);
    EXPECT(rows[0] + rows[1] == 7 && rows[2] == 1, "8 at 100:100:1: %d %d %d",
           rows[0], rows[1], rows[2]);
    EXPECT(batch_split_rows(3, 4, even, rows) == -1,
           "3 rows over 4 ranks accepted");

    /* Min-max: 16 rows at 1 : 3.65 s a row is 13 + 3 (13 s), not the
     * quota's 12 + 4 (14.6 s). */
    double per_row[2] = {1.0, 3.65};
    int most[3] = {100, 100, 100};
    EXPECT(batch_split_min_max(16, 2, NULL, per_row, most, rows) == 0 &&
               rows[0] == 13 && rows[1] == 3,
           "min-max 1:3.65 of 16: %d + %d", rows[0], rows[1]);
    most[0] = 10;
    EXPECT(batch_split_min_max(16, 2, NULL, per_row, most, rows) == 0 &&
               rows[0] == 10 && rows[1] == 6,
           "rank 0 capped at 10: %d + %d", rows[0], rows[1]);
    most[1] = 5;
    EXPECT(batch_split_min_max(16, 2, NULL, per_row, most, rows) < 0,
           "16 rows into room for 15 accepted");

    rng r;
    rng_seed(&r, 14, 0);
    for (int i = 0; i < 500; i++) {
        double s3[3], f3[3];
        int cap[3];
        for (int k = 0; k < 3; k++) {
            s3[k] = 0.1 + 5 * rng_uniform(&r);
            f3[k] = i % 2 ? 20 * rng_uniform(&r) : 0; /* affine, linear */
            cap[k] = 1 + (int)(rng_uniform(&r) * 12);
        }
        check_min_max(3 + (int)(rng_uniform(&r) * 25), f3, s3, cap);
    }
    double shares[64];
    for (int i = 0; i < 2000; i++) {
        int world = 1 + (int)(rng_uniform(&r) * 63.999);
        int batch = world + (int)(rng_uniform(&r) * 500);
        for (int k = 0; k < world; k++)
            shares[k] = 0.01 + 10 * rng_uniform(&r) * rng_uniform(&r);
        check(batch, world, shares);
    }
    printf("%s\n", failures ? "FAIL" : "ok");
    return failures != 0;
}
