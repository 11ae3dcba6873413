#!/bin/sh
# Compiles the seccomp program generator for the build machine and runs it
# (binding.gyp's seccomp_programs action):
#   generator.sh HEADER OUTDIR
# The generator runs where the build runs, so it is compiled with the build
# machine's compiler (CC_host, else cc) even when the shim is cross-compiled.
set -eu
here=$(dirname "$0")
header=$1
outdir=$2
cc=${CC_host:-cc}
mkdir -p "$(dirname "$header")" "$outdir"
if ! printf '#include <seccomp.h>\n' | $cc -E - >/dev/null 2>&1; then
  echo "seccomp generator: <seccomp.h> not found: install libseccomp-dev (scripts/bootstrap.sh does)" >&2
  exit 1
fi
$cc -std=gnu11 -Wall -Wextra -O1 -o "$outdir/seccomp-generator" "$here/generator.c" -lseccomp
"$outdir/seccomp-generator" "$header" "$outdir"
