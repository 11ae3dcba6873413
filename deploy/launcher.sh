#!/bin/sh
# A release bundle's bin/fleetlet and bin/fleetctl (scripts/dist.sh copies
# this file to both): runs lib/<this file's name>.js on the Node in the
# bundle's node/, so nothing on the device's PATH (no node, no npm) is used.
# The link is resolved first: PREFIX/current/bin/fleetlet runs from
# PREFIX/versions/<version>, so a running agent keeps loading its own
# version's modules, addon and shim after an upgrade moves `current`.
set -eu
# Node flags for every command (agent/system/process-memory.ts has the
# daemon's, which it adds to these). A 1 MiB young generation and one V8
# worker thread: a pull hands Node's TLS a fresh 16 KiB buffer per read, and
# with the default 16 MiB semi-spaces their memory is found dead only by full
# collections; with 1 MiB ones, by cheap scavenges. Measured with
# `npm run bench -- pull --bundle --mib 100` (two rounds): a one-shot
# download's CPU 0.42 -> 0.35 s, wall 0.40 -> 0.36 s; pull and unpack 0.55 ->
# 0.50 s wall. test/bench/agent-launch.ts reads this line for --bundle.
node_flags="--max-semi-space-size=1 --v8-pool-size=1"
# glibc's malloc in 2 MiB transparent huge pages, so that the fresh buffers a
# pull and an unpack go through fault once per 2 MiB rather than per 4 KiB,
# and with blocks up to 4 MiB taken from that heap rather than mapped one by
# one; only where a huge page is 2 MiB (with 64 KiB pages it is 512 MiB). The
# daemon re-executes itself without them, and its pull workers go without
# them (agent/system/process-memory.ts, which has the figures). agent-launch.ts
# reads this line too.
malloc_tunables="glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4194304"
if read -r thp 2>/dev/null </sys/kernel/mm/transparent_hugepage/hpage_pmd_size && [ "$thp" = 2097152 ]; then
  GLIBC_TUNABLES=${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}$malloc_tunables
  FLEETLET_BULK_MALLOC=1
  export GLIBC_TUNABLES FLEETLET_BULK_MALLOC
fi
self=$(readlink -f -- "$0")
home=${self%/bin/*}
prefix=${home%/versions/*}
update=$prefix/agent-update
# Agent self-update (agent/system/agent-install.ts writes PREFIX/agent-update;
# docs/contract.md, "Agent self-update"). While the version this launcher
# belongs to is on trial (state=pending, to=<this version>), each start is
# counted and given a deadline (its commit window plus `grace`, 30 s unless the
# file says); the start after 3 uncommitted ones, or after
# a deadline has passed (the agent hung, or was restarted after its window),
# points `current` back at the version it replaced and runs that instead. A
# watchdog kills a start that is still uncommitted past its deadline, so a
# hung agent is restarted (Restart=always) and then reverted. Only here and
# for the agent: the reverted agent reads state=failed and reports it.
field() { sed -n "s/^$1=//p" "$update"; }
if [ "${self##*/}" = fleetlet ] && [ "$prefix" != "$home" ] && [ -f "$update" ] &&
  [ "$(field state)" = pending ] && [ "$(field to)" = "${home##*/}" ]; then
  attempts=$(field attempts)
  deadline=$(field deadline)
  now=$(date +%s)
  reason=""
  if [ "${attempts:-0}" -ge 3 ]; then
    reason="it was started $attempts times without committing (a crash loop)"
  elif [ -n "$deadline" ] && [ "$now" -gt "$deadline" ]; then
    reason="it did not commit within agentUpdate.commitWithinMs (it hung, or was stopped before)"
  fi
  if [ -n "$reason" ]; then
    from=$(field from)
    ln -sfn "versions/$from" "$prefix/current.new" && mv -T "$prefix/current.new" "$prefix/current"
    { sed '/^state=/d;/^reason=/d' "$update" && printf 'state=failed\nreason=%s\n' "$reason"; } >"$update.new"
    mv "$update.new" "$update"
    exec "$prefix/versions/$from/bin/fleetlet" "$@"
  fi
  attempts=$((${attempts:-0} + 1))
  grace=$(field grace)
  deadline=$((now + $(field commitwithin) + ${grace:-30}))
  { sed '/^attempts=/d;/^deadline=/d' "$update" && printf 'attempts=%s\ndeadline=%s\n' "$attempts" "$deadline"; } >"$update.new"
  mv "$update.new" "$update"
  # The process is named by its pid and its start time, which an exec keeps: a reused pid is never killed.
  started() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
  pid=$$
  since=$(started "$pid")
  # Twice forked, so that init (not the agent) reaps it; it outlives this exec.
  ( (
    sleep $((deadline - now + 1))
    if [ "$(field state)" = pending ] && [ "$(field attempts)" = "$attempts" ] && [ "$(started "$pid")" = "$since" ]; then
      kill -9 "$pid"
    fi
  ) </dev/null >/dev/null 2>&1 &)
fi
# shellcheck disable=SC2086 # the flags are words
exec "$home/node/bin/node" $node_flags "$home/lib/${self##*/}.js" "$@"
