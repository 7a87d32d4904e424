#!/usr/bin/env bash
# Build (once per machine) the Kubernetes v1.20.2 control plane and the node binaries
# (kubelet, kube-proxy) from Debian bookworm's `kubernetes` source package, and fetch
# etcd from Debian. Binaries are cached outside
# the repository, keyed by the source version, so only the first run pays for the build.
#
#   hack/local-cluster.sh build     build-or-reuse; prints the binary folder
#   hack/local-cluster.sh bindir    print the binary folder (no build)
#
# Starting and stopping a control plane is done by `kaito dev cluster up|down`
# (src/kaito/devcluster), which calls this script for the binaries.
set -euo pipefail
# shellcheck source=lib/private-apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/private-apt.sh"

K8S_SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
CACHE_ROOT="${KAITO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kaito}"
BIN_DIR="$CACHE_ROOT/k8s-1.20.2-deb12u1/bin"
WORK="$CACHE_ROOT/build"
APT_DIR="$CACHE_ROOT/apt"
START=$(date +%s)

step() { printf '[local-cluster %4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

# The Go commands built from the source tree; etcd comes from Debian's packages.
K8S_COMMANDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"

missing_commands() {
  local b out=()
  for b in $K8S_COMMANDS; do [ -x "$BIN_DIR/$b" ] || out+=("$b"); done
  echo "${out[*]:-}"
}

have_binaries() {
  [ -x "$BIN_DIR/etcd" ] && [ -x "$BIN_DIR/etcdctl" ] && [ -z "$(missing_commands)" ]
}

private_apt() {
  # A private apt configuration with deb-src entries; /etc/apt is never edited.
  private_apt_config
  if [ ! -f "$APT_DIR/updated" ]; then
    step "apt-get update (private source lists with deb-src)"
    apt-get -qq -o APT::Sandbox::User=root update >&2
    touch "$APT_DIR/updated"
  fi
}

ensure_build_tools() {
  local missing=()
  command -v go >/dev/null || [ -x /usr/lib/go/bin/go ] || missing+=(golang-go)
  command -v rsync >/dev/null || missing+=(rsync)
  command -v jq >/dev/null || missing+=(jq)
  command -v make >/dev/null || missing+=(make)
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing build tools from Debian: ${missing[*]}"
    APT_CONFIG="$APT_DIR/apt.conf" DEBIAN_FRONTEND=noninteractive \
      apt-get -qq install -y --no-install-recommends "${missing[@]}" >&2
  fi
}

vendor_fix() {
  # reflect2 1.0.1 crashes at run time with Go >= 1.18 ("fatal error: fault" in
  # UnsafeIterate on the first custom-object write). Swap in Debian's 1.0.2 and the
  # json-iterator 1.1.12 that goes with it.
  local src="$1" pkgs="$WORK/debpkgs"
  mkdir -p "$pkgs" && rm -rf "$pkgs"/*
  step "vendor fix: reflect2 1.0.2 + json-iterator 1.1.12 from Debian"
  (cd "$pkgs" && apt-get -qq download golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev >&2)
  for deb in "$pkgs"/*.deb; do dpkg-deb -x "$deb" "$pkgs/root"; done
  local gs="$pkgs/root/usr/share/gocode/src/github.com"
  for pair in "modern-go/reflect2" "json-iterator/go"; do
    local dst="$src/vendor/github.com/$pair"
    find "$dst" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
    find "$gs/$pair" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
      -exec cp {} "$dst/" \;
  done
  sed -i -E 's#(github.com/modern-go/reflect2) v1\.0\.1#\1 v1.0.2#; s#(github.com/json-iterator/go) v1\.1\.[0-9]+#\1 v1.1.12#' \
    "$src/go.mod" "$src/vendor/modules.txt"
  # go.sum must not pin the old checksums for vendored builds.
  sed -i -E '/github.com\/modern-go\/reflect2 v1\.0\.1/d; /github.com\/json-iterator\/go v1\.1\.10/d' "$src/go.sum" || true
}

ensure_kubectl() {
  # Tests and the demo drive the cluster with kubectl too; Debian's matches the server.
  if ! command -v kubectl >/dev/null; then
    private_apt
    step "installing kubectl from Debian (kubernetes-client)"
    APT_CONFIG="$APT_DIR/apt.conf" DEBIAN_FRONTEND=noninteractive \
      apt-get -qq install -y --no-install-recommends kubernetes-client >&2
  fi
}

build() {
  ensure_kubectl
  if have_binaries; then
    step "control-plane binaries cached in $BIN_DIR"
    echo "$BIN_DIR"; return
  fi
  private_apt
  ensure_build_tools
  mkdir -p "$WORK" "$BIN_DIR"
  if ! [ -x "$BIN_DIR/etcd" ]; then
    step "etcd from Debian (downloaded and unpacked, not installed as a service)"
    local e="$WORK/etcd"; rm -rf "$e"; mkdir -p "$e"
    (cd "$e" && apt-get -qq download etcd-server etcd-client >&2)
    for deb in "$e"/*.deb; do dpkg-deb -x "$deb" "$e/root"; done
    cp "$e/root/usr/bin/etcd" "$e/root/usr/bin/etcdctl" "$BIN_DIR/"
  fi
  local src
  src=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  if [ -z "$src" ]; then
    step "downloading Debian source package kubernetes=$K8S_SRC_VERSION"
    (cd "$WORK" && apt-get -qq source --download-only "kubernetes=$K8S_SRC_VERSION" >&2)
    step "unpacking source (dpkg-source -x)"
    (cd "$WORK" && dpkg-source -q -x ./kubernetes_*.dsc >&2)
    src=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
    vendor_fix "$src"
  fi
  local missing what="" b
  missing=$(missing_commands)
  for b in $missing; do what="$what cmd/$b"; done
  step "compiling$what (about 8-10 min on 2 cores for all five, ~5 min for kubelet + kube-proxy)"
  ( while sleep 30; do step "... still compiling"; done ) & TICKER=$!
  trap 'kill "${TICKER:-}" 2>/dev/null || true' EXIT
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=vendor KUBE_VERBOSE=0 \
     make WHAT="${what# }" >&2)
  kill "$TICKER" 2>/dev/null || true
  for b in $missing; do
    cp "$src/_output/local/bin/linux/"*/"$b" "$BIN_DIR/$b" 2>/dev/null \
      || cp "$src/_output/bin/$b" "$BIN_DIR/$b"
  done
  step "binaries cached in $BIN_DIR; removing the build tree"
  rm -rf "$WORK"
  echo "$BIN_DIR"
}

case "${1:-build}" in
  build) build ;;
  bindir) echo "$BIN_DIR" ;;
  *) echo "usage: $0 build|bindir" >&2; exit 2 ;;
esac
