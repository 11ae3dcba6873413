/**
 * Part of `npm run bench -- start`: how a container's init reaches its cgroup
 * v2, each start after an idle pause. Born there (clone3 with
 * CLONE_INTO_CGROUP) against forked and then moved through cgroup.procs (the
 * path of kernels before 5.7, forced with `cgroupMove`), alternating rounds.
 * On a hybrid host it runs on the cgroup2 mount, which holds no controllers:
 * the containers get no limits there.
 */
import { statfsSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Cgroups } from "../../agent/runtime/cgroup.js";
import { CGROUP2_SUPER_MAGIC, detectCgroupLayout } from "../../agent/runtime/cgroup-layout.js";
import { Runtime } from "../../agent/runtime/runtime.js";
import { printSummaries, summarize } from "./stats.js";

const ROUNDS = 3;
const PER_ROUND = 8;

async function timedStarts(runtime: Runtime, rootfs: string, runs: number, idleMs: number): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) {
    await sleep(idleMs);
    const t0 = process.hrtime.bigint();
    const { id } = runtime.create({ layers: [rootfs], command: ["/bin/true"] });
    await runtime.start(id);
    const exit = await runtime.wait(id);
    await runtime.delete(id);
    samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (exit.exitCode !== 0) throw new Error(`container ${id} exited ${exit.exitCode}`);
  }
  await runtime.settled();
  return samples;
}

export async function cgroupBirthBench(work: string, rootfs: string, idleMs: number): Promise<void> {
  const layout = detectCgroupLayout();
  const unified = layout.unified;
  if (!unified || statfsSync(unified).type !== CGROUP2_SUPER_MAGIC) {
    console.log("\ncgroup v2 placement: no cgroup2 mount on this host, not measured");
    return;
  }
  const cgroups = new Cgroups({ mode: "v2", v1: new Map(), unified }, "fleetlet-bench-v2");
  const runtimes = {
    born: new Runtime({ root: join(work, "state-v2-born"), cgroups }),
    moved: new Runtime({ root: join(work, "state-v2-moved"), cgroups, cgroupMove: true }),
  };
  const samples: Record<keyof typeof runtimes, number[]> = { born: [], moved: [] };
  try {
    for (let r = 0; r < ROUNDS; r++)
      for (const name of ["born", "moved"] as const)
        samples[name].push(...(await timedStarts(runtimes[name], rootfs, PER_ROUND, idleMs)));
  } finally {
    cgroups.removeParent();
  }
  const born = summarize("born in its cgroup (clone3)", samples.born);
  const moved = summarize("forked, then moved (cgroup.procs)", samples.moved);
  printSummaries(`cgroup v2 placement of the init, each start after ${idleMs} ms idle (${unified}, no limits)`, [
    born,
    moved,
  ]);
  console.log(`ratio born/moved: p50 ${(born.p50 / moved.p50).toFixed(2)}`);
}
