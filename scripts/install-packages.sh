#!/usr/bin/env bash
# Installs those of the named Debian packages that are missing (apt-get,
# as root or through sudo); quiet when all are there. Used by setup.sh and
# fuzz.sh.
#
#   scripts/install-packages.sh PACKAGE...
set -euo pipefail

say() { printf 'install: %s\n' "$*" >&2; }

missing=()
for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
((${#missing[@]})) || exit 0
say "installing ${missing[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "need root or sudo to install packages"; exit 1; }
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
