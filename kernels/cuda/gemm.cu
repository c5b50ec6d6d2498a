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

#if GEMM_USE_BLAS && !defined(MOECTL_HIP)
/* fp32 data throughout; the compute type says what the tensor cores may
 * round the inputs to (accumulation stays fp32). */
static cublasComputeType_t compute_type(const gpu_context *ctx)
{
    return ctx->precision == GPU_PRECISION_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32
           : ctx->precision == GPU_PRECISION_BF16 ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                  : CUBLAS_COMPUTE_32F;
}
#endif

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
        BLAS_CHECK(cublasGemmEx((cublasHandle_t)ctx->blas,
                                trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                                &one, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda,
                                &beta, C, CUDA_R_32F, ldc,
                                compute_type(ctx), CUBLAS_GEMM_DEFAULT));
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

/* The GEMMs of a grouped op (one a non-empty expert, and in the backward
 * two), gathered so that cuBLAS runs them in one grouped batched call:
 * one launch for all experts instead of one each. Each problem is its own
 * group of one, with its own sizes, transposes and beta. Builds without
 * cuBLAS 12.5's grouped call, HIP, the tiled fallback, and a cuBLAS that
 * refuses the call for this precision run them one by one. */
#if GEMM_USE_BLAS && !defined(MOECTL_HIP) && CUBLAS_VERSION >= 120500
#define GEMM_GROUPED 1
#else
#define GEMM_GROUPED 0
#endif

struct gemm_batch {
    int count, capacity;
    /* The problems as gemm() takes them (row-major). */
    int *trans_a, *trans_b, *M, *N, *K, *lda, *ldb, *ldc;
    float *beta;
    const float **A, **B;
    float **C;
#if GEMM_GROUPED
    /* The same problems as cuBLAS's grouped call takes them (host arrays;
     * alpha and group_size are all ones). */
    cublasOperation_t *op_a, *op_b;
    int *col_m, *col_n, *col_lda, *col_ldb, *group_size;
    float *alpha;
#endif
    void **device_ptrs; /* managed: 3 · capacity pointers for cuBLAS */
};

void gpu_gemm_batch_free(gpu_context *ctx)
{
    struct gemm_batch *b = ctx->batch;
    if (!b)
        return;
    free(b->trans_a), free(b->trans_b), free(b->M), free(b->N), free(b->K);
    free(b->lda), free(b->ldb), free(b->ldc), free(b->beta);
    free(b->A), free(b->B), free(b->C);
#if GEMM_GROUPED
    free(b->op_a), free(b->op_b), free(b->col_m), free(b->col_n);
    free(b->col_lda), free(b->col_ldb), free(b->group_size), free(b->alpha);
#endif
    if (b->device_ptrs)
        GPU_CHECK(cudaFree(b->device_ptrs));
    free(b);
    ctx->batch = NULL;
}

/* Room for `count` problems; 0, or -1 (reported) when out of memory. */
static int batch_reserve(gpu_context *ctx, int count)
{
    struct gemm_batch *b = ctx->batch;
    if (!b) {
        b = ctx->batch = (struct gemm_batch *)calloc(1, sizeof *b);
        if (!b)
            goto fail;
    }
    b->count = 0;
    if (count <= b->capacity)
        return 0;
#define GROW(field) \
    do { \
        void *p = realloc(b->field, (size_t)count * sizeof *b->field); \
        if (!p) \
            goto fail; \
        b->field = (decltype(b->field))p; \
    } while (0)
    GROW(trans_a); GROW(trans_b); GROW(M); GROW(N); GROW(K);
    GROW(lda); GROW(ldb); GROW(ldc); GROW(beta); GROW(A); GROW(B); GROW(C);
#if GEMM_GROUPED
    GROW(op_a); GROW(op_b); GROW(col_m); GROW(col_n); GROW(col_lda);
    GROW(col_ldb); GROW(group_size); GROW(alpha);
    for (int i = 0; i < count; i++)
        b->group_size[i] = 1, b->alpha[i] = 1.0f;
#endif
#undef GROW
    if (b->device_ptrs)
        GPU_CHECK(cudaFree(b->device_ptrs));
    b->device_ptrs = NULL;
    if (cudaMallocManaged((void **)&b->device_ptrs,
                          3 * (size_t)count * sizeof(void *)) != cudaSuccess)
        goto fail;
    b->capacity = count;
    return 0;
fail:
    /* Arrays may be half grown: a capacity of 0 sends every GEMM of this
     * op straight to gemm(). */
    if (b)
        b->capacity = 0;
    gpu_report_failure("gemm batch", "out of memory", __func__, __FILE__,
                       __LINE__);
    return -1;
}

static void batch_add(gpu_context *ctx, int trans_a, int trans_b, int M,
                      int N, int K, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc)
{
    struct gemm_batch *b = ctx->batch;
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0 || !b || b->count == b->capacity) {
        gemm(ctx, trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int i = b->count++;
    b->trans_a[i] = trans_a, b->trans_b[i] = trans_b;
    b->M[i] = M, b->N[i] = N, b->K[i] = K;
    b->A[i] = A, b->lda[i] = lda, b->B[i] = B, b->ldb[i] = ldb;
    b->beta[i] = beta, b->C[i] = C, b->ldc[i] = ldc;
}

static void gemm_one_by_one(gpu_context *ctx, const struct gemm_batch *b)
{
    for (int i = 0; i < b->count; i++)
        gemm(ctx, b->trans_a[i], b->trans_b[i], b->M[i], b->N[i], b->K[i],
             b->A[i], b->lda[i], b->B[i], b->ldb[i], b->beta[i], b->C[i],
             b->ldc[i]);
}

static void batch_run(gpu_context *ctx)
{
    struct gemm_batch *b = ctx->batch;
    if (!b || b->count == 0)
        return;
#if GEMM_GROUPED
    if (ctx->blas && !ctx->grouped_unsupported) {
        /* Column-major, as in gemm(): row-major C = op(A)·op(B) is
         * Cᵀ = op(B)ᵀ·op(A)ᵀ, so cuBLAS's A is our B and its m our N. */
        int n = b->count;
        const void **ptr_a = (const void **)b->device_ptrs;
        const void **ptr_b = ptr_a + n;
        void **ptr_c = b->device_ptrs + 2 * n;
        for (int i = 0; i < n; i++) {
            b->op_a[i] = b->trans_b[i] ? CUBLAS_OP_T : CUBLAS_OP_N;
            b->op_b[i] = b->trans_a[i] ? CUBLAS_OP_T : CUBLAS_OP_N;
            b->col_m[i] = b->N[i], b->col_n[i] = b->M[i];
            ptr_a[i] = b->B[i], b->col_lda[i] = b->ldb[i];
            ptr_b[i] = b->A[i], b->col_ldb[i] = b->lda[i];
            ptr_c[i] = b->C[i];
        }
        cublasStatus_t status = cublasGemmGroupedBatchedEx(
            (cublasHandle_t)ctx->blas, b->op_a, b->op_b, b->col_m, b->col_n,
            b->K, b->alpha, ptr_a, CUDA_R_32F, b->col_lda, ptr_b, CUDA_R_32F,
            b->col_ldb, b->beta, ptr_c, CUDA_R_32F, b->ldc, n, b->group_size,
            compute_type(ctx));
        if (status == CUBLAS_STATUS_SUCCESS) {
            b->count = 0;
            return;
        }
        if (status != CUBLAS_STATUS_NOT_SUPPORTED) {
            char detail[64];
            snprintf(detail, sizeof detail, "cuBLAS status %d on %d GEMMs",
                     (int)status, n);
            gpu_report_failure("cublasGemmGroupedBatchedEx", detail,
                               __func__, __FILE__, __LINE__);
            b->count = 0;
            return;
        }
        /* This cuBLAS has no grouped kernel for this precision. */
        ctx->grouped_unsupported = 1;
    }
#endif
    gemm_one_by_one(ctx, b);
    b->count = 0;
}

void gpu_grouped_matmul_forward(void *vctx, float *out, const float *inp,
                                const float *const *weights,
                                const int *group_rows, int groups, int IC,
                                int OC)
{
    gpu_context *ctx = (gpu_context *)vctx;
    /* group_rows and weights are managed memory the host reads to launch
     * the work: wait for whatever wrote them. */
    GPU_CHECK(cudaDeviceSynchronize());
    batch_reserve(ctx, groups);
    size_t row = 0;
    for (int g = 0; g < groups; g++) {
        int rows = group_rows[g];
        if (rows <= 0)
            continue;
        batch_add(ctx, 0, 1, rows, OC, IC, inp + row * IC, IC, weights[g],
                  IC, 0.0f, out + row * OC, OC);
        row += (size_t)rows;
    }
    batch_run(ctx);
    gemm_end();
}

void gpu_grouped_matmul_backward(void *vctx, float *dinp,
                                 float *const *dweights, const float *dout,
                                 const float *inp, const float *const *weights,
                                 const int *group_rows, int groups, int IC,
                                 int OC)
{
    gpu_context *ctx = (gpu_context *)vctx;
    GPU_CHECK(cudaDeviceSynchronize());
    batch_reserve(ctx, 2 * groups);
    size_t row = 0;
    for (int g = 0; g < groups; g++) {
        int rows = group_rows[g];
        if (rows <= 0)
            continue;
        const float *dout_g = dout + row * OC;
        /* dinp rows (rows, IC) = dout_g · weights[g]: SET */
        if (dinp)
            batch_add(ctx, 0, 0, rows, IC, OC, dout_g, OC, weights[g], IC,
                      0.0f, dinp + row * IC, IC);
        /* dweights[g] (OC, IC) += dout_gᵀ · inp rows */
        float *dweight = dweights ? dweights[g] : NULL;
        if (dweight)
            batch_add(ctx, 1, 0, OC, IC, rows, dout_g, OC, inp + row * IC,
                      IC, 1.0f, dweight, IC);
        row += (size_t)rows;
    }
    batch_run(ctx);
    gemm_end();
}
