/**
 * Part of `npm run bench -- start`: how long `stop` takes for a container
 * of `sleep 1000`, with and without an init as PID 1. Without one, sleep is
 * PID 1 and has no SIGTERM handler, so the kernel drops the stop signal and
 * the stop lasts the whole stop timeout; with one, the init forwards it.
 */
import { readFileSync } from "node:fs";
import type { Runtime } from "../../agent/runtime/runtime.js";
import { printSummaries, summarize } from "./stats.js";

const STOP_TIMEOUT_MS = 2000;

/** The resident memory of a process, in kB. */
function rssKb(pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? Number.NaN);
}

interface StopSamples {
  stopMs: number[];
  /** PID 1's resident memory while it runs. */
  pid1Kb: number[];
}

async function stopSamples(runtime: Runtime, rootfs: string, init: boolean, runs: number): Promise<StopSamples> {
  const out: StopSamples = { stopMs: [], pid1Kb: [] };
  for (let i = 0; i < runs; i++) {
    const { id } = runtime.create({
      layers: [rootfs],
      command: ["sleep", "1000"],
      init,
      stopTimeoutMs: STOP_TIMEOUT_MS,
    });
    try {
      const started = await runtime.start(id);
      if (started.pid) out.pid1Kb.push(rssKb(started.pid));
      const t0 = process.hrtime.bigint();
      const exit = await runtime.stop(id);
      out.stopMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
      const expected = init ? 143 : 137;
      if (exit.exitCode !== expected)
        throw new Error(`stop of ${id} (init ${init}): exit ${exit.exitCode}, expected ${expected}`);
    } finally {
      await runtime.delete(id, { force: true });
    }
  }
  return out;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

export async function stopBench(runtime: Runtime, rootfs: string, runs: number): Promise<void> {
  const withInit = await stopSamples(runtime, rootfs, true, runs);
  const without = await stopSamples(runtime, rootfs, false, runs);
  await runtime.settled();
  printSummaries(`stop of a sleep 1000 container (SIGTERM, stop timeout ${STOP_TIMEOUT_MS / 1000} s)`, [
    summarize("with init (--init)", withInit.stopMs),
    summarize("without init (sleep is PID 1)", without.stopMs),
  ]);
  console.log(
    `PID 1 resident memory (mean of ${runs}): the init ${mean(withInit.pid1Kb).toFixed(0)} kB, sleep as PID 1 ${mean(without.pid1Kb).toFixed(0)} kB`,
  );
}
