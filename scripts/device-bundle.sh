#!/usr/bin/env bash
# The whole engine (moectl with MPI, libyaml, jansson, ncurses, OpenBLAS and
# the CUDA module) on a GPU machine that has the CUDA toolkit, a C compiler,
# meson and ninja, but no apt and no network: the Debian packages the engine
# needs are fetched here and unpacked there with dpkg -x into a folder of
# the working tree, and moectl is built and run against that folder.
#
#   scripts/device-bundle.sh --fetch DIR      here: download the .debs to DIR
#   scripts/device-bundle.sh --build DIR [--out BUILD] [--arch 90]
#                                             there: unpack DIR/*.deb into
#                                             DIR/root, build into BUILD
#                                             (default build-device), and
#                                             write BUILD/env.sh
#   . BUILD/env.sh                            then: PATH, libraries and
#                                             OpenMPI's prefix for moectl
#
# BUILD/env.sh puts the bundle's mpirun first on PATH and its libraries
# first on the loader's path, and points OpenMPI at its unpacked prefix
# (OPAL_PREFIX), so a system's own copies, if any, are not mixed in.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

mode="" dir="" out=build-device arch=90
while (($#)); do
    case "$1" in
        --fetch) mode=fetch dir=$2; shift 2 ;;
        --build) mode=build dir=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --arch) arch=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "device-bundle.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$mode" ] || { sed -n '2,19p' "$0" >&2; exit 2; }
say() { printf 'device-bundle: %s\n' "$*" >&2; }

# Headers and libraries of the engine's dependencies, and OpenMPI with the
# libraries it loads. Not the C library, the C++ runtime or the compilers,
# which a machine that builds CUDA code has (newer than Debian 12's).
packages=(
    libyaml-0-2 libyaml-dev libjansson4 libjansson-dev
    libncursesw6 libncurses6 libtinfo6 libncurses-dev
    libopenblas0-openmp libopenblas-openmp-dev libgfortran5
    openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev
    libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7 libpmix2
    libfabric1 libucx0 libibverbs1 librdmacm1 libpsm2-2 libpsm-infinipath1
    libnuma1 libnl-3-200 libnl-route-3-200 libmunge2 libltdl7
)

if [ "$mode" = fetch ]; then
    mkdir -p "$dir"
    (cd "$dir" && apt-get download "${packages[@]}" >/dev/null)
    say "fetched ${#packages[@]} packages into $dir ($(du -sh "$dir" | cut -f1))"
    exit 0
fi

dir=$(readlink -f "$dir")
sysroot=$dir/root
multiarch=x86_64-linux-gnu
lib=$sysroot/usr/lib/$multiarch
rm -rf "$sysroot"
mkdir -p "$sysroot"
count=0
for f in "$dir"/*.deb; do
    dpkg -x "$f" "$sysroot"
    count=$((count + 1))
done
((count > 0)) || { say "no .deb files in $dir (fetch them with --fetch)"; exit 2; }

# Absolute symlinks (libtinfo.so -> /lib/...) would lead out of the
# bundle: point them at the bundle's own file.
while IFS= read -r link; do
    target=$(readlink "$link")
    [ -e "$sysroot$target" ] && ln -sfn "$sysroot$target" "$link"
done < <(find "$sysroot" -type l -lname '/*')
# Debian names mpirun through update-alternatives, which dpkg -x does not
# run: the bundle gets the link itself.
ln -sfn orterun "$sysroot/usr/bin/mpirun"
ln -sfn orterun "$sysroot/usr/bin/mpiexec"
# The packages' pkg-config files name /usr: point them at the bundle
# (links to them follow).
pc_dirs=()
while IFS= read -r pc; do
    sed -i "s|^prefix=/usr\$|prefix=$sysroot/usr|; s|=/usr/|=$sysroot/usr/|g; s| -I/usr/| -I$sysroot/usr/|g; s| -L/usr/| -L$sysroot/usr/|g" "$pc"
    d=$(dirname "$pc")
    case " ${pc_dirs[*]-} " in *" $d "*) ;; *) pc_dirs+=("$d") ;; esac
done < <(find "$sysroot" -type f -name '*.pc')
while IFS= read -r pc; do
    d=$(dirname "$pc")
    case " ${pc_dirs[*]-} " in *" $d "*) ;; *) pc_dirs+=("$d") ;; esac
done < <(find "$sysroot" -type l -name '*.pc')
pkg_path=$(IFS=:; echo "${pc_dirs[*]}")

blas_dir=$lib/openblas-openmp
mpi_lib=$lib/openmpi/lib
pmix=$lib/pmix2
runtime_path=$lib:$sysroot/lib/$multiarch:$blas_dir:$mpi_lib:$pmix/lib
# OpenMPI and PMIx find their plugins, help texts and settings under the
# prefixes they were built for unless told otherwise.
cat > "$dir/env.sh" <<EOF
# Made by scripts/device-bundle.sh: the unpacked packages of $dir first.
export PATH="$sysroot/usr/bin:\$PATH"
export LD_LIBRARY_PATH="$runtime_path\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export OPAL_PREFIX="$sysroot/usr"
export OPAL_LIBDIR="$mpi_lib"
export OPAL_PKGLIBDIR="$mpi_lib/openmpi3"
export OPAL_DATADIR="$sysroot/usr/share"
export OPAL_PKGDATADIR="$sysroot/usr/share/openmpi"
export OPAL_SYSCONFDIR="$sysroot/etc/openmpi"
export PMIX_INSTALL_PREFIX="$pmix"
EOF
# shellcheck disable=SC1091
. "$dir/env.sh"

say "unpacked $count packages into $sysroot; building in $out for sm_$arch"
export PKG_CONFIG_LIBDIR=$pkg_path
rm -rf "$out"
# The OpenMP OpenBLAS comes through its pkg-config file (-Dblas=openblas),
# and its run path is given to the binaries by env.sh.
meson setup "$out" -Dblas=openblas -Dmpi=enabled -Dcuda=enabled -Dhip=disabled \
    -Dgpu_cuda_arch="$arch" \
    -Dc_link_args="-L$sysroot/lib/$multiarch -Wl,-rpath,$runtime_path" >/dev/null
ninja -C "$out" >/dev/null
cp "$dir/env.sh" "$out/env.sh"
say "built $out/tui/moectl; before running it: . $out/env.sh"
say "mpirun: $(command -v mpirun) ($(mpirun --version 2>/dev/null | head -1))"
