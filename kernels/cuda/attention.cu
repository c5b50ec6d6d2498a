/* Causal multi-head attention that materialises the probabilities
 * (B, n_heads, T, T), as plain kernels: one block per query row
 * (forward, and dq in the backward pass) or per key row (dk and dv).
 * Every output element is owned by one thread, which sums its terms in a
 * fixed order; block-wide sums go through a fixed-order shared-memory
 * tree. No atomics, so results are bitwise deterministic run to run. */
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/gpu_vendor.h"
#include "kernels/cuda/gpu_reduce.cuh"

#include <math.h>

/* Threads per block: a few warps, and at least one thread per head
 * dimension so each thread owns at most one column of out, dq, dk, dv. */
static int attention_threads(const gpu_context *gpu, int head_dim)
{
    int warp = gpu && gpu->warp_size > 0 ? gpu->warp_size : 64;
    int threads = 4 * warp;
    if (threads < head_dim)
        threads = (head_dim + warp - 1) / warp * warp;
    return threads;
}

static __device__ float attention_dot(const float *a, const float *b, int n)
{
    float sum = 0.0f;
    for (int i = 0; i < n; i++)
        sum += a[i] * b[i];
    return sum;
}

/* One block per row (b, h, t). The row of probs doubles as the scratch for
 * the scores: each thread writes and rereads its own entries, and the
 * barrier in the reductions orders them before the P·V loop reads all. */
static __global__ void attention_forward_kernel(float *out, float *probs,
                                                const float *qkv, int B,
                                                int T, int C, int n_heads,
                                                float scale)
{
    extern __shared__ float attention_shared[];
    int head_dim = C / n_heads;
    float *q_row = attention_shared;           /* (head_dim) */
    float *red = attention_shared + head_dim; /* (blockDim) */
    size_t stride = (size_t)3 * C;
    size_t rows = (size_t)B * n_heads * T;
    int tid = threadIdx.x, threads = blockDim.x;

    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        int t = (int)(row % T);
        size_t bh = row / T;
        int h = (int)(bh % n_heads), b = (int)(bh / n_heads);
        const float *head = qkv + (size_t)b * T * stride + (size_t)h * head_dim;
        const float *k = head + C, *v = head + 2 * C;
        float *p = probs + row * T; /* row = bh * T + t */

        for (int d = tid; d < head_dim; d += threads)
            q_row[d] = head[(size_t)t * stride + d];
        __syncthreads();

        float local_max = -INFINITY;
        for (int j = tid; j <= t; j += threads) {
            float score =
                attention_dot(q_row, k + (size_t)j * stride, head_dim) * scale;
            p[j] = score;
            local_max = fmaxf(local_max, score);
        }
        for (int j = t + 1 + tid; j < T; j += threads)
            p[j] = 0.0f; /* the masked half is part of the contract */
        float max_score = gpu_block_max(local_max, red);

        float local_sum = 0.0f;
        for (int j = tid; j <= t; j += threads) {
            float e = expf(p[j] - max_score);
            p[j] = e;
            local_sum += e;
        }
        float inv_sum = 1.0f / gpu_block_sum(local_sum, red);
        for (int j = tid; j <= t; j += threads)
            p[j] *= inv_sum;
        __syncthreads();

        for (int d = tid; d < head_dim; d += threads) {
            float acc = 0.0f;
            for (int j = 0; j <= t; j++)
                acc += p[j] * v[(size_t)j * stride + d];
            out[((size_t)b * T + t) * C + (size_t)h * head_dim + d] = acc;
        }
        __syncthreads(); /* q_row and p are rewritten by the next row */
    }
}

/* One block per query row (b, h, t):
 *   D_t = Σ_j p_tj dP_tj with dP_tj = dout_t · v_j, stored for the key pass;
 *   dS_tj = p_tj (dP_tj − D_t) · scale;  dq_t += Σ_j dS_tj k_j.
 * dS is produced a block-width chunk of j at a time into shared memory, so
 * memory does not grow with T; each thread owns one column of dq and adds
 * the chunks in order of j. */
static __global__ void attention_backward_query_kernel(
    float *dqkv, float *row_dot, const float *dout, const float *qkv,
    const float *probs, int B, int T, int C, int n_heads, float scale)
{
    extern __shared__ float attention_shared[];
    int head_dim = C / n_heads;
    int threads = blockDim.x, tid = threadIdx.x;
    float *dout_row = attention_shared;            /* (head_dim) */
    float *red = dout_row + head_dim;              /* (blockDim) */
    float *dscore = red + threads;                 /* (blockDim) */
    size_t stride = (size_t)3 * C;
    size_t rows = (size_t)B * n_heads * T;

    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        int t = (int)(row % T);
        size_t bh = row / T;
        int h = (int)(bh % n_heads), b = (int)(bh / n_heads);
        size_t head = (size_t)b * T * stride + (size_t)h * head_dim;
        const float *k = qkv + head + C, *v = qkv + head + 2 * C;
        const float *p = probs + row * T;

        for (int d = tid; d < head_dim; d += threads)
            dout_row[d] =
                dout[((size_t)b * T + t) * C + (size_t)h * head_dim + d];
        __syncthreads();

        float local = 0.0f;
        for (int j = tid; j <= t; j += threads)
            local += p[j] * attention_dot(dout_row, v + (size_t)j * stride,
                                          head_dim);
        float p_dot_dp = gpu_block_sum(local, red);
        if (tid == 0)
            row_dot[row] = p_dot_dp;

        float acc = 0.0f; /* dq_t[tid], threads >= head_dim */
        for (int j0 = 0; j0 <= t; j0 += threads) {
            int j = j0 + tid;
            if (j <= t) {
                float dp = attention_dot(dout_row, v + (size_t)j * stride,
                                         head_dim);
                dscore[tid] = p[j] * (dp - p_dot_dp) * scale;
            }
            __syncthreads();
            int count = t + 1 - j0 < threads ? t + 1 - j0 : threads;
            if (tid < head_dim)
                for (int i = 0; i < count; i++)
                    acc += dscore[i] * k[(size_t)(j0 + i) * stride + tid];
            __syncthreads();
        }
        if (tid < head_dim)
            dqkv[head + (size_t)t * stride + tid] += acc;
    }
}

/* One block per key row (b, h, j), over the queries t >= j that see it:
 *   dk_j += Σ_t dS_tj q_t,  dv_j += Σ_t p_tj dout_t,
 * with dS_tj recomputed from D_t of the query pass. Each thread owns one
 * column of dk and dv and adds the terms in order of t. */
static __global__ void attention_backward_key_kernel(
    float *dqkv, const float *row_dot, const float *dout, const float *qkv,
    const float *probs, int B, int T, int C, int n_heads, float scale)
{
    extern __shared__ float attention_shared[];
    int head_dim = C / n_heads;
    int threads = blockDim.x, tid = threadIdx.x;
    float *v_row = attention_shared;    /* (head_dim) */
    float *dscore = v_row + head_dim;   /* (blockDim) */
    float *prob = dscore + threads;     /* (blockDim) */
    size_t stride = (size_t)3 * C;
    size_t rows = (size_t)B * n_heads * T;

    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        int j = (int)(row % T);
        size_t bh = row / T;
        int h = (int)(bh % n_heads), b = (int)(bh / n_heads);
        size_t head = (size_t)b * T * stride + (size_t)h * head_dim;
        const float *q = qkv + head;
        const float *dout_head = dout + (size_t)b * T * C + (size_t)h * head_dim;
        const float *p = probs + bh * T * T;

        for (int d = tid; d < head_dim; d += threads)
            v_row[d] = qkv[head + 2 * C + (size_t)j * stride + d];
        __syncthreads();

        float dk_acc = 0.0f, dv_acc = 0.0f; /* column tid */
        for (int t0 = j; t0 < T; t0 += threads) {
            int t = t0 + tid;
            if (t < T) {
                float p_tj = p[(size_t)t * T + j];
                float dp = attention_dot(dout_head + (size_t)t * C, v_row,
                                         head_dim);
                dscore[tid] = p_tj * (dp - row_dot[bh * T + t]) * scale;
                prob[tid] = p_tj;
            }
            __syncthreads();
            int count = T - t0 < threads ? T - t0 : threads;
            if (tid < head_dim)
                for (int i = 0; i < count; i++) {
                    size_t r = (size_t)(t0 + i);
                    dk_acc += dscore[i] * q[r * stride + tid];
                    dv_acc += prob[i] * dout_head[r * C + tid];
                }
            __syncthreads();
        }
        if (tid < head_dim) {
            dqkv[head + C + (size_t)j * stride + tid] += dk_acc;
            dqkv[head + 2 * C + (size_t)j * stride + tid] += dv_acc;
        }
    }
}

void gpu_attention_forward(void *ctx, float *out, float *probs,
                           const float *qkv, int B, int T, int C,
                           int n_heads)
{
    size_t rows = (size_t)B * n_heads * T;
    if (rows == 0)
        return;
    int head_dim = C / n_heads;
    int threads = attention_threads((const gpu_context *)ctx, head_dim);
    if (threads > 1024) {
        gpu_report_failure("attention_forward", "head_dim above 1024",
                           __func__, __FILE__, __LINE__);
        return;
    }
    size_t shared = (size_t)(head_dim + threads) * sizeof(float);
    float scale = 1.0f / sqrtf((float)head_dim);
    attention_forward_kernel<<<gpu_blocks(rows, 1), threads, shared>>>(
        out, probs, qkv, B, T, C, n_heads, scale);
    GPU_CHECK_LAUNCH();
    GPU_CHECK(cudaDeviceSynchronize());
}

void gpu_attention_backward(void *ctx, float *dqkv, const float *dout,
                            const float *qkv, const float *probs, int B,
                            int T, int C, int n_heads)
{
    size_t rows = (size_t)B * n_heads * T;
    if (!dqkv || rows == 0)
        return;
    int head_dim = C / n_heads;
    int threads = attention_threads((const gpu_context *)ctx, head_dim);
    if (threads > 1024) {
        gpu_report_failure("attention_backward", "head_dim above 1024",
                           __func__, __FILE__, __LINE__);
        return;
    }
    float scale = 1.0f / sqrtf((float)head_dim);
    size_t shared = (size_t)(head_dim + 2 * threads) * sizeof(float);
    /* D_t, one float per query row, links the two passes. */
    float *row_dot = NULL;
    cudaError_t status = cudaMalloc((void **)&row_dot, rows * sizeof(float));
    GPU_CHECK(status);
    if (status != cudaSuccess)
        return;
    attention_backward_query_kernel<<<gpu_blocks(rows, 1), threads,
                                      shared>>>(dqkv, row_dot, dout, qkv,
                                                probs, B, T, C, n_heads,
                                                scale);
    GPU_CHECK_LAUNCH();
    attention_backward_key_kernel<<<gpu_blocks(rows, 1), threads, shared>>>(
        dqkv, row_dot, dout, qkv, probs, B, T, C, n_heads, scale);
    GPU_CHECK_LAUNCH();
    GPU_CHECK(cudaDeviceSynchronize());
    GPU_CHECK(cudaFree(row_dot));
}
