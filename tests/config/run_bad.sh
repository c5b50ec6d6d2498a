#!/bin/sh
# Usage: run_bad.sh BIN
# For every tests/config/bad/NAME.yaml, runs
#   BIN check tests/config/bad/NAME.yaml [arguments from NAME.args]
# from the source root and expects exit status 2, no output on stdout and
# stderr byte for byte equal to NAME.expected. NAME.args holds one argument
# per line.
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 BIN" >&2
    exit 2
fi
bin=$1
case $bin in
    /*) ;;
    */*) bin=$(pwd)/$bin ;;
esac

here=$(cd "$(dirname "$0")" && pwd) || exit 1
cd "$here/../.." || exit 1
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

cases=0
failed=0
for yaml in tests/config/bad/*.yaml; do
    [ -e "$yaml" ] || continue
    name=${yaml%.yaml}
    cases=$((cases + 1))
    if [ ! -f "$name.expected" ]; then
        echo "FAIL $name: missing $name.expected"
        failed=$((failed + 1))
        continue
    fi
    set -- check "$yaml"
    if [ -f "$name.args" ]; then
        while IFS= read -r arg || [ -n "$arg" ]; do
            set -- "$@" "$arg"
        done < "$name.args"
    fi
    "$bin" "$@" >"$tmp/out" 2>"$tmp/err"
    status=$?
    ok=1
    if [ "$status" -ne 2 ]; then
        echo "FAIL $name: exit status $status, expected 2"
        ok=0
    fi
    if [ -s "$tmp/out" ]; then
        echo "FAIL $name: unexpected output on stdout:"
        cat "$tmp/out"
        ok=0
    fi
    if ! cmp -s "$tmp/err" "$name.expected"; then
        echo "FAIL $name: stderr differs from $name.expected:"
        diff -u "$name.expected" "$tmp/err"
        ok=0
    fi
    if [ "$ok" -eq 1 ]; then
        echo "ok   $name"
    else
        failed=$((failed + 1))
    fi
done

if [ "$cases" -eq 0 ]; then
    echo "FAIL: no cases found in tests/config/bad"
    exit 1
fi
echo "$((cases - failed))/$cases cases passed"
[ "$failed" -eq 0 ]
