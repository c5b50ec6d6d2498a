/* The CUDA backend's operations, one per slot of backend_ops (see
 * kernels/backend.h for the contract of each: shapes, += versus SET,
 * determinism). Compiled by nvcc from the .cu files of this folder, and by
 * hipcc from the same files through gpu_vendor.h.
 *
 * Memory: every tensor argument is managed memory (cudaMallocManaged), so
 * that the host-side bookkeeping of the engine (routing, dispatch,
 * expert-parallel buffers) and the kernels address the same pointers.
 * Integer arrays the host reads to launch work (group_rows) are read after
 * a device synchronisation. Every op returns after its work is complete,
 * so the caller may touch any output at once. No atomics: results are
 * bitwise deterministic run to run. */
#ifndef MOECTL_KERNELS_CUDA_OPS_H
#define MOECTL_KERNELS_CUDA_OPS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The context every op receives as `void *ctx`. */
typedef struct gpu_context {
    int device;
    int warp_size;          /* read from the device: 32 or 64 */
    int multiprocessors;
    void *blas;             /* cublasHandle_t (or hipblas), NULL on HIP
                               builds without hipBLAS */
    int precision;          /* GPU_PRECISION_*: GEMM products */
    /* The GEMMs of one grouped op, gathered for one cuBLAS grouped
     * batched call (gemm.cu): host arrays for the sizes, managed memory for
     * the matrix pointers cuBLAS reads on the device. */
    struct gemm_batch *batch;
    int grouped_unsupported; /* cuBLAS refused the grouped call once */
} gpu_context;

/* Releases the context's GEMM batch (gemm.cu). */
void gpu_gemm_batch_free(gpu_context *ctx);

/* GEMMs (gemm.cu) */
void gpu_matmul_forward(void *ctx, float *out, const float *inp,
                        const float *weight, int N, int IC, int OC);
void gpu_matmul_backward(void *ctx, float *dinp, float *dweight,
                         const float *dout, const float *inp,
                         const float *weight, int N, int IC, int OC);
void gpu_grouped_matmul_forward(void *ctx, float *out, const float *inp,
                                const float *const *weights,
                                const int *group_rows, int groups, int IC,
                                int OC);
void gpu_grouped_matmul_backward(void *ctx, float *dinp,
                                 float *const *dweights, const float *dout,
                                 const float *inp, const float *const *weights,
                                 const int *group_rows, int groups, int IC,
                                 int OC);

/* Row-wise and element-wise ops (rows.cu) */
void gpu_embedding_forward(void *ctx, float *out, const int *tokens,
                           const float *wte, int N, int C);
void gpu_embedding_backward(void *ctx, float *dwte, const float *dout,
                            const int *tokens, int N, int C);
void gpu_rmsnorm_forward(void *ctx, float *out, float *rstd, const float *inp,
                         const float *weight, int N, int C, float eps);
void gpu_rmsnorm_backward(void *ctx, float *dinp, float *dweight,
                          const float *dout, const float *inp,
                          const float *weight, const float *rstd, int N,
                          int C);
void gpu_rope_forward(void *ctx, float *qkv, int B, int T, int C, int n_heads,
                      float theta);
void gpu_rope_backward(void *ctx, float *dqkv, int B, int T, int C,
                       int n_heads, float theta);
void gpu_swiglu_forward(void *ctx, float *out, const float *gate_up, int N,
                        int F);
void gpu_swiglu_backward(void *ctx, float *dgate_up, const float *dout,
                         const float *gate_up, int N, int F);
void gpu_add_inplace(void *ctx, float *out, const float *inp, size_t n);
double gpu_sum_squares(void *ctx, const float *x, size_t n);
void gpu_adamw_update(void *ctx, float *param, const float *grad, float *m,
                      float *v, size_t n, float lr, float beta1, float beta2,
                      float eps, float weight_decay, float grad_scale, int t);

/* Attention, router, MoE dispatch and the loss (attention.cu, moe.cu) */
void gpu_attention_forward(void *ctx, float *out, float *probs,
                           const float *qkv, int B, int T, int C,
                           int n_heads);
void gpu_attention_backward(void *ctx, float *dqkv, const float *dout,
                            const float *qkv, const float *probs, int B,
                            int T, int C, int n_heads);
void gpu_router_forward(void *ctx, float *probs, float *lse,
                        int *expert_index, float *gate_weight,
                        const float *logits, const float *bias, int N, int E,
                        int K);
void gpu_router_backward(void *ctx, float *dlogits, const float *dgate_weight,
                         const float *dprobs, const float *probs,
                         const int *expert_index, const float *gate_weight,
                         int N, int E, int K);
void gpu_moe_permute(void *ctx, float *out, const float *inp,
                     const int *token_of_slot, int S, int C);
void gpu_moe_permute_backward(void *ctx, float *dinp, const float *dout,
                              const int *token_of_slot, int S, int C);
void gpu_moe_unpermute(void *ctx, float *out, const float *expert_out,
                       const int *slot_of, const float *gate_weight, int N,
                       int K, int C);
void gpu_moe_unpermute_backward(void *ctx, float *dexpert_out,
                                float *dgate_weight, const float *dout,
                                const float *expert_out, const int *slot_of,
                                const float *gate_weight, int N, int K, int C);
void gpu_crossentropy_forward_backward(void *ctx, float *losses,
                                       float *dlogits, const float *logits,
                                       const int *targets, int N, int V,
                                       float dloss);

#ifdef __cplusplus
}
#endif

#endif
