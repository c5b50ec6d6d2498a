/* AdamW with bias correction and decoupled weight decay. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

void cpu_adamw_update(void *vctx, float *param, const float *grad, float *m,
                      float *v, size_t n, float lr, float beta1, float beta2,
                      float eps, float weight_decay, float grad_scale, int t)
{
    cpu_context *ctx = vctx;
    float bias_correction1 = (float)(1.0 - pow(beta1, t));
    float bias_correction2 = (float)(1.0 - pow(beta2, t));
    CPU_PARALLEL_FOR(ctx->threads, n)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float m_hat = mi / bias_correction1;
        float v_hat = vi / bias_correction2;
        param[i] -= lr * (m_hat / (sqrtf(v_hat) + eps) +
                          weight_decay * param[i]);
    }
}
