#!/usr/bin/env bash
# The tools `make images` builds and pushes with, from Debian (no Docker daemon): buildah
# builds the Dockerfiles, skopeo reads images back from a registry, debootstrap makes the
# local base image (Debian bookworm minbase) from Debian's archive. Installed with apt
# once per machine (root); src/kaito_dev/images.py keeps buildah's storage, its policy
# and its registries configuration under the kaito cache, not in /etc/containers.
#
#   hack/images.sh tools    install what is missing; prints the tools' versions
#
# Progress goes to stderr.
set -euo pipefail
START=$(date +%s)
step() { printf '[images %4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

# command -> Debian package (uidmap: buildah's user namespaces; crun: its OCI runtime).
declare -A PACKAGES=([buildah]=buildah [skopeo]=skopeo [debootstrap]=debootstrap [newuidmap]=uidmap [crun]=crun)

tools() {
  local missing=()
  for cmd in "${!PACKAGES[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PACKAGES[$cmd]}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "hack/images.sh: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
      exit 1
    fi
    step "apt-get install ${missing[*]} (Debian packages)"
    apt-get -qq update >&2
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends "${missing[@]}" >&2
  fi
  step "$(buildah --version), $(skopeo --version), debootstrap $(dpkg-query -W -f='${Version}' debootstrap)"
}

case "${1:-tools}" in
  tools) tools ;;
  *) echo "usage: $0 tools" >&2; exit 2 ;;
esac
