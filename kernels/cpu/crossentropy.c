/* Softmax cross-entropy fused with its gradient. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

void cpu_crossentropy_forward_backward(void *vctx, float *losses,
                                       float *dlogits, const float *logits,
                                       const int *targets, int N, int V,
                                       float dloss)
{
    cpu_context *ctx = vctx;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)N * V)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        int target = targets[n];
        /* Read before dlogits, which may alias logits, overwrites it. */
        float target_logit = x[target];
        float max_logit = -INFINITY;
        for (int v = 0; v < V; v++)
            if (x[v] > max_logit)
                max_logit = x[v];
        double sum = 0.0;
        for (int v = 0; v < V; v++)
            sum += expf(x[v] - max_logit);
        if (losses)
            losses[n] = (float)(log(sum) + max_logit - target_logit);
        if (dlogits) {
            float *dx = dlogits + (size_t)n * V;
            float inv_sum = (float)(1.0 / sum);
            for (int v = 0; v < V; v++) {
                float p = expf(x[v] - max_logit) * inv_sum;
                dx[v] = (p - (v == target ? 1.0f : 0.0f)) * dloss;
            }
        }
    }
}
