/* Causal multi-head attention that materialises the probabilities
 * (B, n_heads, T, T). One (batch, head) pair per loop iteration: each
 * writes only its own rows of probs and its own head's columns of out and
 * dqkv, so the pairs run in parallel without sharing anything. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

void cpu_attention_forward(void *vctx, float *out, float *probs,
                           const float *qkv, int B, int T, int C,
                           int n_heads)
{
    cpu_context *ctx = vctx;
    int head_dim = C / n_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    size_t stride = (size_t)3 * C; /* qkv row */
    CPU_PARALLEL_FOR(ctx->threads, (size_t)B * n_heads * T * T * head_dim)
    for (int bh = 0; bh < B * n_heads; bh++) {
        int b = bh / n_heads, h = bh % n_heads;
        const float *q_base = qkv + (size_t)b * T * stride + h * head_dim;
        const float *k_base = q_base + C;
        const float *v_base = q_base + 2 * C;
        float *P = probs + (size_t)bh * T * T;
        for (int t = 0; t < T; t++) {
            const float *q = q_base + t * stride;
            float *p = P + (size_t)t * T;
            float max_score = -INFINITY;
            for (int j = 0; j <= t; j++) {
                float score = cpu_dot(q, k_base + j * stride, head_dim) * scale;
                p[j] = score;
                if (score > max_score)
                    max_score = score;
            }
            float sum = 0.0f;
            for (int j = 0; j <= t; j++) {
                p[j] = expf(p[j] - max_score);
                sum += p[j];
            }
            float inv_sum = 1.0f / sum;
            for (int j = 0; j <= t; j++)
                p[j] *= inv_sum;
            for (int j = t + 1; j < T; j++)
                p[j] = 0.0f;

            float *o = out + ((size_t)b * T + t) * C + h * head_dim;
            for (int i = 0; i < head_dim; i++)
                o[i] = 0.0f;
            for (int j = 0; j <= t; j++)
                cpu_axpy(o, p[j], v_base + j * stride, head_dim);
        }
    }
}

/* With P the probabilities and dO the output gradient:
 *   dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)),
 *   dQ = dS·K·scale, dK = dSᵀ·Q·scale.
 * rowsum(dP ⊙ P) is computed in a first pass over the row so no scratch
 * row of dP is needed. */
void cpu_attention_backward(void *vctx, float *dqkv, const float *dout,
                            const float *qkv, const float *probs, int B,
                            int T, int C, int n_heads)
{
    cpu_context *ctx = vctx;
    int head_dim = C / n_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    size_t stride = (size_t)3 * C;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)B * n_heads * T * T * head_dim)
    for (int bh = 0; bh < B * n_heads; bh++) {
        int b = bh / n_heads, h = bh % n_heads;
        size_t head = (size_t)b * T * stride + h * head_dim;
        const float *q_base = qkv + head;
        const float *k_base = q_base + C;
        const float *v_base = q_base + 2 * C;
        float *dq_base = dqkv + head;
        float *dk_base = dq_base + C;
        float *dv_base = dq_base + 2 * C;
        const float *P = probs + (size_t)bh * T * T;
        for (int t = 0; t < T; t++) {
            const float *q = q_base + t * stride;
            const float *p = P + (size_t)t * T;
            const float *dO = dout + ((size_t)b * T + t) * C + h * head_dim;
            float *dq = dq_base + t * stride;

            float p_dot_dp = 0.0f;
            for (int j = 0; j <= t; j++)
                p_dot_dp += p[j] * cpu_dot(dO, v_base + j * stride, head_dim);

            for (int j = 0; j <= t; j++) {
                size_t row_j = j * stride;
                float dp = cpu_dot(dO, v_base + row_j, head_dim);
                float ds = p[j] * (dp - p_dot_dp) * scale;
                cpu_axpy(dq, ds, k_base + row_j, head_dim);
                cpu_axpy(dk_base + row_j, ds, q, head_dim);
                cpu_axpy(dv_base + row_j, p[j], dO, head_dim);
            }
        }
    }
}
