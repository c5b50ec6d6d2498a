#include "engine/core/gpu_loader.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moectl_build.h"

/* The modules this build made (absolute paths in the build tree), or ""
 * where the compiler was not found. */
static const char *built_module(const char *kind)
{
    if (strcmp(kind, "cuda") == 0)
        return MOECTL_GPU_MODULE_CUDA;
    if (strcmp(kind, "hip") == 0)
        return MOECTL_GPU_MODULE_HIP;
    return "";
}

int gpu_loader_open(gpu_loader *g, const char *kind, char *why,
                    size_t why_size)
{
    memset(g, 0, sizeof *g);
    const char *path = getenv("MOECTL_GPU_LIB");
    if (!path || !*path)
        path = built_module(kind);
    if (!*path) {
        snprintf(why, why_size, "this moectl was built without the %s "
                 "backend (%s was not found at configure time)", kind,
                 strcmp(kind, "cuda") == 0 ? "nvcc with cuBLAS" : "hipcc");
        return -1;
    }
    g->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!g->handle) {
        snprintf(why, why_size, "cannot load the %s backend: %s", kind,
                 dlerror());
        return -1;
    }
    /* POSIX: function pointers travel through void * from dlsym. */
    *(void **)&g->device_count = dlsym(g->handle, "gpu_device_count");
    *(void **)&g->backend_init = dlsym(g->handle, "gpu_backend_init");
    *(void **)&g->backend_finish = dlsym(g->handle, "gpu_backend_finish");
    const char *kind_of = dlsym(g->handle, "gpu_backend_kind");
    if (!g->device_count || !g->backend_init || !g->backend_finish ||
        !kind_of) {
        snprintf(why, why_size, "%s is not a moectl GPU backend (missing "
                 "symbols)", path);
        gpu_loader_close(g);
        return -1;
    }
    if (strcmp(kind_of, kind) != 0) {
        snprintf(why, why_size, "%s drives %s, not %s", path, kind_of, kind);
        gpu_loader_close(g);
        return -1;
    }
    return 0;
}

void gpu_loader_close(gpu_loader *g)
{
    if (g->handle)
        dlclose(g->handle);
    memset(g, 0, sizeof *g);
}
