/* Every op of the GPU backend against the CPU reference, forward and
 * backward, on random inputs (never zeros):
 * - outputs an op SETs are poisoned with NaN on the GPU side first, so an
 *   element the kernel forgets shows;
 * - outputs an op adds into (+=) start from the same random values on both
 *   sides, so the += contract is checked too;
 * - relative error (to the largest magnitude of the reference) against a
 *   stated tolerance: fp32 element-wise ops 1e-5; reductions, GEMMs and
 *   attention 1e-4 (fp32 GEMMs: TF32 off).
 * The CPU backward ops are themselves checked against finite differences
 * (tests/kernels/test_ops.c); the GPU's matmul, RMSNorm, SwiGLU and
 * attention backward are also checked against central differences of the
 * GPU's own forward (tolerance 1e-2 of the largest gradient entry), and
 * the GEMMs run again with TF32 (tolerance 1e-2) and bf16 (5e-2) tensor
 * cores. Without a device the
 * test exits 77 (skipped). */
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/gpu_backend.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static backend cpu, gpu;
static int failures, checks;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Magnitude in [0.1, 1] with a random sign: never zero. */
static float rng_value(void)
{
    float magnitude = 0.1f + 0.9f * (float)((rng_next() >> 11) * 0x1.0p-53);
    return (rng_next() & 1) ? magnitude : -magnitude;
}

/* A tensor on both sides: `host` for the CPU backend, `dev` (managed) for
 * the GPU backend. */
typedef struct pair {
    float *host, *dev;
    size_t n;
} pair;

static pair pair_random(size_t n)
{
    pair p = {malloc(n * sizeof(float) + 1), gpu_alloc(n * sizeof(float)), n};
    if (!p.host || !p.dev) {
        fprintf(stderr, "test_gpu_ops: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p.host[i] = p.dev[i] = rng_value();
    return p;
}

/* An output the op SETs: the GPU side starts as NaN. */
static pair pair_poisoned(size_t n)
{
    pair p = pair_random(n);
    for (size_t i = 0; i < n; i++)
        p.dev[i] = NAN;
    return p;
}

static void pair_free(pair *p)
{
    free(p->host);
    gpu_free(p->dev);
}

static int *ints_dev(const int *host, size_t n)
{
    int *d = gpu_alloc(n * sizeof *d);
    if (!d) {
        fprintf(stderr, "test_gpu_ops: out of memory\n");
        exit(1);
    }
    memcpy(d, host, n * sizeof *d);
    return d;
}

static void compare(const char *op, const char *what, const pair *p,
                    double tolerance)
{
    double worst = 0, scale = 0;
    size_t bad = 0;
    for (size_t i = 0; i < p->n; i++)
        scale = fmax(scale, fabs(p->host[i]));
    for (size_t i = 0; i < p->n; i++) {
        double err = fabs((double)p->dev[i] - p->host[i]) / fmax(scale, 1e-30);
        if (!(err <= tolerance))
            bad++;
        if (!(err <= worst))
            worst = isnan(err) ? INFINITY : err;
    }
    checks++;
    if (bad) {
        failures++;
        printf("FAIL %-28s %-10s %zu of %zu beyond %.0e (worst %.2e)\n", op,
               what, bad, p->n, tolerance, worst);
    } else {
        printf("ok   %-28s %-10s max rel err %.2e\n", op, what, worst);
    }
}

static const double tol_gemm = 1e-4;
static const double tol_elem = 1e-5, tol_reduce = 1e-4;

static void test_matmul_with(const backend *g, const char *label, int N,
                             int IC, int OC, double tolerance);

static void test_matmul(int N, int IC, int OC)
{
    test_matmul_with(&gpu, "matmul", N, IC, OC, tol_gemm);
}

static void test_matmul_with(const backend *g, const char *label, int N,
                             int IC, int OC, double tolerance)
{
    pair inp = pair_random((size_t)N * IC), w = pair_random((size_t)OC * IC);
    pair out = pair_poisoned((size_t)N * OC), dout = pair_random(out.n);
    pair dinp = pair_random(inp.n), dw = pair_random(w.n);
    char fwd[40], bwd[40];
    snprintf(fwd, sizeof fwd, "%s_forward", label);
    snprintf(bwd, sizeof bwd, "%s_backward", label);
    cpu.ops->matmul_forward(cpu.ctx, out.host, inp.host, w.host, N, IC, OC);
    g->ops->matmul_forward(g->ctx, out.dev, inp.dev, w.dev, N, IC, OC);
    compare(fwd, "out", &out, tolerance);
    cpu.ops->matmul_backward(cpu.ctx, dinp.host, dw.host, dout.host, inp.host,
                             w.host, N, IC, OC);
    g->ops->matmul_backward(g->ctx, dinp.dev, dw.dev, dout.dev, inp.dev,
                            w.dev, N, IC, OC);
    compare(bwd, "dinp", &dinp, tolerance);
    compare(bwd, "dweight", &dw, tolerance);
    pair_free(&inp), pair_free(&w), pair_free(&out), pair_free(&dout);
    pair_free(&dinp), pair_free(&dw);
}

/* ---- Finite differences of the GPU's own ops ------------------------ */

/* A forward pass to differentiate: writes `out` from the inputs it holds. */
typedef struct fd_forward {
    void (*run)(const struct fd_forward *f);
    float *out;
    size_t n_out;
    float *a, *b;  /* the op's inputs (b may be unused) */
    float *aux;    /* scratch the forward also writes (rstd, probs) */
    int N, IC, OC; /* shapes, as each op reads them */
} fd_forward;

/* L = Σ r·out in double. The kernels are deterministic, so outputs a
 * perturbation does not reach are bitwise equal in both evaluations and
 * cancel exactly in the difference. */
static double fd_loss(const fd_forward *f, const float *r)
{
    f->run(f);
    double sum = 0;
    for (size_t i = 0; i < f->n_out; i++)
        sum += (double)f->out[i] * r[i];
    return sum;
}

/* Central differences of L at 16 random coordinates of x against `grad`
 * (the op's backward with dout = r, into zeros). Stated tolerance: 1e-2 of
 * the largest gradient entry (fp32 forward, step 1e-3). */
static void fd_check(const char *op, const char *what, const fd_forward *f,
                     const float *r, float *x, size_t n, const float *grad)
{
    double scale = 1e-3, worst = 0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(grad[i]));
    for (int k = 0; k < 16; k++) {
        size_t i = (size_t)(rng_next() % n);
        float v = x[i];
        float up = v + 1e-3f, down = v - 1e-3f;
        x[i] = up;
        double plus = fd_loss(f, r);
        x[i] = down;
        double minus = fd_loss(f, r);
        x[i] = v;
        double fd = (plus - minus) / ((double)up - (double)down);
        double err = fabs(fd - grad[i]) / scale;
        if (!(err <= worst))
            worst = isnan(err) ? INFINITY : err;
    }
    f->run(f); /* leave the outputs as the unperturbed inputs give them */
    checks++;
    if (!(worst <= 1e-2)) {
        failures++;
        printf("FAIL %-28s %-10s finite differences off by %.2e\n", op, what,
               worst);
    } else {
        printf("ok   %-28s %-10s finite differences within %.2e\n", op,
               what, worst);
    }
}

static float *dev_zeros(size_t n)
{
    float *p = gpu_alloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "test_gpu_ops: out of memory\n");
        exit(1);
    }
    memset(p, 0, n * sizeof *p);
    return p;
}

static float *dev_random(size_t n)
{
    float *p = dev_zeros(n);
    for (size_t i = 0; i < n; i++)
        p[i] = rng_value();
    return p;
}

static void run_matmul(const fd_forward *f)
{
    gpu.ops->matmul_forward(gpu.ctx, f->out, f->a, f->b, f->N, f->IC, f->OC);
}

static void run_rmsnorm(const fd_forward *f)
{
    gpu.ops->rmsnorm_forward(gpu.ctx, f->out, f->aux, f->a, f->b, f->N,
                             f->IC, 1e-5f);
}

static void run_swiglu(const fd_forward *f)
{
    gpu.ops->swiglu_forward(gpu.ctx, f->out, f->a, f->N, f->IC);
}

/* attention: N sequences of T = IC positions, C = OC channels, 2 heads. */
static void run_attention(const fd_forward *f)
{
    gpu.ops->attention_forward(gpu.ctx, f->out, f->aux, f->a, f->N, f->IC,
                               f->OC, 2);
}

static void test_finite_differences(void)
{
    enum { N = 6, IC = 10, OC = 8, F = 7, T = 5, C = 8 };
    /* matmul: out (N, OC) = inp · wᵀ */
    fd_forward mm = {run_matmul, dev_zeros(N * OC), N * OC, dev_random(N * IC),
                     dev_random(OC * IC), NULL, N, IC, OC};
    float *r = dev_random(N * OC), *dinp = dev_zeros(N * IC),
          *dw = dev_zeros(OC * IC);
    gpu.ops->matmul_backward(gpu.ctx, dinp, dw, r, mm.a, mm.b, N, IC, OC);
    fd_check("matmul", "dinp", &mm, r, mm.a, N * IC, dinp);
    fd_check("matmul", "dweight", &mm, r, mm.b, OC * IC, dw);

    /* rmsnorm: out (N, IC) */
    fd_forward rn = {run_rmsnorm, dev_zeros(N * IC), N * IC,
                     dev_random(N * IC), dev_random(IC), dev_zeros(N), N, IC,
                     0};
    float *r2 = dev_random(N * IC), *dx = dev_zeros(N * IC),
          *dg = dev_zeros(IC);
    rn.run(&rn);
    gpu.ops->rmsnorm_backward(gpu.ctx, dx, dg, r2, rn.a, rn.b, rn.aux, N, IC);
    fd_check("rmsnorm", "dinp", &rn, r2, rn.a, N * IC, dx);
    fd_check("rmsnorm", "dweight", &rn, r2, rn.b, IC, dg);

    /* swiglu: gate_up (N, 2F) -> out (N, F) */
    fd_forward sw = {run_swiglu, dev_zeros(N * F), N * F, dev_random(N * 2 * F),
                     NULL, NULL, N, F, 0};
    float *r3 = dev_random(N * F), *dgu = dev_zeros(N * 2 * F);
    gpu.ops->swiglu_backward(gpu.ctx, dgu, r3, sw.a, N, F);
    fd_check("swiglu", "dgate_up", &sw, r3, sw.a, N * 2 * F, dgu);

    /* attention: qkv (2·T, 3C) -> out (2·T, C), 2 sequences */
    fd_forward at = {run_attention, dev_zeros(2 * T * C), 2 * T * C,
                     dev_random(2 * T * 3 * C), NULL,
                     dev_zeros(2 * 2 * T * T), 2, T, C};
    float *r4 = dev_random(2 * T * C), *dqkv = dev_zeros(2 * T * 3 * C);
    at.run(&at);
    gpu.ops->attention_backward(gpu.ctx, dqkv, r4, at.a, at.aux, 2, T, C, 2);
    fd_check("attention", "dqkv", &at, r4, at.a, 2 * T * 3 * C, dqkv);

    float *all[] = {mm.out, mm.a, mm.b, r, dinp, dw, rn.out, rn.a, rn.b,
                    rn.aux, r2, dx, dg, sw.out, sw.a, r3, dgu, at.out, at.a,
                    at.aux, r4, dqkv};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        gpu_free(all[i]);
}

/* Grouped GEMMs over G experts of `rows` rows each (zeros among them):
 * one cuBLAS grouped batched call per op where the build has it. */
static void test_grouped_with(const backend *g, const char *label,
                              const int *rows, int G, int IC, int OC,
                              double tolerance)
{
    int total = 0;
    for (int e = 0; e < G; e++)
        total += rows[e];
    int *rows_dev = ints_dev(rows, G);
    pair inp = pair_random((size_t)total * IC), out = pair_poisoned((size_t)total * OC);
    pair dout = pair_random(out.n), dinp = pair_poisoned(inp.n);
    pair *w = malloc(sizeof *w * G), *dw = malloc(sizeof *dw * G);
    const float **wh = malloc(sizeof *wh * G);
    float **dwh = malloc(sizeof *dwh * G);
    const float **wd = gpu_alloc(sizeof(float *) * G);
    float **dwd = gpu_alloc(sizeof(float *) * G);
    for (int e = 0; e < G; e++) {
        w[e] = pair_random((size_t)OC * IC);
        dw[e] = pair_random(w[e].n);
        wh[e] = w[e].host, wd[e] = w[e].dev;
        dwh[e] = dw[e].host, dwd[e] = dw[e].dev;
    }
    char fwd[48], bwd[48];
    snprintf(fwd, sizeof fwd, "%s_forward", label);
    snprintf(bwd, sizeof bwd, "%s_backward", label);
    cpu.ops->grouped_matmul_forward(cpu.ctx, out.host, inp.host, wh, rows, G,
                                    IC, OC);
    g->ops->grouped_matmul_forward(g->ctx, out.dev, inp.dev, wd, rows_dev,
                                   G, IC, OC);
    compare(fwd, "out", &out, tolerance);
    cpu.ops->grouped_matmul_backward(cpu.ctx, dinp.host, dwh, dout.host,
                                     inp.host, wh, rows, G, IC, OC);
    g->ops->grouped_matmul_backward(g->ctx, dinp.dev, dwd, dout.dev, inp.dev,
                                    wd, rows_dev, G, IC, OC);
    compare(bwd, "dinp", &dinp, tolerance);
    for (int e = 0; e < G; e++)
        compare(bwd, "dweights", &dw[e], tolerance);
    for (int e = 0; e < G; e++)
        pair_free(&w[e]), pair_free(&dw[e]);
    pair_free(&inp), pair_free(&out), pair_free(&dout), pair_free(&dinp);
    gpu_free(wd), gpu_free(dwd), gpu_free(rows_dev);
    free(w), free(dw), free(wh), free(dwh);
}

static void test_grouped(void)
{
    static const int few[5] = {7, 0, 13, 1, 30};
    test_grouped_with(&gpu, "grouped_matmul", few, 5, 24, 40, tol_gemm);
    /* 64 experts, as in a Ling-Lite layer, some without rows. */
    int many[64];
    for (int e = 0; e < 64; e++)
        many[e] = e % 9 == 4 ? 0 : (int)(rng_next() % 40) + 1;
    test_grouped_with(&gpu, "grouped_matmul_64", many, 64, 32, 48, tol_gemm);
}

static void test_rows(void)
{
    enum { N = 37, C = 48, V = 256, F = 40 };
    int tokens[N];
    for (int i = 0; i < N; i++)
        tokens[i] = (int)(rng_next() % V);
    tokens[3] = tokens[9] = tokens[20]; /* repeats meet in the backward */
    int *tokens_dev = ints_dev(tokens, N);
    pair wte = pair_random((size_t)V * C), out = pair_poisoned((size_t)N * C);
    pair dout = pair_random(out.n), dwte = pair_random(wte.n);
    cpu.ops->embedding_forward(cpu.ctx, out.host, tokens, wte.host, N, C);
    gpu.ops->embedding_forward(gpu.ctx, out.dev, tokens_dev, wte.dev, N, C);
    compare("embedding_forward", "out", &out, tol_elem);
    cpu.ops->embedding_backward(cpu.ctx, dwte.host, dout.host, tokens, N, C);
    gpu.ops->embedding_backward(gpu.ctx, dwte.dev, dout.dev, tokens_dev, N, C);
    compare("embedding_backward", "dwte", &dwte, tol_elem);

    pair x = pair_random((size_t)N * C), g = pair_random(C);
    pair y = pair_poisoned(x.n), rstd = pair_poisoned(N);
    pair dx = pair_random(x.n), dg = pair_random(C), dy = pair_random(x.n);
    cpu.ops->rmsnorm_forward(cpu.ctx, y.host, rstd.host, x.host, g.host, N, C,
                             1e-5f);
    gpu.ops->rmsnorm_forward(gpu.ctx, y.dev, rstd.dev, x.dev, g.dev, N, C,
                             1e-5f);
    compare("rmsnorm_forward", "out", &y, tol_reduce);
    compare("rmsnorm_forward", "rstd", &rstd, tol_reduce);
    cpu.ops->rmsnorm_backward(cpu.ctx, dx.host, dg.host, dy.host, x.host,
                              g.host, rstd.host, N, C);
    gpu.ops->rmsnorm_backward(gpu.ctx, dx.dev, dg.dev, dy.dev, x.dev, g.dev,
                              rstd.dev, N, C);
    compare("rmsnorm_backward", "dinp", &dx, tol_reduce);
    compare("rmsnorm_backward", "dweight", &dg, tol_reduce);

    pair gu = pair_random((size_t)N * 2 * F), sw = pair_poisoned((size_t)N * F);
    pair dsw = pair_random(sw.n), dgu = pair_poisoned(gu.n);
    cpu.ops->swiglu_forward(cpu.ctx, sw.host, gu.host, N, F);
    gpu.ops->swiglu_forward(gpu.ctx, sw.dev, gu.dev, N, F);
    compare("swiglu_forward", "out", &sw, tol_elem);
    cpu.ops->swiglu_backward(cpu.ctx, dgu.host, dsw.host, gu.host, N, F);
    gpu.ops->swiglu_backward(gpu.ctx, dgu.dev, dsw.dev, gu.dev, N, F);
    compare("swiglu_backward", "dgate_up", &dgu, tol_elem);

    cpu.ops->add_inplace(cpu.ctx, dx.host, x.host, x.n);
    gpu.ops->add_inplace(gpu.ctx, dx.dev, x.dev, x.n);
    compare("add_inplace", "out", &dx, tol_elem);
    double s_cpu = cpu.ops->sum_squares(cpu.ctx, x.host, x.n);
    double s_gpu = gpu.ops->sum_squares(gpu.ctx, x.dev, x.n);
    checks++;
    if (!(fabs(s_gpu - s_cpu) <= 1e-9 * s_cpu)) {
        failures++;
        printf("FAIL sum_squares %.17g, CPU %.17g\n", s_gpu, s_cpu);
    }

    pair p = pair_random(x.n), m = pair_random(x.n), v = pair_random(x.n);
    for (size_t i = 0; i < v.n; i++)
        v.host[i] = v.dev[i] = fabsf(v.host[i]);
    cpu.ops->adamw_update(cpu.ctx, p.host, dx.host, m.host, v.host, p.n, 1e-3f,
                          0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, 3);
    gpu.ops->adamw_update(gpu.ctx, p.dev, dx.dev, m.dev, v.dev, p.n, 1e-3f,
                          0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, 3);
    compare("adamw_update", "param", &p, tol_elem);
    compare("adamw_update", "m", &m, tol_elem);
    compare("adamw_update", "v", &v, tol_elem);

    pair *all[] = {&wte, &out, &dout, &dwte, &x, &g, &y, &rstd, &dx, &dg,
                   &dy, &gu, &sw, &dsw, &dgu, &p, &m, &v};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    gpu_free(tokens_dev);
}

static void test_attention(void)
{
    enum { B = 2, T = 13, C = 32, H = 4 };
    pair qkv = pair_random((size_t)B * T * 3 * C), q2 = pair_random(qkv.n);
    memcpy(q2.host, qkv.host, qkv.n * sizeof(float));
    memcpy(q2.dev, qkv.dev, qkv.n * sizeof(float));
    cpu.ops->rope_forward(cpu.ctx, qkv.host, B, T, C, H, 10000.0f);
    gpu.ops->rope_forward(gpu.ctx, qkv.dev, B, T, C, H, 10000.0f);
    compare("rope_forward", "qkv", &qkv, tol_elem);
    cpu.ops->rope_backward(cpu.ctx, q2.host, B, T, C, H, 10000.0f);
    gpu.ops->rope_backward(gpu.ctx, q2.dev, B, T, C, H, 10000.0f);
    compare("rope_backward", "dqkv", &q2, tol_elem);

    pair out = pair_poisoned((size_t)B * T * C);
    pair probs = pair_poisoned((size_t)B * H * T * T);
    pair dout = pair_random(out.n), dqkv = pair_random(qkv.n);
    cpu.ops->attention_forward(cpu.ctx, out.host, probs.host, qkv.host, B, T,
                               C, H);
    gpu.ops->attention_forward(gpu.ctx, out.dev, probs.dev, qkv.dev, B, T, C,
                               H);
    compare("attention_forward", "out", &out, tol_reduce);
    compare("attention_forward", "probs", &probs, tol_reduce);
    cpu.ops->attention_backward(cpu.ctx, dqkv.host, dout.host, qkv.host,
                                probs.host, B, T, C, H);
    gpu.ops->attention_backward(gpu.ctx, dqkv.dev, dout.dev, qkv.dev,
                                probs.dev, B, T, C, H);
    compare("attention_backward", "dqkv", &dqkv, tol_reduce);
    pair_free(&qkv), pair_free(&q2), pair_free(&out), pair_free(&probs);
    pair_free(&dout), pair_free(&dqkv);
}

static void test_router_and_dispatch(void)
{
    enum { N = 29, E = 8, K = 2, C = 24, V = 256 };
    pair logits = pair_random((size_t)N * E), bias = pair_random(E);
    pair probs = pair_poisoned(logits.n), lse = pair_poisoned(N);
    pair gate = pair_poisoned((size_t)N * K);
    int index_host[N * K];
    int *index_dev = gpu_alloc(sizeof index_host);
    cpu.ops->router_forward(cpu.ctx, probs.host, lse.host, index_host,
                            gate.host, logits.host, bias.host, N, E, K);
    gpu.ops->router_forward(gpu.ctx, probs.dev, lse.dev, index_dev, gate.dev,
                            logits.dev, bias.dev, N, E, K);
    compare("router_forward", "probs", &probs, tol_reduce);
    compare("router_forward", "lse", &lse, tol_reduce);
    compare("router_forward", "gate", &gate, tol_reduce);
    checks++;
    if (memcmp(index_host, index_dev, sizeof index_host) != 0) {
        failures++;
        printf("FAIL router_forward expert_index differs\n");
    }
    pair dgate = pair_random(gate.n), dprobs = pair_random(probs.n);
    pair dlogits = pair_random(logits.n);
    cpu.ops->router_backward(cpu.ctx, dlogits.host, dgate.host, dprobs.host,
                             probs.host, index_host, gate.host, N, E, K);
    gpu.ops->router_backward(gpu.ctx, dlogits.dev, dgate.dev, dprobs.dev,
                             probs.dev, index_dev, gate.dev, N, E, K);
    compare("router_backward", "dlogits", &dlogits, tol_reduce);

    /* Dispatch: slots in expert order, one dropped assignment. */
    int slot_of[N * K], token_of_slot[N * K], S = 0;
    for (int e = 0; e < E; e++)
        for (int t = 0; t < N; t++)
            for (int k = 0; k < K; k++)
                if (index_host[t * K + k] == e) {
                    slot_of[t * K + k] = S;
                    token_of_slot[S++] = t;
                }
    slot_of[5] = -1;
    int *slot_dev = ints_dev(slot_of, N * K), *tok_dev = ints_dev(token_of_slot, S);
    pair x = pair_random((size_t)N * C), perm = pair_poisoned((size_t)S * C);
    cpu.ops->moe_permute(cpu.ctx, perm.host, x.host, token_of_slot, S, C);
    gpu.ops->moe_permute(gpu.ctx, perm.dev, x.dev, tok_dev, S, C);
    compare("moe_permute", "out", &perm, tol_elem);
    pair dperm = pair_random(perm.n), dx = pair_random(x.n);
    cpu.ops->moe_permute_backward(cpu.ctx, dx.host, dperm.host, token_of_slot,
                                  S, C);
    gpu.ops->moe_permute_backward(gpu.ctx, dx.dev, dperm.dev, tok_dev, S, C);
    compare("moe_permute_backward", "dinp", &dx, tol_elem);
    pair y = pair_random(x.n);
    cpu.ops->moe_unpermute(cpu.ctx, y.host, perm.host, slot_of, gate.host, N,
                           K, C);
    gpu.ops->moe_unpermute(gpu.ctx, y.dev, perm.dev, slot_dev, gate.dev, N, K,
                           C);
    compare("moe_unpermute", "out", &y, tol_elem);
    pair dexp = pair_random(perm.n), dg = pair_poisoned(gate.n);
    cpu.ops->moe_unpermute_backward(cpu.ctx, dexp.host, dg.host, y.host,
                                    perm.host, slot_of, gate.host, N, K, C);
    gpu.ops->moe_unpermute_backward(gpu.ctx, dexp.dev, dg.dev, y.dev, perm.dev,
                                    slot_dev, gate.dev, N, K, C);
    compare("moe_unpermute_backward", "dexpert", &dexp, tol_elem);
    compare("moe_unpermute_backward", "dgate", &dg, tol_reduce);

    int targets[N];
    for (int i = 0; i < N; i++)
        targets[i] = (int)(rng_next() % V);
    int *targets_dev = ints_dev(targets, N);
    pair ce_logits = pair_random((size_t)N * V), losses = pair_poisoned(N);
    pair dl = pair_poisoned(ce_logits.n);
    cpu.ops->crossentropy_forward_backward(cpu.ctx, losses.host, dl.host,
                                           ce_logits.host, targets, N, V,
                                           1.0f / N);
    gpu.ops->crossentropy_forward_backward(gpu.ctx, losses.dev, dl.dev,
                                           ce_logits.dev, targets_dev, N, V,
                                           1.0f / N);
    compare("crossentropy", "losses", &losses, tol_reduce);
    compare("crossentropy", "dlogits", &dl, tol_reduce);

    pair *all[] = {&logits, &bias, &probs, &lse, &gate, &dgate, &dprobs,
                   &dlogits, &x, &perm, &dperm, &dx, &y, &dexp, &dg,
                   &ce_logits, &losses, &dl};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    gpu_free(index_dev), gpu_free(slot_dev), gpu_free(tok_dev);
    gpu_free(targets_dev);
}

int main(void)
{
    char why[256] = "";
    if (gpu_device_count(why, sizeof why) == 0) {
        printf("skipped: %s\n", why);
        return 77;
    }
    if (cpu_backend_init(&cpu, 1) < 0 ||
        gpu_backend_init(&gpu, 0, GPU_PRECISION_FP32, why, sizeof why) < 0) {
        printf("FAIL: cannot start the backends: %s\n", why);
        return 1;
    }
    test_matmul(37, 48, 40);
    test_matmul(128, 256, 512);
    test_grouped();
    test_rows();
    test_attention();
    test_router_and_dispatch();
    test_finite_differences();
    /* Tensor cores on rounded inputs, fp32 accumulation: TF32 (precision:
     * tf32, 10-bit mantissa, unit roundoff 2^-11) within 1e-2, bf16
     * (precision: bf16, 7-bit mantissa, 2^-8) within 5e-2. Builds without
     * cuBLAS refuse both, and say so. */
    static const struct {
        int precision;
        const char *label;
        double tolerance;
    } reduced[] = {{GPU_PRECISION_TF32, "matmul_tf32", 1e-2},
                   {GPU_PRECISION_BF16, "matmul_bf16", 5e-2}};
    for (size_t i = 0; i < sizeof reduced / sizeof reduced[0]; i++) {
        backend low;
        if (gpu_backend_init(&low, 0, reduced[i].precision, why,
                             sizeof why) == 0) {
            test_matmul_with(&low, reduced[i].label, 128, 256, 512,
                             reduced[i].tolerance);
            static const int rows[6] = {40, 0, 17, 64, 1, 33};
            char label[32];
            snprintf(label, sizeof label, "grouped_%s", reduced[i].label);
            test_grouped_with(&low, label, rows, 6, 256, 128,
                              reduced[i].tolerance);
            gpu_backend_finish(&low);
        } else if (strstr(why, "needs cuBLAS")) {
            printf("%s: skipped (%s)\n", reduced[i].label, why);
        } else {
            failures++;
            printf("FAIL: cannot start the %s backend: %s\n",
                   reduced[i].label, why);
        }
    }
    if (gpu_backend_error()) {
        failures++;
        printf("FAIL: %s\n", gpu_backend_error());
    }
    /* The trainer reads failures through the table's optional slot. */
    checks++;
    if (!gpu.ops->last_error ||
        gpu.ops->last_error(gpu.ctx) != gpu_backend_error()) {
        failures++;
        printf("FAIL: the table's last_error slot is not the backend's "
               "failure record\n");
    }
    gpu_backend_finish(&gpu);
    cpu_backend_finish(&cpu);
    printf("%d of %d checks failed\n", failures, checks);
    return failures ? 1 : 0;
}
