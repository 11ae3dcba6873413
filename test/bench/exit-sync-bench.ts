/**
 * Part of `npm run bench -- start`: what 20 containers' stops cost the disk
 * under the state root, the overlay mounted `volatile` (as fleetlet mounts
 * it) against synced (`overlaySync`, as on a kernel before 5.10), in rounds
 * that alternate. A synced overlay's last unmount syncs the whole host
 * filesystem under its upper dir and flushes the disk's cache, at each
 * container's exit; on flash a cache flush takes milliseconds and wears it.
 * Counted from the block device's statistics (/sys/dev/block/M:m/stat:
 * sectors written, flushes and the milliseconds spent in them), so other
 * writers on the same disk in the meantime count too.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { runBounded } from "../../agent/bounded.js";
import { Runtime } from "../../agent/runtime/runtime.js";

const CONTAINERS = 20;
const ROUNDS = 3;
const COMMAND = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo note > /note; sleep 1000 & wait"];

/** The statistics file of the whole disk that holds `path` (a partition's parent). */
function diskStatFile(path: string): string | undefined {
  const dev = statSync(path).dev;
  const sys = `/sys/dev/block/${Math.floor(dev / 256) & 0xfff}:${(dev & 0xff) | ((dev >> 12) & 0xfff00)}`;
  const file = existsSync(join(sys, "partition")) ? join(sys, "..", "stat") : join(sys, "stat");
  return existsSync(file) ? file : undefined;
}

function diskCounts(file: string) {
  const f = readFileSync(file, "utf8").trim().split(/\s+/).map(Number);
  return { kib: (f[6] ?? 0) / 2, flushes: f[15] ?? Number.NaN, flushMs: f[16] ?? Number.NaN };
}

async function stopsOnce(runtime: Runtime, rootfs: string, file: string) {
  const ids = Array.from(
    { length: CONTAINERS },
    () => runtime.create({ layers: [rootfs], command: COMMAND, stopTimeoutMs: 2000 }).id,
  );
  await runBounded(ids, 8, (id) => runtime.start(id).then(() => undefined));
  await sleep(500); // the starts' own writes settle first
  const before = diskCounts(file);
  const t0 = performance.now();
  await runBounded(ids, 8, async (id) => {
    const exit = await runtime.stop(id);
    if (exit.exitCode !== 0) throw new Error(`container ${id} exited ${exit.exitCode} on SIGTERM`);
  });
  const ms = performance.now() - t0;
  const after = diskCounts(file);
  await runBounded(ids, 8, (id) => runtime.delete(id));
  await runtime.settled();
  return {
    ms,
    kib: after.kib - before.kib,
    flushes: after.flushes - before.flushes,
    flushMs: after.flushMs - before.flushMs,
  };
}

export async function exitSyncBench(root: string, rootfs: string): Promise<void> {
  const modes = { volatile: new Runtime({ root }), synced: new Runtime({ root, overlaySync: true }) };
  const file = diskStatFile(root);
  if (!file) {
    console.log(`\nexit sync: no block device statistics for ${root}: not measured`);
    return;
  }
  const rows: Record<string, string[]> = { volatile: [], synced: [] };
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, runtime] of Object.entries(modes)) {
      const s = await stopsOnce(runtime, rootfs, file);
      rows[name]!.push(`${s.ms.toFixed(0)} ms, ${s.flushes} flushes (${s.flushMs} ms), ${s.kib.toFixed(0)} KiB`);
    }
  }
  console.log(
    `\n${CONTAINERS} stops, 8 at a time, each container having written a file (${ROUNDS} rounds, alternating):`,
  );
  for (const [name, r] of Object.entries(rows)) console.log(`  overlay ${name.padEnd(8)} ${r.join("; ")}`);
}
