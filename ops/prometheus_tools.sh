#!/usr/bin/env bash
# make test-ops: Prometheus, promtool, Alertmanager and amtool, from Debian's `prometheus` and
# `prometheus-alertmanager` packages when any is missing (apt-get, non-interactive). Fails,
# saying why, when they cannot be installed.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
complete() {
    have prometheus && have promtool && have amtool \
        && { have alertmanager || have prometheus-alertmanager; }
}

complete && exit 0
fail() {
    echo "make test-ops: $1; install Prometheus and Alertmanager (Debian/Ubuntu:" \
         "apt-get install prometheus prometheus-alertmanager) and run it again" >&2
    exit 1
}
have apt-get || fail "prometheus, promtool or alertmanager is missing and there is no apt-get"
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif have sudo && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    fail "prometheus, promtool or alertmanager is missing and apt-get needs root (no sudo)"
fi
echo "make test-ops: installing prometheus prometheus-alertmanager with apt-get"
export DEBIAN_FRONTEND=noninteractive
install() {
    "${as_root[@]}" apt-get install -y -q --no-install-recommends \
        prometheus prometheus-alertmanager
}
# a fresh machine may have no package lists yet: update once, then try again
install || { "${as_root[@]}" apt-get update -q && install; } \
    || fail "apt-get install prometheus prometheus-alertmanager failed"
complete || fail "installed, yet prometheus, promtool, alertmanager or amtool is not on PATH"
# The packages' own services (on :9090 and :9093, where there is an init system) are not
# used: the tests start their own servers on free ports.
