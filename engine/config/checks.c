/* Cross-field checks, reported where the later of the two keys was set. */
#include "engine/config/config_internal.h"

#include <stdarg.h>
#include <stdio.h>

void checks_record_mark(load_ctx *ctx, size_t offset, const char *path,
                        const where *at)
{
    key_mark *mark = NULL;
    for (int i = 0; i < ctx->mark_count; i++)
        if (ctx->marks[i].offset == offset)
            mark = &ctx->marks[i];
    if (!mark && ctx->mark_count < MARKS_MAX)
        mark = &ctx->marks[ctx->mark_count++];
    if (!mark)
        return;
    mark->offset = offset;
    schema_format_path(mark->path, "%s", path);
    mark->at = *at;
    mark->order = ++ctx->order;
}

static const key_mark *find_mark(const load_ctx *ctx, size_t offset)
{
    for (int i = 0; i < ctx->mark_count; i++)
        if (ctx->marks[i].offset == offset)
            return &ctx->marks[i];
    return NULL;
}

static int fail_cross(load_ctx *ctx, size_t offset_a, size_t offset_b,
                      const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail_cross(load_ctx *ctx, size_t offset_a, size_t offset_b,
                      const char *fmt, ...)
{
    char message[sizeof ctx->err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    const key_mark *a = find_mark(ctx, offset_a);
    const key_mark *b = find_mark(ctx, offset_b);
    const key_mark *blamed = !a || (b && b->order > a->order) ? b : a;
    if (!blamed)
        return diag_fail_at(ctx, NULL, "%s", message);
    return diag_fail_at(ctx, &blamed->at, "%s: %s", blamed->path, message);
}

int checks_fail_key(load_ctx *ctx, size_t offset, const char *fmt, ...)
{
    char message[sizeof ctx->err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    return fail_cross(ctx, offset, offset, "%s", message);
}

int checks_cross_fields(load_ctx *ctx)
{
    const config *c = ctx->cfg;
    char reason[256];
    if (config_placement(c, NULL, reason, sizeof reason) < 0)
        return fail_cross(ctx, CFG(cluster.placement), CFG(cluster.placement),
                          "%s", reason);
    if (c->model.d_model % c->model.n_heads != 0)
        return fail_cross(ctx, CFG(model.d_model), CFG(model.n_heads),
                          "model.d_model (%d) must be a multiple of "
                          "model.n_heads (%d)",
                          c->model.d_model, c->model.n_heads);
    int head_dim = c->model.d_model / c->model.n_heads;
    if (head_dim % 2 != 0)
        return fail_cross(ctx, CFG(model.d_model), CFG(model.n_heads),
                          "the head dimension model.d_model / model.n_heads "
                          "= %d / %d = %d must be even (RoPE rotates pairs)",
                          c->model.d_model, c->model.n_heads, head_dim);
    if (c->model.n_kv_heads > 0 && c->model.n_heads % c->model.n_kv_heads)
        return fail_cross(ctx, CFG(model.n_kv_heads), CFG(model.n_heads),
                          "model.n_heads (%d) must be a multiple of "
                          "model.n_kv_heads (%d)",
                          c->model.n_heads, c->model.n_kv_heads);
    if (c->moe.top_k > c->moe.n_experts)
        return fail_cross(ctx, CFG(moe.top_k), CFG(moe.n_experts),
                          "moe.top_k (%d) must not exceed moe.n_experts (%d)",
                          c->moe.top_k, c->moe.n_experts);
    if (c->train.min_lr > c->train.lr)
        return fail_cross(ctx, CFG(train.min_lr), CFG(train.lr),
                          "train.min_lr (%g) must not exceed train.lr (%g)",
                          c->train.min_lr, c->train.lr);
    if (c->train.warmup_steps > c->train.steps)
        return fail_cross(ctx, CFG(train.warmup_steps), CFG(train.steps),
                          "train.warmup_steps (%d) must not exceed "
                          "train.steps (%d)",
                          c->train.warmup_steps, c->train.steps);
    const config_spike_guard *g = &c->train.spike_guard;
    if (g->window > 0 && g->min_steps > g->window)
        return fail_cross(ctx, CFG(train.spike_guard.min_steps),
                          CFG(train.spike_guard.window),
                          "train.spike_guard.min_steps (%d) must not exceed "
                          "train.spike_guard.window (%d): the guard would "
                          "never judge", g->min_steps, g->window);
    return 0;
}
