#!/usr/bin/env bash
# One-time (and idempotent) setup on Debian 12: installs the Debian packages
# moectl needs that are missing, extracts the default training corpus (the
# King James Bible from bible-kjv) to data/kjv.txt, configures and builds.
#
#   scripts/setup.sh                 packages, corpus, release build in build/
#   scripts/setup.sh --sanitize      also an ASan+UBSan build in build-asan/
#   scripts/setup.sh --bench         also python3-torch, the peer of `moectl bench`
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

sanitize=0
bench=0
for arg in "$@"; do
    case "$arg" in
        --sanitize) sanitize=1 ;;
        --bench) bench=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

say() { printf 'setup: %s\n' "$*" >&2; }

packages=(
    build-essential meson ninja-build pkg-config python3
    libyaml-dev libjansson-dev libopenblas-dev libopenblas-openmp-dev
    libdnnl-dev libmicrohttpd-dev curl
    libncurses-dev
    openmpi-bin libopenmpi-dev bible-kjv tmux man-db groff-base
    hipcc libamdhip64-dev
)
if ((bench)); then
    packages+=(python3-torch)
fi

"$root/scripts/install-packages.sh" "${packages[@]}"

# The corpus: every verse of the KJV with its reference prefix ("Ge1:1 ",
# "1Co13:4 ") stripped; about 4.3 MB of plain English.
corpus=data/kjv.txt
if [ ! -s "$corpus" ]; then
    say "extracting the KJV corpus to $corpus"
    mkdir -p data
    bible -f gen1:1-rev22:21 | sed -E 's/^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ //' > "$corpus.tmp"
    size=$(stat -c %s "$corpus.tmp")
    if [ "$size" -lt 4000000 ]; then
        say "the extracted corpus is only $size bytes; bible-kjv looks broken"
        rm -f "$corpus.tmp"
        exit 1
    fi
    mv "$corpus.tmp" "$corpus"
fi

build() {
    local dir=$1; shift
    if [ ! -f "$dir/build.ninja" ]; then
        say "configuring $dir"
        local conf_log
        conf_log=$(mktemp)
        if ! meson setup "$dir" "$@" >"$conf_log" 2>&1; then
            say "meson setup $dir failed:"
            tail -n 40 "$conf_log" >&2
            rm -f "$conf_log"
            exit 1
        fi
        rm -f "$conf_log"
    fi
    say "building $dir"
    # Quiet when it works; the compiler's own words when it does not.
    local log="$dir/setup-build.log"
    if ! ninja -C "$dir" >"$log" 2>&1; then
        say "the build of $dir failed; the end of $log:"
        tail -n 60 "$log" >&2
        exit 1
    fi
}

build build
if ((sanitize)); then
    build build-asan -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
fi
say "ready: build/tui/moectl"
