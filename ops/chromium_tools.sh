#!/usr/bin/env bash
# make test-ops: headless Chromium (and a font for its text) for the HTML cost report's test
# (tests/ops/test_report_chromium.py), from Debian's `chromium` and `fonts-dejavu-core`
# packages when missing (apt-get, non-interactive). Fails, saying why, when they cannot be
# installed.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
complete() { have chromium && fc-list 2>/dev/null | grep -qi dejavu; }

complete && exit 0
fail() {
    echo "make test-ops: $1; install Chromium (Debian/Ubuntu: apt-get install chromium" \
         "fonts-dejavu-core) and run it again" >&2
    exit 1
}
have apt-get || fail "chromium is missing and there is no apt-get"
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif have sudo && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    fail "chromium is missing and apt-get needs root (no sudo)"
fi
echo "make test-ops: installing chromium fonts-dejavu-core with apt-get"
export DEBIAN_FRONTEND=noninteractive
install() {
    "${as_root[@]}" apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
}
# a fresh machine may have no package lists yet: update once, then try again
install || { "${as_root[@]}" apt-get update -q && install; } \
    || fail "apt-get install chromium fonts-dejavu-core failed"
complete || fail "installed, yet chromium is not on PATH or no DejaVu font is found"
