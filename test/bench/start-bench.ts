/**
 * `npm run bench -- start`: 100 containers of /bin/true, one after another,
 * with memory, cpu and pids limits, from a warm process; compared in the
 * same run with `crun run` (and `runc run`) on an equivalent OCI bundle.
 * Then 20 more of each, every one after an idle pause (IDLE_MS), as an
 * agent starts the one container of a swap on a quiet device: moving a
 * process into a cgroup can then wait for an RCU grace period, which starts
 * back to back do not see (native/shim/cgroup-join.c). On cgroup v2 it
 * also compares an init born in its cgroup with one moved there
 * (cgroup-birth-bench.ts).
 * Debian's crun 1.8 refuses a hybrid cgroup host, so it runs inside
 * `unshare -m` with /sys/fs/cgroup/unified unmounted, as the issue asks.
 * Also reports the resident memory of each shim, how long a stop takes
 * with and without an init (stop-bench.ts), and what 20 stops cost the disk
 * with the overlay volatile and synced (exit-sync-bench.ts).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Runtime } from "../../agent/runtime/runtime.js";
import type { ContainerSpecInput } from "../../schemas/container.js";
import { buildBusyboxRootfs } from "../support/busybox-rootfs.js";
import { cgroupBirthBench } from "./cgroup-birth-bench.js";
import { exitSyncBench } from "./exit-sync-bench.js";
import { specWithSeccomp } from "./oci-seccomp.js";
import { printSummaries, type Summary, summarize } from "./stats.js";
import { stopBench } from "./stop-bench.js";

const LIMITS = { memory: "64Mi", cpus: 1, pids: 64 };
/** The pause before each start of the idle rows: long enough for the kernel to settle. */
const IDLE_MS = 100;
const IDLE_RUNS = 20;

function ociBundle(dir: string, rootfs: string): string {
  mkdirSync(dir, { recursive: true });
  execFileSync("crun", ["spec", "-b", dir]);
  const spec = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
  spec.root = { path: rootfs, readonly: false };
  spec.process.terminal = false;
  spec.process.args = ["/bin/true"];
  spec.linux.namespaces.push({ type: "cgroup" });
  spec.linux.resources = {
    ...spec.linux.resources,
    memory: { limit: 64 * 1024 * 1024, swap: 64 * 1024 * 1024 },
    cpu: { quota: 100000, period: 100000, shares: 1024 },
    pids: { limit: 64 },
  };
  spec.linux.cgroupsPath = "/fleetlet-bench-oci/ctr";
  writeFileSync(join(dir, "config.json"), specWithSeccomp(spec, 2));
  return dir;
}

/** Times `runs` sequential runs of an OCI runtime with hyperfine (no shell in between); samples in ms. */
function ociRuntime(
  name: string,
  bundle: string,
  runs: number,
  hybridWorkaround: boolean,
  idleMs = 0,
): number[] | string {
  const out = join(bundle, `${name}.json`);
  const cmd = `${name} run -b ${bundle} bench-${name}`;
  const idle = idleMs ? ["--prepare", `sleep ${idleMs / 1000}`] : [];
  const hyperfine = ["hyperfine", "-N", "--warmup", "3", ...idle, "--runs", String(runs), "--export-json", out, cmd];
  const argv = hybridWorkaround
    ? [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        `(umount /sys/fs/cgroup/unified 2>/dev/null || true) && exec "$@"`,
        "sh",
        ...hyperfine,
      ]
    : hyperfine;
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8" });
  if (r.status !== 0) return `${name} failed: ${(r.stderr || r.stdout).trim().split("\n").slice(-3).join(" | ")}`;
  const times: number[] = JSON.parse(readFileSync(out, "utf8")).results[0].times;
  return times.map((s) => s * 1000);
}

/** Per-container times of `runs` starts (after three to warm up), each after `idleMs` idle. */
async function fleetletRuns(
  runtime: Runtime,
  rootfs: string,
  runs: number,
  idleMs = 0,
  resources: ContainerSpecInput["resources"] = LIMITS,
): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < runs + 3; i++) {
    if (idleMs) await sleep(idleMs);
    const t0 = process.hrtime.bigint();
    const { id } = runtime.create({ layers: [rootfs], command: ["/bin/true"], resources });
    await runtime.start(id);
    const exit = await runtime.wait(id);
    await runtime.delete(id);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (exit.exitCode !== 0) throw new Error(`fleetlet container ${id} exited ${exit.exitCode}`);
    if (i >= 3) samples.push(ms); // the first three warm up, as hyperfine's --warmup
  }
  await runtime.settled();
  return samples;
}

async function shimFootprint(runtime: Runtime, rootfs: string, count: number): Promise<number[]> {
  const ids: string[] = [];
  const rss: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const { id } = runtime.create({ layers: [rootfs], command: ["/bin/sleep", "60"], resources: LIMITS });
      ids.push(id);
      await runtime.start(id);
    }
    for (const id of ids) {
      const running = JSON.parse(readFileSync(join(runtime.root, "containers", id, "running.json"), "utf8"));
      const status = readFileSync(`/proc/${running.shim.pid}/status`, "utf8");
      rss.push(Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? Number.NaN));
    }
  } finally {
    for (const id of ids) await runtime.delete(id, { force: true });
  }
  return rss;
}

type Bundles = Record<"crun" | "runc", string>;

/** Per-container samples of each runtime, in rounds that alternate between them, so that a noisy neighbour on a shared machine weighs on all of them alike. */
async function compareStarts(
  runtime: Runtime,
  rootfs: string,
  bundles: Bundles,
  runs: number,
  idleMs: number,
): Promise<{ samples: Record<string, number[]>; notes: Set<string> }> {
  const rounds = Math.min(5, runs);
  const per = Math.max(1, Math.round(runs / rounds));
  const samples: Record<string, number[]> = { fleetlet: [], crun: [], runc: [] };
  const notes = new Set<string>();
  for (let r = 0; r < rounds; r++) {
    samples.fleetlet!.push(...(await fleetletRuns(runtime, rootfs, per, idleMs)));
    for (const [name, workaround] of [
      ["crun", runtime.cgroups.mode === "hybrid"],
      ["runc", false],
    ] as const) {
      const got = ociRuntime(name, bundles[name], per, workaround, idleMs);
      if (typeof got === "string") notes.add(got);
      else samples[name]!.push(...got);
    }
  }
  return { samples, notes };
}

function printComparison(title: string, { samples, notes }: { samples: Record<string, number[]>; notes: Set<string> }) {
  const ours = summarize("fleetlet (create+start+wait+rm)", samples.fleetlet!);
  const rows: Summary[] = [ours];
  for (const name of ["crun", "runc"])
    if (samples[name]!.length) rows.push(summarize(`${name} run (hyperfine)`, samples[name]!));
  printSummaries(title, rows);
  for (const r of rows.slice(1)) {
    console.log(
      `ratio fleetlet/${r.name.split(" ")[0]}: p50 ${(ours.p50 / r.p50).toFixed(2)}, p99 ${(ours.p99 / r.p99).toFixed(2)} (goal for crun: <= 0.50)`,
    );
  }
  for (const n of notes) console.log(`note: ${n}`);
}

export async function startBench(args: string[]): Promise<void> {
  const runs = Number(args[args.indexOf("--runs") + 1] ?? 100) || 100;
  const work = mkdtempSync(join(tmpdir(), "fleetlet-bench-"));
  try {
    const rootfs = buildBusyboxRootfs(join(work, "rootfs"));
    const runtime = new Runtime({ root: join(work, "state"), cgroupParent: "fleetlet-bench" });
    console.log(
      `start: ${runs} containers of /bin/true, one after another, limits memory=64Mi cpus=1 pids=64 (cgroup mode: ${runtime.cgroups.mode})`,
    );
    const bundles = {
      crun: ociBundle(join(work, "bundle-crun"), rootfs),
      runc: ociBundle(join(work, "bundle-runc"), rootfs),
    };
    const compare = (runs: number, idleMs: number) => compareStarts(runtime, rootfs, bundles, runs, idleMs);
    printComparison("per-container time, back to back", await compare(runs, 0));
    printComparison(
      `per-container time, each start after ${IDLE_MS} ms idle (as an agent's swap on a quiet device)`,
      await compare(IDLE_RUNS, IDLE_MS),
    );
    // No limits there: on a hybrid host the cgroup2 mount holds no controllers.
    await cgroupBirthBench(work, IDLE_MS, (rt, n) => fleetletRuns(rt, rootfs, n, IDLE_MS, {}));
    const rss = await shimFootprint(runtime, rootfs, 10);
    console.log(
      `\nshim resident memory over ${rss.length} running containers: max ${Math.max(...rss)} kB, mean ${(rss.reduce((a, b) => a + b, 0) / rss.length).toFixed(0)} kB (goal: <= 1024 kB)`,
    );
    await stopBench(runtime, rootfs, 5);
    await exitSyncBench(join(work, "state"), rootfs);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
