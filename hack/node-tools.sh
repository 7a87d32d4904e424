#!/usr/bin/env bash
# The host tools a real local node needs (src/kaito_dev/realnode), from Debian, once per
# machine: containerd + runc (the container runtime; containerd is NOT started as a
# service, each node runs its own), the CNI plugins (bridge, host-local, portmap,
# loopback), iptables and conntrack (kube-proxy), and the tiny static binary that the
# nodes' pause image and the test images are made of (hack/tiny, Go, CGO_ENABLED=0).
#
#   hack/node-tools.sh tools    install what is missing; prints the tools' versions
#   hack/node-tools.sh tiny     build-or-reuse the tiny binary; last stdout line = its path
#   hack/node-tools.sh all      both (the default)
#
# Progress goes to stderr. The kubelet and kube-proxy come from hack/local-cluster.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${KAITO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kaito}"
TINY_DIR="$CACHE_ROOT/node-images"
START=$(date +%s)
step() { printf '[node-tools %4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

# command -> Debian package. The CNI plugins live in /usr/lib/cni, not on PATH.
declare -A PACKAGES=([containerd]=containerd [runc]=runc [ctr]=containerd
  [iptables]=iptables [conntrack]=conntrack [nsenter]=util-linux [ip]=iproute2)

tools() {
  local missing=() cmd
  for cmd in "${!PACKAGES[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PACKAGES[$cmd]}")
  done
  for plugin in bridge host-local portmap loopback; do
    [ -x "/usr/lib/cni/$plugin" ] || { missing+=(containernetworking-plugins); break; }
  done
  if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" != 0 ]; then
      echo "hack/node-tools.sh: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
      exit 1
    fi
    step "apt-get install ${missing[*]} (Debian packages; containerd is not started as a service)"
    apt-get -qq update >&2
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends "${missing[@]}" >&2
  fi
  step "containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), CNI plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins), $(iptables --version)"
}

go_bin() {
  if command -v go >/dev/null; then command -v go; return; fi
  if [ -x /usr/lib/go/bin/go ]; then echo /usr/lib/go/bin/go; return; fi
  step "apt-get install golang-go (to build the tiny static binary)"
  apt-get -qq update >&2
  DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends golang-go >&2
  command -v go
}

tiny() {
  local src="$HERE/tiny/main.go" sum out
  sum=$(sha256sum "$src" | cut -c1-16)
  out="$TINY_DIR/tiny-$sum"
  if [ -x "$out" ]; then
    step "tiny binary cached: $out"
  else
    local go; go=$(go_bin)
    mkdir -p "$TINY_DIR"
    step "building the tiny static binary (pause, env, http) with $($go version | awk '{print $3}')"
    local tmp; tmp=$(mktemp -d)
    cp "$src" "$tmp/main.go"
    (cd "$tmp" && printf 'module tiny\n\ngo 1.19\n' > go.mod \
      && CGO_ENABLED=0 GOFLAGS= GOCACHE="$TINY_DIR/gocache" "$go" build -trimpath -ldflags='-s -w' -o "$out.tmp" . >&2)
    mv "$out.tmp" "$out"; rm -rf "$tmp"
    step "tiny binary built: $out ($(stat -c %s "$out") bytes)"
  fi
  echo "$out"
}

case "${1:-all}" in
  tools) tools ;;
  tiny) tiny ;;
  all) tools; tiny ;;
  *) echo "usage: $0 [tools|tiny|all]" >&2; exit 2 ;;
esac
