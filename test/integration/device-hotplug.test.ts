/**
 * Host devices that come and go under a running agent (in this process,
 * over the real runtime, store and registry), in a directory standing in for
 * /dev whose nodes the test makes and removes:
 *
 * - a service whose device is absent waits in `waitingForDevice`, naming it,
 *   and starts when the device appears (through a by-id symlink in
 *   directories that did not exist yet);
 * - unplugged, the device's node leaves the running container and the
 *   reported state says so; plugged back under other numbers, the node
 *   returns in the same container (same pid) and opens, and the device
 *   cgroup follows the numbers;
 * - a deployment whose device never appears is judged unhealthy for
 *   waiting on that device;
 * - a restarted agent follows on from the container's devices.json;
 * - a container that swaps a target's parent for a symlink (into its volume,
 *   or to a host path) gets no node there, and nothing lands on the host.
 *
 * The service's own loop records, by /proc/uptime, when the device opens and
 * closes inside it: the time from the mknod to a successful open is the
 * latency a hot-plug costs (printed, not asserted).
 */
import { spawnSync } from "node:child_process";
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createAgent } from "../../agent/cli/agent-commands.js";
import { CliContext } from "../../agent/cli/context.js";
import type { Agent } from "../../agent/reconcile/agent.js";
import { deviceConfig } from "../../schemas/config.js";
import type { ServiceReport } from "../../schemas/reported.js";
import { fleetctl } from "../support/fleetlet-cli.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const rootfs = inject("busyboxRootfs");
const BY_ID = "/dev/serial/by-id/usb-FTDI_A50285BI-if00-port0";
let reg: RegistryFixture;
let root: string;
let work: string;
let devRoot: string;
let image: string;
let ctx: CliContext;
let agent: Agent;
const events: { type: string; [k: string]: unknown }[] = [];
let generation = 0;

/**
 * Prints "open T" or "closed T" (T from /proc/uptime) each time /dev/ttyS0
 * starts or stops opening (for reading: `<>` would create a file where the
 * node is missing).
 */
const WATCHER = `last=none
while :; do
  if (exec 3< /dev/ttyS0) 2>/dev/null; then s=open; else s=closed; fi
  if [ "$s" != "$last" ]; then echo "$s $(cut -d' ' -f1 /proc/uptime)"; last=$s; fi
  usleep 3000
done`;

const serialSpec = () => ({
  image,
  command: ["/bin/sh", "-c", WATCHER],
  stopTimeoutMs: 200,
  devices: [{ path: BY_ID, target: "/dev/ttyS0" }],
});

const uptime = () => Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]);

function mknod(name: string, major: number, minor: number): number {
  const path = join(devRoot, name);
  rmSync(path, { force: true });
  const at = uptime();
  const r = spawnSync("mknod", ["-m", "660", path, "c", String(major), String(minor)], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`mknod ${path}: ${r.stderr}`);
  return at;
}

function link(path: string, target: string): void {
  const host = join(devRoot, path.slice("/dev/".length));
  mkdirSync(join(host, ".."), { recursive: true });
  rmSync(host, { force: true });
  symlinkSync(target, host);
}

async function submit(services: Record<string, unknown>, update: Record<string, unknown> = {}) {
  generation++;
  const doc = { apiVersion: "fleetlet/v1", deployment: `hot-${generation}`, generation, services, update };
  return agent.submit(JSON.stringify(doc), "test");
}

const service = (name: string): ServiceReport | undefined => agent.reported().services[name];
const containerOf = (name: string) =>
  ctx.runtime.list().find((c) => c.spec.labels["fleetlet.service"] === name && c.status === "running")!;
const inside = async (name: string, script: string) =>
  (await ctx.runtime.exec(containerOf(name).id, ["/bin/sh", "-c", script])).output.trim();

/** The first "open T" or "closed T" line of the service's log after `since` (uptime seconds). */
async function logged(name: string, what: "open" | "closed", since: number): Promise<number> {
  const hit = await waitFor(
    `${name} to log "${what}"`,
    () => {
      const lines = ctx.runtime.logs(containerOf(name).id).split("\n");
      return lines.map((l) => l.split(" ")).find(([s, t]) => s === what && Number(t) >= since - 0.01);
    },
    {
      timeoutMs: 20_000,
      intervalMs: 20,
      context: () => `${ctx.runtime.logs(containerOf(name).id)}; events: ${JSON.stringify(events.slice(-6))}`,
    },
  );
  return Number(hit[1]);
}

beforeAll(async () => {
  reg = await startRegistry({ auth: "htpasswd" });
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-hotplug-"));
  devRoot = join(work, "dev");
  mkdirSync(devRoot);
  const registries = registriesConfig(reg);
  const config = deviceConfig.parse({
    devRoot,
    registries,
    policy: { devices: ["/dev/serial/by-id/*", "/dev/ttyACM*", "/dev/gpio*"] },
  });
  image = `${reg.host}/hotplug/busybox:1`;
  const configFile = join(work, "config.json");
  writeFileSync(configFile, JSON.stringify({ registries }));
  expect(fleetctl(["--config", configFile, "push", rootfs, image]).status).toBe(0);
  ctx = new CliContext(root, config);
  agent = await createAgent(ctx, (e) => events.push(e as (typeof events)[number]));
  await agent.reattach();
}, 120_000);

afterAll(async () => {
  await agent?.stop();
  await cleanupRoot(root);
  rmSync(work, { recursive: true, force: true });
  await reg?.stop();
});

describe("a service's host device", () => {
  it("is waited for while absent, and the service starts once it appears", async () => {
    expect(await submit({ serial: serialSpec() }, { healthyWithinMs: 60_000 })).toBe("applying");
    await waitFor("serial to wait for its device", () => service("serial")?.state === "waitingForDevice", {
      timeoutMs: 30_000,
    });
    expect(service("serial")).toMatchObject({ state: "waitingForDevice", waitingFor: [BY_ID] });
    expect(events).toContainEqual(expect.objectContaining({ type: "waitingForDevice", service: "serial" }));
    // The device appears as udev makes it: the node, then serial/by-id/ (new directories) and the link.
    const plugged = mknod("ttyUSB0", 10, 200);
    link(BY_ID, "../../ttyUSB0");
    const opened = await logged("serial", "open", plugged);
    await agent.idle();
    expect(agent.reported()).toMatchObject({ phase: "converged", deployment: `hot-${generation}` });
    expect(service("serial")).toMatchObject({ state: "running", devices: [{ path: BY_ID, present: true }] });
    expect(service("serial")!.waitingFor).toBeUndefined();
    console.log(`device appeared → service started and opened it: ${Math.round((opened - plugged) * 1000)} ms`);
  });

  it("leaves the running container when unplugged, and comes back under new numbers in the same container", async () => {
    const pid = service("serial")!.pid;
    const unplugged = uptime();
    rmSync(join(devRoot, "ttyUSB0"));
    rmSync(join(devRoot, "serial"), { recursive: true });
    await logged("serial", "closed", unplugged);
    await waitFor("the device reported absent", () => service("serial")?.devices?.[0]?.present === false, {
      timeoutMs: 10_000,
    });
    expect(await inside("serial", "test -e /dev/ttyS0 && echo there || echo gone")).toBe("gone");
    expect(events).toContainEqual(expect.objectContaining({ type: "deviceRemoved", service: "serial", device: BY_ID }));
    // Plugged back, it is another node (10:229) behind the same by-id name.
    const replugged = mknod("ttyUSB1", 10, 229);
    link(BY_ID, "../../ttyUSB1");
    const opened = await logged("serial", "open", replugged);
    expect(service("serial")!.pid).toBe(pid);
    expect(await inside("serial", "stat -c '%t:%T' /dev/ttyS0")).toBe("a:e5");
    expect(await inside("serial", "[ -c /dev/ttyS0 ] && (exec 3<> /dev/ttyS0) && echo read-write")).toBe("read-write");
    await waitFor("the device reported present", () => service("serial")?.devices?.[0]?.present === true, {
      timeoutMs: 10_000,
    });
    const cgroups = ctx.runtime.cgroups;
    if (cgroups.mode !== "v2") {
      const list = readFileSync(
        join(cgroups.locate(containerOf("serial").id).dirs.get("devices")!, "devices.list"),
        "utf8",
      );
      expect(list).toContain("c 10:229 rw");
      expect(list).not.toContain("c 10:200");
    }
    console.log(
      `device plugged back → open inside the running container: ${Math.round((opened - replugged) * 1000)} ms`,
    );
  });

  it("that never appears fails the deployment's health window, saying which device it waits for", async () => {
    const last = service("serial")!.pid;
    const bad = { image, command: ["sleep", "1000"], devices: [{ path: "/dev/ttyACM9" }], stopTimeoutMs: 200 };
    await submit({ serial: serialSpec(), modem: bad }, { healthyWithinMs: 1500 });
    await agent.idle();
    expect(agent.lastError).toMatchObject({
      code: "E_UNHEALTHY",
      message: expect.stringContaining("modem (waiting for device /dev/ttyACM9, absent)"),
    });
    expect(service("serial")!.pid).toBe(last);
  });
});

describe("a restarted agent", () => {
  it("follows on from what the container's /dev holds: a device unplugged while no agent ran leaves it", async () => {
    const pid = service("serial")!.pid;
    await agent.stop();
    rmSync(join(devRoot, "ttyUSB1"));
    agent = await createAgent(ctx, (e) => events.push(e as (typeof events)[number]));
    await agent.reattach();
    await waitFor("the device reported absent", () => service("serial")?.devices?.[0]?.present === false, {
      timeoutMs: 10_000,
    });
    expect(await inside("serial", "test -e /dev/ttyS0 && echo there || echo gone")).toBe("gone");
    expect(service("serial")!.pid).toBe(pid);
  });
});

describe("a container that swaps the parent of a device's target for a symlink", () => {
  it("gets no node there, and nothing is made on the host", async () => {
    const hostDir = join(work, "host-side");
    mkdirSync(hostDir);
    const devices = [
      { path: "/dev/gpiochip0", target: "/dev/gpio/chip0" },
      { path: "/dev/gpiochip1", target: "/dev/serial2/chip1" },
    ];
    mknod("gpiochip0", 10, 200);
    mknod("gpiochip1", 10, 200);
    const volumes = [{ name: "gpiodata", target: "/data" }];
    const hostile = { image, command: ["sleep", "1000"], devices, volumes, stopTimeoutMs: 200 };
    await submit({ hostile }, { healthyWithinMs: 10_000 });
    await agent.idle();
    expect(await inside("hostile", "stat -c %t:%T /dev/gpio/chip0 /dev/serial2/chip1")).toBe("a:c8\na:c8");
    // Root in the container replaces both parents: one with a link into its volume, one with a host path.
    await inside("hostile", `rm -r /dev/gpio /dev/serial2 && ln -s /data /dev/gpio && ln -s ${hostDir} /dev/serial2`);
    rmSync(join(devRoot, "gpiochip0"));
    rmSync(join(devRoot, "gpiochip1"));
    await waitFor("the devices reported absent", () => service("hostile")?.devices?.every((d) => !d.present) === true, {
      timeoutMs: 10_000,
    });
    mknod("gpiochip0", 10, 229);
    mknod("gpiochip1", 10, 229);
    const settled = (d: { present: boolean; error?: string }) => d.present || d.error !== undefined;
    await waitFor("both devices followed", () => service("hostile")?.devices?.every(settled), { timeoutMs: 10_000 });
    // Nothing in the volume (a host directory) and nothing in the host path.
    expect(readdirSync(ctx.runtime.volumeDir("gpiodata"))).toEqual([]);
    expect(readdirSync(hostDir)).toEqual([]);
    // Refused, and said so in the reported state and the events.
    for (const d of service("hostile")!.devices!) {
      expect(d.present).toBe(false);
      expect(d.error).toMatch(/on the way to device .* \(a symlink or a file in its place is refused\)/);
    }
    expect(events).toContainEqual(
      expect.objectContaining({ type: "error", service: "hostile", device: "/dev/gpiochip0" }),
    );
    expect(await inside("hostile", "ls /data; readlink /dev/gpio; readlink /dev/serial2")).toBe(`/data\n${hostDir}`);
  });
});

/** The inotify watches this process holds, from /proc/self/fdinfo of its inotify descriptors. */
function inotifyWatches(): number {
  let n = 0;
  for (const fd of readdirSync("/proc/self/fd")) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the descriptor readdir itself used, closed since
    }
    if (target !== "anon_inode:inotify") continue;
    n += readFileSync(`/proc/self/fdinfo/${fd}`, "utf8")
      .split("\n")
      .filter((l) => l.startsWith("inotify wd:")).length;
  }
  return n;
}

describe("services removed", () => {
  it("leave no inotify watch behind", async () => {
    expect(inotifyWatches()).toBeGreaterThan(0); // the services above are followed
    await submit({});
    await agent.idle();
    await waitFor("every watch released", () => inotifyWatches() === 0, {
      timeoutMs: 10_000,
      context: () => `${inotifyWatches()} watches`,
    });
  });
});
