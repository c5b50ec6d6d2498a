/* The GEMM rate the CUDA backend reaches through cuBLAS, measured in the
 * same run as what is compared with it (scripts/device-check.sh sets the
 * MFU of configs/ling-lite-layer.yaml against these figures rather than a
 * datasheet peak):
 *
 *   gpu_gemm_rate [--quick]
 *
 * For each precision (fp32, tf32, bf16) and shape, the backend's own
 * matmul_forward op (cuBLAS GemmEx on fp32 data; it returns after a device
 * synchronisation) runs once to warm up, then REPEAT times, timed on the
 * host clock; the best run counts. Shapes: a square 8192 GEMM, and the
 * Ling-Lite layer's GEMMs at 2,048 tokens (attention's 2048 -> 6144, a
 * shared expert's 2048 -> 2816, an expert's 1408 -> 2048 on 192 rows).
 * Inputs are random. --quick runs small shapes once (a check that it runs).
 * Exits 77 without a device. */
#include "kernels/cuda/gpu_backend.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static float *random_floats(size_t n, uint64_t *state)
{
    float *p = gpu_alloc(n * sizeof *p);
    if (!p)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        *state = *state * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)((*state >> 40) * 0x1p-24 - 0.5);
    }
    return p;
}

typedef struct shape {
    const char *what;
    int N, IC, OC; /* out (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ */
} shape;

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    char why[256];
    if (gpu_device_count(why, sizeof why) == 0) {
        printf("skipped: %s\n", why);
        return 77;
    }
    static const shape full[] = {
        {"square 8192", 8192, 8192, 8192},
        {"attention qkv 2048->6144", 2048, 2048, 6144},
        {"shared expert 2048->2816", 2048, 2048, 2816},
        {"expert down 1408->2048, 192 rows", 192, 1408, 2048},
    };
    static const shape small[] = {{"square 256", 256, 256, 256}};
    const shape *shapes = quick ? small : full;
    int count = quick ? 1 : (int)(sizeof full / sizeof full[0]);
    int repeat = quick ? 1 : 5;
    static const char *const names[] = {"fp32", "tf32", "bf16"};
    int failed = 0;
    for (int precision = GPU_PRECISION_FP32; precision <= GPU_PRECISION_BF16;
         precision++) {
        backend be;
        if (gpu_backend_init(&be, 0, precision, why, sizeof why) < 0) {
            printf("%s: not available (%s)\n", names[precision], why);
            continue;
        }
        for (int s = 0; s < count; s++) {
            const shape *sh = &shapes[s];
            uint64_t state = 0x9E3779B97F4A7C15ull + (uint64_t)s;
            float *inp = random_floats((size_t)sh->N * sh->IC, &state);
            float *w = random_floats((size_t)sh->OC * sh->IC, &state);
            float *out = gpu_alloc((size_t)sh->N * sh->OC * sizeof *out);
            if (!inp || !w || !out) {
                printf("%s %s: out of device memory\n", names[precision],
                       sh->what);
                failed = 1;
            } else {
                be.ops->matmul_forward(be.ctx, out, inp, w, sh->N, sh->IC,
                                       sh->OC);
                double best = 1e30;
                for (int r = 0; r < repeat; r++) {
                    double t0 = now_s();
                    be.ops->matmul_forward(be.ctx, out, inp, w, sh->N, sh->IC,
                                           sh->OC);
                    double t = now_s() - t0;
                    best = t < best ? t : best;
                }
                double flops = 2.0 * sh->N * sh->IC * sh->OC;
                printf("%s %-36s %9.2f TFLOP/s (%.3f ms, best of %d)\n",
                       names[precision], sh->what, flops / best * 1e-12,
                       best * 1e3, repeat);
            }
            gpu_free(inp), gpu_free(w), gpu_free(out);
        }
        gpu_backend_finish(&be);
    }
    if (gpu_backend_error()) {
        printf("FAIL: %s\n", gpu_backend_error());
        failed = 1;
    }
    return failed;
}
