/* Dense and grouped (per-expert) linear layers on OpenBLAS. Weights are
 * (OC, IC), PyTorch-style, so the forward multiplies by the transpose. */
#include "kernels/cpu/cpu_ops.h"

#include <cblas.h>
#include <string.h>

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

void cpu_matmul_forward(void *vctx, float *out, const float *inp,
                        const float *weight, int N, int IC, int OC)
{
    /* out (N, OC) = inp (N, IC) · weightᵀ */
    sgemm(vctx, 0, 1, N, OC, IC, inp, IC, weight, IC, 0.0f, out, OC);
}

void cpu_matmul_backward(void *vctx, float *dinp, float *dweight,
                         const float *dout, const float *inp,
                         const float *weight, int N, int IC, int OC)
{
    /* dinp (N, IC) += dout (N, OC) · weight (OC, IC) */
    if (dinp)
        sgemm(vctx, 0, 0, N, IC, OC, dout, OC, weight, IC, 1.0f, dinp, IC);
    /* dweight (OC, IC) += doutᵀ (OC, N) · inp (N, IC) */
    if (dweight)
        sgemm(vctx, 1, 0, OC, IC, N, dout, OC, inp, IC, 1.0f, dweight, IC);
}

void cpu_grouped_matmul_forward(void *vctx, float *out, const float *inp,
                                const float *const *weights,
                                const int *group_rows, int groups, int IC,
                                int OC)
{
    size_t row = 0;
    for (int g = 0; g < groups; g++) {
        int rows = group_rows[g];
        if (rows > 0)
            sgemm(vctx, 0, 1, rows, OC, IC, inp + row * IC, IC, weights[g],
                  IC, 0.0f, out + row * OC, OC);
        row += rows > 0 ? (size_t)rows : 0;
    }
}

void cpu_grouped_matmul_backward(void *vctx, float *dinp,
                                 float *const *dweights, const float *dout,
                                 const float *inp,
                                 const float *const *weights,
                                 const int *group_rows, int groups, int IC,
                                 int OC)
{
    size_t row = 0;
    for (int g = 0; g < groups; g++) {
        int rows = group_rows[g];
        if (rows <= 0)
            continue;
        const float *dout_g = dout + row * OC;
        if (dinp)
            sgemm(vctx, 0, 0, rows, IC, OC, dout_g, OC, weights[g], IC, 1.0f,
                  dinp + row * IC, IC);
        if (dweights && dweights[g])
            sgemm(vctx, 1, 0, OC, IC, rows, dout_g, OC, inp + row * IC, IC,
                  1.0f, dweights[g], IC);
        row += (size_t)rows;
    }
}
