#!/usr/bin/env bash
# Fetch (once per machine) Prometheus and promtool from Debian bookworm's `prometheus`
# package, the way hack/local-cluster.sh fetches etcd: a private apt configuration,
# `apt-get download`, `dpkg-deb -x` into a cache folder. Nothing is installed system-wide
# (no service, no user, no files under /usr or /etc).
#
#   hack/prometheus.sh          fetch-or-reuse; the last line of stdout is the path of
#                               the `prometheus` binary (`promtool` lies beside it)
#   hack/prometheus.sh bindir   print the binary folder (no fetch)
#
# Progress goes to stderr. Used by tests/integration/prometheus.py.
set -euo pipefail
# shellcheck source=lib/private-apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/private-apt.sh"

CACHE_ROOT="${KAITO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kaito}"
BIN_DIR="$CACHE_ROOT/prometheus/bin"
APT_DIR="$CACHE_ROOT/apt"
START=$(date +%s)

step() { printf '[prometheus %4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

have_binaries() {
  [ -x "$BIN_DIR/prometheus" ] && [ -x "$BIN_DIR/promtool" ]
}

private_apt() {
  # The same private apt configuration as hack/local-cluster.sh (shared cache folder);
  # /etc/apt is never edited.
  private_apt_config
  if [ ! -f "$APT_DIR/updated" ]; then
    apt_update
  fi
}

apt_update() {
  step "apt-get update (private source lists)"
  apt-get -qq -o APT::Sandbox::User=root update >&2
  touch "$APT_DIR/updated"
}

fetch() {
  if have_binaries; then
    step "prometheus $(cat "$BIN_DIR/VERSION" 2>/dev/null || echo '?') cached in $BIN_DIR"
    echo "$BIN_DIR/prometheus"; return
  fi
  private_apt
  local work="$CACHE_ROOT/prometheus/download"
  rm -rf "$work"; mkdir -p "$work"
  step "prometheus from Debian (downloaded and unpacked, not installed as a service)"
  # Lists older than the mirror name a .deb that is gone: refresh them once and retry.
  if ! (cd "$work" && apt-get -qq -o APT::Sandbox::User=root download prometheus >&2); then
    apt_update
    (cd "$work" && apt-get -qq -o APT::Sandbox::User=root download prometheus >&2)
  fi
  local deb
  deb=$(find "$work" -maxdepth 1 -name 'prometheus_*.deb' | head -n1)
  dpkg-deb -x "$deb" "$work/root"
  mkdir -p "$BIN_DIR"
  cp "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$BIN_DIR/"
  dpkg-deb -f "$deb" Version > "$BIN_DIR/VERSION"
  rm -rf "$work"
  step "prometheus $(cat "$BIN_DIR/VERSION") cached in $BIN_DIR"
  echo "$BIN_DIR/prometheus"
}

case "${1:-fetch}" in
  fetch) fetch ;;
  bindir) echo "$BIN_DIR" ;;
  *) echo "usage: $0 [fetch|bindir]" >&2; exit 2 ;;
esac
