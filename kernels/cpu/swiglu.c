/* SwiGLU: out = silu(gate) * up, gate_up rows laid out [gate | up]. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

void cpu_swiglu_forward(void *vctx, float *out, const float *gate_up, int N,
                        int F)
{
    cpu_context *ctx = vctx;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)N * F)
    for (int n = 0; n < N; n++) {
        const float *gate = gate_up + (size_t)n * 2 * F;
        const float *up = gate + F;
        float *o = out + (size_t)n * F;
        for (int i = 0; i < F; i++) {
            float g = gate[i];
            float sig = 1.0f / (1.0f + expf(-g));
            o[i] = g * sig * up[i];
        }
    }
}

void cpu_swiglu_backward(void *vctx, float *dgate_up, const float *dout,
                         const float *gate_up, int N, int F)
{
    cpu_context *ctx = vctx;
    if (!dgate_up)
        return;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)N * F)
    for (int n = 0; n < N; n++) {
        const float *gate = gate_up + (size_t)n * 2 * F;
        const float *up = gate + F;
        float *dgate = dgate_up + (size_t)n * 2 * F;
        float *dup = dgate + F;
        const float *dy = dout + (size_t)n * F;
        for (int i = 0; i < F; i++) {
            float g = gate[i];
            float sig = 1.0f / (1.0f + expf(-g));
            /* silu'(g) = sig * (1 + g * (1 - sig)) */
            dgate[i] += dy[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
            dup[i] += dy[i] * g * sig;
        }
    }
}
