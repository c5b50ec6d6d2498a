#!/usr/bin/env bash
# Sets up (packages, corpus, build) and runs the whole test suite, then
# prints one line "N passed, N failed, N skipped" counted from meson's test
# log. With --sanitize, runs the suite on an ASan+UBSan build instead.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

dir=build
setup_args=()
if [ "${1:-}" = "--sanitize" ]; then
    dir=build-asan
    setup_args=(--sanitize)
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fi

scripts/setup.sh "${setup_args[@]}"

rc=0
meson test -C "$dir" --print-errorlogs --num-processes 2 </dev/null || rc=$?

python3 - "$dir/meson-logs/testlog.json" <<'PY'
import json, sys
passed = failed = skipped = 0
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        result = json.loads(line).get("result", "")
        if result in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif result == "SKIP":
            skipped += 1
        else:
            failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed or passed == 0 else 0)
PY
py=$?
exit $(( rc != 0 ? rc : py ))
