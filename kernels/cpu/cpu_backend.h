/* The CPU reference backend: OpenBLAS for GEMMs, plain C loops the
 * compiler can vectorise for the rest, threads set explicitly because BLAS
 * threads and MPI ranks share the cores. */
#ifndef MOECTL_KERNELS_CPU_BACKEND_H
#define MOECTL_KERNELS_CPU_BACKEND_H

#include <stddef.h>

#include "kernels/backend.h"

extern const backend_ops cpu_backend_ops;

/* Fills *out with the CPU backend using `threads` threads for BLAS and its
 * own loops (threads >= 1). Returns 0, or -1 when out of memory. */
int cpu_backend_init(backend *out, int threads);
/* The same with every GEMM in bf16 through oneDNN (precision: bf16): -1
 * with the reason when this build has no oneDNN or it did not start. */
int cpu_backend_init_bf16(backend *out, int threads, char *why,
                          size_t why_size);
/* "fp32, OpenBLAS", or what oneDNN chose for the bf16 GEMMs and on which
 * ISA ("bf16 GEMMs, oneDNN gemm:jit, avx512_core_bf16"). */
void cpu_backend_describe(const backend *b, char *out, size_t size);
/* Releases what cpu_backend_init allocated; safe on a zeroed backend. */
void cpu_backend_finish(backend *b);

#endif
