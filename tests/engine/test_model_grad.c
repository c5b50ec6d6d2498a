/* Whole-model gradient check: the analytic gradient of ce + aux + z loss
 * against central finite differences, for a sample of every parameter
 * tensor of a small model, dropless and with a capacity limit, and with
 * bias balancing and the routing warm-up active (selection by biased,
 * noise-mixed scores is piecewise constant and treated as constant). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/config/config.h"
#include "engine/model/model.h"
#include "engine/core/rng.h"
#include "kernels/cpu/cpu_backend.h"

static double objective(model *m, const int *inputs, const int *targets, int B)
{
    double ce = model_forward(m, inputs, targets, B);
    return ce + m->last.aux_loss + m->last.z_loss;
}

static int routing_equal(const model *m, const int *routing, size_t n)
{
    return memcmp(m->last.expert_index, routing, n * sizeof(int)) == 0;
}

/* Bias balancing and warm-up state through the model's step API: step 1
 * initialises the logit statistics and moves the bias by its loads; a
 * forward outside a training step changes neither. Then the bias is made
 * random and step 4 of a 10-step warm-up (w = 0.3) is left begun, so the
 * gradient check runs on warm-up routing. Returns nonzero on failure. */
static int prepare_balance(model *m, const int *inputs, const int *targets,
                           int B, rng *r)
{
    const int L = m->dims.L, E = m->dims.E, N = B * m->dims.T, K = m->dims.K;
    int failed = 0, load[64];
    model_begin_train_step(m, 1);
    model_forward(m, inputs, targets, B);
    model_expert_load(m, load);
    model_end_train_step(m);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            int above = E * load[l * E + e] - N * K;
            float want = above < 0 ? 0.01f : above > 0 ? -0.01f : 0.0f;
            if (m->routing.bias[l * E + e] != want) {
                printf("FAIL: bias[%d][%d] %g after load %d, want %g\n", l,
                       e, m->routing.bias[l * E + e], load[l * E + e], want);
                failed = 1;
            }
        }
    if (!m->routing.stats_ready || !(m->routing.logit_std[0] > 0) ||
        m->routing.mix != 0.0) {
        printf("FAIL: after step 1: stats ready %d, std %g, mix %g\n",
               m->routing.stats_ready, m->routing.logit_std[0],
               m->routing.mix);
        failed = 1;
    }
    float bias[64];
    double mean = m->routing.logit_mean[1], var = m->routing.logit_var[1];
    memcpy(bias, m->routing.bias, (size_t)L * E * sizeof(float));
    model_forward(m, inputs, targets, B); /* as validation does */
    model_end_train_step(m);              /* no step begun: nothing */
    if (memcmp(bias, m->routing.bias, (size_t)L * E * sizeof(float)) != 0 ||
        mean != m->routing.logit_mean[1] || var != m->routing.logit_var[1]) {
        printf("FAIL: a forward outside a training step changed the "
               "balancing state\n");
        failed = 1;
    }

    for (int i = 0; i < L * E; i++)
        m->routing.bias[i] = (float)(0.05 * rng_normal(r));
    model_forward(m, inputs, targets, B);
    size_t count = (size_t)L * N * K;
    int *plain = malloc(count * sizeof *plain);
    memcpy(plain, m->last.expert_index, count * sizeof *plain);
    model_begin_train_step(m, 4);
    model_forward(m, inputs, targets, B);
    size_t changed = 0;
    for (size_t i = 0; i < count; i++)
        changed += plain[i] != m->last.expert_index[i];
    free(plain);
    if (m->routing.mix != 0.3 || changed < count / 4) {
        printf("FAIL: warm-up at w %g changed only %zu of %zu choices\n",
               m->routing.mix, changed, count);
        failed = 1;
    }
    return failed;
}

/* Where a parameter is sampled from: `count` elements at `offset` of
 * each of `slots` slots `stride` apart (one slot for a dense tensor; one
 * per held expert for an expert tensor), in the params and grads slabs. */
typedef struct sample_space {
    const char *name;
    float *params, *grads;
    size_t slots, stride, offset, count;
} sample_space;

static int sample_spaces(model *m, sample_space *out)
{
    int n = 0;
    for (int i = 0; i < MODEL_TENSOR_COUNT; i++) {
        const model_tensor_info *t = &m->tensors[i];
        out[n++] = (sample_space){t->name, m->param_memory, m->grad_memory,
                                  1, 0, t->offset, t->count};
    }
    const expert_store *st = &m->experts;
    out[n++] = (sample_space){"expert_w13", st->params, st->grads,
                              (size_t)st->capacity, st->slot_count, 0,
                              st->w13_count};
    out[n++] = (sample_space){"expert_w2", st->params, st->grads,
                              (size_t)st->capacity, st->slot_count,
                              st->w13_count, st->slot_count - st->w13_count};
    return n;
}

static int check(const char *label, double capacity_factor, int n_shared,
                 int balance)
{
    config cfg;
    config_defaults(&cfg);
    cfg.model.d_model = 16;
    cfg.model.n_layers = 2;
    cfg.model.n_heads = 2;
    cfg.model.seq_len = 8;
    cfg.model.init_std = 0.25;
    cfg.moe.n_experts = 4;
    cfg.moe.top_k = 2;
    cfg.moe.n_shared = n_shared;
    cfg.moe.expert_hidden = 12;
    cfg.moe.capacity_factor = capacity_factor;
    cfg.moe.aux_loss_coef = 0.1;
    cfg.moe.z_loss_coef = 0.01;
    if (balance) {
        cfg.balance.bias_update_rate = 0.01;
        cfg.balance.routing_warmup_steps = 10;
    }
    const int B = 3, N = B * cfg.model.seq_len;

    backend be;
    moe_error err;
    model *m = NULL;
    if (cpu_backend_init(&be, 1) < 0 ||
        model_create(&m, &cfg, &be, B, MODEL_EXPERTS_LOCAL, &err) < 0) {
        printf("FAIL: cannot build the model\n");
        return 1;
    }
    model_init_params(m, 1234);
    rng r;
    rng_seed(&r, 99, 0);
    int inputs[64], targets[64];
    for (int i = 0; i < N; i++) {
        inputs[i] = (int)rng_below(&r, 256);
        targets[i] = (int)rng_below(&r, 256);
    }
    int failed = balance && prepare_balance(m, inputs, targets, B, &r);

    objective(m, inputs, targets, B);
    size_t routing_count = (size_t)cfg.model.n_layers * N * cfg.moe.top_k;
    int *routing = malloc(routing_count * sizeof *routing);
    memcpy(routing, m->last.expert_index, routing_count * sizeof *routing);
    int dropped = model_dropped_assignments(m);
    model_zero_grad(m);
    model_backward(m);

    const double h = 2e-3;
    int checked = 0, skipped = 0, bad = 0;
    double diff2 = 0, norm2 = 0;
    sample_space spaces[MODEL_TENSOR_COUNT + 2];
    int n_spaces = sample_spaces(m, spaces);
    for (int i = 0; i < n_spaces; i++) {
        const sample_space *t = &spaces[i];
        if (t->count == 0)
            continue;
        double worst = 0;
        for (int sample = 0; sample < 24; sample++) {
            size_t j = (size_t)rng_below(&r, (uint64_t)t->slots) * t->stride +
                       t->offset + (size_t)rng_below(&r, t->count);
            float saved = t->params[j];
            t->params[j] = saved + (float)h;
            double up = objective(m, inputs, targets, B);
            int same = routing_equal(m, routing, routing_count);
            t->params[j] = saved - (float)h;
            double down = objective(m, inputs, targets, B);
            same &= routing_equal(m, routing, routing_count);
            t->params[j] = saved;
            if (!same) { /* top-k flipped: the loss is not smooth here */
                skipped++;
                continue;
            }
            double numeric = (up - down) / (2 * h);
            double analytic = t->grads[j];
            double err_abs = fabs(numeric - analytic);
            diff2 += err_abs * err_abs;
            norm2 += numeric * numeric;
            checked++;
            if (err_abs > 3e-4 + 3e-2 * fabs(numeric)) {
                bad++;
                printf("  %s[%zu]: analytic %.6e numeric %.6e\n", t->name,
                       j, analytic, numeric);
            }
            worst = fmax(worst, err_abs);
        }
        printf("  %-11s max |analytic - numeric| = %.2e\n", t->name, worst);
    }
    double relative = sqrt(diff2 / norm2);
    failed |= bad > 0 || relative > 1e-2 || skipped * 10 > checked;
    printf("%s %s: %d checked, %d skipped (routing flipped), %d bad, "
           "relative error %.2e, %d dropped assignments\n",
           failed ? "FAIL" : "ok", label, checked, skipped, bad, relative,
           dropped);
    if (capacity_factor > 0 && dropped == 0) {
        printf("FAIL %s: the capacity limit dropped nothing\n", label);
        failed = 1;
    }
    free(routing);
    model_destroy(m);
    cpu_backend_finish(&be);
    return failed;
}

int main(void)
{
    int failed = 0;
    failed |= check("dropless, 1 shared expert", 0.0, 1, 0);
    failed |= check("capacity 0.75, no shared expert", 0.75, 0, 0);
    failed |= check("bias balancing and routing warm-up, 1 shared expert",
                    0.0, 1, 1);
    return failed;
}
