#!/bin/sh
# Usage: check_man.sh MOECTL PAGE
# PAGE (the built moectl-config.5) is what `MOECTL check --describe=man`
# prints, groff renders it without a warning, man shows its sections, and
# it names the same keys as `MOECTL check --describe`. Exit 77 (skipped)
# without groff.
set -u
if [ $# -ne 2 ]; then
    echo "usage: $0 MOECTL PAGE" >&2
    exit 2
fi
moectl=$1
page=$2
command -v groff >/dev/null 2>&1 || { echo "no groff: skipped"; exit 77; }
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() {
    echo "FAIL: $*"
    failed=1
}

"$moectl" check --describe=man >"$tmp/page" || fail "--describe=man exited $?"
cmp -s "$tmp/page" "$page" || fail "$page differs from --describe=man"

groff -man -Tutf8 -ww -z "$page" 2>"$tmp/warnings"
[ -s "$tmp/warnings" ] && fail "groff warns: $(cat "$tmp/warnings")"

if command -v man >/dev/null 2>&1; then
    MANWIDTH=80 man -l "$page" >"$tmp/shown" 2>"$tmp/man-errors"
    [ -s "$tmp/man-errors" ] && fail "man -l: $(cat "$tmp/man-errors")"
    for heading in NAME SYNOPSIS DESCRIPTION CONFIGURATION; do
        grep -q "^$heading" "$tmp/shown" || fail "man -l shows no $heading"
    done
    awk 'length > 80 { bad = 1 } END { exit bad }' "$tmp/shown" ||
        fail "man -l at MANWIDTH=80 has lines over 80 columns"
fi

# The keys: one word lines holding a '.' in the text form, the .B line
# after each .TP in the page.
"$moectl" check --describe >"$tmp/text" || fail "--describe exited $?"
grep -E '^[^ ]+\.[^ ]+$' "$tmp/text" >"$tmp/text-keys"
awk 'tp && /^\.B / { print substr($0, 4) } { tp = ($0 == ".TP") }' \
    "$page" >"$tmp/page-keys"
[ -s "$tmp/text-keys" ] || fail "--describe lists no keys"
cmp -s "$tmp/text-keys" "$tmp/page-keys" ||
    fail "the page and --describe name different keys: $(diff "$tmp/text-keys" "$tmp/page-keys")"

[ "$failed" -eq 0 ] && echo "ok: $(wc -l <"$tmp/text-keys") keys"
exit "$failed"
