/* Row-wise and element-wise ops on the GPU: embedding, RMSNorm, RoPE,
 * SwiGLU, the residual add, the squared norm and AdamW. Each mirrors its
 * CPU reference in kernels/cpu/ (same formulas, same order of operations
 * within an element); reductions run in a fixed order, never with atomics,
 * so results repeat bit for bit. */
#include "kernels/cuda/cuda_ops.h"

#include "kernels/cuda/gpu_vendor.h"
#include "kernels/cuda/gpu_reduce.cuh"

#include <mutex>

/* Threads per block of the element-wise kernels. */
#define ROWS_THREADS 256
/* Threads per block of the one-block-per-row reductions: a power of two,
 * for the tree in gpu_block_sum. */
#define ROWS_REDUCE_THREADS 256

/* ---- embedding ---- */

static __global__ void embedding_forward_kernel(float *out, const int *tokens,
                                                const float *wte, int N,
                                                int C)
{
    size_t total = (size_t)N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / C, c = i % C;
        out[i] = wte[(size_t)tokens[n] * C + c];
    }
}

void gpu_embedding_forward(void *ctx, float *out, const int *tokens,
                           const float *wte, int N, int C)
{
    (void)ctx;
    size_t total = (size_t)N * C;
    if (N > 0 && C > 0) {
        embedding_forward_kernel<<<gpu_blocks(total, ROWS_THREADS),
                                   ROWS_THREADS>>>(out, tokens, wte, N, C);
        GPU_CHECK_LAUNCH();
    }
    GPU_CHECK(cudaDeviceSynchronize());
}

/* dwte row v collects the dout rows of the tokens equal to v. The tokens
 * arrive sorted by value (stable, so each value's rows are in increasing
 * order): row v's rows are order[ends[v-1] .. ends[v]). One thread per
 * (v, c) adds them in that order, as the CPU does, with no atomics. */
static __global__ void embedding_backward_kernel(float *dwte,
                                                 const float *dout,
                                                 const int *order,
                                                 const int *ends, int V,
                                                 int C)
{
    size_t total = (size_t)V * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int v = (int)(i / C);
        size_t c = i % C;
        int begin = v > 0 ? ends[v - 1] : 0, end = ends[v];
        if (begin == end)
            continue;
        float acc = dwte[i];
        for (int j = begin; j < end; j++)
            acc += dout[(size_t)order[j] * C + c];
        dwte[i] = acc;
    }
}

void gpu_embedding_backward(void *ctx, float *dwte, const float *dout,
                            const int *tokens, int N, int C)
{
    (void)ctx;
    if (N <= 0 || C <= 0)
        return;
    /* The vocabulary size is not an argument: the host reads the tokens
     * (managed memory) and counting-sorts them, which keeps the kernel's
     * work at N * C whatever the vocabulary. */
    GPU_CHECK(cudaDeviceSynchronize());
    int largest = -1;
    for (int n = 0; n < N; n++) {
        if (tokens[n] < 0) {
            gpu_report_failure("tokens[n] >= 0", "negative token",
                               __func__, __FILE__, __LINE__);
            return;
        }
        largest = tokens[n] > largest ? tokens[n] : largest;
    }
    int V = largest + 1;
    int *scratch = NULL; /* ends (V), then order (N) */
    GPU_CHECK(cudaMallocManaged((void **)&scratch,
                                ((size_t)V + N) * sizeof *scratch));
    if (!scratch)
        return;
    int *ends = scratch, *order = scratch + V;
    for (int v = 0; v < V; v++)
        ends[v] = 0;
    for (int n = 0; n < N; n++)
        ends[tokens[n]]++;
    /* exclusive prefix sums: the first slot of each value */
    for (int v = 0, start = 0; v < V; v++) {
        int count = ends[v];
        ends[v] = start;
        start += count;
    }
    /* placing advances each value's slot to its end */
    for (int n = 0; n < N; n++)
        order[ends[tokens[n]]++] = n;

    embedding_backward_kernel<<<gpu_blocks((size_t)V * C, ROWS_THREADS),
                                ROWS_THREADS>>>(dwte, dout, order, ends, V,
                                                C);
    GPU_CHECK_LAUNCH();
    GPU_CHECK(cudaDeviceSynchronize());
    GPU_CHECK(cudaFree(scratch));
}

/* ---- RMSNorm ---- */

/* One block per row. */
static __global__ void rmsnorm_forward_kernel(float *out, float *rstd,
                                              const float *inp,
                                              const float *weight, int N,
                                              int C, float eps)
{
    __shared__ float partial[ROWS_REDUCE_THREADS];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float sum = 0.0f;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            sum += x[c] * x[c];
        sum = gpu_block_sum(sum, partial);
        float r = 1.0f / sqrtf(sum / (float)C + eps);
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            o[c] = x[c] * r * weight[c];
        if (rstd && threadIdx.x == 0)
            rstd[n] = r;
    }
}

void gpu_rmsnorm_forward(void *ctx, float *out, float *rstd, const float *inp,
                         const float *weight, int N, int C, float eps)
{
    (void)ctx;
    if (N > 0 && C > 0) {
        rmsnorm_forward_kernel<<<gpu_blocks((size_t)N, 1),
                                 ROWS_REDUCE_THREADS>>>(out, rstd, inp,
                                                        weight, N, C, eps);
        GPU_CHECK_LAUNCH();
    }
    GPU_CHECK(cudaDeviceSynchronize());
}

/* dx_c += r (dy_c w_c - x_c r² Σ_j dy_j w_j x_j / C), one block per row. */
static __global__ void rmsnorm_backward_dinp_kernel(
    float *dinp, const float *dout, const float *inp, const float *weight,
    const float *rstd, int N, int C)
{
    __shared__ float partial[ROWS_REDUCE_THREADS];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = inp + (size_t)n * C;
        const float *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float r = rstd[n];
        float dot = 0.0f;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            dot += dy[c] * weight[c] * x[c];
        dot = gpu_block_sum(dot, partial);
        float coef = r * r * dot / (float)C;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            dx[c] += r * (dy[c] * weight[c] - x[c] * coef);
    }
}

/* dw_c += Σ_n dy_c x_c r_n. A block owns RMSNORM_DW_COLUMNS channels;
 * each of its RMSNORM_DW_LANES lanes sums every LANES-th row in order,
 * and the lanes' sums are added in lane order. */
#define RMSNORM_DW_COLUMNS 32
#define RMSNORM_DW_LANES 16

static __global__ void rmsnorm_backward_dweight_kernel(
    float *dweight, const float *dout, const float *inp, const float *rstd,
    int N, int C)
{
    __shared__ float partial[RMSNORM_DW_LANES][RMSNORM_DW_COLUMNS];
    int lane = threadIdx.y;
    for (int c0 = blockIdx.x * RMSNORM_DW_COLUMNS; c0 < C;
         c0 += gridDim.x * RMSNORM_DW_COLUMNS) {
        int c = c0 + threadIdx.x;
        float sum = 0.0f;
        if (c < C)
            for (int n = lane; n < N; n += RMSNORM_DW_LANES)
                sum += dout[(size_t)n * C + c] * inp[(size_t)n * C + c] *
                       rstd[n];
        partial[lane][threadIdx.x] = sum;
        __syncthreads();
        if (lane == 0 && c < C) {
            float total = partial[0][threadIdx.x];
            for (int l = 1; l < RMSNORM_DW_LANES; l++)
                total += partial[l][threadIdx.x];
            dweight[c] += total;
        }
        __syncthreads();
    }
}

void gpu_rmsnorm_backward(void *ctx, float *dinp, float *dweight,
                          const float *dout, const float *inp,
                          const float *weight, const float *rstd, int N,
                          int C)
{
    (void)ctx;
    if (N > 0 && C > 0 && dinp) {
        rmsnorm_backward_dinp_kernel<<<gpu_blocks((size_t)N, 1),
                                       ROWS_REDUCE_THREADS>>>(
            dinp, dout, inp, weight, rstd, N, C);
        GPU_CHECK_LAUNCH();
    }
    if (N > 0 && C > 0 && dweight) {
        dim3 block(RMSNORM_DW_COLUMNS, RMSNORM_DW_LANES);
        rmsnorm_backward_dweight_kernel<<<gpu_blocks(
                                              (size_t)C, RMSNORM_DW_COLUMNS),
                                          block>>>(dweight, dout, inp, rstd,
                                                   N, C);
        GPU_CHECK_LAUNCH();
    }
    GPU_CHECK(cudaDeviceSynchronize());
}

/* ---- RoPE ---- */

/* One thread per (row, pair i): the angle is evaluated once, in double
 * exactly as the CPU's rope_angle does, and applied to the pair in every
 * q and k head of the row. sign -1 rotates by the negative angle. */
static __global__ void rope_kernel(float *qkv, int rows, int T, int C,
                                   int n_heads, int head_dim, float theta,
                                   float sign)
{
    int half = head_dim / 2;
    size_t total = (size_t)rows * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
         idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        int row = (int)(idx / half), i = (int)(idx % half);
        int t = row % T;
        double inv_freq = pow((double)theta, -2.0 * i / head_dim);
        double angle = (double)t * inv_freq;
        float c = (float)cos(angle), s = sign * (float)sin(angle);
        float *x = qkv + (size_t)row * 3 * C + 2 * i;
        /* q heads then k heads: 2 * n_heads consecutive heads */
        for (int h = 0; h < 2 * n_heads; h++) {
            float *pair = x + (size_t)h * head_dim;
            float x0 = pair[0], x1 = pair[1];
            pair[0] = x0 * c - x1 * s;
            pair[1] = x0 * s + x1 * c;
        }
    }
}

static void rope_apply(float *qkv, int B, int T, int C, int n_heads,
                       float theta, float sign)
{
    int head_dim = n_heads > 0 ? C / n_heads : 0;
    int half = head_dim / 2;
    int rows = B * T;
    if (rows > 0 && half > 0) {
        rope_kernel<<<gpu_blocks((size_t)rows * half, ROWS_THREADS),
                      ROWS_THREADS>>>(qkv, rows, T, C, n_heads, head_dim,
                                      theta, sign);
        GPU_CHECK_LAUNCH();
    }
    GPU_CHECK(cudaDeviceSynchronize());
}

void gpu_rope_forward(void *ctx, float *qkv, int B, int T, int C, int n_heads,
                      float theta)
{
    (void)ctx;
    rope_apply(qkv, B, T, C, n_heads, theta, 1.0f);
}

void gpu_rope_backward(void *ctx, float *dqkv, int B, int T, int C,
                       int n_heads, float theta)
{
    (void)ctx;
    rope_apply(dqkv, B, T, C, n_heads, theta, -1.0f);
}

/* ---- SwiGLU ---- */

static __device__ float swiglu_sigmoid(float x)
{
    return 1.0f / (1.0f + expf(0.0f - x));
}

static __global__ void swiglu_forward_kernel(float *out, const float *gate_up,
                                             int N, int F)
{
    size_t total = (size_t)N * F;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
         idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        size_t n = idx / F, i = idx % F;
        const float *gate = gate_up + n * 2 * F;
        float g = gate[i];
        out[idx] = g * swiglu_sigmoid(g) * gate[F + i];
    }
}

/* dgate_up is SET. silu'(g) = sig * (1 + g * (1 - sig)). */
static __global__ void swiglu_backward_kernel(float *dgate_up,
                                              const float *dout,
                                              const float *gate_up, int N,
                                              int F)
{
    size_t total = (size_t)N * F;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
         idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        size_t n = idx / F, i = idx % F;
        const float *gate = gate_up + n * 2 * F;
        float *dgate = dgate_up + n * 2 * F;
        float g = gate[i], up = gate[F + i], dy = dout[idx];
        float s = swiglu_sigmoid(g);
        dgate[i] = dy * up * s * (1.0f + g * (1.0f - s));
        dgate[F + i] = dy * g * s;
    }
}

void gpu_swiglu_forward(void *ctx, float *out, const float *gate_up, int N,
                        int F)
{
    (void)ctx;
    size_t total = (size_t)N * F;
    if (N > 0 && F > 0) {
        swiglu_forward_kernel<<<gpu_blocks(total, ROWS_THREADS),
                                ROWS_THREADS>>>(out, gate_up, N, F);
        GPU_CHECK_LAUNCH();
    }
    GPU_CHECK(cudaDeviceSynchronize());
}

void gpu_swiglu_backward(void *ctx, float *dgate_up, const float *dout,
                         const float *gate_up, int N, int F)
{
    (void)ctx;
    size_t total = (size_t)N * F;
    if (dgate_up && N > 0 && F > 0) {
        swiglu_backward_kernel<<<gpu_blocks(total, ROWS_THREADS),
                                 ROWS_THREADS>>>(dgate_up, dout, gate_up, N,
                                                 F);
        GPU_CHECK_LAUNCH();
    }
    GPU_CHECK(cudaDeviceSynchronize());
}

/* ---- whole-buffer vector ops ---- */

static __global__ void add_inplace_kernel(float *out, const float *inp,
                                          size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] += inp[i];
}

void gpu_add_inplace(void *ctx, float *out, const float *inp, size_t n)
{
    (void)ctx;
    if (n > 0) {
        add_inplace_kernel<<<gpu_blocks(n, ROWS_THREADS), ROWS_THREADS>>>(
            out, inp, n);
        GPU_CHECK_LAUNCH();
    }
    GPU_CHECK(cudaDeviceSynchronize());
}

/* The buffer is cut into at most SUM_SQUARES_BLOCKS chunks whose size
 * depends only on n (not on the device), one thread block each; the
 * blocks' sums are added on the host in order. */
#define SUM_SQUARES_BLOCKS 1024
#define SUM_SQUARES_MIN_CHUNK 4096

/* Per-block sums, allocated on first use and reused by every call: the
 * optimizer calls this once per tensor and expert each step, too often for
 * an allocation per call. (Not a __managed__ global: HIP 5.2 registers
 * those at load time and crashes when no device is present.) The mutex
 * keeps host threads from sharing it. */
static double *sum_squares_partial;
static std::mutex sum_squares_lock;

static __global__ void sum_squares_kernel(double *partial, const float *x,
                                          size_t n, size_t chunk)
{
    __shared__ double sums[ROWS_REDUCE_THREADS];
    size_t start = blockIdx.x * chunk;
    size_t end = n - start < chunk ? n : start + chunk;
    double acc = 0.0;
    for (size_t i = start + threadIdx.x; i < end; i += blockDim.x)
        acc += (double)x[i] * x[i];
    acc = gpu_block_sum(acc, sums);
    if (threadIdx.x == 0)
        partial[blockIdx.x] = acc;
}

double gpu_sum_squares(void *ctx, const float *x, size_t n)
{
    (void)ctx;
    if (n == 0)
        return 0.0;
    size_t chunk = (n + SUM_SQUARES_BLOCKS - 1) / SUM_SQUARES_BLOCKS;
    if (chunk < SUM_SQUARES_MIN_CHUNK)
        chunk = SUM_SQUARES_MIN_CHUNK;
    int blocks = (int)((n + chunk - 1) / chunk);
    std::lock_guard<std::mutex> hold(sum_squares_lock);
    if (!sum_squares_partial) {
        GPU_CHECK(cudaMallocManaged((void **)&sum_squares_partial,
                                    SUM_SQUARES_BLOCKS * sizeof(double)));
        if (!sum_squares_partial)
            return NAN;
    }
    sum_squares_kernel<<<blocks, ROWS_REDUCE_THREADS>>>(sum_squares_partial,
                                                        x, n, chunk);
    GPU_CHECK_LAUNCH();
    GPU_CHECK(cudaDeviceSynchronize());
    double total = 0.0;
    for (int b = 0; b < blocks; b++)
        total += sum_squares_partial[b];
    return total;
}

/* ---- AdamW ---- */

/* The CPU reference is built without floating-point contraction, so every
 * operation here is an explicitly rounded one (__fmul_rn and friends are
 * never fused into FMAs): the update matches the CPU bit for bit. */
static __global__ void adamw_kernel(float *param, const float *grad, float *m,
                                    float *v, size_t n, float lr, float beta1,
                                    float beta2, float eps,
                                    float weight_decay, float grad_scale,
                                    float bias_correction1,
                                    float bias_correction2)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = __fmul_rn(grad[i], grad_scale);
        float mi = __fadd_rn(__fmul_rn(beta1, m[i]),
                             __fmul_rn(__fsub_rn(1.0f, beta1), g));
        float vi = __fadd_rn(
            __fmul_rn(beta2, v[i]),
            __fmul_rn(__fmul_rn(__fsub_rn(1.0f, beta2), g), g));
        m[i] = mi;
        v[i] = vi;
        float m_hat = __fdiv_rn(mi, bias_correction1);
        float v_hat = __fdiv_rn(vi, bias_correction2);
        float p = param[i];
        float step = __fadd_rn(
            __fdiv_rn(m_hat, __fadd_rn(__fsqrt_rn(v_hat), eps)),
            __fmul_rn(weight_decay, p));
        param[i] = __fsub_rn(p, __fmul_rn(lr, step));
    }
}

void gpu_adamw_update(void *ctx, float *param, const float *grad, float *m,
                      float *v, size_t n, float lr, float beta1, float beta2,
                      float eps, float weight_decay, float grad_scale, int t)
{
    (void)ctx;
    /* the CPU's formula: pow in double, rounded to float once */
    float bias_correction1 = (float)(1.0 - pow((double)beta1, (double)t));
    float bias_correction2 = (float)(1.0 - pow((double)beta2, (double)t));
    if (n > 0) {
        adamw_kernel<<<gpu_blocks(n, ROWS_THREADS), ROWS_THREADS>>>(
            param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay,
            grad_scale, bias_correction1, bias_correction2);
        GPU_CHECK_LAUNCH();
    }
    GPU_CHECK(cudaDeviceSynchronize());
}
