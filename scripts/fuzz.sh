#!/usr/bin/env bash
# Fuzzes the engine's readers of outside input with the libFuzzer harnesses
# of tests/fuzz (see tests/fuzz/README.md), one process at a time, each on
# a scratch copy of its seed corpus.
#
#   scripts/fuzz.sh NAME [MINUTES]      one harness, 10 minutes by default
#   scripts/fuzz.sh all MINUTES         every harness in turn, MINUTES each
#   scripts/fuzz.sh --keep-going ...    go on after a finding instead of
#                                       stopping at the first (libFuzzer's
#                                       -fork=1 -ignore_crashes=1: one worker
#                                       process at a time)
#
# NAME: config, command, script, record or checkpoint. Installs clang when
# it is missing (Debian 12), builds the fuzzers in build-fuzz/ (clang,
# libFuzzer, ASan and UBSan), and keeps each harness's log and findings
# (crash-*, leak-*, timeout-*, oom-*) in build-fuzz/findings/NAME/. Prints
# the executions and findings of every run; exits 1 when a run found
# something.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

harnesses=(config command script record checkpoint)
# Inputs longer than their readers take, or than the largest seed, only
# slow the fuzzer down.
declare -A max_len=([config]=8192 [command]=1024 [script]=4096
                    [record]=8192 [checkpoint]=65536)
build=build-fuzz

say() { printf 'fuzz: %s\n' "$*" >&2; }
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "$1"; }

keep_going=0
if [ "${1:-}" = "--keep-going" ]; then
    keep_going=1
    shift
fi
case "${1:-}" in
    -h|--help) usage 0 ;;
    "") usage 2 ;;
esac
name=$1
minutes=${2:-10}
if [[ ! "$minutes" =~ ^[1-9][0-9]*$ ]]; then
    say "MINUTES must be a positive whole number, not '$minutes'"
    exit 2
fi
if [ "$name" = all ]; then
    if [ $# -lt 2 ]; then
        say "all needs MINUTES (each harness runs that long)"
        exit 2
    fi
    selected=("${harnesses[@]}")
elif [ -n "${max_len[$name]:-}" ]; then
    selected=("$name")
else
    say "unknown harness '$name' (harnesses: ${harnesses[*]}, or all)"
    exit 2
fi

# clang (libFuzzer comes with it on Debian 12).
command -v clang >/dev/null || "$root/scripts/install-packages.sh" clang

if [ ! -f "$build/build.ninja" ]; then
    say "configuring $build (clang)"
    log=$(mktemp)
    if ! CC=clang meson setup "$build" >"$log" 2>&1; then
        say "meson setup $build failed:"
        tail -n 40 "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
fi
targets=()
for h in "${selected[@]}"; do
    targets+=("tests/fuzz/fuzz-$h")
done
say "building ${targets[*]}"
mkdir -p "$build/findings"
if ! ninja -C "$build" "${targets[@]}" >"$build/findings/build.log" 2>&1; then
    say "the build failed; the end of $build/findings/build.log:"
    tail -n 60 "$build/findings/build.log" >&2
    exit 1
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

# What libFuzzer wrote to a findings folder.
count_findings() {
    find "$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o \
        -name 'timeout-*' -o -name 'oom-*' \) | wc -l
}

# Runs harness $1 for $minutes; prints its executions and findings.
fuzz_one() {
    local h=$1
    local findings="$build/findings/$h" scratch="$build/fuzz-corpus/$h"
    mkdir -p "$findings"
    rm -rf "$scratch"
    mkdir -p "$scratch"
    cp tests/fuzz/corpus/"$h"/* "$scratch"/
    local before
    before=$(count_findings "$findings")
    local args=(-max_total_time=$((minutes * 60)) -max_len="${max_len[$h]}"
                -timeout=10 -print_final_stats=1
                -artifact_prefix="$findings/")
    if ((keep_going)); then
        args+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    fi
    say "$h: $minutes minute(s) on a copy of tests/fuzz/corpus/$h (log: $findings/fuzz.log)"
    local status=0 start=$SECONDS
    "$build/tests/fuzz/fuzz-$h" "${args[@]}" "$scratch" >"$findings/fuzz.log" 2>&1 ||
        status=$?
    local seconds=$((SECONDS - start))
    # The count libFuzzer prints at exit; in fork mode, its last progress line.
    local executions
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$findings/fuzz.log" | tail -n 1)
    if [ -z "$executions" ]; then
        executions=$(sed -n 's/^#\([0-9][0-9]*\):* .*/\1/p' "$findings/fuzz.log" | tail -n 1)
    fi
    local after
    after=$(count_findings "$findings")
    local found=$((after - before))
    # The time it ran: a finding stops it before $minutes.
    printf '%s\t%s s of %s min\t%s executions\t%s findings\n' "$h" "$seconds" \
           "$minutes" "${executions:-?}" "$found"
    if ((found)); then
        say "$h: findings in $findings (newest first):"
        ls -t "$findings" | grep -E '^(crash|leak|timeout|oom)-' | head -n "$found" >&2
        return 1
    fi
    if ((status)); then
        say "$h: the fuzzer exited $status with no finding; see $findings/fuzz.log"
        return 1
    fi
    return 0
}

failed=0
for h in "${selected[@]}"; do
    fuzz_one "$h" || failed=1
done
exit "$failed"
