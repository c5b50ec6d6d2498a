/* Dense and grouped (per-expert) linear layers on the GPU. Weights are
 * (OC, IC), PyTorch-style, so the forward multiplies by the transpose.
 *
 * Products go to cuBLAS where the build has a BLAS and the context a
 * handle; otherwise (Debian's HIP has no hipBLAS) to the tiled kernel
 * below. Define MOECTL_FORCE_TILED_GEMM to compile the BLAS path out, so
 * the fallback can be built and tested with nvcc too; a CUDA context whose
 * blas handle is NULL also takes the fallback at run time. */
#include "kernels/cuda/cuda_ops.h"

#include "kernels/cuda/gpu_backend.h"

#include "kernels/cuda/gpu_vendor.h"

#if GPU_HAVE_BLAS && !defined(MOECTL_FORCE_TILED_GEMM)
#define GEMM_USE_BLAS 1
#else
#define GEMM_USE_BLAS 0
#endif

/* The tiled kernel: a block computes a GEMM_TILE x GEMM_TILE tile of C with
 * GEMM_THREADS_SIDE² threads, each owning GEMM_PER_THREAD² outputs spaced
 * GEMM_THREADS_SIDE apart. op(A) and op(B) are staged through shared memory
 * GEMM_TILE_K values of k at a time. Every output is one fused
 * multiply-add chain over k = 0 .. K-1 in order, so results are bitwise
 * reproducible and independent of the launch shape. */
#define GEMM_TILE 64
#define GEMM_TILE_K 16
#define GEMM_THREADS_SIDE 16
#define GEMM_PER_THREAD (GEMM_TILE / GEMM_THREADS_SIDE)
#define GEMM_THREADS (GEMM_THREADS_SIDE * GEMM_THREADS_SIDE)
#define GEMM_MAX_GRID_Y 65535

/* Row-major C (M, N) = op(A) (M, K) · op(B) (K, N) + beta * C, with
 * op(X) = Xᵀ when the flag is set. beta == 0 overwrites C without reading
 * it (C may hold NaN). */
static __global__ void gemm_tiled_kernel(int trans_a, int trans_b, int M,
                                         int N, int K, const float *A,
                                         int lda, const float *B, int ldb,
                                         float beta, float *C, int ldc)
{
    /* +1 column: the transposed loads write down a column */
    __shared__ float a_tile[GEMM_TILE_K][GEMM_TILE + 1]; /* [k][row] */
    __shared__ float b_tile[GEMM_TILE_K][GEMM_TILE + 1]; /* [k][col] */
    int tx = threadIdx.x, ty = threadIdx.y;
    int tid = ty * GEMM_THREADS_SIDE + tx;
    int col0 = blockIdx.x * GEMM_TILE;
    int tiles_m = (M + GEMM_TILE - 1) / GEMM_TILE;

    /* Tile rows beyond the grid's y limit: the block moves down. */
    for (int tile_m = blockIdx.y; tile_m < tiles_m; tile_m += gridDim.y) {
        int row0 = tile_m * GEMM_TILE;
        float acc[GEMM_PER_THREAD][GEMM_PER_THREAD];
        for (int r = 0; r < GEMM_PER_THREAD; r++)
            for (int c = 0; c < GEMM_PER_THREAD; c++)
                acc[r][c] = 0.0f;

        for (int k0 = 0; k0 < K; k0 += GEMM_TILE_K) {
            /* Consecutive threads read consecutive addresses of the
             * stored matrix: along k when it is stored k-contiguous. */
            for (int e = tid; e < GEMM_TILE * GEMM_TILE_K;
                 e += GEMM_THREADS) {
                int i, k;
                if (trans_a) { /* A is (K, M) */
                    k = e / GEMM_TILE, i = e % GEMM_TILE;
                } else {       /* A is (M, K) */
                    i = e / GEMM_TILE_K, k = e % GEMM_TILE_K;
                }
                int row = row0 + i, kk = k0 + k;
                float a = 0.0f;
                if (row < M && kk < K)
                    a = trans_a ? A[(size_t)kk * lda + row]
                                : A[(size_t)row * lda + kk];
                a_tile[k][i] = a;

                int j;
                if (trans_b) { /* B is (N, K) */
                    j = e / GEMM_TILE_K, k = e % GEMM_TILE_K;
                } else {       /* B is (K, N) */
                    k = e / GEMM_TILE, j = e % GEMM_TILE;
                }
                int col = col0 + j;
                kk = k0 + k;
                float b = 0.0f;
                if (col < N && kk < K)
                    b = trans_b ? B[(size_t)col * ldb + kk]
                                : B[(size_t)kk * ldb + col];
                b_tile[k][j] = b;
            }
            __syncthreads();
            for (int k = 0; k < GEMM_TILE_K; k++) {
                float a[GEMM_PER_THREAD], b[GEMM_PER_THREAD];
                for (int r = 0; r < GEMM_PER_THREAD; r++)
                    a[r] = a_tile[k][ty + r * GEMM_THREADS_SIDE];
                for (int c = 0; c < GEMM_PER_THREAD; c++)
                    b[c] = b_tile[k][tx + c * GEMM_THREADS_SIDE];
                for (int r = 0; r < GEMM_PER_THREAD; r++)
                    for (int c = 0; c < GEMM_PER_THREAD; c++)
                        acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
            }
            __syncthreads();
        }

        for (int r = 0; r < GEMM_PER_THREAD; r++) {
            int row = row0 + ty + r * GEMM_THREADS_SIDE;
            if (row >= M)
                break;
            for (int c = 0; c < GEMM_PER_THREAD; c++) {
                int col = col0 + tx + c * GEMM_THREADS_SIDE;
                if (col >= N)
                    break;
                float *dst = C + (size_t)row * ldc + col;
                *dst = beta == 0.0f ? acc[r][c] : acc[r][c] + beta * *dst;
            }
        }
    }
}

static void gemm_tiled(int trans_a, int trans_b, int M, int N, int K,
                       const float *A, int lda, const float *B, int ldb,
                       float beta, float *C, int ldc)
{
    int tiles_m = (M + GEMM_TILE - 1) / GEMM_TILE;
    dim3 grid((unsigned)((N + GEMM_TILE - 1) / GEMM_TILE),
              (unsigned)(tiles_m < GEMM_MAX_GRID_Y ? tiles_m
                                                   : GEMM_MAX_GRID_Y));
    dim3 block(GEMM_THREADS_SIDE, GEMM_THREADS_SIDE);
    gemm_tiled_kernel<<<grid, block>>>(trans_a, trans_b, M, N, K, A, lda, B,
                                       ldb, beta, C, ldc);
    GPU_CHECK_LAUNCH();
}

/* Row-major C (M, N) = op(A) · op(B) + beta * C, queued on the default
 * stream (callers synchronise once at the end). */
static void gemm(const gpu_context *ctx, int trans_a, int trans_b, int M,
                 int N, int K, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        /* BLAS rejects leading dimensions of 0; the tiled kernel with no
         * k steps writes beta * C, i.e. zeros for beta == 0. */
        if (beta == 0.0f)
            gemm_tiled(trans_a, trans_b, M, N, 0, A, 1, B, 1, beta, C, ldc);
        return;
    }
#if GEMM_USE_BLAS
    if (ctx->blas) {
        /* cuBLAS is column-major: a row-major matrix is its transpose, so
         * row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ. */
        const float one = 1.0f;
#if defined(MOECTL_HIP)
        BLAS_CHECK(cublasSgemm((cublasHandle_t)ctx->blas,
                               trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                               trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                               &one, B, ldb, A, lda, &beta, C, ldc));
#else
        /* fp32 data throughout; the compute type says what the tensor
         * cores may round the inputs to (accumulation stays fp32). */
        cublasComputeType_t compute =
            ctx->precision == GPU_PRECISION_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32
            : ctx->precision == GPU_PRECISION_BF16 ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                   : CUBLAS_COMPUTE_32F;
        BLAS_CHECK(cublasGemmEx((cublasHandle_t)ctx->blas,
                                trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                                &one, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda,
                                &beta, C, CUDA_R_32F, ldc, compute,
                                CUBLAS_GEMM_DEFAULT));
#endif
        return;
    }
#else
    (void)ctx;
#endif
    gemm_tiled(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
}

/* Ops return after their work is done (cuda_ops.h). */
static void gemm_end(void)
{
    GPU_CHECK(cudaDeviceSynchronize());
}

void gpu_matmul_forward(void *vctx, float *out, const float *inp,
                        const float *weight, int N, int IC, int OC)
{
    const gpu_context *ctx = (const gpu_context *)vctx;
    /* out (N, OC) = inp (N, IC) · weightᵀ */
    gemm(ctx, 0, 1, N, OC, IC, inp, IC, weight, IC, 0.0f, out, OC);
    gemm_end();
}

void gpu_matmul_backward(void *vctx, float *dinp, float *dweight,
                         const float *dout, const float *inp,
                         const float *weight, int N, int IC, int OC)
{
    const gpu_context *ctx = (const gpu_context *)vctx;
    /* dinp (N, IC) += dout (N, OC) · weight (OC, IC) */
    if (dinp)
        gemm(ctx, 0, 0, N, IC, OC, dout, OC, weight, IC, 1.0f, dinp, IC);
    /* dweight (OC, IC) += doutᵀ (OC, N) · inp (N, IC) */
    if (dweight)
        gemm(ctx, 1, 0, OC, IC, N, dout, OC, inp, IC, 1.0f, dweight, IC);
    gemm_end();
}

void gpu_grouped_matmul_forward(void *vctx, float *out, const float *inp,
                                const float *const *weights,
                                const int *group_rows, int groups, int IC,
                                int OC)
{
    const gpu_context *ctx = (const gpu_context *)vctx;
    /* group_rows and weights are managed memory the host reads to launch
     * the work: wait for whatever wrote them. */
    GPU_CHECK(cudaDeviceSynchronize());
    size_t row = 0;
    for (int g = 0; g < groups; g++) {
        int rows = group_rows[g];
        if (rows <= 0)
            continue;
        gemm(ctx, 0, 1, rows, OC, IC, inp + row * IC, IC, weights[g], IC,
             0.0f, out + row * OC, OC);
        row += (size_t)rows;
    }
    gemm_end();
}

void gpu_grouped_matmul_backward(void *vctx, float *dinp,
                                 float *const *dweights, const float *dout,
                                 const float *inp, const float *const *weights,
                                 const int *group_rows, int groups, int IC,
                                 int OC)
{
    const gpu_context *ctx = (const gpu_context *)vctx;
    GPU_CHECK(cudaDeviceSynchronize());
    size_t row = 0;
    for (int g = 0; g < groups; g++) {
        int rows = group_rows[g];
        if (rows <= 0)
            continue;
        const float *dout_g = dout + row * OC;
        /* dinp rows (rows, IC) = dout_g · weights[g]: SET */
        if (dinp)
            gemm(ctx, 0, 0, rows, IC, OC, dout_g, OC, weights[g], IC, 0.0f,
                 dinp + row * IC, IC);
        /* dweights[g] (OC, IC) += dout_gᵀ · inp rows */
        float *dweight = dweights ? dweights[g] : NULL;
        if (dweight)
            gemm(ctx, 1, 0, OC, IC, rows, dout_g, OC, inp + row * IC, IC,
                 1.0f, dweight, IC);
        row += (size_t)rows;
    }
    gemm_end();
}
