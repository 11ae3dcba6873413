#!/bin/sh
# Prepares, once, the Debian root filesystem that test/integration/systemd-nspawn.test.ts
# boots with systemd-nspawn (systemd as PID 1) to install the release bundle in. It is kept
# under /var/cache/fleetlet-test/ in a directory named by a digest of what makes it (suite,
# variant, packages, mirror), so a changed package list makes a new one and a warm run reuses
# it. Prints the directory. A cold run (debootstrap from the mirror apt uses) takes a few
# minutes; scripts/bootstrap.sh runs it so the test suite never waits for it.
set -eu
SUITE=bookworm
VARIANT=minbase
INCLUDE=systemd,systemd-sysv,dbus
CACHE=/var/cache/fleetlet-test

if [ "$(id -u)" != 0 ]; then
  echo "nspawn-rootfs: debootstrap must run as root" >&2
  exit 1
fi
for tool in debootstrap systemd-nspawn; do
  command -v "$tool" >/dev/null || {
    echo "nspawn-rootfs: $tool is missing (Debian packages debootstrap and systemd-container)" >&2
    exit 1
  }
done
# The mirror apt already uses here (deb822 sources first, then one-line ones).
MIRROR=$(sed -n 's/^URIs: *\([^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
[ -n "$MIRROR" ] || MIRROR=$(sed -n 's/^deb \(http[^ ]*debian\) .*/\1/p' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
[ -n "$MIRROR" ] || {
  echo "nspawn-rootfs: no Debian mirror found in /etc/apt/sources.list*" >&2
  exit 1
}
KEY=$(printf '%s %s %s %s' "$SUITE" "$VARIANT" "$INCLUDE" "$MIRROR" | sha256sum | cut -c1-16)
DIR="$CACHE/rootfs-$SUITE-$KEY"
if [ ! -f "$DIR/.complete" ]; then
  mkdir -p "$CACHE"
  rm -rf "$DIR.tmp"
  echo "nspawn-rootfs: debootstrap $SUITE ($VARIANT, $INCLUDE) from $MIRROR into $DIR" >&2
  debootstrap --variant="$VARIANT" --include="$INCLUDE" "$SUITE" "$DIR.tmp" "$MIRROR" >"$CACHE/debootstrap-$KEY.log" 2>&1 || {
    tail -n 20 "$CACHE/debootstrap-$KEY.log" >&2
    exit 1
  }
  # The guest names itself; nothing else is changed from what debootstrap made.
  echo fleetlet-guest >"$DIR.tmp/etc/hostname"
  touch "$DIR.tmp/.complete"
  rm -rf "$DIR"
  mv "$DIR.tmp" "$DIR"
fi
echo "$DIR"
