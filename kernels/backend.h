/* The backend table: every numeric operation the model needs, forward and
 * backward, behind function pointers plus an opaque context (ggml-backend
 * style). The CPU backend is the reference every other backend is tested
 * against.
 *
 * Conventions for every slot:
 * - Tensors are dense, row-major float32 (indices int32) in memory the
 *   backend can address.
 * - N is a row count (tokens, usually B*T), C a channel count.
 * - Linear layers store weights PyTorch-style: weight (OC, IC), and compute
 *   out = inp · weightᵀ.
 * - Every *_backward ADDS into each of its d* outputs (+=), so gradients from
 *   several paths (residual stream, shared + routed experts) sum without
 *   temporaries. Callers zero gradient buffers once per step. A d* output
 *   passed as NULL is not computed.
 * - Exceptions, marked SET below: outputs that only ever have one
 *   contributor in a model are overwritten (=), which spares the caller
 *   zeroing large scratch buffers every step.
 * - Results are bitwise deterministic for a fixed thread count: no atomics,
 *   no reductions whose order depends on scheduling.
 */
#ifndef MOECTL_KERNELS_BACKEND_H
#define MOECTL_KERNELS_BACKEND_H

#include <stddef.h>

typedef struct backend_ops {
    const char *name;

    /* out (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ */
    void (*matmul_forward)(void *ctx, float *out, const float *inp,
                           const float *weight, int N, int IC, int OC);
    /* dinp (N, IC) += dout · weight; dweight (OC, IC) += doutᵀ · inp */
    void (*matmul_backward)(void *ctx, float *dinp, float *dweight,
                            const float *dout, const float *inp,
                            const float *weight, int N, int IC, int OC);

    /* Grouped matmul over experts: rows of inp are grouped, group g owns
     * group_rows[g] consecutive rows (groups in order, possibly empty) and
     * uses weights[g] (OC, IC). out rows follow the same grouping. */
    void (*grouped_matmul_forward)(void *ctx, float *out, const float *inp,
                                   const float *const *weights,
                                   const int *group_rows, int groups,
                                   int IC, int OC);
    /* dinp is SET (each row written once); dweights[g] are added to. */
    void (*grouped_matmul_backward)(void *ctx, float *dinp,
                                    float *const *dweights,
                                    const float *dout, const float *inp,
                                    const float *const *weights,
                                    const int *group_rows, int groups,
                                    int IC, int OC);

    /* out (N, C) = wte[tokens[i]] */
    void (*embedding_forward)(void *ctx, float *out, const int *tokens,
                              const float *wte, int N, int C);
    void (*embedding_backward)(void *ctx, float *dwte, const float *dout,
                               const int *tokens, int N, int C);

    /* out = inp * rstd * weight, rstd (N) = 1/sqrt(mean(inp²) + eps) */
    void (*rmsnorm_forward)(void *ctx, float *out, float *rstd,
                            const float *inp, const float *weight,
                            int N, int C, float eps);
    void (*rmsnorm_backward)(void *ctx, float *dinp, float *dweight,
                             const float *dout, const float *inp,
                             const float *weight, const float *rstd,
                             int N, int C);

    /* Rotary embedding applied in place to the q and k thirds of qkv
     * (B*T, 3C) laid out [q | k | v], heads of size C/n_heads; position of
     * row b*T+t is t. Pairs are (2i, 2i+1) within a head, angle
     * t * theta^(-2i/head_dim). Backward rotates dqkv by the negative angle,
     * in place (it is the transpose of the forward rotation). */
    void (*rope_forward)(void *ctx, float *qkv, int B, int T, int C,
                         int n_heads, float theta);
    void (*rope_backward)(void *ctx, float *dqkv, int B, int T, int C,
                          int n_heads, float theta);

    /* Causal multi-head attention. qkv (B*T, 3C) after RoPE; out (B*T, C);
     * probs (B, n_heads, T, T) holds the softmax for the backward pass
     * (entries above the diagonal are 0). Scale is 1/sqrt(head_dim). */
    void (*attention_forward)(void *ctx, float *out, float *probs,
                              const float *qkv, int B, int T, int C,
                              int n_heads);
    void (*attention_backward)(void *ctx, float *dqkv, const float *dout,
                               const float *qkv, const float *probs,
                               int B, int T, int C, int n_heads);

    /* SwiGLU: gate_up (N, 2F) = [gate | up] per row; out (N, F) =
     * silu(gate) * up with silu(x) = x * sigmoid(x). */
    void (*swiglu_forward)(void *ctx, float *out, const float *gate_up,
                           int N, int F);
    /* dgate_up is SET. */
    void (*swiglu_backward)(void *ctx, float *dgate_up, const float *dout,
                            const float *gate_up, int N, int F);

    /* Router: probs (N, E) = softmax(logits); lse (N) = logsumexp(logits);
     * expert_index (N, K) = the K largest of (probs + bias), bias (E) may be
     * NULL, ties to the lower index, in descending order; gate_weight (N, K)
     * = probs of those experts renormalised to sum 1 (unbiased scores). */
    void (*router_forward)(void *ctx, float *probs, float *lse,
                           int *expert_index, float *gate_weight,
                           const float *logits, const float *bias,
                           int N, int E, int K);
    /* dlogits (N, E) += softmax backward of (dprobs + d/dprobs of the
     * renormalised gate weights given dgate_weight (N, K)). dprobs (N, E)
     * may be NULL. Top-k selection is treated as constant. */
    void (*router_backward)(void *ctx, float *dlogits,
                            const float *dgate_weight, const float *dprobs,
                            const float *probs, const int *expert_index,
                            const float *gate_weight, int N, int E, int K);

    /* MoE dispatch. Each (token t, choice k) assignment owns a slot in the
     * expert-sorted buffer: slot_of[t*K + k], or -1 when it was dropped by a
     * capacity limit. permute: out (S, C) row s = inp row token_of_slot[s]. */
    void (*moe_permute)(void *ctx, float *out, const float *inp,
                        const int *token_of_slot, int S, int C);
    /* dinp (N, C) += scatter of dout (S, C) back to the tokens. */
    void (*moe_permute_backward)(void *ctx, float *dinp, const float *dout,
                                 const int *token_of_slot, int S, int C);
    /* out (N, C) += Σ_k gate_weight[t,k] * expert_out[slot_of[t*K+k]] */
    void (*moe_unpermute)(void *ctx, float *out, const float *expert_out,
                          const int *slot_of, const float *gate_weight,
                          int N, int K, int C);
    /* dexpert_out (S, C) row slot += gate * dout[t]; dgate_weight (N, K) is
     * SET to dot(dout[t], expert_out[slot]), 0 for a dropped assignment. */
    void (*moe_unpermute_backward)(void *ctx, float *dexpert_out,
                                   float *dgate_weight, const float *dout,
                                   const float *expert_out,
                                   const int *slot_of,
                                   const float *gate_weight,
                                   int N, int K, int C);

    /* Cross-entropy of logits (N, V) against targets (N). losses (N) gets
     * each row's loss; dlogits (N, V) is SET (=) to (softmax - onehot) *
     * dloss (a scalar, e.g. 1/N). dlogits may alias logits. */
    void (*crossentropy_forward_backward)(void *ctx, float *losses,
                                          float *dlogits, const float *logits,
                                          const int *targets, int N, int V,
                                          float dloss);

    /* out (n) += inp (n) */
    void (*add_inplace)(void *ctx, float *out, const float *inp, size_t n);
    /* Σ x² accumulated in double. */
    double (*sum_squares)(void *ctx, const float *x, size_t n);

    /* AdamW with bias correction at step t (1-based); grad is multiplied by
     * grad_scale first (clipping). Decoupled weight decay:
     * p -= lr * (m̂ / (sqrt(v̂) + eps) + weight_decay * p). */
    void (*adamw_update)(void *ctx, float *param, const float *grad,
                         float *m, float *v, size_t n, float lr, float beta1,
                         float beta2, float eps, float weight_decay,
                         float grad_scale, int t);

    /* Memory for the tensors handed to the ops that the host code can read
     * and write too: host memory on the CPU, managed memory on a GPU. Ops
     * may be asynchronous: sync waits for every op issued so far, after
     * which the host may read their results. alloc returns NULL when out of
     * memory; free(NULL) does nothing. */
    void *(*alloc)(void *ctx, size_t bytes);
    void (*free)(void *ctx, void *p);
    void (*sync)(void *ctx);

    /* Optional (NULL: the backend never fails, as the CPU's). The first
     * failure of a runtime, BLAS or allocation call since the backend
     * started, or NULL. Ops do not stop on failure: callers check this
     * after a step, whose results are then garbage. */
    const char *(*last_error)(void *ctx);

    /* Optional (NULL: matmul_forward). matmul_forward in full fp32
     * whatever the backend's GEMM precision, for products that decide
     * something (the router's logits pick the experts). */
    void (*matmul_forward_fp32)(void *ctx, float *out, const float *inp,
                                const float *weight, int N, int IC, int OC);

    /* Optional (NULL: nothing kept). The parameters may have changed since
     * the last call (an optimizer step, a checkpoint load, a migration):
     * what the backend derived from a weight (a bf16 copy) is void. The
     * model calls it before each forward pass; weights must not change
     * between a forward pass and its backward. */
    void (*params_changed)(void *ctx);
} backend_ops;

typedef struct backend {
    const backend_ops *ops;
    void *ctx;
} backend;

#endif
