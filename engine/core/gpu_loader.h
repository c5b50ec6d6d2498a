/* Opens the GPU backend of a kind (cuda or hip) at run time. Its failures
 * are read through its table (backend_ops.last_error). The backends
 * are shared modules built from kernels/cuda (kernels/hip for HIP), so a
 * CPU rank never loads a GPU runtime, and one moectl drives either vendor.
 * They export the functions of kernels/cuda/gpu_backend.h. */
#ifndef MOECTL_ENGINE_GPU_LOADER_H
#define MOECTL_ENGINE_GPU_LOADER_H

#include <stddef.h>

#include "kernels/backend.h"

typedef struct gpu_loader {
    void *handle;
    int (*device_count)(char *why, size_t why_size);
    int (*backend_init)(backend *be, int device, int tf32, char *why,
                        size_t why_size);
    void (*backend_finish)(backend *be);
} gpu_loader;

/* Loads the backend for kind "cuda" or "hip": $MOECTL_GPU_LIB when set,
 * else the module this build made. Returns 0, or -1 with a one-line reason
 * (not built, not loadable, missing symbols). */
int gpu_loader_open(gpu_loader *g, const char *kind, char *why,
                    size_t why_size);
void gpu_loader_close(gpu_loader *g);

#endif
