/* Softmax cross-entropy fused with its gradient. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

#include "kernels/cpu/cpu_math.h"

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
        /* exp(x - max) goes into the dlogits row (elementwise, so aliasing
         * is safe), or through a small buffer when there is none. */
        float *dx = dlogits ? dlogits + (size_t)n * V : NULL;
        float chunk[256];
        double sum = 0.0;
        for (int v0 = 0; v0 < V; v0 += 256) {
            int len = V - v0 < 256 ? V - v0 : 256;
            float *e = dx ? dx + v0 : chunk;
            cpu_exp_shifted(e, x + v0, max_logit, len);
            for (int v = 0; v < len; v++)
                sum += e[v];
        }
        if (losses)
            losses[n] = (float)(log(sum) + max_logit - target_logit);
        if (dx) {
            float scale = (float)(1.0 / sum) * dloss;
            for (int v = 0; v < V; v++)
                dx[v] *= scale;
            dx[target] -= dloss;
        }
    }
}
