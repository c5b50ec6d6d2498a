/* The kernel lab (llm.c's dev/cuda idea, on the CPU backend). For each
 * kernel that was replaced, the replaced version (v1, kept only here as a
 * static copy) runs beside the library's version (v2) on the same random
 * inputs; each is checked against a naive double-precision reference and
 * timed. The library keeps only the winner.
 *
 *   kernel_lab [--quick] [--threads N] [--reps N]
 *
 * Default: the shapes of configs/bench.yaml, one checked run (it doubles as
 * warm-up), then the median of --reps (10) timed runs, on --threads (2).
 * --quick: tiny shapes that still reach every code path (partial GEMM
 * blocks, an empty expert, the serial and the split paths), one run, checks
 * only; the `kernel-lab-quick` test. Exit status 1 when any error is beyond
 * its tolerance, 2 on a bad argument.
 *
 * Relative error: max over elements of |got − want| / max(|want|, floor).
 * For GEMM-like ops floor = 1% of the reference tensor's RMS: outputs near
 * zero come from cancellation and carry absolute, not relative, error.
 * exp and sigmoid have no floor. Gradient outputs start at zero, so a check
 * does not depend on whether an output is added to (+=) or set (=); that
 * contract is tests/kernels/test_ops.c's job.
 */
#include "kernels/cpu/cpu_backend.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "kernels/cpu/cpu_math.h"
#include "kernels/cpu/cpu_ops.h"
#include "moectl_build.h"

/* Tolerances on the relative error above, one per op family, with why. */
/* GEMM-like ops: float sums of up to K = 2048 products err by about
 * sqrt(K)·2^-24 ≈ 3e-6 of their typical size, so about 3e-4 of the floor
 * (1% of that size); an indexing bug errs by O(1). */
#define TOL_GEMM 2e-3
/* Attention: GEMM error (K ≤ T = 256) plus softmax and its backward's
 * P ⊙ (dP − rowsum) cancellation, which the floor absorbs. */
#define TOL_ATTENTION 2e-3
/* exp: libm's expf is within 1 ulp; the Cephes polynomial within about
 * 1.2e-7 plus the final rounding. */
#define TOL_EXP 5e-7
/* sigmoid = 1 / (1 + exp(-x)): exp's error plus two more roundings. */
#define TOL_SIGMOID 6e-7

#define FLOOR_GEMM 1e-2 /* fraction of the reference RMS, see above */

/* ---- random inputs (splitmix64, fixed seed) ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

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

/* Magnitude in [0.1, 1] times scale, random sign: never zero. */
static float rng_value(float scale)
{
    float magnitude = scale * (0.1f + 0.9f * (float)rng_unit());
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
        fprintf(stderr, "kernel_lab: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static float *new_random(size_t n, float scale)
{
    float *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = rng_value(scale);
    return x;
}

static float *new_floats(size_t n)
{
    float *x = xmalloc(n * sizeof *x);
    memset(x, 0, n * sizeof *x);
    return x;
}

static double *new_doubles(size_t n)
{
    double *x = xmalloc(n * sizeof *x);
    memset(x, 0, n * sizeof *x);
    return x;
}

/* (cols, rows) copy of a (rows, cols) matrix, so every reference sum runs
 * over contiguous memory. */
static float *new_transpose(const float *a, int rows, int cols)
{
    float *t = xmalloc((size_t)rows * cols * sizeof *t);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            t[(size_t)c * rows + r] = a[(size_t)r * cols + c];
    return t;
}

/* ---- v1: the replaced versions, as they were in the library ---- */

/* Attention, commit 9e756bb: per-element dot/axpy loops and libm expf,
 * parallel over (batch, head). */
static void attention_forward_v1(void *vctx, float *out, float *probs,
                                 const float *qkv, int B, int T, int C,
                                 int n_heads)
{
    cpu_context *ctx = vctx;
    int head_dim = C / n_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    size_t stride = (size_t)3 * C; /* qkv row */
    CPU_PARALLEL_FOR(ctx->threads, (size_t)B * n_heads * T * T * head_dim)
    for (int bh = 0; bh < B * n_heads; bh++) {
        int b = bh / n_heads, h = bh % n_heads;
        const float *q_base = qkv + (size_t)b * T * stride + h * head_dim;
        const float *k_base = q_base + C;
        const float *v_base = q_base + 2 * C;
        float *P = probs + (size_t)bh * T * T;
        for (int t = 0; t < T; t++) {
            const float *q = q_base + t * stride;
            float *p = P + (size_t)t * T;
            float max_score = -INFINITY;
            for (int j = 0; j <= t; j++) {
                float score = cpu_dot(q, k_base + j * stride, head_dim) * scale;
                p[j] = score;
                if (score > max_score)
                    max_score = score;
            }
            float sum = 0.0f;
            for (int j = 0; j <= t; j++) {
                p[j] = expf(p[j] - max_score);
                sum += p[j];
            }
            float inv_sum = 1.0f / sum;
            for (int j = 0; j <= t; j++)
                p[j] *= inv_sum;
            for (int j = t + 1; j < T; j++)
                p[j] = 0.0f;

            float *o = out + ((size_t)b * T + t) * C + h * head_dim;
            for (int i = 0; i < head_dim; i++)
                o[i] = 0.0f;
            for (int j = 0; j <= t; j++)
                cpu_axpy(o, p[j], v_base + j * stride, head_dim);
        }
    }
}

static void attention_backward_v1(void *vctx, float *dqkv, const float *dout,
                                  const float *qkv, const float *probs, int B,
                                  int T, int C, int n_heads)
{
    cpu_context *ctx = vctx;
    int head_dim = C / n_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    size_t stride = (size_t)3 * C;
    CPU_PARALLEL_FOR(ctx->threads, (size_t)B * n_heads * T * T * head_dim)
    for (int bh = 0; bh < B * n_heads; bh++) {
        int b = bh / n_heads, h = bh % n_heads;
        size_t head = (size_t)b * T * stride + h * head_dim;
        const float *q_base = qkv + head;
        const float *k_base = q_base + C;
        const float *v_base = q_base + 2 * C;
        float *dq_base = dqkv + head;
        float *dk_base = dq_base + C;
        float *dv_base = dq_base + 2 * C;
        const float *P = probs + (size_t)bh * T * T;
        for (int t = 0; t < T; t++) {
            const float *q = q_base + t * stride;
            const float *p = P + (size_t)t * T;
            const float *dO = dout + ((size_t)b * T + t) * C + h * head_dim;
            float *dq = dq_base + t * stride;

            float p_dot_dp = 0.0f;
            for (int j = 0; j <= t; j++)
                p_dot_dp += p[j] * cpu_dot(dO, v_base + j * stride, head_dim);

            for (int j = 0; j <= t; j++) {
                size_t row_j = j * stride;
                float dp = cpu_dot(dO, v_base + row_j, head_dim);
                float ds = p[j] * (dp - p_dot_dp) * scale;
                cpu_axpy(dq, ds, k_base + row_j, head_dim);
                cpu_axpy(dk_base + row_j, ds, q, head_dim);
                cpu_axpy(dv_base + row_j, p[j], dO, head_dim);
            }
        }
    }
}

/* exp and sigmoid before cpu_math.h: libm expf, one call per element. */
static void exp_shifted_v1(float *y, const float *x, float shift, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = expf(x[i] - shift);
}

static void sigmoid_v1(float *y, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = 1.0f / (1.0f + expf(-x[i]));
}

/* Dense and grouped matmul, commit 9e756bb: every product is one OpenBLAS
 * call on all the context's threads; experts one after another. */
static void blas_use_threads_v1(const cpu_context *ctx)
{
    if (openblas_get_num_threads() != ctx->threads)
        openblas_set_num_threads(ctx->threads);
}

static void sgemm_v1(const cpu_context *ctx, int trans_a, int trans_b, int M,
                     int N, int K, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        if (beta == 0.0f)
            for (int i = 0; i < M; i++)
                memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof *C);
        return;
    }
    blas_use_threads_v1(ctx);
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda,
                B, ldb, beta, C, ldc);
}

static void matmul_forward_v1(void *vctx, float *out, const float *inp,
                              const float *weight, int N, int IC, int OC)
{
    sgemm_v1(vctx, 0, 1, N, OC, IC, inp, IC, weight, IC, 0.0f, out, OC);
}

static void matmul_backward_v1(void *vctx, float *dinp, float *dweight,
                               const float *dout, const float *inp,
                               const float *weight, int N, int IC, int OC)
{
    if (dinp)
        sgemm_v1(vctx, 0, 0, N, IC, OC, dout, OC, weight, IC, 1.0f, dinp, IC);
    if (dweight)
        sgemm_v1(vctx, 1, 0, OC, IC, N, dout, OC, inp, IC, 1.0f, dweight, IC);
}

static void grouped_matmul_forward_v1(void *vctx, float *out,
                                      const float *inp,
                                      const float *const *weights,
                                      const int *group_rows, int groups,
                                      int IC, int OC)
{
    size_t row = 0;
    for (int g = 0; g < groups; g++) {
        int rows = group_rows[g];
        if (rows > 0)
            sgemm_v1(vctx, 0, 1, rows, OC, IC, inp + row * IC, IC, weights[g],
                     IC, 0.0f, out + row * OC, OC);
        row += rows > 0 ? (size_t)rows : 0;
    }
}

static void grouped_matmul_backward_v1(void *vctx, float *dinp,
                                       float *const *dweights,
                                       const float *dout, const float *inp,
                                       const float *const *weights,
                                       const int *group_rows, int groups,
                                       int IC, int OC)
{
    size_t row = 0;
    for (int g = 0; g < groups; g++) {
        int rows = group_rows[g];
        if (rows <= 0)
            continue;
        const float *dout_g = dout + row * OC;
        if (dinp)
            sgemm_v1(vctx, 0, 0, rows, IC, OC, dout_g, OC, weights[g], IC,
                     1.0f, dinp + row * IC, IC);
        if (dweights && dweights[g])
            sgemm_v1(vctx, 1, 0, OC, IC, rows, dout_g, OC, inp + row * IC, IC,
                     1.0f, dweights[g], IC);
        row += (size_t)rows;
    }
}

/* ---- references, in double ---- */

/* Eight partial sums so the compiler can vectorise; in double the order
 * does not matter at the tolerances above. */
static double ref_dot(const float *a, const float *b, int n)
{
    double acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += (double)a[i + j] * b[i + j];
    double sum = 0.0;
    for (int j = 0; j < 8; j++)
        sum += acc[j];
    for (; i < n; i++)
        sum += (double)a[i] * b[i];
    return sum;
}

/* out (N, OC) = inp · weightᵀ; dinp (N, IC) = dout · weight;
 * dweight (OC, IC) = doutᵀ · inp. Each element is one dot product. */
static void reference_linear(int threads, double *out, double *dinp,
                             double *dweight, const float *inp,
                             const float *weight, const float *dout, int N,
                             int IC, int OC)
{
    float *weight_t = new_transpose(weight, OC, IC); /* (IC, OC) */
    float *dout_t = new_transpose(dout, N, OC);      /* (OC, N) */
    float *inp_t = new_transpose(inp, N, IC);        /* (IC, N) */
    size_t work = (size_t)N * IC * OC;
    CPU_PARALLEL_FOR(threads, work)
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++)
            out[(size_t)n * OC + o] = ref_dot(inp + (size_t)n * IC,
                                              weight + (size_t)o * IC, IC);
        for (int i = 0; i < IC; i++)
            dinp[(size_t)n * IC + i] = ref_dot(dout + (size_t)n * OC,
                                               weight_t + (size_t)i * OC, OC);
    }
    CPU_PARALLEL_FOR(threads, work)
    for (int o = 0; o < OC; o++)
        for (int i = 0; i < IC; i++)
            dweight[(size_t)o * IC + i] = ref_dot(
                dout_t + (size_t)o * N, inp_t + (size_t)i * N, N);
    free(weight_t);
    free(dout_t);
    free(inp_t);
}

static double ref_dot_double(const float *a, const float *b, int n)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)a[i] * b[i];
    return sum;
}

/* Causal softmax attention straight from the definition. */
static void reference_attention_forward(int threads, double *out,
                                        double *probs, const float *qkv,
                                        int B, int T, int C, int n_heads)
{
    int head_dim = C / n_heads;
    double scale = 1.0 / sqrt((double)head_dim);
    size_t stride = (size_t)3 * C;
    CPU_PARALLEL_FOR(threads, (size_t)B * n_heads * T * T * head_dim)
    for (int bh = 0; bh < B * n_heads; bh++) {
        int b = bh / n_heads, h = bh % n_heads;
        const float *q = qkv + (size_t)b * T * stride + h * head_dim;
        const float *k = q + C, *v = q + 2 * C;
        for (int t = 0; t < T; t++) {
            double *p = probs + ((size_t)bh * T + t) * T;
            double max_score = -INFINITY, sum = 0.0;
            for (int j = 0; j <= t; j++) {
                p[j] = scale * ref_dot_double(q + t * stride, k + j * stride,
                                              head_dim);
                max_score = fmax(max_score, p[j]);
            }
            for (int j = 0; j <= t; j++) {
                p[j] = exp(p[j] - max_score);
                sum += p[j];
            }
            for (int j = 0; j <= t; j++)
                p[j] /= sum;
            for (int j = t + 1; j < T; j++)
                p[j] = 0.0;
            double *o = out + ((size_t)b * T + t) * C + h * head_dim;
            for (int d = 0; d < head_dim; d++) {
                double acc = 0.0;
                for (int j = 0; j <= t; j++)
                    acc += p[j] * v[j * stride + d];
                o[d] = acc;
            }
        }
    }
}

/* dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(P ⊙ dP)), dQ = dS K·scale,
 * dK = dSᵀ Q·scale, with the given (float) probabilities P. */
static void reference_attention_backward(int threads, double *dqkv,
                                         const float *dout, const float *qkv,
                                         const float *probs, int B, int T,
                                         int C, int n_heads)
{
    int head_dim = C / n_heads;
    double scale = 1.0 / sqrt((double)head_dim);
    size_t stride = (size_t)3 * C;
    CPU_PARALLEL_FOR(threads, (size_t)B * n_heads * T * T * head_dim)
    for (int bh = 0; bh < B * n_heads; bh++) {
        int b = bh / n_heads, h = bh % n_heads;
        size_t head = (size_t)b * T * stride + (size_t)h * head_dim;
        const float *q = qkv + head, *k = q + C, *v = q + 2 * C;
        double *dq = dqkv + head, *dk = dq + C, *dv = dq + 2 * C;
        double *dp = xmalloc((size_t)T * sizeof *dp);
        for (int t = 0; t < T; t++) {
            const float *p = probs + ((size_t)bh * T + t) * T;
            const float *dO = dout + ((size_t)b * T + t) * C + h * head_dim;
            double p_dot_dp = 0.0;
            for (int j = 0; j <= t; j++) {
                dp[j] = ref_dot_double(dO, v + j * stride, head_dim);
                p_dot_dp += p[j] * dp[j];
            }
            for (int j = 0; j <= t; j++) {
                double ds = p[j] * (dp[j] - p_dot_dp) * scale;
                for (int d = 0; d < head_dim; d++) {
                    dq[t * stride + d] += ds * k[j * stride + d];
                    dk[j * stride + d] += ds * q[t * stride + d];
                    dv[j * stride + d] += (double)p[j] * dO[d];
                }
            }
        }
        free(dp);
    }
}

/* ---- checking, timing, reporting ---- */

typedef struct kernel_lab {
    backend be;
    int threads;
    int reps;
    int quick;
    int failures;
} kernel_lab;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* NaN anywhere gives NaN, which fails every tolerance. */
static double max_rel_error(const float *got, const double *want, size_t n,
                            double floor_fraction)
{
    double floor = 0.0;
    if (floor_fraction > 0.0) {
        double sum_squares = 0.0;
        for (size_t i = 0; i < n; i++)
            sum_squares += want[i] * want[i];
        floor = floor_fraction * sqrt(sum_squares / (double)(n ? n : 1));
    }
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]);
        double scale = fmax(fabs(want[i]), floor);
        double rel = scale > 0.0 ? err / scale : (err > 0.0 ? INFINITY : 0.0);
        if (isnan(rel))
            return NAN;
        worst = fmax(worst, rel);
    }
    return worst;
}

typedef void (*lab_step_fn)(void *state);

/* Median of lab->reps timed runs of `run`; `reset` (may be NULL) runs
 * before each, untimed. */
static double lab_time_ms(const kernel_lab *lab, lab_step_fn run,
                          lab_step_fn reset, void *state)
{
    double *ms = xmalloc((size_t)lab->reps * sizeof *ms);
    for (int r = 0; r < lab->reps; r++) {
        if (reset)
            reset(state);
        double start = now_ms();
        run(state);
        ms[r] = now_ms() - start;
    }
    qsort(ms, (size_t)lab->reps, sizeof *ms, compare_doubles);
    int n = lab->reps;
    double median = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
    free(ms);
    return median;
}

static void print_header(const kernel_lab *lab)
{
    printf("kernel lab: %d thread%s, %s\n", lab->threads,
           lab->threads == 1 ? "" : "s",
           lab->quick ? "quick shapes, checks only"
                      : "bench shapes, median of timed runs");
    printf("%-15s %-27s %-22s %8s %7s %-4s  %9s %8s %8s %6s\n", "op", "shape",
           "version", "rel err", "tol", "check", "ms", "GFLOP/s", "ns/elem",
           "vs v1");
}

/* One table row. flop and elements are per run (0: not meaningful);
 * v1_ms is the v1 time of the same op, 0 for v1 itself. */
static void report(kernel_lab *lab, const char *op, const char *shape,
                   const char *version, double rel_error, double tol,
                   double ms, double flop, double elements, double v1_ms)
{
    int ok = rel_error <= tol;
    if (!ok)
        lab->failures++;
    printf("%-15s %-27s %-22s %8.1e %7.0e ", op, shape, version, rel_error,
           tol);
    if (lab->quick) {
        printf("%s\n", ok ? "ok" : "FAIL");
        return;
    }
    printf("%-4s  %9.3f", ok ? "ok" : "FAIL", ms);
    if (flop > 0.0)
        printf(" %8.1f", flop / (ms * 1e-3) / 1e9);
    else
        printf(" %8s", "-");
    if (elements > 0.0)
        printf(" %8.2f", ms * 1e6 / elements);
    else
        printf(" %8s", "-");
    if (v1_ms > 0.0)
        printf(" %5.2fx", v1_ms / ms);
    printf("\n");
}

/* ---- attention ---- */

typedef struct attention_version {
    const char *name;
    void (*forward)(void *ctx, float *out, float *probs, const float *qkv,
                    int B, int T, int C, int n_heads);
    void (*backward)(void *ctx, float *dqkv, const float *dout,
                     const float *qkv, const float *probs, int B, int T,
                     int C, int n_heads);
} attention_version;

static const attention_version attention_versions[] = {
    {"v1 loops, libm expf", attention_forward_v1, attention_backward_v1},
    {"v2 blocked GEMMs", cpu_attention_forward, cpu_attention_backward},
};

typedef struct attention_state {
    const kernel_lab *lab;
    const attention_version *version;
    int B, T, C, n_heads;
    const float *qkv;      /* (B*T, 3C) */
    const float *dout;     /* (B*T, C) */
    const float *probs_in; /* (B, n_heads, T, T) backward input */
    float *out;            /* (B*T, C) */
    float *probs;          /* (B, n_heads, T, T) */
    float *dqkv;           /* (B*T, 3C) */
} attention_state;

static void attention_run_forward(void *vstate)
{
    attention_state *s = vstate;
    s->version->forward(s->lab->be.ctx, s->out, s->probs, s->qkv, s->B, s->T,
                        s->C, s->n_heads);
}

static void attention_run_backward(void *vstate)
{
    attention_state *s = vstate;
    s->version->backward(s->lab->be.ctx, s->dqkv, s->dout, s->qkv,
                         s->probs_in, s->B, s->T, s->C, s->n_heads);
}

static void attention_reset_backward(void *vstate)
{
    attention_state *s = vstate;
    memset(s->dqkv, 0, (size_t)s->B * s->T * 3 * s->C * sizeof *s->dqkv);
}

static void lab_attention(kernel_lab *lab, int B, int T, int C, int n_heads)
{
    size_t rows = (size_t)B * T, probs_n = (size_t)B * n_heads * T * T;
    attention_state s = {.lab = lab, .B = B, .T = T, .C = C,
                         .n_heads = n_heads};
    /* Scale 2 spreads the scores (std ≈ 1.5) so softmax is not flat. */
    float *qkv = new_random(rows * 3 * C, 2.0f);
    float *dout = new_random(rows * C, 1.0f);
    float *probs_in = new_floats(probs_n);
    double *want_out = new_doubles(rows * C);
    double *want_probs = new_doubles(probs_n);
    double *want_dqkv = new_doubles(rows * 3 * C);
    reference_attention_forward(lab->threads, want_out, want_probs, qkv, B, T,
                                C, n_heads);
    for (size_t i = 0; i < probs_n; i++)
        probs_in[i] = (float)want_probs[i];
    reference_attention_backward(lab->threads, want_dqkv, dout, qkv, probs_in,
                                 B, T, C, n_heads);
    s.qkv = qkv;
    s.dout = dout;
    s.probs_in = probs_in;
    s.out = new_floats(rows * C);
    s.probs = new_floats(probs_n);
    s.dqkv = new_floats(rows * 3 * C);

    char shape[64];
    snprintf(shape, sizeof shape, "B%d T%d C%d H%d", B, T, C, n_heads);
    /* Useful flops only (the causal triangle), so wasted work is not
     * credited: 2 GEMMs forward, 4 backward, each 2·hd per (t, j ≤ t). */
    double pairs = (double)B * n_heads * T * (T + 1) / 2.0;
    double flop_pair = 2.0 * (C / n_heads);
    int count = (int)(sizeof attention_versions / sizeof *attention_versions);

    double v1_ms = 0.0;
    for (int v = 0; v < count; v++) {
        s.version = &attention_versions[v];
        attention_run_forward(&s);
        double err = fmax(max_rel_error(s.out, want_out, rows * C, FLOOR_GEMM),
                          max_rel_error(s.probs, want_probs, probs_n,
                                        FLOOR_GEMM));
        double ms = lab->quick ? 0.0
                               : lab_time_ms(lab, attention_run_forward, NULL,
                                             &s);
        report(lab, "attention fwd", shape, s.version->name, err,
               TOL_ATTENTION, ms, 2 * pairs * flop_pair, 0, v ? v1_ms : 0);
        v1_ms = v ? v1_ms : ms;
    }
    for (int v = 0; v < count; v++) {
        s.version = &attention_versions[v];
        attention_reset_backward(&s);
        attention_run_backward(&s);
        double err = max_rel_error(s.dqkv, want_dqkv, rows * 3 * C,
                                   FLOOR_GEMM);
        double ms = lab->quick ? 0.0
                               : lab_time_ms(lab, attention_run_backward,
                                             attention_reset_backward, &s);
        report(lab, "attention bwd", shape, s.version->name, err,
               TOL_ATTENTION, ms, 4 * pairs * flop_pair, 0, v ? v1_ms : 0);
        v1_ms = v ? v1_ms : ms;
    }
    free(qkv);
    free(dout);
    free(probs_in);
    free(want_out);
    free(want_probs);
    free(want_dqkv);
    free(s.out);
    free(s.probs);
    free(s.dqkv);
}

/* ---- exp and sigmoid ---- */

/* Single-threaded: the library calls them on one row inside its parallel
 * loops. The buffer (256 KiB at bench size) stays in cache, as a softmax or
 * SwiGLU row block does; each timed run makes `passes` passes over it. */

typedef struct exp_version {
    const char *name;
    void (*exp_shifted)(float *y, const float *x, float shift, int n);
    void (*sigmoid)(float *y, const float *x, int n);
} exp_version;

static const exp_version exp_versions[] = {
    {"v1 libm expf", exp_shifted_v1, sigmoid_v1},
    {"v2 cpu_math.h", cpu_exp_shifted, cpu_sigmoid},
};

typedef struct exp_state {
    const exp_version *version;
    const float *x;
    float *y;
    float shift;
    int n, passes;
} exp_state;

static void exp_run(void *vstate)
{
    exp_state *s = vstate;
    for (int p = 0; p < s->passes; p++)
        s->version->exp_shifted(s->y, s->x, s->shift, s->n);
}

static void sigmoid_run(void *vstate)
{
    exp_state *s = vstate;
    for (int p = 0; p < s->passes; p++)
        s->version->sigmoid(s->y, s->x, s->n);
}

static void lab_exp(kernel_lab *lab, int n, int passes)
{
    int count = (int)(sizeof exp_versions / sizeof *exp_versions);
    float *x = xmalloc((size_t)n * sizeof *x);
    double *want = new_doubles((size_t)n);
    exp_state s = {.x = x, .y = new_floats((size_t)n), .n = n,
                   .passes = lab->quick ? 1 : passes};
    char shape[64];
    snprintf(shape, sizeof shape, "n=%d x%d", n, s.passes);
    double elements = (double)n * s.passes;

    /* exp(x − max x) as softmax calls it: arguments span [-80, 0]. The
     * reference takes the same float argument, so only exp is measured. */
    float max_x = -INFINITY;
    for (int i = 0; i < n; i++) {
        x[i] = (float)(-70.0 + 80.0 * rng_unit());
        max_x = fmaxf(max_x, x[i]);
    }
    s.shift = max_x;
    for (int i = 0; i < n; i++)
        want[i] = exp((double)(x[i] - s.shift));
    double v1_ms = 0.0;
    for (int v = 0; v < count; v++) {
        s.version = &exp_versions[v];
        exp_run(&s);
        double err = max_rel_error(s.y, want, (size_t)n, 0.0);
        double ms = lab->quick ? 0.0 : lab_time_ms(lab, exp_run, NULL, &s);
        report(lab, "exp", shape, s.version->name, err, TOL_EXP, ms, 0,
               elements, v ? v1_ms : 0);
        v1_ms = v ? v1_ms : ms;
    }

    /* sigmoid over [-20, 20]: gate values of SwiGLU and beyond. */
    for (int i = 0; i < n; i++) {
        x[i] = (float)(-20.0 + 40.0 * rng_unit());
        want[i] = 1.0 / (1.0 + exp(-(double)x[i]));
    }
    for (int v = 0; v < count; v++) {
        s.version = &exp_versions[v];
        sigmoid_run(&s);
        double err = max_rel_error(s.y, want, (size_t)n, 0.0);
        double ms = lab->quick ? 0.0 : lab_time_ms(lab, sigmoid_run, NULL, &s);
        report(lab, "sigmoid", shape, s.version->name, err, TOL_SIGMOID, ms,
               0, elements, v ? v1_ms : 0);
        v1_ms = v ? v1_ms : ms;
    }
    free(x);
    free(want);
    free(s.y);
}

/* ---- dense matmul ---- */

typedef struct matmul_version {
    const char *name;
    void (*forward)(void *ctx, float *out, const float *inp,
                    const float *weight, int N, int IC, int OC);
    void (*backward)(void *ctx, float *dinp, float *dweight,
                     const float *dout, const float *inp,
                     const float *weight, int N, int IC, int OC);
} matmul_version;

static const matmul_version matmul_versions[] = {
    {"v1 one threaded BLAS", matmul_forward_v1, matmul_backward_v1},
    {"v2 GEMM per thread", cpu_matmul_forward, cpu_matmul_backward},
};

typedef struct matmul_state {
    const kernel_lab *lab;
    const matmul_version *version;
    int N, IC, OC;
    const float *inp, *weight, *dout;
    float *out, *dinp, *dweight;
} matmul_state;

static void matmul_run_forward(void *vstate)
{
    matmul_state *s = vstate;
    s->version->forward(s->lab->be.ctx, s->out, s->inp, s->weight, s->N,
                        s->IC, s->OC);
}

static void matmul_run_backward(void *vstate)
{
    matmul_state *s = vstate;
    s->version->backward(s->lab->be.ctx, s->dinp, s->dweight, s->dout,
                         s->inp, s->weight, s->N, s->IC, s->OC);
}

static void matmul_reset_backward(void *vstate)
{
    matmul_state *s = vstate;
    memset(s->dinp, 0, (size_t)s->N * s->IC * sizeof *s->dinp);
    memset(s->dweight, 0, (size_t)s->OC * s->IC * sizeof *s->dweight);
}

static void lab_matmul(kernel_lab *lab, int N, int IC, int OC)
{
    size_t n_out = (size_t)N * OC, n_inp = (size_t)N * IC,
           n_weight = (size_t)OC * IC;
    float *inp = new_random(n_inp, 1.0f);
    float *weight = new_random(n_weight, 1.0f);
    float *dout = new_random(n_out, 1.0f);
    double *want_out = new_doubles(n_out), *want_dinp = new_doubles(n_inp),
           *want_dweight = new_doubles(n_weight);
    reference_linear(lab->threads, want_out, want_dinp, want_dweight, inp,
                     weight, dout, N, IC, OC);
    matmul_state s = {.lab = lab, .N = N, .IC = IC, .OC = OC, .inp = inp,
                      .weight = weight, .dout = dout,
                      .out = new_floats(n_out), .dinp = new_floats(n_inp),
                      .dweight = new_floats(n_weight)};
    char shape[64];
    snprintf(shape, sizeof shape, "N%d IC%d OC%d", N, IC, OC);
    double flop = 2.0 * N * IC * OC;
    int count = (int)(sizeof matmul_versions / sizeof *matmul_versions);

    double v1_ms = 0.0;
    for (int v = 0; v < count; v++) {
        s.version = &matmul_versions[v];
        matmul_run_forward(&s);
        double err = max_rel_error(s.out, want_out, n_out, FLOOR_GEMM);
        double ms = lab->quick ? 0.0
                               : lab_time_ms(lab, matmul_run_forward, NULL,
                                             &s);
        report(lab, "matmul fwd", shape, s.version->name, err, TOL_GEMM, ms,
               flop, 0, v ? v1_ms : 0);
        v1_ms = v ? v1_ms : ms;
    }
    for (int v = 0; v < count; v++) {
        s.version = &matmul_versions[v];
        matmul_reset_backward(&s);
        matmul_run_backward(&s);
        double err = fmax(
            max_rel_error(s.dinp, want_dinp, n_inp, FLOOR_GEMM),
            max_rel_error(s.dweight, want_dweight, n_weight, FLOOR_GEMM));
        double ms = lab->quick ? 0.0
                               : lab_time_ms(lab, matmul_run_backward,
                                             matmul_reset_backward, &s);
        report(lab, "matmul bwd", shape, s.version->name, err, TOL_GEMM, ms,
               2 * flop, 0, v ? v1_ms : 0);
        v1_ms = v ? v1_ms : ms;
    }
    free(inp);
    free(weight);
    free(dout);
    free(want_out);
    free(want_dinp);
    free(want_dweight);
    free(s.out);
    free(s.dinp);
    free(s.dweight);
}

/* ---- grouped (per-expert) matmul ---- */

typedef struct grouped_version {
    const char *name;
    void (*forward)(void *ctx, float *out, const float *inp,
                    const float *const *weights, const int *group_rows,
                    int groups, int IC, int OC);
    void (*backward)(void *ctx, float *dinp, float *const *dweights,
                     const float *dout, const float *inp,
                     const float *const *weights, const int *group_rows,
                     int groups, int IC, int OC);
} grouped_version;

static const grouped_version grouped_versions[] = {
    {"v1 experts in turn", grouped_matmul_forward_v1,
     grouped_matmul_backward_v1},
    {"v2 experts per thread", cpu_grouped_matmul_forward,
     cpu_grouped_matmul_backward},
};

typedef struct grouped_state {
    const kernel_lab *lab;
    const grouped_version *version;
    const int *group_rows;
    int groups, rows, IC, OC;
    const float *inp, *dout;
    const float *const *weights; /* (groups) views of (OC, IC) */
    float *const *dweights;      /* (groups) views into dweight */
    float *out, *dinp, *dweight; /* dweight (groups, OC, IC) */
} grouped_state;

static void grouped_run_forward(void *vstate)
{
    grouped_state *s = vstate;
    s->version->forward(s->lab->be.ctx, s->out, s->inp, s->weights,
                        s->group_rows, s->groups, s->IC, s->OC);
}

static void grouped_run_backward(void *vstate)
{
    grouped_state *s = vstate;
    s->version->backward(s->lab->be.ctx, s->dinp, s->dweights, s->dout,
                         s->inp, s->weights, s->group_rows, s->groups, s->IC,
                         s->OC);
}

static void grouped_reset_backward(void *vstate)
{
    grouped_state *s = vstate;
    memset(s->dinp, 0, (size_t)s->rows * s->IC * sizeof *s->dinp);
    memset(s->dweight, 0,
           (size_t)s->groups * s->OC * s->IC * sizeof *s->dweight);
}

static void lab_grouped(kernel_lab *lab, const int *group_rows, int groups,
                        int IC, int OC)
{
    int rows = 0, fewest = group_rows[0], most = group_rows[0];
    for (int g = 0; g < groups; g++) {
        rows += group_rows[g];
        fewest = group_rows[g] < fewest ? group_rows[g] : fewest;
        most = group_rows[g] > most ? group_rows[g] : most;
    }
    size_t n_out = (size_t)rows * OC, n_inp = (size_t)rows * IC,
           per_group = (size_t)OC * IC, n_weight = (size_t)groups * per_group;
    float *inp = new_random(n_inp, 1.0f);
    float *weight = new_random(n_weight, 1.0f);
    float *dout = new_random(n_out, 1.0f);
    float *dweight = new_floats(n_weight);
    const float **weights = xmalloc((size_t)groups * sizeof *weights);
    float **dweights = xmalloc((size_t)groups * sizeof *dweights);
    double *want_out = new_doubles(n_out), *want_dinp = new_doubles(n_inp),
           *want_dweight = new_doubles(n_weight);
    for (int g = 0, first = 0; g < groups; g++) {
        weights[g] = weight + g * per_group;
        dweights[g] = dweight + g * per_group;
        reference_linear(lab->threads, want_out + (size_t)first * OC,
                         want_dinp + (size_t)first * IC,
                         want_dweight + g * per_group,
                         inp + (size_t)first * IC, weights[g],
                         dout + (size_t)first * OC, group_rows[g], IC, OC);
        first += group_rows[g];
    }
    grouped_state s = {.lab = lab, .group_rows = group_rows,
                       .groups = groups, .rows = rows, .IC = IC, .OC = OC,
                       .inp = inp, .dout = dout, .weights = weights,
                       .dweights = dweights, .out = new_floats(n_out),
                       .dinp = new_floats(n_inp), .dweight = dweight};
    char shape[64];
    snprintf(shape, sizeof shape, "%dx(%d..%d) IC%d OC%d", groups, fewest,
             most, IC, OC);
    double flop = 2.0 * rows * IC * OC;
    int count = (int)(sizeof grouped_versions / sizeof *grouped_versions);

    double v1_ms = 0.0;
    for (int v = 0; v < count; v++) {
        s.version = &grouped_versions[v];
        grouped_run_forward(&s);
        double err = max_rel_error(s.out, want_out, n_out, FLOOR_GEMM);
        double ms = lab->quick ? 0.0
                               : lab_time_ms(lab, grouped_run_forward, NULL,
                                             &s);
        report(lab, "grouped fwd", shape, s.version->name, err, TOL_GEMM, ms,
               flop, 0, v ? v1_ms : 0);
        v1_ms = v ? v1_ms : ms;
    }
    for (int v = 0; v < count; v++) {
        s.version = &grouped_versions[v];
        grouped_reset_backward(&s);
        grouped_run_backward(&s);
        double err = fmax(
            max_rel_error(s.dinp, want_dinp, n_inp, FLOOR_GEMM),
            max_rel_error(s.dweight, want_dweight, n_weight, FLOOR_GEMM));
        double ms = lab->quick ? 0.0
                               : lab_time_ms(lab, grouped_run_backward,
                                             grouped_reset_backward, &s);
        report(lab, "grouped bwd", shape, s.version->name, err, TOL_GEMM, ms,
               2 * flop, 0, v ? v1_ms : 0);
        v1_ms = v ? v1_ms : ms;
    }
    free(inp);
    free(weight);
    free(dout);
    free(dweight);
    free(weights);
    free(dweights);
    free(want_out);
    free(want_dinp);
    free(want_dweight);
    free(s.out);
    free(s.dinp);
}

/* ---- main ---- */

static void usage(FILE *to)
{
    fprintf(to, "usage: kernel_lab [--quick] [--threads N] [--reps N]\n"
                "  --quick      tiny shapes, one run, checks only\n"
                "  --threads N  backend threads (default 2)\n"
                "  --reps N     timed runs per version (default 10)\n");
}

/* Parses a whole decimal argument in [lo, hi]; -1 when it is not one. */
static int parse_count(const char *text, int lo, int hi)
{
    char *end;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || value < lo || value > hi)
        return -1;
    return (int)value;
}

int main(int argc, char **argv)
{
    kernel_lab lab = {.threads = 2, .reps = 10};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            lab.quick = 1;
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            lab.threads = parse_count(argv[++i], 1, 64);
            if (lab.threads < 0) {
                fprintf(stderr, "kernel_lab: --threads wants 1..64\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            lab.reps = parse_count(argv[++i], 1, 1000);
            if (lab.reps < 0) {
                fprintf(stderr, "kernel_lab: --reps wants 1..1000\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "kernel_lab: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (cpu_backend_init(&lab.be, lab.threads) < 0) {
        fprintf(stderr, "kernel_lab: out of memory\n");
        return 1;
    }
    print_header(&lab);

    if (lab.quick) {
        /* T = 67: a full and a partial row block of 64. */
        lab_attention(&lab, 2, 67, 48, 3);
        lab_exp(&lab, 1003, 1);
        /* The first is big enough to be split over threads, the second
         * stays one GEMM. */
        lab_matmul(&lab, 257, 256, 272);
        lab_matmul(&lab, 129, 40, 24);
        /* An empty expert, serial path; then enough work for the
         * experts-per-thread path. */
        static const int few_rows[] = {7, 0, 13, 9, 11};
        lab_grouped(&lab, few_rows, 5, 48, 80);
        int more_rows[6];
        for (int g = 0; g < 6; g++)
            more_rows[g] = 30 + rng_int(21);
        lab_grouped(&lab, more_rows, 6, 128, 96);
    } else {
        /* configs/bench.yaml: B=8, T=256, d_model=256, 4 heads, 16 experts
         * of hidden 512 (gate_up OC = 1024), top-2 of 2048 tokens. */
        lab_attention(&lab, 8, 256, 256, 4);
        lab_exp(&lab, 65536, 32);
        lab_matmul(&lab, 2048, 256, 768);
        lab_matmul(&lab, 2048, 256, 1024);
        lab_matmul(&lab, 2048, 1024, 256);
        int expert_rows[16];
        for (int g = 0; g < 16; g++)
            expert_rows[g] = 200 + rng_int(121); /* 200..320, ~256 */
        lab_grouped(&lab, expert_rows, 16, 256, 1024);
        lab_grouped(&lab, expert_rows, 16, 512, 256);
    }

    cpu_backend_finish(&lab.be);
    if (lab.failures) {
        printf("kernel lab: %d check%s FAILED\n", lab.failures,
               lab.failures == 1 ? "" : "s");
        return 1;
    }
    printf("kernel lab: all checks passed\n");
    return 0;
}
