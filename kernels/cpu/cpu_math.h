/* Vectorised exp for the CPU backend. libm's expf is a scalar call the
 * compiler cannot vectorise; softmax, SwiGLU and cross-entropy spend most
 * of their time in it. This is the Cephes single-precision polynomial
 * (max relative error about 1.2e-7 over [-87, 88]), eight lanes at a time
 * with AVX2+FMA, and the same operations one at a time for the tail, so a
 * value's result does not depend on its position. Inputs are clamped to
 * [-87, 88]: exp(-87) ≈ 1.6e-38 stands in for smaller results. */
#ifndef MOECTL_KERNELS_CPU_MATH_H
#define MOECTL_KERNELS_CPU_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define CPU_MATH_AVX2 1
#else
#define CPU_MATH_AVX2 0
#endif

#define CPU_EXP_LO -87.0f
#define CPU_EXP_HI 88.0f
#define CPU_LOG2E 1.44269504088896341f
#define CPU_LN2_HI 0.693359375f
#define CPU_LN2_LO -2.12194440e-4f
#define CPU_EXP_P0 1.9875691500e-4f
#define CPU_EXP_P1 1.3981999507e-3f
#define CPU_EXP_P2 8.3334519073e-3f
#define CPU_EXP_P3 4.1665795894e-2f
#define CPU_EXP_P4 1.6666665459e-1f
#define CPU_EXP_P5 5.0000001201e-1f

static inline float cpu_expf(float x)
{
    x = x < CPU_EXP_LO ? CPU_EXP_LO : x;
    x = x > CPU_EXP_HI ? CPU_EXP_HI : x;
    float n = rintf(x * CPU_LOG2E);
    float r = fmaf(n, -CPU_LN2_HI, x);
    r = fmaf(n, -CPU_LN2_LO, r);
    float p = CPU_EXP_P0;
    p = fmaf(p, r, CPU_EXP_P1);
    p = fmaf(p, r, CPU_EXP_P2);
    p = fmaf(p, r, CPU_EXP_P3);
    p = fmaf(p, r, CPU_EXP_P4);
    p = fmaf(p, r, CPU_EXP_P5);
    p = fmaf(p, r * r, r + 1.0f);
    int32_t bits = ((int32_t)n + 127) * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#if CPU_MATH_AVX2
static inline __m256 cpu_exp8(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(CPU_EXP_LO));
    x = _mm256_min_ps(x, _mm256_set1_ps(CPU_EXP_HI));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(CPU_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-CPU_LN2_HI), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-CPU_LN2_LO), r);
    __m256 p = _mm256_set1_ps(CPU_EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(CPU_EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(CPU_EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(CPU_EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(CPU_EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(CPU_EXP_P5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r),
                        _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

/* y[i] = exp(x[i] - shift); y may be x. */
static inline void cpu_exp_shifted(float *y, const float *x, float shift,
                                   int n)
{
    int i = 0;
#if CPU_MATH_AVX2
    __m256 s = _mm256_set1_ps(shift);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         cpu_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
#endif
    for (; i < n; i++)
        y[i] = cpu_expf(x[i] - shift);
}

/* y[i] = sigmoid(x[i]) = 1 / (1 + exp(-x[i])); y may be x. */
static inline void cpu_sigmoid(float *y, const float *x, int n)
{
    int i = 0;
#if CPU_MATH_AVX2
    __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 e = cpu_exp8(_mm256_sub_ps(zero, _mm256_loadu_ps(x + i)));
        _mm256_storeu_ps(y + i, _mm256_div_ps(one, _mm256_add_ps(one, e)));
    }
#endif
    for (; i < n; i++)
        y[i] = 1.0f / (1.0f + cpu_expf(0.0f - x[i]));
}

#endif
