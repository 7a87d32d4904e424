# Sourced by hack/*.sh: fetch (once per machine) binaries out of a Debian bookworm
# package into a cache folder: `apt-get download` + `dpkg-deb -x`, nothing installed
# system-wide (no service, no user, no files under /usr or /etc).
#
#   fetch_debian_binaries PACKAGE BIN_DIR BINARY...
#
# Needs APT_DIR and a `step` function; uses private_apt_config (lib/private-apt.sh).
# The binaries' package version is written to BIN_DIR/VERSION.

debian_binaries_cached() {
  local bin_dir=$1; shift
  for b in "$@"; do [ -x "$bin_dir/$b" ] || return 1; done
}

fetch_debian_binaries() {
  local package=$1 bin_dir=$2; shift 2
  if debian_binaries_cached "$bin_dir" "$@"; then
    step "$package $(cat "$bin_dir/VERSION" 2>/dev/null || echo '?') cached in $bin_dir"
    return
  fi
  private_apt_config
  if [ ! -f "$APT_DIR/updated" ]; then
    step "apt-get update (private source lists)"
    apt-get -qq -o APT::Sandbox::User=root update >&2
    touch "$APT_DIR/updated"
  fi
  local work
  work=$(mktemp -d "${bin_dir%/*}/download.XXXXXX")
  step "$package from Debian (downloaded and unpacked, not installed as a service)"
  # Lists older than the mirror name a .deb that is gone: refresh them once and retry.
  if ! (cd "$work" && apt-get -qq -o APT::Sandbox::User=root download "$package" >&2); then
    apt-get -qq -o APT::Sandbox::User=root update >&2
    (cd "$work" && apt-get -qq -o APT::Sandbox::User=root download "$package" >&2)
  fi
  local deb
  deb=$(find "$work" -maxdepth 1 -name "${package}_*.deb" | head -n1)
  dpkg-deb -x "$deb" "$work/root"
  mkdir -p "$bin_dir"
  for b in "$@"; do cp "$work/root/usr/bin/$b" "$bin_dir/"; done
  dpkg-deb -f "$deb" Version > "$bin_dir/VERSION"
  rm -rf "$work"
  step "$package $(cat "$bin_dir/VERSION") cached in $bin_dir"
}
