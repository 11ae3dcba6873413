/**
 * `npm run bench -- network`: what a bridge costs. Runs in a network
 * namespace of its own (made here, deleted after), so the machine's own
 * links and firewall are never touched. Measures, one container after
 * another, create+start and delete of a /bin/true container with
 * `network: none` and on a bridge with one published port, alternating; then
 * a 20-service deployment's network setup (20 sleeping containers started
 * side by side, as the agent starts one batch) and teardown (deleted side by
 * side, then the bridge removed).
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Runtime } from "../../agent/runtime/runtime.js";
import type { ContainerSpecInput } from "../../schemas/container.js";
import { buildBusyboxRootfs } from "../support/busybox-rootfs.js";
import { printSummaries, summarize } from "./stats.js";

const SUBNET = "10.89.0.0/24";

function bridgeSpec(runtime: Runtime, rootfs: string, command: string[], port?: number): ContainerSpecInput {
  const bridge = runtime.network.bridgeName("bench", SUBNET);
  return {
    layers: [rootfs],
    command,
    network: "bridge",
    attachments: [{ network: "bench", bridge, subnet: SUBNET, internal: false }],
    ports: port ? [{ hostIp: "", hostPort: port, containerPort: 80, protocol: "tcp" }] : [],
    aliases: ["bench"],
  };
}

async function oneByOne(runtime: Runtime, rootfs: string, runs: number) {
  const t = {
    noneStart: [] as number[],
    noneDelete: [] as number[],
    bridgeStart: [] as number[],
    bridgeDelete: [] as number[],
  };
  for (let i = 0; i < runs + 2; i++) {
    for (const bridged of [false, true]) {
      const spec = bridged
        ? bridgeSpec(runtime, rootfs, ["/bin/true"], 18080)
        : { layers: [rootfs], command: ["/bin/true"] };
      const t0 = performance.now();
      const { id } = runtime.create(spec);
      await runtime.start(id);
      const t1 = performance.now();
      await runtime.wait(id);
      const t2 = performance.now();
      await runtime.delete(id);
      const t3 = performance.now();
      if (i < 2) continue; // warm-up
      (bridged ? t.bridgeStart : t.noneStart).push(t1 - t0);
      (bridged ? t.bridgeDelete : t.noneDelete).push(t3 - t2);
    }
  }
  return t;
}

async function deployment(runtime: Runtime, rootfs: string, services: number) {
  const ids = Array.from(
    { length: services },
    () => runtime.create(bridgeSpec(runtime, rootfs, ["/bin/sleep", "600"])).id,
  );
  const t0 = performance.now();
  await Promise.all(ids.map((id) => runtime.start(id)));
  const t1 = performance.now();
  await Promise.all(ids.map((id) => runtime.delete(id, { force: true })));
  await runtime.network.removeNetwork({ bridge: runtime.network.bridgeName("bench", SUBNET) });
  const t2 = performance.now();
  return { setup: t1 - t0, teardown: t2 - t1 };
}

async function measure(runs: number): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), "fleetlet-bench-net-"));
  try {
    const rootfs = buildBusyboxRootfs(join(work, "rootfs"));
    const runtime = new Runtime({ root: join(work, "state"), cgroupParent: "fleetlet-bench-net" });
    console.log(
      `network: ${runs} containers of /bin/true each way, one after another (cgroup mode: ${runtime.cgroups.mode})`,
    );
    const t = await oneByOne(runtime, rootfs, runs);
    printSummaries("per container", [
      summarize("network none: create+start", t.noneStart),
      summarize("bridge + 1 port: create+start", t.bridgeStart),
      summarize("network none: delete", t.noneDelete),
      summarize("bridge + 1 port: delete", t.bridgeDelete),
    ]);
    const rounds = [];
    for (let r = 0; r < 3; r++) rounds.push(await deployment(runtime, rootfs, 20));
    printSummaries("20 services on one bridge, started and deleted side by side", [
      summarize(
        "setup (all 20 started)",
        rounds.map((r) => r.setup),
      ),
      summarize(
        "teardown (all deleted, bridge removed)",
        rounds.map((r) => r.teardown),
      ),
    ]);
    await runtime.settled();
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

export async function networkBench(args: string[]): Promise<void> {
  const runs = Number(args[args.indexOf("--runs") + 1] ?? 30) || 30;
  if (process.env.FLEETLET_BENCH_NETNS) return measure(runs);
  const ns = `fleetlet-bench-${process.pid}`;
  spawnSync("ip", ["netns", "add", ns], { stdio: "inherit" });
  try {
    const self = fileURLToPath(new URL("./run.js", import.meta.url));
    const env = { ...process.env, FLEETLET_BENCH_NETNS: ns };
    const argv = [`--net=/run/netns/${ns}`, process.execPath, self, "network", ...args];
    const r = spawnSync("nsenter", argv, { stdio: "inherit", env });
    if (r.status !== 0) throw new Error(`network bench failed (${r.status})`);
  } finally {
    spawnSync("ip", ["netns", "del", ns], { stdio: "inherit" });
  }
}
