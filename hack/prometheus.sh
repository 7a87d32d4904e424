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
# shellcheck source=lib/debian-binaries.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/debian-binaries.sh"

CACHE_ROOT="${KAITO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kaito}"
BIN_DIR="$CACHE_ROOT/prometheus/bin"
APT_DIR="$CACHE_ROOT/apt"
START=$(date +%s)

step() { printf '[prometheus %4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

fetch() {
  mkdir -p "${BIN_DIR%/*}"
  fetch_debian_binaries prometheus "$BIN_DIR" prometheus promtool
  echo "$BIN_DIR/prometheus"
}

case "${1:-fetch}" in
  fetch) fetch ;;
  bindir) echo "$BIN_DIR" ;;
  *) echo "usage: $0 [fetch|bindir]" >&2; exit 2 ;;
esac
