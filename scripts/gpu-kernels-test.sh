#!/usr/bin/env bash
# The GPU backend test (tests/kernels/test_gpu_ops.c: every op of the CUDA
# backend against the CPU reference) built with nothing but nvcc, a C
# compiler and OpenBLAS: for a machine with a GPU and the CUDA toolkit but
# no apt and no network. OpenBLAS comes from Debian packages fetched here
# and unpacked there with dpkg -x, or from the system when it has one.
#
#   scripts/gpu-kernels-test.sh --fetch DIR     here: download the .debs to DIR
#   scripts/gpu-kernels-test.sh [--debs DIR] [--arch 90] [--out DIR]
#                                               there: build, then run the test
#
# Exits with the test's status: 0 passed, 1 failed, 77 no usable device.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

debs="" arch=90 out=build-gpu fetch=""
while (($#)); do
    case "$1" in
        --fetch) fetch=$2; shift 2 ;;
        --debs) debs=$2; shift 2 ;;
        --arch) arch=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "gpu-kernels-test.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
say() { printf 'gpu-kernels-test: %s\n' "$*" >&2; }

# OpenBLAS (pthread build, its headers and the Fortran runtime it needs).
packages=(libopenblas0-pthread libopenblas-pthread-dev libgfortran5)

if [ -n "$fetch" ]; then
    mkdir -p "$fetch"
    (cd "$fetch" && apt-get download "${packages[@]}")
    say "fetched ${packages[*]} into $fetch"
    exit 0
fi

# The toolkit's own nvcc first: one on PATH may be a wrapper script that
# says nothing about where the libraries are.
nvcc=/usr/local/cuda/bin/nvcc
[ -x "$nvcc" ] || nvcc=$(command -v nvcc || true)
[ -n "$nvcc" ] && [ -x "$nvcc" ] || { say "no nvcc (looked in /usr/local/cuda/bin and on PATH)"; exit 2; }
cuda=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
cuda_lib=""
for d in "$cuda/lib64" "$cuda/targets/x86_64-linux/lib" "${CUDA_HOME:-/usr/local/cuda}/lib64"; do
    if [ -z "$cuda_lib" ] && [ -e "$d/libcudart.so" ] && [ -e "$d/libcublas.so" ]; then
        cuda_lib=$d
    fi
done
[ -n "$cuda_lib" ] || { say "no libcudart.so and libcublas.so beside $nvcc"; exit 2; }

mkdir -p "$out/obj"
prefix=/
if [ -n "$debs" ]; then
    prefix=$out/debs
    mkdir -p "$prefix"
    for f in "$debs"/*.deb; do dpkg -x "$f" "$prefix"; done
fi
multiarch=usr/lib/x86_64-linux-gnu
# The unpacked .debs hold the pthread build; a system may have installed
# the OpenMP one instead (setup.sh does): either serves.
blas_inc="" blas_lib=""
for flavour in openblas-pthread openblas-openmp; do
    if [ -z "$blas_inc" ] && [ -f "$prefix/usr/include/x86_64-linux-gnu/$flavour/cblas.h" ] &&
       [ -e "$prefix/$multiarch/$flavour/libopenblas.so.0" ]; then
        blas_inc=$prefix/usr/include/x86_64-linux-gnu/$flavour
        blas_lib=$prefix/$multiarch/$flavour
    fi
done
[ -n "$blas_inc" ] || { say "no OpenBLAS headers and library under $prefix (use --debs)"; exit 2; }

# The one configured header the CPU reference reads.
printf '#define HAVE_OPENMP 1\n#define HAVE_MPI 0\n#define HAVE_CUDA 1\n#define HAVE_HIP 0\n' \
    > "$out/moectl_build.h"

say "compiling the CUDA kernels for sm_$arch with $nvcc"
for src in kernels/cuda/*.cu; do
    "$nvcc" -std=c++17 -O2 -gencode "arch=compute_$arch,code=sm_$arch" \
        -Xcompiler -fPIC -I. -c "$src" -o "$out/obj/$(basename "$src").o"
done
say "compiling the CPU reference and the test"
for src in kernels/cpu/*.c tests/kernels/test_gpu_ops.c; do
    cc -std=c11 -O2 -fopenmp -D_DEFAULT_SOURCE -D_POSIX_C_SOURCE=200809L \
        -I. -I"$out" -I"$blas_inc" -c "$src" \
        -o "$out/obj/$(basename "$src").o"
done
cc -o "$out/test_gpu_ops" "$out"/obj/*.o -fopenmp \
    -L"$blas_lib" -l:libopenblas.so.0 \
    -L"$cuda_lib" -lcublas -lcudart -lstdc++ -lm \
    -Wl,-rpath,"$(readlink -f "$blas_lib")":"$(readlink -f "$prefix/$multiarch")":"$cuda_lib"
say "running $out/test_gpu_ops"
# libgfortran is OpenBLAS's own need: the run path of the test does not
# reach it, the loader's path does.
export LD_LIBRARY_PATH="$(readlink -f "$prefix/$multiarch")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
set +e
"$out/test_gpu_ops"
status=$?
say "exit status $status"
exit $status
