/* SwiGLU: out = silu(gate) * up, gate_up rows laid out [gate | up]. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

#include "kernels/cpu/cpu_math.h"

/* Rows are processed in chunks so the sigmoids fit a stack buffer. */
#define SWIGLU_CHUNK 256

void cpu_swiglu_forward(void *vctx, float *out, const float *gate_up, int N,
                        int F)
{
    cpu_context *ctx = vctx;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)N * F)
    for (int n = 0; n < N; n++) {
        const float *gate = gate_up + (size_t)n * 2 * F;
        const float *up = gate + F;
        float *o = out + (size_t)n * F;
        float sig[SWIGLU_CHUNK];
        for (int i0 = 0; i0 < F; i0 += SWIGLU_CHUNK) {
            int len = F - i0 < SWIGLU_CHUNK ? F - i0 : SWIGLU_CHUNK;
            cpu_sigmoid(sig, gate + i0, len);
            for (int i = 0; i < len; i++)
                o[i0 + i] = gate[i0 + i] * sig[i] * up[i0 + i];
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
        float sig[SWIGLU_CHUNK];
        for (int i0 = 0; i0 < F; i0 += SWIGLU_CHUNK) {
            int len = F - i0 < SWIGLU_CHUNK ? F - i0 : SWIGLU_CHUNK;
            cpu_sigmoid(sig, gate + i0, len);
            for (int j = 0; j < len; j++) {
                int i = i0 + j;
                float g = gate[i], s = sig[j];
                /* silu'(g) = sig * (1 + g * (1 - sig)) */
                dgate[i] = dy[i] * up[i] * s * (1.0f + g * (1.0f - s));
                dup[i] = dy[i] * g * s;
            }
        }
    }
}
