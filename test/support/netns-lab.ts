/**
 * A small network lab in network namespaces, for container network tests: a
 * "device" namespace, where the agent runs, and an "outside" one (a test
 * host), joined by a veth. The device's default route goes to the test host,
 * so nothing leaves the machine, and neither the machine's routes nor another
 * test file's bridges are seen. Names and the /24 between the two are unique
 * per lab (from the pid), and `remove` deletes both namespaces with all that
 * was made in them.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";

export interface NetnsLab {
  /** Namespace names, under /run/netns. */
  device: string;
  outside: string;
  /** The test host's and the device's address on the link between them. */
  outsideIp: string;
  deviceIp: string;
  /** Runs a command in a namespace; throws with its stderr when it fails. */
  run(ns: string, cmd: string[]): string;
  /** Runs a command in a namespace, resolving with its status and output. */
  runAsync(ns: string, cmd: string[], timeoutMs?: number): Promise<{ status: number | null; out: string }>;
  remove(): void;
}

const ip = (args: string[]) => execFileSync("ip", args, { encoding: "utf8" });

export function nsArgs(ns: string, cmd: string[]): string[] {
  return [`--net=/run/netns/${ns}`, ...cmd];
}

export function makeNetnsLab(tag: string): NetnsLab {
  const n = process.pid % 250;
  const base = `fl${tag}${process.pid}`.slice(0, 11);
  const device = `${base}-dev`;
  const outside = `${base}-out`;
  const lab: NetnsLab = {
    device,
    outside,
    outsideIp: `198.18.${n}.1`,
    deviceIp: `198.18.${n}.2`,
    run: (ns, cmd) => {
      const r = spawnSync("nsenter", nsArgs(ns, cmd), { encoding: "utf8", timeout: 30_000 });
      if (r.status !== 0) throw new Error(`${cmd.join(" ")} in ${ns}: ${r.stderr || r.error?.message}`);
      return r.stdout;
    },
    runAsync: (ns, cmd, timeoutMs = 20_000) =>
      new Promise((resolve) => {
        const child = spawn("nsenter", nsArgs(ns, cmd), { stdio: ["ignore", "pipe", "pipe"], timeout: timeoutMs });
        let out = "";
        child.stdout.on("data", (d) => (out += d));
        child.stderr.on("data", (d) => (out += d));
        child.on("close", (status) => resolve({ status, out }));
      }),
    remove: () => {
      for (const ns of [device, outside]) spawnSync("ip", ["netns", "del", ns]);
    },
  };
  lab.remove();
  ip(["netns", "add", device]);
  ip(["netns", "add", outside]);
  ip(["link", "add", `${base}d`, "netns", device, "type", "veth", "peer", "name", `${base}o`, "netns", outside]);
  lab.run(device, ["ip", "addr", "add", `${lab.deviceIp}/24`, "dev", `${base}d`]);
  lab.run(outside, ["ip", "addr", "add", `${lab.outsideIp}/24`, "dev", `${base}o`]);
  for (const [ns, dev] of [
    [device, `${base}d`],
    [outside, `${base}o`],
  ] as const) {
    lab.run(ns, ["ip", "link", "set", "lo", "up"]);
    lab.run(ns, ["ip", "link", "set", dev, "up"]);
  }
  lab.run(device, ["ip", "route", "add", "default", "via", lab.outsideIp]);
  return lab;
}
