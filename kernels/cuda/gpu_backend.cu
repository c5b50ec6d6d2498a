#include "kernels/cuda/gpu_backend.h"

#include <string.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/gpu_vendor.h"

#if defined(MOECTL_HIP)
extern "C" const char gpu_backend_kind[] = "hip";
#else
extern "C" const char gpu_backend_kind[] = "cuda";
#endif

static char first_failure[512];

extern "C" void gpu_report_failure(const char *what, const char *detail,
                                   const char *func, const char *file,
                                   int line)
{
    if (first_failure[0])
        return;
    snprintf(first_failure, sizeof first_failure, "%s failed: %s (in %s, "
             "%s:%d)", what, detail, func, file, line);
}

extern "C" const char *gpu_backend_error(void)
{
    return first_failure[0] ? first_failure : NULL;
}

/* The table's memory slots: managed memory, which the engine's host code
 * (routing, dispatch, MPI buffers) and the kernels both address. */
static void *gpu_op_alloc(void *ctx, size_t bytes)
{
    (void)ctx;
    return gpu_alloc(bytes);
}

static void gpu_op_free(void *ctx, void *p)
{
    (void)ctx;
    gpu_free(p);
}

static void gpu_op_sync(void *ctx)
{
    (void)ctx;
    GPU_CHECK(cudaDeviceSynchronize());
}

static const char *gpu_op_last_error(void *ctx)
{
    (void)ctx;
    return gpu_backend_error();
}

static const backend_ops gpu_ops = {
    gpu_backend_kind,
    gpu_matmul_forward,
    gpu_matmul_backward,
    gpu_grouped_matmul_forward,
    gpu_grouped_matmul_backward,
    gpu_embedding_forward,
    gpu_embedding_backward,
    gpu_rmsnorm_forward,
    gpu_rmsnorm_backward,
    gpu_rope_forward,
    gpu_rope_backward,
    gpu_attention_forward,
    gpu_attention_backward,
    gpu_swiglu_forward,
    gpu_swiglu_backward,
    gpu_router_forward,
    gpu_router_backward,
    gpu_moe_permute,
    gpu_moe_permute_backward,
    gpu_moe_unpermute,
    gpu_moe_unpermute_backward,
    gpu_crossentropy_forward_backward,
    gpu_add_inplace,
    gpu_sum_squares,
    gpu_adamw_update,
    gpu_op_alloc,
    gpu_op_free,
    gpu_op_sync,
    gpu_op_last_error,
    NULL, /* matmul_forward_fp32: the router's GEMM as the others */
    NULL, /* params_changed: nothing derived from the weights is kept */
};

extern "C" int gpu_device_count(char *why, size_t why_size)
{
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
        if (why)
            snprintf(why, why_size, "%s: no usable device (%s, error %d)",
                     gpu_backend_kind, cudaGetErrorString(status),
                     (int)status);
        return 0;
    }
    if (count == 0 && why)
        snprintf(why, why_size, "%s: no device", gpu_backend_kind);
    return count;
}

extern "C" int gpu_backend_init(backend *be, int device, int precision,
                                char *why, size_t why_size)
{
    memset(be, 0, sizeof *be);
    if (precision < GPU_PRECISION_FP32 || precision > GPU_PRECISION_BF16) {
        snprintf(why, why_size, "unknown GEMM precision %d", precision);
        return -1;
    }
#if !GPU_HAVE_BLAS || defined(MOECTL_HIP)
    /* Our tiled GEMM, and hipBLAS's Sgemm, multiply in fp32 alone. */
    if (precision != GPU_PRECISION_FP32) {
        snprintf(why, why_size, "precision %s needs cuBLAS; this %s build "
                 "multiplies in fp32 only",
                 precision == GPU_PRECISION_TF32 ? "tf32" : "bf16",
                 gpu_backend_kind);
        return -1;
    }
#endif
    int count = gpu_device_count(why, why_size);
    if (count == 0)
        return -1;
    if (device < 0 || device >= count) {
        snprintf(why, why_size, "%s device %d does not exist (%d found)",
                 gpu_backend_kind, device, count);
        return -1;
    }
    gpu_context *ctx = (gpu_context *)calloc(1, sizeof *ctx);
    if (!ctx) {
        snprintf(why, why_size, "out of memory");
        return -1;
    }
    cudaDeviceProp props;
    cudaError_t status = cudaSetDevice(device);
    if (status == cudaSuccess)
        status = cudaGetDeviceProperties(&props, device);
    if (status != cudaSuccess) {
        snprintf(why, why_size, "%s device %d: %s", gpu_backend_kind, device,
                 cudaGetErrorString(status));
        free(ctx);
        return -1;
    }
    ctx->device = device;
    ctx->warp_size = props.warpSize; /* 64 on CDNA: never assume 32 */
    ctx->multiprocessors = props.multiProcessorCount;
    ctx->precision = precision;
#if GPU_HAVE_BLAS
    cublasHandle_t handle;
    if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, why_size, "%s device %d: cannot create the BLAS "
                 "handle", gpu_backend_kind, device);
        free(ctx);
        return -1;
    }
    ctx->blas = handle;
#endif
    be->ops = &gpu_ops;
    be->ctx = ctx;
    return 0;
}

extern "C" void gpu_backend_finish(backend *be)
{
    gpu_context *ctx = (gpu_context *)be->ctx;
    if (!ctx)
        return;
#if GPU_HAVE_BLAS
    if (ctx->blas)
        cublasDestroy((cublasHandle_t)ctx->blas);
#endif
    gpu_gemm_batch_free(ctx);
    free(ctx);
    be->ctx = NULL;
    be->ops = NULL;
}

/* Managed memory can be asked for beyond what the card holds: pages then
 * thrash between host and device, and on some drivers the device hangs.
 * So the live total is kept under the memory that was free at the first
 * allocation, less a reserve for the runtime, cuBLAS and kernel scratch
 * (5%, at least 256 MiB). Each block carries its size in a header of one
 * alignment unit, so that a free can give it back. */
enum { GPU_HEADER = 256 };
static size_t managed_limit, managed_live;

extern "C" void *gpu_alloc(size_t bytes)
{
    if (managed_limit == 0) {
        size_t free_bytes = 0, total_bytes = 0;
        cudaError_t status = cudaMemGetInfo(&free_bytes, &total_bytes);
        if (status != cudaSuccess) {
            gpu_report_failure("cudaMemGetInfo", cudaGetErrorString(status),
                               __func__, __FILE__, __LINE__);
            return NULL;
        }
        size_t reserve = total_bytes / 20;
        if (reserve < ((size_t)256 << 20))
            reserve = (size_t)256 << 20;
        managed_limit = free_bytes > reserve ? free_bytes - reserve : 1;
    }
    if (bytes > managed_limit - managed_live) {
        char detail[192];
        snprintf(detail, sizeof detail, "%.3g GiB asked with %.3g GiB in "
                 "use; the limit is %.3g GiB (the free memory less a "
                 "reserve)", bytes / 1073741824.0,
                 managed_live / 1073741824.0,
                 managed_limit / 1073741824.0);
        gpu_report_failure("device memory", detail, __func__, __FILE__,
                           __LINE__);
        return NULL;
    }
    char *p = NULL;
    cudaError_t status = cudaMallocManaged((void **)&p, bytes + GPU_HEADER);
    if (status != cudaSuccess) {
        gpu_report_failure("cudaMallocManaged", cudaGetErrorString(status),
                           __func__, __FILE__, __LINE__);
        return NULL;
    }
    *(size_t *)p = bytes;
    managed_live += bytes;
    return p + GPU_HEADER;
}

extern "C" void gpu_free(void *p)
{
    if (!p)
        return;
    char *block = (char *)p - GPU_HEADER;
    managed_live -= *(size_t *)block;
    (void)cudaFree(block);
}
