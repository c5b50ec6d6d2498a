/* Dense and grouped (per-expert) linear layers on OpenBLAS, or in bf16
 * through oneDNN (bf16_gemm.c) under precision bf16. Weights are (OC, IC),
 * PyTorch-style, so the forward multiplies by the transpose. */
#include "kernels/cpu/cpu_ops.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#if HAVE_OPENMP
#include <omp.h>
#endif

/* OpenBLAS's thread count is process-wide, and several CPU backends with
 * different counts may live in one process (tests do this). */
static void blas_use_threads(const cpu_context *ctx)
{
    if (openblas_get_num_threads() != ctx->threads)
        openblas_set_num_threads(ctx->threads);
}

/* Row-major C (M, N) = op(A) · op(B) + beta * C, op = transpose when the
 * flag is set. Empty products are handled here because BLAS rejects
 * leading dimensions of 0. */
static void sgemm(const cpu_context *ctx, int trans_a, int trans_b, int M,
                  int N, int K, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc)
{
    if (ctx->bf16) { /* a failure is reported by the backend's last_error */
        cpu_bf16_gemm(ctx->bf16, 0, ctx->threads, trans_a, trans_b, M, N, K,
                      A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        if (beta == 0.0f)
            for (int i = 0; i < M; i++)
                memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof *C);
        return;
    }
    blas_use_threads(ctx);
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda,
                B, ldb, beta, C, ldc);
}

/* sgemm with B a weight: under bf16 its copy is rounded once a step. */
static void sgemm_by_weight(const cpu_context *ctx, int trans_a, int trans_b,
                            int M, int N, int K, const float *A, int lda,
                            const float *W, int ldw, float beta, float *C,
                            int ldc)
{
    if (ctx->bf16)
        cpu_bf16_gemm_weight(ctx->bf16, 0, ctx->threads, trans_a, trans_b, M,
                             N, K, A, lda, W, ldw, beta, C, ldc);
    else
        sgemm(ctx, trans_a, trans_b, M, N, K, A, lda, W, ldw, beta, C, ldc);
}

void cpu_blas_serial_begin(void)
{
    openblas_set_num_threads(1);
}

void cpu_sgemm_serial(int trans_a, int trans_b, int M, int N, int K,
                      float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
                B, ldb, beta, C, ldc);
}

/* Dense products are split into one single-threaded GEMM per thread along
 * a dimension that needs no reduction (rows of out and dinp, rows of
 * dweight): on two cores two independent GEMMs run faster than one GEMM
 * on two BLAS threads, and each part's result does not depend on how many
 * parts there are. Small products stay whole. */
static int split_threads(const cpu_context *ctx, size_t flops, int rows)
{
    /* oneDNN threads its own GEMMs. */
    if (ctx->bf16 || ctx->threads < 2 || flops < (size_t)1 << 24 || rows < 2 * ctx->threads)
        return 1;
    return ctx->threads;
}

/* Rows [first, first + count) of part `part` of `parts` over `rows`. */
static void split_rows(int rows, int parts, int part, int *first, int *count)
{
    int base = rows / parts, extra = rows % parts;
    *first = part * base + (part < extra ? part : extra);
    *count = base + (part < extra ? 1 : 0);
}

void cpu_matmul_forward(void *vctx, float *out, const float *inp,
                        const float *weight, int N, int IC, int OC)
{
    /* out (N, OC) = inp (N, IC) · weightᵀ */
    cpu_context *ctx = vctx;
    int parts = split_threads(ctx, (size_t)N * IC * OC, N);
    if (parts == 1) {
        sgemm_by_weight(ctx, 0, 1, N, OC, IC, inp, IC, weight, IC, 0.0f, out,
                        OC);
        return;
    }
    cpu_blas_serial_begin();
#if HAVE_OPENMP
#pragma omp parallel for num_threads(parts) schedule(static)
#endif
    for (int part = 0; part < parts; part++) {
        int first, count;
        split_rows(N, parts, part, &first, &count);
        cpu_sgemm_serial(0, 1, count, OC, IC, 1.0f, inp + (size_t)first * IC,
                         IC, weight, IC, 0.0f, out + (size_t)first * OC, OC);
    }
}

void cpu_matmul_forward_fp32(void *vctx, float *out, const float *inp,
                             const float *weight, int N, int IC, int OC)
{
    cpu_context fp32 = *(const cpu_context *)vctx;
    fp32.bf16 = NULL; /* only the GEMMs read the copy */
    cpu_matmul_forward(&fp32, out, inp, weight, N, IC, OC);
}

void cpu_matmul_backward(void *vctx, float *dinp, float *dweight,
                         const float *dout, const float *inp,
                         const float *weight, int N, int IC, int OC)
{
    cpu_context *ctx = vctx;
    int parts = split_threads(ctx, (size_t)N * IC * OC, N < OC ? N : OC);
    if (parts == 1) {
        /* dinp (N, IC) += dout (N, OC) · weight (OC, IC) */
        if (dinp)
            sgemm_by_weight(ctx, 0, 0, N, IC, OC, dout, OC, weight, IC, 1.0f,
                            dinp, IC);
        /* dweight (OC, IC) += doutᵀ (OC, N) · inp (N, IC) */
        if (dweight)
            sgemm(ctx, 1, 0, OC, IC, N, dout, OC, inp, IC, 1.0f, dweight, IC);
        return;
    }
    cpu_blas_serial_begin();
#if HAVE_OPENMP
#pragma omp parallel for num_threads(parts) schedule(static)
#endif
    for (int part = 0; part < parts; part++) {
        int first, count;
        if (dinp) {
            split_rows(N, parts, part, &first, &count);
            cpu_sgemm_serial(0, 0, count, IC, OC, 1.0f,
                             dout + (size_t)first * OC, OC, weight, IC, 1.0f,
                             dinp + (size_t)first * IC, IC);
        }
        if (dweight) {
            split_rows(OC, parts, part, &first, &count);
            cpu_sgemm_serial(1, 0, count, IC, N, 1.0f, dout + first, OC, inp,
                             IC, 1.0f, dweight + (size_t)first * IC, IC);
        }
    }
}

/* How a grouped product is spread over the threads: when no group holds
 * most of the rows, whole groups go to threads (largest first onto the
 * least-loaded thread) and each runs single-threaded GEMMs, which beats
 * splitting every small GEMM over all threads. Each group's result is the
 * same whichever thread computes it. */
typedef struct group_plan {
    int threads;   /* 1: one group after another, BLAS threads inside */
    int *owner;    /* (groups) thread of each group */
    size_t *first; /* (groups) first row of each group */
} group_plan;

static int group_plan_init(group_plan *plan, const cpu_context *ctx,
                           const int *group_rows, int groups, size_t row_work)
{
    plan->owner = malloc((size_t)groups * sizeof *plan->owner);
    plan->first = malloc((size_t)groups * sizeof *plan->first);
    if (!plan->owner || !plan->first) {
        free(plan->owner);
        free(plan->first);
        return -1;
    }
    size_t total = 0, largest = 0;
    for (int g = 0; g < groups; g++) {
        size_t rows = group_rows[g] > 0 ? (size_t)group_rows[g] : 0;
        plan->first[g] = total;
        total += rows;
        largest = rows > largest ? rows : largest;
    }
    plan->threads = ctx->threads;
    if (ctx->threads < 2 || groups < 2 || 2 * largest > total ||
        total * row_work < CPU_PARALLEL_MIN_WORK * 64) {
        plan->threads = 1;
        return 0;
    }
    size_t load[64] = {0};
    int threads = ctx->threads < 64 ? ctx->threads : 64;
    plan->threads = threads;
    for (int g = 0; g < groups; g++)
        plan->owner[g] = -1;
    for (int placed = 0; placed < groups; placed++) {
        int pick = -1;
        for (int g = 0; g < groups; g++)
            if (plan->owner[g] < 0 &&
                (pick < 0 || group_rows[g] > group_rows[pick]))
                pick = g;
        int target = 0;
        for (int t = 1; t < threads; t++)
            if (load[t] < load[target])
                target = t;
        plan->owner[pick] = target;
        load[target] += group_rows[pick] > 0 ? (size_t)group_rows[pick] : 0;
    }
    return 0;
}

static void group_plan_finish(group_plan *plan)
{
    free(plan->owner);
    free(plan->first);
}

static int current_thread(void)
{
#if HAVE_OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* One single-threaded GEMM on the calling thread of a parallel region:
 * OpenBLAS's, or bf16 in this thread's slot (B a weight or not). */
static void gemm_on_thread(const cpu_context *ctx, int b_weight, int trans_a,
                           int trans_b, int M, int N, int K, const float *A,
                           int lda, const float *B, int ldb, float beta,
                           float *C, int ldc)
{
    if (ctx->bf16 && b_weight)
        cpu_bf16_gemm_weight(ctx->bf16, current_thread(), 1, trans_a,
                             trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
    else if (ctx->bf16)
        cpu_bf16_gemm(ctx->bf16, current_thread(), 1, trans_a, trans_b, M, N,
                      K, A, lda, B, ldb, beta, C, ldc);
    else
        cpu_sgemm_serial(trans_a, trans_b, M, N, K, 1.0f, A, lda, B, ldb,
                         beta, C, ldc);
}

static void grouped_forward_one(const cpu_context *ctx, int serial,
                                float *out, const float *inp,
                                const float *weight, size_t row, int rows,
                                int IC, int OC)
{
    if (serial)
        gemm_on_thread(ctx, 1, 0, 1, rows, OC, IC, inp + row * IC, IC, weight,
                       IC, 0.0f, out + row * OC, OC);
    else
        sgemm_by_weight(ctx, 0, 1, rows, OC, IC, inp + row * IC, IC, weight,
                        IC, 0.0f, out + row * OC, OC);
}

static void grouped_backward_one(const cpu_context *ctx, int serial,
                                 float *dinp, float *dweight,
                                 const float *dout, const float *inp,
                                 const float *weight, size_t row, int rows,
                                 int IC, int OC)
{
    const float *dout_g = dout + row * OC;
    if (serial) {
        if (dinp)
            gemm_on_thread(ctx, 1, 0, 0, rows, IC, OC, dout_g, OC, weight, IC,
                           0.0f, dinp + row * IC, IC);
        if (dweight)
            gemm_on_thread(ctx, 0, 1, 0, OC, IC, rows, dout_g, OC,
                           inp + row * IC, IC, 1.0f, dweight, IC);
    } else {
        if (dinp)
            sgemm_by_weight(ctx, 0, 0, rows, IC, OC, dout_g, OC, weight, IC,
                            0.0f, dinp + row * IC, IC);
        if (dweight)
            sgemm(ctx, 1, 0, OC, IC, rows, dout_g, OC, inp + row * IC, IC,
                  1.0f, dweight, IC);
    }
}

void cpu_grouped_matmul_forward(void *vctx, float *out, const float *inp,
                                const float *const *weights,
                                const int *group_rows, int groups, int IC,
                                int OC)
{
    cpu_context *ctx = vctx;
    group_plan plan;
    if (group_plan_init(&plan, ctx, group_rows, groups,
                        (size_t)IC * OC) < 0) {
        plan.threads = 1; /* out of memory: the plain loop needs nothing */
        for (size_t g = 0, row = 0; g < (size_t)groups; g++) {
            if (group_rows[g] > 0)
                grouped_forward_one(ctx, 0, out, inp, weights[g], row,
                                    group_rows[g], IC, OC);
            row += group_rows[g] > 0 ? (size_t)group_rows[g] : 0;
        }
        return;
    }
    if (plan.threads == 1) {
        for (int g = 0; g < groups; g++)
            if (group_rows[g] > 0)
                grouped_forward_one(ctx, 0, out, inp, weights[g],
                                    plan.first[g], group_rows[g], IC, OC);
    } else {
        cpu_blas_serial_begin();
#if HAVE_OPENMP
#pragma omp parallel num_threads(plan.threads)
#endif
        {
            int me = current_thread();
            for (int g = 0; g < groups; g++)
                if (plan.owner[g] == me && group_rows[g] > 0)
                    grouped_forward_one(ctx, 1, out, inp, weights[g],
                                        plan.first[g], group_rows[g], IC, OC);
        }
    }
    group_plan_finish(&plan);
}

void cpu_grouped_matmul_backward(void *vctx, float *dinp,
                                 float *const *dweights, const float *dout,
                                 const float *inp,
                                 const float *const *weights,
                                 const int *group_rows, int groups, int IC,
                                 int OC)
{
    cpu_context *ctx = vctx;
    group_plan plan;
    int planned = group_plan_init(&plan, ctx, group_rows, groups,
                                  (size_t)IC * OC) == 0;
    if (!planned || plan.threads == 1) {
        for (size_t g = 0, row = 0; g < (size_t)groups; g++) {
            if (group_rows[g] > 0)
                grouped_backward_one(ctx, 0, dinp,
                                     dweights ? dweights[g] : NULL, dout, inp,
                                     weights[g], row, group_rows[g], IC, OC);
            row += group_rows[g] > 0 ? (size_t)group_rows[g] : 0;
        }
    } else {
        cpu_blas_serial_begin();
#if HAVE_OPENMP
#pragma omp parallel num_threads(plan.threads)
#endif
        {
            int me = current_thread();
            for (int g = 0; g < groups; g++)
                if (plan.owner[g] == me && group_rows[g] > 0)
                    grouped_backward_one(ctx, 1, dinp,
                                         dweights ? dweights[g] : NULL, dout,
                                         inp, weights[g], plan.first[g],
                                         group_rows[g], IC, OC);
        }
    }
    if (planned)
        group_plan_finish(&plan);
}
