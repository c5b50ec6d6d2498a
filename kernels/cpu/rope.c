/* Rotary position embedding on the q and k thirds of qkv, in place. The
 * angles come from one function evaluated in double, so the cached tables
 * and the uncached fallback agree bit for bit. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>
#include <stdlib.h>

static void rope_angle(int t, int i, int head_dim, float theta, float *c,
                       float *s)
{
    double inv_freq = pow((double)theta, -2.0 * i / head_dim);
    double angle = (double)t * inv_freq;
    *c = (float)cos(angle);
    *s = (float)sin(angle);
}

void cpu_rope_release(cpu_context *ctx)
{
    free(ctx->rope_cos);
    free(ctx->rope_sin);
    ctx->rope_cos = NULL;
    ctx->rope_sin = NULL;
    ctx->rope_T = 0;
    ctx->rope_head_dim = 0;
}

/* Makes the tables match (T, head_dim, theta); -1 when out of memory. */
static int rope_tables(cpu_context *ctx, int T, int head_dim, float theta)
{
    if (ctx->rope_cos && ctx->rope_T == T &&
        ctx->rope_head_dim == head_dim && ctx->rope_theta == theta)
        return 0;
    cpu_rope_release(ctx);
    int half = head_dim / 2;
    size_t n = (size_t)T * half;
    ctx->rope_cos = malloc(n * sizeof(float));
    ctx->rope_sin = malloc(n * sizeof(float));
    if (!ctx->rope_cos || !ctx->rope_sin) {
        cpu_rope_release(ctx);
        return -1;
    }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            size_t at = (size_t)t * half + i;
            rope_angle(t, i, head_dim, theta, &ctx->rope_cos[at],
                       &ctx->rope_sin[at]);
        }
    ctx->rope_T = T;
    ctx->rope_head_dim = head_dim;
    ctx->rope_theta = theta;
    return 0;
}

/* Rotates the pairs of one head by the angles whose cos/sin are given;
 * sign -1 rotates by the negative angle (the transpose). */
static void rope_rotate_head(float *x, const float *cos_t,
                             const float *sin_t, int half, float sign)
{
    for (int i = 0; i < half; i++) {
        float c = cos_t[i], s = sign * sin_t[i];
        float x0 = x[2 * i], x1 = x[2 * i + 1];
        x[2 * i] = x0 * c - x1 * s;
        x[2 * i + 1] = x0 * s + x1 * c;
    }
}

static void rope_apply(cpu_context *ctx, float *qkv, int B, int T, int C,
                       int n_heads, float theta, float sign)
{
    int head_dim = C / n_heads;
    int half = head_dim / 2;
    int rows = B * T;
    if (rows <= 0 || half <= 0)
        return;
    if (rope_tables(ctx, T, head_dim, theta) == 0) {
        const float *cos_tab = ctx->rope_cos, *sin_tab = ctx->rope_sin;
        CPU_PARALLEL_FOR(ctx->threads, (size_t)rows * 2 * C)
        for (int row = 0; row < rows; row++) {
            int t = row % T;
            float *x = qkv + (size_t)row * 3 * C;
            /* q heads then k heads: 2 * n_heads consecutive heads */
            for (int h = 0; h < 2 * n_heads; h++)
                rope_rotate_head(x + (size_t)h * head_dim,
                                 cos_tab + (size_t)t * half,
                                 sin_tab + (size_t)t * half, half, sign);
        }
        return;
    }
    /* Out of memory for the tables: evaluate each angle where it is used. */
    CPU_PARALLEL_FOR(ctx->threads, (size_t)rows * 2 * C)
    for (int row = 0; row < rows; row++) {
        int t = row % T;
        float *x = qkv + (size_t)row * 3 * C;
        for (int h = 0; h < 2 * n_heads; h++)
            for (int i = 0; i < half; i++) {
                float c, s;
                rope_angle(t, i, head_dim, theta, &c, &s);
                rope_rotate_head(x + (size_t)h * head_dim + 2 * i, &c, &s, 1,
                                 sign);
            }
    }
}

void cpu_rope_forward(void *ctx, float *qkv, int B, int T, int C,
                      int n_heads, float theta)
{
    rope_apply(ctx, qkv, B, T, C, n_heads, theta, 1.0f);
}

void cpu_rope_backward(void *ctx, float *dqkv, int B, int T, int C,
                       int n_heads, float theta)
{
    rope_apply(ctx, dqkv, B, T, C, n_heads, theta, -1.0f);
}
