/* Private to the CPU backend: its context, the loop helpers its files
 * share, and the ops behind cpu_backend_ops, one file per op family. The
 * semantics of every op are those of its slot in kernels/backend.h.
 *
 * Determinism: no loop here reduces across iterations that run on
 * different threads. Row-parallel loops write disjoint rows, and sums over
 * rows into a weight gradient are split by column, each column summed over
 * the rows in order, so results do not depend on the thread count (BLAS
 * GEMMs aside, which are deterministic for a fixed thread count).
 */
#ifndef MOECTL_KERNELS_CPU_OPS_H
#define MOECTL_KERNELS_CPU_OPS_H

#include <stddef.h>

#include "moectl_build.h"

/* bf16 GEMMs through oneDNN (bf16_gemm.c). */
typedef struct cpu_bf16 cpu_bf16;
/* Starts oneDNN's CPU engine; -1 with the reason (this build has no
 * oneDNN, or the engine did not start). */
int cpu_bf16_create(cpu_bf16 **out, char *why, size_t why_size);
void cpu_bf16_destroy(cpu_bf16 *b);
/* What oneDNN chose for the GEMMs and the ISA it runs on. */
void cpu_bf16_describe(const cpu_bf16 *b, char *out, size_t size);
/* The first failure since the start, or NULL. */
const char *cpu_bf16_error(const cpu_bf16 *b);
/* Threads that may call cpu_bf16_gemm at once (slots 0 .. this - 1). */
#define CPU_BF16_SLOTS 64
/* C (M, N) = op(A) · op(B) + beta C (beta 0 or 1), row-major fp32 as
 * sgemm, op = transpose when the flag is set: the operands rounded to
 * bf16 (nearest, ties to even), products summed in fp32, on `threads`
 * OpenMP threads. Calls running at once use different slots. Returns 0,
 * or -1 (cpu_bf16_error says why). */
int cpu_bf16_gemm(cpu_bf16 *b, int slot, int threads, int trans_a,
                  int trans_b, int M, int N, int K, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc);
/* The same with B a parameter (a weight): its bf16 copy is made on the
 * first call after cpu_bf16_params_changed and kept, so a weight used by
 * the forward and the backward is rounded once a step. The copy is keyed
 * by B's address, shape and leading dimension; calls running at once may
 * share a weight. */
int cpu_bf16_gemm_weight(cpu_bf16 *b, int slot, int threads, int trans_a,
                         int trans_b, int M, int N, int K, const float *A,
                         int lda, const float *W, int ldw, float beta,
                         float *C, int ldc);
/* The parameters may have changed (an optimizer step, a load, a move):
 * the weights' bf16 copies are void. Copies unused since the last call
 * are freed. Not while GEMMs run. */
void cpu_bf16_params_changed(cpu_bf16 *b);

typedef struct cpu_context {
    int threads;
    /* precision bf16: every GEMM goes through oneDNN in bf16 (NULL: fp32
     * through OpenBLAS). */
    cpu_bf16 *bf16;
    /* RoPE tables, each (rope_T, rope_head_dim / 2), for the last
     * (T, head_dim, theta) seen; rebuilt when any of the three changes.
     * This cache makes the context unsafe to share between threads that
     * call the backend at the same time. */
    int rope_T;
    int rope_head_dim;
    float rope_theta;
    float *rope_cos;
    float *rope_sin;
    /* Attention backward: one (T, T) dP matrix per thread. */
    float *attention_scratch;
    size_t attention_scratch_floats;
} cpu_context;

/* Below this much work (elements touched, roughly) a loop runs on the
 * calling thread: waking a thread team costs more than it saves. */
#define CPU_PARALLEL_MIN_WORK 32768

/* Parallelises the `for` that follows over `threads` threads with a
 * static schedule when `work` is large enough. Without OpenMP it only
 * marks `threads` used, so it must stand where a statement may. */
#if HAVE_OPENMP
#define CPU_PRAGMA(x) _Pragma(#x)
#define CPU_PARALLEL_FOR(threads, work)                                     \
    CPU_PRAGMA(omp parallel for num_threads(threads) schedule(static)      \
               if ((work) >= CPU_PARALLEL_MIN_WORK))
#else
#define CPU_PARALLEL_FOR(threads, work) (void)(threads);
#endif

/* Column block for sums over rows into a (rows, C) gradient: each block is
 * owned by one thread and summed over the rows in order. */
#define CPU_COLUMN_BLOCK 64

/* Dot product with eight independent partial sums, so the compiler can
 * vectorise it; the summation order is fixed by n alone. */
static inline float cpu_dot(const float *a, const float *b, int n)
{
    float acc[8] = {0};
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

/* y += a * x. restrict lets the compiler vectorise without run-time
 * overlap checks; callers pass rows that never overlap. */
static inline void cpu_axpy(float *restrict y, float a,
                            const float *restrict x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

/* matmul.c */
/* Products inside a parallel loop: each thread runs its own single-threaded
 * GEMM. Call cpu_blas_serial_begin() before the loop; the next cpu GEMM
 * outside it restores the context's thread count. */
void cpu_blas_serial_begin(void);
void cpu_sgemm_serial(int trans_a, int trans_b, int M, int N, int K,
                      float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc);
void cpu_matmul_forward(void *ctx, float *out, const float *inp,
                        const float *weight, int N, int IC, int OC);
void cpu_matmul_forward_fp32(void *ctx, float *out, const float *inp,
                             const float *weight, int N, int IC, int OC);
void cpu_matmul_backward(void *ctx, float *dinp, float *dweight,
                         const float *dout, const float *inp,
                         const float *weight, int N, int IC, int OC);
void cpu_grouped_matmul_forward(void *ctx, float *out, const float *inp,
                                const float *const *weights,
                                const int *group_rows, int groups, int IC,
                                int OC);
void cpu_grouped_matmul_backward(void *ctx, float *dinp,
                                 float *const *dweights, const float *dout,
                                 const float *inp,
                                 const float *const *weights,
                                 const int *group_rows, int groups, int IC,
                                 int OC);

/* embedding.c */
void cpu_embedding_forward(void *ctx, float *out, const int *tokens,
                           const float *wte, int N, int C);
void cpu_embedding_backward(void *ctx, float *dwte, const float *dout,
                            const int *tokens, int N, int C);

/* rmsnorm.c */
void cpu_rmsnorm_forward(void *ctx, float *out, float *rstd,
                         const float *inp, const float *weight, int N, int C,
                         float eps);
void cpu_rmsnorm_backward(void *ctx, float *dinp, float *dweight,
                          const float *dout, const float *inp,
                          const float *weight, const float *rstd, int N,
                          int C);

/* rope.c */
void cpu_rope_forward(void *ctx, float *qkv, int B, int T, int C,
                      int n_heads, float theta);
void cpu_rope_backward(void *ctx, float *dqkv, int B, int T, int C,
                       int n_heads, float theta);
/* Frees the RoPE tables held in ctx. */
void cpu_rope_release(cpu_context *ctx);

/* attention.c */
void cpu_attention_forward(void *ctx, float *out, float *probs,
                           const float *qkv, int B, int T, int C,
                           int n_heads);
void cpu_attention_backward(void *ctx, float *dqkv, const float *dout,
                            const float *qkv, const float *probs, int B,
                            int T, int C, int n_heads);

/* swiglu.c */
void cpu_swiglu_forward(void *ctx, float *out, const float *gate_up, int N,
                        int F);
void cpu_swiglu_backward(void *ctx, float *dgate_up, const float *dout,
                         const float *gate_up, int N, int F);

/* router.c */
void cpu_router_forward(void *ctx, float *probs, float *lse,
                        int *expert_index, float *gate_weight,
                        const float *logits, const float *bias, int N, int E,
                        int K);
void cpu_router_backward(void *ctx, float *dlogits,
                         const float *dgate_weight, const float *dprobs,
                         const float *probs, const int *expert_index,
                         const float *gate_weight, int N, int E, int K);

/* moe_dispatch.c */
void cpu_moe_permute(void *ctx, float *out, const float *inp,
                     const int *token_of_slot, int S, int C);
void cpu_moe_permute_backward(void *ctx, float *dinp, const float *dout,
                              const int *token_of_slot, int S, int C);
void cpu_moe_unpermute(void *ctx, float *out, const float *expert_out,
                       const int *slot_of, const float *gate_weight, int N,
                       int K, int C);
void cpu_moe_unpermute_backward(void *ctx, float *dexpert_out,
                                float *dgate_weight, const float *dout,
                                const float *expert_out, const int *slot_of,
                                const float *gate_weight, int N, int K,
                                int C);

/* crossentropy.c */
void cpu_crossentropy_forward_backward(void *ctx, float *losses,
                                       float *dlogits, const float *logits,
                                       const int *targets, int N, int V,
                                       float dloss);

/* vector.c */
void cpu_add_inplace(void *ctx, float *out, const float *inp, size_t n);
double cpu_sum_squares(void *ctx, const float *x, size_t n);

/* adamw.c */
void cpu_adamw_update(void *ctx, float *param, const float *grad, float *m,
                      float *v, size_t n, float lr, float beta1, float beta2,
                      float eps, float weight_decay, float grad_scale, int t);

#endif
