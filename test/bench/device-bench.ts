/**
 * `npm run bench -- device [RUNS]`: how long a device plugged back takes to
 * be usable in a running container. One container follows a device the
 * way the agent does (DeviceWatch, ServiceDevices, Runtime.followDevices);
 * its own loop tries to open the device (for reading: `<>` would create a
 * file where the node is missing) every 3 ms and logs, with the time
 * from /proc/uptime (10 ms resolution), each time it starts or stops
 * opening. Each run removes the host node, waits for the container to lose
 * it, then makes it again (alternately as 10:200 and 10:229, so the cgroup
 * rule must follow new numbers) and times from the mknod to the first
 * successful open inside.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { ServiceDevices } from "../../agent/reconcile/service-devices.js";
import { DEVICE_DEBOUNCE_MS, DeviceWatch } from "../../agent/runtime/device-watch.js";
import { Runtime } from "../../agent/runtime/runtime.js";
import { buildBusyboxRootfs } from "../support/busybox-rootfs.js";
import { printSummaries, summarize } from "./stats.js";

const LOOP = `last=none
while :; do
  if (exec 3< /dev/ttyS0) 2>/dev/null; then s=open; else s=closed; fi
  if [ "$s" != "$last" ]; then echo "$s $(cut -d' ' -f1 /proc/uptime)"; last=$s; fi
  usleep 3000
done`;

const uptime = () => Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]);

async function logged(runtime: Runtime, id: string, what: string, since: number): Promise<number> {
  for (let i = 0; i < 2000; i++) {
    const hit = runtime
      .logs(id)
      .split("\n")
      .map((l) => l.split(" "))
      .find(([s, t]) => s === what && Number(t) >= since - 0.01);
    if (hit) return Number(hit[1]);
    await sleep(5);
  }
  throw new Error(`device bench: the container never logged "${what}" after ${since}: ${runtime.logs(id)}`);
}

export async function deviceBench(args: string[]): Promise<void> {
  const runs = Number(args[0] ?? 20);
  const work = mkdtempSync(join(tmpdir(), "fleetlet-device-bench-"));
  const devRoot = join(work, "dev");
  mkdirSync(devRoot);
  const node = (minor: number) => {
    rmSync(join(devRoot, "ttyUSB0"), { force: true });
    const at = uptime();
    spawnSync("mknod", [join(devRoot, "ttyUSB0"), "c", "10", String(minor)]);
    return at;
  };
  node(200);
  const runtime = new Runtime({ root: join(work, "root"), devRoot });
  const devices = [{ path: "/dev/ttyUSB0", target: "/dev/ttyS0", permissions: "rw" }];
  const c = runtime.create({
    layers: [buildBusyboxRootfs(join(work, "rootfs"))],
    command: ["sh", "-c", LOOP],
    devices,
  });
  const watch = new DeviceWatch(devRoot);
  const follower = new ServiceDevices({ runtime, deviceWatch: watch, event: () => {}, changed: () => {} });
  try {
    await runtime.start(c.id);
    follower.follow("bench", c.id, devices);
    await logged(runtime, c.id, "open", 0);
    const samples: number[] = [];
    for (let i = 0; i < runs; i++) {
      const gone = uptime();
      rmSync(join(devRoot, "ttyUSB0"));
      await logged(runtime, c.id, "closed", gone);
      const made = node(i % 2 === 0 ? 229 : 200);
      samples.push((await logged(runtime, c.id, "open", made)) * 1000 - made * 1000);
    }
    printSummaries(
      `device plugged back → open inside a running container (debounce ${DEVICE_DEBOUNCE_MS} ms; /proc/uptime, 10 ms resolution)`,
      [summarize("mknod → open", samples)],
    );
  } finally {
    follower.stopAll();
    watch.close();
    await runtime.delete(c.id, { force: true });
    await runtime.settled();
    rmSync(work, { recursive: true, force: true });
  }
}
