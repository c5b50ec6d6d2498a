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
 * the grouped GEMMs run whole experts per thread, as in fp32.
 *
 * Weights are rounded once a step, not at every call: the first GEMM that
 * multiplies by a weight after cpu_bf16_params_changed (the model calls it
 * before each forward pass) makes its bf16 copy, and the backward's
 * products by the same weight use that copy. */
#include "kernels/cpu/cpu_ops.h"

#include <pthread.h>
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

/* A weight's bf16 copy, packed in the weight's stored orientation. */
typedef struct bf16_weight {
    const float *src;     /* the fp32 weight: the key, with the shape */
    int rows, cols, ld;
    unsigned made;        /* the generation the copy was made in, 0: none */
    unsigned used;        /* the last generation that asked for it */
    uint16_t *data;       /* rows x cols */
    pthread_mutex_t lock; /* held while the copy is made */
} bf16_weight;

struct cpu_bf16 {
    dnnl_engine_t engine;
    /* The weights' copies: open addressing on the weight's address. The
     * table lock covers finding and adding; each copy has its own lock. */
    pthread_mutex_t table_lock;
    bf16_weight **table;        /* table_size entries, NULL: free */
    size_t table_size, table_used;
    unsigned generation;        /* bumped by cpu_bf16_params_changed */
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

static int fail_oom(cpu_bf16 *b, const char *what, size_t elements)
{
    if (!b->error[0])
        snprintf(b->error, sizeof b->error,
                 "bf16 GEMM: out of memory for %s (%zu elements)", what,
                 elements);
    return -1;
}

static int grow(cpu_bf16 *b, uint16_t **buf, size_t *cap, size_t want)
{
    if (want <= *cap)
        return 0;
    uint16_t *fresh = NULL;
    if (posix_memalign((void **)&fresh, 64, want * sizeof *fresh) != 0)
        return fail_oom(b, "an operand", want);
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

static void weight_free(bf16_weight *w)
{
    if (!w)
        return;
    pthread_mutex_destroy(&w->lock);
    free(w->data);
    free(w);
}

static size_t hash_of(const float *src, size_t size)
{
    uint64_t h = (uint64_t)(uintptr_t)src * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32) & (size - 1);
}

static void table_put(bf16_weight **table, size_t size, bf16_weight *w)
{
    size_t i = hash_of(w->src, size);
    while (table[i])
        i = (i + 1) & (size - 1);
    table[i] = w;
}

/* The entry for (src, rows, cols, ld), added when new; NULL when out of
 * memory. Under the table lock. */
static bf16_weight *weight_entry(cpu_bf16 *b, const float *src, int rows,
                                 int cols, int ld)
{
    for (size_t i = b->table_size ? hash_of(src, b->table_size) : 0;
         b->table_size && b->table[i]; i = (i + 1) & (b->table_size - 1)) {
        bf16_weight *w = b->table[i];
        if (w->src == src && w->rows == rows && w->cols == cols &&
            w->ld == ld)
            return w;
    }
    if (2 * (b->table_used + 1) > b->table_size) { /* grow, rehash */
        size_t size = b->table_size ? 2 * b->table_size : 64;
        bf16_weight **table = calloc(size, sizeof *table);
        if (!table)
            return NULL;
        for (size_t i = 0; i < b->table_size; i++)
            if (b->table[i])
                table_put(table, size, b->table[i]);
        free(b->table);
        b->table = table;
        b->table_size = size;
    }
    bf16_weight *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    *w = (bf16_weight){.src = src, .rows = rows, .cols = cols, .ld = ld};
    pthread_mutex_init(&w->lock, NULL);
    table_put(b->table, b->table_size, w);
    b->table_used++;
    return w;
}

/* The weight's bf16 copy for this generation, made if it is not yet;
 * NULL when out of memory (b->error says so). */
static const uint16_t *weight_copy(cpu_bf16 *b, const float *src, int rows,
                                   int cols, int ld, int threads)
{
    pthread_mutex_lock(&b->table_lock);
    bf16_weight *w = weight_entry(b, src, rows, cols, ld);
    unsigned generation = b->generation;
    pthread_mutex_unlock(&b->table_lock);
    if (!w) {
        fail_oom(b, "a weight's bf16 copy", 0);
        return NULL;
    }
    pthread_mutex_lock(&w->lock);
    if (w->made != generation) {
        if (!w->data &&
            posix_memalign((void **)&w->data, 64,
                           (size_t)rows * cols * sizeof *w->data) != 0) {
            w->data = NULL;
            pthread_mutex_unlock(&w->lock);
            fail_oom(b, "a weight's bf16 copy", (size_t)rows * cols);
            return NULL;
        }
        pack_bf16(w->data, src, rows, cols, ld, threads);
        w->made = generation;
    }
    w->used = generation;
    pthread_mutex_unlock(&w->lock);
    return w->data;
}

void cpu_bf16_params_changed(cpu_bf16 *b)
{
    unsigned last = b->generation;
    b->generation = last + 1 ? last + 1 : 1;
    /* Copies nobody asked for in the last generation go (a weight freed
     * or moved); the rest are kept for their memory, to be remade. */
    size_t kept = 0;
    for (size_t i = 0; i < b->table_size; i++) {
        bf16_weight *w = b->table[i];
        if (w && w->used != last) {
            weight_free(w);
            b->table[i] = NULL;
        }
        kept += b->table[i] != NULL;
    }
    if (kept == b->table_used)
        return;
    /* Rehash: the holes would cut other entries' probe chains. */
    bf16_weight **table = calloc(b->table_size, sizeof *table);
    for (size_t i = 0; i < b->table_size; i++)
        if (b->table[i] && table)
            table_put(table, b->table_size, b->table[i]);
        else if (b->table[i]) /* out of memory: start the copies anew */
            weight_free(b->table[i]);
    free(b->table);
    b->table = table;
    b->table_size = table ? b->table_size : 0;
    b->table_used = table ? kept : 0;
}

int cpu_bf16_create(cpu_bf16 **out, char *why, size_t why_size)
{
    cpu_bf16 *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(why, why_size, "out of memory");
        return -1;
    }
    pthread_mutex_init(&b->table_lock, NULL);
    b->generation = 1;
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
    for (size_t i = 0; i < b->table_size; i++)
        weight_free(b->table[i]);
    free(b->table);
    pthread_mutex_destroy(&b->table_lock);
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

/* The slot's stream, made on its first call; the thread count set. */
static bf16_slot *slot_ready(cpu_bf16 *b, int slot, int threads)
{
#if HAVE_OPENMP
    if (omp_get_max_threads() != threads)
        omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    bf16_slot *my = &b->slot[slot];
    if (!my->stream) {
        dnnl_status_t made = dnnl_stream_create(&my->stream, b->engine,
                                                dnnl_stream_default_flags);
        if (made != dnnl_success) {
            fail(b, "dnnl_stream_create", made);
            return NULL;
        }
    }
    return my;
}

/* C = op(A) op(B) (+ C) on operands already in bf16, each packed in its
 * stored orientation: A is (M, K), or (K, M) when transposed; B is (K, N),
 * or (N, K). */
static int gemm_packed(cpu_bf16 *b, bf16_slot *my, int trans_a, int trans_b,
                       int M, int N, int K, const uint16_t *a16,
                       const uint16_t *b16, float beta, float *C, int ldc)
{
    int key = trans_a | trans_b << 1 | (beta != 0.0f) << 2;
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    dnnl_status_t status =
        memory_of(b, &ma, M, K, trans_a ? 1 : K, trans_a ? M : 1, dnnl_bf16,
                  (void *)a16);
    if (status == dnnl_success)
        status = memory_of(b, &mb, K, N, trans_b ? 1 : N, trans_b ? K : 1,
                           dnnl_bf16, (void *)b16);
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

/* Empty products: nothing, or C zeroed when K is 0 and C is set. 1 when
 * the product is empty. */
static int empty_product(int M, int N, int K, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return 1;
    if (K > 0)
        return 0;
    if (beta == 0.0f)
        for (int i = 0; i < M; i++)
            memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof *C);
    return 1;
}

/* A rounded into the slot's scratch. */
static const uint16_t *pack_a(cpu_bf16 *b, bf16_slot *my, int trans_a, int M,
                              int K, const float *A, int lda, int threads)
{
    if (grow(b, &my->a, &my->a_cap, (size_t)M * K) < 0)
        return NULL;
    if (trans_a)
        pack_bf16(my->a, A, K, M, lda, threads);
    else
        pack_bf16(my->a, A, M, K, lda, threads);
    return my->a;
}

int cpu_bf16_gemm(cpu_bf16 *b, int slot, int threads, int trans_a,
                  int trans_b, int M, int N, int K, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc)
{
    if (empty_product(M, N, K, beta, C, ldc))
        return 0;
    bf16_slot *my = slot_ready(b, slot, threads);
    if (!my)
        return -1;
    const uint16_t *a16 = pack_a(b, my, trans_a, M, K, A, lda, threads);
    if (!a16 || grow(b, &my->b, &my->b_cap, (size_t)K * N) < 0)
        return -1;
    if (trans_b)
        pack_bf16(my->b, B, N, K, ldb, threads);
    else
        pack_bf16(my->b, B, K, N, ldb, threads);
    return gemm_packed(b, my, trans_a, trans_b, M, N, K, a16, my->b, beta, C,
                       ldc);
}

int cpu_bf16_gemm_weight(cpu_bf16 *b, int slot, int threads, int trans_a,
                         int trans_b, int M, int N, int K, const float *A,
                         int lda, const float *W, int ldw, float beta,
                         float *C, int ldc)
{
    if (empty_product(M, N, K, beta, C, ldc))
        return 0;
    bf16_slot *my = slot_ready(b, slot, threads);
    if (!my)
        return -1;
    const uint16_t *w16 = trans_b ? weight_copy(b, W, N, K, ldw, threads)
                                  : weight_copy(b, W, K, N, ldw, threads);
    const uint16_t *a16 = w16 ? pack_a(b, my, trans_a, M, K, A, lda, threads)
                              : NULL;
    if (!a16)
        return -1;
    return gemm_packed(b, my, trans_a, trans_b, M, N, K, a16, w16, beta, C,
                       ldc);
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

void cpu_bf16_params_changed(cpu_bf16 *b) { (void)b; }

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

int cpu_bf16_gemm_weight(cpu_bf16 *b, int slot, int threads, int trans_a,
                         int trans_b, int M, int N, int K, const float *A,
                         int lda, const float *W, int ldw, float beta,
                         float *C, int ldc)
{
    return cpu_bf16_gemm(b, slot, threads, trans_a, trans_b, M, N, K, A, lda,
                         W, ldw, beta, C, ldc);
}

#endif
