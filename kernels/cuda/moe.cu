/* The MoE router, token dispatch to and from the expert-sorted slot
 * buffer, and the softmax cross-entropy loss. Every output element is
 * owned by one thread that adds its terms in a fixed order, and block-wide
 * sums go through a fixed-order shared-memory tree: no atomics, so results
 * are bitwise deterministic run to run.
 *
 * Slots follow kernels/cpu/moe_dispatch.c: slot_of[t*K + k] == -1 is an
 * assignment dropped by the capacity limit, token_of_slot[s] == -1 a
 * padding slot (zero row, no gradient). */
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/gpu_vendor.h"
#include "kernels/cuda/gpu_reduce.cuh"
#include "kernels/topk.h"

#include <math.h>

static int moe_threads(const gpu_context *gpu)
{
    int warp = gpu && gpu->warp_size > 0 ? gpu->warp_size : 64;
    return 4 * warp;
}

#define MOE_GRID_STRIDE(i, n)                                                  \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);    \
         i += (size_t)gridDim.x * blockDim.x)

/* ---- router ---------------------------------------------------------- */

/* The CPU reference's exp (cpu_expf in kernels/cpu/cpu_math.h: Cephes
 * polynomial, input clamped to [-87, 88]), operation for operation. Top-k
 * selection is discontinuous, so the router uses the same exp as the
 * reference: the probabilities then agree to the last bit and a near tie
 * cannot pick a different expert than the CPU. */
static __device__ float router_expf(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = rintf(__fmul_rn(x, 1.44269504088896341f));
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, __fmul_rn(r, r), __fadd_rn(r, 1.0f));
    return __fmul_rn(p, __int_as_float(((int)n + 127) * (1 << 23)));
}

/* One thread per token row: E and K are small, and the serial loops keep
 * the CPU's summation order (double sum of the exps) exactly. __fmul_rn
 * and __fadd_rn keep the compiler from fusing into FMAs what the CPU
 * rounds twice. */
static __global__ void router_forward_kernel(float *probs, float *lse,
                                             int *expert_index,
                                             float *gate_weight,
                                             const float *logits,
                                             const float *bias, int N, int E,
                                             int K)
{
    MOE_GRID_STRIDE(n, (size_t)N)
    {
        const float *x = logits + n * E;
        float *p = probs + n * E;
        int *index = expert_index + n * K;
        float *gate = gate_weight + n * K;

        float max_logit = -INFINITY;
        for (int e = 0; e < E; e++)
            if (x[e] > max_logit)
                max_logit = x[e];
        double sum = 0.0;
        for (int e = 0; e < E; e++) {
            p[e] = router_expf(x[e] - max_logit);
            sum += p[e];
        }
        float inv_sum = (float)(1.0 / sum);
        for (int e = 0; e < E; e++)
            p[e] = __fmul_rn(p[e], inv_sum);
        if (lse)
            lse[n] = max_logit + (float)log(sum);

        topk_select(index, p, bias, NULL, E, K);
        float chosen = 0.0f;
        for (int k = 0; k < K; k++)
            chosen += p[index[k]];
        for (int k = 0; k < K; k++)
            gate[k] = p[index[k]] / chosen;
    }
}

/* cpu_dot's order: eight running sums, combined pairwise, then the tail. */
static __device__ float router_dot(const float *a, const float *b, int n)
{
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) +
                ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        sum += a[i] * b[i];
    return sum;
}

/* One thread per token row, the formula of cpu_router_backward: with
 * s = Σ_k p[i_k] and g_k = p[i_k] / s, the gates pass back
 *   dp[i_k] = (dg_k − Σ_m dg_m g_m) / s
 * on top of dprobs, then the softmax backward
 *   dlogit_e += p_e (dp_e − Σ_j p_j dp_j). */
static __global__ void router_backward_kernel(float *dlogits,
                                              const float *dgate_weight,
                                              const float *dprobs,
                                              const float *probs,
                                              const int *expert_index,
                                              const float *gate_weight, int N,
                                              int E, int K)
{
    MOE_GRID_STRIDE(n, (size_t)N)
    {
        const float *p = probs + n * E;
        const int *index = expert_index + n * K;
        const float *gate = gate_weight + n * K;
        const float *dgate = dgate_weight ? dgate_weight + n * K : NULL;
        float *dx = dlogits + n * E;

        float chosen = 0.0f, dg_dot_g = 0.0f;
        for (int k = 0; k < K; k++)
            chosen += p[index[k]];
        if (dgate)
            for (int k = 0; k < K; k++)
                dg_dot_g += dgate[k] * gate[k];

        float p_dot_dp = 0.0f;
        if (dprobs)
            p_dot_dp = router_dot(p, dprobs + n * E, E);
        if (dgate)
            for (int k = 0; k < K; k++)
                p_dot_dp += p[index[k]] * ((dgate[k] - dg_dot_g) / chosen);

        if (dprobs) {
            const float *dp = dprobs + n * E;
            for (int e = 0; e < E; e++)
                dx[e] += p[e] * (dp[e] - p_dot_dp);
        } else {
            for (int e = 0; e < E; e++)
                dx[e] -= p[e] * p_dot_dp;
        }
        if (dgate)
            for (int k = 0; k < K; k++)
                dx[index[k]] +=
                    p[index[k]] * ((dgate[k] - dg_dot_g) / chosen);
    }
}

void gpu_router_forward(void *ctx, float *probs, float *lse,
                        int *expert_index, float *gate_weight,
                        const float *logits, const float *bias, int N, int E,
                        int K)
{
    if (N <= 0)
        return;
    int threads = moe_threads((const gpu_context *)ctx);
    router_forward_kernel<<<gpu_blocks((size_t)N, threads), threads>>>(
        probs, lse, expert_index, gate_weight, logits, bias, N, E, K);
    GPU_CHECK_LAUNCH();
    GPU_CHECK(cudaDeviceSynchronize());
}

void gpu_router_backward(void *ctx, float *dlogits, const float *dgate_weight,
                         const float *dprobs, const float *probs,
                         const int *expert_index, const float *gate_weight,
                         int N, int E, int K)
{
    if (!dlogits || N <= 0)
        return;
    int threads = moe_threads((const gpu_context *)ctx);
    router_backward_kernel<<<gpu_blocks((size_t)N, threads), threads>>>(
        dlogits, dgate_weight, dprobs, probs, expert_index, gate_weight, N, E,
        K);
    GPU_CHECK_LAUNCH();
    GPU_CHECK(cudaDeviceSynchronize());
}

/* ---- dispatch -------------------------------------------------------- */

static __global__ void moe_permute_kernel(float *out, const float *inp,
                                          const int *token_of_slot, int S,
                                          int C)
{
    MOE_GRID_STRIDE(i, (size_t)S * C)
    {
        size_t s = i / C, c = i % C;
        int token = token_of_slot[s];
        out[i] = token < 0 ? 0.0f : inp[(size_t)token * C + c];
    }
}

/* A token owns up to K slots, and only the slot→token map is given. The
 * thread of (channel c, residue r) walks all slots in order and adds those
 * whose token ≡ r (mod residues): each dinp element has one owner, which
 * adds its slots in slot order like the CPU. The residues only spread the
 * work over more threads; they do not change the result. */
static __global__ void moe_permute_backward_kernel(float *dinp,
                                                   const float *dout,
                                                   const int *token_of_slot,
                                                   int S, int C, int residues)
{
    MOE_GRID_STRIDE(i, (size_t)C * residues)
    {
        int c = (int)(i % C), residue = (int)(i / C);
        for (int s = 0; s < S; s++) {
            int token = token_of_slot[s];
            if (token < 0 || token % residues != residue)
                continue;
            dinp[(size_t)token * C + c] += dout[(size_t)s * C + c];
        }
    }
}

/* One thread per (token, channel), adding the K choices in order. */
static __global__ void moe_unpermute_kernel(float *out,
                                            const float *expert_out,
                                            const int *slot_of,
                                            const float *gate_weight, int N,
                                            int K, int C)
{
    MOE_GRID_STRIDE(i, (size_t)N * C)
    {
        size_t t = i / C, c = i % C;
        float acc = out[i];
        for (int k = 0; k < K; k++) {
            int slot = slot_of[t * K + k];
            if (slot < 0)
                continue;
            acc += gate_weight[t * K + k] * expert_out[(size_t)slot * C + c];
        }
        out[i] = acc;
    }
}

/* One block per assignment (t, k). Each slot belongs to one assignment, so
 * its dexpert_out row has one writer; dgate_weight is a block sum. */
static __global__ void moe_unpermute_backward_kernel(
    float *dexpert_out, float *dgate_weight, const float *dout,
    const float *expert_out, const int *slot_of, const float *gate_weight,
    int N, int K, int C)
{
    extern __shared__ double moe_shared[];
    float *red = (float *)moe_shared; /* (blockDim) */
    size_t assignments = (size_t)N * K;
    int tid = threadIdx.x, threads = blockDim.x;

    for (size_t a = blockIdx.x; a < assignments; a += gridDim.x) {
        int slot = slot_of[a];
        if (slot < 0) { /* uniform over the block: no barrier is skipped */
            if (dgate_weight && tid == 0)
                dgate_weight[a] = 0.0f;
            continue;
        }
        const float *dy = dout + (a / K) * C;
        const float *y = expert_out + (size_t)slot * C;
        float gate = gate_weight[a];
        float local = 0.0f;
        for (int c = tid; c < C; c += threads) {
            if (dexpert_out)
                dexpert_out[(size_t)slot * C + c] += gate * dy[c];
            local += dy[c] * y[c];
        }
        if (dgate_weight) {
            float dot = gpu_block_sum(local, red);
            if (tid == 0)
                dgate_weight[a] = dot;
        }
    }
}

void gpu_moe_permute(void *ctx, float *out, const float *inp,
                     const int *token_of_slot, int S, int C)
{
    size_t n = (size_t)S * C;
    if (n == 0)
        return;
    int threads = moe_threads((const gpu_context *)ctx);
    moe_permute_kernel<<<gpu_blocks(n, threads), threads>>>(
        out, inp, token_of_slot, S, C);
    GPU_CHECK_LAUNCH();
    GPU_CHECK(cudaDeviceSynchronize());
}

void gpu_moe_permute_backward(void *ctx, float *dinp, const float *dout,
                              const int *token_of_slot, int S, int C)
{
    if (!dinp || S <= 0 || C <= 0)
        return;
    const gpu_context *gpu = (const gpu_context *)ctx;
    int threads = moe_threads(gpu);
    /* Enough (channel, residue) threads to fill the device, but few
     * residues: every thread reads the whole slot map. */
    int want = (gpu && gpu->multiprocessors > 0 ? gpu->multiprocessors : 1) *
               2048;
    int residues = (want + C - 1) / C;
    residues = residues < 1 ? 1 : residues > 16 ? 16 : residues;
    size_t n = (size_t)C * residues;
    moe_permute_backward_kernel<<<gpu_blocks(n, threads), threads>>>(
        dinp, dout, token_of_slot, S, C, residues);
    GPU_CHECK_LAUNCH();
    GPU_CHECK(cudaDeviceSynchronize());
}

void gpu_moe_unpermute(void *ctx, float *out, const float *expert_out,
                       const int *slot_of, const float *gate_weight, int N,
                       int K, int C)
{
    size_t n = (size_t)N * C;
    if (n == 0)
        return;
    int threads = moe_threads((const gpu_context *)ctx);
    moe_unpermute_kernel<<<gpu_blocks(n, threads), threads>>>(
        out, expert_out, slot_of, gate_weight, N, K, C);
    GPU_CHECK_LAUNCH();
    GPU_CHECK(cudaDeviceSynchronize());
}

void gpu_moe_unpermute_backward(void *ctx, float *dexpert_out,
                                float *dgate_weight, const float *dout,
                                const float *expert_out, const int *slot_of,
                                const float *gate_weight, int N, int K, int C)
{
    size_t assignments = (size_t)N * K;
    if ((!dexpert_out && !dgate_weight) || assignments == 0)
        return;
    int threads = moe_threads((const gpu_context *)ctx);
    size_t shared = (size_t)threads * sizeof(double);
    moe_unpermute_backward_kernel<<<gpu_blocks(assignments, 1), threads,
                                    shared>>>(dexpert_out, dgate_weight, dout,
                                              expert_out, slot_of,
                                              gate_weight, N, K, C);
    GPU_CHECK_LAUNCH();
    GPU_CHECK(cudaDeviceSynchronize());
}

/* ---- loss ------------------------------------------------------------ */

/* One block per row. dlogits may alias logits: every thread reads the
 * target logit before the first barrier, the max and the sum only read,
 * and the final pass writes each element from the thread that reads it.
 * The sum of exps is kept in double, as on the CPU. */
static __global__ void crossentropy_kernel(float *losses, float *dlogits,
                                           const float *logits,
                                           const int *targets, int N, int V,
                                           float dloss)
{
    extern __shared__ double moe_shared[];
    float *red = (float *)moe_shared; /* (blockDim), aliases red_double */
    double *red_double = moe_shared;   /* (blockDim) */
    int tid = threadIdx.x, threads = blockDim.x;

    for (size_t n = blockIdx.x; n < (size_t)N; n += gridDim.x) {
        const float *x = logits + n * V;
        int target = targets[n];
        float target_logit = x[target];

        float local_max = -INFINITY;
        for (int v = tid; v < V; v += threads)
            local_max = fmaxf(local_max, x[v]);
        float max_logit = gpu_block_max(local_max, red);

        double local_sum = 0.0;
        for (int v = tid; v < V; v += threads)
            local_sum += expf(x[v] - max_logit);
        double sum = gpu_block_sum(local_sum, red_double);

        if (losses && tid == 0)
            losses[n] = (float)(log(sum) + max_logit - target_logit);
        if (dlogits) {
            float *dx = dlogits + n * V;
            float scale = (float)(1.0 / sum) * dloss;
            for (int v = tid; v < V; v += threads) {
                float d = __fmul_rn(expf(x[v] - max_logit), scale);
                dx[v] = v == target ? d - dloss : d;
            }
        }
        __syncthreads(); /* the next row's reductions reuse red */
    }
}

void gpu_crossentropy_forward_backward(void *ctx, float *losses,
                                       float *dlogits, const float *logits,
                                       const int *targets, int N, int V,
                                       float dloss)
{
    if (N <= 0 || (!losses && !dlogits))
        return;
    int threads = moe_threads((const gpu_context *)ctx);
    size_t shared = (size_t)threads * sizeof(double);
    crossentropy_kernel<<<gpu_blocks((size_t)N, 1), threads, shared>>>(
        losses, dlogits, logits, targets, N, V, dloss);
    GPU_CHECK_LAUNCH();
    GPU_CHECK(cudaDeviceSynchronize());
}
