/* Numerical checks of the CPU backend, op by op:
 * - every backward against central finite differences of the forward, on
 *   every element of small random inputs, with the loss L = Σ r ⊙ out for
 *   a random r (so the backward runs with dout = r);
 * - the += contract of every backward (grads pre-filled with random values
 *   must come back as prefill + gradient) and skipped NULL outputs;
 * - forwards against naive references computed in double;
 * - bitwise determinism: threads=2 run twice, and threads=1 against
 *   threads=2 for the ops that do not go through BLAS.
 * Prints one line per check and exits 1 when any fails.
 */
#include "kernels/cpu/cpu_backend.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static backend be1; /* threads = 1: gradient and reference checks */
static backend be2; /* threads = 2: determinism */
static int failures;

/* ---- random inputs (splitmix64, fixed seed) ---- */

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(void) /* [0, 1) */
{
    return (double)(rng_next() >> 11) * 0x1.0p-53;
}

/* Magnitude in [0.1, 1] with a random sign: never zero. */
static float rng_value(void)
{
    float magnitude = 0.1f + 0.9f * (float)rng_unit();
    return (rng_next() & 1) ? magnitude : -magnitude;
}

static int rng_int(int n)
{
    return (int)(rng_next() % (uint64_t)n);
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_ops: out of memory\n");
        exit(1);
    }
    return p;
}

static float *new_random(size_t n, float scale)
{
    float *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = scale * rng_value();
    return x;
}

static float *new_zeros(size_t n)
{
    float *x = xmalloc(n * sizeof *x);
    memset(x, 0, n * sizeof *x);
    return x;
}

static float *new_copy(const float *src, size_t n)
{
    float *x = xmalloc(n * sizeof *x);
    memcpy(x, src, n * sizeof *x);
    return x;
}

static double *new_doubles(size_t n)
{
    double *x = xmalloc(n * sizeof *x);
    memset(x, 0, n * sizeof *x);
    return x;
}

static void shuffle(int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = rng_int(i + 1);
        int tmp = a[i];
        a[i] = a[j];
        a[j] = tmp;
    }
}

static double dot_double(const float *a, const float *b, size_t n)
{
    double sum = 0.0;
    for (size_t i = 0; i < n; i++)
        sum += (double)a[i] * b[i];
    return sum;
}

/* ---- comparisons ---- */

typedef struct tolerance {
    double atol, rtol;
} tolerance;

/* Passes when every |got − want| ≤ atol + rtol·max(|got|, |want|).
 * max_rel is reported over the elements larger than atol. */
static void compare(const char *op, const char *what, const float *got,
                    const double *want, size_t n, tolerance tol)
{
    double max_abs = 0.0, max_rel = 0.0;
    size_t bad = 0, first_bad = 0;
    for (size_t i = 0; i < n; i++) {
        double a = got[i], w = want[i];
        double err = fabs(a - w);
        double magnitude = fmax(fabs(a), fabs(w));
        if (!(err <= tol.atol + tol.rtol * magnitude)) { /* NaN fails */
            if (bad++ == 0)
                first_bad = i;
        }
        if (err > max_abs || isnan(err))
            max_abs = err;
        if (magnitude > tol.atol && err / magnitude > max_rel)
            max_rel = err / magnitude;
    }
    printf("%-3s %-14s %-30s n=%-5zu max_abs=%.2e max_rel=%.2e "
           "(atol %.0e rtol %.0e)\n",
           bad ? "BAD" : "ok", op, what, n, max_abs, max_rel, tol.atol,
           tol.rtol);
    if (bad) {
        printf("    %zu elements out of tolerance, first [%zu]: got %.9g "
               "want %.9g\n",
               bad, first_bad, (double)got[first_bad], want[first_bad]);
        failures++;
    }
}

static void check(const char *op, const char *what, int ok)
{
    printf("%-3s %-14s %s\n", ok ? "ok" : "BAD", op, what);
    if (!ok)
        failures++;
}

static void check_same_bits(const char *op, const char *what, const void *a,
                            const void *b, size_t bytes)
{
    check(op, what, memcmp(a, b, bytes) == 0);
}

/* ---- finite-difference gradient check ---- */

/* Runs the forward at the current inputs and returns Σ r ⊙ out in double. */
typedef double (*loss_fn)(void *state);
/* Runs the forward (to refresh saved activations), then the backward with
 * dout = r, into the grad buffers of the targets. */
typedef void (*backward_fn)(void *state);

typedef struct grad_target {
    const char *name;
    float *x;    /* input, perturbed in place */
    float *grad; /* the backward's output for x */
    size_t n;
    int set;     /* the backward overwrites grad (=) instead of adding */
} grad_target;

/* Central differences, divided by the perturbation actually applied in
 * float so the rounding of x ± eps does not count as error. */
static void numeric_grad(loss_fn loss, void *state, float *x, size_t n,
                         float eps, double *grad)
{
    for (size_t i = 0; i < n; i++) {
        float saved = x[i];
        float plus = saved + eps, minus = saved - eps;
        x[i] = plus;
        double loss_plus = loss(state);
        x[i] = minus;
        double loss_minus = loss(state);
        x[i] = saved;
        grad[i] = (loss_plus - loss_minus) / ((double)plus - (double)minus);
    }
}

/* The += check: adding into a pre-filled buffer must equal prefill plus
 * the gradient up to float rounding of that one extra addition path. */
static const tolerance accumulate_tol = {1e-6, 1e-6};

/* Checks the backward of one op against finite differences for every
 * target. accumulates is 0 for backwards that transform in place (RoPE). */
static void grad_check(const char *op, void *state, loss_fn loss,
                       backward_fn backward, grad_target *targets,
                       int n_targets, int accumulates, float eps,
                       tolerance tol)
{
    enum { MAX_TARGETS = 8 };
    float *analytic[MAX_TARGETS];
    char what[64];
    if (n_targets > MAX_TARGETS) {
        fprintf(stderr, "test_ops: grad_check takes %d targets at most\n",
                MAX_TARGETS);
        exit(1);
    }
    for (int i = 0; i < n_targets; i++)
        memset(targets[i].grad, 0, targets[i].n * sizeof(float));
    backward(state);
    for (int i = 0; i < n_targets; i++)
        analytic[i] = new_copy(targets[i].grad, targets[i].n);

    if (accumulates) {
        float *prefill[MAX_TARGETS];
        for (int i = 0; i < n_targets; i++) {
            prefill[i] = new_random(targets[i].n, 1.0f);
            memcpy(targets[i].grad, prefill[i], targets[i].n * sizeof(float));
        }
        backward(state);
        for (int i = 0; i < n_targets; i++) {
            double *want = new_doubles(targets[i].n);
            for (size_t j = 0; j < targets[i].n; j++)
                want[j] = (targets[i].set ? 0.0 : (double)prefill[i][j]) +
                          analytic[i][j];
            snprintf(what, sizeof what, "d%s %s (prefilled)", targets[i].name,
                     targets[i].set ? "=" : "+=");
            compare(op, what, targets[i].grad, want, targets[i].n,
                    accumulate_tol);
            free(want);
            free(prefill[i]);
        }
    }

    for (int i = 0; i < n_targets; i++) {
        double *numeric = new_doubles(targets[i].n);
        numeric_grad(loss, state, targets[i].x, targets[i].n, eps, numeric);
        snprintf(what, sizeof what, "d%s vs finite diff", targets[i].name);
        compare(op, what, analytic[i], numeric, targets[i].n, tol);
        free(numeric);
        free(analytic[i]);
    }
}

/* FD step and tolerance shared by the gradient checks. The loss is
 * accumulated in double but the forward runs in float, so the numeric
 * gradient carries ~1e-7/eps of rounding noise per output the input
 * touches, plus O(eps²) truncation for nonlinear ops. */
static const float fd_eps = 1e-2f;
static const tolerance fd_tol = {2e-4, 2e-3};

/* ---- matmul ---- */

typedef struct matmul_case {
    int N, IC, OC;
    float *inp, *weight, *out, *r, *dinp, *dweight;
} matmul_case;

static double matmul_loss(void *state)
{
    matmul_case *c = state;
    be1.ops->matmul_forward(be1.ctx, c->out, c->inp, c->weight, c->N, c->IC,
                            c->OC);
    return dot_double(c->r, c->out, (size_t)c->N * c->OC);
}

static void matmul_grad(void *state)
{
    matmul_case *c = state;
    be1.ops->matmul_backward(be1.ctx, c->dinp, c->dweight, c->r, c->inp,
                             c->weight, c->N, c->IC, c->OC);
}

static void naive_matmul(double *out, const float *inp, const float *weight,
                         int N, int IC, int OC)
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double sum = 0.0;
            for (int i = 0; i < IC; i++)
                sum += (double)inp[n * IC + i] * weight[o * IC + i];
            out[n * OC + o] = sum;
        }
}

static void test_matmul(void)
{
    /* forward against a triple loop, big enough for real GEMM kernels */
    {
        int N = 37, IC = 70, OC = 45;
        float *inp = new_random((size_t)N * IC, 1.0f);
        float *weight = new_random((size_t)OC * IC, 1.0f);
        float *out = new_zeros((size_t)N * OC);
        double *want = new_doubles((size_t)N * OC);
        naive_matmul(want, inp, weight, N, IC, OC);
        be1.ops->matmul_forward(be1.ctx, out, inp, weight, N, IC, OC);
        compare("matmul", "forward vs naive (37x70x45)", out, want,
                (size_t)N * OC, (tolerance){1e-5, 1e-5});
        be2.ops->matmul_forward(be2.ctx, out, inp, weight, N, IC, OC);
        compare("matmul", "forward threads=2 vs naive", out, want,
                (size_t)N * OC, (tolerance){1e-5, 1e-5});
        free(inp), free(weight), free(out), free(want);
    }

    matmul_case c = {.N = 7, .IC = 5, .OC = 6};
    c.inp = new_random((size_t)c.N * c.IC, 1.0f);
    c.weight = new_random((size_t)c.OC * c.IC, 1.0f);
    c.out = new_zeros((size_t)c.N * c.OC);
    c.r = new_random((size_t)c.N * c.OC, 1.0f);
    c.dinp = new_zeros((size_t)c.N * c.IC);
    c.dweight = new_zeros((size_t)c.OC * c.IC);
    grad_target targets[] = {
        {"inp", c.inp, c.dinp, (size_t)c.N * c.IC, 0},
        {"weight", c.weight, c.dweight, (size_t)c.OC * c.IC, 0},
    };
    grad_check("matmul", &c, matmul_loss, matmul_grad, targets, 2, 1, fd_eps,
               fd_tol);

    /* with one output NULL, the other equals the full backward's */
    float *dinp_all = new_zeros((size_t)c.N * c.IC);
    float *dweight_all = new_zeros((size_t)c.OC * c.IC);
    be1.ops->matmul_backward(be1.ctx, dinp_all, dweight_all, c.r, c.inp,
                             c.weight, c.N, c.IC, c.OC);
    memset(c.dinp, 0, (size_t)c.N * c.IC * sizeof(float));
    memset(c.dweight, 0, (size_t)c.OC * c.IC * sizeof(float));
    be1.ops->matmul_backward(be1.ctx, c.dinp, NULL, c.r, c.inp, c.weight,
                             c.N, c.IC, c.OC);
    be1.ops->matmul_backward(be1.ctx, NULL, c.dweight, c.r, c.inp, c.weight,
                             c.N, c.IC, c.OC);
    check_same_bits("matmul", "dinp alone (dweight NULL) matches", c.dinp,
                    dinp_all, (size_t)c.N * c.IC * sizeof(float));
    check_same_bits("matmul", "dweight alone (dinp NULL) matches", c.dweight,
                    dweight_all, (size_t)c.OC * c.IC * sizeof(float));
    free(dinp_all), free(dweight_all);
    free(c.inp), free(c.weight), free(c.out), free(c.r), free(c.dinp),
        free(c.dweight);
}

/* ---- grouped matmul ---- */

enum { GROUPS = 4 };

typedef struct grouped_case {
    int rows, IC, OC;
    int group_rows[GROUPS];
    float *inp, *out, *r, *dinp;
    float *weights[GROUPS], *dweights[GROUPS];
} grouped_case;

static double grouped_loss(void *state)
{
    grouped_case *c = state;
    be1.ops->grouped_matmul_forward(be1.ctx, c->out, c->inp,
                                    (const float *const *)c->weights,
                                    c->group_rows, GROUPS, c->IC, c->OC);
    return dot_double(c->r, c->out, (size_t)c->rows * c->OC);
}

static void grouped_grad(void *state)
{
    grouped_case *c = state;
    be1.ops->grouped_matmul_backward(be1.ctx, c->dinp, c->dweights, c->r,
                                     c->inp, (const float *const *)c->weights,
                                     c->group_rows, GROUPS, c->IC, c->OC);
}

static void test_grouped_matmul(void)
{
    grouped_case c = {.IC = 5, .OC = 3, .group_rows = {3, 0, 4, 2}};
    c.rows = 3 + 0 + 4 + 2;
    c.inp = new_random((size_t)c.rows * c.IC, 1.0f);
    c.out = new_zeros((size_t)c.rows * c.OC);
    c.r = new_random((size_t)c.rows * c.OC, 1.0f);
    c.dinp = new_zeros((size_t)c.rows * c.IC);
    for (int g = 0; g < GROUPS; g++) {
        c.weights[g] = new_random((size_t)c.OC * c.IC, 1.0f);
        c.dweights[g] = new_zeros((size_t)c.OC * c.IC);
    }

    /* forward: each group against its own naive matmul */
    grouped_loss(&c);
    double *want = new_doubles((size_t)c.rows * c.OC);
    for (int g = 0, row = 0; g < GROUPS; row += c.group_rows[g], g++)
        naive_matmul(want + (size_t)row * c.OC, c.inp + (size_t)row * c.IC,
                     c.weights[g], c.group_rows[g], c.IC, c.OC);
    compare("grouped_matmul", "forward vs naive (3,0,4,2 rows)", c.out, want,
            (size_t)c.rows * c.OC, (tolerance){1e-6, 1e-6});
    free(want);

    size_t wn = (size_t)c.OC * c.IC;
    grad_target targets[] = {
        {"inp", c.inp, c.dinp, (size_t)c.rows * c.IC, 1},
        {"weight0", c.weights[0], c.dweights[0], wn, 0},
        {"weight1(empty)", c.weights[1], c.dweights[1], wn, 0},
        {"weight2", c.weights[2], c.dweights[2], wn, 0},
        {"weight3", c.weights[3], c.dweights[3], wn, 0},
    };
    grad_check("grouped_matmul", &c, grouped_loss, grouped_grad, targets, 5,
               1, fd_eps, fd_tol);

    /* NULL dinp, a NULL dweights array or a NULL entry in it: what is
     * computed equals the full backward's */
    size_t n_inp = (size_t)c.rows * c.IC;
    float *dinp_all = new_zeros(n_inp), *dw_all[GROUPS];
    for (int g = 0; g < GROUPS; g++) {
        dw_all[g] = new_zeros(wn);
        memset(c.dweights[g], 0, wn * sizeof(float));
    }
    be1.ops->grouped_matmul_backward(be1.ctx, dinp_all, dw_all, c.r, c.inp,
                                     (const float *const *)c.weights,
                                     c.group_rows, GROUPS, c.IC, c.OC);
    float *saved = c.dweights[2];
    c.dweights[2] = NULL;
    be1.ops->grouped_matmul_backward(be1.ctx, NULL, c.dweights, c.r, c.inp,
                                     (const float *const *)c.weights,
                                     c.group_rows, GROUPS, c.IC, c.OC);
    c.dweights[2] = saved;
    int same = 1;
    for (int g = 0; g < GROUPS; g++)
        if (g != 2)
            same &= !memcmp(c.dweights[g], dw_all[g], wn * sizeof(float));
    check("grouped_matmul", "dweights alone (dinp, dweights[2] NULL) match",
          same);
    memset(c.dinp, 0, n_inp * sizeof(float));
    be1.ops->grouped_matmul_backward(be1.ctx, c.dinp, NULL, c.r, c.inp,
                                     (const float *const *)c.weights,
                                     c.group_rows, GROUPS, c.IC, c.OC);
    check_same_bits("grouped_matmul", "dinp alone (dweights NULL) matches",
                    c.dinp, dinp_all, n_inp * sizeof(float));
    free(dinp_all);
    for (int g = 0; g < GROUPS; g++)
        free(dw_all[g]);
    for (int g = 0; g < GROUPS; g++)
        free(c.weights[g]), free(c.dweights[g]);
    free(c.inp), free(c.out), free(c.r), free(c.dinp);
}

/* ---- embedding ---- */

typedef struct embedding_case {
    int N, V, C;
    int *tokens;
    float *wte, *out, *r, *dwte;
} embedding_case;

static double embedding_loss(void *state)
{
    embedding_case *c = state;
    be1.ops->embedding_forward(be1.ctx, c->out, c->tokens, c->wte, c->N,
                               c->C);
    return dot_double(c->r, c->out, (size_t)c->N * c->C);
}

static void embedding_grad(void *state)
{
    embedding_case *c = state;
    be1.ops->embedding_backward(be1.ctx, c->dwte, c->r, c->tokens, c->N,
                                c->C);
}

static void test_embedding(void)
{
    /* repeated tokens, and token 5 never used */
    int tokens[] = {3, 0, 3, 1, 4, 3, 2, 0};
    embedding_case c = {.N = 8, .V = 6, .C = 5, .tokens = tokens};
    c.wte = new_random((size_t)c.V * c.C, 1.0f);
    c.out = new_zeros((size_t)c.N * c.C);
    c.r = new_random((size_t)c.N * c.C, 1.0f);
    c.dwte = new_zeros((size_t)c.V * c.C);

    embedding_loss(&c);
    int ok = 1;
    for (int n = 0; n < c.N; n++)
        ok &= memcmp(c.out + n * c.C, c.wte + tokens[n] * c.C,
                     (size_t)c.C * sizeof(float)) == 0;
    check("embedding", "forward copies wte rows", ok);

    grad_target targets[] = {{"wte", c.wte, c.dwte, (size_t)c.V * c.C, 0}};
    grad_check("embedding", &c, embedding_loss, embedding_grad, targets, 1, 1,
               fd_eps, fd_tol);
    free(c.wte), free(c.out), free(c.r), free(c.dwte);
}

/* ---- rmsnorm ---- */

typedef struct rmsnorm_case {
    int N, C;
    float eps;
    float *inp, *weight, *out, *rstd, *r, *dinp, *dweight;
} rmsnorm_case;

static double rmsnorm_loss(void *state)
{
    rmsnorm_case *c = state;
    be1.ops->rmsnorm_forward(be1.ctx, c->out, c->rstd, c->inp, c->weight,
                             c->N, c->C, c->eps);
    return dot_double(c->r, c->out, (size_t)c->N * c->C);
}

static void rmsnorm_grad(void *state)
{
    rmsnorm_case *c = state;
    rmsnorm_loss(c);
    be1.ops->rmsnorm_backward(be1.ctx, c->dinp, c->dweight, c->r, c->inp,
                              c->weight, c->rstd, c->N, c->C);
}

static void test_rmsnorm(void)
{
    rmsnorm_case c = {.N = 4, .C = 11, .eps = 1e-5f};
    size_t n = (size_t)c.N * c.C;
    c.inp = new_random(n, 1.0f);
    c.weight = new_random((size_t)c.C, 1.0f);
    c.out = new_zeros(n);
    c.rstd = new_zeros((size_t)c.N);
    c.r = new_random(n, 1.0f);
    c.dinp = new_zeros(n);
    c.dweight = new_zeros((size_t)c.C);

    rmsnorm_loss(&c);
    double *want = new_doubles(n), *want_rstd = new_doubles((size_t)c.N);
    for (int i = 0; i < c.N; i++) {
        double ss = 0.0;
        for (int j = 0; j < c.C; j++)
            ss += (double)c.inp[i * c.C + j] * c.inp[i * c.C + j];
        want_rstd[i] = 1.0 / sqrt(ss / c.C + c.eps);
        for (int j = 0; j < c.C; j++)
            want[i * c.C + j] = c.inp[i * c.C + j] * want_rstd[i] * c.weight[j];
    }
    compare("rmsnorm", "forward vs naive", c.out, want, n,
            (tolerance){1e-6, 1e-6});
    compare("rmsnorm", "rstd vs naive", c.rstd, want_rstd, (size_t)c.N,
            (tolerance){1e-6, 1e-6});
    free(want), free(want_rstd);

    grad_target targets[] = {
        {"inp", c.inp, c.dinp, n, 0},
        {"weight", c.weight, c.dweight, (size_t)c.C, 0},
    };
    grad_check("rmsnorm", &c, rmsnorm_loss, rmsnorm_grad, targets, 2, 1,
               fd_eps, fd_tol);

    /* with one output NULL, the other equals the full backward's */
    float *dinp_all = new_zeros(n), *dweight_all = new_zeros((size_t)c.C);
    be1.ops->rmsnorm_backward(be1.ctx, dinp_all, dweight_all, c.r, c.inp,
                              c.weight, c.rstd, c.N, c.C);
    memset(c.dinp, 0, n * sizeof(float));
    memset(c.dweight, 0, (size_t)c.C * sizeof(float));
    be1.ops->rmsnorm_backward(be1.ctx, c.dinp, NULL, c.r, c.inp, c.weight,
                              c.rstd, c.N, c.C);
    be1.ops->rmsnorm_backward(be1.ctx, NULL, c.dweight, c.r, c.inp, c.weight,
                              c.rstd, c.N, c.C);
    check_same_bits("rmsnorm", "dinp alone (dweight NULL) matches", c.dinp,
                    dinp_all, n * sizeof(float));
    check_same_bits("rmsnorm", "dweight alone (dinp NULL) matches",
                    c.dweight, dweight_all, (size_t)c.C * sizeof(float));
    free(dinp_all);
    free(dweight_all);
    free(c.inp), free(c.weight), free(c.out), free(c.rstd), free(c.r),
        free(c.dinp), free(c.dweight);
}

/* ---- rope ---- */

typedef struct rope_case {
    int B, T, C, n_heads;
    float theta;
    float *qkv, *tmp, *r, *dqkv;
} rope_case;

static double rope_loss(void *state)
{
    rope_case *c = state;
    size_t n = (size_t)c->B * c->T * 3 * c->C;
    memcpy(c->tmp, c->qkv, n * sizeof(float));
    be1.ops->rope_forward(be1.ctx, c->tmp, c->B, c->T, c->C, c->n_heads,
                          c->theta);
    return dot_double(c->r, c->tmp, n);
}

static void rope_grad(void *state)
{
    rope_case *c = state;
    memcpy(c->dqkv, c->r, (size_t)c->B * c->T * 3 * c->C * sizeof(float));
    be1.ops->rope_backward(be1.ctx, c->dqkv, c->B, c->T, c->C, c->n_heads,
                           c->theta);
}

/* Forward against angles computed in double; v must be untouched. */
static void rope_check_forward(int B, int T, int C, int n_heads, float theta)
{
    size_t n = (size_t)B * T * 3 * C;
    float *qkv = new_random(n, 1.0f);
    float *out = new_copy(qkv, n);
    double *want = new_doubles(n);
    int head_dim = C / n_heads;
    be1.ops->rope_forward(be1.ctx, out, B, T, C, n_heads, theta);
    for (size_t i = 0; i < n; i++)
        want[i] = qkv[i];
    for (int row = 0; row < B * T; row++) {
        int t = row % T;
        for (int h = 0; h < 2 * n_heads; h++)
            for (int i = 0; i < head_dim / 2; i++) {
                double angle = t * pow(theta, -2.0 * i / head_dim);
                size_t at = (size_t)row * 3 * C + (size_t)h * head_dim + 2 * i;
                double x0 = qkv[at], x1 = qkv[at + 1];
                want[at] = x0 * cos(angle) - x1 * sin(angle);
                want[at + 1] = x0 * sin(angle) + x1 * cos(angle);
            }
    }
    char what[64];
    snprintf(what, sizeof what, "forward T=%d hd=%d theta=%g", T, head_dim,
             (double)theta);
    compare("rope", what, out, want, n, (tolerance){1e-6, 1e-6});
    int v_same = 1;
    for (int row = 0; row < B * T; row++)
        v_same &= memcmp(out + (size_t)row * 3 * C + 2 * C,
                         qkv + (size_t)row * 3 * C + 2 * C,
                         (size_t)C * sizeof(float)) == 0;
    check("rope", "v third untouched", v_same);
    free(qkv), free(out), free(want);
}

static void test_rope(void)
{
    /* the cached tables must follow T, head_dim and theta */
    rope_check_forward(2, 4, 8, 2, 10000.0f);
    rope_check_forward(1, 7, 8, 2, 10000.0f);
    rope_check_forward(1, 7, 8, 2, 100.0f);
    rope_check_forward(2, 5, 12, 2, 100.0f);

    rope_case c = {.B = 2, .T = 4, .C = 8, .n_heads = 2, .theta = 100.0f};
    size_t n = (size_t)c.B * c.T * 3 * c.C;
    c.qkv = new_random(n, 1.0f);
    c.tmp = new_zeros(n);
    c.r = new_random(n, 1.0f);
    c.dqkv = new_zeros(n);
    grad_target targets[] = {{"qkv", c.qkv, c.dqkv, n, 0}};
    /* backward rotates in place rather than adding: no += check */
    grad_check("rope", &c, rope_loss, rope_grad, targets, 1, 0, fd_eps,
               fd_tol);
    free(c.qkv), free(c.tmp), free(c.r), free(c.dqkv);
}

/* ---- attention ---- */

typedef struct attention_case {
    int B, T, C, n_heads;
    float *qkv, *out, *probs, *r, *dqkv;
} attention_case;

static double attention_loss(void *state)
{
    attention_case *c = state;
    be1.ops->attention_forward(be1.ctx, c->out, c->probs, c->qkv, c->B, c->T,
                               c->C, c->n_heads);
    return dot_double(c->r, c->out, (size_t)c->B * c->T * c->C);
}

static void attention_grad(void *state)
{
    attention_case *c = state;
    attention_loss(c);
    be1.ops->attention_backward(be1.ctx, c->dqkv, c->r, c->qkv, c->probs,
                                c->B, c->T, c->C, c->n_heads);
}

static void attention_check_forward(int B, int T, int C, int n_heads)
{
    int hd = C / n_heads;
    size_t n_qkv = (size_t)B * T * 3 * C, n_out = (size_t)B * T * C;
    size_t n_probs = (size_t)B * n_heads * T * T;
    float *qkv = new_random(n_qkv, 1.5f);
    float *out = new_zeros(n_out), *probs = new_random(n_probs, 1.0f);
    double *want = new_doubles(n_out), *want_probs = new_doubles(n_probs);
    double *scores = new_doubles((size_t)T);
    be1.ops->attention_forward(be1.ctx, out, probs, qkv, B, T, C, n_heads);

    for (int b = 0; b < B; b++)
        for (int h = 0; h < n_heads; h++)
            for (int t = 0; t < T; t++) {
                const float *q = qkv + ((size_t)b * T + t) * 3 * C + h * hd;
                double max_score = -INFINITY, sum = 0.0;
                for (int j = 0; j <= t; j++) {
                    const float *k =
                        qkv + ((size_t)b * T + j) * 3 * C + C + h * hd;
                    scores[j] = dot_double(q, k, (size_t)hd) / sqrt(hd);
                    max_score = fmax(max_score, scores[j]);
                }
                for (int j = 0; j <= t; j++)
                    sum += exp(scores[j] - max_score);
                double *p =
                    want_probs + (((size_t)b * n_heads + h) * T + t) * T;
                for (int j = 0; j <= t; j++)
                    p[j] = exp(scores[j] - max_score) / sum;
                double *o = want + ((size_t)b * T + t) * C + h * hd;
                for (int j = 0; j <= t; j++)
                    for (int i = 0; i < hd; i++)
                        o[i] += p[j] * qkv[((size_t)b * T + j) * 3 * C + 2 * C +
                                           h * hd + i];
            }
    compare("attention", "forward vs naive (out)", out, want, n_out,
            (tolerance){1e-6, 1e-5});
    compare("attention", "forward vs naive (probs)", probs, want_probs,
            n_probs, (tolerance){1e-6, 1e-5});

    int upper_zero = 1;
    double max_row_err = 0.0;
    for (int bh = 0; bh < B * n_heads; bh++)
        for (int t = 0; t < T; t++) {
            const float *p = probs + ((size_t)bh * T + t) * T;
            double sum = 0.0;
            for (int j = 0; j < T; j++) {
                if (j > t)
                    upper_zero &= p[j] == 0.0f;
                sum += p[j];
            }
            max_row_err = fmax(max_row_err, fabs(sum - 1.0));
        }
    check("attention", "probs above the diagonal are 0", upper_zero);
    char what[80];
    snprintf(what, sizeof what, "probs rows sum to 1 (max err %.1e <= 1e-6)",
             max_row_err);
    check("attention", what, max_row_err <= 1e-6);
    free(qkv), free(out), free(probs), free(want), free(want_probs),
        free(scores);
}

static void test_attention(void)
{
    attention_check_forward(2, 9, 32, 2); /* head_dim 16: vector + tail */
    attention_check_forward(1, 6, 12, 3); /* head_dim 4: tail only */

    attention_case c = {.B = 2, .T = 5, .C = 8, .n_heads = 2};
    size_t n_qkv = (size_t)c.B * c.T * 3 * c.C;
    c.qkv = new_random(n_qkv, 1.5f);
    c.out = new_zeros((size_t)c.B * c.T * c.C);
    c.probs = new_zeros((size_t)c.B * c.n_heads * c.T * c.T);
    c.r = new_random((size_t)c.B * c.T * c.C, 1.0f);
    c.dqkv = new_zeros(n_qkv);
    grad_target targets[] = {{"qkv", c.qkv, c.dqkv, n_qkv, 0}};
    grad_check("attention", &c, attention_loss, attention_grad, targets, 1, 1,
               fd_eps, fd_tol);
    free(c.qkv), free(c.out), free(c.probs), free(c.r), free(c.dqkv);
}

/* ---- swiglu ---- */

typedef struct swiglu_case {
    int N, F;
    float *gate_up, *out, *r, *dgate_up;
} swiglu_case;

static double swiglu_loss(void *state)
{
    swiglu_case *c = state;
    be1.ops->swiglu_forward(be1.ctx, c->out, c->gate_up, c->N, c->F);
    return dot_double(c->r, c->out, (size_t)c->N * c->F);
}

static void swiglu_grad(void *state)
{
    swiglu_case *c = state;
    be1.ops->swiglu_backward(be1.ctx, c->dgate_up, c->r, c->gate_up, c->N,
                             c->F);
}

static void test_swiglu(void)
{
    swiglu_case c = {.N = 3, .F = 5};
    size_t n_in = (size_t)c.N * 2 * c.F, n_out = (size_t)c.N * c.F;
    c.gate_up = new_random(n_in, 3.0f); /* reaches both tails of sigmoid */
    c.out = new_zeros(n_out);
    c.r = new_random(n_out, 1.0f);
    c.dgate_up = new_zeros(n_in);

    swiglu_loss(&c);
    double *want = new_doubles(n_out);
    for (int i = 0; i < c.N; i++)
        for (int j = 0; j < c.F; j++) {
            double g = c.gate_up[i * 2 * c.F + j];
            double u = c.gate_up[i * 2 * c.F + c.F + j];
            want[i * c.F + j] = g / (1.0 + exp(-g)) * u;
        }
    compare("swiglu", "forward vs naive", c.out, want, n_out,
            (tolerance){1e-6, 1e-6});
    free(want);

    grad_target targets[] = {{"gate_up", c.gate_up, c.dgate_up, n_in, 1}};
    grad_check("swiglu", &c, swiglu_loss, swiglu_grad, targets, 1, 1, fd_eps,
               fd_tol);
    free(c.gate_up), free(c.out), free(c.r), free(c.dgate_up);
}

/* ---- router ---- */

typedef struct router_case {
    int N, E, K;
    const float *bias;
    int use_dprobs;
    float *logits, *probs, *lse, *gate, *r_probs, *r_gate, *dlogits;
    int *index, *index_ref; /* index_ref: the selection FD must not change */
    int flipped;
} router_case;

static double router_loss(void *state)
{
    router_case *c = state;
    be1.ops->router_forward(be1.ctx, c->probs, c->lse, c->index, c->gate,
                            c->logits, c->bias, c->N, c->E, c->K);
    if (memcmp(c->index, c->index_ref, (size_t)c->N * c->K * sizeof(int)))
        c->flipped = 1;
    double loss = dot_double(c->r_gate, c->gate, (size_t)c->N * c->K);
    if (c->use_dprobs)
        loss += dot_double(c->r_probs, c->probs, (size_t)c->N * c->E);
    return loss;
}

static void router_grad(void *state)
{
    router_case *c = state;
    router_loss(c);
    be1.ops->router_backward(be1.ctx, c->dlogits, c->r_gate,
                             c->use_dprobs ? c->r_probs : NULL, c->probs,
                             c->index, c->gate, c->N, c->E, c->K);
}

/* Naive top-k: stable selection by (prob + bias) in float, descending. */
static void naive_top_k(int *index, const float *p, const float *bias, int E,
                        int K)
{
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int m = 0; m < k; m++)
                taken |= index[m] == e;
            float score = p[e] + (bias ? bias[e] : 0.0f);
            float best_score =
                best < 0 ? 0.0f : p[best] + (bias ? bias[best] : 0.0f);
            if (!taken && (best < 0 || score > best_score))
                best = e;
        }
        index[k] = best;
    }
}

/* Forward outputs of router case c (already run) against references. */
static void router_check_forward(router_case *c, const char *label)
{
    int N = c->N, E = c->E, K = c->K;
    double *want_probs = new_doubles((size_t)N * E);
    double *want_lse = new_doubles((size_t)N);
    double *want_gate = new_doubles((size_t)N * K);
    int *want_index = xmalloc((size_t)N * K * sizeof(int));
    for (int n = 0; n < N; n++) {
        const float *x = c->logits + n * E;
        double max_logit = -INFINITY, sum = 0.0;
        for (int e = 0; e < E; e++)
            max_logit = fmax(max_logit, x[e]);
        for (int e = 0; e < E; e++)
            sum += exp(x[e] - max_logit);
        for (int e = 0; e < E; e++)
            want_probs[n * E + e] = exp(x[e] - max_logit) / sum;
        want_lse[n] = max_logit + log(sum);
        naive_top_k(want_index + n * K, c->probs + n * E, c->bias, E, K);
        double chosen = 0.0;
        for (int k = 0; k < K; k++)
            chosen += c->probs[n * E + want_index[n * K + k]];
        for (int k = 0; k < K; k++)
            want_gate[n * K + k] =
                c->probs[n * E + want_index[n * K + k]] / chosen;
    }
    char what[80];
    snprintf(what, sizeof what, "probs vs naive (%s)", label);
    compare("router", what, c->probs, want_probs, (size_t)N * E,
            (tolerance){1e-7, 1e-6});
    snprintf(what, sizeof what, "lse vs naive (%s)", label);
    compare("router", what, c->lse, want_lse, (size_t)N,
            (tolerance){1e-6, 1e-6});
    snprintf(what, sizeof what, "top-k indices vs naive (%s)", label);
    check_same_bits("router", what, c->index, want_index,
                    (size_t)N * K * sizeof(int));
    snprintf(what, sizeof what, "gates renormalised, unbiased (%s)", label);
    compare("router", what, c->gate, want_gate, (size_t)N * K,
            (tolerance){1e-7, 1e-6});
    free(want_probs), free(want_lse), free(want_gate), free(want_index);
}

static void router_case_init(router_case *c, int N, int E, int K)
{
    c->N = N, c->E = E, c->K = K;
    c->logits = new_zeros((size_t)N * E);
    /* distinct logits 0.5 apart (plus small noise): FD steps of 1e-2
     * cannot change the top-k */
    int *perm = xmalloc((size_t)E * sizeof(int));
    for (int n = 0; n < N; n++) {
        for (int e = 0; e < E; e++)
            perm[e] = e;
        shuffle(perm, E);
        for (int e = 0; e < E; e++)
            c->logits[n * E + e] = 0.5f * (float)perm[e] - 1.5f +
                                   0.05f * rng_value();
    }
    free(perm);
    c->probs = new_zeros((size_t)N * E);
    c->lse = new_zeros((size_t)N);
    c->gate = new_zeros((size_t)N * K);
    c->r_probs = new_random((size_t)N * E, 1.0f);
    c->r_gate = new_random((size_t)N * K, 1.0f);
    c->dlogits = new_zeros((size_t)N * E);
    c->index = xmalloc((size_t)N * K * sizeof(int));
    c->index_ref = xmalloc((size_t)N * K * sizeof(int));
}

static void router_case_free(router_case *c)
{
    free(c->logits), free(c->probs), free(c->lse), free(c->gate),
        free(c->r_probs), free(c->r_gate), free(c->dlogits), free(c->index),
        free(c->index_ref);
}

static void router_grad_check(router_case *c, const char *label)
{
    be1.ops->router_forward(be1.ctx, c->probs, c->lse, c->index_ref, c->gate,
                            c->logits, c->bias, c->N, c->E, c->K);
    c->flipped = 0;
    grad_target targets[] = {
        {"logits", c->logits, c->dlogits, (size_t)c->N * c->E, 0}};
    char op[32];
    snprintf(op, sizeof op, "router%s", label);
    grad_check(op, c, router_loss, router_grad, targets, 1, 1, fd_eps,
               fd_tol);
    check(op, "top-k unchanged by FD steps", !c->flipped);
}

static void test_router(void)
{
    enum { N = 4, E = 8, K = 3 };
    router_case c = {0};
    router_case_init(&c, N, E, K);

    /* unbiased selection */
    router_loss(&c);
    router_check_forward(&c, "no bias");

    /* a bias that changes the selection; gates stay unbiased */
    float bias[E];
    for (int e = 0; e < E; e++)
        bias[e] = 0.4f * rng_value();
    c.bias = bias;
    router_loss(&c);
    router_check_forward(&c, "random bias");
    int *unbiased = xmalloc((size_t)N * K * sizeof(int));
    be1.ops->router_forward(be1.ctx, c.probs, c.lse, unbiased, c.gate,
                            c.logits, NULL, N, E, K);
    check("router", "bias changes the selection in this case",
          memcmp(unbiased, c.index, sizeof(int) * N * K) != 0);
    free(unbiased);

    /* ties go to the lower index, in descending order */
    {
        float tie_logits[2 * E] = {0.3f, 0.3f, 0.3f, 0.3f,
                                   0.3f, 0.3f, 0.3f, 0.3f, /* all equal */
                                   0.1f, 0.2f, 0.9f, 0.4f,
                                   0.9f, 0.5f, 0.0f, 0.3f};
        float probs[2 * E], lse[2], gate[2 * K];
        int index[2 * K];
        be1.ops->router_forward(be1.ctx, probs, lse, index, gate, tie_logits,
                                NULL, 2, E, K);
        int want[2 * K] = {0, 1, 2, 2, 4, 5};
        check_same_bits("router", "ties to the lower index", index, want,
                        sizeof want);
    }

    /* gradients: probs and gates, gates only (dprobs NULL), with a bias
     * that selects experts 0, 3, 6 */
    c.bias = NULL;
    c.use_dprobs = 1;
    router_grad_check(&c, "");
    c.use_dprobs = 0;
    router_grad_check(&c, "(dprobs=0)");
    for (int e = 0; e < E; e++)
        bias[e] = e % 3 == 0 ? 1.0f : 0.0f;
    c.bias = bias;
    c.use_dprobs = 1;
    router_grad_check(&c, "(bias)");
    router_case_free(&c);
}

/* ---- moe permute / unpermute ---- */

typedef struct moe_case {
    int N, K, S, C;
    int *slot_of, *token_of_slot;
    float *inp, *permuted, *r_permuted, *dinp;
    float *expert_out, *gate, *base, *out, *r_out, *dexpert_out, *dgate;
} moe_case;

static double permute_loss(void *state)
{
    moe_case *c = state;
    be1.ops->moe_permute(be1.ctx, c->permuted, c->inp, c->token_of_slot, c->S,
                         c->C);
    return dot_double(c->r_permuted, c->permuted, (size_t)c->S * c->C);
}

static void permute_grad(void *state)
{
    moe_case *c = state;
    be1.ops->moe_permute_backward(be1.ctx, c->dinp, c->r_permuted,
                                  c->token_of_slot, c->S, c->C);
}

static double unpermute_loss(void *state)
{
    moe_case *c = state;
    memcpy(c->out, c->base, (size_t)c->N * c->C * sizeof(float));
    be1.ops->moe_unpermute(be1.ctx, c->out, c->expert_out, c->slot_of,
                           c->gate, c->N, c->K, c->C);
    return dot_double(c->r_out, c->out, (size_t)c->N * c->C);
}

static void unpermute_grad(void *state)
{
    moe_case *c = state;
    be1.ops->moe_unpermute_backward(be1.ctx, c->dexpert_out, c->dgate,
                                    c->r_out, c->expert_out, c->slot_of,
                                    c->gate, c->N, c->K, c->C);
}

static void test_moe_dispatch(void)
{
    /* 5 tokens x top-2 = 10 assignments, (3, 1) dropped; 10 slots, so one
     * slot is padding (token -1) */
    moe_case c = {.N = 5, .K = 2, .S = 10, .C = 6};
    int dropped = 3 * 2 + 1;
    c.slot_of = xmalloc((size_t)c.N * c.K * sizeof(int));
    c.token_of_slot = xmalloc((size_t)c.S * sizeof(int));
    int *perm = xmalloc((size_t)c.S * sizeof(int));
    for (int s = 0; s < c.S; s++)
        perm[s] = s, c.token_of_slot[s] = -1;
    shuffle(perm, c.S);
    for (int a = 0, next = 0; a < c.N * c.K; a++) {
        c.slot_of[a] = a == dropped ? -1 : perm[next++];
        if (c.slot_of[a] >= 0)
            c.token_of_slot[c.slot_of[a]] = a / c.K;
    }
    free(perm);

    size_t n_tok = (size_t)c.N * c.C, n_slot = (size_t)c.S * c.C;
    c.inp = new_random(n_tok, 1.0f);
    c.permuted = new_random(n_slot, 1.0f); /* garbage the op overwrites */
    c.r_permuted = new_random(n_slot, 1.0f);
    c.dinp = new_zeros(n_tok);
    c.expert_out = new_random(n_slot, 1.0f);
    c.gate = new_random((size_t)c.N * c.K, 1.0f);
    c.base = new_random(n_tok, 1.0f);
    c.out = new_zeros(n_tok);
    c.r_out = new_random(n_tok, 1.0f);
    c.dexpert_out = new_zeros(n_slot);
    c.dgate = new_zeros((size_t)c.N * c.K);

    permute_loss(&c);
    double *want = new_doubles(n_slot);
    for (int s = 0; s < c.S; s++)
        for (int j = 0; j < c.C; j++)
            want[s * c.C + j] = c.token_of_slot[s] < 0
                                    ? 0.0
                                    : c.inp[c.token_of_slot[s] * c.C + j];
    compare("moe_permute", "forward vs naive (padding row 0)", c.permuted,
            want, n_slot, (tolerance){0, 0});
    free(want);
    grad_target permute_targets[] = {{"inp", c.inp, c.dinp, n_tok, 0}};
    grad_check("moe_permute", &c, permute_loss, permute_grad, permute_targets,
               1, 1, fd_eps, fd_tol);

    unpermute_loss(&c);
    want = new_doubles(n_tok);
    for (int t = 0; t < c.N; t++)
        for (int j = 0; j < c.C; j++) {
            double sum = c.base[t * c.C + j];
            for (int k = 0; k < c.K; k++) {
                int slot = c.slot_of[t * c.K + k];
                if (slot >= 0)
                    sum += (double)c.gate[t * c.K + k] *
                           c.expert_out[slot * c.C + j];
            }
            want[t * c.C + j] = sum;
        }
    compare("moe_unpermute", "forward (+=) vs naive, 1 dropped", c.out, want,
            n_tok, (tolerance){1e-6, 1e-6});
    free(want);
    grad_target unpermute_targets[] = {
        {"expert_out", c.expert_out, c.dexpert_out, n_slot, 0},
        {"gate_weight", c.gate, c.dgate, (size_t)c.N * c.K, 1},
    };
    grad_check("moe_unpermute", &c, unpermute_loss, unpermute_grad,
               unpermute_targets, 2, 1, fd_eps, fd_tol);

    /* with one output NULL, the other equals the full backward's */
    float *dexpert_all = new_zeros(n_slot);
    float *dgate_all = new_zeros((size_t)c.N * c.K);
    be1.ops->moe_unpermute_backward(be1.ctx, dexpert_all, dgate_all, c.r_out,
                                    c.expert_out, c.slot_of, c.gate, c.N, c.K,
                                    c.C);
    memset(c.dexpert_out, 0, n_slot * sizeof(float));
    memset(c.dgate, 0, (size_t)c.N * c.K * sizeof(float));
    be1.ops->moe_unpermute_backward(be1.ctx, NULL, c.dgate, c.r_out,
                                    c.expert_out, c.slot_of, c.gate, c.N, c.K,
                                    c.C);
    be1.ops->moe_unpermute_backward(be1.ctx, c.dexpert_out, NULL, c.r_out,
                                    c.expert_out, c.slot_of, c.gate, c.N, c.K,
                                    c.C);
    check_same_bits("moe_unpermute", "dgate alone (dexpert_out NULL) matches",
                    c.dgate, dgate_all, (size_t)c.N * c.K * sizeof(float));
    check_same_bits("moe_unpermute", "dexpert_out alone (dgate NULL) matches",
                    c.dexpert_out, dexpert_all, n_slot * sizeof(float));
    free(dexpert_all), free(dgate_all);

    free(c.slot_of), free(c.token_of_slot), free(c.inp), free(c.permuted),
        free(c.r_permuted), free(c.dinp), free(c.expert_out), free(c.gate),
        free(c.base), free(c.out), free(c.r_out), free(c.dexpert_out),
        free(c.dgate);
}

/* ---- cross-entropy ---- */

typedef struct crossentropy_case {
    int N, V;
    int *targets;
    float dloss;
    float *logits, *losses, *dlogits;
} crossentropy_case;

static double crossentropy_loss(void *state)
{
    crossentropy_case *c = state;
    be1.ops->crossentropy_forward_backward(be1.ctx, c->losses, NULL,
                                           c->logits, c->targets, c->N, c->V,
                                           c->dloss);
    double sum = 0.0;
    for (int n = 0; n < c->N; n++)
        sum += c->losses[n];
    return c->dloss * sum;
}

/* dlogits is set, not added: the += check does not apply. */
static void crossentropy_grad(void *state)
{
    crossentropy_case *c = state;
    be1.ops->crossentropy_forward_backward(be1.ctx, c->losses, c->dlogits,
                                           c->logits, c->targets, c->N, c->V,
                                           c->dloss);
}

static void test_crossentropy(void)
{
    int targets[] = {3, 0, 8, 5};
    crossentropy_case c = {.N = 4, .V = 9, .targets = targets, .dloss = 0.25f};
    size_t n = (size_t)c.N * c.V;
    c.logits = new_random(n, 3.0f);
    c.losses = new_zeros((size_t)c.N);
    c.dlogits = new_random(n, 1.0f); /* garbage that must be overwritten */

    crossentropy_grad(&c);
    double *want = new_doubles((size_t)c.N);
    for (int i = 0; i < c.N; i++) {
        double max_logit = -INFINITY, sum = 0.0;
        for (int v = 0; v < c.V; v++)
            max_logit = fmax(max_logit, c.logits[i * c.V + v]);
        for (int v = 0; v < c.V; v++)
            sum += exp(c.logits[i * c.V + v] - max_logit);
        want[i] = log(sum) + max_logit - c.logits[i * c.V + targets[i]];
    }
    compare("crossentropy", "losses vs naive", c.losses, want, (size_t)c.N,
            (tolerance){1e-6, 1e-6});
    free(want);

    float *dlogits_garbage = new_copy(c.dlogits, n);
    memset(c.dlogits, 0, n * sizeof(float));
    crossentropy_grad(&c);
    check_same_bits("crossentropy", "dlogits set (=), not added",
                    dlogits_garbage, c.dlogits, n * sizeof(float));
    free(dlogits_garbage);

    float *aliased = new_copy(c.logits, n);
    be1.ops->crossentropy_forward_backward(be1.ctx, NULL, aliased, aliased,
                                           c.targets, c.N, c.V, c.dloss);
    check_same_bits("crossentropy", "dlogits aliasing logits", aliased,
                    c.dlogits, n * sizeof(float));
    free(aliased);

    /* stable with huge logits */
    float big[3] = {1000.0f, 999.0f, -1000.0f};
    float big_loss, big_grad[3];
    int big_target = 1;
    be1.ops->crossentropy_forward_backward(be1.ctx, &big_loss, big_grad, big,
                                           &big_target, 1, 3, 1.0f);
    double want_big = log(1.0 + exp(-1.0)) + 1.0;
    check("crossentropy", "stable at logits of 1e3",
          fabs(big_loss - want_big) < 1e-5 && isfinite(big_grad[0]));

    grad_target targets_fd[] = {{"logits", c.logits, c.dlogits, n, 0}};
    grad_check("crossentropy", &c, crossentropy_loss, crossentropy_grad,
               targets_fd, 1, 0, fd_eps, fd_tol);
    free(c.logits), free(c.losses), free(c.dlogits);
}

/* ---- adamw, sum_squares, add_inplace ---- */

static void test_adamw(void)
{
    enum { N = 37, STEPS = 5 };
    const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
    const float weight_decay = 0.1f, grad_scale = 0.7f;
    float *param = new_random(N, 1.0f), *m = new_zeros(N), *v = new_zeros(N);
    double want_p[N], want_m[N] = {0}, want_v[N] = {0};
    for (int i = 0; i < N; i++)
        want_p[i] = param[i];
    for (int t = 1; t <= STEPS; t++) {
        float *grad = new_random(N, 1.0f);
        be1.ops->adamw_update(be1.ctx, param, grad, m, v, N, lr, beta1, beta2,
                              eps, weight_decay, grad_scale, t);
        for (int i = 0; i < N; i++) {
            double g = (double)grad[i] * grad_scale;
            want_m[i] = beta1 * want_m[i] + (1.0 - beta1) * g;
            want_v[i] = beta2 * want_v[i] + (1.0 - beta2) * g * g;
            double m_hat = want_m[i] / (1.0 - pow(beta1, t));
            double v_hat = want_v[i] / (1.0 - pow(beta2, t));
            want_p[i] -= lr * (m_hat / (sqrt(v_hat) + eps) +
                               weight_decay * want_p[i]);
        }
        free(grad);
    }
    tolerance tol = {2e-7, 2e-6};
    compare("adamw", "param vs naive double, 5 steps", param, want_p, N, tol);
    compare("adamw", "m vs naive double", m, want_m, N, tol);
    compare("adamw", "v vs naive double", v, want_v, N, tol);
    free(param), free(m), free(v);
}

static void test_sum_squares(void)
{
    size_t sizes[] = {0, 5, 4099, 300001};
    for (int s = 0; s < 4; s++) {
        size_t n = sizes[s];
        float *x = new_random(n, 1.0f);
        double want = 0.0;
        for (size_t i = 0; i < n; i++)
            want += (double)x[i] * x[i];
        double got1 = be1.ops->sum_squares(be1.ctx, x, n);
        double got2 = be2.ops->sum_squares(be2.ctx, x, n);
        double err = fabs(got1 - want) / fmax(want, 1e-300);
        char what[96];
        snprintf(what, sizeof what,
                 "n=%zu vs naive double (rel err %.1e <= 1e-12)", n, err);
        check("sum_squares", what, err <= 1e-12 && got1 == got2);
        free(x);
    }
}

static void test_add_inplace(void)
{
    size_t n = 1000;
    float *out = new_random(n, 1.0f), *inp = new_random(n, 1.0f);
    float *want = new_copy(out, n);
    for (size_t i = 0; i < n; i++)
        want[i] += inp[i];
    be1.ops->add_inplace(be1.ctx, out, inp, n);
    check_same_bits("add_inplace", "out += inp exactly", out, want,
                    n * sizeof(float));
    free(out), free(inp), free(want);
}

/* ---- determinism ---- */

/* Shapes big enough that every parallel loop really runs on 2 threads. */
enum {
    DB = 2, DT = 64, DC = 256, DH = 4, DN = DB * DT, DF = 256, DV = 512,
    DE = 64, DK = 4, DNR = 512, DS = DN * DK, DG = 4, DADAM = 100000
};

typedef struct det_buffer {
    const char *name;
    float *data;
    size_t n;
    int uses_blas; /* may differ between thread counts */
} det_buffer;

typedef struct det_inputs {
    float *x, *w, *dy, *wte, *weights[DG], *qkv, *dqkv_init, *att_dout;
    float *gate_up, *swiglu_dout, *router_logits, *router_bias, *dgate;
    float *dprobs, *slot_dout, *expert_out, *gate, *logits, *adam_grad;
    float *adam_param;
    int *tokens, *slot_of, *token_of_slot, *targets;
} det_inputs;

/* Outputs of det_run, in the order it fills them. */
static const det_buffer det_spec[] = {
    {"matmul out", NULL, (size_t)DN * DC, 1},
    {"matmul dinp", NULL, (size_t)DN * DC, 1},
    {"matmul dweight", NULL, (size_t)DC * DC, 1},
    {"grouped out", NULL, (size_t)DN * DC, 1},
    {"grouped dinp", NULL, (size_t)DN * DC, 1},
    {"grouped dweights", NULL, (size_t)DG * DC * DC, 1},
    {"embedding out", NULL, (size_t)DN * DC, 0},
    {"embedding dwte", NULL, (size_t)DV * DC, 0},
    {"rmsnorm out", NULL, (size_t)DN * DC, 0},
    {"rmsnorm dinp", NULL, (size_t)DN * DC, 0},
    {"rmsnorm dweight", NULL, DC, 0},
    {"rope qkv", NULL, (size_t)DN * 3 * DC, 0},
    {"attention out", NULL, (size_t)DN * DC, 0},
    {"attention probs", NULL, (size_t)DB * DH * DT * DT, 0},
    {"attention+rope dqkv", NULL, (size_t)DN * 3 * DC, 0},
    {"swiglu out", NULL, (size_t)DN * DF, 0},
    {"swiglu dgate_up", NULL, (size_t)DN * 2 * DF, 0},
    {"router probs+gates", NULL, (size_t)DNR * DE + DNR * DK, 0},
    {"router dlogits", NULL, (size_t)DNR * DE, 0},
    {"permute out", NULL, (size_t)DS * DC, 0},
    {"permute dinp", NULL, (size_t)DN * DC, 0},
    {"unpermute out", NULL, (size_t)DN * DC, 0},
    {"unpermute dexpert_out", NULL, (size_t)DS * DC, 0},
    {"unpermute dgate", NULL, (size_t)DN * DK, 0},
    {"crossentropy", NULL, (size_t)DN + DN * DV, 0},
    {"adamw+add+sum_squares", NULL, (size_t)3 * DADAM + 2, 0},
};
enum { DET_BUFFERS = sizeof det_spec / sizeof det_spec[0] };

/* Runs every op on backend b into the out buffers, zeroed first since
 * most ops add. */
static void det_run(const backend *b, const det_inputs *in, det_buffer *outs)
{
    const backend_ops *ops = b->ops;
    void *ctx = b->ctx;
    for (int i = 0; i < DET_BUFFERS; i++)
        memset(outs[i].data, 0, outs[i].n * sizeof(float));
    float *buf[DET_BUFFERS];
    for (int i = 0; i < DET_BUFFERS; i++)
        buf[i] = outs[i].data;

    ops->matmul_forward(ctx, buf[0], in->x, in->w, DN, DC, DC);
    ops->matmul_backward(ctx, buf[1], buf[2], in->dy, in->x, in->w, DN, DC,
                         DC);

    int group_rows[DG] = {50, 0, 40, 38};
    float *dweights[DG];
    for (int g = 0; g < DG; g++)
        dweights[g] = buf[5] + (size_t)g * DC * DC;
    ops->grouped_matmul_forward(ctx, buf[3], in->x,
                                (const float *const *)in->weights, group_rows,
                                DG, DC, DC);
    ops->grouped_matmul_backward(ctx, buf[4], dweights, in->dy, in->x,
                                 (const float *const *)in->weights,
                                 group_rows, DG, DC, DC);

    ops->embedding_forward(ctx, buf[6], in->tokens, in->wte, DN, DC);
    ops->embedding_backward(ctx, buf[7], in->dy, in->tokens, DN, DC);

    float rstd[DN];
    ops->rmsnorm_forward(ctx, buf[8], rstd, in->x, in->w, DN, DC, 1e-5f);
    ops->rmsnorm_backward(ctx, buf[9], buf[10], in->dy, in->x, in->w, rstd,
                          DN, DC);

    float *qkv = buf[11], *probs = buf[13], *dqkv = buf[14];
    memcpy(qkv, in->qkv, (size_t)DN * 3 * DC * sizeof(float));
    ops->rope_forward(ctx, qkv, DB, DT, DC, DH, 10000.0f);
    ops->attention_forward(ctx, buf[12], probs, qkv, DB, DT, DC, DH);
    memcpy(dqkv, in->dqkv_init, (size_t)DN * 3 * DC * sizeof(float));
    ops->attention_backward(ctx, dqkv, in->att_dout, qkv, probs, DB, DT, DC,
                            DH);
    ops->rope_backward(ctx, dqkv, DB, DT, DC, DH, 10000.0f);

    ops->swiglu_forward(ctx, buf[15], in->gate_up, DN, DF);
    ops->swiglu_backward(ctx, buf[16], in->swiglu_dout, in->gate_up, DN, DF);

    float *router_probs = buf[17], *router_gate = buf[17] + DNR * DE;
    float router_lse[DNR];
    int *router_index = xmalloc((size_t)DNR * DK * sizeof(int));
    ops->router_forward(ctx, router_probs, router_lse, router_index,
                        router_gate, in->router_logits, in->router_bias, DNR,
                        DE, DK);
    ops->router_backward(ctx, buf[18], in->dgate, in->dprobs, router_probs,
                         router_index, router_gate, DNR, DE, DK);
    free(router_index);

    ops->moe_permute(ctx, buf[19], in->x, in->token_of_slot, DS, DC);
    ops->moe_permute_backward(ctx, buf[20], in->slot_dout, in->token_of_slot,
                              DS, DC);
    ops->moe_unpermute(ctx, buf[21], in->expert_out, in->slot_of, in->gate,
                       DN, DK, DC);
    ops->moe_unpermute_backward(ctx, buf[22], buf[23], in->dy, in->expert_out,
                                in->slot_of, in->gate, DN, DK, DC);

    ops->crossentropy_forward_backward(ctx, buf[24], buf[24] + DN, in->logits,
                                       in->targets, DN, DV, 1.0f / DN);

    float *param = buf[25], *m = param + DADAM, *v = m + DADAM;
    memcpy(param, in->adam_param, DADAM * sizeof(float));
    for (int t = 1; t <= 3; t++)
        ops->adamw_update(ctx, param, in->adam_grad, m, v, DADAM, 1e-3f, 0.9f,
                          0.95f, 1e-8f, 0.1f, 0.5f, t);
    ops->add_inplace(ctx, param, in->adam_grad, DADAM);
    double sum_squares = ops->sum_squares(ctx, param, 3 * DADAM);
    memcpy(v + DADAM, &sum_squares, sizeof sum_squares);
}

static void test_determinism(void)
{
    det_inputs in;
    size_t nc = (size_t)DN * DC;
    in.x = new_random(nc, 1.0f);
    in.w = new_random((size_t)DC * DC, 0.1f);
    in.dy = new_random(nc, 1.0f);
    in.wte = new_random((size_t)DV * DC, 1.0f);
    for (int g = 0; g < DG; g++)
        in.weights[g] = new_random((size_t)DC * DC, 0.1f);
    in.qkv = new_random(nc * 3, 1.0f);
    in.dqkv_init = new_random(nc * 3, 1.0f);
    in.att_dout = new_random(nc, 1.0f);
    in.gate_up = new_random((size_t)DN * 2 * DF, 2.0f);
    in.swiglu_dout = new_random((size_t)DN * DF, 1.0f);
    in.router_logits = new_random((size_t)DNR * DE, 2.0f);
    in.router_bias = new_random(DE, 0.05f);
    in.dgate = new_random((size_t)DNR * DK, 1.0f);
    in.dprobs = new_random((size_t)DNR * DE, 1.0f);
    in.slot_dout = new_random((size_t)DS * DC, 1.0f);
    in.expert_out = new_random((size_t)DS * DC, 1.0f);
    in.gate = new_random((size_t)DN * DK, 1.0f);
    in.logits = new_random((size_t)DN * DV, 3.0f);
    in.adam_grad = new_random(DADAM, 1.0f);
    in.adam_param = new_random(DADAM, 1.0f);
    in.tokens = xmalloc(DN * sizeof(int));
    in.targets = xmalloc(DN * sizeof(int));
    for (int n = 0; n < DN; n++) /* few distinct tokens: many repeats */
        in.tokens[n] = rng_int(DV / 8), in.targets[n] = rng_int(DV);
    in.slot_of = xmalloc(DS * sizeof(int));
    in.token_of_slot = xmalloc(DS * sizeof(int));
    for (int s = 0; s < DS; s++)
        in.slot_of[s] = s;
    shuffle(in.slot_of, DS);
    for (int a = 0; a < DS; a++)
        in.token_of_slot[in.slot_of[a]] = a / DK;

    det_buffer runs[3][DET_BUFFERS];
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < DET_BUFFERS; i++) {
            runs[r][i] = det_spec[i];
            runs[r][i].data = xmalloc(det_spec[i].n * sizeof(float));
        }
    det_run(&be2, &in, runs[0]);
    det_run(&be2, &in, runs[1]);
    det_run(&be1, &in, runs[2]);

    int same_twice = 1, same_threads = 1;
    for (int i = 0; i < DET_BUFFERS; i++) {
        size_t bytes = det_spec[i].n * sizeof(float);
        if (memcmp(runs[0][i].data, runs[1][i].data, bytes)) {
            printf("    %s differs between two threads=2 runs\n",
                   det_spec[i].name);
            same_twice = 0;
        }
        if (!det_spec[i].uses_blas &&
            memcmp(runs[0][i].data, runs[2][i].data, bytes)) {
            printf("    %s differs between threads=1 and threads=2\n",
                   det_spec[i].name);
            same_threads = 0;
        }
    }
    check("determinism", "every op, threads=2 twice: bitwise equal",
          same_twice);
    check("determinism", "non-BLAS ops, threads=1 vs 2: bitwise equal",
          same_threads);

    for (int r = 0; r < 3; r++)
        for (int i = 0; i < DET_BUFFERS; i++)
            free(runs[r][i].data);
    free(in.x), free(in.w), free(in.dy), free(in.wte);
    for (int g = 0; g < DG; g++)
        free(in.weights[g]);
    free(in.qkv), free(in.dqkv_init), free(in.att_dout), free(in.gate_up),
        free(in.swiglu_dout), free(in.router_logits), free(in.router_bias),
        free(in.dgate), free(in.dprobs), free(in.slot_dout),
        free(in.expert_out), free(in.gate), free(in.logits),
        free(in.adam_grad), free(in.adam_param), free(in.tokens),
        free(in.targets), free(in.slot_of), free(in.token_of_slot);
}

int main(void)
{
    if (cpu_backend_init(&be1, 1) || cpu_backend_init(&be2, 2)) {
        fprintf(stderr, "test_ops: cpu_backend_init failed\n");
        return 1;
    }
    test_matmul();
    test_grouped_matmul();
    test_embedding();
    test_rmsnorm();
    test_rope();
    test_attention();
    test_swiglu();
    test_router();
    test_moe_dispatch();
    test_crossentropy();
    test_adamw();
    test_sum_squares();
    test_add_inplace();
    test_determinism();
    cpu_backend_finish(&be1);
    cpu_backend_finish(&be2);
    if (failures) {
        printf("%d check(s) FAILED\n", failures);
        return 1;
    }
    printf("all kernel checks passed\n");
    return 0;
}
