/* Token embedding lookup. */
#include "kernels/cpu/cpu_ops.h"

#include <string.h>

void cpu_embedding_forward(void *vctx, float *out, const int *tokens,
                           const float *wte, int N, int C)
{
    cpu_context *ctx = vctx;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)N * C)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, wte + (size_t)tokens[n] * C,
               (size_t)C * sizeof *out);
}

void cpu_embedding_backward(void *vctx, float *dwte, const float *dout,
                            const int *tokens, int N, int C)
{
    cpu_context *ctx = vctx;
    /* Tokens repeat, so rows of dwte collect several rows of dout: split
     * by column and add the rows in order. */
    int blocks = (C + CPU_COLUMN_BLOCK - 1) / CPU_COLUMN_BLOCK;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)N * C)
    for (int blk = 0; blk < blocks; blk++) {
        int c0 = blk * CPU_COLUMN_BLOCK;
        int c1 = c0 + CPU_COLUMN_BLOCK < C ? c0 + CPU_COLUMN_BLOCK : C;
        for (int n = 0; n < N; n++) {
            float *dst = dwte + (size_t)tokens[n] * C;
            const float *src = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++)
                dst[c] += src[c];
        }
    }
}
