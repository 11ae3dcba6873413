#!/bin/sh
# Builds the native core (the Node-API addon and the static shim) for this
# machine against the headers of the pinned Node (node_modules/node-linux-*),
# so no system Node headers and no download are needed. Node-API is
# ABI-stable: the addon loads in any Node that has its NAPI_VERSION.
set -eu
cd "$(dirname "$0")/.."
case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  *) echo "build-native: unsupported machine $(uname -m) (linux-x64 and linux-arm64 are supported)" >&2; exit 1 ;;
esac
nodedir="$PWD/node_modules/node-linux-$arch"
if [ ! -f "$nodedir/include/node/node_api.h" ]; then
  echo "build-native: $nodedir has no Node headers: run npm ci first" >&2
  exit 1
fi
# node-gyp takes npm's `nodedir` setting (npm_config_nodedir, from an npmrc
# such as a distribution's nodedir=/usr) over --nodedir: set both.
export npm_config_nodedir="$nodedir"
# One compiler per CPU (`--jobs max`): 20 s rather than 35 s on 2 cores.
exec node-gyp rebuild --directory native --nodedir="$nodedir" --jobs max
