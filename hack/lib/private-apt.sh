# Sourced by hack/*.sh: a private apt configuration under $APT_DIR with deb-src entries,
# so that Debian packages and sources can be fetched without editing /etc/apt.
# Needs APT_DIR set; exports APT_CONFIG.

private_apt_config() {
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/sources.list.d"
  sed 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources \
    > "$APT_DIR/sources.list.d/debian.sources"
  cat > "$APT_DIR/apt.conf" <<CONF
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$APT_DIR/sources.list.d";
Dir::State::Lists "$APT_DIR/lists";
Dir::Cache "$APT_DIR/cache";
CONF
  export APT_CONFIG="$APT_DIR/apt.conf"
}
