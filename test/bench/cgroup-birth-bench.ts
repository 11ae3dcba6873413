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
import { Cgroups } from "../../agent/runtime/cgroup.js";
import { CGROUP2_SUPER_MAGIC, detectCgroupLayout } from "../../agent/runtime/cgroup-layout.js";
import { Runtime } from "../../agent/runtime/runtime.js";
import { printSummaries, summarize } from "./stats.js";

const ROUNDS = 3;
const PER_ROUND = 8;

/** Per-container times of `n` starts with `runtime`, each after the idle pause (start-bench.ts). */
type TimedStarts = (runtime: Runtime, n: number) => Promise<number[]>;

export async function cgroupBirthBench(work: string, idleMs: number, timedStarts: TimedStarts): Promise<void> {
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
        samples[name].push(...(await timedStarts(runtimes[name], PER_ROUND)));
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
