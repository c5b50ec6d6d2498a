/* MoE router: softmax over experts, top-k by (prob + bias), gate weights
 * renormalised from the unbiased probabilities. */
#include "kernels/cpu/cpu_ops.h"

#include "kernels/cpu/cpu_math.h"
#include "kernels/topk.h"

#include <math.h>

void cpu_router_forward(void *vctx, float *probs, float *lse,
                        int *expert_index, float *gate_weight,
                        const float *logits, const float *bias, int N, int E,
                        int K)
{
    cpu_context *ctx = vctx;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)N * E * (K > 4 ? K : 4))
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * E;
        float *p = probs + (size_t)n * E;
        int *index = expert_index + (size_t)n * K;
        float *gate = gate_weight + (size_t)n * K;

        float max_logit = -INFINITY;
        for (int e = 0; e < E; e++)
            if (x[e] > max_logit)
                max_logit = x[e];
        cpu_exp_shifted(p, x, max_logit, E);
        double sum = 0.0;
        for (int e = 0; e < E; e++)
            sum += p[e];
        float inv_sum = (float)(1.0 / sum);
        for (int e = 0; e < E; e++)
            p[e] *= inv_sum;
        if (lse)
            lse[n] = max_logit + (float)log(sum);

        topk_select(index, p, bias, NULL, E, K);
        float chosen = 0.0f;
        for (int k = 0; k < K; k++)
            chosen += p[index[k]];
        for (int k = 0; k < K; k++)
            gate[k] = p[index[k]] / chosen;
    }
}

/* With s = Σ_k p[i_k] and g_k = p[i_k] / s, the gates pass back
 *   dp[i_k] = (dg_k − Σ_m dg_m g_m) / s,
 * added to dprobs; then the softmax backward
 *   dlogit_e += p_e (dp_e − Σ_j p_j dp_j).
 * The two sources of dp are applied as separate terms so no (E) scratch
 * row is needed. */
void cpu_router_backward(void *vctx, float *dlogits,
                         const float *dgate_weight, const float *dprobs,
                         const float *probs, const int *expert_index,
                         const float *gate_weight, int N, int E, int K)
{
    cpu_context *ctx = vctx;
    if (!dlogits)
        return;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)N * E)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * E;
        const int *index = expert_index + (size_t)n * K;
        const float *gate = gate_weight + (size_t)n * K;
        float *dx = dlogits + (size_t)n * E;

        float chosen = 0.0f, dg_dot_g = 0.0f;
        for (int k = 0; k < K; k++)
            chosen += p[index[k]];
        if (dgate_weight)
            for (int k = 0; k < K; k++)
                dg_dot_g += dgate_weight[(size_t)n * K + k] * gate[k];

        /* Σ_j p_j dp_j over both sources */
        float p_dot_dp = 0.0f;
        if (dprobs)
            p_dot_dp = cpu_dot(p, dprobs + (size_t)n * E, E);
        if (dgate_weight)
            for (int k = 0; k < K; k++) {
                float dg = dgate_weight[(size_t)n * K + k];
                p_dot_dp += p[index[k]] * ((dg - dg_dot_g) / chosen);
            }

        if (dprobs) {
            const float *dp = dprobs + (size_t)n * E;
            for (int e = 0; e < E; e++)
                dx[e] += p[e] * (dp[e] - p_dot_dp);
        } else {
            for (int e = 0; e < E; e++)
                dx[e] -= p[e] * p_dot_dp;
        }
        if (dgate_weight)
            for (int k = 0; k < K; k++) {
                float dg = dgate_weight[(size_t)n * K + k];
                dx[index[k]] += p[index[k]] * ((dg - dg_dot_g) / chosen);
            }
    }
}
