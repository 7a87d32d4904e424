#!/usr/bin/env bash
# Fetch (once per machine) Debian bookworm's `docker-registry` (CNCF distribution 2.8)
# into a cache folder, as hack/prometheus.sh fetches Prometheus: nothing installed
# system-wide, no service started. `kaito dev up` and the test fixtures run it on
# 127.0.0.1 (src/kaito_dev/registry.py).
#
#   hack/registry.sh          fetch-or-reuse; the last line of stdout is the binary's path
#   hack/registry.sh bindir   print the binary folder (no fetch)
#
# Progress goes to stderr.
set -euo pipefail
# shellcheck source=lib/private-apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/private-apt.sh"
# shellcheck source=lib/debian-binaries.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/debian-binaries.sh"

CACHE_ROOT="${KAITO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kaito}"
BIN_DIR="$CACHE_ROOT/docker-registry/bin"
APT_DIR="$CACHE_ROOT/apt"
START=$(date +%s)

step() { printf '[registry %4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

fetch() {
  mkdir -p "${BIN_DIR%/*}"
  fetch_debian_binaries docker-registry "$BIN_DIR" docker-registry
  echo "$BIN_DIR/docker-registry"
}

case "${1:-fetch}" in
  fetch) fetch ;;
  bindir) echo "$BIN_DIR" ;;
  *) echo "usage: $0 [fetch|bindir]" >&2; exit 2 ;;
esac
