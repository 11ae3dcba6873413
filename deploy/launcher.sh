#!/bin/sh
# A release bundle's bin/fleetlet and bin/fleetctl (scripts/dist.sh copies
# this file to both): runs lib/<this file's name>.js on the Node in the
# bundle's node/, so nothing on the device's PATH (no node, no npm) is used.
# The link is resolved first: PREFIX/current/bin/fleetlet runs from
# PREFIX/versions/<version>, so a running agent keeps loading its own
# version's modules, addon and shim after an upgrade moves `current`.
set -eu
self=$(readlink -f -- "$0")
home=${self%/bin/*}
exec "$home/node/bin/node" "$home/lib/${self##*/}.js" "$@"
