/* MoE dispatch: gather token rows into the expert-sorted slot buffer and
 * combine expert outputs back per token, weighted by the gates. A slot of
 * -1 in slot_of is an assignment dropped by the capacity limit; a token of
 * -1 in token_of_slot is a padding slot (its row is zero and gets no
 * gradient). */
#include "kernels/cpu/cpu_ops.h"

#include <string.h>

void cpu_moe_permute(void *vctx, float *out, const float *inp,
                     const int *token_of_slot, int S, int C)
{
    cpu_context *ctx = vctx;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)S * C)
    for (int s = 0; s < S; s++) {
        int token = token_of_slot[s];
        float *dst = out + (size_t)s * C;
        if (token < 0)
            memset(dst, 0, (size_t)C * sizeof *dst);
        else
            memcpy(dst, inp + (size_t)token * C, (size_t)C * sizeof *dst);
    }
}

void cpu_moe_permute_backward(void *vctx, float *dinp, const float *dout,
                              const int *token_of_slot, int S, int C)
{
    cpu_context *ctx = vctx;
    if (!dinp)
        return;
    /* A token owns up to K slots: split by column, add slots in order. */
    int blocks = (C + CPU_COLUMN_BLOCK - 1) / CPU_COLUMN_BLOCK;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)S * C)
    for (int blk = 0; blk < blocks; blk++) {
        int c0 = blk * CPU_COLUMN_BLOCK;
        int c1 = c0 + CPU_COLUMN_BLOCK < C ? c0 + CPU_COLUMN_BLOCK : C;
        for (int s = 0; s < S; s++) {
            int token = token_of_slot[s];
            if (token < 0)
                continue;
            float *dst = dinp + (size_t)token * C;
            const float *src = dout + (size_t)s * C;
            for (int c = c0; c < c1; c++)
                dst[c] += src[c];
        }
    }
}

void cpu_moe_unpermute(void *vctx, float *out, const float *expert_out,
                       const int *slot_of, const float *gate_weight, int N,
                       int K, int C)
{
    cpu_context *ctx = vctx;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)N * K * C)
    for (int t = 0; t < N; t++) {
        float *o = out + (size_t)t * C;
        for (int k = 0; k < K; k++) {
            int slot = slot_of[(size_t)t * K + k];
            if (slot < 0)
                continue;
            cpu_axpy(o, gate_weight[(size_t)t * K + k],
                     expert_out + (size_t)slot * C, C);
        }
    }
}

/* Every slot belongs to one assignment, so rows of dexpert_out are
 * written by one token each and tokens run in parallel. dgate_weight is
 * set, not added to. */
void cpu_moe_unpermute_backward(void *vctx, float *dexpert_out,
                                float *dgate_weight, const float *dout,
                                const float *expert_out, const int *slot_of,
                                const float *gate_weight, int N, int K,
                                int C)
{
    cpu_context *ctx = vctx;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)N * K * C)
    for (int t = 0; t < N; t++) {
        const float *dy = dout + (size_t)t * C;
        for (int k = 0; k < K; k++) {
            size_t a = (size_t)t * K + k;
            int slot = slot_of[a];
            if (slot < 0) {
                if (dgate_weight)
                    dgate_weight[a] = 0.0f;
                continue;
            }
            if (dexpert_out)
                cpu_axpy(dexpert_out + (size_t)slot * C, gate_weight[a], dy,
                         C);
            if (dgate_weight)
                dgate_weight[a] =
                    cpu_dot(dy, expert_out + (size_t)slot * C, C);
        }
    }
}
