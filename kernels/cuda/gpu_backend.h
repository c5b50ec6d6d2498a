/* The GPU backend (CUDA, or HIP from the same sources): the backend table
 * of kernels/backend.h on one device. Plain C; the kernels are in the .cu
 * files of this folder. Tensors handed to its ops live in managed memory
 * (gpu_alloc), which the host code of the engine can address too. */
#ifndef MOECTL_KERNELS_GPU_BACKEND_H
#define MOECTL_KERNELS_GPU_BACKEND_H

#include <stddef.h>

#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* "cuda" or "hip": what this build drives. */
extern const char gpu_backend_kind[];

/* Devices this process can use; 0 when there is no device or no driver,
 * with the runtime's reason in `why` (may be NULL). */
int gpu_device_count(char *why, size_t why_size);

/* GEMM precision (config_precision has the same values): fp32 products,
 * or tensor cores on inputs rounded to TF32 or bf16, fp32 accumulation. */
enum {
    GPU_PRECISION_FP32,
    GPU_PRECISION_TF32,
    GPU_PRECISION_BF16,
};

/* Starts the backend on `device` with GEMMs in `precision` (a
 * GPU_PRECISION_*; a build without cuBLAS refuses anything but fp32).
 * Returns 0, or -1 with a reason in `why`. */
int gpu_backend_init(backend *be, int device, int precision, char *why,
                     size_t why_size);
void gpu_backend_finish(backend *be);

/* The first failure of any runtime or BLAS call since init (statement,
 * function, file and line), or NULL. Ops do not exit on failure: callers
 * check this after a step. */
const char *gpu_backend_error(void);

/* Managed memory both the host and the device address; NULL when out of
 * memory, or when the live total would pass the device memory that was
 * free at the first call less a reserve (gpu_backend_error says which).
 * gpu_free(NULL) is a no-op. */
void *gpu_alloc(size_t bytes);
void gpu_free(void *p);

#ifdef __cplusplus
}
#endif

#endif
