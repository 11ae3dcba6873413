/** Resource limits, observed: the OOM killer, the pids limit and the CPU quota. */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Runtime } from "../../agent/runtime/runtime.js";
import { fleetlet } from "../support/fleetlet-cli.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

let root: string;
let runtime: Runtime;
const rootfs = inject("busyboxRootfs");

beforeAll(() => {
  root = freshRoot();
  runtime = new Runtime({ root });
});
afterAll(async () => {
  await cleanupRoot(root);
});

describe("resource limits", () => {
  it("OOM-kills a container over --memory 32Mi, exits 137 and says so", () => {
    const r = fleetlet(root, [
      "run",
      "--rm",
      "--rootfs",
      rootfs,
      "--memory",
      "32Mi",
      "--",
      "/bin/dd",
      "if=/dev/zero",
      "of=/dev/null",
      "bs=64M",
      "count=1",
    ]);
    expect(r.status).toBe(137);
    expect(r.stderr).toContain("killed: out of memory (limit 32 MiB)");
  });

  it("lets the same work finish under a larger limit", () => {
    const r = fleetlet(root, [
      "run",
      "--rm",
      "--rootfs",
      rootfs,
      "--memory",
      "256Mi",
      "--",
      "/bin/dd",
      "if=/dev/zero",
      "of=/dev/null",
      "bs=64M",
      "count=1",
    ]);
    expect(r.status).toBe(0);
  });

  it("stops a fork loop at --pids", () => {
    const r = fleetlet(root, [
      "run",
      "--rm",
      "--rootfs",
      rootfs,
      "--pids",
      "16",
      "--",
      "/bin/sh",
      "-c",
      "i=0; while [ $i -lt 64 ]; do sleep 5 & i=$((i+1)); done; echo all-forked",
    ]);
    expect(r.stdout).not.toContain("all-forked");
    expect(r.stderr).toMatch(/can't fork|Resource temporarily unavailable/);
    expect(r.status).not.toBe(0);
  });

  it("holds a busy loop to about a quarter of a core with --cpus 0.25", async () => {
    const { id } = runtime.create({
      layers: [rootfs],
      command: ["/bin/sh", "-c", "while :; do :; done"],
      resources: { cpus: 0.25 },
    });
    await runtime.start(id);
    try {
      const before = runtime.stats(id).cpuNanos;
      const t0 = process.hrtime.bigint();
      await sleep(2000);
      const used = runtime.stats(id).cpuNanos - before;
      const wall = Number(process.hrtime.bigint() - t0);
      const share = used / wall;
      // A quota is a ceiling, not a promise: on a loaded machine the loop may get less. That it hit
      // the ceiling shows in the periods the kernel throttled it.
      expect(share).toBeGreaterThan(0.02);
      expect(share).toBeLessThan(0.32);
      const stats = [...runtime.cgroups.locate(id).dirs.values()]
        .map((dir) => join(dir, "cpu.stat"))
        .filter((file) => existsSync(file))
        .map((file) => readFileSync(file, "utf8"));
      const throttled = stats.map((text) => Number(/^nr_throttled (\d+)$/m.exec(text)?.[1] ?? 0));
      expect(Math.max(0, ...throttled)).toBeGreaterThan(0);
    } finally {
      await runtime.delete(id, { force: true });
    }
  });

  it("places the init in the container's cgroups with the limits written before exec", async () => {
    const { id } = runtime.create({
      layers: [rootfs],
      command: ["/bin/sleep", "30"],
      resources: { memory: "48Mi", pids: 20 },
    });
    const info = await runtime.start(id);
    try {
      const { dirs } = runtime.cgroups.locate(id);
      expect(dirs.size).toBeGreaterThan(0);
      for (const dir of new Set(dirs.values())) {
        expect(readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n")).toContain(String(info.pid));
      }
      if (runtime.cgroups.mode === "v2") {
        expect(readFileSync(join(dirs.get("unified")!, "memory.max"), "utf8").trim()).toBe(String(48 * 1024 * 1024));
      } else {
        expect(readFileSync(join(dirs.get("memory")!, "memory.limit_in_bytes"), "utf8").trim()).toBe(
          String(48 * 1024 * 1024),
        );
        expect(readFileSync(join(dirs.get("pids")!, "pids.max"), "utf8").trim()).toBe("20");
      }
      // Inside, the cgroup namespace makes the container's cgroup its root.
      const inside = await runtime.wait(id, AbortSignal.timeout(10)).catch(() => undefined);
      expect(inside).toBeUndefined();
      const stats = runtime.stats(id);
      expect(stats.pids).toBe(1);
      expect(stats.memoryBytes).toBeGreaterThan(0);
    } finally {
      await runtime.delete(id, { force: true });
    }
    for (const dir of runtime.cgroups.locate(id).dirs.values()) expect(existsSync(dir)).toBe(false);
  });

  it("runs an exec'd command (a healthcheck) in the container's cgroups, every hierarchy of them", async () => {
    const { id } = runtime.create({ layers: [rootfs], command: ["/bin/sleep", "30"], resources: { pids: 20 } });
    await runtime.start(id);
    try {
      // The helper joins the cgroups, then enters the cgroup namespace: a
      // hierarchy it did not join would show a path above that root ("/..").
      const r = await runtime.exec(id, ["/bin/cat", "/proc/self/cgroup"]);
      expect(r.exitCode).toBe(0);
      const lines = r.output.trim().split("\n");
      // Each of the container's hierarchies (pids, memory, … on v1; the one on v2) is its root.
      const joined = lines.filter((l) => l.split(":")[2] === "/").map((l) => l.split(":")[1] ?? "");
      for (const hierarchy of runtime.cgroups.locate(id).dirs.keys())
        expect(
          joined.some((h) => (hierarchy === "unified" ? h === "" : h.split(",").includes(hierarchy))),
          hierarchy,
        ).toBe(true);
    } finally {
      await runtime.delete(id, { force: true });
    }
  });

  it("shows the container its own cgroup as the root", () => {
    const r = fleetlet(root, [
      "run",
      "--rm",
      "--rootfs",
      rootfs,
      "--memory",
      "64Mi",
      "--",
      "/bin/cat",
      "/proc/self/cgroup",
    ]);
    const paths = r.stdout
      .split("\n")
      .filter(Boolean)
      .map((l) => l.split(":")[2]);
    expect(paths.length).toBeGreaterThan(0);
    expect(new Set(paths)).toEqual(new Set(["/"]));
  });
});
