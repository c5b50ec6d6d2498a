#include "engine/model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/core/clock.h"
#include "engine/core/rng.h"
#include "engine/model/activations.h"

/* Seconds this rank has spent exchanging with the others (all-to-alls and
 * the model's all-reduces), waiting included: not compute, so not slowed
 * down. */
static double exchange_s(const model *m)
{
    return m->collective_s + (m->ep ? m->ep->exchange_s(m->ep->ctx) : 0.0);
}

void model_slowdown_sync(model *m)
{
    slowdown_sync(&m->slowdown, exchange_s(m));
}

void model_allreduce_sum(model *m, double *x, int n)
{
    model_slowdown_sync(m);
    double start = clock_monotonic_s();
    comm_allreduce_sum_double(m->comm, x, n);
    m->collective_s += clock_monotonic_s() - start;
}

double model_take_collective_s(model *m)
{
    double s = m->collective_s;
    m->collective_s = 0.0;
    return s;
}

/* Ends a lap of the profile in `part`. Under an emulated slowdown its
 * length is the time the slower device would have taken for this lap's
 * work: its compute times the slowdown, plus its waits, whenever the debt
 * happens to be slept (before the next exchange, or at a later lap), so
 * that each part's time scales with its own work. */
void model_lap(model *m, enum model_part part, int backward)
{
    double correction_s;
    double now = slowdown_end_lap(&m->slowdown, clock_monotonic_s(),
                                  exchange_s(m), &correction_s);
    profile_lap(&m->profile, part, backward, now, correction_s);
}

/* Starts the laps of a forward or backward pass. */
static void lap_begin(model *m)
{
    double now = clock_monotonic_s();
    profile_begin(&m->profile, now);
    slowdown_begin(&m->slowdown, now, exchange_s(m));
}

void model_set_slowdown(model *m, double factor)
{
    slowdown_set(&m->slowdown, factor);
}

void model_profile_reset(model *m)
{
    memset(&m->profile, 0, sizeof m->profile);
    slowdown_reset(&m->slowdown);
}

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

/* Every expert in (layer, expert) order: slot l·E + e. */
static int hold_every_expert(model *m)
{
    expert_store *st = &m->experts;
    if (expert_store_reserve(st, st->layers * st->experts) < 0)
        return -1;
    for (int l = 0; l < st->layers; l++)
        for (int e = 0; e < st->experts; e++)
            if (expert_store_hold(st, l, e) < 0)
                return -1;
    return 0;
}

/* Points the per-layer dispatch and the last forward's choices into the
 * activations. */
static void take_activations_views(model *m)
{
    const model_dims *d = &m->dims;
    model_activations *a = m->acts;
    size_t SK = a->expert_slots;
    for (int l = 0; l < d->L; l++) {
        router_dispatch *rd = &m->dispatch[l];
        rd->group_rows = a->group_rows + (size_t)l * d->E;
        rd->selected = a->selected + (size_t)l * d->E;
        rd->token_of_slot = a->token_of_slot + (size_t)l * SK;
        rd->slot_of = a->slot_of + (size_t)l * SK;
        rd->scratch = a->dispatch_scratch;
    }
    m->last.expert_index = a->expert_index;
}

/* Activations for `batch` sequences (routing scratch for `sequences` of
 * the global batch); m->acts is left NULL or partial on failure. */
static int take_activations(model *m, int batch, int sequences,
                            moe_error *err)
{
    if (activations_create(&m->acts, &m->dims, batch, m->local_experts,
                           m->be, err) < 0)
        return -1;
    if (activations_reserve_routing(m->acts, sequences, m->dims.E) < 0)
        return error_set(err, "out of memory for routing scratch");
    m->batch = batch;
    take_activations_views(m);
    return 0;
}

int model_create(model **out, const config *cfg, const backend *be, int batch,
                 enum model_experts experts, moe_error *err)
{
    model *m = calloc(1, sizeof *m);
    if (!m)
        return error_set(err, "out of memory for the model");
    dims_from_config(&m->dims, cfg);
    m->batch = batch;
    m->hyper.norm_eps = (float)cfg->model.norm_eps;
    m->hyper.rope_theta = (float)cfg->model.rope_theta;
    m->hyper.init_std = (float)cfg->model.init_std;
    m->hyper.aux_loss_coef = cfg->moe.aux_loss_coef;
    m->hyper.z_loss_coef = cfg->moe.z_loss_coef;
    m->hyper.capacity_factor = cfg->moe.capacity_factor;
    m->be = be;

    const model_dims *d = &m->dims;
    size_t offset = 0;
#define X(name, count, init, decay)                                             \
    m->tensors[MODEL_TENSOR_##name] =                                          \
        (model_tensor_info){#name, offset, (count), (decay)};                  \
    offset += (count);
    MODEL_TENSORS(X)
#undef X
    m->dense_count = offset;
    if (expert_store_init(&m->experts, d->L, d->E, d->C, d->F, be, err) < 0) {
        free(m);
        return -1;
    }
    m->expert_param_count = m->experts.slot_count;
    m->param_count = m->dense_count +
                     (size_t)d->L * d->E * m->expert_param_count;

    size_t bytes = m->dense_count * sizeof(float);
    /* Everything the ops read or write is in the backend's memory. */
    m->param_memory = be->ops->alloc(be->ctx, bytes);
    m->grad_memory = be->ops->alloc(be->ctx, bytes);
    m->adam_m_memory = be->ops->alloc(be->ctx, bytes);
    m->adam_v_memory = be->ops->alloc(be->ctx, bytes);
    m->dispatch = calloc((size_t)d->L, sizeof *m->dispatch);
    if (!m->param_memory || !m->grad_memory || !m->adam_m_memory ||
        !m->adam_v_memory || !m->dispatch) {
        model_destroy(m);
        return error_set(err, "out of memory for %zu dense parameters",
                         m->dense_count);
    }
    int local = experts == MODEL_EXPERTS_LOCAL;
    if (local && hold_every_expert(m) < 0) {
        model_destroy(m);
        return error_set(err, "out of memory for %d experts of %zu "
                              "parameters", d->L * d->E,
                         m->expert_param_count);
    }
    if (routing_balance_init(&m->routing, cfg, d->L, d->E, be, err) < 0) {
        model_destroy(m);
        return -1;
    }
    tensor_views(&m->params, m->param_memory, m->tensors);
    tensor_views(&m->grads, m->grad_memory, m->tensors);
    tensor_views(&m->adam_m, m->adam_m_memory, m->tensors);
    tensor_views(&m->adam_v, m->adam_v_memory, m->tensors);
    memset(m->grad_memory, 0, bytes);
    memset(m->adam_m_memory, 0, bytes);
    memset(m->adam_v_memory, 0, bytes);

    m->local_experts = local;
    if (take_activations(m, batch, batch, err) < 0) {
        model_destroy(m);
        return -1;
    }
    *out = m;
    return 0;
}

int model_reserve_rows(model *m, int batch, moe_error *err)
{
    if (batch <= m->batch)
        return 0;
    model_activations *kept = m->acts;
    m->acts = NULL;
    if (take_activations(m, batch, m->global_sequences, err) < 0) {
        activations_destroy(m->acts);
        m->acts = kept;
        take_activations_views(m);
        return -1;
    }
    activations_destroy(kept);
    return 0;
}

void model_set_first_sequence(model *m, int first_sequence)
{
    m->first_sequence = first_sequence;
}

void model_destroy(model *m)
{
    if (!m)
        return;
    free(m->reduce.buffer);
    free(m->reduce.expert_squares);
    activations_destroy(m->acts);
    free(m->dispatch);
    expert_store_finish(&m->experts);
    if (m->be) {
        void *ctx = m->be->ctx;
        routing_balance_finish(&m->routing, m->be);
        m->be->ops->free(ctx, m->param_memory);
        m->be->ops->free(ctx, m->grad_memory);
        m->be->ops->free(ctx, m->adam_m_memory);
        m->be->ops->free(ctx, m->adam_v_memory);
    }
    free(m);
}

int model_hold_expert(model *m, int l, int e)
{
    return expert_store_hold(&m->experts, l, e) < 0 ? -1 : 0;
}

void model_release_expert(model *m, int l, int e)
{
    expert_store_release(&m->experts, l, e);
}

size_t model_expert_state_bytes(const model *m)
{
    return 4 * m->expert_param_count * sizeof(float);
}

model_memory model_memory_bytes(const model *m)
{
    return (model_memory){
        .dense_state = 4 * m->dense_count * sizeof(float),
        .expert_state = expert_store_bytes(&m->experts),
        .activations = m->acts ? m->acts->bytes : 0,
    };
}

/* Fills n values from r by init. */
static void fill(float *p, size_t n, enum model_init init, rng *r,
                 double std, double residual_std)
{
    for (size_t j = 0; j < n; j++)
        p[j] = init == MODEL_INIT_ONES     ? 1.0f
               : init == MODEL_INIT_NORMAL ? (float)(std * rng_normal(r))
                                           : (float)(residual_std *
                                                     rng_normal(r));
}

/* The stream of expert (l, e): apart from the dense tensors' (1), the
 * data's (2) and every other expert's. */
static uint64_t expert_stream(const model *m, int l, int e)
{
    return ((uint64_t)1 << 32) + (uint64_t)l * m->dims.E + (uint64_t)e;
}

static double residual_std_of(const model *m)
{
    return m->hyper.init_std / sqrt(2.0 * m->dims.L);
}

void model_init_expert(model *m, uint64_t seed, int l, int e)
{
    const int C = m->dims.C, F = m->dims.F;
    expert_store *st = &m->experts;
    float *slot = expert_store_slot(st, st->params, l, e);
    rng r;
    rng_seed(&r, seed, expert_stream(m, l, e));
#define X(name, count, init, decay)                                             \
    fill(slot, (count), init, &r, m->hyper.init_std, residual_std_of(m));       \
    slot += (count);
    MODEL_EXPERT_TENSORS(X)
#undef X
    float *moments[2] = {expert_store_slot(st, st->adam_m, l, e),
                         expert_store_slot(st, st->adam_v, l, e)};
    for (int k = 0; k < 2; k++)
        memset(moments[k], 0, st->slot_count * sizeof(float));
}

void model_init_params(model *m, uint64_t seed)
{
    rng r;
    rng_seed(&r, seed, 1);
    static const enum model_init inits[] = {
#define X(name, count, init, decay) init,
        MODEL_TENSORS(X)
#undef X
    };
    for (int i = 0; i < MODEL_TENSOR_COUNT; i++)
        fill(m->param_memory + m->tensors[i].offset, m->tensors[i].count,
             inits[i], &r, m->hyper.init_std, residual_std_of(m));
    size_t bytes = m->dense_count * sizeof(float);
    memset(m->adam_m_memory, 0, bytes);
    memset(m->adam_v_memory, 0, bytes);
    for (int l = 0; l < m->dims.L; l++)
        for (int e = 0; e < m->dims.E; e++)
            if (expert_store_holds(&m->experts, l, e))
                model_init_expert(m, seed, l, e);
}


static void layer_acts_of(model *m, int l, layer_acts *v)
{
    activations_layer(m->acts, &m->dims, m->batch, l, v);
    v->rd = &m->dispatch[l];
}

/* Points the grouped-GEMM weight tables at layer l's experts (NULL for
 * those not held here). */
static void layer_expert_views(model *m, int l)
{
    const expert_store *st = &m->experts;
    model_activations *a = m->acts;
    for (int e = 0; e < m->dims.E; e++) {
        float *w = expert_store_slot(st, st->params, l, e);
        float *g = expert_store_slot(st, st->grads, l, e);
        a->w13[e] = w;
        a->w2[e] = w ? w + st->w13_count : NULL;
        a->dw13[e] = g;
        a->dw2[e] = g ? g + st->w13_count : NULL;
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
    if (m->hyper.aux_loss_coef > 0.0)
        m->last.aux_loss += router_aux_loss(NULL, v->router_probs, rd->selected, N,
                                       m->last.total_tokens, K, E,
                                       m->hyper.aux_loss_coef);
    if (m->hyper.z_loss_coef > 0.0)
        m->last.z_loss += router_z_loss(NULL, v->router_probs, v->router_lse, N,
                                   m->last.total_tokens, E, m->hyper.z_loss_coef);
}

/* The global dispatch counts of layer l's last forward. */
static const int *layer_selected(const model *m, int l)
{
    return m->ep ? m->ep->dispatch(m->ep->ctx, l)->selected
                 : m->dispatch[l].selected;
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
    const int sequences = m->comm ? m->global_sequences : B;
    const int first = m->comm ? m->first_sequence : 0;
    double *partial = m->acts->routing_scratch; /* (sequences, 2) */
    double *scores = partial + (size_t)2 * sequences;
    memset(partial, 0, (size_t)2 * sequences * sizeof *partial);
    for (int b = 0; b < B; b++)
        router_logit_sums(partial + (size_t)2 * (first + b),
                          v->router_logits + (size_t)b * T * E, T, E);
    if (m->comm)
        model_allreduce_sum(m, partial, 2 * sequences);
    double sum = 0.0, sum_squares = 0.0;
    for (int s = 0; s < sequences; s++) {
        sum += partial[2 * s];
        sum_squares += partial[2 * s + 1];
    }
    double count = (double)sequences * T * E;
    double mean = sum / count;
    double var = fmax(sum_squares / count - mean * mean, 0.0);
    routing_balance_observe(&m->routing, l, mean, var, &mean, &var);

    router_warmup w = {
        .mix = m->routing.mix,
        .mean = mean,
        .std = sqrt(var),
        .seed = m->routing.seed,
        .step = m->routing.step,
        .layer = l,
        .first_token = (long)first * T,
    };
    router_select_warmup(v->expert_index, v->gate, v->router_logits,
                         v->router_probs, m->routing.bias + (size_t)l * E, &w,
                         scores, B * T, E, K);
}

void model_begin_train_step(model *m, int step)
{
    routing_balance_begin_step(&m->routing, step);
}

static const int *selected_of_layer(const void *m, int l)
{
    return layer_selected(m, l);
}

void model_end_train_step(model *m)
{
    routing_balance_end_step(&m->routing, selected_of_layer, m);
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

    m->last.batch = B;
    /* The loss is the global batch's mean: every rank's share of it is
     * over the global token count, whatever its own rows. */
    m->last.total_tokens = m->comm ? m->global_sequences * T : N;
    memcpy(a->inputs, inputs, (size_t)N * sizeof(int));
    memcpy(a->targets, targets, (size_t)N * sizeof(int));
    m->last.aux_loss = 0.0;
    m->last.z_loss = 0.0;
    if (ops->params_changed) /* steps, loads and moves come between passes */
        ops->params_changed(ctx);
    lap_begin(m);

    ops->embedding_forward(ctx, a->resid, a->inputs, p->wte, N, C);
    model_lap(m, MODEL_PART_embedding, 0);
    for (int l = 0; l < L; l++) {
        layer_acts v;
        layer_acts_of(m, l, &v);

        ops->rmsnorm_forward(ctx, v.attn_norm_out, v.attn_rstd, v.x,
                             p->attn_norm + (size_t)l * C, N, C, m->hyper.norm_eps);
        model_lap(m, MODEL_PART_norms, 0);
        ops->matmul_forward(ctx, v.qkv, v.attn_norm_out,
                            p->wqkv + (size_t)l * 3 * C * C, N, C, 3 * C);
        ops->rope_forward(ctx, v.qkv, B, T, C, H, m->hyper.rope_theta);
        ops->attention_forward(ctx, v.att_out, v.probs, v.qkv, B, T, C, H);
        ops->matmul_forward(ctx, a->branch_out, v.att_out,
                            p->wo + (size_t)l * C * C, N, C, C);
        model_lap(m, MODEL_PART_attention, 0);
        memcpy(v.x_mid, v.x, NC * sizeof(float));
        ops->add_inplace(ctx, v.x_mid, a->branch_out, NC);

        ops->rmsnorm_forward(ctx, v.ffn_norm_out, v.ffn_rstd, v.x_mid,
                             p->ffn_norm + (size_t)l * C, N, C, m->hyper.norm_eps);
        model_lap(m, MODEL_PART_norms, 0);
        /* The logits pick the experts: in fp32 whatever the GEMMs'
         * precision. */
        (ops->matmul_forward_fp32 ? ops->matmul_forward_fp32
                                  : ops->matmul_forward)(
            ctx, v.router_logits, v.ffn_norm_out,
            p->router + (size_t)l * E * C, N, C, E);
        /* A zero bias (balancing off) selects exactly as no bias. */
        ops->router_forward(ctx, v.router_probs, v.router_lse, v.expert_index,
                            v.gate, v.router_logits,
                            m->routing.bias + (size_t)l * E, N, E, K);
        if (routing_balance_warming_up(&m->routing))
            warmup_route(m, l, &v, B);
        if (m->ep) {
            /* Dispatch, experts and combine across the ranks. */
            if (S > 0)
                shared_forward(m, l, &v, N);
            else
                memset(a->branch_out, 0, NC * sizeof(float));
            model_lap(m, MODEL_PART_shared_experts, 0);
            m->ep->forward(m->ep->ctx, l, v.ffn_norm_out, v.expert_index,
                                    v.gate, a->branch_out);
            model_lap(m, MODEL_PART_permute, 0);
            balance_losses(m, &v, m->ep->dispatch(m->ep->ctx, l), N);
            model_lap(m, MODEL_PART_router, 0);
            memcpy(v.x_next, v.x_mid, NC * sizeof(float));
            ops->add_inplace(ctx, v.x_next, a->branch_out, NC);
            model_lap(m, MODEL_PART_norms, 0);
            continue;
        }
        router_build_dispatch(v.rd, v.expert_index, N, K, E,
                              router_capacity(m->hyper.capacity_factor, N, K, E));
        balance_losses(m, &v, v.rd, N);
        model_lap(m, MODEL_PART_router, 0);

        layer_expert_views(m, l);
        ops->moe_permute(ctx, v.expert_in, v.ffn_norm_out, v.rd->token_of_slot,
                         v.rd->slots, C);
        model_lap(m, MODEL_PART_permute, 0);
        ops->grouped_matmul_forward(ctx, v.expert_h13, v.expert_in, a->w13,
                                    v.rd->group_rows, E, C, 2 * F);
        ops->swiglu_forward(ctx, v.expert_h, v.expert_h13, v.rd->slots, F);
        ops->grouped_matmul_forward(ctx, v.expert_out, v.expert_h, a->w2,
                                    v.rd->group_rows, E, F, C);
        model_lap(m, MODEL_PART_experts, 0);

        if (S > 0) {
            shared_forward(m, l, &v, N);
        } else {
            memset(a->branch_out, 0, NC * sizeof(float));
        }
        model_lap(m, MODEL_PART_shared_experts, 0);
        ops->moe_unpermute(ctx, a->branch_out, v.expert_out, v.rd->slot_of, v.gate,
                           N, K, C);
        model_lap(m, MODEL_PART_permute, 0);
        memcpy(v.x_next, v.x_mid, NC * sizeof(float));
        ops->add_inplace(ctx, v.x_next, a->branch_out, NC);
        model_lap(m, MODEL_PART_norms, 0);
    }

    ops->rmsnorm_forward(ctx, a->final_out, a->final_rstd,
                         a->resid + (size_t)L * maxNC, p->final_norm, N, C,
                         m->hyper.norm_eps);
    ops->matmul_forward(ctx, a->logits, a->final_out, p->lm_head, N, C, V);
    /* The logits become dlogits of the mean loss in place: the backward
     * pass needs nothing else from them. */
    float scale = m->loss_scale > 0 ? (float)m->loss_scale : 1.0f;
    ops->crossentropy_forward_backward(ctx, a->losses, a->logits, a->logits,
                                       a->targets, N, V,
                                       scale / m->last.total_tokens);
    double sum = 0.0;
    for (int i = 0; i < N; i++)
        sum += a->losses[i];
    /* Each rank's shares of the three losses add up to the global ones. */
    double losses[3] = {scale * sum / m->last.total_tokens, m->last.aux_loss,
                        m->last.z_loss};
    if (m->comm)
        model_allreduce_sum(m, losses, 3);
    m->last.ce_loss = losses[0];
    m->last.aux_loss = losses[1];
    m->last.z_loss = losses[2];
    model_lap(m, MODEL_PART_head, 0);
    return m->last.ce_loss;
}

void model_zero_grad(model *m)
{
    const expert_store *st = &m->experts;
    memset(m->grad_memory, 0, m->dense_count * sizeof(float));
    memset(st->grads, 0, (size_t)st->capacity * st->slot_count * sizeof(float));
}

void model_backward(model *m)
{
    const backend_ops *ops = m->be->ops;
    void *ctx = m->be->ctx;
    const model_dims *d = &m->dims;
    const int C = d->C, L = d->L, H = d->H, T = d->T, E = d->E, K = d->K,
              F = d->F, S = d->S, V = d->V;
    const int B = m->last.batch, N = B * T;
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
    model_lap(m, MODEL_PART_head, 1);

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
        model_lap(m, MODEL_PART_shared_experts, 1);

        const router_dispatch *rd =
            m->ep ? m->ep->dispatch(m->ep->ctx, l) : v.rd;
        if (m->ep) {
            m->ep->backward(m->ep->ctx, l, a->d_resid, v.gate,
                                     a->d_norm_out, a->d_gate);
            model_lap(m, MODEL_PART_permute, 1);
        } else {
        layer_expert_views(m, l);
        /* d_gate, d_expert_h, d_expert_h13 and d_expert_in are set by the
         * ops that produce them (backend.h): no zeroing. */
        memset(a->d_expert_out, 0,
               (size_t)v.rd->slots * C * sizeof(float));
        ops->moe_unpermute_backward(ctx, a->d_expert_out, a->d_gate, a->d_resid,
                                    v.expert_out, v.rd->slot_of, v.gate, N, K, C);
        model_lap(m, MODEL_PART_permute, 1);
        ops->grouped_matmul_backward(ctx, a->d_expert_h, a->dw2,
                                     a->d_expert_out, v.expert_h, a->w2,
                                     v.rd->group_rows, E, F, C);
        ops->swiglu_backward(ctx, a->d_expert_h13, a->d_expert_h, v.expert_h13,
                             v.rd->slots, F);
        ops->grouped_matmul_backward(ctx, a->d_expert_in, a->dw13,
                                     a->d_expert_h13, v.expert_in, a->w13,
                                     v.rd->group_rows, E, C, 2 * F);
        model_lap(m, MODEL_PART_experts, 1);
        ops->moe_permute_backward(ctx, a->d_norm_out, a->d_expert_in,
                                  v.rd->token_of_slot, v.rd->slots, C);
        model_lap(m, MODEL_PART_permute, 1);
        }

        /* Router: v.gate weights, then the balance losses. */
        memset(a->d_router_logits, 0, (size_t)N * E * sizeof(float));
        float *d_probs = NULL;
        if (m->hyper.aux_loss_coef > 0.0) {
            router_aux_loss(a->d_router_probs, v.router_probs, rd->selected, N,
                            m->last.total_tokens, K, E, m->hyper.aux_loss_coef);
            d_probs = a->d_router_probs;
        }
        ops->router_backward(ctx, a->d_router_logits, a->d_gate, d_probs,
                             v.router_probs, v.expert_index, v.gate, N, E, K);
        if (m->hyper.z_loss_coef > 0.0)
            router_z_loss(a->d_router_logits, v.router_probs, v.router_lse, N,
                          m->last.total_tokens, E, m->hyper.z_loss_coef);
        ops->matmul_backward(ctx, a->d_norm_out,
                             g->router + (size_t)l * E * C, a->d_router_logits,
                             v.ffn_norm_out, p->router + (size_t)l * E * C, N, C,
                             E);
        model_lap(m, MODEL_PART_router, 1);
        ops->rmsnorm_backward(ctx, a->d_resid, g->ffn_norm + (size_t)l * C,
                              a->d_norm_out, v.x_mid, p->ffn_norm + (size_t)l * C,
                              v.ffn_rstd, N, C);
        model_lap(m, MODEL_PART_norms, 1);

        /* Attention branch: d_resid is now the gradient of v.x_mid. */
        memset(a->d_att_out, 0, NC * sizeof(float));
        memset(a->d_qkv, 0, NC * 3 * sizeof(float));
        memset(a->d_norm_out, 0, NC * sizeof(float));
        ops->matmul_backward(ctx, a->d_att_out, g->wo + (size_t)l * C * C,
                             a->d_resid, v.att_out, p->wo + (size_t)l * C * C, N,
                             C, C);
        ops->attention_backward(ctx, a->d_qkv, a->d_att_out, v.qkv, v.probs, B, T,
                                C, H);
        ops->rope_backward(ctx, a->d_qkv, B, T, C, H, m->hyper.rope_theta);
        ops->matmul_backward(ctx, a->d_norm_out,
                             g->wqkv + (size_t)l * 3 * C * C, a->d_qkv,
                             v.attn_norm_out, p->wqkv + (size_t)l * 3 * C * C, N,
                             C, 3 * C);
        model_lap(m, MODEL_PART_attention, 1);
        ops->rmsnorm_backward(ctx, a->d_resid, g->attn_norm + (size_t)l * C,
                              a->d_norm_out, v.x, p->attn_norm + (size_t)l * C,
                              v.attn_rstd, N, C);
        model_lap(m, MODEL_PART_norms, 1);
    }
    ops->embedding_backward(ctx, g->wte, a->d_resid, a->inputs, N, C);
    model_lap(m, MODEL_PART_embedding, 1);
    /* The gradient reduction comes next: the emulated debt is paid first,
     * inside the last lap's time. */
    if (slowdown_active(&m->slowdown)) {
        model_slowdown_sync(m);
        bw[MODEL_PART_embedding] += clock_monotonic_s() - m->profile.lap_start;
        m->profile.lap_start = clock_monotonic_s();
    }
    /* The reduction and the optimizer are not the pass's compute. */
    slowdown_end(&m->slowdown);
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
    return m->param_count -
           (size_t)d->L * (d->E - d->K) * m->expert_param_count;
}

double model_flops_per_token(const model *m)
{
    const model_dims *d = &m->dims;
    double non_embedding = (double)model_active_params(m) -
                           (double)m->tensors[MODEL_TENSOR_wte].count;
    return 6.0 * non_embedding + 12.0 * d->L * d->C * d->T;
}

int model_set_comm(model *m, const comm *c, int first_sequence,
                   int global_sequences, moe_error *err)
{
    m->comm = c;
    m->first_sequence = first_sequence;
    m->global_sequences = global_sequences;
    free(m->reduce.expert_squares);
    m->reduce.expert_squares = calloc((size_t)m->dims.L * m->dims.E,
                                      sizeof *m->reduce.expert_squares);
    if (!m->reduce.expert_squares)
        return error_set(err, "out of memory for the gradient norm");
    if (activations_reserve_routing(m->acts, global_sequences,
                                    m->dims.E) < 0)
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
