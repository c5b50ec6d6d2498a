#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_ops.h"

/* 64-byte aligned, as the vector loops like it. */
static void *cpu_alloc(void *ctx, size_t bytes)
{
    (void)ctx;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0)
        return NULL;
    return p;
}

static void cpu_free(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

static void cpu_sync(void *ctx)
{
    (void)ctx; /* every op has finished when it returns */
}

/* Only the bf16 GEMMs can fail (oneDNN, their scratch). */
static const char *cpu_last_error(void *vctx)
{
    const cpu_context *ctx = vctx;
    return ctx->bf16 ? cpu_bf16_error(ctx->bf16) : NULL;
}

static void cpu_params_changed(void *vctx)
{
    cpu_context *ctx = vctx;
    if (ctx->bf16)
        cpu_bf16_params_changed(ctx->bf16);
}

const backend_ops cpu_backend_ops = {
    .name = "cpu",
    .matmul_forward = cpu_matmul_forward,
    .matmul_forward_fp32 = cpu_matmul_forward_fp32,
    .matmul_backward = cpu_matmul_backward,
    .grouped_matmul_forward = cpu_grouped_matmul_forward,
    .grouped_matmul_backward = cpu_grouped_matmul_backward,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .router_forward = cpu_router_forward,
    .router_backward = cpu_router_backward,
    .moe_permute = cpu_moe_permute,
    .moe_permute_backward = cpu_moe_permute_backward,
    .moe_unpermute = cpu_moe_unpermute,
    .moe_unpermute_backward = cpu_moe_unpermute_backward,
    .crossentropy_forward_backward = cpu_crossentropy_forward_backward,
    .add_inplace = cpu_add_inplace,
    .sum_squares = cpu_sum_squares,
    .adamw_update = cpu_adamw_update,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .sync = cpu_sync,
    .last_error = cpu_last_error,
    .params_changed = cpu_params_changed,
};

int cpu_backend_init(backend *out, int threads)
{
    cpu_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return -1;
    ctx->threads = threads < 1 ? 1 : threads;
    /* Process-wide; matmul.c re-applies it when another context changed it. */
    openblas_set_num_threads(ctx->threads);
    out->ops = &cpu_backend_ops;
    out->ctx = ctx;
    return 0;
}

int cpu_backend_init_bf16(backend *out, int threads, char *why,
                          size_t why_size)
{
    cpu_bf16 *bf16;
    if (cpu_bf16_create(&bf16, why, why_size) < 0)
        return -1;
    if (cpu_backend_init(out, threads) < 0) {
        cpu_bf16_destroy(bf16);
        snprintf(why, why_size, "out of memory");
        return -1;
    }
    ((cpu_context *)out->ctx)->bf16 = bf16;
    return 0;
}

void cpu_backend_describe(const backend *b, char *out, size_t size)
{
    const cpu_context *ctx = b->ctx;
    if (!ctx->bf16) {
        snprintf(out, size, "fp32, OpenBLAS");
        return;
    }
    char how[128];
    cpu_bf16_describe(ctx->bf16, how, sizeof how);
    snprintf(out, size, "bf16 GEMMs, %s", how);
}

void cpu_backend_finish(backend *b)
{
    if (!b || !b->ctx)
        return;
    cpu_bf16_destroy(((cpu_context *)b->ctx)->bf16);
    cpu_rope_release(b->ctx);
    free(((cpu_context *)b->ctx)->attention_scratch);
    free(b->ctx);
    b->ctx = NULL;
    b->ops = NULL;
}
