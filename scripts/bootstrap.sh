#!/bin/sh
# Makes a fresh Debian machine ready for `npm test`, `npm run demo` and
# `npm run bench`: the Debian packages that are missing, the npm
# dependencies, the native core and the compiled TypeScript. Each step is
# skipped when its result is already up to date.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "bootstrap: fleetlet runs containers and must be set up as root" >&2
  exit 1
fi

# busybox-static: the test and demo images; crun, runc, hyperfine: the start-time benchmark's
# baseline; g++/make/python3: the native build; libseccomp-dev: the build-time generator of the
# shim's seccomp programs (the shim itself links no libseccomp); docker-registry, skopeo, umoci, apache2-utils
# (htpasswd), openssl: the test registry and the images pushed to it by other tools; chromium: renders the status page;
# mosquitto, mosquitto-clients: the test MQTT broker and mosquitto_passwd; g++-aarch64-linux-gnu
# (with the aarch64 static libc) and qemu-user-static: the arm64 release bundle, built and run in its test;
# debootstrap and systemd-container (systemd-nspawn): the Debian guest with systemd as PID 1 that the
# release bundle's unit is tested in (test/integration/systemd-nspawn.test.ts); containernetworking-plugins
# (with iptables): the CNI plugins that container networks run (README, "Container networks"); strace:
# shows which call placed a container's init in its cgroup v2 (test/integration/cgroup-v2-birth.test.ts).
PACKAGES="busybox-static crun runc hyperfine g++ make python3 libseccomp-dev docker-registry skopeo umoci apache2-utils openssl chromium mosquitto mosquitto-clients g++-aarch64-linux-gnu qemu-user-static debootstrap systemd-container containernetworking-plugins iptables strace"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "bootstrap: installing Debian packages:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "bootstrap: npm ci"
  npm ci --no-audit --no-fund
fi

stale_native() {
  [ ! -f native/build/Release/fleetlet-shim ] || [ ! -f native/build/Release/fleetlet_native.node ] || [ ! -f native/build/Release/seccomp-programs.json ] && return 0
  [ -n "$(find native/src native/shim native/seccomp native/binding.gyp -newer native/build/Release/fleetlet-shim 2>/dev/null | head -n 1)" ]
}
if stale_native; then
  echo "bootstrap: building the native core"
  npm run --silent build:native
fi
npx tsc -p tsconfig.build.json
npx tsc -p tsconfig.tools.json

# The guest's root filesystem, debootstrapped once (about 1m20s cold) and cached under
# /var/cache/fleetlet-test/, so the test that boots it does not wait for the mirror.
sh scripts/nspawn-rootfs.sh >/dev/null
