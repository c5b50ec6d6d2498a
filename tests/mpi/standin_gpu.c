/* A stand-in GPU backend module for tests on machines without a GPU: it
 * exports what engine/core/gpu_loader.c looks up (kernels/cuda/gpu_backend.h)
 * and drives the CPU reference behind them, so a job with a `cuda` device
 * runs the trainer's whole GPU path (module loading, the device's table,
 * its allocator, its failure report) and must match the all-CPU run bit
 * for bit. Loaded through MOECTL_GPU_LIB; it is no GPU and says so.
 *
 * MOECTL_STANDIN_FAIL_AT=N makes the "device" fail at its Nth
 * cross-entropy call (one a training step, one a validation batch): from
 * then on its table's last_error reports it, as a real backend reports a
 * runtime error, and the ops keep running as a real device's would. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/gpu_backend.h"

/* What the loader checks against the device entry's backend. */
const char gpu_backend_kind[] = "cuda";

static backend_ops standin_ops;
static void (*cpu_crossentropy)(void *ctx, float *losses, float *dlogits,
                                const float *logits, const int *targets,
                                int N, int V, float dloss);
static long calls, fail_at;
static char failure[160];

static void standin_crossentropy(void *ctx, float *losses, float *dlogits,
                                 const float *logits, const int *targets,
                                 int N, int V, float dloss)
{
    cpu_crossentropy(ctx, losses, dlogits, logits, targets, N, V, dloss);
    if (++calls == fail_at && !failure[0])
        snprintf(failure, sizeof failure, "stand-in device: failure "
                 "injected at cross-entropy call %ld "
                 "(MOECTL_STANDIN_FAIL_AT)", calls);
}

/* The table's failure slot: the device tells its failure through it. */
static const char *standin_last_error(void *ctx)
{
    (void)ctx;
    return failure[0] ? failure : NULL;
}

int gpu_device_count(char *why, size_t why_size)
{
    (void)why, (void)why_size;
    return 1;
}

int gpu_backend_init(backend *be, int device, int precision, char *why,
                     size_t why_size)
{
    (void)precision; /* the CPU reference multiplies in fp32 */
    if (device != 0) {
        snprintf(why, why_size, "stand-in device %d does not exist (1 "
                 "found)", device);
        return -1;
    }
    if (cpu_backend_init(be, 1) < 0) {
        snprintf(why, why_size, "stand-in device: out of memory");
        return -1;
    }
    standin_ops = *be->ops;
    cpu_crossentropy = standin_ops.crossentropy_forward_backward;
    standin_ops.crossentropy_forward_backward = standin_crossentropy;
    standin_ops.last_error = standin_last_error;
    be->ops = &standin_ops;
    const char *at = getenv("MOECTL_STANDIN_FAIL_AT");
    fail_at = at ? atol(at) : 0;
    calls = 0;
    failure[0] = '\0';
    return 0;
}

void gpu_backend_finish(backend *be)
{
    cpu_backend_finish(be);
}

const char *gpu_backend_error(void)
{
    return failure[0] ? failure : NULL;
}
