/* RMSNorm: out = inp * rstd * weight, rstd = 1/sqrt(mean(inp²) + eps). */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

void cpu_rmsnorm_forward(void *vctx, float *out, float *rstd,
                         const float *inp, const float *weight, int N, int C,
                         float eps)
{
    cpu_context *ctx = vctx;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)N * C)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float r = 1.0f / sqrtf(cpu_dot(x, x, C) / (float)C + eps);
        for (int c = 0; c < C; c++)
            o[c] = x[c] * r * weight[c];
        if (rstd)
            rstd[n] = r;
    }
}

void cpu_rmsnorm_backward(void *vctx, float *dinp, float *dweight,
                          const float *dout, const float *inp,
                          const float *weight, const float *rstd, int N,
                          int C)
{
    cpu_context *ctx = vctx;
    /* dx_c = r (dy_c w_c - x_c r² Σ_j dy_j w_j x_j / C) */
    if (dinp) {
        CPU_PARALLEL_FOR(ctx->threads, (size_t)N * C)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            const float *dy = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            float r = rstd[n];
            float dot = 0.0f;
            for (int c = 0; c < C; c++)
                dot += dy[c] * weight[c] * x[c];
            float coef = r * r * dot / (float)C;
            for (int c = 0; c < C; c++)
                dx[c] += r * (dy[c] * weight[c] - x[c] * coef);
        }
    }
    /* dw_c += Σ_n dy_c x_c r: by column block, rows in order. */
    if (dweight) {
        int blocks = (C + CPU_COLUMN_BLOCK - 1) / CPU_COLUMN_BLOCK;
        CPU_PARALLEL_FOR(ctx->threads, (size_t)N * C)
        for (int blk = 0; blk < blocks; blk++) {
            int c0 = blk * CPU_COLUMN_BLOCK;
            int c1 = c0 + CPU_COLUMN_BLOCK < C ? c0 + CPU_COLUMN_BLOCK : C;
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * C;
                const float *dy = dout + (size_t)n * C;
                float r = rstd[n];
                for (int c = c0; c < c1; c++)
                    dweight[c] += dy[c] * x[c] * r;
            }
        }
    }
}
