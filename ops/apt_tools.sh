#!/usr/bin/env bash
# make test-ops: the tools its tests run, from Debian packages when missing (apt-get,
# non-interactive). Fails, saying why, when they cannot be installed.
#
#   ops/apt_tools.sh WHAT CHECK PACKAGE...
#
# WHAT names the tools for people; CHECK is a shell command that succeeds once they are all
# there; the PACKAGEs provide them.
set -euo pipefail

what=$1 check=$2
shift 2
packages=("$@")
have() { command -v "$1" >/dev/null 2>&1; }
complete() { bash -c "$check" >/dev/null 2>&1; }

complete && exit 0
fail() {
    echo "make test-ops: $1; install $what (Debian/Ubuntu: apt-get install" \
         "${packages[*]}) and run it again" >&2
    exit 1
}
have apt-get || fail "$what: missing, and there is no apt-get"
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif have sudo && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    fail "$what: missing, and apt-get needs root (no sudo)"
fi
echo "make test-ops: installing ${packages[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
install() {
    "${as_root[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}"
}
# a fresh machine may have no package lists yet: update once, then try again
install || { "${as_root[@]}" apt-get update -q && install; } \
    || fail "apt-get install ${packages[*]} failed"
complete || fail "installed, yet $what: not all there ($check)"
