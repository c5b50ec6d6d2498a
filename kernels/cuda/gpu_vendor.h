/* One set of kernel sources for NVIDIA and AMD (ggml's vendors/hip.h
 * approach): the .cu files use CUDA names, and a HIP build (hipcc with
 * MOECTL_HIP defined) maps them here. Never assume a warp of 32: CDNA
 * wavefronts are 64 wide, so kernels read gpu_context.warp_size or
 * warpSize. */
#ifndef MOECTL_KERNELS_GPU_VENDOR_H
#define MOECTL_KERNELS_GPU_VENDOR_H

#include <stdio.h>
#include <stdlib.h>

#if defined(MOECTL_HIP)
#include <hip/hip_runtime.h>
#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaGetErrorString hipGetErrorString
#define cudaGetLastError hipGetLastError
#define cudaGetDeviceCount hipGetDeviceCount
#define cudaGetDeviceProperties hipGetDeviceProperties
#define cudaDeviceProp hipDeviceProp_t
#define cudaSetDevice hipSetDevice
#define cudaDeviceSynchronize hipDeviceSynchronize
#define cudaMalloc hipMalloc
#define cudaMallocManaged hipMallocManaged
#define cudaMemGetInfo hipMemGetInfo
#define cudaFree hipFree
#define cudaMemcpy hipMemcpy
#define cudaMemset hipMemset
#define cudaMemcpyHostToDevice hipMemcpyHostToDevice
#define cudaMemcpyDeviceToHost hipMemcpyDeviceToHost
#define cudaMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define cudaMemcpyDefault hipMemcpyDefault
#if defined(MOECTL_HIPBLAS)
#include <hipblas/hipblas.h>
#define cublasHandle_t hipblasHandle_t
#define cublasCreate hipblasCreate
#define cublasDestroy hipblasDestroy
#define cublasSgemm hipblasSgemm
#define CUBLAS_OP_N HIPBLAS_OP_N
#define CUBLAS_OP_T HIPBLAS_OP_T
#define cublasStatus_t hipblasStatus_t
#define CUBLAS_STATUS_SUCCESS HIPBLAS_STATUS_SUCCESS
#define GPU_HAVE_BLAS 1
#else
#define GPU_HAVE_BLAS 0 /* Debian's HIP has no hipBLAS: our tiled GEMM */
#endif
#else
#include <cuda_runtime.h>
#include <cublas_v2.h>
#define GPU_HAVE_BLAS 1
#endif

/* Every call into the runtime or BLAS goes through this: on failure it
 * reports the statement, function, file and line, and the op's caller
 * gets a sticky error (gpu_backend_error) rather than an exit. */
#ifdef __cplusplus
extern "C"
#endif
void gpu_report_failure(const char *what, const char *detail,
                        const char *func, const char *file, int line);

#define GPU_CHECK(call)                                                        \
    do {                                                                       \
        cudaError_t gpu_check_status_ = (call);                                \
        if (gpu_check_status_ != cudaSuccess)                                  \
            gpu_report_failure(#call, cudaGetErrorString(gpu_check_status_),  \
                               __func__, __FILE__, __LINE__);                  \
    } while (0)

#define GPU_CHECK_LAUNCH() GPU_CHECK(cudaGetLastError())

#if GPU_HAVE_BLAS
#define BLAS_CHECK(call)                                                       \
    do {                                                                       \
        if ((call) != CUBLAS_STATUS_SUCCESS)                                   \
            gpu_report_failure(#call, "BLAS error", __func__, __FILE__,        \
                               __LINE__);                                      \
    } while (0)
#endif

static inline int gpu_blocks(size_t n, int threads)
{
    size_t b = (n + (size_t)threads - 1) / (size_t)threads;
    return b > 65535u * 16u ? 65535 * 16 : (int)b;
}

#endif
