/* Causal multi-head attention that materialises the probabilities
 * (B, n_heads, T, T), as GEMMs: each (batch, head) pair is a handful of
 * single-threaded BLAS products, and the pairs run in parallel. Each pair
 * writes only its own rows of probs and its own head's columns of out and
 * dqkv, so nothing is shared. The loop version this replaced is kept in
 * tests/bench/kernel_lab.c as the reference. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_math.h"

#if HAVE_OPENMP
#include <omp.h>
#endif

/* Rows of the causal score matrix are computed in blocks: block i needs
 * only the keys up to its last row, which skips most of the masked half. */
#define ATTENTION_ROW_BLOCK 64

void cpu_attention_forward(void *vctx, float *out, float *probs,
                           const float *qkv, int B, int T, int C,
                           int n_heads)
{
    cpu_context *ctx = vctx;
    int head_dim = C / n_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    int stride = 3 * C; /* qkv row */
    cpu_blas_serial_begin();
    CPU_PARALLEL_FOR(ctx->threads, (size_t)B * n_heads * T * T * head_dim)
    for (int bh = 0; bh < B * n_heads; bh++) {
        int b = bh / n_heads, h = bh % n_heads;
        const float *q = qkv + (size_t)b * T * stride + h * head_dim;
        const float *k = q + C;
        const float *v = q + 2 * C;
        float *P = probs + (size_t)bh * T * T;
        float *o = out + (size_t)b * T * C + h * head_dim;

        /* S = scale · Q Kᵀ, by row blocks, columns up to the block's end. */
        for (int r0 = 0; r0 < T; r0 += ATTENTION_ROW_BLOCK) {
            int rows = T - r0 < ATTENTION_ROW_BLOCK ? T - r0
                                                    : ATTENTION_ROW_BLOCK;
            cpu_sgemm_serial(0, 1, rows, r0 + rows, head_dim, scale,
                             q + (size_t)r0 * stride, stride, k, stride, 0.0f,
                             P + (size_t)r0 * T, T);
        }
        for (int t = 0; t < T; t++) {
            float *p = P + (size_t)t * T;
            float max_score = p[0];
            for (int j = 1; j <= t; j++)
                max_score = p[j] > max_score ? p[j] : max_score;
            cpu_exp_shifted(p, p, max_score, t + 1);
            float sum = 0.0f;
            for (int j = 0; j <= t; j++)
                sum += p[j];
            float inv_sum = 1.0f / sum;
            for (int j = 0; j <= t; j++)
                p[j] *= inv_sum;
            memset(p + t + 1, 0, (size_t)(T - t - 1) * sizeof *p);
        }
        /* O = P V; the zeros above the diagonal contribute nothing. */
        for (int r0 = 0; r0 < T; r0 += ATTENTION_ROW_BLOCK) {
            int rows = T - r0 < ATTENTION_ROW_BLOCK ? T - r0
                                                    : ATTENTION_ROW_BLOCK;
            cpu_sgemm_serial(0, 0, rows, head_dim, r0 + rows, 1.0f,
                             P + (size_t)r0 * T, T, v, stride, 0.0f,
                             o + (size_t)r0 * C, C);
        }
    }
}

static float *scratch_for(cpu_context *ctx, size_t per_thread)
{
    size_t floats = per_thread * (size_t)ctx->threads;
    if (ctx->attention_scratch_floats < floats) {
        free(ctx->attention_scratch);
        ctx->attention_scratch = malloc(floats * sizeof(float));
        ctx->attention_scratch_floats = ctx->attention_scratch ? floats : 0;
    }
    return ctx->attention_scratch;
}

/* The row-wise softmax backward of one pair, on one thread's dP buffer:
 *   dV += Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale,
 *   dQ += dS K, dK += dSᵀ Q. */
static void attention_backward_pair(float *dP, float *dq, float *dk,
                                    float *dv, const float *dO,
                                    const float *q, const float *k,
                                    const float *v, const float *P, int T,
                                    int C, int head_dim, float scale)
{
    int stride = 3 * C;
    /* Products over the causal triangle go by blocks: a row block needs
     * keys up to its end, a key block needs rows from its start. */
    for (int c0 = 0; c0 < T; c0 += ATTENTION_ROW_BLOCK) {
        int cols = T - c0 < ATTENTION_ROW_BLOCK ? T - c0 : ATTENTION_ROW_BLOCK;
        cpu_sgemm_serial(1, 0, cols, head_dim, T - c0, 1.0f,
                         P + (size_t)c0 * T + c0, T, dO + (size_t)c0 * C, C,
                         1.0f, dv + (size_t)c0 * stride, stride);
    }
    for (int r0 = 0; r0 < T; r0 += ATTENTION_ROW_BLOCK) {
        int rows = T - r0 < ATTENTION_ROW_BLOCK ? T - r0 : ATTENTION_ROW_BLOCK;
        cpu_sgemm_serial(0, 1, rows, r0 + rows, head_dim, 1.0f,
                         dO + (size_t)r0 * C, C, v, stride, 0.0f,
                         dP + (size_t)r0 * T, T);
    }
    for (int t = 0; t < T; t++) {
        const float *p = P + (size_t)t * T;
        float *ds = dP + (size_t)t * T;
        float p_dot_dp = 0.0f;
        for (int j = 0; j <= t; j++)
            p_dot_dp += p[j] * ds[j];
        for (int j = 0; j <= t; j++)
            ds[j] = p[j] * (ds[j] - p_dot_dp) * scale;
        /* Zero to the end of the row's block: the blocked products below
         * read that far. */
        int block_end = (t / ATTENTION_ROW_BLOCK + 1) * ATTENTION_ROW_BLOCK;
        block_end = block_end < T ? block_end : T;
        memset(ds + t + 1, 0, (size_t)(block_end - t - 1) * sizeof *ds);
    }
    for (int r0 = 0; r0 < T; r0 += ATTENTION_ROW_BLOCK) {
        int rows = T - r0 < ATTENTION_ROW_BLOCK ? T - r0 : ATTENTION_ROW_BLOCK;
        cpu_sgemm_serial(0, 0, rows, head_dim, r0 + rows, 1.0f,
                         dP + (size_t)r0 * T, T, k, stride, 1.0f,
                         dq + (size_t)r0 * stride, stride);
    }
    for (int c0 = 0; c0 < T; c0 += ATTENTION_ROW_BLOCK) {
        int cols = T - c0 < ATTENTION_ROW_BLOCK ? T - c0 : ATTENTION_ROW_BLOCK;
        cpu_sgemm_serial(1, 0, cols, head_dim, T - c0, 1.0f,
                         dP + (size_t)c0 * T + c0, T, q + (size_t)c0 * stride,
                         stride, 1.0f, dk + (size_t)c0 * stride, stride);
    }
}

void cpu_attention_backward(void *vctx, float *dqkv, const float *dout,
                            const float *qkv, const float *probs, int B,
                            int T, int C, int n_heads)
{
    cpu_context *ctx = vctx;
    int head_dim = C / n_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    size_t stride = (size_t)3 * C;
    float *scratch = scratch_for(ctx, (size_t)T * T);
    if (!scratch) {
        /* Out of memory for dP: one pair at a time with a local buffer. */
        scratch = malloc((size_t)T * T * sizeof(float));
        if (!scratch)
            abort();
        cpu_blas_serial_begin();
        for (int bh = 0; bh < B * n_heads; bh++) {
            int b = bh / n_heads, h = bh % n_heads;
            size_t head = (size_t)b * T * stride + (size_t)h * head_dim;
            attention_backward_pair(
                scratch, dqkv + head, dqkv + head + C, dqkv + head + 2 * C,
                dout + (size_t)b * T * C + h * head_dim, qkv + head,
                qkv + head + C, qkv + head + 2 * C,
                probs + (size_t)bh * T * T, T, C, head_dim, scale);
        }
        free(scratch);
        return;
    }
    cpu_blas_serial_begin();
    CPU_PARALLEL_FOR(ctx->threads, (size_t)B * n_heads * T * T * head_dim)
    for (int bh = 0; bh < B * n_heads; bh++) {
#if HAVE_OPENMP
        int thread = omp_get_thread_num();
#else
        int thread = 0;
#endif
        int b = bh / n_heads, h = bh % n_heads;
        size_t head = (size_t)b * T * stride + (size_t)h * head_dim;
        attention_backward_pair(
            scratch + (size_t)thread * T * T, dqkv + head, dqkv + head + C,
            dqkv + head + 2 * C, dout + (size_t)b * T * C + h * head_dim,
            qkv + head, qkv + head + C, qkv + head + 2 * C,
            probs + (size_t)bh * T * T, T, C, head_dim, scale);
    }
}
