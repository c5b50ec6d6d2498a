/* The CPU backend's bf16 GEMMs (precision: bf16, through oneDNN) against
 * a double-precision reference of the same fp32 inputs. Each operand is
 * rounded to bf16 (8 significant bits: relative error at most 2^-8), so
 * every product is off by at most (2^-7 + 2^-16) of its size and a dot
 * product by at most that times sum |a||b|; fp32 accumulation adds at
 * most K 2^-24 of it. The bound checked, element by element, is
 * 1.01 x 2^-7 x sum |a||b| (+1e-6): the worst case, not a fit to results. Also: the results differ from
 * the fp32 backend's (the bf16 path really ran), the router's fp32 slot is
 * the fp32 GEMM bit for bit, and a second run gives the same bits; all on
 * one thread and again on two (experts split over the threads).
 * Built without oneDNN, the backend must refuse bf16 with its reason. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_backend.h"
#include "moectl_build.h"
#include "tests/expect.h"

static uint64_t state = 0x9E3779B97F4A7C15ull;

static float random_value(void)
{
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return (float)((double)(state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *random_floats(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p)
        abort();
    for (size_t i = 0; i < n; i++)
        p[i] = random_value();
    return p;
}

static float *copy_of(const float *src, size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p)
        abort();
    memcpy(p, src, n * sizeof *p);
    return p;
}

/* Checks got (rows, cols) against start + A·B in double, A (rows, K) and
 * B (K, cols) read through strides, within 2^-7 sum |a||b|. */
static void check_product(const char *what, const float *got,
                          const float *start, const float *A, size_t a_row,
                          size_t a_k, const float *B, size_t b_k,
                          size_t b_col, int rows, int cols, int K,
                          double *worst)
{
    int bad = 0;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            double ref = start ? start[(size_t)i * cols + j] : 0.0, size = 0;
            for (int k = 0; k < K; k++) {
                double a = A[i * a_row + k * a_k], b = B[k * b_k + j * b_col];
                ref += a * b;
                size += fabs(a * b);
            }
            double err = fabs(got[(size_t)i * cols + j] - ref);
            double bound = 1.01 * ldexp(size, -7) + 1e-6;
            if (err / bound > *worst)
                *worst = err / bound;
            if (err > bound && bad++ < 3)
                printf("FAIL: %s [%d,%d]: %.7g, want %.7g (bound %.3g)\n",
                       what, i, j, got[(size_t)i * cols + j], ref, bound);
        }
    failures += bad > 0;
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* fp32_alike: bf has fp's thread count, so its fp32 slot must give fp's
 * bits. */
static void test_matmul(const backend *bf, const backend *fp, int fp32_alike,
                        double *worst)
{
    const int N = 37, IC = 64, OC = 48;
    float *inp = random_floats((size_t)N * IC);
    float *w = random_floats((size_t)OC * IC);
    float *dout = random_floats((size_t)N * OC);
    float *out = random_floats((size_t)N * OC);
    float *out32 = random_floats((size_t)N * OC);
    bf->ops->params_changed(bf->ctx); /* w may sit where a freed weight was */
    bf->ops->matmul_forward(bf->ctx, out, inp, w, N, IC, OC);
    fp->ops->matmul_forward(fp->ctx, out32, inp, w, N, IC, OC);
    /* out (N, OC) = inp · wᵀ: A = inp, B(k, j) = w[j, k] */
    check_product("matmul_forward", out, NULL, inp, IC, 1, w, 1, IC, N, OC,
                  IC, worst);
    EXPECT(max_diff(out, out32, (size_t)N * OC) > 0,
           "bf16 matmul_forward equals the fp32 one: not bf16");
    float *again = copy_of(out, (size_t)N * OC);
    bf->ops->matmul_forward(bf->ctx, again, inp, w, N, IC, OC);
    EXPECT(memcmp(again, out, (size_t)N * OC * sizeof *out) == 0,
           "bf16 matmul_forward twice: different bits");
    bf->ops->matmul_forward_fp32(bf->ctx, again, inp, w, N, IC, OC);
    if (fp32_alike) /* the fp32 backend's thread count */
        EXPECT(memcmp(again, out32, (size_t)N * OC * sizeof *out) == 0,
               "matmul_forward_fp32 of the bf16 backend is not the fp32 "
               "GEMM");

    /* Backward adds to what is there. */
    float *dinp0 = random_floats((size_t)N * IC);
    float *dw0 = random_floats((size_t)OC * IC);
    float *dinp = copy_of(dinp0, (size_t)N * IC);
    float *dw = copy_of(dw0, (size_t)OC * IC);
    bf->ops->matmul_backward(bf->ctx, dinp, dw, dout, inp, w, N, IC, OC);
    /* dinp (N, IC) += dout (N, OC) · w (OC, IC) */
    check_product("matmul_backward dinp", dinp, dinp0, dout, OC, 1, w, IC, 1,
                  N, IC, OC, worst);
    /* dw (OC, IC) += doutᵀ · inp: A(i, k) = dout[k, i] */
    check_product("matmul_backward dweight", dw, dw0, dout, 1, OC, inp, IC, 1,
                  OC, IC, N, worst);

    /* The weight's bf16 copy is made once between params_changed calls:
     * a weight changed behind the backend's back is not seen, and is after
     * params_changed. */
    for (size_t i = 0; i < (size_t)OC * IC; i++)
        w[i] = random_value();
    bf->ops->matmul_forward(bf->ctx, again, inp, w, N, IC, OC);
    EXPECT(memcmp(again, out, (size_t)N * OC * sizeof *out) == 0,
           "a weight's bf16 copy was remade without params_changed");
    bf->ops->params_changed(bf->ctx);
    bf->ops->matmul_forward(bf->ctx, again, inp, w, N, IC, OC);
    check_product("matmul_forward after params_changed", again, NULL, inp,
                  IC, 1, w, 1, IC, N, OC, IC, worst);
    memcpy(dinp, dinp0, (size_t)N * IC * sizeof *dinp);
    bf->ops->matmul_backward(bf->ctx, dinp, NULL, dout, inp, w, N, IC, OC);
    check_product("matmul_backward dinp after params_changed", dinp, dinp0,
                  dout, OC, 1, w, IC, 1, N, IC, OC, worst);
    free(inp), free(w), free(dout), free(out), free(out32), free(again);
    free(dinp0), free(dw0), free(dinp), free(dw);
}

static void test_grouped(const backend *bf, double *worst)
{
    enum { G = 5, IC = 48, OC = 80 };
    const int rows[G] = {7, 0, 23, 1, 12}; /* an empty group too */
    int total = 0;
    for (int g = 0; g < G; g++)
        total += rows[g];
    float *inp = random_floats((size_t)total * IC);
    float *dout = random_floats((size_t)total * OC);
    float *out = random_floats((size_t)total * OC);
    float *dinp = random_floats((size_t)total * IC);
    const float *w[G];
    float *dw[G], *dw0[G];
    for (int g = 0; g < G; g++) {
        w[g] = random_floats((size_t)OC * IC);
        dw0[g] = random_floats((size_t)OC * IC);
        dw[g] = copy_of(dw0[g], (size_t)OC * IC);
    }
    /* Two groups on one weight: threads may ask for its copy at once. */
    free((void *)w[G - 1]);
    w[G - 1] = w[0];
    bf->ops->params_changed(bf->ctx);
    bf->ops->grouped_matmul_forward(bf->ctx, out, inp, w, rows, G, IC, OC);
    bf->ops->grouped_matmul_backward(bf->ctx, dinp, dw, dout, inp, w, rows, G,
                                     IC, OC);
    for (int g = 0, at = 0; g < G; at += rows[g], g++) {
        char what[64];
        snprintf(what, sizeof what, "grouped forward, group %d", g);
        check_product(what, out + (size_t)at * OC, NULL,
                      inp + (size_t)at * IC, IC, 1, w[g], 1, IC, rows[g], OC,
                      IC, worst);
        /* dinp is SET; dweights are added to. */
        snprintf(what, sizeof what, "grouped dinp, group %d", g);
        check_product(what, dinp + (size_t)at * IC, NULL,
                      dout + (size_t)at * OC, OC, 1, w[g], IC, 1, rows[g], IC,
                      OC, worst);
        snprintf(what, sizeof what, "grouped dweight, group %d", g);
        check_product(what, dw[g], dw0[g], dout + (size_t)at * OC, 1, OC,
                      inp + (size_t)at * IC, IC, 1, OC, IC, rows[g], worst);
    }
    for (int g = 0; g < G; g++)
        free(g < G - 1 ? (void *)w[g] : NULL), free(dw[g]), free(dw0[g]);
    free(inp), free(dout), free(out), free(dinp);
}

int main(void)
{
    backend bf = {0}, fp = {0};
    char why[256] = "";
    int started = cpu_backend_init_bf16(&bf, 1, why, sizeof why) == 0;
    if (!HAVE_DNNL) {
        EXPECT(!started && strstr(why, "oneDNN"),
               "built without oneDNN: bf16 started, or no reason (%s)", why);
        if (!failures)
            printf("ok: built without oneDNN, bf16 refused: %s\n", why);
        return failures ? 1 : 0;
    }
    if (!started) {
        printf("FAIL: bf16 CPU backend: %s\n", why);
        return 1;
    }
    if (cpu_backend_init(&fp, 1) < 0)
        return 1;
    double worst = 0;
    test_matmul(&bf, &fp, 1, &worst);
    test_grouped(&bf, &worst);
    const char *error = bf.ops->last_error(bf.ctx);
    EXPECT(!error, "the bf16 backend reports: %s", error ? error : "");
    /* Two threads: dense GEMMs on oneDNN's threads, whole experts per
     * thread in their own slots. */
    backend bf2 = {0};
    if (cpu_backend_init_bf16(&bf2, 2, why, sizeof why) < 0) {
        printf("FAIL: bf16 CPU backend, 2 threads: %s\n", why);
        return 1;
    }
    test_matmul(&bf2, &fp, 0, &worst);
    test_grouped(&bf2, &worst);
    error = bf2.ops->last_error(bf2.ctx);
    EXPECT(!error, "the 2-thread bf16 backend reports: %s",
           error ? error : "");
    cpu_backend_finish(&bf2);
    char how[160];
    cpu_backend_describe(&bf, how, sizeof how);
    cpu_backend_finish(&bf);
    cpu_backend_finish(&fp);
    if (failures)
        return 1;
    printf("ok: %s: every element within 1.01 x 2^-7 sum|a||b| of the "
           "fp32 inputs' exact products, the worst at %.2f of that bound\n",
           how, worst);
    return 0;
}
