/* The router's top-k, written once for the CPU kernel, the GPU kernel and
 * the engine's routing warm-up (engine/model/router.c), which must all make
 * bit-identical choices, tie order included. */
#ifndef MOECTL_KERNELS_TOPK_H
#define MOECTL_KERNELS_TOPK_H

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TOPK_FUNCTION static inline __host__ __device__
#else
#define TOPK_FUNCTION static inline
#endif

/* p + bias rounded to float as the kernels round it (no contraction). */
TOPK_FUNCTION float topk_biased(float p, float bias)
{
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
    return __fadd_rn(p, bias);
#else
    return p + bias;
#endif
}

/* The K best of E experts into index (K), best first: by score[e] when
 * score is not NULL, else by p[e] + bias[e] in float (bias may be NULL).
 * K passes of argmax; only a strictly larger score replaces the best, so
 * ties go to the lower index. Floats compare as the doubles they convert
 * to exactly, so both kinds of score order alike. */
TOPK_FUNCTION void topk_select(int *index, const float *p, const float *bias,
                               const double *score, int E, int K)
{
    for (int k = 0; k < K; k++) {
        int best = -1;
        double best_score = 0.0;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int m = 0; m < k; m++)
                taken |= index[m] == e;
            if (taken)
                continue;
            double s = score ? score[e]
                             : (double)(bias ? topk_biased(p[e], bias[e])
                                             : p[e]);
            if (best < 0 || s > best_score) {
                best = e;
                best_score = s;
            }
        }
        index[k] = best;
    }
}

#endif
