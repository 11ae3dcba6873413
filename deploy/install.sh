#!/bin/sh
# Installs fleetlet from this unpacked release bundle (`npm run dist`) as a
# systemd service. Needs no compiler, no npm and no network: the bundle has
# its own Node. It checks the bundle against MANIFEST.sha256, copies it to
# PREFIX/versions/<version>/ and points PREFIX/current at it (PREFIX/previous
# at the version it replaces), writes CONFIG_DIR/config.json from the example
# only when there is none, and installs and enables the unit. Running it
# again is safe; --uninstall takes it all away again but the config and the
# state (images, volumes), unless --purge.
set -eu
umask 022
BUNDLE=$(cd "$(dirname "$0")" && pwd -P)

usage() {
  cat <<'EOF'
usage: ./install.sh [--prefix DIR] [--config-dir DIR] [--unit-dir DIR] [--dry-run]
       ./install.sh --uninstall [--purge] [--prefix DIR] [--config-dir DIR] [--unit-dir DIR] [--state-dir DIR] [--dry-run]
  --prefix DIR      where versions/, current and previous go (default /opt/fleetlet)
  --config-dir DIR  where config.json goes (default /etc/fleetlet)
  --unit-dir DIR    where fleetlet.service goes (default /etc/systemd/system);
                    systemctl is only run for the default
  --dry-run         print every step and change nothing
  --uninstall       stop and remove the unit and PREFIX's versions; keeps the
                    config dir and the state dir (the containers keep running)
  --purge           with --uninstall: also remove every container, the state
                    dir and the config dir
  --state-dir DIR   the agent's state (default /var/lib/fleetlet)
EOF
}
die() {
  printf 'install: %s\n' "$*" >&2
  exit 1
}
say() { printf 'install: %s\n' "$*"; }

PREFIX=/opt/fleetlet
CONFIG_DIR=/etc/fleetlet
UNIT_DIR=/etc/systemd/system
STATE_DIR=/var/lib/fleetlet
DRY_RUN=0
UNINSTALL=0
PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix | --config-dir | --unit-dir | --state-dir)
      [ $# -ge 2 ] || die "$1 needs a directory"
      case "$1" in
        --prefix) PREFIX=$2 ;;
        --config-dir) CONFIG_DIR=$2 ;;
        --unit-dir) UNIT_DIR=$2 ;;
        *) STATE_DIR=$2 ;;
      esac
      shift 2
      ;;
    --dry-run) DRY_RUN=1 && shift ;;
    --uninstall) UNINSTALL=1 && shift ;;
    --purge) PURGE=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && die "unknown argument: $1" ;;
  esac
done
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge goes with --uninstall"

# The paths end up in the unit's ExecStart and in sed expressions: keep them plain.
for dir in "$PREFIX" "$CONFIG_DIR" "$UNIT_DIR" "$STATE_DIR"; do
  case "$dir" in
    /*) ;;
    *) die "'$dir' is not an absolute path" ;;
  esac
  case "$dir" in
    *[!A-Za-z0-9/._-]*) die "'$dir' has characters other than letters, digits, '/', '.', '_' and '-'" ;;
  esac
  [ "$dir" != / ] || die "'/' cannot be a fleetlet directory"
done
PREFIX=${PREFIX%/}
CONFIG="$CONFIG_DIR/config.json"
UNIT="$UNIT_DIR/fleetlet.service"
SYSTEMD=0
[ "$UNIT_DIR" != /etc/systemd/system ] || [ ! -d /run/systemd/system ] || SYSTEMD=1

# Prints a step, and runs it unless this is a dry run.
run() {
  if [ "$DRY_RUN" = 1 ]; then say "would run: $*"; else say "$*" && "$@"; fi
}

release_field() { sed -n "s/^$1=//p" "$BUNDLE/RELEASE"; }

# The bundle is whole and unchanged: every file it has is in the manifest
# with its digest, and nothing else (no file the manifest lacks, no link).
check_bundle() {
  [ -f "$BUNDLE/MANIFEST.sha256" ] && [ -f "$BUNDLE/RELEASE" ] ||
    die "$BUNDLE is not a release bundle (no MANIFEST.sha256 or RELEASE): build one with npm run dist"
  failed=$(cd "$BUNDLE" && sha256sum -c --strict MANIFEST.sha256 2>&1 | grep -v ': OK$' || true)
  [ -z "$failed" ] || die "the bundle does not match its MANIFEST.sha256:
$failed"
  extra=$(cd "$BUNDLE" && find . -type f ! -path ./MANIFEST.sha256 | sed 's#^\./##' |
    awk 'NR == FNR { listed[substr($0, 67)] = 1; next } !($0 in listed)' MANIFEST.sha256 -)
  [ -z "$extra" ] || die "the bundle has files its MANIFEST.sha256 does not list: $extra"
  others=$(cd "$BUNDLE" && find . ! -type f ! -type d)
  [ -z "$others" ] || die "the bundle has entries that are neither files nor directories: $others"
  VERSION=$(release_field version)
  ARCH=$(release_field arch)
  case "$VERSION" in
    "" | *[!A-Za-z0-9.+_-]* | .*) die "RELEASE: '$VERSION' is not a version" ;;
  esac
  case "$ARCH:$(uname -m)" in
    x64:x86_64 | arm64:aarch64) ;;
    *) die "this bundle is for linux-$ARCH and this machine is $(uname -m)" ;;
  esac
  say "bundle fleetlet $VERSION for linux-$ARCH: every file matches MANIFEST.sha256"
}

check_root() {
  [ "$DRY_RUN" = 1 ] || [ "$(id -u)" = 0 ] || die "must run as root (it writes $PREFIX, $CONFIG_DIR and $UNIT_DIR)"
}

# Copies the bundle to versions/VERSION (beside, then renamed into place, so
# a running agent or shim never sees a half-written file), unless that
# version is there already, whole.
install_version() {
  dest=$PREFIX/versions/$VERSION
  if [ -f "$dest/MANIFEST.sha256" ] && cmp -s "$dest/MANIFEST.sha256" "$BUNDLE/MANIFEST.sha256" &&
    (cd "$dest" && sha256sum -c --strict --quiet MANIFEST.sha256 >/dev/null 2>&1); then
    say "$dest is already installed and whole"
    return
  fi
  run mkdir -p "$PREFIX/versions"
  run rm -rf "$dest.new"
  run cp -R "$BUNDLE" "$dest.new"
  if [ "$DRY_RUN" = 0 ]; then
    (cd "$dest.new" && sha256sum -c --strict --quiet MANIFEST.sha256) || die "the copy in $dest.new does not match MANIFEST.sha256"
  fi
  if [ -e "$dest" ]; then
    run rm -rf "$dest.old"
    run mv "$dest" "$dest.old"
  fi
  run mv "$dest.new" "$dest"
  run rm -rf "$dest.old"
}

# Points a link (current, previous) at versions/V with a rename, so it is never missing.
point() {
  run ln -sfn "$2" "$PREFIX/$1.new"
  run mv -T "$PREFIX/$1.new" "$PREFIX/$1"
}

# current becomes versions/VERSION; previous, the version current named before (if another).
switch_current() {
  old=$(readlink "$PREFIX/current" 2>/dev/null || true)
  KEEP_PREVIOUS=$(readlink "$PREFIX/previous" 2>/dev/null || true)
  if [ "$old" = "versions/$VERSION" ]; then
    say "$PREFIX/current is versions/$VERSION already"
    return
  fi
  if [ -n "$old" ]; then
    KEEP_PREVIOUS=$old
    point previous "$old"
  fi
  point current "versions/$VERSION"
  # An agent self-update left pending or failed (PREFIX/agent-update, read by
  # the launcher) is about versions this install has just replaced: drop it.
  run rm -f "$PREFIX/agent-update" "$PREFIX/agent-update.new"
}

# Keeps current and previous; removes other versions and what an interrupted run left.
prune_versions() {
  for v in "$PREFIX"/versions/*; do
    [ -e "$v" ] || continue
    case "versions/${v##*/}" in
      "versions/$VERSION" | "$KEEP_PREVIOUS") ;;
      *) run rm -rf "$v" ;;
    esac
  done
}

# An install from a checkout (deploy/install.sh before release bundles) left these in PREFIX.
remove_checkout_install() {
  [ -f "$PREFIX/bin/fleetlet.js" ] || return 0
  say "removing the install from a checkout that $PREFIX held"
  for old in bin dist native node_modules package.json package-lock.json README.md; do
    run rm -rf "$PREFIX/$old"
  done
}

write_config() {
  if [ -e "$CONFIG" ]; then
    say "keeping the existing $CONFIG"
    return
  fi
  placeholder=replaced-by-install.sh-with-a-random-token
  grep -q "\"$placeholder\"" "$BUNDLE/config.example.json" || die "config.example.json has no api.token placeholder"
  if [ "$DRY_RUN" = 1 ]; then
    say "would write $CONFIG (mode 0600) from config.example.json with a new random api.token"
    return
  fi
  [ -d "$CONFIG_DIR" ] || run mkdir -m 0750 -p "$CONFIG_DIR"
  say "writing $CONFIG (mode 0600) from config.example.json with a new random api.token"
  # The example's token is a placeholder everyone can read: every device gets its own (24 random bytes, base64url).
  token=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
  (umask 077 && sed "s/\"$placeholder\"/\"$token\"/" "$BUNDLE/config.example.json" >"$CONFIG.new")
  mv "$CONFIG.new" "$CONFIG"
  FRESH_CONFIG=1
}

render_unit() {
  sed -e "s#/opt/fleetlet#$PREFIX#g" -e "s#/etc/fleetlet/config.json#$CONFIG#g" "$BUNDLE/fleetlet.service"
}

install_unit() {
  if render_unit | cmp -s - "$UNIT"; then
    say "$UNIT is up to date"
    return
  fi
  if [ "$DRY_RUN" = 1 ]; then
    say "would install $UNIT (mode 0644) from fleetlet.service, for $PREFIX/current and $CONFIG"
    return
  fi
  mkdir -p "$UNIT_DIR"
  say "installing $UNIT"
  render_unit >"$UNIT.new"
  chmod 0644 "$UNIT.new"
  mv "$UNIT.new" "$UNIT"
}

start_service() {
  if [ "$UNIT_DIR" != /etc/systemd/system ]; then
    say "the unit is in $UNIT_DIR, not /etc/systemd/system: not enabling it"
  elif [ "$SYSTEMD" = 1 ]; then
    # enable --now leaves an agent that is already running on the old version: restart it (containers keep running).
    was_active=0
    systemctl is-active --quiet fleetlet && was_active=1
    run systemctl daemon-reload
    run systemctl enable --now fleetlet
    [ "$was_active" = 0 ] || run systemctl restart fleetlet
  else
    say "systemd is not PID 1 here, so nothing is started; on the device run: systemctl daemon-reload && systemctl enable --now fleetlet"
  fi
}

install() {
  check_bundle
  check_root
  install_version
  switch_current
  prune_versions
  write_config
  install_unit
  remove_checkout_install
  start_service
  if [ "$FRESH_CONFIG" = 1 ]; then
    say "edit $CONFIG (deviceId, mqtt, registries, trustedKeys) and then: systemctl restart fleetlet"
  fi
  # Services on container networks need the CNI plugins; everything else runs without them.
  if [ ! -x /usr/lib/cni/bridge ] || [ ! -x /usr/lib/cni/portmap ] || [ ! -x /usr/lib/cni/host-local ]; then
    say "note: services with networks or ports need the CNI plugins in /usr/lib/cni: apt-get install containernetworking-plugins"
  fi
  if ! command -v iptables >/dev/null 2>&1; then
    say "note: services with networks or ports need iptables (either variant): apt-get install iptables"
  fi
  if [ "$DRY_RUN" = 1 ]; then
    say "dry run done: nothing was changed"
  else
    say "done: fleetlet $VERSION in $PREFIX/current, config $CONFIG, unit $UNIT"
  fi
}

# --purge: the containers go first (they outlive the agent), through the
# installed CLI, which unmounts and removes their cgroups; only then the state.
remove_containers() {
  [ -d "$STATE_DIR/containers" ] || return 0
  cli=$BUNDLE/bin/fleetlet
  if [ "$DRY_RUN" = 1 ]; then
    say "would remove every container in $STATE_DIR: $cli --root $STATE_DIR rm -f (each one of ps -a)"
    return
  fi
  table=$("$cli" --root "$STATE_DIR" ps -a) || die "$cli --root $STATE_DIR ps -a failed, so the containers cannot be removed"
  ids=$(printf '%s\n' "$table" | sed 1d | cut -d' ' -f1)
  if [ -z "$ids" ]; then
    say "no containers in $STATE_DIR"
  else
    # shellcheck disable=SC2086 # one word per container id
    run "$cli" --root "$STATE_DIR" rm -f $ids
  fi
}

uninstall() {
  check_root
  if [ "$SYSTEMD" = 1 ] && [ -f "$UNIT" ]; then
    run systemctl disable --now fleetlet
  elif [ -f "$UNIT" ]; then
    say "not stopping an agent: systemctl is only run for the unit in /etc/systemd/system under systemd"
  fi
  [ "$PURGE" = 0 ] || remove_containers
  [ ! -f "$UNIT" ] || run rm -f "$UNIT"
  [ "$SYSTEMD" = 0 ] || run systemctl daemon-reload
  for entry in current previous current.new previous.new agent-update agent-update.new versions; do
    if [ -e "$PREFIX/$entry" ] || [ -L "$PREFIX/$entry" ]; then run rm -rf "$PREFIX/$entry"; fi
  done
  remove_checkout_install
  if [ -d "$PREFIX" ]; then run rmdir --ignore-fail-on-non-empty "$PREFIX"; fi
  if [ "$PURGE" = 1 ]; then
    # Never across a mount: a container's overlay or volume is not state to delete.
    if [ -d "$STATE_DIR" ]; then run rm -rf --one-file-system "$STATE_DIR"; fi
    if [ -d "$CONFIG_DIR" ]; then run rm -rf "$CONFIG_DIR"; fi
  else
    say "keeping $CONFIG_DIR and $STATE_DIR (--purge removes them)"
  fi
  if [ "$DRY_RUN" = 1 ]; then say "dry run done: nothing was changed"; else say "done: fleetlet is uninstalled"; fi
}

FRESH_CONFIG=0
[ "$DRY_RUN" = 0 ] || say "dry run: nothing will be changed"
if [ "$UNINSTALL" = 1 ]; then uninstall; else install; fi
