/* The CPU reference backend: OpenBLAS for GEMMs, plain C loops the
 * compiler can vectorise for the rest, threads set explicitly because BLAS
 * threads and MPI ranks share the cores. */
#ifndef MOECTL_KERNELS_CPU_BACKEND_H
#define MOECTL_KERNELS_CPU_BACKEND_H

#include "kernels/backend.h"

extern const backend_ops cpu_backend_ops;

/* Fills *out with the CPU backend using `threads` threads for BLAS and its
 * own loops (threads >= 1). Returns 0, or -1 when out of memory. */
int cpu_backend_init(backend *out, int threads);
/* Releases what cpu_backend_init allocated; safe on a zeroed backend. */
void cpu_backend_finish(backend *b);

#endif
