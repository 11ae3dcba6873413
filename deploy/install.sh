#!/bin/sh
# Installs the fleetlet agent from this checkout as a systemd service:
# the build under PREFIX (default /opt/fleetlet), /etc/fleetlet/config.json
# from the example (only when absent), and the unit. Safe to run again: an
# upgrade replaces PREFIX as a whole and keeps the config.
set -eu
umask 022
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: deploy/install.sh [--prefix DIR] [--dry-run] [--rebuild] [--config-dir DIR] [--unit-dir DIR]
  --prefix DIR      where the agent goes (default /opt/fleetlet)
  --dry-run         print every step and change nothing
  --rebuild         run npm ci and npm run build even when dist/ and native/build exist
  --config-dir DIR  where config.json goes (default /etc/fleetlet)
  --unit-dir DIR    where fleetlet.service goes (default /etc/systemd/system);
                    systemctl is only run for the default
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
DRY_RUN=0
REBUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix | --config-dir | --unit-dir)
      [ $# -ge 2 ] || die "$1 needs a directory"
      case "$1" in
        --prefix) PREFIX=$2 ;;
        --config-dir) CONFIG_DIR=$2 ;;
        *) UNIT_DIR=$2 ;;
      esac
      shift 2
      ;;
    --dry-run) DRY_RUN=1 && shift ;;
    --rebuild) REBUILD=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && die "unknown argument: $1" ;;
  esac
done

# The paths end up in the unit's ExecStart and in sed expressions: keep them plain.
for dir in "$PREFIX" "$CONFIG_DIR" "$UNIT_DIR"; do
  case "$dir" in
    /*) ;;
    *) die "'$dir' is not an absolute path" ;;
  esac
  case "$dir" in
    *[!A-Za-z0-9/._-]*) die "'$dir' has characters other than letters, digits, '/', '.', '_' and '-'" ;;
  esac
done
PREFIX=${PREFIX%/}
STAGE="$PREFIX.new"
CONFIG="$CONFIG_DIR/config.json"
UNIT="$UNIT_DIR/fleetlet.service"
RELEASE=native/build/Release

# Prints a step, and runs it unless this is a dry run.
run() {
  if [ "$DRY_RUN" = 1 ]; then say "would run: $*"; else say "$*" && "$@"; fi
}

check_prerequisites() {
  [ "$DRY_RUN" = 1 ] || [ "$(id -u)" = 0 ] || die "must run as root (it writes $PREFIX, $CONFIG_DIR and $UNIT_DIR)"
  # The unit runs /usr/bin/node, so that is the one whose version matters.
  [ -x /usr/bin/node ] || die "/usr/bin/node is missing; the unit's ExecStart needs Node.js 20.19 or later there"
  /usr/bin/node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' ||
    die "/usr/bin/node is $(/usr/bin/node --version); fleetlet needs Node.js 20.19 or later"
}

is_built() {
  [ -f dist/agent/cli/fleetlet.js ] && [ -f "$RELEASE/fleetlet_native.node" ] && [ -f "$RELEASE/fleetlet-shim" ] && [ -d node_modules ]
}

build() {
  if [ "$REBUILD" = 0 ] && is_built; then
    say "using the existing build (dist/, $RELEASE); pass --rebuild to rebuild"
    return
  fi
  # npm ci needs the dev dependencies (TypeScript) to build; they are pruned from the copy below.
  run npm ci --no-audit --no-fund
  run npm run build
}

# Assembles the new tree next to PREFIX, so an upgrade never overwrites a
# file the running agent has mapped (the addon) or a running shim executes.
stage() {
  run rm -rf "$STAGE"
  run mkdir -p "$STAGE/dist" "$STAGE/$RELEASE"
  run cp -R bin node_modules package.json package-lock.json README.md "$STAGE/"
  run cp -R dist/agent dist/schemas "$STAGE/dist/"
  run cp "$RELEASE/fleetlet_native.node" "$RELEASE/fleetlet-shim" "$STAGE/$RELEASE/"
  if [ "$DRY_RUN" = 1 ]; then
    say "would run: (cd $STAGE && npm prune --omit=dev --ignore-scripts --no-audit --no-fund)"
  else
    say "(cd $STAGE && npm prune --omit=dev)"
    # --ignore-scripts: the package's install script would rebuild the addon, which the copy already has.
    (cd "$STAGE" && npm prune --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)
    # prune leaves the emptied @scope directories of dev packages behind.
    find "$STAGE/node_modules" -mindepth 1 -maxdepth 1 -type d -empty -delete
  fi
}

swap_in() {
  run rm -rf "$PREFIX.old"
  if [ -d "$PREFIX" ]; then run mv "$PREFIX" "$PREFIX.old"; fi
  run mv "$STAGE" "$PREFIX"
  run rm -rf "$PREFIX.old"
}

write_config() {
  if [ -e "$CONFIG" ]; then
    say "keeping the existing $CONFIG"
    return
  fi
  if [ "$DRY_RUN" = 1 ]; then
    say "would write $CONFIG (mode 0600) from deploy/config.example.json with a new random api.token"
    return
  fi
  [ -d "$CONFIG_DIR" ] || run mkdir -m 0750 -p "$CONFIG_DIR"
  say "writing $CONFIG (mode 0600) from deploy/config.example.json with a new random api.token"
  # The example's token is a placeholder everyone can read: every device gets its own.
  (umask 077 && /usr/bin/node -e '
    const fs = require("node:fs");
    const [src, dst] = process.argv.slice(1);
    const config = JSON.parse(fs.readFileSync(src, "utf8"));
    config.api.token = require("node:crypto").randomBytes(24).toString("base64url");
    fs.writeFileSync(dst, JSON.stringify(config, null, 2) + "\n", { mode: 0o600 });
  ' deploy/config.example.json "$CONFIG.new")
  mv "$CONFIG.new" "$CONFIG"
  FRESH_CONFIG=1
}

render_unit() {
  sed -e "s#/opt/fleetlet#$PREFIX#g" -e "s#/etc/fleetlet/config.json#$CONFIG#g" deploy/fleetlet.service
}

install_unit() {
  if render_unit | cmp -s - "$UNIT"; then
    say "$UNIT is up to date"
    return
  fi
  if [ "$DRY_RUN" = 1 ]; then
    say "would install $UNIT (mode 0644) from deploy/fleetlet.service, for $PREFIX and $CONFIG"
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
  elif [ -d /run/systemd/system ]; then
    # enable --now leaves an agent that is already running on the old code: restart it (containers keep running).
    was_active=0
    systemctl is-active --quiet fleetlet && was_active=1
    run systemctl daemon-reload
    run systemctl enable --now fleetlet
    [ "$was_active" = 0 ] || run systemctl restart fleetlet
  else
    say "systemd is not PID 1 here, so nothing is started; on the device run: systemctl daemon-reload && systemctl enable --now fleetlet"
  fi
}

FRESH_CONFIG=0
[ "$DRY_RUN" = 0 ] || say "dry run: nothing will be changed"
check_prerequisites
build
stage
swap_in
write_config
install_unit
start_service
if [ "$FRESH_CONFIG" = 1 ]; then
  say "edit $CONFIG (deviceId, mqtt, registries, trustedKeys) and then: systemctl restart fleetlet"
fi
if [ "$DRY_RUN" = 1 ]; then
  say "dry run done: nothing was changed"
else
  say "done: fleetlet in $PREFIX, config $CONFIG, unit $UNIT"
fi
