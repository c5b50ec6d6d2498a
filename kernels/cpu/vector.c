/* Whole-buffer vector ops: residual adds and the gradient norm. */
#include "kernels/cpu/cpu_ops.h"

void cpu_add_inplace(void *vctx, float *out, const float *inp, size_t n)
{
    cpu_context *ctx = vctx;
    CPU_PARALLEL_FOR(ctx->threads, n)
    for (size_t i = 0; i < n; i++)
        out[i] += inp[i];
}

/* The buffer is cut into at most SUM_SQUARES_BLOCKS blocks whose size
 * depends only on n; blocks are summed in parallel and their sums added
 * in order, so the result does not depend on the thread count. */
#define SUM_SQUARES_BLOCKS 256
#define SUM_SQUARES_MIN_BLOCK 4096

static double sum_squares_block(const float *x, size_t n)
{
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++)
            acc[j] += (double)x[i + j] * x[i + j];
    for (; i < n; i++)
        acc[0] += (double)x[i] * x[i];
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

double cpu_sum_squares(void *vctx, const float *x, size_t n)
{
    cpu_context *ctx = vctx;
    size_t block = (n + SUM_SQUARES_BLOCKS - 1) / SUM_SQUARES_BLOCKS;
    if (block < SUM_SQUARES_MIN_BLOCK)
        block = SUM_SQUARES_MIN_BLOCK;
    int blocks = (int)((n + block - 1) / block);
    double partial[SUM_SQUARES_BLOCKS];
    CPU_PARALLEL_FOR(ctx->threads, n)
    for (int b = 0; b < blocks; b++) {
        size_t start = (size_t)b * block;
        size_t len = n - start < block ? n - start : block;
        partial[b] = sum_squares_block(x + start, len);
    }
    double total = 0.0;
    for (int b = 0; b < blocks; b++)
        total += partial[b];
    return total;
}
