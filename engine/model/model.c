#include "engine/model/model.h"
#include "engine/core/clock.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "engine/core/rng.h"

const char *const model_part_names[MODEL_PART_COUNT] = {
#define X(name) #name,
    MODEL_PARTS(X)
#undef X
};

/* Emulates a slower device (model_set_slowdown): every stretch of compute
 * (its all-to-all waits excluded) adds (slowdown - 1) times its length to
 * a debt of sleep. The debt is slept at the end of each lap when it has
 * grown past 50 us (shorter sleeps are mostly overshoot, which is paid
 * back from the debt rather than accumulated), and always in full before
 * the rank next talks to the others, so that they wait for it there as
 * they would for a slow device. */
static void slowdown_charge(model *m, double now)
{
    model_profile *p = &m->profile;
    double waited = m->ep ? m->ep->exchange_s(m->ep->ctx) : 0.0;
    double compute = now - p->slowdown_mark - (waited - p->slowdown_comm);
    p->slowdown_mark = now;
    p->slowdown_comm = waited;
    p->slowdown_debt_s += (m->slowdown - 1.0) * (compute > 0 ? compute : 0);
    p->lap_compute_s += compute > 0 ? compute : 0;
}

static double slowdown_pay(model *m, double now, double at_least_s)
{
    model_profile *p = &m->profile;
    double debt = p->slowdown_debt_s;
    if (debt < at_least_s || debt <= 0)
        return now;
    struct timespec nap = {(time_t)debt,
                           (long)((debt - (double)(time_t)debt) * 1e9)};
    nanosleep(&nap, NULL);
    double after = clock_monotonic_s();
    p->slowdown_debt_s -= after - now;
    p->lap_slept_s += after - now;
    p->slowdown_mark = after;
    return after;
}

void model_slowdown_sync(model *m)
{
    if (m->slowdown <= 1.0)
        return;
    double now = clock_monotonic_s();
    slowdown_charge(m, now);
    slowdown_pay(m, now, 0.0);
}

/* Adds the time since the previous lap to `bucket`. Under an emulated
 * slowdown that is the time the slower device would have taken for this
 * lap's work: its compute times the slowdown, plus its waits, whenever the
 * debt happens to be slept (before the next exchange, or at a later lap),
 * so that each part's time scales with its own work. */
static void lap(model *m, double *bucket)
{
    model_profile *p = &m->profile;
    double now = clock_monotonic_s();
    if (m->slowdown > 1.0) {
        slowdown_charge(m, now);
        now = slowdown_pay(m, now, 50e-6);
    }
    *bucket += now - p->lap_start - p->lap_slept_s +
               (m->slowdown > 1.0 ? (m->slowdown - 1.0) * p->lap_compute_s
                                  : 0.0);
    p->lap_start = now;
    p->lap_slept_s = 0.0;
    p->lap_compute_s = 0.0;
}

void model_lap(model *m, enum model_part part, int backward)
{
    lap(m, backward ? &m->profile.backward_s[part]
                    : &m->profile.forward_s[part]);
}

/* Starts the laps of a forward or backward pass. */
static void lap_begin(model *m)
{
    m->profile.lap_start = clock_monotonic_s();
    m->profile.lap_slept_s = 0.0;
    m->profile.lap_compute_s = 0.0;
    m->profile.slowdown_mark = m->profile.lap_start;
    m->profile.slowdown_comm =
        m->ep ? m->ep->exchange_s(m->ep->ctx) : 0.0;
}

void model_set_slowdown(model *m, double slowdown)
{
    m->slowdown = slowdown;
#ifdef PR_SET_TIMERSLACK
    /* Sleeps of tens of microseconds: the default 50 us slack would
     * swamp them. */
    if (slowdown > 1.0)
        prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
#endif
}

void model_profile_reset(model *m)
{
    memset(&m->profile, 0, sizeof m->profile);
}

/* Activations of one forward pass kept for the backward pass, and the
 * backward pass's scratch, in one slab. N = batch·T, SK = N·K slots. */
#define MODEL_ACTIVATIONS(X)                                                   \
    X(resid, (size_t)(L + 1) * N * C)  /* (L+1, N, C) residual entering each \
                                          layer, then the final one */         \
    X(x_mid, (size_t)L * N * C)        /* (L, N, C) after attention */         \
    X(attn_norm_out, (size_t)L * N * C) /* (L, N, C) */                        \
    X(attn_rstd, (size_t)L * N)        /* (L, N) */                            \
    X(qkv, (size_t)L * N * 3 * C)      /* (L, N, 3C) after RoPE */             \
    X(att_probs, (size_t)L * B * H * T * T) /* (L, B, H, T, T) */              \
    X(att_out, (size_t)L * N * C)      /* (L, N, C) heads before wo */         \
    X(ffn_norm_out, (size_t)L * N * C) /* (L, N, C) */                         \
    X(ffn_rstd, (size_t)L * N)         /* (L, N) */                            \
    X(router_logits, (size_t)L * N * E) /* (L, N, E) */                        \
    X(router_probs, (size_t)L * N * E) /* (L, N, E) */                         \
    X(router_lse, (size_t)L * N)       /* (L, N) */                            \
    X(gate_weight, (size_t)L * N * K)  /* (L, N, K) */                         \
    X(expert_in, (size_t)L * SK * C)   /* (L, SK, C) tokens sorted by expert */ \
    X(expert_h13, (size_t)L * SK * 2 * F) /* (L, SK, 2F) */                    \
    X(expert_h, (size_t)L * SK * F)    /* (L, SK, F) */                        \
    X(expert_out, (size_t)L * SK * C)  /* (L, SK, C) */                        \
    X(shared_h13, (size_t)L * N * 2 * S) /* (L, N, 2S) */                      \
    X(shared_h, (size_t)L * N * S)     /* (L, N, S) */                         \
    X(branch_out, (size_t)N * C)       /* (N, C) scratch */                    \
    X(final_out, (size_t)N * C)        /* (N, C) */                            \
    X(final_rstd, (size_t)N)           /* (N) */                               \
    X(logits, (size_t)N * V)           /* (N, V); dlogits after forward */     \
    X(losses, (size_t)N)               /* (N) */                               \
    X(d_resid, (size_t)N * C)          /* backward scratch from here on */     \
    X(d_norm_out, (size_t)N * C)                                               \
    X(d_qkv, (size_t)N * 3 * C)                                                \
    X(d_att_out, (size_t)N * C)                                                \
    X(d_router_logits, (size_t)N * E)                                          \
    X(d_router_probs, (size_t)N * E)                                           \
    X(d_gate, (size_t)N * K)                                                   \
    X(d_expert_out, (size_t)SK * C)                                            \
    X(d_expert_h, (size_t)SK * F)                                              \
    X(d_expert_h13, (size_t)SK * 2 * F)                                        \
    X(d_expert_in, (size_t)SK * C)                                             \
    X(d_shared_h, (size_t)N * S)                                               \
    X(d_shared_h13, (size_t)N * 2 * S)

#define MODEL_INDICES(X)                                                       \
    X(inputs, (size_t)N)                                                       \
    X(targets, (size_t)N)                                                      \
    X(expert_index, (size_t)L * N * K) /* (L, N, K) */                         \
    X(group_rows, (size_t)L * E)       /* (L, E) */                            \
    X(selected, (size_t)L * E)         /* (L, E) */                            \
    X(token_of_slot, (size_t)L * SK)   /* (L, SK) */                           \
    X(slot_of, (size_t)L * SK)         /* (L, N, K) */                         \
    X(dispatch_scratch, (size_t)2 * E)

struct model_activations {
    const backend *be;  /* whose memory float_memory and int_memory are */
    float *float_memory;
    int *int_memory;
#define X(name, count) float *name;
    MODEL_ACTIVATIONS(X)
#undef X
#define X(name, count) int *name;
    MODEL_INDICES(X)
#undef X
    /* Per-expert weight views for the grouped GEMMs of one layer. */
    const float **w13;
    const float **w2;
    float **dw13;
    float **dw2;
    /* Routing warm-up scratch: (sequences of the global batch, 2) logit
     * sums, then (E) scores. */
    double *routing_scratch;
    size_t routing_scratch_count;
};

static void dims_from_config(model_dims *d, const config *cfg)
{
    d->V = CONFIG_VOCAB_SIZE;
    d->C = cfg->model.d_model;
    d->L = cfg->model.n_layers;
    d->H = cfg->model.n_heads;
    d->T = cfg->model.seq_len;
    d->E = cfg->moe.n_experts;
    d->K = cfg->moe.top_k;
    d->F = cfg->moe.expert_hidden;
    d->S = cfg->moe.n_shared * cfg->moe.expert_hidden;
}

static void tensor_views(model_tensors *views, float *base,
                         const model_tensor_info *info)
{
#define X(name, count, init, decay)                                             \
    views->name = base + info[MODEL_TENSOR_##name].offset;
    MODEL_TENSORS(X)
#undef X
}

static int activations_create(model_activations **out, const model_dims *dm,
                              int B, const backend *be, moe_error *err)
{
    const size_t V = (size_t)dm->V, C = (size_t)dm->C, L = (size_t)dm->L,
                 H = (size_t)dm->H, T = (size_t)dm->T, E = (size_t)dm->E,
                 K = (size_t)dm->K, F = (size_t)dm->F, S = (size_t)dm->S;
    const size_t N = (size_t)B * T, SK = N * K;
    (void)V;

    model_activations *a = calloc(1, sizeof *a);
    if (!a)
        return error_set(err, "out of memory for activations");

    size_t floats = 0, ints = 0;
#define X(name, count) floats += (count);
    MODEL_ACTIVATIONS(X)
#undef X
#define X(name, count) ints += (count);
    MODEL_INDICES(X)
#undef X
    /* What the ops address lives in the backend's memory. */
    a->be = be;
    a->float_memory = be->ops->alloc(be->ctx, floats * sizeof(float));
    a->int_memory = be->ops->alloc(be->ctx, ints * sizeof(int));
    a->w13 = malloc(E * sizeof *a->w13);
    a->w2 = malloc(E * sizeof *a->w2);
    a->dw13 = malloc(E * sizeof *a->dw13);
    a->dw2 = malloc(E * sizeof *a->dw2);
    if (!a->float_memory || !a->int_memory || !a->w13 || !a->w2 || !a->dw13 ||
        !a->dw2) {
        be->ops->free(be->ctx, a->float_memory);
        be->ops->free(be->ctx, a->int_memory);
        free(a->w13);
        free(a->w2);
        free(a->dw13);
        free(a->dw2);
        free(a);
        return error_set(err, "out of memory for activations (%.1f MiB)",
                         (double)(floats * 4 + ints * 4) / (1 << 20));
    }
    /* Zeroed once so that probs above the attention diagonal and unused
     * tails hold defined values. */
    memset(a->float_memory, 0, floats * sizeof(float));
    memset(a->int_memory, 0, ints * sizeof(int));

    float *fp = a->float_memory;
    int *ip = a->int_memory;
#define X(name, count) a->name = fp; fp += (count);
    MODEL_ACTIVATIONS(X)
#undef X
#define X(name, count) a->name = ip; ip += (count);
    MODEL_INDICES(X)
#undef X
    *out = a;
    return 0;
}

static void activations_destroy(model_activations *a)
{
    if (!a)
        return;
    a->be->ops->free(a->be->ctx, a->float_memory);
    a->be->ops->free(a->be->ctx, a->int_memory);
    free(a->w13);
    free(a->w2);
    free(a->dw13);
    free(a->dw2);
    free(a->routing_scratch);
    free(a);
}

/* Sizes the routing warm-up scratch for a global batch over `world` ranks. */
static int routing_scratch_reserve(model *m, int world)
{
    model_activations *a = m->acts;
    size_t count = (size_t)2 * m->batch * world + (size_t)m->dims.E;
    double *scratch = realloc(a->routing_scratch, count * sizeof *scratch);
    if (!scratch)
        return -1;
    a->routing_scratch = scratch;
    a->routing_scratch_count = count;
    return 0;
}

int model_create(model **out, const config *cfg, const backend *be, int batch,
                 moe_error *err)
{
    model *m = calloc(1, sizeof *m);
    if (!m)
        return error_set(err, "out of memory for the model");
    dims_from_config(&m->dims, cfg);
    m->batch = batch;
    m->norm_eps = (float)cfg->model.norm_eps;
    m->rope_theta = (float)cfg->model.rope_theta;
    m->init_std = (float)cfg->model.init_std;
    m->aux_loss_coef = cfg->moe.aux_loss_coef;
    m->z_loss_coef = cfg->moe.z_loss_coef;
    m->capacity_factor = cfg->moe.capacity_factor;
    m->bias_update_rate = cfg->balance.bias_update_rate;
    m->routing_warmup_steps = cfg->balance.routing_warmup_steps;
    m->routing_seed = cfg->train.seed;
    m->routing_mix = 1.0;
    m->be = be;

    const model_dims *d = &m->dims;
    size_t offset = 0;
#define X(name, count, init, decay)                                             \
    m->tensors[MODEL_TENSOR_##name] =                                          \
        (model_tensor_info){#name, offset, (count), (decay)};                  \
    offset += (count);
    MODEL_TENSORS(X)
#undef X
    m->param_count = offset;

    size_t bytes = m->param_count * sizeof(float);
    /* Everything the ops read or write is in the backend's memory. */
    m->param_memory = be->ops->alloc(be->ctx, bytes);
    m->grad_memory = be->ops->alloc(be->ctx, bytes);
    m->adam_m_memory = be->ops->alloc(be->ctx, bytes);
    m->adam_v_memory = be->ops->alloc(be->ctx, bytes);
    m->dispatch = calloc((size_t)d->L, sizeof *m->dispatch);
    size_t bias_bytes = (size_t)d->L * d->E * sizeof *m->router_bias;
    m->router_bias = be->ops->alloc(be->ctx, bias_bytes);
    if (m->router_bias)
        memset(m->router_bias, 0, bias_bytes);
    /* mean, var, std, pending mean, pending var: (L) each */
    m->router_logit_mean = calloc((size_t)5 * d->L, sizeof(double));
    if (!m->param_memory || !m->grad_memory || !m->adam_m_memory ||
        !m->adam_v_memory || !m->dispatch || !m->router_bias ||
        !m->router_logit_mean) {
        model_destroy(m);
        return error_set(err, "out of memory for %zu parameters",
                         m->param_count);
    }
    m->router_logit_var = m->router_logit_mean + d->L;
    m->router_logit_std = m->router_logit_mean + 2 * d->L;
    m->pending_logit_mean = m->router_logit_mean + 3 * d->L;
    m->pending_logit_var = m->router_logit_mean + 4 * d->L;
    tensor_views(&m->params, m->param_memory, m->tensors);
    tensor_views(&m->grads, m->grad_memory, m->tensors);
    tensor_views(&m->adam_m, m->adam_m_memory, m->tensors);
    tensor_views(&m->adam_v, m->adam_v_memory, m->tensors);
    memset(m->grad_memory, 0, bytes);
    memset(m->adam_m_memory, 0, bytes);
    memset(m->adam_v_memory, 0, bytes);

    if (activations_create(&m->acts, d, batch, be, err) < 0) {
        model_destroy(m);
        return -1;
    }
    if (routing_scratch_reserve(m, 1) < 0) {
        model_destroy(m);
        return error_set(err, "out of memory for routing scratch");
    }
    model_activations *a = m->acts;
    size_t SK = (size_t)batch * d->T * d->K;
    for (int l = 0; l < d->L; l++) {
        router_dispatch *rd = &m->dispatch[l];
        rd->group_rows = a->group_rows + (size_t)l * d->E;
        rd->selected = a->selected + (size_t)l * d->E;
        rd->token_of_slot = a->token_of_slot + (size_t)l * SK;
        rd->slot_of = a->slot_of + (size_t)l * SK;
        rd->scratch = a->dispatch_scratch;
    }
    m->expert_index = a->expert_index;
    *out = m;
    return 0;
}

void model_destroy(model *m)
{
    if (!m)
        return;
    free(m->reduce_buffer);
    activations_destroy(m->acts);
    free(m->dispatch);
    free(m->router_logit_mean);
    if (m->be) {
        void *ctx = m->be->ctx;
        m->be->ops->free(ctx, m->router_bias);
        m->be->ops->free(ctx, m->param_memory);
        m->be->ops->free(ctx, m->grad_memory);
        m->be->ops->free(ctx, m->adam_m_memory);
        m->be->ops->free(ctx, m->adam_v_memory);
    }
    free(m);
}

void model_init_params(model *m, uint64_t seed)
{
    rng r;
    rng_seed(&r, seed, 1);
    const model_dims *d = &m->dims;
    double residual_std = m->init_std / sqrt(2.0 * d->L);
    static const enum model_init inits[] = {
#define X(name, count, init, decay) init,
        MODEL_TENSORS(X)
#undef X
    };
    for (int i = 0; i < MODEL_TENSOR_COUNT; i++) {
        float *p = m->param_memory + m->tensors[i].offset;
        size_t n = m->tensors[i].count;
        switch (inits[i]) {
        case MODEL_INIT_ONES:
            for (size_t j = 0; j < n; j++)
                p[j] = 1.0f;
            break;
        case MODEL_INIT_NORMAL:
            for (size_t j = 0; j < n; j++)
                p[j] = (float)(m->init_std * rng_normal(&r));
            break;
        case MODEL_INIT_RESIDUAL:
            for (size_t j = 0; j < n; j++)
                p[j] = (float)(residual_std * rng_normal(&r));
            break;
        }
    }
    size_t bytes = m->param_count * sizeof(float);
    memset(m->adam_m_memory, 0, bytes);
    memset(m->adam_v_memory, 0, bytes);
}

/* Views of layer l's saved activations. Strides use the allocated batch,
 * so a smaller validation batch reuses the same slab. */
typedef struct layer_acts {
    float *x;             /* (N, C) residual entering the layer */
    float *x_next;        /* (N, C) residual leaving it */
    float *x_mid;         /* (N, C) residual after attention */
    float *attn_norm_out; /* (N, C) */
    float *attn_rstd;     /* (N) */
    float *qkv;           /* (N, 3C) */
    float *probs;         /* (B, H, T, T) */
    float *att_out;       /* (N, C) */
    float *ffn_norm_out;  /* (N, C) */
    float *ffn_rstd;      /* (N) */
    float *router_logits; /* (N, E) */
    float *router_probs;  /* (N, E) */
    float *router_lse;    /* (N) */
    float *gate;          /* (N, K) */
    int *expert_index;    /* (N, K) */
    float *expert_in;     /* (SK, C) */
    float *expert_h13;    /* (SK, 2F) */
    float *expert_h;      /* (SK, F) */
    float *expert_out;    /* (SK, C) */
    float *shared_h13;    /* (N, 2S) */
    float *shared_h;      /* (N, S) */
    router_dispatch *rd;
} layer_acts;

static void layer_acts_of(model *m, int l, layer_acts *v)
{
    const model_dims *d = &m->dims;
    model_activations *a = m->acts;
    const size_t rows = (size_t)m->batch * d->T, SK = rows * d->K;
    const size_t C = (size_t)d->C, layer = (size_t)l;
    v->x = a->resid + layer * rows * C;
    v->x_next = a->resid + (layer + 1) * rows * C;
    v->x_mid = a->x_mid + layer * rows * C;
    v->attn_norm_out = a->attn_norm_out + layer * rows * C;
    v->attn_rstd = a->attn_rstd + layer * rows;
    v->qkv = a->qkv + layer * rows * 3 * C;
    v->probs = a->att_probs + layer * m->batch * d->H * d->T * d->T;
    v->att_out = a->att_out + layer * rows * C;
    v->ffn_norm_out = a->ffn_norm_out + layer * rows * C;
    v->ffn_rstd = a->ffn_rstd + layer * rows;
    v->router_logits = a->router_logits + layer * rows * d->E;
    v->router_probs = a->router_probs + layer * rows * d->E;
    v->router_lse = a->router_lse + layer * rows;
    v->gate = a->gate_weight + layer * rows * d->K;
    v->expert_index = a->expert_index + layer * rows * d->K;
    v->expert_in = a->expert_in + layer * SK * C;
    v->expert_h13 = a->expert_h13 + layer * SK * 2 * d->F;
    v->expert_h = a->expert_h + layer * SK * d->F;
    v->expert_out = a->expert_out + layer * SK * C;
    v->shared_h13 = a->shared_h13 + layer * rows * 2 * d->S;
    v->shared_h = a->shared_h + layer * rows * d->S;
    v->rd = &m->dispatch[l];
}

/* Points the grouped-GEMM weight tables at layer l's experts. */
static void layer_expert_views(model *m, int l)
{
    const model_dims *d = &m->dims;
    model_activations *a = m->acts;
    size_t w13_size = (size_t)2 * d->F * d->C, w2_size = (size_t)d->C * d->F;
    for (int e = 0; e < d->E; e++) {
        size_t expert = (size_t)l * d->E + e;
        a->w13[e] = m->params.expert_w13 + expert * w13_size;
        a->w2[e] = m->params.expert_w2 + expert * w2_size;
        a->dw13[e] = m->grads.expert_w13 + expert * w13_size;
        a->dw2[e] = m->grads.expert_w2 + expert * w2_size;
    }
}

model_expert_weights model_expert_views(model *m, int l)
{
    layer_expert_views(m, l);
    model_activations *a = m->acts;
    return (model_expert_weights){a->w13, a->w2, a->dw13, a->dw2};
}

/* Shared experts of layer l: their output is SET in branch_out. */
static void shared_forward(model *m, int l, const layer_acts *v, int N)
{
    const backend_ops *ops = m->be->ops;
    void *ctx = m->be->ctx;
    const int C = m->dims.C, S = m->dims.S;
    ops->matmul_forward(ctx, v->shared_h13, v->ffn_norm_out,
                        m->params.shared_w13 + (size_t)l * 2 * S * C, N, C,
                        2 * S);
    ops->swiglu_forward(ctx, v->shared_h, v->shared_h13, N, S);
    ops->matmul_forward(ctx, m->acts->branch_out, v->shared_h,
                        m->params.shared_w2 + (size_t)l * C * S, N, S, C);
}

/* This rank's shares of layer l's aux and z losses (rd: its dispatch,
 * whose counts cover all tokens). */
static void balance_losses(model *m, const layer_acts *v,
                           const router_dispatch *rd, int N)
{
    const int K = m->dims.K, E = m->dims.E;
    if (m->aux_loss_coef > 0.0)
        m->aux_loss += router_aux_loss(NULL, v->router_probs, rd->selected, N,
                                       m->total_tokens, K, E,
                                       m->aux_loss_coef);
    if (m->z_loss_coef > 0.0)
        m->z_loss += router_z_loss(NULL, v->router_probs, v->router_lse, N,
                                   m->total_tokens, E, m->z_loss_coef);
}

/* The global dispatch counts of layer l's last forward. */
static const int *layer_selected(const model *m, int l)
{
    return m->ep ? m->ep->dispatch(m->ep->ctx, l)->selected
                 : m->dispatch[l].selected;
}

static int warmup_active(const model *m)
{
    return m->routing_step > 0 && m->routing_step <= m->routing_warmup_steps;
}

/* Layer l's top-k during the routing warm-up, replacing the kernel's
 * choice (probs, logits and lse stay). The batch's logit mean and variance
 * are summed per sequence; each sequence lives on one rank and the others
 * contribute zeros, so the all-reduce is exact in any order, and the
 * sequence sums are then added in sequence order: the statistics, like the
 * noise keyed by global token index, do not depend on the rank count. */
static void warmup_route(model *m, int l, const layer_acts *v, int B)
{
    const int T = m->dims.T, E = m->dims.E, K = m->dims.K;
    const int world = m->comm ? m->comm->world : 1;
    const int rank = m->comm ? m->comm->rank : 0;
    const int sequences = B * world;
    double *partial = m->acts->routing_scratch; /* (sequences, 2) */
    double *scores = partial + (size_t)2 * sequences;
    memset(partial, 0, (size_t)2 * sequences * sizeof *partial);
    for (int b = 0; b < B; b++)
        router_logit_sums(partial + (size_t)2 * (rank * B + b),
                          v->router_logits + (size_t)b * T * E, T, E);
    if (m->comm) {
        model_slowdown_sync(m);
        comm_allreduce_sum_double(m->comm, partial, 2 * sequences);
    }
    double sum = 0.0, sum_squares = 0.0;
    for (int s = 0; s < sequences; s++) {
        sum += partial[2 * s];
        sum_squares += partial[2 * s + 1];
    }
    double count = (double)sequences * T * E;
    double mean = sum / count;
    double var = fmax(sum_squares / count - mean * mean, 0.0);
    if (m->router_logit_stats_ready) {
        const double decay = ROUTER_LOGIT_EMA_DECAY;
        mean = decay * m->router_logit_mean[l] + (1.0 - decay) * mean;
        var = decay * m->router_logit_var[l] + (1.0 - decay) * var;
    }
    m->pending_logit_mean[l] = mean;
    m->pending_logit_var[l] = var;

    router_warmup w = {
        .mix = m->routing_mix,
        .mean = mean,
        .std = sqrt(var),
        .seed = m->routing_seed,
        .step = m->routing_step,
        .layer = l,
        .first_token = (long)rank * B * T,
    };
    router_select_warmup(v->expert_index, v->gate, v->router_logits,
                         v->router_probs, m->router_bias + (size_t)l * E, &w,
                         scores, B * T, E, K);
}

void model_begin_train_step(model *m, int step)
{
    m->routing_step = step;
    m->routing_mix = router_warmup_mix(step, m->routing_warmup_steps);
}

void model_end_train_step(model *m)
{
    const model_dims *d = &m->dims;
    if (m->routing_step <= 0)
        return;
    if (warmup_active(m)) {
        for (int l = 0; l < d->L; l++) {
            m->router_logit_mean[l] = m->pending_logit_mean[l];
            m->router_logit_var[l] = m->pending_logit_var[l];
            m->router_logit_std[l] = sqrt(m->router_logit_var[l]);
        }
        m->router_logit_stats_ready = 1;
    }
    if (m->bias_update_rate > 0.0)
        for (int l = 0; l < d->L; l++)
            router_bias_update(m->router_bias + (size_t)l * d->E,
                               layer_selected(m, l), d->E,
                               m->bias_update_rate);
    m->routing_step = 0;
}

void model_broadcast_balance_state(model *m, int root)
{
    if (!m->comm)
        return;
    const model_dims *d = &m->dims;
    comm_broadcast(m->comm, m->router_bias,
                   (size_t)d->L * d->E * sizeof *m->router_bias, root);
    comm_broadcast(m->comm, m->router_logit_mean,
                   (size_t)3 * d->L * sizeof(double), root);
    comm_broadcast(m->comm, &m->router_logit_stats_ready,
                   sizeof m->router_logit_stats_ready, root);
}

double model_forward(model *m, const int *inputs, const int *targets, int B)
{
    const backend_ops *ops = m->be->ops;
    void *ctx = m->be->ctx;
    const model_dims *d = &m->dims;
    const int C = d->C, L = d->L, H = d->H, T = d->T, E = d->E, K = d->K,
              F = d->F, S = d->S, V = d->V;
    const int N = B * T;
    const size_t NC = (size_t)N * C, maxNC = (size_t)m->batch * T * C;
    model_activations *a = m->acts;
    model_tensors *p = &m->params;

    m->last_batch = B;
    m->total_tokens = N * (m->comm ? m->comm->world : 1);
    memcpy(a->inputs, inputs, (size_t)N * sizeof(int));
    memcpy(a->targets, targets, (size_t)N * sizeof(int));
    m->aux_loss = 0.0;
    m->z_loss = 0.0;
    double *fw = m->profile.forward_s;
    lap_begin(m);

    ops->embedding_forward(ctx, a->resid, a->inputs, p->wte, N, C);
    lap(m, &fw[MODEL_PART_embedding]);
    for (int l = 0; l < L; l++) {
        layer_acts v;
        layer_acts_of(m, l, &v);

        ops->rmsnorm_forward(ctx, v.attn_norm_out, v.attn_rstd, v.x,
                             p->attn_norm + (size_t)l * C, N, C, m->norm_eps);
        lap(m, &fw[MODEL_PART_norms]);
        ops->matmul_forward(ctx, v.qkv, v.attn_norm_out,
                            p->wqkv + (size_t)l * 3 * C * C, N, C, 3 * C);
        ops->rope_forward(ctx, v.qkv, B, T, C, H, m->rope_theta);
        ops->attention_forward(ctx, v.att_out, v.probs, v.qkv, B, T, C, H);
        ops->matmul_forward(ctx, a->branch_out, v.att_out,
                            p->wo + (size_t)l * C * C, N, C, C);
        lap(m, &fw[MODEL_PART_attention]);
        memcpy(v.x_mid, v.x, NC * sizeof(float));
        ops->add_inplace(ctx, v.x_mid, a->branch_out, NC);

        ops->rmsnorm_forward(ctx, v.ffn_norm_out, v.ffn_rstd, v.x_mid,
                             p->ffn_norm + (size_t)l * C, N, C, m->norm_eps);
        lap(m, &fw[MODEL_PART_norms]);
        ops->matmul_forward(ctx, v.router_logits, v.ffn_norm_out,
                            p->router + (size_t)l * E * C, N, C, E);
        /* A zero bias (balancing off) selects exactly as no bias. */
        ops->router_forward(ctx, v.router_probs, v.router_lse, v.expert_index,
                            v.gate, v.router_logits,
                            m->router_bias + (size_t)l * E, N, E, K);
        if (warmup_active(m))
            warmup_route(m, l, &v, B);
        if (m->ep) {
            /* Dispatch, experts and combine across the ranks. */
            if (S > 0)
                shared_forward(m, l, &v, N);
            else
                memset(a->branch_out, 0, NC * sizeof(float));
            lap(m, &fw[MODEL_PART_shared_experts]);
            m->ep->forward(m->ep->ctx, l, v.ffn_norm_out, v.expert_index,
                                    v.gate, a->branch_out);
            lap(m, &fw[MODEL_PART_permute]);
            balance_losses(m, &v, m->ep->dispatch(m->ep->ctx, l), N);
            lap(m, &fw[MODEL_PART_router]);
            memcpy(v.x_next, v.x_mid, NC * sizeof(float));
            ops->add_inplace(ctx, v.x_next, a->branch_out, NC);
            lap(m, &fw[MODEL_PART_norms]);
            continue;
        }
        router_build_dispatch(v.rd, v.expert_index, N, K, E,
                              router_capacity(m->capacity_factor, N, K, E));
        balance_losses(m, &v, v.rd, N);
        lap(m, &fw[MODEL_PART_router]);

        layer_expert_views(m, l);
        ops->moe_permute(ctx, v.expert_in, v.ffn_norm_out, v.rd->token_of_slot,
                         v.rd->slots, C);
        lap(m, &fw[MODEL_PART_permute]);
        ops->grouped_matmul_forward(ctx, v.expert_h13, v.expert_in, a->w13,
                                    v.rd->group_rows, E, C, 2 * F);
        ops->swiglu_forward(ctx, v.expert_h, v.expert_h13, v.rd->slots, F);
        ops->grouped_matmul_forward(ctx, v.expert_out, v.expert_h, a->w2,
                                    v.rd->group_rows, E, F, C);
        lap(m, &fw[MODEL_PART_experts]);

        if (S > 0) {
            shared_forward(m, l, &v, N);
        } else {
            memset(a->branch_out, 0, NC * sizeof(float));
        }
        lap(m, &fw[MODEL_PART_shared_experts]);
        ops->moe_unpermute(ctx, a->branch_out, v.expert_out, v.rd->slot_of, v.gate,
                           N, K, C);
        lap(m, &fw[MODEL_PART_permute]);
        memcpy(v.x_next, v.x_mid, NC * sizeof(float));
        ops->add_inplace(ctx, v.x_next, a->branch_out, NC);
        lap(m, &fw[MODEL_PART_norms]);
    }

    ops->rmsnorm_forward(ctx, a->final_out, a->final_rstd,
                         a->resid + (size_t)L * maxNC, p->final_norm, N, C,
                         m->norm_eps);
    ops->matmul_forward(ctx, a->logits, a->final_out, p->lm_head, N, C, V);
    /* The logits become dlogits of the mean loss in place: the backward
     * pass needs nothing else from them. */
    ops->crossentropy_forward_backward(ctx, a->losses, a->logits, a->logits,
                                       a->targets, N, V,
                                       1.0f / m->total_tokens);
    double sum = 0.0;
    for (int i = 0; i < N; i++)
        sum += a->losses[i];
    /* Each rank's shares of the three losses add up to the global ones. */
    double losses[3] = {sum / m->total_tokens, m->aux_loss, m->z_loss};
    if (m->comm) {
        model_slowdown_sync(m);
        comm_allreduce_sum_double(m->comm, losses, 3);
    }
    m->ce_loss = losses[0];
    m->aux_loss = losses[1];
    m->z_loss = losses[2];
    lap(m, &fw[MODEL_PART_head]);
    return m->ce_loss;
}

void model_zero_grad(model *m)
{
    memset(m->grad_memory, 0, m->param_count * sizeof(float));
}

void model_backward(model *m)
{
    const backend_ops *ops = m->be->ops;
    void *ctx = m->be->ctx;
    const model_dims *d = &m->dims;
    const int C = d->C, L = d->L, H = d->H, T = d->T, E = d->E, K = d->K,
              F = d->F, S = d->S, V = d->V;
    const int B = m->last_batch, N = B * T;
    const size_t NC = (size_t)N * C, maxNC = (size_t)m->batch * T * C;
    model_activations *a = m->acts;
    model_tensors *p = &m->params, *g = &m->grads;
    double *bw = m->profile.backward_s;
    lap_begin(m);

    memset(a->d_resid, 0, NC * sizeof(float));
    memset(a->d_norm_out, 0, NC * sizeof(float));
    ops->matmul_backward(ctx, a->d_norm_out, g->lm_head, a->logits,
                         a->final_out, p->lm_head, N, C, V);
    ops->rmsnorm_backward(ctx, a->d_resid, g->final_norm, a->d_norm_out,
                          a->resid + (size_t)L * maxNC, p->final_norm,
                          a->final_rstd, N, C);
    lap(m, &bw[MODEL_PART_head]);

    for (int l = L - 1; l >= 0; l--) {
        layer_acts v;
        layer_acts_of(m, l, &v);

        /* Feed-forward branch: d_resid is the gradient of its output. */
        memset(a->d_norm_out, 0, NC * sizeof(float));
        if (S > 0) {
            memset(a->d_shared_h, 0, (size_t)N * S * sizeof(float));
            ops->matmul_backward(ctx, a->d_shared_h,
                                 g->shared_w2 + (size_t)l * C * S, a->d_resid,
                                 v.shared_h, p->shared_w2 + (size_t)l * C * S, N,
                                 S, C);
            ops->swiglu_backward(ctx, a->d_shared_h13, a->d_shared_h,
                                 v.shared_h13, N, S);
            ops->matmul_backward(ctx, a->d_norm_out,
                                 g->shared_w13 + (size_t)l * 2 * S * C,
                                 a->d_shared_h13, v.ffn_norm_out,
                                 p->shared_w13 + (size_t)l * 2 * S * C, N, C,
                                 2 * S);
        }
        lap(m, &bw[MODEL_PART_shared_experts]);

        const router_dispatch *rd =
            m->ep ? m->ep->dispatch(m->ep->ctx, l) : v.rd;
        if (m->ep) {
            m->ep->backward(m->ep->ctx, l, a->d_resid, v.gate,
                                     a->d_norm_out, a->d_gate);
            lap(m, &bw[MODEL_PART_permute]);
        } else {
        layer_expert_views(m, l);
        /* d_gate, d_expert_h, d_expert_h13 and d_expert_in are set by the
         * ops that produce them (backend.h): no zeroing. */
        memset(a->d_expert_out, 0,
               (size_t)v.rd->slots * C * sizeof(float));
        ops->moe_unpermute_backward(ctx, a->d_expert_out, a->d_gate, a->d_resid,
                                    v.expert_out, v.rd->slot_of, v.gate, N, K, C);
        lap(m, &bw[MODEL_PART_permute]);
        ops->grouped_matmul_backward(ctx, a->d_expert_h, a->dw2,
                                     a->d_expert_out, v.expert_h, a->w2,
                                     v.rd->group_rows, E, F, C);
        ops->swiglu_backward(ctx, a->d_expert_h13, a->d_expert_h, v.expert_h13,
                             v.rd->slots, F);
        ops->grouped_matmul_backward(ctx, a->d_expert_in, a->dw13,
                                     a->d_expert_h13, v.expert_in, a->w13,
                                     v.rd->group_rows, E, C, 2 * F);
        lap(m, &bw[MODEL_PART_experts]);
        ops->moe_permute_backward(ctx, a->d_norm_out, a->d_expert_in,
                                  v.rd->token_of_slot, v.rd->slots, C);
        lap(m, &bw[MODEL_PART_permute]);
        }

        /* Router: v.gate weights, then the balance losses. */
        memset(a->d_router_logits, 0, (size_t)N * E * sizeof(float));
        float *d_probs = NULL;
        if (m->aux_loss_coef > 0.0) {
            router_aux_loss(a->d_router_probs, v.router_probs, rd->selected, N,
                            m->total_tokens, K, E, m->aux_loss_coef);
            d_probs = a->d_router_probs;
        }
        ops->router_backward(ctx, a->d_router_logits, a->d_gate, d_probs,
                             v.router_probs, v.expert_index, v.gate, N, E, K);
        if (m->z_loss_coef > 0.0)
            router_z_loss(a->d_router_logits, v.router_probs, v.router_lse, N,
                          m->total_tokens, E, m->z_loss_coef);
        ops->matmul_backward(ctx, a->d_norm_out,
                             g->router + (size_t)l * E * C, a->d_router_logits,
                             v.ffn_norm_out, p->router + (size_t)l * E * C, N, C,
                             E);
        lap(m, &bw[MODEL_PART_router]);
        ops->rmsnorm_backward(ctx, a->d_resid, g->ffn_norm + (size_t)l * C,
                              a->d_norm_out, v.x_mid, p->ffn_norm + (size_t)l * C,
                              v.ffn_rstd, N, C);
        lap(m, &bw[MODEL_PART_norms]);

        /* Attention branch: d_resid is now the gradient of v.x_mid. */
        memset(a->d_att_out, 0, NC * sizeof(float));
        memset(a->d_qkv, 0, NC * 3 * sizeof(float));
        memset(a->d_norm_out, 0, NC * sizeof(float));
        ops->matmul_backward(ctx, a->d_att_out, g->wo + (size_t)l * C * C,
                             a->d_resid, v.att_out, p->wo + (size_t)l * C * C, N,
                             C, C);
        ops->attention_backward(ctx, a->d_qkv, a->d_att_out, v.qkv, v.probs, B, T,
                                C, H);
        ops->rope_backward(ctx, a->d_qkv, B, T, C, H, m->rope_theta);
        ops->matmul_backward(ctx, a->d_norm_out,
                             g->wqkv + (size_t)l * 3 * C * C, a->d_qkv,
                             v.attn_norm_out, p->wqkv + (size_t)l * 3 * C * C, N,
                             C, 3 * C);
        lap(m, &bw[MODEL_PART_attention]);
        ops->rmsnorm_backward(ctx, a->d_resid, g->attn_norm + (size_t)l * C,
                              a->d_norm_out, v.x, p->attn_norm + (size_t)l * C,
                              v.attn_rstd, N, C);
        lap(m, &bw[MODEL_PART_norms]);
    }
    ops->embedding_backward(ctx, g->wte, a->d_resid, a->inputs, N, C);
    lap(m, &bw[MODEL_PART_embedding]);
    /* The gradient reduction comes next: the emulated debt is paid first,
     * inside the last lap's time. */
    if (m->slowdown > 1.0) {
        model_slowdown_sync(m);
        bw[MODEL_PART_embedding] += clock_monotonic_s() - m->profile.lap_start;
        m->profile.lap_start = clock_monotonic_s();
    }
}

void model_expert_load(const model *m, int *load)
{
    const model_dims *d = &m->dims;
    for (int l = 0; l < d->L; l++)
        memcpy(load + (size_t)l * d->E, layer_selected(m, l),
               (size_t)d->E * sizeof(int));
}

int model_dropped_assignments(const model *m)
{
    int dropped = 0;
    for (int l = 0; l < m->dims.L; l++)
        dropped += m->ep ? m->ep->dispatch(m->ep->ctx, l)->dropped
                         : m->dispatch[l].dropped;
    return dropped;
}

size_t model_active_params(const model *m)
{
    const model_dims *d = &m->dims;
    size_t per_expert = (size_t)3 * d->F * d->C;
    return m->param_count - (size_t)d->L * (d->E - d->K) * per_expert;
}

double model_flops_per_token(const model *m)
{
    const model_dims *d = &m->dims;
    double non_embedding = (double)model_active_params(m) -
                           (double)m->tensors[MODEL_TENSOR_wte].count;
    return 6.0 * non_embedding + 12.0 * d->L * d->C * d->T;
}

int model_set_comm(model *m, const comm *c, moe_error *err)
{
    m->comm = c;
    if (routing_scratch_reserve(m, c->world) < 0)
        return error_set(err, "out of memory for routing scratch");
    return 0;
}

void model_set_expert_parallel(model *m, const model_expert_parallel *ep)
{
    m->ep = ep;
}

static int residency(const model *m, int l, int e)
{
    return m->ep ? m->ep->residency(m->ep->ctx, l, e)
                 : MODEL_EXPERT_HELD | MODEL_EXPERT_OWNED;
}

int model_owns_expert(const model *m, int l, int e)
{
    return (residency(m, l, e) & MODEL_EXPERT_OWNED) != 0;
}

int model_holds_expert(const model *m, int l, int e)
{
    return (residency(m, l, e) & MODEL_EXPERT_HELD) != 0;
}

int model_expert_is_split(const model *m, int l, int e)
{
    return (residency(m, l, e) & MODEL_EXPERT_SPLIT) != 0;
}
