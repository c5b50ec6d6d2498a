/* bf16 GEMMs on the CPU through oneDNN's matmul primitive (precision: bf16
 * on a cpu device). The tensors stay fp32 in memory: each call rounds its
 * two operands to bf16 (to nearest, ties to even) into scratch, multiplies
 * them with fp32 accumulation and writes or adds fp32 results in place.
 *
 * One primitive per (transpose A, transpose B, accumulate), made at the
 * start with every dimension and leading dimension given at run time
 * (DNNL_RUNTIME_DIM_VAL): the expert GEMMs change their row counts every
 * step, and measured here a run-time-shaped bf16 matmul (oneDNN's
 * gemm:jit) ran as fast as one made for the shape (brg:avx512_core_bf16,
 * 350-380 GFLOP/s a thread either way) while making one costs 0.3-4 ms.
 * Threads may call at once, each with its own slot (stream and scratch):
 * the grouped GEMMs run whole experts per thread, as in fp32. */
#include "kernels/cpu/cpu_ops.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif
#if HAVE_OPENMP
#include <omp.h>
#endif

#if HAVE_DNNL

/* What one calling thread uses: its stream and its operands' scratch. */
typedef struct bf16_slot {
    dnnl_stream_t stream;       /* made on the slot's first call */
    uint16_t *a, *b;            /* the operands in bf16 */
    size_t a_cap, b_cap;        /* their capacities, in elements */
} bf16_slot;

struct cpu_bf16 {
    dnnl_engine_t engine;
    /* trans_a | trans_b << 1 | accumulate << 2, all made at the start, so
     * that threads calling at once only execute them. */
    dnnl_primitive_t matmul[8];
    bf16_slot slot[CPU_BF16_SLOTS];
    char impl[64];              /* what oneDNN chose */
    char error[192];            /* the first failure, or "" */
};

/* Round to the nearest bf16, ties to even; NaNs stay (quiet) NaNs.
 * Branch-free, so that the packing loops vectorise. */
static inline uint16_t bf16_of(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

/* rows x cols of src (leading dimension ld) into dst, packed. */
static void pack_bf16(uint16_t *dst, const float *src, int rows, int cols,
                      int ld, int threads)
{
    CPU_PARALLEL_FOR(threads, (size_t)rows * cols)
    for (int r = 0; r < rows; r++) {
        const float *s = src + (size_t)r * ld;
        uint16_t *d = dst + (size_t)r * cols;
        for (int c = 0; c < cols; c++)
            d[c] = bf16_of(s[c]);
    }
}

static int fail(cpu_bf16 *b, const char *what, dnnl_status_t status)
{
    if (!b->error[0])
        snprintf(b->error, sizeof b->error, "oneDNN: %s failed (status %d)",
                 what, (int)status);
    return -1;
}

#define DNNL_TRY(b, call)                                                      \
    do {                                                                       \
        dnnl_status_t status_ = (call);                                        \
        if (status_ != dnnl_success)                                           \
            return fail((b), #call, status_);                                  \
    } while (0)

static int grow(cpu_bf16 *b, uint16_t **buf, size_t *cap, size_t want)
{
    if (want <= *cap)
        return 0;
    uint16_t *fresh = NULL;
    if (posix_memalign((void **)&fresh, 64, want * sizeof *fresh) != 0) {
        if (!b->error[0])
            snprintf(b->error, sizeof b->error,
                     "bf16 GEMM: out of memory for %zu operand elements",
                     want);
        return -1;
    }
    free(*buf);
    *buf = fresh;
    *cap = want;
    return 0;
}

/* A (M, K) packed: rows of K, or stored transposed as rows of M. */
static void dims_of(dnnl_dims_t dims, dnnl_dims_t strides, int transposed)
{
    dims[0] = dims[1] = DNNL_RUNTIME_DIM_VAL;
    strides[0] = transposed ? 1 : DNNL_RUNTIME_DIM_VAL;
    strides[1] = transposed ? DNNL_RUNTIME_DIM_VAL : 1;
}

static int make_matmul(cpu_bf16 *b, int key)
{
    int trans_a = key & 1, trans_b = (key >> 1) & 1, accumulate = key >> 2;
    dnnl_memory_desc_t a, w, c;
    dnnl_dims_t dims, strides;
    dims_of(dims, strides, trans_a);
    DNNL_TRY(b, dnnl_memory_desc_init_by_strides(&a, 2, dims, dnnl_bf16,
                                                 strides));
    dims_of(dims, strides, trans_b);
    DNNL_TRY(b, dnnl_memory_desc_init_by_strides(&w, 2, dims, dnnl_bf16,
                                                 strides));
    dims_of(dims, strides, 0);
    DNNL_TRY(b, dnnl_memory_desc_init_by_strides(&c, 2, dims, dnnl_f32,
                                                 strides));
    dnnl_matmul_desc_t desc;
    DNNL_TRY(b, dnnl_matmul_desc_init(&desc, &a, &w, NULL, &c));
    dnnl_primitive_attr_t attr;
    DNNL_TRY(b, dnnl_primitive_attr_create(&attr));
    dnnl_post_ops_t post = NULL;
    dnnl_status_t status = dnnl_success;
    if (accumulate) { /* C += A·B: the sum post-op */
        status = dnnl_post_ops_create(&post);
        if (status == dnnl_success)
            status = dnnl_post_ops_append_sum(post, 1.0f);
        if (status == dnnl_success)
            status = dnnl_primitive_attr_set_post_ops(attr, post);
    }
    dnnl_primitive_desc_t pd = NULL;
    if (status == dnnl_success)
        status = dnnl_primitive_desc_create(&pd, &desc, attr, b->engine, NULL);
    if (post)
        dnnl_post_ops_destroy(post);
    dnnl_primitive_attr_destroy(attr);
    if (status != dnnl_success)
        return fail(b, "making a bf16 matmul", status);
    const char *impl = NULL;
    if (!b->impl[0] &&
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) ==
            dnnl_success &&
        impl)
        snprintf(b->impl, sizeof b->impl, "%s", impl);
    status = dnnl_primitive_create(&b->matmul[key], pd);
    dnnl_primitive_desc_destroy(pd);
    if (status != dnnl_success)
        return fail(b, "dnnl_primitive_create", status);
    return 0;
}

int cpu_bf16_create(cpu_bf16 **out, char *why, size_t why_size)
{
    cpu_bf16 *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(why, why_size, "out of memory");
        return -1;
    }
    dnnl_status_t status = dnnl_engine_create(&b->engine, dnnl_cpu, 0);
    if (status != dnnl_success) {
        snprintf(why, why_size, "oneDNN's CPU engine did not start (status "
                 "%d)", (int)status);
        cpu_bf16_destroy(b);
        return -1;
    }
    for (int key = 0; key < 8; key++)
        if (make_matmul(b, key) < 0) {
            snprintf(why, why_size, "%s", b->error);
            cpu_bf16_destroy(b);
            return -1;
        }
    *out = b;
    return 0;
}

void cpu_bf16_destroy(cpu_bf16 *b)
{
    if (!b)
        return;
    for (int k = 0; k < 8; k++)
        if (b->matmul[k])
            dnnl_primitive_destroy(b->matmul[k]);
    for (int i = 0; i < CPU_BF16_SLOTS; i++) {
        if (b->slot[i].stream)
            dnnl_stream_destroy(b->slot[i].stream);
        free(b->slot[i].a);
        free(b->slot[i].b);
    }
    if (b->engine)
        dnnl_engine_destroy(b->engine);
    free(b);
}

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch (isa) {
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx (AMX)";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni (bf16 emulated)";
    case dnnl_cpu_isa_avx512_core: return "avx512_core (bf16 emulated)";
    default: return "below avx512 (bf16 emulated)";
    }
}

void cpu_bf16_describe(const cpu_bf16 *b, char *out, size_t size)
{
    snprintf(out, size, "oneDNN %s, %s",
             b->impl[0] ? b->impl : "matmul not made yet",
             isa_name(dnnl_get_effective_cpu_isa()));
}

const char *cpu_bf16_error(const cpu_bf16 *b)
{
    return b->error[0] ? b->error : NULL;
}

/* A memory object over `data` with concrete dims and strides. */
static dnnl_status_t memory_of(cpu_bf16 *b, dnnl_memory_t *m, int rows,
                               int cols, dnnl_dim_t s0, dnnl_dim_t s1,
                               dnnl_data_type_t type, void *data)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {rows, cols}, strides = {s0, s1};
    dnnl_status_t status =
        dnnl_memory_desc_init_by_strides(&md, 2, dims, type, strides);
    if (status != dnnl_success)
        return status;
    return dnnl_memory_create(m, &md, b->engine, data);
}

int cpu_bf16_gemm(cpu_bf16 *b, int slot, int threads, int trans_a,
                  int trans_b, int M, int N, int K, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return 0;
    if (K <= 0) {
        if (beta == 0.0f)
            for (int i = 0; i < M; i++)
                memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof *C);
        return 0;
    }
#if HAVE_OPENMP
    if (omp_get_max_threads() != threads)
        omp_set_num_threads(threads);
#endif
    bf16_slot *my = &b->slot[slot];
    int key = trans_a | trans_b << 1 | (beta != 0.0f) << 2;
    if (!my->stream) {
        dnnl_status_t made = dnnl_stream_create(&my->stream, b->engine,
                                                dnnl_stream_default_flags);
        if (made != dnnl_success)
            return fail(b, "dnnl_stream_create", made);
    }
    if (grow(b, &my->a, &my->a_cap, (size_t)M * K) < 0 ||
        grow(b, &my->b, &my->b_cap, (size_t)K * N) < 0)
        return -1;
    /* Packed in their stored orientation: A is (M, K), or (K, M) when
     * transposed; B is (K, N), or (N, K). */
    if (trans_a)
        pack_bf16(my->a, A, K, M, lda, threads);
    else
        pack_bf16(my->a, A, M, K, lda, threads);
    if (trans_b)
        pack_bf16(my->b, B, N, K, ldb, threads);
    else
        pack_bf16(my->b, B, K, N, ldb, threads);
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    dnnl_status_t status =
        memory_of(b, &ma, M, K, trans_a ? 1 : K, trans_a ? M : 1, dnnl_bf16,
                  my->a);
    if (status == dnnl_success)
        status = memory_of(b, &mb, K, N, trans_b ? 1 : N, trans_b ? K : 1,
                           dnnl_bf16, my->b);
    if (status == dnnl_success)
        status = memory_of(b, &mc, M, N, ldc, 1, dnnl_f32, C);
    if (status == dnnl_success) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma},
                                   {DNNL_ARG_WEIGHTS, mb},
                                   {DNNL_ARG_DST, mc}};
        status = dnnl_primitive_execute(b->matmul[key], my->stream, 3, args);
        if (status == dnnl_success)
            status = dnnl_stream_wait(my->stream);
    }
    if (ma)
        dnnl_memory_destroy(ma);
    if (mb)
        dnnl_memory_destroy(mb);
    if (mc)
        dnnl_memory_destroy(mc);
    return status == dnnl_success ? 0 : fail(b, "a bf16 matmul", status);
}

#else /* built without oneDNN */

struct cpu_bf16 {
    int unused;
};

int cpu_bf16_create(cpu_bf16 **out, char *why, size_t why_size)
{
    *out = NULL;
    snprintf(why, why_size, "precision bf16 on a CPU device needs oneDNN, "
                            "and this moectl was built without it (install "
                            "libdnnl-dev, or run scripts/setup.sh, and "
                            "rebuild)");
    return -1;
}

void cpu_bf16_destroy(cpu_bf16 *b) { (void)b; }

void cpu_bf16_describe(const cpu_bf16 *b, char *out, size_t size)
{
    (void)b;
    snprintf(out, size, "no oneDNN");
}

const char *cpu_bf16_error(const cpu_bf16 *b)
{
    (void)b;
    return "no oneDNN";
}

int cpu_bf16_gemm(cpu_bf16 *b, int slot, int threads, int trans_a,
                  int trans_b, int M, int N, int K, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc)
{
    (void)b, (void)slot, (void)threads, (void)trans_a, (void)trans_b, (void)M, (void)N;
    (void)K, (void)A, (void)lda, (void)B, (void)ldb, (void)beta, (void)C;
    (void)ldc;
    return -1;
}

#endif
